//! Client-side encryption of stored objects (issue 15): keys, the keyring, and the envelope every
//! encrypted object is written in. Storage-agnostic: a store wraps `seal` and `open` around the
//! bytes it puts and gets.
//!
//! ```text
//! envelope = "PGARKENC" (8) | format 1 (1) | key id (8) | nonce (24) | ciphertext + tag (16)
//! ```
//!
//! - The AEAD is XChaCha20-Poly1305 (the `chacha20poly1305` crate): its 192-bit nonces can be
//!   drawn at random for every object without counting (no nonce reuse across processes,
//!   restarts or machines writing the same repository).
//! - The associated data is the envelope header and the object's key (its name in the store): an
//!   object copied over another's name, or a header edited, fails authentication like a flipped
//!   byte does.
//! - The key id is the first 8 bytes of the SHA-256 of the key: enough to pick the key from a
//!   keyring (rotation: one current key for writing, old ones for reading), and it reveals nothing
//!   useful about the key.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key as AeadKey, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use std::fmt;

pub const MAGIC: &[u8; 8] = b"PGARKENC";
pub const FORMAT: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Magic, format, key id, nonce.
pub const HEADER_LEN: usize = 8 + 1 + 8 + NONCE_LEN;
/// What encryption adds to an object's size.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// A key's id: the first 8 bytes of its SHA-256, shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::util::hex::to_hex(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A 256-bit key. `Debug` shows only its id.
#[derive(Clone)]
pub struct Key {
    id: KeyId,
    bytes: [u8; 32],
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(id {})", self.id)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("{origin}: expected a 256-bit key written as 64 hexadecimal characters (a trailing newline allowed; `pgark keygen` prints one), found {found}")]
    Malformed { origin: String, found: String },
}

impl Key {
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        let digest = Sha256::digest(bytes);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        Key { id: KeyId(id), bytes }
    }

    /// Parses a key as written in a key file or printed by a key command: 64 hex digits, one
    /// trailing newline allowed. `source` names where it came from, for the error.
    pub fn parse(text: &str, source: &str) -> Result<Key, KeyError> {
        let t = text.strip_suffix('\n').unwrap_or(text);
        let t = t.strip_suffix('\r').unwrap_or(t);
        let bad = |found: String| KeyError::Malformed {
            origin: source.to_string(),
            found,
        };
        if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            // Never echo what might be most of a key: its length and whether it is hex.
            return Err(bad(format!(
                "{} characters{}",
                t.chars().count(),
                if t.bytes().all(|b| b.is_ascii_hexdigit()) {
                    ""
                } else {
                    ", not all hexadecimal"
                }
            )));
        }
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| bad("not hexadecimal".into()))?;
        }
        Ok(Key::from_bytes(bytes))
    }

    /// A new random key (`pgark keygen`).
    pub fn generate() -> Key {
        let k = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&k);
        Key::from_bytes(bytes)
    }

    /// The key as 64 hex digits (what a key file holds).
    pub fn to_hex(&self) -> String {
        crate::util::hex::to_hex(&self.bytes)
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    /// A key for another use of this key (`context` names the use, as BLAKE3's `derive_key`
    /// wants): one key file, no key shared between two ciphers.
    pub fn derive(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.bytes)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(AeadKey::from_slice(&self.bytes))
    }
}

/// The keys of a repository: the current one encrypts, every one decrypts (rotation without
/// re-encrypting history).
#[derive(Debug, Clone)]
pub struct Keyring {
    current: Key,
    old: Vec<Key>,
}

impl Keyring {
    pub fn new(current: Key, old: Vec<Key>) -> Keyring {
        Keyring { current, old }
    }

    pub fn current(&self) -> &Key {
        &self.current
    }

    pub fn get(&self, id: KeyId) -> Option<&Key> {
        std::iter::once(&self.current).chain(self.old.iter()).find(|k| k.id == id)
    }

    /// Every key id this keyring can read.
    pub fn ids(&self) -> Vec<KeyId> {
        std::iter::once(&self.current).chain(self.old.iter()).map(|k| k.id).collect()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptError {
    #[error("{object}: not an encrypted object (no pgark envelope)")]
    NotEncrypted { object: String },
    #[error("{object}: envelope format {format}, this pgark reads format {FORMAT}")]
    UnknownFormat { object: String, format: u8 },
    #[error("{object}: encrypted with key {id}, which is not in the keyring (keys: {known}); add it to the old keys")]
    UnknownKey { object: String, id: KeyId, known: String },
    #[error("{object}: authentication failed: the object was modified, truncated, or stored under another name")]
    Tampered { object: String },
    #[error("{object}: {bytes} bytes is more than one encrypted object may hold")]
    TooLarge { object: String, bytes: usize },
}

/// The id of the key that sealed `data`, read from its header (`None`: not an envelope).
pub fn key_id_of(data: &[u8]) -> Option<KeyId> {
    if data.len() < HEADER_LEN || &data[..8] != MAGIC {
        return None;
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&data[9..17]);
    Some(KeyId(id))
}

/// Whether `data` starts like an envelope (cheap: for stores that hold both kinds).
pub fn is_sealed(data: &[u8]) -> bool {
    data.len() >= OVERHEAD && &data[..8] == MAGIC
}

/// Encrypts `plaintext` as object `object` with the keyring's current key.
pub fn seal(ring: &Keyring, object: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptError> {
    let key = ring.current();
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&key.id.0);
    out.extend_from_slice(&nonce);
    let aad = associated_data(&out[..HEADER_LEN], object);
    // The crate refuses only messages past its limit (256 GiB); objects are chunks and segments.
    let sealed = key
        .cipher()
        .encrypt(&nonce, Payload { msg: plaintext, aad: &aad })
        .map_err(|_| CryptError::TooLarge {
            object: object.into(),
            bytes: plaintext.len(),
        })?;
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Decrypts and authenticates object `object`.
pub fn open(ring: &Keyring, object: &str, data: &[u8]) -> Result<Vec<u8>, CryptError> {
    if data.len() < 8 || &data[..8] != MAGIC {
        return Err(CryptError::NotEncrypted { object: object.into() });
    }
    if data.len() < OVERHEAD {
        return Err(CryptError::Tampered { object: object.into() });
    }
    if data[8] != FORMAT {
        return Err(CryptError::UnknownFormat {
            object: object.into(),
            format: data[8],
        });
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&data[9..17]);
    let id = KeyId(id);
    let key = ring.get(id).ok_or_else(|| CryptError::UnknownKey {
        object: object.into(),
        id,
        known: ring.ids().iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", "),
    })?;
    let nonce = XNonce::from_slice(&data[17..HEADER_LEN]);
    let aad = associated_data(&data[..HEADER_LEN], object);
    key.cipher()
        .decrypt(
            nonce,
            Payload {
                msg: &data[HEADER_LEN..],
                aad: &aad,
            },
        )
        .map_err(|_| CryptError::Tampered { object: object.into() })
}

fn associated_data(header: &[u8], object: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + object.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(object.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::new(Key::generate(), vec![])
    }

    #[test]
    fn round_trip_and_no_plaintext_in_the_envelope() {
        let r = ring();
        let msg = b"INSERT INTO secrets VALUES ('the password is hunter2')".repeat(10);
        let sealed = seal(&r, "main/chunks/ab/abcd.zst", &msg).unwrap();
        assert_eq!(sealed.len(), msg.len() + OVERHEAD);
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"), "plaintext visible");
        assert_eq!(open(&r, "main/chunks/ab/abcd.zst", &sealed).unwrap(), msg);
        // Two seals of the same bytes differ (random nonces).
        assert_ne!(seal(&r, "x", &msg).unwrap(), seal(&r, "x", &msg).unwrap());
    }

    #[test]
    fn every_flipped_byte_a_wrong_name_a_wrong_key_and_truncation_are_caught() {
        let r = ring();
        let sealed = seal(&r, "obj", b"some WAL bytes").unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(open(&r, "obj", &bad).is_err(), "byte {i} flipped went unnoticed");
        }
        assert_eq!(open(&r, "other", &sealed), Err(CryptError::Tampered { object: "other".into() }));
        for n in 0..sealed.len() {
            assert!(open(&r, "obj", &sealed[..n]).is_err(), "truncated to {n}");
        }
        let stranger = ring();
        assert!(matches!(open(&stranger, "obj", &sealed), Err(CryptError::UnknownKey { .. })));
        assert_eq!(
            open(&r, "obj", b"plain zstd"),
            Err(CryptError::NotEncrypted { object: "obj".into() })
        );
    }

    #[test]
    fn rotation_reads_old_objects_and_writes_with_the_current_key() {
        let old = Key::generate();
        let before = Keyring::new(old.clone(), vec![]);
        let written_before = seal(&before, "a", b"old backup").unwrap();
        let after = Keyring::new(Key::generate(), vec![old.clone()]);
        assert_eq!(open(&after, "a", &written_before).unwrap(), b"old backup");
        let written_after = seal(&after, "b", b"new backup").unwrap();
        assert_eq!(&written_after[9..17], &after.current().id().0);
        assert!(
            open(&before, "b", &written_after).is_err(),
            "the old keyring cannot read the new key's objects"
        );
    }

    #[test]
    fn key_files_parse_with_clear_errors() {
        let k = Key::generate();
        let text = format!("{}\n", k.to_hex());
        let parsed = Key::parse(&text, "/etc/pgark/key").unwrap();
        assert_eq!(parsed.id(), k.id());
        let e = Key::parse("abc\n", "/etc/pgark/key").unwrap_err().to_string();
        assert!(
            e.contains("/etc/pgark/key") && e.contains("64 hexadecimal") && e.contains("3 characters"),
            "{e}"
        );
        let e = Key::parse(&"z".repeat(64), "key_command").unwrap_err().to_string();
        assert!(e.contains("not all hexadecimal") && !e.contains("zzzz"), "{e}");
        assert!(!format!("{k:?}").contains(&k.to_hex()), "Debug must not show the key");
    }
}
