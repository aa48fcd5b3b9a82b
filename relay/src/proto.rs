//! The mailbox protocol between a node and a relay, spoken over
//! libp2p request-response (CBOR) on [`MAILBOX_PROTOCOL`], inside the
//! Noise session that authenticates the node's PeerId.
//!
//! ```text
//! node -> relay                         relay -> node
//! Put   { to: PeerId bytes, sealed }    Stored { id } | Refused { reason }
//! Fetch                                 Items { items: [(id, sealed)] }
//! Ack   { ids }                         Acked { removed }
//! ```
//!
//! `Fetch` and `Ack` act on the mailbox of the authenticated peer that
//! sent them: proving who you are is the Noise handshake itself.

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

pub const MAILBOX_PROTOCOL: StreamProtocol = StreamProtocol::new("/burrow/mailbox/1");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailboxRequest {
    Put {
        #[serde(with = "serde_bytes")]
        to: Vec<u8>,
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
    },
    Fetch,
    Ack {
        ids: Vec<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailboxResponse {
    Stored { id: u64 },
    Refused { reason: String },
    Items { items: Vec<MailboxItem> },
    Acked { removed: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxItem {
    pub id: u64,
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
}
