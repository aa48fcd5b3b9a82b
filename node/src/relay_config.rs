//! The relay's configuration: a TOML file (`burrow relay --config FILE`)
//! and the command-line flags, which override it.
//!
//! Three steps, as everywhere in Burrow: the file is read into [`RawConfig`]
//! (serde; an unknown key anywhere is an error that names it), merged with
//! the flags, then checked and turned into [`RelayConfig`], whose fields
//! are typed values (`SocketAddr`, `PeerId`, [`ResolverSpec`], enums).
//! Mutually exclusive settings are a [`ConfigError::Conflict`] naming both.
//! A commented example is `contrib/relay.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use burrow_firewall::ResolverSpec;
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
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub site: RawSite,
    #[serde(default)]
    pub users: RawUsers,
    #[serde(default)]
    pub firewall: RawFirewall,
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
    pub resolver: Option<String>,
    pub allow_local_networks: Option<bool>,
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
        self
    }
}

// ---------------------------------------------------------------- checked

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
    pub mailbox_per_user: usize,
    pub resolver: ResolverSpec,
    pub allow_local_networks: bool,
}

fn invalid(key: &str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

impl RelayConfig {
    /// Checks `raw` (the file with the flags laid over it).
    pub fn check(raw: RawConfig) -> Result<Self, ConfigError> {
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
        let mailbox_per_user = raw
            .users
            .mailbox_per_user
            .unwrap_or(DEFAULT_MAILBOX_PER_USER);
        if mailbox_per_user == 0 {
            return Err(invalid("users.mailbox_per_user", "must be at least 1"));
        }
        let resolver = ResolverSpec::parse(
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
            mailbox_per_user,
            resolver,
            allow_local_networks: raw.firewall.allow_local_networks.unwrap_or(false),
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
resolver = "tls://1.1.1.1"
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
        assert_eq!(c.mailbox_per_user, 50);
        assert_eq!(c.resolver.to_string(), "tls://1.1.1.1");
        assert!(c.allow_local_networks);
    }

    #[test]
    fn nothing_set_means_the_defaults() {
        let c = check("").expect("empty file");
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().expect("addr"));
        assert_eq!(c.tls, TlsChoice::SelfSigned("localhost".into()));
        assert_eq!(c.site, SiteChoice::Builtin);
        assert_eq!(c.allow_users, None);
        assert_eq!(c.mailbox_per_user, DEFAULT_MAILBOX_PER_USER);
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
            ("[metrics]\nlisten = \"127.0.0.1:9000\"", "metrics"),
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
            ("listen = 443", &["listen"]),
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
        assert_eq!(c.mailbox_per_user, 9);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../contrib/relay.toml");
        let c = check(text).expect("contrib/relay.toml");
        assert!(matches!(c.tls, TlsChoice::Files { .. }), "{c:?}");
    }
}
