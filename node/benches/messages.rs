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

use common::{percentile, user, TlsServer};

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
    let server = TlsServer::start(|mut s| async move {
        let mut buf = [0u8; 200];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&buf).await.is_err() || s.flush().await.is_err() {
                break;
            }
        }
    })
    .await;
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
            .deliver(bob, Route::Relay(home.clone()), envelope)
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
    // `cargo test --all-targets` runs this without `--bench`: a quick check.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 100 } else { 2000 });
    if smoke {
        println!("(a quick check that the benchmark works: measure with `cargo bench`)\n");
    }
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
