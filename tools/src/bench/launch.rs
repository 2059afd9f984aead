//! The launch benchmark: launches N tasks of `true` through a real mount on a local one-machine
//! cluster, and in the same run times a bare loop that creates a cgroup, forks and execs
//! `true` and waits for it. The ratio of the two rates is the figure that matters.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use mesofs_agent::daemon::{self as agent, AgentConfig};
use mesofs_kernel::client::{Connector, MasterClient};
use mesofs_kernel::master::{self, LeaderConfig, MasterConfig, RaftTimings};

use super::percentiles;

/// Options of the launch benchmark.
#[derive(Args)]
pub struct LaunchArgs {
    /// How many tasks of `true` to launch.
    #[arg(long, default_value = "200")]
    tasks: usize,
    /// Tasks per launch write (each write accepts one offer).
    #[arg(long, default_value = "1")]
    batch: usize,
    /// Where to put the temporary cluster's data and mount (a fresh directory under it).
    #[arg(long, default_value = "/tmp")]
    dir: PathBuf,
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: LaunchArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark mounts FUSE and creates cgroups: run it as root");
    }
    if args.tasks == 0 || args.batch == 0 {
        bail!("--tasks and --batch must be at least 1");
    }
    let tmp = tempfile::Builder::new()
        .prefix("mesofs-bench-")
        .tempdir_in(&args.dir)
        .context("creating the bench directory")?;
    let mount_path = tmp.path().join("mnt");
    std::fs::create_dir_all(&mount_path)?;
    // Certificates as `mesofs dev` makes them: the real, mutual-TLS path.
    let tls = crate::certs::dev_tls(tmp.path(), "bench-agent", "127.0.0.1".parse()?)?;
    let master = master::start(MasterConfig {
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
    })
    .await?;
    // Room for every task at once, so offers never run out; isolation is still real.
    let resources = format!(
        "cpus:{};mem:{};disk:0;ports:[31000-31001]",
        args.tasks,
        args.tasks * 16
    );
    let agent = agent::start(AgentConfig {
        masters: vec![master.addr.to_string()],
        work_dir: tmp.path().join("agent"),
        listen: SocketAddr::new(master.addr.ip(), 0),
        advertise: None,
        hostname: "localhost".into(),
        resources: Some(resources),
        attributes: String::new(),
        supervisor: std::env::current_exe().ok(),
        tls: Some(tls.agent),
    })
    .await?;
    let client = MasterClient::new(vec![master.addr.to_string()], Connector::tls(tls.mount));
    let copy = client.spawn_local_copy();
    let mount = mesofs_fs::mount(&mount_path, client, copy, tokio::runtime::Handle::current())?;

    let n = args.tasks;
    let batch = args.batch;
    let mp = mount_path.clone();
    // The driver does blocking file I/O on the mount: keep it off the async workers.
    let figures = tokio::task::spawn_blocking(move || drive(&mp, n, batch)).await??;
    let bare_rate = tokio::task::spawn_blocking(move || bare_loop(n)).await??;

    let (lat_p50, lat_p99) = percentiles(&figures.running_latency);
    println!("mesofs bench: {n} tasks of `true`, {batch} per launch write");
    println!(
        "  through the mount: {:.1} tasks/s (first write to last TASK_FINISHED: {:.3} s)",
        n as f64 / figures.elapsed.as_secs_f64(),
        figures.elapsed.as_secs_f64()
    );
    println!(
        "  launch write to TASK_RUNNING visible in the mount: median {:.2} ms, p99 {:.2} ms",
        ms(lat_p50),
        ms(lat_p99)
    );
    println!("  bare cgroup + fork/exec `true` + wait loop: {bare_rate:.1} tasks/s");
    println!(
        "  ratio mesofs / bare: {:.3}",
        (n as f64 / figures.elapsed.as_secs_f64()) / bare_rate
    );

    agent.shutdown().await;
    tokio::task::spawn_blocking(move || mount.unmount()).await??;
    master.shutdown().await;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Figures {
    elapsed: Duration,
    running_latency: Vec<Duration>,
}

/// Seen times of each task's lines in the framework's `events_pipe`.
#[derive(Default)]
struct Seen {
    running: HashMap<String, Instant>,
    finished: HashMap<String, Instant>,
    failed: Vec<String>,
}

fn drive(mount: &Path, n: usize, batch: usize) -> Result<Figures> {
    let fw = mount.join("frameworks/bench");
    std::fs::create_dir(&fw).context("mkdir frameworks/bench")?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let events = std::fs::File::open(fw.join("events_pipe")).context("opening events_pipe")?;
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
            let mut s = reader_seen.lock().expect("seen lock");
            match state {
                "TASK_RUNNING" => {
                    s.running.insert(name.to_string(), now);
                }
                "TASK_FINISHED" => {
                    s.finished.insert(name.to_string(), now);
                }
                "TASK_FAILED" | "TASK_LOST" | "TASK_KILLED" => s.failed.push(line.clone()),
                _ => {}
            }
        }
    });

    let mut written: HashMap<String, Instant> = HashMap::new();
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let offer =
            std::fs::read_to_string(fw.join("offers/next")).context("reading offers/next")?;
        let offer = offer.trim();
        let mut text = String::new();
        let mut names = Vec::new();
        for _ in 0..batch.min(n - i) {
            let name = format!("t{i}");
            text.push_str(&format!(
                "{{\"name\":\"{name}\",\"argv\":[\"true\"],\"cpus\":0.01,\"mem\":16}}\n"
            ));
            names.push(name);
            i += 1;
        }
        let t = Instant::now();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(fw.join("offers").join(offer).join("launch"))
            .with_context(|| format!("opening offers/{offer}/launch"))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("launching on offer {offer}"))?;
        for name in names {
            written.insert(name, t);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60 + n as u64);
    loop {
        {
            let s = seen.lock().expect("seen lock");
            if !s.failed.is_empty() {
                bail!("tasks failed: {:?}", &s.failed[..s.failed.len().min(5)]);
            }
            if s.finished.len() >= n {
                let last = s.finished.values().max().copied().expect("n >= 1");
                let running_latency = written
                    .iter()
                    .filter_map(|(name, t)| s.running.get(name).map(|r| r.duration_since(*t)))
                    .collect();
                return Ok(Figures {
                    elapsed: last.duration_since(start),
                    running_latency,
                });
            }
        }
        if Instant::now() > deadline {
            bail!("not every task finished in time");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The bare loop: per iteration, a cgroup with limits, fork + exec `true` in it, wait, delete.
fn bare_loop(n: usize) -> Result<f64> {
    let isolator = mesofs_agent::isolator::detect();
    let start = Instant::now();
    for i in 0..n {
        mesofs_agent::containerizer::bare_launch_cycle(
            isolator.as_ref(),
            &format!("bench-bare-{i}"),
        )
        .context("bare cgroup + exec cycle")?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
