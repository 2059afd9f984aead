//! When this master acts as leader: it starts the leader's runtime once it leads and has
//! applied the whole committed log, and stops it at once when it loses the leadership or stops
//! hearing from a majority (a leader cut off from the others must not go on making offers and
//! holding agents that the new leader needs).

use std::sync::Arc;
use std::time::Duration;

use openraft::{ChangeMembers, ServerState};
use tracing::{info, warn};

use super::leader::{Leader, LeaderConfig};
use super::service::MasterService;
use crate::watch::LeaderInfo;

/// How often the leadership is checked besides when Raft's metrics change.
const CHECK: Duration = Duration::from_millis(50);

/// Follows this master's leadership for as long as the master runs.
pub(super) async fn follow(service: MasterService, config: LeaderConfig, lease: Duration) {
    let mut metrics = service.raft().metrics();
    let mut current: Option<(u64, Arc<Leader>)> = None;
    // Offer ids go on from the last runtime's when a new one starts at the same log index.
    let mut numbering = (0u64, 0u64);
    loop {
        let m = metrics.borrow_and_update().clone();
        let leader = m.state == ServerState::Leader && m.current_leader == Some(service.id());
        let quorum = m
            .millis_since_quorum_ack
            .is_some_and(|ms| ms <= lease.as_millis() as u64);
        if let Some((term, runtime)) = &current {
            let why = if !leader {
                Some("it no longer leads")
            } else if *term != m.current_term {
                Some("a new term began")
            } else if !quorum {
                Some("it has not heard from a majority of the masters in time")
            } else {
                None
            };
            if let Some(why) = why {
                warn!(term, "this master stops acting as leader: {why}");
                numbering = runtime.offer_numbering();
                runtime.stop();
                *service.leader.lock().expect("leader lock") = None;
                current = None;
            }
        }
        // Serve only once an entry of this term is applied: everything committed before it
        // is applied too, so the runtime starts from the whole state.
        let caught_up = m
            .last_applied
            .is_some_and(|l| l.leader_id.term == m.current_term);
        if current.is_none() && leader && quorum && caught_up {
            let epoch = m.last_applied.map_or(0, |l| l.index);
            let offer_seq = if numbering.0 == epoch { numbering.1 } else { 0 };
            let info = LeaderInfo {
                id: service.id(),
                address: service.me().addr.clone(),
                term: m.current_term,
            };
            info!(term = m.current_term, epoch, "this master leads");
            let runtime = Leader::new(
                service.raft().clone(),
                service.connector().clone(),
                service.hub().clone(),
                config.clone(),
                info,
                epoch,
                offer_seq,
            );
            runtime.run_proposer();
            runtime.run_allocator();
            runtime.watch_absent_agents();
            runtime.watch_masters();
            *service.leader.lock().expect("leader lock") = Some(runtime.clone());
            current = Some((m.current_term, runtime));
            update_own_address(&service, &m);
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(CHECK) => {}
        }
    }
}

/// Records this master's current address and incarnation in the membership if they differ
/// from what it holds (a master started on another port, or a membership from before
/// incarnations).
fn update_own_address(
    service: &MasterService,
    m: &openraft::RaftMetrics<u64, crate::raft::MasterNode>,
) {
    let me = service.me().clone();
    let recorded = m
        .membership_config
        .membership()
        .get_node(&service.id())
        .cloned();
    if recorded.as_ref() == Some(&me) {
        return;
    }
    let raft = service.raft().clone();
    let id = service.id();
    tokio::spawn(async move {
        let change = ChangeMembers::SetNodes(std::collections::BTreeMap::from([(id, me.clone())]));
        match raft.change_membership(change, true).await {
            Ok(_) => info!(address = %me, "recorded this master's address in the membership"),
            Err(e) => warn!(error = %e, "could not record this master's address in the membership"),
        }
    });
}
