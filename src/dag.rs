//! The file DAG. Owns the encoding of structure nodes and the shape of the
//! tree; it neither reads nor writes disks.
//!
//! A structure node is a `dag-cbor` block `{"v": 1, "links": [CID…],
//! "sealed": bytes}`: the child links are IPLD links in the clear, so a node
//! holding the file can walk, verify, pin and collect it without a key. The
//! sealed part (AES-256-GCM under a convergent key) holds, for each child,
//! its key and the number of plaintext bytes under it, and in the root the
//! file's metadata. A level with more than `max_links` children is split
//! into nodes of `max_links` each, bottom-up, so no block exceeds
//! [`MAX_BLOCK_SIZE`](crate::block::MAX_BLOCK_SIZE) whatever the file size.

use std::collections::HashSet;

use ciborium_ll::Header;
use cid::Cid;

use crate::{
    block::{self, DAG_CBOR},
    crypto::{self, ConvergenceSecret, Domain, KEY_LEN, Key},
    error::{DagLimit, Error, Result},
};

/// Format version of structure nodes and their sealed part. Must not change.
pub const NODE_VERSION: u64 = 1;
/// Default number of children per structure node: 8192 children make a node
/// of about 660 KiB, well below the block limit.
pub const DEFAULT_MAX_LINKS: usize = 8192;
/// Upper bound on `max_links` that keeps any node below the block limit
/// (about 81 bytes a child plus the root's metadata).
pub const MAX_LINKS_LIMIT: usize = 16384;
/// Longest file name kept in the metadata, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Most structure nodes on any path from a root to a block, the root
/// included. The deepest tree a writer can make holds 2^64 bytes in 64 KiB
/// chunks under nodes of 2 children: 48 levels. A reader refuses a deeper
/// DAG before it reads it, so no walk depends on a peer's honesty.
pub const MAX_DEPTH: usize = 64;

/// The CBOR tag of an IPLD link in dag-cbor. Must not change.
pub const DAG_CBOR_LINK_TAG: u64 = 42;
/// Encoded bytes of one link: the tag (2), the byte string header (2), the
/// identity multibase prefix (1) and the 36-byte CID.
const LINK_LEN: usize = 2 + 2 + 1 + block::CID_LEN;

/// A cursor over a node's bytes that reads one CBOR header at a time.
struct Cbor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cbor<'a> {
    fn header(&mut self) -> Option<Header> {
        let mut dec = ciborium_ll::Decoder::from(self.bytes.get(self.pos..)?);
        let header = dec.pull().ok()?;
        self.pos += dec.offset();
        Some(header)
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(len)?;
        let taken = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(taken)
    }

    /// Reads a text item that must be `key`.
    fn key(&mut self, key: &str) -> Option<()> {
        match self.header()? {
            Header::Text(Some(len)) if len == key.len() => {
                (self.take(len)? == key.as_bytes()).then_some(())
            }
            _ => None,
        }
    }
}

/// What the root records about the file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileMeta {
    /// Plaintext length of the file.
    pub size: u64,
    /// Chunk size the file was cut with.
    pub chunk_size: u32,
    /// The file's name, if it had one.
    pub name: Option<String>,
}

/// A child as the parent's sealed part records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildRef {
    pub cid: Cid,
    pub key: Key,
    /// Plaintext bytes under this child.
    pub size: u64,
}

/// The clear part of a structure node, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub links: Vec<Cid>,
    pub sealed: Vec<u8>,
}

impl Node {
    /// Encodes the node in its one canonical dag-cbor form (see
    /// `protocols/data-format.md`): a map of `v`, `links`, `sealed`, keys
    /// shortest first, every length in its shortest form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.links.len() * LINK_LEN + self.sealed.len());
        let mut enc = ciborium_ll::Encoder::from(&mut out);
        let write = |enc: &mut ciborium_ll::Encoder<&mut Vec<u8>>| -> std::io::Result<()> {
            enc.push(Header::Map(Some(3)))?;
            enc.text("v", None)?;
            enc.push(Header::Positive(NODE_VERSION))?;
            enc.text("links", None)?;
            enc.push(Header::Array(Some(self.links.len())))?;
            let mut link = [0u8; 1 + block::CID_LEN];
            for cid in &self.links {
                // The multibase identity prefix, then the binary CID.
                link[1..].copy_from_slice(&cid.to_bytes());
                enc.push(Header::Tag(DAG_CBOR_LINK_TAG))?;
                enc.bytes(&link, None)?;
            }
            enc.text("sealed", None)?;
            enc.bytes(&self.sealed, None)
        };
        write(&mut enc).expect("writing to a Vec cannot fail");
        out
    }

    /// Decodes a structure block; `cid` names it in errors. Schema first:
    /// each header is checked against the one layout a node may have before
    /// anything is allocated, so a block of junk costs no more memory than
    /// its own bytes; and only the canonical encoding is accepted.
    pub fn decode(cid: &Cid, bytes: &[u8]) -> Result<Node> {
        let bad = |reason: &str| Error::Malformed { cid: *cid, reason: reason.to_string() };
        if bytes.len() > block::MAX_BLOCK_SIZE {
            return Err(bad("larger than a block"));
        }
        let mut cbor = Cbor { bytes, pos: 0 };
        let expect = |cbor: &mut Cbor<'_>, want: Header, what: &str| match cbor.header() {
            Some(h) if h == want => Ok(()),
            _ => Err(bad(what)),
        };
        expect(&mut cbor, Header::Map(Some(3)), "not a map of three fields")?;
        cbor.key("v").ok_or_else(|| bad("missing field `v`"))?;
        expect(&mut cbor, Header::Positive(NODE_VERSION), "unsupported node version")?;
        cbor.key("links").ok_or_else(|| bad("missing field `links`"))?;
        let count = match cbor.header() {
            Some(Header::Array(Some(n))) => n,
            _ => return Err(bad("`links` is not an array")),
        };
        if count > MAX_LINKS_LIMIT {
            return Err(bad(&format!("{count} links (at most {MAX_LINKS_LIMIT})")));
        }
        if count.saturating_mul(LINK_LEN) > bytes.len() - cbor.pos {
            return Err(bad("`links` runs past the end"));
        }
        let mut links = Vec::with_capacity(count);
        for _ in 0..count {
            expect(&mut cbor, Header::Tag(DAG_CBOR_LINK_TAG), "a link is not a CID")?;
            expect(&mut cbor, Header::Bytes(Some(1 + block::CID_LEN)), "a link is not a CID")?;
            let link = cbor.take(1 + block::CID_LEN).ok_or_else(|| bad("truncated link"))?;
            if link[0] != 0 {
                return Err(bad("a link lacks the identity multibase prefix"));
            }
            links.push(block::cid_from_bytes(&link[1..]).map_err(|e| bad(&e.to_string()))?);
        }
        cbor.key("sealed").ok_or_else(|| bad("missing field `sealed`"))?;
        let sealed = match cbor.header() {
            Some(Header::Bytes(Some(len))) => cbor.take(len).ok_or_else(|| bad("truncated"))?,
            _ => return Err(bad("`sealed` is not a byte string")),
        };
        if cbor.pos != bytes.len() {
            return Err(bad("trailing bytes"));
        }
        let node = Node { links, sealed: sealed.to_vec() };
        // Shortest lengths and integers: exactly one encoding per node.
        if node.encode() != bytes {
            return Err(bad("not in canonical dag-cbor form"));
        }
        Ok(node)
    }

    /// Opens the sealed part with `key` and pairs it with the links.
    pub fn open(&self, cid: &Cid, key: &Key) -> Result<Opened> {
        let mut plain = self.sealed.clone();
        if !crypto::open(key, Domain::Node, &mut plain) {
            return Err(Error::Decrypt { cid: *cid });
        }
        let sealed = SealedPart::decode(&plain)
            .ok_or_else(|| Error::Malformed { cid: *cid, reason: "bad sealed part".into() })?;
        if sealed.children.len() != self.links.len() {
            return Err(Error::Malformed {
                cid: *cid,
                reason: "links and keys differ in number".into(),
            });
        }
        let children = self
            .links
            .iter()
            .zip(sealed.children)
            .map(|(cid, (key, size))| ChildRef { cid: *cid, key, size })
            .collect();
        Ok(Opened { children, meta: sealed.meta })
    }
}

/// A structure node opened with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub children: Vec<ChildRef>,
    /// Present in the root only.
    pub meta: Option<FileMeta>,
}

impl Opened {
    /// Plaintext bytes under this node.
    pub fn size(&self) -> Option<u64> {
        self.children.iter().try_fold(0u64, |acc, c| acc.checked_add(c.size))
    }
}

/// The plaintext of a sealed part:
/// `u8 version | u8 flags | [meta] | u32 count | count × (key[32] | u64 size)`,
/// where meta is `u64 size | u32 chunk_size | u16 name_len | name`, all
/// big-endian, and flags bit 0 says meta is present. Must not change.
struct SealedPart {
    children: Vec<(Key, u64)>,
    meta: Option<FileMeta>,
}

impl SealedPart {
    fn encode(children: &[ChildRef], meta: Option<&FileMeta>) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + MAX_NAME_LEN + children.len() * 40);
        out.push(NODE_VERSION as u8);
        out.push(u8::from(meta.is_some()));
        if let Some(meta) = meta {
            out.extend_from_slice(&meta.size.to_be_bytes());
            out.extend_from_slice(&meta.chunk_size.to_be_bytes());
            let name = meta.name.as_deref().unwrap_or("").as_bytes();
            out.extend_from_slice(&(name.len() as u16).to_be_bytes());
            out.extend_from_slice(name);
        }
        out.extend_from_slice(&(children.len() as u32).to_be_bytes());
        for child in children {
            out.extend_from_slice(&child.key);
            out.extend_from_slice(&child.size.to_be_bytes());
        }
        out
    }

    fn decode(mut bytes: &[u8]) -> Option<SealedPart> {
        fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, tail) = bytes.split_at_checked(n)?;
            *bytes = tail;
            Some(head)
        }
        fn be<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
            take(bytes, N)?.try_into().ok()
        }
        let [version, flags] = be::<2>(&mut bytes)?;
        if u64::from(version) != NODE_VERSION || flags > 1 {
            return None;
        }
        let meta = if flags == 1 {
            let size = u64::from_be_bytes(be(&mut bytes)?);
            let chunk_size = u32::from_be_bytes(be(&mut bytes)?);
            let name_len = u16::from_be_bytes(be(&mut bytes)?) as usize;
            if name_len > MAX_NAME_LEN {
                return None;
            }
            let name = std::str::from_utf8(take(&mut bytes, name_len)?).ok()?;
            Some(FileMeta { size, chunk_size, name: (!name.is_empty()).then(|| name.to_string()) })
        } else {
            None
        };
        let count = u32::from_be_bytes(be(&mut bytes)?) as usize;
        if bytes.len() != count.checked_mul(KEY_LEN + 8)? {
            return None;
        }
        let children = bytes
            .chunks_exact(KEY_LEN + 8)
            .map(|c| {
                let key: Key = c[..KEY_LEN].try_into().expect("split at KEY_LEN");
                (key, u64::from_be_bytes(c[KEY_LEN..].try_into().expect("8 bytes")))
            })
            .collect();
        Some(SealedPart { children, meta })
    }
}

/// A CID as a walk remembers it: 16 bytes of its digest, mixed with its
/// codec. Two different blocks share a key only if their SHA-256 digests
/// share 128 bits, which nobody can arrange; a walk of a million blocks
/// remembers 16 MiB or so.
fn walk_key(cid: &Cid) -> u128 {
    let digest = cid.hash().digest();
    let mut prefix = [0u8; 16];
    let n = digest.len().min(16);
    prefix[..n].copy_from_slice(&digest[..n]);
    u128::from_le_bytes(prefix) ^ u128::from(cid.codec())
}

/// The frontier of a walk over a DAG that may come from anywhere: an
/// explicit stack (never recursion), each distinct CID once however often
/// it is linked (identical chunks share a leaf), a depth limit of
/// [`MAX_DEPTH`], and an optional budget of distinct blocks. A CID enters
/// the stack at most once, so the stack and the set of seen CIDs are both
/// bounded by the distinct blocks of the DAG.
pub struct Frontier {
    root: Cid,
    stack: Vec<(Cid, u8)>,
    seen: HashSet<u128>,
    max_blocks: u64,
}

impl Frontier {
    /// A walk from `root` that fails once it meets more than `max_blocks`
    /// distinct blocks.
    pub fn new(root: Cid, max_blocks: u64) -> Frontier {
        let mut frontier = Frontier::new_empty(max_blocks);
        frontier.add_root(root);
        frontier
    }

    /// A walk with no root yet: add them with [`add_root`](Self::add_root)
    /// to walk several DAGs, each block of all of them once.
    pub fn new_empty(max_blocks: u64) -> Frontier {
        Frontier {
            root: block::cid_of(DAG_CBOR, &[]),
            stack: Vec::new(),
            seen: HashSet::new(),
            max_blocks,
        }
    }

    /// Walks `root` next (if it was not met already); errors name it.
    pub fn add_root(&mut self, root: Cid) {
        self.root = root;
        if self.seen.insert(walk_key(&root)) {
            self.stack.push((root, 1));
        }
    }

    /// Whether the walk met `cid`.
    pub fn contains(&self, cid: &Cid) -> bool {
        self.seen.contains(&walk_key(cid))
    }

    /// The next block to visit and its depth (the structure nodes on its
    /// path, root included, for a structure node; that of its parent plus
    /// one for a leaf).
    pub fn pop(&mut self) -> Option<(Cid, usize)> {
        self.stack.pop().map(|(cid, depth)| (cid, usize::from(depth)))
    }

    /// Adds the links of the structure node at `depth` that were not seen
    /// yet, so that they are visited in order.
    pub fn push_links(&mut self, depth: usize, links: &[Cid]) -> Result<()> {
        if depth >= MAX_DEPTH && links.iter().any(|l| l.codec() == DAG_CBOR) {
            return Err(Error::Limit { root: self.root, limit: DagLimit::Depth(MAX_DEPTH) });
        }
        let at = self.stack.len();
        for link in links {
            if self.seen.insert(walk_key(link)) {
                if self.seen.len() as u64 > self.max_blocks {
                    return Err(Error::Limit {
                        root: self.root,
                        limit: DagLimit::Blocks(self.max_blocks),
                    });
                }
                // Depth fits a u8: MAX_DEPTH is checked above.
                self.stack.push((*link, (depth + 1) as u8));
            }
        }
        self.stack[at..].reverse();
        Ok(())
    }

    /// Distinct blocks met so far (visited or waiting).
    pub fn seen(&self) -> u64 {
        self.seen.len() as u64
    }

    /// Whether nothing is left to visit.
    pub fn is_empty(&self) -> bool {
        self.stack.is_empty()
    }
}

const _: () = assert!(MAX_DEPTH < u8::MAX as usize);

/// Builds and encrypts one structure node; returns its CID, key and bytes.
pub fn build_node(
    secret: &ConvergenceSecret,
    children: &[ChildRef],
    meta: Option<&FileMeta>,
) -> (Cid, Key, Vec<u8>) {
    let mut sealed = SealedPart::encode(children, meta);
    let key = secret.derive_key(Domain::Node, &sealed);
    crypto::seal(&key, Domain::Node, &mut sealed);
    let node = Node { links: children.iter().map(|c| c.cid).collect(), sealed };
    let bytes = node.encode();
    (block::cid_of(DAG_CBOR, &bytes), key, bytes)
}

/// Builds the tree over a file's leaves, given in order, with bounded
/// memory (at most `max_links + 1` entries per level). Every finished
/// structure node is handed to the `emit` callback of [`push`](Self::push)
/// and [`finish`](Self::finish).
pub struct TreeBuilder {
    secret: ConvergenceSecret,
    max_links: usize,
    levels: Vec<Vec<ChildRef>>,
}

impl TreeBuilder {
    pub fn new(secret: ConvergenceSecret, max_links: usize) -> Self {
        assert!((2..=MAX_LINKS_LIMIT).contains(&max_links), "max_links out of range");
        Self { secret, max_links, levels: vec![Vec::new()] }
    }

    /// Adds the next leaf.
    pub fn push<E>(
        &mut self,
        leaf: ChildRef,
        emit: &mut impl FnMut(Cid, Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.push_at(0, leaf, emit)
    }

    fn push_at<E>(
        &mut self,
        level: usize,
        child: ChildRef,
        emit: &mut impl FnMut(Cid, Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        // A level is flushed only when a child beyond max_links arrives, so
        // a level holding exactly max_links children can still become the root.
        if self.levels[level].len() == self.max_links {
            let full = std::mem::take(&mut self.levels[level]);
            let parent = self.flush(&full, emit)?;
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.push_at(level + 1, parent, emit)?;
        }
        self.levels[level].push(child);
        Ok(())
    }

    fn flush<E>(
        &self,
        children: &[ChildRef],
        emit: &mut impl FnMut(Cid, Vec<u8>) -> Result<(), E>,
    ) -> Result<ChildRef, E> {
        let size = children.iter().map(|c| c.size).sum();
        let (cid, key, bytes) = build_node(&self.secret, children, None);
        emit(cid, bytes)?;
        Ok(ChildRef { cid, key, size })
    }

    /// Closes every level and emits the root, which carries `meta`.
    pub fn finish<E>(
        mut self,
        meta: &FileMeta,
        emit: &mut impl FnMut(Cid, Vec<u8>) -> Result<(), E>,
    ) -> Result<(Cid, Key), E> {
        let mut level = 0;
        while level + 1 < self.levels.len() {
            let children = std::mem::take(&mut self.levels[level]);
            if !children.is_empty() {
                let parent = self.flush(&children, emit)?;
                self.push_at(level + 1, parent, emit)?;
            }
            level += 1;
        }
        let (cid, key, bytes) = build_node(&self.secret, &self.levels[level], Some(meta));
        emit(cid, bytes)?;
        Ok((cid, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaf(i: u64) -> ChildRef {
        ChildRef { cid: block::cid_of(block::RAW, &i.to_be_bytes()), key: [i as u8; 32], size: 10 }
    }

    proptest! {
        #[test]
        fn node_encoding_round_trips(n in 0usize..40, sealed in proptest::collection::vec(any::<u8>(), 0..200)) {
            let node = Node { links: (0..n as u64).map(|i| leaf(i).cid).collect(), sealed };
            let bytes = node.encode();
            let cid = block::cid_of(DAG_CBOR, &bytes);
            prop_assert_eq!(Node::decode(&cid, &bytes).unwrap(), node);
        }

        #[test]
        fn sealed_part_round_trips(n in 0usize..40, size in any::<u64>(), name in proptest::option::of("[a-z.]{1,20}")) {
            let secret = ConvergenceSecret::from_bytes([3; 32]);
            let children: Vec<_> = (0..n as u64).map(leaf).collect();
            let meta = FileMeta { size, chunk_size: 65536, name };
            let (cid, key, bytes) = build_node(&secret, &children, Some(&meta));
            let opened = Node::decode(&cid, &bytes).unwrap().open(&cid, &key).unwrap();
            prop_assert_eq!(opened.children, children);
            prop_assert_eq!(opened.meta, Some(meta));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let cid = block::cid_of(DAG_CBOR, &bytes);
            let _ = Node::decode(&cid, &bytes);
            let _ = SealedPart::decode(&bytes);
        }

        #[test]
        fn tree_covers_all_leaves_in_order(n in 0u64..200, max_links in 2usize..9) {
            let secret = ConvergenceSecret::from_bytes([5; 32]);
            let mut blocks = std::collections::HashMap::new();
            let mut emit = |cid: Cid, bytes: Vec<u8>| -> Result<(), ()> { blocks.insert(cid, bytes); Ok(()) };
            let mut builder = TreeBuilder::new(secret, max_links);
            for i in 0..n { builder.push(leaf(i), &mut emit).unwrap(); }
            let meta = FileMeta { size: n * 10, chunk_size: 10, name: None };
            let (root, key) = builder.finish(&meta, &mut emit).unwrap();
            fn walk(cid: Cid, key: Key, blocks: &std::collections::HashMap<Cid, Vec<u8>>, max: usize, out: &mut Vec<Cid>) {
                let opened = Node::decode(&cid, &blocks[&cid]).unwrap().open(&cid, &key).unwrap();
                assert!(opened.children.len() <= max);
                for c in opened.children {
                    if c.cid.codec() == block::RAW { out.push(c.cid) } else { walk(c.cid, c.key, blocks, max, out) }
                }
            }
            let mut leaves = Vec::new();
            walk(root, key, &blocks, max_links, &mut leaves);
            let expected: Vec<_> = (0..n).map(|i| leaf(i).cid).collect();
            prop_assert_eq!(leaves, expected);
        }
    }

    #[test]
    fn a_full_node_fits_in_a_block() {
        let secret = ConvergenceSecret::from_bytes([9; 32]);
        let children: Vec<_> =
            (0..MAX_LINKS_LIMIT as u64).map(|i| ChildRef { size: u64::MAX, ..leaf(i) }).collect();
        let meta =
            FileMeta { size: u64::MAX, chunk_size: u32::MAX, name: Some("n".repeat(MAX_NAME_LEN)) };
        let (_, _, bytes) = build_node(&secret, &children, Some(&meta));
        assert!(bytes.len() <= block::MAX_BLOCK_SIZE, "{} bytes", bytes.len());
    }
}
