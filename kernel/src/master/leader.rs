//! The leader's runtime: framework writes, offers and the allocator, and agent sessions.
//!
//! Everything here lives only on the leader and is rebuilt after a failover: offers, refuse
//! filters, agent connections. Durable effects go through Raft first; messages to agents are
//! sent only after the command that justifies them is committed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use super::hub::Hub;
use crate::proto::{self, master_message, write_request::Op, MasterMessage, WriteReply};
use crate::raft::{Raft, Response};
use crate::resources::{Resources, Scalar};
use crate::spec::parse_specs;
use crate::state::{task_id, AgentState, Command, FrameworkInfo, NewTask, TaskState, Transition};
use crate::watch::Offer;

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Settings of the leader's runtime.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// How long an offer stays outstanding before it is rescinded.
    pub offer_timeout: Duration,
    /// How long a declined agent is not offered to that framework again, by default.
    pub default_refuse: Duration,
    /// How long an agent's session may stay silent before it is closed; agents heartbeat at
    /// a third of it.
    pub agent_timeout: Duration,
    /// How long a disconnected agent has to register again before its tasks are TASK_LOST.
    pub agent_reregister_timeout: Duration,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            offer_timeout: Duration::from_secs(30),
            default_refuse: Duration::from_secs(5),
            agent_timeout: Duration::from_secs(15),
            agent_reregister_timeout: Duration::from_secs(60),
        }
    }
}

/// A refused write: the errno for the writer and why.
#[derive(Debug)]
struct Refusal {
    errno: i32,
    message: String,
}

fn refuse(errno: i32, message: impl Into<String>) -> Refusal {
    Refusal {
        errno,
        message: message.into(),
    }
}

struct Session {
    generation: u64,
    tx: mpsc::UnboundedSender<MasterMessage>,
}

#[derive(Default)]
struct Allocation {
    /// Round-robin position: the id of the framework offered to last.
    last_framework: Option<String>,
    /// (framework id, agent id) pairs not to offer until the instant passes.
    filters: HashMap<(String, String), Instant>,
    /// Resources taken from an offer whose launch is not committed yet, per agent.
    pending: HashMap<String, Resources>,
    offer_seq: u64,
}

/// The leader's runtime.
pub struct Leader {
    raft: Raft,
    hub: Arc<Hub>,
    config: LeaderConfig,
    epoch: u64,
    sessions: Mutex<HashMap<String, Session>>,
    session_seq: AtomicU64,
    alloc: Mutex<Allocation>,
    me: Weak<Leader>,
}

impl Leader {
    /// A runtime for a leadership that began at log index `epoch`, which prefixes its offer ids.
    pub fn new(raft: Raft, hub: Arc<Hub>, config: LeaderConfig, epoch: u64) -> Arc<Leader> {
        Arc::new_cyclic(|me| Leader {
            raft,
            hub,
            config,
            epoch,
            sessions: Mutex::new(HashMap::new()),
            session_seq: AtomicU64::new(0),
            alloc: Mutex::new(Allocation::default()),
            me: me.clone(),
        })
    }

    /// The hub this leader publishes to.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    async fn propose(&self, cmd: Command) -> Result<Response, Refusal> {
        match self.raft.client_write(cmd).await {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(refuse(
                libc::EAGAIN,
                format!(
                    "this master is not the leader any more (leader: {:?}); retry",
                    f.leader_node.map(|n| n.addr)
                ),
            )),
            Err(e) => Err(refuse(libc::EIO, format!("could not commit: {e}"))),
        }
    }

    // ---- framework writes ------------------------------------------------------------------

    /// Handles one framework write and answers with an errno and the sequence to wait for.
    pub async fn write(self: &Arc<Self>, uid: u32, gid: u32, op: Op) -> WriteReply {
        let framework = match &op {
            Op::RegisterFramework(r) => r.name.clone(),
            Op::TeardownFramework(r) => r.name.clone(),
            Op::Launch(r) => r.framework.clone(),
            Op::Decline(r) => r.framework.clone(),
            Op::Kill(r) => r.framework.clone(),
        };
        let registering = matches!(op, Op::RegisterFramework(_));
        let span = info_span!("write", framework = %framework, uid);
        let result = async {
            match op {
                Op::RegisterFramework(r) => self.register_framework(&r.name, uid, gid).await,
                Op::TeardownFramework(r) => self.teardown_framework(&r.name, uid).await,
                Op::Launch(r) => self.launch(&r.framework, uid, &r.offer_id, &r.text).await,
                Op::Decline(r) => self.decline(&r.framework, uid, &r.offer_id, &r.text).await,
                Op::Kill(r) => self.kill(&r.framework, uid, &r.task).await,
            }
        }
        .instrument(span)
        .await;
        match result {
            Ok(()) => WriteReply {
                errno: 0,
                error: String::new(),
                seq: self.hub.seq(),
            },
            Err(r) => {
                info!(framework = %framework, errno = r.errno, reason = %r.message, "write refused");
                // A refused mkdir names a framework that is not the writer's.
                let fw = if registering {
                    None
                } else {
                    self.hub
                        .read(|s, _| s.framework_by_name(&framework).map(|f| f.id.clone()))
                };
                let seq = match fw {
                    Some(id) => self.hub.refused(&id, &r.message),
                    None => self.hub.seq(),
                };
                WriteReply {
                    errno: r.errno,
                    error: r.message,
                    seq,
                }
            }
        }
    }

    fn owned_framework(&self, name: &str, uid: u32) -> Result<FrameworkInfo, Refusal> {
        let fw = self
            .hub
            .read(|s, _| s.framework_by_name(name).cloned())
            .ok_or_else(|| refuse(libc::ENOENT, format!("no framework named {name:?}")))?;
        if uid != 0 && uid != fw.uid {
            return Err(refuse(
                libc::EACCES,
                format!(
                    "framework {name:?} belongs to uid {}; uid {uid} may not change it",
                    fw.uid
                ),
            ));
        }
        Ok(fw)
    }

    async fn register_framework(&self, name: &str, uid: u32, gid: u32) -> Result<(), Refusal> {
        crate::spec::validate_name(name).map_err(|e| {
            refuse(
                libc::EINVAL,
                format!("invalid framework name {name:?}: {e}"),
            )
        })?;
        let r = self
            .propose(Command::RegisterFramework {
                name: name.to_string(),
                uid,
                gid,
                time_ms: now_ms(),
            })
            .await?;
        if let Some(e) = r.applied.error {
            return Err(refuse(libc::EEXIST, e.to_string()));
        }
        info!(framework = %name, id = ?r.applied.framework_id, "framework registered");
        let agents = self
            .hub
            .read(|s, _| s.agents.keys().cloned().collect::<Vec<_>>());
        self.allocate(agents);
        Ok(())
    }

    async fn teardown_framework(&self, name: &str, uid: u32) -> Result<(), Refusal> {
        let fw = self.owned_framework(name, uid)?;
        let rescinded =
            self.hub
                .remove_offers_where(|o| o.framework_id == fw.id, "framework torn down", false);
        let r = self
            .propose(Command::TeardownFramework {
                framework_id: fw.id.clone(),
                time_ms: now_ms(),
            })
            .await?;
        if let Some(e) = r.applied.error {
            return Err(refuse(libc::ENOENT, e.to_string()));
        }
        info!(framework = %fw.id, tasks = r.applied.to_kill.len(), "framework torn down");
        self.send_kills(&r.applied.to_kill);
        self.allocate(rescinded.into_iter().map(|o| o.agent_id));
        Ok(())
    }

    async fn launch(
        &self,
        framework: &str,
        uid: u32,
        offer_id: &str,
        text: &str,
    ) -> Result<(), Refusal> {
        let fw = self.owned_framework(framework, uid)?;
        let specs = parse_specs(text).map_err(|e| refuse(libc::EINVAL, e.to_string()))?;
        let gone = || {
            refuse(
                libc::ENOENT,
                format!(
                    "offer {offer_id} is gone (used up, declined, rescinded or expired); read offers/next for a current one"
                ),
            )
        };
        let taken: Vec<String> = self.hub.read(|s, _| {
            specs
                .iter()
                .filter(|spec| s.tasks.contains_key(&task_id(&fw.id, &spec.name)))
                .map(|spec| spec.name.clone())
                .collect()
        });
        if let Some(name) = taken.first() {
            return Err(refuse(
                libc::EEXIST,
                format!("task {name:?} already exists in framework {framework:?}; task names are unique"),
            ));
        }
        let need = specs
            .iter()
            .fold(Resources::default(), |acc, s| acc.add(&s.resources()));
        let ports_needed: usize = specs.iter().map(|s| s.ports as usize).sum();

        // Check and take from the offer under the allocation lock, so concurrent launches on
        // one offer cannot both take the same resources. What the launch does not use stays
        // offered to this framework under the same id; the used part is held as pending so
        // the allocator cannot offer it again while the launch commits.
        let (offer, tasks, used) = {
            let mut alloc = self.alloc.lock().expect("alloc lock");
            let offer = self
                .hub
                .read(|_, offers| offers.get(offer_id).cloned())
                .filter(|o| o.framework_id == fw.id)
                .ok_or_else(gone)?;
            let offered_ports = offer.resources.take_ports(ports_needed);
            if !offer.resources.contains(&need) || offered_ports.is_none() {
                let mut asked = need.to_string();
                if ports_needed > 0 {
                    asked.push_str(&format!(" and {ports_needed} ports"));
                }
                return Err(refuse(
                    libc::ENOSPC,
                    format!(
                        "the tasks need {asked} but offer {offer_id} has {}; launch fewer or smaller tasks",
                        offer.resources
                    ),
                ));
            }
            let mut free_ports = offered_ports.unwrap_or_default().into_iter();
            let tasks: Vec<NewTask> = specs
                .into_iter()
                .map(|spec| {
                    let ports: Vec<u64> = free_ports.by_ref().take(spec.ports as usize).collect();
                    let mut resources = spec.resources();
                    if !ports.is_empty() {
                        resources = resources.add(&ports_resource(&ports));
                    }
                    NewTask {
                        spec,
                        resources,
                        ports,
                    }
                })
                .collect();
            let used = tasks
                .iter()
                .fold(Resources::default(), |acc, t| acc.add(&t.resources));
            let left = offer.resources.checked_sub(&used).unwrap_or_default();
            if left.cpus().is_zero() || left.mem().is_zero() {
                self.hub.remove_offer(offer_id, "used up", false);
            } else {
                self.hub.update_offer(offer_id, left);
            }
            let p = alloc.pending.entry(offer.agent_id.clone()).or_default();
            *p = p.add(&used);
            (offer, tasks, used)
        };
        let result = self
            .propose(Command::LaunchTasks {
                framework_id: fw.id.clone(),
                agent_id: offer.agent_id.clone(),
                tasks: tasks.clone(),
                time_ms: now_ms(),
            })
            .await;
        {
            let mut alloc = self.alloc.lock().expect("alloc lock");
            if let Some(p) = alloc.pending.get_mut(&offer.agent_id) {
                *p = p.checked_sub(&used).unwrap_or_default();
            }
        }
        let result = result.and_then(|r| match r.applied.error {
            Some(e) => Err(refuse(libc::EEXIST, e.to_string())),
            None => Ok(()),
        });
        if result.is_ok() {
            for t in &tasks {
                let id = task_id(&fw.id, &t.spec.name);
                info!(task = %id, agent = %offer.agent_id, "task launched");
                self.send(
                    &offer.agent_id,
                    master_message::Msg::Launch(proto::LaunchTask {
                        task_id: id,
                        framework_id: fw.id.clone(),
                        spec_json: serde_json::to_string(&t.spec).expect("spec serializes"),
                        ports: t.ports.clone(),
                        uid: fw.uid,
                        gid: fw.gid,
                    }),
                );
            }
        }
        // If the offer was used up, the agent's free resources are offered anew.
        self.allocate([offer.agent_id.clone()]);
        result
    }

    async fn decline(
        &self,
        framework: &str,
        uid: u32,
        offer_id: &str,
        text: &str,
    ) -> Result<(), Refusal> {
        let fw = self.owned_framework(framework, uid)?;
        let text = text.trim();
        let refuse_for = if text.is_empty() {
            self.config.default_refuse
        } else {
            crate::spec::parse_duration(text).map_err(|e| {
                refuse(
                    libc::EINVAL,
                    format!("invalid refuse duration {text:?}: {e} (write e.g. 30s, 500ms, or nothing for the default)"),
                )
            })?
        };
        let offer = self
            .hub
            .read(|_, offers| offers.get(offer_id).cloned())
            .filter(|o| o.framework_id == fw.id)
            .ok_or_else(|| refuse(libc::ENOENT, format!("offer {offer_id} is gone")))?;
        self.alloc.lock().expect("alloc lock").filters.insert(
            (fw.id.clone(), offer.agent_id.clone()),
            Instant::now() + refuse_for,
        );
        self.hub
            .remove_offer(offer_id, "declined", false)
            .ok_or_else(|| refuse(libc::ENOENT, format!("offer {offer_id} is gone")))?;
        debug!(offer = %offer_id, ?refuse_for, "offer declined");
        self.allocate([offer.agent_id.clone()]);
        if let Some(me) = self.me() {
            let agent = offer.agent_id.clone();
            tokio::spawn(async move {
                tokio::time::sleep(refuse_for).await;
                me.allocate([agent]);
            });
        }
        Ok(())
    }

    async fn kill(&self, framework: &str, uid: u32, task: &str) -> Result<(), Refusal> {
        let fw = self.owned_framework(framework, uid)?;
        let id = task_id(&fw.id, task);
        let state = self
            .hub
            .read(|s, _| s.tasks.get(&id).map(|t| t.state()))
            .ok_or_else(|| refuse(libc::ENOENT, format!("no task {task:?} in {framework:?}")))?;
        if state.is_terminal() {
            return Err(refuse(
                libc::ESRCH,
                format!("task {task:?} has already ended ({})", state.as_str()),
            ));
        }
        let r = self
            .propose(Command::KillTask {
                task_id: id.clone(),
                time_ms: now_ms(),
            })
            .await?;
        if let Some(e) = r.applied.error {
            return Err(refuse(libc::ESRCH, e.to_string()));
        }
        info!(task = %id, "kill requested");
        self.send_kills(&r.applied.to_kill);
        Ok(())
    }

    fn send_kills(&self, task_ids: &[String]) {
        let targets: Vec<(String, String)> = self.hub.read(|s, _| {
            task_ids
                .iter()
                .filter_map(|id| s.tasks.get(id).map(|t| (t.agent_id.clone(), id.clone())))
                .collect()
        });
        for (agent, id) in targets {
            self.send(
                &agent,
                master_message::Msg::Kill(proto::KillTask { task_id: id }),
            );
        }
    }

    fn send(&self, agent_id: &str, msg: master_message::Msg) {
        let sessions = self.sessions.lock().expect("sessions lock");
        match sessions.get(agent_id) {
            Some(s) => {
                let _ = s.tx.send(MasterMessage { msg: Some(msg) });
            }
            // The agent re-registers with what it runs; the state then settles the task.
            None => {
                warn!(agent = %agent_id, "agent not connected; message dropped until it re-registers")
            }
        }
    }

    fn me(&self) -> Option<Arc<Leader>> {
        self.me.upgrade()
    }

    // ---- agent sessions --------------------------------------------------------------------

    /// Runs one agent's session: registration, then status updates until the stream ends.
    pub async fn agent_session(
        self: Arc<Self>,
        mut inbound: mpsc::Receiver<proto::AgentMessage>,
        tx: mpsc::UnboundedSender<MasterMessage>,
    ) {
        let Some(proto::AgentMessage {
            msg: Some(proto::agent_message::Msg::Register(reg)),
        }) = inbound.recv().await
        else {
            warn!("agent session did not start with a registration; closing it");
            return;
        };
        let agent_id = reg.agent_id.clone();
        let span = info_span!("agent", agent = %agent_id);
        async {
            let resources = match Resources::parse(&reg.resources) {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "agent registered with invalid resources; closing its session");
                    return;
                }
            };
            let generation = self.session_seq.fetch_add(1, Ordering::Relaxed);
            let cmd = Command::RegisterAgent {
                agent: crate::state::AgentInfo {
                    id: agent_id.clone(),
                    hostname: reg.hostname.clone(),
                    address: reg.address.clone(),
                    resources,
                    state: AgentState::Active,
                    registered_ms: now_ms(),
                    registration: 0,
                },
                running: reg.running.clone(),
            };
            let applied = match self.propose(cmd).await {
                Ok(r) => r.applied,
                Err(e) => {
                    warn!(reason = %e.message, "could not register agent");
                    return;
                }
            };
            let registration = self
                .hub
                .read(|s, _| s.agents.get(&agent_id).map(|a| a.registration))
                .unwrap_or_default();
            self.sessions.lock().expect("sessions lock").insert(
                agent_id.clone(),
                Session {
                    generation,
                    tx: tx.clone(),
                },
            );
            let _ = tx.send(MasterMessage {
                msg: Some(master_message::Msg::Registered(proto::Registered {
                    master_id: String::new(),
                    heartbeat_interval_ms: (self.config.agent_timeout / 3).as_millis() as u64,
                })),
            });
            info!(address = %reg.address, resources = %reg.resources, running = reg.running.len(), registration, "agent registered");
            for id in &applied.to_kill {
                warn!(task = %id, "the agent runs a task that has ended here (lost while it was away, or unknown); killing it");
                let _ = tx.send(MasterMessage {
                    msg: Some(master_message::Msg::Kill(proto::KillTask {
                        task_id: id.clone(),
                    })),
                });
            }
            // Kills requested while it was away are sent again.
            let pending_kills: Vec<String> = self.hub.read(|s, _| {
                s.agent_tasks(&agent_id)
                    .filter(|t| t.kill_requested && !t.state().is_terminal())
                    .map(|t| t.id.clone())
                    .collect()
            });
            self.send_kills(&pending_kills);
            self.allocate([agent_id.clone()]);

            loop {
                // Any message, heartbeats included, shows the agent is alive.
                let first = match tokio::time::timeout(self.config.agent_timeout, inbound.recv())
                    .await
                {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(_) => {
                        warn!(
                            timeout_s = self.config.agent_timeout.as_secs_f64(),
                            "no heartbeat from the agent in time; closing its session"
                        );
                        break;
                    }
                };
                // Drain what has arrived so its updates commit together.
                let mut batch = vec![first];
                while let Ok(more) = inbound.try_recv() {
                    batch.push(more);
                }
                let updates: Vec<proto::StatusUpdate> = batch
                    .into_iter()
                    .filter_map(|m| match m.msg {
                        Some(proto::agent_message::Msg::Status(u)) => Some(u),
                        _ => None,
                    })
                    .collect();
                if !updates.is_empty() && !self.status_updates(&agent_id, &tx, updates).await {
                    break;
                }
            }
            let current = {
                let mut sessions = self.sessions.lock().expect("sessions lock");
                let current = sessions.get(&agent_id).map(|s| s.generation) == Some(generation);
                if current {
                    sessions.remove(&agent_id);
                }
                current
            };
            if current {
                info!("agent disconnected");
                self.hub.remove_offers_where(
                    |o| o.agent_id == agent_id,
                    "agent disconnected",
                    true,
                );
                let _ = self
                    .propose(Command::DisconnectAgent {
                        agent_id: agent_id.clone(),
                        registration: Some(registration),
                        time_ms: now_ms(),
                    })
                    .await;
                self.remove_agent_later(agent_id.clone(), registration);
            }
        }
        .instrument(span)
        .await
    }

    /// Gives every agent the state knows and no session holds (after this master became
    /// leader) the usual time to register: an agent recorded as connected is marked
    /// disconnected after the agent timeout, and removed after the re-registration timeout.
    pub fn watch_absent_agents(&self) {
        let agents: Vec<(String, u64, AgentState)> = self.hub.read(|s, _| {
            s.agents
                .values()
                .filter(|a| a.state != AgentState::Lost)
                .map(|a| (a.id.clone(), a.registration, a.state))
                .collect()
        });
        for (agent_id, registration, state) in agents {
            let me = self.me.clone();
            let timeout = self.config.agent_timeout;
            tokio::spawn(async move {
                if state == AgentState::Active {
                    tokio::time::sleep(timeout).await;
                    let Some(me) = me.upgrade() else { return };
                    if me.connected(&agent_id) {
                        return;
                    }
                    info!(agent = %agent_id, "the agent did not register with this leader in time; marking it disconnected");
                    match me
                        .propose(Command::DisconnectAgent {
                            agent_id: agent_id.clone(),
                            registration: Some(registration),
                            time_ms: now_ms(),
                        })
                        .await
                    {
                        Ok(r) if r.applied.error.is_none() => {}
                        _ => return,
                    }
                    me.remove_agent_later(agent_id, registration);
                } else if let Some(me) = me.upgrade() {
                    me.remove_agent_later(agent_id, registration);
                }
            });
        }
    }

    fn connected(&self, agent_id: &str) -> bool {
        self.sessions
            .lock()
            .expect("sessions lock")
            .contains_key(agent_id)
    }

    /// After the re-registration timeout, marks the agent lost (and its live tasks
    /// TASK_LOST) unless it registered again meanwhile.
    fn remove_agent_later(&self, agent_id: String, registration: u64) {
        let me = self.me.clone();
        let timeout = self.config.agent_reregister_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let Some(me) = me.upgrade() else { return };
            if me.connected(&agent_id) {
                return;
            }
            let message = format!(
                "agent {agent_id} did not register again within {}s of losing its connection",
                timeout.as_secs_f64()
            );
            match me
                .propose(Command::RemoveAgent {
                    agent_id: agent_id.clone(),
                    registration,
                    message: message.clone(),
                    time_ms: now_ms(),
                })
                .await
            {
                Ok(r) if r.applied.error.is_none() => {
                    warn!(agent = %agent_id, "{message}; its tasks are lost")
                }
                Ok(r) => {
                    debug!(agent = %agent_id, reason = ?r.applied.error, "agent removal not needed")
                }
                Err(e) => {
                    warn!(agent = %agent_id, reason = %e.message, "could not remove the agent")
                }
            }
        });
    }

    /// Commits a batch of status updates in order, then acknowledges each; false if the
    /// leader can no longer commit.
    async fn status_updates(
        &self,
        agent_id: &str,
        tx: &mpsc::UnboundedSender<MasterMessage>,
        updates: Vec<proto::StatusUpdate>,
    ) -> bool {
        let mut proposals = Vec::with_capacity(updates.len());
        for u in &updates {
            let Some(state) = TaskState::parse(&u.state) else {
                warn!(task = %u.task_id, state = %u.state, "unknown task state in a status update; acknowledged and ignored");
                proposals.push(None);
                continue;
            };
            proposals.push(Some(Command::UpdateTask {
                task_id: u.task_id.clone(),
                transition: Transition {
                    state,
                    reason: u.reason.clone(),
                    message: u.message.clone(),
                    time_ms: u.time_ms,
                },
            }));
        }
        // Proposed together: openraft appends them in the order they were sent.
        let results = futures::future::join_all(proposals.into_iter().map(|cmd| async move {
            match cmd {
                Some(cmd) => self.propose(cmd).await.map(Some),
                None => Ok(None),
            }
        }))
        .await;
        let mut freed = false;
        for (u, r) in updates.iter().zip(results) {
            match r {
                Ok(_) => {
                    debug!(task = %u.task_id, state = %u.state, "status update committed");
                    freed |= TaskState::parse(&u.state).is_some_and(|s| s.is_terminal());
                    let _ = tx.send(MasterMessage {
                        msg: Some(master_message::Msg::Ack(proto::StatusAck {
                            update_id: u.update_id.clone(),
                        })),
                    });
                }
                Err(e) => {
                    // Not acknowledged: the agent retries it, with this leader or the next.
                    warn!(task = %u.task_id, reason = %e.message, "status update not committed");
                    return false;
                }
            }
        }
        if freed {
            self.allocate([agent_id.to_string()]);
        }
        true
    }

    // ---- offers ----------------------------------------------------------------------------

    /// Offers the free resources of these agents, each to the next framework in turn.
    pub fn allocate(&self, agents: impl IntoIterator<Item = String>) {
        for agent_id in agents {
            self.allocate_agent(&agent_id);
        }
    }

    fn allocate_agent(&self, agent_id: &str) {
        if !self.connected(agent_id) {
            return;
        }
        let mut alloc = self.alloc.lock().expect("alloc lock");
        let now = Instant::now();
        alloc.filters.retain(|_, until| *until > now);
        let pending = alloc.pending.get(agent_id).cloned().unwrap_or_default();
        let last = alloc.last_framework.clone();
        let choice = self.hub.read(|state, offers| {
            let agent = state.agents.get(agent_id)?;
            if agent.state != AgentState::Active || offers.values().any(|o| o.agent_id == agent_id)
            {
                return None;
            }
            let free = agent
                .resources
                .checked_sub(&state.allocated_on(agent_id))
                .and_then(|r| r.checked_sub(&pending))?;
            if free.cpus() == Scalar::default() || free.mem() == Scalar::default() {
                return None;
            }
            let frameworks: Vec<&FrameworkInfo> = state.active_frameworks().collect();
            if frameworks.is_empty() {
                return None;
            }
            // Round robin: start after the framework offered to last.
            let start = last
                .as_ref()
                .and_then(|l| frameworks.iter().position(|f| f.id > *l))
                .unwrap_or(0);
            let fw = (0..frameworks.len())
                .map(|i| frameworks[(start + i) % frameworks.len()])
                .find(|f| {
                    !alloc
                        .filters
                        .contains_key(&(f.id.clone(), agent_id.to_string()))
                })?;
            Some((fw.id.clone(), agent.hostname.clone(), free))
        });
        let Some((framework_id, hostname, resources)) = choice else {
            return;
        };
        alloc.offer_seq += 1;
        alloc.last_framework = Some(framework_id.clone());
        let offer = Offer {
            id: format!("{}-{}", self.epoch, alloc.offer_seq),
            framework_id,
            agent_id: agent_id.to_string(),
            hostname,
            resources,
            created_ms: now_ms(),
        };
        debug!(offer = %offer.id, framework = %offer.framework_id, agent = %agent_id, resources = %offer.resources, "offer made");
        let id = offer.id.clone();
        self.hub.add_offer(offer);
        drop(alloc);
        self.expire_offer_later(id, agent_id.to_string());
    }

    fn expire_offer_later(&self, offer_id: String, agent_id: String) {
        let me = self.me.clone();
        let timeout = self.config.offer_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let Some(me) = me.upgrade() else { return };
            let reason = format!("expired after {}s unused", timeout.as_secs_f64());
            if me.hub.remove_offer(&offer_id, &reason, true).is_some() {
                info!(offer = %offer_id, "offer rescinded: {reason}");
                me.allocate([agent_id]);
            }
        });
    }
}

/// The `ports` resource holding exactly these ports.
fn ports_resource(ports: &[u64]) -> Resources {
    let ranges: Vec<String> = ports.iter().map(|p| format!("{p}-{p}")).collect();
    Resources::parse(&format!("ports:[{}]", ranges.join(","))).expect("port ranges parse")
}
