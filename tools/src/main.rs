//! `mesofs`: the one binary. Runs a master, an agent, a mount, a whole one-machine cluster
//! (`dev`), or the launch benchmark.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use mesofs_agent::daemon::{self as agent, AgentConfig};
use mesofs_agent::{Confinement, Namespaces};
use mesofs_kernel::acls::Acls;
use mesofs_kernel::client::{Connector, MasterClient};
use mesofs_kernel::master::{self, LeaderConfig, MasterConfig, RaftTimings};
use mesofs_kernel::tls::Kind;
use tracing::info;

mod bench;
mod certs;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mesofs",
    version,
    about = "A cluster resource manager whose interface is a filesystem"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a master: a Raft node that, while it leads, makes offers and runs tasks on agents.
    Master(MasterArgs),
    /// Run an agent: offers this machine's resources and runs tasks in cgroups.
    Agent(AgentArgs),
    /// Mount the cluster as a filesystem.
    Mount(MountArgs),
    /// Run a whole one-machine cluster (master, agent and mount) in one process.
    Dev(DevArgs),
    /// Measure launch throughput and latency through the mount against a bare cgroup+exec loop.
    Bench(bench::BenchArgs),
    /// Make the cluster's certificate authority.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Issue a component's certificate from the cluster's certificate authority.
    #[command(subcommand)]
    Cert(CertCmd),
}

#[derive(Subcommand)]
enum CaCmd {
    /// Make a new CA in a directory: ca.pem (share it) and ca.key (keep it safe: it makes
    /// certificates that every component trusts).
    Init {
        /// Where to write ca.pem and ca.key.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertCmd {
    /// Issue a certificate and key for one component: cert.pem, key.pem and the CA's ca.pem,
    /// in one directory (a component's TLS directory).
    Issue {
        /// The CA directory (`mesofs ca init`).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// What the component is: master, agent, mount or operator.
        #[arg(long)]
        kind: mesofs_kernel::tls::Kind,
        /// Its name: a master's id, an agent's id, or a name for a mount or operator.
        #[arg(long)]
        name: String,
        /// A host name or address the component is dialed by (its certificate is valid for
        /// these); repeat for several. Masters and agents need theirs.
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// Where to write cert.pem, key.pem and ca.pem.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Args, Clone)]
struct LeaderArgs {
    /// Seconds an unused offer stays outstanding before it is rescinded.
    #[arg(long, default_value = "30", value_name = "SECONDS")]
    offer_timeout: f64,
    /// Seconds a declined agent is not offered to the same framework, when `decline` says no duration.
    #[arg(long, default_value = "5", value_name = "SECONDS")]
    refuse_default: f64,
    /// Seconds an agent may stay silent before its session is closed and it is marked disconnected (agents heartbeat at a third of it).
    #[arg(long, default_value = "15", value_name = "SECONDS")]
    agent_timeout: f64,
    /// Seconds a disconnected agent has to register again before its tasks are TASK_LOST and it is marked lost.
    #[arg(long, default_value = "60", value_name = "SECONDS")]
    agent_reregister_timeout: f64,
    /// Seconds between allocation passes at least: freed resources are offered again within it.
    #[arg(long, default_value = "0.05", value_name = "SECONDS")]
    allocation_interval: f64,
    /// An ACL file (JSON; docs/security.md): which principals may do what to whose frameworks. Without one, anything but running tasks as root.
    #[arg(long, value_name = "FILE")]
    acls: Option<PathBuf>,
}

impl LeaderArgs {
    fn config(&self) -> Result<LeaderConfig> {
        let acls = match &self.acls {
            Some(path) => Acls::load(path)?,
            None => Acls::default(),
        };
        Ok(LeaderConfig {
            offer_timeout: seconds(self.offer_timeout, "--offer-timeout")?,
            default_refuse: seconds(self.refuse_default, "--refuse-default")?,
            agent_timeout: positive_seconds(self.agent_timeout, "--agent-timeout")?,
            agent_reregister_timeout: seconds(
                self.agent_reregister_timeout,
                "--agent-reregister-timeout",
            )?,
            acls: Arc::new(acls),
            allocation_interval: seconds(self.allocation_interval, "--allocation-interval")?,
        })
    }
}

fn seconds(v: f64, flag: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(v)
        .with_context(|| format!("{flag} must be a non-negative number of seconds"))
}

fn positive_seconds(v: f64, flag: &str) -> Result<Duration> {
    let d = seconds(v, flag)?;
    if d.is_zero() {
        bail!("{flag} must be more than 0 seconds");
    }
    Ok(d)
}

#[derive(Args, Clone)]
struct RaftArgs {
    /// Milliseconds between the leader's Raft heartbeats.
    #[arg(long, default_value = "100", value_name = "MS")]
    raft_heartbeat: u64,
    /// Raft election timeout range in milliseconds, MIN-MAX: how long a follower waits without
    /// hearing from the leader before it stands for election.
    #[arg(long, default_value = "200-400", value_name = "MIN-MAX", value_parser = parse_range)]
    raft_election: (u64, u64),
    /// Take a snapshot of the state every this many log entries and purge the log before it.
    #[arg(long, default_value = "2000", value_name = "ENTRIES")]
    snapshot_every: u64,
}

impl RaftArgs {
    fn timings(&self) -> Result<RaftTimings> {
        let (min, max) = self.raft_election;
        if self.raft_heartbeat == 0 || min <= self.raft_heartbeat || max <= min {
            bail!(
                "--raft-election MIN-MAX must have MIN above --raft-heartbeat ({} ms) and MAX above MIN",
                self.raft_heartbeat
            );
        }
        if self.snapshot_every == 0 {
            bail!("--snapshot-every must be at least 1");
        }
        Ok(RaftTimings {
            heartbeat_ms: self.raft_heartbeat,
            election_ms: (min, max),
            snapshot_every: self.snapshot_every,
        })
    }
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not MIN-MAX (e.g. 200-400)"))?;
    let num = |v: &str| {
        v.trim()
            .parse::<u64>()
            .map_err(|_| format!("{v:?} is not a number of milliseconds"))
    };
    Ok((num(a)?, num(b)?))
}

/// Parses `--peers 1=HOST:PORT,2=HOST:PORT`.
fn parse_peers(list: &[String]) -> Result<BTreeMap<u64, String>> {
    let mut peers = BTreeMap::new();
    for item in list.iter().filter(|i| !i.trim().is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .with_context(|| format!("--peers entry {item:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .with_context(|| format!("--peers entry {item:?}: the id must be a positive number"))?;
        let addr = addr.trim();
        if !addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            bail!("--peers entry {item:?}: the address must be HOST:PORT");
        }
        if peers.insert(id, addr.to_string()).is_some() {
            bail!("--peers lists master {id} twice");
        }
    }
    Ok(peers)
}

#[derive(Args)]
struct MasterArgs {
    /// This master's Raft node id (a positive number, unique in the cluster).
    #[arg(long, default_value = "1")]
    id: u64,
    /// Address to listen on (loopback by default: pass this machine's address, or 0.0.0.0 with
    /// --advertise, for other machines to reach it).
    #[arg(long, default_value = "127.0.0.1:5050")]
    listen: SocketAddr,
    /// The HOST:PORT other masters, agents and mounts dial to reach this master (required when
    /// --listen is an unspecified address such as 0.0.0.0).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// The initial masters of a new cluster, ID=HOST:PORT comma-separated, the same list on
    /// every one of them (this one included); without it a new master is a cluster of one.
    /// Ignored (with a warning if it differs) once the data directory holds a log.
    #[arg(long, value_delimiter = ',', value_name = "ID=HOST:PORT,...")]
    peers: Vec<String>,
    /// Directory of the Raft log, vote and snapshots.
    #[arg(long, default_value = "/var/lib/mesofs/master")]
    data_dir: PathBuf,
    #[command(flatten)]
    raft: RaftArgs,
    #[command(flatten)]
    tls: certs::TlsArgs,
    #[command(flatten)]
    leader: LeaderArgs,
}

#[derive(Args)]
struct AgentArgs {
    /// Master addresses, comma-separated (host:port).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:5050")]
    master: Vec<String>,
    /// Directory of sandboxes and the agent's id.
    #[arg(long, default_value = "/var/lib/mesofs/agent")]
    work_dir: PathBuf,
    /// Address of the agent's file service (loopback by default: pass this machine's address
    /// for mounts on other machines to read sandboxes).
    #[arg(long, default_value = "127.0.0.1:5051")]
    listen: SocketAddr,
    /// The HOST:PORT mounts dial to read sandboxes (by default the listen address, or the
    /// host name and listen port when listening on every interface).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Host name to register with (defaults to this machine's).
    #[arg(long)]
    hostname: Option<String>,
    /// Resources to offer in Mesos syntax, e.g. "cpus:2;mem:1024;ports:[31000-31999]" (detected when absent).
    #[arg(long)]
    resources: Option<String>,
    /// Attributes for frameworks to place by, e.g. "rack:r1;zone:a".
    #[arg(long, default_value = "")]
    attributes: String,
    #[command(flatten)]
    confinement: ConfinementArgs,
    #[command(flatten)]
    tls: certs::TlsArgs,
}

/// How an agent confines its tasks beyond their cgroups.
#[derive(Args, Clone, Debug)]
pub(crate) struct ConfinementArgs {
    /// Run tasks in the agent's pid namespace (by default each task has its own, whose pid 1
    /// is an init of mesofs's).
    #[arg(long)]
    no_pid_namespace: bool,
    /// Run tasks in the agent's mount namespace (by default each task has its own, with its
    /// sandbox's tmp as /tmp and, with its own pid namespace, its own /proc).
    #[arg(long)]
    no_mount_namespace: bool,
    /// Let tasks listen on ports they were not given (by default such a task is killed,
    /// TASK_FAILED with REASON_CONTAINER_LIMITATION).
    #[arg(long)]
    no_port_enforcement: bool,
    /// Let sandboxes grow past their task's disk (by default such a task is killed,
    /// TASK_FAILED with REASON_CONTAINER_LIMITATION_DISK).
    #[arg(long)]
    no_disk_enforcement: bool,
}

impl ConfinementArgs {
    /// The agent's configuration these flags say.
    pub(crate) fn config(&self) -> Confinement {
        Confinement {
            ports: !self.no_port_enforcement,
            disk: !self.no_disk_enforcement,
            namespaces: Namespaces {
                pid: !self.no_pid_namespace,
                mount: !self.no_mount_namespace,
            },
        }
    }
}

#[derive(Args)]
struct MountArgs {
    /// Master addresses, comma-separated (host:port).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:5050")]
    master: Vec<String>,
    /// Where to mount.
    #[arg(long, default_value = "/mnt/mesofs")]
    mount: PathBuf,
    /// Seconds a write waits for a leader to answer (a master restarting, an election) before it fails with EIO.
    #[arg(long, default_value = "30", value_name = "SECONDS")]
    leader_wait: f64,
    #[command(flatten)]
    tls: certs::TlsArgs,
}

#[derive(Args)]
struct DevArgs {
    /// Where to mount the cluster.
    #[arg(long, default_value = "/mnt/mesofs")]
    mount: PathBuf,
    /// Where the master's and the agent's data live; reuse it to keep the cluster's state.
    #[arg(long, default_value = "/var/lib/mesofs/dev")]
    data_dir: PathBuf,
    /// The master's address (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:5050")]
    listen: SocketAddr,
    /// Resources the agent offers, Mesos syntax (detected when absent).
    #[arg(long)]
    resources: Option<String>,
    /// The agent's attributes, e.g. "rack:r1;zone:a".
    #[arg(long, default_value = "")]
    attributes: String,
    #[command(flatten)]
    confinement: ConfinementArgs,
    #[command(flatten)]
    leader: LeaderArgs,
}

fn main() -> Result<()> {
    // A task's supervisor, exec'd by the agent: nothing else of the binary runs in it.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if mesofs_agent::supervisor::is_supervisor_invocation(&args) {
        mesofs_agent::supervisor::main(args.into_iter().skip(2));
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // fuser's own unmount on drop always fails after ours (EINVAL) and says so
                // at warn level; ours reports real failures.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser::mnt=error")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person watching; a log file gets plain text to grep.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        match cli.command {
            Cmd::Master(a) => run_master(a).await,
            Cmd::Agent(a) => run_agent(a).await,
            Cmd::Mount(a) => run_mount(a).await,
            Cmd::Dev(a) => run_dev(a).await,
            Cmd::Bench(a) => bench::run(a).await,
            Cmd::Ca(CaCmd::Init { dir }) => {
                mesofs_kernel::tls::init_ca(&dir)?;
                println!("made a CA in {} (ca.pem, ca.key)", dir.display());
                Ok(())
            }
            Cmd::Cert(CertCmd::Issue {
                ca,
                kind,
                name,
                hosts,
                out,
            }) => {
                mesofs_kernel::tls::issue(&ca, kind, &name, &hosts, &out)?;
                println!(
                    "issued {kind}:{name} in {} (cert.pem, key.pem, ca.pem)",
                    out.display()
                );
                Ok(())
            }
        }
    })
}

/// Waits for SIGINT or SIGTERM.
async fn stop_signal() -> Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    })
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

async fn run_master(a: MasterArgs) -> Result<()> {
    if a.id == 0 {
        bail!("--id must be a positive number");
    }
    let handle = master::start(MasterConfig {
        id: a.id,
        listen: a.listen,
        advertise: a.advertise,
        peers: parse_peers(&a.peers)?,
        data_dir: a.data_dir,
        timings: a.raft.timings()?,
        tls: a.tls.load(
            "mesofs master",
            &[Kind::Master],
            &format!(
                "mesofs cert issue --ca CA --kind master --name {} --host HOST --out DIR",
                a.id
            ),
        )?,
        leader: a.leader.config()?,
    })
    .await?;
    let sig = stop_signal().await?;
    info!(signal = sig, "stopping the master");
    handle.shutdown().await;
    Ok(())
}

async fn run_agent(a: AgentArgs) -> Result<()> {
    let handle = agent::start(AgentConfig {
        masters: a.master,
        work_dir: a.work_dir,
        listen: a.listen,
        advertise: a.advertise,
        hostname: a.hostname.unwrap_or_else(hostname),
        resources: a.resources,
        attributes: a.attributes,
        supervisor: std::env::current_exe().ok(),
        tls: a.tls.load(
            "mesofs agent",
            &[Kind::Agent],
            "mesofs cert issue --ca CA --kind agent --name ID --host HOST --out DIR",
        )?,
        confinement: a.confinement.config(),
    })
    .await?;
    let sig = stop_signal().await?;
    info!(signal = sig, "stopping the agent: killing its tasks");
    handle.shutdown().await;
    Ok(())
}

/// Clears a mount left behind by a process that died without unmounting (its mountpoint
/// then fails with ENOTCONN).
fn clear_stale_mount(path: &Path) {
    if let Err(e) = std::fs::metadata(path) {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            info!(path = %path.display(), "clearing a stale mount left by a previous run");
            let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn prepare_mountpoint(path: &Path) -> Result<()> {
    clear_stale_mount(path);
    std::fs::create_dir_all(path)
        .with_context(|| format!("creating the mountpoint {}", path.display()))?;
    Ok(())
}

async fn run_mount(a: MountArgs) -> Result<()> {
    prepare_mountpoint(&a.mount)?;
    let tls = a.tls.load(
        "mesofs mount",
        &[Kind::Mount, Kind::Operator],
        "mesofs cert issue --ca CA --kind mount --name NAME --out DIR",
    )?;
    let connector = tls.map_or_else(Connector::plain, Connector::tls);
    let client = MasterClient::new(a.master, connector)
        .with_leader_wait(seconds(a.leader_wait, "--leader-wait")?);
    let copy = client.spawn_local_copy();
    let mount = mesofs_fs::mount(&a.mount, client, copy, tokio::runtime::Handle::current())
        .with_context(|| format!("mounting at {}", a.mount.display()))?;
    println!("mesofs mounted at {}", a.mount.display());
    let sig = stop_signal().await?;
    info!(signal = sig, "unmounting");
    tokio::task::spawn_blocking(move || mount.unmount()).await??;
    Ok(())
}

async fn run_dev(a: DevArgs) -> Result<()> {
    if a.data_dir.as_os_str().is_empty() {
        bail!("--data-dir must not be empty");
    }
    prepare_mountpoint(&a.mount)?;
    // Its own CA and certificates: security costs the newcomer no command.
    let work_dir = a.data_dir.join("agent");
    let agent_id = mesofs_agent::inventory::agent_id(&work_dir, &hostname(), None)
        .with_context(|| format!("reading the agent's id in {}", work_dir.display()))?
        .map_err(anyhow::Error::msg)?;
    let tls = certs::dev_tls(&a.data_dir, &agent_id, a.listen.ip())?;
    let mut leader = a.leader.config()?;
    if a.leader.acls.is_none() {
        leader.acls = Arc::new(tls.acls());
    }
    let master = master::start(MasterConfig {
        id: 1,
        listen: a.listen,
        advertise: None,
        peers: BTreeMap::new(),
        data_dir: a.data_dir.join("master"),
        timings: RaftTimings::default(),
        tls: Some(tls.master),
        leader,
    })
    .await?;
    let master_addr = master.advertised.clone();
    let agent = agent::start(AgentConfig {
        masters: vec![master_addr.clone()],
        work_dir,
        listen: SocketAddr::new(master.addr.ip(), 0),
        advertise: None,
        hostname: hostname(),
        resources: a.resources,
        attributes: a.attributes,
        supervisor: std::env::current_exe().ok(),
        tls: Some(tls.agent),
        confinement: a.confinement.config(),
    })
    .await?;
    let client = MasterClient::new(vec![master_addr.clone()], Connector::tls(tls.mount));
    let copy = client.spawn_local_copy();
    let mount = mesofs_fs::mount(&a.mount, client, copy, tokio::runtime::Handle::current())
        .with_context(|| format!("mounting at {}", a.mount.display()))?;
    println!(
        "mesofs dev: mounted at {} (master {master_addr}, agent {}, data in {})",
        a.mount.display(),
        agent.agent_id,
        a.data_dir.display()
    );
    let sig = stop_signal().await?;
    info!(signal = sig, "stopping: killing tasks, unmounting");
    agent.shutdown().await;
    tokio::task::spawn_blocking(move || mount.unmount()).await??;
    master.shutdown().await;
    info!("stopped cleanly");
    Ok(())
}
