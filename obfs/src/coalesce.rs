//! Gathers an HTTP/2 connection's small writes into one.
//!
//! `h2` writes each response body of more than a few hundred bytes as a
//! write of its own, and TLS (tokio-rustls) seals and sends every write at
//! once: ten answers ready together left as twenty TLS records and twenty
//! system calls. nginx gathers what it has into one 16 KiB buffer before
//! sealing. This layer does the same: writes smaller than a record are
//! copied into one buffer that goes out when it is full, at a flush, or at
//! shutdown; writes of a record or more (a tunnel's bulk data) pass
//! straight through, never copied, after whatever was gathered before them.
//!
//! The buffer exists only while it holds something, so an idle connection
//! keeps none.
//!
//! `h2` also flushes every time it is polled, and a server accepts each
//! request with a poll: ten requests read at once would still be answered
//! with ten writes. The server holds flushes ([`Hold`]) while it takes the
//! requests already read, and lets go before it waits for more, so the
//! answers to one read leave in one write.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One TLS record's worth of plaintext, nginx's `ssl_buffer_size`.
pub(crate) const GATHER: usize = 16 * 1024;

/// An I/O whose small writes are gathered until a flush.
#[derive(Debug)]
pub(crate) struct Coalesced<S> {
    io: S,
    buf: Vec<u8>,
    /// How much of `buf` is out already.
    out: usize,
    hold: Hold,
}

/// While set, a flush of its [`Coalesced`] writes nothing and reports
/// success; what was gathered waits for the next flush after it is cleared
/// (or goes out when the buffer fills). Whoever sets it must clear it and
/// flush before the connection's task waits.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hold(Arc<AtomicBool>);

impl Hold {
    pub(crate) fn set(&self, on: bool) {
        self.0.store(on, Ordering::Relaxed);
    }

    fn on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl<S> Coalesced<S> {
    pub(crate) fn with_hold(io: S, hold: Hold) -> Self {
        Self {
            io,
            buf: Vec::new(),
            out: 0,
            hold,
        }
    }

    /// Appends `bufs` whole; the caller has checked they fit.
    fn gather(&mut self, bufs: &[IoSlice<'_>], total: usize) -> usize {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(GATHER);
        }
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
        total
    }
}

impl<S: AsyncWrite + Unpin> Coalesced<S> {
    /// Writes out everything gathered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.out..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out += n;
        }
        self.buf.clear();
        self.out = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_write_all(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total >= GATHER {
            ready!(self.poll_drain(cx))?;
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        if self.buf.len() + total > GATHER {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(self.gather(bufs, total)))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesced<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_all(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_all(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.hold.on() {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_drain(cx))?;
        // Nothing held between flushes: an idle connection keeps no buffer.
        this.buf = Vec::new();
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Records every write that reaches it; takes at most `limit` bytes per
    /// write so partial writes are exercised.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        limit: Option<usize>,
        flushes: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = self.limit.map_or(buf.len(), |l| l.min(buf.len()));
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl<S> Coalesced<S> {
        fn new(io: S) -> Self {
            Self::with_hold(io, Hold::default())
        }

        fn get_ref(&self) -> &S {
            &self.io
        }
    }

    fn joined(r: &Recorder) -> Vec<u8> {
        r.writes.concat()
    }

    #[tokio::test]
    async fn small_writes_leave_as_one_at_the_flush() {
        let mut c = Coalesced::new(Recorder::default());
        for i in 0..10u8 {
            c.write_all(&[i; 300]).await.expect("io");
        }
        assert!(
            c.get_ref().writes.is_empty(),
            "nothing goes out before a flush"
        );
        c.flush().await.expect("io");
        let r = c.get_ref();
        assert_eq!(r.writes.len(), 1);
        assert_eq!(r.flushes, 1);
        let want: Vec<u8> = (0..10u8).flat_map(|i| [i; 300]).collect();
        assert_eq!(joined(r), want);
        assert_eq!(c.buf.capacity(), 0, "an idle connection holds no buffer");
    }

    #[tokio::test]
    async fn a_large_write_passes_through_after_what_was_gathered() {
        let mut c = Coalesced::new(Recorder::default());
        c.write_all(b"head").await.expect("io");
        let bulk = vec![7u8; GATHER * 2];
        c.write_all(&bulk).await.expect("io");
        let r = c.get_ref();
        assert_eq!(r.writes.len(), 2);
        assert_eq!(r.writes[0], b"head");
        assert_eq!(
            r.writes[1], bulk,
            "written as it came, not copied in pieces"
        );
    }

    #[tokio::test]
    async fn a_full_buffer_goes_out_before_more_is_gathered() {
        let mut c = Coalesced::new(Recorder::default());
        let piece = vec![1u8; GATHER / 3 + 1];
        for _ in 0..3 {
            c.write_all(&piece).await.expect("io");
        }
        c.flush().await.expect("io");
        let r = c.get_ref();
        assert_eq!(r.writes.len(), 2);
        assert_eq!(r.writes[0].len(), 2 * piece.len());
        assert_eq!(joined(r).len(), 3 * piece.len());
    }

    #[tokio::test]
    async fn partial_writes_below_lose_and_reorder_nothing() {
        let mut c = Coalesced::new(Recorder {
            limit: Some(7),
            ..Recorder::default()
        });
        let mut want = Vec::new();
        for i in 0..50u8 {
            let piece = vec![i; 100 + i as usize * 37];
            c.write_all(&piece).await.expect("io");
            want.extend_from_slice(&piece);
        }
        c.shutdown().await.expect("io");
        assert_eq!(joined(c.get_ref()), want);
    }

    #[tokio::test]
    async fn a_held_flush_waits_for_the_next_one() {
        let hold = Hold::default();
        let mut c = Coalesced::with_hold(Recorder::default(), hold.clone());
        hold.set(true);
        c.write_all(b"one").await.expect("io");
        c.flush().await.expect("io");
        c.write_all(b"two").await.expect("io");
        c.flush().await.expect("io");
        assert!(c.get_ref().writes.is_empty());
        // A full buffer goes out even while held.
        c.write_all(&vec![0u8; GATHER]).await.expect("io");
        assert_eq!(c.get_ref().writes.len(), 2);
        assert_eq!(c.get_ref().writes[0], b"onetwo");
        c.write_all(b"three").await.expect("io");
        hold.set(false);
        c.flush().await.expect("io");
        assert_eq!(c.get_ref().writes.last().expect("a write"), b"three");
    }

    #[tokio::test]
    async fn vectored_writes_are_gathered_whole() {
        let mut c = Coalesced::new(Recorder::default());
        let n = c
            .write_vectored(&[IoSlice::new(b"abc"), IoSlice::new(b"defg")])
            .await
            .expect("io");
        assert_eq!(n, 7);
        c.flush().await.expect("io");
        assert_eq!(c.get_ref().writes, vec![b"abcdefg".to_vec()]);
    }
}
