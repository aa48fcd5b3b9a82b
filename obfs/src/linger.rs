//! A server's TCP connection that closes as nginx's lingering close does.
//!
//! A socket closed while the peer's last bytes sit unread in it (an
//! HTTP/2 client's acknowledgement of our GOAWAY, the rest of a request
//! body nobody wanted) is answered by the kernel with a reset instead of a
//! FIN; the peer may then lose the last answer still in its receive
//! buffer, and sees an error where nginx gives a clean close. So when the
//! connection is dropped, its write side is shut (the FIN goes out when it
//! would have) and a task reads and discards what the peer still sends
//! until it closes too or goes quiet, as nginx's `lingering_close` does
//! with its default `lingering_timeout` (5 s) and `lingering_time` (30 s).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Longest wait for the peer's next bytes (nginx's `lingering_timeout`).
const LINGERING_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the draining lasts in all (nginx's `lingering_time`).
const LINGERING_TIME: Duration = Duration::from_secs(30);

pub(crate) struct Lingering(Option<TcpStream>);

impl Lingering {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self(Some(stream))
    }

    pub(crate) fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream_ref().peer_addr()
    }

    fn stream_ref(&self) -> &TcpStream {
        self.0.as_ref().expect("taken only on drop")
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.0.as_mut().expect("taken only on drop"))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        if let (Some(stream), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(drain(stream));
        }
    }
}

async fn drain(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let end = Instant::now() + LINGERING_TIME;
    let mut discard = [0u8; 4096];
    loop {
        let wait = (Instant::now() + LINGERING_TIMEOUT).min(end);
        match tokio::time::timeout_at(wait, stream.read(&mut discard)).await {
            Ok(Ok(n)) if n > 0 => continue,
            _ => return,
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().stream().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream_ref().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream().poll_shutdown(cx)
    }
}
