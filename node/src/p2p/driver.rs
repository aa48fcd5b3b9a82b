//! The task that owns the swarm: keeps the reservation at the home relay,
//! fetches the home mailbox, answers contacts' messages through a
//! [`Handler`], and carries out [`Command`]s (deliver to a contact, leave a
//! sealed message at a relay, find where a contact is now).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use burrow_obfs::{RelayLine, Sockets};
use burrow_relay::proto::{MailboxItem, MailboxRequest, MailboxResponse};
use burrow_relay::server::PingWatch;
use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::identity::PublicKey;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{identify, kad, relay, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::msgstream;
use super::proto::{Envelope, PunchReply, PunchRequest, Reply};
use super::swarm::{NodeBehaviour, NodeBehaviourEvent};
use super::transport::{relay_addrs, Directory};
use crate::tracker::{open_record, record_key, Location};

/// A relay as the swarm needs it: its line, node id and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayRef {
    pub line: RelayLine,
    pub peer: PeerId,
    addrs: Vec<Multiaddr>,
}

/// Why a relay line cannot be used for messaging.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayRefError {
    #[error("the relay line has no id= (print a current one with `burrow relay address`)")]
    NoId,
    #[error("the relay line's id= is not a valid node id")]
    BadId,
}

impl RelayRef {
    pub fn new(line: RelayLine) -> Result<Self, RelayRefError> {
        let id = line.id.as_deref().ok_or(RelayRefError::NoId)?;
        let peer: PeerId = id.parse().map_err(|_| RelayRefError::BadId)?;
        let addrs = relay_addrs(&line)
            .into_iter()
            .map(|a| a.with(Protocol::P2p(peer)))
            .collect();
        Ok(Self { line, peer, addrs })
    }

    /// The relay's addresses, `/p2p/RELAY` included.
    pub fn addrs(&self) -> &[Multiaddr] {
        &self.addrs
    }

    /// Addresses of `user` through this relay, one per carrier.
    pub fn circuit_to(&self, user: PeerId) -> Vec<Multiaddr> {
        self.addrs
            .iter()
            .map(|a| {
                a.clone()
                    .with(Protocol::P2pCircuit)
                    .with(Protocol::P2p(user))
            })
            .collect()
    }
}

/// How to reach a contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The contact's own front (the line's id is the contact's): a
    /// connection of our own, never through a relay.
    Direct(RelayRef),
    /// Through the contact's relay, over a circuit (or any connection to
    /// the contact already open).
    Relay(RelayRef),
}

/// The connection a delivered message's reply came back on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// A connection between the two users (to a front, or through a hole).
    Direct,
    /// A circuit through a relay.
    Relayed,
}

/// Where a delivery's outcome goes.
type Delivered = oneshot::Sender<Result<(Reply, Link), DeliverError>>;

/// Why a delivery or a deposit did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliverError {
    #[error("not reachable: {0}")]
    Unreachable(String),
    #[error("no answer in time")]
    Timeout,
    #[error("refused: {0}")]
    Refused(String),
    #[error("the node is shutting down")]
    Stopped,
}

/// What the driver is asked to do.
#[derive(Debug)]
pub enum Command {
    /// Sends an envelope to a contact by `route`.
    Deliver {
        to: PeerId,
        route: Route,
        envelope: Envelope,
        done: Delivered,
    },
    /// Leaves a sealed message for `to` in the mailbox at `via`.
    Deposit {
        via: RelayRef,
        to: PeerId,
        sealed: Vec<u8>,
        done: oneshot::Sender<Result<(), DeliverError>>,
    },
    /// Whether a direct (not relayed) connection to `peer` is open.
    HasDirect {
        peer: PeerId,
        done: oneshot::Sender<bool>,
    },
    /// Looks in the home mailbox now.
    FetchMailbox,
    /// Asks `to` (through `via`, or a connection already open) to punch a
    /// hole toward `addr`, this node's public QUIC address.
    Punch {
        to: PeerId,
        via: RelayRef,
        addr: std::net::SocketAddr,
        done: oneshot::Sender<Result<PunchReply, DeliverError>>,
    },
    /// Asks the trackers at `via` where `user` is reachable now.
    Locate {
        user: PublicKey,
        via: Vec<RelayRef>,
        done: oneshot::Sender<Option<Location>>,
    },
}

/// The state of the link to the home relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HomeState {
    /// Reservation held: contacts can reach this node.
    Online,
    /// No reservation; retrying.
    Offline,
}

/// The daemon's side of the driver: what to do with what arrives.
pub trait Handler: Send + 'static {
    /// A contact's envelope; the reply is sent back at once.
    fn on_envelope(&mut self, from: PeerId, envelope: Envelope) -> Reply;
    /// Whether `peer` may keep a connection it opened to this node (a
    /// contact); others are disconnected at once.
    fn accepts(&mut self, peer: &PeerId) -> bool;
    /// Sealed items from the home mailbox; returns the ids to delete there
    /// (those stored safely, or unreadable and never going to be).
    fn on_mailbox(&mut self, items: Vec<MailboxItem>) -> Vec<u64>;
    fn on_home(&mut self, state: HomeState);
    /// A contact asks for a hole punched toward them.
    fn on_punch(&mut self, _from: PeerId, _request: PunchRequest) -> PunchReply {
        PunchReply::Refused {
            reason: "this node does not punch holes".into(),
        }
    }
    /// The home relay said where it sees this node's connection come from.
    fn on_observed(&mut self, _addr: &Multiaddr) {}
}

/// Cheap handle for sending commands to the driver.
#[derive(Debug, Clone)]
pub struct DriverHandle(mpsc::Sender<Command>);

impl DriverHandle {
    pub async fn deliver(
        &self,
        to: PeerId,
        route: Route,
        envelope: Envelope,
    ) -> Result<Reply, DeliverError> {
        self.deliver_by(to, route, envelope).await.map(|(r, _)| r)
    }

    /// Like [`DriverHandle::deliver`], with the kind of connection it took
    /// (a relay route takes a direct connection already open, if any).
    pub async fn deliver_by(
        &self,
        to: PeerId,
        route: Route,
        envelope: Envelope,
    ) -> Result<(Reply, Link), DeliverError> {
        let (done, rx) = oneshot::channel();
        self.0
            .send(Command::Deliver {
                to,
                route,
                envelope,
                done,
            })
            .await
            .map_err(|_| DeliverError::Stopped)?;
        rx.await.map_err(|_| DeliverError::Stopped)?
    }

    pub async fn deposit(
        &self,
        via: RelayRef,
        to: PeerId,
        sealed: Vec<u8>,
    ) -> Result<(), DeliverError> {
        let (done, rx) = oneshot::channel();
        self.0
            .send(Command::Deposit {
                via,
                to,
                sealed,
                done,
            })
            .await
            .map_err(|_| DeliverError::Stopped)?;
        rx.await.map_err(|_| DeliverError::Stopped)?
    }

    pub async fn punch(
        &self,
        to: PeerId,
        via: RelayRef,
        addr: std::net::SocketAddr,
    ) -> Result<PunchReply, DeliverError> {
        let (done, rx) = oneshot::channel();
        self.0
            .send(Command::Punch {
                to,
                via,
                addr,
                done,
            })
            .await
            .map_err(|_| DeliverError::Stopped)?;
        rx.await.map_err(|_| DeliverError::Stopped)?
    }

    /// Whether a direct (not relayed) connection to `peer` is open now.
    pub async fn has_direct(&self, peer: PeerId) -> bool {
        let (done, rx) = oneshot::channel();
        if self
            .0
            .send(Command::HasDirect { peer, done })
            .await
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    pub async fn fetch_mailbox(&self) {
        let _ = self.0.send(Command::FetchMailbox).await;
    }

    /// The newest location `user` published at the trackers of `via`
    /// (checked against their key), if any answered with one.
    pub async fn locate(&self, user: PublicKey, via: Vec<RelayRef>) -> Option<Location> {
        let (done, rx) = oneshot::channel();
        self.0
            .send(Command::Locate { user, via, done })
            .await
            .ok()?;
        rx.await.ok().flatten()
    }
}

/// A tracker lookup under way.
struct Lookup {
    user: PublicKey,
    best: Option<Location>,
    done: oneshot::Sender<Option<Location>>,
}

/// A message that waits for a direct connection to its contact.
type Waiting = (Envelope, Delivered);

/// The connections to one peer, by kind.
#[derive(Debug, Default)]
struct Links {
    direct: Vec<ConnectionId>,
    relayed: Vec<ConnectionId>,
}

enum BoxOp {
    Put(oneshot::Sender<Result<(), DeliverError>>),
    Fetch,
    Ack,
}

/// Commands queued before the driver handles them.
const COMMAND_QUEUE: usize = 64;
/// How often the home mailbox is checked while online.
const MAILBOX_POLL: Duration = Duration::from_secs(20);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Time a contact's own front has to answer on each carrier (tried at the
/// same time) before the delivery falls back to the relay.
pub const DIRECT_CONNECT: Duration = Duration::from_secs(4);

pub struct Driver<H> {
    swarm: Swarm<NodeBehaviour>,
    directory: Directory,
    sockets: Arc<dyn Sockets>,
    home: RelayRef,
    handler: H,
    commands: mpsc::Receiver<Command>,
    messages: HashMap<msgstream::RequestId, Delivered>,
    mailbox: HashMap<OutboundRequestId, BoxOp>,
    punches: HashMap<OutboundRequestId, oneshot::Sender<Result<PunchReply, DeliverError>>>,
    home_listener: Option<ListenerId>,
    online: bool,
    /// Why the home relay last refused or ended the reservation, so that a
    /// refusal repeated on every retry is logged once.
    home_trouble: Option<String>,
    backoff: Duration,
    /// This user's location record and the relays to file it at besides
    /// home (an earlier home, so contacts who still have it find the new one).
    location: Option<(kad::Record, Vec<RelayRef>)>,
    lookups: HashMap<kad::QueryId, Lookup>,
    pings: PingWatch,
    /// Where this node accepts direct connections, if it does.
    direct_listen: Option<Multiaddr>,
    links: HashMap<PeerId, Links>,
    /// Direct dials under way, by contact.
    direct_dials: HashMap<PeerId, ConnectionId>,
    /// Messages waiting for a direct connection (or for the relayed ones
    /// to close, so that none of them goes through the relay).
    waiting_direct: HashMap<PeerId, Vec<Waiting>>,
}

impl<H> fmt::Debug for Driver<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("peer", self.swarm.local_peer_id())
            .field("online", &self.online)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Driver<H> {
    pub fn new(
        swarm: Swarm<NodeBehaviour>,
        directory: Directory,
        sockets: Arc<dyn Sockets>,
        home: RelayRef,
        handler: H,
    ) -> (Self, DriverHandle) {
        let (tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let driver = Self {
            swarm,
            directory,
            sockets,
            home,
            handler,
            commands,
            messages: HashMap::new(),
            mailbox: HashMap::new(),
            punches: HashMap::new(),
            home_listener: None,
            home_trouble: None,
            online: false,
            backoff: Duration::from_millis(250),
            location: None,
            lookups: HashMap::new(),
            pings: PingWatch::default(),
            direct_listen: None,
            links: HashMap::new(),
            direct_dials: HashMap::new(),
            waiting_direct: HashMap::new(),
        };
        (driver, DriverHandle(tx))
    }

    /// Publishes `record` at the home relay's tracker (and at `also_at`)
    /// each time the home reservation is made.
    pub fn publish_location(mut self, record: kad::Record, also_at: Vec<RelayRef>) -> Self {
        self.location = Some((record, also_at));
        self
    }

    /// Accepts direct connections at `addr` (the swarm's transport must
    /// hold the tunnels of the node's own front).
    pub fn listen_directly(mut self, addr: Multiaddr) -> Self {
        self.direct_listen = Some(addr);
        self
    }

    fn know_tracker(&mut self, relay: &RelayRef) {
        self.know_relay(relay);
        for addr in relay.addrs() {
            self.swarm
                .behaviour_mut()
                .tracker
                .add_address(&relay.peer, addr.clone());
        }
    }

    fn publish(&mut self) {
        let Some((record, also_at)) = self.location.clone() else {
            return;
        };
        let mut peers = vec![self.home.peer];
        let home = self.home.clone();
        self.know_tracker(&home);
        for relay in &also_at {
            self.know_tracker(relay);
            if !peers.contains(&relay.peer) {
                peers.push(relay.peer);
            }
        }
        // One query per relay: a shared query would stop at the first
        // success and leave the others with an older record.
        for peer in peers {
            self.swarm.behaviour_mut().tracker.put_record_to(
                record.clone(),
                std::iter::once(peer),
                kad::Quorum::One,
            );
        }
    }

    fn know_relay(&mut self, relay: &RelayRef) {
        if let Err(e) = self.directory.add(&relay.line, self.sockets.clone()) {
            warn!("relay {} unusable: {e}", relay.line.host);
        }
        for addr in relay.addrs() {
            self.swarm.add_peer_address(relay.peer, addr.clone());
        }
    }

    fn listen_home(&mut self) {
        let home = self.home.clone();
        self.know_relay(&home);
        let Some(addr) = home.addrs().first().cloned() else {
            return;
        };
        match self.swarm.listen_on(addr.with(Protocol::P2pCircuit)) {
            Ok(id) => self.home_listener = Some(id),
            Err(e) => warn!("cannot reserve at the home relay: {e}"),
        }
    }

    fn request_fetch(&mut self) {
        let peer = self.home.peer;
        let id = self
            .swarm
            .behaviour_mut()
            .mailbox
            .send_request(&peer, MailboxRequest::Fetch);
        self.mailbox.insert(id, BoxOp::Fetch);
    }

    /// Runs until every [`DriverHandle`] is dropped.
    pub async fn run(mut self) {
        if let Some(addr) = self.direct_listen.clone() {
            if let Err(e) = self.swarm.listen_on(addr) {
                warn!("not accepting direct connections: {e}");
            }
        }
        self.listen_home();
        let mut poll = tokio::time::interval(MAILBOX_POLL);
        let mut retry: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => {
                    if self.on_event(event) {
                        let wait = self.backoff;
                        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                        retry = Some(Box::pin(tokio::time::sleep(wait)));
                    }
                }
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                _ = poll.tick() => if self.online { self.request_fetch() },
                _ = async { retry.as_mut().expect("guarded").await }, if retry.is_some() => {
                    retry = None;
                    self.listen_home();
                }
            }
        }
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Deliver {
                to,
                route: Route::Relay(via),
                envelope,
                done,
            } => {
                self.know_relay(&via);
                for addr in via.circuit_to(to) {
                    self.swarm.add_peer_address(to, addr);
                }
                self.send_message(to, envelope, done);
            }
            Command::Deliver {
                to,
                route: Route::Direct(front),
                envelope,
                done,
            } => self.deliver_direct(to, front, envelope, done),
            Command::Deposit {
                via,
                to,
                sealed,
                done,
            } => {
                self.know_relay(&via);
                let id = self.swarm.behaviour_mut().mailbox.send_request(
                    &via.peer,
                    MailboxRequest::Put {
                        to: to.to_bytes(),
                        sealed,
                    },
                );
                self.mailbox.insert(id, BoxOp::Put(done));
            }
            Command::Punch {
                to,
                via,
                addr,
                done,
            } => {
                self.know_relay(&via);
                for a in via.circuit_to(to) {
                    self.swarm.add_peer_address(to, a);
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .punch
                    .send_request(&to, PunchRequest { addr });
                self.punches.insert(id, done);
            }
            Command::HasDirect { peer, done } => {
                let open = self.links.get(&peer).is_some_and(|l| !l.direct.is_empty());
                let _ = done.send(open);
            }
            Command::FetchMailbox => self.request_fetch(),
            Command::Locate { user, via, done } => {
                for relay in &via {
                    self.know_tracker(relay);
                }
                let key = record_key(&PeerId::from_public_key(&user));
                let id = self.swarm.behaviour_mut().tracker.get_record(key);
                self.lookups.insert(
                    id,
                    Lookup {
                        user,
                        best: None,
                        done,
                    },
                );
            }
        }
    }

    fn send_message(&mut self, to: PeerId, envelope: Envelope, done: Delivered) {
        let id = self
            .swarm
            .behaviour_mut()
            .messages
            .send_request(&to, envelope);
        self.messages.insert(id, done);
    }

    /// Sends over a direct connection to `to`, dialling `front` first if
    /// there is none. Relayed connections to `to` are closed before the
    /// message goes, so that it cannot take one of them.
    fn deliver_direct(&mut self, to: PeerId, front: RelayRef, envelope: Envelope, done: Delivered) {
        if front.peer != to {
            let _ = done.send(Err(DeliverError::Unreachable(
                "the direct endpoint belongs to someone else".into(),
            )));
            return;
        }
        self.waiting_direct
            .entry(to)
            .or_default()
            .push((envelope, done));
        let has_direct = self.links.get(&to).is_some_and(|l| !l.direct.is_empty());
        if has_direct {
            self.flush_direct(to);
            return;
        }
        if self.direct_dials.contains_key(&to) {
            return;
        }
        if let Err(e) =
            self.directory
                .add_with_timeout(&front.line, self.sockets.clone(), DIRECT_CONNECT)
        {
            self.fail_direct(to, format!("direct endpoint unusable: {e}"));
            return;
        }
        let opts = DialOpts::peer_id(to)
            .addresses(front.addrs().to_vec())
            .condition(PeerCondition::Always)
            .build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.direct_dials.insert(to, id);
            }
            Err(e) => self.fail_direct(to, format!("direct endpoint: {e}")),
        }
    }

    /// Sends what waits for `to` once only direct connections are left;
    /// until then, closes the relayed ones.
    fn flush_direct(&mut self, to: PeerId) {
        let Some(links) = self.links.get(&to) else {
            return;
        };
        if links.direct.is_empty() || !self.waiting_direct.contains_key(&to) {
            return;
        }
        if !links.relayed.is_empty() {
            for id in links.relayed.clone() {
                self.swarm.close_connection(id);
            }
            return;
        }
        for (envelope, done) in self.waiting_direct.remove(&to).unwrap_or_default() {
            self.send_message(to, envelope, done);
        }
    }

    fn fail_direct(&mut self, to: PeerId, why: String) {
        self.direct_dials.remove(&to);
        for (_, done) in self.waiting_direct.remove(&to).unwrap_or_default() {
            let _ = done.send(Err(DeliverError::Unreachable(why.clone())));
        }
    }

    /// Handles one swarm event; returns true when the home reservation
    /// must be retried later.
    fn on_event(&mut self, event: SwarmEvent<NodeBehaviourEvent>) -> bool {
        match event {
            SwarmEvent::Behaviour(NodeBehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted { renewal, .. },
            )) => {
                self.backoff = Duration::from_millis(250);
                self.home_trouble = None;
                if !renewal || !self.online {
                    info!("reachable through the home relay");
                    self.online = true;
                    self.handler.on_home(HomeState::Online);
                    self.request_fetch();
                }
                // Also on renewals (hourly): a tracker forgets a record
                // after a day without one.
                self.publish();
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } if Some(listener_id) == self.home_listener => {
                match reason {
                    // A full relay or one that lists its users says so on
                    // every retry: tell the user once.
                    Err(e) => {
                        let why = with_causes(&e);
                        if self.home_trouble.as_deref() != Some(why.as_str()) {
                            warn!("the home relay did not keep a place for this node: {why}; retrying");
                            self.home_trouble = Some(why);
                        }
                    }
                    Ok(()) => debug!("home reservation ended"),
                }
                self.home_listener = None;
                self.set_offline();
                return true;
            }
            SwarmEvent::ListenerError { listener_id, error }
                if Some(listener_id) == self.home_listener =>
            {
                debug!("home reservation error: {error}");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                // Only contacts may keep a connection they opened here.
                if endpoint.is_listener() && !self.handler.accepts(&peer_id) {
                    debug!("a connection from someone not a contact; closing it");
                    self.swarm.close_connection(connection_id);
                    return false;
                }
                let links = self.links.entry(peer_id).or_default();
                if endpoint.is_relayed() {
                    links.relayed.push(connection_id);
                } else {
                    links.direct.push(connection_id);
                }
                if self.direct_dials.get(&peer_id) == Some(&connection_id) {
                    self.direct_dials.remove(&peer_id);
                }
                self.flush_direct(peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.pings.closed(connection_id);
                if let Some(links) = self.links.get_mut(&peer_id) {
                    links.direct.retain(|c| *c != connection_id);
                    links.relayed.retain(|c| *c != connection_id);
                    if links.direct.is_empty() && links.relayed.is_empty() {
                        self.links.remove(&peer_id);
                    }
                }
                self.flush_direct(peer_id);
                if num_established == 0 && peer_id == self.home.peer {
                    self.set_offline();
                }
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Messages(e)) => self.on_message_event(e),
            SwarmEvent::Behaviour(NodeBehaviourEvent::Mailbox(e)) => self.on_mailbox_event(e),
            SwarmEvent::Behaviour(NodeBehaviourEvent::Punch(e)) => self.on_punch_event(e),
            SwarmEvent::Behaviour(NodeBehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if peer_id == self.home.peer => self.handler.on_observed(&info.observed_addr),
            SwarmEvent::Behaviour(NodeBehaviourEvent::Tracker(e)) => self.on_tracker_event(e),
            SwarmEvent::Behaviour(NodeBehaviourEvent::Ping(e)) => {
                if let Some(dead) = self.pings.on_event(&e) {
                    debug!("pings missed; closing the connection");
                    self.swarm.close_connection(dead);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                connection_id,
                error,
            } => {
                debug!("dial to {peer_id:?} failed: {error}");
                if let Some(peer) =
                    peer_id.filter(|p| self.direct_dials.get(p) == Some(&connection_id))
                {
                    self.fail_direct(peer, format!("direct endpoint: {}", with_causes(&error)));
                }
            }
            _ => {}
        }
        false
    }

    fn set_offline(&mut self) {
        if self.online {
            info!("lost the home relay; reconnecting");
            self.online = false;
            self.handler.on_home(HomeState::Offline);
        }
    }

    fn on_tracker_event(&mut self, e: kad::Event) {
        let kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        } = e
        else {
            return;
        };
        match result {
            kad::QueryResult::PutRecord(r) => match r {
                Ok(_) => info!("told a relay's tracker where to find you"),
                Err(e) => info!("a relay's tracker was not told where to find you: {e}"),
            },
            kad::QueryResult::GetRecord(r) => {
                let Some(lookup) = self.lookups.get_mut(&id) else {
                    return;
                };
                match r {
                    Ok(kad::GetRecordOk::FoundRecord(found)) => {
                        match open_record(&lookup.user, &found.record.value) {
                            Ok(loc) => {
                                if lookup
                                    .best
                                    .as_ref()
                                    .is_none_or(|b| loc.issued_ms > b.issued_ms)
                                {
                                    lookup.best = Some(loc);
                                }
                            }
                            Err(e) => debug!("tracker record ignored: {e}"),
                        }
                    }
                    Ok(kad::GetRecordOk::FinishedWithNoAdditionalRecord { .. }) => {}
                    Err(e) => debug!("tracker lookup: {e}"),
                }
                if step.last {
                    if let Some(lookup) = self.lookups.remove(&id) {
                        let _ = lookup.done.send(lookup.best);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_message_event(&mut self, e: msgstream::Event) {
        match e {
            msgstream::Event::Request {
                peer,
                envelope,
                channel,
                ..
            } => {
                let reply = self.handler.on_envelope(peer, envelope);
                self.swarm
                    .behaviour_mut()
                    .messages
                    .send_response(channel, reply);
            }
            msgstream::Event::Response {
                peer,
                connection_id,
                request_id,
                reply,
            } => {
                if let Some(done) = self.messages.remove(&request_id) {
                    let direct = self
                        .links
                        .get(&peer)
                        .is_some_and(|l| l.direct.contains(&connection_id));
                    let link = if direct { Link::Direct } else { Link::Relayed };
                    let _ = done.send(Ok((reply, link)));
                }
            }
            msgstream::Event::OutboundFailure {
                peer,
                request_id,
                error,
            } => {
                // A connection that swallowed a message is not trusted with
                // the next one: the next attempt dials afresh.
                if error == msgstream::Failure::Timeout {
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
                if let Some(done) = self.messages.remove(&request_id) {
                    let _ = done.send(Err(message_error(error)));
                }
            }
        }
    }

    fn on_punch_event(&mut self, e: request_response::Event<PunchRequest, PunchReply>) {
        match e {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let reply = self.handler.on_punch(peer, request);
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .punch
                        .send_response(channel, reply);
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(done) = self.punches.remove(&request_id) {
                        let _ = done.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(done) = self.punches.remove(&request_id) {
                    let _ = done.send(Err(outbound_error(error)));
                }
            }
            request_response::Event::InboundFailure { error, .. } => {
                debug!("inbound punch request failed: {error}")
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_mailbox_event(&mut self, e: request_response::Event<MailboxRequest, MailboxResponse>) {
        let (request_id, result) = match e {
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => (request_id, Ok(response)),
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => (request_id, Err(outbound_error(error))),
            _ => return,
        };
        match (self.mailbox.remove(&request_id), result) {
            (Some(BoxOp::Put(done)), Ok(MailboxResponse::Stored { .. })) => {
                let _ = done.send(Ok(()));
            }
            (Some(BoxOp::Put(done)), Ok(MailboxResponse::Refused { reason })) => {
                let _ = done.send(Err(DeliverError::Refused(reason)));
            }
            (Some(BoxOp::Put(done)), Ok(other)) => {
                let _ = done.send(Err(DeliverError::Refused(format!(
                    "unexpected answer from the relay: {other:?}"
                ))));
            }
            (Some(BoxOp::Put(done)), Err(e)) => {
                let _ = done.send(Err(e));
            }
            (Some(BoxOp::Fetch), Ok(MailboxResponse::Items { items })) => {
                let more = items.len() >= 64;
                if items.is_empty() {
                    return;
                }
                let ids = self.handler.on_mailbox(items);
                if !ids.is_empty() {
                    let peer = self.home.peer;
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .mailbox
                        .send_request(&peer, MailboxRequest::Ack { ids });
                    self.mailbox.insert(id, BoxOp::Ack);
                    if more {
                        self.request_fetch();
                    }
                }
            }
            (Some(BoxOp::Fetch), other) => debug!("mailbox fetch failed: {other:?}"),
            (Some(BoxOp::Ack), Ok(_)) => {}
            (Some(BoxOp::Ack), Err(e)) => debug!("mailbox ack failed: {e}"),
            (None, _) => {}
        }
    }
}

/// An error and what caused it, innermost last ("Failed to get
/// Reservation: … : resource limit exceeded").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string().trim_end_matches('.').to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.ends_with(part.trim_end_matches('.')) {
            text = format!("{text}: {}", part.trim_end_matches('.'));
        }
        cause = c.source();
    }
    text
}

/// Why a dial to a contact or relay found no way through.
const NO_CONNECTION: &str = "no connection (offline, or no reservation at its relay)";

fn message_error(e: msgstream::Failure) -> DeliverError {
    match e {
        msgstream::Failure::Timeout => DeliverError::Timeout,
        msgstream::Failure::DialFailure => DeliverError::Unreachable(NO_CONNECTION.into()),
        other => DeliverError::Unreachable(other.to_string()),
    }
}

fn outbound_error(e: request_response::OutboundFailure) -> DeliverError {
    match e {
        request_response::OutboundFailure::Timeout => DeliverError::Timeout,
        request_response::OutboundFailure::DialFailure => {
            DeliverError::Unreachable(NO_CONNECTION.into())
        }
        other => DeliverError::Unreachable(other.to_string()),
    }
}
