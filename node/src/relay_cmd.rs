//! `burrow relay` and `burrow relay address`.
//!
//! The relay keeps only its own material in `DATA_DIR/relay/`: the gate key,
//! a self-signed certificate if it made one, and `relay.toml` with what
//! `burrow relay address` needs. Nothing about users is ever written there.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use burrow_firewall::{
    Audit, Dialer, Entry, EntrySource, Host, Policy, Proto, ResolverList, Target,
};
use burrow_obfs::relay_line::validate_path;
use burrow_obfs::{
    Backend, BackendConfig, Carrier, CertPin, Certificates, Error as ObfsError, Front, FrontConfig,
    FrontStats, Gate, GateSecret, Identity, Limits, Origin, RelayLine, Site, Source, Tunnels,
    Upstream,
};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::cli::RelayArgs;
use crate::datadir;
use crate::guarded::GuardedSockets;
use crate::p2p::transport::relay_node;
use crate::relay_config::{ProxyChoice, RawConfig, RelayConfig, SiteChoice, TlsChoice};
use burrow_relay::{metrics, Admission, RelayStats};

const STATE_FILE: &str = "relay.toml";
const GATE_KEY_FILE: &str = "gate.key";
const NODE_KEY_FILE: &str = "node.key";
const SELF_SIGNED_CERT: &str = "self-signed.crt";
const SELF_SIGNED_KEY: &str = "self-signed.key";

/// What `burrow relay` last ran with; enough to print the relay line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RelayState {
    /// The name users' TLS checks against.
    host: String,
    /// The port actually bound.
    port: u16,
    /// The tunnel path.
    path: String,
    /// Listen address, to suggest `ip=` when it is a specific address.
    listen: SocketAddr,
    /// The self-signed certificate's name, when the relay made one.
    self_signed: Option<String>,
    /// Behind a web server: what the relay line says about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    proxy: Option<ProxyState>,
}

/// A relay behind a web server, as `burrow relay address` needs it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct ProxyState {
    /// Where the web server passes the tunnel path (for the operator).
    backend: String,
    /// Carriers the web server carries, in the line's order.
    carriers: Vec<String>,
    /// Pin of the web server's self-signed certificate, base64url.
    pin: Option<String>,
}

fn relay_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("relay")
}

fn load_state(dir: &Path) -> Result<Option<RelayState>> {
    let path = dir.join(STATE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = String::from_utf8(datadir::read(&path)?).context("relay.toml is not UTF-8")?;
    let state = toml::from_str(&text).with_context(|| format!("{} is damaged", path.display()))?;
    Ok(Some(state))
}

fn save_state(dir: &Path, state: &RelayState) -> Result<()> {
    let text = toml::to_string(state).context("cannot encode relay state")?;
    datadir::write_private(&dir.join(STATE_FILE), text.as_bytes())
}

/// The relay's gate key: loaded, or created on first run.
fn gate_secret(dir: &Path) -> Result<GateSecret> {
    let path = dir.join(GATE_KEY_FILE);
    if path.exists() {
        let text = datadir::read(&path)?;
        let raw = URL_SAFE_NO_PAD
            .decode(text.trim_ascii())
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .with_context(|| {
                format!(
                    "{} is damaged (expected 32 bytes, base64url)",
                    path.display()
                )
            })?;
        return Ok(GateSecret::from_bytes(raw));
    }
    let secret = GateSecret::generate(&mut rand::rngs::OsRng);
    let mut text = URL_SAFE_NO_PAD.encode(secret.to_bytes());
    text.push('\n');
    datadir::write_private(&path, text.as_bytes())?;
    info!("created a new relay key in {}", path.display());
    Ok(secret)
}

/// The relay's libp2p identity (its node id in the relay line): loaded, or
/// created on first run.
fn node_key(dir: &Path) -> Result<libp2p::identity::Keypair> {
    let path = dir.join(NODE_KEY_FILE);
    if path.exists() {
        let text = datadir::read(&path)?;
        return URL_SAFE_NO_PAD
            .decode(text.trim_ascii())
            .ok()
            .and_then(|raw| libp2p::identity::Keypair::from_protobuf_encoding(&raw).ok())
            .with_context(|| format!("{} is damaged", path.display()));
    }
    let keypair = libp2p::identity::Keypair::generate_ed25519();
    let raw = keypair
        .to_protobuf_encoding()
        .context("cannot encode the node key")?;
    let mut text = URL_SAFE_NO_PAD.encode(raw);
    text.push('\n');
    datadir::write_private(&path, text.as_bytes())?;
    Ok(keypair)
}

/// A self-signed certificate for `name`: reused while the name stays the same.
fn self_signed(dir: &Path, name: &str, previous: Option<&RelayState>) -> Result<Identity> {
    let cert = dir.join(SELF_SIGNED_CERT);
    let key = dir.join(SELF_SIGNED_KEY);
    let same_name = previous.and_then(|s| s.self_signed.as_deref()) == Some(name);
    if same_name && cert.exists() && key.exists() {
        return Ok(Identity::from_pem_files(&cert, &key)?);
    }
    let (identity, cert_pem, key_pem) = Identity::self_signed(name)?;
    datadir::write_private(&key, key_pem.as_bytes())?;
    datadir::write_private(&cert, cert_pem.as_bytes())?;
    info!("created a self-signed certificate for {name}");
    Ok(identity)
}

/// A plausible, per-relay tunnel path.
pub(crate) fn random_path() -> String {
    const PREFIXES: [&str; 5] = [
        "/api/v1/sync",
        "/api/v2/events",
        "/assets/upload",
        "/cdn/stream",
        "/static/feed",
    ];
    let mut rng = rand::thread_rng();
    let prefix = PREFIXES[rng.gen_range(0..PREFIXES.len())];
    format!("{prefix}/{:08x}", rng.gen::<u32>())
}

/// The relay line for the stored state.
fn line_for(
    state: &RelayState,
    key: &GateSecret,
    node: &libp2p::PeerId,
    pin: Option<CertPin>,
    ip: Option<IpAddr>,
) -> RelayLine {
    let mut line = RelayLine {
        host: state.host.clone(),
        port: state.port,
        path: state.path.clone(),
        key: key.public(),
        carriers: vec![Carrier::H2, Carrier::H3],
        pin,
        ip,
        id: Some(node.to_base58()),
        proxied: false,
    };
    match &state.proxy {
        // Behind a web server the relay does not know the public address;
        // only `--ip` adds one.
        Some(p) => {
            line.proxied = true;
            line.carriers = p.carriers.iter().filter_map(|c| c.parse().ok()).collect();
            line.pin = p
                .pin
                .as_deref()
                .and_then(|b| URL_SAFE_NO_PAD.decode(b).ok())
                .and_then(|raw| <[u8; 32]>::try_from(raw).ok())
                .map(CertPin);
        }
        None => {
            line.ip = ip.or_else(|| {
                let l = state.listen.ip();
                (!l.is_unspecified() && state.host.parse::<IpAddr>().is_err()).then_some(l)
            });
        }
    }
    line
}

fn pin_of(dir: &Path, state: &RelayState) -> Result<Option<CertPin>> {
    if state.self_signed.is_none() || state.proxy.is_some() {
        return Ok(None);
    }
    let identity =
        Identity::from_pem_files(&dir.join(SELF_SIGNED_CERT), &dir.join(SELF_SIGNED_KEY))?;
    Ok(identity.pin())
}

/// `burrow relay address`.
pub fn print_address(data_dir: &Path, ip: Option<IpAddr>, qr: bool) -> Result<()> {
    let dir = relay_dir(data_dir);
    let Some(state) = load_state(&dir)? else {
        bail!(
            "no relay has run with data directory {} yet; start `burrow relay` first",
            data_dir.display()
        );
    };
    let key = gate_secret(&dir)?;
    let node = node_key(&dir)?.public().to_peer_id();
    let pin = pin_of(&dir, &state)?;
    let line = line_for(&state, &key, &node, pin, ip);
    println!("{line}");
    if qr {
        print!("\n{}", crate::qr::render(&line.to_string())?);
    }
    Ok(())
}

/// The reverse proxy for `--upstream URL`. The relay's own firewall allows
/// exactly that origin and the resolver (the local network only if the
/// origin is there or the operator allowed it), so the proxy can reach
/// nothing else; a name is resolved over the encrypted resolver.
fn upstream(url: &str, spec: &ResolverList, allow_local: bool) -> Result<Upstream> {
    let origin = Origin::parse(url).map_err(|e| anyhow::anyhow!("--upstream: {e}"))?;
    let host = Host::parse(origin.dial_host()).map_err(|e| anyhow::anyhow!("--upstream: {e}"))?;
    let local =
        allow_local || matches!(host, Host::Ip(ip) if burrow_firewall::policy::is_local(ip));
    let mut entries = vec![Entry::new(
        Target::new(host.clone(), origin.port(), Proto::Tcp),
        EntrySource::RelayUpstream,
        format!("--upstream {url}"),
    )];
    let dialer = Dialer::new(Policy::default(), Audit::default());
    if matches!(host, Host::Name(_)) {
        entries.extend(spec.entries()?);
        crate::guarded::set_resolver(&dialer, spec)?;
    }
    dialer.set_policy(Policy::new(entries, local));
    Ok(Upstream::new(
        origin,
        Arc::new(GuardedSockets::new(dialer, "relay-upstream")),
    ))
}

/// The certificate, the name users reach the relay by, and the self-signed
/// name when the relay made its own certificate.
fn load_identity(
    dir: &Path,
    tls: &TlsChoice,
    previous: Option<&RelayState>,
) -> Result<(Identity, String, Option<String>)> {
    Ok(match tls {
        TlsChoice::Files { cert, key, domain } => {
            (Identity::from_pem_files(cert, key)?, domain.clone(), None)
        }
        TlsChoice::SelfSigned(name) => (
            self_signed(dir, name, previous)?,
            name.clone(),
            Some(name.clone()),
        ),
    })
}

/// The site the front serves.
fn load_site(cfg: &RelayConfig) -> Result<Source> {
    Ok(match &cfg.site {
        SiteChoice::Dir(dir) => {
            if !dir.is_dir() {
                bail!("--site {}: not a directory", dir.display());
            }
            Source::Dir(dir.clone())
        }
        SiteChoice::Upstream(url) => {
            Source::Upstream(upstream(url, &cfg.resolver, cfg.allow_local_networks)?)
        }
        SiteChoice::Builtin => Source::Builtin,
    })
}

/// `burrow relay check-config FILE`: everything `burrow relay --config
/// FILE` would refuse, found without binding a port or writing a file.
pub fn check_config(file: &Path) -> Result<()> {
    let cfg = RelayConfig::check(RawConfig::load(file)?)?;
    if let TlsChoice::Files { cert, key, .. } = &cfg.tls {
        Identity::from_pem_files(cert, key)?;
    }
    if let SiteChoice::Dir(dir) = &cfg.site {
        if !dir.is_dir() {
            bail!("site.dir {}: not a directory", dir.display());
        }
    }
    cfg.resolver.entries()?;
    if let Some(pin) = cfg.proxy.as_ref().and_then(|p| p.pin_cert.as_ref()) {
        CertPin::of_pem_file(pin)?;
    }
    println!("{}: OK", file.display());
    match &cfg.proxy {
        None => {
            println!("  listen      {} (TCP and UDP)", cfg.listen);
            match &cfg.tls {
                TlsChoice::Files { cert, domain, .. } => {
                    println!("  certificate {} for {domain}", cert.display())
                }
                TlsChoice::SelfSigned(n) => println!("  certificate self-signed for {n}"),
            }
        }
        Some(p) => {
            let carriers: Vec<&str> = p.carriers.iter().map(|c| c.name()).collect();
            println!(
                "  behind      a web server at {}:{} passing {} to {}",
                p.host,
                p.port,
                carriers.join(" and "),
                p.backend
            );
            println!(
                "  gate        bound to the time: clocks within {} s, replays refused",
                p.replay.skew_secs
            );
        }
    }
    match &cfg.site {
        SiteChoice::Builtin => println!("  site        the built-in site"),
        SiteChoice::Dir(d) => println!("  site        {}", d.display()),
        SiteChoice::Upstream(u) => println!("  site        reverse proxy to {u}"),
    }
    match &cfg.allow_users {
        None => println!("  users       anyone with the relay line"),
        Some(list) => println!("  users       {} listed", list.len()),
    }
    let l = &cfg.limits;
    println!(
        "  mailbox     {} messages per user, {} MiB in all",
        l.mailbox.per_recipient,
        l.mailbox.total_bytes >> 20
    );
    println!(
        "  limits      {} connections, {} reservations, {} circuits ({} per user)",
        cfg.max_connections, l.max_reservations, l.max_circuits, l.max_circuits_per_peer
    );
    println!("  resolver    {}", cfg.resolver);
    match cfg.metrics {
        Some(a) => println!("  metrics     http://{a}/metrics"),
        None => println!("  metrics     off"),
    }
    println!(
        "  on SIGTERM  new connections refused, open circuits get up to {} s",
        cfg.drain.as_secs()
    );
    Ok(())
}

/// Descriptors the relay keeps for itself beyond one per connection: its
/// UDP socket, listeners, site files being served, the metrics endpoint.
const OWN_FILES: u64 = 256;

/// Raises the open-files soft limit to the hard limit (as nginx's
/// `worker_rlimit_nofile` does), since every connection holds a descriptor,
/// and says so when even the hard limit leaves `max_connections` short.
fn raise_open_files(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            warn!("could not raise the open-files limit: {e}");
        }
    }
    let Some(have) = getrlimit(Resource::Nofile).current else {
        return;
    };
    let need = max_connections as u64 + OWN_FILES;
    if have < need {
        warn!(
            "the open-files limit ({have}) holds about {} connections, fewer than limits.max_connections \
             ({max_connections}); beyond that, accept backs off and new users wait: raise it \
             (LimitNOFILE= in the systemd unit, ulimit -n) to at least {need}",
            have.saturating_sub(OWN_FILES)
        );
    }
}

/// `burrow relay`: serves until SIGINT or SIGTERM.
pub async fn run(args: RelayArgs) -> Result<()> {
    let cfg = RelayConfig::from_args(&args)?;
    raise_open_files(cfg.max_connections);
    let data_dir = datadir::resolve(cfg.data_dir.clone())?;
    let dir = relay_dir(&data_dir);
    datadir::ensure_dir(&dir)?;
    let previous = load_state(&dir)?;
    let secret = gate_secret(&dir)?;
    let keypair = node_key(&dir)?;
    let admission = match &cfg.allow_users {
        None => Admission::Open,
        Some(list) => Admission::Listed(list.iter().copied().collect()),
    };
    let path = match (&cfg.path, &previous) {
        (Some(p), _) => p.clone(),
        (None, Some(prev)) => prev.path.clone(),
        (None, None) => random_path(),
    };
    validate_path(&path).map_err(|e| anyhow::anyhow!("--path: {e}"))?;
    let source = load_site(&cfg)?;
    if let Some(proxy) = &cfg.proxy {
        let relay = RelayParts {
            cfg: &cfg,
            dir: &dir,
            secret,
            keypair,
            admission,
            path,
            source,
        };
        return run_behind_proxy(relay, proxy).await;
    }
    let (identity, host, self_signed_name) = load_identity(&dir, &cfg.tls, previous.as_ref())?;

    let config = FrontConfig {
        identity: identity.clone(),
        gate: Gate::new(secret.clone()),
        tunnel_path: path.clone(),
        // Port 0 is filled in with the bound port by the front.
        site: Site::new(source.clone(), cfg.listen.port(), true),
        limits: front_limits(&cfg),
    };
    let (front, tunnels) = bind_front(cfg.listen, config).await?;
    let bound = front.local_addr();
    let reload = tokio::spawn(reload_on_hangup(cfg.tls.clone(), front.certificates()));

    let state = RelayState {
        host,
        port: bound.port(),
        path,
        listen: bound,
        self_signed: self_signed_name,
        proxy: None,
    };
    save_state(&dir, &state)?;
    let line = line_for(
        &state,
        &secret,
        &keypair.public().to_peer_id(),
        identity.pin(),
        None,
    );
    let node = relay_node(tunnels, &keypair, &line, &cfg.limits, &admission)?;
    info!(
        "serving {} on {bound} (TCP: TLS, HTTP/1.1 and HTTP/2; UDP: QUIC, HTTP/3)",
        match &source {
            Source::Builtin => "the built-in site".to_string(),
            Source::Dir(d) => d.display().to_string(),
            Source::Upstream(u) => format!(
                "the origin at {}",
                format_args!("{}:{}", u.origin().dial_host(), u.origin().port())
            ),
        }
    );
    // The line goes to stdout so scripts can read it; logs go to stderr.
    println!("{line}");

    let phases = Phases::new();
    let relay_stats = node.stats();
    let metrics = start_metrics(&cfg, relay_stats.clone(), front.stats(), &phases).await?;
    let server = tokio::spawn(front.serve(phases.accepting(), phases.closing()));
    let relay = tokio::spawn(node.run(phases.closing()));
    wait_for_signal().await;
    phases.drain(&relay_stats, cfg.drain).await;
    reload.abort();
    let _ = server.await;
    let _ = relay.await;
    if let Some(m) = metrics {
        let _ = m.await;
    }
    Ok(())
}

/// Binds a front on `addr` (TCP and UDP), with the usual causes of
/// failure said plainly.
pub(crate) async fn bind_front(addr: SocketAddr, config: FrontConfig) -> Result<(Front, Tunnels)> {
    match Front::bind(addr, config).await {
        Ok(f) => Ok(f),
        Err(ObfsError::Bind {
            addr,
            proto,
            source,
        }) if source.kind() == std::io::ErrorKind::AddrInUse => {
            bail!("{addr} ({proto}) is already in use: another server is listening there; pick another --listen");
        }
        Err(ObfsError::Bind { addr, source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            bail!("not allowed to listen on {addr}: ports below 1024 need root or CAP_NET_BIND_SERVICE");
        }
        Err(e) => Err(e.into()),
    }
}

/// A relay's shutdown in two steps: stop accepting (SIGTERM), then close
/// what is still open (circuits ended, the drain timed out, or a second
/// signal).
struct Phases {
    stop_accepting: watch::Sender<bool>,
    close: watch::Sender<bool>,
}

impl Phases {
    fn new() -> Self {
        Self {
            stop_accepting: watch::channel(false).0,
            close: watch::channel(false).0,
        }
    }

    fn accepting(&self) -> watch::Receiver<bool> {
        self.stop_accepting.subscribe()
    }

    fn closing(&self) -> watch::Receiver<bool> {
        self.close.subscribe()
    }

    /// Refuses new connections at once, waits up to `timeout` for open
    /// circuits (conversations in progress) to end, then closes the rest.
    async fn drain(&self, stats: &Arc<Mutex<RelayStats>>, timeout: Duration) {
        let _ = self.stop_accepting.send(true);
        let circuits = || stats.lock().map(|s| s.circuits).unwrap_or(0);
        if circuits() > 0 && !timeout.is_zero() {
            info!(
                "draining: new connections are refused; waiting up to {} s for {} open circuit(s) (a second signal stops at once)",
                timeout.as_secs(),
                circuits()
            );
            let deadline = tokio::time::Instant::now() + timeout;
            let settled = async {
                while circuits() > 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            tokio::select! {
                _ = settled => info!("every circuit ended"),
                _ = tokio::time::sleep_until(deadline) => {
                    info!("drain timed out with {} circuit(s) open", circuits())
                }
                _ = wait_for_signal() => info!("second signal: stopping now"),
            }
        }
        info!("shutting down");
        let _ = self.close.send(true);
    }
}

/// Binds the metrics endpoint if one is configured (a busy address is an
/// error at start, not a silent absence) and serves it until the close.
async fn start_metrics(
    cfg: &RelayConfig,
    relay: Arc<Mutex<RelayStats>>,
    front: Arc<FrontStats>,
    phases: &Phases,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = cfg.metrics else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics {addr}: cannot listen"))?;
    info!("metrics at http://{addr}/metrics");
    let limits = metrics::LimitFigures {
        max_connections: cfg.max_connections as u64,
        max_reservations: cfg.limits.max_reservations as u64,
        max_circuits: cfg.limits.max_circuits as u64,
        mailbox_max_bytes: cfg.limits.mailbox.total_bytes as u64,
    };
    let figures = move || {
        let relay = relay.lock().map(|s| s.clone()).unwrap_or_default();
        let f = front.snapshot();
        std::future::ready(metrics::Figures {
            relay,
            front: metrics::FrontFigures {
                connections: f.connections,
                tunnels_opened: f.tunnels_opened,
                refusals: f.refusals,
                bytes_received: f.bytes_received,
                bytes_sent: f.bytes_sent,
            },
            limits: limits.clone(),
            resident_bytes: metrics::resident_bytes(),
        })
    };
    Ok(Some(tokio::spawn(metrics::serve(
        listener,
        figures,
        phases.closing(),
    ))))
}

/// The front's limits: the defaults, with the operator's connection bound.
fn front_limits(cfg: &RelayConfig) -> Limits {
    Limits {
        max_connections: cfg.max_connections,
        ..Limits::default()
    }
}

/// What both modes of `burrow relay` have loaded before they listen.
struct RelayParts<'a> {
    cfg: &'a RelayConfig,
    dir: &'a Path,
    secret: GateSecret,
    keypair: libp2p::identity::Keypair,
    admission: Admission,
    path: String,
    source: Source,
}

/// `burrow relay --behind-proxy`: the web server in front holds the
/// certificate and serves the site; the relay takes the tunnel location in
/// cleartext on its backend address.
async fn run_behind_proxy(relay: RelayParts<'_>, proxy: &ProxyChoice) -> Result<()> {
    let pin = match &proxy.pin_cert {
        Some(file) => Some(CertPin::of_pem_file(file)?),
        None => None,
    };
    let config = BackendConfig {
        gate: Gate::new(relay.secret.clone()),
        tunnel_path: relay.path.clone(),
        // Answers failed gates as the web server's site would: serve the
        // same directory (or origin) here.
        site: Site::new(relay.source.clone(), proxy.port, true),
        limits: front_limits(relay.cfg),
        replay: proxy.replay,
    };
    let (backend, tunnels) = match Backend::bind(&proxy.backend, config).await {
        Ok(b) => b,
        Err(ObfsError::BindBackend { addr, source })
            if source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            bail!("{addr} is already in use: another server is listening there; pick another --behind-proxy address");
        }
        Err(e) => return Err(e.into()),
    };
    let bound = backend.local_addr().clone();
    let state = RelayState {
        host: proxy.host.clone(),
        port: proxy.port,
        path: relay.path.clone(),
        listen: SocketAddr::from(([0, 0, 0, 0], proxy.port)),
        self_signed: None,
        proxy: Some(ProxyState {
            backend: bound.to_string(),
            carriers: proxy
                .carriers
                .iter()
                .map(|c| c.name().to_string())
                .collect(),
            pin: pin.map(|p| URL_SAFE_NO_PAD.encode(p.0)),
        }),
    };
    save_state(relay.dir, &state)?;
    let line = line_for(
        &state,
        &relay.secret,
        &relay.keypair.public().to_peer_id(),
        None,
        None,
    );
    let node = relay_node(
        tunnels,
        &relay.keypair,
        &line,
        &relay.cfg.limits,
        &relay.admission,
    )?;
    info!(
        "behind a web server: tunnels for {}{} arrive on {bound}",
        proxy.host, relay.path
    );
    println!("{line}");
    let phases = Phases::new();
    let relay_stats = node.stats();
    let metrics = start_metrics(relay.cfg, relay_stats.clone(), backend.stats(), &phases).await?;
    let server = tokio::spawn(backend.run(phases.accepting()));
    let node = tokio::spawn(node.run(phases.closing()));
    wait_for_signal().await;
    phases.drain(&relay_stats, relay.cfg.drain).await;
    let _ = server.await;
    let _ = node.await;
    if let Some(m) = metrics {
        let _ = m.await;
    }
    Ok(())
}

/// On SIGHUP, reads the certificate files again and serves them to every
/// new connection; open connections and tunnels keep theirs. A file that
/// does not load leaves the old certificate in place.
async fn reload_on_hangup(tls: TlsChoice, certificates: Arc<Certificates>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                warn!("cannot watch SIGHUP, certificates will not be reloaded: {e}");
                return;
            }
        };
        while hup.recv().await.is_some() {
            match &tls {
                TlsChoice::Files { cert, key, .. } => {
                    match Identity::from_pem_files(cert, key)
                        .and_then(|id| certificates.replace(&id))
                    {
                        Ok(()) => info!(
                            "certificate reloaded from {}; new connections get it, open ones keep theirs",
                            cert.display()
                        ),
                        Err(e) => warn!("certificate not reloaded, still serving the previous one: {e}"),
                    }
                }
                TlsChoice::SelfSigned(_) => {
                    info!("SIGHUP: the certificate is self-signed, nothing to reload")
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (tls, certificates);
        std::future::pending::<()>().await;
    }
}

pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                warn!("cannot watch SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = RelayState {
            host: "example.org".into(),
            port: 8443,
            path: "/api/v2/events/0a1b2c3d".into(),
            listen: "127.0.0.1:8443".parse().expect("addr"),
            self_signed: Some("example.org".into()),
            proxy: None,
        };
        save_state(dir.path(), &state).expect("save");
        assert_eq!(load_state(dir.path()).expect("load"), Some(state));
        std::fs::write(dir.path().join(STATE_FILE), "host = 1\nbogus = true\n").expect("write");
        let err = load_state(dir.path()).expect_err("damaged");
        assert!(format!("{err:#}").contains("damaged"), "{err:#}");
    }

    #[test]
    fn gate_key_is_created_once_and_damage_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = gate_secret(dir.path()).expect("create");
        let b = gate_secret(dir.path()).expect("load");
        assert_eq!(a.public(), b.public());
        std::fs::write(dir.path().join(GATE_KEY_FILE), "short\n").expect("write");
        assert!(gate_secret(dir.path()).is_err());
    }

    #[test]
    fn random_paths_are_valid() {
        for _ in 0..50 {
            validate_path(&random_path()).expect("valid");
        }
    }
}
