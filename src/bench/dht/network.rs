//! The network under test: every node of `bench dht`, what the benchmark
//! asks of them (joins, puts, lookups, churn) and what it reads of them
//! (their routing tables and provider records, against the true XOR
//! distances it alone knows).

use std::{
    collections::HashSet,
    io::Cursor,
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

use super::{
    CONVERGE_LIMIT, CONVERGED, COST_WAIT, ChurnStep, DhtOptions, FILE_SIZE, IDLE, Idle, JOIN_WAIT,
    LOOKUPS_AT_ONCE, Lookup, PUTS_AT_ONCE, Phase, Puts, QUIET_LIMIT, REPAIR_WAIT, REPLICAS,
    SAMPLE_EVERY, SETTLED, WAVE,
};
use crate::{
    Ticket,
    bench::{cpu_secs, rss},
    net::behaviour::{KAD_REPLICATION, Wire, provider_key},
    node::{Node, NodeConfig},
    store::Store,
};

/// A file put and where it went.
pub(super) struct File {
    ticket: Ticket,
    size: u64,
    key: KBucketKey<Vec<u8>>,
    /// Nodes that looked it up: each looks up a file once.
    asked: HashSet<usize>,
}

/// The network: every node started, `None` once stopped.
pub(super) struct Net {
    nodes: Vec<Option<Node>>,
    ids: Vec<PeerId>,
    rng: StdRng,
    bootstrap: Vec<Multiaddr>,
    options: DhtOptions,
}

impl Net {
    pub(super) fn new(options: &DhtOptions) -> Net {
        Net {
            nodes: Vec::new(),
            ids: Vec::new(),
            rng: StdRng::seed_from_u64(options.seed),
            bootstrap: Vec::new(),
            options: options.clone(),
        }
    }

    pub(super) fn live(&self) -> Vec<usize> {
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
    pub(super) async fn join(
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
    pub(super) async fn stop(&mut self, count: usize) {
        let mut candidates: Vec<usize> = self.live().into_iter().filter(|&i| i != 0).collect();
        candidates.shuffle(&mut self.rng);
        let stopping: Vec<Node> =
            candidates.into_iter().take(count).filter_map(|i| self.nodes[i].take()).collect();
        futures::future::join_all(stopping.into_iter().map(Node::shutdown)).await;
    }

    /// Stops `count` nodes, then waits until repair has brought every file
    /// that still has a copy back to [`REPLICAS`] copies, or
    /// [`REPAIR_WAIT`] has passed.
    pub(super) async fn churn_step(&mut self, files: &[File], count: usize) -> ChurnStep {
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
        crate::store::spawn_blocking(move || Survey::of(&ids, &tables, &all))
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
    pub(super) async fn idle(&self) -> Idle {
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
        let (cpu, (opened, answered)) = (cpu_secs(None), self.work());
        tokio::time::sleep(IDLE).await;
        let (opened_end, answered_end) = self.work();
        Idle {
            cpu_secs: cpu_secs(None).zip(cpu).map(|(end, start)| end - start),
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

    /// The live nodes holding `file` pinned. The benchmark's own look into
    /// the nodes' indexes (no disk: the index is in memory), made on a
    /// thread of its own because store calls are refused on runtime threads.
    fn holders(&self, root: &cid::Cid) -> Vec<usize> {
        let live = self.live();
        std::thread::scope(|s| {
            s.spawn(|| {
                live.into_iter()
                    .filter(|&i| self.node(i).store().root_info(root).is_some_and(|r| r.pinned()))
                    .collect()
            })
            .join()
            .expect("the survey of holders")
        })
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
    pub(super) async fn put(&mut self, count: usize) -> (Vec<File>, Puts) {
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

    pub(super) async fn phase(
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

    pub(super) async fn shutdown(self) {
        let nodes = self.nodes.into_iter().flatten();
        futures::future::join_all(nodes.map(Node::shutdown)).await;
    }
}

/// What the routing tables know, read at one moment.
#[derive(Debug, Clone, Default)]
pub(super) struct Survey {
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
