//! What `bench net` measured, and the report it prints.

use std::fmt;

use crate::bench::{median, proxy::Link};
use crate::units::human_size;

/// What `bench_net` measured. Throughputs are in bytes per second.
#[derive(Debug, Clone)]
pub struct NetBenchReport {
    pub size: u64,
    /// Serving nodes, each behind its link if there is one.
    pub providers: usize,
    pub link: Option<Link>,
    /// Throughput of each get.
    pub get_runs: Vec<f64>,
    pub get_median: f64,
    /// Throughput of each raw-stream transfer.
    pub raw_runs: Vec<f64>,
    pub raw_median: f64,
    /// The raw stream with both ends in this process, when the baseline
    /// ran between two processes over loopback (for reference).
    pub raw_one_process_median: Option<f64>,
    /// `get_median / raw_median`: the get against one raw stream (over one
    /// link, with links).
    pub ratio: f64,
    /// `ratio / providers`: the get against one raw stream per serving
    /// node, each over its own link.
    pub ratio_per_link: f64,
    /// Peak RSS of each serving node that ran in its own process.
    pub server_peak_rss: Vec<Option<u64>>,
    /// Peak RSS of this process during the gets (the getter node, plus the
    /// serving nodes and the links when `server_peak_rss` is empty).
    pub getter_peak_rss: Option<u64>,
    /// How the serving nodes ran.
    pub server_in_child: bool,
    /// CPU seconds per GB got: the serving children's together, and this
    /// process's.
    pub server_cpu_per_gb: Option<f64>,
    pub getter_cpu_per_gb: Option<f64>,
    /// CPU seconds per GB streamed by the two-process raw baseline: its
    /// serving child's, and this process's (the receiving end).
    pub raw_cpu_per_gb: Option<(f64, f64)>,
    /// CPU seconds per GB of the receiving end of a checked raw stream
    /// (SHA-256 and AES-GCM of every MiB, see `bench::raw`): the floor of
    /// the getting node's, measured in the same run.
    pub floor_cpu_per_gb: Option<f64>,
    /// CPU seconds per GB got of the links' process, when they had one.
    pub link_cpu_per_gb: Option<f64>,
    /// With links: the bytes they carried toward the getter during each
    /// get (the file and what the protocols add) ...
    pub link_bytes: Vec<u64>,
    /// ... and toward the receiving end of each raw transfer.
    pub raw_link_bytes: Vec<u64>,
    /// With links: the connections the getter opened in each run, up to
    /// the end of its get, and those the serving nodes' links took
    /// meanwhile.
    pub getter_connections: Vec<u64>,
    pub link_connections: Vec<u64>,
}

impl NetBenchReport {
    /// Whether every get and every raw transfer went wholly through the
    /// links: each carried at least the file toward its receiver, and every
    /// connection the getter opened crossed them. True without links.
    pub fn links_carried_everything(&self) -> bool {
        self.link_bytes.iter().chain(&self.raw_link_bytes).all(|b| *b >= self.size)
            && self.getter_connections.iter().zip(&self.link_connections).all(|(g, l)| g <= l)
    }

    /// The raw stream's CPU per GB at each end, when it was counted, and
    /// the getting node's against its floor.
    fn fmt_raw_cpu(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((serving, receiving)) = self.raw_cpu_per_gb else { return Ok(()) };
        writeln!(
            f,
            "              raw stream: serving end {serving:.2} s, receiving end {receiving:.2} s"
        )?;
        if let (Some(floor), Some(getter), true) =
            (self.floor_cpu_per_gb, self.getter_cpu_per_gb, self.server_in_child)
        {
            writeln!(
                f,
                "              floor: {floor:.2} s (a raw stream's receiving end that also \
                 checks SHA-256 and AES-GCM of every MiB); getting node / floor: {:.2}",
                getter / floor
            )?;
        }
        Ok(())
    }

    fn fmt_loopback(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mbs = |v: f64| v / 1e6;
        let runs = |r: &[f64]| r.iter().map(|v| format!("{:.0}", mbs(*v))).collect::<Vec<_>>();
        let mib =
            |b: Option<u64>| b.map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
        writeln!(f, "network benchmark: get of {} bytes from one peer over loopback", self.size)?;
        writeln!(
            f,
            "  get:        {:.0} MB/s median (runs: {} MB/s)",
            mbs(self.get_median),
            runs(&self.get_runs).join(", ")
        )?;
        let ends = match self.raw_one_process_median {
            Some(_) => "its ends in two processes, as the nodes are",
            None => "both ends in this process, as the nodes are",
        };
        writeln!(
            f,
            "  raw stream: {:.0} MB/s median (runs: {} MB/s; one TCP+Noise+Yamux stream, {ends})",
            mbs(self.raw_median),
            runs(&self.raw_runs).join(", ")
        )?;
        if let Some(one) = self.raw_one_process_median {
            writeln!(f, "              {:.0} MB/s median with both ends in one process", mbs(one))?;
        }
        writeln!(f, "  get / raw:  {:.2}", self.ratio)?;
        let cpu = |c: Option<f64>| c.map_or("n/a".into(), |c| format!("{c:.2} s"));
        if self.server_in_child {
            writeln!(
                f,
                "  CPU per GB: serving node {}, getting node {}",
                cpu(self.server_cpu_per_gb),
                cpu(self.getter_cpu_per_gb)
            )?;
        } else {
            writeln!(f, "  CPU per GB: {} (both nodes)", cpu(self.getter_cpu_per_gb))?;
        }
        self.fmt_raw_cpu(f)?;
        if self.server_in_child {
            writeln!(
                f,
                "  peak RSS:   serving node {}, getting node {}",
                mib(self.server_peak_rss.first().copied().flatten()),
                mib(self.getter_peak_rss)
            )
        } else {
            writeln!(f, "  peak RSS:   {} (both nodes in one process)", mib(self.getter_peak_rss))
        }
    }

    fn fmt_links(&self, f: &mut fmt::Formatter<'_>, link: Link) -> fmt::Result {
        let mbs = |v: f64| v / 1e6;
        let runs = |r: &[f64]| r.iter().map(|v| format!("{:.1}", mbs(*v))).collect::<Vec<_>>();
        let mib =
            |b: Option<u64>| b.map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
        let cpu = |c: Option<f64>| c.map_or("n/a".into(), |c| format!("{c:.2} s"));
        let n = self.providers;
        let from = match n {
            1 => format!("1 provider, behind a link of {link}"),
            n => format!("{n} providers, each behind a link of {link}"),
        };
        writeln!(f, "network benchmark: get of {} from {from}", human_size(self.size))?;
        writeln!(
            f,
            "  get:        {:.1} MB/s median (runs: {} MB/s)",
            mbs(self.get_median),
            runs(&self.get_runs).join(", ")
        )?;
        writeln!(
            f,
            "  raw stream: {:.1} MB/s median (runs: {} MB/s; one TCP+Noise+Yamux stream through \
             one such link)",
            mbs(self.raw_median),
            runs(&self.raw_runs).join(", ")
        )?;
        if n == 1 {
            writeln!(f, "  get / raw:  {:.2}", self.ratio)?;
        } else {
            writeln!(
                f,
                "  get / raw:  {:.2} (the get from {n} providers against one raw stream over \
                 one link)",
                self.ratio
            )?;
            writeln!(
                f,
                "              {:.2} per link (against {n} raw streams, one over each link)",
                self.ratio_per_link
            )?;
        }
        if let Some(rate) = link.bytes_per_sec() {
            let all = rate * n as f64;
            writeln!(
                f,
                "  link use:   get {:.0}% of {} {:.1} MB/s, raw stream {:.0}% of one link's",
                100.0 * self.get_median / all,
                if n == 1 { "the link's" } else { "the links' total" },
                mbs(all),
                100.0 * self.raw_median / rate,
            )?;
        }
        if self.links_carried_everything() {
            let per_get = median(&self.link_bytes.iter().map(|b| *b as f64).collect::<Vec<_>>());
            let connections = self.getter_connections.iter().max().copied().unwrap_or(0);
            writeln!(
                f,
                "  links:      every get through them: {:.2} MB toward the getter per get \
                 (median; the file and {:.1}% more), over {connections} connection{} each, all \
                 through the links",
                mbs(per_get),
                100.0 * (per_get / self.size as f64 - 1.0),
                if connections == 1 { "" } else { "s" },
            )?;
        }
        for (run, bytes) in self.link_bytes.iter().enumerate() {
            if *bytes < self.size {
                writeln!(
                    f,
                    "  WARNING: get {}: the links carried {bytes} bytes toward the getter, fewer \
                     than the file's {}: the getter reached a serving node around its link, so \
                     this run does not measure the link",
                    run + 1,
                    self.size
                )?;
            }
        }
        for (run, bytes) in self.raw_link_bytes.iter().enumerate() {
            if *bytes < self.size {
                writeln!(
                    f,
                    "  WARNING: raw transfer {}: its link carried {bytes} bytes of {}: the raw \
                     stream went around its link, so it does not measure the link",
                    run + 1,
                    self.size
                )?;
            }
        }
        for (run, (getter, links)) in
            self.getter_connections.iter().zip(&self.link_connections).enumerate()
        {
            if getter > links {
                writeln!(
                    f,
                    "  WARNING: run {}: the getter opened {getter} connections but the links took \
                     {links}: some went around the links",
                    run + 1
                )?;
            }
        }
        if self.server_in_child {
            let serving = if n == 1 { "serving node" } else { "serving nodes together" };
            writeln!(
                f,
                "  CPU per GB: {serving} {}, getting node {}, links {} (a process of their own)",
                cpu(self.server_cpu_per_gb),
                cpu(self.getter_cpu_per_gb),
                cpu(self.link_cpu_per_gb)
            )?;
        } else {
            writeln!(
                f,
                "  CPU per GB: {} (every node and the links, in this process)",
                cpu(self.getter_cpu_per_gb)
            )?;
        }
        self.fmt_raw_cpu(f)?;
        if self.server_in_child {
            let serving = self.server_peak_rss.iter().map(|r| mib(*r)).collect::<Vec<_>>();
            writeln!(
                f,
                "  peak RSS:   serving node{} {}; getting node {}",
                if n == 1 { "" } else { "s" },
                serving.join(", "),
                mib(self.getter_peak_rss)
            )
        } else {
            writeln!(
                f,
                "  peak RSS:   {} (every node and the links, in this process)",
                mib(self.getter_peak_rss)
            )
        }
    }
}

impl fmt::Display for NetBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.link {
            None => self.fmt_loopback(f),
            Some(link) => self.fmt_links(f, link),
        }
    }
}
