//! The Noise sessions of a node and a relay (on each tunnel, and end to end
//! through a relay circuit): libp2p's Noise handshake and framing
//! (the `/noise` protocol: `Noise_XX_25519_ChaChaPoly_SHA256`, each message
//! and frame behind a two-byte big-endian length, the libp2p identity key and
//! its signature over the static key in the handshake payload), so either end
//! interoperates with `libp2p-noise`.
//!
//! Why not `libp2p-noise` itself on the tunnels: its session keeps two fixed
//! 8 KiB framing buffers for as long as the connection lives, and a relay
//! holds one session per connected user, almost all of them idle. Here every
//! buffer holds only what is in flight and is let go when the stream goes
//! quiet, so an idle session costs the cipher state and nothing else. It also
//! copies less: plaintext is sealed straight into the frame that is written,
//! and a frame is opened straight into the reader's buffer when it fits.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;
use zeroize::Zeroize;

/// libp2p's Noise protocol.
const PARAMS: &str = "Noise_XX_25519_ChaChaPoly_SHA256";
/// What a libp2p identity key signs: this, then the Noise static key.
const STATIC_KEY_DOMAIN: &[u8] = b"noise-libp2p-static-key:";
/// Largest Noise message (and frame body).
const MAX_FRAME: usize = 65535;
/// The AEAD tag on every transport frame.
const TAG: usize = 16;
/// Most plaintext one frame carries.
const MAX_PLAIN: usize = MAX_FRAME - TAG;
/// A write this large is taken as part of a bulk transfer.
const LARGE_WRITE: usize = 4096;

/// Runs the handshake on `io` as the dialer (`initiator`) or the listener,
/// and returns the remote's verified identity with the encrypted stream.
pub async fn handshake<T>(
    mut io: T,
    identity: &Keypair,
    initiator: bool,
) -> io::Result<(PeerId, Secured<T>)>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut dh = builder().generate_keypair().map_err(noise_error)?;
    let builder = builder()
        .local_private_key(&dh.private)
        .map_err(noise_error)?;
    let state = if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    };
    dh.private.zeroize();
    let mut state = state.map_err(noise_error)?;
    let payload = own_payload(identity, &dh.public)?;

    // Each side checks the other's identity as soon as it has it: the dialer
    // sends its own only to a listener that proved who it is.
    let peer = if initiator {
        send(&mut io, &mut state, &[]).await?; // -> e
        let remote = receive(&mut io, &mut state).await?; // <- e, ee, s, es
        let peer = verify_payload(&remote, remote_static(&state)?)?;
        send(&mut io, &mut state, &payload).await?; // -> s, se
        peer
    } else {
        let first = receive(&mut io, &mut state).await?; // -> e
        if !first.is_empty() {
            return Err(invalid("the first handshake message carries a payload"));
        }
        send(&mut io, &mut state, &payload).await?; // <- e, ee, s, es
        let remote = receive(&mut io, &mut state).await?; // -> s, se
        verify_payload(&remote, remote_static(&state)?)?
    };
    let session = state.into_transport_mode().map_err(noise_error)?;
    Ok((peer, Secured::new(io, session)))
}

/// The same session as a libp2p connection upgrade (`/noise`), for
/// connections whose security protocol is negotiated: relay circuits.
#[derive(Clone)]
pub struct Config {
    identity: Keypair,
}

impl Config {
    pub fn new(identity: &Keypair) -> Self {
        Self {
            identity: identity.clone(),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("secure::Config").finish_non_exhaustive()
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once("/noise")
    }
}

type Upgrading<T> = Pin<Box<dyn Future<Output = io::Result<(PeerId, Secured<T>)>> + Send>>;

impl<T> InboundConnectionUpgrade<T> for Config
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = (PeerId, Secured<T>);
    type Error = io::Error;
    type Future = Upgrading<T>;

    fn upgrade_inbound(self, io: T, _: Self::Info) -> Self::Future {
        Box::pin(async move { handshake(io, &self.identity, false).await })
    }
}

impl<T> OutboundConnectionUpgrade<T> for Config
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = (PeerId, Secured<T>);
    type Error = io::Error;
    type Future = Upgrading<T>;

    fn upgrade_outbound(self, io: T, _: Self::Info) -> Self::Future {
        Box::pin(async move { handshake(io, &self.identity, true).await })
    }
}

fn remote_static(state: &snow::HandshakeState) -> io::Result<&[u8]> {
    state
        .get_remote_static()
        .ok_or_else(|| invalid("no static key from the remote"))
}

fn builder() -> snow::Builder<'static> {
    #[allow(clippy::expect_used)]
    let params = PARAMS.parse().expect("constant Noise parameters parse");
    snow::Builder::with_resolver(
        params,
        Box::new(snow::resolvers::FallbackResolver::new(
            Box::new(snow::resolvers::RingResolver),
            Box::new(snow::resolvers::DefaultResolver),
        )),
    )
}

async fn send<T>(io: &mut T, state: &mut snow::HandshakeState, payload: &[u8]) -> io::Result<()>
where
    T: AsyncWrite + Unpin,
{
    // Ephemeral and static keys with their tags, then the payload's tag.
    let mut message = vec![0u8; 2 + 32 + 48 + payload.len() + TAG];
    let n = state
        .write_message(payload, &mut message[2..])
        .map_err(noise_error)?;
    message[..2].copy_from_slice(&frame_len(n).to_be_bytes());
    io.write_all(&message[..2 + n]).await?;
    io.flush().await
}

async fn receive<T>(io: &mut T, state: &mut snow::HandshakeState) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin,
{
    let mut len = [0u8; 2];
    io.read_exact(&mut len).await?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    io.read_exact(&mut message).await?;
    let mut payload = vec![0u8; message.len()];
    let n = state
        .read_message(&message, &mut payload)
        .map_err(noise_error)?;
    payload.truncate(n);
    Ok(payload)
}

fn frame_len(n: usize) -> u16 {
    #[allow(clippy::expect_used)]
    u16::try_from(n).expect("a Noise message fits in 65535 bytes")
}

/// The handshake payload: `identity_key` (1) and `identity_sig` (2) of
/// libp2p's `NoiseHandshakePayload`, protobuf-encoded.
fn own_payload(identity: &Keypair, static_key: &[u8]) -> io::Result<Vec<u8>> {
    let key = identity.public().encode_protobuf();
    let signature = identity
        .sign(&[STATIC_KEY_DOMAIN, static_key].concat())
        .map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(key.len() + signature.len() + 8);
    for (field, value) in [(1u8, &key), (2, &signature)] {
        out.push(field << 3 | 2);
        put_varint(&mut out, value.len() as u64);
        out.extend_from_slice(value);
    }
    Ok(out)
}

/// The remote's identity, once its signature over the Noise static key the
/// handshake authenticated checks out. Unknown fields (libp2p's extensions)
/// are skipped.
fn verify_payload(payload: &[u8], remote_static: &[u8]) -> io::Result<PeerId> {
    let mut key = None;
    let mut signature = None;
    let mut rest = payload;
    while !rest.is_empty() {
        let tag = take_varint(&mut rest)?;
        match tag & 7 {
            0 => {
                take_varint(&mut rest)?;
            }
            1 => {
                take(&mut rest, 8)?;
            }
            2 => {
                let len = usize::try_from(take_varint(&mut rest)?)
                    .map_err(|_| invalid("a handshake field's length is out of range"))?;
                let value = take(&mut rest, len)?;
                match tag >> 3 {
                    1 => key = Some(value),
                    2 => signature = Some(value),
                    _ => {}
                }
            }
            5 => {
                take(&mut rest, 4)?;
            }
            _ => return Err(invalid("the handshake payload is malformed")),
        }
    }
    let key = key.ok_or_else(|| invalid("the handshake carries no identity key"))?;
    let key = PublicKey::try_decode_protobuf(key)
        .map_err(|e| invalid(&format!("the identity key is not valid: {e}")))?;
    let signature = signature.ok_or_else(|| invalid("the handshake carries no signature"))?;
    if !key.verify(&[STATIC_KEY_DOMAIN, remote_static].concat(), signature) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the identity key did not sign this Noise session",
        ));
    }
    Ok(key.to_peer_id())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(rest: &mut &[u8]) -> io::Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, tail) = rest
            .split_first()
            .ok_or_else(|| invalid("the handshake payload ends inside a number"))?;
        *rest = tail;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(invalid("a number in the handshake payload is too long"))
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> io::Result<&'a [u8]> {
    if rest.len() < n {
        return Err(invalid("the handshake payload ends inside a field"));
    }
    let (value, tail) = rest.split_at(n);
    *rest = tail;
    Ok(value)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn noise_error(e: snow::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("noise: {e}"))
}

/// An encrypted byte stream after the handshake.
pub struct Secured<T> {
    io: T,
    session: snow::TransportState,
    /// The length prefix of the frame being read, and how much of it is in.
    head: [u8; 2],
    head_in: usize,
    /// The ciphertext of the frame being read (sized once its length is
    /// known), and how much of it is in.
    frame: Vec<u8>,
    frame_in: usize,
    reading_body: bool,
    /// Opened bytes the reader has not taken yet.
    plain: Vec<u8>,
    plain_out: usize,
    /// Written bytes waiting to be sealed into the next frame.
    pending: Vec<u8>,
    /// A sealed frame (with its length prefix), and how much of it is out.
    sealed: Vec<u8>,
    sealed_out: usize,
    /// A flush was put off once (see `poll_flush`).
    flush_deferred: bool,
}

impl<T> std::fmt::Debug for Secured<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secured").finish_non_exhaustive()
    }
}

impl<T> Secured<T> {
    fn new(io: T, session: snow::TransportState) -> Self {
        Self {
            io,
            session,
            head: [0; 2],
            head_in: 0,
            frame: Vec::new(),
            frame_in: 0,
            reading_body: false,
            plain: Vec::new(),
            plain_out: 0,
            pending: Vec::new(),
            sealed: Vec::new(),
            sealed_out: 0,
            flush_deferred: false,
        }
    }

    /// Bytes of buffer this session holds (for tests and measurements).
    pub fn buffered(&self) -> usize {
        self.frame.capacity()
            + self.plain.capacity()
            + self.pending.capacity()
            + self.sealed.capacity()
    }
}

/// Lets a buffer go once the stream is quiet. Even a small one: a relay
/// holds a session per connected user, and a buffer kept for the next
/// ping (one allocation saved every 10 s) would cost every idle user a few
/// hundred bytes for good.
fn release(buf: &mut Vec<u8>) {
    *buf = Vec::new();
}

impl<T: AsyncRead + Unpin> Secured<T> {
    /// Reads the next whole frame into `frame`; `false` at a clean end of
    /// the stream (between frames).
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        while !self.reading_body {
            let n = match Pin::new(&mut self.io).poll_read(cx, &mut self.head[self.head_in..]) {
                Poll::Pending => {
                    if self.head_in == 0 {
                        // Quiet between frames: hold no buffers.
                        release(&mut self.frame);
                        release(&mut self.plain);
                    }
                    return Poll::Pending;
                }
                Poll::Ready(r) => r?,
            };
            if n == 0 {
                return if self.head_in == 0 {
                    Poll::Ready(Ok(false))
                } else {
                    Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()))
                };
            }
            self.head_in += n;
            if self.head_in == 2 {
                let len = usize::from(u16::from_be_bytes(self.head));
                if len < TAG {
                    return Poll::Ready(Err(invalid("a Noise frame is shorter than its tag")));
                }
                self.frame.clear();
                self.frame.resize(len, 0);
                self.frame_in = 0;
                self.head_in = 0;
                self.reading_body = true;
            }
        }
        while self.frame_in < self.frame.len() {
            let n = ready!(Pin::new(&mut self.io).poll_read(cx, &mut self.frame[self.frame_in..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            self.frame_in += n;
        }
        self.reading_body = false;
        Poll::Ready(Ok(true))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Secured<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            if this.plain_out < this.plain.len() {
                let n = buf.len().min(this.plain.len() - this.plain_out);
                buf[..n].copy_from_slice(&this.plain[this.plain_out..this.plain_out + n]);
                this.plain_out += n;
                return Poll::Ready(Ok(n));
            }
            if !ready!(this.poll_frame(cx))? {
                return Poll::Ready(Ok(0));
            }
            let len = this.frame.len() - TAG;
            if len == 0 {
                // An empty frame still moves the nonce on.
                this.session
                    .read_message(&this.frame, &mut [])
                    .map_err(noise_error)?;
                continue;
            }
            if buf.len() >= len {
                let n = this
                    .session
                    .read_message(&this.frame, buf)
                    .map_err(noise_error)?;
                return Poll::Ready(Ok(n));
            }
            this.plain.clear();
            this.plain.resize(len, 0);
            this.plain_out = 0;
            let n = this
                .session
                .read_message(&this.frame, &mut this.plain)
                .map_err(noise_error)?;
            this.plain.truncate(n);
        }
    }
}

impl<T: AsyncWrite + Unpin> Secured<T> {
    /// Writes out the sealed frame, sealing what is pending first if
    /// nothing is; ready when nothing is left.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            while self.sealed_out < self.sealed.len() {
                let n =
                    ready!(Pin::new(&mut self.io).poll_write(cx, &self.sealed[self.sealed_out..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.sealed_out += n;
            }
            if self.pending.is_empty() {
                return Poll::Ready(Ok(()));
            }
            self.sealed.clear();
            self.sealed.resize(2 + self.pending.len() + TAG, 0);
            let n = self
                .session
                .write_message(&self.pending, &mut self.sealed[2..])
                .map_err(noise_error)?;
            self.sealed[..2].copy_from_slice(&frame_len(n).to_be_bytes());
            self.sealed.truncate(2 + n);
            self.sealed_out = 0;
            self.pending.clear();
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Secured<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.len() == MAX_PLAIN {
            ready!(this.poll_send(cx))?;
        }
        let n = buf.len().min(MAX_PLAIN - this.pending.len());
        if this.pending.len() + n > this.pending.capacity() {
            // A large write makes room for a whole frame at once, so the
            // bytes already pending are not copied again on every doubling
            // on the way to 64 KiB; small writes grow the buffer as usual.
            if n >= LARGE_WRITE {
                this.pending.reserve_exact(MAX_PLAIN - this.pending.len());
            } else {
                this.pending.reserve(n);
            }
        }
        this.pending.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pending.is_empty() && !this.flush_deferred {
            // yamux flushes after every frame it writes. Putting the first
            // flush off (the task is woken to come back at once) lets the
            // frames written meanwhile, a request and its stream's close
            // say, go out as one Noise frame: one write at every layer
            // below and one wake-up at the other end instead of several.
            this.flush_deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.flush_deferred = false;
        ready!(this.poll_send(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        release(&mut this.pending);
        release(&mut this.sealed);
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::join;
    use libp2p::noise;
    use rand::RngCore;
    use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

    type Pipe = Compat<tokio::io::DuplexStream>;

    fn pipe() -> (Pipe, Pipe) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        (a.compat(), b.compat())
    }

    fn random(n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        rand::thread_rng().fill_bytes(&mut v);
        v
    }

    /// `a` sends `one` and `b` sends `two` at the same time; each checks
    /// what arrives byte for byte, then both close.
    async fn exchange<A, B>(mut a: A, mut b: B, one: &[u8], two: &[u8])
    where
        A: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        async fn side<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, out: &[u8], expect: &[u8]) {
            let (mut r, mut w) = s.split();
            let send = async {
                for chunk in out.chunks(7_000) {
                    w.write_all(chunk).await.expect("write");
                }
                w.flush().await.expect("flush");
            };
            let recv = async {
                let mut got = vec![0u8; expect.len()];
                r.read_exact(&mut got).await.expect("read");
                assert!(got == expect, "bytes arrive as sent");
            };
            join(send, recv).await;
        }
        join(side(&mut a, one, two), side(&mut b, two, one)).await;
        a.close().await.expect("close a");
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.expect("end");
        assert!(rest.is_empty(), "nothing after the close");
    }

    #[tokio::test]
    async fn our_dialer_and_libp2p_noise_listener_agree() {
        let (a, b) = pipe();
        let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let config = noise::Config::new(&kb).expect("config");
        let (ours, theirs) =
            join(handshake(a, &ka, true), config.upgrade_inbound(b, "/noise")).await;
        let (seen_b, a) = ours.expect("our side");
        let (seen_a, b) = theirs.expect("their side");
        assert_eq!(seen_b, kb.public().to_peer_id());
        assert_eq!(seen_a, ka.public().to_peer_id());
        exchange(a, b, &random(300_000), &random(70_000)).await;
    }

    #[tokio::test]
    async fn libp2p_noise_dialer_and_our_listener_agree() {
        let (a, b) = pipe();
        let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let config = noise::Config::new(&ka).expect("config");
        let (theirs, ours) = join(
            config.upgrade_outbound(a, "/noise"),
            handshake(b, &kb, false),
        )
        .await;
        let (seen_b, a) = theirs.expect("their side");
        let (seen_a, b) = ours.expect("our side");
        assert_eq!(seen_b, kb.public().to_peer_id());
        assert_eq!(seen_a, ka.public().to_peer_id());
        exchange(a, b, &random(5), &random(200_000)).await;
    }

    #[tokio::test]
    async fn bytes_that_trickle_in_a_few_at_a_time_arrive_whole() {
        // A pipe that moves at most 7 bytes per read or write splits every
        // handshake message, length prefix and frame at every position.
        let (a, b) = tokio::io::duplex(7);
        let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (ra, rb) = join(
            handshake(a.compat(), &ka, true),
            handshake(b.compat(), &kb, false),
        )
        .await;
        exchange(
            ra.expect("a").1,
            rb.expect("b").1,
            &random(100_000),
            &random(3),
        )
        .await;
    }

    #[tokio::test]
    async fn random_bytes_after_the_handshake_are_an_error_not_data() {
        for _ in 0..50 {
            let (mut a, mut b, on) = tapped(|chunk| rand::thread_rng().fill_bytes(chunk)).await;
            on.send(()).expect("tap");
            a.write_all(&random(1000)).await.expect("write");
            a.flush().await.expect("flush");
            a.close().await.expect("close");
            let mut got = Vec::new();
            let err = b.read_to_end(&mut got).await.expect_err("random frame");
            assert!(
                matches!(
                    err.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                ),
                "{err}"
            );
            assert!(got.is_empty(), "no random byte reaches the reader");
        }
    }

    #[tokio::test]
    async fn an_idle_session_holds_no_buffers() {
        let (a, b) = pipe();
        let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (ra, rb) = join(handshake(a, &ka, true), handshake(b, &kb, false)).await;
        let (mut a, mut b) = (ra.expect("a").1, rb.expect("b").1);
        let big = random(1 << 20);
        let mut got = vec![0u8; big.len()];
        join(
            async {
                a.write_all(&big).await.expect("write");
                a.flush().await.expect("flush");
            },
            async { b.read_exact(&mut got).await.expect("read") },
        )
        .await;
        assert!(got == big);
        // A read that finds nothing waiting lets the receive buffers go.
        let mut one = [0u8; 1];
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut b).poll_read(&mut cx, &mut one).is_pending());
        assert_eq!(a.buffered(), 0, "sender holds buffers");
        assert_eq!(b.buffered(), 0, "receiver holds buffers");
    }

    /// A session whose dialer → listener bytes, once the handshake is done,
    /// pass through `spoil` on the way; returns the dialer, the listener and
    /// the switch that turns `spoil` on.
    async fn tapped(
        spoil: fn(&mut Vec<u8>),
    ) -> (
        Secured<Pipe>,
        Secured<Pipe>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (a, near) = pipe();
        let (far, b) = pipe();
        let (on, mut switched) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut near_r, mut near_w) = near.split();
            let (mut far_r, mut far_w) = far.split();
            let back = futures::io::copy(&mut far_r, &mut near_w);
            let forth = async {
                let mut buf = vec![0u8; 64 * 1024];
                let mut live = false;
                loop {
                    let n = near_r.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    let mut chunk = buf[..n].to_vec();
                    live = live || switched.try_recv().is_ok();
                    if live {
                        spoil(&mut chunk);
                    }
                    if far_w.write_all(&chunk).await.is_err() {
                        break;
                    }
                    if live && chunk.len() < n {
                        break;
                    }
                }
                let _ = far_w.close().await;
            };
            let _ = join(back, forth).await;
        });
        let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (ra, rb) = join(handshake(a, &ka, true), handshake(b, &kb, false)).await;
        (ra.expect("a").1, rb.expect("b").1, on)
    }

    #[tokio::test]
    async fn a_changed_byte_is_an_error_not_data() {
        let (mut a, mut b, on) = tapped(|chunk| {
            if let Some(last) = chunk.last_mut() {
                *last ^= 1;
            }
        })
        .await;
        on.send(()).expect("tap");
        a.write_all(b"hello").await.expect("write");
        a.flush().await.expect("flush");
        let mut got = [0u8; 5];
        let err = b.read_exact(&mut got).await.expect_err("tampered frame");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_an_error_not_the_end() {
        let (mut a, mut b, on) = tapped(|chunk| chunk.truncate(5)).await;
        on.send(()).expect("tap");
        a.write_all(b"hello").await.expect("write");
        a.flush().await.expect("flush");
        let mut got = Vec::new();
        let err = b.read_to_end(&mut got).await.expect_err("cut frame");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        assert!(
            got.is_empty(),
            "no byte of a frame that did not arrive whole"
        );
    }

    #[tokio::test]
    async fn garbage_instead_of_a_handshake_is_refused() {
        let (a, mut b) = pipe();
        let k = Keypair::generate_ed25519();
        let (dialer, _) = join(handshake(a, &k, true), async {
            let mut first = [0u8; 34];
            b.read_exact(&mut first).await.expect("first message");
            // A length and random bytes where the listener's keys belong.
            let mut junk = vec![0u8, 200];
            junk.extend(random(200));
            b.write_all(&junk).await.expect("junk");
            b.flush().await.expect("flush");
        })
        .await;
        let err = dialer.expect_err("junk handshake");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[tokio::test]
    async fn a_dialer_tells_nothing_to_a_listener_that_signed_another_key() {
        let (a, mut b) = pipe();
        let dialer_key = Keypair::generate_ed25519();
        let listener = async {
            let dh = builder().generate_keypair().expect("keys");
            let mut state = builder()
                .local_private_key(&dh.private)
                .and_then(|b| b.build_responder())
                .expect("responder");
            receive(&mut b, &mut state).await.expect("first message");
            // A valid identity, but its signature covers another static key.
            let forged = own_payload(&Keypair::generate_ed25519(), &[9u8; 32]).expect("payload");
            send(&mut b, &mut state, &forged)
                .await
                .expect("second message");
            let mut rest = Vec::new();
            b.read_to_end(&mut rest).await.expect("end");
            rest
        };
        let (dialer, rest) = join(handshake(a, &dialer_key, true), listener).await;
        let err = dialer.expect_err("forged listener");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        assert!(
            rest.is_empty(),
            "the dialer sent nothing after the forged message"
        );
    }

    #[tokio::test]
    async fn a_signature_by_another_key_is_refused() {
        let payload = own_payload(&Keypair::generate_ed25519(), &[7u8; 32]).expect("payload");
        let err = verify_payload(&payload, &[8u8; 32]).expect_err("wrong static key");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(verify_payload(&payload, &[7u8; 32]).is_ok());
        for cut in 0..payload.len() {
            assert!(
                verify_payload(&payload[..cut], &[7u8; 32]).is_err(),
                "a payload cut at {cut} is refused"
            );
        }
    }
}
