//! Block identity: CIDv1 with a SHA-256 multihash over a block's bytes (the
//! ciphertext, so any node can verify any block without a key). Owns the
//! codecs a dfs-p2p block may carry, the block size limit, and the parsing
//! of CID strings from users and peers.

pub mod buffers;

pub use buffers::BlockBuf;

use cid::Cid;
use multihash::Multihash;
use sha2::{Digest, Sha256};

use crate::error::ParseError;

/// Largest block, in bytes, that a node stores, sends or accepts.
pub const MAX_BLOCK_SIZE: usize = 2 * 1024 * 1024;
/// Multicodec of a leaf block (an encrypted chunk). Must not change.
pub const RAW: u64 = 0x55;
/// Multicodec of a structure block. Must not change.
pub const DAG_CBOR: u64 = 0x71;
/// Multihash code of SHA2-256. Must not change.
pub const SHA2_256: u64 = 0x12;
/// Bytes of a SHA2-256 digest.
pub const DIGEST_LEN: usize = 32;
/// Bytes of a supported CID in binary form: version, codec, hash code and
/// digest length (one byte each), then the digest. Must not change.
pub const CID_LEN: usize = 4 + DIGEST_LEN;

/// The CID of `bytes` stored under `codec`.
pub fn cid_of(codec: u64, bytes: &[u8]) -> Cid {
    let digest = Sha256::digest(bytes);
    let mh = Multihash::<64>::wrap(SHA2_256, &digest).expect("a 32-byte digest fits");
    Cid::new_v1(codec, mh)
}

/// Whether `bytes` are the block named `cid`.
pub fn verify(cid: &Cid, bytes: &[u8]) -> bool {
    bytes.len() <= MAX_BLOCK_SIZE
        && cid.hash().code() == SHA2_256
        && cid.hash().digest() == Sha256::digest(bytes).as_slice()
}

/// Whether the CID is one dfs-p2p can store: v1, SHA-256, raw or dag-cbor.
pub fn is_supported(cid: &Cid) -> bool {
    check_supported(cid).is_ok()
}

/// Why a CID is not one dfs-p2p can store, if it is not.
pub fn check_supported(cid: &Cid) -> Result<(), ParseError> {
    let reason = if cid.version() != cid::Version::V1 {
        "only CIDv1 is supported"
    } else if cid.hash().code() != SHA2_256 || usize::from(cid.hash().size()) != DIGEST_LEN {
        "only SHA2-256 multihashes are supported"
    } else if cid.codec() != RAW && cid.codec() != DAG_CBOR {
        "only raw and dag-cbor blocks are supported"
    } else {
        return Ok(());
    };
    Err(ParseError::UnsupportedCid { cid: cid.to_string(), reason: reason.into() })
}

/// Parses a CID string given by a user or a peer; rejects anything that is
/// not a supported CID (so a crafted string can never name a path). The
/// `cid` crate also reads `<anything>/ipfs/<cid>`; only a bare CID is one.
pub fn parse_cid(input: &str) -> Result<Cid, ParseError> {
    let bad = |reason: String| ParseError::Cid { input: truncate(input), reason };
    if input.contains('/') {
        return Err(bad("not a bare CID".into()));
    }
    let cid = Cid::try_from(input).map_err(|e| bad(e.to_string()))?;
    check_supported(&cid)?;
    Ok(cid)
}

/// Decodes a binary CID (exactly `bytes`, nothing trailing) and checks it.
pub fn cid_from_bytes(bytes: &[u8]) -> Result<Cid, ParseError> {
    let bad = |reason: String| ParseError::Cid {
        input: data_encoding::HEXLOWER.encode(&bytes[..bytes.len().min(48)]),
        reason,
    };
    // The `cid` crate reads a CID off the front and ignores the rest.
    if bytes.len() != CID_LEN {
        return Err(bad(format!("{} bytes, not {CID_LEN}", bytes.len())));
    }
    let cid = Cid::try_from(bytes).map_err(|e| bad(e.to_string()))?;
    check_supported(&cid)?;
    Ok(cid)
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cid_round_trips_and_verifies() {
        let cid = cid_of(RAW, b"hello");
        assert_eq!(parse_cid(&cid.to_string()).unwrap(), cid);
        assert!(verify(&cid, b"hello"));
        assert!(!verify(&cid, b"hellO"));
        assert!(cid.to_string().starts_with('b'));
    }

    #[test]
    fn unsupported_cids_are_rejected() {
        for bad in [
            "",
            "../../etc/passwd",
            "b",
            "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
            "bafy/../x",
            "junk/ipfs/bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq",
        ] {
            assert!(parse_cid(bad).is_err(), "{bad} parsed");
        }
        let other_codec = Cid::new_v1(0x70, *cid_of(RAW, b"x").hash());
        assert!(parse_cid(&other_codec.to_string()).is_err());
    }

    #[test]
    fn binary_cids_are_exactly_their_bytes() {
        let cid = cid_of(RAW, b"x");
        let mut bytes = cid.to_bytes();
        assert_eq!(cid_from_bytes(&bytes).unwrap(), cid);
        bytes.push(0);
        assert!(cid_from_bytes(&bytes).is_err(), "a trailing byte");
        assert!(cid_from_bytes(&bytes[..CID_LEN - 1]).is_err(), "a short one");
    }
}
