//! Get: waiting for a first peer, finding a file's providers, streaming it
//! from the store and the network after checking it fits on disk; and a
//! root's health.

use std::{path::Path, sync::Arc};

use cid::Cid;

use super::{GetOptions, GetReport, Node, NodeError, ProgressFn, SPACE_RESERVE, free_space};
use crate::{
    Ticket,
    dag::FileMeta,
    error::Error,
    export::{self, Output, StreamOptions},
    net::{
        discover,
        get::{self, GET_WINDOW, NetSource},
        providers::ProviderSet,
        repair::Health,
    },
    store::{FileInfo, PinKind},
    ticket::TicketOrCid,
};

impl Node {
    /// Streams the plaintext to `out` in order: local blocks first, the
    /// rest from providers, each verified and stored. `out` is a blocking
    /// writer (`Box<impl Write>`, written on a blocking thread) or an
    /// [`Output::Async`].
    pub async fn get(
        &self,
        ticket: Ticket,
        out: impl Into<Output>,
        progress: Option<ProgressFn>,
    ) -> Result<GetReport, NodeError> {
        self.get_with(ticket, out, GetOptions { progress, ..Default::default() }).await
    }

    /// [`get`](Self::get) with all its options.
    pub async fn get_with(
        &self,
        ticket: Ticket,
        out: impl Into<Output>,
        get: GetOptions,
    ) -> Result<GetReport, NodeError> {
        let out = out.into();
        let root = ticket.root;
        let store = self.inner.store.clone();
        let complete = store.run(move |store| Ok(store.is_complete(&root))).await?;
        // A complete local copy needs the network only to repair a block
        // that turns out corrupt: then discovery starts on demand.
        let (providers, discovery) = self.discovery(root, complete).await;
        let range = get.range;
        let result = self.stream(ticket, out, get, providers, complete).await;
        drop(discovery);
        let (size, from_network, evicted) = match result {
            Ok(done) => done,
            Err(e) => {
                // What arrived is kept as part of the file (a cached root
                // like any other, see `stream`): a get that runs again needs
                // only the rest. A full disk wants its space now.
                if matches!(e, Error::DiskFull { .. } | Error::NoSpace { .. }) {
                    let _ = self
                        .inner
                        .store
                        .run(move |store| {
                            if store.root_info(&root).is_some_and(|r| r.partial) {
                                store.remove_root(&root)?;
                            }
                            Ok(())
                        })
                        .await;
                    self.store().request_gc();
                }
                return Err(e.into());
            }
        };
        if from_network > 0 && range.is_none() {
            self.inner.net.provide(root).await;
        }
        for root in evicted {
            self.inner.net.unprovide(root).await;
        }
        Ok(GetReport { size, from_network })
    }

    /// The get itself, once its providers are being found: the root, the
    /// space it needs, the stream of its leaves, and what the store keeps
    /// of it. Returns the bytes written, the blocks fetched, and the roots
    /// evicted from the cache to make room.
    async fn stream(
        &self,
        ticket: Ticket,
        out: Output,
        get: GetOptions,
        providers: Arc<ProviderSet>,
        complete: bool,
    ) -> Result<(u64, u64, Vec<Cid>), Error> {
        let GetOptions { progress, output_dir, cancel, range, read_ahead } = get;
        let (root, store) = (ticket.root, self.inner.store.clone());
        let writer = store.run(|store| Ok(store.cache_writer())).await?;
        let rt = tokio::runtime::Handle::current();
        // A complete copy is indexed: its blocks need no claim.
        let source =
            NetSource::new(store.clone(), self.inner.net.clone(), rt, providers, writer, !complete)
                .with_limits(u64::MAX, cancel.unwrap_or_default());
        let exported = async {
            let (meta, opened) = export::open_root_async(&source, &root, &ticket.key).await?;
            let checked = meta.clone();
            let resolved = store
                .run(move |store| match range {
                    Some(range) => {
                        check_range_space(store.dir(), &checked, range, output_dir.as_deref())
                            .map(Some)
                    }
                    None => {
                        check_space(store.dir(), &checked, complete, output_dir.as_deref())?;
                        // Recorded as part of a file before its first leaf
                        // is written: if this get stops (a crash, a kill),
                        // what it stored belongs to a root, so the next
                        // start's collection spares it and a rerun fetches
                        // only the rest.
                        if !complete {
                            store.cache_partial(&root, store.present_size(&root))?;
                        }
                        Ok(None)
                    }
                })
                .await?;
            let options =
                StreamOptions { range: resolved, window: read_ahead.unwrap_or(GET_WINDOW) };
            let progress = progress.as_deref().map(|p| p as &(dyn Fn(u64, Option<u64>) + Sync));
            let size =
                export::stream(&source, (&root, &meta, &opened), out, &options, progress).await?;
            Ok::<_, Error>((size, meta))
        }
        .await;
        // Blocks that arrived while the stream failed are written now, and
        // kept by the commit below.
        source.settle().await;
        store
            .run(move |store| {
                // Keep what arrived even if the export failed: a rerun resumes.
                source.commit()?;
                let (size, meta) = exported?;
                let fetched = source.fetched();
                // The file's name, size and key, for `ls` and for its
                // ticket later (a replica's holder that reads the file
                // learns them too).
                let file = FileInfo { size: meta.size, name: meta.name, key: Some(ticket.key) };
                if range.is_some() && !(fetched == 0 && complete) {
                    // Part of the file: cached as such (evicted like any
                    // cached root), so that a later get needs only the rest.
                    // The writer's guard still covers the blocks.
                    if !complete {
                        store.cache_partial(&root, store.present_size(&root))?;
                    }
                    store.describe(&root, file);
                    source.finish()?;
                    let evicted = store.enforce_cache_limit()?;
                    return Ok((size, fetched, evicted));
                }
                if fetched == 0 && complete {
                    source.finish()?;
                    store.touch(&root);
                    store.describe(&root, file);
                    return Ok((size, 0, Vec::new()));
                }
                // The writer's guard still covers every block while we pin.
                store.pin(&root, PinKind::Cached, None)?;
                store.describe(&root, file);
                source.finish()?;
                let evicted = store.enforce_cache_limit()?;
                Ok((size, fetched, evicted))
            })
            .await
    }

    /// The file's size and name, from its root (fetched, verified and kept
    /// if it is not here), within the time a get takes to give up.
    pub async fn file_meta(&self, ticket: &Ticket) -> Result<crate::dag::FileMeta, NodeError> {
        self.find_file(ticket).await.0
    }

    /// [`file_meta`](Self::file_meta), and the providers it found with what
    /// finding them cost (DHT requests, `Have` probes; a DHT lookup may
    /// still be ending, see [`Cost::running`](crate::net::event_loop::Cost)):
    /// the first step of every get, and the lookup `bench dht` measures.
    pub async fn find_file(
        &self,
        ticket: &Ticket,
    ) -> (Result<crate::dag::FileMeta, NodeError>, Arc<ProviderSet>) {
        let (root, key, store) = (ticket.root, ticket.key, self.inner.store.clone());
        let here = match store.run(move |store| Ok(store.has(&root))).await {
            Ok(here) => here,
            Err(e) => return (Err(e.into()), ProviderSet::new(root, false)),
        };
        let (providers, discovery) = self.discovery(root, here).await;
        let (net, set) = (self.inner.net.clone(), providers.clone());
        let opened = async {
            let writer = store.run(|store| Ok(store.cache_writer())).await?;
            let rt = tokio::runtime::Handle::current();
            let source = NetSource::new(store.clone(), net, rt, set, writer, !here);
            let opened = export::open_root_async(&source, &root, &key).await;
            source.settle().await;
            store
                .run(move |_| {
                    source.commit()?;
                    source.finish()
                })
                .await?;
            opened.map(|(meta, _)| meta)
        }
        .await;
        drop(discovery);
        let meta = opened.map_err(NodeError::from);
        (meta, providers)
    }

    /// A node that was given bootstrap addresses but is not connected yet
    /// (a one-shot client just started) waits a little for its first peer.
    pub(super) async fn wait_for_first_peer(&self) {
        if !self.inner.config.bootstrap.is_empty() && self.inner.net.connected_now() == 0 {
            self.inner.net.wait_for_bootstrap(1, get::FIRST_PEER_WAIT).await;
        }
    }

    /// The providers of `root` and the task that discovers them: at once
    /// unless the root is `here` (then on demand, to repair a corrupt
    /// block), after waiting a little for a first peer if it is not.
    async fn discovery(&self, root: Cid, here: bool) -> (Arc<ProviderSet>, Discovery) {
        if !here {
            self.wait_for_first_peer().await;
        }
        let providers = ProviderSet::new(root, !here);
        let task =
            tokio::spawn(discover::discover(self.inner.net.clone(), providers.clone(), Vec::new()));
        (providers, Discovery(task))
    }

    /// How many copies of `root` the network holds now: the holders that
    /// answer, the target, and the last repair.
    pub async fn status(&self, target: TicketOrCid) -> Health {
        let root = target.root();
        let info = self.inner.store.run(move |store| Ok(store.root_info(&root))).await;
        if !matches!(info, Ok(Some(_))) {
            self.wait_for_first_peer().await;
        }
        self.inner.repairer.health(root).await
    }
}

/// Fails, before anything but the root is fetched, a get whose file would
/// not fit: its blocks in the store at `store_dir` (unless `complete` here
/// already), and the file itself in `output_dir` (on the same disk, both),
/// each leaving [`SPACE_RESERVE`] free.
fn check_space(
    store_dir: &Path,
    meta: &FileMeta,
    complete: bool,
    output_dir: Option<&Path>,
) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let device = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    // The blocks: the file plus a little for tags and structure nodes.
    let blocks = if complete { 0 } else { meta.size + meta.size / 64 };
    let mut needs = vec![(store_dir.to_path_buf(), blocks)];
    if let Some(dir) = output_dir {
        if device(dir).is_some() && device(dir) == device(store_dir) {
            needs[0].1 += meta.size;
        } else {
            needs.push((dir.to_path_buf(), meta.size));
        }
    }
    for (dir, need) in needs {
        if need == 0 {
            continue;
        }
        if let Some(free) = free_space(&dir)
            && free < need.saturating_add(SPACE_RESERVE)
        {
            return Err(Error::NoSpace { path: dir, need, free });
        }
    }
    Ok(())
}

/// A range read needs room for its own bytes only. Resolves the range
/// against the file's size.
fn check_range_space(
    store_dir: &Path,
    meta: &FileMeta,
    range: export::ByteRange,
    output_dir: Option<&Path>,
) -> Result<(u64, u64), Error> {
    let (offset, len) = range.resolve(meta.size).ok_or(Error::Range {
        offset: match range {
            export::ByteRange::FromTo(a, _) | export::ByteRange::From(a) => a,
            export::ByteRange::Last(_) => meta.size,
        },
        len: 0,
        size: meta.size,
    })?;
    for dir in [Some(store_dir), output_dir].into_iter().flatten() {
        if let Some(free) = free_space(dir)
            && free < len.saturating_add(SPACE_RESERVE)
        {
            return Err(Error::NoSpace { path: dir.to_path_buf(), need: len, free });
        }
    }
    Ok((offset, len))
}

/// A get's discovery task, stopped when this is dropped: a get or a lookup
/// whose caller gives up on it (an HTTP client gone, the gateway's
/// deadline) leaves no task behind waiting for rounds nobody will ask for.
struct Discovery(tokio::task::JoinHandle<()>);

impl Drop for Discovery {
    fn drop(&mut self) {
        self.0.abort();
    }
}
