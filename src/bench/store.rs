//! The storage benchmark behind `dfs-p2p bench store`: generates a file,
//! imports it (including the final sync), exports it, checks the bytes, and
//! reports throughput and peak resident memory of each phase. The timed
//! export writes to a sink that discards; a second, untimed export checks
//! the bytes.

use std::{
    fmt,
    fs::File,
    io::{self, Write},
    path::Path,
    time::{Duration, Instant},
};

use super::{cpu_secs, peak_rss, reset_peak_rss};
use crate::{
    error::{Error, Result},
    export::{ExportOptions, export},
    import::{ImportOptions, import},
    store::{Store, StoreOptions},
    testdata::generate_file,
};

/// What `bench_store` measured.
#[derive(Debug, Clone)]
pub struct StoreBenchReport {
    pub size: u64,
    pub chunk_size: usize,
    pub import: Duration,
    pub import_peak_rss: Option<u64>,
    pub import_cpu: Duration,
    pub export: Duration,
    pub export_peak_rss: Option<u64>,
    pub export_cpu: Duration,
    pub blocks: u64,
    /// The same bytes written as one plain file with one fsync: what this
    /// disk can do, for comparison with the synced import.
    pub disk_baseline: Duration,
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

/// CPU seconds this process has used so far.
fn cpu_time() -> Duration {
    Duration::from_secs_f64(cpu_secs(None).unwrap_or(0.0))
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("unknown".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

impl fmt::Display for StoreBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (size, chunk) = (self.size as f64 / 1048576.0, self.chunk_size / 1024);
        writeln!(
            f,
            "store benchmark: {size:.0} MiB file, {chunk} KiB chunks, {} blocks",
            self.blocks
        )?;
        writeln!(
            f,
            "disk baseline:   {:>8.1} MB/s  {:>7.2} s  (one plain file, one fsync)",
            mb_per_s(self.size, self.disk_baseline),
            self.disk_baseline.as_secs_f64()
        )?;
        writeln!(
            f,
            "import (synced): {:>8.1} MB/s  {:>7.2} s  CPU {:>5.2} s  peak RSS {}",
            mb_per_s(self.size, self.import),
            self.import.as_secs_f64(),
            self.import_cpu.as_secs_f64(),
            mib(self.import_peak_rss)
        )?;
        write!(
            f,
            "export:          {:>8.1} MB/s  {:>7.2} s  CPU {:>5.2} s  peak RSS {}",
            mb_per_s(self.size, self.export),
            self.export.as_secs_f64(),
            self.export_cpu.as_secs_f64(),
            mib(self.export_peak_rss)
        )
    }
}

/// A writer that hashes what passes through it.
struct Hashing(blake3::Hasher);

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Generates a `size`-byte file in `dir`, imports it into a fresh store in
/// `dir` and exports it again, checking that the bytes come back.
pub fn bench_store(size: u64, chunk_size: usize, dir: &Path) -> Result<StoreBenchReport> {
    let io_err = |context: &str| {
        let context = context.to_string();
        move |source| Error::Io { context: context.clone(), source }
    };
    let input = dir.join("bench-input.bin");
    generate_file(&input, size, 0x5EED).map_err(io_err("cannot write the benchmark input"))?;
    let baseline = dir.join("bench-baseline.bin");
    let start = Instant::now();
    std::fs::copy(&input, &baseline)
        .and_then(|_| File::open(&baseline)?.sync_all())
        .map_err(io_err("cannot write the baseline file"))?;
    let disk_baseline = start.elapsed();
    let _ = std::fs::remove_file(&baseline);
    let mut expected = blake3::Hasher::new();
    expected
        .update_reader(File::open(&input).map_err(io_err("cannot open the input"))?)
        .map_err(io_err("cannot read the input"))?;
    let store = Store::open(dir.join("store"), StoreOptions::default())?;

    reset_peak_rss();
    let cpu = cpu_time();
    let start = Instant::now();
    let file = File::open(&input).map_err(io_err("cannot open the input"))?;
    let options = ImportOptions { chunk_size, total: Some(size), ..Default::default() };
    let imported = import(&store, file, &options, None)?;
    let import_time = start.elapsed();
    let import_peak_rss = peak_rss(None);
    let import_cpu = cpu_time() - cpu;

    // Timed: the export into a sink that discards, like `get > /dev/null`.
    // The bytes are checked by a second, untimed export, so that hashing
    // them does not count against the export's throughput.
    let options = ExportOptions { workers: 2, window: 16, ..Default::default() };
    reset_peak_rss();
    let cpu = cpu_time();
    let start = Instant::now();
    export(&store, &imported.ticket, &mut io::sink(), &options, None)?;
    let export_time = start.elapsed();
    let export_peak_rss = peak_rss(None);
    let export_cpu = cpu_time() - cpu;
    let mut out = Hashing(blake3::Hasher::new());
    export(&store, &imported.ticket, &mut out, &options, None)?;
    if out.0.finalize() != expected.finalize() {
        return Err(Error::Internal("the exported bytes differ from the input".into()));
    }
    let _ = std::fs::remove_file(&input);
    Ok(StoreBenchReport {
        size,
        chunk_size,
        import: import_time,
        import_peak_rss,
        import_cpu,
        export: export_time,
        export_peak_rss,
        export_cpu,
        blocks: imported.blocks,
        disk_baseline,
    })
}
