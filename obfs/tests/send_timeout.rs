//! A client that stops taking a large file: the front gives up after its
//! send timeout (nginx's `send_timeout`, between two writes), closing the
//! HTTP/1.1 connection or resetting the HTTP/2 stream, instead of holding
//! the file and the connection for as long as the client likes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use burrow_obfs::tls::{client_config, Trust, ALPN_HTTP1};
use burrow_obfs::{CertPin, Front, FrontConfig, Gate, GateSecret, Identity, Limits, Site, Source};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const FILE: usize = 32 * 1024 * 1024;

struct Served {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    pin: CertPin,
    _stop: watch::Sender<bool>,
}

async fn front_with_a_large_file(send_timeout: Duration) -> Served {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("big.bin"), vec![7u8; FILE]).expect("write");
    let (identity, _, _) = Identity::self_signed("example.org").expect("self-signed");
    let pin = identity.pin().expect("pin");
    let config = FrontConfig {
        identity,
        gate: Gate::new(GateSecret::generate(&mut rand::thread_rng())),
        tunnel_path: "/api/v2/events".into(),
        site: Site::new(Source::Dir(dir.path().to_path_buf()), 0, true),
        limits: Limits {
            send_timeout,
            ..Limits::default()
        },
    };
    let (front, _tunnels) = Front::bind("127.0.0.1:0".parse().expect("addr"), config)
        .await
        .expect("bind");
    let addr = front.local_addr();
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(front.run(stop_rx));
    Served {
        _dir: dir,
        addr,
        pin,
        _stop: stop,
    }
}

/// TLS to the front with `alpn`, over a socket with a small receive
/// buffer (so a client that stops reading stops the server soon).
async fn connect(
    s: &Served,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("rcvbuf");
    let tcp = socket.connect(s.addr).await.expect("connect");
    let config = client_config(&Trust::Pinned(s.pin), alpn).expect("tls config");
    tokio_rustls::TlsConnector::from(Arc::clone(&config))
        .connect(ServerName::try_from("example.org").expect("name"), tcp)
        .await
        .expect("tls")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_closes_a_connection_whose_client_stops_reading() {
    let s = front_with_a_large_file(Duration::from_millis(500)).await;
    let mut tls = connect(&s, &[ALPN_HTTP1]).await;
    tls.write_all(b"GET /big.bin HTTP/1.1\r\nHost: example.org\r\n\r\n")
        .await
        .expect("request");
    // The client takes nothing for longer than the send timeout ...
    tokio::time::sleep(Duration::from_secs(2)).await;
    // ... then reads: what was in flight, then the end.
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection stayed open");
    assert!(
        got < FILE,
        "the whole file came ({got} bytes): no send timeout"
    );
    assert!(got > 0, "nothing came before the timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_resets_a_stream_whose_client_opens_no_window() {
    let s = front_with_a_large_file(Duration::from_millis(500)).await;
    let tls = connect(&s, &[b"h2"]).await;
    let (mut client, conn) = h2::client::handshake(tls).await.expect("h2");
    tokio::spawn(conn);
    let req = http::Request::get("https://example.org/big.bin")
        .body(())
        .expect("request");
    let (resp, _) = client.send_request(req, true).expect("send");
    let resp = resp.await.expect("response");
    assert_eq!(resp.status(), 200);
    // The body is never released, so the 64 KiB windows stay shut.
    let mut body = resp.into_body();
    let mut got = 0usize;
    let err = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match body.data().await {
                Some(Ok(chunk)) => got += chunk.len(),
                Some(Err(e)) => return e,
                None => panic!("the body ended after {got} bytes"),
            }
        }
    })
    .await
    .expect("the stream stayed open");
    assert_eq!(err.reason(), Some(h2::Reason::INTERNAL_ERROR), "{err}");
    assert!(got <= 65_535, "{got} bytes came past the window");
}
