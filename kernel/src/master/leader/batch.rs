//! Batching proposals: commands proposed while an entry is being committed go together in the
//! next entry ([`Command::Batch`]), so a leader answering many writers and agents at once pays
//! one append, replication and fsync per batch instead of one per command (openraft appends
//! each proposal on its own). A lone command goes alone, with no wait.

use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Notify};

use super::{Committed, Leader, Refusal};
use crate::state::Command;

/// How many commands one entry carries at most.
const MAX_BATCH: usize = 1024;

type Reply = oneshot::Sender<Result<Committed, Refusal>>;

/// Commands waiting to be proposed.
#[derive(Default)]
pub(super) struct Batches {
    queue: Mutex<Vec<(Command, Reply)>>,
    wake: Notify,
}

impl Batches {
    /// Queues a command; the receiver gets its outcome.
    pub(super) fn submit(&self, cmd: Command) -> oneshot::Receiver<Result<Committed, Refusal>> {
        let (tx, rx) = oneshot::channel();
        self.queue.lock().expect("batch lock").push((cmd, tx));
        self.wake.notify_one();
        rx
    }

    fn take(&self) -> Vec<(Command, Reply)> {
        let mut queue = self.queue.lock().expect("batch lock");
        let n = queue.len().min(MAX_BATCH);
        queue.drain(..n).collect()
    }
}

impl Leader {
    /// Proposes queued commands, one entry at a time, while this leadership lasts.
    pub fn run_proposer(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(leader) = me.upgrade() else { return };
                if leader.is_stopped() {
                    return;
                }
                let mut batch = leader.batches.take();
                if batch.is_empty() {
                    // A command submitted since `take` left a permit: this returns at once.
                    tokio::select! {
                        _ = leader.batches.wake.notified() => {}
                        _ = leader.until_stopped() => return,
                    }
                    continue;
                }
                if batch.len() == 1 {
                    let (cmd, reply) = batch.pop().expect("one command");
                    let _ = reply.send(leader.propose_now(cmd).await);
                    continue;
                }
                let (commands, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().unzip();
                match leader.propose_now(Command::Batch(commands)).await {
                    Ok(c) => {
                        for (reply, applied) in replies.into_iter().zip(c.applied.batch) {
                            let _ = reply.send(Ok(Committed {
                                index: c.index,
                                applied,
                            }));
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
    }
}
