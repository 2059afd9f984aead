//! What an agent keeps in its work directory so that, restarted, it finds the tasks it left
//! running and the status updates the master had not acknowledged.
//!
//! `meta/tasks/<task id>.json` records a task's supervisor (pid and start time) and what its
//! monitor needs; `meta/tasks/<task id>.exit` is written by the supervisor when the command
//! ends. Those files are written whole to a temporary name and renamed, so a crash leaves the
//! old or the new one. Status updates are appended to one log, `meta/updates.log`, until they
//! are acknowledged: a line `+<n> <json>` for each update, `-<n>` for each acknowledgement
//! (one `write` each, no file made or removed per update); the log is emptied whenever
//! nothing is left unacknowledged, and rewritten with only what is left once it grows large.
//! `meta/updates/<n>.json`, one file per update, is how agents before the log kept them: read
//! at start, and removed as they are acknowledged. Nothing here is fsynced: it must outlive
//! the agent's process, not the machine, whose crash ends the tasks too.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
    /// When its timeout runs out (unix ms), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// The most disk its sandbox may take (MiB), when enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_limit_mb: Option<u64>,
    /// The only ports it may listen on, when watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_ports: Option<Vec<u16>>,
    /// Whether its supervisor runs a health check (and keeps a health file).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub health: bool,
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
    /// The command's exit status, on an end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that killed the command, on an end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The task's health, on an update that says it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// The number of that health change.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub health_seq: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The agent's checkpoint directory (`<work dir>/meta`).
#[derive(Debug)]
pub struct Checkpoints {
    tasks: PathBuf,
    /// The directory of updates kept one per file (before the log).
    updates: PathBuf,
    log: Mutex<UpdateLog>,
}

/// The log of unacknowledged status updates, and what is live in it.
#[derive(Debug)]
struct UpdateLog {
    path: PathBuf,
    /// Opened for appending.
    file: File,
    /// Its length.
    len: u64,
    /// Each unacknowledged update's line, by number.
    live: BTreeMap<u64, Vec<u8>>,
    /// Numbers of the updates found as files of the directory before the log.
    in_files: BTreeSet<u64>,
}

/// Past this length the log is rewritten with only its live lines.
const LOG_REWRITE_LEN: u64 = 1 << 20;

impl Checkpoints {
    /// Opens (creating it if needed) the checkpoint directory of a work directory.
    pub fn open(work_dir: &Path) -> io::Result<Checkpoints> {
        let meta = work_dir.join("meta");
        let tasks = meta.join("tasks");
        let updates = meta.join("updates");
        fs::create_dir_all(&tasks)?;
        fs::create_dir_all(&updates)?;
        let log = UpdateLog::open(meta.join("updates.log"), &updates)?;
        Ok(Checkpoints {
            tasks,
            updates,
            log: Mutex::new(log),
        })
    }

    fn log(&self) -> std::sync::MutexGuard<'_, UpdateLog> {
        // Every change to the log is one append, and to `live` one insert or remove.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where a task's supervisor records how its command ended.
    pub fn exit_file(&self, task_id: &str) -> PathBuf {
        self.tasks.join(format!("{task_id}.exit"))
    }

    /// Where a task's supervisor records its health checks' results.
    pub fn health_file(&self, task_id: &str) -> PathBuf {
        self.tasks.join(format!("{task_id}.health"))
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
        remove(&self.health_file(task_id));
    }

    /// Records status update number `n`.
    pub fn save_update(&self, n: u64, update: &UpdateCheckpoint) -> io::Result<()> {
        let mut line = format!("+{n} ").into_bytes();
        serde_json::to_writer(&mut line, update).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut log = self.log();
        log.append(&line)?;
        log.live.insert(n, line);
        Ok(())
    }

    /// Every recorded update with its number, oldest first.
    pub fn updates(&self) -> Vec<(u64, UpdateCheckpoint)> {
        let log = self.log();
        let mut all: Vec<(u64, UpdateCheckpoint)> = log
            .live
            .iter()
            .filter_map(|(&n, line)| Some((n, parse_saved(line)?.1)))
            .collect();
        all.extend(
            read_all(&self.updates)
                .into_iter()
                .filter_map(|(stem, u)| Some((stem.parse().ok()?, u))),
        );
        all.sort_by_key(|(n, _)| *n);
        all
    }

    /// Forgets update number `n` (acknowledged).
    pub fn forget_update(&self, n: u64) {
        let mut log = self.log();
        if log.in_files.remove(&n) {
            remove(&self.updates.join(format!("{n:020}.json")));
            return;
        }
        if log.live.remove(&n).is_none() {
            return;
        }
        if let Err(e) = log.forget(n) {
            warn!(path = %log.path.display(), error = %e, "cannot record an acknowledgement: a restarted agent sends that update again");
        }
    }
}

impl UpdateLog {
    /// Opens the log at `path`, finding what is live in it, and notes the updates kept as
    /// files in `dir` by an earlier agent.
    fn open(path: PathBuf, dir: &Path) -> io::Result<UpdateLog> {
        let mut live = BTreeMap::new();
        match fs::read(&path) {
            Ok(bytes) => {
                for line in bytes.split_inclusive(|&b| b == b'\n') {
                    if let Some((n, _)) = parse_saved(line) {
                        live.insert(n, line.to_vec());
                    } else if let Some(n) = parse_ack(line) {
                        live.remove(&n);
                    } else {
                        // A line cut short by a crash in the middle of its write.
                        warn!(path = %path.display(), "skipping an unreadable line of the update log");
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let in_files = read_all::<UpdateCheckpoint>(dir)
            .into_iter()
            .filter_map(|(stem, _)| stem.parse().ok())
            .collect();
        // Written again with only the live lines, so a cut line is not followed by others.
        let (file, len) = write_live(&path, &live)?;
        Ok(UpdateLog {
            path,
            file,
            len,
            live,
            in_files,
        })
    }

    /// Appends `line` in one write.
    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        if let Err(e) = self.file.write_all(line) {
            // Part of the line may be there (a full disk): the log is written again without
            // it, so that the next line is not glued to it.
            let _ = self.rewrite();
            return Err(e);
        }
        self.len += line.len() as u64;
        Ok(())
    }

    /// Records that update `n` (already out of `live`) is acknowledged: the log is emptied
    /// if nothing is left, rewritten if it grew large, else `-<n>` is appended.
    fn forget(&mut self, n: u64) -> io::Result<()> {
        if self.live.is_empty() {
            self.file.set_len(0)?;
            self.len = 0;
            Ok(())
        } else if self.len > LOG_REWRITE_LEN {
            self.rewrite()
        } else {
            self.append(format!("-{n}\n").as_bytes())
        }
    }

    /// Replaces the log with one holding only the live lines.
    fn rewrite(&mut self) -> io::Result<()> {
        (self.file, self.len) = write_live(&self.path, &self.live)?;
        Ok(())
    }
}

/// Replaces the log at `path` with `live`'s lines (whole: written aside, then renamed), and
/// opens it for appending; returns it with its length.
fn write_live(path: &Path, live: &BTreeMap<u64, Vec<u8>>) -> io::Result<(File, u64)> {
    let tmp = path.with_extension("log-tmp");
    let all: Vec<u8> = live.values().flatten().copied().collect();
    fs::write(&tmp, &all)?;
    fs::rename(&tmp, path)?;
    let file = OpenOptions::new().append(true).open(path)?;
    Ok((file, all.len() as u64))
}

/// A `+<n> <json>` line of the update log.
fn parse_saved(line: &[u8]) -> Option<(u64, UpdateCheckpoint)> {
    let line = line.strip_suffix(b"\n")?.strip_prefix(b"+")?;
    let space = line.iter().position(|&b| b == b' ')?;
    let n = std::str::from_utf8(&line[..space]).ok()?.parse().ok()?;
    Some((n, serde_json::from_slice(&line[space + 1..]).ok()?))
}

/// A `-<n>` line of the update log.
fn parse_ack(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\n")?.strip_prefix(b"-")?;
    std::str::from_utf8(line).ok()?.parse().ok()
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
            exit_code: None,
            signal: None,
            healthy: Some(false),
            health_seq: 3,
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
            deadline_ms: Some(1_800_000_000_000),
            disk_limit_mb: Some(16),
            allowed_ports: Some(vec![31000, 31001]),
            health: true,
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
    fn an_end_keeps_how_the_command_ended_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::open(dir.path()).unwrap();
        let mut end = update("end");
        end.state = "TASK_FAILED".into();
        end.exit_code = Some(3);
        let mut killed = update("killed");
        killed.state = "TASK_KILLED".into();
        killed.signal = Some(15);
        c.save_update(1, &end).unwrap();
        c.save_update(2, &killed).unwrap();
        let again = Checkpoints::open(dir.path()).unwrap();
        assert_eq!(again.updates(), vec![(1, end), (2, killed)]);
    }

    fn numbers(c: &Checkpoints) -> Vec<u64> {
        c.updates().iter().map(|(n, _)| *n).collect()
    }

    fn log_len(dir: &Path) -> u64 {
        fs::metadata(dir.join("meta/updates.log")).unwrap().len()
    }

    #[test]
    fn acknowledged_updates_stay_forgotten_and_the_log_empties_when_none_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::open(dir.path()).unwrap();
        for n in 1..=3 {
            c.save_update(n, &update(&format!("u{n}"))).unwrap();
        }
        c.forget_update(2);
        c.forget_update(2);
        let again = Checkpoints::open(dir.path()).unwrap();
        assert_eq!(numbers(&again), vec![1, 3]);
        assert_eq!(again.updates()[1].1, update("u3"));
        again.forget_update(1);
        assert!(log_len(dir.path()) > 0);
        again.forget_update(3);
        assert_eq!(log_len(dir.path()), 0);
        assert!(Checkpoints::open(dir.path()).unwrap().updates().is_empty());
    }

    #[test]
    fn a_line_cut_short_by_a_crash_is_skipped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::open(dir.path()).unwrap();
        c.save_update(1, &update("u1")).unwrap();
        drop(c);
        let mut log = OpenOptions::new()
            .append(true)
            .open(dir.path().join("meta/updates.log"))
            .unwrap();
        log.write_all(b"+2 {\"update_id\":\"u2\",\"task").unwrap();
        drop(log);
        let again = Checkpoints::open(dir.path()).unwrap();
        assert_eq!(numbers(&again), vec![1]);
        // What follows is not glued to the cut line.
        again.save_update(3, &update("u3")).unwrap();
        assert_eq!(numbers(&Checkpoints::open(dir.path()).unwrap()), vec![1, 3]);
    }

    #[test]
    fn updates_kept_as_files_by_an_earlier_agent_are_taken_back_and_removed_once_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("meta/updates");
        fs::create_dir_all(&old).unwrap();
        write_json(&old.join(format!("{:020}.json", 7)), &update("u7")).unwrap();
        let c = Checkpoints::open(dir.path()).unwrap();
        c.save_update(8, &update("u8")).unwrap();
        assert_eq!(numbers(&c), vec![7, 8]);
        c.forget_update(7);
        assert!(
            fs::read_dir(&old).unwrap().next().is_none(),
            "its file is gone"
        );
        assert_eq!(numbers(&Checkpoints::open(dir.path()).unwrap()), vec![8]);
    }

    #[test]
    fn a_long_log_is_rewritten_with_only_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::open(dir.path()).unwrap();
        c.save_update(0, &update("kept")).unwrap();
        // Three times the length that makes it rewritten, appended one update at a time.
        let mut appended = 0;
        let mut n = 1;
        while appended < 3 * LOG_REWRITE_LEN {
            let before = log_len(dir.path());
            c.save_update(n, &update(&format!("u{n}"))).unwrap();
            appended += log_len(dir.path()) - before;
            c.forget_update(n);
            n += 1;
        }
        assert!(log_len(dir.path()) <= LOG_REWRITE_LEN + 1024);
        let again = Checkpoints::open(dir.path()).unwrap();
        assert_eq!(again.updates(), vec![(0, update("kept"))]);
    }

    #[test]
    fn an_unreadable_checkpoint_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::open(dir.path()).unwrap();
        fs::write(dir.path().join("meta/tasks/bad.json"), b"{not json").unwrap();
        assert!(c.tasks().is_empty());
    }
}
