//! What a component asks to reach, normalised so that one endpoint has one
//! spelling: IP literals in every notation browsers and `inet_aton` accept,
//! IPv4-mapped IPv6 folded to IPv4, names lower-cased without a trailing dot.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::TargetError;

/// Transport protocol of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A DNS name, lower-case, without a trailing dot, each label checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    pub fn parse(s: &str) -> Result<Self, TargetError> {
        let bad = || TargetError::BadName(s.to_string());
        let trimmed = s.strip_suffix('.').unwrap_or(s);
        if trimmed.is_empty() || trimmed.len() > 253 {
            return Err(bad());
        }
        for label in trimmed.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(bad());
            }
        }
        Ok(Self(trimmed.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `localhost` and its subdomains always mean this machine.
    pub fn is_localhost(&self) -> bool {
        self.0 == "localhost" || self.0.ends_with(".localhost")
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host: an address or a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    Ip(IpAddr),
    Name(Name),
}

impl Host {
    /// Parses a host as written anywhere: `1.2.3.4`, `0x7f.1`, `2130706433`,
    /// `[::ffff:127.0.0.1]`, `Example.ORG.` … IP literals are recognised
    /// before names, so a numeric spelling never passes as a name.
    pub fn parse(s: &str) -> Result<Self, TargetError> {
        let inner = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(v6) = inner.parse::<Ipv6Addr>() {
            return Ok(Host::Ip(canonical_ip(IpAddr::V6(v6))));
        }
        if inner != s {
            return Err(TargetError::BadAddress(s.to_string()));
        }
        if let Some(v4) = parse_ipv4_any(s) {
            return Ok(Host::Ip(IpAddr::V4(v4)));
        }
        // Something that looks numeric but is no valid address is refused
        // rather than sent to a resolver as a "name".
        let last = s
            .strip_suffix('.')
            .unwrap_or(s)
            .rsplit('.')
            .next()
            .unwrap_or("");
        if !last.is_empty() && (last.bytes().all(|b| b.is_ascii_digit()) || is_hex_literal(last)) {
            return Err(TargetError::BadAddress(s.to_string()));
        }
        Ok(Host::Name(Name::parse(s)?))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => write!(f, "{n}"),
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is the IPv4 address it maps.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// A socket address with its IP made canonical.
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

fn is_hex_literal(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    l.strip_prefix("0x")
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// One part of an `inet_aton` address: decimal, `0`-prefixed octal, or `0x` hex.
fn parse_part(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let lower = s.to_ascii_lowercase();
    let v = if let Some(hex) = lower.strip_prefix("0x") {
        if hex.is_empty() {
            0
        } else {
            u64::from_str_radix(hex, 16).ok()?
        }
    } else if lower.len() > 1 && lower.starts_with('0') {
        u64::from_str_radix(&lower[1..], 8).ok()?
    } else {
        lower.parse::<u64>().ok()?
    };
    (v <= u64::from(u32::MAX)).then_some(v)
}

/// IPv4 in every `inet_aton` form: `a.b.c.d`, `a.b.c`, `a.b`, `a`, each part
/// decimal, octal or hex, with an optional trailing dot (as browsers read them).
fn parse_ipv4_any(s: &str) -> Option<Ipv4Addr> {
    let s = s.strip_suffix('.').unwrap_or(s);
    let parts: Vec<u64> = s.split('.').map(parse_part).collect::<Option<_>>()?;
    let (last, init) = parts.split_last()?;
    if init.len() > 3 || init.iter().any(|p| *p > 255) {
        return None;
    }
    let width = 8 * (4 - init.len() as u32);
    if width < 32 && *last >= 1u64 << width {
        return None;
    }
    let mut v: u64 = 0;
    for (i, p) in init.iter().enumerate() {
        v |= p << (24 - 8 * i as u32);
    }
    v |= last;
    Some(Ipv4Addr::from(u32::try_from(v).ok()?))
}

/// One endpoint a component asked for: host, port and protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: Host,
    pub port: u16,
    pub proto: Proto,
}

impl Target {
    pub fn new(host: Host, port: u16, proto: Proto) -> Self {
        Self { host, port, proto }
    }

    pub fn addr(addr: SocketAddr, proto: Proto) -> Self {
        Self::new(Host::Ip(canonical_ip(addr.ip())), addr.port(), proto)
    }

    /// Parses `HOST:PORT`, `[V6]:PORT` or a URL (`https://host/…`, whose
    /// port defaults by scheme). Without a port or scheme, `default_port`.
    pub fn parse(s: &str, proto: Proto, default_port: Option<u16>) -> Result<Self, TargetError> {
        let (scheme_port, rest) = match s.split_once("://") {
            Some((scheme, rest)) => {
                let port = match scheme.to_ascii_lowercase().as_str() {
                    "http" => 80,
                    "https" | "burrow-relay" => 443,
                    _ => return Err(TargetError::BadScheme(scheme.to_string())),
                };
                (Some(port), rest)
            }
            None => (None, s),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        let (host, port) = if authority.starts_with('[') {
            match authority.split_once("]:") {
                Some((h, p)) => (format!("{h}]"), Some(p)),
                None => (authority.to_string(), None),
            }
        } else if authority.matches(':').count() == 1 {
            let (h, p) = authority.split_once(':').unwrap_or((authority, ""));
            (h.to_string(), Some(p))
        } else {
            (authority.to_string(), None)
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| TargetError::BadPort(p.to_string()))?,
            None => scheme_port
                .or(default_port)
                .ok_or_else(|| TargetError::MissingPort(s.to_string()))?,
        };
        Ok(Self::new(Host::parse(&host)?, port, proto))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.host, self.port, self.proto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        match Host::parse(s) {
            Ok(Host::Ip(ip)) => ip,
            other => panic!("{s} -> {other:?}"),
        }
    }

    #[test]
    fn every_spelling_of_loopback_is_loopback() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for s in [
            "127.0.0.1",
            "127.1",
            "127.0.1",
            "2130706433",
            "0x7f000001",
            "0x7F.1",
            "0177.0.0.1",
            "0177.0.0.01",
            "127.0.0.1.",
            "[::ffff:127.0.0.1]",
            "::ffff:7f00:1",
        ] {
            assert_eq!(ip(s), lo, "{s}");
        }
        assert_eq!(ip("0"), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(ip("0x"), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(ip("[::]"), IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }

    #[test]
    fn names_have_one_spelling() {
        for s in ["Example.ORG", "example.org.", "EXAMPLE.org."] {
            assert_eq!(
                Host::parse(s).expect(s),
                Host::Name(Name::parse("example.org").expect("name"))
            );
        }
        assert!(Name::parse("LOCALHOST.").expect("name").is_localhost());
        assert!(Name::parse("a.localhost").expect("name").is_localhost());
        for bad in [
            "",
            ".",
            "a..b",
            "-a.org",
            "a b.org",
            "256.1.1.1",
            "1.2.3.4.5",
            "1.2.3.09",
            "[1.2.3.4]",
            "[::1",
        ] {
            assert!(Host::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn targets_from_urls_and_pairs() {
        let t = Target::parse("https://Relay.Example.org/api?x", Proto::Tcp, None).expect("url");
        assert_eq!(t.to_string(), "relay.example.org:443/tcp");
        let t = Target::parse("[::1]:8443", Proto::Udp, None).expect("v6");
        assert_eq!(t.to_string(), "[::1]:8443/udp");
        let t = Target::parse("http://user@0x7f.1:8080/", Proto::Tcp, None).expect("user");
        assert_eq!(t.to_string(), "127.0.0.1:8080/tcp");
        let t = Target::parse("::1", Proto::Tcp, Some(53)).expect("bare v6");
        assert_eq!(t.to_string(), "[::1]:53/tcp");
        assert!(Target::parse("example.org", Proto::Tcp, None).is_err());
        assert!(Target::parse("example.org:0", Proto::Tcp, None).is_err());
        assert!(Target::parse("example.org:70000", Proto::Tcp, None).is_err());
        assert!(Target::parse("gopher://example.org", Proto::Tcp, None).is_err());
    }
}
