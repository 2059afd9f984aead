//! The masters: adding and removing them (`cluster/masters/ctl`), and watching their roles and
//! applied indexes for `cluster/masters/<id>/`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;
use tracing::info;

use super::writes::Writer;
use super::{after, refuse, Leader, Refusal};
use crate::acls::Action;
use crate::raft::MasterNode;
use crate::watch::MasterStatus;

/// How often the leader asks every master for its status.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a master has to answer before it is shown `unreachable`.
const POLL_TIMEOUT: Duration = Duration::from_millis(800);
/// How long an added master has to catch up with the log before the `add` fails.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// One line written to `cluster/masters/ctl`.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    Add(u64, String),
    Remove(u64),
}

const USAGE: &str = "write `add ID HOST:PORT` or `remove ID`";

fn parse(text: &str) -> Result<Change, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let id = |w: &str| {
        w.parse::<u64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| format!("invalid master id {w:?}: a positive whole number; {USAGE}"))
    };
    match words.as_slice() {
        ["add", i, addr] => {
            let valid = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(format!("invalid address {addr:?}: HOST:PORT; {USAGE}"));
            }
            Ok(Change::Add(id(i)?, addr.to_string()))
        }
        ["remove", i] => Ok(Change::Remove(id(i)?)),
        _ => Err(format!("cannot read {:?}: {USAGE}", text.trim())),
    }
}

impl Leader {
    /// Handles a write to `cluster/masters/ctl`; only root may change the masters.
    pub(super) async fn change_membership(
        &self,
        writer: &Writer,
        text: &str,
    ) -> Result<u64, Refusal> {
        if !writer.is_root() {
            return Err(refuse(
                libc::EACCES,
                format!(
                    "only root may change the masters ({} tried)",
                    writer.describe()
                ),
            ));
        }
        self.permit(writer, Action::ChangeMembership, "")?;
        let change = parse(text).map_err(|e| refuse(libc::EINVAL, e))?;
        let membership = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let nodes: BTreeMap<u64, MasterNode> =
            membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let failed = |e: String| refuse(libc::EIO, e);
        match change {
            Change::Add(id, addr) => {
                let status = crate::client::master_status(&self.connector, &addr)
                    .await
                    .map_err(|e| {
                    refuse(
                        libc::ECONNREFUSED,
                        format!("cannot reach a master at {addr} ({e}); start it first (mesofs master --id {id} ...)"),
                    )
                })?;
                if status.id != id {
                    return Err(refuse(
                        libc::EINVAL,
                        format!("the master at {addr} is master {}, not {id}", status.id),
                    ));
                }
                let node = MasterNode {
                    addr: addr.clone(),
                    incarnation: status.incarnation.clone(),
                };
                match nodes.get(&id) {
                    Some(n) if *n == node && voters.contains(&id) => {
                        info!(master = id, "already a voting member");
                        return Ok(0);
                    }
                    Some(n) if n.incarnation != node.incarnation => {
                        return Err(refuse(
                            libc::EEXIST,
                            format!("master {id} is a member with another data directory ({n}); `remove {id}` first"),
                        ));
                    }
                    _ => {}
                }
                if status.initialized && !nodes.contains_key(&id) {
                    return Err(refuse(
                        libc::EBUSY,
                        format!("the master at {addr} already holds a Raft log of its own: it belongs to a cluster; wipe its data directory to add it here"),
                    ));
                }
                info!(master = id, %addr, "adding a master: as a learner until it has caught up");
                let added = tokio::time::timeout(
                    CATCH_UP_TIMEOUT,
                    self.raft.add_learner(id, node, true),
                )
                .await
                .map_err(|_| {
                    refuse(
                        libc::ETIMEDOUT,
                        format!("master {id} did not catch up within {}s; it stays a learner: write `add {id} {addr}` again to make it a voter, or `remove {id}`", CATCH_UP_TIMEOUT.as_secs()),
                    )
                })?;
                added.map_err(|e| failed(format!("could not add master {id}: {e}")))?;
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(|e| failed(format!("could not make master {id} a voter: {e}")))?;
                info!(master = id, "master added as a voter");
            }
            Change::Remove(id) => {
                if !nodes.contains_key(&id) {
                    return Err(refuse(
                        libc::ENOENT,
                        format!("no master {id} in the cluster"),
                    ));
                }
                let change = if voters.contains(&id) {
                    if voters.len() == 1 {
                        return Err(refuse(
                            libc::EINVAL,
                            format!(
                                "master {id} is the only voter; add another before removing it"
                            ),
                        ));
                    }
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                self.raft
                    .change_membership(change, false)
                    .await
                    .map_err(|e| failed(format!("could not remove master {id}: {e}")))?;
                info!(master = id, "master removed");
            }
        }
        self.refresh_masters().await;
        // Visible in the leader stream (the masters' list), not in the state stream.
        Ok(0)
    }

    /// Asks every master for its role and applied index, and announces them when they change.
    pub(super) async fn refresh_masters(&self) {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let polls = membership.nodes().map(|(id, node)| {
            let (id, node) = (*id, node.clone());
            let voter = voters.contains(&id);
            let me = self.leader.id;
            let applied = metrics.last_applied.map_or(0, |l| l.index);
            async move {
                let (role, applied) = if id == me {
                    ("leader".to_string(), applied)
                } else {
                    match tokio::time::timeout(
                        POLL_TIMEOUT,
                        crate::client::master_status(&self.connector, &node.addr),
                    )
                    .await
                    {
                        // Another incarnation answering at its address (its data directory
                        // was wiped) is not this member.
                        Ok(Ok(s))
                            if s.id == id
                                && (node.incarnation.is_empty()
                                    || s.incarnation == node.incarnation) =>
                        {
                            let role = if voter { s.role } else { "learner".to_string() };
                            (role, s.applied)
                        }
                        _ => ("unreachable".to_string(), 0),
                    }
                };
                MasterStatus {
                    id,
                    address: node.addr,
                    role,
                    applied,
                }
            }
        });
        let masters = futures::future::join_all(polls).await;
        self.board.set_masters(masters);
    }

    /// Keeps the masters' list current while this leadership lasts.
    pub fn watch_masters(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                match me.upgrade() {
                    Some(l) if !l.is_stopped() => l.refresh_masters().await,
                    _ => return,
                }
                if after(&me, POLL_INTERVAL).await.is_none() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_lines_are_add_with_an_address_or_remove() {
        assert_eq!(
            parse("add 3 m3.example:5050\n"),
            Ok(Change::Add(3, "m3.example:5050".into()))
        );
        assert_eq!(parse("  remove 2 "), Ok(Change::Remove(2)));
        for bad in [
            "",
            "add 3",
            "add x m3:5050",
            "add 0 m3:5050",
            "add 3 m3",
            "add 3 :5050",
            "add 3 m3:port",
            "remove",
            "remove two",
            "drop 3",
            "add 3 m3:5050 extra",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
