//! HTTP/2 on TLS: the site and the tunnels.
//!
//! The connection opens with nginx's SETTINGS (128 streams, 64 KiB stream
//! window, 16 MiB - 1 frame size) and its connection WINDOW_UPDATE to
//! 2^31 - 1. Only after a request has passed the gate does this connection
//! raise its stream window (a new SETTINGS frame) so a tunnel is not capped
//! by 64 KiB per round trip; a prober never sees that.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;

use crate::coalesce::{Coalesced, Hold};
use crate::front::{declared_length, multiplexed, tunnel_response, BodyEnd, SharedRef};
use crate::gate::Binding;
use crate::h2_shape::ShapedIo;
use crate::site::{Body, FILE_CHUNK, MAX_REQUEST_BODY};
use crate::tunnel::{open, Drive, Tunnel, Waiting, Watched};

/// nginx's SETTINGS_INITIAL_WINDOW_SIZE.
const SITE_STREAM_WINDOW: u32 = 65_536;
/// nginx's SETTINGS_MAX_FRAME_SIZE.
const MAX_FRAME_SIZE: u32 = 16_777_215;
/// Most of a request body the site reads and discards before resetting.
const MAX_DISCARD: usize = 1024 * 1024;
/// How long the site waits for the rest of a body it reads or discards
/// (nginx's `client_body_timeout`).
const DISCARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Every HTTP/2 window starts at this size (RFC 9113, 6.9.2).
const PROTOCOL_DEFAULT_WINDOW: u32 = 65_535;
/// nginx raises the connection window to the maximum at once.
const CONNECTION_WINDOW: u32 = i32::MAX as u32;

/// Serves one HTTP/2 connection: on TLS (the front) or in cleartext from a
/// proxy (the backend, `binding` = [`Binding::Proxied`]). `permit` counts
/// the connection against the front's limit for as long as it lives.
///
/// The first request that passes the gate turns the connection into that
/// tunnel's: the tunnel takes the connection over and drives it from its
/// own reads and writes ([`Drive`]), and this task ends.
pub(crate) async fn serve<S>(
    io: S,
    peer: Option<SocketAddr>,
    binding: Binding,
    shared: SharedRef,
    permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = shared.limits().clone();
    let hold = Hold::default();
    let (io, waiting) = Watched::new(ShapedIo::new(
        Coalesced::with_hold(io, hold.clone()),
        CONNECTION_WINDOW - PROTOCOL_DEFAULT_WINDOW,
    ));
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(limits.max_streams)
        .initial_window_size(SITE_STREAM_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Bytes>(io);
    let mut conn = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            debug!("h2 handshake failed: {e}");
            return;
        }
        Err(_) => return,
    };
    // Held by every answer in progress: the connection is idle when only
    // this one is left.
    let answering = Arc::new(());
    let mut served = 0u32;
    loop {
        // Requests already read are taken with flushes held, so their
        // answers leave together; the wait for more flushes them.
        hold.set(true);
        let now = std::future::poll_fn(|cx| Poll::Ready(conn.poll_accept(cx))).await;
        hold.set(false);
        let next = match now {
            Poll::Ready(next) => Ok(next),
            Poll::Pending => tokio::time::timeout(limits.keepalive_timeout, conn.accept()).await,
        };
        let next = match next {
            Ok(next) => next,
            Err(_) if Arc::strong_count(&answering) == 1 => {
                // Idle as long as nginx keeps a connection: one GOAWAY
                // (NO_ERROR, the last stream served), then the close.
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                std::future::poll_fn(|cx| conn.poll_closed(cx)).await.ok();
                return;
            }
            Err(_) => continue,
        };
        let (req, respond) = match next {
            Some(Ok(next)) => next,
            Some(Err(e)) => {
                debug!("h2 connection ended: {e}");
                return;
            }
            None => return,
        };
        let (parts, body) = req.into_parts();
        if !passes_gate(&shared, &binding, &parts) {
            served += 1;
            if served == limits.keepalive_requests {
                // nginx's keepalive_requests: no new streams after this
                // one; those answered go out before the connection closes.
                conn.graceful_shutdown();
            }
            let req = Request::from_parts(parts, body);
            let token = answering.clone();
            let mut reply = Box::pin(answer(req, respond, shared.clone()));
            // Most answers (a file from the cache, an error page) are ready
            // at once: given here, they join the frames this connection
            // writes next, so a batch of requests is answered in one write.
            // The others finish on a task of their own.
            let ready = std::future::poll_fn(|cx| Poll::Ready(reply.as_mut().poll(cx))).await;
            if ready.is_pending() {
                tokio::spawn(async move {
                    reply.await;
                    drop(token);
                });
            }
            continue;
        }
        // Only now does this connection raise its stream window (see
        // `Serving::raise_window`).
        let serving = Serving {
            conn,
            raise: Some(limits.tunnel_window),
            waiting,
            binding,
            peer,
            shared,
            _permit: permit,
        };
        // Boxed: what a hand-over holds stays out of the state of every
        // connection that never opens a tunnel.
        Box::pin(serving.take_over(parts, body, respond)).await;
        return;
    }
}

/// A connection that a tunnel on it drives: other requests that arrive on
/// it are answered by tasks of their own, as before.
struct Serving<S> {
    conn: h2::server::Connection<Watched<ShapedIo<Coalesced<S>>>, Bytes>,
    /// The stream window this connection still has to announce.
    raise: Option<u32>,
    waiting: Arc<Waiting>,
    binding: Binding,
    peer: Option<SocketAddr>,
    shared: SharedRef,
    _permit: OwnedSemaphorePermit,
}

impl<S> Serving<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Answers the request that passed the gate and hands its tunnel, with
    /// this connection, to the application.
    async fn take_over(
        mut self,
        parts: http::request::Parts,
        body: h2::RecvStream,
        respond: h2::server::SendResponse<Bytes>,
    ) {
        let shared = self.shared.clone();
        let Some(tunnel) = open_tunnel(&shared, self.peer, &parts, body, respond) else {
            // Not answered: the connection goes on as before.
            std::future::poll_fn(|cx| self.poll_drive(cx)).await;
            return;
        };
        // The answer goes out now, not at the tunnel's first read.
        let drove = std::future::poll_fn(|cx| Poll::Ready(self.poll_drive(cx))).await;
        if drove.is_pending() {
            shared.hand_over(tunnel.driving(Box::new(self))).await;
        }
    }
}

impl<S> Serving<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Announces the tunnel's stream window once `h2` may: a client's
    /// tunnel request comes with its preface, before it has acknowledged
    /// the server's first SETTINGS, and `h2` sends no second SETTINGS
    /// until that acknowledgement is in. Tried after every poll until it
    /// takes; true when it just did.
    fn raise_window(&mut self) -> bool {
        let Some(window) = self.raise else {
            return false;
        };
        match self.conn.set_initial_window_size(window) {
            Ok(()) => {
                self.raise = None;
                true
            }
            // Refused while the first SETTINGS waits for its ACK (and
            // always for a window over 2^31 - 1, which the front's limits
            // never hold); asking again costs a comparison.
            Err(_) => false,
        }
    }
}

impl<S> Drive for Serving<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let Poll::Ready(next) = self.conn.poll_accept(cx) else {
                if self.raise_window() {
                    // The new SETTINGS goes out with the next poll.
                    continue;
                }
                return Poll::Pending;
            };
            match next {
                Some(Ok((req, respond))) => {
                    let (binding, peer, shared) = (self.binding, self.peer, self.shared.clone());
                    tokio::spawn(async move { handle(req, respond, binding, peer, shared).await });
                }
                Some(Err(e)) => {
                    debug!("h2 connection ended: {e}");
                    return Poll::Ready(());
                }
                None => return Poll::Ready(()),
            }
        }
    }

    fn backlogged(&self) -> bool {
        self.waiting.get()
    }
}

/// Answers a request that came after the connection's first tunnel: a
/// further tunnel (driven by the first one's connection), or the site.
async fn handle(
    req: Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
    binding: Binding,
    peer: Option<SocketAddr>,
    shared: SharedRef,
) {
    let (parts, body) = req.into_parts();
    if passes_gate(&shared, &binding, &parts) {
        if let Some(tunnel) = open_tunnel(&shared, peer, &parts, body, respond) {
            shared.hand_over(tunnel).await;
        }
        return;
    }
    answer(Request::from_parts(parts, body), respond, shared).await;
}

fn passes_gate(shared: &SharedRef, binding: &Binding, parts: &http::request::Parts) -> bool {
    shared
        .classify(binding, &parts.method, parts.uri.path(), &parts.headers)
        .is_ok()
}

/// Answers a request that passed the gate with the tunnel's response head.
fn open_tunnel(
    shared: &SharedRef,
    peer: Option<SocketAddr>,
    parts: &http::request::Parts,
    body: h2::RecvStream,
    mut respond: h2::server::SendResponse<Bytes>,
) -> Option<Tunnel> {
    let client = shared.client_addr(peer, &parts.headers);
    match respond.send_response(tunnel_response(), false) {
        Ok(send) => Some(Tunnel::h2(send, open(body)).with_peer(client)),
        Err(e) => {
            debug!("tunnel response failed: {e}");
            None
        }
    }
}

/// Answers a request as the site does.
async fn answer(
    req: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    shared: SharedRef,
) {
    let (parts, mut body) = req.into_parts();
    let req = Request::from_parts(parts, ());
    let declared = declared_length(req.headers());
    let Some(resp) = shared.answer(&req, read_body(&mut body, declared)).await else {
        return;
    };
    let (head, payload) = multiplexed(req.method(), resp);
    match respond.send_response(head, payload.is_none()) {
        Ok(mut send) => match payload {
            // The whole body is in memory already: handed over with the
            // head, in the same poll, `h2` writes both (and the other
            // answers ready by then) in one TLS write, and sends what the
            // peer's window does not take yet as the window opens.
            Some(Body::Full(payload)) => {
                if let Err(e) = send.send_data(payload, true) {
                    debug!("h2 response body failed: {e}");
                }
            }
            Some(piecewise @ (Body::File(_) | Body::Origin(_))) => {
                let send_timeout = shared.limits().send_timeout;
                if let Err(e) = send_piecewise(&mut send, piecewise, send_timeout).await {
                    // The body broke off (an origin that went away): reset
                    // as nginx does. `h2` drops what it still holds of the
                    // stream's data (README, Limitations).
                    debug!("h2 response body failed: {e}");
                    send.send_reset(h2::Reason::INTERNAL_ERROR);
                }
            }
            None => {}
        },
        Err(e) => debug!("h2 response failed: {e}"),
    }
    discard(body).await;
}

/// Sends a large body only as fast as the client's windows open, so no more
/// than two pieces of it wait in memory: while one goes out, the next is
/// read, and capacity for it is asked for ahead.
async fn send_piecewise(
    send: &mut h2::SendStream<Bytes>,
    mut body: Body,
    send_timeout: std::time::Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut next = body.next_chunk().await?;
    while let Some(chunk) = next {
        send.reserve_capacity(chunk.len() + FILE_CHUNK);
        let (sent, read) = tokio::join!(
            send_within_window(send, chunk, send_timeout),
            body.next_chunk()
        );
        sent?;
        next = read?;
    }
    send.send_data(Bytes::new(), true)?;
    Ok(())
}

/// Hands `chunk` to `h2` as the stream's capacity allows, waiting at most
/// `send_timeout` for the client to open its window.
async fn send_within_window(
    send: &mut h2::SendStream<Bytes>,
    mut chunk: Bytes,
    send_timeout: std::time::Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    while !chunk.is_empty() {
        let mut granted = send.capacity();
        if granted == 0 {
            let capacity = std::future::poll_fn(|cx| send.poll_capacity(cx));
            granted = match tokio::time::timeout(send_timeout, capacity).await {
                Ok(Some(granted)) => granted?,
                Ok(None) => return Err("the stream closed".into()),
                Err(_) => return Err("the client took nothing within the send timeout".into()),
            };
        }
        if granted > 0 {
            send.send_data(chunk.split_to(granted.min(chunk.len())), false)?;
        }
    }
    Ok(())
}

/// Reads a whole request body for an origin, up to [`MAX_REQUEST_BODY`].
async fn read_body(body: &mut h2::RecvStream, declared: Option<u64>) -> Result<Vec<u8>, BodyEnd> {
    if declared.is_some_and(|n| n > MAX_REQUEST_BODY as u64) {
        return Err(BodyEnd::TooLarge);
    }
    let deadline = tokio::time::Instant::now() + DISCARD_TIMEOUT;
    let mut data = Vec::new();
    while !body.is_end_stream() {
        match tokio::time::timeout_at(deadline, body.data()).await {
            Ok(Some(Ok(chunk))) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                if data.len() + chunk.len() > MAX_REQUEST_BODY {
                    return Err(BodyEnd::TooLarge);
                }
                data.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Ok(Some(Err(_))) | Err(_) => return Err(BodyEnd::Aborted),
        }
    }
    Ok(data)
}

/// Reads and throws away what is left of a request body, as nginx does for
/// static files. Dropping it unread would reset the stream with CANCEL,
/// which a client sees as an error and nginx never sends.
async fn discard(mut body: h2::RecvStream) {
    let deadline = tokio::time::Instant::now() + DISCARD_TIMEOUT;
    let mut left = MAX_DISCARD;
    while !body.is_end_stream() && left > 0 {
        match tokio::time::timeout_at(deadline, body.data()).await {
            Ok(Some(Ok(chunk))) => {
                left = left.saturating_sub(chunk.len());
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            _ => break,
        }
    }
}
