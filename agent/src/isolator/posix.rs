//! The fallback without cgroups: a task is its process group (its main process calls
//! `setsid`). No limits, no OOM detection; processes that leave the group escape killing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tracing::warn;

use super::{validate_id, Isolation, Isolator, IsolatorError, Joiner, Limits, Usage};
use crate::procfs;

/// Isolates each task only as a process group: killing works, limits are not enforced.
#[derive(Debug, Default)]
pub struct PosixIsolator;

impl PosixIsolator {
    /// The process-group isolator.
    pub fn new() -> PosixIsolator {
        PosixIsolator
    }
}

impl Isolator for PosixIsolator {
    fn name(&self) -> &'static str {
        "posix"
    }

    fn create(&self, id: &str, _limits: &Limits) -> Result<Box<dyn Isolation>, IsolatorError> {
        validate_id(id)?;
        Ok(Box::new(ProcessGroup {
            id: id.to_string(),
            pgid: AtomicI32::new(0),
        }))
    }

    fn recover(&self, id: &str, pid: i32) -> Result<Box<dyn Isolation>, IsolatorError> {
        validate_id(id)?;
        Ok(Box::new(ProcessGroup {
            id: id.to_string(),
            pgid: AtomicI32::new(pid),
        }))
    }

    fn sweep(&self, _keep: &std::collections::BTreeSet<String>) {
        // Process groups leave no trace to find: what escaped a dead agent is not known here.
    }
}

/// A task's process group, known once its main process has started.
struct ProcessGroup {
    id: String,
    pgid: AtomicI32,
}

impl ProcessGroup {
    fn pgid(&self) -> Option<i32> {
        Some(self.pgid.load(Ordering::Relaxed)).filter(|p| *p > 0)
    }
}

impl Isolation for ProcessGroup {
    fn joiner(&self) -> Result<Joiner, IsolatorError> {
        // The child's setsid is all there is to join.
        Ok(Joiner::none())
    }

    fn started(&self, pid: i32) {
        self.pgid.store(pid, Ordering::Relaxed);
    }

    fn signal_all(&self, signal: Signal) -> Result<(), IsolatorError> {
        if let Some(pgid) = self.pgid() {
            match killpg(Pid::from_raw(pgid), signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => {
                    warn!(task = %self.id, pgid, error = %e, "cannot signal the process group")
                }
            }
        }
        Ok(())
    }

    fn kill_all(&self) -> Result<Vec<i32>, IsolatorError> {
        let Some(pgid) = self.pgid() else {
            return Ok(Vec::new());
        };
        let pids = self.pids();
        if pids.is_empty() {
            return Ok(pids);
        }
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.pids();
            if left.is_empty() {
                return Ok(pids);
            }
            if Instant::now() >= deadline {
                return Err(IsolatorError::Survivors {
                    id: self.id.clone(),
                    pids: left,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn pids(&self) -> Vec<i32> {
        match self.pgid() {
            Some(pgid) => procfs::group_members(pgid)
                .into_iter()
                .map(|(pid, _)| pid)
                .collect(),
            None => Vec::new(),
        }
    }

    fn oom_killed(&self) -> bool {
        false
    }

    fn oom_events(&self) -> Result<Option<std::os::fd::OwnedFd>, IsolatorError> {
        Ok(None)
    }

    fn usage(&self) -> Usage {
        let Some(pgid) = self.pgid() else {
            return Usage::default();
        };
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        let members = procfs::group_members(pgid);
        Usage {
            cpu_ns: members
                .iter()
                .map(|(_, s)| s.cpu_ticks * 1_000_000_000 / ticks)
                .sum(),
            mem_bytes: members.iter().map(|(_, s)| s.rss_pages * page).sum(),
            pids: Some(members.len() as u64),
            ..Usage::default()
        }
    }

    fn limits(&self) -> Result<Option<Limits>, IsolatorError> {
        Ok(None)
    }

    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    fn destroy(&self) -> Result<(), IsolatorError> {
        self.kill_all().map(|_| ())
    }
}
