//! The benchmarks behind `dfs-p2p bench`: [`store`] (import and export
//! through the local store), [`net`] (a get from one or more serving nodes
//! against [`raw`], one bare libp2p stream over the same transport, over
//! loopback or through [`proxy`] links with a delay and a rate), [`dht`]
//! (lookups among many nodes, before and after churn). They sit
//! above the node, beside the command line, and nothing below imports
//! them; they are compiled only with the Cargo feature `bench`, so the
//! library and the program a user runs carry none of them. This module holds what they measure with: CPU time and peak
//! resident memory of this process or of a child, and medians.

pub mod dht;
pub mod net;
pub mod proxy;
pub mod raw;
pub mod store;

/// Peak resident set (`VmHWM`) of a process (this one for `None`), in bytes.
pub fn peak_rss(pid: Option<u32>) -> Option<u64> {
    status_bytes(pid, "VmHWM:")
}

/// Resident set (`VmRSS`) of this process now, in bytes.
pub fn rss() -> Option<u64> {
    status_bytes(None, "VmRSS:")
}

fn status_bytes(pid: Option<u32>, field: &str) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".into(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU seconds spent by a child process and by this one, summed over the
/// spans counted; `None` where a reading failed (or, for the child, where
/// there is none).
#[derive(Clone, Copy)]
pub struct CpuSpent {
    pub child: Option<f64>,
    pub this: Option<f64>,
}

impl CpuSpent {
    pub const ZERO: CpuSpent = CpuSpent { child: Some(0.0), this: Some(0.0) };

    /// The totals so far of `child` (if any) and of this process.
    pub fn now(child: Option<u32>) -> CpuSpent {
        CpuSpent::now_of(child.as_slice())
    }

    /// The totals so far of `children` together (`None` for none, or if a
    /// reading failed) and of this process.
    pub fn now_of(children: &[u32]) -> CpuSpent {
        let child = match children {
            [] => None,
            pids => pids.iter().map(|pid| cpu_secs(Some(*pid))).sum(),
        };
        CpuSpent { child, this: cpu_secs(None) }
    }

    /// Adds what was spent between two readings.
    pub fn add_since(&mut self, before: CpuSpent, after: CpuSpent) {
        let add = |sum: Option<f64>, before: Option<f64>, after: Option<f64>| {
            sum.zip(before.zip(after)).map(|(sum, (b, a))| sum + a - b)
        };
        self.child = add(self.child, before.child, after.child);
        self.this = add(self.this, before.this, after.this);
    }
}

/// CPU seconds (user + system) a process (this one for `None`) has used.
pub fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".into(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / if hz > 0 { hz as f64 } else { 100.0 })
}

/// Resets this process's `VmHWM` (Linux 4.0+; ignored where refused).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The median of `values` (the upper one of an even count); 0 if empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
