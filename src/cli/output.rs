//! What the user sees: sizes ("1.5 MiB"), the tables of `ls`, `peers` and
//! `stat`, one-line error messages, and progress bars. Results go to stdout;
//! progress, status and logs go to stderr. Log lines are written through
//! [`LogWriter`], which lifts the progress bar out of the way first.

use std::{
    fmt::Write as _,
    io::{self, IsTerminal, Write},
    sync::{Arc, Mutex},
    time::Duration,
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::{
    node::{PeerInfo, ProgressFn, Stat},
    store::{PinKind, RootInfo},
};

/// A byte count in binary units with at most one decimal.
pub use crate::units::human_size as size;

/// An error as one line: newlines (from any source) are folded into "; ".
pub fn one_line(message: &str) -> String {
    let parts: Vec<&str> = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    parts.join("; ")
}

/// Prints `error: <message>` on stderr, as one line.
pub fn print_error(message: &str) {
    let line = format!("error: {}\n", one_line(message));
    write_stderr(line.as_bytes());
}

/// Prints a status line on stderr (not a result: results go to stdout).
pub fn status(message: &str) {
    write_stderr(format!("{message}\n").as_bytes());
}

/// Prints a result (a ticket, a table) on stdout. A closed stdout (its
/// reader went away) is ignored rather than a panic, as `println!` would.
pub fn result(text: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Where a command's output goes: this process's stdout and stderr, or the
/// client of the control socket that asked for the command
/// ([`super::control`]), which prints it on its own.
#[derive(Clone, Default)]
pub struct Console {
    remote: Option<tokio::sync::mpsc::UnboundedSender<Line>>,
}

/// A piece of output sent to a control client. Few per command (a line per
/// copy at most): a get's bytes travel apart, with backpressure.
#[derive(Debug)]
pub enum Line {
    Result(String),
    Status(String),
    Error(String),
}

impl Console {
    /// Output to a control client: lines go to `tx`.
    pub fn remote(tx: tokio::sync::mpsc::UnboundedSender<Line>) -> Console {
        Console { remote: Some(tx) }
    }

    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// [`result`] here or there.
    pub fn result(&self, text: &str) {
        match &self.remote {
            Some(tx) => drop(tx.send(Line::Result(text.to_string()))),
            None => result(text),
        }
    }

    /// [`status`] here or there.
    pub fn status(&self, message: &str) {
        match &self.remote {
            Some(tx) => drop(tx.send(Line::Status(message.to_string()))),
            None => status(message),
        }
    }

    /// [`print_error`] here or there.
    pub fn error(&self, message: &str) {
        match &self.remote {
            Some(tx) => drop(tx.send(Line::Error(one_line(message)))),
            None => print_error(message),
        }
    }
}

/// Shows the prompt on stderr. Until [`prompt_answered`], anything else
/// written on stderr (a log line, a status) clears the prompt's line first
/// and shows the prompt again after it, when stderr is a terminal.
pub fn prompt(text: &'static str) {
    prompt_answered();
    write_stderr(text.as_bytes());
    if io::stderr().is_terminal() {
        *PROMPT_SHOWN.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
    }
}

/// Shows the prompt again if it waits for a line: a terminal that was
/// just attached (`docker attach` resizes it) shows what comes after.
pub fn redraw_prompt() {
    let prompt = PROMPT_SHOWN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(text) = *prompt {
        let mut err = io::stderr().lock();
        let _ = err.write_all(b"\r\x1b[2K");
        let _ = err.write_all(text.as_bytes());
        let _ = err.flush();
    }
}

/// The prompt's line was entered: output no longer shares its line.
pub fn prompt_answered() {
    *PROMPT_SHOWN.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// The prompt on screen, waiting for a line, if any.
static PROMPT_SHOWN: Mutex<Option<&'static str>> = Mutex::new(None);

/// Lays out rows in aligned columns, two spaces apart; the last column is
/// not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 < columns {
                let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
            } else {
                text.push_str(cell);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// The `ls` table: every pinned and cached root with its size on disk.
pub fn roots_table(roots: &[RootInfo]) -> String {
    if roots.is_empty() {
        return "no files stored\n".into();
    }
    let mut roots = roots.to_vec();
    roots.sort_by_key(|r| (r.kind != PinKind::Pinned, std::cmp::Reverse(r.last_access)));
    let rows: Vec<Vec<String>> = roots
        .iter()
        .map(|r| {
            let kind = match r.kind {
                PinKind::Pinned => "pinned",
                PinKind::Cached if r.partial => "part cached",
                PinKind::Cached => "cached",
            };
            let mut owners: Vec<String> = r.owners.iter().map(ToString::to_string).collect();
            if r.local {
                owners.insert(0, "this node".into());
            }
            let owner = if owners.is_empty() { "-".into() } else { owners.join(", ") };
            let (name, file_size) = match &r.file {
                Some(f) => (f.name.clone().unwrap_or_else(|| "-".into()), size(f.size)),
                // A replica held for others: this node has no key to read it.
                None => ("(encrypted)".into(), "?".into()),
            };
            vec![r.root.to_string(), name, file_size, size(r.size), kind.into(), owner]
        })
        .collect();
    let total: u64 = roots.iter().map(|r| r.size).sum();
    let mut out = table(&["ROOT", "NAME", "SIZE", "STORED", "KIND", "OWNERS"], &rows);
    let n = roots.len();
    let _ = writeln!(out, "{n} {}, {} stored", if n == 1 { "root" } else { "roots" }, size(total));
    out
}

/// `ls --tickets`: each file's ticket and name; a copy held for another
/// node (no key here) by its root.
pub fn tickets_table(roots: &[RootInfo]) -> String {
    if roots.is_empty() {
        return "no files stored\n".into();
    }
    let rows: Vec<Vec<String>> = roots
        .iter()
        .map(|r| match r.file.as_ref().and_then(|f| f.key.map(|key| (f, key))) {
            Some((file, key)) => vec![
                crate::Ticket::new(r.root, key).to_string(),
                file.name.clone().unwrap_or_else(|| "-".into()),
            ],
            None => vec![r.root.to_string(), "(no key here: held for another node)".into()],
        })
        .collect();
    table(&["TICKET", "NAME"], &rows)
}

/// The `peers` table: each connected peer and its addresses, one a line.
pub fn peers_table(peers: &[PeerInfo]) -> String {
    if peers.is_empty() {
        return "no peers connected\n".into();
    }
    let mut rows = Vec::new();
    for peer in peers {
        let mut addrs = peer.addrs.iter().map(ToString::to_string);
        rows.push(vec![peer.peer_id.to_string(), addrs.next().unwrap_or_else(|| "-".into())]);
        rows.extend(addrs.map(|a| vec![String::new(), a]));
    }
    let mut out = table(&["PEER", "ADDRESS"], &rows);
    let n = peers.len();
    let _ = writeln!(out, "{n} {} connected", if n == 1 { "peer" } else { "peers" });
    out
}

/// What a garbage collection did, in one line.
pub fn gc_summary(stats: &crate::store::GcStats) -> String {
    let mut line = format!(
        "collected {} ({})",
        plural(stats.removed_blocks, "block"),
        size(stats.removed_bytes)
    );
    if stats.removed_corrupt > 0 {
        line.push_str(&format!(
            ", and {} set aside after failing verification",
            plural(stats.removed_corrupt, "block")
        ));
    }
    if stats.removed_tmp_files > 0 {
        line.push_str(&format!(
            ", and {} ({}) of unfinished writes from tmp/",
            plural(stats.removed_tmp_files, "file"),
            size(stats.removed_tmp_bytes)
        ));
    }
    if stats.kept_recent > 0 {
        line.push_str(&format!(
            "; kept {} that running transfers may still need",
            plural(stats.kept_recent, "unused block")
        ));
    }
    line
}

/// `n thing` or `n things`.
pub fn plural(n: u64, thing: &str) -> String {
    if n == 1 { format!("1 {thing}") } else { format!("{n} {thing}s") }
}

pub fn stat_table(stat: &Stat) -> String {
    let mut rows = vec![
        vec!["peer id".into(), stat.peer_id.to_string()],
        vec!["data dir".into(), stat.data_dir.display().to_string()],
    ];
    if stat.listen_addrs.is_empty() {
        rows.push(vec!["addresses".into(), "none (not listening)".into()]);
    }
    for (i, addr) in stat.listen_addrs.iter().enumerate() {
        let label = if i == 0 { "addresses" } else { "" };
        rows.push(vec![label.into(), addr.to_string()]);
    }
    rows.push(vec!["peers".into(), stat.peers.to_string()]);
    rows.push(vec![
        "files".into(),
        format!("{} pinned, {} cached", stat.pinned_roots, stat.cached_roots),
    ]);
    rows.push(vec!["blocks".into(), stat.blocks.to_string()]);
    rows.push(vec!["stored".into(), size(stat.bytes)]);
    rows.push(vec![
        "cache".into(),
        format!("{} of {} used", size(stat.cache_used), size(stat.cache_limit)),
    ]);
    rows.push(vec![
        "for others".into(),
        format!("{} of {} quota", size(stat.held_for_others), size(stat.replica_quota)),
    ]);
    rows.push(vec![
        "serving".into(),
        format!(
            "{} sent; {} open; {} of {} stream answers held",
            plural(stat.blocks_served, "block"),
            plural(stat.block_streams as u64, "block stream"),
            stat.stream_blocks_held,
            stat.stream_blocks_limit
        ),
    ]);
    rows.push(vec![
        "dht records".into(),
        format!(
            "{} provider and {} delete records of other peers",
            stat.provider_records, stat.delete_records
        ),
    ]);
    let mut out = String::new();
    let width = rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
    for row in rows {
        let _ = writeln!(out, "{:<width$}  {}", row[0], row[1]);
    }
    out
}

/// The progress bar being drawn, if any: log lines are written around it.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn write_stderr(bytes: &[u8]) {
    let bar = ACTIVE_BAR.lock().map(|b| b.clone()).unwrap_or(None);
    let write = || {
        let prompt = PROMPT_SHOWN.lock().unwrap_or_else(|e| e.into_inner());
        let mut err = io::stderr().lock();
        match *prompt {
            // Erase the prompt's line, write, and show the prompt again.
            Some(text) => {
                let _ = err.write_all(b"\r\x1b[2K");
                let _ = err.write_all(bytes);
                let _ = err.write_all(text.as_bytes());
            }
            None => {
                let _ = err.write_all(bytes);
            }
        }
        let _ = err.flush();
    };
    match bar {
        Some(bar) => bar.suspend(write),
        None => write(),
    }
}

/// A progress bar on stderr for one put or get: bytes, rate and ETA; a
/// spinner with bytes and rate when the total is unknown. It is only
/// drawn when stderr is a terminal and progress was not turned off.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// `verb` is "put" or "get"; `label` names what moves (a file name);
    /// `total` is its size when known before the transfer starts.
    pub fn new(enabled: bool, verb: &str, label: &str, total: Option<u64>) -> Progress {
        if !enabled || !io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
        bar.set_style(if total.is_some() { bar_style() } else { spinner_style() });
        bar.set_message(format!("{verb} {label}"));
        bar.enable_steady_tick(Duration::from_millis(120));
        if let Ok(mut active) = ACTIVE_BAR.lock() {
            *active = Some(bar.clone());
        }
        Progress { bar: Some(bar) }
    }

    /// The callback handed to the node, or None when nothing is drawn.
    pub fn callback(&self) -> Option<ProgressFn> {
        let bar = self.bar.clone()?;
        let sized = Arc::new(std::sync::atomic::AtomicBool::new(bar.length().is_some()));
        Some(Arc::new(move |done: u64, total: Option<u64>| {
            if let Some(total) = total
                && !sized.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                bar.set_length(total);
                bar.set_style(bar_style());
            }
            bar.set_position(done);
        }))
    }

    /// Changes what the bar says.
    pub fn set_message(&self, message: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(message);
        }
    }

    /// Removes the bar from the screen.
    pub fn clear(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// Leaves the finished bar on screen.
    pub fn finish(self) {
        finish_bar(self.bar.as_ref());
    }

    /// Finishes the bar from another thread, before the transfer returns
    /// (a put's upload, before its copies are sought).
    pub fn finisher(&self) -> impl Fn() + Send + Sync + 'static {
        let bar = self.bar.clone();
        move || finish_bar(bar.as_ref())
    }
}

fn finish_bar(bar: Option<&ProgressBar>) {
    if let Some(bar) = bar
        && !bar.is_finished()
    {
        if let Some(len) = bar.length() {
            bar.set_position(len);
        }
        bar.finish();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            if !bar.is_finished() {
                bar.abandon(); // a failed transfer: keep where it stopped
            }
            if let Ok(mut active) = ACTIVE_BAR.lock() {
                *active = None;
            }
        }
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ")
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg} {binary_bytes} {binary_bytes_per_sec} {elapsed}")
        .expect("valid template")
}

/// The writer of log lines (tracing): stderr, around the progress bar.
#[derive(Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_stderr(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

/// The `providers` answer: one peer per line, or why there is none.
pub fn providers_list(root: cid::Cid, peers: &[libp2p::PeerId]) -> String {
    if peers.is_empty() {
        return format!("no providers found for {root}\n");
    }
    peers.iter().map(|p| format!("{p}\n")).collect()
}

/// The `status` answer: the copies proven against the target, each
/// holder, the peers that claimed a copy and did not prove it, and the last
/// repair.
pub fn health_report(health: &crate::net::repair::Health, local: libp2p::PeerId) -> String {
    let mut out = format!("root: {}\n", health.root);
    let target = match health.target {
        0 if health.holders.is_empty() => "unknown (no holder answered)".to_string(),
        0 => "unknown (holders tell it to the file's owners only)".to_string(),
        n => n.to_string(),
    };
    let extra = match health.target {
        0 => 0,
        n => health.holders.len().saturating_sub(usize::from(n)),
    };
    // More than wanted: a holder that was away came back after a repair
    // replaced its copy. Harmless; said so rather than left to puzzle.
    let extra = if extra > 0 { format!(" ({extra} extra: a holder came back)") } else { "".into() };
    out.push_str(&format!("copies: {} proven of {target}{extra}\n", health.holders.len()));
    for peer in &health.holders {
        let mark = if *peer == local { " (this node)" } else { "" };
        out.push_str(&format!("holder: {peer}{mark}\n"));
    }
    // Peers that say they hold it and could not show it: not counted.
    for (peer, why) in &health.unproven {
        out.push_str(&format!("unproven: {peer} ({})\n", one_line(why)));
    }
    out.push_str(&format!("last repair: {}\n", ago(health.last_repair)));
    if health.last_check != 0 {
        out.push_str(&format!("last check here: {}\n", ago(health.last_check)));
    }
    out
}

/// Unix seconds as "N s ago (at <seconds>)", or "never" for 0.
fn ago(unix: u64) -> String {
    if unix == 0 {
        return "never".into();
    }
    let secs = crate::lease::unix_secs().saturating_sub(unix);
    let when = match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        7200..172_800 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86400),
    };
    format!("{when} ago (Unix time {unix})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        for (n, s) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1 KiB"),
            (1536, "1.5 KiB"),
            (3 << 19, "1.5 MiB"),
            (10 << 30, "10 GiB"),
            ((1 << 20) - 1, "1 MiB"),
            (u64::MAX, "16 EiB"),
        ] {
            assert_eq!(size(n), s, "{n}");
        }
    }

    #[test]
    fn tables_align_and_errors_are_one_line() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n");
        assert_eq!(one_line("first\n  second\n\n"), "first; second");
    }
}
