//! Black-box tests of the `dfs-p2p` binary over a real network on
//! 127.0.0.1: the original three-node demo, and one-shot put and get
//! against a running network. Every node listens on port 0; the tests read
//! the addresses the nodes print on stderr.

mod cli_support;

use std::{fs, path::Path, process::Stdio};

use cli_support::*;

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The demo: three nodes, the third bootstrapping from the first two;
/// files of several sizes put through the third; the third's copies
/// deleted (it is stopped and its data directory removed); every file
/// fetched back through the network by a node that never had it, and by
/// the first node; the bytes identical.
#[test]
fn three_node_demo() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Node::start("A", &tmp.path().join("a"), &[]);
    let mut b = Node::start("B", &tmp.path().join("b"), &[]);
    let (a_addr, b_addr) = (a.addrs[0].clone(), b.addrs[0].clone());
    let c_dir = tmp.path().join("c");
    let mut c = Node::start("C", &c_dir, &["--bootstrap", &a_addr, "--bootstrap", &b_addr]);
    c.wait_for_peers(2);

    // 0, 1, a chunk - 1, a chunk, a chunk + 1, several chunks.
    let sizes = [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 5 * (1 << 20) + 12_345];
    let mut files = Vec::new();
    for (i, len) in sizes.into_iter().enumerate() {
        let bytes = data(len, 100 + i as u64);
        let path = tmp.path().join(format!("file {i}.bin"));
        fs::write(&path, &bytes).unwrap();
        let (ticket, copies) = c.put_confirmed(&path);
        assert!(copies >= 2, "size {len}: only {copies} copies confirmed");
        files.push((ticket, bytes));
    }

    // Delete the third node's local copies: stop it and remove its data.
    c.stop();
    fs::remove_dir_all(&c_dir).unwrap();

    // A node that never had the files fetches them through the network.
    let mut d = Node::start("D", &tmp.path().join("d"), &["--bootstrap", &a_addr]);
    d.wait_for_peers(1);
    for (i, (ticket, bytes)) in files.iter().enumerate() {
        let out = tmp.path().join(format!("d-{i}.out"));
        let status = d.get(ticket, &out).unwrap_or_else(|e| panic!("D get {i}: {e}"));
        assert_eq!(&fs::read(&out).unwrap(), bytes, "D, file {i}");
        if !bytes.is_empty() {
            assert!(!status.contains(" 0 blocks from the network"), "D, file {i}: {status}");
        }
    }
    // And so does the first node.
    for (i, (ticket, bytes)) in files.iter().enumerate() {
        let out = tmp.path().join(format!("a-{i}.out"));
        a.get(ticket, &out).unwrap_or_else(|e| panic!("A get {i}: {e}"));
        assert_eq!(&fs::read(&out).unwrap(), bytes, "A, file {i}");
    }
    d.send("stat");
    d.expect_out(|l| l.starts_with("peers") && !l.ends_with(" 0"));
    // D only fetched the file: its delete removes its own copy, says at once
    // that it is not the owner, and asks nobody else.
    d.send(&format!("delete {}", files[5].0));
    let said = d.expect_err(|l| l.starts_with("deleted "));
    assert!(said.contains("is not its owner"), "{said}");

    for node in [&mut a, &mut b, &mut d] {
        node.stop();
    }
}

/// One-shot put and get against a running network: `put -` from stdin,
/// `put FILE`, `get` to stdout and to a file, each through its own data
/// directory; a get of content nobody has fails with one line.
#[test]
fn one_shot_put_and_get_against_a_running_network() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Node::start("A", &tmp.path().join("a"), &[]);
    let a_addr = a.addrs[0].clone();
    let mut b = Node::start("B", &tmp.path().join("b"), &["--bootstrap", &a_addr]);
    let b_addr = b.addrs[0].clone();
    b.wait_for_peers(1);
    let dir = |name: &str| tmp.path().join(name);

    // put - (stdin), then get to stdout through another client.
    let bytes = data(2 * (1 << 20) + 99, 7);
    let out = run(&["put", "-", "--bootstrap", &a_addr, "--data-dir", arg(&dir("c1"))], &bytes);
    assert!(out.status.success(), "put -: {}", text(&out.stderr));
    let ticket = last_line(&out);
    assert!(is_ticket(&ticket), "{ticket:?}");
    let stderr = text(&out.stderr);
    let copies = stderr.lines().find(|l| l.starts_with("stored ")).map(parse_copies);
    assert!(copies.unwrap_or(0) >= 2, "put - : {stderr}");

    let out = run(&["get", &ticket, "--bootstrap", &b_addr, "--data-dir", arg(&dir("c2"))], b"");
    assert!(out.status.success(), "get to stdout: {}", text(&out.stderr));
    assert!(out.stdout == bytes, "get to stdout: wrong bytes");

    // put FILE, then get -o through a bootstrap address without /p2p/.
    let file = dir("input.bin");
    let bytes = data(300_000, 8);
    fs::write(&file, &bytes).unwrap();
    let out = run(&["put", arg(&file), "--bootstrap", &b_addr, "--data-dir", arg(&dir("c3"))], b"");
    assert!(out.status.success(), "put FILE: {}", text(&out.stderr));
    let ticket = last_line(&out);
    let bare = a_addr.split("/p2p/").next().unwrap().to_string();
    let dst = dir("output.bin");
    let out = run(
        &["get", &ticket, "-o", arg(&dst), "--bootstrap", &bare, "--data-dir", arg(&dir("c4"))],
        b"",
    );
    assert!(out.status.success(), "get -o: {}", text(&out.stderr));
    assert_eq!(fs::read(&dst).unwrap(), bytes);

    // Content that exists nowhere on the network.
    let isolated = run(&["put", "-", "--data-dir", arg(&dir("isolated"))], b"only here");
    let nowhere = last_line(&isolated);
    assert!(is_ticket(&nowhere));
    let out = run(&["get", &nowhere, "--bootstrap", &a_addr, "--data-dir", arg(&dir("c5"))], b"");
    assert_one_line_error(&out, 1, "get of missing content");
    assert!(out.stdout.is_empty());

    a.stop();
    b.stop();
}

/// With no peer reachable, a one-shot put stores the file locally, says so,
/// and succeeds, unless `--min-copies` asks for copies; a get and a status
/// with no peer say that no peer was asked.
#[test]
fn a_one_shot_put_with_no_reachable_peer_stores_locally() {
    let tmp = tempfile::tempdir().unwrap();
    // A port nobody listens on, and no other test can take.
    let reserved = ReservedPort::new();
    let closed = reserved.multiaddr();
    let d = tmp.path().join("data");
    let out = run(&["put", "-", "--bootstrap", &closed, "--data-dir", arg(&d)], b"lonely bytes");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ticket = last_line(&out);
    assert!(is_ticket(&ticket), "{ticket:?}");
    let stderr = text(&out.stderr);
    let copies = stderr.lines().find(|l| l.starts_with("stored ")).map(parse_copies);
    // The client serves nobody, and no node took a replica.
    assert_eq!(copies, Some(0), "{stderr}");
    // A one-shot run's log lines carry no timestamp (without -v).
    let stamped = |l: &str| l.len() > 20 && l.as_bytes()[4] == b'-' && l.as_bytes()[10] == b'T';
    assert!(!stderr.lines().any(stamped), "{stderr}");
    assert!(stderr.contains("only this data directory holds it"), "{stderr}");

    let out = run(&["get", &ticket, "--data-dir", arg(&d)], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"lonely bytes");

    // A script that needs copies says how many: the ticket still comes,
    // and the exit code says the copies did not.
    let args = ["put", "-", "--bootstrap", &closed, "--data-dir", arg(&d), "--min-copies", "1"];
    let out = run(&args, b"more lonely bytes");
    assert!(is_ticket(&last_line(&out)), "{}", text(&out.stdout));
    let error = assert_one_line_error(&out, 3, "put --min-copies 1");
    assert!(error.contains("0 of the 1 copies"), "{error}");

    // Without any peer, a get of what is not here and a status say that
    // nobody was asked.
    let other = tmp.path().join("other");
    let out = run(&["get", &ticket, "--data-dir", arg(&other)], b"");
    let error = assert_one_line_error(&out, 1, "get with no peer");
    assert!(error.contains("no peer to ask"), "{error}");
    let out = run(&["status", &ticket, "--data-dir", arg(&other)], b"");
    let error = assert_one_line_error(&out, 1, "status with no peer");
    assert!(error.contains("no peer to ask"), "{error}");
}

/// Runs `dfs-p2p bench net ARGS` (a build with `--features bench`) with
/// its own TMPDIR; returns that directory and the report, once it
/// succeeded.
#[cfg(feature = "bench")]
fn bench_net(args: &[&str], what: &str) -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    let child = dfs(&[&["bench", "net"], args].concat())
        .env("TMPDIR", tmp.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, what);
    assert!(out.status.success(), "{}", text(&out.stderr));
    (tmp, text(&out.stdout))
}

/// `bench net` through the binary: the serving node and the raw stream's
/// serving end run as child processes, and the report covers both nodes
/// and both baselines.
#[cfg(feature = "bench")]
#[test]
fn bench_net_reports_both_nodes_and_both_baselines() {
    let (tmp, report) = bench_net(&["--size", "4MiB"], "bench net");
    for wanted in ["get:", "two processes", "one process", "get / raw", "serving node"] {
        assert!(report.contains(wanted), "no {wanted:?} in:\n{report}");
    }
    // Everything it made under TMPDIR is gone.
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0, "{report}");
}

/// `bench net` with links through the binary: two serving nodes in child
/// processes, each behind its own link, the links in a process of their
/// own; every get went through the links, and nothing is left behind.
#[cfg(feature = "bench")]
#[test]
fn bench_net_through_links_reports_every_node() {
    let (tmp, report) =
        bench_net(&["--size", "4MiB", "--providers", "2", "--rtt", "10"], "bench net with links");
    for wanted in [
        "from 2 providers, each behind a link of unlimited rate, 10 ms round trip",
        "get / raw",
        "per link",
        "every get through them",
        "serving nodes together",
        "links",
    ] {
        assert!(report.contains(wanted), "no {wanted:?} in:\n{report}");
    }
    assert!(!report.contains("WARNING"), "{report}");
    assert!(!report.contains("n/a"), "{report}");
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0, "{report}");
}

/// What `dfs-p2p status` says: (copies answering, target, holders).
fn status(ticket: &str, bootstrap: &str, dir: &Path) -> (usize, String, Vec<String>) {
    let out = run(&["status", ticket, "--bootstrap", bootstrap, "--data-dir", arg(dir)], b"");
    assert!(out.status.success(), "status: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let copies = stdout.lines().find_map(|l| l.strip_prefix("copies: ")).expect("a copies line");
    let (count, target) = copies.split_once(" proven of ").expect("N proven of M");
    // "3", "unknown (...)", or "3 (1 extra: ...)".
    let target = target.split(' ').next().unwrap();
    let holders = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("holder: "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    (count.parse().unwrap(), target.to_string(), holders)
}

/// Polls `status` until `done` accepts its answer, which must name the
/// copies wanted as `target` says.
fn status_until(
    ticket: &str,
    (bootstrap, dir): (&str, &Path),
    target_said: &str,
    what: &str,
    done: impl Fn(usize, &[String]) -> bool,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + STEP;
    loop {
        let (count, target, holders) = status(ticket, bootstrap, dir);
        if done(count, &holders) {
            assert_eq!(target, target_said, "{what}");
            return holders;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {count} of {target}: {holders:?}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Kills (SIGKILL) the nodes with these peer ids.
fn kill(nodes: &mut [Node], ids: &[String]) {
    for node in nodes.iter_mut().filter(|n| ids.contains(&n.peer_id)) {
        node.signal(libc::SIGKILL);
        node.wait_exit();
    }
}

/// The address of a node still running.
fn alive_addr(nodes: &mut [Node]) -> String {
    for node in nodes.iter_mut() {
        if node.try_wait().is_none() {
            return node.addrs[0].clone();
        }
    }
    panic!("no node alive")
}

/// Nodes started from the command line with a short repair interval: two
/// holders of a file are killed, then its uploader; each time `status`
/// shows the count back at 3, and a client gets the file from nodes that
/// were not holders at the put.
#[test]
fn killed_holders_are_replaced_and_status_shows_the_count() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| tmp.path().join(name);
    let repair = ["--repair-interval", "1s"];
    let mut nodes = vec![Node::start("N0", &dir("n0"), &repair)];
    let hub = nodes[0].addrs[0].clone();
    for i in 1..7 {
        let extra = ["--repair-interval", "1s", "--bootstrap", &hub];
        nodes.push(Node::start(&format!("N{i}"), &dir(&format!("n{i}")), &extra));
    }
    for node in &mut nodes {
        node.wait_for_peers(1);
    }
    let file = dir("movie.bin");
    let bytes = data(700_000, 21);
    fs::write(&file, &bytes).unwrap();
    let (ticket, copies) = nodes[1].put_confirmed(&file);
    assert_eq!(copies, 3);
    let uploader = nodes[1].peer_id.clone();
    // Asked through the owner (its running node), the holders tell the
    // copies wanted; asked from elsewhere, they tell only who holds it.
    let (owner, ask) = (dir("n1"), dir("ask"));
    let first = status_until(&ticket, (&hub, &owner), "3", "after the put", |n, _| n == 3);
    assert!(first.contains(&uploader));
    let (_, target, _) = status(&ticket, &hub, &ask);
    assert!(target.starts_with("unknown"), "a stranger was told the target: {target}");

    let others: Vec<String> = first.iter().filter(|p| **p != uploader).cloned().collect();
    kill(&mut nodes, &others);
    let via = alive_addr(&mut nodes);
    status_until(&ticket, (&via, &owner), "3", "after two holders died", |n, holders| {
        n == 3 && !holders.iter().any(|p| others.contains(p))
    });
    kill(&mut nodes, std::slice::from_ref(&uploader));
    let through = alive_addr(&mut nodes);
    let now =
        status_until(&ticket, (&through, &ask), "unknown", "after the kills", |n, holders| {
            n == 3 && !holders.iter().any(|p| first.contains(p))
        });
    assert_eq!(now.len(), 3);
    let out = run(&["get", &ticket, "--bootstrap", &through, "--data-dir", arg(&dir("c"))], b"");
    assert!(out.status.success(), "get: {}", text(&out.stderr));
    assert!(out.stdout == bytes, "wrong bytes");
}

/// One-shot puts from one data directory, back to back: each is a new
/// process with the peer id of the one before, and the holders that pull
/// from it must use its new connection at once, not the block streams of
/// the process before it (which failed their requests, and the holders
/// rested the peer 1 s, 2 s, 4 s before asking again).
#[test]
fn back_to_back_one_shot_puts_from_one_data_dir_confirm_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    // Debug logs: a holder that rests a peer says so.
    let mut a = Node::start("A", &tmp.path().join("a"), &["-v"]);
    let a_addr = a.addrs[0].clone();
    let mut b = Node::start("B", &tmp.path().join("b"), &["-v", "--bootstrap", &a_addr]);
    b.wait_for_peers(1);
    let client = tmp.path().join("client");
    let mut took = Vec::new();
    for i in 0..20 {
        let file = tmp.path().join(format!("file-{i}"));
        fs::write(&file, data((3 << 20) + 777, 500 + i)).unwrap();
        let started = std::time::Instant::now();
        let out =
            run(&["put", arg(&file), "--bootstrap", &a_addr, "--data-dir", arg(&client)], b"");
        took.push(started.elapsed());
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "put {i}: {stderr}");
        let copies = stderr.lines().find(|l| l.starts_with("stored ")).map(parse_copies);
        assert_eq!(copies, Some(2), "put {i}: {stderr}");
    }
    eprintln!("put times: {took:?}");
    // Each put is a new process with the same peer id. A holder that kept
    // the previous process's block stream failed on it, rested the peer
    // (1 s, then 2 s more) and could fail the copy: no holder rests it
    // now. Each put is a process start, an import and two pulls over
    // loopback, about 0.2 s when the machine is quiet.
    let client_id = run(&["id", "--data-dir", arg(&client)], b"");
    let client_id = text(&client_id.stdout).trim().to_string();
    a.stop();
    b.stop();
    for node in [&a, &b] {
        let rested = node.seen.iter().find(|l| match l {
            Line::Err(l) => {
                l.contains(&client_id)
                    && (l.contains(" rests: ") || l.contains("dropping provider"))
            }
            Line::Out(_) => false,
        });
        assert!(
            rested.is_none(),
            "{} rested the client: {rested:?}; put times: {took:?}",
            node.name
        );
    }
    let slowest = took.iter().max().unwrap();
    assert!(slowest.as_secs_f64() < 10.0, "put times: {took:?}");
}

/// The blocks under a data directory's `blocks/`.
fn blocks_in(data_dir: &Path) -> usize {
    let Ok(shards) = fs::read_dir(data_dir.join("blocks")) else { return 0 };
    shards.flatten().filter_map(|s| fs::read_dir(s.path()).ok()).map(|d| d.count()).sum()
}

/// A one-shot get killed (SIGKILL) halfway leaves what it stored as part of
/// the file, and a rerun from the same data directory fetches only the
/// rest: the collection at the rerun's start spares the blocks.
#[test]
fn a_killed_one_shot_get_resumes_from_what_it_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Node::start("A", &tmp.path().join("a"), &["--replicas", "1"]);
    let a_addr = a.addrs[0].clone();
    let file = tmp.path().join("big.bin");
    let bytes = data(256 << 20, 77);
    fs::write(&file, &bytes).unwrap();
    let ticket = a.put(&file);
    let client = tmp.path().join("client");
    let out = tmp.path().join("out.bin");
    let get = ["get", &ticket, "-o", arg(&out), "--bootstrap", &a_addr, "--data-dir", arg(&client)];

    // Killed once a quarter of its 256 leaves are stored.
    let mut first = dfs(&get).stdin(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + STEP;
    while blocks_in(&client) < 64 {
        assert!(first.try_wait().unwrap().is_none(), "the get ended before it was killed");
        assert!(std::time::Instant::now() < deadline, "the get stored nothing");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    first.kill().unwrap();
    assert!(first.wait().unwrap().code().is_none(), "the get was not killed");
    let kept = blocks_in(&client);
    let _ = fs::remove_file(&out);

    let rerun = run(&get, b"");
    let stderr = text(&rerun.stderr);
    assert!(rerun.status.success(), "rerun: {stderr}");
    assert!(fs::read(&out).unwrap() == bytes, "rerun: wrong bytes");
    let line =
        stderr.lines().find(|l| l.starts_with("wrote ")).unwrap_or_else(|| panic!("{stderr}"));
    let fetched: usize =
        line.rsplit_once(", ").unwrap().1.split(' ').next().unwrap().parse().unwrap();
    // 256 leaves and 2 structure nodes in all; what was kept is not fetched
    // again.
    assert!(fetched + kept <= 258, "{kept} blocks kept, then {fetched} fetched: {line}");
    a.stop();
}

/// A bootstrap address that is another kind of server (here, one that
/// answers HTTP) is named as such, not as "invalid data".
#[test]
fn a_bootstrap_address_that_is_not_a_node_is_named_as_such() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = http.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in http.incoming().flatten() {
            // Answers a request it cannot parse as a web server does: a
            // status line, headers and an HTML page; then closes.
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut request = [0u8; 512];
                let _ = stream.read(&mut request);
                let page = "<html><head><title>Error response</title></head><body><h1>Error \
                            response</h1><p>Error code: 400</p><p>Message: Bad request \
                            syntax.</p></body></html>\n";
                let answer = format!(
                    "HTTP/1.0 400 Bad request\r\nServer: SimpleHTTP/0.6\r\nContent-Type: \
                     text/html\r\nContent-Length: {}\r\n\r\n{page}",
                    page.len()
                );
                let _ = stream.write_all(answer.as_bytes());
            });
        }
    });
    let ticket = put_file(&tmp.path().join("owner"), &{
        let file = tmp.path().join("f");
        fs::write(&file, b"some bytes").unwrap();
        file
    });
    let bootstrap = format!("/ip4/127.0.0.1/tcp/{port}");
    let client = tmp.path().join("c");
    let args = ["get", &ticket, "--bootstrap", &bootstrap, "--data-dir", arg(&client)];
    let out = run(&args, b"");
    let error = assert_one_line_error(&out, 1, "get through an HTTP server");
    assert!(error.contains("does not speak dfs-p2p"), "{error}");
}

/// Sends SIGINT to the running command once `ready` holds (`what`, for a
/// failure), and checks that it exits with 130.
fn interrupt_once(command: &mut Node, what: &str, ready: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + STEP;
    while !ready() {
        assert!(command.try_wait().is_none(), "it ended before {what}: {:#?}", command.seen);
        assert!(std::time::Instant::now() < deadline, "never {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    command.signal(libc::SIGINT);
    let status = command.wait_exit();
    assert_eq!(status.code(), Some(130), "{:#?}", command.seen);
}

/// A one-shot put interrupted (SIGINT) while its copies are being made
/// leaves nothing: not pinned in its data directory, no block left there,
/// and no copy on the peers it had asked.
#[test]
fn an_interrupted_put_leaves_nothing_pinned_here_or_on_its_peers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Node::start("A", &tmp.path().join("a"), &[]);
    let a_addr = a.addrs[0].clone();
    let mut b = Node::start("B", &tmp.path().join("b"), &["--bootstrap", &a_addr]);
    b.wait_for_peers(1);
    let file = tmp.path().join("big.bin");
    fs::write(&file, data(256 << 20, 78)).unwrap();
    let client = tmp.path().join("client");
    let args = ["--no-progress", "--data-dir", arg(&client), "--bootstrap", &a_addr];
    let mut put = Node::spawn_command("put", &client, &[&args[..], &["put", arg(&file)]].concat());
    put.expect_err(|l| l.starts_with("asking peers for "));
    // The copies are under way: a holder has some of the file's blocks.
    let (a_dir, b_dir) = (a.data_dir.clone(), b.data_dir.clone());
    interrupt_once(&mut put, "holders pulled blocks", || {
        blocks_in(&a_dir) + blocks_in(&b_dir) >= 16
    });
    assert!(!put.seen.iter().any(|l| matches!(l, Line::Out(t) if is_ticket(t))), "a ticket");

    // Nothing pinned and no block left in the client's data directory...
    let store = dfs_p2p::store::Store::open(client.clone(), Default::default()).unwrap();
    assert!(store.roots().is_empty(), "pinned: {:?}", store.roots());
    drop(store);
    assert_eq!(blocks_in(&client), 0, "blocks left in the client's data directory");
    // ...and no copy held for it on either peer.
    for node in [&mut a, &mut b] {
        node.send("ls");
        let line = node.expect_out(|l| l.contains("no files stored") || l.contains("root"));
        assert_eq!(line, "no files stored", "{}: {:#?}", node.name, node.seen);
    }
    a.stop();
    b.stop();
}

/// One-shot commands on a running node's data directory run through that
/// node (its control socket), with the output and exit codes a one-shot
/// gives on its own; nobody else on the machine can use the socket.
#[test]
fn one_shot_commands_run_through_the_node_running_on_their_data_dir() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let mut a = Node::start("A", &dir, &["--replicas", "1"]);
    let on = |args: &[&str], stdin: &[u8]| {
        let mut all = args.to_vec();
        all.extend(["--data-dir", arg(&dir)]);
        run(&all, stdin)
    };
    let mode = fs::metadata(dir.join("control.sock")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let id = on(&["id"], b"");
    assert!(id.status.success(), "{}", text(&id.stderr));
    assert_eq!(text(&id.stdout).trim(), a.peer_id);

    let file = tmp.path().join("one.bin");
    let bytes = data((2 << 20) + 5, 90);
    fs::write(&file, &bytes).unwrap();
    let put = on(&["put", arg(&file)], b"");
    assert!(put.status.success(), "{}", text(&put.stderr));
    let ticket = last_line(&put);
    assert!(is_ticket(&ticket), "{ticket}");
    assert!(text(&put.stderr).contains("1 of 1 copies confirmed"), "{}", text(&put.stderr));
    // The node itself holds it: its prompt lists it.
    a.send("ls");
    a.expect_out(|l| l.contains("one.bin"));

    let piped = on(&["put", "-", "--name", "piped.bin"], &bytes[..1000]);
    assert!(piped.status.success(), "{}", text(&piped.stderr));
    let piped_ticket = last_line(&piped);
    let ls = on(&["ls"], b"");
    assert!(ls.status.success());
    assert!(text(&ls.stdout).contains("one.bin") && text(&ls.stdout).contains("piped.bin"));

    // Gets: to stdout, into a file (a path relative to the client's
    // working directory), and a range.
    let got = on(&["get", &ticket], b"");
    assert!(got.status.success() && got.stdout == bytes, "{}", text(&got.stderr));
    let got = dfs(&["get", &piped_ticket, "-o", "out.bin", "--data-dir", arg(&dir)])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(got.status.success(), "{}", text(&got.stderr));
    assert!(text(&got.stderr).starts_with("wrote out.bin (1000 B"), "{}", text(&got.stderr));
    assert_eq!(fs::read(tmp.path().join("out.bin")).unwrap(), &bytes[..1000]);
    let range = on(&["get", &ticket, "--range", "10-19"], b"");
    assert_eq!(range.stdout, &bytes[10..20]);

    // Tickets are recoverable: listed, and a CID of a file the node put
    // gets it.
    let tickets = on(&["ls", "--tickets"], b"");
    assert!(text(&tickets.stdout).contains(&format!("{ticket}  one.bin")), "{tickets:?}");
    let root = ticket.parse::<dfs_p2p::Ticket>().unwrap().root.to_string();
    let by_cid = on(&["get", &root], b"");
    assert!(by_cid.status.success() && by_cid.stdout == bytes, "{}", text(&by_cid.stderr));
    let unknown = "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    let error = assert_one_line_error(&on(&["get", unknown], b""), 1, "get of an unknown CID");
    assert!(error.contains("no key for"), "{error}");

    let stat = on(&["stat"], b"");
    assert!(text(&stat.stdout).contains(&format!("data dir     {}", dir.display())));
    let status = on(&["status", &ticket], b"");
    assert!(text(&status.stdout).contains("copies: 1 proven of 1"), "{}", text(&status.stdout));

    // Failures keep their exit codes and one-line messages.
    let too_few = on(&["put", arg(&file), "--min-copies", "2"], b"");
    assert_eq!(too_few.status.code(), Some(3), "{}", text(&too_few.stderr));
    assert!(is_ticket(&last_line(&too_few)));
    let missing = on(&["put", "no-such-file"], b"");
    let error = assert_one_line_error(&missing, 1, "put of a missing file");
    assert!(error.contains("cannot read no-such-file: no such file"), "{error}");
    let exists = on(&["get", &ticket, "-o", arg(&file)], b"");
    let error = assert_one_line_error(&exists, 1, "get over an existing file");
    assert!(error.contains("exists"), "{error}");
    let rebuild = on(&["rebuild-index"], b"");
    let error = assert_one_line_error(&rebuild, 1, "rebuild-index on a running node's dir");
    assert!(error.contains("in use"), "{error}");

    let deleted = on(&["delete", &piped_ticket], b"");
    assert!(deleted.status.success(), "{}", text(&deleted.stderr));
    assert!(text(&deleted.stderr).starts_with("deleted "), "{}", text(&deleted.stderr));
    let gc = on(&["gc"], b"");
    assert!(gc.status.success() && text(&gc.stderr).starts_with("collected "));

    // Another user reaches neither the socket nor the directory.
    let root = unsafe { libc::geteuid() } == 0;
    if root && std::path::Path::new("/usr/bin/setpriv").exists() {
        let other = std::process::Command::new("/usr/bin/setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_dfs-p2p"))
            .args(["id", "--data-dir", arg(&dir)])
            .output()
            .unwrap();
        assert!(!other.status.success(), "another user ran `id`: {}", text(&other.stdout));
        assert!(!text(&other.stdout).contains(&a.peer_id));
    }
    a.stop();
    assert!(!dir.join("control.sock").exists(), "the socket outlived its node");
    // With no node running, the one-shot opens the directory itself.
    let id = on(&["id"], b"");
    assert_eq!(text(&id.stdout).trim(), a.peer_id);
}

/// Ctrl-C of a one-shot put that runs through a node (its control socket)
/// cancels it there: the command exits 130, and the node has nothing of
/// the file left, pinned or on disk.
#[test]
fn an_interrupted_put_through_a_running_node_leaves_nothing_there() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let mut a = Node::start("A", &dir, &["--replicas", "1"]);
    let file = tmp.path().join("big.bin");
    fs::write(&file, data(512 << 20, 79)).unwrap();
    let args = ["--no-progress", "--data-dir", arg(&dir), "put", arg(&file)];
    let mut put = Node::spawn_command("put", &dir, &args);
    // The node is importing the file.
    interrupt_once(&mut put, "the node imported blocks", || blocks_in(&dir) >= 16);
    assert!(put.seen.iter().any(|l| matches!(l, Line::Err(t) if t == "interrupted")));
    assert_eq!(blocks_in(&dir), 0, "blocks of the cancelled put left on the node");
    a.send("ls");
    let line = a.expect_out(|l| l.contains("no files stored") || l.contains("root"));
    assert_eq!(line, "no files stored", "{:#?}", a.seen);
    assert!(a.try_wait().is_none(), "the node stopped");
    a.stop();
}
