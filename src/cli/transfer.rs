//! Put and get as both the prompt and the one-shot commands do them: open
//! the input (a file or stdin) with clear errors, draw the progress bar,
//! and write a get's output whole or not at all (to a hidden part file
//! renamed into place on success). An output that exists and is not a
//! regular file (`/dev/null`, a FIFO, a terminal) is written in place, as
//! standard output would be: renaming over it would replace the device.

use std::{
    fs::{self, File},
    io::{self, BufWriter, IsTerminal},
    path::{Path, PathBuf},
};

use super::{Failure, output};
use crate::{
    export::ByteRange,
    node::{Cancel, GetOptions, GetReport, Node, PutOptions, PutReport},
    ticket::Ticket,
};

/// What a put reads.
pub struct Input {
    reader: Box<dyn io::Read + Send>,
    /// The file name recorded in the root.
    name: Option<String>,
    /// The length, when known (a regular file).
    total: Option<u64>,
    /// How the user named it, for messages.
    pub label: String,
}

/// Opens `path` for a put (`-` is standard input). A missing path, a
/// directory or an unreadable file is a one-line error.
pub fn open_input(path: &Path) -> Result<Input, Failure> {
    if path == Path::new("-") {
        return Ok(Input {
            reader: Box::new(io::stdin()),
            name: None,
            total: None,
            label: "stdin".into(),
        });
    }
    let shown = path.display();
    let meta = fs::metadata(path).map_err(|e| Failure::io(format!("cannot read {shown}"), &e))?;
    if meta.is_dir() {
        return Err(Failure::Error(format!("{shown} is a directory: put takes a single file")));
    }
    let file = File::open(path).map_err(|e| Failure::io(format!("cannot open {shown}"), &e))?;
    Ok(Input {
        reader: Box::new(file),
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()),
        total: meta.is_file().then_some(meta.len()),
        label: shown.to_string(),
    })
}

impl Input {
    /// A stream with no name or length (standard input elsewhere: a control
    /// client's).
    pub fn stream(reader: Box<dyn io::Read + Send>) -> Input {
        Input { reader, name: None, total: None, label: "stdin".into() }
    }

    /// Records `name` in the root instead of the file's own (standard
    /// input has none).
    pub fn named(mut self, name: Option<String>) -> Input {
        if name.is_some() {
            self.name = name;
        }
        self
    }
}

/// Stores `input` through the node, with a progress bar when enabled,
/// then reports each copy as it is confirmed or refused (the second phase,
/// which waits on other nodes). `cancel` stops it.
pub async fn put(
    node: &Node,
    console: &output::Console,
    input: Input,
    progress: bool,
    cancel: Option<Cancel>,
) -> Result<PutReport, Failure> {
    let bar = output::Progress::new(progress, "put", &input.label, input.total);
    let started = std::time::Instant::now();
    // While peers make their copies (a large file takes them a while): a
    // spinner with the count confirmed so far.
    let copying: std::sync::Arc<std::sync::Mutex<Option<(output::Progress, usize, usize)>>> =
        Default::default();
    let options = PutOptions {
        name: input.name,
        total: input.total,
        progress: bar.callback(),
        on_stored: Some(std::sync::Arc::new({
            let finish = bar.finisher();
            let console = console.clone();
            let copying = copying.clone();
            move |size, copies| {
                finish();
                if copies > 0 {
                    console.status(&format!(
                        "asking peers for {} {} ({} stored here)",
                        copies,
                        if copies == 1 { "copy" } else { "copies" },
                        output::size(size),
                    ));
                    let spinner = output::Progress::new(progress, "making copies:", "", None);
                    spinner.set_message(format!("making copies: 0 of {copies} confirmed"));
                    *copying.lock().unwrap_or_else(|e| e.into_inner()) = Some((spinner, 0, copies));
                }
            }
        })),
        on_copy: Some(std::sync::Arc::new({
            let console = console.clone();
            let copying = copying.clone();
            move |peer, result| {
                if let Some((spinner, done, wanted)) =
                    copying.lock().unwrap_or_else(|e| e.into_inner()).as_mut()
                {
                    *done += usize::from(result.is_ok());
                    spinner.set_message(format!("making copies: {done} of {wanted} confirmed"));
                }
                let took = started.elapsed().as_secs_f64();
                let line = match result {
                    Ok(_) => format!("copy confirmed by {} ({took:.1} s)", short_peer(peer)),
                    Err(why) => format!("no copy on {}: {why}", short_peer(peer)),
                };
                console.status(&line);
            }
        })),
        cancel,
    };
    let report = node.put_with(input.reader, options).await;
    if let Some((spinner, ..)) = copying.lock().unwrap_or_else(|e| e.into_inner()).take() {
        spinner.clear();
    }
    bar.finish();
    Ok(report?)
}

/// The status line after a put (the ticket itself goes to stdout).
pub fn put_summary(label: &str, report: &PutReport) -> String {
    let mut line = format!(
        "stored {label} ({}): {} of {} copies confirmed",
        output::size(report.size),
        report.copies,
        report.wanted
    );
    if report.copies == 0 {
        line.push_str(" (no node serves it yet: only this data directory holds it)");
    } else if report.counts_local && report.copies == 1 && report.wanted > 1 {
        line.push_str(" (only this node holds it)");
    }
    if report.copies < report.wanted && !report.failed.is_empty() {
        // Why copies are missing: the first few refusals.
        const SHOWN: usize = 3;
        let reasons: Vec<String> = report
            .failed
            .iter()
            .take(SHOWN)
            .map(|(peer, why)| format!("{}: {why}", short_peer(peer)))
            .collect();
        let more = report.failed.len().saturating_sub(SHOWN);
        line.push_str(&format!("; not held by {}", reasons.join("; ")));
        if more > 0 {
            line.push_str(&format!("; and {more} more"));
        }
    }
    line
}

/// A peer id cut to its last characters, enough to tell peers apart.
fn short_peer(peer: &libp2p::PeerId) -> String {
    let id = peer.to_string();
    format!("…{}", &id[id.len().saturating_sub(8)..])
}

/// Where a get writes.
pub enum Output {
    Stdout,
    File(PathBuf),
    /// A control client's standard output, through the socket.
    Pipe(Box<dyn tokio::io::AsyncWrite + Send + Unpin>),
}

impl Output {
    /// Standard output, unless it is a terminal and the file was not asked
    /// for there (`force`, or `-o -`): a file's bytes would garble it, as
    /// curl refuses too.
    pub fn stdout(force: bool) -> Result<Output, Failure> {
        if !force && io::stdout().is_terminal() {
            return Err(Failure::Error(
                "not printing a file on the terminal: give -o FILE (at the prompt: get TICKET \
                 FILE), pipe it, or add --force"
                    .into(),
            ));
        }
        Ok(Output::Stdout)
    }

    /// Checks that `path` can be written before anything is fetched: an
    /// existing file is replaced only if `force`.
    pub fn file(path: PathBuf, force: bool) -> Result<Output, Failure> {
        if !force && fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            return Err(Failure::Error(format!(
                "{} exists: give another name, or add --force to replace it",
                path.display()
            )));
        }
        if path.is_dir() {
            return Err(Failure::Error(format!(
                "{} is a directory: give a file name",
                path.display()
            )));
        }
        let parent = parent_dir(&path);
        if !parent.is_dir() {
            return Err(Failure::Error(format!(
                "cannot write {}: directory {} does not exist",
                path.display(),
                parent.display()
            )));
        }
        Ok(Output::File(path))
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A part file that is removed unless the get completes.
struct PartFile {
    path: PathBuf,
    done: bool,
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Fetches `ticket` into `out`, with a progress bar when enabled (never
/// while the file itself is being printed on a terminal).
pub async fn get(
    node: &Node,
    ticket: Ticket,
    out: Output,
    range: Option<ByteRange>,
    progress: bool,
    cancel: Option<Cancel>,
) -> Result<GetReport, Failure> {
    match out {
        Output::Stdout => {
            let progress = progress && !io::stdout().is_terminal();
            let bar = output::Progress::new(progress, "get", &short_cid(&ticket), None);
            let writer = Box::new(BufWriter::with_capacity(1 << 16, io::stdout()));
            let options = GetOptions {
                progress: bar.callback(),
                output_dir: None,
                cancel,
                range,
                read_ahead: None,
            };
            let report = node.get_with(ticket, writer, options).await?;
            bar.finish();
            Ok(report)
        }
        Output::Pipe(writer) => {
            let options = GetOptions { cancel, range, ..Default::default() };
            Ok(node.get_with(ticket, crate::export::Output::Async(writer), options).await?)
        }
        Output::File(path) => {
            let shown = path.display().to_string();
            // The file written, and the part file to rename over `target`
            // once the get is complete (none when written in place).
            let (file, part) = match Destination::of(&path) {
                Destination::InPlace => {
                    let file = fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| Failure::io(format!("cannot open {shown}"), &e))?;
                    (file, None)
                }
                Destination::Replace(target) => {
                    let name = target.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
                    remove_stale_parts(parent_dir(&target), &name);
                    let part_path =
                        parent_dir(&target).join(format!(".{name}.{}.part", std::process::id()));
                    let file = File::create(&part_path).map_err(|e| {
                        Failure::io(format!("cannot create {}", part_path.display()), &e)
                    })?;
                    (file, Some((PartFile { path: part_path, done: false }, target)))
                }
            };
            let bar = output::Progress::new(progress, "get", &shown, None);
            let writer = Box::new(BufWriter::with_capacity(1 << 16, file));
            let output_dir = Some(parent_dir(&path).to_path_buf());
            let options = GetOptions {
                progress: bar.callback(),
                output_dir,
                cancel,
                range,
                read_ahead: None,
            };
            let report = node.get_with(ticket, writer, options).await?;
            if let Some((mut part, target)) = part {
                fs::rename(&part.path, &target)
                    .map_err(|e| Failure::io(format!("cannot write {shown}"), &e))?;
                part.done = true;
            }
            bar.finish();
            Ok(report)
        }
    }
}

/// Removes the part files of earlier gets into `name` in `dir` whose
/// process is gone (a get killed before it could clean up).
fn remove_stale_parts(dir: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else { continue };
        let Some(pid) = rest.strip_suffix(".part").and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// How a get's output file is written.
enum Destination {
    /// It exists and is not a regular file: write into it.
    InPlace,
    /// Write a part file beside this path and rename it over the path. A
    /// symbolic link is followed to the file it names, which need not exist
    /// yet (as a shell's `>` does), so the link stays.
    Replace(PathBuf),
}

impl Destination {
    fn of(path: &Path) -> Destination {
        match fs::metadata(path) {
            Ok(meta) if !meta.is_file() => Destination::InPlace,
            _ if path.is_symlink() => {
                Destination::Replace(follow_links(path).unwrap_or_else(|_| path.to_path_buf()))
            }
            _ => Destination::Replace(path.to_path_buf()),
        }
    }
}

/// The path a chain of symbolic links ends at, whether or not it exists. A
/// relative link is read relative to the directory that holds it.
fn follow_links(path: &Path) -> io::Result<PathBuf> {
    // Linux's own limit on links followed in one lookup.
    const MAX_LINKS: usize = 40;
    let mut path = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        if !path.is_symlink() {
            return Ok(path);
        }
        let target = fs::read_link(&path)?;
        path = parent_dir(&path).join(target);
    }
    Err(io::Error::from_raw_os_error(libc::ELOOP))
}

/// The status line after a get into a file.
pub fn get_summary(path: &Path, report: &GetReport) -> String {
    format!(
        "wrote {} ({}, {} from the network)",
        path.display(),
        output::size(report.size),
        output::plural(report.from_network, "block")
    )
}

fn short_cid(ticket: &Ticket) -> String {
    let cid = ticket.root.to_string();
    match cid.len() {
        n if n > 16 => format!("{}…{}", &cid[..8], &cid[n - 6..]),
        _ => cid,
    }
}
