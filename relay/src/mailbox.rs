//! The RAM-only mailbox: sealed messages for users who are offline, held
//! until the owner fetches and acknowledges them.
//!
//! A plain state machine: the caller passes the current time in, nothing
//! here touches a clock, a socket or the disk. The relay cannot read what
//! it holds — items are sealed to the recipient by the sender — and it
//! never writes them anywhere but memory.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// How much one relay keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxLimits {
    /// Messages held for one recipient.
    pub per_recipient: usize,
    /// Age after which an unfetched message is dropped.
    pub max_age: Duration,
    /// Bytes held for all recipients together.
    pub total_bytes: usize,
    /// Largest single sealed message.
    pub max_item: usize,
    /// Most items handed over in one fetch.
    pub max_fetch: usize,
}

impl Default for MailboxLimits {
    fn default() -> Self {
        Self {
            per_recipient: 1000,
            max_age: Duration::from_secs(7 * 24 * 3600),
            total_bytes: 256 * 1024 * 1024,
            max_item: 64 * 1024,
            max_fetch: 64,
        }
    }
}

/// Why a message was not stored; the text reaches the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the recipient's mailbox is full ({limit} messages waiting)")]
    RecipientFull { limit: usize },
    #[error("the relay's mailbox storage is full")]
    RelayFull,
    #[error("message too large for the mailbox ({size} bytes, at most {max})")]
    TooLarge { size: usize, max: usize },
}

#[derive(Debug)]
struct Item {
    id: u64,
    stored_at: Instant,
    sealed: Vec<u8>,
}

/// Every recipient's mailbox on one relay.
#[derive(Debug, Default)]
pub struct Mailboxes {
    limits: MailboxLimits,
    boxes: HashMap<PeerId, VecDeque<Item>>,
    bytes: usize,
    count: usize,
    next_id: u64,
}

impl Mailboxes {
    pub fn new(limits: MailboxLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    pub fn limits(&self) -> &MailboxLimits {
        &self.limits
    }

    /// Messages held, over all recipients.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of sealed messages held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Stores a sealed message for `to`; returns its id.
    pub fn put(&mut self, now: Instant, to: PeerId, sealed: Vec<u8>) -> Result<u64, Refusal> {
        self.expire(now);
        if sealed.len() > self.limits.max_item {
            return Err(Refusal::TooLarge {
                size: sealed.len(),
                max: self.limits.max_item,
            });
        }
        if self.bytes + sealed.len() > self.limits.total_bytes {
            return Err(Refusal::RelayFull);
        }
        let queue = self.boxes.entry(to).or_default();
        if queue.len() >= self.limits.per_recipient {
            return Err(Refusal::RecipientFull {
                limit: self.limits.per_recipient,
            });
        }
        self.next_id += 1;
        self.bytes += sealed.len();
        self.count += 1;
        queue.push_back(Item {
            id: self.next_id,
            stored_at: now,
            sealed,
        });
        Ok(self.next_id)
    }

    /// The oldest messages waiting for `owner` (at most `max_fetch`); they
    /// stay until acknowledged, so a fetch that never arrives loses nothing.
    pub fn fetch(&mut self, now: Instant, owner: &PeerId) -> Vec<(u64, Vec<u8>)> {
        self.expire(now);
        self.boxes
            .get(owner)
            .map(|q| {
                q.iter()
                    .take(self.limits.max_fetch)
                    .map(|i| (i.id, i.sealed.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Deletes the acknowledged messages of `owner`; returns how many were
    /// deleted. Ids of other recipients are ignored.
    pub fn ack(&mut self, owner: &PeerId, ids: &[u64]) -> usize {
        let Some(queue) = self.boxes.get_mut(owner) else {
            return 0;
        };
        let before = queue.len();
        let mut freed = 0;
        queue.retain(|i| {
            let keep = !ids.contains(&i.id);
            if !keep {
                freed += i.sealed.len();
            }
            keep
        });
        let removed = before - queue.len();
        if queue.is_empty() {
            self.boxes.remove(owner);
        }
        self.bytes -= freed;
        self.count -= removed;
        removed
    }

    /// Drops messages older than the age limit.
    pub fn expire(&mut self, now: Instant) {
        let max_age = self.limits.max_age;
        let (mut freed, mut removed) = (0, 0);
        self.boxes.retain(|_, queue| {
            while let Some(front) = queue.front() {
                if now.saturating_duration_since(front.stored_at) < max_age {
                    break;
                }
                freed += front.sealed.len();
                removed += 1;
                queue.pop_front();
            }
            !queue.is_empty()
        });
        self.bytes -= freed;
        self.count -= removed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> MailboxLimits {
        MailboxLimits {
            per_recipient: 3,
            max_age: Duration::from_secs(60),
            total_bytes: 100,
            max_item: 40,
            max_fetch: 2,
        }
    }

    #[test]
    fn fetch_ack_and_ownership() {
        let t0 = Instant::now();
        let (alice, bob) = (PeerId::random(), PeerId::random());
        let mut m = Mailboxes::new(small());
        let a = m.put(t0, alice, b"one".to_vec()).expect("stored");
        let b = m.put(t0, alice, b"two".to_vec()).expect("stored");
        m.put(t0, alice, b"three".to_vec()).expect("stored");
        assert_eq!(m.fetch(t0, &bob), vec![]);
        let got = m.fetch(t0, &alice);
        assert_eq!(got, vec![(a, b"one".to_vec()), (b, b"two".to_vec())]);
        // Fetching again without an ack returns the same items.
        assert_eq!(m.fetch(t0, &alice).len(), 2);
        // Bob cannot delete Alice's messages.
        assert_eq!(m.ack(&bob, &[a, b]), 0);
        assert_eq!(m.ack(&alice, &[a, b]), 2);
        assert_eq!(m.len(), 1);
        assert_eq!(m.bytes(), 5);
        assert_eq!(m.fetch(t0, &alice)[0].1, b"three".to_vec());
    }

    #[test]
    fn every_limit_refuses_with_its_reason() {
        let t0 = Instant::now();
        let mut m = Mailboxes::new(small());
        let alice = PeerId::random();
        assert_eq!(
            m.put(t0, alice, vec![0; 41]),
            Err(Refusal::TooLarge { size: 41, max: 40 })
        );
        for _ in 0..3 {
            m.put(t0, alice, vec![0; 10]).expect("room");
        }
        assert_eq!(
            m.put(t0, alice, vec![0; 10]),
            Err(Refusal::RecipientFull { limit: 3 })
        );
        // 30 bytes held; two more recipients fill the 100-byte budget.
        m.put(t0, PeerId::random(), vec![0; 40]).expect("room");
        m.put(t0, PeerId::random(), vec![0; 30]).expect("room");
        assert_eq!(
            m.put(t0, PeerId::random(), vec![0; 1]),
            Err(Refusal::RelayFull)
        );
        assert_eq!(m.bytes(), 100);
    }

    #[test]
    fn old_messages_expire() {
        let t0 = Instant::now();
        let mut m = Mailboxes::new(small());
        let alice = PeerId::random();
        m.put(t0, alice, vec![1; 10]).expect("room");
        m.put(t0 + Duration::from_secs(30), alice, vec![2; 10])
            .expect("room");
        let got = m.fetch(t0 + Duration::from_secs(61), &alice);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, vec![2; 10]);
        m.expire(t0 + Duration::from_secs(100));
        assert!(m.is_empty());
        assert_eq!(m.bytes(), 0);
    }
}
