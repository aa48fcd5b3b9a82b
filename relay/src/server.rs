//! The relay's libp2p side: a circuit relay v2 server for NAT-trapped
//! users and the mailbox, on whatever transport the caller gives it (in
//! the `burrow` binary: the tunnels of the camouflaged front).

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::identity::Keypair;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig, RecordStore};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{identify, kad, ping, relay, Multiaddr, PeerId, Swarm};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::boxed::BoxedHandlers;
use crate::mailbox::{MailboxLimits, Mailboxes};
use crate::proto::{MailboxItem, MailboxRequest, MailboxResponse, MAILBOX_PROTOCOL};
use crate::tracker;

/// What identify says about this program: nothing.
pub const AGENT: &str = "node";
/// The identify protocol version both sides send.
pub const PROTOCOL_VERSION: &str = "/burrow/1";

/// Who may hold a reservation (and so be reached through this relay).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Admission {
    /// Anyone who has the relay's line.
    #[default]
    Open,
    /// Only these users.
    Listed(HashSet<PeerId>),
}

/// Every bound of the relay, each with a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// Reservations held at once, and per user.
    pub max_reservations: usize,
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before the user renews it.
    pub reservation_duration: Duration,
    /// Reservation requests per source IP per minute.
    pub reservations_per_ip_per_minute: NonZeroU32,
    /// Circuits open at once, and per user.
    pub max_circuits: usize,
    pub max_circuits_per_peer: usize,
    /// Lifetime of one circuit (fits in u32 seconds; the relay announces it
    /// in seconds). Users reconnect after it ends.
    pub circuit_duration: Duration,
    /// Bytes one circuit may carry; 0 means no limit.
    pub circuit_bytes: u64,
    /// New circuits one peer may ask for per minute, and one IP.
    pub circuits_per_peer_per_minute: NonZeroU32,
    pub circuits_per_ip_per_minute: NonZeroU32,
    /// Connections with nothing going on are closed after this.
    pub idle_timeout: Duration,
    pub mailbox: MailboxLimits,
    /// Users the tracker keeps a location for (one record each, at most
    /// 2 KiB: 32 MiB at the default).
    pub tracker_records: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 4096,
            max_reservations_per_peer: 4,
            reservation_duration: Duration::from_secs(3600),
            reservations_per_ip_per_minute: NonZeroU32::MIN.saturating_add(59),
            max_circuits: 4096,
            max_circuits_per_peer: 64,
            circuit_duration: Duration::from_secs(24 * 3600),
            circuit_bytes: 0,
            circuits_per_peer_per_minute: NonZeroU32::MIN.saturating_add(119),
            circuits_per_ip_per_minute: NonZeroU32::MIN.saturating_add(599),
            idle_timeout: Duration::from_secs(120),
            mailbox: MailboxLimits::default(),
            tracker_records: 16 * 1024,
        }
    }
}

/// Why a relay configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("circuit_duration must be between 1 s and {max} s", max = u32::MAX)]
    CircuitDuration,
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

impl RelayLimits {
    pub fn validate(&self) -> Result<(), LimitsError> {
        let secs = self.circuit_duration.as_secs();
        if secs == 0 || secs > u64::from(u32::MAX) {
            return Err(LimitsError::CircuitDuration);
        }
        for (name, v) in [
            ("max_reservations", self.max_reservations),
            ("max_reservations_per_peer", self.max_reservations_per_peer),
            ("max_circuits", self.max_circuits),
            ("max_circuits_per_peer", self.max_circuits_per_peer),
            ("mailbox.per_recipient", self.mailbox.per_recipient),
            ("mailbox.max_item", self.mailbox.max_item),
            ("tracker_records", self.tracker_records),
        ] {
            if v == 0 {
                return Err(LimitsError::Zero(name));
            }
        }
        Ok(())
    }

    fn relay_config(&self, admission: &Admission) -> relay::Config {
        let mut c = relay::Config {
            max_reservations: self.max_reservations,
            max_reservations_per_peer: self.max_reservations_per_peer,
            reservation_duration: self.reservation_duration,
            reservation_rate_limiters: Vec::new(),
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits_per_peer,
            max_circuit_duration: self.circuit_duration,
            max_circuit_bytes: self.circuit_bytes,
            circuit_src_rate_limiters: Vec::new(),
        }
        .reservation_rate_per_ip(self.reservations_per_ip_per_minute, Duration::from_secs(60))
        .circuit_src_per_peer(self.circuits_per_peer_per_minute, Duration::from_secs(60))
        .circuit_src_per_ip(self.circuits_per_ip_per_minute, Duration::from_secs(60));
        if let Admission::Listed(users) = admission {
            c.reservation_rate_limiters
                .push(Box::new(ListedUsers(users.clone())));
        }
        c
    }
}

/// Reservations only for listed users (the relay's hook for admission is
/// its rate limiter: refusing is "rate limit 0" for everyone else).
struct ListedUsers(HashSet<PeerId>);

impl relay::RateLimiter for ListedUsers {
    fn try_next(&mut self, peer: PeerId, _addr: &Multiaddr, _now: Instant) -> bool {
        self.0.contains(&peer)
    }
}

#[derive(NetworkBehaviour)]
pub struct RelayBehaviour {
    relay: relay::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mailbox: request_response::cbor::Behaviour<MailboxRequest, MailboxResponse>,
    tracker: kad::Behaviour<MemoryStore>,
}

impl std::fmt::Debug for RelayBehaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayBehaviour").finish_non_exhaustive()
    }
}

/// Ping as every Burrow peer runs it: a connection that misses
/// [`PING_MISSES`] pings in a row is closed (a QUIC peer that vanished
/// sends nothing that would tell), so circuits through a dead user end
/// within about a minute.
pub fn ping_config() -> ping::Config {
    ping::Config::new()
        .with_interval(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(15))
}

/// Consecutive missed pings after which a connection is closed. One miss
/// is not enough: a ping waits behind whatever the connection is carrying,
/// and a slow link with full windows can hold it back for seconds.
pub const PING_MISSES: u32 = 3;

/// Counts missed pings per connection.
#[derive(Debug, Default)]
pub struct PingWatch {
    misses: HashMap<ConnectionId, u32>,
}

impl PingWatch {
    /// Returns the connection to close, if this event makes it dead.
    pub fn on_event(&mut self, event: &ping::Event) -> Option<ConnectionId> {
        match &event.result {
            Ok(_) => {
                self.misses.remove(&event.connection);
                None
            }
            Err(_) => {
                let n = self.misses.entry(event.connection).or_default();
                *n += 1;
                (*n >= PING_MISSES).then(|| {
                    self.misses.remove(&event.connection);
                    event.connection
                })
            }
        }
    }

    pub fn closed(&mut self, connection: ConnectionId) {
        self.misses.remove(&connection);
    }
}

/// Identify as every Burrow peer sends it: no listen addresses, no
/// program name.
pub fn identify_config(keypair: &Keypair) -> identify::Config {
    identify::Config::new(PROTOCOL_VERSION.to_string(), keypair.public())
        .with_agent_version(AGENT.to_string())
        .with_hide_listen_addrs(true)
        .with_push_listen_addr_updates(false)
}

/// A live view of the relay for tests and metrics: counts only, never
/// identities or addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Users (and other peers) connected, and the connections they hold.
    pub connected: usize,
    pub connections: usize,
    pub reservations: usize,
    pub circuits: usize,
    pub mailbox_messages: usize,
    pub mailbox_bytes: usize,
    /// Users whose current location this relay's tracker holds.
    pub tracker_records: usize,
    /// Reservation and circuit requests refused since the start (a limit,
    /// a rate or the list of allowed users).
    pub reservations_refused: u64,
    pub circuits_refused: u64,
    /// Circuits opened since the start.
    pub circuits_opened: u64,
}

/// The relay's libp2p node.
pub struct RelayNode {
    swarm: Swarm<BoxedHandlers<RelayBehaviour>>,
    mailboxes: Mailboxes,
    stats: Arc<Mutex<RelayStats>>,
    reservations: HashSet<PeerId>,
    admission: Admission,
    connections: usize,
    tracker_records: usize,
    pings: PingWatch,
}

impl std::fmt::Debug for RelayNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayNode")
            .field("peer_id", self.swarm.local_peer_id())
            .finish_non_exhaustive()
    }
}

impl RelayNode {
    /// `listen` is handed to the transport's `listen_on`; `public` are the
    /// addresses users reach the relay at (announced in reservations).
    pub fn new(
        transport: Boxed<(PeerId, StreamMuxerBox)>,
        keypair: &Keypair,
        listen: Multiaddr,
        public: &[Multiaddr],
        limits: &RelayLimits,
        admission: &Admission,
    ) -> Result<Self, crate::Error> {
        limits.validate()?;
        let peer_id = keypair.public().to_peer_id();
        let codec = request_response::cbor::codec::Codec::default()
            .set_request_size_maximum(limits.mailbox.max_item as u64 + 1024)
            .set_response_size_maximum(
                (limits.mailbox.max_item * limits.mailbox.max_fetch) as u64 + 64 * 1024,
            );
        let behaviour = RelayBehaviour {
            relay: relay::Behaviour::new(peer_id, limits.relay_config(admission)),
            identify: identify::Behaviour::new(identify_config(keypair)),
            ping: ping::Behaviour::new(ping_config()),
            mailbox: request_response::Behaviour::with_codec(
                codec,
                [(MAILBOX_PROTOCOL, ProtocolSupport::Inbound)],
                request_response::Config::default(),
            ),
            tracker: {
                let store = MemoryStore::with_config(
                    peer_id,
                    MemoryStoreConfig {
                        max_records: limits.tracker_records,
                        max_value_bytes: tracker::MAX_VALUE,
                        max_provided_keys: 0,
                        max_providers_per_key: 0,
                    },
                );
                let mut kad = kad::Behaviour::with_config(peer_id, store, tracker::kad_config());
                // Set explicitly: a relay answers tracker lookups.
                kad.set_mode(Some(kad::Mode::Server));
                kad
            },
        };
        // V1Lazy: streams the relay opens (a circuit's STOP to the user)
        // start at once instead of after a negotiation round trip.
        let config = libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(limits.idle_timeout)
            .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy);
        let mut swarm = Swarm::new(transport, BoxedHandlers(behaviour), peer_id, config);
        swarm
            .listen_on(listen)
            .map_err(|e| crate::Error::Listen(e.to_string()))?;
        for addr in public {
            swarm.add_external_address(addr.clone());
        }
        Ok(Self {
            swarm,
            mailboxes: Mailboxes::new(limits.mailbox.clone()),
            stats: Arc::default(),
            reservations: HashSet::new(),
            admission: admission.clone(),
            connections: 0,
            tracker_records: 0,
            pings: PingWatch::default(),
        })
    }

    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Counts, updated as the relay runs.
    pub fn stats(&self) -> Arc<Mutex<RelayStats>> {
        self.stats.clone()
    }

    /// Runs until `shutdown` becomes true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut expiry = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event),
                _ = expiry.tick() => {
                    self.mailboxes.expire(Instant::now());
                    self.expire_records(Instant::now());
                }
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            self.publish_stats();
        }
    }

    fn publish_stats(&self) {
        if let Ok(mut s) = self.stats.lock() {
            s.connected = self.swarm.connected_peers().count();
            s.connections = self.connections;
            s.tracker_records = self.tracker_records;
            s.reservations = self.reservations.len();
            s.mailbox_messages = self.mailboxes.len();
            s.mailbox_bytes = self.mailboxes.bytes();
        }
    }

    fn on_event(&mut self, event: SwarmEvent<RelayBehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(RelayBehaviourEvent::Mailbox(
                request_response::Event::Message {
                    peer,
                    message:
                        request_response::Message::Request {
                            request, channel, ..
                        },
                    ..
                },
            )) => {
                let response = self.on_mailbox(peer, request);
                if self
                    .swarm
                    .behaviour_mut()
                    .mailbox
                    .send_response(channel, response)
                    .is_err()
                {
                    debug!("mailbox answer not delivered: the user went away");
                }
            }
            SwarmEvent::Behaviour(RelayBehaviourEvent::Relay(e)) => self.on_relay(e),
            SwarmEvent::Behaviour(RelayBehaviourEvent::Ping(e)) => {
                if let Some(dead) = self.pings.on_event(&e) {
                    debug!("{PING_MISSES} pings missed; closing the connection");
                    self.swarm.close_connection(dead);
                }
            }
            SwarmEvent::Behaviour(RelayBehaviourEvent::Tracker(kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            })) => self.on_record(source, record),
            SwarmEvent::NewListenAddr { .. } => info!("relay listening for tunnels"),
            SwarmEvent::ConnectionEstablished { .. } => self.connections += 1,
            SwarmEvent::ConnectionClosed { connection_id, .. } => {
                self.connections = self.connections.saturating_sub(1);
                self.pings.closed(connection_id);
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                debug!("incoming connection failed: {error}")
            }
            SwarmEvent::ListenerClosed { reason, .. } => {
                warn!("tunnel listener closed: {reason:?}")
            }
            _ => {}
        }
    }

    /// Drops tracker records nobody renewed (kad itself only notices an
    /// expired record when someone asks for it).
    fn expire_records(&mut self, now: Instant) {
        let store = self.swarm.behaviour_mut().tracker.store_mut();
        self.tracker_records = tracker::expire(store, now);
    }

    /// A user publishes where they are: kept if it is their own record and
    /// they are admitted here.
    fn on_record(&mut self, source: PeerId, record: kad::Record) {
        if let Admission::Listed(users) = &self.admission {
            if !users.contains(&source) {
                debug!("tracker record from a user not on the list refused");
                return;
            }
        }
        match tracker::accept_record(source, record, Instant::now()) {
            Ok(record) => {
                let store = self.swarm.behaviour_mut().tracker.store_mut();
                if let Err(e) = store.put(record) {
                    warn!("tracker record not kept: {e}");
                }
                self.tracker_records = store.records().count();
            }
            Err(e) => debug!("tracker record refused: {e}"),
        }
    }

    fn on_relay(&mut self, e: relay::Event) {
        match e {
            relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                self.reservations.insert(src_peer_id);
            }
            relay::Event::ReservationTimedOut { src_peer_id }
            | relay::Event::ReservationClosed { src_peer_id } => {
                self.reservations.remove(&src_peer_id);
            }
            relay::Event::CircuitReqAccepted { .. } => {
                if let Ok(mut s) = self.stats.lock() {
                    s.circuits += 1;
                    s.circuits_opened += 1;
                }
            }
            relay::Event::CircuitClosed { .. } => {
                if let Ok(mut s) = self.stats.lock() {
                    s.circuits = s.circuits.saturating_sub(1);
                }
            }
            relay::Event::ReservationReqDenied { .. } => {
                debug!("reservation refused");
                if let Ok(mut s) = self.stats.lock() {
                    s.reservations_refused += 1;
                }
            }
            relay::Event::CircuitReqDenied { .. } => {
                debug!("circuit refused");
                if let Ok(mut s) = self.stats.lock() {
                    s.circuits_refused += 1;
                }
            }
            _ => {}
        }
    }

    fn on_mailbox(&mut self, peer: PeerId, request: MailboxRequest) -> MailboxResponse {
        let now = Instant::now();
        match request {
            MailboxRequest::Put { to, sealed } => {
                let Ok(to) = PeerId::from_bytes(&to) else {
                    return MailboxResponse::Refused {
                        reason: "the recipient is not a valid user id".into(),
                    };
                };
                if let Admission::Listed(users) = &self.admission {
                    if !users.contains(&to) {
                        return MailboxResponse::Refused {
                            reason: "the recipient is not a user of this relay".into(),
                        };
                    }
                }
                match self.mailboxes.put(now, to, sealed) {
                    Ok(id) => MailboxResponse::Stored { id },
                    Err(refusal) => MailboxResponse::Refused {
                        reason: refusal.to_string(),
                    },
                }
            }
            MailboxRequest::Fetch => MailboxResponse::Items {
                items: self
                    .mailboxes
                    .fetch(now, &peer)
                    .into_iter()
                    .map(|(id, sealed)| MailboxItem { id, sealed })
                    .collect(),
            },
            MailboxRequest::Ack { ids } => MailboxResponse::Acked {
                removed: u32::try_from(self.mailboxes.ack(&peer, &ids)).unwrap_or(u32::MAX),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        assert_eq!(RelayLimits::default().validate(), Ok(()));
        let too_long = RelayLimits {
            circuit_duration: Duration::from_secs(u64::from(u32::MAX) + 1),
            ..RelayLimits::default()
        };
        assert_eq!(too_long.validate(), Err(LimitsError::CircuitDuration));
        let zero = RelayLimits {
            max_circuits: 0,
            ..RelayLimits::default()
        };
        assert_eq!(zero.validate(), Err(LimitsError::Zero("max_circuits")));
    }

    #[test]
    fn listed_admission_refuses_everyone_else() {
        let listed = PeerId::random();
        let mut l = ListedUsers([listed].into_iter().collect());
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1/tls/http".parse().expect("addr");
        assert!(relay::RateLimiter::try_next(
            &mut l,
            listed,
            &addr,
            Instant::now()
        ));
        assert!(!relay::RateLimiter::try_next(
            &mut l,
            PeerId::random(),
            &addr,
            Instant::now()
        ));
    }
}

#[cfg(test)]
mod ping_tests {
    use super::*;

    fn event(connection: usize, ok: bool) -> ping::Event {
        ping::Event {
            peer: PeerId::random(),
            connection: ConnectionId::new_unchecked(connection),
            result: if ok {
                Ok(Duration::from_millis(1))
            } else {
                Err(ping::Failure::Timeout)
            },
        }
    }

    #[test]
    fn a_connection_is_closed_only_after_misses_in_a_row() {
        let mut w = PingWatch::default();
        assert_eq!(w.on_event(&event(1, false)), None);
        assert_eq!(w.on_event(&event(1, false)), None);
        // An answer resets the count.
        assert_eq!(w.on_event(&event(1, true)), None);
        assert_eq!(w.on_event(&event(1, false)), None);
        assert_eq!(w.on_event(&event(2, false)), None, "counted per connection");
        assert_eq!(w.on_event(&event(1, false)), None);
        assert_eq!(
            w.on_event(&event(1, false)),
            Some(ConnectionId::new_unchecked(1))
        );
        w.closed(ConnectionId::new_unchecked(2));
        assert_eq!(w.on_event(&event(2, false)), None, "forgotten when closed");
    }
}
