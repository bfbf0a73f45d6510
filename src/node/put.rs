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
        let reader: Box<dyn Read + Send> = match put.cancel.clone() {
            Some(cancel) => Box::new(Cancellable { inner: reader, cancel }),
            None => reader,
        };
        let (imported, bytes) = store::run_blocking("the import", move || {
            let progress = progress.as_deref().map(|p| p as &(dyn Fn(u64, Option<u64>) + Sync));
            let imported = import::import(&store, reader, &options, progress)?;
            let file = FileInfo { size: imported.size, name: options.name.clone() };
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
        })?;
        let root = imported.ticket.root;
        self.inner.net.provide(root).await;
        // A node that does not listen (a one-shot client) serves nobody, so
        // its own copy does not count: it asks for all `replicas` elsewhere.
        let serving = !self.inner.config.listen.is_empty();
        let elsewhere = usize::from(wanted) - usize::from(serving);
        if let Some(on_stored) = &put.on_stored {
            on_stored(imported.size, elsewhere);
        }
        if elsewhere > 0 {
            self.wait_for_first_peer().await;
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
        let placed = replicas::replicate(&self.inner.net, offer, elsewhere, &report).await;
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
