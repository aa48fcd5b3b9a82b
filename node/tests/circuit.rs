//! Two nodes that do not listen reach each other through a relay's
//! camouflaged front, over each carrier: reservation, a circuit, a message
//! and its receipt, and the mailbox when the recipient is away.

use std::sync::Arc;
use std::time::Duration;

use burrow_node::guarded::GuardedSockets;
use burrow_node::p2p::driver::{
    DeliverError, Driver, DriverHandle, Handler, HomeState, RelayRef, Route,
};
use burrow_node::p2p::proto::{Envelope, Reply};
use burrow_node::p2p::swarm;
use burrow_node::p2p::transport::{CarrierTransport, Directory};
use burrow_obfs::{BoxFuture, Carrier, Sockets};
use burrow_relay::proto::MailboxItem;
use libp2p::identity::Keypair;
use libp2p::PeerId;
use tokio::sync::mpsc;

mod support;
use support::{relay, relay_with};

#[derive(Debug)]
enum Seen {
    Envelope(PeerId, Envelope),
    Mailbox(Vec<MailboxItem>),
    Home(HomeState),
}

struct Recorder(mpsc::UnboundedSender<Seen>);

impl Handler for Recorder {
    fn on_envelope(&mut self, from: PeerId, envelope: Envelope) -> Reply {
        let _ = self.0.send(Seen::Envelope(from, envelope));
        Reply::Received
    }
    fn on_mailbox(&mut self, items: Vec<MailboxItem>) -> Vec<u64> {
        let ids = items.iter().map(|i| i.id).collect();
        let _ = self.0.send(Seen::Mailbox(items));
        ids
    }
    fn on_home(&mut self, state: HomeState) {
        let _ = self.0.send(Seen::Home(state));
    }
    fn accepts(&mut self, _: &PeerId) -> bool {
        true
    }
}

struct User {
    keypair: Keypair,
    handle: DriverHandle,
    seen: mpsc::UnboundedReceiver<Seen>,
}

fn user(home: &RelayRef) -> User {
    let sockets = Arc::new(GuardedSockets::for_relay(&home.line, "test").expect("sockets"));
    user_on(home, sockets)
}

/// A user whose network is `sockets`.
fn user_on(home: &RelayRef, sockets: Arc<dyn Sockets>) -> User {
    let keypair = Keypair::generate_ed25519();
    let directory = Directory::default();
    let swarm = swarm::build(&keypair, CarrierTransport::dialer(directory.clone())).expect("swarm");
    let (tx, seen) = mpsc::unbounded_channel();
    let (driver, handle) = Driver::new(swarm, directory, sockets, home.clone(), Recorder(tx));
    tokio::spawn(driver.run());
    User {
        keypair,
        handle,
        seen,
    }
}

impl User {
    fn id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    async fn next(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(30), self.seen.recv())
            .await
            .expect("event in time")
            .expect("driver running")
    }

    async fn until_online(&mut self) {
        loop {
            if let Seen::Home(HomeState::Online) = self.next().await {
                return;
            }
        }
    }
}

/// A network where a censor silently drops every UDP datagram: QUIC never
/// hears back. TCP passes (through the firewall, as a node's does).
#[derive(Debug)]
struct UdpDropped {
    tcp: GuardedSockets,
    sink: std::net::UdpSocket,
}

impl Sockets for UdpDropped {
    fn tcp(&self, host: &str, port: u16) -> BoxFuture<'_, std::io::Result<tokio::net::TcpStream>> {
        self.tcp.tcp(host, port)
    }

    fn udp(
        &self,
        _host: &str,
        _port: u16,
    ) -> BoxFuture<'_, std::io::Result<(std::net::UdpSocket, std::net::SocketAddr)>> {
        Box::pin(async {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
            Ok((socket, self.sink.local_addr()?))
        })
    }
}

/// The firewall's sockets, counting the dials.
#[derive(Debug)]
struct Counting {
    inner: GuardedSockets,
    dials: std::sync::atomic::AtomicUsize,
}

impl Sockets for Counting {
    fn tcp(&self, host: &str, port: u16) -> BoxFuture<'_, std::io::Result<tokio::net::TcpStream>> {
        self.dials.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.tcp(host, port)
    }

    fn udp(
        &self,
        host: &str,
        port: u16,
    ) -> BoxFuture<'_, std::io::Result<(std::net::UdpSocket, std::net::SocketAddr)>> {
        self.dials.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.udp(host, port)
    }
}

/// libp2p lists the relay's address twice when a node comes online (from
/// the reservation and from the address book) and dials a relay's
/// addresses at once: still one connection per node, over each carrier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_coming_online_opens_one_connection_to_its_relay() {
    for carrier in [Carrier::H2, Carrier::H3] {
        let relay = relay(vec![carrier]).await;
        let home = RelayRef::new(relay.line.clone()).expect("relay ref");
        let sockets = Arc::new(Counting {
            inner: GuardedSockets::for_relay(&home.line, "test").expect("sockets"),
            dials: Default::default(),
        });
        let mut alice = user_on(&home, sockets.clone());
        alice.until_online().await;
        // Time for a second dial to show, had it been let through.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            sockets.dials.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{carrier}: one dial"
        );
        let stats = relay.stats.lock().expect("stats").clone();
        assert_eq!(stats.connections, 1, "{carrier}: {stats:?}");
    }
}

fn message(n: u8, text: &str) -> Envelope {
    Envelope::Message {
        id: [n; 16],
        sent_at_ms: 1_700_000_000_000 + u64::from(n),
        text: text.into(),
    }
}

async fn both_ways(carrier: Carrier) {
    let relay = relay(vec![carrier]).await;
    let home = RelayRef::new(relay.line.clone()).expect("relay ref");
    let mut alice = user(&home);
    let mut bob = user(&home);
    alice.until_online().await;
    bob.until_online().await;

    let reply = alice
        .handle
        .deliver(
            bob.id(),
            Route::Relay(home.clone()),
            message(1, "hello bob"),
        )
        .await
        .expect("delivered");
    assert_eq!(reply, Reply::Received);
    match bob.next().await {
        Seen::Envelope(from, env) => {
            assert_eq!(from, alice.id());
            assert_eq!(env, message(1, "hello bob"));
        }
        other => panic!("bob saw {other:?}"),
    }
    let reply = bob
        .handle
        .deliver(
            alice.id(),
            Route::Relay(home.clone()),
            message(2, "hi alice"),
        )
        .await
        .expect("delivered back");
    assert_eq!(reply, Reply::Received);
    loop {
        if let Seen::Envelope(from, env) = alice.next().await {
            assert_eq!(from, bob.id());
            assert_eq!(env, message(2, "hi alice"));
            break;
        }
    }
    let stats = relay.stats.lock().expect("stats").clone();
    assert_eq!(stats.reservations, 2, "{stats:?}");
    assert!(stats.circuits >= 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_both_ways_through_the_relay_over_http2() {
    both_ways(Carrier::H2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_both_ways_through_the_relay_over_http3() {
    both_ways(Carrier::H3).await;
}

/// The home relay's line lists QUIC first and a censor drops UDP: the node
/// starts HTTP/2 after QUIC's head start instead of waiting out QUIC's 10 s
/// timeout (libp2p dials both carriers, the transport holds HTTP/2 back
/// until its turn), and messages flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_udp_is_dropped_gets_through_over_http2_after_a_head_start() {
    let relay = relay(vec![Carrier::H3, Carrier::H2]).await;
    let home = RelayRef::new(relay.line.clone()).expect("relay ref");
    let censored = Arc::new(UdpDropped {
        tcp: GuardedSockets::for_relay(&home.line, "test").expect("sockets"),
        sink: std::net::UdpSocket::bind("127.0.0.1:0").expect("sink"),
    });
    let started = std::time::Instant::now();
    let mut alice = user_on(&home, censored);
    alice.until_online().await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "online after QUIC's head start, not its 10 s timeout: {:?}",
        started.elapsed()
    );
    let mut bob = user(&home);
    bob.until_online().await;
    let reply = bob
        .handle
        .deliver(alice.id(), Route::Relay(home.clone()), message(1, "hi"))
        .await
        .expect("delivered to the censored user");
    assert_eq!(reply, Reply::Received);
    let stats = relay.stats.lock().expect("stats").clone();
    assert_eq!(stats.reservations, 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_user_gets_the_message_from_the_mailbox() {
    let relay = relay(vec![Carrier::H2, Carrier::H3]).await;
    let home = RelayRef::new(relay.line.clone()).expect("relay ref");
    let mut alice = user(&home);
    alice.until_online().await;
    let bob_key = Keypair::generate_ed25519();
    let bob_id = bob_key.public().to_peer_id();

    let err = alice
        .handle
        .deliver(
            bob_id,
            Route::Relay(home.clone()),
            message(3, "are you there?"),
        )
        .await
        .expect_err("bob is not connected");
    assert!(matches!(err, DeliverError::Unreachable(_)), "{err}");
    let sealed = burrow_node::seal::seal(
        &alice.keypair,
        &bob_key.public(),
        &message(3, "are you there?"),
        &mut rand::rngs::OsRng,
    )
    .expect("seal");
    alice
        .handle
        .deposit(home.clone(), bob_id, sealed.clone())
        .await
        .expect("deposited");
    assert_eq!(relay.stats.lock().expect("stats").mailbox_messages, 1);

    // Bob comes online with his key: the mailbox is handed over and acked.
    let directory = Directory::default();
    let sockets = Arc::new(GuardedSockets::for_relay(&home.line, "test").expect("sockets"));
    let swarm = swarm::build(&bob_key, CarrierTransport::dialer(directory.clone())).expect("swarm");
    let (tx, mut seen) = mpsc::unbounded_channel();
    let (driver, _bob) = Driver::new(swarm, directory, sockets, home.clone(), Recorder(tx));
    tokio::spawn(driver.run());
    let items = loop {
        match tokio::time::timeout(Duration::from_secs(30), seen.recv()).await {
            Ok(Some(Seen::Mailbox(items))) => break items,
            Ok(Some(_)) => continue,
            other => panic!("no mailbox: {other:?}"),
        }
    };
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].sealed, sealed);
    let opened = burrow_node::seal::open(&bob_key, &items[0].sealed).expect("open");
    assert_eq!(opened.from, alice.id());
    assert_eq!(opened.envelope, message(3, "are you there?"));
    // The ack empties the mailbox.
    for _ in 0..100 {
        if relay.stats.lock().expect("stats").mailbox_messages == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the mailbox was not emptied after the ack");
}

/// The first bytes after the gate are a Noise XX first message (a 2-byte
/// length and a 32-byte ephemeral key), not a multistream-select header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tunnel_starts_with_noise_not_a_plaintext_header() {
    use burrow_obfs::{
        Front, FrontConfig, Gate, GateSecret, Identity, Limits, RelayLine, Site, Source,
    };
    use libp2p::core::transport::{DialOpts, PortUse};
    use libp2p::core::Endpoint;
    use libp2p::Transport as _;
    use tokio::io::AsyncReadExt;

    let (identity, _, _) = Identity::self_signed("relay.example").expect("cert");
    let secret = GateSecret::generate(&mut rand::rngs::OsRng);
    let pin = identity.pin();
    let config = FrontConfig {
        identity,
        gate: Gate::new(secret.clone()),
        tunnel_path: "/api/v2/events".into(),
        site: Site::new(Source::Builtin, 0, true),
        limits: Limits::default(),
    };
    let (front, mut tunnels) = Front::bind("127.0.0.1:0".parse().expect("addr"), config)
        .await
        .expect("bind");
    let addr = front.local_addr();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(front.run(rx));
    for carrier in [Carrier::H2, Carrier::H3] {
        let line = RelayLine {
            host: "relay.example".into(),
            port: addr.port(),
            path: "/api/v2/events".into(),
            key: secret.public(),
            carriers: vec![carrier],
            pin,
            ip: Some(addr.ip()),
            id: None,
            proxied: false,
        };
        let directory = Directory::default();
        let sockets = Arc::new(GuardedSockets::for_relay(&line, "test").expect("sockets"));
        let target = directory.add(&line, sockets).expect("add")[0].clone();
        let mut transport = burrow_node::p2p::transport::authenticated(
            CarrierTransport::dialer(directory),
            &Keypair::generate_ed25519(),
        );
        let dial = transport
            .dial(
                target,
                DialOpts {
                    role: Endpoint::Dialer,
                    port_use: PortUse::New,
                },
            )
            .expect("dial");
        let pending = tokio::spawn(dial);
        let mut tunnel = tokio::time::timeout(Duration::from_secs(10), tunnels.accept())
            .await
            .expect("tunnel in time")
            .expect("tunnel");
        let mut first = [0u8; 34];
        tunnel.read_exact(&mut first).await.expect("first bytes");
        assert_eq!(&first[..2], &[0x00, 0x20], "{carrier}: {first:02x?}");
        assert!(!first.windows(11).any(|w| w == b"multistream"));
        pending.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_at_its_reservation_limit_takes_no_one_more() {
    let limits = burrow_relay::RelayLimits {
        max_reservations: 1,
        ..Default::default()
    };
    let relay = relay_with(vec![Carrier::H2], &limits).await;
    let home = RelayRef::new(relay.line.clone()).expect("relay ref");
    let mut alice = user(&home);
    alice.until_online().await;
    let mut bob = user(&home);
    // Bob keeps asking and is refused each time; he never gets online.
    let refused = tokio::time::timeout(Duration::from_secs(5), bob.until_online()).await;
    assert!(refused.is_err(), "bob got a reservation past the limit");
    let stats = relay.stats.lock().expect("stats").clone();
    assert_eq!(stats.reservations, 1, "{stats:?}");
    assert_eq!(stats.connected, 2, "{stats:?}");
    assert!(stats.reservations_refused >= 1, "{stats:?}");
}
