//! `mesofs bench`: benchmarks that print their figures (never assert them; these machines are
//! shared and noisy).
//!
//! - `launch` (the default): launch latency one task at a time and throughput pipelined
//!   through a mount, against the floor (the same launches made with plain system calls)
//!   measured in the same rounds;
//! - `failover`: three masters on loopback; the time from SIGKILL of the leader to the first
//!   write accepted, and to every agent registered with the new leader;
//! - `writes`: replicated writes per second with three masters, fsync on, at several numbers
//!   of concurrent writers;
//! - `alloc`: the state machine and the allocation pass over a simulated cluster of many
//!   agents, frameworks and tasks (no processes), and reads through a mount of it;
//! - `control-plane`: tasks launched per second by many frameworks through one master in this
//!   process, to simulated agents that finish them at once (no processes).

use anyhow::Result;
use clap::{Args, Subcommand};

mod accounting;
mod alloc;
mod control_plane;
mod failover;
mod floor;
mod launch;
mod masters;
mod mount_reads;
mod simulated;
mod simulated_agents;
mod writes;

/// Options of `mesofs bench`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: Option<Which>,
    #[command(flatten)]
    launch: launch::LaunchArgs,
}

#[derive(Subcommand)]
enum Which {
    /// Launch latency and throughput through a mount, against the floor: the same launches
    /// made with plain system calls, in the same rounds (the default).
    Launch(launch::LaunchArgs),
    /// Three masters on loopback: from SIGKILL of the leader to the first write accepted, and
    /// to every agent registered with the new leader.
    Failover(failover::FailoverArgs),
    /// Replicated writes per second with three masters (fsync on) and several numbers of
    /// concurrent writers.
    Writes(writes::WritesArgs),
    /// The state machine and one allocation pass over a simulated cluster of many agents,
    /// frameworks and tasks: time per command, per pass, offers per second, memory; and the
    /// latency of `cat` and `ls -l` through a mount of it, against a small cluster's.
    Alloc(alloc::AllocArgs),
    /// The control plane's launch rate: one master in this process, simulated agents that
    /// finish every task at once, many frameworks launching through the client a mount uses.
    ControlPlane(control_plane::ControlPlaneArgs),
}

/// Runs the chosen benchmark and prints its figures.
pub async fn run(args: BenchArgs) -> Result<()> {
    match args.which {
        None => launch::run(args.launch).await,
        Some(Which::Launch(a)) => launch::run(a).await,
        Some(Which::Failover(a)) => failover::run(a).await,
        Some(Which::Writes(a)) => writes::run(a).await,
        Some(Which::Alloc(a)) => alloc::run(a).await,
        Some(Which::ControlPlane(a)) => control_plane::run(a).await,
    }
}

/// The median and the 99th percentile of some durations (zero for none).
fn percentiles(samples: &[std::time::Duration]) -> (std::time::Duration, std::time::Duration) {
    let mut s = samples.to_vec();
    s.sort();
    if s.is_empty() {
        return (std::time::Duration::ZERO, std::time::Duration::ZERO);
    }
    let at = |q: f64| s[((s.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}

/// Median, minimum and maximum of some durations, in milliseconds.
fn spread(samples: &[std::time::Duration]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    if ms.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    (ms[ms.len() / 2], ms[0], ms[ms.len() - 1])
}
