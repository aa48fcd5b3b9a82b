//! A node's own front, for users who can accept connections (`burrow up
//! --listen`): the same camouflaged web server a relay runs, with its own
//! gate key and certificate, whose line the node publishes only in its
//! encrypted, signed tracker record. Contacts who know the user's key read
//! it there and dial it before the relay; anyone else finds a small website.
//!
//! The gate key, certificate and tunnel path live in the encrypted store,
//! so the endpoint contacts learned stays valid across restarts; the
//! certificate is made anew only when the public name changes.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use burrow_obfs::{
    Carrier, Front, FrontConfig, Gate, GateSecret, Identity, Limits, RelayLine, Site, Source,
    Tunnels,
};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::store::Store;

/// Connections a node's own front takes at once: its contacts, and probes.
const MAX_CONNECTIONS: usize = 256;

/// Where to listen, and how contacts reach that port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectArgs {
    pub listen: SocketAddr,
    /// `HOST` or `HOST:PORT` as contacts dial it; `None`: the listening
    /// address itself (which must then be a specific IP).
    pub public: Option<String>,
}

/// The front, bound, and the line contacts dial it with.
pub struct Listening {
    pub front: Front,
    pub tunnels: Tunnels,
    pub line: RelayLine,
}

impl std::fmt::Debug for Listening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listening")
            .field("local", &self.front.local_addr())
            .finish_non_exhaustive()
    }
}

/// What the store keeps of the front.
#[derive(Clone, Serialize, Deserialize)]
struct Material {
    gate: String,
    name: String,
    cert: String,
    key: String,
    path: String,
}

/// Splits `HOST[:PORT]` (an IPv6 address in brackets when a port follows).
fn parse_public(text: &str, default_port: u16) -> Result<(String, u16)> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok((ip.to_string(), default_port));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok((addr.ip().to_string(), addr.port()));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .with_context(|| format!("--public {text}: {p:?} is not a port"))?,
        ),
        None => (text, default_port),
    };
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if !valid {
        bail!("--public {text}: expected HOST or HOST:PORT (a domain name or an IP address)");
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// The public host and port for `args`, once the front is bound at `bound`.
fn public_endpoint(args: &DirectArgs, bound: SocketAddr) -> Result<(String, u16)> {
    match &args.public {
        Some(p) => parse_public(p, bound.port()),
        None if bound.ip().is_unspecified() => bail!(
            "--listen {} accepts on every address; say which one contacts reach with --public HOST[:PORT]",
            args.listen
        ),
        None => Ok((bound.ip().to_string(), bound.port())),
    }
}

fn load_material(store: &Store, name: &str) -> Result<(Material, Identity)> {
    let stored: Option<Material> = store
        .direct_listener()?
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .context("the stored direct endpoint settings are damaged")?;
    if let Some(m) = stored.clone().filter(|m| m.name == name) {
        let identity = Identity::from_pem(m.cert.as_bytes(), m.key.as_bytes())
            .context("the stored certificate of the direct endpoint is damaged")?;
        return Ok((m, identity));
    }
    // First run, or a new public name: a certificate for it; the gate key
    // and path stay (contacts' copies need only the new pin).
    let (identity, cert, key) = Identity::self_signed(name)?;
    let (gate, path) = match stored {
        Some(m) => (m.gate, m.path),
        None => (
            URL_SAFE_NO_PAD.encode(GateSecret::generate(&mut rand::rngs::OsRng).to_bytes()),
            crate::relay_cmd::random_path(),
        ),
    };
    let m = Material {
        gate,
        name: name.to_string(),
        cert,
        key,
        path,
    };
    store.set_direct_listener(&serde_json::to_string(&m)?)?;
    Ok((m, identity))
}

/// The front's material, read from (or first made in) the store: the
/// synchronous half of [`open`], so that no store handle is held while
/// the front binds.
pub struct Prepared {
    material: Material,
    identity: Identity,
    secret: GateSecret,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("name", &self.material.name)
            .finish_non_exhaustive()
    }
}

/// Reads (or makes) the material of the front `args` asks for.
pub fn prepare(store: &Store, args: &DirectArgs) -> Result<Prepared> {
    // The name goes into the certificate before the port is known.
    let name = match &args.public {
        Some(p) => parse_public(p, args.listen.port())?.0,
        None => public_endpoint(args, args.listen)?.0,
    };
    let (material, identity) = load_material(store, &name)?;
    let secret = URL_SAFE_NO_PAD
        .decode(&material.gate)
        .ok()
        .and_then(|raw| <[u8; 32]>::try_from(raw).ok())
        .map(GateSecret::from_bytes)
        .context("the stored gate key of the direct endpoint is damaged")?;
    Ok(Prepared {
        material,
        identity,
        secret,
    })
}

/// Binds the node's front and builds the line contacts will dial.
pub async fn open(prepared: Prepared, args: &DirectArgs, user: &PeerId) -> Result<Listening> {
    let Prepared {
        material,
        identity,
        secret,
    } = prepared;
    let limits = Limits {
        max_connections: MAX_CONNECTIONS,
        ..Limits::default()
    };
    let pin = identity.pin();
    let config = FrontConfig {
        identity,
        gate: Gate::new(secret.clone()),
        tunnel_path: material.path.clone(),
        site: Site::new(Source::Builtin, args.listen.port(), true),
        limits,
    };
    let (front, tunnels) = crate::relay_cmd::bind_front(args.listen, config)
        .await
        .context("cannot accept direct connections")?;
    let (host, port) = public_endpoint(args, front.local_addr())?;
    let line = RelayLine {
        host,
        port,
        path: material.path,
        key: secret.public(),
        carriers: vec![Carrier::H2, Carrier::H3],
        pin,
        ip: None,
        id: Some(user.to_base58()),
        proxied: false,
    };
    Ok(Listening {
        front,
        tunnels,
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_endpoints_parse() {
        assert_eq!(
            parse_public("198.51.100.7", 443).expect("ip"),
            ("198.51.100.7".into(), 443)
        );
        assert_eq!(
            parse_public("198.51.100.7:8443", 443).expect("ip:port"),
            ("198.51.100.7".into(), 8443)
        );
        assert_eq!(
            parse_public("[2001:db8::1]:8443", 443).expect("[v6]:port"),
            ("2001:db8::1".into(), 8443)
        );
        assert_eq!(
            parse_public("Home.Example.org:9000", 443).expect("name:port"),
            ("home.example.org".into(), 9000)
        );
        for bad in ["", "host:", "host:0", "host:99999", "a b", "x..y", "/path"] {
            assert!(parse_public(bad, 443).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_unspecified_listen_address_needs_a_public_one() {
        let args = DirectArgs {
            listen: "0.0.0.0:7000".parse().expect("addr"),
            public: None,
        };
        let err = public_endpoint(&args, args.listen).expect_err("needs --public");
        assert!(err.to_string().contains("--public"), "{err}");
        let args = DirectArgs {
            listen: "127.0.0.1:0".parse().expect("addr"),
            public: None,
        };
        let bound = "127.0.0.1:7001".parse().expect("addr");
        assert_eq!(
            public_endpoint(&args, bound).expect("specific"),
            ("127.0.0.1".into(), 7001)
        );
    }

    #[tokio::test]
    async fn the_endpoint_survives_a_restart_and_a_new_name_gets_a_new_certificate() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("s.db"), &[3u8; 32]).expect("store");
        let user = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let args = DirectArgs {
            listen: "127.0.0.1:0".parse().expect("addr"),
            public: None,
        };
        let first = open(prepare(&store, &args).expect("prepare"), &args, &user)
            .await
            .expect("open");
        assert_eq!(first.line.id.as_deref(), Some(user.to_base58().as_str()));
        assert_eq!(first.line.host, "127.0.0.1");
        assert_eq!(first.line.port, first.front.local_addr().port());
        assert!(first.line.pin.is_some());
        drop(first.front);
        let again = open(prepare(&store, &args).expect("prepare"), &args, &user)
            .await
            .expect("reopen");
        assert_eq!(again.line.key, first.line.key);
        assert_eq!(again.line.pin, first.line.pin);
        assert_eq!(again.line.path, first.line.path);
        let renamed = DirectArgs {
            listen: args.listen,
            public: Some("node.example.org".into()),
        };
        let moved = open(prepare(&store, &renamed).expect("prepare"), &renamed, &user)
            .await
            .expect("renamed");
        assert_eq!(moved.line.host, "node.example.org");
        assert_eq!(moved.line.key, first.line.key);
        assert_ne!(moved.line.pin, first.line.pin);
    }
}
