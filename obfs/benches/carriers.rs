//! Carrier benchmark: tunnels over HTTP/2, WebSocket and HTTP/3 side by side with their
//! baselines (raw TCP, a plain rustls TLS 1.3 stream, a plain quinn stream)
//! in one process on loopback. Rounds are interleaved so that noise from a
//! shared machine hits every contender alike; medians are reported.
//!
//! Run: `cargo bench -p burrow-obfs --bench carriers` (or `bench/run.sh`).
//! Environment: `BENCH_ROUNDS` (default 5), `BENCH_MIB` (default 256),
//! `BENCH_ECHOES` (default 2000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_obfs::tls::{client_config, Trust, ALPN_QUIC, ALPN_TCP};
use burrow_obfs::{
    Carrier, Client, Front, FrontConfig, Gate, GateSecret, Identity, Limits, RelayLine, Site,
    Source, Tunnels,
};

#[path = "../tests/support/mod.rs"]
mod support;
use support::LoopbackSockets;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}
type Stream = Box<dyn Duplex>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Tcp,
    Tls,
    H2Tunnel,
    WsTunnel,
    Quic,
    H3Tunnel,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Tcp,
        Kind::Tls,
        Kind::H2Tunnel,
        Kind::WsTunnel,
        Kind::Quic,
        Kind::H3Tunnel,
    ];
    fn name(self) -> &'static str {
        match self {
            Kind::Tcp => "raw TCP",
            Kind::Tls => "rustls TLS 1.3",
            Kind::H2Tunnel => "tunnel over HTTP/2",
            Kind::WsTunnel => "tunnel over WebSocket (HTTP/1.1)",
            Kind::Quic => "quinn stream",
            Kind::H3Tunnel => "tunnel over HTTP/3",
        }
    }
}

struct Env {
    identity: Identity,
    tls_client: Arc<rustls::ClientConfig>,
    quic_client: quinn::ClientConfig,
    tcp: TcpListener,
    tls_server: Arc<rustls::ServerConfig>,
    quic_server: quinn::Endpoint,
    quic_client_ep: quinn::Endpoint,
    relay: Client,
    tunnels: Tunnels,
}

fn transport() -> Arc<quinn::TransportConfig> {
    // The same windows the front uses, so the baseline is not handicapped.
    let mut t = quinn::TransportConfig::default();
    let limits = Limits::default();
    t.stream_receive_window(limits.tunnel_window.into());
    t.receive_window(limits.quic_conn_window.into());
    t.send_window(u64::from(limits.quic_conn_window));
    Arc::new(t)
}

async fn setup() -> Env {
    let (identity, _, _) = Identity::self_signed("bench.example").expect("cert");
    let pin = identity.pin().expect("pin");
    let trust = Trust::Pinned(pin);
    let tls_client = client_config(&trust, &ALPN_TCP).expect("tls");
    let quic_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(
        client_config(&trust, &[ALPN_QUIC]).expect("tls"),
    )
    .expect("quic");
    let mut quic_client = quinn::ClientConfig::new(Arc::new(quic_crypto));
    quic_client.transport_config(transport());

    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let tls_server = identity.server_config_tcp().expect("server tls");
    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(
        identity.server_config_quic().expect("tls"),
    )
    .expect("quic");
    let mut server_cfg = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server_cfg.transport_config(transport());
    let quic_server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().expect("addr"))
        .expect("quic server");
    let quic_client_ep =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("quic client");

    let secret = GateSecret::generate(&mut rand::thread_rng());
    let config = FrontConfig {
        identity: identity.clone(),
        gate: Gate::new(secret.clone()),
        tunnel_path: "/api/v2/events".into(),
        site: Site::new(Source::Builtin, 0, true),
        limits: Limits::default(),
    };
    let (front, tunnels) = Front::bind("127.0.0.1:0".parse().expect("addr"), config)
        .await
        .expect("front");
    let addr = front.local_addr();
    let (stop, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(stop);
    tokio::spawn(front.run(rx));
    let line = RelayLine {
        host: "bench.example".into(),
        port: addr.port(),
        path: "/api/v2/events".into(),
        key: secret.public(),
        carriers: vec![Carrier::H2, Carrier::H3],
        pin: Some(pin),
        ip: Some(addr.ip()),
        id: None,
        proxied: false,
    };
    let relay = Client::new(line, Arc::new(LoopbackSockets)).expect("client");
    Env {
        identity,
        tls_client,
        quic_client,
        tcp,
        tls_server,
        quic_server,
        quic_client_ep,
        relay,
        tunnels,
    }
}

/// A connected (client, server) pair of byte streams of one kind.
async fn pair(env: &mut Env, kind: Kind) -> (Stream, Stream) {
    let _ = &env.identity;
    match kind {
        Kind::Tcp | Kind::Tls => {
            let addr = env.tcp.local_addr().expect("addr");
            let (c, s) = tokio::join!(TcpStream::connect(addr), env.tcp.accept());
            let (c, (s, _)) = (c.expect("connect"), s.expect("accept"));
            c.set_nodelay(true).expect("nodelay");
            s.set_nodelay(true).expect("nodelay");
            if kind == Kind::Tcp {
                return (Box::new(c), Box::new(s));
            }
            let connector = tokio_rustls::TlsConnector::from(env.tls_client.clone());
            let acceptor = tokio_rustls::TlsAcceptor::from(env.tls_server.clone());
            let (c, s) = tokio::join!(
                connector.connect("bench.example".try_into().expect("name"), c),
                acceptor.accept(s)
            );
            (
                Box::new(c.expect("tls client")),
                Box::new(s.expect("tls server")),
            )
        }
        Kind::Quic => {
            let addr = env.quic_server.local_addr().expect("addr");
            let connecting = env
                .quic_client_ep
                .connect_with(env.quic_client.clone(), addr, "bench.example")
                .expect("connect");
            let server = &env.quic_server;
            let accept = async { server.accept().await.expect("incoming").await };
            let (c, s) = tokio::join!(connecting, accept);
            let (c, s) = (c.expect("quic client"), s.expect("quic server"));
            let (mut send, recv) = c.open_bi().await.expect("open");
            // quinn opens a stream lazily: the peer sees it with the first byte.
            send.write_all(&[0]).await.expect("first byte");
            let (ssend, mut srecv) = s.accept_bi().await.expect("accept");
            let mut one = [0u8; 1];
            srecv.read_exact(&mut one).await.expect("first byte");
            std::mem::forget((c, s));
            (
                Box::new(tokio::io::join(recv, send)),
                Box::new(tokio::io::join(srecv, ssend)),
            )
        }
        Kind::H2Tunnel | Kind::H3Tunnel | Kind::WsTunnel => {
            let carrier = match kind {
                Kind::H2Tunnel => Carrier::H2,
                Kind::WsTunnel => Carrier::Ws,
                _ => Carrier::H3,
            };
            let mut c = env.relay.connect_via(carrier).await.expect("tunnel");
            c.write_all(&[0]).await.expect("first byte");
            c.flush().await.expect("flush");
            let mut s = env.tunnels.accept().await.expect("tunnel");
            let mut one = [0u8; 1];
            s.read_exact(&mut one).await.expect("first byte");
            c.established().await.expect("accepted");
            (Box::new(c), Box::new(s))
        }
    }
}

/// Sends `bytes` from `tx` to `rx`; returns MB/s (10^6 bytes per second).
async fn transfer(mut tx: Stream, mut rx: Stream, bytes: usize) -> f64 {
    let chunk = vec![0x5au8; 128 * 1024];
    let start = Instant::now();
    let send = async move {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            tx.write_all(&chunk[..n]).await.expect("write");
            left -= n;
        }
        tx.shutdown().await.expect("shutdown");
        tx
    };
    let recv = async move {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0usize;
        loop {
            let n = rx.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got += n;
        }
        assert_eq!(got, bytes);
        rx
    };
    let (_tx, _rx) = tokio::join!(send, recv);
    bytes as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// Round trips of 64-byte messages echoed by the server side.
async fn echo_rtts(mut c: Stream, mut s: Stream, n: usize) -> Vec<Duration> {
    let server = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&buf).await.is_err() || s.flush().await.is_err() {
                break;
            }
        }
    });
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.write_all(&msg).await.expect("write");
        c.flush().await.expect("flush");
        c.read_exact(&mut back).await.expect("read");
        times.push(t.elapsed());
    }
    drop(c);
    server.abort();
    times
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--idle-tunnels") {
        return idle_tunnels(&args[i + 1..]);
    }
    if let Some(i) = args.iter().position(|a| a == "--first-byte") {
        return first_byte(&args[i + 1..]);
    }
    if args.iter().any(|a| a == "--echo-front") {
        return echo_front();
    }
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench binaries without `--bench`:
        // a benchmark in a debug test run measures nothing useful.
        println!("carriers: benchmark skipped (run it with `cargo bench` or bench/run.sh)");
        return;
    }
    let rounds = env_usize("BENCH_ROUNDS", 5);
    let mib = env_usize("BENCH_MIB", 256);
    let echoes = env_usize("BENCH_ECHOES", 2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The driver runs on a worker thread like the server tasks, not on the
    // blocking thread, so echoes do not pay for a cross-thread wake-up.
    let driver = rt.spawn(async move {
        let mut env = setup().await;
        let bytes = mib * 1024 * 1024;
        let mut up: Vec<Vec<f64>> = vec![Vec::new(); Kind::ALL.len()];
        let mut down: Vec<Vec<f64>> = vec![Vec::new(); Kind::ALL.len()];
        let mut p50: Vec<Vec<f64>> = vec![Vec::new(); Kind::ALL.len()];
        let mut p99: Vec<Vec<f64>> = vec![Vec::new(); Kind::ALL.len()];
        for round in 0..rounds {
            for (i, kind) in Kind::ALL.into_iter().enumerate() {
                let (c, s) = pair(&mut env, kind).await;
                up[i].push(transfer(c, s, bytes).await);
                let (c, s) = pair(&mut env, kind).await;
                down[i].push(transfer(s, c, bytes).await);
                let (c, s) = pair(&mut env, kind).await;
                let mut t = echo_rtts(c, s, echoes).await;
                t.sort();
                p50[i].push(t[t.len() / 2].as_secs_f64() * 1e6);
                p99[i].push(t[t.len() * 99 / 100].as_secs_f64() * 1e6);
            }
            eprintln!("round {}/{} done", round + 1, rounds);
        }
        let m = |v: &mut Vec<Vec<f64>>, i: usize| median(&mut v[i]);
        println!("Carrier benchmark: {rounds} interleaved rounds, {mib} MiB per transfer, {echoes} echoes of 64 bytes; medians.");
        println!();
        println!("| stream | client→server MB/s | server→client MB/s | echo RTT p50 µs | echo RTT p99 µs |");
        println!("|---|---:|---:|---:|---:|");
        let mut med = Vec::new();
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            let row = (m(&mut up, i), m(&mut down, i), m(&mut p50, i), m(&mut p99, i));
            println!("| {} | {:.0} | {:.0} | {:.1} | {:.1} |", kind.name(), row.0, row.1, row.2, row.3);
            med.push(row);
        }
        let (tls, h2, ws, quic, h3) = (med[1], med[2], med[3], med[4], med[5]);
        println!();
        println!("| ratio | client→server | server→client | RTT p50 | RTT p99 |");
        println!("|---|---:|---:|---:|---:|");
        println!(
            "| HTTP/2 tunnel / TLS (goal ≥ 0.7× throughput) | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
            h2.0 / tls.0,
            h2.1 / tls.1,
            h2.2 / tls.2,
            h2.3 / tls.3
        );
        println!(
            "| WebSocket tunnel / TLS | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
            ws.0 / tls.0,
            ws.1 / tls.1,
            ws.2 / tls.2,
            ws.3 / tls.3
        );
        println!(
            "| HTTP/3 tunnel / quinn (goal ≥ 0.9× throughput) | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
            h3.0 / quic.0,
            h3.1 / quic.1,
            h3.2 / quic.2,
            h3.3 / quic.3
        );
    });
    rt.block_on(driver).expect("benchmark task");
}

/// Server half of the idle-memory and round-trip measurements:
/// `--echo-front` runs a front with the built-in site on loopback (TCP and
/// UDP, one port), prints its relay line and echoes every tunnel, until
/// killed. Nothing but the carriers runs in this process, so its memory is
/// what the tunnels cost (each echo task holds a 1 KiB buffer).
fn echo_front() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (identity, _, _) = Identity::self_signed("bench.example").expect("cert");
        let pin = identity.pin().expect("pin");
        let secret = GateSecret::generate(&mut rand::thread_rng());
        let config = FrontConfig {
            identity,
            gate: Gate::new(secret.clone()),
            tunnel_path: "/api/v2/events".into(),
            site: Site::new(Source::Builtin, 0, true),
            limits: Limits {
                max_connections: 100_000,
                ..Limits::default()
            },
        };
        let (front, mut tunnels) = Front::bind("127.0.0.1:0".parse().expect("addr"), config)
            .await
            .expect("front");
        let addr = front.local_addr();
        let (_stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(front.run(rx));
        let line = RelayLine {
            host: "bench.example".into(),
            port: addr.port(),
            path: "/api/v2/events".into(),
            key: secret.public(),
            carriers: vec![Carrier::H2, Carrier::H3],
            pin: Some(pin),
            ip: Some(addr.ip()),
            id: None,
            proxied: false,
        };
        println!("{line}");
        while let Some(mut t) = tunnels.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = t.read(&mut buf).await {
                    if n == 0 || t.write_all(&buf[..n]).await.is_err() || t.flush().await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Client half of the idle-memory measurement: `--idle-tunnels LINE N h2|h3`
/// opens N tunnels to a running `--echo-front`, checks each
/// with one byte, prints "ready" and holds them until stdin closes.
fn idle_tunnels(args: &[String]) {
    let line: RelayLine = args.first().expect("LINE").parse().expect("relay line");
    let n: usize = args.get(1).and_then(|v| v.parse().ok()).expect("N");
    let carrier = match args.get(2).map(String::as_str) {
        Some("h3") => Carrier::H3,
        _ => Carrier::H2,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let client = Client::new(line, Arc::new(LoopbackSockets)).expect("client");
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            let mut t = client.connect_via(carrier).await.expect("tunnel");
            t.write_all(&[1]).await.expect("write");
            t.flush().await.expect("flush");
            let mut b = [0u8; 1];
            t.read_exact(&mut b).await.expect("echo");
            held.push(t);
        }
        println!("ready {}", held.len());
        let _ = tokio::task::spawn_blocking(|| {
            use std::io::Read;
            let mut sink = Vec::new();
            std::io::stdin().read_to_end(&mut sink)
        })
        .await;
        drop(held);
    });
}

/// Client half of the round-trip count: `--first-byte LINE h2|h3` opens one
/// cold tunnel, writes one byte with the request (as a libp2p client would
/// its first handshake message), waits for the relay's echo and prints the
/// wall-clock time (µs since the epoch) at which it arrived.
fn first_byte(args: &[String]) {
    let line: RelayLine = args.first().expect("LINE").parse().expect("relay line");
    let carrier = match args.get(1).map(String::as_str) {
        Some("h3") => Carrier::H3,
        _ => Carrier::H2,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let client = Client::new(line, Arc::new(LoopbackSockets)).expect("client");
        let mut t = client.connect_via(carrier).await.expect("tunnel");
        t.write_all(&[1]).await.expect("write");
        t.flush().await.expect("flush");
        let mut b = [0u8; 1];
        t.read_exact(&mut b).await.expect("echo");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock");
        println!("{}", now.as_micros());
    });
}
