//! Agent sessions: registration, heartbeats, status updates, and the timers that mark a silent
//! agent disconnected and then lost.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use super::{after, now_ms, Leader, Session};
use crate::attributes::Attributes;
use crate::health::{TaskHealth, MAX_OUTPUT};
use crate::limits::{cut, MAX_STATUS_MESSAGE};
use crate::proto::{self, master_message, MasterMessage};
use crate::resources::Resources;
use crate::state::{AgentState, Command, TaskState, Transition};

impl Leader {
    /// Runs one agent's session: its registration (read by the service), then status updates
    /// until the stream ends.
    pub async fn agent_session(
        self: Arc<Self>,
        reg: proto::RegisterAgent,
        mut inbound: mpsc::Receiver<proto::AgentMessage>,
        tx: mpsc::UnboundedSender<MasterMessage>,
    ) {
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
            let attributes = match Attributes::parse(&reg.attributes) {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "agent registered with invalid attributes; closing its session");
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
                    attributes,
                },
                running: reg.running.clone(),
            };
            let (registration, applied) = match self.propose(cmd).await {
                Ok(r) => (r.index, r.applied),
                Err(e) => {
                    warn!(reason = %e.message, "could not register agent");
                    return;
                }
            };
            self.sessions.lock().expect("sessions lock").insert(
                agent_id.clone(),
                Session {
                    generation,
                    tx: tx.clone(),
                },
            );
            let _ = tx.send(MasterMessage {
                msg: Some(master_message::Msg::Registered(proto::Registered {
                    master_id: format!("m{}", self.leader.id),
                    heartbeat_interval_ms: (self.config.agent_timeout / 3).as_millis() as u64,
                    acls_json: serde_json::to_string(&*self.config.acls).expect("ACLs serialize"),
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
            let pending_kills: Vec<String> = self.hub.read(|s| {
                s.agent_tasks(&agent_id)
                    .filter(|t| t.kill_requested && !t.state().is_terminal())
                    .map(|t| t.id.clone())
                    .collect()
            });
            self.send_kills(&pending_kills);
            // Launches committed that it never got (the leader that sent them failed first).
            for id in &applied.to_launch {
                info!(task = %id, "the agent never got this committed launch; sending it again");
            }
            self.send_launches(&applied.to_launch);
            self.reallocate();

            loop {
                // Any message, heartbeats included, shows the agent is alive.
                let received = tokio::select! {
                    r = tokio::time::timeout(self.config.agent_timeout, inbound.recv()) => r,
                    _ = self.until_stopped() => {
                        info!("this master stopped leading; closing the agent's session");
                        break;
                    }
                };
                let first = match received {
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
                if !updates.is_empty() && !self.status_updates(&tx, updates).await {
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
            if current && !self.is_stopped() {
                info!("agent disconnected");
                self.board.remove_offers_where(
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
        let agents: Vec<(String, u64, AgentState)> = self.hub.read(|s| {
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
                    let Some(me) = after(&me, timeout).await else {
                        return;
                    };
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

    pub(super) fn connected(&self, agent_id: &str) -> bool {
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
            let Some(me) = after(&me, timeout).await else {
                return;
            };
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
            if let (Some(healthy), TaskState::Running) = (u.healthy, state) {
                proposals.push(Some(Command::TaskHealth {
                    task_id: u.task_id.clone(),
                    health: TaskHealth {
                        healthy,
                        seq: u.health_seq,
                        output: cut(&u.message, MAX_OUTPUT).to_string(),
                        time_ms: u.time_ms,
                    },
                }));
                continue;
            }
            proposals.push(Some(Command::UpdateTask {
                task_id: u.task_id.clone(),
                transition: Transition {
                    state,
                    reason: cut(&u.reason, MAX_STATUS_MESSAGE).to_string(),
                    message: cut(&u.message, MAX_STATUS_MESSAGE).to_string(),
                    time_ms: u.time_ms,
                    // Only an end says how the command ended, and only within what an exit
                    // status or a signal can be.
                    exit_code: u
                        .exit_code
                        .filter(|c| state.is_terminal() && (0..=255).contains(c)),
                    signal: u
                        .signal
                        .filter(|s| state.is_terminal() && (1..=64).contains(s)),
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
            self.reallocate();
        }
        true
    }
}
