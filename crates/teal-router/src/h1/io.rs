//! Socket helpers of the lean path: a per-connection timer, vectored
//! writes, rechunked body writes, and the socket handed to the general path.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// One timer per connection, re-armed lazily: moving the deadline later
/// costs nothing; when the timer fires before the deadline it re-arms.
pub(crate) struct Deadline {
    sleep: Pin<Box<Sleep>>,
    armed: Instant,
    want: Instant,
}

impl Deadline {
    pub(crate) fn new() -> Deadline {
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(far)),
            armed: far,
            want: far,
        }
    }

    pub(crate) fn set(&mut self, at: Instant) {
        self.want = at;
        if at < self.armed || self.sleep.is_elapsed() {
            self.sleep.as_mut().reset(at);
            self.armed = at;
        }
    }

    pub(crate) async fn expired(&mut self) {
        loop {
            self.sleep.as_mut().await;
            if Instant::now() >= self.want {
                return;
            }
            let want = self.want;
            self.sleep.as_mut().reset(want);
            self.armed = want;
        }
    }
}

/// Writes `parts` in order, in one system call when the socket takes them.
pub(crate) async fn write_all(io: &mut TcpStream, parts: &mut [&[u8]]) -> io::Result<()> {
    let mut first = 0;
    loop {
        while first < parts.len() && parts[first].is_empty() {
            first += 1;
        }
        let rest = &parts[first..];
        let n = match rest {
            [] => return Ok(()),
            [one] => io.write(one).await?,
            _ => {
                let slices: [IoSlice<'_>; 4] =
                    std::array::from_fn(|i| IoSlice::new(rest.get(i).copied().unwrap_or_default()));
                io.write_vectored(&slices[..rest.len().min(4)]).await?
            }
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut n = n;
        for part in parts[first..].iter_mut() {
            let k = n.min(part.len());
            *part = &part[k..];
            n -= k;
            if n == 0 {
                break;
            }
        }
    }
}

/// Writes a piece of body, as a chunk when `rechunk`.
pub(crate) async fn write_body(
    io: &mut TcpStream,
    head: &[u8],
    data: &[u8],
    rechunk: bool,
) -> io::Result<()> {
    if !rechunk || data.is_empty() {
        return write_all(io, &mut [head, data]).await;
    }
    let size = format!("{:x}\r\n", data.len());
    write_all(io, &mut [head, size.as_bytes(), data, b"\r\n"]).await
}

/// A client connection's socket after the bytes the lean path already
/// read from it: what the general path is handed.
pub(crate) struct Prefixed<I> {
    pub(crate) prefix: Bytes,
    pub(crate) io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
