//! The network benchmark behind `dfs-p2p bench net`: a get of one file from
//! one peer over loopback, against a raw libp2p stream over the same
//! transport (`raw`), with the peak memory of each node.
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

use std::{
    fmt, io,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use libp2p::Multiaddr;

use super::{CpuSpent, median, peak_rss, raw::raw_stream, reset_peak_rss};
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

/// What `bench_net` measured. Throughputs are in bytes per second.
#[derive(Debug, Clone)]
pub struct NetBenchReport {
    pub size: u64,
    /// Throughput of each get.
    pub get_runs: Vec<f64>,
    pub get_median: f64,
    /// Throughput of each raw-stream transfer.
    pub raw_runs: Vec<f64>,
    pub raw_median: f64,
    /// The raw stream with both ends in this process, when the baseline
    /// ran between two processes (for reference).
    pub raw_one_process_median: Option<f64>,
    /// `get_median / raw_median`.
    pub ratio: f64,
    /// Peak RSS of the serving node, if it ran in its own process.
    pub server_peak_rss: Option<u64>,
    /// Peak RSS of this process during the gets (the getter node, plus the
    /// serving node when `server_peak_rss` is `None`).
    pub getter_peak_rss: Option<u64>,
    /// How the serving node ran.
    pub server_in_child: bool,
    /// CPU seconds per GB got: the serving child's, and this process's.
    pub server_cpu_per_gb: Option<f64>,
    pub getter_cpu_per_gb: Option<f64>,
    /// CPU seconds per GB streamed by the two-process raw baseline: its
    /// serving child's, and this process's (the receiving end).
    pub raw_cpu_per_gb: Option<(f64, f64)>,
}

impl fmt::Display for NetBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        if let Some((serving, receiving)) = self.raw_cpu_per_gb {
            writeln!(
                f,
                "              raw stream: serving end {}, receiving end {}",
                cpu(Some(serving)),
                cpu(Some(receiving))
            )?;
        }
        if self.server_in_child {
            writeln!(
                f,
                "  peak RSS:   serving node {}, getting node {}",
                mib(self.server_peak_rss),
                mib(self.getter_peak_rss)
            )
        } else {
            writeln!(f, "  peak RSS:   {} (both nodes in one process)", mib(self.getter_peak_rss))
        }
    }
}

/// Runs the benchmark with a file of `size` bytes, using `dir` for data.
pub async fn bench_net(size: u64, dir: &Path) -> Result<NetBenchReport, NodeError> {
    let server_dir = dir.join("server");
    let client_dirs: Vec<PathBuf> = (0..RUNS).map(|i| dir.join(format!("getter-{i}"))).collect();

    // The file, imported where the serving node will find it.
    let (ticket, server_peer) = {
        let server_dir = server_dir.clone();
        tokio::task::spawn_blocking(move || -> Result<_, NodeError> {
            let store = Store::open(&server_dir, StoreOptions::default())?;
            let options = ImportOptions { name: Some("bench".into()), ..Default::default() };
            let imported = import::import(&store, Generator::new(size), &options, None)?;
            Ok((imported.ticket, store.peer_id()))
        })
        .await
        .map_err(|_| NodeError::Stopped)??
    };

    let port = free_port()?;
    let listen: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("valid address");
    let mut server_addr = listen.clone();
    server_addr.push(libp2p::multiaddr::Protocol::P2p(server_peer));

    let exe = std::env::current_exe().ok();
    let in_child = exe
        .as_ref()
        .and_then(|e| e.file_name())
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("dfs-p2p"));
    let exe = exe.filter(|_| in_child);
    let mut server = if let Some(exe) = &exe {
        Server::Child(spawn_server(exe, &listen, &server_dir)?)
    } else {
        let mut config = NodeConfig::new(server_dir.clone());
        config.listen = vec![listen.clone()];
        config.replicas = 1;
        Server::InProcess(Node::start(config).await?)
    };

    let child_pid = match &server {
        Server::Child(child) => Some(child.id()),
        Server::InProcess(_) => None,
    };
    // Each get is paired with a raw-stream transfer right before it, so the
    // two see the same state of the machine (a VM's speed drifts within a
    // minute). CPU and peak memory are counted around the gets only.
    // The baseline's two ends run like the two nodes: in two processes when
    // the serving node is a child, in this one otherwise.
    let raw_server = match (&mut server, &exe) {
        (Server::Child(child), Some(exe)) => match RawServer::start(exe).await {
            Ok(raw) => Some(raw),
            Err(e) => {
                stop_child(child);
                return Err(e);
            }
        },
        _ => None,
    };
    // CPU seconds of each node during the gets, and of each end of the
    // two-process raw stream during its transfers.
    let (mut cpu, mut raw_cpu) = (CpuSpent::ZERO, CpuSpent::ZERO);
    let mut getter_peak_rss: Option<u64> = None;
    let (mut raw_runs, mut raw_one_process_runs) = (Vec::new(), Vec::new());
    let result = async {
        let mut get_runs = Vec::new();
        for client_dir in &client_dirs {
            if let Some(raw_server) = &raw_server {
                let raw_pid = Some(raw_server.child.id());
                let before = CpuSpent::now(raw_pid);
                raw_runs.push(raw_stream(size, Some(&raw_server.addr)).await?);
                raw_cpu.add_since(before, CpuSpent::now(raw_pid));
                raw_one_process_runs.push(raw_stream(size, None).await?);
            } else {
                raw_runs.push(raw_stream(size, None).await?);
            }
            // The raw swarms are gone; hand what they freed back to the
            // kernel, so the getter's peak RSS is the getter's own.
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe {
                libc::malloc_trim(0);
            }
            let mut config = NodeConfig::new(client_dir.clone());
            config.listen = Vec::new();
            config.bootstrap = vec![server_addr.clone()];
            config.replicas = 1;
            reset_peak_rss();
            let client = Node::start(config).await?;
            if client.wait_for_peers(1, SERVER_START).await == 0 {
                client.shutdown().await;
                return Err(NodeError::Transport("the serving node did not come up".into()));
            }
            let before = CpuSpent::now(child_pid);
            let started = Instant::now();
            let report = client.get(ticket.clone(), Box::new(io::sink()), None).await?;
            let secs = started.elapsed().as_secs_f64();
            cpu.add_since(before, CpuSpent::now(child_pid));
            if report.size != size {
                return Err(NodeError::Transport(format!("got {} bytes of {size}", report.size)));
            }
            get_runs.push(size as f64 / secs);
            getter_peak_rss = getter_peak_rss.max(peak_rss(None));
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
    for client_dir in &client_dirs {
        let _ = std::fs::remove_dir_all(client_dir);
    }

    let server_peak_rss = match &mut server {
        Server::Child(child) => {
            let rss = peak_rss(Some(child.id()));
            stop_child(child);
            rss
        }
        Server::InProcess(_) => None,
    };
    if let Server::InProcess(node) = server {
        node.shutdown().await;
    }
    if let Some(mut raw_server) = raw_server {
        stop_child(&mut raw_server.child);
    }
    let get_runs = result?;

    let get_median = median(&get_runs);
    let raw_median = median(&raw_runs);
    Ok(NetBenchReport {
        size,
        get_runs,
        get_median,
        raw_runs,
        raw_median,
        raw_one_process_median: (!raw_one_process_runs.is_empty())
            .then(|| median(&raw_one_process_runs)),
        ratio: get_median / raw_median,
        server_peak_rss,
        getter_peak_rss,
        server_in_child: in_child,
        server_cpu_per_gb,
        getter_cpu_per_gb,
        raw_cpu_per_gb,
    })
}

enum Server {
    Child(Child),
    InProcess(Node),
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
    command.stdin(Stdio::piped()).stderr(Stdio::null());
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
        let read = tokio::task::spawn_blocking(move || {
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
        let report = bench_net(4 * 1024 * 1024, dir.path()).await.unwrap();
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
        let report = bench_net(size, dir.path()).await.unwrap();
        println!("{report}");
    }
}
