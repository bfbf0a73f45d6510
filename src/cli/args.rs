//! The command line: options and subcommands (clap derive), and the parsers
//! for sizes. Nothing here touches the network or the disk.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use libp2p::Multiaddr;

use crate::{net::replicas::Accept, ticket::TicketOrCid};

/// The listen address a node uses when none is given.
pub const DEFAULT_LISTEN: &str = "/ip4/0.0.0.0/tcp/0";

/// A decentralized, end-to-end encrypted, content-addressed file store.
///
/// Without a subcommand, runs a node and reads commands (`put`, `get`, `ls`,
/// `peers`, `stat`, `help`, ...) on stdin until Ctrl-C or SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "dfs-p2p", version, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub node: NodeArgs,

    /// Never draw progress bars (they are drawn only when stderr is a terminal).
    #[arg(long, global = true)]
    pub no_progress: bool,

    /// More logging: -v logs dfs-p2p at debug level, -vv at trace and libp2p at
    /// debug. RUST_LOG overrides both.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options of a node; one-shot commands take them too.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Address to listen on; repeatable. A node listens on /ip4/0.0.0.0/tcp/0
    /// by default; one-shot commands listen only when given one.
    #[arg(long, value_name = "MULTIADDR", global = true)]
    pub listen: Vec<Multiaddr>,

    /// Address of a peer to join the network through, with or without its
    /// /p2p/<peer id> suffix; repeatable.
    #[arg(long, value_name = "MULTIADDR", value_parser = parse_bootstrap, global = true)]
    pub bootstrap: Vec<Multiaddr>,

    /// Data directory: identity, secrets and blocks [default: the platform
    /// data directory, e.g. ~/.local/share/dfs-p2p]
    #[arg(long, value_name = "DIR", env = "DFS_DATA_DIR", hide_env_values = true, global = true)]
    pub data_dir: Option<PathBuf>,

    /// Copies of each file to keep on the network, this node's included.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = parse_replicas, global = true)]
    pub replicas: usize,

    /// Space for files fetched for reading (least recently used are evicted
    /// first), e.g. 10GiB, 512MiB [default: 10GiB, or a quarter of the space
    /// free on the data directory's disk at start if that is less]
    #[arg(long, value_name = "SIZE", value_parser = parse_size, global = true)]
    pub cache_size: Option<u64>,

    /// Space for replicas this node holds for other peers, e.g. 50GiB
    /// [default: a quarter of the space free on the data directory's disk at
    /// start]
    #[arg(long, value_name = "SIZE", value_parser = parse_size, global = true)]
    pub replica_quota: Option<u64>,

    /// Who may ask this node to hold replicas: any, none, or a comma-separated
    /// list of peer ids.
    #[arg(long, value_name = "any|none|PEERID,...", default_value = "any", global = true)]
    pub accept_replicas_from: Accept,

    /// How often to publish again, in the DHT, that this node holds each
    /// file it holds whole (give or take 10 %), e.g. 12h, 30m, 90s.
    #[arg(long, value_name = "DURATION", default_value = "12h", value_parser = parse_duration, global = true)]
    pub reprovide_interval: std::time::Duration,

    /// How often to check that each file this node holds still has its
    /// copies on the network, and repair it if not (give or take 10 %),
    /// e.g. 30m, 10s.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_duration, global = true)]
    pub repair_interval: std::time::Duration,

    /// How long the copies this node's puts place on other nodes are kept
    /// unless it renews them (it does while it runs), and the longest this
    /// node keeps a copy for another whose owner stopped renewing, e.g. 30d.
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = parse_duration, global = true)]
    pub lease: std::time::Duration,

    /// Serve files over HTTP on this address, e.g. 127.0.0.1:8080: GET and
    /// HEAD /dfs/<ticket> with byte ranges, and uploads (POST /dfs, PUT
    /// /dfs/<name>) when the address is a loopback one. A ticket in a URL
    /// is a read capability.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,

    /// Accept uploads on an --http address that is not a loopback one.
    #[arg(long, requires = "http")]
    pub http_upload: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Store a file on the network; prints its ticket as the last line of stdout.
    Put {
        /// The file to store, or - to read standard input.
        #[arg(value_name = "FILE|-")]
        file: PathBuf,
        /// Fail (exit code 3, after printing the ticket) when fewer than N
        /// copies are confirmed.
        #[arg(long, value_name = "N")]
        min_copies: Option<usize>,
        /// The file name recorded with it (shown by `ls`, given by the HTTP
        /// gateway); by default the file's own, none for standard input.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Fetch a file by its ticket and write it to OUT or to stdout.
    Get {
        /// The ticket `put` printed, or the root CID of a file this node
        /// put or fetched (it keeps the keys: `ls --tickets`).
        #[arg(value_name = "TICKET|CID")]
        ticket: TicketOrCid,
        /// Where to write the file (written whole or not at all); stdout if
        /// absent or `-` (if absent, not on a terminal without --force).
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
        /// Replace OUT if it is an existing file; without OUT, print the
        /// file even on a terminal.
        #[arg(long)]
        force: bool,
        /// Only these bytes: START-END (both included), START- (to the end)
        /// or -N (the last N); only the blocks that cover them are fetched.
        #[arg(long, value_name = "START-END")]
        range: Option<crate::export::ByteRange>,
    },
    /// Show how many nodes hold a file now, how many its owner wants, and
    /// when it was last repaired.
    Status {
        /// A ticket or a root CID.
        #[arg(value_name = "TICKET|CID")]
        target: TicketOrCid,
    },
    /// List the peers that answer that they hold a file.
    Providers {
        /// A ticket or a root CID.
        #[arg(value_name = "TICKET|CID")]
        target: TicketOrCid,
    },
    /// List the files stored here (pinned and cached) with their sizes.
    Ls {
        /// The ticket of each file instead: every file this node put or
        /// fetched (a copy held for another node has no key here).
        #[arg(long)]
        tickets: bool,
    },
    /// Show this node's peer id, addresses, peers and storage use.
    Stat,
    /// Delete a file here and, for its owner, the copies other nodes keep
    /// for it (publishing a delete record so no repair brings one back).
    #[command(visible_alias = "rm")]
    Delete {
        /// A ticket or a root CID.
        #[arg(value_name = "TICKET|CID")]
        target: TicketOrCid,
    },
    /// Print this node's peer id (creating its identity if needed).
    Id,
    /// Remove the blocks no stored file needs, and say how much was freed.
    Gc,
    /// Rebuild the index of stored files from the blocks on disk (after it was
    /// damaged); every whole file found becomes this node's own.
    RebuildIndex,
    /// Measure throughput (only in a build with the `bench` feature).
    #[cfg(feature = "bench")]
    #[command(subcommand)]
    Bench(super::bench::BenchCommand),
}

/// A subcommand's help, with only the options it uses. Every node option
/// is global, so that a one-shot command takes it anywhere on its line,
/// and clap would list them all under each subcommand: the help is
/// rendered instead from the subcommand and the options it uses. None for
/// the top-level help and for commands with subcommands of their own.
pub fn subcommand_help(args: &[std::ffi::OsString]) -> Option<String> {
    use clap::CommandFactory;
    let root = Cli::command();
    let name = args
        .iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .find(|a| root.find_subcommand(a).is_some())?;
    let sub = root.find_subcommand(name)?;
    if sub.has_subcommands() {
        return None;
    }
    let name = sub.get_name().to_string();
    let used: &[&str] = match name.as_str() {
        "put" => &["listen", "bootstrap", "replicas", "lease", "no_progress"],
        "get" => &["listen", "bootstrap", "cache_size", "no_progress"],
        "status" | "providers" | "delete" | "stat" => &["listen", "bootstrap"],
        _ => &[],
    };
    let mut command = sub.clone().bin_name(format!("dfs-p2p {name}"));
    // The subcommand's own options first, then the node's it uses.
    for (order, arg) in root.get_arguments().enumerate() {
        let id = arg.get_id().as_str();
        if used.contains(&id) || ["data_dir", "verbose"].contains(&id) {
            command = command.arg(arg.clone().global(false).display_order(1000 + order));
        }
    }
    let long = args.iter().any(|a| a == "--help");
    Some(if long { command.render_long_help() } else { command.render_help() }.to_string())
}

impl Command {
    /// Whether a node running on the data directory runs this command for
    /// a one-shot ([`super::control`]).
    pub fn runs_on_a_node(&self) -> bool {
        !matches!(self, Command::RebuildIndex) && !self.is_bench()
    }

    #[cfg(feature = "bench")]
    fn is_bench(&self) -> bool {
        matches!(self, Command::Bench(_))
    }

    #[cfg(not(feature = "bench"))]
    fn is_bench(&self) -> bool {
        false
    }

    /// What a command sent to a running node checks here first, with the
    /// paths as typed and this process's terminal: the input of a put, and
    /// where a get writes.
    pub fn check_locally(&self) -> Result<(), super::Failure> {
        match self {
            Command::Put { file, .. } if file.as_os_str() != "-" => {
                super::transfer::open_input(file).map(drop)
            }
            Command::Get { output: Some(path), force, .. } if path.as_os_str() != "-" => {
                super::transfer::Output::file(path.clone(), *force).map(drop)
            }
            Command::Get { output: None, force, .. } => {
                super::transfer::Output::stdout(*force).map(drop)
            }
            _ => Ok(()),
        }
    }
}

/// Parses a size: plain bytes (`4096`), binary units (`1.5GiB`, `512MiB`,
/// `64KiB`, and the short forms `10M`, `1G`, `64k`), or decimal units
/// (`10MB` = 10,000,000 bytes). Case does not matter.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let multiplier: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(format!("`{s}` is not a size (try 4096, 512MiB, 10M, 1GiB)")),
    };
    let bad = || format!("`{s}` is not a size (try 4096, 512MiB, 10M, 1GiB)");
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(bad());
    }
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(multiplier).ok_or_else(|| format!("`{s}` is too large"));
    }
    let value = number.parse::<f64>().map_err(|_| bad())? * multiplier as f64;
    if value >= u64::MAX as f64 {
        return Err(format!("`{s}` is too large"));
    }
    Ok(value.round() as u64)
}

/// Parses a duration: a number and a unit, `s`, `m`, `h` or `d` (`90s`,
/// `1.5h`); at least a second, at most a year.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let seconds = match unit.trim().to_ascii_lowercase().as_str() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => {
            return Err(format!(
                "`{s}` is not a duration: give a number and s, m, h or d, as in 12h"
            ));
        }
    };
    let value: f64 = number.parse().map_err(|_| format!("`{s}` is not a duration: no number"))?;
    let total = value * seconds;
    if !(1.0..=365.0 * 86400.0).contains(&total) {
        return Err(format!("`{s}` is out of range: from 1s to 365d"));
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

/// Parses a bootstrap address: a host (`/ip4`, `/ip6`, `/dns`, `/dns4`,
/// `/dns6`), a TCP port other than 0, and optionally `/p2p/<peer id>`.
pub fn parse_bootstrap(s: &str) -> Result<Multiaddr, String> {
    use libp2p::multiaddr::Protocol;
    let addr: Multiaddr = s.trim().parse().map_err(|e| match s.trim().parse() {
        Ok(std::net::SocketAddr::V4(a)) => {
            format!("`{s}` is not a multiaddr: write it as /ip4/{}/tcp/{}", a.ip(), a.port())
        }
        Ok(std::net::SocketAddr::V6(a)) => {
            format!("`{s}` is not a multiaddr: write it as /ip6/{}/tcp/{}", a.ip(), a.port())
        }
        Err(_) => format!(
            "`{s}` is not a multiaddr ({e}): give one such as /ip4/127.0.0.1/tcp/3000 or \
             /dns4/node1/tcp/3000"
        ),
    })?;
    let mut parts = addr.iter();
    let host = matches!(
        parts.next(),
        Some(
            Protocol::Ip4(_)
                | Protocol::Ip6(_)
                | Protocol::Dns(_)
                | Protocol::Dns4(_)
                | Protocol::Dns6(_)
        )
    );
    let port = parts.next();
    let rest: Vec<Protocol> = parts.collect();
    let ok = host
        && matches!(port, Some(Protocol::Tcp(p)) if p != 0)
        && matches!(rest[..], [] | [Protocol::P2p(_)]);
    if !ok {
        return Err(format!(
            "`{s}` is not a bootstrap address: give a host and a TCP port, as in \
             /ip4/127.0.0.1/tcp/3000 or /dns4/node1/tcp/3000, optionally followed by /p2p/<peer id>"
        ));
    }
    Ok(addr)
}

fn parse_replicas(s: &str) -> Result<usize, String> {
    let most = crate::store::MAX_LEASE_REPLICAS;
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=usize::from(most)).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{s}` is not a number of copies from 1 to {most} (the most a holder keeps a lease for)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_parse() {
        for (s, n) in [
            ("0", 0),
            ("4096", 4096),
            ("12B", 12),
            ("1GiB", 1 << 30),
            ("512MiB", 512 << 20),
            ("512mib", 512 << 20),
            ("10M", 10 << 20),
            ("64k", 64 << 10),
            ("1.5GiB", 3 << 29),
            ("10MB", 10_000_000),
            (" 2 GiB ", 2 << 30),
            ("1T", 1 << 40),
        ] {
            assert_eq!(parse_size(s), Ok(n), "{s}");
        }
        for s in ["", "GiB", "-1", "1.2.3M", "1XB", "1e3", ".5M", "5.M", "99999999999999999999"] {
            let e = parse_size(s).unwrap_err();
            assert!(!e.contains('\n'), "{e}");
        }
        assert!(parse_size("20000000T").unwrap_err().contains("too large"));
    }

    #[test]
    fn durations_parse() {
        use std::time::Duration;
        for (s, secs) in
            [("90s", 90), ("30m", 1800), ("12h", 43200), ("1.5h", 5400), ("2d", 172800)]
        {
            assert_eq!(parse_duration(s), Ok(Duration::from_secs(secs)), "{s}");
        }
        for s in ["", "12", "h", "0s", "0.5s", "400d", "1x", "-1h", "1.2.3h"] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
    }

    #[test]
    fn options_may_follow_the_subcommand() {
        let cli = Cli::try_parse_from([
            "dfs-p2p",
            "put",
            "-",
            "--bootstrap",
            "/ip4/127.0.0.1/tcp/3000",
            "--replicas",
            "2",
            "--no-progress",
        ])
        .unwrap();
        assert_eq!(cli.node.bootstrap.len(), 1);
        assert_eq!(cli.node.replicas, 2);
        assert!(cli.no_progress);
        assert!(matches!(cli.command, Some(Command::Put { .. })));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["dfs-p2p", "--listen", "not-an-address"][..],
            &["dfs-p2p", "--replicas", "0"],
            &["dfs-p2p", "--cache-size", "lots"],
            &["dfs-p2p", "get", "xyz"],
            &["dfs-p2p", "frobnicate"],
            &["dfs-p2p", "--bootstrap", "/ip4/127.0.0.1"],
            &["dfs-p2p", "--bootstrap", "/ip4/127.0.0.1/tcp/0"],
            &["dfs-p2p", "--bootstrap", "/ip4/127.0.0.1/udp/3000"],
        ] {
            let e = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn a_host_and_port_is_answered_with_its_multiaddr() {
        let e = parse_bootstrap("127.0.0.1:7001").unwrap_err();
        assert!(e.ends_with("write it as /ip4/127.0.0.1/tcp/7001"), "{e}");
        let e = parse_bootstrap("[::1]:7001").unwrap_err();
        assert!(e.ends_with("write it as /ip6/::1/tcp/7001"), "{e}");
        let e = parse_bootstrap("node1").unwrap_err();
        assert!(e.contains("such as /ip4/127.0.0.1/tcp/3000"), "{e}");
    }
}
