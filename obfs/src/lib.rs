//! burrow-obfs: camouflage carriers for Burrow.
//!
//! A relay's listener is an ordinary website ([`site`]) over HTTP/1.1 and
//! HTTP/2 on TLS and HTTP/3 on QUIC ([`front`]). A client that knows the
//! relay's public key opens a [`Tunnel`] — a plain byte stream inside one
//! HTTP/2 or HTTP/3 request — by passing the [`gate`]; every other request,
//! including every failed gate, gets the website's answer. Behind a web
//! server that terminates TLS itself, the [`backend`] takes the tunnel
//! location in cleartext instead.
//!
//! This crate knows nothing of libp2p and opens no outbound sockets by
//! itself: clients get theirs through [`client::Sockets`].
#![forbid(unsafe_code)]

pub mod backend;
pub mod client;
mod coalesce;
pub mod error;
pub mod front;
pub mod gate;
mod h1;
mod h1_server;
mod h2_server;
mod h2_shape;
mod h3_server;
mod linger;
pub mod redact;
pub mod relay_line;
pub mod site;
pub mod tls;
pub mod tunnel;
pub mod upstream;

pub use backend::{Backend, BackendAddr, BackendConfig};
pub use client::{BoxFuture, Client, Sockets};
pub use error::{ConfigError, Error};
pub use front::{Front, FrontConfig, FrontSnapshot, FrontStats, Limits, QuicFront, Tunnels};
pub use gate::{Gate, GatePublic, GateSecret};
pub use relay_line::{Carrier, RelayLine};
pub use site::{Site, Source};
pub use tls::{CertPin, Certificates, Identity};
pub use tunnel::Tunnel;
pub use upstream::{Origin, Upstream};
