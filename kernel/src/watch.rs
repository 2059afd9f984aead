//! What masters tell mounts, and the local copy a mount keeps.
//!
//! Two streams feed a copy:
//!
//! - the **state stream** ([`StateEvent`]), from any master: the replicated state as of a Raft
//!   log index, then every committed command with its index. Positions are log indexes, the
//!   same on every master and across restarts, so a mount resumes from the index it applied,
//!   on whichever master, and a write's reply names the index at which its effect is visible.
//! - the **leader stream** ([`LeaderEvent`]), from the leader only: what lives only on the
//!   leader (offers, refused writes, the masters' roles). It is numbered within one leadership;
//!   when the leadership ends, the stream ends and the copy drops the leader's offers.

use std::collections::{BTreeMap, VecDeque};

use imbl::{HashMap as ImHashMap, OrdMap, OrdSet};

use serde::{Deserialize, Serialize};

use crate::health::TaskHealth;
use crate::resources::{Resources, Tally};
use crate::state::{task_id, Applied, ClusterState, Command, FrameworkId, TaskInfo, Transition};

/// An offer: one agent's unused resources, offered to one framework until used, declined,
/// or rescinded. Offers live only on the leader and are not replicated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Unique id (`<log index where the leadership began>-<n>`).
    pub id: String,
    /// The framework it is made to.
    pub framework_id: FrameworkId,
    /// The agent whose resources these are.
    pub agent_id: String,
    /// That agent's hostname.
    pub hostname: String,
    /// What is offered.
    pub resources: Resources,
    /// The role it is offered for: tasks launched from it are allocated to that role.
    #[serde(default = "default_role")]
    pub role: String,
    /// When it was made (unix ms).
    pub created_ms: u64,
    /// Whether other optimistic frameworks may be offered the same resources at once (it goes
    /// only to frameworks that take optimistic offers): a launch from it fails with ESTALE
    /// once another launch took what it needs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optimistic: bool,
}

/// The role of everything from before roles: `*`.
fn default_role() -> String {
    "*".into()
}

/// One message of the state stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateEvent {
    /// The whole replicated state as of a log index; replaces whatever the receiver had.
    Snapshot {
        /// The log index of the last command it holds.
        index: u64,
        /// The state.
        state: ClusterState,
    },
    /// A committed command, to be applied with [`ClusterState::apply`].
    Applied {
        /// Its Raft log index.
        index: u64,
        /// The command.
        command: Command,
    },
}

impl StateEvent {
    /// The log index this event brings the receiver to.
    pub fn index(&self) -> u64 {
        match self {
            StateEvent::Snapshot { index, .. } | StateEvent::Applied { index, .. } => *index,
        }
    }
}

/// Who leads: shown in `/cluster/leader` as `m<id> <address>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// The leader's master id.
    pub id: u64,
    /// The address it advertises.
    pub address: String,
    /// Its Raft term.
    pub term: u64,
}

impl std::fmt::Display for LeaderInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "m{} {}", self.id, self.address)
    }
}

/// One master as the leader sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterStatus {
    /// Its id.
    pub id: u64,
    /// The address it advertises.
    pub address: String,
    /// `leader`, `follower`, `learner`, `candidate`, or `unreachable` (it did not answer the
    /// leader's last status request).
    pub role: String,
    /// The log index it has applied, as it last said.
    pub applied: u64,
}

/// One message of the leader stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaderEvent {
    /// The first message: who leads, and everything the leader holds now.
    Leading {
        /// Position of this event.
        seq: u64,
        /// The leader.
        leader: LeaderInfo,
        /// Its outstanding offers.
        offers: Vec<Offer>,
        /// The masters.
        masters: Vec<MasterStatus>,
        /// Why frameworks hold no offer, by framework id (see [`LeaderEvent::Why`]).
        #[serde(default)]
        why: BTreeMap<FrameworkId, String>,
    },
    /// Why a framework holds no offer, as the last allocation pass saw it: one reason a line
    /// (empty: it holds one, or nothing keeps offers from it).
    Why {
        /// Position of this event.
        seq: u64,
        /// Which framework.
        framework_id: FrameworkId,
        /// The reasons.
        text: String,
    },
    /// A new offer, or an offer whose resources changed (a launch used part of it).
    OfferCreated {
        /// Position of this event.
        seq: u64,
        /// The offer.
        offer: Offer,
    },
    /// An offer is gone.
    OfferRemoved {
        /// Position of this event.
        seq: u64,
        /// Which offer.
        offer_id: String,
        /// Whose it was.
        framework_id: FrameworkId,
        /// Why: `accepted`, `declined`, or a rescind reason.
        reason: String,
        /// True when the master took it back (not the framework's own doing).
        rescinded: bool,
    },
    /// A framework's write was refused.
    Refused {
        /// Position of this event.
        seq: u64,
        /// The framework written to.
        framework_id: FrameworkId,
        /// Why.
        message: String,
    },
    /// The masters' roles and applied indexes changed.
    Masters {
        /// Position of this event.
        seq: u64,
        /// Every member.
        masters: Vec<MasterStatus>,
    },
}

impl LeaderEvent {
    /// This event's position in its leadership's stream.
    pub fn seq(&self) -> u64 {
        match self {
            LeaderEvent::Leading { seq, .. }
            | LeaderEvent::OfferCreated { seq, .. }
            | LeaderEvent::OfferRemoved { seq, .. }
            | LeaderEvent::Refused { seq, .. }
            | LeaderEvent::Why { seq, .. }
            | LeaderEvent::Masters { seq, .. } => *seq,
        }
    }
}

/// How many event lines a mount keeps per framework.
pub const EVENT_LINES_KEPT: usize = 10_000;

/// A framework's event lines, numbered from the first ever recorded.
#[derive(Clone, Debug, Default)]
pub struct EventLog {
    /// Number of the first line still kept.
    pub first: u64,
    /// The lines kept, each newline-terminated.
    pub lines: VecDeque<String>,
}

impl EventLog {
    /// Number one past the last line.
    pub fn end(&self) -> u64 {
        self.first + self.lines.len() as u64
    }

    fn push(&mut self, line: String) {
        self.lines.push_back(line);
        if self.lines.len() > EVENT_LINES_KEPT {
            self.lines.pop_front();
            self.first += 1;
        }
    }
}

/// Outstanding offers by id, with each framework's and each agent's kept as offers come and
/// go, so that a framework's `offers/` or an agent's free resources cost no walk of every offer.
/// Persistent maps: the leader's allocation pass takes a copy of them all at no cost.
#[derive(Clone, Debug, Default)]
pub struct Offers {
    by_id: OrdMap<String, Offer>,
    by_framework: ImHashMap<FrameworkId, OrdSet<String>>,
    by_agent: ImHashMap<String, OrdSet<String>>,
    /// What the offers hold, by the role they are for.
    by_role: ImHashMap<String, Tally>,
}

impl Offers {
    /// An offer by id.
    pub fn get(&self, id: &str) -> Option<&Offer> {
        self.by_id.get(id)
    }

    /// Every offer, by id.
    pub fn values(&self) -> impl Iterator<Item = &Offer> {
        self.by_id.values()
    }

    /// How many offers there are.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Adds an offer, or replaces the one with its id.
    pub fn insert(&mut self, offer: Offer) {
        // A changed offer (a launch used part of it) keeps its framework, agent and role:
        // only its role's sum moves (once per launch, on the leader and in every mount).
        if let Some(old) = self.by_id.get(&offer.id) {
            if (&old.framework_id, &old.agent_id, &old.role)
                == (&offer.framework_id, &offer.agent_id, &offer.role)
            {
                let tally = self.by_role.entry(offer.role.clone()).or_default();
                tally.remove(&old.resources);
                tally.add(&offer.resources);
                if tally.is_empty() {
                    self.by_role.remove(&offer.role);
                }
                self.by_id.insert(offer.id.clone(), offer);
                return;
            }
        }
        self.remove(&offer.id);
        self.by_framework
            .entry(offer.framework_id.clone())
            .or_default()
            .insert(offer.id.clone());
        self.by_agent
            .entry(offer.agent_id.clone())
            .or_default()
            .insert(offer.id.clone());
        self.by_role
            .entry(offer.role.clone())
            .or_default()
            .add(&offer.resources);
        self.by_id.insert(offer.id.clone(), offer);
    }

    /// Removes an offer by id.
    pub fn remove(&mut self, id: &str) -> Option<Offer> {
        let offer = self.by_id.remove(id)?;
        if let Some(tally) = self.by_role.get_mut(&offer.role) {
            tally.remove(&offer.resources);
            if tally.is_empty() {
                self.by_role.remove(&offer.role);
            }
        }
        for (index, key) in [
            (&mut self.by_framework, &offer.framework_id),
            (&mut self.by_agent, &offer.agent_id),
        ] {
            if let Some(ids) = index.get_mut(key) {
                ids.remove(id);
                if ids.is_empty() {
                    index.remove(key);
                }
            }
        }
        Some(offer)
    }

    /// The offers that differ between `before` and these, as (before, now): `None` where an
    /// offer is in only one of them. Between two copies of one board this walks only what
    /// changed in between, not every offer.
    pub fn changes_since<'a>(
        &'a self,
        before: &'a Offers,
    ) -> impl Iterator<Item = (Option<&'a Offer>, Option<&'a Offer>)> {
        before.by_id.diff(&self.by_id).map(|d| match d {
            imbl::ordmap::DiffItem::Add(_, o) => (None, Some(o)),
            imbl::ordmap::DiffItem::Remove(_, o) => (Some(o), None),
            imbl::ordmap::DiffItem::Update {
                old: (_, a),
                new: (_, b),
            } => (Some(a), Some(b)),
        })
    }

    /// What every offer holds together.
    pub fn total(&self) -> Resources {
        self.offered_within("")
    }

    /// What the offers for `role` and the roles under it hold together (`""`: every role).
    pub fn offered_within(&self, role: &str) -> Resources {
        crate::state::sum_within(self.by_role.iter().map(|(r, t)| (r.as_str(), t)), role)
    }

    /// The offers made to a framework, by id.
    pub fn of_framework<'a>(&'a self, framework_id: &str) -> impl Iterator<Item = &'a Offer> {
        self.of(&self.by_framework, framework_id)
    }

    /// The offers of an agent's resources, by id.
    pub fn on_agent<'a>(&'a self, agent_id: &str) -> impl Iterator<Item = &'a Offer> {
        self.of(&self.by_agent, agent_id)
    }

    fn of<'a>(
        &'a self,
        index: &'a ImHashMap<String, OrdSet<String>>,
        key: &str,
    ) -> impl Iterator<Item = &'a Offer> {
        index
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
    }
}

/// A local copy of the cluster: the replicated state from the state stream, what the leader
/// holds from the leader stream, and per-framework event lines and last errors derived from
/// both.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// The Raft log index of the last command applied (0 before the first snapshot).
    pub index: u64,
    /// How many snapshots were received.
    pub generation: u64,
    /// The replicated state.
    pub state: ClusterState,
    /// The leader this copy follows, while its leader stream is up.
    pub leader: Option<LeaderInfo>,
    /// Position of the last leader event applied (within `leader`'s leadership).
    pub leader_seq: u64,
    /// Outstanding offers (the leader's; none without a leader).
    pub offers: Offers,
    /// The masters as the leader last reported them.
    pub masters: Vec<MasterStatus>,
    /// Event lines per framework id.
    pub events: BTreeMap<FrameworkId, EventLog>,
    /// The last refused write per framework id.
    pub errors: BTreeMap<FrameworkId, String>,
    /// Why frameworks hold no offer, as the leader last said.
    pub why: BTreeMap<FrameworkId, String>,
}

impl View {
    /// Applies one event of the state stream. Returns the state a snapshot replaced, for the
    /// caller to drop outside any lock it holds (at 500,000 tasks the drop takes a while).
    pub fn apply_state(&mut self, event: StateEvent) -> Option<ClusterState> {
        match event {
            StateEvent::Snapshot { index, state } => {
                // A stream that resumed from a snapshot (the log no longer held the position)
                // skipped commands: the tasks' histories say which transitions it missed.
                if self.generation > 0 {
                    self.log_missed_transitions(&state);
                }
                self.index = index;
                self.generation += 1;
                Some(std::mem::replace(&mut self.state, state))
            }
            StateEvent::Applied { index, command } => {
                if index <= self.index {
                    return None;
                }
                let applied = self.state.apply(index, &command);
                self.log_applied(&applied);
                self.index = index;
                None
            }
        }
    }

    /// Logs the transitions and health changes a command made, in the order it made them.
    fn log_applied(&mut self, applied: &Applied) {
        if !applied.batch.is_empty() {
            for one in &applied.batch {
                self.log_applied(one);
            }
            return;
        }
        for n in &applied.transitions {
            let Some(t) = self.state.tasks.get(&n.task_id) else {
                continue;
            };
            if let Some(tr) = t.history.get(n.at) {
                let line = task_line(t, tr);
                let fw = t.framework_id.clone();
                self.log(&fw, line);
            }
        }
        for (id, h) in &applied.health {
            let Some(t) = self.state.tasks.get(id) else {
                continue;
            };
            let line = health_line(t, h);
            let fw = t.framework_id.clone();
            self.log(&fw, line);
        }
    }

    fn log_missed_transitions(&mut self, new: &ClusterState) {
        let mut lines = Vec::new();
        for t in new.tasks.values() {
            let seen = self
                .state
                .tasks
                .get(&t.id)
                .map_or(0, |old| old.history.len());
            for tr in t.history.iter().skip(seen) {
                lines.push((tr.time_ms, t.framework_id.clone(), task_line(t, tr)));
            }
            // Of the health changes it missed, only the latest is known.
            let seen_health = self
                .state
                .tasks
                .get(&t.id)
                .and_then(|old| old.health.as_ref())
                .map_or(0, |h| h.seq);
            if let Some(h) = t.health.as_ref().filter(|h| h.seq > seen_health) {
                lines.push((h.time_ms, t.framework_id.clone(), health_line(t, h)));
            }
        }
        lines.sort_by_key(|(time, _, _)| *time);
        for (_, fw, line) in lines {
            self.log(&fw, line);
        }
    }

    /// Applies one event of the leader stream.
    pub fn apply_leader(&mut self, event: &LeaderEvent) {
        match event {
            LeaderEvent::Leading {
                leader,
                offers,
                masters,
                why,
                ..
            } => {
                self.drop_offers("the leader changed");
                self.leader = Some(leader.clone());
                self.masters = masters.clone();
                self.why = why.clone();
                for o in offers {
                    self.offers.insert(o.clone());
                    self.log(&o.framework_id, offer_line(o));
                }
            }
            LeaderEvent::OfferCreated { offer, .. } => {
                self.offers.insert(offer.clone());
                self.log(&offer.framework_id, offer_line(offer));
            }
            LeaderEvent::OfferRemoved {
                offer_id,
                framework_id,
                reason,
                rescinded,
                ..
            } => {
                self.offers.remove(offer_id);
                if *rescinded {
                    self.log(framework_id, format!("rescind {offer_id} {reason}\n"));
                }
            }
            LeaderEvent::Refused {
                framework_id,
                message,
                ..
            } => self.record_refusal(framework_id, message),
            LeaderEvent::Masters { masters, .. } => self.masters = masters.clone(),
            LeaderEvent::Why {
                framework_id, text, ..
            } => {
                if text.is_empty() {
                    self.why.remove(framework_id);
                } else {
                    self.why.insert(framework_id.clone(), text.clone());
                }
            }
        }
        self.leader_seq = event.seq();
    }

    /// The leader stream ended: the copy has no leader, and the leader's offers are rescinded
    /// (they cannot be used: a new leader makes its own).
    pub fn leader_lost(&mut self, reason: &str) {
        self.leader = None;
        self.leader_seq = 0;
        self.drop_offers(reason);
        self.why.clear();
        for m in &mut self.masters {
            m.role = "unknown".into();
        }
    }

    fn drop_offers(&mut self, reason: &str) {
        let offers = std::mem::take(&mut self.offers);
        for o in offers.by_id.values() {
            self.log(&o.framework_id, format!("rescind {} {reason}\n", o.id));
        }
    }

    /// Records a refused write of a framework: its `error` file and an `error` line.
    pub fn record_refusal(&mut self, framework_id: &str, message: &str) {
        self.errors
            .insert(framework_id.to_string(), format!("{message}\n"));
        self.log(framework_id, format!("error {message}\n"));
    }

    fn log(&mut self, framework_id: &str, line: String) {
        self.events
            .entry(framework_id.to_string())
            .or_default()
            .push(line);
    }

    /// The offers made to a framework.
    pub fn framework_offers<'a>(
        &'a self,
        framework_id: &'a str,
    ) -> impl Iterator<Item = &'a Offer> {
        self.offers.of_framework(framework_id)
    }

    /// A task of a registered framework, by framework name and task name.
    pub fn task(&self, framework: &str, name: &str) -> Option<&TaskInfo> {
        let fw = self.state.framework_by_name(framework)?;
        self.state.tasks.get(&task_id(&fw.id, name)).map(|t| &**t)
    }
}

/// The `events` line of one task transition: `task <name> <STATE> [<reason>] [<message>]`.
fn task_line(t: &TaskInfo, tr: &Transition) -> String {
    let mut line = format!("task {} {}", t.name, tr.state.as_str());
    for part in [&tr.reason, &tr.message] {
        if !part.is_empty() {
            line.push(' ');
            line.push_str(part);
        }
    }
    line.push('\n');
    line
}

/// `health NAME true|false OUTPUT`: the first line of the check's output, if any.
fn health_line(t: &TaskInfo, h: &TaskHealth) -> String {
    let mut line = format!("health {} {}", t.name, h.healthy);
    let output = h.output.lines().map(str::trim).find(|l| !l.is_empty());
    if let Some(first) = output {
        line.push(' ');
        line.push_str(first);
    }
    line.push('\n');
    line
}

fn offer_line(o: &Offer) -> String {
    format!(
        "offer {} agent={} hostname={} resources={}\n",
        o.id, o.agent_id, o.hostname, o.resources
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_spec_line;
    use crate::state::{NewTask, TaskState};

    fn update(id: &str, state: TaskState) -> Command {
        Command::UpdateTask {
            task_id: id.into(),
            transition: Transition {
                state,
                reason: String::new(),
                message: String::new(),
                time_ms: 3,
                exit_code: None,
                signal: None,
            },
        }
    }

    fn offer(id: &str, framework: &str, agent: &str) -> Offer {
        Offer {
            id: id.into(),
            framework_id: framework.into(),
            agent_id: agent.into(),
            hostname: "h".into(),
            resources: Resources::parse("cpus:1;mem:10").unwrap(),
            role: "*".into(),
            created_ms: 1,
            optimistic: false,
        }
    }

    #[test]
    fn offers_are_found_by_framework_and_by_agent_as_they_come_and_go() {
        let mut offers = Offers::default();
        offers.insert(offer("1-1", "f1", "a1"));
        offers.insert(offer("1-2", "f1", "a2"));
        offers.insert(offer("1-3", "f2", "a1"));
        let ids = |it: Vec<&Offer>| it.iter().map(|o| o.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(offers.of_framework("f1").collect()), ["1-1", "1-2"]);
        assert_eq!(ids(offers.on_agent("a1").collect()), ["1-1", "1-3"]);
        // A changed offer (a launch used part of it) replaces the one with its id.
        let mut smaller = offer("1-1", "f1", "a1");
        smaller.resources = Resources::parse("cpus:0.5;mem:5").unwrap();
        offers.insert(smaller.clone());
        assert_eq!(offers.len(), 3);
        assert_eq!(offers.on_agent("a1").next(), Some(&smaller));
        assert_eq!(
            offers.total(),
            Resources::parse("cpus:2.5;mem:25").unwrap(),
            "the role's sum moved with it"
        );
        assert_eq!(offers.remove("1-1"), Some(smaller));
        assert_eq!(ids(offers.of_framework("f1").collect()), ["1-2"]);
        assert_eq!(ids(offers.on_agent("a1").collect()), ["1-3"]);
        offers.remove("1-2");
        offers.remove("1-3");
        assert!(offers.is_empty() && offers.by_framework.is_empty() && offers.by_agent.is_empty());
        assert!(offers.by_role.is_empty());
        assert_eq!(offers.of_framework("f1").count(), 0);
    }

    #[test]
    fn each_transition_of_a_batch_is_its_own_events_line_in_order() {
        let mut v = View::default();
        v.apply_state(StateEvent::Snapshot {
            index: 0,
            state: ClusterState::default(),
        });
        let spec = parse_spec_line("name=t -- true").unwrap();
        let setup = vec![
            Command::RegisterAgent {
                agent: crate::state::AgentInfo {
                    id: "a".into(),
                    hostname: "h".into(),
                    address: "h:1".into(),
                    resources: Resources::parse("cpus:1;mem:64").unwrap(),
                    state: crate::state::AgentState::Active,
                    registered_ms: 0,
                    registration: 0,
                    attributes: Default::default(),
                },
                running: vec![],
            },
            Command::RegisterFramework {
                name: "f".into(),
                user: "root".into(),
                principal: None,
                uid: 0,
                gid: 0,
                time_ms: 1,
            },
            Command::LaunchTasks {
                role: "*".into(),
                framework_id: "f-1".into(),
                agent_id: "a".into(),
                tasks: vec![NewTask {
                    resources: spec.resources(),
                    spec,
                    ports: vec![],
                }],
                time_ms: 2,
            },
        ];
        v.apply_state(StateEvent::Applied {
            index: 1,
            command: Command::Batch(setup),
        });
        let health = |healthy, seq, output: &str| Command::TaskHealth {
            task_id: "f-1.t".into(),
            health: TaskHealth {
                healthy,
                seq,
                output: output.into(),
                time_ms: 3,
            },
        };
        // Two updates of one task in one entry: each its own line, not the last one twice.
        // Health changes get lines of their own, with the first line of the check's output;
        // one sent again gets none.
        v.apply_state(StateEvent::Applied {
            index: 2,
            command: Command::Batch(vec![
                update("f-1.t", TaskState::Running),
                health(true, 1, ""),
                health(false, 2, "\nHTTP/1.1 503 Service Unavailable\nmore"),
                health(false, 2, "again"),
                update("f-1.t", TaskState::Finished),
            ]),
        });
        let lines: Vec<&str> = v.events["f-1"].lines.iter().map(String::as_str).collect();
        assert_eq!(
            lines,
            [
                "task t TASK_STAGING\n",
                "task t TASK_RUNNING\n",
                "health t true\n",
                "health t false HTTP/1.1 503 Service Unavailable\n",
                "task t TASK_FINISHED\n",
            ]
        );
        assert_eq!(v.index, 2);
    }
}
