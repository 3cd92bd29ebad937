//! The controller's read-only dashboard, on the metrics port: `GET /` is
//! one HTML page (inline JS, no build step) polling `GET /dashboard.json`,
//! the BlueGreens the controller watches with phase, colors, revisions,
//! analysis and message. Served by every replica (the standby too) from a
//! watch-fed cache of BlueGreens ([`crate::cache::BlueGreens`]), started by
//! the first request: requests send nothing to the apiserver.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;
use teal_api::{BlueGreen, BlueGreenStatus};
use teal_serve::page::{page, respond};

use crate::cache::BlueGreens;

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

/// How long a request waits for the cache's first listing.
const FIRST_LISTING: Duration = Duration::from_secs(10);

/// Lists BlueGreens for the dashboard.
#[derive(Clone)]
pub struct Dashboard {
    bluegreens: BlueGreens,
    namespace: Option<String>,
}

impl Dashboard {
    pub fn new(client: Client, namespace: Option<String>) -> Dashboard {
        let api: Api<BlueGreen> = match &namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        };
        Dashboard {
            bluegreens: BlueGreens::new(api),
            namespace,
        }
    }

    /// The BlueGreens, sorted by namespace and name; `None` while the cache
    /// has not got its first listing.
    pub async fn list(&self) -> Option<Listing> {
        let mut items: Vec<Row> = self
            .bluegreens
            .state(FIRST_LISTING)
            .await?
            .iter()
            .map(|bg| Row {
                namespace: bg.namespace().unwrap_or_default(),
                name: bg.name_any(),
                // The cache keeps no engine state.
                status: bg.status.clone(),
            })
            .collect();
        items.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Some(Listing {
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
                Some(listing) => respond(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_vec(&listing).unwrap_or_default(),
                ),
                None => respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    format!(
                        "no listing of BlueGreens from the apiserver within {}s yet (see the controller's log)\n",
                        FIRST_LISTING.as_secs()
                    ),
                ),
            }),
            _ => None,
        }
    }
}
