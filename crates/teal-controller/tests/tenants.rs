//! One tenant's endpoints do not stall the others: with `--concurrency 2`,
//! two BlueGreens whose rollout hook never answers (1 h timeout) leave the
//! reconciles of a third one free to run, and a hook that answers with a
//! 1 GiB body is read only as far as a small cap. Real control plane, real
//! TCP servers on loopback.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::case;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Accepts connections and never answers; returns its URL and how many
/// connections it accepted.
async fn silent_server() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hang", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (url, accepted)
}

/// Answers every request 200 with a body of `size` bytes, written as fast
/// as it is read; returns its URL and how many body bytes it wrote (a
/// caller that stops reading and closes stops it).
async fn huge_body_server(size: u64) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/huge", listener.local_addr().unwrap());
    let written = Arc::new(AtomicU64::new(0));
    let total = written.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let total = total.clone();
            tokio::spawn(async move {
                // The request's head (its small body may follow; unread).
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {size}\r\n\r\n"
                );
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                let mut sent = 0u64;
                while sent < size {
                    let n = chunk.len().min((size - sent) as usize);
                    if stream.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    sent += n as u64;
                    total.fetch_add(n as u64, Ordering::SeqCst);
                }
            });
        }
    });
    (url, written)
}

fn plain() -> serde_json::Value {
    json!({
        "workloadRef": {"kind": "Deployment", "name": "c"},
        "scaleDownDelay": "1s",
        "progressDeadline": "120s"
    })
}

/// A release of `name` to `image`, timed from the change of the workload
/// until status records it promoted.
async fn timed_release(c: &support::Case, name: &str, image: &str) -> Duration {
    let before = c
        .bluegreens()
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap_or_default()
        .history
        .iter()
        .filter(|h| h.outcome == "promoted")
        .count();
    let started = Instant::now();
    c.set_image(name, image, BTreeMap::new()).await;
    c.wait_status(&format!("{name} released {image}"), name, |s| {
        s.history.iter().filter(|h| h.outcome == "promoted").count() > before
            && s.phase.as_deref() == Some("Healthy")
    })
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn hooks_that_never_answer_hold_no_reconcile_slot() {
    let (hang, accepted) = silent_server().await;
    let mut c = case("tenants-slots").await;
    for name in ["a", "b", "c"] {
        c.create_workload(name, &format!("{name}:1"), 1, BTreeMap::new())
            .await;
    }
    for name in ["a", "b"] {
        c.create_bluegreen(
            name,
            json!({
                "workloadRef": {"kind": "Deployment", "name": name},
                "scaleDownDelay": "1s",
                "progressDeadline": "2h",
                "analysis": {"prePromotion": {
                    "interval": "1s", "checks": 600, "inconclusiveLimit": 600,
                    "metrics": [{"name": "errors", "prometheus": {"address": "http://127.0.0.1:1", "query": "up"}, "min": 0}]
                }},
                "webhooks": [{"name": "load-test", "type": "rollout", "url": hang, "timeout": "1h", "retries": 0}]
            }),
        )
        .await
        .unwrap();
    }
    c.create_bluegreen("c", plain()).await.unwrap();
    c.start_controller_with(2);
    for name in ["a", "b", "c"] {
        c.wait_status(&format!("{name} adopted"), name, |s| {
            s.phase.as_deref() == Some("Healthy")
        })
        .await;
    }
    let alone = timed_release(&c, "c", "c:2").await;

    // a and b release; their first analysis check calls the hook that
    // never answers.
    c.set_image("a", "a:2", BTreeMap::new()).await;
    c.set_image("b", "b:2", BTreeMap::new()).await;
    teal_testenv::wait_for("both rollout hooks called", Duration::from_secs(60), || {
        let n = accepted.load(Ordering::SeqCst);
        async move {
            if n >= 2 {
                Ok(())
            } else {
                Err(format!("{n} connections"))
            }
        }
    })
    .await;
    // Both checks are under way (and, were they holding a slot, would hold
    // both for an hour).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stalled = timed_release(&c, "c", "c:3").await;
    println!("release of c alone: {alone:?}; while a and b wait on hooks: {stalled:?}");
    assert!(
        stalled <= alone * 2 + Duration::from_secs(5),
        "c's release took {stalled:?} while a and b waited on their hooks, {alone:?} alone"
    );
    // a and b are still in their analysis, not failed by the wait.
    for name in ["a", "b"] {
        let st = c.bluegreens().get(name).await.unwrap().status.unwrap();
        assert_eq!(st.phase.as_deref(), Some("Previewing"), "{name}: {st:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hook_answering_a_huge_body_is_read_no_further_than_a_cap() {
    const GIB: u64 = 1 << 30;
    let (huge, written) = huge_body_server(GIB).await;
    let mut c = case("tenants-body").await;
    c.create_workload("c", "c:1", 1, BTreeMap::new()).await;
    let mut spec = plain();
    spec["webhooks"] = json!([{"name": "approve", "type": "confirm-promotion", "url": huge, "timeout": "60s", "retries": 0}]);
    c.create_bluegreen("c", spec).await.unwrap();
    c.start_controller();
    c.wait_status("adoption", "c", |s| s.phase.as_deref() == Some("Healthy"))
        .await;
    let took = timed_release(&c, "c", "c:2").await;
    let st = c
        .wait_status("the gate's answer in status.hooks", "c", |s| {
            s.hooks.iter().any(|h| h.name == "approve")
        })
        .await;
    let h = st.hooks.iter().find(|h| h.name == "approve").unwrap();
    assert_eq!(h.code, Some(200), "{h:?}");
    assert!(h.passed, "{h:?}");
    // Let the server notice the closed connection.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = written.load(Ordering::SeqCst);
    println!("release through a gate answering a 1 GiB body: {took:?}; body bytes written: {sent}");
    assert!(
        sent < 16 << 20,
        "the controller read {sent} bytes of the hook's answer"
    );
}

/// Answers every request 500 with `body`.
async fn failing_server(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let body = Arc::new(body);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_page_reaches_status_as_a_short_excerpt_on_one_line() {
    // A 1 MiB error page of many lines, with terminal escapes.
    let mut page = Vec::new();
    while page.len() < 1 << 20 {
        page.extend_from_slice(
            b"\x1b[31mSECRET-LOOKING internal error\x1b[0m\r\n<p>stack frame</p>\n",
        );
    }
    let prometheus = failing_server(page).await;
    let mut c = case("tenants-excerpt").await;
    c.create_workload("c", "c:1", 1, BTreeMap::new()).await;
    let mut spec = plain();
    spec["analysis"] = json!({"prePromotion": {
        "interval": "1s", "checks": 600, "inconclusiveLimit": 600,
        "metrics": [{"name": "errors", "max": 1,
                     "prometheus": {"address": prometheus, "query": "up"}}]
    }});
    c.create_bluegreen("c", spec).await.unwrap();
    c.start_controller();
    c.wait_status("adoption", "c", |s| s.phase.as_deref() == Some("Healthy"))
        .await;
    c.set_image("c", "c:2", BTreeMap::new()).await;
    let st = c
        .wait_status("the failed query in status", "c", |s| {
            s.analysis
                .as_ref()
                .is_some_and(|a| a.metrics.iter().any(|m| m.note.is_some()))
        })
        .await;
    let note = st.analysis.unwrap().metrics[0].note.clone().unwrap();
    println!(
        "note in status ({} characters): {note}",
        note.chars().count()
    );
    assert!(note.contains("500"), "{note}");
    assert!(
        note.chars().count() <= 400,
        "{} characters",
        note.chars().count()
    );
    assert!(!note.chars().any(char::is_control), "{note:?}");
}
