//! The reaper: the only code that waits for task processes.
//!
//! Each task's main process leads its own process group; the reaper collects the main
//! process's status for its monitor, and reaps the task's orphans, which the agent inherits as
//! child subreaper and which would otherwise stay zombies counted against the task's pids
//! limit. On each SIGCHLD it looks at which child exited without reaping it
//! (`waitid(WNOWAIT)`), and reaps it by pid only when its process group is a task's; so it
//! never takes the status of a child that other code in the agent's process spawned and
//! waits for. When such a child comes first and hides the rest, it asks each task's group
//! instead (`waitpid(-pgid)`). Orphans that left the task's process group are reaped by pid
//! once the task ends (as "strays", the pids its final kill hit).
//!
//! What is waited for is one table for the whole process, shared by every containerizer in it
//! (tests run several), so a pid reused by another containerizer's task replaces a stale
//! entry instead of being waited for twice.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, Notify};
use tracing::{trace, warn};

use crate::process::Ended;
use crate::procfs;

/// How long a group is still reaped after its task ended, for zombies reparented late.
const LINGER: Duration = Duration::from_secs(5);
/// How long a stray pid is watched before it is forgotten.
const STRAY_PATIENCE: Duration = Duration::from_secs(10);

/// Reaps task processes; see the module docs. One per containerizer, driving the shared
/// table from its runtime.
pub(crate) struct Reaper {
    /// Shared with the loop, which must not keep the reaper alive.
    wake: Arc<Notify>,
}

/// The process's table of what to wait for.
static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(Mutex::default);

#[derive(Default)]
struct Table {
    groups: HashMap<i32, Group>,
    strays: HashMap<i32, Stray>,
    next_token: u64,
}

/// A killed process of an ended task, known by pid and start time (pids are reused).
struct Stray {
    start_ticks: u64,
    since: Instant,
}

fn table() -> std::sync::MutexGuard<'static, Table> {
    // A panic elsewhere cannot leave the table inconsistent: every update is one insert or
    // remove.
    TABLE.lock().unwrap_or_else(|e| e.into_inner())
}

struct Group {
    token: u64,
    main: Option<oneshot::Sender<Ended>>,
    linger_until: Option<Instant>,
}

/// A registered main process: its token (for [`Reaper::release`]) and where its end arrives.
pub(crate) struct Watch {
    /// Identifies this registration to [`Reaper::release`].
    pub token: u64,
    /// Receives how the main process ended.
    pub ended: oneshot::Receiver<Ended>,
}

impl Reaper {
    /// A reaper and its loop, woken by SIGCHLD (and every second, in case a signal is
    /// coalesced away). Must be called within a Tokio runtime.
    pub(crate) fn start() -> Arc<Reaper> {
        let wake = Arc::new(Notify::new());
        let reaper = Arc::new(Reaper { wake: wake.clone() });
        tokio::spawn(run(Arc::downgrade(&reaper), wake));
        reaper
    }

    /// Starts waiting for `pid`, the leader of a fresh process group. Its end is delivered
    /// once, even if it already exited.
    pub(crate) fn watch(&self, pid: i32) -> Watch {
        let (tx, rx) = oneshot::channel();
        let token = {
            let mut st = table();
            st.next_token += 1;
            let token = st.next_token;
            // A lingering group of the same number ended before; pids are not reused while a
            // group of that id has members.
            st.groups.insert(
                pid,
                Group {
                    token,
                    main: Some(tx),
                    linger_until: None,
                },
            );
            token
        };
        // It may have exited before it was registered, its SIGCHLD already handled.
        self.reap();
        Watch { token, ended: rx }
    }

    /// The task of group `pid` ended: keep reaping its group a little longer, then forget it.
    pub(crate) fn release(&self, pid: i32, token: u64) {
        let mut st = table();
        if let Some(g) = st.groups.get_mut(&pid) {
            if g.token == token {
                g.linger_until = Some(Instant::now() + LINGER);
            }
        }
    }

    /// Pids of a task's processes that were killed: reap them if they end up our children.
    pub(crate) fn adopt(&self, pids: &[i32]) {
        let now = Instant::now();
        let known: Vec<(i32, u64)> = pids
            .iter()
            .filter_map(|&pid| Some((pid, procfs::stat(pid)?.start_ticks)))
            .collect();
        let mut st = table();
        for (pid, start_ticks) in known {
            st.strays.insert(
                pid,
                Stray {
                    start_ticks,
                    since: now,
                },
            );
        }
    }

    /// Reaps every exited process of the registered groups and the strays, without blocking.
    pub(crate) fn reap(&self) {
        let mut st = table();
        let now = Instant::now();
        st.groups
            .retain(|_, g| g.linger_until.is_none_or(|t| t > now));
        if !reap_known_zombies(&mut st, now) {
            scan_groups(&mut st, now);
        }
        if st.strays.is_empty() {
            return;
        }
        let me = std::process::id() as i32;
        let Table { groups, strays, .. } = &mut *st;
        strays.retain(|&pid, stray| {
            // A main process is its monitor's to wait for, never ours.
            if groups.get(&pid).is_some_and(|g| g.main.is_some()) {
                return false;
            }
            let patient = now.duration_since(stray.since) < STRAY_PATIENCE;
            match procfs::stat(pid) {
                // Gone, or the pid now names another process.
                None => false,
                Some(s) if s.start_ticks != stray.start_ticks => false,
                Some(s) if s.ppid == me => {
                    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::StillAlive) => patient,
                        Ok(_) => {
                            trace!(pid, "reaped a stray of a task");
                            false
                        }
                        Err(_) => false,
                    }
                }
                // Not (yet) reparented to us.
                Some(_) => patient,
            }
        });
    }
}

/// Reaps, one by one, the agent's exited children that belong to a registered group (or are
/// strays), finding each with a look that reaps nothing (`waitid(P_ALL, WNOWAIT)`): the cost
/// is the number of exited children, not of groups (asking each group, with a thousand
/// tasks ended in the last seconds still lingering, was most of the agent's system calls at
/// 200 launches a second). Returns false when an exited child that is not ours (another
/// part of the process waits for it) comes first and hides the others.
fn reap_known_zombies(st: &mut Table, now: Instant) -> bool {
    loop {
        // SAFETY: waitid with WNOWAIT only reads which child has exited, into memory we own.
        let pid = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            if libc::waitid(libc::P_ALL, 0, &mut info, flags) != 0 {
                // ECHILD: no children at all; EINTR: the next signal brings us back.
                return Errno::last() == Errno::ECHILD;
            }
            info.si_pid()
        };
        if pid == 0 {
            return true;
        }
        let group = if st.groups.contains_key(&pid) {
            Some(pid)
        } else {
            nix::unistd::getpgid(Some(Pid::from_raw(pid)))
                .ok()
                .map(Pid::as_raw)
                .filter(|g| st.groups.contains_key(g))
        };
        let stray = group.is_none()
            && st.strays.get(&pid).is_some_and(|s| {
                procfs::stat(pid).is_some_and(|now| now.start_ticks == s.start_ticks)
            });
        if group.is_none() && !stray {
            return false;
        }
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => continue,
            // Reaped meanwhile by whoever else waits for it.
            Err(_) => continue,
            Ok(status) => match group {
                Some(pgid) if pgid == pid => deliver(st, pgid, status, now),
                Some(pgid) => trace!(pgid, pid, "reaped an orphan of a task"),
                None => {
                    st.strays.remove(&pid);
                    trace!(pid, "reaped a stray of a task");
                }
            },
        }
    }
}

/// Asks each registered group for an exited member, until none has one.
fn scan_groups(st: &mut Table, now: Instant) {
    let pgids: Vec<i32> = st.groups.keys().copied().collect();
    for pgid in pgids {
        loop {
            match waitpid(Pid::from_raw(-pgid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(status) => {
                    let pid = status.pid().map(Pid::as_raw);
                    if pid == Some(pgid) {
                        deliver(st, pgid, status, now);
                    } else {
                        trace!(pgid, ?pid, "reaped an orphan of a task");
                    }
                }
                Err(Errno::EINTR) => {}
                // ECHILD: nothing of ours is in that group (any more).
                Err(_) => break,
            }
        }
    }
}

/// Sends how a group's main process ended to its monitor.
fn deliver(st: &mut Table, pgid: i32, status: WaitStatus, now: Instant) {
    let Some(group) = st.groups.get_mut(&pgid) else {
        return;
    };
    if let Some(tx) = group.main.take() {
        if tx.send(ended(status)).is_err() {
            // Its monitor is gone (runtime shut down): nobody will release the group.
            group.linger_until = Some(now + LINGER);
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // Let the loop see that it is gone.
        self.wake.notify_one();
    }
}

/// A wait status as an [`Ended`].
fn ended(status: WaitStatus) -> Ended {
    match status {
        WaitStatus::Exited(_, code) => Ended::Exited(code),
        WaitStatus::Signaled(_, sig, _) => Ended::Signaled(sig as i32),
        _ => Ended::Unknown,
    }
}

async fn run(reaper: Weak<Reaper>, wake: Arc<Notify>) {
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot watch SIGCHLD; polling for exited tasks instead");
            None
        }
    };
    let period = if sigchld.is_some() {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(20)
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = async { sigchld.as_mut().expect("checked").recv().await }, if sigchld.is_some() => {}
            _ = tick.tick() => {}
            _ = wake.notified() => {}
        }
        let Some(r) = reaper.upgrade() else {
            return;
        };
        // Quick: waitpid with WNOHANG never blocks, and strays are few.
        r.reap();
    }
}
