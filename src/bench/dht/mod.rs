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

//!
//! The nodes and what is read of them are [`network`]; the progress lines,
//! the table and the plot are [`report`].

mod network;
mod report;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

pub use self::report::write_report;
use self::{
    network::Net,
    report::{churn_line, idle_line, phase_line},
};
use super::{median, peak_rss, rss};
use crate::net::behaviour::Wire;

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
    ///
    /// [`KAD_REPLICATION`]: crate::net::behaviour::KAD_REPLICATION
    pub extra_copies: usize,
    pub on_closest: usize,
    pub on_closest_k: usize,
    /// Of the [`KAD_REPLICATION`] live nodes closest to each root, those
    /// that keep a provider record for it, in all.
    ///
    /// [`KAD_REPLICATION`]: crate::net::behaviour::KAD_REPLICATION
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
    let mut net = Net::new(&options);
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
