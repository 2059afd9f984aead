//! A cluster for tests: a local copy fed the same events masters send (a state snapshot, then
//! committed commands; the leader's offers and refusals), with no master running.

use mesofs_kernel::client::LocalCopy;
use mesofs_kernel::resources::Resources;
use mesofs_kernel::spec::parse_spec_line;
use mesofs_kernel::state::{
    task_id, AgentInfo, AgentState, ClusterState, Command, NewTask, TaskState, Transition,
};
use mesofs_kernel::watch::{LeaderEvent, LeaderInfo, MasterStatus, Offer, StateEvent};

/// A local copy and the positions of the next events.
pub struct Cluster {
    /// The copy the events are applied to.
    pub copy: LocalCopy,
    seq: u64,
    index: u64,
}

impl Cluster {
    /// An empty cluster of one master, `m1 127.0.0.1:5050`, which leads.
    pub fn new() -> Cluster {
        let cluster = Cluster {
            copy: LocalCopy::default(),
            seq: 1,
            index: 0,
        };
        cluster.copy.apply_state(StateEvent::Snapshot {
            index: 0,
            state: ClusterState::default(),
        });
        cluster.copy.apply_leader(&LeaderEvent::Leading {
            seq: 1,
            leader: LeaderInfo {
                id: 1,
                address: "127.0.0.1:5050".into(),
                term: 1,
            },
            offers: Vec::new(),
            masters: vec![MasterStatus {
                id: 1,
                address: "127.0.0.1:5050".into(),
                role: "leader".into(),
                applied: 0,
            }],
            why: Default::default(),
        });
        cluster
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Applies a committed command.
    pub fn command(&mut self, command: Command) {
        self.index += 1;
        self.copy.apply_state(StateEvent::Applied {
            index: self.index,
            command,
        });
    }

    /// Registers an agent with a Files address.
    pub fn agent(&mut self, id: &str, address: &str, resources: &str) {
        self.command(Command::RegisterAgent {
            agent: AgentInfo {
                id: id.into(),
                hostname: format!("{id}.example"),
                address: address.into(),
                resources: Resources::parse(resources).expect("test resources parse"),
                state: AgentState::Active,
                registered_ms: 1_700_000_000_000,
                registration: 0,
                attributes: mesofs_kernel::attributes::Attributes::parse("rack:r1;zone:a")
                    .expect("test attributes parse"),
            },
            running: Vec::new(),
        });
    }

    /// Registers a framework; returns its id.
    pub fn framework(&mut self, name: &str, uid: u32) -> String {
        self.command(Command::RegisterFramework {
            name: name.into(),
            user: if uid == 0 {
                "root".into()
            } else {
                "nobody".into()
            },
            principal: Some("mount:fixture".into()),
            uid,
            gid: uid,
            time_ms: 1_700_000_001_000,
        });
        self.copy
            .view()
            .state
            .framework_by_name(name)
            .expect("registered")
            .id
            .clone()
    }

    /// Tears a framework down.
    pub fn teardown(&mut self, framework_id: &str) {
        self.command(Command::TeardownFramework {
            framework_id: framework_id.into(),
            time_ms: 1_700_000_009_000,
        });
    }

    /// Launches tasks (spec lines) on an agent, with the given ports for the first task.
    pub fn launch(&mut self, framework_id: &str, agent: &str, lines: &[&str], ports: &[u64]) {
        let tasks = lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let spec = parse_spec_line(line).expect("test spec parses");
                let ports: Vec<u64> = if i == 0 { ports.to_vec() } else { Vec::new() };
                let mut resources = spec.resources();
                if !ports.is_empty() {
                    let ranges: Vec<String> = ports.iter().map(|p| format!("{p}-{p}")).collect();
                    resources = resources.add(
                        &Resources::parse(&format!("ports:[{}]", ranges.join(",")))
                            .expect("ports parse"),
                    );
                }
                NewTask {
                    spec,
                    resources,
                    ports,
                }
            })
            .collect();
        self.command(Command::LaunchTasks {
            role: "*".into(),
            framework_id: framework_id.into(),
            agent_id: agent.into(),
            tasks,
            time_ms: 1_700_000_002_000,
        });
    }

    /// Reports a task's new state.
    pub fn update(
        &mut self,
        framework_id: &str,
        task: &str,
        state: TaskState,
        reason: &str,
        message: &str,
    ) {
        self.command(Command::UpdateTask {
            task_id: task_id(framework_id, task),
            transition: Transition {
                state,
                reason: reason.into(),
                message: message.into(),
                time_ms: 1_700_000_003_000,
                exit_code: None,
                signal: None,
            },
        });
    }

    /// Makes an offer.
    pub fn offer(
        &mut self,
        id: &str,
        framework_id: &str,
        agent: &str,
        resources: &str,
        created_ms: u64,
    ) {
        let seq = self.next_seq();
        self.copy.apply_leader(&LeaderEvent::OfferCreated {
            seq,
            offer: Offer {
                optimistic: false,
                id: id.into(),
                framework_id: framework_id.into(),
                agent_id: agent.into(),
                hostname: format!("{agent}.example"),
                resources: Resources::parse(resources).expect("test resources parse"),
                role: "*".into(),
                created_ms,
            },
        });
    }

    /// Removes an offer.
    pub fn remove_offer(&mut self, id: &str, framework_id: &str, reason: &str, rescinded: bool) {
        let seq = self.next_seq();
        self.copy.apply_leader(&LeaderEvent::OfferRemoved {
            seq,
            offer_id: id.into(),
            framework_id: framework_id.into(),
            reason: reason.into(),
            rescinded,
        });
    }

    /// Records a refused write.
    pub fn refused(&mut self, framework_id: &str, message: &str) {
        let seq = self.next_seq();
        self.copy.apply_leader(&LeaderEvent::Refused {
            seq,
            framework_id: framework_id.into(),
            message: message.into(),
        });
    }
}

/// The standard test cluster: agent `a1` (Files at `files`), framework `hello` (uid 0) with a
/// running task `web` (ports 31000, 31001) and a finished task `batch`, an offer `1-1` to it,
/// and framework `idle` (uid 65534) with nothing.
pub fn standard(files: &str) -> (Cluster, String, String) {
    let mut c = Cluster::new();
    c.agent("a1", files, "cpus:4;mem:4096;disk:1024;ports:[31000-31099]");
    let hello = c.framework("hello", 0);
    let idle = c.framework("idle", 65534);
    c.launch(
        &hello,
        "a1",
        &[
            "name=web cpus=1 mem=128 ports=2 -- ./serve",
            "name=batch cpus=0.5 mem=64 -- true",
        ],
        &[31000, 31001],
    );
    c.update(&hello, "web", TaskState::Running, "", "");
    c.update(&hello, "batch", TaskState::Running, "", "");
    c.update(
        &hello,
        "batch",
        TaskState::Finished,
        "REASON_COMMAND_EXITED",
        "exited with status 0",
    );
    c.offer(
        "1-1",
        &hello,
        "a1",
        "cpus:2.5;mem:3968;disk:1024;ports:[31002-31099]",
        1_700_000_004_000,
    );
    (c, hello, idle)
}
