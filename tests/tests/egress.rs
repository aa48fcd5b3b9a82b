//! The egress capture: a node runs in its own network namespace, joined to
//! this one by a veth pair; the relay and a DNS-over-HTTPS resolver run on
//! this side, and the node knows its relay only by name. While a whole
//! messaging session runs (messages both ways, one left in a mailbox) and
//! the user deliberately tries to reach addresses and names that are not
//! allowed, tcpdump records everything that crosses the veth. Every packet
//! the node sent must go to its relay's or its resolver's address and port;
//! there must be no plaintext DNS at all; the deliberate attempts must be
//! in `burrow firewall log` and not on the wire, and a refused name must
//! never reach the resolver.
//!
//! Needs root, `ip` (iproute2) and tcpdump: required in CI
//! (BURROW_REQUIRE_TOOLS), skipped loudly elsewhere.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use burrow_tests::doh::{Answer, DnsServer};
use burrow_tests::node::pair_with;
use burrow_tests::{have_tool, is_root, must, RelayProc};

/// A network namespace with one veth link to this namespace; removed on drop.
struct NetNs {
    name: String,
    host_if: String,
    host_ip: String,
    ns_ip: String,
}

impl NetNs {
    fn new() -> NetNs {
        let id = std::process::id() % 250;
        let name = format!("burrow-eg-{}", std::process::id());
        let host_if = format!("bweh{id}");
        let ns_if = format!("bwen{id}");
        let (host_ip, ns_ip) = (format!("10.231.{id}.1"), format!("10.231.{id}.2"));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        must("ip", &["netns", "add", &name]);
        let ns = NetNs {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: host_ip.clone(),
            ns_ip: ns_ip.clone(),
        };
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", name.as_str()];
            all.extend_from_slice(args);
            must("ip", &all);
        };
        // IPv4 only, so the capture holds no IPv6 neighbour discovery.
        exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        must(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ],
        );
        let _ = Command::new("sysctl")
            .args(["-qw", &format!("net.ipv6.conf.{host_if}.disable_ipv6=1")])
            .output();
        must("ip", &["link", "set", &ns_if, "netns", &name]);
        must(
            "ip",
            &["addr", "add", &format!("{host_ip}/24"), "dev", &host_if],
        );
        must("ip", &["link", "set", &host_if, "up"]);
        exec(&["ip", "addr", "add", &format!("{ns_ip}/24"), "dev", &ns_if]);
        exec(&["ip", "link", "set", &ns_if, "up"]);
        exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// tcpdump on the host end of the veth, writing a pcap file.
struct Capture {
    child: Child,
    file: std::path::PathBuf,
}

impl Capture {
    fn start(interface: &str, file: std::path::PathBuf) -> Capture {
        let mut child = Command::new("tcpdump")
            .args(["-i", interface, "-n", "-U", "--immediate-mode", "-w"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump");
        // It says "listening on …" once the capture is open.
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !line.contains("listening on") {
            line.clear();
            if stderr.read_line(&mut line).unwrap_or(0) == 0 || Instant::now() > deadline {
                panic!("tcpdump did not start: {line}");
            }
        }
        std::thread::spawn(move || {
            let mut sink = String::new();
            while stderr.read_line(&mut sink).unwrap_or(0) > 0 {
                sink.clear();
            }
        });
        Capture { child, file }
    }

    /// Stops the capture (SIGINT flushes the file) and returns tcpdump's
    /// reading of it, one packet per line.
    fn stop(mut self) -> Vec<String> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let out = Command::new("tcpdump")
            .args(["-r"])
            .arg(&self.file)
            .args(["-n", "-tt"])
            .output()
            .expect("tcpdump -r");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `SRC > DST` of an IPv4 packet line ("… IP 10.0.0.2.4567 > 10.0.0.1.443: …").
fn endpoints(line: &str) -> Option<(String, String)> {
    let rest = line.split(" IP ").nth(1)?;
    let (src, rest) = rest.split_once(" > ")?;
    let dst = rest.split(':').next()?;
    Some((src.to_string(), dst.to_string()))
}

#[test]
fn a_whole_session_reaches_only_the_relay_and_resolver_and_sends_no_plaintext_dns() {
    if !have_tool("ip") || !have_tool("tcpdump") {
        return;
    }
    if !is_root() {
        if std::env::var_os("BURROW_REQUIRE_TOOLS").is_some() {
            panic!("the egress capture test needs root (CI runs as root)");
        }
        eprintln!("SKIPPED: the egress capture test needs root (network namespaces)");
        return;
    }
    let ns = NetNs::new();
    let relay = RelayProc::start_at(
        tempfile::tempdir().expect("tempdir"),
        &format!("{}:0", ns.host_ip),
        &[],
    );
    let port = relay.line.port;
    let allowed = format!("{}.{port}", ns.host_ip);
    let dns = DnsServer::start(ns.host_ip.parse().expect("ip"));
    let resolver = format!("{}.{}", ns.host_ip, dns.doh.port());
    // The relay by name only: its address comes from the DoH resolver.
    let mut by_name = relay.line.clone();
    by_name.ip = None;
    dns.set(
        &by_name.host,
        Answer::Addrs(vec![ns.host_ip.parse().expect("ip")]),
        300,
    );
    let capture_dir = tempfile::tempdir().expect("tempdir");
    let capture = Capture::start(&ns.host_if, capture_dir.path().join("egress.pcap"));

    // The relay's address is in a private range, so local networks are on.
    let spec = dns.doh_spec();
    let (mut alice, mut bob) =
        pair_with(&by_name, &["--resolver", &spec, "--allow-local-networks"]);
    let list = alice.ok(&["firewall", "list"]);
    assert!(
        list.contains(&format!("{}:{}/tcp", by_name.host, port)),
        "{list}"
    );
    assert!(list.contains("DNS over HTTPS"), "{list}");
    alice.up_under(&["ip", "netns", "exec", &ns.name]);
    bob.up();
    assert_eq!(
        alice.ok(&["send", "bob", "from inside"]).trim(),
        "delivered"
    );
    assert_eq!(
        bob.ok(&["send", "alice", "from outside"]).trim(),
        "delivered"
    );
    bob.kill();
    let out = alice.ok(&["send", "bob", "for the mailbox"]);
    assert!(out.contains("left in their mailbox"), "{out}");
    // Deliberate attempts at endpoints that are not allowed.
    for target in [
        "203.0.113.7:443".to_string(),
        format!("{}:9", ns.host_ip),
        "8.8.8.8:53".to_string(),
    ] {
        let d = alice.ok(&["firewall", "check", &target, "--try"]);
        assert!(d.contains("refused by the firewall"), "{target}: {d}");
    }
    let d = alice.ok(&["firewall", "check", "9.9.9.9:53", "--udp", "--try"]);
    assert!(d.contains("refused by the firewall"), "{d}");
    dns.set(
        "elsewhere.test",
        Answer::Addrs(vec![ns.host_ip.parse().expect("ip")]),
        300,
    );
    let d = alice.ok(&["firewall", "check", "elsewhere.test", "--try"]);
    assert!(d.contains("refused by the firewall"), "{d}");
    assert_eq!(
        dns.asked("elsewhere.test", "A") + dns.asked("elsewhere.test", "AAAA"),
        0,
        "a refused name is never sent to the resolver"
    );
    assert!(
        dns.asked(&by_name.host, "A") >= 1,
        "the relay's name was resolved over DoH"
    );
    std::thread::sleep(Duration::from_millis(500));
    let packets = capture.stop();

    let from_node: Vec<(String, String)> = packets
        .iter()
        .filter_map(|l| endpoints(l))
        .filter(|(src, _)| src.starts_with(&format!("{}.", ns.ns_ip)))
        .collect();
    assert!(
        from_node.len() > 20,
        "the session is on the wire: {packets:#?}"
    );
    for (src, dst) in &from_node {
        assert!(
            dst == &allowed || dst == &resolver,
            "{src} sent to a non-allowed endpoint {dst}"
        );
    }
    assert!(
        from_node.iter().any(|(_, dst)| dst == &resolver),
        "the name went over DoH on the wire"
    );
    for line in &packets {
        assert!(
            line.contains(" IP ") || line.contains("ARP"),
            "only IPv4 to the relay and ARP: {line}"
        );
        assert!(
            !line.contains(".53:") && !line.contains(".853:") && !line.contains("domain"),
            "no DNS on the wire: {line}"
        );
        assert!(!line.contains("203.0.113.7"), "{line}");
    }
    // The relay line lists HTTP/2 first: the session is TCP to the relay.
    assert!(
        packets
            .iter()
            .any(|l| l.contains(&format!("> {allowed}: Flags"))),
        "{packets:#?}"
    );
    eprintln!(
        "egress capture: {} packets, {} from the node, all to {allowed} or {resolver}",
        packets.len(),
        from_node.len()
    );

    let log = alice.ok(&["firewall", "log"]);
    for target in [
        "203.0.113.7:443/tcp",
        &format!("{}:9/tcp", ns.host_ip),
        "8.8.8.8:53/tcp",
        "9.9.9.9:53/udp",
        "elsewhere.test:443/tcp",
    ] {
        assert!(log.contains(target), "{target} in the log: {log}");
    }
    alice.kill();
}
