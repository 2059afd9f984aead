//! The task's init: pid 1 of the task's own pid namespace, forked by its supervisor, outside
//! the task's cgroups as its supervisor is (the command it forks joins them). It gives the
//! task its own mount namespace (a `/proc` of its pid namespace,
//! and its sandbox's `tmp` as `/tmp`), forks the command, passes on to it the signals the
//! task's own processes send to pid 1, reaps every orphan the task leaves, and tells the
//! supervisor how the command ended before it exits (so the kernel kills whatever is left in
//! the namespace).
//!
//! Everything here runs in a single-threaded fork, between fork and exec or in a process that
//! never execs: raw system calls, and no allocation in signal handlers.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::process::{fork_or_exit, Ended, TaskUser};

/// Signals the init passes on to the command: those a kill or a terminal sends.
const PASSED_ON: [libc::c_int; 9] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGTERM,
    libc::SIGALRM,
    libc::SIGWINCH,
    libc::SIGCONT,
];

/// The command's pid, for the signal handler.
static COMMAND: AtomicI32 = AtomicI32::new(0);

/// Passes a signal sent from inside the task on to the command. One from outside the
/// namespace (its sender's pid reads 0 here) is left: the agent's kill signals every process
/// of the task itself, and the command must not get it twice.
extern "C" fn pass_on(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let pid = COMMAND.load(Ordering::SeqCst);
    // SAFETY: the kernel hands the handler a valid siginfo; kill(2) is async-signal-safe.
    unsafe {
        if pid > 0 && !info.is_null() && (*info).si_pid() != 0 {
            libc::kill(pid, sig);
        }
    }
}

/// Puts the calling process (the task's init, root, in the sandbox as its working directory)
/// in a mount namespace of its own: mounts do not propagate back to the machine, the sandbox's
/// `tmp` (made if missing, owned by the task's user, mode 1777) is its `/tmp`, and, with
/// `proc`, a `/proc` of its pid namespace shows only the task's processes.
pub(crate) fn private_mounts(user: Option<TaskUser>, proc: bool) -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS)?;
    // Nothing mounted here reaches the machine; the machine's unmounts still reach here where
    // its mounts are shared.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )?;
    let tmp = sandbox_tmp(user)?;
    // Through the descriptor: the path was checked when it was opened, not again.
    let source = format!("/proc/self/fd/{}", tmp.as_raw_fd());
    mount(
        Some(source.as_str()),
        "/tmp",
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    drop(tmp);
    if proc {
        mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )?;
    }
    Ok(())
}

/// The sandbox's `tmp` directory, opened without following a link (the sandbox is the task
/// user's, who may have put anything there), owned by the task's user, mode 1777.
fn sandbox_tmp(user: Option<TaskUser>) -> io::Result<OwnedFd> {
    let name = CString::new("tmp").expect("no NUL");
    // SAFETY: mkdirat and openat on a NUL-terminated name relative to the working directory.
    let fd = unsafe {
        if libc::mkdirat(libc::AT_FDCWD, name.as_ptr(), 0o1777) != 0
            && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
        {
            return Err(io::Error::last_os_error());
        }
        libc::openat(
            libc::AT_FDCWD,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the sandbox's tmp must be a directory: {}",
                io::Error::last_os_error()
            ),
        ));
    }
    // SAFETY: a descriptor openat just gave us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fchown and fchmod on the descriptor we own.
    let failed = unsafe {
        user.is_some_and(|u| libc::fchown(fd.as_raw_fd(), u.uid, u.gid) != 0)
            || libc::fchmod(fd.as_raw_fd(), 0o1777) != 0
    };
    if failed {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Runs as the task's init once `command` (the forked command, which execs) runs: passes
/// signals on to it, reaps every process until it ends, writes how it ended to `report`,
/// and exits. `started` is the pipe the agent learns the exec from: the init closes its copy.
/// Never returns.
pub(crate) fn serve(command: impl FnOnce(), report: RawFd, started: Option<RawFd>) -> ! {
    // Blocked across the fork: a signal that comes before the command's pid is known is
    // passed on once it is.
    // SAFETY: sigset and sigprocmask on values we own.
    let old = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_BLOCK, &all, &mut old);
        old
    };
    let pid = fork_or_exit("the task's command");
    if pid == 0 {
        command();
        // SAFETY: leaving the forked child, should the command return, without running the
        // exit handlers.
        unsafe { libc::_exit(127) };
    }
    COMMAND.store(pid, Ordering::SeqCst);
    if let Some(fd) = started {
        // SAFETY: closing our copy: the command's exec closes the last one.
        unsafe { libc::close(fd) };
    }
    // A pid namespace's init gets no signal it has no handler for from inside it. Without
    // one (a mount namespace only), the init is not the task's to signal: it ignores them,
    // so that it lives to say how the command ended.
    // SAFETY: getpid(2).
    let pid_one = unsafe { libc::getpid() } == 1;
    for sig in PASSED_ON {
        // SAFETY: installing a handler that only calls kill(2), or ignoring the signal;
        // SA_RESTART keeps waitpid going.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = if pid_one {
                pass_on as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
                    as usize
            } else {
                libc::SIG_IGN
            };
            action.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
    // SAFETY: restoring the mask blocked above.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    let ended = loop {
        let mut status = 0;
        // SAFETY: waiting for any child of ours: the command, or an orphan of the task.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r == pid {
            break Ended::from_wait_status(status);
        }
        if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break Ended::Unknown;
        }
    };
    let message = encode(ended);
    // SAFETY: one write of 8 bytes to a pipe (atomic).
    unsafe { libc::write(report, message.as_ptr().cast(), message.len()) };
    // The rest of the namespace dies with its init.
    std::process::exit(0)
}

/// How the command ended, as the init tells its supervisor: a kind byte and the number.
fn encode(ended: Ended) -> [u8; 8] {
    let (kind, n) = match ended {
        Ended::Exited(c) => (1u32, c),
        Ended::Signaled(s) => (2, s),
        Ended::Unknown => (0, 0),
    };
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&kind.to_le_bytes());
    out[4..].copy_from_slice(&n.to_le_bytes());
    out
}

/// What [`serve`] wrote, if it wrote all of it.
pub(crate) fn decode(message: &[u8]) -> Option<Ended> {
    let kind = u32::from_le_bytes(message.get(..4)?.try_into().ok()?);
    let n = i32::from_le_bytes(message.get(4..8)?.try_into().ok()?);
    match kind {
        1 => Some(Ended::Exited(n)),
        2 => Some(Ended::Signaled(n)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn how_the_command_ended_crosses_to_the_supervisor_whole() {
        for ended in [Ended::Exited(0), Ended::Exited(3), Ended::Signaled(11)] {
            assert_eq!(decode(&encode(ended)), Some(ended));
        }
        assert_eq!(decode(&encode(Ended::Unknown)), None);
        assert_eq!(decode(&encode(Ended::Exited(3))[..5]), None);
    }
}
