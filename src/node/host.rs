//! What this node holds and who it talks to: delete, garbage collection,
//! repair rounds, the roots it keeps, its peers and its figures.

use std::collections::HashSet;

use cid::Cid;
use libp2p::PeerId;

use super::{DeleteReport, Node, NodeError, PeerInfo, READ_BACK, Stat};
use crate::{
    lease::DeleteRecord,
    net::{discover, replicas},
    store::{self, PinKind, RootInfo},
    ticket::TicketOrCid,
};

impl Node {
    /// Deletes the local copy, publishes this node's signed delete record
    /// in the DHT (so that no repair brings a copy held for it back, even
    /// from a holder offline now), reads it back to count the peers that
    /// kept it, and asks the holders (which obey only the owner) to delete
    /// theirs.
    pub async fn delete(&self, target: TicketOrCid) -> Result<DeleteReport, NodeError> {
        let root = target.root();
        let (local, owner, kept) = self
            .inner
            .store
            .run(move |store| {
                // Stored here but not put here: the owner is another node,
                // and this node's operator drops the copy it holds.
                let owner = store.root_info(&root).is_none_or(|info| info.local);
                if !owner {
                    return Ok((store.remove_root(&root)?, false, false));
                }
                // The owner's delete drops its own pin only: a copy another
                // owner placed here stays theirs.
                let (local, kept) = store.release_own(&root)?;
                Ok((local, true, kept))
            })
            .await?;
        if !kept {
            self.inner.net.unprovide(root).await;
        }
        if !owner {
            // Only the owner's delete record and requests count: this one
            // would publish a record nobody reads and be refused by every
            // holder.
            return Ok(DeleteReport {
                local,
                kept_for_others: false,
                not_owner: true,
                record: Err("this node is not the owner".into()),
                remote_deleted: Vec::new(),
                remote_refused: Vec::new(),
            });
        }
        let keep = self.inner.config.lease;
        let record = match DeleteRecord::issue(self.store().identity(), root, keep) {
            Ok(record) if self.inner.net.connected_now() > 0 => {
                let key = DeleteRecord::dht_key(&root, &self.peer_id());
                let value = record.encode();
                match self.inner.net.put_record(key.clone(), value.clone(), keep).await {
                    Ok(_) => self.read_back(key, &value).await,
                    Err(e) => Err(e),
                }
            }
            Ok(_) => Err("no peer connected".into()),
            Err(e) => Err(e.to_string()),
        };
        let (remote_deleted, remote_refused) = replicas::delete_remote(&self.inner.net, root).await;
        Ok(DeleteReport {
            local,
            kept_for_others: kept,
            not_owner: false,
            record,
            remote_deleted,
            remote_refused,
        })
    }

    /// The other peers that answer a lookup of `key` with exactly `value`,
    /// counted for [`READ_BACK`] at most: a peer answers a put whether it
    /// kept the record or not, so only what comes back counts.
    async fn read_back(&self, key: Vec<u8>, value: &[u8]) -> Result<usize, String> {
        let mut found = self.inner.net.get_record_from_peers(key).await;
        let mut holders = HashSet::new();
        let lookup = async {
            while let Some(answer) = found.recv().await {
                let (peer, answered) = answer?;
                if answered == value {
                    holders.insert(peer);
                }
            }
            Ok::<(), String>(())
        };
        // Out of time: the peers counted so far.
        if let Ok(Err(e)) = tokio::time::timeout(READ_BACK, lookup).await {
            return Err(format!("cannot read it back: {e}"));
        }
        Ok(holders.len())
    }

    /// Runs one repair round now (for tests and tools; a node that listens
    /// runs them on its own every repair interval).
    pub async fn repair_round(&self) {
        self.inner.repairer.round().await;
    }

    /// Collects garbage now (waiting for a collection already running);
    /// returns what it removed.
    pub async fn gc(&self) -> Result<crate::store::GcStats, NodeError> {
        let store = self.store().clone();
        Ok(store::run_blocking("a garbage collection", move || store.gc()).await?)
    }

    /// The roots this node keeps, pinned and cached.
    pub async fn ls(&self) -> Result<Vec<RootInfo>, NodeError> {
        Ok(self.inner.store.run(|store| Ok(store.roots())).await?)
    }

    /// The ticket of `root`, if this node knows its key (it put or fetched
    /// the file).
    pub async fn ticket_for(&self, root: Cid) -> Result<Option<crate::Ticket>, NodeError> {
        let info = self.inner.store.run(move |store| Ok(store.root_info(&root))).await?;
        let key = info.and_then(|info| info.file.and_then(|f| f.key));
        Ok(key.map(|key| crate::Ticket::new(root, key)))
    }

    /// The peers connected right now.
    pub async fn peers(&self) -> Vec<PeerInfo> {
        self.inner
            .net
            .peers()
            .await
            .into_iter()
            .map(|p| {
                // An address learned twice (dialled, then identified) once.
                let mut addrs = p.addrs;
                let mut seen = std::collections::HashSet::new();
                addrs.retain(|a| seen.insert(a.clone()));
                PeerInfo { peer_id: p.peer_id, addrs }
            })
            .collect()
    }

    /// Peers that hold `root`: DHT providers and connected peers that have it.
    pub async fn providers(&self, root: Cid) -> Result<Vec<PeerId>, NodeError> {
        Ok(discover::find_holders(&self.inner.net, root).await)
    }

    /// Peers this node blocked (for sending wrong blocks).
    pub async fn blocked_peers(&self) -> Vec<PeerId> {
        self.inner.net.blocked_peers().await
    }

    pub async fn stat(&self) -> Result<Stat, NodeError> {
        let (usage, roots, cache_used, held_for_others) = self
            .inner
            .store
            .run(|store| {
                let usage = store.usage()?;
                Ok((usage, store.roots(), store.cache_usage(), store.held_for_others()))
            })
            .await?;
        let pinned_roots = roots.iter().filter(|r| r.kind == PinKind::Pinned).count();
        let records = self.inner.net.record_counts().await;
        Ok(Stat {
            peer_id: self.peer_id(),
            data_dir: self.store().dir().to_path_buf(),
            listen_addrs: self.inner.net.listen_addrs_now(),
            peers: self.inner.net.connected_now(),
            blocks: usage.blocks,
            bytes: usage.bytes,
            pinned_roots,
            cached_roots: roots.len() - pinned_roots,
            cache_used,
            cache_limit: self.store().options().cache_limit,
            held_for_others,
            replica_quota: self.inner.replica_quota,
            blocks_served: self.inner.blocks.blocks_served(),
            stream_blocks_held: self.inner.blocks.stream_blocks_held(),
            stream_blocks_limit: crate::net::shares::STREAM_BLOCKS
                + crate::net::shares::RESERVE_BLOCKS,
            block_streams: self.inner.net.lanes().active().total(),
            provider_records: records.providers,
            delete_records: records.deletes,
        })
    }
}
