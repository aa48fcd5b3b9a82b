//! What one relay carries, side by side with plain rustls TLS on the same
//! machine in the same run:
//!
//! - `throughput`: bulk data A → relay → B (both users behind the relay,
//!   Noise and yamux end to end inside each carrier's tunnel) vs one plain
//!   TLS 1.3 stream;
//! - `forward`: messages per second (send → receipt) for 100 pairs of users
//!   at once vs 100 TLS connections doing 200-byte echo round trips;
//! - `memory`: the relay's resident memory per connected idle user at 1,000
//!   users (the relay in its own process) vs 1,000 idle TLS connections to
//!   the same kind of relay.
//!
//! Run: `cargo bench -p burrow-node --bench relay` (or `bench/run.sh relay`);
//! BENCH_PARTS=throughput,forward,memory picks parts; BENCH_CARRIERS
//! (h2,h3,ws) the carriers of `throughput` and `memory`; BENCH_USERS (1000),
//! BENCH_PAIRS (100) and BENCH_MIB (256) set the sizes; BENCH_RELAY_WRAPPER
//! runs the memory part's relay under a profiler (`heaptrack`).

use std::io;
use std::time::{Duration, Instant};

use burrow_node::p2p::driver::{RelayRef, Route};
use burrow_node::p2p::proto::{Envelope, Reply};
use burrow_node::p2p::swarm;
use burrow_node::p2p::transport::{CarrierTransport, Directory};
use burrow_obfs::Carrier;
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{relay, PeerId, StreamProtocol, Swarm};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use common::{bench_main, env_num, roomy_limits, user, RelayChild, TlsServer};

// ------------------------------------------------------------ throughput

/// One request is a chunk of `n` bytes of bulk data (written from, and
/// read into, a reused buffer so the benchmark adds no allocation or
/// zeroing per byte); the answer is how many bytes arrived.
#[derive(Debug, Clone, Default)]
struct BulkCodec;

const BULK: StreamProtocol = StreamProtocol::new("/burrow-bench/bulk/1");
const CHUNK: usize = 1024 * 1024;
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl request_response::Codec for BulkCodec {
    type Protocol = StreamProtocol;
    type Request = usize;
    type Response = u64;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<usize>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        let mut buf = [0u8; 64 * 1024];
        let mut n = 0;
        loop {
            match io.read(&mut buf).await? {
                0 => return Ok(n),
                k => n += k,
            }
        }
    }
    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<u64>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        let mut n = [0u8; 8];
        io.read_exact(&mut n).await?;
        Ok(u64::from_be_bytes(n))
    }
    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, n: usize) -> io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        let mut left = n;
        while left > 0 {
            let k = left.min(ZEROS.len());
            io.write_all(&ZEROS[..k]).await?;
            left -= k;
        }
        io.close().await
    }
    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, n: u64) -> io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        io.write_all(&n.to_be_bytes()).await?;
        io.close().await
    }
}

#[derive(NetworkBehaviour)]
struct BulkBehaviour {
    relay_client: relay::client::Behaviour,
    bulk: request_response::Behaviour<BulkCodec>,
}

/// A swarm on the node's own transport (carriers + relay circuits) that
/// speaks the bulk protocol.
fn bulk_swarm(home: &RelayRef) -> (PeerId, Swarm<BulkBehaviour>) {
    let keypair = Keypair::generate_ed25519();
    let directory = Directory::default();
    let sockets = std::sync::Arc::new(
        burrow_node::guarded::GuardedSockets::for_relay(&home.line, "bench").expect("sockets"),
    );
    directory.add(&home.line, sockets).expect("relay");
    let (transport, relay_client) = swarm::transport(&keypair, CarrierTransport::dialer(directory));
    let bulk = request_response::Behaviour::with_codec(
        BulkCodec,
        [(BULK, ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(120)),
    );
    let peer = keypair.public().to_peer_id();
    let swarm = Swarm::new(
        transport,
        BulkBehaviour { relay_client, bulk },
        peer,
        swarm::config(),
    );
    (peer, swarm)
}

/// Moves `total` bytes A → relay → B in 1 MiB requests, 8 in flight.
async fn relayed_bulk(carrier: Carrier, total: usize) -> Duration {
    let relay = support::relay_with(vec![carrier], &roomy_limits()).await;
    let home = RelayRef::new(relay.line.clone()).expect("relay ref");
    let (bob, mut b) = bulk_swarm(&home);
    let relay_addr = home.addrs()[0].clone();
    b.listen_on(relay_addr.clone().with(Protocol::P2pCircuit))
        .expect("listen");
    loop {
        if let SwarmEvent::Behaviour(BulkBehaviourEvent::RelayClient(
            relay::client::Event::ReservationReqAccepted { .. },
        )) = b.select_next_some().await
        {
            break;
        }
    }
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(BulkBehaviourEvent::Bulk(
                request_response::Event::Message {
                    message:
                        request_response::Message::Request {
                            request, channel, ..
                        },
                    ..
                },
            )) = b.select_next_some().await
            {
                let _ = b
                    .behaviour_mut()
                    .bulk
                    .send_response(channel, request as u64);
            }
        }
    });
    let (_, mut a) = bulk_swarm(&home);
    a.add_peer_address(
        bob,
        relay_addr
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(bob)),
    );
    let chunk = CHUNK;
    let chunks = total.div_ceil(CHUNK);
    // A first chunk sets up the circuit; it is not counted.
    a.behaviour_mut().bulk.send_request(&bob, chunk);
    wait_responses(&mut a, 1).await;
    let start = Instant::now();
    let mut sent = 0;
    let mut done = 0;
    while sent < chunks.min(8) {
        a.behaviour_mut().bulk.send_request(&bob, chunk);
        sent += 1;
    }
    while done < chunks {
        wait_responses(&mut a, 1).await;
        done += 1;
        if sent < chunks {
            a.behaviour_mut().bulk.send_request(&bob, chunk);
            sent += 1;
        }
    }
    start.elapsed()
}

async fn wait_responses(a: &mut Swarm<BulkBehaviour>, n: usize) {
    let mut got = 0;
    while got < n {
        match a.select_next_some().await {
            SwarmEvent::Behaviour(BulkBehaviourEvent::Bulk(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            })) => {
                assert_eq!(response, CHUNK as u64, "the whole chunk arrived");
                got += 1;
            }
            SwarmEvent::Behaviour(BulkBehaviourEvent::Bulk(
                request_response::Event::OutboundFailure { error, .. },
            )) => panic!("bulk request failed: {error}"),
            _ => {}
        }
    }
}

/// Moves `total` bytes over one plain TLS 1.3 stream.
async fn tls_bulk(total: usize) -> Duration {
    let server = TlsServer::start(|mut s| async move {
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k as u64,
            }
        }
        let _ = s.write_all(&n.to_be_bytes()).await;
        let _ = s.shutdown().await;
    })
    .await;
    let mut c = server.connect().await;
    let chunk = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut left = total;
    while left > 0 {
        let k = left.min(chunk.len());
        c.write_all(&chunk[..k]).await.expect("write");
        left -= k;
    }
    c.shutdown().await.expect("shutdown");
    let mut n = [0u8; 8];
    c.read_exact(&mut n).await.expect("count");
    assert_eq!(u64::from_be_bytes(n), total as u64);
    start.elapsed()
}

async fn throughput() {
    let mib = env_num("BENCH_MIB", 256, 4);
    let total = mib * 1024 * 1024;
    println!("Bulk throughput, {mib} MiB one way (median of 3 runs each):\n");
    println!("| path | MB/s | vs TLS |");
    println!("|---|---|---|");
    let rate = |d: Duration| total as f64 / d.as_secs_f64() / 1e6;
    // BENCH_CARRIERS picks the relayed paths (default: all three).
    let picked = std::env::var("BENCH_CARRIERS").unwrap_or_else(|_| "h2,h3,ws".into());
    let carriers: Vec<(&str, Carrier)> = [
        ("A → relay → B, HTTP/2 carrier", Carrier::H2),
        ("A → relay → B, HTTP/3 carrier", Carrier::H3),
        ("A → relay → B, WebSocket carrier", Carrier::Ws),
    ]
    .into_iter()
    .filter(|(_, c)| picked.split(',').any(|p| p == c.name()))
    .collect();
    let mut rows: Vec<(&str, Vec<f64>)> = vec![("rustls TLS 1.3 stream (baseline)", vec![])];
    rows.extend(carriers.iter().map(|(name, _)| (*name, vec![])));
    // Interleaved, so a noisy neighbour hurts every path alike.
    for _ in 0..3 {
        rows[0].1.push(rate(tls_bulk(total).await));
        for (row, (_, carrier)) in carriers.iter().enumerate() {
            rows[row + 1]
                .1
                .push(rate(relayed_bulk(*carrier, total).await));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&mut rows[0].1.clone());
    for (name, mut v) in rows {
        let m = median(&mut v);
        println!("| {name} | {m:.0} | {:.2}× |", m / base);
    }
    println!();
}

// --------------------------------------------------------------- forward

/// 100 pairs at once, each sending `per_pair` messages one after another.
async fn relayed_messages(carrier: Carrier, pairs: usize, per_pair: usize) -> f64 {
    let relay = support::relay_with(vec![carrier], &roomy_limits()).await;
    let home = RelayRef::new(relay.line.clone()).expect("relay ref");
    let mut senders = Vec::new();
    for _ in 0..pairs {
        let (_, alice) = user(&home).await;
        let (bob, bob_handle) = user(&home).await;
        senders.push((alice, bob, bob_handle));
    }
    let envelope = |i: usize| Envelope::Message {
        id: {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            id
        },
        sent_at_ms: 1_700_000_000_000,
        text: "x".repeat(120),
    };
    // Circuits first, not counted.
    for (alice, bob, _) in &senders {
        let reply = alice
            .deliver(*bob, Route::Relay(home.clone()), envelope(0))
            .await;
        assert_eq!(reply, Ok(Reply::Received));
    }
    let start = Instant::now();
    let tasks: Vec<_> = senders
        .iter()
        .map(|(alice, bob, _)| {
            let (alice, bob, home) = (alice.clone(), *bob, home.clone());
            tokio::spawn(async move {
                for i in 1..=per_pair {
                    let reply = alice
                        .deliver(bob, Route::Relay(home.clone()), envelope(i))
                        .await;
                    assert_eq!(reply, Ok(Reply::Received));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("sender");
    }
    (pairs * per_pair) as f64 / start.elapsed().as_secs_f64()
}

async fn tls_round_trips(conns: usize, per_conn: usize) -> f64 {
    let server = TlsServer::start(|mut s| async move {
        let mut buf = [0u8; 200];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&buf).await.is_err() || s.flush().await.is_err() {
                break;
            }
        }
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(server.connect().await);
    }
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let msg = [7u8; 200];
                let mut back = [0u8; 200];
                for _ in 0..per_conn {
                    c.write_all(&msg).await.expect("write");
                    c.flush().await.expect("flush");
                    c.read_exact(&mut back).await.expect("read");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client");
    }
    (conns * per_conn) as f64 / start.elapsed().as_secs_f64()
}

async fn forward() {
    let pairs = env_num("BENCH_PAIRS", 100, 3);
    let per_pair = 50;
    println!(
        "Messages per second, {pairs} pairs at once, {per_pair} each (send → receipt, 120-byte text;\n\
         relay and users in this process):\n"
    );
    println!("| path | per second | vs TLS |");
    println!("|---|---|---|");
    let base = tls_round_trips(pairs, per_pair).await;
    println!("| {pairs} rustls TLS connections, 200-byte echo (baseline) | {base:.0} | 1.00× |");
    for carrier in [Carrier::H2, Carrier::H3] {
        let r = relayed_messages(carrier, pairs, per_pair).await;
        println!(
            "| messages via one relay, {carrier} carrier | {r:.0} | {:.2}× |",
            r / base
        );
    }
    println!();
}

// ---------------------------------------------------------------- memory

async fn memory() {
    let users = env_num("BENCH_USERS", 1000, 10);
    println!(
        "Relay memory per connected idle user, {users} users (relay in its own process, VmRSS):\n"
    );
    println!("| what is connected | relay RSS before → after | per connection |");
    println!("|---|---|---|");
    // Baseline: plain TLS connections that finish the handshake and idle.
    {
        let relay = RelayChild::start(Carrier::H2);
        let before = relay.settled_rss().await;
        let addr = std::net::SocketAddr::new(relay.line.ip.expect("ip"), relay.line.port);
        let pin = relay.line.pin.expect("pin");
        let mut conns = Vec::with_capacity(users);
        for _ in 0..users {
            conns.push(common::tls_connect(addr, pin).await);
        }
        let after = relay.settled_rss().await;
        row(
            &format!("{users} idle TLS connections (baseline)"),
            before,
            after,
            users,
        );
        drop(conns);
    }
    let carriers = std::env::var("BENCH_CARRIERS").unwrap_or_else(|_| "h2,ws,h3".into());
    for carrier in carriers.split(',').map(|c| match c.trim() {
        "h3" => Carrier::H3,
        "ws" => Carrier::Ws,
        _ => Carrier::H2,
    }) {
        let mut relay = RelayChild::start(carrier);
        let home = RelayRef::new(relay.line.clone()).expect("relay ref");
        let before = relay.settled_rss().await;
        let mut handles = Vec::with_capacity(users);
        for chunk in 0..users.div_ceil(50) {
            let joins: Vec<_> = (0..50.min(users - chunk * 50))
                .map(|_| {
                    let home = home.clone();
                    tokio::spawn(async move { user(&home).await })
                })
                .collect();
            for j in joins {
                handles.push(j.await.expect("user"));
            }
        }
        let after = relay.settled_rss().await;
        let held = relay.connections();
        assert_eq!(held, users, "one connection per user");
        row(
            &format!("{users} users holding a reservation, {carrier} carrier"),
            before,
            after,
            users,
        );
        drop(handles);
    }
    println!();
}

fn row(name: &str, before: u64, after: u64, n: usize) {
    println!(
        "| {name} | {:.1} → {:.1} MiB | {:.1} KiB |",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / n as f64,
    );
}

fn main() {
    bench_main("throughput,forward,memory", |part| async move {
        match part.as_str() {
            "throughput" => {
                throughput().await;
                true
            }
            "forward" => {
                forward().await;
                true
            }
            "memory" => {
                memory().await;
                true
            }
            _ => false,
        }
    });
}
