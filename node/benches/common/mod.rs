//! What the node's benchmarks share: a user whose driver answers every
//! message, and a plain rustls TLS server and client as the baseline.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use burrow_node::guarded::GuardedSockets;
use burrow_node::p2p::driver::{Driver, DriverHandle, Handler, HomeState, RelayRef};
use burrow_node::p2p::proto::{Envelope, Reply};
use burrow_node::p2p::swarm;
use burrow_node::p2p::transport::{CarrierTransport, Directory};
use burrow_obfs::tls::{client_config, Trust, ALPN_TCP};
use burrow_obfs::{Carrier, Identity, RelayLine, Sockets};
use burrow_relay::proto::MailboxItem;
use burrow_relay::RelayLimits;
use libp2p::identity::Keypair;
use libp2p::PeerId;
use rustls::pki_types::ServerName;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;

/// Accepts every message and every mailbox item; reports the home state.
pub struct Quiet(pub mpsc::UnboundedSender<HomeState>);

impl Handler for Quiet {
    fn on_envelope(&mut self, _: PeerId, _: Envelope) -> Reply {
        Reply::Received
    }
    fn on_mailbox(&mut self, items: Vec<MailboxItem>) -> Vec<u64> {
        items.iter().map(|i| i.id).collect()
    }
    fn on_home(&mut self, state: HomeState) {
        let _ = self.0.send(state);
    }
    fn accepts(&mut self, _: &PeerId) -> bool {
        true
    }
}

/// A user with a fresh key, online at `home` (holding a reservation) when
/// this returns.
pub async fn user(home: &RelayRef) -> (PeerId, DriverHandle) {
    let sockets = Arc::new(GuardedSockets::for_relay(&home.line, "bench").expect("sockets"));
    user_with(home, sockets).await
}

/// Like [`user`], dialling through `sockets`.
pub async fn user_with(home: &RelayRef, sockets: Arc<dyn Sockets>) -> (PeerId, DriverHandle) {
    let keypair = Keypair::generate_ed25519();
    let directory = Directory::default();
    // Each of these users only ever knows one relay: a two-slot routing
    // table instead of kad's 1.6 MB one, so one process holds tens of
    // thousands of them.
    let slots = std::num::NonZeroUsize::new(2).expect("non-zero");
    let swarm =
        swarm::build_with_bucket_size(&keypair, CarrierTransport::dialer(directory.clone()), slots)
            .expect("swarm");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (driver, handle) = Driver::new(swarm, directory, sockets, home.clone(), Quiet(tx));
    tokio::spawn(driver.run());
    while rx.recv().await != Some(HomeState::Online) {}
    (keypair.public().to_peer_id(), handle)
}

/// A user who also accepts direct connections on a front of its own (as
/// `burrow up --listen 127.0.0.1:0`), online at `home`; returns the line
/// of that front with the user.
pub async fn listening_user(home: &RelayRef) -> (PeerId, DriverHandle, RelayLine) {
    let keypair = Keypair::generate_ed25519();
    let user = keypair.public().to_peer_id();
    let dir = tempfile::tempdir().expect("tmp");
    let args = burrow_node::direct::DirectArgs {
        listen: "127.0.0.1:0".parse().expect("addr"),
        public: None,
    };
    let prepared = {
        let store =
            burrow_node::store::Store::open(&dir.path().join("s.db"), &[1u8; 32]).expect("store");
        burrow_node::direct::prepare(&store, &args).expect("front material")
    };
    let own = burrow_node::direct::open(prepared, &args, &user)
        .await
        .expect("front");
    let sockets = Arc::new(GuardedSockets::for_relay(&home.line, "bench").expect("sockets"));
    let directory = Directory::default();
    let transport = CarrierTransport::listening(directory.clone(), own.tunnels, Vec::new());
    let swarm = swarm::build(&keypair, transport).expect("swarm");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let listen = burrow_node::p2p::transport::relay_addrs(&own.line)
        .into_iter()
        .next()
        .expect("an address");
    let (driver, handle) = Driver::new(swarm, directory, sockets, home.clone(), Quiet(tx));
    tokio::spawn(driver.listen_directly(listen).run());
    let (_stop, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _keep = (_stop, dir);
        own.front.serve(stop.clone(), stop).await;
    });
    while rx.recv().await != Some(HomeState::Online) {}
    (user, handle, own.line)
}

/// A user online at `home` who may also dial `fronts` (contacts' own).
pub async fn user_dialing(home: &RelayRef, fronts: &[&RelayLine]) -> (PeerId, DriverHandle) {
    let mut lines = vec![&home.line];
    lines.extend_from_slice(fronts);
    let sockets = Arc::new(GuardedSockets::for_relays(&lines, "bench").expect("sockets"));
    user_with(home, sockets).await
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A plain rustls TLS 1.3 server on loopback; each accepted stream goes to
/// `serve`.
pub struct TlsServer {
    pub addr: SocketAddr,
    pin: burrow_obfs::tls::CertPin,
}

impl TlsServer {
    pub async fn start<F, Fut>(serve: F) -> Self
    where
        F: Fn(tokio_rustls::server::TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (identity, _, _) = Identity::self_signed("bench.example").expect("cert");
        let pin = identity.pin().expect("pin");
        let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config_tcp().expect("tls"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let serve = Arc::new(serve);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let serve = serve.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    if let Ok(s) = acceptor.accept(tcp).await {
                        serve(s).await;
                    }
                });
            }
        });
        Self { addr, pin }
    }

    /// A client connection; its socket comes from the firewall like every
    /// other dial.
    pub async fn connect(&self) -> TlsStream<TcpStream> {
        tls_connect(self.addr, self.pin).await
    }
}

/// A TLS 1.3 client connection to `addr`, pinned to `pin`.
pub async fn tls_connect(addr: SocketAddr, pin: burrow_obfs::tls::CertPin) -> TlsStream<TcpStream> {
    let line = RelayLine {
        host: "bench.example".into(),
        port: addr.port(),
        path: "/x".into(),
        key: burrow_obfs::GateSecret::generate(&mut rand::rngs::OsRng).public(),
        carriers: vec![Carrier::H2],
        pin: Some(pin),
        ip: Some(addr.ip()),
        id: None,
        proxied: false,
    };
    let sockets = GuardedSockets::for_relay(&line, "bench").expect("sockets");
    let tcp = sockets
        .tcp(&addr.ip().to_string(), addr.port())
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let config = client_config(&Trust::Pinned(pin), &ALPN_TCP).expect("client tls");
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("bench.example").expect("name"), tcp)
        .await
        .expect("tls")
}

/// Limits that let one machine's worth of users (all from 127.0.0.x) in:
/// the benchmarks measure the relay, not its bounds.
pub fn roomy_limits() -> RelayLimits {
    let many = NonZeroU32::new(1_000_000).expect("non-zero");
    RelayLimits {
        max_reservations: 1_000_000,
        max_circuits: 1_000_000,
        reservations_per_ip_per_minute: many,
        circuits_per_ip_per_minute: many,
        circuits_per_peer_per_minute: many,
        ..RelayLimits::default()
    }
}

/// The front of a relay child: as many connections as this process may
/// hold file descriptors for (the capacity benchmark fills it).
fn child_front_limits() -> burrow_obfs::Limits {
    burrow_obfs::Limits {
        max_connections: 1_000_000,
        ..Default::default()
    }
}

/// The relay in a child process (this benchmark run with BENCH_RELAY_CHILD).
pub struct RelayChild {
    child: Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    pub line: RelayLine,
}

impl RelayChild {
    pub fn start(carrier: Carrier) -> Self {
        // BENCH_RELAY_WRAPPER runs the relay under a profiler (heaptrack…).
        let exe = std::env::current_exe().expect("exe");
        let mut command = match std::env::var("BENCH_RELAY_WRAPPER") {
            Ok(wrapper) => {
                let mut c = Command::new(wrapper);
                c.arg(exe);
                c
            }
            Err(_) => Command::new(exe),
        };
        let mut child = command
            .env("BENCH_RELAY_CHILD", carrier.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("relay child");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        // A wrapper may print first; the relay prints its line.
        let mut line = String::new();
        while !line.starts_with("burrow-relay://") {
            line.clear();
            let n = std::io::BufRead::read_line(&mut stdout, &mut line).expect("line");
            assert!(n > 0, "the relay child exited");
        }
        let line = line.trim().parse().expect("relay line");
        Self {
            child,
            stdout,
            line,
        }
    }

    /// libp2p connections the relay holds.
    pub fn connections(&mut self) -> usize {
        use std::io::Write;
        writeln!(self.child.stdin.as_mut().expect("stdin"), "stats").expect("ask");
        let mut answer = String::new();
        std::io::BufRead::read_line(&mut self.stdout, &mut answer).expect("answer");
        answer.trim().parse().expect("count")
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Waits until its memory stops moving, then reads it.
    pub async fn settled_rss(&self) -> u64 {
        let mut last = self.rss_kib();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = self.rss_kib();
            if now.abs_diff(last) < 256 {
                return now;
            }
            last = now;
        }
    }
}

impl Drop for RelayChild {
    fn drop(&mut self) {
        // End of stdin stops it (and lets a profiler write its report).
        drop(self.child.stdin.take());
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs as the child: a relay with roomy limits until stdin closes.
pub async fn relay_child(carrier: &str) {
    let carrier = match carrier {
        "h3" => Carrier::H3,
        "ws" => Carrier::Ws,
        _ => Carrier::H2,
    };
    let relay =
        crate::support::relay_with_front(vec![carrier], &roomy_limits(), &child_front_limits())
            .await;
    println!("{}", relay.line);
    // Each line on stdin asks for the connection count; end of input (the
    // benchmark ends or dies) stops it.
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut buf = String::new();
    while stdin.read_line(&mut buf).await.unwrap_or(0) > 0 {
        let s = relay.stats.lock().expect("stats").clone();
        println!("{}", s.connections);
        buf.clear();
    }
    drop(relay);
}

/// `cargo bench` passes `--bench`; `cargo test --all-targets` runs a
/// benchmark binary without it, as a quick check that it still works.
pub fn smoke() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// A size from the environment; small when only checking the benchmark.
pub fn env_num(name: &str, default: usize, smoke_default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke() { smoke_default } else { default })
}

/// A benchmark binary's `main`: the relay child when this process is one
/// ([`RelayChild`]), else the parts BENCH_PARTS names (default: `all`), each
/// run by `run`, which says whether it knew the part.
pub fn bench_main<F, Fut>(all: &str, run: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Ok(carrier) = std::env::var("BENCH_RELAY_CHILD") {
        rt.block_on(relay_child(&carrier));
        return;
    }
    if smoke() {
        println!(
            "(a quick check that the benchmark works, tiny sizes: measure with `cargo bench`)\n"
        );
    }
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| all.to_string());
    rt.block_on(async {
        for part in parts.split(',') {
            let part = part.trim().to_string();
            if !run(part.clone()).await {
                eprintln!("unknown part {part:?} (parts: {all})");
            }
        }
    });
}

/// One party of a benchmark (a relay, a user, one end of a baseline) on
/// threads of its own, on the runtime the `burrow` binary gives it
/// ([`burrow_node::runtime`]): a relay a worker per core, a user's node
/// one thread. The parties are separate processes in real life, so every
/// hop between them crosses threads through the kernel, as it would there.
pub struct Party {
    handle: tokio::runtime::Handle,
    keep: PartyRuntime,
}

enum PartyRuntime {
    Workers(Option<tokio::runtime::Runtime>),
    Thread {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
}

impl Party {
    /// As `burrow relay` runs.
    pub fn relay() -> Self {
        let rt = burrow_node::runtime::relay().expect("runtime");
        Self {
            handle: rt.handle().clone(),
            keep: PartyRuntime::Workers(Some(rt)),
        }
    }

    /// As `burrow up` runs: everything on one thread.
    pub fn node() -> Self {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = burrow_node::runtime::node().expect("runtime");
            handle_tx.send(rt.handle().clone()).expect("handle");
            let _ = rt.block_on(stopped);
        });
        Self {
            handle: handle_rx.recv().expect("runtime started"),
            keep: PartyRuntime::Thread {
                stop: Some(stop),
                thread: Some(thread),
            },
        }
    }

    /// Runs `f` on this party's runtime and waits for its result.
    pub fn run<F>(&self, f: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        futures::executor::block_on(self.handle.spawn(f)).expect("party task")
    }
}

impl Drop for Party {
    fn drop(&mut self) {
        match &mut self.keep {
            PartyRuntime::Workers(rt) => {
                if let Some(rt) = rt.take() {
                    rt.shutdown_background();
                }
            }
            PartyRuntime::Thread { stop, thread } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
            }
        }
    }
}
