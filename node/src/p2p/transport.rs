//! libp2p over the camouflaged carriers.
//!
//! A dial opens a gated tunnel through a relay's web front (`burrow_obfs`);
//! a listener hands out the tunnels a relay's front accepted. Noise and
//! yamux are applied directly on the tunnel, with no multistream-select
//! negotiation, so the first bytes after the gate are already a Noise
//! handshake message:
//!
//! ```text
//! tunnel (HTTP/2 or HTTP/3 request stream, after the gate)
//!   -> Noise XX (libp2p's `/noise`, authenticates both PeerIds; see `secure`)
//!     -> yamux
//!       -> libp2p protocols (multistream-select runs inside, encrypted)
//! ```
//!
//! Relays are named in multiaddrs the way libp2p writes a web server:
//! `/ip4/A/tcp/P/tls/http` (HTTP/2) and `/ip4/A/udp/P/quic-v1` (HTTP/3),
//! with `/dns/NAME` for names. The gate key, path and certificate pin are
//! not in the multiaddr: they come from the relay line registered in the
//! [`Directory`], so only relays the node was told about can be dialled.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use burrow_obfs::{Carrier, Client, RelayLine, Sockets, Tunnel, Tunnels};
use futures::future::BoxFuture;
use futures::FutureExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::timeout::TransportTimeoutError;
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
use libp2p::core::{ConnectedPoint, Endpoint, Transport};
use libp2p::multiaddr::Protocol;
use libp2p::{identity, yamux, Multiaddr, PeerId};

use super::secure;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

/// The component refused dials to learned addresses are logged under.
pub const LEARNED_COMPONENT: &str = "p2p";

/// Time allowed from dial to an authenticated, multiplexed connection.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a relay is, as written in a multiaddr.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Endpointish {
    host: String,
    port: u16,
}

/// The relays this node may dial, by the address libp2p knows them under.
#[derive(Clone, Default)]
pub struct Directory {
    relays: Arc<RwLock<HashMap<Endpointish, Client>>>,
    /// Where a dial to an address no relay line names is logged as refused.
    firewall: Option<burrow_firewall::Dialer>,
    /// The endpoint every HTTP/3 dial leaves from, if the node has one
    /// (it punches holes: see `crate::punch`).
    quic: Option<quinn::Endpoint>,
}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.relays.read().map(|r| r.len()).unwrap_or(0);
        f.debug_struct("Directory").field("relays", &n).finish()
    }
}

impl Directory {
    /// A directory whose refusals of unknown addresses land in `firewall`'s
    /// audit log (component `p2p`).
    pub fn with_firewall(firewall: burrow_firewall::Dialer) -> Self {
        Self {
            relays: Arc::default(),
            firewall: Some(firewall),
            quic: None,
        }
    }

    /// HTTP/3 dials to every relay (and contact) leave from `endpoint`.
    pub fn with_quic_endpoint(mut self, endpoint: quinn::Endpoint) -> Self {
        self.quic = Some(endpoint);
        self
    }

    /// Records that libp2p asked for an address no relay line names:
    /// learned from identify, the tracker or a relay, it is never dialled,
    /// and the firewall log says so with the policy's reason.
    fn refuse_unknown(&self, key: &Endpointish, carrier: Carrier) {
        let Some(fw) = &self.firewall else { return };
        let proto = match carrier {
            Carrier::H2 | Carrier::Ws => burrow_firewall::Proto::Tcp,
            Carrier::H3 => burrow_firewall::Proto::Udp,
        };
        if let Ok(host) = burrow_firewall::Host::parse(&key.host) {
            let target = burrow_firewall::Target::new(host, key.port, proto);
            if fw.screen(LEARNED_COMPONENT, &target).is_ok() {
                // Allowed by the policy, but without its relay line there is
                // no key or pin to dial it with.
                tracing::info!("not dialling {target}: no relay line for it");
            }
        }
    }

    /// Registers a relay and returns the multiaddrs that reach it, one per
    /// carrier in the line's order.
    pub fn add(
        &self,
        line: &RelayLine,
        sockets: Arc<dyn Sockets>,
    ) -> Result<Vec<Multiaddr>, burrow_obfs::Error> {
        self.add_client(line, Client::new(line.clone(), sockets)?)
    }

    /// Like [`Directory::add`], with each carrier given at most `timeout`
    /// to connect (a contact's own front may be gone; the relay is the
    /// fallback, so it is not waited for long).
    pub fn add_with_timeout(
        &self,
        line: &RelayLine,
        sockets: Arc<dyn Sockets>,
        timeout: Duration,
    ) -> Result<Vec<Multiaddr>, burrow_obfs::Error> {
        let client = Client::new(line.clone(), sockets)?.with_connect_timeout(timeout);
        self.add_client(line, client)
    }

    fn add_client(
        &self,
        line: &RelayLine,
        client: Client,
    ) -> Result<Vec<Multiaddr>, burrow_obfs::Error> {
        let key = Endpointish {
            host: line.host.clone(),
            port: line.port,
        };
        let client = match &self.quic {
            Some(endpoint) => client
                .with_quic_endpoint(endpoint.clone())
                .with_head_start(PUNCH_HEAD_START),
            None => client,
        };
        if let Ok(mut relays) = self.relays.write() {
            // The same relay named again (every delivery names it) keeps
            // its client: its TLS set-up and what it learnt about carriers.
            let known = relays.get(&key).is_some_and(|c| {
                c.line() == line && c.connect_timeout() == client.connect_timeout()
            });
            if !known {
                relays.insert(key, client);
            }
        }
        Ok(relay_addrs(line))
    }

    fn client(&self, key: &Endpointish) -> Option<Client> {
        self.relays.read().ok()?.get(key).cloned()
    }
}

/// Each carrier's head start at a node that punches holes (its QUIC
/// endpoint is the Directory's). Such a node needs its home relay
/// connection on QUIC, from the socket contacts punch toward: with the
/// usual second, one lost Initial packet (QUIC retransmits it after about
/// a second) would let HTTP/2 win, and the node would not punch for as
/// long as that connection lasts. A censor who drops UDP costs it this
/// instead.
pub const PUNCH_HEAD_START: Duration = Duration::from_secs(3);

/// The multiaddrs of a relay line, one per carrier.
pub fn relay_addrs(line: &RelayLine) -> Vec<Multiaddr> {
    line.carriers
        .iter()
        .map(|&c| carrier_addr(&line.host, line.port, c))
        .collect()
}

fn host_protocol(host: &str) -> Protocol<'static> {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Protocol::Ip4(a),
        Ok(IpAddr::V6(a)) => Protocol::Ip6(a),
        Err(_) => Protocol::Dns(host.to_string().into()),
    }
}

fn carrier_addr(host: &str, port: u16, carrier: Carrier) -> Multiaddr {
    let base = Multiaddr::empty().with(host_protocol(host));
    match carrier {
        Carrier::H2 => base
            .with(Protocol::Tcp(port))
            .with(Protocol::Tls)
            .with(Protocol::Http),
        Carrier::H3 => base.with(Protocol::Udp(port)).with(Protocol::QuicV1),
        Carrier::Ws => base
            .with(Protocol::Tcp(port))
            .with(Protocol::Tls)
            .with(Protocol::Ws("/".into())),
    }
}

fn socket_addr_multiaddr(addr: SocketAddr, carrier: Carrier) -> Multiaddr {
    carrier_addr(&addr.ip().to_string(), addr.port(), carrier)
}

/// Reads a relay multiaddr: host, port and carrier. A trailing `/p2p/ID`
/// is allowed; anything else (notably `/p2p-circuit`) is not ours.
fn parse_addr(addr: &Multiaddr) -> Option<(Endpointish, Carrier)> {
    let mut it = addr.iter();
    let host = match it.next()? {
        Protocol::Ip4(a) => a.to_string(),
        Protocol::Ip6(a) => a.to_string(),
        Protocol::Dns(n) | Protocol::Dns4(n) | Protocol::Dns6(n) => n.to_string(),
        _ => return None,
    };
    let (port, carrier) = match (it.next()?, it.next()?) {
        (Protocol::Tcp(p), Protocol::Tls) => match it.next()? {
            Protocol::Http => (p, Carrier::H2),
            Protocol::Ws(_) => (p, Carrier::Ws),
            _ => return None,
        },
        (Protocol::Udp(p), Protocol::QuicV1) => (p, Carrier::H3),
        _ => return None,
    };
    match it.next() {
        None | Some(Protocol::P2p(_)) if it.next().is_none() => {}
        _ => return None,
    }
    Some((Endpointish { host, port }, carrier))
}

/// The relay side's source of connections: the tunnels its front accepted.
struct Listener {
    id: ListenerId,
    tunnels: Tunnels,
    /// Addresses announced to the swarm once.
    announce: Vec<Multiaddr>,
    local: Multiaddr,
}

/// The raw transport: tunnels in, tunnels out. Wrap it with [`authenticated`].
pub struct CarrierTransport {
    directory: Directory,
    /// Tunnels to hand to the first `listen_on` (a relay, or a node that
    /// accepts direct connections).
    idle_tunnels: Option<(Tunnels, Vec<Multiaddr>)>,
    listener: Option<Listener>,
}

impl fmt::Debug for CarrierTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CarrierTransport")
            .field("directory", &self.directory)
            .field("listening", &self.listener.is_some())
            .finish()
    }
}

impl CarrierTransport {
    /// A dial-only transport (a node: it never accepts connections).
    pub fn dialer(directory: Directory) -> Self {
        Self {
            directory,
            idle_tunnels: None,
            listener: None,
        }
    }

    /// A transport that also accepts (a relay, or a node with its own
    /// front): `listen_on` takes the front's tunnels and announces `public`
    /// as its addresses (a node announces none).
    pub fn listening(directory: Directory, tunnels: Tunnels, public: Vec<Multiaddr>) -> Self {
        Self {
            directory,
            idle_tunnels: Some((tunnels, public)),
            listener: None,
        }
    }
}

type DialFuture = BoxFuture<'static, io::Result<Compat<Tunnel>>>;
type Incoming = futures::future::Ready<io::Result<Compat<Tunnel>>>;

impl Transport for CarrierTransport {
    type Output = Compat<Tunnel>;
    type Error = io::Error;
    type ListenerUpgrade = Incoming;
    type Dial = DialFuture;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        if parse_addr(&addr).is_none() {
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        let Some((tunnels, announce)) = self.idle_tunnels.take() else {
            return Err(TransportError::Other(io::Error::new(
                io::ErrorKind::Unsupported,
                "this node does not accept connections (start it with --listen)",
            )));
        };
        self.listener = Some(Listener {
            id,
            tunnels,
            announce,
            local: addr,
        });
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        match &self.listener {
            Some(l) if l.id == id => {
                self.listener = None;
                true
            }
            _ => false,
        }
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let Some((key, carrier)) = parse_addr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let Some(client) = self.directory.client(&key) else {
            // Not a relay we were given: no key, no pin, nothing to dial.
            self.directory.refuse_unknown(&key, carrier);
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        // libp2p dials a relay's carriers at once (swarm::config); a
        // carrier that failed lately steps aside at once for one that has
        // not, instead of costing every dial its timeout again, and the
        // others wait their turn: each carrier has a head start over the
        // next, which libp2p drops unstarted when one is through.
        if let Some(why) = client.make_way(carrier) {
            tracing::debug!("not dialling {addr} now: {carrier} carrier {why}");
            let e = io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("{carrier} carrier {why}"),
            );
            return Ok(futures::future::ready(Err(e)).boxed());
        }
        Ok(async move {
            // One dial over a carrier at a time: libp2p may list an address
            // twice, and would open two connections to drop one.
            let _alone = client.dial_alone(carrier).await;
            // After waiting for a dial over the same carrier that failed,
            // make way now if another carrier has not failed.
            if let Some(why) = client.make_way(carrier) {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("{carrier} carrier {why}"),
                ));
            }
            client.wait_turn(carrier).await;
            let mut tunnel = client
                .connect_via(carrier)
                .await
                .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e))?;
            // Behind nginx the relay's answer head waits in nginx's TLS
            // buffer until the first body bytes follow it, and those come
            // only after our first Noise message: there, the answer is
            // checked on the first read instead (a refusal still fails the
            // dial, in the Noise upgrade).
            if !client.line().proxied {
                if let Err(e) = tunnel.established().await {
                    client.refused(carrier);
                    return Err(e);
                }
            }
            client.got_through(carrier);
            Ok(tunnel.compat())
        }
        .boxed())
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let Some(listener) = self.listener.as_mut() else {
            return Poll::Pending;
        };
        if let Some(listen_addr) = listener.announce.pop() {
            return Poll::Ready(TransportEvent::NewAddress {
                listener_id: listener.id,
                listen_addr,
            });
        }
        match listener.tunnels.poll_accept(cx) {
            Poll::Ready(Some(tunnel)) => {
                let send_back_addr = match tunnel.peer() {
                    Some(peer) => socket_addr_multiaddr(peer, tunnel.carrier()),
                    None => listener.local.clone(),
                };
                Poll::Ready(TransportEvent::Incoming {
                    listener_id: listener.id,
                    upgrade: futures::future::ready(Ok(tunnel.compat())),
                    local_addr: listener.local.clone(),
                    send_back_addr,
                })
            }
            Poll::Ready(None) => {
                let listener_id = listener.id;
                self.listener = None;
                Poll::Ready(TransportEvent::ListenerClosed {
                    listener_id,
                    reason: Ok(()),
                })
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// yamux settings for tunnels: the default stream count, and nothing that
/// caps a single stream below what the carrier carries.
fn yamux_config() -> yamux::Config {
    let mut c = yamux::Config::default();
    c.set_max_num_streams(256);
    c
}

/// The carrier transport with Noise and yamux applied directly, wrapped in
/// a timeout: what a swarm runs on.
pub fn authenticated(
    raw: CarrierTransport,
    keypair: &identity::Keypair,
) -> impl Transport<
    Output = (PeerId, StreamMuxerBox),
    Error = io::Error,
    ListenerUpgrade: Send,
    Dial: Send,
> + Send
       + Unpin
       + 'static {
    let keypair = keypair.clone();
    let upgraded = raw.and_then(move |io, endpoint: ConnectedPoint| {
        let keypair = keypair.clone();
        async move {
            let dialer = matches!(
                endpoint,
                ConnectedPoint::Dialer {
                    role_override: Endpoint::Dialer,
                    ..
                }
            );
            let (peer, secured) = secure::handshake(io, &keypair, dialer)
                .await
                .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
            let muxer = if dialer {
                yamux_config()
                    .upgrade_outbound(secured, "/yamux/1.0.0")
                    .await
            } else {
                yamux_config()
                    .upgrade_inbound(secured, "/yamux/1.0.0")
                    .await
            }
            .map_err(io::Error::other)?;
            Ok::<_, io::Error>((peer, StreamMuxerBox::new(muxer)))
        }
    });
    libp2p::core::transport::timeout::TransportTimeout::new(upgraded, UPGRADE_TIMEOUT).map_err(
        |e| match e {
            TransportTimeoutError::Timeout => {
                io::Error::new(io::ErrorKind::TimedOut, "connection set-up timed out")
            }
            TransportTimeoutError::TimerError(e) => e,
            TransportTimeoutError::Other(e) => e.into_inner(),
        },
    )
}

/// The relay's libp2p node on the tunnels its front accepts, announced at
/// the addresses of its line.
pub fn relay_node(
    tunnels: Tunnels,
    keypair: &identity::Keypair,
    line: &RelayLine,
    limits: &burrow_relay::RelayLimits,
    admission: &burrow_relay::Admission,
) -> Result<burrow_relay::RelayNode, burrow_relay::Error> {
    let public = relay_addrs(line);
    let listen = public
        .first()
        .cloned()
        .ok_or_else(|| burrow_relay::Error::Listen("the relay line names no carrier".into()))?;
    let transport = authenticated(
        CarrierTransport::listening(Directory::default(), tunnels, public.clone()),
        keypair,
    )
    .boxed();
    burrow_relay::RelayNode::new(transport, keypair, listen, &public, limits, admission)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_multiaddrs_round_trip() {
        for (text, host, port, carrier) in [
            (
                "/ip4/127.0.0.1/tcp/8443/tls/http",
                "127.0.0.1",
                8443,
                Carrier::H2,
            ),
            ("/ip6/::1/udp/443/quic-v1", "::1", 443, Carrier::H3),
            (
                "/dns/example.org/tcp/443/tls/http",
                "example.org",
                443,
                Carrier::H2,
            ),
            (
                "/dns/example.org/tcp/443/tls/ws",
                "example.org",
                443,
                Carrier::Ws,
            ),
        ] {
            let addr: Multiaddr = text.parse().expect("multiaddr");
            let (key, c) = parse_addr(&addr).expect("ours");
            assert_eq!((key.host.as_str(), key.port, c), (host, port, carrier));
            assert_eq!(carrier_addr(host, port, carrier), addr);
            let with_id = addr.with(Protocol::P2p(PeerId::random()));
            assert!(parse_addr(&with_id).is_some(), "{with_id}");
        }
    }

    /// Addresses learned from identify, the tracker or a relay that no
    /// relay line names are never dialled, and the refusal is logged.
    #[test]
    fn learned_addresses_are_refused_and_logged() {
        use burrow_firewall::{Audit, Dialer, Entry, EntrySource, Policy, Proto, Target};
        let listed: std::net::SocketAddr = "203.0.113.7:443".parse().expect("addr");
        let fw = Dialer::new(
            Policy::new(
                vec![Entry::new(
                    Target::addr(listed, Proto::Tcp),
                    EntrySource::HomeRelay,
                    "home relay",
                )],
                false,
            ),
            Audit::default(),
        );
        let mut t = CarrierTransport::dialer(Directory::with_firewall(fw.clone()));
        for text in [
            "/ip4/198.51.100.9/tcp/443/tls/http",
            "/ip4/203.0.113.7/tcp/8443/tls/http",
            "/ip4/203.0.113.7/udp/443/quic-v1",
            "/ip4/10.0.0.1/tcp/443/tls/http",
            "/dns/tracker.example/udp/443/quic-v1",
        ] {
            let addr: Multiaddr = text.parse().expect("multiaddr");
            let opts = DialOpts {
                role: Endpoint::Dialer,
                port_use: libp2p::core::transport::PortUse::New,
            };
            assert!(
                matches!(
                    t.dial(addr, opts),
                    Err(TransportError::MultiaddrNotSupported(_))
                ),
                "{text}"
            );
        }
        let log: Vec<(String, String)> = fw
            .audit()
            .records()
            .map(|r| (r.target.to_string(), r.component.clone()))
            .collect();
        assert_eq!(
            log,
            [
                "198.51.100.9:443/tcp",
                "203.0.113.7:8443/tcp",
                "203.0.113.7:443/udp",
                "10.0.0.1:443/tcp",
                "tracker.example:443/udp",
            ]
            .map(|t| (t.to_string(), LEARNED_COMPONENT.to_string()))
        );
    }

    /// TCP to a closed port (refused at once), UDP refused outright.
    #[derive(Debug)]
    struct NothingListens;

    impl Sockets for NothingListens {
        fn tcp(
            &self,
            host: &str,
            port: u16,
        ) -> burrow_obfs::client::BoxFuture<'_, io::Result<tokio::net::TcpStream>> {
            let addr = format!("{host}:{port}");
            // egress-check: allowed: a unit test dialling a closed port on loopback.
            Box::pin(async move { tokio::net::TcpStream::connect(addr).await })
        }

        fn udp(
            &self,
            _host: &str,
            _port: u16,
        ) -> burrow_obfs::client::BoxFuture<'_, io::Result<(std::net::UdpSocket, SocketAddr)>>
        {
            Box::pin(async { Err(io::Error::other("UDP blocked")) })
        }
    }

    /// A relay line to `port` on loopback with a fresh key.
    fn loopback_line(port: u16, carriers: Vec<Carrier>) -> RelayLine {
        RelayLine {
            host: "127.0.0.1".into(),
            port,
            path: "/api/v2/events".into(),
            key: burrow_obfs::GateSecret::generate(&mut rand::rngs::OsRng).public(),
            carriers,
            pin: None,
            ip: None,
            id: None,
            proxied: false,
        }
    }

    /// A node that punches gives each carrier the longer head start, so its
    /// relay connection stays on QUIC when an Initial packet is lost.
    #[tokio::test]
    async fn a_punching_node_gives_quic_a_longer_head_start() {
        let line = loopback_line(9, vec![Carrier::H3, Carrier::H2]);
        let key = Endpointish {
            host: line.host.clone(),
            port: line.port,
        };
        let sockets: Arc<dyn Sockets> = Arc::new(NothingListens);
        let plain = Directory::default();
        plain.add(&line, sockets.clone()).expect("add");
        let client = plain.client(&key).expect("client");
        assert_eq!(client.head_start(), burrow_obfs::client::CARRIER_HEAD_START);

        let local = "127.0.0.1:0".parse().expect("addr");
        // egress-check: allowed: a unit test's endpoint on loopback; it dials nothing.
        let endpoint = quinn::Endpoint::client(local).expect("endpoint");
        let punching = Directory::default().with_quic_endpoint(endpoint);
        punching.add(&line, sockets).expect("add");
        let client = punching.client(&key).expect("client");
        assert_eq!(client.head_start(), PUNCH_HEAD_START);
        assert!(PUNCH_HEAD_START > burrow_obfs::client::CARRIER_HEAD_START);
    }

    /// A relay's carrier that failed makes way for the others on the next
    /// dials, even when every delivery names the relay again.
    #[tokio::test]
    async fn a_failed_carrier_makes_way_across_dials() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let line = loopback_line(port, vec![Carrier::H2, Carrier::H3]);
        let directory = Directory::default();
        let sockets: Arc<dyn Sockets> = Arc::new(NothingListens);
        let addrs = directory.add(&line, sockets.clone()).expect("add");
        let mut t = CarrierTransport::dialer(directory.clone());
        let mut dial = |addr: &Multiaddr| {
            let opts = DialOpts {
                role: Endpoint::Dialer,
                port_use: libp2p::core::transport::PortUse::New,
            };
            t.dial(addr.clone(), opts).expect("ours")
        };
        let (h2, h3) = (&addrs[0], &addrs[1]);

        let err = dial(h2).await.expect_err("nothing listens");
        assert!(!err.to_string().contains("first"), "{err}");
        // Named again, as each delivery does: what was learnt stays.
        directory.add(&line, sockets).expect("add again");
        let err = dial(h2).await.expect_err("makes way");
        assert!(
            err.to_string()
                .contains("h2 carrier failed 0 s ago; trying the h3 carrier first"),
            "{err}"
        );
        let err = dial(h3).await.expect_err("UDP blocked");
        assert!(err.to_string().contains("UDP blocked"), "{err}");
        // Both failed lately: each is dialled again.
        let err = dial(h2).await.expect_err("nothing listens");
        assert!(!err.to_string().contains("first"), "{err}");
    }

    #[test]
    fn other_addresses_are_not_ours() {
        let relay = PeerId::random();
        for text in [
            "/ip4/127.0.0.1/tcp/8443".to_string(),
            "/ip4/127.0.0.1/tcp/8443/http".to_string(),
            "/ip4/127.0.0.1/udp/443/quic".to_string(),
            "/ip4/127.0.0.1/tcp/8443/ws".to_string(),
            "/ip4/127.0.0.1/tcp/8443/wss".to_string(),
            format!("/ip4/127.0.0.1/tcp/8443/tls/http/p2p/{relay}/p2p-circuit"),
            format!("/ip4/127.0.0.1/udp/443/quic-v1/p2p/{relay}/p2p-circuit/p2p/{relay}"),
        ] {
            let addr: Multiaddr = text.parse().expect("multiaddr");
            assert!(parse_addr(&addr).is_none(), "{addr}");
        }
    }
}
