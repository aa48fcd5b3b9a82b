//! Message round trip (send → receipt) between two users through a relay,
//! over each carrier, side by side with a plain rustls TLS echo of the
//! same size on the same machine in the same run.
//!
//! Run: `cargo bench -p burrow-node --bench messages` (or `bench/run.sh
//! messages`). BENCH_MESSAGES sets the number of round trips (default 2000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_node::guarded::GuardedSockets;
use burrow_node::p2p::driver::{Driver, DriverHandle, Handler, HomeState, RelayRef};
use burrow_node::p2p::proto::{Envelope, Reply};
use burrow_node::p2p::swarm;
use burrow_node::p2p::transport::{CarrierTransport, Directory};
use burrow_obfs::tls::{client_config, Trust, ALPN_TCP};
use burrow_obfs::{Carrier, Identity, Sockets};
use burrow_relay::proto::MailboxItem;
use libp2p::identity::Keypair;
use libp2p::PeerId;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

#[path = "../tests/support/mod.rs"]
mod support;

struct Quiet(mpsc::UnboundedSender<HomeState>);

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
}

async fn user(home: &RelayRef) -> (PeerId, DriverHandle) {
    let keypair = Keypair::generate_ed25519();
    let directory = Directory::default();
    let sockets = Arc::new(GuardedSockets::for_relay(&home.line, "bench").expect("sockets"));
    let swarm = swarm::build(&keypair, CarrierTransport::dialer(directory.clone())).expect("swarm");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (driver, handle) = Driver::new(swarm, directory, sockets, home.clone(), Quiet(tx));
    tokio::spawn(driver.run());
    while rx.recv().await != Some(HomeState::Online) {}
    (keypair.public().to_peer_id(), handle)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(
    name: &str,
    mut rtts: Vec<Duration>,
    base: Option<(Duration, Duration)>,
) -> (Duration, Duration) {
    rtts.sort();
    let (p50, p99) = (percentile(&rtts, 0.5), percentile(&rtts, 0.99));
    let ratio = base
        .map(|(b50, b99)| {
            format!(
                " | {:.2}× | {:.2}×",
                p50.as_secs_f64() / b50.as_secs_f64(),
                p99.as_secs_f64() / b99.as_secs_f64()
            )
        })
        .unwrap_or_else(|| " | 1.00× | 1.00×".into());
    println!(
        "| {name} | {} µs | {} µs{ratio} |",
        p50.as_micros(),
        p99.as_micros()
    );
    (p50, p99)
}

/// 200-byte echo round trips over a plain rustls TLS 1.3 connection.
async fn tls_echo(n: usize) -> Vec<Duration> {
    let (identity, _, _) = Identity::self_signed("bench.example").expect("cert");
    let pin = identity.pin().expect("pin");
    let server = identity.server_config_tcp().expect("server tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        tcp.set_nodelay(true).expect("nodelay");
        let mut s = tokio_rustls::TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .expect("tls");
        let mut buf = [0u8; 200];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&buf).await.is_err() || s.flush().await.is_err() {
                break;
            }
        }
    });
    // The client's socket comes from the firewall like every other dial.
    let line = burrow_obfs::RelayLine {
        host: "bench.example".into(),
        port: addr.port(),
        path: "/x".into(),
        key: burrow_obfs::GateSecret::generate(&mut rand::rngs::OsRng).public(),
        carriers: vec![Carrier::H2],
        pin: Some(pin),
        ip: Some(addr.ip()),
        id: None,
    };
    let sockets = GuardedSockets::for_relay(&line, "bench").expect("sockets");
    let tcp = sockets.tcp(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let config = client_config(&Trust::Pinned(pin), &ALPN_TCP).expect("client tls");
    let mut c = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("bench.example").expect("name"), tcp)
        .await
        .expect("tls");
    let msg = [7u8; 200];
    let mut back = [0u8; 200];
    let mut rtts = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.write_all(&msg).await.expect("write");
        c.flush().await.expect("flush");
        c.read_exact(&mut back).await.expect("read");
        rtts.push(t.elapsed());
    }
    rtts
}

async fn message_rtts(carrier: Carrier, n: usize) -> Vec<Duration> {
    let relay = support::relay(vec![carrier]).await;
    let home = RelayRef::new(relay.line.clone()).expect("relay ref");
    let (_, alice) = user(&home).await;
    let (bob, _bob) = user(&home).await;
    let text = "x".repeat(120);
    let mut rtts = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let envelope = Envelope::Message {
            id,
            sent_at_ms: 1_700_000_000_000,
            text: text.clone(),
        };
        let t = Instant::now();
        let reply = alice
            .deliver(bob, home.clone(), envelope)
            .await
            .expect("delivered");
        assert_eq!(reply, Reply::Received);
        // The first round trips set up the circuit; they are not counted.
        if i >= 50 {
            rtts.push(t.elapsed());
        }
    }
    rtts
}

fn main() {
    let n: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!("Message round trip (send → receipt, 120-byte text) through a relay, {n} each, vs a 200-byte rustls TLS echo:");
        println!();
        println!("| path | p50 | p99 | p50 vs TLS | p99 vs TLS |");
        println!("|---|---|---|---|---|");
        let base = report("rustls TLS 1.3 echo (baseline)", tls_echo(n).await, None);
        report("message via relay, HTTP/2 carrier", message_rtts(Carrier::H2, n).await, Some(base));
        report("message via relay, HTTP/3 carrier", message_rtts(Carrier::H3, n).await, Some(base));
    });
}
