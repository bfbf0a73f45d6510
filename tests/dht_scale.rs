//! `bench dht` at 100 nodes: real nodes (the project's own Kademlia
//! configuration, identify, the file protocol, the limits) over libp2p's
//! memory transport in this process, joined in waves through one bootstrap
//! node; files put with three copies and looked up from other nodes, then
//! 20 % of the nodes stopped without warning and the lookups repeated, then
//! as many new nodes joined and the lookups run again. Bounded by a
//! timeout; the harness polls, it never sleeps for a fixed time.

use std::time::Duration;

use dfs_p2p::{
    bench::dht::{DhtOptions, bench_dht},
    net::behaviour::Wire,
};

const NODES: usize = 100;
const TEST_TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_nodes_find_every_file_before_and_after_churn() {
    let dir = tempfile::tempdir().unwrap();
    let options = DhtOptions {
        nodes: NODES,
        files: 20,
        lookups: 200,
        churn: 20,
        churn_steps: 2,
        repair_interval: Duration::from_secs(3),
        seed: 7,
        wire: Wire::Memory,
        dir: dir.path().to_path_buf(),
    };
    let report = tokio::time::timeout(TEST_TIMEOUT, bench_dht(options, |line| eprintln!("{line}")))
        .await
        .expect("the benchmark ends in time")
        .expect("the benchmark runs");
    eprintln!("{report}");
    assert_eq!(report.puts.failed, 0, "every put succeeds");
    assert_eq!(report.phases.len(), 3, "before churn, after it, after the joins");
    // A lookup asks the DHT for the root's provider records and stops once
    // two peers have answered with providers: a handful of requests, not
    // the 20-odd a full Kademlia lookup sends.
    let bound = 2.0 * (NODES as f64).log2();
    for phase in &report.phases {
        let (all, findable) = phase.success();
        let (median, _) = phase.dht_requests();
        eprintln!("{}: {all:.3} ({findable:.3} of findable), median {median}", phase.name);
        assert!(median <= bound, "{}: median DHT requests {median} > {bound:.1}", phase.name);
        assert!(phase.unknown == 0, "{}: {} nodes in no routing table", phase.name, phase.unknown);
    }
    let (before, _) = report.phases[0].success();
    assert!(before >= 0.99, "before churn only {:.1}% of lookups succeeded", before * 100.0);
    for phase in &report.phases[1..] {
        let (_, findable) = phase.success();
        assert!(
            findable >= 0.97,
            "{}: only {:.1}% of the lookups of files with a live copy succeeded",
            phase.name,
            findable * 100.0
        );
    }
    // A lost file fails its lookups whatever the DHT does. With repair after
    // each step, a file is lost only when every copy stops within one step
    // (say 2 of its holders among the same 10 of 90 nodes as the copy that
    // repair put back after the step before): rare, about one run in 25
    // loses one file by chance.
    let lost: usize = report.churn.iter().map(|s| s.lost).sum();
    assert!(lost <= 1, "{lost} files lost all their copies to churn in steps with repair");
    // The nodes left in two steps, and after each the holders' repair put
    // back every copy that had gone.
    assert_eq!(report.churn.len(), 2, "the churn ran in two steps");
    for (n, step) in report.churn.iter().enumerate() {
        assert_eq!(
            step.restored,
            step.short,
            "churn step {}: repair restored {} of {} files short of copies",
            n + 1,
            step.restored,
            step.short
        );
    }
    // Every put placed its extra copies; where, a fresh salted key decided
    // (`replicas::placement`), not the root's XOR distance.
    assert!(report.puts.extra_copies > 0, "no put placed a copy");
}
