//! The crate's errors, split by who is at fault: a malformed target (the
//! caller or the config), a refusal (the policy), or the network (I/O).

use std::io;

use crate::policy::Denied;
use crate::resolver::ResolveError;

/// A target that cannot even be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{0:?} is not a valid host name")]
    BadName(String),
    #[error("{0:?} is not a valid IP address")]
    BadAddress(String),
    #[error("unsupported scheme {0:?} (http, https or burrow-relay)")]
    BadScheme(String),
    #[error("{0:?} is not a valid port (1-65535)")]
    BadPort(String),
    #[error("{0:?} names no port")]
    MissingPort(String),
}

/// Everything a guarded dial can end in, other than a socket.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The policy refused; the refusal is in the audit log.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// A name could not be resolved (nothing was dialled).
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// Approved, but the network failed.
    #[error("connecting to {target} failed: {source}")]
    Io { target: String, source: io::Error },
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::Denied(_) => io::ErrorKind::PermissionDenied,
            Error::Target(_) => io::ErrorKind::InvalidInput,
            Error::Resolve(_) => io::ErrorKind::NotFound,
            Error::Io { source, .. } => source.kind(),
        };
        io::Error::new(kind, e)
    }
}
