//! What `bench dht` says: its progress lines, the report's table, and the
//! plot of the lookups' DHT requests and latency.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
};

use super::{ChurnStep, DhtReport, FILE_SIZE, IDLE, Idle, Phase, QUIET_LIMIT, REPLICAS, WAVE, mib};
use crate::net::behaviour::{KAD_REPLICATION, Wire};

pub(super) fn churn_line(n: usize, steps: usize, step: &ChurnStep) -> String {
    if steps == 1 {
        return format!("churn: {} nodes stopped at once", step.stopped);
    }
    format!(
        "churn step {n} of {steps}: {} nodes stopped; {} files short of copies, {} with none; repair restored {} of {} in {:.1} s",
        step.stopped,
        step.short,
        step.lost,
        step.restored,
        step.short,
        step.repair_time.as_secs_f64()
    )
}

pub(super) fn idle_line(idle: &Idle) -> String {
    let quiet = if idle.quiet_after >= QUIET_LIMIT {
        format!(
            "the joins' DHT work was still going on {} s after the last wave",
            QUIET_LIMIT.as_secs()
        )
    } else {
        format!(
            "the joins' DHT work ended {:.1} s after the last wave",
            idle.quiet_after.as_secs_f64()
        )
    };
    format!(
        "{quiet}; then, left alone for {} s: {} CPU-s, {} connections opened, {} DHT requests",
        IDLE.as_secs(),
        idle.cpu_secs.map_or("?".into(), |c| format!("{c:.1}")),
        idle.connections_opened,
        idle.dht_requests,
    )
}

pub(super) fn phase_line(phase: &Phase) -> String {
    let ok = phase.lookups.iter().filter(|l| l.ok).count();
    format!("{}: {ok} of {} lookups found the file", phase.name, phase.lookups.len())
}

/// Minimum, median and maximum.
fn spread(values: &[usize]) -> String {
    let mut v = values.to_vec();
    v.sort_unstable();
    match (v.first(), v.get(v.len() / 2), v.last()) {
        (Some(min), Some(mid), Some(max)) => format!("{min} / {mid} / {max}"),
        _ => "-".into(),
    }
}

impl fmt::Display for DhtReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        let wire = match o.wire {
            Wire::Memory => "memory transport",
            Wire::Tcp => "loopback TCP",
        };
        writeln!(
            f,
            "bench dht: {} nodes ({wire}, Noise, Yamux), {} files of {FILE_SIZE} bytes with {REPLICAS} copies, {} lookups per phase, {}% churn, seed {}",
            o.nodes, o.files, o.lookups, o.churn, o.seed
        )?;
        let per_node = mib(self.rss_joined.saturating_sub(self.rss_start)) / o.nodes as f64;
        writeln!(
            f,
            "joined in waves of {WAVE} (each once the tables had settled) through one bootstrap node in {:.1} s; memory {:.0} MiB resident, {per_node:.2} MiB per node",
            self.join.as_secs_f64(),
            mib(self.rss_joined),
        )?;
        writeln!(f, "{}", idle_line(&self.idle))?;
        let p = &self.puts;
        writeln!(
            f,
            "puts: {} of {} in {:.1} s; copies beyond the uploader's: {} ({:.1}% on the {} XOR-closest nodes, {:.1}% on the {KAD_REPLICATION} closest); provider records on {:.1}% of the {KAD_REPLICATION} closest nodes; memory {:+.0} MiB over the puts",
            p.files - p.failed,
            p.files,
            p.elapsed.as_secs_f64(),
            p.extra_copies,
            pct(p.on_closest, p.extra_copies),
            REPLICAS - 1,
            pct(p.on_closest_k, p.extra_copies),
            pct(p.records_on_closest, p.closest_slots),
            (p.rss_after as f64 - p.rss_before as f64) / (1 << 20) as f64,
        )?;
        writeln!(f)?;
        write!(f, "| |")?;
        for phase in &self.phases {
            write!(f, " {} |", phase.name)?;
        }
        writeln!(f)?;
        write!(f, "|---|")?;
        for _ in &self.phases {
            write!(f, "---|")?;
        }
        writeln!(f)?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, cell: &dyn Fn(&Phase) -> String| {
            write!(f, "| {name} |")?;
            for phase in &self.phases {
                write!(f, " {} |", cell(phase))?;
            }
            writeln!(f)
        };
        row(f, "live nodes", &|p| p.live.to_string())?;
        row(f, "lookups found / run", &|p| {
            format!("{} / {}", p.lookups.iter().filter(|l| l.ok).count(), p.lookups.len())
        })?;
        row(f, "success", &|p| format!("{:.2}%", p.success().0 * 100.0))?;
        row(f, "success, files with a live copy", &|p| format!("{:.2}%", p.success().1 * 100.0))?;
        row(f, "latency p50 / p99", &|p| {
            let (p50, p99) = p.latency_ms();
            format!("{p50:.1} / {p99:.1} ms")
        })?;
        row(f, "DHT requests p50 / p99", &|p| {
            let (p50, p99) = p.dht_requests();
            format!("{p50:.0} / {p99:.0}")
        })?;
        row(f, "Have probes p50", &|p| format!("{:.0}", p.probes()))?;
        row(f, "routing table min / median / max", &|p| spread(&p.routing))?;
        row(f, "closest peers known", &|p| format!("{:.1}%", p.neighbourhood * 100.0))?;
        row(f, "nodes in no routing table", &|p| p.unknown.to_string())?;
        row(f, "entries of stopped nodes", &|p| p.stale.to_string())?;
        row(f, "provider records per node min / median / max", &|p| spread(&p.provider_records))?;
        row(f, "connections per node min / median / max", &|p| spread(&p.connections))?;
        row(f, "converged after the last wave of joins", &|p| match p.converged {
            Some(t) => format!("{:.1} s", t.as_secs_f64()),
            None if p.name.contains("stopped") => "-".into(),
            None => format!("settled at {:.1}%", p.neighbourhood * 100.0),
        })?;
        row(f, "memory resident", &|p| format!("{:.0} MiB", mib(p.rss)))?;
        writeln!(f)?;
        for (n, step) in self.churn.iter().enumerate() {
            writeln!(f, "{}", churn_line(n + 1, self.churn.len(), step))?;
        }
        if !self.churn.is_empty() {
            writeln!(f)?;
        }
        write!(f, "2·log2(N) = {:.1}; ", 2.0 * (o.nodes as f64).log2())?;
        if let Some(cpu) = self.cpu_secs {
            write!(f, "CPU {cpu:.0} s; ")?;
        }
        if let Some(peak) = self.peak_rss {
            write!(f, "peak memory {:.0} MiB; ", mib(peak))?;
        }
        write!(f, "ran {:.0} s", self.elapsed.as_secs_f64())
    }
}

fn pct(part: usize, whole: usize) -> f64 {
    if whole == 0 { 100.0 } else { part as f64 * 100.0 / whole as f64 }
}

/// Writes the report (`dht-<N>.md`) and its plot (`dht-<N>.svg`: the
/// distribution of DHT requests per lookup and the latency of lookups, per
/// phase) into `out`; returns their paths.
pub fn write_report(report: &DhtReport, out: &Path) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let n = report.options.nodes;
    let table = out.join(format!("dht-{n}.md"));
    std::fs::write(&table, format!("{report}\n"))
        .map_err(|e| format!("cannot write {}: {e}", table.display()))?;
    let plot = out.join(format!("dht-{n}.svg"));
    draw(report, &plot).map_err(|e| format!("cannot draw {}: {e}", plot.display()))?;
    Ok((table, plot))
}

fn draw(report: &DhtReport, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let colours = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44)];

    // Left: the share of lookups that sent each number of DHT requests.
    let mut counts: Vec<HashMap<u32, usize>> = Vec::new();
    let mut most = 1;
    for phase in &report.phases {
        let mut c = HashMap::new();
        for l in &phase.lookups {
            *c.entry(l.dht_requests).or_default() += 1;
            most = most.max(l.dht_requests);
        }
        counts.push(c);
    }
    let top = counts
        .iter()
        .zip(&report.phases)
        .flat_map(|(c, p)| c.values().map(move |&v| v as f64 / p.lookups.len().max(1) as f64))
        .fold(0.0f64, f64::max);
    let mut chart = ChartBuilder::on(&left)
        .caption(
            format!("DHT requests per lookup, {} nodes", report.options.nodes),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(0u32..most + 1, 0.0..(top * 1.1).max(0.01))?;
    chart
        .configure_mesh()
        .x_desc("requests")
        .y_desc("share of lookups")
        .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
        .draw()?;
    for (n, (phase, c)) in report.phases.iter().zip(&counts).enumerate() {
        let colour = colours[n % colours.len()];
        let total = phase.lookups.len().max(1) as f64;
        let points: Vec<(u32, f64)> =
            (0..=most).map(|r| (r, c.get(&r).copied().unwrap_or(0) as f64 / total)).collect();
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(phase.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
            });
    }
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw()?;

    // Right: the share of lookups done within each time.
    let slowest = report
        .phases
        .iter()
        .flat_map(|p| p.lookups.iter().map(|l| l.latency.as_secs_f64() * 1e3))
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(&right)
        .caption("lookups done within a time", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d((0.5f64..slowest * 1.2).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("ms (log)")
        .y_desc("lookups done")
        .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
        .draw()?;
    for (n, phase) in report.phases.iter().enumerate() {
        let colour = colours[n % colours.len()];
        let mut ms: Vec<f64> =
            phase.lookups.iter().filter(|l| l.ok).map(|l| l.latency.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let total = phase.lookups.len().max(1) as f64;
        let points: Vec<(f64, f64)> =
            ms.iter().enumerate().map(|(i, &t)| (t.max(0.5), (i + 1) as f64 / total)).collect();
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(phase.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
