//! The carriers' and the site's sockets, taken from the firewall's guarded
//! dialer: every outbound connection is decided, logged, and dialled to
//! exactly the approved address.

use std::io;
use std::net::SocketAddr;

use burrow_firewall::policy::is_local;
use burrow_firewall::{Audit, Dialer, Entry, EntrySource, Policy, Proto, Target};
use burrow_obfs::client::{BoxFuture, Sockets};
use burrow_obfs::RelayLine;
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

    /// Sockets that reach one relay and nothing else: its address, over
    /// TCP and UDP on its port (local networks only if the relay is there).
    /// The line must carry the relay's address (`ip=` or an IP host) until
    /// the firewall resolves names.
    pub fn for_relay(line: &RelayLine, component: &'static str) -> io::Result<Self> {
        let ip = line.ip.or_else(|| line.host.parse().ok()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is a name; add ip=ADDRESS to the relay line", line.host),
            )
        })?;
        let addr = SocketAddr::new(ip, line.port);
        let entries = [Proto::Tcp, Proto::Udp]
            .into_iter()
            .map(|proto| {
                Entry::new(
                    Target::addr(addr, proto),
                    EntrySource::HomeRelay,
                    format!("relay {}", line.host),
                )
            })
            .collect();
        let dialer = Dialer::new(Policy::new(entries, is_local(ip)), Audit::default());
        Ok(Self::new(dialer, component))
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
