//! Spawning a task's main process: its own session and process group, joined to its isolation
//! between fork and exec, so not even its first instruction runs outside it.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::Arc;

use crate::isolator::Joiner;

/// Who a task runs as: the owner of its framework.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskUser {
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

impl TaskUser {
    /// Whether this process already is this user (then nothing is switched).
    pub(crate) fn is_current(&self) -> bool {
        nix::unistd::geteuid().as_raw() == self.uid && nix::unistd::getegid().as_raw() == self.gid
    }

    /// What the task's process switches to: its supervisor and the command's child
    /// compute this before forking, because looking users up is not safe after a fork.
    pub(crate) fn credentials(&self) -> Credentials {
        // The user's groups from the group database; a uid without a passwd entry gets its
        // primary gid alone.
        let groups = nix::unistd::User::from_uid(self.uid.into())
            .ok()
            .flatten()
            .and_then(|u| {
                let name = std::ffi::CString::new(u.name).ok()?;
                nix::unistd::getgrouplist(&name, self.gid.into()).ok()
            })
            .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|| vec![self.gid]);
        Credentials {
            user: *self,
            groups,
        }
    }
}

/// A [`TaskUser`] with its supplementary groups, ready to switch to after a fork.
#[derive(Clone, Debug)]
pub(crate) struct Credentials {
    user: TaskUser,
    groups: Vec<libc::gid_t>,
}

impl Credentials {
    /// Switches the calling process to the user: groups, gid, then uid (last, since it takes
    /// the right to change the others). Async-signal-safe: raw syscalls, no allocation.
    pub(crate) fn switch(&self) -> io::Result<()> {
        // SAFETY: plain syscalls on memory we own.
        let failed = unsafe {
            libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0
                || libc::setgid(self.user.gid) != 0
                || libc::setuid(self.user.uid) != 0
        };
        if failed {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// Gives the calling process default signal dispositions and an empty signal mask: an
/// ignored signal survives exec, and a task must not inherit the agent's (or the shell's that
/// started it: background jobs ignore SIGINT and SIGQUIT). Async-signal-safe.
pub(crate) fn reset_signals() {
    // SAFETY: signal(2) and sigprocmask(2) on values we own; failures (SIGKILL, SIGSTOP, and
    // numbers past the last signal) change nothing.
    unsafe {
        for sig in 1..65 {
            libc::signal(sig, libc::SIG_DFL);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

/// Makes `cmd` start its child in a new session (so its pid is its process group id), join
/// the isolation behind `joiner`, become `user` (if given), and find `fd3` (if given) as its
/// descriptor 3 before exec; then spawns it.
pub(crate) fn spawn_isolated(
    cmd: &mut Command,
    joiner: Joiner,
    user: Option<Credentials>,
    fd3: Option<RawFd>,
) -> io::Result<Child> {
    let joiner = Arc::new(joiner);
    let hook = joiner.clone();
    // SAFETY: the hook runs between fork and exec; it calls only setsid(2), through
    // `reset_signals` signal(2) and sigprocmask(2), dup2(2) or fcntl(2), through
    // `Joiner::join_self` write(2), and through `Credentials::switch` setgroups(2), setgid(2)
    // and setuid(2): async-signal-safe, no allocation, no locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            reset_signals();
            if let Some(fd) = fd3 {
                // dup2 onto itself would keep close-on-exec: clear it instead.
                let ok = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0) == 0
                } else {
                    libc::dup2(fd, 3) == 3
                };
                if !ok {
                    return Err(io::Error::last_os_error());
                }
            }
            hook.join_self()?;
            match &user {
                Some(c) => c.switch(),
                None => Ok(()),
            }
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
        let mut child = spawn_isolated(&mut cmd, Joiner::none(), None, None).expect("spawn true");
        let pid = child.id() as i32;
        // The child may already have exited; its pgid is readable until reaped.
        let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
            .map(|p| p.as_raw())
            .unwrap_or(pid);
        assert_eq!(pgid, pid);
        assert!(child.wait().expect("wait").success());
    }
}
