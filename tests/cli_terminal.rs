//! The node in a real terminal: the prompt appears, a put draws a progress
//! bar and prints its ticket, `stat` and `peers` print readable tables, and
//! `quit` exits 0. Runs the binary in tmux (a detached session on a private
//! server socket), or else under `script`, which gives it a pty. When
//! neither is installed the test fails, unless `DFS_SKIP_TERMINAL_TEST=1`
//! asks to skip it.

mod cli_support;

use std::{
    io::{Read, Write},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use cli_support::*;

/// A terminal the binary runs in: type a line, read the screen.
trait Terminal {
    fn type_line(&mut self, line: &str);
    /// Presses Ctrl-C.
    fn ctrl_c(&mut self);
    fn screen(&mut self) -> String;
}

struct Tmux {
    socket: String,
}

impl Tmux {
    fn available() -> bool {
        Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success())
    }

    fn start(command: &str) -> Tmux {
        let socket = format!("dfs-test-{}", std::process::id());
        let tmux = Tmux { socket };
        let ok = tmux
            .run(&["-f", "/dev/null", "new-session", "-d", "-s", "dfs", "-x", "200", "-y", "50"])
            .arg(command)
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmux new-session failed");
        tmux
    }

    fn run(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket]).args(args).env_remove("TMUX");
        cmd
    }
}

impl Terminal for Tmux {
    fn type_line(&mut self, line: &str) {
        assert!(self.run(&["send-keys", "-t", "dfs", "-l", line]).status().unwrap().success());
        assert!(self.run(&["send-keys", "-t", "dfs", "Enter"]).status().unwrap().success());
    }

    fn ctrl_c(&mut self) {
        assert!(self.run(&["send-keys", "-t", "dfs", "C-c"]).status().unwrap().success());
    }

    fn screen(&mut self) -> String {
        let out = self.run(&["capture-pane", "-p", "-J", "-t", "dfs", "-S", "-500"]).output();
        out.map(|o| text(&o.stdout)).unwrap_or_default()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]).status();
    }
}

/// util-linux `script`: runs the command on a pty; what we write to its
/// stdin is typed, its stdout is the screen's byte stream.
struct Script {
    child: Child,
    stdin: ChildStdin,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Script {
    fn available() -> bool {
        Command::new("script").arg("--version").output().is_ok_and(|o| o.status.success())
    }

    fn start(command: &str) -> Script {
        let mut child = Command::new("script")
            .args(["-q", "-f", "-e", "-c", command, "/dev/null"])
            .env("TERM", "xterm-256color")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn script");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = output.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Script { child, stdin, output }
    }
}

impl Terminal for Script {
    fn type_line(&mut self, line: &str) {
        self.stdin.write_all(format!("{line}\r").as_bytes()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn ctrl_c(&mut self) {
        self.stdin.write_all(b"\x03").unwrap();
        self.stdin.flush().unwrap();
    }

    fn screen(&mut self) -> String {
        text(&self.output.lock().unwrap())
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls the screen until `pred` holds; fails with the screen at the deadline.
fn wait_for(term: &mut dyn Terminal, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        let screen = term.screen();
        if pred(&screen) {
            return screen;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; screen:\n{screen}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// The first ticket on the screen.
fn screen_ticket(screen: &str) -> String {
    let word = screen.split_whitespace().find(|w| is_ticket(w));
    word.unwrap_or_else(|| panic!("no ticket on the screen:\n{screen}")).to_string()
}

fn has_ticket(screen: &str) -> bool {
    screen.split_whitespace().any(is_ticket)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn the_prompt_in_a_real_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big.bin");
    std::fs::write(&big, data(8 << 20, 3)).unwrap();
    let data_dir = tmp.path().join("data");
    // Exit status on screen, then keep the pane open so it can be read.
    let command = format!(
        "env -u RUST_LOG -u DFS_DATA_DIR {} --data-dir {} --listen /ip4/127.0.0.1/tcp/0; \
         echo EXITED $?; sleep 60",
        shell_quote(BIN),
        shell_quote(data_dir.to_str().unwrap()),
    );
    // DFS_TEST_TERMINAL=script tries the fallback even where tmux exists.
    let prefer_script = std::env::var("DFS_TEST_TERMINAL").is_ok_and(|v| v == "script");
    let mut term: Box<dyn Terminal> = if Tmux::available() && !prefer_script {
        Box::new(Tmux::start(&command))
    } else if Script::available() {
        Box::new(Script::start(&command))
    } else {
        // A test that cannot run must not pass: only an explicit request
        // skips it.
        let why = if prefer_script {
            "DFS_TEST_TERMINAL=script, and script is not installed"
        } else {
            "neither tmux nor script is installed"
        };
        if std::env::var_os("DFS_SKIP_TERMINAL_TEST").is_some_and(|v| v == "1") {
            eprintln!("SKIPPED the_prompt_in_a_real_terminal: {why} (DFS_SKIP_TERMINAL_TEST=1)");
            return;
        }
        panic!(
            "cannot run the_prompt_in_a_real_terminal: {why}; install tmux (or util-linux's \
             script), or set DFS_SKIP_TERMINAL_TEST=1 to skip it"
        );
    };
    let term = term.as_mut();

    let screen = wait_for(term, "the prompt", |s| s.contains("dfs> "));
    assert!(screen.contains("peer id: 12D3KooW"), "{screen}");
    assert!(screen.contains("listening on /ip4/127.0.0.1/tcp/"), "{screen}");
    assert!(screen.contains("type `help`"), "{screen}");

    term.type_line(&format!("put {}", Path::new(&big).display()));
    let screen = wait_for(term, "the ticket", has_ticket);
    let ticket = screen_ticket(&screen);
    assert!(screen.contains("put "), "{screen}");
    assert!(screen.contains("[=====") && screen.contains("MiB/"), "no progress bar:\n{screen}");
    assert!(screen.contains("stored ") && screen.contains("copies confirmed"), "{screen}");

    term.type_line("stat");
    let screen = wait_for(term, "stat", |s| s.contains("cache ") && s.contains(" used"));
    for label in ["peer id ", "data dir ", "addresses ", "peers ", "blocks ", "stored "] {
        assert!(screen.contains(label), "stat lacks {label}:\n{screen}");
    }
    term.type_line("peers");
    wait_for(term, "peers", |s| s.contains(" connected"));
    term.type_line("ls");
    wait_for(term, "ls", |s| s.contains("ROOT") && s.contains("pinned"));
    // A file's bytes are not printed on the terminal unless asked for.
    term.type_line(&format!("get {ticket}"));
    wait_for(term, "get to the terminal", |s| s.contains("not printing a file on the terminal"));

    // Ctrl-C cancels the running command, not the node: a put that would
    // never end (its input has no end) stops, and the prompt answers.
    term.type_line("put /dev/zero");
    wait_for(term, "the endless put", |s| {
        s.rsplit("put /dev/zero").next().is_some_and(|after| after.contains("MiB"))
    });
    term.ctrl_c();
    wait_for(term, "the cancel", |s| s.contains("cancelled (Ctrl-C again"));
    term.type_line("ls");
    let screen = wait_for(term, "ls after the cancel", |s| {
        s.rsplit("cancelled (Ctrl-C again").next().is_some_and(|after| after.contains("ROOT"))
    });
    let after = screen.rsplit("cancelled (Ctrl-C again").next().unwrap();
    assert!(!after.contains("zero"), "the cancelled put left a file:\n{screen}");
    assert!(!screen.contains("EXITED"), "the node stopped:\n{screen}");

    // At an idle prompt, Ctrl-C stops the node.
    term.ctrl_c();
    wait_for(term, "exit", |s| s.contains("EXITED 0"));
}
