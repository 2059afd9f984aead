//! The replicated cluster state and the commands that change it.
//!
//! Every change to durable cluster state is a [`Command`] in the Raft log. [`ClusterState::apply`]
//! is deterministic: the leader, every follower and every mount's local copy apply the same
//! commands in the same order and reach the same state. Times are stamped by the proposer and
//! carried in the command, never read from the clock during apply.

use std::collections::BTreeMap;
use std::sync::Arc;

use imbl::{HashMap, OrdMap, OrdSet};

use serde::{Deserialize, Serialize};

use crate::allocator::roles::{RoleInfo, RoleSetting, DEFAULT_ROLE};
use crate::health::TaskHealth;
use crate::resources::{split_key, Resources, Tally};
use crate::spec::TaskSpec;

pub mod clients;

use clients::{Clients, WriteId};

/// An agent's cluster-unique id, chosen by the agent and kept in its work directory.
pub type AgentId = String;
/// A framework's cluster-unique id: its name plus a registration number (`hello-3`).
pub type FrameworkId = String;

/// A task's cluster-unique id: framework id and task name joined by a dot (`hello-3.greet`).
pub fn task_id(framework_id: &str, name: &str) -> String {
    format!("{framework_id}.{name}")
}

/// Whether an agent is connected to the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentState {
    /// Registered and connected.
    Active,
    /// Its session ended; its tasks are kept until it re-registers or the re-registration
    /// timeout passes.
    Disconnected,
    /// It did not come back within the re-registration timeout: its tasks were marked
    /// TASK_LOST. It may still register again, and is then told to kill what it still runs.
    Lost,
}

impl AgentState {
    /// The lower-case word shown in the filesystem.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Active => "active",
            AgentState::Disconnected => "disconnected",
            AgentState::Lost => "lost",
        }
    }
}

/// A registered agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The agent's id.
    pub id: AgentId,
    /// The host it runs on.
    pub hostname: String,
    /// The address of its file service (`host:port`), where sandboxes are read.
    pub address: String,
    /// Everything it offers to the cluster.
    pub resources: Resources,
    /// Connected or not.
    pub state: AgentState,
    /// When it first registered (unix ms).
    pub registered_ms: u64,
    /// Its attributes (`rack:r1`), for frameworks to place by.
    #[serde(
        default,
        skip_serializing_if = "crate::attributes::Attributes::is_empty"
    )]
    pub attributes: crate::attributes::Attributes,
    /// The log index of its latest registration: names the session that disconnect and
    /// removal commands refer to, so a stale one cannot undo a newer registration.
    #[serde(default)]
    pub registration: u64,
}

/// A registered framework.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameworkInfo {
    /// Its id (`name-N`).
    pub id: FrameworkId,
    /// Its name: the directory under `/frameworks`.
    pub name: String,
    /// Its owner's user name: its tasks run as this user on every agent (empty for frameworks
    /// from before user names, whose tasks run as `uid`).
    #[serde(default)]
    pub user: String,
    /// The principal of the mount it was made through (none: an `--insecure` master).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The uid that registered it on its mount's machine.
    pub uid: u32,
    /// The gid of its directory.
    pub gid: u32,
    /// Its first role (`*` by default); see [`FrameworkInfo::roles`].
    pub role: String,
    /// Every role it takes offers for (empty: just `role`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Whether it asked for no offers (`suppressed`), until it revives.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suppressed: bool,
    /// Whether it takes optimistic offers (`optimistic`): free resources offered to several
    /// such frameworks at once, the first launch to commit winning.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optimistic: bool,
    /// When it registered (unix ms).
    pub registered_ms: u64,
    /// Set when it was torn down; a torn-down framework keeps its history but is no longer listed.
    pub removed_ms: Option<u64>,
}

/// The lifecycle state of a task, named as in Mesos.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaskState {
    /// Accepted by the master, being sent to the agent.
    Staging,
    /// The agent is preparing it.
    Starting,
    /// Its process runs.
    Running,
    /// A kill was requested and is in progress.
    Killing,
    /// It exited with status 0.
    Finished,
    /// It exited otherwise, or could not start.
    Failed,
    /// It was killed on request.
    Killed,
    /// Its agent lost track of it.
    Lost,
}

impl TaskState {
    /// True once the task can change no more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Finished | TaskState::Failed | TaskState::Killed | TaskState::Lost
        )
    }

    /// The Mesos name (`TASK_RUNNING`).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Staging => "TASK_STAGING",
            TaskState::Starting => "TASK_STARTING",
            TaskState::Running => "TASK_RUNNING",
            TaskState::Killing => "TASK_KILLING",
            TaskState::Finished => "TASK_FINISHED",
            TaskState::Failed => "TASK_FAILED",
            TaskState::Killed => "TASK_KILLED",
            TaskState::Lost => "TASK_LOST",
        }
    }

    /// Parses a Mesos name.
    pub fn parse(s: &str) -> Option<TaskState> {
        [
            TaskState::Staging,
            TaskState::Starting,
            TaskState::Running,
            TaskState::Killing,
            TaskState::Finished,
            TaskState::Failed,
            TaskState::Killed,
            TaskState::Lost,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// One state transition of a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The state entered.
    pub state: TaskState,
    /// A machine-readable reason (`REASON_COMMAND_EXITED`), may be empty.
    pub reason: String,
    /// A human-readable message, may be empty.
    pub message: String,
    /// When it happened (unix ms).
    pub time_ms: u64,
    /// The command's exit status, on the transition that ended a task whose command exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that killed the command, on the transition that ended such a task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

/// A task and its whole history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Cluster-unique id (`framework.task`).
    pub id: String,
    /// The task's name within its framework.
    pub name: String,
    /// The framework that launched it.
    pub framework_id: FrameworkId,
    /// The agent it runs on.
    pub agent_id: AgentId,
    /// What was asked for.
    pub spec: TaskSpec,
    /// What it holds: the spec's scalars plus its assigned ports.
    pub resources: Resources,
    /// The role its resources are allocated to: the role of the offer it was launched from.
    #[serde(default = "default_role")]
    pub role: String,
    /// The ports assigned to it, in the order of `PORT0`, `PORT1`...
    pub ports: Vec<u64>,
    /// Set once a kill was requested.
    pub kill_requested: bool,
    /// Every state it went through, oldest first; never empty.
    pub history: Vec<Transition>,
    /// Its health as its health check last found it; none without a check, or before its
    /// first counted result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<TaskHealth>,
}

impl TaskInfo {
    /// The latest state.
    pub fn state(&self) -> TaskState {
        self.last().state
    }

    /// The latest transition.
    pub fn last(&self) -> &Transition {
        self.history
            .last()
            .expect("a task always has at least one transition")
    }
}

/// A task accepted for launch, as carried in [`Command::LaunchTasks`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTask {
    /// The spec as written.
    pub spec: TaskSpec,
    /// The resources taken from the offer, including ports.
    pub resources: Resources,
    /// The ports assigned.
    pub ports: Vec<u64>,
}

/// Every change to the replicated state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// An agent registered or re-registered, reporting the tasks it still runs.
    RegisterAgent {
        /// The agent as it describes itself.
        agent: AgentInfo,
        /// Ids of the tasks it runs now; its other non-terminal tasks are lost.
        running: Vec<String>,
    },
    /// An agent's session ended.
    DisconnectAgent {
        /// Which agent.
        agent_id: AgentId,
        /// The registration whose session ended; refused if the agent registered since.
        #[serde(default)]
        registration: Option<u64>,
        /// When (unix ms).
        time_ms: u64,
    },
    /// An agent stayed away past the re-registration timeout: its live tasks are lost.
    RemoveAgent {
        /// Which agent.
        agent_id: AgentId,
        /// The registration that went away; refused if the agent registered since.
        registration: u64,
        /// Why, for the tasks' TASK_LOST message.
        message: String,
        /// When (unix ms).
        time_ms: u64,
    },
    /// A framework registered (a `mkdir` under `/frameworks`).
    RegisterFramework {
        /// Its directory name.
        name: String,
        /// Its owner's user name (empty in logs from before user names).
        #[serde(default)]
        user: String,
        /// The principal of the mount it was made through (`mount:web1`; none when that master
        /// ran `--insecure`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        principal: Option<String>,
        /// Owner uid.
        uid: u32,
        /// Owner gid.
        gid: u32,
        /// When (unix ms).
        time_ms: u64,
    },
    /// A framework was torn down (an `rmdir`); its live tasks are marked for killing.
    TeardownFramework {
        /// Which framework.
        framework_id: FrameworkId,
        /// When (unix ms).
        time_ms: u64,
    },
    /// Tasks launched on an agent from one offer, all or none.
    LaunchTasks {
        /// The launching framework.
        framework_id: FrameworkId,
        /// The agent they go to.
        agent_id: AgentId,
        /// The role of the offer they are launched from.
        #[serde(default = "default_role")]
        role: String,
        /// The tasks.
        tasks: Vec<NewTask>,
        /// When (unix ms).
        time_ms: u64,
    },
    /// A framework's roles changed (a write to its `role` file).
    SetFrameworkRoles {
        /// Which framework.
        framework_id: FrameworkId,
        /// Its roles now, the first one first.
        roles: Vec<String>,
    },
    /// A framework stopped or resumed taking offers (`suppressed`, `revive`).
    SuppressFramework {
        /// Which framework.
        framework_id: FrameworkId,
        /// True: no offers until it revives.
        suppressed: bool,
    },
    /// A framework started or stopped taking optimistic offers (`optimistic`).
    SetOptimistic {
        /// Which framework.
        framework_id: FrameworkId,
        /// True: it is offered resources other optimistic frameworks are offered too.
        optimistic: bool,
    },
    /// A role's weight or quota changed (a write to `roles/<role>/<file>`).
    ConfigureRole {
        /// Which role.
        role: String,
        /// What changed.
        setting: RoleSetting,
    },
    /// Free resources of an agent reserved for roles (a write to `offers/<id>/reserve`).
    Reserve {
        /// Which agent.
        agent_id: AgentId,
        /// What, each amount keyed by the role it is reserved for (`cpus(eng):1`).
        resources: Resources,
    },
    /// Dynamically reserved free resources given back (a write to `offers/<id>/unreserve`).
    Unreserve {
        /// Which agent.
        agent_id: AgentId,
        /// What, keyed by the role it was reserved for.
        resources: Resources,
    },
    /// A kill was requested.
    KillTask {
        /// The task's cluster-unique id.
        task_id: String,
        /// When (unix ms).
        time_ms: u64,
    },
    /// An agent reported a task's new state.
    UpdateTask {
        /// The task's cluster-unique id.
        task_id: String,
        /// The state and why.
        transition: Transition,
    },
    /// A running task's health changed, as its agent reports it.
    TaskHealth {
        /// The task's cluster-unique id.
        task_id: String,
        /// Its health now.
        health: TaskHealth,
    },
    /// Commands proposed together, applied in order at one log index.
    Batch(Vec<Command>),
    /// A client's write: applied once, however often the client sends it.
    Write {
        /// Which write of which client.
        id: WriteId,
        /// When the leader proposed it (unix ms).
        time_ms: u64,
        /// What it does.
        command: Box<Command>,
    },
}

/// A transition a command added to a task: which task, and where in its history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTransition {
    /// The task's cluster-unique id.
    pub task_id: String,
    /// The transition's position in the task's history.
    pub at: usize,
}

/// Why a command was refused by the state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StateError {
    /// A framework of that name is registered already.
    #[error("a framework named {0:?} already exists; pick another name or rmdir it first")]
    FrameworkExists(String),
    /// No such framework.
    #[error("no framework {0:?} is registered")]
    NoFramework(String),
    /// No such agent.
    #[error("no agent {0:?} is registered")]
    NoAgent(String),
    /// No such task.
    #[error("no task {0:?}")]
    NoTask(String),
    /// The task name is taken in this framework.
    #[error("task {0:?} already exists in this framework; task names are unique per framework")]
    TaskExists(String),
    /// The task has ended already.
    #[error("task {0:?} has already ended")]
    TaskEnded(String),
    /// A role cannot take this setting.
    #[error("role {0:?}: {1}")]
    BadRoleSetting(String, String),
    /// A reservation cannot be made or given back.
    #[error("{0}")]
    Reservation(String),
    /// The agent registered again after the session a command refers to.
    #[error("agent {0:?} has registered again since; the command refers to an older session")]
    StaleRegistration(String),
}

/// The result of applying one command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The refusal, if the command changed nothing.
    pub error: Option<StateError>,
    /// The framework id a registration created.
    pub framework_id: Option<FrameworkId>,
    /// Tasks that must now be killed on their agents (after a teardown or kill, or tasks a
    /// re-registering agent runs that have ended here or are unknown).
    pub to_kill: Vec<String>,
    /// Tasks a re-registering agent must be told to launch: committed, never started there.
    #[serde(default)]
    pub to_launch: Vec<String>,
    /// The transitions tasks gained, in order.
    #[serde(default)]
    pub transitions: Vec<NewTransition>,
    /// The health changes tasks gained, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health: Vec<(String, TaskHealth)>,
    /// For a [`Command::Batch`], what each of its commands did, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch: Vec<Applied>,
    /// Set when the command was a write applied before (a client retrying it): the log index
    /// of its first application. It changed nothing this time.
    #[serde(default)]
    pub duplicate_of: Option<u64>,
}

impl Applied {
    fn refused(err: StateError) -> Applied {
        Applied {
            error: Some(err),
            ..Applied::default()
        }
    }
}

/// Ended tasks kept per framework; older ones leave the state (as in Mesos's
/// `max_completed_tasks_per_framework`), so it does not grow without bound.
pub const MAX_COMPLETED_TASKS_PER_FRAMEWORK: usize = 1000;
/// Torn-down frameworks kept, with their tasks, once all their tasks have ended.
pub const MAX_COMPLETED_FRAMEWORKS: usize = 50;

/// The whole replicated state.
///
/// Its large maps, and those of its lookups, are persistent (structurally shared) maps: a clone
/// costs a few pointer copies whatever the state's size, and a change after it copies only the
/// nodes on its path. A snapshot (Raft's, or a new watcher's) is such a clone taken under the
/// state's lock, encoded outside it. They serialize exactly as the `BTreeMap`s they replaced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub struct ClusterState {
    /// Agents by id.
    pub agents: OrdMap<AgentId, AgentInfo>,
    /// Frameworks by id, including torn-down ones.
    pub frameworks: OrdMap<FrameworkId, FrameworkInfo>,
    /// Tasks by cluster-unique id. Each behind its own `Arc`: a change to a task a snapshot's
    /// copy still shares copies that task, not the 16 others of its tree node.
    pub tasks: OrdMap<String, Arc<TaskInfo>>,
    /// How many frameworks ever registered; numbers framework ids.
    pub framework_seq: u64,
    /// The Raft log index of the last command applied.
    pub applied_index: u64,
    /// The outcomes of writes their clients may still retry.
    #[serde(default)]
    pub clients: Clients,
    /// What is set on roles (weights, quotas), by role path.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub roles: BTreeMap<String, RoleInfo>,
    /// Dynamic reservations (`offers/<id>/reserve`), by agent: kept across the agent's
    /// re-registrations, and already counted in its `resources`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reservations: BTreeMap<AgentId, Resources>,
    /// Lookups kept as commands apply, so that none costs a scan of every framework or task;
    /// not stored, rebuilt when a state is read back.
    #[serde(skip)]
    index: Box<Index>,
}

/// The lookups [`ClusterState`] keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Index {
    /// Registered (not torn-down) frameworks' ids, by name.
    by_name: HashMap<String, FrameworkId>,
    /// Task ids, by the agent they are placed on.
    by_agent: HashMap<AgentId, OrdSet<String>>,
    /// Ended tasks by framework, oldest first (the time of their end, their id).
    ended: HashMap<FrameworkId, OrdSet<(u64, String)>>,
    /// What live tasks hold.
    allocations: Allocations,
    /// Registered frameworks' names, by each role they take.
    role_frameworks: HashMap<String, OrdSet<String>>,
    /// How many agents (of any state) hold reservations for each role.
    reserving: HashMap<String, usize>,
    /// What agents not lost have reserved, by the role each reservation is for.
    reserved: HashMap<String, Tally>,
    /// What the active agents have together.
    active_total: Tally,
    /// What live tasks hold together.
    allocated_total: Tally,
}

/// What live tasks hold, kept as tasks start and end. Persistent maps: a copy (an allocation
/// pass takes one) costs nothing however many agents and frameworks hold resources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocations {
    /// By agent (agents whose tasks hold nothing left out); ordered, so that the allocator
    /// finds what changed between two copies without a walk of every agent.
    pub by_agent: OrdMap<AgentId, Resources>,
    /// By (role, framework), torn-down frameworks' included: tallies, since a framework's
    /// tasks on different agents may hold the same ports.
    pub held: HashMap<(String, FrameworkId), Tally>,
}

impl Index {
    /// Counts a live task's resources.
    fn task_live(&mut self, t: &TaskInfo) {
        let sums = &mut self.allocations;
        sums.by_agent
            .entry(t.agent_id.clone())
            .or_default()
            .add_assign(&t.resources);
        let key = (t.role.clone(), t.framework_id.clone());
        sums.held.entry(key).or_default().add(&t.resources);
        self.allocated_total.add(&t.resources);
    }

    /// No longer counts an ended task's resources, and keeps it among its framework's ended.
    fn task_ended(&mut self, t: &TaskInfo) {
        self.release(t);
        self.ended
            .entry(t.framework_id.clone())
            .or_default()
            .insert((t.last().time_ms, t.id.clone()));
    }

    /// Counts a registered framework among its roles'.
    fn framework_in(&mut self, f: &FrameworkInfo) {
        if f.removed_ms.is_some() {
            return;
        }
        for role in f.roles() {
            self.role_frameworks
                .entry(role.to_string())
                .or_default()
                .insert(f.name.clone());
        }
    }

    /// No longer counts a framework among its roles' (before it changes or is torn down).
    fn framework_out(&mut self, f: &FrameworkInfo) {
        if f.removed_ms.is_some() {
            return;
        }
        for role in f.roles() {
            if let Some(names) = self.role_frameworks.get_mut(role) {
                names.remove(&f.name);
                if names.is_empty() {
                    self.role_frameworks.remove(role);
                }
            }
        }
    }

    /// Counts an agent's resources: among the active agents', and its reservations by role.
    fn agent_in(&mut self, a: &AgentInfo) {
        if a.state == AgentState::Active {
            self.active_total.add(&a.resources);
        }
        for (role, r) in reservations_by_role(&a.resources) {
            *self.reserving.entry(role.clone()).or_default() += 1;
            if a.state != AgentState::Lost {
                self.reserved.entry(role).or_default().add(&r);
            }
        }
    }

    /// No longer counts an agent's resources (before it changes).
    fn agent_out(&mut self, a: &AgentInfo) {
        if a.state == AgentState::Active {
            self.active_total.remove(&a.resources);
        }
        for (role, r) in reservations_by_role(&a.resources) {
            if let Some(n) = self.reserving.get_mut(&role) {
                *n -= 1;
                if *n == 0 {
                    self.reserving.remove(&role);
                }
            }
            if a.state == AgentState::Lost {
                continue;
            }
            if let Some(held) = self.reserved.get_mut(&role) {
                held.remove(&r);
                if held.is_empty() {
                    self.reserved.remove(&role);
                }
            }
        }
    }

    /// No longer counts a task's resources.
    fn release(&mut self, t: &TaskInfo) {
        let sums = &mut self.allocations;
        if let Some(a) = sums.by_agent.get_mut(&t.agent_id) {
            *a = a.saturating_sub(&t.resources);
            if a.is_empty() {
                sums.by_agent.remove(&t.agent_id);
            }
        }
        let key = (t.role.clone(), t.framework_id.clone());
        if let Some(h) = sums.held.get_mut(&key) {
            h.remove(&t.resources);
            if h.is_empty() {
                sums.held.remove(&key);
            }
        }
        self.allocated_total.remove(&t.resources);
    }
}

/// The sum of the tallies of `role` and the roles under it (`""`: of every role).
pub fn sum_within<'a>(
    tallies: impl Iterator<Item = (&'a str, &'a Tally)>,
    role: &str,
) -> Resources {
    let mut out = Resources::new();
    for (r, tally) in tallies {
        if role.is_empty() || crate::allocator::drf::is_within(r, role) {
            out.add_assign(&tally.sum());
        }
    }
    out
}

/// An agent's reservations, by the role each is for.
fn reservations_by_role(r: &Resources) -> BTreeMap<String, Resources> {
    let mut out: BTreeMap<String, Resources> = BTreeMap::new();
    for (key, v) in r.iter() {
        if let Some(role) = split_key(key).1 {
            let one = Resources::new().with_value(key, v.clone());
            out.entry(role.to_string()).or_default().add_assign(&one);
        }
    }
    out
}

/// The stored form of a [`ClusterState`]: everything but its lookups.
#[derive(Deserialize)]
struct Stored {
    agents: OrdMap<AgentId, AgentInfo>,
    frameworks: OrdMap<FrameworkId, FrameworkInfo>,
    tasks: OrdMap<String, Arc<TaskInfo>>,
    framework_seq: u64,
    applied_index: u64,
    #[serde(default)]
    clients: Clients,
    #[serde(default)]
    roles: BTreeMap<String, RoleInfo>,
    #[serde(default)]
    reservations: BTreeMap<AgentId, Resources>,
}

impl From<Stored> for ClusterState {
    fn from(s: Stored) -> ClusterState {
        let mut index = Index::default();
        for f in s.frameworks.values().filter(|f| f.removed_ms.is_none()) {
            index.by_name.insert(f.name.clone(), f.id.clone());
            index.framework_in(f);
        }
        for a in s.agents.values() {
            index.agent_in(a);
        }
        for t in s.tasks.values() {
            index
                .by_agent
                .entry(t.agent_id.clone())
                .or_default()
                .insert(t.id.clone());
            if t.state().is_terminal() {
                index
                    .ended
                    .entry(t.framework_id.clone())
                    .or_default()
                    .insert((t.last().time_ms, t.id.clone()));
            } else {
                index.task_live(t);
            }
        }
        ClusterState {
            agents: s.agents,
            frameworks: s.frameworks,
            tasks: s.tasks,
            framework_seq: s.framework_seq,
            applied_index: s.applied_index,
            clients: s.clients,
            roles: s.roles,
            reservations: s.reservations,
            index: Box::new(index),
        }
    }
}

/// The role of everything from before roles.
fn default_role() -> String {
    DEFAULT_ROLE.to_string()
}

impl FrameworkInfo {
    /// Every role it takes offers for, the first one first.
    pub fn roles(&self) -> Vec<&str> {
        if self.roles.is_empty() {
            vec![self.role.as_str()]
        } else {
            self.roles.iter().map(String::as_str).collect()
        }
    }
}

impl ClusterState {
    /// The registered (not torn-down) framework with this name.
    pub fn framework_by_name(&self, name: &str) -> Option<&FrameworkInfo> {
        self.frameworks.get(self.index.by_name.get(name)?)
    }

    /// How many frameworks are registered (not torn down).
    pub fn active_framework_count(&self) -> usize {
        self.index.by_name.len()
    }

    /// Registered frameworks, by name.
    pub fn active_frameworks(&self) -> impl Iterator<Item = &FrameworkInfo> {
        self.frameworks.values().filter(|f| f.removed_ms.is_none())
    }

    /// A framework's tasks, by name: those whose ids start with its id and a dot.
    pub fn framework_tasks<'a>(
        &'a self,
        framework_id: &'a str,
    ) -> impl Iterator<Item = &'a TaskInfo> {
        let prefix = format!("{framework_id}.");
        self.tasks
            .range(prefix.clone()..)
            .take_while(move |(id, _)| id.starts_with(&prefix))
            .map(|(_, t)| &**t)
            .filter(move |t| t.framework_id == framework_id)
    }

    /// Tasks placed on an agent.
    pub fn agent_tasks<'a>(&'a self, agent_id: &'a str) -> impl Iterator<Item = &'a TaskInfo> {
        self.index
            .by_agent
            .get(agent_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id).map(|t| &**t))
    }

    /// Removes a task from the state and its lookups.
    fn remove_task(&mut self, id: &str) {
        let Some(t) = self.tasks.remove(id) else {
            return;
        };
        if !t.state().is_terminal() {
            self.index.release(&t);
        }
        if let Some(ids) = self.index.by_agent.get_mut(&t.agent_id) {
            ids.remove(id);
            if ids.is_empty() {
                self.index.by_agent.remove(&t.agent_id);
            }
        }
        if let Some(ended) = self.index.ended.get_mut(&t.framework_id) {
            ended.remove(&(t.last().time_ms, t.id.clone()));
            if ended.is_empty() {
                self.index.ended.remove(&t.framework_id);
            }
        }
    }

    /// Resources held by an agent's non-terminal tasks.
    pub fn allocated_on(&self, agent_id: &str) -> Resources {
        self.index
            .allocations
            .by_agent
            .get(agent_id)
            .cloned()
            .unwrap_or_default()
    }

    /// What live tasks hold, by agent (agents whose tasks hold nothing left out).
    pub fn allocated_by_agent(&self) -> impl Iterator<Item = (&str, &Resources)> {
        self.index
            .allocations
            .by_agent
            .iter()
            .map(|(a, r)| (a.as_str(), r))
    }

    /// What live tasks hold, by role and framework (torn-down frameworks' included).
    pub fn allocated_by_role(&self) -> impl Iterator<Item = (&str, &str, Resources)> {
        self.index
            .allocations
            .held
            .iter()
            .map(|((role, fw), r)| (role.as_str(), fw.as_str(), r.sum()))
    }

    /// The roles that registered frameworks take or agents hold reservations for, each once
    /// (roles with settings only are in [`ClusterState::roles`]).
    pub fn roles_in_use(&self) -> impl Iterator<Item = &str> {
        let taken = self.index.role_frameworks.keys();
        let reserved = self
            .index
            .reserving
            .keys()
            .filter(|r| !self.index.role_frameworks.contains_key(*r));
        taken.chain(reserved).map(String::as_str)
    }

    /// The names of the registered frameworks that take `role`, in order.
    pub fn role_framework_names(&self, role: &str) -> impl Iterator<Item = &str> {
        self.index
            .role_frameworks
            .get(role)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// What live tasks of `role` and the roles under it hold.
    pub fn allocated_within(&self, role: &str) -> Resources {
        let held = self.index.allocations.held.iter();
        sum_within(held.map(|((r, _), t)| (r.as_str(), t)), role)
    }

    /// What agents not lost have reserved for `role` and the roles under it.
    pub fn reserved_within(&self, role: &str) -> Resources {
        let reserved = self.index.reserved.iter();
        sum_within(reserved.map(|(r, t)| (r.as_str(), t)), role)
    }

    /// What the active agents have together.
    pub fn active_total(&self) -> Resources {
        self.index.active_total.sum()
    }

    /// What live tasks hold together.
    pub fn allocated_total(&self) -> Resources {
        self.index.allocated_total.sum()
    }

    /// A copy of what live tasks hold, by agent and by (role, framework): it costs nothing.
    pub fn allocations(&self) -> Allocations {
        self.index.allocations.clone()
    }

    /// An agent's free resources: neither held by live tasks nor (for the caller to subtract)
    /// offered.
    fn free_on(&self, agent: &AgentInfo) -> Resources {
        agent
            .resources
            .checked_sub(&self.allocated_on(&agent.id))
            .unwrap_or_default()
    }

    /// Whether `resources` (amounts keyed by their roles) can be reserved on an agent now:
    /// it has them unreserved and free.
    pub fn check_reserve(&self, agent_id: &str, resources: &Resources) -> Result<(), StateError> {
        let agent = self
            .agents
            .get(agent_id)
            .ok_or_else(|| StateError::NoAgent(agent_id.to_string()))?;
        if resources.is_empty() || !resources.unreserved().is_empty() {
            return Err(StateError::Reservation(format!(
                "nothing to reserve in {:?}: give amounts keyed by their role, e.g. cpus(eng):1",
                resources.to_string()
            )));
        }
        let amounts = resources.flatten();
        let free = self.free_on(agent).unreserved();
        if !free.contains(&amounts) {
            return Err(StateError::Reservation(format!(
                "agent {agent_id} has {free} unreserved and free, not {amounts}"
            )));
        }
        Ok(())
    }

    /// Whether `resources` (keyed by their roles) can be given back on an agent now: they
    /// were reserved by writes to `reserve` (not by its `--resources`) and are free.
    pub fn check_unreserve(&self, agent_id: &str, resources: &Resources) -> Result<(), StateError> {
        let agent = self
            .agents
            .get(agent_id)
            .ok_or_else(|| StateError::NoAgent(agent_id.to_string()))?;
        let dynamic = self.reservations.get(agent_id).cloned().unwrap_or_default();
        if resources.is_empty() || !dynamic.contains(resources) {
            return Err(StateError::Reservation(format!(
                "agent {agent_id} holds {} reserved by writes to reserve, not {resources}; a static reservation changes only with the agent's --resources",
                if dynamic.is_empty() { "nothing".to_string() } else { dynamic.to_string() }
            )));
        }
        let free = self.free_on(agent);
        if !free.contains(resources) {
            let free_of_it = resources
                .iter()
                .filter_map(|(k, _)| Some((k, free.get(k)?.clone())))
                .fold(Resources::new(), |acc, (k, v)| acc.with_value(k, v));
            return Err(StateError::Reservation(format!(
                "agent {agent_id} has only {:?} of {resources} free: tasks hold the rest",
                free_of_it.to_string()
            )));
        }
        Ok(())
    }

    /// Reserves free unreserved resources of an agent for the roles `resources` names.
    fn reserve(&mut self, agent_id: &str, resources: &Resources) -> Result<(), StateError> {
        self.check_reserve(agent_id, resources)?;
        let agent = self.agents.get_mut(agent_id).expect("checked");
        self.index.agent_out(agent);
        agent.resources = agent
            .resources
            .checked_sub(&resources.flatten())
            .expect("checked: held")
            .add(resources);
        self.index.agent_in(agent);
        let r = self.reservations.entry(agent_id.to_string()).or_default();
        *r = r.add(resources);
        Ok(())
    }

    /// Gives back free resources of an agent dynamically reserved for the roles they name.
    fn unreserve(&mut self, agent_id: &str, resources: &Resources) -> Result<(), StateError> {
        self.check_unreserve(agent_id, resources)?;
        let agent = self.agents.get_mut(agent_id).expect("checked");
        self.index.agent_out(agent);
        agent.resources = agent
            .resources
            .checked_sub(resources)
            .expect("checked: held")
            .add(&resources.flatten());
        self.index.agent_in(agent);
        let rest = self.reservations[agent_id]
            .checked_sub(resources)
            .expect("checked: reserved");
        if rest.is_empty() {
            self.reservations.remove(agent_id);
        } else {
            self.reservations.insert(agent_id.to_string(), rest);
        }
        Ok(())
    }

    /// An agent's resources as it registers them (`registered`, static reservations
    /// included) with its dynamic reservations made again; those that no longer fit (the
    /// agent came back with less) are dropped.
    fn reapply_reservations(&mut self, agent_id: &str, registered: &Resources) -> Resources {
        let Some(dynamic) = self.reservations.remove(agent_id) else {
            return registered.clone();
        };
        let mut total = registered.clone();
        let mut kept = Resources::new();
        for (key, value) in dynamic.iter() {
            let one = Resources::new().with_value(key, value.clone());
            let amounts = one.flatten().into_owned();
            match total.unreserved().contains(&amounts) {
                true => {
                    total = total.checked_sub(&amounts).expect("checked").add(&one);
                    kept = kept.add(&one);
                }
                false => tracing::warn!(
                    agent = agent_id,
                    reservation = %one,
                    "the agent re-registered without room for a dynamic reservation: dropped"
                ),
            }
        }
        if !kept.is_empty() {
            self.reservations.insert(agent_id.to_string(), kept);
        }
        total
    }

    /// Applies one committed command at a log index. Deterministic; refusals change nothing.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Applied {
        self.applied_index = self.applied_index.max(index);
        match cmd {
            Command::Batch(commands) => {
                let batch: Vec<Applied> = commands.iter().map(|c| self.apply(index, c)).collect();
                Applied {
                    transitions: batch.iter().flat_map(|a| a.transitions.clone()).collect(),
                    health: batch.iter().flat_map(|a| a.health.clone()).collect(),
                    batch,
                    ..Applied::default()
                }
            }
            Command::Write {
                id,
                time_ms,
                command,
            } => {
                if let Some(answer) = self.clients.begin(id, *time_ms) {
                    return answer;
                }
                let applied = self.apply(index, command);
                self.clients.finish(id, index, &applied);
                applied
            }
            Command::RegisterAgent { agent, running } => {
                let time_ms = agent.registered_ms;
                let mut info = agent.clone();
                if let Some(old) = self.agents.get(&agent.id) {
                    info.registered_ms = old.registered_ms;
                    self.index.agent_out(old);
                }
                info.state = AgentState::Active;
                info.registration = index;
                info.resources = self.reapply_reservations(&agent.id, &agent.resources);
                self.index.agent_in(&info);
                self.agents.insert(agent.id.clone(), info);
                let running_now: std::collections::HashSet<&str> =
                    running.iter().map(String::as_str).collect();
                // Tasks it does not report: those it was told to launch but never heard of
                // (the launch was committed, then the leader failed before the agent got it)
                // are launched again; those it had started are lost.
                let mut lost = Vec::new();
                let mut to_launch = Vec::new();
                for t in self.agent_tasks(&agent.id) {
                    if t.state().is_terminal() || running_now.contains(t.id.as_str()) {
                        continue;
                    }
                    if t.state() == TaskState::Staging {
                        if !t.kill_requested {
                            to_launch.push(t.id.clone());
                        }
                    } else {
                        lost.push(t.id.clone());
                    }
                }
                let mut transitions = Vec::new();
                for id in lost {
                    let pushed = self.push_transition(
                        &id,
                        Transition {
                            state: TaskState::Lost,
                            reason: "REASON_AGENT_RESTARTED".into(),
                            message: "the agent re-registered without this task".into(),
                            time_ms,
                            exit_code: None,
                            signal: None,
                        },
                    );
                    transitions.extend(pushed);
                }
                // What it runs that has ended here (lost while it was away, or never known)
                // must not keep running unseen.
                let to_kill = running
                    .iter()
                    .filter(|id| {
                        self.tasks
                            .get(*id)
                            .is_none_or(|t| t.state().is_terminal() || t.agent_id != agent.id)
                    })
                    .cloned()
                    .collect();
                Applied {
                    to_kill,
                    to_launch,
                    transitions,
                    ..Applied::default()
                }
            }
            Command::DisconnectAgent {
                agent_id,
                registration,
                ..
            } => match self.agents.get_mut(agent_id) {
                Some(a) if registration.is_some_and(|r| r != a.registration) => {
                    Applied::refused(StateError::StaleRegistration(agent_id.clone()))
                }
                Some(a) => {
                    if a.state == AgentState::Active {
                        self.index.agent_out(a);
                        a.state = AgentState::Disconnected;
                        self.index.agent_in(a);
                    }
                    Applied::default()
                }
                None => Applied::refused(StateError::NoAgent(agent_id.clone())),
            },
            Command::RemoveAgent {
                agent_id,
                registration,
                message,
                time_ms,
            } => {
                match self.agents.get_mut(agent_id) {
                    None => return Applied::refused(StateError::NoAgent(agent_id.clone())),
                    Some(a) if a.registration != *registration || a.state == AgentState::Active => {
                        return Applied::refused(StateError::StaleRegistration(agent_id.clone()))
                    }
                    Some(a) => {
                        self.index.agent_out(a);
                        a.state = AgentState::Lost;
                        self.index.agent_in(a);
                    }
                }
                let live: Vec<String> = self
                    .agent_tasks(agent_id)
                    .filter(|t| !t.state().is_terminal())
                    .map(|t| t.id.clone())
                    .collect();
                let mut transitions = Vec::new();
                for id in live {
                    let pushed = self.push_transition(
                        &id,
                        Transition {
                            state: TaskState::Lost,
                            reason: "REASON_AGENT_REMOVED".into(),
                            message: message.clone(),
                            time_ms: *time_ms,
                            exit_code: None,
                            signal: None,
                        },
                    );
                    transitions.extend(pushed);
                }
                Applied {
                    transitions,
                    ..Applied::default()
                }
            }
            Command::RegisterFramework {
                name,
                user,
                principal,
                uid,
                gid,
                time_ms,
            } => {
                if self.framework_by_name(name).is_some() {
                    return Applied::refused(StateError::FrameworkExists(name.clone()));
                }
                self.framework_seq += 1;
                let id = format!("{name}-{}", self.framework_seq);
                self.index.by_name.insert(name.clone(), id.clone());
                let info = FrameworkInfo {
                    id: id.clone(),
                    name: name.clone(),
                    user: user.clone(),
                    principal: principal.clone(),
                    uid: *uid,
                    gid: *gid,
                    role: DEFAULT_ROLE.into(),
                    roles: Vec::new(),
                    suppressed: false,
                    optimistic: false,
                    registered_ms: *time_ms,
                    removed_ms: None,
                };
                self.index.framework_in(&info);
                self.frameworks.insert(id.clone(), info);
                Applied {
                    framework_id: Some(id),
                    ..Applied::default()
                }
            }
            Command::TeardownFramework {
                framework_id,
                time_ms,
            } => {
                match self.frameworks.get_mut(framework_id) {
                    Some(f) if f.removed_ms.is_none() => {
                        self.index.framework_out(f);
                        f.removed_ms = Some(*time_ms);
                        self.index.by_name.remove(&f.name);
                    }
                    _ => return Applied::refused(StateError::NoFramework(framework_id.clone())),
                }
                let to_kill: Vec<String> = self
                    .framework_tasks(framework_id)
                    .filter(|t| !t.state().is_terminal())
                    .map(|t| t.id.clone())
                    .collect();
                for id in &to_kill {
                    if let Some(t) = self.tasks.get_mut(id) {
                        Arc::make_mut(t).kill_requested = true;
                    }
                }
                self.prune_completed_frameworks();
                Applied {
                    to_kill,
                    ..Applied::default()
                }
            }
            Command::LaunchTasks {
                framework_id,
                agent_id,
                role,
                tasks,
                time_ms,
            } => {
                match self.frameworks.get(framework_id) {
                    Some(f) if f.removed_ms.is_none() => {}
                    _ => return Applied::refused(StateError::NoFramework(framework_id.clone())),
                }
                if !self.agents.contains_key(agent_id) {
                    return Applied::refused(StateError::NoAgent(agent_id.clone()));
                }
                for t in tasks {
                    if self
                        .tasks
                        .contains_key(&task_id(framework_id, &t.spec.name))
                    {
                        return Applied::refused(StateError::TaskExists(t.spec.name.clone()));
                    }
                }
                let mut transitions = Vec::new();
                for t in tasks {
                    let id = task_id(framework_id, &t.spec.name);
                    transitions.push(NewTransition {
                        task_id: id.clone(),
                        at: 0,
                    });
                    self.index
                        .by_agent
                        .entry(agent_id.clone())
                        .or_default()
                        .insert(id.clone());
                    let task = TaskInfo {
                        id: id.clone(),
                        name: t.spec.name.clone(),
                        framework_id: framework_id.clone(),
                        agent_id: agent_id.clone(),
                        spec: t.spec.clone(),
                        resources: t.resources.clone(),
                        role: role.clone(),
                        ports: t.ports.clone(),
                        kill_requested: false,
                        health: None,
                        history: vec![Transition {
                            state: TaskState::Staging,
                            reason: String::new(),
                            message: String::new(),
                            time_ms: *time_ms,
                            exit_code: None,
                            signal: None,
                        }],
                    };
                    self.index.task_live(&task);
                    self.tasks.insert(id, Arc::new(task));
                }
                Applied {
                    transitions,
                    ..Applied::default()
                }
            }
            Command::SetFrameworkRoles {
                framework_id,
                roles,
            } => match self.frameworks.get_mut(framework_id) {
                Some(f) if f.removed_ms.is_none() && !roles.is_empty() => {
                    self.index.framework_out(f);
                    f.role = roles[0].clone();
                    f.roles = roles.clone();
                    self.index.framework_in(f);
                    Applied::default()
                }
                _ => Applied::refused(StateError::NoFramework(framework_id.clone())),
            },
            Command::SuppressFramework {
                framework_id,
                suppressed,
            } => match self.frameworks.get_mut(framework_id) {
                Some(f) if f.removed_ms.is_none() => {
                    f.suppressed = *suppressed;
                    Applied::default()
                }
                _ => Applied::refused(StateError::NoFramework(framework_id.clone())),
            },
            Command::SetOptimistic {
                framework_id,
                optimistic,
            } => match self.frameworks.get_mut(framework_id) {
                Some(f) if f.removed_ms.is_none() => {
                    f.optimistic = *optimistic;
                    Applied::default()
                }
                _ => Applied::refused(StateError::NoFramework(framework_id.clone())),
            },
            Command::ConfigureRole { role, setting } => {
                let now = self.roles.get(role).cloned().unwrap_or_default();
                match now.with(setting) {
                    Ok(info) => {
                        if info == RoleInfo::default() {
                            self.roles.remove(role);
                        } else {
                            self.roles.insert(role.clone(), info);
                        }
                        Applied::default()
                    }
                    Err(e) => Applied::refused(StateError::BadRoleSetting(role.clone(), e)),
                }
            }
            Command::Reserve {
                agent_id,
                resources,
            } => match self.reserve(agent_id, resources) {
                Ok(()) => Applied::default(),
                Err(e) => Applied::refused(e),
            },
            Command::Unreserve {
                agent_id,
                resources,
            } => match self.unreserve(agent_id, resources) {
                Ok(()) => Applied::default(),
                Err(e) => Applied::refused(e),
            },
            Command::KillTask { task_id, .. } => match self.tasks.get_mut(task_id) {
                None => Applied::refused(StateError::NoTask(task_id.clone())),
                Some(t) if t.state().is_terminal() => {
                    Applied::refused(StateError::TaskEnded(t.name.clone()))
                }
                Some(t) => {
                    Arc::make_mut(t).kill_requested = true;
                    Applied {
                        to_kill: vec![task_id.clone()],
                        ..Applied::default()
                    }
                }
            },
            Command::UpdateTask {
                task_id,
                transition,
            } => {
                if !self.tasks.contains_key(task_id) {
                    return Applied::refused(StateError::NoTask(task_id.clone()));
                }
                let pushed = self.push_transition(task_id, transition.clone());
                Applied {
                    transitions: pushed.into_iter().collect(),
                    ..Applied::default()
                }
            }
            Command::TaskHealth { task_id, health } => {
                let Some(t) = self.tasks.get(task_id) else {
                    return Applied::refused(StateError::NoTask(task_id.clone()));
                };
                // Updates are retried, and a restarted agent reports again the changes it
                // may not have: only a newer change counts, and none after the task's end.
                if t.state().is_terminal() || t.health.as_ref().is_some_and(|h| h.seq >= health.seq)
                {
                    return Applied::default();
                }
                let t = Arc::make_mut(self.tasks.get_mut(task_id).expect("looked up above"));
                t.health = Some(health.clone());
                Applied {
                    health: vec![(task_id.clone(), health.clone())],
                    ..Applied::default()
                }
            }
        }
    }

    /// Records a transition unless the task is terminal, or already in that state or a later one
    /// (updates are retried, so duplicates and stale ones are normal). A task that ends may push
    /// old history out.
    fn push_transition(&mut self, id: &str, transition: Transition) -> Option<NewTransition> {
        let current = self.tasks.get(id)?.state();
        // A task's states only move forward (an update sent again after a failover, arriving
        // after a later one, must not take the task back).
        if current.is_terminal() || (!transition.state.is_terminal() && transition.state <= current)
        {
            return None;
        }
        // Copied here only if a snapshot's copy still shares it (and only then).
        let t = Arc::make_mut(self.tasks.get_mut(id).expect("looked up above"));
        let ended = transition.state.is_terminal();
        t.history.push(transition);
        let added = NewTransition {
            task_id: id.to_string(),
            at: t.history.len() - 1,
        };
        if ended {
            let framework_id = t.framework_id.clone();
            self.index.task_ended(t);
            self.prune_completed_tasks(&framework_id);
            self.prune_completed_frameworks();
        }
        Some(added)
    }

    /// Keeps a framework's newest [`MAX_COMPLETED_TASKS_PER_FRAMEWORK`] ended tasks.
    fn prune_completed_tasks(&mut self, framework_id: &str) {
        while let Some(ended) = self.index.ended.get_mut(framework_id) {
            if ended.len() <= MAX_COMPLETED_TASKS_PER_FRAMEWORK {
                return;
            }
            let Some((_, id)) = ended.remove_min() else {
                return;
            };
            self.remove_task(&id);
        }
    }

    /// Keeps the newest [`MAX_COMPLETED_FRAMEWORKS`] torn-down frameworks whose tasks have all
    /// ended; older ones go, with their tasks.
    fn prune_completed_frameworks(&mut self) {
        let mut gone: Vec<(u64, String)> = self
            .frameworks
            .values()
            .filter_map(|f| Some((f.removed_ms?, f.id.clone())))
            .filter(|(_, id)| self.framework_tasks(id).all(|t| t.state().is_terminal()))
            .collect();
        if gone.len() <= MAX_COMPLETED_FRAMEWORKS {
            return;
        }
        gone.sort();
        let excess = gone.len() - MAX_COMPLETED_FRAMEWORKS;
        for (_, id) in gone.into_iter().take(excess) {
            let tasks: Vec<String> = self.framework_tasks(&id).map(|t| t.id.clone()).collect();
            for t in tasks {
                self.remove_task(&t);
            }
            self.frameworks.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_spec_line;

    fn agent(id: &str) -> AgentInfo {
        AgentInfo {
            id: id.into(),
            hostname: "h".into(),
            address: "127.0.0.1:1".into(),
            resources: Resources::parse("cpus:2;mem:1024").unwrap(),
            state: AgentState::Active,
            registered_ms: 1,
            registration: 0,
            attributes: Default::default(),
        }
    }

    fn launch(fw: &str, agent_id: &str, line: &str) -> Command {
        let spec = parse_spec_line(line).unwrap();
        Command::LaunchTasks {
            framework_id: fw.into(),
            agent_id: agent_id.into(),
            role: DEFAULT_ROLE.into(),
            tasks: vec![NewTask {
                resources: spec.resources(),
                spec,
                ports: vec![],
            }],
            time_ms: 5,
        }
    }

    fn cluster_with_framework() -> (ClusterState, String) {
        let mut s = ClusterState::default();
        s.apply(
            1,
            &Command::RegisterAgent {
                agent: agent("a1"),
                running: vec![],
            },
        );
        let fw = s
            .apply(
                2,
                &Command::RegisterFramework {
                    name: "hello".into(),
                    user: "root".into(),
                    principal: None,
                    uid: 0,
                    gid: 0,
                    time_ms: 2,
                },
            )
            .framework_id
            .unwrap();
        (s, fw)
    }

    #[test]
    fn registering_a_framework_twice_by_name_is_refused_and_changes_nothing() {
        let (mut s, _) = cluster_with_framework();
        let before = s.clone();
        let r = s.apply(
            3,
            &Command::RegisterFramework {
                name: "hello".into(),
                user: "root".into(),
                principal: None,
                uid: 0,
                gid: 0,
                time_ms: 3,
            },
        );
        assert_eq!(r.error, Some(StateError::FrameworkExists("hello".into())));
        assert_eq!(s.frameworks, before.frameworks);
    }

    #[test]
    fn a_torn_down_framework_name_can_be_registered_again_with_a_new_id() {
        let (mut s, fw) = cluster_with_framework();
        s.apply(
            3,
            &Command::TeardownFramework {
                framework_id: fw.clone(),
                time_ms: 3,
            },
        );
        let again = s
            .apply(
                4,
                &Command::RegisterFramework {
                    name: "hello".into(),
                    user: "root".into(),
                    principal: None,
                    uid: 0,
                    gid: 0,
                    time_ms: 4,
                },
            )
            .framework_id
            .unwrap();
        assert_ne!(again, fw);
        assert_eq!(s.framework_by_name("hello").unwrap().id, again);
    }

    #[test]
    fn a_launch_with_a_taken_task_name_adds_none_of_its_tasks() {
        let (mut s, fw) = cluster_with_framework();
        assert!(s
            .apply(3, &launch(&fw, "a1", "name=t -- true"))
            .error
            .is_none());
        let r = s.apply(4, &launch(&fw, "a1", "name=t -- false"));
        assert_eq!(r.error, Some(StateError::TaskExists("t".into())));
        assert_eq!(s.tasks.len(), 1);
    }

    #[test]
    fn terminal_tasks_ignore_later_updates_and_duplicate_or_stale_ones_are_dropped() {
        let (mut s, fw) = cluster_with_framework();
        s.apply(3, &launch(&fw, "a1", "name=t -- true"));
        let id = task_id(&fw, "t");
        let up = |state| Command::UpdateTask {
            task_id: id.clone(),
            transition: Transition {
                state,
                reason: String::new(),
                message: String::new(),
                time_ms: 9,
                exit_code: None,
                signal: None,
            },
        };
        s.apply(4, &up(TaskState::Starting));
        s.apply(5, &up(TaskState::Running));
        s.apply(6, &up(TaskState::Running));
        // Sent again after a failover, arriving after the later one: stale.
        s.apply(7, &up(TaskState::Starting));
        s.apply(8, &up(TaskState::Finished));
        s.apply(9, &up(TaskState::Lost));
        let states: Vec<_> = s.tasks[&id].history.iter().map(|t| t.state).collect();
        assert_eq!(
            states,
            vec![
                TaskState::Staging,
                TaskState::Starting,
                TaskState::Running,
                TaskState::Finished
            ]
        );
    }

    #[test]
    fn a_health_change_is_kept_only_when_newer_and_never_after_the_task_ends() {
        let (mut s, fw) = cluster_with_framework();
        s.apply(3, &launch(&fw, "a1", "name=t -- true"));
        let id = task_id(&fw, "t");
        let health = |healthy, seq| Command::TaskHealth {
            task_id: id.clone(),
            health: TaskHealth {
                healthy,
                seq,
                output: format!("check {seq}"),
                time_ms: seq,
            },
        };
        let seq = |s: &ClusterState| s.tasks[&id].health.as_ref().map(|h| (h.healthy, h.seq));
        assert_eq!(seq(&s), None);
        assert_eq!(s.apply(4, &health(true, 1)).health.len(), 1);
        assert_eq!(s.apply(5, &health(false, 2)).health[0].1.seq, 2);
        // Sent again by a restarted agent, or retried: changes nothing, says nothing.
        assert!(s.apply(6, &health(true, 1)).health.is_empty());
        assert!(s.apply(7, &health(false, 2)).health.is_empty());
        assert_eq!(seq(&s), Some((false, 2)));
        assert_eq!(s.tasks[&id].health.as_ref().unwrap().output, "check 2");
        // Health is no state transition.
        assert_eq!(s.tasks[&id].history.len(), 1);
        s.apply(
            8,
            &Command::UpdateTask {
                task_id: id.clone(),
                transition: Transition {
                    state: TaskState::Killed,
                    reason: "REASON_HEALTH_CHECK_FAILED".into(),
                    message: String::new(),
                    time_ms: 9,
                    exit_code: None,
                    signal: Some(15),
                },
            },
        );
        assert!(s.apply(9, &health(true, 3)).health.is_empty());
        assert_eq!(seq(&s), Some((false, 2)));
        let unknown = Command::TaskHealth {
            task_id: "nope".into(),
            health: TaskHealth {
                healthy: true,
                seq: 1,
                output: String::new(),
                time_ms: 1,
            },
        };
        assert!(s.apply(10, &unknown).error.is_some());
    }

    #[test]
    fn tasks_held_count_against_their_agent_until_terminal() {
        let (mut s, fw) = cluster_with_framework();
        s.apply(3, &launch(&fw, "a1", "name=t cpus=0.5 mem=100 -- true"));
        assert_eq!(s.allocated_on("a1").to_string(), "cpus:0.5;mem:100");
        s.apply(
            4,
            &Command::UpdateTask {
                task_id: task_id(&fw, "t"),
                transition: Transition {
                    state: TaskState::Finished,
                    reason: String::new(),
                    message: String::new(),
                    time_ms: 9,
                    exit_code: None,
                    signal: None,
                },
            },
        );
        assert!(s.allocated_on("a1").is_empty());
    }

    #[test]
    fn an_agent_reregistering_without_a_started_task_loses_it_and_is_told_to_launch_unstarted_ones()
    {
        let (mut s, fw) = cluster_with_framework();
        s.apply(3, &launch(&fw, "a1", "name=gone -- sleep 9"));
        s.apply(4, &launch(&fw, "a1", "name=kept -- sleep 9"));
        s.apply(5, &launch(&fw, "a1", "name=unsent -- sleep 9"));
        s.apply(6, &launch(&fw, "a1", "name=cancelled -- sleep 9"));
        s.apply(
            7,
            &Command::KillTask {
                task_id: task_id(&fw, "cancelled"),
                time_ms: 7,
            },
        );
        for (index, name) in [(8, "gone"), (9, "kept")] {
            s.apply(
                index,
                &Command::UpdateTask {
                    task_id: task_id(&fw, name),
                    transition: Transition {
                        state: TaskState::Running,
                        reason: String::new(),
                        message: String::new(),
                        time_ms: index,
                        exit_code: None,
                        signal: None,
                    },
                },
            );
        }
        let r = s.apply(
            10,
            &Command::RegisterAgent {
                agent: agent("a1"),
                running: vec![task_id(&fw, "kept")],
            },
        );
        assert_eq!(s.tasks[&task_id(&fw, "gone")].state(), TaskState::Lost);
        assert_eq!(s.tasks[&task_id(&fw, "kept")].state(), TaskState::Running);
        // Never started there: launched again, not lost; a cancelled one only gets its kill.
        assert_eq!(r.to_launch, vec![task_id(&fw, "unsent")]);
        assert_eq!(s.tasks[&task_id(&fw, "unsent")].state(), TaskState::Staging);
        assert_eq!(
            s.tasks[&task_id(&fw, "cancelled")].state(),
            TaskState::Staging
        );
    }

    fn finish(s: &mut ClusterState, index: u64, id: &str) {
        s.apply(
            index,
            &Command::UpdateTask {
                task_id: id.into(),
                transition: Transition {
                    state: TaskState::Finished,
                    reason: String::new(),
                    message: String::new(),
                    time_ms: index,
                    exit_code: None,
                    signal: None,
                },
            },
        );
    }

    fn disconnect(registration: u64) -> Command {
        Command::DisconnectAgent {
            agent_id: "a1".into(),
            registration: Some(registration),
            time_ms: 9,
        }
    }

    fn remove(registration: u64) -> Command {
        Command::RemoveAgent {
            agent_id: "a1".into(),
            registration,
            message: "gone for good".into(),
            time_ms: 10,
        }
    }

    #[test]
    fn removing_a_disconnected_agent_loses_its_live_tasks_and_keeps_ended_ones() {
        let (mut s, fw) = cluster_with_framework();
        s.apply(3, &launch(&fw, "a1", "name=live -- sleep 9"));
        s.apply(4, &launch(&fw, "a1", "name=done -- true"));
        finish(&mut s, 5, &task_id(&fw, "done"));
        assert_eq!(s.apply(6, &disconnect(1)).error, None);
        assert_eq!(s.agents["a1"].state, AgentState::Disconnected);
        assert_eq!(s.apply(7, &remove(1)).error, None);
        assert_eq!(s.agents["a1"].state, AgentState::Lost);
        let live = s.tasks[&task_id(&fw, "live")].last();
        assert_eq!(live.state, TaskState::Lost);
        assert_eq!(live.reason, "REASON_AGENT_REMOVED");
        assert_eq!(live.message, "gone for good");
        assert_eq!(s.tasks[&task_id(&fw, "done")].state(), TaskState::Finished);
        assert!(s.allocated_on("a1").is_empty());
    }

    #[test]
    fn disconnect_and_removal_of_an_older_registration_are_refused_and_change_nothing() {
        let (mut s, fw) = cluster_with_framework();
        s.apply(3, &launch(&fw, "a1", "name=t -- sleep 9"));
        s.apply(4, &disconnect(1));
        // It came back (registration 5) before the removal of registration 1 committed.
        s.apply(
            5,
            &Command::RegisterAgent {
                agent: agent("a1"),
                running: vec![task_id(&fw, "t")],
            },
        );
        let before = s.clone();
        let r = s.apply(6, &remove(1));
        assert_eq!(r.error, Some(StateError::StaleRegistration("a1".into())));
        let r = s.apply(7, &disconnect(1));
        assert_eq!(r.error, Some(StateError::StaleRegistration("a1".into())));
        assert_eq!(s.agents, before.agents);
        assert_eq!(s.tasks, before.tasks);
    }

    #[test]
    fn a_connected_agent_cannot_be_removed() {
        let (mut s, fw) = cluster_with_framework();
        s.apply(3, &launch(&fw, "a1", "name=t -- sleep 9"));
        let r = s.apply(4, &remove(1));
        assert_eq!(r.error, Some(StateError::StaleRegistration("a1".into())));
        assert_eq!(s.tasks[&task_id(&fw, "t")].state(), TaskState::Staging);
    }

    #[test]
    fn an_agent_returning_with_tasks_that_ended_here_is_told_to_kill_them() {
        let (mut s, fw) = cluster_with_framework();
        s.apply(3, &launch(&fw, "a1", "name=t -- sleep 9"));
        s.apply(4, &disconnect(1));
        s.apply(5, &remove(1));
        let r = s.apply(
            6,
            &Command::RegisterAgent {
                agent: agent("a1"),
                running: vec![task_id(&fw, "t"), "nobody.knows".into()],
            },
        );
        assert_eq!(r.to_kill, vec![task_id(&fw, "t"), "nobody.knows".into()]);
        assert_eq!(s.agents["a1"].state, AgentState::Active);
        assert_eq!(s.agents["a1"].registration, 6);
        assert_eq!(s.tasks[&task_id(&fw, "t")].state(), TaskState::Lost);
    }

    #[test]
    fn only_the_newest_completed_tasks_of_a_framework_are_kept() {
        let (mut s, fw) = cluster_with_framework();
        s.apply(3, &launch(&fw, "a1", "name=live -- sleep 9"));
        let n = MAX_COMPLETED_TASKS_PER_FRAMEWORK + 2;
        for i in 0..n {
            let index = 10 + 2 * i as u64;
            s.apply(index, &launch(&fw, "a1", &format!("name=t{i} -- true")));
            finish(&mut s, index + 1, &task_id(&fw, &format!("t{i}")));
        }
        let kept = s.framework_tasks(&fw).count();
        assert_eq!(
            s.agent_tasks("a1").count(),
            kept,
            "pruned tasks leave the agent's too"
        );
        assert_eq!(
            kept,
            MAX_COMPLETED_TASKS_PER_FRAMEWORK + 1,
            "the cap plus the live task"
        );
        assert!(
            !s.tasks.contains_key(&task_id(&fw, "t0")),
            "the oldest went first"
        );
        assert!(!s.tasks.contains_key(&task_id(&fw, "t1")));
        assert!(s.tasks.contains_key(&task_id(&fw, "t2")));
        assert!(
            s.tasks.contains_key(&task_id(&fw, "live")),
            "live tasks are never dropped"
        );
        // A dropped name can be used again.
        let r = s.apply(99_999, &launch(&fw, "a1", "name=t0 -- true"));
        assert_eq!(r.error, None);
    }

    #[test]
    fn only_the_newest_torn_down_frameworks_are_kept_once_their_tasks_ended() {
        let mut s = ClusterState::default();
        s.apply(
            1,
            &Command::RegisterAgent {
                agent: agent("a1"),
                running: vec![],
            },
        );
        let mut ids = Vec::new();
        for i in 0..MAX_COMPLETED_FRAMEWORKS + 2 {
            let index = 100 + 10 * i as u64;
            let fw = s
                .apply(
                    index,
                    &Command::RegisterFramework {
                        name: format!("f{i}"),
                        user: "root".into(),
                        principal: None,
                        uid: 0,
                        gid: 0,
                        time_ms: index,
                    },
                )
                .framework_id
                .unwrap();
            s.apply(index + 1, &launch(&fw, "a1", "name=t -- sleep 9"));
            s.apply(
                index + 2,
                &Command::TeardownFramework {
                    framework_id: fw.clone(),
                    time_ms: index + 2,
                },
            );
            ids.push(fw);
        }
        // Their tasks still run (being killed): every framework is kept.
        assert_eq!(s.frameworks.len(), MAX_COMPLETED_FRAMEWORKS + 2);
        for (i, fw) in ids.iter().enumerate() {
            let index = 10_000 + i as u64;
            s.apply(
                index,
                &Command::UpdateTask {
                    task_id: task_id(fw, "t"),
                    transition: Transition {
                        state: TaskState::Killed,
                        reason: String::new(),
                        message: String::new(),
                        time_ms: index,
                        exit_code: None,
                        signal: None,
                    },
                },
            );
        }
        assert_eq!(s.frameworks.len(), MAX_COMPLETED_FRAMEWORKS);
        assert!(!s.frameworks.contains_key(&ids[0]));
        assert!(!s.frameworks.contains_key(&ids[1]));
        assert!(!s.tasks.contains_key(&task_id(&ids[0], "t")));
        assert!(s.frameworks.contains_key(&ids[2]));
    }

    #[test]
    fn a_batch_applies_its_commands_in_order_each_with_its_own_answer() {
        let (mut s, fw) = cluster_with_framework();
        let id = |seq| WriteId {
            client: "m".into(),
            seq,
            done_below: 1,
        };
        let write = |seq, command| Command::Write {
            id: id(seq),
            time_ms: 7,
            command: Box::new(command),
        };
        let r = s.apply(
            7,
            &Command::Batch(vec![
                write(1, launch(&fw, "a1", "name=t -- true")),
                // The same task again: refused by the state, the first stands.
                write(2, launch(&fw, "a1", "name=t -- false")),
                // A retry of write 1 in the same entry: answered, not applied again.
                write(1, launch(&fw, "a1", "name=t -- true")),
            ]),
        );
        assert_eq!(r.batch.len(), 3);
        assert_eq!(r.batch[0].error, None);
        assert_eq!(r.batch[0].duplicate_of, None);
        assert_eq!(r.batch[1].error, Some(StateError::TaskExists("t".into())));
        assert_eq!(r.batch[2].duplicate_of, Some(7));
        assert_eq!(
            r.transitions,
            vec![NewTransition {
                task_id: task_id(&fw, "t"),
                at: 0
            }]
        );
        assert_eq!(s.framework_tasks(&fw).count(), 1);
        assert_eq!(s.clients.outcome(&id(1)).map(|o| o.index), Some(7));
    }

    #[test]
    fn a_write_retried_after_it_was_applied_changes_nothing_and_gets_the_first_answer() {
        let mut s = ClusterState::default();
        let register = |seq, done_below| Command::Write {
            id: WriteId {
                client: "m".into(),
                seq,
                done_below,
            },
            time_ms: 1,
            command: Box::new(Command::RegisterFramework {
                name: "f".into(),
                user: "root".into(),
                principal: None,
                uid: 0,
                gid: 0,
                time_ms: 1,
            }),
        };
        let first = s.apply(1, &register(1, 1));
        let again = s.apply(2, &register(1, 1));
        assert_eq!(again.duplicate_of, Some(1));
        assert_eq!(again.framework_id, first.framework_id);
        assert_eq!(s.frameworks.len(), 1);
        // Once the client says write 1 is answered, its outcome is forgotten...
        s.apply(3, &register(2, 2));
        assert!(s
            .clients
            .get("m")
            .unwrap()
            .outcomes
            .keys()
            .all(|seq| *seq >= 2));
        // ...and a stray copy of it still changes nothing.
        let stray = s.apply(4, &register(1, 2));
        assert!(stray.duplicate_of.is_some());
        assert_eq!(s.frameworks.len(), 1);
        // A client silent for an hour is forgotten.
        s.apply(
            5,
            &Command::Write {
                id: WriteId {
                    client: "other".into(),
                    seq: 1,
                    done_below: 1,
                },
                time_ms: 1 + clients::CLIENT_IDLE_MS,
                command: Box::new(Command::TeardownFramework {
                    framework_id: "nope".into(),
                    time_ms: 2,
                }),
            },
        );
        assert!(s.clients.get("m").is_none());
    }

    #[test]
    fn teardown_marks_live_tasks_for_killing() {
        let (mut s, fw) = cluster_with_framework();
        s.apply(3, &launch(&fw, "a1", "name=t -- sleep 9"));
        let r = s.apply(
            4,
            &Command::TeardownFramework {
                framework_id: fw.clone(),
                time_ms: 4,
            },
        );
        assert_eq!(r.to_kill, vec![task_id(&fw, "t")]);
        assert!(s.framework_by_name("hello").is_none());
    }

    fn res(text: &str) -> Resources {
        Resources::parse(text).unwrap()
    }

    #[test]
    fn a_reservation_relabels_free_resources_and_survives_re_registration() {
        let (mut s, fw) = cluster_with_framework();
        s.apply(3, &launch(&fw, "a1", "name=t cpus=1 mem=512 -- sleep 9"));
        let reserve = |r: &str| Command::Reserve {
            agent_id: "a1".into(),
            resources: res(r),
        };
        // One cpu is free, not two.
        let before = s.clone();
        let r = s.apply(4, &reserve("cpus(eng):2"));
        assert!(matches!(r.error, Some(StateError::Reservation(_))), "{r:?}");
        assert_eq!(s.agents, before.agents);
        assert!(s.apply(5, &reserve("cpus:1")).error.is_some(), "no role");

        assert_eq!(s.apply(6, &reserve("cpus(eng):1;mem(eng):256")).error, None);
        assert_eq!(
            s.agents["a1"].resources,
            res("cpus:1;mem:768;cpus(eng):1;mem(eng):256")
        );
        assert_eq!(s.reservations["a1"], res("cpus(eng):1;mem(eng):256"));

        // The agent comes back with the same resources: the reservation is made again.
        s.apply(
            7,
            &Command::RegisterAgent {
                agent: agent("a1"),
                running: vec![task_id(&fw, "t")],
            },
        );
        assert_eq!(
            s.agents["a1"].resources,
            res("cpus:1;mem:768;cpus(eng):1;mem(eng):256")
        );

        let unreserve = |r: &str| Command::Unreserve {
            agent_id: "a1".into(),
            resources: res(r),
        };
        assert!(
            s.apply(8, &unreserve("cpus(ops):1")).error.is_some(),
            "not reserved"
        );
        assert_eq!(
            s.apply(9, &unreserve("cpus(eng):1;mem(eng):256")).error,
            None
        );
        assert_eq!(s.agents["a1"].resources, res("cpus:2;mem:1024"));
        assert!(s.reservations.is_empty());
    }

    #[test]
    fn a_static_reservation_cannot_be_given_back_and_a_shrunk_agent_drops_what_no_longer_fits() {
        let mut s = ClusterState::default();
        let mut a = agent("a1");
        a.resources = res("cpus:2;mem:1024;cpus(eng):1");
        s.apply(
            1,
            &Command::RegisterAgent {
                agent: a.clone(),
                running: vec![],
            },
        );
        let r = s.apply(
            2,
            &Command::Unreserve {
                agent_id: "a1".into(),
                resources: res("cpus(eng):1"),
            },
        );
        assert!(r.error.unwrap().to_string().contains("--resources"));
        s.apply(
            3,
            &Command::Reserve {
                agent_id: "a1".into(),
                resources: res("cpus(ops):2;mem(ops):100"),
            },
        );
        assert_eq!(
            s.agents["a1"].resources,
            res("mem:924;cpus(eng):1;cpus(ops):2;mem(ops):100")
        );
        a.resources = res("cpus:1;mem:1024;cpus(eng):1");
        s.apply(
            4,
            &Command::RegisterAgent {
                agent: a,
                running: vec![],
            },
        );
        assert_eq!(
            s.agents["a1"].resources,
            res("cpus:1;mem:924;cpus(eng):1;mem(ops):100")
        );
        assert_eq!(s.reservations["a1"], res("mem(ops):100"));
    }

    #[test]
    fn lookups_by_name_and_agent_follow_commands_and_are_rebuilt_when_the_state_is_read_back() {
        let (mut s, fw) = cluster_with_framework();
        s.apply(3, &launch(&fw, "a1", "name=t -- sleep 9"));
        s.apply(4, &launch(&fw, "a1", "name=u -- sleep 9"));
        let on_a1 = |s: &ClusterState| -> Vec<String> {
            s.agent_tasks("a1").map(|t| t.name.clone()).collect()
        };
        assert_eq!(on_a1(&s), ["t", "u"]);
        assert_eq!(s.framework_by_name("hello").unwrap().id, fw);
        finish(&mut s, 5, &task_id(&fw, "t"));
        let back: ClusterState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s, "the same state, lookups included");
        s.apply(
            5,
            &Command::TeardownFramework {
                framework_id: fw.clone(),
                time_ms: 5,
            },
        );
        assert!(s.framework_by_name("hello").is_none());
        let back: ClusterState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(back.framework_by_name("hello").is_none());
        assert_eq!(on_a1(&back), ["t", "u"]);
    }

    #[test]
    fn a_port_two_tasks_hold_on_two_agents_stays_counted_until_both_end() {
        let (mut s, fw) = cluster_with_framework();
        s.apply(
            3,
            &Command::RegisterAgent {
                agent: agent("a2"),
                running: vec![],
            },
        );
        for (i, (agent_id, name)) in [("a1", "t"), ("a2", "u")].into_iter().enumerate() {
            let mut cmd = launch(&fw, agent_id, &format!("name={name} cpus=1 mem=10 -- true"));
            if let Command::LaunchTasks { tasks, .. } = &mut cmd {
                tasks[0].resources = res("cpus:1;mem:10;ports:[31000-31000]");
            }
            s.apply(4 + i as u64, &cmd);
        }
        let by_role =
            |s: &ClusterState| s.allocated_by_role().map(|(_, _, r)| r).collect::<Vec<_>>();
        assert_eq!(by_role(&s), [res("cpus:2;mem:20;ports:[31000-31000]")]);
        finish(&mut s, 6, &task_id(&fw, "t"));
        assert_eq!(by_role(&s), [res("cpus:1;mem:10;ports:[31000-31000]")]);
        assert_eq!(
            s.allocated_total(),
            res("cpus:1;mem:10;ports:[31000-31000]")
        );
        let back: ClusterState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s, "the tallies, rebuilt");
    }

    #[test]
    fn roles_in_use_their_frameworks_and_reservations_follow_commands() {
        let (mut s, fw) = cluster_with_framework();
        let in_use = |s: &ClusterState| {
            let mut r: Vec<String> = s.roles_in_use().map(String::from).collect();
            r.sort();
            r
        };
        assert_eq!(in_use(&s), ["*"]);
        s.apply(
            3,
            &Command::SetFrameworkRoles {
                framework_id: fw.clone(),
                roles: vec!["eng/web".into(), "ops".into()],
            },
        );
        s.apply(
            4,
            &Command::Reserve {
                agent_id: "a1".into(),
                resources: res("mem(ops):100;cpus(db):1"),
            },
        );
        assert_eq!(in_use(&s), ["db", "eng/web", "ops"]);
        assert_eq!(s.role_framework_names("ops").collect::<Vec<_>>(), ["hello"]);
        assert_eq!(s.role_framework_names("*").count(), 0);
        assert_eq!(s.reserved_within("ops"), res("mem(ops):100"));
        assert!(s.reserved_within("eng").is_empty());
        let back: ClusterState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s, "the same lookups, rebuilt");
        // A lost agent's reservations count no more, but their roles are still known.
        let registration = s.agents["a1"].registration;
        s.apply(5, &disconnect(registration));
        s.apply(6, &remove(registration));
        assert!(s.reserved_within("ops").is_empty());
        s.apply(
            7,
            &Command::TeardownFramework {
                framework_id: fw.clone(),
                time_ms: 7,
            },
        );
        assert_eq!(in_use(&s), ["db", "ops"], "reserved for, on the lost agent");
        assert_eq!(s.role_framework_names("ops").count(), 0);
        let back: ClusterState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn what_live_tasks_hold_is_kept_by_agent_and_by_role_as_they_start_and_end() {
        let (mut s, fw) = cluster_with_framework();
        s.apply(3, &launch(&fw, "a1", "name=t cpus=1 mem=100 -- sleep 9"));
        s.apply(4, &launch(&fw, "a1", "name=u cpus=0.5 mem=50 -- sleep 9"));
        assert_eq!(s.allocated_on("a1"), res("cpus:1.5;mem:150"));
        let by_role: Vec<(&str, &str, Resources)> = s.allocated_by_role().collect();
        assert_eq!(by_role, [("*", fw.as_str(), res("cpus:1.5;mem:150"))]);
        finish(&mut s, 5, &task_id(&fw, "t"));
        assert_eq!(s.allocated_on("a1"), res("cpus:0.5;mem:50"));
        // The agent goes away for good: its live task is lost and holds nothing.
        let registration = s.agents["a1"].registration;
        s.apply(6, &disconnect(registration));
        s.apply(7, &remove(registration));
        assert!(s.allocated_on("a1").is_empty());
        assert_eq!(s.allocated_by_role().count(), 0);
        assert_eq!(s.allocated_by_agent().count(), 0);
    }

    /// A state with something in every stored field: agents, frameworks, live and ended tasks,
    /// a client's write, a role and a dynamic reservation.
    fn full_state() -> ClusterState {
        let (mut s, fw) = cluster_with_framework();
        s.apply(3, &launch(&fw, "a1", "name=t cpus=1 mem=100 -- sleep 9"));
        s.apply(4, &launch(&fw, "a1", "name=u -- sleep 9"));
        finish(&mut s, 5, &task_id(&fw, "t"));
        s.apply(
            6,
            &Command::Write {
                id: WriteId {
                    client: "mount:m/1".into(),
                    seq: 1,
                    done_below: 1,
                },
                time_ms: 6,
                command: Box::new(Command::ConfigureRole {
                    role: "eng".into(),
                    setting: RoleSetting::Weight(crate::resources::Scalar::from_units(2)),
                }),
            },
        );
        s.apply(
            7,
            &Command::Reserve {
                agent_id: "a1".into(),
                resources: res("mem(ops):100"),
            },
        );
        assert!(!s.clients.is_empty() && !s.roles.is_empty());
        assert!(!s.reservations.is_empty());
        s
    }

    #[test]
    fn the_state_is_stored_exactly_as_it_was_with_btree_maps() {
        // Snapshots on disk and watch events are read by other versions: the persistent maps
        // must encode as the std maps they replaced did, and read back what those wrote.
        #[derive(Serialize)]
        struct WithBTreeMaps {
            agents: BTreeMap<AgentId, AgentInfo>,
            frameworks: BTreeMap<FrameworkId, FrameworkInfo>,
            tasks: BTreeMap<String, TaskInfo>,
            framework_seq: u64,
            applied_index: u64,
            clients: Clients,
            roles: BTreeMap<String, RoleInfo>,
            reservations: BTreeMap<AgentId, Resources>,
        }
        let s = full_state();
        let std_maps = WithBTreeMaps {
            agents: s.agents.clone().into_iter().collect(),
            frameworks: s.frameworks.clone().into_iter().collect(),
            tasks: s
                .tasks
                .values()
                .map(|t| (t.id.clone(), (**t).clone()))
                .collect(),
            framework_seq: s.framework_seq,
            applied_index: s.applied_index,
            clients: s.clients.clone(),
            roles: s.roles.clone(),
            reservations: s.reservations.clone(),
        };
        let json = serde_json::to_string(&std_maps).unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), json);
        let back: ClusterState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s, "the same state, lookups rebuilt");
    }

    #[test]
    fn a_clone_keeps_the_state_as_of_the_clone_while_commands_change_the_original() {
        let mut s = full_state();
        let fw = s.framework_by_name("hello").unwrap().id.clone();
        let frozen = s.clone();
        let json = serde_json::to_string(&s).unwrap();
        s.apply(8, &launch(&fw, "a1", "name=v -- sleep 9"));
        finish(&mut s, 9, &task_id(&fw, "u"));
        s.apply(
            10,
            &Command::TeardownFramework {
                framework_id: fw.clone(),
                time_ms: 10,
            },
        );
        assert_eq!(serde_json::to_string(&frozen).unwrap(), json);
        assert_eq!(frozen.tasks.len(), 2);
        assert_eq!(frozen.tasks[&task_id(&fw, "u")].state(), TaskState::Staging);
        assert_eq!(frozen.framework_by_name("hello").unwrap().id, fw);
        assert_eq!(
            frozen
                .agent_tasks("a1")
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>(),
            ["t", "u"]
        );
        assert_eq!(frozen.allocated_on("a1"), res("cpus:0.1;mem:32"));
        assert_ne!(frozen, s);
        assert!(s.framework_by_name("hello").is_none());
        assert_eq!(s.tasks.len(), 3);
    }
}
