//! The launch benchmark (`mesofs bench`): launches tasks of `true` through a real mount on a
//! local one-machine cluster (master, agent and mount in this process; tasks in real cgroups
//! under real supervisors), one at a time and pipelined, and in the same rounds measures the
//! floor (`floor`): the system calls of an isolated launch made directly, one at a time and as
//! many at a time as mesofs had in flight. The ratio of mesofs's pipelined rate to the floor's
//! is the figure that matters; each is printed, and the ratio is their quotient.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use mesofs_agent::daemon::{self as agent, AgentConfig};
use mesofs_kernel::client::{Connector, MasterClient};
use mesofs_kernel::master::{self, LeaderConfig, MasterConfig, RaftTimings};

use super::accounting::{self, Cpu, Fsyncs, Part};
use super::floor::Floor;
use super::percentiles;

/// Options of the launch benchmark.
#[derive(Args, Clone)]
pub struct LaunchArgs {
    /// Tasks of `true` launched pipelined in each round.
    #[arg(long, default_value = "200")]
    tasks: usize,
    /// Tasks per launch write when pipelined (each write accepts one offer).
    #[arg(long, default_value = "1")]
    batch: usize,
    /// Tasks launched one at a time in each round, each once the one before has finished.
    #[arg(long, default_value = "50")]
    one_at_a_time: usize,
    /// Rounds measured; the median round and the spread are printed.
    #[arg(long, default_value = "3")]
    rounds: usize,
    /// Tasks launched (and floor launches made) before the first round, not measured.
    #[arg(long, default_value = "20")]
    warmup: usize,
    /// Tasks of `sleep` left running at the end, to measure the memory each costs beyond
    /// its command (0: not measured).
    #[arg(long, default_value = "20")]
    resident: usize,
    /// Seconds for which the resident tasks' `usage` files are read, every one once a second,
    /// to measure what that costs (against as many seconds idle before; 0: not measured).
    #[arg(long, default_value = "5")]
    usage_seconds: u64,
    /// Where to put the temporary cluster's data and mount (a fresh directory under it).
    #[arg(long, default_value = "/tmp")]
    dir: PathBuf,
    /// The agent's confinement, as `mesofs agent` takes it (all of it by default).
    #[command(flatten)]
    confinement: crate::ConfinementArgs,
}

/// The most floor launches at a time, however many tasks mesofs had in flight.
const MAX_IN_FLIGHT: usize = 64;

/// What one round measured.
struct Round {
    /// One at a time: launch write to TASK_RUNNING visible, median and p99.
    running: (Duration, Duration),
    /// One at a time: launch write to TASK_FINISHED visible, median and p99.
    finished: (Duration, Duration),
    /// Pipelined through the mount, tasks per second.
    rate: f64,
    /// Tasks mesofs had launched and not yet finished, on average over the pipelined run.
    mean_in_flight: f64,
    /// Floor launches at a time: `mean_in_flight`, rounded, within 1..=MAX_IN_FLIGHT.
    in_flight: usize,
    /// The floor, one at a time and `in_flight` at a time, launches per second.
    floor_one: f64,
    floor_many: f64,
    /// CPU time spent during the pipelined run, and the tasks it launched.
    cpu: Cpu,
    tasks: usize,
}

impl Round {
    fn ratio(&self) -> f64 {
        self.rate / self.floor_many
    }

    /// CPU time per pipelined task: this process (master, agent, mount), the agent's spawner
    /// and the tasks' supervisors and commands.
    fn cpu_per_task(&self) -> Duration {
        self.cpu.total() / self.tasks as u32
    }
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: LaunchArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark mounts FUSE and creates cgroups: run it as root");
    }
    if args.tasks == 0 || args.batch == 0 || args.one_at_a_time == 0 || args.rounds == 0 {
        bail!("--tasks, --batch, --one-at-a-time and --rounds must be at least 1");
    }
    let tmp = tempfile::Builder::new()
        .prefix("mesofs-bench-")
        .tempdir_in(&args.dir)
        .context("creating the bench directory")?;
    let mount_path = tmp.path().join("mnt");
    std::fs::create_dir_all(&mount_path)?;
    // Certificates as `mesofs dev` makes them: the real, mutual-TLS path.
    let tls = crate::certs::dev_tls(tmp.path(), "bench-agent", "127.0.0.1".parse()?)?;
    // Each part on threads of its own, so that its CPU time can be told apart.
    let [master_rt, agent_rt, mount_rt] = Part::ALL.map(accounting::runtime);
    let (master_rt, agent_rt, mount_rt) = (master_rt?, agent_rt?, mount_rt?);
    let master_config = MasterConfig {
        id: 1,
        listen: "127.0.0.1:0".parse()?,
        advertise: None,
        peers: Default::default(),
        data_dir: tmp.path().join("master"),
        timings: RaftTimings::default(),
        leader: LeaderConfig {
            acls: std::sync::Arc::new(tls.acls()),
            ..LeaderConfig::default()
        },
        tls: Some(tls.master),
    };
    let master = master_rt.spawn(master::start(master_config)).await??;
    // Room for every task of the run at once: resources a finished task frees come back in
    // offers of their own, and the driver always takes `offers/next`, so the first offer must
    // never run out. The tasks are `true`: the room is declared, not used; isolation is real.
    let most =
        args.warmup + args.rounds * (args.one_at_a_time + args.tasks) + args.tasks + args.resident;
    let resources = format!("cpus:{};mem:{};disk:0;ports:[31000-31001]", most, most * 16);
    let agent_config = AgentConfig {
        masters: vec![master.addr.to_string()],
        work_dir: tmp.path().join("agent"),
        listen: SocketAddr::new(master.addr.ip(), 0),
        advertise: None,
        hostname: "localhost".into(),
        resources: Some(resources),
        attributes: String::new(),
        supervisor: std::env::current_exe().ok(),
        tls: Some(tls.agent),
        confinement: args.confinement.config(),
    };
    let agent = agent_rt.spawn(agent::start(agent_config)).await??;
    let client = MasterClient::new(vec![master.addr.to_string()], Connector::tls(tls.mount));
    let copy = {
        let _on = mount_rt.enter();
        client.spawn_local_copy()
    };
    let mount = mesofs_fs::mount(&mount_path, client, copy, mount_rt.handle().clone())?;

    let mp = mount_path.clone();
    let agent_dir = tmp.path().join("agent");
    let a = args.clone();
    // The driver does blocking file I/O on the mount and forks: keep it off the async workers.
    let measured = tokio::task::spawn_blocking(move || measure(&mp, &agent_dir, &a)).await;

    agent_rt
        .spawn(async move { agent.shutdown().await })
        .await?;
    tokio::task::spawn_blocking(move || mount.unmount()).await??;
    master_rt
        .spawn(async move { master.shutdown().await })
        .await?;
    drop((master_rt, agent_rt, mount_rt));
    let measured = measured??;
    report(&args, &measured.rounds);
    match &measured.fsyncs {
        Ok((parts, all)) => {
            let per = |n: u64| n as f64 / args.tasks as f64;
            println!(
                "fsyncs per task (counted by the kernel over one more pipelined run of {} tasks): {:.2} in all; master {:.2}, agent {:.2}, mount {:.2}",
                args.tasks,
                per(*all),
                per(parts[0]),
                per(parts[1]),
                per(parts[2])
            );
        }
        Err(why) => println!("fsyncs per task: not counted: {why:#}"),
    }
    if let Some(r) = &measured.resident {
        println!(
            "memory per running task beyond its command ({} tasks of `sleep`): its supervisor's and init's PSS {:.0} KiB (median), this process's (master, agent, mount) PSS growth {:.0} KiB; {:.0} KiB in all",
            r.tasks,
            r.supervisor_pss,
            r.process_pss,
            r.supervisor_pss + r.process_pss.max(0.0)
        );
        if let Some(u) = &r.usage {
            println!(
                "every running task's file read once a second ({} tasks, {} s each, after {} s idle):",
                r.tasks, u.seconds, u.seconds
            );
            for (name, reads) in [("state", &u.state), ("usage", &u.usage)] {
                let (median, _) = super::percentiles(&reads.rounds);
                let (all, parts) = u.cost(reads);
                println!(
                    "  {name}: a second's reads take {:.2} ms (median; slowest {:.2} ms); CPU per second above idle {:.2} ms in all; master {:.2}, agent {:.2}, mount {:.2}",
                    ms(median),
                    ms(reads.rounds.iter().copied().max().unwrap_or_default()),
                    all,
                    parts[0],
                    parts[1],
                    parts[2]
                );
            }
            let (usage, state) = (u.cost(&u.usage).0, u.cost(&u.state).0);
            if state > 0.0 {
                println!(
                    "  CPU of usage reads / CPU of state reads: {:.2}",
                    usage / state
                );
            } else {
                println!("  CPU of usage reads / CPU of state reads: none (state reads cost nothing measurable above idle)");
            }
        }
    }
    Ok(())
}

/// The warm-up, then every round, then the resident tasks' memory.
fn measure(mount: &Path, agent_dir: &Path, args: &LaunchArgs) -> Result<Measured> {
    let driver = Driver::start(mount)?;
    let floor = Floor::new("launch")?;
    if args.warmup > 0 {
        driver.pipelined("w", args.warmup, args.batch)?;
        floor.rate(args.warmup, 1)?;
    }
    let mut rounds = Vec::with_capacity(args.rounds);
    for r in 0..args.rounds {
        let floor_one = floor.rate(args.tasks, 1)?;
        let mut running = Vec::with_capacity(args.one_at_a_time);
        let mut finished = Vec::with_capacity(args.one_at_a_time);
        for i in 0..args.one_at_a_time {
            let (to_running, to_finished) = driver.one(&format!("s{r}-{i}"))?;
            running.push(to_running);
            finished.push(to_finished);
        }
        let cpu_before = Cpu::now();
        let piped = driver.pipelined(&format!("p{r}-"), args.tasks, args.batch)?;
        let cpu = Cpu::now().since(&cpu_before);
        let in_flight = (piped.mean_in_flight.round() as usize).clamp(1, MAX_IN_FLIGHT);
        let floor_many = floor.rate(args.tasks, in_flight)?;
        let round = Round {
            running: percentiles(&running),
            finished: percentiles(&finished),
            rate: args.tasks as f64 / piped.elapsed.as_secs_f64(),
            mean_in_flight: piped.mean_in_flight,
            in_flight,
            floor_one,
            floor_many,
            cpu,
            tasks: args.tasks,
        };
        println!(
            "  round {}: one at a time, to TASK_RUNNING {:.2} ms (p99 {:.2}), to TASK_FINISHED {:.2} ms (p99 {:.2}); pipelined {:.1} tasks/s ({:.1} in flight); floor {:.1} tasks/s one at a time, {:.1} {} at a time; ratio {:.3}",
            r + 1,
            ms(round.running.0),
            ms(round.running.1),
            ms(round.finished.0),
            ms(round.finished.1),
            round.rate,
            round.mean_in_flight,
            round.floor_one,
            round.floor_many,
            round.in_flight,
            round.ratio()
        );
        rounds.push(round);
    }
    // Counted apart: the kernel traces every system call while the counters are open.
    let fsyncs = match Fsyncs::open() {
        Ok(counters) => {
            let (parts_before, before) = counters.read();
            driver.pipelined("f", args.tasks, args.batch)?;
            let (parts, after) = counters.read();
            Ok((
                [0, 1, 2].map(|i| parts[i] - parts_before[i]),
                after - before,
            ))
        }
        Err(why) => Err(why),
    };
    let resident = match args.resident {
        0 => None,
        n => Some(driver.resident(n, agent_dir, args.usage_seconds)?),
    };
    Ok(Measured {
        rounds,
        fsyncs,
        resident,
    })
}

/// What a run measured.
struct Measured {
    rounds: Vec<Round>,
    /// Fsyncs per part and in all over one more pipelined run, or why they were not counted.
    fsyncs: Result<([u64; 3], u64)>,
    resident: Option<Resident>,
}

/// The names of the tasks left running to measure their memory start with this.
const RESIDENT: &str = "resident-";

/// What running tasks cost in memory beyond their commands, in KiB.
struct Resident {
    tasks: usize,
    /// The median PSS of a task's supervisor and init.
    supervisor_pss: f64,
    /// The growth of this process's PSS (master, agent and mount) per running task.
    process_pss: f64,
    /// What reading every one's usage once a second cost, if measured.
    usage: Option<UsageReads>,
}

/// Reads of one file of every resident task, once a second.
struct Reads {
    /// How long each second's reads took.
    rounds: Vec<Duration>,
    /// CPU time over those seconds.
    cpu: Cpu,
}

/// Every resident task's `usage` read once a second, against its `state` (which the mount
/// answers from its copy of the state, asking no agent), after as many idle seconds.
struct UsageReads {
    idle: Cpu,
    state: Reads,
    usage: Reads,
    seconds: u64,
}

impl UsageReads {
    /// CPU per second above idle, in ms, of some reads: in all, and for the master, the agent
    /// and the mount.
    fn cost(&self, reads: &Reads) -> (f64, [f64; 3]) {
        let per_s = |reading: Duration, idle: Duration| {
            (reading.as_secs_f64() - idle.as_secs_f64()) * 1000.0 / self.seconds as f64
        };
        let parts = [0, 1, 2].map(|i| per_s(reads.cpu.parts[i], self.idle.parts[i]));
        (per_s(reads.cpu.total(), self.idle.total()), parts)
    }
}

/// The proportional set size of a process in KiB, from `smaps_rollup`.
fn pss_kib(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The pids of the supervisors of tasks whose work directory is under `agent_dir`, and of
/// their inits (which show the same command line), each with its task's exit file: one per
/// task.
fn supervisors(agent_dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let under = agent_dir.as_os_str().as_encoded_bytes();
    dir.filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            if args.get(1) != Some(&&b"supervise"[..]) {
                return None;
            }
            let exit_file = args.iter().find(|a| a.starts_with(under))?.to_vec();
            Some((pid, exit_file))
        })
        .collect()
}

/// Prints the median round (by ratio) and the spread of every figure over the rounds.
fn report(args: &LaunchArgs, rounds: &[Round]) {
    let mut order: Vec<&Round> = rounds.iter().collect();
    order.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
    let m = order[order.len() / 2];
    println!(
        "mesofs bench: {} round(s) after a warm-up of {} task(s); each round {} task(s) of `true` one at a time, {} pipelined ({} per launch write), and the floor (cgroups made with mkdir and writes, clone, join, exec `true`, wait, rmdir)",
        args.rounds, args.warmup, args.one_at_a_time, args.tasks, args.batch
    );
    println!("the median round (by ratio):");
    println!(
        "  one at a time, launch write to TASK_RUNNING visible: median {:.2} ms, p99 {:.2} ms",
        ms(m.running.0),
        ms(m.running.1)
    );
    println!(
        "  one at a time, launch write to TASK_FINISHED visible: median {:.2} ms, p99 {:.2} ms",
        ms(m.finished.0),
        ms(m.finished.1)
    );
    println!(
        "  pipelined through the mount: {:.1} tasks/s, {:.1} tasks in flight on average",
        m.rate, m.mean_in_flight
    );
    println!("  floor, one at a time: {:.1} tasks/s", m.floor_one);
    println!(
        "  floor, {} at a time: {:.1} tasks/s",
        m.in_flight, m.floor_many
    );
    println!("  ratio mesofs / floor: {:.3}", m.ratio());
    let per = |d: Duration| ms(d) / m.tasks as f64;
    println!(
        "  CPU per pipelined task: {:.2} ms; master {:.2}, agent {:.2}, mount {:.2}, the agent's spawner {:.2}, the tasks' supervisors and commands {:.2}, the benchmark's driver {:.2}",
        ms(m.cpu_per_task()),
        per(m.cpu.parts[0]),
        per(m.cpu.parts[1]),
        per(m.cpu.parts[2]),
        per(m.cpu.spawner),
        per(m.cpu.tasks),
        per(m.cpu.driver()),
    );
    let switches = |i: usize| m.cpu.switches[i] as f64 / m.tasks as f64;
    println!(
        "  threads switched in to run, per pipelined task: master {:.1}, agent {:.1}, mount {:.1}",
        switches(0),
        switches(1),
        switches(2)
    );
    let spread = |what: &str, unit: &str, f: &dyn Fn(&Round) -> f64| {
        let values: Vec<f64> = rounds.iter().map(f).collect();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        println!("  {what}: {min:.2}-{max:.2} {unit}");
    };
    println!("spread over the rounds (min-max):");
    spread("to TASK_RUNNING, median", "ms", &|r| ms(r.running.0));
    spread("to TASK_FINISHED, median", "ms", &|r| ms(r.finished.0));
    spread("pipelined", "tasks/s", &|r| r.rate);
    spread("floor, one at a time", "tasks/s", &|r| r.floor_one);
    spread("floor, as many at a time as mesofs", "tasks/s", &|r| {
        r.floor_many
    });
    spread("ratio", "", &Round::ratio);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// When each task's lines appeared in the framework's `events_pipe`.
#[derive(Default)]
struct Seen {
    running: HashMap<String, Instant>,
    finished: HashMap<String, Instant>,
    /// The resident tasks killed at the end, on request.
    killed: HashSet<String>,
    failed: Vec<String>,
}

/// A framework on the mount launching tasks, and a reader of its `events_pipe`.
struct Driver {
    framework: PathBuf,
    seen: Arc<(Mutex<Seen>, Condvar)>,
}

/// What a pipelined run gave.
struct Piped {
    /// From the first launch write to the last TASK_FINISHED visible.
    elapsed: Duration,
    /// Tasks launched and not yet finished, averaged over `elapsed` (Little's law).
    mean_in_flight: f64,
}

impl Driver {
    /// Registers the framework and starts reading its events.
    fn start(mount: &Path) -> Result<Driver> {
        let framework = mount.join("frameworks/bench");
        std::fs::create_dir(&framework).context("mkdir frameworks/bench")?;
        let seen: Arc<(Mutex<Seen>, Condvar)> = Arc::default();
        let events =
            std::fs::File::open(framework.join("events_pipe")).context("opening events_pipe")?;
        let reader_seen = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(events).lines() {
                let Ok(line) = line else { return };
                let now = Instant::now();
                let mut parts = line.split_whitespace();
                if parts.next() != Some("task") {
                    continue;
                }
                let (Some(name), Some(state)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let (lock, changed) = &*reader_seen;
                let mut s = lock.lock().expect("seen lock");
                match state {
                    "TASK_RUNNING" => {
                        s.running.insert(name.to_string(), now);
                    }
                    "TASK_FINISHED" => {
                        s.finished.insert(name.to_string(), now);
                    }
                    "TASK_KILLED" if name.starts_with(RESIDENT) => {
                        s.killed.insert(name.to_string());
                    }
                    "TASK_FAILED" | "TASK_LOST" | "TASK_KILLED" | "TASK_ERROR" => {
                        s.failed.push(line.clone())
                    }
                    _ => continue,
                }
                changed.notify_all();
            }
        });
        Ok(Driver { framework, seen })
    }

    /// Writes one launch of `names` running `true` on the next offer; returns when `write(2)`
    /// was called.
    fn launch(&self, names: &[String]) -> Result<Instant> {
        self.launch_argv(names, r#"["true"]"#)
    }

    /// Writes one launch of `names` running `argv` (JSON) on the next offer; returns when
    /// `write(2)` was called.
    fn launch_argv(&self, names: &[String], argv: &str) -> Result<Instant> {
        let offer = std::fs::read_to_string(self.framework.join("offers/next"))
            .context("reading offers/next")?;
        let offer = offer.trim();
        let text: String = names
            .iter()
            .map(|name| {
                format!("{{\"name\":\"{name}\",\"argv\":{argv},\"cpus\":0.01,\"mem\":16}}\n")
            })
            .collect();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.framework.join("offers").join(offer).join("launch"))
            .with_context(|| format!("opening offers/{offer}/launch"))?;
        let written = Instant::now();
        f.write_all(text.as_bytes())
            .with_context(|| format!("launching on offer {offer}"))?;
        Ok(written)
    }

    /// Waits until every task in `names` has finished (or any task failed, or `timeout`).
    fn wait_finished(&self, names: &[String], timeout: Duration) -> Result<()> {
        self.wait_for(names, timeout, "finished", |s, n| {
            s.finished.contains_key(n)
        })
    }

    /// Launches `n` tasks of `sleep`, measures what they cost in memory once all run, then
    /// kills them and waits for their ends.
    fn resident(&self, n: usize, agent_dir: &Path, usage_seconds: u64) -> Result<Resident> {
        let me = std::process::id().to_string();
        let before = pss_kib(&me).context("reading this process's PSS")?;
        let names: Vec<String> = (0..n).map(|i| format!("{RESIDENT}{i}")).collect();
        for name in &names {
            self.launch_argv(std::slice::from_ref(name), r#"["sleep","3600"]"#)?;
        }
        self.wait_for(&names, Duration::from_secs(60), "running", |s, n| {
            s.running.contains_key(n)
        })?;
        let after = pss_kib(&me).context("reading this process's PSS")?;
        let found = supervisors(agent_dir);
        // Each task's supervisor and init together.
        let mut per_task: std::collections::BTreeMap<&[u8], f64> = Default::default();
        for (pid, task) in &found {
            if let Some(pss) = pss_kib(pid) {
                *per_task.entry(task).or_default() += pss;
            }
        }
        let mut each: Vec<f64> = per_task.into_values().collect();
        if each.len() != n {
            let shown: Vec<String> = found
                .iter()
                .map(|(pid, _)| {
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    format!(
                        "{pid}: {}",
                        String::from_utf8_lossy(&cmdline).replace('\0', " ")
                    )
                })
                .collect();
            bail!(
                "found the supervisors of {} tasks, not of the {n} running:\n{}",
                each.len(),
                shown.join("\n")
            );
        }
        each.sort_by(f64::total_cmp);
        let usage = match usage_seconds {
            0 => None,
            s => Some(self.usage_reads(&names, s)?),
        };
        for name in &names {
            let kill = self.framework.join("tasks").join(name).join("kill");
            std::fs::write(&kill, "\n").with_context(|| format!("writing {}", kill.display()))?;
        }
        self.wait_for(&names, Duration::from_secs(60), "killed", |s, n| {
            s.killed.contains(n)
        })?;
        Ok(Resident {
            tasks: n,
            supervisor_pss: each[each.len() / 2],
            process_pss: (after - before) / n as f64,
            usage,
        })
    }

    /// Idles `seconds`, then reads every named task's `state` once a second for as long, then
    /// its `usage`, as a monitor would.
    fn usage_reads(&self, names: &[String], seconds: u64) -> Result<UsageReads> {
        let idle_start = Cpu::now();
        std::thread::sleep(Duration::from_secs(seconds));
        let idle = Cpu::now().since(&idle_start);
        let state = self.read_every_second(names, "state", seconds, "TASK_RUNNING")?;
        let usage = self.read_every_second(names, "usage", seconds, "cpu_seconds ")?;
        Ok(UsageReads {
            idle,
            state,
            usage,
            seconds,
        })
    }

    /// Reads `file` of every named task once a second for `seconds`; each read must start
    /// with `expect`.
    fn read_every_second(
        &self,
        names: &[String],
        file: &str,
        seconds: u64,
        expect: &str,
    ) -> Result<Reads> {
        let cpu_start = Cpu::now();
        let start = Instant::now();
        let mut rounds = Vec::new();
        for s in 0..seconds {
            let began = Instant::now();
            for name in names {
                let path = self.framework.join("tasks").join(name).join(file);
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                if !text.starts_with(expect) {
                    bail!(
                        "{} does not start with {expect:?}: {text:?}",
                        path.display()
                    );
                }
            }
            rounds.push(began.elapsed());
            let next = start + Duration::from_secs(s + 1);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        Ok(Reads {
            rounds,
            cpu: Cpu::now().since(&cpu_start),
        })
    }

    /// Waits until `reached(seen, name)` holds for every one of `names` (or any task failed,
    /// or `timeout`).
    fn wait_for(
        &self,
        names: &[String],
        timeout: Duration,
        what: &str,
        reached: impl Fn(&Seen, &String) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let (lock, changed) = &*self.seen;
        let mut s = lock.lock().expect("seen lock");
        loop {
            if !s.failed.is_empty() {
                bail!("tasks failed: {:?}", &s.failed[..s.failed.len().min(5)]);
            }
            if names.iter().all(|n| reached(&s, n)) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                let left = names.iter().filter(|n| !reached(&s, n)).count();
                bail!(
                    "{left} of {} tasks were not {what} within {timeout:?}",
                    names.len()
                );
            }
            s = changed
                .wait_timeout(s, deadline - now)
                .expect("seen lock")
                .0;
        }
    }

    /// Launches one task and waits for it: from the launch write to TASK_RUNNING and to
    /// TASK_FINISHED visible.
    fn one(&self, name: &str) -> Result<(Duration, Duration)> {
        let names = [name.to_string()];
        let written = self.launch(&names)?;
        self.wait_finished(&names, Duration::from_secs(60))?;
        let s = self.seen.0.lock().expect("seen lock");
        let running = s.running.get(name).copied().unwrap_or(s.finished[name]);
        Ok((running - written, s.finished[name] - written))
    }

    /// Launches `n` tasks named `<prefix><i>`, `batch` per write, as fast as offers come; waits
    /// for them all.
    fn pipelined(&self, prefix: &str, n: usize, batch: usize) -> Result<Piped> {
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        let mut written = Vec::with_capacity(n);
        let start = Instant::now();
        for chunk in names.chunks(batch) {
            let at = self.launch(chunk)?;
            written.extend(chunk.iter().map(|_| at));
        }
        self.wait_finished(&names, Duration::from_secs(60 + n as u64))?;
        let s = self.seen.0.lock().expect("seen lock");
        let last = names
            .iter()
            .map(|n| s.finished[n])
            .max()
            .expect("at least one task");
        let elapsed = last.duration_since(start);
        let in_system: Duration = names
            .iter()
            .zip(&written)
            .map(|(n, at)| s.finished[n].duration_since(*at))
            .sum();
        Ok(Piped {
            elapsed,
            mean_in_flight: in_system.as_secs_f64() / elapsed.as_secs_f64().max(1e-9),
        })
    }
}
