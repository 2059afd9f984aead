//! The allocator benchmark: a simulated cluster (no processes, no Raft) of N agents, M
//! frameworks and T running tasks built by applying the real state machine's commands, and the
//! real allocation pass over it. Prints the time per command in `apply`, the time of a full
//! pass (every agent with free resources) and of a pass with nothing free, offers per second,
//! and this process's resident memory; what a Raft snapshot or a new watcher's snapshot costs
//! (the copy made under the state's lock, its encoding, and commands applied while a copy is
//! held); then, through a real mount of that state beside a
//! small cluster's, the latency of `cat` of a task's `state` and of `ls -l` of a framework's
//! `tasks/` in both (`mount_reads`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use mesofs_kernel::allocator::pass;
use mesofs_kernel::state::{ClusterState, Command};
use mesofs_kernel::watch::Offers;

use super::mount_reads::{self, Reads};
use super::simulated::{Simulated, ROLES};
use super::{percentiles, spread};

/// Options of `mesofs bench alloc`.
#[derive(Args)]
pub struct AllocArgs {
    /// Simulated agents (each cpus:16;mem:65536).
    #[arg(long, default_value = "1000")]
    agents: usize,
    /// Frameworks, spread over 10 roles of weights 1 to 10 (named f0, f1...).
    #[arg(long, default_value = "100")]
    frameworks: usize,
    /// Running tasks (each cpus:0.1;mem:64), spread over agents and frameworks.
    #[arg(long, default_value = "10000")]
    tasks: usize,
    /// Passes to time, and `ls -l` listings through the mount (medians are printed).
    #[arg(long, default_value = "5")]
    rounds: usize,
    /// Tasks of the small cluster whose mount is read in the same run for comparison (its
    /// agents and frameworks scaled down in proportion, at least 1 each).
    #[arg(long, default_value = "100")]
    small_tasks: usize,
    /// Reads of `state` files timed in each mount.
    #[arg(long, default_value = "500")]
    cat_samples: usize,
    /// Mounts whose writes the state remembers, one client each of its own principal, when
    /// `apply` of a client's write is timed.
    #[arg(long, default_value = "20000")]
    clients: usize,
    /// Skip the mount's figures (they need root and /dev/fuse).
    #[arg(long)]
    no_mount: bool,
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

/// Prints what a snapshot of the state costs: the copy a snapshot takes under the state's lock
/// (commands wait for it), the encoding done outside it, and commands applied while the copy is
/// held (with persistent maps, the first change to each part of the state copies that part).
fn snapshot_figures(state: &ClusterState, rounds: usize) -> Result<()> {
    let (mut clones, mut encodes) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for _ in 0..rounds {
        let started = Instant::now();
        let copy = state.clone();
        clones.push(started.elapsed());
        let started = Instant::now();
        bytes = serde_json::to_vec(&copy)?.len();
        encodes.push(started.elapsed());
    }
    let (clone_med, clone_min, clone_max) = spread(&clones);
    let (encode_med, encode_min, encode_max) = spread(&encodes);
    println!(
        "snapshot, under the state's lock (a copy of the state; commands wait for it): median {clone_med:.3} ms (min {clone_min:.3}, max {clone_max:.3})"
    );
    println!(
        "snapshot, encoding the copy (JSON, {:.0} MiB): median {encode_med:.3} ms (min {encode_min:.3}, max {encode_max:.3})",
        bytes as f64 / (1024.0 * 1024.0)
    );
    // Kills of tasks spread over the whole map, each in a part of it no other touched: applied
    // first while a snapshot's copy shares the state, then again once those parts are copied.
    let mut live = state.clone();
    let frozen = state.clone();
    let step = (state.tasks.len() / 1000).max(1);
    let sample: Vec<String> = state.tasks.keys().step_by(step).cloned().collect();
    let mut index = state.applied_index;
    let mut kills = |live: &mut ClusterState| {
        let started = Instant::now();
        for id in &sample {
            index += 1;
            live.apply(
                index,
                &Command::KillTask {
                    task_id: id.clone(),
                    time_ms: 4,
                },
            );
        }
        started.elapsed().as_secs_f64() * 1e6 / sample.len().max(1) as f64
    };
    let first = kills(&mut live);
    let again = kills(&mut live);
    drop(frozen);
    println!(
        "apply kill, {} tasks spread over the state, while a snapshot's copy is held: {first:.1} us per command the first time, {again:.1} us the second",
        sample.len()
    );
    Ok(())
}

/// Prints what `apply` of a client's write costs with one client remembered and with `clients`
/// of them (every mount's exactly-once state lives in the replicated state), and what a
/// snapshot's copy costs then; in the same run, as a ratio.
fn client_write_figures(state: &ClusterState, clients: usize) {
    let write = |client: usize, seq: u64, time_ms: u64| Command::Write {
        id: mesofs_kernel::state::clients::WriteId {
            client: format!("mount:m{client}/c"),
            seq,
            done_below: seq,
        },
        time_ms,
        // Refused at once (no such task): the figure is the write's bookkeeping.
        command: Box::new(Command::KillTask {
            task_id: "no-such-task".into(),
            time_ms,
        }),
    };
    let timed = |s: &mut ClusterState, clients: usize| {
        let mut index = s.applied_index;
        let started = Instant::now();
        let n = 2_000;
        for i in 0..n {
            index += 1;
            s.apply(index, &write(i % clients, 2 + (i / clients) as u64, 10));
        }
        started.elapsed().as_secs_f64() * 1e6 / n as f64
    };
    let mut one = state.clone();
    one.apply(one.applied_index + 1, &write(0, 1, 1));
    let alone = timed(&mut one, 1);
    let mut many = state.clone();
    let mut index = many.applied_index;
    for c in 0..clients {
        index += 1;
        many.apply(index, &write(c, 1, 1));
    }
    let crowded = timed(&mut many, clients);
    let started = Instant::now();
    let copy = many.clone();
    let copied = started.elapsed();
    drop(copy);
    println!(
        "apply of a client's write: {alone:.1} us with 1 client remembered, {crowded:.1} us with {clients} (ratio {:.2}); a snapshot's copy with {clients} clients: {:.3} ms",
        crowded / alone,
        copied.as_secs_f64() * 1e3
    );
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: AllocArgs) -> Result<()> {
    if args.agents == 0 || args.frameworks == 0 || args.rounds == 0 || args.clients == 0 {
        bail!("--agents, --frameworks, --rounds and --clients must be more than 0");
    }
    if !args.no_mount && (args.tasks == 0 || args.small_tasks == 0 || args.cat_samples == 0) {
        bail!("the mount's figures need --tasks, --small-tasks and --cat-samples above 0 (or --no-mount)");
    }
    let rss_before = rss_mib();
    let sim = Simulated::build(args.agents, args.frameworks, args.tasks)?;
    let state = &sim.state;
    let connected: imbl::OrdSet<String> = state.agents.keys().cloned().collect();
    let (pending, pending_held, filters) = (HashMap::new(), HashMap::new(), HashMap::new());
    // The pass as the leader runs it: a copy of what it needs made under the state's lock, the
    // rest outside it. The copy's time is what commands wait for.
    let mut gathers = Vec::new();
    let mut pass = |allocator: &mut pass::Allocator, offers: &Offers| {
        let started = Instant::now();
        let cluster = pass::Cluster::gather(state);
        gathers.push(started.elapsed());
        let out = allocator.pass(&pass::Input {
            cluster: &cluster,
            connected: &connected,
            offers,
            pending: &pending,
            pending_held: &pending_held,
            filters: &filters,
            now: Instant::now(),
        });
        (started.elapsed(), out)
    };
    // A new leader's first pass: nothing kept, every agent looked at and offered.
    let (_, first) = pass(&mut pass::Allocator::default(), &Offers::default());
    let offered = first.planned.len();
    let mut offers = Offers::default();
    for (i, p) in first.planned.into_iter().enumerate() {
        offers.insert(mesofs_kernel::watch::Offer {
            id: format!("1-{i}"),
            framework_id: p.framework_id,
            agent_id: p.agent_id,
            hostname: String::new(),
            resources: p.resources,
            role: p.role,
            created_ms: 0,
            optimistic: p.optimistic,
        });
    }
    // The leader's allocator, kept from pass to pass; it starts with every free resource
    // offered.
    let mut kept = pass::Allocator::default();
    pass(&mut kept, &offers);
    let (mut cold, mut full, mut after, mut idle) = (vec![], vec![], vec![], vec![]);
    let mut looked_at = [0; 3];
    for _ in 0..args.rounds {
        cold.push(pass(&mut pass::Allocator::default(), &Offers::default()).0);
        // Every offer withdrawn (declined, expired): every agent free again, and looked at.
        let (took, out) = pass(&mut kept, &Offers::default());
        full.push(took);
        looked_at[0] = out.agents_changed;
        // The offers that pass planned made: every agent looked at again, nothing free.
        let (took, out) = pass(&mut kept, &offers);
        after.push(took);
        looked_at[1] = out.agents_changed;
        // Nothing changed since.
        let (took, out) = pass(&mut kept, &offers);
        idle.push(took);
        looked_at[2] = out.agents_changed;
    }
    let (gather_med, gather_min, gather_max) = spread(&gathers);
    println!(
        "cluster: {} agents, {} frameworks in {ROLES} weighted roles, {} running tasks",
        args.agents, args.frameworks, args.tasks
    );
    for (kind, (total, n)) in &sim.apply_times {
        println!(
            "apply {kind}: {:.1} us per command ({n} commands)",
            total.as_secs_f64() * 1e6 / *n as f64
        );
    }
    let line = |what: &str, samples: &[Duration], offers: Option<usize>| {
        let (med, min, max) = spread(samples);
        let rate = offers.map_or(String::new(), |n| {
            format!(
                ", {n} offers, {:.0} offers/s",
                n as f64 / (med / 1000.0).max(1e-9)
            )
        });
        println!("{what}: median {med:.3} ms (min {min:.3}, max {max:.3}){rate}");
    };
    line(
        "full pass (every agent free, every offer just withdrawn; the leader's allocator, kept from the pass before)",
        &full,
        Some(offered),
    );
    line(
        "full pass of a new leader (nothing kept from a pass before)",
        &cold,
        Some(offered),
    );
    line(
        "pass after a full pass (its offers made: every agent changed, nothing free)",
        &after,
        None,
    );
    line("pass with nothing changed and nothing free", &idle, None);
    println!(
        "agents looked at again by those three passes of the kept allocator: {}, {}, {}",
        looked_at[0], looked_at[1], looked_at[2]
    );
    println!(
        "of a pass, under the state's lock (the copy of what it needs; commands wait for it): median {gather_med:.3} ms (min {gather_min:.3}, max {gather_max:.3})"
    );
    println!(
        "memory: {:.0} MiB resident ({:.0} MiB for the state and the passes)",
        rss_mib(),
        rss_mib() - rss_before
    );
    snapshot_figures(state, args.rounds)?;
    client_write_figures(state, args.clients);
    if args.no_mount {
        return Ok(());
    }
    // Scaled down in proportion, so each framework has about as many tasks in both and
    // `ls -l tasks/` lists about as many entries.
    let scale = |n: usize| (n * args.small_tasks / args.tasks).max(1);
    let (small_agents, small_frameworks) = (scale(args.agents), scale(args.frameworks));
    let small = Simulated::build(small_agents, small_frameworks, args.small_tasks)?;
    let (framework, _) = sim.task_path(0);
    println!(
        "mount reads, from frameworks/{framework}/ (FUSE; the kernel caches nothing), of this cluster and, in turn with it, of a small one ({small_agents} agents, {small_frameworks} frameworks, {} tasks):",
        args.small_tasks
    );
    let (cat_samples, rounds) = (args.cat_samples, args.rounds);
    let (large, small) =
        tokio::task::block_in_place(|| mount_reads::measure(sim, small, cat_samples, rounds))?;
    let cat_us = |r: &Reads| {
        let (p50, p99) = percentiles(&r.cat);
        (p50.as_secs_f64() * 1e6, p99.as_secs_f64() * 1e6)
    };
    let ms = |samples: &[Duration]| spread(samples).0;
    let (large_cat, large_p99) = cat_us(&large);
    let (small_cat, small_p99) = cat_us(&small);
    for (name, tasks, (p50, p99), r) in [
        ("large", args.tasks, (large_cat, large_p99), &large),
        ("small", args.small_tasks, (small_cat, small_p99), &small),
    ] {
        println!(
            "  cat tasks/<t>/state, {name} cluster ({tasks} tasks): median {p50:.1} us, p99 {p99:.1} us, over {} reads of {} tasks' state files (open, fstat, read, close)",
            r.cat.len(),
            r.files
        );
    }
    println!(
        "  cat ratio large / small: {:.2} (of the medians)",
        large_cat / small_cat
    );
    let (large_ls, small_ls) = (ms(&large.ls), ms(&small.ls));
    for (name, tasks, median, r) in [
        ("large", args.tasks, large_ls, &large),
        ("small", args.small_tasks, small_ls, &small),
    ] {
        println!(
            "  ls -l tasks/, {name} cluster ({tasks} tasks): median {median:.3} ms for {} entries, over {} listings (readdir and an lstat of each)",
            r.entries,
            r.ls.len()
        );
    }
    println!(
        "  ls -l ratio large / small: {:.2} (of the medians)",
        large_ls / small_ls
    );
    for (name, r) in [("large", &large), ("small", &small)] {
        println!(
            "  the ls -l tasks/ command, {name} cluster: median {:.3} ms (the process, its start and its two xattr calls per entry included)",
            ms(&r.ls_command)
        );
    }
    Ok(())
}
