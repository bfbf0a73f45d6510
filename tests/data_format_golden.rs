//! Golden vectors and rule checks for the data format.
//!
//! `protocols/data-format.md` is the source of the expected values: the
//! test reads the golden blocks (the ```` ```hex <label> ```` dumps), keys,
//! CIDs and tickets of its section 9 and the constants table of its section
//! 10 out of the markdown, and fails if the code disagrees with any of them.
//! The golden values are checked twice: once against the real import
//! pipeline, and once against an independent rebuild that follows only the
//! spec's rules (keyed BLAKE3, the RustCrypto AES-GCM, SHA-256, CBOR written
//! and parsed by hand), so that the spec alone is enough to make them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use aes_gcm::{
    Aes256Gcm, KeyInit,
    aead::{Aead, Nonce, Payload},
};
use cid::Cid;
use data_encoding::{BASE32_NOPAD, HEXLOWER};
use dfs_p2p::{
    Ticket, block, crypto,
    dag::{self, Node},
    import::{self, ImportOptions},
    lease::DeleteRecord,
    net::behaviour,
    store::{Store, StoreOptions},
    ticket,
};
use libp2p::identity::{Keypair, ed25519};
use sha2::{Digest, Sha256};

const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/protocols/data-format.md");

/// The convergence secret of the golden vectors: the bytes 00 01 02 … 1f.
const SECRET: [u8; 32] = {
    let mut secret = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        secret[i] = i as u8;
        i += 1;
    }
    secret
};

/// The golden files: label, content, name. Imported with the defaults.
const FILES: [(&str, &[u8], Option<&str>); 2] =
    [("empty", b"", None), ("hello", b"hello world", Some("hello.txt"))];

// The spec's literals, written out here rather than taken from the code.
const LEAF_AAD: &[u8] = b"dfs-p2p/v1/leaf";
const NODE_AAD: &[u8] = b"dfs-p2p/v1/node";
const RAW: u8 = 0x55;
const DAG_CBOR: u8 = 0x71;
const ONE_MIB: usize = 1 << 20;
const MAX_LEAF: usize = 2 * ONE_MIB - 16;

// ---- Reading the spec ----

fn spec() -> String {
    fs::read_to_string(SPEC).expect("read protocols/data-format.md")
}

/// The lines of the section whose heading starts with `heading`, up to the
/// next `## ` heading.
fn section<'a>(spec: &'a str, heading: &str) -> Vec<&'a str> {
    let mut lines = spec.lines().skip_while(|l| !l.starts_with(heading));
    let first = lines.next().unwrap_or_else(|| panic!("the spec has no section {heading:?}"));
    std::iter::once(first).chain(lines.take_while(|l| !l.starts_with("## "))).collect()
}

fn ticked(cell: &str) -> Option<&str> {
    cell.strip_prefix('`')?.strip_suffix('`').filter(|s| !s.contains('`'))
}

/// Table rows whose first two cells are each one `code span`: name → value.
fn table_values(lines: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in lines {
        let cells: Vec<&str> = line.trim().split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[0].is_empty() {
            continue;
        }
        if let (Some(name), Some(value)) = (ticked(cells[1]), ticked(cells[2])) {
            let old = out.insert(name.to_owned(), value.to_owned());
            assert!(old.is_none(), "{name} is in the spec twice");
        }
    }
    out
}

/// Every ```` ```hex <label> ```` block of the spec: label → its bytes.
fn hex_blocks(spec: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut lines = spec.lines();
    while let Some(line) = lines.next() {
        if let Some(info) = line.trim().strip_prefix("```hex") {
            let label = info.trim();
            assert!(!label.is_empty(), "a hex block of the spec has no label");
            let dump: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            let old = out.insert(label.to_owned(), hex(&dump.join("\n")));
            assert!(old.is_none(), "hex block {label} is in the spec twice");
        }
    }
    out
}

/// Bytes of an annotated hex dump: `#` starts a comment, whitespace is
/// ignored.
fn hex(dump: &str) -> Vec<u8> {
    dump.lines()
        .flat_map(|line| line.split('#').next().unwrap_or("").split_whitespace())
        .map(|byte| {
            assert_eq!(byte.len(), 2, "bad hex byte {byte:?}");
            u8::from_str_radix(byte, 16).expect("hex digit")
        })
        .collect()
}

/// The golden values of the spec's section 9.
struct Golden {
    hex: BTreeMap<String, Vec<u8>>,
    text: BTreeMap<String, String>,
}

impl Golden {
    fn from_spec() -> Golden {
        let spec = spec();
        Golden { hex: hex_blocks(&spec), text: table_values(&section(&spec, "## 9. ")) }
    }

    fn hex(&self, label: &str) -> &[u8] {
        self.hex.get(label).unwrap_or_else(|| panic!("the spec has no hex block {label}"))
    }

    fn text(&self, name: &str) -> &str {
        self.text.get(name).unwrap_or_else(|| panic!("the spec has no value {name}"))
    }

    fn key(&self, name: &str) -> [u8; 32] {
        HEXLOWER.decode(self.text(name).as_bytes()).expect("hex").try_into().expect("32 bytes")
    }
}

/// Compares what the spec says with what was produced, both ways, and
/// names every difference (with the produced value, ready to paste).
fn assert_same(
    what: &str,
    spec: &BTreeMap<String, Vec<u8>>,
    made: &BTreeMap<String, Vec<u8>>,
    show: impl Fn(&[u8]) -> String,
) {
    let mut wrong = Vec::new();
    for name in spec.keys().chain(made.keys()).collect::<BTreeSet<_>>() {
        match (spec.get(name), made.get(name)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(_), Some(b)) => wrong.push(format!("{name} differs; produced:\n{}", show(b))),
            (None, Some(b)) => wrong.push(format!("{name} is missing; produced:\n{}", show(b))),
            (Some(_), None) => wrong.push(format!("{name} is in the spec but not produced")),
            (None, None) => unreachable!(),
        }
    }
    assert!(wrong.is_empty(), "{what}:\n{}", wrong.join("\n"));
}

fn dump(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|line| line.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---- The spec's rules, implemented independently of the crate ----

/// A block key: keyed BLAKE3 under the secret of `aad || plaintext`.
fn derive_key(aad: &[u8], plaintext: &[u8]) -> [u8; 32] {
    let mut input = aad.to_vec();
    input.extend_from_slice(plaintext);
    *blake3::keyed_hash(&SECRET, &input).as_bytes()
}

fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    Aes256Gcm::new(&(*key).into())
        .encrypt(&Nonce::<Aes256Gcm>::default(), Payload { msg: plaintext, aad })
        .expect("seal")
}

fn unseal(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    Aes256Gcm::new(&(*key).into())
        .decrypt(&Nonce::<Aes256Gcm>::default(), Payload { msg: sealed, aad })
        .ok()
}

/// The 36-byte binary CID of `block` under `codec`.
fn cid_bytes(codec: u8, block: &[u8]) -> [u8; 36] {
    let mut cid = [0u8; 36];
    cid[..4].copy_from_slice(&[0x01, codec, 0x12, 0x20]);
    cid[4..].copy_from_slice(&Sha256::digest(block));
    cid
}

/// The text form of a binary CID: `b` + lowercase base32, no padding.
fn cid_text(cid: &[u8]) -> String {
    format!("b{}", BASE32_NOPAD.encode(cid).to_ascii_lowercase())
}

/// File metadata of a root: size, chunk size, name (empty for none).
type Meta = (u64, u32, String);

/// The plaintext of a sealed part, by the spec's layout table.
fn sealed_plaintext(meta: Option<&Meta>, children: &[([u8; 32], u64)]) -> Vec<u8> {
    let mut out = vec![1, u8::from(meta.is_some())];
    if let Some((size, chunk_size, name)) = meta {
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&chunk_size.to_be_bytes());
        out.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    out.extend_from_slice(&u32::try_from(children.len()).unwrap().to_be_bytes());
    for (key, size) in children {
        out.extend_from_slice(key);
        out.extend_from_slice(&size.to_be_bytes());
    }
    out
}

/// A CBOR head (major type and argument) in its shortest form.
fn cbor_head(major: u8, n: u64) -> Vec<u8> {
    let major = major << 5;
    match n {
        0..=23 => vec![major | n as u8],
        24..=0xff => vec![major | 24, n as u8],
        0x100..=0xffff => [&[major | 25][..], &(n as u16).to_be_bytes()].concat(),
        0x1_0000..=0xffff_ffff => [&[major | 26][..], &(n as u32).to_be_bytes()].concat(),
        _ => [&[major | 27][..], &n.to_be_bytes()].concat(),
    }
}

/// A structure block, by the spec's one accepted encoding.
fn node_block(links: &[[u8; 36]], sealed: &[u8]) -> Vec<u8> {
    let mut out = vec![0xa3, 0x61, b'v', 0x01, 0x65];
    out.extend_from_slice(b"links");
    out.extend(cbor_head(4, links.len() as u64));
    for cid in links {
        out.extend_from_slice(&[0xd8, 0x2a, 0x58, 0x25, 0x00]);
        out.extend_from_slice(cid);
    }
    out.push(0x66);
    out.extend_from_slice(b"sealed");
    out.extend(cbor_head(2, sealed.len() as u64));
    out.extend_from_slice(sealed);
    out
}

/// A strict reader of the one accepted encoding of a structure block:
/// returns its links and sealed part, or why the bytes are malformed.
fn parse_node(bytes: &[u8]) -> Result<(Vec<[u8; 36]>, Vec<u8>), String> {
    struct Reader<'a>(&'a [u8]);
    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            let (head, tail) = self.0.split_at_checked(n).ok_or("truncated")?;
            self.0 = tail;
            Ok(head)
        }
        fn expect(&mut self, want: &[u8], what: &str) -> Result<(), String> {
            if self.take(want.len())? == want { Ok(()) } else { Err(format!("expected {what}")) }
        }
        /// A head of major type `major`, in its shortest form.
        fn head(&mut self, major: u8) -> Result<u64, String> {
            let first = self.take(1)?[0];
            if first >> 5 != major {
                return Err(format!("expected major type {major}"));
            }
            let (n, min) = match first & 0x1f {
                info @ 0..=23 => return Ok(u64::from(info)),
                24 => (u64::from(self.take(1)?[0]), 24),
                25 => (u64::from(u16::from_be_bytes(self.take(2)?.try_into().unwrap())), 0x100),
                26 => (u64::from(u32::from_be_bytes(self.take(4)?.try_into().unwrap())), 0x1_0000),
                27 => (u64::from_be_bytes(self.take(8)?.try_into().unwrap()), 0x1_0000_0000),
                _ => return Err("indefinite or reserved length".into()),
            };
            if n < min { Err("length not in its shortest form".into()) } else { Ok(n) }
        }
    }
    let mut r = Reader(bytes);
    r.expect(&[0xa3], "a map of 3 entries")?;
    r.expect(b"\x61v", "key \"v\"")?;
    r.expect(&[0x01], "v = 1")?;
    r.expect(b"\x65links", "key \"links\"")?;
    let count = r.head(4)?;
    if count > 16_384 {
        return Err("more than 16384 links".into());
    }
    let mut links = Vec::new();
    for _ in 0..count {
        r.expect(&[0xd8, 0x2a], "tag 42")?;
        r.expect(&[0x58, 0x25], "a 37-byte byte string")?;
        r.expect(&[0x00], "the identity multibase prefix")?;
        let cid: [u8; 36] = r.take(36)?.try_into().unwrap();
        if cid[0] != 1 || ![RAW, DAG_CBOR].contains(&cid[1]) || cid[2..4] != [0x12, 0x20] {
            return Err("unsupported CID".into());
        }
        links.push(cid);
    }
    r.expect(b"\x66sealed", "key \"sealed\"")?;
    let len = r.head(2)?;
    let sealed = r.take(usize::try_from(len).map_err(|_| "huge")?)?.to_vec();
    if !r.0.is_empty() {
        return Err("bytes after the map".into());
    }
    Ok((links, sealed))
}

/// A sealed part's plaintext, parsed by the spec's layout table.
struct Sealed {
    meta: Option<Meta>,
    children: Vec<([u8; 32], u64)>,
}

fn parse_sealed(plain: &[u8]) -> Sealed {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> &'a [u8] {
        let (head, tail) = bytes.split_at(n);
        *bytes = tail;
        head
    }
    let mut b = plain;
    assert_eq!(take(&mut b, 1), [1], "version");
    let flags = take(&mut b, 1)[0];
    assert!(flags <= 1, "flags {flags:#04x}");
    let meta = (flags == 1).then(|| {
        let size = u64::from_be_bytes(take(&mut b, 8).try_into().unwrap());
        let chunk_size = u32::from_be_bytes(take(&mut b, 4).try_into().unwrap());
        let name_len = u16::from_be_bytes(take(&mut b, 2).try_into().unwrap());
        assert!(name_len <= 255, "name length {name_len}");
        let name = String::from_utf8(take(&mut b, name_len.into()).to_vec()).expect("UTF-8");
        (size, chunk_size, name)
    });
    let count = u32::from_be_bytes(take(&mut b, 4).try_into().unwrap()) as usize;
    assert_eq!(b.len(), count * 40, "the rest is count × (key, size), exactly");
    let children = b
        .chunks_exact(40)
        .map(|c| (c[..32].try_into().unwrap(), u64::from_be_bytes(c[32..].try_into().unwrap())))
        .collect();
    Sealed { meta, children }
}

/// A ticket, decoded by the spec's layout: the root key and the root CID.
fn parse_ticket(text: &str) -> ([u8; 32], [u8; 36]) {
    let body = text.strip_prefix("dfs").expect("prefix dfs");
    let bytes = BASE32_NOPAD.decode(body.to_ascii_uppercase().as_bytes()).expect("base32");
    assert_eq!(bytes.len(), 69, "version, key, CID");
    assert_eq!(bytes[0], 1, "ticket version");
    let cid: [u8; 36] = bytes[33..].try_into().unwrap();
    assert_eq!(cid[..4], [0x01, DAG_CBOR, 0x12, 0x20], "a dag-cbor root");
    (bytes[1..33].try_into().unwrap(), cid)
}

/// Leaf sizes of a chunk of `c` bytes, by the spec's formula.
fn spec_leaf_sizes(c: usize) -> Vec<usize> {
    if c == 0 {
        return Vec::new();
    }
    let n = c.div_ceil(MAX_LEAF);
    let s = c.div_ceil(n);
    let mut sizes = vec![s; n - 1];
    sizes.push(c - (n - 1) * s);
    sizes
}

/// Children counts of the nodes of each level, root first, of a tree over
/// `leaves` leaves with at most `max_links` links a node, by the spec's rule.
fn spec_shape(leaves: usize, max_links: usize) -> Vec<Vec<usize>> {
    let mut levels = Vec::new();
    let mut n = leaves;
    while n > max_links {
        let groups: Vec<usize> =
            (0..n).step_by(max_links).map(|start| max_links.min(n - start)).collect();
        n = groups.len();
        levels.push(groups);
    }
    levels.push(vec![n]);
    levels.reverse();
    levels
}

// ---- Running the real code ----

/// A store in `dir` whose convergence secret is [`SECRET`].
fn open_store(dir: &Path) -> Store {
    let data = dir.join("data");
    fs::DirBuilder::new().mode(0o700).create(&data).expect("create the data dir");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(data.join("convergence.secret"))
        .expect("create the secret");
    file.write_all(&SECRET).expect("write the secret");
    drop(file);
    Store::open(&data, StoreOptions::default()).expect("open the store")
}

fn put(store: &Store, data: &[u8], options: &ImportOptions) -> Ticket {
    import::import(store, data, options, None).expect("import").ticket
}

/// Deterministic bytes (xorshift64*).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What a walk of a file's DAG found.
#[derive(Default)]
struct Walked {
    /// Children counts of the structure nodes of each level, root first.
    levels: Vec<Vec<usize>>,
    /// Levels at which leaves hang (1 = under the root).
    leaf_depths: BTreeSet<usize>,
    /// Leaf CIDs, their plaintext lengths and their plaintexts, in order.
    leaves: Vec<(Cid, u64, Vec<u8>)>,
}

impl Walked {
    /// The file: the leaves' plaintexts in order.
    fn plaintext(&self) -> Vec<u8> {
        self.leaves.iter().flat_map(|leaf| leaf.2.iter().copied()).collect()
    }
}

/// Walks the DAG under a ticket with the crate's decoder, checking the
/// spec's consistency rules (section 6) on the way; each leaf is opened
/// with the independent AES-GCM.
fn walk(store: &Store, ticket: &Ticket) -> Walked {
    fn visit(store: &Store, cid: &Cid, key: &[u8; 32], depth: usize, out: &mut Walked) -> u64 {
        let bytes = store.get(cid).expect("a verified block");
        let opened = Node::decode(cid, &bytes).expect("decode").open(cid, key).expect("open");
        assert_eq!(opened.meta.is_some(), depth == 0, "only the root has metadata");
        if out.levels.len() == depth {
            out.levels.push(Vec::new());
        }
        out.levels[depth].push(opened.children.len());
        for child in &opened.children {
            let size = if child.cid.codec() == block::RAW {
                let leaf = store.get(&child.cid).expect("a verified leaf");
                assert!(leaf.len() <= block::MAX_BLOCK_SIZE);
                let plain = unseal(&child.key, LEAF_AAD, &leaf).expect("leaf opens");
                assert_eq!(child.key, derive_key(LEAF_AAD, &plain), "convergent leaf key");
                out.leaf_depths.insert(depth + 1);
                out.leaves.push((child.cid, child.size, plain.clone()));
                plain.len() as u64
            } else {
                visit(store, &child.cid, &child.key, depth + 1, out)
            };
            assert_eq!(size, child.size, "plaintext under {} vs its parent's record", child.cid);
        }
        opened.children.iter().map(|c| c.size).sum()
    }
    let mut out = Walked::default();
    let bytes = store.get(&ticket.root).expect("the root");
    let meta = Node::decode(&ticket.root, &bytes)
        .and_then(|node| node.open(&ticket.root, &ticket.key))
        .expect("the root opens")
        .meta
        .expect("the root has metadata");
    let size = visit(store, &ticket.root, &ticket.key, 0, &mut out);
    assert_eq!(size, meta.size, "the root's children add up to the file size");
    out
}

// ---- Golden vectors ----

#[test]
fn spec_golden_values_are_what_the_code_produces() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    assert_eq!(store.secret().as_bytes(), &SECRET);
    let (mut hex, mut text) = (BTreeMap::new(), BTreeMap::new());
    text.insert("secret".to_owned(), HEXLOWER.encode(&SECRET).into_bytes());
    for (label, content, name) in FILES {
        let options = ImportOptions { name: name.map(str::to_owned), ..Default::default() };
        let ticket = put(&store, content, &options);
        let root = store.get(&ticket.root).expect("the root");
        let node = Node::decode(&ticket.root, &root).expect("decode the root");
        let opened = node.open(&ticket.root, &ticket.key).expect("open the root");
        let mut plain = node.sealed.clone();
        assert!(crypto::open(&ticket.key, crypto::Domain::Node, &mut plain));
        let ticket_text = ticket.to_string();
        let body = ticket_text.strip_prefix(ticket::TICKET_PREFIX).expect("prefix");
        let ticket_bytes = BASE32_NOPAD.decode(body.to_ascii_uppercase().as_bytes()).unwrap();

        hex.insert(format!("{label}-root"), root.to_vec());
        hex.insert(format!("{label}-root-sealed"), plain);
        hex.insert(format!("{label}-ticket"), ticket_bytes);
        if label == "hello" {
            // The provider record key, as the node builds it.
            let key = behaviour::provider_key(&ticket.root);
            hex.insert(format!("{label}-provider-key"), key.to_vec());
        }
        text.insert(format!("{label}.root.cid"), ticket.root.to_string().into_bytes());
        text.insert(format!("{label}.root.key"), HEXLOWER.encode(&ticket.key).into_bytes());
        text.insert(format!("{label}.ticket"), ticket_text.into_bytes());
        assert!(opened.children.len() <= 1, "the golden files are one chunk at most");
        for leaf in &opened.children {
            let bytes = store.get(&leaf.cid).expect("the leaf");
            hex.insert(format!("{label}-leaf"), bytes.to_vec());
            text.insert(format!("{label}.leaf.cid"), leaf.cid.to_string().into_bytes());
            text.insert(format!("{label}.leaf.key"), HEXLOWER.encode(&leaf.key).into_bytes());
        }
    }
    // The delete record of section 9, and its DHT key, as a node makes them.
    let owner = delete_record_owner();
    let root = Cid::try_from(&cid_bytes(DAG_CBOR, &[0xa0])[..]).unwrap();
    let record = DeleteRecord::issue_at(&owner, root, DELETED_AT, KEEP_UNTIL).unwrap();
    hex.insert("delete-record".to_owned(), record.encode());
    let key = DeleteRecord::dht_key(&root, &owner.public().to_peer_id());
    hex.insert("delete-record-key".to_owned(), key);

    let golden = Golden::from_spec();
    assert_same("hex blocks of the spec vs the code", &golden.hex, &hex, dump);
    let spec_text = golden.text.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
    assert_same("golden values of the spec vs the code", &spec_text, &text, |v| {
        String::from_utf8_lossy(v).into_owned()
    });
}

#[test]
fn golden_values_follow_from_the_spec_rules_alone() {
    let golden = Golden::from_spec();
    assert_eq!(golden.text("secret"), HEXLOWER.encode(&SECRET));
    for (label, content, name) in FILES {
        let mut children = Vec::new();
        let mut links = Vec::new();
        if !content.is_empty() {
            // One chunk, one leaf: the content is below 1 MiB.
            let key = derive_key(LEAF_AAD, content);
            assert_eq!(key, golden.key(&format!("{label}.leaf.key")), "{label} leaf key");
            let leaf = seal(&key, LEAF_AAD, content);
            assert_eq!(leaf.len(), content.len() + 16, "the tag is appended");
            assert_eq!(leaf, golden.hex(&format!("{label}-leaf")), "{label} leaf block");
            let cid = cid_bytes(RAW, &leaf);
            assert_eq!(cid_text(&cid), golden.text(&format!("{label}.leaf.cid")));
            children.push((key, content.len() as u64));
            links.push(cid);
        }
        let meta = (content.len() as u64, ONE_MIB as u32, name.unwrap_or("").to_owned());
        let plain = sealed_plaintext(Some(&meta), &children);
        assert_eq!(plain, golden.hex(&format!("{label}-root-sealed")), "{label} sealed part");
        let key = derive_key(NODE_AAD, &plain);
        assert_eq!(key, golden.key(&format!("{label}.root.key")), "{label} root key");
        let root = node_block(&links, &seal(&key, NODE_AAD, &plain));
        assert_eq!(root, golden.hex(&format!("{label}-root")), "{label} root block");
        let cid = cid_bytes(DAG_CBOR, &root);
        assert_eq!(cid_text(&cid), golden.text(&format!("{label}.root.cid")));
        let ticket = [&[1][..], &key, &cid].concat();
        assert_eq!(ticket, golden.hex(&format!("{label}-ticket")), "{label} ticket bytes");
        let text = format!("dfs{}", BASE32_NOPAD.encode(&ticket).to_ascii_lowercase());
        assert_eq!(text, golden.text(&format!("{label}.ticket")), "{label} ticket");
        if let Some(provider_key) = golden.hex.get(&format!("{label}-provider-key")) {
            assert_eq!(provider_key, &cid, "the provider key is the root's binary CID");
        }
    }
}

/// The owner of the delete record of section 9: the Ed25519 key whose
/// secret is 32 bytes of 01.
fn delete_record_owner() -> Keypair {
    let mut secret = [1u8; 32];
    let secret = ed25519::SecretKey::try_from_bytes(&mut secret).unwrap();
    Keypair::from(ed25519::Keypair::from(secret))
}

/// The delete record's times: 2026-01-01 00:00 UTC, and 30 days later.
const DELETED_AT: u64 = 1_767_225_600;
const KEEP_UNTIL: u64 = 1_769_817_600;

/// The delete record of section 9 and its key, by the layout of section 8
/// alone: the fields, the key written out byte by byte, and the signature
/// checked with the owner's public key.
#[test]
fn the_delete_record_follows_from_the_spec_rules_alone() {
    let golden = Golden::from_spec();
    let record = golden.hex("delete-record");
    let key = golden.hex("delete-record-key");
    let root = cid_bytes(DAG_CBOR, &[0xa0]);
    let public = delete_record_owner().public().try_into_ed25519().unwrap().to_bytes();

    assert_eq!(record.len(), 149);
    assert_eq!(record[0], 0x02, "kind");
    assert_eq!(record[1..37], root, "root");
    assert_eq!(record[37..45], DELETED_AT.to_be_bytes(), "deleted");
    assert_eq!(record[45..53], KEEP_UNTIL.to_be_bytes(), "keep_until");
    assert_eq!(record[53..85], public, "the owner's key");
    let signed = [&b"dfs-p2p delete v1"[..], &record[..85]].concat();
    let verifier = ed25519::PublicKey::try_from_bytes(&public).unwrap();
    assert!(verifier.verify(&signed, &record[85..]), "the signature");
    assert!(!verifier.verify(&record[..85], &record[85..]), "the context string is signed");

    // The key: the prefix, the root, the owner's peer id (an identity
    // multihash of the protobuf public key).
    let peer_id = [&[0x00, 0x24, 0x08, 0x01, 0x12, 0x20][..], &public].concat();
    assert_eq!(key, [&b"/dfs-p2p/delete/"[..], &root, &peer_id].concat());
}

/// A reader that knows only the spec reads the golden files from their
/// tickets and the blocks of section 9, checking every rule on the way.
#[test]
fn a_reader_of_the_spec_reads_the_golden_files() {
    let golden = Golden::from_spec();
    let mut blocks = BTreeMap::new();
    for (label, bytes) in &golden.hex {
        if label.ends_with("-leaf") {
            blocks.insert(cid_bytes(RAW, bytes), bytes.clone());
        } else if label.ends_with("-root") {
            blocks.insert(cid_bytes(DAG_CBOR, bytes), bytes.clone());
        }
    }
    for (label, content, name) in FILES {
        let (key, root) = parse_ticket(golden.text(&format!("{label}.ticket")));
        assert_eq!(cid_text(&root), golden.text(&format!("{label}.root.cid")));
        let (links, sealed) = parse_node(&blocks[&root]).expect("a well-formed root");
        let plain = unseal(&key, NODE_AAD, &sealed).expect("the root key opens the root");
        assert!(unseal(&key, LEAF_AAD, &sealed).is_none(), "domains are separate");
        let part = parse_sealed(&plain);
        let (size, chunk_size, file_name) = part.meta.expect("the root has metadata");
        assert_eq!((chunk_size, file_name.as_str()), (ONE_MIB as u32, name.unwrap_or("")));
        assert_eq!(part.children.len(), links.len(), "one key and size per link");
        assert_eq!(part.children.iter().map(|c| c.1).sum::<u64>(), size);
        let mut file = Vec::new();
        for (link, (leaf_key, leaf_size)) in links.iter().zip(&part.children) {
            assert_eq!(link[1], RAW, "the golden files have leaves under the root");
            let leaf = &blocks[link];
            assert_eq!(cid_bytes(RAW, leaf), *link, "the block is the one its CID names");
            let chunk = unseal(leaf_key, LEAF_AAD, leaf).expect("the leaf opens");
            assert_eq!(chunk.len() as u64, *leaf_size);
            file.extend(chunk);
        }
        assert_eq!(file, content);
    }
}

// ---- Constants ----

#[test]
fn spec_constants_are_the_codes() {
    let text = |s: &str| format!("{s:?}");
    let code: BTreeMap<&str, String> = [
        ("block::MAX_BLOCK_SIZE", block::MAX_BLOCK_SIZE.to_string()),
        ("block::RAW", format!("{:#04x}", block::RAW)),
        ("block::DAG_CBOR", format!("{:#04x}", block::DAG_CBOR)),
        ("block::SHA2_256", format!("{:#04x}", block::SHA2_256)),
        ("crypto::KEY_LEN", crypto::KEY_LEN.to_string()),
        ("crypto::TAG_LEN", crypto::TAG_LEN.to_string()),
        ("crypto::LEAF_AAD", text(std::str::from_utf8(crypto::LEAF_AAD).unwrap())),
        ("crypto::NODE_AAD", text(std::str::from_utf8(crypto::NODE_AAD).unwrap())),
        ("crypto::NONCE", HEXLOWER.encode(&crypto::NONCE)),
        ("dag::NODE_VERSION", dag::NODE_VERSION.to_string()),
        ("dag::DEFAULT_MAX_LINKS", dag::DEFAULT_MAX_LINKS.to_string()),
        ("dag::MAX_LINKS_LIMIT", dag::MAX_LINKS_LIMIT.to_string()),
        ("dag::MAX_NAME_LEN", dag::MAX_NAME_LEN.to_string()),
        ("dag::MAX_DEPTH", dag::MAX_DEPTH.to_string()),
        ("import::DEFAULT_CHUNK_SIZE", import::DEFAULT_CHUNK_SIZE.to_string()),
        ("import::MIN_CHUNK_SIZE", import::MIN_CHUNK_SIZE.to_string()),
        ("import::MAX_CHUNK_SIZE", import::MAX_CHUNK_SIZE.to_string()),
        ("import::MAX_LEAF_PLAINTEXT", import::MAX_LEAF_PLAINTEXT.to_string()),
        ("ticket::TICKET_PREFIX", text(ticket::TICKET_PREFIX)),
        ("ticket::TICKET_VERSION", ticket::TICKET_VERSION.to_string()),
        ("ticket::MAX_TICKET_BODY", ticket::MAX_TICKET_BODY.to_string()),
        ("net::behaviour::KAD_PROTOCOL", text(behaviour::KAD_PROTOCOL.as_ref())),
        ("net::behaviour::IDENTIFY_PROTOCOL_VERSION", text(behaviour::IDENTIFY_PROTOCOL_VERSION)),
        ("net::behaviour::KAD_REPLICATION", behaviour::KAD_REPLICATION.to_string()),
    ]
    .into_iter()
    .collect();
    let spec = spec();
    let table = table_values(&section(&spec, "## 10. "));
    let spec: BTreeMap<&str, String> = table.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    assert_eq!(spec, code, "the spec's constants table vs the code");

    // The spec's literals above are the code's.
    assert_eq!((crypto::LEAF_AAD, crypto::NODE_AAD), (LEAF_AAD, NODE_AAD));
    assert_eq!((block::RAW, block::DAG_CBOR), (u64::from(RAW), u64::from(DAG_CBOR)));
    assert_eq!(import::MAX_LEAF_PLAINTEXT, MAX_LEAF);
    assert_eq!(import::MAX_LEAF_PLAINTEXT, block::MAX_BLOCK_SIZE - crypto::TAG_LEN);
    // The deepest tree a writer can make: 2^64 bytes in 64 KiB chunks are
    // 2^48 leaves, under 48 levels of nodes of 2 links.
    for k in 1..=16 {
        assert_eq!(spec_shape(1 << k, 2).len(), k, "2^{k} leaves under nodes of 2 links");
    }
    assert_eq!(64 - import::MIN_CHUNK_SIZE.trailing_zeros(), 48);
    const { assert!(48 <= dag::MAX_DEPTH) };
}

// ---- Leaves, tree and nodes ----

#[test]
fn chunks_above_the_leaf_limit_are_cut_by_the_spec_formula() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let cases = [
        (4 * ONE_MIB, 4 * ONE_MIB + 5),
        (3 * ONE_MIB, 3 * ONE_MIB),
        (2 * ONE_MIB, 2 * ONE_MIB + 1),
        (MAX_LEAF, MAX_LEAF + 1),
    ];
    for (seed, (chunk_size, len)) in cases.into_iter().enumerate() {
        let data = pseudo_random(len, seed as u64);
        let ticket = put(&store, &data, &ImportOptions { chunk_size, ..Default::default() });
        let walked = walk(&store, &ticket);
        let sizes: Vec<usize> = walked.leaves.iter().map(|l| l.2.len()).collect();
        let expected: Vec<usize> =
            data.chunks(chunk_size).flat_map(|c| spec_leaf_sizes(c.len())).collect();
        assert_eq!(sizes, expected, "leaves of {len} bytes in chunks of {chunk_size}");
        assert_eq!(walked.plaintext(), data);
    }
    // The spec's table of examples.
    assert_eq!(spec_leaf_sizes(MAX_LEAF), [MAX_LEAF]);
    assert_eq!(spec_leaf_sizes(2 * ONE_MIB), [ONE_MIB, ONE_MIB]);
    assert_eq!(spec_leaf_sizes(3 * ONE_MIB), [1_572_864, 1_572_864]);
    assert_eq!(spec_leaf_sizes(4 * ONE_MIB), [1_398_102, 1_398_102, 1_398_100]);
}

#[test]
fn the_tree_has_the_spec_shape() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let chunk = import::MIN_CHUNK_SIZE;
    let mut cases: Vec<(usize, usize)> = (0..=9).map(|leaves| (2, leaves)).collect();
    cases.extend([(3, 3), (3, 4), (3, 10), (4, 17), (5, 26)]);
    for (seed, (max_links, leaves)) in cases.into_iter().enumerate() {
        // The last chunk is short, so that the file is not a multiple of it.
        let len = (leaves * chunk).saturating_sub(7);
        let data = pseudo_random(len, 100 + seed as u64);
        let options = ImportOptions { chunk_size: chunk, max_links, ..Default::default() };
        let ticket = put(&store, &data, &options);
        let walked = walk(&store, &ticket);
        let shape = spec_shape(leaves, max_links);
        assert_eq!(walked.levels, shape, "{leaves} leaves, at most {max_links} links");
        let depth = shape.len();
        let expected: BTreeSet<usize> = (leaves > 0).then_some(depth).into_iter().collect();
        assert_eq!(walked.leaf_depths, expected, "every leaf under the last level");
        assert_eq!(walked.plaintext(), data);
    }
}

#[test]
fn identical_chunks_share_one_leaf() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let chunk = pseudo_random(import::MIN_CHUNK_SIZE, 7);
    let data = [&chunk[..], &chunk, &chunk, b"tail"].concat();
    let options = ImportOptions { chunk_size: import::MIN_CHUNK_SIZE, ..Default::default() };
    let ticket = put(&store, &data, &options);
    let root = store.get(&ticket.root).unwrap();
    let node = Node::decode(&ticket.root, &root).unwrap();
    assert_eq!(node.links.len(), 4);
    assert_eq!(node.links[0], node.links[1]);
    assert_eq!(node.links[1], node.links[2]);
    assert_ne!(node.links[2], node.links[3]);
    let distinct: BTreeSet<Cid> = node.links.iter().copied().collect();
    assert_eq!(distinct.len(), 2, "a walk of the blocks visits 3 distinct CIDs, root included");
}

#[test]
fn the_encoder_writes_the_one_accepted_encoding() {
    let cid = |i: usize| {
        let codec = if i.is_multiple_of(2) { block::RAW } else { block::DAG_CBOR };
        block::cid_of(codec, &i.to_be_bytes())
    };
    for links in [0, 1, 23, 24, 255, 256, dag::DEFAULT_MAX_LINKS, dag::MAX_LINKS_LIMIT] {
        for sealed_len in [0, 22, 23, 24, 255, 256, 65_535, 65_536] {
            let node =
                Node { links: (0..links).map(cid).collect(), sealed: pseudo_random(sealed_len, 9) };
            let bytes = node.encode();
            let (parsed, sealed) = parse_node(&bytes).expect("the one accepted encoding");
            let expected: Vec<[u8; 36]> =
                node.links.iter().map(|c| c.to_bytes().try_into().unwrap()).collect();
            assert_eq!((parsed, sealed), (expected.clone(), node.sealed.clone()));
            assert_eq!(bytes, node_block(&expected, &node.sealed));
            let cid = block::cid_of(block::DAG_CBOR, &bytes);
            assert_eq!(Node::decode(&cid, &bytes).unwrap(), node);
        }
    }
    // The sizes the spec gives: the largest node, and a full inner node of
    // the default number of links.
    let secret = crypto::ConvergenceSecret::from_bytes(SECRET);
    let children = |n: usize| -> Vec<dag::ChildRef> {
        (0..n).map(|i| dag::ChildRef { cid: cid(i), key: [7; 32], size: u64::MAX }).collect()
    };
    let name = Some("n".repeat(dag::MAX_NAME_LEN));
    let meta = dag::FileMeta { size: u64::MAX, chunk_size: u32::MAX, name };
    let (_, _, largest) = dag::build_node(&secret, &children(dag::MAX_LINKS_LIMIT), Some(&meta));
    assert_eq!(largest.len(), 1_327_420);
    let (_, _, full) = dag::build_node(&secret, &children(dag::DEFAULT_MAX_LINKS), None);
    assert_eq!(full.len(), 663_599);

    // The strict reader refuses what the spec calls malformed.
    let good = node_block(&[cid_bytes(RAW, b"x")], &[1, 2, 3]);
    let mut long_head = good.clone();
    long_head.splice(10..11, [0x98, 0x01]);
    let mut trailing = good.clone();
    trailing.push(0);
    // "links" before "v": the same entries, not in canonical order.
    let reordered = [&good[..1], &good[4..52], &good[1..4], &good[52..]].concat();
    for bad in [long_head, trailing, reordered] {
        assert!(parse_node(&bad).is_err(), "{}", dump(&bad));
    }
}

#[test]
fn tickets_parse_by_the_spec_rules() {
    let golden = Golden::from_spec();
    let text = golden.text("hello.ticket");
    let ticket: Ticket = text.parse().expect("the golden ticket");
    let (key, root) = parse_ticket(text);
    assert_eq!((ticket.key, ticket.root.to_bytes()), (key, root.to_vec()));
    assert_eq!(ticket.to_string(), text);

    let body = &text[3..];
    assert_eq!(text.len(), 3 + 111, "69 bytes are 111 base32 characters");
    let accepted = [
        format!(" \t{text}\n"),
        format!("dfs{}", body.to_ascii_uppercase()),
        format!("DFS{body}"),
        text.to_ascii_uppercase(),
    ];
    for ok in accepted {
        assert_eq!(ok.parse::<Ticket>().as_ref(), Ok(&ticket), "{ok:?}");
    }
    let encode = |bytes: &[u8]| format!("dfs{}", BASE32_NOPAD.encode(bytes).to_ascii_lowercase());
    let bytes = golden.hex("hello-ticket");
    let mut version_2 = bytes.to_vec();
    version_2[0] = 2;
    let mut raw_root = bytes.to_vec();
    raw_root[34] = RAW;
    // The last character carries 2 bits of the CID and 3 zero bits.
    let last = body.as_bytes()[110];
    let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
    let index = alphabet.iter().position(|&c| c == last).unwrap();
    let set_bit = format!("dfs{}{}", &body[..110], alphabet[index ^ 1] as char);
    let rejected = [
        format!("dfs{}", "a".repeat(257)),
        encode(&version_2),
        encode(&raw_root),
        encode(&bytes[..68]),
        set_bit,
        format!("dfs{body}="),
        format!("dfs {body}"),
    ];
    for bad in &rejected {
        assert!(bad.parse::<Ticket>().is_err(), "{bad:?} parsed");
    }
}
