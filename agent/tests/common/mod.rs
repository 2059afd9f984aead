//! Helpers shared by the agent's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mesofs_agent::isolator::CgroupsIsolator;
use mesofs_agent::{Containerizer, Isolator, TaskEvent, TaskExit};
use tokio::sync::mpsc::UnboundedReceiver;

/// Sends the agent's logs to the test's captured output (shown when a test fails).
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "mesofs_agent=debug".to_string()),
        )
        .with_test_writer()
        .try_init();
}

/// Whether this run must not skip anything (CI sets CI=true).
pub fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Whether this process is root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A cgroups isolator, or `None` (after a loud message) when this machine cannot give one
/// and skipping is allowed; under CI=true, a failure instead.
pub fn cgroups_or_skip(test: &str) -> Option<CgroupsIsolator> {
    logs();
    if !is_root() {
        skip_or_fail(test, "it needs root for cgroups");
        return None;
    }
    match CgroupsIsolator::new() {
        Ok(i) => Some(i),
        Err(e) => {
            skip_or_fail(test, &format!("cgroups are unusable: {e}"));
            None
        }
    }
}

fn skip_or_fail(test: &str, why: &str) {
    if ci() {
        panic!("{test} cannot run: {why}; CI=true forbids skipping");
    }
    // Straight to the descriptor: the test harness captures eprintln! of passing tests.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("\n!!!!!!!!!! SKIPPED {test}: {why} !!!!!!!!!!\n").as_bytes(),
    );
}

/// A containerizer in a fresh work directory, with its exit channel.
pub struct Agent {
    pub containerizer: Containerizer,
    pub exits: UnboundedReceiver<TaskEvent>,
    pub work: tempfile::TempDir,
}

impl Agent {
    /// An agent isolating tasks with `isolator`.
    pub fn new(isolator: Box<dyn Isolator>) -> Agent {
        logs();
        let work = tempfile::tempdir().expect("work dir");
        let (containerizer, exits) = Containerizer::new(work.path().to_path_buf(), isolator, None);
        Agent {
            containerizer,
            exits,
            work,
        }
    }

    /// An agent with cgroups, or `None` when skipped.
    pub fn with_cgroups(test: &str) -> Option<Agent> {
        Some(Agent::new(Box::new(cgroups_or_skip(test)?)))
    }

    /// The next reported end, within `timeout` (these tasks have no health checks, so every
    /// event is an end).
    pub async fn next_exit(&mut self, timeout: Duration) -> TaskExit {
        let event = tokio::time::timeout(timeout, self.exits.recv())
            .await
            .expect("a task end within the timeout")
            .expect("the exit channel is open");
        match event {
            TaskEvent::Ended(exit) => exit,
            other => panic!("expected a task's end, got {other:?}"),
        }
    }

    /// A file of a task's sandbox.
    pub fn sandbox_file(&self, task_id: &str, name: &str) -> PathBuf {
        self.work.path().join("sandboxes").join(task_id).join(name)
    }
}

/// Waits until `path` holds at least `lines` lines, and returns its content.
pub async fn wait_for_lines(path: &Path, lines: usize, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= lines {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never got {lines} lines; it has {text:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether a process of that pid exists at all (running or zombie).
pub fn exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The one-letter state of a process, if it exists.
pub fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Waits until no process of these pids exists any more (dead and reaped).
pub async fn wait_gone(pids: &[i32], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<(i32, Option<char>)> = pids
            .iter()
            .filter(|p| exists(**p))
            .map(|p| (*p, state(*p)))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes still exist (pid, state): {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The pids in a file, one per line.
pub fn pids_in(text: &str) -> Vec<i32> {
    text.lines()
        .map(|l| l.trim().parse().expect("a pid per line"))
        .collect()
}
