//! Black-box tests of the `dfs-p2p` binary on one machine without a
//! network: one-shot put and get on one data directory, the prompt of a
//! node, bad input everywhere (one clear line, the right exit code, no
//! panic), signals, and a data directory already in use.

mod cli_support;

use std::{
    fs,
    net::{TcpListener, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use cli_support::*;

#[test]
fn one_shot_put_and_get_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let d = dir.to_str().unwrap();
    // 0, 1, a chunk - 1, a chunk, a chunk + 1, several chunks.
    for (i, len) in
        [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 777].into_iter().enumerate()
    {
        let bytes = data(len, i as u64);
        let src = tmp.path().join(format!("in-{i}.bin"));
        fs::write(&src, &bytes).unwrap();

        let out = run(&["put", src.to_str().unwrap(), "--data-dir", d], b"");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let ticket = last_line(&out);
        assert!(is_ticket(&ticket), "{ticket:?}");
        // Nothing serves a copy: the client does not listen, and has no peer.
        let summary = "0 of 3 copies confirmed (no node serves it yet";
        assert!(text(&out.stderr).contains(summary), "{}", text(&out.stderr));

        let dst = tmp.path().join(format!("out-{i}.bin"));
        let out = run(&["get", &ticket, "-o", dst.to_str().unwrap(), "--data-dir", d], b"");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(out.stdout.is_empty(), "get -o prints nothing on stdout");
        assert_eq!(fs::read(&dst).unwrap(), bytes, "size {len}");

        // The same bytes from stdin give the same content, printed to stdout.
        let out = run(&["put", "-", "--data-dir", d], &bytes);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdin_ticket = last_line(&out);
        assert!(is_ticket(&stdin_ticket), "{stdin_ticket:?}");
        let out = run(&["--data-dir", d, "get", &stdin_ticket], b"");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(out.stdout == bytes, "get to stdout, size {len}");
    }
    // No part files are left behind.
    let leftovers: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// `put - --name` records the name standard input lacks, as `ls` shows.
#[test]
fn put_from_stdin_takes_a_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let out = run(&["put", "-", "--name", "notes.txt", "--data-dir", dir.to_str().unwrap()], b"hi");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut node = Node::start("N", &dir, &[]);
    node.send("ls");
    let line = node.expect_out(|l| l.starts_with("bafy"));
    assert!(line.contains("notes.txt"), "{line}");
    node.stop();
}

#[test]
fn get_writes_into_a_device_and_through_a_link_without_replacing_them() {
    use std::os::unix::fs::{FileTypeExt, symlink};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let d = d.to_str().unwrap();
    let bytes = data(3 * (1 << 20) + 5, 41);
    let src = tmp.path().join("in.bin");
    fs::write(&src, &bytes).unwrap();
    let ticket = put_file(Path::new(d), &src);

    // A link to /dev/null: the get writes into the device. Renaming a part
    // file over the path would turn the link into a regular file (and, had
    // the path been /dev/null itself, the device).
    let devnull = tmp.path().join("devnull");
    symlink("/dev/null", &devnull).unwrap();
    let out = run(&["get", &ticket, "-o", devnull.to_str().unwrap(), "--data-dir", d], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(fs::symlink_metadata(&devnull).unwrap().file_type().is_symlink());
    assert!(fs::metadata("/dev/null").unwrap().file_type().is_char_device());

    // A link to a regular file: refused, as the file is, unless --force;
    // then the file gets the bytes and the link stays.
    let real = tmp.path().join("real.bin");
    fs::write(&real, b"old contents").unwrap();
    let link = tmp.path().join("link.bin");
    symlink(&real, &link).unwrap();
    for path in [&real, &link] {
        let out = run(&["get", &ticket, "-o", path.to_str().unwrap(), "--data-dir", d], b"");
        let e = assert_one_line_error(&out, 1, "existing output");
        assert!(e.contains("exists") && e.contains("--force"), "{e}");
        assert_eq!(fs::read(&real).unwrap(), b"old contents");
    }
    let out = run(&["get", &ticket, "-o", link.to_str().unwrap(), "--force", "--data-dir", d], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(fs::read(&real).unwrap(), bytes);

    // A relative link to a file that does not exist yet, through a second
    // link: the file is created where the chain ends, both links stay.
    fs::create_dir(tmp.path().join("sub")).unwrap();
    symlink("sub/new.bin", tmp.path().join("hop")).unwrap();
    let dangling = tmp.path().join("dangling.bin");
    symlink("hop", &dangling).unwrap();
    let out = run(&["get", &ticket, "-o", dangling.to_str().unwrap(), "--data-dir", d], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    for link in [&dangling, &tmp.path().join("hop")] {
        assert!(fs::symlink_metadata(link).unwrap().file_type().is_symlink());
    }
    assert_eq!(fs::read(tmp.path().join("sub/new.bin")).unwrap(), bytes);
}

#[test]
fn a_get_whose_reader_goes_away_stops_quietly() {
    use std::{io::Read, os::unix::process::ExitStatusExt, process::Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let src = tmp.path().join("in.bin");
    fs::write(&src, data(4 << 20, 7)).unwrap();
    let ticket = put_file(&dir, &src);
    // `get T | head -c 10`: read a little, then close the pipe.
    let mut child = dfs(&["get", &ticket, "--data-dir", dir.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let out = wait_output(child, "get into a closed pipe");
    let stderr = text(&out.stderr);
    assert_eq!((out.status.code(), out.status.signal()), (Some(141), None), "{stderr}");
    assert!(!stderr.contains("error"), "no error for a closed pipe: {stderr}");
    // A full disk is an error, though.
    let full = fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let child = dfs(&["get", &ticket, "--data-dir", dir.to_str().unwrap()])
        .stdout(full)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, "get into /dev/full");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no space left") || text(&out.stderr).contains("No space left")
    );
}

/// A root CID no node here holds.
const UNKNOWN_CID: &str = "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";

#[test]
fn one_shot_bad_input_fails_with_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let d = d.to_str().unwrap();
    let file = tmp.path().join("file.txt");
    fs::write(&file, b"hello").unwrap();
    let missing = tmp.path().join("missing.txt");
    // A well-formed ticket whose content only another data dir holds.
    let other = tmp.path().join("other");
    let foreign = put_file(&other, &file);

    let t = tmp.path().to_str().unwrap();
    let fresh = tmp.path().join("fresh");
    let fresh = fresh.to_str().unwrap();
    let long_ticket = format!("{foreign}a");
    let mut cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["frobnicate"], 2, "frobnicate"),
        (vec!["put"], 2, "<FILE|->"),
        (vec!["putt", "x"], 2, "'put'"),
        (vec!["get"], 2, "<TICKET|CID>"),
        (vec!["put", missing.to_str().unwrap(), "--data-dir", d], 1, "no such file"),
        (vec!["put", t, "--data-dir", d], 1, "directory"),
        (vec!["get", "not-a-ticket", "--data-dir", d], 2, "malformed ticket"),
        (vec!["get", "dfsnotbase32!", "--data-dir", d], 2, "malformed ticket"),
        (vec!["get", &foreign, "--data-dir", d], 1, ""),
        (vec!["get", &foreign, "-o", "/nonexistent-dir/x", "--data-dir", d], 1, "does not exist"),
        (vec!["get", &foreign, "-o", t, "--data-dir", d], 1, "directory"),
        (vec!["--listen", "nonsense", "--data-dir", d], 2, "--listen"),
        (vec!["--bootstrap", "/ip4/1.2.3", "put", "-", "--data-dir", d], 2, "--bootstrap"),
        (vec!["--replicas", "zero", "--data-dir", d], 2, "--replicas"),
        (vec!["--cache-size", "big", "--data-dir", d], 2, "--cache-size"),
        (vec!["gc", "--data-dir", fresh], 1, "holds no dfs-p2p node"),
        (vec!["ls", "--data-dir", fresh], 1, "holds no dfs-p2p node"),
        (vec!["stat", "--data-dir", fresh], 1, "holds no dfs-p2p node"),
        (vec!["status", UNKNOWN_CID, "--data-dir", fresh], 1, "no peer to ask"),
        (vec!["put", "x", "--http", "127.0.0.1:8080"], 2, "--http serves a running node's"),
        (vec!["--bootstrap", "127.0.0.1:7001", "put", "-"], 2, "/ip4/127.0.0.1/tcp/7001"),
        // One character too many: said as such.
        (vec!["get", &long_ticket, "--data-dir", d], 2, "1 character more than a ticket has"),
    ];
    if cfg!(feature = "bench") {
        cases.push((vec!["bench"], 2, "store, net"));
        cases.push((vec!["bench", "store", "--size", "huge"], 2, "--size"));
    } else {
        // A build without the benchmarks has no such command.
        cases.push((vec!["bench", "store"], 2, "'bench'"));
    }
    for (args, code, needle) in cases {
        let out = run(&args, b"");
        let line = assert_one_line_error(&out, code, &format!("{args:?}"));
        assert!(line.contains(needle), "{args:?}: {line}");
        assert!(!line.contains("Os {") && !line.contains("kind:"), "Debug form: {line}");
    }
    // `gc`, `ls`, `stat` and `status` made no node where there was none.
    assert!(!std::path::Path::new(fresh).exists());
    // A ticket typed in capitals reads the same.
    let out = run(&["get", &foreign.to_uppercase(), "--data-dir", other.to_str().unwrap()], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"hello");

    if unsafe { libc::geteuid() } != 0 {
        let locked = tmp.path().join("locked.txt");
        fs::write(&locked, b"x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
        let out = run(&["put", locked.to_str().unwrap(), "--data-dir", d], b"");
        let line = assert_one_line_error(&out, 1, "unreadable file");
        assert!(line.contains("permission denied"), "{line}");
    }
}

#[test]
fn help_and_version_succeed() {
    let out = run(&["--help"], b"");
    assert!(out.status.success());
    let help = text(&out.stdout);
    for word in ["put", "get", "id", "--listen", "--bootstrap", "--data-dir", "--replicas"] {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }
    // Only a build with `--features bench` has the benchmarks.
    assert_eq!(help.contains("bench"), cfg!(feature = "bench"), "{help}");
    let out = run(&["--version"], b"");
    assert!(out.status.success());
    assert!(text(&out.stdout).starts_with("dfs-p2p "));
}

#[test]
fn id_prints_the_peer_id_the_node_uses() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let out = run(&["id", "--data-dir", d.to_str().unwrap()], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = last_line(&out);
    assert!(id.starts_with("12D3KooW"), "{id}");
    let again = run(&["id", "--data-dir", d.to_str().unwrap()], b"");
    assert_eq!(last_line(&again), id, "the identity is kept");

    let mut node = Node::start("node", &d, &[]);
    assert_eq!(node.peer_id, id);
    node.stop();
}

#[test]
fn the_data_dir_can_also_be_set_by_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("env-data");
    let out = dfs(&["id"]).env("DFS_DATA_DIR", &d).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(d.join("identity.key").exists());
}

#[test]
fn a_data_dir_in_use_is_refused_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let file = tmp.path().join("f");
    fs::write(&file, b"x").unwrap();
    let mut node = Node::start("node", &d, &[]);
    let ds = d.to_str().unwrap();

    // A put goes through the node (its control socket); a command that
    // needs the directory to itself is refused.
    let out = run(&["put", file.to_str().unwrap(), "--data-dir", ds], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["rebuild-index", "--data-dir", ds], b"");
    let line = assert_one_line_error(&out, 1, "rebuild-index on a dir in use");
    assert!(line.contains("in use"), "{line}");

    let out = run(&["--data-dir", ds, "--listen", "/ip4/127.0.0.1/tcp/0"], b"");
    let line = assert_one_line_error(&out, 1, "second node on a dir in use");
    assert!(line.contains("in use"), "{line}");

    assert!(node.try_wait().is_none(), "the first node keeps running");
    node.stop();
}

#[test]
fn a_listen_address_that_cannot_be_bound_fails_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = format!("/ip4/127.0.0.1/tcp/{}", held.local_addr().unwrap().port());
    for addr in [busy.as_str(), "/ip4/127.0.0.1/udp/0"] {
        let d = tmp.path().join("data");
        let out = run(&["--data-dir", d.to_str().unwrap(), "--listen", addr], b"");
        let line = assert_one_line_error(&out, 1, addr);
        assert!(line.contains(addr.split('/').nth(2).unwrap()), "{line}");
    }
}

#[test]
fn the_prompt_reports_bad_commands_and_keeps_running() {
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("other");
    let small = tmp.path().join("small file.txt");
    fs::write(&small, b"hello, world\n").unwrap();
    let foreign = put_file(&other, &small);
    let mut node = Node::start("node", &tmp.path().join("data"), &[]);

    let missing = tmp.path().join("missing");
    let bad = [
        "frobnicate".to_string(),
        "put".into(),
        format!("put {}", missing.display()),
        format!("put {}", tmp.path().display()),
        "put \"unterminated".into(),
        "put -".into(),
        "get not-a-ticket".into(),
        "get dfs!!!".into(),
        format!("get {foreign} /nonexistent-dir/out"),
        "delete nonsense".into(),
        "providers nonsense".into(),
        "ls extra".into(),
        "x".repeat(70_000),
        format!("get {foreign} {}", tmp.path().join("never").display()),
    ];
    for command in &bad {
        node.send(command);
        let line = node.expect_error();
        assert!(line.len() < 300, "{line}");
        assert!(node.try_wait().is_none(), "the node exited after {command:?}");
    }
    assert!(!tmp.path().join("never").exists(), "a failed get leaves no file");

    // Good commands still work.
    node.send("help");
    node.expect_out(|l| l.contains("providers <cid-or-ticket>"));
    let ticket = node.put(&small);
    node.send("ls");
    let root_line = node.expect_out(|l| l.contains("pinned"));
    assert!(root_line.contains("this node"), "{root_line}");
    node.expect_out(|l| l.starts_with("1 root,"));
    let out = tmp.path().join("copy.txt");
    node.get(&ticket, &out).expect("get at the prompt");
    assert_eq!(fs::read(&out).unwrap(), b"hello, world\n");
    node.send(&format!("get {ticket}"));
    node.expect_out(|l| l == "hello, world");
    node.send("stat");
    let id = node.peer_id.clone();
    node.expect_out(|l| l.starts_with("peer id") && l.contains(&id));
    node.expect_out(|l| l.starts_with("cache"));
    node.send("peers");
    node.expect_out(|l| l.contains("connected"));
    node.send(&format!("delete {ticket}"));
    node.outcome(|l| l.starts_with("deleted ")).expect("delete");
    node.send("ls");
    node.expect_out(|l| l == "no files stored");
    node.send(&format!("delete {ticket}"));
    node.expect_error();

    node.send("quit");
    let status = node.wait_exit();
    assert!(status.success(), "quit: {status:?}");
}

#[test]
fn end_of_input_does_not_stop_a_node() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::start("node", &tmp.path().join("data"), &[]);
    node.close_stdin();
    node.expect_err(|l| l.starts_with("end of input"));
    // Still serving: its port accepts connections and the process lives.
    TcpStream::connect(("127.0.0.1", node.port())).expect("the node still listens");
    assert!(node.try_wait().is_none());
    node.stop();
    assert!(node.seen.iter().any(|l| matches!(l, Line::Err(s) if s == "shutting down")));
}

#[test]
fn ctrl_c_stops_a_node_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::start("node", &tmp.path().join("data"), &[]);
    node.signal(libc::SIGINT);
    let status = node.wait_exit();
    assert!(status.success(), "SIGINT: {status:?}");
}

#[test]
fn an_interrupted_one_shot_put_exits_130() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    // `put -` whose stdin never ends.
    let child = dfs(&["put", "-", "--data-dir", d.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The store's lock file appears only after the signal handlers are set.
    let deadline = Instant::now() + STEP;
    while !d.join("lock").exists() {
        assert!(Instant::now() < deadline, "the put never opened its data dir");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("interrupted"));
    assert!(out.stdout.is_empty(), "no ticket for an interrupted put");
}

#[cfg(feature = "bench")]
#[test]
fn bench_store_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(&["bench", "store", "--size", "1MiB", "--chunk-size", "64KiB", "--dir"], b"");
    assert_eq!(out.status.code(), Some(2), "--dir needs a value");
    let out = run(
        &[
            "bench",
            "store",
            "--size",
            "1MiB",
            "--chunk-size",
            "64KiB",
            "--dir",
            tmp.path().to_str().unwrap(),
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 4, "four lines:\n{report}");

    // 1 MiB in 64 KiB chunks: 16 leaves under one root (far below a
    // structure node's link limit).
    assert_eq!(lines[0], "store benchmark: 1 MiB file, 64 KiB chunks, 17 blocks", "{report}");
    const MB: f64 = 1_048_576.0 / 1e6;
    for (line, label) in
        [(lines[1], "disk baseline:"), (lines[2], "import (synced):"), (lines[3], "export:")]
    {
        let fields: Vec<&str> = line
            .strip_prefix(label)
            .unwrap_or_else(|| panic!("no {label:?} line:\n{report}"))
            .split_whitespace()
            .collect();
        let number = |i: usize| -> f64 {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .unwrap_or_else(|| panic!("field {i} of {label:?} is not a number:\n{report}"))
        };
        assert!(fields.len() >= 4, "{label}\n{report}");
        assert_eq!((fields[1], fields[3]), ("MB/s", "s"), "{label}\n{report}");
        let (rate, secs) = (number(0), number(2));
        assert!(rate > 0.0, "{label} at {rate} MB/s:\n{report}");
        // Rate and time agree with the size, within the rounding of each
        // printed figure (0.05 MB/s, 0.005 s).
        assert!(
            (rate + 0.05) * (secs + 0.005) >= MB && (rate - 0.05) * (secs - 0.005) <= MB,
            "{label} {rate} MB/s in {secs} s is not 1 MiB:\n{report}"
        );
        if label == "disk baseline:" {
            assert!(line.ends_with("(one plain file, one fsync)"), "{report}");
            continue;
        }
        // CPU seconds, then peak RSS in MiB (known on Linux).
        assert_eq!(fields.len(), 11, "{label}\n{report}");
        assert_eq!((fields[4], fields[6]), ("CPU", "s"), "{label}\n{report}");
        assert!(number(5) >= 0.0, "{label}\n{report}");
        assert_eq!((fields[7], fields[8], fields[10]), ("peak", "RSS", "MiB"), "{label}\n{report}");
        assert!(number(9) > 0.0, "{label}: no peak RSS\n{report}");
    }
}

/// Each subcommand's help lists the options it uses, not every option of a
/// node (which clap would show under each, as they are global).
#[test]
fn each_subcommand_help_shows_its_own_options() {
    let help = |args: &[&str]| {
        let out = run(args, b"");
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    for args in [&["gc", "--help"][..], &["gc", "-h"], &["help", "gc"], &["ls", "-h"]] {
        let text = help(args);
        assert!(text.contains("--data-dir"), "{args:?}: {text}");
        for node_only in ["--replicas", "--cache-size", "--repair-interval", "--bootstrap"] {
            assert!(!text.contains(node_only), "{args:?} shows {node_only}: {text}");
        }
    }
    let put = help(&["put", "--help"]);
    for option in ["--min-copies", "--name", "--bootstrap", "--replicas", "--data-dir"] {
        assert!(put.contains(option), "put --help lacks {option}: {put}");
    }
    assert!(!put.contains("--cache-size") && !put.contains("--accept-replicas-from"), "{put}");
    // Every option is still taken wherever it is given.
    let top = help(&["--help"]);
    assert!(top.contains("--cache-size") && top.contains("--repair-interval"), "{top}");
}
