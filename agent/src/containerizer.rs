//! The containerizer: launches each task in its sandbox and isolation, monitors it until its
//! main process exits, cleans up everything the task left, and reports how it ended on a
//! channel.
//!
//! Lifecycle of one task: sandbox, isolation with limits, fork, (in the child) `setsid` and
//! join the isolation, exec; the [reaper](crate::reaper) reports the main process's end; the
//! monitor kills whatever is left in the isolation, reads the OOM-kill count, removes the
//! isolation and then reports. `kill` sends SIGTERM to every process of the task and SIGKILL
//! to all of them once the task's grace period has passed.
//!
//! With a supervisor program, the main process is a supervisor (see [`crate::supervisor`])
//! that outlives the agent and records how the command ended; each running task is
//! checkpointed. A restarted agent
//! [recovers](Containerizer::recover) them: it re-attaches to the tasks still running (their
//! end is seen through a pidfd, the status read from the supervisor's exit file) and reports
//! those that ended while it was down.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::checkpoint::{Checkpoints, TaskCheckpoint};
use crate::isolator::{validate_id, Isolation, Isolator, IsolatorError, Joiner, Limits, Usage};
pub use crate::process::TaskUser;
use crate::process::{spawn_isolated, Ended};
use crate::procfs;
use crate::reaper::{Reaper, Watch};
use crate::sandbox::{self, Sandbox};
use crate::supervisor::{read_exit_file, Plan};

/// Reason of a task whose command exited on its own (successfully or not).
pub const REASON_COMMAND_EXITED: &str = "REASON_COMMAND_EXITED";
/// Reason of a task killed for exceeding its memory limit.
pub const REASON_CONTAINER_LIMITATION_MEMORY: &str = "REASON_CONTAINER_LIMITATION_MEMORY";
/// Reason of a task killed on request.
pub const REASON_TASK_KILLED: &str = "REASON_TASK_KILLED";
/// Reason of a task whose end the agent could not learn because it was down.
pub const REASON_AGENT_RESTARTED: &str = "REASON_AGENT_RESTARTED";

/// Processes a task may have at once unless its spec says otherwise.
pub const DEFAULT_PIDS_MAX: u64 = 4096;
/// Time between SIGTERM and SIGKILL unless a spec says otherwise.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(3);
/// How long a launch waits for a supervised command to start.
const STARTED_TIMEOUT_MS: u16 = 10_000;
/// PATH of a task whose environment sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
}

impl LaunchSpec {
    /// A spec with one core, 128 MiB, [`DEFAULT_PIDS_MAX`], [`DEFAULT_KILL_GRACE`], no
    /// extra environment, run as the agent's user.
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
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            cpus_milli: self.cpus_milli,
            mem_bytes: self.mem_mb.saturating_mul(1024 * 1024),
            pids_max: self.pids_max,
        }
    }
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

/// Why a launch failed (nothing of the task is left running).
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The task id cannot name a sandbox and a cgroup.
    #[error("invalid task id {0:?}: it must be a non-empty name without '/', NUL or control characters, and not '.' or '..'")]
    InvalidTaskId(String),
    /// A task of that id is already running here.
    #[error("task {0} is already running on this agent")]
    Duplicate(String),
    /// The containerizer is shutting down.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// An argv command with no program.
    #[error("the command is empty")]
    EmptyCommand,
    /// An environment variable that cannot be passed.
    #[error("invalid environment variable name {0:?}")]
    InvalidEnv(String),
    /// The sandbox could not be made.
    #[error("cannot create the sandbox {}: {source}", path.display())]
    Sandbox {
        /// The sandbox directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The isolation could not be made (or its limits did not take).
    #[error(transparent)]
    Isolation(#[from] IsolatorError),
    /// Fork or exec failed (e.g. no such program).
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The task must run as another user, and the agent is not root.
    #[error("the agent runs as uid {agent} and cannot run tasks as uid {task}; run the agent as root, or the framework as uid {agent}")]
    User {
        /// The agent's uid.
        agent: u32,
        /// The task's.
        task: u32,
    },
    /// An internal task of the agent failed.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a kill was not done.
#[derive(Debug, thiserror::Error)]
pub enum KillError {
    /// No task of that id is running here (never launched, or already reported).
    #[error("task {0} is not running on this agent")]
    NotRunning(String),
}

/// Runs tasks; see the module docs.
pub struct Containerizer {
    inner: Arc<Inner>,
}

struct Inner {
    work_dir: PathBuf,
    /// Where running tasks are recorded for a restarted agent; `None` if unusable.
    checkpoints: Option<Arc<Checkpoints>>,
    /// The `mesofs` binary, run as each task's supervisor; `None`: the command is the main
    /// process, and tasks do not survive the agent.
    supervisor: Option<PathBuf>,
    isolator: Box<dyn Isolator>,
    tasks: Mutex<HashMap<String, Slot>>,
    exits: mpsc::UnboundedSender<TaskExit>,
    reaper: Arc<Reaper>,
    /// Notified whenever a task leaves `tasks`.
    changed: Notify,
    shutting_down: AtomicBool,
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
    /// The agent killed it for running out of memory (see [`enforce_memory_limit`]).
    memory_limited: AtomicBool,
    exited: AtomicBool,
    /// Notified when the main process has exited.
    ended: Notify,
    /// Taken back from an earlier run of the agent.
    recovered: bool,
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
    ) -> (Containerizer, mpsc::UnboundedReceiver<TaskExit>) {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            warn!(error = %e, "cannot become a child subreaper: orphans of tasks will not be reaped by the agent");
        }
        let (exits, rx) = mpsc::unbounded_channel();
        let checkpoints = match Checkpoints::open(&work_dir) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                warn!(error = %e, "cannot keep checkpoints: tasks will not survive a restart of the agent");
                None
            }
        };
        let inner = Arc::new(Inner {
            checkpoints,
            supervisor,
            work_dir,
            isolator,
            tasks: Mutex::new(HashMap::new()),
            exits,
            reaper: Reaper::start(),
            changed: Notify::new(),
            shutting_down: AtomicBool::new(false),
        });
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
        let me = self.clone();
        let spec2 = spec.clone();
        let span = tracing::Span::current();
        let spawned = tokio::task::spawn_blocking(move || span.in_scope(|| me.start(&spec2)))
            .await
            .map_err(|e| LaunchError::Internal(e.to_string()))
            .and_then(|r| r);
        let (sandbox, pid, isolation, watch) = match spawned {
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
        });
        let killed_meanwhile = matches!(
            self.tasks
                .lock()
                .expect("tasks lock")
                .insert(id.clone(), Slot::Running(task.clone())),
            Some(Slot::Launching { killed: true })
        );
        self.checkpoint(&spec, pid);
        let (launched_tx, launched_rx) = oneshot::channel();
        let token = watch.token;
        let ended = Box::pin(async move { watch.ended.await.unwrap_or(Ended::Unknown) });
        tokio::spawn(
            self.clone()
                .monitor(task, ended, Some(token), launched_rx)
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
    fn checkpoint(&self, spec: &LaunchSpec, pid: i32) {
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
    ) -> Result<(PathBuf, i32, Arc<dyn Isolation>, Watch), LaunchError> {
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
        let spawned = (|| {
            let supervision = match (&self.supervisor, &self.checkpoints) {
                (Some(bin), Some(c)) => {
                    let exit_file = c.exit_file(id);
                    let _ = std::fs::remove_file(&exit_file);
                    let mut argv = task_argv(spec);
                    // Found now, so that a missing program fails the launch, not the task.
                    argv[0] = resolve_program(&argv[0], &task_path(spec), sandbox.dir())
                        .map_err(spawn_err)?;
                    let plan = Plan {
                        exit_file,
                        joins: isolation.cgroup_dirs(),
                        user,
                        started_fd: true,
                        argv,
                    };
                    Some((bin.as_path(), plan))
                }
                _ => None,
            };
            // A supervised command joins and switches user by itself, from the supervisor's
            // fork.
            let (joiner, credentials, started) = match supervision {
                Some(_) => {
                    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                        .map_err(|e| spawn_err(e.into()))?;
                    (Joiner::none(), None, Some((r, w)))
                }
                None => (isolation.joiner()?, user.map(|u| u.credentials()), None),
            };
            let mut cmd = command(spec, &sandbox, supervision)?;
            let fd3 = started.as_ref().map(|(_, w)| w.as_raw_fd());
            let child = spawn_isolated(&mut cmd, joiner, credentials, fd3).map_err(spawn_err)?;
            if let Some((r, w)) = started {
                drop(w);
                wait_started(r);
            }
            Ok(child)
        })();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                if let Err(d) = isolation.destroy() {
                    warn!(error = %d, "cannot remove the isolation of a failed launch");
                }
                return Err(e);
            }
        };
        let pid = child.id() as i32;
        // The reaper, not `child`, waits for it; dropping a Child neither waits nor kills.
        drop(child);
        isolation.started(pid);
        let watch = self.reaper.watch(pid);
        Ok((sandbox.dir().to_path_buf(), pid, isolation, watch))
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
        let ended = ended.await;
        let killed = task.kill_requested.load(Ordering::SeqCst);
        task.exited.store(true, Ordering::SeqCst);
        task.ended.notify_waiters();
        debug!(?ended, "main process ended");
        // Never report an end before its launch was reported done.
        let _ = launched.await;
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
            let _ = self.exits.send(exit);
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

/// Waits until a supervised command runs (in its cgroups, as its user): the supervisor's
/// child holds the pipe's write end until its exec closes it (or it dies). Until then a kill's
/// SIGTERM would find nobody in the task's cgroups. Bounded, so that a stuck supervisor does
/// not hang the launch.
fn wait_started(pipe: OwnedFd) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_millis(STARTED_TIMEOUT_MS.into());
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let left_ms = u16::try_from(left.as_millis()).unwrap_or(STARTED_TIMEOUT_MS);
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(left_ms)) {
            Ok(0) => {
                warn!(
                    timeout_ms = STARTED_TIMEOUT_MS,
                    "the supervisor has not started the command yet; going on"
                );
                return;
            }
            Ok(_) => return,
            // A signal (another task's SIGCHLD) is not the start: going on now would let a
            // kill's SIGTERM find nobody in the task's cgroups.
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                warn!(error = %e, "cannot wait for the command to start");
                return;
            }
        }
    }
}

/// Kills the whole task once its isolation reports that it ran out of memory, where the
/// kernel itself kills only one process (cgroup v1), as it does on cgroup v2: a task that
/// lost a process to its memory limit is not left running crippled. Returns when the task
/// ends.
async fn enforce_memory_limit(task: Arc<Task>) {
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

/// The report of a task's end: a kill on request wins over an OOM kill, which wins over
/// the exit status.
fn report(task: &Task, ended: Ended, killed: bool, oom: bool) -> TaskExit {
    let (exit_code, signal) = match ended {
        Ended::Exited(c) => (Some(c), None),
        Ended::Signaled(s) => (None, Some(s)),
        Ended::Unknown => (None, None),
    };
    let (kind, reason, message) = if killed {
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

/// Whether `pid` still names the process that started at `start_ticks`, and it has not ended.
fn same_process(pid: i32, start_ticks: u64) -> bool {
    procfs::stat(pid).is_some_and(|s| s.start_ticks == start_ticks && s.state != 'Z')
}

/// The end of a supervisor this agent did not spawn (an earlier run did): waits until it is
/// gone, then reads how its command ended from the exit file it wrote.
async fn adopted_end(pid: i32, start_ticks: u64, exit_file: Option<PathBuf>) -> Ended {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    // Checked after opening: the pidfd then surely refers to the process we know.
    if raw >= 0 {
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if same_process(pid, start_ticks) {
            // SAFETY: the AsyncFd owns the descriptor, which stays open until it is dropped.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            };
            match registered {
                // Readable once the process has exited.
                Ok(afd) => {
                    let _ = afd.readable().await;
                }
                Err(_) => poll_until_gone(pid, start_ticks).await,
            }
        }
    } else {
        poll_until_gone(pid, start_ticks).await;
    }
    exit_file
        .as_deref()
        .and_then(read_exit_file)
        .unwrap_or(Ended::Unknown)
}

/// Without pidfds: looks every 100 ms.
async fn poll_until_gone(pid: i32, start_ticks: u64) {
    while same_process(pid, start_ticks) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn program(command: &Command) -> &str {
    match command {
        Command::Shell(_) => "/bin/sh",
        Command::Argv(argv) => argv.first().map(String::as_str).unwrap_or(""),
    }
}

/// The task's command line, program first.
fn task_argv(spec: &LaunchSpec) -> Vec<OsString> {
    match &spec.command {
        Command::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.into()],
        Command::Argv(argv) => argv.iter().map(OsString::from).collect(),
    }
}

/// The PATH the task's command is looked up in.
fn task_path(spec: &LaunchSpec) -> OsString {
    spec.env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or_else(|| DEFAULT_PATH.into(), |(_, v)| v.into())
}

/// The program `name` as exec would find it from `cwd`: itself when it holds a `/`, else the
/// first executable file of that name in `path`.
fn resolve_program(name: &OsStr, path: &OsStr, cwd: &Path) -> io::Result<OsString> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.as_bytes().contains(&b'/') {
        return if executable(&cwd.join(name)) {
            Ok(name.to_os_string())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no executable file there",
            ))
        };
    }
    std::env::split_paths(path)
        .map(|dir| cwd.join(dir).join(name))
        .find(|p| executable(p))
        .map(PathBuf::into_os_string)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not found in the task's PATH"))
}

/// The task's process: its command, or the supervisor that runs it; with the environment,
/// working directory and standard streams of the task.
fn command(
    spec: &LaunchSpec,
    sandbox: &Sandbox,
    supervision: Option<(&Path, Plan)>,
) -> Result<std::process::Command, LaunchError> {
    let mut cmd = match supervision {
        Some((bin, plan)) => {
            let mut c = std::process::Command::new(bin);
            c.args(plan.to_args());
            c
        }
        None => {
            let argv = task_argv(spec);
            let mut c = std::process::Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    let dir = sandbox.dir();
    let io_err = |source| LaunchError::Sandbox {
        path: dir.to_path_buf(),
        source,
    };
    // Nothing of the agent's own environment leaks into tasks.
    cmd.env_clear().env("PATH", DEFAULT_PATH).env("HOME", dir);
    // The name of the user it runs as, when the system knows one.
    let uid = spec
        .user
        .map_or_else(|| nix::unistd::geteuid().as_raw(), |u| u.uid);
    if let Ok(Some(user)) = nix::unistd::User::from_uid(uid.into()) {
        cmd.env("USER", &user.name).env("LOGNAME", &user.name);
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("MESOFS_TASK_ID", &spec.task_id)
        .env("MESOFS_SANDBOX", dir)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(sandbox.stdout().map_err(io_err)?)
        .stderr(sandbox.stderr().map_err(io_err)?);
    Ok(cmd)
}

/// One bare isolated run of `true`, for benchmarks: create an isolation (1 cpu, 64 MiB,
/// 64 pids), fork and exec `true` joined to it, wait for it, and destroy the isolation, with
/// none of the containerizer's bookkeeping. Returns how long the whole cycle took.
pub fn bare_launch_cycle(isolator: &dyn Isolator, id: &str) -> Result<Duration, LaunchError> {
    let start = Instant::now();
    let limits = Limits {
        cpus_milli: 1000,
        mem_bytes: 64 << 20,
        pids_max: 64,
    };
    let isolation = isolator.create(id, &limits)?;
    let spawn_err = |source| LaunchError::Spawn {
        program: "true".into(),
        source,
    };
    let ran = (|| {
        let mut cmd = std::process::Command::new("true");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child =
            spawn_isolated(&mut cmd, isolation.joiner()?, None, None).map_err(spawn_err)?;
        isolation.started(child.id() as i32);
        // Its own pgid is registered with no reaper, so this wait is the only one.
        child.wait().map_err(spawn_err)?;
        isolation.kill_all()?;
        Ok::<(), LaunchError>(())
    })();
    let destroyed = isolation.destroy();
    ran?;
    destroyed?;
    Ok(start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_containerizer_and_its_errors_can_be_shared_across_threads() {
        fn shared<T: Send + Sync + 'static>() {}
        shared::<Containerizer>();
        shared::<LaunchError>();
        shared::<KillError>();
        shared::<IsolatorError>();
    }

    #[test]
    fn programs_are_found_as_exec_would_find_them() {
        let cwd = Path::new("/");
        let path = OsStr::new("/nonexistent:/bin:/usr/bin");
        let sh = resolve_program(OsStr::new("sh"), path, cwd).expect("sh is in /bin");
        assert!(Path::new(&sh).is_absolute(), "{sh:?}");
        assert_eq!(
            resolve_program(OsStr::new("/bin/sh"), path, cwd).unwrap(),
            "/bin/sh"
        );
        assert!(resolve_program(OsStr::new("no-such-program"), path, cwd).is_err());
        assert!(resolve_program(OsStr::new("/etc/passwd"), path, cwd).is_err());
        assert!(resolve_program(OsStr::new("sh"), OsStr::new("/nonexistent"), cwd).is_err());
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
    fn a_requested_kill_is_reported_killed_even_after_an_oom() {
        let r = report(&task(32), Ended::Signaled(15), true, true);
        assert_eq!(r.kind, ExitKind::Killed);
        assert_eq!(r.reason, REASON_TASK_KILLED);
    }
}
