//! Running tasks' usage (`tasks/<t>/usage`, and `usage` in `status.json`): asked of each
//! agent for all its tasks at once, and kept for a moment, so that reading every task's usage
//! every second costs one request per agent, not one per task.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesofs_kernel::proto::TaskUsage;
use serde_json::{json, Value};
use tracing::debug;

use crate::sandbox::SandboxFiles;

/// How long one agent's answer serves further reads.
pub const USAGE_FRESH: Duration = Duration::from_secs(1);
/// How long the agent may take to answer before the usage is left out.
pub const USAGE_TIMEOUT: Duration = Duration::from_secs(1);

/// One agent's latest answer: when it measured, its tasks' usage by task id; or why there is
/// none.
type Answer = Result<Arc<(u64, HashMap<String, TaskUsage>)>, String>;

/// One task's usage, as its agent measured it.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    /// The figures.
    pub usage: TaskUsage,
    /// When the agent read them (unix ms).
    pub time_ms: u64,
}

/// One agent's latest answer and when it came; locked while a request is under way, so that
/// readers meanwhile wait for its answer.
type Slot = Arc<tokio::sync::Mutex<Option<(Instant, Answer)>>>;

/// The latest answer of each agent, by its Files address.
#[derive(Default)]
pub struct Usages {
    agents: Mutex<HashMap<String, Slot>>,
}

impl Usages {
    /// The usage of `task_id` on the agent at `address`: `Ok(None)` when the agent does not
    /// run it; `Err` with the reason when the agent did not answer. Readers of one agent at
    /// one time share a single request.
    pub async fn of(
        &self,
        files: &SandboxFiles,
        address: &str,
        task_id: &str,
    ) -> Result<Option<Measured>, String> {
        let slot = self
            .agents
            .lock()
            .expect("usages lock")
            .entry(address.to_string())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        let answer = match &*slot {
            Some((at, answer)) if at.elapsed() < USAGE_FRESH => answer.clone(),
            _ => {
                let answer: Answer = match files.usage(address, USAGE_TIMEOUT).await {
                    Ok(reply) => Ok(Arc::new((
                        reply.measured_ms,
                        reply
                            .tasks
                            .into_iter()
                            .map(|u| (u.task_id.clone(), u))
                            .collect(),
                    ))),
                    Err(e) => {
                        debug!(agent = %address, error = %e, "usage unknown");
                        Err(e.to_string())
                    }
                };
                *slot = Some((Instant::now(), answer.clone()));
                answer
            }
        };
        answer.map(|tasks| {
            tasks.1.get(task_id).map(|usage| Measured {
                usage: usage.clone(),
                time_ms: tasks.0,
            })
        })
    }
}

/// One figure of a task's usage.
enum Figure {
    /// A time, in nanoseconds: seconds in the file and in JSON.
    Nanos(u64),
    /// A count, a size or a time in unix milliseconds: as is.
    Whole(u64),
}

/// The figures the agent knows, named as the `usage` file and `status.json` name them, in
/// order.
fn figures(m: &Measured) -> Vec<(&'static str, Figure)> {
    let u = &m.usage;
    let named = [
        ("cpu_seconds", Some(Figure::Nanos(u.cpu_ns))),
        ("cpu_user_seconds", u.cpu_user_ns.map(Figure::Nanos)),
        ("cpu_system_seconds", u.cpu_system_ns.map(Figure::Nanos)),
        ("mem_bytes", Some(Figure::Whole(u.mem_bytes))),
        ("mem_peak_bytes", u.mem_peak_bytes.map(Figure::Whole)),
        ("pids", u.pids.map(Figure::Whole)),
        ("disk_bytes", u.disk_bytes.map(Figure::Whole)),
        ("disk_time_ms", u.disk_measured_ms.map(Figure::Whole)),
        ("time_ms", Some(Figure::Whole(m.time_ms))),
    ];
    named
        .into_iter()
        .filter_map(|(name, f)| Some((name, f?)))
        .collect()
}

/// The `usage` file: one `name value` line per figure the agent knows, CPU in seconds with
/// microseconds, sizes in bytes, times in unix milliseconds.
pub fn text(m: &Measured) -> String {
    let mut out = String::new();
    for (name, figure) in figures(m) {
        let _ = match figure {
            Figure::Nanos(ns) => writeln!(
                out,
                "{name} {}.{:06}",
                ns / 1_000_000_000,
                ns % 1_000_000_000 / 1000
            ),
            Figure::Whole(n) => writeln!(out, "{name} {n}"),
        };
    }
    out
}

/// `usage` in `status.json`: the same figures as the `usage` file, under the same names.
pub fn json(m: &Measured) -> Value {
    let mut v = json!({});
    for (name, figure) in figures(m) {
        v[name] = match figure {
            Figure::Nanos(ns) => json!(ns as f64 / 1e9),
            Figure::Whole(n) => json!(n),
        };
    }
    v
}
