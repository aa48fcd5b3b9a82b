//! The relay's configuration: a TOML file (`burrow relay --config FILE`)
//! and the command-line flags, which override it.
//!
//! Three steps, as everywhere in Burrow: the file is read into [`RawConfig`]
//! (serde; an unknown key anywhere is an error that names it), merged with
//! the flags, then checked and turned into [`RelayConfig`], whose fields
//! are typed values (`SocketAddr`, `PeerId`, [`ResolverList`], enums).
//! Mutually exclusive settings are a [`ConfigError::Conflict`] naming both.
//! A commented example is `contrib/relay.toml`.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use burrow_firewall::ResolverList;
use burrow_obfs::gate::ReplayLimits;
use burrow_obfs::{BackendAddr, Carrier};
use burrow_relay::{MailboxLimits, RelayLimits};
use libp2p::PeerId;
use serde::Deserialize;

use crate::cli::RelayArgs;

/// Where the relay listens when nothing says otherwise.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:443";
/// Messages the mailbox keeps per user when nothing says otherwise.
pub const DEFAULT_MAILBOX_PER_USER: usize = 1000;

/// A configuration that cannot be used, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {reason}")]
    Unreadable { path: String, reason: String },
    /// Bad TOML or an unknown key (the message names it, with its line).
    #[error("{path}: {reason}")]
    Syntax { path: String, reason: String },
    #[error("{} ({}): {reason}", key, flag_of(key))]
    Invalid { key: String, reason: String },
    #[error("{a} and {b} cannot both be set: {why}")]
    Conflict {
        a: String,
        b: String,
        why: &'static str,
    },
    #[error("{key} needs {needs}")]
    Missing { key: String, needs: String },
}

/// The flag that sets a file key, so an error names both ways of setting it.
fn flag_of(key: &str) -> &'static str {
    match key {
        "listen" => "--listen",
        "data_dir" => "--data-dir",
        "domain" => "--domain",
        "path" => "--path",
        "tls.cert" => "--cert",
        "tls.key" => "--key",
        "tls.self_signed" => "--self-signed",
        "site.dir" => "--site",
        "site.upstream" => "--upstream",
        "users.allow" => "--allow-user",
        "users.mailbox_per_user" => "--mailbox-per-user",
        "firewall.resolver" => "--resolver",
        "firewall.allow_local_networks" => "--allow-local-networks",
        "proxy.backend" => "--behind-proxy",
        "proxy.port" => "--public-port",
        "proxy.carriers" => "--proxy-carriers",
        "proxy.pin_cert" => "--pin-cert",
        "proxy.replay_window" => "no flag",
        "metrics.listen" => "--metrics",
        "drain_timeout" => "--drain-timeout",
        _ => "no flag",
    }
}

// ---------------------------------------------------------------- raw file

/// The file as written. Every section rejects keys it does not know.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub domain: Option<String>,
    pub path: Option<String>,
    /// Seconds to wait, after SIGTERM, for open circuits to end.
    pub drain_timeout: Option<u64>,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub site: RawSite,
    #[serde(default)]
    pub users: RawUsers,
    #[serde(default)]
    pub firewall: RawFirewall,
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub limits: RawLimits,
}

/// The relay's bounds; each key left out keeps its default (see
/// `contrib/relay.toml` for the defaults and what each one bounds).
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// TCP connections plus QUIC connections open at once.
    pub max_connections: Option<usize>,
    /// Users holding a reservation (reachable through the relay) at once.
    pub max_reservations: Option<usize>,
    /// Seconds a reservation lasts before the user's node renews it.
    pub reservation_duration: Option<u64>,
    pub reservations_per_ip_per_minute: Option<u32>,
    /// Circuits (one user reaching another) open at once, and per user.
    pub max_circuits: Option<usize>,
    pub max_circuits_per_user: Option<usize>,
    /// Seconds one circuit may last.
    pub circuit_duration: Option<u64>,
    /// Bytes one circuit may carry; 0: no limit.
    pub circuit_bytes: Option<u64>,
    pub circuits_per_user_per_minute: Option<u32>,
    pub circuits_per_ip_per_minute: Option<u32>,
    /// Seconds after which a connection with nothing going on is closed.
    pub idle_timeout: Option<u64>,
    /// MiB the mailboxes of all users may hold together.
    pub mailbox_total_mib: Option<usize>,
    /// Users whose location the tracker keeps.
    pub tracker_records: Option<usize>,
}

/// The operator's Prometheus endpoint (off unless `listen` is set).
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// IP:PORT for `GET /metrics`, e.g. 127.0.0.1:9100.
    pub listen: Option<String>,
}

/// Behind a web server that terminates TLS (nginx, Caddy).
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    /// Where the web server passes the tunnel location: IP:PORT or unix:/PATH.
    pub backend: Option<String>,
    /// The web server's public HTTPS port [default: 443].
    pub port: Option<u16>,
    /// What the web server carries: "h2" (grpc_pass) and/or "ws" (proxy_pass
    /// with the upgrade headers) [default: both].
    pub carriers: Option<Vec<String>>,
    /// The web server's certificate, to pin in the relay line when it is
    /// self-signed (a CA-issued one is checked against the web roots).
    pub pin_cert: Option<PathBuf>,
    /// Seconds a client's clock may be off, either way [default: 300].
    pub replay_window: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub self_signed: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub dir: Option<PathBuf>,
    pub upstream: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawUsers {
    /// User ids allowed to reserve and use the mailbox; absent: anyone.
    pub allow: Option<Vec<String>>,
    pub mailbox_per_user: Option<usize>,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawFirewall {
    /// One spec, several separated by commas, or a list of specs: kept as
    /// the comma-separated text `--resolver` takes.
    #[serde(default, deserialize_with = "specs")]
    pub resolver: Option<String>,
    pub allow_local_networks: Option<bool>,
}

/// `resolver = "SPEC, SPEC"` or `resolver = ["SPEC", "SPEC"]`, as one
/// comma-separated string.
fn specs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Specs;
    impl<'de> serde::de::Visitor<'de> for Specs {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a resolver spec (several separated by commas) or a list of specs")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut all = Vec::new();
            while let Some(spec) = seq.next_element::<String>()? {
                all.push(spec);
            }
            if all.is_empty() {
                return Err(serde::de::Error::custom("an empty list of resolvers"));
            }
            Ok(Some(all.join(", ")))
        }
    }
    d.deserialize_any(Specs)
}

impl RawConfig {
    pub fn parse(path: &str, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_string(),
            reason: e.to_string().trim_end().to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(&shown, &text)
    }

    /// Lays the flags over the file: a flag replaces what the file says
    /// for the same setting (the certificate flags replace `[tls]`, the
    /// site flags replace `[site]`).
    pub fn with_flags(mut self, args: &RelayArgs) -> Self {
        if let Some(l) = args.listen {
            self.listen = Some(l.to_string());
        }
        if args.data_dir.is_some() {
            self.data_dir = args.data_dir.clone();
        }
        if args.domain.is_some() {
            self.domain = args.domain.clone();
        }
        if args.path.is_some() {
            self.path = args.path.clone();
        }
        if args.cert.is_some() || args.self_signed.is_some() {
            self.tls = RawTls {
                cert: args.cert.clone(),
                key: args.key.clone(),
                self_signed: args.self_signed.clone(),
            };
        }
        if args.site.is_some() || args.upstream.is_some() {
            self.site = RawSite {
                dir: args.site.clone(),
                upstream: args.upstream.clone(),
            };
        }
        if !args.allow_user.is_empty() {
            self.users.allow = Some(args.allow_user.iter().map(PeerId::to_string).collect());
        }
        if args.mailbox_per_user.is_some() {
            self.users.mailbox_per_user = args.mailbox_per_user;
        }
        if args.resolver.is_some() {
            self.firewall.resolver = args.resolver.clone();
        }
        if args.allow_local_networks {
            self.firewall.allow_local_networks = Some(true);
        }
        if args.behind_proxy.is_some() {
            self.proxy.backend = args.behind_proxy.clone();
        }
        if args.public_port.is_some() {
            self.proxy.port = args.public_port;
        }
        if let Some(c) = &args.proxy_carriers {
            self.proxy.carriers = Some(c.split(',').map(|s| s.trim().to_string()).collect());
        }
        if args.pin_cert.is_some() {
            self.proxy.pin_cert = args.pin_cert.clone();
        }
        if args.drain_timeout.is_some() {
            self.drain_timeout = args.drain_timeout;
        }
        if let Some(m) = args.metrics {
            self.metrics.listen = Some(m.to_string());
        }
        self
    }
}

// ---------------------------------------------------------------- checked

/// The `[proxy]` section: present when `proxy.backend` is set; its other
/// keys without it, or the relay's own TLS or listen address with it, are
/// errors that name them.
fn check_proxy(raw: &RawConfig) -> Result<Option<ProxyChoice>, ConfigError> {
    let p = &raw.proxy;
    let Some(backend) = &p.backend else {
        let stray = [
            ("proxy.port", p.port.is_some()),
            ("proxy.carriers", p.carriers.is_some()),
            ("proxy.pin_cert", p.pin_cert.is_some()),
            ("proxy.replay_window", p.replay_window.is_some()),
        ];
        if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
            return Err(ConfigError::Missing {
                key: (*key).into(),
                needs: "proxy.backend (the address the web server passes tunnels to)".into(),
            });
        }
        return Ok(None);
    };
    let why = "behind a web server, the web server listens and holds the certificate";
    for (key, set) in [
        ("listen", raw.listen.is_some()),
        ("tls.cert", raw.tls.cert.is_some()),
        ("tls.self_signed", raw.tls.self_signed.is_some()),
    ] {
        if set {
            return Err(ConfigError::Conflict {
                a: "proxy.backend".into(),
                b: key.into(),
                why,
            });
        }
    }
    let backend: BackendAddr = backend
        .parse()
        .map_err(|e: burrow_obfs::ConfigError| invalid("proxy.backend", e))?;
    let Some(host) = raw.domain.clone() else {
        return Err(ConfigError::Missing {
            key: "proxy.backend".into(),
            needs: "domain: the web server's name, as users reach it".into(),
        });
    };
    let port = p.port.unwrap_or(443);
    if port == 0 {
        return Err(invalid("proxy.port", "must be 1-65535"));
    }
    let carriers = match &p.carriers {
        None => vec![Carrier::H2, Carrier::Ws],
        Some(list) => {
            let parsed = list
                .iter()
                .map(|c| match c.parse::<Carrier>() {
                    Ok(Carrier::H3) => Err(invalid(
                        "proxy.carriers",
                        "h3: the web server would need to pass HTTP/3 streams on; use h2 and/or ws",
                    )),
                    Ok(c) => Ok(c),
                    Err(e) => Err(invalid("proxy.carriers", e)),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let distinct: std::collections::HashSet<_> = parsed.iter().collect();
            if parsed.is_empty() || distinct.len() != parsed.len() {
                return Err(invalid("proxy.carriers", "list h2 and/or ws, each once"));
            }
            parsed
        }
    };
    let defaults = ReplayLimits::default();
    let skew_secs = p.replay_window.unwrap_or(defaults.skew_secs);
    if !(10..=86_400).contains(&skew_secs) {
        return Err(invalid(
            "proxy.replay_window",
            "seconds between 10 and 86400",
        ));
    }
    Ok(Some(ProxyChoice {
        backend,
        host,
        port,
        carriers,
        pin_cert: p.pin_cert.clone(),
        replay: ReplayLimits {
            skew_secs,
            ..defaults
        },
    }))
}

/// The relay's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsChoice {
    /// A certificate chain and key (PEM), for `domain`.
    Files {
        cert: PathBuf,
        key: PathBuf,
        domain: String,
    },
    /// A self-signed certificate for this name, made once and kept.
    SelfSigned(String),
}

/// What the website is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteChoice {
    Builtin,
    Dir(PathBuf),
    /// An `http://HOST[:PORT]` origin (checked when the proxy is built).
    Upstream(String),
}

/// Behind a web server: where it passes the tunnel location, and what the
/// relay line tells users about the web server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyChoice {
    pub backend: BackendAddr,
    /// The name users reach the web server by (`domain`).
    pub host: String,
    pub port: u16,
    pub carriers: Vec<Carrier>,
    pub pin_cert: Option<PathBuf>,
    pub replay: ReplayLimits,
}

/// A checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    pub listen: SocketAddr,
    pub data_dir: Option<PathBuf>,
    pub tls: TlsChoice,
    pub path: Option<String>,
    pub site: SiteChoice,
    /// `None`: anyone with the line; `Some`: only these users.
    pub allow_users: Option<Vec<PeerId>>,
    pub resolver: ResolverList,
    pub allow_local_networks: bool,
    /// `Some`: behind a web server; `listen` and `tls` are then unused.
    pub proxy: Option<ProxyChoice>,
    /// Where the Prometheus endpoint listens, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// After SIGTERM: how long open circuits may go on before the relay stops.
    pub drain: Duration,
    /// The relay's bounds (`[limits]`, with `users.mailbox_per_user`).
    pub limits: RelayLimits,
    /// TCP plus QUIC connections at once (`limits.max_connections`).
    pub max_connections: usize,
}

/// A count that must be at least 1 and at most `max`.
fn count(
    key: &str,
    value: Option<usize>,
    default: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if (1..=max).contains(&v) => Ok(v),
        Some(_) => Err(invalid(key, format!("between 1 and {max}"))),
    }
}

/// A per-minute rate, at least 1.
fn rate(key: &str, value: Option<u32>, default: NonZeroU32) -> Result<NonZeroU32, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => NonZeroU32::new(v).ok_or_else(|| invalid(key, "at least 1 per minute")),
    }
}

/// Seconds between `min` and `max`.
fn seconds(
    key: &str,
    value: Option<u64>,
    default: Duration,
    (min, max): (u64, u64),
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if (min..=max).contains(&v) => Ok(Duration::from_secs(v)),
        Some(_) => Err(invalid(key, format!("seconds between {min} and {max}"))),
    }
}

/// `[limits]` and `users.mailbox_per_user`, each checked and named.
fn check_limits(raw: &RawConfig) -> Result<(RelayLimits, usize), ConfigError> {
    let l = &raw.limits;
    let d = RelayLimits::default();
    let m = MailboxLimits::default();
    const MANY: usize = 10_000_000;
    let day = 24 * 3600;
    let mailbox_mib = count(
        "limits.mailbox_total_mib",
        l.mailbox_total_mib,
        m.total_bytes >> 20,
        1 << 20,
    )?;
    let limits = RelayLimits {
        max_reservations: count(
            "limits.max_reservations",
            l.max_reservations,
            d.max_reservations,
            MANY,
        )?,
        max_reservations_per_peer: d.max_reservations_per_peer,
        reservation_duration: seconds(
            "limits.reservation_duration",
            l.reservation_duration,
            d.reservation_duration,
            (60, day),
        )?,
        reservations_per_ip_per_minute: rate(
            "limits.reservations_per_ip_per_minute",
            l.reservations_per_ip_per_minute,
            d.reservations_per_ip_per_minute,
        )?,
        max_circuits: count("limits.max_circuits", l.max_circuits, d.max_circuits, MANY)?,
        max_circuits_per_peer: count(
            "limits.max_circuits_per_user",
            l.max_circuits_per_user,
            d.max_circuits_per_peer,
            MANY,
        )?,
        // The relay announces it in u32 seconds.
        circuit_duration: seconds(
            "limits.circuit_duration",
            l.circuit_duration,
            d.circuit_duration,
            (1, u64::from(u32::MAX)),
        )?,
        circuit_bytes: l.circuit_bytes.unwrap_or(d.circuit_bytes),
        circuits_per_peer_per_minute: rate(
            "limits.circuits_per_user_per_minute",
            l.circuits_per_user_per_minute,
            d.circuits_per_peer_per_minute,
        )?,
        circuits_per_ip_per_minute: rate(
            "limits.circuits_per_ip_per_minute",
            l.circuits_per_ip_per_minute,
            d.circuits_per_ip_per_minute,
        )?,
        idle_timeout: seconds(
            "limits.idle_timeout",
            l.idle_timeout,
            d.idle_timeout,
            (10, day),
        )?,
        mailbox: MailboxLimits {
            per_recipient: count(
                "users.mailbox_per_user",
                raw.users.mailbox_per_user,
                DEFAULT_MAILBOX_PER_USER,
                MANY,
            )?,
            total_bytes: mailbox_mib << 20,
            ..m
        },
        tracker_records: count(
            "limits.tracker_records",
            l.tracker_records,
            d.tracker_records,
            MANY,
        )?,
    };
    let max_connections = count(
        "limits.max_connections",
        l.max_connections,
        burrow_obfs::Limits::default().max_connections,
        MANY,
    )?;
    Ok((limits, max_connections))
}

/// How long a relay waits for open circuits after SIGTERM by default.
pub const DEFAULT_DRAIN_SECS: u64 = 20;

fn invalid(key: &str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

impl RelayConfig {
    /// Checks `raw` (the file with the flags laid over it).
    pub fn check(raw: RawConfig) -> Result<Self, ConfigError> {
        let proxy = check_proxy(&raw)?;
        let (limits, max_connections) = check_limits(&raw)?;
        let drain_secs = raw.drain_timeout.unwrap_or(DEFAULT_DRAIN_SECS);
        if drain_secs > 3600 {
            return Err(invalid("drain_timeout", "at most 3600 seconds"));
        }
        let drain = Duration::from_secs(drain_secs);
        let metrics = match &raw.metrics.listen {
            None => None,
            Some(text) => {
                let addr: SocketAddr = text.parse().map_err(|_| {
                    invalid(
                        "metrics.listen",
                        "expected ADDRESS:PORT, like 127.0.0.1:9100",
                    )
                })?;
                if addr.ip().is_unspecified() {
                    return Err(invalid(
                        "metrics.listen",
                        "name one address (127.0.0.1 for a Prometheus on this machine), not every interface",
                    ));
                }
                Some(addr)
            }
        };
        let listen = raw
            .listen
            .as_deref()
            .unwrap_or(DEFAULT_LISTEN)
            .parse::<SocketAddr>()
            .map_err(|_| {
                invalid(
                    "listen",
                    "expected ADDRESS:PORT, like 0.0.0.0:443 or [::]:443",
                )
            })?;
        let tls = match (raw.tls.cert, raw.tls.key, raw.tls.self_signed) {
            (Some(_), _, Some(_)) => {
                return Err(ConfigError::Conflict {
                    a: "tls.cert".into(),
                    b: "tls.self_signed".into(),
                    why: "the relay serves one certificate",
                })
            }
            (Some(_), None, None) => {
                return Err(ConfigError::Missing {
                    key: "tls.cert".into(),
                    needs: "tls.key (the certificate's private key)".into(),
                })
            }
            (None, Some(_), _) => {
                return Err(ConfigError::Missing {
                    key: "tls.key".into(),
                    needs: "tls.cert".into(),
                })
            }
            (Some(cert), Some(key), None) => {
                let Some(domain) = raw.domain.clone() else {
                    return Err(ConfigError::Missing {
                        key: "tls.cert".into(),
                        needs: "domain: the name users' clients check the certificate against"
                            .into(),
                    });
                };
                TlsChoice::Files { cert, key, domain }
            }
            (None, None, Some(name)) => TlsChoice::SelfSigned(name),
            (None, None, None) => {
                TlsChoice::SelfSigned(raw.domain.clone().unwrap_or_else(|| "localhost".into()))
            }
        };
        if let Some(d) = &raw.domain {
            burrow_firewall::Name::parse(d).map_err(|e| invalid("domain", e))?;
        }
        if let TlsChoice::SelfSigned(n) = &tls {
            burrow_firewall::Name::parse(n).map_err(|e| invalid("tls.self_signed", e))?;
        }
        if let Some(p) = &raw.path {
            burrow_obfs::relay_line::validate_path(p).map_err(|e| invalid("path", e))?;
        }
        let site = match (raw.site.dir, raw.site.upstream) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Conflict {
                    a: "site.dir".into(),
                    b: "site.upstream".into(),
                    why: "the site is either a directory or a proxy to an origin",
                })
            }
            (Some(d), None) => SiteChoice::Dir(d),
            (None, Some(u)) => {
                burrow_obfs::Origin::parse(&u).map_err(|e| invalid("site.upstream", e))?;
                SiteChoice::Upstream(u)
            }
            (None, None) => SiteChoice::Builtin,
        };
        let allow_users = match raw.users.allow {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(invalid(
                    "users.allow",
                    "an empty list would refuse everyone; leave the key out to serve anyone",
                ))
            }
            Some(list) => Some(
                list.iter()
                    .map(|s| {
                        s.parse::<PeerId>()
                            .map_err(|_| invalid("users.allow", format!("{s:?} is not a user id")))
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        let resolver = ResolverList::parse(
            raw.firewall
                .resolver
                .as_deref()
                .unwrap_or(burrow_firewall::DEFAULT_RESOLVER),
        )
        .map_err(|e| invalid("firewall.resolver", e))?;
        Ok(Self {
            listen,
            data_dir: raw.data_dir,
            tls,
            path: raw.path,
            site,
            allow_users,
            resolver,
            allow_local_networks: raw.firewall.allow_local_networks.unwrap_or(false),
            proxy,
            metrics,
            drain,
            limits,
            max_connections,
        })
    }

    /// The configuration `burrow relay` runs with: `--config FILE` if
    /// given, with the flags over it.
    pub fn from_args(args: &RelayArgs) -> Result<Self, ConfigError> {
        let raw = match &args.config {
            Some(path) => RawConfig::load(path)?,
            None => RawConfig::default(),
        };
        Self::check(raw.with_flags(args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<RelayConfig, ConfigError> {
        RelayConfig::check(RawConfig::parse("relay.toml", text)?)
    }

    #[test]
    fn a_full_file_becomes_typed_values() {
        let user = PeerId::random();
        let c = check(&format!(
            r#"
listen = "[::]:8443"
data_dir = "/var/lib/burrow"
domain = "relay.example.org"
path = "/api/v2/events/5e1f0c2a"
[tls]
cert = "/etc/ssl/fullchain.pem"
key = "/etc/ssl/privkey.pem"
[site]
upstream = "http://127.0.0.1:8080"
[users]
allow = ["{user}"]
mailbox_per_user = 50
[firewall]
resolver = ["tls://1.1.1.1", "https://dns.quad9.net/dns-query?ip=9.9.9.9"]
allow_local_networks = true
"#
        ))
        .expect("valid");
        assert_eq!(c.listen, "[::]:8443".parse().expect("addr"));
        assert_eq!(
            c.tls,
            TlsChoice::Files {
                cert: "/etc/ssl/fullchain.pem".into(),
                key: "/etc/ssl/privkey.pem".into(),
                domain: "relay.example.org".into()
            }
        );
        assert_eq!(c.site, SiteChoice::Upstream("http://127.0.0.1:8080".into()));
        assert_eq!(c.allow_users, Some(vec![user]));
        assert_eq!(c.limits.mailbox.per_recipient, 50);
        assert_eq!(
            c.resolver.to_string(),
            "tls://1.1.1.1, https://dns.quad9.net/dns-query?ip=9.9.9.9"
        );
        assert!(c.allow_local_networks);
    }

    #[test]
    fn a_relay_behind_a_web_server() {
        let c = check(
            r#"
domain = "blog.example.org"
path = "/api/v2/events/5e1f0c2a"
[site]
dir = "/var/www/html"
[proxy]
backend = "unix:/run/burrow/relay.sock"
carriers = ["ws"]
pin_cert = "/etc/nginx/self.crt"
replay_window = 120
"#,
        )
        .expect("valid");
        let p = c.proxy.expect("proxy mode");
        assert_eq!(
            p.backend,
            BackendAddr::Unix("/run/burrow/relay.sock".into())
        );
        assert_eq!((p.host.as_str(), p.port), ("blog.example.org", 443));
        assert_eq!(p.carriers, vec![Carrier::Ws]);
        assert_eq!(p.pin_cert, Some(PathBuf::from("/etc/nginx/self.crt")));
        assert_eq!(p.replay.skew_secs, 120);
        let d = check("domain = \"a.org\"\n[proxy]\nbackend = \"127.0.0.1:9000\"")
            .expect("valid")
            .proxy
            .expect("proxy");
        assert_eq!(d.carriers, vec![Carrier::H2, Carrier::Ws]);
    }

    #[test]
    fn limits_are_read_and_the_rest_keep_their_defaults() {
        let c = check(
            r#"
[users]
mailbox_per_user = 10
[limits]
max_connections = 20000
max_reservations = 15000
max_circuits = 30000
max_circuits_per_user = 8
circuit_duration = 3600
circuit_bytes = 1048576
reservations_per_ip_per_minute = 5
idle_timeout = 300
mailbox_total_mib = 64
"#,
        )
        .expect("valid");
        let d = RelayLimits::default();
        assert_eq!(c.max_connections, 20_000);
        let l = &c.limits;
        assert_eq!((l.max_reservations, l.max_circuits), (15_000, 30_000));
        assert_eq!(l.max_circuits_per_peer, 8);
        assert_eq!(l.circuit_duration, Duration::from_secs(3600));
        assert_eq!(l.circuit_bytes, 1 << 20);
        assert_eq!(l.reservations_per_ip_per_minute.get(), 5);
        assert_eq!(l.idle_timeout, Duration::from_secs(300));
        assert_eq!(l.mailbox.per_recipient, 10);
        assert_eq!(l.mailbox.total_bytes, 64 << 20);
        assert_eq!(l.mailbox.max_age, d.mailbox.max_age);
        assert_eq!(l.circuits_per_ip_per_minute, d.circuits_per_ip_per_minute);
        assert_eq!(l.tracker_records, d.tracker_records);
        assert_eq!(l.validate(), Ok(()));
        assert_eq!(check("").expect("empty").limits, d);
    }

    #[test]
    fn a_limit_out_of_range_is_named() {
        for (text, key) in [
            ("max_connections = 0", "limits.max_connections"),
            ("max_circuits_per_user = 0", "limits.max_circuits_per_user"),
            ("circuit_duration = 0", "limits.circuit_duration"),
            ("reservation_duration = 5", "limits.reservation_duration"),
            ("idle_timeout = 1", "limits.idle_timeout"),
            (
                "circuits_per_user_per_minute = 0",
                "limits.circuits_per_user_per_minute",
            ),
            ("mailbox_total_mib = 0", "limits.mailbox_total_mib"),
            ("tracker_records = 0", "limits.tracker_records"),
        ] {
            let e = check(&format!("[limits]\n{text}")).expect_err(text);
            assert!(
                matches!(&e, ConfigError::Invalid { key: k, .. } if k == key),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn nothing_set_means_the_defaults() {
        let c = check("").expect("empty file");
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().expect("addr"));
        assert_eq!(c.tls, TlsChoice::SelfSigned("localhost".into()));
        assert_eq!(c.site, SiteChoice::Builtin);
        assert_eq!(c.allow_users, None);
        assert_eq!(c.limits.mailbox.per_recipient, DEFAULT_MAILBOX_PER_USER);
        assert_eq!(c.resolver.to_string(), burrow_firewall::DEFAULT_RESOLVER);
        assert!(!c.allow_local_networks);
    }

    #[test]
    fn unknown_keys_are_named_in_every_section() {
        for (text, key) in [
            ("lisen = \"0.0.0.0:443\"", "lisen"),
            ("[tls]\ncertificate = \"x\"", "certificate"),
            ("[site]\nroot = \"/var/www\"", "root"),
            ("[users]\nallowed = []", "allowed"),
            ("[firewall]\ndns = \"x\"", "dns"),
            ("[metrics]\naddress = \"127.0.0.1:9000\"", "address"),
            ("[logging]\nlevel = \"info\"", "logging"),
            ("[proxy]\nupstream = \"127.0.0.1:9000\"", "upstream"),
        ] {
            let err = check(text).expect_err(text).to_string();
            assert!(
                err.contains(key) && err.contains("relay.toml"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn conflicts_and_bad_values_name_their_keys() {
        for (text, names) in [
            (
                "[tls]\ncert = \"a\"\nkey = \"b\"\nself_signed = \"x.org\"",
                &["tls.cert", "tls.self_signed"][..],
            ),
            (
                "[site]\ndir = \"/var/www\"\nupstream = \"http://127.0.0.1\"",
                &["site.dir", "site.upstream"],
            ),
            ("[tls]\ncert = \"a\"\nkey = \"b\"", &["tls.cert", "domain"]),
            ("[tls]\ncert = \"a\"", &["tls.cert", "tls.key"]),
            ("listen = \"443\"", &["listen"]),
            ("path = \"no-slash\"", &["path"]),
            ("domain = \"bad..name\"", &["domain"]),
            ("[site]\nupstream = \"ftp://x\"", &["site.upstream"]),
            ("[users]\nallow = []", &["users.allow"]),
            ("[users]\nallow = [\"nobody\"]", &["users.allow", "nobody"]),
            ("[users]\nmailbox_per_user = 0", &["users.mailbox_per_user"]),
            ("[firewall]\nresolver = \"udp://x\"", &["firewall.resolver"]),
            ("[firewall]\nresolver = []", &["resolver = []", "an empty list"]),
            ("[firewall]\nresolver = 5", &["resolver = 5", "list of specs"]),
            (
                "[firewall]\nresolver = [\"tls://1.1.1.1\", \"system\"]",
                &["firewall.resolver", "cannot be combined"],
            ),
            ("listen = 443", &["listen"]),
            ("[metrics]\nlisten = \"0.0.0.0:9100\"", &["metrics.listen", "--metrics"]),
            ("[metrics]\nlisten = \"9100\"", &["metrics.listen"]),
            ("drain_timeout = 7200", &["drain_timeout", "--drain-timeout"]),
            (
                "domain = \"a.org\"\n[tls]\nself_signed = \"a.org\"\n[proxy]\nbackend = \"127.0.0.1:9000\"",
                &["proxy.backend", "tls.self_signed"],
            ),
            (
                "listen = \"0.0.0.0:443\"\ndomain = \"a.org\"\n[proxy]\nbackend = \"127.0.0.1:9000\"",
                &["proxy.backend", "listen"],
            ),
            ("[proxy]\nbackend = \"127.0.0.1:9000\"", &["proxy.backend", "domain"]),
            ("domain = \"a.org\"\n[proxy]\nbackend = \"0.0.0.0:9000\"", &["proxy.backend"]),
            ("[proxy]\nport = 8443", &["proxy.port", "proxy.backend"]),
            (
                "domain = \"a.org\"\n[proxy]\nbackend = \"127.0.0.1:9000\"\ncarriers = [\"h3\"]",
                &["proxy.carriers", "h3"],
            ),
            (
                "domain = \"a.org\"\n[proxy]\nbackend = \"127.0.0.1:9000\"\nreplay_window = 1",
                &["proxy.replay_window"],
            ),
        ] {
            let err = check(text).expect_err(text).to_string();
            for n in names {
                assert!(err.contains(n), "{text}: {err} should name {n}");
            }
        }
    }

    #[test]
    fn flags_override_the_file() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            relay: RelayArgs,
        }
        let raw = RawConfig::parse(
            "relay.toml",
            "listen = \"0.0.0.0:443\"\n[site]\nupstream = \"http://127.0.0.1:8080\"\n[tls]\nself_signed = \"a.example\"\n[users]\nmailbox_per_user = 5",
        )
        .expect("file");
        let args = T::parse_from([
            "t",
            "--listen",
            "127.0.0.1:8443",
            "--site",
            "/srv/www",
            "--mailbox-per-user",
            "9",
        ])
        .relay;
        let c = RelayConfig::check(raw.with_flags(&args)).expect("merged");
        assert_eq!(c.listen, "127.0.0.1:8443".parse().expect("addr"));
        assert_eq!(
            c.site,
            SiteChoice::Dir("/srv/www".into()),
            "a flag replaces [site]"
        );
        assert_eq!(
            c.tls,
            TlsChoice::SelfSigned("a.example".into()),
            "kept from the file"
        );
        assert_eq!(c.limits.mailbox.per_recipient, 9);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../contrib/relay.toml");
        let c = check(text).expect("contrib/relay.toml");
        assert!(matches!(c.tls, TlsChoice::Files { .. }), "{c:?}");
    }

    /// The defaults the example shows in its commented `[limits]` are the
    /// defaults the relay runs with.
    #[test]
    fn the_example_shows_the_true_default_limits() {
        let text = include_str!("../../contrib/relay.toml");
        let (_, section) = text.split_once("\n[limits]\n").expect("a [limits] section");
        let shown: Vec<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = ") && !l.starts_with(' '))
            .map(|l| l.split(" #").next().unwrap_or(l).trim())
            .collect();
        assert!(shown.len() >= 13, "{shown:?}");
        let c = check(&format!("[limits]\n{}", shown.join("\n"))).expect("shown limits");
        assert_eq!(c.limits, RelayLimits::default());
        assert_eq!(
            c.max_connections,
            burrow_obfs::Limits::default().max_connections
        );
        assert_eq!(
            c.limits.mailbox.total_bytes,
            MailboxLimits::default().total_bytes
        );
    }
}
