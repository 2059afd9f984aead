//! Writes that are commands: a write(2) to `launch`, `decline`, `kill` or `cluster/masters/ctl`,
//! a `mkdir` or a `rmdir` under `/frameworks`. Each is sent whole to the leader; it returns once
//! committed and visible in the local copy (read your writes: the copy has applied the log
//! index of the write's effect), or refused with the master's errno once the refusal's reason
//! is visible too.

use std::time::Duration;

use mesofs_kernel::client::{LocalCopy, MasterClient, WriteError, Writer, Written};
use mesofs_kernel::proto;
use mesofs_kernel::proto::write_request::Op;
use mesofs_kernel::watch::View;
use tracing::{info, warn};

use crate::tree::Node;
use crate::tree::{active_framework, FrameworkFile, OfferFile, TaskFile};

/// How long a committed write waits for the local copy to show it before failing with
/// ETIMEDOUT.
pub const VISIBLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write waits for its effect on offers (from the leader stream) to show.
pub const OFFERS_VISIBLE_TIMEOUT: Duration = Duration::from_secs(2);
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
        Node::OfferFile(f, offer, file @ (OfferFile::Reserve | OfferFile::Unreserve)) => {
            Op::Reserve(proto::Reserve {
                framework: framework(f)?,
                offer_id: offer.clone(),
                text,
                unreserve: *file == OfferFile::Unreserve,
            })
        }
        Node::TaskFile(f, task, TaskFile::Kill) => Op::Kill(proto::Kill {
            framework: framework(f)?,
            task: task.clone(),
        }),
        Node::MastersCtl => Op::Membership(proto::Membership { text }),
        Node::FrameworkFile(f, FrameworkFile::Role) => Op::SetRoles(proto::SetRoles {
            framework: framework(f)?,
            text,
        }),
        Node::FrameworkFile(f, file @ (FrameworkFile::Suppressed | FrameworkFile::Revive)) => {
            Op::Suppress(proto::Suppress {
                framework: framework(f)?,
                text,
                revive: *file == FrameworkFile::Revive,
            })
        }
        Node::FrameworkFile(f, FrameworkFile::Optimistic) => Op::Optimistic(proto::Optimistic {
            framework: framework(f)?,
            text,
        }),
        Node::RoleFile(role, file) => Op::ConfigureRole(proto::ConfigureRole {
            role: role.clone(),
            file: file.name().to_string(),
            text,
        }),
        _ => return Err(WriteError::new(libc::EBADF, "not a control file")),
    })
}

/// Records a write the mount refuses by itself the way the master records its refusals: in
/// the framework's `error` file and as an `error` line of its `events`. It is applied to the
/// view under its lock at the view's own sequence number, so no sequence number moves; blocked
/// `events` readers see it at their next check (every [`crate::blocking::SIGNAL_CHECK`]).
pub fn record_refusal(copy: &LocalCopy, framework_id: &str, message: &str) {
    let mut view = copy.view_mut();
    if active_framework(&view, framework_id).is_none() {
        return;
    }
    view.record_refusal(framework_id, message);
}

/// Records a reason in the `error` and `events` of the framework named `name`, if registered.
fn record_for_name(copy: &LocalCopy, name: &str, message: &str) {
    let mut view = copy.view_mut();
    let Some(id) = view.state.framework_by_name(name).map(|f| f.id.clone()) else {
        return;
    };
    view.record_refusal(&id, message);
}

/// The framework name a command is about.
pub fn op_framework(op: &Op) -> &str {
    match op {
        Op::RegisterFramework(r) => &r.name,
        Op::TeardownFramework(r) => &r.name,
        Op::Launch(r) => &r.framework,
        Op::Decline(r) => &r.framework,
        Op::Reserve(r) => &r.framework,
        Op::Kill(r) => &r.framework,
        Op::SetRoles(r) => &r.framework,
        Op::Suppress(r) => &r.framework,
        Op::Optimistic(r) => &r.framework,
        Op::Membership(_) | Op::ConfigureRole(_) => "",
    }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::RegisterFramework(_) => "register",
        Op::TeardownFramework(_) => "teardown",
        Op::Launch(_) => "launch",
        Op::Decline(_) => "decline",
        Op::Reserve(r) if r.unreserve => "unreserve",
        Op::Reserve(_) => "reserve",
        Op::Kill(_) => "kill",
        Op::Membership(_) => "membership",
        Op::SetRoles(_) => "roles",
        Op::Suppress(r) if r.revive => "revive",
        Op::Suppress(_) => "suppress",
        Op::Optimistic(_) => "optimistic",
        Op::ConfigureRole(_) => "role settings",
    }
}

/// Sends one command for `writer` and waits until its outcome is visible in the local copy.
pub async fn send(
    client: &MasterClient,
    copy: &LocalCopy,
    writer: &Writer,
    op: Op,
) -> Result<(), WriteError> {
    let uid = writer.uid;
    let framework = op_framework(&op).to_string();
    let command = op_name(&op);
    let task = match &op {
        Op::Kill(k) => k.task.clone(),
        _ => String::new(),
    };
    match client.write(writer, op).await {
        Ok(written) => visible(copy, &written).await.inspect_err(|e| {
            warn!(%framework, command, index = written.index, reason = %e.message, "write committed but not visible here");
            // Said where the writer reads refusals, though this write took effect.
            record_for_name(copy, &framework, &e.message);
        }),
        Err(e) => {
            info!(%framework, %task, command, uid, errno = e.errno, reason = %e.message, "write refused");
            // The leader records the reason as a Refused event of the framework in its stream:
            // wait for it so `error` shows it on return; if this copy follows another leader
            // by now, record it here (a refused mkdir names no framework of the writer's).
            let (term, seq) = (e.term, e.leader_seq);
            let shown = |v: &View| {
                v.leader
                    .as_ref()
                    .is_some_and(|l| l.term == term && v.leader_seq >= seq)
            };
            if seq > 0 {
                copy.wait_until_async(REFUSAL_VISIBLE_TIMEOUT, |v| {
                    shown(v) || v.leader.as_ref().is_some_and(|l| l.term > term)
                })
                .await;
            }
            if !shown(&copy.view()) && command != "register" {
                record_for_name(copy, &framework, &e.message);
            }
            Err(e)
        }
    }
}

/// Waits until the local copy shows a committed write: its log index applied (or the write
/// fails with ETIMEDOUT), then, briefly, its effect on the leader's offers.
async fn visible(copy: &LocalCopy, written: &Written) -> Result<(), WriteError> {
    let index = written.index;
    if !copy.wait_for_index(index, VISIBLE_TIMEOUT).await {
        let have = copy.view().index;
        return Err(WriteError::new(
            libc::ETIMEDOUT,
            format!(
                "the write took effect (log index {index}), but this mount's copy of the cluster did not catch up within {}s (it has applied index {have}): the master it reads from is behind or unreachable; read again later",
                VISIBLE_TIMEOUT.as_secs()
            ),
        ));
    }
    let (term, seq) = (written.term, written.leader_seq);
    copy.wait_until_async(OFFERS_VISIBLE_TIMEOUT, |v| match &v.leader {
        Some(l) if l.term == term => v.leader_seq >= seq,
        // Another leadership (or none): the write's offers are gone anyway.
        _ => true,
    })
    .await;
    Ok(())
}

/// `mkdir NAME` by `user`: registers a framework owned by that user name.
pub fn register(name: &str, user: &str) -> Op {
    Op::RegisterFramework(proto::RegisterFramework {
        name: name.to_string(),
        user: user.to_string(),
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
    fn a_refusal_of_the_mount_shows_in_error_and_events_without_moving_any_position() {
        let (c, hello, _) = standard("127.0.0.1:1");
        let (index, seq) = {
            let v = c.copy.view();
            (v.index, v.leader_seq)
        };
        record_refusal(&c.copy, &hello, "write too large");
        let view = c.copy.view();
        assert_eq!((view.index, view.leader_seq), (index, seq));
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
