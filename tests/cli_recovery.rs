//! What a person hits in the first hour, against the real binary: a port
//! already taken, a bootstrap address that is wrong or down, space left by
//! a killed put, and a damaged index. Each must fail at once with a line
//! that names the cause, or clean up after itself.

mod cli_support;

use std::{
    fs,
    io::Write,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use cli_support::*;

/// Files under `dir`, recursively.
fn count(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() { count(&path) } else { 1 }
        })
        .sum()
}

/// Block files in a data directory, written or being written.
fn block_files(data_dir: &Path) -> usize {
    count(&data_dir.join("blocks")) + count(&data_dir.join("tmp"))
}

/// Polls `cond` until it holds; fails the test after [`STEP`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {STEP:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a one-shot `put -`, feeds it random bytes until it has stored
/// some blocks, and kills it (SIGKILL: no cleanup of its own can run).
fn kill_a_put_halfway(data_dir: &Path) {
    let before = count(&data_dir.join("blocks"));
    let mut child = dfs(&["put", "-", "--data-dir", data_dir.to_str().unwrap(), "--no-progress"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let deadline = Instant::now() + STEP;
    let mut seed = 0;
    while count(&data_dir.join("blocks")) < before + 4 {
        assert!(Instant::now() < deadline, "the put stored no blocks");
        seed += 1;
        stdin.write_all(&data(1 << 20, seed)).expect("the put reads its input");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_port_in_use_is_an_error_naming_the_address() {
    let tmp = tempfile::tempdir().unwrap();
    let mut first = Node::start("first", &tmp.path().join("a"), &[]);
    let addr = format!("/ip4/127.0.0.1/tcp/{}", first.port());
    let b = tmp.path().join("b");
    let out = run(&["--listen", &addr, "--data-dir", b.to_str().unwrap()], b"");
    let e = assert_one_line_error(&out, 1, "listen on a taken port");
    assert!(e.contains(&format!("cannot listen on {addr}")) && e.contains("in use"), "{e}");
    // The first node still owns its port alone.
    assert_eq!(first.peer_count(), 0);
    first.stop();
}

#[test]
fn bootstrap_failures_name_the_address_and_the_reason_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f.bin");
    fs::write(&file, data(4096, 1)).unwrap();
    let d = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    let ticket = put_file(&tmp.path().join("owner"), &file);

    // Nobody listens on the port, and no other test can take it.
    let reserved = ReservedPort::new();
    let addr = reserved.multiaddr();
    let started = Instant::now();
    let out = run(&["get", &ticket, "--bootstrap", &addr, "--data-dir", &d("c1")], b"");
    let took = started.elapsed();
    let e = assert_one_line_error(&out, 1, "get through a closed port");
    assert!(e.contains(&addr) && e.contains("connection refused"), "{e}");
    // The README promises up to 10 s of waiting for peers.
    assert!(took < Duration::from_secs(10), "took {took:?}: {e}");

    // A node says it too, and keeps running.
    let mut lone = Node::spawn("lone", &tmp.path().join("lone"), &["--bootstrap", &addr]);
    let warning = lone.expect_err(|l| l.contains("cannot reach bootstrap"));
    assert!(warning.contains(&addr) && warning.contains("connection refused"), "{warning}");
    lone.stop();

    // A live node, with another node's peer id in the address.
    let mut node = Node::start("node", &tmp.path().join("node"), &[]);
    let other = run(&["id", "--data-dir", &d("other")], b"");
    let other = last_line(&other);
    let addr = format!("/ip4/127.0.0.1/tcp/{}/p2p/{other}", node.port());
    let out = run(&["get", &ticket, "--bootstrap", &addr, "--data-dir", &d("c2")], b"");
    let e = assert_one_line_error(&out, 1, "get through a wrong peer id");
    assert!(e.contains(&addr) && e.contains(&node.peer_id) && e.contains(&other), "{e}");
    node.stop();

    // No port at all: a usage error before anything runs.
    let out = run(&["get", &ticket, "--bootstrap", "/ip4/127.0.0.1", "--data-dir", &d("c3")], b"");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("/ip4/127.0.0.1"), "{}", text(&out.stderr));
}

#[test]
fn blocks_of_a_killed_put_are_collected_when_the_node_starts_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    kill_a_put_halfway(&dir);
    let left = block_files(&dir);
    assert!(left >= 4, "the killed put left {left} block files");

    let mut node = Node::start("node", &dir, &[]);
    wait_until("the restarted node collects the orphaned blocks", || block_files(&dir) == 0);
    node.send("ls");
    node.expect_out(|l| l.contains("no files"));
    node.stop();
}

#[test]
fn gc_reports_what_it_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let file = tmp.path().join("keep.bin");
    let kept = data(3 << 20, 7);
    fs::write(&file, &kept).unwrap();
    let d = dir.to_str().unwrap();
    let ticket = put_file(&dir, &file);
    let stored = block_files(&dir);

    kill_a_put_halfway(&dir);
    let orphans = block_files(&dir) - stored;
    assert!(orphans > 0);
    let out = run(&["gc", "--data-dir", d], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stderr);
    let line =
        report.lines().find(|l| l.starts_with("collected ")).unwrap_or_else(|| panic!("{report}"));
    let n: usize = line["collected ".len()..].split(' ').next().unwrap().parse().unwrap();
    assert!(n > 0 && n <= orphans, "{line}: {orphans} orphaned block files");
    assert_eq!(block_files(&dir), stored, "{line}");

    // The stored file is whole.
    let out_path = tmp.path().join("out.bin");
    let out = run(&["get", &ticket, "-o", out_path.to_str().unwrap(), "--data-dir", d], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(fs::read(&out_path).unwrap(), kept);
    // A second collection finds nothing.
    let out = run(&["gc", "--data-dir", d], b"");
    assert!(text(&out.stderr).contains("collected 0 blocks"), "{}", text(&out.stderr));
}

#[test]
fn a_damaged_index_is_named_and_rebuilt_from_the_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let d = dir.to_str().unwrap();
    let file = tmp.path().join("f.bin");
    let bytes = data(2 << 20, 9);
    fs::write(&file, &bytes).unwrap();
    let ticket = put_file(&dir, &file);

    fs::write(dir.join("pins.cbor"), b"\xa1\x63not a pin index").unwrap();
    let out_path = tmp.path().join("out.bin");
    let o = out_path.to_str().unwrap();
    let out = run(&["get", &ticket, "-o", o, "--data-dir", d], b"");
    let e = assert_one_line_error(&out, 1, "get with a damaged index");
    assert!(e.contains("pins.cbor") && e.contains("rebuild-index"), "{e}");
    // The identity is still there.
    assert!(run(&["id", "--data-dir", d], b"").status.success());

    let out = run(&["rebuild-index", "--data-dir", d], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["get", &ticket, "-o", o, "--data-dir", d], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(fs::read(&out_path).unwrap(), bytes);
    // Rebuilt as this node's own: collection keeps it.
    assert!(run(&["gc", "--data-dir", d], b"").status.success());
    let out = run(&["get", &ticket, "-o", o, "--force", "--data-dir", d], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
}
