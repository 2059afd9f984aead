//! What an agent keeps in its work directory so that, restarted, it finds the tasks it left
//! running and the status updates the master had not acknowledged.
//!
//! `meta/tasks/<task id>.json` records a task's supervisor (pid and start time) and what its
//! monitor needs; `meta/tasks/<task id>.exit` is written by the supervisor when the command
//! ends. `meta/updates/<n>.json` holds each status update until it is acknowledged. Files are
//! written whole to a temporary name and renamed, so a crash leaves the old or the new one.
//! They are not fsynced: they must outlive the agent's process, not the machine, whose crash
//! ends the tasks too.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tracing::warn;

/// A running task, as a restarted agent needs to find it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCheckpoint {
    /// The task's id.
    pub task_id: String,
    /// Its supervisor's pid (also its process group and session id).
    pub pid: i32,
    /// The supervisor's start time in clock ticks after boot: with the pid, names the process.
    pub start_ticks: u64,
    /// Its memory limit, for the message of an OOM kill.
    pub mem_mb: u64,
    /// Its kill grace period.
    pub kill_grace_ms: u64,
}

/// A status update not yet acknowledged by the master.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateCheckpoint {
    /// Unique per update; the master acknowledges by it.
    pub update_id: String,
    /// The task.
    pub task_id: String,
    /// `TASK_RUNNING`...
    pub state: String,
    /// Machine-readable reason.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// When it happened (unix ms).
    pub time_ms: u64,
}

/// The agent's checkpoint directory (`<work dir>/meta`).
#[derive(Debug)]
pub struct Checkpoints {
    tasks: PathBuf,
    updates: PathBuf,
}

impl Checkpoints {
    /// Opens (creating it if needed) the checkpoint directory of a work directory.
    pub fn open(work_dir: &Path) -> io::Result<Checkpoints> {
        let meta = work_dir.join("meta");
        let c = Checkpoints {
            tasks: meta.join("tasks"),
            updates: meta.join("updates"),
        };
        fs::create_dir_all(&c.tasks)?;
        fs::create_dir_all(&c.updates)?;
        Ok(c)
    }

    /// Where a task's supervisor records how its command ended.
    pub fn exit_file(&self, task_id: &str) -> PathBuf {
        self.tasks.join(format!("{task_id}.exit"))
    }

    /// Records a running task.
    pub fn save_task(&self, task: &TaskCheckpoint) -> io::Result<()> {
        write_json(&self.tasks.join(format!("{}.json", task.task_id)), task)
    }

    /// Every recorded task.
    pub fn tasks(&self) -> Vec<TaskCheckpoint> {
        read_all(&self.tasks).into_iter().map(|(_, t)| t).collect()
    }

    /// Forgets a task whose end is recorded elsewhere (as a status update).
    pub fn forget_task(&self, task_id: &str) {
        remove(&self.tasks.join(format!("{task_id}.json")));
        remove(&self.exit_file(task_id));
    }

    /// Records status update number `n`.
    pub fn save_update(&self, n: u64, update: &UpdateCheckpoint) -> io::Result<()> {
        write_json(&self.updates.join(format!("{n:020}.json")), update)
    }

    /// Every recorded update with its number, oldest first.
    pub fn updates(&self) -> Vec<(u64, UpdateCheckpoint)> {
        let mut all: Vec<(u64, UpdateCheckpoint)> = read_all(&self.updates)
            .into_iter()
            .filter_map(|(stem, u)| Some((stem.parse().ok()?, u)))
            .collect();
        all.sort_by_key(|(n, _)| *n);
        all
    }

    /// Forgets update number `n` (acknowledged).
    pub fn forget_update(&self, n: u64) {
        remove(&self.updates.join(format!("{n:020}.json")));
    }
}

/// Writes `value` as JSON to `path`, replacing it whole (a crash leaves the old one or the new).
pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec(value).map_err(io::Error::other)?)?;
    fs::rename(&tmp, path)
}

/// Every `*.json` in `dir` that parses, by file stem; the others are reported and skipped.
fn read_all<T: DeserializeOwned>(dir: &Path) -> Vec<(String, T)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for path in entries.flatten().map(|e| e.path()) {
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        match fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(v) => out.push((stem.to_string(), v)),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "skipping an unreadable checkpoint")
            }
        }
    }
    out
}

fn remove(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            warn!(path = %path.display(), error = %e, "cannot remove a checkpoint");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(id: &str) -> UpdateCheckpoint {
        UpdateCheckpoint {
            update_id: id.into(),
            task_id: "f-1.t".into(),
            state: "TASK_RUNNING".into(),
            reason: String::new(),
            message: String::new(),
            time_ms: 1,
        }
    }

    #[test]
    fn tasks_and_updates_are_found_again_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::open(dir.path()).unwrap();
        let task = TaskCheckpoint {
            task_id: "f-1.t".into(),
            pid: 42,
            start_ticks: 7,
            mem_mb: 32,
            kill_grace_ms: 3000,
        };
        c.save_task(&task).unwrap();
        for n in [10, 2, 9] {
            c.save_update(n, &update(&format!("u{n}"))).unwrap();
        }
        let again = Checkpoints::open(dir.path()).unwrap();
        assert_eq!(again.tasks(), vec![task]);
        let numbers: Vec<u64> = again.updates().iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, vec![2, 9, 10]);
        again.forget_update(9);
        again.forget_task("f-1.t");
        assert!(again.tasks().is_empty());
        assert_eq!(again.updates().len(), 2);
    }

    #[test]
    fn an_unreadable_checkpoint_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::open(dir.path()).unwrap();
        fs::write(dir.path().join("meta/tasks/bad.json"), b"{not json").unwrap();
        assert!(c.tasks().is_empty());
    }
}
