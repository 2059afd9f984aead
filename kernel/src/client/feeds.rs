//! The two streams that feed a local copy, each reconnecting for as long as the client lives:
//!
//! - the state stream, from the first master in order that serves it (any master, leader or
//!   not), resumed from the index the copy has applied, whichever master it comes from; a
//!   master that falls behind the leader is left for the next one;
//! - the leader stream, from whichever master leads; when it ends the copy has no leader and
//!   drops the leader's offers until the next leader's stream starts.

use std::time::Duration;

use tracing::{debug, error, info};

use super::{LocalCopy, MasterClient};
use crate::proto::{FollowRequest, WatchRequest};
use crate::watch::{LeaderEvent, StateEvent};

/// How far (in log entries) the state stream's master may trail the leader's applied index...
const STALE_LAG: u64 = 16;
/// ...and for how long, before the copy reads another master.
const STALE_FOR: Duration = Duration::from_secs(3);

/// How a state stream ended.
enum Ended {
    /// It delivered events, then broke or ended.
    AfterEvents(String),
    /// It failed before delivering any.
    Failed(String),
    /// Its master trails the leader.
    Stale,
}

/// Feeds `copy` the state stream for as long as the process runs.
pub(super) async fn state(client: MasterClient, copy: LocalCopy) {
    let mut next = 0usize;
    let mut failures = 0usize;
    loop {
        let masters = client.masters();
        if masters.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let addr = masters[next % masters.len()].clone();
        let ended = stream_state(&client, &copy, &addr).await;
        copy.set_streams(Some(false), None);
        match ended {
            Ended::AfterEvents(why) => {
                info!(master = %addr, reason = %why, "state stream ended; resuming");
                failures = 0;
                next = 0;
            }
            Ended::Stale => {
                info!(master = %addr, "this master trails the leader; reading another");
                next += 1;
            }
            Ended::Failed(why) => {
                debug!(master = %addr, reason = %why, "no state stream from this master");
                next += 1;
                failures += 1;
                if failures.is_multiple_of(masters.len()) {
                    let backoff = 50u64 << (failures / masters.len()).min(4);
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
            }
        }
    }
}

async fn stream_state(client: &MasterClient, copy: &LocalCopy, addr: &str) -> Ended {
    let from_index = {
        let v = copy.view();
        if v.generation == 0 {
            0
        } else {
            v.index
        }
    };
    let mut master = super::master_rpc(client.connector().channel(addr));
    let call = master.watch(WatchRequest { from_index });
    let mut stream = match tokio::time::timeout(super::ASK_TIMEOUT, call).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) => {
            if super::refused_identity(&s) {
                error!(master = %addr, reason = %s.message(), "the master refused to serve this mount its state");
            }
            return Ended::Failed(s.message().to_string());
        }
        Err(_) => return Ended::Failed("no answer".into()),
    };
    let mut delivered = false;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let mut behind_since: Option<tokio::time::Instant> = None;
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = check.tick() => {
                if trails_leader(copy) {
                    let since = *behind_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= STALE_FOR {
                        return Ended::Stale;
                    }
                } else {
                    behind_since = None;
                }
                continue;
            }
        };
        let ended = |why: String| {
            if delivered {
                Ended::AfterEvents(why)
            } else {
                Ended::Failed(why)
            }
        };
        match msg {
            Ok(Some(m)) => match serde_json::from_slice::<StateEvent>(&m.json) {
                Ok(event) => {
                    if !delivered {
                        delivered = true;
                        info!(master = %addr, from_index, "reading the cluster state from this master");
                        copy.set_streams(Some(true), None);
                    }
                    client.answered();
                    copy.apply_state(event);
                }
                Err(e) => return ended(format!("bad state event: {e}")),
            },
            Ok(None) => return ended("the master ended the stream".into()),
            Err(s) => return ended(s.message().to_string()),
        }
    }
}

/// Whether the copy trails what the leader says it has applied.
fn trails_leader(copy: &LocalCopy) -> bool {
    let v = copy.view();
    let Some(leader) = &v.leader else {
        return false;
    };
    v.masters
        .iter()
        .find(|m| m.id == leader.id)
        .is_some_and(|m| m.applied > v.index + STALE_LAG)
}

/// Feeds `copy` the leader stream for as long as the process runs.
pub(super) async fn leader(client: MasterClient, copy: LocalCopy) {
    let mut backoff = Duration::from_millis(20);
    loop {
        match client.leader_channel().await {
            Ok(ch) => match follow(&client, &copy, ch).await {
                Ok(why) => {
                    client.forget_leader();
                    info!(reason = %why, "leader stream ended; finding the leader");
                    copy.leader_lost(&why);
                    backoff = Duration::from_millis(20);
                    continue;
                }
                Err(why) => {
                    debug!(reason = %why, "no leader stream");
                    copy.leader_lost("the leader is unreachable");
                }
            },
            Err((_, why)) => {
                debug!(reason = %why, "no leader to follow");
                copy.leader_lost("no master leads");
            }
        }
        tokio::time::sleep(backoff).await;
        // Asking a few masters who leads is cheap; finding the new leader fast is not.
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
}

/// Follows one leader's stream. `Ok(why)` once it delivered events and ended; `Err(why)` when
/// it failed before.
async fn follow(
    client: &MasterClient,
    copy: &LocalCopy,
    ch: tonic::transport::Channel,
) -> Result<String, String> {
    let mut stream = match super::master_rpc(ch).follow(FollowRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            if super::refused_identity(&s) {
                error!(reason = %s.message(), "the leader refused to serve this mount its offers");
            }
            // A master that does not lead names the one that does (or none).
            if s.code() == tonic::Code::FailedPrecondition {
                client.follow_refusal(&s);
            } else {
                client.forget_leader();
            }
            return Err(s.message().to_string());
        }
    };
    let mut leader = None;
    loop {
        let why = match stream.message().await {
            Ok(Some(m)) => match serde_json::from_slice::<LeaderEvent>(&m.json) {
                Ok(event) => {
                    client.answered();
                    match &event {
                        LeaderEvent::Leading {
                            leader: l, masters, ..
                        } => {
                            leader = Some(format!("m{}", l.id));
                            client.learn(masters.iter().map(|m| m.address.clone()));
                            copy.apply_leader(&event);
                            copy.set_streams(None, Some(true));
                            info!(leader = %l, "following the leader");
                        }
                        LeaderEvent::Masters { masters, .. } => {
                            client.learn(masters.iter().map(|m| m.address.clone()));
                            copy.apply_leader(&event);
                        }
                        _ => copy.apply_leader(&event),
                    }
                    continue;
                }
                Err(e) => format!("bad leader event: {e}"),
            },
            Ok(None) => "stopped leading".to_string(),
            Err(s) => {
                debug!(error = %s.message(), "the leader stream broke");
                "is unreachable".to_string()
            }
        };
        return match leader {
            Some(l) => Ok(format!("leader {l} {why}")),
            None => {
                client.forget_leader();
                Err(why)
            }
        };
    }
}
