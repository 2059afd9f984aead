//! Cgroup isolation through cgroups-rs.
//!
//! Layout: on v1, one group per controller hierarchy (`cpu`, `cpuacct` when mounted, `memory`,
//! `pids`, `freezer`; never `cpuset`, whose fresh groups have no cpus and refuse tasks), at
//! `<agent's own cgroup>/mesofs/<instance>/<task>` in each, so tasks stay inside whatever
//! confines the agent. On v2, one group at `/mesofs/<instance>/<task>` of the unified
//! hierarchy: v2 forbids enabling controllers below a group that holds processes, and the
//! agent's own group holds the agent. The agent never joins a task group; only the forked
//! child does, before exec. An agent's instance is `agent-<agent id>`, the same across its
//! restarts so that it finds its tasks again; other isolators (tests, benchmarks) use
//! `<pid>-<n>`, swept once that process is gone.

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cgroups_rs::fs::cgroup::get_cgroups_relative_paths;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::freezer::FreezerController;
use cgroups_rs::fs::hierarchies::{self, V1, V2};
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::Hierarchy;
use cgroups_rs::fs::{Cgroup, Controller, Controllers, MaxValue};
use cgroups_rs::FreezerState;
use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, warn};

use super::{validate_id, Isolation, Isolator, IsolatorError, Joiner, Limits, Usage};

/// CFS period; the quota is `cpus_milli * 100` µs per period, i.e. `cpus` cores.
const CFS_PERIOD_US: u64 = 100_000;
/// The kernel refuses quotas under 1 ms.
const MIN_CFS_QUOTA_US: u64 = 1_000;
/// v1 cpu.shares bounds.
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = cgroups_rs::CPU_SHARES_V1_MAX;
/// How long killing waits for processes to die before calling them survivors.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long destroying retries a busy group.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(3);

/// v2: whether an OOM kill takes every process of the group.
const OOM_GROUP: &str = "memory.oom.group";

/// The inode of the initial pid namespace (a kernel constant).
const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;

/// Distinguishes isolators made by one process (an agent per isolator).
static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// The cgroup mounts, read once when the isolator is made (cgroups-rs's `auto()` would read
/// `/proc/self/mountinfo` again for every group it loads, five times per launch on v1).
#[derive(Clone, Debug)]
enum Mounts {
    V1(V1),
    V2(V2),
}

impl Mounts {
    fn read() -> Mounts {
        if hierarchies::is_cgroup2_unified_mode() {
            Mounts::V2(V2::new())
        } else {
            Mounts::V1(V1::new())
        }
    }

    fn hierarchy(&self) -> Box<dyn Hierarchy> {
        match self {
            Mounts::V1(v1) => Box::new(v1.clone()),
            Mounts::V2(v2) => Box::new(v2.clone()),
        }
    }
}

/// Where one hierarchy's task groups go: their parent's path relative to the hierarchy's
/// mount, and the controllers cgroups-rs should handle there.
#[derive(Clone, Debug)]
struct Base {
    mounts: Mounts,
    path: String,
    controllers: Vec<String>,
}

impl Base {
    fn load(&self, child: &str) -> Cgroup {
        let path = if child.is_empty() {
            self.path.clone()
        } else {
            format!("{}/{child}", self.path)
        };
        Cgroup::load_with_specified_controllers(
            self.mounts.hierarchy(),
            path,
            self.controllers.clone(),
        )
    }
}

/// Isolates each task in its own cgroups with cpu, memory and pids limits (cgroup v1 or v2).
pub struct CgroupsIsolator {
    v2: bool,
    instance: String,
    bases: Vec<Base>,
    base_dirs: Vec<PathBuf>,
}

impl CgroupsIsolator {
    /// An isolator whose groups live under `mesofs/<pid>-<n>`, unique to this process.
    /// Also cleans up after dead agents: their leftover task groups are killed and removed.
    pub fn new() -> Result<CgroupsIsolator, IsolatorError> {
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let isolator = CgroupsIsolator::with_instance(&format!("{}-{n}", std::process::id()))?;
        isolator.sweep_dead_instances();
        Ok(isolator)
    }

    /// An isolator whose groups live under `mesofs/<instance>`. Fails unless this process is
    /// root and the cpu, memory, pids (and, on v1, freezer) controllers are usable.
    pub fn with_instance(instance: &str) -> Result<CgroupsIsolator, IsolatorError> {
        validate_id(instance)?;
        if !nix::unistd::geteuid().is_root() {
            return Err(IsolatorError::Unavailable(
                "cgroups need root (the agent is not running as root)".into(),
            ));
        }
        let mounts = Mounts::read();
        let v2 = matches!(mounts, Mounts::V2(_));
        let bases = match &mounts {
            Mounts::V2(_) => v2_bases(&mounts, instance)?,
            Mounts::V1(v1) => v1_bases(&mounts, v1, instance)?,
        };
        let mut base_dirs = Vec::new();
        for base in &bases {
            let cg = base.load("");
            cg.create().map_err(|e| {
                IsolatorError::Unavailable(format!("cannot create cgroup {}: {e}", base.path))
            })?;
            base_dirs.extend(dirs_of(&cg));
        }
        base_dirs.sort();
        base_dirs.dedup();
        if v2 {
            // The controllers must have reached the instance group: cgroups-rs enabled them in
            // each parent's subtree_control, ignoring failures. It enables them below the
            // instance group when it creates a task group.
            let dir = base_dirs
                .first()
                .ok_or_else(|| IsolatorError::Unavailable("no cgroup v2 controller".into()))?;
            let enabled = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
            for c in V2_CONTROLLERS {
                if !enabled.split_whitespace().any(|e| e == c) {
                    return Err(IsolatorError::Unavailable(format!(
                        "the {c} controller is not enabled for {} (is the agent in a non-root cgroup namespace?)",
                        dir.display()
                    )));
                }
            }
        }
        Ok(CgroupsIsolator {
            v2,
            instance: instance.to_string(),
            bases,
            base_dirs,
        })
    }

    /// The isolator of the agent `agent_id`: its groups are at `mesofs/agent-<agent_id>`, the
    /// same for every run of that agent, so that a restarted agent finds the groups of the
    /// tasks it left running. Also cleans up after dead agents of the per-process kind.
    pub fn for_agent(agent_id: &str) -> Result<CgroupsIsolator, IsolatorError> {
        let isolator = CgroupsIsolator::with_instance(&format!("agent-{agent_id}"))?;
        isolator.sweep_dead_instances();
        Ok(isolator)
    }

    /// This isolator's instance name (the directory below `mesofs/`).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Whether this is the cgroup v2 unified hierarchy.
    pub fn is_v2(&self) -> bool {
        self.v2
    }
}

impl CgroupsIsolator {
    /// Kills and removes the task groups of agents that died without cleaning up (SIGKILL,
    /// crash): their tasks would otherwise run on unmanaged. An instance `<pid>-<n>` is dead
    /// when no process `<pid>` exists, which only the initial pid namespace can tell (it sees
    /// every process), so elsewhere nothing is swept.
    fn sweep_dead_instances(&self) {
        let in_initial_pid_ns = fs::metadata("/proc/self/ns/pid")
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m) == PROC_PID_INIT_INO)
            .unwrap_or(false);
        if !in_initial_pid_ns {
            debug!(
                "not in the initial pid namespace: leftover cgroups of dead agents are not swept"
            );
            return;
        }
        let mut dead = BTreeSet::new();
        for dir in &self.base_dirs {
            let Some(Ok(entries)) = dir.parent().map(fs::read_dir) else {
                continue;
            };
            for name in entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
            {
                let pid = name.split_once('-').and_then(|(p, n)| {
                    n.parse::<u64>().ok()?;
                    p.parse::<u32>().ok()
                });
                if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                    dead.insert(name);
                }
            }
        }
        for instance in dead {
            let bases: Vec<Base> = self
                .bases
                .iter()
                .map(|b| Base {
                    mounts: b.mounts.clone(),
                    path: format!(
                        "{}{instance}",
                        b.path.strip_suffix(&self.instance).unwrap_or_default()
                    ),
                    controllers: b.controllers.clone(),
                })
                .collect();
            let mut tasks = BTreeSet::new();
            for base in &bases {
                for dir in dirs_of(&base.load("")) {
                    if let Ok(entries) = fs::read_dir(&dir) {
                        tasks.extend(
                            entries
                                .flatten()
                                .filter(|e| e.path().is_dir())
                                .filter_map(|e| e.file_name().into_string().ok()),
                        );
                    }
                }
            }
            for task in tasks {
                let leftover = CgroupIsolation {
                    id: task.clone(),
                    v2: self.v2,
                    groups: bases.iter().map(|b| b.load(&task)).collect(),
                };
                let pids = leftover.procs();
                warn!(%instance, %task, processes = pids.len(), "removing the cgroups of a task left by a dead agent");
                if let Err(e) = leftover.destroy() {
                    warn!(%instance, %task, error = %e, "cannot remove a dead agent's task cgroups");
                }
            }
            for base in &bases {
                for dir in dirs_of(&base.load("")) {
                    let _ = fs::remove_dir(dir);
                }
            }
        }
    }
}

impl Drop for CgroupsIsolator {
    fn drop(&mut self) {
        // Only succeeds once every task group below is gone; otherwise leave it.
        for dir in &self.base_dirs {
            let _ = fs::remove_dir(dir);
        }
    }
}

const V1_REQUIRED: [(&str, Controllers); 4] = [
    ("cpu", Controllers::Cpu),
    ("memory", Controllers::Mem),
    ("pids", Controllers::Pids),
    ("freezer", Controllers::Freezer),
];
const V2_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

fn v1_bases(mounts: &Mounts, v1: &V1, instance: &str) -> Result<Vec<Base>, IsolatorError> {
    let own = get_cgroups_relative_paths()
        .map_err(|e| IsolatorError::Unavailable(format!("cannot read /proc/self/cgroup: {e}")))?;
    let mut wanted: Vec<(&str, Controllers, bool)> = V1_REQUIRED
        .iter()
        .map(|(n, c)| (*n, c.clone(), true))
        .collect();
    wanted.push(("cpuacct", Controllers::CpuAcct, false));
    let mut bases = Vec::new();
    for (name, controller, required) in wanted {
        let Some((_mount, mount_root)) = v1.get_mount_point(controller) else {
            if required {
                return Err(IsolatorError::Unavailable(format!(
                    "the cgroup v1 {name} controller is not mounted"
                )));
            }
            continue;
        };
        let Some(own_path) = own.get(name) else {
            if required {
                return Err(IsolatorError::Unavailable(format!(
                    "/proc/self/cgroup names no {name} cgroup"
                )));
            }
            continue;
        };
        // Our cgroup is given from the hierarchy's root; the mount may show a subtree of it.
        let root = mount_root.to_string_lossy();
        let rel = if root == "/" {
            own_path.as_str()
        } else {
            own_path.strip_prefix(root.as_ref()).unwrap_or(own_path)
        };
        let rel = rel.trim_matches('/');
        let path = if rel.is_empty() {
            format!("mesofs/{instance}")
        } else {
            format!("{rel}/mesofs/{instance}")
        };
        bases.push(Base {
            mounts: mounts.clone(),
            path,
            controllers: vec![name.to_string()],
        });
    }
    Ok(bases)
}

fn v2_bases(mounts: &Mounts, instance: &str) -> Result<Vec<Base>, IsolatorError> {
    let root = PathBuf::from(hierarchies::UNIFIED_MOUNTPOINT);
    let available = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    for c in V2_CONTROLLERS {
        if !available.split_whitespace().any(|a| a == c) {
            return Err(IsolatorError::Unavailable(format!(
                "the cgroup v2 {c} controller is not available"
            )));
        }
    }
    Ok(vec![Base {
        mounts: mounts.clone(),
        path: format!("mesofs/{instance}"),
        controllers: V2_CONTROLLERS.iter().map(|c| c.to_string()).collect(),
    }])
}

/// The directories of a cgroup's controllers, deduplicated (co-mounted or v2 controllers share
/// one).
fn dirs_of(cg: &Cgroup) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = cg
        .subsystems()
        .iter()
        .map(|s| s.to_controller().path().to_path_buf())
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

impl Isolator for CgroupsIsolator {
    fn name(&self) -> &'static str {
        if self.v2 {
            "cgroups-v2"
        } else {
            "cgroups-v1"
        }
    }

    fn recover(&self, id: &str, _pid: i32) -> Result<Box<dyn Isolation>, IsolatorError> {
        validate_id(id)?;
        Ok(Box::new(CgroupIsolation {
            id: id.to_string(),
            v2: self.v2,
            groups: self.bases.iter().map(|b| b.load(id)).collect(),
        }))
    }

    fn sweep(&self, keep: &BTreeSet<String>) {
        let mut left = BTreeSet::new();
        for dir in &self.base_dirs {
            if let Ok(entries) = fs::read_dir(dir) {
                left.extend(
                    entries
                        .flatten()
                        .filter(|e| e.path().is_dir())
                        .filter_map(|e| e.file_name().into_string().ok())
                        .filter(|name| !keep.contains(name)),
                );
            }
        }
        for task in left {
            let leftover = CgroupIsolation {
                id: task.clone(),
                v2: self.v2,
                groups: self.bases.iter().map(|b| b.load(&task)).collect(),
            };
            warn!(%task, processes = leftover.procs().len(), "removing the cgroups of a task an earlier run of this agent left");
            if let Err(e) = leftover.destroy() {
                warn!(%task, error = %e, "cannot remove the leftover cgroups");
            }
        }
    }

    fn create(&self, id: &str, limits: &Limits) -> Result<Box<dyn Isolation>, IsolatorError> {
        validate_id(id)?;
        let isolation = CgroupIsolation {
            id: id.to_string(),
            v2: self.v2,
            groups: self.bases.iter().map(|b| b.load(id)).collect(),
        };
        if isolation.groups.iter().any(|g| g.exists()) {
            // Left over by a destroy that failed: empty and remove it before reuse.
            warn!(task = %id, "a cgroup of this task already exists; removing it first");
            isolation.destroy()?;
        }
        let made = isolation
            .groups
            .iter()
            .try_for_each(|g| g.create().map_err(cgroup_err(g)))
            .and_then(|()| isolation.apply(limits));
        match made {
            Ok(()) => {
                debug!(task = %id, dirs = ?isolation.cgroup_dirs(), ?limits, "cgroups created");
                Ok(Box::new(isolation))
            }
            Err(e) => {
                if let Err(d) = isolation.destroy() {
                    warn!(task = %id, error = %d, "cannot remove a half-made cgroup");
                }
                Err(e)
            }
        }
    }
}

fn cgroup_err(cg: &Cgroup) -> impl Fn(cgroups_rs::fs::error::Error) -> IsolatorError + '_ {
    move |source| IsolatorError::Cgroup {
        path: cg.path().to_string(),
        source,
    }
}

/// The raw values written to the cgroup files for a set of limits (0 = left unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Raw {
    /// v1 cpu.shares, or v2 cpu.weight.
    cpu_weight: u64,
    /// CFS quota in µs per [`CFS_PERIOD_US`]; 0 for none.
    cfs_quota_us: u64,
    cfs_period_us: u64,
    mem_bytes: u64,
    pids_max: u64,
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// cpu.shares for `cpus_milli`: 1024 per core, within the kernel's bounds.
fn shares(cpus_milli: u64) -> u64 {
    (cpus_milli.saturating_mul(1024) / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// v2 cpu.weight for v1 shares, the conversion runc and systemd use.
fn weight_of_shares(shares: u64) -> u64 {
    1 + (shares.saturating_sub(2) * 9999) / 262_142
}

impl Raw {
    fn wanted(limits: &Limits, v2: bool) -> Raw {
        let (cpu_weight, cfs_quota_us, cfs_period_us) = if limits.cpus_milli == 0 {
            (0, 0, 0)
        } else {
            let s = shares(limits.cpus_milli);
            (
                if v2 { weight_of_shares(s) } else { s },
                limits.cpus_milli.saturating_mul(100).max(MIN_CFS_QUOTA_US),
                CFS_PERIOD_US,
            )
        };
        let page = page_size();
        Raw {
            cpu_weight,
            cfs_quota_us,
            cfs_period_us,
            // The kernel rounds limits down to whole pages.
            mem_bytes: limits.mem_bytes / page * page,
            pids_max: limits.pids_max,
        }
    }
}

/// One task's cgroups.
struct CgroupIsolation {
    id: String,
    v2: bool,
    /// v1: one per hierarchy; v2: one.
    groups: Vec<Cgroup>,
}

impl CgroupIsolation {
    fn mem(&self) -> Option<&MemController> {
        self.groups.iter().find_map(|g| g.controller_of())
    }
    fn cpu(&self) -> Option<&CpuController> {
        self.groups.iter().find_map(|g| g.controller_of())
    }
    fn cpuacct(&self) -> Option<&CpuAcctController> {
        self.groups.iter().find_map(|g| g.controller_of())
    }
    fn pid_ctl(&self) -> Option<&PidController> {
        self.groups.iter().find_map(|g| g.controller_of())
    }

    /// The freezer: v1's controller, or v2's core `cgroup.freeze` (not a listed controller).
    fn freezer(&self) -> Option<FreezerController> {
        if self.v2 {
            let dir = self.cgroup_dirs().into_iter().next()?;
            Some(FreezerController::new(dir, PathBuf::new(), true))
        } else {
            self.groups
                .iter()
                .find_map(|g| g.controller_of::<FreezerController>())
                .cloned()
        }
    }

    fn err(&self, source: cgroups_rs::fs::error::Error) -> IsolatorError {
        IsolatorError::Cgroup {
            path: self
                .groups
                .first()
                .map(|g| g.path().to_string())
                .unwrap_or_default(),
            source,
        }
    }

    /// Writes the limits through the controllers' setters (which, unlike `Cgroup::apply`,
    /// report failures), then reads them back.
    fn apply(&self, limits: &Limits) -> Result<(), IsolatorError> {
        let want = Raw::wanted(limits, self.v2);
        if want.mem_bytes > 0 {
            let mem = self.mem().ok_or_else(|| missing("memory"))?;
            mem.set_limit(want.mem_bytes as i64)
                .map_err(|e| self.err(e))?;
            // Without this, a task over its limit swaps instead of being OOM-killed.
            let (swap_file, swap_limit) = if self.v2 {
                ("memory.swap.max", 0)
            } else {
                ("memory.memsw.limit_in_bytes", want.mem_bytes as i64)
            };
            if mem.path().join(swap_file).exists() {
                if let Err(e) = mem.set_memswap_limit(swap_limit) {
                    warn!(task = %self.id, error = %e, "cannot limit swap");
                }
            }
            if self.v2 {
                // An OOM kills the whole task, not one process of it (Linux 4.19 and later).
                let path = mem.path().join(OOM_GROUP);
                fs::write(&path, "1").map_err(|source| IsolatorError::Io {
                    path: path.clone(),
                    source,
                })?;
                let got = read_u64(&path)?;
                if got != 1 {
                    return Err(IsolatorError::LimitNotApplied {
                        what: "oom group",
                        wanted: "1".into(),
                        got: got.to_string(),
                    });
                }
            }
        }
        if want.cpu_weight > 0 {
            let cpu = self.cpu().ok_or_else(|| missing("cpu"))?;
            cpu.set_shares(want.cpu_weight).map_err(|e| self.err(e))?;
            cpu.set_cfs_quota_and_period(Some(want.cfs_quota_us as i64), Some(want.cfs_period_us))
                .map_err(|e| self.err(e))?;
        }
        if want.pids_max > 0 {
            let pids = self.pid_ctl().ok_or_else(|| missing("pids"))?;
            pids.set_pid_max(MaxValue::Value(want.pids_max as i64))
                .map_err(|e| self.err(e))?;
        }
        let got = self.read_raw()?;
        let checks = [
            ("memory", want.mem_bytes, got.mem_bytes),
            ("cpu weight", want.cpu_weight, got.cpu_weight),
            ("cpu quota", want.cfs_quota_us, got.cfs_quota_us),
            ("cpu period", want.cfs_period_us, got.cfs_period_us),
            ("pids", want.pids_max, got.pids_max),
        ];
        for (what, wanted, got) in checks {
            if wanted != 0 && wanted != got {
                return Err(IsolatorError::LimitNotApplied {
                    what,
                    wanted: wanted.to_string(),
                    got: got.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Reads the enforced values back (0 = unlimited).
    fn read_raw(&self) -> Result<Raw, IsolatorError> {
        let mut raw = Raw {
            cpu_weight: 0,
            cfs_quota_us: 0,
            cfs_period_us: 0,
            mem_bytes: 0,
            pids_max: 0,
        };
        if let Some(mem) = self.mem() {
            raw.mem_bytes = if self.v2 {
                match mem.get_mem().map_err(|e| self.err(e))?.max {
                    Some(MaxValue::Value(v)) if v >= 0 => v as u64,
                    _ => 0,
                }
            } else {
                v1_mem_limit(mem)?
            };
        }
        if let Some(cpu) = self.cpu() {
            raw.cpu_weight = cpu.shares().map_err(|e| self.err(e))?;
            let quota = cpu.cfs_quota().map_err(|e| self.err(e))?;
            raw.cfs_quota_us = if quota > 0 { quota as u64 } else { 0 };
            raw.cfs_period_us = cpu.cfs_period().map_err(|e| self.err(e))?;
        }
        if let Some(pids) = self.pid_ctl() {
            raw.pids_max = match pids.get_pid_max().map_err(|e| self.err(e))? {
                MaxValue::Value(v) if v >= 0 => v as u64,
                _ => 0,
            };
        }
        Ok(raw)
    }

    /// Live pids in any of the task's groups.
    fn procs(&self) -> Vec<i32> {
        let mut all = BTreeSet::new();
        for g in &self.groups {
            all.extend(g.procs().into_iter().map(|p| p.pid as i32));
        }
        // A pid of 0 is a parse failure of cgroups-rs, not a process.
        all.remove(&0);
        all.into_iter().collect()
    }

    /// Waits until the group has no live process, up to `timeout`.
    fn wait_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(200);
        loop {
            if self.procs().is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// One round of v1-style killing: freeze so nothing forks while we look, SIGKILL every
    /// process, thaw so the kills are delivered.
    fn freeze_and_kill(&self, killed: &mut BTreeSet<i32>) {
        let freezer = self.freezer();
        if let Some(f) = &freezer {
            if let Err(e) = f.freeze() {
                debug!(task = %self.id, error = %e, "cannot freeze");
            } else {
                let deadline = Instant::now() + Duration::from_millis(500);
                // A process in uninterruptible sleep can hold the group in FREEZING; kill
                // what we can anyway after a while.
                while !matches!(f.state(), Ok(FreezerState::Frozen) | Err(_))
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
        for pid in self.procs() {
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed.insert(pid);
            }
        }
        if let Some(f) = &freezer {
            if let Err(e) = f.thaw() {
                debug!(task = %self.id, error = %e, "cannot thaw");
            }
        }
    }
}

fn missing(controller: &str) -> IsolatorError {
    IsolatorError::Unavailable(format!("no {controller} controller"))
}

/// A v1 memory cgroup's limit in bytes; 0 when unlimited.
fn v1_mem_limit(mem: &MemController) -> Result<u64, IsolatorError> {
    let v = read_u64(&mem.path().join("memory.limit_in_bytes"))?;
    // v1 shows "unlimited" as the largest page-aligned i64.
    Ok(if v >= i64::MAX as u64 - page_size() {
        0
    } else {
        v
    })
}

fn read_u64(path: &Path) -> Result<u64, IsolatorError> {
    let text = fs::read_to_string(path).map_err(|source| IsolatorError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.trim().parse().map_err(|_| IsolatorError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a number"),
    })
}

/// The value of `key` in a flat-keyed file (`key value` lines).
fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

impl Isolation for CgroupIsolation {
    fn joiner(&self) -> Result<Joiner, IsolatorError> {
        let files = self
            .cgroup_dirs()
            .into_iter()
            .map(|d| {
                let path = d.join("cgroup.procs");
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|source| IsolatorError::Io { path, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Joiner::from_files(files))
    }

    fn started(&self, _pid: i32) {
        // The cgroups know their processes; nothing to remember.
    }

    fn signal_all(&self, signal: Signal) -> Result<(), IsolatorError> {
        for pid in self.procs() {
            match kill(Pid::from_raw(pid), signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => warn!(task = %self.id, pid, error = %e, "cannot signal"),
            }
        }
        Ok(())
    }

    fn kill_all(&self) -> Result<Vec<i32>, IsolatorError> {
        let mut killed = BTreeSet::new();
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let left = self.procs();
            if left.is_empty() {
                return Ok(killed.into_iter().collect());
            }
            if Instant::now() >= deadline {
                return Err(IsolatorError::Survivors {
                    id: self.id.clone(),
                    pids: left,
                });
            }
            let cgroup_killed = self.v2
                && match self.groups[0].kill() {
                    Ok(()) => {
                        killed.extend(left);
                        true
                    }
                    // Before Linux 5.14 there is no cgroup.kill.
                    Err(_) => false,
                };
            if !cgroup_killed {
                self.freeze_and_kill(&mut killed);
            }
            self.wait_empty(Duration::from_secs(1));
        }
    }

    fn pids(&self) -> Vec<i32> {
        self.procs()
    }

    fn oom_events(&self) -> Result<Option<OwnedFd>, IsolatorError> {
        let Some(mem) = self.mem() else {
            return Ok(None);
        };
        if self.v2 || v1_mem_limit(mem)? == 0 {
            return Ok(None);
        }
        let io = |path: PathBuf| move |source| IsolatorError::Io { path, source };
        let events = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| io(PathBuf::from("eventfd"))(e.into()))?;
        let oom_control = mem.path().join("memory.oom_control");
        let control = fs::File::open(&oom_control).map_err(io(oom_control))?;
        // "<eventfd> <memory.oom_control fd>" registers the eventfd for the group's OOMs.
        let event_control = mem.path().join("cgroup.event_control");
        fs::write(
            &event_control,
            format!("{} {}", events.as_raw_fd(), control.as_raw_fd()),
        )
        .map_err(io(event_control))?;
        Ok(Some(events.into()))
    }

    fn oom_killed(&self) -> bool {
        let Some(mem) = self.mem() else {
            return false;
        };
        // Not failcnt: it also counts limit hits that reclaim resolved.
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        keyed(&mem.path().join(file), "oom_kill").unwrap_or(0) > 0
    }

    fn usage(&self) -> Usage {
        let cpu_ns = if self.v2 {
            self.cpu()
                .and_then(|c| keyed(&c.path().join("cpu.stat"), "usage_usec"))
                .map(|us| us * 1000)
        } else {
            self.cpuacct()
                .and_then(|c| read_u64(&c.path().join("cpuacct.usage")).ok())
        };
        let (cpu_user_ns, cpu_system_ns) = if self.v2 {
            let stat = self.cpu().map(|c| c.path().join("cpu.stat"));
            let of = |key| {
                stat.as_ref()
                    .and_then(|s| keyed(s, key))
                    .map(|us| us * 1000)
            };
            (of("user_usec"), of("system_usec"))
        } else {
            let of = |file| {
                self.cpuacct()
                    .and_then(|c| read_u64(&c.path().join(file)).ok())
            };
            (of("cpuacct.usage_user"), of("cpuacct.usage_sys"))
        };
        let mem = |v1: &str, v2: &str| {
            self.mem()
                .and_then(|m| read_u64(&m.path().join(if self.v2 { v2 } else { v1 })).ok())
        };
        Usage {
            cpu_ns: cpu_ns.unwrap_or(0),
            cpu_user_ns,
            cpu_system_ns,
            mem_bytes: mem("memory.usage_in_bytes", "memory.current").unwrap_or(0),
            mem_peak_bytes: mem("memory.max_usage_in_bytes", "memory.peak"),
            pids: self
                .pid_ctl()
                .and_then(|p| read_u64(&p.path().join("pids.current")).ok()),
        }
    }

    fn limits(&self) -> Result<Option<Limits>, IsolatorError> {
        let raw = self.read_raw()?;
        let cpus_milli = if raw.cfs_quota_us > 0 && raw.cfs_period_us > 0 {
            raw.cfs_quota_us * 1000 / raw.cfs_period_us
        } else {
            0
        };
        Ok(Some(Limits {
            cpus_milli,
            mem_bytes: raw.mem_bytes,
            pids_max: raw.pids_max,
        }))
    }

    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.groups.iter().flat_map(dirs_of).collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    fn destroy(&self) -> Result<(), IsolatorError> {
        let deadline = Instant::now() + DESTROY_TIMEOUT;
        loop {
            let mut last = String::new();
            if let Err(e) = self.kill_all() {
                last = e.to_string();
            }
            for g in &self.groups {
                // cgroups-rs retries a busy v1 group for ~150 ms itself.
                if let Err(e) = g.delete() {
                    last = e.to_string();
                }
            }
            if self.cgroup_dirs().iter().all(|d| !d.exists()) {
                debug!(task = %self.id, "cgroups removed");
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(IsolatorError::Busy {
                    id: self.id.clone(),
                    detail: last,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_shares_are_1024_per_core_and_never_below_two() {
        assert_eq!(shares(1000), 1024);
        assert_eq!(shares(500), 512);
        assert_eq!(shares(1), 2);
        assert_eq!(shares(u64::MAX), MAX_SHARES);
    }

    #[test]
    fn v2_weight_maps_the_share_range_onto_1_to_10000() {
        assert_eq!(weight_of_shares(2), 1);
        assert_eq!(weight_of_shares(1024), 39);
        assert_eq!(weight_of_shares(262_144), 10_000);
    }

    #[test]
    fn the_cfs_quota_is_cpus_times_the_period_and_at_least_one_millisecond() {
        let half = Raw::wanted(
            &Limits {
                cpus_milli: 500,
                mem_bytes: 0,
                pids_max: 0,
            },
            false,
        );
        assert_eq!((half.cfs_quota_us, half.cfs_period_us), (50_000, 100_000));
        let tiny = Raw::wanted(
            &Limits {
                cpus_milli: 1,
                mem_bytes: 0,
                pids_max: 0,
            },
            false,
        );
        assert_eq!(tiny.cfs_quota_us, MIN_CFS_QUOTA_US);
    }

    #[test]
    fn zero_limits_write_nothing() {
        let raw = Raw::wanted(&Limits::default(), true);
        assert_eq!(
            (
                raw.cpu_weight,
                raw.cfs_quota_us,
                raw.mem_bytes,
                raw.pids_max
            ),
            (0, 0, 0, 0)
        );
    }
}
