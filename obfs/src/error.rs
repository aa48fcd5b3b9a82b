//! The crate's one error type, split by who is at fault.
//!
//! What a failure does on the wire is decided in one place: any request that
//! fails the gate, for any reason, is answered by the decoy site (see
//! `front`). These errors are for the operator and the client's user.

use std::io;

/// A mistake in what the operator or user configured.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("bad certificate or key ({path}): {reason}")]
    BadCertificate { path: String, reason: String },
    #[error("invalid {key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("relay line: {0}")]
    RelayLine(#[from] crate::relay_line::LineError),
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration: the operator or user must fix something.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A local file could not be read. (`cause` is part of the message, not
    /// a chained source, so it is printed once.)
    #[error("cannot read {path}: {cause}")]
    ReadFile { path: String, cause: io::Error },
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr} ({proto}): {source}")]
    Bind {
        addr: std::net::SocketAddr,
        proto: &'static str,
        source: io::Error,
    },
    /// The backend listener (behind a web server) could not be bound.
    #[error("cannot listen on {addr} (backend): {source}")]
    BindBackend { addr: String, source: io::Error },
    /// The remote side misbehaved or the network failed while dialing.
    #[error("{carrier} carrier: {reason}")]
    Dial {
        carrier: &'static str,
        reason: String,
    },
    /// The relay answered like an ordinary website: wrong key, wrong path,
    /// or not a relay at all.
    #[error("{carrier} carrier: the server did not open a tunnel (HTTP {status}); wrong relay key or path?")]
    NotARelay { carrier: &'static str, status: u16 },
    /// Every carrier failed; the last error of each is kept.
    #[error("no carrier worked: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    AllCarriersFailed(Vec<Error>),
    /// A TLS library refused a configuration we built: a bug on our side.
    #[error("internal TLS set-up error: {0}")]
    TlsSetup(String),
}

impl Error {
    pub(crate) fn tls_setup(e: impl std::fmt::Display) -> Self {
        Error::TlsSetup(e.to_string())
    }

    pub(crate) fn dial(carrier: &'static str, e: impl std::fmt::Display) -> Self {
        Error::Dial {
            carrier,
            reason: e.to_string(),
        }
    }
}
