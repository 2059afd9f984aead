//! A simulated cluster for the benchmarks that run no processes: N agents, M frameworks in 10
//! weighted roles and T running tasks, built by applying the real state machine's commands
//! (no Raft), timing each command.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use mesofs_kernel::allocator::roles::RoleSetting;
use mesofs_kernel::resources::{Resources, Scalar};
use mesofs_kernel::spec::parse_spec_line;
use mesofs_kernel::state::{
    AgentInfo, AgentState, Applied, ClusterState, Command, NewTask, TaskState, Transition,
};

/// How many roles the frameworks are spread over (weights 1 to this).
pub const ROLES: usize = 10;

/// A cluster built by applying commands.
pub struct Simulated {
    /// The state after every command.
    pub state: ClusterState,
    /// The log index of the last command applied.
    pub index: u64,
    /// How many frameworks it has.
    pub frameworks: usize,
    /// How many tasks it has.
    pub tasks: usize,
    /// Time spent in `apply` and commands applied, by kind of command.
    pub apply_times: BTreeMap<&'static str, (Duration, usize)>,
}

impl Simulated {
    /// Builds a cluster of `agents` agents of `cpus:16;mem:65536`, `frameworks` frameworks
    /// named `f0`, `f1`... in [`ROLES`] roles, and `tasks` running tasks of
    /// `cpus:0.1;mem:64`: task `t<i>` belongs to framework `f<i mod frameworks>` and runs on
    /// agent `a<i mod agents>`.
    pub fn build(agents: usize, frameworks: usize, tasks: usize) -> Result<Simulated> {
        let mut sim = Simulated {
            state: ClusterState::default(),
            index: 0,
            frameworks,
            tasks,
            apply_times: BTreeMap::new(),
        };
        let per_agent = Resources::parse("cpus:16;mem:65536")?;
        for a in 0..agents {
            sim.apply(
                "register agent",
                Command::RegisterAgent {
                    agent: AgentInfo {
                        id: format!("a{a}"),
                        hostname: format!("h{a}"),
                        address: format!("10.0.0.{}:5051", a % 250),
                        resources: per_agent.clone(),
                        state: AgentState::Active,
                        registered_ms: 1,
                        registration: 0,
                        attributes: Default::default(),
                    },
                    running: Vec::new(),
                },
            );
        }
        let mut fws = Vec::new();
        for f in 0..frameworks {
            let applied = sim.apply(
                "register framework",
                Command::RegisterFramework {
                    name: format!("f{f}"),
                    user: "root".into(),
                    principal: None,
                    uid: 0,
                    gid: 0,
                    time_ms: 1,
                },
            );
            let id = applied.framework_id.expect("registered");
            let role = format!("r{}", f % ROLES);
            sim.apply(
                "set roles",
                Command::SetFrameworkRoles {
                    framework_id: id.clone(),
                    roles: vec![role.clone()],
                },
            );
            fws.push((id, role));
        }
        for r in 0..ROLES {
            sim.apply(
                "configure role",
                Command::ConfigureRole {
                    role: format!("r{r}"),
                    setting: RoleSetting::Weight(Scalar::from_units(r as u64 + 1)),
                },
            );
        }
        let spec = parse_spec_line("name=t cpus=0.1 mem=64 -- sleep 1000")?;
        for t in 0..tasks {
            let (fw, role) = &fws[t % fws.len()];
            let mut spec = spec.clone();
            spec.name = format!("t{t}");
            sim.apply(
                "launch",
                Command::LaunchTasks {
                    framework_id: fw.clone(),
                    agent_id: format!("a{}", t % agents),
                    role: role.clone(),
                    tasks: vec![NewTask {
                        resources: spec.resources(),
                        spec,
                        ports: Vec::new(),
                    }],
                    time_ms: 2,
                },
            );
            sim.apply(
                "status update",
                Command::UpdateTask {
                    task_id: format!("{fw}.t{t}"),
                    transition: Transition {
                        state: TaskState::Running,
                        reason: String::new(),
                        message: String::new(),
                        time_ms: 3,
                        exit_code: None,
                        signal: None,
                    },
                },
            );
        }
        Ok(sim)
    }

    /// Applies one command at the next log index, timing it under `kind`.
    fn apply(&mut self, kind: &'static str, cmd: Command) -> Applied {
        self.index += 1;
        let started = Instant::now();
        let applied = self.state.apply(self.index, &cmd);
        let e = self.apply_times.entry(kind).or_default();
        e.0 += started.elapsed();
        e.1 += 1;
        applied
    }

    /// The names of task number `t`'s framework and of the task, as the mount shows them
    /// (`frameworks/<framework>/tasks/<task>`).
    pub fn task_path(&self, t: usize) -> (String, String) {
        (format!("f{}", t % self.frameworks), format!("t{t}"))
    }
}
