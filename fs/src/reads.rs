//! Reads that wait or cross the network (`offers/next`, `wait`, `events`, `stdout`/`stderr`):
//! they run on the runtime and reply from there.

use std::sync::Arc;

use fuser::{Errno, ReplyData};
use tracing::{debug, warn};

use crate::blocking::{self, Interrupted, Waiting};
use crate::filesystem::errno;
use crate::handles::{slice_at, Awaited, Handle};
use crate::render;
use crate::sandbox::{SandboxError, READ_TIMEOUT};
use crate::shared::{sandbox_target, Shared};
use crate::tree;

fn interrupted_errno(e: Interrupted) -> Errno {
    errno(e.errno())
}

/// A read of `offers/next` or `wait`: waits for the answer, keeps it for the open, and
/// answers from it at the read's offset.
pub(crate) async fn read_answer(
    shared: Arc<Shared>,
    handle: Arc<Handle>,
    waiting: Waiting,
    offset: u64,
    size: u32,
    reply: ReplyData,
) {
    let Handle::Answer { wait, answer } = &*handle else {
        return reply.error(Errno::EBADF);
    };
    let found = blocking::wait_for(
        &shared.copy,
        &shared.unmounting,
        waiting,
        |view| match wait {
            Awaited::NextOffer(f) => match render::next_offer(view, f) {
                Some(o) => Some(Ok(format!("{}\n", o.id))),
                None if tree::active_framework(view, f).is_none() => Some(Err(libc::ENOENT)),
                None => None,
            },
            Awaited::TaskEnd(t) => match render::wait_result(view, t) {
                Some(text) => Some(Ok(text)),
                None if !view.state.tasks.contains_key(t) => Some(Err(libc::ENOENT)),
                None => None,
            },
        },
    )
    .await;
    match found {
        Ok(Ok(text)) => {
            // Two reads racing on one open agree on the first answer found.
            let data = answer
                .lock()
                .expect("answer lock")
                .get_or_insert_with(|| Arc::from(text.into_bytes()))
                .clone();
            reply.data(slice_at(&data, offset, size));
        }
        Ok(Err(e)) => reply.error(errno(e)),
        Err(e) => {
            debug!(?wait, pid = waiting.pid, reason = %e, "held read ended");
            reply.error(interrupted_errno(e));
        }
    }
}

/// A read of `events_pipe`: the next lines, waiting for one if there is none; end of stream
/// once the framework is torn down.
pub(crate) async fn read_events(
    shared: Arc<Shared>,
    handle: Arc<Handle>,
    waiting: Waiting,
    offset: u64,
    size: u32,
    reply: ReplyData,
) {
    let Handle::Events {
        framework_id,
        cursor,
        ..
    } = &*handle
    else {
        return reply.error(Errno::EBADF);
    };
    let found = blocking::wait_for(&shared.copy, &shared.unmounting, waiting, |view| {
        let mut cursor = cursor.lock().expect("cursor lock");
        shared
            .events
            .read(view, framework_id, &mut cursor, offset, size as usize, true)
    })
    .await;
    match found {
        Ok(data) => reply.data(&data),
        Err(e) => {
            debug!(framework_id = %framework_id, pid = waiting.pid, reason = %e, "events read ended");
            reply.error(interrupted_errno(e));
        }
    }
}

/// A read of `stdout`/`stderr` at an offset, from the task's agent.
pub(crate) async fn read_sandbox(
    shared: Arc<Shared>,
    handle: Arc<Handle>,
    offset: u64,
    size: u32,
    reply: ReplyData,
) {
    let Handle::Sandbox { task_id, file } = &*handle else {
        return reply.error(Errno::EBADF);
    };
    let target = sandbox_target(&shared.copy.view(), task_id, file);
    let Some(target) = target else {
        return reply.error(Errno::ENOENT);
    };
    match shared
        .sandbox
        .read(
            &target.address,
            &target.task_id,
            target.file,
            offset,
            u64::from(size),
            READ_TIMEOUT,
        )
        .await
    {
        Ok(r) => reply.data(slice_at(&r.data, 0, size)),
        Err(SandboxError::Refused { status, .. }) if status.code() == tonic::Code::NotFound => {
            reply.data(&[])
        }
        // The agent will not serve it (a symlink, not a regular file, not the task user's).
        Err(SandboxError::Refused { status, .. })
            if status.code() == tonic::Code::PermissionDenied =>
        {
            warn!(task = %task_id, file, reason = %status.message(), "the agent refused the sandbox read");
            reply.error(Errno::EACCES)
        }
        Err(e) => {
            warn!(task = %task_id, file, error = %e, "sandbox read failed");
            reply.error(Errno::EIO);
        }
    }
}
