//! A user's entry in the phone book: "reach me through this relay",
//! readable only by someone who already knows the user's key, and signed
//! by the user.
//!
//! ```text
//! key    = SHA-256("burrow tracker key v1" | user id)          (burrow_relay::tracker)
//! value  = 0x01 | nonce (24) | XChaCha20-Poly1305(k, nonce, aad = key, inner)
//! k      = SHA-256("burrow tracker enc v1" | user's public key)
//! inner  = CBOR { line, direct?, issued_ms, sig }
//! sig    = Ed25519_user("burrow tracker sig v1" | key | line | issued_ms)
//!          or, with a direct endpoint,
//!          Ed25519_user("burrow tracker sig v2" | key | line | direct | issued_ms)
//! ```
//!
//! `direct` is the line of the user's own front, for a user who accepts
//! connections (`burrow up --listen`): contacts try it before the relay.
//!
//! A relay cannot read the value (it sees only the key's hash); it keeps a
//! record only from the user it is filed under. A reader checks the
//! signature, so a relay cannot point anyone elsewhere.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use libp2p::identity::{Keypair, PublicKey};
use libp2p::kad::{Record, RecordKey};
use libp2p::PeerId;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use burrow_obfs::RelayLine;
pub use burrow_relay::tracker::record_key;

const VERSION: u8 = 1;
const NONCE: usize = 24;

/// Where a user said they can be reached, and when they said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub line: RelayLine,
    /// The user's own front, when they accept direct connections; its
    /// `id=` is the user's id.
    pub direct: Option<RelayLine>,
    pub issued_ms: u64,
}

/// Why a record could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    #[error("the record is malformed")]
    Malformed,
    #[error("the record was not made for this user, or was altered")]
    Undecryptable,
    #[error("the user's signature does not verify")]
    BadSignature,
    #[error("the record names an unusable relay line")]
    BadLine,
    #[error("cannot make the record: {0}")]
    Make(String),
}

#[derive(Serialize, Deserialize)]
struct Inner {
    line: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    direct: Option<String>,
    issued_ms: u64,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
}

fn cipher(user: &PublicKey) -> XChaCha20Poly1305 {
    let mut h = Sha256::new();
    h.update(b"burrow tracker enc v1");
    h.update(user.encode_protobuf());
    XChaCha20Poly1305::new(&h.finalize())
}

fn signed_bytes(key: &RecordKey, line: &str, direct: Option<&str>, issued_ms: u64) -> Vec<u8> {
    let mut m = match direct {
        None => b"burrow tracker sig v1".to_vec(),
        Some(_) => b"burrow tracker sig v2".to_vec(),
    };
    m.extend_from_slice(key.as_ref());
    for part in std::iter::once(line).chain(direct) {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part.as_bytes());
    }
    m.extend_from_slice(&issued_ms.to_be_bytes());
    m
}

/// The record saying `keypair`'s user is reachable through `line` (and
/// directly at `direct`, when given).
pub fn make_record(
    keypair: &Keypair,
    line: &RelayLine,
    direct: Option<&RelayLine>,
    issued_ms: u64,
    rng: &mut impl RngCore,
) -> Result<Record, TrackerError> {
    let user = keypair.public().to_peer_id();
    let key = record_key(&user);
    let line = line.to_string();
    let direct = direct.map(|d| d.to_string());
    let sig = keypair
        .sign(&signed_bytes(&key, &line, direct.as_deref(), issued_ms))
        .map_err(|e| TrackerError::Make(e.to_string()))?;
    let mut inner = Vec::new();
    ciborium::into_writer(
        &Inner {
            line,
            direct,
            issued_ms,
            sig,
        },
        &mut inner,
    )
    .map_err(|e| TrackerError::Make(e.to_string()))?;
    let mut nonce = [0u8; NONCE];
    rng.fill_bytes(&mut nonce);
    let sealed = cipher(&keypair.public())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &inner,
                aad: key.as_ref(),
            },
        )
        .map_err(|e| TrackerError::Make(e.to_string()))?;
    let mut value = Vec::with_capacity(1 + NONCE + sealed.len());
    value.push(VERSION);
    value.extend_from_slice(&nonce);
    value.extend_from_slice(&sealed);
    Ok(Record::new(key, value))
}

/// Reads and checks `user`'s record value.
pub fn open_record(user: &PublicKey, value: &[u8]) -> Result<Location, TrackerError> {
    if value.len() < 1 + NONCE + 16 || value[0] != VERSION {
        return Err(TrackerError::Malformed);
    }
    let key = record_key(&PeerId::from_public_key(user));
    let inner = cipher(user)
        .decrypt(
            XNonce::from_slice(&value[1..1 + NONCE]),
            Payload {
                msg: &value[1 + NONCE..],
                aad: key.as_ref(),
            },
        )
        .map_err(|_| TrackerError::Undecryptable)?;
    let inner: Inner =
        ciborium::from_reader(inner.as_slice()).map_err(|_| TrackerError::Malformed)?;
    if !user.verify(
        &signed_bytes(&key, &inner.line, inner.direct.as_deref(), inner.issued_ms),
        &inner.sig,
    ) {
        return Err(TrackerError::BadSignature);
    }
    let line: RelayLine = inner.line.parse().map_err(|_| TrackerError::BadLine)?;
    if line.id.is_none() {
        return Err(TrackerError::BadLine);
    }
    // A direct endpoint is the user's own: Noise there must prove their id.
    let own_id = PeerId::from_public_key(user).to_base58();
    let direct = inner
        .direct
        .map(|d| d.parse::<RelayLine>().map_err(|_| TrackerError::BadLine))
        .transpose()?;
    if direct
        .as_ref()
        .is_some_and(|d| d.id.as_deref() != Some(own_id.as_str()))
    {
        return Err(TrackerError::BadLine);
    }
    Ok(Location {
        line,
        direct,
        issued_ms: inner.issued_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_obfs::{Carrier, GateSecret};

    fn line(port: u16) -> RelayLine {
        RelayLine {
            host: "relay.example".into(),
            port,
            path: "/p".into(),
            key: GateSecret::generate(&mut rand::rngs::OsRng).public(),
            carriers: vec![Carrier::H2],
            pin: None,
            ip: Some("127.0.0.1".parse().expect("ip")),
            id: Some(
                Keypair::generate_ed25519()
                    .public()
                    .to_peer_id()
                    .to_base58(),
            ),
            proxied: false,
        }
    }

    #[test]
    fn the_owner_writes_and_whoever_knows_the_key_reads() {
        let bob = Keypair::generate_ed25519();
        let l = line(4433);
        let record =
            make_record(&bob, &l, None, 1_700_000_000_000, &mut rand::rngs::OsRng).expect("record");
        assert_eq!(record.key, record_key(&bob.public().to_peer_id()));
        let read = open_record(&bob.public(), &record.value).expect("open");
        assert_eq!(read.line, l);
        assert_eq!(read.issued_ms, 1_700_000_000_000);
        // The relay line is not visible in the record.
        let text = l.to_string();
        assert!(!record
            .value
            .windows(text.len().min(16))
            .any(|w| w == &text.as_bytes()[..text.len().min(16)]));
        // Someone else's key does not open it.
        let carol = Keypair::generate_ed25519();
        assert_eq!(
            open_record(&carol.public(), &record.value),
            Err(TrackerError::Undecryptable)
        );
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let bob = Keypair::generate_ed25519();
        let record = make_record(&bob, &line(1), None, 5, &mut rand::rngs::OsRng).expect("record");
        for i in 0..record.value.len() {
            let mut v = record.value.clone();
            v[i] ^= 0x01;
            assert!(open_record(&bob.public(), &v).is_err(), "byte {i}");
        }
        assert_eq!(
            open_record(&bob.public(), &record.value[..20]),
            Err(TrackerError::Malformed)
        );
    }

    #[test]
    fn a_record_not_signed_by_the_user_is_refused() {
        // Someone who knows Bob's public key can encrypt to it, but cannot
        // sign as Bob.
        let bob = Keypair::generate_ed25519();
        let mallory = Keypair::generate_ed25519();
        let key = record_key(&bob.public().to_peer_id());
        let l = line(2).to_string();
        let sig = mallory
            .sign(&signed_bytes(&key, &l, None, 9))
            .expect("sign");
        let mut inner = Vec::new();
        ciborium::into_writer(
            &Inner {
                line: l,
                direct: None,
                issued_ms: 9,
                sig,
            },
            &mut inner,
        )
        .expect("cbor");
        let nonce = [7u8; NONCE];
        let sealed = cipher(&bob.public())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &inner,
                    aad: key.as_ref(),
                },
            )
            .expect("seal");
        let mut value = vec![VERSION];
        value.extend_from_slice(&nonce);
        value.extend_from_slice(&sealed);
        assert_eq!(
            open_record(&bob.public(), &value),
            Err(TrackerError::BadSignature)
        );
    }

    #[test]
    fn a_direct_endpoint_is_signed_and_must_be_the_users_own() {
        let bob = Keypair::generate_ed25519();
        let mut direct = line(7000);
        direct.id = Some(bob.public().to_peer_id().to_base58());
        let record =
            make_record(&bob, &line(1), Some(&direct), 5, &mut rand::rngs::OsRng).expect("record");
        let read = open_record(&bob.public(), &record.value).expect("open");
        assert_eq!(read.direct, Some(direct));
        for i in 0..record.value.len() {
            let mut v = record.value.clone();
            v[i] ^= 0x01;
            assert!(open_record(&bob.public(), &v).is_err(), "byte {i}");
        }
        // Someone else's front in Bob's record is refused, even signed by him.
        let other = line(7001);
        let record =
            make_record(&bob, &line(1), Some(&other), 5, &mut rand::rngs::OsRng).expect("record");
        assert_eq!(
            open_record(&bob.public(), &record.value),
            Err(TrackerError::BadLine)
        );
    }
}
