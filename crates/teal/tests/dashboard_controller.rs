//! The controller's dashboard in a real browser: the controller binary runs
//! a release against the real control plane; headless Chromium shows the
//! BlueGreen with its phase, live color, revision and last release; the
//! listing comes from a watch-fed cache, not from a LIST per request.

mod browser_support;
mod k8s_support;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};

use browser_support::{Picture, dump_dom, http_get, screenshot};
use k8s_support::{apply_deploy_files, kubectl, release_image, workload_and_bluegreen};
use teal_testenv::TestEnv;

#[tokio::test]
async fn the_dashboard_lists_bluegreens_with_phase_colors_and_revisions() {
    let env = TestEnv::shared();
    apply_deploy_files(env, &["crd.yaml"]);
    let ns = env.namespace("dashboard").await;
    kubectl(
        env,
        &["apply", "-n", &ns, "-f", "-"],
        Some(&workload_and_bluegreen("shop", "  scaleDownDelay: 1s\n")),
    );
    let addr: SocketAddr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let scratch = std::env::temp_dir().join(format!("teal-dashboard-{ns}"));
    std::fs::create_dir_all(&scratch).unwrap();
    let mut controller = Command::new(env!("CARGO_BIN_EXE_teal"))
        .args(["controller", "--no-leader-election", "--namespace", &ns])
        .args(["--metrics-addr", &addr.to_string()])
        .env("KUBECONFIG", env.kubeconfig_path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(scratch.join("controller.log")).unwrap())
        .spawn()
        .unwrap();

    let st = release_image(&env.client(), &ns, "shop", "shop:2").await;
    let live = st.active_color.unwrap().to_string();
    let revision = st.active_revision.unwrap();

    let (status, body) = http_get(addr, "/dashboard.json", "teal-controller-metrics");
    assert_eq!(status, 200, "{body}");
    let listing: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listing["namespace"], ns.as_str());
    assert_eq!(listing["items"][0]["name"], "shop");
    assert!(
        listing["items"][0]["status"].get("engine").is_none(),
        "the engine's internal state is not for the page"
    );

    // Served from a watch-fed cache: requests to the dashboard send no
    // request (a LIST is a GET) to the apiserver each.
    let gets = || {
        let (status, body) = http_get(addr, "/metrics", "teal-controller-metrics");
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find_map(|l| l.strip_prefix(r#"teal_controller_api_requests_total{verb="GET"} "#))
            .map_or(0.0, |v| v.parse::<f64>().unwrap())
    };
    let before = gets();
    for _ in 0..40 {
        assert_eq!(
            http_get(addr, "/dashboard.json", "teal-controller-metrics").0,
            200
        );
    }
    let sent = gets() - before;
    assert!(
        sent < 10.0,
        "{sent} GET requests to the apiserver for 40 dashboard requests"
    );
    // And the cache follows the cluster: a new BlueGreen shows up.
    kubectl(
        env,
        &["apply", "-n", &ns, "-f", "-"],
        Some(&workload_and_bluegreen("cart", "")),
    );
    teal_testenv::wait_for(
        "cart listed",
        std::time::Duration::from_secs(20),
        || async {
            let (_, body) = http_get(addr, "/dashboard.json", "teal-controller-metrics");
            match body.contains(r#""name":"cart""#) {
                true => Ok(()),
                false => Err(body),
            }
        },
    )
    .await;

    let url = format!("http://{addr}/");
    let dom = dump_dom(&url, &scratch);
    let row = dom
        .split("<tbody id=\"rows\">")
        .nth(1)
        .and_then(|s| s.split("</tbody>").next())
        .unwrap_or_default();
    assert!(row.contains("<b>shop</b>"), "{dom}");
    assert!(
        row.contains("<td class=\"phase Healthy\">Healthy</td>"),
        "{row}"
    );
    assert!(
        row.contains(&format!(
            "<span class=\"chip {live}\">{live}</span> {revision}"
        )),
        "{row}"
    );
    assert!(
        row.contains(&format!("{revision} promoted")),
        "last release: {row}"
    );

    let png = screenshot(&url, &scratch, "controller.png");
    let keep = std::env::temp_dir().join("teal-dashboard-controller.png");
    std::fs::copy(&png, &keep).unwrap();
    let pic = Picture::open(&png);
    assert!(pic.distinct_colors() > 50, "a blank page");
    let chip = match live.as_str() {
        "blue" => [0x2f, 0x6f, 0xde],
        _ => [0x1f, 0x9d, 0x55],
    };
    assert!(
        pic.count_near(chip, 30, 0..pic.height) > 200,
        "no {live} chip drawn; screenshot kept at {}",
        keep.display()
    );
    let _ = controller.kill();
    let _ = controller.wait();
    let _ = std::fs::remove_dir_all(&scratch);
}
