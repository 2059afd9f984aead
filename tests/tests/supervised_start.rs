//! A supervised task is running only once its command has exec'd: the launch (and so
//! `TASK_RUNNING`) waits for it, however long the command's child takes to get there.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesofs_agent::isolator::{Joiner, PosixIsolator};
use mesofs_agent::{
    Command, Containerizer, Isolation, Isolator, IsolatorError, LaunchSpec, Limits, Usage,
};
use mesofs_tests::mesofs_bin;
use nix::sys::signal::Signal;

/// Process-group isolation whose "cgroup" is a directory holding a FIFO named
/// `cgroup.procs`: a command's child joining it blocks in its write until the test reads.
struct Gated {
    inner: PosixIsolator,
    gate: PathBuf,
}

struct GatedIsolation {
    inner: Box<dyn Isolation>,
    gate: PathBuf,
}

impl Isolator for Gated {
    fn name(&self) -> &'static str {
        "gated"
    }
    fn create(&self, id: &str, limits: &Limits) -> Result<Box<dyn Isolation>, IsolatorError> {
        Ok(Box::new(GatedIsolation {
            inner: self.inner.create(id, limits)?,
            gate: self.gate.clone(),
        }))
    }
    fn recover(&self, id: &str, pid: i32) -> Result<Box<dyn Isolation>, IsolatorError> {
        self.inner.recover(id, pid)
    }
    fn sweep(&self, keep: &BTreeSet<String>) {
        self.inner.sweep(keep)
    }
}

impl Isolation for GatedIsolation {
    fn joiner(&self) -> Result<Joiner, IsolatorError> {
        self.inner.joiner()
    }
    fn started(&self, pid: i32) {
        self.inner.started(pid)
    }
    fn signal_all(&self, signal: Signal) -> Result<(), IsolatorError> {
        self.inner.signal_all(signal)
    }
    fn kill_all(&self) -> Result<Vec<i32>, IsolatorError> {
        self.inner.kill_all()
    }
    fn pids(&self) -> Vec<i32> {
        self.inner.pids()
    }
    fn oom_killed(&self) -> bool {
        self.inner.oom_killed()
    }
    fn oom_events(&self) -> Result<Option<std::os::fd::OwnedFd>, IsolatorError> {
        self.inner.oom_events()
    }
    fn usage(&self) -> Usage {
        self.inner.usage()
    }
    fn limits(&self) -> Result<Option<Limits>, IsolatorError> {
        self.inner.limits()
    }
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        vec![self.gate.clone()]
    }
    fn destroy(&self) -> Result<(), IsolatorError> {
        self.inner.destroy()
    }
}

#[tokio::test]
async fn a_supervised_launch_returns_only_once_the_command_has_execd() {
    let work = tempfile::tempdir().unwrap();
    let gate = tempfile::tempdir().unwrap();
    let procs = gate.path().join("cgroup.procs");
    nix::unistd::mkfifo(&procs, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let isolator = Gated {
        inner: PosixIsolator::new(),
        gate: gate.path().to_path_buf(),
    };
    let (containerizer, mut exits) =
        Containerizer::new(work.path().into(), Box::new(isolator), Some(mesofs_bin()));
    let containerizer = Arc::new(containerizer);
    let launching = containerizer.clone();
    let launch = tokio::spawn(async move {
        launching
            .launch(LaunchSpec::new(
                "gated.1",
                Command::Argv(vec!["sleep".into(), "619".into()]),
            ))
            .await
    });

    // The command's child is stuck before its exec, writing to the gate.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !launch.is_finished(),
        "the launch returned before the command exec'd: {:?}",
        launch.await
    );
    let joined = tokio::task::spawn_blocking(move || std::fs::read_to_string(procs))
        .await
        .unwrap()
        .expect("reading the gate");
    assert_eq!(joined, "0", "what a joining process writes");
    launch
        .await
        .unwrap()
        .expect("the launch, once the command exec'd");
    assert!(mesofs_tests::process_running("sleep 619"));

    containerizer.kill("gated.1").await.expect("kill");
    let exit = tokio::time::timeout(Duration::from_secs(30), exits.recv())
        .await
        .expect("an end")
        .expect("the channel is open");
    let mesofs_agent::TaskEvent::Ended(exit) = exit else {
        panic!("expected the task's end, got {exit:?}");
    };
    assert_eq!(exit.task_id, "gated.1");
}
