//! A bare isolated run of `true`, with none of the containerizer's bookkeeping.

use std::process::Stdio;
use std::time::{Duration, Instant};

use super::LaunchError;
use crate::isolator::{Isolator, Limits};
use crate::process::spawn_isolated;

/// One bare isolated run of `true`, for benchmarks: create an isolation (1 cpu, 64 MiB,
/// 64 pids), fork and exec `true` joined to it, wait for it, and destroy the isolation, with
/// none of the containerizer's bookkeeping. Returns how long the whole cycle took.
pub fn bare_launch_cycle(isolator: &dyn Isolator, id: &str) -> Result<Duration, LaunchError> {
    let start = Instant::now();
    let limits = Limits {
        cpus_milli: 1000,
        mem_bytes: 64 << 20,
        pids_max: 64,
    };
    let isolation = isolator.create(id, &limits)?;
    let spawn_err = |source| LaunchError::Spawn {
        program: "true".into(),
        source,
    };
    let ran = (|| {
        let mut cmd = std::process::Command::new("true");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child =
            spawn_isolated(&mut cmd, isolation.joiner()?, None, None).map_err(spawn_err)?;
        isolation.started(child.id() as i32);
        // Its own pgid is registered with no reaper, so this wait is the only one.
        child.wait().map_err(spawn_err)?;
        isolation.kill_all()?;
        Ok::<(), LaunchError>(())
    })();
    let destroyed = isolation.destroy();
    ran?;
    destroyed?;
    Ok(start.elapsed())
}
