//! Task sandboxes: `<work_dir>/sandboxes/<task_id>/`, the task's working directory, holding
//! its `stdout` and `stderr`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};

use crate::process::TaskUser;

/// The sandbox directory of `task_id` under `work_dir`, whether or not it exists.
pub fn path(work_dir: &Path, task_id: &str) -> PathBuf {
    work_dir.join("sandboxes").join(task_id)
}

/// A task's sandbox directory.
#[derive(Clone, Debug)]
pub struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    /// Creates (or reopens) the sandbox of `task_id`, with its `stdout` and `stderr` files,
    /// so readers find them from the start; all three belong to `owner` when given (the
    /// user the task runs as, who writes there).
    pub fn create(work_dir: &Path, task_id: &str, owner: Option<TaskUser>) -> io::Result<Sandbox> {
        let sandbox = Sandbox {
            dir: path(work_dir, task_id),
        };
        fs::create_dir_all(&sandbox.dir)?;
        sandbox.stdout()?;
        sandbox.stderr()?;
        if let Some(u) = owner {
            for p in [
                sandbox.dir.clone(),
                sandbox.dir.join("stdout"),
                sandbox.dir.join("stderr"),
            ] {
                chown(&p, Some(u.uid), Some(u.gid))?;
            }
        }
        Ok(sandbox)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The task's standard output, opened for appending.
    pub fn stdout(&self) -> io::Result<File> {
        self.append("stdout")
    }

    /// The task's standard error, opened for appending.
    pub fn stderr(&self) -> io::Result<File> {
        self.append("stderr")
    }

    fn append(&self, name: &str) -> io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_sandbox_is_a_directory_per_task_with_empty_output_files() {
        let work = tempfile::tempdir().expect("tempdir");
        let sb = Sandbox::create(work.path(), "web.1", None).expect("create");
        assert_eq!(sb.dir(), work.path().join("sandboxes/web.1"));
        assert_eq!(fs::read(sb.dir().join("stdout")).expect("stdout"), b"");
        assert_eq!(fs::read(sb.dir().join("stderr")).expect("stderr"), b"");
    }

    #[test]
    fn reopening_a_sandbox_appends_to_its_output() {
        let work = tempfile::tempdir().expect("tempdir");
        let sb = Sandbox::create(work.path(), "t", None).expect("create");
        sb.stdout()
            .expect("open")
            .write_all(b"one\n")
            .expect("write");
        let again = Sandbox::create(work.path(), "t", None).expect("reopen");
        again
            .stdout()
            .expect("open")
            .write_all(b"two\n")
            .expect("write");
        assert_eq!(
            fs::read_to_string(sb.dir().join("stdout")).expect("read"),
            "one\ntwo\n"
        );
    }
}
