//! The agent's side of a task's health checks, which its supervisor runs: it reads the
//! supervisor's health file and reports each health change once, in order, before the task's
//! end; and it learns from that file whether the supervisor killed the task for its health.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::{Inner, Task, TaskEvent};
use crate::health::HealthRecord;

/// How often the agent looks at a running task's health file.
pub const HEALTH_POLL: Duration = Duration::from_millis(250);

impl Inner {
    /// Reports the task's health changes as its supervisor records them, until it ends.
    pub(super) async fn watch_health(self: Arc<Self>, task: Arc<Task>) {
        let ended = task.ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        loop {
            if task.exited.load(Ordering::SeqCst) {
                return;
            }
            self.report_health(&task).await;
            tokio::select! {
                _ = tokio::time::sleep(HEALTH_POLL) => {}
                _ = &mut ended => return,
            }
        }
    }

    /// Reads the task's health file once: sends the changes not yet reported, and keeps why
    /// the supervisor killed the task, if it did.
    pub(super) async fn report_health(&self, task: &Task) {
        let Some(file) = task.health_file.clone() else {
            return;
        };
        let Ok(Some(record)) = tokio::task::spawn_blocking(move || HealthRecord::read(&file)).await
        else {
            return;
        };
        // One reader at a time (the watcher and the monitor's last look): the lock keeps each
        // change reported once and in order.
        let mut killed = task.health_killed.lock().expect("health lock");
        let reported = task.health_reported.load(Ordering::SeqCst);
        if let Some(first) = record.changes.first() {
            if reported > 0 && first.seq > reported + 1 {
                warn!(
                    missed = first.seq - reported - 1,
                    "health changes were made faster than the agent read them; the oldest are not reported"
                );
            }
        }
        for change in record.changes.iter().filter(|c| c.seq > reported) {
            info!(
                healthy = change.healthy,
                seq = change.seq,
                output = %change.output.trim(),
                "health changed"
            );
            let _ = self.events.send(TaskEvent::Health {
                task_id: task.id.clone(),
                health: change.clone(),
            });
            task.health_reported.store(change.seq, Ordering::SeqCst);
        }
        if let Some(last) = record.last {
            *task.last_check.lock().expect("health lock") = Some((last, record.failures));
        }
        if killed.is_none() {
            *killed = record.killed;
        }
    }
}
