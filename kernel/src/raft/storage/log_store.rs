//! The Raft log, vote, commit index and last purged log id, in a redb database.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{blocking, Fault, OpenError, StorageTypeConfig};

/// Log entries, serde_json-encoded, keyed by log index.
const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Single values (vote, committed, last purged log id), serde_json-encoded.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";

/// The database file inside the storage directory.
pub(super) const DB_FILE: &str = "raft.redb";

type StoreError = StorageError<u64>;

/// The durable Raft log; cloning it is cheap and clones share the database, so it is also its
/// own log reader.
pub struct LogStore<C> {
    db: Arc<Database>,
    /// The commit index openraft last gave, until a durable transaction carries it to disk.
    committed: Arc<CommitIndex>,
    _config: PhantomData<fn() -> C>,
}

/// The commit index, kept until a durable transaction carries it; written when the store is
/// dropped (a clean stop) if none did.
struct CommitIndex {
    db: Arc<Database>,
    unwritten: Mutex<Unwritten>,
}

impl Drop for CommitIndex {
    fn drop(&mut self) {
        let unwritten = self.unwritten.get_mut().unwrap_or_else(|e| e.into_inner());
        let Some(latest) = unwritten.latest.filter(|_| !unwritten.written) else {
            return;
        };
        let write = || -> Result<(), Fault> {
            let bytes = serde_json::to_vec(&latest)?;
            let tx = self.db.begin_write()?;
            tx.open_table(META)?
                .insert(KEY_COMMITTED, bytes.as_slice())?;
            tx.commit()?;
            Ok(())
        };
        if let Err(e) = write() {
            // Safe to lose: a restart applies less before the election, then the rest.
            tracing::warn!(error = %e, "could not save the commit index at stop");
        }
    }
}

/// A commit index not yet on disk.
#[derive(Default)]
struct Unwritten {
    /// `Some` once openraft has saved one since the store was opened: it is the newest.
    latest: Option<Option<LogId<u64>>>,
    /// Whether `latest` is already in the database.
    written: bool,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            committed: self.committed.clone(),
            _config: PhantomData,
        }
    }
}

impl<C: StorageTypeConfig> LogStore<C> {
    /// Opens (creating if needed) `<dir>/raft.redb`; blocks on disk IO.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let db_err = |source: Fault| match source {
            Fault::Redb(source) => OpenError::Database {
                path: path.clone(),
                source,
            },
            other => OpenError::Io {
                path: path.clone(),
                source: std::io::Error::other(other),
            },
        };
        let db = Database::create(&path).map_err(|e| db_err(e.into()))?;
        // Create the tables up front so readers never find them missing.
        let init = || -> Result<(), Fault> {
            let tx = db.begin_write()?;
            tx.open_table(LOGS)?;
            tx.open_table(META)?;
            tx.commit()?;
            Ok(())
        };
        init().map_err(db_err)?;
        let db = Arc::new(db);
        Ok(Self {
            committed: Arc::new(CommitIndex {
                db: db.clone(),
                unwritten: Mutex::default(),
            }),
            db,
            _config: PhantomData,
        })
    }

    /// The commit index to write in the next durable transaction, if one is unwritten.
    fn committed_to_write(&self) -> Option<Option<LogId<u64>>> {
        let unwritten = self.committed.unwritten.lock().expect("committed lock");
        unwritten.latest.filter(|_| !unwritten.written)
    }

    /// The commit index in the database, whatever is kept in memory.
    #[cfg(test)]
    pub(super) fn committed_on_disk(&self) -> Result<Option<LogId<u64>>, Fault> {
        Ok(self
            .read_meta::<Option<LogId<u64>>>(KEY_COMMITTED)?
            .flatten())
    }

    /// Notes that `value` reached the disk, unless a newer commit index came meanwhile.
    fn committed_written(&self, value: Option<LogId<u64>>) {
        let mut unwritten = self.committed.unwritten.lock().expect("committed lock");
        if unwritten.latest == Some(value) {
            unwritten.written = true;
        }
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Fault> {
        read_meta(&self.db, key)
    }

    /// Writes one meta value, with the unwritten commit index, in one fsynced transaction.
    async fn write_meta<T: Serialize>(&self, key: &'static str, value: &T) -> Result<(), Fault> {
        let bytes = serde_json::to_vec(value)?;
        let db = self.db.clone();
        let carried = self.committed_to_write();
        let committed = carried.map(|c| serde_json::to_vec(&c)).transpose()?;
        blocking(move || {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate);
            {
                let mut meta = tx.open_table(META)?;
                meta.insert(key, bytes.as_slice())?;
                if let Some(c) = &committed {
                    meta.insert(KEY_COMMITTED, c.as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
        if let Some(c) = carried {
            self.committed_written(c);
        }
        Ok(())
    }

    fn read_entries<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<Entry<C>>, Fault> {
        // redb, like BTreeMap, must not be given an inverted range.
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => match s.checked_add(1) {
                Some(s) => s,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.checked_add(1),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => None,
        };
        if end.is_some_and(|end| start >= end) {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_read()?;
        let table = tx.open_table(LOGS)?;
        let iter = match end {
            Some(end) => table.range(start..end)?,
            None => table.range(start..)?,
        };
        let mut entries = Vec::new();
        for item in iter {
            let (_, value) = item?;
            entries.push(serde_json::from_slice(value.value())?);
        }
        Ok(entries)
    }

    fn log_state(&self) -> Result<LogState<C>, Fault> {
        let last_purged_log_id: Option<LogId<u64>> = self.read_meta(KEY_PURGED)?;
        let tx = self.db.begin_read()?;
        let table = tx.open_table(LOGS)?;
        let last = match table.last()? {
            Some((_, value)) => Some(serde_json::from_slice::<Entry<C>>(value.value())?.log_id),
            None => None,
        };
        Ok(LogState {
            last_log_id: last.or(last_purged_log_id),
            last_purged_log_id,
        })
    }
}

fn read_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, Fault> {
    let tx = db.begin_read()?;
    let table = tx.open_table(META)?;
    let value = table.get(key)?;
    match value {
        Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
        None => Ok(None),
    }
}

/// Writes all `entries`, and the commit index if one is unwritten, in one fsynced transaction.
fn append_entries<C: StorageTypeConfig>(
    db: &Database,
    entries: &[Entry<C>],
    committed: Option<&[u8]>,
) -> Result<(), Fault> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate);
    {
        let mut table = tx.open_table(LOGS)?;
        for entry in entries {
            let bytes = serde_json::to_vec(entry)?;
            table.insert(entry.log_id.index, bytes.as_slice())?;
        }
    }
    if let Some(c) = committed {
        tx.open_table(META)?.insert(KEY_COMMITTED, c)?;
    }
    tx.commit()?;
    Ok(())
}

impl<C: StorageTypeConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<C>>, StoreError> {
        // Reads are served from redb's cache and page cache; cheap enough to run inline.
        Ok(self
            .read_entries(range)
            .map_err(|e| StorageIOError::read_logs(&e))?)
    }
}

impl<C: StorageTypeConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StoreError> {
        Ok(self
            .log_state()
            .map_err(|e| StorageIOError::read_logs(&e))?)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StoreError> {
        self.write_meta(KEY_VOTE, vote)
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StoreError> {
        Ok(self
            .read_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(&e))?)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), StoreError> {
        // The commit index only lets a restart apply committed entries before an election (a
        // lagging value is safe: the leader commits them again), so it waits for the next
        // durable transaction (an append, a vote, a purge) rather than making one of its own:
        // on Linux redb fsyncs every commit, even `Durability::Eventual` ones, and this call
        // sits between an entry's append and its apply.
        *self.committed.unwritten.lock().expect("committed lock") = Unwritten {
            latest: Some(committed),
            written: false,
        };
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StoreError> {
        if let Some(latest) = self
            .committed
            .unwritten
            .lock()
            .expect("committed lock")
            .latest
        {
            return Ok(latest);
        }
        let committed: Option<Option<LogId<u64>>> = self
            .read_meta(KEY_COMMITTED)
            .map_err(|e| StorageIOError::read(&e))?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StoreError>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<C>> = entries.into_iter().collect();
        if entries.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        let db = self.db.clone();
        let carried = self.committed_to_write();
        let committed = carried
            .map(|c| serde_json::to_vec(&c))
            .transpose()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // Entries are readable and durable once this returns, so the callback can fire now.
        match blocking(move || append_entries(&db, &entries, committed.as_deref())).await {
            Ok(()) => {
                if let Some(c) = carried {
                    self.committed_written(c);
                }
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StoreError> {
        let db = self.db.clone();
        let since = log_id.index;
        blocking(move || {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate);
            tx.open_table(LOGS)?.retain_in(since.., |_, _| false)?;
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::new(ErrorSubject::Log(log_id), ErrorVerb::Delete, &e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StoreError> {
        let db = self.db.clone();
        let purged = serde_json::to_vec(&log_id)
            .map_err(|e| StorageIOError::new(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
        // Record the purge point and drop the entries atomically so no hole can appear.
        blocking(move || {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate);
            tx.open_table(META)?.insert(KEY_PURGED, purged.as_slice())?;
            tx.open_table(LOGS)?
                .retain_in(..=log_id.index, |_, _| false)?;
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::new(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
        Ok(())
    }
}
