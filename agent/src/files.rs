//! The agent's Files service: reads of task sandbox files (stdout, stderr) for mounts.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use mesofs_kernel::proto::files_server::Files;
use mesofs_kernel::proto::{ReadReply, ReadRequest};
use tonic::{Request, Response, Status};

/// The most one read returns.
const MAX_READ: u64 = 1 << 20;

/// Serves sandbox files under a work directory.
pub struct FilesService {
    work_dir: PathBuf,
}

impl FilesService {
    /// A service for sandboxes under `work_dir/sandboxes`.
    pub fn new(work_dir: PathBuf) -> FilesService {
        FilesService { work_dir }
    }
}

fn valid_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

#[tonic::async_trait]
impl Files for FilesService {
    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadReply>, Status> {
        let req = request.into_inner();
        if !valid_component(&req.task_id) || !matches!(req.file.as_str(), "stdout" | "stderr") {
            return Err(Status::invalid_argument(
                "read a task's \"stdout\" or \"stderr\" by its task id",
            ));
        }
        let path =
            crate::session::Session::sandbox_dir(&self.work_dir, &req.task_id).join(&req.file);
        let length = req.length.min(MAX_READ);
        let offset = req.offset;
        tokio::task::spawn_blocking(move || {
            let mut f = match std::fs::File::open(&path) {
                Ok(f) => f,
                // Not started yet: an empty file.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(ReadReply {
                        data: Vec::new(),
                        size: 0,
                    })
                }
                Err(e) => return Err(Status::internal(format!("{}: {e}", path.display()))),
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
}
