//! The controller's read-only dashboard, on the metrics port: `GET /` is
//! one HTML page (inline JS, no build step) polling `GET /dashboard.json`,
//! the BlueGreens the controller watches with phase, colors, revisions,
//! analysis and message. Served by every replica (the standby too): it lists
//! from the apiserver rather than from the leader's cache.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;
use teal_api::{BlueGreen, BlueGreenStatus};
use teal_local::dashboard::{page, respond};

const PAGE: &str = include_str!("dashboard.html");

/// One row of the dashboard.
#[derive(Debug, Serialize)]
pub struct Row {
    pub namespace: String,
    pub name: String,
    /// The status without the engine's internal state.
    pub status: Option<BlueGreenStatus>,
}

/// What `/dashboard.json` answers.
#[derive(Debug, Serialize)]
pub struct Listing {
    /// The watched namespace, `None` for all.
    pub namespace: Option<String>,
    pub items: Vec<Row>,
}

/// Lists BlueGreens for the dashboard.
#[derive(Clone)]
pub struct Dashboard {
    client: Client,
    namespace: Option<String>,
}

impl Dashboard {
    pub fn new(client: Client, namespace: Option<String>) -> Dashboard {
        Dashboard { client, namespace }
    }

    /// The BlueGreens, sorted by namespace and name.
    pub async fn list(&self) -> Result<Listing, kube::Error> {
        let api: Api<BlueGreen> = match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let mut items: Vec<Row> = api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|bg| Row {
                namespace: bg.namespace().unwrap_or_default(),
                name: bg.name_any(),
                status: bg.status.map(|mut s| {
                    s.engine = None;
                    s
                }),
            })
            .collect();
        items.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(Listing {
            namespace: self.namespace.clone(),
            items,
        })
    }

    /// Answers `GET /` and `GET /dashboard.json`; `None` for other requests.
    pub async fn route<B>(&self, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
        if req.method() != Method::GET {
            return None;
        }
        match req.uri().path() {
            "/" => Some(respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                page(PAGE),
            )),
            "/dashboard.json" => Some(match self.list().await {
                Ok(listing) => respond(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_vec(&listing).unwrap_or_default(),
                ),
                Err(e) => respond(
                    StatusCode::BAD_GATEWAY,
                    "text/plain; charset=utf-8",
                    format!("listing BlueGreens from the apiserver failed: {e}\n"),
                ),
            }),
            _ => None,
        }
    }
}
