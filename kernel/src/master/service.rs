//! The `Master` gRPC service: the state stream and status from any master; writes, agent
//! sessions and the leader stream from the leader, and from any other master a refusal naming
//! the leader.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use openraft::ServerState;
use prost::bytes::Bytes;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

use super::hub::{Encoded, Hub};
use super::leader::board::EncodedLeaderEvent;
use super::leader::Leader;
use crate::client::Connector;
use crate::proto::master_server::Master as MasterRpc;
use crate::proto::{
    agent_message, AgentMessage, FollowRequest, LeaderEvent as WireLeaderEvent, LeaderReply,
    LeaderRequest, MasterMessage, StatusReply, StatusRequest, WatchEvent as WireEvent,
    WatchRequest, WriteReply, WriteRequest,
};
use crate::raft::{MasterNode, Raft};
use crate::tls::{Guard, Kind};

/// Who writes and reads the state: mounts, and operators' tools.
const WRITERS: &[Kind] = &[Kind::Mount, Kind::Operator];

/// How long a new agent session may take to send its registration.
const REGISTER_WITHIN: Duration = Duration::from_secs(10);

/// Metadata key of a refusal by a master that does not lead: the leader's address.
pub const LEADER_METADATA: &str = "mesofs-leader";

#[derive(Clone)]
pub(super) struct MasterService {
    id: u64,
    me: MasterNode,
    connector: Connector,
    raft: Raft,
    hub: Arc<Hub>,
    pub(super) leader: Arc<Mutex<Option<Arc<Leader>>>>,
    guard: Guard,
}

impl MasterService {
    pub(super) fn new(
        id: u64,
        me: MasterNode,
        connector: Connector,
        raft: Raft,
        hub: Arc<Hub>,
        leader: Arc<Mutex<Option<Arc<Leader>>>>,
        guard: Guard,
    ) -> MasterService {
        MasterService {
            id,
            me,
            connector,
            raft,
            hub,
            leader,
            guard,
        }
    }

    pub(super) fn id(&self) -> u64 {
        self.id
    }

    pub(super) fn me(&self) -> &MasterNode {
        &self.me
    }

    /// How this master dials the others.
    pub(super) fn connector(&self) -> &Connector {
        &self.connector
    }

    pub(super) fn raft(&self) -> &Raft {
        &self.raft
    }

    pub(super) fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The leader as this master knows it: id and address.
    fn known_leader(&self) -> Option<(u64, String)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        if id == self.id {
            return Some((id, self.me.addr.clone()));
        }
        let node = m.membership_config.membership().get_node(&id)?;
        Some((id, node.addr.clone()))
    }

    /// The leader's runtime, or a refusal that names the leader.
    fn leading(&self) -> Result<Arc<Leader>, Status> {
        if let Some(l) = self.leader.lock().expect("leader lock").clone() {
            return Ok(l);
        }
        let mut status = match self.known_leader() {
            Some((id, _)) if id == self.id => Status::unavailable(format!(
                "master {} does not serve as leader now: it was just elected and is catching up with the log, or it cannot reach a majority of the masters; retry",
                self.id
            )),
            Some((id, addr)) => Status::failed_precondition(format!(
                "master {} is not the leader; master {id} at {addr} is",
                self.id
            )),
            None => Status::unavailable(format!(
                "master {} knows no leader (an election is under way, or it is cut off from the majority)",
                self.id
            )),
        };
        if let Some((id, addr)) = self.known_leader().filter(|(id, _)| *id != self.id) {
            if let Ok(v) = format!("{id} {addr}").parse() {
                status.metadata_mut().insert(LEADER_METADATA, v);
            }
        }
        Err(status)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// An event of a broadcast stream, encoded once for every receiver.
trait Relayed: Send + Sync + 'static {
    /// Its position in the stream.
    fn position(&self) -> u64;
    /// Its JSON: the one encoding, shared (a copy of the handle, not of the bytes).
    fn json(&self) -> Bytes;
}

impl Relayed for Encoded {
    fn position(&self) -> u64 {
        self.index
    }

    fn json(&self) -> Bytes {
        self.json.clone()
    }
}

impl Relayed for EncodedLeaderEvent {
    fn position(&self) -> u64 {
        self.seq
    }

    fn json(&self) -> Bytes {
        self.json.clone()
    }
}

/// A receiver's stream: `first`, then every live event past position `start`. A receiver that
/// falls too far behind gets DATA_LOSS and comes again (`again` says how).
fn relay<E: Relayed, W: Send + 'static>(
    first: Vec<Bytes>,
    start: u64,
    mut live: broadcast::Receiver<Arc<E>>,
    wrap: fn(Bytes) -> W,
    again: &'static str,
) -> BoxStream<W> {
    let (tx, out) = mpsc::channel::<Result<W, Status>>(1024);
    tokio::spawn(async move {
        for json in first {
            if tx.send(Ok(wrap(json))).await.is_err() {
                return;
            }
        }
        loop {
            match live.recv().await {
                Ok(e) if e.position() <= start => {}
                Ok(e) => {
                    if tx.send(Ok(wrap(e.json()))).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(missed = n, "a receiver fell behind; ending its stream");
                    let message = format!("fell {n} events behind; {again}");
                    let _ = tx.send(Err(Status::data_loss(message))).await;
                    return;
                }
                // The stream's source is gone (for the leader stream: the leadership ended).
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Box::pin(ReceiverStream::new(out))
}

#[tonic::async_trait]
impl MasterRpc for MasterService {
    type AgentSessionStream = BoxStream<MasterMessage>;
    type WatchStream = BoxStream<WireEvent>;
    type FollowStream = BoxStream<WireLeaderEvent>;

    async fn agent_session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::AgentSessionStream>, Status> {
        let principal = self
            .guard
            .admit(&request, "register as an agent", &[Kind::Agent])?;
        let leader = self.leading()?;
        let mut inbound = request.into_inner();
        // The registration comes first; its id must be the one the certificate names.
        let first = tokio::time::timeout(REGISTER_WITHIN, inbound.message()).await;
        let register = match first {
            Ok(Ok(Some(AgentMessage {
                msg: Some(agent_message::Msg::Register(r)),
            }))) => r,
            Ok(Err(s)) => return Err(s),
            Ok(Ok(_)) => {
                return Err(Status::invalid_argument(
                    "an agent session starts with a registration",
                ))
            }
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no registration within {}s of opening the session",
                    REGISTER_WITHIN.as_secs()
                )))
            }
        };
        if let Some(p) = principal.filter(|p| p.name != register.agent_id) {
            let message = format!(
                "{p} may not register as agent {:?}: an agent registers under the name its certificate gives",
                register.agent_id
            );
            warn!("refused: {message}");
            return Err(Status::permission_denied(message));
        }
        let (in_tx, in_rx) = mpsc::channel(4096);
        // A reader task, so the session can drain whatever has arrived in one batch.
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                if in_tx.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        tokio::spawn(leader.agent_session(register, in_rx, out_tx));
        let stream = UnboundedReceiverStream::new(out_rx).map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.guard
            .admit(&request, "read the cluster's state", WRITERS)?;
        let from = request.into_inner().from_index;
        let sub = self.hub.subscribe(from).await;
        let first = sub.first.iter().map(|e| e.json.clone()).collect();
        let stream = relay(
            first,
            sub.start,
            sub.live,
            |json| WireEvent { json },
            "resume",
        );
        Ok(Response::new(stream))
    }

    async fn follow(
        &self,
        request: Request<FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        self.guard
            .admit(&request, "follow the leader's offers", WRITERS)?;
        let leader = self.leading()?;
        let Some((first, live)) = leader.board().subscribe() else {
            return Err(Status::unavailable("this leadership just ended; retry"));
        };
        let wrap = |json| WireLeaderEvent { json };
        let stream = relay(
            vec![first.json.clone()],
            first.seq,
            live,
            wrap,
            "follow again",
        );
        Ok(Response::new(stream))
    }

    async fn write(&self, request: Request<WriteRequest>) -> Result<Response<WriteReply>, Status> {
        let principal = self.guard.admit(&request, "write", WRITERS)?;
        let leader = self.leading()?;
        Ok(Response::new(
            leader.write(request.into_inner(), principal).await,
        ))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderReply>, Status> {
        // During an election, answer as soon as there is a leader rather than have every
        // agent and mount poll.
        let wait = Duration::from_millis(u64::from(request.into_inner().wait_ms).min(5_000));
        if self.known_leader().is_none() && !wait.is_zero() {
            let _ = self
                .raft
                .wait(Some(wait))
                .metrics(|m| m.current_leader.is_some(), "a leader is known")
                .await;
        }
        let term = self.raft.metrics().borrow().current_term;
        let (master_id, address) = match self.known_leader() {
            Some((id, addr)) => (format!("m{id}"), addr),
            None => (String::new(), String::new()),
        };
        Ok(Response::new(LeaderReply {
            master_id,
            address,
            term,
        }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let list = |ids: Vec<u64>| -> Vec<String> {
            ids.into_iter()
                .map(|id| {
                    let addr = membership.get_node(&id).map_or("", |n| n.addr.as_str());
                    format!("{id}={addr}")
                })
                .collect()
        };
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Follower | ServerState::Shutdown => "follower",
        };
        let (leader_id, leader_address) = self.known_leader().unwrap_or_default();
        Ok(Response::new(StatusReply {
            id: self.id,
            address: self.me.addr.clone(),
            incarnation: self.me.incarnation.clone(),
            initialized: m.last_log_index.is_some(),
            role: role.into(),
            term: m.current_term,
            leader_id,
            leader_address,
            applied: m.last_applied.map_or(0, |l| l.index),
            voters: list(membership.voter_ids().collect()),
            learners: list(membership.learner_ids().collect()),
        }))
    }
}
