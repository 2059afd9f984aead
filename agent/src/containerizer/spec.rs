//! What a launch asks for: the task's command, environment, user and limits.

use std::time::Duration;

use mesofs_kernel::health::HealthCheck;

use super::{DEFAULT_KILL_GRACE, DEFAULT_PIDS_MAX};
use crate::isolator::Limits;
use crate::process::TaskUser;

/// What a task runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// A shell command line, run by `/bin/sh -c`.
    Shell(String),
    /// A program (looked up in the task's PATH when it has no '/') and its arguments.
    Argv(Vec<String>),
}

/// Everything needed to launch one task.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    /// Unique among this agent's running tasks; one path component (may hold '.', '-', '_').
    pub task_id: String,
    /// What to run.
    pub command: Command,
    /// Environment variables, on top of PATH and HOME defaults; MESOFS_TASK_ID and
    /// MESOFS_SANDBOX are always set by the agent.
    pub env: Vec<(String, String)>,
    /// CPU in thousandths of a core (0: no limit).
    pub cpus_milli: u64,
    /// Memory limit in MiB (0: no limit).
    pub mem_mb: u64,
    /// Most processes at once (0: no limit).
    pub pids_max: u64,
    /// Time between SIGTERM and SIGKILL when the task is killed.
    pub kill_grace: Duration,
    /// Who it runs as; `None`: as the agent.
    pub user: Option<TaskUser>,
    /// How long it may run before it is killed and fails
    /// ([`REASON_MAX_COMPLETION_TIME_REACHED`](super::REASON_MAX_COMPLETION_TIME_REACHED)).
    pub timeout: Option<Duration>,
    /// The most disk its sandbox may take, in MiB, before it is killed and fails
    /// ([`REASON_CONTAINER_LIMITATION_DISK`](super::REASON_CONTAINER_LIMITATION_DISK));
    /// `None`: not enforced.
    pub disk_limit_mb: Option<u64>,
    /// The only ports it may listen on; listening on another kills it
    /// ([`REASON_CONTAINER_LIMITATION`](super::REASON_CONTAINER_LIMITATION)). `None`: not
    /// watched.
    pub allowed_ports: Option<Vec<u16>>,
    /// The namespaces it gets of its own (with a supervisor only).
    pub namespaces: Namespaces,
    /// Its health check, run by its supervisor (so only with one).
    pub health: Option<HealthCheck>,
}

/// The namespaces a task gets of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Namespaces {
    /// A pid namespace, whose pid 1 is an init of ours.
    pub pid: bool,
    /// A mount namespace: its sandbox's `tmp` as `/tmp`, and with a pid namespace its own
    /// `/proc`.
    pub mount: bool,
}

impl Namespaces {
    /// Both.
    pub const ALL: Namespaces = Namespaces {
        pid: true,
        mount: true,
    };
}

/// How an agent confines its tasks beyond their cgroups: the resources it enforces by
/// watching them, and the namespaces it gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Confinement {
    /// A task listening on a port it was not given is killed.
    pub ports: bool,
    /// A task whose sandbox grows past its `disk` is killed.
    pub disk: bool,
    /// The namespaces each task gets of its own.
    pub namespaces: Namespaces,
}

impl Default for Confinement {
    /// All of it.
    fn default() -> Confinement {
        Confinement {
            ports: true,
            disk: true,
            namespaces: Namespaces::ALL,
        }
    }
}

impl LaunchSpec {
    /// A spec with one core, 128 MiB, [`DEFAULT_PIDS_MAX`], [`DEFAULT_KILL_GRACE`], no
    /// extra environment, run as the agent's user, in the agent's namespaces.
    pub fn new(task_id: impl Into<String>, command: Command) -> LaunchSpec {
        LaunchSpec {
            task_id: task_id.into(),
            command,
            env: Vec::new(),
            cpus_milli: 1000,
            mem_mb: 128,
            pids_max: DEFAULT_PIDS_MAX,
            kill_grace: DEFAULT_KILL_GRACE,
            user: None,
            timeout: None,
            disk_limit_mb: None,
            allowed_ports: None,
            namespaces: Namespaces::default(),
            health: None,
        }
    }

    pub(super) fn limits(&self) -> Limits {
        Limits {
            cpus_milli: self.cpus_milli,
            mem_bytes: self.mem_mb.saturating_mul(1024 * 1024),
            pids_max: self.pids_max,
        }
    }
}
