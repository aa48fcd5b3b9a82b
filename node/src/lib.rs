//! burrow-node: the `burrow` command — relay mode and the loopback demo at
//! this stage; identities, contacts and messaging come next.
#![forbid(unsafe_code)]

pub mod cli;
pub mod datadir;
pub mod demo;
pub mod guarded;
pub mod identity;
pub mod p2p;
pub mod relay_cmd;
pub mod seal;
pub mod store;
