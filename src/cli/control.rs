//! The control socket: how a one-shot command reaches the node running on
//! its data directory (which holds the directory's lock, so the command
//! cannot open it itself), as Kubo's command line talks to its daemon.
//!
//! A running node listens on `control.sock` in its data directory: a Unix
//! socket, mode 0600, in a directory of mode 0700, and every connection's
//! peer must run as the node's own user (`SO_PEERCRED`), so no one else on
//! the machine can use it. A one-shot `id`, `ls`, `stat`, `put`, `get`,
//! `delete`, `status`, `providers` or `gc` whose data directory has a node
//! answering there sends it its command line and working directory; the
//! node runs the command as the one-shot would (with its own peers), and
//! sends back what the one-shot would print and its exit code. The client
//! prints them: output and exit codes are the same either way.
//!
//! The wire: frames of a 4-byte big-endian length and that many bytes (at
//! most [`MAX_FRAME`]), the first byte of each its kind.
//! - Client to node: a request (the working directory, then each argument,
//!   each ended by a NUL byte); input bytes for `put -`; the end of the
//!   input; cancel (Ctrl-C: the node cancels the command as the prompt's
//!   Ctrl-C does, and answers with exit code 130). A client that goes away
//!   cancels too.
//! - Node to client: output bytes (a get's, on stdout), a result (stdout), a
//!   status line or an error (stderr), and last the exit code.

use std::{
    ffi::OsString,
    io,
    os::unix::{ffi::OsStringExt, fs::PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use clap::Parser;
use futures::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, mpsc},
};
use tokio_util::{
    bytes::{BufMut, Bytes, BytesMut},
    codec::{Framed, LengthDelimitedCodec},
};

use super::{
    CANCEL_WAIT, Failure, Signals,
    args::{Cli, Command},
    commands,
    output::{self, Console, Line},
    transfer::{self, Input, Output},
};
use crate::node::{Cancel, Node};

/// The socket's name in the data directory.
pub const SOCKET: &str = "control.sock";
/// The largest frame either side sends or accepts.
pub const MAX_FRAME: usize = 1 << 20;
/// Control connections served at once; more are told the node is busy.
const MAX_CLIENTS: usize = 16;
/// How long a client has to send its request.
const REQUEST_WAIT: Duration = Duration::from_secs(10);
/// How long the end of a command's output may wait for its client.
const TAIL_WAIT: Duration = Duration::from_secs(30);
/// A get's bytes waiting for the client, in frames.
const OUT_QUEUE: usize = 8;

// Frame kinds, client to node...
const REQUEST: u8 = b'q';
const INPUT: u8 = b'i';
const INPUT_END: u8 = b'e';
const CANCEL: u8 = b'c';
// ...and node to client.
const OUT: u8 = b'o';
const RESULT: u8 = b'r';
const STATUS: u8 = b's';
const ERROR: u8 = b'!';
const EXIT: u8 = b'x';

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME).new_codec()
}

fn frame(kind: u8, payload: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(1 + payload.len());
    frame.put_u8(kind);
    frame.put_slice(payload);
    frame.freeze()
}

/// The exit code of a command's outcome, as `main` gives it.
pub fn exit_code(result: &Result<(), Failure>) -> u8 {
    match result {
        Ok(()) => 0,
        Err(Failure::Interrupted) => 130,
        Err(Failure::OutputClosed) => 141,
        Err(Failure::TooFewCopies(_)) => 3,
        Err(Failure::Reported(code)) => *code,
        Err(Failure::Error(_)) => 1,
    }
}

/// A running node's control socket; removed when dropped.
pub struct ControlSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on the control socket of `node`'s data directory `dir`. The
/// node holds the directory's lock: a socket found there is a stopped
/// node's, and replaced.
pub async fn serve(node: Node, dir: &Path) -> io::Result<ControlSocket> {
    let path = dir.join(SOCKET);
    match tokio::fs::remove_file(&path).await {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&path)?;
    tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).await?;
    let task = tokio::spawn(accept(node, listener));
    Ok(ControlSocket { path, task })
}

async fn accept(node: Node, listener: UnixListener) {
    let clients = Arc::new(Semaphore::new(MAX_CLIENTS));
    // SAFETY: geteuid only reads the process's credentials.
    let user = unsafe { libc::geteuid() };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("control socket: {e}");
                // Out of file descriptors, say: let some close.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if stream.peer_cred().map(|c| c.uid()).ok() != Some(user) {
            tracing::warn!("control socket: refused a client running as another user");
            continue;
        }
        let mut framed = Framed::new(stream, codec());
        let Ok(permit) = clients.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let busy = format!("the node is serving {MAX_CLIENTS} commands already: try again");
                let _ = framed.send(frame(ERROR, busy.as_bytes())).await;
                let _ = framed.send(frame(EXIT, &[1])).await;
            });
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            serve_client(&node, framed).await;
            drop(permit);
        });
    }
}

/// A request: the working directory and the arguments.
fn parse_request(payload: &[u8]) -> Option<(PathBuf, Vec<OsString>)> {
    let payload = payload.strip_suffix(&[0])?;
    let mut parts = payload.split(|b| *b == 0).map(|p| OsString::from_vec(p.to_vec()));
    let cwd = PathBuf::from(parts.next()?);
    Some((cwd, parts.collect()))
}

/// Runs one client's command and sends back its output and exit code.
async fn serve_client(node: &Node, mut framed: Framed<UnixStream, LengthDelimitedCodec>) {
    let request = match tokio::time::timeout(REQUEST_WAIT, framed.next()).await {
        Ok(Some(Ok(f))) if f.first() == Some(&REQUEST) => parse_request(&f[1..]),
        _ => None,
    };
    let command = request.and_then(|(cwd, args)| {
        let command = Cli::try_parse_from(args).ok()?.command?;
        Some((cwd, command))
    });
    let Some((cwd, command)) = command else {
        let _ = framed.send(frame(ERROR, b"a malformed control request")).await;
        let _ = framed.send(frame(EXIT, &[2])).await;
        return;
    };
    let (lines_tx, mut lines) = mpsc::unbounded_channel();
    let console = Console::remote(lines_tx);
    let (out_tx, mut out) = mpsc::channel::<Bytes>(OUT_QUEUE);
    let (input_tx, input) = mpsc::channel::<io::Result<Bytes>>(4);
    let cancel = Cancel::default();
    // Frames stay under the limit, their kind byte included.
    let pipe = crate::export::ChannelWriter::new(out_tx, |bytes| bytes, MAX_FRAME - 1);
    let streams = Streams { input, out: Box::new(pipe) };
    let work = execute(node, &console, command, &cwd, streams, cancel.clone());
    tokio::pin!(work);
    let (mut sink, mut from_client) = framed.split();
    let mut input_tx = Some(input_tx);
    let mut client_gone = false;
    let mut cancelled_at = None;
    let result = loop {
        let cancel_ended = cancel_wait_ended(cancelled_at);
        tokio::select! {
            biased;
            Some(bytes) = out.recv() => {
                if !client_gone && sink.send(frame(OUT, &bytes)).await.is_err() {
                    client_gone = true;
                }
            }
            Some(line) = lines.recv() => {
                if !client_gone && sink.send(line_frame(line)).await.is_err() {
                    client_gone = true;
                }
            }
            result = &mut work => break result,
            incoming = from_client.next(), if cancelled_at.is_none() => {
                let kind = incoming.as_ref().and_then(|f| f.as_ref().ok()).and_then(|f| f.first().copied());
                match (kind, incoming) {
                    (Some(INPUT), Some(Ok(mut f))) => {
                        if let Some(tx) = &input_tx {
                            let _ = tx.send(Ok(f.split_off(1).freeze())).await;
                        }
                    }
                    (Some(INPUT_END), _) => input_tx = None,
                    (_, incoming) => {
                        // Cancel, or the client went away (or spoke
                        // nonsense): the command stops and tidies up.
                        client_gone |= !matches!(incoming, Some(Ok(_)));
                        cancel.store(true, Ordering::Relaxed);
                        if let Some(tx) = input_tx.take() {
                            let _ = tx.try_send(Err(io::Error::other("cancelled")));
                        }
                        cancelled_at = Some(tokio::time::Instant::now());
                    }
                }
            }
            () = cancel_ended => break Err(Failure::Interrupted),
        }
    };
    if client_gone {
        return;
    }
    let result = if cancelled_at.is_some() { Err(Failure::Interrupted) } else { result };
    // What the command wrote before it ended, then how it ended; a client
    // that stopped reading does not keep its place for long.
    let tail = async {
        while let Ok(bytes) = out.try_recv() {
            sink.send(frame(OUT, &bytes)).await?;
        }
        while let Ok(line) = lines.try_recv() {
            sink.send(line_frame(line)).await?;
        }
        if let Err(e @ (Failure::Error(_) | Failure::TooFewCopies(_))) = &result {
            sink.send(frame(ERROR, output::one_line(&e.to_string()).as_bytes())).await?;
        }
        sink.send(frame(EXIT, &[exit_code(&result)])).await?;
        sink.close().await
    };
    let _ = tokio::time::timeout(TAIL_WAIT, tail).await;
}

/// Resolves [`CANCEL_WAIT`] after a cancel at `cancelled`; never without
/// one.
async fn cancel_wait_ended(cancelled: Option<tokio::time::Instant>) {
    match cancelled {
        Some(at) => tokio::time::sleep_until(at + CANCEL_WAIT).await,
        None => std::future::pending().await,
    }
}

fn line_frame(line: Line) -> Bytes {
    match line {
        Line::Result(text) => frame(RESULT, text.as_bytes()),
        Line::Status(text) => frame(STATUS, text.as_bytes()),
        Line::Error(text) => frame(ERROR, text.as_bytes()),
    }
}

/// A client's standard input (for `put -`) and output (for a get).
struct Streams {
    input: mpsc::Receiver<io::Result<Bytes>>,
    out: Box<dyn AsyncWrite + Send + Unpin>,
}

/// Runs a client's command on the running node, as the one-shot command
/// would on its own (paths are the client's, relative to `cwd`).
async fn execute(
    node: &Node,
    console: &Console,
    command: Command,
    cwd: &Path,
    streams: Streams,
    cancel: Cancel,
) -> Result<(), Failure> {
    let no_peer = (node.net().connected_now() == 0).then_some(commands::NODE_HAS_NO_PEER);
    match command {
        Command::Put { file, min_copies, name } => {
            let input = if file == Path::new("-") {
                let stream = futures::stream::unfold(streams.input, |mut rx| async move {
                    rx.recv().await.map(|bytes| (bytes, rx))
                });
                let reader = tokio_util::io::StreamReader::new(Box::pin(stream));
                Input::stream(Box::new(tokio_util::io::SyncIoBridge::new(reader)))
            } else {
                let mut input = transfer::open_input(&cwd.join(&file))?;
                input.label = file.display().to_string();
                input
            };
            let input = input.named(name);
            commands::put(node, console, input, min_copies, false, Some(cancel), no_peer).await
        }
        Command::Get { ticket, output, force, range } => {
            let (out, shown) = match output {
                Some(path) if path != Path::new("-") => {
                    (Output::file(cwd.join(&path), force)?, Some(path))
                }
                _ => (Output::Pipe(streams.out), None),
            };
            let get = (ticket, out, shown.as_deref());
            commands::get(node, console, get, range, false, Some(cancel)).await.map(drop)
        }
        Command::Status { target } => {
            commands::status(node, console, target, Some(commands::NODE_HAS_NO_PEER)).await
        }
        Command::Providers { target } => commands::providers(node, console, target).await,
        Command::Ls { tickets } => commands::ls(node, console, tickets).await,
        Command::Stat => commands::stat(node, console).await,
        Command::Delete { target } => commands::delete(node, console, target).await,
        Command::Gc => commands::gc(node, console).await,
        Command::Id => {
            console.result(&format!("{}\n", node.peer_id()));
            Ok(())
        }
        Command::RebuildIndex => Err(Failure::Error(
            "a node is running on this data directory: stop it before rebuilding its index".into(),
        )),
        #[cfg(feature = "bench")]
        Command::Bench(_) => Err(Failure::Error("bench runs its own nodes".into())),
    }
}

/// The node running on `dir`, if one answers on its control socket.
pub async fn connect(dir: &Path) -> Option<UnixStream> {
    let path = dir.join(SOCKET);
    if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return None;
    }
    UnixStream::connect(&path).await.ok()
}

/// Runs this process's command line through the node behind `stream`:
/// prints what it sends, passes standard input for `put -`, and turns
/// Ctrl-C into a cancel. Returns as the command did there.
pub async fn call(stream: UnixStream, stdin: bool, signals: &mut Signals) -> Result<(), Failure> {
    let cwd = std::env::current_dir()
        .map_err(|e| Failure::io("cannot read the working directory".into(), &e))?;
    let mut request = Vec::new();
    for part in std::iter::once(cwd.into_os_string()).chain(std::env::args_os()) {
        request.extend_from_slice(&part.into_vec());
        request.push(0);
    }
    if request.len() >= MAX_FRAME {
        return Err(Failure::Error("the command line is too long".into()));
    }
    let framed = Framed::new(stream, codec());
    let (mut sink, mut from_node) = framed.split();
    let lost = |e: io::Error| Failure::Error(format!("lost the running node: {e}"));
    sink.send(frame(REQUEST, &request)).await.map_err(lost)?;
    // What goes to the node after the request: standard input, a cancel.
    let (to_node, mut outgoing) = mpsc::channel::<Bytes>(4);
    let writer = tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            if sink.send(frame).await.is_err() {
                break;
            }
        }
        sink
    });
    let pump = stdin.then(|| tokio::spawn(pump_stdin(to_node.clone())));
    let mut stdout = tokio::io::stdout();
    let mut cancelled = None;
    let result = loop {
        let give_up = cancel_wait_ended(cancelled);
        tokio::select! {
            incoming = from_node.next() => {
                let f = match incoming {
                    Some(Ok(f)) if !f.is_empty() => f,
                    Some(Err(e)) => break Err(lost(e)),
                    _ => break Err(Failure::Error(
                        "the running node closed the connection before the command ended".into(),
                    )),
                };
                let text = || String::from_utf8_lossy(&f[1..]).into_owned();
                match f[0] {
                    OUT => {
                        let written = async {
                            stdout.write_all(&f[1..]).await?;
                            stdout.flush().await
                        };
                        if let Err(e) = written.await {
                            break Err(if e.kind() == io::ErrorKind::BrokenPipe {
                                Failure::OutputClosed
                            } else {
                                Failure::io("cannot write the output".into(), &e)
                            });
                        }
                    }
                    RESULT => output::result(&text()),
                    STATUS => output::status(&text()),
                    ERROR => output::print_error(&text()),
                    EXIT => break match f.get(1).copied().unwrap_or(1) {
                        0 => Ok(()),
                        130 => Err(Failure::Interrupted),
                        code => Err(Failure::Reported(code)),
                    },
                    _ => {}
                }
            }
            _ = signals.recv(), if cancelled.is_none() => {
                let _ = to_node.send(frame(CANCEL, &[])).await;
                cancelled = Some(tokio::time::Instant::now());
            }
            () = give_up => break Err(Failure::Interrupted),
        }
    };
    if let Some(pump) = pump {
        pump.abort();
    }
    drop(to_node);
    writer.abort();
    result
}

/// Sends standard input to the node, then its end.
async fn pump_stdin(to_node: mpsc::Sender<Bytes>) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if to_node.send(frame(INPUT, &buf[..n])).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                output::print_error(&format!("cannot read standard input: {e}"));
                let _ = to_node.send(frame(CANCEL, &[])).await;
                return;
            }
        }
    }
    let _ = to_node.send(frame(INPUT_END, &[])).await;
}
