//! Batching proposals: commands proposed while an entry is being committed go together in the
//! next entry ([`Command::Batch`]), so a leader answering many writers and agents at once pays
//! one append, replication and fsync per batch instead of one per command (openraft appends
//! each proposal on its own). A lone command goes alone, with no wait.

use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Notify};

use super::{Committed, Leader, Refusal};
use crate::limits::MAX_BATCH_BYTES;
use crate::state::Command;

/// How many commands one entry carries at most.
const MAX_BATCH: usize = 1024;

type Reply = oneshot::Sender<Result<Committed, Refusal>>;

/// Commands waiting to be proposed, each with its size in bytes.
#[derive(Default)]
pub(super) struct Batches {
    queue: Mutex<Vec<(Command, usize, Reply)>>,
    wake: Notify,
}

/// Counts the bytes written to it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The size of a command's JSON in an entry.
fn size_of(cmd: &Command) -> usize {
    let mut c = Counter(0);
    let _ = serde_json::to_writer(&mut c, cmd);
    c.0
}

impl Batches {
    /// Queues a command; the receiver gets its outcome.
    pub(super) fn submit(&self, cmd: Command) -> oneshot::Receiver<Result<Committed, Refusal>> {
        let (tx, rx) = oneshot::channel();
        let size = size_of(&cmd);
        self.queue.lock().expect("batch lock").push((cmd, size, tx));
        self.wake.notify_one();
        rx
    }

    /// The next batch: the oldest commands, at most [`MAX_BATCH`] of them and (past the
    /// first) at most [`MAX_BATCH_BYTES`] of them, so that entries stay small enough to
    /// replicate and apply promptly whatever writers send.
    fn take(&self) -> Vec<(Command, Reply)> {
        let mut queue = self.queue.lock().expect("batch lock");
        let (mut n, mut bytes) = (0, 0);
        for (_, size, _) in queue.iter().take(MAX_BATCH) {
            if n > 0 && bytes + size > MAX_BATCH_BYTES {
                break;
            }
            bytes += size;
            n += 1;
        }
        queue.drain(..n).map(|(c, _, r)| (c, r)).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn register(name: String) -> Command {
        Command::RegisterFramework {
            name,
            user: "root".into(),
            principal: None,
            uid: 0,
            gid: 0,
            time_ms: 1,
        }
    }

    #[test]
    fn a_batch_stops_before_its_bytes_pass_the_limit_but_never_comes_out_empty() {
        let b = Batches::default();
        let big = "x".repeat(MAX_BATCH_BYTES / 3);
        let _replies: Vec<_> = (0..4)
            .map(|_| b.submit(register(big.clone())))
            .chain((0..3).map(|i| b.submit(register(format!("small{i}")))))
            .collect();
        assert_eq!(b.take().len(), 2, "two thirds and a bit fit, three do not");
        assert_eq!(b.take().len(), 5, "the small ones fit beside the last two");
        assert!(b.take().is_empty());

        let huge = "x".repeat(MAX_BATCH_BYTES * 2);
        let _reply = b.submit(register(huge));
        assert_eq!(
            b.take().len(),
            1,
            "one command larger than the limit goes alone"
        );
    }

    #[test]
    fn a_batch_holds_at_most_max_batch_commands() {
        let b = Batches::default();
        let _replies: Vec<_> = (0..MAX_BATCH + 5)
            .map(|i| b.submit(register(format!("f{i}"))))
            .collect();
        assert_eq!(b.take().len(), MAX_BATCH);
        assert_eq!(b.take().len(), 5);
    }
}
