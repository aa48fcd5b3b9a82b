//! Active probes: whatever a prober sends, the relay's answer must equal the
//! site's answer to the same request — status, headers (except `Date`),
//! body, whether the stream or connection is closed, and the timing class.
//!
//! "The site's answer" comes from a twin front: same site, same certificate,
//! but the probed path is not its tunnel path. Each probe is also checked
//! against a positive control (a valid gate on the same kind of connection
//! does open a tunnel), so the probes are known to hit the gate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use burrow_obfs::front::GATE_COOKIE;
use burrow_obfs::gate::{self, Binding, EXPORTER_LABEL, EXPORTER_LEN};
use burrow_obfs::tls::{client_config, Trust, ALPN_QUIC, ALPN_TCP};
use burrow_obfs::{
    CertPin, Front, FrontConfig, Gate, GatePublic, GateSecret, Identity, Limits, Site, Source,
};
use bytes::{Buf, Bytes};
use http::{Method, Request};
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const TUNNEL_PATH: &str = "/api/v2/events/0c3f9a1d";
/// Answers slower than this are a different timing class from the site's.
const PROMPT: Duration = Duration::from_millis(500);

struct Server {
    addr: SocketAddr,
    key: GatePublic,
    _stop: watch::Sender<bool>,
}

struct Pair {
    relay: Server,
    site: Server,
    pin: CertPin,
}

async fn start(identity: &Identity, tunnel_path: &str) -> Server {
    let secret = GateSecret::generate(&mut rand::thread_rng());
    let config = FrontConfig {
        identity: identity.clone(),
        gate: Gate::new(secret.clone()),
        tunnel_path: tunnel_path.into(),
        site: Site::new(Source::Builtin, 443, true),
        limits: Limits::default(),
    };
    let (front, mut tunnels) = Front::bind("127.0.0.1:0".parse().expect("addr"), config)
        .await
        .expect("bind");
    let addr = front.local_addr();
    let (stop, rx) = watch::channel(false);
    tokio::spawn(front.run(rx));
    // Accepted tunnels are held open until the test ends.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(t) = tunnels.accept().await {
            held.push(t);
        }
    });
    Server {
        addr,
        key: secret.public(),
        _stop: stop,
    }
}

async fn pair() -> Pair {
    let (identity, _, _) = Identity::self_signed("example.org").expect("cert");
    Pair {
        relay: start(&identity, TUNNEL_PATH).await,
        site: start(&identity, "/not/the/probed/path").await,
        pin: identity.pin().expect("pin"),
    }
}

/// Everything observable about one answer.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The connection still serves a normal request afterwards.
    connection_open: bool,
}

fn without_date(h: &http::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .filter(|(n, _)| *n != http::header::DATE)
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn gate_value(key: &GatePublic, exporter: [u8; EXPORTER_LEN]) -> String {
    let mut rng = rand::thread_rng();
    let mut eph = [0u8; 32];
    rng.fill_bytes(&mut eph);
    gate::build(
        key,
        &Binding::Exporter(exporter),
        1_800_000_000,
        eph,
        &mut rng,
    )
}

fn random_bytes(n: usize) -> Bytes {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    Bytes::from(v)
}

fn post(cookie: Option<String>) -> Request<()> {
    let mut b = Request::builder()
        .method(Method::POST)
        .uri(format!("https://example.org{TUNNEL_PATH}"))
        .header("content-type", "application/octet-stream");
    if let Some(c) = cookie {
        b = b.header("cookie", format!("{GATE_COOKIE}={c}"));
    }
    b.body(()).expect("request")
}

fn get(path: &str) -> Request<()> {
    Request::builder()
        .uri(format!("https://example.org{path}"))
        .body(())
        .expect("request")
}

// ------------------------------------------------------------------ HTTP/2

struct H2 {
    send: h2::client::SendRequest<Bytes>,
    exporter: [u8; EXPORTER_LEN],
}

async fn h2_connect(addr: SocketAddr, pin: CertPin) -> H2 {
    let cfg = client_config(&Trust::Pinned(pin), &ALPN_TCP).expect("tls config");
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect("example.org".try_into().expect("name"), tcp)
        .await
        .expect("tls");
    let mut exporter = [0u8; EXPORTER_LEN];
    tls.get_ref()
        .1
        .export_keying_material(&mut exporter, EXPORTER_LABEL, None)
        .expect("exporter");
    let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    H2 { send, exporter }
}

async fn h2_exchange(
    c: &mut H2,
    req: Request<()>,
    body: Option<Bytes>,
) -> Option<(u16, Vec<(String, String)>, Vec<u8>)> {
    let mut send = c.send.clone().ready().await.ok()?;
    let (resp, mut stream) = send.send_request(req, body.is_none()).ok()?;
    if let Some(b) = body {
        stream.reserve_capacity(b.len());
        let _ = stream.send_data(b, true);
    }
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let headers = without_date(resp.headers());
    if status == 200
        && resp.headers().get("content-type").map(|v| v.as_bytes())
            == Some(b"application/octet-stream")
    {
        // A tunnel: its body never ends, so do not wait for it.
        return Some((status, headers, Vec::new()));
    }
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), body.data())
        .await
        .ok()?
    {
        let chunk = chunk.ok()?;
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    Some((status, headers, out))
}

async fn h2_probe(c: &mut H2, req: Request<()>, body: Option<Bytes>) -> (Answer, Duration) {
    let start = Instant::now();
    let (status, headers, body) = h2_exchange(c, req, body).await.expect("an HTTP answer");
    let took = start.elapsed();
    let connection_open = matches!(
        h2_exchange(c, get("/robots.txt"), None).await,
        Some((200, _, _))
    );
    (
        Answer {
            status,
            headers,
            body,
            connection_open,
        },
        took,
    )
}

/// Sends the same probe to both servers and asserts identical answers.
async fn h2_same<F>(p: &Pair, what: &str, make: F)
where
    F: Fn(&H2, &GatePublic) -> (Request<()>, Option<Bytes>),
{
    let mut a = h2_connect(p.relay.addr, p.pin).await;
    let (req, body) = make(&a, &p.relay.key);
    let (relay, t1) = h2_probe(&mut a, req, body).await;
    let mut b = h2_connect(p.site.addr, p.pin).await;
    let (req, body) = make(&b, &p.site.key);
    let (site, t2) = h2_probe(&mut b, req, body).await;
    assert_eq!(
        relay, site,
        "h2 probe `{what}`: the relay answered differently from the site"
    );
    assert_ne!(relay.status, 200, "h2 probe `{what}` opened something");
    assert!(
        t1 < PROMPT && t2 < PROMPT,
        "h2 probe `{what}`: timing class differs ({t1:?} vs {t2:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_probes_get_the_sites_answer() {
    let p = pair().await;

    // Positive control: a valid gate on its own connection opens a tunnel.
    let mut c = h2_connect(p.relay.addr, p.pin).await;
    let gate = gate_value(&p.relay.key, c.exporter);
    let (status, _, _) = h2_exchange(&mut c, post(Some(gate)), None)
        .await
        .expect("answer");
    assert_eq!(status, 200, "control: a valid gate must open a tunnel");

    h2_same(&p, "GET on the tunnel path", |_, _| {
        (get(TUNNEL_PATH), None)
    })
    .await;
    h2_same(&p, "POST without a gate, random body", |_, _| {
        (post(None), Some(random_bytes(4096)))
    })
    .await;
    h2_same(&p, "gate for another key", |c, _| {
        let other = GateSecret::generate(&mut rand::thread_rng()).public();
        (post(Some(gate_value(&other, c.exporter))), None)
    })
    .await;
    h2_same(&p, "truncated gate", |c, key| {
        let g = gate_value(key, c.exporter);
        (post(Some(g[..g.len() / 2].to_string())), None)
    })
    .await;
    h2_same(&p, "oversized gate", |_, _| {
        (post(Some(URL_SAFE_NO_PAD.encode(random_bytes(3000)))), None)
    })
    .await;
    h2_same(&p, "random bytes as the gate and the body", |_, _| {
        (
            post(Some(URL_SAFE_NO_PAD.encode(random_bytes(90)))),
            Some(random_bytes(70_000)),
        )
    })
    .await;

    // Replay: a gate recorded on one relay connection, sent on another.
    let recorded = {
        let c = h2_connect(p.relay.addr, p.pin).await;
        gate_value(&p.relay.key, c.exporter)
    };
    let replayed = recorded.clone();
    h2_same(&p, "gate replayed from another connection", move |_, _| {
        (post(Some(replayed.clone())), None)
    })
    .await;
}

// ------------------------------------------------------------------ HTTP/3

struct H3 {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    exporter: [u8; EXPORTER_LEN],
    _endpoint: quinn::Endpoint,
}

async fn h3_connect(addr: SocketAddr, pin: CertPin) -> H3 {
    let cfg = client_config(&Trust::Pinned(pin), &[ALPN_QUIC]).expect("tls config");
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).expect("quic tls");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = endpoint
        .connect(addr, "example.org")
        .expect("connect")
        .await
        .expect("quic");
    let mut exporter = [0u8; EXPORTER_LEN];
    conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .expect("exporter");
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .expect("h3");
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    H3 {
        send,
        exporter,
        _endpoint: endpoint,
    }
}

async fn h3_exchange(
    c: &mut H3,
    req: Request<()>,
    body: Option<Bytes>,
) -> Option<(u16, Vec<(String, String)>, Vec<u8>)> {
    let mut stream = c.send.send_request(req).await.ok()?;
    // The server may answer and stop reading before the body is through;
    // a failed send is then expected and the answer still counts.
    if let Some(b) = body {
        let _ = stream.send_data(b).await;
    }
    let _ = stream.finish().await;
    let resp = tokio::time::timeout(Duration::from_secs(5), stream.recv_response())
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let headers = without_date(resp.headers());
    if status == 200
        && resp.headers().get("content-type").map(|v| v.as_bytes())
            == Some(b"application/octet-stream")
    {
        return Some((status, headers, Vec::new()));
    }
    let mut out = Vec::new();
    while let Some(mut chunk) = tokio::time::timeout(Duration::from_secs(5), stream.recv_data())
        .await
        .ok()?
        .ok()?
    {
        out.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    Some((status, headers, out))
}

async fn h3_same<F>(p: &Pair, what: &str, make: F)
where
    F: Fn(&H3, &GatePublic) -> (Request<()>, Option<Bytes>),
{
    let mut answers = Vec::new();
    for server in [&p.relay, &p.site] {
        let mut c = h3_connect(server.addr, p.pin).await;
        let (req, body) = make(&c, &server.key);
        let start = Instant::now();
        let (status, headers, body) = h3_exchange(&mut c, req, body)
            .await
            .unwrap_or_else(|| panic!("h3 probe `{what}`: no HTTP/3 answer"));
        let took = start.elapsed();
        let connection_open = matches!(
            h3_exchange(&mut c, get("/robots.txt"), None).await,
            Some((200, _, _))
        );
        assert!(took < PROMPT, "h3 probe `{what}` took {took:?}");
        answers.push(Answer {
            status,
            headers,
            body,
            connection_open,
        });
    }
    assert_eq!(
        answers[0], answers[1],
        "h3 probe `{what}`: the relay answered differently from the site"
    );
    assert_ne!(answers[0].status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_probes_get_the_sites_answer() {
    let p = pair().await;

    let mut c = h3_connect(p.relay.addr, p.pin).await;
    let gate = gate_value(&p.relay.key, c.exporter);
    let (status, _, _) = h3_exchange(&mut c, post(Some(gate)), None)
        .await
        .expect("answer");
    assert_eq!(status, 200, "control: a valid gate must open a tunnel");

    h3_same(&p, "GET on the tunnel path", |_, _| {
        (get(TUNNEL_PATH), None)
    })
    .await;
    h3_same(&p, "POST without a gate, random body", |_, _| {
        (post(None), Some(random_bytes(4096)))
    })
    .await;
    h3_same(&p, "gate for another key", |c, _| {
        let other = GateSecret::generate(&mut rand::thread_rng()).public();
        (post(Some(gate_value(&other, c.exporter))), None)
    })
    .await;
    h3_same(&p, "truncated gate", |c, key| {
        let g = gate_value(key, c.exporter);
        (post(Some(g[..g.len() - 7].to_string())), None)
    })
    .await;
    let recorded = {
        let c = h3_connect(p.relay.addr, p.pin).await;
        gate_value(&p.relay.key, c.exporter)
    };
    h3_same(&p, "gate replayed from another connection", move |_, _| {
        (post(Some(recorded.clone())), None)
    })
    .await;
}

/// A client may end its request after the answer has come (a busy client,
/// or a body still on its way). The front then asks it to stop with
/// H3_NO_ERROR, as RFC 9114 §4.1 says and a mainstream server does, and the
/// answer is whole. (quinn's implicit code 0 on an unread stream once made
/// `burrow demo` fail with "Remote reset: 0x0".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_request_ended_after_the_answer_is_stopped_with_no_error() {
    let p = pair().await;
    let mut c = h3_connect(p.site.addr, p.pin).await;
    let mut stream = c.send.send_request(get("/")).await.expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(5), stream.recv_response())
        .await
        .expect("prompt")
        .expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.expect("whole body") {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    assert!(body.starts_with(b"<!DOCTYPE html>"), "the site's page");
    // The answer is complete; the request's end is still unsent. Give the
    // front's STOP_SENDING time to arrive, then end the request.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        match stream.send_data(Bytes::from_static(b"x")).await {
            Ok(()) if Instant::now() < deadline => continue,
            Ok(()) => panic!("the front never asked the client to stop sending"),
            Err(e) => {
                assert!(
                    e.to_string().contains("H3_NO_ERROR"),
                    "stopped with H3_NO_ERROR, not an abort code: {e}"
                );
                break;
            }
        }
    }
}

// ------------------------------------------- HTTP/1.1 and raw bytes on TLS

async fn tls_raw(
    addr: SocketAddr,
    pin: CertPin,
    alpn: &[&[u8]],
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    [u8; EXPORTER_LEN],
) {
    let cfg = client_config(&Trust::Pinned(pin), alpn).expect("tls config");
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect("example.org".try_into().expect("name"), tcp)
        .await
        .expect("tls");
    let mut exporter = [0u8; EXPORTER_LEN];
    tls.get_ref()
        .1
        .export_keying_material(&mut exporter, EXPORTER_LABEL, None)
        .expect("exporter");
    (tls, exporter)
}

/// Sends `bytes`, then reads until the server closes or goes quiet.
/// Returns what came back (with `Date:` lines blanked) and whether it closed.
async fn raw_exchange(
    tls: &mut tokio_rustls::client::TlsStream<TcpStream>,
    bytes: &[u8],
) -> (Vec<u8>, bool) {
    let _ = tls.write_all(bytes).await;
    let _ = tls.flush().await;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout(Duration::from_millis(1500), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&out)
        .split("\r\n")
        .map(|l| {
            if l.to_ascii_lowercase().starts_with("date:") {
                "date: -"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    (text.into_bytes(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_and_raw_byte_probes_get_the_sites_answer() {
    let p = pair().await;
    // On HTTP/1.1 only a WebSocket upgrade carries a tunnel: a POST, even
    // with a gate valid for this very connection, gets the site's answer.
    let mut answers = Vec::new();
    for server in [&p.relay, &p.site] {
        let (mut tls, exporter) = tls_raw(server.addr, p.pin, &[b"http/1.1"]).await;
        let gate = gate_value(&server.key, exporter);
        let req = format!(
            "POST {TUNNEL_PATH} HTTP/1.1\r\nHost: example.org\r\nCookie: {GATE_COOKIE}={gate}\r\nContent-Length: 5\r\n\r\nhello"
        );
        answers.push(raw_exchange(&mut tls, req.as_bytes()).await);
    }
    assert_eq!(answers[0], answers[1], "HTTP/1.1 POST with a gate");
    assert!(String::from_utf8_lossy(&answers[0].0).starts_with("HTTP/1.1 404"));

    // WebSocket upgrades that fail the gate: a gate for another key, one
    // recorded on another connection, none at all, and a valid gate
    // without the WebSocket key.
    let upgrade = |cookie: Option<String>, ws_key: bool| {
        let mut r = format!(
            "GET {TUNNEL_PATH} HTTP/1.1\r\nHost: example.org\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        );
        if ws_key {
            r.push_str("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
        }
        if let Some(c) = cookie {
            r.push_str(&format!("Cookie: {GATE_COOKIE}={c}\r\n"));
        }
        r.push_str("\r\n");
        r
    };
    let other_key = GateSecret::generate(&mut rand::thread_rng()).public();
    let recorded = {
        let (_, exporter) = tls_raw(p.relay.addr, p.pin, &[b"http/1.1"]).await;
        gate_value(&p.relay.key, exporter)
    };
    type Probe = Box<dyn Fn(&GatePublic, [u8; EXPORTER_LEN]) -> String>;
    let probes: [(&str, Probe); 4] = [
        (
            "upgrade with a gate for another key",
            Box::new(move |_, e| upgrade(Some(gate_value(&other_key, e)), true)),
        ),
        (
            "upgrade with a gate from another connection",
            Box::new(move |_, _| upgrade(Some(recorded.clone()), true)),
        ),
        (
            "upgrade without a gate",
            Box::new(move |_, _| upgrade(None, true)),
        ),
        (
            "upgrade without Sec-WebSocket-Key",
            Box::new(move |k, e| upgrade(Some(gate_value(k, e)), false)),
        ),
    ];
    for (what, make) in probes {
        let mut answers = Vec::new();
        for server in [&p.relay, &p.site] {
            let (mut tls, exporter) = tls_raw(server.addr, p.pin, &[b"http/1.1"]).await;
            let req = make(&server.key, exporter);
            answers.push(raw_exchange(&mut tls, req.as_bytes()).await);
        }
        assert_eq!(answers[0], answers[1], "{what}");
        assert!(
            !String::from_utf8_lossy(&answers[0].0).starts_with("HTTP/1.1 101"),
            "{what}"
        );
    }
    // The positive control: a valid gate on this connection upgrades.
    let (mut tls, exporter) = tls_raw(p.relay.addr, p.pin, &[b"http/1.1"]).await;
    let req = upgrade(Some(gate_value(&p.relay.key, exporter)), true);
    tls.write_all(req.as_bytes()).await.expect("write");
    let mut head = [0u8; 12];
    tls.read_exact(&mut head).await.expect("answer");
    assert_eq!(&head, b"HTTP/1.1 101", "a valid gate upgrades");

    // Random bytes right after the TLS handshake, under each ALPN.
    let garbage = random_bytes(2000);
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let mut answers = Vec::new();
        for server in [&p.relay, &p.site] {
            let (mut tls, _) = tls_raw(server.addr, p.pin, &[alpn]).await;
            answers.push(raw_exchange(&mut tls, &garbage).await);
        }
        assert_eq!(
            answers[0],
            answers[1],
            "random bytes under ALPN {}",
            String::from_utf8_lossy(alpn)
        );
    }
}
