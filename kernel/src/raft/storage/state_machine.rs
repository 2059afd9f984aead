//! The state machine: applies committed entries to the application's [`ReplicatedState`] and
//! persists its snapshots as files.

use std::fs::{self, File};
use std::io::{self, Cursor, Read, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};

use super::{blocking, Fault, OpenError, ReplicatedState, StorageTypeConfig};

/// The snapshot directory inside the storage directory.
pub(super) const SNAPSHOT_DIR: &str = "snapshots";
/// The one persisted snapshot; replaced atomically by renaming [`SNAPSHOT_TMP`] over it.
pub(super) const SNAPSHOT_FILE: &str = "snapshot.bin";
const SNAPSHOT_TMP: &str = "snapshot.bin.tmp";
/// File format: magic, meta length (u64 LE), meta (JSON), then the state's bytes.
const MAGIC: &[u8; 8] = b"MESOSNP1";

type StoreError = StorageError<u64>;
type Meta<N> = SnapshotMeta<u64, N>;
/// A persisted snapshot: its meta and the state's bytes.
type Stored<N> = (Meta<N>, Vec<u8>);

/// The state machine store: last applied log id, last membership, and the application state.
pub struct StateMachineStore<C: StorageTypeConfig, S> {
    state: Arc<S>,
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, C::Node>,
    snapshots: Arc<SnapshotFiles>,
    _config: PhantomData<fn() -> C>,
}

/// Builds a snapshot from the state frozen when it was created.
pub struct SnapshotBuilder<C: StorageTypeConfig, S: ReplicatedState> {
    snapshots: Arc<SnapshotFiles>,
    meta: Meta<C::Node>,
    frozen: Arc<S::Frozen>,
    _config: PhantomData<fn() -> C>,
}

/// The snapshot directory, shared by the store and its (concurrently running) builders.
struct SnapshotFiles {
    dir: PathBuf,
    /// The last log id of the persisted snapshot; the lock serializes snapshot writes.
    persisted: tokio::sync::Mutex<Option<LogId<u64>>>,
    /// Makes snapshot ids unique within this process.
    seq: AtomicU64,
}

impl<C, S> StateMachineStore<C, S>
where
    S: ReplicatedState,
    C: StorageTypeConfig<D = S::Command, R = S::Response>,
{
    /// Opens `<dir>/snapshots`, restoring `state`, last applied and membership from the snapshot
    /// there if any; blocks on disk IO.
    pub fn open(dir: &Path, state: Arc<S>) -> Result<Self, OpenError> {
        let snap_dir = dir.join(SNAPSHOT_DIR);
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { path, source }
        };
        fs::create_dir_all(&snap_dir).map_err(io_err(&snap_dir))?;
        // Make the (possibly new) directory entry durable before snapshots are renamed into it.
        sync_dir(dir).map_err(io_err(dir))?;
        // A leftover temporary file is an interrupted write; the previous snapshot still stands.
        match fs::remove_file(snap_dir.join(SNAPSHOT_TMP)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&snap_dir)(e)),
            _ => {}
        }

        let mut last_applied = None;
        let mut last_membership = StoredMembership::default();
        let file = snap_dir.join(SNAPSHOT_FILE);
        let loaded = read_snapshot_file(&snap_dir).map_err(|e| match e {
            Fault::Io(source) => OpenError::Io {
                path: file.clone(),
                source,
            },
            other => OpenError::Snapshot {
                path: file.clone(),
                message: other.to_string(),
            },
        })?;
        if let Some((meta, data)) = loaded {
            state.restore(&data).map_err(|message| OpenError::Restore {
                path: file.clone(),
                message,
            })?;
            tracing::info!(snapshot = %meta, "restored state machine from snapshot");
            last_applied = meta.last_log_id;
            last_membership = meta.last_membership;
        }
        Ok(Self {
            state,
            last_applied,
            last_membership,
            snapshots: Arc::new(SnapshotFiles {
                dir: snap_dir,
                persisted: tokio::sync::Mutex::new(last_applied),
                seq: AtomicU64::new(0),
            }),
            _config: PhantomData,
        })
    }

    /// The application state this store applies to.
    pub fn state(&self) -> &Arc<S> {
        &self.state
    }
}

impl<C, S> RaftStateMachine<C> for StateMachineStore<C, S>
where
    S: ReplicatedState,
    C: StorageTypeConfig<D = S::Command, R = S::Response>,
{
    type SnapshotBuilder = SnapshotBuilder<C, S>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, C::Node>), StoreError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<S::Response>, StoreError>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries = entries.into_iter();
        let mut responses = Vec::with_capacity(entries.size_hint().0);
        for entry in entries {
            let log_id = entry.log_id;
            let response = match entry.payload {
                EntryPayload::Blank => S::Response::default(),
                EntryPayload::Normal(cmd) => self.state.apply(log_id.index, &cmd),
                EntryPayload::Membership(membership) => {
                    self.last_membership = StoredMembership::new(Some(log_id), membership);
                    S::Response::default()
                }
            };
            self.last_applied = Some(log_id);
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // openraft runs the builder concurrently with apply(), so freeze the state now, while
        // it matches last_applied (no apply runs during this call); encoding it, the long part,
        // is left to the builder.
        let frozen = Arc::new(self.state.freeze());
        let meta = Meta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id: self.snapshots.next_id(self.last_applied),
        };
        SnapshotBuilder {
            snapshots: self.snapshots.clone(),
            meta,
            frozen,
            _config: PhantomData,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StoreError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta<C::Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StoreError> {
        let data = snapshot.into_inner();
        // Restore first: bytes the state rejects must not become the persisted snapshot.
        self.state.restore(&data).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(e))
        })?;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        tracing::info!(snapshot = %meta, "installed a snapshot from the leader");
        self.snapshots
            .persist(meta, data)
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<C>>, StoreError> {
        let dir = self.snapshots.dir.clone();
        let loaded = blocking(move || read_snapshot_file(&dir))
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(loaded.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

impl<C, S> RaftSnapshotBuilder<C> for SnapshotBuilder<C, S>
where
    S: ReplicatedState,
    C: StorageTypeConfig<D = S::Command, R = S::Response>,
{
    async fn build_snapshot(&mut self) -> Result<Snapshot<C>, StoreError> {
        let frozen = self.frozen.clone();
        // Encoding a large state takes long: keep it off the async worker threads.
        let data = blocking(move || Ok(S::encode(&frozen)))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(self.meta.signature()), &e))?;
        let data = self
            .snapshots
            .persist(&self.meta, data)
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(self.meta.signature()), &e))?;
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl SnapshotFiles {
    fn next_id(&self, last: Option<LogId<u64>>) -> String {
        let (term, index) = last.map_or((0, 0), |l| (l.leader_id.term, l.index));
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{term}-{index}-{millis}-{seq}")
    }

    /// Durably replaces the persisted snapshot with this one unless the persisted one is newer
    /// (a slow build can finish after a newer snapshot was installed). Returns `data`.
    async fn persist<N: openraft::Node>(
        &self,
        meta: &Meta<N>,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, Fault> {
        let mut persisted = self.persisted.lock().await;
        if meta.last_log_id < *persisted {
            tracing::info!(snapshot = %meta, "not persisting snapshot older than the current one");
            return Ok(data);
        }
        let header = serde_json::to_vec(meta)?;
        let dir = self.dir.clone();
        let data = blocking(move || {
            write_snapshot_file(&dir, &header, &data)?;
            Ok(data)
        })
        .await?;
        *persisted = meta.last_log_id;
        Ok(data)
    }
}

/// Writes the snapshot to a temporary file, fsyncs it, renames it over the current one and
/// fsyncs the directory, so a crash leaves either the old or the new snapshot.
fn write_snapshot_file(dir: &Path, meta: &[u8], data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(SNAPSHOT_TMP);
    let mut file = File::create(&tmp)?;
    file.write_all(MAGIC)?;
    file.write_all(&(meta.len() as u64).to_le_bytes())?;
    file.write_all(meta)?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    sync_dir(dir)
}

/// Reads the persisted snapshot, if any, as its meta and the state's bytes.
fn read_snapshot_file<N: openraft::Node>(dir: &Path) -> Result<Option<Stored<N>>, Fault> {
    let mut file = match File::open(dir.join(SNAPSHOT_FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let size = file.metadata()?.len();
    let mut head = [0u8; 16];
    file.read_exact(&mut head)
        .map_err(|e| Fault::Corrupt(format!("reading header: {e}")))?;
    if &head[..8] != MAGIC {
        return Err(Fault::Corrupt("not a snapshot file (bad magic)".into()));
    }
    let meta_len = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
    if meta_len > size - 16 {
        return Err(Fault::Corrupt(format!(
            "meta length {meta_len} exceeds file size {size}"
        )));
    }
    let mut meta = vec![0u8; meta_len as usize];
    file.read_exact(&mut meta)?;
    let meta: Meta<N> = serde_json::from_slice(&meta)?;
    let mut data = Vec::with_capacity((size - 16 - meta_len) as usize);
    file.read_to_end(&mut data)?;
    Ok(Some((meta, data)))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
