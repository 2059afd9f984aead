//! The master process: a Raft node with durable storage, and, while it leads, the leader's
//! runtime serving agents, frameworks and watchers over gRPC.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use openraft::{BasicNode, Config, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

pub mod hub;
pub mod leader;

pub use hub::Hub;
pub use leader::{Leader, LeaderConfig};

use crate::proto::master_server::{Master as MasterRpc, MasterServer};
use crate::proto::raft_server::RaftServer;
use crate::proto::{
    AgentMessage, LeaderReply, LeaderRequest, MasterMessage, WatchEvent as WireEvent, WatchRequest,
    WriteReply, WriteRequest,
};
use crate::raft::network::{GrpcNetworkFactory, RaftService};
use crate::raft::{storage, Raft};

/// Why a master could not start.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}; is another master running there?")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The data directory could not be opened.
    #[error("cannot open the master's data directory {dir}: {message}")]
    Storage {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        message: String,
    },
    /// Raft failed to start.
    #[error("raft failed: {0}")]
    Raft(String),
}

/// How to run a master.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// This master's Raft node id.
    pub id: u64,
    /// Where to listen (port 0 picks one).
    pub listen: SocketAddr,
    /// Where its Raft log, votes and snapshots live.
    pub data_dir: PathBuf,
    /// The leader's settings.
    pub leader: LeaderConfig,
}

/// A running master.
pub struct MasterHandle {
    /// The address it listens on.
    pub addr: SocketAddr,
    raft: Raft,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl MasterHandle {
    /// Stops serving and shuts Raft down.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Open streams (watchers, agent sessions) would hold a graceful stop forever.
        if tokio::time::timeout(Duration::from_secs(2), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
        if let Err(e) = self.raft.shutdown().await {
            warn!(error = %e, "raft shutdown");
        }
    }
}

/// Starts a master: opens its storage, starts Raft (initializing a one-member group on first
/// start), and serves gRPC.
pub async fn start(config: MasterConfig) -> Result<MasterHandle, MasterError> {
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| MasterError::Listen {
                addr: config.listen,
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| MasterError::Listen {
            addr: config.listen,
            source,
        })?;
    let hub = Hub::new();
    let (log_store, sm_store) =
        storage::open(&config.data_dir, hub.clone())
            .await
            .map_err(|e| MasterError::Storage {
                dir: config.data_dir.clone(),
                message: e.to_string(),
            })?;
    let raft_config = Config {
        cluster_name: "mesofs".into(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(2000),
        max_in_snapshot_log_to_keep: 100,
        ..Config::default()
    }
    .validate()
    .map_err(|e| MasterError::Raft(e.to_string()))?;
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config),
        GrpcNetworkFactory,
        log_store,
        sm_store,
    )
    .await
    .map_err(|e| MasterError::Raft(e.to_string()))?;
    if !raft
        .is_initialized()
        .await
        .map_err(|e| MasterError::Raft(e.to_string()))?
    {
        let members = BTreeMap::from([(config.id, BasicNode::new(addr.to_string()))]);
        raft.initialize(members)
            .await
            .map_err(|e| MasterError::Raft(e.to_string()))?;
        info!(id = config.id, %addr, "initialized a new one-master cluster");
    }

    let service = MasterService {
        id: config.id,
        addr: addr.to_string(),
        raft: raft.clone(),
        hub: hub.clone(),
        leader: Arc::new(Mutex::new(None)),
    };
    tokio::spawn(follow_leadership(service.clone(), config.leader.clone()));

    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let raft_service = RaftService::new(raft.clone());
    let server = tokio::spawn(async move {
        // Keepalive pings end the streams of agents and mounts whose host vanished without
        // closing the connection, so their sessions end and their offers are rescinded.
        let result = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(5)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(MasterServer::new(service))
            .add_service(RaftServer::new(raft_service))
            .serve_with_incoming_shutdown(
                // Without nodelay, small replies wait out the peer's delayed ACK (~40 ms).
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = shutdown_rx.await;
                },
            )
            .await;
        if let Err(e) = result {
            warn!(error = %e, "master server stopped");
        }
    });
    info!(id = config.id, %addr, "master listening");
    Ok(MasterHandle {
        addr,
        raft,
        shutdown: Some(shutdown_tx),
        server,
    })
}

/// Starts a leader runtime whenever this node becomes leader, and drops it when it stops
/// leading (offers and sessions are the leader's alone).
async fn follow_leadership(service: MasterService, config: LeaderConfig) {
    let mut metrics = service.raft.metrics();
    let mut led_term = None;
    loop {
        let (leader, term) = {
            let m = metrics.borrow_and_update();
            (m.current_leader, m.current_term)
        };
        let leading = leader == Some(service.id);
        if leading && led_term != Some(term) {
            // Wait until this term's blank entry is applied, so the state is current.
            let last_log = metrics.borrow().last_log_index;
            let _ = service
                .raft
                .wait(Some(Duration::from_secs(10)))
                .applied_index_at_least(last_log, "leader caught up")
                .await;
            // The term alone does not tell leaderships apart (a lone master restarted keeps
            // its term); the log index at which this one began does, and names its offers.
            let epoch = last_log.unwrap_or(0);
            info!(term, epoch, "this master leads");
            let runtime = Leader::new(
                service.raft.clone(),
                service.hub.clone(),
                config.clone(),
                epoch,
            );
            runtime.watch_absent_agents();
            *service.leader.lock().expect("leader lock") = Some(runtime);
            service
                .hub
                .set_leader(format!("m{} {}", service.id, service.addr));
            led_term = Some(term);
        } else if !leading && led_term.is_some() {
            info!("this master no longer leads");
            *service.leader.lock().expect("leader lock") = None;
            led_term = None;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

#[derive(Clone)]
struct MasterService {
    id: u64,
    addr: String,
    raft: Raft,
    hub: Arc<Hub>,
    leader: Arc<Mutex<Option<Arc<Leader>>>>,
}

impl MasterService {
    fn leader(&self) -> Result<Arc<Leader>, Status> {
        self.leader
            .lock()
            .expect("leader lock")
            .clone()
            .ok_or_else(|| Status::failed_precondition("this master is not the leader"))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl MasterRpc for MasterService {
    type AgentSessionStream = BoxStream<MasterMessage>;
    type WatchStream = BoxStream<WireEvent>;

    async fn agent_session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::AgentSessionStream>, Status> {
        let leader = self.leader()?;
        let mut inbound = request.into_inner();
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
        tokio::spawn(leader.agent_session(in_rx, out_tx));
        let stream = UnboundedReceiverStream::new(out_rx).map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn watch(
        &self,
        _request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.leader()?;
        let (snapshot, mut rx) = self.hub.subscribe();
        let (tx, out) = mpsc::channel::<Result<WireEvent, Status>>(1024);
        tokio::spawn(async move {
            let encode = |e: &crate::watch::WatchEvent| WireEvent {
                json: serde_json::to_string(e).expect("watch events serialize"),
            };
            if tx.send(Ok(encode(&snapshot))).await.is_err() {
                return;
            }
            loop {
                match rx.recv().await {
                    Ok(event) => {
                        if tx.send(Ok(encode(&event))).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // The watcher reconnects and starts again from a snapshot.
                        warn!(missed = n, "a watcher fell behind; ending its stream");
                        let _ = tx
                            .send(Err(Status::data_loss("watcher fell behind; reconnect")))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn write(&self, request: Request<WriteRequest>) -> Result<Response<WriteReply>, Status> {
        let leader = self.leader()?;
        let req = request.into_inner();
        let op = req
            .op
            .ok_or_else(|| Status::invalid_argument("write without an operation"))?;
        Ok(Response::new(leader.write(req.uid, req.gid, op).await))
    }

    async fn leader(
        &self,
        _request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderReply>, Status> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader;
        // Our own address is the one we listen on now; the membership keeps the first one.
        let address = leader
            .and_then(|id| {
                if id == self.id {
                    return Some(self.addr.clone());
                }
                m.membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.addr.clone())
            })
            .unwrap_or_default();
        Ok(Response::new(LeaderReply {
            master_id: leader.map(|id| format!("m{id}")).unwrap_or_default(),
            address,
        }))
    }
}
