//! How a master with an empty log comes into a cluster.
//!
//! - Without `--peers`: it initializes a one-master cluster of itself.
//! - With `--peers` (the initial membership, as etcd's `--initial-cluster`): the master with
//!   the lowest id initializes the cluster with every peer as a voter, once a majority of them
//!   answer and none already belongs to a cluster; the others wait to be contacted. A master
//!   whose data directory was wiped therefore never starts a second cluster beside the one its
//!   peers form: it waits, and is added back through `cluster/masters/ctl`.
//! - On a data directory that holds a log, the membership is the log's; `--peers` only draws a
//!   warning when it disagrees.

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::{info, warn};

use super::MasterError;
use crate::client::Connector;
use crate::raft::{MasterNode, Raft};

/// How often the initializing master asks its peers again while too few answer.
const RETRY: Duration = Duration::from_millis(500);
/// How long a peer has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// Initializes the cluster or starts waiting to be contacted, as described above.
pub async fn start(
    raft: &Raft,
    connector: &Connector,
    id: u64,
    me: &MasterNode,
    peers: &BTreeMap<u64, String>,
) -> Result<(), MasterError> {
    let raft_err = |e: String| MasterError::Raft(e);
    if raft
        .is_initialized()
        .await
        .map_err(|e| raft_err(e.to_string()))?
    {
        let members: BTreeMap<u64, String> = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        if !peers.is_empty() && *peers != members {
            warn!(
                ?members,
                ?peers,
                "--peers differs from the membership in the log; the log's membership stands (change it through cluster/masters/ctl)"
            );
        }
        info!(?members, "restarted with the membership in the log");
        return Ok(());
    }
    if peers.is_empty() {
        raft.initialize(BTreeMap::from([(id, me.clone())]))
            .await
            .map_err(|e| raft_err(e.to_string()))?;
        info!(id, address = %me.addr, "initialized a new one-master cluster");
        return Ok(());
    }
    let first = *peers.keys().next().expect("peers is not empty");
    if id != first {
        info!(
            initializer = first,
            "new data directory: waiting for master {first} to form the cluster, or for the leader to add this master"
        );
        return Ok(());
    }
    let (raft, connector) = (raft.clone(), connector.clone());
    let me = me.clone();
    let peers = peers.clone();
    tokio::spawn(async move { initialize_when_ready(raft, connector, id, me, peers).await });
    Ok(())
}

/// What the initializing master learned of its peers.
enum Survey {
    /// A majority answer, none is in a cluster: the membership to initialize with.
    Ready(BTreeMap<u64, MasterNode>),
    /// Too few answered yet.
    Wait(usize),
    /// A peer already belongs to a cluster, or is not who `--peers` says.
    Refuse(String),
}

async fn survey(
    connector: &Connector,
    id: u64,
    me: &MasterNode,
    peers: &BTreeMap<u64, String>,
) -> Survey {
    let asks = peers
        .iter()
        .filter(|(p, _)| **p != id)
        .map(|(p, addr)| async move {
            let ask = crate::client::master_status(connector, addr);
            let reply = tokio::time::timeout(ASK_TIMEOUT, ask).await;
            (*p, addr.clone(), reply)
        });
    let mut members = BTreeMap::from([(id, me.clone())]);
    let mut answered = 1;
    for (peer, addr, reply) in futures::future::join_all(asks).await {
        let incarnation = match reply {
            Ok(Ok(s)) if s.id != peer => {
                return Survey::Refuse(format!(
                    "--peers lists master {peer} at {addr}, but master {} answers there",
                    s.id
                ))
            }
            Ok(Ok(s)) if s.initialized => {
                return Survey::Refuse(format!(
                    "master {peer} at {addr} already belongs to a cluster; this master does not form another: it waits to be added (echo 'add {id} {}' > cluster/masters/ctl, after `remove {id}` if it was a member whose data directory was lost)",
                    me.addr
                ))
            }
            Ok(Ok(s)) => {
                answered += 1;
                s.incarnation
            }
            // Not up yet: it joins when it comes, whatever its data directory.
            _ => String::new(),
        };
        members.insert(peer, MasterNode { addr, incarnation });
    }
    if answered * 2 > peers.len() {
        Survey::Ready(members)
    } else {
        Survey::Wait(answered)
    }
}

async fn initialize_when_ready(
    raft: Raft,
    connector: Connector,
    id: u64,
    me: MasterNode,
    peers: BTreeMap<u64, String>,
) {
    let mut said = None;
    loop {
        if raft.is_initialized().await.unwrap_or(true) {
            return;
        }
        match survey(&connector, id, &me, &peers).await {
            Survey::Ready(members) => {
                match raft.initialize(members.clone()).await {
                    Ok(()) => info!(
                        ?members,
                        "formed a new cluster of {} masters",
                        members.len()
                    ),
                    Err(e) => warn!(error = %e, "could not form the cluster"),
                }
                return;
            }
            Survey::Refuse(why) => {
                warn!("not forming a cluster: {why}");
                return;
            }
            Survey::Wait(answered) => {
                if said != Some(answered) {
                    info!(
                        answered,
                        of = peers.len(),
                        "waiting for a majority of --peers to answer before forming the cluster"
                    );
                    said = Some(answered);
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}
