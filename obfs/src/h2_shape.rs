//! Puts the server's first HTTP/2 frames in nginx's order.
//!
//! nginx opens every HTTP/2 connection with its SETTINGS frame and, in the
//! same write, a WINDOW_UPDATE on stream 0 raising the connection window to
//! 2^31 - 1. The `h2` crate sends that WINDOW_UPDATE only after it has read
//! the client's first frames, so the order of the very first frames, seen
//! on every connection, would tell the two apart. This wrapper injects
//! nginx's WINDOW_UPDATE right after the first SETTINGS frame and takes the
//! same increment out of the first stream-0 WINDOW_UPDATE `h2` writes later,
//! so both ends still agree on the window. After that it only passes bytes
//! through.
//!
//! Until `h2` has written its own WINDOW_UPDATE, `h2` still counts the
//! connection window as 65,535 bytes while the client already knows the
//! larger one; a client sending a large body at once would then overrun
//! `h2`'s count (FLOW_CONTROL_ERROR). So the read side hands `h2` only the
//! client's preface and first frame until then; with nothing more to read,
//! `h2` flushes its pending frames, the WINDOW_UPDATE among them, and the
//! rest of the client's bytes follow.
//!
//! ```text
//! frame header: length (24) | type (8) | flags (8) | R (1) + stream id (31)
//! WINDOW_UPDATE payload: R (1) + increment (31)
//! ```

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const FRAME_HEADER: usize = 9;
const TYPE_SETTINGS: u8 = 4;
const TYPE_WINDOW_UPDATE: u8 = 8;

/// Rewrites the server's outgoing HTTP/2 bytes, without I/O.
#[derive(Debug)]
pub(crate) struct Shaper {
    increment: u32,
    injected: bool,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Collecting a frame header.
    Header {
        have: [u8; FRAME_HEADER],
        len: usize,
    },
    /// Copying (or holding, for a stream-0 WINDOW_UPDATE) a payload.
    Payload {
        header: [u8; FRAME_HEADER],
        left: usize,
        /// A stream-0 WINDOW_UPDATE, held back until its increment is known.
        hold: bool,
        held: Vec<u8>,
    },
    /// Done: everything passes through untouched.
    Through,
}

impl Shaper {
    /// `increment`: the connection window raise nginx sends at once.
    pub fn new(increment: u32) -> Self {
        Self {
            increment,
            injected: false,
            state: State::Header {
                have: [0; FRAME_HEADER],
                len: 0,
            },
        }
    }

    pub fn passing_through(&self) -> bool {
        matches!(self.state, State::Through)
    }

    fn window_update(increment: u32) -> [u8; FRAME_HEADER + 4] {
        let mut f = [0u8; FRAME_HEADER + 4];
        f[2] = 4;
        f[3] = TYPE_WINDOW_UPDATE;
        f[FRAME_HEADER..].copy_from_slice(&(increment & 0x7fff_ffff).to_be_bytes());
        f
    }

    /// Takes bytes `h2` wrote and appends what goes on the wire to `out`.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        while !data.is_empty() {
            match &mut self.state {
                State::Through => {
                    out.extend_from_slice(data);
                    return;
                }
                State::Header { have, len } => {
                    let take = (FRAME_HEADER - *len).min(data.len());
                    have[*len..*len + take].copy_from_slice(&data[..take]);
                    *len += take;
                    data = &data[take..];
                    if *len < FRAME_HEADER {
                        continue;
                    }
                    let header = *have;
                    let left = usize::from(header[0]) << 16
                        | usize::from(header[1]) << 8
                        | usize::from(header[2]);
                    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]])
                        & 0x7fff_ffff;
                    let hold = header[3] == TYPE_WINDOW_UPDATE && stream == 0 && left == 4;
                    if !hold {
                        out.extend_from_slice(&header);
                    }
                    self.state = State::Payload {
                        header,
                        left,
                        hold,
                        held: Vec::new(),
                    };
                    self.end_of_payload(out);
                }
                State::Payload {
                    left, hold, held, ..
                } => {
                    let take = (*left).min(data.len());
                    if *hold {
                        held.extend_from_slice(&data[..take]);
                    } else {
                        out.extend_from_slice(&data[..take]);
                    }
                    *left -= take;
                    data = &data[take..];
                    self.end_of_payload(out);
                }
            }
        }
    }

    /// At the end of a frame: after the first SETTINGS, inject the window
    /// update; a held stream-0 WINDOW_UPDATE is replaced by what is left of
    /// its increment, and from then on bytes pass through.
    fn end_of_payload(&mut self, out: &mut Vec<u8>) {
        let State::Payload {
            header,
            left,
            hold,
            held,
        } = &self.state
        else {
            return;
        };
        if *left > 0 {
            return;
        }
        if header[3] == TYPE_SETTINGS && header[4] & 1 == 0 && !self.injected {
            self.injected = true;
            out.extend_from_slice(&Self::window_update(self.increment));
            self.state = State::Header {
                have: [0; FRAME_HEADER],
                len: 0,
            };
            return;
        }
        if *hold {
            let v = u32::from_be_bytes([held[0], held[1], held[2], held[3]]) & 0x7fff_ffff;
            // Before the injection (no SETTINGS seen yet) nothing is owed.
            let owed = if self.injected { self.increment } else { 0 };
            let rest = v.saturating_sub(owed);
            if rest > 0 {
                out.extend_from_slice(&Self::window_update(rest));
            }
            self.state = State::Through;
            return;
        }
        self.state = State::Header {
            have: [0; FRAME_HEADER],
            len: 0,
        };
    }
}

/// An I/O stream whose writes go through a [`Shaper`].
#[derive(Debug)]
pub(crate) struct ShapedIo<S> {
    inner: S,
    shaper: Shaper,
    pending: Vec<u8>,
    /// Client bytes read but not yet handed to `h2`.
    held_in: Vec<u8>,
    /// The first [`FIRST_FLIGHT_HEAD`] client bytes, to find the first frame's end.
    head: Vec<u8>,
    /// Client bytes handed to `h2` so far (counted until passing through).
    delivered: usize,
    read_waker: Option<std::task::Waker>,
}

/// The client's connection preface (24 bytes) plus one frame header.
const FIRST_FLIGHT_HEAD: usize = 24 + FRAME_HEADER;

impl<S> ShapedIo<S> {
    pub fn new(inner: S, increment: u32) -> Self {
        Self {
            inner,
            shaper: Shaper::new(increment),
            pending: Vec::new(),
            held_in: Vec::new(),
            head: Vec::with_capacity(FIRST_FLIGHT_HEAD),
            delivered: 0,
            read_waker: None,
        }
    }

    /// How many client bytes `h2` may have before its WINDOW_UPDATE is out:
    /// the preface and the first frame.
    fn read_limit(&self) -> usize {
        if self.head.len() < FIRST_FLIGHT_HEAD {
            return FIRST_FLIGHT_HEAD;
        }
        let h = &self.head[24..];
        FIRST_FLIGHT_HEAD + (usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]))
    }

    fn wake_reader(&mut self) {
        if self.shaper.passing_through() {
            if let Some(w) = self.read_waker.take() {
                w.wake();
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> ShapedIo<S> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ShapedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let through = this.shaper.passing_through();
        if through && this.held_in.is_empty() {
            if this.head.capacity() > 0 {
                // Shaping is over for good: the buffers it used go, so a
                // connection that stays open for hours does not keep them.
                this.head = Vec::new();
                this.held_in = Vec::new();
            }
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.held_in.is_empty() {
            let mut chunk = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let got = rb.filled();
            if got.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let want = FIRST_FLIGHT_HEAD
                .saturating_sub(this.head.len())
                .min(got.len());
            this.head.extend_from_slice(&got[..want]);
            this.held_in.extend_from_slice(got);
        }
        let allowed = if through {
            this.held_in.len()
        } else {
            this.read_limit().saturating_sub(this.delivered)
        };
        let n = allowed.min(this.held_in.len()).min(buf.remaining());
        if n == 0 {
            // Wait for h2's WINDOW_UPDATE; the write side wakes us.
            this.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        buf.put_slice(&this.held_in[..n]);
        this.held_in.drain(..n);
        this.delivered += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ShapedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if this.shaper.passing_through() {
            if this.pending.capacity() > 0 {
                this.pending = Vec::new();
            }
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.shaper.feed(buf, &mut this.pending);
        this.wake_reader();
        // The bytes are taken; they reach the socket on this or a later
        // write or flush.
        let _ = this.poll_drain(cx)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INC: u32 = 2_147_418_112;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn wu(stream: u32, inc: u32) -> Vec<u8> {
        frame(TYPE_WINDOW_UPDATE, 0, stream, &inc.to_be_bytes())
    }

    /// Feeds `input` split at every possible pair of points.
    fn shaped_all_splits(input: &[u8]) -> Vec<u8> {
        let mut whole = Vec::new();
        Shaper::new(INC).feed(input, &mut whole);
        for a in 0..input.len() {
            let mut s = Shaper::new(INC);
            let mut out = Vec::new();
            for b in [&input[..a], &input[a..]] {
                for byte in b.chunks(3) {
                    s.feed(byte, &mut out);
                }
            }
            assert_eq!(out, whole, "split at {a}");
        }
        whole
    }

    #[test]
    fn window_update_moves_next_to_settings() {
        let settings = frame(TYPE_SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 128]);
        let ack = frame(TYPE_SETTINGS, 1, 0, &[]);
        let ping = frame(6, 1, 0, b"12345678");
        let headers = frame(1, 4, 1, b"\x88");
        let input = [
            settings.clone(),
            ack.clone(),
            ping.clone(),
            wu(0, INC),
            headers.clone(),
            wu(0, 1000),
        ]
        .concat();
        let out = shaped_all_splits(&input);
        let want = [settings, wu(0, INC), ack, ping, headers, wu(0, 1000)].concat();
        assert_eq!(out, want);
    }

    #[test]
    fn a_larger_first_update_keeps_its_excess_and_stream_updates_pass() {
        let settings = frame(TYPE_SETTINGS, 0, 0, &[]);
        let raise = frame(TYPE_SETTINGS, 0, 0, &[0, 4, 0, 0x80, 0, 0]);
        let input = [
            settings.clone(),
            wu(1, 500),
            raise.clone(),
            wu(0, INC + 4096),
        ]
        .concat();
        let out = shaped_all_splits(&input);
        assert_eq!(
            out,
            [settings, wu(0, INC), wu(1, 500), raise, wu(0, 4096)].concat()
        );
    }

    /// A client that sends its preface, a request and 64 KiB of body in one
    /// write (it may: our SETTINGS allow 64 KiB per stream and the injected
    /// WINDOW_UPDATE the connection) must not overrun h2's own count of the
    /// connection window before h2 has sent its WINDOW_UPDATE.
    #[tokio::test]
    async fn a_body_sent_at_once_does_not_overrun_h2s_window() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (client, server) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::Builder::new()
                .initial_window_size(65_536)
                .initial_connection_window_size(i32::MAX as u32)
                .handshake::<_, bytes::Bytes>(ShapedIo::new(server, INC))
                .await
                .expect("handshake");
            let (req, _respond) = conn.accept().await.expect("a request").expect("no error");
            let driver = tokio::spawn(async move { while conn.accept().await.is_some() {} });
            let mut body = req.into_body();
            let mut got = 0;
            while let Some(chunk) = body.data().await {
                let chunk = chunk.expect("body data");
                got += chunk.len();
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            driver.abort();
            got
        });
        let mut c = client;
        // Like a browser, read the server's first flight (its SETTINGS and
        // the window update right behind it) before sending the body.
        let mut seen = vec![0u8; 4096];
        let mut n = 0;
        while n < FRAME_HEADER || n < FRAME_HEADER + usize::from(seen[2]) + 13 {
            n += c.read(&mut seen[n..]).await.expect("server bytes");
        }
        assert_eq!(seen[3], TYPE_SETTINGS);
        let after = FRAME_HEADER + usize::from(seen[2]);
        assert_eq!(&seen[after..after + 13], &wu(0, INC)[..]);

        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(TYPE_SETTINGS, 0, 0, &[]));
        out.extend(frame(TYPE_SETTINGS, 1, 0, &[]));
        // HEADERS (END_HEADERS): :method POST, :scheme https, :path /, :authority x
        out.extend(frame(1, 4, 1, &[0x83, 0x87, 0x84, 0x01, 0x01, b'x']));
        for _ in 0..4 {
            out.extend(frame(0, 0, 1, &[b'a'; 16_384]));
        }
        out.extend(frame(0, 1, 1, &[]));
        c.write_all(&out).await.expect("client write");
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), server)
            .await
            .expect("server finished")
            .expect("server task");
        assert_eq!(got, 65_536);
    }
}
