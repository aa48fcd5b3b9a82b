//! The relay line: one copy-pasteable string with everything a client needs
//! to reach a relay, and a checksum so a typo is caught rather than dialled.
//!
//! ```text
//! burrow-relay://HOST:PORT/PATH?k=KEY&c=CARRIERS[&pin=PIN][&ip=IP][&id=ID][&via=proxy]&x=CHECK
//!
//! HOST      DNS name used for TLS (SNI and certificate), or an IP literal
//! PORT      TCP and UDP port of the relay's web server
//! PATH      the site path that carries tunnels, e.g. /api/v2/events
//! KEY       the relay's gate public key, 32 bytes, base64url
//! CARRIERS  "h2", "h3", "ws" (HTTP/1.1 WebSocket upgrade), comma-separated,
//!           in the order the client tries them
//! PIN       SHA-256 of a self-signed certificate, base64url; without it the
//!           certificate must verify against the usual web roots for HOST
//! IP        address to dial instead of resolving HOST (tests, demos, or a
//!           relay without DNS)
//! ID        the relay's node id inside the tunnel (base58, opaque here;
//!           the messaging node checks it is the peer it reaches)
//! via=proxy the relay sits behind a web server that terminates TLS: the
//!           gate binds to the time instead of the TLS connection
//! CHECK     first 4 bytes of SHA-256 over everything before "&x=", hex
//! ```

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::gate::GatePublic;
use crate::tls::CertPin;

const SCHEME: &str = "burrow-relay://";
/// Longest line accepted; real lines are about 150 characters.
pub const MAX_LINE_LEN: usize = 1024;

/// A carrier a relay offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Carrier {
    /// TLS 1.3 over TCP, HTTP/2.
    H2,
    /// QUIC v1 over UDP, HTTP/3.
    H3,
    /// TLS over TCP, HTTP/1.1 with a WebSocket upgrade: passes proxies and
    /// CDNs that carry WebSockets but not streaming HTTP/2 requests.
    Ws,
}

impl Carrier {
    pub fn name(self) -> &'static str {
        match self {
            Carrier::H2 => "h2",
            Carrier::H3 => "h3",
            Carrier::Ws => "ws",
        }
    }
}

impl fmt::Display for Carrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Carrier {
    type Err = LineError;
    fn from_str(s: &str) -> Result<Self, LineError> {
        match s {
            "h2" => Ok(Carrier::H2),
            "h3" => Ok(Carrier::H3),
            "ws" => Ok(Carrier::Ws),
            other => Err(LineError::UnknownCarrier(other.to_string())),
        }
    }
}

/// Everything a client needs to reach one relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLine {
    pub host: String,
    pub port: u16,
    pub path: String,
    pub key: GatePublic,
    pub carriers: Vec<Carrier>,
    pub pin: Option<CertPin>,
    pub ip: Option<IpAddr>,
    pub id: Option<String>,
    /// Behind a TLS-terminating proxy: gates use [`crate::gate::Binding::Proxied`].
    pub proxied: bool,
}

/// Why a relay line was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("does not start with {SCHEME}")]
    Scheme,
    #[error("longer than {MAX_LINE_LEN} characters")]
    TooLong,
    #[error("checksum missing or wrong: the line was changed or mistyped")]
    Checksum,
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("bad {field}: {reason}")]
    Bad { field: &'static str, reason: String },
    #[error("unknown carrier {0:?} (expected h2, h3 or ws)")]
    UnknownCarrier(String),
    #[error("unknown field {0:?}")]
    UnknownField(String),
}

impl RelayLine {
    /// The authority to dial and to name in TLS.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The line without its scheme and checksum; [`RelayLine::from_body`]
    /// reads it back.
    pub fn body_text(&self) -> String {
        self.body()[SCHEME.len()..].to_string()
    }

    fn body(&self) -> String {
        let carriers: Vec<&str> = self.carriers.iter().map(|c| c.name()).collect();
        let mut s = format!(
            "{SCHEME}{}{}?k={}&c={}",
            self.authority(),
            self.path,
            URL_SAFE_NO_PAD.encode(self.key.as_bytes()),
            carriers.join(",")
        );
        if let Some(pin) = &self.pin {
            s.push_str("&pin=");
            s.push_str(&URL_SAFE_NO_PAD.encode(pin.0));
        }
        if let Some(ip) = &self.ip {
            s.push_str("&ip=");
            s.push_str(&ip.to_string());
        }
        if let Some(id) = &self.id {
            s.push_str("&id=");
            s.push_str(id);
        }
        if self.proxied {
            s.push_str("&via=proxy");
        }
        s
    }
}

fn checksum(body: &str) -> String {
    let d = Sha256::digest(body.as_bytes());
    format!("{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
}

impl fmt::Display for RelayLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = self.body();
        write!(f, "{body}&x={}", checksum(&body))
    }
}

impl FromStr for RelayLine {
    type Err = LineError;

    fn from_str(line: &str) -> Result<Self, LineError> {
        let line = line.trim();
        if line.len() > MAX_LINE_LEN {
            return Err(LineError::TooLong);
        }
        let rest = line.strip_prefix(SCHEME).ok_or(LineError::Scheme)?;
        let (body_len, check) = match line.rfind("&x=") {
            Some(i) => (i, &line[i + 3..]),
            None => return Err(LineError::Checksum),
        };
        if checksum(&line[..body_len]) != check {
            return Err(LineError::Checksum);
        }
        Self::from_body(&rest[..body_len - SCHEME.len()])
    }
}

impl RelayLine {
    /// Parses the part of a line between the scheme and `&x=` — for formats
    /// that embed a relay line under their own checksum (a user's address).
    pub fn from_body(rest: &str) -> Result<Self, LineError> {
        if rest.len() > MAX_LINE_LEN {
            return Err(LineError::TooLong);
        }
        let (location, query) = rest.split_once('?').ok_or(LineError::Missing("key"))?;
        let slash = location.find('/').ok_or(LineError::Missing("path"))?;
        let (authority, path) = location.split_at(slash);
        let (host, port) = parse_authority(authority)?;
        validate_path(path)?;

        let mut key = None;
        let mut carriers = None;
        let mut pin = None;
        let mut ip = None;
        let mut id = None;
        let mut proxied = false;
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').ok_or_else(|| LineError::Bad {
                field: "query",
                reason: format!("{pair:?} is not name=value"),
            })?;
            match name {
                "k" => key = Some(GatePublic::from_bytes(decode32("key", value)?)),
                "c" => {
                    let list = value
                        .split(',')
                        .map(Carrier::from_str)
                        .collect::<Result<Vec<_>, _>>()?;
                    carriers = Some(list);
                }
                "pin" => pin = Some(CertPin(decode32("pin", value)?)),
                "ip" => {
                    ip = Some(value.parse().map_err(|_| LineError::Bad {
                        field: "ip",
                        reason: format!("{value:?} is not an IP address"),
                    })?)
                }
                "id" => {
                    let base58 = |c: char| c.is_ascii_alphanumeric() && !"0OIl".contains(c);
                    if value.is_empty() || value.len() > 64 || !value.chars().all(base58) {
                        return Err(LineError::Bad {
                            field: "id",
                            reason: "not a base58 node id".into(),
                        });
                    }
                    id = Some(value.to_string());
                }
                "via" if value == "proxy" => proxied = true,
                "via" => {
                    return Err(LineError::Bad {
                        field: "via",
                        reason: format!("{value:?} (expected proxy)"),
                    })
                }
                other => return Err(LineError::UnknownField(other.to_string())),
            }
        }
        let carriers = carriers.ok_or(LineError::Missing("carriers"))?;
        let distinct: std::collections::HashSet<_> = carriers.iter().collect();
        if carriers.is_empty() || distinct.len() != carriers.len() {
            return Err(LineError::Bad {
                field: "carriers",
                reason: "list h2, h3 and/or ws, each at most once".into(),
            });
        }
        Ok(RelayLine {
            host,
            port,
            path: path.to_string(),
            key: key.ok_or(LineError::Missing("key"))?,
            carriers,
            pin,
            ip,
            id,
            proxied,
        })
    }
}

fn parse_authority(a: &str) -> Result<(String, u16), LineError> {
    let bad = |reason: &str| LineError::Bad {
        field: "host:port",
        reason: reason.to_string(),
    };
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| bad("IPv6 needs [addr]:port"))?;
        h.parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad("not an IPv6 address inside [ ]"))?;
        (h, p)
    } else {
        a.rsplit_once(':').ok_or_else(|| bad("missing :port"))?
    };
    let port: u16 = port
        .parse()
        .map_err(|_| bad("port is not a number 1-65535"))?;
    if port == 0 {
        return Err(bad("port 0"));
    }
    if host.is_empty()
        || host.len() > 253
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
    {
        return Err(bad("host must be a DNS name or an IP address"));
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// Checks a tunnel path: absolute, only characters that need no escaping.
pub fn validate_path(path: &str) -> Result<(), LineError> {
    let ok = path.starts_with('/')
        && path.len() <= 128
        && !path.contains("//")
        && !path.split('/').any(|seg| seg == "." || seg == "..")
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(LineError::Bad {
            field: "path",
            reason: "must start with / and use only letters, digits, / - _ .".into(),
        })
    }
}

fn decode32(field: &'static str, value: &str) -> Result<[u8; 32], LineError> {
    let raw = URL_SAFE_NO_PAD.decode(value).map_err(|_| LineError::Bad {
        field,
        reason: "not base64url".into(),
    })?;
    raw.try_into().map_err(|_| LineError::Bad {
        field,
        reason: "must be 32 bytes".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RelayLine {
        RelayLine {
            host: "example.org".into(),
            port: 8443,
            path: "/api/v2/events".into(),
            key: GatePublic::from_bytes([7; 32]),
            carriers: vec![Carrier::H2, Carrier::H3],
            pin: Some(CertPin([9; 32])),
            ip: Some("127.0.0.1".parse().expect("literal")),
            id: None,
            proxied: false,
        }
    }

    #[test]
    fn round_trips() {
        let line = sample();
        let text = line.to_string();
        assert_eq!(text.parse::<RelayLine>(), Ok(line));
        let mut v6 = sample();
        v6.host = "::1".into();
        v6.pin = None;
        v6.ip = None;
        v6.carriers = vec![Carrier::H3];
        v6.id = Some("12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".into());
        assert_eq!(v6.to_string().parse::<RelayLine>(), Ok(v6.clone()));
        let mut proxied = sample();
        proxied.carriers = vec![Carrier::Ws, Carrier::H2];
        proxied.proxied = true;
        let text = proxied.to_string();
        assert!(
            text.contains("c=ws,h2") && text.contains("&via=proxy&x="),
            "{text}"
        );
        assert_eq!(text.parse::<RelayLine>(), Ok(proxied));
        let mut bad = v6.to_string().replace("&id=12D3", "&id=0D3");
        let body = &bad[..bad.rfind("&x=").expect("check")];
        bad = format!("{body}&x={}", checksum(body));
        assert!(matches!(
            bad.parse::<RelayLine>(),
            Err(LineError::Bad { field: "id", .. })
        ));
    }

    #[test]
    fn fixture_parses() {
        let text = include_str!("../testdata/relay-line-v1.txt").trim();
        let line: RelayLine = text.parse().expect("fixture parses");
        assert_eq!(line, sample());
        assert_eq!(line.to_string(), text);
    }

    #[test]
    fn tampering_is_caught() {
        let text = sample().to_string();
        let tampered = text.replace("8443", "8444");
        assert_eq!(tampered.parse::<RelayLine>(), Err(LineError::Checksum));
        let cut = &text[..text.len() - 2];
        assert_eq!(cut.parse::<RelayLine>(), Err(LineError::Checksum));
        assert_eq!("https://x".parse::<RelayLine>(), Err(LineError::Scheme));
        let long = format!("{SCHEME}{}", "a".repeat(MAX_LINE_LEN));
        assert_eq!(long.parse::<RelayLine>(), Err(LineError::TooLong));
    }

    #[test]
    fn mutated_lines_parse_or_fail_cleanly() {
        // The fuzz target's property, on stable with a seeded generator:
        // no panic, and whatever parses prints back to the same value.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let base = sample().to_string().into_bytes();
        for _ in 0..20_000 {
            let mut m = base.clone();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..m.len());
                match rng.gen_range(0..3) {
                    0 => m[i] = rng.gen(),
                    1 => {
                        m.remove(i);
                    }
                    _ => m.insert(i, rng.gen_range(b' '..=b'~')),
                }
            }
            let Ok(text) = std::str::from_utf8(&m) else {
                continue;
            };
            if let Ok(line) = text.parse::<RelayLine>() {
                assert_eq!(line.to_string().parse::<RelayLine>(), Ok(line));
            }
        }
    }

    #[test]
    fn well_checksummed_nonsense_is_rejected_by_field() {
        let with_check = |body: &str| format!("{body}&x={}", checksum(body));
        let cases = [
            ("burrow-relay://h:1/p?c=h2", LineError::Missing("key")),
            (
                "burrow-relay://h:1/p?k=AAAA&c=h2",
                LineError::Bad {
                    field: "key",
                    reason: "must be 32 bytes".into(),
                },
            ),
            (
                "burrow-relay://h:1/p?k=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&c=h9",
                LineError::UnknownCarrier("h9".into()),
            ),
            (
                "burrow-relay://h:1/p?k=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&c=h2&z=1",
                LineError::UnknownField("z".into()),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(with_check(body).parse::<RelayLine>(), Err(want), "{body}");
        }
        for body in [
            "burrow-relay://h:0/p?k=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&c=h2",
            "burrow-relay://h:1/../p?k=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&c=h2",
            "burrow-relay://h h:1/p?k=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&c=h2",
            "burrow-relay://h:1/p?k=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&c=h2,h2",
            "burrow-relay://h:1/p?k=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&c=h2&ip=300.1.1.1",
            "burrow-relay://h:1/p?k=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&c=h2&via=cdn",
            "burrow-relay://h:1/p?k=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&c=ws,h3,ws",
        ] {
            assert!(
                matches!(
                    with_check(body).parse::<RelayLine>(),
                    Err(LineError::Bad { .. })
                ),
                "{body}"
            );
        }
    }
}
