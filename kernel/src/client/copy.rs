//! The local copy a mount serves reads from: a [`View`] fed by the state and leader streams,
//! readable from threads (the FUSE callbacks) and tasks alike, with waits that wake on every
//! change.
//!
//! The view is behind a read-write lock: reads run side by side and wait for the streams only
//! while one event applies, never for each other; waiters sleep on a change counter of their
//! own, not on the view's lock.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use crate::watch::{LeaderEvent, StateEvent, View};

#[derive(Default)]
struct Shared {
    view: RwLock<View>,
    /// How many changes the view has had: what blocking waiters sleep on (with `changed`).
    version: Mutex<u64>,
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
        *self.shared.version.lock().expect("version lock") += 1;
        self.shared.changed.notify_all();
        self.shared.notify.notify_waiters();
    }

    /// Applies one event of the state stream and wakes every waiter.
    pub fn apply_state(&self, event: StateEvent) {
        let (index, replaced) = {
            let mut view = self.view_mut();
            let replaced = view.apply_state(event);
            (view.index, replaced)
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
        // A state a snapshot replaced is dropped last, with no lock held and every waiter
        // already woken.
        drop(replaced);
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
        self.view_mut().apply_leader(event);
        self.changed();
    }

    /// The leader stream ended: no leader, no offers.
    pub fn leader_lost(&self, reason: &str) {
        self.view_mut().leader_lost(reason);
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

    /// The current view, for reading; hold it briefly (the streams wait for it to apply).
    pub fn view(&self) -> RwLockReadGuard<'_, View> {
        self.shared.view.read().expect("view lock")
    }

    /// The current view, for a change of the mount's own (a refusal it records); waiters are
    /// not woken by it.
    pub fn view_mut(&self) -> RwLockWriteGuard<'_, View> {
        self.shared.view.write().expect("view lock")
    }

    /// Blocks the calling thread until `ready` holds for the view, or `timeout` passes;
    /// returns whether it holds. Wakes on every change.
    pub fn wait_until(&self, timeout: Duration, mut ready: impl FnMut(&View) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            // Read before the check: a change after it moves the counter, and the wait below
            // then returns at once instead of missing it.
            let seen = *self.shared.version.lock().expect("version lock");
            if ready(&self.view()) {
                return true;
            }
            let mut version = self.shared.version.lock().expect("version lock");
            while *version == seen {
                let now = Instant::now();
                if now >= deadline {
                    return false;
                }
                version = self
                    .shared
                    .changed
                    .wait_timeout(version, deadline - now)
                    .expect("version lock")
                    .0;
            }
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::state::ClusterState;

    fn snapshot(index: u64) -> StateEvent {
        StateEvent::Snapshot {
            index,
            state: ClusterState::default(),
        }
    }

    #[test]
    fn a_reader_holding_the_view_keeps_no_other_reader_out() {
        let copy = LocalCopy::default();
        copy.apply_state(snapshot(3));
        let held = copy.view();
        let (tx, rx) = mpsc::channel();
        let other = copy.clone();
        std::thread::spawn(move || tx.send(other.view().index).unwrap());
        let read = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(read, Ok(3), "the second read waited for the first");
        drop(held);
    }

    #[test]
    fn a_blocking_wait_wakes_on_the_change_it_waits_for_and_times_out_without_it() {
        let copy = LocalCopy::default();
        let waiter = copy.clone();
        let waiting = std::thread::spawn(move || {
            waiter.wait_until(Duration::from_secs(30), |v| v.index >= 7)
        });
        copy.apply_state(snapshot(5));
        copy.apply_state(snapshot(7));
        assert!(waiting.join().unwrap());
        assert!(!copy.wait_until(Duration::from_millis(50), |v| v.index >= 8));
    }
}
