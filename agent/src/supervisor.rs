//! The supervisor: each task's main process when the agent checkpoints. It is a fork of the
//! agent's [spawner](crate::spawner) (a small process of the `mesofs` binary, `mesofs
//! supervise --spawner`), so it shares no memory with the agent; `mesofs supervise PLAN` runs
//! one by itself too. It forks the command, which joins the task's cgroups and execs; the
//! supervisor stays outside them (not throttled by the task's cpu quota, no candidate for its
//! OOM kill, not counted in its pids), ignores the signals a kill sends first (SIGTERM is for
//! the command), waits, records how the command ended in its exit file, and ends the same
//! way. If the agent dies, the supervisor lives on, and the restarted agent reads the exit
//! file. With namespaces, what it forks is the task's [init](crate::init), pid 1 of the task's
//! pid namespace, which forks the command in turn and tells the supervisor how it ended.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mesofs_kernel::health::HealthCheck;

use crate::health::Target;
use crate::process::{
    disable_huge_pages, fork_or_exit, reset_signals, Credentials, Ended, TaskUser,
};

/// The subcommand of the `mesofs` binary that runs a supervisor.
pub const SUBCOMMAND: &str = "supervise";
/// The descriptor of `--started-fd`.
pub(crate) const STARTED_FD: i32 = 3;

/// What a supervisor does: where to record the end, which cgroups the command joins, and the
/// command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Where to write `exited N` or `signaled N`.
    pub exit_file: PathBuf,
    /// Cgroup directories the command joins (writing to their `cgroup.procs`) before exec.
    pub joins: Vec<PathBuf>,
    /// Who the command runs as (switched to after joining); `None`: as the supervisor.
    pub user: Option<TaskUser>,
    /// Whether descriptor 3 is a pipe to the agent, to be held by the command until its exec
    /// closes it: how the agent learns that the command runs.
    pub started_fd: bool,
    /// Whether the command runs with transparent huge pages disabled: the agent's own
    /// setting, given back to it (supervisors run without them, as their spawner does).
    pub huge_pages_disabled: bool,
    /// Whether the task gets a pid namespace of its own, under an init of ours.
    pub pid_namespace: bool,
    /// Whether the task gets a mount namespace of its own (its sandbox's `tmp` as `/tmp`;
    /// with a pid namespace, its own `/proc`).
    pub mount_namespace: bool,
    /// The task's health check and where to record its results, if it has one.
    pub health: Option<HealthPlan>,
    /// Time between SIGTERM and SIGKILL when the supervisor kills the task (for its health).
    pub kill_grace_ms: u64,
    /// The command; its first element is a path to the program.
    pub argv: Vec<OsString>,
}

/// A task's health check as its supervisor runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthPlan {
    /// The check.
    pub check: HealthCheck,
    /// Where each result is recorded (see the health module).
    pub file: PathBuf,
}

impl Plan {
    /// The arguments that follow the program name: `supervise --exit-file F [--join DIR]...
    /// [--user UID:GID] [--started-fd] [--huge-pages-disabled] [--pid-namespace]
    /// [--mount-namespace] [--health JSON --health-file F] --kill-grace-ms N -- ARGV...`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![SUBCOMMAND.into(), "--exit-file".into()];
        args.push(self.exit_file.clone().into());
        for dir in &self.joins {
            args.push("--join".into());
            args.push(dir.clone().into());
        }
        if let Some(u) = self.user {
            args.push("--user".into());
            args.push(format!("{}:{}", u.uid, u.gid).into());
        }
        if self.started_fd {
            args.push("--started-fd".into());
        }
        if self.huge_pages_disabled {
            args.push("--huge-pages-disabled".into());
        }
        if self.pid_namespace {
            args.push("--pid-namespace".into());
        }
        if self.mount_namespace {
            args.push("--mount-namespace".into());
        }
        if let Some(h) = &self.health {
            args.push("--health".into());
            args.push(serde_json::to_string(&h.check).expect("plain data").into());
            args.push("--health-file".into());
            args.push(h.file.clone().into());
        }
        args.push("--kill-grace-ms".into());
        args.push(self.kill_grace_ms.to_string().into());
        args.push("--".into());
        args.extend(self.argv.iter().cloned());
        args
    }

    /// Parses what [`Plan::to_args`] wrote, after the subcommand.
    pub fn parse(mut args: impl Iterator<Item = OsString>) -> Result<Plan, String> {
        let mut exit_file = None;
        let mut joins = Vec::new();
        let mut user = None;
        let mut started_fd = false;
        let mut huge_pages_disabled = false;
        let mut pid_namespace = false;
        let mut mount_namespace = false;
        let mut health_check = None;
        let mut health_file = None;
        let mut kill_grace_ms = 0;
        loop {
            let arg = args.next().ok_or("missing `--` before the command")?;
            match arg.to_str() {
                Some("--exit-file") => {
                    exit_file = Some(PathBuf::from(
                        args.next().ok_or("--exit-file needs a path")?,
                    ))
                }
                Some("--join") => joins.push(PathBuf::from(
                    args.next().ok_or("--join needs a cgroup directory")?,
                )),
                Some("--user") => {
                    let bad = || "--user needs UID:GID";
                    let text = args.next().ok_or_else(bad)?;
                    let (uid, gid) = text
                        .to_str()
                        .and_then(|t| t.split_once(':'))
                        .ok_or_else(bad)?;
                    user = Some(TaskUser {
                        uid: uid.parse().map_err(|_| bad())?,
                        gid: gid.parse().map_err(|_| bad())?,
                    });
                }
                Some("--started-fd") => started_fd = true,
                Some("--huge-pages-disabled") => huge_pages_disabled = true,
                Some("--pid-namespace") => pid_namespace = true,
                Some("--mount-namespace") => mount_namespace = true,
                Some("--health") => {
                    let text = args.next().ok_or("--health needs a check")?;
                    let check = text
                        .to_str()
                        .and_then(|t| serde_json::from_str::<HealthCheck>(t).ok())
                        .ok_or("--health needs a health check in JSON")?;
                    health_check = Some(check);
                }
                Some("--health-file") => {
                    health_file = Some(PathBuf::from(
                        args.next().ok_or("--health-file needs a path")?,
                    ))
                }
                Some("--kill-grace-ms") => {
                    kill_grace_ms = args
                        .next()
                        .and_then(|t| t.to_str()?.parse().ok())
                        .ok_or("--kill-grace-ms needs a number of milliseconds")?
                }
                Some("--") => break,
                _ => return Err(format!("unexpected argument {arg:?}")),
            }
        }
        let argv: Vec<OsString> = args.collect();
        if argv.is_empty() {
            return Err("no command after `--`".into());
        }
        let health = match (health_check, health_file) {
            (Some(check), Some(file)) => Some(HealthPlan { check, file }),
            (None, None) => None,
            _ => return Err("--health and --health-file go together".into()),
        };
        Ok(Plan {
            exit_file: exit_file.ok_or("missing --exit-file")?,
            joins,
            user,
            started_fd,
            huge_pages_disabled,
            pid_namespace,
            mount_namespace,
            health,
            kill_grace_ms,
            argv,
        })
    }
}

/// Runs as `mesofs supervise ...` (the arguments after the subcommand); never returns.
pub fn main(args: impl Iterator<Item = OsString>) -> ! {
    let mut args = args.peekable();
    if args.peek().map(OsString::as_os_str) == Some(OsStr::new(crate::spawner::FLAG)) {
        crate::spawner::serve();
    }
    match Plan::parse(args) {
        Ok(plan) => run(&plan),
        Err(e) => {
            eprintln!("mesofs supervise: {e}; this subcommand is the agent's, not for people");
            std::process::exit(2)
        }
    }
}

/// Forks and waits for the command (or the task's init), records how it ended, and ends the
/// same way.
pub(crate) fn run(plan: &Plan) -> ! {
    let credentials = plan.user.map(|u| u.credentials());
    if plan.started_fd {
        // SAFETY: marking our descriptor 3 close-on-exec: the command's exec closes it.
        unsafe { libc::fcntl(STARTED_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let with_init = plan.pid_namespace || plan.mount_namespace;
    if plan.pid_namespace {
        // Our next child is pid 1 of a new pid namespace.
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID) {
            eprintln!("mesofs: cannot give the task a pid namespace: {e}");
            std::process::exit(126);
        }
    }
    // How the init says the command ended: a pid namespace's init cannot die of a signal it
    // raises itself, so its own end cannot say it.
    let report = if with_init {
        match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("mesofs: cannot make the task's report pipe: {e}");
                std::process::exit(126);
            }
        }
    } else {
        None
    };
    let pid = fork_or_exit("the task");
    if pid == 0 {
        match &report {
            Some((_, w)) => be_init(plan, credentials.as_ref(), w.as_raw_fd()),
            None => exec_command(plan, credentials.as_ref()),
        }
    }
    if plan.started_fd {
        // SAFETY: closing our copy, so that the agent sees the end of the pipe when the
        // command's copy goes.
        unsafe { libc::close(STARTED_FD) };
    }
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: setting a signal to be ignored.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let report = report.map(|(r, w)| {
        drop(w);
        r
    });
    if let Some(h) = &plan.health {
        let target = Target {
            child: pid,
            joins: &plan.joins,
            credentials: credentials.as_ref(),
            pid_namespace: plan.pid_namespace,
            mount_namespace: plan.mount_namespace,
            kill_grace: Duration::from_millis(plan.kill_grace_ms),
        };
        crate::health::supervise(&target, &h.check, &h.file);
    }
    let ended = wait_for(pid);
    let ended = match report {
        Some(r) => {
            let mut message = [0u8; 8];
            let n = nix::unistd::read(&r, &mut message).unwrap_or(0);
            // No word from the init: it was killed (SIGKILL of the whole task), or failed
            // before the command ran; its own end says which.
            crate::init::decode(&message[..n]).unwrap_or(ended)
        }
        None => ended,
    };
    if let Err(e) = write_exit_file(&plan.exit_file, ended) {
        eprintln!(
            "mesofs: cannot record how the task ended in {}: {e}",
            plan.exit_file.display()
        );
    }
    end_like(ended)
}

/// In the forked child: the task's init. Makes the task's mount namespace, then forks the
/// command (which joins the task's cgroups, as every process of the task descends from it)
/// and serves it. The init itself stays out of the cgroups, as its supervisor does: making
/// and tearing down the namespaces takes milliseconds of CPU, which a task's small cpu quota
/// would stretch into a throttled wait of whole CFS periods at its start and its end.
fn be_init(plan: &Plan, credentials: Option<&Credentials>, report: i32) -> ! {
    if plan.mount_namespace {
        if let Err(e) = crate::init::private_mounts(plan.user, plan.pid_namespace) {
            eprintln!("mesofs: cannot give the task its mount namespace: {e}");
            // SAFETY: leaving the forked child without running the parent's exit handlers.
            unsafe { libc::_exit(126) };
        }
    }
    crate::init::serve(
        || exec_command(plan, credentials),
        report,
        plan.started_fd.then_some(STARTED_FD),
    )
}

/// Joins the task's cgroups, or leaves the forked child.
fn join_cgroups(plan: &Plan) {
    for dir in &plan.joins {
        if let Err(e) = fs::write(dir.join("cgroup.procs"), "0") {
            eprintln!(
                "mesofs: cannot join the task's cgroup {}: {e}",
                dir.display()
            );
            // SAFETY: leaving the forked child without running the parent's exit handlers.
            unsafe { libc::_exit(126) };
        }
    }
}

/// In the forked child: joins the cgroups, becomes the task's user, then execs the command
/// (inheriting environment, working directory and standard streams).
fn exec_command(plan: &Plan, credentials: Option<&Credentials>) -> ! {
    reset_signals();
    disable_huge_pages(plan.huge_pages_disabled);
    join_cgroups(plan);
    if let Some(c) = credentials {
        if let Err(e) = c.switch() {
            eprintln!("mesofs: cannot run the task as {:?}: {e}", plan.user);
            // SAFETY: as above.
            unsafe { libc::_exit(126) };
        }
    }
    let err = std::process::Command::new(&plan.argv[0])
        .args(&plan.argv[1..])
        .exec();
    eprintln!("mesofs: cannot run {:?}: {err}", plan.argv[0]);
    // SAFETY: as above.
    unsafe { libc::_exit(127) }
}

fn wait_for(pid: i32) -> Ended {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Ended::Unknown;
        }
    }
    Ended::from_wait_status(status)
}

/// Ends this process the way the command ended, so the agent's wait sees the same.
fn end_like(ended: Ended) -> ! {
    match ended {
        Ended::Exited(code) => std::process::exit(code),
        Ended::Signaled(sig) => {
            // SAFETY: no core for the supervisor; default action for the signal, then raise it.
            unsafe {
                let none = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &none);
                libc::signal(sig, libc::SIG_DFL);
                libc::kill(libc::getpid(), sig);
            }
            std::process::exit(128 + sig)
        }
        Ended::Unknown => std::process::exit(127),
    }
}

fn write_exit_file(path: &Path, ended: Ended) -> io::Result<()> {
    let line = match ended {
        Ended::Exited(code) => format!("exited {code}\n"),
        Ended::Signaled(sig) => format!("signaled {sig}\n"),
        Ended::Unknown => "unknown\n".to_string(),
    };
    let tmp = path.with_extension("exit-tmp");
    fs::write(&tmp, line)?;
    fs::rename(&tmp, path)
}

/// How a supervised command ended, from its exit file; `None` when the file is missing or
/// says nothing usable (the supervisor was killed before the command ended).
pub(crate) fn read_exit_file(path: &Path) -> Option<Ended> {
    let text = fs::read_to_string(path).ok()?;
    let (word, n) = text.trim().split_once(' ')?;
    let n: i32 = n.parse().ok()?;
    match word {
        "exited" => Some(Ended::Exited(n)),
        "signaled" => Some(Ended::Signaled(n)),
        _ => None,
    }
}

/// Whether `args` (a process's arguments, program first) start a supervisor.
pub fn is_supervisor_invocation(args: &[OsString]) -> bool {
    args.get(1).map(OsString::as_os_str) == Some(OsStr::new(SUBCOMMAND))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_survives_its_trip_through_the_command_line() {
        let plan = Plan {
            exit_file: "/w/meta/tasks/f-1.t.exit".into(),
            joins: vec![
                "/sys/fs/cgroup/memory/x".into(),
                "/sys/fs/cgroup/pids/x".into(),
            ],
            user: Some(TaskUser {
                uid: 65534,
                gid: 100,
            }),
            started_fd: true,
            huge_pages_disabled: true,
            pid_namespace: true,
            mount_namespace: true,
            health: Some(HealthPlan {
                check: HealthCheck::new(mesofs_kernel::health::Probe::Http {
                    port_index: 1,
                    path: "/ready?x=--".into(),
                }),
                file: "/w/meta/tasks/f-1.t.health".into(),
            }),
            kill_grace_ms: 2500,
            argv: vec!["/bin/sh".into(), "-c".into(), "echo -- --join".into()],
        };
        let args = plan.to_args();
        assert_eq!(args[0], SUBCOMMAND);
        assert_eq!(Plan::parse(args.into_iter().skip(1)), Ok(plan));
    }

    #[test]
    fn a_malformed_plan_is_refused() {
        let parse = |a: &[&str]| Plan::parse(a.iter().map(OsString::from));
        assert!(parse(&["--exit-file", "/x", "--"]).is_err());
        assert!(parse(&["--join", "/c", "--", "true"]).is_err());
        assert!(parse(&["--exit-file"]).is_err());
        assert!(parse(&["--bogus", "--", "true"]).is_err());
        assert!(parse(&["--exit-file", "/x", "--health", "{}", "--", "true"]).is_err());
        assert!(parse(&["--exit-file", "/x", "--kill-grace-ms", "soon", "--", "true"]).is_err());
    }

    #[test]
    fn exit_files_say_how_the_command_ended() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.exit");
        assert_eq!(read_exit_file(&f), None);
        for ended in [Ended::Exited(0), Ended::Exited(7), Ended::Signaled(9)] {
            write_exit_file(&f, ended).unwrap();
            assert_eq!(read_exit_file(&f), Some(ended));
        }
    }
}
