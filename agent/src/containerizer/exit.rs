//! How a task ended, and the report of it; what the containerizer reports of its tasks.

use std::sync::atomic::Ordering;

use mesofs_kernel::health::TaskHealth;

use super::{Task, REASON_AGENT_RESTARTED, REASON_COMMAND_EXITED, REASON_HEALTH_CHECK_FAILED};
use super::{
    REASON_CONTAINER_LIMITATION_MEMORY, REASON_MAX_COMPLETION_TIME_REACHED, REASON_TASK_KILLED,
};
use crate::process::Ended;

/// What the containerizer reports of a task, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskEvent {
    /// Its health changed, as its supervisor's checks found.
    Health {
        /// The task.
        task_id: String,
        /// Its health now.
        health: TaskHealth,
    },
    /// It ended: its last event.
    Ended(TaskExit),
}

/// How a task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// Its command exited with status 0.
    Finished,
    /// It exited non-zero, died of a signal, or hit a limit.
    Failed,
    /// It was killed on request.
    Killed,
    /// It ended while the agent was down, and how is not known.
    Lost,
}

/// The report of a task's end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskExit {
    /// The task.
    pub task_id: String,
    /// How it ended.
    pub kind: ExitKind,
    /// Mesos-style reason, e.g. [`REASON_COMMAND_EXITED`].
    pub reason: String,
    /// For people, e.g. "exited with status 3".
    pub message: String,
    /// The main process's exit status, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed the main process, if one did.
    pub signal: Option<i32>,
}

/// The report of a task's end: a limit the agent enforced (disk, ports, timeout) wins over a
/// kill for its health, which wins over a kill on request, which wins over an OOM kill,
/// which wins over the exit status.
pub(super) fn report(task: &Task, ended: Ended, killed: bool, oom: bool) -> TaskExit {
    let (exit_code, signal) = match ended {
        Ended::Exited(c) => (Some(c), None),
        Ended::Signaled(s) => (None, Some(s)),
        Ended::Unknown => (None, None),
    };
    let limitation = task.limitation.lock().expect("limitation lock").clone();
    let health_killed = task.health_killed.lock().expect("health lock").clone();
    let (kind, reason, message) = if let Some((reason, why)) = limitation {
        (
            ExitKind::Failed,
            reason,
            format!("{why} (main process: {})", ended.describe()),
        )
    } else if task.timed_out.load(Ordering::SeqCst) {
        (
            ExitKind::Failed,
            REASON_MAX_COMPLETION_TIME_REACHED,
            format!(
                "killed for running past its timeout (main process: {})",
                ended.describe()
            ),
        )
    } else if let Some(why) = health_killed {
        (
            ExitKind::Killed,
            REASON_HEALTH_CHECK_FAILED,
            format!("{why} (main process: {})", ended.describe()),
        )
    } else if killed {
        (
            ExitKind::Killed,
            REASON_TASK_KILLED,
            format!("killed on request (main process: {})", ended.describe()),
        )
    } else if oom {
        (
            ExitKind::Failed,
            REASON_CONTAINER_LIMITATION_MEMORY,
            format!(
                "memory limit of {} MB exceeded (main process: {})",
                task.mem_mb,
                ended.describe()
            ),
        )
    } else if ended == Ended::Unknown && task.recovered {
        (
            ExitKind::Lost,
            REASON_AGENT_RESTARTED,
            "it ended while the agent was down, and its supervisor left no record of how (killed, or the machine restarted)".to_string(),
        )
    } else if ended == Ended::Exited(0) {
        (ExitKind::Finished, REASON_COMMAND_EXITED, ended.describe())
    } else {
        (ExitKind::Failed, REASON_COMMAND_EXITED, ended.describe())
    };
    TaskExit {
        task_id: task.id.clone(),
        kind,
        reason: reason.to_string(),
        message,
        exit_code,
        signal,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;
    use crate::isolator::{Isolator, Limits};

    fn task(mem_mb: u64) -> Task {
        Task {
            id: "t".into(),
            pid: 1,
            isolation: Arc::from(
                crate::isolator::PosixIsolator::new()
                    .create("t", &Limits::default())
                    .expect("posix"),
            ),
            mem_mb,
            kill_grace: Duration::ZERO,
            kill_requested: AtomicBool::new(false),
            memory_limited: AtomicBool::new(false),
            exited: AtomicBool::new(false),
            ended: Notify::new(),
            recovered: false,
            deadline_ms: None,
            timed_out: AtomicBool::new(false),
            disk: std::sync::Mutex::new(None),
            disk_limit_mb: None,
            allowed_ports: None,
            limitation: std::sync::Mutex::new(None),
            health_file: None,
            health_reported: std::sync::atomic::AtomicU64::new(0),
            health_killed: std::sync::Mutex::new(None),
            last_check: std::sync::Mutex::new(None),
        }
    }

    #[test]
    fn an_unknown_end_is_a_failure_here_and_lost_for_a_task_taken_back_after_a_restart() {
        let mut t = task(64);
        assert_eq!(
            report(&t, Ended::Unknown, false, false).kind,
            ExitKind::Failed
        );
        t.recovered = true;
        let r = report(&t, Ended::Unknown, false, false);
        assert_eq!(r.kind, ExitKind::Lost);
        assert_eq!(r.reason, REASON_AGENT_RESTARTED);
        // A known end is reported as it was, restart or not.
        assert_eq!(
            report(&t, Ended::Exited(0), false, false).kind,
            ExitKind::Finished
        );
    }

    #[test]
    fn exit_zero_is_finished() {
        let r = report(&task(32), Ended::Exited(0), false, false);
        assert_eq!(r.kind, ExitKind::Finished);
        assert_eq!(r.reason, REASON_COMMAND_EXITED);
        assert_eq!((r.exit_code, r.signal), (Some(0), None));
    }

    #[test]
    fn nonzero_exit_and_signals_are_failures() {
        let r = report(&task(32), Ended::Exited(3), false, false);
        assert_eq!(
            (r.kind, r.message.as_str()),
            (ExitKind::Failed, "exited with status 3")
        );
        let r = report(&task(32), Ended::Signaled(9), false, false);
        assert_eq!(
            (r.kind, r.message.as_str(), r.signal),
            (ExitKind::Failed, "killed by signal 9 (SIGKILL)", Some(9))
        );
    }

    #[test]
    fn an_oom_kill_is_a_memory_limitation_whatever_the_exit_status() {
        for ended in [Ended::Signaled(9), Ended::Exited(1), Ended::Exited(0)] {
            let r = report(&task(32), ended, false, true);
            assert_eq!(r.kind, ExitKind::Failed);
            assert_eq!(r.reason, REASON_CONTAINER_LIMITATION_MEMORY);
            assert!(
                r.message.contains("memory limit of 32 MB exceeded"),
                "{}",
                r.message
            );
        }
    }

    #[test]
    fn a_kill_for_health_is_reported_killed_with_the_health_reason_and_why() {
        let t = task(32);
        *t.health_killed.lock().unwrap() =
            Some("killed after 3 consecutive failed health checks (the last: HTTP/1.1 500)".into());
        let r = report(&t, Ended::Signaled(15), true, false);
        assert_eq!(r.kind, ExitKind::Killed);
        assert_eq!(r.reason, REASON_HEALTH_CHECK_FAILED);
        assert!(
            r.message.starts_with("killed after 3 consecutive"),
            "{}",
            r.message
        );
        assert_eq!(r.signal, Some(15));
    }

    #[test]
    fn a_requested_kill_is_reported_killed_even_after_an_oom() {
        let r = report(&task(32), Ended::Signaled(15), true, true);
        assert_eq!(r.kind, ExitKind::Killed);
        assert_eq!(r.reason, REASON_TASK_KILLED);
    }
}
