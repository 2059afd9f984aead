//! The control plane's launch rate: a real master in this process (Raft with its log fsynced,
//! the leader's allocator, state machine and hub, gRPC with mutual TLS), simulated agents that
//! speak the agent protocol and finish every task at once (`simulated_agents`), and many
//! frameworks launching through the client a mount uses, each write answered once it is
//! committed and visible in the frameworks' local copy, as a write to `launch` is; a framework
//! that has launched its share suppresses its offers, as one with nothing left to launch
//! should. Tasks per second from the first launch write to the last TASK_FINISHED visible in
//! that copy.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use mesofs_kernel::client::{Connector, LocalCopy, MasterClient, Writer};
use mesofs_kernel::master::{self, LeaderConfig, MasterConfig, RaftTimings};
use mesofs_kernel::proto::{self, write_request::Op};
use mesofs_kernel::resources::Resources;
use mesofs_kernel::spec::parse_specs;
use mesofs_kernel::state::{task_id, TaskState};
use mesofs_kernel::tls::{self, Kind, TlsFiles};
use mesofs_kernel::watch::View;

use super::{percentiles, simulated_agents};

/// Options of `mesofs bench control-plane`.
#[derive(Args)]
pub struct ControlPlaneArgs {
    /// Simulated agents, each offering `--agent-resources`.
    #[arg(long, default_value = "100")]
    agents: usize,
    /// What each agent offers, Mesos syntax.
    #[arg(long, default_value = "cpus:16;mem:65536")]
    agent_resources: String,
    /// Frameworks launching at once, each one write at a time.
    #[arg(long, default_value = "100")]
    frameworks: usize,
    /// Tasks launched in the measured run, spread over the frameworks.
    #[arg(long, default_value = "5000")]
    tasks: usize,
    /// Tasks launched and finished first, not measured.
    #[arg(long, default_value = "1000")]
    warmup: usize,
    /// Tasks per launch write (each write takes from one offer).
    #[arg(long, default_value = "1")]
    batch: usize,
    /// The spec of every task, less its name (`key=value ... -- command`).
    #[arg(long, default_value = "cpus=0.1 mem=32 -- true")]
    task: String,
    /// Where to put the master's data and the certificates (a fresh directory under it).
    #[arg(long, default_value = "/tmp")]
    dir: PathBuf,
}

/// How long a framework waits for an offer it can use before the benchmark gives up.
const OFFER_WAIT: Duration = Duration::from_secs(30);
/// How long the master, agents and frameworks have to find each other before the benchmark
/// gives up.
const READY_WAIT: Duration = Duration::from_secs(60);

/// Who the frameworks belong to: not root, whom the default ACLs let no one run tasks as.
fn owner() -> Writer {
    Writer {
        uid: 65534,
        gid: 65534,
        user: "nobody".into(),
    }
}

/// What the frameworks share: one client and one local copy, as frameworks on one mount do.
struct Frameworks {
    client: MasterClient,
    copy: LocalCopy,
    /// Each framework's name and id.
    names: Vec<(String, String)>,
    /// Launch writes refused because their offer had gone (ENOENT), sent again on another.
    retried: AtomicUsize,
}

/// What one run of launches gave.
struct Run {
    /// From the first launch write to the last TASK_FINISHED visible.
    elapsed: Duration,
    /// Each launch write, from sending it to its answer with its effect visible.
    writes: Vec<Duration>,
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: ControlPlaneArgs) -> Result<()> {
    if args.agents == 0 || args.frameworks == 0 || args.tasks == 0 || args.batch == 0 {
        bail!("--agents, --frameworks, --tasks and --batch must be at least 1");
    }
    let tmp = tempfile::Builder::new()
        .prefix("mesofs-bench-control-plane-")
        .tempdir_in(&args.dir)
        .context("creating the bench directory")?;
    let ca = tmp.path().join("ca");
    tls::init_ca(&ca).context("making the benchmark's CA")?;
    let issue = |kind: Kind, name: &str| -> Result<TlsFiles> {
        let out = tmp.path().join("tls").join(format!("{kind}-{name}"));
        tls::issue(&ca, kind, name, &["127.0.0.1".into()], &out)
            .with_context(|| format!("issuing the {kind} certificate {name}"))?;
        TlsFiles::load(&out).with_context(|| format!("loading {}", out.display()))
    };
    let master = master::start(MasterConfig {
        id: 1,
        listen: "127.0.0.1:0".parse()?,
        advertise: None,
        peers: Default::default(),
        data_dir: tmp.path().join("master"),
        timings: RaftTimings::default(),
        tls: Some(issue(Kind::Master, "1")?),
        leader: LeaderConfig::default(),
    })
    .await?;
    let address = master.advertised.clone();
    let client = MasterClient::new(
        vec![address.clone()],
        Connector::tls(issue(Kind::Mount, "bench")?),
    );
    let copy = client.spawn_local_copy();
    if !copy
        .wait_until_async(READY_WAIT, |v| v.leader.is_some())
        .await
    {
        bail!("the master did not lead within {READY_WAIT:?}");
    }
    let mut names = Vec::with_capacity(args.frameworks);
    for f in 0..args.frameworks {
        let name = format!("f{f}");
        mesofs_fs::commands::send(
            &client,
            &copy,
            &owner(),
            mesofs_fs::commands::register(&name, &owner().user),
        )
        .await
        .with_context(|| format!("registering framework {name}"))?;
        let id = copy
            .view()
            .state
            .framework_by_name(&name)
            .map(|f| f.id.clone())
            .with_context(|| format!("framework {name} is not in the copy"))?;
        names.push((name, id));
    }
    // Agents come after the frameworks: the first agents to register would otherwise all be
    // offered to the first frameworks, and the others wait for those offers to expire.
    let mut agents = Vec::with_capacity(args.agents);
    for a in 0..args.agents {
        let id = format!("a{a}");
        let connector = Connector::tls(issue(Kind::Agent, &id)?);
        agents.push(simulated_agents::start(
            id,
            args.agent_resources.clone(),
            address.clone(),
            connector,
        ));
    }
    let agent_count = args.agents;
    if !copy
        .wait_until_async(READY_WAIT, |v| {
            v.state
                .agents
                .values()
                .filter(|a| a.state == mesofs_kernel::state::AgentState::Active)
                .count()
                == agent_count
        })
        .await
    {
        bail!("not every agent registered within {READY_WAIT:?}");
    }
    let frameworks = Arc::new(Frameworks {
        client,
        copy,
        names,
        retried: AtomicUsize::new(0),
    });
    println!(
        "control plane: 1 master in this process (Raft log fsynced under {}), {} simulated agents of {} (gRPC, mutual TLS), {} frameworks launching through the client a mount uses, {} task(s) per launch write of `{}`",
        args.dir.display(),
        args.agents,
        args.agent_resources,
        args.frameworks,
        args.batch,
        args.task
    );
    if args.warmup > 0 {
        let warm = launch_all(&frameworks, "w", args.warmup, args.batch, &args.task).await?;
        println!(
            "  warm-up: {} tasks launched and finished in {:.3} s",
            args.warmup,
            warm.elapsed.as_secs_f64()
        );
    }
    let retried_before = frameworks.retried.load(Ordering::Relaxed);
    let run = launch_all(&frameworks, "t", args.tasks, args.batch, &args.task).await?;
    let seconds = run.elapsed.as_secs_f64();
    println!(
        "  launch rate: {:.0} tasks/s; {} tasks in {seconds:.3} s from the first launch write to the last TASK_FINISHED visible",
        args.tasks as f64 / seconds,
        args.tasks
    );
    let (p50, p99) = percentiles(&run.writes);
    println!(
        "  launch write answered (committed and visible in the frameworks' copy): median {:.2} ms, p99 {:.2} ms, over {} writes",
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0,
        run.writes.len()
    );
    println!(
        "  {} launch writes found their offer gone and were sent again on another",
        frameworks.retried.load(Ordering::Relaxed) - retried_before
    );
    for a in &agents {
        a.abort();
    }
    master.shutdown().await;
    Ok(())
}

/// Launches `count` tasks named `<prefix><n>`, spread over the frameworks, each framework one
/// launch write at a time; returns once every one is TASK_FINISHED in the frameworks' copy.
async fn launch_all(
    frameworks: &Arc<Frameworks>,
    prefix: &str,
    count: usize,
    batch: usize,
    task: &str,
) -> Result<Run> {
    let n = frameworks.names.len();
    // Each framework suppressed its offers when done with the run before.
    let revivals: Vec<_> = (0..n)
        .map(|f| {
            let frameworks = frameworks.clone();
            tokio::spawn(async move { set_suppressed(&frameworks, f, false).await })
        })
        .collect();
    for r in revivals {
        r.await??;
    }
    let started = Instant::now();
    let launchers: Vec<_> = (0..n)
        .map(|f| {
            let mine: Vec<String> = (f..count)
                .step_by(n)
                .map(|i| format!("{prefix}{i}"))
                .collect();
            let frameworks = frameworks.clone();
            let task = task.to_string();
            tokio::spawn(async move { launch_share(&frameworks, f, &mine, batch, &task).await })
        })
        .collect();
    let mut writes = Vec::new();
    for l in launchers {
        writes.extend(l.await??);
    }
    // Every task, in the order each framework launched them: they finish in about that order,
    // so the wait below looks at each task about once.
    let ids: Vec<String> = (0..count)
        .map(|i| task_id(&frameworks.names[i % n].1, &format!("{prefix}{i}")))
        .collect();
    let mut next = 0;
    let mut failed = None;
    let finish_wait = READY_WAIT + Duration::from_millis(count as u64);
    let done = frameworks
        .copy
        .wait_until_async(finish_wait, |v| all_ended(v, &ids, &mut next, &mut failed))
        .await;
    let elapsed = started.elapsed();
    if let Some((id, state)) = failed {
        bail!("task {id} ended {}, not TASK_FINISHED", state.as_str());
    }
    if !done {
        bail!(
            "{} of {count} tasks had not finished after {finish_wait:?}",
            count - next
        );
    }
    Ok(Run { elapsed, writes })
}

/// Whether every task in `ids` from `next` on has ended, moving `next` past those that have;
/// a task that ended otherwise than TASK_FINISHED goes in `failed`, and counts as ended.
fn all_ended(
    view: &View,
    ids: &[String],
    next: &mut usize,
    failed: &mut Option<(String, TaskState)>,
) -> bool {
    while let Some(id) = ids.get(*next) {
        let Some(state) = view.state.tasks.get(id).map(|t| t.state()) else {
            return false;
        };
        if !state.is_terminal() {
            return false;
        }
        if state != TaskState::Finished && failed.is_none() {
            *failed = Some((id.clone(), state));
        }
        *next += 1;
    }
    true
}

/// One framework's launches: `names`, `batch` to a write, each on an offer of its own with
/// room for them, as a shell framework reading `offers/next` and writing `launch` would; then
/// it suppresses its offers. Returns the time of each launch write.
async fn launch_share(
    frameworks: &Frameworks,
    f: usize,
    names: &[String],
    batch: usize,
    task: &str,
) -> Result<Vec<Duration>> {
    let (name, id) = &frameworks.names[f];
    let mut writes = Vec::with_capacity(names.len().div_ceil(batch));
    for chunk in names.chunks(batch) {
        let text: String = chunk.iter().map(|n| format!("name={n} {task}\n")).collect();
        let need = parse_specs(&text)
            .with_context(|| format!("the task spec {task:?}"))?
            .iter()
            .fold(Resources::default(), |acc, s| acc.add(&s.resources()));
        loop {
            let mut offer = None;
            let found = frameworks
                .copy
                .wait_until_async(OFFER_WAIT, |v| {
                    offer = v
                        .offers
                        .values()
                        .find(|o| o.framework_id == *id && o.resources.contains(&need))
                        .map(|o| o.id.clone());
                    offer.is_some()
                })
                .await;
            let Some(offer_id) = offer.filter(|_| found) else {
                let why = frameworks
                    .copy
                    .view()
                    .why
                    .get(id)
                    .cloned()
                    .unwrap_or_default();
                bail!(
                    "framework {name} got no offer with {need} within {OFFER_WAIT:?}; offers/why says: {:?}",
                    why.trim()
                );
            };
            let op = Op::Launch(proto::Launch {
                framework: name.clone(),
                offer_id: offer_id.clone(),
                text: text.clone(),
            });
            let sent = Instant::now();
            match mesofs_fs::commands::send(&frameworks.client, &frameworks.copy, &owner(), op)
                .await
            {
                Ok(()) => {
                    writes.push(sent.elapsed());
                    break;
                }
                // Rescinded or expired meanwhile: as a shell framework would, read offers/next
                // again.
                Err(e) if e.errno == libc::ENOENT => {
                    frameworks.retried.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => bail!(
                    "framework {name}'s launch on offer {offer_id} was refused: {} (errno {})",
                    e.message,
                    e.errno
                ),
            }
        }
    }
    // Nothing left to launch: its offers, unused, would hold their resources from the others
    // until they expire.
    set_suppressed(frameworks, f, true).await?;
    Ok(writes)
}

/// Writes framework `f`'s `suppressed` (1) or `revive`, through the client a mount uses.
async fn set_suppressed(frameworks: &Frameworks, f: usize, suppressed: bool) -> Result<()> {
    let name = &frameworks.names[f].0;
    let op = Op::Suppress(proto::Suppress {
        framework: name.clone(),
        text: if suppressed { "1" } else { "" }.into(),
        revive: !suppressed,
    });
    mesofs_fs::commands::send(&frameworks.client, &frameworks.copy, &owner(), op)
        .await
        .with_context(|| {
            let what = if suppressed {
                "suppressing"
            } else {
                "reviving"
            };
            format!("{what} framework {name}'s offers")
        })
}
