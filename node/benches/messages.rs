//! Message round trip (send → receipt) between two users through a relay,
//! over each carrier, side by side with a plain rustls TLS echo of the
//! same size on the same machine in the same run.
//!
//! Run: `cargo bench -p burrow-node --bench messages` (or `bench/run.sh
//! messages`). BENCH_MESSAGES sets the number of round trips (default 2000).

use std::time::{Duration, Instant};

use burrow_node::p2p::driver::{RelayRef, Route};
use burrow_node::p2p::proto::{Envelope, Reply};
use burrow_obfs::Carrier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use common::{listening_user, percentile, user, user_dialing, Party, TlsServer};

/// p50 and p99 of one run.
fn quantiles(mut rtts: Vec<Duration>) -> (Duration, Duration) {
    rtts.sort();
    (percentile(&rtts, 0.5), percentile(&rtts, 0.99))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// 200-byte echo round trips over a plain rustls TLS 1.3 connection: the
/// server on a relay's runtime, the client on a node's.
fn tls_echo(n: usize) -> Vec<Duration> {
    let server_side = Party::relay();
    let server = server_side.run(TlsServer::start(|mut s| async move {
        let mut buf = [0u8; 200];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&buf).await.is_err() || s.flush().await.is_err() {
                break;
            }
        }
    }));
    let client_side = Party::node();
    client_side.run(async move {
        let mut c = server.connect().await;
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
    })
}

/// How Alice reaches Bob in a run.
#[derive(Clone, Copy)]
enum Path {
    Relay(Carrier),
    /// To Bob's own front over this carrier (Bob runs `burrow up --listen`;
    /// over HTTP/3 it is also what a hole punched between them carries).
    Direct(Carrier),
}

/// Round trips from Alice to Bob by `path`; the relay, Bob and Alice each
/// run as the `burrow` binary runs them ([`Party`]).
fn message_rtts(path: Path, n: usize) -> Vec<Duration> {
    let carrier = match path {
        Path::Relay(c) | Path::Direct(c) => c,
    };
    let relay_side = Party::relay();
    let relay = relay_side.run(support::relay(vec![carrier]));
    let home = RelayRef::new(relay.line.clone()).expect("relay ref");
    let bob_side = Party::node();
    let (bob, bob_handle, route) = bob_side.run({
        let home = home.clone();
        async move {
            match path {
                Path::Relay(_) => {
                    let (bob, handle) = user(&home).await;
                    (bob, handle, Route::Relay(home.clone()))
                }
                Path::Direct(carrier) => {
                    let (bob, handle, mut front) = listening_user(&home).await;
                    front.carriers = vec![carrier];
                    let front = RelayRef::new(front).expect("front ref");
                    (bob, handle, Route::Direct(front))
                }
            }
        }
    });
    let alice_side = Party::node();
    let rtts = alice_side.run(async move {
        let (_, alice) = match &route {
            Route::Direct(front) => user_dialing(&home, &[&front.line]).await,
            Route::Relay(_) => user(&home).await,
        };
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
                .deliver(bob, route.clone(), envelope)
                .await
                .expect("delivered");
            assert_eq!(reply, Reply::Received);
            // The first round trips set up the connection; not counted.
            if i >= 50 {
                rtts.push(t.elapsed());
            }
        }
        rtts
    });
    drop(alice_side);
    drop(bob_handle);
    drop(bob_side);
    drop(relay);
    drop(relay_side);
    rtts
}

fn main() {
    // `cargo test --all-targets` runs this without `--bench`: a quick check.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 100 } else { 2000 });
    if smoke {
        println!("(a quick check that the benchmark works: measure with `cargo bench`)\n");
    }
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 1 } else { 3 });
    {
        let paths = [
            (
                "message via relay, HTTP/2 carrier",
                Path::Relay(Carrier::H2),
            ),
            (
                "message via relay, HTTP/3 carrier",
                Path::Relay(Carrier::H3),
            ),
            (
                "message via relay, WebSocket carrier",
                Path::Relay(Carrier::Ws),
            ),
            (
                "message direct to the contact's front, HTTP/2",
                Path::Direct(Carrier::H2),
            ),
            (
                "message direct, HTTP/3 (as through a punched hole)",
                Path::Direct(Carrier::H3),
            ),
        ];
        // BENCH_PATHS=h2,h3,ws,direct,direct-h3 picks paths (default: all).
        let picked = std::env::var("BENCH_PATHS").unwrap_or_default();
        let paths: Vec<_> = paths
            .into_iter()
            .filter(|(_, path)| {
                let key = match path {
                    Path::Relay(c) => c.to_string(),
                    Path::Direct(Carrier::H3) => "direct-h3".into(),
                    Path::Direct(_) => "direct".into(),
                };
                picked.is_empty() || picked.split(',').any(|p| p == key)
            })
            .collect();
        // Per row, the p50 and p99 of each round; rows interleaved.
        let mut tls = Vec::new();
        let mut rows: Vec<Vec<(Duration, Duration)>> = vec![Vec::new(); paths.len()];
        for _ in 0..rounds {
            tls.push(quantiles(tls_echo(n)));
            for (row, (_, path)) in rows.iter_mut().zip(&paths) {
                row.push(quantiles(message_rtts(*path, n)));
            }
        }
        println!("Message round trip (send → receipt, 120-byte text), {n} each, vs a 200-byte rustls TLS echo; each party on its own threads as `burrow` runs it (relay: a worker per core, node: one thread); medians of {rounds} interleaved rounds:");
        println!();
        println!("| path | p50 | p99 | p50 vs TLS | p99 vs TLS |");
        println!("|---|---|---|---|---|");
        let med = |v: &[(Duration, Duration)]| {
            (
                median(v.iter().map(|r| r.0).collect()),
                median(v.iter().map(|r| r.1).collect()),
            )
        };
        let (b50, b99) = med(&tls);
        println!(
            "| rustls TLS 1.3 echo (baseline) | {} µs | {} µs | 1.00× | 1.00× |",
            b50.as_micros(),
            b99.as_micros()
        );
        for ((name, _), row) in paths.iter().zip(&rows) {
            let (p50, p99) = med(row);
            println!(
                "| {name} | {} µs | {} µs | {:.2}× | {:.2}× |",
                p50.as_micros(),
                p99.as_micros(),
                p50.as_secs_f64() / b50.as_secs_f64(),
                p99.as_secs_f64() / b99.as_secs_f64()
            );
        }
    }
}
