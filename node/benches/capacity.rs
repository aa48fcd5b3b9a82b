//! Relay capacity on this machine, the relay in its own process:
//!
//! - `capacity`: idle users — each a full node holding a reservation at the
//!   relay over the HTTP/2 carrier, dialling from 127.0.0.2–127.0.0.251 —
//!   arrive in batches until the relay's resident memory reaches
//!   BENCH_CAPACITY_MIB (2048) or it cannot take more (a connect fails or
//!   times out, e.g. at the file-descriptor limit); a row per step.
//! - `latency`: message round trips (send → receipt, 120-byte text) between
//!   50 pairs chatting at once (100 users), first with no one else at the
//!   relay, then with BENCH_IDLE (1,000) idle users connected, alternating
//!   for BENCH_ROUNDS (3) rounds: median p50 and p99 side by side.
//!
//! Run: `cargo bench -p burrow-node --bench capacity` (or `bench/run.sh
//! capacity`); BENCH_PARTS=capacity,latency picks parts.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_node::p2p::driver::{DriverHandle, RelayRef, Route};
use burrow_node::p2p::proto::{Envelope, Reply};
use burrow_obfs::client::BoxFuture;
use burrow_obfs::{Carrier, Sockets};
use libp2p::PeerId;
use tokio::net::{TcpSocket, TcpStream};

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use common::{bench_main, env_num, percentile, user_with, RelayChild};

/// Dials from a different 127.0.0.x source address each time, so the
/// users do not all share one source address's ephemeral ports.
#[derive(Debug, Default)]
struct Spread {
    next: AtomicUsize,
}

impl Sockets for Spread {
    fn tcp(&self, host: &str, port: u16) -> BoxFuture<'_, io::Result<TcpStream>> {
        let k = self.next.fetch_add(1, Ordering::Relaxed) % 250;
        let source = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + k as u8)), 0);
        let target = host
            .parse::<IpAddr>()
            .map(|ip| SocketAddr::new(ip, port))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "an IP address"));
        Box::pin(async move {
            let socket = TcpSocket::new_v4()?;
            socket.bind(source)?;
            socket.connect(target?).await
        })
    }

    fn udp(&self, _: &str, _: u16) -> BoxFuture<'_, io::Result<(std::net::UdpSocket, SocketAddr)>> {
        Box::pin(async {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the capacity benchmark uses the HTTP/2 carrier",
            ))
        })
    }
}

/// Connects `n` more users, `batch` at a time; stops early at the first
/// user that cannot get online within 60 s (returns how many made it).
async fn add_users(
    home: &RelayRef,
    sockets: &Arc<Spread>,
    n: usize,
    held: &mut Vec<(PeerId, DriverHandle)>,
) -> Result<(), String> {
    const BATCH: usize = 100;
    let mut left = n;
    while left > 0 {
        let joins: Vec<_> = (0..BATCH.min(left))
            .map(|_| {
                let home = home.clone();
                let sockets: Arc<dyn Sockets> = sockets.clone();
                tokio::spawn(async move {
                    tokio::time::timeout(Duration::from_secs(60), user_with(&home, sockets)).await
                })
            })
            .collect();
        let count = joins.len();
        for j in joins {
            match j.await {
                Ok(Ok(u)) => held.push(u),
                Ok(Err(_)) => return Err("a user did not get online within 60 s".into()),
                Err(e) => return Err(format!("a user failed: {e}")),
            }
        }
        left -= count;
    }
    Ok(())
}

async fn capacity() {
    let limit_kib = env_num("BENCH_CAPACITY_MIB", 2048, 64) as u64 * 1024;
    let step = env_num("BENCH_CAPACITY_STEP", 1000, 10);
    let most = env_num("BENCH_CAPACITY_MAX", 100_000, 30);
    let fd_limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        })
        .unwrap_or_else(|| "?".into());
    println!(
        "Relay capacity: idle users holding a reservation (HTTP/2 carrier), added {step} at a time\n\
         until the relay's RSS reaches {} MiB (relay in its own process; open-files limit {fd_limit}):\n",
        limit_kib / 1024
    );
    println!("| users connected | relay RSS | per user (since start) | time to add the step |");
    println!("|---:|---:|---:|---:|");
    let mut relay = RelayChild::start(Carrier::H2);
    let home = RelayRef::new(relay.line.clone()).expect("relay ref");
    let sockets = Arc::new(Spread::default());
    let start_rss = relay.settled_rss().await;
    println!("| 0 | {:.1} MiB | - | - |", start_rss as f64 / 1024.0);
    let mut held = Vec::new();
    let stop = loop {
        let t = Instant::now();
        if let Err(why) = add_users(&home, &sockets, step, &mut held).await {
            break format!("stopped at {} users: {why}", held.len());
        }
        let took = t.elapsed();
        let rss = relay.settled_rss().await;
        println!(
            "| {} | {:.1} MiB | {:.1} KiB | {:.1} s |",
            held.len(),
            rss as f64 / 1024.0,
            rss.saturating_sub(start_rss) as f64 / held.len() as f64,
            took.as_secs_f64()
        );
        if rss >= limit_kib {
            break format!("reached {} MiB with {} users", limit_kib / 1024, held.len());
        }
        if held.len() >= most {
            break format!("reached BENCH_CAPACITY_MAX ({most} users)");
        }
    };
    let connections = relay.connections();
    println!("\n{stop}; the relay counted {connections} connections.\n");
    drop(held);
}

fn envelope(i: usize) -> Envelope {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&(i as u64).to_be_bytes());
    Envelope::Message {
        id,
        sent_at_ms: 1_700_000_000_000,
        text: "x".repeat(120),
    }
}

/// 50 pairs, each sending `per_pair` messages one after another, all
/// pairs at once; every round trip's time.
async fn chat(
    home: &RelayRef,
    sockets: &Arc<Spread>,
    pairs: usize,
    per_pair: usize,
) -> Vec<Duration> {
    let mut users = Vec::new();
    add_users(home, sockets, 2 * pairs, &mut users)
        .await
        .expect("chatting users online");
    // Let their first exchanges with the relay (identify, the tracker
    // record, the mailbox check) finish before timing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pairs: Vec<_> = users.chunks(2).map(|p| (p[0].1.clone(), p[1].0)).collect();
    // Circuits first, not counted.
    for (alice, bob) in &pairs {
        let r = alice
            .deliver(*bob, Route::Relay(home.clone()), envelope(0))
            .await;
        assert_eq!(r, Ok(Reply::Received));
    }
    let tasks: Vec<_> = pairs
        .into_iter()
        .map(|(alice, bob)| {
            let home = home.clone();
            tokio::spawn(async move {
                let mut times = Vec::with_capacity(per_pair);
                for i in 1..=per_pair {
                    let t = Instant::now();
                    let r = alice
                        .deliver(bob, Route::Relay(home.clone()), envelope(i))
                        .await;
                    assert_eq!(r, Ok(Reply::Received));
                    times.push(t.elapsed());
                    // A person types: a message every 20 ms at most.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                times
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("pair"));
    }
    drop(users);
    all.sort();
    all
}

async fn latency() {
    let idle = env_num("BENCH_IDLE", 1000, 10);
    let pairs = env_num("BENCH_CHAT_PAIRS", 50, 3);
    let per_pair = env_num("BENCH_CHAT_MESSAGES", 100, 5);
    println!(
        "Message round trips (send → receipt) for {pairs} pairs chatting at once, {per_pair} messages each,\n\
         with and without {idle} idle users at the same relay (relay in its own process):\n"
    );
    let rounds = env_num("BENCH_ROUNDS", 3, 1);
    // Rounds alternate (none idle, then `idle` idle) so that neither side
    // always runs first, on a cold relay and client; medians per side.
    let mut results: [Vec<(Duration, Duration)>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (side, with_idle) in [0, idle].into_iter().enumerate() {
            let relay = RelayChild::start(Carrier::H2);
            let home = RelayRef::new(relay.line.clone()).expect("relay ref");
            let sockets = Arc::new(Spread::default());
            let mut idle_users = Vec::new();
            add_users(&home, &sockets, with_idle, &mut idle_users)
                .await
                .expect("idle users online");
            let times = chat(&home, &sockets, pairs, per_pair).await;
            results[side].push((percentile(&times, 0.5), percentile(&times, 0.99)));
            drop(idle_users);
            drop(relay);
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let mut rows = Vec::new();
    for r in &results {
        let mut p50: Vec<_> = r.iter().map(|t| t.0).collect();
        let mut p99: Vec<_> = r.iter().map(|t| t.1).collect();
        rows.push((median(&mut p50), median(&mut p99)));
    }
    println!("| at the relay (median of {rounds} rounds) | p50 | p99 | p99 vs no idle users |");
    println!("|---|---:|---:|---:|");
    for ((p50, p99), with_idle) in rows.iter().zip([0, idle]) {
        println!(
            "| {} chatting + {with_idle} idle | {:.0} µs | {:.0} µs | {:.2}× |",
            2 * pairs,
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            p99.as_secs_f64() / rows[0].1.as_secs_f64()
        );
    }
    println!();
}

fn main() {
    bench_main("capacity,latency", |part| async move {
        match part.as_str() {
            "capacity" => {
                capacity().await;
                true
            }
            "latency" => {
                latency().await;
                true
            }
            _ => false,
        }
    });
}
