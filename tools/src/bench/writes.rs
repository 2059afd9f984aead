//! The replicated-writes benchmark: three masters on loopback (each write fsynced on a
//! majority before it is answered), and W writers each registering and tearing down a
//! framework in turn, through the write path a mount takes: the client's write, then waiting
//! until its local copy shows the write's log index.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use mesofs_kernel::client::{Connector, MasterClient, Writer};
use mesofs_kernel::proto::{self, write_request::Op};
use mesofs_kernel::tls::Kind;

use super::masters::LocalMasters;
use super::percentiles;

/// Options of `mesofs bench writes`.
#[derive(Args)]
pub struct WritesArgs {
    /// Numbers of concurrent writers to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    writers: Vec<usize>,
    /// Seconds to measure each number of writers.
    #[arg(long, default_value = "5")]
    seconds: f64,
    /// Where to put the masters' data (a fresh directory under it).
    #[arg(long, default_value = "/tmp")]
    dir: PathBuf,
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: WritesArgs) -> Result<()> {
    if args.writers.is_empty() || args.writers.contains(&0) || args.seconds <= 0.0 {
        bail!("--writers must be positive numbers and --seconds more than 0");
    }
    let tmp = tempfile::Builder::new()
        .prefix("mesofs-bench-writes-")
        .tempdir_in(&args.dir)
        .context("creating the bench directory")?;
    let masters = LocalMasters::start(3, tmp.path())?;
    let client = MasterClient::new(
        masters.addrs.clone(),
        Connector::tls(masters.issue(Kind::Mount, "bench")?),
    );
    let copy = client.spawn_local_copy();
    if !copy
        .wait_until_async(Duration::from_secs(60), |v| v.leader.is_some())
        .await
    {
        bail!("no leader within 60 s");
    }
    println!(
        "mesofs bench writes: 3 masters on loopback, fsync on; each write is a framework registered or torn down, answered once it is visible in the writer's copy"
    );
    let duration = Duration::from_secs_f64(args.seconds);
    for (round, &writers) in args.writers.iter().enumerate() {
        let start = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let client = client.clone();
                let copy = copy.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let name = format!("w{round}-{w}");
                    let mut register = true;
                    while start.elapsed() < duration {
                        let op = if register {
                            Op::RegisterFramework(proto::RegisterFramework {
                                name: name.clone(),
                                user: "root".into(),
                            })
                        } else {
                            Op::TeardownFramework(proto::TeardownFramework { name: name.clone() })
                        };
                        let t = Instant::now();
                        let written = client.write(&Writer::root(), op).await?;
                        let index = written.index;
                        copy.wait_for_index(index, Duration::from_secs(10)).await;
                        latencies.push(t.elapsed());
                        register = !register;
                    }
                    Ok::<_, mesofs_kernel::client::WriteError>(latencies)
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(
                t.await?
                    .map_err(|e| anyhow::anyhow!("a write failed: {e}"))?,
            );
        }
        let elapsed = start.elapsed();
        let rate = latencies.len() as f64 / elapsed.as_secs_f64();
        let (p50, p99) = percentiles(&latencies);
        let (p50, p99) = (p50.as_secs_f64() * 1000.0, p99.as_secs_f64() * 1000.0);
        println!(
            "  {writers} writers: {rate:.0} writes/s ({} in {:.1} s), latency median {p50:.2} ms, p99 {p99:.2} ms",
            latencies.len(),
            elapsed.as_secs_f64()
        );
    }
    drop(masters);
    Ok(())
}
