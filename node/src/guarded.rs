//! The carriers' and the site's sockets, taken from the firewall's guarded
//! dialer: every outbound connection is decided, logged, and dialled to
//! exactly the approved address.

use std::io;
use std::net::{IpAddr, SocketAddr};

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
        let (entries, ip) = relay_entries(line, EntrySource::HomeRelay)?;
        let dialer = Dialer::new(Policy::new(entries, is_local(ip)), Audit::default());
        Ok(Self::new(dialer, component))
    }
}

/// The address a relay line is dialled at.
pub fn relay_ip(line: &RelayLine) -> io::Result<IpAddr> {
    line.ip.or_else(|| line.host.parse().ok()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is a name; add ip=ADDRESS to the relay line", line.host),
        )
    })
}

/// Allowlist entries for one relay: its address and port, TCP and UDP.
pub fn relay_entries(line: &RelayLine, source: EntrySource) -> io::Result<(Vec<Entry>, IpAddr)> {
    let ip = relay_ip(line)?;
    let addr = SocketAddr::new(ip, line.port);
    let entries = [Proto::Tcp, Proto::Udp]
        .into_iter()
        .map(|proto| {
            Entry::new(
                Target::addr(addr, proto),
                source.clone(),
                format!("relay {}", line.host),
            )
        })
        .collect();
    Ok((entries, ip))
}

/// A node's allowlist: its home relay, the trackers it publishes its
/// location at (its previous home relay), and the relays in its contacts'
/// addresses. Local networks are allowed only when the home relay is on
/// one (a loopback demo or test).
pub fn node_policy<'a>(
    home: &RelayLine,
    trackers: impl IntoIterator<Item = &'a RelayLine>,
    contacts: impl IntoIterator<Item = (&'a str, &'a RelayLine)>,
) -> io::Result<Policy> {
    let (mut entries, home_ip) = relay_entries(home, EntrySource::HomeRelay)?;
    for line in trackers {
        match relay_entries(line, EntrySource::Tracker) {
            Ok((e, _)) => entries.extend(e),
            Err(e) => tracing::warn!("tracker {}: not reachable: {e}", line.host),
        }
    }
    for (name, line) in contacts {
        match relay_entries(
            line,
            EntrySource::ContactRelay {
                contact: name.to_string(),
            },
        ) {
            Ok((e, _)) => entries.extend(e),
            Err(e) => tracing::warn!("contact {name}: relay not reachable: {e}"),
        }
    }
    Ok(Policy::new(entries, is_local(home_ip)))
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
