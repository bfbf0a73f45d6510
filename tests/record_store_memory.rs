//! The memory the DHT record store takes for other peers' records,
//! measured: every allocation of this test binary is counted, and the
//! store is filled the ways that cost it most (a fresh peer and a fresh key
//! for every record, the longest key and addresses it keeps, a record sent
//! with far more addresses than it keeps, more records than fit). What it
//! holds then must take at most `MAX_RECORD_BYTES` a record, the bound the
//! module docs and the README state.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicIsize, Ordering},
    time::Duration,
};

use dfs_p2p::{
    block::{DAG_CBOR, cid_of},
    lease::DeleteRecord,
    net::records::{
        MAX_ADDR_LEN, MAX_FOREIGN_RECORDS, MAX_KEY_LEN, MAX_RECORD_BYTES, MAX_RECORDS_PER_PEER,
        MAX_VALUE_RECORDS, MAX_VALUE_RECORDS_PER_PEER, ProviderRecords,
    },
};
use libp2p::{
    Multiaddr, PeerId,
    identity::Keypair,
    kad::{ProviderRecord, Record, RecordKey, store::RecordStore},
};

/// Bytes allocated and not freed, by anyone in this binary.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The bytes `fill` leaves allocated in a fresh store, with the store.
fn measured(fill: impl FnOnce(&mut ProviderRecords)) -> (usize, ProviderRecords) {
    let mut store = ProviderRecords::new(PeerId::random());
    let before = LIVE.load(Ordering::Relaxed);
    fill(&mut store);
    let after = LIVE.load(Ordering::Relaxed);
    (usize::try_from(after - before).unwrap_or(0), store)
}

/// A key of the longest length kept, unique to `i`.
fn long_key(i: u64) -> RecordKey {
    let mut key = vec![0xAA; MAX_KEY_LEN];
    key[..8].copy_from_slice(&i.to_be_bytes());
    RecordKey::new(&key)
}

/// A provider record under `key` with 64 addresses of the longest length
/// kept, in a list with room for 1,024.
fn fat_record(key: RecordKey, provider: PeerId) -> ProviderRecord {
    let mut addresses = Vec::with_capacity(1024);
    for i in 0..64 {
        // `/dns4/<name>/tcp/4001` is 5 bytes and the name.
        let name = format!("{i:0>width$}", width = MAX_ADDR_LEN - 5);
        let addr: Multiaddr = format!("/dns4/{name}/tcp/4001").parse().unwrap();
        assert_eq!(addr.len(), MAX_ADDR_LEN);
        addresses.push(addr);
    }
    ProviderRecord::new(key, provider, addresses)
}

/// Every key's providers handed out once (as a lookup answer would), so
/// that what the store shares on a copy is counted too.
fn hand_out(store: &ProviderRecords, keys: impl Iterator<Item = RecordKey>) {
    for key in keys {
        drop(store.providers(&key));
    }
}

fn assert_within(what: &str, bytes: usize, records: usize, cap: usize) {
    let each = bytes / records.max(1);
    eprintln!("{what}: {records} records, {} KiB, {each} bytes a record", bytes >> 10);
    assert!(records > 0 && records <= cap, "{what}: {records} records held");
    assert!(each <= MAX_RECORD_BYTES, "{what}: {each} bytes a record");
    assert!(bytes <= cap * MAX_RECORD_BYTES, "{what}: {bytes} bytes in all");
}

#[test]
fn others_records_take_at_most_the_stated_bound() {
    // Provider records, one peer and one key each, more than fit.
    let sent = MAX_FOREIGN_RECORDS + MAX_FOREIGN_RECORDS / 4;
    let (bytes, store) = measured(|store| {
        for i in 0..sent as u64 {
            let _ = store.add_provider(fat_record(long_key(i), PeerId::random()));
        }
        hand_out(store, (0..sent as u64).map(long_key));
    });
    let held = store.counts().providers;
    assert_eq!(held, MAX_FOREIGN_RECORDS, "the store did not fill");
    assert_within("providers, a peer each", bytes, held, MAX_FOREIGN_RECORDS);
    drop(store);

    // Provider records, as many peers as fill the store with their whole
    // share and some more.
    let peers = MAX_FOREIGN_RECORDS / MAX_RECORDS_PER_PEER + 8;
    let (bytes, store) = measured(|store| {
        let mut i = 0;
        for _ in 0..peers {
            let peer = PeerId::random();
            for _ in 0..MAX_RECORDS_PER_PEER {
                let _ = store.add_provider(fat_record(long_key(i), peer));
                i += 1;
            }
        }
        hand_out(store, (0..i).map(long_key));
    });
    let held = store.counts().providers;
    assert_eq!(held, MAX_FOREIGN_RECORDS, "the store did not fill");
    assert_within("providers, full shares", bytes, held, MAX_FOREIGN_RECORDS);
    drop(store);

    // Delete records: one sender each, then whole shares; more than fit.
    let owner = Keypair::generate_ed25519();
    let owner_id = owner.public().to_peer_id();
    let deletes: Vec<Record> = (0..(MAX_VALUE_RECORDS + MAX_VALUE_RECORDS / 4) as u64)
        .map(|i| {
            let root = cid_of(DAG_CBOR, &i.to_be_bytes());
            let record = DeleteRecord::issue(&owner, root, Duration::from_secs(3600)).unwrap();
            let key = DeleteRecord::dht_key(&root, &owner_id);
            Record::new(RecordKey::new(&key), record.encode())
        })
        .collect();
    let (bytes, store) = measured(|store| {
        for record in &deletes {
            let _ = store.put_from(PeerId::random(), record.clone());
        }
    });
    let held = store.counts().deletes;
    assert_eq!(held, MAX_VALUE_RECORDS, "the store did not fill");
    assert_within("deletes, a sender each", bytes, held, MAX_VALUE_RECORDS);
    drop(store);
    let (bytes, store) = measured(|store| {
        for share in deletes.chunks(MAX_VALUE_RECORDS_PER_PEER) {
            let sender = PeerId::random();
            for record in share {
                let _ = store.put_from(sender, record.clone());
            }
        }
    });
    let held = store.counts().deletes;
    assert_eq!(held, MAX_VALUE_RECORDS, "the store did not fill");
    assert_within("deletes, full shares", bytes, held, MAX_VALUE_RECORDS);
}
