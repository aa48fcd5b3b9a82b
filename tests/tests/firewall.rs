//! `burrow firewall list / check / log` as a user runs them, online
//! (through a running node) and offline (from the stored state).

use std::io::{BufRead, BufReader};

use burrow_tests::node::pair;
use burrow_tests::RelayProc;
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn the_user_sees_what_is_allowed_what_was_refused_and_why() {
    let home = RelayProc::start(&[]);
    let other = RelayProc::start(&[]);
    let (mut alice, _bob) = pair(&home.line);
    let carol = burrow_tests::node::NodeProc::init("carol", &other.line);
    alice.ok(&["contact", "add", "carol", &carol.address()]);
    let port = |l: &burrow_obfs::RelayLine| l.port;

    // Offline: derived from the stored state.
    let list = json(&alice.ok(&["firewall", "list", "--json"]));
    let entries = list["entries"].as_array().expect("entries").clone();
    let has = |endpoint: &str, source: &str| {
        entries.iter().any(|e| {
            e["endpoint"] == endpoint && e["source"].as_str().unwrap_or("").contains(source)
        })
    };
    for proto in ["tcp", "udp"] {
        assert!(
            has(
                &format!("127.0.0.1:{}/{proto}", port(&home.line)),
                "home relay"
            ),
            "{list}"
        );
        assert!(
            has(
                &format!("127.0.0.1:{}/{proto}", port(&other.line)),
                "relay of contact carol"
            ),
            "{list}"
        );
    }
    for resolver in ["9.9.9.9:443/tcp", "1.1.1.1:443/tcp"] {
        assert!(
            has(resolver, "DNS resolver"),
            "the default resolvers, Quad9 then Cloudflare: {list}"
        );
    }
    assert_eq!(
        entries.len(),
        8,
        "home, bob's and carol's relay, the two resolvers: {list}"
    );
    let text = alice.ok(&["firewall", "list"]);
    assert!(text.contains("home relay"), "{text}");
    assert!(
        text.contains("the resolvers above, asked in that order"),
        "{text}"
    );

    let check = |alice: &burrow_tests::node::NodeProc, target: &str, extra: &[&str]| {
        let mut args = vec!["firewall", "check", target, "--json"];
        args.extend_from_slice(extra);
        json(&alice.ok(&args))
    };
    let d = check(&alice, &format!("127.0.0.1:{}", port(&other.line)), &[]);
    assert_eq!(d["allowed"], true, "{d}");
    assert!(d["source"].as_str().unwrap_or("").contains("carol"), "{d}");
    let d = check(&alice, &format!("127.0.0.1:{}", port(&home.line) ^ 1), &[]);
    assert_eq!(d["allowed"], false, "{d}");
    assert!(
        d["reason"].as_str().unwrap_or("").contains("only on port"),
        "{d}"
    );
    let d = check(&alice, "https://203.0.113.7/index.html", &[]);
    assert_eq!(d["allowed"], false, "{d}");
    assert_eq!(d["target"], "203.0.113.7:443/tcp", "{d}");
    let bad = alice.run(&["firewall", "check", "ftp://example.org"]);
    assert!(
        !bad.ok && bad.stderr.contains("scheme"),
        "a clear error: {}",
        bad.stderr
    );
    let offline_try = alice.run(&["firewall", "check", "203.0.113.7:443", "--try"]);
    assert!(!offline_try.ok && offline_try.stderr.contains("burrow up"));

    // Online: a real attempt is refused, logged, and followed live.
    alice.up();
    let mut follow = alice.spawn(&["firewall", "log", "--follow", "--json"]);
    let mut lines = BufReader::new(follow.stdout.take().expect("stdout")).lines();
    let first = json(&lines.next().expect("first answer").expect("line"));
    assert_eq!(first["kind"], "firewall_log", "{first}");
    let d = check(&alice, "203.0.113.7:443", &["--try"]);
    assert_eq!(d["allowed"], false, "{d}");
    assert!(
        d["attempt"]
            .as_str()
            .unwrap_or("")
            .contains("refused by the firewall"),
        "{d}"
    );
    let event = json(&lines.next().expect("an event").expect("line"));
    assert_eq!(event["kind"], "firewall_event", "{event}");
    assert_eq!(event["entry"]["target"], "203.0.113.7:443/tcp", "{event}");
    assert_eq!(event["entry"]["verdict"], "refused", "{event}");
    assert_eq!(event["entry"]["component"], "firewall-check", "{event}");
    let _ = follow.kill();
    let _ = follow.wait();
    let d = check(
        &alice,
        &format!("127.0.0.1:{}", port(&home.line)),
        &["--try"],
    );
    assert_eq!(d["allowed"], true, "{d}");
    assert!(
        d["attempt"].as_str().unwrap_or("").contains("connected"),
        "{d}"
    );

    // The log survives the node: read offline from the encrypted store.
    alice.kill();
    let log = json(&alice.ok(&["firewall", "log", "--json"]));
    let refused: Vec<&Value> = log["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["target"] == "203.0.113.7:443/tcp")
        .collect();
    assert_eq!(refused.len(), 1, "{log}");
    let text = alice.ok(&["firewall", "log"]);
    assert!(
        text.contains("refused") && text.contains("203.0.113.7:443/tcp"),
        "{text}"
    );
    // The store is encrypted: the refused address is not in the file.
    let db = std::fs::read(alice.data_dir().join("node/store.db")).expect("store");
    assert!(!db.windows(11).any(|w| w == b"203.0.113.7"));
}

#[test]
fn firewall_settings_are_checked_stored_and_shown() {
    let home = RelayProc::start(&[]);
    let alice = burrow_tests::node::NodeProc::init_with(
        "alice",
        &home.line,
        &["--resolver", "tls://1.1.1.1"],
    );
    let list = alice.ok(&["firewall", "list"]);
    assert!(
        list.contains("1.1.1.1:853/tcp") && list.contains("DNS over TLS"),
        "{list}"
    );
    assert!(list.contains("only over encrypted DNS"), "{list}");

    // Bad settings are refused with the reason, and nothing changes.
    for (args, why) in [
        (vec!["--resolver", "http://9.9.9.9"], "expected https://"),
        (
            vec!["--resolver", "https://dns.example/dns-query"],
            "by IP address",
        ),
        (
            vec!["--resolver", "tls://1.1.1.1, system"],
            "cannot be combined",
        ),
        (
            vec!["--resolver", "tls://1.1.1.1,,tls://9.9.9.9"],
            "an empty entry",
        ),
        (
            vec!["--resolver", "tls://1.1.1.1, tls://1.1.1.1:853"],
            "listed twice",
        ),
        (vec![], "nothing to set"),
    ] {
        let mut all = vec!["firewall", "set"];
        all.extend_from_slice(&args);
        let out = alice.run(&all);
        assert!(
            !out.ok && out.stderr.contains(why),
            "{args:?}: {}",
            out.stderr
        );
    }
    assert!(alice.ok(&["firewall", "list"]).contains("1.1.1.1:853/tcp"));

    let out = alice.ok(&[
        "firewall",
        "set",
        "--resolver",
        "https://dns.quad9.net/dns-query?ip=149.112.112.112 , tls://[2620:fe::fe]",
        "--local-networks",
        "allow",
        "--log-approvals",
        "on",
    ]);
    assert!(
        out.contains("https://dns.quad9.net/dns-query?ip=149.112.112.112, tls://[2620:fe::fe]"),
        "{out}"
    );
    assert!(out.contains("Local networks: allowed"), "{out}");
    assert!(out.contains("Logged: every decision"), "{out}");
    let list = json(&alice.ok(&["firewall", "list", "--json"]));
    let endpoints: Vec<&str> = list["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["endpoint"].as_str())
        .collect();
    assert!(endpoints.contains(&"149.112.112.112:443/tcp"), "{list}");
    assert!(endpoints.contains(&"[2620:fe::fe]:853/tcp"), "{list}");
    assert!(
        !endpoints.contains(&"1.1.1.1:853/tcp"),
        "the old resolver is gone: {list}"
    );
    assert_eq!(list["allow_local"], true, "{list}");

    // Plaintext DNS only when asked for, and then said so.
    if std::path::Path::new("/etc/resolv.conf").exists() {
        let set = alice.run(&["firewall", "set", "--resolver", "system"]);
        if set.ok {
            let text = alice.ok(&["firewall", "list"]);
            assert!(text.contains("plaintext DNS"), "{text}");
        } else {
            assert!(set.stderr.contains("system resolvers"), "{}", set.stderr);
        }
    }
}
