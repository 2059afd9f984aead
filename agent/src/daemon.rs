//! The agent daemon: identity and resources, the Files service, the containerizer, and the
//! session with the masters, started together and stopped together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesofs_kernel::client::{Connector, MasterClient};
use mesofs_kernel::proto::files_server::FilesServer;
use mesofs_kernel::resources::Resources;
use mesofs_kernel::tls::{Guard, Kind, TlsFiles};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};

use crate::acls::SandboxAcls;
use crate::containerizer::{Confinement, Containerizer, Namespaces};
use crate::files::FilesService;
use crate::session::{Identity, Session};
use mesofs_kernel::limits::{MAX_FILES_REQUEST, MAX_IN_FLIGHT_PER_CONNECTION};

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The work directory is unusable.
    #[error("cannot use the agent's work directory {dir}: {source}")]
    WorkDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Another agent uses the work directory.
    #[error("another agent runs on the work directory {0} (it holds agent.lock there); stop it, or give this one its own --work-dir")]
    Locked(PathBuf),
    /// `--resources` did not parse.
    #[error("invalid --resources: {0}")]
    Resources(String),
    /// `--attributes` did not parse.
    #[error("invalid --attributes: {0} (write name:value;name:value, e.g. rack:r1;zone:a)")]
    Attributes(String),
    /// The TLS directory does not fit this agent.
    #[error("{0}")]
    Tls(String),
    /// The Files service could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// How to run an agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Master addresses (`host:port`).
    pub masters: Vec<String>,
    /// Where sandboxes, the agent id and checkpoints live.
    pub work_dir: PathBuf,
    /// Where the Files service listens (port 0 picks one).
    pub listen: SocketAddr,
    /// The `host:port` mounts dial for the Files service; by default the listen address, or
    /// `hostname` and the listen port when listening on every interface.
    pub advertise: Option<String>,
    /// The host name other machines reach this agent by.
    pub hostname: String,
    /// Resources to offer, Mesos syntax; detected when absent.
    pub resources: Option<String>,
    /// Attributes, `name:value;name:value` (`rack:r1;zone:a`).
    pub attributes: String,
    /// The `mesofs` binary, run (`mesofs supervise`) as each task's supervisor so that tasks
    /// survive a restart of the agent; `None`: tasks end with the agent.
    pub supervisor: Option<PathBuf>,
    /// Its certificate (kind agent, named by the agent's id) for mutual TLS with the masters
    /// and on its file service; `None`: plain gRPC (`--insecure`).
    pub tls: Option<TlsFiles>,
    /// How it confines tasks beyond their cgroups (ports, disk, namespaces).
    pub confinement: Confinement,
}

/// A running agent.
pub struct AgentHandle {
    /// Its id.
    pub agent_id: String,
    /// Where its Files service listens.
    pub files_addr: SocketAddr,
    containerizer: Arc<Containerizer>,
    session: Arc<Session>,
    shutdown: Option<oneshot::Sender<()>>,
    /// Held (flock) while the agent runs: two agents on one work directory would take each
    /// other's tasks for leftovers.
    _lock: std::fs::File,
}

impl AgentHandle {
    /// Kills every task, waits briefly for their final status updates to be acknowledged,
    /// and stops serving.
    pub async fn shutdown(mut self) {
        self.containerizer.shutdown().await;
        if !self.session.flush(Duration::from_secs(5)).await {
            warn!("some status updates were not acknowledged before shutdown");
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts an agent: detects resources, serves sandbox files, and registers with the masters.
pub async fn start(mut config: AgentConfig) -> Result<AgentHandle, AgentError> {
    // Before anything touches the machine: a malformed flag changes nothing.
    let attributes = mesofs_kernel::attributes::Attributes::parse(&config.attributes)
        .map_err(AgentError::Attributes)?
        .to_string();
    // Absolute: task supervisors run in their sandboxes and write into the work directory.
    config.work_dir =
        std::path::absolute(&config.work_dir).map_err(|source| AgentError::WorkDir {
            dir: config.work_dir.clone(),
            source,
        })?;
    let work_err = |source| AgentError::WorkDir {
        dir: config.work_dir.clone(),
        source,
    };
    std::fs::create_dir_all(config.work_dir.join("sandboxes")).map_err(work_err)?;
    let lock = lock_work_dir(&config.work_dir)?;
    // With a certificate, the agent is who its certificate says (the masters register it
    // under that id only); the work directory must not belong to another agent.
    let named = match &config.tls {
        Some(files) if files.principal.kind != Kind::Agent => {
            return Err(AgentError::Tls(format!(
                "the TLS directory's certificate is for {}, not an agent: issue one with `mesofs cert issue --kind agent --name ID ...`",
                files.principal
            )))
        }
        Some(files) => Some(files.principal.name.clone()),
        None => {
            warn!("--insecure: this agent talks plain gRPC, and anyone who reaches its file service can read its tasks' output");
            None
        }
    };
    let agent_id = crate::inventory::agent_id(&config.work_dir, &config.hostname, named.as_deref())
        .map_err(work_err)?
        .map_err(AgentError::Tls)?;
    let resources = match &config.resources {
        Some(r) => Resources::parse(r)
            .map_err(|e| AgentError::Resources(e.to_string()))?
            .to_string(),
        None => crate::inventory::detect(&config.work_dir),
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: config.listen,
            source,
        })?;
    let files_addr = listener.local_addr().map_err(|source| AgentError::Listen {
        addr: config.listen,
        source,
    })?;
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let acls = Arc::new(SandboxAcls::load(&config.work_dir));
    let isolator = crate::isolator::detect_for_agent(&agent_id);
    info!(isolator = isolator.name(), "isolation");
    let (containerizer, exits) =
        Containerizer::new(config.work_dir.clone(), isolator, config.supervisor.clone());
    let containerizer = Arc::new(containerizer);
    let files = FilesService::new(
        config.work_dir.clone(),
        Guard::of(config.tls.as_ref()),
        acls.clone(),
        &containerizer,
    );
    let mut builder = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(MAX_IN_FLIGHT_PER_CONNECTION);
    if let Some(files) = &config.tls {
        builder = builder
            .tls_config(files.server())
            .map_err(|e| AgentError::Tls(e.to_string()))?;
    }
    tokio::spawn(async move {
        let r = builder
            .add_service(FilesServer::new(files).max_decoding_message_size(MAX_FILES_REQUEST))
            .serve_with_incoming_shutdown(
                // Without nodelay, small replies wait out the peer's delayed ACK (~40 ms).
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = shutdown_rx.await;
                },
            )
            .await;
        if let Err(e) = r {
            warn!(error = %e, "files service stopped");
        }
    });

    let recovered = containerizer.recover().await;
    let mut confinement = config.confinement;
    let ns = &mut confinement.namespaces;
    if (ns.pid || ns.mount) && !nix::unistd::geteuid().is_root() {
        warn!("not root: tasks run in the agent's pid and mount namespaces");
        *ns = Namespaces::default();
    }
    let identity = Identity {
        agent_id: agent_id.clone(),
        hostname: config.hostname.clone(),
        // Reachable where it says, else by the listen IP when one was given, else by hostname.
        address: match &config.advertise {
            Some(a) => a.clone(),
            None if files_addr.ip().is_unspecified() => {
                format!("{}:{}", config.hostname, files_addr.port())
            }
            None => files_addr.to_string(),
        },
        resources: resources.clone(),
        attributes,
    };
    let session = Session::start(
        identity,
        MasterClient::new(
            config.masters.clone(),
            config
                .tls
                .clone()
                .map_or_else(Connector::plain, Connector::tls),
        ),
        containerizer.clone(),
        exits,
        recovered,
        acls,
        confinement,
    );
    info!(agent = %agent_id, %resources, files = %files_addr, "agent started");
    Ok(AgentHandle {
        agent_id,
        files_addr,
        containerizer,
        session,
        shutdown: Some(shutdown_tx),
        _lock: lock,
    })
}

/// Takes the work directory's lock, or says who holds it.
fn lock_work_dir(work_dir: &std::path::Path) -> Result<std::fs::File, AgentError> {
    let path = work_dir.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| AgentError::WorkDir {
            dir: work_dir.to_path_buf(),
            source,
        })?;
    // SAFETY: flock on a descriptor we own; released when the file is closed.
    let r = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if r != 0 {
        return Err(AgentError::Locked(work_dir.to_path_buf()));
    }
    Ok(file)
}
