//! WebSocket tunnels that a drain ends with close frames.
//!
//! An upgraded connection is relayed byte for byte; for a WebSocket the
//! relay also follows where each frame ends in both directions (headers
//! only: payloads are neither read nor unmasked). When the drain timeout
//! closes the tunnel, the relay stops reading at the end of the frame under
//! way, sends the client a close frame with status 1001 "going away" and the
//! upstream the same (masked, as a client sends it), each followed by the
//! end of the stream, and waits up to [`REPLY`] for their close frames
//! before it closes the connections; all within [`FINISH`]. Where a frame
//! does not end in time, or a side does not read, that side gets a bare TCP
//! close, as any other upgraded connection does.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{oneshot, watch};

/// How long a drained tunnel gets to reach the end of its frames and send
/// its close frames.
pub(crate) const FINISH: Duration = Duration::from_secs(1);
/// How long it then waits for the peers' close frames: the drain does not
/// wait for a client that does not read.
const REPLY: Duration = Duration::from_millis(100);

/// Status 1001 "going away" and its reason.
const GOING_AWAY: [u8; 2] = 1001u16.to_be_bytes();
const REASON: &[u8] = b"color drained";
const OP_CLOSE: u8 = 0x8;

/// Where a stream of WebSocket frames stands.
#[derive(Debug, Default)]
pub(crate) struct Frames {
    /// The current frame's header as far as it has been read (at most 14
    /// bytes: 2, an extended length of 2 or 8, a mask key of 4).
    head: [u8; 14],
    head_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// A close frame has gone by.
    pub(crate) saw_close: bool,
}

impl Frames {
    /// Follows `bytes`, the next bytes of the stream.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            self.head[self.head_len] = bytes[0];
            self.head_len += 1;
            bytes = &bytes[1..];
            if self.head_len >= 2 && self.head_len == self.header_len() {
                self.payload_left = match self.head[1] & 0x7f {
                    126 => u16::from_be_bytes([self.head[2], self.head[3]]).into(),
                    127 => u64::from_be_bytes(self.head[2..10].try_into().expect("8 bytes")),
                    n => n.into(),
                };
                if self.head[0] & 0x0f == OP_CLOSE {
                    self.saw_close = true;
                }
                self.head_len = 0;
            }
        }
    }

    /// The length of the current frame's header (known from its second byte).
    fn header_len(&self) -> usize {
        let ext = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    /// Between two frames: a frame of the relay's own may go next.
    pub(crate) fn at_boundary(&self) -> bool {
        self.head_len == 0 && self.payload_left == 0
    }

    /// Bytes to read before the current frame ends; for a header under way,
    /// one at a time.
    fn to_boundary(&self) -> usize {
        match self.payload_left {
            0 => 1,
            n => n.min(16 * 1024) as usize,
        }
    }
}

/// A close frame with status 1001; masked when `masked` (client to server).
pub(crate) fn close_frame(masked: bool) -> Vec<u8> {
    let mut payload = GOING_AWAY.to_vec();
    payload.extend_from_slice(REASON);
    let mut frame = vec![0x80 | OP_CLOSE, payload.len() as u8];
    if masked {
        frame[1] |= 0x80;
        let key = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            .to_be_bytes();
        let key = [key[0], key[1], key[2], key[3]];
        frame.extend_from_slice(&key);
        payload
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b ^= key[i % 4]);
    }
    frame.extend_from_slice(&payload);
    frame
}

/// How one direction of the relay ended.
enum Ended {
    /// Its reader reached the end (or failed); its writer is shut down.
    Done,
    /// Stopped by the drain between two reads.
    Stopped,
}

/// One direction: `from` to `to`, following the frames, until the end or
/// `stop`.
struct Pump<R, W> {
    from: ReadHalf<R>,
    to: WriteHalf<W>,
    frames: Frames,
    ended: Ended,
}

impl<R: AsyncRead, W: AsyncWrite> Pump<R, W> {
    async fn run(mut self, mut stop: watch::Receiver<bool>) -> Self {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => {
                    self.ended = Ended::Stopped;
                    return self;
                }
                r = self.from.read(&mut buf) => r.unwrap_or(0),
            };
            if n == 0 || self.to.write_all(&buf[..n]).await.is_err() {
                let _ = self.to.shutdown().await;
                self.ended = Ended::Done;
                return self;
            }
            self.frames.feed(&buf[..n]);
        }
    }

    /// Relays the rest of the frame under way; false if it cannot.
    async fn finish_frame(&mut self) -> bool {
        let mut buf = vec![0u8; 16 * 1024];
        while !self.frames.at_boundary() {
            let want = self.frames.to_boundary().min(buf.len());
            match self.from.read(&mut buf[..want]).await {
                Ok(n) if n > 0 => {
                    if self.to.write_all(&buf[..n]).await.is_err() {
                        return false;
                    }
                    self.frames.feed(&buf[..n]);
                }
                _ => return false,
            }
        }
        true
    }

    /// Sends our close frame to `to` where the stream allows one (and
    /// none went that way already).
    async fn send_close(&mut self, frame: &[u8]) -> bool {
        if !matches!(self.ended, Ended::Stopped) || self.frames.saw_close {
            return false;
        }
        if !self.finish_frame().await {
            return false;
        }
        // The close frame, then the end of the stream: nothing follows it.
        self.to.write_all(frame).await.is_ok() && self.to.shutdown().await.is_ok()
    }

    /// Reads (and drops) what `from` still sends until its close frame or
    /// its end.
    async fn await_close(&mut self) {
        let mut buf = vec![0u8; 16 * 1024];
        let mut answer = Frames::default();
        while !answer.saw_close {
            match self.from.read(&mut buf).await {
                Ok(n) if n > 0 => answer.feed(&buf[..n]),
                _ => return,
            }
        }
    }
}

/// Relays a WebSocket between `client` and `upstream` until either side
/// closes, or `close` fires (drain timeout): then both get a close frame
/// 1001 where the stream allows (see the module's notes).
pub(crate) async fn relay<C, U>(client: C, upstream: U, close: oneshot::Receiver<()>)
where
    C: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    let (client_r, client_w) = tokio::io::split(client);
    let (upstream_r, upstream_w) = tokio::io::split(upstream);
    let (stop, stopped) = watch::channel(false);
    let down = Pump {
        from: upstream_r,
        to: client_w,
        frames: Frames::default(),
        ended: Ended::Done,
    };
    let up = Pump {
        from: client_r,
        to: upstream_w,
        frames: Frames::default(),
        ended: Ended::Done,
    };
    let pumps = async { tokio::join!(down.run(stopped.clone()), up.run(stopped)) };
    tokio::pin!(pumps);
    tokio::select! {
        _ = &mut pumps => return,
        _ = close => {}
    }
    tracing::info!("closing an upgraded connection (WebSocket) of a drained color");
    let _ = stop.send(true);
    let closing = async {
        let (mut down, mut up) = pumps.await;
        // Whichever frames are under way end first: both at once.
        let (server_frame, client_frame) = (close_frame(false), close_frame(true));
        let (to_client, to_upstream) =
            tokio::join!(down.send_close(&server_frame), up.send_close(&client_frame),);
        // Their answers are read before the connections close (unread
        // bytes would turn the close into a reset).
        let wait_client = async {
            if to_client {
                up.await_close().await;
            }
        };
        let wait_upstream = async {
            if to_upstream {
                down.await_close().await;
            }
        };
        let _ =
            tokio::time::timeout(REPLY, async { tokio::join!(wait_client, wait_upstream) }).await;
        (to_client, to_upstream)
    };
    match tokio::time::timeout(FINISH, closing).await {
        Ok((to_client, to_upstream)) => {
            tracing::debug!(to_client, to_upstream, "close frames sent")
        }
        Err(_) => tracing::debug!("a side of a drained WebSocket did not finish in time"),
    }
}

/// Whether an upgrade request asks for a WebSocket.
pub(crate) fn is_websocket(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin_op: u8, masked: bool, len: usize) -> Vec<u8> {
        let mut f = vec![fin_op];
        let m = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(m | len as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0x55, len));
        f
    }

    #[test]
    fn frame_ends_are_found_however_the_bytes_are_cut() {
        let mut stream = Vec::new();
        for (op, masked, len) in [
            (0x81, false, 5),
            (0x02, true, 300),
            (0x89, true, 0),
            (0x80, false, 70_000),
        ] {
            stream.extend(frame(op, masked, len));
        }
        for cut in [1, 2, 3, 7, 100, 4096, stream.len()] {
            let mut f = Frames::default();
            for chunk in stream.chunks(cut) {
                f.feed(chunk);
            }
            assert!(f.at_boundary(), "cut {cut}");
            assert!(!f.saw_close);
        }
        let mut f = Frames::default();
        f.feed(&stream[..stream.len() - 1]);
        assert!(!f.at_boundary());
        assert_eq!(f.to_boundary(), 1);
        f.feed(&close_frame(true));
        assert!(!f.saw_close, "one byte short: still inside the last frame");
    }

    /// A client and an application talking through `relay`, which the
    /// drain then ends: both read a close frame 1001.
    #[tokio::test]
    async fn a_drained_relay_sends_both_sides_going_away() {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::protocol::Role;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

        let (client_io, router_client) = tokio::io::duplex(64 * 1024);
        let (router_upstream, app_io) = tokio::io::duplex(64 * 1024);
        let (close, closed) = oneshot::channel();
        let relayed = tokio::spawn(relay(router_client, router_upstream, closed));
        let mut client =
            tokio_tungstenite::WebSocketStream::from_raw_socket(client_io, Role::Client, None)
                .await;
        let mut app =
            tokio_tungstenite::WebSocketStream::from_raw_socket(app_io, Role::Server, None).await;
        // Large messages both ways, so frames span many reads.
        let big = "x".repeat(100_000);
        client.send(Message::text(big.clone())).await.unwrap();
        assert_eq!(app.next().await.unwrap().unwrap().into_text().unwrap(), big);
        app.send(Message::text(big.clone())).await.unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap().into_text().unwrap(),
            big
        );

        close.send(()).unwrap();
        let (c, a) = tokio::join!(client.next(), app.next());
        for got in [c, a] {
            match got {
                Some(Ok(Message::Close(Some(f)))) => {
                    assert_eq!(f.code, CloseCode::Away);
                    assert_eq!(f.reason.as_str(), "color drained");
                }
                other => panic!("no close frame: {other:?}"),
            }
        }
        tokio::time::timeout(FINISH * 2, relayed)
            .await
            .expect("the relay ends")
            .unwrap();
    }

    #[test]
    fn close_frames_carry_1001_masked_or_not() {
        let plain = close_frame(false);
        assert_eq!(&plain[..4], &[0x88, 2 + REASON.len() as u8, 0x03, 0xe9]);
        let masked = close_frame(true);
        assert_eq!(masked[1], 0x80 | (2 + REASON.len() as u8));
        let key = &masked[2..6];
        let payload: Vec<u8> = masked[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(&payload[..2], &[0x03, 0xe9]);
        assert_eq!(&payload[2..], REASON);
        let mut f = Frames::default();
        f.feed(&masked);
        assert!(f.saw_close && f.at_boundary());
    }
}
