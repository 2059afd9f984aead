//! Health checks as a task spec gives them, and a task's health as the cluster records it.
//! The agent's supervisor runs the checks; see `docs/filesystem.md` for what each field means.

use serde::{Deserialize, Serialize};

/// Time before the first check (Mesos's `delay_seconds`).
pub const DEFAULT_DELAY_MS: u64 = 15_000;
/// Time between the start of one check and the next.
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
/// Time a check may take before it counts as failed.
pub const DEFAULT_TIMEOUT_MS: u64 = 20_000;
/// Time from the task's start during which failed checks are not counted, unless one has
/// passed.
pub const DEFAULT_GRACE_MS: u64 = 10_000;
/// Consecutive failures (past the grace period) that get the task killed.
pub const DEFAULT_FAILURES: u32 = 3;
/// The most bytes of a check's output kept and reported.
pub const MAX_OUTPUT: usize = 1024;

/// What a check does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// A shell command run in the task's cgroups and namespaces, as its user, in its sandbox,
    /// with its environment: healthy when it exits 0.
    Cmd(String),
    /// An HTTP GET of `path` on the task's port `port_index` (`$PORTn`) at 127.0.0.1: healthy
    /// on a 2xx or 3xx status.
    Http {
        /// Which of the task's ports.
        port_index: u32,
        /// The path, starting with `/`.
        path: String,
    },
    /// A TCP connection to the task's port `port_index` at 127.0.0.1: healthy when it opens.
    Tcp {
        /// Which of the task's ports.
        port_index: u32,
    },
}

/// A task's health check, with its timing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// What each check does.
    pub probe: Probe,
    /// Milliseconds from the task's start to its first check.
    pub delay_ms: u64,
    /// Milliseconds from the start of one check to the start of the next.
    pub interval_ms: u64,
    /// Milliseconds a check may take before it counts as failed.
    pub timeout_ms: u64,
    /// Milliseconds from the task's start during which failures are not counted (until a
    /// check passes).
    pub grace_ms: u64,
    /// Consecutive counted failures that get the task killed.
    pub failures: u32,
}

impl HealthCheck {
    /// A check with Mesos's default timing.
    pub fn new(probe: Probe) -> HealthCheck {
        HealthCheck {
            probe,
            delay_ms: DEFAULT_DELAY_MS,
            interval_ms: DEFAULT_INTERVAL_MS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            grace_ms: DEFAULT_GRACE_MS,
            failures: DEFAULT_FAILURES,
        }
    }
}

/// A task's health as its agent last reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskHealth {
    /// Whether the last counted check passed.
    pub healthy: bool,
    /// The number of this change among the task's health changes, from 1; a change is
    /// recorded only if its number is higher than the one recorded (updates are retried).
    pub seq: u64,
    /// The output of the check that made the change (cut to [`MAX_OUTPUT`] bytes).
    pub output: String,
    /// When the check ran (unix ms).
    pub time_ms: u64,
}
