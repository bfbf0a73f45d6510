//! The storage core end to end: import, export, ranges, convergence,
//! encryption at rest, tampering, disk full, pins, locking and GC.

use std::{
    fs,
    io::{Cursor, Read},
    path::{Path, PathBuf},
    sync::mpsc,
};

use dfs_p2p::{
    Error, Ticket,
    block::{self, DAG_CBOR, RAW},
    export::{BlockSource, ExportOptions, export},
    import::{ImportOptions, Imported, MIN_CHUNK_SIZE, import},
    store::{PinKind, Store, StoreOptions},
};

const CHUNK: usize = MIN_CHUNK_SIZE;

fn data(len: usize, seed: u64) -> Vec<u8> {
    dfs_p2p::testdata::pseudo_random(len, seed)
}

fn open(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::default()).unwrap()
}

fn opts() -> ImportOptions {
    ImportOptions { chunk_size: CHUNK, ..Default::default() }
}

fn put(store: &Store, bytes: &[u8], options: &ImportOptions) -> Imported {
    import(store, Cursor::new(bytes), options, None).unwrap()
}

fn get(
    source: &impl BlockSource,
    ticket: &Ticket,
    range: Option<(u64, u64)>,
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    export(source, ticket, &mut out, &ExportOptions { range, ..Default::default() }, None)?;
    Ok(out)
}

fn block_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for shard in fs::read_dir(dir.join("blocks")).unwrap() {
        for f in fs::read_dir(shard.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files.sort();
    files
}

#[test]
fn round_trips_at_the_interesting_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // 0 and 1 byte; around one chunk; around two; and several chunks.
    for (i, len) in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 1, 5 * CHUNK + 77]
        .into_iter()
        .enumerate()
    {
        let bytes = data(len, i as u64);
        let imported = put(&store, &bytes, &opts());
        assert_eq!(imported.size, len as u64);
        assert_eq!(get(&store, &imported.ticket, None).unwrap(), bytes, "size {len}");
        let reparsed: Ticket = imported.ticket.to_string().parse().unwrap();
        assert_eq!(get(&store, &reparsed, None).unwrap(), bytes);
    }
}

#[test]
fn a_multi_level_tree_round_trips_and_keeps_nodes_small() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let options = ImportOptions { max_links: 3, ..opts() };
    // 40 leaves with 3 links per node: four levels of structure nodes.
    let bytes = data(40 * CHUNK - 5, 9);
    let imported = put(&store, &bytes, &options);
    assert_eq!(get(&store, &imported.ticket, None).unwrap(), bytes);
    let mut depth = 0;
    let mut cid = imported.ticket.root;
    while cid.codec() == DAG_CBOR {
        depth += 1;
        let node = dfs_p2p::dag::Node::decode(&cid, &store.get(&cid).unwrap()).unwrap();
        assert!(node.links.len() <= 3);
        cid = node.links[0];
    }
    assert!(depth >= 4, "depth {depth}");
}

#[test]
fn large_chunks_are_cut_into_leaves_within_the_block_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let options = ImportOptions { chunk_size: dfs_p2p::import::MAX_CHUNK_SIZE, ..opts() };
    let bytes = data(9 * 1024 * 1024 + 3, 4);
    let imported = put(&store, &bytes, &options);
    assert_eq!(get(&store, &imported.ticket, None).unwrap(), bytes);
    for f in block_files(dir.path()) {
        assert!(fs::metadata(&f).unwrap().len() <= block::MAX_BLOCK_SIZE as u64);
    }
}

#[test]
fn byte_ranges_at_and_across_chunk_edges() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let options = ImportOptions { max_links: 2, ..opts() };
    let len = 6 * CHUNK + 100;
    let bytes = data(len, 3);
    let ticket = put(&store, &bytes, &options).ticket;
    let c = CHUNK as u64;
    let ranges = [
        (0, 0),
        (0, 1),
        (c - 1, 1),
        (c - 1, 2),
        (c, 1),
        (c, c),
        (c - 10, 2 * c + 20),
        (3 * c + 5, 0),
        (len as u64 - 1, 1),
        (0, len as u64),
        (len as u64, 0),
    ];
    for (offset, n) in ranges {
        let got = get(&store, &ticket, Some((offset, n))).unwrap();
        assert_eq!(got, &bytes[offset as usize..(offset + n) as usize], "range {offset}+{n}");
    }
    let err = get(&store, &ticket, Some((len as u64 - 1, 2))).unwrap_err();
    assert!(matches!(err, Error::Range { .. }), "{err}");
    let err = get(&store, &ticket, Some((u64::MAX, 2))).unwrap_err();
    assert!(matches!(err, Error::Range { .. }), "{err}");
}

/// Counts the blocks a range export reads.
struct Counting<'a>(&'a Store, std::sync::Mutex<Vec<cid::Cid>>);

impl BlockSource for Counting<'_> {
    fn block(&self, cid: &cid::Cid) -> dfs_p2p::Result<dfs_p2p::block::BlockBuf> {
        self.1.lock().unwrap().push(*cid);
        self.0.get(cid)
    }
}

#[test]
fn a_range_reads_only_the_blocks_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes = data(16 * CHUNK, 5);
    let ticket = put(&store, &bytes, &ImportOptions { max_links: 4, ..opts() }).ticket;
    let counting = Counting(&store, Default::default());
    let c = CHUNK as u64;
    let got = get(&counting, &ticket, Some((4 * c - 1, 2))).unwrap();
    assert_eq!(got, &bytes[4 * CHUNK - 1..4 * CHUNK + 1]);
    let read = counting.1.lock().unwrap();
    let leaves = read.iter().filter(|c| c.codec() == RAW).count();
    // Root + two inner nodes (leaf 3 ends node 0, leaf 4 starts node 1) + two leaves.
    assert_eq!(leaves, 2, "{read:?}");
    assert_eq!(read.len(), 5, "{read:?}");
}

#[test]
fn the_same_file_and_secret_converge_and_another_secret_does_not() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sa, sb) = (open(a.path()), open(b.path()));
    let bytes = data(3 * CHUNK + 9, 1);
    let first = put(&sa, &bytes, &opts());
    let blocks_after_first = block_files(a.path()).len();
    let second = put(&sa, &bytes, &opts());
    assert_eq!(first.ticket, second.ticket);
    assert_eq!(second.new_blocks, 0);
    assert_eq!(block_files(a.path()).len(), blocks_after_first);
    let other = put(&sb, &bytes, &opts());
    assert_ne!(other.ticket.root, first.ticket.root);
    let names = |d: &Path| -> std::collections::BTreeSet<_> {
        block_files(d).into_iter().map(|p| p.file_name().unwrap().to_owned()).collect()
    };
    assert!(names(a.path()).is_disjoint(&names(b.path())));
}

#[test]
fn no_plaintext_is_stored_and_every_block_verifies_against_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let marker = b"THE-PLAINTEXT-MARKER-7c1f";
    let mut bytes = Vec::new();
    while bytes.len() < 3 * CHUNK {
        bytes.extend_from_slice(marker);
    }
    let options = ImportOptions { name: Some("THE-PLAINTEXT-MARKER-7c1f.txt".into()), ..opts() };
    put(&store, &bytes, &options);
    let mut files = 0;
    for entry in walk(dir.path()) {
        let content = fs::read(&entry).unwrap();
        assert!(
            !content.windows(marker.len()).any(|w| w == marker),
            "{} holds plaintext",
            entry.display()
        );
        files += 1;
    }
    assert!(files > 3);
    for f in block_files(dir.path()) {
        let cid = block::parse_cid(f.file_name().unwrap().to_str().unwrap()).unwrap();
        assert!(block::verify(&cid, &fs::read(&f).unwrap()), "{}", f.display());
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

fn block_path(dir: &Path, cid: &cid::Cid) -> PathBuf {
    let s = cid.to_string();
    dir.join("blocks").join(&s[s.len() - 2..]).join(&s)
}

/// Imports a 3-chunk file, damages it with `tamper`, and checks export fails
/// naming `blamed` and never writes wrong bytes.
fn assert_tamper_detected(tamper: impl FnOnce(&Path, &Store, &Ticket) -> cid::Cid) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes = data(3 * CHUNK, 11);
    let ticket = put(&store, &bytes, &ImportOptions { max_links: 2, ..opts() }).ticket;
    let blamed = tamper(dir.path(), &store, &ticket);
    let mut out = Vec::new();
    let err = export(&store, &ticket, &mut out, &ExportOptions::default(), None).unwrap_err();
    assert_eq!(err.blamed_block(), Some(&blamed), "{err}");
    assert!(err.to_string().contains(&blamed.to_string()), "{err}");
    assert!(bytes.starts_with(&out), "wrong bytes were written");
}

fn leaves(store: &Store, ticket: &Ticket) -> Vec<cid::Cid> {
    let mut out = Vec::new();
    store
        .walk(&ticket.root, &mut |c| {
            if c.codec() == RAW {
                out.push(*c)
            }
            Ok(())
        })
        .unwrap();
    out
}

fn inner_nodes(store: &Store, ticket: &Ticket) -> Vec<cid::Cid> {
    let mut out = Vec::new();
    store
        .walk(&ticket.root, &mut |c| {
            if c.codec() == DAG_CBOR && *c != ticket.root {
                out.push(*c)
            }
            Ok(())
        })
        .unwrap();
    out
}

fn flip_bit(path: &Path) {
    let mut b = fs::read(path).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x10;
    fs::write(path, b).unwrap();
}

#[test]
fn a_flipped_bit_in_a_leaf_is_detected_and_moved_aside() {
    assert_tamper_detected(|dir, store, ticket| {
        let leaf = leaves(store, ticket)[1];
        flip_bit(&block_path(dir, &leaf));
        leaf
    });
}

#[test]
fn a_flipped_bit_in_a_structure_node_is_detected() {
    assert_tamper_detected(|dir, store, ticket| {
        let node = inner_nodes(store, ticket)[0];
        flip_bit(&block_path(dir, &node));
        node
    });
}

#[test]
fn a_flipped_bit_in_the_root_is_detected() {
    assert_tamper_detected(|dir, _, ticket| {
        flip_bit(&block_path(dir, &ticket.root));
        ticket.root
    });
}

#[test]
fn swapped_blocks_are_detected() {
    assert_tamper_detected(|dir, store, ticket| {
        let l = leaves(store, ticket);
        let (a, b) = (block_path(dir, &l[0]), block_path(dir, &l[1]));
        let (ba, bb) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
        fs::write(&a, bb).unwrap();
        fs::write(&b, ba).unwrap();
        l[0]
    });
}

#[test]
fn a_truncated_block_is_detected() {
    assert_tamper_detected(|dir, store, ticket| {
        let leaf = leaves(store, ticket)[2];
        let p = block_path(dir, &leaf);
        let b = fs::read(&p).unwrap();
        fs::write(&p, &b[..b.len() - 1]).unwrap();
        leaf
    });
}

#[test]
fn a_missing_block_is_reported() {
    assert_tamper_detected(|dir, store, ticket| {
        let leaf = leaves(store, ticket)[1];
        fs::remove_file(block_path(dir, &leaf)).unwrap();
        leaf
    });
}

#[test]
fn a_corrupt_block_is_moved_aside_and_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ticket = put(&store, &data(2 * CHUNK, 2), &opts()).ticket;
    let leaf = leaves(&store, &ticket)[0];
    flip_bit(&block_path(dir.path(), &leaf));
    assert!(matches!(store.get(&leaf), Err(Error::Corrupt { cid }) if cid == leaf));
    assert!(!store.has(&leaf));
    assert_eq!(fs::read_dir(dir.path().join("corrupt")).unwrap().count(), 1);
    assert!(matches!(store.get(&leaf), Err(Error::Missing { .. })));
}

#[test]
fn gc_keeps_the_newest_blocks_set_aside_for_a_week_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ticket = put(&store, &data(2 * CHUNK, 3), &opts()).ticket;
    let leaf = leaves(&store, &ticket)[0];
    flip_bit(&block_path(dir.path(), &leaf));
    assert!(matches!(store.get(&leaf), Err(Error::Corrupt { .. })));
    let corrupt = dir.path().join("corrupt");
    let set_aside = fs::read_dir(&corrupt).unwrap().next().unwrap().unwrap().path();
    // Older ones, and one beyond the retention time.
    let week = dfs_p2p::store::CORRUPT_KEPT_FOR;
    let extra = dfs_p2p::store::CORRUPT_KEPT + 5;
    for i in 0..extra {
        let path = corrupt.join(format!("old-{i}"));
        fs::write(&path, [0u8; 10]).unwrap();
        let age = std::time::Duration::from_secs(60 * (i as u64 + 1));
        let when = std::time::SystemTime::now() - if i == 0 { week * 2 } else { age };
        fs::File::options().write(true).open(&path).unwrap().set_modified(when).unwrap();
    }
    let stats = store.gc().unwrap();
    let left: Vec<_> = fs::read_dir(&corrupt).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(left.len(), dfs_p2p::store::CORRUPT_KEPT, "{left:?}");
    assert_eq!(stats.removed_corrupt as usize, extra + 1 - dfs_p2p::store::CORRUPT_KEPT);
    assert!(left.contains(&set_aside), "the newest was removed");
    assert!(!left.contains(&corrupt.join("old-0")), "one older than a week was kept");
    // The file is whole again once the block is fetched back; nothing else went.
    assert!(store.has(&leaves(&store, &ticket)[1]));
}

#[test]
fn a_block_file_truncated_or_replaced_underneath_is_refused_and_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ticket = put(&store, &data(3 * CHUNK, 4), &opts()).ticket;
    let [truncated, replaced, shrunk] = leaves(&store, &ticket)[..] else { panic!("three leaves") };
    // Another process truncates one block file, replaces another (by
    // rename, as editors do), and shrinks a third to nothing.
    let path = block_path(dir.path(), &truncated);
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(1000).unwrap();
    let path = block_path(dir.path(), &replaced);
    let other = dir.path().join("other");
    fs::write(&other, data(CHUNK + 16, 99)).unwrap();
    fs::rename(&other, &path).unwrap();
    let path = block_path(dir.path(), &shrunk);
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
    for cid in [truncated, replaced, shrunk] {
        assert!(matches!(store.get(&cid), Err(Error::Corrupt { cid: c }) if c == cid));
        assert!(!store.has(&cid));
    }
    assert_eq!(fs::read_dir(dir.path().join("corrupt")).unwrap().count(), 3);
    assert!(matches!(get(&store, &ticket, None), Err(Error::Missing { .. })));
}

#[test]
fn a_wrong_ticket_key_fails_to_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ticket = put(&store, &data(100, 2), &opts()).ticket;
    let wrong = Ticket::new(ticket.root, [0; 32]);
    assert!(matches!(get(&store, &wrong, None), Err(Error::Decrypt { cid }) if cid == ticket.root));
}

#[test]
fn crafted_cid_strings_cannot_escape_the_data_dir() {
    for s in [
        "../../etc/passwd",
        "/etc/passwd",
        "bafy/../../x",
        "b..",
        "..",
        "",
        "\0",
        "bafkrei/../../..",
        "zb2rh",
    ] {
        assert!(block::parse_cid(s).is_err(), "{s:?}");
        assert!(s.parse::<dfs_p2p::ticket::TicketOrCid>().is_err(), "{s:?}");
    }
}

#[test]
fn disk_full_gives_a_clear_error_and_keeps_the_store_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let first = data(3 * CHUNK, 20);
    let first_ticket = put(&store, &first, &opts()).ticket;
    store.inject_disk_full_after(2 * CHUNK as u64);
    let err = import(&store, Cursor::new(data(8 * CHUNK, 21)), &opts(), None).unwrap_err();
    assert!(matches!(err, Error::DiskFull { .. }), "{err}");
    assert!(err.to_string().contains("disk full"), "{err}");
    store.inject_disk_full_after(u64::MAX);
    assert_eq!(store.roots().len(), 1);
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    assert_eq!(get(&store, &first_ticket, None).unwrap(), first);
    for f in block_files(dir.path()) {
        let cid = block::parse_cid(f.file_name().unwrap().to_str().unwrap()).unwrap();
        assert!(block::verify(&cid, &fs::read(&f).unwrap()));
    }
    drop(store);
    let store = open(dir.path());
    assert_eq!(get(&store, &first_ticket, None).unwrap(), first);
}

#[test]
fn a_failing_reader_stores_no_root() {
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("boom"));
            }
            let n = self.0.min(buf.len());
            self.0 -= n;
            buf[..n].fill(1);
            Ok(n)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let err = import(&store, Failing(3 * CHUNK + 5), &opts(), None).unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");
    assert!(store.roots().is_empty());
}

#[test]
fn pins_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(2 * CHUNK + 1, 7);
    let (pinned, cached) = {
        let store = open(dir.path());
        let pinned = put(&store, &bytes, &opts()).ticket;
        let cached =
            put(&store, &data(10, 8), &ImportOptions { kind: PinKind::Cached, ..opts() }).ticket;
        let owner = libp2p::PeerId::random();
        store.pin(&pinned.root, PinKind::Pinned, Some(owner)).unwrap();
        (pinned, cached)
    };
    let store = open(dir.path());
    let roots = store.roots();
    assert_eq!(roots.len(), 2);
    assert_eq!(store.root_info(&pinned.root).unwrap().kind, PinKind::Pinned);
    assert_eq!(store.root_info(&cached.root).unwrap().kind, PinKind::Cached);
    assert_eq!(get(&store, &pinned, None).unwrap(), bytes);
    let peer = store.peer_id();
    drop(store);
    assert_eq!(open(dir.path()).peer_id(), peer, "the identity survives too");
}

#[test]
fn a_pinned_root_keeps_every_owner_and_goes_with_the_last_that_placed_it() {
    let dir = tempfile::tempdir().unwrap();
    let cached = ImportOptions { kind: PinKind::Cached, ..opts() };
    let (a, b, stranger) =
        (libp2p::PeerId::random(), libp2p::PeerId::random(), libp2p::PeerId::random());
    let (replica, own) = {
        let store = open(dir.path());
        let replica = put(&store, &data(2 * CHUNK, 13), &cached).ticket.root;
        for owner in [a, b, a] {
            store.pin(&replica, PinKind::Pinned, Some(owner)).unwrap();
        }
        let own = put(&store, &data(CHUNK, 14), &opts()).ticket.root;
        store.pin(&own, PinKind::Pinned, Some(a)).unwrap();
        assert_eq!(store.release(&replica, &stranger).unwrap(), None);
        // `a` placed the copy, `b` joined it: `b` letting go leaves it.
        assert_eq!(store.release(&replica, &b).unwrap(), Some(false));
        // This node's own content stays when its one other owner lets go.
        assert_eq!(store.release(&own, &a).unwrap(), Some(false));
        (replica, own)
    };
    let store = open(dir.path());
    let info = store.root_info(&replica).unwrap();
    assert_eq!((info.kind, info.owners, info.local), (PinKind::Pinned, vec![a], false));
    let info = store.root_info(&own).unwrap();
    assert_eq!((info.owners.len(), info.local), (0, true));
    let before = block_files(dir.path()).len();
    assert_eq!(store.release(&replica, &a).unwrap(), Some(true));
    assert!(store.root_info(&replica).is_none());
    store.gc().unwrap(); // waits for the one the release asked for
    assert!(block_files(dir.path()).len() < before, "the replica's blocks are collected");
    assert!(store.root_info(&own).is_some());
}

#[test]
fn a_pin_index_with_single_owners_still_reads() {
    #[derive(serde::Serialize)]
    struct OldRecord {
        root: String,
        kind: PinKind,
        owner: Option<String>,
        size: u64,
        last_access: u64,
    }
    let dir = tempfile::tempdir().unwrap();
    let owner = libp2p::PeerId::random();
    let (replica, own) = {
        let store = open(dir.path());
        let replica = put(&store, &data(CHUNK, 15), &opts()).ticket.root;
        let own = put(&store, &data(CHUNK, 16), &opts()).ticket.root;
        (replica, own)
    };
    let old = |root: &cid::Cid, owner: Option<String>| OldRecord {
        root: root.to_string(),
        kind: PinKind::Pinned,
        owner,
        size: 1,
        last_access: 1,
    };
    let records = vec![old(&replica, Some(owner.to_string())), old(&own, None)];
    let mut bytes = Vec::new();
    ciborium::into_writer(&records, &mut bytes).unwrap();
    fs::write(dir.path().join("pins.cbor"), bytes).unwrap();

    let store = open(dir.path());
    let info = store.root_info(&replica).unwrap();
    assert_eq!((info.owners, info.local), (vec![owner], false));
    let info = store.root_info(&own).unwrap();
    assert_eq!((info.owners.len(), info.local), (0, true));
}

/// The roots an index file lists, with their kinds.
fn index_kinds(path: &Path) -> Vec<(String, PinKind)> {
    #[derive(serde::Deserialize)]
    struct Record {
        root: String,
        kind: PinKind,
    }
    let records: Vec<Record> = ciborium::from_reader(fs::read(path).unwrap().as_slice()).unwrap();
    records.into_iter().map(|r| (r.root, r.kind)).collect()
}

#[test]
fn a_cached_root_is_indexed_apart_and_a_damaged_cache_index_loses_only_it() {
    let dir = tempfile::tempdir().unwrap();
    let pins = dir.path().join("pins.cbor");
    let (pinned, cached) = {
        let store = open(dir.path());
        let pinned = put(&store, &data(2 * CHUNK, 40), &opts()).ticket;
        let synced = fs::read(&pins).unwrap();
        let cached_opts = ImportOptions { kind: PinKind::Cached, ..opts() };
        let cached = put(&store, &data(2 * CHUNK, 41), &cached_opts).ticket;
        // Caching a root, or caching a pinned one again, leaves the synced
        // index as it was.
        store.pin(&pinned.root, PinKind::Cached, None).unwrap();
        assert_eq!(fs::read(&pins).unwrap(), synced);
        assert_eq!(index_kinds(&pins), vec![(pinned.root.to_string(), PinKind::Pinned)]);
        let cache_index = index_kinds(&dir.path().join("cache.cbor"));
        assert_eq!(cache_index, vec![(cached.root.to_string(), PinKind::Cached)]);
        (pinned, cached)
    };
    let store = open(dir.path());
    assert_eq!(store.root_info(&pinned.root).unwrap().kind, PinKind::Pinned);
    assert_eq!(store.root_info(&cached.root).unwrap().kind, PinKind::Cached);
    drop(store);

    // A crash while the unsynced cache index was written.
    fs::write(dir.path().join("cache.cbor"), b"\xff\x00 torn").unwrap();
    let store = open(dir.path());
    assert_eq!(store.root_info(&pinned.root).unwrap().kind, PinKind::Pinned);
    assert!(store.root_info(&cached.root).is_none());
    store.gc().unwrap();
    assert!(!block_path(dir.path(), &cached.root).exists(), "its blocks are collected");
    assert_eq!(get(&store, &pinned, None).unwrap(), data(2 * CHUNK, 40));
}

#[test]
fn a_cached_root_whose_blocks_went_is_not_indexed_again() {
    let dir = tempfile::tempdir().unwrap();
    let cached = {
        let store = open(dir.path());
        let cached_opts = ImportOptions { kind: PinKind::Cached, ..opts() };
        put(&store, &data(CHUNK, 42), &cached_opts).ticket
    };
    // The cache index is not synced: after a crash it may still list a root
    // whose removal and collection had reached the disk.
    fs::remove_file(block_path(dir.path(), &cached.root)).unwrap();
    assert!(open(dir.path()).root_info(&cached.root).is_none());
}

#[test]
fn an_index_that_lists_cached_roots_with_pinned_ones_is_split_at_open() {
    #[derive(serde::Serialize)]
    struct Record {
        root: String,
        kind: PinKind,
        owners: Vec<String>,
        local: bool,
        size: u64,
        last_access: u64,
    }
    let dir = tempfile::tempdir().unwrap();
    let (pinned, cached) = {
        let store = open(dir.path());
        let pinned = put(&store, &data(CHUNK, 43), &opts()).ticket.root;
        let cached = put(&store, &data(CHUNK, 44), &opts()).ticket.root;
        (pinned, cached)
    };
    let record = |root: &cid::Cid, kind| Record {
        root: root.to_string(),
        kind,
        owners: Vec::new(),
        local: kind == PinKind::Pinned,
        size: 1,
        last_access: 1,
    };
    let records = vec![record(&pinned, PinKind::Pinned), record(&cached, PinKind::Cached)];
    let mut bytes = Vec::new();
    ciborium::into_writer(&records, &mut bytes).unwrap();
    fs::write(dir.path().join("pins.cbor"), bytes).unwrap();
    fs::remove_file(dir.path().join("cache.cbor")).ok();

    for _ in 0..2 {
        let store = open(dir.path());
        assert_eq!(store.root_info(&pinned).unwrap().kind, PinKind::Pinned);
        assert_eq!(store.root_info(&cached).unwrap().kind, PinKind::Cached);
        drop(store);
        let pins = index_kinds(&dir.path().join("pins.cbor"));
        assert_eq!(pins, vec![(pinned.to_string(), PinKind::Pinned)]);
    }
}

#[test]
fn a_second_process_on_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _store = open(dir.path());
    let err = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, Error::InUse { .. }));
    assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");
}

#[test]
fn a_world_readable_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let key = dir.path().join("identity.key");
    assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let err = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, Error::InsecureKey { .. }), "{err}");
}

#[test]
fn cached_roots_are_evicted_lru_and_pinned_ones_never() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions { cache_limit: 3 * CHUNK as u64 }).unwrap();
    let cached = ImportOptions { kind: PinKind::Cached, ..opts() };
    let pinned = put(&store, &data(4 * CHUNK, 30), &opts()).ticket;
    let a = put(&store, &data(CHUNK, 31), &cached).ticket;
    let b = put(&store, &data(CHUNK, 32), &cached).ticket;
    store.touch(&a.root);
    let c = put(&store, &data(CHUNK, 33), &cached).ticket;
    let evicted = store.enforce_cache_limit().unwrap();
    assert_eq!(evicted, vec![b.root]);
    store.gc().unwrap();
    assert!(!store.has(&b.root));
    assert!(matches!(get(&store, &b, None), Err(Error::Missing { .. })));
    for t in [&pinned, &a, &c] {
        assert!(get(&store, t, None).is_ok());
    }
    assert!(store.cache_usage() <= 3 * CHUNK as u64);
}

#[test]
fn gc_removes_unreachable_blocks_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let shared = data(2 * CHUNK, 40);
    let mut with_extra = shared.clone();
    with_extra.extend(data(CHUNK, 41));
    let a = put(&store, &shared, &opts()).ticket;
    let b = put(&store, &with_extra, &opts()).ticket;
    assert!(store.remove_root(&a.root).unwrap());
    store.gc().unwrap();
    assert!(!store.has(&a.root));
    assert_eq!(get(&store, &b, None).unwrap(), with_extra, "shared leaves survive");
    assert!(store.remove_root(&b.root).unwrap());
    store.gc().unwrap();
    assert_eq!(store.usage().unwrap().blocks, 0);
}

/// A reader that pauses halfway until told to go on.
struct Gated {
    data: Vec<u8>,
    pos: usize,
    reached: Option<mpsc::Sender<()>>,
    go: mpsc::Receiver<()>,
}

impl Read for Gated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.data.len() / 2
            && let Some(tx) = self.reached.take()
        {
            tx.send(()).unwrap();
            self.go.recv().unwrap();
        }
        let n = buf.len().min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Runs a put of `bytes` that stops halfway, runs a garbage collection
/// meanwhile (which must finish while the put waits), lets the put finish,
/// and returns the collection's figures and the put's ticket.
fn gc_during_a_put(store: &Store, bytes: &[u8]) -> (dfs_p2p::store::GcStats, Ticket) {
    // Some of what the put wrote is in place (its first synced batch), or
    // some earlier block is.
    gc_during_a_put_once(store, bytes, || !block_files(store.dir()).is_empty())
}

/// [`gc_during_a_put`], collecting once the stopped put has done what
/// `ready` waits for.
fn gc_during_a_put_once(
    store: &Store,
    bytes: &[u8],
    ready: impl Fn() -> bool + Sync,
) -> (dfs_p2p::store::GcStats, Ticket) {
    let (reached_tx, reached_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let reader = Gated { data: bytes.to_vec(), pos: 0, reached: Some(reached_tx), go: go_rx };
    std::thread::scope(|s| {
        let putter = s.spawn(move || import(store, reader, &opts(), None));
        reached_rx.recv().unwrap();
        let collect = || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !ready() {
                if std::time::Instant::now() > deadline {
                    return Err("the put did not get ready for the collection");
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let (done_tx, done_rx) = mpsc::channel();
            s.spawn(move || done_tx.send(store.gc().unwrap()).unwrap());
            // The collection does not wait for the put, which is half done.
            done_rx
                .recv_timeout(std::time::Duration::from_secs(20))
                .map_err(|_| "the collection waited for the put")
        };
        let stats = collect();
        // Let the put go on whatever happened, so the scope can end.
        go_tx.send(()).unwrap();
        let stats = stats.unwrap();
        (stats, putter.join().unwrap().unwrap().ticket)
    })
}

#[test]
fn gc_never_waits_for_a_put_nor_removes_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // More than two batches of blocks, so that one is in place halfway.
    let bytes = data(600 * CHUNK, 50);
    let (stats, ticket) = gc_during_a_put(&store, &bytes);
    assert!(stats.kept_recent > 0, "the put's first blocks were kept: {stats:?}");
    assert_eq!(stats.removed_blocks, 0);
    assert_eq!(get(&store, &ticket, None).unwrap(), bytes);
}

#[test]
fn gc_keeps_the_stored_blocks_a_running_put_reuses() {
    // Blocks of the file are on disk, but no root holds them (a put that
    // was interrupted, a root dropped and not yet collected).
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(6 * CHUNK, 51);
    let orphans = {
        let scratch = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        drop(store);
        // The same secret in a scratch store gives the same blocks.
        let secret = fs::read(dir.path().join("convergence.secret")).unwrap();
        fs::create_dir_all(scratch.path()).unwrap();
        let path = scratch.path().join("convergence.secret");
        fs::write(&path, secret).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let other = open(scratch.path());
        let root = put(&other, &bytes, &opts()).ticket.root;
        let mut blocks = Vec::new();
        other
            .walk(&root, &mut |c| {
                blocks.push((*c, other.get(c)?.to_vec()));
                Ok(())
            })
            .unwrap();
        blocks
    };
    let store = open(dir.path());
    for (cid, block) in &orphans {
        store.put(cid, block).unwrap();
    }
    // A claim touches a block file: its change time moves. The file
    // system's clock first moves past the orphans' writes, so that it
    // shows.
    use std::os::unix::fs::MetadataExt;
    let ctime = |p: &Path| fs::metadata(p).map(|m| (m.ctime(), m.ctime_nsec())).ok();
    let written: Vec<_> = block_files(dir.path()).into_iter().map(|p| (ctime(&p), p)).collect();
    let newest = written.iter().filter_map(|(c, _)| *c).max().unwrap();
    let probe = dir.path().join("clock-probe");
    while ctime(&probe).is_none_or(|c| c <= newest) {
        fs::write(&probe, b"").unwrap();
    }
    // The put finds the first half already stored and claims it; the
    // collection (once the put has claimed some) then removes the orphans
    // the put has not reached (and the put writes them again), never one
    // it relies on.
    let claimed = || written.iter().any(|(c, p)| ctime(p) != *c);
    let (stats, ticket) = gc_during_a_put_once(&store, &bytes, claimed);
    assert!(stats.removed_blocks > 0, "unclaimed orphans are collected: {stats:?}");
    assert!(stats.kept_recent > 0, "claimed ones are kept: {stats:?}");
    assert_eq!(get(&store, &ticket, None).unwrap(), bytes);
    store.gc().unwrap();
    assert_eq!(get(&store, &ticket, None).unwrap(), bytes);
}

/// Writes a stopped process left in `tmp/` are removed when the directory
/// is opened, and the next collection reports them with the rest.
#[test]
fn unfinished_writes_in_tmp_are_reported_by_the_next_collection() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    for i in 0..3 {
        fs::write(dir.path().join("tmp").join(format!("{i}.left")), vec![7u8; 1000]).unwrap();
    }
    let store = open(dir.path());
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    let stats = store.gc().unwrap();
    assert_eq!((stats.removed_tmp_files, stats.removed_tmp_bytes), (3, 3000));
    // Reported once.
    let stats = store.gc().unwrap();
    assert_eq!((stats.removed_tmp_files, stats.removed_tmp_bytes), (0, 0));
}
