//! The command prompt of a running node: reads lines from stdin, runs each
//! command through the node, prints results on stdout and one `error: ...`
//! line on stderr when a command fails. A failed command never stops the
//! node. The prompt (`dfs> `, on stderr) is shown only when stdin is a
//! terminal. Commands run one at a time, in order, so a script that pipes
//! commands in reads its results (tickets, tables) in the same order.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    sync::Notify,
};

use super::{Ctx, Failure, commands, output, transfer};
use crate::{
    export::ByteRange,
    node::{Cancel, Node},
    ticket::TicketOrCid,
};

/// The prompt, on stderr.
pub const PROMPT: &str = "dfs> ";
/// Longest command line accepted.
const MAX_LINE: u64 = 64 * 1024;

/// Why the prompt stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// `quit`: stop the node.
    Quit,
    /// stdin ended: keep serving.
    Eof,
}

/// What the prompt prints for `help`.
pub const HELP: &str = "\
commands:
  put <path>                  store a file; prints its ticket
  get <ticket-or-cid> [<out>] [--force] [--range A-B]
                              fetch a file into <out> (--force: replace an existing file), or print
                              it (`-`, or --force on a terminal);
                              --range: only bytes A to B (A-B, A- or -N, the last N)
  delete <ticket-or-cid>      delete a file here, and the copies this node asked peers to keep
  ls [--tickets]              files stored here (pinned and cached) with their sizes
                              (--tickets: the ticket of each file this node put or fetched)
  peers                       connected peers and their addresses
  providers <cid-or-ticket>   peers that hold a file
  status <ticket-or-cid>      copies of a file that answer now, the copies wanted, the last repair
  stat                        peer id, addresses, peers, storage use
  gc                          remove the blocks no stored file needs; says what it freed
  help                        this list
  quit                        stop the node (so does SIGTERM; Ctrl-C cancels the command
                              running, or stops the node when none is)
Quote paths with spaces: put \"my file.txt\". Lines starting with # are ignored.
";

/// How Ctrl-C reaches the command running at the prompt.
#[derive(Clone, Default)]
pub struct Interrupts {
    running: Arc<Mutex<Option<Cancel>>>,
    notify: Arc<Notify>,
}

impl Interrupts {
    /// Cancels the command running, if one is; returns whether one was.
    pub fn cancel_running(&self) -> bool {
        let running = self.running.lock().expect("interrupts lock");
        let Some(cancel) = running.as_ref() else { return false };
        cancel.store(true, Ordering::Relaxed);
        self.notify.notify_one();
        true
    }

    fn start(&self) -> Cancel {
        let cancel: Cancel = Arc::new(AtomicBool::new(false));
        *self.running.lock().expect("interrupts lock") = Some(cancel.clone());
        cancel
    }

    fn end(&self) {
        *self.running.lock().expect("interrupts lock") = None;
    }
}

/// Reads and runs commands until `quit` or the end of stdin. A command
/// cancelled through `interrupts` stops at once (what it was writing is
/// left for garbage collection) and the prompt goes on.
pub async fn run(node: Node, ctx: Ctx, interactive: bool, interrupts: Interrupts) -> End {
    let mut stdin = BufReader::new(tokio::io::stdin());
    loop {
        if interactive {
            output::prompt(PROMPT);
        }
        let line = read_line(&mut stdin).await;
        output::prompt_answered();
        let line = match line {
            Ok(Some(line)) => line,
            Ok(None) => return End::Eof,
            Err(e) => {
                output::print_error(&format!("cannot read commands from stdin: {e}"));
                return End::Eof;
            }
        };
        let cancel = interrupts.start();
        let command = execute(&node, ctx, &line, &cancel);
        tokio::pin!(command);
        let result = tokio::select! {
            result = &mut command => result,
            _ = interrupts.notify.notified() => {
                // A put or get sees `cancel` and tidies up (a put unpins
                // and withdraws its copies): wait for that, a while.
                let _ = tokio::time::timeout(super::CANCEL_WAIT, &mut command).await;
                Err(Failure::Interrupted)
            }
        };
        interrupts.end();
        match result {
            Ok(Flow::Continue) => {}
            Ok(Flow::Quit) => return End::Quit,
            Err(Failure::Interrupted) => {
                output::status("cancelled (Ctrl-C again or `quit` stops the node)")
            }
            Err(e) => output::print_error(&e.to_string()),
        }
    }
}

/// One line of stdin, lossily decoded; a line longer than [`MAX_LINE`] is
/// skipped whole and reported.
async fn read_line(
    stdin: &mut BufReader<tokio::io::Stdin>,
) -> std::io::Result<Option<Result<String, String>>> {
    let mut buf = Vec::new();
    let n = (&mut *stdin).take(MAX_LINE).read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') && n as u64 == MAX_LINE {
        // Skip the rest of the over-long line.
        loop {
            buf.clear();
            let n = (&mut *stdin).take(MAX_LINE).read_until(b'\n', &mut buf).await?;
            if n == 0 || buf.last() == Some(&b'\n') {
                break;
            }
        }
        return Ok(Some(Err(format!("command line longer than {MAX_LINE} bytes: ignored"))));
    }
    Ok(Some(Ok(String::from_utf8_lossy(&buf).into_owned())))
}

enum Flow {
    Continue,
    Quit,
}

/// Runs one command line.
async fn execute(
    node: &Node,
    ctx: Ctx,
    line: &Result<String, String>,
    cancel: &Cancel,
) -> Result<Flow, Failure> {
    let cancel = Some(cancel.clone());
    let console = output::Console::default();
    let line = line.as_ref().map_err(|e| Failure::Error(e.clone()))?;
    let words = split_words(line).map_err(Failure::Error)?;
    let Some((command, args)) = words.split_first() else { return Ok(Flow::Continue) };
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    // `get ... --range A-B`: the range, wherever it is among the arguments.
    let mut range = None;
    if command == "get"
        && let Some(at) = args.iter().position(|a| *a == "--range")
    {
        let spec = args.get(at + 1).ok_or_else(|| usage("get"))?;
        range = Some(spec.parse::<ByteRange>().map_err(Failure::Error)?);
        args.drain(at..at + 2);
    }
    match (command.as_str(), args.as_slice()) {
        ("put", ["-"]) => {
            return Err(Failure::Error(
                "put - reads stdin, which here carries the commands: give a file path".into(),
            ));
        }
        ("put", [path]) => {
            let input = transfer::open_input(&PathBuf::from(path))?;
            commands::put(node, &console, input, None, ctx.progress, cancel, None).await?;
        }
        ("get", [ticket] | [ticket, "-"] | [ticket, "--force"]) => {
            let force = args.len() == 2;
            let ticket = parse_target(ticket)?;
            let out = transfer::Output::stdout(force)?;
            commands::get(node, &console, (ticket, out, None), range, ctx.progress, cancel).await?;
            if range.is_some() && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                // Ranged bytes on a terminal seldom end a line: the prompt
                // starts on its own.
                output::result("\n");
            }
        }
        ("get", [ticket, out] | [ticket, out, "--force"] | [ticket, "--force", out]) => {
            let force = args.contains(&"--force");
            let ticket = parse_target(ticket)?;
            let path = PathBuf::from(out);
            let out = transfer::Output::file(path.clone(), force)?;
            let get = (ticket, out, Some(path.as_path()));
            commands::get(node, &console, get, range, ctx.progress, cancel).await?;
        }
        ("delete" | "rm", [target]) => {
            commands::delete(node, &console, parse_target(target)?).await?
        }
        ("ls", []) => commands::ls(node, &console, false).await?,
        ("ls", ["--tickets"]) => commands::ls(node, &console, true).await?,
        ("peers", []) => output::result(&output::peers_table(&node.peers().await)),
        ("providers", [target]) => {
            commands::providers(node, &console, parse_target(target)?).await?
        }
        ("status", [target]) => {
            commands::status(node, &console, parse_target(target)?, None).await?;
        }
        ("stat", []) => commands::stat(node, &console).await?,
        ("gc", []) => commands::gc(node, &console).await?,
        ("help" | "?", []) => output::result(HELP),
        ("quit" | "exit", []) => return Ok(Flow::Quit),
        (command, _) => return Err(usage(command)),
    }
    Ok(Flow::Continue)
}

fn parse_target(s: &str) -> Result<TicketOrCid, Failure> {
    s.parse().map_err(|e: crate::ParseError| Failure::Error(e.to_string()))
}

/// The error for a known command with the wrong arguments, or an unknown one.
fn usage(command: &str) -> Failure {
    let form = match command {
        "put" => "put <path>",
        "get" => "get <ticket-or-cid> [<out>] [--force] [--range A-B]",
        "ls" => "ls [--tickets]",
        "delete" | "rm" => "delete <ticket-or-cid>",
        "providers" => "providers <cid-or-ticket>",
        "status" => "status <ticket-or-cid>",
        "peers" | "stat" | "help" | "?" | "quit" | "exit" => {
            return Failure::Error(format!("`{command}` takes no arguments"));
        }
        _ => {
            let shown: String = command.chars().take(40).collect();
            return Failure::Error(format!(
                "unknown command `{shown}` (type `help` for the commands)"
            ));
        }
    };
    Failure::Error(format!("usage: {form}"))
}

/// Splits a command line into words: whitespace separates, single or
/// double quotes group (with `\` escaping inside double quotes and
/// outside), and a line starting with `#` is a comment.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let line = line.trim();
    if line.starts_with('#') {
        return Ok(Vec::new());
    }
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("unterminated ' quote".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => w.push(c),
                            None => return Err("unterminated \" quote".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("unterminated \" quote".into()),
                    }
                }
            }
            '\\' => {
                let w = word.get_or_insert_with(String::new);
                w.push(chars.next().unwrap_or('\\'));
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_a_shell() {
        let w = |s: &str| split_words(s).unwrap();
        assert_eq!(w("  put  a.txt \n"), ["put", "a.txt"]);
        assert_eq!(w("put \"my file.txt\""), ["put", "my file.txt"]);
        assert_eq!(w("put 'it''s'"), ["put", "its"]);
        assert_eq!(w(r"put my\ file"), ["put", "my file"]);
        assert_eq!(w(r#"get "a\"b" ''"#), ["get", "a\"b", ""]);
        assert!(w("# a comment").is_empty());
        assert!(w("   ").is_empty());
        assert!(split_words("put \"open").is_err());
        assert!(split_words("put 'open").is_err());
    }

    #[test]
    fn usage_errors_are_one_line() {
        for c in ["put", "get", "delete", "providers", "ls", "frob", &"x".repeat(500)] {
            let msg = usage(c).to_string();
            assert!(!msg.contains('\n') && msg.len() < 120, "{msg}");
        }
    }
}
