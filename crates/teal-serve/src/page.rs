//! The dashboards' shared assets: one stylesheet and one script (helpers
//! and the polling loop), put into each dashboard's HTML page, and the
//! response every dashboard request gets.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

/// The dashboards' stylesheet.
pub const STYLE: &str = include_str!("style.css");
/// Helpers and the polling loop both dashboards share.
pub const SCRIPT: &str = include_str!("common.js");

/// `html` with the shared stylesheet and script put in (at `/*STYLE*/`
/// and `/*SCRIPT*/`).
pub fn page(html: &str) -> String {
    html.replacen("/*STYLE*/", STYLE, 1)
        .replacen("/*SCRIPT*/", SCRIPT, 1)
}

/// A response with `content_type` and no caching.
pub fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CACHE_CONTROL, "no-store")
        .header("x-content-type-options", "nosniff")
        .body(Full::new(body.into()))
        .expect("static response")
}
