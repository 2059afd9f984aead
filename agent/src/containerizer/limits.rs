//! What the agent watches and enforces itself while a task runs, beyond what its isolation's
//! kernel limits do: its timeout, a whole-task kill when the kernel killed one of its
//! processes for memory, its sandbox's disk use, and the ports it listens on.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::{info, info_span, warn, Instrument};

use super::{kill_all, unix_ms, Inner, Slot, Task};
use super::{REASON_CONTAINER_LIMITATION, REASON_CONTAINER_LIMITATION_DISK};
use crate::procfs::{self, Listening};
use crate::sandbox::{self, DiskUse};

/// The least time between two measurements of one sandbox's disk use.
pub const DISK_INTERVAL: Duration = Duration::from_secs(1);
/// A measurement that took `t` is followed by the next one no sooner than this many `t`
/// later, so that measuring a sandbox of many files costs at most a twentieth of a core.
const DISK_BACKOFF: u32 = 20;
/// The least time between two looks at the ports the watched tasks listen on.
pub const PORTS_INTERVAL: Duration = Duration::from_millis(500);
/// As [`DISK_BACKOFF`], for the look at every watched task's ports.
const PORTS_BACKOFF: u32 = 20;

const MIB: u64 = 1024 * 1024;

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

    /// Looks, every [`PORTS_INTERVAL`] (less often when a look is slow), at the sockets the
    /// processes of every watched task hold, and kills a task that listens on a port it was
    /// not given. One loop for all tasks, since every look reads the whole system's socket
    /// tables; it ends with the containerizer.
    pub(super) async fn watch_ports(inner: Weak<Inner>) {
        loop {
            let Some(me) = inner.upgrade() else {
                return;
            };
            let watched: Vec<Arc<Task>> = me
                .tasks
                .lock()
                .expect("tasks lock")
                .values()
                .filter_map(|slot| match slot {
                    Slot::Running(t) if t.allowed_ports.is_some() => Some(t.clone()),
                    _ => None,
                })
                .collect();
            drop(me);
            let started = Instant::now();
            if !watched.is_empty() {
                let found = tokio::task::spawn_blocking(move || {
                    let listening = procfs::listening_sockets();
                    watched
                        .into_iter()
                        .filter(|t| !t.exited.load(Ordering::SeqCst))
                        .filter_map(|t| {
                            let l = unlawful_listener(&t, &listening)?;
                            Some((t, l))
                        })
                        .collect::<Vec<_>>()
                })
                .await;
                let Ok(found) = found else {
                    // The runtime is shutting down.
                    return;
                };
                for (task, l) in found {
                    let allowed = task.allowed_ports.as_deref().unwrap_or_default();
                    let given = if allowed.is_empty() {
                        "it was given none".to_string()
                    } else {
                        let ports: Vec<String> = allowed.iter().map(u16::to_string).collect();
                        format!("its ports are {}", ports.join(", "))
                    };
                    let message = format!(
                        "it listens on {} port {}, which it was not given ({given})",
                        l.proto, l.port
                    );
                    let span = info_span!("task", task = %task.id);
                    impose(&task, REASON_CONTAINER_LIMITATION, message)
                        .instrument(span)
                        .await;
                }
            }
            let took = started.elapsed();
            tokio::time::sleep(PORTS_INTERVAL.max(took * PORTS_BACKOFF)).await;
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
                    if let Some(limit) = task.disk_limit_mb.filter(|&l| bytes > l * MIB) {
                        let message = format!(
                            "its sandbox takes {:.1} MB of disk, more than its disk of {limit} MB",
                            bytes as f64 / MIB as f64
                        );
                        impose(&task, REASON_CONTAINER_LIMITATION_DISK, message).await;
                        return;
                    }
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

/// The first socket a process of `task` listens on at a port it was not given, if any.
/// Blocking (reads `/proc`).
fn unlawful_listener(
    task: &Task,
    listening: &std::collections::HashMap<u64, Listening>,
) -> Option<Listening> {
    let allowed = task.allowed_ports.as_ref()?;
    if listening.is_empty() {
        return None;
    }
    task.isolation.pids().into_iter().find_map(|pid| {
        procfs::socket_inodes(pid)
            .into_iter()
            .filter_map(|inode| listening.get(&inode).copied())
            .find(|l| !allowed.contains(&l.port))
    })
}

/// Kills the whole task at once (SIGKILL, no grace: it is breaking a limit) for a limit it
/// broke, which its end then reports, unless it ended or broke another first.
async fn impose(task: &Task, reason: &'static str, message: String) {
    {
        let mut limitation = task.limitation.lock().expect("limitation lock");
        if limitation.is_some() || task.exited.load(Ordering::SeqCst) {
            return;
        }
        warn!(reason, %message, "limit broken: killing the task");
        *limitation = Some((reason, message));
    }
    kill_all(task).await;
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
