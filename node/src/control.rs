//! The control socket: how `burrow send`, `inbox`, `chat`, `contact` and
//! `id` talk to a running `burrow up`. A Unix socket in the node's data
//! directory, owner-only (0600 in a 0700 directory), one JSON object per
//! line each way.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Longest request line the daemon reads.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Id,
    Contacts,
    AddContact {
        name: String,
        address: String,
    },
    Verify {
        name: String,
        confirm: bool,
    },
    Send {
        name: String,
        text: String,
    },
    Inbox {
        name: Option<String>,
    },
    /// Streams [`Response::Event`]s for new messages and receipts.
    Watch {
        name: Option<String>,
    },
    /// Every endpoint the node may reach, and why.
    FirewallList,
    /// The decision for one host, address or URL; `try_dial` also makes
    /// the connection attempt through the firewall (it is logged).
    FirewallCheck {
        target: String,
        udp: bool,
        try_dial: bool,
    },
    /// The newest `limit` refusals; `follow` then streams
    /// [`Response::FirewallEvent`]s.
    FirewallLog {
        limit: usize,
        follow: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallEntryView {
    /// `host:port/proto`.
    pub endpoint: String,
    pub source: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallLogView {
    pub seq: u64,
    pub time_ms: u64,
    /// The part of the node that asked (`node`, `firewall-check`, …).
    pub component: String,
    pub target: String,
    /// "refused" (or "approved" when approvals are logged).
    pub verdict: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactView {
    pub name: String,
    pub id: String,
    pub fingerprint: String,
    pub verified: bool,
    pub relay: String,
    /// `HOST:PORT` of the contact's own front, when a verified contact
    /// accepts direct connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    pub id: String,
    pub contact: String,
    /// "in" or "out".
    pub direction: String,
    pub sent_at_ms: u64,
    pub text: String,
    /// Outgoing: "pending", "deposited" (in the contact's mailbox) or
    /// "delivered" (receipt received). Incoming: "received".
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    Id {
        address: String,
        fingerprint: String,
        online: bool,
        /// With `burrow up --punch`: whether the home relay has reported
        /// this node's public QUIC address (holes can be punched).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        punch_ready: Option<bool>,
    },
    Contacts {
        contacts: Vec<ContactView>,
    },
    Contact {
        contact: ContactView,
    },
    Verify {
        name: String,
        code: String,
        verified: bool,
    },
    Sent {
        id: String,
        /// What happened on the first attempt, in words.
        outcome: String,
        state: String,
        /// How it was delivered: `relay` (a circuit), `front` (the
        /// contact's own front), `hole` (a hole punched between the two) or
        /// `direct` (a direct connection the contact opened); none if not yet.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        route: Option<String>,
    },
    Messages {
        messages: Vec<MessageView>,
    },
    Event {
        message: MessageView,
    },
    Firewall {
        /// Whether loopback and private networks may be reached (the user
        /// allowed them, or the home relay is on one).
        allow_local: bool,
        entries: Vec<FirewallEntryView>,
    },
    FirewallDecision {
        target: String,
        allowed: bool,
        /// Why: the entry's reason, or the refusal.
        reason: String,
        /// The entry's source when allowed.
        source: Option<String>,
        /// What the attempt did, when one was asked for.
        attempt: Option<String>,
    },
    FirewallLog {
        entries: Vec<FirewallLogView>,
    },
    FirewallEvent {
        entry: FirewallLogView,
    },
    Error {
        error: String,
    },
}

/// Why talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no running node (start one with `burrow up`)")]
    NotRunning,
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the node sent something unreadable: {0}")]
    Protocol(String),
    #[error("{0}")]
    Refused(String),
}

/// One connection to the daemon.
#[derive(Debug)]
pub struct ControlClient {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl ControlClient {
    pub async fn connect(path: &Path) -> Result<Self, ControlError> {
        let stream = match UnixStream::connect(path).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(ControlError::NotRunning)
            }
            Err(e) => return Err(e.into()),
        };
        let (r, w) = stream.into_split();
        Ok(Self {
            reader: BufReader::new(r),
            writer: w,
        })
    }

    pub async fn send(&mut self, req: &Request) -> Result<(), ControlError> {
        let mut line =
            serde_json::to_vec(req).map_err(|e| ControlError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        Ok(())
    }

    /// The next response; an `Error` response becomes `Err(Refused)`.
    pub async fn next(&mut self) -> Result<Response, ControlError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Err(ControlError::Protocol(
                "the node closed the connection".into(),
            ));
        }
        match serde_json::from_str(&line).map_err(|e| ControlError::Protocol(e.to_string()))? {
            Response::Error { error } => Err(ControlError::Refused(error)),
            r => Ok(r),
        }
    }

    pub async fn call(&mut self, req: &Request) -> Result<Response, ControlError> {
        self.send(req).await?;
        self.next().await
    }
}
