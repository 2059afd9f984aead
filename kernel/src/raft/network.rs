//! The Raft network over gRPC: each RPC carries openraft's own request and result as JSON.
//!
//! Every request names the master it is meant for (its id and the incarnation of its data
//! directory, as the membership records them) in gRPC metadata, and a master refuses requests
//! meant for another: a master whose data directory was wiped, or a different master started
//! at a member's address, must not be taken for the member that voted and stored the log.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;
use tonic::{Request, Status};

use super::{MasterNode, Raft, TypeConfig};
use crate::client::Connector;
use crate::limits::MAX_RAFT_MESSAGE;
use crate::proto::raft_client::RaftClient;
use crate::proto::raft_server;
use crate::proto::RaftPayload;
use crate::tls::{Guard, Kind};

type NodeId = u64;

/// Metadata key: the id of the master a Raft request is meant for.
const TARGET_ID: &str = "mesofs-target-id";
/// Metadata key: the incarnation of the master a Raft request is meant for.
const TARGET_INCARNATION: &str = "mesofs-target-incarnation";

/// Makes a gRPC client per peer master, dialing as this master.
#[derive(Clone, Default)]
pub struct GrpcNetworkFactory {
    connector: Connector,
}

impl GrpcNetworkFactory {
    /// A factory whose clients dial through `connector`.
    pub fn new(connector: Connector) -> GrpcNetworkFactory {
        GrpcNetworkFactory { connector }
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetworkFactory {
    type Network = GrpcNetwork;

    async fn new_client(&mut self, target: NodeId, node: &MasterNode) -> GrpcNetwork {
        GrpcNetwork {
            target,
            node: node.clone(),
            connector: self.connector.clone(),
            client: None,
        }
    }
}

/// The connection to one peer master.
pub struct GrpcNetwork {
    target: NodeId,
    node: MasterNode,
    connector: Connector,
    client: Option<RaftClient<Channel>>,
}

impl GrpcNetwork {
    async fn client<E: std::error::Error>(
        &mut self,
    ) -> Result<RaftClient<Channel>, RPCError<NodeId, MasterNode, E>> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let ch = self
            .connector
            .connect(&self.node.addr)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let c = RaftClient::new(ch)
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE);
        self.client = Some(c.clone());
        Ok(c)
    }

    /// The request for this peer: the payload, who it is meant for, and openraft's deadline
    /// (a request to a peer behind a cut link must not hang for TCP's timeouts).
    fn request<T: Serialize>(&self, value: &T, timeout: Duration) -> Request<RaftPayload> {
        let mut req = Request::new(RaftPayload {
            json: serde_json::to_vec(value).expect("raft messages serialize"),
        });
        req.set_timeout(timeout);
        let meta = req.metadata_mut();
        if let Ok(v) = self.target.to_string().parse() {
            meta.insert(TARGET_ID, v);
        }
        if !self.node.incarnation.is_empty() {
            if let Ok(v) = self.node.incarnation.parse() {
                meta.insert(TARGET_INCARNATION, v);
            }
        }
        req
    }

    fn decode<T: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        payload: RaftPayload,
    ) -> Result<T, RPCError<NodeId, MasterNode, RaftError<NodeId, E>>> {
        let result: Result<T, RaftError<NodeId, E>> = serde_json::from_slice(&payload.json)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }

    fn transport<E: std::error::Error>(
        &mut self,
        status: Status,
    ) -> RPCError<NodeId, MasterNode, E> {
        // Drop the channel so the next call reconnects.
        self.client = None;
        if matches!(
            status.code(),
            tonic::Code::FailedPrecondition
                | tonic::Code::PermissionDenied
                | tonic::Code::Unauthenticated
        ) {
            // Not the master the membership names, or refused our certificate: say so loudly,
            // it needs an operator.
            tracing::warn!(target = self.target, address = %self.node.addr, error = %status.message(), "raft peer refused");
        } else {
            tracing::debug!(target = self.target, error = %status.message(), "raft rpc failed");
        }
        RPCError::Unreachable(Unreachable::new(&status))
    }
}

impl RaftNetwork<TypeConfig> for GrpcNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MasterNode, RaftError<NodeId>>>
    {
        let mut c = self.client().await?;
        match c
            .append_entries(self.request(&rpc, option.hard_ttl()))
            .await
        {
            Ok(r) => self.decode(r.into_inner()),
            Err(s) => Err(self.transport(s)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, MasterNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let mut c = self.client().await?;
        match c
            .install_snapshot(self.request(&rpc, option.hard_ttl()))
            .await
        {
            Ok(r) => self.decode(r.into_inner()),
            Err(s) => Err(self.transport(s)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MasterNode, RaftError<NodeId>>> {
        let mut c = self.client().await?;
        match c.vote(self.request(&rpc, option.hard_ttl())).await {
            Ok(r) => self.decode(r.into_inner()),
            Err(s) => Err(self.transport(s)),
        }
    }
}

/// Serves the Raft RPCs of the other masters to the local node.
pub struct RaftService {
    raft: Raft,
    id: NodeId,
    incarnation: String,
    guard: Guard,
}

impl RaftService {
    /// A service for this node: master `id`, whose data directory is `incarnation`; only
    /// masters may call it (when `guard` checks certificates).
    pub fn new(raft: Raft, id: NodeId, incarnation: String, guard: Guard) -> RaftService {
        RaftService {
            raft,
            id,
            incarnation,
            guard,
        }
    }

    /// Decodes a request from a master meant for this master; refuses any other, and one
    /// whose sender (`vote`'s node) is not the master its certificate names.
    fn accept<T: DeserializeOwned + Sent>(&self, req: Request<RaftPayload>) -> Result<T, Status> {
        let principal = self.guard.admit(&req, "speak Raft", &[Kind::Master])?;
        let rpc: T = self.decode(req)?;
        if let Some(p) = principal {
            let sender = rpc.vote().leader_id().voted_for();
            if sender.map(|id| id.to_string()).as_deref() != Some(p.name.as_str()) {
                let message = format!(
                    "{p} may not speak Raft as master {}: a master speaks as the id its certificate names",
                    sender.map_or_else(|| "(none)".to_string(), |id| id.to_string())
                );
                tracing::warn!("refused: {message}");
                return Err(Status::permission_denied(message));
            }
        }
        Ok(rpc)
    }

    /// Decodes a request, if it is meant for this master (its id and data directory).
    fn decode<T: DeserializeOwned>(&self, req: Request<RaftPayload>) -> Result<T, Status> {
        let meta = req.metadata();
        let text = |key| meta.get(key).and_then(|v| v.to_str().ok());
        if let Some(target) = text(TARGET_ID) {
            if target != self.id.to_string() {
                return Err(refused(format!(
                    "this is master {}, not master {target}: the membership has the wrong address for master {target}",
                    self.id
                )));
            }
        }
        if let Some(incarnation) = text(TARGET_INCARNATION) {
            if incarnation != self.incarnation {
                return Err(refused(format!(
                    "master {} has a new data directory (incarnation {}, the membership has {incarnation}): remove it from the cluster and add it again (cluster/masters/ctl)",
                    self.id, self.incarnation
                )));
            }
        }
        serde_json::from_slice(&req.into_inner().json)
            .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))
    }
}

/// A Raft request, which names its sender in its vote.
trait Sent {
    /// The sender's vote (a candidate's, or the leader's).
    fn vote(&self) -> &openraft::Vote<NodeId>;
}

impl Sent for AppendEntriesRequest<TypeConfig> {
    fn vote(&self) -> &openraft::Vote<NodeId> {
        &self.vote
    }
}

impl Sent for VoteRequest<NodeId> {
    fn vote(&self) -> &openraft::Vote<NodeId> {
        &self.vote
    }
}

impl Sent for InstallSnapshotRequest<TypeConfig> {
    fn vote(&self) -> &openraft::Vote<NodeId> {
        &self.vote
    }
}

fn refused(message: String) -> Status {
    tracing::warn!("refusing a raft request: {message}");
    Status::failed_precondition(message)
}

fn encode_reply<T: Serialize>(value: &T) -> Result<tonic::Response<RaftPayload>, Status> {
    let json = serde_json::to_vec(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(tonic::Response::new(RaftPayload { json }))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, Status> {
        let rpc = self.accept(req)?;
        encode_reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, Status> {
        let rpc = self.accept(req)?;
        encode_reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, Status> {
        let rpc = self.accept(req)?;
        encode_reply(&self.raft.install_snapshot(rpc).await)
    }
}
