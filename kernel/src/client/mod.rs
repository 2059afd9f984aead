//! A client of the masters: finds the leader among any masters it knows and follows it through
//! elections, sends writes to it exactly once each, and keeps a local copy of the cluster fed
//! by the state and leader streams (`copy`, `feeds`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tracing::{debug, error, warn};

use crate::proto::master_client::MasterClient as GrpcMaster;
use crate::proto::{write_request::Op, LeaderRequest, StatusReply, StatusRequest, WriteRequest};

mod connect;
mod copy;
mod feeds;

pub use connect::Connector;
pub use copy::LocalCopy;

/// How long a write waits for a leader to answer before it fails with EIO, by default.
pub const LEADER_WAIT: Duration = Duration::from_secs(30);
/// How long every master may stay unreachable (no connection to any) before writes fail at
/// once instead of waiting for a leader.
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(3);
/// How long one request to one master may take before the next master is tried.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a master that knows no leader may wait for one before answering who leads.
const LEADER_WAIT_MS: u32 = 1_000;
/// Metadata key of a refusal by a master that does not lead: `<id> <address>` of the leader.
const LEADER_METADATA: &str = "mesofs-leader";

/// Why a write failed: an errno for the writer and a reason for humans.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WriteError {
    /// The errno the writer sees.
    pub errno: i32,
    /// Why.
    pub message: String,
    /// The leader's term and the position in its leader stream at which the refusal is
    /// recorded (0 if it is not).
    pub term: u64,
    /// See `term`.
    pub leader_seq: u64,
}

impl WriteError {
    /// A write error with an errno and a reason.
    pub fn new(errno: i32, message: impl Into<String>) -> WriteError {
        WriteError {
            errno,
            message: message.into(),
            term: 0,
            leader_seq: 0,
        }
    }
}

/// Whom a write is for: a user of the writing mount's machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Writer {
    /// The caller's uid there.
    pub uid: u32,
    /// The caller's gid there.
    pub gid: u32,
    /// The uid's user name there (empty if it has none).
    pub user: String,
}

impl Writer {
    /// Root, as a tool on a master's or mount's machine writes.
    pub fn root() -> Writer {
        Writer {
            uid: 0,
            gid: 0,
            user: "root".into(),
        }
    }
}

/// Where a committed write is visible.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// The log index of its effect in the state stream (0: it changed nothing replicated).
    pub index: u64,
    /// The leader's term that answered.
    pub term: u64,
    /// The position in that leader's stream of its effects on offers.
    pub leader_seq: u64,
}

struct Inner {
    /// How it dials the masters.
    connector: Connector,
    /// Known master addresses in order of preference: those given first, then those learned.
    masters: Mutex<Vec<String>>,
    /// The leader's address, while known.
    leader: Mutex<Option<String>>,
    leader_wait: Duration,
    /// Names this client's writes (unique per process and start).
    id: String,
    next_seq: AtomicU64,
    /// Numbers of the writes not answered yet.
    outstanding: Mutex<BTreeSet<u64>>,
    /// When some master last answered anything; the client's start before that.
    last_answer: Mutex<Instant>,
}

/// Connects to masters and follows the leader. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct MasterClient {
    inner: Arc<Inner>,
}

/// A unique name for this client's writes.
fn client_id() -> String {
    let host = nix_hostname();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{host}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn nix_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "host".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// What one attempt to reach the leader gave.
enum Attempt {
    /// The write's answer.
    Done(Result<Written, WriteError>),
    /// No leader answered (why): try again while the wait lasts.
    Retry(String),
    /// Not one master could be connected to (why).
    Unreachable(String),
}

impl MasterClient {
    /// A client of these master addresses (`host:port`), dialing them through `connector`.
    pub fn new(masters: Vec<String>, connector: Connector) -> MasterClient {
        MasterClient::build(masters, connector, LEADER_WAIT)
    }

    fn build(masters: Vec<String>, connector: Connector, leader_wait: Duration) -> MasterClient {
        MasterClient {
            inner: Arc::new(Inner {
                connector,
                masters: Mutex::new(masters),
                leader: Mutex::new(None),
                leader_wait,
                id: client_id(),
                next_seq: AtomicU64::new(1),
                outstanding: Mutex::new(BTreeSet::new()),
                last_answer: Mutex::new(Instant::now()),
            }),
        }
    }

    /// The same client, with writes waiting up to `wait` for a leader to answer.
    pub fn with_leader_wait(self, wait: Duration) -> MasterClient {
        MasterClient::build(self.masters(), self.inner.connector.clone(), wait)
    }

    /// How this client dials.
    pub fn connector(&self) -> &Connector {
        &self.inner.connector
    }

    /// The master addresses this client knows, in order of preference.
    pub fn masters(&self) -> Vec<String> {
        self.inner.masters.lock().expect("masters lock").clone()
    }

    /// Adds master addresses learned from the masters themselves (the leader, the members).
    pub fn learn(&self, addresses: impl IntoIterator<Item = String>) {
        let mut masters = self.inner.masters.lock().expect("masters lock");
        for a in addresses {
            if !a.is_empty() && !masters.contains(&a) {
                debug!(address = %a, "learned a master's address");
                masters.push(a);
            }
        }
    }

    fn answered(&self) {
        *self.inner.last_answer.lock().expect("answer lock") = Instant::now();
    }

    /// How long no master has answered anything.
    pub fn silent_for(&self) -> Duration {
        self.inner
            .last_answer
            .lock()
            .expect("answer lock")
            .elapsed()
    }

    /// The leader's address, as last found.
    pub fn known_leader(&self) -> Option<String> {
        self.inner.leader.lock().expect("leader lock").clone()
    }

    fn set_leader(&self, address: Option<String>) {
        if let Some(a) = &address {
            self.learn([a.clone()]);
        }
        *self.inner.leader.lock().expect("leader lock") = address;
    }

    /// Forgets the leader, so that the next request asks the masters again.
    pub fn forget_leader(&self) {
        self.set_leader(None);
    }

    /// A channel to the leader, found by asking the masters who leads. `Err(true)` when not one
    /// master could be reached; the reason either way.
    pub async fn leader_channel(&self) -> Result<Channel, (bool, String)> {
        if let Some(a) = self.known_leader() {
            return Ok(self.inner.connector.channel(&a));
        }
        // Every master at once: one that is down or cut off must not delay the answer.
        let mut asks: futures::stream::FuturesUnordered<_> = self
            .masters()
            .into_iter()
            .map(|addr| async move {
                let mut master = master_rpc(self.inner.connector.channel(&addr));
                let ask = master.leader(LeaderRequest {
                    wait_ms: LEADER_WAIT_MS,
                });
                let reply = tokio::time::timeout(ASK_TIMEOUT, ask).await;
                (addr, reply)
            })
            .collect();
        let mut reasons = Vec::new();
        let mut reached = false;
        while let Some((addr, reply)) = futures::StreamExt::next(&mut asks).await {
            match reply {
                Ok(Ok(reply)) => {
                    reached = true;
                    self.answered();
                    let reply = reply.into_inner();
                    if reply.address.is_empty() {
                        reasons.push(format!("{addr}: knows no leader"));
                        continue;
                    }
                    debug!(leader = %reply.master_id, address = %reply.address, "found the leader");
                    self.set_leader(Some(reply.address.clone()));
                    return Ok(self.inner.connector.channel(&reply.address));
                }
                Ok(Err(status)) => {
                    reached |= status.code() != tonic::Code::Unavailable;
                    reasons.push(format!("{addr}: {}", status.message()));
                }
                Err(_) => reasons.push(format!(
                    "{addr}: no answer within {}s",
                    ASK_TIMEOUT.as_secs()
                )),
            }
        }
        if reasons.is_empty() {
            reasons.push("no master address given".into());
        }
        Err((!reached, reasons.join("; ")))
    }

    /// Takes the leader named by a refusal from a master that does not lead (or forgets the
    /// leader when the refusal names none).
    pub fn follow_refusal(&self, status: &tonic::Status) {
        let named = status
            .metadata()
            .get(LEADER_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .map(|(_, addr)| addr.to_string());
        self.set_leader(named);
    }

    /// Sends one write; returns where its effect is visible. It is sent again (with the same
    /// write id, so it is applied once) until a leader answers, for up to the leader wait; it
    /// fails at once with EIO when no master has been reachable for [`UNREACHABLE_AFTER`].
    pub async fn write(&self, writer: &Writer, op: Op) -> Result<Written, WriteError> {
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        self.inner
            .outstanding
            .lock()
            .expect("outstanding lock")
            .insert(seq);
        let result = self.write_numbered(seq, writer, op).await;
        self.inner
            .outstanding
            .lock()
            .expect("outstanding lock")
            .remove(&seq);
        result
    }

    async fn write_numbered(
        &self,
        seq: u64,
        writer: &Writer,
        op: Op,
    ) -> Result<Written, WriteError> {
        let deadline = tokio::time::Instant::now() + self.inner.leader_wait;
        let mut backoff = Duration::from_millis(20);
        // Whether an attempt reached a leader that may have committed it without answering.
        let mut maybe = false;
        let caveat = |maybe: bool| {
            if maybe {
                "; a leader that failed before answering may still have applied it: look at the tree before writing again"
            } else {
                "; nothing was applied"
            }
        };
        loop {
            let why = match self.attempt(seq, writer, &op, &mut maybe).await {
                Attempt::Done(result) => return result,
                Attempt::Unreachable(why) if self.silent_for() >= UNREACHABLE_AFTER => {
                    warn!(reason = %why, "no master reachable; the write fails");
                    return Err(WriteError::new(
                        libc::EIO,
                        format!(
                            "no master reachable for {}s ({why}); check that the masters run and this machine reaches them{}",
                            self.silent_for().as_secs(),
                            caveat(maybe)
                        ),
                    ));
                }
                Attempt::Unreachable(why) | Attempt::Retry(why) => why,
            };
            if tokio::time::Instant::now() + backoff > deadline {
                warn!(reason = %why, "no leader answered in time; the write fails");
                return Err(WriteError::new(
                    libc::EIO,
                    format!(
                        "no master leader answered within {}s ({why}); check that the masters run{}",
                        self.inner.leader_wait.as_secs_f64(),
                        caveat(maybe)
                    ),
                ));
            }
            debug!(reason = %why, "no leader yet; the write waits for one");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }

    async fn attempt(&self, seq: u64, writer: &Writer, op: &Op, maybe: &mut bool) -> Attempt {
        let ch = match self.leader_channel().await {
            Ok(ch) => ch,
            Err((true, why)) => return Attempt::Unreachable(why),
            Err((false, why)) => return Attempt::Retry(why),
        };
        let done_below = self
            .inner
            .outstanding
            .lock()
            .expect("outstanding lock")
            .first()
            .copied()
            .unwrap_or(seq);
        let req = WriteRequest {
            uid: writer.uid,
            gid: writer.gid,
            user: writer.user.clone(),
            op: Some(op.clone()),
            client: self.inner.id.clone(),
            seq,
            done_below,
        };
        match master_rpc(ch).write(req).await {
            Ok(reply) => {
                self.answered();
                let r = reply.into_inner();
                match r.errno {
                    0 => Attempt::Done(Ok(Written {
                        index: r.index,
                        term: r.term,
                        leader_seq: r.leader_seq,
                    })),
                    // The leader lost its leadership before committing (the next leader may
                    // still commit it: sending it again is safe).
                    libc::EAGAIN => {
                        *maybe = true;
                        self.forget_leader();
                        Attempt::Retry(r.error)
                    }
                    errno => Attempt::Done(Err(WriteError {
                        errno,
                        message: r.error,
                        term: r.term,
                        leader_seq: r.leader_seq,
                    })),
                }
            }
            Err(status) if refused_identity(&status) => {
                error!(reason = %status.message(), "the master refused this client's certificate");
                Attempt::Done(Err(WriteError::new(
                    libc::EACCES,
                    format!("the master refused this mount: {}", status.message()),
                )))
            }
            Err(status) => {
                // Whatever happened to the request, sending it again is safe: it carries its
                // write id, and the masters apply each write once.
                if status.code() == tonic::Code::FailedPrecondition {
                    self.answered();
                    self.follow_refusal(&status);
                } else {
                    // The request may have reached the leader before the connection failed.
                    *maybe |= status.code() != tonic::Code::Unavailable
                        || !status.message().contains("connect");
                    self.forget_leader();
                }
                Attempt::Retry(status.message().to_string())
            }
        }
    }

    /// Starts keeping a local copy of the cluster, fed by a state stream (from the first master
    /// in order that serves one) and the leader stream.
    pub fn spawn_local_copy(&self) -> LocalCopy {
        let copy = LocalCopy::default();
        tokio::spawn(feeds::state(self.clone(), copy.clone()));
        tokio::spawn(feeds::leader(self.clone(), copy.clone()));
        copy
    }
}

/// Asks the master at `addr` for its status.
pub async fn master_status(connector: &Connector, addr: &str) -> Result<StatusReply, String> {
    let mut master = master_rpc(connector.channel(addr));
    match tokio::time::timeout(ASK_TIMEOUT, master.status(StatusRequest {})).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(s.message().to_string()),
        Err(_) => Err(format!("no answer within {}s", ASK_TIMEOUT.as_secs())),
    }
}

/// A client of a master's `Master` service over `ch`, taking messages as large as a master
/// sends (the state stream starts with the whole state).
pub fn master_rpc(ch: tonic::transport::Channel) -> GrpcMaster<tonic::transport::Channel> {
    GrpcMaster::new(ch)
        .max_decoding_message_size(crate::limits::MAX_FROM_MASTER)
        .max_encoding_message_size(crate::limits::MAX_REQUEST_TO_MASTER)
}

/// Whether a master refused the caller's certificate (no retry mends that).
pub(crate) fn refused_identity(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
    )
}
