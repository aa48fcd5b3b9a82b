//! `burrow up`: the node in the foreground. Keeps the reservation at the
//! home relay, receives and stores messages, delivers the outbox until
//! each receipt is back — to a verified contact's own front when they
//! accept direct connections, else through a hole punched with them (both
//! run `--punch`), else through the contact's relay, else into its mailbox
//! — and serves the control socket. With `--listen` it also accepts direct
//! connections from contacts on its own front.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use burrow_firewall::{Audit, Dialer, Entry, EntrySource, Proto, Target};
use burrow_obfs::{Carrier, RelayLine};
use burrow_relay::proto::MailboxItem;
use libp2p::PeerId;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, Notify};
use tracing::{debug, info, warn};

use crate::control::{MessageView, Request, Response, MAX_LINE};
use crate::direct::DirectArgs;
use crate::guarded::GuardedSockets;
use crate::messenger::{message_view, now_ms, Messenger, NodePaths};
use crate::p2p::driver::{
    DeliverError, Driver, DriverHandle, Handler, HomeState, Link, RelayRef, Route,
};
use crate::p2p::proto::{Envelope, MessageId, PunchReply, PunchRequest, Reply, MAX_RECEIPTS};
use crate::p2p::swarm;
use crate::p2p::transport::{relay_addrs, CarrierTransport, Directory};
use crate::punch::Punch;
use crate::seal;
use crate::store::{Contact, Direction, FirewallLogEntry, Message, OutState};

/// How often the outbox is retried when nothing else wakes it.
const RETRY: Duration = Duration::from_secs(3);
/// A message already in a mailbox is retried directly this often.
const DEPOSITED_RETRY: Duration = Duration::from_secs(20);
/// A message still without a receipt is left in the mailbox again after
/// this long (the relay may have restarted and lost its RAM); the
/// recipient drops duplicates.
const REDEPOSIT: Duration = Duration::from_secs(600);
/// Time allowed for one delivery attempt.
const ATTEMPT: Duration = Duration::from_secs(20);
/// How often new firewall decisions are saved to the store.
const AUDIT_SAVE: Duration = Duration::from_secs(1);
/// How often the trackers may be asked about one unreachable contact.
const LOCATE_EVERY: Duration = Duration::from_secs(60);
/// How often the trackers are asked about a verified contact before a
/// delivery (have they opened or closed a direct endpoint?), and how long
/// such a look-up may hold the delivery up.
const LOOK_AHEAD_EVERY: Duration = Duration::from_secs(60);
const LOOK_AHEAD_WAIT: Duration = Duration::from_secs(3);
/// Time allowed for a delivery to a contact's own front before the relay
/// is tried (the dial itself gives up sooner: `DIRECT_CONNECT`).
const DIRECT_ATTEMPT: Duration = Duration::from_secs(8);
/// A contact's front that did not answer is not tried again for this long
/// (their messages go through the relay meanwhile).
const DIRECT_PAUSE: Duration = Duration::from_secs(300);
/// A punched hole (and the contact's front behind it) is used without
/// asking again for this long, or while a direct connection to the contact
/// is open; after that a delivery punches anew (NATs forget idle mappings
/// within a minute or two).
const PUNCH_FRESH: Duration = Duration::from_secs(20);
/// After a punch that did not work, the relay carries a contact's
/// messages for this long before the next try.
const PUNCH_PAUSE: Duration = Duration::from_secs(120);
/// A contact's punch requests are answered at most this often.
const PUNCH_ANSWER_EVERY: Duration = Duration::from_secs(3);
/// Time allowed for the contact's answer to a punch request.
const PUNCH_TIMEOUT: Duration = Duration::from_secs(6);
/// Watchers that fall this far behind miss events (they can re-read the inbox).
const EVENT_BUFFER: usize = 256;

/// What the driver, the outbox and the control socket share.
struct Core {
    messenger: Mutex<Messenger>,
    events: broadcast::Sender<MessageView>,
    kick: Notify,
    /// Receipts owed for messages that came through a mailbox.
    receipts: Mutex<HashMap<PeerId, Vec<MessageId>>>,
    online: Mutex<bool>,
    dialer: Dialer,
    /// When this process last left each outbox message in a mailbox; a
    /// deposited message not in here was left by an earlier run.
    deposited: Mutex<HashMap<(PeerId, MessageId), Instant>>,
    /// When the trackers were last asked where each contact is.
    located: Mutex<HashMap<PeerId, Instant>>,
    /// Contacts' fronts that last failed, and when.
    direct_failed: Mutex<HashMap<PeerId, Instant>>,
    /// The last firewall decision saved to the store.
    audit_seq: Mutex<u64>,
    /// The node's QUIC socket and front, when it punches holes.
    punch: Option<Arc<Punch>>,
    /// Holes punched with contacts this run: their public QUIC address
    /// (allowed by the firewall while the node runs) and, on the side that
    /// asked, the line of their front there.
    punched: Mutex<HashMap<PeerId, Punched>>,
}

/// A hole punched with a contact.
#[derive(Debug, Clone)]
struct Punched {
    contact: String,
    addr: SocketAddr,
    /// Their front at `addr` (we asked), or `None` (they asked: they dial).
    line: Option<RelayLine>,
    at: Instant,
    /// The last try to reach them this way failed.
    failed: bool,
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, Messenger> {
        self.messenger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refresh_policy(&self) {
        let mut policy = match self.lock().policy() {
            Ok(p) => p,
            Err(e) => {
                warn!("firewall policy not updated: {e:#}");
                return;
            }
        };
        for p in self
            .punched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|p| !p.addr.ip().is_unspecified())
        {
            policy.add(Entry::new(
                Target::addr(p.addr, Proto::Udp),
                EntrySource::ContactPunched {
                    contact: p.contact.clone(),
                },
                format!("hole punched with {}", p.contact),
            ));
        }
        if let Some(punch) = &self.punch {
            punch.allowed().retain(&policy);
        }
        self.dialer.set_policy(policy);
    }

    fn record_punch(&self, peer: PeerId, punched: Punched) {
        self.punched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, punched);
        self.refresh_policy();
    }

    /// Moves new firewall decisions from memory into the store.
    fn persist_audit(&self) {
        let mut last = self.audit_seq.lock().unwrap_or_else(|p| p.into_inner());
        let records = self.dialer.audit_since(*last);
        let Some(newest) = records.last().map(|r| r.seq) else {
            return;
        };
        let entries: Vec<FirewallLogEntry> = records.into_iter().map(log_entry).collect();
        match self.lock().store.append_firewall_log(&entries) {
            Ok(()) => *last = newest,
            Err(e) => warn!("firewall log not saved (kept in memory, retrying): {e}"),
        }
    }

    /// Tells watchers (`burrow chat`) about a new or changed message.
    fn publish(&self, peer: &PeerId, id: &MessageId, direction: Direction) {
        if let Ok(Some(msg)) = self.lock().store.message(peer, id, direction) {
            let _ = self.events.send(message_view(&msg));
        }
    }
}

/// The driver's handler: stores what arrives.
struct Inbound(Arc<Core>);

impl Inbound {
    /// Applies a contact's envelope; `Err` means "could not store, do not
    /// confirm" (the sender keeps it and tries again).
    fn apply(&self, from: PeerId, envelope: Envelope, via_mailbox: bool) -> Result<(), String> {
        let core = &self.0;
        let known = core
            .lock()
            .store
            .contact_by_peer(&from)
            .map_err(|e| e.to_string())?;
        if known.is_none() {
            return Err("not a contact".into());
        }
        match envelope {
            Envelope::Message {
                id,
                sent_at_ms,
                text,
            } => {
                if text.len() > crate::p2p::proto::MAX_TEXT {
                    return Err("message too long".into());
                }
                let new = core
                    .lock()
                    .store
                    .store_incoming(&from, &id, sent_at_ms, &text, now_ms())
                    .map_err(|e| e.to_string())?;
                if new {
                    core.publish(&from, &id, Direction::In);
                }
                if via_mailbox {
                    let mut owed = core.receipts.lock().unwrap_or_else(|p| p.into_inner());
                    owed.entry(from).or_default().push(id);
                    core.kick.notify_one();
                }
            }
            Envelope::Receipts { ids } => {
                for id in ids {
                    let changed = core
                        .lock()
                        .store
                        .set_out_state(&from, &id, OutState::Delivered, now_ms())
                        .map_err(|e| e.to_string())?;
                    if changed {
                        core.publish(&from, &id, Direction::Out);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Handler for Inbound {
    fn on_envelope(&mut self, from: PeerId, envelope: Envelope) -> Reply {
        match self.apply(from, envelope, false) {
            Ok(()) => Reply::Received,
            Err(reason) => Reply::Refused { reason },
        }
    }

    fn accepts(&mut self, peer: &PeerId) -> bool {
        matches!(self.0.lock().store.contact_by_peer(peer), Ok(Some(_)))
    }

    fn on_mailbox(&mut self, items: Vec<MailboxItem>) -> Vec<u64> {
        let keypair = self.0.lock().keypair.clone();
        let mut done = Vec::new();
        for item in items {
            match seal::open(&keypair, &item.sealed) {
                Ok(opened) => match self.apply(opened.from, opened.envelope, true) {
                    Ok(()) => done.push(item.id),
                    Err(reason) if reason == "not a contact" => {
                        debug!("mailbox item from a stranger dropped");
                        done.push(item.id);
                    }
                    // Not stored (disk full…): leave it at the relay.
                    Err(reason) => warn!("mailbox item kept at the relay: {reason}"),
                },
                Err(e) => {
                    debug!("unreadable mailbox item dropped: {e}");
                    done.push(item.id);
                }
            }
        }
        done
    }

    fn on_home(&mut self, state: HomeState) {
        *self.0.online.lock().unwrap_or_else(|p| p.into_inner()) = state == HomeState::Online;
        if state == HomeState::Online {
            self.0.kick.notify_one();
        }
    }

    fn on_observed(&mut self, addr: &libp2p::Multiaddr) {
        if let Some(punch) = &self.0.punch {
            if punch.observe(addr) {
                info!("the home relay sees this node's QUIC socket: holes can be punched");
            }
        }
    }

    /// A contact asks for a hole: only a verified contact gets this node's
    /// public address, and datagrams toward theirs.
    fn on_punch(&mut self, from: PeerId, request: PunchRequest) -> PunchReply {
        let refused = |reason: &str| PunchReply::Refused {
            reason: reason.into(),
        };
        let Some(punch) = self.0.punch.clone() else {
            return refused("this node does not punch holes");
        };
        let contact = match self.0.lock().store.contact_by_peer(&from) {
            Ok(Some(c)) if c.verified => c,
            Ok(Some(_)) => return refused("not a verified contact"),
            _ => return refused("not a contact"),
        };
        let addr = request.addr;
        if addr.ip().is_unspecified() || addr.ip().is_multicast() || addr.port() == 0 {
            return refused("not an address to punch toward");
        }
        let Some(line) = punch.line() else {
            return refused("this node does not know its public address yet");
        };
        // Datagrams go where the asker says: a burst per contact now and
        // then, never a stream of them.
        let recent = self
            .0
            .punched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&from)
            .is_some_and(|p| p.line.is_none() && !p.failed && p.at.elapsed() < PUNCH_ANSWER_EVERY);
        if recent {
            return refused("asked again too soon");
        }
        self.0.record_punch(
            from,
            Punched {
                contact: contact.name.clone(),
                addr,
                line: None,
                at: Instant::now(),
                failed: false,
            },
        );
        match punch.punch(addr) {
            Ok(()) => {
                debug!("punching a hole toward contact {}", contact.name);
                PunchReply::Ready {
                    line: line.to_string(),
                }
            }
            Err(denied) => refused(&format!("the firewall refused: {}", denied.reason)),
        }
    }
}

/// How contacts reach this node besides its relay.
#[derive(Debug, Clone, Default)]
pub enum Reach {
    /// Only through the home relay (and a contact's own front, dialled out).
    #[default]
    Relay,
    /// Also on a front of its own (`burrow up --listen`).
    Listen(DirectArgs),
    /// Also through holes punched with verified contacts (`burrow up --punch`).
    Punch,
}

/// Runs the node until SIGINT/SIGTERM; prints the user's address first.
/// `reach` says how contacts may reach it besides the relay.
pub async fn run(data_dir: &Path, password: &[u8], reach: Reach) -> Result<()> {
    run_until(data_dir, password, reach, |address| {
        println!("{address}");
        crate::relay_cmd::wait_for_signal()
    })
    .await
}

/// Runs the node until the future `until` returns (given the user's
/// address once the node is up) resolves.
pub async fn run_until<F, Fut>(
    data_dir: &Path,
    password: &[u8],
    reach: Reach,
    until: F,
) -> Result<()>
where
    F: FnOnce(&crate::identity::Address) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let paths = NodePaths::new(data_dir);
    let messenger = Messenger::open(&paths, password)?;
    let home = RelayRef::new(messenger.home.clone())?;
    let keypair = messenger.keypair.clone();
    let address = messenger.address();
    let firewall = messenger.firewall_settings()?;
    let (events, _) = broadcast::channel(EVENT_BUFFER);
    let dialer = Dialer::new(
        burrow_firewall::Policy::default(),
        Audit::new(
            burrow_firewall::audit::DEFAULT_AUDIT_CAPACITY,
            firewall.log_approvals,
        ),
    );
    let (punch, punch_front) = match reach {
        Reach::Punch => {
            let (punch, front, tunnels) = Punch::open(dialer.clone(), &address.user)?;
            (Some(punch), Some((front, tunnels)))
        }
        _ => (None, None),
    };
    let core = Arc::new(Core {
        messenger: Mutex::new(messenger),
        events,
        kick: Notify::new(),
        receipts: Mutex::default(),
        online: Mutex::new(false),
        deposited: Mutex::default(),
        located: Mutex::default(),
        direct_failed: Mutex::default(),
        audit_seq: Mutex::default(),
        punch: punch.clone(),
        punched: Mutex::default(),
        dialer,
    });
    core.refresh_policy();
    crate::guarded::set_resolver(&core.dialer, &firewall.resolver)
        .with_context(|| format!("resolver {}", firewall.resolver))?;

    let listener = bind_control(&paths.socket())?;
    let mut directory = Directory::with_firewall(core.dialer.clone());
    let mut sockets = GuardedSockets::new(core.dialer.clone(), "node");
    if let Some(punch) = &punch {
        directory = directory.with_quic_endpoint(punch.endpoint());
        sockets = sockets.with_quic_guard(punch.allowed());
    }
    let sockets = Arc::new(sockets);
    let own_front = match &reach {
        Reach::Listen(args) => {
            // The store is read first, so no handle on it is held while binding.
            let prepared = crate::direct::prepare(&core.lock().store, args)?;
            Some(crate::direct::open(prepared, args, &address.user).await?)
        }
        _ => None,
    };
    let (punch_front, punch_tunnels) = punch_front.unzip();
    let (transport, front, direct_line) = match (own_front, punch_tunnels) {
        (Some(l), _) => (
            CarrierTransport::listening(directory.clone(), l.tunnels, Vec::new()),
            Some(l.front),
            Some(l.line),
        ),
        // Tunnels from the punched front; no address is ever announced.
        (None, Some(tunnels)) => (
            CarrierTransport::listening(directory.clone(), tunnels, Vec::new()),
            None,
            None,
        ),
        (None, None) => (CarrierTransport::dialer(directory.clone()), None, None),
    };
    let swarm = swarm::build(&keypair, transport)?;
    let location = crate::tracker::make_record(
        &keypair,
        &home.line,
        direct_line.as_ref(),
        now_ms(),
        &mut rand::rngs::OsRng,
    )?;
    let previous: Vec<RelayRef> = core
        .lock()
        .store
        .previous_home_relay()?
        .and_then(|line| RelayRef::new(line).ok())
        .into_iter()
        .collect();
    // A punching node reaches its relay over QUIC first: that connection
    // leaves from the socket contacts will punch toward, and the relay
    // tells it the address its NAT gave that socket.
    let home = match &punch {
        Some(_) if home.line.carriers.contains(&Carrier::H3) => {
            let mut line = home.line.clone();
            line.carriers.sort_by_key(|c| *c != Carrier::H3);
            RelayRef::new(line)?
        }
        Some(_) => {
            warn!("the home relay offers no QUIC carrier: no holes can be punched");
            home
        }
        None => home,
    };
    let (driver, handle) = Driver::new(swarm, directory, sockets, home, Inbound(core.clone()));
    let mut driver = driver.publish_location(location, previous);
    // The front runs until the node stops (dropping the senders closes it).
    let (_front_open, front_stop) = tokio::sync::watch::channel(false);
    let front = front.map(|front| {
        info!(
            "accepting direct connections from contacts on {} (anyone else sees a website)",
            front.local_addr()
        );
        tokio::spawn(front.serve(front_stop.clone(), front_stop.clone()))
    });
    if let Some(addr) = direct_line
        .as_ref()
        .and_then(|l| relay_addrs(l).into_iter().next())
    {
        driver = driver.listen_directly(addr);
    }
    let punch_front = match (punch_front, &punch) {
        (Some(front), Some(punch)) => {
            info!("punching holes with verified contacts who punch too (QUIC)");
            driver = driver.listen_directly(punch.listen_addr());
            Some(tokio::spawn(front.serve(front_stop.clone())))
        }
        _ => None,
    };
    let driver = tokio::spawn(driver.run());
    info!("node up as {}", crate::identity::fingerprint(&address.user));

    let outbox = tokio::spawn(outbox_loop(core.clone(), handle.clone()));
    let control = tokio::spawn(serve_control(listener, core.clone(), handle.clone()));
    let audit = tokio::spawn({
        let core = core.clone();
        async move {
            loop {
                tokio::time::sleep(AUDIT_SAVE).await;
                core.persist_audit();
            }
        }
    });
    until(&address).await;
    info!("shutting down");
    control.abort();
    outbox.abort();
    audit.abort();
    core.persist_audit();
    drop(handle);
    driver.abort();
    if let Some(front) = front {
        front.abort();
    }
    if let Some(front) = punch_front {
        front.abort();
    }
    let _ = std::fs::remove_file(paths.socket());
    Ok(())
}

fn bind_control(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        // A live node answers; a stale socket from a killed one does not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("a node is already running with this data directory");
        }
        std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(listener)
}

// ---------------------------------------------------------------- outbox

/// The outcome of one attempt, for the user.
struct Attempt {
    state: OutState,
    outcome: String,
    /// How a delivered message went: `relay` (a circuit), `front` (the
    /// contact's own front), `hole` (a hole punched just now or a moment
    /// ago) or `direct` (a direct connection the contact opened).
    route: Option<&'static str>,
}

/// `redeposit`: leave it in the mailbox even if it was left there before.
async fn attempt(core: &Core, driver: &DriverHandle, m: &Message, redeposit: bool) -> Attempt {
    let mut contact = match core.lock().store.contact_by_peer(&m.peer) {
        Ok(Some(c)) => c,
        _ => {
            return Attempt {
                state: m.state,
                outcome: "the contact is gone".into(),
                route: None,
            }
        }
    };
    if let Err(e) = RelayRef::new(contact.address.relay.clone()) {
        return Attempt {
            state: m.state,
            outcome: format!("contact's relay unusable: {e}"),
            route: None,
        };
    }
    let envelope = Envelope::Message {
        id: m.id,
        sent_at_ms: m.sent_at_ms,
        text: m.text.clone(),
    };
    // A verified contact may have opened (or closed) a front of their own
    // since we last looked: ask now and then, briefly, before delivering.
    if contact.verified {
        if let Some(found) =
            relocate(core, driver, &contact, LOOK_AHEAD_EVERY, LOOK_AHEAD_WAIT).await
        {
            contact = found.contact;
        }
    }
    let reply = deliver_best(core, driver, &contact, &envelope).await;
    if let Some(done) = settle(core, m, &contact, reply) {
        return done;
    }
    // Not reachable where we know them: perhaps they moved to another
    // relay, or to another front of their own.
    let mut moved = false;
    if let Some(found) = relocate(core, driver, &contact, LOCATE_EVERY, ATTEMPT).await {
        if found.changed {
            let reply = deliver_best(core, driver, &found.contact, &envelope).await;
            if let Some(done) = settle(core, m, &found.contact, reply) {
                return done;
            }
        }
        moved = found.moved;
        contact = found.contact;
    }
    // A message left at the relay they moved away from goes to the new one.
    if m.state == OutState::Deposited && !redeposit && !moved {
        return Attempt {
            state: m.state,
            outcome: format!("waiting in {}'s mailbox for the receipt", contact.name),
            route: None,
        };
    }
    let via = match RelayRef::new(contact.address.relay.clone()) {
        Ok(v) => v,
        Err(e) => {
            return Attempt {
                state: m.state,
                outcome: format!("contact's relay unusable: {e}"),
                route: None,
            }
        }
    };
    let keypair = core.lock().keypair.clone();
    let sealed = match contact
        .address
        .public_key()
        .map_err(|e| e.to_string())
        .and_then(|pk| {
            seal::seal(&keypair, &pk, &envelope, &mut rand::rngs::OsRng).map_err(|e| e.to_string())
        }) {
        Ok(s) => s,
        Err(e) => {
            return Attempt {
                state: m.state,
                outcome: format!("cannot seal: {e}"),
                route: None,
            }
        }
    };
    match tokio::time::timeout(ATTEMPT, driver.deposit(via, m.peer, sealed))
        .await
        .unwrap_or(Err(DeliverError::Timeout))
    {
        Ok(()) => {
            core.deposited
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((m.peer, m.id), Instant::now());
            let _ = core
                .lock()
                .store
                .set_out_state(&m.peer, &m.id, OutState::Deposited, now_ms());
            core.publish(&m.peer, &m.id, Direction::Out);
            Attempt {
                state: OutState::Deposited,
                outcome: format!(
                    "{} is offline; left in their mailbox at their relay",
                    contact.name
                ),
                route: None,
            }
        }
        Err(e) => Attempt {
            state: m.state,
            outcome: format!("not delivered yet ({e}); will retry"),
            route: None,
        },
    }
}

/// Delivers `envelope` to `contact` the best way there is: their own front
/// (a verified contact who announced one), else through their relay (a
/// circuit, or a connection already open).
async fn deliver_best(
    core: &Core,
    driver: &DriverHandle,
    contact: &Contact,
    envelope: &Envelope,
) -> Result<(Reply, &'static str), DeliverError> {
    let peer = contact.peer();
    let paused = core
        .direct_failed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&peer)
        .is_some_and(|t| t.elapsed() < DIRECT_PAUSE);
    let front = contact
        .direct
        .as_ref()
        .filter(|_| contact.verified && !paused)
        .and_then(|line| RelayRef::new(line.clone()).ok());
    if let Some(front) = front {
        match deliver_direct(driver, peer, front, envelope).await {
            Ok(reply) => {
                debug!("delivered over a direct connection");
                return Ok((reply, "front"));
            }
            Err(e) => {
                debug!("direct connection failed ({e}); trying the relay");
                core.direct_failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(peer, Instant::now());
            }
        }
    }
    let via = RelayRef::new(contact.address.relay.clone())
        .map_err(|e| DeliverError::Unreachable(e.to_string()))?;
    if contact.verified && contact.direct.is_none() {
        if let Some(reply) = deliver_punched(core, driver, contact, &via, envelope).await {
            return Ok((reply, "hole"));
        }
    }
    // A direct connection already open (one the contact opened through a
    // hole, say) carries it before any circuit.
    tokio::time::timeout(
        ATTEMPT,
        driver.deliver_by(peer, Route::Relay(via), envelope.clone()),
    )
    .await
    .unwrap_or(Err(DeliverError::Timeout))
    .map(|(reply, link)| match link {
        Link::Direct => (reply, "direct"),
        Link::Relayed => (reply, "relay"),
    })
}

/// Delivers over a hole punched with a verified contact who punches too:
/// through the hole already open, else after asking them (through their
/// relay) to open one. `None`: no hole; the relay carries it.
async fn deliver_punched(
    core: &Core,
    driver: &DriverHandle,
    contact: &Contact,
    via: &RelayRef,
    envelope: &Envelope,
) -> Option<Reply> {
    let punch = core.punch.as_ref()?;
    let peer = contact.peer();
    let known = core
        .punched
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&peer)
        .cloned();
    let mut asked = false;
    let line = match known {
        // They asked a moment ago and dialled us: the connection they
        // opened carries this, through the relay route.
        Some(p) if p.line.is_none() && p.at.elapsed() < PUNCH_FRESH => return None,
        Some(p) if p.failed && p.at.elapsed() < PUNCH_PAUSE => return None,
        Some(Punched {
            line: Some(line),
            at,
            failed: false,
            ..
        }) if at.elapsed() < PUNCH_FRESH || driver.has_direct(peer).await => line,
        _ => {
            let ours = punch.observed()?;
            asked = true;
            let answer = tokio::time::timeout(PUNCH_TIMEOUT, driver.punch(peer, via.clone(), ours))
                .await
                .unwrap_or(Err(DeliverError::Timeout));
            match answer {
                Ok(PunchReply::Ready { line }) => match punched_line(&line, &peer) {
                    Ok(line) => line,
                    Err(e) => {
                        warn!("contact {} answered a punch with {e}", contact.name);
                        return None;
                    }
                },
                Ok(PunchReply::Refused { reason }) => {
                    debug!("no hole punched with {}: {reason}", contact.name);
                    note_punch_failed(core, &peer, contact);
                    return None;
                }
                Err(e) => {
                    debug!("no hole punched with {}: {e}", contact.name);
                    note_punch_failed(core, &peer, contact);
                    return None;
                }
            }
        }
    };
    let addr = SocketAddr::new(line.host.parse().ok()?, line.port);
    core.record_punch(
        peer,
        Punched {
            contact: contact.name.clone(),
            addr,
            line: Some(line.clone()),
            at: Instant::now(),
            failed: false,
        },
    );
    let front = RelayRef::new(line).ok()?;
    match deliver_direct(driver, peer, front, envelope).await {
        Ok(reply) => {
            if asked {
                info!(
                    "a hole is open to {}: messages go directly, not through the relay",
                    contact.name
                );
            }
            Some(reply)
        }
        Err(e) => {
            info!(
                "no direct connection to {} through the punched hole ({e}); the relay carries it",
                contact.name
            );
            note_punch_failed(core, &peer, contact);
            None
        }
    }
}

/// Delivers over a direct connection to `front` (dialled if none is open),
/// giving it [`DIRECT_ATTEMPT`].
async fn deliver_direct(
    driver: &DriverHandle,
    peer: PeerId,
    front: RelayRef,
    envelope: &Envelope,
) -> Result<Reply, DeliverError> {
    tokio::time::timeout(
        DIRECT_ATTEMPT,
        driver.deliver(peer, Route::Direct(front), envelope.clone()),
    )
    .await
    .unwrap_or(Err(DeliverError::Timeout))
}

/// The line a contact answered a punch with, if it is one to dial: their
/// own id, HTTP/3 only, at an IP address (never a name to resolve).
fn punched_line(text: &str, peer: &PeerId) -> Result<RelayLine, String> {
    let line: RelayLine = text.parse().map_err(|e| format!("a bad line: {e}"))?;
    if line.id.as_deref() != Some(peer.to_base58().as_str()) {
        return Err("a line that is not theirs".into());
    }
    if line.carriers != [Carrier::H3] || line.pin.is_none() {
        return Err("a line that is not a punched QUIC front".into());
    }
    let ip: std::net::IpAddr = line
        .host
        .parse()
        .map_err(|_| "a line without an address".to_string())?;
    if ip.is_unspecified() || ip.is_multicast() || line.port == 0 {
        return Err("a line with an address nobody can reach".into());
    }
    Ok(line)
}

fn note_punch_failed(core: &Core, peer: &PeerId, contact: &Contact) {
    let mut punched = core.punched.lock().unwrap_or_else(|p| p.into_inner());
    match punched.get_mut(peer) {
        Some(p) => {
            p.failed = true;
            p.at = Instant::now();
        }
        None => {
            punched.insert(
                *peer,
                Punched {
                    contact: contact.name.clone(),
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    line: None,
                    at: Instant::now(),
                    failed: true,
                },
            );
        }
    }
}

/// The outcome of a delivery: `Some` when it settled the message
/// (delivered, or refused by the contact), `None` when they were not
/// reachable.
fn settle(
    core: &Core,
    m: &Message,
    contact: &Contact,
    reply: Result<(Reply, &'static str), DeliverError>,
) -> Option<Attempt> {
    match reply {
        Ok((Reply::Received, route)) => {
            let _ = core
                .lock()
                .store
                .set_out_state(&m.peer, &m.id, OutState::Delivered, now_ms());
            core.publish(&m.peer, &m.id, Direction::Out);
            Some(Attempt {
                state: OutState::Delivered,
                outcome: "delivered".into(),
                route: Some(route),
            })
        }
        Ok((Reply::Refused { reason }, _)) => Some(Attempt {
            state: m.state,
            outcome: format!("{} refused it: {reason}", contact.name),
            route: None,
        }),
        Err(e) => {
            debug!("delivery failed: {e}");
            None
        }
    }
}

/// What the trackers said about a contact, applied.
struct Located {
    contact: Contact,
    /// They moved to another relay.
    moved: bool,
    /// Their relay or their direct endpoint is not what it was.
    changed: bool,
}

/// Asks the trackers (at the contact's known relay and at home) where a
/// contact is now — at most once per `every` per contact, waiting at most
/// `wait`. What a verified contact published (a new relay, their own front
/// opened or closed) is recorded (the record is signed by them) and the
/// firewall follows; an unverified contact's announcements are not.
async fn relocate(
    core: &Core,
    driver: &DriverHandle,
    contact: &Contact,
    every: Duration,
    wait: Duration,
) -> Option<Located> {
    {
        let mut asked = core.located.lock().unwrap_or_else(|p| p.into_inner());
        let peer = contact.peer();
        if asked.get(&peer).is_some_and(|t| t.elapsed() < every) {
            return None;
        }
        asked.insert(peer, Instant::now());
    }
    let user = contact.address.public_key().ok()?;
    let mut trackers = Vec::new();
    if let Ok(known) = RelayRef::new(contact.address.relay.clone()) {
        trackers.push(known);
    }
    if let Ok(home) = RelayRef::new(core.lock().home.clone()) {
        if !trackers.iter().any(|t| t.peer == home.peer) {
            trackers.push(home);
        }
    }
    let found = tokio::time::timeout(wait, driver.locate(user, trackers))
        .await
        .ok()
        .flatten()?;
    let mut located = Located {
        contact: contact.clone(),
        moved: false,
        changed: false,
    };
    // An announcement widens the firewall to a new endpoint: only a contact
    // the user confirmed (by the short code) may do that.
    if !contact.verified {
        if found.line != contact.address.relay || found.direct.is_some() {
            warn!(
                "contact {} announced another relay or a direct endpoint; not followed until \
                 you verify them (burrow contact verify NAME --confirm)",
                contact.peer()
            );
        }
        return Some(located);
    }
    if found.direct != contact.direct {
        if let Err(e) = core
            .lock()
            .store
            .set_direct(&contact.peer(), found.direct.as_ref())
        {
            warn!("cannot record a contact's direct endpoint: {e}");
            return Some(located);
        }
        info!(
            "a contact {} direct connections",
            if found.direct.is_some() {
                "accepts"
            } else {
                "no longer accepts"
            }
        );
        located.contact.direct = found.direct;
        located.changed = true;
        core.direct_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&contact.peer());
    }
    if found.line != contact.address.relay {
        let mut address = contact.address.clone();
        address.relay = found.line;
        match core.lock().store.update_address(&contact.name, &address) {
            Ok(()) => {
                info!("a contact moved to another relay; following them there");
                located.contact.address = address;
                located.contact.moved = true;
                located.moved = true;
                located.changed = true;
            }
            Err(e) => warn!("cannot record a contact's new relay: {e}"),
        }
    }
    if located.changed {
        core.refresh_policy();
    }
    Some(located)
}

async fn send_receipts(core: &Core, driver: &DriverHandle) {
    let owed: Vec<(PeerId, Vec<MessageId>)> = core
        .receipts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .collect();
    for (peer, all) in owed {
        let Ok(Some(known)) = core.lock().store.contact_by_peer(&peer) else {
            continue;
        };
        let mut batches = all.chunks(MAX_RECEIPTS);
        for ids in batches.by_ref() {
            if !send_receipt_batch(core, driver, peer, known.clone(), ids).await {
                // Neither the contact nor its mailbox took them: the rest
                // waits for the next round with them.
                let mut owed = core.receipts.lock().unwrap_or_else(|p| p.into_inner());
                let entry = owed.entry(peer).or_default();
                entry.extend_from_slice(ids);
                entry.extend(batches.flatten());
                break;
            }
        }
    }
}

/// Sends one batch of receipts to `peer`: to the contact, else into its
/// mailbox. False if they are still owed (neither took them).
async fn send_receipt_batch(
    core: &Core,
    driver: &DriverHandle,
    peer: PeerId,
    contact: Contact,
    ids: &[MessageId],
) -> bool {
    let envelope = Envelope::Receipts { ids: ids.to_vec() };
    if let Ok((Reply::Received, _)) = deliver_best(core, driver, &contact, &envelope).await {
        return true;
    }
    let contact = match relocate(core, driver, &contact, LOCATE_EVERY, ATTEMPT).await {
        Some(found) if found.changed => {
            if let Ok((Reply::Received, _)) =
                deliver_best(core, driver, &found.contact, &envelope).await
            {
                return true;
            }
            found.contact
        }
        Some(found) => found.contact,
        None => contact,
    };
    let Ok(via) = RelayRef::new(contact.address.relay.clone()) else {
        // A relay line without an id has no mailbox to leave them in, now
        // or later: these receipts are given up (the contact's outbox
        // sends those messages again and gets them then).
        return true;
    };
    let keypair = core.lock().keypair.clone();
    match contact.address.public_key() {
        Ok(pk) => match seal::seal(&keypair, &pk, &envelope, &mut rand::rngs::OsRng) {
            Ok(sealed) => tokio::time::timeout(ATTEMPT, driver.deposit(via, peer, sealed))
                .await
                .is_ok_and(|r| r.is_ok()),
            Err(_) => false,
        },
        Err(_) => false,
    }
}

async fn outbox_loop(core: Arc<Core>, driver: DriverHandle) {
    let mut last_try: HashMap<(PeerId, MessageId), Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = core.kick.notified() => {}
            _ = tokio::time::sleep(RETRY) => {}
        }
        send_receipts(&core, &driver).await;
        let pending = match core.lock().store.outbox() {
            Ok(p) => p,
            Err(e) => {
                warn!("cannot read the outbox: {e}");
                continue;
            }
        };
        let now = Instant::now();
        last_try.retain(|_, t| now.duration_since(*t) < Duration::from_secs(600));
        core.deposited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| pending.iter().any(|m| (m.peer, m.id) == *k));
        for m in pending {
            let key = (m.peer, m.id);
            if m.state == OutState::Deposited
                && last_try
                    .get(&key)
                    .is_some_and(|t| now.duration_since(*t) < DEPOSITED_RETRY)
            {
                continue;
            }
            last_try.insert(key, now);
            let redeposit = m.state == OutState::Deposited
                && core
                    .deposited
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&key)
                    .is_none_or(|t| now.duration_since(*t) >= REDEPOSIT);
            let a = attempt(&core, &driver, &m, redeposit).await;
            debug!("outbox: {}", a.outcome);
        }
    }
}

// --------------------------------------------------------------- control

fn log_entry(r: burrow_firewall::Record) -> FirewallLogEntry {
    let (verdict, reason) = match r.verdict {
        burrow_firewall::Verdict::Approved { reason } => ("approved", reason),
        burrow_firewall::Verdict::Refused { reason } => ("refused", reason),
    };
    FirewallLogEntry {
        seq: 0,
        time_ms: r
            .time
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        component: r.component,
        target: r.target.to_string(),
        verdict: verdict.into(),
        reason,
    }
}

/// Streams firewall decisions saved after `last` until the client goes.
async fn follow_firewall_log(
    core: &Core,
    w: &mut tokio::net::unix::OwnedWriteHalf,
    mut last: Option<u64>,
) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        core.persist_audit();
        let after = last.unwrap_or(0);
        let read = core.lock().store.firewall_log(after, 1024);
        let entries = match read {
            Ok(e) => e,
            Err(e) => {
                let _ = write_response(
                    w,
                    &Response::Error {
                        error: e.to_string(),
                    },
                )
                .await;
                return;
            }
        };
        for entry in entries {
            last = Some(entry.seq);
            let event = Response::FirewallEvent {
                entry: crate::messenger::log_view(entry),
            };
            if !write_response(w, &event).await {
                return;
            }
        }
    }
}

/// `burrow firewall check --try`: the decision, then a real attempt
/// through the guarded dialer (logged like any other).
async fn try_dial(core: &Core, target: &str, udp: bool) -> Response {
    let policy = core.dialer.policy();
    let mut decision = match crate::messenger::firewall_decision(&policy, target, udp) {
        Ok(d) => d,
        Err(e) => {
            return Response::Error {
                error: format!("{e:#}"),
            }
        }
    };
    let parsed = match crate::messenger::check_target(target, udp) {
        Ok(t) => t,
        Err(e) => {
            return Response::Error {
                error: format!("{e:#}"),
            }
        }
    };
    let outcome = if udp {
        match core.dialer.udp_for(CHECK_COMPONENT, &parsed).await {
            Ok((_, addr)) => format!("UDP socket opened for {addr} (nothing sent)"),
            Err(e) => attempt_failure(e),
        }
    } else {
        match tokio::time::timeout(
            Duration::from_secs(5),
            core.dialer.connect_tcp(CHECK_COMPONENT, &parsed),
        )
        .await
        {
            Ok(Ok(_)) => "connected (and closed at once)".into(),
            Ok(Err(e)) => attempt_failure(e),
            Err(_) => "allowed, but the connection timed out".into(),
        }
    };
    core.persist_audit();
    if let Response::FirewallDecision { attempt, .. } = &mut decision {
        *attempt = Some(outcome);
    }
    decision
}

fn attempt_failure(e: burrow_firewall::Error) -> String {
    match e {
        burrow_firewall::Error::Denied(d) => {
            format!("refused by the firewall and logged: {}", d.reason)
        }
        burrow_firewall::Error::Resolve(e) => format!("allowed, but not resolved: {e}"),
        e => format!("allowed, but the connection failed: {e}"),
    }
}

/// The component name attempts from `firewall check --try` are logged under.
const CHECK_COMPONENT: &str = "firewall-check";

async fn serve_control(listener: UnixListener, core: Arc<Core>, driver: DriverHandle) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(control_connection(stream, core.clone(), driver.clone()));
            }
            Err(e) => {
                warn!("control socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn write_response(w: &mut tokio::net::unix::OwnedWriteHalf, r: &Response) -> bool {
    let Ok(mut line) = serde_json::to_vec(r) else {
        return false;
    };
    line.push(b'\n');
    w.write_all(&line).await.is_ok()
}

async fn control_connection(stream: UnixStream, core: Arc<Core>, driver: DriverHandle) {
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut line = String::new();
    loop {
        line.clear();
        // At most MAX_LINE + 1 bytes per request: a longer one is refused.
        let mut bounded = (&mut reader).take(MAX_LINE as u64 + 1);
        match bounded.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(n) if n > MAX_LINE => {
                let _ = write_response(
                    &mut w,
                    &Response::Error {
                        error: "request too long".into(),
                    },
                )
                .await;
                return;
            }
            Ok(_) => {}
        }
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let _ = write_response(
                    &mut w,
                    &Response::Error {
                        error: format!("bad request: {e}"),
                    },
                )
                .await;
                continue;
            }
        };
        let response = match req {
            Request::Watch { name } => {
                watch(&core, &mut w, name).await;
                return;
            }
            Request::Send { name, text } => send_now(&core, &driver, &name, &text).await,
            Request::FirewallLog { limit, follow } => {
                core.persist_audit();
                let r = core
                    .lock()
                    .execute(
                        Request::FirewallLog {
                            limit,
                            follow: false,
                        },
                        true,
                    )
                    .unwrap_or_else(|e| Response::Error {
                        error: format!("{e:#}"),
                    });
                if follow {
                    let last = match &r {
                        Response::FirewallLog { entries } => entries.last().map(|e| e.seq),
                        _ => None,
                    };
                    if write_response(&mut w, &r).await {
                        follow_firewall_log(&core, &mut w, last).await;
                    }
                    return;
                }
                r
            }
            Request::FirewallCheck {
                target,
                udp,
                try_dial: true,
            } => try_dial(&core, &target, udp).await,
            // Decided by the policy in force: what the stored state allows,
            // and the holes punched while the node runs.
            Request::FirewallCheck {
                target,
                udp,
                try_dial: false,
            } => crate::messenger::firewall_decision(&core.dialer.policy(), &target, udp)
                .unwrap_or_else(|e| Response::Error {
                    error: format!("{e:#}"),
                }),
            Request::FirewallList => {
                let policy = core.dialer.policy();
                Response::Firewall {
                    allow_local: policy.allow_local,
                    entries: policy
                        .entries()
                        .iter()
                        .map(crate::messenger::entry_view)
                        .collect(),
                }
            }
            other => {
                let contacts_changed = matches!(other, Request::AddContact { .. });
                let confirmed = match &other {
                    Request::Verify {
                        name,
                        confirm: true,
                    } => Some(name.clone()),
                    _ => None,
                };
                let online = *core.online.lock().unwrap_or_else(|p| p.into_inner());
                let mut r = core.lock().execute(other, online);
                if let (Ok(Response::Id { punch_ready, .. }), Some(punch)) = (&mut r, &core.punch) {
                    *punch_ready = Some(punch.observed().is_some());
                }
                if contacts_changed && r.is_ok() {
                    core.refresh_policy();
                }
                if let (Some(name), true) = (confirmed, r.is_ok()) {
                    // A contact verified just now: what they announced counts
                    // from the next attempt on, not a minute later.
                    if let Ok(Some(c)) = core.lock().store.contact(&name) {
                        core.located
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&c.peer());
                    }
                }
                r.unwrap_or_else(|e| Response::Error {
                    error: format!("{e:#}"),
                })
            }
        };
        if !write_response(&mut w, &response).await {
            return;
        }
    }
}

/// Queues a message and makes the first attempt at once, so the sender
/// learns what happened (delivered, in the mailbox, or why not).
async fn send_now(core: &Core, driver: &DriverHandle, name: &str, text: &str) -> Response {
    let queued = core.lock().queue(name, text);
    let (contact, id) = match queued {
        Ok(q) => q,
        Err(e) => {
            return Response::Error {
                error: format!("{e:#}"),
            }
        }
    };
    let msg = core
        .lock()
        .store
        .message(&contact.peer(), &id, Direction::Out)
        .ok()
        .flatten();
    let Some(msg) = msg else {
        return Response::Error {
            error: "the message was queued but cannot be read back".into(),
        };
    };
    core.publish(&contact.peer(), &id, Direction::Out);
    let a = attempt(core, driver, &msg, false).await;
    Response::Sent {
        id: message_view(&msg).id,
        outcome: a.outcome,
        route: a.route.map(String::from),
        state: match a.state {
            OutState::Pending => "pending",
            OutState::Deposited => "deposited",
            OutState::Delivered => "delivered",
        }
        .into(),
    }
}

async fn watch(core: &Core, w: &mut tokio::net::unix::OwnedWriteHalf, name: Option<String>) {
    let mut rx = core.events.subscribe();
    let found = name.as_ref().map(|n| core.lock().store.contact(n));
    let filter = match (&name, found) {
        (Some(n), Some(found)) => match found {
            Ok(Some(c)) => Some(c.name),
            _ => {
                let _ = write_response(
                    w,
                    &Response::Error {
                        error: format!("no contact named {n:?}"),
                    },
                )
                .await;
                return;
            }
        },
        _ => None,
    };
    loop {
        match rx.recv().await {
            Ok(message) => {
                if filter.as_ref().is_some_and(|f| f != &message.contact) {
                    continue;
                }
                if !write_response(w, &Response::Event { message }).await {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
