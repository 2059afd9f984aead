//! What the agent watches and enforces itself while a task runs, beyond what its isolation's
//! kernel limits do: its timeout, a whole-task kill when the kernel killed one of its
//! processes for memory, and its sandbox's disk use.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::{info, warn};

use super::{kill_all, unix_ms, Inner, Task};
use crate::sandbox::{self, DiskUse};

/// The least time between two measurements of one sandbox's disk use.
pub const DISK_INTERVAL: Duration = Duration::from_secs(1);
/// A measurement that took `t` is followed by the next one no sooner than this many `t`
/// later, so that measuring a sandbox of many files costs at most a twentieth of a core.
const DISK_BACKOFF: u32 = 20;

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

    /// Measures the task's sandbox disk use from its start until it ends: every
    /// [`DISK_INTERVAL`], or less often when a measurement is slow.
    pub(super) async fn watch_disk(self: Arc<Self>, task: Arc<Task>) {
        let dir = sandbox::path(&self.work_dir, &task.id);
        let ended = task.ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        let mut warned = false;
        loop {
            if task.exited.load(Ordering::SeqCst) {
                return;
            }
            let started = Instant::now();
            let measured = {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || sandbox::disk_used(&dir)).await
            };
            let took = started.elapsed();
            match measured {
                Ok(Ok(bytes)) => {
                    *task.disk.lock().expect("disk lock") = Some(DiskUse {
                        bytes,
                        measured_ms: unix_ms(),
                    });
                    warned = false;
                }
                Ok(Err(e)) if !warned => {
                    warn!(error = %e, "cannot measure the task's disk use");
                    warned = true;
                }
                Ok(Err(_)) => {}
                // The runtime is shutting down.
                Err(_) => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(DISK_INTERVAL.max(took * DISK_BACKOFF)) => {}
                _ = &mut ended => return,
            }
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
