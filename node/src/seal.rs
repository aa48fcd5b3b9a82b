//! Sealed messages for the mailbox: only the recipient can open one, and
//! opening it proves who sent it. The relay holding it sees random bytes.
//!
//! ```text
//! sealed   = 0x01 | E (32, ephemeral X25519) | AEAD(k, nonce 0, aad = 0x01 | E | R, inner)
//! inner    = S (32, sender's Ed25519 key) | sig (64) | envelope (CBOR)
//! sig      = Ed25519_S("burrow seal v1" | recipient's Ed25519 key | envelope)
//! k        = SHA-256("burrow seal v1" | E | R | X25519(e, R))
//! R        = the recipient's Ed25519 key as an X25519 (Montgomery) point
//! AEAD     = ChaCha20-Poly1305; each key is used once (fresh E)
//! ```

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::montgomery::MontgomeryPoint;
use libp2p::identity::{ed25519, Keypair, PublicKey};
use libp2p::PeerId;
use rand::RngCore;
use sha2::{Digest, Sha256, Sha512};
use zeroize::Zeroize;

use crate::p2p::proto::Envelope;

const VERSION: u8 = 1;
const LABEL: &[u8] = b"burrow seal v1";
const HEAD: usize = 1 + 32;
const TAG: usize = 16;

/// Why a sealed message could not be made or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not an Ed25519 key")]
    NotEd25519,
    #[error("the recipient's key is not a valid curve point")]
    BadRecipient,
    #[error("sealed message is malformed")]
    Malformed,
    #[error("sealed message was not for this key, or was altered")]
    Undecryptable,
    #[error("the sender's signature does not verify")]
    BadSignature,
}

/// An opened sealed message: who sent it (verified) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub from: PeerId,
    pub envelope: Envelope,
}

fn ed25519_of(key: &PublicKey) -> Result<ed25519::PublicKey, SealError> {
    key.clone()
        .try_into_ed25519()
        .map_err(|_| SealError::NotEd25519)
}

fn montgomery(ed: &ed25519::PublicKey) -> Result<MontgomeryPoint, SealError> {
    CompressedEdwardsY(ed.to_bytes())
        .decompress()
        .map(|p| p.to_montgomery())
        .ok_or(SealError::BadRecipient)
}

/// The X25519 scalar of an Ed25519 secret (as in RFC 8032's key expansion).
fn x25519_secret(keypair: &ed25519::Keypair) -> [u8; 32] {
    let mut h = Sha512::digest(keypair.secret().as_ref());
    let mut s = [0u8; 32];
    s.copy_from_slice(&h[..32]);
    h.as_mut_slice().zeroize();
    s
}

fn aead_key(e: &MontgomeryPoint, r: &MontgomeryPoint, shared: &MontgomeryPoint) -> Key {
    let mut h = Sha256::new();
    h.update(LABEL);
    h.update(e.as_bytes());
    h.update(r.as_bytes());
    h.update(shared.as_bytes());
    h.finalize()
}

fn signed_bytes(recipient: &ed25519::PublicKey, envelope: &[u8]) -> Vec<u8> {
    [LABEL, &recipient.to_bytes(), envelope].concat()
}

/// Seals `envelope` from `sender` to `recipient`.
pub fn seal(
    sender: &Keypair,
    recipient: &PublicKey,
    envelope: &Envelope,
    rng: &mut impl RngCore,
) -> Result<Vec<u8>, SealError> {
    let sender = sender
        .clone()
        .try_into_ed25519()
        .map_err(|_| SealError::NotEd25519)?;
    let recipient = ed25519_of(recipient)?;
    let r = montgomery(&recipient)?;
    let mut body = Vec::new();
    ciborium::into_writer(envelope, &mut body).map_err(|_| SealError::Malformed)?;
    let sig = sender.sign(&signed_bytes(&recipient, &body));
    let inner = [&sender.public().to_bytes()[..], &sig, &body].concat();
    let mut e_secret = [0u8; 32];
    rng.fill_bytes(&mut e_secret);
    let out = encrypt_to(&r, &e_secret, &inner);
    e_secret.zeroize();
    out
}

/// The outer layer: `inner` encrypted to `r` with the ephemeral secret.
fn encrypt_to(
    r: &MontgomeryPoint,
    e_secret: &[u8; 32],
    inner: &[u8],
) -> Result<Vec<u8>, SealError> {
    let e = MontgomeryPoint::mul_base_clamped(*e_secret);
    let shared = r.mul_clamped(*e_secret);
    let cipher = ChaCha20Poly1305::new(&aead_key(&e, r, &shared));
    let mut out = Vec::with_capacity(HEAD + inner.len() + TAG);
    out.push(VERSION);
    out.extend_from_slice(e.as_bytes());
    let aad = [&out[..], r.as_bytes()].concat();
    let ct = cipher
        .encrypt(
            &Nonce::default(),
            Payload {
                msg: inner,
                aad: &aad,
            },
        )
        .map_err(|_| SealError::Malformed)?;
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a message sealed to `recipient`, verifying the sender.
pub fn open(recipient: &Keypair, sealed: &[u8]) -> Result<Opened, SealError> {
    let recipient = recipient
        .clone()
        .try_into_ed25519()
        .map_err(|_| SealError::NotEd25519)?;
    if sealed.len() < HEAD + 32 + 64 + TAG || sealed[0] != VERSION {
        return Err(SealError::Malformed);
    }
    let mut e_bytes = [0u8; 32];
    e_bytes.copy_from_slice(&sealed[1..HEAD]);
    let e = MontgomeryPoint(e_bytes);
    let r = montgomery(&recipient.public())?;
    let mut secret = x25519_secret(&recipient);
    let shared = e.mul_clamped(secret);
    secret.zeroize();
    if shared.as_bytes() == &[0u8; 32] {
        return Err(SealError::Undecryptable);
    }
    let cipher = ChaCha20Poly1305::new(&aead_key(&e, &r, &shared));
    let aad = [&sealed[..HEAD], r.as_bytes()].concat();
    let inner = cipher
        .decrypt(
            &Nonce::default(),
            Payload {
                msg: &sealed[HEAD..],
                aad: &aad,
            },
        )
        .map_err(|_| SealError::Undecryptable)?;
    let sender =
        ed25519::PublicKey::try_from_bytes(&inner[..32]).map_err(|_| SealError::Malformed)?;
    let (sig, body) = inner[32..].split_at(64);
    if !sender.verify(&signed_bytes(&recipient.public(), body), sig) {
        return Err(SealError::BadSignature);
    }
    let envelope: Envelope = ciborium::from_reader(body).map_err(|_| SealError::Malformed)?;
    Ok(Opened {
        from: PublicKey::from(sender).to_peer_id(),
        envelope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    fn message() -> Envelope {
        Envelope::Message {
            id: [7; 16],
            sent_at_ms: 1_700_000_000_000,
            text: "see you at the market".into(),
        }
    }

    #[test]
    fn only_the_recipient_opens_and_the_sender_is_proven() {
        let (alice, bob, eve) = (
            Keypair::generate_ed25519(),
            Keypair::generate_ed25519(),
            Keypair::generate_ed25519(),
        );
        let sealed = seal(&alice, &bob.public(), &message(), &mut OsRng).expect("seal");
        let opened = open(&bob, &sealed).expect("open");
        assert_eq!(opened.from, alice.public().to_peer_id());
        assert_eq!(opened.envelope, message());
        assert_eq!(open(&eve, &sealed), Err(SealError::Undecryptable));
        // The text is not visible in the sealed bytes.
        assert!(!sealed.windows(6).any(|w| w == b"market"));
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let (alice, bob) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let sealed = seal(&alice, &bob.public(), &message(), &mut OsRng).expect("seal");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(open(&bob, &bad).is_err(), "byte {i}");
        }
        for n in 0..sealed.len() {
            assert!(open(&bob, &sealed[..n]).is_err(), "truncated to {n}");
        }
    }

    #[test]
    fn a_forged_sender_fails_the_signature() {
        // Mallory seals with her own key but claims Alice's public key.
        let (alice, bob, mallory) = (
            Keypair::generate_ed25519(),
            Keypair::generate_ed25519(),
            Keypair::generate_ed25519(),
        );
        let m = mallory.clone().try_into_ed25519().expect("ed25519");
        let a = alice.public().try_into_ed25519().expect("ed25519");
        let b = bob.public().try_into_ed25519().expect("ed25519");
        let mut body = Vec::new();
        ciborium::into_writer(&message(), &mut body).expect("cbor");
        let sig = m.sign(&signed_bytes(&b, &body));
        let inner = [&a.to_bytes()[..], &sig, &body].concat();
        let r = montgomery(&b).expect("point");
        let sealed = encrypt_to(&r, &[9u8; 32], &inner).expect("encrypt");
        assert_eq!(open(&bob, &sealed), Err(SealError::BadSignature));
    }
}
