//! What the controller's caches hold per object, measured on the heap.
//!
//! `cargo bench -p teal-controller --bench cache_footprint`
//!
//! Reads the objects of one adopted BlueGreen as the apiserver served them
//! (`benches/fixtures/`: a small app as `bench/controller-scale` creates
//! it, and a typical production app with probes, resources, env and
//! volumes), keeps `COPIES` of each in a reflector store the way the
//! controller's caches do, and prints the heap bytes each copy holds: as
//! received, without managed fields (what the caches but the BlueGreens'
//! kept before `cache::keep`) and as kept, with the total for one BlueGreen.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use serde::de::DeserializeOwned;
use teal_api::BlueGreen;
use teal_controller::cache::keep;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Copies of each object kept: enough that the store's own tables are a
/// small share of the figure.
const COPIES: usize = 2_000;

/// Heap bytes in use now.
fn heap() -> u64 {
    dhat::HeapStats::get().curr_bytes as u64
}

/// Bytes per copy of `json` held in a reflector store: as received, with
/// only managed fields and kubectl's last applied copy dropped
/// ([`keep::meta`]), and trimmed by `trim` as the controller's cache keeps
/// it.
fn per_object<K>(json: &serde_json::Value, trim: fn(&mut K)) -> [u64; 3]
where
    K: kube::Resource<DynamicType = ()> + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let measure = |trim: Option<fn(&mut K)>| {
        let mut writer = Writer::<K>::default();
        let before = heap();
        for i in 0..COPIES {
            // Each copy its own name, as each BlueGreen's objects are.
            let mut v = json.clone();
            let name = format!("{}-{i:05}", v["metadata"]["name"].as_str().unwrap_or("x"));
            v["metadata"]["name"] = name.into();
            let mut obj: K = serde_json::from_value(v).expect("a fixture of this kind");
            if let Some(trim) = trim {
                trim(&mut obj);
            }
            writer.apply_watcher_event(&watcher::Event::Apply(obj));
        }
        let bytes = (heap() - before) / COPIES as u64;
        drop(writer);
        bytes
    };
    [
        measure(None),
        measure(Some(keep::meta::<K>)),
        measure(Some(trim)),
    ]
}

fn fixture(app: &str, kind: &str) -> serde_json::Value {
    let path = format!(
        "{}/benches/fixtures/{app}/{kind}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn main() {
    let _profiler = dhat::Profiler::builder()
        .testing()
        .trim_backtraces(Some(1))
        .build();
    for app in ["small", "typical"] {
        // Per adopted BlueGreen: itself, its workload (at 0 replicas), the
        // live color's Deployment, ReplicaSet and pod (one replica here),
        // the live and preview Services.
        let rows: BTreeMap<&str, [u64; 3]> = BTreeMap::from([
            (
                "BlueGreen",
                per_object::<BlueGreen>(&fixture(app, "bluegreen"), keep::bluegreen),
            ),
            (
                "workload Deployment",
                per_object::<Deployment>(&fixture(app, "workload"), keep::workload),
            ),
            (
                "color Deployment",
                per_object::<Deployment>(&fixture(app, "color-deployment"), keep::color_deployment),
            ),
            (
                "ReplicaSet",
                per_object::<ReplicaSet>(&fixture(app, "replicaset"), keep::replica_set),
            ),
            ("Pod", per_object::<Pod>(&fixture(app, "pod"), keep::pod)),
            (
                "Service (live)",
                per_object::<Service>(&fixture(app, "service"), keep::service),
            ),
            (
                "Service (preview)",
                per_object::<Service>(&fixture(app, "preview-service"), keep::service),
            ),
        ]);
        println!("\n{app} app: heap bytes per cached object ({COPIES} copies each)\n");
        println!("| object | as received | without managed fields | as kept |");
        println!("|---|---:|---:|---:|");
        let mut sum = [0; 3];
        for (name, bytes) in &rows {
            println!("| {name} | {} | {} | {} |", bytes[0], bytes[1], bytes[2]);
            for (s, b) in sum.iter_mut().zip(bytes) {
                *s += b;
            }
        }
        println!(
            "| one adopted BlueGreen | {} | {} | {} |",
            sum[0], sum[1], sum[2]
        );
    }
}
