//! Messages between two users on one long-lived stream per connection.
//!
//! request-response opened a new yamux stream for every message: a stream
//! header, the protocol proposal and its confirmation, the request, the
//! answer and two closing frames, each its own write through every layer
//! (and, through a relay, its own forward). Here each side opens one
//! stream on [`PROTOCOL`] the first time it has something to send on a
//! connection and keeps it: a message is one frame out, its receipt one
//! frame back, and several can be in flight at once.
//!
//! ```text
//! frame = length (u32, big-endian, of what follows) | seq (u64, big-endian) | CBOR body
//! ```
//!
//! On the stream a side opened it sends [`Envelope`]s; on the streams the
//! other side opened it answers each with the [`Reply`] of the same `seq`.
//! A frame longer than the protocol allows, or a body that does not
//! decode, ends that stream (never the connection): messages waiting on it
//! fail and are sent again by the outbox on a fresh stream, where the
//! contact's duplicate check drops any that had in fact arrived.
//!
//! The API mirrors request-response's: [`Behaviour::send_request`] to a
//! peer (dialling it if there is no connection), [`Event`]s for requests,
//! replies and failures, [`Behaviour::send_response`] to answer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::Endpoint;
use libp2p::swarm::behaviour::{ConnectionClosed, DialFailure, FromSwarm, PeerAddresses};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::handler::{
    ConnectionEvent, ConnectionHandler, ConnectionHandlerEvent, DialUpgradeError,
    FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, DialError, NetworkBehaviour, NotifyHandler, Stream,
    StreamUpgradeError, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::time::{Instant, Sleep};

use super::proto::{Envelope, Reply, MAX_TEXT};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/burrow/msg/2");

/// Longest frame body carrying an [`Envelope`]: the longest text and room
/// for its id, time and encoding (a `Receipts` list of at most
/// `MAX_RECEIPTS` ids stays under it too).
pub const MAX_ENVELOPE: usize = MAX_TEXT + 1024;
/// Longest frame body carrying a [`Reply`] (a refusal's reason).
pub const MAX_REPLY: usize = 4 * 1024;
/// Messages sent on one stream and not answered yet, beyond which more
/// wait in the handler (a contact's node answers at once; this bounds
/// what a stalled one costs).
const MAX_IN_FLIGHT: usize = 256;
/// Streams a contact may have open toward this node on one connection (one
/// is all a well-behaved node uses; a new one replaces a broken one).
const MAX_INBOUND: usize = 4;
/// Bytes read from a stream per call.
const READ_CHUNK: usize = 4 * 1024;
/// Replies waiting to be written to a contact's stream beyond which no
/// more of its envelopes are read.
const MAX_UNREAD_REPLIES: usize = 64 * 1024;

/// Identifies a message sent with [`Behaviour::send_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where the answer to an inbound [`Envelope`] goes.
#[derive(Debug)]
pub struct ResponseChannel {
    peer: PeerId,
    connection: ConnectionId,
    stream: u64,
    seq: u64,
}

/// Why a sent message got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("could not connect to the contact")]
    DialFailure,
    #[error("no receipt in time")]
    Timeout,
    #[error("the connection closed before the receipt came")]
    ConnectionClosed,
    #[error("the contact's node does not speak {PROTOCOL}")]
    Unsupported,
    #[error("the message stream failed: {0}")]
    Stream(String),
}

#[derive(Debug)]
pub enum Event {
    /// A contact's envelope; answer it with [`Behaviour::send_response`].
    Request {
        peer: PeerId,
        connection_id: ConnectionId,
        envelope: Envelope,
        channel: ResponseChannel,
    },
    /// The reply to a message sent with [`Behaviour::send_request`].
    Response {
        peer: PeerId,
        connection_id: ConnectionId,
        request_id: RequestId,
        reply: Reply,
    },
    OutboundFailure {
        peer: PeerId,
        request_id: RequestId,
        error: Failure,
    },
}

// ------------------------------------------------------------- frames

/// Appends one frame to `out`: the length, `seq`, and `body` in CBOR. A
/// body over `max` bytes (more than the other side reads) is refused and
/// `out` left as it was.
fn encode<T: serde::Serialize>(
    out: &mut Vec<u8>,
    seq: u64,
    body: &T,
    max: usize,
) -> io::Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_be_bytes());
    if let Err(e) = ciborium::into_writer(body, &mut *out) {
        out.truncate(start);
        return Err(io::Error::new(io::ErrorKind::InvalidInput, e.to_string()));
    }
    let size = out.len() - start - 12;
    if size > max {
        out.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{size} bytes encoded, more than the {max} a contact reads"),
        ));
    }
    let len = u32::try_from(size + 8).expect("under max");
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Takes the first whole frame off the front of `buf`: `Ok(None)` if it
/// has not all arrived yet; an error if it is longer than `max` bytes of
/// body or its body does not decode.
fn decode<T: serde::de::DeserializeOwned>(
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Option<(u64, T)>> {
    let Some(len) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
    if len < 8 {
        return Err(invalid("a frame without its sequence number"));
    }
    if len - 8 > max {
        return Err(invalid(format!(
            "a frame of {} bytes (at most {max} allowed)",
            len - 8
        )));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let seq = u64::from_be_bytes(buf[4..12].try_into().expect("8 bytes"));
    let body = ciborium::from_reader(&buf[12..4 + len])
        .map_err(|e| invalid(format!("a frame that does not decode: {e}")));
    buf.drain(..4 + len);
    Ok(Some((seq, body?)))
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// A negotiated stream with what is waiting to be written to it and what
/// has been read from it but is not a whole frame yet.
struct Framed {
    io: Stream,
    read: Vec<u8>,
    write: Vec<u8>,
    written: usize,
    flushed: bool,
}

impl Framed {
    fn new(mut io: Stream) -> Self {
        // An idle message stream does not keep the connection open: it
        // closes after the swarm's idle timeout, as without one.
        io.ignore_for_keep_alive();
        Self {
            io,
            read: Vec::new(),
            write: Vec::new(),
            written: 0,
            flushed: true,
        }
    }

    /// Writes what is queued, then flushes: all frames queued since the
    /// last call leave in one write where the layers below allow.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.write.len() {
            let n = match Pin::new(&mut self.io).poll_write(cx, &self.write[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            self.written += n;
            self.flushed = false;
        }
        self.write.clear();
        self.written = 0;
        if !self.flushed {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.flushed = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // Memory of an idle stream: what a burst needed is given back.
        if self.write.capacity() > READ_CHUNK {
            self.write = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// The next whole frame; `Ok(None)` at the end of the stream.
    fn poll_frame<T: serde::de::DeserializeOwned>(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<(u64, T)>>> {
        loop {
            if let Some(frame) = decode(&mut self.read, max)? {
                if self.read.is_empty() && self.read.capacity() > READ_CHUNK {
                    self.read = Vec::new();
                }
                return Poll::Ready(Ok(Some(frame)));
            }
            let mut chunk = [0u8; READ_CHUNK];
            match Pin::new(&mut self.io).poll_read(cx, &mut chunk) {
                Poll::Ready(Ok(0)) if self.read.is_empty() => return Poll::Ready(Ok(None)),
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Poll::Ready(Ok(n)) => self.read.extend_from_slice(&chunk[..n]),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

// ------------------------------------------------------------ handler

#[derive(Debug)]
pub enum ToHandler {
    Send { id: RequestId, envelope: Envelope },
    Reply { stream: u64, seq: u64, reply: Reply },
}

#[derive(Debug)]
pub enum FromHandler {
    Request {
        stream: u64,
        seq: u64,
        envelope: Envelope,
    },
    Response {
        id: RequestId,
        reply: Reply,
    },
    Failed {
        id: RequestId,
        error: Failure,
    },
}

/// The stream this side opened: envelopes out, replies in.
struct Outbound {
    framed: Framed,
    next_seq: u64,
    /// Sent and not answered: seq → (id, deadline).
    in_flight: HashMap<u64, (RequestId, Instant)>,
}

pub struct Handler {
    timeout: Duration,
    queued: VecDeque<(RequestId, Envelope)>,
    opening: bool,
    outbound: Option<Outbound>,
    inbound: Vec<(u64, Framed)>,
    next_stream: u64,
    /// Envelopes read whose reply has not been queued yet (keeps the
    /// connection open meanwhile).
    unanswered: usize,
    events: VecDeque<FromHandler>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handler")
            .field("queued", &self.queued.len())
            .field("outbound", &self.outbound.is_some())
            .field("inbound", &self.inbound.len())
            .finish_non_exhaustive()
    }
}

impl Handler {
    fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            queued: VecDeque::new(),
            opening: false,
            outbound: None,
            inbound: Vec::new(),
            next_stream: 0,
            unanswered: 0,
            events: VecDeque::new(),
            timer: None,
        }
    }

    /// Ends the outbound stream: everything sent on it fails with `error`
    /// (the next message opens a new one).
    fn drop_outbound(&mut self, error: &Failure) {
        if let Some(out) = self.outbound.take() {
            let mut lost: Vec<_> = out.in_flight.into_values().map(|(id, _)| id).collect();
            lost.sort();
            for id in lost {
                self.events.push_back(FromHandler::Failed {
                    id,
                    error: error.clone(),
                });
            }
        }
    }

    fn fail_queued(&mut self, error: &Failure) {
        for (id, _) in self.queued.drain(..) {
            self.events.push_back(FromHandler::Failed {
                id,
                error: error.clone(),
            });
        }
    }

    /// Moves queued envelopes onto the outbound stream, sends, reads
    /// replies.
    fn poll_outbound(&mut self, cx: &mut Context<'_>) {
        let Some(out) = self.outbound.as_mut() else {
            return;
        };
        while out.in_flight.len() < MAX_IN_FLIGHT {
            let Some((id, envelope)) = self.queued.pop_front() else {
                break;
            };
            let seq = out.next_seq;
            out.next_seq += 1;
            if let Err(e) = encode(&mut out.framed.write, seq, &envelope, MAX_ENVELOPE) {
                self.events.push_back(FromHandler::Failed {
                    id,
                    error: Failure::Stream(e.to_string()),
                });
                continue;
            }
            out.in_flight
                .insert(seq, (id, Instant::now() + self.timeout));
        }
        let mut broken = None;
        if let Poll::Ready(Err(e)) = out.framed.poll_send(cx) {
            broken = Some(e);
        }
        while broken.is_none() {
            match out.framed.poll_frame::<Reply>(cx, MAX_REPLY) {
                Poll::Ready(Ok(Some((seq, reply)))) => match out.in_flight.remove(&seq) {
                    Some((id, _)) => self.events.push_back(FromHandler::Response { id, reply }),
                    None => broken = Some(invalid("a reply to no message")),
                },
                Poll::Ready(Ok(None)) => broken = Some(io::ErrorKind::UnexpectedEof.into()),
                Poll::Ready(Err(e)) => broken = Some(e),
                Poll::Pending => break,
            }
        }
        if let Some(e) = broken {
            tracing::debug!("message stream ended: {e}");
            self.drop_outbound(&Failure::Stream(e.to_string()));
        }
    }

    /// Reads envelopes from the contact's streams and writes the replies.
    fn poll_inbound(&mut self, cx: &mut Context<'_>) {
        let mut i = 0;
        while i < self.inbound.len() {
            let (key, framed) = &mut self.inbound[i];
            let mut ended = matches!(framed.poll_send(cx), Poll::Ready(Err(_)));
            // A contact that sends without reading the replies is read no
            // further until it does: what waits for it stays bounded.
            while !ended && framed.write.len() < MAX_UNREAD_REPLIES {
                match framed.poll_frame::<Envelope>(cx, MAX_ENVELOPE) {
                    Poll::Ready(Ok(Some((seq, envelope)))) => {
                        self.unanswered += 1;
                        self.events.push_back(FromHandler::Request {
                            stream: *key,
                            seq,
                            envelope,
                        });
                    }
                    Poll::Ready(Ok(None)) => ended = true,
                    Poll::Ready(Err(e)) => {
                        tracing::debug!("contact's message stream ended: {e}");
                        ended = true;
                    }
                    Poll::Pending => break,
                }
            }
            if ended {
                self.inbound.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Fails what has waited past its deadline; keeps the timer set for
    /// the next deadline.
    fn poll_deadlines(&mut self, cx: &mut Context<'_>) {
        loop {
            let next = self
                .outbound
                .as_ref()
                .and_then(|o| o.in_flight.values().map(|(_, at)| *at).min());
            let Some(next) = next else {
                self.timer = None;
                return;
            };
            match &mut self.timer {
                Some(t) if t.deadline() == next => {}
                Some(t) => t.as_mut().reset(next),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(next))),
            }
            let timer = self.timer.as_mut().expect("set above");
            if timer.as_mut().poll(cx).is_pending() {
                return;
            }
            // A stream that swallowed a message is not trusted with the
            // next one.
            self.drop_outbound(&Failure::Timeout);
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = ToHandler;
    type ToBehaviour = FromHandler;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
    }

    fn connection_keep_alive(&self) -> bool {
        !self.queued.is_empty()
            || self.unanswered > 0
            || self
                .outbound
                .as_ref()
                .is_some_and(|o| !o.in_flight.is_empty())
            || self.inbound.iter().any(|(_, f)| !f.write.is_empty())
    }

    fn on_behaviour_event(&mut self, event: ToHandler) {
        match event {
            ToHandler::Send { id, envelope } => self.queued.push_back((id, envelope)),
            ToHandler::Reply { stream, seq, reply } => {
                self.unanswered = self.unanswered.saturating_sub(1);
                if let Some((_, framed)) = self.inbound.iter_mut().find(|(k, _)| *k == stream) {
                    if let Err(e) = encode(&mut framed.write, seq, &reply, MAX_REPLY) {
                        tracing::debug!("reply not sent: {e}");
                    }
                }
            }
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                ..
            }) => {
                self.opening = false;
                self.outbound = Some(Outbound {
                    framed: Framed::new(stream),
                    next_seq: 0,
                    in_flight: HashMap::new(),
                });
            }
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => {
                if self.inbound.len() >= MAX_INBOUND {
                    // The oldest goes: a node opens a new stream only when
                    // it gave up on its last one.
                    self.inbound.remove(0);
                }
                let key = self.next_stream;
                self.next_stream += 1;
                self.inbound.push((key, Framed::new(stream)));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => {
                self.opening = false;
                let error = match error {
                    StreamUpgradeError::NegotiationFailed => Failure::Unsupported,
                    StreamUpgradeError::Timeout => Failure::Timeout,
                    other => Failure::Stream(other.to_string()),
                };
                self.fail_queued(&error);
            }
            _ => {}
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        self.poll_outbound(cx);
        self.poll_inbound(cx);
        self.poll_deadlines(cx);
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event));
        }
        if !self.queued.is_empty() && self.outbound.is_none() && !self.opening {
            self.opening = true;
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
                    .with_timeout(self.timeout),
            });
        }
        Poll::Pending
    }
}

// ----------------------------------------------------------- behaviour

struct Connection {
    id: ConnectionId,
    remote_address: Option<Multiaddr>,
    /// Sent on this connection, not answered yet.
    pending: HashSet<RequestId>,
}

pub struct Behaviour {
    timeout: Duration,
    /// The timeout on connections that do not go through a relay.
    direct_timeout: Duration,
    next_id: u64,
    connected: HashMap<PeerId, Vec<Connection>>,
    /// Messages for peers being dialled.
    waiting: HashMap<PeerId, Vec<(RequestId, Envelope)>>,
    addresses: PeerAddresses,
    events: VecDeque<ToSwarm<Event, ToHandler>>,
}

impl fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Behaviour")
            .field("connected", &self.connected.len())
            .field("waiting", &self.waiting.len())
            .finish_non_exhaustive()
    }
}

impl Behaviour {
    /// `timeout`: how long a message waits for its reply (and a new stream
    /// for its negotiation).
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            direct_timeout: timeout,
            next_id: 0,
            connected: HashMap::new(),
            waiting: HashMap::new(),
            addresses: PeerAddresses::default(),
            events: VecDeque::new(),
        }
    }

    /// A shorter timeout on connections straight to the contact (their own
    /// front, or a punched hole): a contact gone without closing the
    /// connection (a killed process on QUIC, a laptop put to sleep) is given
    /// up on sooner, and the message tries the relay. The reply on such a
    /// path takes one round trip plus the contact's write to disk.
    pub fn with_direct_timeout(mut self, timeout: Duration) -> Self {
        self.direct_timeout = timeout;
        self
    }

    /// Sends `envelope` to `peer` on a connection already open (one of
    /// several in turn), or on the first one a dial opens.
    pub fn send_request(&mut self, peer: &PeerId, envelope: Envelope) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        match self.connected.get_mut(peer).filter(|c| !c.is_empty()) {
            Some(connections) => {
                let turn = (id.0 as usize) % connections.len();
                let conn = &mut connections[turn];
                conn.pending.insert(id);
                self.events.push_back(ToSwarm::NotifyHandler {
                    peer_id: *peer,
                    handler: NotifyHandler::One(conn.id),
                    event: ToHandler::Send { id, envelope },
                });
            }
            None => {
                self.waiting.entry(*peer).or_default().push((id, envelope));
                // A contact's addresses are circuits through its relay, one
                // per carrier: tried one at a time, since each would open a
                // circuit of its own (the relay connection under them
                // races its carriers already).
                self.events.push_back(ToSwarm::Dial {
                    opts: DialOpts::peer_id(*peer)
                        .override_dial_concurrency_factor(std::num::NonZeroU8::MIN)
                        .build(),
                });
            }
        }
        id
    }

    /// Answers a contact's envelope. If the connection it came on has
    /// closed, the answer is lost (the contact sends again).
    pub fn send_response(&mut self, channel: ResponseChannel, reply: Reply) {
        self.events.push_back(ToSwarm::NotifyHandler {
            peer_id: channel.peer,
            handler: NotifyHandler::One(channel.connection),
            event: ToHandler::Reply {
                stream: channel.stream,
                seq: channel.seq,
                reply,
            },
        });
    }

    fn new_handler(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        addr: Option<Multiaddr>,
        relayed: bool,
    ) -> Handler {
        let timeout = if relayed {
            self.timeout
        } else {
            self.direct_timeout
        };
        let mut handler = Handler::new(timeout);
        let mut conn = Connection {
            id,
            remote_address: addr,
            pending: HashSet::new(),
        };
        for (request, envelope) in self.waiting.remove(&peer).unwrap_or_default() {
            conn.pending.insert(request);
            handler.on_behaviour_event(ToHandler::Send {
                id: request,
                envelope,
            });
        }
        self.connected.entry(peer).or_default().push(conn);
        handler
    }

    fn on_closed(&mut self, peer: PeerId, connection: ConnectionId) {
        let Some(connections) = self.connected.get_mut(&peer) else {
            return;
        };
        let Some(at) = connections.iter().position(|c| c.id == connection) else {
            return;
        };
        let closed = connections.remove(at);
        if connections.is_empty() {
            self.connected.remove(&peer);
        }
        let mut lost: Vec<_> = closed.pending.into_iter().collect();
        lost.sort();
        for request_id in lost {
            self.events
                .push_back(ToSwarm::GenerateEvent(Event::OutboundFailure {
                    peer,
                    request_id,
                    error: Failure::ConnectionClosed,
                }));
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let relayed = through_relay(local_addr) || through_relay(remote_addr);
        Ok(self.new_handler(peer, connection_id, None, relayed))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        peer: Option<PeerId>,
        _addresses: &[Multiaddr],
        _effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        let Some(peer) = peer else {
            return Ok(vec![]);
        };
        let mut addresses: Vec<Multiaddr> = self
            .connected
            .get(&peer)
            .into_iter()
            .flatten()
            .filter_map(|c| c.remote_address.clone())
            .collect();
        addresses.extend(self.addresses.get(&peer));
        Ok(addresses)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.new_handler(peer, connection_id, Some(addr.clone()), through_relay(addr)))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.addresses.on_swarm_event(&event);
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                ..
            }) => self.on_closed(peer_id, connection_id),
            FromSwarm::DialFailure(DialFailure {
                peer_id: Some(peer),
                error,
                ..
            }) => {
                // Another dial to the peer is under way: its outcome
                // decides.
                if matches!(error, DialError::DialPeerConditionFalse(_)) {
                    return;
                }
                for (request_id, _) in self.waiting.remove(&peer).unwrap_or_default() {
                    self.events
                        .push_back(ToSwarm::GenerateEvent(Event::OutboundFailure {
                            peer,
                            request_id,
                            error: Failure::DialFailure,
                        }));
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        let settled = |this: &mut Self, id: &RequestId| {
            this.connected
                .get_mut(&peer)
                .and_then(|c| c.iter_mut().find(|c| c.id == connection_id))
                .is_some_and(|c| c.pending.remove(id))
        };
        let event = match event {
            FromHandler::Request {
                stream,
                seq,
                envelope,
            } => Event::Request {
                peer,
                connection_id,
                envelope,
                channel: ResponseChannel {
                    peer,
                    connection: connection_id,
                    stream,
                    seq,
                },
            },
            FromHandler::Response { id, reply } => {
                if !settled(self, &id) {
                    return;
                }
                Event::Response {
                    peer,
                    connection_id,
                    request_id: id,
                    reply,
                }
            }
            FromHandler::Failed { id, error } => {
                if !settled(self, &id) {
                    return;
                }
                Event::OutboundFailure {
                    peer,
                    request_id: id,
                    error,
                }
            }
        };
        self.events.push_back(ToSwarm::GenerateEvent(event));
    }

    fn poll(&mut self, _cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        match self.events.pop_front() {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }
}

/// Whether a connection's address goes through a relay's circuit.
fn through_relay(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use libp2p::core::transport::MemoryTransport;
    use libp2p::core::upgrade::Version;
    use libp2p::identity::Keypair;
    use libp2p::swarm::{dummy, SwarmEvent};
    use libp2p::{yamux, Swarm, Transport};

    /// A swarm on an in-memory transport with the node's Noise and yamux,
    /// listening on a memory address of its own.
    async fn swarm<B: NetworkBehaviour>(behaviour: B) -> (PeerId, Multiaddr, Swarm<B>) {
        let keypair = Keypair::generate_ed25519();
        let peer = keypair.public().to_peer_id();
        let transport = MemoryTransport::default()
            .upgrade(Version::V1Lazy)
            .authenticate(crate::p2p::secure::Config::new(&keypair))
            .multiplex(yamux::Config::default())
            .boxed();
        let config = libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(30));
        let mut swarm = Swarm::new(transport, behaviour, peer, config);
        swarm
            .listen_on("/memory/0".parse().expect("addr"))
            .expect("listen");
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        (peer, addr, swarm)
    }

    /// Runs `b` in the background: it answers every envelope with a
    /// refusal that names the envelope's text (so each reply can be told
    /// apart), or not at all when `silent`.
    fn answer(mut b: Swarm<Behaviour>, silent: bool) -> tokio::sync::mpsc::UnboundedReceiver<()> {
        let (streams_seen, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut unanswered = Vec::new();
            loop {
                if let SwarmEvent::Behaviour(Event::Request {
                    envelope: Envelope::Message { text, .. },
                    channel,
                    ..
                }) = b.select_next_some().await
                {
                    let _ = streams_seen.send(());
                    if silent {
                        unanswered.push(channel);
                    } else {
                        b.behaviour_mut()
                            .send_response(channel, Reply::Refused { reason: text });
                    }
                }
            }
        });
        rx
    }

    /// The next event of `a`'s message behaviour; other swarm events are
    /// skipped.
    async fn next_event(a: &mut Swarm<Behaviour>) -> Event {
        loop {
            if let SwarmEvent::Behaviour(e) = a.select_next_some().await {
                return e;
            }
        }
    }

    /// The next event of `a`, which must be a failed message.
    async fn next_failure(a: &mut Swarm<Behaviour>) -> (RequestId, Failure) {
        match next_event(a).await {
            Event::OutboundFailure {
                request_id, error, ..
            } => (request_id, error),
            other => panic!("unexpected: {other:?}"),
        }
    }

    /// How many messages the contact has seen since last asked.
    fn arrived(seen: &mut tokio::sync::mpsc::UnboundedReceiver<()>) -> usize {
        std::iter::from_fn(|| seen.try_recv().ok()).count()
    }

    #[tokio::test]
    async fn many_messages_in_flight_each_get_their_own_reply() {
        let (b_id, b_addr, b) = swarm(Behaviour::new(Duration::from_secs(10))).await;
        let mut seen = answer(b, false);
        let (_, _, mut a) = swarm(Behaviour::new(Duration::from_secs(10))).await;
        a.add_peer_address(b_id, b_addr);
        let mut sent = HashMap::new();
        for i in 0..50 {
            let text = format!("message {i}");
            let id = a.behaviour_mut().send_request(&b_id, message(&text));
            sent.insert(id, text);
        }
        let mut connections = HashSet::new();
        while !sent.is_empty() {
            match next_event(&mut a).await {
                Event::Response {
                    request_id,
                    reply: Reply::Refused { reason },
                    connection_id,
                    ..
                } => {
                    assert_eq!(sent.remove(&request_id), Some(reason), "reply matches");
                    connections.insert(connection_id);
                }
                e => panic!("unexpected: {e:?}"),
            }
        }
        assert_eq!(connections.len(), 1, "all on the one connection");
        assert_eq!(arrived(&mut seen), 50, "each message arrived once");
    }

    #[tokio::test]
    async fn a_node_without_the_protocol_gets_a_clear_failure() {
        let (b_id, b_addr, mut b) = swarm(dummy::Behaviour).await;
        tokio::spawn(async move {
            loop {
                b.select_next_some().await;
            }
        });
        let (_, _, mut a) = swarm(Behaviour::new(Duration::from_secs(10))).await;
        a.add_peer_address(b_id, b_addr);
        let id = a.behaviour_mut().send_request(&b_id, message("hello"));
        let (request_id, error) = next_failure(&mut a).await;
        assert_eq!(request_id, id);
        assert_eq!(error, Failure::Unsupported);
        assert!(error.to_string().contains("/burrow/msg/2"), "{error}");
    }

    #[tokio::test]
    async fn a_contact_that_never_answers_times_out_and_the_next_message_gets_through() {
        let (b_id, b_addr, b) = swarm(Behaviour::new(Duration::from_secs(10))).await;
        let mut seen = answer(b, true);
        let (_, _, mut a) = swarm(Behaviour::new(Duration::from_millis(300))).await;
        a.add_peer_address(b_id, b_addr);
        let first = a.behaviour_mut().send_request(&b_id, message("one"));
        let second = a.behaviour_mut().send_request(&b_id, message("two"));
        let mut timed_out = Vec::new();
        while timed_out.len() < 2 {
            let (request_id, error) = next_failure(&mut a).await;
            assert_eq!(error, Failure::Timeout);
            timed_out.push(request_id);
        }
        timed_out.sort();
        assert_eq!(timed_out, vec![first, second]);
        assert_eq!(seen.recv().await, Some(()), "they did arrive");
        // A new stream replaces the one given up on.
        let third = a.behaviour_mut().send_request(&b_id, message("three"));
        assert_eq!(next_failure(&mut a).await, (third, Failure::Timeout));
        assert_eq!(
            1 + arrived(&mut seen),
            3,
            "the third went out on a fresh stream"
        );
    }

    #[tokio::test]
    async fn a_direct_connection_gives_up_on_a_silent_contact_sooner() {
        let (b_id, b_addr, b) = swarm(Behaviour::new(Duration::from_secs(10))).await;
        let mut seen = answer(b, true);
        let behaviour =
            Behaviour::new(Duration::from_secs(60)).with_direct_timeout(Duration::from_millis(300));
        let (_, _, mut a) = swarm(behaviour).await;
        a.add_peer_address(b_id, b_addr);
        let id = a.behaviour_mut().send_request(&b_id, message("hello"));
        let failed = tokio::time::timeout(Duration::from_secs(10), next_failure(&mut a))
            .await
            .expect("the direct timeout, not the relayed one, applies");
        assert_eq!(failed, (id, Failure::Timeout));
        assert_eq!(seen.recv().await, Some(()), "it did arrive");
    }

    #[test]
    fn circuit_addresses_are_told_from_direct_ones() {
        let relay = PeerId::random();
        let direct: Multiaddr = "/ip4/203.0.113.7/udp/443/quic-v1".parse().expect("addr");
        let circuit: Multiaddr =
            format!("/ip4/203.0.113.7/tcp/443/tls/http/p2p/{relay}/p2p-circuit")
                .parse()
                .expect("addr");
        assert!(!through_relay(&direct));
        assert!(through_relay(&circuit));
    }

    /// Writes raw bytes as a "request" on the message protocol and reads
    /// whatever comes back until the stream ends.
    #[derive(Debug, Clone, Default)]
    struct RawCodec;

    impl libp2p::request_response::Codec for RawCodec {
        type Protocol = StreamProtocol;
        type Request = Vec<u8>;
        type Response = Vec<u8>;

        async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<Vec<u8>>
        where
            T: futures::AsyncRead + Unpin + Send,
        {
            Err(io::ErrorKind::Unsupported.into())
        }
        async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
        where
            T: futures::AsyncRead + Unpin + Send,
        {
            let mut all = Vec::new();
            futures::AsyncReadExt::read_to_end(io, &mut all).await?;
            Ok(all)
        }
        async fn write_request<T>(
            &mut self,
            _: &StreamProtocol,
            io: &mut T,
            bytes: Vec<u8>,
        ) -> io::Result<()>
        where
            T: futures::AsyncWrite + Unpin + Send,
        {
            futures::AsyncWriteExt::write_all(io, &bytes).await
        }
        async fn write_response<T>(
            &mut self,
            _: &StreamProtocol,
            _: &mut T,
            _: Vec<u8>,
        ) -> io::Result<()>
        where
            T: futures::AsyncWrite + Unpin + Send,
        {
            Err(io::ErrorKind::Unsupported.into())
        }
    }

    #[derive(libp2p::swarm::NetworkBehaviour)]
    #[behaviour(prelude = "libp2p::swarm::derive_prelude")]
    struct Prober {
        raw: libp2p::request_response::Behaviour<RawCodec>,
        messages: Behaviour,
    }

    #[tokio::test]
    async fn malformed_frames_end_their_stream_but_not_the_connection() {
        let (b_id, b_addr, mut b) = swarm(Behaviour::new(Duration::from_secs(10))).await;
        let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match b.select_next_some().await {
                    SwarmEvent::Behaviour(Event::Request { channel, .. }) => {
                        b.behaviour_mut().send_response(channel, Reply::Received)
                    }
                    SwarmEvent::ConnectionClosed { .. } => {
                        let _ = closed_tx.send(());
                    }
                    _ => {}
                }
            }
        });
        let raw = libp2p::request_response::Behaviour::with_codec(
            RawCodec,
            [(
                PROTOCOL,
                libp2p::request_response::ProtocolSupport::Outbound,
            )],
            libp2p::request_response::Config::default()
                .with_request_timeout(Duration::from_secs(5)),
        );
        let (_, _, mut a) = swarm(Prober {
            raw,
            messages: Behaviour::new(Duration::from_secs(10)),
        })
        .await;
        a.add_peer_address(b_id, b_addr);
        let mut garbage = vec![0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 1];
        garbage.extend_from_slice(&[0xff; 12]);
        let probes = [
            // A body that is not CBOR.
            garbage,
            // A length of 1 GiB: refused on sight, nothing allocated.
            vec![0x40, 0, 0, 0, 0, 0, 0, 0],
            // A frame too short to hold its sequence number.
            vec![0, 0, 0, 2, 0, 0],
        ];
        for probe in probes {
            a.behaviour_mut().raw.send_request(&b_id, probe);
            loop {
                match a.select_next_some().await {
                    SwarmEvent::Behaviour(ProberEvent::Raw(
                        libp2p::request_response::Event::Message { message, .. },
                    )) => {
                        let libp2p::request_response::Message::Response { response, .. } = message
                        else {
                            panic!("a request to the prober");
                        };
                        assert!(response.is_empty(), "no answer to garbage: {response:?}");
                        break;
                    }
                    SwarmEvent::Behaviour(ProberEvent::Raw(
                        libp2p::request_response::Event::OutboundFailure { error, .. },
                    )) => {
                        // Ended by the contact (reset or closed), not left
                        // hanging until the prober gives up.
                        assert!(
                            !matches!(error, libp2p::request_response::OutboundFailure::Timeout),
                            "the contact did not end the stream"
                        );
                        break;
                    }
                    SwarmEvent::ConnectionClosed { .. } => panic!("the connection closed"),
                    _ => {}
                }
            }
        }
        // The connection that carried the garbage still carries messages.
        let id = a
            .behaviour_mut()
            .messages
            .send_request(&b_id, message("still there?"));
        loop {
            match a.select_next_some().await {
                SwarmEvent::Behaviour(ProberEvent::Messages(Event::Response {
                    request_id,
                    reply,
                    ..
                })) => {
                    assert_eq!((request_id, reply), (id, Reply::Received));
                    break;
                }
                SwarmEvent::Behaviour(ProberEvent::Messages(e)) => panic!("unexpected: {e:?}"),
                SwarmEvent::ConnectionClosed { .. } => panic!("the connection closed"),
                _ => {}
            }
        }
        assert!(
            closed.try_recv().is_err(),
            "the contact kept the connection"
        );
    }

    #[tokio::test]
    async fn a_contact_that_cannot_be_reached_is_a_dial_failure() {
        let (_, _, mut a) = swarm(Behaviour::new(Duration::from_secs(10))).await;
        let nobody = Keypair::generate_ed25519().public().to_peer_id();
        a.add_peer_address(nobody, "/memory/424242".parse().expect("addr"));
        let id = a.behaviour_mut().send_request(&nobody, message("hello"));
        assert_eq!(next_failure(&mut a).await, (id, Failure::DialFailure));
    }

    fn message(text: &str) -> Envelope {
        Envelope::Message {
            id: [7; 16],
            sent_at_ms: 1_700_000_000_000,
            text: text.into(),
        }
    }

    #[test]
    fn frames_arrive_whole_however_the_bytes_are_cut() {
        let mut wire = Vec::new();
        encode(&mut wire, 1, &message("first"), MAX_ENVELOPE).expect("encode");
        encode(&mut wire, 2, &message("second"), MAX_ENVELOPE).expect("encode");
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for byte in wire {
            buf.push(byte);
            while let Some(frame) = decode::<Envelope>(&mut buf, MAX_ENVELOPE).expect("valid") {
                got.push(frame);
            }
        }
        assert_eq!(got, vec![(1, message("first")), (2, message("second"))]);
        assert!(buf.is_empty());
    }

    #[test]
    fn an_oversized_frame_is_refused_before_it_is_read() {
        let mut buf = ((MAX_REPLY + 9) as u32).to_be_bytes().to_vec();
        let e = decode::<Reply>(&mut buf, MAX_REPLY).expect_err("too long");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("at most 4096"), "{e}");
    }

    #[test]
    fn a_frame_without_a_sequence_number_or_with_garbage_is_refused() {
        let mut short = vec![0, 0, 0, 3, 1, 2, 3];
        assert!(decode::<Reply>(&mut short, MAX_REPLY).is_err());
        let mut garbage = vec![0, 0, 0, 11, 0, 0, 0, 0, 0, 0, 0, 5, 0xff, 0xff, 0xff];
        let e = decode::<Reply>(&mut garbage, MAX_REPLY).expect_err("not CBOR");
        assert!(e.to_string().contains("does not decode"), "{e}");
    }

    #[test]
    fn the_longest_text_fits_and_anything_longer_is_refused_before_it_is_sent() {
        let mut wire = vec![1, 2, 3];
        encode(&mut wire, 0, &message(&"x".repeat(MAX_TEXT)), MAX_ENVELOPE).expect("fits");
        let e = encode(
            &mut wire,
            1,
            &message(&"x".repeat(MAX_ENVELOPE)),
            MAX_ENVELOPE,
        )
        .expect_err("too long");
        assert!(e.to_string().contains("more than the"), "{e}");
        let mut frames = wire.split_off(3);
        assert_eq!(wire, vec![1, 2, 3], "what was there is kept");
        let (seq, _) = decode::<Envelope>(&mut frames, MAX_ENVELOPE)
            .expect("valid")
            .expect("whole");
        assert_eq!(seq, 0);
        assert!(frames.is_empty(), "the refused frame left nothing behind");
    }

    #[test]
    fn receipts_for_a_full_batch_fit_one_envelope() {
        // Ids of 0xff bytes take the most room in CBOR.
        let receipts = Envelope::Receipts {
            ids: vec![[0xff; 16]; crate::p2p::proto::MAX_RECEIPTS],
        };
        let mut wire = Vec::new();
        encode(&mut wire, 0, &receipts, MAX_ENVELOPE).expect("fits");
    }
}
