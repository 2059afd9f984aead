//! The master's authoritative view: the replicated state as applied by Raft, the leader's
//! outstanding offers, and the broadcast that feeds every watch stream.
//!
//! One lock orders every change, so each change gets the next sequence number and a watcher
//! that subscribes under the lock sees a snapshot followed by exactly the changes after it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::raft::storage::ReplicatedState;
use crate::raft::Response;
use crate::state::{ClusterState, Command};
use crate::watch::{Offer, WatchEvent};

/// How many events a slow watcher may fall behind before its stream is restarted.
const WATCH_BUFFER: usize = 65_536;

struct Inner {
    seq: u64,
    state: ClusterState,
    offers: BTreeMap<String, Offer>,
    leader: String,
}

/// The authoritative state and the watch broadcast.
pub struct Hub {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<WatchEvent>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            inner: Mutex::new(Inner {
                seq: 0,
                state: ClusterState::default(),
                offers: BTreeMap::new(),
                leader: String::new(),
            }),
            tx: broadcast::channel(WATCH_BUFFER).0,
        }
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("hub lock")
    }

    fn publish(&self, inner: &mut Inner, make: impl FnOnce(u64) -> WatchEvent) -> u64 {
        inner.seq += 1;
        let seq = inner.seq;
        // No receivers is fine: nobody watches yet.
        let _ = self.tx.send(Arc::new(make(seq)));
        seq
    }

    fn snapshot_event(inner: &Inner) -> WatchEvent {
        WatchEvent::Snapshot {
            seq: inner.seq,
            state: inner.state.clone(),
            offers: inner.offers.values().cloned().collect(),
            leader: inner.leader.clone(),
        }
    }

    /// A consistent snapshot and a receiver of every event after it.
    pub fn subscribe(&self) -> (WatchEvent, broadcast::Receiver<Arc<WatchEvent>>) {
        let inner = self.lock();
        (Self::snapshot_event(&inner), self.tx.subscribe())
    }

    /// Reads the state and offers under the lock.
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState, &BTreeMap<String, Offer>) -> R) -> R {
        let inner = self.lock();
        f(&inner.state, &inner.offers)
    }

    /// The sequence number of the last event.
    pub fn seq(&self) -> u64 {
        self.lock().seq
    }

    /// Records who leads, shown in `/cluster/leader`; watchers get a fresh snapshot.
    pub fn set_leader(&self, leader: String) {
        let mut inner = self.lock();
        inner.leader = leader;
        let snap = Self::snapshot_event(&inner);
        self.publish(&mut inner, |seq| match snap {
            WatchEvent::Snapshot {
                state,
                offers,
                leader,
                ..
            } => WatchEvent::Snapshot {
                seq,
                state,
                offers,
                leader,
            },
            other => other,
        });
    }

    /// Adds an offer.
    pub fn add_offer(&self, offer: Offer) -> u64 {
        let mut inner = self.lock();
        inner.offers.insert(offer.id.clone(), offer.clone());
        self.publish(&mut inner, |seq| WatchEvent::OfferCreated { seq, offer })
    }

    /// Changes what an outstanding offer holds (after a launch used part of it).
    pub fn update_offer(&self, offer_id: &str, resources: crate::resources::Resources) {
        let mut inner = self.lock();
        let Some(offer) = inner.offers.get_mut(offer_id) else {
            return;
        };
        offer.resources = resources;
        let offer = offer.clone();
        self.publish(&mut inner, |seq| WatchEvent::OfferCreated { seq, offer });
    }

    /// Removes an offer if it is still there; returns it.
    pub fn remove_offer(&self, offer_id: &str, reason: &str, rescinded: bool) -> Option<Offer> {
        let mut inner = self.lock();
        let offer = inner.offers.remove(offer_id)?;
        let framework_id = offer.framework_id.clone();
        self.publish(&mut inner, |seq| WatchEvent::OfferRemoved {
            seq,
            offer_id: offer_id.to_string(),
            framework_id,
            reason: reason.to_string(),
            rescinded,
        });
        Some(offer)
    }

    /// Removes every offer matching `pred`; returns them.
    pub fn remove_offers_where(
        &self,
        pred: impl Fn(&Offer) -> bool,
        reason: &str,
        rescinded: bool,
    ) -> Vec<Offer> {
        let ids: Vec<String> = self.read(|_, offers| {
            offers
                .values()
                .filter(|o| pred(o))
                .map(|o| o.id.clone())
                .collect()
        });
        ids.iter()
            .filter_map(|id| self.remove_offer(id, reason, rescinded))
            .collect()
    }

    /// Records a refused write so the framework can read why; returns its sequence number.
    pub fn refused(&self, framework_id: &str, message: &str) -> u64 {
        let mut inner = self.lock();
        self.publish(&mut inner, |seq| WatchEvent::Refused {
            seq,
            framework_id: framework_id.to_string(),
            message: message.to_string(),
        })
    }
}

impl ReplicatedState for Hub {
    type Command = Command;
    type Response = Response;

    fn apply(&self, index: u64, cmd: &Command) -> Response {
        let mut inner = self.lock();
        let applied = inner.state.apply(index, cmd);
        let command = cmd.clone();
        let seq = self.publish(&mut inner, |seq| WatchEvent::Applied {
            seq,
            index,
            command,
        });
        Response { applied, seq }
    }

    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&self.lock().state).expect("cluster state serializes")
    }

    fn restore(&self, bytes: &[u8]) -> Result<(), String> {
        let state: ClusterState =
            serde_json::from_slice(bytes).map_err(|e| format!("bad state snapshot: {e}"))?;
        let mut inner = self.lock();
        inner.state = state;
        let snap = Self::snapshot_event(&inner);
        self.publish(&mut inner, move |seq| match snap {
            WatchEvent::Snapshot {
                state,
                offers,
                leader,
                ..
            } => WatchEvent::Snapshot {
                seq,
                state,
                offers,
                leader,
            },
            other => other,
        });
        Ok(())
    }
}
