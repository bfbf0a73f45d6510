//! Owner-signed records: the lease under which a node holds a replica, and
//! the record of an owner's delete. Both are signed with the owner's node
//! identity (Ed25519), so any node can check who issued them and no other
//! peer can make or alter one. The formats are specified in
//! `protocols/data-format.md`, section 8.
//!
//! - A [`Lease`] says "I, the owner, want `replicas` copies of `root` kept
//!   until `expires`". A holder keeps it with the replica; a node that
//!   repairs hands the same lease on (it cannot make a new one), so repair
//!   never extends a lease. The owner renews it while it runs.
//! - A [`DeleteRecord`] says "I, the owner, deleted `root`": published in
//!   the DHT under [`DeleteRecord::dht_key`], and checked before a repair
//!   so that no copy is brought back. It is kept until `keep_until`, the
//!   time by which every lease the owner granted before the delete has run
//!   out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cid::Cid;
use libp2p::{
    PeerId,
    identity::{Keypair, PublicKey, ed25519},
};

use crate::block::{self, DAG_CBOR};

/// Bytes of an encoded lease.
pub const LEASE_LEN: usize = 150;
/// Bytes of an encoded delete record.
pub const DELETE_RECORD_LEN: usize = 149;
/// How far in the future a record's issue time may be (clocks differ).
pub const CLOCK_SKEW: Duration = Duration::from_secs(600);

const KIND_LEASE: u8 = 0x01;
const KIND_DELETE: u8 = 0x02;
const LEASE_CONTEXT: &[u8] = b"dfs-p2p lease v1";
const DELETE_CONTEXT: &[u8] = b"dfs-p2p delete v1";
const DELETE_KEY_PREFIX: &[u8] = b"/dfs-p2p/delete/";
const KEY_LEN: usize = 32;
const SIG_LEN: usize = 64;

/// Why a lease or delete record is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("the signature does not match the owner's key")]
    BadSignature,
    #[error("it is for another root")]
    OtherRoot,
    #[error("it expired")]
    Expired,
    #[error("it was issued in the future")]
    FromTheFuture,
    #[error("this node's identity is not an Ed25519 key")]
    NotEd25519,
}

/// Seconds since the Unix epoch, now.
pub fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// An owner's signed wish that `replicas` copies of `root` be kept until
/// `expires` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub root: Cid,
    /// Copies wanted on the network, the owner's own included.
    pub replicas: u8,
    /// Unix seconds, by the owner's clock.
    pub issued: u64,
    pub expires: u64,
    seal: Seal,
}

impl Lease {
    /// A lease signed by `owner`, from now for `length`.
    pub fn issue(
        owner: &Keypair,
        root: Cid,
        replicas: u8,
        length: Duration,
    ) -> Result<Lease, RecordError> {
        let issued = unix_secs();
        let expires = issued.saturating_add(length.as_secs().max(1));
        Lease::issue_at(owner, root, replicas, issued, expires)
    }

    /// A lease signed by `owner` with the times given (Unix seconds).
    pub fn issue_at(
        owner: &Keypair,
        root: Cid,
        replicas: u8,
        issued: u64,
        expires: u64,
    ) -> Result<Lease, RecordError> {
        let fields = Lease::fields(&root, replicas, issued, expires);
        let seal = Seal::sign(owner, LEASE_CONTEXT, &fields)?;
        Ok(Lease { root, replicas, issued, expires, seal })
    }

    /// The owner, as its peer id.
    pub fn owner(&self) -> PeerId {
        self.seal.owner()
    }

    /// The bytes before the owner's key.
    fn fields(root: &Cid, replicas: u8, issued: u64, expires: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(LEASE_LEN);
        out.push(KIND_LEASE);
        out.extend_from_slice(&root.to_bytes());
        out.push(replicas);
        out.extend_from_slice(&issued.to_be_bytes());
        out.extend_from_slice(&expires.to_be_bytes());
        out
    }

    pub fn encode(&self) -> Vec<u8> {
        let fields = Lease::fields(&self.root, self.replicas, self.issued, self.expires);
        self.seal.append_to(fields)
    }

    /// Parses a lease and checks its signature (not its times: see
    /// [`check`](Self::check)).
    pub fn decode(bytes: &[u8]) -> Result<Lease, RecordError> {
        let malformed = || RecordError::Malformed("lease");
        if bytes.len() != LEASE_LEN || bytes[0] != KIND_LEASE {
            return Err(malformed());
        }
        let root = root_at(&bytes[1..37]).ok_or_else(malformed)?;
        let (replicas, issued, expires) =
            (bytes[37], u64_at(&bytes[38..46]), u64_at(&bytes[46..54]));
        if replicas == 0 || expires <= issued {
            return Err(malformed());
        }
        let seal = Seal::read(LEASE_CONTEXT, &bytes[..54], &bytes[54..])?;
        Ok(Lease { root, replicas, issued, expires, seal })
    }

    /// Whether a holder may hold a replica of `root` under this lease at
    /// `now` (Unix seconds).
    pub fn check(&self, root: &Cid, now: u64) -> Result<(), RecordError> {
        if self.root != *root {
            return Err(RecordError::OtherRoot);
        }
        if self.issued > now.saturating_add(CLOCK_SKEW.as_secs()) {
            return Err(RecordError::FromTheFuture);
        }
        if self.expires <= now {
            return Err(RecordError::Expired);
        }
        Ok(())
    }

    /// When a holder that holds copies for at most `longest` without a
    /// renewal lets this lease end: at its expiry, or `longest` after it
    /// was issued if that comes first.
    pub fn ends(&self, longest: Duration) -> u64 {
        self.expires.min(self.issued.saturating_add(longest.as_secs()))
    }
}

/// An owner's signed statement that it deleted `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteRecord {
    pub root: Cid,
    /// Unix seconds, by the owner's clock.
    pub deleted: u64,
    /// Until when the record is kept: the end of the last lease the owner
    /// may have granted before the delete.
    pub keep_until: u64,
    seal: Seal,
}

impl DeleteRecord {
    /// A record of `owner`'s delete of `root`, kept for `keep`.
    pub fn issue(owner: &Keypair, root: Cid, keep: Duration) -> Result<DeleteRecord, RecordError> {
        let deleted = unix_secs();
        DeleteRecord::issue_at(owner, root, deleted, deleted.saturating_add(keep.as_secs().max(1)))
    }

    /// A record signed by `owner` with the times given (Unix seconds).
    pub fn issue_at(
        owner: &Keypair,
        root: Cid,
        deleted: u64,
        keep_until: u64,
    ) -> Result<DeleteRecord, RecordError> {
        let fields = DeleteRecord::fields(&root, deleted, keep_until);
        let seal = Seal::sign(owner, DELETE_CONTEXT, &fields)?;
        Ok(DeleteRecord { root, deleted, keep_until, seal })
    }

    pub fn owner(&self) -> PeerId {
        self.seal.owner()
    }

    /// The bytes before the owner's key.
    fn fields(root: &Cid, deleted: u64, keep_until: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(DELETE_RECORD_LEN);
        out.push(KIND_DELETE);
        out.extend_from_slice(&root.to_bytes());
        out.extend_from_slice(&deleted.to_be_bytes());
        out.extend_from_slice(&keep_until.to_be_bytes());
        out
    }

    pub fn encode(&self) -> Vec<u8> {
        self.seal.append_to(DeleteRecord::fields(&self.root, self.deleted, self.keep_until))
    }

    /// Parses a record and checks its signature.
    pub fn decode(bytes: &[u8]) -> Result<DeleteRecord, RecordError> {
        let malformed = || RecordError::Malformed("delete record");
        if bytes.len() != DELETE_RECORD_LEN || bytes[0] != KIND_DELETE {
            return Err(malformed());
        }
        let root = root_at(&bytes[1..37]).ok_or_else(malformed)?;
        let (deleted, keep_until) = (u64_at(&bytes[37..45]), u64_at(&bytes[45..53]));
        if keep_until <= deleted {
            return Err(malformed());
        }
        let seal = Seal::read(DELETE_CONTEXT, &bytes[..53], &bytes[53..])?;
        Ok(DeleteRecord { root, deleted, keep_until, seal })
    }

    /// The DHT key of `owner`'s delete record for `root`:
    /// `/dfs-p2p/delete/` then the root's 36 bytes, then the owner's peer id
    /// bytes. One key per owner and root, so a record names its signer
    /// and no one else's record can take its place.
    pub fn dht_key(root: &Cid, owner: &PeerId) -> Vec<u8> {
        [DELETE_KEY_PREFIX, &root.to_bytes(), &owner.to_bytes()].concat()
    }

    /// Parses a DHT value stored under `key` and checks that it belongs
    /// there (the key names its root and signer) and is still kept at `now`.
    pub fn from_dht(key: &[u8], value: &[u8], now: u64) -> Result<DeleteRecord, RecordError> {
        let record = DeleteRecord::decode(value)?;
        if key != DeleteRecord::dht_key(&record.root, &record.owner()) {
            return Err(RecordError::OtherRoot);
        }
        if record.deleted > now.saturating_add(CLOCK_SKEW.as_secs()) {
            return Err(RecordError::FromTheFuture);
        }
        if record.keep_until <= now {
            return Err(RecordError::Expired);
        }
        Ok(record)
    }
}

/// The end of a signed record: the owner's Ed25519 public key, then its
/// signature of a context string, the record's fields and that key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seal {
    owner_key: [u8; KEY_LEN],
    signature: [u8; SIG_LEN],
}

impl Seal {
    fn sign(owner: &Keypair, context: &[u8], fields: &[u8]) -> Result<Seal, RecordError> {
        let key = owner.clone().try_into_ed25519().map_err(|_| RecordError::NotEd25519)?;
        let owner_key = key.public().to_bytes();
        let signed = [context, fields, &owner_key].concat();
        Ok(Seal { owner_key, signature: key.sign(&signed).try_into().expect("64 bytes") })
    }

    /// The seal in `tail` (exactly a key and a signature), checked against
    /// `fields`.
    fn read(context: &[u8], fields: &[u8], tail: &[u8]) -> Result<Seal, RecordError> {
        let (key, signature) = tail.split_at(KEY_LEN);
        let public =
            ed25519::PublicKey::try_from_bytes(key).map_err(|_| RecordError::Malformed("key"))?;
        if !public.verify(&[context, fields, key].concat(), signature) {
            return Err(RecordError::BadSignature);
        }
        Ok(Seal {
            owner_key: key.try_into().expect("32 bytes"),
            signature: signature.try_into().expect("64 bytes"),
        })
    }

    fn append_to(&self, mut fields: Vec<u8>) -> Vec<u8> {
        fields.extend_from_slice(&self.owner_key);
        fields.extend_from_slice(&self.signature);
        fields
    }

    fn owner(&self) -> PeerId {
        let public =
            ed25519::PublicKey::try_from_bytes(&self.owner_key).expect("checked when read or made");
        PeerId::from_public_key(&PublicKey::from(public))
    }
}

fn root_at(bytes: &[u8]) -> Option<Cid> {
    let cid = block::cid_from_bytes(bytes).ok()?;
    (cid.codec() == DAG_CBOR && cid.to_bytes() == bytes).then_some(cid)
}

fn u64_at(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Cid {
        block::cid_of(DAG_CBOR, b"a root")
    }

    #[test]
    fn a_lease_round_trips_and_only_its_owner_can_sign_it() {
        let owner = Keypair::generate_ed25519();
        let lease = Lease::issue(&owner, root(), 3, Duration::from_secs(3600)).unwrap();
        let bytes = lease.encode();
        assert_eq!(bytes.len(), LEASE_LEN);
        let back = Lease::decode(&bytes).unwrap();
        assert_eq!(back, lease);
        assert_eq!(back.owner(), owner.public().to_peer_id());
        back.check(&root(), unix_secs()).unwrap();
        assert_eq!(back.check(&root(), lease.expires), Err(RecordError::Expired));
        // Any change to a signed byte breaks the signature.
        for at in [0, 5, 37, 40, 50, 60, 100] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert!(Lease::decode(&bad).is_err(), "byte {at}");
        }
        // Another key cannot pass off its lease as the owner's.
        let other = Keypair::generate_ed25519();
        let forged = Lease::issue(&other, root(), 9, Duration::from_secs(3600)).unwrap();
        let mut spliced = forged.encode();
        spliced[54..86].copy_from_slice(&bytes[54..86]);
        assert_eq!(Lease::decode(&spliced), Err(RecordError::BadSignature));
        assert_eq!(lease.ends(Duration::from_secs(60)), lease.issued + 60);
    }

    #[test]
    fn a_delete_record_belongs_under_its_own_key_only() {
        let owner = Keypair::generate_ed25519();
        let record = DeleteRecord::issue(&owner, root(), Duration::from_secs(3600)).unwrap();
        let bytes = record.encode();
        assert_eq!(bytes.len(), DELETE_RECORD_LEN);
        let key = DeleteRecord::dht_key(&root(), &owner.public().to_peer_id());
        assert_eq!(DeleteRecord::from_dht(&key, &bytes, unix_secs()).unwrap(), record);
        let elsewhere = DeleteRecord::dht_key(&root(), &PeerId::random());
        assert!(DeleteRecord::from_dht(&elsewhere, &bytes, unix_secs()).is_err());
        assert_eq!(
            DeleteRecord::from_dht(&key, &bytes, record.keep_until),
            Err(RecordError::Expired)
        );
        let mut bad = bytes.clone();
        bad[40] ^= 1;
        assert!(DeleteRecord::decode(&bad).is_err());
    }
}
