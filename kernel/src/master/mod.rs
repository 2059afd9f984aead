//! The master process: a Raft node with durable storage that serves the replicated state to
//! any watcher, and, while it leads, the leader's runtime serving agents, writes and the leader
//! stream over gRPC.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{Config, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};

pub mod formation;
pub mod hub;
pub mod leader;
mod leadership;
mod service;

pub use hub::Hub;
pub use leader::{Leader, LeaderConfig};

use crate::client::Connector;
use crate::limits::{MAX_IN_FLIGHT_PER_CONNECTION, MAX_RAFT_MESSAGE, MAX_REQUEST_TO_MASTER};
use crate::proto::master_server::MasterServer;
use crate::proto::raft_server::RaftServer;
use crate::raft::network::{GrpcNetworkFactory, RaftService};
use crate::raft::{storage, MasterNode, Raft};
use crate::tls::{Guard, Kind, Principal, TlsFiles};
use service::MasterService;

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
    /// The address others should dial is unknown or contradicts `--peers`.
    #[error("{0}")]
    Advertise(String),
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
    /// Its TLS directory does not fit it.
    #[error("{0}")]
    Tls(String),
}

/// Raft's timing: how often the leader heartbeats and how long followers wait for one before
/// electing a new leader (a random time in `election_ms`); and how often the log is compacted.
#[derive(Clone, Copy, Debug)]
pub struct RaftTimings {
    /// Milliseconds between the leader's heartbeats.
    pub heartbeat_ms: u64,
    /// The election timeout's range in milliseconds.
    pub election_ms: (u64, u64),
    /// A snapshot is taken every this many log entries, and the log before it purged.
    pub snapshot_every: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        // A leader that dies is replaced after about its lease (the maximum) plus one election
        // timeout: 0.6 to 0.8 s, which keeps a failover under a second. Shorter ones start
        // needless elections when a busy machine delays a heartbeat.
        RaftTimings {
            heartbeat_ms: 100,
            election_ms: (200, 400),
            snapshot_every: 2000,
        }
    }
}

/// How to run a master.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// This master's Raft node id.
    pub id: u64,
    /// Where to listen (port 0 picks one).
    pub listen: SocketAddr,
    /// The `host:port` other masters, agents and mounts dial; by default the listen address,
    /// which must then be a specific one.
    pub advertise: Option<String>,
    /// The initial membership (`id -> host:port`), as every master of a new cluster is given
    /// it; empty for a one-master cluster.
    pub peers: BTreeMap<u64, String>,
    /// Where its Raft log, votes and snapshots live.
    pub data_dir: PathBuf,
    /// Raft's heartbeat and election timing.
    pub timings: RaftTimings,
    /// Its certificate (kind master, named by its id) for mutual TLS on every connection it
    /// serves and makes; `None`: plain gRPC (`--insecure`).
    pub tls: Option<TlsFiles>,
    /// The leader's settings.
    pub leader: LeaderConfig,
}

/// A running master.
pub struct MasterHandle {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The address it advertises.
    pub advertised: String,
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

/// The address others dial: `--advertise`, or the listen address when it is a specific one.
fn advertised(config: &MasterConfig, bound: SocketAddr) -> Result<String, MasterError> {
    let addr = match &config.advertise {
        Some(a) => a.clone(),
        None if bound.ip().is_unspecified() => {
            return Err(MasterError::Advertise(format!(
                "master {} listens on {} (every interface), so the address other masters, agents and mounts should dial is unknown: pass --advertise HOST:PORT (this machine's name or address and port {}), or --listen on a specific address",
                config.id,
                config.listen,
                bound.port()
            )))
        }
        None => bound.to_string(),
    };
    if let Some(listed) = config.peers.get(&config.id) {
        if *listed != addr {
            return Err(MasterError::Advertise(format!(
                "--peers lists master {} at {listed}, but it advertises {addr}: give it --advertise {listed}, or correct --peers",
                config.id
            )));
        }
    } else if !config.peers.is_empty() {
        return Err(MasterError::Advertise(format!(
            "--peers does not list this master (id {}): add {}={addr} to it",
            config.id, config.id
        )));
    }
    Ok(addr)
}

/// The incarnation of a data directory: made when a master first uses it, so that a master
/// whose directory was wiped is told apart from the member it was.
fn incarnation(dir: &Path) -> std::io::Result<String> {
    let path = dir.join("incarnation");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir)?;
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))?;
    let made = format!("{:016x}", u64::from_le_bytes(bytes));
    let tmp = dir.join("incarnation.tmp");
    std::fs::write(&tmp, format!("{made}\n"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(made)
}

/// Starts a master: opens its storage, starts Raft (forming or joining a cluster on first
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
    let advertised = advertised(&config, addr)?;
    let storage_err = |message: String| MasterError::Storage {
        dir: config.data_dir.clone(),
        message,
    };
    let incarnation = incarnation(&config.data_dir).map_err(|e| storage_err(e.to_string()))?;
    let hub = Hub::new();
    let (log_store, sm_store) = storage::open(&config.data_dir, hub.clone())
        .await
        .map_err(|e| storage_err(e.to_string()))?;
    hub.set_log(log_store.clone());
    let t = config.timings;
    let raft_config = Config {
        cluster_name: "mesofs".into(),
        heartbeat_interval: t.heartbeat_ms,
        election_timeout_min: t.election_ms.0,
        election_timeout_max: t.election_ms.1,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_every),
        // Entries kept past a snapshot, so a follower a little behind needs no snapshot.
        max_in_snapshot_log_to_keep: t.snapshot_every.min(100),
        ..Config::default()
    }
    .validate()
    .map_err(|e| MasterError::Raft(e.to_string()))?;
    let connector = match &config.tls {
        Some(files) => {
            let want = Principal {
                kind: Kind::Master,
                name: config.id.to_string(),
            };
            if files.principal != want {
                return Err(MasterError::Tls(format!(
                    "the TLS directory's certificate is for {}, not {want}: issue one with `mesofs cert issue --kind master --name {} ...`",
                    files.principal, config.id
                )));
            }
            Connector::tls(files.clone())
        }
        None => {
            warn!("--insecure: masters, agents and mounts talk plain gRPC, and anyone who reaches this master's port can write as any user and register as any agent");
            Connector::plain()
        }
    };
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config),
        GrpcNetworkFactory::new(connector.clone()),
        log_store,
        sm_store,
    )
    .await
    .map_err(|e| MasterError::Raft(e.to_string()))?;
    let me = MasterNode {
        addr: advertised.clone(),
        incarnation: incarnation.clone(),
    };
    formation::start(&raft, &connector, config.id, &me, &config.peers).await?;

    let service = MasterService::new(
        config.id,
        me,
        connector,
        raft.clone(),
        hub.clone(),
        Arc::new(Mutex::new(None)),
        Guard::of(config.tls.as_ref()),
    );
    // A leader that hears no majority for this long stops acting as leader: by then the others
    // (who stand for election after the maximum election timeout twice over at most) may have
    // a new leader. Shorter, and one slow append (openraft then backs off 500 ms from that
    // follower) while the followers write snapshots would drop a healthy leader's runtime.
    let lease = Duration::from_millis(2 * t.election_ms.1);
    tokio::spawn(leadership::follow(
        service.clone(),
        config.leader.clone(),
        lease,
    ));

    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let raft_service = RaftService::new(
        raft.clone(),
        config.id,
        incarnation,
        Guard::of(config.tls.as_ref()),
    );
    let mut builder = tonic::transport::Server::builder()
        // Keepalive pings end the streams of agents and mounts whose host vanished without
        // closing the connection, so their sessions end and their offers are rescinded.
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .concurrency_limit_per_connection(MAX_IN_FLIGHT_PER_CONNECTION);
    if let Some(files) = &config.tls {
        builder = builder
            .tls_config(files.server())
            .map_err(|e| MasterError::Tls(e.to_string()))?;
    }
    let server = tokio::spawn(async move {
        let result = builder
            .add_service(
                MasterServer::new(service).max_decoding_message_size(MAX_REQUEST_TO_MASTER),
            )
            .add_service(RaftServer::new(raft_service).max_decoding_message_size(MAX_RAFT_MESSAGE))
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
    info!(id = config.id, %addr, %advertised, "master listening");
    Ok(MasterHandle {
        addr,
        advertised,
        raft,
        shutdown: Some(shutdown_tx),
        server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str, advertise: Option<&str>, peers: &[(u64, &str)]) -> MasterConfig {
        MasterConfig {
            id: 2,
            listen: listen.parse().unwrap(),
            advertise: advertise.map(String::from),
            peers: peers.iter().map(|(i, a)| (*i, a.to_string())).collect(),
            data_dir: PathBuf::from("/nonexistent"),
            timings: RaftTimings::default(),
            tls: None,
            leader: LeaderConfig::default(),
        }
    }

    #[test]
    fn the_advertised_address_is_the_flag_or_a_specific_listen_address() {
        let bound: SocketAddr = "10.0.0.2:5050".parse().unwrap();
        let c = config("10.0.0.2:5050", None, &[]);
        assert_eq!(advertised(&c, bound).unwrap(), "10.0.0.2:5050");
        let c = config("0.0.0.0:5050", Some("m2.example:5050"), &[]);
        assert_eq!(advertised(&c, bound).unwrap(), "m2.example:5050");
        let c = config("0.0.0.0:5050", None, &[]);
        let e = advertised(&c, "0.0.0.0:5050".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("--advertise"), "{e}");
    }

    #[test]
    fn peers_must_list_this_master_at_its_advertised_address() {
        let bound: SocketAddr = "10.0.0.2:5050".parse().unwrap();
        let ok = config(
            "10.0.0.2:5050",
            None,
            &[(1, "10.0.0.1:5050"), (2, "10.0.0.2:5050")],
        );
        assert!(advertised(&ok, bound).is_ok());
        let elsewhere = config("10.0.0.2:5050", None, &[(1, "a:1"), (2, "b:2")]);
        assert!(advertised(&elsewhere, bound)
            .unwrap_err()
            .to_string()
            .contains("--advertise b:2"));
        let missing = config("10.0.0.2:5050", None, &[(1, "a:1"), (3, "c:3")]);
        assert!(advertised(&missing, bound)
            .unwrap_err()
            .to_string()
            .contains("2=10.0.0.2:5050"));
    }

    #[test]
    fn a_data_directory_keeps_its_incarnation() {
        let dir = tempfile::tempdir().unwrap();
        let first = incarnation(dir.path()).unwrap();
        assert_eq!(first.len(), 16);
        assert_eq!(incarnation(dir.path()).unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(incarnation(other.path()).unwrap(), first);
    }
}
