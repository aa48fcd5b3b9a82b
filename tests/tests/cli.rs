//! `burrow relay` and `burrow demo` as a user runs them: clear errors for
//! what users get wrong, and state that survives a restart.

use std::process::{Command, Stdio};

use burrow_tests::{burrow_bin, run, RelayProc};

fn relay_err(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, _, err) = run(Command::new(burrow_bin())
        .args(["relay", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .stdin(Stdio::null()));
    assert!(!ok, "burrow relay {args:?} should fail");
    err
}

#[test]
fn missing_and_bad_certificates_are_named() {
    let err = relay_err(&[
        "--cert",
        "/nonexistent/cert.pem",
        "--key",
        "/nonexistent/key.pem",
        "--domain",
        "x.org",
    ]);
    assert!(err.contains("cannot read /nonexistent/cert.pem"), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    std::fs::write(&key, "nothing").expect("write");
    let err = relay_err(&[
        "--cert",
        cert.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
        "--domain",
        "x.org",
    ]);
    assert!(err.contains("bad certificate or key"), "{err}");
    assert!(err.contains("cert.pem"), "{err}");

    // A valid certificate with somebody else's key.
    let (_, cert_a, _) = burrow_obfs::Identity::self_signed("a.example").expect("cert");
    let (_, _, key_b) = burrow_obfs::Identity::self_signed("b.example").expect("cert");
    std::fs::write(&cert, cert_a).expect("write");
    std::fs::write(&key, key_b).expect("write");
    let err = relay_err(&[
        "--cert",
        cert.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
        "--domain",
        "x.org",
    ]);
    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn a_busy_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, _, err) = run(Command::new(burrow_bin())
        .args([
            "relay",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path()));
    assert!(!ok);
    assert!(err.contains("already in use"), "{err}");
}

#[test]
fn bad_arguments_are_refused_with_reasons() {
    assert!(relay_err(&["--site", "/nonexistent/site"]).contains("not a directory"));
    assert!(relay_err(&["--path", "no-leading-slash"]).contains("--path"));
    let err = relay_err(&["--upstream", "http://origin_!.example"]);
    assert!(
        err.contains("site.upstream (--upstream)")
            && err.contains("neither an IP address nor a valid name"),
        "{err}"
    );
    // A name needs a resolver it can be resolved with.
    let err = relay_err(&[
        "--upstream",
        "http://origin.example",
        "--resolver",
        "udp://9.9.9.9",
    ]);
    assert!(
        err.contains("--resolver") && err.contains("expected https://"),
        "{err}"
    );
    let err = relay_err(&["--upstream", "127.0.0.1:8080"]);
    assert!(err.contains("expected http://ADDRESS[:PORT]"), "{err}");
    let err = relay_err(&["--upstream", "http://127.0.0.1:8080", "--site", "/tmp"]);
    assert!(err.contains("cannot be used with"), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, _, err) = run(Command::new(burrow_bin())
        .args(["relay", "address", "--data-dir"])
        .arg(dir.path()));
    assert!(!ok);
    assert!(err.contains("start `burrow relay` first"), "{err}");
}

#[test]
fn key_path_and_certificate_survive_a_restart() {
    let first = RelayProc::start(&[]);
    let line = first.line.clone();
    let dir = first.stop();
    let second = RelayProc::start_in(dir, &[]);
    assert_eq!(second.line.key, line.key, "gate key kept");
    assert_eq!(second.line.path, line.path, "tunnel path kept");
    assert_eq!(second.line.pin, line.pin, "certificate kept");

    // `relay address` prints the same line the relay printed.
    let (ok, out, err) = run(Command::new(burrow_bin())
        .args(["relay", "address", "--data-dir"])
        .arg(second.data_dir.path()));
    assert!(ok, "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        second.line.to_string()
    );

    // A damaged key file is reported, never silently replaced.
    let dir = second.stop();
    let key = dir.path().join("relay/gate.key");
    std::fs::write(&key, "damaged\n").expect("write");
    let (ok, _, err) = run(Command::new(burrow_bin())
        .args([
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--self-signed",
            "example.org",
            "--data-dir",
        ])
        .arg(dir.path()));
    assert!(!ok);
    assert!(err.contains("gate.key is damaged"), "{err}");
    assert_eq!(std::fs::read_to_string(&key).expect("read"), "damaged\n");
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    // `burrow relay address --qr | head -1`: what is printed has no reader
    // by then. The command ends as a C program would on SIGPIPE (status 141,
    // nothing on stderr), not with a panic and a backtrace.
    let relay = RelayProc::start(&[]);
    let mut child = Command::new(burrow_bin())
        .args(["relay", "address", "--qr", "--data-dir"])
        .arg(relay.data_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // The reader goes away before the command has started printing.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim(), "", "nothing on stderr");
    let code = out.status.code();
    assert!(
        code == Some(141) || code == Some(0),
        "ended with {:?}: 141 for the closed pipe (0 only if it printed before the close)",
        out.status
    );
}

#[test]
fn the_demo_runs_end_to_end() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ok, out, err) = run(Command::new(burrow_bin())
        .arg("demo")
        .env("TMPDIR", tmp.path()));
    let text = String::from_utf8_lossy(&out);
    assert!(ok, "demo failed: {err}\n{text}");
    assert!(text.contains("h2 GET  /"), "{text}");
    assert!(text.contains("-> 200 text/html"), "{text}");
    assert!(text.contains("wrong key: refused"), "{text}");
    assert!(text.contains("each screen shows the code "), "{text}");
    assert!(
        text.contains("alice -> bob: \"Hi Bob, it's Alice. Can you read this?\" — delivered"),
        "{text}"
    );
    assert!(
        text.contains("bob -> alice: \"Loud and clear. The relay can't, though.\" — delivered"),
        "{text}"
    );
    assert!(text.contains("left in their mailbox"), "{text}");
    assert!(text.contains("holds 1 sealed message for Bob"), "{text}");
    assert!(text.contains("mailbox is empty again"), "{text}");
    assert!(
        text.contains("alice -> bob: \"Through the hole?\" — delivered"),
        "{text}"
    );
    assert!(text.contains("none after it"), "{text}");
    // The demo's users live in a temporary directory that is gone afterwards.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("read tmp")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

/// The CI check that keeps outbound sockets inside the firewall crate
/// catches a stray dial and lets a marked listener through.
#[test]
fn the_socket_check_catches_dials_outside_the_firewall() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = burrow_tests::workspace().join(".ci/check-sockets");
    let check = |source: &str| {
        std::fs::write(dir.path().join("x.rs"), source).expect("write");
        run(Command::new("bash").arg(&script).arg(dir.path()))
    };
    for bad in [
        "let s = std::net::TcpStream::connect(addr);",
        "let s = tokio::net::TcpStream::connect(addr).await;",
        "let u = UdpSocket::bind(local)?;",
        "sock.send_to(&buf, target)?;",
        "let a = tokio::net::lookup_host(name).await;",
        "let a = \"host:1\".to_socket_addrs();",
        "let e = quinn::Endpoint::client(local)?;",
    ] {
        let (ok, out, _) = check(bad);
        assert!(!ok, "not caught: {bad}");
        assert!(String::from_utf8_lossy(&out).contains("x.rs:1"), "{bad}");
    }
    let (ok, _, err) = check(
        "// egress-check: allowed: the server's own listening socket\nlet u = UdpSocket::bind(listen)?;\n// TcpStream::connect in a comment\n",
    );
    assert!(ok, "{err}");
}
