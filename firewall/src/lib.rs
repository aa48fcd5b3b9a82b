//! burrow-firewall: egress policy and the guarded dialer.
//!
//! Every outbound connection of a Burrow process is decided here, on the
//! exact address about to be dialled: [`Policy::decide`] gives an
//! [`Approved`] (the only thing [`Dialer`] dials) or a typed [`Denied`],
//! and each decision lands in a bounded [`Audit`] log.
//!
//! [`Policy::explain`] answers `burrow firewall check` for a target before
//! any resolution. The node persists the audit log in its encrypted store.
//!
//! Names are resolved only by [`Resolver`]: DNS over HTTPS or TLS to a
//! resolver that is itself on the allowlist by address, its sockets checked
//! by the same gate; the system's plaintext resolvers only on request.
#![forbid(unsafe_code)]

pub mod audit;
pub mod dialer;
pub mod error;
pub mod policy;
pub mod resolver;
pub mod target;

pub use audit::{Audit, Record, Verdict};
pub use dialer::Dialer;
pub use error::{Error, TargetError};
pub use policy::{Approved, Denied, DenyReason, Entry, EntrySource, Policy};
pub use resolver::{
    ResolveError, Resolver, ResolverLimits, ResolverList, ResolverSpec, DEFAULT_RESOLVER,
};
pub use target::{Host, Name, Proto, Target};
