//! The local copy a mount serves reads from: a [`View`] fed by the state and leader streams,
//! readable from threads (the FUSE callbacks) and tasks alike, with waits that wake on every
//! change.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use crate::watch::{LeaderEvent, StateEvent, View};

#[derive(Default)]
struct Shared {
    view: Mutex<View>,
    changed: Condvar,
    /// Whether the state stream and the leader stream are up.
    streams: Mutex<(bool, bool)>,
    notify: Notify,
    /// Writers waiting for the view to reach a log index, by index: woken only when it does,
    /// not on every change (hundreds of writers in flight would each wake on every command).
    index_waiters: Mutex<BTreeMap<u64, Vec<oneshot::Sender<()>>>>,
}

/// A local copy of the cluster kept current by the streams; cheap to clone.
#[derive(Clone, Default)]
pub struct LocalCopy {
    shared: Arc<Shared>,
}

impl LocalCopy {
    fn changed(&self) {
        self.shared.changed.notify_all();
        self.shared.notify.notify_waiters();
    }

    /// Applies one event of the state stream and wakes every waiter.
    pub fn apply_state(&self, event: &StateEvent) {
        let index = {
            let mut view = self.view();
            view.apply_state(event);
            view.index
        };
        self.changed();
        let reached = {
            let mut waiters = self.shared.index_waiters.lock().expect("waiters lock");
            let later = waiters.split_off(&(index + 1));
            std::mem::replace(&mut *waiters, later)
        };
        for tx in reached.into_values().flatten() {
            let _ = tx.send(());
        }
    }

    /// Waits until the view has applied log index `index`, or `timeout` passes; returns
    /// whether it has.
    pub async fn wait_for_index(&self, index: u64, timeout: Duration) -> bool {
        let rx = {
            let mut waiters = self.shared.index_waiters.lock().expect("waiters lock");
            // Checked under the waiters' lock: an apply that reaches `index` after this check
            // takes the lock after us, and wakes us.
            if self.view().index >= index {
                return true;
            }
            let (tx, rx) = oneshot::channel();
            waiters.entry(index).or_default().push(tx);
            rx
        };
        tokio::time::timeout(timeout, rx).await.is_ok() || self.view().index >= index
    }

    /// Applies one event of the leader stream and wakes every waiter.
    pub fn apply_leader(&self, event: &LeaderEvent) {
        self.view().apply_leader(event);
        self.changed();
    }

    /// The leader stream ended: no leader, no offers.
    pub fn leader_lost(&self, reason: &str) {
        self.view().leader_lost(reason);
        self.set_streams(None, Some(false));
    }

    /// Records which streams are up (`None`: unchanged) and wakes every waiter.
    pub fn set_streams(&self, state: Option<bool>, leader: Option<bool>) {
        {
            let mut s = self.shared.streams.lock().expect("streams lock");
            if let Some(v) = state {
                s.0 = v;
            }
            if let Some(v) = leader {
                s.1 = v;
            }
        }
        self.changed();
    }

    /// True while the state stream is up.
    pub fn connected(&self) -> bool {
        self.shared.streams.lock().expect("streams lock").0
    }

    /// True while the leader stream is up.
    pub fn leader_connected(&self) -> bool {
        self.shared.streams.lock().expect("streams lock").1
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
}
