//! A client of the masters: finds the leader, sends framework writes to it, and keeps a local
//! copy of the cluster fed by the watch stream.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::proto::master_client::MasterClient as GrpcMaster;
use crate::proto::{self, write_request::Op, LeaderRequest, WatchRequest, WriteRequest};
use crate::watch::{View, WatchEvent};

/// How long a write waits for a leader to answer before it fails with EIO, by default.
pub const LEADER_WAIT: Duration = Duration::from_secs(30);

/// Why a write failed: an errno for the writer and a reason for humans.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WriteError {
    /// The errno the writer sees.
    pub errno: i32,
    /// Why.
    pub message: String,
    /// The watch sequence number at which the refusal is recorded (0 if it is not).
    pub seq: u64,
}

impl WriteError {
    /// A write error with an errno and a reason.
    pub fn new(errno: i32, message: impl Into<String>) -> WriteError {
        WriteError {
            errno,
            message: message.into(),
            seq: 0,
        }
    }

    fn unreachable(what: impl std::fmt::Display) -> WriteError {
        WriteError::new(
            libc::EIO,
            format!("no master leader reachable ({what}); check that the master runs"),
        )
    }
}

/// Connects to masters and follows the leader.
#[derive(Clone)]
pub struct MasterClient {
    masters: Vec<String>,
    leader: Arc<Mutex<Option<Channel>>>,
    leader_wait: Duration,
}

impl MasterClient {
    /// A client of these master addresses (`host:port`).
    pub fn new(masters: Vec<String>) -> MasterClient {
        MasterClient {
            masters,
            leader: Arc::new(Mutex::new(None)),
            leader_wait: LEADER_WAIT,
        }
    }

    /// The same client, with writes waiting up to `wait` for a leader to answer.
    pub fn with_leader_wait(mut self, wait: Duration) -> MasterClient {
        self.leader_wait = wait;
        self
    }

    /// The master addresses this client knows.
    pub fn masters(&self) -> &[String] {
        &self.masters
    }

    /// A channel to the current leader, found by asking each master who leads.
    pub async fn leader_channel(&self) -> Result<Channel, WriteError> {
        if let Some(ch) = self.leader.lock().expect("leader lock").clone() {
            return Ok(ch);
        }
        let mut last_err = String::from("no master address given");
        for addr in &self.masters {
            match connect(addr).await {
                Ok(ch) => match GrpcMaster::new(ch.clone()).leader(LeaderRequest {}).await {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        let ch = if reply.address.is_empty() || reply.address == *addr {
                            ch
                        } else {
                            connect(&reply.address)
                                .await
                                .map_err(WriteError::unreachable)?
                        };
                        debug!(leader = %reply.master_id, address = %reply.address, "found the leader");
                        *self.leader.lock().expect("leader lock") = Some(ch.clone());
                        return Ok(ch);
                    }
                    Err(e) => last_err = format!("{addr}: {}", e.message()),
                },
                Err(e) => last_err = format!("{addr}: {e}"),
            }
        }
        Err(WriteError::unreachable(last_err))
    }

    fn forget_leader(&self) {
        *self.leader.lock().expect("leader lock") = None;
    }

    /// Sends one framework write; returns the watch sequence number at which it is visible.
    ///
    /// While no leader answers (a master restarting, an election) the write waits for one, up
    /// to its leader wait ([`LEADER_WAIT`] by default); it is sent again only when it surely
    /// did not take effect.
    pub async fn write(&self, uid: u32, gid: u32, op: Op) -> Result<u64, WriteError> {
        let deadline = tokio::time::Instant::now() + self.leader_wait;
        let mut backoff = Duration::from_millis(50);
        loop {
            let err: WriteError = match self.leader_channel().await {
                Ok(ch) => {
                    let req = WriteRequest {
                        uid,
                        gid,
                        op: Some(op.clone()),
                    };
                    match GrpcMaster::new(ch).write(req).await {
                        Ok(reply) => {
                            let reply = reply.into_inner();
                            let refusal = WriteError {
                                errno: reply.errno,
                                message: reply.error,
                                seq: reply.seq,
                            };
                            match reply.errno {
                                0 => return Ok(reply.seq),
                                // The leader lost its leadership before committing.
                                libc::EAGAIN => refusal,
                                _ => return Err(refusal),
                            }
                        }
                        // Unavailable: the connection failed before the request went out;
                        // FailedPrecondition: this master does not lead. Neither applied it.
                        Err(status)
                            if matches!(
                                status.code(),
                                tonic::Code::Unavailable | tonic::Code::FailedPrecondition
                            ) =>
                        {
                            WriteError::unreachable(status.message())
                        }
                        Err(status) => {
                            self.forget_leader();
                            return Err(WriteError::new(
                                libc::EIO,
                                format!(
                                    "the master did not answer ({}); the write may or may not have taken effect: look at the tree before writing again",
                                    status.message()
                                ),
                            ));
                        }
                    }
                }
                Err(e) => e,
            };
            self.forget_leader();
            if tokio::time::Instant::now() + backoff > deadline {
                warn!(error = %err.message, "no leader answered in time; the write fails");
                return Err(WriteError::new(
                    libc::EIO,
                    format!(
                        "no master leader answered within {}s ({}); check that the masters run",
                        self.leader_wait.as_secs_f64(),
                        err.message
                    ),
                ));
            }
            debug!(error = %err.message, "no leader yet; the write waits for one");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Starts keeping a local copy of the cluster, fed by the leader's watch stream.
    pub fn spawn_local_copy(&self) -> LocalCopy {
        let copy = LocalCopy::default();
        let client = self.clone();
        let feed = copy.clone();
        tokio::spawn(async move { client.feed_local_copy(feed).await });
        copy
    }

    async fn feed_local_copy(self, copy: LocalCopy) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.stream_into(&copy).await {
                Ok(()) => info!("watch stream ended; reconnecting"),
                Err(e) => debug!(error = %e, "watch stream failed; reconnecting"),
            }
            copy.set_connected(false);
            self.forget_leader();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn stream_into(&self, copy: &LocalCopy) -> Result<(), WriteError> {
        let ch = self.leader_channel().await?;
        let mut stream = GrpcMaster::new(ch)
            .watch(WatchRequest {})
            .await
            .map_err(|s| WriteError::unreachable(s.message()))?
            .into_inner();
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|s| WriteError::unreachable(s.message()))?
        {
            let event: WatchEvent = serde_json::from_str(&msg.json)
                .map_err(|e| WriteError::new(libc::EIO, format!("bad watch event: {e}")))?;
            copy.apply(&event);
        }
        Ok(())
    }
}

async fn connect(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        // Notice a master that vanished without closing the connection, and reconnect.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect()
        .await
}

/// Connects to a gRPC endpoint at `host:port`.
pub async fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    connect(addr).await
}

#[derive(Default)]
struct Shared {
    view: Mutex<View>,
    changed: Condvar,
    connected: Mutex<bool>,
    notify: Notify,
}

/// A local copy of the cluster kept current by the watch stream; cheap to clone, readable from
/// threads (the FUSE callbacks) and tasks alike.
#[derive(Clone, Default)]
pub struct LocalCopy {
    shared: Arc<Shared>,
}

impl LocalCopy {
    /// Applies one watch event and wakes every waiter (the watch feed calls this).
    pub fn apply(&self, event: &WatchEvent) {
        {
            let mut view = self.shared.view.lock().expect("view lock");
            if let WatchEvent::Snapshot { .. } = event {
                *self.shared.connected.lock().expect("connected lock") = true;
            }
            view.apply(event);
        }
        self.shared.changed.notify_all();
        self.shared.notify.notify_waiters();
    }

    fn set_connected(&self, connected: bool) {
        *self.shared.connected.lock().expect("connected lock") = connected;
        self.shared.changed.notify_all();
        self.shared.notify.notify_waiters();
    }

    /// True while the watch stream is up.
    pub fn connected(&self) -> bool {
        *self.shared.connected.lock().expect("connected lock")
    }

    /// The current view, locked; hold it briefly.
    pub fn view(&self) -> MutexGuard<'_, View> {
        self.shared.view.lock().expect("view lock")
    }

    /// Blocks the calling thread until `ready` holds for the view, or `timeout` passes;
    /// returns whether it holds. Wakes on every change.
    pub fn wait_until(&self, timeout: Duration, mut ready: impl FnMut(&View) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut view = self.view();
        loop {
            if ready(&view) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            view = self
                .shared
                .changed
                .wait_timeout(view, deadline - now)
                .expect("view lock")
                .0;
        }
    }

    /// Waits (async) until the view holds, or the timeout passes; returns whether it holds.
    pub async fn wait_until_async(
        &self,
        timeout: Duration,
        mut ready: impl FnMut(&View) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if ready(&self.view()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return ready(&self.view());
            }
        }
    }

    /// Blocks until the view has applied `seq` (read your writes) or `timeout` passes. A new
    /// snapshot (the stream restarted, perhaps with another leader numbering differently)
    /// also ends the wait: the snapshot already holds every committed write.
    pub fn wait_for_seq(&self, seq: u64, timeout: Duration) -> bool {
        let generation = self.view().generation;
        self.wait_until(timeout, |v| v.seq >= seq || v.generation != generation)
    }
}

/// Reads a task's sandbox file from its agent.
pub async fn read_sandbox_file(
    agent_address: &str,
    task_id: &str,
    file: &str,
    offset: u64,
    length: u64,
) -> Result<proto::ReadReply, tonic::Status> {
    let ch = connect(agent_address)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("agent {agent_address}: {e}")))?;
    let reply = proto::files_client::FilesClient::new(ch)
        .read(proto::ReadRequest {
            task_id: task_id.to_string(),
            file: file.to_string(),
            offset,
            length,
        })
        .await?;
    Ok(reply.into_inner())
}
