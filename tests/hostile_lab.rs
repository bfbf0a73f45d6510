//! Hostile peers from addresses of their own. Loopback is exempt from the
//! limits per remote address (every process of a machine shares it), so
//! these attacks run in a lab of network namespaces (`lab`): each host
//! has its own private address on a bridge, and the attackers share one.
//! The nodes are the real binary, each in its host's namespace; attackers
//! built from the library run on threads moved into theirs.
//!
//! Each test checks that its attack landed as well as that it was held to
//! what one address may have.

mod cli_support;
mod lab;

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use cli_support::Node;
use lab::{Host, Lab};

/// One lab at a time: the tests share two cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// How long the nodes of a lab may take to find each other.
const JOIN: Duration = Duration::from_secs(60);

/// A number from the node's `stat` row `label`: the word at `at`.
fn stat_number(node: &mut Node, label: &str, at: usize) -> usize {
    node.send("stat");
    let line = node.expect_out(|l| l.starts_with(label));
    let n = line.split_whitespace().nth(at).and_then(|n| n.parse().ok());
    n.unwrap_or_else(|| panic!("{}: no number in {line:?}", node.name))
}

fn pinned(node: &mut Node) -> usize {
    stat_number(node, "files", 1)
}

/// Waits until `node` is connected to `n` peers or more.
fn wait_for_peers(node: &mut Node, n: usize) {
    let deadline = Instant::now() + JOIN;
    loop {
        let peers = stat_number(node, "peers", 1);
        if peers >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{}: {peers} peers of {n}", node.name);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A node of `host`, in a data directory under `dir`.
fn node_on(host: &Host, dir: &Path, name: &str, extra: &[&str]) -> Node {
    let listen = host.listen();
    let mut args = vec!["--listen", listen.as_str()];
    args.extend(extra);
    Node::start_in(&host.netns, name, &dir.join(name), &args)
}

#[test]
fn many_identities_on_one_address_take_one_copy_of_each_file() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::new();
    // Three honest hosts, and one host of six attacker identities: the
    // owner wants four copies, three of them on other nodes. Picked from
    // the eight others at random, the attackers would take two or three
    // of the three most of the time; one copy per address leaves them one.
    let hosts: Vec<Host> = (1..=3).map(|n| lab.host(n)).collect();
    let attacker_host = lab.host(100);
    let mut owner = node_on(&hosts[0], dir.path(), "owner", &["--replicas", "4"]);
    let bootstrap = owner.addrs[0].clone();
    let join = ["--bootstrap", bootstrap.as_str()];
    let mut honest: Vec<Node> =
        (1..3).map(|i| node_on(&hosts[i], dir.path(), &format!("honest-{i}"), &join)).collect();
    let mut attackers: Vec<Node> = (0..6)
        .map(|i| node_on(&attacker_host, dir.path(), &format!("attacker-{i}"), &join))
        .collect();
    wait_for_peers(&mut owner, 8);

    for round in 0..3 {
        let file = dir.path().join(format!("file-{round}"));
        std::fs::write(&file, cli_support::data(256 * 1024, 40 + round)).unwrap();
        let before: usize = attackers.iter_mut().map(pinned).sum();
        let (_, copies) = owner.put_confirmed(&file);
        let taken = attackers.iter_mut().map(pinned).sum::<usize>() - before;
        eprintln!("file {round}: {copies} copies, {taken} on the attackers' address");
        assert_eq!(copies, 4, "file {round}: {copies} copies");
        // Landed: the attackers were eligible, and took a copy.
        assert!(taken >= 1, "file {round}: the attackers' address took no copy");
        assert!(taken <= 1, "file {round}: the attackers' address took {taken} of 3 copies");
    }
    for node in honest.iter_mut().chain(attackers.iter_mut()) {
        node.stop();
    }
    owner.stop();
}

#[test]
fn one_address_holds_its_share_of_connections_and_others_are_served() {
    use dfs_p2p::net::limits::MAX_ESTABLISHED_PER_IP;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::new();
    let (victim_host, honest_host, attacker_host) = (lab.host(1), lab.host(2), lab.host(100));
    let mut victim = node_on(&victim_host, dir.path(), "victim", &["--replicas", "1"]);
    let file = dir.path().join("own-file");
    let bytes = cli_support::data(3 << 20, 9);
    std::fs::write(&file, &bytes).unwrap();
    let ticket = victim.put(&file);
    let target: libp2p::Multiaddr = victim.addrs[0].parse().unwrap();

    // From one address, more identities than the address may connect.
    let identities = MAX_ESTABLISHED_PER_IP + 8;
    let (connected, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (up, down) = (connected.clone(), refused.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let attack = std::thread::spawn(move || {
        lab::enter(&attacker_host);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            // One after the other: 16 at once would meet the share of
            // connections an address may have being set up.
            for i in 0..identities {
                let (target, up2, down2) = (target.clone(), up.clone(), down.clone());
                tokio::spawn(async move { hold_connection(target, up2, down2).await });
                let counted = || up.load(Ordering::Relaxed) + down.load(Ordering::Relaxed);
                while counted() <= i {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            let _ = stopped.await;
        });
    });

    // Landed: the address got its share of connections; refused: no more.
    let deadline = Instant::now() + JOIN;
    loop {
        let (up, down) = (connected.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
        if up == MAX_ESTABLISHED_PER_IP && down == identities - MAX_ESTABLISHED_PER_IP {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "of {identities} identities on one address, {up} hold a connection and {down} were \
             refused (share: {MAX_ESTABLISHED_PER_IP})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(stat_number(&mut victim, "peers", 1) >= MAX_ESTABLISHED_PER_IP);

    // A node on another address joins and gets the file meanwhile.
    let out = dir.path().join("got");
    let got = std::process::Command::new("ip")
        .args(["netns", "exec", &honest_host.netns, cli_support::BIN, "get", &ticket])
        .args(["--bootstrap", &victim.addrs[0], "--data-dir"])
        .arg(dir.path().join("honest"))
        .arg("-o")
        .arg(&out)
        .env_remove("DFS_DATA_DIR")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(got.status.success(), "the honest get failed: {}", cli_support::text(&got.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    assert_eq!(connected.load(Ordering::Relaxed), MAX_ESTABLISHED_PER_IP, "the share held");

    let _ = stop.send(());
    attack.join().unwrap();
    victim.stop();
}

/// One identity's connection to `target`: counted in `up` while it is
/// established, in `down` once the target refused or closed it.
async fn hold_connection(target: libp2p::Multiaddr, up: Arc<AtomicUsize>, down: Arc<AtomicUsize>) {
    use futures::StreamExt;
    use libp2p::swarm::SwarmEvent;
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| libp2p::swarm::dummy::Behaviour)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    swarm.dial(target).unwrap();
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::ConnectionEstablished { .. } => {
                up.fetch_add(1, Ordering::Relaxed);
            }
            SwarmEvent::ConnectionClosed { num_established: 0, .. } => {
                up.fetch_sub(1, Ordering::Relaxed);
                down.fetch_add(1, Ordering::Relaxed);
                return;
            }
            SwarmEvent::OutgoingConnectionError { .. } => {
                down.fetch_add(1, Ordering::Relaxed);
                return;
            }
            _ => {}
        }
    }
}
