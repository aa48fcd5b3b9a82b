//! `burrow relay --config FILE` and `burrow relay check-config FILE` as an
//! operator uses them: a file that is wrong is refused with the key named,
//! a good one is reported, and the relay runs with it, flags on top.

use std::process::{Command, Stdio};
use std::sync::Arc;

use burrow_node::guarded::GuardedSockets;
use burrow_obfs::{Carrier, Client};
use burrow_tests::{burrow_bin, run, RelayProc};

fn check_config(text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, text).expect("write");
    let (ok, out, err) = run(Command::new(burrow_bin())
        .args(["relay", "check-config"])
        .arg(&file)
        .stdin(Stdio::null()));
    (ok, String::from_utf8_lossy(&out).into_owned(), err)
}

#[test]
fn check_config_names_what_is_wrong() {
    for (text, names) in [
        ("listen = \"0.0.0.0:443\"\nlisten_port = 8443\n", &["listen_port", "line 2"][..]),
        ("[tls]\ncertificate = \"/x\"\n", &["certificate", "line 2"]),
        (
            "[site]\ndir = \"/var/www\"\nupstream = \"http://127.0.0.1:8080\"\n",
            &["site.dir", "site.upstream"],
        ),
        (
            "[tls]\ncert = \"/a\"\nkey = \"/b\"\nself_signed = \"x.example\"\n",
            &["tls.cert", "tls.self_signed"],
        ),
        ("[users]\nmailbox_per_user = 0\n", &["users.mailbox_per_user"]),
        ("[limits]\nmax_reservations = 0\n", &["limits.max_reservations", "between 1"]),
        ("[limits]\nmax_reservation = 10\n", &["max_reservation", "line 2"]),
        (
            "[limits]\ncircuit_duration = 5000000000\n",
            &["limits.circuit_duration", "4294967295"],
        ),
        ("[limits]\ncircuits_per_ip_per_minute = 0\n", &["limits.circuits_per_ip_per_minute"]),
        ("[firewall]\nresolver = \"8.8.8.8\"\n", &["firewall.resolver"]),
        ("listen = [\n", &["relay.toml"]),
        (
            "domain = \"relay.example.org\"\n[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
            &["/nonexistent/cert.pem"],
        ),
        ("[site]\ndir = \"/nonexistent/site\"\n", &["site.dir", "not a directory"]),
    ] {
        let (ok, _, err) = check_config(text);
        assert!(!ok, "{text:?} was accepted");
        for n in names {
            assert!(err.contains(n), "{text:?}: {err} should name {n}");
        }
    }
}

#[test]
fn the_example_checks_once_its_files_exist() {
    let example = std::fs::read_to_string(burrow_tests::workspace().join("contrib/relay.toml"))
        .expect("contrib/relay.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, cert, key) = burrow_obfs::Identity::self_signed("relay.example.org").expect("cert");
    std::fs::write(dir.path().join("fullchain.pem"), cert).expect("write");
    std::fs::write(dir.path().join("privkey.pem"), key).expect("write");
    let text = example.replace(
        "/etc/letsencrypt/live/relay.example.org/",
        &format!("{}/", dir.path().display()),
    );
    let (ok, out, err) = check_config(&text);
    assert!(ok, "{err}");
    assert!(out.contains(": OK"), "{out}");
    assert!(out.contains("0.0.0.0:443"), "{out}");
    assert!(out.contains("for relay.example.org"), "{out}");
    assert!(out.contains("anyone with the relay line"), "{out}");
    assert!(
        out.contains("4096 connections, 4096 reservations, 4096 circuits (64 per user)"),
        "{out}"
    );
}

#[tokio::test]
async fn the_relay_runs_with_its_file_and_flags_on_top() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("www");
    std::fs::create_dir(&site).expect("mkdir");
    std::fs::write(site.join("index.html"), "from the configured site\n").expect("write");
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"0.0.0.0:1\"\npath = \"/api/v1/stream\"\n[site]\ndir = \"{}\"\n[users]\nmailbox_per_user = 10\n",
            site.display()
        ),
    )
    .expect("write");
    // RelayProc passes --listen 127.0.0.1:0 and --self-signed: flags over the file.
    let relay = RelayProc::start(&["--config", file.to_str().expect("path")]);
    assert_eq!(relay.line.path, "/api/v1/stream", "the file's path");
    assert_ne!(relay.line.port, 1, "--listen overrides the file");
    let sockets = GuardedSockets::for_relay(&relay.line, "test").expect("sockets");
    let client = Client::new(relay.line.clone(), Arc::new(sockets)).expect("client");
    let page = client
        .fetch(Carrier::H2, http::Method::GET, "/")
        .await
        .expect("fetch");
    assert_eq!(page.status(), 200);
    assert_eq!(page.body().as_ref(), b"from the configured site\n");

    let missing = run(Command::new(burrow_bin())
        .args(["relay", "--config", "/nonexistent/relay.toml"])
        .stdin(Stdio::null()));
    assert!(
        !missing.0 && missing.2.contains("/nonexistent/relay.toml"),
        "{}",
        missing.2
    );
}

/// SIGHUP makes the relay read its certificate files again: new
/// connections get the new certificate, open tunnels carry on.
#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_tunnels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let write = |name: &str| {
        let (id, c, k) = burrow_obfs::Identity::self_signed(name).expect("cert");
        std::fs::write(&cert, c).expect("write cert");
        std::fs::write(&key, k).expect("write key");
        id.pin().expect("pin")
    };
    let old_pin = write("example.org");
    let relay = RelayProc::start(&[
        "--cert",
        cert.to_str().expect("path"),
        "--key",
        key.to_str().expect("path"),
        "--domain",
        "example.org",
    ]);
    // A CA-issued certificate puts no pin in the line; the test pins it.
    let mut line = relay.line.clone();
    line.pin = Some(old_pin);
    let (mut alice, mut bob) = burrow_tests::node::pair(&line);
    alice.up();
    bob.up();
    assert_eq!(alice.ok(&["send", "bob", "before"]).trim(), "delivered");

    let new_pin = write("example.org");
    assert_ne!(new_pin, old_pin);
    let pid = relay.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill")
        .success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !relay.log().contains("certificate reloaded") {
        assert!(std::time::Instant::now() < deadline, "{}", relay.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // New connections see the new certificate, over both carriers…
    for carrier in [Carrier::H2, Carrier::H3] {
        for (pin, ok) in [(old_pin, false), (new_pin, true)] {
            let mut l = relay.line.clone();
            l.pin = Some(pin);
            let sockets = GuardedSockets::for_relay(&l, "test").expect("sockets");
            let client = Client::new(l, Arc::new(sockets)).expect("client");
            let got = client.fetch(carrier, http::Method::GET, "/").await;
            assert_eq!(
                got.is_ok(),
                ok,
                "{carrier:?} pinned to the {} certificate",
                if ok { "new" } else { "old" }
            );
        }
    }
    // …while the tunnels opened under the old one still carry messages (a
    // redial would fail: the nodes pin the old certificate).
    assert_eq!(alice.ok(&["send", "bob", "after"]).trim(), "delivered");
    assert_eq!(bob.ok(&["send", "alice", "after too"]).trim(), "delivered");

    // A broken file is refused and the current certificate stays.
    std::fs::write(&cert, "not a certificate").expect("write");
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill")
        .success());
    while !relay.log().contains("certificate not reloaded") {
        assert!(
            std::time::Instant::now() < deadline + std::time::Duration::from_secs(10),
            "{}",
            relay.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut l = relay.line.clone();
    l.pin = Some(new_pin);
    let sockets = GuardedSockets::for_relay(&l, "test").expect("sockets");
    let client = Client::new(l, Arc::new(sockets)).expect("client");
    client
        .fetch(Carrier::H2, http::Method::GET, "/")
        .await
        .expect("still the new certificate");
}
