//! Kubernetes Events about BlueGreens (`events.k8s.io/v1`).
//!
//! kube-runtime's recorder counts an event as a repeat of an earlier one
//! when its type, reason and action match, whatever its note says: after a
//! rollback "switched to blue" showed as "switched to green (x2)". Here a
//! repeat is the same note too: each event says what happened to which
//! revision, and only a true repeat (a gate polled again, the same failure
//! again) becomes a series.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use kube::{Api, Client};

/// A repeat within this long of the last one joins its series (as
/// client-go's and kube-runtime's recorders do).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// Publishes events; one per controller.
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    /// The last event written for each key, and when.
    recent: Mutex<HashMap<Key, (K8sEvent, Instant)>>,
}

/// What makes two events the same: the object, type, reason and note.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Key {
    uid: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    warning: bool,
    reason: String,
    note: Option<String>,
}

impl Recorder {
    pub fn new(client: Client, reporter: Reporter) -> Recorder {
        Recorder {
            client,
            reporter,
            recent: Mutex::default(),
        }
    }

    fn key(ev: &Event, regarding: &ObjectReference) -> Key {
        Key {
            uid: regarding.uid.clone(),
            namespace: regarding.namespace.clone(),
            name: regarding.name.clone(),
            warning: ev.type_ == EventType::Warning,
            reason: ev.reason.clone(),
            note: ev.note.clone(),
        }
    }

    /// The event to write for `ev` at `now`: a new one, or the next of the
    /// series of the same event written less than [`SERIES_WINDOW`] ago.
    fn next(&self, ev: &Event, regarding: &ObjectReference, now: Instant) -> K8sEvent {
        let key = Self::key(ev, regarding);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|_, (_, at)| now.duration_since(*at) < SERIES_WINDOW);
        match recent.get(&key) {
            Some((last, _)) => {
                let mut e = last.clone();
                e.series = Some(EventSeries {
                    count: last.series.as_ref().map_or(2, |s| s.count + 1),
                    last_observed_time: MicroTime(Timestamp::now()),
                });
                e
            }
            None => self.new_event(ev, regarding),
        }
    }

    fn new_event(&self, ev: &Event, regarding: &ObjectReference) -> K8sEvent {
        let now = Timestamp::now();
        let controller = self.reporter.controller.clone();
        K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            note: ev.note.clone(),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(&controller),
                    now.as_nanosecond()
                )),
                ..Default::default()
            },
            reporting_instance: Some(self.reporter.instance.clone().unwrap_or(controller.clone())),
            reporting_controller: Some(controller),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            related: ev.secondary.clone(),
            ..Default::default()
        }
    }

    /// Writes `ev` about `regarding`.
    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let event = self.next(ev, regarding, Instant::now());
        let ns = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), ns);
        let name = event.metadata.name.clone().unwrap_or_default();
        if event.series.is_some() {
            api.patch(
                &name,
                &crate::reconcile::patch_params(),
                &Patch::Merge(&event),
            )
            .await?;
        } else {
            api.create(&PostParams::default(), &event).await?;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.insert(Self::key(ev, regarding), (event, Instant::now()));
        Ok(())
    }

    /// Events remembered (to continue their series).
    pub fn entries(&self) -> usize {
        self.recent.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Forgets the events of the object with `uid` (it was deleted).
    pub fn forget(&self, uid: &str) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|k, _| k.uid.as_deref() != Some(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder() -> Recorder {
        // A client that is never called: only `next` is exercised.
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        Recorder::new(
            Client::try_from(config).unwrap(),
            Reporter {
                controller: "teal-controller".into(),
                instance: None,
            },
        )
    }

    fn ev(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Release".into(),
            secondary: None,
        }
    }

    #[test]
    fn events_with_the_same_reason_and_another_note_are_not_merged() {
        let r = recorder();
        let bg = ObjectReference {
            name: Some("shop".into()),
            namespace: Some("prod".into()),
            uid: Some("u1".into()),
            ..Default::default()
        };
        let now = Instant::now();
        let to_green = ev("Switched", "production traffic switched to green (v2)");
        let first = r.next(&to_green, &bg, now);
        assert!(first.series.is_none());
        r.recent
            .lock()
            .unwrap()
            .insert(Recorder::key(&to_green, &bg), (first.clone(), now));
        let to_blue = ev("Switched", "production traffic switched to blue (v1)");
        let back = r.next(&to_blue, &bg, now);
        assert!(back.series.is_none(), "another note is another event");
        assert_eq!(back.note.as_deref(), to_blue.note.as_deref());
        let again = r.next(&to_green, &bg, now + Duration::from_secs(1));
        assert_eq!(again.series.map(|s| s.count), Some(2), "a true repeat");
        assert_eq!(again.metadata.name, first.metadata.name);
        let later = r.next(&to_green, &bg, now + SERIES_WINDOW);
        assert!(later.series.is_none(), "past the window: a new event");
    }
}
