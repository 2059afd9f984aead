//! Isolation of a task's process tree behind a trait of our own: creating it with limits,
//! joining it from a freshly forked child, signalling and killing everything in it,
//! accounting, and removing it.
//!
//! Two implementations: [`CgroupsIsolator`] (cgroup v1 or v2 through cgroups-rs; needs root)
//! and [`PosixIsolator`] (the task's process group only, no limits). [`detect`] picks one.

mod cgroups;
mod posix;

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::signal::Signal;
use tracing::warn;

pub use self::cgroups::CgroupsIsolator;
pub use self::posix::PosixIsolator;

/// Resource limits of one task; 0 means "no limit" for each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// CPU in thousandths of a core: cpu shares (1024 per core) and a CFS quota.
    pub cpus_milli: u64,
    /// Hard memory limit in bytes (swap is not allowed beyond it where that can be set).
    pub mem_bytes: u64,
    /// Most processes (and threads) alive at once.
    pub pids_max: u64,
}

/// Resources used so far by everything in one isolation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time, in nanoseconds.
    pub cpu_ns: u64,
    /// Of which in user mode, when the isolation can tell.
    pub cpu_user_ns: Option<u64>,
    /// Of which in the kernel, when the isolation can tell.
    pub cpu_system_ns: Option<u64>,
    /// Memory in use now, in bytes (cgroups: including page cache charged to the task).
    pub mem_bytes: u64,
    /// The most memory in use at once so far, in bytes, when the kernel keeps it (cgroup v1;
    /// v2 from Linux 5.19).
    pub mem_peak_bytes: Option<u64>,
    /// Processes alive now (with cgroups: processes and threads).
    pub pids: Option<u64>,
}

/// Why isolating, inspecting or tearing down a task failed.
#[derive(Debug, thiserror::Error)]
pub enum IsolatorError {
    /// This kind of isolation cannot be used on this machine or by this process.
    #[error("isolation unavailable: {0}")]
    Unavailable(String),
    /// The id cannot name an isolation (it must be one path component).
    #[error("invalid isolation id {0:?}: it must be a non-empty name without '/', NUL or control characters, and not '.' or '..'")]
    InvalidId(String),
    /// A cgroup operation failed.
    #[error("cgroup {path}: {source}")]
    Cgroup {
        /// The cgroup (relative path in its hierarchy).
        path: String,
        /// The cause.
        #[source]
        source: cgroups_rs::fs::error::Error,
    },
    /// A limit was written but reads back differently (the kernel refused or adjusted it).
    #[error("the {what} limit did not take: wanted {wanted}, the cgroup says {got}")]
    LimitNotApplied {
        /// Which limit.
        what: &'static str,
        /// What was written.
        wanted: String,
        /// What was read back.
        got: String,
    },
    /// A file of the isolation could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Processes were still alive after being killed.
    #[error("processes {pids:?} of {id} survived SIGKILL")]
    Survivors {
        /// The isolation id.
        id: String,
        /// Who survived.
        pids: Vec<i32>,
    },
    /// The isolation could not be removed.
    #[error("cannot remove the isolation of {id}: {detail}")]
    Busy {
        /// The isolation id.
        id: String,
        /// The last error.
        detail: String,
    },
}

/// Makes isolations, one per task.
pub trait Isolator: Send + Sync {
    /// Short name for logs ("cgroups-v1", "cgroups-v2", "posix").
    fn name(&self) -> &'static str;

    /// Creates the isolation of task `id` with `limits`, verifying that the limits took.
    /// Blocking (file-system work); `id` must be unique among live isolations of this isolator.
    fn create(&self, id: &str, limits: &Limits) -> Result<Box<dyn Isolation>, IsolatorError>;

    /// The isolation of task `id`, created by an earlier run of this agent, whose main
    /// process `pid` may still run. Blocking.
    fn recover(&self, id: &str, pid: i32) -> Result<Box<dyn Isolation>, IsolatorError>;

    /// Kills and removes every isolation an earlier run of this agent left, except those of
    /// the tasks in `keep`. Blocking.
    fn sweep(&self, keep: &BTreeSet<String>);
}

/// One task's isolation. Every method is blocking but short, and safe to call again after
/// the processes are gone or the isolation was destroyed.
pub trait Isolation: Send + Sync {
    /// Files to hand to a child between fork or clone and exec so it joins this isolation.
    fn joiner(&self) -> Result<Joiner, IsolatorError>;

    /// Tells the isolation the pid of the task's main process (also its process group and
    /// session id), once it has been spawned.
    fn started(&self, pid: i32);

    /// Sends `signal` to every process in the isolation.
    fn signal_all(&self, signal: Signal) -> Result<(), IsolatorError>;

    /// Kills every process in the isolation with SIGKILL and waits until none is left;
    /// returns the pids it killed (for the reaper: they may become our zombies).
    fn kill_all(&self) -> Result<Vec<i32>, IsolatorError>;

    /// Live processes in the isolation (zombies excluded).
    fn pids(&self) -> Vec<i32>;

    /// Whether the kernel killed a process of the isolation for exceeding its memory limit.
    fn oom_killed(&self) -> bool;

    /// Where the kernel kills only one process of an isolation that runs out of memory
    /// (cgroup v1), a non-blocking eventfd that becomes readable when that happens, so that
    /// the agent kills the rest; `None` where the kernel kills the whole isolation itself
    /// (cgroup v2's `memory.oom.group`) or no memory limit applies.
    fn oom_events(&self) -> Result<Option<OwnedFd>, IsolatorError>;

    /// Resources used so far.
    fn usage(&self) -> Usage;

    /// The limits as the kernel enforces them, read back; `None` when none are enforced.
    fn limits(&self) -> Result<Option<Limits>, IsolatorError>;

    /// The isolation's cgroup directories (empty when it has none).
    fn cgroup_dirs(&self) -> Vec<PathBuf>;

    /// Kills what is left and removes the isolation, retrying while the kernel says busy.
    fn destroy(&self) -> Result<(), IsolatorError>;
}

/// Files, opened in the parent, that a forked child writes to in order to join an isolation
/// (`cgroup.procs` of each hierarchy). Opened close-on-exec, so the task never sees them.
#[derive(Debug, Default)]
pub struct Joiner {
    fds: Vec<OwnedFd>,
}

impl Joiner {
    /// A joiner that joins nothing.
    pub fn none() -> Joiner {
        Joiner::default()
    }

    /// A joiner writing to these (already opened for writing) files.
    pub fn from_files(files: Vec<File>) -> Joiner {
        Joiner {
            fds: files.into_iter().map(OwnedFd::from).collect(),
        }
    }

    /// Moves the calling process into the isolation by writing "0" ("myself") to each file.
    ///
    /// Async-signal-safe (only `write(2)`, no allocation), so it may run in a child between
    /// fork or clone and exec.
    pub fn join_self(&self) -> io::Result<()> {
        for fd in &self.fds {
            // SAFETY: writing one byte from a static buffer to a descriptor we own.
            let n = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if n != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Checks that `id` can name a cgroup directory and shows up sanely in `/proc/<pid>/cgroup`.
pub(crate) fn validate_id(id: &str) -> Result<(), IsolatorError> {
    let bad = id.is_empty()
        || id == "."
        || id == ".."
        || id.len() > 200
        || id.chars().any(|c| c == '/' || c.is_control());
    if bad {
        Err(IsolatorError::InvalidId(id.to_string()))
    } else {
        Ok(())
    }
}

/// The best isolator this process can use: cgroups when it is root and the controllers are
/// mounted and writable, else process groups without limits (and a warning saying so).
pub fn detect() -> Box<dyn Isolator> {
    fallback(CgroupsIsolator::new())
}

/// Like [`detect`], for the agent `agent_id`: its cgroups are at a place of their own that a
/// restarted agent of the same id finds again (see [`CgroupsIsolator::for_agent`]).
pub fn detect_for_agent(agent_id: &str) -> Box<dyn Isolator> {
    fallback(CgroupsIsolator::for_agent(agent_id))
}

fn fallback(cgroups: Result<CgroupsIsolator, IsolatorError>) -> Box<dyn Isolator> {
    match cgroups {
        Ok(c) => Box::new(c),
        Err(e) => {
            warn!(error = %e, "cgroups unusable: tasks run in process groups WITHOUT cpu, memory or pids limits");
            Box::new(PosixIsolator::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_single_sane_path_components() {
        for ok in ["web", "a.b-c_d", "task.1", "été", "x".repeat(200).as_str()] {
            assert!(validate_id(ok).is_ok(), "{ok:?} should be accepted");
        }
        let long = "x".repeat(201);
        for bad in ["", ".", "..", "a/b", "/", "a\nb", "a\0b", long.as_str()] {
            assert!(validate_id(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn an_empty_joiner_joins_nothing() {
        assert!(Joiner::none().join_self().is_ok());
    }
}
