//! burrow-node: the `burrow` command — the messaging node (identity,
//! keystore, contacts, store, the libp2p swarm over the camouflaged
//! carriers, the daemon and its control socket), relay mode and the demo.
#![forbid(unsafe_code)]

pub mod cli;
pub mod control;
pub mod daemon;
pub mod datadir;
pub mod demo;
pub mod direct;
pub mod guarded;
pub mod identity;
pub mod messenger;
pub mod p2p;
pub mod punch;
pub mod qr;
pub mod relay_cmd;
pub mod relay_config;
pub mod runtime;
pub mod seal;
pub mod store;
pub mod tracker;
pub mod user_cmd;
