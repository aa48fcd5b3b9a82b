//! A relay behind a real nginx, configured with the shipped snippet
//! (`contrib/nginx-relay.conf`): nginx terminates TLS, serves the site and
//! passes the tunnel path to `burrow relay --behind-proxy` over HTTP/2
//! cleartext (h2 carrier) or an HTTP/1.1 upgrade (ws carrier).
//!
//! Two users message each other through it over each carrier; curl sees
//! only nginx's site, and a request to the tunnel path that does not open a
//! tunnel (no gate, a wrong key, a replayed gate) is answered exactly as
//! nginx answers the same request for a path it has no file for.

use std::path::Path;
use std::process::Command;

use burrow_obfs::gate::{self, Binding};
use burrow_obfs::{Carrier, GateSecret, Identity, RelayLine};
use burrow_tests::node::{message_over_each_carrier, pair};
use burrow_tests::{curl_https, free_port, have_tool, run, Nginx, RelayProc};
use rand::RngCore;

const TUNNEL_PATH: &str = "/api/v2/events/0c3f9a1d";
/// A path with no file behind it, served by nginx itself: the reference.
const OTHER_PATH: &str = "/api/v2/events/7b2e4d90";

struct Setup {
    work: tempfile::TempDir,
    nginx: Nginx,
    relay: RelayProc,
    /// The line `burrow relay address --ip 127.0.0.1` prints.
    line: RelayLine,
}

/// nginx's config for this test: the site's root, `location /` as a plain
/// static site, and the shipped snippet with its two placeholders filled.
fn server_block(root: &Path, backend: &str) -> String {
    let snippet = std::fs::read_to_string(
        burrow_tests::workspace()
            .join("contrib")
            .join("nginx-relay.conf"),
    )
    .expect("contrib/nginx-relay.conf");
    let snippet = snippet
        .replace("TUNNEL_PATH", TUNNEL_PATH)
        .replace("BACKEND", backend);
    format!(
        "root {};\n    location / {{ try_files $uri $uri/ =404; }}\n{snippet}",
        root.display()
    )
}

fn setup(backend: &str) -> Option<Setup> {
    if !have_tool("nginx") || !have_tool("curl") {
        return None;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let site = work.path().join("site");
    std::fs::create_dir(&site).expect("site dir");
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", burrow_tests::builtin_site_dir().display()))
        .arg(&site)
        .status()
        .expect("cp");
    assert!(status.success());
    let (_, cert_pem, key_pem) = Identity::self_signed("example.org").expect("certificate");
    let cert = work.path().join("cert.pem");
    let key = work.path().join("key.pem");
    std::fs::write(&cert, cert_pem).expect("cert");
    std::fs::write(&key, key_pem).expect("key");

    let port = free_port();
    let relay =
        RelayProc::start_behind_web_server(backend, "example.org", port, TUNNEL_PATH, &cert, &site);
    let nginx = Nginx::start_on(port, &cert, &key, &server_block(&site, backend));
    let line = relay.address_line();
    Some(Setup {
        work,
        nginx,
        relay,
        line,
    })
}

fn curl(s: &Setup, args: &[&str], path: &str) -> (String, Vec<u8>) {
    let (head, body) = curl_raw(s, args, path);
    assert!(!head.is_empty(), "curl {args:?} {path}: no answer");
    (head, body)
}

/// What curl printed (head without `Date`, body); empty if no answer.
fn curl_raw(s: &Setup, args: &[&str], path: &str) -> (String, Vec<u8>) {
    let cert = s.work.path().join("cert.pem");
    let (head, body, _) = curl_https(&cert, "example.org", s.nginx.port, args, path);
    (head, body)
}

/// The same request to the tunnel path and to a path nginx serves itself
/// must get the same answer (status, headers except `Date`, body).
fn same_as_site(s: &Setup, what: &str, args: &[&str]) {
    let tunnel = curl(s, args, TUNNEL_PATH);
    let site = curl(s, args, OTHER_PATH);
    assert_eq!(tunnel, site, "{what}: the tunnel path answered differently");
    assert!(
        !tunnel.0.contains("application/octet-stream"),
        "{what}: {}",
        tunnel.0
    );
}

fn gate_cookie(key: &burrow_obfs::GatePublic, time: u64) -> String {
    let mut rng = rand::thread_rng();
    let mut eph = [0u8; 32];
    rng.fill_bytes(&mut eph);
    let value = gate::build(key, &Binding::Proxied, time, eph, &mut rng);
    format!("cookie: {}={value}", burrow_obfs::front::GATE_COOKIE)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[test]
fn two_users_message_through_nginx_over_h2_and_ws() {
    let Some(s) = setup(&format!("127.0.0.1:{}", free_port())) else {
        return;
    };
    assert!(s.line.proxied, "the line says the relay is behind a proxy");
    assert_eq!(s.line.port, s.nginx.port);
    assert_eq!(s.line.carriers, [Carrier::H2, Carrier::Ws]);
    message_over_each_carrier(&s.line, "nginx", || s.nginx.error_log());
    let log = s.relay.log();
    assert!(
        !log.contains("hello bob"),
        "no message text in the relay's log"
    );
}

#[test]
fn probes_through_nginx_get_the_sites_answer() {
    let Some(s) = setup(&format!("127.0.0.1:{}", free_port())) else {
        return;
    };
    // The site itself, over HTTP/2 and HTTP/1.1, is nginx's.
    let (head, body) = curl(&s, &["--http2"], "/");
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert!(head.contains("server: nginx"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("Slow Clay"));

    let wrong = GateSecret::generate(&mut rand::thread_rng()).public();
    for proto in ["--http2", "--http1.1"] {
        same_as_site(&s, &format!("{proto} GET"), &[proto]);
        same_as_site(&s, &format!("{proto} HEAD"), &[proto, "-I"]);
        same_as_site(
            &s,
            &format!("{proto} POST with a random body"),
            &[proto, "--data-binary", "0123456789abcdef"],
        );
        same_as_site(
            &s,
            &format!("{proto} POST without a gate"),
            &[
                proto,
                "-H",
                "content-type: application/octet-stream",
                "-d",
                "x",
            ],
        );
        same_as_site(
            &s,
            &format!("{proto} POST with a gate for another key"),
            &[proto, "-H", &gate_cookie(&wrong, now()), "-d", "x"],
        );
        same_as_site(
            &s,
            &format!("{proto} POST with a stale gate"),
            &[
                proto,
                "-H",
                &gate_cookie(&s.line.key, now() - 3600),
                "-d",
                "x",
            ],
        );
        same_as_site(
            &s,
            &format!("{proto} WebSocket upgrade with a wrong key"),
            &[
                "--http1.1",
                "-H",
                "upgrade: websocket",
                "-H",
                "connection: upgrade",
                "-H",
                "sec-websocket-version: 13",
                "-H",
                "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
                "-H",
                &gate_cookie(&wrong, now()),
            ],
        );
    }

    // A gate recorded on its way through is refused when it comes again.
    // Its first use passes the gate: the relay takes the stream as a tunnel
    // and drops it when "x" is not a Noise handshake, so curl gets no
    // answer at all (nginx sends the relay's answer head only with the
    // first body bytes). The replay gets the site's answer.
    let cookie = gate_cookie(&s.line.key, now());
    let (first, _) = curl_raw(&s, &["--http2", "-H", &cookie, "-d", "x"], TUNNEL_PATH);
    let (site, _) = curl(&s, &["--http2", "-H", &cookie, "-d", "x"], OTHER_PATH);
    assert!(
        !first.contains(&site),
        "a fresh gate is taken as a tunnel, not answered as the site: {first}"
    );
    same_as_site(
        &s,
        "the same gate replayed",
        &["--http2", "-H", &cookie, "-d", "x"],
    );
}

#[test]
fn a_unix_socket_backend_works_and_is_removed_on_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    // nginx's workers run as another user; they may enter the directory.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let sock = dir.path().join("relay.sock");
    let backend = format!("unix:{}", sock.display());
    let Some(s) = setup(&backend) else {
        return;
    };
    assert!(sock.exists(), "the relay listens on {}", sock.display());
    let mut line = s.line.clone();
    line.carriers = vec![Carrier::H2];
    let (mut alice, mut bob) = pair(&line);
    alice.up();
    bob.up();
    let out = alice.ok(&["send", "bob", "over a unix socket"]);
    assert_eq!(out.trim(), "delivered", "{out}");
    alice.kill();
    bob.kill();
    let pid = s.relay.child.id().to_string();
    let (ok, _, _) = run(Command::new("kill").args(["-TERM", &pid]));
    assert!(ok);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!sock.exists(), "the socket file is gone after SIGTERM");
}
