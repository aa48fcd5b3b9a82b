//! Who a user is: an Ed25519 key (the libp2p PeerId), kept in a keystore
//! encrypted with a password; the address others add; the short codes two
//! people compare.
//!
//! Keystore file (`DATA_DIR/node/keystore`, text):
//!
//! ```text
//! burrow-keystore v1
//! argon2id m=KIB t=ITER p=LANES salt=BASE64URL
//! nonce=BASE64URL
//! sealed=BASE64URL          XChaCha20-Poly1305(k, nonce, aad = the two lines above, keypair)
//! check=HEX                 SHA-256 of every line above (damage, not tampering)
//! ```
//!
//! `k` is the first half of Argon2id(password, salt) (64 bytes); the second
//! half keys the local database. A damaged file fails `check` and is
//! reported as damaged; an intact file that does not open means a wrong
//! password.
//!
//! A user's address (one string to copy, checksummed like a relay line):
//!
//! ```text
//! burrow://USER_ID@HOST:PORT/PATH?k=…&c=…[&pin=…][&ip=…]&id=RELAY_ID&x=CHECK
//! ```
//! everything after `@` is the user's home relay line (without its own
//! scheme and checksum); CHECK covers the whole address.

use std::fmt;
use std::str::FromStr;

use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use burrow_obfs::RelayLine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

const MAGIC: &str = "burrow-keystore v1";

/// Argon2id cost. 64 MiB and 3 passes: about a quarter second here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfCost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub lanes: u32,
}

impl Default for KdfCost {
    fn default() -> Self {
        Self {
            memory_kib: 64 * 1024,
            iterations: 3,
            lanes: 1,
        }
    }
}

/// Why a keystore could not be made or opened.
#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    #[error("wrong password")]
    WrongPassword,
    #[error("the keystore is damaged ({0}); restore it from a backup")]
    Damaged(&'static str),
    #[error("the keystore uses unsupported key-derivation settings: {0}")]
    BadKdf(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The secrets a password unlocks.
pub struct Unlocked {
    pub keypair: Keypair,
    /// Key for the local database (SQLCipher raw key).
    pub db_key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Unlocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unlocked")
            .field("peer_id", &self.keypair.public().to_peer_id())
            .finish_non_exhaustive()
    }
}

fn derive(
    password: &[u8],
    salt: &[u8],
    cost: KdfCost,
) -> Result<Zeroizing<[u8; 64]>, KeystoreError> {
    let params = Params::new(cost.memory_kib, cost.iterations, cost.lanes, Some(64))
        .map_err(|e| KeystoreError::BadKdf(e.to_string()))?;
    let mut out = Zeroizing::new([0u8; 64]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password, salt, out.as_mut())
        .map_err(|e| KeystoreError::BadKdf(e.to_string()))?;
    Ok(out)
}

fn split_keys(master: &[u8; 64]) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    let mut a = Zeroizing::new([0u8; 32]);
    let mut b = Zeroizing::new([0u8; 32]);
    a.copy_from_slice(&master[..32]);
    b.copy_from_slice(&master[32..]);
    (a, b)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates a keystore for `keypair`; returns the file's text and the
/// database key.
pub fn create(
    keypair: &Keypair,
    password: &[u8],
    cost: KdfCost,
    rng: &mut impl RngCore,
) -> Result<(String, Zeroizing<[u8; 32]>), KeystoreError> {
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let master = derive(password, &salt, cost)?;
    let (k, db_key) = split_keys(&master);
    let kdf_line = format!(
        "argon2id m={} t={} p={} salt={}",
        cost.memory_kib,
        cost.iterations,
        cost.lanes,
        URL_SAFE_NO_PAD.encode(salt)
    );
    let nonce_line = format!("nonce={}", URL_SAFE_NO_PAD.encode(nonce));
    let aad = format!("{MAGIC}\n{kdf_line}\n{nonce_line}\n");
    let mut plain = Zeroizing::new(
        keypair
            .to_protobuf_encoding()
            .map_err(|e| KeystoreError::Internal(e.to_string()))?,
    );
    let sealed = XChaCha20Poly1305::new(k.as_ref().into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| KeystoreError::Internal("encryption failed".into()))?;
    plain.zeroize();
    let body = format!("{aad}sealed={}\n", URL_SAFE_NO_PAD.encode(sealed));
    let check = hex(&Sha256::digest(body.as_bytes()));
    Ok((format!("{body}check={check}\n"), db_key))
}

fn field<'a>(line: &'a str, name: &str) -> Result<&'a str, KeystoreError> {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .ok_or(KeystoreError::Damaged("missing field"))
}

fn number(line: &str, name: &str) -> Result<u32, KeystoreError> {
    field(line, name)?
        .parse()
        .map_err(|_| KeystoreError::Damaged("bad number"))
}

fn b64(s: &str) -> Result<Vec<u8>, KeystoreError> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| KeystoreError::Damaged("bad base64"))
}

/// Opens a keystore's text with a password.
pub fn unlock(text: &str, password: &[u8]) -> Result<Unlocked, KeystoreError> {
    let (body, check) = text
        .trim_end_matches('\n')
        .rsplit_once("\ncheck=")
        .ok_or(KeystoreError::Damaged("no checksum"))?;
    let body = format!("{body}\n");
    if hex(&Sha256::digest(body.as_bytes())) != check {
        return Err(KeystoreError::Damaged("checksum mismatch"));
    }
    let lines: Vec<&str> = body.lines().collect();
    let [magic, kdf, nonce_line, sealed_line] = lines.as_slice() else {
        return Err(KeystoreError::Damaged("wrong number of lines"));
    };
    if *magic != MAGIC {
        return Err(KeystoreError::Damaged("not a burrow keystore"));
    }
    if !kdf.starts_with("argon2id ") {
        return Err(KeystoreError::BadKdf(kdf.to_string()));
    }
    let cost = KdfCost {
        memory_kib: number(kdf, "m")?,
        iterations: number(kdf, "t")?,
        lanes: number(kdf, "p")?,
    };
    let salt = b64(field(kdf, "salt")?)?;
    let nonce = b64(nonce_line
        .strip_prefix("nonce=")
        .ok_or(KeystoreError::Damaged("no nonce"))?)?;
    let sealed = b64(sealed_line
        .strip_prefix("sealed=")
        .ok_or(KeystoreError::Damaged("no key"))?)?;
    if nonce.len() != 24 {
        return Err(KeystoreError::Damaged("bad nonce"));
    }
    let master = derive(password, &salt, cost)?;
    let (k, db_key) = split_keys(&master);
    let aad = format!("{magic}\n{kdf}\n{nonce_line}\n");
    let plain = Zeroizing::new(
        XChaCha20Poly1305::new(k.as_ref().into())
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| KeystoreError::WrongPassword)?,
    );
    let keypair = Keypair::from_protobuf_encoding(&plain)
        .map_err(|_| KeystoreError::Damaged("the key inside is not valid"))?;
    Ok(Unlocked { keypair, db_key })
}

// ------------------------------------------------------------- addresses

const ADDRESS_SCHEME: &str = "burrow://";
/// Longest address accepted.
pub const MAX_ADDRESS_LEN: usize = 1200;

/// What others need to reach a user: their id and home relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub user: PeerId,
    pub relay: RelayLine,
}

/// Why an address was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("an address starts with {ADDRESS_SCHEME}")]
    Scheme,
    #[error("longer than {MAX_ADDRESS_LEN} characters")]
    TooLong,
    #[error("checksum missing or wrong: the address was changed or mistyped")]
    Checksum,
    #[error("the user id is not valid")]
    BadUser,
    #[error("the user id is not an Ed25519 key")]
    NotEd25519,
    #[error("home relay: {0}")]
    Relay(#[from] burrow_obfs::relay_line::LineError),
    #[error("home relay: the relay line has no id=")]
    NoRelayId,
}

fn checksum(body: &str) -> String {
    hex(&Sha256::digest(body.as_bytes())[..4])
}

impl Address {
    fn body(&self) -> String {
        format!(
            "{ADDRESS_SCHEME}{}@{}",
            self.user.to_base58(),
            self.relay.body_text()
        )
    }

    /// The user's public key (an Ed25519 PeerId carries it).
    pub fn public_key(&self) -> Result<PublicKey, AddressError> {
        public_key_of(&self.user)
    }
}

/// The public key inside an Ed25519 PeerId.
pub fn public_key_of(peer: &PeerId) -> Result<PublicKey, AddressError> {
    let mh = peer.as_ref();
    if mh.code() != 0 {
        return Err(AddressError::NotEd25519);
    }
    PublicKey::try_decode_protobuf(mh.digest()).map_err(|_| AddressError::NotEd25519)
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = self.body();
        write!(f, "{body}&x={}", checksum(&body))
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, AddressError> {
        let s = s.trim();
        if s.len() > MAX_ADDRESS_LEN {
            return Err(AddressError::TooLong);
        }
        let rest = s.strip_prefix(ADDRESS_SCHEME).ok_or(AddressError::Scheme)?;
        let i = s.rfind("&x=").ok_or(AddressError::Checksum)?;
        if checksum(&s[..i]) != s[i + 3..] {
            return Err(AddressError::Checksum);
        }
        let rest = &rest[..i - ADDRESS_SCHEME.len()];
        let (user, relay) = rest.split_once('@').ok_or(AddressError::BadUser)?;
        let user: PeerId = user.parse().map_err(|_| AddressError::BadUser)?;
        public_key_of(&user)?;
        let relay = RelayLine::from_body(relay)?;
        if relay.id.is_none() {
            return Err(AddressError::NoRelayId);
        }
        Ok(Self { user, relay })
    }
}

// ----------------------------------------------------------------- codes

fn groups(digits: &str, size: usize) -> String {
    digits
        .as_bytes()
        .chunks(size)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A short fingerprint of a user id, for people: `3f2a 91c4 07be 5d10`.
pub fn fingerprint(peer: &PeerId) -> String {
    let d = Sha256::digest(peer.to_bytes());
    groups(&hex(&d[..8]), 4)
}

/// The code two people read to each other to confirm they hold each
/// other's real keys: the same on both sides, whichever order the ids are
/// given in. 12 digits (about 40 bits), in groups of three.
pub fn verification_code(a: &PeerId, b: &PeerId) -> String {
    let (a, b) = (a.to_bytes(), b.to_bytes());
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h = Sha256::new();
    h.update(b"burrow verify v1");
    h.update((lo.len() as u32).to_be_bytes());
    h.update(&lo);
    h.update(&hi);
    let d = h.finalize();
    let mut n = [0u8; 8];
    n[3..].copy_from_slice(&d[..5]);
    let value = u64::from_be_bytes(n) % 1_000_000_000_000;
    groups(&format!("{value:012}"), 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    /// Cheap settings so the tests stay fast; the format is the same.
    const CHEAP: KdfCost = KdfCost {
        memory_kib: 64,
        iterations: 1,
        lanes: 1,
    };

    #[test]
    fn keystore_opens_with_the_password_only() {
        let kp = Keypair::generate_ed25519();
        let (text, db_key) = create(&kp, b"correct horse", CHEAP, &mut OsRng).expect("create");
        let opened = unlock(&text, b"correct horse").expect("unlock");
        assert_eq!(opened.keypair.public(), kp.public());
        assert_eq!(*opened.db_key, *db_key);
        assert!(matches!(
            unlock(&text, b"correct horsf"),
            Err(KeystoreError::WrongPassword)
        ));
    }

    #[test]
    fn any_damage_is_detected_not_half_loaded() {
        let kp = Keypair::generate_ed25519();
        let (text, _) = create(&kp, b"pw", CHEAP, &mut OsRng).expect("create");
        for i in 0..text.len() {
            let mut bytes = text.clone().into_bytes();
            bytes[i] ^= 0x04;
            let Ok(bad) = String::from_utf8(bytes) else {
                continue;
            };
            match unlock(&bad, b"pw") {
                Err(KeystoreError::Damaged(_)) | Err(KeystoreError::BadKdf(_)) => {}
                // A flipped bit in trailing whitespace is harmless.
                Ok(u) if bad.trim_end() == text.trim_end() => {
                    assert_eq!(u.keypair.public(), kp.public())
                }
                other => panic!("byte {i}: {other:?}"),
            }
        }
        for n in [0, 10, text.len() / 2, text.len() - 2] {
            assert!(
                matches!(unlock(&text[..n], b"pw"), Err(KeystoreError::Damaged(_))),
                "truncated to {n}"
            );
        }
    }

    fn sample_relay() -> RelayLine {
        "burrow-relay://relay.example:8443/api/v2/events?k=BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc&c=h2,h3&ip=127.0.0.1&id=12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN&x=00000000"
            .rsplit_once("&x=")
            .map(|(body, _)| {
                RelayLine::from_body(body.trim_start_matches("burrow-relay://")).expect("line")
            })
            .expect("sample")
    }

    #[test]
    fn addresses_round_trip_and_reject_tampering() {
        let user = Keypair::generate_ed25519().public().to_peer_id();
        let addr = Address {
            user,
            relay: sample_relay(),
        };
        let text = addr.to_string();
        assert!(text.starts_with("burrow://12D3KooW"), "{text}");
        assert_eq!(text.parse::<Address>(), Ok(addr.clone()));
        assert_eq!(
            addr.public_key().expect("key").to_peer_id(),
            user,
            "the id carries the key"
        );
        // One changed character anywhere is caught by the checksum.
        let other = Keypair::generate_ed25519().public().to_peer_id();
        let swapped = text.replace(&user.to_base58(), &other.to_base58());
        assert_eq!(swapped.parse::<Address>(), Err(AddressError::Checksum));
        assert_eq!(
            text.replace("8443", "8444").parse::<Address>(),
            Err(AddressError::Checksum)
        );
        assert_eq!(
            text.replacen("burrow://", "burrow:/", 1).parse::<Address>(),
            Err(AddressError::Scheme)
        );
        // A relay line is not an address.
        assert_eq!(
            sample_relay().to_string().parse::<Address>(),
            Err(AddressError::Scheme)
        );
    }

    #[test]
    fn codes_match_on_both_sides_and_differ_between_pairs() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        assert_eq!(verification_code(&a, &b), verification_code(&b, &a));
        assert_ne!(verification_code(&a, &b), verification_code(&a, &c));
        let code = verification_code(&a, &b);
        assert_eq!(code.len(), 15, "{code}");
        assert!(code.chars().all(|ch| ch.is_ascii_digit() || ch == ' '));
        assert_eq!(fingerprint(&a).len(), 19);
    }
}
