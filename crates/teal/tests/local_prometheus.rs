//! Prometheus analysis in local mode, against a real Prometheus (Debian's
//! package) scraping the router's per-color metrics: a healthy release
//! passes, a failing one rolls back with the metric's name and value; the
//! preview traffic of the idle color is exposed apart.

mod local_support;

use local_support::*;

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_metric_gates_the_release() {
    let admin = free_port();
    let scrape = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: teal\n    static_configs: [{{targets: ['127.0.0.1:{admin}']}}]\n"
    );
    let prom = teal_testenv::prometheus::start(&scrape)
        .await
        .expect("prometheus starts");
    let query = r#"100 * sum(increase(teal_router_requests_total{color="{{color}}",class="5xx"}[10s])) / sum(increase(teal_router_requests_total{color="{{color}}"}[10s]))"#;
    let extra = format!(
        "admin: 127.0.0.1:{admin}\nanalysis:\n  prePromotion:\n    interval: 3s\n    checks: 2\n    inconclusiveLimit: 3\n    metrics:\n      - name: error-rate\n        prometheus: {{address: \"{}\", query: '{query}'}}\n        max: 5\n",
        prom.url()
    );
    let setup = tokio::task::spawn_blocking(move || healthy_daemon("prom", &extra))
        .await
        .unwrap();
    let (config, port) = (setup.config.clone(), setup.port);
    // Analysis can only judge what Prometheus has scraped: wait for the
    // router's series to be there.
    let mut scraped = false;
    for _ in 0..120 {
        let s = prom
            .query("sum(teal_router_requests_total)")
            .await
            .unwrap_or_default();
        if !s.is_empty() {
            scraped = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        scraped,
        "prometheus never scraped the router's admin /metrics"
    );

    let preview = PreviewTraffic::start(port);
    let run = |args: Vec<String>| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&config, &a)
        })
    };
    let o = run(vec!["deploy".into(), "--revision".into(), "v2".into()])
        .await
        .unwrap();
    assert!(o.status.success(), "{}\n{}", text(&o), setup.daemon.log());
    // The preview traffic v2 got while idle is exposed apart from production.
    let mut previewed = Vec::new();
    for _ in 0..40 {
        previewed = prom
            .query(r#"sum(teal_router_preview_requests_total{color="green",class="2xx"}) > 0"#)
            .await
            .unwrap_or_default();
        if !previewed.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(!previewed.is_empty(), "no preview traffic of green scraped");

    let mut args: Vec<String> = ["deploy", "--revision", "v3", "--"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(sample_app_argv(&["--error-rate", "0.5"]));
    let o = run(args).await.unwrap();
    drop(preview);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("v3: RolledBack"), "{}", text(&o));
    assert!(
        out.contains("error-rate = "),
        "the metric and its value are named: {}",
        text(&o)
    );
    assert!(out.contains("above the maximum 5"), "{}", text(&o));
    assert_eq!(live_version(port).as_deref(), Some("v2"));
}

/// A Prometheus served over TLS with basic auth, as its own
/// `--web.config.file` sets it up: the query runs with the CA bundle, the
/// password from a file and an extra header (and once more without
/// checking the certificate, as `insecureSkipVerify` asks); a good release
/// passes, a bad one rolls back naming the metric and its value.
#[tokio::test(flavor = "multi_thread")]
async fn prometheus_behind_tls_and_basic_auth_gates_the_release() {
    let (prom, ca_pem) =
        teal_testenv::prometheus::start_secured("global: {scrape_interval: 15s}\n")
            .await
            .expect("prometheus starts behind TLS and basic auth");
    let files = Scratch::new("prom-tls");
    std::fs::write(files.0.join("ca.pem"), ca_pem).unwrap();
    let password = format!("{}\n", teal_testenv::prometheus::PASSWORD);
    std::fs::write(files.0.join("password"), password).unwrap();
    assert!(prom.url().starts_with("https://"), "{}", prom.url());
    // 0 for revision v2, 100 for any other: a good and a bad release
    // without any traffic to scrape.
    let query = r#"min((label_replace(vector(0), "r", "{{revision}}", "", "") and on(r) label_replace(vector(0), "r", "v2", "", "")) or vector(100))"#;
    let extra = format!(
        "analysis:\n  prePromotion:\n    interval: 1s\n    checks: 2\n    inconclusiveLimit: 2\n    metrics:\n      - name: gate\n        max: 5\n        prometheus:\n          address: \"{url}\"\n          query: '{query}'\n          timeout: 5s\n          tls: {{caSecretRef: {{file: \"{dir}/ca.pem\"}}}}\n          auth: {{basic: {{username: {user}, passwordSecretRef: {{file: \"{dir}/password\"}}}}}}\n          headers: [{{name: X-Scope-OrgID, value: tenant-a}}]\n      - name: unverified\n        max: 5\n        prometheus:\n          address: \"{url}\"\n          query: '{query}'\n          tls: {{insecureSkipVerify: true}}\n          auth: {{basic: {{username: {user}, passwordSecretRef: {{file: \"{dir}/password\"}}}}}}\n",
        url = prom.url(),
        dir = files.0.display(),
        user = teal_testenv::prometheus::USER,
    );
    let setup = tokio::task::spawn_blocking(move || healthy_daemon("prom-tls", &extra))
        .await
        .unwrap();
    let o = deploy_within_a_minute(&setup.config, "v2").await;
    assert!(o.status.success(), "{}\n{}", text(&o), setup.daemon.log());
    assert_eq!(live_version(setup.port).as_deref(), Some("v2"));

    let o = deploy_within_a_minute(&setup.config, "v3").await;
    assert_rolled_back(
        &o,
        "v3",
        &["gate = 100", "unverified = 100"],
        setup.port,
        "v2",
    );
}
