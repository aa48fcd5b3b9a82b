//! Messaging end to end with real processes on loopback: a relay and two
//! users who never listen, each as `burrow up` in the background, driven by
//! the same commands a person types.

use burrow_obfs::Carrier;
use burrow_tests::node::pair;
use burrow_tests::{free_port, have_tool, relay_metric, run, RelayProc};

fn with_carriers(relay: &RelayProc, carriers: &[Carrier]) -> burrow_obfs::RelayLine {
    let mut line = relay.line.clone();
    line.carriers = carriers.to_vec();
    line
}

fn texts(m: &[(String, String, String)], direction: &str) -> Vec<String> {
    m.iter()
        .filter(|(d, _, _)| d == direction)
        .map(|(_, t, _)| t.clone())
        .collect()
}

#[test]
fn messages_go_both_ways_over_each_carrier_and_the_relay_keeps_nothing() {
    let relay = RelayProc::start(&[]);
    let mut secrets = Vec::new();
    for carrier in [Carrier::H2, Carrier::H3] {
        let line = with_carriers(&relay, &[carrier]);
        let (mut alice, mut bob) = pair(&line);
        let code_a = alice.ok(&["contact", "verify", "bob"]);
        let code_b = bob.ok(&["contact", "verify", "alice"]);
        let code = |s: &str| {
            s.lines()
                .next()
                .unwrap_or_default()
                .rsplit(": ")
                .next()
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(code(&code_a), code(&code_b), "same code on both screens");
        alice.ok(&["contact", "verify", "bob", "--confirm"]);
        alice.up();
        bob.up();
        let hello = format!("hello bob over {carrier}");
        let reply = format!("hi alice over {carrier}");
        let out = alice.ok(&["send", "bob", &hello]);
        assert_eq!(out.trim(), "delivered", "{carrier}: {out}");
        let out = bob.ok(&["send", "alice", &reply]);
        assert_eq!(out.trim(), "delivered", "{carrier}: {out}");
        let seen = bob.messages("alice");
        assert_eq!(
            texts(&seen, "in"),
            std::slice::from_ref(&hello),
            "{carrier}"
        );
        let seen = alice.messages("bob");
        assert_eq!(
            texts(&seen, "in"),
            std::slice::from_ref(&reply),
            "{carrier}"
        );
        assert!(
            seen.iter()
                .any(|(d, t, s)| d == "out" && t == &hello && s == "delivered"),
            "alice sees the receipt: {seen:?}"
        );
        assert!(alice.ok(&["contact", "list"]).contains("verified  "));
        secrets.extend([hello, reply, alice.address(), bob.address()]);
        for user in [&alice, &bob] {
            let log = user.log();
            assert!(
                !log.contains("hello bob"),
                "logs hold no message text: {log}"
            );
        }
        alice.kill();
        bob.kill();
    }
    // The relay wrote nothing about users: only its own files, and nothing
    // in them (or its log) names a user or a message.
    let mut files: Vec<String> = std::fs::read_dir(relay.data_dir.path().join("relay"))
        .expect("relay dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "gate.key",
            "node.key",
            "relay.toml",
            "self-signed.crt",
            "self-signed.key"
        ]
    );
    let mut stored = relay.log();
    for f in &files {
        stored.push_str(&String::from_utf8_lossy(
            &std::fs::read(relay.data_dir.path().join("relay").join(f)).expect("read"),
        ));
    }
    for s in &secrets {
        let probe = if s.starts_with("burrow://") {
            s[9..61].to_string() // the user id
        } else {
            s.clone()
        };
        assert!(!stored.contains(&probe), "the relay stored {probe:?}");
    }
}

#[test]
fn an_offline_user_receives_twenty_messages_once_and_in_order() {
    let relay = RelayProc::start(&[]);
    let (mut alice, mut bob) = pair(&relay.line);
    alice.up();
    let sent: Vec<String> = (1..=20)
        .map(|i| format!("message {i:02} while you were out"))
        .collect();
    for text in &sent {
        let out = alice.ok(&["send", "bob", text]);
        assert!(out.contains("left in their mailbox"), "{out}");
    }
    bob.up();
    let got = bob.wait_messages("alice", "twenty messages", |m| m.len() >= 20);
    assert_eq!(texts(&got, "in"), sent, "all twenty, once, in order");
    let seen = alice.wait_messages("bob", "twenty receipts", |m| {
        m.iter().filter(|(_, _, s)| s == "delivered").count() == 20
    });
    assert_eq!(seen.len(), 20);
    // Still exactly once after a while (no late duplicates).
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(texts(&bob.messages("alice"), "in"), sent);
}

#[test]
fn nothing_is_lost_when_the_relay_restarts_or_a_process_dies() {
    let relay = RelayProc::start(&[]);
    let listen = format!("127.0.0.1:{}", relay.port());
    // HTTP/2 only: a dead relay then refuses at once, where QUIC waits for
    // its 10 s handshake timeout on every attempt.
    let (mut alice, mut bob) = pair(&with_carriers(&relay, &[Carrier::H2]));
    alice.up();
    bob.up();
    let mut sent = Vec::new();
    for i in 0..3 {
        let text = format!("before the restart {i}");
        alice.ok(&["send", "bob", &text]);
        sent.push(text);
    }
    // The relay dies; alice keeps sending into her outbox.
    let dir = relay.stop();
    for i in 0..3 {
        let text = format!("during the outage {i}");
        let out = alice.ok(&["send", "bob", &text]);
        assert!(out.contains("will retry"), "{out}");
        sent.push(text);
    }
    let relay = RelayProc::start_at(dir, &listen, &[]);
    let got = bob.wait_messages("alice", "messages after the relay came back", |m| {
        m.len() >= sent.len()
    });
    assert_eq!(texts(&got, "in"), sent);

    // Bob's process is killed; alice's messages wait in the mailbox.
    bob.kill();
    for i in 0..3 {
        let text = format!("while bob was killed {i}");
        alice.ok(&["send", "bob", &text]);
        sent.push(text);
    }
    // Alice is killed too, with receipts outstanding; both come back.
    alice.kill();
    bob.up();
    alice.up();
    let got = bob.wait_messages("alice", "every message", |m| m.len() >= sent.len());
    assert_eq!(texts(&got, "in"), sent, "exactly once, in order");
    alice.wait_messages("bob", "all receipts", |m| {
        m.iter().all(|(_, _, s)| s == "delivered")
    });
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(
        texts(&bob.messages("alice"), "in"),
        sent,
        "no duplicates later"
    );
    drop(relay);
}

#[test]
fn bad_input_is_refused_with_a_reason_and_loses_nothing() {
    let relay = RelayProc::start(&["--mailbox-per-user", "2"]);
    let (mut alice, bob) = pair(&relay.line);

    // Wrong password.
    let out = alice.run_env(&["contact", "list"], &[("BURROW_PASSWORD", "wrong")]);
    assert!(
        !out.ok && out.stderr.contains("wrong password"),
        "{}",
        out.stderr
    );

    // A tampered address, and one that is a relay line.
    let mut tampered = bob.address();
    tampered.replace_range(20..21, if &tampered[20..21] == "a" { "b" } else { "a" });
    let out = alice.run(&["contact", "add", "mallory", &tampered]);
    assert!(!out.ok && out.stderr.contains("checksum"), "{}", out.stderr);
    let out = alice.run(&["contact", "add", "relay", &relay.line.to_string()]);
    assert!(
        !out.ok && out.stderr.contains("burrow://"),
        "{}",
        out.stderr
    );

    // Unknown contact, too long, empty.
    let out = alice.run(&["send", "carol", "hi"]);
    assert!(
        !out.ok && out.stderr.contains("no contact named \"carol\""),
        "{}",
        out.stderr
    );
    let long = "x".repeat(16 * 1024 + 1);
    let out = alice.run(&["send", "bob", &long]);
    assert!(!out.ok && out.stderr.contains("too long"), "{}", out.stderr);

    // A mailbox at its limit: the third message is refused with the reason,
    // and kept in the outbox.
    alice.up();
    for i in 0..2 {
        let out = alice.ok(&["send", "bob", &format!("fits {i}")]);
        assert!(out.contains("left in their mailbox"), "{out}");
    }
    let out = alice.ok(&["send", "bob", "does not fit"]);
    assert!(out.contains("mailbox is full"), "{out}");
    let kept = alice.messages("bob");
    assert_eq!(kept.len(), 3);
    assert_eq!(kept[2].2, "pending");
    alice.kill();

    // Damaged files: refused, named, and left as they were.
    let keystore = alice.data_dir().join("node/keystore");
    let good = std::fs::read(&keystore).expect("keystore");
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    std::fs::write(&keystore, &bad).expect("write");
    let out = alice.run(&["inbox"]);
    assert!(
        !out.ok && out.stderr.contains("keystore is damaged"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read(&keystore).expect("read"),
        bad,
        "left as it was"
    );
    std::fs::write(&keystore, &good).expect("restore");

    let db = alice.data_dir().join("node/store.db");
    let good_db = std::fs::read(&db).expect("db");
    let mut bad_db = good_db.clone();
    for b in bad_db.iter_mut().take(100) {
        *b ^= 0x5a;
    }
    std::fs::write(&db, &bad_db).expect("write");
    let out = alice.run(&["inbox"]);
    assert!(!out.ok && out.stderr.contains("damaged"), "{}", out.stderr);
    assert_eq!(std::fs::read(&db).expect("read"), bad_db, "left as it was");
    std::fs::write(&db, &good_db).expect("restore");
    // Restored: everything is still there.
    assert_eq!(alice.messages("bob").len(), 3);
}

/// Bob moves to another relay; Alice still has his old address. Bob's node
/// tells the tracker at both relays where he is now (encrypted to whoever
/// knows his key, signed by him), so Alice's node finds him there and
/// delivers directly — and a relay that was not told keeps nothing.
#[test]
fn a_contact_who_moved_to_another_relay_is_found_through_the_tracker() {
    let first = RelayProc::start(&[]);
    let second = RelayProc::start(&[]);
    let (mut alice, mut bob) = pair(&first.line);
    alice.up();
    bob.up();
    assert_eq!(
        alice.ok(&["send", "bob", "before the move"]).trim(),
        "delivered"
    );
    bob.kill();
    bob.ok(&["set-relay", &second.line.to_string()]);
    bob.up();
    // Once at the first relay before the move, then at both.
    let told = "told a relay's tracker where to find you";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while bob.log().matches(told).count() < 3 {
        assert!(std::time::Instant::now() < deadline, "{}", bob.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Bob is not verified yet: his announcement would widen Alice's
    // firewall to a new endpoint, so it is not followed. The message waits
    // in the mailbox at his old relay and in Alice's outbox.
    let out = alice.ok(&["send", "bob", "while unverified"]);
    assert!(out.contains("mailbox"), "{out}");
    assert!(
        alice.log().contains("not followed until you verify"),
        "{}",
        alice.log()
    );
    let list = alice.ok(&["firewall", "list"]);
    assert!(!list.contains(&format!(":{}/", second.line.port)), "{list}");
    // Verified: the announcement is followed at the next attempt.
    alice.ok(&["contact", "verify", "bob", "--confirm"]);
    let out = alice.ok(&["send", "bob", "after the move"]);
    assert_eq!(out.trim(), "delivered", "{out}\nALICE {}", alice.log());
    // The waiting one follows on the outbox's next retry: nothing lost.
    let got = bob.wait_messages("alice", "all three messages", |m| m.len() >= 3);
    assert_eq!(
        texts(&got, "in"),
        [
            "before the move".to_string(),
            "while unverified".to_string(),
            "after the move".to_string()
        ]
    );
    let contacts: serde_json::Value =
        serde_json::from_str(&alice.ok(&["contact", "list", "--json"])).expect("json");
    let relay = contacts["contacts"][0]["relay"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        relay.contains(&format!(":{}", second.line.port)),
        "alice now has bob at the second relay: {relay}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&alice.ok(&["firewall", "list", "--json"])).expect("json");
    let announced: Vec<_> = list["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["source"].as_str() == Some("endpoint announced by contact bob"))
        .collect();
    assert!(
        !announced.is_empty()
            && announced.iter().all(|e| e["endpoint"]
                .as_str()
                .unwrap_or("")
                .contains(&format!(":{}", second.line.port))),
        "bob's new relay is listed as announced by him: {list}"
    );
    // Bob's reply still goes to Alice's (unchanged) relay.
    assert_eq!(alice.ok(&["send", "bob", "welcome"]).trim(), "delivered");
    assert_eq!(bob.ok(&["send", "alice", "thanks"]).trim(), "delivered");
    let log = alice.log();
    assert!(log.contains("moved to another relay"), "{log}");
    assert!(!log.contains("after the move"), "no message text in logs");
    alice.kill();
    bob.kill();
}

/// Bob accepts direct connections (`burrow up --listen`): once Alice has
/// verified him, her messages go straight to his front (the relay opens no
/// circuit for them), his front shows anyone else a website, and when he
/// stops listening the relay carries them again.
#[test]
fn a_verified_contact_who_listens_is_reached_directly() {
    let metrics = free_port();
    let relay = RelayProc::start(&["--metrics", &format!("127.0.0.1:{metrics}")]);
    let circuits = || relay_metric(metrics, "burrow_relay_circuits_opened_total");
    let (mut alice, mut bob) = pair(&relay.line);
    // A port already taken (the relay's) and an address contacts could
    // not dial are refused, each with its reason, before anything starts.
    let busy = bob.run(&["up", "--listen", &format!("127.0.0.1:{}", relay.port())]);
    assert!(
        !busy.ok && busy.stderr.contains("already in use"),
        "{}",
        busy.stderr
    );
    let anywhere = bob.run(&["up", "--listen", "0.0.0.0:0"]);
    assert!(
        !anywhere.ok && anywhere.stderr.contains("--public"),
        "{}",
        anywhere.stderr
    );
    let port = free_port();
    let front = format!("127.0.0.1:{port}");
    bob.up_with(&["--listen", &front]);
    alice.up();
    // Not verified yet: Bob's front is not trusted, the relay carries it.
    assert_eq!(
        alice.ok(&["send", "bob", "through the relay"]).trim(),
        "delivered"
    );
    assert!(circuits() >= 1.0, "the first message took a circuit");
    let list = alice.ok(&["firewall", "list"]);
    assert!(!list.contains(&format!(":{port}/")), "{list}");

    alice.ok(&["contact", "verify", "bob", "--confirm"]);
    let before = circuits();
    for i in 1..=3 {
        let out = alice.ok(&["send", "bob", &format!("direct {i}")]);
        assert_eq!(out.trim(), "delivered", "{out}\nALICE {}", alice.log());
    }
    assert_eq!(
        bob.ok(&["send", "alice", "direct reply"]).trim(),
        "delivered"
    );
    assert_eq!(circuits(), before, "no circuit for direct messages");
    let got = bob.wait_messages("alice", "four messages", |m| m.len() >= 4);
    assert_eq!(
        texts(&got, "in"),
        ["through the relay", "direct 1", "direct 2", "direct 3"].map(String::from)
    );
    let list: serde_json::Value =
        serde_json::from_str(&alice.ok(&["firewall", "list", "--json"])).expect("json");
    let direct: Vec<String> = list["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["source"].as_str() == Some("direct endpoint of contact bob"))
        .filter_map(|e| e["endpoint"].as_str().map(String::from))
        .collect();
    assert_eq!(
        direct,
        [
            format!("127.0.0.1:{port}/tcp"),
            format!("127.0.0.1:{port}/udp")
        ],
        "{list}"
    );
    let contacts = alice.ok(&["contact", "list"]);
    assert!(
        contacts.contains(&format!("direct 127.0.0.1:{port}")),
        "{contacts}"
    );
    // Anyone else who finds the port sees a website.
    if have_tool("curl") {
        let (ok, body, err) = run(std::process::Command::new("curl")
            .args(["-sS", "-k", "--max-time", "10"])
            .arg(format!("https://127.0.0.1:{port}/")));
        let body = String::from_utf8_lossy(&body);
        assert!(ok && body.contains("<html"), "{err}{body}");
    }

    // Bob stops listening: the stale endpoint fails and the relay carries
    // the message again.
    bob.kill();
    bob.up();
    assert_eq!(
        alice.ok(&["send", "bob", "relay again"]).trim(),
        "delivered",
        "{}",
        alice.log()
    );
    assert!(circuits() > before, "the relay carried it");
    let log = alice.log();
    assert!(!log.contains("direct 1"), "no message text in logs");
    alice.kill();
    bob.kill();
}
