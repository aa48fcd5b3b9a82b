//! Redacted forms of what must not appear in logs by default.

use std::fmt;
use std::net::SocketAddr;

/// A peer address shown only as its address family and a short mark;
/// enough to tell connections apart in one log, not to identify a user.
#[derive(Debug, Clone, Copy)]
pub struct Addr(pub SocketAddr);

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.0.ip().hash(&mut h);
        let family = if self.0.is_ipv4() { "v4" } else { "v6" };
        write!(f, "{family}#{:04x}", h.finish() & 0xffff)
    }
}
