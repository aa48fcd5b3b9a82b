//! The phone book: where a user can be reached now.
//!
//! Relays run Kademlia (libp2p kad) in server mode on their own protocol
//! name and keep its records in RAM only. A user's record is filed under a
//! hash of the user's id, so only someone who already knows the user can
//! ask for it; its value is encrypted with a key derived from the user's
//! public key (the relay cannot read it) and signed by the user (see the
//! node's `tracker` module). A relay takes a record only from the user it
//! is filed under — the Noise-authenticated peer that sent it — so nobody
//! can overwrite someone else's entry. Users run kad in client mode: they
//! never answer kad requests and never enter anyone's routing table.

use std::time::{Duration, Instant};

use libp2p::kad::store::{MemoryStore, RecordStore};
use libp2p::kad::{self, Record, RecordKey};
use libp2p::{PeerId, StreamProtocol};
use sha2::{Digest, Sha256};

/// The kad protocol name Burrow's trackers speak.
pub const TRACKER_PROTOCOL: StreamProtocol = StreamProtocol::new("/burrow/kad/1");

/// How long a relay keeps a record the user does not renew (users renew
/// each time they connect to their home relay).
pub const RECORD_TTL: Duration = Duration::from_secs(24 * 3600);

/// Largest record value a relay keeps.
pub const MAX_VALUE: usize = 2048;

/// The key a user's record is filed under.
pub fn record_key(user: &PeerId) -> RecordKey {
    let mut h = Sha256::new();
    h.update(b"burrow tracker key v1");
    h.update(user.to_bytes());
    RecordKey::new(&h.finalize().as_slice())
}

/// Why a relay refused a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordRefusal {
    #[error("a user may only publish their own record")]
    NotTheOwner,
    #[error("the record is larger than {MAX_VALUE} bytes")]
    TooLarge,
}

/// Checks a record a peer asked this relay to keep; returns it ready to
/// store (publisher set to the sender, expiry set by the relay).
pub fn accept_record(
    source: PeerId,
    mut record: Record,
    now: Instant,
) -> Result<Record, RecordRefusal> {
    if record.key != record_key(&source) {
        return Err(RecordRefusal::NotTheOwner);
    }
    if record.value.len() > MAX_VALUE {
        return Err(RecordRefusal::TooLarge);
    }
    record.publisher = Some(source);
    record.expires = Some(now + RECORD_TTL);
    Ok(record)
}

/// Removes expired records (kad only notices one when it is asked for);
/// returns how many remain.
pub fn expire(store: &mut MemoryStore, now: Instant) -> usize {
    let expired: Vec<RecordKey> = store
        .records()
        .filter(|r| r.is_expired(now))
        .map(|r| r.key.clone())
        .collect();
    for key in &expired {
        store.remove(key);
    }
    store.records().count()
}

/// kad settings shared by relays and users: Burrow's protocol name, no
/// periodic replication, republication or bootstrap (records are renewed
/// by their owners), no caching of found records at other peers (only the
/// owner writes), inbound records filtered by [`accept_record`].
pub fn kad_config() -> kad::Config {
    let mut c = kad::Config::new(TRACKER_PROTOCOL);
    c.set_record_ttl(Some(RECORD_TTL))
        .set_replication_interval(None)
        .set_publication_interval(None)
        .set_provider_publication_interval(None)
        .set_periodic_bootstrap_interval(None)
        .set_caching(kad::Caching::Disabled)
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        .set_query_timeout(Duration::from_secs(20))
        .set_max_packet_size(4 * 1024);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    #[test]
    fn only_the_owner_files_a_record_under_its_key() {
        let (alice, mallory) = (peer(), peer());
        let now = Instant::now();
        let record = Record::new(record_key(&alice), vec![1, 2, 3]);
        let kept = accept_record(alice, record.clone(), now).expect("owner");
        assert_eq!(kept.publisher, Some(alice));
        assert_eq!(kept.expires, Some(now + RECORD_TTL));
        assert_eq!(
            accept_record(mallory, record, now),
            Err(RecordRefusal::NotTheOwner)
        );
    }

    #[test]
    fn records_are_bounded_and_keys_differ_per_user() {
        let alice = peer();
        let big = Record::new(record_key(&alice), vec![0; MAX_VALUE + 1]);
        assert_eq!(
            accept_record(alice, big, Instant::now()),
            Err(RecordRefusal::TooLarge)
        );
        assert_ne!(record_key(&alice), record_key(&peer()));
        assert_eq!(record_key(&alice), record_key(&alice));
    }

    #[test]
    fn records_nobody_renewed_are_dropped() {
        let (alice, bob) = (peer(), peer());
        let mut store = MemoryStore::new(peer());
        let now = Instant::now();
        let old =
            accept_record(alice, Record::new(record_key(&alice), vec![1]), now).expect("alice");
        let fresh = accept_record(
            bob,
            Record::new(record_key(&bob), vec![2]),
            now + RECORD_TTL / 2,
        )
        .expect("bob");
        store.put(old).expect("put");
        store.put(fresh).expect("put");
        assert_eq!(expire(&mut store, now + RECORD_TTL / 2), 2);
        assert_eq!(
            expire(&mut store, now + RECORD_TTL + Duration::from_secs(1)),
            1
        );
        assert!(store.get(&record_key(&bob)).is_some());
        assert!(store.get(&record_key(&alice)).is_none());
    }
}
