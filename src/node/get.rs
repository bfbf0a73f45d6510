//! Get: waiting for a first peer, finding a file's providers, streaming it
//! from the store and the network after checking it fits on disk; and a
//! root's health.

use std::{io::Write, sync::Arc};

use cid::Cid;

use super::{GetOptions, GetReport, Node, NodeError, ProgressFn, SPACE_RESERVE, free_space};
use crate::{
    Ticket,
    error::Error,
    export::{self, ExportOptions},
    net::{
        discover,
        get::{self, GET_WINDOW, GET_WORKERS, NetSource},
        providers::ProviderSet,
        repair::Health,
    },
    store::{self, Durability, FileInfo, PinKind},
    ticket::TicketOrCid,
};

impl Node {
    /// Streams the plaintext to `out` in order (on blocking threads): local
    /// blocks first, the rest from providers, each verified and stored.
    pub async fn get(
        &self,
        ticket: Ticket,
        out: Box<dyn Write + Send>,
        progress: Option<ProgressFn>,
    ) -> Result<GetReport, NodeError> {
        self.get_with(ticket, out, GetOptions { progress, ..Default::default() }).await
    }

    /// [`get`](Self::get) with all its options.
    pub async fn get_with(
        &self,
        ticket: Ticket,
        out: Box<dyn Write + Send>,
        get: GetOptions,
    ) -> Result<GetReport, NodeError> {
        let GetOptions { progress, output_dir, cancel, range, read_ahead } = get;
        let root = ticket.root;
        let store = self.store().clone();
        let complete = self.inner.store.run(move |store| Ok(store.is_complete(&root))).await?;
        // A complete local copy needs the network only to repair a block
        // that turns out corrupt: then discovery starts on demand.
        let (providers, discovery) = self.discovery(root, complete).await;
        let (net, rt) = (self.inner.net.clone(), tokio::runtime::Handle::current());
        let set = providers.clone();
        let result = store::run_blocking("the get", move || {
            let mut out = out;
            let progress = progress.as_deref().map(|p| p as &(dyn Fn(u64, Option<u64>) + Sync));
            let window = read_ahead.unwrap_or(GET_WINDOW).max(1);
            let workers = GET_WORKERS.min(window);
            let mut options = ExportOptions { range: None, workers, window };
            // A complete copy is indexed: its blocks need no claim.
            let source = NetSource::new(store.clone(), net, rt, set, Durability::Cached, !complete)
                .with_limits(u64::MAX, cancel.unwrap_or_default());
            let meta = match range {
                Some(range) => {
                    let (meta, resolved) =
                        check_range_space(&source, &ticket, range, output_dir.as_deref())?;
                    options.range = Some(resolved);
                    meta
                }
                None => check_space(&source, &ticket, complete, output_dir.as_deref())?,
            };
            let exported = export::export(&source, &ticket, &mut out, &options, progress);
            // Keep what arrived even if the export failed: a rerun resumes.
            source.commit()?;
            let size = exported?;
            if range.is_some() && !(source.fetched() == 0 && complete) {
                // Part of the file: cached as such (evicted like any cached
                // root), so that a later get needs only the rest. The
                // writer's guard still covers the blocks.
                if !complete {
                    store.cache_partial(&root, store.present_size(&root))?;
                }
                source.finish()?;
                let evicted = store.enforce_cache_limit()?;
                return Ok((size, source.fetched(), evicted));
            }
            if source.fetched() == 0 && complete {
                source.finish()?;
                store.touch(&root);
                return Ok((size, 0, Vec::new()));
            }
            // The writer's guard still covers every block while we pin.
            store.pin(&root, PinKind::Cached, None)?;
            store.describe(&root, FileInfo { size: meta.size, name: meta.name });
            source.finish()?;
            let evicted = store.enforce_cache_limit()?;
            Ok::<_, Error>((size, source.fetched(), evicted))
        })
        .await;
        discovery.abort();
        let (size, from_network, evicted) = match result {
            Ok(done) => done,
            Err(e) => {
                // What arrived belongs to no root yet: a get that runs again
                // before the next collection (at the latest, the next start)
                // needs only the rest. A full disk wants its space now.
                if matches!(e, Error::DiskFull { .. } | Error::NoSpace { .. }) {
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
        let root = ticket.root;
        let store = self.store().clone();
        let here = match self.inner.store.run(move |store| Ok(store.has(&root))).await {
            Ok(here) => here,
            Err(e) => return (Err(e.into()), ProviderSet::new(root, false)),
        };
        let (providers, discovery) = self.discovery(root, here).await;
        let (net, rt, set) =
            (self.inner.net.clone(), tokio::runtime::Handle::current(), providers.clone());
        let ticket = ticket.clone();
        let opened = store::run_blocking("reading the root", move || {
            let source = NetSource::new(store, net, rt, set, Durability::Cached, !here);
            let opened = export::open_root(&source, &ticket);
            source.commit()?;
            source.finish()?;
            opened.map(|(meta, _)| meta)
        })
        .await;
        discovery.abort();
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
    async fn discovery(
        &self,
        root: Cid,
        here: bool,
    ) -> (Arc<ProviderSet>, tokio::task::JoinHandle<()>) {
        if !here {
            self.wait_for_first_peer().await;
        }
        let providers = ProviderSet::new(root, !here);
        let task =
            tokio::spawn(discover::discover(self.inner.net.clone(), providers.clone(), Vec::new()));
        (providers, task)
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
/// not fit: its blocks in the store (unless `complete` here already), and
/// the file itself in `output_dir` (on the same disk, both), each leaving
/// [`SPACE_RESERVE`] free.
fn check_space(
    source: &NetSource,
    ticket: &Ticket,
    complete: bool,
    output_dir: Option<&std::path::Path>,
) -> Result<crate::dag::FileMeta, Error> {
    use std::os::unix::fs::MetadataExt;
    let (meta, _) = export::open_root(source, ticket)?;
    let store_dir = source.store().dir();
    let device = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.dev()).ok();
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
    Ok(meta)
}

/// A range read needs room for its own bytes only.
/// Resolves the range against the file's size.
fn check_range_space(
    source: &NetSource,
    ticket: &Ticket,
    range: export::ByteRange,
    output_dir: Option<&std::path::Path>,
) -> Result<(crate::dag::FileMeta, (u64, u64)), Error> {
    let (meta, _) = export::open_root(source, ticket)?;
    let (offset, len) = range.resolve(meta.size).ok_or(Error::Range {
        offset: match range {
            export::ByteRange::FromTo(a, _) | export::ByteRange::From(a) => a,
            export::ByteRange::Last(_) => meta.size,
        },
        len: 0,
        size: meta.size,
    })?;
    for dir in [Some(source.store().dir()), output_dir].into_iter().flatten() {
        if let Some(free) = free_space(dir)
            && free < len.saturating_add(SPACE_RESERVE)
        {
            return Err(Error::NoSpace { path: dir.to_path_buf(), need: len, free });
        }
    }
    Ok((meta, (offset, len)))
}
