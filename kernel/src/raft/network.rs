//! The Raft network over gRPC: each RPC carries openraft's own request and result as JSON.

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;
use tonic::{Request, Status};

use super::{Raft, TypeConfig};
use crate::proto::raft_client::RaftClient;
use crate::proto::raft_server;
use crate::proto::RaftPayload;

type NodeId = u64;

/// Makes a gRPC client per peer master.
#[derive(Clone, Default)]
pub struct GrpcNetworkFactory;

impl RaftNetworkFactory<TypeConfig> for GrpcNetworkFactory {
    type Network = GrpcNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> GrpcNetwork {
        GrpcNetwork {
            target,
            addr: node.addr.clone(),
            client: None,
        }
    }
}

/// The connection to one peer master.
pub struct GrpcNetwork {
    target: NodeId,
    addr: String,
    client: Option<RaftClient<Channel>>,
}

impl GrpcNetwork {
    async fn client<E: std::error::Error>(
        &mut self,
    ) -> Result<RaftClient<Channel>, RPCError<NodeId, BasicNode, E>> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let ch = crate::client::channel(&self.addr)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let c = RaftClient::new(ch);
        self.client = Some(c.clone());
        Ok(c)
    }

    fn encode<T: Serialize>(value: &T) -> RaftPayload {
        RaftPayload {
            json: serde_json::to_vec(value).expect("raft messages serialize"),
        }
    }

    fn decode<T: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        payload: RaftPayload,
    ) -> Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        let result: Result<T, RaftError<NodeId, E>> = serde_json::from_slice(&payload.json)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(0, e)))
    }

    fn transport<E: std::error::Error>(
        &mut self,
        status: Status,
    ) -> RPCError<NodeId, BasicNode, E> {
        // Drop the channel so the next call reconnects.
        self.client = None;
        tracing::debug!(target = self.target, error = %status.message(), "raft rpc failed");
        RPCError::Unreachable(Unreachable::new(&status))
    }
}

impl RaftNetwork<TypeConfig> for GrpcNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let mut c = self.client().await?;
        match c.append_entries(Self::encode(&rpc)).await {
            Ok(r) => Self::decode(r.into_inner()),
            Err(s) => Err(self.transport(s)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let mut c = self.client().await?;
        match c.install_snapshot(Self::encode(&rpc)).await {
            Ok(r) => Self::decode(r.into_inner()),
            Err(s) => Err(self.transport(s)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let mut c = self.client().await?;
        match c.vote(Self::encode(&rpc)).await {
            Ok(r) => Self::decode(r.into_inner()),
            Err(s) => Err(self.transport(s)),
        }
    }
}

/// Serves the Raft RPCs of the other masters to the local node.
pub struct RaftService {
    raft: Raft,
}

impl RaftService {
    /// A service for this node.
    pub fn new(raft: Raft) -> RaftService {
        RaftService { raft }
    }
}

fn decode_request<T: DeserializeOwned>(req: Request<RaftPayload>) -> Result<T, Status> {
    serde_json::from_slice(&req.into_inner().json)
        .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))
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
        let rpc = decode_request(req)?;
        encode_reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, Status> {
        let rpc = decode_request(req)?;
        encode_reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, Status> {
        let rpc = decode_request(req)?;
        encode_reply(&self.raft.install_snapshot(rpc).await)
    }
}
