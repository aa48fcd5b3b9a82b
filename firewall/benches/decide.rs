//! The cost of one firewall decision with 10,000 allowlist entries, side by
//! side with a plain `HashSet<SocketAddr>` lookup (the least any allowlist
//! could cost) in the same run.
//!
//! Run: `cargo bench -p burrow-firewall --bench decide` (or `bench/run.sh
//! firewall`). BENCH_DECISIONS sets the number of decisions (default 1,000,000).

use std::collections::HashSet;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use burrow_firewall::{Entry, EntrySource, Policy, Proto, Target};

const ENTRIES: u32 = 10_000;

fn addr(i: u32) -> SocketAddr {
    // Public addresses, two ports per host.
    let ip = Ipv4Addr::from(0x2d00_0000 + i / 2);
    SocketAddr::new(IpAddr::V4(ip), 443 + (i % 2) as u16)
}

fn main() {
    // `cargo test --all-targets` runs this without `--bench`: a quick check.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("BENCH_DECISIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 10_000 } else { 1_000_000 });
    if smoke {
        println!("(a quick check that the benchmark works: measure with `cargo bench`)\n");
    }
    let entries: Vec<Entry> = (0..ENTRIES)
        .map(|i| {
            Entry::new(
                Target::addr(addr(i), Proto::Tcp),
                EntrySource::ContactRelay {
                    contact: format!("c{i}"),
                },
                format!("relay of contact c{i}"),
            )
        })
        .collect();
    let policy = Policy::new(entries, false);
    let set: HashSet<SocketAddr> = (0..ENTRIES).map(addr).collect();
    // Half the lookups allowed, half refused (a host not on the list).
    let probes: Vec<(Target, SocketAddr)> = (0..1024u32)
        .map(|k| {
            let a = if k % 2 == 0 {
                addr(k.wrapping_mul(7919) % ENTRIES)
            } else {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x2e00_0000 + k)), 443)
            };
            (Target::addr(a, Proto::Tcp), a)
        })
        .collect();

    let mut rows = Vec::new();
    for _round in 0..3 {
        let start = Instant::now();
        let mut allowed = 0usize;
        for i in 0..n {
            let (t, a) = &probes[i % probes.len()];
            if black_box(policy.decide(black_box(t), *a)).is_ok() {
                allowed += 1;
            }
        }
        let decide = start.elapsed().as_nanos() as f64 / n as f64;
        assert_eq!(allowed, n / 2);
        let start = Instant::now();
        let mut hits = 0usize;
        for i in 0..n {
            let (_, a) = &probes[i % probes.len()];
            if black_box(set.contains(black_box(a))) {
                hits += 1;
            }
        }
        let base = start.elapsed().as_nanos() as f64 / n as f64;
        assert_eq!(hits, n / 2);
        rows.push((decide, base));
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (decide, base) = rows[1];
    println!("Firewall decision with {ENTRIES} entries, {n} decisions per round, median of 3:\n");
    println!("| what | ns per decision | vs HashSet |");
    println!("|---|---|---|");
    println!("| HashSet<SocketAddr>::contains (baseline) | {base:.1} | 1.00× |");
    println!(
        "| Policy::decide (allowed and refused, half each) | {decide:.1} | {:.2}× |",
        decide / base
    );
}
