//! A relay in this process (front + relay node) for the node's tests and
//! benchmarks.
#![allow(dead_code)]

use std::sync::Arc;

use burrow_node::p2p::transport::relay_node;
use burrow_obfs::{
    Carrier, Front, FrontConfig, Gate, GateSecret, Identity, Limits, RelayLine, Site, Source,
};
use burrow_relay::{Admission, RelayLimits, RelayStats};
use libp2p::identity::Keypair;
use tokio::sync::watch;

pub struct Relay {
    pub line: RelayLine,
    pub stats: Arc<std::sync::Mutex<RelayStats>>,
    pub _stop: watch::Sender<bool>,
}

pub async fn relay(carriers: Vec<Carrier>) -> Relay {
    relay_with(carriers, &RelayLimits::default()).await
}

pub async fn relay_with(carriers: Vec<Carrier>, limits: &RelayLimits) -> Relay {
    relay_with_front(carriers, limits, &Limits::default()).await
}

pub async fn relay_with_front(
    carriers: Vec<Carrier>,
    limits: &RelayLimits,
    front_limits: &Limits,
) -> Relay {
    let (identity, _, _) = Identity::self_signed("relay.example").expect("cert");
    let secret = GateSecret::generate(&mut rand::rngs::OsRng);
    let pin = identity.pin();
    let config = FrontConfig {
        identity,
        gate: Gate::new(secret.clone()),
        tunnel_path: "/api/v2/events".into(),
        site: Site::new(Source::Builtin, 0, true),
        limits: front_limits.clone(),
    };
    let (front, tunnels) = Front::bind("127.0.0.1:0".parse().expect("addr"), config)
        .await
        .expect("bind");
    let addr = front.local_addr();
    let keypair = Keypair::generate_ed25519();
    let line = RelayLine {
        host: "relay.example".into(),
        port: addr.port(),
        path: "/api/v2/events".into(),
        key: secret.public(),
        carriers,
        pin,
        ip: Some(addr.ip()),
        id: Some(keypair.public().to_peer_id().to_base58()),
        proxied: false,
    };
    let node = relay_node(tunnels, &keypair, &line, limits, &Admission::Open).expect("relay node");
    let stats = node.stats();
    let (stop, rx) = watch::channel(false);
    tokio::spawn(front.run(rx.clone()));
    tokio::spawn(node.run(rx));
    Relay {
        line,
        stats,
        _stop: stop,
    }
}
