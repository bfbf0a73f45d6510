//! Hostile peers against the real binary. The victim is a `dfs-p2p` node
//! process; the hostile peers are built here from the library (raw libp2p
//! swarms speaking the file protocol or Kademlia, sockets that never speak);
//! an honest node, in this process, fetches the victim's own file while the
//! attack runs. In every case the victim stays up, refuses what it must
//! with a reason, keeps its memory under [`MEMORY_BOUND`] and what it holds
//! for others within its quota, and the honest get completes.
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

/// The victim is alive, within its memory bound, and answers at its prompt.
fn assert_healthy(victim: &mut Victim) {
    assert!(victim.try_wait().is_none(), "the victim died");
    let peak = peak_rss(victim.pid());
    assert!(peak <= MEMORY_BOUND, "the victim peaked at {} MiB", peak >> 20);
    eprintln!("victim peak RSS: {} MiB", peak >> 20);
    victim.send("stat");
    victim.expect_out(|l| l.starts_with("peer id"));
}

/// An honest node in this process gets the victim's file within
/// [`HONEST_GET`]; returns how long it took.
async fn honest_get(victim: &Multiaddr, ticket: &Ticket) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::new(dir.path().to_path_buf());
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.bootstrap = vec![victim.clone()];
    config.replicas = 1;
    let started = Instant::now();
    let node = Node::start(config).await.unwrap();
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = Sink(out.clone());
    let got = tokio::time::timeout(HONEST_GET, node.get(ticket.clone(), Box::new(sink), None))
        .await
        .expect("the honest get did not finish in time");
    got.expect("the honest get failed");
    assert_eq!(*out.lock().unwrap(), cli_support::data(FILE_LEN, 7));
    node.shutdown().await;
    started.elapsed()
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
}

impl Hostile {
    fn start(rt: &Runtime, victim: &Multiaddr, blocks: HashMap<Cid, Vec<u8>>) -> Hostile {
        let (asks, mut rx) = mpsc::channel::<Ask>(4096);
        let served = Arc::new(AtomicU64::new(0));
        let counter = served.clone();
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
            let mut waiting = HashMap::new();
            loop {
                tokio::select! {
                    ask = rx.recv() => match ask {
                        Some((request, reply)) => {
                            let id = swarm.behaviour_mut().send_request(&peer, RequestFrame::Valid(request));
                            waiting.insert(id, reply);
                        }
                        None => return,
                    },
                    event = swarm.select_next_some() => match event {
                        SwarmEvent::Behaviour(request_response::Event::Message { message, .. }) => match message {
                            request_response::Message::Request { request, channel, .. } => {
                                let response = match request {
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
                            request_response::Message::Response { request_id, response } => {
                                if let Some(reply) = waiting.remove(&request_id) {
                                    let _ = reply.send(Ok(response));
                                }
                            }
                        },
                        SwarmEvent::Behaviour(request_response::Event::OutboundFailure { request_id, error, .. }) => {
                            if let Some(reply) = waiting.remove(&request_id) {
                                let _ = reply.send(Err(error.to_string()));
                            }
                        }
                        _ => {}
                    },
                }
            }
        });
        Hostile { asks, served }
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
    // Nothing keeps running after the answers.
    let before = cpu_secs(pid);
    std::thread::sleep(Duration::from_secs(2));
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
    let (mut victim, addr, ticket) = victim(dir.path(), &["--replica-quota", "2MiB"]);

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

    // Declared honestly: over the quota, refused before anything is pulled.
    let answer = rt.block_on(hostile.ask(honest_offer(root, &blocks)));
    expect_error(answer, ErrorCode::Refused, "over quota");
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
    assert!(line.contains("0 B of 2 MiB"), "{line}");
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

#[test]
fn a_request_flood_gets_busy_answers_and_slows_only_the_flooders() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (mut victim, addr, ticket) = victim(dir.path(), &[]);
    let quiet = rt.block_on(honest_get(&addr, &ticket));

    // 32 peers keep 250 requests each in flight, for the victim's own
    // blocks, for as long as the honest get runs.
    let blocks: Vec<Cid> = {
        let store_dir = dir.path().join("victim");
        let mut cids = Vec::new();
        for path in walkdir(&store_dir.join("blocks")) {
            cids.push(block::parse_cid(path.file_name().unwrap().to_str().unwrap()).unwrap());
        }
        cids
    };
    let flooders: Vec<Hostile> =
        (0..32).map(|_| Hostile::start(&rt, &addr, HashMap::new())).collect();
    let busy = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = flooders
        .iter()
        .flat_map(|h| (0..250).map(move |i| (h.clone(), i)))
        .map(|(h, i)| {
            let (busy, answered, stop) = (busy.clone(), answered.clone(), stop.clone());
            let cid = blocks[i % blocks.len()];
            rt.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match h.ask(Request::GetBlock { cid }).await {
                        Ok(Response::Error { code: ErrorCode::Busy, .. }) => {
                            busy.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        })
        .collect();
    let flooded = rt.block_on(honest_get(&addr, &ticket));
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.abort();
    }
    let (busy, answered) = (busy.load(Ordering::Relaxed), answered.load(Ordering::Relaxed));
    eprintln!(
        "honest get: {quiet:?} alone, {flooded:?} under the flood; {answered} answered, {busy} busy"
    );
    assert!(busy > 0, "no Busy among {answered} answers");
    assert_healthy(&mut victim);
}

/// A codec that writes part of a request frame and then never finishes.
#[derive(Clone, Default)]
struct Stalling;

impl request_response::Codec for Stalling {
    type Protocol = libp2p::StreamProtocol;
    type Request = ();
    type Response = ();

    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &libp2p::StreamProtocol,
        _: &mut T,
    ) -> std::io::Result<()> {
        Err(std::io::Error::other("this side only asks"))
    }

    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &libp2p::StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<()> {
        let mut sink = Vec::new();
        futures::AsyncReadExt::read_to_end(io, &mut sink).await.map(drop)
    }

    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &libp2p::StreamProtocol,
        io: &mut T,
        _: (),
    ) -> std::io::Result<()> {
        // A `Have` header announcing 37,890 bytes, then nothing.
        futures::AsyncWriteExt::write_all(io, &[0x02, 0x00, 0x00, 0x94, 0x02]).await?;
        futures::AsyncWriteExt::flush(io).await?;
        futures::future::pending().await
    }

    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &libp2p::StreamProtocol,
        _: &mut T,
        _: (),
    ) -> std::io::Result<()> {
        Err(std::io::Error::other("this side only asks"))
    }
}

#[test]
fn streams_that_never_finish_a_frame_hold_nothing_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (mut victim, addr, ticket) = victim(dir.path(), &[]);
    let peer = peer_of(&addr);
    // Eight connections, each with as many unfinished frames as the
    // victim takes streams.
    let stallers: Vec<_> = (0..8)
        .map(|_| {
            let addr = addr.clone();
            rt.spawn(async move {
                let behaviour = request_response::Behaviour::<Stalling>::new(
                    [(STREAM_PROTOCOL, ProtocolSupport::Outbound)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(600))
                        .with_max_concurrent_streams(2048),
                );
                let mut swarm = swarm_with(behaviour);
                swarm.dial(addr).unwrap();
                for _ in 0..1024 {
                    swarm.behaviour_mut().send_request(&peer, ());
                }
                loop {
                    swarm.select_next_some().await;
                }
            })
        })
        .collect();
    rt.block_on(async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        honest_get(&addr, &ticket).await
    });
    for s in stallers {
        s.abort();
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
    let crowd: Vec<_> = (0..256)
        .map(|_| {
            let addr = addr.clone();
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
                    swarm.select_next_some().await;
                }
            })
        })
        .collect();
    rt.block_on(async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        honest_get(&addr, &ticket).await
    });
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

#[test]
fn a_flood_of_fat_provider_records_leaves_the_victims_files_findable() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (mut victim, addr, ticket) = victim(dir.path(), &[]);
    let flooder = rt.spawn({
        let addr = addr.clone();
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
            for i in 0..5000u32 {
                let key = libp2p::kad::RecordKey::new(&i.to_be_bytes());
                let _ = swarm.behaviour_mut().start_providing(key);
            }
            loop {
                swarm.select_next_some().await;
            }
        }
    });
    // Meanwhile the victim's own file stays findable through the DHT, and
    // fetchable.
    rt.block_on(async {
        tokio::time::sleep(Duration::from_secs(10)).await;
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
