//! The carriers' and the site's sockets, taken from the firewall's guarded
//! dialer: every outbound connection is decided, logged, and dialled to
//! exactly the approved address.

use std::io;
use std::net::SocketAddr;

use burrow_firewall::{Dialer, Proto, Target};
use burrow_obfs::client::{BoxFuture, Sockets};
use tokio::net::TcpStream;

/// [`Sockets`] for one component, through the firewall.
#[derive(Debug, Clone)]
pub struct GuardedSockets {
    dialer: Dialer,
    component: &'static str,
}

impl GuardedSockets {
    /// `component` names the asker in the audit log (`relay-upstream`, …).
    pub fn new(dialer: Dialer, component: &'static str) -> Self {
        Self { dialer, component }
    }
}

impl Sockets for GuardedSockets {
    fn tcp(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<TcpStream>> {
        Box::pin(async move { Ok(self.dialer.tcp_to(self.component, addr).await?) })
    }

    fn udp(&self, addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
        let approved = self
            .dialer
            .check(self.component, &Target::addr(addr, Proto::Udp), addr)
            .map_err(burrow_firewall::Error::from)?;
        Ok(self.dialer.udp(&approved)?)
    }
}
