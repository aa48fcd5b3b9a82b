//! The allowlist and its decisions, without I/O.
//!
//! Every entry says what may be reached (host, port, protocol), why, and
//! where it came from. A decision is made on the exact address about to be
//! dialled, after any name was resolved: [`Policy::decide`] returns
//! [`Approved`] — the only value the dialer accepts — or [`Denied`] with a
//! typed reason.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::target::{canonical_addr, Host, Proto, Target};

/// Where an entry comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntrySource {
    /// The node's home relay (its configured relay line).
    HomeRelay,
    /// A configured tracker.
    Tracker,
    /// The relay named in a contact's address.
    ContactRelay { contact: String },
    /// An endpoint a verified contact announced.
    ContactEndpoint { contact: String },
    /// A verified contact's own front, where they accept direct connections.
    ContactDirect { contact: String },
    /// A verified contact's public address for QUIC, exchanged to punch a
    /// hole through both NATs (kept in memory while the node runs).
    ContactPunched { contact: String },
    /// The encrypted DNS resolver.
    Resolver,
    /// The origin a relay's site proxies to.
    RelayUpstream,
}

impl fmt::Display for EntrySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntrySource::HomeRelay => f.write_str("home relay"),
            EntrySource::Tracker => f.write_str("tracker"),
            EntrySource::ContactRelay { contact } => write!(f, "relay of contact {contact}"),
            EntrySource::ContactEndpoint { contact } => {
                write!(f, "endpoint announced by contact {contact}")
            }
            EntrySource::ContactDirect { contact } => {
                write!(f, "direct endpoint of contact {contact}")
            }
            EntrySource::ContactPunched { contact } => {
                write!(f, "hole punched with contact {contact}")
            }
            EntrySource::Resolver => f.write_str("DNS resolver"),
            EntrySource::RelayUpstream => f.write_str("relay's upstream origin"),
        }
    }
}

/// One allowed endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub host: Host,
    pub port: u16,
    pub proto: Proto,
    pub source: EntrySource,
    /// Human-readable reason shown by `firewall list`.
    pub reason: String,
}

impl Entry {
    pub fn new(target: Target, source: EntrySource, reason: impl Into<String>) -> Self {
        Self {
            host: target.host,
            port: target.port,
            proto: target.proto,
            source,
            reason: reason.into(),
        }
    }

    fn endpoint(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.proto)
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// No entry names this host.
    NotListed,
    /// The host is listed, but not on this port (the listed ports follow).
    WrongPort(Vec<u16>),
    /// The host and port are listed, but for the other protocol.
    WrongProtocol(Proto),
    /// 0.0.0.0, [::] and friends are never a destination.
    Unspecified,
    /// Loopback, private, link-local or similar, and local networks are off.
    LocalAddress,
    /// A broadcast or multicast address.
    NotUnicast,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NotListed => f.write_str("not on the allowlist"),
            DenyReason::WrongPort(ports) => write!(
                f,
                "host is allowed only on port(s) {}",
                ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            DenyReason::WrongProtocol(p) => write!(f, "host and port are allowed only over {p}"),
            DenyReason::Unspecified => f.write_str("unspecified address (0.0.0.0 or [::])"),
            DenyReason::LocalAddress => f.write_str(
                "loopback, private or link-local address, and local networks are not allowed",
            ),
            DenyReason::NotUnicast => f.write_str("broadcast or multicast address"),
        }
    }
}

/// A refusal: what was asked, the address it came to, and why not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused {target}{}: {reason}", via.map(|a| format!(" (resolved to {a})")).unwrap_or_default())]
pub struct Denied {
    pub target: Target,
    /// The resolved address, when the target was a name.
    pub via: Option<SocketAddr>,
    pub reason: DenyReason,
}

/// Permission to dial exactly one address over one protocol. Only
/// [`Policy::decide`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approved {
    addr: SocketAddr,
    proto: Proto,
    entry: Entry,
}

impl Approved {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// The allowlist entry that allowed it.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }
}

/// The allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    entries: Vec<Entry>,
    /// Entry positions by host, so a decision does not scan the list.
    by_host: HashMap<Host, Vec<usize>>,
    /// Whether loopback, private and link-local destinations may be
    /// reached at all (tests and a relay with a local origin need this).
    pub allow_local: bool,
}

impl Policy {
    pub fn new(entries: Vec<Entry>, allow_local: bool) -> Self {
        let mut by_host: HashMap<Host, Vec<usize>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            by_host.entry(e.host.clone()).or_default().push(i);
        }
        Self {
            entries,
            by_host,
            allow_local,
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Adds an entry unless an equal endpoint is already listed.
    pub fn add(&mut self, entry: Entry) {
        if !self
            .entries
            .iter()
            .any(|e| e.endpoint() == entry.endpoint() && e.source == entry.source)
        {
            self.by_host
                .entry(entry.host.clone())
                .or_default()
                .push(self.entries.len());
            self.entries.push(entry);
        }
    }

    /// Explains the decision for a target before any resolution: for an
    /// address, exactly what [`Policy::decide`] would say; for a name, the
    /// entry it would be dialled under (its resolved address is checked
    /// again at dial time).
    pub fn explain(&self, target: &Target) -> Result<Entry, Denied> {
        match &target.host {
            Host::Ip(ip) => self
                .decide(target, SocketAddr::new(*ip, target.port))
                .map(|a| a.entry),
            Host::Name(name) => {
                let deny = |reason| Denied {
                    target: target.clone(),
                    via: None,
                    reason,
                };
                if name.is_localhost() && !self.allow_local {
                    return Err(deny(DenyReason::LocalAddress));
                }
                self.match_entry(target).map_err(deny)
            }
        }
    }

    fn match_entry(&self, target: &Target) -> Result<Entry, DenyReason> {
        let Some(ix) = self.by_host.get(&target.host) else {
            return Err(DenyReason::NotListed);
        };
        let same_host = || ix.iter().map(|&i| &self.entries[i]);
        if let Some(entry) = same_host().find(|e| e.port == target.port && e.proto == target.proto)
        {
            return Ok(entry.clone());
        }
        match same_host().find(|e| e.port == target.port) {
            Some(other) => Err(DenyReason::WrongProtocol(other.proto)),
            None => {
                let mut ports: Vec<u16> = same_host().map(|e| e.port).collect();
                ports.sort_unstable();
                ports.dedup();
                Err(DenyReason::WrongPort(ports))
            }
        }
    }

    /// Decides whether `addr` may be dialled for `target` (the endpoint as
    /// asked: a name, or the same address). Names are matched against name
    /// entries; the address they resolved to must still be a public unicast
    /// address (no DNS rebinding into the local network).
    pub fn decide(&self, target: &Target, addr: SocketAddr) -> Result<Approved, Denied> {
        let addr = canonical_addr(addr);
        let deny = |reason| Denied {
            target: target.clone(),
            via: match target.host {
                Host::Name(_) => Some(addr),
                Host::Ip(_) => None,
            },
            reason,
        };
        if addr.port() != target.port {
            return Err(deny(DenyReason::WrongPort(vec![target.port])));
        }
        if let Host::Ip(ip) = &target.host {
            if *ip != addr.ip() {
                return Err(deny(DenyReason::NotListed));
            }
        }
        let ip = addr.ip();
        if ip.is_unspecified() {
            return Err(deny(DenyReason::Unspecified));
        }
        if ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
            return Err(deny(DenyReason::NotUnicast));
        }
        let local_name = matches!(&target.host, Host::Name(n) if n.is_localhost());
        let matched = self.match_entry(target);
        // A resolver the user configured by address may sit on the local
        // network (a router's DoH); nothing else reaches it unless allowed.
        let own_resolver = matches!(
            (&target.host, &matched),
            (
                Host::Ip(_),
                Ok(Entry {
                    source: EntrySource::Resolver,
                    ..
                })
            )
        );
        if (is_local(ip) || local_name) && !self.allow_local && !own_resolver {
            return Err(deny(DenyReason::LocalAddress));
        }
        match matched {
            Ok(entry) => Ok(Approved {
                addr,
                proto: target.proto,
                entry,
            }),
            Err(reason) => Err(deny(reason)),
        }
    }
}

/// Addresses that lead into this machine or a local network.
pub fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || o[0] == 0
                // 100.64.0.0/10, carrier-grade NAT
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                // 192.0.0.0/24 protocol assignments, 198.18.0.0/15 benchmarking
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                // fc00::/7 unique local, fe80::/10 link-local, fec0::/10 site-local
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                // ::/96 IPv4-compatible and the NAT64 well-known prefix carrying a local v4
                || v6.to_ipv4().is_some_and(|v4| v6.to_ipv4_mapped().is_none() && is_local(IpAddr::V4(v4)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Name;

    fn t(s: &str, proto: Proto) -> Target {
        Target::parse(s, proto, None).expect(s)
    }

    fn policy(allow_local: bool) -> Policy {
        Policy::new(
            vec![
                Entry::new(
                    t("relay.example.org:443", Proto::Tcp),
                    EntrySource::HomeRelay,
                    "home relay",
                ),
                Entry::new(
                    t("relay.example.org:443", Proto::Udp),
                    EntrySource::HomeRelay,
                    "home relay",
                ),
                Entry::new(
                    t("9.9.9.9:443", Proto::Tcp),
                    EntrySource::Resolver,
                    "DoH resolver",
                ),
                Entry::new(
                    t("127.0.0.1:8080", Proto::Tcp),
                    EntrySource::RelayUpstream,
                    "origin",
                ),
            ],
            allow_local,
        )
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect(s)
    }

    fn reason(r: Result<Approved, Denied>) -> DenyReason {
        r.expect_err("should be refused").reason
    }

    #[test]
    fn listed_endpoints_pass_with_their_entry() {
        let p = policy(false);
        let ok = p
            .decide(
                &t("Relay.Example.ORG.:443", Proto::Tcp),
                addr("203.0.113.7:443"),
            )
            .expect("listed name");
        assert_eq!(ok.addr(), addr("203.0.113.7:443"));
        assert_eq!(ok.entry().source, EntrySource::HomeRelay);
        let ok = p
            .decide(&t("9.9.9.9:443", Proto::Tcp), addr("[::ffff:9.9.9.9]:443"))
            .expect("mapped address is the v4 address");
        assert_eq!(ok.addr(), addr("9.9.9.9:443"));
        // The same resolver in another notation.
        p.decide(&t("0x09090909:443", Proto::Tcp), addr("9.9.9.9:443"))
            .expect("hex notation");
    }

    #[test]
    fn every_way_around_the_list_is_refused() {
        let p = policy(false);
        assert_eq!(
            reason(p.decide(&t("evil.example:443", Proto::Tcp), addr("203.0.113.9:443"))),
            DenyReason::NotListed
        );
        assert_eq!(
            reason(p.decide(
                &t("relay.example.org:8443", Proto::Tcp),
                addr("203.0.113.7:8443")
            )),
            DenyReason::WrongPort(vec![443])
        );
        assert_eq!(
            reason(p.decide(&t("9.9.9.9:443", Proto::Udp), addr("9.9.9.9:443"))),
            DenyReason::WrongProtocol(Proto::Tcp)
        );
        // A listed name that resolves into the local network: rebinding.
        assert_eq!(
            reason(p.decide(
                &t("relay.example.org:443", Proto::Tcp),
                addr("192.168.1.1:443")
            )),
            DenyReason::LocalAddress
        );
        assert_eq!(
            reason(p.decide(
                &t("relay.example.org:443", Proto::Tcp),
                addr("[::ffff:10.0.0.1]:443")
            )),
            DenyReason::LocalAddress
        );
        // Local origins need allow_local, in any spelling.
        for s in [
            "127.0.0.1:8080",
            "127.1:8080",
            "2130706433:8080",
            "[::ffff:127.0.0.1]:8080",
        ] {
            let target = t(s, Proto::Tcp);
            assert_eq!(
                reason(p.decide(&target, addr("127.0.0.1:8080"))),
                DenyReason::LocalAddress,
                "{s}"
            );
        }
        assert_eq!(
            reason(p.decide(&t("0.0.0.0:443", Proto::Tcp), addr("0.0.0.0:443"))),
            DenyReason::Unspecified
        );
        assert_eq!(
            reason(p.decide(&t("[::]:443", Proto::Tcp), addr("[::]:443"))),
            DenyReason::Unspecified
        );
        let localhost = Target::new(
            Host::Name(Name::parse("LocalHost.").expect("name")),
            8080,
            Proto::Tcp,
        );
        assert_eq!(
            reason(p.decide(&localhost, addr("127.0.0.1:8080"))),
            DenyReason::LocalAddress
        );
        // An address that is not the one the target names.
        assert_eq!(
            reason(p.decide(&t("9.9.9.9:443", Proto::Tcp), addr("1.1.1.1:443"))),
            DenyReason::NotListed
        );
        assert_eq!(
            reason(p.decide(&t("9.9.9.9:443", Proto::Tcp), addr("9.9.9.9:444"))),
            DenyReason::WrongPort(vec![443])
        );
        assert_eq!(
            reason(p.decide(&t("224.0.0.1:443", Proto::Udp), addr("224.0.0.1:443"))),
            DenyReason::NotUnicast
        );
    }

    #[test]
    fn a_resolver_configured_by_address_may_be_local() {
        let mut p = policy(false);
        p.add(Entry::new(
            t("192.168.1.1:443", Proto::Tcp),
            EntrySource::Resolver,
            "DoH on the router",
        ));
        p.decide(&t("192.168.1.1:443", Proto::Tcp), addr("192.168.1.1:443"))
            .expect("the configured resolver");
        // The same local address under any other entry stays refused.
        p.add(Entry::new(
            t("192.168.1.2:443", Proto::Tcp),
            EntrySource::ContactRelay {
                contact: "mallory".into(),
            },
            "relay of a contact",
        ));
        assert_eq!(
            reason(p.decide(&t("192.168.1.2:443", Proto::Tcp), addr("192.168.1.2:443"))),
            DenyReason::LocalAddress
        );
    }

    #[test]
    fn local_networks_when_allowed() {
        let p = policy(true);
        p.decide(&t("127.0.0.1:8080", Proto::Tcp), addr("127.0.0.1:8080"))
            .expect("allowed origin");
        assert_eq!(
            reason(p.decide(&t("127.0.0.1:8081", Proto::Tcp), addr("127.0.0.1:8081"))),
            DenyReason::WrongPort(vec![8080])
        );
        assert_eq!(
            reason(p.decide(&t("127.0.0.2:8080", Proto::Tcp), addr("127.0.0.2:8080"))),
            DenyReason::NotListed
        );
    }

    #[test]
    fn local_ranges() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.1.2.3",
            "::1",
            "fd00::1",
            "fe80::1",
            "::127.0.0.1",
        ] {
            assert!(is_local(s.parse().expect(s)), "{s}");
        }
        for s in ["9.9.9.9", "203.0.113.7", "2001:db8::1", "100.128.0.1"] {
            assert!(!is_local(s.parse().expect(s)), "{s}");
        }
    }

    #[test]
    fn explain_says_what_a_dial_would_meet_before_any_resolution() {
        let p = policy(false);
        let entry = p
            .explain(&t("RELAY.example.org.:443", Proto::Udp))
            .expect("listed name, any spelling");
        assert_eq!(entry.source, EntrySource::HomeRelay);
        assert_eq!(
            p.explain(&t("relay.example.org:80", Proto::Tcp))
                .map_err(|d| d.reason),
            Err(DenyReason::WrongPort(vec![443]))
        );
        assert_eq!(
            p.explain(&t("9.9.9.9:443", Proto::Udp))
                .map_err(|d| d.reason),
            Err(DenyReason::WrongProtocol(Proto::Tcp))
        );
        assert_eq!(
            p.explain(&t("[::ffff:9.9.9.9]:443", Proto::Tcp))
                .map(|e| e.source),
            Ok(EntrySource::Resolver)
        );
        assert_eq!(
            p.explain(&t("localhost:8080", Proto::Tcp))
                .map_err(|d| d.reason),
            Err(DenyReason::LocalAddress)
        );
        assert_eq!(
            p.explain(&t("0.0.0.0:443", Proto::Tcp))
                .map_err(|d| d.reason),
            Err(DenyReason::Unspecified)
        );
        assert_eq!(
            p.explain(&t("example.net:443", Proto::Tcp))
                .map_err(|d| d.reason),
            Err(DenyReason::NotListed)
        );
    }
}
