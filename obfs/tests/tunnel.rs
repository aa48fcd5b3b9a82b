//! Tunnels over every carrier (HTTP/2, HTTP/3, WebSocket), in one process on
//! loopback: data both ways, byte-exact; many at once; clean close from
//! either side; wrong key refused.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use burrow_obfs::{
    Carrier, Client, Front, FrontConfig, Gate, GateSecret, Identity, Limits, RelayLine, Site,
    Sockets, Source, Tunnel, Tunnels,
};

mod support;
use support::LoopbackSockets;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Every carrier; the shared tests run over each.
const CARRIERS: [Carrier; 3] = [Carrier::H2, Carrier::H3, Carrier::Ws];

struct Relay {
    line: RelayLine,
    tunnels: Tunnels,
    _stop: watch::Sender<bool>,
}

async fn relay() -> Relay {
    relay_with(Limits::default()).await
}

async fn relay_with(limits: Limits) -> Relay {
    let (identity, _, _) = Identity::self_signed("example.org").expect("self-signed");
    let secret = GateSecret::generate(&mut rand::thread_rng());
    let pin = identity.pin();
    let config = FrontConfig {
        identity,
        gate: Gate::new(secret.clone()),
        tunnel_path: "/api/v2/events".into(),
        site: Site::new(Source::Builtin, 0, true),
        limits,
    };
    let (front, tunnels) = Front::bind("127.0.0.1:0".parse().expect("addr"), config)
        .await
        .expect("bind");
    let addr = front.local_addr();
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(front.run(stop_rx));
    let line = RelayLine {
        host: "example.org".into(),
        port: addr.port(),
        path: "/api/v2/events".into(),
        key: secret.public(),
        carriers: CARRIERS.to_vec(),
        pin,
        ip: Some(addr.ip()),
        id: None,
        proxied: false,
    };
    Relay {
        line,
        tunnels,
        _stop: stop,
    }
}

fn client(line: &RelayLine) -> Client {
    Client::new(line.clone(), Arc::new(LoopbackSockets)).expect("client")
}

/// Echoes every tunnel until its client half-closes, then closes too.
fn spawn_echo(mut tunnels: Tunnels) {
    tokio::spawn(async move {
        while let Some(mut t) = tunnels.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match t.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            if t.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
                let _ = t.shutdown().await;
            });
        }
    });
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

async fn echo_roundtrip(mut t: Tunnel, len: usize, seed: u8) {
    let data = pattern(len, seed);
    let (mut r, mut w) = tokio::io::split(&mut t);
    let writer = async {
        for chunk in data.chunks(100_000) {
            w.write_all(chunk).await.expect("write");
        }
        w.shutdown().await.expect("shutdown");
    };
    let reader = async {
        let mut got = Vec::with_capacity(len);
        r.read_to_end(&mut got).await.expect("read");
        got
    };
    let ((), got) = tokio::join!(writer, reader);
    assert_eq!(got.len(), data.len(), "length");
    assert!(got == data, "bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_both_ways_over_each_carrier() {
    let r = relay().await;
    let line = r.line.clone();
    spawn_echo(r.tunnels);
    for carrier in CARRIERS {
        let t = client(&line).connect_via(carrier).await.expect("connect");
        assert_eq!(t.carrier(), carrier);
        echo_roundtrip(t, 100 * 1000 * 1000 + 17, 3).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tunnels_at_once() {
    let r = relay().await;
    let line = r.line.clone();
    spawn_echo(r.tunnels);
    echo_at_once(&line, 40, 200_000, &CARRIERS).await;
}

/// `count` tunnels at once, over `carriers` in turn, each echoing a little
/// over `size` bytes.
async fn echo_at_once(line: &RelayLine, count: u8, size: usize, carriers: &[Carrier]) {
    let mut tasks = Vec::new();
    for i in 0..count {
        let line = line.clone();
        let carrier = carriers[usize::from(i) % carriers.len()];
        tasks.push(tokio::spawn(async move {
            let t = client(&line).connect_via(carrier).await.expect("connect");
            echo_roundtrip(t, size + usize::from(i), i).await;
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_side_close_reaches_client_cleanly() {
    let mut r = relay().await;
    for carrier in CARRIERS {
        relay_closes_first(&mut r, carrier).await;
    }
}

/// The relay closes its direction first and the client reads to a clean
/// EOF; the client's direction stays open until it closes it too.
async fn relay_closes_first(r: &mut Relay, carrier: Carrier) {
    let mut t = client(&r.line).connect_via(carrier).await.expect("connect");
    t.write_all(b"hello").await.expect("write");
    t.flush().await.expect("flush");
    let mut server = r.tunnels.accept().await.expect("tunnel");
    let mut buf = [0u8; 5];
    server.read_exact(&mut buf).await.expect("server read");
    assert_eq!(&buf, b"hello");
    server.write_all(b"bye").await.expect("server write");
    server.shutdown().await.expect("server shutdown");
    let mut got = Vec::new();
    t.read_to_end(&mut got)
        .await
        .expect("client reads to a clean EOF");
    assert_eq!(got, b"bye");
    // The client's direction is still open after the relay closed its own.
    t.write_all(b"late").await.expect("late write");
    t.shutdown().await.expect("client shutdown");
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).await.expect("server EOF");
    assert_eq!(rest, b"late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_gets_the_site_not_a_tunnel() {
    let r = relay().await;
    let mut line = r.line.clone();
    line.key = GateSecret::generate(&mut rand::thread_rng()).public();
    for carrier in [Carrier::H2, Carrier::H3] {
        let mut t = client(&line)
            .connect_via(carrier)
            .await
            .expect("carrier connects");
        let err = t.established().await.expect_err("must be refused");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        assert!(err.to_string().contains("HTTP 404"), "{err}");
    }
    // The WebSocket carrier waits for the 101, so the refusal comes at once.
    let err = client(&line)
        .connect_via(Carrier::Ws)
        .await
        .expect_err("must be refused");
    assert!(
        matches!(
            err,
            burrow_obfs::Error::NotARelay {
                carrier: "ws",
                status: 404
            }
        ),
        "{err}"
    );
}

/// A network where a censor blocks UDP (refusing it, or dropping every
/// datagram) and, optionally, black-holes TCP. Counts the dials it sees.
#[derive(Debug, Default)]
struct Censored {
    drop_tcp: bool,
    /// Where datagrams vanish: a socket that never answers. `None` refuses
    /// UDP outright.
    udp_sink: Option<std::net::UdpSocket>,
    /// No censor at all on UDP: datagrams reach the relay.
    udp_open: bool,
    tcp_dials: AtomicUsize,
    udp_dials: AtomicUsize,
}

impl Censored {
    fn open() -> Self {
        Self {
            udp_open: true,
            ..Self::default()
        }
    }

    fn udp_refused() -> Self {
        Self::default()
    }

    fn everything_dropped() -> Self {
        Self {
            drop_tcp: true,
            ..Self::udp_dropped()
        }
    }

    fn udp_dropped() -> Self {
        Self {
            udp_sink: Some(std::net::UdpSocket::bind("127.0.0.1:0").expect("sink")),
            ..Self::default()
        }
    }

    fn dials(&self) -> (usize, usize) {
        (
            self.tcp_dials.load(Ordering::SeqCst),
            self.udp_dials.load(Ordering::SeqCst),
        )
    }
}

impl Sockets for Censored {
    fn tcp(
        &self,
        host: &str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send + '_>> {
        self.tcp_dials.fetch_add(1, Ordering::SeqCst);
        let drop_tcp = self.drop_tcp;
        let host = host.to_string();
        Box::pin(async move {
            if drop_tcp {
                // SYNs vanish: the connect never completes.
                std::future::pending::<()>().await;
            }
            let ip: std::net::IpAddr = host
                .parse()
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            TcpStream::connect(SocketAddr::new(ip, port)).await
        })
    }

    #[allow(clippy::type_complexity)]
    fn udp(
        &self,
        host: &str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<(std::net::UdpSocket, SocketAddr)>> + Send + '_>>
    {
        self.udp_dials.fetch_add(1, Ordering::SeqCst);
        let host = host.to_string();
        Box::pin(async move {
            if self.udp_open {
                let ip: std::net::IpAddr = host
                    .parse()
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
                return Ok((socket, SocketAddr::new(ip, port)));
            }
            let Some(sink) = &self.udp_sink else {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "UDP blocked",
                ));
            };
            let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
            Ok((socket, sink.local_addr()?))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_the_other_carrier() {
    let r = relay().await;
    let mut line = r.line.clone();
    spawn_echo(r.tunnels);
    line.carriers = vec![Carrier::H3, Carrier::H2];
    let udp_blocked = Client::new(line.clone(), Arc::new(Censored::udp_refused())).expect("client");
    let t = udp_blocked
        .connect_established()
        .await
        .expect("falls back to h2");
    assert_eq!(t.carrier(), Carrier::H2);
    echo_roundtrip(t, 100_000, 1).await;

    let tcp_dropped = Censored {
        drop_tcp: true,
        ..Censored::udp_refused()
    };
    let all_blocked = Client::new(line, Arc::new(tcp_dropped))
        .expect("client")
        .with_connect_timeout(Duration::from_millis(300));
    let err = all_blocked
        .connect_established()
        .await
        .expect_err("nothing gets through");
    let text = err.to_string();
    assert!(
        text.contains("h3 carrier") && text.contains("UDP blocked"),
        "{text}"
    );
    assert!(
        text.contains("h2 carrier") && text.contains("timed out"),
        "{text}"
    );
}

/// A relay that echoes its tunnels, and its line with QUIC first (a
/// punching node's order); the sender keeps it running.
async fn quic_first_echo() -> (RelayLine, watch::Sender<bool>) {
    let r = relay().await;
    spawn_echo(r.tunnels);
    let mut line = r.line;
    line.carriers = vec![Carrier::H3, Carrier::H2];
    (line, r._stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_that_failed_steps_aside_for_a_while() {
    let (line, _relay) = quic_first_echo().await;
    let net = Arc::new(Censored::udp_dropped());
    let client = Client::new(line, net.clone())
        .expect("client")
        .with_connect_timeout(Duration::from_millis(500))
        .with_failed_carrier_wait(Duration::from_secs(2));

    // The first dial waits out QUIC's silence, then takes HTTP/2.
    let t = client.connect_established().await.expect("falls back");
    assert_eq!(t.carrier(), Carrier::H2);
    assert_eq!(net.dials(), (1, 1));
    assert_eq!(client.carriers(), [Carrier::H2, Carrier::H3]);
    let why = client.make_way(Carrier::H3).expect("h3 steps aside");
    assert!(why.contains("trying the h2 carrier first"), "{why}");
    assert_eq!(client.make_way(Carrier::H2), None);

    // The next dials, from this client or a clone, go straight to HTTP/2.
    for c in [client.clone(), client.clone()] {
        let t = c.connect_established().await.expect("h2 at once");
        assert_eq!(t.carrier(), Carrier::H2);
        echo_roundtrip(t, 1_000, 1).await;
    }
    assert_eq!(net.dials(), (3, 1), "no QUIC dial while it steps aside");

    // Once the wait is over, QUIC gets its turn again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(client.carriers(), [Carrier::H3, Carrier::H2]);
    assert_eq!(client.make_way(Carrier::H3), None);
    let t = client.connect_established().await.expect("falls back");
    assert_eq!(t.carrier(), Carrier::H2);
    assert_eq!(net.dials(), (4, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dropped_carrier_costs_its_head_start_not_its_timeout() {
    let (line, _relay) = quic_first_echo().await;
    let net = Arc::new(Censored::udp_dropped());
    // QUIC would wait a minute for an answer that never comes.
    let client = Client::new(line, net.clone())
        .expect("client")
        .with_connect_timeout(Duration::from_secs(60))
        .with_head_start(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let t = client.connect_established().await.expect("h2 overtakes");
    assert_eq!(t.carrier(), Carrier::H2);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "HTTP/2 started after QUIC's head start, not its timeout: {:?}",
        started.elapsed()
    );
    echo_roundtrip(t, 10_000, 1).await;
    assert_eq!(net.dials(), (1, 1));

    // The overtaken carrier steps aside, as a failed one does.
    assert_eq!(client.carriers(), [Carrier::H2, Carrier::H3]);
    let t = client.connect_established().await.expect("h2 at once");
    assert_eq!(t.carrier(), Carrier::H2);
    assert_eq!(net.dials(), (2, 1), "no QUIC dial while it steps aside");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_through_within_its_head_start_is_the_only_one_dialled() {
    let r = relay().await;
    spawn_echo(r.tunnels);
    for (first, dials) in [(Carrier::H3, (0, 1)), (Carrier::H2, (1, 0))] {
        let mut line = r.line.clone();
        line.carriers = vec![first, Carrier::H2, Carrier::H3];
        line.carriers.dedup();
        let net = Arc::new(Censored::open());
        let client = Client::new(line, net.clone())
            .expect("client")
            .with_head_start(Duration::from_secs(30));
        let t = client.connect_established().await.expect("through");
        assert_eq!(t.carrier(), first);
        echo_roundtrip(t, 1_000, 1).await;
        assert_eq!(
            net.dials(),
            dials,
            "{first}: only the first carrier was dialled"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_waits_its_turn_unless_those_ahead_fail() {
    // A dialer that starts every carrier at once (as libp2p does) and
    // holds each back with `wait_turn`.
    let r = relay().await;
    let mut line = r.line.clone();
    line.carriers = vec![Carrier::H3, Carrier::H2];
    let turn = |client: Client, carrier| async move {
        let started = std::time::Instant::now();
        client.wait_turn(carrier).await;
        started.elapsed()
    };

    // QUIC refused at once: HTTP/2 need not wait out the head start.
    let refused = Client::new(line.clone(), Arc::new(Censored::udp_refused()))
        .expect("client")
        .with_head_start(Duration::from_secs(30));
    let h2 = tokio::spawn(turn(refused.clone(), Carrier::H2));
    assert!(turn(refused.clone(), Carrier::H3).await < Duration::from_secs(5));
    refused
        .connect_via(Carrier::H3)
        .await
        .expect_err("UDP refused");
    let waited = h2.await.expect("h2");
    assert!(waited < Duration::from_secs(20), "{waited:?}");

    // QUIC silent: HTTP/2 goes after the head start.
    let silent = Client::new(line, Arc::new(Censored::udp_dropped()))
        .expect("client")
        .with_head_start(Duration::from_millis(200));
    let waited = turn(silent, Carrier::H2).await;
    assert!(waited >= Duration::from_millis(190), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_carrier_failed_lately_all_are_tried_again() {
    let r = relay().await;
    let mut line = r.line.clone();
    line.carriers = vec![Carrier::H3, Carrier::H2];
    let net = Arc::new(Censored::everything_dropped());
    let client = Client::new(line, net.clone())
        .expect("client")
        .with_connect_timeout(Duration::from_millis(200));
    for round in 1..=2 {
        client.connect().await.expect_err("nothing gets through");
        assert_eq!(net.dials(), (round, round));
        // Neither steps aside for the other: both failed.
        assert_eq!(client.make_way(Carrier::H3), None);
        assert_eq!(client.make_way(Carrier::H2), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_pong_when_the_writer_never_flushes() {
    // The echo side writes and then only reads: its write must still leave.
    let r = relay().await;
    let line = r.line.clone();
    spawn_echo(r.tunnels);
    for carrier in CARRIERS {
        let mut t = client(&line).connect_via(carrier).await.expect("connect");
        let mut back = [0u8; 64];
        for i in 0..50u8 {
            t.write_all(&[i; 64]).await.expect("write");
            t.flush().await.expect("flush");
            tokio::time::timeout(Duration::from_secs(10), t.read_exact(&mut back))
                .await
                .expect("echo arrives without a flush on the relay side")
                .expect("read");
            assert_eq!(back, [i; 64]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_tunnel_keeps_its_place_under_the_connection_limit() {
    let r = relay_with(Limits {
        max_connections: 1,
        ..Limits::default()
    })
    .await;
    let line = r.line.clone();
    spawn_echo(r.tunnels);
    let mut ws = client(&line).connect_via(Carrier::Ws).await.expect("ws");
    ws.write_all(b"ping").await.expect("write");
    let mut back = [0u8; 4];
    ws.read_exact(&mut back).await.expect("echo");
    // The upgraded connection still holds the only place: another waits.
    let busy = client(&line).with_connect_timeout(Duration::from_millis(500));
    assert!(
        busy.connect_via(Carrier::H2).await.is_err(),
        "over the limit"
    );
    ws.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    ws.read_to_end(&mut rest).await.expect("relay closes too");
    drop(ws);
    let mut t = None;
    for _ in 0..50 {
        if let Ok(ok) = client(&line)
            .with_connect_timeout(Duration::from_millis(500))
            .connect_via(Carrier::H2)
            .await
        {
            t = Some(ok);
            break;
        }
    }
    let mut t = t.expect("the place is free again once the tunnel ended");
    t.established().await.expect("accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shut_down_tunnel_delivers_everything_while_nobody_polls_it() {
    // The relay side writes more than the socket holds, shuts down and then
    // keeps the tunnel without touching it: once `shutdown` is done, the
    // rest must reach the client with no further help from the writer.
    let mut r = relay().await;
    for carrier in CARRIERS {
        let mut t = client(&r.line).connect_via(carrier).await.expect("connect");
        t.write_all(b"go").await.expect("write");
        t.flush().await.expect("flush");
        let mut server = r.tunnels.accept().await.expect("tunnel");
        let mut go = [0u8; 2];
        server.read_exact(&mut go).await.expect("server read");
        let data = pattern(24 * 1024 * 1024 + 5, 9);
        let sent = data.clone();
        let (kept, keep) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            server.write_all(&sent).await.expect("server write");
            server.shutdown().await.expect("server shutdown");
            let _ = kept.send(server);
        });
        let mut got = Vec::with_capacity(data.len());
        tokio::time::timeout(Duration::from_secs(60), t.read_to_end(&mut got))
            .await
            .unwrap_or_else(|_| panic!("{carrier}: stalled after {} bytes", got.len()))
            .expect("read");
        assert!(got == data, "{carrier}: bytes differ");
        drop(keep.await.expect("the relay side kept its tunnel"));
    }
}

/// An HTTP/2 site connection to the relay, driven in the background; the
/// handle resolves when the server has closed it.
async fn h2_site_connection(
    line: &RelayLine,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let cfg = burrow_obfs::tls::client_config(
        &burrow_obfs::tls::Trust::Pinned(line.pin.expect("pin")),
        &burrow_obfs::tls::ALPN_TCP,
    )
    .expect("tls config");
    let tcp = TcpStream::connect(("127.0.0.1", line.port))
        .await
        .expect("tcp");
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect("example.org".try_into().expect("name"), tcp)
        .await
        .expect("tls");
    let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    (send, tokio::spawn(conn))
}

async fn h2_get(send: &mut h2::client::SendRequest<bytes::Bytes>) -> Result<u16, h2::Error> {
    let req = http::Request::get("https://example.org/robots.txt")
        .body(())
        .expect("request");
    let (resp, _) = send.clone().ready().await?.send_request(req, true)?;
    let resp = resp.await?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok(status)
}

/// As nginx does (keepalive_requests, keepalive_timeout): an HTTP/2 site
/// connection is closed after its last allowed request, with every answer
/// delivered, and when it has been idle too long. A tunnel's connection is
/// never closed for being idle: an idle user is still a user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_connections_end_like_nginx_tunnel_connections_stay() {
    let idle = Duration::from_millis(300);
    let r = relay_with(Limits {
        keepalive_requests: 5,
        keepalive_timeout: idle,
        ..Limits::default()
    })
    .await;
    spawn_echo(r.tunnels);

    let (mut send, conn) = h2_site_connection(&r.line).await;
    for i in 0..5 {
        assert_eq!(
            h2_get(&mut send).await.expect("allowed request"),
            200,
            "#{i}"
        );
    }
    // The fifth answer came with the GOAWAY; the connection then closes
    // cleanly and takes no sixth request.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the server closes the connection");
    ended
        .expect("task")
        .expect("a clean close (GOAWAY NO_ERROR)");
    h2_get(&mut send)
        .await
        .expect_err("no sixth request on this connection");

    let (mut send, conn) = h2_site_connection(&r.line).await;
    assert_eq!(h2_get(&mut send).await.expect("request"), 200);
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("an idle connection is closed");
    ended
        .expect("task")
        .expect("a clean close (GOAWAY NO_ERROR)");
    assert!(started.elapsed() >= idle - Duration::from_millis(50));

    // A tunnel left idle for several times the timeout still carries data.
    let mut t = client(&r.line)
        .connect_via(Carrier::H2)
        .await
        .expect("tunnel");
    t.write_all(b"before").await.expect("write");
    let mut got = [0u8; 6];
    t.read_exact(&mut got).await.expect("echo");
    tokio::time::sleep(idle * 4).await;
    t.write_all(b"after!").await.expect("write after idling");
    t.read_exact(&mut got).await.expect("echo after idling");
    assert_eq!(&got, b"after!");
}

/// The first request on a connection is the tunnel, before the client has
/// acknowledged the server's first SETTINGS: the stream window must still
/// be raised past nginx's 64 KiB (a second SETTINGS once the first one is
/// acknowledged), or every tunnel is capped at 64 KiB per round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_on_a_fresh_connection_gets_the_large_window() {
    use burrow_obfs::gate::{self, Binding, EXPORTER_LABEL, EXPORTER_LEN};
    use rand::RngCore;

    let r = relay().await;
    spawn_echo(r.tunnels);
    let cfg = burrow_obfs::tls::client_config(
        &burrow_obfs::tls::Trust::Pinned(r.line.pin.expect("pin")),
        &burrow_obfs::tls::ALPN_TCP,
    )
    .expect("tls config");
    let tcp = TcpStream::connect(("127.0.0.1", r.line.port))
        .await
        .expect("tcp");
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

    let mut eph = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut eph);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let value = gate::build(
        &r.line.key,
        &Binding::Exporter(exporter),
        now,
        eph,
        &mut rand::thread_rng(),
    );
    let req = http::Request::post(format!("https://example.org{}", r.line.path))
        .header(
            "cookie",
            format!("{}={value}", burrow_obfs::front::GATE_COOKIE),
        )
        .body(())
        .expect("request");
    let (resp, mut body) = send
        .ready()
        .await
        .expect("ready")
        .send_request(req, false)
        .expect("send");
    // Only now is the connection polled: the request leaves with the
    // client's preface, before the server's SETTINGS can be acknowledged,
    // as with Burrow's own client.
    tokio::spawn(conn);
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .expect("answered in time")
        .expect("response");
    assert_eq!(resp.status(), 200, "the gate passed");

    // Ask for more than 64 KiB without sending: only a raised stream
    // window grants it (h2 buffers at most 400 KiB per stream).
    body.reserve_capacity(1024 * 1024);
    let raised = tokio::time::timeout(Duration::from_secs(5), async {
        while body.capacity() <= 65_536 {
            match std::future::poll_fn(|cx| body.poll_capacity(cx)).await {
                Some(Ok(_)) => {}
                other => panic!("stream ended: {other:?}"),
            }
        }
    })
    .await;
    assert!(
        raised.is_ok(),
        "the tunnel stream's window stayed at {} bytes",
        body.capacity()
    );
}

/// A future that counts how often it is polled.
struct Counted<F> {
    inner: Pin<Box<F>>,
    polls: Arc<std::sync::atomic::AtomicUsize>,
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.polls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.as_mut().poll(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driven_http2_tunnel_does_not_wake_itself() {
    // At the relay an HTTP/2 tunnel drives its own connection. Its reads
    // and writes make `h2` wake the task that is running them; tokio then
    // yields that task and wakes an idle worker to steal it, which tripled
    // a small echo's round trip. Count the relay-side task's polls: one
    // per echo (the socket became readable), not two or three.
    let mut r = relay().await;
    let mut t = client(&r.line)
        .connect_via(Carrier::H2)
        .await
        .expect("connect");
    t.write_all(&[0; 64]).await.expect("first write");
    let mut server = r.tunnels.accept().await.expect("tunnel");
    let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    const ECHOES: usize = 400;
    let echo = tokio::spawn(Counted {
        inner: Box::pin(async move {
            let mut buf = [0u8; 64];
            while server.read_exact(&mut buf).await.is_ok() {
                if server.write_all(&buf).await.is_err() {
                    break;
                }
            }
        }),
        polls: polls.clone(),
    });
    let mut back = [0u8; 64];
    t.read_exact(&mut back).await.expect("first echo");
    let before = polls.load(std::sync::atomic::Ordering::Relaxed);
    for i in 0..ECHOES {
        t.write_all(&[i as u8; 64]).await.expect("write");
        tokio::time::timeout(Duration::from_secs(10), t.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("read");
        assert_eq!(back, [i as u8; 64]);
    }
    let per_echo =
        (polls.load(std::sync::atomic::Ordering::Relaxed) - before) as f64 / ECHOES as f64;
    eprintln!("relay side polls per echo: {per_echo:.2}");
    drop(t);
    let _ = tokio::time::timeout(Duration::from_secs(5), echo).await;
    assert!(
        per_echo < 1.5,
        "the relay side was polled {per_echo:.2} times per echo"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driven_tunnel_split_between_two_tasks_loses_no_wake_up() {
    // The reader and the writer of one relay-side tunnel on different
    // tasks: each drives the connection, and a wake-up one of them skips
    // (see `Driving` in tunnel.rs) must never be one the other needs.
    let mut r = relay().await;
    for carrier in CARRIERS {
        let mut t = client(&r.line).connect_via(carrier).await.expect("connect");
        t.write_all(b"hello").await.expect("first write");
        let server = r.tunnels.accept().await.expect("tunnel");
        let (mut rd, mut wr) = tokio::io::split(server);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                if wr.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = wr.shutdown().await;
        });
        let mut first = [0u8; 5];
        t.read_exact(&mut first).await.expect("first echo");
        // Small messages one at a time, then bulk both ways at once.
        let mut back = [0u8; 100];
        for i in 0..300u32 {
            let msg = [(i % 251) as u8; 100];
            t.write_all(&msg).await.expect("write");
            tokio::time::timeout(Duration::from_secs(10), t.read_exact(&mut back))
                .await
                .unwrap_or_else(|_| panic!("{carrier}: echo {i} never came back"))
                .expect("read");
            assert_eq!(back, msg);
        }
        tokio::time::timeout(Duration::from_secs(60), echo_roundtrip(t, 8 << 20, 9))
            .await
            .unwrap_or_else(|_| panic!("{carrier}: bulk echo stalled"));
    }
}

/// A user's node runs on one thread; there the client's HTTP/2 tunnels
/// drive their own connections (no task per connection). The same checks
/// as above, on such a runtime: bytes both ways, several tunnels at once,
/// each side's close reaching the other, and a dropped tunnel's
/// connection still finishing its end.
#[tokio::test(flavor = "current_thread")]
async fn http2_tunnels_on_a_single_threaded_runtime_drive_their_connections() {
    let r = relay().await;
    let line = r.line.clone();
    spawn_echo(r.tunnels);
    let t = client(&line)
        .connect_via(Carrier::H2)
        .await
        .expect("connect");
    echo_roundtrip(t, 20 * 1000 * 1000 + 5, 9).await;
    echo_at_once(&line, 8, 300_000, &[Carrier::H2]).await;

    let mut r = relay().await;
    relay_closes_first(&mut r, Carrier::H2).await;

    // A tunnel dropped without a shutdown is aborted: once it is gone,
    // its connection (no longer driven by it) still sends the reset, and
    // the relay's side ends.
    let mut t = client(&r.line)
        .connect_via(Carrier::H2)
        .await
        .expect("connect");
    t.write_all(b"parting words").await.expect("write");
    t.flush().await.expect("flush");
    let mut server = tokio::time::timeout(Duration::from_secs(10), r.tunnels.accept())
        .await
        .expect("accepted in time")
        .expect("tunnel");
    let mut got = [0u8; 13];
    server.read_exact(&mut got).await.expect("server read");
    assert_eq!(&got, b"parting words");
    drop(t);
    let mut rest = [0u8; 16];
    let end = tokio::time::timeout(Duration::from_secs(10), server.read(&mut rest))
        .await
        .expect("the relay's side ends in time");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
}
