//! The leader's runtime: framework writes (`writes`), agent sessions (`agents`), and offers
//! and the allocator (`offers`).
//!
//! Everything here lives only on the leader and is rebuilt after a failover: offers, refuse
//! filters, agent connections. Durable effects go through Raft first; messages to agents are
//! sent only after the command that justifies them is committed.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::mpsc;
use tracing::warn;

use super::hub::Hub;
use crate::proto::{master_message, MasterMessage};
use crate::raft::{Raft, Response};
use crate::resources::Resources;
use crate::state::Command;

mod agents;
mod offers;
mod writes;

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Settings of the leader's runtime.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// How long an offer stays outstanding before it is rescinded.
    pub offer_timeout: Duration,
    /// How long a declined agent is not offered to that framework again, by default.
    pub default_refuse: Duration,
    /// How long an agent's session may stay silent before it is closed; agents heartbeat at
    /// a third of it.
    pub agent_timeout: Duration,
    /// How long a disconnected agent has to register again before its tasks are TASK_LOST.
    pub agent_reregister_timeout: Duration,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            offer_timeout: Duration::from_secs(30),
            default_refuse: Duration::from_secs(5),
            agent_timeout: Duration::from_secs(15),
            agent_reregister_timeout: Duration::from_secs(60),
        }
    }
}

/// A refused write: the errno for the writer and why.
#[derive(Debug)]
struct Refusal {
    errno: i32,
    message: String,
}

fn refuse(errno: i32, message: impl Into<String>) -> Refusal {
    Refusal {
        errno,
        message: message.into(),
    }
}

struct Session {
    generation: u64,
    tx: mpsc::UnboundedSender<MasterMessage>,
}

#[derive(Default)]
struct Allocation {
    /// Round-robin position: the id of the framework offered to last.
    last_framework: Option<String>,
    /// (framework id, agent id) pairs not to offer until the instant passes.
    filters: HashMap<(String, String), Instant>,
    /// Resources taken from an offer whose launch is not committed yet, per agent.
    pending: HashMap<String, Resources>,
    offer_seq: u64,
}

/// The leader's runtime.
pub struct Leader {
    raft: Raft,
    hub: Arc<Hub>,
    config: LeaderConfig,
    epoch: u64,
    sessions: Mutex<HashMap<String, Session>>,
    session_seq: AtomicU64,
    alloc: Mutex<Allocation>,
    me: Weak<Leader>,
}

impl Leader {
    /// A runtime for a leadership that began at log index `epoch`, which prefixes its offer ids.
    pub fn new(raft: Raft, hub: Arc<Hub>, config: LeaderConfig, epoch: u64) -> Arc<Leader> {
        Arc::new_cyclic(|me| Leader {
            raft,
            hub,
            config,
            epoch,
            sessions: Mutex::new(HashMap::new()),
            session_seq: AtomicU64::new(0),
            alloc: Mutex::new(Allocation::default()),
            me: me.clone(),
        })
    }

    /// The hub this leader publishes to.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    async fn propose(&self, cmd: Command) -> Result<Response, Refusal> {
        match self.raft.client_write(cmd).await {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(refuse(
                libc::EAGAIN,
                format!(
                    "this master is not the leader any more (leader: {:?}); retry",
                    f.leader_node.map(|n| n.addr)
                ),
            )),
            Err(e) => Err(refuse(libc::EIO, format!("could not commit: {e}"))),
        }
    }

    fn send(&self, agent_id: &str, msg: master_message::Msg) {
        let sessions = self.sessions.lock().expect("sessions lock");
        match sessions.get(agent_id) {
            Some(s) => {
                let _ = s.tx.send(MasterMessage { msg: Some(msg) });
            }
            // The agent re-registers with what it runs; the state then settles the task.
            None => {
                warn!(agent = %agent_id, "agent not connected; message dropped until it re-registers")
            }
        }
    }

    fn me(&self) -> Option<Arc<Leader>> {
        self.me.upgrade()
    }
}
