//! A bare isolated run of `true`, with none of the containerizer's bookkeeping.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use super::command::resolve_program;
use super::{LaunchError, DEFAULT_PATH};
use crate::isolator::{Isolator, Limits};
use crate::process::{spawn_isolated, Exec};

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
        let argv = [OsString::from("true")];
        let program = resolve_program(&argv[0], OsStr::new(DEFAULT_PATH), Path::new("/"))
            .map_err(spawn_err)?;
        let null = || {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .map(OwnedFd::from)
        };
        let no_env: [(&str, &str); 0] = [];
        let exec = Exec::new(
            &program,
            &argv,
            no_env,
            Path::new("/"),
            null().map_err(spawn_err)?,
            null().map_err(spawn_err)?,
        )
        .map_err(spawn_err)?;
        let pid = spawn_isolated(&exec, &isolation.joiner()?, None, None).map_err(spawn_err)?;
        isolation.started(pid);
        // Its own pgid is registered with no reaper, so this wait is the only one.
        let mut status = 0;
        // SAFETY: waiting for our own child.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
            return Err(spawn_err(std::io::Error::last_os_error()));
        }
        isolation.kill_all()?;
        Ok::<(), LaunchError>(())
    })();
    let destroyed = isolation.destroy();
    ran?;
    destroyed?;
    Ok(start.elapsed())
}
