//! The relay's web front against real third-party clients: curl (HTTP/1.1
//! and HTTP/2), nghttp (HTTP/2 frames and SETTINGS) and aioquic (HTTP/3).

use std::process::Command;

use burrow_tests::{builtin_site_dir, h3_get, have_python_module, have_tool, run, RelayProc};

fn index_html() -> Vec<u8> {
    std::fs::read(builtin_site_dir().join("index.html")).expect("built-in index.html")
}

fn curl(relay: &RelayProc, args: &[&str]) -> (bool, Vec<u8>, String) {
    run(Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(relay.cert_path())
        .args(["--resolve", &relay.resolve_arg()])
        .args(args))
}

/// Splits curl `-i` output into (status line, lower-cased header names, body).
fn split_response(raw: &[u8]) -> (String, Vec<(String, String)>, Vec<u8>) {
    let sep = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header/body separator");
    let head = String::from_utf8_lossy(&raw[..sep]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default().trim().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, raw[sep + 4..].to_vec())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn curl_http11_and_http2_see_the_site() {
    if !have_tool("curl") {
        return;
    }
    let relay = RelayProc::start(&[]);
    for proto in ["--http1.1", "--http2"] {
        let (ok, out, err) = curl(&relay, &[proto, "-i", &relay.url("/")]);
        assert!(ok, "curl {proto}: {err}");
        let (status, headers, body) = split_response(&out);
        let want = if proto == "--http2" {
            "HTTP/2 200"
        } else {
            "HTTP/1.1 200 OK"
        };
        assert_eq!(status, want);
        assert_eq!(body, index_html());
        assert_eq!(header(&headers, "server"), Some("nginx"));
        assert_eq!(header(&headers, "content-type"), Some("text/html"));
        assert_eq!(header(&headers, "accept-ranges"), Some("bytes"));
        let alt = format!("h3=\":{}\"; ma=86400", relay.port());
        assert_eq!(header(&headers, "alt-svc"), Some(alt.as_str()));

        // A missing page: nginx's 404 page, byte for byte.
        let (ok, out, err) = curl(&relay, &[proto, "-i", &relay.url("/wp-admin/")]);
        assert!(ok, "{err}");
        let (status, _, body) = split_response(&out);
        assert!(status.contains("404"), "{status}");
        assert_eq!(
            body,
            b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
        );

        // HEAD: the same headers, no body.
        let (ok, out, err) = curl(&relay, &[proto, "-I", &relay.url("/style.css")]);
        assert!(ok, "{err}");
        let (status, headers, body) = split_response(&out);
        assert!(status.contains("200"), "{status}");
        assert!(body.is_empty());
        assert_eq!(header(&headers, "content-type"), Some("text/css"));
        let len = std::fs::metadata(builtin_site_dir().join("style.css"))
            .expect("css")
            .len();
        assert_eq!(
            header(&headers, "content-length"),
            Some(len.to_string().as_str())
        );

        // A path that climbs above the root: 400, as nginx answers.
        let (ok, out, err) = curl(
            &relay,
            &[proto, "-i", "--path-as-is", &relay.url("/../../etc/passwd")],
        );
        assert!(ok, "{err}");
        assert!(split_response(&out).0.contains("400"));

        // A method a static site does not allow.
        let (ok, out, err) = curl(&relay, &[proto, "-i", "-X", "DELETE", &relay.url("/")]);
        assert!(ok, "{err}");
        assert!(split_response(&out).0.contains("405"));
    }
}

#[test]
fn nghttp_sees_nginx_settings_and_the_site() {
    if !have_tool("nghttp") {
        return;
    }
    let relay = RelayProc::start(&[]);
    let (ok, out, err) = run(Command::new("nghttp")
        .args(["-nv", "--timeout=10"])
        .arg(format!("https://127.0.0.1:{}/", relay.port())));
    let text = String::from_utf8_lossy(&out);
    assert!(ok, "nghttp failed: {err}\n{text}");
    // The server's first SETTINGS frame is nginx's: same values, same order.
    let settings: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("recv SETTINGS frame"))
        .skip(2)
        .take_while(|l| l.trim_start().starts_with("[SETTINGS_"))
        .map(str::trim)
        .collect();
    assert_eq!(
        settings,
        [
            "[SETTINGS_MAX_CONCURRENT_STREAMS(0x03):128]",
            "[SETTINGS_INITIAL_WINDOW_SIZE(0x04):65536]",
            "[SETTINGS_MAX_FRAME_SIZE(0x05):16777215]"
        ],
        "{text}"
    );
    assert!(
        text.contains("(window_size_increment=2147418112)"),
        "{text}"
    );
    assert!(text.contains(":status: 200"), "{text}");
    assert!(text.contains("server: nginx"), "{text}");

    // A 404 through nghttp too.
    let (ok, out, _) = run(Command::new("nghttp")
        .args(["-v", "--timeout=10"])
        .arg(format!("https://127.0.0.1:{}/nope", relay.port())));
    assert!(ok);
    assert!(String::from_utf8_lossy(&out).contains(":status: 404"));
}

#[test]
fn aioquic_fetches_the_site_over_http3() {
    if !have_python_module("aioquic") {
        return;
    }
    let relay = RelayProc::start(&[]);
    let fetch = |path: &str, method: &str| {
        h3_get(
            &relay.url(path),
            relay.port(),
            &relay.cert_path(),
            &["--method", method],
        )
    };
    let (head, body) = fetch("/", "GET");
    assert!(head.starts_with("HTTP/3 200"), "{head}");
    assert!(head.contains("server: nginx"), "{head}");
    assert_eq!(body, index_html());

    let (head, _) = fetch("/missing.png", "GET");
    assert!(head.starts_with("HTTP/3 404"), "{head}");
}

/// With `--upstream`, the origin's pages come out of every carrier (HTTP/3
/// through aioquic too); a client with the wrong key on the tunnel path is
/// just another request for the origin; the right key still gets a tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_mode_serves_the_origin_on_every_carrier_and_still_tunnels() {
    use std::sync::Arc;

    use burrow_node::guarded::GuardedSockets;
    use burrow_obfs::{Carrier, Client, GateSecret};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let origin = burrow_tests::origin::Origin::start();
    let upstream = format!("http://127.0.0.1:{}", origin.port);
    let relay = RelayProc::start(&["--upstream", &upstream]);

    if have_tool("curl") {
        for proto in ["--http1.1", "--http2"] {
            let (ok, body, err) = curl(&relay, &[proto, &relay.url("/hello?x=1")]);
            assert!(ok, "curl {proto}: {err}");
            assert_eq!(body, b"hello from origin /hello?x=1\n", "{proto}");
        }
    }
    if have_python_module("aioquic") {
        let (head, body) = h3_get(
            &relay.url("/over-quic"),
            relay.port(),
            &relay.cert_path(),
            &[],
        );
        assert!(head.starts_with("HTTP/3 200"), "{head}");
        assert!(head.contains("set-cookie: theme=light; Path=/"), "{head}");
        assert!(
            !head.contains("origin/1.0"),
            "the origin's Server header leaks: {head}"
        );
        assert_eq!(body, b"hello from origin /over-quic\n");
    }

    let mut wrong = relay.line.clone();
    wrong.key = GateSecret::generate(&mut rand::rngs::OsRng).public();
    for carrier in [Carrier::H2, Carrier::H3] {
        // The client learns the answer at its first read; ending the
        // request body lets the proxy hand the request to the origin.
        let sockets = GuardedSockets::for_relay(&relay.line, "test").expect("sockets");
        let probe = Client::new(wrong.clone(), Arc::new(sockets.clone())).expect("client");
        let mut t = probe.connect_via(carrier).await.expect("request sent");
        t.shutdown().await.expect("end of request body");
        let mut buf = [0u8; 16];
        let err = t
            .read(&mut buf)
            .await
            .expect_err("no tunnel with a wrong key");
        // The origin answers every path with 200 text/html, the tunnel path too.
        assert!(
            err.to_string().contains("did not open a tunnel (HTTP 200)"),
            "{carrier:?} with a wrong key: {err}"
        );

        let client = Client::new(relay.line.clone(), Arc::new(sockets)).expect("client");
        let mut tunnel = client.connect_via(carrier).await.expect("tunnel");
        tunnel
            .established()
            .await
            .unwrap_or_else(|e| panic!("{carrier:?}: the right key gets a tunnel: {e}"));
    }
}
