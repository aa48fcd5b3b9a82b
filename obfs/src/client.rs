//! The client side: dial a relay over HTTP/2-on-TLS, HTTP/3-on-QUIC or a
//! WebSocket on HTTP/1.1-on-TLS and open a tunnel. The relay's carriers
//! are tried in turn, each with a head start ([`CARRIER_HEAD_START`]): the
//! next one is started when the one before it failed or is still not
//! through after its head start, and the first through wins, as a browser
//! races TCP against QUIC. A carrier a censor silently drops costs the head
//! start, not its whole timeout.
//!
//! The request looks like a current browser's `fetch()` POST with a
//! streaming body; the gate value rides in a cookie. The tunnel is returned
//! as soon as the request is sent, so the first tunnel bytes travel with it;
//! the relay's answer is checked on the first read (or by
//! [`Tunnel::established`]).
//!
//! This crate opens no sockets of its own accord: the caller passes a
//! [`Sockets`] that decides how (and whether) to reach an address.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use rand::RngCore;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use crate::error::Error;
use crate::front::{self, Limits, GATE_COOKIE};
use crate::gate::{self, Binding, EXPORTER_LABEL, EXPORTER_LEN};
use crate::relay_line::{Carrier, RelayLine};
use crate::tls::{self, Trust, ALPN_HTTP1, ALPN_QUIC, ALPN_TCP};
use crate::tunnel::{self, Tunnel};

/// The `User-Agent` of the browser the client imitates.
pub const USER_AGENT: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/142.0.0.0 Safari/537.36";

/// Chrome's HTTP/2 SETTINGS values.
const CHROME_HEADER_TABLE: u32 = 65_536;
const CHROME_STREAM_WINDOW: u32 = 6_291_456;
const CHROME_MAX_HEADER_LIST: u32 = 262_144;
/// Chrome's connection WINDOW_UPDATE (15663105) plus the initial 65535.
const CHROME_CONNECTION_WINDOW: u32 = 15_663_105 + 65_535;

/// The future a [`Sockets`] dial returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How the client gets its sockets. The `burrow` binary passes the
/// firewall's guarded dialer here (`burrow_node::guarded::GuardedSockets`);
/// this crate opens no outbound socket of its own.
///
/// `host` is an IP address or a name: a name is resolved by the
/// implementation (the firewall: over encrypted DNS only), so this crate
/// never resolves or checks a name itself.
pub trait Sockets: Send + Sync + std::fmt::Debug {
    /// A connected TCP stream to `host:port`.
    fn tcp(&self, host: &str, port: u16) -> BoxFuture<'_, io::Result<TcpStream>>;
    /// A UDP socket that may send to `host:port`, and the address it
    /// resolved to.
    fn udp(
        &self,
        host: &str,
        port: u16,
    ) -> BoxFuture<'_, io::Result<(std::net::UdpSocket, SocketAddr)>>;
    /// The address a datagram to `host:port` may go to, for a dial from an
    /// endpoint the caller already holds ([`Client::with_quic_endpoint`]).
    /// By default the address [`Sockets::udp`] approved (its socket unused).
    fn udp_addr(&self, host: &str, port: u16) -> BoxFuture<'_, io::Result<SocketAddr>> {
        let (host, port) = (host.to_string(), port);
        Box::pin(async move { self.udp(&host, port).await.map(|(_, addr)| addr) })
    }
}

/// Dials one relay.
#[derive(Clone)]
pub struct Client {
    line: RelayLine,
    sockets: Arc<dyn Sockets>,
    tcp_tls: Arc<rustls::ClientConfig>,
    /// For the WebSocket carrier: HTTP/1.1 only, as a browser's second
    /// connection for a WebSocket to a server without RFC 8441.
    ws_tls: Arc<rustls::ClientConfig>,
    quic_tls: Arc<quinn::crypto::rustls::QuicClientConfig>,
    limits: Limits,
    connect_timeout: Duration,
    /// Dial HTTP/3 from this endpoint instead of a socket of its own.
    quic: Option<quinn::Endpoint>,
    /// Which carriers failed lately; shared by the clones of this client.
    failures: Arc<CarrierFailures>,
    head_start: Duration,
    /// One dial per carrier at a time (see [`Client::dial_alone`]); shared
    /// by the clones of this client.
    dialing: Arc<[DialSlot; 3]>,
}

/// A carrier's place for one dial at a time, and when the last dial
/// through it got through.
#[derive(Debug, Default)]
struct DialSlot {
    turn: tokio::sync::Mutex<()>,
    through: Mutex<Option<Instant>>,
}

/// How long a dial waits, after the dial before it over the same carrier
/// got through, before opening a connection of its own: the time libp2p
/// takes to finish setting up the first connection (Noise and yamux, a
/// round trip or two) and drop this dial if it was the same address listed
/// twice.
const DUPLICATE_GRACE: Duration = Duration::from_secs(5);

/// How long a carrier has to get through before the relay's next carrier
/// is started alongside it. A tunnel takes two or three round trips, so a
/// working carrier is through well within this on any path under about
/// 300 ms; a silently blocked one (QUIC dropped, TCP black-holed) costs
/// this instead of its 10 s timeout.
pub const CARRIER_HEAD_START: Duration = Duration::from_secs(1);

/// How long a carrier that failed is tried only after the relay's other
/// carriers. A censor's block lasts: without this, every dial would wait
/// out a black-holed carrier's timeout (10 s) before reaching one that
/// works. Each failure in a row doubles the wait (as a browser does with a
/// broken QUIC), up to [`FAILED_CARRIER_MAX_WAIT`]; a success ends it.
pub const FAILED_CARRIER_WAIT: Duration = Duration::from_secs(300);

/// The longest a failed carrier waits behind the others: an hour, so a
/// carrier blocked on one network is back in its place soon after the user
/// moved to another (a punching node needs its QUIC).
pub const FAILED_CARRIER_MAX_WAIT: Duration = Duration::from_secs(3600);

/// When each carrier of one relay last failed to connect, and how many
/// times in a row, for [`FAILED_CARRIER_WAIT`].
#[derive(Debug)]
struct CarrierFailures {
    wait: Duration,
    last: Mutex<Vec<Failure>>,
    /// Woken at each failure: a carrier waiting its turn starts at once
    /// when every carrier ahead of it has failed.
    failed: tokio::sync::Notify,
}

#[derive(Debug, Clone, Copy)]
struct Failure {
    carrier: Carrier,
    at: Instant,
    in_a_row: u32,
}

impl CarrierFailures {
    fn new(wait: Duration) -> Self {
        Self {
            wait,
            last: Mutex::new(Vec::new()),
            failed: tokio::sync::Notify::new(),
        }
    }

    /// Whether `carrier` failed at `since` or later.
    fn failed_since(&self, carrier: Carrier, since: Instant) -> bool {
        let Ok(last) = self.last.lock() else {
            return false;
        };
        last.iter().any(|f| f.carrier == carrier && f.at >= since)
    }

    /// How long a carrier that failed `in_a_row` times waits.
    fn wait_after(&self, in_a_row: u32) -> Duration {
        let doublings = in_a_row.saturating_sub(1).min(16);
        self.wait
            .saturating_mul(1 << doublings)
            .min(FAILED_CARRIER_MAX_WAIT.max(self.wait))
    }

    /// How long ago `carrier` failed, if that is within its wait.
    fn recent(&self, carrier: Carrier) -> Option<Duration> {
        let last = self.last.lock().ok()?;
        let f = last.iter().find(|f| f.carrier == carrier)?;
        Some(f.at.elapsed()).filter(|ago| *ago < self.wait_after(f.in_a_row))
    }

    fn record(&self, carrier: Carrier, ok: bool) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        let before = last.iter().position(|f| f.carrier == carrier);
        let in_a_row = before.map_or(0, |i| last.swap_remove(i).in_a_row);
        if !ok {
            last.push(Failure {
                carrier,
                at: Instant::now(),
                in_a_row: in_a_row.saturating_add(1),
            });
            drop(last);
            self.failed.notify_waiters();
        }
    }
}

/// A dial dropped unfinished after its head start counts as a failure of
/// its carrier: another carrier overtook it (or the caller gave up on it),
/// so the next dial starts with the one that got through.
struct Unfinished<'a> {
    client: &'a Client,
    carrier: Carrier,
    started: Instant,
    finished: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.finished && self.started.elapsed() >= self.client.head_start {
            debug!(
                "{} carrier not through after {:?}: overtaken",
                self.carrier,
                self.started.elapsed()
            );
            self.client.failures.record(self.carrier, false);
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("host", &self.line.host)
            .field("port", &self.line.port)
            .field("carriers", &self.line.carriers)
            .finish()
    }
}

impl Client {
    pub fn new(line: RelayLine, sockets: Arc<dyn Sockets>) -> Result<Self, Error> {
        let trust = match line.pin {
            Some(pin) => Trust::Pinned(pin),
            None => Trust::WebRoots,
        };
        let tcp_tls = tls::client_config(&trust, &ALPN_TCP)?;
        let ws_tls = tls::client_config(&trust, &[ALPN_HTTP1])?;
        let quic_rustls = tls::client_config(&trust, &[ALPN_QUIC])?;
        let quic_tls = quinn::crypto::rustls::QuicClientConfig::try_from(quic_rustls)
            .map_err(Error::tls_setup)?;
        Ok(Self {
            line,
            sockets,
            tcp_tls,
            ws_tls,
            quic_tls: Arc::new(quic_tls),
            limits: Limits::default(),
            connect_timeout: Duration::from_secs(10),
            quic: None,
            failures: Arc::new(CarrierFailures::new(FAILED_CARRIER_WAIT)),
            head_start: CARRIER_HEAD_START,
            dialing: Arc::default(),
        })
    }

    /// How long each carrier has before the next is started alongside it
    /// (by default [`CARRIER_HEAD_START`]).
    pub fn with_head_start(mut self, head_start: Duration) -> Self {
        self.head_start = head_start;
        self
    }

    /// How long a failed carrier first goes to the back of the line (by
    /// default [`FAILED_CARRIER_WAIT`]; doubled for each failure in a row).
    pub fn with_failed_carrier_wait(mut self, wait: Duration) -> Self {
        self.failures = Arc::new(CarrierFailures::new(wait));
        self
    }

    /// Time allowed for reaching the relay and finishing TLS, per carrier.
    pub fn with_connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// HTTP/3 dials leave from `endpoint` (shared with other dials and
    /// perhaps a [`crate::QuicFront`]): one UDP socket, so one NAT mapping,
    /// for everything this node says over QUIC.
    pub fn with_quic_endpoint(mut self, endpoint: quinn::Endpoint) -> Self {
        self.quic = Some(endpoint);
        self
    }

    pub fn line(&self) -> &RelayLine {
        &self.line
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// How long each carrier has before the next is started alongside it.
    pub fn head_start(&self) -> Duration {
        self.head_start
    }

    /// The relay's carriers in the order they are tried: the line's, except
    /// that those which failed lately (within [`FAILED_CARRIER_WAIT`],
    /// doubled for each failure in a row) come last.
    pub fn carriers(&self) -> Vec<Carrier> {
        let mut carriers = self.line.carriers.clone();
        carriers.sort_by_key(|&c| self.failures.recent(c).is_some());
        carriers
    }

    /// Why a dial over `carrier` should make way for the relay's other
    /// carriers: it failed lately and some other one has not. `None` when it
    /// is worth trying now. (A dialer that takes the line's carriers one by
    /// one, as libp2p does, skips it this way.)
    pub fn make_way(&self, carrier: Carrier) -> Option<String> {
        let ago = self.failures.recent(carrier)?;
        let other = self
            .line
            .carriers
            .iter()
            .find(|&&c| c != carrier && self.failures.recent(c).is_none())?;
        Some(format!(
            "failed {} s ago; trying the {other} carrier first",
            ago.as_secs()
        ))
    }

    /// Notes that a tunnel over `carrier` connected but the relay did not
    /// accept it (for dialers that check acceptance themselves).
    pub fn refused(&self, carrier: Carrier) {
        self.failures.record(carrier, false);
    }

    /// Waits until no other dial over `carrier` to this relay is under way,
    /// and holds that place until the returned guard is dropped. libp2p may
    /// list one address twice in a dial (the same address from two
    /// sources) and, dialling addresses at once,
    /// would open two connections over one carrier and drop one. With this
    /// the second waits; if the first got through (the dialer calls
    /// [`Client::got_through`]) it waits [`DUPLICATE_GRACE`] more, in which
    /// a duplicate is dropped unstarted; if the first failed it goes.
    pub async fn dial_alone(&self, carrier: Carrier) -> tokio::sync::MutexGuard<'_, ()> {
        let slot = self.slot(carrier);
        let turn = slot.turn.lock().await;
        let through = *slot.through.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(left) = through.and_then(|at| DUPLICATE_GRACE.checked_sub(at.elapsed())) {
            tokio::time::sleep(left).await;
        }
        turn
    }

    /// Notes that a dial over `carrier` got through (see
    /// [`Client::dial_alone`]).
    pub fn got_through(&self, carrier: Carrier) {
        *self
            .slot(carrier)
            .through
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    fn slot(&self, carrier: Carrier) -> &DialSlot {
        &self.dialing[match carrier {
            Carrier::H2 => 0,
            Carrier::H3 => 1,
            Carrier::Ws => 2,
        }]
    }

    /// Waits until it is `carrier`'s turn among the relay's carriers, for
    /// a dialer that starts a dial per carrier at once (libp2p does, with a
    /// dial concurrency above one, and drops the others when one is
    /// through): the first of [`Client::carriers`] goes at once, the n-th
    /// after n head starts, or as soon as every carrier ahead of it has
    /// failed since this call.
    pub async fn wait_turn(&self, carrier: Carrier) {
        let order = self.carriers();
        let ahead = order.iter().take_while(|&&c| c != carrier).copied();
        self.wait_behind(&ahead.collect::<Vec<_>>(), Instant::now())
            .await;
    }

    async fn wait_behind(&self, ahead: &[Carrier], since: Instant) {
        let Ok(n) = u32::try_from(ahead.len()) else {
            return;
        };
        // (At most a day: a head start set absurdly long must not overflow.)
        let wait = self
            .head_start
            .saturating_mul(n)
            .min(Duration::from_secs(86_400));
        let deadline = tokio::time::Instant::from_std(since) + wait;
        loop {
            // Registered before the check, so a failure in between wakes it.
            let failed = self.failures.failed.notified();
            tokio::pin!(failed);
            failed.as_mut().enable();
            if ahead.iter().all(|&c| self.failures.failed_since(c, since)) {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                () = failed => {}
            }
        }
    }

    /// Opens a tunnel over the relay's carriers in the order of
    /// [`Client::carriers`], each with its head start; the first through
    /// wins.
    pub async fn connect(&self) -> Result<Tunnel, Error> {
        self.race(|carrier| self.connect_via(carrier)).await
    }

    /// Like [`Client::connect`], but a carrier is through only once the
    /// relay accepted the tunnel, so a refused carrier (e.g. a middlebox
    /// answering in its place) also hands over to the next.
    pub async fn connect_established(&self) -> Result<Tunnel, Error> {
        self.race(|carrier| async move {
            let mut t = self.connect_via(carrier).await?;
            match t.established().await {
                Ok(()) => Ok(t),
                Err(e) => {
                    self.refused(carrier);
                    Err(Error::dial(carrier.name(), e))
                }
            }
        })
        .await
    }

    /// Runs `attempt` for each carrier in turn, each after its head start
    /// (or once those ahead of it failed), and returns the first tunnel;
    /// the attempts still under way are dropped.
    async fn race<'a, F, Fut>(&'a self, attempt: F) -> Result<Tunnel, Error>
    where
        F: Fn(Carrier) -> Fut,
        Fut: Future<Output = Result<Tunnel, Error>> + 'a,
    {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let order = self.carriers();
        let since = Instant::now();
        let mut attempts: FuturesUnordered<_> = order
            .iter()
            .enumerate()
            .map(|(i, &carrier)| {
                let run = attempt(carrier);
                let ahead = &order[..i];
                async move {
                    self.wait_behind(ahead, since).await;
                    (carrier, run.await)
                }
            })
            .collect();
        let mut errors = Vec::new();
        while let Some((carrier, result)) = attempts.next().await {
            match result {
                Ok(t) => return Ok(t),
                Err(e) => {
                    debug!("{carrier} carrier failed: {e}");
                    errors.push(e);
                }
            }
        }
        Err(Error::AllCarriersFailed(errors))
    }

    /// Opens a tunnel over one carrier (and remembers whether it connected,
    /// for [`Client::carriers`]).
    pub async fn connect_via(&self, carrier: Carrier) -> Result<Tunnel, Error> {
        let (host, port) = self.target()?;
        let mut unfinished = Unfinished {
            client: self,
            carrier,
            started: Instant::now(),
            finished: false,
        };
        let fut = async {
            match carrier {
                Carrier::H2 => self.connect_h2(&host, port).await,
                Carrier::H3 => self.connect_h3(&host, port).await,
                Carrier::Ws => self.connect_ws(&host, port).await,
            }
        };
        let result = match tokio::time::timeout(self.connect_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::dial(carrier.name(), "timed out")),
        };
        unfinished.finished = true;
        self.failures.record(carrier, result.is_ok());
        result
    }

    /// Where the relay is dialled: its `ip=` if the line has one, else its
    /// host (a name is resolved by the [`Sockets`]).
    fn target(&self) -> Result<(String, u16), Error> {
        let host = match self.line.ip {
            Some(ip) => ip.to_string(),
            None => self.line.host.clone(),
        };
        Ok((host, self.line.port))
    }

    fn server_name(&self) -> Result<ServerName<'static>, Error> {
        ServerName::try_from(self.line.host.clone()).map_err(|e| Error::dial("any", e))
    }

    /// Headers a current Chrome sends, in its order, for `dest` (`document`
    /// for a navigation, `empty` for a `fetch()`).
    fn browser_request(
        &self,
        method: Method,
        path: &str,
        dest: &str,
    ) -> Result<Request<()>, Error> {
        let authority = if self.line.port == 443 {
            self.line.host.clone()
        } else {
            format!("{}:{}", self.line.host, self.line.port)
        };
        let origin = format!("https://{authority}");
        let fetch = dest == "empty";
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{origin}{path}"))
            .body(())
            .map_err(|e| Error::dial("any", e))?;
        let h = req.headers_mut();
        let mut put = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                h.append(name, v);
            }
        };
        put(
            "sec-ch-ua",
            "\"Chromium\";v=\"142\", \"Google Chrome\";v=\"142\", \"Not_A Brand\";v=\"99\"",
        );
        put("sec-ch-ua-mobile", "?0");
        put("sec-ch-ua-platform", "\"Linux\"");
        if fetch {
            put("user-agent", USER_AGENT);
            put("content-type", "application/octet-stream");
            put("accept", "*/*");
            put("origin", &origin);
            put("sec-fetch-site", "same-origin");
            put("sec-fetch-mode", "cors");
            put("sec-fetch-dest", "empty");
            put("referer", &format!("{origin}/"));
        } else {
            put("upgrade-insecure-requests", "1");
            put("user-agent", USER_AGENT);
            put("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8");
            put("sec-fetch-site", "none");
            put("sec-fetch-mode", "navigate");
            put("sec-fetch-user", "?1");
            put("sec-fetch-dest", "document");
        }
        put("accept-encoding", "gzip, deflate, br, zstd");
        put("accept-language", "en-US,en;q=0.9");
        put("priority", if fetch { "u=1, i" } else { "u=0, i" });
        Ok(req)
    }

    /// A fresh gate message for this relay, bound to `binding`.
    fn gate_value(&self, binding: &Binding) -> String {
        let mut rng = rand::thread_rng();
        let mut ephemeral = [0u8; 32];
        rng.fill_bytes(&mut ephemeral);
        gate::build(
            &self.line.key,
            binding,
            front::unix_now(),
            ephemeral,
            &mut rng,
        )
    }

    /// The tunnel request: a streaming `fetch()` POST whose cookie carries
    /// a fresh gate message bound to this connection.
    fn tunnel_request(&self, binding: &Binding) -> Result<Request<()>, Error> {
        let gate = self.gate_value(binding);
        let mut req = self.browser_request(Method::POST, &self.line.path.clone(), "empty")?;
        let cookie = HeaderValue::from_str(&format!("{GATE_COOKIE}={gate}"))
            .map_err(|e| Error::dial("any", e))?;
        // Chrome sends cookies just before `priority`.
        let priority = req.headers_mut().remove("priority");
        req.headers_mut().append(header::COOKIE, cookie);
        if let Some(p) = priority {
            req.headers_mut().append("priority", p);
        }
        // Never indexed (HPACK): the relay's decoder would otherwise keep
        // these headers, a fresh gate among them, in its table for as long
        // as the tunnel lives — about a kilobyte per connected user, for
        // headers that are sent once per connection. Only the relay sees
        // how a request inside TLS is encoded.
        for value in req.headers_mut().values_mut() {
            value.set_sensitive(true);
        }
        Ok(req)
    }

    /// What the gate binds to: this connection, or behind a proxy (which
    /// terminates TLS, so the relay cannot see it) the time.
    fn binding(&self, exporter: [u8; EXPORTER_LEN]) -> Binding {
        if self.line.proxied {
            Binding::Proxied
        } else {
            Binding::Exporter(exporter)
        }
    }

    /// Connects TCP and TLS with `config`; the TLS exporter comes with it.
    async fn open_tls(
        &self,
        carrier: &'static str,
        config: &Arc<rustls::ClientConfig>,
        host: &str,
        port: u16,
    ) -> Result<
        (
            tokio_rustls::client::TlsStream<TcpStream>,
            [u8; EXPORTER_LEN],
        ),
        Error,
    > {
        let tcp = self
            .sockets
            .tcp(host, port)
            .await
            .map_err(|e| Error::dial(carrier, e))?;
        let _ = tcp.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let tls = connector
            .connect(self.server_name()?, tcp)
            .await
            .map_err(|e| Error::dial(carrier, format!("TLS: {e}")))?;
        let mut exporter = [0u8; EXPORTER_LEN];
        tls.get_ref()
            .1
            .export_keying_material(&mut exporter, EXPORTER_LABEL, None)
            .map_err(|e| Error::dial(carrier, e))?;
        Ok((tls, exporter))
    }

    /// Opens an HTTP/2 connection to the relay. With `drive` and on a
    /// single-threaded runtime the connection comes back to be driven by
    /// the tunnel that will use it; otherwise a task of its own serves it.
    async fn open_h2(
        &self,
        host: &str,
        port: u16,
        drive: bool,
    ) -> Result<(h2::client::SendRequest<Bytes>, Binding, Option<ClientConn>), Error> {
        const C: &str = "h2";
        let (tls, exporter) = self.open_tls(C, &self.tcp_tls, host, port).await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(Error::dial(C, "server did not offer HTTP/2"));
        }
        let (tls, waiting) = tunnel::Watched::new(tls);
        let (send_request, connection) = h2::client::Builder::new()
            .header_table_size(CHROME_HEADER_TABLE)
            .enable_push(false)
            .initial_window_size(CHROME_STREAM_WINDOW)
            .initial_connection_window_size(CHROME_CONNECTION_WINDOW)
            .max_header_list_size(CHROME_MAX_HEADER_LIST)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| Error::dial(C, e))?;
        let mut conn = ClientConn {
            conn: connection,
            waiting,
        };
        let single_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        let conn = if drive && single_threaded {
            Some(conn)
        } else {
            tokio::spawn(std::future::poll_fn(move |cx| {
                tunnel::Drive::poll_drive(&mut conn, cx)
            }));
            None
        };
        let send_request = send_request.ready().await.map_err(|e| Error::dial(C, e))?;
        Ok((send_request, self.binding(exporter), conn))
    }

    async fn open_h3(&self, host: &str, port: u16) -> Result<(H3Handle, Binding), Error> {
        const C: &str = "h3";
        let (endpoint, addr) = match &self.quic {
            Some(shared) => {
                let addr = self
                    .sockets
                    .udp_addr(host, port)
                    .await
                    .map_err(|e| Error::dial(C, e))?;
                (shared.clone(), addr)
            }
            None => {
                let (socket, addr) = self
                    .sockets
                    .udp(host, port)
                    .await
                    .map_err(|e| Error::dial(C, e))?;
                let endpoint = quinn::Endpoint::new(
                    quinn::EndpointConfig::default(),
                    None,
                    socket,
                    Arc::new(quinn::TokioRuntime),
                )
                .map_err(|e| Error::dial(C, e))?;
                (endpoint, addr)
            }
        };
        let mut cfg = quinn::ClientConfig::new(self.quic_tls.clone());
        cfg.transport_config(Arc::new(front::quic_transport(&self.limits)));
        let conn = endpoint
            .connect_with(cfg, addr, &self.line.host)
            .map_err(|e| Error::dial(C, e))?
            .await
            .map_err(|e| Error::dial(C, format!("QUIC: {e}")))?;
        let mut exporter = [0u8; EXPORTER_LEN];
        conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
            .map_err(|_| Error::dial(C, "no TLS exporter"))?;
        let (mut driver, send_request) = h3::client::builder()
            .build::<_, _, Bytes>(h3_quinn::Connection::new(conn))
            .await
            .map_err(|e| Error::dial(C, e))?;
        tokio::spawn(async move {
            let e = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
            debug!("h3 client connection ended: {e}");
        });
        Ok((
            H3Handle {
                endpoint,
                send_request,
            },
            self.binding(exporter),
        ))
    }

    async fn connect_h2(&self, host: &str, port: u16) -> Result<Tunnel, Error> {
        const C: &str = "h2";
        let (mut send_request, binding, conn) = self.open_h2(host, port, true).await?;
        let req = self.tunnel_request(&binding)?;
        let (response, send) = send_request
            .send_request(req, false)
            .map_err(|e| Error::dial(C, e))?;
        let recv = tunnel::awaiting(async move {
            let resp = response
                .await
                .map_err(|e| io::Error::new(io::ErrorKind::ConnectionAborted, e))?;
            check_status(C, &resp)?;
            Ok(resp.into_body())
        });
        let tunnel = Tunnel::h2(send, recv);
        Ok(match conn {
            Some(conn) => tunnel.driving(Box::new(conn)),
            None => tunnel,
        })
    }

    async fn connect_h3(&self, host: &str, port: u16) -> Result<Tunnel, Error> {
        const C: &str = "h3";
        let (mut handle, binding) = self.open_h3(host, port).await?;
        let req = self.tunnel_request(&binding)?;
        let stream = handle
            .send_request
            .send_request(req)
            .await
            .map_err(|e| Error::dial(C, e))?;
        let (send, mut recv) = stream.split();
        let recv = tunnel::awaiting(async move {
            let resp = recv.recv_response().await.map_err(tunnel::h3_io_error)?;
            check_status(C, &resp)?;
            Ok(Box::new(recv) as Box<dyn tunnel::H3Recv>)
        });
        // The endpoint and request handle must outlive the stream.
        let keep: Box<dyn Send + Sync> = Box::new(handle);
        Ok(Tunnel::h3(Box::new(send), recv, Some(keep)))
    }

    /// The WebSocket carrier: HTTP/1.1 on TLS, a `GET` of the tunnel path
    /// with Chrome's WebSocket handshake headers and the gate in a cookie.
    /// The tunnel starts after the relay's `101`, so it costs one more round
    /// trip than the other carriers; in exchange it passes any proxy or CDN
    /// that carries WebSockets.
    async fn connect_ws(&self, host: &str, port: u16) -> Result<Tunnel, Error> {
        const C: &str = "ws";
        let (mut tls, exporter) = self.open_tls(C, &self.ws_tls, host, port).await?;
        let mut nonce = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce);
        let key = base64::engine::general_purpose::STANDARD.encode(nonce);
        let request = self.websocket_request(&self.gate_value(&self.binding(exporter)), &key);
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| Error::dial(C, e))?;
        tls.flush().await.map_err(|e| Error::dial(C, e))?;
        let (head, rest) = read_head(&mut tls).await.map_err(|e| Error::dial(C, e))?;
        let status = parse_status(&head).ok_or_else(|| Error::dial(C, "not an HTTP answer"))?;
        let accept = crate::h1_server::websocket_accept(key.as_bytes());
        let accepted = status == 101
            && header_value(&head, "sec-websocket-accept").is_some_and(|v| v == accept);
        if !accepted {
            return Err(Error::NotARelay { carrier: C, status });
        }
        Ok(Tunnel::raw(Carrier::Ws, Box::new(tls), rest, None))
    }

    /// Chrome's WebSocket opening handshake, in its header order.
    fn websocket_request(&self, gate: &str, key: &str) -> String {
        let authority = if self.line.port == 443 {
            self.line.host.clone()
        } else {
            format!("{}:{}", self.line.host, self.line.port)
        };
        format!(
            "GET {path} HTTP/1.1\r\n\
             Host: {authority}\r\n\
             Connection: Upgrade\r\n\
             Pragma: no-cache\r\n\
             Cache-Control: no-cache\r\n\
             User-Agent: {USER_AGENT}\r\n\
             Upgrade: websocket\r\n\
             Origin: https://{authority}\r\n\
             Sec-WebSocket-Version: 13\r\n\
             Accept-Encoding: gzip, deflate, br, zstd\r\n\
             Accept-Language: en-US,en;q=0.9\r\n\
             Cookie: {GATE_COOKIE}={gate}\r\n\
             Sec-WebSocket-Key: {key}\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
            path = self.line.path,
        )
    }

    /// Fetches a page of the relay's site the way a browser navigation
    /// would, over HTTP/2 or HTTP/3; returns the whole response.
    pub async fn fetch(
        &self,
        carrier: Carrier,
        method: Method,
        path: &str,
    ) -> Result<Response<Bytes>, Error> {
        let (host, port) = self.target()?;
        let mut req = self.browser_request(method, path, "document")?;
        match carrier {
            Carrier::H2 => {
                let (mut send_request, _, _) = self.open_h2(&host, port, false).await?;
                *req.version_mut() = http::Version::HTTP_2;
                let (response, _) = send_request
                    .send_request(req, true)
                    .map_err(|e| Error::dial("h2", e))?;
                let resp = response.await.map_err(|e| Error::dial("h2", e))?;
                let (parts, mut body) = resp.into_parts();
                let mut out = Vec::new();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.map_err(|e| Error::dial("h2", e))?;
                    let _ = body.flow_control().release_capacity(chunk.len());
                    out.extend_from_slice(&chunk);
                }
                Ok(Response::from_parts(parts, Bytes::from(out)))
            }
            Carrier::Ws => Err(Error::dial(
                "ws",
                "pages are fetched over h2 or h3; ws carries tunnels only",
            )),
            Carrier::H3 => {
                let (mut handle, _) = self.open_h3(&host, port).await?;
                let mut stream = handle
                    .send_request
                    .send_request(req)
                    .await
                    .map_err(|e| Error::dial("h3", e))?;
                // A server may answer before it reads the end of the request
                // and stop it (RFC 9114 §4.1); that must not lose the
                // response, so a failed finish is only a note.
                if let Err(e) = stream.finish().await {
                    debug!("h3 request end not sent: {e}");
                }
                let resp = stream
                    .recv_response()
                    .await
                    .map_err(|e| Error::dial("h3", e))?;
                let mut out = Vec::new();
                while let Some(mut chunk) =
                    stream.recv_data().await.map_err(|e| Error::dial("h3", e))?
                {
                    use bytes::Buf;
                    out.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
                }
                let (parts, ()) = resp.into_parts();
                Ok(Response::from_parts(parts, Bytes::from(out)))
            }
        }
    }
}

/// An HTTP/3 client connection's handles; the endpoint must outlive its streams.
struct H3Handle {
    #[allow(dead_code)]
    endpoint: quinn::Endpoint,
    send_request: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
}

/// Largest HTTP/1.1 response head the WebSocket carrier reads.
const MAX_HEAD: usize = 16 * 1024;

/// Reads an HTTP/1.1 response head; returns it and the bytes after it.
async fn read_head<S: AsyncRead + Unpin>(io: &mut S) -> io::Result<(String, Bytes)> {
    let mut buf = bytes::BytesMut::with_capacity(1024);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buf.split_to(end + 4);
            return Ok((String::from_utf8_lossy(&head).into_owned(), buf.freeze()));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head too large",
            ));
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// The status code of an HTTP/1.x status line.
fn parse_status(head: &str) -> Option<u16> {
    let mut parts = head.lines().next()?.split(' ');
    parts.next()?.strip_prefix("HTTP/1.")?;
    parts.next()?.parse().ok()
}

/// A header's value in an HTTP/1.x head (first occurrence, trimmed).
fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn check_status<B>(carrier: &'static str, resp: &Response<B>) -> io::Result<()> {
    let status = resp.status();
    if status == StatusCode::OK
        && resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes())
            == Some(b"application/octet-stream")
    {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            Error::NotARelay {
                carrier,
                status: status.as_u16(),
            },
        ))
    }
}

/// A client's HTTP/2 connection, for the tunnel on it to drive.
///
/// On a single-threaded runtime (a user's node) a task of its own for the
/// connection buys no parallelism, only a hand-off between tasks on every
/// read and write; the tunnel's own polls drive it instead, as at the relay.
/// On a runtime with several workers the connection keeps its own task, so
/// a bulk transfer's TLS work runs beside its user.
struct ClientConn {
    conn:
        h2::client::Connection<tunnel::Watched<tokio_rustls::client::TlsStream<TcpStream>>, Bytes>,
    waiting: Arc<tunnel::Waiting>,
}

impl tunnel::Drive for ClientConn {
    fn poll_drive(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        Pin::new(&mut self.conn).poll(cx).map(|r| {
            if let Err(e) = r {
                debug!("h2 client connection ended: {e}");
            }
        })
    }

    fn backlogged(&self) -> bool {
        self.waiting.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_a_row(f: &CarrierFailures, carrier: Carrier) -> u32 {
        let last = f.last.lock().expect("lock");
        last.iter()
            .find(|x| x.carrier == carrier)
            .map_or(0, |x| x.in_a_row)
    }

    #[test]
    fn each_failure_in_a_row_doubles_the_wait_and_a_success_ends_it() {
        let f = CarrierFailures::new(FAILED_CARRIER_WAIT);
        let minutes = |n: u32| Duration::from_secs(u64::from(n) * 60);
        assert_eq!(f.wait_after(1), minutes(5));
        assert_eq!(f.wait_after(2), minutes(10));
        assert_eq!(f.wait_after(3), minutes(20));
        assert_eq!(f.wait_after(4), minutes(40));
        assert_eq!(f.wait_after(5), minutes(60), "capped at an hour");
        assert_eq!(f.wait_after(u32::MAX), minutes(60));

        f.record(Carrier::H3, false);
        f.record(Carrier::H3, false);
        f.record(Carrier::H2, false);
        assert_eq!(in_a_row(&f, Carrier::H3), 2);
        assert_eq!(in_a_row(&f, Carrier::H2), 1);
        assert!(f.recent(Carrier::H3).is_some());
        // A success ends the run: the next failure starts again at 5 minutes.
        f.record(Carrier::H3, true);
        assert!(f.recent(Carrier::H3).is_none());
        assert_eq!(in_a_row(&f, Carrier::H3), 0);
        f.record(Carrier::H3, false);
        assert_eq!(in_a_row(&f, Carrier::H3), 1);
        assert_eq!(in_a_row(&f, Carrier::H2), 1, "each carrier on its own");
    }

    #[test]
    fn a_failure_after_the_wait_still_counts_in_the_row() {
        let f = CarrierFailures::new(Duration::ZERO);
        f.record(Carrier::H3, false);
        assert!(
            f.recent(Carrier::H3).is_none(),
            "a zero wait is over at once"
        );
        f.record(Carrier::H3, false);
        assert_eq!(in_a_row(&f, Carrier::H3), 2);
    }
}
