//! Why a request on the lean path failed, and whose fault it was.
//!
//! Every failure names the side that caused it ([`Fault`]): the client
//! (a request cut off or too slow, a client gone), the upstream (no
//! connection, no answer, a malformed answer, a body cut off) or the router
//! (nowhere to send the request). The side decides how the failure is
//! logged; [`Error::status`] decides what the client is answered, if it
//! can still be answered at all.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use teal_core::Color;

use super::framing::ChunkError;
use super::parse::ResponseError;
use crate::format_duration;

/// The side a failure is blamed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    Client,
    Upstream,
    Router,
}

impl Fault {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Upstream => "upstream",
            Fault::Router => "router",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure of one request on the lean path.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    // The client's.
    /// The request head did not arrive within the header-read timeout.
    #[error("the request head did not arrive within {}", format_duration(*.0))]
    HeadTimeout(Duration),
    /// The client closed its connection inside the request body.
    #[error("the client closed the connection")]
    ClientClosed,
    #[error("{0}")]
    ClientRead(io::Error),
    /// The request body did not arrive within the header-read timeout.
    #[error("it did not arrive within {}", format_duration(*.0))]
    BodyTimeout(Duration),
    #[error("writing to the client failed: {0}")]
    ClientWrite(io::Error),

    // The router's: nowhere to send the request.
    #[error("no route table installed yet")]
    NoTable,
    #[error("no endpoints for color {0}")]
    NoEndpoints(Color),

    // The upstream's, before a response head came.
    /// One connect failed (another endpoint may still be tried).
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// Every connect this request was allowed failed, in order.
    #[error("{}", unreachable(.0))]
    Unreachable(Vec<(SocketAddr, io::Error)>),
    /// No response head within the upstream timeout.
    #[error("no response head within the upstream timeout")]
    Timeout,
    /// Closed (or reset) before any byte of an answer; a `reused`
    /// connection may have been closed by the upstream while it was idle.
    #[error("{}", closed(.cause.as_ref()))]
    Closed {
        reused: bool,
        cause: Option<io::Error>,
    },
    #[error("the response head is larger than 64 KiB")]
    HeadTooLarge,
    #[error("the connection closed inside the response head")]
    ClosedInHead,
    #[error("{0}")]
    ReadHead(io::Error),
    #[error(transparent)]
    Response(#[from] ResponseError),

    // The upstream's, after its response head went to the client.
    #[error("no response body bytes within {}", format_duration(*.0))]
    BodyStalled(Duration),
    #[error("the response body was cut off")]
    BodyCutOff,
    #[error(transparent)]
    Body(#[from] ChunkError),
}

fn unreachable(failed: &[(SocketAddr, io::Error)]) -> String {
    let all: Vec<String> = failed.iter().map(|(a, e)| format!("{a}: {e}")).collect();
    format!("cannot connect to {}", all.join("; "))
}

/// Worded as the general path words it.
fn closed(cause: Option<&io::Error>) -> String {
    match cause {
        None => "connection closed before message completed".into(),
        Some(e) => e.to_string(),
    }
}

impl Error {
    /// Whose fault the failure was.
    pub(crate) fn fault(&self) -> Fault {
        match self {
            Error::HeadTimeout(_)
            | Error::ClientClosed
            | Error::ClientRead(_)
            | Error::BodyTimeout(_)
            | Error::ClientWrite(_) => Fault::Client,
            Error::NoTable | Error::NoEndpoints(_) => Fault::Router,
            Error::Connect(_)
            | Error::Unreachable(_)
            | Error::Timeout
            | Error::Closed { .. }
            | Error::HeadTooLarge
            | Error::ClosedInHead
            | Error::ReadHead(_)
            | Error::Response(_)
            | Error::BodyStalled(_)
            | Error::BodyCutOff
            | Error::Body(_) => Fault::Upstream,
        }
    }

    /// The status the client is answered with; `None` when it cannot be
    /// answered any more (its connection failed, or the response head
    /// already went out): its connection is closed.
    pub(crate) fn status(&self) -> Option<StatusCode> {
        match self {
            Error::HeadTimeout(_) => Some(StatusCode::REQUEST_TIMEOUT),
            Error::ClientClosed | Error::ClientRead(_) | Error::BodyTimeout(_) => {
                Some(StatusCode::BAD_REQUEST)
            }
            Error::NoTable | Error::NoEndpoints(_) => Some(StatusCode::SERVICE_UNAVAILABLE),
            Error::Timeout => Some(StatusCode::GATEWAY_TIMEOUT),
            Error::Connect(_)
            | Error::Unreachable(_)
            | Error::Closed { .. }
            | Error::HeadTooLarge
            | Error::ClosedInHead
            | Error::ReadHead(_)
            | Error::Response(_) => Some(StatusCode::BAD_GATEWAY),
            Error::ClientWrite(_) | Error::BodyStalled(_) | Error::BodyCutOff | Error::Body(_) => {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_their_side_and_answer() {
        let reset = || io::Error::from(io::ErrorKind::ConnectionReset);
        let cases = [
            (
                Error::HeadTimeout(Duration::from_secs(1)),
                Fault::Client,
                Some(408),
            ),
            (Error::ClientClosed, Fault::Client, Some(400)),
            (Error::ClientWrite(reset()), Fault::Client, None),
            (Error::NoTable, Fault::Router, Some(503)),
            (Error::NoEndpoints(Color::Blue), Fault::Router, Some(503)),
            (Error::Timeout, Fault::Upstream, Some(504)),
            (Error::Unreachable(vec![]), Fault::Upstream, Some(502)),
            (
                Error::Response(ResponseError::ContentLength),
                Fault::Upstream,
                Some(502),
            ),
            (Error::Body(ChunkError::Invalid), Fault::Upstream, None),
        ];
        for (e, fault, status) in cases {
            assert_eq!(e.fault(), fault, "{e}");
            assert_eq!(e.status().map(|s| s.as_u16()), status, "{e}");
        }
        // Worded as the messages the general path sends.
        let closed = Error::Closed {
            reused: false,
            cause: None,
        };
        assert_eq!(
            closed.to_string(),
            "connection closed before message completed"
        );
        assert_eq!(
            Error::BodyTimeout(Duration::from_secs(5)).to_string(),
            "it did not arrive within 5s"
        );
    }
}
