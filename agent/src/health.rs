//! Health checks, run by a task's supervisor while it waits for the task, so that they go on
//! while the agent is down. Each check's result goes into the task's health file next to its
//! exit file: whether the task is healthy, the last check's output, and its latest health
//! changes, numbered. The agent reads that file and reports each change once (a restarted
//! agent reports again those it may not have; the master keeps a change only if its number is
//! new). After too many failures in a row the supervisor kills the task itself, with its kill
//! policy, and writes why in the file before it does, so that the report of the task's end
//! names the health check.
//!
//! Everything here runs in the supervisor, a single-threaded process: checks are forked,
//! connected and read one at a time, each bounded by its timeout, and each wait also watches
//! the task, whose end stops the check at once.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mesofs_kernel::health::{HealthCheck, Probe, TaskHealth, MAX_OUTPUT};
use serde::{Deserialize, Serialize};

use crate::process::{fork_or_exit, pidfd_open, reset_signals, Credentials, Ended};

/// The most health changes a health file keeps: those an agent that was down longer than this
/// many changes missed are not reported.
pub const CHANGES_KEPT: usize = 16;
/// How long a blocking socket call waits before the check looks at the task again.
const SLICE: Duration = Duration::from_millis(200);

/// What a task's health file holds: written whole by its supervisor after every check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRecord {
    /// Whether the last counted check passed; none before the first.
    pub healthy: Option<bool>,
    /// Counted failures in a row.
    pub failures: u32,
    /// Whether a check has passed (which ends the grace period early).
    pub passed_once: bool,
    /// Checks run.
    pub checks: u64,
    /// The number of the latest health change (0 before the first).
    pub seq: u64,
    /// The latest check.
    pub last: Option<CheckResult>,
    /// The latest health changes, oldest first (at most [`CHANGES_KEPT`]).
    pub changes: Vec<TaskHealth>,
    /// Why the supervisor killed the task, once it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killed: Option<String>,
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// Whether it passed.
    pub passed: bool,
    /// Whether it counted (a failure in the grace period does not).
    pub counted: bool,
    /// What it said: a command's output, an HTTP status line, or why it failed.
    pub output: String,
    /// When it started (unix ms).
    pub time_ms: u64,
    /// How long it took (ms).
    pub took_ms: u64,
}

impl HealthRecord {
    /// The record in `path`; `None` when there is none yet or it cannot be read.
    pub fn read(path: &Path) -> Option<HealthRecord> {
        serde_json::from_slice(&fs::read(path).ok()?).ok()
    }

    /// Replaces the record in `path` at once (readers see the old or the new one whole).
    fn write(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("health-tmp");
        fs::write(&tmp, serde_json::to_vec(self).map_err(io::Error::other)?)?;
        fs::rename(&tmp, path)
    }

    /// Takes in one check's result; `in_grace`: the task is still in its grace period.
    /// Returns whether the task must now be killed.
    fn record(&mut self, mut result: CheckResult, in_grace: bool, check: &HealthCheck) -> bool {
        self.checks += 1;
        self.passed_once |= result.passed;
        // A failure counts unless the task is in its grace period and has never passed.
        result.counted = result.passed || !in_grace || self.passed_once;
        let counted = result.counted;
        let passed = result.passed;
        if counted {
            self.failures = if passed { 0 } else { self.failures + 1 };
            if self.healthy != Some(passed) {
                self.healthy = Some(passed);
                self.seq += 1;
                self.changes.push(TaskHealth {
                    healthy: passed,
                    seq: self.seq,
                    output: result.output.clone(),
                    time_ms: result.time_ms,
                });
                if self.changes.len() > CHANGES_KEPT {
                    self.changes.remove(0);
                }
            }
        }
        self.last = Some(result);
        counted && !passed && self.failures >= check.failures
    }
}

/// The task as its supervisor knows it, for running checks against it and killing it.
pub(crate) struct Target<'a> {
    /// The supervisor's child: the command, or the task's init.
    pub child: libc::pid_t,
    /// The task's cgroup directories.
    pub joins: &'a [PathBuf],
    /// Who the task runs as.
    pub credentials: Option<&'a Credentials>,
    /// Whether the child is pid 1 of a pid namespace of the task's own.
    pub pid_namespace: bool,
    /// Whether the child has a mount namespace of the task's own.
    pub mount_namespace: bool,
    /// The task's kill grace period.
    pub kill_grace: Duration,
}

/// Runs `check` against the task until its child ends (returns then, without reaping it),
/// recording each result in `file`; kills the task once the check has failed too often.
pub(crate) fn supervise(target: &Target, check: &HealthCheck, file: &Path) {
    let pidfd = match pidfd_open(target.child) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("mesofs: cannot run the task's health checks (no pidfd: {e})");
            return;
        }
    };
    let start = Instant::now();
    let grace_ends = start + Duration::from_millis(check.grace_ms);
    let mut record = HealthRecord::default();
    let mut next = start + Duration::from_millis(check.delay_ms);
    loop {
        if wait_end(&pidfd, Some(next)) {
            return;
        }
        let began = Instant::now();
        let time_ms = crate::containerizer::unix_ms();
        let deadline = began + Duration::from_millis(check.timeout_ms);
        let outcome = match &check.probe {
            // Opened for each check: the init makes the mount namespace after it starts.
            Probe::Cmd(cmd) => run_command(cmd, target, &Namespaces::of(target), deadline, &pidfd),
            Probe::Http { port_index, path } => {
                port(*port_index).and_then(|p| http_get(p, path, deadline, &pidfd))
            }
            Probe::Tcp { port_index } => port(*port_index).and_then(|p| {
                connect(p, deadline, &pidfd)
                    .map(|_| Outcome::Done(true, format!("connected to 127.0.0.1:{p}")))
            }),
        };
        let (passed, output) = match outcome {
            Ok(Outcome::Done(passed, output)) => (passed, output),
            Ok(Outcome::TaskEnded) => return,
            Err(e) => (false, e),
        };
        let result = CheckResult {
            passed,
            counted: true,
            output: mesofs_kernel::limits::cut(&output, MAX_OUTPUT).to_string(),
            time_ms,
            took_ms: began.elapsed().as_millis() as u64,
        };
        let kill = record.record(result, began < grace_ends, check);
        if kill {
            record.killed = Some(format!(
                "killed after {} consecutive failed health checks (the last: {})",
                record.failures,
                record.last.as_ref().map_or("", |l| l.output.trim())
            ));
        }
        if let Err(e) = record.write(file) {
            eprintln!(
                "mesofs: cannot record the task's health in {}: {e}",
                file.display()
            );
        }
        if kill {
            kill_task(target, &pidfd);
            return;
        }
        next = began + Duration::from_millis(check.interval_ms);
    }
}

/// How a check went, unless it failed to run (then, why).
enum Outcome {
    /// It ran: whether it passed, and what it said.
    Done(bool, String),
    /// The task ended while it ran.
    TaskEnded,
}

/// The task's port `index` (`$PORTn` of the supervisor's environment, which is the task's).
fn port(index: u32) -> Result<u16, String> {
    std::env::var(format!("PORT{index}"))
        .ok()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("the task has no port {index} ($PORT{index} is not set)"))
}

/// Waits until the process behind `pidfd` has ended (true) or `deadline` passes (false; none:
/// look once).
fn wait_end(pidfd: &OwnedFd, deadline: Option<Instant>) -> bool {
    loop {
        let left = deadline.map_or(0, |d| {
            d.saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32
        });
        let mut fds = [libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: poll(2) on one descriptor we own.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, left) };
        if n > 0 {
            return true;
        }
        let interrupted = n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted;
        if !interrupted && deadline.is_none_or(|d| Instant::now() >= d) {
            return false;
        }
    }
}

/// Sends `sig` to every process of the task: those in its cgroups, or without cgroups its
/// process group (which the supervisor leads, ignoring the signals a kill sends first) and its
/// child.
fn signal_task(target: &Target, sig: libc::c_int) {
    if let Some(dir) = target.joins.first() {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2).
            unsafe { libc::kill(pid, sig) };
        }
        return;
    }
    // SAFETY: kill(2) and killpg(2); SIGKILL only to the child, not to our own group.
    unsafe {
        if sig != libc::SIGKILL {
            libc::killpg(libc::getpgrp(), sig);
        }
        libc::kill(target.child, sig);
    }
}

/// Kills the task with its kill policy: SIGTERM to every process, SIGKILL to every one left
/// once the grace period has passed.
fn kill_task(target: &Target, pidfd: &OwnedFd) {
    signal_task(target, libc::SIGTERM);
    if !wait_end(pidfd, Some(Instant::now() + target.kill_grace)) {
        signal_task(target, libc::SIGKILL);
    }
}

/// The task's namespaces for a command check to join.
struct Namespaces {
    mount: Option<OwnedFd>,
    pid: Option<OwnedFd>,
    /// Why they could not be opened, if so.
    problem: Option<String>,
}

impl Namespaces {
    fn of(target: &Target) -> Namespaces {
        let open = |kind: &str| {
            fs::File::open(format!("/proc/{}/ns/{kind}", target.child))
                .map(OwnedFd::from)
                .map_err(|e| format!("cannot open the task's {kind} namespace: {e}"))
        };
        let mut ns = Namespaces {
            mount: None,
            pid: None,
            problem: None,
        };
        if target.mount_namespace {
            match open("mnt") {
                Ok(fd) if same_file(&fd, "/proc/self/ns/mnt") => {
                    ns.problem = Some(
                        "the task is still starting (its mount namespace is not made yet)".into(),
                    )
                }
                Ok(fd) => ns.mount = Some(fd),
                Err(e) => ns.problem = Some(e),
            }
        }
        if target.pid_namespace {
            match open("pid") {
                Ok(fd) => ns.pid = Some(fd),
                Err(e) => ns.problem = Some(e),
            }
        }
        ns
    }
}

/// Whether `fd` is the file at `path`.
fn same_file(fd: &OwnedFd, path: &str) -> bool {
    match (nix::sys::stat::fstat(fd), nix::sys::stat::stat(path)) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
}

/// Runs a command check: `/bin/sh -c cmd` in the task's cgroups and namespaces, as its user,
/// in its sandbox (the supervisor's working directory), with its environment (the
/// supervisor's), its output captured. Passes when it exits 0.
fn run_command(
    cmd: &str,
    target: &Target,
    ns: &Namespaces,
    deadline: Instant,
    task: &OwnedFd,
) -> Result<Outcome, String> {
    if let Some(problem) = &ns.problem {
        return Err(problem.clone());
    }
    let dir = std::env::current_dir().map_err(|e| format!("no sandbox: {e}"))?;
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("cannot make a pipe: {e}"))?;
    // Not fork_or_exit: a fork that fails fails the check, never the supervisor.
    // SAFETY: fork(2) in the single-threaded supervisor.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!(
            "cannot fork the check: {}",
            io::Error::last_os_error()
        ));
    }
    if pid == 0 {
        drop(out_r);
        be_command_check(cmd, target, ns, &dir, out_w.as_raw_fd());
    }
    drop(out_w);
    let check = pidfd_open(pid).map_err(|e| format!("cannot watch the check: {e}"));
    let Ok(check) = check else {
        // SAFETY: killing and reaping our own child.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err("cannot watch the check's process".into());
    };
    // SAFETY: making our end of the pipe non-blocking: a background process of the check may
    // keep the other end open after the check ends.
    unsafe { libc::fcntl(out_r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut output = Vec::new();
    let mut open = true;
    let mut done = false;
    let mut timed_out = false;
    let mut task_ended = false;
    while !done {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        let mut fds = [
            pollfd(task.as_raw_fd()),
            pollfd(check.as_raw_fd()),
            pollfd(if open { out_r.as_raw_fd() } else { -1 }),
        ];
        // SAFETY: poll(2) on descriptors we own (a negative one is skipped).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, left.as_millis().min(60_000) as i32) };
        if n < 0 {
            continue;
        }
        if fds[0].revents != 0 {
            task_ended = true;
            break;
        }
        if fds[2].revents != 0 {
            open = drain(out_r.as_raw_fd(), &mut output);
        }
        if fds[1].revents != 0 {
            // It ended: what it wrote is all in the pipe by now.
            drain(out_r.as_raw_fd(), &mut output);
            done = true;
        }
    }
    if !done {
        // SAFETY: killing the check's process group (it made one of its own).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: reaping our own child, dead or killed.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if task_ended {
        return Ok(Outcome::TaskEnded);
    }
    let mut text = String::from_utf8_lossy(&output).into_owned();
    if timed_out {
        return Ok(Outcome::Done(
            false,
            format!("{text}(timed out: still running after its timeout)"),
        ));
    }
    let ended = Ended::from_wait_status(status);
    let passed = ended == Ended::Exited(0);
    if !passed {
        text.push_str(&format!("(the check {})", ended.describe()));
    }
    Ok(Outcome::Done(passed, text))
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Reads what is in the pipe, keeping the first [`MAX_OUTPUT`] bytes; false at its end.
fn drain(fd: RawFd, into: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reading into a buffer we own.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            return false;
        }
        if n < 0 {
            return io::Error::last_os_error().kind() != io::ErrorKind::BrokenPipe;
        }
        let n = n as usize;
        let room = MAX_OUTPUT.saturating_sub(into.len());
        into.extend_from_slice(&buf[..n.min(room)]);
    }
}

/// In the forked check: its own process group (so a timeout kills all of it), output to the
/// pipe, the task's cgroups, mount and pid namespaces, user, then the shell.
fn be_command_check(cmd: &str, target: &Target, ns: &Namespaces, dir: &Path, out: RawFd) -> ! {
    let fail = |what: &str, e: io::Error| -> ! {
        eprintln!("mesofs: health check: cannot {what}: {e}");
        // SAFETY: leaving the forked child without running the parent's exit handlers.
        unsafe { libc::_exit(126) }
    };
    // SAFETY: setpgid, open and dup2 on descriptors we own.
    unsafe {
        libc::setpgid(0, 0);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        libc::dup2(null, 0);
        libc::dup2(out, 1);
        libc::dup2(out, 2);
    }
    for dir in target.joins {
        if let Err(e) = fs::write(dir.join("cgroup.procs"), "0") {
            fail("join the task's cgroups", e);
        }
    }
    if let Some(mnt) = &ns.mount {
        if let Err(e) = nix::sched::setns(mnt, nix::sched::CloneFlags::CLONE_NEWNS) {
            fail("join the task's mount namespace", e.into());
        }
        // Joining a mount namespace moves to its root.
        if let Err(e) = std::env::set_current_dir(dir) {
            fail("enter the sandbox", e);
        }
    }
    if let Some(pid) = &ns.pid {
        if let Err(e) = nix::sched::setns(pid, nix::sched::CloneFlags::CLONE_NEWPID) {
            fail("join the task's pid namespace", e.into());
        }
        // Only children enter the pid namespace: the shell is one, and this waits for it.
        let child = fork_or_exit("a health check");
        if child != 0 {
            let mut status = 0;
            // SAFETY: waiting for our own child, then leaving as it did.
            unsafe {
                while libc::waitpid(child, &mut status, 0) < 0
                    && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
                {
                }
                let code = match Ended::from_wait_status(status) {
                    Ended::Exited(c) => c,
                    Ended::Signaled(s) => 128 + s,
                    Ended::Unknown => 127,
                };
                libc::_exit(code)
            }
        }
    }
    reset_signals();
    if let Some(c) = target.credentials {
        if let Err(e) = c.switch() {
            fail("run as the task's user", e);
        }
    }
    let err = std::process::Command::new("/bin/sh")
        .arg0(OsString::from("sh"))
        .args(["-c", cmd])
        .exec();
    fail("run /bin/sh", err)
}

/// Connects to the task's port at 127.0.0.1 before `deadline`, unless the task ends first.
fn connect(port: u16, deadline: Instant, task: &OwnedFd) -> Result<TcpStream, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("timed out connecting to {addr}"));
        }
        match TcpStream::connect_timeout(&addr, left.min(SLICE)) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                if wait_end(task, None) {
                    return Err("the task ended".into());
                }
            }
            Err(e) => return Err(format!("cannot connect to {addr}: {e}")),
        }
    }
}

/// GETs `path` from the task's port: passes on a 2xx or 3xx status. Says the status line.
fn http_get(port: u16, path: &str, deadline: Instant, task: &OwnedFd) -> Result<Outcome, String> {
    let mut stream = connect(port, deadline, task)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: mesofs-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    let left = deadline.saturating_duration_since(Instant::now());
    let _ = stream.set_write_timeout(Some(left.max(Duration::from_millis(1))));
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send the request to 127.0.0.1:{port}: {e}"))?;
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    // The status line is all a check needs.
    while !response.contains(&b'\n') && response.len() < 4096 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Outcome::Done(
                false,
                format!("timed out waiting for a response from 127.0.0.1:{port}{path}"),
            ));
        }
        let _ = stream.set_read_timeout(Some(left.min(SLICE)));
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if wait_end(task, None) {
                    return Ok(Outcome::TaskEnded);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read the response: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&response);
    let line = text.lines().next().unwrap_or("").trim().to_string();
    let status = line
        .strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok());
    Ok(match status {
        Some(code) => Outcome::Done((200..400).contains(&code), line),
        None if line.is_empty() => Outcome::Done(false, "no HTTP response".into()),
        None => Outcome::Done(false, format!("not an HTTP response: {line}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(passed: bool, output: &str) -> CheckResult {
        CheckResult {
            passed,
            counted: true,
            output: output.into(),
            time_ms: 1,
            took_ms: 0,
        }
    }

    fn check(failures: u32) -> HealthCheck {
        let mut c = HealthCheck::new(Probe::Tcp { port_index: 0 });
        c.failures = failures;
        c
    }

    #[test]
    fn failures_in_the_grace_period_count_only_until_a_check_passes() {
        let mut r = HealthRecord::default();
        assert!(!r.record(result(false, "no"), true, &check(1)));
        assert_eq!((r.healthy, r.failures, r.seq), (None, 0, 0));
        assert!(!r.last.as_ref().unwrap().counted);
        assert!(!r.record(result(true, "yes"), true, &check(1)));
        assert_eq!((r.healthy, r.seq), (Some(true), 1));
        // Passed once: the grace period is over.
        assert!(r.record(result(false, "no"), true, &check(1)));
        assert_eq!((r.healthy, r.failures, r.seq), (Some(false), 1, 2));
    }

    #[test]
    fn the_task_is_killed_after_the_configured_failures_in_a_row() {
        let mut r = HealthRecord::default();
        let c = check(3);
        assert!(!r.record(result(false, "a"), false, &c));
        assert!(!r.record(result(false, "b"), false, &c));
        assert!(!r.record(result(true, "c"), false, &c));
        assert!(!r.record(result(false, "d"), false, &c));
        assert!(!r.record(result(false, "e"), false, &c));
        assert!(r.record(result(false, "f"), false, &c));
        // Changes only when health changes: false, true, false.
        let changes: Vec<(bool, u64, &str)> = r
            .changes
            .iter()
            .map(|c| (c.healthy, c.seq, c.output.as_str()))
            .collect();
        assert_eq!(
            changes,
            vec![(false, 1, "a"), (true, 2, "c"), (false, 3, "d")]
        );
        assert_eq!(r.checks, 6);
    }

    #[test]
    fn a_record_keeps_its_latest_changes_only() {
        let mut r = HealthRecord::default();
        for i in 0..(CHANGES_KEPT as u64 + 5) {
            r.record(result(i % 2 == 0, "x"), false, &check(1000));
        }
        assert_eq!(r.changes.len(), CHANGES_KEPT);
        assert_eq!(r.changes.last().unwrap().seq, CHANGES_KEPT as u64 + 5);
        assert_eq!(r.changes[0].seq, 6);
    }

    /// A server on a loopback port that answers each connection with `reply` (none: reads
    /// and never answers).
    fn server(reply: Option<&'static str>) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut c in listener.incoming().flatten() {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                match reply {
                    Some(r) => {
                        let _ = c.write_all(r.as_bytes());
                    }
                    None => std::thread::sleep(Duration::from_secs(30)),
                }
            }
        });
        port
    }

    fn get(port: u16, timeout: Duration) -> (bool, String) {
        // This process stands for the task: it runs throughout.
        let task = pidfd_open(std::process::id() as i32).unwrap();
        match http_get(port, "/healthz", Instant::now() + timeout, &task) {
            Ok(Outcome::Done(passed, output)) => (passed, output),
            Ok(Outcome::TaskEnded) => panic!("the task did not end"),
            Err(e) => (false, e),
        }
    }

    #[test]
    fn an_http_check_passes_on_2xx_and_3xx_and_fails_otherwise_saying_why() {
        let ok = |reply| get(server(Some(reply)), Duration::from_secs(5));
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            (true, "HTTP/1.1 200 OK".into())
        );
        assert_eq!(
            ok("HTTP/1.0 302 Found\r\n\r\n"),
            (true, "HTTP/1.0 302 Found".into())
        );
        assert_eq!(
            ok("HTTP/1.1 503 Service Unavailable\r\n\r\n"),
            (false, "HTTP/1.1 503 Service Unavailable".into())
        );
        assert_eq!(
            ok("SSH-2.0-OpenSSH\r\n"),
            (false, "not an HTTP response: SSH-2.0-OpenSSH".into())
        );
        assert_eq!(ok(""), (false, "no HTTP response".into()));
        let (passed, why) = get(server(None), Duration::from_millis(500));
        assert!(
            !passed && why.starts_with("timed out waiting for a response"),
            "{why}"
        );
        // Nothing listens on a port just freed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (passed, why) = get(port, Duration::from_secs(5));
        assert!(
            !passed && why.starts_with("cannot connect to 127.0.0.1:"),
            "{why}"
        );
    }

    #[test]
    fn a_check_stops_when_the_task_ends() {
        let port = server(None);
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        let task = pidfd_open(child.id() as i32).unwrap();
        // A server that never answers: the check ends with the task, not at its timeout.
        let outcome = http_get(port, "/", Instant::now() + Duration::from_secs(600), &task);
        assert!(matches!(outcome, Ok(Outcome::TaskEnded)));
        child.wait().unwrap();
        assert!(wait_end(&task, None));
    }

    #[test]
    fn a_record_survives_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.health");
        assert_eq!(HealthRecord::read(&f), None);
        let mut r = HealthRecord::default();
        r.record(result(true, "HTTP/1.1 200 OK"), false, &check(3));
        r.killed = Some("why".into());
        r.write(&f).unwrap();
        assert_eq!(HealthRecord::read(&f), Some(r));
    }
}
