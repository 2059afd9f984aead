//! The failover benchmark: three masters on loopback and some agents; each round SIGKILLs the
//! leader and measures how long until the first write is accepted, and until every agent has
//! registered with the new leader; then starts the killed master again and waits for it to
//! follow.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use mesofs_agent::daemon::{self as agent, AgentConfig};
use mesofs_kernel::client::{Connector, LocalCopy, MasterClient, Writer};
use mesofs_kernel::proto::{self, write_request::Op};
use mesofs_kernel::state::AgentState;
use mesofs_kernel::tls::Kind;

use super::masters::LocalMasters;
use super::spread;

/// Options of `mesofs bench failover`.
#[derive(Args)]
pub struct FailoverArgs {
    /// How many times to kill the leader.
    #[arg(long, default_value = "5")]
    rounds: usize,
    /// How many agents must register with each new leader.
    #[arg(long, default_value = "3")]
    agents: usize,
    /// Where to put the masters' and agents' data (a fresh directory under it).
    #[arg(long, default_value = "/tmp")]
    dir: PathBuf,
}

/// How long anything may take before the benchmark gives up.
const PATIENCE: Duration = Duration::from_secs(60);

async fn until(
    copy: &LocalCopy,
    what: &str,
    ready: impl FnMut(&mesofs_kernel::watch::View) -> bool,
) -> Result<()> {
    if !copy.wait_until_async(PATIENCE, ready).await {
        bail!("timed out waiting for {what}");
    }
    Ok(())
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: FailoverArgs) -> Result<()> {
    if args.rounds == 0 || args.agents == 0 {
        bail!("--rounds and --agents must be at least 1");
    }
    let tmp = tempfile::Builder::new()
        .prefix("mesofs-bench-failover-")
        .tempdir_in(&args.dir)
        .context("creating the bench directory")?;
    let mut masters = LocalMasters::start(3, tmp.path())?;
    let mut agents = Vec::new();
    for i in 0..args.agents {
        agents.push(
            agent::start(AgentConfig {
                masters: masters.addrs.clone(),
                work_dir: tmp.path().join(format!("agent{i}")),
                listen: "127.0.0.1:0".parse::<SocketAddr>()?,
                advertise: None,
                hostname: format!("bench-agent-{i}"),
                resources: Some("cpus:1;mem:1024".into()),
                attributes: String::new(),
                supervisor: std::env::current_exe().ok(),
                tls: Some(masters.issue(Kind::Agent, &format!("bench-agent-{i}"))?),
                confinement: Default::default(),
            })
            .await?,
        );
    }
    let client = MasterClient::new(
        masters.addrs.clone(),
        Connector::tls(masters.issue(Kind::Mount, "bench")?),
    );
    let copy = client.spawn_local_copy();
    let n = args.agents;
    until(&copy, "a leader and every agent", |v| {
        v.leader.is_some()
            && v.state
                .agents
                .values()
                .filter(|a| a.state == AgentState::Active)
                .count()
                == n
    })
    .await?;

    let mut to_write = Vec::new();
    let mut to_agents = Vec::new();
    for round in 0..args.rounds {
        let (leader, before) = {
            let v = copy.view();
            (
                v.leader.as_ref().map(|l| l.id).context("no leader")?,
                v.index,
            )
        };
        let killed = Instant::now();
        masters.kill(leader);
        let op = Op::RegisterFramework(proto::RegisterFramework {
            name: format!("failover-{round}"),
            user: "root".into(),
        });
        client
            .write(&Writer::root(), op)
            .await
            .map_err(|e| anyhow::anyhow!("the first write after the failover failed: {e}"))?;
        to_write.push(killed.elapsed());
        // Registered with the new leader: a registration committed after the kill.
        until(&copy, "every agent to register with the new leader", |v| {
            v.state
                .agents
                .values()
                .filter(|a| a.state == AgentState::Active && a.registration > before)
                .count()
                == n
        })
        .await?;
        to_agents.push(killed.elapsed());
        masters.restart(leader)?;
        until(&copy, "the killed master to follow again", |v| {
            v.masters
                .iter()
                .any(|m| m.id == leader && m.role == "follower")
        })
        .await?;
    }

    let (w50, wmin, wmax) = spread(&to_write);
    let (a50, amin, amax) = spread(&to_agents);
    println!(
        "mesofs bench failover: 3 masters on loopback, {n} agents, {} rounds",
        args.rounds
    );
    println!("  SIGKILL of the leader to the first write accepted: median {w50:.0} ms (min {wmin:.0}, max {wmax:.0})");
    println!("  SIGKILL of the leader to every agent registered with the new leader: median {a50:.0} ms (min {amin:.0}, max {amax:.0})");
    for a in agents {
        a.shutdown().await;
    }
    Ok(())
}
