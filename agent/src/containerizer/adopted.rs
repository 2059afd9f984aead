//! The end of a task's supervisor, seen through a pidfd (or, for one an earlier run of the
//! agent spawned on a kernel without pidfds, by looking), its command's status read from the
//! exit file.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::warn;

use crate::process::{pidfd_open, Ended};
use crate::procfs;
use crate::supervisor::read_exit_file;

/// Whether `pid` still names the process that started at `start_ticks`, and it has not ended.
pub(super) fn same_process(pid: i32, start_ticks: u64) -> bool {
    procfs::stat(pid).is_some_and(|s| s.start_ticks == start_ticks && s.state != 'Z')
}

/// The end of a supervisor this agent did not spawn (an earlier run did): waits until it is
/// gone, then reads how its command ended from the exit file it wrote.
pub(super) async fn adopted_end(pid: i32, start_ticks: u64, exit_file: Option<PathBuf>) -> Ended {
    let Ok(fd) = pidfd_open(pid) else {
        poll_until_gone(pid, start_ticks).await;
        return read_end(exit_file.as_deref());
    };
    // Checked after opening: the pidfd then surely refers to the process we know.
    if !same_process(pid, start_ticks) {
        return read_end(exit_file.as_deref());
    }
    supervised_end(fd, exit_file).await
}

/// The end of a supervisor known by its pidfd: waits until it has exited, then reads how its
/// command ended from the exit file it wrote.
pub(super) async fn supervised_end(pidfd: OwnedFd, exit_file: Option<PathBuf>) -> Ended {
    // A second descriptor of it, to wait on from a thread if the runtime cannot take it.
    let spare = pidfd.try_clone();
    // SAFETY: the AsyncFd owns the descriptor, which stays open until it is dropped.
    match unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) } {
        // Readable once the process has exited.
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(error) => {
            warn!(%error, "cannot watch a supervisor's pidfd from the runtime; waiting on a thread");
            if let Ok(pidfd) = spare {
                let _ = tokio::task::spawn_blocking(move || {
                    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
                    while let Err(nix::errno::Errno::EINTR) = poll(&mut fds, PollTimeout::NONE) {}
                })
                .await;
            }
        }
    }
    read_end(exit_file.as_deref())
}

/// How the command ended, as its supervisor's exit file says (unknown without one).
fn read_end(exit_file: Option<&Path>) -> Ended {
    exit_file.and_then(read_exit_file).unwrap_or(Ended::Unknown)
}

/// Without pidfds: looks every 100 ms.
async fn poll_until_gone(pid: i32, start_ticks: u64) {
    while same_process(pid, start_ticks) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
