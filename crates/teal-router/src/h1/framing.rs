//! Body framing on the lean path: where a message body ends (RFC 9112 §6).
//!
//! A request body is taken here only when it has a `Content-Length` of at
//! most [`MAX_BODY`]; chunked request bodies and upgrades go to the general
//! path. A response body is framed by its `Content-Length`, by chunked
//! transfer coding (relayed unchanged, its end found by [`Chunk`]), or runs
//! until the upstream closes. A `101 Switching Protocols` answer is no body
//! at all: the lean path never asks for an upgrade, so it is an upstream
//! failure (see [`super::parse::ResponseError::SwitchedUnasked`]). Pure: no
//! I/O.

use http::StatusCode;

use super::parse::tokens;

/// Larger request bodies take the general path, which streams them.
pub(crate) const MAX_BODY: u64 = 64 * 1024;

/// The length of a request body the lean path buffers, from its
/// `Content-Length` (none: no body); `None` for one too large, which the
/// general path streams.
pub(crate) fn request_body(length: Option<u64>) -> Option<usize> {
    let n = length.unwrap_or(0);
    (n <= MAX_BODY).then_some(n as usize)
}

/// How the end of a response body is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body, or all of it relayed.
    Done,
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Close,
}

impl Framing {
    /// The framing of a response body with these headers: `no_body` for an
    /// answer to HEAD, a 204 or a 304; `te` the `Transfer-Encoding` value;
    /// `length` the `Content-Length` (ignored when there is a
    /// transfer coding).
    pub(crate) fn of_response(no_body: bool, te: Option<&[u8]>, length: Option<u64>) -> Framing {
        match (no_body, te, length) {
            (true, _, _) => Framing::Done,
            (false, Some(te), _) => {
                let last = tokens(te).last().unwrap_or(b"");
                if last.eq_ignore_ascii_case(b"chunked") {
                    Framing::Chunked(Chunk::START)
                } else {
                    Framing::Close
                }
            }
            (false, None, Some(0)) => Framing::Done,
            (false, None, Some(n)) => Framing::Length(n),
            (false, None, None) => Framing::Close,
        }
    }

    /// How many bytes at the start of `bytes` belong to the body; the body
    /// ended when [`Framing::done`] says so.
    pub(crate) fn take(&mut self, bytes: &[u8]) -> Result<usize, ChunkError> {
        match self {
            Framing::Done => Ok(0),
            Framing::Length(n) => {
                let k = (*n).min(bytes.len() as u64);
                *n -= k;
                if *n == 0 {
                    *self = Framing::Done;
                }
                Ok(k as usize)
            }
            Framing::Chunked(state) => {
                let k = state.feed(bytes)?;
                if *state == Chunk::Done {
                    *self = Framing::Done;
                }
                Ok(k)
            }
            Framing::Close => Ok(bytes.len()),
        }
    }

    pub(crate) fn done(&self) -> bool {
        *self == Framing::Done
    }
}

/// No response body: the answer to a HEAD request, a 204 or a 304.
pub(crate) fn no_body(head_request: bool, status: StatusCode) -> bool {
    head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
}

/// Why a chunked body cannot be relayed: the upstream's fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChunkError {
    #[error("chunk size too large")]
    SizeTooLarge,
    #[error("bare LF in a chunk size line")]
    BareLf,
    #[error("invalid chunked encoding")]
    Invalid,
}

/// Position in a chunked body (RFC 9112 §7.1), relayed unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    Size { n: u64, digits: u8 },
    Ext(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    LastLf,
    Done,
}

impl Chunk {
    pub(crate) const START: Chunk = Chunk::Size { n: 0, digits: 0 };

    /// Advances over `bytes`; returns how many of them belong to the body
    /// (all, unless it ends inside them).
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < bytes.len() {
            match *self {
                Chunk::Done => return Ok(i),
                Chunk::Data(n) => {
                    let take = n.min((bytes.len() - i) as u64);
                    i += take as usize;
                    *self = if take == n {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(n - take)
                    };
                    continue;
                }
                _ => {}
            }
            *self = self.step(bytes[i])?;
            i += 1;
        }
        Ok(i)
    }

    /// The state after one byte outside chunk data.
    fn step(self, b: u8) -> Result<Chunk, ChunkError> {
        Ok(match (self, b) {
            (Chunk::Size { n, digits }, b) if b.is_ascii_hexdigit() => {
                if digits >= 15 {
                    return Err(ChunkError::SizeTooLarge);
                }
                let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                Chunk::Size {
                    n: n * 16 + d,
                    digits: digits + 1,
                }
            }
            (Chunk::Size { n, digits }, b';' | b' ' | b'\t') if digits > 0 => Chunk::Ext(n),
            (Chunk::Size { n, digits }, b'\r') if digits > 0 => Chunk::SizeLf(n),
            (Chunk::Ext(n), b'\r') => Chunk::SizeLf(n),
            (Chunk::Ext(_), b'\n') => return Err(ChunkError::BareLf),
            (Chunk::Ext(n), _) => Chunk::Ext(n),
            (Chunk::SizeLf(0), b'\n') => Chunk::TrailerStart,
            (Chunk::SizeLf(n), b'\n') => Chunk::Data(n),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataLf, b'\n') => Chunk::START,
            (Chunk::TrailerStart, b'\r') => Chunk::LastLf,
            (Chunk::TrailerStart | Chunk::TrailerLine, b'\n') => Chunk::TrailerStart,
            (Chunk::TrailerStart | Chunk::TrailerLine, _) => Chunk::TrailerLine,
            (Chunk::LastLf, b'\n') => Chunk::Done,
            _ => return Err(ChunkError::Invalid),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(input: &[u8]) -> (Chunk, Result<usize, ChunkError>) {
        let mut c = Chunk::START;
        let r = c.feed(input);
        (c, r)
    }

    #[test]
    fn chunked_body_ends_after_the_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nGET";
        let (state, used) = feed_all(body);
        assert_eq!(state, Chunk::Done);
        assert_eq!(used, Ok(body.len() - 3));
        // Byte by byte gives the same end.
        let mut c = Chunk::START;
        let mut total = 0;
        for b in body.iter() {
            if c == Chunk::Done {
                break;
            }
            total += c.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(total, body.len() - 3);
    }

    #[test]
    fn chunked_body_errors_are_reported() {
        assert!(feed_all(b"zz\r\n").1.is_err());
        assert!(feed_all(b"5\r\nhelloXX").1.is_err());
        assert!(feed_all(b"ffffffffffffffffff\r\n").1.is_err());
        let (state, used) = feed_all(b"3\r\nab");
        assert_eq!(state, Chunk::Data(1));
        assert_eq!(used, Ok(5));
    }

    #[test]
    fn length_framing_takes_exactly_the_body() {
        let mut f = Framing::Length(5);
        assert_eq!(f.take(b"abc"), Ok(3));
        assert!(!f.done());
        assert_eq!(f.take(b"deGET"), Ok(2));
        assert!(f.done());
    }
}
