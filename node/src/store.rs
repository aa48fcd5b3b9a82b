//! The local store: settings, contacts, messages and the outbox in one
//! SQLite database encrypted as a whole (SQLCipher; the raw key comes from
//! the password through the keystore's Argon2id).
//!
//! Every change is a transaction with `synchronous = FULL`: a killed
//! process or a full disk leaves the last committed state, never half of
//! one. A database that does not open with the key is reported as damaged
//! and left untouched.

use std::path::Path;

use burrow_obfs::RelayLine;
use libp2p::PeerId;
use rusqlite::{params, Connection, OptionalExtension};

use crate::identity::Address;
use crate::p2p::proto::MessageId;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the message database is damaged or belongs to another identity; it was left as it is"
    )]
    Damaged,
    #[error("the disk is full: nothing was changed")]
    DiskFull,
    #[error("{0}")]
    Conflict(String),
    #[error("no contact named {0:?}")]
    NoContact(String),
    #[error("database error: {0}")]
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::DiskFull,
            Some(rusqlite::ErrorCode::NotADatabase)
            | Some(rusqlite::ErrorCode::DatabaseCorrupt) => StoreError::Damaged,
            _ => StoreError::Sql(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A contact as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub name: String,
    pub address: Address,
    pub verified: bool,
    /// The relay in `address` is one the contact announced later (a
    /// signed tracker record), not the one their address was given with.
    pub moved: bool,
    /// The contact's own front, when they announced that they accept
    /// direct connections (kept only for verified contacts).
    pub direct: Option<RelayLine>,
}

impl Contact {
    pub fn peer(&self) -> PeerId {
        self.address.user
    }
}

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

/// Where an outgoing message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutState {
    /// Not yet handed over.
    Pending,
    /// Left in the contact's mailbox; waiting for the receipt.
    Deposited,
    /// The contact's receipt arrived.
    Delivered,
}

impl OutState {
    fn as_str(self) -> &'static str {
        match self {
            OutState::Pending => "pending",
            OutState::Deposited => "deposited",
            OutState::Delivered => "delivered",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "delivered" => OutState::Delivered,
            "deposited" => OutState::Deposited,
            _ => OutState::Pending,
        }
    }
}

/// One message, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: MessageId,
    pub contact: String,
    pub peer: PeerId,
    pub direction: Direction,
    pub sent_at_ms: u64,
    pub text: String,
    /// For outgoing messages.
    pub state: OutState,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS contacts (
    name TEXT PRIMARY KEY,
    peer TEXT NOT NULL UNIQUE,
    address TEXT NOT NULL,
    verified INTEGER NOT NULL DEFAULT 0,
    added_ms INTEGER NOT NULL,
    moved INTEGER NOT NULL DEFAULT 0,
    direct TEXT
);
CREATE TABLE IF NOT EXISTS messages (
    peer TEXT NOT NULL,
    id BLOB NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    sent_at_ms INTEGER NOT NULL,
    text TEXT NOT NULL,
    state TEXT NOT NULL,
    changed_ms INTEGER NOT NULL,
    PRIMARY KEY (peer, id, direction)
);
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (sent_at_ms);
CREATE TABLE IF NOT EXISTS firewall_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms INTEGER NOT NULL,
    component TEXT NOT NULL,
    target TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('refused', 'approved')),
    reason TEXT NOT NULL
);
";

/// The open database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A contact's columns as read: name, address, verified, moved, direct.
type ContactRow = (String, String, bool, bool, Option<String>);

impl Store {
    /// Opens (or creates) the database at `path` with `key`.
    pub fn open(path: &Path, key: &[u8; 32]) -> Result<Self> {
        let conn = Connection::open(path)?;
        // A raw 256-bit key: SQLCipher skips its own password hashing.
        // SQLCipher logs decryption failures to stderr itself; we report them.
        let _ = conn.execute_batch("PRAGMA cipher_log_level = NONE;");
        conn.execute_batch(&format!("PRAGMA key = \"x'{}'\";", hex(key)))?;
        // The first read proves the key (and the file) are right.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
            .map_err(|e| match StoreError::from(e) {
                StoreError::Sql(_) => StoreError::Damaged,
                other => other,
            })?;
        // A rollback journal, not WAL: between transactions the database is
        // this one file, so a copy or a backup of it is complete.
        conn.execute_batch(
            "PRAGMA journal_mode = DELETE; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        // Stores made before contacts could move, or announce a direct
        // endpoint, lack those columns.
        for (column, definition) in [
            ("moved", "moved INTEGER NOT NULL DEFAULT 0"),
            ("direct", "direct TEXT"),
        ] {
            let present: bool = conn.query_row(
                "SELECT COUNT(*) FROM pragma_table_info('contacts') WHERE name = ?1",
                [column],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )?;
            if !present {
                conn.execute_batch(&format!("ALTER TABLE contacts ADD COLUMN {definition};"))?;
            }
        }
        Ok(Self { conn })
    }

    // ------------------------------------------------------------ settings

    fn relay_setting(&self, key: &str) -> Result<Option<RelayLine>> {
        self.setting(key)?
            .map(|t| t.parse().map_err(|_| StoreError::Damaged))
            .transpose()
    }

    fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    pub fn home_relay(&self) -> Result<Option<RelayLine>> {
        self.relay_setting("home_relay")
    }

    /// The home relay before the last change: the node keeps telling its
    /// tracker where it went, for contacts who still have the old address.
    pub fn previous_home_relay(&self) -> Result<Option<RelayLine>> {
        self.relay_setting("previous_home_relay")
    }

    /// Sets the home relay; a different one becomes the previous home.
    pub fn set_home_relay(&self, line: &RelayLine) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        if let Some(old) = self.home_relay()? {
            if &old != line {
                self.set_setting("previous_home_relay", &old.to_string())?;
            }
        }
        self.set_setting("home_relay", &line.to_string())?;
        tx.commit()?;
        Ok(())
    }

    fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// The resolver names are looked up with (a `--resolver` spec); none
    /// set means the built-in default.
    pub fn resolver(&self) -> Result<Option<String>> {
        self.setting("resolver")
    }

    pub fn set_resolver(&self, spec: &str) -> Result<()> {
        self.set_setting("resolver", spec)
    }

    /// Whether the firewall lets the node reach loopback, private and
    /// link-local addresses (off unless the user turned it on).
    pub fn allow_local_networks(&self) -> Result<bool> {
        Ok(self.setting("allow_local_networks")?.as_deref() == Some("1"))
    }

    pub fn set_allow_local_networks(&self, allow: bool) -> Result<()> {
        self.set_setting("allow_local_networks", if allow { "1" } else { "0" })
    }

    /// Whether approved connections are logged too, not only refusals.
    pub fn log_approvals(&self) -> Result<bool> {
        Ok(self.setting("log_approvals")?.as_deref() == Some("1"))
    }

    pub fn set_log_approvals(&self, on: bool) -> Result<()> {
        self.set_setting("log_approvals", if on { "1" } else { "0" })
    }

    /// The material of this node's own front for direct connections (gate
    /// key, certificate, tunnel path), kept so that the endpoint contacts
    /// learned stays valid across restarts.
    pub fn direct_listener(&self) -> Result<Option<String>> {
        self.setting("direct_listener")
    }

    pub fn set_direct_listener(&self, value: &str) -> Result<()> {
        self.set_setting("direct_listener", value)
    }

    // ------------------------------------------------------------ contacts

    /// Adds a contact; a name or a user already present is a conflict.
    pub fn add_contact(&self, name: &str, address: &Address, now_ms: u64) -> Result<Contact> {
        if let Some(existing) = self.contact_by_peer(&address.user)? {
            return Err(StoreError::Conflict(format!(
                "this user is already a contact, named {:?}",
                existing.name
            )));
        }
        if self.contact(name)?.is_some() {
            return Err(StoreError::Conflict(format!(
                "a contact named {name:?} already exists"
            )));
        }
        self.conn.execute(
            "INSERT INTO contacts (name, peer, address, verified, added_ms) VALUES (?1, ?2, ?3, 0, ?4)",
            params![name, address.user.to_base58(), address.to_string(), now_ms as i64],
        )?;
        Ok(Contact {
            name: name.to_string(),
            address: address.clone(),
            verified: false,
            moved: false,
            direct: None,
        })
    }

    /// Replaces a contact's address with one whose relay they announced
    /// (a new home relay); keeps the rest.
    pub fn update_address(&self, name: &str, address: &Address) -> Result<()> {
        let c = self
            .contact(name)?
            .ok_or_else(|| StoreError::NoContact(name.into()))?;
        if c.peer() != address.user {
            return Err(StoreError::Conflict(
                "the new address belongs to a different user".into(),
            ));
        }
        self.conn.execute(
            "UPDATE contacts SET address = ?2, moved = 1 WHERE name = ?1",
            params![name, address.to_string()],
        )?;
        Ok(())
    }

    /// Records the direct endpoint `peer` announced (`None`: they no
    /// longer accept direct connections, or are not trusted with one).
    pub fn set_direct(&self, peer: &PeerId, direct: Option<&RelayLine>) -> Result<()> {
        self.conn.execute(
            "UPDATE contacts SET direct = ?2 WHERE peer = ?1",
            params![peer.to_base58(), direct.map(|d| d.to_string())],
        )?;
        Ok(())
    }

    fn row_contact(r: &rusqlite::Row<'_>) -> rusqlite::Result<ContactRow> {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    }

    fn to_contact((name, address, verified, moved, direct): ContactRow) -> Result<Contact> {
        Ok(Contact {
            name,
            address: address.parse().map_err(|_| StoreError::Damaged)?,
            verified,
            moved,
            direct: direct
                .map(|d| d.parse().map_err(|_| StoreError::Damaged))
                .transpose()?,
        })
    }

    pub fn contacts(&self) -> Result<Vec<Contact>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, address, verified, moved, direct FROM contacts ORDER BY name")?;
        let rows = stmt.query_map([], Self::row_contact)?;
        rows.map(|r| Self::to_contact(r?)).collect()
    }

    pub fn contact(&self, name: &str) -> Result<Option<Contact>> {
        self.conn
            .query_row(
                "SELECT name, address, verified, moved, direct FROM contacts WHERE name = ?1",
                params![name],
                Self::row_contact,
            )
            .optional()?
            .map(Self::to_contact)
            .transpose()
    }

    pub fn contact_by_peer(&self, peer: &PeerId) -> Result<Option<Contact>> {
        self.conn
            .query_row(
                "SELECT name, address, verified, moved, direct FROM contacts WHERE peer = ?1",
                params![peer.to_base58()],
                Self::row_contact,
            )
            .optional()?
            .map(Self::to_contact)
            .transpose()
    }

    pub fn set_verified(&self, name: &str, verified: bool) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE contacts SET verified = ?2 WHERE name = ?1",
            params![name, verified],
        )?;
        if n == 0 {
            return Err(StoreError::NoContact(name.into()));
        }
        Ok(())
    }

    // ------------------------------------------------------------ messages

    /// Puts a new outgoing message in the outbox.
    pub fn queue_outgoing(
        &self,
        peer: &PeerId,
        id: &MessageId,
        sent_at_ms: u64,
        text: &str,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO messages (peer, id, direction, sent_at_ms, text, state, changed_ms)
             VALUES (?1, ?2, 'out', ?3, ?4, 'pending', ?3)",
            params![peer.to_base58(), &id[..], sent_at_ms as i64, text],
        )?;
        Ok(())
    }

    /// Records an outgoing message's progress; a receipt never goes back.
    pub fn set_out_state(
        &self,
        peer: &PeerId,
        id: &MessageId,
        state: OutState,
        now_ms: u64,
    ) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE messages SET state = ?3, changed_ms = ?4
             WHERE peer = ?1 AND id = ?2 AND direction = 'out' AND state != 'delivered'",
            params![peer.to_base58(), &id[..], state.as_str(), now_ms as i64],
        )?;
        Ok(n > 0)
    }

    /// Stores an incoming message; returns false if it was already there
    /// (a duplicate, dropped).
    pub fn store_incoming(
        &self,
        peer: &PeerId,
        id: &MessageId,
        sent_at_ms: u64,
        text: &str,
        now_ms: u64,
    ) -> Result<bool> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO messages (peer, id, direction, sent_at_ms, text, state, changed_ms)
             VALUES (?1, ?2, 'in', ?3, ?4, 'received', ?5)",
            params![peer.to_base58(), &id[..], sent_at_ms as i64, text, now_ms as i64],
        )?;
        Ok(n > 0)
    }

    fn messages_where(&self, clause: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<Message>> {
        let sql = format!(
            "SELECT m.id, c.name, m.peer, m.direction, m.sent_at_ms, m.text, m.state
             FROM messages m LEFT JOIN contacts c ON c.peer = m.peer
             {clause}"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(args, |r| {
            let id: Vec<u8> = r.get(0)?;
            let name: Option<String> = r.get(1)?;
            let peer: String = r.get(2)?;
            let direction: String = r.get(3)?;
            let sent: i64 = r.get(4)?;
            let text: String = r.get(5)?;
            let state: String = r.get(6)?;
            Ok((id, name, peer, direction, sent, text, state))
        })?;
        rows.map(|row| {
            let (id, name, peer, direction, sent, text, state) = row?;
            Ok(Message {
                id: id.try_into().map_err(|_| StoreError::Damaged)?,
                contact: name.unwrap_or_default(),
                peer: peer.parse().map_err(|_| StoreError::Damaged)?,
                direction: if direction == "in" {
                    Direction::In
                } else {
                    Direction::Out
                },
                sent_at_ms: u64::try_from(sent).unwrap_or(0),
                text,
                state: OutState::parse(&state),
            })
        })
        .collect()
    }

    /// Messages both ways, oldest first; with a contact, only theirs.
    pub fn conversation(&self, peer: Option<&PeerId>) -> Result<Vec<Message>> {
        match peer {
            Some(p) => self.messages_where(
                "WHERE m.peer = ?1 ORDER BY m.sent_at_ms, m.rowid",
                &[&p.to_base58()],
            ),
            None => self.messages_where("ORDER BY m.sent_at_ms, m.rowid", &[]),
        }
    }

    /// One message by contact, id and direction.
    pub fn message(
        &self,
        peer: &PeerId,
        id: &MessageId,
        direction: Direction,
    ) -> Result<Option<Message>> {
        let dir = match direction {
            Direction::In => "in",
            Direction::Out => "out",
        };
        Ok(self
            .messages_where(
                "WHERE m.peer = ?1 AND m.id = ?2 AND m.direction = ?3",
                &[&peer.to_base58(), &&id[..], &dir],
            )?
            .pop())
    }

    /// Outgoing messages without a receipt yet, oldest first.
    pub fn outbox(&self) -> Result<Vec<Message>> {
        self.messages_where(
            "WHERE m.direction = 'out' AND m.state != 'delivered' ORDER BY m.sent_at_ms, m.rowid",
            &[],
        )
    }
}

/// One firewall decision as the store keeps it (endpoints and reasons,
/// never message content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallLogEntry {
    pub seq: u64,
    pub time_ms: u64,
    pub component: String,
    pub target: String,
    /// "refused" or "approved".
    pub verdict: String,
    pub reason: String,
}

/// Firewall decisions the store keeps; older ones rotate out.
pub const FIREWALL_LOG_KEEP: u64 = 10_000;

impl Store {
    /// Appends decisions and drops the oldest beyond [`FIREWALL_LOG_KEEP`].
    pub fn append_firewall_log(&self, entries: &[FirewallLogEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO firewall_log (time_ms, component, target, verdict, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for e in entries {
                insert.execute(params![
                    e.time_ms as i64,
                    e.component,
                    e.target,
                    e.verdict,
                    e.reason
                ])?;
            }
        }
        tx.execute(
            "DELETE FROM firewall_log WHERE seq <= (SELECT MAX(seq) FROM firewall_log) - ?1",
            params![FIREWALL_LOG_KEEP as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Decisions after `seq`, oldest first, at most `limit` (the newest).
    pub fn firewall_log(&self, after: u64, limit: usize) -> Result<Vec<FirewallLogEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, time_ms, component, target, verdict, reason FROM firewall_log
             WHERE seq > ?1 ORDER BY seq DESC LIMIT ?2",
        )?;
        let mut rows: Vec<FirewallLogEntry> = stmt
            .query_map(params![after as i64, limit as i64], |r| {
                Ok(FirewallLogEntry {
                    seq: r.get::<_, i64>(0)? as u64,
                    time_ms: r.get::<_, i64>(1)? as u64,
                    component: r.get(2)?,
                    target: r.get(3)?,
                    verdict: r.get(4)?,
                    reason: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        rows.reverse();
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(user: PeerId) -> Address {
        let line: RelayLine = RelayLine::from_body(
            "relay.example:8443/api/v2/events?k=BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc&c=h2&id=12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
        )
        .expect("line");
        Address { user, relay: line }
    }

    fn user() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    /// A store written before contacts could move or announce a direct
    /// endpoint (no `moved`, no `direct` column) opens, keeps its contacts,
    /// and records both from then on.
    #[test]
    fn an_older_store_gains_the_new_columns() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("store.db");
        let key = [9u8; 32];
        let bob = user();
        {
            let s = Store::open(&path, &key).expect("open");
            s.add_contact("bob", &address(bob), 1).expect("add");
            s.conn
                .execute_batch(
                    "ALTER TABLE contacts DROP COLUMN moved; ALTER TABLE contacts DROP COLUMN direct;",
                )
                .expect("back to the old schema");
        }
        let s = Store::open(&path, &key).expect("reopen");
        let c = s.contact("bob").expect("read").expect("bob");
        assert!(!c.moved);
        assert_eq!(c.direct, None);
        s.update_address("bob", &address(bob)).expect("move");
        assert!(s.contact("bob").expect("read").expect("bob").moved);
        let front = address(bob).relay;
        s.set_direct(&bob, Some(&front)).expect("direct");
        assert_eq!(
            s.contact("bob").expect("read").expect("bob").direct,
            Some(front)
        );
        s.set_direct(&bob, None).expect("no direct");
        assert_eq!(s.contact("bob").expect("read").expect("bob").direct, None);
    }

    #[test]
    fn contacts_messages_and_the_outbox() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("store.db");
        let key = [5u8; 32];
        let bob = user();
        {
            let s = Store::open(&path, &key).expect("open");
            s.add_contact("bob", &address(bob), 1).expect("add");
            assert!(matches!(
                s.add_contact("bob", &address(user()), 2),
                Err(StoreError::Conflict(_))
            ));
            assert!(matches!(
                s.add_contact("robert", &address(bob), 2),
                Err(StoreError::Conflict(_))
            ));
            s.set_verified("bob", true).expect("verify");
            assert!(matches!(
                s.set_verified("carol", true),
                Err(StoreError::NoContact(_))
            ));
            s.queue_outgoing(&bob, &[1; 16], 100, "first")
                .expect("queue");
            s.queue_outgoing(&bob, &[2; 16], 300, "third")
                .expect("queue");
            assert!(s
                .store_incoming(&bob, &[9; 16], 200, "second", 250)
                .expect("in"));
            assert!(!s
                .store_incoming(&bob, &[9; 16], 200, "second", 260)
                .expect("dup"));
            s.set_out_state(&bob, &[1; 16], OutState::Delivered, 400)
                .expect("receipt");
            // A late "deposited" does not undo a receipt.
            assert!(!s
                .set_out_state(&bob, &[1; 16], OutState::Deposited, 500)
                .expect("noop"));
        }
        // Everything is still there after reopening.
        let s = Store::open(&path, &key).expect("reopen");
        let contacts = s.contacts().expect("contacts");
        assert_eq!(contacts.len(), 1);
        assert!(contacts[0].verified);
        let texts: Vec<String> = s
            .conversation(Some(&bob))
            .expect("conv")
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(texts, ["first", "second", "third"]);
        let outbox = s.outbox().expect("outbox");
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox[0].text, "third");
        assert_eq!(outbox[0].contact, "bob");
    }

    #[test]
    fn wrong_key_or_damage_is_refused_and_the_file_kept() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("store.db");
        Store::open(&path, &[1; 32])
            .expect("create")
            .add_contact("bob", &address(user()), 1)
            .expect("add");
        let before = std::fs::read(&path).expect("read");
        assert!(matches!(
            Store::open(&path, &[2; 32]),
            Err(StoreError::Damaged)
        ));
        assert_eq!(std::fs::read(&path).expect("read"), before);
        // Nothing readable in the file.
        assert!(!before.windows(3).any(|w| w == b"bob"));
        let mut damaged = before.clone();
        for b in damaged.iter_mut().take(64) {
            *b ^= 0xff;
        }
        std::fs::write(&path, &damaged).expect("write");
        assert!(matches!(
            Store::open(&path, &[1; 32]),
            Err(StoreError::Damaged)
        ));
    }

    #[test]
    fn the_firewall_log_rotates_and_reads_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("s.db"), &[3u8; 32]).expect("open");
        let entry = |n: u64| FirewallLogEntry {
            seq: 0,
            time_ms: n,
            component: "node".into(),
            target: format!("10.0.0.{}:443/tcp", n % 250),
            verdict: "refused".into(),
            reason: "not on the allowlist".into(),
        };
        let batch: Vec<_> = (1..=FIREWALL_LOG_KEEP + 5).map(entry).collect();
        s.append_firewall_log(&batch).expect("append");
        let all = s.firewall_log(0, usize::MAX >> 1).expect("read");
        assert_eq!(all.len() as u64, FIREWALL_LOG_KEEP);
        assert_eq!(all[0].time_ms, 6, "the oldest five rotated out");
        let last = s.firewall_log(0, 2).expect("read");
        assert_eq!(
            last.iter().map(|e| e.time_ms).collect::<Vec<_>>(),
            [FIREWALL_LOG_KEEP + 4, FIREWALL_LOG_KEEP + 5]
        );
        let after = s.firewall_log(last[0].seq, 10).expect("read");
        assert_eq!(after.len(), 1);
    }
}
