//! The DHT benchmark behind `dfs-p2p bench dht`: many real nodes in this
//! process, joined in waves through one bootstrap node, small files put
//! with their copies, each looked up from other nodes; then a share of the
//! nodes stopped without warning and the lookups repeated; then as many new
//! nodes joined and the lookups run again.
//!
//! The nodes leave in steps (`--churn-steps`), as nodes leave a network over
//! time, and after each step the benchmark waits until the nodes' own repair
//! has brought every file that still has a copy back to its copies (or
//! [`REPAIR_WAIT`] has passed): a file is lost only if every copy stopped
//! within one step. The nodes run repair every `--repair` (10 s) instead of
//! a node's default half hour; nothing else of it differs.
//!
//! Every node is a [`Node`], started as `dfs-p2p` starts one: its own data
//! directory and store, the event loop with the project's Kademlia
//! configuration, identify, ping, the file protocol, the connection limits,
//! the responder, repair and reprovide tasks. The only difference is the
//! wire under Noise and Yamux: libp2p's memory transport by default
//! ([`Wire::Memory`]), because a thousand nodes over loopback TCP need two
//! file descriptors per connection (about 150,000 at 1,000 nodes, above the
//! usual limit) and spend the machine's two cores in the kernel; `--tcp`
//! runs them over loopback TCP instead, for a check at smaller sizes. A dead
//! peer is found at once on both (a refused connection), faster than on a
//! real network, where a dial to a vanished address waits for its timeout.
//!
//! A lookup is [`Node::find_file`]: the discovery every get starts with
//! (the DHT provider lookup, and `Have` probes of the connected peers
//! closest to the root), then the root block fetched from a provider,
//! verified, and the file's size read from it. It succeeds when the size is
//! right. Its cost is counted by the node itself: the Kademlia requests its
//! provider lookups sent (libp2p's own count), and its `Have` probes.
//!
//! The benchmark knows every live node, so it can say what the nodes cannot:
//! for each node, which of its true closest peers its routing table holds;
//! which nodes no routing table holds; for each file, whether its copies and
//! its provider records sit on the peers XOR-closest to it.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    io::Cursor,
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId,
    identity::Keypair,
    kad::{KBucketDistance, KBucketKey},
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};

use super::{median, peak_rss, rss};
use crate::{
    Ticket,
    net::behaviour::{KAD_REPLICATION, Wire, provider_key},
    node::{Node, NodeConfig},
    store::Store,
};

/// Bytes of each file: what is measured is finding, not moving bytes.
pub const FILE_SIZE: usize = 4096;
/// Copies each put asks for.
pub const REPLICAS: usize = 3;
/// Lookups run at once (from different nodes).
pub const LOOKUPS_AT_ONCE: usize = 32;
/// Puts run at once.
pub const PUTS_AT_ONCE: usize = 8;
/// Nodes that join at once, at most; a wave waits for the one before to
/// be connected.
pub const WAVE: usize = 100;
/// How long a node may take to connect to the bootstrap node.
const JOIN_WAIT: Duration = Duration::from_secs(60);
/// How long the benchmark waits for routing tables to settle after joins.
pub const CONVERGE_LIMIT: Duration = Duration::from_secs(90);
/// The network counts as converged when the routing tables hold this share
/// of every node's true closest peers, and every node is in some table.
pub const CONVERGED: f64 = 0.99;
/// Routing tables that have not changed for this long have settled short
/// of converging: the benchmark goes on.
pub const SETTLED: Duration = Duration::from_secs(10);
/// How often the routing tables are read while waiting for convergence.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// How long the joined network is left alone to measure its background.
pub const IDLE: Duration = Duration::from_secs(10);
/// How long the joins' DHT work may go on before the idle network is
/// measured anyway.
pub const QUIET_LIMIT: Duration = Duration::from_secs(120);
/// How long the benchmark waits after a churn step for repair to restore
/// the copies of every file that still has one.
pub const REPAIR_WAIT: Duration = Duration::from_secs(90);
/// How long a lookup's DHT query may take to end after the lookup itself
/// (its last requests in flight) before its cost is read.
const COST_WAIT: Duration = Duration::from_secs(5);

/// What `bench dht` runs.
#[derive(Debug, Clone)]
pub struct DhtOptions {
    pub nodes: usize,
    pub files: usize,
    /// Lookups in each phase.
    pub lookups: usize,
    /// Per cent of the nodes stopped in the churn phase.
    pub churn: u32,
    /// Steps the churn is stopped in, each followed by repair (1: all at
    /// once, lookups right after).
    pub churn_steps: usize,
    /// How often the nodes run repair (a node's `--repair-interval`): a
    /// file short of copies is repaired after two to three intervals.
    pub repair_interval: Duration,
    pub seed: u64,
    pub wire: Wire,
    /// Where the nodes' data directories go.
    pub dir: PathBuf,
}

/// Lookups of one phase and the state of the network then.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    pub name: String,
    pub live: usize,
    pub lookups: Vec<Lookup>,
    /// Routing-table sizes of the live nodes.
    pub routing: Vec<usize>,
    /// Share of each node's true closest live peers in its routing table,
    /// averaged over the nodes.
    pub neighbourhood: f64,
    /// Live nodes in no live node's routing table.
    pub unknown: usize,
    /// Routing-table entries that point to stopped nodes, in all.
    pub stale: usize,
    /// Provider records of other peers each live node keeps.
    pub provider_records: Vec<usize>,
    /// Connected peers of each live node.
    pub connections: Vec<usize>,
    /// How long the tables took to settle after the joins (none if they
    /// did not within [`CONVERGE_LIMIT`] or there were no joins).
    pub converged: Option<Duration>,
    /// Resident memory of the process at the end of the phase.
    pub rss: u64,
}

/// One lookup.
#[derive(Debug, Clone, Copy)]
pub struct Lookup {
    pub ok: bool,
    /// Whether some live node held the file pinned when the phase began.
    pub findable: bool,
    pub latency: Duration,
    pub dht_requests: u32,
    pub probes: u32,
}

/// What the puts did.
#[derive(Debug, Clone, Default)]
pub struct Puts {
    pub files: usize,
    pub failed: usize,
    pub elapsed: Duration,
    /// Copies placed beyond the uploader's own, and how many of them are on
    /// the `REPLICAS - 1` live nodes XOR-closest to the root (the uploader
    /// excepted), and on the [`KAD_REPLICATION`] closest.
    pub extra_copies: usize,
    pub on_closest: usize,
    pub on_closest_k: usize,
    /// Of the [`KAD_REPLICATION`] live nodes closest to each root, those
    /// that keep a provider record for it, in all.
    pub records_on_closest: usize,
    pub closest_slots: usize,
    /// Resident memory before and after the puts.
    pub rss_before: u64,
    pub rss_after: u64,
}

/// Everything `bench dht` measured.
#[derive(Debug, Clone)]
pub struct DhtReport {
    pub options: DhtOptions,
    /// Time to start every node and join them in waves, and to settle.
    pub join: Duration,
    /// Resident memory before the nodes started and once all had joined.
    pub rss_start: u64,
    pub rss_joined: u64,
    /// How long the joins' DHT work went on, then what the network spent
    /// left alone for [`IDLE`].
    pub idle: Idle,
    pub peak_rss: Option<u64>,
    pub puts: Puts,
    pub phases: Vec<Phase>,
    pub churn: Vec<ChurnStep>,
    pub cpu_secs: Option<f64>,
    pub elapsed: Duration,
}

/// One step of the churn: nodes stopped, then the copies repaired.
#[derive(Debug, Clone, Default)]
pub struct ChurnStep {
    pub stopped: usize,
    /// Files left with fewer than their copies, and with none.
    pub short: usize,
    pub lost: usize,
    /// Of the files short of copies (and not lost), those back at their
    /// copies when the benchmark stopped waiting, and when that was.
    pub restored: usize,
    pub repair_time: Duration,
}

/// What the network does on its own, with nothing asked of it.
#[derive(Debug, Clone, Default)]
pub struct Idle {
    pub cpu_secs: Option<f64>,
    pub connections_opened: u64,
    pub dht_requests: u64,
    /// How long the joins' DHT work went on after the last wave.
    pub quiet_after: Duration,
}

/// A file put and where it went.
struct File {
    ticket: Ticket,
    size: u64,
    key: KBucketKey<Vec<u8>>,
    /// Nodes that looked it up: each looks up a file once.
    asked: HashSet<usize>,
}

/// The network: every node started, `None` once stopped.
struct Net {
    nodes: Vec<Option<Node>>,
    ids: Vec<PeerId>,
    rng: StdRng,
    bootstrap: Vec<Multiaddr>,
    options: DhtOptions,
}

impl Net {
    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_some()).collect()
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("a live node")
    }

    /// Starts `count` nodes at once, each joining through the bootstrap
    /// node (none for the first one, which is it), and waits until each is
    /// connected.
    async fn start(&mut self, count: usize) -> Result<(), String> {
        let mut starting = Vec::new();
        for _ in 0..count {
            let index = self.nodes.len();
            let dir = self.options.dir.join(format!("node-{index:05}"));
            let key = Keypair::ed25519_from_bytes(self.rng.random::<[u8; 32]>())
                .expect("32 bytes make a key");
            Store::preset_identity(&dir, &key).map_err(|e| e.to_string())?;
            let mut config = NodeConfig::new(dir);
            config.listen = vec![match self.options.wire {
                Wire::Memory => "/memory/0".parse().expect("valid multiaddr"),
                Wire::Tcp => "/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr"),
            }];
            config.wire = self.options.wire;
            config.bootstrap = self.bootstrap.clone();
            config.replicas = REPLICAS;
            config.cache_size = 1 << 20;
            config.replica_quota = Some(64 << 20);
            config.repair_interval = self.options.repair_interval;
            self.ids.push(key.public().to_peer_id());
            self.nodes.push(None);
            starting.push(async move { (index, Node::start(config).await) });
        }
        let started = futures::future::join_all(starting).await;
        for (index, node) in started {
            let node = node.map_err(|e| format!("node {index} did not start: {e}"))?;
            if self.bootstrap.is_empty() {
                self.bootstrap = node.listen_addrs().await;
            }
            self.nodes[index] = Some(node);
        }
        let first = self.nodes.len() - count;
        let joins = (first..self.nodes.len())
            .filter(|&i| i != 0)
            .map(|i| self.node(i).wait_for_peers(1, JOIN_WAIT));
        let connected = futures::future::join_all(joins).await;
        let alone = connected.iter().filter(|&&n| n == 0).count();
        if alone > 0 {
            return Err(format!("{alone} nodes did not reach the bootstrap node"));
        }
        Ok(())
    }

    /// Starts `count` nodes in waves of at most [`WAVE`], each once the
    /// routing tables have settled after the one before (as users join
    /// over time, not all in one instant); how long the last wave took to
    /// converge, and the tables then.
    async fn join(
        &mut self,
        count: usize,
        say: &impl Fn(String),
    ) -> Result<(Option<Duration>, Survey), String> {
        let started = Instant::now();
        let mut done = 0;
        let mut last = (None, Survey::default());
        while done < count {
            // The bootstrap node first, alone.
            let wave = if self.nodes.is_empty() { 1 } else { WAVE.min(count - done) };
            let wave_started = Instant::now();
            self.start(wave).await?;
            done += wave;
            if self.nodes.len() > 1 {
                last = self.converge(wave_started, say).await;
            }
            say(format!(
                "{done} of {count} nodes joined ({:.1} s): {:.1}% of the closest peers known, {} nodes in no table",
                started.elapsed().as_secs_f64(),
                last.1.neighbourhood * 100.0,
                last.1.unknown,
            ));
        }
        Ok(last)
    }

    /// Stops `count` nodes chosen at random (never the bootstrap node)
    /// without warning them or their peers.
    async fn stop(&mut self, count: usize) {
        let mut candidates: Vec<usize> = self.live().into_iter().filter(|&i| i != 0).collect();
        candidates.shuffle(&mut self.rng);
        let stopping: Vec<Node> =
            candidates.into_iter().take(count).filter_map(|i| self.nodes[i].take()).collect();
        futures::future::join_all(stopping.into_iter().map(Node::shutdown)).await;
    }

    /// Stops `count` nodes, then waits until repair has brought every file
    /// that still has a copy back to [`REPLICAS`] copies, or
    /// [`REPAIR_WAIT`] has passed.
    async fn churn_step(&mut self, files: &[File], count: usize) -> ChurnStep {
        self.stop(count).await;
        let started = Instant::now();
        let copies = |net: &Net| -> Vec<usize> {
            files.iter().map(|f| net.holders(&f.ticket.root).len()).collect()
        };
        let after_stop = copies(self);
        let short: Vec<usize> =
            (0..files.len()).filter(|&f| after_stop[f] > 0 && after_stop[f] < REPLICAS).collect();
        let lost = after_stop.iter().filter(|&&c| c == 0).count();
        let mut restored = 0;
        while started.elapsed() < REPAIR_WAIT {
            let now = copies(self);
            restored = short.iter().filter(|&&f| now[f] >= REPLICAS).count();
            if restored == short.len() {
                break;
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        ChurnStep {
            stopped: count,
            short: short.len(),
            lost,
            restored,
            repair_time: started.elapsed(),
        }
    }

    /// The routing tables, what they know of the live network, and the
    /// provider records the nodes keep.
    async fn survey(&self) -> Survey {
        let live = self.live();
        let tables = futures::future::join_all(
            live.iter().map(|&i| async move { self.node(i).net().routing_table().await }),
        )
        .await;
        let ids: Vec<PeerId> = live.iter().map(|&i| self.ids[i]).collect();
        let all: HashSet<PeerId> = self.ids.iter().copied().collect();
        tokio::task::spawn_blocking(move || Survey::of(&ids, &tables, &all))
            .await
            .expect("the survey does not panic")
    }

    /// Connections the live nodes opened, and DHT requests they
    /// answered, since they started.
    fn work(&self) -> (u64, u64) {
        self.live().iter().fold((0, 0), |(opened, answered), &i| {
            let c = self.node(i).net().counters();
            (
                opened + c.connections_opened.load(Ordering::Relaxed),
                answered + c.dht_requests_answered.load(Ordering::Relaxed),
            )
        })
    }

    /// Waits until the joins' own DHT work has ended (fewer than one DHT
    /// request per node per [`IDLE`]; at most [`QUIET_LIMIT`]), then leaves
    /// the network alone for [`IDLE`] and measures what it spends.
    async fn idle(&self) -> Idle {
        let started = Instant::now();
        let quiet = self.live().len() as u64;
        let mut last = self.work().1;
        while started.elapsed() < QUIET_LIMIT {
            tokio::time::sleep(IDLE / 5).await;
            let now = self.work().1;
            if now.saturating_sub(last) * 5 < quiet {
                break;
            }
            last = now;
        }
        let quiet_after = started.elapsed();
        let (cpu, (opened, answered)) = (super::cpu_secs(None), self.work());
        tokio::time::sleep(IDLE).await;
        let (opened_end, answered_end) = self.work();
        Idle {
            cpu_secs: super::cpu_secs(None).zip(cpu).map(|(end, start)| end - start),
            connections_opened: opened_end.saturating_sub(opened),
            dht_requests: answered_end.saturating_sub(answered),
            quiet_after,
        }
    }

    async fn provider_records(&self) -> Vec<usize> {
        let live = self.live();
        futures::future::join_all(
            live.iter().map(|&i| async move { self.node(i).net().provider_records().await }),
        )
        .await
    }

    /// Waits until the routing tables have converged (see [`CONVERGED`]),
    /// or have not changed for [`SETTLED`], at most [`CONVERGE_LIMIT`];
    /// how long they took to converge from `since` (none if they did not).
    async fn converge(&self, since: Instant, say: &impl Fn(String)) -> (Option<Duration>, Survey) {
        let deadline = Instant::now() + CONVERGE_LIMIT;
        let mut last_said = (Instant::now(), self.work());
        let mut unchanged_since = (Instant::now(), -1.0, usize::MAX);
        loop {
            let survey = self.survey().await;
            if survey.neighbourhood >= CONVERGED && survey.unknown == 0 {
                return (Some(since.elapsed()), survey);
            }
            let (at, seen, unknown) = unchanged_since;
            if survey.neighbourhood > seen + 0.001 || survey.unknown != unknown {
                unchanged_since = (Instant::now(), survey.neighbourhood, survey.unknown);
            } else if at.elapsed() >= SETTLED {
                return (None, survey);
            }
            if Instant::now() >= deadline {
                return (None, survey);
            }
            if last_said.0.elapsed() >= Duration::from_secs(5) {
                let work = self.work();
                let seconds = last_said.0.elapsed().as_secs_f64();
                let opened = work.0.saturating_sub(last_said.1.0) as f64 / seconds;
                let requests = work.1.saturating_sub(last_said.1.1) as f64 / seconds;
                last_said = (Instant::now(), work);
                let connections: usize =
                    self.live().iter().map(|&i| self.node(i).net().connected_now()).sum();
                say(format!(
                    "routing tables: {:.1}% of the closest peers known, {} nodes in no table; {:.0} connections per node; per second {opened:.0} opened, {requests:.0} DHT requests",
                    survey.neighbourhood * 100.0,
                    survey.unknown,
                    connections as f64 / self.live().len() as f64,
                ));
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    /// The live nodes holding `file` pinned.
    fn holders(&self, root: &cid::Cid) -> Vec<usize> {
        self.live()
            .into_iter()
            .filter(|&i| self.node(i).store().root_info(root).is_some_and(|r| r.pinned()))
            .collect()
    }

    /// Live nodes ordered by XOR distance to `key`, closest first.
    fn closest(&self, key: &KBucketKey<Vec<u8>>, candidates: &[usize]) -> Vec<usize> {
        let mut order: Vec<(KBucketDistance, usize)> =
            candidates.iter().map(|&i| (key.distance(&KBucketKey::from(self.ids[i])), i)).collect();
        order.sort_unstable();
        order.into_iter().map(|(_, i)| i).collect()
    }

    /// Puts `count` files from random nodes, and checks where their copies
    /// and provider records went.
    async fn put(&mut self, count: usize) -> (Vec<File>, Puts) {
        let mut puts = Puts { files: count, rss_before: rss().unwrap_or(0), ..Default::default() };
        let started = Instant::now();
        let live = self.live();
        let plan: Vec<(usize, Vec<u8>)> = (0..count)
            .map(|_| {
                let from = live[self.rng.random_range(0..live.len())];
                let mut bytes = vec![0u8; FILE_SIZE];
                self.rng.fill(&mut bytes[..]);
                (from, bytes)
            })
            .collect();
        let this = &*self;
        let results: Vec<_> = futures::stream::iter(plan.into_iter().enumerate())
            .map(|(n, (from, bytes))| async move {
                let size = bytes.len() as u64;
                let node = this.node(from);
                let put =
                    node.put(Box::new(Cursor::new(bytes)), Some(format!("f{n}")), Some(size), None);
                (from, put.await)
            })
            .buffer_unordered(PUTS_AT_ONCE)
            .collect()
            .await;
        puts.elapsed = started.elapsed();
        let mut files = Vec::new();
        for (from, result) in results {
            let Ok(report) = result else {
                puts.failed += 1;
                continue;
            };
            let root = report.ticket.root;
            let key = KBucketKey::new(provider_key(&root).to_vec());
            let others: Vec<usize> = live.iter().copied().filter(|&i| i != from).collect();
            let order = self.closest(&key, &others);
            let holders: HashSet<usize> =
                self.holders(&root).into_iter().filter(|&i| i != from).collect();
            puts.extra_copies += holders.len();
            puts.on_closest +=
                order.iter().take(REPLICAS - 1).filter(|i| holders.contains(i)).count();
            puts.on_closest_k +=
                order.iter().take(KAD_REPLICATION).filter(|i| holders.contains(i)).count();
            files.push(File {
                ticket: report.ticket,
                size: report.size,
                key,
                asked: HashSet::new(),
            });
        }
        // Provider records on the closest nodes: asked once all puts are
        // done, so that every record had the time the others had.
        let this = &*self;
        for file in &files {
            let order = this.closest(&file.key, &live);
            let root = file.ticket.root;
            let closest = order.into_iter().take(KAD_REPLICATION).collect::<Vec<_>>();
            puts.closest_slots += closest.len();
            let known = futures::future::join_all(
                closest
                    .iter()
                    .map(|&i| async move { this.node(i).net().known_providers(root).await }),
            )
            .await;
            puts.records_on_closest += known.iter().filter(|k| !k.is_empty()).count();
        }
        puts.rss_after = rss().unwrap_or(0);
        (files, puts)
    }

    /// Runs `count` lookups, the files in turn, each from a random live node
    /// that neither holds the file nor looked it up before.
    async fn lookups(&mut self, files: &mut [File], count: usize) -> Vec<Lookup> {
        let live = self.live();
        let holders: Vec<HashSet<usize>> =
            files.iter().map(|f| self.holders(&f.ticket.root).into_iter().collect()).collect();
        let mut plan = Vec::new();
        for n in 0..count {
            let f = n % files.len();
            let pick = (0..1000)
                .map(|_| live[self.rng.random_range(0..live.len())])
                .find(|i| !holders[f].contains(i) && !files[f].asked.contains(i));
            if let Some(i) = pick {
                files[f].asked.insert(i);
                plan.push((i, f));
            }
        }
        let this = &*self;
        let files = &*files;
        let holders = &holders;
        futures::stream::iter(plan)
            .map(|(i, f)| async move {
                let file = &files[f];
                let node = this.node(i);
                let started = Instant::now();
                let (meta, providers) = node.find_file(&file.ticket).await;
                let latency = started.elapsed();
                let waited = Instant::now();
                while providers.cost().running > 0 && waited.elapsed() < COST_WAIT {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let cost = providers.cost();
                Lookup {
                    ok: meta.is_ok_and(|m| m.size == file.size),
                    findable: !holders[f].is_empty(),
                    latency,
                    dht_requests: cost.dht_requests,
                    probes: cost.probes,
                }
            })
            .buffer_unordered(LOOKUPS_AT_ONCE)
            .collect()
            .await
    }

    async fn phase(
        &mut self,
        name: &str,
        files: &mut [File],
        converged: Option<Duration>,
        survey: Option<Survey>,
    ) -> Phase {
        let lookups = self.lookups(files, self.options.lookups).await;
        let survey = match survey {
            Some(s) => s,
            None => self.survey().await,
        };
        Phase {
            name: name.into(),
            live: self.live().len(),
            lookups,
            routing: survey.tables,
            neighbourhood: survey.neighbourhood,
            unknown: survey.unknown,
            stale: survey.stale,
            provider_records: self.provider_records().await,
            connections: self.live().iter().map(|&i| self.node(i).net().connected_now()).collect(),
            converged,
            rss: rss().unwrap_or(0),
        }
    }

    async fn shutdown(self) {
        let nodes = self.nodes.into_iter().flatten();
        futures::future::join_all(nodes.map(Node::shutdown)).await;
    }
}

/// What the routing tables know, read at one moment.
#[derive(Debug, Clone, Default)]
struct Survey {
    tables: Vec<usize>,
    neighbourhood: f64,
    unknown: usize,
    stale: usize,
}

impl Survey {
    /// `ids[n]`'s routing table is `tables[n]`; `all` holds every node ever
    /// started (the stopped ones too).
    fn of(ids: &[PeerId], tables: &[Vec<PeerId>], all: &HashSet<PeerId>) -> Survey {
        let live: HashSet<PeerId> = ids.iter().copied().collect();
        let keys: Vec<KBucketKey<PeerId>> = ids.iter().map(|p| KBucketKey::from(*p)).collect();
        let k = libp2p::kad::K_VALUE.get().min(ids.len().saturating_sub(1));
        let (mut known, mut wanted, mut stale) = (0usize, 0usize, 0usize);
        let mut in_some_table = HashSet::new();
        for (n, table) in tables.iter().enumerate() {
            let table: HashSet<PeerId> = table.iter().copied().collect();
            for p in &table {
                if live.contains(p) {
                    in_some_table.insert(*p);
                } else if all.contains(p) {
                    stale += 1;
                }
            }
            let mut order: Vec<(KBucketDistance, usize)> = keys
                .iter()
                .enumerate()
                .filter(|&(m, _)| m != n)
                .map(|(m, key)| (keys[n].distance(key), m))
                .collect();
            if k > 0 && order.len() > k {
                order.select_nth_unstable(k - 1);
            }
            wanted += k;
            known += order.iter().take(k).filter(|(_, m)| table.contains(&ids[*m])).count();
        }
        Survey {
            tables: tables.iter().map(Vec::len).collect(),
            neighbourhood: if wanted == 0 { 1.0 } else { known as f64 / wanted as f64 },
            unknown: ids.iter().filter(|p| !in_some_table.contains(p)).count(),
            stale,
        }
    }
}

/// Runs the benchmark; `say` hears of its progress.
pub async fn bench_dht(options: DhtOptions, say: impl Fn(String)) -> Result<DhtReport, String> {
    if options.nodes < 2 {
        return Err("bench dht needs at least 2 nodes".into());
    }
    if options.files == 0 {
        return Err("bench dht needs at least 1 file".into());
    }
    let started = Instant::now();
    let cpu_start = super::cpu_secs(None);
    let rss_start = rss().unwrap_or(0);
    let mut net = Net {
        nodes: Vec::new(),
        ids: Vec::new(),
        rng: StdRng::seed_from_u64(options.seed),
        bootstrap: Vec::new(),
        options: options.clone(),
    };
    let result = run(&mut net, &options, &say, rss_start).await;
    net.shutdown().await;
    let (join, rss_joined, idle, puts, phases, churn) = result?;
    Ok(DhtReport {
        options,
        join,
        rss_start,
        rss_joined,
        idle,
        peak_rss: peak_rss(None),
        puts,
        phases,
        churn,
        cpu_secs: super::cpu_secs(None).zip(cpu_start).map(|(end, start)| end - start),
        elapsed: started.elapsed(),
    })
}

async fn run(
    net: &mut Net,
    options: &DhtOptions,
    say: &impl Fn(String),
    rss_start: u64,
) -> Result<(Duration, u64, Idle, Puts, Vec<Phase>, Vec<ChurnStep>), String> {
    let joining = Instant::now();
    let (converged, survey) = net.join(options.nodes, say).await?;
    let join = joining.elapsed();
    let rss_joined = rss().unwrap_or(0);
    say(format!(
        "{} nodes up in {:.1} s ({:.1} MiB resident, {:.2} MiB per node)",
        options.nodes,
        join.as_secs_f64(),
        mib(rss_joined),
        mib(rss_joined.saturating_sub(rss_start)) / options.nodes as f64
    ));
    let idle = net.idle().await;
    say(idle_line(&idle));
    let (mut files, puts) = net.put(options.files).await;
    say(format!(
        "{} files put in {:.1} s ({} failed)",
        files.len(),
        puts.elapsed.as_secs_f64(),
        puts.failed
    ));
    if files.is_empty() {
        return Err("no put succeeded".into());
    }
    let mut phases = Vec::new();
    let before = net.phase("before churn", &mut files, converged, Some(survey)).await;
    say(phase_line(&before));
    phases.push(before);
    let stopped = (net.live().len() - 1).min(options.nodes * options.churn as usize / 100);
    let mut churn = Vec::new();
    if stopped > 0 {
        let steps = options.churn_steps.clamp(1, stopped);
        for n in 0..steps {
            let count = stopped * (n + 1) / steps - stopped * n / steps;
            let step = if steps == 1 {
                net.stop(count).await;
                ChurnStep { stopped: count, ..Default::default() }
            } else {
                net.churn_step(&files, count).await
            };
            say(churn_line(n + 1, steps, &step));
            churn.push(step);
        }
        let after = net.phase(&format!("{stopped} stopped"), &mut files, None, None).await;
        say(phase_line(&after));
        phases.push(after);
        let (converged, survey) = net.join(stopped, say).await?;
        let rejoined =
            net.phase(&format!("{stopped} joined"), &mut files, converged, Some(survey)).await;
        say(phase_line(&rejoined));
        phases.push(rejoined);
    }
    Ok((join, rss_joined, idle, puts, phases, churn))
}

fn churn_line(n: usize, steps: usize, step: &ChurnStep) -> String {
    if steps == 1 {
        return format!("churn: {} nodes stopped at once", step.stopped);
    }
    format!(
        "churn step {n} of {steps}: {} nodes stopped; {} files short of copies, {} with none; repair restored {} of {} in {:.1} s",
        step.stopped,
        step.short,
        step.lost,
        step.restored,
        step.short,
        step.repair_time.as_secs_f64()
    )
}

fn idle_line(idle: &Idle) -> String {
    let quiet = if idle.quiet_after >= QUIET_LIMIT {
        format!(
            "the joins' DHT work was still going on {} s after the last wave",
            QUIET_LIMIT.as_secs()
        )
    } else {
        format!(
            "the joins' DHT work ended {:.1} s after the last wave",
            idle.quiet_after.as_secs_f64()
        )
    };
    format!(
        "{quiet}; then, left alone for {} s: {} CPU-s, {} connections opened, {} DHT requests",
        IDLE.as_secs(),
        idle.cpu_secs.map_or("?".into(), |c| format!("{c:.1}")),
        idle.connections_opened,
        idle.dht_requests,
    )
}

fn phase_line(phase: &Phase) -> String {
    let ok = phase.lookups.iter().filter(|l| l.ok).count();
    format!("{}: {ok} of {} lookups found the file", phase.name, phase.lookups.len())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// The value at quantile `q` (0..=1) of `values`, sorted in place.
fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let at = ((values.len() - 1) as f64 * q).round() as usize;
    values[at]
}

impl Phase {
    /// Lookups that succeeded, in all and among those of files some live
    /// node still held.
    pub fn success(&self) -> (f64, f64) {
        let rate = |lookups: Vec<&Lookup>| {
            if lookups.is_empty() {
                return 1.0;
            }
            lookups.iter().filter(|l| l.ok).count() as f64 / lookups.len() as f64
        };
        (
            rate(self.lookups.iter().collect()),
            rate(self.lookups.iter().filter(|l| l.findable).collect()),
        )
    }

    fn successful(&self) -> impl Iterator<Item = &Lookup> {
        self.lookups.iter().filter(|l| l.ok)
    }

    /// Median and 99th percentile of the successful lookups' wall time, ms.
    pub fn latency_ms(&self) -> (f64, f64) {
        let mut ms: Vec<f64> = self.successful().map(|l| l.latency.as_secs_f64() * 1e3).collect();
        (quantile(&mut ms, 0.5), quantile(&mut ms, 0.99))
    }

    /// Median and 99th percentile of the DHT requests of every lookup.
    pub fn dht_requests(&self) -> (f64, f64) {
        let mut r: Vec<f64> = self.lookups.iter().map(|l| f64::from(l.dht_requests)).collect();
        (quantile(&mut r, 0.5), quantile(&mut r, 0.99))
    }

    pub fn probes(&self) -> f64 {
        median(&self.lookups.iter().map(|l| f64::from(l.probes)).collect::<Vec<_>>())
    }
}

/// Minimum, median and maximum.
fn spread(values: &[usize]) -> String {
    let mut v = values.to_vec();
    v.sort_unstable();
    match (v.first(), v.get(v.len() / 2), v.last()) {
        (Some(min), Some(mid), Some(max)) => format!("{min} / {mid} / {max}"),
        _ => "-".into(),
    }
}

impl fmt::Display for DhtReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        let wire = match o.wire {
            Wire::Memory => "memory transport",
            Wire::Tcp => "loopback TCP",
        };
        writeln!(
            f,
            "bench dht: {} nodes ({wire}, Noise, Yamux), {} files of {FILE_SIZE} bytes with {REPLICAS} copies, {} lookups per phase, {}% churn, seed {}",
            o.nodes, o.files, o.lookups, o.churn, o.seed
        )?;
        let per_node = mib(self.rss_joined.saturating_sub(self.rss_start)) / o.nodes as f64;
        writeln!(
            f,
            "joined in waves of {WAVE} (each once the tables had settled) through one bootstrap node in {:.1} s; memory {:.0} MiB resident, {per_node:.2} MiB per node",
            self.join.as_secs_f64(),
            mib(self.rss_joined),
        )?;
        writeln!(f, "{}", idle_line(&self.idle))?;
        let p = &self.puts;
        writeln!(
            f,
            "puts: {} of {} in {:.1} s; copies beyond the uploader's: {} ({:.1}% on the {} XOR-closest nodes, {:.1}% on the {KAD_REPLICATION} closest); provider records on {:.1}% of the {KAD_REPLICATION} closest nodes; memory {:+.0} MiB over the puts",
            p.files - p.failed,
            p.files,
            p.elapsed.as_secs_f64(),
            p.extra_copies,
            pct(p.on_closest, p.extra_copies),
            REPLICAS - 1,
            pct(p.on_closest_k, p.extra_copies),
            pct(p.records_on_closest, p.closest_slots),
            (p.rss_after as f64 - p.rss_before as f64) / (1 << 20) as f64,
        )?;
        writeln!(f)?;
        write!(f, "| |")?;
        for phase in &self.phases {
            write!(f, " {} |", phase.name)?;
        }
        writeln!(f)?;
        write!(f, "|---|")?;
        for _ in &self.phases {
            write!(f, "---|")?;
        }
        writeln!(f)?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, cell: &dyn Fn(&Phase) -> String| {
            write!(f, "| {name} |")?;
            for phase in &self.phases {
                write!(f, " {} |", cell(phase))?;
            }
            writeln!(f)
        };
        row(f, "live nodes", &|p| p.live.to_string())?;
        row(f, "lookups found / run", &|p| {
            format!("{} / {}", p.lookups.iter().filter(|l| l.ok).count(), p.lookups.len())
        })?;
        row(f, "success", &|p| format!("{:.2}%", p.success().0 * 100.0))?;
        row(f, "success, files with a live copy", &|p| format!("{:.2}%", p.success().1 * 100.0))?;
        row(f, "latency p50 / p99", &|p| {
            let (p50, p99) = p.latency_ms();
            format!("{p50:.1} / {p99:.1} ms")
        })?;
        row(f, "DHT requests p50 / p99", &|p| {
            let (p50, p99) = p.dht_requests();
            format!("{p50:.0} / {p99:.0}")
        })?;
        row(f, "Have probes p50", &|p| format!("{:.0}", p.probes()))?;
        row(f, "routing table min / median / max", &|p| spread(&p.routing))?;
        row(f, "closest peers known", &|p| format!("{:.1}%", p.neighbourhood * 100.0))?;
        row(f, "nodes in no routing table", &|p| p.unknown.to_string())?;
        row(f, "entries of stopped nodes", &|p| p.stale.to_string())?;
        row(f, "provider records per node min / median / max", &|p| spread(&p.provider_records))?;
        row(f, "connections per node min / median / max", &|p| spread(&p.connections))?;
        row(f, "converged after the last wave of joins", &|p| match p.converged {
            Some(t) => format!("{:.1} s", t.as_secs_f64()),
            None if p.name.contains("stopped") => "-".into(),
            None => format!("settled at {:.1}%", p.neighbourhood * 100.0),
        })?;
        row(f, "memory resident", &|p| format!("{:.0} MiB", mib(p.rss)))?;
        writeln!(f)?;
        for (n, step) in self.churn.iter().enumerate() {
            writeln!(f, "{}", churn_line(n + 1, self.churn.len(), step))?;
        }
        if !self.churn.is_empty() {
            writeln!(f)?;
        }
        write!(f, "2·log2(N) = {:.1}; ", 2.0 * (o.nodes as f64).log2())?;
        if let Some(cpu) = self.cpu_secs {
            write!(f, "CPU {cpu:.0} s; ")?;
        }
        if let Some(peak) = self.peak_rss {
            write!(f, "peak memory {:.0} MiB; ", mib(peak))?;
        }
        write!(f, "ran {:.0} s", self.elapsed.as_secs_f64())
    }
}

fn pct(part: usize, whole: usize) -> f64 {
    if whole == 0 { 100.0 } else { part as f64 * 100.0 / whole as f64 }
}

/// Writes the report (`dht-<N>.md`) and its plot (`dht-<N>.svg`: the
/// distribution of DHT requests per lookup and the latency of lookups, per
/// phase) into `out`; returns their paths.
pub fn write_report(report: &DhtReport, out: &Path) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let n = report.options.nodes;
    let table = out.join(format!("dht-{n}.md"));
    std::fs::write(&table, format!("{report}\n"))
        .map_err(|e| format!("cannot write {}: {e}", table.display()))?;
    let plot = out.join(format!("dht-{n}.svg"));
    draw(report, &plot).map_err(|e| format!("cannot draw {}: {e}", plot.display()))?;
    Ok((table, plot))
}

fn draw(report: &DhtReport, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let colours = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44)];

    // Left: the share of lookups that sent each number of DHT requests.
    let mut counts: Vec<HashMap<u32, usize>> = Vec::new();
    let mut most = 1;
    for phase in &report.phases {
        let mut c = HashMap::new();
        for l in &phase.lookups {
            *c.entry(l.dht_requests).or_default() += 1;
            most = most.max(l.dht_requests);
        }
        counts.push(c);
    }
    let top = counts
        .iter()
        .zip(&report.phases)
        .flat_map(|(c, p)| c.values().map(move |&v| v as f64 / p.lookups.len().max(1) as f64))
        .fold(0.0f64, f64::max);
    let mut chart = ChartBuilder::on(&left)
        .caption(
            format!("DHT requests per lookup, {} nodes", report.options.nodes),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(0u32..most + 1, 0.0..(top * 1.1).max(0.01))?;
    chart
        .configure_mesh()
        .x_desc("requests")
        .y_desc("share of lookups")
        .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
        .draw()?;
    for (n, (phase, c)) in report.phases.iter().zip(&counts).enumerate() {
        let colour = colours[n % colours.len()];
        let total = phase.lookups.len().max(1) as f64;
        let points: Vec<(u32, f64)> =
            (0..=most).map(|r| (r, c.get(&r).copied().unwrap_or(0) as f64 / total)).collect();
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(phase.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
            });
    }
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw()?;

    // Right: the share of lookups done within each time.
    let slowest = report
        .phases
        .iter()
        .flat_map(|p| p.lookups.iter().map(|l| l.latency.as_secs_f64() * 1e3))
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(&right)
        .caption("lookups done within a time", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d((0.5f64..slowest * 1.2).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("ms (log)")
        .y_desc("lookups done")
        .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
        .draw()?;
    for (n, phase) in report.phases.iter().enumerate() {
        let colour = colours[n % colours.len()];
        let mut ms: Vec<f64> =
            phase.lookups.iter().filter(|l| l.ok).map(|l| l.latency.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let total = phase.lookups.len().max(1) as f64;
        let points: Vec<(f64, f64)> =
            ms.iter().enumerate().map(|(i, &t)| (t.max(0.5), (i + 1) as f64 / total)).collect();
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(phase.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
