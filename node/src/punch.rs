//! Hole punching, QUIC first (`burrow up --punch`): two users who are both
//! behind NAT talk without the relay once a hole is open.
//!
//! A punching node has one UDP socket for everything it says over QUIC:
//! its connection to its home relay (which therefore sees, and tells it
//! through identify, the address its NAT gave that socket), its dials to
//! contacts, and a small front of its own that accepts only HTTP/3. To
//! reach a verified contact directly, a node asks over the relayed
//! connection (`/burrow/punch/1`) with its own public address; the contact,
//! if it punches too and knows the asker as a verified contact, answers
//! with a line for its front at *its* public address and sends a few
//! datagrams toward the asker. Those open the contact's NAT for the asker's
//! address; the asker's QUIC handshake, sent after the answer arrived,
//! goes through and the node's own NAT lets the answers back in, since
//! they come from where it sent to. The direct connection then carries the
//! messages; if no hole opens the relay still does.
//!
//! The socket is guarded ([`GuardedUdp`]): a datagram leaves only for an
//! address the firewall approved (a relay, a contact's punched endpoint),
//! decided when it was approved and again whenever the policy changes;
//! anything else is dropped and logged as refused.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use burrow_firewall::{Dialer, Policy, Proto, Target};
use burrow_obfs::{
    Carrier, FrontConfig, Gate, GateSecret, Identity, Limits, QuicFront, RelayLine, Site, Source,
    Tunnels,
};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::{Rng, RngCore};

/// The component punch datagrams and refused sends are logged under.
pub const COMPONENT: &str = "punch";
/// Connections the punching front takes at once: contacts only reach it.
const MAX_CONNECTIONS: usize = 64;
/// Datagrams sent toward a contact that asked, and the time between them:
/// enough to outlast a lost one or two and the asker's first handshake
/// retransmission, few enough to be nothing on the wire.
const PUNCHES: usize = 8;
const PUNCH_EVERY: Duration = Duration::from_millis(150);
/// A refused destination is logged at most this often.
const LOG_REFUSED_EVERY: Duration = Duration::from_secs(30);

/// The destinations a guarded socket may send to, and why.
#[derive(Debug)]
pub struct Allowed {
    dialer: Dialer,
    approved: RwLock<HashMap<SocketAddr, Target>>,
    refused: Mutex<HashMap<SocketAddr, Instant>>,
}

impl Allowed {
    fn new(dialer: Dialer) -> Self {
        Self {
            dialer,
            approved: RwLock::default(),
            refused: Mutex::default(),
        }
    }

    /// Lets datagrams go to `addr`, approved by the firewall for `target`
    /// (already decided and logged by the caller).
    pub fn insert(&self, addr: SocketAddr, target: Target) {
        self.approved
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(addr, target);
    }

    /// Decides `addr` now (logged) and lets datagrams go there if allowed.
    pub fn approve(&self, addr: SocketAddr) -> Result<(), burrow_firewall::Denied> {
        let target = Target::addr(addr, Proto::Udp);
        self.dialer.check(COMPONENT, &target, addr)?;
        self.insert(addr, target);
        Ok(())
    }

    fn allows(&self, addr: &SocketAddr) -> bool {
        self.approved
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(addr)
    }

    /// Decides every approved destination again under `policy`: what it
    /// no longer allows (a contact removed) gets nothing more.
    pub fn retain(&self, policy: &Policy) {
        self.approved
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|addr, target| policy.decide(target, *addr).is_ok());
    }

    fn refuse(&self, addr: SocketAddr) {
        {
            let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
            if refused
                .get(&addr)
                .is_some_and(|t| t.elapsed() < LOG_REFUSED_EVERY)
            {
                return;
            }
            refused.retain(|_, t| t.elapsed() < LOG_REFUSED_EVERY);
            refused.insert(addr, Instant::now());
        }
        // Logged with the policy's reason; never sent.
        let _ = self
            .dialer
            .screen(COMPONENT, &Target::addr(addr, Proto::Udp));
    }
}

/// A UDP socket for quinn that sends only to [`Allowed`] destinations.
pub struct GuardedUdp {
    inner: Arc<dyn AsyncUdpSocket>,
    allowed: Arc<Allowed>,
}

impl fmt::Debug for GuardedUdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedUdp")
            .field("local", &self.inner.local_addr().ok())
            .finish()
    }
}

impl AsyncUdpSocket for GuardedUdp {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if self.allowed.allows(&transmit.destination) {
            self.inner.try_send(transmit)
        } else {
            // Dropped as the network would drop it; QUIC copes.
            self.allowed.refuse(transmit.destination);
            Ok(())
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// A punching node's QUIC side: the endpoint, its guard, its front, and
/// the public address the home relay saw.
pub struct Punch {
    endpoint: quinn::Endpoint,
    socket: Arc<GuardedUdp>,
    allowed: Arc<Allowed>,
    observed: Mutex<Option<SocketAddr>>,
    /// The front's line without its address: gate key, path, pin, id.
    template: RelayLine,
}

impl fmt::Debug for Punch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Punch")
            .field("local", &self.socket.local_addr().ok())
            .field("observed", &self.observed())
            .finish()
    }
}

impl Punch {
    /// Binds the node's one QUIC socket and its front. The front's gate key
    /// and certificate are new each run: contacts get the line afresh with
    /// every punch.
    pub fn open(dialer: Dialer, user: &PeerId) -> Result<(Arc<Self>, QuicFront, Tunnels)> {
        // The node's own socket for QUIC, on every address (its NAT maps
        // it); sends leave only through the guard below.
        // egress-check: allowed: sends through GuardedUdp, which passes only firewall-approved destinations.
        let std_socket = std::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
            .context("cannot open a UDP socket for QUIC")?;
        let runtime = Arc::new(quinn::TokioRuntime);
        let inner = quinn::Runtime::wrap_udp_socket(&*runtime, std_socket)
            .context("cannot use the UDP socket")?;
        let allowed = Arc::new(Allowed::new(dialer));
        let socket = Arc::new(GuardedUdp {
            inner,
            allowed: allowed.clone(),
        });
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            None,
            socket.clone(),
            runtime,
        )
        .context("cannot start QUIC")?;
        let (identity, _, _) = Identity::self_signed("localhost")?;
        let secret = GateSecret::generate(&mut rand::rngs::OsRng);
        let path = crate::relay_cmd::random_path();
        let template = RelayLine {
            host: Ipv4Addr::UNSPECIFIED.to_string(),
            port: 0,
            path: path.clone(),
            key: secret.public(),
            carriers: vec![Carrier::H3],
            pin: identity.pin(),
            ip: None,
            id: Some(user.to_base58()),
            proxied: false,
        };
        let config = FrontConfig {
            identity,
            gate: Gate::new(secret),
            tunnel_path: path,
            site: Site::new(Source::Builtin, 443, true),
            limits: Limits {
                max_connections: MAX_CONNECTIONS,
                ..Limits::default()
            },
        };
        // The front answers only addresses the guard lets datagrams go to
        // (a contact that asked for a hole, a relay): anyone else who finds
        // the port gets no reply and costs no state.
        let guard = allowed.clone();
        let (front, tunnels) = QuicFront::on(&endpoint, config)?;
        let front = front.admitting(Arc::new(move |from| guard.allows(&from)));
        let punch = Arc::new(Self {
            endpoint,
            socket,
            allowed,
            observed: Mutex::new(None),
            template,
        });
        Ok((punch, front, tunnels))
    }

    pub fn endpoint(&self) -> quinn::Endpoint {
        self.endpoint.clone()
    }

    pub fn allowed(&self) -> Arc<Allowed> {
        self.allowed.clone()
    }

    /// The address the swarm listens on for the front's tunnels (never
    /// announced: a contact gets the punched line, not this).
    pub fn listen_addr(&self) -> Multiaddr {
        let port = self.socket.local_addr().map(|a| a.port()).unwrap_or(0);
        Multiaddr::empty()
            .with(Protocol::Ip4(Ipv4Addr::UNSPECIFIED))
            .with(Protocol::Udp(port))
            .with(Protocol::QuicV1)
    }

    /// This node's public address for QUIC, as its home relay saw it.
    pub fn observed(&self) -> Option<SocketAddr> {
        *self.observed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records what the home relay saw (identify's observed address) when
    /// it is an address of this socket's QUIC; returns whether it changed.
    pub fn observe(&self, addr: &Multiaddr) -> bool {
        let Some(seen) = quic_socket_addr(addr) else {
            return false;
        };
        let mut observed = self.observed.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = *observed != Some(seen);
        *observed = Some(seen);
        changed
    }

    /// The line a contact dials this node's front with: its public address.
    pub fn line(&self) -> Option<RelayLine> {
        let at = self.observed()?;
        let mut line = self.template.clone();
        line.host = at.ip().to_string();
        line.port = at.port();
        Some(line)
    }

    /// Sends a few datagrams of random bytes toward `to` (approved first):
    /// they open this node's NAT for that address, so the handshake the
    /// contact sends next gets through.
    pub fn punch(&self, to: SocketAddr) -> Result<(), burrow_firewall::Denied> {
        self.allowed.approve(to)?;
        let socket = self.socket.clone();
        tokio::spawn(async move {
            for _ in 0..PUNCHES {
                let bytes = punch_datagram(&mut rand::thread_rng());
                let transmit = Transmit {
                    destination: to,
                    ecn: None,
                    contents: &bytes,
                    segment_size: None,
                    src_ip: None,
                };
                if let Err(e) = socket.try_send(&transmit) {
                    tracing::debug!("punch datagram not sent: {e}");
                }
                tokio::time::sleep(PUNCH_EVERY).await;
            }
        });
        Ok(())
    }
}

/// A datagram that opens the NAT: shaped as a QUIC long-header packet of a
/// reserved ("greased") version, too small to be answered. On the wire it
/// passes for QUIC; the contact's QUIC endpoint drops it without a word
/// (no version negotiation, no stateless reset toward an address its
/// firewall may not have approved yet).
fn punch_datagram(rng: &mut impl RngCore) -> Vec<u8> {
    let mut bytes = vec![0u8; rng.gen_range(24..64)];
    rng.fill_bytes(&mut bytes);
    bytes[0] = 0xc0 | (bytes[0] & 0x3f);
    // Versions 0x?a?a?a?a are reserved for exactly this (RFC 9000, 15).
    for b in &mut bytes[1..5] {
        *b = (*b & 0xf0) | 0x0a;
    }
    bytes
}

/// `/ip4/A/udp/P/quic-v1` (or ip6), as a socket address.
pub fn quic_socket_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut it = addr.iter();
    let ip = match it.next()? {
        Protocol::Ip4(a) => a.into(),
        Protocol::Ip6(a) => a.into(),
        _ => return None,
    };
    match (it.next()?, it.next()?) {
        (Protocol::Udp(port), Protocol::QuicV1) if port != 0 => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_firewall::{Audit, Entry, EntrySource, Verdict};

    /// A policy that lists one UDP address, as a contact's punched one.
    fn listing(addr: SocketAddr) -> Policy {
        let entry = Entry::new(
            Target::addr(addr, Proto::Udp),
            EntrySource::ContactPunched {
                contact: "bob".into(),
            },
            "test",
        );
        Policy::new(vec![entry], true)
    }

    fn user() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    /// Datagrams leave the punching socket only for approved addresses:
    /// a punch toward an address the policy allows arrives; toward any
    /// other it is refused and logged, and nothing reaches it.
    // Multi-threaded: the test reads with blocking sockets while the
    // punches are sent from a task.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_socket_sends_only_where_the_firewall_allows() {
        // egress-check: allowed: the test's receiving sockets on loopback.
        let allowed = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        // egress-check: allowed: the test's receiving sockets on loopback.
        let other = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        for s in [&allowed, &other] {
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .expect("timeout");
        }
        let to_allowed = allowed.local_addr().expect("addr");
        let to_other = other.local_addr().expect("addr");
        let dialer = Dialer::new(listing(to_allowed), Audit::default());
        let (punch, _front, _tunnels) = Punch::open(dialer.clone(), &user()).expect("open");

        punch.punch(to_allowed).expect("allowed");
        let mut buf = [0u8; 128];
        let (n, from) = allowed.recv_from(&mut buf).expect("a punch datagram");
        assert!((24..64).contains(&n), "{n} bytes");
        assert_eq!(buf[0] & 0xc0, 0xc0, "a long header");
        assert!(
            buf[1..5].iter().all(|b| b & 0x0f == 0x0a),
            "a greased version"
        );
        assert_eq!(from.port(), punch.socket.local_addr().expect("addr").port());

        let denied = punch.punch(to_other).expect_err("not allowed");
        assert_eq!(denied.target, Target::addr(to_other, Proto::Udp));
        // Even a send that skips the approval (as QUIC's own would) is dropped.
        let transmit = Transmit {
            destination: to_other,
            ecn: None,
            contents: b"not for you",
            segment_size: None,
            src_ip: None,
        };
        punch.socket.try_send(&transmit).expect("dropped quietly");
        assert!(other.recv_from(&mut buf).is_err(), "nothing arrived");
        let refusals = dialer
            .audit()
            .records()
            .filter(|r| {
                r.target == Target::addr(to_other, Proto::Udp)
                    && matches!(r.verdict, Verdict::Refused { .. })
            })
            .count();
        assert!(refusals >= 1, "the refusal is in the firewall log");

        // The policy changes (the contact is gone): the address is no
        // longer let through.
        punch.allowed().retain(&Policy::new(Vec::new(), true));
        let transmit = Transmit {
            destination: to_allowed,
            ..transmit
        };
        // Drain the punches still in flight, then check the guard.
        tokio::time::sleep(PUNCH_EVERY * PUNCHES as u32).await;
        while allowed.recv_from(&mut buf).is_ok() {}
        punch.socket.try_send(&transmit).expect("dropped quietly");
        assert!(allowed.recv_from(&mut buf).is_err(), "nothing arrived");
    }

    /// The front answers a QUIC handshake only from an address the guard
    /// lets datagrams go to: a stranger's gets no reply at all.
    #[tokio::test]
    async fn the_front_answers_only_approved_addresses() {
        // egress-check: allowed: the test's own client, to the front on loopback.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let client_addr = socket.local_addr().expect("addr");
        let dialer = Dialer::new(listing(client_addr), Audit::default());
        let (punch, front, _tunnels) = Punch::open(dialer, &user()).expect("open");
        let stats = front.stats();
        let (_stop, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(front.serve(stop));
        let port = punch.socket.local_addr().expect("addr").port();
        let front_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let client = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .expect("client");
        let pin = punch.template.pin.expect("pin");
        let tls = burrow_obfs::tls::client_config(
            &burrow_obfs::tls::Trust::Pinned(pin),
            &[burrow_obfs::tls::ALPN_QUIC],
        )
        .expect("tls");
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from((*tls).clone()).expect("quic tls");
        let config = quinn::ClientConfig::new(Arc::new(crypto));
        let attempt = || async {
            let connecting = client
                .connect_with(config.clone(), front_addr, "localhost")
                .expect("connect");
            tokio::time::timeout(Duration::from_secs(2), connecting).await
        };
        assert!(attempt().await.is_err(), "a stranger gets no answer");
        assert_eq!(stats.snapshot().connections, 0, "nor any state");
        // Listed by the policy, but not yet approved for this socket: still
        // a stranger. Approved (as a contact's punch does), it is answered.
        punch.allowed().approve(client_addr).expect("listed");
        let conn = attempt()
            .await
            .expect("answered in time")
            .expect("handshake");
        conn.close(0u32.into(), b"");
    }

    #[test]
    fn only_quic_addresses_are_observed() {
        let quic: Multiaddr = "/ip4/203.0.113.9/udp/40000/quic-v1".parse().expect("addr");
        assert_eq!(
            quic_socket_addr(&quic),
            Some("203.0.113.9:40000".parse().expect("addr"))
        );
        for other in [
            "/ip4/203.0.113.9/tcp/40000/tls/http",
            "/ip4/203.0.113.9/udp/0/quic-v1",
            "/dns/example.org/udp/443/quic-v1",
        ] {
            let a: Multiaddr = other.parse().expect("addr");
            assert_eq!(quic_socket_addr(&a), None, "{other}");
        }
    }
}
