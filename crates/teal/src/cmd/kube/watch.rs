//! `teal watch NAME`: a live view of a BlueGreen, redrawn on every change
//! of the object or of its events, and every few seconds for the ages and
//! the traffic per color (totals and rates, see [`super::traffic`]).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::events::v1::Event;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use teal_api::BlueGreen;

use super::{Conn, event_time_ms, fail, is_about, now_ms, traffic, view};

#[derive(clap::Args)]
pub struct Args {
    /// The BlueGreen.
    pub name: String,
    #[command(flatten)]
    pub conn: Conn,
    /// How many recent events to show.
    #[arg(long, default_value_t = 8)]
    pub events: usize,
    /// Stop after N refreshes (each printed view is one); 0: until Ctrl-C.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub count: u64,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let k = args.conn.connect().await?;
    // Fail early, with the usual message, if it does not exist.
    let mut bg: Option<BlueGreen> = Some(k.bluegreen(&args.name).await?);
    let fields = format!("metadata.name={}", args.name);
    let bgs = watcher(k.bluegreens(), watcher::Config::default().fields(&fields)).boxed();
    let events_api: Api<Event> = Api::namespaced(k.client.clone(), &k.ns);
    let evs = watcher(events_api, watcher::Config::default()).boxed();
    let mut events: BTreeMap<String, Event> = BTreeMap::new();
    let tty = std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut bgs = bgs;
    let mut evs = evs;
    let mut last_drawn = String::new();
    let mut rates = traffic::Rates::default();
    let mut drawn: u64 = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            _ = tick.tick() => {}
            ev = bgs.next() => match ev {
                Some(Ok(watcher::Event::Apply(b) | watcher::Event::InitApply(b))) => bg = Some(b),
                Some(Ok(watcher::Event::Delete(_))) => bg = None,
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    tracing::warn!("watching BlueGreen {}: {e}", k.id(&args.name));
                    continue;
                }
                None => return fail(1, "the watch on the BlueGreen ended"),
            },
            ev = evs.next() => match ev {
                Some(Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e))) => {
                    if !is_about(&e, &args.name) {
                        continue;
                    }
                    events.insert(e.uid().unwrap_or_else(|| e.name_any()), e);
                }
                Some(Ok(watcher::Event::Delete(e))) => {
                    events.remove(&e.uid().unwrap_or_else(|| e.name_any()));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    tracing::warn!("watching events in {}: {e}", k.ns);
                    continue;
                }
                None => return fail(1, "the watch on events ended"),
            },
        }
        let Some(b) = &bg else {
            return fail(1, format!("BlueGreen {} was deleted", k.id(&args.name)));
        };
        // Events of an earlier object of the same name do not belong here.
        let uid = b.uid();
        let mut list: Vec<Event> = events
            .values()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.clone()) == uid)
            .cloned()
            .collect();
        list.sort_by_key(event_time_ms);
        let (t, readings) = traffic::fetch(&k, b).await;
        let rate = t.measured.then(|| rates.update(now_ms(), &readings));
        let traffic_lines = traffic::lines(&t, rate.as_ref().map(Option::as_ref));
        let body = view::detail(&k.ns, b, &traffic_lines, &list, args.events);
        if body == last_drawn && !tty {
            continue;
        }
        let mut out = std::io::stdout().lock();
        if tty {
            // Home, clear, draw: a plain terminal redraw.
            let _ = write!(out, "\x1b[H\x1b[2J{body}\n(Ctrl-C to quit)\n");
        } else {
            let _ = writeln!(out, "{body}---");
        }
        let _ = out.flush();
        last_drawn = body;
        drawn += 1;
        if args.count > 0 && drawn >= args.count {
            return Ok(ExitCode::SUCCESS);
        }
    }
}
