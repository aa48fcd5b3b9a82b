//! The user's side of the node without the network: the unlocked identity,
//! the store, and every control request that needs only them. `burrow up`
//! serves these through the control socket; the other commands use them
//! directly when no node is running.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use burrow_obfs::RelayLine;
use libp2p::identity::Keypair;
use rand::RngCore;

use crate::control::{
    ContactView, FirewallEntryView, FirewallLogView, MessageView, Request, Response,
};
use crate::datadir;
use crate::identity::{self, fingerprint, verification_code, Address, KdfCost};
use crate::p2p::driver::RelayRef;
use crate::p2p::proto::{MessageId, MAX_TEXT};
use crate::store::{Contact, Direction, FirewallLogEntry, Message, OutState, Store};

const KEYSTORE: &str = "keystore";
const STORE: &str = "store.db";
const SOCKET: &str = "control.sock";
/// Longest contact name.
pub const MAX_NAME: usize = 64;

/// Where a node keeps its files inside the data directory.
#[derive(Debug, Clone)]
pub struct NodePaths {
    pub dir: PathBuf,
}

impl NodePaths {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("node"),
        }
    }
    pub fn keystore(&self) -> PathBuf {
        self.dir.join(KEYSTORE)
    }
    pub fn store(&self) -> PathBuf {
        self.dir.join(STORE)
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join(SOCKET)
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Firewall settings chosen at `burrow init` (and `burrow firewall set`).
#[derive(Debug, Clone, Default)]
pub struct FirewallChoice {
    /// A resolver spec; `None` keeps the current one (the default at first).
    pub resolver: Option<String>,
    /// `Some(true)` lets the node reach local networks; `None` keeps it.
    pub allow_local: Option<bool>,
    /// `Some(true)` logs approved connections too; `None` keeps it.
    pub log_approvals: Option<bool>,
}

impl FirewallChoice {
    /// Checks the choice and saves it in the store.
    pub fn apply(&self, store: &Store) -> Result<()> {
        if let Some(spec) = &self.resolver {
            let spec = burrow_firewall::ResolverList::parse(spec)?;
            // Reading the system resolvers now tells a broken setup at once.
            spec.entries()?;
            store.set_resolver(&spec.to_string())?;
        }
        if let Some(allow) = self.allow_local {
            store.set_allow_local_networks(allow)?;
        }
        if let Some(on) = self.log_approvals {
            store.set_log_approvals(on)?;
        }
        Ok(())
    }
}

/// Creates a new identity and store. Refuses to touch an existing one.
pub fn init(
    paths: &NodePaths,
    password: &[u8],
    relay: &RelayLine,
    cost: KdfCost,
) -> Result<Address> {
    init_with(paths, password, relay, cost, &FirewallChoice::default())
}

/// [`init`] with firewall settings.
pub fn init_with(
    paths: &NodePaths,
    password: &[u8],
    relay: &RelayLine,
    cost: KdfCost,
    firewall: &FirewallChoice,
) -> Result<Address> {
    RelayRef::new(relay.clone()).map_err(|e| anyhow::anyhow!("--relay: {e}"))?;
    if let Some(spec) = &firewall.resolver {
        burrow_firewall::ResolverList::parse(spec)
            .map_err(|e| anyhow::anyhow!("--resolver: {e}"))?;
    }
    if paths.keystore().exists() {
        bail!(
            "an identity already exists in {} (remove the directory to start over)",
            paths.dir.display()
        );
    }
    if password.is_empty() {
        bail!("the password is empty");
    }
    datadir::ensure_dir(&paths.dir)?;
    let keypair = Keypair::generate_ed25519();
    let (text, db_key) = identity::create(&keypair, password, cost, &mut rand::rngs::OsRng)?;
    // The store first: if it fails, no keystore points at a missing store.
    let store_path = paths.store();
    if store_path.exists() {
        std::fs::remove_file(&store_path)
            .with_context(|| format!("cannot replace {}", store_path.display()))?;
    }
    let store = Store::open(&store_path, &db_key)?;
    store.set_home_relay(relay)?;
    firewall.apply(&store)?;
    datadir::write_private(&paths.keystore(), text.as_bytes())?;
    Ok(Address {
        user: keypair.public().to_peer_id(),
        relay: relay.clone(),
    })
}

/// An unlocked node: identity and store.
#[derive(Debug)]
pub struct Messenger {
    pub keypair: Keypair,
    pub store: Store,
    pub home: RelayLine,
}

impl Messenger {
    pub fn open(paths: &NodePaths, password: &[u8]) -> Result<Self> {
        let keystore = paths.keystore();
        if !keystore.exists() {
            bail!(
                "no identity in {}; create one with `burrow init --relay LINE`",
                paths.dir.display()
            );
        }
        let text = String::from_utf8(datadir::read(&keystore)?)
            .map_err(|_| identity::KeystoreError::Damaged("not text"))?;
        let unlocked = identity::unlock(&text, password)?;
        let store = Store::open(&paths.store(), &unlocked.db_key)
            .with_context(|| format!("{}", paths.store().display()))?;
        let home = store
            .home_relay()?
            .context("no home relay set; run `burrow set-relay LINE`")?;
        Ok(Self {
            keypair: unlocked.keypair,
            store,
            home,
        })
    }

    pub fn address(&self) -> Address {
        Address {
            user: self.keypair.public().to_peer_id(),
            relay: self.home.clone(),
        }
    }

    pub fn set_home(&mut self, line: RelayLine) -> Result<()> {
        RelayRef::new(line.clone()).map_err(|e| anyhow::anyhow!("relay line: {e}"))?;
        self.store.set_home_relay(&line)?;
        self.home = line;
        Ok(())
    }

    pub fn contact_view(&self, c: &Contact) -> ContactView {
        ContactView {
            name: c.name.clone(),
            id: c.peer().to_base58(),
            fingerprint: fingerprint(&c.peer()),
            verified: c.verified,
            relay: format!("{}:{}", c.address.relay.host, c.address.relay.port),
            direct: c
                .direct
                .as_ref()
                .filter(|_| c.verified)
                .map(|d| format!("{}:{}", d.host, d.port)),
        }
    }

    fn contact(&self, name: &str) -> Result<Contact> {
        self.store
            .contact(name)?
            .with_context(|| format!("no contact named {name:?} (see `burrow contact list`)"))
    }

    /// Queues a message in the outbox; the daemon delivers it.
    pub fn queue(&self, name: &str, text: &str) -> Result<(Contact, MessageId)> {
        if text.is_empty() {
            bail!("the message is empty");
        }
        if text.len() > MAX_TEXT {
            bail!(
                "the message is too long ({} bytes, at most {MAX_TEXT})",
                text.len()
            );
        }
        let contact = self.contact(name)?;
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        self.store
            .queue_outgoing(&contact.peer(), &id, now_ms(), text)?;
        Ok((contact, id))
    }

    /// Everything that needs no network. `Send` only queues here;
    /// `Watch` is the daemon's.
    pub fn execute(&mut self, req: Request, online: bool) -> Result<Response> {
        Ok(match req {
            Request::Id => {
                let address = self.address();
                Response::Id {
                    fingerprint: fingerprint(&address.user),
                    address: address.to_string(),
                    online,
                    punch_ready: None,
                }
            }
            Request::Contacts => Response::Contacts {
                contacts: self
                    .store
                    .contacts()?
                    .iter()
                    .map(|c| self.contact_view(c))
                    .collect(),
            },
            Request::AddContact { name, address } => {
                validate_name(&name)?;
                let address: Address = address
                    .parse()
                    .map_err(|e| anyhow::anyhow!("not a valid address: {e}"))?;
                if address.user == self.keypair.public().to_peer_id() {
                    bail!("that is your own address");
                }
                let c = self.store.add_contact(&name, &address, now_ms())?;
                Response::Contact {
                    contact: self.contact_view(&c),
                }
            }
            Request::Verify { name, confirm } => {
                let c = self.contact(&name)?;
                if confirm {
                    self.store.set_verified(&name, true)?;
                }
                Response::Verify {
                    code: verification_code(&self.keypair.public().to_peer_id(), &c.peer()),
                    verified: confirm || c.verified,
                    name,
                }
            }
            Request::Send { name, text } => {
                let (_, id) = self.queue(&name, &text)?;
                Response::Sent {
                    id: hex(&id),
                    outcome: "queued; it is sent when `burrow up` runs".into(),
                    state: "pending".into(),
                    route: None,
                }
            }
            Request::Inbox { name } => {
                let peer = match name {
                    Some(n) => Some(self.contact(&n)?.peer()),
                    None => None,
                };
                Response::Messages {
                    messages: self
                        .store
                        .conversation(peer.as_ref())?
                        .iter()
                        .map(message_view)
                        .collect(),
                }
            }
            Request::Watch { .. } => bail!("watching needs a running node (`burrow up`)"),
            Request::FirewallList => {
                let policy = self.policy()?;
                Response::Firewall {
                    allow_local: policy.allow_local,
                    entries: policy.entries().iter().map(entry_view).collect(),
                }
            }
            Request::FirewallCheck {
                target,
                udp,
                try_dial,
            } => {
                if try_dial {
                    bail!("trying a connection needs a running node (`burrow up`)");
                }
                firewall_decision(&self.policy()?, &target, udp)?
            }
            Request::FirewallLog { limit, follow } => {
                if follow {
                    bail!("following the log needs a running node (`burrow up`)");
                }
                Response::FirewallLog {
                    entries: self
                        .store
                        .firewall_log(0, limit)?
                        .into_iter()
                        .map(log_view)
                        .collect(),
                }
            }
        })
    }
}

impl Messenger {
    /// The firewall policy this node's state gives: home relay, previous
    /// home (a tracker it keeps telling), contacts' relays (given in their
    /// address, or announced since by a verified contact).
    pub fn policy(&self) -> Result<burrow_firewall::Policy> {
        let contacts = self.store.contacts()?;
        let previous = self.store.previous_home_relay()?;
        Ok(crate::guarded::node_policy(
            &self.home,
            previous.iter(),
            contacts.iter(),
            &self.firewall_settings()?,
        )?)
    }

    /// The resolver and local-network settings the firewall is built from.
    pub fn firewall_settings(&self) -> Result<crate::guarded::FirewallSettings> {
        crate::guarded::FirewallSettings::from_store(&self.store)
    }
}

pub fn entry_view(e: &burrow_firewall::Entry) -> FirewallEntryView {
    FirewallEntryView {
        endpoint: format!("{}:{}/{}", e.host, e.port, e.proto),
        source: e.source.to_string(),
        reason: e.reason.clone(),
    }
}

pub fn log_view(e: FirewallLogEntry) -> FirewallLogView {
    FirewallLogView {
        seq: e.seq,
        time_ms: e.time_ms,
        component: e.component,
        target: e.target,
        verdict: e.verdict,
        reason: e.reason,
    }
}

/// Parses what a user typed for `firewall check`: a host, `host:port`, an
/// address or a URL (port 443 unless given).
pub fn check_target(target: &str, udp: bool) -> Result<burrow_firewall::Target> {
    let proto = if udp {
        burrow_firewall::Proto::Udp
    } else {
        burrow_firewall::Proto::Tcp
    };
    burrow_firewall::Target::parse(target.trim(), proto, Some(443))
        .map_err(|e| anyhow::anyhow!("{target}: {e}"))
}

/// The decision `policy` makes for `target`, explained.
pub fn firewall_decision(
    policy: &burrow_firewall::Policy,
    target: &str,
    udp: bool,
) -> Result<Response> {
    let t = check_target(target, udp)?;
    Ok(match policy.explain(&t) {
        Ok(entry) => Response::FirewallDecision {
            target: t.to_string(),
            allowed: true,
            reason: entry.reason.clone(),
            source: Some(entry.source.to_string()),
            attempt: None,
        },
        Err(denied) => Response::FirewallDecision {
            target: t.to_string(),
            allowed: false,
            reason: denied.reason.to_string(),
            source: None,
            attempt: None,
        },
    })
}

pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(|c| c.is_control()) {
        bail!("a contact name is 1 to {MAX_NAME} characters, no control characters");
    }
    Ok(())
}

pub fn message_view(m: &Message) -> MessageView {
    MessageView {
        id: hex(&m.id),
        contact: m.contact.clone(),
        direction: match m.direction {
            Direction::In => "in".into(),
            Direction::Out => "out".into(),
        },
        sent_at_ms: m.sent_at_ms,
        text: m.text.clone(),
        state: match (m.direction, m.state) {
            (Direction::In, _) => "received".into(),
            (Direction::Out, OutState::Pending) => "pending".into(),
            (Direction::Out, OutState::Deposited) => "deposited".into(),
            (Direction::Out, OutState::Delivered) => "delivered".into(),
        },
    }
}
