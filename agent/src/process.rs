//! Spawning a task's main process: its own session and process group, joined to its isolation
//! between clone and exec, so not even its first instruction runs outside it.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

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
    /// the right to change the others). Async-signal-safe: raw syscalls, no allocation; they
    /// switch the calling thread only, which is the whole process in a child before exec.
    pub(crate) fn switch(&self) -> io::Result<()> {
        // SAFETY: plain syscalls on memory we own. Raw: libc's wrappers switch every thread
        // of the process they believe they run in, and a child spawned sharing the agent's
        // memory would switch the agent's.
        let failed = unsafe {
            libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setgid, self.user.gid) != 0
                || libc::syscall(libc::SYS_setuid, self.user.uid) != 0
        };
        if failed {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// Forks the calling single-threaded process (a supervisor, an init); the child may do
/// anything before it execs. A fork that fails ends the process with 126, saying what it
/// could not fork.
pub(crate) fn fork_or_exit(what: &str) -> libc::pid_t {
    // SAFETY: fork(2); callers are single-threaded (no runtime was started in them).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        eprintln!("mesofs: cannot fork {what}: {}", io::Error::last_os_error());
        std::process::exit(126);
    }
    pid
}

/// A pidfd for `pid` (`pidfd_open(2)`): readable once the process has exited, whoever reaps
/// it.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(raw) })
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

/// A task's process before it exists: its program (a path exec takes as is), command line,
/// environment, working directory and standard streams, all made ready in memory the child
/// only reads (it shares the agent's memory until it execs, so it may not allocate).
#[derive(Debug)]
pub(crate) struct Exec {
    program: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    dir: CString,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

impl Exec {
    /// Ready to run `program` (found already, as exec would find it from `dir`) with `argv`
    /// (program name first) and exactly the environment `env` (a later setting of a name
    /// replaces an earlier one), in `dir`, with no input and the given outputs.
    pub(crate) fn new<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        program: &OsStr,
        argv: &[OsString],
        env: impl IntoIterator<Item = (K, V)>,
        dir: &Path,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> io::Result<Exec> {
        let c = |s: &OsStr| {
            CString::new(s.as_bytes()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{s:?} holds a NUL byte"),
                )
            })
        };
        let mut vars: BTreeMap<OsString, OsString> = BTreeMap::new();
        for (k, v) in env {
            vars.insert(k.as_ref().to_os_string(), v.as_ref().to_os_string());
        }
        let env = vars
            .iter()
            .map(|(k, v)| {
                let mut kv = k.clone();
                kv.push("=");
                kv.push(v);
                c(&kv)
            })
            .collect::<io::Result<_>>()?;
        // A stream opened as 0, 1 or 2 (the agent started with one closed) would be replaced
        // by another's dup2 in the child before its own: moved above them first.
        let above_stdio = |fd: OwnedFd| {
            if fd.as_raw_fd() <= 2 {
                // try_clone takes the lowest free descriptor from 3 up.
                fd.try_clone()
            } else {
                Ok(fd)
            }
        };
        let stdin = above_stdio(OwnedFd::from(std::fs::File::open("/dev/null")?))?;
        Ok(Exec {
            program: c(program)?,
            argv: argv.iter().map(|a| c(a)).collect::<io::Result<_>>()?,
            env,
            dir: c(dir.as_os_str())?,
            stdin,
            stdout: above_stdio(stdout)?,
            stderr: above_stdio(stderr)?,
        })
    }

    /// Its command line (program name first), environment (`NAME=value`, each name once) and
    /// working directory: for a process started by the spawner rather than exec'd here.
    pub(crate) fn words(&self) -> (&[CString], &[CString], &CStr) {
        (&self.argv, &self.env, &self.dir)
    }

    /// Its standard output and error.
    pub(crate) fn outputs(&self) -> [BorrowedFd<'_>; 2] {
        [self.stdout.as_fd(), self.stderr.as_fd()]
    }
}

/// Whether this process runs with transparent huge pages disabled (`PR_GET_THP_DISABLE`):
/// the setting a supervisor gives back to the command it runs.
pub(crate) fn huge_pages_disabled() -> bool {
    // SAFETY: a prctl that only reads this process's flag.
    unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1 }
}

/// Sets whether this process (and what it execs and forks) runs with transparent huge pages
/// disabled. Async-signal-safe: one system call. Kernels without the flag (before 3.15) keep
/// their default, which only costs memory.
pub(crate) fn disable_huge_pages(disabled: bool) {
    // SAFETY: a prctl that sets this process's flag.
    unsafe {
        libc::prctl(
            libc::PR_SET_THP_DISABLE,
            libc::c_ulong::from(disabled),
            0,
            0,
            0,
        )
    };
}

/// What the child of [`spawn_isolated`] reads, and where it leaves why it could not exec.
struct ChildArgs<'a> {
    exec: &'a Exec,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    joiner: &'a Joiner,
    user: Option<&'a Credentials>,
    fd3: Option<RawFd>,
    /// The errno of the step that failed (0: none did, and the child runs the program).
    error: AtomicI32,
}

/// Stack for the child until it execs: it calls a few system calls and nothing else.
const CHILD_STACK: usize = 64 * 1024;

/// Starts `exec` in a new session (so its pid is its process group id), joined to the
/// isolation behind `joiner`, as `user` (if given), with `fd3` (if given) as its descriptor
/// 3; returns its pid once it runs the program, or why it could not.
///
/// The child is made with `clone(CLONE_VM | CLONE_VFORK)`: it borrows the agent's memory
/// until it execs, while the calling thread waits, rather than copying the page tables of
/// a large multi-threaded process, whose every page then faults on its next write (with
/// fork, the copy and those faults, each with a TLB shootdown, were a third of the launch
/// benchmark's process CPU).
pub(crate) fn spawn_isolated(
    exec: &Exec,
    joiner: &Joiner,
    user: Option<&Credentials>,
    fd3: Option<RawFd>,
) -> io::Result<i32> {
    let nul_ended = |v: &[CString]| {
        v.iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect::<Vec<_>>()
    };
    let args = ChildArgs {
        exec,
        argv: nul_ended(&exec.argv),
        envp: nul_ended(&exec.env),
        joiner,
        user,
        fd3,
        error: AtomicI32::new(0),
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: the stack grows down from its end, which is aligned to 16 as the ABI asks; it
    // outlives the child's use of it, since CLONE_VFORK returns only once the child has
    // exec'd or exited. Every signal is blocked around the clone, so that no handler of the
    // agent's runs on the child's stack before the child resets them; the child inherits the
    // blocked mask and unblocks once its handlers are the defaults.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(CHILD_STACK);
        let top = top.sub(top as usize % 16);
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut before: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut before);
        let pid = libc::clone(
            child_main,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::addr_of!(args) as *mut libc::c_void,
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
        if pid < 0 {
            return Err(clone_error);
        }
        pid
    };
    drop(stack);
    match args.error.load(Ordering::SeqCst) {
        0 => Ok(pid),
        errno => {
            // It exited: reaped here, where nothing else waits for it.
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            Err(io::Error::from_raw_os_error(errno))
        }
    }
}

/// The child of [`spawn_isolated`], on its own stack in the agent's memory: only system
/// calls that allocate nothing and take no lock, then exec. Credentials are switched with
/// raw system calls: libc's wrappers would have the agent's threads switch too.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the ChildArgs the parent keeps alive until this child execs or exits.
    let a = unsafe { &*(arg as *const ChildArgs) };
    let fail = || -> libc::c_int {
        a.error.store(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
            Ordering::SeqCst,
        );
        // SAFETY: leaving without running anything of the agent's.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: system calls on descriptors and memory the parent keeps for us.
    unsafe {
        if libc::setsid() < 0 {
            return fail();
        }
        reset_signals();
        let e = a.exec;
        let streams = [
            (e.stdin.as_raw_fd(), 0),
            (e.stdout.as_raw_fd(), 1),
            (e.stderr.as_raw_fd(), 2),
        ];
        for (from, to) in streams.into_iter().chain(a.fd3.map(|fd| (fd, 3))) {
            // dup2 onto itself would keep close-on-exec: clear it instead.
            let ok = if from == to {
                libc::fcntl(to, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(from, to) == to
            };
            if !ok {
                return fail();
            }
        }
        if libc::chdir(e.dir.as_ptr()) != 0 {
            return fail();
        }
        if a.joiner.join_self().is_err() {
            return fail();
        }
        if let Some(c) = a.user {
            if c.switch().is_err() {
                return fail();
            }
        }
        libc::execve(e.program.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
    }
    fail()
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
    /// How a process ended, from the status `waitpid` gave for it.
    pub(crate) fn from_wait_status(status: i32) -> Ended {
        if libc::WIFSIGNALED(status) {
            Ended::Signaled(libc::WTERMSIG(status))
        } else {
            Ended::Exited(libc::WEXITSTATUS(status))
        }
    }

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

    fn exec(argv: &[&str], env: &[(&str, &str)], out: &Path) -> Exec {
        let file = || OwnedFd::from(std::fs::File::create(out).expect("output file"));
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        Exec::new(
            &argv[0].clone(),
            &argv,
            env.iter().copied(),
            Path::new("/"),
            file(),
            file(),
        )
        .expect("exec")
    }

    fn wait(pid: i32) -> i32 {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    #[test]
    fn a_spawned_child_leads_its_own_session() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let e = exec(&["/bin/sh", "-c", "sleep 5"], &[], &out);
        let pid = spawn_isolated(&e, &Joiner::none(), None, None).expect("spawn");
        let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
            .expect("pgid")
            .as_raw();
        let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid)))
            .expect("sid")
            .as_raw();
        assert_eq!((pgid, sid), (pid, pid));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL)
            .expect("kill");
        wait(pid);
    }

    #[test]
    fn a_spawned_child_has_exactly_its_environment_its_directory_and_its_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let e = exec(
            &["/bin/sh", "-c", "echo \"$A $B $HOME\"; pwd; env | wc -l"],
            &[("A", "1"), ("B", "2"), ("A", "3")],
            &out,
        );
        let pid = spawn_isolated(&e, &Joiner::none(), None, None).expect("spawn");
        assert_eq!(wait(pid), 0);
        let printed = std::fs::read_to_string(&out).expect("output");
        let lines: Vec<&str> = printed.lines().collect();
        // The later A wins; nothing of this process's environment (HOME) leaks in; sh adds
        // PWD, SHLVL and _ of its own to what env prints.
        assert_eq!(lines[0], "3 2 ");
        assert_eq!(lines[1], "/");
        let count: usize = lines[2].trim().parse().expect("a count");
        assert!(count <= 5, "{printed}");
    }

    #[test]
    fn a_program_that_cannot_run_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let e = exec(&["/nonexistent/program"], &[], &out);
        let err = spawn_isolated(&e, &Joiner::none(), None, None).expect_err("no such program");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }
}
