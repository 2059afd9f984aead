//! The end of a task's supervisor that an earlier run of the agent spawned: seen through a
//! pidfd (or by looking), its command's status read from the exit file.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use crate::process::Ended;
use crate::procfs;
use crate::supervisor::read_exit_file;

/// Whether `pid` still names the process that started at `start_ticks`, and it has not ended.
pub(super) fn same_process(pid: i32, start_ticks: u64) -> bool {
    procfs::stat(pid).is_some_and(|s| s.start_ticks == start_ticks && s.state != 'Z')
}

/// The end of a supervisor this agent did not spawn (an earlier run did): waits until it is
/// gone, then reads how its command ended from the exit file it wrote.
pub(super) async fn adopted_end(pid: i32, start_ticks: u64, exit_file: Option<PathBuf>) -> Ended {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    // Checked after opening: the pidfd then surely refers to the process we know.
    if raw >= 0 {
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if same_process(pid, start_ticks) {
            // SAFETY: the AsyncFd owns the descriptor, which stays open until it is dropped.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            };
            match registered {
                // Readable once the process has exited.
                Ok(afd) => {
                    let _ = afd.readable().await;
                }
                Err(_) => poll_until_gone(pid, start_ticks).await,
            }
        }
    } else {
        poll_until_gone(pid, start_ticks).await;
    }
    exit_file
        .as_deref()
        .and_then(read_exit_file)
        .unwrap_or(Ended::Unknown)
}

/// Without pidfds: looks every 100 ms.
async fn poll_until_gone(pid: i32, start_ticks: u64) {
    while same_process(pid, start_ticks) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
