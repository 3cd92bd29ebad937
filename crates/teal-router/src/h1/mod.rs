//! The lean HTTP/1.1 path, for the requests most traffic is made of.
//!
//! An HTTP/1.1 request on a cleartext connection with an origin-form target,
//! one `Host`, and no body or a `Content-Length` body of at most 64 KiB is
//! proxied here: its head is parsed once, the upstream head is written
//! straight from the parsed slices, and the response head and body are
//! relayed as bytes on upstream connections kept per worker thread. No
//! header map, no task, channel or timer per request. Anything else
//! (HTTP/1.0, upgrades, `Expect`, chunked or large request bodies, other
//! targets, anything malformed or over a limit, HTTP/2 prior knowledge)
//! hands the connection, with the bytes read so far, to the general path,
//! which serves it from that request on. Both paths follow the same rules:
//! per-request routing, hop-by-hop headers, `x-forwarded-*`, in-flight
//! counts for drain, failover after failed connects, metrics, and the same
//! error statuses and messages.
//!
//! In layers: [`parse`] reads and writes heads (pure), [`framing`] finds
//! where bodies end (pure), [`io`] holds the socket helpers and [`conn`]
//! the connection loop; [`error`] says why a request failed and whose fault
//! it was.

mod conn;
mod error;
mod framing;
mod io;
mod parse;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod props;

pub(crate) use conn::serve;
