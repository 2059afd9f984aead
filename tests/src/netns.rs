//! Test hosts in network namespaces: each host is a namespace with one veth link to a bridge in
//! the test's own namespace, so processes on different hosts talk through the bridge, and a
//! host is cut off from all the others by setting its link down (and healed by setting it up).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// True when this machine can make network namespaces (root, `ip`, `nsenter`). Otherwise says
/// so loudly; under `CI=true` that is a failure.
pub fn can_run() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let tools = ["ip", "nsenter"]
        .iter()
        .all(|t| Command::new(t).arg("-V").output().is_ok());
    if root && tools {
        return true;
    }
    let why =
        format!("network namespace tests need root, ip and nsenter (root: {root}, tools: {tools})");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}; CI=true, so this is a failure");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {why} !!!!!!!!\n");
    false
}

fn run(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Hosts 1..=n on `10.213.<subnet>.0/24`; the test's own namespace is `.254` on the bridge.
pub struct Network {
    tag: String,
    subnet: u32,
    hosts: usize,
}

impl Network {
    /// Makes `hosts` namespaces linked to a new bridge.
    pub fn new(hosts: usize) -> Network {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let unique = std::process::id().wrapping_mul(31).wrapping_add(n);
        let net = Network {
            tag: format!("{:04x}", unique & 0xffff),
            subnet: 1 + unique % 250,
            hosts,
        };
        let bridge = net.bridge();
        run(&["link", "add", &bridge, "type", "bridge"]);
        run(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway()),
            "dev",
            &bridge,
        ]);
        run(&["link", "set", &bridge, "up"]);
        for i in 1..=hosts {
            let (ns, outside, inside) = (net.ns(i), net.outside(i), net.inside(i));
            run(&["netns", "add", &ns]);
            run(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ]);
            run(&["link", "set", &inside, "netns", &ns]);
            run(&["link", "set", &outside, "master", &bridge, "up"]);
            let addr = format!("{}/24", net.ip(i));
            run(&["-n", &ns, "addr", "add", &addr, "dev", &inside]);
            run(&["-n", &ns, "link", "set", &inside, "up"]);
            run(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn bridge(&self) -> String {
        format!("mfb{}", self.tag)
    }

    fn outside(&self, i: usize) -> String {
        format!("mfh{}{i}", self.tag)
    }

    fn inside(&self, i: usize) -> String {
        format!("mfn{}{i}", self.tag)
    }

    /// The namespace of host `i` (from 1), for [`crate::Process::start_in`].
    pub fn ns(&self, i: usize) -> String {
        format!("mf{}{i}", self.tag)
    }

    /// Host `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        format!("10.213.{}.{i}", self.subnet)
    }

    /// The test's own address on the bridge.
    pub fn gateway(&self) -> String {
        format!("10.213.{}.254", self.subnet)
    }

    /// Cuts host `i` off from every other host and from the test.
    pub fn cut(&self, i: usize) {
        run(&["link", "set", &self.outside(i), "down"]);
    }

    /// Links host `i` again.
    pub fn heal(&self, i: usize) {
        run(&["link", "set", &self.outside(i), "up"]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with it the other end.
        for i in 1..=self.hosts {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .status();
    }
}
