//! The peer network end to end: several real nodes on loopback (port 0),
//! each test bounded by a timeout, conditions polled, never slept for.

mod net_support;
use net_support::{ReservedPort, Sink, data, store};

use std::{
    io::{self, Cursor, Write},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use dfs_p2p::{
    Ticket,
    node::{GetReport, Node, NodeConfig, NodeError},
};
use libp2p::{Multiaddr, PeerId};
use tempfile::TempDir;

const CHUNK: usize = 64 * 1024;
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_test_writer()
        .try_init();
}

fn config(dir: &Path, bootstrap: Vec<Multiaddr>, replicas: usize) -> NodeConfig {
    let mut c = NodeConfig::new(dir.to_path_buf());
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    c.bootstrap = bootstrap;
    c.replicas = replicas;
    c.chunk_size = CHUNK;
    c
}

/// A node in its own temporary directory.
struct TestNode {
    node: Node,
    addr: Multiaddr,
    _dir: TempDir,
}

async fn start(bootstrap: Vec<Multiaddr>, replicas: usize) -> TestNode {
    start_in(tempfile::tempdir().unwrap(), bootstrap, replicas).await
}

/// A node in `dir`, which may hold files for it already.
async fn start_in(dir: TempDir, bootstrap: Vec<Multiaddr>, replicas: usize) -> TestNode {
    let node = Node::start(config(dir.path(), bootstrap, replicas)).await.unwrap();
    let addr = node.listen_addrs().await.into_iter().next().unwrap();
    TestNode { node, addr, _dir: dir }
}

/// Starts `n` nodes that all bootstrap to the first one.
async fn star(n: usize, replicas: usize) -> Vec<TestNode> {
    let first = start(vec![], replicas).await;
    let mut nodes = vec![first];
    for _ in 1..n {
        let addr = nodes[0].addr.clone();
        nodes.push(start(vec![addr], replicas).await);
    }
    for (i, n) in nodes.iter().enumerate() {
        let want = if i == 0 { nodes.len() - 1 } else { 1 };
        assert!(n.node.wait_for_peers(want, Duration::from_secs(20)).await >= want);
    }
    nodes
}

async fn put(node: &Node, bytes: &[u8]) -> dfs_p2p::node::PutReport {
    node.put(
        Box::new(Cursor::new(bytes.to_vec())),
        Some("f".into()),
        Some(bytes.len() as u64),
        None,
    )
    .await
    .unwrap()
}

async fn get(node: &Node, ticket: &Ticket) -> Result<(Vec<u8>, GetReport), NodeError> {
    let sink = Sink::default();
    let report = node.get(ticket.clone(), Box::new(sink.clone()), None).await?;
    let bytes = std::mem::take(&mut *sink.0.lock().unwrap());
    Ok((bytes, report))
}

/// Blocks of the DAG under `root` in `node`'s store.
fn dag_blocks(node: &Node, root: &cid::Cid) -> u64 {
    let mut n = 0;
    store(node)
        .walk(root, &mut |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
    n
}

fn run<F: std::future::Future<Output = ()>>(body: F) -> impl std::future::Future<Output = ()> {
    init_logs();
    async move { tokio::time::timeout(TEST_TIMEOUT, body).await.expect("test timed out") }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_on_one_get_on_another() {
    run(async {
        let nodes = star(3, 1).await;
        let bytes = data(5 * CHUNK + 123, 1);
        let report = put(&nodes[1].node, &bytes).await;
        assert_eq!(report.copies, 1);
        assert_eq!(report.wanted, 1);
        let (got, get_report) = get(&nodes[2].node, &report.ticket).await.unwrap();
        assert_eq!(got, bytes);
        assert_eq!(get_report.size, bytes.len() as u64);
        assert_eq!(get_report.from_network, dag_blocks(&nodes[1].node, &report.ticket.root));
        // Now cached and provided by the getter, and local on a second get.
        let (again, second) = get(&nodes[2].node, &report.ticket).await.unwrap();
        assert_eq!(again, bytes);
        assert_eq!(second.from_network, 0);
        let providers = nodes[0].node.providers(report.ticket.root).await.unwrap();
        assert!(providers.contains(&nodes[1].node.peer_id()));
        assert!(providers.contains(&nodes[2].node.peer_id()), "a completed get provides");
        let up = nodes[1].node.stat().await.unwrap();
        assert_eq!((up.pinned_roots, up.cached_roots), (1, 0));
        assert!(up.peers >= 1 && up.blocks > 0 && !up.listen_addrs.is_empty());
        let down = nodes[2].node.stat().await.unwrap();
        assert_eq!((down.pinned_roots, down.cached_roots), (0, 1));
        assert_eq!(down.cache_used, nodes[2].node.ls().await.unwrap()[0].size);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_places_two_copies_on_other_peers() {
    run(async {
        // More nodes than replicas, so that which nodes hold one matters.
        let nodes = star(6, 3).await;
        let bytes = data(3 * CHUNK, 2);
        // The hub is connected to every other node: all are candidates.
        let report = put(&nodes[0].node, &bytes).await;
        assert_eq!(report.copies, 3);
        assert_eq!(report.wanted, 3);
        assert!(report.counts_local, "the putter listens: its copy is one of the three");
        let root = report.ticket.root;

        // The other two copies are on two of the other peers (which two, a
        // fresh salted key decides: `replicas::placement`).
        let holders = nodes[1..].iter().filter(|n| store(&n.node).root_info(&root).is_some());
        assert_eq!(holders.count(), 2, "copies not on two other peers");
        for n in &nodes[1..] {
            let Some(info) = store(&n.node).root_info(&root) else { continue };
            assert_eq!(info.kind, dfs_p2p::store::PinKind::Pinned);
            assert_eq!(info.owners, [nodes[0].node.peer_id()]);
            assert!(!info.local);
        }
    })
    .await
}

/// Blocks each node has served so far.
async fn served(nodes: &[TestNode]) -> Vec<u64> {
    let mut counts = Vec::new();
    for n in nodes {
        counts.push(n.node.stat().await.unwrap().blocks_served);
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_get_takes_blocks_from_several_providers() {
    run(async {
        // Three providers: the putter and its two replicas.
        let providers = star(3, 3).await;
        let bytes = data(160 * CHUNK, 14);
        let report = put(&providers[0].node, &bytes).await;
        assert_eq!(report.copies, 3);
        let root = report.ticket.root;
        for p in &providers {
            assert!(store(&p.node).is_complete(&root));
        }
        // A fresh node connected to all three.
        let getter = start(providers.iter().map(|p| p.addr.clone()).collect(), 1).await;
        assert!(getter.node.wait_for_peers(3, Duration::from_secs(20)).await >= 3);
        // The replicas were pulled with the same messages: count from here.
        let before = served(&providers).await;
        let (got, r) = get(&getter.node, &report.ticket).await.unwrap();
        assert_eq!(got, bytes);
        assert_eq!(r.from_network, dag_blocks(&providers[0].node, &root));
        let after = served(&providers).await;
        let by_provider: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        assert_eq!(by_provider.iter().sum::<u64>(), r.from_network, "{by_provider:?}");
        // Shared out, not one provider with a few strays from another: at
        // least two each sent a tenth of the blocks or more.
        let sharing = by_provider.iter().filter(|&&n| n * 10 >= r.from_network).count();
        assert!(
            sharing >= 2,
            "blocks served by each provider: {by_provider:?} of {}",
            r.from_network
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_of_eight_finds_content_through_the_dht() {
    run(async {
        let mut nodes = vec![start(vec![], 1).await];
        for i in 1..8 {
            let prev = nodes[i - 1].addr.clone();
            let n = start(vec![prev], 1).await;
            assert!(n.node.wait_for_peers(1, Duration::from_secs(20)).await >= 1);
            nodes.push(n);
        }
        let bytes = data(2 * CHUNK + 7, 3);
        let report = put(&nodes[0].node, &bytes).await;
        let last = &nodes[7].node;
        // The getter knows only its neighbour at first.
        let (got, r) = get(last, &report.ticket).await.unwrap();
        assert_eq!(got, bytes);
        assert!(r.from_network > 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_survives_its_uploader() {
    run(async {
        let mut nodes = star(4, 3).await;
        let bytes = data(6 * CHUNK, 4);
        let report = put(&nodes[1].node, &bytes).await;
        assert_eq!(report.copies, 3);
        let uploader = nodes.remove(1);
        uploader.node.shutdown().await;
        // A node without a replica fetches it from the replicas.
        let getter = nodes
            .iter()
            .find(|n| store(&n.node).root_info(&report.ticket.root).is_none())
            .expect("one node holds no replica");
        let (got, r) = get(&getter.node, &report.ticket).await.unwrap();
        assert_eq!(got, bytes);
        assert!(r.from_network > 0);
    })
    .await
}

/// An output that fails once it has taken `limit` bytes.
struct FailAfter {
    limit: usize,
    taken: usize,
}

impl Write for FailAfter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.taken + buf.len() > self.limit {
            return Err(io::Error::other("interrupted on purpose"));
        }
        self.taken += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_get_resumes_with_only_missing_blocks() {
    run(async {
        let nodes = star(2, 1).await;
        let bytes = data(120 * CHUNK, 5);
        let report = put(&nodes[0].node, &bytes).await;
        let total = dag_blocks(&nodes[0].node, &report.ticket.root);
        let getter = &nodes[1].node;
        let out = FailAfter { limit: 10 * CHUNK, taken: 0 };
        let err = getter.get(report.ticket.clone(), Box::new(out), None).await.unwrap_err();
        assert!(err.to_string().contains("interrupted on purpose"), "{err}");
        let have = store(getter).usage().unwrap().blocks;
        assert!(have >= 10 && have < total, "{have} of {total}");
        let (got, r) = get(getter, &report.ticket).await.unwrap();
        assert_eq!(got, bytes);
        assert_eq!(r.from_network, total - have);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_provider_is_a_clear_error_in_bounded_time() {
    run(async {
        let nodes = star(2, 1).await;
        // Content that exists nowhere on the network.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let imported = dfs_p2p::store::run_blocking("a scratch import", move || {
            let store = dfs_p2p::store::Store::open(path, dfs_p2p::store::StoreOptions::default())?;
            dfs_p2p::import::import(&store, Cursor::new(data(CHUNK, 6)), &Default::default(), None)
        })
        .await
        .unwrap();
        let started = std::time::Instant::now();
        let err = get(&nodes[1].node, &imported.ticket).await.unwrap_err();
        assert!(matches!(err, NodeError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("no provider found"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(60));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_killed_mid_transfer_is_replaced() {
    run(async {
        let mut nodes = star(4, 3).await;
        let bytes = data(48 * CHUNK, 7);
        let report = put(&nodes[0].node, &bytes).await;
        assert_eq!(report.copies, 3);
        let getter_index = (1..4)
            .find(|&i| store(&nodes[i].node).root_info(&report.ticket.root).is_none())
            .unwrap();
        let getter = nodes[getter_index].node.clone();
        // Kill a provider once a quarter of the file is out, and hold the
        // output until it is gone.
        let (kill_tx, kill_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let fired = Arc::new(AtomicBool::new(false));
        let done_rx = Mutex::new(done_rx);
        let total = bytes.len() as u64;
        let progress: dfs_p2p::node::ProgressFn = Arc::new(move |done, _| {
            if done >= total / 4 && !fired.swap(true, Ordering::SeqCst) {
                kill_tx.send(()).unwrap();
                done_rx.lock().unwrap().recv().unwrap();
            }
        });
        let victim = nodes.remove(0);
        let killer = tokio::spawn(async move {
            tokio::task::spawn_blocking(move || kill_rx.recv()).await.unwrap().unwrap();
            victim.node.shutdown().await;
            done_tx.send(()).unwrap();
        });
        let sink = Sink::default();
        let r = getter.get(report.ticket.clone(), Box::new(sink.clone()), Some(progress)).await;
        let r = r.unwrap();
        killer.await.unwrap();
        assert_eq!(*sink.0.lock().unwrap(), bytes);
        assert!(r.from_network > 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_deletes_replicas() {
    run(async {
        let nodes = star(4, 3).await;
        let bytes = data(2 * CHUNK, 8);
        let report = put(&nodes[0].node, &bytes).await;
        assert_eq!(report.copies, 3);
        let root = report.ticket.root;
        let holders: Vec<_> = nodes[1..]
            .iter()
            .filter(|n| store(&n.node).root_info(&root).is_some())
            .map(|n| n.node.peer_id())
            .collect();
        let stranger =
            nodes[1..].iter().find(|n| store(&n.node).root_info(&root).is_none()).unwrap();
        let refused = stranger.node.delete(dfs_p2p::ticket::TicketOrCid::Cid(root)).await.unwrap();
        assert!(!refused.local);
        assert!(refused.remote_deleted.is_empty());
        for h in &holders {
            let (_, reason) = refused
                .remote_refused
                .iter()
                .find(|(p, _)| p == h)
                .unwrap_or_else(|| panic!("{h} not asked: {refused:?}"));
            assert!(reason.contains("only its owners"), "{reason}");
        }
        for n in &nodes {
            if holders.contains(&n.node.peer_id()) {
                assert!(store(&n.node).root_info(&root).is_some());
            }
        }
        let deleted = nodes[0]
            .node
            .delete(dfs_p2p::ticket::TicketOrCid::Ticket(report.ticket))
            .await
            .unwrap();
        assert!(deleted.local);
        let mut got = deleted.remote_deleted.clone();
        got.sort();
        let mut want = holders.clone();
        want.sort();
        assert_eq!(got, want, "{deleted:?}");
        for n in &nodes {
            assert!(store(&n.node).root_info(&root).is_none());
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_two_owners_goes_only_when_both_delete() {
    run(async {
        // Two uploaders that share a convergence secret put the same file,
        // so both ask the third node to replicate the same root.
        let holder = start(vec![], 3).await;
        let first = start(vec![holder.addr.clone()], 3).await;
        let second_dir = tempfile::tempdir().unwrap();
        let secret = "convergence.secret";
        std::fs::copy(first._dir.path().join(secret), second_dir.path().join(secret)).unwrap();
        let bootstrap = vec![holder.addr.clone(), first.addr.clone()];
        let second = start_in(second_dir, bootstrap, 3).await;
        for node in [&first.node, &second.node] {
            assert!(node.wait_for_peers(2, Duration::from_secs(20)).await >= 2);
        }
        let bytes = data(2 * CHUNK, 12);
        let one = put(&first.node, &bytes).await;
        let two = put(&second.node, &bytes).await;
        assert_eq!(one.ticket.root, two.ticket.root);
        assert_eq!((one.copies, two.copies), (3, 3));
        let root = one.ticket.root;
        let info = store(&holder.node).root_info(&root).unwrap();
        let mut owners = info.owners.clone();
        owners.sort();
        let mut want = vec![first.node.peer_id(), second.node.peer_id()];
        want.sort();
        assert_eq!(owners, want);

        // The first owner's delete drops only its own pin.
        let deleted = first.node.delete(dfs_p2p::ticket::TicketOrCid::Cid(root)).await.unwrap();
        assert!(deleted.remote_deleted.contains(&holder.node.peer_id()), "{deleted:?}");
        let info = store(&holder.node).root_info(&root).expect("kept for the second owner");
        assert_eq!(info.owners, [second.node.peer_id()]);
        let (got, _) = get(&holder.node, &one.ticket).await.unwrap();
        assert_eq!(got, bytes);

        // The second owner's delete removes the replica.
        let deleted = second.node.delete(dfs_p2p::ticket::TicketOrCid::Cid(root)).await.unwrap();
        assert!(deleted.remote_deleted.contains(&holder.node.peer_id()), "{deleted:?}");
        assert!(store(&holder.node).root_info(&root).is_none());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_gets_across_three_nodes() {
    run(async {
        let nodes = star(3, 1).await;
        let mut files = Vec::new();
        for i in 0..20u64 {
            let owner = (i % 3) as usize;
            let bytes = data(CHUNK * (1 + (i as usize % 4)) + i as usize, 100 + i);
            let report = put(&nodes[owner].node, &bytes).await;
            files.push((owner, bytes, report.ticket));
        }
        let gets = files.into_iter().map(|(owner, bytes, ticket)| {
            let getter = nodes[(owner + 1) % 3].node.clone();
            async move {
                let (got, _) = get(&getter, &ticket).await.unwrap();
                assert_eq!(got, bytes);
            }
        });
        futures::future::join_all(gets).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_without_peer_id_by_dns_and_retried_when_down() {
    run(async {
        // A port nobody listens on yet, and no other test can take.
        let reserved = ReservedPort::new();
        let late_addr: Multiaddr =
            format!("/dns4/localhost/tcp/{}", reserved.port).parse().unwrap();
        let b = start(vec![late_addr], 1).await;
        assert_eq!(b.node.wait_for_peers(1, Duration::from_millis(200)).await, 0);
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), vec![], 1);
        c.listen = vec![reserved.multiaddr().parse().unwrap()];
        let a = Node::start(c).await.unwrap();
        assert!(b.node.wait_for_peers(1, Duration::from_secs(30)).await >= 1);
        let peers = b.node.peers().await;
        assert!(peers.iter().any(|p| p.peer_id == a.peer_id()));
        let bytes = data(CHUNK, 9);
        let report = put(&a, &bytes).await;
        assert_eq!(get(&b.node, &report.ticket).await.unwrap().0, bytes);
    })
    .await
}

/// A node whose bootstrap node is down when it starts joins once that node
/// is up: the join that nobody answered is made again, and what the node
/// put meanwhile reaches the DHT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_bootstrap_is_down_joins_once_it_is_up() {
    run(async {
        // The hub's port, which no other test can take while it is down.
        let reserved = ReservedPort::new();
        let listen: Multiaddr = reserved.multiaddr().parse().unwrap();
        let hub_config = |dir: &Path| {
            let mut c = config(dir, vec![], 1);
            c.listen = vec![listen.clone()];
            c
        };
        let hub_dir = tempfile::tempdir().unwrap();
        let hub = Node::start(hub_config(hub_dir.path())).await.unwrap();
        let hub_id = hub.peer_id();
        hub.shutdown().await;

        let bootstrap = listen.clone().with(libp2p::multiaddr::Protocol::P2p(hub_id));
        let a = start(vec![bootstrap], 1).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while a.node.net().bootstrap_now().iter().all(|b| b.failures == 0) {
            assert!(std::time::Instant::now() < deadline, "the bootstrap dial never failed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let bytes = data(CHUNK, 11);
        let report = put(&a.node, &bytes).await;
        let (root, a_id) = (report.ticket.root, a.node.peer_id());

        // The bootstrap node comes up (the store lock is released once every
        // task let go of the store).
        let hub = loop {
            match Node::start(hub_config(hub_dir.path())).await {
                Ok(hub) => break hub,
                Err(NodeError::Store(dfs_p2p::Error::InUse { .. })) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert!(a.node.wait_for_peers(1, Duration::from_secs(20)).await >= 1);

        // A node that learns of `a` from the DHT alone (see
        // `restart_provides_held_roots_again`).
        let looker = start(vec![listen.clone()], 1).await;
        looker.node.net().block_peer(a_id).await;
        assert!(looker.node.wait_for_peers(1, Duration::from_secs(20)).await >= 1);
        let (found, others) = dht_finds(&looker.node, root, a_id, Duration::from_secs(30)).await;
        assert!(
            found,
            "what the node put while its bootstrap was down is not in the DHT ({others:?})"
        );
        drop(hub);
    })
    .await
}

/// Looks `root` up in the DHT from `node` until `provider` is among the
/// providers found, or `within` has passed; returns whether it was, and
/// the providers of the last lookup.
async fn dht_finds(
    node: &Node,
    root: cid::Cid,
    provider: PeerId,
    within: Duration,
) -> (bool, Vec<PeerId>) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut found = node.net().find_providers(root, Default::default()).await;
        let mut seen = Vec::new();
        while let Ok(Some(peer)) = tokio::time::timeout_at(deadline, found.recv()).await {
            if peer == provider {
                return (true, seen);
            }
            seen.push(peer);
        }
        if tokio::time::Instant::now() >= deadline {
            return (false, seen);
        }
        // The record may still be on its way: look again shortly.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_provides_held_roots_again() {
    run(async {
        // Put while alone: no other node ever holds this provider record.
        let dir = tempfile::tempdir().unwrap();
        let a = Node::start(config(dir.path(), vec![], 1)).await.unwrap();
        let bytes = data(2 * CHUNK, 10);
        let report = put(&a, &bytes).await;
        let (root, a_id) = (report.ticket.root, a.peer_id());
        a.shutdown().await;

        // A network that never heard of the file, which the node rejoins.
        let hub = start(vec![], 1).await;
        // The store lock is released once every task let go of the store.
        let a = loop {
            match Node::start(config(dir.path(), vec![hub.addr.clone()], 1)).await {
                Ok(a) => break a,
                Err(NodeError::Store(dfs_p2p::Error::InUse { .. })) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert!(a.wait_for_peers(1, Duration::from_secs(20)).await >= 1);

        // A node that must learn of the restarted one from the DHT alone:
        // it refuses to connect to it, so neither a `Have` nor a DHT query
        // can reach it, and its lookups see only the records the hub got.
        let looker = start(vec![hub.addr.clone()], 1).await;
        looker.node.net().block_peer(a_id).await;
        assert!(looker.node.wait_for_peers(1, Duration::from_secs(20)).await >= 1);
        let connected_to_a =
            |peers: Vec<dfs_p2p::node::PeerInfo>| peers.iter().any(|p| p.peer_id == a_id);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while connected_to_a(looker.node.peers().await) {
            assert!(std::time::Instant::now() < deadline, "still connected to the blocked node");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (found, others) = dht_finds(&looker.node, root, a_id, Duration::from_secs(30)).await;
        assert!(found, "the restarted node's provider record is not in the DHT (found {others:?})");
        assert!(!connected_to_a(looker.node.peers().await), "the lookup went to the node itself");

        // And a fresh node gets the file from it.
        let getter = start(vec![hub.addr.clone()], 1).await;
        let (got, r) = get(&getter.node, &report.ticket).await.unwrap();
        assert_eq!(got, bytes);
        assert!(r.from_network > 0);
    })
    .await
}

#[test]
fn listen_error_is_clear() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), vec![], 1);
        c.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()];
        let err = Node::start(c).await.err().expect("the port is taken");
        assert!(matches!(err, NodeError::Listen { .. }), "{err}");
        assert!(err.to_string().contains("cannot listen on"), "{err}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_client_gets_and_puts_right_after_start() {
    run(async {
        let nodes = star(3, 1).await;
        let bytes = data(3 * CHUNK, 11);
        let report = put(&nodes[1].node, &bytes).await;
        // A client that does not listen, started and used at once, as a
        // one-shot `dfs-p2p get` is; bootstrapped without a peer id.
        let (entry, _) = dfs_p2p::net::event_loop::split_peer_id(nodes[0].addr.clone());
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), vec![entry.clone()], 3);
        c.listen = vec![];
        let client = Node::start(c).await.unwrap();
        assert!(client.listen_addrs().await.is_empty());
        let (got, _) = get(&client, &report.ticket).await.unwrap();
        assert_eq!(got, bytes);
        client.shutdown().await;

        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), vec![entry], 3);
        c.listen = vec![];
        let client = Node::start(c).await.unwrap();
        let uploaded = put(&client, &data(2 * CHUNK, 12)).await;
        // The client serves nobody: all three replicas live on the nodes,
        // and only they count.
        assert_eq!((uploaded.copies, uploaded.wanted), (3, 3));
        assert!(!uploaded.counts_local);
        for n in &nodes {
            assert!(store(&n.node).root_info(&uploaded.ticket.root).is_some());
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_local_block_is_fetched_again() {
    run(async {
        let nodes = star(2, 1).await;
        let bytes = data(8 * CHUNK, 13);
        let report = put(&nodes[0].node, &bytes).await;
        let getter = &nodes[1];
        get(&getter.node, &report.ticket).await.unwrap();
        // Flip a byte of one leaf on the getter's disk.
        let (_, path) = a_leaf(getter, &report.ticket.root);
        let mut block = std::fs::read(&path).unwrap();
        block[0] ^= 1;
        std::fs::write(&path, block).unwrap();
        let (got, r) = get(&getter.node, &report.ticket).await.unwrap();
        assert_eq!(got, bytes);
        assert_eq!(r.from_network, 1);
    })
    .await
}

/// A leaf of `root` in `node`'s store, and its file.
fn a_leaf(node: &TestNode, root: &cid::Cid) -> (cid::Cid, std::path::PathBuf) {
    let mut leaf = None;
    store(&node.node)
        .walk(root, &mut |c| {
            if c.codec() == dfs_p2p::block::RAW {
                leaf = Some(*c);
            }
            Ok(())
        })
        .unwrap();
    let leaf = leaf.unwrap();
    let name = leaf.to_string();
    (leaf, node._dir.path().join("blocks").join(&name[name.len() - 2..]).join(&name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_block_is_never_served_even_with_its_check_tag() {
    run(async {
        let nodes = star(2, 1).await;
        let bytes = data(4 * CHUNK, 17);
        let report = put(&nodes[0].node, &bytes).await;
        // The put tagged the block; rewriting the file in place keeps the
        // tag but not the bytes it was made for.
        let (leaf, path) = a_leaf(&nodes[0], &report.ticket.root);
        let mut block = std::fs::read(&path).unwrap();
        let mid = block.len() / 2;
        block[mid] ^= 0x40;
        std::fs::write(&path, block).unwrap();
        let err = get(&nodes[1].node, &report.ticket).await.unwrap_err();
        assert!(!err.to_string().contains('\n'), "{err}");
        // The server moved the block aside instead of serving it, and the
        // getter kept nothing under that CID.
        assert!(!store(&nodes[0].node).has(&leaf));
        assert!(!store(&nodes[1].node).has(&leaf));
        assert_eq!(std::fs::read_dir(nodes[0]._dir.path().join("corrupt")).unwrap().count(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_large_gets_from_one_provider_share_its_streams() {
    run(async {
        let nodes = star(2, 1).await;
        let mut files = Vec::new();
        for i in 0..12u64 {
            let bytes = data(40 * CHUNK, 200 + i);
            let report = put(&nodes[0].node, &bytes).await;
            files.push((bytes, report.ticket));
        }
        // 12 downloads x 32 requests in flight: more than one connection's
        // stream limit, so requests must queue, never fail.
        let gets = files.into_iter().map(|(bytes, ticket)| {
            let getter = nodes[1].node.clone();
            async move {
                let (got, _) = get(&getter, &ticket).await.unwrap();
                assert_eq!(got, bytes);
            }
        });
        futures::future::join_all(gets).await;
    })
    .await
}

/// A node publishes its provider records again on its reprovide timer, so
/// other nodes keep them past their time to live; a node that does not
/// (here: once a day) is forgotten when its records expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_records_are_published_again_before_they_expire() {
    run(async {
        const TTL: Duration = Duration::from_secs(2);
        let start_with = |bootstrap: Vec<Multiaddr>, reprovide: Duration| async move {
            let dir = tempfile::tempdir().unwrap();
            let mut c = config(dir.path(), bootstrap, 1);
            c.provider_ttl = TTL;
            c.reprovide_interval = reprovide;
            let node = Node::start(c).await.unwrap();
            let addr = node.listen_addrs().await.into_iter().next().unwrap();
            TestNode { node, addr, _dir: dir }
        };
        let keeper = start_with(vec![], Duration::from_secs(86400)).await;
        let fresh = start_with(vec![keeper.addr.clone()], Duration::from_millis(300)).await;
        let stale = start_with(vec![keeper.addr.clone()], Duration::from_secs(86400)).await;
        for n in [&fresh, &stale] {
            assert!(n.node.wait_for_peers(1, Duration::from_secs(20)).await >= 1);
        }
        // One copy each (replicas 1): only the DHT says who holds them.
        let a = put(&fresh.node, &data(64 * 1024, 41)).await.ticket.root;
        let b = put(&stale.node, &data(64 * 1024, 42)).await.ticket.root;
        let knows = |root, node: &TestNode| {
            let net = keeper.node.net().clone();
            let peer = node.node.peer_id();
            async move { net.known_providers(root).await.contains(&peer) }
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !(knows(a, &fresh).await && knows(b, &stale).await) {
            assert!(std::time::Instant::now() < deadline, "the keeper never got both records");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The stale record expires; the fresh one, published again every
        // 0.3 s, never does.
        let deadline = std::time::Instant::now() + TTL * 5;
        while knows(b, &stale).await {
            assert!(std::time::Instant::now() < deadline, "an expired record is still handed out");
            assert!(knows(a, &fresh).await, "a record published again expired");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let until = std::time::Instant::now() + TTL * 2;
        while std::time::Instant::now() < until {
            assert!(knows(a, &fresh).await, "a record published again expired");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(keeper.node.stat().await.unwrap().provider_records >= 1);
    })
    .await
}

/// A range read fetches only the blocks that cover the range, and keeps
/// them as a part cached (through a collection), so that a later get
/// fetches only the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_read_fetches_its_blocks_and_a_later_get_only_the_rest() {
    run(async {
        let nodes = star(2, 1).await;
        let bytes = data(10 * CHUNK + 5, 61);
        let ticket = put(&nodes[0].node, &bytes).await.ticket;
        let whole = dag_blocks(&nodes[0].node, &ticket.root);
        let sink = Sink::default();
        let options = dfs_p2p::node::GetOptions {
            range: Some(dfs_p2p::export::ByteRange::FromTo(3 * CHUNK as u64 - 1, 3 * CHUNK as u64)),
            ..Default::default()
        };
        let part = nodes[1].node.get_with(ticket.clone(), Box::new(sink.clone()), options).await;
        let part = part.unwrap();
        assert_eq!(*sink.0.lock().unwrap(), &bytes[3 * CHUNK - 1..=3 * CHUNK]);
        assert!(part.from_network < whole / 2, "{} of {whole} blocks", part.from_network);
        let listed = nodes[1].node.ls().await.unwrap();
        assert!(listed.iter().any(|r| r.root == ticket.root && r.partial), "{listed:?}");
        nodes[1].node.gc().await.unwrap();
        let (got, rest) = get(&nodes[1].node, &ticket).await.unwrap();
        assert_eq!(got, bytes);
        assert_eq!(rest.from_network + part.from_network, whole, "blocks fetched twice");
        assert!(!nodes[1].node.ls().await.unwrap()[0].partial);
    })
    .await
}

/// A program that ends while a get is under way (its runtime dropped, as
/// when `main` returns) ends too: the get's workers, each waiting on a
/// fetch it runs on that runtime, see it shutting down and stop, instead of
/// one of them dying in a panic of the runtime's timers and the others
/// waiting for its block, and the runtime's shutdown for them, forever.
#[test]
fn a_runtime_dropped_mid_get_shuts_down() {
    init_logs();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let nodes = rt.block_on(async {
            let nodes = star(2, 1).await;
            let bytes = data(800 * CHUNK, 11);
            let ticket = put(&nodes[0].node, &bytes).await.ticket;
            let (first, arrived) = tokio::sync::oneshot::channel();
            let first = Mutex::new(Some(first));
            let progress: dfs_p2p::node::ProgressFn = Arc::new(move |_, _| {
                if let Some(first) = first.lock().unwrap().take() {
                    let _ = first.send(());
                }
            });
            let getter = nodes[1].node.clone();
            tokio::spawn(async move {
                let _ = getter.get(ticket, Box::new(Sink::default()), Some(progress)).await;
            });
            arrived.await.unwrap();
            nodes
        });
        // The get's fetches are in flight: stop everything under them.
        drop(rt);
        drop(nodes);
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(60))
        .expect("the runtime did not shut down within 60 s of being dropped mid-get");
}
