//! A tunnel: one HTTP request stream (HTTP/2 or HTTP/3), or one HTTP/1.1
//! connection after a WebSocket upgrade, presented as a plain bidirectional
//! byte stream (`AsyncRead + AsyncWrite`).
//!
//! The request body carries client-to-relay bytes, the response body
//! relay-to-client bytes. `shutdown` ends our direction with END_STREAM (a
//! FIN on QUIC); the other side then reads EOF and can still send. Dropping
//! a tunnel resets the stream.
//!
//! A client may write before the relay's response has arrived (the first
//! inner handshake message rides with the request); the response is checked
//! on the first read, and a relay that answered like a website turns into a
//! clear `NotARelay` error there.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};

use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::relay_line::Carrier;

/// Largest single write handed to the HTTP layer.
const MAX_WRITE_CHUNK: usize = 256 * 1024;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A gated byte stream through a relay's web front.
pub struct Tunnel {
    carrier: Carrier,
    peer: Option<SocketAddr>,
    io: Io,
    /// Relay side: where the bytes through this tunnel are counted.
    meter: Option<Arc<Meter>>,
}

/// Bytes through a front's tunnels, for the operator's metrics.
#[derive(Debug, Default)]
pub struct Meter {
    received: AtomicU64,
    sent: AtomicU64,
}

impl Meter {
    /// Bytes read from users so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Bytes written to users so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel")
            .field("carrier", &self.carrier)
            .finish()
    }
}

enum Io {
    H2(H2Io),
    H3(H3Io),
    Raw(RawIo),
}

/// The receive side before and after the response head is known.
pub(crate) enum RecvState<R> {
    /// Client side: the relay's answer has not arrived yet.
    Awaiting(BoxFuture<io::Result<R>>),
    Open(R),
    Failed(io::ErrorKind, String),
}

impl<R> RecvState<R> {
    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut R>> {
        if let RecvState::Awaiting(fut) = self {
            match ready!(fut.as_mut().poll(cx)) {
                Ok(r) => *self = RecvState::Open(r),
                Err(e) => *self = RecvState::Failed(e.kind(), e.to_string()),
            }
        }
        match self {
            RecvState::Open(r) => Poll::Ready(Ok(r)),
            RecvState::Failed(kind, msg) => Poll::Ready(Err(io::Error::new(*kind, msg.clone()))),
            RecvState::Awaiting(_) => Poll::Pending,
        }
    }
}

impl Tunnel {
    pub fn carrier(&self) -> Carrier {
        self.carrier
    }

    /// The client's address (relay side; `None` on the client side).
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    pub(crate) fn with_peer(mut self, peer: Option<SocketAddr>) -> Self {
        self.peer = peer;
        self
    }

    pub(crate) fn with_meter(mut self, meter: Arc<Meter>) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Waits until the relay has accepted the tunnel (client side); returns
    /// at once on the relay side.
    pub async fn established(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| match &mut self.io {
            Io::H2(h) => {
                h.drive(cx, Side::Reader);
                h.recv.poll_open(cx).map_ok(|_| ())
            }
            Io::H3(h) => h.recv.poll_open(cx).map_ok(|_| ()),
            // Handed over only after the upgrade was answered.
            Io::Raw(_) => Poll::Ready(Ok(())),
        })
        .await
    }

    pub(crate) fn h2(send: h2::SendStream<Bytes>, recv: RecvState<h2::RecvStream>) -> Self {
        Self {
            carrier: Carrier::H2,
            peer: None,
            meter: None,
            io: Io::H2(H2Io {
                send,
                recv,
                read_buf: Bytes::new(),
                shut: false,
                driving: None,
            }),
        }
    }

    /// From now on this tunnel's reads and writes drive `conn`, the HTTP/2
    /// connection its stream lives on (see [`Drive`]).
    pub(crate) fn driving(mut self, conn: Box<dyn Drive>) -> Self {
        if let Io::H2(h) = &mut self.io {
            h.driving = Some(Driving::new(conn));
        }
        self
    }

    pub(crate) fn h3(
        send: Box<dyn H3Send>,
        recv: RecvState<Box<dyn H3Recv>>,
        keep: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        Self {
            carrier: Carrier::H3,
            peer: None,
            meter: None,
            io: Io::H3(H3Io {
                send: SendState::Idle(send),
                recv,
                read_buf: Bytes::new(),
                _keep: keep,
            }),
        }
    }
}

impl Tunnel {
    /// A connection the HTTP layer handed over whole (HTTP/1.1 after `101
    /// Switching Protocols`); `prefix` holds bytes already read past the
    /// HTTP head.
    pub(crate) fn raw(
        carrier: Carrier,
        io: Box<dyn RawStream>,
        prefix: Bytes,
        keep: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        Self {
            carrier,
            peer: None,
            meter: None,
            io: Io::Raw(RawIo {
                io,
                prefix,
                _keep: keep,
            }),
        }
    }
}

pub(crate) fn awaiting<R>(
    fut: impl Future<Output = io::Result<R>> + Send + 'static,
) -> RecvState<R> {
    RecvState::Awaiting(Box::pin(fut))
}

pub(crate) fn open<R>(r: R) -> RecvState<R> {
    RecvState::Open(r)
}

fn copy_out(read_buf: &mut Bytes, out: &mut ReadBuf<'_>) {
    let n = read_buf.len().min(out.remaining());
    out.put_slice(&read_buf[..n]);
    read_buf.advance(n);
}

impl AsyncRead for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = out.filled().len();
        let result = match &mut this.io {
            Io::H2(h) => h.poll_read(cx, out),
            Io::H3(h) => h.poll_read(cx, out),
            Io::Raw(r) => r.poll_read(cx, out),
        };
        if let (Some(m), Poll::Ready(Ok(()))) = (&this.meter, &result) {
            let n = out.filled().len().saturating_sub(before) as u64;
            m.received.fetch_add(n, Ordering::Relaxed);
        }
        result
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = match &mut this.io {
            Io::H2(h) => h.poll_write(cx, buf),
            Io::H3(h) => h.poll_write(cx, buf),
            Io::Raw(r) => Pin::new(&mut r.io).poll_write(cx, buf),
        };
        if let (Some(m), Poll::Ready(Ok(n))) = (&this.meter, &result) {
            m.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::H2(h) => h.poll_flush(cx),
            Io::H3(h) => h.poll_flush(cx),
            Io::Raw(r) => Pin::new(&mut r.io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::H2(h) => h.poll_shutdown(cx),
            Io::H3(h) => h.poll_shutdown(cx),
            Io::Raw(r) => Pin::new(&mut r.io).poll_shutdown(cx),
        }
    }
}

// ------------------------------------------------ HTTP/1.1 after upgrade

/// A whole connection: TLS to the client, or cleartext from a proxy.
pub(crate) trait RawStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> RawStream for T {}

struct RawIo {
    io: Box<dyn RawStream>,
    /// Read past the HTTP head before the hand-over; delivered first.
    prefix: Bytes,
    /// Held as long as the tunnel lives (the relay's connection permit).
    _keep: Option<Box<dyn Send + Sync>>,
}

impl RawIo {
    fn poll_read(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            copy_out(&mut self.prefix, out);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, out)
    }
}

// ---------------------------------------------------------------- HTTP/2

struct H2Io {
    send: h2::SendStream<Bytes>,
    recv: RecvState<h2::RecvStream>,
    read_buf: Bytes,
    shut: bool,
    /// The connection, when this tunnel drives it (declared last: dropped
    /// after the streams, so their reset still goes out).
    driving: Option<Driving>,
}

/// An HTTP/2 connection that the reads and writes of a tunnel on it drive.
///
/// `h2` moves frames only while its connection is polled. At a relay, a
/// connection served by a task of its own cost each idle user that task
/// (several KiB), and every chunk through the tunnel a hand-off between
/// tasks. The relay's tunnels own their connections and poll them
/// themselves: a write goes out to the socket in the same poll, and nothing
/// else runs per connection. A client does the same on a single-threaded
/// runtime (a user's node); on a runtime with several workers it keeps its
/// connection's own task, so that a single tunnel's bulk transfer runs its
/// HTTP/2 and TLS work on one core and the tunnel's user on the other.
pub(crate) trait Drive: Send + 'static {
    /// Reads and writes the connection's frames and dispatches whatever
    /// else arrives on it; ready once the connection has ended.
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<()>;

    /// Whether the connection's last write had to wait for the socket:
    /// what was written to the tunnel is not all out yet.
    fn backlogged(&self) -> bool;
}

/// The I/O under a driven connection, noting whether its last write or
/// flush had to wait. `h2` ends every drive by flushing, so after a drive
/// this says whether everything handed to `h2` reached the socket.
pub(crate) struct Watched<S> {
    io: S,
    waiting: Arc<Waiting>,
}

/// Whether a [`Watched`] I/O's last write had to wait; the connection's
/// [`Drive`] reads it.
#[derive(Default)]
pub(crate) struct Waiting(std::sync::atomic::AtomicBool);

impl Waiting {
    pub(crate) fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl<S> Watched<S> {
    pub(crate) fn new(io: S) -> (Self, Arc<Waiting>) {
        let waiting = Arc::new(Waiting::default());
        (
            Self {
                io,
                waiting: waiting.clone(),
            },
            waiting,
        )
    }

    fn note<T>(&mut self, r: Poll<T>) -> Poll<T> {
        self.waiting.0.store(r.is_pending(), Ordering::Relaxed);
        r
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.note(r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.note(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.note(r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A connection driven by its tunnel's reads and writes. Reader and writer
/// may be different tasks (a tunnel split in two), so the connection's own
/// wake-ups (the socket readable or writable, a frame queued by another
/// stream) go to both.
///
/// A task must not wake itself while it runs: tokio then yields it, which
/// wakes an idle worker to come and steal it (a futex call and a move to
/// the other core, about 25 µs on a 64-byte echo here). Two of `h2`'s
/// wake-ups would do that on every read and write: the connection's, when
/// a stream queues data (the tunnel drives the connection right after,
/// so it is not needed), and the stream's, when the drive that the reader
/// itself runs delivers data (the reader looks for data right after).
/// Both are skipped while the tunnel's own poll is between those two
/// points; a wake-up from anywhere else still goes through.
struct Driving {
    /// `None` once the connection has ended.
    conn: Option<Box<dyn Drive>>,
    wakers: Arc<BothWakers>,
    waker: Waker,
    /// What the receive stream wakes: the reader, unless it is driving.
    read: Arc<ReadWaker>,
    read_waker: Waker,
}

#[derive(Default)]
struct BothWakers {
    reader: AtomicWaker,
    writer: AtomicWaker,
    /// Set while a writer queues data it is about to drive out itself.
    quiet: AtomicBool,
}

impl Wake for BothWakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.quiet.load(Ordering::SeqCst) {
            return;
        }
        self.reader.wake();
        self.writer.wake();
    }
}

/// The reader's waker as the receive stream holds it.
#[derive(Default)]
struct ReadWaker {
    task: AtomicWaker,
    /// Set while the reader drives the connection; it polls the stream
    /// right after, so a wake-up from that drive is not needed.
    driving: AtomicBool,
}

impl Wake for ReadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.driving.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

#[derive(Clone, Copy)]
enum Side {
    Reader,
    Writer,
}

impl Driving {
    fn new(conn: Box<dyn Drive>) -> Self {
        let wakers = Arc::new(BothWakers::default());
        let read = Arc::new(ReadWaker::default());
        Self {
            conn: Some(conn),
            waker: Waker::from(wakers.clone()),
            wakers,
            read_waker: Waker::from(read.clone()),
            read,
        }
    }

    /// Drives the connection for the reader, and returns the waker the
    /// reader then hands the receive stream.
    fn drive_for_read(&mut self, cx: &Context<'_>) -> &Waker {
        self.read.task.register(cx.waker());
        self.read.driving.store(true, Ordering::SeqCst);
        self.drive(cx, Side::Reader);
        self.read.driving.store(false, Ordering::SeqCst);
        &self.read_waker
    }

    /// Runs `f`, which queues data on the connection, without the wake-up
    /// it causes; the caller drives the connection right after.
    fn quietly<T>(&self, f: impl FnOnce() -> T) -> T {
        self.wakers.quiet.store(true, Ordering::SeqCst);
        let r = f();
        self.wakers.quiet.store(false, Ordering::SeqCst);
        r
    }

    /// Whether bytes handed to the connection still wait for the socket.
    fn backlogged(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.backlogged())
    }

    fn drive(&mut self, cx: &Context<'_>, side: Side) {
        let Some(conn) = &mut self.conn else {
            return;
        };
        match side {
            Side::Reader => self.wakers.reader.register(cx.waker()),
            Side::Writer => self.wakers.writer.register(cx.waker()),
        }
        if conn
            .poll_drive(&mut Context::from_waker(&self.waker))
            .is_ready()
        {
            self.conn = None;
        }
    }
}

impl Drop for Driving {
    /// The tunnel is gone but its connection may still carry other
    /// streams, or the end of this one: a task takes it over, as one
    /// would have served it all along.
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(std::future::poll_fn(move |cx| conn.poll_drive(cx)));
            }
        }
    }
}

fn h2_io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"));
    }
    let kind = match e.reason() {
        Some(h2::Reason::NO_ERROR) | Some(h2::Reason::CANCEL) => io::ErrorKind::ConnectionReset,
        _ => io::ErrorKind::ConnectionAborted,
    };
    io::Error::new(kind, e)
}

impl H2Io {
    fn drive(&mut self, cx: &Context<'_>, side: Side) {
        if let Some(d) = &mut self.driving {
            d.drive(cx, side);
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.read_buf.is_empty() {
            let read_waker = self.driving.as_mut().map(|d| d.drive_for_read(cx));
            let recv = ready!(self.recv.poll_open(cx))?;
            let data = match read_waker {
                Some(w) => recv.poll_data(&mut Context::from_waker(w)),
                None => recv.poll_data(cx),
            };
            match ready!(data) {
                Some(Ok(data)) => {
                    // The chunk is held here only until copied out; give the
                    // window back at once so the sender never stalls on it.
                    let _ = recv.flow_control().release_capacity(data.len());
                    self.read_buf = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_io_error(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
        copy_out(&mut self.read_buf, out);
        Poll::Ready(Ok(()))
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.shut {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let want = buf.len().min(MAX_WRITE_CHUNK);
        self.send.reserve_capacity(want);
        loop {
            let cap = self.send.capacity();
            if cap > 0 {
                let n = cap.min(want);
                let data = Bytes::copy_from_slice(&buf[..n]);
                let send = &mut self.send;
                match &self.driving {
                    Some(d) => d.quietly(|| send.send_data(data, false)),
                    None => send.send_data(data, false),
                }
                .map_err(h2_io_error)?;
                // Out to the socket now, if this tunnel drives the connection.
                self.drive(cx, Side::Writer);
                return Poll::Ready(Ok(n));
            }
            // Window updates arrive only while the connection is driven.
            self.drive(cx, Side::Writer);
            if self.send.capacity() > 0 {
                continue;
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(h2_io_error(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    /// Ready once what was written is with the socket. Everything sent
    /// fits the peer's window (writes take only the capacity `h2` grants),
    /// so only a full socket holds it back; a connection served by its own
    /// task writes it without us.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(d) = &mut self.driving else {
            return Poll::Ready(Ok(()));
        };
        if !d.backlogged() {
            // Each write drove the connection already, and it all went out.
            return Poll::Ready(Ok(()));
        }
        d.drive(cx, Side::Writer);
        if d.backlogged() {
            // The socket's wake-up reaches this writer through `Driving`.
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.shut {
            self.shut = true;
            self.send.reserve_capacity(0);
            self.send
                .send_data(Bytes::new(), true)
                .map_err(h2_io_error)?;
            self.drive(cx, Side::Writer);
        }
        self.poll_flush(cx)
    }
}

// ---------------------------------------------------------------- HTTP/3

/// The send half of an HTTP/3 request stream, client or server side.
pub(crate) trait H3Send: Send + 'static {
    fn send(self: Box<Self>, data: Bytes) -> BoxFuture<(Box<dyn H3Send>, io::Result<()>)>;
    fn finish(self: Box<Self>) -> BoxFuture<(Box<dyn H3Send>, io::Result<()>)>;
}

/// The receive half of an HTTP/3 request stream, client or server side.
pub(crate) trait H3Recv: Send + 'static {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>>;
}

pub(crate) fn h3_io_error(e: impl fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, e.to_string())
}

macro_rules! impl_h3_halves {
    ($side:ident) => {
        impl H3Send for h3::$side::RequestStream<h3_quinn::SendStream<Bytes>, Bytes> {
            fn send(
                mut self: Box<Self>,
                data: Bytes,
            ) -> BoxFuture<(Box<dyn H3Send>, io::Result<()>)> {
                Box::pin(async move {
                    let r = self.send_data(data).await.map_err(h3_io_error);
                    (self as Box<dyn H3Send>, r)
                })
            }
            fn finish(mut self: Box<Self>) -> BoxFuture<(Box<dyn H3Send>, io::Result<()>)> {
                Box::pin(async move {
                    let r = h3::$side::RequestStream::finish(&mut self)
                        .await
                        .map_err(h3_io_error);
                    (self as Box<dyn H3Send>, r)
                })
            }
        }

        impl H3Recv for h3::$side::RequestStream<h3_quinn::RecvStream, Bytes> {
            fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
                match ready!(self.poll_recv_data(cx)) {
                    Ok(Some(mut b)) => Poll::Ready(Ok(Some(b.copy_to_bytes(b.remaining())))),
                    Ok(None) => Poll::Ready(Ok(None)),
                    Err(e) => Poll::Ready(Err(h3_io_error(e))),
                }
            }
        }
    };
}

impl_h3_halves!(server);
impl_h3_halves!(client);

enum SendState {
    Idle(Box<dyn H3Send>),
    /// A send (or, with `finishing`, the FIN) is in flight.
    Busy {
        fut: BoxFuture<(Box<dyn H3Send>, io::Result<()>)>,
        finishing: bool,
    },
    Finished,
    Broken(io::ErrorKind),
}

struct H3Io {
    send: SendState,
    recv: RecvState<Box<dyn H3Recv>>,
    read_buf: Bytes,
    _keep: Option<Box<dyn Send + Sync>>,
}

impl H3Io {
    fn poll_read(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        // A send still in flight must progress even while its owner only
        // reads (an echo loop writes, then waits for the next request); its
        // error, if any, is reported by the next write.
        let _ = self.poll_settle(cx);
        while self.read_buf.is_empty() {
            let recv = ready!(self.recv.poll_open(cx))?;
            match ready!(recv.poll_data(cx))? {
                Some(data) => self.read_buf = data,
                None => return Poll::Ready(Ok(())),
            }
        }
        copy_out(&mut self.read_buf, out);
        Poll::Ready(Ok(()))
    }

    /// Drives an in-flight send or FIN to completion.
    fn poll_settle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let SendState::Busy { fut, finishing } = &mut self.send {
            let finishing = *finishing;
            let (stream, result) = ready!(fut.as_mut().poll(cx));
            self.send = match result {
                Ok(()) if finishing => SendState::Finished,
                Ok(()) => SendState::Idle(stream),
                Err(e) => {
                    self.send = SendState::Broken(e.kind());
                    return Poll::Ready(Err(e));
                }
            };
        }
        Poll::Ready(Ok(()))
    }

    fn take_idle(&mut self) -> io::Result<Box<dyn H3Send>> {
        match std::mem::replace(&mut self.send, SendState::Finished) {
            SendState::Idle(stream) => Ok(stream),
            SendState::Broken(kind) => {
                self.send = SendState::Broken(kind);
                Err(kind.into())
            }
            other => {
                self.send = other;
                Err(io::ErrorKind::BrokenPipe.into())
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_settle(cx))?;
        let stream = self.take_idle()?;
        if buf.is_empty() {
            self.send = SendState::Idle(stream);
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(MAX_WRITE_CHUNK);
        // The write is accepted now and completes in the background; the
        // next write, flush or shutdown waits for it (one chunk in flight).
        self.send = SendState::Busy {
            fut: stream.send(Bytes::copy_from_slice(&buf[..n])),
            finishing: false,
        };
        // Usually QUIC's send buffer takes the chunk at once; poll now so it
        // is on its way without waiting for the next call. The bytes are
        // accepted either way; an error shows on the next call.
        let _ = self.poll_settle(cx);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_settle(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_settle(cx))?;
        if matches!(self.send, SendState::Finished) {
            return Poll::Ready(Ok(()));
        }
        let stream = self.take_idle()?;
        self.send = SendState::Busy {
            fut: stream.finish(),
            finishing: true,
        };
        self.poll_settle(cx)
    }
}
