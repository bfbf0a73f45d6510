//! The fuzz targets' inputs as a test: every seed under `fuzz/seeds/<target>/`
//! and every kept crash input under `fuzz/regressions/<target>/` goes through
//! the check that target runs (`dfs_p2p::fuzzing`), so a crash the fuzzer
//! once found stays fixed without the fuzzer.
//!
//! The seeds are real encodings, made here: run
//! `cargo test --test fuzz_regressions -- --ignored write_seeds` to write
//! them again after a format change; `seeds_are_current` fails until then.

use std::{
    collections::BTreeMap,
    fs,
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
};

use cid::Cid;
use dfs_p2p::lease::{DeleteRecord, Lease};
use dfs_p2p::{
    Ticket,
    block::{self, BlockBuf, DAG_CBOR, RAW},
    crypto::{self, ConvergenceSecret, Domain, Key},
    dag::{ChildRef, FileMeta, Node, TreeBuilder},
    fuzzing::TARGETS,
    net::codec::{ErrorCode, Request, Response, encode_request, encode_response},
};
use libp2p::identity::{Keypair, ed25519};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, by name; none if it does not exist.
fn inputs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = fs::read_dir(dir) else { return BTreeMap::new() };
    entries
        .map(|entry| {
            let path = entry.unwrap().path();
            (path.file_name().unwrap().to_string_lossy().into_owned(), fs::read(&path).unwrap())
        })
        .collect()
}

#[test]
fn seeds_and_regressions_pass_the_fuzz_checks() {
    let mut failed = Vec::new();
    for (target, check) in TARGETS {
        let seeds = inputs(&fuzz_dir().join("seeds").join(target));
        assert!(seeds.len() >= 3, "{target}: only {} seeds", seeds.len());
        let regressions = inputs(&fuzz_dir().join("regressions").join(target));
        for (kind, files) in [("seeds", seeds), ("regressions", regressions)] {
            for (name, bytes) in files {
                if panic::catch_unwind(AssertUnwindSafe(|| check(&bytes))).is_err() {
                    failed.push(format!("fuzz/{kind}/{target}/{name}"));
                }
            }
        }
    }
    assert!(failed.is_empty(), "inputs failing their fuzz check: {failed:#?}");
}

#[test]
fn seeds_are_current() {
    for (target, name, bytes) in seeds() {
        let path = fuzz_dir().join("seeds").join(target).join(&name);
        let committed = fs::read(&path).unwrap_or_default();
        assert!(committed == bytes, "{} differs from its generator", path.display());
    }
}

/// Writes the seed corpus: `cargo test --test fuzz_regressions -- --ignored write_seeds`.
#[test]
#[ignore = "writes fuzz/seeds"]
fn write_seeds() {
    for (target, name, bytes) in seeds() {
        let dir = fuzz_dir().join("seeds").join(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), bytes).unwrap();
    }
}

/// The convergence secret of the data format's golden vectors: 00 01 … 1f.
fn golden_secret() -> ConvergenceSecret {
    ConvergenceSecret::from_bytes(std::array::from_fn(|i| i as u8))
}

/// A file imported as the importer does it: each chunk sealed into a leaf
/// under its convergent key, the tree built over the leaves.
struct File {
    leaves: Vec<(Cid, Vec<u8>)>,
    /// Structure nodes: CID, key, bytes; the root last.
    nodes: Vec<(Cid, Key, Vec<u8>)>,
    ticket: Ticket,
}

fn import(chunks: &[&[u8]], name: Option<&str>, max_links: usize) -> File {
    let secret = golden_secret();
    let mut builder = TreeBuilder::new(secret.clone(), max_links);
    let mut leaves = Vec::new();
    let mut nodes = Vec::new();
    let mut emit = |cid: Cid, bytes: Vec<u8>| -> Result<(), ()> {
        nodes.push((cid, bytes));
        Ok(())
    };
    for chunk in chunks {
        let key = secret.derive_key(Domain::Leaf, chunk);
        let mut leaf = chunk.to_vec();
        crypto::seal(&key, Domain::Leaf, &mut leaf);
        let cid = block::cid_of(RAW, &leaf);
        builder.push(ChildRef { cid, key, size: chunk.len() as u64 }, &mut emit).unwrap();
        leaves.push((cid, leaf));
    }
    let size = chunks.iter().map(|c| c.len() as u64).sum();
    let meta = FileMeta { size, chunk_size: 1 << 20, name: name.map(str::to_string) };
    let (root, root_key) = builder.finish(&meta, &mut emit).unwrap();
    // Each node's key, from its parent's sealed part (the root's from the
    // ticket).
    let mut keys = BTreeMap::from([(root, root_key)]);
    for (cid, bytes) in nodes.iter().rev() {
        let opened = Node::decode(cid, bytes).unwrap().open(cid, &keys[cid]).unwrap();
        keys.extend(opened.children.iter().map(|c| (c.cid, c.key)));
    }
    let nodes = nodes.into_iter().map(|(cid, bytes)| (cid, keys[&cid], bytes)).collect();
    File { leaves, nodes, ticket: Ticket::new(root, root_key) }
}

/// The sealed_part target's input for a node: its number of links, then
/// the plaintext of its sealed part.
fn sealed_part_input(cid: &Cid, key: &Key, bytes: &[u8]) -> Vec<u8> {
    let node = Node::decode(cid, bytes).unwrap();
    let mut plain = node.sealed.clone();
    assert!(crypto::open(key, Domain::Node, &mut plain));
    let mut input = vec![u8::try_from(node.links.len()).unwrap()];
    input.extend_from_slice(&plain);
    input
}

/// A lease for 3 copies of `root`, signed by a fixed key at a fixed time.
fn lease(root: Cid) -> Vec<u8> {
    let mut secret = [1u8; 32];
    let secret = ed25519::SecretKey::try_from_bytes(&mut secret).unwrap();
    let owner = Keypair::from(ed25519::Keypair::from(secret));
    Lease::issue_at(&owner, root, 3, 1_767_225_600, 1_769_817_600).unwrap().encode()
}

/// The seed corpus: (target, file name, bytes).
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let empty = import(&[], None, 8192);
    let hello = import(&[b"hello world"], Some("hello.txt"), 8192);
    // Five chunks under nodes of two links: a root, inner nodes, leaves.
    let tree = import(&[b"one", b"two", b"three", b"four", b"five"], Some("tree"), 2);
    let (leaf, leaf_bytes) = hello.leaves[0].clone();
    let root = hello.ticket.root;
    let mut seeds = Vec::new();
    let mut add =
        |target, name: &str, bytes: Vec<u8>| seeds.push((target, name.to_string(), bytes));

    for (name, request) in [
        ("get_block", Request::GetBlock { cid: leaf }),
        ("have_0", Request::Have { cids: vec![] }),
        ("have_3", Request::Have { cids: vec![leaf, root, tree.ticket.root] }),
        ("replicate", Request::Replicate { root, blocks: 2, bytes: 150, lease: lease(root) }),
        ("delete", Request::Delete { root }),
        ("holds", Request::Holds { root }),
    ] {
        add("request_frame", name, encode_request(&request));
    }
    // A GetBlock naming a dag-pb CID (codec 0x70), which is malformed.
    let mut dag_pb = encode_request(&Request::GetBlock { cid: leaf });
    dag_pb[7] = 0x70;
    add("request_frame", "get_block_dag_pb", dag_pb);

    let reason = "CID codec 0x70 is neither raw nor dag-cbor";
    for (name, response) in [
        ("block", Response::Block { data: BlockBuf::copy_from(&leaf_bytes) }),
        ("block_empty", Response::Block { data: BlockBuf::copy_from(&[]) }),
        ("not_found", Response::NotFound),
        ("have_0", Response::Have { present: vec![] }),
        ("have_11", Response::Have { present: (0..11).map(|i| i % 3 == 0).collect() }),
        ("replicated", Response::Replicated { blocks: 9 }),
        ("deleted", Response::Deleted),
        ("holding", Response::Holding { pinned: true, replicas: 3, repaired: 1_767_312_000 }),
        ("error_busy", Response::error(ErrorCode::Busy, "too many requests in progress")),
        ("error_bad_request", Response::error(ErrorCode::BadRequest, reason)),
        ("error_unknown_code", Response::error(ErrorCode::Unknown(0x8001), "")),
    ] {
        add("response_frame", name, encode_response(&response));
    }

    let inner = &tree.nodes[0];
    let last = tree.nodes.last().unwrap();
    for (name, (cid, key, bytes)) in [
        ("empty_root", &empty.nodes[0]),
        ("hello_root", &hello.nodes[0]),
        ("tree_inner", inner),
        ("tree_root", last),
    ] {
        add("structure_node", name, bytes.clone());
        add("sealed_part", name, sealed_part_input(cid, key, bytes));
    }

    let ticket = tree.ticket.to_string();
    add("ticket", "empty", empty.ticket.to_string().into_bytes());
    add("ticket", "hello", hello.ticket.to_string().into_bytes());
    add("ticket", "uppercase_body", format!("dfs{}", ticket[3..].to_uppercase()).into_bytes());
    add("ticket", "spaces", format!(" \t{ticket}\n").into_bytes());
    add("ticket", "root_cid", tree.ticket.root.to_string().into_bytes());
    add("ticket", "leaf_cid", leaf.to_string().into_bytes());
    add("ticket", "cid_v0", b"QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG".to_vec());
    let owner = {
        let mut secret = [1u8; 32];
        let secret = ed25519::SecretKey::try_from_bytes(&mut secret).unwrap();
        Keypair::from(ed25519::Keypair::from(secret))
    };
    let lease = Lease::issue_at(&owner, root, 3, 1_767_225_600, 1_769_817_600).unwrap();
    add("signed_record", "lease", lease.encode());
    let record = DeleteRecord::issue_at(&owner, root, 1_767_312_000, 1_769_904_000).unwrap();
    add("signed_record", "delete", record.encode());
    let mut tampered = lease.encode();
    tampered[37] = 9;
    add("signed_record", "lease_tampered", tampered);
    assert_eq!(hello.ticket.root.codec(), DAG_CBOR);
    seeds
}
