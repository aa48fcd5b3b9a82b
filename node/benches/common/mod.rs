//! What the node's benchmarks share: a user whose driver answers every
//! message, and a plain rustls TLS server and client as the baseline.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use burrow_node::guarded::GuardedSockets;
use burrow_node::p2p::driver::{Driver, DriverHandle, Handler, HomeState, RelayRef};
use burrow_node::p2p::proto::{Envelope, Reply};
use burrow_node::p2p::swarm;
use burrow_node::p2p::transport::{CarrierTransport, Directory};
use burrow_obfs::tls::{client_config, Trust, ALPN_TCP};
use burrow_obfs::{Carrier, Identity, RelayLine, Sockets};
use burrow_relay::proto::MailboxItem;
use libp2p::identity::Keypair;
use libp2p::PeerId;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;

/// Accepts every message and every mailbox item; reports the home state.
pub struct Quiet(pub mpsc::UnboundedSender<HomeState>);

impl Handler for Quiet {
    fn on_envelope(&mut self, _: PeerId, _: Envelope) -> Reply {
        Reply::Received
    }
    fn on_mailbox(&mut self, items: Vec<MailboxItem>) -> Vec<u64> {
        items.iter().map(|i| i.id).collect()
    }
    fn on_home(&mut self, state: HomeState) {
        let _ = self.0.send(state);
    }
}

/// A user with a fresh key, online at `home` (holding a reservation) when
/// this returns.
pub async fn user(home: &RelayRef) -> (PeerId, DriverHandle) {
    let keypair = Keypair::generate_ed25519();
    let directory = Directory::default();
    let sockets = Arc::new(GuardedSockets::for_relay(&home.line, "bench").expect("sockets"));
    let swarm = swarm::build(&keypair, CarrierTransport::dialer(directory.clone())).expect("swarm");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (driver, handle) = Driver::new(swarm, directory, sockets, home.clone(), Quiet(tx));
    tokio::spawn(driver.run());
    while rx.recv().await != Some(HomeState::Online) {}
    (keypair.public().to_peer_id(), handle)
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A plain rustls TLS 1.3 server on loopback; each accepted stream goes to
/// `serve`.
pub struct TlsServer {
    pub addr: SocketAddr,
    pin: burrow_obfs::tls::CertPin,
}

impl TlsServer {
    pub async fn start<F, Fut>(serve: F) -> Self
    where
        F: Fn(tokio_rustls::server::TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (identity, _, _) = Identity::self_signed("bench.example").expect("cert");
        let pin = identity.pin().expect("pin");
        let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config_tcp().expect("tls"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let serve = Arc::new(serve);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let serve = serve.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    if let Ok(s) = acceptor.accept(tcp).await {
                        serve(s).await;
                    }
                });
            }
        });
        Self { addr, pin }
    }

    /// A client connection; its socket comes from the firewall like every
    /// other dial.
    pub async fn connect(&self) -> TlsStream<TcpStream> {
        tls_connect(self.addr, self.pin).await
    }
}

/// A TLS 1.3 client connection to `addr`, pinned to `pin`.
pub async fn tls_connect(addr: SocketAddr, pin: burrow_obfs::tls::CertPin) -> TlsStream<TcpStream> {
    let line = RelayLine {
        host: "bench.example".into(),
        port: addr.port(),
        path: "/x".into(),
        key: burrow_obfs::GateSecret::generate(&mut rand::rngs::OsRng).public(),
        carriers: vec![Carrier::H2],
        pin: Some(pin),
        ip: Some(addr.ip()),
        id: None,
        proxied: false,
    };
    let sockets = GuardedSockets::for_relay(&line, "bench").expect("sockets");
    let tcp = sockets
        .tcp(&addr.ip().to_string(), addr.port())
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let config = client_config(&Trust::Pinned(pin), &ALPN_TCP).expect("client tls");
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("bench.example").expect("name"), tcp)
        .await
        .expect("tls")
}
