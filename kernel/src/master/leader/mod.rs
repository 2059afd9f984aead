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
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::hub::Hub;
use crate::acls::Acls;
use crate::client::Connector;
use crate::proto::{master_message, MasterMessage};
use crate::raft::Raft;
use crate::resources::Resources;
use crate::state::{Applied, Command};
use crate::watch::LeaderInfo;

mod agents;
mod batch;
pub mod board;
mod membership;
mod offers;
mod optimistic;
mod reservations;
mod roles;
mod writes;

use batch::Batches;
pub use board::Board;

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The least time between two allocation passes by default: resources freed by a burst of task
/// ends are offered in one pass rather than one pass each, and freed resources wait at most
/// this long, less than a status update's round trip takes to be noticed by anyone.
pub const DEFAULT_ALLOCATION_INTERVAL: Duration = Duration::from_millis(50);

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
    /// Who may do what (`--acls`).
    pub acls: Arc<Acls>,
    /// The least time between two allocation passes.
    pub allocation_interval: Duration,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            offer_timeout: Duration::from_secs(30),
            default_refuse: Duration::from_secs(5),
            agent_timeout: Duration::from_secs(15),
            agent_reregister_timeout: Duration::from_secs(60),
            acls: Arc::new(Acls::default()),
            allocation_interval: DEFAULT_ALLOCATION_INTERVAL,
        }
    }
}

/// A refused write: the errno for the writer and why.
#[derive(Clone, Debug)]
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

fn leadership_lost() -> Refusal {
    refuse(
        libc::EAGAIN,
        "this master stopped leading before the write was committed; retry with the new leader",
    )
}

struct Session {
    generation: u64,
    tx: mpsc::UnboundedSender<MasterMessage>,
}

/// The connected agents' sessions, with their ids also in a persistent set: an allocation pass
/// copies the set in no time and finds who connected or left since the last pass without a walk
/// of every agent.
#[derive(Default)]
struct Sessions {
    open: HashMap<String, Session>,
    connected: imbl::OrdSet<String>,
}

impl Sessions {
    fn get(&self, agent_id: &str) -> Option<&Session> {
        self.open.get(agent_id)
    }

    fn contains_key(&self, agent_id: &str) -> bool {
        self.open.contains_key(agent_id)
    }

    fn insert(&mut self, agent_id: String, session: Session) {
        self.connected.insert(agent_id.clone());
        self.open.insert(agent_id, session);
    }

    fn remove(&mut self, agent_id: &str) {
        self.open.remove(agent_id);
        self.connected.remove(agent_id);
    }

    fn clear(&mut self) {
        self.open.clear();
        self.connected = imbl::OrdSet::new();
    }
}

#[derive(Default)]
struct Allocation {
    /// (framework id, agent id) pairs not to offer until the instant passes.
    filters: HashMap<(String, String), Instant>,
    /// Resources taken from an offer whose launch is not committed yet, per agent.
    pending: HashMap<String, Resources>,
    /// The same, per (role, framework): they count as held there.
    pending_held: HashMap<(String, String), Resources>,
    offer_seq: u64,
    /// Recent launches and stale offers, for optimistic offers.
    optimistic: optimistic::Book,
    /// What the allocator keeps from one pass to the next.
    allocator: crate::allocator::pass::Allocator,
}

impl Allocation {
    /// Holds `resources` of an agent, for a (role, framework), while a command that takes
    /// them from an offer commits: the allocator offers them to no one else meanwhile.
    fn hold(&mut self, agent_id: &str, role: &str, framework_id: &str, resources: &Resources) {
        let p = self.pending.entry(agent_id.to_string()).or_default();
        *p = p.add(resources);
        let key = (role.to_string(), framework_id.to_string());
        let p = self.pending_held.entry(key).or_default();
        *p = p.add(resources);
    }

    /// Ends a [`Allocation::hold`] once its command committed or failed.
    fn release(&mut self, agent_id: &str, role: &str, framework_id: &str, resources: &Resources) {
        if let Some(p) = self.pending.get_mut(agent_id) {
            *p = p.checked_sub(resources).unwrap_or_default();
            if p.is_empty() {
                self.pending.remove(agent_id);
            }
        }
        let key = (role.to_string(), framework_id.to_string());
        if let Some(p) = self.pending_held.get_mut(&key) {
            *p = p.checked_sub(resources).unwrap_or_default();
            if p.is_empty() {
                self.pending_held.remove(&key);
            }
        }
    }
}

/// A command committed through Raft: where, and what applying it did.
struct Committed {
    index: u64,
    applied: Applied,
}

/// The leader's runtime.
pub struct Leader {
    raft: Raft,
    connector: Connector,
    hub: Arc<Hub>,
    board: Board,
    config: LeaderConfig,
    leader: LeaderInfo,
    epoch: u64,
    sessions: Mutex<Sessions>,
    session_seq: AtomicU64,
    alloc: Mutex<Allocation>,
    /// Set when an allocation pass is wanted.
    allocation_wanted: tokio::sync::Notify,
    batches: Batches,
    stopped: watch::Sender<bool>,
    me: Weak<Leader>,
}

impl Leader {
    /// A runtime for a leadership: `leader` says who leads, in which term; `epoch` (the log
    /// index at which it began) prefixes its offer ids, numbered after `offer_seq`.
    pub fn new(
        raft: Raft,
        connector: Connector,
        hub: Arc<Hub>,
        config: LeaderConfig,
        leader: LeaderInfo,
        epoch: u64,
        offer_seq: u64,
    ) -> Arc<Leader> {
        Arc::new_cyclic(|me| Leader {
            raft,
            connector,
            hub,
            board: Board::new(leader.clone()),
            config,
            leader,
            epoch,
            sessions: Mutex::new(Sessions::default()),
            session_seq: AtomicU64::new(0),
            alloc: Mutex::new(Allocation {
                offer_seq,
                ..Allocation::default()
            }),
            allocation_wanted: tokio::sync::Notify::new(),
            batches: Batches::default(),
            stopped: watch::channel(false).0,
            me: me.clone(),
        })
    }

    /// The replicated state this leader reads.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The offers and announcements of this leadership.
    pub fn board(&self) -> &Board {
        &self.board
    }

    /// The log index where this leadership began, and the last offer number it used.
    pub fn offer_numbering(&self) -> (u64, u64) {
        (self.epoch, self.alloc.lock().expect("alloc lock").offer_seq)
    }

    /// Ends this leadership's runtime at once: leader streams end (mounts drop its offers),
    /// agent sessions close (agents go to the next leader), timers and pending proposals stop.
    pub fn stop(&self) {
        self.board.close();
        let _ = self.stopped.send(true);
        self.sessions.lock().expect("sessions lock").clear();
    }

    /// Whether [`Leader::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }

    /// Resolves once the runtime is stopped.
    async fn until_stopped(&self) {
        let mut rx = self.stopped.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Commits a command, or says why not: this master stopped leading (EAGAIN: the writer
    /// retries with the next leader) or Raft failed (EIO). Commands proposed while another
    /// proposal is in flight go together in the next entry (`batch`).
    async fn propose(&self, cmd: Command) -> Result<Committed, Refusal> {
        if self.is_stopped() {
            return Err(leadership_lost());
        }
        let done = self.batches.submit(cmd);
        tokio::select! {
            r = done => r.unwrap_or_else(|_| Err(leadership_lost())),
            _ = self.until_stopped() => Err(leadership_lost()),
        }
    }

    /// Commits one entry now.
    async fn propose_now(&self, cmd: Command) -> Result<Committed, Refusal> {
        let write = self.raft.client_write(cmd);
        let result = tokio::select! {
            r = write => r,
            _ = self.until_stopped() => return Err(leadership_lost()),
        };
        match result {
            Ok(r) => Ok(Committed {
                index: r.log_id.index,
                applied: r.data.applied,
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(leadership_lost())
            }
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
}

/// Sleeps for `d` unless the leadership ends first; then the runtime, if it still leads.
async fn after(me: &Weak<Leader>, d: Duration) -> Option<Arc<Leader>> {
    let mut stopped = me.upgrade()?.stopped.subscribe();
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stopped.wait_for(|s| *s) => return None,
    }
    me.upgrade().filter(|l| !l.is_stopped())
}
