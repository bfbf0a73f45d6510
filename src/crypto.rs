//! Convergent encryption. Owns the convergence secret, the derivation of a
//! block's key from its plaintext (keyed BLAKE3), and AES-256-GCM sealing
//! and opening. It knows nothing of CIDs, files or disks.
//!
//! Each derived key encrypts exactly one plaintext (the key is a keyed hash
//! of that plaintext and of its domain), so a fixed all-zero nonce is safe.
//! The domain and a format version are bound in both the key and the AAD, so
//! a leaf can never be opened as a structure node or the reverse.
//!
//! AES-256-GCM is `ring`'s (already linked for libp2p's Noise): on x86-64 it
//! uses AES-NI with carry-less multiplication and runs about 3x faster than
//! the RustCrypto `aes-gcm` 0.11, which the tests keep as an independent
//! implementation the output must match byte for byte.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// Length of a block key and of the convergence secret.
pub const KEY_LEN: usize = 32;
/// Length of the AES-GCM tag appended to every sealed byte string.
pub const TAG_LEN: usize = 16;

/// A block key: encrypts one leaf or one structure node's sealed part.
pub type Key = [u8; KEY_LEN];

/// What a sealed byte string is. Part of the wire format: must not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// An encrypted file chunk (a `raw` leaf block).
    Leaf,
    /// The sealed part of a structure node.
    Node,
}

/// The associated data of a leaf, format version 1. Must not change.
pub const LEAF_AAD: &[u8] = b"dfs-p2p/v1/leaf";
/// The associated data of a sealed part, format version 1. Must not change.
pub const NODE_AAD: &[u8] = b"dfs-p2p/v1/node";
/// The AES-GCM nonce: 12 zero bytes (each key seals one plaintext). Must
/// not change.
pub const NONCE: [u8; 12] = [0; 12];

impl Domain {
    /// The associated data of this domain; also the prefix of its key
    /// derivation (see `protocols/data-format.md`).
    pub fn aad(self) -> &'static [u8] {
        match self {
            Domain::Leaf => LEAF_AAD,
            Domain::Node => NODE_AAD,
        }
    }
}

/// The secret under which a node (or a group sharing it) derives convergent
/// keys. The same plaintext under the same secret gives the same key.
#[derive(Clone)]
pub struct ConvergenceSecret([u8; KEY_LEN]);

impl ConvergenceSecret {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    pub fn generate() -> Self {
        Self(rand::random())
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The convergent key of `plaintext` in `domain`.
    pub fn derive_key(&self, domain: Domain, plaintext: &[u8]) -> Key {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(domain.aad());
        hasher.update(plaintext);
        *hasher.finalize().as_bytes()
    }
}

impl std::fmt::Debug for ConvergenceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConvergenceSecret(..)")
    }
}

fn cipher(key: &Key) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES-256 key"))
}

/// The fixed nonce: every key seals exactly one plaintext.
fn nonce() -> Nonce {
    Nonce::assume_unique_for_key(NONCE)
}

/// Encrypts `buf` in place and appends the tag.
pub fn seal(key: &Key, domain: Domain, buf: &mut Vec<u8>) {
    buf.reserve_exact(TAG_LEN);
    cipher(key)
        .seal_in_place_append_tag(nonce(), Aad::from(domain.aad()), buf)
        .expect("AES-GCM seals any block-sized input");
}

/// Checks the tag and decrypts `buf` in place, leaving the plaintext;
/// `false` if the key or the bytes are wrong (then `buf` is unspecified).
#[must_use]
pub fn open(key: &Key, domain: Domain, buf: &mut Vec<u8>) -> bool {
    let len = open_in_place(key, domain, buf);
    buf.truncate(len.unwrap_or(0));
    len.is_some()
}

/// Checks the tag and decrypts `buf` in place; returns the length of the
/// plaintext, which is then `buf[..len]`, or `None` if the key or the bytes
/// are wrong (then `buf` is unspecified).
#[must_use]
pub fn open_in_place(key: &Key, domain: Domain, buf: &mut [u8]) -> Option<usize> {
    let opened = cipher(key).open_in_place(nonce(), Aad::from(domain.aad()), buf);
    opened.ok().map(|plain| plain.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let secret = ConvergenceSecret::from_bytes([7; KEY_LEN]);
        let key = secret.derive_key(Domain::Leaf, b"chunk");
        let mut buf = b"chunk".to_vec();
        seal(&key, Domain::Leaf, &mut buf);
        assert_eq!(buf.len(), 5 + TAG_LEN);
        assert_ne!(&buf[..5], b"chunk");
        let mut wrong_domain = buf.clone();
        assert!(!open(&key, Domain::Node, &mut wrong_domain));
        let mut flipped = buf.clone();
        flipped[0] ^= 1;
        assert!(!open(&key, Domain::Leaf, &mut flipped));
        assert!(open(&key, Domain::Leaf, &mut buf));
        assert_eq!(buf, b"chunk");
    }

    /// The RustCrypto implementation, independent of `ring`: the same key,
    /// nonce and AAD must give the same bytes, at every length.
    fn reference_seal(key: &Key, domain: Domain, plain: &[u8]) -> Vec<u8> {
        use aes_gcm::{
            Aes256Gcm, KeyInit,
            aead::{Aead, Nonce, Payload},
        };
        Aes256Gcm::new(&(*key).into())
            .encrypt(&Nonce::<Aes256Gcm>::default(), Payload { msg: plain, aad: domain.aad() })
            .expect("reference seal")
    }

    #[test]
    fn matches_the_reference_implementation() {
        let secret = ConvergenceSecret::from_bytes([9; KEY_LEN]);
        for len in [0, 1, 15, 16, 17, 255, 4096, 65_537, (1 << 20) + 3] {
            let plain = crate::testdata::pseudo_random(len, len as u64);
            for domain in [Domain::Leaf, Domain::Node] {
                let key = secret.derive_key(domain, &plain);
                let mut sealed = plain.clone();
                seal(&key, domain, &mut sealed);
                assert_eq!(sealed, reference_seal(&key, domain, &plain), "length {len}");
                assert!(open(&key, domain, &mut sealed));
                assert_eq!(sealed, plain);
            }
        }
    }

    #[test]
    fn short_or_tampered_input_does_not_open() {
        let key = [3; KEY_LEN];
        for len in 0..TAG_LEN {
            assert!(!open(&key, Domain::Leaf, &mut vec![0; len]));
        }
        let mut sealed = b"some plaintext".to_vec();
        seal(&key, Domain::Leaf, &mut sealed);
        let last = sealed.len() - 1;
        sealed[last] ^= 0x80;
        assert!(!open(&key, Domain::Leaf, &mut sealed));
    }

    #[test]
    fn keys_converge_per_secret_and_domain() {
        let a = ConvergenceSecret::from_bytes([1; KEY_LEN]);
        let b = ConvergenceSecret::from_bytes([2; KEY_LEN]);
        assert_eq!(a.derive_key(Domain::Leaf, b"x"), a.derive_key(Domain::Leaf, b"x"));
        assert_ne!(a.derive_key(Domain::Leaf, b"x"), b.derive_key(Domain::Leaf, b"x"));
        assert_ne!(a.derive_key(Domain::Leaf, b"x"), a.derive_key(Domain::Node, b"x"));
    }
}
