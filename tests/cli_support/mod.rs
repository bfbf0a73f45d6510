//! Helpers for the black-box tests of the `dfs-p2p` binary: run one-shot
//! commands, and run nodes whose stdin, stdout and stderr the test holds.
//! Every wait has a deadline; nothing sleeps a fixed time to "let things
//! settle".

#![allow(dead_code)] // each test file uses a different part

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_dfs-p2p");

/// How long any single step may take before the test fails.
pub const STEP: Duration = Duration::from_secs(120);

/// A command for the binary with a clean environment for it.
pub fn dfs(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("DFS_DATA_DIR").env_remove("RUST_LOG");
    cmd
}

/// Runs a one-shot command with `stdin` as its input; fails the test if it
/// takes longer than [`STEP`].
pub fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = dfs(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dfs-p2p");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output = wait_output(child, &format!("{args:?}"));
    writer.join().unwrap();
    output
}

/// Waits for a spawned command and collects what is left of its output;
/// kills it and fails the test if it takes longer than [`STEP`].
pub fn wait_output(child: Child, what: &str) -> Output {
    let (tx, rx) = mpsc::channel();
    let id = child.id();
    thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(STEP) {
        Ok(out) => out.expect("wait for dfs-p2p"),
        Err(_) => {
            unsafe { libc::kill(id as i32, libc::SIGKILL) };
            panic!("dfs-p2p {what} did not finish within {STEP:?}");
        }
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that a command failed with `code` and said why in exactly one
/// `error: ...` line (and did not panic).
pub fn assert_one_line_error(out: &Output, code: i32, what: &str) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{what}: status {:?}, stderr: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{what}: panicked: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{what}: want one error line, stderr: {stderr}");
    assert!(
        !stderr.lines().any(|l| l.starts_with("Usage:") || l.starts_with("Caused by")),
        "{what}: more than one line: {stderr}"
    );
    errors[0].to_string()
}

/// A one-shot put of `path` into the data directory `dir`; its ticket.
pub fn put_file(dir: &Path, path: &Path) -> String {
    let out = run(&["put", path.to_str().unwrap(), "--data-dir", dir.to_str().unwrap()], b"");
    assert!(out.status.success(), "put failed: {}", text(&out.stderr));
    let ticket = last_line(&out);
    assert!(is_ticket(&ticket), "not a ticket: {ticket:?}");
    ticket
}

/// The last line of stdout, which for a put is the ticket.
pub fn last_line(out: &Output) -> String {
    text(&out.stdout).lines().last().unwrap_or_default().trim().to_string()
}

pub fn is_ticket(s: &str) -> bool {
    s.len() > 60 && s.starts_with("dfs") && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Deterministic, incompressible test bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    dfs_p2p::testdata::pseudo_random(len, seed)
}

/// N from a put's status line "stored X (size): N of M copies confirmed".
pub fn parse_copies(line: &str) -> usize {
    let (_, tail) = line.rsplit_once("): ").unwrap_or_else(|| panic!("status line: {line}"));
    tail.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line}"))
}

/// A line from a node, and which stream it came on.
#[derive(Debug, Clone)]
pub enum Line {
    Out(String),
    Err(String),
}

/// A running node: its stdin to type commands into, and its output lines.
pub struct Node {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Line>,
    /// Everything seen so far, for failure messages.
    pub seen: Vec<Line>,
    pub peer_id: String,
    pub addrs: Vec<String>,
    pub data_dir: PathBuf,
}

impl Node {
    /// Starts `dfs-p2p --data-dir DIR --listen /ip4/127.0.0.1/tcp/0 EXTRA...`
    /// and waits for its peer id and listen address on stderr.
    pub fn start(name: &str, data_dir: &Path, extra: &[&str]) -> Node {
        let mut node = Node::spawn(name, data_dir, extra);
        node.wait_started();
        node
    }

    /// Spawns the node without waiting for anything.
    pub fn spawn(name: &str, data_dir: &Path, extra: &[&str]) -> Node {
        let mut args = vec!["--data-dir", data_dir.to_str().unwrap(), "--no-progress"];
        if !extra.contains(&"--listen") {
            args.extend(["--listen", "/ip4/127.0.0.1/tcp/0"]);
        }
        args.extend(extra);
        Node::spawn_command(name, data_dir, &args)
    }

    /// Spawns `dfs-p2p ARGS` (a one-shot command too), its output read as
    /// a node's.
    pub fn spawn_command(name: &str, data_dir: &Path, args: &[&str]) -> Node {
        Node::spawn_with(name, data_dir, dfs(args))
    }

    /// Starts `dfs-p2p --data-dir DIR EXTRA...` in the network namespace
    /// `netns` (`ip netns exec`, which runs the program itself: its pid is
    /// the node's), and waits for its peer id and listen address.
    pub fn start_in(netns: &str, name: &str, data_dir: &Path, extra: &[&str]) -> Node {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, BIN, "--data-dir", data_dir.to_str().unwrap()])
            .arg("--no-progress")
            .args(extra)
            .env_remove("DFS_DATA_DIR")
            .env_remove("RUST_LOG");
        let mut node = Node::spawn_with(name, data_dir, cmd);
        node.wait_started();
        node
    }

    /// Spawns `cmd`, its output read as a node's.
    pub fn spawn_with(name: &str, data_dir: &Path, mut cmd: Command) -> Node {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dfs-p2p node");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        thread::spawn(move || forward(out, &tx, Line::Out));
        thread::spawn(move || forward(err, &tx2, Line::Err));
        Node {
            name: name.into(),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            peer_id: String::new(),
            addrs: Vec::new(),
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Waits for `peer id: <id>` and the first `listening on <addr>`.
    pub fn wait_started(&mut self) {
        let line = self.expect_err(|l| l.starts_with("peer id: "));
        self.peer_id = line["peer id: ".len()..].trim().to_string();
        let line = self.expect_err(|l| l.starts_with("listening on "));
        let addr = line["listening on ".len()..].trim().to_string();
        assert!(addr.ends_with(&format!("/p2p/{}", self.peer_id)), "{}: {addr}", self.name);
        self.addrs.push(addr);
    }

    /// The process id of the node.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The TCP port of the first listen address.
    pub fn port(&self) -> u16 {
        let parts: Vec<&str> = self.addrs[0].split('/').collect();
        let i = parts.iter().position(|p| *p == "tcp").expect("a tcp address");
        parts[i + 1].parse().unwrap()
    }

    pub fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{command}").expect("write a command");
        stdin.flush().unwrap();
    }

    /// Closes the node's stdin (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next line (either stream); fails the test at the deadline.
    pub fn next(&mut self, deadline: Instant) -> Line {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("{}: timed out; saw {:#?}", self.name, self.seen)
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("{}: the node exited; saw {:#?}", self.name, self.seen)
            }
        }
    }

    /// Waits for a stderr line that matches.
    pub fn expect_err(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            if let Line::Err(l) = self.next(deadline)
                && pred(&l)
            {
                return l;
            }
        }
    }

    /// Waits for a stdout line that matches, or fails on an `error:` line.
    pub fn expect_out(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            match self.next(deadline) {
                Line::Out(l) if pred(&l) => return l,
                Line::Err(l) if l.starts_with("error: ") => {
                    panic!("{}: {l}; saw {:#?}", self.name, self.seen)
                }
                _ => {}
            }
        }
    }

    /// Waits for the outcome of the last command: a matching stderr status
    /// line (Ok) or an `error:` line (Err).
    pub fn outcome(&mut self, pred: impl Fn(&str) -> bool) -> Result<String, String> {
        let deadline = Instant::now() + STEP;
        loop {
            match self.next(deadline) {
                Line::Err(l) if l.starts_with("error: ") => return Err(l),
                Line::Err(l) if pred(&l) => return Ok(l),
                _ => {}
            }
        }
    }

    /// Waits for the next `error:` line.
    pub fn expect_error(&mut self) -> String {
        self.expect_err(|l| l.starts_with("error: "))
    }

    /// `put PATH` at the prompt; returns the ticket.
    pub fn put(&mut self, path: &Path) -> String {
        self.send(&format!("put \"{}\"", path.display()));
        let ticket = self.expect_out(is_ticket);
        ticket.trim().to_string()
    }

    /// `put PATH` at the prompt; returns the ticket and the copies the
    /// node reported as confirmed.
    pub fn put_confirmed(&mut self, path: &Path) -> (String, usize) {
        let start = self.seen.len();
        self.send(&format!("put \"{}\"", path.display()));
        let deadline = Instant::now() + STEP;
        let (mut ticket, mut copies) = (None, None);
        while ticket.is_none() || copies.is_none() {
            match self.next(deadline) {
                Line::Out(l) if is_ticket(l.trim()) => ticket = Some(l.trim().to_string()),
                Line::Err(l) if l.starts_with("error: ") => {
                    panic!("{}: {l}; saw {:#?}", self.name, &self.seen[start..])
                }
                Line::Err(l) if l.starts_with("stored ") => copies = Some(parse_copies(&l)),
                _ => {}
            }
        }
        (ticket.unwrap(), copies.unwrap())
    }

    /// `get TICKET OUT` at the prompt.
    pub fn get(&mut self, ticket: &str, out: &Path) -> Result<String, String> {
        self.send(&format!("get {ticket} \"{}\"", out.display()));
        self.outcome(|l| l.starts_with("wrote "))
    }

    /// Connected peers according to `peers`.
    pub fn peer_count(&mut self) -> usize {
        self.send("peers");
        let line = self.expect_out(|l| l.ends_with(" connected") && l.contains("peer"));
        line.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0)
    }

    /// Polls `peers` until at least `n` are connected.
    pub fn wait_for_peers(&mut self, n: usize) {
        let deadline = Instant::now() + STEP;
        loop {
            let count = self.peer_count();
            if count >= n {
                return;
            }
            assert!(Instant::now() < deadline, "{}: {count} peers, want {n}", self.name);
            thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Collect what it printed last.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return status;
            }
            assert!(Instant::now() < deadline, "{}: did not exit; saw {:#?}", self.name, self.seen);
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the node with SIGTERM and checks it shut down cleanly.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit();
        assert!(status.success(), "{}: SIGTERM gave {status:?}; saw {:#?}", self.name, self.seen);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn forward(stream: impl Read, tx: &mpsc::Sender<Line>, wrap: fn(String) -> Line) {
    // Lossy: a `get` to stdout may print bytes that are not UTF-8.
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
        if tx.send(wrap(line)).is_err() {
            break;
        }
    }
}

#[path = "../ports/mod.rs"]
mod ports;
#[allow(unused_imports)] // each test file uses some
pub use ports::ReservedPort;
