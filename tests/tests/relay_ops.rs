//! What an operator runs a relay with for months: the Prometheus endpoint
//! (scraped with curl before and after traffic) and a graceful stop on
//! SIGTERM (new connections refused at once, open circuits carried on for
//! the drain time, then a clean exit).

use std::process::Command;
use std::time::{Duration, Instant};

use burrow_obfs::{Carrier, GateSecret};
use burrow_tests::node::pair;
use burrow_tests::{free_port, have_tool, run, RelayProc};

/// `GET /metrics` with curl, as Prometheus would; every sample by name.
fn scrape(port: u16) -> Vec<(String, f64)> {
    let (ok, out, err) = run(Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}/metrics")));
    assert!(ok, "scrape: {err}");
    String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("name value");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

fn value(samples: &[(String, f64)], name: &str) -> f64 {
    samples
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("{name} missing from {samples:?}"))
}

#[test]
fn metrics_move_with_traffic_and_name_no_one() {
    if !have_tool("curl") {
        return;
    }
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let relay = RelayProc::start(&["--metrics", &addr]);
    let before = scrape(port);
    for name in [
        "burrow_relay_peers_connected",
        "burrow_relay_reservations",
        "burrow_relay_circuits",
        "burrow_relay_mailbox_messages",
        "burrow_front_tunnels_opened_total",
        "burrow_tunnel_received_bytes_total",
    ] {
        assert_eq!(value(&before, name), 0.0, "{name} before any traffic");
    }
    assert!(value(&before, "process_resident_memory_bytes") > 1e6);
    // The bounds, for dashboards and alerts (the defaults here).
    assert_eq!(value(&before, "burrow_limit_reservations"), 4096.0);
    assert_eq!(value(&before, "burrow_limit_connections"), 4096.0);
    assert_eq!(
        value(&before, "burrow_relay_reservations_refused_total"),
        0.0
    );

    // A probe with a wrong key counts as a refusal, by reason.
    let mut wrong = relay.line.clone();
    wrong.key = GateSecret::generate(&mut rand::thread_rng()).public();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let sockets =
            burrow_node::guarded::GuardedSockets::for_relay(&wrong, "test").expect("sockets");
        let client = burrow_obfs::Client::new(wrong, std::sync::Arc::new(sockets)).expect("client");
        let mut t = client.connect_via(Carrier::H2).await.expect("carrier");
        assert!(t.established().await.is_err(), "a wrong key is refused");
    });

    let mut line = relay.line.clone();
    line.carriers = vec![Carrier::H2];
    let (mut alice, mut bob) = pair(&line);
    alice.up();
    bob.up();
    assert_eq!(alice.ok(&["send", "bob", "counted"]).trim(), "delivered");
    bob.kill();
    // Bob is away: the next message waits in the mailbox.
    let out = alice.ok(&["send", "bob", "waits"]);
    assert!(out.contains("mailbox"), "{out}");

    let after = scrape(port);
    assert_eq!(
        value(&after, "burrow_relay_reservations"),
        1.0,
        "alice only"
    );
    assert!(value(&after, "burrow_relay_peers_connected") >= 1.0);
    assert_eq!(value(&after, "burrow_relay_mailbox_messages"), 1.0);
    assert!(value(&after, "burrow_relay_mailbox_bytes") > 0.0);
    assert!(value(&after, "burrow_front_tunnels_opened_total") >= 2.0);
    assert!(value(&after, "burrow_tunnel_received_bytes_total") > 1000.0);
    assert!(value(&after, "burrow_tunnel_sent_bytes_total") > 1000.0);
    assert_eq!(
        value(
            &after,
            "burrow_front_gate_refusals_total{reason=\"undecryptable\"}"
        ),
        1.0
    );
    // No user id or address anywhere in the text.
    let (_, text, _) = run(Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://{addr}/metrics")));
    let text = String::from_utf8_lossy(&text);
    for secret in [alice.address(), "127.0.0.1".to_string()] {
        let probe = secret.get(9..61).unwrap_or(&secret).to_string();
        assert!(!text.contains(&probe), "metrics name {probe}");
    }
    // Anything but /metrics is a 404; the endpoint is not the site.
    let (_, head, _) = run(Command::new("curl")
        .args(["-sS", "-i", "--max-time", "5"])
        .arg(format!("http://{addr}/")));
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 404"));
    alice.kill();
}

#[test]
fn sigterm_refuses_new_connections_and_drains_open_circuits() {
    let relay = RelayProc::start(&["--drain-timeout", "8"]);
    let mut line = relay.line.clone();
    line.carriers = vec![Carrier::H2];
    let (mut alice, mut bob) = pair(&line);
    alice.up();
    bob.up();
    assert_eq!(alice.ok(&["send", "bob", "before"]).trim(), "delivered");

    let pid = relay.child.id().to_string();
    let (ok, _, _) = run(Command::new("kill").args(["-TERM", &pid]));
    assert!(ok);
    let signalled = Instant::now();
    // New connections are refused at once…
    let port = relay.port();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            signalled.elapsed() < Duration::from_secs(3),
            "still accepting after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // …while the open circuit still carries messages.
    assert_eq!(
        bob.ok(&["send", "alice", "during the drain"]).trim(),
        "delivered"
    );
    assert!(
        alice
            .messages("bob")
            .iter()
            .any(|(d, t, _)| d == "in" && t == "during the drain"),
        "alice got the message sent while the relay drained"
    );
    // Then the relay stops by itself, cleanly, within the drain time.
    let mut relay = relay;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = relay.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the relay did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    assert!(signalled.elapsed() < Duration::from_secs(15));
    let log = relay.log();
    assert!(log.contains("draining"), "{log}");
    alice.kill();
    bob.kill();
}
