//! Name resolution over encrypted DNS only.
//!
//! A [`ResolverSpec`] names one resolver by IP address: DNS over HTTPS
//! (the default) or DNS over TLS, or — only when the user turns it on —
//! the system's plaintext resolvers. A [`ResolverList`] is one or more of
//! them, asked in order: a resolver that cannot be reached (blocked,
//! down, a certificate that does not verify) hands the question to the
//! next, and is asked after the others for a while
//! ([`ResolverLimits::failed_wait`]), so a blocked resolver costs its
//! timeout once rather than at every lookup. An answer, "no such name"
//! included, is final: the next resolver is not asked to contradict it.
//! Each resolver's own endpoint is put on the allowlist like any other
//! ([`ResolverList::entries`]), and hickory's sockets are opened through
//! the same gate as every other dial ([`GuardedRuntime`]), so even the
//! resolver cannot reach anything else. Answers are cached by hickory
//! within their TTL.
//!
//! Spec syntax (what `--resolver` takes; several separated by commas):
//!
//! ```text
//! https://NAME-OR-IP[:PORT][/PATH][?ip=ADDRESS][&pin=SHA256-BASE64URL]   DoH (port 443, /dns-query)
//! tls://NAME-OR-IP[:PORT][?ip=ADDRESS][&pin=…]                        DoT (port 853)
//! system                                                             /etc/resolv.conf, plaintext (alone)
//! ```
//!
//! The resolver is always reached by IP address (there is nothing to
//! resolve its name with): either the host is an IP literal, or `ip=` is
//! given and the host is the name its certificate is checked against.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_resolver::net::runtime::{
    RuntimeProvider, TokioHandle, TokioRuntimeProvider, TokioTime,
};
use hickory_resolver::Resolver as Hickory;

use crate::dialer::Gate;
use crate::policy::{Entry, EntrySource};
use crate::target::{canonical_ip, Name, Proto, Target};

/// The resolvers used when none is configured: Quad9 over HTTPS, and
/// Cloudflare's when Quad9 cannot be reached (two operators, two address
/// ranges: a censor blocking one rarely blocks both at once).
pub const DEFAULT_RESOLVER: &str =
    "https://dns.quad9.net/dns-query?ip=9.9.9.9, https://cloudflare-dns.com/dns-query?ip=1.1.1.1";

/// The component resolver sockets are logged under.
pub const RESOLVER_COMPONENT: &str = "resolver";

/// A resolver spec that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resolver {spec:?}: {reason}")]
pub struct SpecError {
    pub spec: String,
    pub reason: String,
}

/// How names are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolverSpec {
    /// DNS over HTTPS (RFC 8484) to one address.
    Https {
        addr: SocketAddr,
        /// The name (or IP) its certificate must be valid for.
        tls_name: String,
        path: String,
        /// SHA-256 of the certificate, instead of the web roots.
        pin: Option<[u8; 32]>,
    },
    /// DNS over TLS (RFC 7858) to one address.
    Tls {
        addr: SocketAddr,
        tls_name: String,
        pin: Option<[u8; 32]>,
    },
    /// The system's resolvers from /etc/resolv.conf, in plaintext. Only when
    /// the user asks for it: every query is then visible on the network.
    System,
}

impl ResolverSpec {
    pub fn parse(spec: &str) -> Result<Self, SpecError> {
        let bad = |reason: &str| SpecError {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let s = spec.trim();
        if s == "system" {
            return Ok(Self::System);
        }
        let (https, rest) = match s.split_once("://") {
            Some(("https", rest)) => (true, rest),
            Some(("tls", rest)) => (false, rest),
            _ => return Err(bad("expected https://…, tls://… or system")),
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if !https && !path.is_empty() && path != "/" {
            return Err(bad("a DNS-over-TLS resolver has no path"));
        }
        let (host, port) = split_authority(authority).ok_or_else(|| bad("bad host or port"))?;
        let port = match port {
            Some(p) => p,
            None if https => 443,
            None => 853,
        };
        let mut ip = None;
        let mut pin = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("ip", v)) => {
                    ip = Some(
                        v.parse::<IpAddr>()
                            .map_err(|_| bad("ip= is not an address"))?,
                    )
                }
                Some(("pin", v)) => pin = Some(decode_pin(v).ok_or_else(|| bad("bad pin="))?),
                _ => return Err(bad(&format!("unknown parameter {pair:?} (ip=, pin=)"))),
            }
        }
        let host_ip = host.parse::<IpAddr>().ok();
        let ip = match (host_ip, ip) {
            (Some(h), Some(i)) if h != i => {
                return Err(bad("host and ip= name different addresses"))
            }
            (Some(h), _) => h,
            (None, Some(i)) => i,
            (None, None) => {
                return Err(bad(
                    "a resolver is reached by IP address: give one, or add ?ip=ADDRESS",
                ))
            }
        };
        let tls_name = match host_ip {
            Some(h) => h.to_string(),
            None => Name::parse(host)
                .map_err(|e| bad(&e.to_string()))?
                .as_str()
                .to_string(),
        };
        let addr = SocketAddr::new(canonical_ip(ip), port);
        Ok(if https {
            let path = if path.is_empty() || path == "/" {
                "/dns-query".to_string()
            } else {
                path.to_string()
            };
            Self::Https {
                addr,
                tls_name,
                path,
                pin,
            }
        } else {
            Self::Tls {
                addr,
                tls_name,
                pin,
            }
        })
    }

    /// The certificate pin, if one was given.
    pub fn pin(&self) -> Option<[u8; 32]> {
        match self {
            Self::Https { pin, .. } | Self::Tls { pin, .. } => *pin,
            Self::System => None,
        }
    }

    /// Whether queries are encrypted.
    pub fn is_encrypted(&self) -> bool {
        !matches!(self, Self::System)
    }

    /// Where queries go: the kind and the address (`None`: the system's).
    fn endpoint(&self) -> Option<(bool, SocketAddr)> {
        match self {
            Self::Https { addr, .. } => Some((true, *addr)),
            Self::Tls { addr, .. } => Some((false, *addr)),
            Self::System => None,
        }
    }

    /// The allowlist entries the resolver needs, each with its reason.
    pub fn entries(&self) -> Result<Vec<Entry>, ResolveError> {
        let entry = |addr: SocketAddr, proto, reason: String| {
            Entry::new(Target::addr(addr, proto), EntrySource::Resolver, reason)
        };
        Ok(match self {
            Self::Https { addr, .. } => {
                vec![entry(*addr, Proto::Tcp, format!("DNS over HTTPS ({self})"))]
            }
            Self::Tls { addr, .. } => {
                vec![entry(*addr, Proto::Tcp, format!("DNS over TLS ({self})"))]
            }
            Self::System => system_servers()?
                .into_iter()
                .flat_map(|ip| {
                    let addr = SocketAddr::new(canonical_ip(ip), 53);
                    [Proto::Udp, Proto::Tcp].map(|p| {
                        entry(
                            addr,
                            p,
                            "system resolver: plaintext DNS, turned on explicitly".to_string(),
                        )
                    })
                })
                .collect(),
        })
    }
}

impl fmt::Display for ResolverSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let params =
            |f: &mut fmt::Formatter<'_>, addr: &SocketAddr, name: &str, pin: &Option<[u8; 32]>| {
                let mut sep = '?';
                if name != addr.ip().to_string() {
                    write!(f, "{sep}ip={}", addr.ip())?;
                    sep = '&';
                }
                if let Some(p) = pin {
                    write!(f, "{sep}pin={}", encode_pin(p))?;
                }
                Ok(())
            };
        let host = |name: &str| match name.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => name.to_string(),
        };
        match self {
            Self::Https {
                addr,
                tls_name,
                path,
                pin,
            } => {
                write!(f, "https://{}", host(tls_name))?;
                if addr.port() != 443 {
                    write!(f, ":{}", addr.port())?;
                }
                f.write_str(path)?;
                params(f, addr, tls_name, pin)
            }
            Self::Tls {
                addr,
                tls_name,
                pin,
            } => {
                write!(f, "tls://{}", host(tls_name))?;
                if addr.port() != 853 {
                    write!(f, ":{}", addr.port())?;
                }
                params(f, addr, tls_name, pin)
            }
            Self::System => f.write_str("system"),
        }
    }
}

/// One or more resolvers, asked in this order (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverList(Vec<ResolverSpec>);

impl ResolverList {
    /// Specs separated by commas. `system` stands alone: as a fallback it
    /// would send in plaintext what the encrypted resolvers were there to
    /// hide.
    pub fn parse(list: &str) -> Result<Self, SpecError> {
        let bad = |reason: &str| SpecError {
            spec: list.to_string(),
            reason: reason.to_string(),
        };
        let items: Vec<&str> = list.split(',').map(str::trim).collect();
        if items.len() > 1 && items.iter().any(|i| i.is_empty()) {
            return Err(bad("an empty entry in the list"));
        }
        let specs = items
            .into_iter()
            .map(ResolverSpec::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(specs).map_err(|reason| bad(&reason))
    }

    /// Specs already read, checked as a list: at least one, `system`
    /// alone, none twice.
    fn new(specs: Vec<ResolverSpec>) -> Result<Self, String> {
        if specs.is_empty() {
            return Err("no resolver in the list".into());
        }
        if specs.len() > 1 && specs.contains(&ResolverSpec::System) {
            return Err("system (plaintext) cannot be combined with encrypted resolvers".into());
        }
        for (i, spec) in specs.iter().enumerate() {
            if specs[..i].iter().any(|s| s.endpoint() == spec.endpoint()) {
                return Err(format!("{spec} is listed twice"));
            }
        }
        Ok(Self(specs))
    }

    /// The resolvers, in the order they are asked.
    pub fn specs(&self) -> &[ResolverSpec] {
        &self.0
    }

    /// Whether queries are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.0.iter().all(ResolverSpec::is_encrypted)
    }

    /// The allowlist entries every resolver in the list needs.
    pub fn entries(&self) -> Result<Vec<Entry>, ResolveError> {
        let mut entries = Vec::new();
        for spec in &self.0 {
            entries.extend(spec.entries()?);
        }
        Ok(entries)
    }
}

impl From<ResolverSpec> for ResolverList {
    fn from(spec: ResolverSpec) -> Self {
        Self(vec![spec])
    }
}

impl fmt::Display for ResolverList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, spec) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{spec}")?;
        }
        Ok(())
    }
}

fn split_authority(a: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = a.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            p => Some((
                host,
                Some(p.strip_prefix(':')?.parse().ok().filter(|&p| p != 0)?),
            )),
        };
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h, Some(p.parse().ok().filter(|&p| p != 0)?))),
        Some(_) => None,
        None if a.is_empty() => None,
        None => Some((a, None)),
    }
}

fn encode_pin(pin: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(pin)
}

fn decode_pin(s: &str) -> Option<[u8; 32]> {
    URL_SAFE_NO_PAD.decode(s).ok()?.try_into().ok()
}

/// Why a name could not be resolved.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    #[error("no resolver is configured, so names cannot be resolved")]
    NoResolver,
    #[error("cannot read the system resolvers: {0}")]
    System(String),
    #[error("the resolver cannot be set up: {0}")]
    Setup(String),
    #[error("resolving {name} failed: {reason}")]
    Lookup { name: String, reason: String },
    #[error("{name} has no address")]
    NoAddress { name: String },
}

fn system_servers() -> Result<Vec<IpAddr>, ResolveError> {
    let (config, _) = hickory_resolver::system_conf::read_system_conf()
        .map_err(|e| ResolveError::System(e.to_string()))?;
    let mut ips: Vec<IpAddr> = config.name_servers().iter().map(|n| n.ip).collect();
    ips.dedup();
    if ips.is_empty() {
        return Err(ResolveError::System(
            "no nameserver in /etc/resolv.conf".into(),
        ));
    }
    Ok(ips)
}

/// hickory's sockets, opened only after the gate approved the exact
/// address (the resolver's entry on the allowlist).
#[derive(Clone)]
pub struct GuardedRuntime {
    inner: TokioRuntimeProvider,
    gate: Gate,
}

impl fmt::Debug for GuardedRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedRuntime").finish_non_exhaustive()
    }
}

impl GuardedRuntime {
    fn approve(&self, addr: SocketAddr, proto: Proto) -> io::Result<()> {
        self.gate
            .check(RESOLVER_COMPONENT, &Target::addr(addr, proto), addr)
            .map(drop)
            .map_err(|d| crate::Error::from(d).into())
    }
}

type Boxed<T> = Pin<Box<dyn Send + Future<Output = io::Result<T>>>>;

impl RuntimeProvider for GuardedRuntime {
    type Handle = TokioHandle;
    type Timer = TokioTime;
    type Udp = tokio::net::UdpSocket;
    type Tcp = AsyncIoTokioAsStd<tokio::net::TcpStream>;

    fn create_handle(&self) -> Self::Handle {
        self.inner.create_handle()
    }

    fn connect_tcp(
        &self,
        server_addr: SocketAddr,
        bind_addr: Option<SocketAddr>,
        timeout: Option<Duration>,
    ) -> Boxed<Self::Tcp> {
        match self.approve(server_addr, Proto::Tcp) {
            Ok(()) => self.inner.connect_tcp(server_addr, bind_addr, timeout),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn bind_udp(&self, local_addr: SocketAddr, server_addr: SocketAddr) -> Boxed<Self::Udp> {
        match self.approve(server_addr, Proto::Udp) {
            Ok(()) => self.inner.bind_udp(local_addr, server_addr),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
}

/// A caching resolver over a [`ResolverList`]: each resolver in it with its
/// own hickory instance (its own trust and cache), asked in order.
#[derive(Clone)]
pub struct Resolver {
    list: ResolverList,
    each: Arc<[Hickory<GuardedRuntime>]>,
    /// Each resolver's last failure to answer (`None`: it did not, or
    /// answered since).
    failed: Arc<Mutex<Vec<Option<Failure>>>>,
    failed_wait: Duration,
}

/// When a resolver last failed to answer, and how many times in a row.
type Failure = (Instant, u32);

/// The longest a resolver that keeps failing waits behind the others.
pub const FAILED_RESOLVER_MAX_WAIT: Duration = Duration::from_secs(3600);

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("list", &self.list.to_string())
            .finish()
    }
}

/// Resolver limits, each with its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolverLimits {
    /// Cached answers (hickory's cache, by name and type), per resolver.
    pub cache_entries: u64,
    /// Time allowed for one query to one resolver.
    pub timeout: Duration,
    /// Longest time an answer is kept, whatever its TTL.
    pub max_ttl: Duration,
    /// How long "no such name" or "no address of this family" is kept.
    pub negative_ttl: Duration,
    /// How long a resolver that could not be reached is asked only after
    /// the others; doubled for each failure in a row, up to
    /// [`FAILED_RESOLVER_MAX_WAIT`].
    pub failed_wait: Duration,
}

impl Default for ResolverLimits {
    fn default() -> Self {
        Self {
            cache_entries: 1024,
            timeout: Duration::from_secs(5),
            max_ttl: Duration::from_secs(24 * 3600),
            negative_ttl: Duration::from_secs(30),
            failed_wait: Duration::from_secs(5 * 60),
        }
    }
}

impl Resolver {
    /// Each resolver with the client config for its DoH/DoT (the caller
    /// decides the trust: web roots, or the spec's pin); their sockets come
    /// from `gate`.
    pub(crate) fn new(
        resolvers: Vec<(ResolverSpec, Option<rustls::ClientConfig>)>,
        limits: ResolverLimits,
        gate: Gate,
    ) -> Result<Self, ResolveError> {
        let specs = resolvers.iter().map(|(s, _)| s.clone()).collect();
        let list = ResolverList::new(specs).map_err(ResolveError::Setup)?;
        let each = resolvers
            .into_iter()
            .map(|(spec, tls)| one(&spec, tls, &limits, gate.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            failed: Arc::new(Mutex::new(vec![None; each.len()])),
            list,
            each: each.into(),
            failed_wait: limits.failed_wait,
        })
    }

    pub fn list(&self) -> &ResolverList {
        &self.list
    }

    /// The addresses of `name`, following CNAME chains, from the cache
    /// while the answer's TTL lasts. Resolvers are asked in order, those
    /// that failed lately last; the first answer is final.
    pub async fn lookup(&self, name: &Name) -> Result<Vec<IpAddr>, ResolveError> {
        // The trailing dot makes the name absolute: no search domains.
        let fqdn = format!("{}.", name.as_str());
        let lookup_error = |reason: String| ResolveError::Lookup {
            name: name.as_str().to_string(),
            reason,
        };
        let mut unreachable = Vec::new();
        for i in self.order() {
            let spec = &self.list.0[i];
            match self.each[i].lookup_ip(fqdn.as_str()).await {
                Ok(answer) => {
                    self.mark(i, false);
                    let ips: Vec<IpAddr> = answer.iter().map(canonical_ip).collect();
                    if ips.is_empty() {
                        return Err(ResolveError::NoAddress {
                            name: name.as_str().to_string(),
                        });
                    }
                    return Ok(ips);
                }
                Err(e) if e.is_no_records_found() => {
                    self.mark(i, false);
                    return Err(lookup_error(e.to_string()));
                }
                Err(e) => {
                    self.mark(i, true);
                    if self.each.len() > 1 {
                        tracing::warn!(
                            "resolver {spec} could not be reached ({e}); asked after the others for {} s",
                            self.wait_for(i).as_secs()
                        );
                        unreachable.push(format!("{spec}: {e}"));
                    } else {
                        unreachable.push(e.to_string());
                    }
                }
            }
        }
        Err(lookup_error(unreachable.join("; ")))
    }

    /// Indices in the order to ask: the list's order, but resolvers still
    /// waiting out a failure after the others.
    fn order(&self) -> Vec<usize> {
        let failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        let lately = |i: &usize| {
            failed[*i].is_some_and(|(at, n)| at.elapsed() < wait_after(self.failed_wait, n))
        };
        let (last, first): (Vec<usize>, Vec<usize>) = (0..failed.len()).partition(lately);
        first.into_iter().chain(last).collect()
    }

    /// How long resolver `i` waits behind the others after its last failure.
    fn wait_for(&self, i: usize) -> Duration {
        let failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        failed[i].map_or(Duration::ZERO, |(_, n)| wait_after(self.failed_wait, n))
    }

    fn mark(&self, i: usize, failed: bool) {
        let mut all = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        let in_a_row = all[i].map_or(0, |(_, n)| n);
        all[i] = failed.then(|| (Instant::now(), in_a_row.saturating_add(1)));
    }
}

/// The wait after `in_a_row` failures: `first`, doubled for each one after
/// the first, at most [`FAILED_RESOLVER_MAX_WAIT`] (or `first`, if longer).
fn wait_after(first: Duration, in_a_row: u32) -> Duration {
    let doublings = in_a_row.saturating_sub(1).min(16);
    first
        .saturating_mul(1 << doublings)
        .min(FAILED_RESOLVER_MAX_WAIT.max(first))
}

/// One resolver's hickory instance.
fn one(
    spec: &ResolverSpec,
    tls: Option<rustls::ClientConfig>,
    limits: &ResolverLimits,
    gate: Gate,
) -> Result<Hickory<GuardedRuntime>, ResolveError> {
    let servers = match spec {
        ResolverSpec::Https {
            addr,
            tls_name,
            path,
            ..
        } => {
            let mut ns = NameServerConfig::https(
                addr.ip(),
                tls_name.as_str().into(),
                Some(path.as_str().into()),
            );
            ns.connections.iter_mut().for_each(|c| c.port = addr.port());
            vec![ns]
        }
        ResolverSpec::Tls { addr, tls_name, .. } => {
            let mut ns = NameServerConfig::tls(addr.ip(), tls_name.as_str().into());
            ns.connections.iter_mut().for_each(|c| c.port = addr.port());
            vec![ns]
        }
        ResolverSpec::System => system_servers()?
            .into_iter()
            .map(NameServerConfig::udp_and_tcp)
            .collect(),
    };
    let runtime = GuardedRuntime {
        inner: TokioRuntimeProvider::new(),
        gate,
    };
    let mut builder =
        Hickory::builder_with_config(ResolverConfig::from_name_servers(servers), runtime);
    {
        let opts = builder.options_mut();
        opts.use_hosts_file = ResolveHosts::Never;
        opts.cache_size = limits.cache_entries;
        opts.timeout = limits.timeout;
        opts.attempts = 1;
        opts.positive_max_ttl = Some(limits.max_ttl);
        // A and AAAA asked together, IPv4 first (most censored networks
        // are IPv4-only); a name without one of them is remembered for
        // a while even when the answer carries no SOA, so a cached
        // lookup sends nothing at all.
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.negative_min_ttl = Some(limits.negative_ttl);
        opts.negative_max_ttl = Some(limits.negative_ttl.max(Duration::from_secs(60)));
        opts.ndots = 0;
    }
    if let Some(tls) = tls {
        builder = builder.with_tls_config(tls);
    }
    builder
        .build()
        .map_err(|e| ResolveError::Setup(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_read_and_print_back() {
        for (input, canonical) in [
            ("https://9.9.9.9", "https://9.9.9.9/dns-query"),
            (
                "https://dns.quad9.net/dns-query?ip=9.9.9.9",
                "https://dns.quad9.net/dns-query?ip=9.9.9.9",
            ),
            (
                "https://DNS.Example.:8443/q?ip=192.0.2.1",
                "https://dns.example:8443/q?ip=192.0.2.1",
            ),
            ("tls://1.1.1.1", "tls://1.1.1.1"),
            (
                "tls://[2606:4700::1111]:8853",
                "tls://[2606:4700::1111]:8853",
            ),
            ("system", "system"),
        ] {
            let spec = ResolverSpec::parse(input).expect(input);
            assert_eq!(spec.to_string(), canonical, "{input}");
            assert_eq!(ResolverSpec::parse(canonical).expect(canonical), spec);
        }
        let pinned = ResolverSpec::parse(&format!(
            "https://127.0.0.1:4443?pin={}",
            encode_pin(&[7; 32])
        ))
        .expect("pinned");
        assert_eq!(pinned.pin(), Some([7; 32]));
        assert_eq!(
            ResolverSpec::parse(&pinned.to_string()).expect("round trip"),
            pinned
        );
    }

    #[test]
    fn bad_specs_say_why() {
        for (input, why) in [
            ("http://9.9.9.9", "expected https://"),
            ("https://dns.quad9.net/dns-query", "by IP address"),
            ("https://9.9.9.9?ip=1.1.1.1", "different addresses"),
            ("https://9.9.9.9:0", "bad host or port"),
            ("https://9.9.9.9:99999", "bad host or port"),
            ("tls://1.1.1.1/dns-query", "no path"),
            ("https://9.9.9.9?pin=abc", "bad pin"),
            ("https://9.9.9.9?port=5", "unknown parameter"),
            ("https://bad..name?ip=9.9.9.9", "not a valid host name"),
            ("", "expected"),
        ] {
            let err = ResolverSpec::parse(input).expect_err(input);
            assert!(err.to_string().contains(why), "{input}: {err}");
        }
    }

    #[test]
    fn the_resolver_is_on_the_allowlist_by_address() {
        let spec =
            ResolverSpec::parse("https://dns.quad9.net/dns-query?ip=::ffff:9.9.9.9").expect("spec");
        let entries = spec.entries().expect("entries");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].host.to_string(), "9.9.9.9");
        assert_eq!((entries[0].port, entries[0].proto), (443, Proto::Tcp));
        assert_eq!(entries[0].source, EntrySource::Resolver);
        let dot = ResolverSpec::parse("tls://1.1.1.1")
            .expect("dot")
            .entries()
            .expect("entries");
        assert_eq!((dot[0].port, dot[0].proto), (853, Proto::Tcp));
    }

    #[test]
    fn lists_read_in_order_and_print_back() {
        let list = ResolverList::parse(DEFAULT_RESOLVER).expect("default");
        assert_eq!(list.specs().len(), 2);
        assert_eq!(list.to_string(), DEFAULT_RESOLVER);
        let ips: Vec<String> = list
            .entries()
            .expect("entries")
            .iter()
            .map(|e| e.host.to_string())
            .collect();
        assert_eq!(
            ips,
            ["9.9.9.9", "1.1.1.1"],
            "both on the allowlist, in order"
        );

        let list = ResolverList::parse(" tls://1.1.1.1 ,https://9.9.9.9,tls://[2620:fe::fe]")
            .expect("three");
        assert_eq!(
            list.to_string(),
            "tls://1.1.1.1, https://9.9.9.9/dns-query, tls://[2620:fe::fe]"
        );
        assert_eq!(ResolverList::parse(&list.to_string()), Ok(list.clone()));
        assert!(list.is_encrypted());
        // One spec is a list of one.
        assert_eq!(
            ResolverList::parse("system"),
            Ok(ResolverList::from(ResolverSpec::System))
        );
        // The same address by another kind is another resolver.
        assert!(ResolverList::parse("tls://1.1.1.1, https://1.1.1.1").is_ok());
    }

    #[test]
    fn bad_lists_say_why() {
        for (input, why) in [
            ("tls://1.1.1.1, system", "cannot be combined"),
            ("system, tls://1.1.1.1", "cannot be combined"),
            ("tls://1.1.1.1,", "an empty entry"),
            ("tls://1.1.1.1,,https://9.9.9.9", "an empty entry"),
            ("tls://1.1.1.1, tls://1.1.1.1:853", "listed twice"),
            (
                "https://9.9.9.9, https://dns.quad9.net/x?ip=9.9.9.9",
                "listed twice",
            ),
            ("tls://1.1.1.1, http://9.9.9.9", "expected https://"),
        ] {
            let err = ResolverList::parse(input).expect_err(input);
            assert!(err.to_string().contains(why), "{input}: {err}");
        }
    }

    #[test]
    fn a_resolver_failing_again_waits_twice_as_long_up_to_an_hour() {
        let first = Duration::from_secs(300);
        let waits: Vec<u64> = [1, 2, 3, 4, 5, 40]
            .map(|n| wait_after(first, n).as_secs() / 60)
            .to_vec();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60]);
        assert_eq!(wait_after(Duration::from_secs(7200), 3).as_secs(), 7200);
    }

    #[test]
    fn pins_round_trip() {
        let pin: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(decode_pin(&encode_pin(&pin)), Some(pin));
        assert_eq!(encode_pin(&pin).len(), 43);
        assert_eq!(decode_pin("AAAA"), None);
    }
}
