//! Import: a byte stream in, a pinned root and its ticket out, in constant
//! memory. Owns the chunking and the import pipeline: the calling thread
//! reads chunks, worker threads derive keys, encrypt, hash and write leaf
//! blocks to temporary files, and a collector puts the results back in
//! order, builds the tree, and commits the blocks in synced batches.

use std::io::{self, Read};

use crossbeam_channel::bounded;

use crate::{
    block::{self, MAX_BLOCK_SIZE, RAW},
    crypto::{self, Domain, TAG_LEN},
    dag::{ChildRef, DEFAULT_MAX_LINKS, FileMeta, MAX_LINKS_LIMIT, MAX_NAME_LEN, TreeBuilder},
    error::{Error, Result},
    progress::Progress,
    store::{BlockWriter, Durability, PinKind, Prepared, Store},
    ticket::Ticket,
};

/// Default chunk size: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: usize = 1024 * 1024;
/// Smallest configurable chunk size: 64 KiB.
pub const MIN_CHUNK_SIZE: usize = 64 * 1024;
/// Largest configurable chunk size: 4 MiB.
pub const MAX_CHUNK_SIZE: usize = 4 * 1024 * 1024;
/// Most plaintext one leaf block holds (a block is at most 2 MiB including
/// the tag). A chunk larger than this is cut into equal leaves.
pub const MAX_LEAF_PLAINTEXT: usize = MAX_BLOCK_SIZE - TAG_LEN;

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Bytes per chunk, from [`MIN_CHUNK_SIZE`] to [`MAX_CHUNK_SIZE`].
    pub chunk_size: usize,
    /// Children per structure node (tests use small values for deep trees).
    pub max_links: usize,
    /// The file name recorded in the root (truncated to 255 bytes).
    pub name: Option<String>,
    /// The input's length, if known, for progress reports.
    pub total: Option<u64>,
    /// Worker threads that encrypt, hash and write.
    pub workers: usize,
    /// Whether the root is pinned (put) or only cached.
    pub kind: PinKind,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_links: DEFAULT_MAX_LINKS,
            name: None,
            total: None,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8),
            kind: PinKind::Pinned,
        }
    }
}

impl ImportOptions {
    pub fn validate(&self) -> Result<()> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(Error::Config(format!(
                "chunk size {} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE} bytes",
                self.chunk_size
            )));
        }
        if !(2..=MAX_LINKS_LIMIT).contains(&self.max_links) {
            return Err(Error::Config(format!(
                "max links {} is outside 2..={MAX_LINKS_LIMIT}",
                self.max_links
            )));
        }
        Ok(())
    }
}

/// What an import produced.
#[derive(Debug, Clone)]
pub struct Imported {
    pub ticket: Ticket,
    /// Plaintext bytes read.
    pub size: u64,
    /// Blocks in the DAG (leaves and structure nodes).
    pub blocks: u64,
    /// Blocks that were not already stored.
    pub new_blocks: u64,
    /// Whether the root was in the index (pinned or cached) before this
    /// import pinned it: a cancelled put then leaves it as it was.
    pub existed: bool,
}

/// Leaf sizes of one chunk: a chunk above the leaf limit is cut into the
/// fewest equal parts that fit (the last may be shorter).
fn leaf_sizes(chunk: usize) -> impl Iterator<Item = usize> {
    let parts = chunk.div_ceil(MAX_LEAF_PLAINTEXT).max(1);
    let part = chunk.div_ceil(parts).max(1);
    (0..chunk).step_by(part).map(move |start| part.min(chunk - start))
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

struct Done {
    seq: u64,
    leaf: ChildRef,
    prepared: Prepared,
}

/// Imports `reader` into `store`: encrypts, stores, pins, and returns the
/// ticket. Memory stays bounded by a few chunks whatever the input size.
pub fn import(
    store: &Store,
    mut reader: impl Read,
    options: &ImportOptions,
    progress: Option<Progress<'_>>,
) -> Result<Imported> {
    options.validate()?;
    let workers = options.workers.max(1);
    let (work_tx, work_rx) = bounded::<(u64, Vec<u8>)>(workers * 2);
    let (done_tx, done_rx) = bounded::<Result<Done>>(workers * 2);
    // Leaf buffers are recycled: memory stays at `buffers` leaves whatever
    // the file size, and no page is faulted in twice.
    let buffers = workers * 2 + 2;
    let (pool_tx, pool_rx) = bounded::<Vec<u8>>(buffers);
    let leaf_capacity = options.chunk_size.min(MAX_LEAF_PLAINTEXT) + TAG_LEN;
    for _ in 0..buffers {
        pool_tx.send(Vec::with_capacity(leaf_capacity)).expect("room for every buffer");
    }
    let secret = store.secret().clone();
    let mut writer = store.writer();
    let input_complete = &std::sync::atomic::AtomicBool::new(false);

    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (work_rx, done_tx, secret) = (work_rx.clone(), done_tx.clone(), secret.clone());
            let pool_tx = pool_tx.clone();
            scope.spawn(move || {
                for (seq, mut buf) in work_rx {
                    let size = buf.len() as u64;
                    let key = secret.derive_key(Domain::Leaf, &buf);
                    crypto::seal(&key, Domain::Leaf, &mut buf);
                    let cid = block::cid_of(RAW, &buf);
                    let done = BlockWriter::prepare(store, Durability::Synced, &cid, &buf)
                        .map(|prepared| Done { seq, leaf: ChildRef { cid, key, size }, prepared });
                    buf.clear();
                    let _ = pool_tx.send(buf);
                    if done_tx.send(done).is_err() {
                        break;
                    }
                }
            });
        }
        drop((work_rx, done_tx, pool_tx));

        let collector = scope.spawn(move || -> Result<Imported> {
            let mut tree = TreeBuilder::new(secret.clone(), options.max_links);
            let mut reorder = std::collections::BTreeMap::new();
            let (mut next, mut bytes, mut blocks) = (0u64, 0u64, 0u64);
            for done in done_rx {
                let done = done?;
                reorder.insert(done.seq, done);
                while let Some(done) = reorder.remove(&next) {
                    next += 1;
                    bytes += done.leaf.size;
                    blocks += 1;
                    writer.add_prepared(done.prepared)?;
                    tree.push(done.leaf, &mut |cid, node| {
                        blocks += 1;
                        writer.put_verified(&cid, &node).map(drop)
                    })?;
                    if let Some(progress) = progress {
                        progress(bytes, options.total);
                    }
                }
            }
            if !input_complete.load(std::sync::atomic::Ordering::Acquire) {
                return Err(Error::Cancelled); // the reader failed and reports why
            }
            let meta = FileMeta {
                size: bytes,
                chunk_size: options.chunk_size as u32,
                name: options.name.as_deref().map(truncate_name),
            };
            let (root, key) = tree.finish(&meta, &mut |cid, node| {
                blocks += 1;
                writer.put_verified(&cid, &node).map(drop)
            })?;
            writer.finish()?;
            // Pin while the writer still holds garbage collection off.
            let existed = store.root_info(&root).is_some();
            store.pin(&root, options.kind, None)?;
            let ticket = Ticket::new(root, key);
            Ok(Imported { ticket, size: bytes, blocks, new_blocks: writer.written(), existed })
        });

        let mut seq = 0u64;
        let read_result = (|| -> Result<()> {
            let read_err = |e| Error::Io { context: "cannot read the input".into(), source: e };
            // A chunk that fits one leaf is read straight into a pooled
            // buffer; a larger one is read whole, then cut into leaves.
            let direct = options.chunk_size <= MAX_LEAF_PLAINTEXT;
            let mut scratch = if direct { Vec::new() } else { vec![0u8; options.chunk_size] };
            loop {
                let n = if direct {
                    let Ok(mut buf) = pool_rx.recv() else { return Ok(()) };
                    buf.resize(options.chunk_size, 0);
                    let n = read_full(&mut reader, &mut buf).map_err(read_err)?;
                    buf.truncate(n);
                    if n > 0 {
                        if work_tx.send((seq, buf)).is_err() {
                            return Ok(()); // the collector failed; it reports why
                        }
                        seq += 1;
                    }
                    n
                } else {
                    let n = read_full(&mut reader, &mut scratch).map_err(read_err)?;
                    let mut rest = &scratch[..n];
                    for size in leaf_sizes(n) {
                        let (leaf, tail) = rest.split_at(size);
                        rest = tail;
                        let Ok(mut buf) = pool_rx.recv() else { return Ok(()) };
                        buf.extend_from_slice(leaf);
                        if work_tx.send((seq, buf)).is_err() {
                            return Ok(());
                        }
                        seq += 1;
                    }
                    n
                };
                if n < options.chunk_size {
                    input_complete.store(true, std::sync::atomic::Ordering::Release);
                    return Ok(());
                }
            }
        })();
        drop(work_tx);
        let collected = collector.join().expect("import collector panicked");
        read_result?;
        collected
    })
}

fn truncate_name(name: &str) -> String {
    let mut end = name.len().min(MAX_NAME_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn leaves_cover_a_chunk_within_the_limit(chunk in 0usize..=MAX_CHUNK_SIZE) {
            let sizes: Vec<_> = leaf_sizes(chunk).collect();
            prop_assert_eq!(sizes.iter().sum::<usize>(), chunk);
            prop_assert!(sizes.iter().all(|&s| s > 0 && s <= MAX_LEAF_PLAINTEXT));
            if chunk <= MAX_LEAF_PLAINTEXT { prop_assert!(sizes.len() <= 1); }
        }

        #[test]
        fn read_full_fills_chunks_from_any_reader(data in proptest::collection::vec(any::<u8>(), 0..5000), step in 1usize..100, chunk in 1usize..700) {
            struct Trickle<'a>(&'a [u8], usize);
            impl Read for Trickle<'_> {
                fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                    let n = self.1.min(buf.len()).min(self.0.len());
                    buf[..n].copy_from_slice(&self.0[..n]);
                    self.0 = &self.0[n..];
                    Ok(n)
                }
            }
            let mut reader = Trickle(&data, step);
            let mut out = Vec::new();
            loop {
                let mut buf = vec![0; chunk];
                let n = read_full(&mut reader, &mut buf).unwrap();
                out.extend_from_slice(&buf[..n]);
                if n < chunk { break; }
                prop_assert_eq!(n, chunk);
            }
            prop_assert_eq!(out, data);
        }
    }

    #[test]
    fn names_are_truncated_on_a_char_boundary() {
        let name = "é".repeat(200);
        let t = truncate_name(&name);
        assert!(t.len() <= MAX_NAME_LEN && name.starts_with(&t));
    }
}
