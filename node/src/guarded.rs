//! The carriers' and the site's sockets, taken from the firewall's guarded
//! dialer: every outbound connection is decided, logged, and dialled to
//! exactly the approved address.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::store::Contact;
use burrow_firewall::policy::is_local;
use burrow_firewall::target::canonical_ip;
use burrow_firewall::{
    Audit, Dialer, Entry, EntrySource, Host, Name, Policy, Proto, ResolverLimits, ResolverList,
    ResolverSpec, Target,
};
use burrow_obfs::client::{BoxFuture, Sockets};
use burrow_obfs::tls::{client_config, CertPin, Trust};
use burrow_obfs::RelayLine;
use tokio::net::TcpStream;

/// [`Sockets`] for one component, through the firewall.
#[derive(Debug, Clone)]
pub struct GuardedSockets {
    dialer: Dialer,
    component: &'static str,
    /// The guard of the shared QUIC socket, told of each approved address.
    quic_guard: Option<Arc<crate::punch::Allowed>>,
}

impl GuardedSockets {
    /// `component` names the asker in the audit log (`relay-upstream`, …).
    pub fn new(dialer: Dialer, component: &'static str) -> Self {
        Self {
            dialer,
            component,
            quic_guard: None,
        }
    }

    /// QUIC dials leave from a shared, guarded socket: each address
    /// approved for one is let through its guard.
    pub fn with_quic_guard(mut self, guard: Arc<crate::punch::Allowed>) -> Self {
        self.quic_guard = Some(guard);
        self
    }

    /// Sockets that reach one relay given by address and nothing else:
    /// its address, over TCP and UDP on its port (local networks only if
    /// the relay is there). For demos, tests and benchmarks.
    pub fn for_relay(line: &RelayLine, component: &'static str) -> io::Result<Self> {
        Self::for_relays(&[line], component)
    }

    /// Like [`GuardedSockets::for_relay`], for several relays (or a relay
    /// and a contact's own front).
    pub fn for_relays(lines: &[&RelayLine], component: &'static str) -> io::Result<Self> {
        let mut entries = Vec::new();
        for line in lines {
            entries.extend(relay_entries(line, EntrySource::HomeRelay)?);
        }
        let local = lines
            .iter()
            .any(|line| relay_ip(line).is_some_and(is_local));
        let dialer = Dialer::new(Policy::new(entries, local), Audit::default());
        Ok(Self::new(dialer, component))
    }
}

/// The address a relay line names, if it names one (`ip=` or an IP host).
pub fn relay_ip(line: &RelayLine) -> Option<IpAddr> {
    line.ip.or_else(|| line.host.parse().ok())
}

/// Allowlist entries for one relay, TCP and UDP on its port: by address
/// when the line gives one, else by name (resolved over encrypted DNS at
/// dial time, each answer checked again).
pub fn relay_entries(line: &RelayLine, source: EntrySource) -> io::Result<Vec<Entry>> {
    let host = match relay_ip(line) {
        Some(ip) => Host::Ip(canonical_ip(ip)),
        None => Host::Name(
            Name::parse(&line.host).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        ),
    };
    Ok([Proto::Tcp, Proto::Udp]
        .into_iter()
        .map(|proto| {
            Entry::new(
                Target::new(host.clone(), line.port, proto),
                source.clone(),
                format!("relay {}", line.host),
            )
        })
        .collect())
}

/// What the node's firewall is built from, besides its relays.
#[derive(Debug, Clone)]
pub struct FirewallSettings {
    pub resolver: ResolverList,
    /// Loopback, private and link-local destinations allowed at all.
    pub allow_local: bool,
    /// Approvals are logged, not only refusals.
    pub log_approvals: bool,
}

impl FirewallSettings {
    /// The stored settings: the resolver the user set (or the default),
    /// local networks as the user set them.
    pub fn from_store(store: &crate::store::Store) -> anyhow::Result<Self> {
        let spec = store
            .resolver()?
            .unwrap_or_else(|| burrow_firewall::DEFAULT_RESOLVER.to_string());
        Ok(Self {
            resolver: ResolverList::parse(&spec)?,
            allow_local: store.allow_local_networks()?,
            log_approvals: store.log_approvals()?,
        })
    }
}

/// A node's allowlist: its home relay, the trackers it publishes its
/// location at (its previous home relay), the relays in its contacts'
/// addresses or announced since by verified contacts (`moved`), and its
/// DNS resolver. Local networks are allowed when the
/// settings say so, or when the home relay is on one (a loopback demo).
pub fn node_policy<'a>(
    home: &RelayLine,
    trackers: impl IntoIterator<Item = &'a RelayLine>,
    contacts: impl IntoIterator<Item = &'a Contact>,
    settings: &FirewallSettings,
) -> io::Result<Policy> {
    let mut entries = relay_entries(home, EntrySource::HomeRelay)?;
    for line in trackers {
        match relay_entries(line, EntrySource::Tracker) {
            Ok(e) => entries.extend(e),
            Err(e) => tracing::warn!("tracker {}: not reachable: {e}", line.host),
        }
    }
    for c in contacts {
        let contact = c.name.clone();
        let source = if c.moved {
            EntrySource::ContactEndpoint { contact }
        } else {
            EntrySource::ContactRelay { contact }
        };
        match relay_entries(&c.address.relay, source) {
            Ok(e) => entries.extend(e),
            Err(e) => tracing::warn!("contact {}: relay not reachable: {e}", c.name),
        }
        // A direct endpoint widens the firewall: only a verified contact's.
        if let Some(direct) = c.direct.as_ref().filter(|_| c.verified) {
            let source = EntrySource::ContactDirect {
                contact: c.name.clone(),
            };
            match relay_entries(direct, source) {
                Ok(e) => entries.extend(e),
                Err(e) => tracing::warn!("contact {}: direct endpoint not usable: {e}", c.name),
            }
        }
    }
    match settings.resolver.entries() {
        Ok(e) => entries.extend(e),
        Err(e) => tracing::warn!("resolver {}: {e}", settings.resolver),
    }
    let local = settings.allow_local || relay_ip(home).is_some_and(is_local);
    Ok(Policy::new(entries, local))
}

/// Gives `dialer` the resolvers `list` names, in its order, trusting each
/// one's certificate by its pin or else the web roots.
pub fn set_resolver(dialer: &Dialer, list: &ResolverList) -> anyhow::Result<()> {
    set_resolver_with(dialer, list, ResolverLimits::default())
}

/// [`set_resolver`] with limits other than the defaults.
pub fn set_resolver_with(
    dialer: &Dialer,
    list: &ResolverList,
    limits: ResolverLimits,
) -> anyhow::Result<()> {
    let mut resolvers = Vec::new();
    for spec in list.specs() {
        let tls = match spec {
            ResolverSpec::System => None,
            ResolverSpec::Https { .. } | ResolverSpec::Tls { .. } => {
                let trust = match spec.pin() {
                    Some(pin) => Trust::Pinned(CertPin(pin)),
                    None => Trust::WebRoots,
                };
                let alpn: &[&[u8]] = match spec {
                    ResolverSpec::Https { .. } => &[b"h2"],
                    _ => &[],
                };
                Some((*client_config(&trust, alpn)?).clone())
            }
        };
        resolvers.push((spec.clone(), tls));
    }
    dialer.set_resolver(resolvers, limits)?;
    Ok(())
}

type Boxed<'a, T> = BoxFuture<'a, io::Result<T>>;

fn target(host: &str, port: u16, proto: Proto) -> io::Result<Target> {
    let host = Host::parse(host).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Ok(Target::new(host, port, proto))
}

impl Sockets for GuardedSockets {
    fn tcp(&self, host: &str, port: u16) -> Boxed<'_, TcpStream> {
        let t = target(host, port, Proto::Tcp);
        Box::pin(async move { Ok(self.dialer.connect_tcp(self.component, &t?).await?) })
    }

    fn udp(&self, host: &str, port: u16) -> Boxed<'_, (std::net::UdpSocket, SocketAddr)> {
        let t = target(host, port, Proto::Udp);
        Box::pin(async move { Ok(self.dialer.udp_for(self.component, &t?).await?) })
    }

    fn udp_addr(&self, host: &str, port: u16) -> Boxed<'_, SocketAddr> {
        let t = target(host, port, Proto::Udp);
        Box::pin(async move {
            let t = t?;
            let approved = self.dialer.approve(self.component, &t).await?;
            let first = approved
                .first()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
            if let Some(guard) = &self.quic_guard {
                guard.insert(first.addr(), t);
            }
            Ok(first.addr())
        })
    }
}
