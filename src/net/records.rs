//! The DHT's record store: the provider records this node publishes for
//! the roots it holds, those other peers stored here, and owners' delete
//! records, each kind kept and bounded apart.
//!
//! Any peer can send `ADD_PROVIDER` and `PUT_VALUE`, and a fresh peer id
//! costs nothing, so what others store is shared out per peer: one peer
//! may have [`MAX_RECORDS_PER_PEER`] provider records and
//! [`MAX_VALUE_RECORDS_PER_PEER`] delete records here, and once a kind is
//! full in all, a newcomer's record takes the place of the oldest record
//! of the peer that has the most of that kind. A peer that has as many as
//! anyone is refused. So however many ids fill the store, a peer with few
//! records still gets in, and the largest contributors pay for it. A
//! provider record belongs to its provider (Kademlia only takes one from
//! the provider itself); a delete record to the peer that sent it. The
//! node's own records (its provider records, and the delete records it
//! publishes) are held apart: never evicted, never refused because others
//! filled the store.
//!
//! The only value records kept are owners' delete records
//! ([`DeleteRecord`]): each is checked (its signature, and that it belongs
//! under its key) before it is stored, and kept no longer than its signer
//! asked; anything else is refused.
//!
//! Memory: nothing a peer sends grows a record past a bound. A provider
//! record from another peer keeps its key (at most [`MAX_KEY_LEN`] bytes),
//! its expiry and at most [`MAX_ADDRS_PER_RECORD`] addresses of at most
//! [`MAX_ADDR_LEN`] bytes, each copied so that it holds just its bytes; a
//! delete record has one size. Each record then takes at most
//! [`MAX_RECORD_BYTES`] allocated here, its share of the maps and of its
//! peer's bookkeeping included (`tests/record_store_memory.rs` measures it:
//! 863 bytes a provider record when every record has a peer and a key of
//! its own and the longest key and addresses, 676 a delete record when
//! every one has a sender of its own). So the records of other peers take
//! at most (32,768 + 16,384) × 1 KiB = 48 MiB, and this node's own delete
//! records at most 16 MiB more.

use std::{
    borrow::Cow,
    collections::{BTreeSet, HashMap, VecDeque, hash_map},
    sync::Arc,
    time::{Duration, Instant},
};

use libp2p::{
    Multiaddr, PeerId,
    kad::{
        ProviderRecord, Record, RecordKey,
        store::{Error, RecordStore, Result},
    },
};

use crate::lease::{self, DeleteRecord};

/// Roots this node may provide (one record each, never per block).
pub const MAX_OWN_RECORDS: usize = 1 << 20;
/// Provider records of other peers held in all.
pub const MAX_FOREIGN_RECORDS: usize = 32 * 1024;
/// Provider records one other peer may have here.
pub const MAX_RECORDS_PER_PEER: usize = 1024;
/// Providers kept per key (Kademlia's `k`): enough to find a root, and a
/// lookup answer that fits in a Kademlia message.
pub const MAX_PROVIDERS_PER_KEY: usize = 20;
/// Addresses kept of a provider record from another peer.
pub const MAX_ADDRS_PER_RECORD: usize = 4;
/// The longest address kept of a provider record from another peer;
/// longer ones are dropped. Room for `/ip6/…/udp/…/quic-v1/p2p/<id>` (64
/// bytes) or a DNS name of 50 characters.
pub const MAX_ADDR_LEN: usize = 64;
/// The longest key of a provider record from another peer; one with a
/// longer key is refused. A root's binary CID, the key of its provider
/// records, is 36 bytes.
pub const MAX_KEY_LEN: usize = 64;
/// Delete records of other peers held in all.
pub const MAX_VALUE_RECORDS: usize = 16 * 1024;
/// Delete records one peer may have sent here.
pub const MAX_VALUE_RECORDS_PER_PEER: usize = 1024;
/// This node's own delete records held (one per file it deleted within a
/// lease); past this, its `delete` publishes none until some expire.
pub const MAX_OWN_VALUE_RECORDS: usize = 16 * 1024;
/// The most memory one record of another peer takes here, its share of the
/// maps and of its peer's bookkeeping included (see the module docs).
pub const MAX_RECORD_BYTES: usize = 1024;

/// How many records of other peers the store holds, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordCounts {
    /// Provider records of other peers.
    pub providers: usize,
    /// Delete records other peers sent.
    pub deletes: usize,
}

/// See the module docs.
pub struct ProviderRecords {
    local: PeerId,
    own: HashMap<RecordKey, ProviderRecord>,
    /// Other peers' provider records, by key.
    foreign: HashMap<RecordKey, Vec<Foreign>>,
    /// Who provided the records in `foreign`.
    providers: Shares,
    /// Delete records, this node's own and others'.
    values: HashMap<RecordKey, Value>,
    own_values: usize,
    /// Who sent the delete records of others in `values`.
    senders: Shares,
}

/// A provider record of another peer, as kept (its key is the map's).
struct Foreign {
    provider: Arc<PeerId>,
    expires: Option<Instant>,
    addresses: Box<[Multiaddr]>,
}

/// A delete record, as kept (its key is the map's).
struct Value {
    value: Box<[u8]>,
    expires: Instant,
    /// The peer that sent it; `None` for this node's own.
    source: Option<Arc<PeerId>>,
}

/// The records of one kind that other peers have here, per peer, so that
/// a full store finds the peer with the most at once.
#[derive(Default)]
struct Shares {
    /// Each peer's records, the oldest first. A peer id is 80 bytes: each
    /// peer's is kept once, shared.
    keys: HashMap<Arc<PeerId>, VecDeque<RecordKey>>,
    /// `(records, peer)` of every peer here: the largest contributor last.
    by_size: BTreeSet<(usize, Arc<PeerId>)>,
    total: usize,
}

impl Shares {
    /// The records `peer` has here.
    fn of(&self, peer: &PeerId) -> usize {
        self.keys.get(peer).map_or(0, VecDeque::len)
    }

    /// Counts a record of `peer` under `key`; returns the peer's id, shared.
    fn add(&mut self, peer: PeerId, key: RecordKey) -> Arc<PeerId> {
        let id =
            self.keys.get_key_value(&peer).map_or_else(|| Arc::new(peer), |(id, _)| id.clone());
        // A peer's first record gets room for one only: most peers have one.
        let keys = self.keys.entry(id.clone()).or_insert_with(|| VecDeque::with_capacity(1));
        self.by_size.remove(&(keys.len(), id.clone()));
        keys.push_back(key);
        self.by_size.insert((keys.len(), id.clone()));
        self.total += 1;
        id
    }

    /// Uncounts the record of `peer` under `key`.
    fn remove(&mut self, peer: &PeerId, key: &RecordKey) {
        let Some((id, keys)) = self.keys.get_key_value(peer) else { return };
        let Some(at) = keys.iter().position(|k| k == key) else { return };
        let (id, len) = (id.clone(), keys.len());
        self.by_size.remove(&(len, id.clone()));
        self.total -= 1;
        if len == 1 {
            self.keys.remove(peer);
            return;
        }
        let keys = self.keys.get_mut(peer).expect("found above");
        keys.remove(at);
        // Never more than twice the room a peer's records need, however
        // many it had.
        if keys.capacity() > 2 * keys.len() {
            keys.shrink_to_fit();
        }
        self.by_size.insert((len - 1, id));
    }

    /// The peer with the most records and its oldest record, if it has
    /// more than `than`.
    fn largest_above(&self, than: usize) -> Option<(PeerId, RecordKey)> {
        let (count, peer) = self.by_size.last()?;
        let oldest = self.keys.get(peer.as_ref())?.front()?;
        (*count > than).then(|| (**peer, oldest.clone()))
    }
}

/// The addresses kept of a provider record from another peer: the first
/// few short enough, each copied so that it holds just its bytes.
fn kept_addresses(addresses: &[Multiaddr]) -> Box<[Multiaddr]> {
    addresses
        .iter()
        .filter(|a| a.len() <= MAX_ADDR_LEN)
        .take(MAX_ADDRS_PER_RECORD)
        .filter_map(|a| Multiaddr::try_from(a.to_vec()).ok())
        .collect()
}

impl ProviderRecords {
    /// An empty store for the node `local`.
    pub fn new(local: PeerId) -> Self {
        ProviderRecords {
            local,
            own: HashMap::new(),
            foreign: HashMap::new(),
            providers: Shares::default(),
            values: HashMap::new(),
            own_values: 0,
            senders: Shares::default(),
        }
    }

    /// Delete records held, this node's own included (for tests).
    pub fn value_count(&self) -> usize {
        self.values.len()
    }

    /// Stores a delete record `source` sent (this node, for its own), if
    /// it is one: its signature checks out, it belongs under its key, and
    /// it is still kept. It is kept until its signer's `keep_until` at the
    /// latest. When others' records fill the store, it takes the place of
    /// the oldest record of the peer that sent the most, if that peer sent
    /// more than `source`; otherwise it is refused, as it is past
    /// `source`'s share. This node's own are refused only past
    /// [`MAX_OWN_VALUE_RECORDS`].
    pub fn put_from(&mut self, source: PeerId, record: Record) -> Result<()> {
        let now = lease::unix_secs();
        let Ok(delete) = DeleteRecord::from_dht(record.key.as_ref(), &record.value, now) else {
            return Err(Error::ValueTooLarge);
        };
        let left = Duration::from_secs(delete.keep_until.saturating_sub(now));
        let until = Instant::now() + left;
        let expires = record.expires.map_or(until, |e| e.min(until));
        let own = source == self.local;
        if let Some(kept) = self.values.get_mut(&record.key) {
            // One key, one signer and root: the record kept longest wins.
            if kept.expires < expires {
                kept.value = record.value.into_boxed_slice();
                kept.expires = expires;
            }
            // Published by this node now: its own from now on.
            if own
                && self.own_values < MAX_OWN_VALUE_RECORDS
                && let Some(sender) = kept.source.take()
            {
                self.senders.remove(&sender, &record.key);
                self.own_values += 1;
            }
            return Ok(());
        }
        // A copy of the key, holding just its bytes.
        let key = RecordKey::new(&record.key);
        let source = if own {
            if self.own_values >= MAX_OWN_VALUE_RECORDS {
                self.remove_expired(Instant::now());
                if self.own_values >= MAX_OWN_VALUE_RECORDS {
                    return Err(Error::MaxRecords);
                }
            }
            self.own_values += 1;
            None
        } else {
            let has = self.senders.of(&source);
            if has >= MAX_VALUE_RECORDS_PER_PEER {
                return Err(Error::MaxRecords);
            }
            if self.senders.total >= MAX_VALUE_RECORDS {
                let Some((_, oldest)) = self.senders.largest_above(has) else {
                    return Err(Error::MaxRecords);
                };
                self.remove_value(&oldest);
            }
            Some(self.senders.add(source, key.clone()))
        };
        let value = record.value.into_boxed_slice();
        self.values.insert(key, Value { value, expires, source });
        Ok(())
    }

    fn remove_value(&mut self, key: &RecordKey) {
        match self.values.remove(key).map(|v| v.source) {
            Some(Some(sender)) => self.senders.remove(&sender, key),
            Some(None) => self.own_values -= 1,
            None => {}
        }
    }

    /// Provider records of other peers held (for tests).
    pub fn foreign_count(&self) -> usize {
        self.providers.total
    }

    /// The records of other peers held, by kind (for `stat`).
    pub fn counts(&self) -> RecordCounts {
        RecordCounts { providers: self.providers.total, deletes: self.senders.total }
    }

    /// The other peers whose live records say they provide `key`.
    pub fn foreign_providers(&self, key: &RecordKey, now: Instant) -> Vec<PeerId> {
        let records = self.foreign.get(key).into_iter().flatten();
        records.filter(|r| !expired(r.expires, now)).map(|r| *r.provider).collect()
    }

    /// Forgets the expired records of other peers, and expired delete
    /// records.
    pub fn remove_expired(&mut self, now: Instant) {
        let expired_values: Vec<RecordKey> = self
            .values
            .iter()
            .filter(|(_, v)| expired(Some(v.expires), now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired_values {
            self.remove_value(&key);
        }
        let gone: Vec<(RecordKey, PeerId)> = self
            .foreign
            .iter()
            .flat_map(|(key, records)| {
                let gone = records.iter().filter(|r| expired(r.expires, now));
                gone.map(|r| (key.clone(), *r.provider))
            })
            .collect();
        for (key, provider) in gone {
            self.remove_foreign(&key, &provider);
        }
    }

    fn add_foreign(&mut self, record: ProviderRecord) -> Result<()> {
        if record.key.as_ref().len() > MAX_KEY_LEN {
            return Err(Error::ValueTooLarge);
        }
        let addresses = kept_addresses(&record.addresses);
        let peer = record.provider;
        let records = self.foreign.get_mut(&record.key);
        if let Some(kept) = records.and_then(|rs| rs.iter_mut().find(|r| *r.provider == peer)) {
            // Published again: the newer record, at no new cost.
            kept.expires = record.expires;
            kept.addresses = addresses;
            return Ok(());
        }
        let has = self.providers.of(&peer);
        if has >= MAX_RECORDS_PER_PEER {
            return Err(Error::MaxProvidedKeys);
        }
        let same_key = self.foreign.get(&record.key).map_or(&[][..], Vec::as_slice);
        if same_key.len() >= MAX_PROVIDERS_PER_KEY {
            // Full: the record that would expire first makes room, so that
            // the providers that keep publishing stay findable.
            let first = same_key.iter().min_by_key(|r| r.expires).map(|r| *r.provider);
            let first = first.expect("a full list is not empty");
            self.remove_foreign(&record.key, &first);
        } else if self.providers.total >= MAX_FOREIGN_RECORDS {
            let Some((largest, oldest)) = self.providers.largest_above(has) else {
                return Err(Error::MaxProvidedKeys);
            };
            self.remove_foreign(&oldest, &largest);
        }
        let key = match self.foreign.get_key_value(&record.key) {
            Some((key, _)) => key.clone(),
            // A copy of the key, holding just its bytes.
            None => RecordKey::new(&record.key),
        };
        let provider = self.providers.add(peer, key.clone());
        // Each key's list holds just its records (at most 20).
        let records = self.foreign.entry(key).or_default();
        records.reserve_exact(1);
        records.push(Foreign { provider, expires: record.expires, addresses });
        Ok(())
    }

    fn remove_foreign(&mut self, key: &RecordKey, provider: &PeerId) {
        let Some(records) = self.foreign.get_mut(key) else { return };
        let Some(at) = records.iter().position(|r| *r.provider == *provider) else { return };
        records.swap_remove(at);
        if records.is_empty() {
            self.foreign.remove(key);
        } else {
            records.shrink_to_fit();
        }
        self.providers.remove(provider, key);
    }
}

/// Whether a record that `expires` is expired at `now` (as Kademlia's
/// `is_expired`).
fn expired(expires: Option<Instant>, now: Instant) -> bool {
    expires.is_some_and(|t| now >= t)
}

/// A delete record as Kademlia hands it out.
fn to_record<'a>((key, value): (&'a RecordKey, &'a Value)) -> Cow<'a, Record> {
    Cow::Owned(Record {
        key: key.clone(),
        value: value.value.to_vec(),
        publisher: None,
        expires: Some(value.expires),
    })
}

impl RecordStore for ProviderRecords {
    type RecordsIter<'a> = Box<dyn Iterator<Item = Cow<'a, Record>> + 'a>;
    type ProvidedIter<'a> = std::iter::Map<
        hash_map::Values<'a, RecordKey, ProviderRecord>,
        fn(&'a ProviderRecord) -> Cow<'a, ProviderRecord>,
    >;

    fn get(&self, key: &RecordKey) -> Option<Cow<'_, Record>> {
        let kept = self.values.get_key_value(key)?;
        (!expired(Some(kept.1.expires), Instant::now())).then(|| to_record(kept))
    }

    /// This node's own records (Kademlia's `put_record`); others' come
    /// through [`put_from`](ProviderRecords::put_from).
    fn put(&mut self, record: Record) -> Result<()> {
        self.put_from(self.local, record)
    }

    fn remove(&mut self, key: &RecordKey) {
        self.remove_value(key);
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        Box::new(self.values.iter().map(to_record))
    }

    fn add_provider(&mut self, record: ProviderRecord) -> Result<()> {
        if record.provider != self.local {
            return self.add_foreign(record);
        }
        if self.own.len() >= MAX_OWN_RECORDS && !self.own.contains_key(&record.key) {
            return Err(Error::MaxProvidedKeys);
        }
        self.own.insert(record.key.clone(), record);
        Ok(())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        let mut out: Vec<ProviderRecord> = self.own.get(key).cloned().into_iter().collect();
        // Expired ones wait for the next sweep, but are never handed out.
        let now = Instant::now();
        let records = self.foreign.get(key).into_iter().flatten();
        out.extend(records.filter(|r| !expired(r.expires, now)).map(|r| ProviderRecord {
            key: key.clone(),
            provider: *r.provider,
            expires: r.expires,
            // Copies: a shared address would grow by a reference count.
            addresses: r.addresses.iter().filter_map(|a| a.to_vec().try_into().ok()).collect(),
        }));
        out
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.own.values().map(Cow::Borrowed)
    }

    fn remove_provider(&mut self, key: &RecordKey, provider: &PeerId) {
        if *provider == self.local {
            self.own.remove(key);
        } else {
            self.remove_foreign(key, provider);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use libp2p::identity::Keypair;

    use super::*;

    /// A valid delete record of `owner`'s, for a root made from `i`.
    fn delete(owner: &Keypair, i: u64) -> Record {
        let root = crate::block::cid_of(crate::block::DAG_CBOR, &i.to_be_bytes());
        let record = DeleteRecord::issue(owner, root, Duration::from_secs(3600)).unwrap();
        let key = DeleteRecord::dht_key(&root, &owner.public().to_peer_id());
        Record::new(RecordKey::new(&key), record.encode())
    }

    /// The provider records of `peer` held, in the order they came.
    fn keys_of(store: &ProviderRecords, peer: &PeerId) -> Vec<RecordKey> {
        store.providers.keys.get(peer).map(|k| k.iter().cloned().collect()).unwrap_or_default()
    }

    /// `peers` fresh peers, each sending `each` provider records of its
    /// own keys (`first` onwards), one peer after the other.
    fn flood(store: &mut ProviderRecords, peers: usize, each: usize, first: u32) -> Vec<PeerId> {
        let ids: Vec<PeerId> = (0..peers).map(|_| PeerId::random()).collect();
        let mut key = first;
        for id in &ids {
            for _ in 0..each {
                let _ = store.add_provider(record(key, *id, 1));
                key += 1;
            }
        }
        ids
    }

    #[test]
    fn a_full_store_takes_a_newcomers_record_from_the_largest_contributor() {
        let mut store = ProviderRecords::new(PeerId::random());
        // A big contributor, then smaller ones, fill the store.
        let big = flood(&mut store, 1, MAX_RECORDS_PER_PEER, 0)[0];
        let small = flood(&mut store, 62, 512, 1 << 20);
        assert_eq!(store.foreign_count(), MAX_FOREIGN_RECORDS);
        let small_keys: Vec<_> = small.iter().map(|p| keys_of(&store, p)).collect();
        // A newcomer gets in: the big contributor's oldest record goes.
        let oldest = keys_of(&store, &big)[0].clone();
        let newcomer = PeerId::random();
        store.add_provider(record(1 << 30, newcomer, 1)).unwrap();
        assert_eq!(store.foreign_count(), MAX_FOREIGN_RECORDS);
        assert!(store.foreign_providers(&oldest, Instant::now()).is_empty());
        assert_eq!(keys_of(&store, &big).len(), MAX_RECORDS_PER_PEER - 1);
        // It goes on taking the big one's records, oldest first, until it
        // has as many as the big one and the others: then it is refused.
        let mut taken = vec![oldest];
        for i in 1..MAX_RECORDS_PER_PEER as u32 - 512 {
            taken.push(keys_of(&store, &big)[0].clone());
            store.add_provider(record((1 << 30) + i, newcomer, 1)).unwrap();
        }
        assert_eq!(keys_of(&store, &big).len(), 512);
        assert_eq!(keys_of(&store, &newcomer).len(), 512);
        assert!(taken.iter().all(|k| store.foreign_providers(k, Instant::now()).is_empty()));
        assert!(store.add_provider(record((1 << 30) + 512, newcomer, 1)).is_err());
        for (peer, keys) in small.iter().zip(&small_keys) {
            assert_eq!(&keys_of(&store, peer), keys, "a small contributor lost a record");
        }
        // Another newcomer gets in still, from one of those with the most.
        let second = PeerId::random();
        store.add_provider(record(1 << 31, second, 1)).unwrap();
        let everyone = small.iter().chain([&big, &newcomer]);
        let shares: Vec<usize> = everyone.map(|p| keys_of(&store, p).len()).collect();
        assert_eq!(shares.iter().filter(|&&n| n == 511).count(), 1, "{shares:?}");
        assert!(shares.iter().all(|&n| n == 511 || n == 512));
        assert_eq!(store.foreign_count(), MAX_FOREIGN_RECORDS);
    }

    #[test]
    fn a_full_value_store_takes_a_newcomers_record_from_the_largest_sender() {
        let mut store = ProviderRecords::new(PeerId::random());
        let owner = Keypair::generate_ed25519();
        let senders: Vec<PeerId> =
            (0..MAX_VALUE_RECORDS / MAX_VALUE_RECORDS_PER_PEER).map(|_| PeerId::random()).collect();
        let mut i = 0;
        let mut first = Vec::new();
        for sender in &senders {
            for n in 0..MAX_VALUE_RECORDS_PER_PEER {
                let record = delete(&owner, i);
                if n == 0 {
                    first.push(record.key.clone());
                }
                store.put_from(*sender, record).unwrap();
                i += 1;
            }
        }
        assert_eq!(store.counts().deletes, MAX_VALUE_RECORDS);
        // All have as many: the largest by id loses its oldest record.
        let newcomer = PeerId::random();
        let newcomers = delete(&owner, i);
        store.put_from(newcomer, newcomers.clone()).unwrap();
        assert!(store.get(&newcomers.key).is_some());
        assert_eq!(store.counts().deletes, MAX_VALUE_RECORDS);
        let (_, largest) = senders.iter().zip(&first).max_by_key(|(p, _)| **p).unwrap();
        assert!(store.get(largest).is_none(), "the largest sender's oldest record stayed");
        let kept = first.iter().filter(|k| store.get(k).is_some()).count();
        assert_eq!(kept, senders.len() - 1);
        // A sender past its share is refused, full store or not.
        let full = senders.iter().find(|p| store.senders.of(p) == MAX_VALUE_RECORDS_PER_PEER);
        assert!(store.put_from(*full.unwrap(), delete(&owner, i + 1)).is_err());
    }

    #[test]
    fn own_records_are_never_evicted_nor_refused_because_others_filled_the_store() {
        let local = PeerId::random();
        let mut store = ProviderRecords::new(local);
        let owner = Keypair::generate_ed25519();
        // This node's own: a provider record and a delete record.
        store.add_provider(record(7, local, 0)).unwrap();
        let own = delete(&owner, 0);
        store.put(own.clone()).unwrap();
        // Others fill both kinds, and more come from fresh peers.
        flood(&mut store, MAX_FOREIGN_RECORDS / MAX_RECORDS_PER_PEER + 2, MAX_RECORDS_PER_PEER, 0);
        let mut i = 1;
        for _ in 0..MAX_VALUE_RECORDS / MAX_VALUE_RECORDS_PER_PEER + 2 {
            let sender = PeerId::random();
            for _ in 0..MAX_VALUE_RECORDS_PER_PEER {
                let _ = store.put_from(sender, delete(&owner, i));
                i += 1;
            }
        }
        assert_eq!(store.counts().providers, MAX_FOREIGN_RECORDS);
        assert_eq!(store.counts().deletes, MAX_VALUE_RECORDS);
        // The own ones stayed, and new own ones are taken.
        assert_eq!(store.provided().count(), 1);
        assert!(
            store
                .providers(&RecordKey::new(&7u32.to_be_bytes()))
                .iter()
                .any(|r| r.provider == local)
        );
        assert!(store.get(&own.key).is_some());
        store.add_provider(record(8, local, 0)).unwrap();
        let another = delete(&owner, i);
        store.put(another.clone()).unwrap();
        assert!(store.get(&another.key).is_some());
        assert_eq!(store.value_count(), MAX_VALUE_RECORDS + 2);
        // A peer sending this node's own record again takes nothing over;
        // a record a peer sent that this node then publishes is its own.
        let sender = PeerId::random();
        store.put_from(sender, own.clone()).unwrap();
        assert_eq!(store.senders.of(&sender), 0);
        let theirs = delete(&owner, i + 1);
        store.put_from(sender, theirs.clone()).unwrap();
        store.put(theirs.clone()).unwrap();
        assert_eq!(store.senders.of(&sender), 0);
        assert_eq!(store.own_values, 3);
    }

    #[test]
    fn a_kept_record_holds_no_more_than_what_it_keeps() {
        let mut store = ProviderRecords::new(PeerId::random());
        let peer = PeerId::random();
        // 1,400 addresses, the first ones too long, in a list with room
        // for more.
        let long: Multiaddr =
            format!("/dns4/{}/tcp/4001", "a".repeat(MAX_ADDR_LEN)).parse().unwrap();
        let mut addresses = Vec::with_capacity(4096);
        addresses.extend(std::iter::repeat_n(long, 3));
        addresses.extend((0..1400).map(|i| -> Multiaddr {
            format!("/ip4/10.0.{}.{}/tcp/4001", i / 250, i % 250).parse().unwrap()
        }));
        let key = RecordKey::new(&[1u8; 36]);
        store.add_provider(ProviderRecord::new(key.clone(), peer, addresses)).unwrap();
        let kept = &store.foreign[&key][0].addresses;
        assert_eq!(kept.len(), MAX_ADDRS_PER_RECORD);
        assert_eq!(kept[0].to_string(), "/ip4/10.0.0.0/tcp/4001");
        assert!(kept.iter().all(|a| a.len() <= MAX_ADDR_LEN));
        // A key longer than any root's CID is refused.
        let long_key = RecordKey::new(&[1u8; MAX_KEY_LEN + 1]);
        assert!(store.add_provider(ProviderRecord::new(long_key, peer, Vec::new())).is_err());
        // A peer's list of records shrinks with it.
        for k in 0..MAX_RECORDS_PER_PEER as u32 - 1 {
            store.add_provider(record(k, peer, 1)).unwrap();
        }
        for k in 0..MAX_RECORDS_PER_PEER as u32 - 10 {
            store.remove_provider(&RecordKey::new(&k.to_be_bytes()), &peer);
        }
        let keys = &store.providers.keys[&peer];
        assert_eq!(keys.len(), 10);
        assert!(keys.capacity() <= 2 * keys.len(), "room for {}", keys.capacity());
        // So does each key's list of providers.
        let shared = RecordKey::new(&[2u8; 36]);
        for _ in 0..MAX_PROVIDERS_PER_KEY {
            store
                .add_provider(ProviderRecord::new(shared.clone(), PeerId::random(), Vec::new()))
                .unwrap();
        }
        let gone: Vec<PeerId> =
            store.foreign[&shared].iter().skip(1).map(|r| *r.provider).collect();
        for p in gone {
            store.remove_provider(&shared, &p);
        }
        assert_eq!(store.foreign[&shared].capacity(), 1);
    }

    fn record(key: u32, provider: PeerId, addrs: usize) -> ProviderRecord {
        let addresses: Vec<Multiaddr> = (0..addrs)
            .map(|i| format!("/ip4/10.0.0.1/tcp/{}", 1000 + i).parse().unwrap())
            .collect();
        let mut record =
            ProviderRecord::new(RecordKey::new(&key.to_be_bytes()), provider, addresses);
        record.expires = Some(Instant::now() + Duration::from_secs(48 * 3600));
        record
    }

    #[test]
    fn only_delete_records_that_check_out_are_stored() {
        use crate::lease::DeleteRecord;
        use libp2p::identity::Keypair;
        let mut store = ProviderRecords::new(PeerId::random());
        let root = crate::block::cid_of(crate::block::DAG_CBOR, b"root");
        let owner = Keypair::generate_ed25519();
        let owner_id = owner.public().to_peer_id();
        let record = DeleteRecord::issue(&owner, root, Duration::from_secs(3600)).unwrap();
        let value = record.encode();
        let at = |key: Vec<u8>, value: Vec<u8>| Record::new(RecordKey::new(&key), value);
        let sender = PeerId::random();
        // Under another owner's key, or altered, or not a record at all.
        let stranger = PeerId::random();
        assert!(
            store
                .put_from(sender, at(DeleteRecord::dht_key(&root, &stranger), value.clone()))
                .is_err()
        );
        let mut altered = value.clone();
        altered[40] ^= 1;
        assert!(
            store.put_from(sender, at(DeleteRecord::dht_key(&root, &owner_id), altered)).is_err()
        );
        assert!(store.put_from(sender, at(b"anything".to_vec(), b"x".to_vec())).is_err());
        assert_eq!(store.value_count(), 0);
        // The real one, kept no longer than it asks.
        let key = DeleteRecord::dht_key(&root, &owner_id);
        store.put_from(sender, at(key.clone(), value)).unwrap();
        let kept = store.get(&RecordKey::new(&key)).unwrap();
        assert!(kept.expires.unwrap() <= Instant::now() + Duration::from_secs(3600));
        // One sender's share.
        for i in 0..MAX_VALUE_RECORDS_PER_PEER + 5 {
            let root = crate::block::cid_of(crate::block::DAG_CBOR, &i.to_be_bytes());
            let r = DeleteRecord::issue(&owner, root, Duration::from_secs(60)).unwrap();
            let _ = store.put_from(sender, at(DeleteRecord::dht_key(&root, &owner_id), r.encode()));
        }
        assert_eq!(store.value_count(), MAX_VALUE_RECORDS_PER_PEER);
        store.remove_expired(Instant::now() + Duration::from_secs(7200));
        assert_eq!(store.value_count(), 0);
    }

    #[test]
    fn foreign_records_are_capped_apart_from_own_ones() {
        let local = PeerId::random();
        let mut store = ProviderRecords::new(local);
        let flooder = PeerId::random();
        for key in 0..MAX_RECORDS_PER_PEER as u32 + 10 {
            let _ = store.add_provider(record(key, flooder, 1400));
        }
        assert_eq!(store.foreign_count(), MAX_RECORDS_PER_PEER, "one peer's share");
        assert!(store.providers(&RecordKey::new(&0u32.to_be_bytes()))[0].addresses.len() <= 4);
        // Own records are not counted against others', nor refused by them.
        for key in 0..100u32 {
            store.add_provider(record(key, local, 0)).unwrap();
        }
        assert_eq!(store.provided().count(), 100);
        // A full key makes room for a newcomer by dropping the record that
        // expires first.
        let key = 1_000_000;
        for i in 0..MAX_PROVIDERS_PER_KEY {
            let mut r = record(key, PeerId::random(), 1);
            r.expires = Some(Instant::now() + Duration::from_secs(100 + i as u64));
            store.add_provider(r).unwrap();
        }
        let newcomer = PeerId::random();
        store.add_provider(record(key, newcomer, 1)).unwrap();
        let providers = store.providers(&RecordKey::new(&key.to_be_bytes()));
        assert_eq!(providers.len(), MAX_PROVIDERS_PER_KEY);
        assert!(providers.iter().any(|r| r.provider == newcomer));
        store.remove_provider(&RecordKey::new(&key.to_be_bytes()), &newcomer);
        assert_eq!(
            store.providers(&RecordKey::new(&key.to_be_bytes())).len(),
            MAX_PROVIDERS_PER_KEY - 1
        );
        // Expired records go.
        store.remove_expired(Instant::now() + Duration::from_secs(3600 * 24 * 3));
        assert_eq!(store.foreign_count(), 0);
        assert_eq!(store.provided().count(), 100);
    }
}
