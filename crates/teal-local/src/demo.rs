//! `teal demo`: a full blue/green release under live traffic on this
//! machine. Local mode runs the built-in sample app; a load generator keeps
//! production and preview traffic flowing while v2 is released (and
//! promoted) and v3, which fails 30% of its requests, is released (and
//! rolled back by analysis). The report says what every request saw.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use teal_api::{
    AnalysisSpec, AnalysisStageSpec, BuiltinMetric, Duration as SpecDuration, MatchSpec,
    MetricSpec, PreviewSpec, PromotionSpec,
};
use teal_core::Color;
use teal_core::release::Outcome;
use teal_router::RouterConfig;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::config::{AppSpec, Config, HealthSpec};
use crate::engine::{Engine, Notice};
use crate::supervisor::RevisionSpec;

/// The header that reaches the idle color in the demo.
pub const PREVIEW_HEADER: &str = "x-teal-preview";

/// Settings of a demo run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The teal executable (runs the sample app).
    pub exe: PathBuf,
    /// Keep-alive connections of production traffic.
    pub connections: usize,
    /// Keep-alive connections of preview traffic (with the preview header).
    pub preview_connections: usize,
    /// Replicas per color.
    pub replicas: u32,
    /// Print progress while running.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            exe: PathBuf::from("teal"),
            connections: 32,
            preview_connections: 2,
            replicas: 2,
            progress: true,
        }
    }
}

/// The demo's report; key names are stable (consumed by scripts).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub releases: Vec<ReleaseReport>,
    pub cutover: CutoverReport,
    pub production: TrafficReport,
    pub preview: TrafficReport,
    pub duration_ms: u64,
    /// Requests per 100 ms.
    pub timeline: Vec<Slice>,
    /// Invariants that did not hold (empty when all is well).
    pub violations: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReleaseReport {
    pub revision: String,
    pub outcome: Outcome,
    pub reason: String,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CutoverReport {
    /// How long installing the new route table took.
    pub switch_us: u64,
    /// When the switch returned, since the start of the demo.
    pub at_ms: u64,
    pub from: Option<Color>,
    pub to: Option<Color>,
    /// Production requests started after the switch returned that the old
    /// color served. Must be 0.
    pub old_color_requests_after_switch: u64,
    /// Production requests started after the switch that the new color served.
    pub new_color_requests_after_switch: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TrafficReport {
    pub requests: u64,
    pub failed_requests: u64,
    pub requests_per_second: f64,
    /// Requests by the version that answered.
    pub by_version: BTreeMap<String, u64>,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Slice {
    pub t_ms: u64,
    pub blue: u64,
    pub green: u64,
    pub preview: u64,
    pub errors: u64,
}

/// Why the demo could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Setup(String),
}

struct Sample {
    start: Instant,
    end: Instant,
    /// 0 for a transport error.
    status: u16,
    color: Option<Color>,
    version: Option<Arc<str>>,
    preview: bool,
}

/// The built-in sample app's command line (`exe` is the teal executable),
/// with extra flags; `{color}`, `{revision}` and `{port}` are filled in per replica.
pub fn sample_app(exe: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let base = [
        "sample-app",
        "--color",
        "{color}",
        "--version",
        "{revision}",
        "--port",
        "{port}",
    ];
    std::iter::once(exe.display().to_string())
        .chain(base.iter().chain(extra).map(|s| s.to_string()))
        .collect()
}

fn config(opts: &Options, state_dir: PathBuf) -> Config {
    let metric = |name: &str, b: BuiltinMetric, min: Option<f64>, max: Option<f64>| MetricSpec {
        name: name.into(),
        builtin: Some(b),
        prometheus: None,
        web: None,
        job: None,
        template_ref: None,
        min,
        max,
        min_requests: Some(20),
        dry_run: false,
    };
    Config {
        app: AppSpec {
            command: sample_app(&opts.exe, &[]),
            env: BTreeMap::new(),
            workdir: None,
            replicas: opts.replicas,
            health: HealthSpec {
                path: "/healthz".into(),
                interval: SpecDuration::from_millis(200),
                timeout: SpecDuration::from_secs(1),
                healthy_threshold: 1,
                unhealthy_threshold: 2,
            },
            startup_deadline: SpecDuration::from_secs(20),
            stop_grace_period: SpecDuration::from_secs(5),
        },
        revision: "v1".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        control: SocketAddr::from(([127, 0, 0, 1], 0)),
        state_dir,
        preview: PreviewSpec {
            header: Some(MatchSpec {
                name: PREVIEW_HEADER.into(),
                value: "1".into(),
            }),
            header_value_from: None,
            cookie: None,
            replicas: None,
        },
        promotion: PromotionSpec::default(),
        analysis: AnalysisSpec {
            pre_promotion: Some(AnalysisStageSpec {
                interval: SpecDuration::from_secs(1),
                checks: 3,
                failure_limit: 0,
                inconclusive_limit: 2,
                consecutive_error_limit: 2,
                initial_delay: None,
                metrics: vec![
                    metric("success-rate", BuiltinMetric::SuccessRate, Some(99.0), None),
                    metric("latency-p99", BuiltinMetric::LatencyP99, None, Some(500.0)),
                ],
            }),
            post_promotion: Some(AnalysisStageSpec {
                interval: SpecDuration::from_secs(1),
                checks: 2,
                failure_limit: 0,
                inconclusive_limit: 2,
                consecutive_error_limit: 2,
                initial_delay: None,
                metrics: vec![metric(
                    "success-rate",
                    BuiltinMetric::SuccessRate,
                    Some(99.0),
                    None,
                )],
            }),
        },
        scale_down_delay: SpecDuration::from_secs(2),
        drain_timeout: SpecDuration::from_secs(5),
        color_header: None,
        webhooks: Vec::new(),
        notifications: Vec::new(),
    }
}

/// One keep-alive connection sending requests until `stop`.
async fn worker(
    addr: SocketAddr,
    preview: bool,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> Vec<Sample> {
    let mut samples = Vec::with_capacity(64 * 1024);
    let mut versions: BTreeMap<Vec<u8>, Arc<str>> = BTreeMap::new();
    'conn: while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let sender = async {
            let stream = TcpStream::connect(addr).await.ok()?;
            stream.set_nodelay(true).ok()?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .ok()?;
            tokio::spawn(conn);
            Some(sender)
        };
        let Some(mut sender) = sender.await else {
            samples.push(Sample {
                start,
                end: Instant::now(),
                status: 0,
                color: None,
                version: None,
                preview,
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            let mut req = http::Request::builder()
                .uri("/")
                .header(http::header::HOST, "demo.local");
            if preview {
                req = req.header(PREVIEW_HEADER, "1");
            }
            let req = req.body(Empty::<Bytes>::new()).expect("request");
            let start = Instant::now();
            let result = async {
                sender.ready().await.ok()?;
                let resp = sender.send_request(req).await.ok()?;
                let status = resp.status().as_u16();
                let color = resp
                    .headers()
                    .get("x-app-color")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                let version = resp
                    .headers()
                    .get("x-app-version")
                    .map(|v| v.as_bytes().to_vec());
                resp.into_body().collect().await.ok()?;
                Some((status, color, version))
            }
            .await;
            let end = Instant::now();
            count.fetch_add(1, Ordering::Relaxed);
            match result {
                Some((status, color, version)) => {
                    let version = version.map(|v| {
                        versions
                            .entry(v.clone())
                            .or_insert_with(|| Arc::from(String::from_utf8_lossy(&v).as_ref()))
                            .clone()
                    });
                    samples.push(Sample {
                        start,
                        end,
                        status,
                        color,
                        version,
                        preview,
                    });
                }
                None => {
                    samples.push(Sample {
                        start,
                        end,
                        status: 0,
                        color: None,
                        version: None,
                        preview,
                    });
                    continue 'conn;
                }
            }
        }
    }
    samples
}

fn elapsed(t0: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(t0).as_secs_f64()
}

/// Runs the demo and returns its report.
pub async fn run(opts: Options) -> Result<Report, DemoError> {
    let state_dir = std::env::temp_dir().join(format!("teal-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state_dir);
    let result = run_in(&opts, state_dir.clone()).await;
    let _ = std::fs::remove_dir_all(&state_dir);
    result
}

async fn run_in(opts: &Options, state_dir: PathBuf) -> Result<Report, DemoError> {
    let t0 = Instant::now();
    let say = |msg: String| {
        if opts.progress {
            println!("{:>6.1}s  {msg}", elapsed(t0, Instant::now()));
            let _ = std::io::stdout().flush();
        }
    };
    let cfg = config(opts, state_dir);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = oneshot::channel();
    let daemon = tokio::spawn(crate::daemon::serve(
        cfg,
        RouterConfig::default(),
        async move {
            let _ = stop_rx.await;
        },
        Some(ready_tx),
    ));
    let (bound, engine) = match ready_rx.await {
        Ok(x) => x,
        Err(_) => {
            let e = daemon.await.map_err(|e| DemoError::Setup(e.to_string()))?;
            return Err(DemoError::Setup(format!("local mode did not start: {e:?}")));
        }
    };
    say(format!(
        "local mode up: router on http://{}, starting v1 on blue ({} replicas)",
        bound.listen, opts.replicas
    ));
    let outcome = drive(opts, &engine, bound.listen, t0, &say).await;
    say("stopping the app's processes".into());
    let _ = stop_tx.send(());
    let _ = daemon.await;
    outcome
}

async fn drive(
    opts: &Options,
    engine: &Engine,
    listen: SocketAddr,
    t0: Instant,
    say: &impl Fn(String),
) -> Result<Report, DemoError> {
    tokio::time::timeout(Duration::from_secs(30), engine.wait_routed())
        .await
        .map_err(|_| DemoError::Setup("v1 did not become healthy within 30s".into()))?;
    say("v1 is live on blue; starting traffic".into());

    let mut notices = engine.subscribe();
    let switches = Arc::new(std::sync::Mutex::new(Vec::new()));
    let notice_task = tokio::spawn({
        let switches = switches.clone();
        let progress = opts.progress;
        async move {
            while let Ok(n) = notices.recv().await {
                match n {
                    Notice::Event(e) => {
                        if progress {
                            println!(
                                "{:>6.1}s  [{:?}] {}",
                                elapsed(t0, Instant::now()),
                                e.kind,
                                e.message
                            );
                        }
                    }
                    Notice::Switched {
                        from,
                        to,
                        swap,
                        returned,
                        generation,
                        ..
                    } => {
                        if progress {
                            println!(
                                "{:>6.1}s  switch {from} -> {to}: route table generation {generation} installed in {} µs",
                                elapsed(t0, Instant::now()),
                                swap.as_micros()
                            );
                        }
                        switches
                            .lock()
                            .expect("switches")
                            .push((from, to, swap, returned));
                    }
                }
            }
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for i in 0..opts.connections + opts.preview_connections {
        let preview = i >= opts.connections;
        workers.push(tokio::spawn(worker(
            listen,
            preview,
            stop.clone(),
            count.clone(),
        )));
    }
    let load_start = Instant::now();
    let ticker = tokio::spawn({
        let count = count.clone();
        let engine = engine.clone();
        let stop = stop.clone();
        let progress = opts.progress;
        async move {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let n = count.load(Ordering::Relaxed);
                let s = engine.status();
                if progress {
                    let live = s
                        .active
                        .as_ref()
                        .map(|a| format!("{} {}", a.color, a.revision))
                        .unwrap_or_default();
                    let preview = s
                        .preview
                        .as_ref()
                        .map(|a| format!("{} {}", a.color, a.revision))
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{:>6.1}s  {:>6} req/s   live: {live:<10} preview: {preview:<10} phase: {}",
                        elapsed(t0, Instant::now()),
                        n - last,
                        s.phase
                    );
                }
                last = n;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut releases = Vec::new();
    let mut violations = Vec::new();
    let plan: [(&str, Option<Vec<String>>, Outcome); 2] = [
        ("v2", None, Outcome::Promoted),
        (
            "v3",
            Some(sample_app(&opts.exe, &["--error-rate", "0.3"])),
            Outcome::RolledBack,
        ),
    ];
    for (revision, command, expected) in plan {
        let note = if command.is_some() {
            " (this version fails 30% of its requests)"
        } else {
            ""
        };
        say(format!("releasing {revision}{note}"));
        let since = now_ms();
        let started = Instant::now();
        engine
            .deploy(RevisionSpec {
                name: revision.into(),
                command,
                env: BTreeMap::new(),
            })
            .await
            .map_err(|e| DemoError::Setup(format!("deploy {revision}: {e}")))?;
        let rec = tokio::time::timeout(
            Duration::from_secs(60),
            engine.wait_for_outcome(revision, since),
        )
        .await
        .ok()
        .flatten();
        let Some(rec) = rec else {
            violations.push(format!("release {revision} did not end within 60s"));
            break;
        };
        say(format!(
            "release {revision}: {:?} — {}",
            rec.outcome, rec.reason
        ));
        if rec.outcome != expected {
            violations.push(format!(
                "release {revision} ended {:?}, expected {expected:?}",
                rec.outcome
            ));
        }
        releases.push(ReleaseReport {
            revision: revision.into(),
            outcome: rec.outcome,
            reason: rec.reason,
            duration_ms: started.elapsed().as_millis() as u64,
        });
        // Let the retired color drain and stop under traffic.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for w in workers {
        if let Ok(s) = w.await {
            samples.extend(s);
        }
    }
    let load_secs = load_start.elapsed().as_secs_f64();
    let _ = ticker.await;
    notice_task.abort();
    let switches = switches.lock().expect("switches").clone();
    Ok(report(
        t0, load_secs, samples, releases, switches, violations,
    ))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn traffic(samples: &[&Sample], secs: f64) -> TrafficReport {
    let mut r = TrafficReport {
        requests: samples.len() as u64,
        requests_per_second: samples.len() as f64 / secs.max(1e-9),
        ..Default::default()
    };
    let mut lat: Vec<f64> = Vec::with_capacity(samples.len());
    for s in samples {
        if s.status == 0 || s.status >= 500 {
            r.failed_requests += 1;
        }
        if let Some(v) = &s.version {
            *r.by_version.entry(v.to_string()).or_default() += 1;
        }
        lat.push((s.end - s.start).as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    r.latency_p50_ms = percentile(&lat, 0.5);
    r.latency_p99_ms = percentile(&lat, 0.99);
    r
}

fn report(
    t0: Instant,
    load_secs: f64,
    samples: Vec<Sample>,
    releases: Vec<ReleaseReport>,
    switches: Vec<(Color, Color, Duration, Instant)>,
    mut violations: Vec<String>,
) -> Report {
    let prod: Vec<&Sample> = samples.iter().filter(|s| !s.preview).collect();
    let prev: Vec<&Sample> = samples.iter().filter(|s| s.preview).collect();
    let production = traffic(&prod, load_secs);
    let preview = traffic(&prev, load_secs);

    let mut cutover = CutoverReport::default();
    if let Some((from, to, swap, returned)) = switches.first().copied() {
        let until = switches.get(1).map(|s| s.3);
        let after = prod
            .iter()
            .filter(|s| s.start > returned && until.is_none_or(|u| s.start < u));
        for s in after {
            if s.color == Some(from) {
                cutover.old_color_requests_after_switch += 1;
            } else if s.color == Some(to) {
                cutover.new_color_requests_after_switch += 1;
            }
        }
        cutover.switch_us = swap.as_micros() as u64;
        cutover.at_ms = returned.saturating_duration_since(t0).as_millis() as u64;
        cutover.from = Some(from);
        cutover.to = Some(to);
    } else {
        violations.push("no cutover happened".into());
    }
    if cutover.old_color_requests_after_switch > 0 {
        violations.push(format!(
            "{} production requests started after the switch were served by the old color",
            cutover.old_color_requests_after_switch
        ));
    }
    if production.failed_requests > 0 {
        violations.push(format!(
            "{} production requests failed",
            production.failed_requests
        ));
    }
    if let Some(n) = production.by_version.get("v3") {
        violations.push(format!(
            "{n} production requests reached v3, which must never go live"
        ));
    }
    if production.requests == 0 {
        violations.push("no production traffic was measured".into());
    }

    let mut timeline: Vec<Slice> = Vec::new();
    for s in &samples {
        let i = (s.start.saturating_duration_since(t0).as_millis() / 100) as usize;
        if timeline.len() <= i {
            timeline.resize_with(i + 1, Slice::default);
        }
        let slot = &mut timeline[i];
        if s.status == 0 || s.status >= 500 {
            slot.errors += 1;
        }
        if s.preview {
            slot.preview += 1;
        } else {
            match s.color {
                Some(Color::Blue) => slot.blue += 1,
                Some(Color::Green) => slot.green += 1,
                None => {}
            }
        }
    }
    for (i, s) in timeline.iter_mut().enumerate() {
        s.t_ms = i as u64 * 100;
    }
    Report {
        releases,
        cutover,
        production,
        preview,
        duration_ms: t0.elapsed().as_millis() as u64,
        timeline,
        violations,
    }
}

/// The report as people read it.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let line = |out: &mut String, s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(&mut out, "\n== teal demo report ==".into());
    for rel in &r.releases {
        line(
            &mut out,
            format!(
                "release {:<4} {:<12} {}",
                rel.revision,
                format!("{:?}", rel.outcome),
                rel.reason
            ),
        );
    }
    let c = &r.cutover;
    line(
        &mut out,
        format!(
            "cutover: {} -> {} at {:.1}s, route table swapped in {} µs",
            c.from.map(|x| x.to_string()).unwrap_or_default(),
            c.to.map(|x| x.to_string()).unwrap_or_default(),
            c.at_ms as f64 / 1000.0,
            c.switch_us
        ),
    );
    line(
        &mut out,
        format!(
            "requests started after the switch: {} on the new color, {} on the old color",
            c.new_color_requests_after_switch, c.old_color_requests_after_switch
        ),
    );
    for (name, t) in [("production", &r.production), ("preview", &r.preview)] {
        let versions: Vec<String> = t
            .by_version
            .iter()
            .map(|(v, n)| format!("{v}: {n}"))
            .collect();
        line(
            &mut out,
            format!(
                "{name:<10}: {} requests ({:.0}/s), {} failed, p50 {:.2} ms, p99 {:.2} ms; by version: {}",
                t.requests,
                t.requests_per_second,
                t.failed_requests,
                t.latency_p50_ms,
                t.latency_p99_ms,
                versions.join(", ")
            ),
        );
    }
    line(
        &mut out,
        "\ntimeline, one row per second (B/G: production requests served by blue/green; errors: failed requests of all traffic, preview included):".into(),
    );
    let max = r
        .timeline
        .iter()
        .map(|s| s.blue + s.green)
        .max()
        .unwrap_or(1)
        .max(1);
    // One row per second, summing ten slices, keeps the chart short.
    for chunk in r.timeline.chunks(10) {
        let t = chunk[0].t_ms as f64 / 1000.0;
        let (b, g, e): (u64, u64, u64) = chunk.iter().fold((0, 0, 0), |a, s| {
            (a.0 + s.blue, a.1 + s.green, a.2 + s.errors)
        });
        let width = 50.0 / (max as f64 * chunk.len() as f64);
        let bar = format!(
            "{}{}",
            "B".repeat((b as f64 * width).round() as usize),
            "G".repeat((g as f64 * width).round() as usize)
        );
        line(
            &mut out,
            format!("{t:>5.1}s {bar:<52} blue {b:>6} green {g:>6} errors {e}"),
        );
    }
    if r.violations.is_empty() {
        line(&mut out, "\nall invariants held: no failed production request, no request after the switch on the old color, v3 never live".into());
    } else {
        line(&mut out, "\nINVARIANTS VIOLATED:".into());
        for v in &r.violations {
            line(&mut out, format!("  - {v}"));
        }
    }
    out
}
