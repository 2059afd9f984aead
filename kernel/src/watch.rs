//! The watch stream: what the leader tells every mount, and the local copy a mount keeps.
//!
//! A stream starts with a [`WatchEvent::Snapshot`] and continues with every change. Each event
//! carries a sequence number; a write's reply names the sequence number at which its effects
//! are visible, so a mount can wait for it before answering the writer (read your writes).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::resources::Resources;
use crate::state::{task_id, ClusterState, Command, FrameworkId};

/// An offer: one agent's unused resources, offered to one framework until used, declined,
/// or rescinded. Offers live only on the leader and are not replicated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Unique id (`<log index where the leadership began>-<n>`).
    pub id: String,
    /// The framework it is made to.
    pub framework_id: FrameworkId,
    /// The agent whose resources these are.
    pub agent_id: String,
    /// That agent's hostname.
    pub hostname: String,
    /// What is offered.
    pub resources: Resources,
    /// When it was made (unix ms).
    pub created_ms: u64,
}

/// One message of the watch stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchEvent {
    /// The whole state; replaces whatever the receiver had.
    Snapshot {
        /// Sequence number of this event.
        seq: u64,
        /// The replicated state.
        state: ClusterState,
        /// The outstanding offers.
        offers: Vec<Offer>,
        /// `"<master id> <address>"` of the leader.
        leader: String,
    },
    /// A committed command, to be applied with [`ClusterState::apply`].
    Applied {
        /// Sequence number of this event.
        seq: u64,
        /// Its Raft log index.
        index: u64,
        /// The command.
        command: Command,
    },
    /// A new offer.
    OfferCreated {
        /// Sequence number of this event.
        seq: u64,
        /// The offer.
        offer: Offer,
    },
    /// An offer is gone.
    OfferRemoved {
        /// Sequence number of this event.
        seq: u64,
        /// Which offer.
        offer_id: String,
        /// Whose it was.
        framework_id: FrameworkId,
        /// Why: `accepted`, `declined`, or a rescind reason.
        reason: String,
        /// True when the master took it back (not the framework's own doing).
        rescinded: bool,
    },
    /// A framework's write was refused.
    Refused {
        /// Sequence number of this event.
        seq: u64,
        /// The framework written to.
        framework_id: FrameworkId,
        /// Why.
        message: String,
    },
}

impl WatchEvent {
    /// This event's sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            WatchEvent::Snapshot { seq, .. }
            | WatchEvent::Applied { seq, .. }
            | WatchEvent::OfferCreated { seq, .. }
            | WatchEvent::OfferRemoved { seq, .. }
            | WatchEvent::Refused { seq, .. } => *seq,
        }
    }
}

/// How many event lines a mount keeps per framework.
pub const EVENT_LINES_KEPT: usize = 10_000;

/// A framework's event lines, numbered from the first ever recorded.
#[derive(Clone, Debug, Default)]
pub struct EventLog {
    /// Number of the first line still kept.
    pub first: u64,
    /// The lines kept, each newline-terminated.
    pub lines: VecDeque<String>,
}

impl EventLog {
    /// Number one past the last line.
    pub fn end(&self) -> u64 {
        self.first + self.lines.len() as u64
    }

    fn push(&mut self, line: String) {
        self.lines.push_back(line);
        if self.lines.len() > EVENT_LINES_KEPT {
            self.lines.pop_front();
            self.first += 1;
        }
    }
}

/// A local copy of the cluster: the replicated state, the offers, and per-framework event
/// lines and last errors derived from the stream.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// Sequence number of the last event applied.
    pub seq: u64,
    /// How many snapshots were received (a new one means the stream restarted).
    pub generation: u64,
    /// The replicated state.
    pub state: ClusterState,
    /// Outstanding offers by id.
    pub offers: BTreeMap<String, Offer>,
    /// `"<master id> <address>"` of the leader.
    pub leader: String,
    /// Event lines per framework id.
    pub events: BTreeMap<FrameworkId, EventLog>,
    /// The last refused write per framework id.
    pub errors: BTreeMap<FrameworkId, String>,
}

impl View {
    /// Applies one event of the stream.
    pub fn apply(&mut self, event: &WatchEvent) {
        match event {
            WatchEvent::Snapshot {
                state,
                offers,
                leader,
                ..
            } => {
                self.state = state.clone();
                self.offers = offers.iter().map(|o| (o.id.clone(), o.clone())).collect();
                self.leader = leader.clone();
                self.generation += 1;
                for o in offers {
                    self.log(&o.framework_id, offer_line(o));
                }
            }
            WatchEvent::Applied { index, command, .. } => {
                let applied = self.state.apply(*index, command);
                if applied.error.is_none() {
                    self.log_command(command);
                }
            }
            WatchEvent::OfferCreated { offer, .. } => {
                self.offers.insert(offer.id.clone(), offer.clone());
                self.log(&offer.framework_id, offer_line(offer));
            }
            WatchEvent::OfferRemoved {
                offer_id,
                framework_id,
                reason,
                rescinded,
                ..
            } => {
                self.offers.remove(offer_id);
                if *rescinded {
                    self.log(framework_id, format!("rescind {offer_id} {reason}\n"));
                }
            }
            WatchEvent::Refused {
                framework_id,
                message,
                ..
            } => {
                self.errors
                    .insert(framework_id.clone(), format!("{message}\n"));
                self.log(framework_id, format!("error {message}\n"));
            }
        }
        self.seq = event.seq();
    }

    fn log_command(&mut self, command: &Command) {
        match command {
            Command::LaunchTasks {
                framework_id,
                tasks,
                ..
            } => {
                for t in tasks {
                    self.log(framework_id, format!("task {} TASK_STAGING\n", t.spec.name));
                }
            }
            Command::UpdateTask { task_id: id, .. } | Command::KillTask { task_id: id, .. } => {
                let Some(t) = self.state.tasks.get(id) else {
                    return;
                };
                let last = t.last();
                let mut line = format!("task {} {}", t.name, last.state.as_str());
                if !last.reason.is_empty() {
                    line.push(' ');
                    line.push_str(&last.reason);
                }
                if !last.message.is_empty() {
                    line.push(' ');
                    line.push_str(&last.message);
                }
                line.push('\n');
                let fw = t.framework_id.clone();
                // A kill shows as a line only once the agent reports it.
                if matches!(command, Command::UpdateTask { .. }) {
                    self.log(&fw, line);
                }
            }
            _ => {}
        }
    }

    fn log(&mut self, framework_id: &str, line: String) {
        self.events
            .entry(framework_id.to_string())
            .or_default()
            .push(line);
    }

    /// The offers made to a framework.
    pub fn framework_offers<'a>(
        &'a self,
        framework_id: &'a str,
    ) -> impl Iterator<Item = &'a Offer> {
        self.offers
            .values()
            .filter(move |o| o.framework_id == framework_id)
    }

    /// A task of a registered framework, by framework name and task name.
    pub fn task(&self, framework: &str, name: &str) -> Option<&crate::state::TaskInfo> {
        let fw = self.state.framework_by_name(framework)?;
        self.state.tasks.get(&task_id(&fw.id, name))
    }
}

fn offer_line(o: &Offer) -> String {
    format!(
        "offer {} agent={} hostname={} resources={}\n",
        o.id, o.agent_id, o.hostname, o.resources
    )
}
