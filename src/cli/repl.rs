//! The command prompt of a running node: reads lines from stdin, runs each
//! command through the node, prints results on stdout and one `error: ...`
//! line on stderr when a command fails. A failed command never stops the
//! node. The prompt (`dfs> `, on stderr) is shown only when stdin is a
//! terminal. Commands run one at a time, in order, so a script that pipes
//! commands in reads its results (tickets, tables) in the same order.

use std::path::PathBuf;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::{Ctx, Failure, output, transfer};
use crate::{
    node::Node,
    ticket::{Ticket, TicketOrCid},
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
  get <ticket> [<out>]        fetch a file into <out>, or print it
  delete <ticket-or-cid>      delete a file here, and the copies this node asked peers to keep
  ls                          files stored here (pinned and cached) with their sizes
  peers                       connected peers and their addresses
  providers <cid-or-ticket>   peers that hold a file
  stat                        peer id, addresses, peers, storage use
  help                        this list
  quit                        stop the node (so do Ctrl-C and SIGTERM)
Quote paths with spaces: put \"my file.txt\". Lines starting with # are ignored.
";

/// Reads and runs commands until `quit` or the end of stdin.
pub async fn run(node: Node, ctx: Ctx, interactive: bool) -> End {
    let mut stdin = BufReader::new(tokio::io::stdin());
    loop {
        if interactive {
            output::prompt(PROMPT);
        }
        let line = match read_line(&mut stdin).await {
            Ok(Some(line)) => line,
            Ok(None) => return End::Eof,
            Err(e) => {
                output::print_error(&format!("cannot read commands from stdin: {e}"));
                return End::Eof;
            }
        };
        match execute(&node, ctx, &line).await {
            Ok(Flow::Continue) => {}
            Ok(Flow::Quit) => return End::Quit,
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
async fn execute(node: &Node, ctx: Ctx, line: &Result<String, String>) -> Result<Flow, Failure> {
    let line = line.as_ref().map_err(|e| Failure::Error(e.clone()))?;
    let words = split_words(line).map_err(Failure::Error)?;
    let Some((command, args)) = words.split_first() else { return Ok(Flow::Continue) };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match (command.as_str(), args.as_slice()) {
        ("put", ["-"]) => {
            return Err(Failure::Error(
                "put - reads stdin, which here carries the commands: give a file path".into(),
            ));
        }
        ("put", [path]) => {
            let input = transfer::open_input(&PathBuf::from(path))?;
            let label = input.label.clone();
            let report = transfer::put(node, input, ctx.progress).await?;
            output::status(&transfer::put_summary(&label, &report));
            output::result(&format!("{}\n", report.ticket));
        }
        ("get", [ticket] | [ticket, "-"]) => {
            let ticket = parse_ticket(ticket)?;
            transfer::get(node, ticket, &transfer::Output::Stdout, ctx.progress).await?;
        }
        ("get", [ticket, out]) => {
            let ticket = parse_ticket(ticket)?;
            let out = transfer::Output::file(PathBuf::from(out))?;
            let report = transfer::get(node, ticket, &out, ctx.progress).await?;
            if let transfer::Output::File(path) = &out {
                output::status(&transfer::get_summary(path, &report));
            }
        }
        ("delete" | "rm", [target]) => delete(node, target).await?,
        ("ls", []) => output::result(&output::roots_table(&node.ls())),
        ("peers", []) => output::result(&output::peers_table(&node.peers().await)),
        ("providers", [target]) => {
            let root = parse_target(target)?.root();
            let providers = node.providers(root).await?;
            if providers.is_empty() {
                output::result(&format!("no providers found for {root}\n"));
            }
            for peer in providers {
                output::result(&format!("{peer}\n"));
            }
        }
        ("stat", []) => output::result(&output::stat_table(&node.stat().await?)),
        ("help" | "?", []) => output::result(HELP),
        ("quit" | "exit", []) => return Ok(Flow::Quit),
        (command, _) => return Err(usage(command)),
    }
    Ok(Flow::Continue)
}

async fn delete(node: &Node, target: &str) -> Result<(), Failure> {
    let target = parse_target(target)?;
    let root = target.root();
    let report = node.delete(target).await?;
    if !report.local && report.remote_deleted.is_empty() && report.remote_refused.is_empty() {
        return Err(Failure::Error(format!(
            "nothing to delete: {root} is not stored here and no peer held a copy for this node"
        )));
    }
    let mut line = if report.local {
        format!("deleted {root} here")
    } else {
        format!("{root} was not stored here")
    };
    line.push_str(&format!("; {} peers deleted their copies", report.remote_deleted.len()));
    output::status(&line);
    for (peer, reason) in &report.remote_refused {
        output::status(&format!("peer {peer} kept its copy: {}", output::one_line(reason)));
    }
    Ok(())
}

fn parse_ticket(s: &str) -> Result<Ticket, Failure> {
    s.parse().map_err(|e: crate::ParseError| Failure::Error(e.to_string()))
}

fn parse_target(s: &str) -> Result<TicketOrCid, Failure> {
    s.parse().map_err(|e: crate::ParseError| Failure::Error(e.to_string()))
}

/// The error for a known command with the wrong arguments, or an unknown one.
fn usage(command: &str) -> Failure {
    let form = match command {
        "put" => "put <path>",
        "get" => "get <ticket> [<out>]",
        "delete" | "rm" => "delete <ticket-or-cid>",
        "providers" => "providers <cid-or-ticket>",
        "ls" | "peers" | "stat" | "help" | "?" | "quit" | "exit" => {
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
