//! Encrypted DNS through the firewall, against the local DoH/DoT server:
//! names resolve only over the configured resolver, answers are cached
//! within their TTL, CNAME chains are followed, a name resolving into the
//! local network is refused, a name that is not allowed is never even
//! asked about, and a resolver that cannot be reached hands over to the
//! next one in the list.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use burrow_firewall::{
    Audit, DenyReason, Dialer, Entry, EntrySource, Error, Host, Name, Policy, Proto,
    ResolverLimits, ResolverList, Target, Verdict,
};
use burrow_tests::doh::{Answer, DnsServer};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn name(host: &str, port: u16, proto: Proto) -> Target {
    Target::new(Host::Name(Name::parse(host).expect("name")), port, proto)
}

/// A dialer allowing `names` on `port` (TCP and UDP) and the resolver
/// `spec`, local networks as `allow_local` says.
fn dialer(spec: &str, names: &[&str], port: u16, allow_local: bool) -> Dialer {
    dialer_with(spec, names, port, allow_local, ResolverLimits::default())
}

/// [`dialer`] with resolver limits of the test's choosing.
fn dialer_with(
    spec: &str,
    names: &[&str],
    port: u16,
    allow_local: bool,
    limits: ResolverLimits,
) -> Dialer {
    let spec = ResolverList::parse(spec).expect("spec");
    let mut entries = spec.entries().expect("resolver entries");
    for n in names {
        for proto in [Proto::Tcp, Proto::Udp] {
            entries.push(Entry::new(
                name(n, port, proto),
                EntrySource::HomeRelay,
                "relay",
            ));
        }
    }
    let dialer = Dialer::new(Policy::new(entries, allow_local), Audit::new(1000, true));
    burrow_node::guarded::set_resolver_with(&dialer, &spec, limits).expect("resolver");
    dialer
}

async fn listener() -> (tokio::net::TcpListener, u16) {
    let l = tokio::net::TcpListener::bind((LOOPBACK, 0))
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    (l, port)
}

#[tokio::test]
async fn doh_resolves_caches_and_follows_cnames() {
    let dns = DnsServer::start(LOOPBACK);
    let (l, port) = listener().await;
    dns.set("relay.test", Answer::Addrs(vec![LOOPBACK]), 300);
    dns.set("alias.test", Answer::Cname("edge.cdn.test".into()), 300);
    dns.set("edge.cdn.test", Answer::Addrs(vec![LOOPBACK]), 300);
    let d = dialer(&dns.doh_spec(), &["relay.test", "alias.test"], port, true);

    let s = d
        .connect_tcp("test", &name("relay.test", port, Proto::Tcp))
        .await
        .expect("connects by name over DoH");
    assert_eq!(
        s.peer_addr().expect("peer"),
        SocketAddr::new(LOOPBACK, port)
    );
    let _ = l.accept().await.expect("accepted");
    let asked = dns.asked("relay.test", "A");
    assert_eq!(asked, 1, "one question for the name");

    // Within the TTL the answer comes from the cache.
    for _ in 0..5 {
        d.connect_tcp("test", &name("RELAY.test.", port, Proto::Tcp))
            .await
            .expect("cached");
        let _ = l.accept().await.expect("accepted");
    }
    assert_eq!(
        dns.asked("relay.test", "A"),
        asked,
        "answered from the cache"
    );
    assert_eq!(
        dns.asked("relay.test", "AAAA"),
        1,
        "the missing AAAA is remembered too"
    );

    // A CNAME chain ends at an address that is decided under the asked name.
    let (_, addr) = d
        .udp_for("test", &name("alias.test", port, Proto::Udp))
        .await
        .expect("CNAME chain");
    assert_eq!(addr, SocketAddr::new(LOOPBACK, port));
    assert_eq!(
        dns.asked("edge.cdn.test", "A"),
        0,
        "the chain came in one answer"
    );

    // Every socket the resolver opened went to the resolver's own entry.
    let resolver_records: Vec<_> = d
        .audit()
        .records()
        .filter(|r| r.component == "resolver")
        .cloned()
        .collect();
    assert!(!resolver_records.is_empty());
    for r in &resolver_records {
        assert_eq!(r.target, Target::addr(dns.doh, Proto::Tcp));
        assert!(matches!(r.verdict, Verdict::Approved { .. }), "{r:?}");
    }
}

#[tokio::test]
async fn answers_expire_with_their_ttl() {
    let dns = DnsServer::start(LOOPBACK);
    let (_l, port) = listener().await;
    dns.set("short.test", Answer::Addrs(vec![LOOPBACK]), 1);
    let d = dialer(&dns.doh_spec(), &["short.test"], port, true);
    let t = name("short.test", port, Proto::Udp);
    d.udp_for("test", &t).await.expect("first");
    d.udp_for("test", &t).await.expect("cached");
    assert_eq!(dns.asked("short.test", "A"), 1);
    // The TTL is one second: the next lookup after it asks again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    d.udp_for("test", &t).await.expect("after expiry");
    assert_eq!(dns.asked("short.test", "A"), 2);
}

#[tokio::test]
async fn dot_works_too() {
    let dns = DnsServer::start(LOOPBACK);
    let (_l, port) = listener().await;
    dns.set("relay.test", Answer::Addrs(vec![LOOPBACK]), 300);
    let d = dialer(&dns.dot_spec(), &["relay.test"], port, true);
    let (_, addr) = d
        .udp_for("test", &name("relay.test", port, Proto::Udp))
        .await
        .expect("over DoT");
    assert_eq!(addr.ip(), LOOPBACK);
    assert_eq!(dns.asked("relay.test", "A"), 1);
}

#[tokio::test]
async fn names_not_allowed_are_never_asked_about() {
    let dns = DnsServer::start(LOOPBACK);
    dns.set("elsewhere.test", Answer::Addrs(vec![LOOPBACK]), 300);
    let d = dialer(&dns.doh_spec(), &["relay.test"], 443, true);
    for t in [
        name("elsewhere.test", 443, Proto::Tcp),
        name("relay.test", 8443, Proto::Tcp),
    ] {
        let err = d.connect_tcp("test", &t).await.expect_err("refused");
        assert!(matches!(err, Error::Denied(_)), "{err}");
    }
    assert_eq!(dns.total_asked(), 0, "no DNS question for a refused name");
    let refused = d
        .audit()
        .records()
        .filter(|r| matches!(r.verdict, Verdict::Refused { .. }))
        .count();
    assert_eq!(refused, 2, "both refusals are in the audit log");
}

#[tokio::test]
async fn a_name_resolving_into_the_local_network_is_refused() {
    let dns = DnsServer::start(LOOPBACK);
    let (_l, port) = listener().await;
    // A permitted name whose answer points into the local network, directly
    // or at the end of a CNAME chain: DNS rebinding.
    dns.set(
        "relay.test",
        Answer::Addrs(vec!["10.0.0.7".parse().expect("ip")]),
        300,
    );
    dns.set("alias.test", Answer::Cname("inner.test".into()), 300);
    dns.set("inner.test", Answer::Addrs(vec![LOOPBACK]), 300);
    dns.set(
        "mapped.test",
        Answer::Addrs(vec!["::ffff:192.168.1.1".parse().expect("ip")]),
        300,
    );
    // Local networks are off; the resolver itself is on loopback, which is
    // allowed because it is configured by address.
    let d = dialer(
        &dns.doh_spec(),
        &["relay.test", "alias.test", "mapped.test"],
        port,
        false,
    );
    for host in ["relay.test", "alias.test", "mapped.test"] {
        let err = d
            .connect_tcp("test", &name(host, port, Proto::Tcp))
            .await
            .expect_err(host);
        match err {
            Error::Denied(denied) => {
                assert_eq!(denied.reason, DenyReason::LocalAddress, "{host}");
                assert!(
                    denied.via.is_some(),
                    "the refusal names the resolved address"
                );
            }
            e => panic!("{host}: {e}"),
        }
    }
    assert!(dns.asked("mapped.test", "A") + dns.asked("mapped.test", "AAAA") >= 1);
}

/// How many sockets the resolver component opened to `addr`.
fn resolver_dials(d: &Dialer, addr: SocketAddr) -> usize {
    d.audit()
        .records()
        .filter(|r| r.component == "resolver" && r.target == Target::addr(addr, Proto::Tcp))
        .count()
}

/// A DNS server answering loopback for `names`, and a listener there.
async fn dns_knowing(names: &[&str]) -> (DnsServer, tokio::net::TcpListener, u16) {
    let dns = DnsServer::start(LOOPBACK);
    for n in names {
        dns.set(n, Answer::Addrs(vec![LOOPBACK]), 300);
    }
    let (l, port) = listener().await;
    (dns, l, port)
}

/// A DoH spec like `dns`'s (same name and pin) for another address.
fn spec_at(dns: &DnsServer, addr: SocketAddr) -> String {
    dns.doh_spec().replace(
        &format!(":{}/", dns.doh.port()),
        &format!(":{}/", addr.port()),
    )
}

#[tokio::test]
async fn a_resolver_that_cannot_be_reached_hands_over_to_the_next() {
    let (dns, _l, port) = dns_knowing(&["relay.test", "other.test", "third.test"]).await;
    // First in the list: a port nothing listens on (connection refused).
    let dead = {
        let l = std::net::TcpListener::bind((LOOPBACK, 0)).expect("bind");
        l.local_addr().expect("addr")
    };
    let list = format!("{}, {}", spec_at(&dns, dead), dns.doh_spec());
    let limits = ResolverLimits {
        failed_wait: Duration::from_secs(2),
        ..ResolverLimits::default()
    };
    let d = dialer_with(
        &list,
        &["relay.test", "other.test", "third.test"],
        port,
        true,
        limits,
    );

    let t = name("relay.test", port, Proto::Udp);
    let (_, addr) = d.udp_for("test", &t).await.expect("the second answers");
    assert_eq!(addr.ip(), LOOPBACK);
    // (hickory asks A and AAAA at once, each on a connection attempt)
    let tried = resolver_dials(&d, dead);
    assert!(tried >= 1, "the first was tried");
    assert_eq!(dns.asked("relay.test", "A"), 1);

    // While it is in disgrace the dead one is asked last: a new name goes
    // straight to the second.
    d.udp_for("test", &name("other.test", port, Proto::Udp))
        .await
        .expect("second again");
    assert_eq!(resolver_dials(&d, dead), tried, "not tried again so soon");

    // After the wait it comes first again (and still fails over).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    d.udp_for("test", &name("third.test", port, Proto::Udp))
        .await
        .expect("after the wait");
    assert!(resolver_dials(&d, dead) > tried, "asked first again");
}

#[tokio::test]
async fn a_silent_resolver_costs_its_timeout_once() {
    let (dns, _l, port) = dns_knowing(&["relay.test", "other.test"]).await;
    // First in the list: accepts the connection and never says a word.
    let silent = tokio::net::TcpListener::bind((LOOPBACK, 0))
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let list = format!("{}, {}", spec_at(&dns, silent_addr), dns.doh_spec());
    let limits = ResolverLimits {
        timeout: Duration::from_millis(800),
        ..ResolverLimits::default()
    };
    let d = dialer_with(&list, &["relay.test", "other.test"], port, true, limits);

    let started = std::time::Instant::now();
    d.udp_for("test", &name("relay.test", port, Proto::Udp))
        .await
        .expect("the second answers");
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "the first was waited for: {:?}",
        started.elapsed()
    );
    let tried = resolver_dials(&d, silent_addr);
    let started = std::time::Instant::now();
    d.udp_for("test", &name("other.test", port, Proto::Udp))
        .await
        .expect("second again");
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "the silent one is not waited for again: {:?}",
        started.elapsed()
    );
    assert_eq!(resolver_dials(&d, silent_addr), tried);
    held.abort();
}

#[tokio::test]
async fn an_answer_is_final_even_no_such_name() {
    let first = DnsServer::start(LOOPBACK);
    let second = DnsServer::start(LOOPBACK);
    let (_l, port) = listener().await;
    // Only the second knows the name; the first says it does not exist.
    second.set("relay.test", Answer::Addrs(vec![LOOPBACK]), 300);
    let list = format!("{}, {}", first.doh_spec(), second.doh_spec());
    let d = dialer(&list, &["relay.test"], port, true);
    let err = d
        .udp_for("test", &name("relay.test", port, Proto::Udp))
        .await
        .expect_err("no such name");
    assert!(matches!(err, Error::Resolve(_)), "{err}");
    assert!(first.asked("relay.test", "A") >= 1);
    assert_eq!(
        second.total_asked(),
        0,
        "the second was not asked to differ"
    );

    // Both unreachable: the error names each with its reason.
    let dead: Vec<SocketAddr> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind((LOOPBACK, 0))
                .expect("bind")
                .local_addr()
                .expect("addr")
        })
        .collect();
    let list = format!("{}, {}", spec_at(&first, dead[0]), spec_at(&first, dead[1]));
    let d = dialer(&list, &["relay.test"], port, true);
    let err = d
        .udp_for("test", &name("relay.test", port, Proto::Udp))
        .await
        .expect_err("nobody answers");
    let text = err.to_string();
    for a in &dead {
        assert!(text.contains(&format!(":{}/dns-query", a.port())), "{text}");
    }
}

/// A dialer that allows relay.test on `port` and nothing else: no resolver
/// entry, and no resolver until one is set.
fn relay_only(port: u16) -> Dialer {
    let relay = Entry::new(
        name("relay.test", port, Proto::Tcp),
        EntrySource::HomeRelay,
        "relay",
    );
    Dialer::new(Policy::new(vec![relay], true), Audit::default())
}

#[tokio::test]
async fn resolver_failures_are_clear_errors() {
    let dns = DnsServer::start(LOOPBACK);
    let (_l, port) = listener().await;

    // No resolver configured at all.
    let plain = relay_only(port);
    let err = plain
        .connect_tcp("test", &name("relay.test", port, Proto::Tcp))
        .await
        .expect_err("no resolver");
    assert!(err.to_string().contains("no resolver"), "{err}");

    // A name the resolver does not know.
    let d = dialer(&dns.doh_spec(), &["missing.test"], port, true);
    let err = d
        .connect_tcp("test", &name("missing.test", port, Proto::Tcp))
        .await
        .expect_err("NXDOMAIN");
    assert!(matches!(err, Error::Resolve(_)), "{err}");
    assert!(err.to_string().contains("missing.test"), "{err}");

    // A resolver whose certificate does not match the pin: nothing resolves.
    dns.set("relay.test", Answer::Addrs(vec![LOOPBACK]), 300);
    let wrong_pin = dns.doh_spec().replace(&dns.pin, &"A".repeat(43));
    let d = dialer(&wrong_pin, &["relay.test"], port, true);
    let err = d
        .connect_tcp("test", &name("relay.test", port, Proto::Tcp))
        .await
        .expect_err("bad certificate");
    assert!(matches!(err, Error::Resolve(_)), "{err}");
    assert_eq!(dns.asked("relay.test", "A"), 0, "no answer was accepted");

    // The resolver's address missing from the allowlist: its own socket is
    // refused and logged under the resolver component.
    let spec = ResolverList::parse(&dns.doh_spec()).expect("spec");
    let d = relay_only(port);
    burrow_node::guarded::set_resolver(&d, &spec).expect("resolver");
    let err = d
        .connect_tcp("test", &name("relay.test", port, Proto::Tcp))
        .await
        .expect_err("resolver not allowed");
    assert!(matches!(err, Error::Resolve(_)), "{err}");
    let log: Vec<_> = d.audit().records().cloned().collect();
    assert!(
        log.iter()
            .any(|r| r.component == "resolver" && r.target == Target::addr(dns.doh, Proto::Tcp)),
        "{log:?}"
    );
}

/// The relay's own outbound traffic: an `--upstream` origin given by name
/// is resolved over the relay's DoH resolver, and a name that resolves
/// into the local network is refused unless the operator allowed it.
#[tokio::test]
async fn a_relay_reaches_its_upstream_by_name_over_doh() {
    use burrow_node::guarded::GuardedSockets;
    use burrow_obfs::{Carrier, Client};
    use std::sync::Arc;

    let dns = DnsServer::start(LOOPBACK);
    let origin = burrow_tests::origin::Origin::start();
    dns.set("origin.test", Answer::Addrs(vec![LOOPBACK]), 300);
    let upstream = format!("http://origin.test:{}", origin.port);
    let spec = dns.doh_spec();
    for (allow, expect) in [(true, 200u16), (false, 502)] {
        let mut args = vec!["--upstream", upstream.as_str(), "--resolver", spec.as_str()];
        if allow {
            args.push("--allow-local-networks");
        }
        let relay = burrow_tests::RelayProc::start(&args);
        let sockets = GuardedSockets::for_relay(&relay.line, "test").expect("sockets");
        let client = Client::new(relay.line.clone(), Arc::new(sockets)).expect("client");
        for carrier in [Carrier::H2, Carrier::H3] {
            let resp = client
                .fetch(carrier, http::Method::GET, "/by-name")
                .await
                .expect("fetch");
            assert_eq!(
                resp.status().as_u16(),
                expect,
                "{carrier:?}, local allowed: {allow}"
            );
            if allow {
                assert_eq!(resp.body().as_ref(), b"hello from origin /by-name\n");
            } else {
                assert!(
                    relay.log().contains("not allowed"),
                    "the refusal is in the relay's log: {}",
                    relay.log()
                );
            }
        }
    }
    assert_eq!(
        dns.asked("origin.test", "A"),
        2,
        "each relay asked once, then cached"
    );
}
