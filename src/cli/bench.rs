//! `dfs-p2p bench`, only with the Cargo feature `bench`: its subcommands and
//! their options, and what runs them (the benchmarks themselves are
//! [`crate::bench`]). Each result goes to stdout, progress to stderr.

use std::path::PathBuf;

use clap::Subcommand;

use super::{
    Failure,
    args::{parse_duration, parse_size},
    output,
};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Import and export through the local store only.
    Store {
        /// Bytes to import, e.g. 1GiB.
        #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_size)]
        size: u64,
        /// Chunk size, e.g. 1MiB.
        #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_chunk_size)]
        chunk_size: usize,
        /// Directory to benchmark in [default: a temporary directory, removed after]
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Get a file from nodes on this machine, against one raw libp2p stream:
    /// over loopback, or with --rtt, --rate or --providers through links
    /// that delay and pace what crosses them.
    Net {
        /// Bytes to transfer, e.g. 256MiB.
        #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
        size: u64,
        /// Round trip of each link in milliseconds (half of it each way).
        #[arg(long, value_name = "MS", value_parser = parse_rtt)]
        rtt: Option<f64>,
        /// Rate of each link, each way, in Mbit/s [default: unlimited]
        #[arg(long, value_name = "MBIT", value_parser = parse_rate)]
        rate: Option<f64>,
        /// Serving nodes, each holding the file behind a link of its own
        /// [default: 1]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=32))]
        providers: Option<u32>,
    },
    /// Lookups among many nodes in this process, before and after churn.
    Dht {
        /// Nodes in the network, the bootstrap node included.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(2..=5000))]
        nodes: u32,
        /// Files put (4 KiB each, 3 copies).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        files: u32,
        /// Lookups in each phase [default: 10 per file, at least 1,000]
        #[arg(long)]
        lookups: Option<u32>,
        /// Per cent of the nodes stopped without warning, then replaced.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=90))]
        churn: u32,
        /// Steps the churn is stopped in, each followed by repair (1: all
        /// at once, the lookups right after).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
        churn_steps: u32,
        /// How often the nodes check their files' copies and repair them
        /// (each node's --repair-interval), e.g. 10s.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
        repair: std::time::Duration,
        /// Seed of the nodes' keys, the files, and every random choice.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Loopback TCP instead of the in-process memory transport.
        #[arg(long)]
        tcp: bool,
        /// Where the table (dht-N.md) and the plot (dht-N.svg) go.
        #[arg(long, value_name = "DIR", default_value = "bench-dht")]
        out: PathBuf,
    },
    /// The serving end of `bench net`'s raw stream (started by it).
    #[command(hide = true)]
    RawServe,
    /// The links of `bench net` (started by it).
    #[command(hide = true)]
    LinkProxy,
}

impl BenchCommand {
    /// Whether it runs many nodes in this process: a thousand nodes would
    /// fill the terminal with each one's put and replica news; so would the
    /// serving nodes `bench net` places its file on.
    pub fn runs_many_nodes(&self) -> bool {
        matches!(self, BenchCommand::Dht { .. } | BenchCommand::Net { providers: Some(2..), .. })
    }
}

/// Parses a round trip in milliseconds: from 0 to 10,000.
fn parse_rtt(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(ms) if (0.0..=10_000.0).contains(&ms) => Ok(ms),
        _ => Err(format!("`{s}` is not a round trip from 0 to 10000 ms")),
    }
}

/// Parses a rate in Mbit/s: more than 0, at most 1,000,000.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(mbit) if (0.001..=1_000_000.0).contains(&mbit) => Ok(mbit),
        _ => Err(format!("`{s}` is not a rate from 0.001 to 1000000 Mbit/s")),
    }
}

fn parse_chunk_size(s: &str) -> Result<usize, String> {
    use crate::import::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
    let size = parse_size(s)?;
    usize::try_from(size)
        .ok()
        .filter(|n| (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(n))
        .ok_or_else(|| format!("the chunk size must be between 64KiB and 4MiB, not `{s}`"))
}

/// Runs a benchmark and prints its report.
pub async fn run(bench: BenchCommand) -> Result<(), Failure> {
    match bench {
        BenchCommand::Store { size, chunk_size, dir } => {
            let scratch = ScratchDir::new(dir)?;
            let path = scratch.path.clone();
            let report = crate::store::spawn_blocking(move || {
                crate::bench::store::bench_store(size, chunk_size, &path)
            })
            .await
            .map_err(|e| Failure::Error(format!("the benchmark stopped: {e}")))??;
            output::result(&format!("{report}\n"));
        }
        BenchCommand::Net { size, rtt, rate, providers } => {
            use crate::bench::{net, proxy::Link};
            let scratch = ScratchDir::new(None)?;
            // Any link option puts each serving node behind a link.
            let link = (rtt.is_some() || rate.is_some() || providers.is_some())
                .then(|| Link::from_rtt_and_rate(rtt.unwrap_or(0.0), rate));
            let providers = providers.map_or(1, |n| n as usize);
            let options = net::NetBenchOptions { size, providers, link };
            let report = net::bench_net(options, &scratch.path).await?;
            output::result(&format!("{report}\n"));
        }
        BenchCommand::Dht { nodes, files, lookups, churn, churn_steps, repair, seed, tcp, out } => {
            use crate::bench::dht;
            let scratch = ScratchDir::new(None)?;
            let options = dht::DhtOptions {
                nodes: nodes as usize,
                files: files as usize,
                lookups: lookups.map_or((files as usize * 10).max(1000), |l| l as usize),
                churn,
                churn_steps: churn_steps as usize,
                repair_interval: repair,
                seed,
                wire: if tcp {
                    crate::net::behaviour::Wire::Tcp
                } else {
                    crate::net::behaviour::Wire::Memory
                },
                dir: scratch.path.clone(),
            };
            let started = std::time::Instant::now();
            let say = move |line: String| {
                output::status(&format!("[{:5.1} s] {line}", started.elapsed().as_secs_f64()))
            };
            let report = dht::bench_dht(options, say).await.map_err(Failure::Error)?;
            let (table, plot) = dht::write_report(&report, &out).map_err(Failure::Error)?;
            output::result(&format!(
                "{report}\n\nwrote {} and {}\n",
                table.display(),
                plot.display()
            ));
        }
        BenchCommand::RawServe => crate::bench::raw::raw_serve().await?,
        BenchCommand::LinkProxy => crate::bench::proxy::serve_links()
            .await
            .map_err(|e| Failure::Error(format!("the links stopped: {e}")))?,
    }
    Ok(())
}

/// A benchmark's directory: the one given, or a temporary one removed after.
struct ScratchDir {
    path: PathBuf,
    remove: bool,
}

impl ScratchDir {
    fn new(dir: Option<PathBuf>) -> Result<ScratchDir, Failure> {
        let (path, remove) = match dir {
            Some(dir) => (dir, false),
            None => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let name = format!("dfs-p2p-bench-{}-{nanos}", std::process::id());
                (std::env::temp_dir().join(name), true)
            }
        };
        std::fs::create_dir_all(&path)
            .map_err(|e| Failure::io(format!("cannot create {}", path.display()), &e))?;
        Ok(ScratchDir { path, remove })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::args::{Cli, Command};

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["dfs-p2p", "bench", "store", "--chunk-size", "1k"][..],
            &["dfs-p2p", "bench", "net", "--rtt", "-1"],
            &["dfs-p2p", "bench", "net", "--rate", "0"],
            &["dfs-p2p", "bench", "net", "--providers", "0"],
        ] {
            let e = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn many_nodes_are_the_dht_and_more_than_one_provider() {
        let many = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Some(Command::Bench(bench)) => bench.runs_many_nodes(),
            other => panic!("{other:?}"),
        };
        assert!(many(&["dfs-p2p", "bench", "dht"]));
        assert!(many(&["dfs-p2p", "bench", "net", "--providers", "2"]));
        assert!(!many(&["dfs-p2p", "bench", "net", "--providers", "1"]));
        assert!(!many(&["dfs-p2p", "bench", "store"]));
    }
}
