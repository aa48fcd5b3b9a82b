//! burrow-relay: relay mode for users trapped behind NAT or a censor.
//!
//! - [`server`]: a libp2p circuit relay v2 server (a meeting point: users
//!   who hold a reservation are reachable through it) and the mailbox
//!   protocol, on whatever transport the caller hands in — in `burrow
//!   relay`, the tunnels of the camouflaged web front.
//! - [`mailbox`]: sealed messages for offline users, in RAM only, bounded
//!   per recipient (1,000), by age (7 days) and in total bytes.
//! - [`proto`]: the mailbox wire messages.
//! - [`metrics`]: counts for the operator, as a Prometheus endpoint.
//! - [`tracker`]: the phone book (kad in server mode, records in RAM) that
//!   tells someone who knows a user where that user is reachable now.
//!
//! Nothing about users is ever written to disk.
#![forbid(unsafe_code)]

pub mod boxed;
pub mod mailbox;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod tracker;

pub use mailbox::{MailboxLimits, Mailboxes, Refusal};
pub use server::{Admission, RelayLimits, RelayNode, RelayStats};

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("relay limits: {0}")]
    Limits(#[from] server::LimitsError),
    #[error("cannot listen for tunnels: {0}")]
    Listen(String),
}
