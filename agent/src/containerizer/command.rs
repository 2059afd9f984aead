//! The task's process as it is spawned: its program found as exec would find it, its
//! command line, environment, working directory and standard streams; and the wait for a
//! supervised command to start.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use tracing::warn;

use super::{Command, LaunchError, LaunchSpec, DEFAULT_PATH};
use crate::process::Exec;
use crate::sandbox::Sandbox;
use crate::supervisor::Plan;

/// How long a launch waits for a supervised command to start.
const STARTED_TIMEOUT_MS: u16 = 10_000;

/// Waits until a supervised command runs (in its cgroups, as its user): the supervisor's
/// child holds the pipe's write end until its exec closes it (or it dies). Until then a kill's
/// SIGTERM would find nobody in the task's cgroups. Bounded, so that a stuck supervisor does
/// not hang the launch.
pub(super) fn wait_started(pipe: OwnedFd) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_millis(STARTED_TIMEOUT_MS.into());
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let left_ms = u16::try_from(left.as_millis()).unwrap_or(STARTED_TIMEOUT_MS);
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(left_ms)) {
            Ok(0) => {
                warn!(
                    timeout_ms = STARTED_TIMEOUT_MS,
                    "the supervisor has not started the command yet; going on"
                );
                return;
            }
            Ok(_) => return,
            // A signal (another task's SIGCHLD) is not the start: going on now would let a
            // kill's SIGTERM find nobody in the task's cgroups.
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                warn!(error = %e, "cannot wait for the command to start");
                return;
            }
        }
    }
}

pub(super) fn program(command: &Command) -> &str {
    match command {
        Command::Shell(_) => "/bin/sh",
        Command::Argv(argv) => argv.first().map(String::as_str).unwrap_or(""),
    }
}

/// The task's command line, program first.
pub(super) fn task_argv(spec: &LaunchSpec) -> Vec<OsString> {
    match &spec.command {
        Command::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.into()],
        Command::Argv(argv) => argv.iter().map(OsString::from).collect(),
    }
}

/// The PATH the task's command is looked up in.
pub(super) fn task_path(spec: &LaunchSpec) -> OsString {
    spec.env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or_else(|| DEFAULT_PATH.into(), |(_, v)| v.into())
}

/// The program `name` as exec would find it from `cwd`: itself when it holds a `/`, else the
/// first executable file of that name in `path`.
pub(super) fn resolve_program(name: &OsStr, path: &OsStr, cwd: &Path) -> io::Result<OsString> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.as_bytes().contains(&b'/') {
        return if executable(&cwd.join(name)) {
            Ok(name.to_os_string())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no executable file there",
            ))
        };
    }
    std::env::split_paths(path)
        .map(|dir| cwd.join(dir).join(name))
        .find(|p| executable(p))
        .map(PathBuf::into_os_string)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not found in the task's PATH"))
}

/// The task's process: its command, or the supervisor that runs it; with the environment,
/// working directory and standard streams of the task.
pub(super) fn command(
    spec: &LaunchSpec,
    sandbox: &Sandbox,
    supervision: Option<(&Path, Plan)>,
) -> Result<Exec, LaunchError> {
    let dir = sandbox.dir();
    let (program, argv) = match supervision {
        Some((bin, plan)) => {
            let mut argv = vec![bin.as_os_str().to_os_string()];
            argv.extend(plan.to_args());
            (bin.as_os_str().to_os_string(), argv)
        }
        None => {
            let argv = task_argv(spec);
            let found = resolve_program(&argv[0], &task_path(spec), dir).map_err(|source| {
                LaunchError::Spawn {
                    program: program(&spec.command).to_string(),
                    source,
                }
            })?;
            (found, argv)
        }
    };
    let io_err = |source| LaunchError::Sandbox {
        path: dir.to_path_buf(),
        source,
    };
    // Nothing of the agent's own environment leaks into tasks.
    let mut env: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), dir.into()),
    ];
    // The name of the user it runs as, when the system knows one.
    let uid = spec
        .user
        .map_or_else(|| nix::unistd::geteuid().as_raw(), |u| u.uid);
    if let Ok(Some(user)) = nix::unistd::User::from_uid(uid.into()) {
        env.push(("USER".into(), user.name.clone().into()));
        env.push(("LOGNAME".into(), user.name.into()));
    }
    env.extend(spec.env.iter().map(|(k, v)| (k.into(), v.into())));
    env.push(("MESOFS_TASK_ID".into(), spec.task_id.clone().into()));
    env.push(("MESOFS_SANDBOX".into(), dir.into()));
    let stdout = OwnedFd::from(sandbox.stdout().map_err(io_err)?);
    let stderr = OwnedFd::from(sandbox.stderr().map_err(io_err)?);
    Exec::new(&program, &argv, env, dir, stdout, stderr).map_err(|source| LaunchError::Spawn {
        program: self::program(&spec.command).to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_as_exec_would_find_them() {
        let cwd = Path::new("/");
        let path = OsStr::new("/nonexistent:/bin:/usr/bin");
        let sh = resolve_program(OsStr::new("sh"), path, cwd).expect("sh is in /bin");
        assert!(Path::new(&sh).is_absolute(), "{sh:?}");
        assert_eq!(
            resolve_program(OsStr::new("/bin/sh"), path, cwd).unwrap(),
            "/bin/sh"
        );
        assert!(resolve_program(OsStr::new("no-such-program"), path, cwd).is_err());
        assert!(resolve_program(OsStr::new("/etc/passwd"), path, cwd).is_err());
        assert!(resolve_program(OsStr::new("sh"), OsStr::new("/nonexistent"), cwd).is_err());
    }
}
