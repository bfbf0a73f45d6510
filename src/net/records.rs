//! The DHT's record store: the provider records this node publishes for
//! the roots it holds, and those other peers stored here, kept apart and
//! bounded apart. Any peer can send `ADD_PROVIDER`, so what others store is
//! capped in all, per peer and per key, and each record keeps a few
//! addresses only (a lookup answer must stay within what other nodes
//! accept). The only value records kept are owners' delete records
//! ([`DeleteRecord`]): each is checked (its signature, and that it belongs
//! under its key) before it is stored, kept no longer than its signer asked,
//! and capped in all and per peer that sent it; anything else is refused.

use std::{
    borrow::Cow,
    collections::{HashMap, hash_map},
    time::{Duration, Instant},
};

use libp2p::{
    PeerId,
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
/// Delete records held in all.
pub const MAX_VALUE_RECORDS: usize = 16 * 1024;
/// Delete records one peer may have sent here.
pub const MAX_VALUE_RECORDS_PER_PEER: usize = 1024;

/// See the module docs.
pub struct ProviderRecords {
    local: PeerId,
    own: HashMap<RecordKey, ProviderRecord>,
    foreign: HashMap<RecordKey, Vec<ProviderRecord>>,
    foreign_count: usize,
    per_peer: HashMap<PeerId, usize>,
    /// Delete records, with the peer that sent each (this node for its own).
    values: HashMap<RecordKey, (Record, PeerId)>,
    values_per_peer: HashMap<PeerId, usize>,
}

impl ProviderRecords {
    pub fn new(local: PeerId) -> Self {
        ProviderRecords {
            local,
            own: HashMap::new(),
            foreign: HashMap::new(),
            foreign_count: 0,
            per_peer: HashMap::new(),
            values: HashMap::new(),
            values_per_peer: HashMap::new(),
        }
    }

    /// Delete records held (for tests).
    pub fn value_count(&self) -> usize {
        self.values.len()
    }

    /// Stores a delete record `source` sent, if it is one: its signature
    /// checks out, it belongs under its key, and it is still kept. It is
    /// kept until its signer's `keep_until` at the latest. Refused when the
    /// store or `source`'s share of it is full.
    pub fn put_from(&mut self, source: PeerId, mut record: Record) -> Result<()> {
        let now = lease::unix_secs();
        let Ok(delete) = DeleteRecord::from_dht(record.key.as_ref(), &record.value, now) else {
            return Err(Error::ValueTooLarge);
        };
        let left = Duration::from_secs(delete.keep_until.saturating_sub(now));
        let until = Instant::now() + left;
        record.expires = Some(record.expires.map_or(until, |e| e.min(until)));
        record.publisher = None;
        if let Some((old, _)) = self.values.get_mut(&record.key) {
            // One key, one signer and root: the record kept longest wins.
            if old.expires < record.expires {
                *old = record;
            }
            return Ok(());
        }
        if self.values_per_peer.get(&source).copied().unwrap_or(0) >= MAX_VALUE_RECORDS_PER_PEER
            && source != self.local
        {
            return Err(Error::MaxRecords);
        }
        if self.values.len() >= MAX_VALUE_RECORDS {
            self.remove_expired(Instant::now());
            if self.values.len() >= MAX_VALUE_RECORDS {
                return Err(Error::MaxRecords);
            }
        }
        self.values.insert(record.key.clone(), (record, source));
        *self.values_per_peer.entry(source).or_default() += 1;
        Ok(())
    }

    fn remove_value(&mut self, key: &RecordKey) {
        if let Some((_, source)) = self.values.remove(key)
            && let hash_map::Entry::Occupied(mut e) = self.values_per_peer.entry(source)
        {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// Provider records of other peers held (for `stat` and tests).
    pub fn foreign_count(&self) -> usize {
        self.foreign_count
    }

    /// The other peers whose live records say they provide `key`.
    pub fn foreign_providers(&self, key: &RecordKey, now: Instant) -> Vec<PeerId> {
        let records = self.foreign.get(key).into_iter().flatten();
        records.filter(|r| !r.is_expired(now)).map(|r| r.provider).collect()
    }

    /// Forgets the expired records of other peers, and expired delete
    /// records.
    pub fn remove_expired(&mut self, now: Instant) {
        let expired: Vec<RecordKey> = self
            .values
            .iter()
            .filter(|(_, (r, _))| r.is_expired(now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.remove_value(&key);
        }
        let mut gone = Vec::new();
        self.foreign.retain(|_, records| {
            records.retain(|r| {
                let expired = r.is_expired(now);
                if expired {
                    gone.push(r.provider);
                }
                !expired
            });
            !records.is_empty()
        });
        for peer in gone {
            self.uncount(&peer);
        }
    }

    fn uncount(&mut self, peer: &PeerId) {
        self.foreign_count -= 1;
        if let hash_map::Entry::Occupied(mut e) = self.per_peer.entry(*peer) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    fn add_foreign(&mut self, mut record: ProviderRecord) -> Result<()> {
        record.addresses.truncate(MAX_ADDRS_PER_RECORD);
        let records = self.foreign.entry(record.key.clone()).or_default();
        if let Some(old) = records.iter_mut().find(|r| r.provider == record.provider) {
            // Published again: the newer record, at no new cost.
            *old = record;
            return Ok(());
        }
        let peer = record.provider;
        if self.per_peer.get(&peer).copied().unwrap_or(0) >= MAX_RECORDS_PER_PEER {
            return Err(Error::MaxProvidedKeys);
        }
        if records.len() >= MAX_PROVIDERS_PER_KEY {
            // Full: the record that would expire first makes room, so that
            // the providers that keep publishing stay findable.
            let oldest = (0..records.len())
                .min_by_key(|&i| records[i].expires)
                .expect("a full list is not empty");
            let gone = records.swap_remove(oldest).provider;
            self.uncount(&gone);
        } else if self.foreign_count >= MAX_FOREIGN_RECORDS {
            self.remove_expired(Instant::now());
            if self.foreign_count >= MAX_FOREIGN_RECORDS {
                return Err(Error::MaxProvidedKeys);
            }
        }
        self.foreign.entry(record.key.clone()).or_default().push(record);
        self.foreign_count += 1;
        *self.per_peer.entry(peer).or_default() += 1;
        Ok(())
    }
}

type ValueEntry = (Record, PeerId);

impl RecordStore for ProviderRecords {
    type RecordsIter<'a> = std::iter::Map<
        hash_map::Values<'a, RecordKey, ValueEntry>,
        fn(&'a ValueEntry) -> Cow<'a, Record>,
    >;
    type ProvidedIter<'a> = std::iter::Map<
        hash_map::Values<'a, RecordKey, ProviderRecord>,
        fn(&'a ProviderRecord) -> Cow<'a, ProviderRecord>,
    >;

    fn get(&self, key: &RecordKey) -> Option<Cow<'_, Record>> {
        let (record, _) = self.values.get(key)?;
        (!record.is_expired(Instant::now())).then_some(Cow::Borrowed(record))
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
        self.values.values().map(|(r, _)| Cow::Borrowed(r))
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
        let live = self.foreign.get(key).into_iter().flatten().filter(|r| !r.is_expired(now));
        out.extend(live.cloned());
        out
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.own.values().map(Cow::Borrowed)
    }

    fn remove_provider(&mut self, key: &RecordKey, provider: &PeerId) {
        if *provider == self.local {
            self.own.remove(key);
            return;
        }
        let Some(records) = self.foreign.get_mut(key) else { return };
        let Some(at) = records.iter().position(|r| r.provider == *provider) else { return };
        records.swap_remove(at);
        if records.is_empty() {
            self.foreign.remove(key);
        }
        self.uncount(provider);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use libp2p::Multiaddr;

    use super::*;

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
