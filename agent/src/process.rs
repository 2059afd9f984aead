//! Spawning a task's main process: its own session and process group, joined to its isolation
//! between fork and exec, so not even its first instruction runs outside it.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;

use crate::isolator::Joiner;

/// Makes `cmd` start its child in a new session (so its pid is its process group id) and
/// join the isolation behind `joiner` before exec; then spawns it.
///
/// With `exit_file`, the child forks once more before joining: the new process joins the
/// isolation and runs the command, and the child stays as its supervisor (see [`supervise`])
/// outside the isolation, which outlives the agent if the agent dies and records in
/// `exit_file` how the command ended. The pid returned is the supervisor's; it ends exactly as
/// the command did.
pub(crate) fn spawn_isolated(
    cmd: &mut Command,
    joiner: Joiner,
    exit_file: Option<&Path>,
) -> io::Result<Child> {
    let nul = |_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the exit file path");
    let supervision = exit_file
        .map(|p| {
            let file = CString::new(p.as_os_str().as_encoded_bytes()).map_err(nul)?;
            // How ps shows the supervisor (it is a fork of the agent and has not exec'd).
            let task = p.file_stem().unwrap_or_default().to_string_lossy();
            let title = CString::new(format!("mesofs supervisor of {task}")).map_err(nul)?;
            Ok::<_, io::Error>((file, title))
        })
        .transpose()?;
    if supervision.is_some() {
        // Read now: the supervisor may not read files or allocate.
        arg_area();
    }
    let joiner = Arc::new(joiner);
    let hook = joiner.clone();
    // SAFETY: the hook runs between fork and exec; it calls only setsid(2), write(2) (through
    // `Joiner::join_self`) and, in `supervise`, fork/open/write/close/waitpid/sigaction/
    // kill/_exit: async-signal-safe, no allocation, no locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // Before joining: the supervisor stays in the agent's cgroups, so the fork (a copy
            // of the agent's page tables) is not throttled by the task's cpu quota, and the
            // supervisor is no candidate for the task's OOM kill nor counted in its pids.
            if let Some((file, title)) = &supervision {
                supervise(file, title)?;
            }
            hook.join_self()
        });
    }
    let child = cmd.spawn();
    // The hook keeps its own reference; drop the command's descriptors with the command.
    drop(joiner);
    child
}

/// Runs between fork and exec. Forks the process that will join the isolation and exec the
/// command, and returns in it; the calling process becomes its supervisor and never returns:
/// it closes every descriptor it inherited (so the spawning parent's exec-error pipe closes
/// once the command has exec'd), ignores the signals a kill sends first (the agent's SIGTERM is
/// for the command), waits for the command, writes `exited N` or `signaled N` to `exit_file`,
/// and ends the same way the command did. It shows in `ps` as `title` (its command line would
/// otherwise be the agent's).
///
/// # Safety
/// Only between fork and exec in a child process.
unsafe fn supervise(exit_file: &CStr, title: &CStr) -> io::Result<()> {
    let pid = libc::fork();
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        return Ok(());
    }
    // First, so that the spawning parent, reading its exec-error pipe until every copy is
    // closed, goes on as soon as the command has exec'd.
    libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
    // The title goes over the agent's own argument strings, which this process has a private
    // copy of: /proc/<pid>/cmdline reads them from there. Moving them elsewhere
    // (PR_SET_MM) would need CAP_SYS_RESOURCE.
    if let Some((start, end)) = arg_area() {
        let area = start as *mut u8;
        let len = end - start;
        let n = title.to_bytes().len().min(len.saturating_sub(1));
        std::ptr::write_bytes(area, 0, len);
        std::ptr::copy_nonoverlapping(title.as_ptr().cast::<u8>(), area, n);
    }
    libc::prctl(
        libc::PR_SET_NAME,
        c"mesofs-sup".as_ptr() as libc::c_ulong,
        0,
        0,
        0,
    );
    // The supervisor's signal handlers are the agent's, inherited without an exec: reset them.
    for sig in 1..libc::SIGRTMAX() {
        let disposition = match sig {
            libc::SIGTERM | libc::SIGINT | libc::SIGHUP | libc::SIGQUIT => libc::SIG_IGN,
            _ => libc::SIG_DFL,
        };
        libc::signal(sig, disposition);
    }
    let mut status = 0;
    loop {
        let r = libc::waitpid(pid, &mut status, 0);
        if r == pid {
            break;
        }
        if r < 0 && *libc::__errno_location() != libc::EINTR {
            libc::_exit(127);
        }
    }
    let (word, n): (&[u8], i32) = if libc::WIFSIGNALED(status) {
        (b"signaled ", libc::WTERMSIG(status))
    } else {
        (b"exited ", libc::WEXITSTATUS(status))
    };
    let mut line = [0u8; 32];
    let mut len = word.len();
    line[..len].copy_from_slice(word);
    len += write_decimal(&mut line[len..], n);
    line[len] = b'\n';
    len += 1;
    let fd = libc::open(
        exit_file.as_ptr(),
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
        0o644,
    );
    if fd >= 0 {
        libc::write(fd, line.as_ptr().cast(), len);
        libc::close(fd);
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // Die of the same signal, without dumping a core of the agent's memory.
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(sig, libc::SIG_DFL);
        libc::kill(libc::getpid(), sig);
        libc::_exit(128 + sig);
    }
    libc::_exit(libc::WEXITSTATUS(status))
}

/// Where this process's argument strings lie (`arg_start`, `arg_end` of /proc/self/stat),
/// read once.
fn arg_area() -> Option<(usize, usize)> {
    static AREA: std::sync::OnceLock<Option<(usize, usize)>> = std::sync::OnceLock::new();
    *AREA.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        // Fields 48 and 49 of stat(5); the first one after the name is field 3.
        let start: usize = fields.get(48 - 3)?.parse().ok()?;
        let end: usize = fields.get(49 - 3)?.parse().ok()?;
        (start > 0 && end > start).then_some((start, end))
    })
}

/// Writes `n` (0..=255 or a signal number) in decimal into `buf`; returns the length.
fn write_decimal(buf: &mut [u8], n: i32) -> usize {
    let mut digits = [0u8; 12];
    let mut v = n.unsigned_abs();
    let mut i = 0;
    loop {
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        i += 1;
        if v == 0 {
            break;
        }
    }
    let mut len = 0;
    if n < 0 {
        buf[0] = b'-';
        len = 1;
    }
    for d in digits[..i].iter().rev() {
        buf[len] = *d;
        len += 1;
    }
    len
}

/// How the command of a supervised task ended, from its exit file; `None` when the file is
/// missing or unreadable (the supervisor was killed before the command ended).
pub(crate) fn read_exit_file(path: &Path) -> Option<Ended> {
    let text = std::fs::read_to_string(path).ok()?;
    let (word, n) = text.trim().split_once(' ')?;
    let n: i32 = n.parse().ok()?;
    match word {
        "exited" => Some(Ended::Exited(n)),
        "signaled" => Some(Ended::Signaled(n)),
        _ => None,
    }
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
        let mut child = spawn_isolated(&mut cmd, Joiner::none(), None).expect("spawn true");
        let pid = child.id() as i32;
        // The child may already have exited; its pgid is readable until reaped.
        let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
            .map(|p| p.as_raw())
            .unwrap_or(pid);
        assert_eq!(pgid, pid);
        assert!(child.wait().expect("wait").success());
    }

    fn supervised(script: &str) -> (std::process::ExitStatus, Option<Ended>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let exit_file = dir.path().join("exit");
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script]);
        let mut child = spawn_isolated(&mut cmd, Joiner::none(), Some(&exit_file)).expect("spawn");
        let status = child.wait().expect("wait");
        (status, read_exit_file(&exit_file))
    }

    #[test]
    fn a_supervised_command_ends_as_it_would_alone_and_its_end_is_recorded() {
        use std::os::unix::process::ExitStatusExt;
        let (status, ended) = supervised("exit 3");
        assert_eq!(status.code(), Some(3));
        assert_eq!(ended, Some(Ended::Exited(3)));
        let (status, ended) = supervised("true");
        assert!(status.success());
        assert_eq!(ended, Some(Ended::Exited(0)));
        let (status, ended) = supervised("kill -USR1 $$");
        assert_eq!(status.signal(), Some(libc::SIGUSR1));
        assert_eq!(ended, Some(Ended::Signaled(libc::SIGUSR1)));
    }

    #[test]
    fn the_supervisor_ignores_the_sigterm_meant_for_its_command() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let exit_file = dir.path().join("exit");
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut child = spawn_isolated(&mut cmd, Joiner::none(), Some(&exit_file)).expect("spawn");
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        // The whole group, supervisor included, gets it, as a kill sends it.
        std::thread::sleep(std::time::Duration::from_millis(50));
        nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM).expect("killpg");
        let status = child.wait().expect("wait");
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert_eq!(
            read_exit_file(&exit_file),
            Some(Ended::Signaled(libc::SIGTERM))
        );
    }

    #[test]
    fn decimals_are_written_without_allocating() {
        let mut buf = [0u8; 12];
        for n in [0, 7, 42, 255, -1] {
            let len = write_decimal(&mut buf, n);
            assert_eq!(std::str::from_utf8(&buf[..len]).unwrap(), n.to_string());
        }
    }
}
