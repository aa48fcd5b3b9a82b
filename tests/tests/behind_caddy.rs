//! A relay behind a real Caddy, configured with the shipped site block
//! (`contrib/Caddyfile`): Caddy terminates TLS, serves the site and passes
//! the tunnel path to `burrow relay --behind-proxy` as HTTP/2 cleartext
//! (h2 carrier) or an HTTP/1.1 upgrade (ws carrier). Two users message each
//! other through it over each carrier, and curl sees Caddy's site.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use burrow_obfs::{Carrier, Identity, RelayLine};
use burrow_tests::node::message_over_each_carrier;
use burrow_tests::{curl_https, free_port, have_tool, RelayProc};

const TUNNEL_PATH: &str = "/api/v2/events/0c3f9a1d";

/// Caddy in the foreground with a config file; stopped on drop.
struct Caddy {
    port: u16,
    child: Child,
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped site block with its placeholders filled, on a loopback
/// port with the test's certificate, behind global options that keep
/// Caddy to this directory (no admin endpoint, no port 80, no ACME).
fn caddyfile(dir: &Path, port: u16, backend: &str, site: &Path, cert: &Path, key: &Path) -> String {
    let block = std::fs::read_to_string(burrow_tests::workspace().join("contrib/Caddyfile"))
        .expect("contrib/Caddyfile");
    assert!(
        block.contains("relay.example.org {"),
        "the site block's name"
    );
    let block = block
        .replace(
            "relay.example.org {",
            &format!(
                "relay.example.org:{port} {{\n\tbind 127.0.0.1\n\ttls {} {}",
                cert.display(),
                key.display()
            ),
        )
        .replace("TUNNEL_PATH", TUNNEL_PATH)
        .replace("127.0.0.1:8081", backend)
        .replace("/var/www/html", &site.display().to_string());
    format!(
        "{{\n\tadmin off\n\tauto_https disable_redirects\n\tstorage file_system {}\n}}\n\n{block}",
        dir.join("storage").display()
    )
}

struct Setup {
    work: tempfile::TempDir,
    caddy: Caddy,
    _relay: RelayProc,
    line: RelayLine,
}

fn setup() -> Option<Setup> {
    if !have_tool("caddy") || !have_tool("curl") {
        return None;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let site = work.path().join("site");
    std::fs::create_dir(&site).expect("site dir");
    std::fs::write(
        site.join("index.html"),
        "<!doctype html><title>Field notes</title>\n",
    )
    .expect("index");
    let (_, cert_pem, key_pem) = Identity::self_signed("relay.example.org").expect("certificate");
    let cert = work.path().join("cert.pem");
    let key = work.path().join("key.pem");
    std::fs::write(&cert, cert_pem).expect("cert");
    std::fs::write(&key, key_pem).expect("key");

    let backend = format!("127.0.0.1:{}", free_port());
    let port = free_port();
    let relay = RelayProc::start_behind_web_server(
        &backend,
        "relay.example.org",
        port,
        TUNNEL_PATH,
        &cert,
        &site,
    );
    let config = work.path().join("Caddyfile");
    std::fs::write(
        &config,
        caddyfile(work.path(), port, &backend, &site, &cert, &key),
    )
    .expect("Caddyfile");
    let child = Command::new("caddy")
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&config)
        .env("HOME", work.path())
        .env("XDG_DATA_HOME", work.path().join("data"))
        .env("XDG_CONFIG_HOME", work.path().join("config"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.path().join("caddy.log")).expect("log"))
        .spawn()
        .expect("start caddy");
    let mut caddy = Caddy { port, child };
    // A config Caddy refuses ends it at once, with the reason in its log.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let log = || std::fs::read_to_string(work.path().join("caddy.log")).unwrap_or_default();
        if let Ok(Some(status)) = caddy.child.try_wait() {
            panic!("caddy exited ({status}): {}", log());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "caddy did not listen: {}",
            log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let line = relay.address_line();
    Some(Setup {
        work,
        caddy,
        _relay: relay,
        line,
    })
}

/// curl's answer for `path` with `args`: the head without `Date` (status
/// line first), and the body; or curl's error when there was no answer.
fn curl(s: &Setup, args: &[&str], path: &str) -> (String, String) {
    let cert = s.work.path().join("cert.pem");
    let (head, body, err) = curl_https(&cert, "relay.example.org", s.caddy.port, args, path);
    if head.is_empty() {
        // No answer at all (a reset stream): what curl says is the answer.
        return (err.trim().to_string(), String::new());
    }
    (head, String::from_utf8_lossy(&body).into_owned())
}

fn fetch(s: &Setup, path: &str) -> (String, String) {
    let (head, body) = curl(s, &["--http2"], path);
    (head.lines().next().unwrap_or("").to_string(), body)
}

#[test]
fn two_users_message_through_caddy_over_h2_and_ws() {
    let Some(s) = setup() else {
        return;
    };
    let log = || std::fs::read_to_string(s.work.path().join("caddy.log")).unwrap_or_default();
    // What the world sees is Caddy's site, at the tunnel path too.
    let (status, body) = fetch(&s, "/");
    assert_eq!(status.trim(), "HTTP/2 200", "{}", log());
    assert!(body.contains("Field notes"), "{body}");
    assert_eq!(fetch(&s, TUNNEL_PATH).0.trim(), "HTTP/2 404");
    assert_eq!(s.line.carriers, [Carrier::H2, Carrier::Ws]);
    message_over_each_carrier(&s.line, "caddy", log);
}

/// Requests to the tunnel path that do not open a tunnel get the answer
/// Caddy gives the same request for a path it has no file for. POSTs carry
/// no body here: for a missing file Caddy answers 404 without reading a
/// body and then resets the stream, racing curl's upload (sometimes curl
/// sees the 404, sometimes the reset), while on the tunnel path the body
/// is read first; that difference is listed in the README.
#[test]
fn probes_through_caddy_get_the_sites_answer() {
    let Some(s) = setup() else {
        return;
    };
    let other = "/api/v2/events/7b2e4d90";
    for (what, args) in [
        ("GET", vec!["--http2"]),
        ("HEAD", vec!["--http2", "-I"]),
        ("POST, no gate", vec!["--http2", "-X", "POST", "--data", ""]),
        (
            "POST, a gate cookie of random bytes",
            vec![
                "--http2",
                "-X",
                "POST",
                "-H",
                "cookie: sid=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                "--data",
                "",
            ],
        ),
        (
            "WebSocket upgrade, no gate",
            vec![
                "--http1.1",
                "-H",
                "Connection: Upgrade",
                "-H",
                "Upgrade: websocket",
                "-H",
                "Sec-WebSocket-Version: 13",
                "-H",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            ],
        ),
    ] {
        let tunnel = curl(&s, &args, TUNNEL_PATH);
        let site = curl(&s, &args, other);
        assert!(!site.0.is_empty(), "{what}: no answer");
        assert_eq!(tunnel, site, "{what}: the tunnel path answered differently");
    }
}
