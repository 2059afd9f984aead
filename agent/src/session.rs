//! The agent's session with the leading master: registration, launches and kills from the
//! master, and status updates to it, each retried until the master acknowledges it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesofs_kernel::client::{master_rpc, MasterClient};
use mesofs_kernel::health::TaskHealth;
use mesofs_kernel::proto::{self, agent_message, master_message, AgentMessage};
use mesofs_kernel::spec::{TaskCommand, TaskSpec};
use mesofs_kernel::state::TaskState;
use tokio::sync::mpsc;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::acls::SandboxAcls;
use crate::checkpoint::{Checkpoints, UpdateCheckpoint};
use crate::containerizer::unix_ms as now_ms;
use crate::containerizer::{
    Command, Confinement, Containerizer, ExitKind, LaunchSpec, TaskEvent, TaskExit, TaskUser,
    REASON_TASK_HEALTH_CHECK_STATUS_UPDATED,
};

/// How often unacknowledged status updates are sent again.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// How long an agent whose registration was refused waits before asking again.
const REFUSED_RETRY: Duration = Duration::from_secs(5);

/// Who this agent is, as it registers.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Cluster-unique id, kept in the work directory.
    pub agent_id: String,
    /// Its hostname.
    pub hostname: String,
    /// Address of its Files service.
    pub address: String,
    /// Resources it offers, Mesos syntax.
    pub resources: String,
    /// Its attributes, `name:value;...`.
    pub attributes: String,
}

/// Status updates not yet acknowledged, in the order they were made, each checkpointed until
/// it is acknowledged.
#[derive(Default)]
struct Outbox {
    next: AtomicU64,
    pending: Mutex<BTreeMap<u64, proto::StatusUpdate>>,
    session: Mutex<Option<mpsc::UnboundedSender<AgentMessage>>>,
    instance: String,
    checkpoints: Option<Arc<Checkpoints>>,
}

impl Outbox {
    /// An outbox holding the updates an earlier run of the agent left unacknowledged.
    fn load(instance: String, checkpoints: Option<Arc<Checkpoints>>) -> Outbox {
        let saved = checkpoints
            .as_ref()
            .map(|c| c.updates())
            .unwrap_or_default();
        if !saved.is_empty() {
            info!(
                count = saved.len(),
                "status updates of an earlier run are still to be acknowledged"
            );
        }
        let next = saved.last().map_or(0, |(n, _)| n + 1);
        let pending = saved
            .into_iter()
            .map(|(n, u)| {
                let update = proto::StatusUpdate {
                    update_id: u.update_id,
                    task_id: u.task_id,
                    state: u.state,
                    reason: u.reason,
                    message: u.message,
                    time_ms: u.time_ms,
                    exit_code: u.exit_code,
                    signal: u.signal,
                    healthy: u.healthy,
                    health_seq: u.health_seq,
                };
                (n, update)
            })
            .collect();
        Outbox {
            next: AtomicU64::new(next),
            pending: Mutex::new(pending),
            session: Mutex::new(None),
            instance,
            checkpoints,
        }
    }

    fn push(&self, task_id: &str, state: TaskState, reason: &str, message: &str) {
        self.push_update(proto::StatusUpdate {
            task_id: task_id.to_string(),
            state: state.as_str().to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
            time_ms: now_ms(),
            ..proto::StatusUpdate::default()
        });
    }

    /// Pushes the report of a task's end.
    fn push_end(&self, exit: &TaskExit, state: TaskState) {
        self.push_update(proto::StatusUpdate {
            task_id: exit.task_id.clone(),
            state: state.as_str().to_string(),
            reason: exit.reason.clone(),
            message: exit.message.clone(),
            time_ms: now_ms(),
            exit_code: exit.exit_code,
            signal: exit.signal,
            ..proto::StatusUpdate::default()
        });
    }

    /// Pushes a change of a running task's health: a TASK_RUNNING update with `healthy`, the
    /// check's output as its message.
    fn push_health(&self, task_id: &str, health: &TaskHealth) {
        self.push_update(proto::StatusUpdate {
            task_id: task_id.to_string(),
            state: TaskState::Running.as_str().to_string(),
            reason: REASON_TASK_HEALTH_CHECK_STATUS_UPDATED.to_string(),
            message: health.output.clone(),
            time_ms: health.time_ms,
            healthy: Some(health.healthy),
            health_seq: health.seq,
            ..proto::StatusUpdate::default()
        });
    }

    /// Numbers, checkpoints and sends an update.
    fn push_update(&self, mut update: proto::StatusUpdate) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        update.update_id = format!("{}-{n}", self.instance);
        let task_id = update.task_id.as_str();
        info!(task = %task_id, state = %update.state, reason = %update.reason, message = %update.message, healthy = ?update.healthy, "status update");
        if let Some(c) = &self.checkpoints {
            let saved = UpdateCheckpoint {
                update_id: update.update_id.clone(),
                task_id: update.task_id.clone(),
                state: update.state.clone(),
                reason: update.reason.clone(),
                message: update.message.clone(),
                time_ms: update.time_ms,
                exit_code: update.exit_code,
                signal: update.signal,
                healthy: update.healthy,
                health_seq: update.health_seq,
            };
            if let Err(e) = c.save_update(n, &saved) {
                warn!(task = %task_id, error = %e, "cannot checkpoint a status update: it is lost if the agent restarts before it is acknowledged");
            }
        }
        self.pending
            .lock()
            .expect("outbox lock")
            .insert(n, update.clone());
        if let Some(tx) = self.session.lock().expect("session lock").as_ref() {
            let _ = tx.send(AgentMessage {
                msg: Some(agent_message::Msg::Status(update)),
            });
        }
    }

    fn ack(&self, update_id: &str) {
        let mut pending = self.pending.lock().expect("outbox lock");
        let acked: Vec<u64> = pending
            .iter()
            .filter(|(_, u)| u.update_id == update_id)
            .map(|(n, _)| *n)
            .collect();
        for n in acked {
            pending.remove(&n);
            if let Some(c) = &self.checkpoints {
                c.forget_update(n);
            }
        }
    }

    /// Tasks whose latest unacknowledged update is not a terminal state.
    fn unfinished(&self) -> Vec<String> {
        let mut latest: BTreeMap<String, bool> = BTreeMap::new();
        for u in self.pending.lock().expect("outbox lock").values() {
            let terminal = TaskState::parse(&u.state).is_some_and(|s| s.is_terminal());
            latest.insert(u.task_id.clone(), terminal);
        }
        latest
            .into_iter()
            .filter(|(_, terminal)| !terminal)
            .map(|(id, _)| id)
            .collect()
    }

    /// Tasks with an update still unacknowledged.
    fn tasks(&self) -> Vec<String> {
        self.pending
            .lock()
            .expect("outbox lock")
            .values()
            .map(|u| u.task_id.clone())
            .collect()
    }

    fn resend_all(&self, tx: &mpsc::UnboundedSender<AgentMessage>) {
        for u in self.pending.lock().expect("outbox lock").values() {
            let _ = tx.send(AgentMessage {
                msg: Some(agent_message::Msg::Status(u.clone())),
            });
        }
    }

    /// Number of updates still unacknowledged.
    fn len(&self) -> usize {
        self.pending.lock().expect("outbox lock").len()
    }
}

/// Where a task launched by this session is, so that kills and exits arriving out of step
/// with the launch are ordered. A task is removed once its exit is reported.
enum Phase {
    /// Its launch is under way; a kill that arrives now is carried out once it has started.
    Launching { kill_requested: bool },
    /// It runs and TASK_RUNNING was reported.
    Running,
    /// A kill was started and TASK_KILLING reported.
    Killing,
}

/// The agent's link to the masters.
pub struct Session {
    identity: Identity,
    masters: MasterClient,
    containerizer: Arc<Containerizer>,
    outbox: Arc<Outbox>,
    phases: Mutex<std::collections::HashMap<String, Phase>>,
    /// The cluster's ACLs, as each registration brings them.
    acls: Arc<SandboxAcls>,
    /// How its tasks are confined beyond their cgroups.
    confinement: Confinement,
}

impl Session {
    /// A session for this agent; `exits` is the containerizer's exit channel, `recovered` the
    /// tasks the containerizer found running from an earlier run of the agent; `acls` takes
    /// the ACLs each registration brings; `confinement` says how the agent confines each task
    /// beyond its cgroups.
    pub fn start(
        identity: Identity,
        masters: MasterClient,
        containerizer: Arc<Containerizer>,
        mut events: mpsc::UnboundedReceiver<TaskEvent>,
        recovered: Vec<String>,
        acls: Arc<SandboxAcls>,
        confinement: Confinement,
    ) -> Arc<Session> {
        let outbox = Arc::new(Outbox::load(
            format!("{}-{}", identity.agent_id, now_ms()),
            containerizer.checkpoints(),
        ));
        // A task whose latest saved update is not terminal and that was not found running
        // was being launched when the earlier run died: nothing will ever report its end.
        for task_id in outbox.unfinished() {
            if !recovered.contains(&task_id) {
                outbox.push(
                    &task_id,
                    TaskState::Lost,
                    crate::containerizer::REASON_AGENT_RESTARTED,
                    "the agent restarted while launching the task",
                );
            }
        }
        let phases = recovered
            .into_iter()
            .map(|id| (id, Phase::Running))
            .collect();
        let session = Arc::new(Session {
            identity,
            masters,
            containerizer,
            outbox,
            phases: Mutex::new(phases),
            acls,
            confinement,
        });
        let s = session.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let exit = match event {
                    TaskEvent::Ended(exit) => exit,
                    TaskEvent::Health { task_id, health } => {
                        s.health_changed(&task_id, &health);
                        continue;
                    }
                };
                let state = match exit.kind {
                    ExitKind::Finished => TaskState::Finished,
                    ExitKind::Failed => TaskState::Failed,
                    ExitKind::Killed => TaskState::Killed,
                    ExitKind::Lost => TaskState::Lost,
                };
                let mut phases = s.phases.lock().expect("phases lock");
                // The launch task may not have reported TASK_RUNNING yet: report it first,
                // so updates reach the master in the order they happened.
                if let Some(Phase::Launching { .. }) = phases.get(&exit.task_id) {
                    s.outbox.push(&exit.task_id, TaskState::Running, "", "");
                }
                phases.remove(&exit.task_id);
                s.outbox.push_end(&exit, state);
                // Its end is now kept as an update: the task's own checkpoint can go.
                s.containerizer.forget(&exit.task_id);
            }
        });
        let s = session.clone();
        tokio::spawn(async move { s.run().await });
        let s = session.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETRY_INTERVAL).await;
                let tx = s.outbox.session.lock().expect("session lock").clone();
                if let Some(tx) = tx {
                    s.outbox.resend_all(&tx);
                }
            }
        });
        session
    }

    /// Waits until every task's end has been reported and every status update acknowledged,
    /// or the timeout passes.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        // A task stays in `phases` until its exit has gone into the outbox; both are looked at
        // under the phases lock, which the exit reader holds from one to the other, so an exit
        // moving between them is never missed.
        while {
            let phases = self.phases.lock().expect("phases lock");
            !phases.is_empty() || self.outbox.len() > 0
        } {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Reports a running task's health change.
    fn health_changed(self: &Arc<Self>, task_id: &str, health: &TaskHealth) {
        let mut phases = self.phases.lock().expect("phases lock");
        // The launch task may not have reported TASK_RUNNING yet: report it first, and leave
        // the launch nothing to report (but a kill that came meanwhile to carry out).
        if let Some(Phase::Launching { kill_requested }) = phases.get(task_id) {
            let kill = *kill_requested;
            self.outbox.push(task_id, TaskState::Running, "", "");
            phases.insert(task_id.to_string(), Phase::Running);
            if kill {
                let s = self.clone();
                let id = task_id.to_string();
                tokio::spawn(async move { s.kill(&id).await });
            }
        }
        self.outbox.push_health(task_id, health);
    }

    async fn run(self: Arc<Self>) {
        const FIRST: Duration = Duration::from_millis(20);
        // Short enough that agents find a new leader soon after the election.
        const MAX_BACKOFF: Duration = Duration::from_millis(250);
        let mut backoff = FIRST;
        loop {
            let result = self.clone().connect_once().await;
            // A session that was registered ended: its leader is likely gone, and the next
            // one must hear from this agent soon.
            let registered = self
                .outbox
                .session
                .lock()
                .expect("session lock")
                .take()
                .is_some();
            match result {
                Ok(()) => info!("master session ended; finding the leader"),
                Err(e) if registered => {
                    info!(error = %e, "master session broke; finding the leader")
                }
                Err(e) => debug!(error = %e, "cannot reach the leading master; retrying"),
            }
            if registered {
                self.masters.forget_leader();
                backoff = FIRST;
            }
            // Jittered, so that many agents do not ask the masters in step.
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            tokio::time::sleep(backoff.mul_f64(0.5 + f64::from(nanos % 1000) / 2000.0)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn connect_once(self: Arc<Self>) -> Result<(), String> {
        let ch = self
            .masters
            .leader_channel()
            .await
            .map_err(|(_, why)| why)?;
        let (tx, rx) = mpsc::unbounded_channel::<AgentMessage>();
        let id = &self.identity;
        tx.send(AgentMessage {
            msg: Some(agent_message::Msg::Register(proto::RegisterAgent {
                agent_id: id.agent_id.clone(),
                hostname: id.hostname.clone(),
                address: id.address.clone(),
                resources: id.resources.clone(),
                running: self.running(),
                attributes: id.attributes.clone(),
            })),
        })
        .map_err(|e| e.to_string())?;
        let outbound = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let mut inbound = match master_rpc(ch).agent_session(outbound).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                if matches!(
                    s.code(),
                    tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                ) {
                    // Not something a retry mends: the operator must give this agent another
                    // certificate. Say so each time, at a pace that does not flood the log.
                    error!(reason = %s.message(), "the master refused this agent's registration");
                    tokio::time::sleep(REFUSED_RETRY).await;
                }
                if s.code() == tonic::Code::FailedPrecondition {
                    // A master that does not lead names the one that does.
                    self.masters.follow_refusal(&s);
                } else {
                    self.masters.forget_leader();
                }
                return Err(s.message().to_string());
            }
        };
        while let Some(msg) = inbound
            .message()
            .await
            .map_err(|s| s.message().to_string())?
        {
            match msg.msg {
                Some(master_message::Msg::Registered(r)) => {
                    info!(agent = %id.agent_id, heartbeat_ms = r.heartbeat_interval_ms, "registered with the master");
                    self.acls.update(&r.acls_json);
                    self.outbox.resend_all(&tx);
                    *self.outbox.session.lock().expect("session lock") = Some(tx.clone());
                    if r.heartbeat_interval_ms > 0 {
                        tokio::spawn(heartbeat(
                            self.outbox.clone(),
                            tx.clone(),
                            Duration::from_millis(r.heartbeat_interval_ms),
                        ));
                    }
                }
                Some(master_message::Msg::Launch(l)) => {
                    // A new leader sends again the launches it cannot tell were received:
                    // a task this agent already has is not launched twice.
                    if self.running().contains(&l.task_id) {
                        info!(task = %l.task_id, "a launch of a task this agent already has; ignored");
                        continue;
                    }
                    // Known from now on, before the launch itself runs: a registration
                    // made meanwhile reports it.
                    self.phases.lock().expect("phases lock").insert(
                        l.task_id.clone(),
                        Phase::Launching {
                            kill_requested: false,
                        },
                    );
                    let me = self.clone();
                    tokio::spawn(async move { me.launch(l).await });
                }
                Some(master_message::Msg::Kill(k)) => {
                    let me = self.clone();
                    tokio::spawn(async move { me.kill(&k.task_id).await });
                }
                Some(master_message::Msg::Ack(a)) => self.outbox.ack(&a.update_id),
                None => {}
            }
        }
        Ok(())
    }

    /// Ids of the tasks this agent runs or is starting, or whose updates are not yet
    /// acknowledged, as it reports them when registering: the master must not take them for
    /// lost before the updates arrive.
    fn running(&self) -> Vec<String> {
        let mut ids = self.containerizer.running();
        ids.extend(self.phases.lock().expect("phases lock").keys().cloned());
        ids.extend(self.outbox.tasks());
        ids.sort();
        ids.dedup();
        ids
    }

    async fn launch(&self, l: proto::LaunchTask) {
        let span = info_span!("task", task = %l.task_id, framework = %l.framework_id);
        async {
            let spec: TaskSpec = match serde_json::from_str(&l.spec_json) {
                Ok(s) => s,
                Err(e) => {
                    self.outbox.push(
                        &l.task_id,
                        TaskState::Failed,
                        "REASON_TASK_INVALID",
                        &format!("the agent could not read the task spec: {e}"),
                    );
                    // Only now: a flush sees the task in `phases` or its end in the outbox.
                    self.phases.lock().expect("phases lock").remove(&l.task_id);
                    return;
                }
            };
            self.outbox.push(&l.task_id, TaskState::Starting, "", "");
            let user = match task_user(&l) {
                Ok(u) => u,
                Err(message) => {
                    warn!(user = %l.user, "{message}");
                    self.outbox.push(
                        &l.task_id,
                        TaskState::Failed,
                        "REASON_CONTAINER_LAUNCH_FAILED",
                        &message,
                    );
                    // Only now: a flush sees the task in `phases` or its end in the outbox.
                    self.phases.lock().expect("phases lock").remove(&l.task_id);
                    return;
                }
            };
            let mut env: Vec<(String, String)> = spec.env.clone().into_iter().collect();
            for (i, p) in l.ports.iter().enumerate() {
                env.push((format!("PORT{i}"), p.to_string()));
            }
            if !l.ports.is_empty() {
                let all: Vec<String> = l.ports.iter().map(|p| p.to_string()).collect();
                env.push(("PORTS".into(), all.join(",")));
            }
            env.push(("MESOFS_FRAMEWORK_ID".into(), l.framework_id.clone()));
            // As Mesos's agents set them, for programs written for Mesos.
            env.push(("MESOS_FRAMEWORK_ID".into(), l.framework_id.clone()));
            env.push(("MESOS_AGENT_ID".into(), self.identity.agent_id.clone()));
            env.push(("HOST".into(), self.identity.hostname.clone()));
            let launch = LaunchSpec {
                task_id: l.task_id.clone(),
                command: match spec.command {
                    TaskCommand::Shell(s) => Command::Shell(s),
                    TaskCommand::Argv(a) => Command::Argv(a),
                },
                env,
                cpus_milli: spec.cpus.milli().max(1) as u64,
                mem_mb: (spec.mem.milli() as u64).div_ceil(1000).max(1),
                pids_max: 4096,
                kill_grace: Duration::from_millis(spec.grace_ms),
                timeout: spec.timeout_ms.map(Duration::from_millis),
                // A task with no disk (the default) is not limited, as in Mesos.
                disk_limit_mb: (self.confinement.disk && !spec.disk.is_zero())
                    .then(|| (spec.disk.milli() as u64).div_ceil(1000)),
                namespaces: self.confinement.namespaces,
                allowed_ports: self.confinement.ports.then(|| {
                    l.ports
                        .iter()
                        .filter_map(|&p| u16::try_from(p).ok())
                        .collect()
                }),
                user: Some(user),
                health: spec.health.clone(),
            };
            let cancelled = matches!(
                self.phases.lock().expect("phases lock").get(&l.task_id),
                Some(Phase::Launching {
                    kill_requested: true
                })
            );
            if cancelled {
                self.outbox.push(
                    &l.task_id,
                    TaskState::Killed,
                    "REASON_TASK_KILLED",
                    "killed before it started",
                );
                // Only now: a flush sees the task in `phases` or its end in the outbox.
                self.phases.lock().expect("phases lock").remove(&l.task_id);
                return;
            }
            match self.containerizer.launch(launch).await {
                Ok(_sandbox) => {
                    let kill_now = {
                        let mut phases = self.phases.lock().expect("phases lock");
                        match phases.get(&l.task_id) {
                            Some(Phase::Launching { kill_requested }) => {
                                let k = *kill_requested;
                                self.outbox.push(&l.task_id, TaskState::Running, "", "");
                                phases.insert(l.task_id.clone(), Phase::Running);
                                k
                            }
                            // Already ended: the exit reader reported RUNNING and the end.
                            _ => false,
                        }
                    };
                    if kill_now {
                        self.kill(&l.task_id).await;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "launch failed");
                    self.outbox.push(
                        &l.task_id,
                        TaskState::Failed,
                        "REASON_CONTAINER_LAUNCH_FAILED",
                        &e.to_string(),
                    );
                    // Only now: a flush sees the task in `phases` or its end in the outbox.
                    self.phases.lock().expect("phases lock").remove(&l.task_id);
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn kill(&self, task_id: &str) {
        {
            let mut phases = self.phases.lock().expect("phases lock");
            match phases.get_mut(task_id) {
                Some(Phase::Launching { kill_requested }) => {
                    *kill_requested = true;
                    return;
                }
                // Under the lock that the report of its end takes, so TASK_KILLING cannot
                // follow it.
                Some(phase @ Phase::Running) => {
                    *phase = Phase::Killing;
                    self.outbox.push(task_id, TaskState::Killing, "", "");
                }
                _ => {}
            }
        }
        if !self.containerizer.running().iter().any(|t| t == task_id) {
            // Never started here, or already ended (its terminal update is on its way).
            self.outbox.push(
                task_id,
                TaskState::Killed,
                "REASON_TASK_KILLED",
                "the task was not running on this agent",
            );
            return;
        }
        if let Err(e) = self.containerizer.kill(task_id).await {
            warn!(task = %task_id, error = %e, "kill failed");
        }
    }

    /// The sandbox directory of a task, running or not.
    pub fn sandbox_dir(work_dir: &std::path::Path, task_id: &str) -> PathBuf {
        work_dir.join("sandboxes").join(task_id)
    }
}

/// Who a task runs as: its framework owner's user name as this agent resolves it (its uid and
/// primary gid here), never a uid from the machine where the framework was made; the uid and
/// gid of the launch only for frameworks from before user names.
fn task_user(l: &proto::LaunchTask) -> Result<TaskUser, String> {
    if l.user.is_empty() {
        return Ok(TaskUser {
            uid: l.uid,
            gid: l.gid,
        });
    }
    match nix::unistd::User::from_name(&l.user) {
        Ok(Some(u)) => Ok(TaskUser {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        }),
        Ok(None) => Err(format!(
            "user {:?} does not exist on this agent: create it here, or run the framework as a user every agent has",
            l.user
        )),
        Err(e) => Err(format!("cannot look up user {:?} on this agent: {e}", l.user)),
    }
}

/// Sends a heartbeat every interval for as long as `tx` is the current session's.
async fn heartbeat(
    outbox: Arc<Outbox>,
    tx: mpsc::UnboundedSender<AgentMessage>,
    interval: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        let current = outbox
            .session
            .lock()
            .expect("session lock")
            .as_ref()
            .is_some_and(|s| s.same_channel(&tx));
        if !current {
            return;
        }
        let beat = AgentMessage {
            msg: Some(agent_message::Msg::Heartbeat(proto::Heartbeat {})),
        };
        if tx.send(beat).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(c: &Checkpoints, n: u64, task: &str, state: &str) {
        let u = UpdateCheckpoint {
            update_id: format!("old-{n}"),
            task_id: task.into(),
            state: state.into(),
            reason: String::new(),
            message: String::new(),
            time_ms: n,
            exit_code: None,
            signal: None,
            healthy: None,
            health_seq: 0,
        };
        c.save_update(n, &u).unwrap();
    }

    #[test]
    fn an_outbox_takes_back_saved_updates_in_order_and_numbers_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(Checkpoints::open(dir.path()).unwrap());
        saved(&c, 4, "f.done", "TASK_FINISHED");
        saved(&c, 1, "f.done", "TASK_RUNNING");
        saved(&c, 2, "f.launching", "TASK_STARTING");
        let outbox = Outbox::load("new".into(), Some(c.clone()));
        let states: Vec<String> = outbox
            .pending
            .lock()
            .unwrap()
            .values()
            .map(|u| u.state.clone())
            .collect();
        assert_eq!(states, ["TASK_RUNNING", "TASK_STARTING", "TASK_FINISHED"]);
        assert_eq!(outbox.unfinished(), vec!["f.launching".to_string()]);

        outbox.push("f.launching", TaskState::Lost, "R", "m");
        assert!(outbox.unfinished().is_empty());
        assert_eq!(c.updates().last().unwrap().0, 5);
        outbox.ack("old-1");
        assert_eq!(c.updates().len(), 3);
    }
}
