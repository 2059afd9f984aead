//! Framework writes: register, tear down, launch, decline and kill, each checked, committed
//! through Raft, then carried out.

use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, info_span, Instrument};

use super::{after, now_ms, refuse, Committed, Leader, Refusal};
use crate::acls::Action;
use crate::limits::{MAX_CLIENT_ID, MAX_OFFER_ID, MAX_WRITE_TEXT};
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
        Op::TeardownFramework(_) | Op::SetRoles(_) | Op::Suppress(_) | Op::Optimistic(_) => {
            libc::ENOENT
        }
        Op::Kill(_) => libc::ESRCH,
        Op::Decline(_) | Op::Membership(_) | Op::ConfigureRole(_) | Op::Reserve(_) => libc::EINVAL,
    }
}

/// The refusal of a write to an offer no longer outstanding.
pub(super) fn offer_gone(offer_id: &str) -> Refusal {
    refuse(
        libc::ENOENT,
        format!(
            "offer {offer_id} is gone (used up, declined, rescinded or expired); read offers/next for a current one"
        ),
    )
}

/// Refuses a write longer than the limits allow.
fn within_limits(client: &str, op: &Op) -> Result<(), String> {
    if client.len() > MAX_CLIENT_ID {
        return Err(format!(
            "a client id of {} bytes: at most {MAX_CLIENT_ID}",
            client.len()
        ));
    }
    let (text, offer) = match op {
        Op::Launch(l) => (l.text.as_str(), l.offer_id.as_str()),
        Op::Decline(d) => (d.text.as_str(), d.offer_id.as_str()),
        Op::Reserve(r) => (r.text.as_str(), r.offer_id.as_str()),
        Op::Membership(m) => (m.text.as_str(), ""),
        Op::Kill(k) => (k.task.as_str(), ""),
        Op::SetRoles(r) => (r.text.as_str(), ""),
        Op::Suppress(r) => (r.text.as_str(), ""),
        Op::Optimistic(r) => (r.text.as_str(), ""),
        Op::ConfigureRole(c) => (c.text.as_str(), ""),
        Op::RegisterFramework(_) | Op::TeardownFramework(_) => ("", ""),
    };
    if text.len() > MAX_WRITE_TEXT {
        return Err(format!(
            "a write of {} bytes: at most {MAX_WRITE_TEXT}",
            text.len()
        ));
    }
    if offer.len() > MAX_OFFER_ID {
        return Err(format!(
            "an offer id of {} bytes: at most {MAX_OFFER_ID}",
            offer.len()
        ));
    }
    Ok(())
}

/// Whom a write is for, as the leader knows it: a user of the writing mount's machine, and
/// the mount's principal.
pub(super) struct Writer {
    /// The uid there.
    pub uid: u32,
    /// The gid there.
    pub gid: u32,
    /// The uid's user name there (empty if it has none).
    pub user: String,
    /// The mount's certificate (none on an `--insecure` master).
    pub principal: Option<Principal>,
}

impl Writer {
    /// Whether it is root on its machine.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether it may act on `fw` as its owner: the same user name (or, for a framework from
    /// before user names, the same uid), or root.
    fn owns(&self, fw: &FrameworkInfo) -> bool {
        if self.is_root() {
            return true;
        }
        if fw.user.is_empty() {
            return fw.uid == self.uid;
        }
        !self.user.is_empty() && fw.user == self.user
    }

    /// Its principal, or empty.
    fn principal_name(&self) -> String {
        self.principal
            .as_ref()
            .map_or_else(String::new, |p| p.to_string())
    }

    /// "user alice (uid 1000) through mount:web1", for refusals.
    pub fn describe(&self) -> String {
        let who = if self.user.is_empty() {
            format!("uid {}", self.uid)
        } else {
            format!("user {:?} (uid {})", self.user, self.uid)
        };
        match &self.principal {
            Some(p) => format!("{who} through {p}"),
            None => who,
        }
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
        let writer = Writer {
            uid: req.uid,
            gid: req.gid,
            user: req.user.clone(),
            principal,
        };
        let Some(op) = req.op else {
            return self.reply(Err(refuse(libc::EINVAL, "a write without an operation")));
        };
        if let Err(why) = within_limits(&req.client, &op) {
            return self.reply(Err(refuse(libc::EINVAL, why)));
        }
        // Each principal's clients are its own: no one can answer or poison another's writes.
        let write = (!req.client.is_empty()).then(|| WriteId {
            client: match &writer.principal {
                Some(p) => format!("{p}/{}", req.client),
                None => req.client.clone(),
            },
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
            Op::Reserve(r) => r.framework.clone(),
            Op::Kill(r) => r.framework.clone(),
            Op::SetRoles(r) => r.framework.clone(),
            Op::Suppress(r) => r.framework.clone(),
            Op::Optimistic(r) => r.framework.clone(),
            Op::Membership(_) | Op::ConfigureRole(_) => String::new(),
        };
        let registering = matches!(op, Op::RegisterFramework(_));
        let span = info_span!("write", framework = %framework, uid = writer.uid, user = %writer.user, principal = %writer.principal_name());
        let w = write.as_ref();
        let result = async {
            match op {
                Op::RegisterFramework(r) => {
                    self.register_framework(w, &r.name, &r.user, &writer).await
                }
                Op::TeardownFramework(r) => self.teardown_framework(w, &r.name, &writer).await,
                Op::Launch(r) => {
                    self.launch(w, &r.framework, &writer, &r.offer_id, &r.text)
                        .await
                }
                Op::Decline(r) => {
                    self.decline(&r.framework, &writer, &r.offer_id, &r.text)
                        .await
                }
                Op::Reserve(r) => {
                    self.reserve(w, &r.framework, &writer, &r.offer_id, &r.text, r.unreserve)
                        .await
                }
                Op::Kill(r) => self.kill(w, &r.framework, &writer, &r.task).await,
                Op::Membership(m) => self.change_membership(&writer, &m.text).await,
                Op::SetRoles(r) => self.set_roles(w, &r.framework, &writer, &r.text).await,
                Op::Suppress(r) => {
                    self.suppress(w, &r.framework, &writer, &r.text, r.revive)
                        .await
                }
                Op::Optimistic(r) => self.set_optimistic(w, &r.framework, &writer, &r.text).await,
                Op::ConfigureRole(c) => {
                    self.configure_role(w, &c.role, &c.file, &writer, &c.text)
                        .await
                }
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
    pub(super) async fn commit_write(
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

    /// The framework named `name`, if `writer` may act on it: its owner, or root on the
    /// writer's machine; and, for `action`, if the ACLs let the writer's principal do it to the
    /// owner's frameworks.
    pub(super) fn owned_framework(
        &self,
        name: &str,
        writer: &Writer,
        action: Option<Action>,
    ) -> Result<FrameworkInfo, Refusal> {
        let fw = self
            .hub
            .read(|s| s.framework_by_name(name).cloned())
            .ok_or_else(|| refuse(libc::ENOENT, format!("no framework named {name:?}")))?;
        if !writer.owns(&fw) {
            let owner = if fw.user.is_empty() {
                format!("uid {}", fw.uid)
            } else {
                format!("user {:?}", fw.user)
            };
            return Err(refuse(
                libc::EACCES,
                format!(
                    "framework {name:?} belongs to {owner}; {} may not change it",
                    writer.describe()
                ),
            ));
        }
        if let Some(action) = action {
            self.permit(writer, action, &fw.user)?;
        }
        Ok(fw)
    }

    /// Whether the ACLs let the writer's principal do `action` to `object`; EACCES if not.
    pub(super) fn permit(
        &self,
        writer: &Writer,
        action: Action,
        object: &str,
    ) -> Result<(), Refusal> {
        self.config
            .acls
            .allows(writer.principal.as_ref(), action, object)
            .map_err(|d| refuse(libc::EACCES, d.to_string()))
    }

    async fn register_framework(
        &self,
        write: Option<&WriteId>,
        name: &str,
        user: &str,
        writer: &Writer,
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
        if !writer.user.is_empty() && writer.user != user && !writer.is_root() {
            return Err(refuse(
                libc::EACCES,
                format!(
                    "{} may not make a framework for user {user:?}: a framework belongs to the user who makes it",
                    writer.describe()
                ),
            ));
        }
        // Every framework is in the default role until roles come (issue 9).
        self.permit(writer, Action::RegisterFramework, "*")?;
        let r = self
            .commit_write(
                write,
                Command::RegisterFramework {
                    name: name.to_string(),
                    user: user.to_string(),
                    principal: writer.principal.as_ref().map(|p| p.to_string()),
                    uid: writer.uid,
                    gid: writer.gid,
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
        self.reallocate();
        Ok(r.index)
    }

    async fn teardown_framework(
        &self,
        write: Option<&WriteId>,
        name: &str,
        writer: &Writer,
    ) -> Result<u64, Refusal> {
        let fw = self.owned_framework(name, writer, Some(Action::TeardownFramework))?;
        self.board
            .remove_offers_where(|o| o.framework_id == fw.id, "framework torn down", false);
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
        self.board
            .remove_offers_where(|o| o.framework_id == fw.id, "framework torn down", false);
        self.reallocate();
        Ok(r.index)
    }

    async fn launch(
        &self,
        write: Option<&WriteId>,
        framework: &str,
        writer: &Writer,
        offer_id: &str,
        text: &str,
    ) -> Result<u64, Refusal> {
        let fw = self.owned_framework(framework, writer, Some(Action::RunTasks))?;
        let specs = parse_specs(text).map_err(|e| refuse(libc::EINVAL, e.to_string()))?;
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
                .ok_or_else(|| alloc.optimistic.gone(offer_id))?;
            let too_little = || {
                let mut asked = need.to_string();
                if ports_needed > 0 {
                    asked.push_str(&format!(" and {ports_needed} ports"));
                }
                refuse(
                    libc::ENOSPC,
                    format!(
                        "the tasks need {asked} but offer {offer_id} has {}; launch fewer or smaller tasks",
                        offer.resources
                    ),
                )
            };
            let offered_ports = offer.resources.take_ports(ports_needed);
            if !offer.resources.flatten().contains(&need) || offered_ports.is_none() {
                return Err(too_little());
            }
            // Each task takes what is reserved for the offer's role first, so that unreserved
            // resources stay free for others.
            let mut free_ports = offered_ports.unwrap_or_default().into_iter();
            let mut left = offer.resources.clone();
            let mut tasks = Vec::with_capacity(specs.len());
            for spec in specs {
                let ports: Vec<u64> = free_ports.by_ref().take(spec.ports as usize).collect();
                let mut wanted = spec.resources();
                if !ports.is_empty() {
                    wanted = wanted.add(&ports_resource(&ports));
                }
                let resources = left.draw(&wanted).ok_or_else(too_little)?;
                left = left.checked_sub(&resources).ok_or_else(too_little)?;
                tasks.push(NewTask {
                    spec,
                    resources,
                    ports,
                });
            }
            let used = tasks
                .iter()
                .fold(Resources::default(), |acc, t| acc.add(&t.resources));
            self.check_fresh(&mut alloc, &offer, &used)?;
            alloc.optimistic.launched(
                &offer.agent_id,
                &fw.id,
                &fw.name,
                tasks.iter().map(|t| t.spec.name.clone()).collect(),
                &used,
            );
            if left.cpus().is_zero() || left.mem().is_zero() {
                self.board.remove_offer(offer_id, "used up", false);
            } else {
                self.board.update_offer(offer_id, left);
            }
            alloc.hold(&offer.agent_id, &offer.role, &fw.id, &used);
            (offer, tasks, used)
        };
        let result = self
            .commit_write(
                write,
                Command::LaunchTasks {
                    framework_id: fw.id.clone(),
                    agent_id: offer.agent_id.clone(),
                    role: offer.role.clone(),
                    tasks: tasks.clone(),
                    time_ms: now_ms(),
                },
            )
            .await;
        self.alloc
            .lock()
            .expect("alloc lock")
            .release(&offer.agent_id, &offer.role, &fw.id, &used);
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
                if offer.optimistic {
                    self.rescind_stale(&offer.agent_id);
                }
                Ok(r.index)
            }
        });
        // If the offer was used up, the agent's free resources are offered anew.
        self.reallocate();
        result
    }

    async fn decline(
        &self,
        framework: &str,
        writer: &Writer,
        offer_id: &str,
        text: &str,
    ) -> Result<u64, Refusal> {
        let fw = self.owned_framework(framework, writer, None)?;
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
        self.reallocate();
        let me = self.me.clone();
        tokio::spawn(async move {
            if let Some(me) = after(&me, refuse_for).await {
                me.reallocate();
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
        writer: &Writer,
        task: &str,
    ) -> Result<u64, Refusal> {
        let fw = self.owned_framework(framework, writer, Some(Action::KillTasks))?;
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
