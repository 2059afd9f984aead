//! Durable Raft storage for openraft 0.9 (storage-v2), generic over the application's state.
//!
//! - [`LogStore`]: the log, vote, commit index and last purged log id in a redb database
//!   (`<dir>/raft.redb`). Appends, truncations, purges and votes are fsynced before openraft is
//!   told they are durable.
//! - [`StateMachineStore`]: applies committed entries to a [`ReplicatedState`] and persists its
//!   snapshots in `<dir>/snapshots/` (temporary file, fsync, rename, fsync of the directory). On
//!   open the newest snapshot is restored, and openraft re-applies the log after it. A snapshot
//!   freezes the state between two applies (cheaply) and encodes and writes it while commands
//!   go on applying.

mod log_store;
mod state_machine;
#[cfg(test)]
mod tests;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{Entry, RaftTypeConfig};

pub use log_store::LogStore;
pub use state_machine::{SnapshotBuilder, StateMachineStore};

/// The application's deterministic state, applied from committed log entries.
pub trait ReplicatedState: Send + Sync + 'static {
    /// A command carried by a normal log entry.
    type Command: openraft::AppData;
    /// What applying a command returns to its proposer.
    type Response: openraft::AppDataResponse + Default;
    /// The whole state as of one moment, for a snapshot, unaffected by commands applied after.
    type Frozen: Send + Sync + 'static;
    /// Apply one committed command at this log index (called in log order, never twice for the
    /// same index after a restore unless restore() was called in between).
    fn apply(&self, index: u64, cmd: &Self::Command) -> Self::Response;
    /// A frozen copy of the state as it is now. Commands wait while it is taken, so it must be
    /// cheap (a clone of structurally shared data, not a serialization).
    fn freeze(&self) -> Self::Frozen;
    /// Serialize a frozen copy of the whole state (for a snapshot). Called off the apply path,
    /// while later commands apply.
    fn encode(frozen: &Self::Frozen) -> Vec<u8>;
    /// Replace the whole state with a snapshot's bytes.
    fn restore(&self, bytes: &[u8]) -> Result<(), String>;
}

/// The openraft type configurations this storage works with; implemented for every matching
/// config, e.g. one declared with `openraft::declare_raft_types!`.
pub trait StorageTypeConfig:
    RaftTypeConfig<NodeId = u64, Entry = Entry<Self>, SnapshotData = Cursor<Vec<u8>>>
{
}

impl<C> StorageTypeConfig for C where
    C: RaftTypeConfig<NodeId = u64, Entry = Entry<C>, SnapshotData = Cursor<Vec<u8>>>
{
}

/// Why the storage could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A directory or file could not be created, read or synced.
    #[error("{path}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The redb database could not be opened or initialized.
    #[error("raft database {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// The cause (boxed: redb's error is large).
        source: Box<redb::Error>,
    },
    /// The snapshot file is malformed.
    #[error("snapshot {path}: {message}")]
    Snapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The application state rejected the snapshot's bytes.
    #[error("restoring state from snapshot {path}: {message}")]
    Restore {
        /// The snapshot file.
        path: PathBuf,
        /// The state's error.
        message: String,
    },
}

/// Opens (creating `dir` if needed) the log store and the state machine store, restoring `state`
/// from the newest snapshot in `dir`.
///
/// `state` must be in its initial (empty) state: without a snapshot, openraft rebuilds it by
/// re-applying the log from the start.
pub async fn open<C, S>(
    dir: &Path,
    state: Arc<S>,
) -> Result<(LogStore<C>, StateMachineStore<C, S>), OpenError>
where
    S: ReplicatedState,
    C: StorageTypeConfig<D = S::Command, R = S::Response>,
{
    let dir = dir.to_path_buf();
    let path = dir.clone();
    // Opening reads and may repair files: keep it off the async worker threads.
    let opened = tokio::task::spawn_blocking(move || {
        let log = LogStore::open(&dir)?;
        let sm = StateMachineStore::open(&dir, state)?;
        Ok((log, sm))
    })
    .await;
    match opened {
        Ok(res) => res,
        Err(e) => Err(OpenError::Io {
            path,
            source: std::io::Error::other(e),
        }),
    }
}

/// A failure inside a storage operation, before it is given openraft's subject and verb.
#[derive(Debug, thiserror::Error)]
enum Fault {
    #[error(transparent)]
    Redb(Box<redb::Error>),
    #[error("encoding: {0}")]
    Codec(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("blocking task: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Corrupt(String),
}

// redb returns a distinct error type per step; fold them all into `redb::Error`.
macro_rules! redb_fault {
    ($($t:ty),*) => {$(
        impl From<$t> for Fault {
            fn from(e: $t) -> Self {
                Fault::Redb(Box::new(e.into()))
            }
        }
    )*};
}
redb_fault!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Runs blocking disk work (fsyncs, file reads) off the async worker threads.
async fn blocking<T, F>(f: F) -> Result<T, Fault>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Fault> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}
