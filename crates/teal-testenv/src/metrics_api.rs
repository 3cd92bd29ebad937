//! The external metrics API (`external.metrics.k8s.io/v1beta1`) served by the test itself,
//! so that kube-controller-manager's HorizontalPodAutoscaler controller scales on a metric
//! whose value the test sets, as it would on a KEDA or Prometheus-adapter metric.
//!
//! An HTTPS server on loopback (a certificate of its own) is registered with the apiserver's
//! aggregation layer: an `APIService` whose Service is an `ExternalName` of `localhost`, so the
//! apiserver on this machine reaches it without any Service network. Every metric it is asked
//! for has the value last [`set`](ExternalMetrics::set) (0 before that); it records the
//! metric names it was asked for.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::json;

use crate::Error;

const GROUP_VERSION: &str = "external.metrics.k8s.io/v1beta1";
const APISERVICE: &str = "v1beta1.external.metrics.k8s.io";
const NAMESPACE: &str = "teal-test-metrics";

#[derive(Default)]
struct Values {
    values: BTreeMap<String, String>,
    asked: Vec<String>,
}

/// A running external metrics API; see the module documentation.
#[derive(Clone)]
pub struct ExternalMetrics {
    values: Arc<Mutex<Values>>,
}

impl ExternalMetrics {
    /// Starts the server and registers it; returns once the apiserver reports the
    /// `APIService` Available.
    pub async fn start(client: kube::Client) -> Result<ExternalMetrics, Error> {
        let fail =
            |what: &str, e: &dyn std::fmt::Display| Error::MetricsApi(format!("{what}: {e}"));
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .map_err(|e| fail("a certificate for the metrics API", &e))?;
        let cert = key.cert.der().clone();
        let private = rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der())
            .map_err(|e| fail("the metrics API's key", &e))?;
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_no_client_auth()
                .with_single_cert(vec![cert], private)
        })
        .map_err(|e| fail("the metrics API's TLS configuration", &e))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::io("listening for the metrics API", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("the metrics API's address", e))?
            .port();
        let metrics = ExternalMetrics {
            values: Arc::default(),
        };
        let values = metrics.values.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, values) = (acceptor.clone(), values.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let answer = answer(&values, req.uri().path());
                        async move { Ok::<_, Infallible>(answer) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        register(&client, port).await?;
        Ok(metrics)
    }

    /// From now on, `metric` (in every namespace) has `value` (a Kubernetes quantity).
    pub fn set(&self, metric: &str, value: &str) {
        let mut v = self.values.lock().unwrap();
        v.values.insert(metric.to_owned(), value.to_owned());
    }

    /// The metric names asked for so far, in order.
    pub fn asked(&self) -> Vec<String> {
        self.values.lock().unwrap().asked.clone()
    }
}

/// The answer to a GET of `path`: discovery, or a metric's value.
fn answer(values: &Mutex<Values>, path: &str) -> http::Response<Full<Bytes>> {
    let body = if path == format!("/apis/{GROUP_VERSION}") {
        Some(json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION,
            "resources": [{"name": "externalmetrics", "singularName": "", "namespaced": true,
                           "kind": "ExternalMetricValueList", "verbs": ["get"]}],
        }))
    } else {
        let prefix = format!("/apis/{GROUP_VERSION}/namespaces/");
        path.strip_prefix(&prefix)
            .and_then(|rest| rest.split_once('/'))
            .map(|(_, metric)| {
                let mut v = values.lock().unwrap();
                v.asked.push(metric.to_owned());
                let value = v.values.get(metric).cloned().unwrap_or_else(|| "0".into());
                json!({
                    "kind": "ExternalMetricValueList", "apiVersion": GROUP_VERSION,
                    "metadata": {},
                    "items": [{"metricName": metric, "metricLabels": {}, "value": value,
                               "timestamp": now_rfc3339()}],
                })
            })
    };
    let (status, body) = match body {
        Some(b) => (200, b.to_string()),
        None => (
            404,
            json!({"kind": "Status", "status": "Failure", "code": 404}).to_string(),
        ),
    };
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// Now, as the timestamp the metrics API carries (as a `metav1.Time` is written).
fn now_rfc3339() -> serde_json::Value {
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    serde_json::to_value(now).unwrap_or_default()
}

/// The `APIService` (and its `ExternalName` Service) pointing the apiserver at `port` on
/// this machine; waits until it is Available.
async fn register(client: &kube::Client, port: u16) -> Result<(), Error> {
    let kube = |what: &str| {
        let what = what.to_owned();
        move |source| Error::Kube { what, source }
    };
    let apply = PatchParams::apply("teal-testenv").force();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            NAMESPACE,
            &apply,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": NAMESPACE}})),
        )
        .await
        .map_err(kube("the metrics API's namespace"))?;
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    services
        .patch(
            "external-metrics",
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "external-metrics"},
                "spec": {"type": "ExternalName", "externalName": "localhost"},
            })),
        )
        .await
        .map_err(kube("the metrics API's Service"))?;
    let resource = ApiResource {
        group: "apiregistration.k8s.io".into(),
        version: "v1".into(),
        api_version: "apiregistration.k8s.io/v1".into(),
        kind: "APIService".into(),
        plural: "apiservices".into(),
    };
    let apiservices: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    apiservices
        .patch(
            APISERVICE,
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                "metadata": {"name": APISERVICE},
                "spec": {
                    "group": "external.metrics.k8s.io", "version": "v1beta1",
                    "service": {"namespace": NAMESPACE, "name": "external-metrics", "port": port},
                    "insecureSkipTLSVerify": true,
                    "groupPriorityMinimum": 100, "versionPriority": 100,
                },
            })),
        )
        .await
        .map_err(kube("the metrics API's APIService"))?;
    crate::try_wait_for(
        "the external metrics APIService to be Available",
        Duration::from_secs(60),
        || async {
            let s = apiservices
                .get(APISERVICE)
                .await
                .map_err(|e| e.to_string())?;
            let available = s.data["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Available");
            match available {
                Some(c) if c["status"] == "True" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}
