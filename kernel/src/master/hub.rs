//! The master's replicated state, as Raft applies it, and the state stream every watcher of
//! this master reads: from any log position its log still holds, then live.
//!
//! One lock orders apply and subscription, so a watcher that subscribes under it at index `i`
//! gets exactly the commands after `i`. Whole-state copies (a new watcher's snapshot, Raft's)
//! are clones of the state's shared maps taken under it, encoded after it is released.

use std::sync::{Arc, Mutex, OnceLock};

use openraft::{EntryPayload, RaftLogReader};
use tokio::sync::broadcast;

use crate::raft::storage::{LogStore, ReplicatedState};
use crate::raft::{Response, TypeConfig};
use crate::state::{ClusterState, Command};
use crate::watch::StateEvent;

/// How many commands a slow watcher may fall behind before its stream is ended (it resumes
/// from where it was).
const WATCH_BUFFER: usize = 65_536;

/// A state event, encoded once for every watcher.
#[derive(Debug)]
pub struct Encoded {
    /// The log index it brings a watcher to.
    pub index: u64,
    /// The [`StateEvent`] as JSON, shared by every watcher's stream.
    pub json: prost::bytes::Bytes,
}

impl Encoded {
    fn new(event: &StateEvent) -> Arc<Encoded> {
        Arc::new(Encoded {
            index: event.index(),
            json: serde_json::to_vec(event)
                .expect("state events serialize")
                .into(),
        })
    }
}

/// Where a new watcher starts: the events to send first, and the live feed after them (events
/// at or below `start` in the feed are to be skipped).
pub struct Subscription {
    /// The events before the live feed: a snapshot, or the commands after the watcher's index.
    pub first: Vec<Arc<Encoded>>,
    /// The watcher's index once `first` is sent; later events at or below it are skipped.
    pub start: u64,
    /// Every event applied after the subscription.
    pub live: broadcast::Receiver<Arc<Encoded>>,
}

/// The replicated state and the state stream.
pub struct Hub {
    state: Mutex<ClusterState>,
    tx: broadcast::Sender<Arc<Encoded>>,
    log: OnceLock<LogStore<TypeConfig>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            state: Mutex::new(ClusterState::default()),
            tx: broadcast::channel(WATCH_BUFFER).0,
            log: OnceLock::new(),
        }
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    /// Gives the hub the log it resumes watchers from.
    pub fn set_log(&self, log: LogStore<TypeConfig>) {
        let _ = self.log.set(log);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClusterState> {
        self.state.lock().expect("hub lock")
    }

    /// Reads the state under the lock.
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&self.lock())
    }

    /// The log index of the last command applied.
    pub fn index(&self) -> u64 {
        self.lock().applied_index
    }

    /// Subscribes a watcher that has applied the commands up to `from_index` (0: none). It gets
    /// the commands after that from the log, or a snapshot if the log no longer holds them. A
    /// watcher ahead of this master (it read another one) waits for it to catch up.
    pub async fn subscribe(&self, from_index: u64) -> Subscription {
        let (snapshot, applied, live) = {
            let state = self.lock();
            let applied = state.applied_index;
            let snapshot = (from_index == 0).then(|| StateEvent::Snapshot {
                index: applied,
                state: state.clone(),
            });
            (snapshot, applied, self.tx.subscribe())
        };
        // Encoded outside the lock: the clone is the state as of `applied` whatever applies now.
        if let Some(s) = snapshot {
            return Subscription {
                first: vec![Encoded::new(&s)],
                start: applied,
                live,
            };
        }
        if from_index >= applied {
            return Subscription {
                first: Vec::new(),
                start: from_index,
                live,
            };
        }
        match self.commands_between(from_index, applied).await {
            Some(first) => Subscription {
                first,
                start: applied,
                live,
            },
            None => {
                // The log was purged past the watcher's index: start over from a snapshot,
                // taken with a new subscription so nothing falls between them.
                let (snap, live) = {
                    let state = self.lock();
                    let snap = StateEvent::Snapshot {
                        index: state.applied_index,
                        state: state.clone(),
                    };
                    (snap, self.tx.subscribe())
                };
                Subscription {
                    start: snap.index(),
                    first: vec![Encoded::new(&snap)],
                    live,
                }
            }
        }
    }

    /// The commands in (`after`, `upto`] from the log, if it still holds all of them.
    async fn commands_between(&self, after: u64, upto: u64) -> Option<Vec<Arc<Encoded>>> {
        let mut log = self.log.get()?.clone();
        let entries = log.try_get_log_entries(after + 1..=upto).await.ok()?;
        let mut expected = after + 1;
        let mut out = Vec::new();
        for e in &entries {
            if e.log_id.index != expected {
                return None;
            }
            expected += 1;
            if let EntryPayload::Normal(command) = &e.payload {
                out.push(Encoded::new(&StateEvent::Applied {
                    index: e.log_id.index,
                    command: command.clone(),
                }));
            }
        }
        (expected == upto + 1).then_some(out)
    }
}

impl ReplicatedState for Hub {
    type Command = Command;
    type Response = Response;
    type Frozen = ClusterState;

    fn apply(&self, index: u64, cmd: &Command) -> Response {
        let mut state = self.lock();
        let applied = state.apply(index, cmd);
        // Encoded once for every watcher, and not at all when none watches this master.
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Encoded::new(&StateEvent::Applied {
                index,
                command: cmd.clone(),
            }));
        }
        Response { applied }
    }

    fn freeze(&self) -> ClusterState {
        self.lock().clone()
    }

    fn encode(frozen: &ClusterState) -> Vec<u8> {
        serde_json::to_vec(frozen).expect("cluster state serializes")
    }

    fn restore(&self, bytes: &[u8]) -> Result<(), String> {
        let restored: ClusterState =
            serde_json::from_slice(bytes).map_err(|e| format!("bad state snapshot: {e}"))?;
        // Encoded for the watchers before the lock is taken; sent under it, so that a watcher
        // subscribing meanwhile gets either this event or the restored state, not both or none.
        let event = StateEvent::Snapshot {
            index: restored.applied_index,
            state: restored.clone(),
        };
        let encoded = Encoded::new(&event);
        drop(event);
        let previous = {
            let mut state = self.lock();
            let previous = std::mem::replace(&mut *state, restored);
            let _ = self.tx.send(encoded);
            previous
        };
        // Freed outside the lock: the replaced state can be large.
        drop(previous);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_spec_line;
    use crate::state::{task_id, NewTask, TaskState, Transition};

    fn register(name: &str) -> Command {
        Command::RegisterFramework {
            name: name.into(),
            user: "root".into(),
            principal: None,
            uid: 0,
            gid: 0,
            time_ms: 1,
        }
    }

    fn launch(framework_id: &str, name: &str) -> Command {
        let spec = parse_spec_line(&format!("name={name} cpus=1 mem=64 -- sleep 9")).unwrap();
        Command::LaunchTasks {
            framework_id: framework_id.into(),
            agent_id: "a1".into(),
            role: "*".into(),
            tasks: vec![NewTask {
                resources: spec.resources(),
                spec,
                ports: vec![],
            }],
            time_ms: 2,
        }
    }

    #[test]
    fn a_frozen_snapshot_encodes_the_state_as_of_the_freeze_whatever_applies_after() {
        let hub = Hub::new();
        hub.apply(
            1,
            &Command::RegisterAgent {
                agent: crate::state::AgentInfo {
                    id: "a1".into(),
                    hostname: "h".into(),
                    address: "127.0.0.1:1".into(),
                    resources: crate::resources::Resources::parse("cpus:4;mem:1024").unwrap(),
                    state: crate::state::AgentState::Active,
                    registered_ms: 1,
                    registration: 0,
                    attributes: Default::default(),
                },
                running: vec![],
            },
        );
        let fw = hub.apply(2, &register("f")).applied.framework_id.unwrap();
        hub.apply(3, &launch(&fw, "t"));
        let frozen = hub.freeze();
        let as_frozen = hub.read(|s| serde_json::to_vec(s).unwrap());

        // Commands go on applying, to the same maps the frozen copy shares.
        hub.apply(4, &launch(&fw, "u"));
        hub.apply(
            5,
            &Command::UpdateTask {
                task_id: task_id(&fw, "t"),
                transition: Transition {
                    state: TaskState::Running,
                    reason: String::new(),
                    message: String::new(),
                    time_ms: 5,
                    exit_code: None,
                    signal: None,
                },
            },
        );
        hub.apply(6, &register("g"));

        let bytes = Hub::encode(&frozen);
        assert_eq!(bytes, as_frozen);
        let decoded: ClusterState = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(decoded, frozen);
        assert_eq!(decoded.applied_index, 3);
        assert_eq!(decoded.tasks.len(), 1);
        assert_eq!(
            decoded.tasks[&task_id(&fw, "t")].state(),
            TaskState::Staging
        );
        assert!(decoded.framework_by_name("g").is_none());
        hub.read(|s| {
            assert_eq!(s.applied_index, 6);
            assert_eq!(s.tasks.len(), 2);
            assert_eq!(s.tasks[&task_id(&fw, "t")].state(), TaskState::Running);
        });

        // Restoring it takes the hub back to the freeze.
        hub.restore(&bytes).unwrap();
        assert_eq!(hub.read(ClusterState::clone), frozen);
    }
}
