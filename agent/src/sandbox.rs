//! Task sandboxes: `<work_dir>/sandboxes/<task_id>/`, the task's working directory, holding
//! its `stdout` and `stderr`; and how much disk one takes.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};

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

/// Deepest directory nesting a disk measurement walks: each level holds a descriptor open.
pub const MAX_DEPTH: usize = 512;

/// One measurement of a sandbox's disk use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskUse {
    /// Bytes allocated, as [`disk_used`] counts them.
    pub bytes: u64,
    /// When it was measured (unix ms).
    pub measured_ms: u64,
}

/// Why a sandbox's disk use could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum DiskUseError {
    /// A directory could not be opened or listed.
    #[error("cannot measure the sandbox {}: {source}", path.display())]
    Io {
        /// The sandbox.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Its directories nest deeper than [`MAX_DEPTH`].
    #[error("cannot measure the sandbox {}: its directories nest deeper than {MAX_DEPTH} levels", path.display())]
    TooDeep {
        /// The sandbox.
        path: PathBuf,
    },
}

/// The disk a sandbox takes, as `du` counts it: the blocks allocated to each file, directory
/// and link in it, a file with several hard links once. Symbolic links are not followed and
/// other file systems mounted inside are not entered, and every step opens relative to its
/// parent without following links, so a task that swaps a directory for a link while it is
/// measured cannot send the walk outside its sandbox.
pub fn disk_used(dir: &Path) -> Result<u64, DiskUseError> {
    let io = |e: Errno| DiskUseError::Io {
        path: dir.to_path_buf(),
        source: e.into(),
    };
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let root = nix::fcntl::open(dir, flags, Mode::empty()).map_err(io)?;
    let st = fstat(&root).map_err(io)?;
    let mut walk = DiskWalk {
        dev: st.st_dev,
        linked: HashSet::new(),
        bytes: allocated(&st),
    };
    match walk.dir(root, 0) {
        Ok(()) => Ok(walk.bytes),
        Err(WalkError::TooDeep) => Err(DiskUseError::TooDeep {
            path: dir.to_path_buf(),
        }),
        Err(WalkError::Io(e)) => Err(io(e)),
    }
}

/// One measurement's progress.
struct DiskWalk {
    /// The sandbox's file system.
    dev: u64,
    /// Files with more than one link, counted already.
    linked: HashSet<(u64, u64)>,
    bytes: u64,
}

enum WalkError {
    TooDeep,
    Io(Errno),
}

fn allocated(st: &FileStat) -> u64 {
    (st.st_blocks as u64).saturating_mul(512)
}

impl DiskWalk {
    fn dir(&mut self, fd: OwnedFd, depth: usize) -> Result<(), WalkError> {
        let mut dir = Dir::from_fd(fd).map_err(WalkError::Io)?;
        let mut names: Vec<CString> = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(WalkError::Io)?;
            let name = entry.file_name();
            if name.to_bytes() != b"." && name.to_bytes() != b".." {
                names.push(name.to_owned());
            }
        }
        let mut subdirs: Vec<CString> = Vec::new();
        for name in names {
            let st = match fstatat(dir.as_fd(), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Removed since it was listed.
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(WalkError::Io(e)),
            };
            let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
            if !is_dir && st.st_nlink > 1 && !self.linked.insert((st.st_dev, st.st_ino)) {
                continue;
            }
            self.bytes = self.bytes.saturating_add(allocated(&st));
            if is_dir && st.st_dev == self.dev {
                subdirs.push(name);
            }
        }
        if subdirs.is_empty() {
            return Ok(());
        }
        if depth + 1 >= MAX_DEPTH {
            return Err(WalkError::TooDeep);
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        for name in subdirs {
            match openat(dir.as_fd(), name.as_c_str(), flags, Mode::empty()) {
                Ok(fd) => self.dir(fd, depth + 1)?,
                // Removed, or replaced by something else, since it was listed.
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => continue,
                Err(e) => return Err(WalkError::Io(e)),
            }
        }
        Ok(())
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

    #[test]
    fn disk_use_counts_allocated_blocks_once_per_file_and_does_not_follow_links() {
        let work = tempfile::tempdir().expect("tempdir");
        let sb = Sandbox::create(work.path(), "d", None).expect("create");
        let empty = disk_used(sb.dir()).expect("measure");
        let nested = sb.dir().join("a/b/c");
        fs::create_dir_all(&nested).expect("mkdir");
        fs::write(nested.join("data"), vec![7u8; 1 << 20]).expect("write");
        let with_data = disk_used(sb.dir()).expect("measure");
        assert!(
            with_data >= empty + (1 << 20),
            "{with_data} after a 1 MiB file, {empty} before"
        );
        // A second link to the same file, and a link to a big directory outside: no more.
        fs::hard_link(nested.join("data"), sb.dir().join("again")).expect("link");
        std::os::unix::fs::symlink("/usr", sb.dir().join("usr")).expect("symlink");
        let linked = disk_used(sb.dir()).expect("measure");
        assert!(
            linked - with_data < 64 * 1024,
            "{linked} against {with_data}"
        );
        // A sparse file takes only what is written.
        let sparse = File::create(sb.dir().join("sparse")).expect("create");
        sparse.set_len(1 << 30).expect("truncate");
        assert!(disk_used(sb.dir()).expect("measure") - linked < 64 * 1024);
    }

    #[test]
    fn a_sandbox_nested_too_deep_to_measure_says_so() {
        let work = tempfile::tempdir().expect("tempdir");
        let sb = Sandbox::create(work.path(), "deep", None).expect("create");
        // Built one level at a time, relative to the last: the whole path is past PATH_MAX.
        let mut fd = File::open(sb.dir()).expect("open");
        for _ in 0..MAX_DEPTH {
            nix::sys::stat::mkdirat(fd.as_fd(), "d", Mode::from_bits_truncate(0o755))
                .expect("mkdir");
            fd = File::from(
                openat(
                    fd.as_fd(),
                    "d",
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                    Mode::empty(),
                )
                .expect("open"),
            );
        }
        let err = disk_used(sb.dir()).expect_err("too deep");
        assert!(err.to_string().contains("deeper than 512 levels"), "{err}");
    }
}
