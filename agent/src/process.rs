//! Spawning a task's main process: its own session and process group, joined to its isolation
//! between fork and exec, so not even its first instruction runs outside it.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::Arc;

use crate::isolator::Joiner;

/// Makes `cmd` start its child in a new session (so its pid is its process group id) and
/// join the isolation behind `joiner` before exec; then spawns it.
pub(crate) fn spawn_isolated(cmd: &mut Command, joiner: Joiner) -> io::Result<Child> {
    let joiner = Arc::new(joiner);
    let hook = joiner.clone();
    // SAFETY: the hook runs between fork and exec; it calls only setsid(2) and, through
    // `Joiner::join_self`, write(2): async-signal-safe, no allocation, no locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            hook.join_self()
        });
    }
    let child = cmd.spawn();
    // The hook keeps its own reference; drop the command's descriptors with the command.
    drop(joiner);
    child
}

/// A process's end as `wait` saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
    /// Its status was lost (reaped by someone else).
    Unknown,
}

impl Ended {
    /// Says how it ended, e.g. "exited with status 3" or "killed by signal 9 (SIGKILL)".
    pub(crate) fn describe(self) -> String {
        match self {
            Ended::Exited(code) => format!("exited with status {code}"),
            Ended::Signaled(sig) => format!("killed by signal {sig} ({})", signal_name(sig)),
            Ended::Unknown => "ended with an unknown status".to_string(),
        }
    }
}

/// The name of signal `n` ("SIGKILL"), or "unknown signal".
pub(crate) fn signal_name(n: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(n)
        .map(|s| s.as_str())
        .unwrap_or("unknown signal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endings_are_described_for_people() {
        assert_eq!(Ended::Exited(0).describe(), "exited with status 0");
        assert_eq!(Ended::Exited(3).describe(), "exited with status 3");
        assert_eq!(
            Ended::Signaled(9).describe(),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            Ended::Signaled(15).describe(),
            "killed by signal 15 (SIGTERM)"
        );
    }

    #[test]
    fn a_spawned_child_leads_its_own_session() {
        let mut cmd = Command::new("true");
        let mut child = spawn_isolated(&mut cmd, Joiner::none()).expect("spawn true");
        let pid = child.id() as i32;
        // The child may already have exited; its pgid is readable until reaped.
        let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
            .map(|p| p.as_raw())
            .unwrap_or(pid);
        assert_eq!(pgid, pid);
        assert!(child.wait().expect("wait").success());
    }
}
