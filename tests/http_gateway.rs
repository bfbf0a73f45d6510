//! The HTTP gateway against the real binary, with real clients: curl for
//! every status code, header and byte range, and ffprobe/ffmpeg seeking in a
//! video through a gateway node that does not hold it. curl and ffmpeg must
//! be installed (`.ci/run` installs them); without them the tests fail,
//! unless `DFS_SKIP_HTTP_TEST=1` asks to skip them.

mod cli_support;

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use cli_support::*;

const MIB: usize = 1 << 20;

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Whether `tool` runs; if not, fails the test unless skipping is asked for.
fn have(tool: &str) -> bool {
    if Command::new(tool).arg("-version").output().is_ok() {
        return true;
    }
    if std::env::var_os("DFS_SKIP_HTTP_TEST").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED: {tool} is not installed (DFS_SKIP_HTTP_TEST=1)");
        return false;
    }
    panic!("{tool} is not installed: install it, or set DFS_SKIP_HTTP_TEST=1 to skip this test");
}

/// What curl got: the status, the headers (lower-case names) and the body.
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

fn curl(dir: &Path, args: &[&str]) -> Answer {
    let (head, body) = (dir.join("curl.head"), dir.join("curl.body"));
    let _ = fs::remove_file(&body);
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "60", "-D", arg(&head), "-o", arg(&body)])
        .args(args)
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl {args:?}: {}", text(&out.stderr));
    let head = fs::read_to_string(&head).unwrap();
    // The last response (after a `100 Continue`).
    let block = head.trim_end().rsplit("\r\n\r\n").next().unwrap();
    let mut lines = block.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer { status, headers, body: fs::read(&body).unwrap_or_default() }
}

/// The gateway address a node printed.
fn gateway_of(node: &mut Node) -> String {
    let line = node.expect_err(|l| l.starts_with("http gateway on "));
    let url = line["http gateway on ".len()..].trim();
    url.trim_end_matches("/dfs/<ticket>").to_string()
}

/// Block files in a node's store.
fn block_files(data_dir: &Path) -> usize {
    fn count(dir: &Path) -> usize {
        fs::read_dir(dir).map_or(0, |entries| {
            entries.flatten().map(|e| if e.path().is_dir() { count(&e.path()) } else { 1 }).sum()
        })
    }
    count(&data_dir.join("blocks"))
}

/// A holder with the file (and nobody else), and a gateway node that holds
/// nothing for others, started with `extra` options as well.
fn network(tmp: &Path, file: &Path, extra: &[&str]) -> (Node, Node, String, String) {
    let mut holder = Node::start("holder", &tmp.join("holder"), &["--replicas", "1"]);
    let addr = holder.addrs[0].clone();
    let mut args =
        vec!["--bootstrap", &addr, "--http", "127.0.0.1:0", "--accept-replicas-from", "none"];
    args.extend(extra);
    let mut gateway = Node::start("gateway", &tmp.join("gateway"), &args);
    let url = gateway_of(&mut gateway);
    gateway.wait_for_peers(1);
    let (ticket, _) = holder.put_confirmed(file);
    (holder, gateway, ticket, url)
}

#[test]
fn ranges_statuses_headers_and_uploads() {
    if !have("curl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("clip.mp4");
    let bytes = data(6 * MIB + 12_345, 5);
    fs::write(&file, &bytes).unwrap();
    let (holder, mut gateway, ticket, url) = network(tmp.path(), &file, &[]);
    let dfs = format!("{url}/dfs/{ticket}");
    let dir = tmp.path();

    // Ranges first, at and across chunk edges (chunks 0, 1, 2 and 6 of 7):
    // only their blocks are fetched.
    let len = bytes.len();
    let cases: [(&str, usize, usize); 7] = [
        ("bytes=0-0", 0, 0),
        ("bytes=1048575-1048576", MIB - 1, MIB),
        ("bytes=1048576-2097151", MIB, 2 * MIB - 1),
        ("bytes=2097151-2097152", 2 * MIB - 1, 2 * MIB),
        ("bytes=-10", len - 10, len - 1),
        ("bytes=6291456-", 6 * MIB, len - 1),
        ("bytes=6291458-99999999", 6 * MIB + 2, len - 1),
    ];
    for (range, start, end) in cases {
        let a = curl(dir, &["-H", &format!("Range: {range}"), &dfs]);
        assert_eq!(a.status, 206, "{range}");
        assert_eq!(a.body, &bytes[start..=end], "{range}");
        assert_eq!(a.header("content-range"), format!("bytes {start}-{end}/{len}"), "{range}");
        assert_eq!(a.header("content-length"), (end - start + 1).to_string());
    }
    let fetched = block_files(&gateway.data_dir);
    let whole = block_files(&holder.data_dir);
    assert!(fetched <= whole - 3, "the ranges fetched {fetched} blocks of {whole}");

    // The whole file, and its headers.
    let a = curl(dir, &[&dfs]);
    assert_eq!(a.status, 200);
    assert!(a.body == bytes, "wrong bytes");
    let root = ticket.parse::<dfs_p2p::Ticket>().unwrap().root;
    let etag = format!("\"{root}\"");
    assert_eq!(a.header("etag"), etag);
    assert_eq!(a.header("content-type"), "video/mp4");
    assert_eq!(a.header("content-length"), len.to_string());
    assert_eq!(a.header("accept-ranges"), "bytes");
    assert_eq!(a.header("cache-control"), "public, max-age=31536000, immutable");
    assert!(a.header("content-disposition").starts_with("inline; filename=\"clip.mp4\""));
    let a = curl(dir, &["-I", &format!("{dfs}/any/name.bin")]);
    assert_eq!((a.status, a.header("content-length")), (200, len.to_string().as_str()));

    // Several ranges: the whole file. Unsatisfiable: 416. The ETag: 304.
    let a = curl(dir, &["-H", "Range: bytes=0-1,5-9", &dfs]);
    assert_eq!((a.status, a.body.len()), (200, len));
    // A suffix longer than the file is the whole file (RFC 9110).
    let a = curl(dir, &["-H", "Range: bytes=-99999999", &dfs]);
    assert_eq!((a.status, a.body.len()), (206, len));
    assert_eq!(a.header("content-range"), format!("bytes 0-{}/{len}", len - 1));
    // More ranges than a player sends: the header is ignored, even when
    // none of them is satisfiable.
    let many: Vec<String> =
        (0..=dfs_p2p::gateway::MAX_RANGES).map(|i| format!("{}-", len + i)).collect();
    let a = curl(dir, &["-H", &format!("Range: bytes={}", many.join(",")), &dfs]);
    assert_eq!((a.status, a.body.len()), (200, len));
    let a = curl(dir, &["-H", &format!("Range: bytes={len}-"), &dfs]);
    assert_eq!(a.status, 416);
    assert_eq!(a.header("content-range"), format!("bytes */{len}"));
    let a = curl(dir, &["-H", &format!("If-None-Match: {etag}"), &dfs]);
    assert_eq!((a.status, a.body.len()), (304, 0));

    // A malformed ticket, content nobody holds, another method.
    let a = curl(dir, &[&format!("{url}/dfs/dfsnotaticket")]);
    assert_eq!(a.status, 400);
    assert_eq!(text(&a.body).lines().count(), 1, "{}", text(&a.body));
    let nowhere = run(&["put", "-", "--data-dir", arg(&tmp.path().join("iso"))], b"nowhere");
    let a = curl(dir, &[&format!("{url}/dfs/{}", last_line(&nowhere))]);
    assert_eq!(a.status, 404, "{}", text(&a.body));
    let a = curl(dir, &["-X", "DELETE", &dfs]);
    assert_eq!(a.status, 405);

    // Uploads (a loopback gateway takes them), read back.
    let upload = data(MIB + 7, 9);
    let up = tmp.path().join("up.bin");
    fs::write(&up, &upload).unwrap();
    let a = curl(dir, &["--data-binary", &format!("@{}", up.display()), &format!("{url}/dfs")]);
    assert_eq!(a.status, 201, "{}", text(&a.body));
    let new = text(&a.body).trim().to_string();
    assert!(is_ticket(&new), "{new}");
    assert_eq!(a.header("location"), format!("/dfs/{new}"));
    assert!(curl(dir, &[&format!("{url}/dfs/{new}")]).body == upload);
    let a = curl(dir, &["-T", arg(&up), &format!("{url}/dfs/notes.txt")]);
    assert_eq!(a.status, 201);
    let named = text(&a.body).trim().to_string();
    let a = curl(dir, &["-I", &format!("{url}/dfs/{named}")]);
    assert!(a.header("content-type").starts_with("text/plain"), "{:?}", a.headers);

    // The command line's range, on the same reads.
    let holder_addr = holder.addrs[0].clone();
    let out = run(
        &[
            "get",
            &ticket,
            "--range",
            "1048570-1048600",
            "--bootstrap",
            &holder_addr,
            "--data-dir",
            arg(&tmp.path().join("client")),
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, &bytes[1_048_570..=1_048_600]);
    gateway.stop();
}

#[test]
fn a_gateway_on_other_machines_reach_warns_and_takes_no_uploads() {
    if !have("curl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::start("open", &tmp.path().join("open"), &["--http", "0.0.0.0:0"]);
    let warning = node.expect_err(|l| l.starts_with("warning: the HTTP gateway"));
    assert!(warning.contains("uploads are off"), "{warning}");
    let url = gateway_of(&mut node);
    let port = url.rsplit(':').next().unwrap();
    let a = curl(tmp.path(), &["--data-binary", "x", &format!("http://127.0.0.1:{port}/dfs")]);
    assert_eq!(a.status, 403, "{}", text(&a.body));
    node.stop();
}

/// A short video put on one node, played through another's gateway:
/// ffprobe reads its duration, ffmpeg seeks to the middle and takes a
/// frame, and the gateway node fetched only part of the file's blocks.
#[test]
fn ffmpeg_seeks_in_a_video_through_a_gateway_that_does_not_hold_it() {
    if !have("ffmpeg") || !have("ffprobe") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let video = tmp.path().join("test.mp4");
    let made = Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i", "testsrc=duration=60:size=640x480:rate=25"])
        // Noise, so that the 60 s take about 88 MiB: 88 chunks, several
        // times what the two reads fetch ahead (each up to the read-ahead,
        // the body queue and what the socket buffers hold: about 16 chunks).
        .args(["-vf", "noise=alls=20:allf=t+u", "-c:v", "mpeg4", "-q:v", "4", "-g", "25"])
        .args(["-movflags", "+faststart", "-y", arg(&video)])
        .output()
        .unwrap();
    assert!(made.status.success(), "ffmpeg: {}", text(&made.stderr));
    let size = fs::metadata(&video).unwrap().len();
    assert!(size > 64 * MIB as u64, "the video is only {size} bytes");
    let (holder, mut gateway, ticket, url) = network(tmp.path(), &video, &[]);
    let dfs = format!("{url}/dfs/{ticket}/test.mp4");

    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", &dfs])
        .output()
        .unwrap();
    assert!(probe.status.success(), "ffprobe: {}", text(&probe.stderr));
    let duration: f64 = text(&probe.stdout).trim().parse().unwrap();
    assert!((duration - 60.0).abs() < 0.5, "duration {duration}");

    let frame: PathBuf = tmp.path().join("frame.png");
    let seek = Command::new("ffmpeg")
        .args(["-v", "error", "-ss", "20", "-i", &dfs, "-frames:v", "1", "-y", arg(&frame)])
        .output()
        .unwrap();
    assert!(seek.status.success(), "ffmpeg -ss: {}", text(&seek.stderr));
    assert!(fs::metadata(&frame).unwrap().len() > 1000);
    let fetched = block_files(&gateway.data_dir);
    let whole = block_files(&holder.data_dir);
    assert!(fetched < whole / 2, "the player made the gateway fetch {fetched} of {whole} blocks");
    eprintln!("ffprobe and a seek to 20 s fetched {fetched} of the {whole} blocks");
    gateway.stop();
}

/// Readers at once each get their bytes; a reader that goes away mid-file
/// ends the gateway's read of it, which fetched little beyond what it had
/// in flight or read ahead.
#[test]
fn concurrent_readers_and_a_reader_that_leaves() {
    if !have("curl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("big.bin");
    let bytes = data(80 * MIB, 17);
    fs::write(&file, &bytes).unwrap();
    // Logs at debug level: the gateway says when a read ends.
    let (_holder, mut gateway, ticket, url) = network(tmp.path(), &file, &["-v"]);
    let dfs = format!("{url}/dfs/{ticket}");

    // Eight readers of eight different ranges at once.
    let readers: Vec<_> = (0..8usize)
        .map(|i| {
            let dir = tmp.path().join(format!("reader{i}"));
            fs::create_dir_all(&dir).unwrap();
            let (start, end) = (i * 5 * MIB + 1000, i * 5 * MIB + 2 * MIB + 999);
            let dfs = dfs.clone();
            std::thread::spawn(move || {
                let a = curl(&dir, &["-H", &format!("Range: bytes={start}-{end}"), &dfs]);
                (a.status, a.body, start, end)
            })
        })
        .collect();
    for reader in readers {
        let (status, body, start, end) = reader.join().unwrap();
        assert_eq!(status, 206);
        assert!(body == bytes[start..=end], "range {start}-{end}");
    }

    // A slow reader of the rest, killed once the gateway has fetched some.
    let before = block_files(&gateway.data_dir);
    let mut slow = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--limit-rate", "1M", "-H", "Range: bytes=41943040-", &dfs])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + STEP;
    while block_files(&gateway.data_dir) < before + 2 {
        assert!(std::time::Instant::now() < deadline, "the slow reader fetched nothing");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    slow.kill().unwrap();
    slow.wait().unwrap();
    let at_kill = block_files(&gateway.data_dir);
    // The read ends (its fetches with it: a read waits for its own), and
    // what it fetched afterwards is all it will ever fetch.
    let root = ticket.parse::<dfs_p2p::Ticket>().unwrap().root;
    let ended = format!("HTTP read of {root} ended");
    gateway.expect_err(|l| l.contains(&ended));
    let after = block_files(&gateway.data_dir).saturating_sub(at_kill);
    // The 40 chunks it asked for, less what was in flight or read ahead
    // (8 leaves, 4 waiting): most were never fetched.
    eprintln!("{after} blocks fetched after the reader left");
    assert!(after < 20, "{after} blocks fetched after the reader left");
    gateway.stop();
}
