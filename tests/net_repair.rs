//! Repair, leases and deletes that stay deleted, with real nodes on
//! loopback (port 0) and short intervals. Each test is bounded by a
//! timeout; conditions are polled, never slept for.

mod net_support;
use net_support::{Sink, data, store};

use std::{io::Cursor, path::Path, time::Duration};

use cid::Cid;
use dfs_p2p::{
    Ticket,
    lease::{self, DeleteRecord, Lease},
    net::codec::{ErrorCode, Request, Response},
    node::{Node, NodeConfig},
    ticket::TicketOrCid,
};
use libp2p::{Multiaddr, PeerId};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tempfile::TempDir;

const CHUNK: usize = 64 * 1024;
const REPAIR: Duration = Duration::from_secs(1);
const TEST_TIMEOUT: Duration = Duration::from_secs(240);
/// How long a condition the repair loop should bring about may take.
const SETTLE: Duration = Duration::from_secs(60);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn run<F: std::future::Future<Output = ()>>(body: F) -> impl std::future::Future<Output = ()> {
    init_logs();
    async move { tokio::time::timeout(TEST_TIMEOUT, body).await.expect("test timed out") }
}

fn config(dir: &Path, bootstrap: Vec<Multiaddr>, lease: Duration) -> NodeConfig {
    let mut c = NodeConfig::new(dir.to_path_buf());
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    c.bootstrap = bootstrap;
    c.replicas = 3;
    c.chunk_size = CHUNK;
    c.repair_interval = REPAIR;
    c.lease = lease;
    c
}

struct TestNode {
    node: Node,
    addr: Multiaddr,
    dir: TempDir,
}

impl TestNode {
    async fn start(dir: TempDir, bootstrap: Vec<Multiaddr>, lease: Duration) -> TestNode {
        let node = Node::start(config(dir.path(), bootstrap, lease)).await.unwrap();
        let addr = node.listen_addrs().await.into_iter().next().unwrap();
        if !node.net().listen_addrs_now().is_empty() {
            node.wait_for_peers(1, Duration::from_secs(20)).await;
        }
        TestNode { node, addr, dir }
    }

    fn holds(&self, root: &Cid) -> bool {
        store(&self.node).root_info(root).is_some_and(|i| i.pinned())
    }

    fn id(&self) -> PeerId {
        self.node.peer_id()
    }

    /// Stops the node; its directory (and so its store) is kept.
    async fn stop(self) -> TempDir {
        self.node.shutdown().await;
        self.dir
    }
}

/// `n` nodes, all bootstrapping through the first.
async fn network(n: usize, lease: Duration) -> Vec<TestNode> {
    let first = TestNode::start(tempfile::tempdir().unwrap(), vec![], lease).await;
    let mut nodes = vec![first];
    for _ in 1..n {
        let addr = nodes[0].addr.clone();
        nodes.push(TestNode::start(tempfile::tempdir().unwrap(), vec![addr], lease).await);
    }
    nodes
}

async fn put(node: &Node, bytes: &[u8]) -> Ticket {
    let report = node
        .put(Box::new(Cursor::new(bytes.to_vec())), None, Some(bytes.len() as u64), None)
        .await
        .unwrap();
    assert_eq!(report.copies, 3, "{:?}", report.failed);
    report.ticket
}

async fn get(node: &Node, ticket: &Ticket) -> Vec<u8> {
    let sink = Sink::default();
    node.get(ticket.clone(), Box::new(sink.clone()), None).await.unwrap();
    std::mem::take(&mut *sink.0.lock().unwrap())
}

fn holders(nodes: &[TestNode], root: &Cid) -> Vec<PeerId> {
    nodes.iter().filter(|n| n.holds(root)).map(TestNode::id).collect()
}

/// Polls until `done` holds, for at most `within`.
async fn until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `rounds` repair rounds on every node, one node after the other.
async fn repair_rounds(nodes: &[TestNode], rounds: usize) {
    for _ in 0..rounds {
        for n in nodes {
            n.node.repair_round().await;
        }
    }
}

async fn stop_where(nodes: &mut Vec<TestNode>, peers: &[PeerId]) -> Vec<TempDir> {
    let mut stopped = Vec::new();
    let (gone, kept): (Vec<_>, Vec<_>) = nodes.drain(..).partition(|n| peers.contains(&n.id()));
    *nodes = kept;
    for node in gone {
        stopped.push(node.stop().await);
    }
    stopped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_holders_are_replaced_and_the_file_outlives_its_first_holders() {
    run(async {
        let day = Duration::from_secs(86400);
        let mut nodes = network(10, day).await;
        let owner = nodes[1].id();
        let bytes = data(6 * CHUNK + 17, 1);
        let ticket = put(&nodes[1].node, &bytes).await;
        let root = ticket.root;
        let first = holders(&nodes, &root);
        assert_eq!(first.len(), 3, "{first:?}");
        // The status of a node that holds nothing: 3 holders, and no
        // target (holders tell it to owners only); the owner's: 3 of 3.
        let outsider = nodes.iter().find(|n| !first.contains(&n.id())).unwrap();
        let health = outsider.node.status(TicketOrCid::Cid(root)).await;
        assert_eq!((health.holders.len(), health.target), (3, 0), "{health:?}");
        let health = nodes[1].node.status(TicketOrCid::Cid(root)).await;
        assert_eq!((health.holders.len(), health.target), (3, 3), "{health:?}");

        // Two holders other than the owner leave for good.
        let leaving: Vec<PeerId> = first.iter().copied().filter(|p| *p != owner).collect();
        stop_where(&mut nodes, &leaving).await;
        until(SETTLE, "three holders again", || holders(&nodes, &root).len() == 3).await;
        let repaired = holders(&nodes, &root);
        for node in nodes.iter().filter(|n| n.holds(&root) && n.id() != owner) {
            let info = store(&node.node).root_info(&root).unwrap();
            assert_eq!(info.owners, vec![owner], "a repaired copy keeps its owner");
            assert_eq!(info.leases[0].owner(), owner);
        }
        // The owner is told of the repair (a stranger would not be).
        let owner_node = nodes.iter().find(|n| n.id() == owner).unwrap();
        let health = owner_node.node.status(TicketOrCid::Cid(root)).await;
        assert_eq!(health.holders.len(), 3, "{health:?}");
        assert!(health.last_repair > 0, "{health:?}");

        // Then the owner goes too: the others keep the file at 3.
        stop_where(&mut nodes, &[owner]).await;
        until(SETTLE, "three holders without the owner", || {
            let now = holders(&nodes, &root);
            now.len() == 3 && !now.iter().any(|p| first.contains(p))
        })
        .await;
        // A node that never held it gets it from holders that were not
        // there at the put.
        let reader = nodes.iter().find(|n| !n.holds(&root)).unwrap();
        assert_eq!(get(&reader.node, &ticket).await, bytes);
        assert!(repaired.iter().filter(|p| **p != owner).count() >= 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_minute_of_churn_every_file_has_its_copies_and_can_be_read() {
    run(async {
        let day = Duration::from_secs(86400);
        let mut nodes = network(12, day).await;
        let mut rng = StdRng::seed_from_u64(15);
        let mut files = Vec::new();
        for i in 0..4u64 {
            let bytes = data(3 * CHUNK + i as usize, 100 + i);
            let from = rng.random_range(1..nodes.len());
            files.push((put(&nodes[from].node, &bytes).await, bytes));
        }
        // A minute: every 5 s a node leaves without warning and a new one
        // joins through a node still up.
        let started = tokio::time::Instant::now();
        let mut stopped = 0;
        while started.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let leaving = nodes[rng.random_range(0..nodes.len())].id();
            stop_where(&mut nodes, &[leaving]).await;
            stopped += 1;
            let through = nodes[rng.random_range(0..nodes.len())].addr.clone();
            let joined = TestNode::start(tempfile::tempdir().unwrap(), vec![through], day).await;
            nodes.push(joined);
        }
        assert!(stopped >= 10);
        for (ticket, _) in &files {
            let root = ticket.root;
            until(SETTLE, "every file at three copies", || holders(&nodes, &root).len() >= 3).await;
        }
        let reader =
            TestNode::start(tempfile::tempdir().unwrap(), vec![nodes[0].addr.clone()], day).await;
        for (ticket, bytes) in &files {
            assert_eq!(&get(&reader.node, ticket).await, bytes);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_offline_during_the_delete_drops_its_copy_when_it_returns() {
    run(async {
        let day = Duration::from_secs(86400);
        let mut nodes = network(6, day).await;
        let owner = nodes[1].node.clone();
        let ticket = put(&owner, &data(4 * CHUNK, 7)).await;
        let root = ticket.root;
        let away = holders(&nodes, &root).into_iter().find(|p| *p != owner.peer_id()).unwrap();
        let dir = stop_where(&mut nodes, &[away]).await.pop().unwrap();

        let report = owner.delete(TicketOrCid::Cid(root)).await.unwrap();
        assert!(report.local);
        assert!(report.record.is_ok(), "{:?}", report.record);
        until(SETTLE, "no copy on the nodes up", || holders(&nodes, &root).is_empty()).await;

        // It returns, with its copy, and runs its rounds: the delete record
        // makes it drop the copy instead of repairing it.
        let back = TestNode::start(dir, vec![nodes[0].addr.clone()], day).await;
        assert_eq!(back.id(), away);
        nodes.push(back);
        until(SETTLE, "the returning holder drops its copy", || holders(&nodes, &root).is_empty())
            .await;
        repair_rounds(&nodes, 2).await;
        assert!(holders(&nodes, &root).is_empty(), "a copy came back");
        let health = nodes[0].node.status(TicketOrCid::Cid(root)).await;
        assert!(health.holders.is_empty(), "{health:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_live_while_their_owner_renews_and_go_when_it_stops() {
    run(async {
        let lease = Duration::from_secs(6);
        let mut nodes = network(5, lease).await;
        let owner = nodes[1].id();
        let ticket = put(&nodes[1].node, &data(2 * CHUNK, 9)).await;
        let root = ticket.root;
        let first_lease = nodes
            .iter()
            .find(|n| n.holds(&root) && n.id() != owner)
            .map(|n| store(&n.node).root_info(&root).unwrap().leases[0].clone())
            .unwrap();
        // Past the lease the put granted: the owner renewed it meanwhile.
        until(Duration::from_secs(30), "the first lease ran out", || {
            lease::unix_secs() > first_lease.expires + 1
        })
        .await;
        assert_eq!(holders(&nodes, &root).len(), 3, "copies went while the owner renews");
        for n in nodes.iter().filter(|n| n.holds(&root) && n.id() != owner) {
            let now = &store(&n.node).root_info(&root).unwrap().leases[0];
            assert!(now.expires > first_lease.expires, "not renewed");
        }
        // The owner stops: nobody renews (repair hands the lease on as it
        // is), so every copy is released.
        stop_where(&mut nodes, &[owner]).await;
        until(SETTLE, "every copy released", || holders(&nodes, &root).is_empty()).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_leases_and_a_strangers_delete_are_refused() {
    run(async {
        let day = Duration::from_secs(86400);
        let nodes = network(6, day).await;
        let owner = &nodes[1];
        let bytes = data(3 * CHUNK, 11);
        let ticket = put(&owner.node, &bytes).await;
        let root = ticket.root;
        let stranger = nodes.iter().find(|n| !n.holds(&root) && n.id() != owner.id()).unwrap();
        let victim = nodes.iter().find(|n| !n.holds(&root) && n.id() != stranger.id()).unwrap();
        let holder = nodes.iter().find(|n| n.holds(&root) && n.id() != owner.id()).unwrap();
        let real = store(&holder.node).root_info(&root).unwrap().leases[0].clone();
        let (blocks, size) = store(&holder.node).dag_stats(&root).unwrap();

        let ask = |lease: Vec<u8>| {
            let request = Request::Replicate { root, blocks, bytes: size, lease };
            stranger.node.net().request(victim.id(), request, Duration::from_secs(30))
        };
        // The owner's lease with one byte changed (its count of copies).
        let mut tampered = real.encode();
        tampered[37] = 9;
        let answer = ask(tampered).await.unwrap();
        assert!(
            matches!(&answer, Response::Error { code: ErrorCode::Refused, message }
                if message.contains("signature")),
            "{answer:?}"
        );
        // A lease of the stranger's own for another root.
        let other = dfs_p2p::block::cid_of(dfs_p2p::block::DAG_CBOR, b"another root");
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let elsewhere = Lease::issue(&keypair, other, 3, day).unwrap().encode();
        let answer = ask(elsewhere).await.unwrap();
        assert!(
            matches!(&answer, Response::Error { code: ErrorCode::BadRequest, .. }),
            "{answer:?}"
        );
        // A lease that ran out.
        let old = Lease::issue_at(&keypair, root, 3, 1_000, 2_000).unwrap().encode();
        let answer = ask(old).await.unwrap();
        assert!(matches!(&answer, Response::Error { code: ErrorCode::Refused, .. }), "{answer:?}");
        assert!(!victim.holds(&root));

        // The stranger deletes: its own delete record names itself, not the
        // owner, and its Delete is refused; the copies stay through repairs.
        let report = stranger.node.delete(TicketOrCid::Cid(root)).await.unwrap();
        assert!(report.remote_deleted.is_empty(), "{report:?}");
        assert_eq!(report.remote_refused.len(), 3, "{report:?}");
        // A record signed by the stranger under the owner's key is refused
        // by the stranger's own store before it goes anywhere.
        let forged = DeleteRecord::issue(&keypair, root, day).unwrap().encode();
        let key = DeleteRecord::dht_key(&root, &owner.id());
        assert!(stranger.node.net().put_record(key, forged, day).await.is_err());
        repair_rounds(&nodes, 3).await;
        assert_eq!(holders(&nodes, &root).len(), 3);
        assert_eq!(get(&stranger.node, &ticket).await, bytes);
    })
    .await
}
