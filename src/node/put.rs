//! Put: importing a file into the store, providing its root, and asking
//! the closest peers for its replicas.

use std::io::Read;

use libp2p::PeerId;

use super::{Cancel, MAX_REPLICAS, Node, NodeError, ProgressFn, PutOptions, PutReport};
use crate::{
    error::Error,
    import::{self, ImportOptions},
    lease::Lease,
    net::replicas::{self, Offer},
    store::{self, FileInfo, PinKind},
};

impl Node {
    /// Imports from `reader` (on a blocking thread), provides the root, and
    /// asks the closest peers for replicas.
    pub async fn put(
        &self,
        reader: Box<dyn Read + Send>,
        name: Option<String>,
        total: Option<u64>,
        progress: Option<ProgressFn>,
    ) -> Result<PutReport, NodeError> {
        self.put_with(reader, PutOptions { name, total, progress, ..Default::default() }).await
    }

    /// [`put`](Self::put) with all its options.
    pub async fn put_with(
        &self,
        reader: Box<dyn Read + Send>,
        put: PutOptions,
    ) -> Result<PutReport, NodeError> {
        let store = self.store().clone();
        let wanted = u8::try_from(self.inner.config.replicas.clamp(1, MAX_REPLICAS))
            .expect("at most MAX_REPLICAS");
        let options = ImportOptions {
            chunk_size: self.inner.config.chunk_size,
            name: put.name,
            total: put.total,
            kind: PinKind::Pinned,
            ..Default::default()
        };
        let progress = put.progress;
        let cancel = put.cancel.clone().unwrap_or_default();
        let reader: Box<dyn Read + Send> = match put.cancel.clone() {
            Some(cancel) => Box::new(Cancellable { inner: reader, cancel }),
            None => reader,
        };
        let imported = store::run_blocking("the import", move || {
            let progress = progress.as_deref().map(|p| p as &(dyn Fn(u64, Option<u64>) + Sync));
            let imported = import::import(&store, reader, &options, progress)?;
            let key = Some(imported.ticket.key);
            let file = FileInfo { size: imported.size, name: options.name.clone(), key };
            store.describe(&imported.ticket.root, file);
            store.set_replicas(&imported.ticket.root, wanted)?;
            let (_, bytes) = store.dag_stats(&imported.ticket.root)?;
            Ok::<_, Error>((imported, bytes))
        })
        .await
        .map_err(|e| match e {
            Error::Io { source, .. } if source.get_ref().is_some_and(|e| e.is::<Cancelled>()) => {
                Error::Cancelled
            }
            e => e,
        });
        let (imported, bytes) = match imported {
            Ok(imported) => imported,
            Err(Error::Cancelled) => {
                // What the import wrote is garbage now: reclaimed before
                // the put returns.
                self.reclaim(String::new(), 0).await;
                return Err(Error::Cancelled.into());
            }
            Err(e) => return Err(e.into()),
        };
        let root = imported.ticket.root;
        // Cancelled from here on: the pin is undone and every peer asked
        // for a copy is asked to drop it (see `withdraw`).
        let asked = std::sync::Mutex::new(Vec::new());
        let existed = imported.existed;
        let withdrawn = async |asked: &std::sync::Mutex<Vec<PeerId>>| {
            let asked = std::mem::take(&mut *asked.lock().unwrap_or_else(|e| e.into_inner()));
            if !existed {
                self.withdraw(root, asked).await;
            }
            Err(Error::Cancelled.into())
        };
        if is_set(&cancel) {
            return withdrawn(&asked).await;
        }
        self.inner.net.provide(root).await;
        // A node that does not listen (a one-shot client) serves nobody, so
        // its own copy does not count: it asks for all `replicas` elsewhere.
        let serving = !self.inner.config.listen.is_empty();
        let elsewhere = usize::from(wanted) - usize::from(serving);
        if let Some(on_stored) = &put.on_stored {
            on_stored(imported.size, elsewhere);
        }
        if elsewhere > 0 {
            tokio::select! {
                () = self.wait_for_first_peer() => {}
                () = cancelled(&cancel) => return withdrawn(&asked).await,
            }
        }
        let lease = Lease::issue(self.store().identity(), root, wanted, self.inner.config.lease)
            .map_err(|e| NodeError::Transport(format!("cannot sign a lease: {e}")))?;
        let offer = Offer { root, blocks: imported.blocks, bytes, lease };
        let on_copy = put.on_copy.clone();
        let report = move |peer: &PeerId, result: &Result<u64, String>| {
            if let Some(f) = &on_copy {
                f(peer, result);
            }
        };
        let replicate = replicas::replicate_tracked(
            &self.inner.net,
            self.async_store(),
            offer,
            elsewhere,
            &[],
            &report,
            &asked,
        );
        let placed = tokio::select! {
            placed = replicate => placed,
            () = cancelled(&cancel) => return withdrawn(&asked).await,
        };
        if is_set(&cancel) {
            return withdrawn(&asked).await;
        }
        Ok(PutReport {
            ticket: imported.ticket,
            size: imported.size,
            copies: usize::from(serving) + placed.confirmed.len(),
            wanted: usize::from(wanted),
            counts_local: serving,
            failed: placed.failed,
        })
    }
}

impl Node {
    /// Undoes a cancelled put of `root`: unpins it, stops providing it,
    /// reclaims its blocks, and asks each peer in `asked` to drop the copy
    /// it holds (or is pulling) for us. The blocks go first, so a peer
    /// still pulling them fails rather than pins after our request.
    async fn withdraw(&self, root: cid::Cid, asked: Vec<PeerId>) {
        let removed = self.inner.store.run(move |store| store.remove_root(&root)).await;
        if let Err(e) = removed {
            tracing::warn!("cancelled put: cannot unpin {root}: {e}");
        }
        self.inner.net.unprovide(root).await;
        self.reclaim(format!(" of {root}"), asked.len()).await;
        let net = &self.inner.net;
        let requests = asked.iter().map(|peer| replicas::rpc_delete(net, *peer, root));
        let answers = futures::future::join_all(requests).await;
        for (peer, answer) in asked.iter().zip(answers) {
            match answer {
                Ok(()) => tracing::info!("cancelled put: {peer} dropped its copy"),
                Err(why) => tracing::debug!("cancelled put: {peer} held no copy: {why}"),
            }
        }
    }

    /// Collects what a cancelled put wrote, and says so.
    async fn reclaim(&self, what: String, asked: usize) {
        match self.gc().await {
            Ok(stats) => tracing::info!(
                "put cancelled: nothing pinned; reclaimed {}{what}{}",
                crate::units::human_size(stats.removed_bytes),
                if asked > 0 {
                    format!("; asking {asked} peers to drop their copies")
                } else {
                    String::new()
                }
            ),
            Err(e) => tracing::warn!(
                "put cancelled: nothing pinned; the blocks it wrote are reclaimed by the next \
                 collection ({e})"
            ),
        }
    }
}

fn is_set(cancel: &Cancel) -> bool {
    cancel.load(std::sync::atomic::Ordering::Relaxed)
}

/// Resolves once `cancel` is set (looked at every 20 ms).
async fn cancelled(cancel: &Cancel) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
    while !is_set(cancel) {
        tick.tick().await;
    }
}

/// What a cancelled read fails with.
#[derive(Debug, thiserror::Error)]
#[error("cancelled")]
struct Cancelled;

/// A reader that fails once `cancel` is set.
struct Cancellable {
    inner: Box<dyn Read + Send>,
    cancel: Cancel,
}

impl Read for Cancellable {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::other(Cancelled));
        }
        self.inner.read(buf)
    }
}
