//! The relay's web front: one TCP port (TLS 1.3; HTTP/1.1 and HTTP/2) and
//! the same UDP port (QUIC; HTTP/3), serving the decoy site to everyone and
//! handing tunnels to the application for requests that pass the gate.
//!
//! The decision is made in exactly one place, [`Front::classify`]: a request
//! is a tunnel only if it is a POST to the tunnel path over HTTP/2 or HTTP/3
//! and carries a gate value that passes. Anything else, including every
//! failed gate, goes to the site, which answers it as it answers any other
//! request to that path. HTTP/1.1 never carries tunnels.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{header, HeaderMap, Method, Request, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::error::Error;
use crate::gate::{
    Binding, Gate, Refusal, ReplayGuard, ReplayLimits, EXPORTER_LABEL, EXPORTER_LEN,
};
use crate::site::{Body, Site, SiteRequest, SiteResponse};
use crate::tls::{Certificates, Identity};
use crate::tunnel::{Meter, Tunnel};

/// Name of the cookie that carries the gate value.
pub const GATE_COOKIE: &str = "sid";

/// Bounds on what one front accepts. Every limit has a default.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open TCP connections plus QUIC connections.
    pub max_connections: usize,
    /// Time a client has to finish the TLS handshake (nginx: 60 s).
    pub handshake_timeout: Duration,
    /// Tunnels accepted but not yet taken by the application.
    pub tunnel_backlog: usize,
    /// HTTP/2 and HTTP/3 streams per connection (nginx: 128).
    pub max_streams: u32,
    /// Receive window of a tunnel stream once the gate has passed.
    pub tunnel_window: u32,
    /// QUIC connection-level receive window.
    pub quic_conn_window: u32,
    /// Idle time after which a QUIC connection is closed.
    pub quic_idle_timeout: Duration,
    /// Idle time after which an HTTP/1.1 or HTTP/2 connection that carries
    /// no tunnel is closed (nginx's `keepalive_timeout`, 75 s).
    pub keepalive_timeout: Duration,
    /// Requests one HTTP/1.1 or HTTP/2 connection without a tunnel serves
    /// before the server closes it (nginx's `keepalive_requests`, 1000).
    pub keepalive_requests: u32,
    /// Longest a site response may wait for the client to take more of it
    /// (nginx's `send_timeout`, 60 s, between two writes): then the
    /// HTTP/1.1 connection is closed, or the HTTP/2 or HTTP/3 stream reset.
    pub send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(60),
            tunnel_backlog: 128,
            max_streams: 128,
            tunnel_window: 8 * 1024 * 1024,
            quic_conn_window: 16 * 1024 * 1024,
            quic_idle_timeout: Duration::from_secs(75),
            keepalive_timeout: Duration::from_secs(75),
            keepalive_requests: 1000,
            send_timeout: Duration::from_secs(60),
        }
    }
}

/// Everything a front needs.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    pub identity: Identity,
    pub gate: Gate,
    /// Path that carries tunnels (also an ordinary path of the site).
    pub tunnel_path: String,
    pub site: Site,
    pub limits: Limits,
}

/// Why a request did not become a tunnel; for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotTunnel {
    /// An ordinary site request.
    Site,
    /// Aimed at the tunnel but refused by the gate.
    Refused(Refusal),
}

/// What a front (or a backend) counted, for the operator's metrics: counts
/// only, nothing about who.
#[derive(Debug)]
pub struct FrontStats {
    connections: Arc<Semaphore>,
    max_connections: usize,
    tunnels_opened: AtomicU64,
    refusals: [AtomicU64; Refusal::ALL.len()],
    meter: Arc<Meter>,
}

/// One reading of [`FrontStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrontSnapshot {
    /// Carrier connections open now.
    pub connections: u64,
    pub tunnels_opened: u64,
    /// Gate refusals by reason ([`Refusal::label`]), every reason listed.
    pub refusals: Vec<(&'static str, u64)>,
    /// Bytes through tunnels, from users and to users.
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

impl FrontStats {
    fn new(connections: Arc<Semaphore>, max_connections: usize) -> Self {
        Self {
            connections,
            max_connections,
            tunnels_opened: AtomicU64::new(0),
            refusals: Default::default(),
            meter: Arc::default(),
        }
    }

    pub fn snapshot(&self) -> FrontSnapshot {
        let open = self
            .max_connections
            .saturating_sub(self.connections.available_permits());
        FrontSnapshot {
            connections: open as u64,
            tunnels_opened: self.tunnels_opened.load(Ordering::Relaxed),
            refusals: Refusal::ALL
                .iter()
                .zip(&self.refusals)
                .map(|(r, n)| (r.label(), n.load(Ordering::Relaxed)))
                .collect(),
            bytes_received: self.meter.received(),
            bytes_sent: self.meter.sent(),
        }
    }

    fn refused(&self, r: Refusal) {
        if let Some(i) = Refusal::ALL.iter().position(|x| *x == r) {
            self.refusals[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub(crate) struct Shared {
    gate: Gate,
    tunnel_path: String,
    site: Site,
    limits: Limits,
    tunnels: mpsc::Sender<Tunnel>,
    connections: Arc<Semaphore>,
    /// For gates without an exporter (behind a proxy).
    replay: Mutex<ReplayGuard>,
    /// Behind a proxy: the client's address comes from `X-Real-IP`.
    behind_proxy: bool,
    stats: Arc<FrontStats>,
}

/// A bound, not yet running front.
#[derive(Debug)]
pub struct Front {
    tcp: TcpListener,
    quic: quinn::Endpoint,
    shared: Arc<Shared>,
    tcp_tls: Arc<rustls::ServerConfig>,
    certificates: Arc<Certificates>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("tunnel_path", &self.tunnel_path)
            .finish()
    }
}

/// Where accepted tunnels arrive.
#[derive(Debug)]
pub struct Tunnels(mpsc::Receiver<Tunnel>);

impl Tunnels {
    /// The next tunnel, or `None` once the front has stopped.
    pub async fn accept(&mut self) -> Option<Tunnel> {
        self.0.recv().await
    }

    /// Polling form of [`Tunnels::accept`], for callers that are themselves
    /// state machines (a libp2p transport).
    pub fn poll_accept(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Tunnel>> {
        self.0.poll_recv(cx)
    }
}

impl Front {
    /// Binds TCP and UDP on `addr` (the same port for both; with port 0 the
    /// UDP socket takes the port the TCP listener got).
    pub async fn bind(addr: SocketAddr, config: FrontConfig) -> Result<(Self, Tunnels), Error> {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind {
                addr,
                proto: "tcp",
                source,
            })?;
        let tcp_addr = tcp.local_addr().map_err(|source| Error::Bind {
            addr,
            proto: "tcp",
            source,
        })?;
        let certificates = Certificates::new(&config.identity)?;
        let tcp_tls = certificates.server_config_tcp()?;
        let quic = bind_quic(tcp_addr, &config, &certificates)?;
        let mut site = config.site;
        if site.port() == 0 {
            site.set_port(tcp_addr.port());
        }
        let (shared, tunnels) = Shared::new(
            config.gate,
            config.tunnel_path,
            site,
            config.limits,
            ReplayLimits::default(),
            false,
        );
        Ok((
            Self {
                tcp,
                quic,
                shared,
                tcp_tls,
                certificates,
            },
            tunnels,
        ))
    }

    pub fn local_addr(&self) -> SocketAddr {
        // Bound successfully above, so the address is known.
        self.tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Counts for the operator's metrics, live while the front runs.
    pub fn stats(&self) -> Arc<FrontStats> {
        self.shared.stats()
    }

    /// The certificate this front serves, replaceable while it runs.
    pub fn certificates(&self) -> Arc<Certificates> {
        self.certificates.clone()
    }

    /// Serves until `shutdown` becomes true; then stops accepting, closes
    /// its QUIC connections and returns (open TCP connections finish on
    /// their own tasks).
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        self.serve(shutdown.clone(), shutdown).await
    }

    /// Serves until `stop_accepting` becomes true; then refuses new
    /// connections (TCP and QUIC) while open ones go on, until `close`
    /// becomes true and the QUIC connections are closed. Between the two
    /// lies a graceful drain.
    pub async fn serve(
        self,
        mut stop_accepting: watch::Receiver<bool>,
        mut close: watch::Receiver<bool>,
    ) {
        let Front {
            tcp,
            quic,
            shared,
            tcp_tls,
            ..
        } = self;
        let acceptor = tokio_rustls::TlsAcceptor::from(tcp_tls);
        // The TCP listener lives in its loop: it closes when the loop ends.
        let tcp_loop = accept_tcp(tcp, acceptor, shared.clone());
        let quic_loop = accept_quic(quic.clone(), shared, None);
        tokio::select! {
            _ = tcp_loop => {}
            _ = quic_loop => {}
            _ = stop_accepting.wait_for(|stop| *stop) => {}
        }
        quic.set_server_config(None);
        let _ = close.wait_for(|c| *c).await;
        quic.close(0u32.into(), b"");
    }
}

/// A front that serves HTTP/3 only, on an endpoint the caller made (a node's
/// one UDP socket, which also carries its own QUIC dials: what a contact
/// punches a hole toward). The endpoint's server side is set here; its
/// client side stays the caller's.
pub struct QuicFront {
    quic: quinn::Endpoint,
    shared: Arc<Shared>,
    admit: Option<Admit>,
}

/// Decides, by the sender's address, whether a new QUIC connection gets an
/// answer at all.
pub type Admit = Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>;

impl std::fmt::Debug for QuicFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicFront")
            .field("shared", &self.shared)
            .field("filtered", &self.admit.is_some())
            .finish()
    }
}

impl QuicFront {
    /// Serves `config` on `endpoint` (its TCP-only settings are unused).
    pub fn on(endpoint: &quinn::Endpoint, config: FrontConfig) -> Result<(Self, Tunnels), Error> {
        let certificates = Certificates::new(&config.identity)?;
        endpoint.set_server_config(Some(quic_server(&config, &certificates)?));
        let (shared, tunnels) = Shared::new(
            config.gate,
            config.tunnel_path,
            config.site,
            config.limits,
            ReplayLimits::default(),
            false,
        );
        Ok((
            Self {
                quic: endpoint.clone(),
                shared,
                admit: None,
            },
            tunnels,
        ))
    }

    /// Only connections from addresses `admit` accepts get an answer;
    /// others are ignored as if nothing listened (no state, no reply).
    pub fn admitting(mut self, admit: Admit) -> Self {
        self.admit = Some(admit);
        self
    }

    pub fn stats(&self) -> Arc<FrontStats> {
        self.shared.stats()
    }

    /// Accepts until `stop` becomes true, then refuses new connections
    /// (the endpoint and its open connections stay the caller's).
    pub async fn serve(self, mut stop: watch::Receiver<bool>) {
        tokio::select! {
            _ = accept_quic(self.quic.clone(), self.shared, self.admit) => {}
            _ = stop.wait_for(|stop| *stop) => {}
        }
        self.quic.set_server_config(None);
    }
}

fn quic_server(
    config: &FrontConfig,
    certificates: &Arc<Certificates>,
) -> Result<quinn::ServerConfig, Error> {
    let tls = certificates.server_config_quic()?;
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(Error::tls_setup)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(quic_transport(&config.limits)));
    Ok(server)
}

fn bind_quic(
    addr: SocketAddr,
    config: &FrontConfig,
    certificates: &Arc<Certificates>,
) -> Result<quinn::Endpoint, Error> {
    let server = quic_server(config, certificates)?;
    // The front's own socket: a relay's, or a node's with `burrow up --listen`.
    // egress-check: allowed: a listening socket; its endpoint only accepts, never dials out.
    let socket = std::net::UdpSocket::bind(addr).map_err(|source| Error::Bind {
        addr,
        proto: "udp",
        source,
    })?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| Error::Bind {
        addr,
        proto: "udp",
        source,
    })
}

/// Transport parameters shared by both QUIC ends: windows large enough that
/// one stream is not capped by flow control on a fast path.
pub(crate) fn quic_transport(limits: &Limits) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(limits.tunnel_window.into());
    t.receive_window(limits.quic_conn_window.into());
    t.send_window(u64::from(limits.quic_conn_window));
    t.max_concurrent_bidi_streams(limits.max_streams.into());
    t.max_concurrent_uni_streams(3u32.into());
    if let Ok(idle) = limits.quic_idle_timeout.try_into() {
        t.max_idle_timeout(Some(idle));
    }
    t
}

async fn accept_tcp(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    let accept = || async {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    };
    accept_loop(accept, shared, move |stream, shared, permit| {
        serve_tcp(stream, acceptor.clone(), shared, permit)
    })
    .await
}

/// Accepts connections while the connection limit allows and hands each
/// to `serve` with its place under the limit. A failing `accept` (out of
/// file descriptors and similar) is retried after a growing pause instead
/// of spinning.
pub(crate) async fn accept_loop<S, A, AF, F, SF>(mut accept: A, shared: Arc<Shared>, serve: F)
where
    A: FnMut() -> AF,
    AF: std::future::Future<Output = std::io::Result<S>>,
    F: Fn(S, Arc<Shared>, OwnedSemaphorePermit) -> SF,
    SF: std::future::Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(5);
    loop {
        let Ok(permit) = shared.connections.clone().acquire_owned().await else {
            return;
        };
        let stream = match accept().await {
            Ok(s) => {
                backoff = Duration::from_millis(5);
                s
            }
            Err(e) => {
                warn!("accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        tokio::spawn(serve(stream, shared.clone(), permit));
    }
}

/// Serves one TCP connection; `permit` counts it against the connection
/// limit for as long as it lives (inside a WebSocket tunnel, if it becomes
/// one).
async fn serve_tcp(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
) {
    // A TLS connection starts with a handshake record (0x16), or 0x80 for
    // an SSLv2-style hello; anything else is answered as nginx answers plain
    // HTTP on its TLS port.
    let mut first = [0u8; 1];
    match tokio::time::timeout(shared.limits.handshake_timeout, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == 0x16 || first[0] == 0x80 => {}
        Ok(Ok(1)) => {
            crate::h1_server::serve_plain(stream).await;
            return;
        }
        _ => return,
    }
    let stream = crate::linger::Lingering::new(stream);
    let tls = match tokio::time::timeout(shared.limits.handshake_timeout, acceptor.accept(stream))
        .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!("TLS handshake failed: {e}");
            return;
        }
        Err(_) => return,
    };
    let (_, conn) = tls.get_ref();
    let mut exporter = [0u8; EXPORTER_LEN];
    if conn
        .export_keying_material(&mut exporter, EXPORTER_LABEL, None)
        .is_err()
    {
        return;
    }
    let binding = Binding::Exporter(exporter);
    let h2 = conn.alpn_protocol() == Some(b"h2");
    let peer = tls.get_ref().0.peer_addr().ok();
    if h2 {
        crate::h2_server::serve(tls, peer, binding, shared, permit).await;
    } else {
        crate::h1_server::serve(tls, peer, binding, shared, permit).await;
    }
}

async fn accept_quic(endpoint: quinn::Endpoint, shared: Arc<Shared>, admit: Option<Admit>) {
    while let Some(incoming) = endpoint.accept().await {
        if admit
            .as_ref()
            .is_some_and(|admit| !admit(incoming.remote_address()))
        {
            incoming.ignore();
            continue;
        }
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let timeout = shared.limits.handshake_timeout;
            // Boxed, as the HTTP/3 set-up in `serve`: what the handshake
            // needs is freed once it is done, instead of sizing the task
            // that then holds an idle user's connection for hours.
            let handshake = Box::pin(tokio::time::timeout(timeout, incoming));
            if let Ok(Ok(conn)) = handshake.await {
                crate::h3_server::serve(conn, shared).await;
            }
            drop(permit);
        });
    }
}

impl Shared {
    pub(crate) fn new(
        gate: Gate,
        tunnel_path: String,
        site: Site,
        limits: Limits,
        replay: ReplayLimits,
        behind_proxy: bool,
    ) -> (Arc<Self>, Tunnels) {
        let (tx, rx) = mpsc::channel(limits.tunnel_backlog);
        let connections = Arc::new(Semaphore::new(limits.max_connections));
        let shared = Arc::new(Shared {
            gate,
            tunnel_path,
            site,
            stats: Arc::new(FrontStats::new(connections.clone(), limits.max_connections)),
            connections,
            limits,
            tunnels: tx,
            replay: Mutex::new(ReplayGuard::new(replay)),
            behind_proxy,
        });
        (shared, Tunnels(rx))
    }

    /// The one place that decides tunnel or site.
    pub(crate) fn classify(
        &self,
        binding: &Binding,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(), NotTunnel> {
        if method != Method::POST || path != self.tunnel_path {
            return Err(NotTunnel::Site);
        }
        self.check_gate(binding, headers)
    }

    /// An HTTP/1.1 `Upgrade: websocket` request for the tunnel path (the
    /// WebSocket carrier); the same gate decides.
    pub(crate) fn classify_upgrade(
        &self,
        binding: &Binding,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(), NotTunnel> {
        let websocket = headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if method != Method::GET
            || path != self.tunnel_path
            || !websocket
            || !headers.contains_key("sec-websocket-key")
        {
            return Err(NotTunnel::Site);
        }
        self.check_gate(binding, headers)
    }

    fn check_gate(&self, binding: &Binding, headers: &HeaderMap) -> Result<(), NotTunnel> {
        let value = gate_cookie(headers);
        let checked = self
            .gate
            .check(binding, value)
            .and_then(|passed| match binding {
                Binding::Exporter(_) => Ok(()),
                Binding::Proxied => self
                    .replay
                    .lock()
                    .map_err(|_| Refusal::ReplayCacheFull)?
                    .admit(unix_now(), &passed),
            });
        match checked {
            Ok(()) => Ok(()),
            Err(r) => {
                self.stats.refused(r);
                debug!(reason = r.label(), "gate refused a tunnel request");
                Err(NotTunnel::Refused(r))
            }
        }
    }

    pub(crate) async fn site_response<B>(&self, req: &Request<B>, body: &[u8]) -> SiteResponse {
        let host = req.uri().authority().map(|a| a.as_str()).or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        self.site
            .respond(SiteRequest {
                method: req.method(),
                target,
                headers: req.headers(),
                host,
                body,
            })
            .await
    }

    /// The site's answer on HTTP/2 and HTTP/3: for a site that reads
    /// bodies, `read_body` collects the request body first (a body too
    /// large gets nginx's 413); `None` when the client went away meanwhile.
    pub(crate) async fn answer<B>(
        &self,
        req: &Request<B>,
        read_body: impl std::future::Future<Output = Result<Vec<u8>, BodyEnd>>,
    ) -> Option<SiteResponse> {
        if !self.site.reads_bodies() {
            return Some(self.site_response(req, &[]).await);
        }
        match read_body.await {
            Ok(body) => Some(self.site_response(req, &body).await),
            Err(BodyEnd::TooLarge) => Some(crate::site::error_response(
                http::StatusCode::PAYLOAD_TOO_LARGE,
            )),
            Err(BodyEnd::Aborted) => None,
        }
    }

    pub(crate) async fn hand_over(&self, tunnel: Tunnel) {
        self.stats.tunnels_opened.fetch_add(1, Ordering::Relaxed);
        let tunnel = tunnel.with_meter(self.stats.meter.clone());
        if self.tunnels.send(tunnel).await.is_err() {
            debug!("tunnel dropped: the application stopped accepting");
        }
    }

    pub(crate) fn site(&self) -> &Site {
        &self.site
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The tunnel's client: the connection's peer, or behind a proxy the
    /// address the proxy names in `X-Real-IP` (the backend listens only
    /// where the proxy can reach it).
    pub(crate) fn client_addr(
        &self,
        peer: Option<SocketAddr>,
        headers: &HeaderMap,
    ) -> Option<SocketAddr> {
        if !self.behind_proxy {
            return peer;
        }
        let ip: std::net::IpAddr = headers
            .get("x-real-ip")?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(SocketAddr::new(ip, 0))
    }

    pub(crate) fn stats(&self) -> Arc<FrontStats> {
        self.stats.clone()
    }
}

/// Why a request body was not read whole (HTTP/2 and HTTP/3).
pub(crate) enum BodyEnd {
    /// Longer than the site accepts: nginx's 413.
    TooLarge,
    /// Reset, broken or too slow: there is no one left to answer.
    Aborted,
}

/// A `Content-Length` the client declared, if it is a number.
pub(crate) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The gate value from the request's cookies, if any.
fn gate_cookie(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .map(|c| c.trim_ascii())
        .find_map(|c| c.strip_prefix(GATE_COOKIE.as_bytes())?.strip_prefix(b"="))
}

/// Response head for an accepted tunnel: an ordinary streaming API answer.
pub(crate) fn tunnel_response() -> Response<()> {
    let mut r = Response::new(());
    let h = r.headers_mut();
    h.insert(header::SERVER, header::HeaderValue::from_static("nginx"));
    h.insert(header::DATE, crate::site::http_date_now());
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    // Never indexed: sent once per tunnel, so a table entry would only sit
    // in the relay's encoder for the tunnel's whole life. Only the client
    // sees how this answer is encoded (a probe never gets it).
    for value in h.values_mut() {
        value.set_sensitive(true);
    }
    r
}

/// A site response split for HTTP/2 and HTTP/3: the head without
/// connection-specific headers or transfer coding (nginx drops them there
/// too), and the body unless there is none to send (HEAD, empty).
pub(crate) fn multiplexed(method: &Method, resp: SiteResponse) -> (Response<()>, Option<Body>) {
    let (mut parts, body) = resp.into_parts();
    // Rebuilt rather than `remove`d: removal swaps the last header into
    // the gap, and the order is part of looking like nginx.
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    let mut current = None;
    for (name, value) in parts.headers.drain() {
        if let Some(name) = name {
            current = Some(name);
        }
        match &current {
            Some(n) if n != header::CONNECTION && n != header::TRANSFER_ENCODING => {
                headers.append(n.clone(), value);
            }
            _ => {}
        }
    }
    parts.headers = headers;
    let body = (method != Method::HEAD && !body.is_empty()).then_some(body);
    (Response::from_parts(parts, ()), body)
}

/// Seconds since the epoch, for the client's gate message.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) type SharedRef = Arc<Shared>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiplexed_heads_keep_nginx_order_without_hop_headers() {
        let response = || {
            let mut r = Response::new(Body::Full(bytes::Bytes::from_static(b"body")));
            for (n, v) in [
                ("server", "nginx"),
                ("date", "d"),
                ("content-type", "text/plain"),
                ("transfer-encoding", "chunked"),
                ("connection", "keep-alive"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("alt-svc", "h3"),
            ] {
                r.headers_mut().append(
                    header::HeaderName::from_static(n),
                    header::HeaderValue::from_static(v),
                );
            }
            r
        };
        let (head, body) = multiplexed(&Method::GET, response());
        let got: Vec<(&str, &str)> = head
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap_or("?")))
            .collect();
        assert_eq!(
            got,
            [
                ("server", "nginx"),
                ("date", "d"),
                ("content-type", "text/plain"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("alt-svc", "h3")
            ]
        );
        assert!(matches!(body, Some(Body::Full(b)) if b == "body"));
        assert!(multiplexed(&Method::HEAD, response()).1.is_none());
    }
}
