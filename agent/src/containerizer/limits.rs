//! Limits the agent enforces itself while a task runs, beyond what its isolation's kernel
//! limits do: its timeout, and a whole-task kill when the kernel killed one of its processes
//! for memory.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::{info, warn};

use super::{kill_all, unix_ms, Inner, Task};

impl Inner {
    /// Kills a task with its kill policy once its timeout runs out, unless it ended before.
    pub(super) async fn enforce_timeout(self: Arc<Self>, task: Arc<Task>) {
        let Some(deadline_ms) = task.deadline_ms else {
            return;
        };
        let ended = task.ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        if task.exited.load(Ordering::SeqCst) {
            return;
        }
        let left = Duration::from_millis(deadline_ms.saturating_sub(unix_ms()));
        tokio::select! {
            _ = tokio::time::sleep(left) => {}
            _ = ended => return,
        }
        if task.exited.load(Ordering::SeqCst) {
            return;
        }
        info!("timeout reached: killing the task");
        task.timed_out.store(true, Ordering::SeqCst);
        if let Err(e) = self.kill(&task.id).await {
            warn!(error = %e, "cannot kill a task past its timeout");
        }
    }
}

/// Kills the whole task once its isolation reports that it ran out of memory, where the
/// kernel itself kills only one process (cgroup v1), as it does on cgroup v2: a task that
/// lost a process to its memory limit is not left running crippled. Returns when the task
/// ends.
pub(super) async fn enforce_memory_limit(task: Arc<Task>) {
    let ended = task.ended.notified();
    tokio::pin!(ended);
    ended.as_mut().enable();
    let watched = task
        .isolation
        .oom_events()
        .map_err(|e| e.to_string())
        .and_then(|fd| {
            fd.map(|fd| {
                // SAFETY: an OwnedFd stays open, and names the same eventfd, while it is owned.
                unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                    .map_err(|e| e.to_string())
            })
            .transpose()
        });
    let events = match watched {
        Ok(Some(events)) => events,
        Ok(None) => return,
        Err(e) => {
            warn!(error = %e, "cannot watch the task's memory: a process killed for memory may leave the rest running");
            return;
        }
    };
    if task.exited.load(Ordering::SeqCst) {
        return;
    }
    tokio::select! {
        _ = ended => return,
        ready = events.readable() => {
            if let Err(e) = ready {
                warn!(error = %e, "cannot watch the task's memory");
                return;
            }
        }
    }
    // The group's removal also signals the eventfd; by then the task has ended.
    if task.exited.load(Ordering::SeqCst) {
        return;
    }
    task.memory_limited.store(true, Ordering::SeqCst);
    warn!(
        mem_mb = task.mem_mb,
        "the task ran out of memory: killing all of it"
    );
    kill_all(&task).await;
}
