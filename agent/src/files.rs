//! The agent's Files service: reads of task sandbox files (stdout, stderr) for mounts, and
//! what the running tasks use.
//!
//! A sandbox belongs to its task's user, who may put anything there: a symlink to a root-only
//! file, a FIFO, a device. The agent (root) therefore serves only a regular file directly in the
//! task's sandbox directory: no symlink is followed at any step (`O_NOFOLLOW` on the sandbox
//! directory and on the file), the file is opened with the task user's file-system ids (so no
//! more than that user could read), without blocking (a FIFO never holds the service), and
//! anything but a regular file is refused.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use mesofs_kernel::proto::files_server::Files;
use mesofs_kernel::proto::{
    HealthCheckResult, ReadReply, ReadRequest, TaskUsage, UsageReply, UsageRequest,
};
use mesofs_kernel::tls::{Guard, Kind};

use crate::acls::SandboxAcls;
use crate::containerizer::{unix_ms, Containerizer};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{setfsgid, setfsuid, Gid, Uid};
use tonic::{Request, Response, Status};
use tracing::warn;

/// The most one read returns.
const MAX_READ: u64 = 1 << 20;

/// Serves sandbox files under a work directory, and the usage of the tasks a containerizer
/// runs.
pub struct FilesService {
    work_dir: PathBuf,
    guard: Guard,
    acls: Arc<SandboxAcls>,
    /// Weak: a connection the server still holds must not keep the tasks' handle alive.
    containerizer: Weak<Containerizer>,
}

impl FilesService {
    /// A service for sandboxes under `work_dir/sandboxes`, to masters and mounts only (when
    /// `guard` checks certificates), as far as the cluster's `acls` let them; and for the
    /// usage of what `containerizer` runs while it lives.
    pub fn new(
        work_dir: PathBuf,
        guard: Guard,
        acls: Arc<SandboxAcls>,
        containerizer: &Arc<Containerizer>,
    ) -> FilesService {
        FilesService {
            work_dir,
            guard,
            acls,
            containerizer: Arc::downgrade(containerizer),
        }
    }
}

fn valid_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

/// Why a sandbox file is not served.
#[derive(Debug, thiserror::Error)]
pub enum SandboxFileError {
    /// The sandbox directory, or the file, is a symlink.
    #[error(
        "{0} is a symbolic link: sandbox files are served only as regular files inside the sandbox"
    )]
    Symlink(String),
    /// The file is not a regular file (a FIFO, a device, a directory).
    #[error("{0} is not a regular file")]
    NotRegular(String),
    /// The task's user may not read it.
    #[error("{0}: the task's user may not read it")]
    Denied(String),
    /// The ACLs do not let the reader read this task's sandbox.
    #[error("{0}")]
    Forbidden(String),
    /// Any other failure.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

impl From<SandboxFileError> for Status {
    fn from(e: SandboxFileError) -> Status {
        match e {
            SandboxFileError::Io(..) => Status::internal(e.to_string()),
            _ => Status::permission_denied(e.to_string()),
        }
    }
}

/// Sets this thread's file-system uid and gid for as long as it lives (root's again after).
struct FsIds;

impl FsIds {
    fn assume(uid: u32, gid: u32) -> FsIds {
        // Per thread: the kernel keeps credentials per thread, and setfsuid/setfsgid are not
        // broadcast to the other threads as setuid is.
        setfsgid(Gid::from_raw(gid));
        setfsuid(Uid::from_raw(uid));
        FsIds
    }
}

impl Drop for FsIds {
    fn drop(&mut self) {
        setfsuid(Uid::from_raw(0));
        setfsgid(Gid::from_raw(0));
    }
}

/// Opens `<sandboxes>/<task_id>/<file>` as described in the module's documentation; `None`
/// when the sandbox or the file does not exist (yet). `may_read` is asked first, with the uid
/// the sandbox belongs to (its task's user).
pub fn open_sandbox_file(
    sandboxes: &Path,
    task_id: &str,
    file: &str,
    may_read: impl FnOnce(u32) -> Result<(), String>,
) -> Result<Option<File>, SandboxFileError> {
    let shown = format!("{task_id}/{file}");
    let io = |e: Errno| SandboxFileError::Io(shown.clone(), std::io::Error::from(e));
    let root = File::open(sandboxes)
        .map_err(|e| SandboxFileError::Io(sandboxes.display().to_string(), e))?;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let dir = match openat(&root, task_id, flags | OFlag::O_DIRECTORY, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP | Errno::ENOTDIR) => {
            return Err(SandboxFileError::Symlink(task_id.into()))
        }
        Err(e) => return Err(io(e)),
    };
    let owner = nix::sys::stat::fstat(&dir).map_err(io)?;
    may_read(owner.st_uid).map_err(SandboxFileError::Forbidden)?;
    let opened = {
        let _as_user =
            (nix::unistd::geteuid().is_root()).then(|| FsIds::assume(owner.st_uid, owner.st_gid));
        openat(&dir, file, flags | OFlag::O_NONBLOCK, Mode::empty())
    };
    let fd: OwnedFd = match opened {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => return Err(SandboxFileError::Symlink(shown)),
        Err(Errno::EACCES | Errno::EPERM) => return Err(SandboxFileError::Denied(shown)),
        Err(e) => return Err(io(e)),
    };
    let f = File::from(fd);
    let meta = f
        .metadata()
        .map_err(|e| SandboxFileError::Io(shown.clone(), e))?;
    if !meta.file_type().is_file() {
        return Err(SandboxFileError::NotRegular(shown));
    }
    Ok(Some(f))
}

#[tonic::async_trait]
impl Files for FilesService {
    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadReply>, Status> {
        let principal =
            self.guard
                .admit(&request, "read sandboxes", &[Kind::Master, Kind::Mount])?;
        let acls = self.acls.clone();
        let req = request.into_inner();
        if !valid_component(&req.task_id) || !matches!(req.file.as_str(), "stdout" | "stderr") {
            return Err(Status::invalid_argument(
                "read a task's \"stdout\" or \"stderr\" by its task id",
            ));
        }
        let sandboxes = self.work_dir.join("sandboxes");
        let length = req.length.min(MAX_READ);
        let offset = req.offset;
        tokio::task::spawn_blocking(move || {
            let may_read = |uid: u32| {
                // A task runs as a user name; ACLs name users.
                let user = nix::unistd::User::from_uid(Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map_or_else(|| uid.to_string(), |u| u.name);
                acls.allows(principal.as_ref(), &user)
            };
            let f = open_sandbox_file(&sandboxes, &req.task_id, &req.file, may_read).inspect_err(|e| {
                warn!(task = %req.task_id, file = %req.file, error = %e, "sandbox read refused")
            })?;
            // Not started yet: an empty file.
            let Some(mut f) = f else {
                return Ok(ReadReply {
                    data: Vec::new(),
                    size: 0,
                });
            };
            let size = f
                .metadata()
                .map_err(|e| Status::internal(e.to_string()))?
                .len();
            let mut data = Vec::new();
            if offset < size && length > 0 {
                f.seek(SeekFrom::Start(offset))
                    .map_err(|e| Status::internal(e.to_string()))?;
                f.take(length.min(size - offset))
                    .read_to_end(&mut data)
                    .map_err(|e| Status::internal(e.to_string()))?;
            }
            Ok(ReadReply { data, size })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map(Response::new)
    }

    /// Usage is figures about tasks, as the cluster state is, and no task's data: any master
    /// or mount may ask, without the sandbox ACLs.
    async fn usage(&self, request: Request<UsageRequest>) -> Result<Response<UsageReply>, Status> {
        self.guard
            .admit(&request, "read task usage", &[Kind::Master, Kind::Mount])?;
        let asked = request.into_inner().task_ids;
        let containerizer = self
            .containerizer
            .upgrade()
            .ok_or_else(|| Status::unavailable("the agent is stopping"))?;
        // Reads of cgroup files: off the async workers.
        tokio::task::spawn_blocking(move || {
            let ids = if asked.is_empty() {
                containerizer.running()
            } else {
                asked
            };
            let tasks = ids
                .into_iter()
                .filter_map(|id| {
                    let used = containerizer.usage(&id)?;
                    let disk = containerizer.disk(&id);
                    let last_check =
                        containerizer
                            .last_check(&id)
                            .map(|(c, failures)| HealthCheckResult {
                                passed: c.passed,
                                counted: c.counted,
                                output: c.output,
                                time_ms: c.time_ms,
                                took_ms: c.took_ms,
                                failures,
                            });
                    Some(TaskUsage {
                        cpu_ns: used.cpu_ns,
                        cpu_user_ns: used.cpu_user_ns,
                        cpu_system_ns: used.cpu_system_ns,
                        mem_bytes: used.mem_bytes,
                        mem_peak_bytes: used.mem_peak_bytes,
                        pids: used.pids,
                        disk_bytes: disk.map(|d| d.bytes),
                        disk_measured_ms: disk.map(|d| d.measured_ms),
                        last_check,
                        task_id: id,
                    })
                })
                .collect();
            UsageReply {
                tasks,
                measured_ms: unix_ms(),
            }
        })
        .await
        .map(Response::new)
        .map_err(|e| Status::internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anyone(_: u32) -> Result<(), String> {
        Ok(())
    }

    fn sandbox() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let task = dir.path().join("f-1.t");
        std::fs::create_dir(&task).unwrap();
        std::fs::write(task.join("stdout"), "hello\n").unwrap();
        (dir, task)
    }

    #[test]
    fn a_regular_file_in_the_sandbox_is_served_and_a_missing_one_is_empty() {
        let (dir, _) = sandbox();
        let mut f = open_sandbox_file(dir.path(), "f-1.t", "stdout", anyone)
            .unwrap()
            .unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello\n");
        assert!(open_sandbox_file(dir.path(), "f-1.t", "stderr", anyone)
            .unwrap()
            .is_none());
        assert!(open_sandbox_file(dir.path(), "nope", "stdout", anyone)
            .unwrap()
            .is_none());
    }

    #[test]
    fn symlinks_fifos_and_directories_are_refused() {
        let (dir, task) = sandbox();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "root only\n").unwrap();
        std::fs::remove_file(task.join("stdout")).unwrap();
        std::os::unix::fs::symlink(&secret, task.join("stdout")).unwrap();
        assert!(matches!(
            open_sandbox_file(dir.path(), "f-1.t", "stdout", anyone),
            Err(SandboxFileError::Symlink(_))
        ));
        nix::unistd::mkfifo(&task.join("stderr"), Mode::from_bits_truncate(0o644)).unwrap();
        assert!(matches!(
            open_sandbox_file(dir.path(), "f-1.t", "stderr", anyone),
            Err(SandboxFileError::NotRegular(_))
        ));
        // The sandbox directory itself replaced by a link to another one.
        std::os::unix::fs::symlink(&task, dir.path().join("f-1.u")).unwrap();
        assert!(matches!(
            open_sandbox_file(dir.path(), "f-1.u", "stdout", anyone),
            Err(SandboxFileError::Symlink(_))
        ));
    }

    #[test]
    fn a_file_the_tasks_user_cannot_read_is_refused_though_the_agent_is_root() {
        if !nix::unistd::geteuid().is_root() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "needs root to own a sandbox as another user, and CI=true"
            );
            eprintln!("\n!!!!!!!! SKIPPED: needs root to own a sandbox as another user !!!!!!!!\n");
            return;
        }
        let (dir, task) = sandbox();
        let nobody = 65534;
        std::os::unix::fs::chown(&task, Some(nobody), Some(nobody)).unwrap();
        // A root-only file in the sandbox (as a hard link could make one): not for its user.
        std::fs::write(task.join("stderr"), "root only\n").unwrap();
        std::fs::set_permissions(
            task.join("stderr"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        assert!(matches!(
            open_sandbox_file(dir.path(), "f-1.t", "stderr", anyone),
            Err(SandboxFileError::Denied(_))
        ));
        // Its own readable file is served.
        std::os::unix::fs::chown(task.join("stdout"), Some(nobody), Some(nobody)).unwrap();
        assert!(open_sandbox_file(dir.path(), "f-1.t", "stdout", anyone)
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_reader_the_acls_refuse_is_refused_before_the_file_is_opened() {
        let (dir, _) = sandbox();
        let mut asked = None;
        let r = open_sandbox_file(dir.path(), "f-1.t", "stdout", |uid| {
            asked = Some(uid);
            Err("mount:web may not read the sandboxes of user \"alice\"'s tasks".into())
        });
        assert!(matches!(r, Err(SandboxFileError::Forbidden(m)) if m.contains("mount:web")));
        let me = nix::unistd::getuid().as_raw();
        assert_eq!(asked, Some(me), "asked with the sandbox owner's uid");
    }
}
