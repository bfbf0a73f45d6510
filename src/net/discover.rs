//! Discovery: who holds a root. A round asks every connected peer `Have`
//! for the root (small networks, and peers the DHT has not spread to yet)
//! and looks the root's provider records up in the DHT, feeding what it
//! finds into a [`ProviderSet`]. A download runs rounds on demand
//! ([`discover`]); a delete or `providers` runs one ([`find_holders`]).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use cid::Cid;
use libp2p::PeerId;

use crate::net::{blocks::rpc_have, event_loop::NetHandle, providers::ProviderSet};

/// Deadline of a `Have` probe sent to a connected peer during discovery.
pub const HAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of one DHT provider lookup.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Shortest time between the starts of two discovery rounds.
pub const ROUND_INTERVAL: Duration = Duration::from_secs(1);

/// Runs discovery rounds for `set` until it is closed: the first at once
/// (for an eager set), later ones when a worker runs out of providers.
pub async fn discover(net: NetHandle, set: Arc<ProviderSet>, seed: Vec<PeerId>) {
    for peer in seed {
        set.add(peer);
    }
    if !set.round_requested() {
        set.wait_for_round_request().await;
        if set.closed() {
            return;
        }
    }
    loop {
        let started = Instant::now();
        discovery_round(&net, &set).await;
        set.round_done();
        set.wait_for_round_request().await;
        if set.closed() {
            return;
        }
        // Give the DHT time to learn (identify, bootstrap) between rounds.
        tokio::time::sleep(ROUND_INTERVAL.saturating_sub(started.elapsed())).await;
    }
}

async fn discovery_round(net: &NetHandle, set: &Arc<ProviderSet>) {
    let root = set.root();
    let ask_connected = async {
        let peers = net.peers().await;
        let probes = peers.into_iter().map(|p| {
            let net = net.clone();
            async move {
                let present = rpc_have(&net, p.peer_id, vec![root], HAVE_TIMEOUT).await;
                (present.as_deref() == Some(&[true])).then_some(p.peer_id)
            }
        });
        for peer in futures::future::join_all(probes).await.into_iter().flatten() {
            set.add(peer);
        }
    };
    let ask_dht = async {
        let mut found = net.find_providers(root).await;
        let deadline = tokio::time::sleep(LOOKUP_TIMEOUT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                peer = found.recv() => match peer {
                    Some(peer) => set.add(peer),
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
    };
    futures::join!(ask_connected, ask_dht);
}

/// One discovery round for `root`, collected: the peers that hold it.
///
/// Every peer listed answered, just now, that it holds the root: DHT
/// records outlive the nodes that published them, so a provider found
/// there is asked too.
pub async fn find_holders(net: &NetHandle, root: Cid) -> Vec<PeerId> {
    let set = ProviderSet::new(root, true);
    discovery_round(net, &set).await;
    let probes = set.peers().into_iter().map(|peer| async move {
        let present = rpc_have(net, peer, vec![root], HAVE_TIMEOUT).await;
        (present.as_deref() == Some(&[true])).then_some(peer)
    });
    futures::future::join_all(probes).await.into_iter().flatten().collect()
}
