//! The allocator benchmark: a simulated cluster (no processes, no Raft) of N agents, M
//! frameworks and T running tasks built by applying the real state machine's commands, and the
//! real allocation pass over it. Prints the time per command in `apply`, the time of a full
//! pass (every agent with free resources) and of a pass with nothing free, offers per second,
//! and this process's resident memory.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use mesofs_kernel::allocator::pass;
use mesofs_kernel::resources::Resources;
use mesofs_kernel::spec::parse_spec_line;
use mesofs_kernel::state::{
    AgentInfo, AgentState, ClusterState, Command, NewTask, TaskState, Transition,
};

use super::spread;

/// Options of `mesofs bench alloc`.
#[derive(Args)]
pub struct AllocArgs {
    /// Simulated agents (each cpus:16;mem:65536).
    #[arg(long, default_value = "1000")]
    agents: usize,
    /// Frameworks, spread over 10 roles of weights 1 to 10.
    #[arg(long, default_value = "100")]
    frameworks: usize,
    /// Running tasks (each cpus:0.1;mem:64), spread over agents and frameworks.
    #[arg(long, default_value = "10000")]
    tasks: usize,
    /// Passes to time (the median is printed).
    #[arg(long, default_value = "5")]
    rounds: usize,
}

/// The resident memory of this process, in MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: AllocArgs) -> Result<()> {
    if args.agents == 0 || args.frameworks == 0 || args.rounds == 0 {
        bail!("--agents, --frameworks and --rounds must be more than 0");
    }
    let rss_before = rss_mib();
    let mut state = ClusterState::default();
    let mut index = 0u64;
    let mut apply_times: HashMap<&'static str, (Duration, usize)> = HashMap::new();
    let mut apply = |state: &mut ClusterState, kind: &'static str, cmd: Command| {
        index += 1;
        let started = Instant::now();
        let applied = state.apply(index, &cmd);
        let e = apply_times.entry(kind).or_default();
        e.0 += started.elapsed();
        e.1 += 1;
        applied
    };
    let per_agent = Resources::parse("cpus:16;mem:65536")?;
    for a in 0..args.agents {
        apply(
            &mut state,
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
    for f in 0..args.frameworks {
        let applied = apply(
            &mut state,
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
        let role = format!("r{}", f % 10);
        apply(
            &mut state,
            "set roles",
            Command::SetFrameworkRoles {
                framework_id: id.clone(),
                roles: vec![role.clone()],
            },
        );
        fws.push((id, role));
    }
    for r in 0..10u64 {
        apply(
            &mut state,
            "configure role",
            Command::ConfigureRole {
                role: format!("r{r}"),
                setting: mesofs_kernel::allocator::roles::RoleSetting::Weight(
                    mesofs_kernel::resources::Scalar::from_units(r + 1),
                ),
            },
        );
    }
    let spec = parse_spec_line("name=t cpus=0.1 mem=64 -- sleep 1000")?;
    for t in 0..args.tasks {
        let (fw, role) = &fws[t % fws.len()];
        let mut spec = spec.clone();
        spec.name = format!("t{t}");
        apply(
            &mut state,
            "launch",
            Command::LaunchTasks {
                framework_id: fw.clone(),
                agent_id: format!("a{}", t % args.agents),
                role: role.clone(),
                tasks: vec![NewTask {
                    resources: spec.resources(),
                    spec,
                    ports: Vec::new(),
                }],
                time_ms: 2,
            },
        );
        apply(
            &mut state,
            "status update",
            Command::UpdateTask {
                task_id: format!("{fw}.t{t}"),
                transition: Transition {
                    state: TaskState::Running,
                    reason: String::new(),
                    message: String::new(),
                    time_ms: 3,
                },
            },
        );
    }
    let connected: HashSet<String> = state.agents.keys().cloned().collect();
    let (pending, pending_held, filters) = (HashMap::new(), HashMap::new(), HashMap::new());
    let input = |offers: &[mesofs_kernel::watch::Offer]| {
        pass::run(&pass::Input {
            state: &state,
            connected: &connected,
            offers,
            pending: &pending,
            pending_held: &pending_held,
            filters: &filters,
            now: Instant::now(),
        })
    };
    let mut full = Vec::new();
    let mut offered = 0;
    let mut planned_offers = Vec::new();
    for _ in 0..args.rounds {
        let started = Instant::now();
        let out = input(&[]);
        full.push(started.elapsed());
        offered = out.planned.len();
        planned_offers = out.planned;
    }
    // Every free resource held by an offer: a pass finds nothing to offer.
    let offers: Vec<mesofs_kernel::watch::Offer> = planned_offers
        .into_iter()
        .enumerate()
        .map(|(i, p)| mesofs_kernel::watch::Offer {
            id: format!("1-{i}"),
            framework_id: p.framework_id,
            agent_id: p.agent_id,
            hostname: String::new(),
            resources: p.resources,
            role: p.role,
            created_ms: 0,
            optimistic: p.optimistic,
        })
        .collect();
    let mut idle = Vec::new();
    for _ in 0..args.rounds {
        let started = Instant::now();
        input(&offers);
        idle.push(started.elapsed());
    }
    let (full_med, full_min, full_max) = spread(&full);
    let (idle_med, idle_min, idle_max) = spread(&idle);
    println!(
        "cluster: {} agents, {} frameworks in 10 weighted roles, {} running tasks",
        args.agents, args.frameworks, args.tasks
    );
    let mut kinds: Vec<_> = apply_times.into_iter().collect();
    kinds.sort_by_key(|(k, _)| *k);
    for (kind, (total, n)) in kinds {
        println!(
            "apply {kind}: {:.1} us per command ({n} commands)",
            total.as_secs_f64() * 1e6 / n as f64
        );
    }
    println!(
        "full pass (every agent with free resources): median {full_med:.3} ms (min {full_min:.3}, max {full_max:.3}), {offered} offers, {:.0} offers/s",
        offered as f64 / (full_med / 1000.0).max(1e-9)
    );
    println!(
        "pass with nothing free: median {idle_med:.3} ms (min {idle_min:.3}, max {idle_max:.3})"
    );
    println!(
        "memory: {:.0} MiB resident ({:.0} MiB for the state and the passes)",
        rss_mib(),
        rss_mib() - rss_before
    );
    Ok(())
}
