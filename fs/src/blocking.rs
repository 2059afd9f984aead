//! Blocking reads and their interruption.
//!
//! fuser 0.18 answers FUSE_INTERRUPT with ENOSYS, after which the kernel never sends another
//! and waits for our reply no matter what: a read we hold would ignore Ctrl-C, and a SIGKILLed
//! reader would sit in D state. So a held read watches its caller instead: every 50 ms it looks
//! at `/proc/<pid>/status`, and a signal pending for the caller (or the caller gone) ends the
//! read with EINTR, which lets the kernel deliver the signal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mesofs_kernel::client::LocalCopy;
use mesofs_kernel::watch::View;

/// How often a held read checks its caller for signals.
pub const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// Why a held read ended without its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Interrupted {
    /// A signal is pending for the caller, or the caller is gone.
    #[error("the reader has a signal pending")]
    Signal,
    /// The mount is being unmounted.
    #[error("the filesystem is being unmounted")]
    Unmounting,
    /// Nothing to read yet and the reader asked not to wait (O_NONBLOCK).
    #[error("nothing to read yet")]
    WouldBlock,
}

impl Interrupted {
    /// The errno the reader gets.
    pub fn errno(self) -> i32 {
        match self {
            Interrupted::Signal => libc::EINTR,
            Interrupted::Unmounting => libc::EIO,
            Interrupted::WouldBlock => libc::EAGAIN,
        }
    }
}

/// Whether the thread `pid` (a FUSE request's pid is the caller's thread id) has a signal
/// pending that is not blocked, or no longer exists. SIGKILL counts even if it shows blocked.
pub fn caller_interrupted(pid: u32) -> bool {
    // The kernel gives pid 0 when the caller is outside the mount's pid namespace: nothing to
    // watch then.
    if pid == 0 {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    signal_pending(&status)
}

/// Whether the thread `pid` is being killed: a signal is pending that it neither blocks nor
/// catches and that does not merely stop it (so it dies of it), or SIGKILL, or it is gone.
/// A caller that catches the signal (SIGCHLD in a shell, any handler) is not dying, and its
/// command must not end with EINTR: it may have taken effect, and EINTR invites a retry.
pub fn caller_dying(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    fatal_signal_pending(&status)
}

/// The decision of [`caller_dying`] over the text of a `/proc/<pid>/status`.
pub fn fatal_signal_pending(status: &str) -> bool {
    let field = |name: &str| status_mask(status, name);
    let stops = [libc::SIGSTOP, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU]
        .iter()
        .fold(0u64, |m, s| m | 1u64 << (s - 1));
    let pending = field("SigPnd:") | field("ShdPnd:");
    let deadly = pending & !field("SigBlk:") & !field("SigCgt:") & !stops;
    let sigkill = 1u64 << (libc::SIGKILL - 1);
    exiting(status) || deadly != 0 || pending & sigkill != 0
}

fn status_mask(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

fn exiting(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("State:"))
        .is_some_and(|s| {
            let s = s.trim_start();
            s.starts_with('Z') || s.starts_with('X')
        })
}

/// The decision of [`caller_interrupted`] over the text of a `/proc/<pid>/status`.
pub fn signal_pending(status: &str) -> bool {
    let field = |name: &str| status_mask(status, name);
    let pending = field("SigPnd:") | field("ShdPnd:");
    let blocked = field("SigBlk:");
    let sigkill = 1u64 << (libc::SIGKILL - 1);
    exiting(status) || pending & (!blocked | sigkill) != 0
}

/// Who waits for a held read, and whether they wait at all.
#[derive(Clone, Copy, Debug)]
pub struct Waiting {
    /// The reader's thread id (0: unknown).
    pub pid: u32,
    /// The reader opened with, or set, O_NONBLOCK.
    pub nonblocking: bool,
}

/// Waits until `ready` gives a value for the view, checking the caller for signals every
/// [`SIGNAL_CHECK`] and the mount for unmounting. Never spins: it sleeps on the view's change
/// notifications between checks.
pub async fn wait_for<T>(
    copy: &LocalCopy,
    unmounting: &AtomicBool,
    waiting: Waiting,
    mut ready: impl FnMut(&View) -> Option<T>,
) -> Result<T, Interrupted> {
    if waiting.nonblocking {
        return ready(&copy.view()).ok_or(Interrupted::WouldBlock);
    }
    let pid = waiting.pid;
    loop {
        let mut found = None;
        copy.wait_until_async(SIGNAL_CHECK, |view| {
            found = ready(view);
            found.is_some()
        })
        .await;
        if let Some(value) = found {
            return Ok(value);
        }
        if unmounting.load(Ordering::Relaxed) {
            return Err(Interrupted::Unmounting);
        }
        if caller_interrupted(pid) {
            return Err(Interrupted::Signal);
        }
    }
}

/// Runs `work` unless the caller is being killed ([`caller_dying`]), or the mount is
/// unmounted, first; checks every [`SIGNAL_CHECK`].
pub async fn unless_caller_dies<T>(
    pid: u32,
    unmounting: &AtomicBool,
    work: impl std::future::Future<Output = T>,
) -> Result<T, Interrupted> {
    tokio::pin!(work);
    loop {
        if let Ok(value) = tokio::time::timeout(SIGNAL_CHECK, &mut work).await {
            return Ok(value);
        }
        if unmounting.load(Ordering::Relaxed) {
            return Err(Interrupted::Unmounting);
        }
        if caller_dying(pid) {
            return Err(Interrupted::Signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: &str = "Name:\tcat\nState:\tS (sleeping)\nSigQ:\t0/1\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\nSigBlk:\t0000000000000000\n";

    #[test]
    fn pending_signals_count_unless_blocked_and_sigkill_always_counts() {
        assert!(!signal_pending(QUIET));
        let sigint = QUIET.replace("ShdPnd:\t0000000000000000", "ShdPnd:\t0000000000000002");
        assert!(signal_pending(&sigint));
        let blocked = sigint.replace("SigBlk:\t0000000000000000", "SigBlk:\t0000000000000002");
        assert!(!signal_pending(&blocked));
        let sigkill = QUIET
            .replace("SigPnd:\t0000000000000000", "SigPnd:\t0000000000000100")
            .replace("SigBlk:\t0000000000000000", "SigBlk:\tffffffffffffffff");
        assert!(signal_pending(&sigkill));
        assert!(signal_pending(&QUIET.replace("S (sleeping)", "Z (zombie)")));
    }

    #[test]
    fn only_a_signal_the_caller_dies_of_ends_its_command() {
        let with = |pending: &str, caught: &str| {
            QUIET
                .replace("ShdPnd:\t0000000000000000", &format!("ShdPnd:\t{pending}"))
                .replace(
                    "SigBlk:\t0000000000000000",
                    &format!("SigBlk:\t0000000000000000\nSigCgt:\t{caught}"),
                )
        };
        assert!(!fatal_signal_pending(QUIET));
        // SIGINT (2) with the default action: the caller dies of it.
        assert!(fatal_signal_pending(&with(
            "0000000000000002",
            "0000000000000000"
        )));
        // SIGINT caught by a handler (a shell's): it lives on and gets the real outcome.
        assert!(!fatal_signal_pending(&with(
            "0000000000000002",
            "0000000000000002"
        )));
        // SIGCHLD (17) caught, as in any shell running jobs.
        assert!(!fatal_signal_pending(&with(
            "0000000000010000",
            "0000000000010000"
        )));
        // SIGTSTP (20) only stops it.
        assert!(!fatal_signal_pending(&with(
            "0000000000080000",
            "0000000000000000"
        )));
        // SIGKILL (9) always.
        assert!(fatal_signal_pending(&with(
            "0000000000000100",
            "ffffffffffffffff"
        )));
        assert!(fatal_signal_pending(
            &QUIET.replace("S (sleeping)", "Z (zombie)")
        ));
    }

    #[test]
    fn a_vanished_caller_counts_as_interrupted_and_this_thread_does_not() {
        assert!(caller_interrupted(u32::MAX - 1));
        assert!(!caller_interrupted(std::process::id()));
        assert!(!caller_interrupted(0));
    }
}
