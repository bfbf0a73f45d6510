//! Hostile peers against the real binary. The victim is a `dfs-p2p` node
//! process; the hostile peers are built here from the library (raw libp2p
//! swarms speaking the file protocol or Kademlia, sockets that never speak);
//! an honest node, in this process, fetches the victim's own file while the
//! attack runs. In every case the victim stays up, refuses what it must
//! with a reason, keeps its memory under [`MEMORY_BOUND`] and what it holds
//! for others within its quota, and the honest get completes. Each test
//! also checks that its attack landed (the victim took the records, served
//! the flood, accepted the stalled streams) before it checks the bound, and
//! waits for conditions, never for a fixed time.
//!
//! The attacks run one at a time (they share two cores).

mod cli_support;

use std::{
    collections::HashMap,
    io::Read,
    net::TcpStream,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use cid::Cid;
use cli_support::Node as Victim;
use dfs_p2p::{
    Ticket,
    block::{self, BlockBuf, DAG_CBOR, RAW},
    crypto::{self, ConvergenceSecret, Domain},
    dag::{self, ChildRef, FileMeta},
    net::codec::{ErrorCode, FileCodec, Request, RequestFrame, Response, STREAM_PROTOCOL},
    node::{Node, NodeConfig},
};
use futures::{StreamExt, future::join_all};
use libp2p::{
    Multiaddr, PeerId, Swarm, noise,
    request_response::{self, ProtocolSupport},
    swarm::SwarmEvent,
    tcp, yamux,
};
use tokio::{
    runtime::Runtime,
    sync::{mpsc, oneshot},
};

/// Peak resident memory the victim may reach during any attack.
const MEMORY_BOUND: u64 = 160 * 1024 * 1024;
/// How long the honest get may take while an attack runs.
const HONEST_GET: Duration = Duration::from_secs(60);
/// The victim's own file.
const FILE_LEN: usize = 6 * 1024 * 1024;

/// One attack at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A victim node with `extra` options, holding a file of its own; returns
/// it, its address and the file's ticket.
fn victim(dir: &Path, extra: &[&str]) -> (Victim, Multiaddr, Ticket) {
    let mut args = vec!["--replicas", "1"];
    args.extend(extra);
    let mut node = Victim::start("victim", &dir.join("victim"), &args);
    let file = dir.join("own-file");
    std::fs::write(&file, cli_support::data(FILE_LEN, 7)).unwrap();
    let ticket = node.put(&file).parse().unwrap();
    let addr = node.addrs[0].parse().unwrap();
    (node, addr, ticket)
}

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// CPU seconds a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Waits until a process uses less than a tenth of a core over a quarter
/// of a second; fails the test if it has not after `within`.
fn wait_idle(pid: u32, within: Duration) {
    const SAMPLE: Duration = Duration::from_millis(250);
    let deadline = Instant::now() + within;
    loop {
        let before = cpu_secs(pid);
        std::thread::sleep(SAMPLE);
        let spent = cpu_secs(pid) - before;
        if spent < SAMPLE.as_secs_f64() / 10.0 {
            return;
        }
        assert!(Instant::now() < deadline, "the victim is still busy after {within:?}");
    }
}

/// The victim is alive, within its memory bound, and answers at its prompt.
fn assert_healthy(victim: &mut Victim) {
    assert!(victim.try_wait().is_none(), "the victim died");
    let peak = peak_rss(victim.pid());
    assert!(peak <= MEMORY_BOUND, "the victim peaked at {} MiB", peak >> 20);
    eprintln!("victim peak RSS: {} MiB", peak >> 20);
    victim.send("stat");
    victim.expect_out(|l| l.starts_with("peer id"));
}

/// An honest node in this process connects to the victim and gets its
/// file, all within [`HONEST_GET`]; returns how long the get itself took
/// (from the call, once connected).
async fn honest_get(victim: &Multiaddr, ticket: &Ticket) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::new(dir.path().to_path_buf());
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.bootstrap = vec![victim.clone()];
    config.replicas = 1;
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = Sink(out.clone());
    let took = tokio::time::timeout(HONEST_GET, async {
        let node = Node::start(config).await.unwrap();
        assert!(node.wait_for_peers(1, HONEST_GET).await >= 1, "the honest node never connected");
        let started = Instant::now();
        node.get(ticket.clone(), Box::new(sink), None).await.expect("the honest get failed");
        let took = started.elapsed();
        node.shutdown().await;
        took
    })
    .await
    .expect("the honest get did not finish in time");
    assert_eq!(*out.lock().unwrap(), cli_support::data(FILE_LEN, 7));
    took
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn peer_of(addr: &Multiaddr) -> PeerId {
    match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(peer)) => peer,
        _ => panic!("no peer id in {addr}"),
    }
}

fn swarm_with<B: libp2p::swarm::NetworkBehaviour>(behaviour: B) -> Swarm<B> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| behaviour)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build()
}

// ---- A hostile peer of the file protocol ----

type Ask = (Request, oneshot::Sender<Result<Response, String>>);

/// A peer that serves the blocks it was given (any bytes under any CID)
/// and sends the victim whatever requests it is told to.
#[derive(Clone)]
struct Hostile {
    asks: mpsc::Sender<Ask>,
    served: Arc<AtomicU64>,
    /// Requests for the block held back, kept unanswered so far.
    held: Arc<AtomicU64>,
    /// Answers the requests held back, and every later one at once.
    release: Arc<tokio::sync::Notify>,
}

impl Hostile {
    fn start(rt: &Runtime, victim: &Multiaddr, blocks: HashMap<Cid, Vec<u8>>) -> Hostile {
        Hostile::holding_back(rt, victim, blocks, None)
    }

    /// A hostile peer that leaves every request for the block `held_back`
    /// unanswered until [`release`](Self::release)d.
    fn holding_back(
        rt: &Runtime,
        victim: &Multiaddr,
        blocks: HashMap<Cid, Vec<u8>>,
        held_back: Option<Cid>,
    ) -> Hostile {
        let (asks, mut rx) = mpsc::channel::<Ask>(4096);
        let served = Arc::new(AtomicU64::new(0));
        let counter = served.clone();
        let (held, release) = (Arc::new(AtomicU64::new(0)), Arc::new(tokio::sync::Notify::new()));
        let (held_count, released) = (held.clone(), release.clone());
        let mut holding = held_back;
        let mut unanswered = Vec::new();
        let victim = victim.clone();
        rt.spawn(async move {
            let behaviour = request_response::Behaviour::<FileCodec>::new(
                [(STREAM_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(120))
                    .with_max_concurrent_streams(1024),
            );
            let mut swarm = swarm_with(behaviour);
            let peer = peer_of(&victim);
            swarm.dial(victim).unwrap();
            let mut waiting = Waiting::new();
            loop {
                tokio::select! {
                    ask = rx.recv() => match ask {
                        Some((request, reply)) => {
                            let id = swarm.behaviour_mut().send_request(&peer, RequestFrame::Valid(request));
                            waiting.insert(id, reply);
                        }
                        None => return,
                    },
                    _ = released.notified(), if holding.is_some() => {
                        holding = None;
                        for (cid, channel) in unanswered.drain(..) {
                            let data = BlockBuf::copy_from(&blocks[&cid]);
                            let _ = swarm.behaviour_mut().send_response(channel, Response::Block { data });
                        }
                    },
                    event = swarm.select_next_some() => {
                        let Some((request, channel)) = settle(&mut waiting, event) else { continue };
                        let response = match request {
                            RequestFrame::Valid(Request::GetBlock { cid }) if holding == Some(cid) => {
                                held_count.fetch_add(1, Ordering::Relaxed);
                                unanswered.push((cid, channel));
                                continue;
                            }
                            RequestFrame::Valid(Request::GetBlock { cid }) => match blocks.get(&cid) {
                                Some(bytes) => {
                                    counter.fetch_add(1, Ordering::Relaxed);
                                    Response::Block { data: BlockBuf::copy_from(bytes) }
                                }
                                None => Response::NotFound,
                            },
                            RequestFrame::Valid(Request::Have { cids }) => Response::Have {
                                present: cids.iter().map(|c| blocks.contains_key(c)).collect(),
                            },
                            _ => Response::error(ErrorCode::Refused, "no"),
                        };
                        let _ = swarm.behaviour_mut().send_response(channel, response);
                    }
                }
            }
        });
        Hostile { asks, served, held, release }
    }

    fn release(&self) {
        self.release.notify_one();
    }

    async fn ask(&self, request: Request) -> Result<Response, String> {
        let (reply, rx) = oneshot::channel();
        self.asks.send((request, reply)).await.map_err(|_| "the hostile peer stopped")?;
        rx.await.map_err(|_| "the hostile peer stopped".to_string())?
    }
}

/// A raw block of `len` pseudo-random bytes.
fn leaf(len: usize, seed: u64) -> (Cid, Vec<u8>) {
    let bytes = cli_support::data(len, seed);
    (block::cid_of(RAW, &bytes), bytes)
}

/// A structure node linking `links`, with a sealed part of junk (a pull
/// never opens it).
fn node(links: Vec<Cid>, seed: u64) -> (Cid, Vec<u8>) {
    let bytes = dag::Node { links, sealed: cli_support::data(32, seed) }.encode();
    (block::cid_of(DAG_CBOR, &bytes), bytes)
}

/// A one-link chain of `depth` structure nodes over one leaf.
fn chain(depth: usize) -> (Cid, HashMap<Cid, Vec<u8>>) {
    let mut blocks = HashMap::new();
    let (mut top, bytes) = leaf(100, 1);
    blocks.insert(top, bytes);
    for i in 0..depth {
        let (cid, bytes) = node(vec![top], i as u64);
        blocks.insert(cid, bytes);
        top = cid;
    }
    (top, blocks)
}

/// A replicate request declaring what `blocks` hold under `root`.
/// A lease for `replicas` copies of `root` for a day, signed by a key of
/// its own (an owner that is not the peer asking: the victim holds the copy
/// for it, as for a repair).
fn test_lease(root: Cid, replicas: u8) -> Vec<u8> {
    let owner = libp2p::identity::Keypair::generate_ed25519();
    let day = Duration::from_secs(24 * 3600);
    dfs_p2p::lease::Lease::issue(&owner, root, replicas, day).unwrap().encode()
}

fn honest_offer(root: Cid, blocks: &HashMap<Cid, Vec<u8>>) -> Request {
    let bytes = blocks.values().map(|b| b.len() as u64).sum();
    Request::Replicate { root, blocks: blocks.len() as u64, bytes, lease: test_lease(root, 2) }
}

fn expect_error(answer: Result<Response, String>, code: ErrorCode, words: &str) -> String {
    match answer {
        Ok(Response::Error { code: c, message }) if c == code && message.contains(words) => message,
        other => panic!("expected {code} mentioning `{words}`, got {other:?}"),
    }
}

#[test]
fn a_deep_chain_is_refused_by_replicate_and_by_get() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (mut victim, addr, ticket) = victim(dir.path(), &[]);

    // By replicate: a chain 100,000 structure nodes deep.
    let (root, blocks) = chain(100_000);
    let offer = honest_offer(root, &blocks);
    let hostile = Hostile::start(&rt, &addr, blocks);
    let answer = rt.block_on(hostile.ask(offer));
    let message = expect_error(answer, ErrorCode::Refused, "deeper than 64 levels");
    assert!(message.contains(&root.to_string()), "{message}");
    assert!(hostile.served.load(Ordering::Relaxed) <= 70, "fetched no further than the limit");

    // As a ticket to get: a readable chain, every node opens.
    let secret = ConvergenceSecret::from_bytes([7; 32]);
    let plain = b"the bottom of a very deep file".to_vec();
    let key = secret.derive_key(Domain::Leaf, &plain);
    let mut sealed = plain.clone();
    crypto::seal(&key, Domain::Leaf, &mut sealed);
    let size = plain.len() as u64;
    let mut child = ChildRef { cid: block::cid_of(RAW, &sealed), key, size };
    let mut blocks = HashMap::from([(child.cid, sealed)]);
    for _ in 0..100_000 {
        let (cid, key, bytes) = dag::build_node(&secret, std::slice::from_ref(&child), None);
        blocks.insert(cid, bytes);
        child = ChildRef { cid, key, size };
    }
    let meta = FileMeta { size, chunk_size: 65536, name: Some("deep".into()) };
    let (root, key, bytes) = dag::build_node(&secret, &[child], Some(&meta));
    blocks.insert(root, bytes);
    let deep = Ticket::new(root, key);
    let _server = Hostile::start(&rt, &addr, blocks);
    let out = dir.path().join("deep-out");
    let error = victim.get(&deep.to_string(), &out).unwrap_err();
    assert!(error.contains("deeper than 64 levels"), "{error}");

    rt.block_on(honest_get(&addr, &ticket));
    assert_healthy(&mut victim);
}

#[test]
fn dags_that_reuse_nodes_cost_their_distinct_blocks_only() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (mut victim, addr, ticket) = victim(dir.path(), &[]);
    let pid = victim.pid();

    // Four DAGs of four blocks whose nodes link 8,192 times to the next:
    // 8,192^3 leaf visits each, if the walk followed every link.
    let hostiles: Vec<(Hostile, Request)> = (0..4u64)
        .map(|i| {
            let mut blocks = HashMap::new();
            let (mut top, bytes) = leaf(1000, 100 + i);
            blocks.insert(top, bytes);
            for level in 0..3 {
                let (cid, bytes) = node(vec![top; 8192], 10 * i + level);
                blocks.insert(cid, bytes);
                top = cid;
            }
            let offer = honest_offer(top, &blocks);
            (Hostile::start(&rt, &addr, blocks), offer)
        })
        .collect();
    let started = Instant::now();
    let answers = rt.block_on(join_all(hostiles.iter().map(|(h, offer)| h.ask(offer.clone()))));
    for answer in answers {
        assert!(matches!(answer, Ok(Response::Replicated { blocks: 4 })), "{answer:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    // Nothing keeps running after the answers: the victim goes idle, having
    // spent next to nothing more (a walk that followed every link would
    // keep a core busy for hours).
    let before = cpu_secs(pid);
    wait_idle(pid, Duration::from_secs(30));
    let spent = cpu_secs(pid) - before;
    assert!(spent < 0.5, "the victim spent {spent} CPU-s after answering");

    // A collection walks them in no time either: deleting the victim's own
    // file makes one run.
    victim.send(&format!("delete {}", ticket.root));
    victim.expect_err(|l| l.starts_with("deleted"));
    victim.send(&format!("put \"{}\"", dir.path().join("own-file").display()));
    victim.expect_out(cli_support::is_ticket);
    rt.block_on(honest_get(&addr, &ticket));
    assert_healthy(&mut victim);
}

#[test]
fn replicas_beyond_the_quota_or_the_declaration_or_from_strangers_are_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (mut victim, addr, ticket) = victim(dir.path(), &["--replica-quota", "12MiB"]);

    // A 5 MiB DAG: 80 leaves of 64 KiB under one node.
    let mut blocks = HashMap::new();
    let leaves: Vec<Cid> = (0..80)
        .map(|i| {
            let (cid, bytes) = leaf(64 * 1024, 1000 + i);
            blocks.insert(cid, bytes);
            cid
        })
        .collect();
    let (root, bytes) = node(leaves, 5);
    blocks.insert(root, bytes);
    let hostile = Hostile::start(&rt, &addr, blocks.clone());

    // Declared honestly: over one owner's share (a quarter of the quota),
    // refused before anything is pulled; declared bigger, over the quota.
    // Neither says how much is free.
    let answer = rt.block_on(hostile.ask(honest_offer(root, &blocks)));
    let message = expect_error(answer, ErrorCode::Refused, "your share");
    assert!(!message.contains("MiB") && !message.chars().any(|c| c.is_ascii_digit()), "{message}");
    let huge = Request::Replicate { root, blocks: 81, bytes: 64 << 20, lease: test_lease(root, 2) };
    let message = expect_error(rt.block_on(hostile.ask(huge)), ErrorCode::Refused, "over quota");
    assert!(!message.chars().any(|c| c.is_ascii_digit()), "{message}");
    assert_eq!(hostile.served.load(Ordering::Relaxed), 0);

    // Declared small: the pull stops once it passes the declaration.
    let lie = Request::Replicate { root, blocks: 81, bytes: 1 << 20, lease: test_lease(root, 2) };
    let answer = rt.block_on(hostile.ask(lie));
    expect_error(answer, ErrorCode::Refused, "more than declared");
    let lie = Request::Replicate { root, blocks: 10, bytes: 1 << 20, lease: test_lease(root, 2) };
    let answer = rt.block_on(hostile.ask(lie));
    expect_error(answer, ErrorCode::Refused, "more than 10 blocks");

    // Nothing is held for others, and what the pulls stored is collected.
    victim.send("stat");
    let line = victim.expect_out(|l| l.starts_with("for others"));
    assert!(line.contains("0 B of 12 MiB"), "{line}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let used = dir_size(&dir.path().join("victim").join("blocks"));
        if used < (FILE_LEN as u64) + (1 << 20) {
            break;
        }
        assert!(Instant::now() < deadline, "{used} bytes stay on the victim's disk");
        std::thread::sleep(Duration::from_millis(100));
    }
    rt.block_on(honest_get(&addr, &ticket));
    assert_healthy(&mut victim);
    drop(victim);

    // A node that accepts replicas from nobody refuses them all.
    let (mut closed, addr, _) =
        self::victim(&dir.path().join("2"), &["--accept-replicas-from", "none"]);
    let hostile = Hostile::start(&rt, &addr, blocks.clone());
    let answer = rt.block_on(hostile.ask(honest_offer(root, &blocks)));
    expect_error(answer, ErrorCode::Refused, "no replicas for others");
    assert_healthy(&mut closed);
}

// ---- Strangers that lie, grind identities or co-sign leases, against
// ---- real nodes in this process

/// What a stranger built by [`stranger`] was asked, by kind.
#[derive(Default)]
struct Asked {
    holds: AtomicU64,
    replicate: AtomicU64,
    prove: AtomicU64,
    blocks: AtomicU64,
}

/// A peer with `identity` that keeps connected to `peers` and claims to
/// hold everything: `Holds` → pinned, `Have` → yes, `Replicate` →
/// `Replicated` at once, `Prove` → made-up digests; it serves no block.
/// It speaks both versions of the file protocol. Its `asks` channel sends
/// requests of the test's.
fn stranger(
    rt: &Runtime,
    identity: libp2p::identity::Keypair,
    peers: Vec<Multiaddr>,
) -> (Arc<Asked>, mpsc::Sender<(PeerId, Ask)>) {
    let asked = Arc::new(Asked::default());
    let counts = asked.clone();
    let (asks, mut rx) = mpsc::channel::<(PeerId, Ask)>(1024);
    rt.spawn(async move {
        let behaviour = request_response::Behaviour::<FileCodec>::new(
            [
                (dfs_p2p::net::codec::STREAM_PROTOCOL_4, ProtocolSupport::Full),
                (STREAM_PROTOCOL, ProtocolSupport::Full),
            ],
            request_response::Config::default().with_request_timeout(Duration::from_secs(120)),
        );
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(identity)
            .with_tokio()
            .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
            .unwrap()
            .with_behaviour(|_| behaviour)
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
            .build();
        let mut redial = tokio::time::interval(Duration::from_millis(500));
        let mut waiting = Waiting::new();
        let mut open = true;
        loop {
            tokio::select! {
                _ = redial.tick() => {
                    for addr in &peers {
                        if !swarm.is_connected(&peer_of(addr)) {
                            let _ = swarm.dial(addr.clone());
                        }
                    }
                }
                // The test may drop its end: the stranger goes on lying.
                ask = rx.recv(), if open => match ask {
                    Some((peer, (request, reply))) => {
                        let id = swarm.behaviour_mut().send_request(&peer, RequestFrame::Valid(request));
                        waiting.insert(id, reply);
                    }
                    None => open = false,
                },
                event = swarm.select_next_some() => {
                    let Some((request, channel)) = settle(&mut waiting, event) else { continue };
                    let response = match request {
                        RequestFrame::Valid(Request::Holds { .. }) => {
                            counts.holds.fetch_add(1, Ordering::Relaxed);
                            Response::Holding { pinned: true, replicas: 3, repaired: 0 }
                        }
                        RequestFrame::Valid(Request::Have { cids }) => {
                            Response::Have { present: vec![true; cids.len()] }
                        }
                        RequestFrame::Valid(Request::Replicate { blocks, .. }) => {
                            counts.replicate.fetch_add(1, Ordering::Relaxed);
                            Response::Replicated { blocks }
                        }
                        RequestFrame::Valid(Request::Prove { cids, .. }) => {
                            counts.prove.fetch_add(1, Ordering::Relaxed);
                            Response::Proof { digests: vec![[7; 32]; cids.len()] }
                        }
                        RequestFrame::Valid(Request::GetBlock { .. }) => {
                            counts.blocks.fetch_add(1, Ordering::Relaxed);
                            Response::NotFound
                        }
                        _ => Response::error(ErrorCode::Refused, "no"),
                    };
                    let _ = swarm.behaviour_mut().send_response(channel, response);
                }
            }
        }
    });
    (asked, asks)
}

/// The test's requests a hostile peer sent, each waiting for its answer.
type Waiting =
    HashMap<request_response::OutboundRequestId, oneshot::Sender<Result<Response, String>>>;

/// Hands an answer (or a failure) of the file protocol to the request
/// that waits for it; returns a request of the victim's, for the caller
/// to answer.
fn settle(
    waiting: &mut Waiting,
    event: SwarmEvent<request_response::Event<RequestFrame, Response>>,
) -> Option<(RequestFrame, request_response::ResponseChannel<Response>)> {
    use request_response::{Event, Message};
    let (id, answer) = match event {
        SwarmEvent::Behaviour(Event::Message { message, .. }) => match message {
            Message::Request { request, channel, .. } => return Some((request, channel)),
            Message::Response { request_id, response } => (request_id, Ok(response)),
        },
        SwarmEvent::Behaviour(Event::OutboundFailure { request_id, error, .. }) => {
            (request_id, Err(error.to_string()))
        }
        _ => return None,
    };
    if let Some(reply) = waiting.remove(&id) {
        let _ = reply.send(answer);
    }
    None
}

/// Sends `request` to `peer` through a stranger's `asks`.
async fn ask_as(
    asks: &mpsc::Sender<(PeerId, Ask)>,
    peer: PeerId,
    request: Request,
) -> Result<Response, String> {
    let (reply, rx) = oneshot::channel();
    asks.send((peer, (request, reply))).await.map_err(|_| "the stranger stopped")?;
    rx.await.map_err(|_| "the stranger stopped".to_string())?
}

/// A real node in this process, with short-cut repair (rounds are run by
/// the test) and copies wanted `replicas`.
struct Honest {
    node: Node,
    addr: Multiaddr,
    _dir: tempfile::TempDir,
}

impl Honest {
    async fn start(bootstrap: Option<&Multiaddr>, replicas: usize, lease: Duration) -> Honest {
        let dir = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::new(dir.path().to_path_buf());
        config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        config.bootstrap = bootstrap.into_iter().cloned().collect();
        config.replicas = replicas;
        config.chunk_size = 64 * 1024;
        config.repair_interval = Duration::from_secs(3600);
        config.lease = lease;
        config.settled_after = Duration::from_secs(2);
        let node = Node::start(config).await.unwrap();
        let addr = node.listen_addrs().await.into_iter().next().unwrap();
        Honest { node, addr, _dir: dir }
    }

    fn holds(&self, root: &Cid) -> bool {
        let store = self.node.store().clone();
        let root = *root;
        std::thread::spawn(move || store.root_info(&root).is_some_and(|i| i.pinned()))
            .join()
            .unwrap()
    }
}

/// `n` honest nodes, bootstrapping through the first, each connected to
/// the others.
async fn honest_network(n: usize, replicas: usize, lease: Duration) -> Vec<Honest> {
    let first = Honest::start(None, replicas, lease).await;
    let mut nodes = vec![first];
    for _ in 1..n {
        let addr = nodes[0].addr.clone();
        nodes.push(Honest::start(Some(&addr), replicas, lease).await);
    }
    // Each also dials the others itself: the fixture's promise does not
    // hang on every join lookup reaching every node.
    let addrs: Vec<Multiaddr> = nodes.iter().map(|n| n.addr.clone()).collect();
    for node in &nodes {
        for addr in addrs.iter().filter(|a| **a != node.addr) {
            node.node.net().dial(addr.clone()).await;
        }
    }
    for node in &nodes {
        let peers = node.node.wait_for_peers(n - 1, Duration::from_secs(30)).await;
        assert!(peers >= n - 1, "{}: {peers} peers of {}", node.node.peer_id(), n - 1);
    }
    nodes
}

fn real_holders(nodes: &[Honest], root: &Cid) -> usize {
    nodes.iter().filter(|n| n.holds(root)).count()
}

async fn rounds(nodes: &[Honest], n: usize) {
    for _ in 0..n {
        for node in nodes {
            node.node.repair_round().await;
        }
    }
}

async fn put_bytes(node: &Node, bytes: &[u8]) -> dfs_p2p::node::PutReport {
    let reader = Box::new(std::io::Cursor::new(bytes.to_vec()));
    node.put(reader, None, Some(bytes.len() as u64), None).await.unwrap()
}

#[test]
fn holders_that_lie_are_not_counted_and_repair_restores_real_copies() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    rt.block_on(async {
        let mut nodes = honest_network(5, 3, Duration::from_secs(24 * 3600)).await;
        let addrs: Vec<Multiaddr> = nodes.iter().map(|n| n.addr.clone()).collect();
        let liars: Vec<Arc<Asked>> = (0..3)
            .map(|_| stranger(&rt, libp2p::identity::Keypair::generate_ed25519(), addrs.clone()).0)
            .collect();
        for node in &nodes {
            assert!(node.node.wait_for_peers(7, Duration::from_secs(30)).await >= 7);
        }
        let bytes = cli_support::data(1 << 20, 31);
        let report = put_bytes(&nodes[0].node, &bytes).await;
        let root = report.ticket.root;
        // The copies counted at the put are real ones: a liar that said
        // `Replicated` was found out and replaced.
        assert_eq!(report.copies, 3, "{:?}", report.failed);
        assert_eq!(real_holders(&nodes, &root), 3);
        // The two real co-holders stop: one real copy is left.
        let co_holders: Vec<usize> = (1..nodes.len()).filter(|&i| nodes[i].holds(&root)).collect();
        for i in co_holders.into_iter().rev() {
            nodes.remove(i).node.shutdown().await;
        }
        assert_eq!(real_holders(&nodes, &root), 1);
        let asked_before: u64 = liars.iter().map(|l| l.holds.load(Ordering::Relaxed)).sum();
        // Repair restores three real copies within three rounds.
        let mut restored_in = None;
        for round in 1..=3 {
            rounds(&nodes, 1).await;
            if real_holders(&nodes, &root) >= 3 {
                restored_in = Some(round);
                break;
            }
        }
        // The attack landed: the liars were asked and said they hold it.
        let asked: u64 = liars
            .iter()
            .map(|l| l.holds.load(Ordering::Relaxed) + l.replicate.load(Ordering::Relaxed))
            .sum();
        let proofs: u64 = liars.iter().map(|l| l.prove.load(Ordering::Relaxed)).sum();
        eprintln!("liars: {asked_before} Holds at the put; {asked} claims, {proofs} proofs asked");
        assert!(
            asked >= 3 && proofs >= 3,
            "the liars were never asked: {asked} claims, {proofs} proofs"
        );
        let restored_in = restored_in.unwrap_or_else(|| {
            panic!("{} real copies after 3 rounds", real_holders(&nodes, &root))
        });
        eprintln!("3 real copies again after {restored_in} repair rounds");
        // `status` counts the proven copies and names the liars.
        let health = nodes[0].node.status(dfs_p2p::ticket::TicketOrCid::Cid(root)).await;
        assert_eq!((health.holders.len(), health.target), (3, 3), "{health:?}");
        assert!(health.unproven.len() >= 3, "{health:?}");
        let text = dfs_p2p::cli::output::health_report(&health, nodes[0].node.peer_id());
        assert!(text.contains("copies: 3 proven of 3"), "{text}");
        for node in nodes {
            node.node.shutdown().await;
        }
    });
}

/// `count` identities whose peer ids are XOR-closer to `root` than any of
/// `honest`, ground for the root as a stranger would (at most 60 s).
fn grind(root: &Cid, honest: &[PeerId], count: usize) -> Vec<libp2p::identity::Keypair> {
    use libp2p::kad::KBucketKey;
    let key = KBucketKey::new(root.to_bytes());
    let best = honest.iter().map(|p| key.distance(&KBucketKey::from(*p))).min().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut found = Vec::new();
    let mut tried = 0u64;
    while found.len() < count {
        assert!(Instant::now() < deadline, "ground {tried} keys for nothing");
        let identity = libp2p::identity::Keypair::generate_ed25519();
        tried += 1;
        let id = identity.public().to_peer_id();
        // Closer than every honest node by a wide margin: 4 more leading bits.
        if key
            .distance(&KBucketKey::from(id))
            .ilog2()
            .zip(best.ilog2())
            .is_some_and(|(d, b)| d + 4 <= b)
        {
            found.push(identity);
        }
    }
    eprintln!("ground {count} identities from {tried} keys");
    found
}

#[test]
fn identities_ground_next_to_a_root_take_at_most_one_copy() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    rt.block_on(async {
        let mut nodes = honest_network(6, 3, Duration::from_secs(24 * 3600)).await;
        let bytes = cli_support::data(512 * 1024, 32);
        // The root is known before the put (the same bytes give the same
        // root): the stranger grinds for it ahead.
        let store = nodes[0].node.store().clone();
        let imported = {
            let bytes = bytes.clone();
            std::thread::spawn(move || {
                let options =
                    dfs_p2p::import::ImportOptions { chunk_size: 64 * 1024, ..Default::default() };
                dfs_p2p::import::import(&store, std::io::Cursor::new(bytes), &options, None)
                    .unwrap()
            })
            .join()
            .unwrap()
        };
        let root = imported.ticket.root;
        // The honest nodes have been together a while (their settling
        // time, two seconds here) when the ground identities join.
        for node in &nodes {
            let settled = node.node.net().settled_after();
            while node.node.net().peers().await.iter().any(|p| p.since.elapsed() < settled) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let honest: Vec<PeerId> = nodes.iter().map(|n| n.node.peer_id()).collect();
        let addrs: Vec<Multiaddr> = nodes.iter().map(|n| n.addr.clone()).collect();
        let ground: Vec<(Arc<Asked>, PeerId)> = grind(&root, &honest, 2)
            .into_iter()
            .map(|k| {
                let id = k.public().to_peer_id();
                (stranger(&rt, k, addrs.clone()).0, id)
            })
            .collect();
        for node in &nodes {
            assert!(node.node.wait_for_peers(7, Duration::from_secs(30)).await >= 7);
        }
        let asked = || ground.iter().map(|(a, _)| a.replicate.load(Ordering::Relaxed)).sum::<u64>();
        let report = put_bytes(&nodes[0].node, &bytes).await;
        assert_eq!(report.ticket.root, root);
        assert_eq!(report.copies, 3, "{:?}", report.failed);
        let at_put = asked();
        assert!(at_put <= 1, "ground identities were asked for {at_put} of 2 copies at the put");
        // The honest co-holders stop; repair places two new copies.
        let co_holders: Vec<usize> = (1..nodes.len()).filter(|&i| nodes[i].holds(&root)).collect();
        for i in co_holders.into_iter().rev() {
            nodes.remove(i).node.shutdown().await;
        }
        rounds(&nodes, 3).await;
        assert_eq!(real_holders(&nodes, &root), 3);
        let at_repair = asked() - at_put;
        eprintln!("ground identities asked: {at_put} at the put, {at_repair} at the repair");
        assert!(at_repair <= 1, "ground identities were asked for {at_repair} of 2 repair copies");
        for node in nodes {
            node.node.shutdown().await;
        }
    });
}

#[test]
fn a_strangers_lease_neither_spreads_a_file_nor_outlives_its_owners_delete() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    rt.block_on(async {
        let nodes = honest_network(5, 2, Duration::from_secs(24 * 3600)).await;
        let bytes = cli_support::data(256 * 1024, 33);
        let report = put_bytes(&nodes[0].node, &bytes).await;
        let root = report.ticket.root;
        assert_eq!(real_holders(&nodes, &root), 2);
        let addrs: Vec<Multiaddr> = nodes.iter().map(|n| n.addr.clone()).collect();
        let identity = libp2p::identity::Keypair::generate_ed25519();
        let day = Duration::from_secs(24 * 3600);
        let (_, asks) = stranger(&rt, identity.clone(), addrs);
        for node in &nodes {
            assert!(node.node.wait_for_peers(5, Duration::from_secs(30)).await >= 5);
        }
        let (blocks, size) = {
            let store = nodes[0].node.store().clone();
            std::thread::spawn(move || store.dag_stats(&root).unwrap()).join().unwrap()
        };
        // More copies than any holder keeps a lease for: refused.
        let greedy = dfs_p2p::lease::Lease::issue(&identity, root, 255, day).unwrap();
        let request = Request::Replicate { root, blocks, bytes: size, lease: greedy.encode() };
        let answer = ask_as(&asks, nodes[1].node.peer_id(), request).await;
        expect_error(answer, ErrorCode::Refused, "16 at most");
        // Its own lease for 16 copies to every node.
        let lease = dfs_p2p::lease::Lease::issue(&identity, root, 16, day).unwrap();
        let mut joined = 0;
        for node in &nodes {
            let request = Request::Replicate { root, blocks, bytes: size, lease: lease.encode() };
            match ask_as(&asks, node.node.peer_id(), request).await {
                Ok(Response::Replicated { .. }) => joined += 1,
                other => eprintln!("{}: {other:?}", node.node.peer_id()),
            }
        }
        // The attack landed where the file was: the holders took the lease.
        assert_eq!(joined, 2, "the holders took the stranger's lease");
        rounds(&nodes, 3).await;
        assert_eq!(real_holders(&nodes, &root), 2, "the stranger's lease spread the file");
        // The owner deletes: every copy goes within two rounds, the
        // stranger's lease notwithstanding.
        let deleted = nodes[0].node.delete(dfs_p2p::ticket::TicketOrCid::Cid(root)).await.unwrap();
        assert!(deleted.local && !deleted.kept_for_others);
        rounds(&nodes, 2).await;
        assert_eq!(real_holders(&nodes, &root), 0, "copies outlived the owner's delete");
        for node in nodes {
            node.node.shutdown().await;
        }
    });
}

#[test]
fn a_copy_goes_within_a_minute_of_its_lease_ending() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    rt.block_on(async {
        let lease = Duration::from_secs(5);
        let nodes = honest_network(2, 2, lease).await;
        let bytes = cli_support::data(128 * 1024, 34);
        let root = put_bytes(&nodes[0].node, &bytes).await.ticket.root;
        assert!(nodes[1].holds(&root), "the copy was placed");
        let put_at = Instant::now();
        // The owner leaves: nobody renews the lease.
        let [owner, holder]: [Honest; 2] = nodes.try_into().ok().unwrap();
        owner.node.shutdown().await;
        while holder.holds(&root) {
            assert!(
                put_at.elapsed() < lease + Duration::from_secs(60),
                "the copy outlived its lease"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("the copy went {:?} after the put (lease {lease:?})", put_at.elapsed());
        holder.node.shutdown().await;
    });
}

#[test]
fn the_quota_counts_blocks_and_a_stalled_pull_gives_its_space_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let quota: u64 = 128 << 20;
    let (mut victim, addr, ticket) = victim(dir.path(), &["--replica-quota", "128MiB"]);

    // 26.3 MiB of the smallest blocks would be 1 GiB on disk: declared
    // honestly, it is refused before anything is pulled, though its bytes
    // alone fit one owner's share.
    let (many, bytes) = (262_161u64, 262_161u64 * 64);
    assert!(bytes < quota / 4, "the bytes alone fit");
    let small_blocks = Hostile::start(&rt, &addr, HashMap::new());
    let root = block::cid_of(DAG_CBOR, b"a root of many small blocks");
    let request = Request::Replicate { root, blocks: many, bytes, lease: test_lease(root, 2) };
    expect_error(rt.block_on(small_blocks.ask(request)), ErrorCode::Refused, "over quota");

    // A DAG whose asker stops sending: the pull stops within its stall
    // window and returns what it reserved.
    let mut blocks = HashMap::new();
    let leaves: Vec<Cid> = (0..8)
        .map(|i| {
            let (cid, bytes) = leaf(64 * 1024, 3000 + i);
            blocks.insert(cid, bytes);
            cid
        })
        .collect();
    let (root, node_bytes) = node(leaves.clone(), 10);
    blocks.insert(root, node_bytes);
    let staller = Hostile::holding_back(&rt, &addr, blocks.clone(), Some(leaves[7]));
    // It declares a quarter of the quota: the owner's whole share.
    let lease = test_lease(root, 2);
    let declared = quota / 4 - 9 * dfs_p2p::store::BLOCK_OVERHEAD;
    let request = Request::Replicate { root, blocks: 9, bytes: declared, lease };
    let started = Instant::now();
    let answer = {
        let staller = staller.clone();
        rt.spawn(async move { staller.ask(request).await })
    };
    wait_until("the pull asks for the block held back", || {
        staller.held.load(Ordering::Relaxed) > 0
    });
    // The attack landed: the victim reserved the declaration and waits.
    victim.send("stat");
    let line = victim.expect_out(|l| l.starts_with("for others"));
    eprintln!("while the pull stalls: {line}");
    let answer = rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), answer).await });
    let answer = answer.expect("answered within 60 s").expect("the request task");
    let took = started.elapsed();
    expect_error(answer, ErrorCode::Busy, "stalled");
    eprintln!("the stalled pull was stopped after {took:?}");
    assert!(took < Duration::from_secs(35), "the stalled pull held its reservation {took:?}");
    // Its space is back: an honest copy of the same size is taken.
    staller.release();
    let honest = Hostile::start(&rt, &addr, blocks.clone());
    let answer = rt.block_on(honest.ask(honest_offer(root, &blocks)));
    assert!(matches!(answer, Ok(Response::Replicated { blocks: 9 })), "{answer:?}");
    rt.block_on(honest_get(&addr, &ticket));
    assert_healthy(&mut victim);
}

/// Waits (polling, within 30 s) until `done` holds.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first of `asks` to be answered, within 15 s, and the others.
async fn first_answer(
    asks: Vec<tokio::task::JoinHandle<Result<Response, String>>>,
) -> (Result<Response, String>, Vec<tokio::task::JoinHandle<Result<Response, String>>>) {
    let first = tokio::time::timeout(Duration::from_secs(15), futures::future::select_all(asks));
    let (answer, _, rest) = first.await.expect("no request was answered within 15 s");
    (answer.expect("the request task"), rest)
}

#[test]
fn requests_that_join_a_running_pull_are_capped_per_pull_and_per_peer() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (mut victim, addr, _) = victim(dir.path(), &[]);

    // Four leaves under one node; the asker holds one back, so the pull it
    // starts runs until the test releases it.
    let mut blocks = HashMap::new();
    let leaves: Vec<Cid> = (0..4)
        .map(|i| {
            let (cid, bytes) = leaf(64 * 1024, 2000 + i);
            blocks.insert(cid, bytes);
            cid
        })
        .collect();
    let (root, bytes) = node(leaves.clone(), 9);
    blocks.insert(root, bytes);
    let asker = Hostile::holding_back(&rt, &addr, blocks.clone(), Some(leaves[3]));
    let ask = |peer: &Hostile| {
        let (peer, offer) = (peer.clone(), honest_offer(root, &blocks));
        rt.spawn(async move { peer.ask(offer).await })
    };
    let first = ask(&asker);
    wait_until("the pull asks for the block held back", || asker.held.load(Ordering::Relaxed) > 0);

    // The same peer joins the pull three times more, each with a lease of
    // another owner: two wait, the third is refused at once.
    let (answer, mine) = rt.block_on(first_answer((0..3).map(|_| ask(&asker)).collect()));
    expect_error(answer, ErrorCode::Busy, "too many of your requests wait");
    // Seven more from three other peers: eight wait in all, the ninth is
    // refused at once, whoever sent it.
    let others: Vec<Hostile> = (0..4).map(|_| Hostile::start(&rt, &addr, HashMap::new())).collect();
    let asks = others.iter().take(3).flat_map(|p| [ask(p), ask(p)]).chain([ask(&others[3])]);
    let (answer, theirs) = rt.block_on(first_answer(asks.collect()));
    expect_error(answer, ErrorCode::Busy, "too many requests wait for the replication");
    // The attack landed: the pull still runs and every joined request
    // waits for it.
    assert!(!first.is_finished());
    assert!(mine.iter().chain(&theirs).all(|ask| !ask.is_finished()));
    assert_eq!(mine.len() + theirs.len(), 8);

    // Once the block comes, the first request and the eight that joined
    // are answered: each joined owner's lease is pinned with the copy.
    asker.release();
    for ask in std::iter::once(first).chain(mine).chain(theirs) {
        let answer =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), ask).await });
        let answer = answer.expect("answered within 30 s").expect("the request task");
        assert!(matches!(answer, Ok(Response::Replicated { blocks: 5 })), "{answer:?}");
    }
    // Nine owners, each with a lease of its own, hold the one copy.
    victim.send("ls");
    let line = victim.expect_out(|l| l.starts_with(&root.to_string()));
    assert_eq!(line.matches("12D3KooW").count(), 9, "{line}");
    assert_healthy(&mut victim);
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in walkdir(dir) {
        total += std::fs::metadata(entry).map(|m| m.len()).unwrap_or(0);
    }
    total
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() { out.extend(walkdir(&path)) } else { out.push(path) }
    }
    out
}

/// Peers of the request flood, and the requests each keeps in flight: far
/// beyond what the victim takes from one peer.
const FLOODERS: usize = 32;
const FLOOD_DEPTH: usize = 250;

#[test]
fn a_request_flood_gets_busy_answers_and_slows_only_the_flooders() {
    use dfs_p2p::net::event_loop::{MAX_INBOUND_BLOCKS_PER_PEER, MAX_WAITING_BLOCKS};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // One flooder alone asks for more than its share and less than the
    // victim takes from all peers: only its share can refuse it.
    assert!((MAX_INBOUND_BLOCKS_PER_PEER + 1..MAX_WAITING_BLOCKS).contains(&FLOOD_DEPTH));
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (mut victim, addr, ticket) = victim(dir.path(), &[]);

    // Each flooder keeps its requests in flight, for the victim's own
    // blocks, for as long as the honest get runs.
    let blocks: Vec<Cid> = {
        let store_dir = dir.path().join("victim");
        let mut cids = Vec::new();
        for path in walkdir(&store_dir.join("blocks")) {
            cids.push(block::parse_cid(path.file_name().unwrap().to_str().unwrap()).unwrap());
        }
        cids
    };
    // Per flooder: requests answered with a block, and answered `Busy`.
    let counts: Vec<(Arc<AtomicU64>, Arc<AtomicU64>)> =
        (0..FLOODERS).map(|_| Default::default()).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = |flooder: usize| -> Vec<tokio::task::JoinHandle<()>> {
        let hostile = Hostile::start(&rt, &addr, HashMap::new());
        (0..FLOOD_DEPTH)
            .map(|i| {
                let (h, stop) = (hostile.clone(), stop.clone());
                let (answered, busy) = counts[flooder].clone();
                let cid = blocks[i % blocks.len()];
                rt.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match h.ask(Request::GetBlock { cid }).await {
                            Ok(Response::Error { code: ErrorCode::Busy, .. }) => {
                                busy.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Response::Block { .. }) => {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => {}
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                })
            })
            .collect()
    };
    // A flooder lands when it has been served, and refused.
    let landed = |(answered, busy): &(Arc<AtomicU64>, Arc<AtomicU64>)| {
        answered.load(Ordering::Relaxed) > 0 && busy.load(Ordering::Relaxed) > 0
    };
    let wait_landed = |flooders: std::ops::Range<usize>| {
        let deadline = Instant::now() + HONEST_GET;
        while !counts[flooders.clone()].iter().all(landed) {
            let counts = flood_counts(&counts[flooders.clone()]);
            assert!(
                Instant::now() < deadline,
                "the flood was not both served and refused: {counts}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // First one flooder alone (its share refuses it), then all of them.
    let mut tasks = flood(0);
    wait_landed(0..1);
    tasks.extend((1..FLOODERS).flat_map(flood));
    wait_landed(0..FLOODERS);
    let flooded = rt.block_on(honest_get(&addr, &ticket));
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.abort();
    }
    // Each flooder was held to its share: beyond it, it was answered
    // `Busy` at once instead of queued. The honest peer, within its own
    // share, was never made to wait out a block request's timeout.
    eprintln!("honest get under the flood: {flooded:?}; {}", flood_counts(&counts));
    assert!(counts.iter().all(landed), "{}", flood_counts(&counts));
    let bound = dfs_p2p::net::get::BLOCK_TIMEOUT;
    assert!(flooded < bound, "the honest get took {flooded:?} under the flood (bound {bound:?})");
    assert_healthy(&mut victim);
}

/// Blocks and `Busy` answers the flooders got, in all.
fn flood_counts(counts: &[(Arc<AtomicU64>, Arc<AtomicU64>)]) -> String {
    let sum = |f: fn(&(Arc<AtomicU64>, Arc<AtomicU64>)) -> u64| counts.iter().map(f).sum::<u64>();
    let answered = sum(|c| c.0.load(Ordering::Relaxed));
    let busy = sum(|c| c.1.load(Ordering::Relaxed));
    let served = counts.iter().filter(|c| c.0.load(Ordering::Relaxed) > 0).count();
    let refused = counts.iter().filter(|c| c.1.load(Ordering::Relaxed) > 0).count();
    format!(
        "{answered} blocks and {busy} busy answers; {served} of {} flooders served, {refused} refused",
        counts.len()
    )
}

/// A `GetBlock` request's frame header announcing its 37-byte body: a
/// stalled stream sends this and nothing more. (A large body is held to a
/// budget of its own: see `request_frames_that_never_finish_cost_a_few_kib_each`.)
const STALL_HEADER: [u8; 5] = [0x01, 0x00, 0x00, 0x00, 0x25];

/// Per stalled stream that ended: when it was opened, and when the victim
/// closed it (`None`: still open when its peer stopped waiting).
type Ended = Arc<Mutex<Vec<(Instant, Option<Instant>)>>>;

/// One connection's stalled streams, as its peer saw them.
struct Staller {
    /// Streams asked for so far (opened, or refused as they opened).
    opened: Arc<AtomicU64>,
    ended: Ended,
    /// Streams the victim answered (with a byte, not only closed).
    answered: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Staller {
    /// A peer that opens `streams` file-protocol streams to the victim over
    /// one connection, writes [`STALL_HEADER`] on each and then only waits,
    /// for up to `patience`, for the victim to close it.
    fn start(rt: &Runtime, victim: &Multiaddr, streams: usize, patience: Duration) -> Staller {
        Staller::sending(rt, victim, streams, patience, STALL_HEADER.to_vec())
    }

    /// The same, writing `prefix` on each stream instead of
    /// [`STALL_HEADER`].
    fn sending(
        rt: &Runtime,
        victim: &Multiaddr,
        streams: usize,
        patience: Duration,
        prefix: Vec<u8>,
    ) -> Staller {
        let opened = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(AtomicU64::new(0));
        let (count, log, victim) = (opened.clone(), ended.clone(), victim.clone());
        let (answers, prefix) = (answered.clone(), Arc::new(prefix));
        let task = rt.spawn(async move {
            let mut swarm = swarm_with(libp2p_stream::Behaviour::new());
            let mut control = swarm.behaviour().new_control();
            let peer = peer_of(&victim);
            swarm.add_peer_address(peer, victim.clone());
            swarm.dial(victim).unwrap();
            let open = async move {
                for _ in 0..streams {
                    let stream = control.open_stream(peer, STREAM_PROTOCOL).await;
                    let at = Instant::now();
                    let (log, answers, prefix) = (log.clone(), answers.clone(), prefix.clone());
                    count.fetch_add(1, Ordering::Relaxed);
                    let Ok(mut stream) = stream else {
                        log.lock().unwrap().push((at, Some(at)));
                        continue;
                    };
                    tokio::spawn(async move {
                        use futures::{AsyncReadExt, AsyncWriteExt};
                        let held = async {
                            stream.write_all(&prefix).await?;
                            stream.flush().await?;
                            let mut byte = [0u8; 1];
                            let read = stream.read(&mut byte).await;
                            if matches!(read, Ok(1..)) {
                                answers.fetch_add(1, Ordering::Relaxed);
                            }
                            read
                        };
                        let closed = tokio::time::timeout(patience, held).await;
                        let closed = closed.is_ok().then(Instant::now);
                        log.lock().unwrap().push((at, closed));
                        // Still open at the deadline: keep holding it.
                        if closed.is_none() {
                            futures::future::pending::<()>().await;
                        }
                    });
                }
                futures::future::pending::<()>().await
            };
            let drive = async move {
                loop {
                    swarm.select_next_some().await;
                }
            };
            futures::future::join(open, drive).await;
        });
        Staller { opened, ended, answered, task }
    }

    fn opened(&self) -> usize {
        self.opened.load(Ordering::Relaxed) as usize
    }

    /// Streams the victim has closed so far.
    fn closed(&self) -> usize {
        self.ended.lock().unwrap().iter().filter(|(_, c)| c.is_some()).count()
    }
}

#[test]
fn streams_that_never_finish_a_frame_hold_nothing_back() {
    use dfs_p2p::net::behaviour::{FILE_REQUEST_TIMEOUT, MAX_CONCURRENT_STREAMS};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (mut victim, addr, ticket) = victim(dir.path(), &[]);
    // Eight connections, each with more unfinished frames than the victim
    // takes streams on a connection. The victim holds at most
    // `MAX_CONCURRENT_STREAMS` of them per connection, each until its
    // request timeout, and closes the rest at once: a stream open for half
    // the timeout was taken, one closed sooner was refused.
    let per_connection = MAX_CONCURRENT_STREAMS + 64;
    let taken = FILE_REQUEST_TIMEOUT / 2;
    wait_idle(victim.pid(), Duration::from_secs(20));
    let before = rss(victim.pid());
    let started = Instant::now();
    let stallers: Vec<Staller> = (0..8)
        .map(|_| Staller::start(&rt, &addr, per_connection, 2 * FILE_REQUEST_TIMEOUT))
        .collect();

    // The stall is in place: every stream opened, and those beyond what a
    // connection may hold already closed.
    let refused_at_least = per_connection - MAX_CONCURRENT_STREAMS;
    let in_place = |s: &Staller| s.opened() == per_connection && s.closed() >= refused_at_least;
    while !stallers.iter().all(in_place) {
        let state: Vec<_> = stallers.iter().map(|s| (s.opened(), s.closed())).collect();
        assert!(
            started.elapsed() < taken,
            "no stall in place within {taken:?}: (opened, closed) per connection {state:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // What each stalled stream costs the victim: a few KiB (see the
    // README's limits for the bound at the connection and stream limits).
    wait_idle(victim.pid(), Duration::from_secs(10));
    let held = 8 * MAX_CONCURRENT_STREAMS;
    let per_stream = rss(victim.pid()).saturating_sub(before) / held as u64;
    eprintln!("{held} stalled streams held: {per_stream} B each");
    assert!(per_stream < 4096, "a stalled stream costs {per_stream} B");

    // Honest work gets through while the stalls are held: it needs nothing
    // they hold, so it does not wait for the victim to let them go.
    rt.block_on(honest_get(&addr, &ticket));
    let honest_done = Instant::now();

    // Every stream is closed by the victim, those it held once their
    // request timeout passed.
    for s in &stallers {
        let deadline = Instant::now() + 2 * FILE_REQUEST_TIMEOUT;
        while s.ended.lock().unwrap().len() < per_connection {
            assert!(Instant::now() < deadline, "the stalled streams never all ended");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for (i, s) in stallers.iter().enumerate() {
        let ended = s.ended.lock().unwrap();
        let held: Vec<Duration> = ended
            .iter()
            .map(|(at, closed)| {
                let closed = closed.unwrap_or_else(|| {
                    panic!(
                        "connection {i}: a stalled stream outlived {:?}",
                        2 * FILE_REQUEST_TIMEOUT
                    )
                });
                closed - *at
            })
            .collect();
        let accepted = held.iter().filter(|h| **h >= taken).count();
        let longest = held.iter().max().unwrap();
        eprintln!(
            "connection {i}: {accepted} of {per_connection} stalls held, longest {longest:?}"
        );
        assert!(accepted > 0, "connection {i}: the victim took none of the stalled streams");
        assert!(
            accepted <= MAX_CONCURRENT_STREAMS,
            "connection {i}: the victim held {accepted} stalled streams"
        );
        let released = ended.iter().filter_map(|(at, closed)| closed.filter(|c| *c - *at >= taken));
        let first_release = released.min().unwrap();
        assert!(
            honest_done < first_release,
            "connection {i}: the honest get ended after a stall was let go"
        );
    }
    for s in stallers {
        s.task.abort();
    }
    assert_healthy(&mut victim);
}

/// Resident memory of a process now, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn request_frames_that_never_finish_cost_a_few_kib_each() {
    use dfs_p2p::net::{
        behaviour::{FILE_REQUEST_TIMEOUT, MAX_CONCURRENT_STREAMS},
        codec::LARGE_BODIES_BUDGET,
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (mut victim, addr, ticket) = victim(dir.path(), &[]);
    // A `Have` frame of 1,024 CIDs, the largest request, without the last
    // byte of its body: on every stream the victim takes of eight
    // connections.
    const BODY: usize = 37_890;
    let mut unfinished = vec![0x02];
    unfinished.extend((BODY as u32).to_be_bytes());
    unfinished.extend(std::iter::repeat_n(0u8, BODY - 1));
    let (connections, per_connection) = (8, MAX_CONCURRENT_STREAMS);
    let streams = connections * per_connection;
    wait_idle(victim.pid(), Duration::from_secs(20));
    let before = rss(victim.pid());
    let patience = 2 * FILE_REQUEST_TIMEOUT;
    let stallers: Vec<Staller> = (0..connections)
        .map(|_| Staller::sending(&rt, &addr, per_connection, patience, unfinished.clone()))
        .collect();

    // The attack is in place once every stream is open and every frame
    // past the budget was answered (`Busy`): the victim read the rest up
    // to their last byte and waits for it.
    let held_at_most = LARGE_BODIES_BUDGET / BODY;
    let answered = || stallers.iter().map(|s| s.answered.load(Ordering::Relaxed)).sum::<u64>();
    let deadline = Instant::now() + FILE_REQUEST_TIMEOUT / 2;
    while stallers.iter().any(|s| s.opened() < per_connection)
        || (answered() as usize) < streams - held_at_most
    {
        assert!(
            Instant::now() < deadline,
            "{} of {streams} unfinished frames answered within {:?}: the victim holds them all",
            answered(),
            FILE_REQUEST_TIMEOUT / 2
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_idle(victim.pid(), Duration::from_secs(20));
    let held = streams - answered() as usize;
    let grown = rss(victim.pid()).saturating_sub(before);
    eprintln!(
        "{streams} unfinished frames: {held} held, the rest answered Busy; the victim grew by \
         {} KiB ({} B per stream)",
        grown >> 10,
        grown / streams as u64
    );
    assert!(held > 0, "the victim held none of the unfinished frames");
    // Without the budget, each frame held its whole body: 37 KiB, read
    // into a buffer that doubled to 64 KiB.
    let bound = 16 * 1024 * streams as u64;
    assert!(grown < bound, "{streams} unfinished frames cost {} KiB", grown >> 10);

    // Honest work goes on meanwhile.
    rt.block_on(honest_get(&addr, &ticket));
    for s in stallers {
        s.task.abort();
    }
    assert_healthy(&mut victim);
}

/// The victim's block streams open and stream answers held, from its
/// `stat`.
fn block_streams(victim: &mut Victim) -> (usize, usize) {
    let [open, held] = stat_numbers(victim, "serving", [4, 8]);
    (open, held)
}

/// A peer that opens `streams` block streams to the victim, asks for
/// `blocks` on each, and never reads an answer; returns how many it opened.
fn unread_streams(
    rt: &Runtime,
    victim: &Multiaddr,
    streams: usize,
    blocks: Vec<Cid>,
) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    use dfs_p2p::net::codec::{BLOCKS_STREAM_PROTOCOL, write_block_request};
    let opened = Arc::new(AtomicU64::new(0));
    let (count, victim) = (opened.clone(), victim.clone());
    let task = rt.spawn(async move {
        let mut swarm = swarm_with(libp2p_stream::Behaviour::new());
        let mut control = swarm.behaviour().new_control();
        let peer = peer_of(&victim);
        swarm.dial(victim).unwrap();
        let open = async move {
            for _ in 0..streams {
                let Ok(mut stream) = control.open_stream(peer, BLOCKS_STREAM_PROTOCOL).await else {
                    continue;
                };
                count.fetch_add(1, Ordering::Relaxed);
                let blocks = blocks.clone();
                tokio::spawn(async move {
                    use futures::AsyncWriteExt;
                    for cid in &blocks {
                        if write_block_request(&mut stream, cid).await.is_err() {
                            break;
                        }
                    }
                    let _ = stream.flush().await;
                    // Held open, never read.
                    futures::future::pending::<()>().await;
                    drop(stream);
                });
            }
            futures::future::pending::<()>().await
        };
        let drive = async move {
            loop {
                swarm.select_next_some().await;
            }
        };
        futures::future::join(open, drive).await;
    });
    (opened, task)
}

#[test]
fn unread_block_streams_do_not_stop_honest_gets() {
    use dfs_p2p::net::{
        blocks::{MAX_BLOCK_STREAMS_PER_PEER, STREAM_STALL, STREAM_STALL_CONTENDED},
        shares::PEER_STREAM_BLOCKS,
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (mut victim, addr, ticket) = victim(dir.path(), &[]);
    // The victim's leaves (its blocks of 1 MiB).
    let leaves: Vec<Cid> = walkdir(&dir.path().join("victim").join("blocks"))
        .iter()
        .map(|path| block::parse_cid(path.file_name().unwrap().to_str().unwrap()).unwrap())
        .filter(|cid| cid.codec() == RAW)
        .collect();
    assert!(leaves.len() >= 5, "{} leaves", leaves.len());

    // Two strangers open every block stream they may, ask for five leaves
    // on each, and read nothing.
    let attacks: Vec<_> = (0..2)
        .map(|_| unread_streams(&rt, &addr, MAX_BLOCK_STREAMS_PER_PEER, leaves[..5].to_vec()))
        .collect();
    // The attack landed: the victim took every stream and read blocks for
    // them, at least a peer's share. (It ends their streams once an answer
    // stalls: within `STREAM_STALL_CONTENDED` while more blocks are asked
    // for than the shares hold.)
    let streams = 2 * MAX_BLOCK_STREAMS_PER_PEER;
    let deadline = Instant::now() + STREAM_STALL;
    let (mut most_open, mut most_held) = (0, 0);
    loop {
        let opened: u64 = attacks.iter().map(|(n, _)| n.load(Ordering::Relaxed)).sum();
        let (open, held) = block_streams(&mut victim);
        (most_open, most_held) = (most_open.max(open), most_held.max(held));
        if opened as usize == streams && most_open >= streams / 2 && most_held >= PEER_STREAM_BLOCKS
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{opened} streams opened; the victim had at most {most_open} open and held at most \
             {most_held} blocks"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // An honest get is served at once, from the reserve, without waiting
    // for the stalled answers to give way.
    let took = rt.block_on(honest_get(&addr, &ticket));
    eprintln!("honest get under {streams} unread streams: {took:?}");
    assert!(took < STREAM_STALL_CONTENDED, "the honest get took {took:?}");

    // The victim ends every unread stream and lets their blocks go.
    let deadline = Instant::now() + 2 * STREAM_STALL;
    loop {
        let (open, held) = block_streams(&mut victim);
        if (open, held) == (0, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} unread streams open and {held} blocks held after {:?}",
            2 * STREAM_STALL
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (_, task) in attacks {
        task.abort();
    }
    assert_healthy(&mut victim);
}

#[test]
fn silent_sockets_and_a_crowd_of_idle_peers_lock_nobody_out() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (mut victim, addr, ticket) = victim(dir.path(), &[]);
    let port = victim.port();

    // 300 sockets that never start the handshake.
    let silent: Vec<TcpStream> =
        (0..300).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    // 256 fresh peer ids with two idle connections each.
    let dials = Arc::new(AtomicU64::new(0));
    let established = Arc::new(AtomicU64::new(0));
    let crowd: Vec<_> = (0..256)
        .map(|_| {
            let addr = addr.clone();
            let (dials, established) = (dials.clone(), established.clone());
            rt.spawn(async move {
                let mut swarm = swarm_with(libp2p::swarm::dummy::Behaviour);
                for _ in 0..2 {
                    let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer_of(&addr))
                        .addresses(vec![addr.clone()])
                        .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                        .build();
                    let _ = swarm.dial(opts);
                }
                loop {
                    match swarm.select_next_some().await {
                        SwarmEvent::ConnectionEstablished { .. } => {
                            established.fetch_add(1, Ordering::Relaxed);
                            dials.fetch_add(1, Ordering::Relaxed);
                        }
                        SwarmEvent::OutgoingConnectionError { .. } => {
                            dials.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            })
        })
        .collect();
    // The crowd is in: every dial came to an end, and idle peers hold
    // connections.
    let deadline = Instant::now() + HONEST_GET;
    while dials.load(Ordering::Relaxed) < 512 {
        assert!(Instant::now() < deadline, "{} of 512 dials ended", dials.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(50));
    }
    let crowded = established.load(Ordering::Relaxed);
    assert!(crowded > 0, "no idle peer got a connection");
    rt.block_on(honest_get(&addr, &ticket));
    // The silent sockets were dropped after the handshake timeout.
    for mut socket in silent {
        socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut byte = [0u8; 1];
        let read = socket.read(&mut byte);
        assert!(matches!(read, Ok(0) | Err(_)), "a silent socket is still open: {read:?}");
    }
    for c in crowd {
        c.abort();
    }
    assert_healthy(&mut victim);
}

/// The numbers at word indices `at` of the victim's `stat` row `label`.
fn stat_numbers<const N: usize>(victim: &mut Victim, label: &str, at: [usize; N]) -> [usize; N] {
    victim.send("stat");
    let line = victim.expect_out(|l| l.starts_with(label));
    let words: Vec<&str> = line.split_whitespace().collect();
    at.map(|i| {
        let n = words.get(i).and_then(|n| n.parse().ok());
        n.unwrap_or_else(|| panic!("no number at word {i} of {line:?}"))
    })
}

/// Provider records of other peers the victim holds, from its `stat`.
fn foreign_records(victim: &mut Victim) -> usize {
    stat_numbers(victim, "dht records", [2])[0]
}

#[test]
fn a_flood_of_fat_provider_records_leaves_the_victims_files_findable() {
    use dfs_p2p::net::records::MAX_RECORDS_PER_PEER;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (mut victim, addr, ticket) = victim(dir.path(), &[]);
    assert_eq!(foreign_records(&mut victim), 0);
    // A peer that announces itself as the provider of ever new keys, each
    // record with 200 addresses, keeping 256 announcements under way;
    // counts those done (sent to the victim, its only peer).
    let announced = Arc::new(AtomicU64::new(0));
    let flooder = rt.spawn({
        let (addr, announced) = (addr.clone(), announced.clone());
        async move {
            let mut swarm = libp2p::SwarmBuilder::with_new_identity()
                .with_tokio()
                .with_tcp(
                    tcp::Config::default().nodelay(true),
                    noise::Config::new,
                    yamux::Config::default,
                )
                .unwrap()
                .with_behaviour(|key| {
                    let me = key.public().to_peer_id();
                    let store = libp2p::kad::store::MemoryStore::with_config(
                        me,
                        libp2p::kad::store::MemoryStoreConfig {
                            max_provided_keys: 1 << 20,
                            ..Default::default()
                        },
                    );
                    let mut config =
                        libp2p::kad::Config::new(dfs_p2p::net::behaviour::KAD_PROTOCOL);
                    config.set_max_packet_size(1 << 20);
                    libp2p::kad::Behaviour::with_config(me, store, config)
                })
                .unwrap()
                .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
                .build();
            swarm.behaviour_mut().set_mode(Some(libp2p::kad::Mode::Server));
            for i in 0..200u32 {
                let fake: Multiaddr =
                    format!("/ip4/10.1.{}.{}/tcp/4001", i / 250, i % 250).parse().unwrap();
                swarm.add_external_address(fake);
            }
            swarm.behaviour_mut().add_address(&peer_of(&addr), addr.clone());
            let (mut next, mut running) = (0u32, 0);
            loop {
                while running < 256 {
                    let key = libp2p::kad::RecordKey::new(&next.to_be_bytes());
                    let _ = swarm.behaviour_mut().start_providing(key);
                    (next, running) = (next + 1, running + 1);
                }
                if let SwarmEvent::Behaviour(libp2p::kad::Event::OutboundQueryProgressed {
                    result: libp2p::kad::QueryResult::StartProviding(_),
                    step,
                    ..
                }) = swarm.select_next_some().await
                    && step.last
                {
                    running -= 1;
                    announced.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });

    // The flood lands: the victim takes the flooder's records up to the
    // share one peer may have, never more, even as twice that many more
    // arrive.
    let held = |victim: &mut Victim| {
        let held = foreign_records(victim);
        assert!(held <= MAX_RECORDS_PER_PEER, "the victim holds {held} records of one peer");
        held
    };
    let deadline = Instant::now() + HONEST_GET;
    while held(&mut victim) < MAX_RECORDS_PER_PEER {
        let sent = announced.load(Ordering::Relaxed);
        assert!(Instant::now() < deadline, "{sent} records announced, too few held");
        std::thread::sleep(Duration::from_millis(200));
    }
    let more = announced.load(Ordering::Relaxed) + 2 * MAX_RECORDS_PER_PEER as u64;
    let deadline = Instant::now() + HONEST_GET;
    while announced.load(Ordering::Relaxed) < more {
        assert!(Instant::now() < deadline, "the flooder stalled");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(held(&mut victim), MAX_RECORDS_PER_PEER);
    eprintln!("{MAX_RECORDS_PER_PEER} records held of {more} announced");

    // Meanwhile the victim's own file stays findable through the DHT, and
    // fetchable.
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::new(dir.path().to_path_buf());
        config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        config.bootstrap = vec![addr.clone()];
        let finder = Node::start(config).await.unwrap();
        finder.wait_for_peers(1, Duration::from_secs(10)).await;
        let providers = finder.providers(ticket.root).await.unwrap();
        assert!(providers.contains(&peer_of(&addr)), "{providers:?}");
        finder.shutdown().await;
        honest_get(&addr, &ticket).await
    });
    flooder.abort();
    assert_healthy(&mut victim);
}

// ---- Clients of the HTTP gateway ----

/// Where the victim's HTTP gateway listens, from the line it printed.
fn gateway_of(victim: &Victim) -> std::net::SocketAddr {
    let printed = victim.seen.iter().find_map(|line| match line {
        cli_support::Line::Err(l) => l.strip_prefix("http gateway on http://")?.split('/').next(),
        cli_support::Line::Out(_) => None,
    });
    printed.expect("the victim printed its gateway").parse().unwrap()
}

/// The loopback address 127.0.0.n. The gateway keeps a share per client
/// address and every address of 127/8 reaches it, so each client of a test
/// can be one of its own.
fn loopback(n: u8) -> std::net::IpAddr {
    std::net::Ipv4Addr::new(127, 0, 0, n).into()
}

/// A connection to the gateway from `from`. A receive buffer of `window`
/// bytes makes a client that lets little reach it at a time.
async fn connect_from(
    from: std::net::IpAddr,
    to: std::net::SocketAddr,
    window: Option<u32>,
) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(bytes) = window {
        socket.set_recv_buffer_size(bytes).unwrap();
    }
    socket.bind(std::net::SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// An answer's head: its status, its Content-Length, and what part of the
/// body came with it.
type Head = (u16, u64, Vec<u8>);

/// Sends `METHOD path` with `headers` (lines ending in CRLF) and reads the
/// answer's head; `None` if the connection closed (or was reset) first.
async fn ask_http(
    stream: &mut tokio::net::TcpStream,
    method: &str,
    path: &str,
    headers: &str,
) -> Option<Head> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("{method} {path} HTTP/1.1\r\nHost: gateway\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let status = head.split_whitespace().nth(1)?.parse().ok()?;
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |n| n.trim().parse().unwrap());
            return Some((status, length, got[end + 4..].to_vec()));
        }
        assert!(got.len() < 64 * 1024, "an answer's head of over 64 KiB");
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads the rest of a body whose head was `head`.
async fn rest_of_body(stream: &mut tokio::net::TcpStream, head: Head) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let (_, length, mut body) = head;
    let start = body.len();
    body.resize(length as usize, 0);
    stream.read_exact(&mut body[start..]).await.unwrap();
    body
}

/// An honest client at `from` reads `path` whole, on a connection of its
/// own; returns the status and how long the read took.
async fn honest_http_get(
    from: std::net::IpAddr,
    gateway: std::net::SocketAddr,
    path: &str,
    want: &[u8],
) -> (u16, Duration) {
    let started = Instant::now();
    let mut stream = connect_from(from, gateway, None).await;
    let head = ask_http(&mut stream, "GET", path, "Connection: close\r\n").await;
    let head = head.expect("the gateway closed an honest client's connection");
    let status = head.0;
    let body = rest_of_body(&mut stream, head).await;
    if status == 200 {
        assert!(body == want, "an honest client got wrong bytes");
    }
    (status, started.elapsed())
}

/// The median of three honest reads of the file, each of which must be
/// served.
async fn honest_http_reads(gateway: std::net::SocketAddr, path: &str, want: &[u8]) -> Duration {
    let mut took = Vec::new();
    for _ in 0..3 {
        let (status, time) = honest_http_get(loopback(2), gateway, path, want).await;
        assert_eq!(status, 200, "the honest client was not served");
        took.push(time);
    }
    took.sort();
    took[1]
}

#[test]
fn idle_gateway_clients_and_absent_tickets_leave_reads_served() {
    use dfs_p2p::gateway::{
        CONNECTIONS_PER_CLIENT, HEADER_TIMEOUT, IDLE_TIMEOUT, LOOKUPS_PER_CLIENT,
        READERS_PER_CLIENT,
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (mut victim, addr, ticket) = victim(dir.path(), &["--http", "127.0.0.1:0"]);
    let gateway = gateway_of(&victim);
    let own = format!("/dfs/{ticket}");
    let file = cli_support::data(FILE_LEN, 7);
    let unattacked = rt.block_on(honest_http_reads(gateway, &own, &file));

    // A peer that leaves every request for the root of a file nobody has
    // unanswered: looking that root up waits on it as a get would.
    let absent = Ticket::new(block::cid_of(DAG_CBOR, &cli_support::data(64, 99)), [9; 32]);
    let _staller = Hostile::holding_back(&rt, &addr, HashMap::new(), Some(absent.root));
    victim.wait_for_peers(1);

    // Idle readers from two addresses: as many connections as each may
    // open, each asking for the file (again and again for two seconds
    // while refused) and taking none of it. Each address holds its share
    // of reads; its other requests are answered 503.
    let attack_started = Instant::now();
    let idle = rt.block_on(join_all((0..2u8).flat_map(|n| {
        let own = own.clone();
        (0..CONNECTIONS_PER_CLIENT).map(move |_| {
            let own = own.clone();
            async move {
                let mut stream = connect_from(loopback(11 + n), gateway, Some(4096)).await;
                loop {
                    match ask_http(&mut stream, "GET", &own, "").await {
                        Some((200, ..)) => return (n, Some(stream)),
                        Some(head @ (503, ..)) => {
                            rest_of_body(&mut stream, head).await;
                        }
                        other => panic!("an idle reader was answered {other:?}"),
                    }
                    if attack_started.elapsed() > Duration::from_secs(2) {
                        return (n, None);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    })));
    for n in 0..2u8 {
        let held = idle.iter().filter(|(m, stream)| *m == n && stream.is_some()).count();
        assert_eq!(held, READERS_PER_CLIENT, "reads held by 127.0.0.{}", 11 + n);
    }
    let holders: Vec<_> = idle.into_iter().filter_map(|(_, stream)| stream).collect();

    // Tickets of the absent file from eight addresses, ten connections
    // each, asked again as soon as answered (after a pause if refused).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let not_found = Arc::new(AtomicU64::new(0));
    let refused: Arc<Vec<AtomicU64>> = Arc::new((0..8).map(|_| AtomicU64::new(0)).collect());
    let slowest = Arc::new(AtomicU64::new(0));
    let lookers: Vec<_> = (0..80u8)
        .map(|i| {
            let path = format!("/dfs/{absent}");
            let (stop, not_found, refused) = (stop.clone(), not_found.clone(), refused.clone());
            let (slowest, from) = (slowest.clone(), loopback(21 + i / 10));
            rt.spawn(async move {
                let mut stream = connect_from(from, gateway, None).await;
                while !stop.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    let Some(head) = ask_http(&mut stream, "GET", &path, "").await else {
                        stream = connect_from(from, gateway, None).await;
                        continue;
                    };
                    let status = head.0;
                    rest_of_body(&mut stream, head).await;
                    match status {
                        404 => {
                            not_found.fetch_add(1, Ordering::Relaxed);
                            let ms = asked.elapsed().as_millis() as u64;
                            slowest.fetch_max(ms, Ordering::Relaxed);
                        }
                        503 => {
                            refused[usize::from(i / 10)].fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        other => panic!("a ticket of an absent file was answered {other}"),
                    }
                }
            })
        })
        .collect();

    // Connections that never finish their request head, from one address:
    // one more than it may open.
    let slow_heads: Vec<_> = (0..=CONNECTIONS_PER_CLIENT)
        .map(|_| {
            rt.spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut stream = connect_from(loopback(31), gateway, None).await;
                let opened = Instant::now();
                let _ = stream.write_all(b"GET /dfs/ HTTP/1.1\r\nHost: gat").await;
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                opened.elapsed()
            })
        })
        .collect();

    // The lookups are under way: each address was refused some (its share
    // is taken). An honest client at another address reads meanwhile; then
    // the lookups end, as 404, after the staller kept them waiting.
    wait_until("every address of the lookups is refused some", || {
        refused.iter().all(|n| n.load(Ordering::Relaxed) > 0)
    });
    let attacked = rt.block_on(honest_http_reads(gateway, &own, &file));
    wait_until("lookups of the absent file end", || {
        not_found.load(Ordering::Relaxed) >= LOOKUPS_PER_CLIENT as u64
    });
    stop.store(true, Ordering::Relaxed);
    let slowest = Duration::from_millis(slowest.load(Ordering::Relaxed));
    eprintln!(
        "honest read: {unattacked:?} alone, {attacked:?} attacked; absent tickets: {} looked up \
         (the slowest in {slowest:?}), {} refused",
        not_found.load(Ordering::Relaxed),
        refused.iter().map(|n| n.load(Ordering::Relaxed)).sum::<u64>(),
    );
    assert!(slowest >= Duration::from_secs(1), "no lookup was held: {slowest:?}");
    assert!(attacked <= unattacked * 5, "honest read: {unattacked:?} alone, {attacked:?} attacked");
    for looker in lookers {
        looker.abort();
    }

    // The request heads that never end: the connections past the share
    // are closed at once, the others once the head has had its time.
    let bound = HEADER_TIMEOUT + Duration::from_secs(20);
    let closed = rt.block_on(async { tokio::time::timeout(bound, join_all(slow_heads)).await });
    let closed: Vec<Duration> = closed
        .expect("connections that never finish their head are still open")
        .into_iter()
        .map(|t| t.unwrap())
        .collect();
    let at_once = closed.iter().filter(|t| **t < HEADER_TIMEOUT / 2).count();
    let timed_out = closed
        .iter()
        .filter(|t| **t >= HEADER_TIMEOUT - Duration::from_secs(1))
        .filter(|t| **t < HEADER_TIMEOUT + Duration::from_secs(10))
        .count();
    assert_eq!((at_once, timed_out), (1, CONNECTIONS_PER_CLIENT), "{closed:?}");

    // The idle readers hold their slots until they have taken nothing for
    // the idle timeout: the address then reads again.
    let freed = rt.block_on(async {
        loop {
            let (status, _) = honest_http_get(loopback(11), gateway, &own, &file).await;
            if status == 200 {
                return attack_started.elapsed();
            }
            assert_eq!(status, 503);
            assert!(
                attack_started.elapsed() < IDLE_TIMEOUT + Duration::from_secs(20),
                "idle readers still hold their slots"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    assert!(freed >= IDLE_TIMEOUT, "slots freed after only {freed:?}");
    eprintln!("the idle readers' slots came back {freed:?} after they were taken");
    // Their bodies were cut short: each connection is reset (the other
    // address's readers may have stalled a little later), and what had
    // reached the reader by then is less than the file.
    for mut stream in holders {
        rt.block_on(async {
            use tokio::io::AsyncReadExt;
            let deadline = attack_started + IDLE_TIMEOUT + Duration::from_secs(20);
            while stream.take_error().unwrap().is_none() {
                assert!(Instant::now() < deadline, "an idle reader's answer was never dropped");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut got = 0;
            let mut buf = vec![0u8; 64 * 1024];
            let read = async {
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    got += n;
                }
            };
            tokio::time::timeout(Duration::from_secs(30), read).await.expect("still open");
            assert!(got < FILE_LEN, "an idle reader got the whole file");
        });
    }
    assert_healthy(&mut victim);
}

/// A `Range` header listing ranges `0-0,2-2,…` up to `bytes` long.
fn many_ranges(bytes: usize) -> String {
    let mut header = String::from("Range: bytes=0-0");
    let mut at = 2;
    while header.len() + 24 < bytes {
        header.push_str(&format!(",{at}-{at}"));
        at += 2;
    }
    header + "\r\n"
}

#[test]
fn a_huge_range_header_is_refused_cheaply() {
    use dfs_p2p::gateway::MAX_HEAD;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (mut victim, addr, ticket) = victim(dir.path(), &["--http", "127.0.0.1:0"]);
    let gateway = gateway_of(&victim);
    let own = format!("/dfs/{ticket}");
    let median = |mut took: Vec<Duration>| {
        took.sort();
        took[1]
    };
    let unattacked = median((0..3).map(|_| rt.block_on(honest_get(&addr, &ticket))).collect());

    // Eight clients, each asking for the file's head every 10 ms, one
    // request at a time: four with a Range header as long as a request head
    // may be, four with one of 350 KiB (30,000 ranges).
    let (read, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let attackers: Vec<_> = (0..8)
        .map(|i| {
            let range =
                if i % 2 == 0 { many_ranges(MAX_HEAD - 1024) } else { many_ranges(350 << 10) };
            let (own, read, refused) = (own.clone(), read.clone(), refused.clone());
            rt.spawn(async move {
                let mut stream = connect_from(loopback(41), gateway, None).await;
                loop {
                    match ask_http(&mut stream, "HEAD", &own, &range).await {
                        // The ranges were not served: the whole file's head.
                        Some((200, length, _)) if length == FILE_LEN as u64 => {
                            read.fetch_add(1, Ordering::Relaxed);
                        }
                        Some((431, _, _)) | None => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            stream = connect_from(loopback(41), gateway, None).await;
                        }
                        Some((status, length, _)) => panic!("answered {status}, {length} bytes"),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    let answered = || read.load(Ordering::Relaxed) + refused.load(Ordering::Relaxed);
    wait_until("the victim answers the long Range headers", || answered() >= 100);
    let attacked = median((0..3).map(|_| rt.block_on(honest_get(&addr, &ticket))).collect());
    eprintln!("honest get: {unattacked:?} alone, {attacked:?} attacked");
    assert!(attacked <= unattacked * 5, "honest get: {unattacked:?} alone, {attacked:?} attacked");
    // What one of these requests costs the victim, attacked alone.
    let (cpu_before, before) = (cpu_secs(victim.pid()), answered());
    wait_until("the victim answers 400 more", || answered() >= before + 400);
    let per_request = (cpu_secs(victim.pid()) - cpu_before) / (answered() - before) as f64;
    for attacker in attackers {
        attacker.abort();
    }
    let (read, refused) = (read.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    eprintln!(
        "the victim answered {read} long Range headers and refused {refused} longer heads, \
         {:.2} ms of CPU each",
        per_request * 1000.0
    );
    assert!(per_request < 0.001, "{:.2} ms of CPU a request", per_request * 1000.0);
    assert!(read > 0 && refused > 0, "{read} Range headers answered, {refused} heads refused");
    assert_healthy(&mut victim);
}

/// Provider and delete records of other peers the victim holds, from its
/// `stat`.
fn record_counts(victim: &mut Victim) -> (usize, usize) {
    let [providers, deletes] = stat_numbers(victim, "dht records", [2, 5]);
    (providers, deletes)
}

/// What a spammer sends: provider records of its own, each with 20
/// made-up addresses (the most libp2p sends; the store's unit tests give
/// one 1,400), or valid delete records an owner of its own signed.
#[derive(Clone, Copy)]
enum Spam {
    Providers,
    Deletes,
}

/// A peer of a fresh id sends the victim `count` records of `kind`, 64
/// under way at once. It is a Kademlia client, so no routing table takes
/// it in and no lookup but its own reaches it. Returns how many were sent
/// (a provider record) or answered (a delete record).
async fn spam_records(victim: Multiaddr, kind: Spam, count: u32) -> u64 {
    use dfs_p2p::lease::DeleteRecord;
    use libp2p::kad;
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|key| {
            let me = key.public().to_peer_id();
            let config =
                kad::store::MemoryStoreConfig { max_provided_keys: 1 << 20, ..Default::default() };
            let store = kad::store::MemoryStore::with_config(me, config);
            let mut config = kad::Config::new(dfs_p2p::net::behaviour::KAD_PROTOCOL);
            config.set_max_packet_size(1 << 20);
            kad::Behaviour::with_config(me, store, config)
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    swarm.behaviour_mut().set_mode(Some(kad::Mode::Client));
    if let Spam::Providers = kind {
        for i in 0..20u32 {
            let fake: Multiaddr = format!("/ip4/10.1.0.{i}/tcp/4001").parse().unwrap();
            swarm.add_external_address(fake);
        }
    }
    let peer = peer_of(&victim);
    swarm.behaviour_mut().add_address(&peer, victim);
    let me = swarm.local_peer_id().to_bytes();
    let owner = libp2p::identity::Keypair::generate_ed25519();
    let owner_id = owner.public().to_peer_id();
    let (mut next, mut running, mut done) = (0u32, 0u32, 0u64);
    loop {
        while running < 64 && next < count {
            let root = block::cid_of(DAG_CBOR, &[&me[..], &next.to_be_bytes()].concat());
            next += 1;
            let kad = swarm.behaviour_mut();
            match kind {
                Spam::Providers => {
                    if kad.start_providing(kad::RecordKey::new(&root.to_bytes())).is_err() {
                        continue;
                    }
                }
                Spam::Deletes => {
                    let record =
                        DeleteRecord::issue(&owner, root, Duration::from_secs(3600)).unwrap();
                    let key = kad::RecordKey::new(&DeleteRecord::dht_key(&root, &owner_id));
                    let record = kad::Record::new(key, record.encode());
                    kad.put_record_to(record, std::iter::once(peer), kad::Quorum::One);
                }
            }
            running += 1;
        }
        if running == 0 {
            return done;
        }
        // Its own queries only (Kademlia bootstraps on its own too).
        if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed { result, step, .. }) =
            swarm.select_next_some().await
            && step.last
        {
            let ok = match result {
                kad::QueryResult::StartProviding(result) => result.is_ok(),
                kad::QueryResult::PutRecord(result) => result.is_ok(),
                _ => continue,
            };
            running -= 1;
            done += u64::from(ok);
        }
    }
}

/// An honest peer that holds `root` and says so: a Kademlia client (no
/// routing table takes it in and no lookup asks it) that listens, gives
/// its address in its provider record, and publishes that record to the
/// victim. Returns its id once the record was sent, and the task that
/// keeps it up.
async fn honest_provider(victim: Multiaddr, root: Cid) -> (PeerId, tokio::task::JoinHandle<()>) {
    use libp2p::kad;
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|key| {
            let me = key.public().to_peer_id();
            let config = kad::Config::new(dfs_p2p::net::behaviour::KAD_PROTOCOL);
            kad::Behaviour::with_config(me, kad::store::MemoryStore::new(me), config)
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    swarm.behaviour_mut().set_mode(Some(kad::Mode::Client));
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
    let listening = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    swarm.add_external_address(listening);
    swarm.behaviour_mut().add_address(&peer_of(&victim), victim);
    swarm.behaviour_mut().start_providing(kad::RecordKey::new(&root.to_bytes())).unwrap();
    loop {
        if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
            result: kad::QueryResult::StartProviding(result),
            ..
        }) = swarm.select_next_some().await
        {
            result.expect("the honest provider record was not sent");
            break;
        }
    }
    let id = *swarm.local_peer_id();
    (id, tokio::spawn(async move { while swarm.next().await.is_some() {} }))
}

#[test]
fn record_spam_from_many_ids_leaves_honest_records_kept() {
    use dfs_p2p::{
        net::records::{
            MAX_FOREIGN_RECORDS, MAX_RECORDS_PER_PEER, MAX_VALUE_RECORDS,
            MAX_VALUE_RECORDS_PER_PEER,
        },
        ticket::TicketOrCid,
    };
    /// How long the whole flood may take.
    const FLOOD: Duration = Duration::from_secs(180);
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (mut victim, addr, ticket) = victim(dir.path(), &[]);
    assert_eq!(record_counts(&mut victim), (0, 0));

    // More fresh ids than fill the store, each sending its whole share of
    // both kinds: 40 × 1,024 provider records, 20 × 1,024 delete records.
    let provider_ids = MAX_FOREIGN_RECORDS / MAX_RECORDS_PER_PEER + 8;
    let delete_ids = MAX_VALUE_RECORDS / MAX_VALUE_RECORDS_PER_PEER + 4;
    let started = Instant::now();
    let sent: Vec<u64> = rt.block_on(async {
        let providers = (0..provider_ids).map(|_| (Spam::Providers, MAX_RECORDS_PER_PEER));
        let deletes = (0..delete_ids).map(|_| (Spam::Deletes, MAX_VALUE_RECORDS_PER_PEER));
        let spammers = providers
            .chain(deletes)
            .map(|(kind, count)| tokio::spawn(spam_records(addr.clone(), kind, count as u32)));
        let sent = tokio::time::timeout(FLOOD, join_all(spammers)).await;
        sent.expect("the flood did not end in time").into_iter().map(Result::unwrap).collect()
    });
    let each = [MAX_RECORDS_PER_PEER as u64, MAX_VALUE_RECORDS_PER_PEER as u64];
    assert!(sent.iter().all(|n| each.contains(n)), "records sent per id: {sent:?}");
    eprintln!(
        "{} records sent by {} ids in {:.1} s",
        sent.iter().sum::<u64>(),
        sent.len(),
        started.elapsed().as_secs_f64()
    );

    // The flood landed: the victim's store is full of both kinds.
    let full = (MAX_FOREIGN_RECORDS, MAX_VALUE_RECORDS);
    let deadline = Instant::now() + HONEST_GET;
    loop {
        let held = record_counts(&mut victim);
        if held == full {
            break;
        }
        assert!(Instant::now() < deadline, "the victim holds {held:?} records after the flood");
        std::thread::sleep(Duration::from_millis(200));
    }

    rt.block_on(async {
        // An honest peer publishes a provider record; an honest node
        // publishes a delete record (a put, then its delete). Neither is
        // in a routing table, so no lookup asks them: what is found of
        // their records was found on the victim.
        let root = block::cid_of(DAG_CBOR, b"an honest root");
        let (provider, provider_task) = honest_provider(addr.clone(), root).await;
        let client = |dir: &Path| {
            let mut config = NodeConfig::new(dir.to_path_buf());
            config.listen = Vec::new();
            config.bootstrap = vec![addr.clone()];
            config.replicas = 1;
            config
        };
        let honest_dir = tempfile::tempdir().unwrap();
        let honest = Node::start(client(honest_dir.path())).await.unwrap();
        assert!(honest.wait_for_peers(1, HONEST_GET).await >= 1, "the honest node never connected");
        let bytes = cli_support::data(64 * 1024, 11);
        let len = Some(bytes.len() as u64);
        let put = honest.put(Box::new(std::io::Cursor::new(bytes)), None, len, None).await;
        let deleted = put.unwrap().ticket;
        let report = honest.delete(TicketOrCid::Ticket(deleted.clone())).await.unwrap();
        // The victim, its only peer, kept the delete record: it reads back.
        assert!(matches!(report.record, Ok(n) if n >= 1), "{:?}", report.record);

        // Another node that knows only the victim finds both.
        let finder_dir = tempfile::tempdir().unwrap();
        let finder = Node::start(client(finder_dir.path())).await.unwrap();
        assert!(finder.wait_for_peers(1, HONEST_GET).await >= 1, "the finder never connected");
        let deadline = Instant::now() + HONEST_GET;
        'found: loop {
            let mut found = finder.net().find_providers(root, Arc::default()).await;
            while let Some(peer) = found.recv().await {
                if peer == provider {
                    break 'found;
                }
            }
            assert!(Instant::now() < deadline, "the honest provider record is not found");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let net = finder.net();
        let delete = dfs_p2p::net::replicas::find_delete(net, deleted.root, honest.peer_id()).await;
        assert!(delete.is_some(), "the honest delete record is not found");
        // The victim's own file stays findable, and fetchable.
        let providers = finder.providers(ticket.root).await.unwrap();
        assert!(providers.contains(&peer_of(&addr)), "{providers:?}");
        finder.shutdown().await;
        honest.shutdown().await;
        provider_task.abort();
        honest_get(&addr, &ticket).await
    });
    // The honest records took the place of spam: the store is as full.
    assert_eq!(record_counts(&mut victim), full);
    assert_healthy(&mut victim);
}

// ---- DHT work a stranger's requests cause ----

/// A Kademlia peer that takes every request stream it is sent and never
/// answers: a lookup that asks it waits out its timeout. It tells the
/// victim (identify) that it speaks the DHT, at an address it listens on,
/// so that the victim's routing table takes it in. Returns how many
/// `GET_VALUE` requests, and how many requests in all, it was sent so far.
fn kad_staller(
    rt: &Runtime,
    victim: &Multiaddr,
) -> (Arc<AtomicU64>, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    use dfs_p2p::net::behaviour::{IDENTIFY_PROTOCOL_VERSION, KAD_PROTOCOL};
    #[derive(libp2p::swarm::NetworkBehaviour)]
    struct Staller {
        identify: libp2p::identify::Behaviour,
        streams: libp2p_stream::Behaviour,
    }
    let (taken, all) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (count, streams, victim) = (taken.clone(), all.clone(), victim.clone());
    let task = rt.spawn(async move {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
            .unwrap()
            .with_behaviour(|key| Staller {
                identify: libp2p::identify::Behaviour::new(libp2p::identify::Config::new(
                    IDENTIFY_PROTOCOL_VERSION.into(),
                    key.public(),
                )),
                streams: libp2p_stream::Behaviour::new(),
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
            .build();
        let mut incoming = swarm.behaviour().streams.new_control().accept(KAD_PROTOCOL).unwrap();
        swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
        // Listening before it dials, so that identify reports the address.
        loop {
            if let SwarmEvent::NewListenAddr { .. } = swarm.select_next_some().await {
                break;
            }
        }
        swarm.dial(victim).unwrap();
        let hold = async move {
            while let Some((_, mut stream)) = incoming.next().await {
                streams.fetch_add(1, Ordering::Relaxed);
                let count = count.clone();
                tokio::spawn(async move {
                    use futures::AsyncReadExt;
                    // A length (varint), then the message: a `GET_VALUE`
                    // begins with its type field, `08 01`.
                    let mut byte = [0u8; 1];
                    loop {
                        if stream.read_exact(&mut byte).await.is_err() {
                            return;
                        }
                        if byte[0] & 0x80 == 0 {
                            break;
                        }
                    }
                    let mut head = [0u8; 2];
                    if stream.read_exact(&mut head).await.is_ok() && head == [0x08, 0x01] {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    // Held, never answered.
                    futures::future::pending::<()>().await;
                    drop(stream);
                });
            }
        };
        let drive = async move {
            loop {
                swarm.select_next_some().await;
            }
        };
        futures::future::join(hold, drive).await;
    });
    (taken, all, task)
}

#[test]
fn a_strangers_requests_cause_two_delete_lookups_at_a_time_and_answers_are_kept() {
    use dfs_p2p::net::replicas::{DELETE_LOOKUP, MAX_LOOKUPS_PER_PEER};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (mut victim, addr, _) = victim(dir.path(), &[]);
    // Every lookup of the victim's asks the staller, and waits.
    // The staller is in the victim's routing table once the victim's own
    // lookups (joining the network) ask it.
    let (lookups, asked_at_all, staller) = kad_staller(&rt, &addr);
    let deadline = Instant::now() + HONEST_GET;
    while asked_at_all.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the victim's lookups never asked the staller");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A stranger asks for copies of eight small roots at once, each under
    // a lease of another owner (as a repair would): each asks the victim
    // to look the owner's delete record up first.
    let offers: Vec<(Cid, HashMap<Cid, Vec<u8>>)> = (0..8)
        .map(|i| {
            let (leaf_cid, leaf_bytes) = leaf(100, 500 + i);
            let (root, root_bytes) = node(vec![leaf_cid], 500 + i);
            (root, HashMap::from([(leaf_cid, leaf_bytes), (root, root_bytes)]))
        })
        .collect();
    let all_blocks: HashMap<Cid, Vec<u8>> =
        offers.iter().flat_map(|(_, blocks)| blocks.clone()).collect();
    let stranger = Hostile::start(&rt, &addr, all_blocks);
    let requests: Vec<Request> =
        offers.iter().map(|(root, blocks)| honest_offer(*root, blocks)).collect();
    let started = Instant::now();
    let answers: Vec<(Duration, Result<Response, String>)> =
        rt.block_on(join_all(requests.iter().cloned().map(|request| {
            let stranger = stranger.clone();
            async move {
                let answer = stranger.ask(request).await;
                (started.elapsed(), answer)
            }
        })));
    let busy: Vec<&Duration> = answers
        .iter()
        .filter(|(_, a)| matches!(a, Ok(Response::Error { code: ErrorCode::Busy, message }) if message.contains("lookup")))
        .map(|(took, _)| took)
        .collect();
    let looked_up: Vec<&(Duration, Result<Response, String>)> =
        answers.iter().filter(|(_, a)| matches!(a, Ok(Response::Replicated { .. }))).collect();
    let asked = lookups.load(Ordering::Relaxed);
    eprintln!(
        "8 requests: {} busy at once, {} replicated after a lookup ({:?}); {asked} GET_VALUE sent",
        busy.len(),
        looked_up.len(),
        looked_up.iter().map(|(took, _)| took).collect::<Vec<_>>()
    );
    // Landed: the lookups ran, asked the staller and waited it out. (The
    // staller's own stream intake may drop a request that arrives in the
    // same instant as another: that lookup then ends at once.)
    assert!(asked >= 1, "no lookup reached the stalling peer");
    assert_eq!(looked_up.len(), MAX_LOOKUPS_PER_PEER, "{answers:?}");
    assert!(looked_up.iter().any(|(took, _)| *took >= DELETE_LOOKUP / 2), "{answers:?}");
    // Held: the rest were refused before any lookup, at once.
    assert_eq!(busy.len(), 8 - MAX_LOOKUPS_PER_PEER, "{answers:?}");
    assert!(busy.iter().all(|took| **took < DELETE_LOOKUP / 2), "{answers:?}");
    assert!(asked as usize <= MAX_LOOKUPS_PER_PEER, "the staller was asked {asked} times");

    // The same requests again: the answers of the lookups made are kept,
    // and the DHT is not asked again for them.
    let again: Vec<Request> = requests
        .iter()
        .zip(&answers)
        .filter(|(_, (_, a))| matches!(a, Ok(Response::Replicated { .. })))
        .map(|(request, _)| request.clone())
        .collect();
    let started = Instant::now();
    for request in again {
        let answer = rt.block_on(stranger.ask(request));
        assert!(matches!(answer, Ok(Response::Replicated { .. })), "{answer:?}");
    }
    assert!(started.elapsed() < DELETE_LOOKUP / 2, "asked again: {:?}", started.elapsed());
    assert_eq!(lookups.load(Ordering::Relaxed), asked, "a kept answer was looked up again");
    staller.abort();
    assert_healthy(&mut victim);
}
