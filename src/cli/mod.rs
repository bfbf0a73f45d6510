//! The `dfs-p2p` command. Owns the process side of things: parsing the
//! command line ([`args`]), logging, the tokio runtime, signals, exit codes,
//! and the node's lifetime; the prompt is [`repl`], what is printed is
//! [`output`]. All real work goes through [`crate::node::Node`].
//!
//! Exit codes: 0 success, 1 failure, 2 usage error, 130 interrupted. A node
//! stopped by Ctrl-C or SIGTERM shuts down cleanly and exits 0; a second
//! signal during shutdown exits 130 at once.

pub mod args;
#[cfg(feature = "bench")]
pub mod bench;
pub mod commands;
pub mod control;
pub mod output;
pub mod repl;
pub mod transfer;

use std::{
    fmt,
    io::{self, IsTerminal},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::Parser;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing_subscriber::EnvFilter;

use self::{
    args::{Cli, Command, NodeArgs},
    output::Console,
    transfer::Output,
};
use crate::node::{Node, NodeConfig, NodeError};

/// How long a one-shot command waits for its bootstrap peers.
const PEER_WAIT: Duration = Duration::from_secs(10);
/// How long a clean shutdown may take before the process exits anyway.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// Why a command did not succeed. Its message is one line.
#[derive(Debug)]
pub enum Failure {
    Error(String),
    /// A put that placed fewer copies than `--min-copies` asked for.
    TooFewCopies(String),
    Interrupted,
    /// The reader of our output went away (`get T | head`): like any
    /// filter in a pipeline, stop quietly with the status SIGPIPE gives.
    OutputClosed,
    /// A command the running node ran for us ([`control`]) failed with
    /// this exit code; what it said is printed already.
    Reported(u8),
}

impl Failure {
    /// An IO error with what was being done; the OS message without its
    /// Debug form ("No such file or directory (os error 2)" reads as
    /// "no such file or directory").
    pub fn io(context: String, e: &io::Error) -> Failure {
        let reason = match e.kind() {
            io::ErrorKind::NotFound => "no such file or directory".to_string(),
            io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        Failure::Error(format!("{context}: {reason}"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Error(message) | Failure::TooFewCopies(message) => f.write_str(message),
            Failure::Interrupted => f.write_str("interrupted"),
            Failure::OutputClosed => f.write_str("the output was closed"),
            Failure::Reported(code) => write!(f, "failed with exit code {code}"),
        }
    }
}

impl From<NodeError> for Failure {
    fn from(e: NodeError) -> Failure {
        if let NodeError::Store(crate::Error::Cancelled) = &e {
            return Failure::Interrupted;
        }
        if let NodeError::Store(crate::Error::Io { source, .. }) = &e
            && source.kind() == io::ErrorKind::BrokenPipe
        {
            return Failure::OutputClosed;
        }
        let hint = match &e {
            NodeError::Store(crate::Error::InUse { .. }) => {
                " (stop that node, or give this one its own --data-dir)"
            }
            _ => "",
        };
        Failure::Error(format!("{e}{hint}"))
    }
}

impl From<crate::Error> for Failure {
    fn from(e: crate::Error) -> Failure {
        NodeError::Store(e).into()
    }
}

/// Settings the prompt and the one-shot commands share.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    /// Whether progress bars may be drawn (stderr must also be a terminal).
    pub progress: bool,
}

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    install_panic_hook();
    keep_large_allocations_on_the_heap();
    raise_file_limit();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // Many nodes in one process log less (`BenchCommand::runs_many_nodes`).
    #[cfg(feature = "bench")]
    let many_nodes = matches!(&cli.command, Some(Command::Bench(bench)) if bench.runs_many_nodes());
    #[cfg(not(feature = "bench"))]
    let many_nodes = false;
    init_logging(cli.verbose, many_nodes, cli.command.is_some());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            output::print_error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Reading stdin blocks a thread that never finishes on its own: do not
    // wait for it (the store is already flushed by then).
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Interrupted) => {
            output::status("interrupted");
            ExitCode::from(130)
        }
        Err(Failure::OutputClosed) => ExitCode::from(141),
        Err(Failure::Reported(code)) => ExitCode::from(code),
        Err(e @ Failure::TooFewCopies(_)) => {
            output::print_error(&e.to_string());
            ExitCode::from(3)
        }
        Err(e) => {
            output::print_error(&e.to_string());
            ExitCode::FAILURE
        }
    }
}

/// A bug should still read as one line (the default hook prints several);
/// `RUST_BACKTRACE` set keeps the default report for debugging.
fn install_panic_hook() {
    if std::env::var_os("RUST_BACKTRACE").is_some() {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("unknown cause");
        let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line()));
        output::print_error(&format!(
            "internal error{}: {message} (a bug: please report it)",
            place.unwrap_or_default()
        ));
    }));
}

/// Help and version go to stdout and succeed; anything else is a usage
/// error in one line (clap's message without its usage block), exit code 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let rendered = e.render().to_string();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            match args::subcommand_help(&std::env::args_os().collect::<Vec<_>>()) {
                Some(help) if e.kind() == ErrorKind::DisplayHelp => output::result(&help),
                _ => drop(e.print()),
            }
            return ExitCode::SUCCESS;
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            output::print_error(&missing_subcommand(&rendered));
        }
        ErrorKind::UnknownArgument
            if matches!(
                e.get(clap::error::ContextKind::InvalidArg),
                Some(clap::error::ContextValue::String(arg))
                    if arg == "--http" || arg == "--http-upload"
            ) =>
        {
            output::print_error(
                "--http serves a running node's HTTP gateway: give it to the node (dfs-p2p \
                 --http 127.0.0.1:8080 ...), not to a one-shot command",
            );
        }
        _ => {
            // "error: <message>" possibly continued on indented lines, then
            // a blank line, the usage and tips.
            let message: Vec<&str> =
                rendered.lines().take_while(|l| !l.trim().is_empty()).map(|l| l.trim()).collect();
            let message = message.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            let tip = rendered.lines().find_map(|l| l.trim().strip_prefix("tip: "));
            match tip {
                Some(tip) => output::print_error(&format!("{message} ({tip})")),
                None => output::print_error(&format!("{message} (see dfs-p2p --help)")),
            }
        }
    }
    ExitCode::from(2)
}

/// "`dfs-p2p bench` needs one of: store, net" from the help clap rendered.
fn missing_subcommand(help: &str) -> String {
    let usage = help.lines().find_map(|l| l.strip_prefix("Usage: ")).unwrap_or("dfs-p2p");
    let command: Vec<&str> =
        usage.split_whitespace().take_while(|w| !w.starts_with(['[', '<'])).collect();
    let command = command.join(" ");
    let subcommands: Vec<&str> = help
        .lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    format!("`{command}` needs one of: {} (see {command} --help)", subcommands.join(", "))
}

/// Logs go to stderr. A running node's carry a timestamp unless stderr is
/// a terminal (files, docker, journald want one); a one-shot command's
/// only with `-v` (its lines belong to one short run). Colour on a
/// terminal.
fn init_logging(verbose: u8, many_nodes: bool, one_shot: bool) {
    let default = match verbose {
        // Nodes stopped at once close many connections whose other end is
        // gone already: libp2p warns of each.
        0 if many_nodes => "warn,libp2p_kad=error,libp2p_swarm=error,yamux=error",
        // A lone first node is no fault: kad's "no known peers" is noise.
        0 => "warn,dfs_p2p=info,libp2p_kad=error",
        1 => "warn,dfs_p2p=debug",
        _ => "info,dfs_p2p=trace,libp2p=debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let terminal = io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(output::LogWriter)
        .with_ansi(terminal)
        .with_target(verbose > 0);
    let timestamps = if one_shot { verbose > 0 } else { !terminal };
    let _ = if timestamps { builder.try_init() } else { builder.without_time().try_init() };
}

/// SIGINT (Ctrl-C) and SIGTERM, registered before anything else starts so
/// neither can kill the process without a clean shutdown.
pub struct Signals {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
}

impl Signals {
    fn new() -> Signals {
        Signals {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
        }
    }

    /// Waits for the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        self.next().await;
    }

    /// Waits for the next SIGINT (`true`) or SIGTERM (`false`).
    pub async fn next(&mut self) -> bool {
        async fn next(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.interrupt) => true,
            _ = next(&mut self.terminate) => false,
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let ctx = Ctx { progress: !cli.no_progress };
    // A node handles its signals itself: they stop it cleanly.
    let Some(command) = cli.command else { return run_node(&cli.node, ctx).await };
    let mut signals = Signals::new();
    let args = &cli.node;
    if command.runs_on_a_node()
        && let Some(stream) = control::connect(&data_dir(args)?).await
    {
        // A node runs on the data directory: it runs the command.
        command.check_locally()?;
        let stdin = matches!(&command, Command::Put { file, .. } if file.as_os_str() == "-");
        return control::call(stream, stdin, &mut signals).await;
    }
    let cancel = crate::node::Cancel::default();
    let work = async {
        match command {
            Command::Put { file, min_copies, name } => {
                put(args, ctx, &file, min_copies, name, cancel.clone()).await
            }
            Command::Get { ticket, output, force, range } => {
                get(args, ctx, ticket, output, force, range, cancel.clone()).await
            }
            Command::Status { target } => status(args, target).await,
            Command::Providers { target } => providers(args, target).await,
            Command::Ls { tickets } => ls(args, tickets).await,
            Command::Stat => stat(args).await,
            Command::Delete { target } => delete(args, target).await,
            Command::Id => id(args).await,
            Command::Gc => gc(args).await,
            Command::RebuildIndex => rebuild_index(args).await,
            #[cfg(feature = "bench")]
            Command::Bench(bench) => bench::run(bench).await,
        }
    };
    tokio::pin!(work);
    tokio::select! {
        result = &mut work => return result,
        _ = signals.recv() => {}
    }
    // A put or get stops at once and tidies up (a put unpins and withdraws
    // what it placed); a second signal does not wait for that.
    cancel.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::select! {
        _ = tokio::time::timeout(CANCEL_WAIT, &mut work) => {}
        _ = signals.recv() => {}
    }
    Err(Failure::Interrupted)
}

/// How long a cancelled command may take to tidy up.
pub const CANCEL_WAIT: Duration = Duration::from_secs(15);

fn data_dir(args: &NodeArgs) -> Result<PathBuf, Failure> {
    if let Some(dir) = &args.data_dir {
        return Ok(dir.clone());
    }
    dirs::data_dir().map(|d| d.join("dfs-p2p")).ok_or_else(|| {
        Failure::Error(
            "cannot find this platform's data directory: pass --data-dir or set DFS_DATA_DIR"
                .into(),
        )
    })
}

fn node_config(args: &NodeArgs, listen_by_default: bool) -> Result<NodeConfig, Failure> {
    let mut config = NodeConfig::new(data_dir(args)?);
    config.listen = args.listen.clone();
    if config.listen.is_empty() && listen_by_default {
        config.listen = vec![args::DEFAULT_LISTEN.parse().expect("valid default address")];
    }
    config.bootstrap = args.bootstrap.clone();
    config.replicas = args.replicas;
    config.cache_size =
        args.cache_size.unwrap_or_else(|| crate::node::default_cache_size(&config.data_dir));
    config.replica_quota = args.replica_quota;
    config.accept_replicas = args.accept_replicas_from.clone();
    config.reprovide_interval = args.reprovide_interval;
    config.repair_interval = args.repair_interval;
    config.lease = args.lease;
    Ok(config)
}

/// Runs a node: prints its identity and addresses, reads commands until
/// `quit`, and keeps serving after stdin ends until Ctrl-C or SIGTERM.
async fn run_node(args: &NodeArgs, ctx: Ctx) -> Result<(), Failure> {
    let mut signals = Signals::new();
    let config = node_config(args, true)?;
    let node = tokio::select! {
        node = Node::start(config) => node?,
        _ = signals.recv() => return Err(Failure::Interrupted),
    };
    // Up before the node says it is: a one-shot run after that finds it.
    let control = match control::serve(node.clone(), node.store().dir()).await {
        Ok(socket) => Some(socket),
        Err(e) => {
            output::status(&format!(
                "warning: no control socket in the data directory ({e}): one-shot commands \
                 on it will find it in use"
            ));
            None
        }
    };
    output::status(&format!("peer id: {}", node.peer_id()));
    let mut shown = std::collections::HashSet::new();
    for addr in node.listen_addrs().await {
        output::status(&format!("listening on {addr}"));
        shown.insert(addr);
    }
    // A listener on 0.0.0.0 learns its interfaces' addresses one by one:
    // the ones that come after the first are said as they come (a
    // container's reachable address may follow its loopback one).
    let mut addrs = node.net().listen_addrs_watch();
    tokio::spawn(async move {
        while addrs.changed().await.is_ok() {
            let new: Vec<_> =
                addrs.borrow_and_update().iter().filter(|a| !shown.contains(*a)).cloned().collect();
            for addr in new {
                output::status(&format!("listening on {addr}"));
                shown.insert(addr);
            }
        }
    });
    if let Some(addr) = args.http {
        let listener = match crate::gateway::bind(addr).await {
            Ok(listener) => listener,
            Err(e) => {
                node.shutdown().await;
                return Err(Failure::Error(e));
            }
        };
        let bound = listener.local_addr().unwrap_or(addr);
        let loopback = crate::gateway::is_loopback(&bound);
        if !loopback {
            output::status(&format!(
                "warning: the HTTP gateway on {bound} is reachable from other machines, and a \
                 ticket in a URL lets whoever sees it read the file{}",
                if args.http_upload { "; uploads are on" } else { "; uploads are off" }
            ));
        }
        output::status(&format!("http gateway on http://{bound}/dfs/<ticket>"));
        tokio::spawn(crate::gateway::serve(node.clone(), listener, loopback || args.http_upload));
    }
    let interactive = io::stdin().is_terminal();
    if interactive {
        output::status("type `help` for the commands, `quit` or Ctrl-C to stop");
    }

    if interactive && let Ok(mut resized) = signal(SignalKind::window_change()) {
        // `docker attach` resizes the terminal it attaches: the prompt
        // shown before is drawn again there.
        tokio::spawn(async move {
            while resized.recv().await.is_some() {
                output::redraw_prompt();
            }
        });
    }
    let interrupts = repl::Interrupts::default();
    let mut prompt = tokio::spawn(repl::run(node.clone(), ctx, interactive, interrupts.clone()));
    enum Stop {
        Quit,
        Signal,
        InputEnded,
    }
    // At a terminal, Ctrl-C cancels the command running; with none
    // running (or without a terminal) it stops the node, as SIGTERM does.
    let stop = loop {
        tokio::select! {
            end = &mut prompt => break match end {
                Ok(repl::End::Quit) => Stop::Quit,
                Ok(repl::End::Eof) => Stop::InputEnded,
                Err(e) => {
                    output::print_error(&format!("the command prompt stopped: {e}"));
                    Stop::InputEnded
                }
            },
            interrupt = signals.next() => {
                if interactive && interrupt && interrupts.cancel_running() {
                    continue;
                }
                break Stop::Signal;
            }
        }
    };
    if let Stop::InputEnded = stop {
        output::status("end of input: still serving until Ctrl-C or SIGTERM");
        signals.recv().await;
    }
    prompt.abort();
    drop(control);

    output::status("shutting down");
    tokio::spawn(async move {
        signals.recv().await;
        output::status("interrupted during shutdown");
        std::process::exit(130);
    });
    if tokio::time::timeout(SHUTDOWN_WAIT, node.shutdown()).await.is_err() {
        return Err(Failure::Error("the node did not shut down in time".into()));
    }
    Ok(())
}

/// Starts a node for a one-shot command and waits (briefly) for its
/// bootstrap peers: until enough are connected, or every bootstrap
/// address has failed, or [`PEER_WAIT`]. When none is reachable, says why
/// for each, and fails if `need_peers`.
async fn oneshot_node(args: &NodeArgs, need_peers: bool) -> Result<Node, Failure> {
    let node = Node::start(node_config(args, false)?).await?;
    join_bootstrap(args, node, need_peers).await
}

/// Waits for a one-shot node's bootstrap peers (see [`oneshot_node`]).
async fn join_bootstrap(args: &NodeArgs, node: Node, need_peers: bool) -> Result<Node, Failure> {
    if args.bootstrap.is_empty() {
        return Ok(node);
    }
    let want = args.bootstrap.len().min(args.replicas.saturating_sub(1)).max(1);
    let states = node.net().wait_for_bootstrap(want, PEER_WAIT).await;
    if node.net().connected_now() > 0 {
        return Ok(node);
    }
    let reasons: Vec<String> = states
        .iter()
        .map(|b| {
            let why = b.error.as_deref().unwrap_or("no connection yet");
            format!("{}: {why}", b.addr)
        })
        .collect();
    if need_peers {
        node.shutdown().await;
        return Err(Failure::Error(format!(
            "cannot reach the bootstrap peer{} {}",
            if reasons.len() == 1 { "" } else { "s" },
            reasons.join("; ")
        )));
    }
    for reason in reasons {
        output::status(&format!("cannot reach bootstrap {reason}"));
    }
    Ok(node)
}

/// A one-shot node that only asks the network: on the data directory if
/// it is free, else (a node runs on it) on a temporary one, removed after
/// (returned with the node).
async fn query_node(args: &NodeArgs) -> Result<(Node, Option<PathBuf>), Failure> {
    let config = node_config(args, false)?;
    // A directory with no node in it stays so, and one a node holds is
    // that node's: the query then runs on a temporary directory.
    let temporary = |mut config: NodeConfig| async move {
        let dir = std::env::temp_dir().join(format!(
            "dfs-p2p-query-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        config.data_dir = dir.clone();
        Ok::<_, Failure>((Node::start(config).await?, Some(dir)))
    };
    let (node, temporary) = if !config.data_dir.join("identity.key").is_file() {
        temporary(config).await?
    } else {
        match Node::start(config.clone()).await {
            Err(crate::node::NodeError::Store(crate::Error::InUse { .. })) => {
                temporary(config).await?
            }
            started => (started?, None),
        }
    };
    match join_bootstrap(args, node, false).await {
        Ok(node) => Ok((node, temporary)),
        Err(e) => {
            if let Some(dir) = temporary {
                let _ = std::fs::remove_dir_all(dir);
            }
            Err(e)
        }
    }
}

async fn end_query(node: Node, temporary: Option<PathBuf>) {
    node.shutdown().await;
    if let Some(dir) = temporary {
        let _ = std::fs::remove_dir_all(dir);
    }
}

async fn status(args: &NodeArgs, target: crate::ticket::TicketOrCid) -> Result<(), Failure> {
    let (node, temporary) = query_node(args).await?;
    let result =
        commands::status(&node, &Console::default(), target, Some(commands::NO_PEER)).await;
    end_query(node, temporary).await;
    result
}

async fn providers(args: &NodeArgs, target: crate::ticket::TicketOrCid) -> Result<(), Failure> {
    let (node, temporary) = query_node(args).await?;
    let result = commands::providers(&node, &Console::default(), target).await;
    end_query(node, temporary).await;
    result
}

async fn ls(args: &NodeArgs, tickets: bool) -> Result<(), Failure> {
    let dir = existing_data_dir(args)?;
    let roots = crate::store::run_blocking("listing the files", move || {
        Ok(crate::store::Store::open(dir, crate::store::StoreOptions::default())?.roots())
    })
    .await?;
    output::result(&if tickets {
        output::tickets_table(&roots)
    } else {
        output::roots_table(&roots)
    });
    Ok(())
}

async fn stat(args: &NodeArgs) -> Result<(), Failure> {
    existing_data_dir(args)?;
    let node = oneshot_node(args, false).await?;
    let result = commands::stat(&node, &Console::default()).await;
    node.shutdown().await;
    result
}

async fn delete(args: &NodeArgs, target: crate::ticket::TicketOrCid) -> Result<(), Failure> {
    existing_data_dir(args)?;
    let node = oneshot_node(args, false).await?;
    let result = commands::delete(&node, &Console::default(), target).await;
    node.shutdown().await;
    result
}

async fn put(
    args: &NodeArgs,
    ctx: Ctx,
    file: &std::path::Path,
    min_copies: Option<usize>,
    name: Option<String>,
    cancel: crate::node::Cancel,
) -> Result<(), Failure> {
    let input = transfer::open_input(file)?.named(name);
    let node = oneshot_node(args, false).await?;
    let console = Console::default();
    let no_peer = args.bootstrap.is_empty().then_some(commands::NO_PEER);
    let result =
        commands::put(&node, &console, input, min_copies, ctx.progress, Some(cancel), no_peer)
            .await;
    node.shutdown().await;
    result
}

async fn get(
    args: &NodeArgs,
    ctx: Ctx,
    ticket: crate::ticket::TicketOrCid,
    out: Option<PathBuf>,
    force: bool,
    range: Option<crate::export::ByteRange>,
    cancel: crate::node::Cancel,
) -> Result<(), Failure> {
    let (out, shown) = match out {
        Some(path) if path != std::path::Path::new("-") => {
            (Output::file(path.clone(), force)?, Some(path))
        }
        Some(_) => (Output::Stdout, None),
        None => (Output::stdout(force)?, None),
    };
    let node = oneshot_node(args, true).await?;
    let get = (ticket, out, shown.as_deref());
    let result =
        commands::get(&node, &Console::default(), get, range, ctx.progress, Some(cancel)).await;
    let peers = node.net().connected_now();
    node.shutdown().await;
    match result {
        Err(Failure::Error(message)) if peers == 0 && message.starts_with("no provider") => {
            Err(Failure::Error(format!("{message}{}", commands::NO_PEER)))
        }
        result => result.map(drop),
    }
}

async fn id(args: &NodeArgs) -> Result<(), Failure> {
    let (dir, options) = (data_dir(args)?, crate::store::StoreOptions::default());
    // The identity needs no index: `id` works on a damaged one too.
    let store = crate::store::run_blocking("reading the identity", move || {
        crate::store::Store::open_unindexed(dir, options)
    })
    .await?;
    output::result(&format!("{}\n", store.peer_id()));
    Ok(())
}

/// The data directory of a command that only reads or tidies one (`gc`,
/// `rebuild-index`): it must hold a node's identity already, or the
/// command would make a new node there.
fn existing_data_dir(args: &NodeArgs) -> Result<PathBuf, Failure> {
    let dir = data_dir(args)?;
    if !dir.join("identity.key").is_file() {
        return Err(Failure::Error(format!(
            "{} holds no dfs-p2p node (no identity.key): give the --data-dir of one",
            dir.display()
        )));
    }
    Ok(dir)
}

async fn gc(args: &NodeArgs) -> Result<(), Failure> {
    let dir = existing_data_dir(args)?;
    let stats = crate::store::run_blocking("the garbage collection", move || {
        let store = crate::store::Store::open(dir, crate::store::StoreOptions::default())?;
        store.gc()
    })
    .await?;
    output::status(&output::gc_summary(&stats));
    Ok(())
}

async fn rebuild_index(args: &NodeArgs) -> Result<(), Failure> {
    let dir = existing_data_dir(args)?;
    let (store, rebuilt) = crate::store::run_blocking("rebuilding the index", move || {
        crate::store::Store::open_rebuilding(dir, crate::store::StoreOptions::default())
    })
    .await?;
    for path in &rebuilt.moved_aside {
        output::status(&format!("moved the old index to {}", path.display()));
    }
    output::status(&format!(
        "rebuilt the index: {} whole file{} kept as this node's own{}",
        rebuilt.roots.len(),
        if rebuilt.roots.len() == 1 { "" } else { "s" },
        if rebuilt.incomplete > 0 {
            format!("; {} incomplete ones left to garbage collection", rebuilt.incomplete)
        } else {
            String::new()
        }
    ));
    drop(store);
    Ok(())
}

/// Blocks themselves live in buffers of their own (`block::buffers`), but
/// much else of a megabyte or two is allocated and freed constantly: an
/// import's chunk buffers, structure nodes being built or decoded, the
/// codec's frames. glibc serves allocations above its mmap threshold with
/// fresh `mmap`s, which cost a page fault and a page clearing for every
/// 4 KiB; raising the threshold above the block size keeps them on the
/// heap, where freed memory is reused. Setting it also pins the trim
/// threshold at 128 KiB, so freed memory at the top of a heap would go back
/// to the kernel at once and be faulted in again: the trim threshold is
/// raised to a few blocks. Two arenas instead of one per thread keep what
/// each retains small and let memory freed on one thread serve the next
/// allocation on another.
fn keep_large_allocations_on_the_heap() {
    // SAFETY: mallopt only changes allocator tuning; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 * 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// A node holds a file descriptor per connection, pending or established
/// (up to 1,536 at once), beside its block files: the soft limit of open
/// files, often 1,024, is raised to the hard limit.
fn raise_file_limit() {
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
