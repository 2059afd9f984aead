//! Durable Raft storage: the log, vote and commit index in a redb database, fsynced before
//! openraft is told they are durable; snapshots of the applied state in files, written to a
//! temporary file, fsynced and renamed into place.

use std::fmt::Debug;
use std::io::{Cursor, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::TypeConfig;

type NodeId = u64;
type SError = StorageError<NodeId>;

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SNAPSHOT_FILE: &str = "snapshot";

/// The application state that committed entries are applied to. Shared (`&self`) because
/// other parts of the master read it, so it keeps its own lock.
pub trait ReplicatedState: Send + Sync + 'static {
    /// A command in the log.
    type Command;
    /// What applying a command returns.
    type Response: Default;
    /// Applies one committed command at a log index, in log order.
    fn apply(&self, index: u64, cmd: &Self::Command) -> Self::Response;
    /// The whole state, serialized for a snapshot.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state with a snapshot's bytes.
    fn restore(&self, bytes: &[u8]) -> Result<(), String>;
}

/// Why storage could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory or a file in it.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The database.
    #[error("raft database {path}: {message}")]
    Database {
        /// The path.
        path: PathBuf,
        /// The cause.
        message: String,
    },
    /// A snapshot that cannot be read back.
    #[error("snapshot {path}: {message}")]
    Snapshot {
        /// The path.
        path: PathBuf,
        /// The cause.
        message: String,
    },
}

fn io<E: std::error::Error + 'static>(
    make: fn(AnyError) -> StorageIOError<NodeId>,
) -> impl Fn(E) -> SError {
    move |e| make(AnyError::new(&e)).into()
}

/// Opens (creating if needed) the storage in `dir` and restores `state` from its snapshot.
pub async fn open<S>(
    dir: &Path,
    state: Arc<S>,
) -> Result<(LogStore, StateMachineStore<S>), OpenError>
where
    S: ReplicatedState<Command = super::Command, Response = super::Response>,
{
    std::fs::create_dir_all(dir).map_err(|source| OpenError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let db_path = dir.join("raft.redb");
    let db = Database::create(&db_path).map_err(|e| OpenError::Database {
        path: db_path.clone(),
        message: e.to_string(),
    })?;
    // Create the tables so readers never find them missing.
    let tx = db.begin_write().map_err(|e| OpenError::Database {
        path: db_path.clone(),
        message: e.to_string(),
    })?;
    {
        let made = tx.open_table(LOGS).and_then(|_| tx.open_table(META));
        made.map_err(|e| OpenError::Database {
            path: db_path.clone(),
            message: e.to_string(),
        })?;
    }
    tx.commit().map_err(|e| OpenError::Database {
        path: db_path.clone(),
        message: e.to_string(),
    })?;
    let sm = StateMachineStore::open(dir, state)?;
    Ok((LogStore { db: Arc::new(db) }, sm))
}

/// The Raft log, vote and commit index.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    fn meta<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, SError> {
        let tx = self.db.begin_read().map_err(io(StorageIOError::read))?;
        let table = tx.open_table(META).map_err(io(StorageIOError::read))?;
        let Some(v) = table.get(key).map_err(io(StorageIOError::read))? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(io(StorageIOError::read))
    }

    fn set_meta<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        make: fn(AnyError) -> StorageIOError<NodeId>,
    ) -> Result<(), SError> {
        let bytes = serde_json::to_vec(value).map_err(io(make))?;
        let tx = self.db.begin_write().map_err(io(make))?;
        {
            let mut table = tx.open_table(META).map_err(io(make))?;
            table.insert(key, bytes.as_slice()).map_err(io(make))?;
        }
        tx.commit().map_err(io(make))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SError> {
        let tx = self
            .db
            .begin_read()
            .map_err(io(StorageIOError::read_logs))?;
        let table = tx.open_table(LOGS).map_err(io(StorageIOError::read_logs))?;
        let start = match range.start_bound() {
            Bound::Included(&s) => Bound::Included(s),
            Bound::Excluded(&s) => Bound::Excluded(s),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => Bound::Included(e),
            Bound::Excluded(&e) => Bound::Excluded(e),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in table
            .range::<u64>((start, end))
            .map_err(io(StorageIOError::read_logs))?
        {
            let (_, v) = item.map_err(io(StorageIOError::read_logs))?;
            out.push(serde_json::from_slice(v.value()).map_err(io(StorageIOError::read_logs))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SError> {
        let last_purged: Option<LogId<NodeId>> = self.meta("last_purged")?;
        let last = {
            let tx = self
                .db
                .begin_read()
                .map_err(io(StorageIOError::read_logs))?;
            let table = tx.open_table(LOGS).map_err(io(StorageIOError::read_logs))?;
            let last = table.last().map_err(io(StorageIOError::read_logs))?;
            let bytes = last.map(|(_, v)| v.value().to_vec());
            match bytes {
                Some(b) => {
                    let e: Entry<TypeConfig> =
                        serde_json::from_slice(&b).map_err(io(StorageIOError::read_logs))?;
                    Some(e.log_id)
                }
                None => None,
            }
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SError> {
        self.set_meta("vote", vote, StorageIOError::write_vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SError> {
        self.meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SError> {
        self.set_meta("committed", &committed, StorageIOError::write)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SError> {
        Ok(self.meta::<Option<LogId<NodeId>>>("committed")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // One transaction, one fsync, for the whole batch.
        let tx = self
            .db
            .begin_write()
            .map_err(io(StorageIOError::write_logs))?;
        {
            let mut table = tx
                .open_table(LOGS)
                .map_err(io(StorageIOError::write_logs))?;
            for entry in entries {
                let bytes = serde_json::to_vec(&entry).map_err(io(StorageIOError::write_logs))?;
                table
                    .insert(entry.log_id.index, bytes.as_slice())
                    .map_err(io(StorageIOError::write_logs))?;
            }
        }
        tx.commit().map_err(io(StorageIOError::write_logs))?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        let tx = self
            .db
            .begin_write()
            .map_err(io(StorageIOError::write_logs))?;
        {
            let mut table = tx
                .open_table(LOGS)
                .map_err(io(StorageIOError::write_logs))?;
            table
                .retain_in(log_id.index.., |_, _| false)
                .map_err(io(StorageIOError::write_logs))?;
        }
        tx.commit().map_err(io(StorageIOError::write_logs))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        let bytes = serde_json::to_vec(&log_id).map_err(io(StorageIOError::write_logs))?;
        let tx = self
            .db
            .begin_write()
            .map_err(io(StorageIOError::write_logs))?;
        {
            let mut meta = tx
                .open_table(META)
                .map_err(io(StorageIOError::write_logs))?;
            meta.insert("last_purged", bytes.as_slice())
                .map_err(io(StorageIOError::write_logs))?;
            let mut table = tx
                .open_table(LOGS)
                .map_err(io(StorageIOError::write_logs))?;
            table
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(io(StorageIOError::write_logs))?;
        }
        tx.commit().map_err(io(StorageIOError::write_logs))
    }
}

/// A snapshot as kept on disk and in memory.
#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The state machine: applies committed entries to the application state, builds and
/// installs snapshots.
pub struct StateMachineStore<S> {
    state: Arc<S>,
    dir: PathBuf,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    current: Option<StoredSnapshot>,
    snapshot_seq: u64,
}

impl<S> StateMachineStore<S>
where
    S: ReplicatedState<Command = super::Command, Response = super::Response>,
{
    fn open(dir: &Path, state: Arc<S>) -> Result<Self, OpenError> {
        let mut sm = StateMachineStore {
            state,
            dir: dir.to_path_buf(),
            last_applied: None,
            membership: StoredMembership::default(),
            current: None,
            snapshot_seq: 0,
        };
        let path = dir.join(SNAPSHOT_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let snap = decode_snapshot(&bytes).map_err(|message| OpenError::Snapshot {
                    path: path.clone(),
                    message,
                })?;
                sm.state
                    .restore(&snap.data)
                    .map_err(|message| OpenError::Snapshot {
                        path: path.clone(),
                        message,
                    })?;
                sm.last_applied = snap.meta.last_log_id;
                sm.membership = snap.meta.last_membership.clone();
                sm.current = Some(snap);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(OpenError::Io { path, source }),
        }
        Ok(sm)
    }
}

fn encode_snapshot(snap: &StoredSnapshot) -> Vec<u8> {
    let mut out = serde_json::to_vec(&snap.meta).expect("snapshot meta serializes");
    out.push(b'\n');
    out.extend_from_slice(&snap.data);
    out
}

fn decode_snapshot(bytes: &[u8]) -> Result<StoredSnapshot, String> {
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let meta = serde_json::from_slice(&bytes[..nl]).map_err(|e| e.to_string())?;
    Ok(StoredSnapshot {
        meta,
        data: bytes[nl + 1..].to_vec(),
    })
}

/// Writes a snapshot durably: temporary file, fsync, rename, fsync of the directory.
fn persist_snapshot(dir: &Path, snap: &StoredSnapshot) -> std::io::Result<()> {
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&encode_snapshot(snap))?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Builds a snapshot from a copy taken when the builder was made.
pub struct SnapshotBuilder {
    dir: PathBuf,
    snapshot: StoredSnapshot,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SError> {
        persist_snapshot(&self.dir, &self.snapshot).map_err(|e| {
            SError::from(StorageIOError::write_snapshot(
                Some(self.snapshot.meta.signature()),
                AnyError::new(&e),
            ))
        })?;
        Ok(Snapshot {
            meta: self.snapshot.meta.clone(),
            snapshot: Box::new(Cursor::new(self.snapshot.data.clone())),
        })
    }
}

impl<S> RaftStateMachine<TypeConfig> for StateMachineStore<S>
where
    S: ReplicatedState<Command = super::Command, Response = super::Response>,
{
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), SError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<super::Response>, SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            out.push(match &entry.payload {
                EntryPayload::Blank => super::Response::default(),
                EntryPayload::Normal(cmd) => self.state.apply(entry.log_id.index, cmd),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    super::Response::default()
                }
            });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Copy the state now, in the applying task, so the snapshot matches last_applied.
        self.snapshot_seq += 1;
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.snapshot_seq),
            None => format!("none-{}", self.snapshot_seq),
        };
        SnapshotBuilder {
            dir: self.dir.clone(),
            snapshot: StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: self.last_applied,
                    last_membership: self.membership.clone(),
                    snapshot_id,
                },
                data: self.state.snapshot(),
            },
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SError> {
        let snap = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        let fail =
            |e: AnyError| SError::from(StorageIOError::write_snapshot(Some(meta.signature()), e));
        self.state
            .restore(&snap.data)
            .map_err(|m| fail(AnyError::error(m)))?;
        persist_snapshot(&self.dir, &snap).map_err(|e| fail(AnyError::new(&e)))?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.current = Some(snap);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SError> {
        // The newest is on disk: the builder persisted it after this store last looked.
        let path = self.dir.join(SNAPSHOT_FILE);
        let snap = match std::fs::read(&path) {
            Ok(bytes) => Some(decode_snapshot(&bytes).map_err(|m| {
                SError::from(StorageIOError::read_snapshot(None, AnyError::error(m)))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StorageIOError::read_snapshot(None, AnyError::new(&e)).into()),
        };
        self.current = snap.clone();
        Ok(snap.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{Config, SnapshotPolicy};

    use super::*;
    use crate::master::Hub;
    use crate::raft::network::GrpcNetworkFactory;
    use crate::raft::Raft;
    use crate::state::Command;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore<Hub>, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore<Hub>), SError> {
            let dir = tempfile::tempdir().expect("temp dir");
            let (log, sm) = open(dir.path(), Hub::new()).await.expect("open storage");
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn the_storage_passes_openrafts_own_suite() {
        Suite::test_all(Builder).unwrap();
    }

    fn register(name: &str) -> Command {
        Command::RegisterFramework {
            name: name.into(),
            uid: 0,
            gid: 0,
            time_ms: 1,
        }
    }

    async fn start_raft(dir: &Path, hub: Arc<Hub>) -> Raft {
        let (log, sm) = open(dir, hub).await.unwrap();
        let config = Config {
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(5),
            max_in_snapshot_log_to_keep: 0,
            ..Config::default()
        }
        .validate()
        .unwrap();
        let raft = Raft::new(1, Arc::new(config), GrpcNetworkFactory, log, sm)
            .await
            .unwrap();
        if !raft.is_initialized().await.unwrap() {
            raft.initialize(BTreeMap::from([(1, BasicNode::new("127.0.0.1:1"))]))
                .await
                .unwrap();
        }
        raft
    }

    #[tokio::test]
    async fn a_restarted_node_has_every_command_it_committed_before() {
        let dir = tempfile::tempdir().unwrap();
        let raft = start_raft(dir.path(), Hub::new()).await;
        raft.wait(Some(std::time::Duration::from_secs(5)))
            .current_leader(1, "leader")
            .await
            .unwrap();
        for i in 0..20 {
            raft.client_write(register(&format!("f{i}"))).await.unwrap();
        }
        raft.trigger().snapshot().await.unwrap();
        let applied = raft.metrics().borrow().last_applied.unwrap();
        raft.wait(Some(std::time::Duration::from_secs(5)))
            .snapshot(applied, "snapshot built")
            .await
            .unwrap();
        raft.client_write(register("after-snapshot")).await.unwrap();
        raft.shutdown().await.unwrap();
        drop(raft);
        assert!(
            dir.path().join(SNAPSHOT_FILE).exists(),
            "a snapshot was persisted"
        );

        let hub = Hub::new();
        let raft = start_raft(dir.path(), hub.clone()).await;
        raft.wait(Some(std::time::Duration::from_secs(5)))
            .current_leader(1, "leader again")
            .await
            .unwrap();
        // The new term's blank entry commits everything before it.
        raft.client_write(register("restarted")).await.unwrap();
        let names: Vec<String> =
            hub.read(|s, _| s.active_frameworks().map(|f| f.name.clone()).collect());
        for i in 0..20 {
            assert!(names.contains(&format!("f{i}")), "f{i} survived: {names:?}");
        }
        assert!(names.contains(&"after-snapshot".to_string()));
        assert_eq!(names.len(), 22);
        raft.shutdown().await.unwrap();
    }
}
