//! Writes that are commands: a write(2) to `launch`, `decline` or `kill`, a `mkdir` or a
//! `rmdir` under `/frameworks`. Each is sent whole to the leader; it returns once committed and
//! visible in the local copy (read your writes), or refused with the master's errno once the
//! refusal's reason is visible too.

use std::time::Duration;

use mesofs_kernel::client::{LocalCopy, MasterClient, WriteError};
use mesofs_kernel::proto;
use mesofs_kernel::proto::write_request::Op;
use mesofs_kernel::watch::{View, WatchEvent};
use tracing::{info, warn};

use crate::tree::Node;
use crate::tree::{active_framework, OfferFile, TaskFile};

/// How long a committed write waits for the local copy to show it before returning anyway.
pub const VISIBLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused write waits for its reason to show in `error` before returning anyway.
pub const REFUSAL_VISIBLE_TIMEOUT: Duration = Duration::from_secs(2);

/// The command a write to a control file sends, or the errno when it cannot be sent.
pub fn control_op(view: &View, node: &Node, data: &[u8]) -> Result<Op, WriteError> {
    let text = std::str::from_utf8(data)
        .map_err(|_| WriteError::new(libc::EINVAL, "the text written is not UTF-8"))?
        .to_string();
    let framework = |id: &str| {
        active_framework(view, id)
            .map(|f| f.name.clone())
            .ok_or_else(|| WriteError::new(libc::ENOENT, "the framework is gone"))
    };
    Ok(match node {
        Node::OfferFile(f, offer, OfferFile::Launch) => Op::Launch(proto::Launch {
            framework: framework(f)?,
            offer_id: offer.clone(),
            text,
        }),
        Node::OfferFile(f, offer, OfferFile::Decline) => Op::Decline(proto::Decline {
            framework: framework(f)?,
            offer_id: offer.clone(),
            text,
        }),
        Node::TaskFile(f, task, TaskFile::Kill) => Op::Kill(proto::Kill {
            framework: framework(f)?,
            task: task.clone(),
        }),
        _ => return Err(WriteError::new(libc::EBADF, "not a control file")),
    })
}

/// Records a write the mount refuses by itself the way the master records its refusals: in
/// the framework's `error` file and as an `error` line of its `events`. It is applied to the
/// view under its lock at the view's own sequence number, so no sequence number moves; blocked
/// `events` readers see it at their next check (every [`crate::blocking::SIGNAL_CHECK`]).
pub fn record_refusal(copy: &LocalCopy, framework_id: &str, message: &str) {
    let mut view = copy.view();
    if active_framework(&view, framework_id).is_none() {
        return;
    }
    let seq = view.seq;
    view.apply(&WatchEvent::Refused {
        seq,
        framework_id: framework_id.to_string(),
        message: message.to_string(),
    });
}

/// The framework name a command is about.
pub fn op_framework(op: &Op) -> &str {
    match op {
        Op::RegisterFramework(r) => &r.name,
        Op::TeardownFramework(r) => &r.name,
        Op::Launch(r) => &r.framework,
        Op::Decline(r) => &r.framework,
        Op::Kill(r) => &r.framework,
    }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::RegisterFramework(_) => "register",
        Op::TeardownFramework(_) => "teardown",
        Op::Launch(_) => "launch",
        Op::Decline(_) => "decline",
        Op::Kill(_) => "kill",
    }
}

/// Sends one command as `uid`/`gid` and waits until its outcome is visible in the local copy.
pub async fn send(
    client: &MasterClient,
    copy: &LocalCopy,
    uid: u32,
    gid: u32,
    op: Op,
) -> Result<(), WriteError> {
    let framework = op_framework(&op).to_string();
    let command = op_name(&op);
    let task = match &op {
        Op::Kill(k) => k.task.clone(),
        _ => String::new(),
    };
    match client.write(uid, gid, op).await {
        Ok(seq) => {
            if !visible(copy, seq, VISIBLE_TIMEOUT).await {
                warn!(%framework, command, seq, "write committed but not yet in the local copy; returning anyway");
            }
            Ok(())
        }
        Err(e) => {
            info!(%framework, %task, command, uid, errno = e.errno, reason = %e.message, "write refused");
            // The master records the reason as a Refused event of the framework, at e.seq
            // (0 when it did not get that far): wait for it so `error` shows it on return.
            if e.seq > 0 {
                visible(copy, e.seq, REFUSAL_VISIBLE_TIMEOUT).await;
            }
            Err(e)
        }
    }
}

/// Waits until the local copy has applied `seq`, or a new snapshot arrived (the stream
/// restarted, maybe numbered by another leader; a snapshot holds every committed write).
async fn visible(copy: &LocalCopy, seq: u64, timeout: Duration) -> bool {
    let generation = copy.view().generation;
    copy.wait_until_async(timeout, |v| v.seq >= seq || v.generation != generation)
        .await
}

/// `mkdir NAME`: registers a framework.
pub fn register(name: &str) -> Op {
    Op::RegisterFramework(proto::RegisterFramework {
        name: name.to_string(),
    })
}

/// `rmdir NAME`: tears a framework down.
pub fn teardown(name: &str) -> Op {
    Op::TeardownFramework(proto::TeardownFramework {
        name: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::standard;

    #[test]
    fn a_refusal_of_the_mount_shows_in_error_and_events_without_moving_the_sequence() {
        let (c, hello, _) = standard("127.0.0.1:1");
        let seq = c.copy.view().seq;
        record_refusal(&c.copy, &hello, "write too large");
        let view = c.copy.view();
        assert_eq!(view.seq, seq);
        assert_eq!(
            view.errors.get(&hello).map(String::as_str),
            Some("write too large\n")
        );
        let log = view.events.get(&hello).expect("events");
        assert_eq!(
            log.lines.back().map(String::as_str),
            Some("error write too large\n")
        );
    }
}
