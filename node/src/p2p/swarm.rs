//! The node's swarm: the relay client (to be reachable through the home
//! relay and to reach contacts through theirs), identify and ping, the
//! messaging protocol, the mailbox client and the tracker client — over the carrier transport
//! and, for relayed circuits, the relay client transport.

use std::io;
use std::time::Duration;

use burrow_relay::proto::{MailboxRequest, MailboxResponse, MAILBOX_PROTOCOL};
use burrow_relay::server::identify_config;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, OrTransport};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, ping, relay, yamux, PeerId, Swarm, Transport};

use super::proto::{PunchReply, PunchRequest, PUNCH_PROTOCOL};
use super::transport::{authenticated, CarrierTransport, UPGRADE_TIMEOUT};

/// How long a mailbox request may wait for its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a message may wait for the contact's receipt on an open
/// connection (a live one answers in milliseconds; a silent one is dropped
/// and the next attempt dials afresh).
pub const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The same on a connection straight to the contact (no relay in between):
/// one round trip and the contact's write to disk.
pub const DIRECT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(4);
/// How long a punch request may wait for the contact's answer.
pub const PUNCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(NetworkBehaviour)]
pub struct NodeBehaviour {
    pub relay_client: relay::client::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    /// Messages and receipts with contacts (see `super::msgstream`).
    pub messages: super::msgstream::Behaviour,
    /// Hole punching with contacts (asked and answered only by nodes that
    /// punch; see `crate::punch`).
    pub punch: request_response::cbor::Behaviour<PunchRequest, PunchReply>,
    pub mailbox: request_response::cbor::Behaviour<MailboxRequest, MailboxResponse>,
    /// The tracker, as a client: publishes this user's location at its
    /// relays and looks contacts up; never answers kad requests.
    pub tracker: kad::Behaviour<MemoryStore>,
}

impl std::fmt::Debug for NodeBehaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBehaviour").finish_non_exhaustive()
    }
}

/// A node's transport: the carriers (to relays) and relay circuits (to
/// other users), each authenticated with Noise and multiplexed with yamux;
/// with the relay client behaviour that goes with it.
pub fn transport(
    keypair: &Keypair,
    carriers: CarrierTransport,
) -> (Boxed<(PeerId, StreamMuxerBox)>, relay::client::Behaviour) {
    let peer_id = keypair.public().to_peer_id();
    let (relay_transport, relay_client) = relay::client::new(peer_id);
    // Circuits run inside a tunnel that is already encrypted to the relay,
    // so the usual negotiated upgrade is invisible on the wire here.
    let relayed = relay_transport
        .upgrade(Version::V1Lazy)
        .authenticate(super::secure::Config::new(keypair))
        .multiplex(yamux::Config::default())
        .timeout(UPGRADE_TIMEOUT)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    let transport: Boxed<(PeerId, StreamMuxerBox)> =
        OrTransport::new(relayed, authenticated(carriers, keypair))
            .map(|either, _| either.into_inner())
            .boxed();
    (transport, relay_client)
}

/// Addresses a dial holds open at once: every carrier of one relay (h2,
/// h3, ws).
pub const CARRIERS_AT_ONCE: std::num::NonZeroU8 = match std::num::NonZeroU8::new(3) {
    Some(n) => n,
    None => unreachable!(),
};

/// Swarm settings for a node.
pub fn config() -> libp2p::swarm::Config {
    // V1Lazy: a new stream's protocol is proposed and used at once instead
    // of waiting a round trip for the answer (it matters most through a
    // relay circuit, where each round trip crosses two tunnels).
    //
    // A relay's (or a contact's front's) carriers are dialled at once,
    // and the transport holds each back until its turn (obfs's carrier
    // head start): the first goes at once, the next only if the first is
    // not through within its head start, as a browser races TCP against
    // QUIC. Circuits are dialled one at a time instead (msgstream).
    libp2p::swarm::Config::with_tokio_executor()
        .with_idle_connection_timeout(Duration::from_secs(60))
        .with_substream_upgrade_protocol_override(Version::V1Lazy)
        .with_dial_concurrency_factor(CARRIERS_AT_ONCE)
}

/// A swarm for a node that never listens except through relay circuits.
pub fn build(keypair: &Keypair, carriers: CarrierTransport) -> io::Result<Swarm<NodeBehaviour>> {
    build_with_bucket_size(keypair, carriers, kad::K_VALUE)
}

/// [`build`], with room for `bucket_size` relays per distance in the
/// tracker client's routing table (kad's default is 20; the table holds
/// 256 such buckets, allocated up front: about 1.6 MB). Benchmarks that
/// run thousands of users in one process use a small one; the relay side
/// sees no difference.
pub fn build_with_bucket_size(
    keypair: &Keypair,
    carriers: CarrierTransport,
    bucket_size: std::num::NonZeroUsize,
) -> io::Result<Swarm<NodeBehaviour>> {
    let peer_id = keypair.public().to_peer_id();
    let (transport, relay_client) = transport(keypair, carriers);
    let messages = super::msgstream::Behaviour::new(MESSAGE_TIMEOUT)
        .with_direct_timeout(DIRECT_MESSAGE_TIMEOUT);
    let mailbox = request_response::Behaviour::with_codec(
        request_response::cbor::codec::Codec::default()
            .set_request_size_maximum(128 * 1024)
            .set_response_size_maximum(8 * 1024 * 1024),
        [(MAILBOX_PROTOCOL, ProtocolSupport::Outbound)],
        request_response::Config::default().with_request_timeout(REQUEST_TIMEOUT),
    );
    let punch = request_response::Behaviour::with_codec(
        request_response::cbor::codec::Codec::default()
            .set_request_size_maximum(1024)
            .set_response_size_maximum(4 * 1024),
        [(PUNCH_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(PUNCH_TIMEOUT),
    );
    let behaviour = NodeBehaviour {
        relay_client,
        identify: identify::Behaviour::new(identify_config(keypair)),
        ping: ping::Behaviour::new(burrow_relay::server::ping_config()),
        messages,
        punch,
        mailbox,
        tracker: {
            let mut config = burrow_relay::tracker::kad_config();
            config.set_kbucket_size(bucket_size);
            let mut kad = kad::Behaviour::with_config(peer_id, MemoryStore::new(peer_id), config);
            // Set explicitly: the relay client makes the circuit address
            // "external", which would otherwise flip kad to server mode and
            // advertise this node as a DHT server.
            kad.set_mode(Some(kad::Mode::Client));
            kad
        },
    };
    Ok(Swarm::new(transport, behaviour, peer_id, config()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::p2p::transport::Directory;

    /// A reservation makes the circuit address "external"; that must not
    /// turn the node into a kad server that answers (and is listed by)
    /// everyone's trackers.
    #[tokio::test]
    async fn the_node_stays_a_kad_client_when_it_becomes_reachable() {
        let keypair = Keypair::generate_ed25519();
        let mut swarm =
            build(&keypair, CarrierTransport::dialer(Directory::default())).expect("swarm");
        assert_eq!(swarm.behaviour().tracker.mode(), kad::Mode::Client);
        let circuit: libp2p::Multiaddr = format!(
            "/ip4/127.0.0.1/tcp/443/tls/http/p2p/{}/p2p-circuit",
            Keypair::generate_ed25519().public().to_peer_id()
        )
        .parse()
        .expect("addr");
        swarm.add_external_address(circuit);
        assert_eq!(swarm.behaviour().tracker.mode(), kad::Mode::Client);
    }
}
