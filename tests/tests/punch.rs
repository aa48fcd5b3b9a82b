//! Hole punching between two users who are both behind NAT (`burrow up
//! --punch`), on a small internet made of network namespaces:
//!
//! ```text
//!  alice ── nat-a ──┐                      ┌── nat-b ── bob
//!  192.168.1.2      10.N.1.2   inet router   10.N.2.2     192.168.2.2
//!                              └── this namespace: the relay (10.N.9.1)
//! ```
//!
//! Each NAT masquerades its user and, like a home router, drops whatever
//! arrives from outside that it did not see go out first. Alice's first
//! message asks Bob through the relay to punch; after that their messages
//! go between the two NATs directly: the relay opens no further circuit,
//! and Bob's NAT forwards datagrams from Alice's NAT. A NAT that picks a
//! new port for every destination (`--random-fully`) defeats the punch,
//! and the relay carries the messages instead.
//!
//! Needs root, `ip` (iproute2) and `iptables`: required in CI
//! (BURROW_REQUIRE_TOOLS), skipped loudly elsewhere.

use std::process::Command;
use std::time::{Duration, Instant};

use burrow_tests::node::{pair, NodeProc};
use burrow_tests::{free_port, have_tool, is_root, must, relay_metric, RelayProc};

fn can_run() -> bool {
    if !have_tool("ip") || !have_tool("iptables") {
        return false;
    }
    if !is_root() {
        if std::env::var_os("BURROW_REQUIRE_TOOLS").is_some() {
            panic!("the hole punching test needs root (CI runs as root)");
        }
        eprintln!("SKIPPED: the hole punching test needs root (network namespaces)");
        return false;
    }
    true
}

/// The namespaces and links of the picture above; removed on drop.
struct Internet {
    tag: String,
    net: u32,
    /// Namespaces: inet, nat-a, nat-b, alice, bob.
    names: Vec<String>,
    host_if: String,
}

impl Internet {
    /// `random_ports_at_b`: Bob's NAT gives each destination a random port.
    fn new(tag: &str, random_ports_at_b: bool) -> Internet {
        let pid = std::process::id();
        let net = 100 + (pid % 50) * 2 + u32::from(random_ports_at_b);
        let tag = format!("bp{}{tag}", pid % 10_000);
        let ns = |n: &str| format!("{tag}-{n}");
        let names: Vec<String> = ["inet", "nat-a", "nat-b", "alice", "bob"]
            .into_iter()
            .map(ns)
            .collect();
        let net_ = Internet {
            tag: tag.clone(),
            net,
            names: names.clone(),
            host_if: format!("{tag}h"),
        };
        net_.remove();
        for n in &names {
            must("ip", &["netns", "add", n]);
            net_.exec(n, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
            net_.exec(n, &["ip", "link", "set", "lo", "up"]);
        }
        let (inet, nat_a, nat_b, alice, bob) = (
            &ns("inet"),
            &ns("nat-a"),
            &ns("nat-b"),
            &ns("alice"),
            &ns("bob"),
        );
        // This namespace (the relay) <-> inet.
        net_.link(
            None,
            &net_.host_if,
            &format!("10.{net}.9.1/24"),
            inet,
            &format!("{tag}i9"),
            &format!("10.{net}.9.2/24"),
        );
        must(
            "ip",
            &[
                "route",
                "add",
                &format!("10.{net}.0.0/16"),
                "via",
                &format!("10.{net}.9.2"),
            ],
        );
        // inet <-> each NAT's outside; each NAT's inside <-> its user.
        net_.link(
            Some(inet),
            &format!("{tag}i1"),
            &format!("10.{net}.1.1/24"),
            nat_a,
            &format!("{tag}a1"),
            &format!("10.{net}.1.2/24"),
        );
        net_.link(
            Some(inet),
            &format!("{tag}i2"),
            &format!("10.{net}.2.1/24"),
            nat_b,
            &format!("{tag}b1"),
            &format!("10.{net}.2.2/24"),
        );
        net_.link(
            Some(nat_a),
            &format!("{tag}a2"),
            "192.168.1.1/24",
            alice,
            &format!("{tag}ua"),
            "192.168.1.2/24",
        );
        net_.link(
            Some(nat_b),
            &format!("{tag}b2"),
            "192.168.2.1/24",
            bob,
            &format!("{tag}ub"),
            "192.168.2.2/24",
        );
        net_.exec(inet, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        net_.exec(
            nat_a,
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("10.{net}.1.1"),
            ],
        );
        net_.exec(
            nat_b,
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("10.{net}.2.1"),
            ],
        );
        net_.exec(
            alice,
            &["ip", "route", "add", "default", "via", "192.168.1.1"],
        );
        net_.exec(
            bob,
            &["ip", "route", "add", "default", "via", "192.168.2.1"],
        );
        for (nat, wan, random) in [
            (nat_a, format!("{tag}a1"), false),
            (nat_b, format!("{tag}b1"), random_ports_at_b),
        ] {
            net_.exec(nat, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            let mut masq = vec![
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                &wan,
                "-j",
                "MASQUERADE",
            ];
            if random {
                masq.push("--random-fully");
            }
            net_.exec(nat, &masq);
            // A home router: from outside, only what answers what went out.
            for chain in ["INPUT", "FORWARD"] {
                net_.exec(
                    nat,
                    &[
                        "iptables",
                        "-A",
                        chain,
                        "-i",
                        &wan,
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "ESTABLISHED,RELATED",
                        "-j",
                        "ACCEPT",
                    ],
                );
                net_.exec(nat, &["iptables", "-A", chain, "-i", &wan, "-j", "DROP"]);
            }
        }
        // Counts (without deciding) what Bob's NAT forwards from Alice's.
        net_.exec(
            nat_b,
            &[
                "iptables",
                "-I",
                "FORWARD",
                "1",
                "-s",
                &format!("10.{net}.1.2"),
            ],
        );
        net_
    }

    fn ns(&self, n: &str) -> String {
        format!("{}-{n}", self.tag)
    }

    fn exec(&self, ns: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", ns];
        all.extend_from_slice(args);
        must("ip", &all)
    }

    /// A veth pair: `a` in namespace `a_ns` (this one if `None`), `b` in `b_ns`.
    fn link(&self, a_ns: Option<&str>, a: &str, a_ip: &str, b_ns: &str, b: &str, b_ip: &str) {
        must("ip", &["link", "add", a, "type", "veth", "peer", "name", b]);
        must("ip", &["link", "set", b, "netns", b_ns]);
        self.exec(b_ns, &["ip", "addr", "add", b_ip, "dev", b]);
        self.exec(b_ns, &["ip", "link", "set", b, "up"]);
        match a_ns {
            Some(ns) => {
                must("ip", &["link", "set", a, "netns", ns]);
                self.exec(ns, &["ip", "addr", "add", a_ip, "dev", a]);
                self.exec(ns, &["ip", "link", "set", a, "up"]);
            }
            None => {
                must("ip", &["addr", "add", a_ip, "dev", a]);
                must("ip", &["link", "set", a, "up"]);
            }
        }
    }

    fn relay_ip(&self) -> String {
        format!("10.{}.9.1", self.net)
    }

    /// Packets Bob's NAT forwarded that came from Alice's NAT.
    fn forwarded_from_alice(&self) -> u64 {
        let out = self.exec(
            &self.ns("nat-b"),
            &["iptables", "-L", "FORWARD", "1", "-v", "-n", "-x"],
        );
        out.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a packet count: {out}"))
    }

    fn remove(&self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["route", "del", &format!("10.{}.0.0/16", self.net)])
            .output();
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Waits until `burrow id` says the home relay reported the user's
/// public QUIC address.
fn wait_until_punchable(user: &NodeProc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let id = user.ok(&["id"]);
        if id.contains("hole punching: ready") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no public address learned: {id}\n{}",
            user.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `burrow send --json`: (outcome, route).
fn send(user: &NodeProc, to: &str, text: &str) -> (String, String) {
    let out = user.ok(&["send", to, text, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    (field("outcome"), field("route"))
}

/// Two users behind their NATs, verified to each other, both punching.
fn punching_pair(net: &Internet) -> (RelayProc, u16, NodeProc, NodeProc) {
    let metrics = free_port();
    let relay = RelayProc::start_at(
        tempfile::tempdir().expect("tempdir"),
        &format!("{}:0", net.relay_ip()),
        &["--metrics", &format!("127.0.0.1:{metrics}")],
    );
    let (mut alice, mut bob) = pair(&relay.line);
    alice.ok(&["contact", "verify", "bob", "--confirm"]);
    bob.ok(&["contact", "verify", "alice", "--confirm"]);
    alice.up_under_with(&["ip", "netns", "exec", &net.ns("alice")], &["--punch"]);
    bob.up_under_with(&["ip", "netns", "exec", &net.ns("bob")], &["--punch"]);
    wait_until_punchable(&alice);
    wait_until_punchable(&bob);
    (relay, metrics, alice, bob)
}

#[test]
fn two_users_behind_nat_punch_a_hole_and_then_talk_without_the_relay() {
    if !can_run() {
        return;
    }
    let net = Internet::new("p", false);
    let (_relay, metrics, mut alice, mut bob) = punching_pair(&net);
    let circuits = || relay_metric(metrics, "burrow_relay_circuits_opened_total");

    // The first message asks Bob to punch, through the relay.
    let sent = send(&alice, "bob", "through the hole");
    assert_eq!(
        sent,
        ("delivered".into(), "hole".into()),
        "ALICE {}\nBOB {}",
        alice.log(),
        bob.log()
    );
    assert!(
        alice.log().contains("a hole is open to bob"),
        "{}",
        alice.log()
    );
    let asked = circuits();
    assert!(asked >= 1.0, "the punch request went through a circuit");
    let forwarded = net.forwarded_from_alice();
    assert!(forwarded > 0, "Bob's NAT let Alice's datagrams in");

    // From now on, both ways, without the relay.
    for i in 1..=3 {
        let sent = send(&alice, "bob", &format!("direct {i}"));
        assert_eq!(sent, ("delivered".into(), "hole".into()));
    }
    // Bob's reply takes the connection Alice opened through the hole.
    let sent = send(&bob, "alice", "and back");
    assert_eq!(
        sent,
        ("delivered".into(), "direct".into()),
        "BOB {}",
        bob.log()
    );
    assert_eq!(circuits(), asked, "no circuit after the hole was open");
    assert!(
        net.forwarded_from_alice() > forwarded,
        "the messages crossed Bob's NAT from Alice's"
    );
    let got = bob.wait_messages("alice", "four messages", |m| m.len() >= 5);
    let texts: Vec<&str> = got
        .iter()
        .filter(|(d, _, _)| d == "in")
        .map(|(_, t, _)| t.as_str())
        .collect();
    assert_eq!(
        texts,
        ["through the hole", "direct 1", "direct 2", "direct 3"]
    );
    assert!(alice
        .messages("bob")
        .iter()
        .any(|(d, t, _)| d == "in" && t == "and back"));
    // While the node runs, the punched endpoint is in the policy it lists
    // (Bob's NAT's public address, from where Alice dialled).
    let list = alice.ok(&["firewall", "list"]);
    assert!(
        list.contains(&format!("10.{}.2.2:", net.net))
            && list.contains("hole punched with contact bob"),
        "{list}"
    );
    // Nothing either side needed was held back by its firewall.
    for user in [&alice, &bob] {
        let log = user.ok(&["firewall", "log"]);
        assert!(!log.contains("punch"), "{log}");
    }
    for user in [&alice, &bob] {
        assert!(!user.log().contains("direct 1"), "no message text in logs");
    }
    alice.kill();
    bob.kill();
}

#[test]
fn a_nat_that_changes_ports_defeats_the_punch_and_the_relay_carries_on() {
    if !can_run() {
        return;
    }
    let net = Internet::new("r", true);
    let (_relay, metrics, mut alice, mut bob) = punching_pair(&net);
    let circuits = || relay_metric(metrics, "burrow_relay_circuits_opened_total");
    let sent = send(&alice, "bob", "hole or not");
    assert_eq!(
        sent,
        ("delivered".into(), "relay".into()),
        "ALICE {}",
        alice.log()
    );
    assert!(
        alice.log().contains("no direct connection to bob"),
        "{}",
        alice.log()
    );
    // The relay carries the next ones at once (no new punch for a while).
    let sent = send(&alice, "bob", "relayed");
    assert_eq!(sent, ("delivered".into(), "relay".into()));
    assert!(circuits() >= 1.0);
    let got = bob.wait_messages("alice", "two messages", |m| m.len() >= 2);
    assert_eq!(got.len(), 2);
    alice.kill();
    bob.kill();
}
