//! A network lab for tests: hosts in network namespaces of their own, each
//! with one private address on a bridge that lives in a hub namespace, so
//! that peers come from different IP addresses (unlike loopback, which the
//! per-address limits exempt). Every address lives only inside namespaces
//! the lab creates, and the lab deletes them when dropped. Building a lab
//! needs root, `ip` (iproute2) and network namespaces; a lab that cannot be
//! built fails the test, never skips it.

#![allow(dead_code)] // each test binary uses its own part

use std::{
    net::Ipv4Addr,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// The lab's network: 10.213.0.0/16, one /16 on the bridge.
const NET: [u8; 2] = [10, 213];

/// Labs made by this process so far (each gets names of its own).
static LABS: AtomicU32 = AtomicU32::new(0);

/// A hub namespace with a bridge, and the hosts on it.
pub struct Lab {
    prefix: String,
    hub: String,
    hosts: Vec<String>,
}

/// A host of a lab: its namespace and its address.
#[derive(Clone, Debug)]
pub struct Host {
    pub netns: String,
    pub ip: Ipv4Addr,
}

impl Host {
    /// `/ip4/<ip>/tcp/0`: listen on the host's address, any port.
    pub fn listen(&self) -> String {
        format!("/ip4/{}/tcp/0", self.ip)
    }
}

/// Runs `ip ARGS`; fails the test, naming the command, if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` for the network lab: {e}"));
    assert!(
        out.status.success(),
        "network lab: `ip {}` failed: {} (the lab needs root, iproute2 and network namespaces)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Lab {
    /// A hub namespace with a bridge `br0`, up.
    pub fn new() -> Lab {
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("dfs{}x{n}", std::process::id());
        let hub = format!("{prefix}-hub");
        // A namespace of the same name left by a run that crashed.
        let _ = Command::new("ip").args(["netns", "del", &hub]).output();
        ip(&["netns", "add", &hub]);
        let lab = Lab { prefix, hub, hosts: Vec::new() };
        ip(&["-n", &lab.hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lab.hub, "link", "set", "br0", "up"]);
        lab
    }

    /// Host `n` (1–254): a namespace with loopback up and `eth0` at
    /// 10.213.0.`n`, on the hub's bridge.
    pub fn host(&mut self, n: u8) -> Host {
        let netns = format!("{}-h{n}", self.prefix);
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        ip(&["netns", "add", &netns]);
        self.hosts.push(netns.clone());
        let port = format!("v{n}");
        ip(&["-n", &self.hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0"]);
        ip(&["-n", &self.hub, "link", "set", "eth0", "netns", &netns]);
        ip(&["-n", &self.hub, "link", "set", &port, "master", "br0", "up"]);
        let addr = Ipv4Addr::new(NET[0], NET[1], 0, n);
        ip(&["-n", &netns, "addr", "add", &format!("{addr}/16"), "dev", "eth0"]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        Host { netns, ip: addr }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for netns in self.hosts.iter().chain([&self.hub]) {
            let _ = Command::new("ip").args(["netns", "del", netns]).output();
        }
    }
}

/// Moves the calling thread into `host`'s network namespace: the sockets
/// it opens from then on, and those of the threads it starts (a tokio
/// runtime's workers, built on it), are the host's.
pub fn enter(host: &Host) {
    let path = format!("/var/run/netns/{}", host.netns);
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: `setns` with a valid namespace descriptor changes only the
    // calling thread's network namespace.
    let done = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(done, 0, "setns {path}: {}", std::io::Error::last_os_error());
}
