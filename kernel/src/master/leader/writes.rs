//! Framework writes: register, tear down, launch, decline and kill, each checked, committed
//! through Raft, then carried out.

use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, info_span, Instrument};

use super::{after, now_ms, refuse, Committed, Leader, Refusal};
use crate::proto::{self, master_message, write_request::Op, WriteReply, WriteRequest};
use crate::resources::Resources;
use crate::spec::parse_specs;
use crate::state::clients::WriteId;
use crate::state::{task_id, Command, FrameworkInfo, NewTask, StateError};
use crate::tls::Principal;

/// The errno a state machine refusal of this write gives.
fn op_errno(op: &Op, _error: &StateError) -> i32 {
    match op {
        Op::RegisterFramework(_) | Op::Launch(_) => libc::EEXIST,
        Op::TeardownFramework(_) => libc::ENOENT,
        Op::Kill(_) => libc::ESRCH,
        Op::Decline(_) | Op::Membership(_) => libc::EINVAL,
    }
}

impl Leader {
    /// Handles one write and answers with an errno and the positions at which its effects are
    /// visible. A write its client sent before (a retry) is answered as it was the first time.
    /// `principal` is the writer's certificate (none on an `--insecure` master).
    pub async fn write(
        self: &Arc<Self>,
        req: WriteRequest,
        principal: Option<Principal>,
    ) -> WriteReply {
        let (uid, gid) = (req.uid, req.gid);
        let Some(op) = req.op else {
            return self.reply(Err(refuse(libc::EINVAL, "a write without an operation")));
        };
        let write = (!req.client.is_empty()).then(|| WriteId {
            client: req.client.clone(),
            seq: req.seq,
            done_below: req.done_below,
        });
        if let Some(id) = &write {
            let earlier = self.hub.read(|s| s.clients.outcome(id).cloned());
            if let Some(o) = earlier {
                debug!(client = %id.client, seq = id.seq, index = o.index, "a retried write, answered as before");
                let errno = o.error.as_ref().map_or(0, |e| op_errno(&op, e));
                return self.reply(match o.error {
                    None => Ok(o.index),
                    Some(e) => Err(refuse(errno, e.to_string())),
                });
            }
        }
        let framework = match &op {
            Op::RegisterFramework(r) => r.name.clone(),
            Op::TeardownFramework(r) => r.name.clone(),
            Op::Launch(r) => r.framework.clone(),
            Op::Decline(r) => r.framework.clone(),
            Op::Kill(r) => r.framework.clone(),
            Op::Membership(_) => String::new(),
        };
        let registering = matches!(op, Op::RegisterFramework(_));
        let by = principal
            .as_ref()
            .map_or_else(String::new, |p| p.to_string());
        let span = info_span!("write", framework = %framework, uid, principal = %by);
        let w = write.as_ref();
        let result = async {
            match op {
                Op::RegisterFramework(r) => {
                    self.register_framework(w, &r.name, &r.user, uid, gid).await
                }
                Op::TeardownFramework(r) => self.teardown_framework(w, &r.name, uid).await,
                Op::Launch(r) => {
                    self.launch(w, &r.framework, uid, &r.offer_id, &r.text)
                        .await
                }
                Op::Decline(r) => self.decline(&r.framework, uid, &r.offer_id, &r.text).await,
                Op::Kill(r) => self.kill(w, &r.framework, uid, &r.task).await,
                Op::Membership(m) => self.change_membership(uid, &m.text).await,
            }
        }
        .instrument(span)
        .await;
        if let Err(r) = &result {
            info!(framework = %framework, errno = r.errno, reason = %r.message, "write refused");
            // A refused mkdir names a framework that is not the writer's.
            if !registering && !framework.is_empty() {
                let fw = self
                    .hub
                    .read(|s| s.framework_by_name(&framework).map(|f| f.id.clone()));
                if let Some(id) = fw {
                    self.board.refused(&id, &r.message);
                }
            }
        }
        self.reply(result)
    }

    /// The reply to a write: its outcome, and the positions at which it is visible (the log
    /// index of its effect; the leader stream's position for its offer changes or refusal).
    fn reply(&self, result: Result<u64, Refusal>) -> WriteReply {
        let (errno, error, index) = match result {
            Ok(index) => (0, String::new(), index),
            Err(r) => (r.errno, r.message, 0),
        };
        WriteReply {
            errno,
            error,
            index,
            term: self.leader.term,
            leader_seq: self.board.seq(),
        }
    }

    /// Commits a write's command, carried in a [`Command::Write`] when the client named it.
    /// `Ok(None)`: it was a retry of a write already applied, which changed nothing now and
    /// whose effects were carried out the first time.
    async fn commit_write(
        &self,
        write: Option<&WriteId>,
        command: Command,
    ) -> Result<Committed, Refusal> {
        let command = match write {
            Some(id) => Command::Write {
                id: id.clone(),
                time_ms: now_ms(),
                command: Box::new(command),
            },
            None => command,
        };
        self.propose(command).await
    }

    fn owned_framework(&self, name: &str, uid: u32) -> Result<FrameworkInfo, Refusal> {
        let fw = self
            .hub
            .read(|s| s.framework_by_name(name).cloned())
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

    async fn register_framework(
        &self,
        write: Option<&WriteId>,
        name: &str,
        user: &str,
        uid: u32,
        gid: u32,
    ) -> Result<u64, Refusal> {
        crate::spec::validate_name(name).map_err(|e| {
            refuse(
                libc::EINVAL,
                format!("invalid framework name {name:?}: {e}"),
            )
        })?;
        crate::spec::validate_user(user).map_err(|e| {
            refuse(
                libc::EINVAL,
                format!("invalid owner user name {user:?}: {e}; a framework belongs to a user name, which its tasks run as on the agents"),
            )
        })?;
        let r = self
            .commit_write(
                write,
                Command::RegisterFramework {
                    name: name.to_string(),
                    user: user.to_string(),
                    uid,
                    gid,
                    time_ms: now_ms(),
                },
            )
            .await?;
        if let Some(e) = r.applied.error {
            return Err(refuse(libc::EEXIST, e.to_string()));
        }
        if let Some(first) = r.applied.duplicate_of {
            return Ok(first);
        }
        info!(framework = %name, id = ?r.applied.framework_id, "framework registered");
        let agents = self
            .hub
            .read(|s| s.agents.keys().cloned().collect::<Vec<_>>());
        self.allocate(agents);
        Ok(r.index)
    }

    async fn teardown_framework(
        &self,
        write: Option<&WriteId>,
        name: &str,
        uid: u32,
    ) -> Result<u64, Refusal> {
        let fw = self.owned_framework(name, uid)?;
        let rescinded = self.board.remove_offers_where(
            |o| o.framework_id == fw.id,
            "framework torn down",
            false,
        );
        let r = self
            .commit_write(
                write,
                Command::TeardownFramework {
                    framework_id: fw.id.clone(),
                    time_ms: now_ms(),
                },
            )
            .await?;
        if let Some(e) = r.applied.error {
            return Err(refuse(libc::ENOENT, e.to_string()));
        }
        if let Some(first) = r.applied.duplicate_of {
            return Ok(first);
        }
        info!(framework = %fw.id, tasks = r.applied.to_kill.len(), "framework torn down");
        self.send_kills(&r.applied.to_kill);
        // Offers made to it while the teardown committed (resources freed meanwhile) go too:
        // left outstanding, they would hold their agents until they expire.
        let late = self.board.remove_offers_where(
            |o| o.framework_id == fw.id,
            "framework torn down",
            false,
        );
        self.allocate(rescinded.into_iter().chain(late).map(|o| o.agent_id));
        Ok(r.index)
    }

    async fn launch(
        &self,
        write: Option<&WriteId>,
        framework: &str,
        uid: u32,
        offer_id: &str,
        text: &str,
    ) -> Result<u64, Refusal> {
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
        let taken: Vec<String> = self.hub.read(|s| {
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
                .board
                .read(|offers| offers.get(offer_id).cloned())
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
                self.board.remove_offer(offer_id, "used up", false);
            } else {
                self.board.update_offer(offer_id, left);
            }
            let p = alloc.pending.entry(offer.agent_id.clone()).or_default();
            *p = p.add(&used);
            (offer, tasks, used)
        };
        let result = self
            .commit_write(
                write,
                Command::LaunchTasks {
                    framework_id: fw.id.clone(),
                    agent_id: offer.agent_id.clone(),
                    tasks: tasks.clone(),
                    time_ms: now_ms(),
                },
            )
            .await;
        {
            let mut alloc = self.alloc.lock().expect("alloc lock");
            if let Some(p) = alloc.pending.get_mut(&offer.agent_id) {
                *p = p.checked_sub(&used).unwrap_or_default();
            }
        }
        let result = result.and_then(|r| match (r.applied.error, r.applied.duplicate_of) {
            (Some(e), _) => Err(refuse(libc::EEXIST, e.to_string())),
            (None, Some(first)) => Ok(first),
            (None, None) => {
                let ids: Vec<String> = tasks
                    .iter()
                    .map(|t| task_id(&fw.id, &t.spec.name))
                    .collect();
                for id in &ids {
                    info!(task = %id, agent = %offer.agent_id, "task launched");
                }
                self.send_launches(&ids);
                Ok(r.index)
            }
        });
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
    ) -> Result<u64, Refusal> {
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
            .board
            .read(|offers| offers.get(offer_id).cloned())
            .filter(|o| o.framework_id == fw.id)
            .ok_or_else(|| refuse(libc::ENOENT, format!("offer {offer_id} is gone")))?;
        self.alloc.lock().expect("alloc lock").filters.insert(
            (fw.id.clone(), offer.agent_id.clone()),
            Instant::now() + refuse_for,
        );
        self.board
            .remove_offer(offer_id, "declined", false)
            .ok_or_else(|| refuse(libc::ENOENT, format!("offer {offer_id} is gone")))?;
        debug!(offer = %offer_id, ?refuse_for, "offer declined");
        self.allocate([offer.agent_id.clone()]);
        let me = self.me.clone();
        let agent = offer.agent_id.clone();
        tokio::spawn(async move {
            if let Some(me) = after(&me, refuse_for).await {
                me.allocate([agent]);
            }
        });
        // Nothing replicated changed: visible as soon as the offer is gone from the leader
        // stream.
        Ok(0)
    }

    async fn kill(
        &self,
        write: Option<&WriteId>,
        framework: &str,
        uid: u32,
        task: &str,
    ) -> Result<u64, Refusal> {
        let fw = self.owned_framework(framework, uid)?;
        let id = task_id(&fw.id, task);
        let state = self
            .hub
            .read(|s| s.tasks.get(&id).map(|t| t.state()))
            .ok_or_else(|| refuse(libc::ENOENT, format!("no task {task:?} in {framework:?}")))?;
        if state.is_terminal() {
            return Err(refuse(
                libc::ESRCH,
                format!("task {task:?} has already ended ({})", state.as_str()),
            ));
        }
        let r = self
            .commit_write(
                write,
                Command::KillTask {
                    task_id: id.clone(),
                    time_ms: now_ms(),
                },
            )
            .await?;
        if let Some(e) = r.applied.error {
            return Err(refuse(libc::ESRCH, e.to_string()));
        }
        if let Some(first) = r.applied.duplicate_of {
            return Ok(first);
        }
        info!(task = %id, "kill requested");
        self.send_kills(&r.applied.to_kill);
        Ok(r.index)
    }

    pub(super) fn send_kills(&self, task_ids: &[String]) {
        let targets: Vec<(String, String)> = self.hub.read(|s| {
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
}

impl Leader {
    /// Tells the agents of these (committed) tasks to launch them.
    pub(super) fn send_launches(&self, task_ids: &[String]) {
        let launches: Vec<(String, proto::LaunchTask)> = self.hub.read(|s| {
            task_ids
                .iter()
                .filter_map(|id| {
                    let t = s.tasks.get(id)?;
                    let fw = s.frameworks.get(&t.framework_id)?;
                    let launch = proto::LaunchTask {
                        task_id: id.clone(),
                        framework_id: fw.id.clone(),
                        spec_json: serde_json::to_string(&t.spec).expect("spec serializes"),
                        ports: t.ports.clone(),
                        uid: fw.uid,
                        gid: fw.gid,
                        user: fw.user.clone(),
                    };
                    Some((t.agent_id.clone(), launch))
                })
                .collect()
        });
        for (agent, launch) in launches {
            self.send(&agent, master_message::Msg::Launch(launch));
        }
    }
}

/// The `ports` resource holding exactly these ports.
fn ports_resource(ports: &[u64]) -> Resources {
    let ranges: Vec<String> = ports.iter().map(|p| format!("{p}-{p}")).collect();
    Resources::parse(&format!("ports:[{}]", ranges.join(","))).expect("port ranges parse")
}
