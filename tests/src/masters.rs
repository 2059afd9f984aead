//! A cluster of several masters, each its own `mesofs master` process (on loopback, or each on
//! its own test host in a network namespace), with one agent and a mount in the test's own
//! namespace, for the tests of failover, partitions and membership.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::netns::Network;
use crate::{temp_dir, wait_until_ready, Mounted, Process, TestCa, TEST_RESOURCES};

/// Masters, an agent and a mount.
pub struct Masters {
    /// `masters[i]` is master `i + 1`.
    pub masters: Vec<Process>,
    /// Each master's address, by the same index.
    pub addrs: Vec<String>,
    /// The agent.
    pub agent: Process,
    /// The mount.
    pub mounter: Process,
    /// Where the cluster is mounted.
    pub mount: PathBuf,
    /// Mounts a test added with [`Masters::add_mount`].
    pub other_mounts: Vec<(Process, PathBuf)>,
    /// The test hosts, when the masters run on them.
    pub net: Option<Network>,
    master_args: Vec<String>,
    ca: TestCa,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

impl Masters {
    /// Starts `n` masters on loopback (with extra `mesofs master` flags) forming one cluster,
    /// an agent and a mount, and waits until the mount shows a leader and the agent.
    pub fn start(n: usize, master_args: &[&str]) -> Masters {
        let addrs = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        Masters::start_with(addrs, None, master_args)
    }

    /// Like [`Masters::start`], each master on its own test host (network namespace), so that
    /// a test can cut one off.
    pub fn start_on_hosts(n: usize, master_args: &[&str]) -> Masters {
        let net = Network::new(n);
        let addrs = (1..=n).map(|i| format!("{}:5050", net.ip(i))).collect();
        Masters::start_with(addrs, Some(net), master_args)
    }

    fn start_with(addrs: Vec<String>, net: Option<Network>, master_args: &[&str]) -> Masters {
        let dir = temp_dir();
        let ca = TestCa::new(dir.path());
        let mount = dir.path().join("mnt");
        let all = addrs.join(",");
        let ip = match &net {
            Some(n) => n.gateway(),
            None => "127.0.0.1".into(),
        };
        let listen = format!("{ip}:0");
        let mut agent_args = os(&[
            "agent",
            "--master",
            &all,
            "--listen",
            &listen,
            "--resources",
            TEST_RESOURCES,
            "--work-dir",
        ]);
        agent_args.push(dir.path().join("agent").into_os_string());
        agent_args.push("--tls".into());
        let agent_name = ca.unique("agent");
        agent_args.push(ca.issue("agent", &agent_name, &[&ip]).into_os_string());
        let mut mount_args = os(&["mount", "--master", &all, "--mount"]);
        mount_args.push(mount.clone().into_os_string());
        mount_args.push("--tls".into());
        mount_args.push(ca.issue("mount", "mount", &[]).into_os_string());
        let mut cluster = Masters {
            masters: Vec::new(),
            addrs,
            // Started before the masters: they look for a leader until one is elected.
            agent: Process::start("agent", agent_args, dir.path().join("agent.log")),
            mounter: Process::start("mount", mount_args, dir.path().join("mount.log")),
            mount,
            other_mounts: Vec::new(),
            net,
            master_args: master_args.iter().map(|s| s.to_string()).collect(),
            ca,
            dir,
        };
        for id in 1..=cluster.addrs.len() as u64 {
            let p = cluster.spawn_master(id);
            cluster.masters.push(p);
        }
        wait_until_ready(&mut cluster);
        cluster
    }

    /// The `--peers` list of every master.
    fn peers(&self) -> String {
        self.addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Master `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("master{id}"))
    }

    fn spawn_master(&self, id: u64) -> Process {
        let addr = &self.addrs[id as usize - 1];
        let mut args = os(&[
            "master",
            "--id",
            &id.to_string(),
            "--listen",
            addr,
            "--peers",
            &self.peers(),
            "--data-dir",
        ]);
        args.push(self.data_dir(id).into_os_string());
        let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
        args.push("--tls".into());
        args.push(
            self.ca
                .issue("master", &id.to_string(), &[host])
                .into_os_string(),
        );
        let extra: Vec<&str> = self.master_args.iter().map(String::as_str).collect();
        args.extend(self.ca.acl_args(&extra));
        args.extend(self.master_args.iter().map(OsString::from));
        let ns = self.net.as_ref().map(|n| n.ns(id as usize));
        Process::start_in(
            &format!("master{id}"),
            ns.as_deref(),
            args,
            self.dir.path().join(format!("master{id}.log")),
        )
    }

    /// Master `id`'s process.
    pub fn master(&mut self, id: u64) -> &mut Process {
        &mut self.masters[id as usize - 1]
    }

    /// The id of the leader the mount shows, if any.
    pub fn leader(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.mount.join("cluster/leader")).ok()?;
        text.trim()
            .strip_prefix('m')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Waits until the mount shows a leader other than `not` (any leader with `None`).
    pub fn wait_for_leader(&mut self, not: Option<u64>, timeout: Duration) -> u64 {
        let mount = self.mount.clone();
        let mut found = 0;
        self.wait_for("a leader", timeout, || {
            let text = std::fs::read_to_string(mount.join("cluster/leader")).unwrap_or_default();
            match text
                .trim()
                .strip_prefix('m')
                .and_then(|t| t.split_whitespace().next())
                .and_then(|t| t.parse::<u64>().ok())
            {
                Some(id) if Some(id) != not => {
                    found = id;
                    true
                }
                _ => false,
            }
        });
        found
    }

    /// SIGKILLs master `id`.
    pub fn kill_master(&mut self, id: u64) {
        self.master(id).kill9();
    }

    /// Starts master `id` again with the same flags and data directory.
    pub fn restart_master(&mut self, id: u64) {
        let p = self.spawn_master(id);
        self.masters[id as usize - 1] = p;
    }

    /// Mounts the cluster a second time, the mount asking the masters in this order (ids).
    pub fn add_mount(&mut self, name: &str, order: &[u64]) -> PathBuf {
        self.add_mount_on(name, None, order, &[])
    }

    /// Mounts the cluster a second time, with the mount process on test host `host` (see
    /// [`Masters::start_on_hosts`]), asking the masters in this order (ids), with extra
    /// `mesofs mount` flags.
    pub fn add_mount_on(
        &mut self,
        name: &str,
        host: Option<u64>,
        order: &[u64],
        extra: &[&str],
    ) -> PathBuf {
        let list: Vec<&str> = order
            .iter()
            .map(|id| self.addrs[*id as usize - 1].as_str())
            .collect();
        let path = self.dir.path().join(name);
        let mut args = os(&["mount", "--master", &list.join(","), "--mount"]);
        args.push(path.clone().into_os_string());
        args.push("--tls".into());
        args.push(self.ca.issue("mount", name, &[]).into_os_string());
        args.extend(extra.iter().map(OsString::from));
        let ns = host.and_then(|h| Some(self.net.as_ref()?.ns(h as usize)));
        let p = Process::start_in(
            name,
            ns.as_deref(),
            args,
            self.dir.path().join(format!("{name}.log")),
        );
        self.other_mounts.push((p, path.clone()));
        let leader = path.join("cluster/leader");
        self.wait_for(
            &format!("mount {name} to show a leader"),
            Duration::from_secs(60),
            || std::fs::read_to_string(&leader).is_ok_and(|s| !s.trim().is_empty()),
        );
        path
    }

    /// Runs a bash script in another mount made by [`Masters::add_mount`].
    pub fn sh_in(&self, mount: &Path, script: &str) -> std::process::Output {
        std::process::Command::new("bash")
            .args(["-c", script])
            .current_dir(mount)
            .output()
            .expect("running bash")
    }

    /// A process's log, by name (`master2`, `agent`, `mount`...).
    pub fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The directory the test's files may go in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Mounted for Masters {
    fn mountpoint(&self) -> &Path {
        &self.mount
    }

    fn processes(&self) -> Vec<&Process> {
        let mut all: Vec<&Process> = self.masters.iter().collect();
        all.push(&self.agent);
        all.push(&self.mounter);
        all.extend(self.other_mounts.iter().map(|(p, _)| p));
        all
    }

    fn processes_mut(&mut self) -> Vec<&mut Process> {
        // A master a test killed has no process to notice exiting.
        let mut all: Vec<&mut Process> = self.masters.iter_mut().collect();
        all.push(&mut self.agent);
        all.push(&mut self.mounter);
        all.extend(self.other_mounts.iter_mut().map(|(p, _)| p));
        all
    }
}

impl Drop for Masters {
    fn drop(&mut self) {
        // The agent first, while a master can still take its tasks' last updates.
        self.agent.terminate();
        self.mounter.terminate();
        for (p, path) in &mut self.other_mounts {
            p.terminate();
            let _ = nix::mount::umount2(path.as_path(), nix::mount::MntFlags::MNT_DETACH);
        }
        for m in &mut self.masters {
            m.terminate();
        }
        let _ = nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH);
    }
}
