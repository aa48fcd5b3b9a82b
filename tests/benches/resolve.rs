//! The cost of resolving a relay's name through the firewall, against the
//! local DoH server on loopback, side by side in the same run:
//!
//! - a cached name (`Dialer::approve`: the check before any query, the
//!   cache lookup, and the decision on the answer),
//! - an uncached name (a fresh name each time: one DoH round trip over the
//!   already open HTTP/2 connection to the resolver),
//! - the decision alone for an address (no name), the floor.
//!
//! Run: `cargo bench -p burrow-tests --bench resolve` (or `bench/run.sh dns`).
//! BENCH_LOOKUPS sets the number of lookups per kind (default 20,000 cached,
//! 2,000 uncached).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use burrow_firewall::{
    Audit, Dialer, Entry, EntrySource, Host, Name, Policy, Proto, ResolverList, Target,
};
use burrow_tests::doh::{Answer, DnsServer};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn name(host: &str) -> Target {
    Target::new(
        Host::Name(Name::parse(host).expect("name")),
        443,
        Proto::Tcp,
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let cached_n: usize = std::env::var("BENCH_LOOKUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 200 } else { 20_000 });
    let uncached_n = (cached_n / 10).max(20);
    if smoke {
        println!("(a quick check that the benchmark works: measure with `cargo bench`)\n");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dns = DnsServer::start(LOOPBACK);
    let spec = ResolverList::parse(&dns.doh_spec()).expect("spec");
    let mut entries = spec.entries().expect("entries");
    dns.set("relay.test", Answer::Addrs(vec![LOOPBACK]), 3600);
    entries.push(Entry::new(
        name("relay.test"),
        EntrySource::HomeRelay,
        "relay",
    ));
    entries.push(Entry::new(
        Target::addr(SocketAddr::new(LOOPBACK, 443), Proto::Tcp),
        EntrySource::HomeRelay,
        "relay by address",
    ));
    for i in 0..uncached_n {
        let n = format!("u{i}.test");
        dns.set(&n, Answer::Addrs(vec![LOOPBACK]), 3600);
        entries.push(Entry::new(
            name(&n),
            EntrySource::ContactRelay {
                contact: format!("c{i}"),
            },
            "relay",
        ));
    }
    let dialer = Dialer::new(Policy::new(entries, true), Audit::default());
    burrow_node::guarded::set_resolver(&dialer, &spec).expect("resolver");

    let (cached, uncached, floor) = rt.block_on(async {
        let relay = name("relay.test");
        // Warm: the first lookup opens the resolver connection and fills the cache.
        dialer.approve("bench", &relay).await.expect("warm");
        let mut cached = Vec::with_capacity(cached_n);
        for _ in 0..cached_n {
            let t = Instant::now();
            let a = dialer.approve("bench", &relay).await.expect("cached");
            cached.push(t.elapsed().as_nanos() as f64 / 1000.0);
            assert_eq!(a[0].addr().ip(), LOOPBACK);
        }
        let mut uncached = Vec::with_capacity(uncached_n);
        for i in 0..uncached_n {
            let target = name(&format!("u{i}.test"));
            let t = Instant::now();
            dialer.approve("bench", &target).await.expect("uncached");
            uncached.push(t.elapsed().as_nanos() as f64 / 1000.0);
        }
        let by_addr = Target::addr(SocketAddr::new(LOOPBACK, 443), Proto::Tcp);
        let mut floor = Vec::with_capacity(cached_n);
        for _ in 0..cached_n {
            let t = Instant::now();
            dialer.approve("bench", &by_addr).await.expect("address");
            floor.push(t.elapsed().as_nanos() as f64 / 1000.0);
        }
        (cached, uncached, floor)
    });
    for rtype in ["A", "AAAA"] {
        assert_eq!(
            dns.asked("relay.test", rtype),
            1,
            "the cached name was asked once for {rtype}"
        );
    }
    let report = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (percentile(&v, 0.5), percentile(&v, 0.99))
    };
    let (c50, c99) = report(cached);
    let (u50, u99) = report(uncached);
    let (f50, f99) = report(floor);
    println!("Name resolution through the firewall, local DoH server on loopback ({cached_n} cached, {uncached_n} uncached):\n");
    println!("| what | p50 µs | p99 µs | p50 vs address |");
    println!("|---|---|---|---|");
    println!("| decision for an address (no name; floor) | {f50:.2} | {f99:.2} | 1.00× |");
    println!(
        "| cached name (check, cache, decision) | {c50:.2} | {c99:.2} | {:.1}× |",
        c50 / f50
    );
    println!(
        "| uncached name (one DoH query over the open connection) | {u50:.1} | {u99:.1} | {:.0}× |",
        u50 / f50
    );
}
