//! The network benchmark behind `dfs-p2p bench net`: a get of one file from
//! one or more serving nodes, against a raw libp2p stream over the same
//! transport (`raw`), with the CPU time and the peak memory of each node.
//! Over loopback by default; through links with a delay and a rate
//! (`proxy`) when asked.
//!
//! Set-up. The serving node holds the file (imported into its data
//! directory beforehand, not timed). When this runs inside the `dfs-p2p`
//! binary, the serving node is a child process of the same binary (a plain
//! `dfs-p2p --listen .. --data-dir ..` node), so each node's peak RSS is
//! measured on its own (`VmHWM` of the child; of this process for the
//! getter, reset before the gets where the kernel allows). Elsewhere (tests)
//! both nodes run in this process and the RSS is the process's.
//!
//! The get is timed from the call to its return: discovery, every block
//! requested (32 in flight), verified, written to the store, decrypted and
//! streamed in order to a sink. Each run starts from an empty getter store of
//! its own; they are removed together at the end, so that no run pays for
//! the previous one's deletes (ext4 without a journal checks every recently
//! freed inode, one by one, before it reuses it for a new file).
//!
//! The baseline is one raw libp2p stream over the same TCP(nodelay)+Noise+
//! Yamux transport: a `request_response` with a codec that answers a
//! request for N bytes by writing N bytes on the stream, and counts them on
//! the other side without storing them. No hashing, no disk, no crypto
//! beyond Noise: what the transport gives. Its ends run like the two nodes:
//! the serving end in a child process (`dfs-p2p bench raw-serve`) when the
//! serving node is one, in this process otherwise. With two processes, the
//! same stream with both ends in this process is measured too and shown for
//! reference (it skips the wake-ups between processes, about 15% faster).
//! The raw transfers run right before each get, so that each pair sees the
//! same state of the machine; CPU time and peak memory are counted around
//! the gets only.
//!
//! Links. Given a link ([`NetBenchOptions::link`]), each serving node sits
//! behind one of its own (a [`LinkProxy`]), the getter is given only the
//! links' addresses to join through, and the raw stream crosses a link of
//! the same kind: the baseline is what one such link carries over one
//! stream. With more than one serving node, the file reaches them the
//! product's way, under one ticket (a separate import would make a ticket
//! of each store's own): a put on the first asking for a copy on each,
//! before anything is timed. The getter is connected to every serving node,
//! through its link, before its get is timed. It still learns each node's
//! own address (identify, the DHT) and could reach it around the link; it
//! does not while it holds the connection through the link (a node dials
//! no peer it is connected to), and each run checks it: the bytes the links
//! carried toward the getter during the get must cover the file, and the
//! connections the getter opened must all have crossed the links; a run
//! where either fails is reported loudly. When the nodes run as child
//! processes, the links run in one of their own (`dfs-p2p bench
//! link-proxy`), so that the getter's CPU time and memory are its own.

use std::{
    fmt, io,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};

use super::{
    CpuSpent, cpu_secs, median, peak_rss,
    proxy::{self, Link, LinkProxy},
    raw::{raw_server_task, raw_stream},
    reset_peak_rss,
};
use crate::{
    Ticket,
    import::{self, ImportOptions},
    node::{Node, NodeConfig, NodeError, PutOptions},
    store::{Store, StoreOptions},
    testdata::Generator,
    units::human_size,
};

/// Timed runs of each measurement; the report gives their median.
pub const RUNS: usize = 3;
/// How long the benchmark waits for the serving node to come up.
const SERVER_START: Duration = Duration::from_secs(30);
/// How long the links' process may take to answer a command.
const LINK_ANSWER: Duration = Duration::from_secs(10);

/// What `bench_net` runs.
#[derive(Debug, Clone, Copy)]
pub struct NetBenchOptions {
    /// Bytes of the file got.
    pub size: u64,
    /// Serving nodes, each holding the file (more than one needs a link).
    pub providers: usize,
    /// The link in front of each serving node and of the raw stream's
    /// serving end; `None`: one serving node over loopback, no proxy.
    pub link: Option<Link>,
}

impl NetBenchOptions {
    /// One serving node over loopback.
    pub fn loopback(size: u64) -> NetBenchOptions {
        NetBenchOptions { size, providers: 1, link: None }
    }
}

/// What `bench_net` measured. Throughputs are in bytes per second.
#[derive(Debug, Clone)]
pub struct NetBenchReport {
    pub size: u64,
    /// Serving nodes, each behind its link if there is one.
    pub providers: usize,
    pub link: Option<Link>,
    /// Throughput of each get.
    pub get_runs: Vec<f64>,
    pub get_median: f64,
    /// Throughput of each raw-stream transfer.
    pub raw_runs: Vec<f64>,
    pub raw_median: f64,
    /// The raw stream with both ends in this process, when the baseline
    /// ran between two processes over loopback (for reference).
    pub raw_one_process_median: Option<f64>,
    /// `get_median / raw_median`: the get against one raw stream (over one
    /// link, with links).
    pub ratio: f64,
    /// `ratio / providers`: the get against one raw stream per serving
    /// node, each over its own link.
    pub ratio_per_link: f64,
    /// Peak RSS of each serving node that ran in its own process.
    pub server_peak_rss: Vec<Option<u64>>,
    /// Peak RSS of this process during the gets (the getter node, plus the
    /// serving nodes and the links when `server_peak_rss` is empty).
    pub getter_peak_rss: Option<u64>,
    /// How the serving nodes ran.
    pub server_in_child: bool,
    /// CPU seconds per GB got: the serving children's together, and this
    /// process's.
    pub server_cpu_per_gb: Option<f64>,
    pub getter_cpu_per_gb: Option<f64>,
    /// CPU seconds per GB streamed by the two-process raw baseline: its
    /// serving child's, and this process's (the receiving end).
    pub raw_cpu_per_gb: Option<(f64, f64)>,
    /// CPU seconds per GB got of the links' process, when they had one.
    pub link_cpu_per_gb: Option<f64>,
    /// With links: the bytes they carried toward the getter during each
    /// get (the file and what the protocols add) ...
    pub link_bytes: Vec<u64>,
    /// ... and toward the receiving end of each raw transfer.
    pub raw_link_bytes: Vec<u64>,
    /// With links: the connections the getter opened in each run, up to
    /// the end of its get, and those the serving nodes' links took
    /// meanwhile.
    pub getter_connections: Vec<u64>,
    pub link_connections: Vec<u64>,
}

impl NetBenchReport {
    /// Whether every get and every raw transfer went wholly through the
    /// links: each carried at least the file toward its receiver, and every
    /// connection the getter opened crossed them. True without links.
    pub fn links_carried_everything(&self) -> bool {
        self.link_bytes.iter().chain(&self.raw_link_bytes).all(|b| *b >= self.size)
            && self.getter_connections.iter().zip(&self.link_connections).all(|(g, l)| g <= l)
    }

    /// The raw stream's CPU per GB at each end, when it was counted.
    fn fmt_raw_cpu(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.raw_cpu_per_gb {
            Some((serving, receiving)) => writeln!(
                f,
                "              raw stream: serving end {serving:.2} s, receiving end {receiving:.2} s"
            ),
            None => Ok(()),
        }
    }

    fn fmt_loopback(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mbs = |v: f64| v / 1e6;
        let runs = |r: &[f64]| r.iter().map(|v| format!("{:.0}", mbs(*v))).collect::<Vec<_>>();
        let mib =
            |b: Option<u64>| b.map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
        writeln!(f, "network benchmark: get of {} bytes from one peer over loopback", self.size)?;
        writeln!(
            f,
            "  get:        {:.0} MB/s median (runs: {} MB/s)",
            mbs(self.get_median),
            runs(&self.get_runs).join(", ")
        )?;
        let ends = match self.raw_one_process_median {
            Some(_) => "its ends in two processes, as the nodes are",
            None => "both ends in this process, as the nodes are",
        };
        writeln!(
            f,
            "  raw stream: {:.0} MB/s median (runs: {} MB/s; one TCP+Noise+Yamux stream, {ends})",
            mbs(self.raw_median),
            runs(&self.raw_runs).join(", ")
        )?;
        if let Some(one) = self.raw_one_process_median {
            writeln!(f, "              {:.0} MB/s median with both ends in one process", mbs(one))?;
        }
        writeln!(f, "  get / raw:  {:.2}", self.ratio)?;
        let cpu = |c: Option<f64>| c.map_or("n/a".into(), |c| format!("{c:.2} s"));
        if self.server_in_child {
            writeln!(
                f,
                "  CPU per GB: serving node {}, getting node {}",
                cpu(self.server_cpu_per_gb),
                cpu(self.getter_cpu_per_gb)
            )?;
        } else {
            writeln!(f, "  CPU per GB: {} (both nodes)", cpu(self.getter_cpu_per_gb))?;
        }
        self.fmt_raw_cpu(f)?;
        if self.server_in_child {
            writeln!(
                f,
                "  peak RSS:   serving node {}, getting node {}",
                mib(self.server_peak_rss.first().copied().flatten()),
                mib(self.getter_peak_rss)
            )
        } else {
            writeln!(f, "  peak RSS:   {} (both nodes in one process)", mib(self.getter_peak_rss))
        }
    }

    fn fmt_links(&self, f: &mut fmt::Formatter<'_>, link: Link) -> fmt::Result {
        let mbs = |v: f64| v / 1e6;
        let runs = |r: &[f64]| r.iter().map(|v| format!("{:.1}", mbs(*v))).collect::<Vec<_>>();
        let mib =
            |b: Option<u64>| b.map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
        let cpu = |c: Option<f64>| c.map_or("n/a".into(), |c| format!("{c:.2} s"));
        let n = self.providers;
        let from = match n {
            1 => format!("1 provider, behind a link of {link}"),
            n => format!("{n} providers, each behind a link of {link}"),
        };
        writeln!(f, "network benchmark: get of {} from {from}", human_size(self.size))?;
        writeln!(
            f,
            "  get:        {:.1} MB/s median (runs: {} MB/s)",
            mbs(self.get_median),
            runs(&self.get_runs).join(", ")
        )?;
        writeln!(
            f,
            "  raw stream: {:.1} MB/s median (runs: {} MB/s; one TCP+Noise+Yamux stream through \
             one such link)",
            mbs(self.raw_median),
            runs(&self.raw_runs).join(", ")
        )?;
        if n == 1 {
            writeln!(f, "  get / raw:  {:.2}", self.ratio)?;
        } else {
            writeln!(
                f,
                "  get / raw:  {:.2} (the get from {n} providers against one raw stream over \
                 one link)",
                self.ratio
            )?;
            writeln!(
                f,
                "              {:.2} per link (against {n} raw streams, one over each link)",
                self.ratio_per_link
            )?;
        }
        if let Some(rate) = link.bytes_per_sec() {
            let all = rate * n as f64;
            writeln!(
                f,
                "  link use:   get {:.0}% of {} {:.1} MB/s, raw stream {:.0}% of one link's",
                100.0 * self.get_median / all,
                if n == 1 { "the link's" } else { "the links' total" },
                mbs(all),
                100.0 * self.raw_median / rate,
            )?;
        }
        if self.links_carried_everything() {
            let per_get = median(&self.link_bytes.iter().map(|b| *b as f64).collect::<Vec<_>>());
            let connections = self.getter_connections.iter().max().copied().unwrap_or(0);
            writeln!(
                f,
                "  links:      every get through them: {:.2} MB toward the getter per get \
                 (median; the file and {:.1}% more), over {connections} connection{} each, all \
                 through the links",
                mbs(per_get),
                100.0 * (per_get / self.size as f64 - 1.0),
                if connections == 1 { "" } else { "s" },
            )?;
        }
        for (run, bytes) in self.link_bytes.iter().enumerate() {
            if *bytes < self.size {
                writeln!(
                    f,
                    "  WARNING: get {}: the links carried {bytes} bytes toward the getter, fewer \
                     than the file's {}: the getter reached a serving node around its link, so \
                     this run does not measure the link",
                    run + 1,
                    self.size
                )?;
            }
        }
        for (run, bytes) in self.raw_link_bytes.iter().enumerate() {
            if *bytes < self.size {
                writeln!(
                    f,
                    "  WARNING: raw transfer {}: its link carried {bytes} bytes of {}: the raw \
                     stream went around its link, so it does not measure the link",
                    run + 1,
                    self.size
                )?;
            }
        }
        for (run, (getter, links)) in
            self.getter_connections.iter().zip(&self.link_connections).enumerate()
        {
            if getter > links {
                writeln!(
                    f,
                    "  WARNING: run {}: the getter opened {getter} connections but the links took \
                     {links}: some went around the links",
                    run + 1
                )?;
            }
        }
        if self.server_in_child {
            let serving = if n == 1 { "serving node" } else { "serving nodes together" };
            writeln!(
                f,
                "  CPU per GB: {serving} {}, getting node {}, links {} (a process of their own)",
                cpu(self.server_cpu_per_gb),
                cpu(self.getter_cpu_per_gb),
                cpu(self.link_cpu_per_gb)
            )?;
        } else {
            writeln!(
                f,
                "  CPU per GB: {} (every node and the links, in this process)",
                cpu(self.getter_cpu_per_gb)
            )?;
        }
        self.fmt_raw_cpu(f)?;
        if self.server_in_child {
            let serving = self.server_peak_rss.iter().map(|r| mib(*r)).collect::<Vec<_>>();
            writeln!(
                f,
                "  peak RSS:   serving node{} {}; getting node {}",
                if n == 1 { "" } else { "s" },
                serving.join(", "),
                mib(self.getter_peak_rss)
            )
        } else {
            writeln!(
                f,
                "  peak RSS:   {} (every node and the links, in this process)",
                mib(self.getter_peak_rss)
            )
        }
    }
}

impl fmt::Display for NetBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.link {
            None => self.fmt_loopback(f),
            Some(link) => self.fmt_links(f, link),
        }
    }
}

/// Runs the benchmark as `options` say, using `dir` for data.
pub async fn bench_net(options: NetBenchOptions, dir: &Path) -> Result<NetBenchReport, NodeError> {
    let NetBenchOptions { size, providers, link } = options;
    if providers == 0 || (providers > 1 && link.is_none()) {
        return Err(NodeError::Transport(
            "the benchmark needs one serving node, or links in front of more".into(),
        ));
    }
    let server_dirs: Vec<PathBuf> = (0..providers)
        .map(|i| match i {
            0 => dir.join("server"),
            i => dir.join(format!("server-{i}")),
        })
        .collect();
    let client_dirs: Vec<PathBuf> = (0..RUNS).map(|i| dir.join(format!("getter-{i}"))).collect();

    // The file, where the serving nodes will find it.
    let placed = if providers == 1 {
        let server_dir = server_dirs[0].clone();
        let (ticket, peer) = crate::store::spawn_blocking(move || -> Result<_, NodeError> {
            let store = Store::open(&server_dir, StoreOptions::default())?;
            let options = ImportOptions { name: Some("bench".into()), ..Default::default() };
            let imported = import::import(&store, Generator::new(size), &options, None)?;
            Ok((imported.ticket, store.peer_id()))
        })
        .await
        .map_err(|_| NodeError::Stopped)??;
        Placed::Imported { ticket, peer }
    } else {
        let (ticket, nodes) = place_copies(size, &server_dirs).await?;
        Placed::Running { ticket, nodes }
    };
    let ticket = match &placed {
        Placed::Imported { ticket, .. } | Placed::Running { ticket, .. } => ticket.clone(),
    };

    let exe = std::env::current_exe().ok();
    let in_child = exe
        .as_ref()
        .and_then(|e| e.file_name())
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("dfs-p2p"));
    let exe = exe.filter(|_| in_child);

    // Everything started is stopped at the end, whatever happened.
    let mut servers: Vec<Server> = Vec::new();
    let mut raw_server: Option<RawServer> = None;
    let mut raw_task: Option<tokio::task::JoinHandle<()>> = None;
    let mut links: Option<Links> = None;
    // CPU seconds of the serving nodes and of this process during the gets,
    // of each end of the two-process raw stream during its transfers, and
    // of the links' process during the gets.
    let (mut cpu, mut raw_cpu, mut link_cpu) = (CpuSpent::ZERO, CpuSpent::ZERO, Some(0.0));
    let mut getter_peak_rss: Option<u64> = None;
    let (mut raw_runs, mut raw_one_process_runs) = (Vec::new(), Vec::new());
    let (mut link_bytes, mut raw_link_bytes) = (Vec::new(), Vec::new());
    let (mut getter_connections, mut link_connections) = (Vec::new(), Vec::new());
    let result = async {
        let server_addrs =
            start_servers(placed, &server_dirs, exe.as_deref(), &mut servers).await?;
        // The getter's way to the serving nodes, and the raw stream's: the
        // nodes' own addresses, or their links'.
        let (bootstrap, raw_via_link) = match link {
            None => {
                // The baseline's two ends run like the two nodes: in two
                // processes when the serving node is a child, in this one
                // otherwise.
                if let Some(exe) = &exe {
                    raw_server = Some(RawServer::start(exe).await?);
                }
                (server_addrs, None)
            }
            Some(link) => {
                let links = links.insert(match &exe {
                    Some(exe) => Links::Process(LinkProcess::start(exe)?),
                    None => Links::InProcess(Vec::new()),
                });
                let mut via_links = Vec::new();
                for addr in &server_addrs {
                    // Listening before the getter dials: a node dials its
                    // bootstrap addresses again only while it has no peer.
                    let target = socket_addr(addr)?;
                    wait_listening(target).await?;
                    via_links.push(through(links.open(target, link).await?, addr)?);
                }
                let raw_addr = match &exe {
                    Some(exe) => raw_server.insert(RawServer::start(exe).await?).addr.clone(),
                    None => {
                        let (addr, task) = raw_server_task().await?;
                        raw_task = Some(task);
                        addr
                    }
                };
                let raw_via_link =
                    through(links.open(socket_addr(&raw_addr)?, link).await?, &raw_addr)?;
                (via_links, Some(raw_via_link))
            }
        };
        let server_pids: Vec<u32> = servers.iter().filter_map(Server::pid).collect();
        let raw_pid = raw_server.as_ref().map(|r| r.child.id());
        let link_pid = links.as_ref().and_then(Links::pid);
        let links = links.as_ref();
        // Each get is paired with a raw-stream transfer right before it, so
        // the two see the same state of the machine (a VM's speed drifts
        // within a minute). CPU and peak memory are counted around the gets
        // only.
        let mut get_runs = Vec::new();
        for client_dir in &client_dirs {
            match (&raw_via_link, links) {
                (Some(raw_addr), Some(links)) => {
                    let counted = links.counts().await?;
                    let before = CpuSpent::now(raw_pid);
                    raw_runs.push(raw_stream(size, Some(raw_addr)).await?);
                    raw_cpu.add_since(before, CpuSpent::now(raw_pid));
                    let raw_link = LinkCount::since(&links.counts().await?, &counted, providers..);
                    raw_link_bytes.push(raw_link.from_target);
                }
                _ => {
                    if let Some(raw_server) = &raw_server {
                        let before = CpuSpent::now(raw_pid);
                        raw_runs.push(raw_stream(size, Some(&raw_server.addr)).await?);
                        raw_cpu.add_since(before, CpuSpent::now(raw_pid));
                        raw_one_process_runs.push(raw_stream(size, None).await?);
                    } else {
                        raw_runs.push(raw_stream(size, None).await?);
                    }
                }
            }
            // The raw swarms are gone; hand what they freed back to the
            // kernel, so the getter's peak RSS is the getter's own.
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe {
                libc::malloc_trim(0);
            }
            let mut config = NodeConfig::new(client_dir.clone());
            config.listen = Vec::new();
            config.bootstrap = bootstrap.clone();
            config.replicas = 1;
            let counted_at_start = match links {
                Some(links) => links.counts().await?,
                None => Vec::new(),
            };
            reset_peak_rss();
            let client = Node::start(config).await?;
            let reached = client.wait_for_peers(providers, SERVER_START).await;
            if reached < providers {
                client.shutdown().await;
                return Err(NodeError::Transport(match providers {
                    1 => "the serving node did not come up".into(),
                    n => format!("the getter reached {reached} of the {n} serving nodes"),
                }));
            }
            let counted = match links {
                Some(links) => links.counts().await?,
                None => Vec::new(),
            };
            let link_cpu_before = link_pid.and_then(|pid| cpu_secs(Some(pid)));
            let before = CpuSpent::now_of(&server_pids);
            let started = Instant::now();
            let report = client.get(ticket.clone(), Box::new(io::sink()), None).await?;
            let secs = started.elapsed().as_secs_f64();
            cpu.add_since(before, CpuSpent::now_of(&server_pids));
            let link_cpu_after = link_pid.and_then(|pid| cpu_secs(Some(pid)));
            link_cpu =
                link_cpu.zip(link_cpu_before.zip(link_cpu_after)).map(|(s, (b, a))| s + a - b);
            if report.size != size {
                return Err(NodeError::Transport(format!("got {} bytes of {size}", report.size)));
            }
            get_runs.push(size as f64 / secs);
            getter_peak_rss = getter_peak_rss.max(peak_rss(None));
            if let Some(links) = links {
                let now = links.counts().await?;
                link_bytes.push(LinkCount::since(&now, &counted, ..providers).from_target);
                let opened = LinkCount::since(&now, &counted_at_start, ..providers).connections;
                link_connections.push(opened);
                let getter = client.net().counters().connections_opened.load(Ordering::Relaxed);
                getter_connections.push(getter);
            }
            client.shutdown().await;
        }
        Ok(get_runs)
    }
    .await;
    let gb = (size as f64 * RUNS as f64) / 1e9;
    let server_cpu_per_gb = cpu.child.map(|secs| secs / gb);
    let getter_cpu_per_gb = cpu.this.map(|secs| secs / gb);
    let raw_cpu_per_gb = raw_server
        .as_ref()
        .and(raw_cpu.child.zip(raw_cpu.this))
        .map(|(serving, receiving)| (serving / gb, receiving / gb));
    let link_cpu_per_gb = links.as_ref().and_then(Links::pid).and(link_cpu).map(|secs| secs / gb);
    for client_dir in &client_dirs {
        let _ = std::fs::remove_dir_all(client_dir);
    }

    let mut server_peak_rss = Vec::new();
    for server in servers {
        match server {
            Server::Child(mut child) => {
                server_peak_rss.push(peak_rss(Some(child.id())));
                stop_child(&mut child);
            }
            Server::InProcess(node) => node.shutdown().await,
        }
    }
    if let Some(mut raw_server) = raw_server {
        stop_child(&mut raw_server.child);
    }
    if let Some(task) = raw_task {
        task.abort();
    }
    if let Some(links) = links {
        links.stop();
    }
    let get_runs = result?;

    let get_median = median(&get_runs);
    let raw_median = median(&raw_runs);
    let ratio = get_median / raw_median;
    Ok(NetBenchReport {
        size,
        providers,
        link,
        get_runs,
        get_median,
        raw_runs,
        raw_median,
        raw_one_process_median: (!raw_one_process_runs.is_empty())
            .then(|| median(&raw_one_process_runs)),
        ratio,
        ratio_per_link: ratio / providers as f64,
        server_peak_rss,
        getter_peak_rss,
        server_in_child: in_child,
        server_cpu_per_gb,
        getter_cpu_per_gb,
        raw_cpu_per_gb,
        link_cpu_per_gb,
        link_bytes,
        raw_link_bytes,
        getter_connections,
        link_connections,
    })
}

/// How the file reached the serving nodes.
enum Placed {
    /// Imported into the one serving node's data directory.
    Imported { ticket: Ticket, peer: PeerId },
    /// Put on the first of these nodes, running in this process, with a
    /// copy on each of the others.
    Running { ticket: Ticket, nodes: Vec<Node> },
}

/// Puts a file of `size` bytes on a node on the first of `dirs`, asking for
/// a copy on every node: the nodes on the others take replicas of it, under
/// the same ticket. Returns the ticket and the nodes, still running (in
/// this process, listening on loopback).
async fn place_copies(size: u64, dirs: &[PathBuf]) -> Result<(Ticket, Vec<Node>), NodeError> {
    let mut nodes: Vec<Node> = Vec::new();
    let placed = async {
        let mut first = Vec::new();
        for dir in dirs {
            let mut config = NodeConfig::new(dir.clone());
            config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid address")];
            config.bootstrap = first.clone();
            config.replicas = dirs.len();
            let node = Node::start(config).await?;
            if first.is_empty() {
                first = node.listen_addrs().await;
            }
            nodes.push(node);
        }
        let others = dirs.len() - 1;
        let reached = nodes[0].wait_for_peers(others, SERVER_START).await;
        if reached < others {
            return Err(NodeError::Transport(format!(
                "{reached} of the other {others} serving nodes joined the first"
            )));
        }
        let options =
            PutOptions { name: Some("bench".into()), total: Some(size), ..Default::default() };
        let put = nodes[0].put_with(Box::new(Generator::new(size)), options).await?;
        if put.copies < dirs.len() {
            let failed: Vec<String> = put.failed.iter().map(|(p, e)| format!("{p}: {e}")).collect();
            return Err(NodeError::Transport(format!(
                "the file reached {} of the {} serving nodes ({})",
                put.copies,
                dirs.len(),
                failed.join("; ")
            )));
        }
        Ok(put.ticket)
    }
    .await;
    match placed {
        Ok(ticket) => Ok((ticket, nodes)),
        Err(e) => {
            for node in nodes {
                node.shutdown().await;
            }
            Err(e)
        }
    }
}

/// Starts the serving nodes on the file `placed`: child processes when
/// `exe` is given (this binary), in this process otherwise. Each goes into
/// `servers` as soon as it runs; returns their full addresses.
async fn start_servers(
    placed: Placed,
    dirs: &[PathBuf],
    exe: Option<&Path>,
    servers: &mut Vec<Server>,
) -> Result<Vec<Multiaddr>, NodeError> {
    let mut addrs = Vec::new();
    match placed {
        Placed::Imported { peer, .. } => {
            let port = free_port()?;
            let listen: Multiaddr =
                format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("valid address");
            servers.push(match exe {
                Some(exe) => Server::Child(spawn_server(exe, &listen, &dirs[0])?),
                None => {
                    let mut config = NodeConfig::new(dirs[0].clone());
                    config.listen = vec![listen.clone()];
                    config.replicas = 1;
                    Server::InProcess(Node::start(config).await?)
                }
            });
            addrs.push(listen.with(Protocol::P2p(peer)));
        }
        Placed::Running { nodes, .. } => {
            let Some(exe) = exe else {
                for node in nodes {
                    let listening = node.listen_addrs().await;
                    servers.push(Server::InProcess(node));
                    let addr = listening.into_iter().next().ok_or_else(|| {
                        NodeError::Transport("a serving node has no listen address".into())
                    })?;
                    addrs.push(addr);
                }
                return Ok(addrs);
            };
            // The same data directories, served by child processes.
            let peers: Vec<PeerId> = nodes.iter().map(Node::peer_id).collect();
            for node in nodes {
                node.shutdown().await;
            }
            for (dir, peer) in dirs.iter().zip(peers) {
                wait_unlocked(dir).await?;
                let port = free_port()?;
                let listen: Multiaddr =
                    format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("valid address");
                servers.push(Server::Child(spawn_server(exe, &listen, dir)?));
                addrs.push(listen.with(Protocol::P2p(peer)));
            }
        }
    }
    Ok(addrs)
}

/// Waits until no one holds the lock of the data directory `dir` (a node
/// of this process that stopped lets it go once its last task ends).
async fn wait_unlocked(dir: &Path) -> Result<(), NodeError> {
    let deadline = Instant::now() + SERVER_START;
    loop {
        let path = dir.to_path_buf();
        let opened = crate::store::spawn_blocking(move || {
            Store::open_unindexed(path, StoreOptions::default()).map(drop)
        })
        .await
        .map_err(|_| NodeError::Stopped)?;
        match opened {
            Ok(()) => return Ok(()),
            Err(crate::error::Error::InUse { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until something accepts TCP connections at `addr`.
async fn wait_listening(addr: SocketAddr) -> Result<(), NodeError> {
    let deadline = Instant::now() + SERVER_START;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() >= deadline {
            return Err(NodeError::Transport(format!(
                "the serving node at {addr} did not come up"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The IP address and TCP port of `addr`.
fn socket_addr(addr: &Multiaddr) -> Result<SocketAddr, NodeError> {
    let (mut ip, mut port) = (None, None);
    for protocol in addr.iter() {
        match protocol {
            Protocol::Ip4(a) => ip = Some(IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    ip.zip(port)
        .map(|(ip, port)| SocketAddr::new(ip, port))
        .ok_or_else(|| NodeError::Transport(format!("no IP address and TCP port in {addr}")))
}

/// The address of a link on loopback port `port`, in front of the peer of
/// `target` (a full address, ending with `/p2p/<peer id>`).
fn through(port: u16, target: &Multiaddr) -> Result<Multiaddr, NodeError> {
    let Some(Protocol::P2p(peer)) = target.iter().last() else {
        return Err(NodeError::Transport(format!("no peer id in {target}")));
    };
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("valid address");
    Ok(addr.with(Protocol::P2p(peer)))
}

/// What a link forwarded toward the side that connects to it, and the
/// connections it took.
#[derive(Debug, Clone, Copy, Default)]
struct LinkCount {
    from_target: u64,
    connections: u64,
}

impl LinkCount {
    /// What the links in `which` carried between two readings, together.
    fn since(
        now: &[LinkCount],
        before: &[LinkCount],
        which: impl std::slice::SliceIndex<[LinkCount], Output = [LinkCount]> + Clone,
    ) -> LinkCount {
        let (now, before) = (&now[which.clone()], &before[which]);
        now.iter().zip(before).fold(LinkCount::default(), |sum, (n, b)| LinkCount {
            from_target: sum.from_target + n.from_target.saturating_sub(b.from_target),
            connections: sum.connections + n.connections.saturating_sub(b.connections),
        })
    }
}

/// The links in front of the serving nodes and of the raw stream, in the
/// order they were opened: in a process of their own when the nodes run in
/// theirs, in this one otherwise.
enum Links {
    InProcess(Vec<LinkProxy>),
    Process(LinkProcess),
}

impl Links {
    /// Opens a link in front of `target`; returns its port on loopback.
    async fn open(&mut self, target: SocketAddr, link: Link) -> Result<u16, NodeError> {
        match self {
            Links::InProcess(proxies) => {
                let proxy = LinkProxy::start(target, link)
                    .await
                    .map_err(|e| NodeError::Transport(format!("cannot start a link: {e}")))?;
                let port = proxy.local_addr().port();
                proxies.push(proxy);
                Ok(port)
            }
            Links::Process(process) => {
                let answer = process.ask(proxy::open_line(target, link)).await?;
                answer.trim().parse().map_err(|_| {
                    NodeError::Transport(format!("the links' process answered {answer:?}"))
                })
            }
        }
    }

    /// What each link has carried so far.
    async fn counts(&self) -> Result<Vec<LinkCount>, NodeError> {
        match self {
            Links::InProcess(proxies) => Ok(proxies
                .iter()
                .map(|p| LinkCount { from_target: p.from_target(), connections: p.connections() })
                .collect()),
            Links::Process(process) => {
                let answer = process.ask("count".into()).await?;
                let numbers: Result<Vec<u64>, _> =
                    answer.split_whitespace().map(str::parse).collect();
                match numbers {
                    Ok(numbers) if numbers.len() % 3 == 0 => Ok(numbers
                        .chunks(3)
                        .map(|c| LinkCount { from_target: c[1], connections: c[2] })
                        .collect()),
                    _ => {
                        Err(NodeError::Transport(format!("the links' process answered {answer:?}")))
                    }
                }
            }
        }
    }

    /// The links' process, if they have one.
    fn pid(&self) -> Option<u32> {
        match self {
            Links::InProcess(_) => None,
            Links::Process(process) => Some(process.child.id()),
        }
    }

    fn stop(self) {
        if let Links::Process(process) = self {
            process.stop();
        }
    }
}

/// The links in a child process (`dfs-p2p bench link-proxy`), driven
/// through its stdin and stdout (see `proxy::serve_links`).
struct LinkProcess {
    child: Child,
    pipes: Arc<Mutex<(ChildStdin, io::BufReader<ChildStdout>)>>,
}

impl LinkProcess {
    fn start(exe: &Path) -> Result<LinkProcess, NodeError> {
        let failed =
            |e: String| NodeError::Transport(format!("cannot start the links' process: {e}"));
        let mut child = child_command(exe)
            .args(["bench", "link-proxy"])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| failed(e.to_string()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            stop_child(&mut child);
            return Err(failed("no pipes".into()));
        };
        Ok(LinkProcess { child, pipes: Arc::new(Mutex::new((stdin, io::BufReader::new(stdout)))) })
    }

    /// Sends one command line and returns the line that answers it.
    async fn ask(&self, line: String) -> Result<String, NodeError> {
        let pipes = self.pipes.clone();
        let exchange = crate::store::spawn_blocking(move || -> io::Result<String> {
            use std::io::{BufRead, Write};
            let mut pipes = pipes.lock().expect("link pipes");
            let (stdin, stdout) = &mut *pipes;
            writeln!(stdin, "{line}")?;
            stdin.flush()?;
            let mut answer = String::new();
            match stdout.read_line(&mut answer)? {
                0 => Err(io::ErrorKind::UnexpectedEof.into()),
                _ => Ok(answer),
            }
        });
        let failed = |e: String| NodeError::Transport(format!("the links' process: {e}"));
        // A process that does not answer is stopped at the end, which also
        // ends the read.
        match tokio::time::timeout(LINK_ANSWER, exchange).await {
            Err(_) => Err(failed("no answer".into())),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Ok(Ok(Err(e))) => Err(failed(e.to_string())),
            Ok(Ok(Ok(answer))) if answer.starts_with("error") => Err(failed(answer.trim().into())),
            Ok(Ok(Ok(answer))) => Ok(answer),
        }
    }

    fn stop(self) {
        // The end of its stdin stops it.
        let LinkProcess { mut child, pipes } = self;
        drop(pipes);
        stop_child(&mut child);
    }
}

enum Server {
    Child(Child),
    InProcess(Node),
}

impl Server {
    fn pid(&self) -> Option<u32> {
        match self {
            Server::Child(child) => Some(child.id()),
            Server::InProcess(_) => None,
        }
    }
}

fn spawn_server(exe: &Path, listen: &Multiaddr, dir: &Path) -> Result<Child, NodeError> {
    let mut command = child_command(exe);
    command
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--data-dir")
        .arg(dir)
        .arg("--replicas")
        .arg("1")
        .env_remove("DFS_DATA_DIR")
        .stdout(Stdio::null());
    command.spawn().map_err(|e| {
        NodeError::Transport(format!("cannot start the serving node {}: {e}", exe.display()))
    })
}

/// Set (to anything), the benchmark's child processes log to its stderr.
pub const CHILD_LOG_VAR: &str = "DFS_BENCH_CHILD_LOG";

/// A command for a child of this benchmark: stopped by the kernel if we
/// die first, stopped by us through its stdin (see `stop_child`).
fn child_command(exe: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(exe);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to stop
    // the child (a process that would otherwise run on) if we die first.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    // The children's logs (with `RUST_LOG`) only where asked for: they
    // would interleave with the report.
    let logs = std::env::var_os(CHILD_LOG_VAR).is_some();
    command.stdin(Stdio::piped()).stderr(if logs { Stdio::inherit() } else { Stdio::null() });
    command
}

/// The serving end of the raw stream in a child process (`bench raw-serve`).
struct RawServer {
    child: Child,
    addr: Multiaddr,
}

impl RawServer {
    async fn start(exe: &Path) -> Result<RawServer, NodeError> {
        let failed = |e: String| NodeError::Transport(format!("cannot start the raw server: {e}"));
        let mut child = child_command(exe)
            .args(["bench", "raw-serve"])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| failed(e.to_string()))?;
        let stdout = child.stdout.take().ok_or_else(|| failed("no stdout".into()))?;
        let read = crate::store::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
                .map(|_| line)
        });
        // A child that never reports is stopped, which also ends the read.
        let addr = match tokio::time::timeout(SERVER_START, read).await {
            Err(_) => Err(failed("it did not report its address".into())),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Ok(Ok(Err(e))) => Err(failed(e.to_string())),
            Ok(Ok(Ok(line))) => {
                line.trim().parse::<Multiaddr>().map_err(|e| failed(format!("{line:?}: {e}")))
            }
        };
        match addr {
            Ok(addr) => Ok(RawServer { child, addr }),
            Err(e) => {
                stop_child(&mut child);
                Err(e)
            }
        }
    }
}

fn stop_child(child: &mut Child) {
    use std::io::Write;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"quit\n");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn free_port() -> Result<u16, NodeError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| NodeError::Transport(format!("cannot find a free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| NodeError::Transport(format!("cannot find a free port: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bench_runs_small() {
        let dir = tempfile::tempdir().unwrap();
        let report =
            bench_net(NetBenchOptions::loopback(4 * 1024 * 1024), dir.path()).await.unwrap();
        assert_eq!(report.get_runs.len(), RUNS);
        assert!(report.get_median > 0.0 && report.raw_median > 0.0);
        assert!(!report.server_in_child);
        assert!(report.to_string().contains("get / raw"));
    }

    /// The full benchmark in process (both nodes here):
    /// `DFS_BENCH_SIZE=1073741824 cargo test --release --lib bench_full -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread")]
    #[ignore]
    async fn bench_full() {
        let size =
            std::env::var("DFS_BENCH_SIZE").ok().and_then(|s| s.parse().ok()).unwrap_or(1 << 30);
        let dir = tempfile::tempdir().unwrap();
        let report = bench_net(NetBenchOptions::loopback(size), dir.path()).await.unwrap();
        println!("{report}");
    }

    /// Two serving nodes, each behind its own link of 10 ms round trip:
    /// both hold the file under one ticket, the getter reaches them only
    /// through the links, and the report says so.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bench_through_links_small() {
        let dir = tempfile::tempdir().unwrap();
        let size = 3 * 1024 * 1024;
        let link = Link::from_rtt_and_rate(10.0, None);
        let options = NetBenchOptions { size, providers: 2, link: Some(link) };
        let report = bench_net(options, dir.path()).await.unwrap();
        assert_eq!(report.get_runs.len(), RUNS);
        assert_eq!(report.raw_runs.len(), RUNS);
        assert!(report.get_median > 0.0 && report.raw_median > 0.0);
        assert!(!report.server_in_child);
        // Every get took at least the file through the links, over one
        // connection per serving node, each through its link.
        assert_eq!(report.link_bytes.len(), RUNS);
        assert!(report.link_bytes.iter().all(|b| *b >= size), "{:?}", report.link_bytes);
        assert!(report.raw_link_bytes.iter().all(|b| *b >= size), "{:?}", report.raw_link_bytes);
        assert_eq!(report.getter_connections, vec![2; RUNS]);
        assert_eq!(report.link_connections, vec![2; RUNS]);
        assert!(report.links_carried_everything());
        assert!((report.ratio_per_link * 2.0 - report.ratio).abs() < 1e-9);
        let text = report.to_string();
        for wanted in [
            "get of 3 MiB from 2 providers, each behind a link of unlimited rate, 10 ms round trip",
            "get / raw:",
            "per link",
            "every get through them",
        ] {
            assert!(text.contains(wanted), "no {wanted:?} in:\n{text}");
        }
        assert!(!text.contains("WARNING"), "{text}");
    }

    /// A report whose links carried less than the file says so.
    #[test]
    fn a_get_around_the_links_is_reported() {
        let size = 1000;
        let report = NetBenchReport {
            size,
            providers: 2,
            link: Some(Link::from_rtt_and_rate(80.0, Some(200.0))),
            get_runs: vec![1e6; 2],
            get_median: 1e6,
            raw_runs: vec![1e6; 2],
            raw_median: 1e6,
            raw_one_process_median: None,
            ratio: 1.0,
            ratio_per_link: 0.5,
            server_peak_rss: vec![Some(1 << 20), None],
            getter_peak_rss: None,
            server_in_child: true,
            server_cpu_per_gb: None,
            getter_cpu_per_gb: None,
            raw_cpu_per_gb: None,
            link_cpu_per_gb: None,
            link_bytes: vec![1200, 600],
            raw_link_bytes: vec![1100, 1100],
            getter_connections: vec![2, 3],
            link_connections: vec![2, 2],
        };
        assert!(!report.links_carried_everything());
        let text = report.to_string();
        assert!(text.contains("each behind a link of 200 Mbit/s, 80 ms round trip"), "{text}");
        assert!(text.contains("WARNING: get 2: the links carried 600 bytes"), "{text}");
        assert!(text.contains("WARNING: run 2: the getter opened 3 connections"), "{text}");
        assert!(!text.contains("get 1:"), "{text}");
        assert!(text.contains("serving nodes 1.0 MiB, n/a"), "{text}");
    }
}
