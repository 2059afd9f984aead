//! The containerizer: launches each task in its sandbox and isolation, monitors it until its
//! main process exits, cleans up everything the task left, and reports how it ended on a
//! channel.
//!
//! Lifecycle of one task: sandbox, isolation with limits, clone, (in the child) `setsid` and
//! join the isolation, exec; the [reaper](crate::reaper) reports the main process's end; the
//! monitor kills whatever is left in the isolation, reads the OOM-kill count, removes the
//! isolation and then reports. `kill` sends SIGTERM to every process of the task and SIGKILL
//! to all of them once the task's grace period has passed.
//!
//! With a supervisor program, the main process is a supervisor (see [`crate::supervisor`]),
//! forked by the agent's [spawner](crate::spawner), that outlives the agent and records how
//! the command ended; its end is seen through a pidfd. Each running task is checkpointed. A
//! restarted agent
//! [recovers](Containerizer::recover) them: it re-attaches to the tasks still running (their
//! end is seen through a pidfd, the status read from the supervisor's exit file) and reports
//! those that ended while it was down.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::checkpoint::{Checkpoints, TaskCheckpoint};
pub use crate::health::CheckResult;
use crate::isolator::{validate_id, Isolation, Isolator, Usage};
pub use crate::process::TaskUser;
use crate::process::{huge_pages_disabled, spawn_isolated, Ended};
use crate::procfs;
use crate::reaper::{Reaper, Watch};
use crate::sandbox::{self, DiskUse, Sandbox};
use crate::spawner::Spawner;
use crate::supervisor::{HealthPlan, Plan};

mod adopted;
mod bare;
mod command;
mod error;
mod exit;
mod health;
mod limits;
mod spec;

use adopted::{adopted_end, same_process, supervised_end};
use command::{command, program, task_command, wait_started};
use exit::report;
use limits::enforce_memory_limit;

pub use bare::bare_launch_cycle;
pub use error::{KillError, LaunchError};
pub use exit::{ExitKind, TaskEvent, TaskExit};
pub use health::HEALTH_POLL;
pub use spec::{Command, Confinement, LaunchSpec, Namespaces};

/// Reason of a task whose command exited on its own (successfully or not).
pub const REASON_COMMAND_EXITED: &str = "REASON_COMMAND_EXITED";
/// Reason of a task killed for exceeding its memory limit.
pub const REASON_CONTAINER_LIMITATION_MEMORY: &str = "REASON_CONTAINER_LIMITATION_MEMORY";
/// Reason of a task killed on request.
pub const REASON_TASK_KILLED: &str = "REASON_TASK_KILLED";
/// Reason of a task whose end the agent could not learn because it was down.
pub const REASON_AGENT_RESTARTED: &str = "REASON_AGENT_RESTARTED";
/// Reason of a task killed for listening on a port it was not given.
pub const REASON_CONTAINER_LIMITATION: &str = "REASON_CONTAINER_LIMITATION";
/// Reason of a task killed because its sandbox grew past its disk.
pub const REASON_CONTAINER_LIMITATION_DISK: &str = "REASON_CONTAINER_LIMITATION_DISK";
/// Reason of a task its supervisor killed because its health check failed too often.
pub const REASON_HEALTH_CHECK_FAILED: &str = "REASON_HEALTH_CHECK_FAILED";
/// Reason of the update that says a running task's health changed (as Mesos names it).
pub const REASON_TASK_HEALTH_CHECK_STATUS_UPDATED: &str = "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED";
/// Reason of a task killed because it ran past its timeout.
pub const REASON_MAX_COMPLETION_TIME_REACHED: &str = "REASON_MAX_COMPLETION_TIME_REACHED";

/// Processes a task may have at once unless its spec says otherwise.
pub const DEFAULT_PIDS_MAX: u64 = 4096;
/// Time between SIGTERM and SIGKILL unless a spec says otherwise.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(3);
/// PATH of a task whose environment sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs tasks; see the module docs.
pub struct Containerizer {
    inner: Arc<Inner>,
}

struct Inner {
    work_dir: PathBuf,
    /// Where running tasks are recorded for a restarted agent; `None` if unusable.
    checkpoints: Option<Arc<Checkpoints>>,
    /// What forks each task's supervisor (the `mesofs` binary); `None`: the command is the
    /// main process, and tasks do not survive the agent.
    supervisor: Option<Spawner>,
    isolator: Box<dyn Isolator>,
    tasks: Mutex<HashMap<String, Slot>>,
    events: mpsc::UnboundedSender<TaskEvent>,
    reaper: Arc<Reaper>,
    /// Notified whenever a task leaves `tasks`.
    changed: Notify,
    shutting_down: AtomicBool,
}

/// How a launched task's main process is seen to end.
enum MainEnd {
    /// It is the agent's own child, which the reaper waits for.
    Child(Watch),
    /// It is a supervisor, the spawner's child: its pidfd turns readable when it ends, and its
    /// exit file then says how the command ended.
    Supervisor {
        pidfd: OwnedFd,
        exit_file: PathBuf,
        /// Its group's registration with the reaper.
        token: u64,
    },
}

enum Slot {
    /// Its id is taken; it is being set up. Holds whether a kill came meanwhile.
    Launching {
        killed: bool,
    },
    Running(Arc<Task>),
}

struct Task {
    id: String,
    pid: i32,
    isolation: Arc<dyn Isolation>,
    mem_mb: u64,
    kill_grace: Duration,
    kill_requested: AtomicBool,
    /// The agent killed it for running out of memory (see [`limits::enforce_memory_limit`]).
    memory_limited: AtomicBool,
    exited: AtomicBool,
    /// Notified when the main process has exited.
    ended: Notify,
    /// Taken back from an earlier run of the agent.
    recovered: bool,
    /// When its timeout runs out (unix ms), if it has one.
    deadline_ms: Option<u64>,
    /// The agent killed it for running past its timeout (see [`Inner::enforce_timeout`]).
    timed_out: AtomicBool,
    /// Its sandbox's latest disk measurement (see [`Inner::watch_disk`]).
    disk: Mutex<Option<DiskUse>>,
    /// The most disk its sandbox may take (MiB), when enforced.
    disk_limit_mb: Option<u64>,
    /// The only ports it may listen on, when watched (see [`Inner::watch_ports`]).
    allowed_ports: Option<Vec<u16>>,
    /// The limit the agent killed it for, with the reason and message to report.
    limitation: Mutex<Option<(&'static str, String)>>,
    /// Where its supervisor records its health checks, if it has one.
    health_file: Option<PathBuf>,
    /// The number of the latest health change reported.
    health_reported: AtomicU64,
    /// Why its supervisor killed it for its health, once known.
    health_killed: Mutex<Option<String>>,
    /// Its latest health check as the agent last read it, with the counted failures in a row.
    last_check: Mutex<Option<(CheckResult, u32)>>,
}

impl Containerizer {
    /// A containerizer keeping sandboxes under `work_dir/sandboxes`, isolating tasks with
    /// `isolator`; task ends are reported on the returned channel. Makes this process a child
    /// subreaper, so orphaned task processes are reparented to it and reaped. With
    /// `supervisor` (the `mesofs` binary), each task runs under a supervisor and survives a
    /// restart of the agent. Must be called within a Tokio runtime.
    pub fn new(
        work_dir: PathBuf,
        isolator: Box<dyn Isolator>,
        supervisor: Option<PathBuf>,
    ) -> (Containerizer, mpsc::UnboundedReceiver<TaskEvent>) {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            warn!(error = %e, "cannot become a child subreaper: orphans of tasks will not be reaped by the agent");
        }
        let (events, rx) = mpsc::unbounded_channel();
        let checkpoints = match Checkpoints::open(&work_dir) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                warn!(error = %e, "cannot keep checkpoints: tasks will not survive a restart of the agent");
                None
            }
        };
        let inner = Arc::new(Inner {
            checkpoints,
            supervisor: supervisor.map(Spawner::new),
            work_dir,
            isolator,
            tasks: Mutex::new(HashMap::new()),
            events,
            reaper: Reaper::start(),
            changed: Notify::new(),
            shutting_down: AtomicBool::new(false),
        });
        tokio::spawn(Inner::watch_ports(Arc::downgrade(&inner)));
        info!(isolator = inner.isolator.name(), "containerizer ready");
        (Containerizer { inner }, rx)
    }

    /// Launches a task. `Ok` (with the sandbox directory) means its command has been exec'd
    /// in its isolation; its end will be reported on the channel, never before this returns.
    pub async fn launch(&self, spec: LaunchSpec) -> Result<PathBuf, LaunchError> {
        let span = info_span!("task", task = %spec.task_id);
        let inner = self.inner.clone();
        // Spawned, so that a caller giving up half-way cannot leave a process unmonitored.
        tokio::spawn(async move { inner.launch(spec).await }.instrument(span))
            .await
            .map_err(|e| LaunchError::Internal(e.to_string()))?
    }

    /// Kills a task: SIGTERM to each of its processes now, SIGKILL to all of them after its
    /// grace period unless it ended by then. Returns once SIGTERM was sent; the end is
    /// reported on the channel as [`ExitKind::Killed`]. A task still being launched is killed
    /// as soon as it runs. Killing a task twice is harmless.
    pub async fn kill(&self, task_id: &str) -> Result<(), KillError> {
        self.inner.clone().kill(task_id).await
    }

    /// Kills every task (SIGTERM, then SIGKILL after each one's grace period), refuses new
    /// launches, and returns once every task's end has been reported.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.shutting_down.store(true, Ordering::SeqCst);
        info!(
            tasks = self.running().len(),
            "shutting down: killing every task"
        );
        loop {
            let changed = inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if inner.tasks.lock().expect("tasks lock").is_empty() {
                return;
            }
            // Including tasks whose launch was under way; killing twice is harmless.
            for id in self.running() {
                let _ = inner.clone().kill(&id).await;
            }
            changed.await;
        }
    }

    /// Finds the tasks an earlier run of this agent left (from its checkpoints): re-attaches
    /// to those still running, and reports on the channel those that ended meanwhile, as if
    /// they had been launched here. Removes every other isolation the earlier run left.
    /// Returns the ids of the tasks found. Call once, before launching anything.
    pub async fn recover(&self) -> Vec<String> {
        let inner = self.inner.clone();
        let saved = inner
            .checkpoints
            .as_ref()
            .map(|c| c.tasks())
            .unwrap_or_default();
        let keep: BTreeSet<String> = saved.iter().map(|t| t.task_id.clone()).collect();
        let sweeper = inner.clone();
        let _ = tokio::task::spawn_blocking(move || sweeper.isolator.sweep(&keep)).await;
        let mut found = Vec::new();
        for saved in saved {
            let span = info_span!("task", task = %saved.task_id);
            let isolation = match inner.isolator.recover(&saved.task_id, saved.pid) {
                Ok(i) => Arc::<dyn Isolation>::from(i),
                Err(e) => {
                    span.in_scope(
                        || warn!(error = %e, "cannot recover the task's isolation; forgetting it"),
                    );
                    if let Some(c) = &inner.checkpoints {
                        c.forget_task(&saved.task_id);
                    }
                    continue;
                }
            };
            let alive = same_process(saved.pid, saved.start_ticks);
            span.in_scope(|| {
                if alive {
                    info!(
                        pid = saved.pid,
                        "re-attached to a task left running by an earlier run of the agent"
                    )
                } else {
                    info!(
                        pid = saved.pid,
                        "found a task that ended while the agent was down"
                    )
                }
            });
            let task = Arc::new(Task {
                id: saved.task_id.clone(),
                pid: saved.pid,
                isolation,
                mem_mb: saved.mem_mb,
                kill_grace: Duration::from_millis(saved.kill_grace_ms),
                kill_requested: AtomicBool::new(false),
                memory_limited: AtomicBool::new(false),
                exited: AtomicBool::new(false),
                ended: Notify::new(),
                recovered: true,
                deadline_ms: saved.deadline_ms,
                timed_out: AtomicBool::new(false),
                disk: Mutex::new(None),
                disk_limit_mb: saved.disk_limit_mb,
                allowed_ports: saved.allowed_ports.clone(),
                limitation: Mutex::new(None),
                health_file: inner
                    .checkpoints
                    .as_ref()
                    .filter(|_| saved.health)
                    .map(|c| c.health_file(&saved.task_id)),
                health_reported: AtomicU64::new(0),
                health_killed: Mutex::new(None),
                last_check: Mutex::new(None),
            });
            inner
                .tasks
                .lock()
                .expect("tasks lock")
                .insert(saved.task_id.clone(), Slot::Running(task.clone()));
            let exit_file = inner
                .checkpoints
                .as_ref()
                .map(|c| c.exit_file(&saved.task_id));
            let ended = Box::pin(adopted_end(saved.pid, saved.start_ticks, exit_file));
            let (launched_tx, launched_rx) = oneshot::channel();
            let _ = launched_tx.send(());
            tokio::spawn(
                inner
                    .clone()
                    .monitor(task, ended, None, launched_rx)
                    .instrument(span),
            );
            found.push(saved.task_id);
        }
        found
    }

    /// Forgets the checkpoint of a task whose end has been recorded as a status update.
    pub fn forget(&self, task_id: &str) {
        if let Some(c) = &self.inner.checkpoints {
            c.forget_task(task_id);
        }
    }

    /// The agent's checkpoint directory, if it is usable.
    pub fn checkpoints(&self) -> Option<Arc<Checkpoints>> {
        self.inner.checkpoints.clone()
    }

    /// The sandbox directory of a task, if it exists (running or not).
    pub fn sandbox(&self, task_id: &str) -> Option<PathBuf> {
        validate_id(task_id).ok()?;
        let dir = sandbox::path(&self.inner.work_dir, task_id);
        dir.is_dir().then_some(dir)
    }

    /// Ids of the tasks being launched or running (not yet reported ended), sorted.
    pub fn running(&self) -> Vec<String> {
        let tasks = self.inner.tasks.lock().expect("tasks lock");
        let mut ids: Vec<String> = tasks.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// What a running task has used so far.
    pub fn usage(&self, task_id: &str) -> Option<Usage> {
        Some(self.inner.task(task_id)?.isolation.usage())
    }

    /// The latest measurement of a running task's sandbox disk use, once there is one.
    pub fn disk(&self, task_id: &str) -> Option<DiskUse> {
        *self.inner.task(task_id)?.disk.lock().expect("disk lock")
    }

    /// A running task's latest health check (as the agent last read it, at most
    /// [`HEALTH_POLL`] ago), with its counted failures in a row.
    pub fn last_check(&self, task_id: &str) -> Option<(CheckResult, u32)> {
        self.inner
            .task(task_id)?
            .last_check
            .lock()
            .expect("health lock")
            .clone()
    }

    /// The cgroup directories of a running task (empty without cgroup isolation).
    pub fn cgroup_dirs(&self, task_id: &str) -> Vec<PathBuf> {
        self.inner
            .task(task_id)
            .map(|t| t.isolation.cgroup_dirs())
            .unwrap_or_default()
    }

    /// The isolator's name ("cgroups-v1", "cgroups-v2" or "posix").
    pub fn isolator_name(&self) -> &'static str {
        self.inner.isolator.name()
    }
}

impl Drop for Containerizer {
    fn drop(&mut self) {
        // Without shutdown(): nothing of a task may outlive the agent's handle on it. Launches
        // under way kill their task once it runs.
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let tasks: Vec<Arc<Task>> = {
            let tasks = self.inner.tasks.lock().expect("tasks lock");
            tasks
                .values()
                .filter_map(|s| match s {
                    Slot::Running(t) => Some(t.clone()),
                    Slot::Launching { .. } => None,
                })
                .collect()
        };
        for task in tasks {
            warn!(task = %task.id, "containerizer dropped with the task running: killing it");
            task.kill_requested.store(true, Ordering::SeqCst);
            if let Err(e) = task.isolation.destroy() {
                warn!(task = %task.id, error = %e, "cannot clean up the task");
            }
        }
    }
}

impl Inner {
    fn task(&self, task_id: &str) -> Option<Arc<Task>> {
        match self.tasks.lock().expect("tasks lock").get(task_id) {
            Some(Slot::Running(t)) => Some(t.clone()),
            _ => None,
        }
    }

    async fn launch(self: Arc<Self>, spec: LaunchSpec) -> Result<PathBuf, LaunchError> {
        let id = spec.task_id.clone();
        validate_id(&id).map_err(|_| LaunchError::InvalidTaskId(id.clone()))?;
        if let Command::Argv(argv) = &spec.command {
            if argv.is_empty() {
                return Err(LaunchError::EmptyCommand);
            }
        }
        if let Some((k, _)) = spec
            .env
            .iter()
            .find(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0'))
        {
            return Err(LaunchError::InvalidEnv(k.clone()));
        }
        // Health checks are run by supervisors, which need the checkpoints to record in.
        if spec.health.is_some() && (self.supervisor.is_none() || self.checkpoints.is_none()) {
            return Err(LaunchError::HealthNeedsSupervisor);
        }
        {
            let mut tasks = self.tasks.lock().expect("tasks lock");
            if self.shutting_down.load(Ordering::SeqCst) {
                return Err(LaunchError::ShuttingDown);
            }
            if tasks.contains_key(&id) {
                return Err(LaunchError::Duplicate(id));
            }
            tasks.insert(id.clone(), Slot::Launching { killed: false });
        }
        let started = Instant::now();
        // Counted from now, and kept in the checkpoint, so that a restarted agent keeps it.
        let deadline_ms = spec
            .timeout
            .map(|t| unix_ms().saturating_add(t.as_millis() as u64));
        let me = self.clone();
        let spec2 = spec.clone();
        let span = tracing::Span::current();
        // The task's checkpoint too: file I/O, kept off the async workers.
        let spawned = tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                let started = me.start(&spec2)?;
                me.checkpoint(&spec2, started.1, deadline_ms);
                Ok(started)
            })
        })
        .await
        .map_err(|e| LaunchError::Internal(e.to_string()))
        .and_then(|r| r);
        let (sandbox, pid, isolation, end) = match spawned {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "launch failed");
                self.tasks.lock().expect("tasks lock").remove(&id);
                self.changed.notify_waiters();
                return Err(e);
            }
        };
        let task = Arc::new(Task {
            id: id.clone(),
            pid,
            isolation,
            mem_mb: spec.mem_mb,
            kill_grace: spec.kill_grace,
            kill_requested: AtomicBool::new(false),
            memory_limited: AtomicBool::new(false),
            exited: AtomicBool::new(false),
            ended: Notify::new(),
            recovered: false,
            deadline_ms,
            timed_out: AtomicBool::new(false),
            disk: Mutex::new(None),
            disk_limit_mb: spec.disk_limit_mb,
            allowed_ports: spec.allowed_ports.clone(),
            limitation: Mutex::new(None),
            health_file: spec
                .health
                .as_ref()
                .and(self.checkpoints.as_ref())
                .map(|c| c.health_file(&id)),
            health_reported: AtomicU64::new(0),
            health_killed: Mutex::new(None),
            last_check: Mutex::new(None),
        });
        let killed_meanwhile = matches!(
            self.tasks
                .lock()
                .expect("tasks lock")
                .insert(id.clone(), Slot::Running(task.clone())),
            Some(Slot::Launching { killed: true })
        );
        let (launched_tx, launched_rx) = oneshot::channel();
        let (ended, token): (Pin<Box<dyn Future<Output = Ended> + Send>>, _) = match end {
            MainEnd::Child(watch) => (
                Box::pin(async move { watch.ended.await.unwrap_or(Ended::Unknown) }),
                Some(watch.token),
            ),
            MainEnd::Supervisor {
                pidfd,
                exit_file,
                token,
            } => (
                Box::pin(supervised_end(pidfd, Some(exit_file))),
                Some(token),
            ),
        };
        tokio::spawn(
            self.clone()
                .monitor(task, ended, token, launched_rx)
                .instrument(tracing::Span::current()),
        );
        info!(pid, sandbox = %sandbox.display(), elapsed_us = started.elapsed().as_micros() as u64, "task running");
        if killed_meanwhile || self.shutting_down.load(Ordering::SeqCst) {
            let _ = self.clone().kill(&id).await;
        }
        let _ = launched_tx.send(());
        Ok(sandbox)
    }

    /// Records a task that runs, so that a restarted agent finds it.
    fn checkpoint(&self, spec: &LaunchSpec, pid: i32, deadline_ms: Option<u64>) {
        let Some(checkpoints) = &self.checkpoints else {
            return;
        };
        // Gone already: it ends while this agent watches, nothing to recover.
        let Some(stat) = procfs::stat(pid) else {
            return;
        };
        let saved = TaskCheckpoint {
            task_id: spec.task_id.clone(),
            pid,
            start_ticks: stat.start_ticks,
            mem_mb: spec.mem_mb,
            kill_grace_ms: spec.kill_grace.as_millis() as u64,
            deadline_ms,
            disk_limit_mb: spec.disk_limit_mb,
            allowed_ports: spec.allowed_ports.clone(),
            health: spec.health.is_some(),
        };
        if let Err(e) = checkpoints.save_task(&saved) {
            warn!(error = %e, "cannot checkpoint the task: it will not survive a restart of the agent");
        }
    }

    /// The blocking part of a launch: sandbox, isolation, spawn, and registration with the
    /// reaper. Undoes what it did on failure.
    fn start(
        &self,
        spec: &LaunchSpec,
    ) -> Result<(PathBuf, i32, Arc<dyn Isolation>, MainEnd), LaunchError> {
        let id = &spec.task_id;
        let user = spec.user.filter(|u| !u.is_current());
        if let Some(u) = user {
            let agent = nix::unistd::geteuid();
            if !agent.is_root() {
                return Err(LaunchError::User {
                    agent: agent.as_raw(),
                    task: u.uid,
                });
            }
        }
        let sandbox =
            Sandbox::create(&self.work_dir, id, user).map_err(|source| LaunchError::Sandbox {
                path: sandbox::path(&self.work_dir, id),
                source,
            })?;
        let isolation: Arc<dyn Isolation> = self.isolator.create(id, &spec.limits())?.into();
        let spawn_err = |source| LaunchError::Spawn {
            program: program(&spec.command).to_string(),
            source,
        };
        let spawned = (|| match (&self.supervisor, &self.checkpoints) {
            (Some(spawner), Some(c)) => {
                let exit_file = c.exit_file(id);
                let _ = std::fs::remove_file(&exit_file);
                let health = spec.health.as_ref().map(|check| HealthPlan {
                    check: check.clone(),
                    file: c.health_file(id),
                });
                if let Some(h) = &health {
                    let _ = std::fs::remove_file(&h.file);
                }
                // Found now, so that a missing program fails the launch, not the task.
                let (found, mut argv) = task_command(spec, sandbox.dir()).map_err(spawn_err)?;
                argv[0] = found;
                // The command joins and switches user by itself, from the supervisor's fork.
                let plan = Plan {
                    exit_file: exit_file.clone(),
                    joins: isolation.cgroup_dirs(),
                    user,
                    started_fd: true,
                    huge_pages_disabled: huge_pages_disabled(),
                    pid_namespace: spec.namespaces.pid,
                    mount_namespace: spec.namespaces.mount,
                    health,
                    kill_grace_ms: spec.kill_grace.as_millis() as u64,
                    argv,
                };
                let exec = command(spec, &sandbox, Some((spawner.bin(), plan)))?;
                let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| spawn_err(e.into()))?;
                let (pid, pidfd) = spawner.spawn(&exec, w.as_fd()).map_err(spawn_err)?;
                drop(w);
                wait_started(r);
                Ok((pid, Some((pidfd, exit_file))))
            }
            _ => {
                let exec = command(spec, &sandbox, None)?;
                let credentials = user.map(|u| u.credentials());
                let pid = spawn_isolated(&exec, &isolation.joiner()?, credentials.as_ref(), None)
                    .map_err(spawn_err)?;
                Ok((pid, None))
            }
        })();
        let (pid, supervised) = match spawned {
            Ok(spawned) => spawned,
            Err(e) => {
                if let Err(d) = isolation.destroy() {
                    warn!(error = %d, "cannot remove the isolation of a failed launch");
                }
                return Err(e);
            }
        };
        isolation.started(pid);
        // The reaper waits for it; or, for a supervisor, reaps its group should the spawner
        // die and leave the supervisor and the task's orphans to the agent, its subreaper.
        let watch = self.reaper.watch(pid);
        let end = match supervised {
            Some((pidfd, exit_file)) => MainEnd::Supervisor {
                pidfd,
                exit_file,
                token: watch.token,
            },
            None => MainEnd::Child(watch),
        };
        Ok((sandbox.dir().to_path_buf(), pid, isolation, end))
    }

    /// Waits for the main process to end (`ended`), cleans up, and reports. `token` is its
    /// registration with the reaper, for a process this agent spawned.
    async fn monitor(
        self: Arc<Self>,
        task: Arc<Task>,
        ended: Pin<Box<dyn Future<Output = Ended> + Send>>,
        token: Option<u64>,
        launched: oneshot::Receiver<()>,
    ) {
        tokio::spawn(enforce_memory_limit(task.clone()).instrument(tracing::Span::current()));
        tokio::spawn(
            self.clone()
                .watch_disk(task.clone())
                .instrument(tracing::Span::current()),
        );
        if task.deadline_ms.is_some() {
            tokio::spawn(
                self.clone()
                    .enforce_timeout(task.clone())
                    .instrument(tracing::Span::current()),
            );
        }
        if task.health_file.is_some() {
            tokio::spawn(
                self.clone()
                    .watch_health(task.clone())
                    .instrument(tracing::Span::current()),
            );
        }
        let ended = ended.await;
        let killed = task.kill_requested.load(Ordering::SeqCst);
        task.exited.store(true, Ordering::SeqCst);
        task.ended.notify_waiters();
        debug!(?ended, "main process ended");
        // Never report an end before its launch was reported done.
        let _ = launched.await;
        // Every health change before the end, and why the supervisor killed it, if it did.
        self.report_health(&task).await;
        let isolation = task.isolation.clone();
        let reaper = self.reaper.clone();
        let span = tracing::Span::current();
        let oom = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            match isolation.kill_all() {
                Ok(pids) => {
                    if !pids.is_empty() {
                        debug!(count = pids.len(), "killed processes the main process left");
                    }
                    reaper.adopt(&pids);
                }
                Err(e) => warn!(error = %e, "cannot kill what the task left"),
            }
            reaper.reap();
            // Read before destroy: the count goes with the cgroup.
            let oom = isolation.oom_killed();
            if let Err(e) = isolation.destroy() {
                warn!(error = %e, "cannot remove the task's isolation");
            }
            oom
        })
        .await
        .unwrap_or(false)
            || task.memory_limited.load(Ordering::SeqCst);
        if let Some(token) = token {
            self.reaper.release(task.pid, token);
        }
        let exit = report(&task, ended, killed, oom);
        info!(kind = ?exit.kind, reason = %exit.reason, detail = %exit.message, "task ended");
        {
            // One step, so `running()` never lists a task whose end was already reported.
            let mut tasks = self.tasks.lock().expect("tasks lock");
            tasks.remove(&task.id);
            let _ = self.events.send(TaskEvent::Ended(exit));
        }
        self.changed.notify_waiters();
    }

    async fn kill(self: Arc<Self>, task_id: &str) -> Result<(), KillError> {
        let task = {
            let mut tasks = self.tasks.lock().expect("tasks lock");
            match tasks.get_mut(task_id) {
                Some(Slot::Running(t)) => t.clone(),
                Some(Slot::Launching { killed }) => {
                    // Its launch kills it as soon as it runs.
                    *killed = true;
                    return Ok(());
                }
                None => return Err(KillError::NotRunning(task_id.to_string())),
            }
        };
        if task.exited.load(Ordering::SeqCst) || task.kill_requested.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let span = info_span!("task", task = %task.id);
        span.in_scope(|| {
            info!(
                grace_ms = task.kill_grace.as_millis() as u64,
                "killing: SIGTERM now, SIGKILL after the grace period"
            )
        });
        let isolation = task.isolation.clone();
        let in_span = span.clone();
        let _ = tokio::task::spawn_blocking(move || {
            in_span.in_scope(|| isolation.signal_all(Signal::SIGTERM))
        })
        .await;
        tokio::spawn(escalate(task).instrument(span));
        Ok(())
    }
}

/// Now, in milliseconds since the epoch (0 before it): the agent's one clock for times it
/// reports or keeps.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// SIGKILLs everything of a task once its grace period has passed, unless it ended before.
async fn escalate(task: Arc<Task>) {
    let ended = task.ended.notified();
    tokio::pin!(ended);
    ended.as_mut().enable();
    if task.exited.load(Ordering::SeqCst) {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep(task.kill_grace) => {}
        _ = ended => return,
    }
    if task.exited.load(Ordering::SeqCst) {
        return;
    }
    info!("grace period over: SIGKILL");
    kill_all(&task).await;
}

/// SIGKILLs every process of the task, off the async workers.
async fn kill_all(task: &Task) {
    let isolation = task.isolation.clone();
    let span = tracing::Span::current();
    match tokio::task::spawn_blocking(move || span.in_scope(|| isolation.kill_all())).await {
        Ok(Err(e)) => warn!(error = %e, "cannot kill the task"),
        Err(e) => warn!(error = %e, "cannot kill the task"),
        Ok(Ok(_)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolator::IsolatorError;

    #[test]
    fn the_containerizer_and_its_errors_can_be_shared_across_threads() {
        fn shared<T: Send + Sync + 'static>() {}
        shared::<Containerizer>();
        shared::<LaunchError>();
        shared::<KillError>();
        shared::<IsolatorError>();
    }
}
