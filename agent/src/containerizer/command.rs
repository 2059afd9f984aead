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

/// Shell words that are not programs `sh -c` would exec: its builtins and keywords (dash's).
/// `true` and `false` are not among them: the programs do what the builtins do.
const SHELL_WORDS: &[&str] = &[
    "!", ".", ":", "[", "alias", "bg", "break", "case", "cd", "chdir", "command", "continue", "do",
    "done", "echo", "elif", "else", "esac", "eval", "exec", "exit", "export", "fc", "fg", "fi",
    "for", "getopts", "hash", "if", "in", "jobs", "kill", "local", "printf", "pwd", "read",
    "readonly", "return", "set", "shift", "test", "then", "times", "trap", "type", "ulimit",
    "umask", "unalias", "unset", "until", "wait", "while", "{", "}",
];

/// The words of a shell command line that `sh -c` would run as one program with those
/// arguments and nothing more: no quoting, expansion, globbing, redirection, separator,
/// comment or assignment, and no builtin or keyword first. `None` for any other line.
pub(super) fn plain_words(line: &str) -> Option<Vec<&str>> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_./,:+@%=".contains(&b);
    let words: Vec<&str> = line.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
    let first = *words.first()?;
    let simple = words.iter().all(|w| w.bytes().all(plain))
        && !first.contains('=')
        && !SHELL_WORDS.contains(&first);
    simple.then_some(words)
}

/// The task's program, found as exec would find it from `cwd`, and its command line (program
/// name first). A shell command of [plain words](plain_words) whose program is found runs
/// as that program, without `/bin/sh` (which would only fork and exec it); any other runs
/// under `/bin/sh -c`, which also says "not found" and exits 127 as ever.
pub(super) fn task_command(spec: &LaunchSpec, cwd: &Path) -> io::Result<(OsString, Vec<OsString>)> {
    let path = task_path(spec);
    let argv: Vec<OsString> = match &spec.command {
        Command::Argv(argv) => argv.iter().map(OsString::from).collect(),
        Command::Shell(line) => {
            if let Some(words) = plain_words(line) {
                if let Ok(found) = resolve_program(OsStr::new(words[0]), &path, cwd) {
                    return Ok((found, words.into_iter().map(OsString::from).collect()));
                }
            }
            vec!["/bin/sh".into(), "-c".into(), line.into()]
        }
    };
    Ok((resolve_program(&argv[0], &path, cwd)?, argv))
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
        None => task_command(spec, dir).map_err(|source| LaunchError::Spawn {
            program: program(&spec.command).to_string(),
            source,
        })?,
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
    if let Command::Shell(_) = spec.command {
        // As `sh` sets it, whether or not one runs.
        env.push(("PWD".into(), dir.into()));
    }
    env.push(("MESOFS_TASK_ID".into(), spec.task_id.clone().into()));
    env.push(("MESOFS_SANDBOX".into(), dir.into()));
    // The names Mesos gives them, for programs written for Mesos.
    env.push(("MESOS_TASK_ID".into(), spec.task_id.clone().into()));
    env.push(("MESOS_SANDBOX".into(), dir.into()));
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
    fn only_lines_sh_would_run_as_one_program_are_plain_words() {
        for line in [
            "true",
            "sleep 30",
            "  sleep\t30 ",
            "/bin/cat a=b x,y:z@1%2+3",
            "./serve --port 8080",
        ] {
            assert!(plain_words(line).is_some(), "{line:?}");
        }
        assert_eq!(plain_words(" sleep  30 ").unwrap(), ["sleep", "30"]);
        for line in [
            "",
            "   ",
            "echo hi",
            "cd /tmp",
            "exit 3",
            "exec sleep 1",
            "if true",
            "A=1 env",
            "sleep $X",
            "ls *",
            "ls ?",
            "ls [ab]",
            "cat ~/x",
            "true; false",
            "true && false",
            "true | cat",
            "cat < f",
            "echo > f",
            "sleep 1 &",
            "cat 'a b'",
            "cat \"a\"",
            "cat a\\ b",
            "sleep 1 # why",
            "cat $(x)",
            "cat `x`",
            "sleep 1\nsleep 2",
            "(sleep 1)",
            "{ sleep 1; }",
            "! true",
        ] {
            assert!(plain_words(line).is_none(), "{line:?}");
        }
    }

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
