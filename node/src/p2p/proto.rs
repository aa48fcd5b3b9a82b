//! The messaging protocol between two users: CBOR envelopes and replies on
//! one long-lived stream per connection ([`super::msgstream`], protocol
//! `/burrow/msg/2`), inside the end-to-end Noise session between them
//! (direct, or through a relay circuit that sees only ciphertext).
//!
//! ```text
//! sender -> recipient                        recipient -> sender
//! Message { id: 16 bytes, sent_at_ms, text } Reply::Received   (the receipt)
//! Receipts { ids }                           Reply::Received
//!                                            Reply::Refused { reason }
//! ```
//!
//! `Receipts` confirm messages that arrived through a mailbox, whose
//! sender was not there to get the `Reply`.

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

/// Longest message text, in bytes of UTF-8.
pub const MAX_TEXT: usize = 16 * 1024;

/// Most ids one `Receipts` envelope carries (a longer list goes in several).
pub const MAX_RECEIPTS: usize = 256;

/// A message id: random, 16 bytes.
pub type MessageId = [u8; 16];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Envelope {
    Message {
        id: MessageId,
        sent_at_ms: u64,
        text: String,
    },
    Receipts {
        ids: Vec<MessageId>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Received,
    Refused { reason: String },
}

/// Hole punching between two users (see `crate::punch`), over the relayed
/// connection between them:
///
/// ```text
/// asker -> contact                          contact -> asker
/// PunchRequest { addr }                     PunchReply::Ready { line }
///                                           PunchReply::Refused { reason }
/// ```
///
/// `addr` is the asker's public QUIC address (as its home relay saw it),
/// toward which the contact sends a few datagrams; `line` is the contact's
/// QUIC front at its own public address, for the asker to dial.
pub const PUNCH_PROTOCOL: StreamProtocol = StreamProtocol::new("/burrow/punch/1");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PunchRequest {
    pub addr: std::net::SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PunchReply {
    Ready { line: String },
    Refused { reason: String },
}
