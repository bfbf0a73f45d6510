//! Discovery: who holds a root. A round asks the connected peers
//! XOR-closest to the root, at most [`CONNECTED_PROBES`] of them, `Have` for
//! it (small networks, and peers the DHT has not spread to yet) and looks
//! the root's provider records up in the DHT, feeding what it finds into a
//! [`ProviderSet`]. A download runs rounds on demand ([`discover`]); a
//! delete or `providers` runs one ([`find_holders`]), which asks the
//! providers the DHT names `Have` too.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use cid::Cid;
use libp2p::{PeerId, kad::KBucketKey};

use crate::net::{
    behaviour::provider_key,
    blocks::rpc_have,
    event_loop::{LookupCost, NetHandle},
    providers::ProviderSet,
};

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
    let cost = set.cost_counter();
    let ask_connected = async {
        let connected = closest_connected(net, root).await;
        holders_among(net, connected, root, cost, |peer| set.add(peer)).await;
    };
    futures::join!(ask_connected, dht_providers(net, root, cost, |peer| set.add(peer)));
}

/// Connected peers asked `Have` by a discovery round: those closest to the
/// root. Copies are placed on the peers closest to the root, so a connected
/// holder is most likely among them; asking every connected peer would
/// cost a request to each (hundreds, in a large network: `bench dht`).
pub const CONNECTED_PROBES: usize = 8;

/// The connected peers (at most [`CONNECTED_PROBES`]) XOR-closest to `root`.
pub async fn closest_connected(net: &NetHandle, root: Cid) -> Vec<PeerId> {
    let target = KBucketKey::new(provider_key(&root));
    let mut connected: Vec<PeerId> = net.peers().await.into_iter().map(|p| p.peer_id).collect();
    connected.sort_by_cached_key(|p| target.distance(&KBucketKey::from(*p)));
    connected.truncate(CONNECTED_PROBES);
    connected
}

/// Looks the provider records of `root` up in the DHT, for at most
/// [`LOOKUP_TIMEOUT`], handing each provider found to `found` and counting
/// the requests in `cost`.
pub async fn dht_providers(
    net: &NetHandle,
    root: Cid,
    cost: &Arc<LookupCost>,
    mut found: impl FnMut(PeerId),
) {
    let mut providers = net.find_providers(root, cost.clone()).await;
    let deadline = tokio::time::sleep(LOOKUP_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            peer = providers.recv() => match peer {
                Some(peer) => found(peer),
                None => break,
            },
            _ = &mut deadline => break,
        }
    }
}

/// How many `Have` probes one round sends at once.
const PROBES_AT_ONCE: usize = 16;

/// Hands to `found`, as each answers, the peers among `peers` that answer
/// within [`HAVE_TIMEOUT`] that they hold `root` (a get starts on the first
/// one, not once the slowest has answered); [`PROBES_AT_ONCE`] asked at a
/// time, each counted in `cost`.
async fn holders_among(
    net: &NetHandle,
    peers: impl IntoIterator<Item = PeerId>,
    root: Cid,
    cost: &LookupCost,
    mut found: impl FnMut(PeerId),
) {
    use futures::StreamExt;
    let probes = peers.into_iter().map(|peer| async move {
        cost.add_probes(1);
        let present = rpc_have(net, peer, vec![root], HAVE_TIMEOUT).await;
        (present.as_deref() == Some(&[true])).then_some(peer)
    });
    let mut answers = futures::stream::iter(probes).buffer_unordered(PROBES_AT_ONCE);
    while let Some(answer) = answers.next().await {
        if let Some(peer) = answer {
            found(peer);
        }
    }
}

/// One discovery round for `root`, collected: the peers that hold it.
///
/// Every peer listed answered, just now, that it holds the root: DHT
/// records outlive the nodes that published them, so the providers found
/// there are asked like the connected peers, each once.
pub async fn find_holders(net: &NetHandle, root: Cid) -> Vec<PeerId> {
    let mut candidates = std::collections::HashSet::new();
    let cost = Arc::default();
    let (connected, ()) = futures::join!(
        closest_connected(net, root),
        dht_providers(net, root, &cost, |peer| {
            candidates.insert(peer);
        })
    );
    candidates.extend(connected);
    let mut holders = Vec::new();
    holders_among(net, candidates, root, &cost, |peer| holders.push(peer)).await;
    holders
}
