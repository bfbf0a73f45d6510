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

//!
//! The serving nodes and the raw stream's serving end are [`serving`], the
//! links [`links`], the report [`report`].

mod links;
mod report;
mod serving;

use std::{
    io,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

pub use self::report::NetBenchReport;
use self::{
    links::{LinkCount, LinkProcess, Links, socket_addr, through},
    serving::{Placed, RawServer, Server, place_copies, start_servers, wait_listening},
};
use super::{
    CpuSpent, cpu_secs, median, peak_rss,
    proxy::Link,
    raw::{raw_server_task, raw_stream},
    reset_peak_rss,
};
use crate::{
    import::{self, ImportOptions},
    node::{Node, NodeConfig, NodeError},
    store::{Store, StoreOptions},
    testdata::Generator,
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
    let mut floor = Floor { size: size.min(FLOOR_SIZE), bytes: 0, cpu: CpuSpent::ZERO };
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
                    raw_runs.push(raw_stream(size, Some(raw_addr), false).await?);
                    raw_cpu.add_since(before, CpuSpent::now(raw_pid));
                    floor.measure(raw_addr, raw_pid).await?;
                    let raw_link = LinkCount::since(&links.counts().await?, &counted, providers..);
                    raw_link_bytes.push(raw_link.from_target);
                }
                _ => {
                    if let Some(raw_server) = &raw_server {
                        let before = CpuSpent::now(raw_pid);
                        raw_runs.push(raw_stream(size, Some(&raw_server.addr), false).await?);
                        raw_cpu.add_since(before, CpuSpent::now(raw_pid));
                        floor.measure(&raw_server.addr, raw_pid).await?;
                        raw_one_process_runs.push(raw_stream(size, None, false).await?);
                    } else {
                        raw_runs.push(raw_stream(size, None, false).await?);
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
    let floor_cpu_per_gb = raw_server.as_ref().and(floor.per_gb());
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
        floor_cpu_per_gb,
        link_cpu_per_gb,
        link_bytes,
        raw_link_bytes,
        getter_connections,
        link_connections,
    })
}

/// Bytes of each checked raw transfer (see [`Floor`]).
const FLOOR_SIZE: u64 = 256 << 20;

/// The floor of the getting node's CPU: what the receiving end of a
/// checked raw stream (`bench::raw`: SHA-256 and AES-GCM of every MiB it
/// reads) spends per GB, one transfer of `size` bytes after each raw one.
struct Floor {
    size: u64,
    bytes: u64,
    cpu: CpuSpent,
}

impl Floor {
    async fn measure(
        &mut self,
        addr: &libp2p::Multiaddr,
        raw_pid: Option<u32>,
    ) -> Result<(), NodeError> {
        let before = CpuSpent::now(raw_pid);
        raw_stream(self.size, Some(addr), true).await?;
        self.cpu.add_since(before, CpuSpent::now(raw_pid));
        self.bytes += self.size;
        Ok(())
    }

    fn per_gb(&self) -> Option<f64> {
        let gb = self.bytes as f64 / 1e9;
        self.cpu.this.filter(|_| self.bytes > 0).map(|secs| secs / gb)
    }
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
            floor_cpu_per_gb: None,
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
