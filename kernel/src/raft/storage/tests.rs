//! Tests: openraft's storage suite, restarts from disk, and a real single-node Raft.

// Tests return openraft's (large) StorageError so `?` works on the storage traits.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{log_id, StoreBuilder, Suite};
use openraft::{
    BasicNode, Config, Entry, EntryPayload, LogId, Membership, Raft, RaftLogReader, RaftNetwork,
    RaftNetworkFactory, RaftSnapshotBuilder, SnapshotPolicy, StorageError, StorageHelper, Vote,
};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

use super::log_store::DB_FILE;
use super::state_machine::{SNAPSHOT_DIR, SNAPSHOT_FILE};
use super::{open, LogStore, OpenError, ReplicatedState, StateMachineStore};

/// A test command: set `key` to `value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    key: String,
    value: String,
}

/// The test response: the value `key` had before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    previous: Option<String>,
}

openraft::declare_raft_types!(
    /// The test type config.
    pub TestConfig:
        D = Put,
        R = PutResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TestConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A key-value map behind a mutex, checking that indexes arrive in order and never twice.
#[derive(Default)]
struct KvState {
    inner: Mutex<Kv>,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct Kv {
    map: BTreeMap<String, String>,
    last_index: Option<u64>,
}

impl KvState {
    fn map(&self) -> BTreeMap<String, String> {
        self.inner.lock().unwrap().map.clone()
    }
    fn last_index(&self) -> Option<u64> {
        self.inner.lock().unwrap().last_index
    }
}

impl ReplicatedState for KvState {
    type Command = Put;
    type Response = PutResponse;
    type Frozen = Kv;

    fn apply(&self, index: u64, cmd: &Put) -> PutResponse {
        let mut kv = self.inner.lock().unwrap();
        assert!(
            kv.last_index < Some(index),
            "index {index} applied after {:?}",
            kv.last_index
        );
        kv.last_index = Some(index);
        PutResponse {
            previous: kv.map.insert(cmd.key.clone(), cmd.value.clone()),
        }
    }

    fn freeze(&self) -> Kv {
        self.inner.lock().unwrap().clone()
    }

    fn encode(frozen: &Kv) -> Vec<u8> {
        serde_json::to_vec(frozen).unwrap()
    }

    fn restore(&self, bytes: &[u8]) -> Result<(), String> {
        let kv: Kv = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        *self.inner.lock().unwrap() = kv;
        Ok(())
    }
}

type Log = LogStore<TestConfig>;
type Sm = StateMachineStore<TestConfig, KvState>;
type Err = StorageError<u64>;

async fn open_at(dir: &Path) -> (Log, Sm, Arc<KvState>) {
    let state = Arc::new(KvState::default());
    let (log, sm) = open(dir, state.clone()).await.expect("open storage");
    (log, sm, state)
}

fn put(key: &str, value: &str) -> Put {
    Put {
        key: key.into(),
        value: value.into(),
    }
}

fn normal(term: u64, index: u64, cmd: Put) -> Entry<TestConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn membership(term: u64, index: u64) -> Entry<TestConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1])], None)),
    }
}

/// Appends and waits for the flush callback, as openraft does.
async fn append(log: &mut Log, entries: Vec<Entry<TestConfig>>) -> Result<(), Err> {
    log.blocking_append(entries).await
}

fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(SNAPSHOT_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---- openraft's own suite ----

struct TempStoreBuilder;

impl StoreBuilder<TestConfig, Log, Sm, TempDir> for TempStoreBuilder {
    async fn build(&self) -> Result<(TempDir, Log, Sm), Err> {
        let dir = TempDir::new().unwrap();
        let (log, sm, _) = open_at(dir.path()).await;
        Ok((dir, log, sm))
    }
}

/// The suite builds its own runtimes, so this is a plain test.
#[test]
fn openraft_storage_suite() -> Result<(), Err> {
    Suite::test_all(TempStoreBuilder)
}

// ---- restarts ----

#[tokio::test]
async fn vote_log_and_committed_survive_restart() -> Result<(), Err> {
    let dir = TempDir::new().unwrap();
    // Like openraft's own log: the initial membership at index 0.
    let entries = vec![
        membership(0, 0),
        normal(1, 1, put("a", "1")),
        normal(1, 2, put("b", "2")),
        normal(1, 3, put("a", "3")),
    ];
    {
        let (mut log, mut sm, state) = open_at(dir.path()).await;
        log.save_vote(&Vote::new_committed(1, 1)).await?;
        append(&mut log, entries[..3].to_vec()).await?;
        log.save_committed(Some(log_id(1, 1, 2))).await?;
        // The commit index reaches the disk with the next append.
        append(&mut log, entries[3..].to_vec()).await?;
        let responses = sm.apply(entries[..3].to_vec()).await?;
        assert_eq!(responses[2], PutResponse { previous: None });
        assert_eq!(state.map().len(), 2);
    }

    let (mut log, mut sm, state) = open_at(dir.path()).await;
    assert_eq!(log.read_vote().await?, Some(Vote::new_committed(1, 1)));
    assert_eq!(log.read_committed().await?, Some(log_id(1, 1, 2)));
    assert_eq!(log.try_get_log_entries(..).await?, entries);
    let st = log.get_log_state().await?;
    assert_eq!(st.last_log_id, Some(log_id(1, 1, 3)));
    assert_eq!(st.last_purged_log_id, None);

    // No snapshot yet: the state starts empty and openraft's startup re-applies up to committed.
    assert_eq!(sm.applied_state().await?.0, None);
    assert!(state.map().is_empty());
    let initial = StorageHelper::new(&mut log, &mut sm)
        .get_initial_state()
        .await?;
    assert_eq!(initial.committed, Some(log_id(1, 1, 2)));
    assert_eq!(sm.applied_state().await?.0, Some(log_id(1, 1, 2)));
    assert_eq!(
        state.map(),
        BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())])
    );
    Ok(())
}

#[tokio::test]
async fn a_commit_index_waits_for_the_next_durable_write_or_a_clean_stop() -> Result<(), Err> {
    let dir = TempDir::new().unwrap();
    let entries: Vec<_> = (1..=4).map(|i| normal(1, i, put("k", "v"))).collect();
    {
        let (mut log, _, _) = open_at(dir.path()).await;
        append(&mut log, entries[..2].to_vec()).await?;
        log.save_committed(Some(log_id(1, 1, 1))).await?;
        // No transaction of its own (redb would fsync it), but readable at once.
        assert_eq!(log.committed_on_disk().unwrap(), None);
        assert_eq!(log.read_committed().await?, Some(log_id(1, 1, 1)));
        append(&mut log, entries[2..3].to_vec()).await?;
        assert_eq!(log.committed_on_disk().unwrap(), Some(log_id(1, 1, 1)));
        log.save_committed(Some(log_id(1, 1, 3))).await?;
        log.save_vote(&Vote::new_committed(2, 1)).await?;
        assert_eq!(log.committed_on_disk().unwrap(), Some(log_id(1, 1, 3)));
        append(&mut log, entries[3..].to_vec()).await?;
        log.save_committed(Some(log_id(1, 1, 4))).await?;
        assert_eq!(log.committed_on_disk().unwrap(), Some(log_id(1, 1, 3)));
    }
    let (mut log, _, _) = open_at(dir.path()).await;
    assert_eq!(log.read_committed().await?, Some(log_id(1, 1, 4)));
    assert_eq!(log.try_get_log_entries(..).await?, entries);
    Ok(())
}

#[tokio::test]
async fn truncate_survives_restart() -> Result<(), Err> {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, _, _) = open_at(dir.path()).await;
        let entries = (1..=5).map(|i| normal(1, i, put("k", "v"))).collect();
        append(&mut log, entries).await?;
        log.truncate(log_id(1, 1, 3)).await?;
        append(&mut log, vec![normal(2, 3, put("k", "w"))]).await?;
    }
    let (mut log, _, _) = open_at(dir.path()).await;
    let got = log.try_get_log_entries(..).await?;
    let ids: Vec<LogId<u64>> = got.iter().map(|e| e.log_id).collect();
    assert_eq!(ids, vec![log_id(1, 1, 1), log_id(1, 1, 2), log_id(2, 1, 3)]);
    Ok(())
}

#[tokio::test]
async fn snapshot_and_purge_survive_restart() -> Result<(), Err> {
    let dir = TempDir::new().unwrap();
    let mut entries = vec![membership(1, 1)];
    entries.extend((2..=10).map(|i| normal(1, i, put(&format!("k{i}"), &i.to_string()))));
    let snap_meta = {
        let (mut log, mut sm, _) = open_at(dir.path()).await;
        append(&mut log, entries.clone()).await?;
        sm.apply(entries[..8].to_vec()).await?;
        // An older snapshot first, so the second build must replace it.
        let first = sm.get_snapshot_builder().await.build_snapshot().await?;
        assert_eq!(first.meta.last_log_id, Some(log_id(1, 1, 8)));
        sm.apply(entries[8..].to_vec()).await?;
        let snap = sm.get_snapshot_builder().await.build_snapshot().await?;
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 1, 10)));
        let current = sm.get_current_snapshot().await?.expect("snapshot");
        assert_eq!(current.meta, snap.meta);
        assert_eq!(current.snapshot.into_inner(), snap.snapshot.into_inner());
        log.purge(log_id(1, 1, 8)).await?;
        snap.meta
    };
    assert_eq!(snapshot_files(dir.path()), vec![SNAPSHOT_FILE.to_string()]);
    // A write interrupted by a crash leaves a temporary file; opening ignores and removes it.
    let tmp = dir.path().join(SNAPSHOT_DIR).join("snapshot.bin.tmp");
    std::fs::write(&tmp, b"half a snapshot").unwrap();

    let (mut log, mut sm, state) = open_at(dir.path()).await;
    assert_eq!(snapshot_files(dir.path()), vec![SNAPSHOT_FILE.to_string()]);
    // The state machine starts from the snapshot.
    assert_eq!(
        sm.applied_state().await?,
        (snap_meta.last_log_id, snap_meta.last_membership.clone())
    );
    assert_eq!(state.map().len(), 9);
    assert_eq!(state.last_index(), Some(10));
    assert_eq!(
        sm.get_current_snapshot().await?.expect("snapshot").meta,
        snap_meta
    );
    // The purged entries are gone; the rest are still there.
    let st = log.get_log_state().await?;
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 1, 8)));
    assert_eq!(st.last_log_id, Some(log_id(1, 1, 10)));
    assert_eq!(log.try_get_log_entries(..).await?, entries[8..].to_vec());
    assert!(log.try_get_log_entries(0..9).await?.is_empty());

    // Openraft's startup reads a consistent state from it (nothing to re-apply).
    let initial = StorageHelper::new(&mut log, &mut sm)
        .get_initial_state()
        .await?;
    assert_eq!(initial.committed, Some(log_id(1, 1, 10)));
    assert_eq!(initial.snapshot_meta, snap_meta);
    assert_eq!(state.last_index(), Some(10));
    Ok(())
}

#[tokio::test]
async fn a_snapshot_holds_the_state_frozen_with_its_builder_not_commands_applied_after(
) -> Result<(), Err> {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm, _) = open_at(dir.path()).await;
    sm.apply(vec![membership(1, 1), normal(1, 2, put("a", "1"))])
        .await?;
    // openraft builds the snapshot in a task of its own while apply goes on.
    let mut builder = sm.get_snapshot_builder().await;
    sm.apply(vec![
        normal(1, 3, put("a", "2")),
        normal(1, 4, put("b", "3")),
    ])
    .await?;
    let snap = builder.build_snapshot().await?;
    assert_eq!(snap.meta.last_log_id, Some(log_id(1, 1, 2)));
    let kv: Kv = serde_json::from_slice(&snap.snapshot.into_inner()).unwrap();
    assert_eq!(kv.map, BTreeMap::from([("a".into(), "1".into())]));
    assert_eq!(kv.last_index, Some(2));
    Ok(())
}

#[tokio::test]
async fn installed_snapshot_survives_restart() -> Result<(), Err> {
    let leader_dir = TempDir::new().unwrap();
    let follower_dir = TempDir::new().unwrap();
    let (_, mut leader, _) = open_at(leader_dir.path()).await;
    leader
        .apply(vec![
            membership(1, 1),
            normal(1, 2, put("x", "1")),
            normal(1, 3, put("y", "2")),
        ])
        .await?;
    let snap = leader.get_snapshot_builder().await.build_snapshot().await?;

    {
        let (_, mut follower, state) = open_at(follower_dir.path()).await;
        let mut data = follower.begin_receiving_snapshot().await?;
        *data = *snap.snapshot;
        follower.install_snapshot(&snap.meta, data).await?;
        assert_eq!(state.map().len(), 2);
    }

    let (_, mut follower, state) = open_at(follower_dir.path()).await;
    assert_eq!(state.map().len(), 2);
    assert_eq!(state.last_index(), Some(3));
    assert_eq!(follower.applied_state().await?.0, Some(log_id(1, 1, 3)));
    assert_eq!(
        follower
            .get_current_snapshot()
            .await?
            .expect("snapshot")
            .meta,
        snap.meta
    );
    Ok(())
}

#[tokio::test]
async fn rejected_snapshot_is_not_installed() -> Result<(), Err> {
    let dir = TempDir::new().unwrap();
    let (_, mut sm, _) = open_at(dir.path()).await;
    let meta = openraft::SnapshotMeta {
        last_log_id: Some(log_id(1, 1, 5)),
        last_membership: Default::default(),
        snapshot_id: "bad".into(),
    };
    let res = sm
        .install_snapshot(&meta, Box::new(Cursor::new(b"not json".to_vec())))
        .await;
    assert!(res.is_err());
    assert!(sm.get_current_snapshot().await?.is_none());
    Ok(())
}

#[tokio::test]
async fn corrupt_snapshot_fails_open() {
    let dir = TempDir::new().unwrap();
    std::fs::create_dir_all(dir.path().join(SNAPSHOT_DIR)).unwrap();
    std::fs::write(
        dir.path().join(SNAPSHOT_DIR).join(SNAPSHOT_FILE),
        b"garbage",
    )
    .unwrap();
    match open::<TestConfig, KvState>(dir.path(), Arc::default()).await {
        Err(OpenError::Snapshot { .. }) => {}
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("opened with a corrupt snapshot"),
    }
}

// ---- a real single-node Raft ----

/// A network for a single node, which never sends RPCs.
struct NoPeers;

fn unreachable<E: std::error::Error>() -> RPCError<u64, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
        "single-node test has no peers",
    )))
}

impl RaftNetworkFactory<TestConfig> for NoPeers {
    type Network = NoPeers;

    async fn new_client(&mut self, _target: u64, _node: &BasicNode) -> NoPeers {
        NoPeers
    }
}

impl RaftNetwork<TestConfig> for NoPeers {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TestConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TestConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(unreachable())
    }
}

const TIMEOUT: Option<Duration> = Some(Duration::from_secs(10));

fn config(snapshot_policy: SnapshotPolicy) -> Arc<Config> {
    let config = Config {
        cluster_name: "test".into(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        snapshot_policy,
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Config::default()
    };
    Arc::new(config.validate().unwrap())
}

async fn start(dir: &Path, config: Arc<Config>) -> (Raft<TestConfig>, Arc<KvState>) {
    let (log, sm, state) = open_at(dir).await;
    let raft = Raft::new(1, config, NoPeers, log, sm).await.unwrap();
    (raft, state)
}

async fn wait_leader(raft: &Raft<TestConfig>) {
    raft.wait(TIMEOUT)
        .current_leader(1, "leader")
        .await
        .expect("node 1 becomes leader");
}

async fn write_all(raft: &Raft<TestConfig>, range: std::ops::Range<u32>) -> u64 {
    let mut last = 0;
    for i in range {
        let resp = raft
            .client_write(put(&format!("k{i}"), &i.to_string()))
            .await
            .expect("client_write");
        assert_eq!(resp.data, PutResponse { previous: None });
        last = resp.log_id.index;
    }
    last
}

fn expected(range: std::ops::Range<u32>) -> BTreeMap<String, String> {
    range.map(|i| (format!("k{i}"), i.to_string())).collect()
}

#[tokio::test]
async fn single_node_raft_restarts_with_its_state() {
    let dir = TempDir::new().unwrap();
    let (raft, state) = start(dir.path(), config(SnapshotPolicy::Never)).await;
    raft.initialize(BTreeMap::from([(1, BasicNode::default())]))
        .await
        .unwrap();
    wait_leader(&raft).await;
    let last = write_all(&raft, 0..5).await;
    assert_eq!(state.map(), expected(0..5));
    raft.shutdown().await.unwrap();
    drop(raft);

    let (raft, state) = start(dir.path(), config(SnapshotPolicy::Never)).await;
    // Raft::new re-applied the log up to the saved commit index, before any election.
    assert_eq!(state.map(), expected(0..5));
    assert_eq!(state.last_index(), Some(last));
    wait_leader(&raft).await;
    raft.wait(TIMEOUT)
        .applied_index_at_least(Some(last), "re-applied")
        .await
        .unwrap();
    // And it keeps working after the restart.
    write_all(&raft, 5..8).await;
    assert_eq!(state.map(), expected(0..8));
    raft.shutdown().await.unwrap();
}

#[tokio::test]
async fn single_node_raft_snapshots_purges_and_restores() {
    let dir = TempDir::new().unwrap();
    let policy = || SnapshotPolicy::LogsSinceLast(5);
    let (raft, state) = start(dir.path(), config(policy())).await;
    raft.initialize(BTreeMap::from([(1, BasicNode::default())]))
        .await
        .unwrap();
    wait_leader(&raft).await;
    let last = write_all(&raft, 0..20).await;
    let metrics = raft
        .wait(TIMEOUT)
        .metrics(
            |m| match (m.snapshot, m.purged, m.last_applied) {
                (Some(s), Some(p), Some(a)) => s == p && a.index - s.index < 5,
                _ => false,
            },
            "snapshot taken and log purged",
        )
        .await
        .unwrap();
    let snapshot = metrics.snapshot.unwrap();
    assert_eq!(state.map(), expected(0..20));
    raft.shutdown().await.unwrap();
    drop(raft);

    assert_eq!(snapshot_files(dir.path()), vec![SNAPSHOT_FILE.to_string()]);
    assert!(dir.path().join(DB_FILE).exists());
    {
        let (mut log, sm, state) = open_at(dir.path()).await;
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(snapshot));
        assert!(log
            .try_get_log_entries(..=snapshot.index)
            .await
            .unwrap()
            .is_empty());
        // Opening restored the state from the snapshot alone.
        assert_eq!(state.last_index(), Some(snapshot.index));
        drop((log, sm));
    }

    let (raft, state) = start(dir.path(), config(policy())).await;
    wait_leader(&raft).await;
    raft.wait(TIMEOUT)
        .applied_index_at_least(Some(last), "restored")
        .await
        .unwrap();
    assert_eq!(state.map(), expected(0..20));
    write_all(&raft, 20..22).await;
    assert_eq!(state.map(), expected(0..22));
    raft.shutdown().await.unwrap();
}
