//! The process-group fallback, which needs no root: tasks run, end and are killed whole, but
//! no limit is enforced.

mod common;

use std::time::Duration;

use common::{pids_in, wait_for_lines, wait_gone, Agent};
use mesofs_agent::isolator::PosixIsolator;
use mesofs_agent::{Command, ExitKind, Isolator, LaunchSpec, Limits};

const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_task_runs_and_finishes_without_cgroups() {
    let mut agent = Agent::new(Box::new(PosixIsolator::new()));
    assert_eq!(agent.containerizer.isolator_name(), "posix");
    let sandbox = agent
        .containerizer
        .launch(LaunchSpec::new(
            "posix.ok",
            Command::Shell("echo $MESOFS_TASK_ID".into()),
        ))
        .await
        .expect("launch");
    let exit = agent.next_exit(EXIT_TIMEOUT).await;
    assert_eq!(exit.kind, ExitKind::Finished);
    assert_eq!(
        std::fs::read_to_string(sandbox.join("stdout")).unwrap(),
        "posix.ok\n"
    );
}

#[tokio::test]
async fn kill_ends_the_whole_process_group() {
    let mut agent = Agent::new(Box::new(PosixIsolator::new()));
    let spec = LaunchSpec::new(
        "posix.kill",
        Command::Shell("sleep 600 & echo $! > pids; echo $$ >> pids; sleep 600".into()),
    );
    agent.containerizer.launch(spec).await.expect("launch");
    let pids = pids_in(
        &wait_for_lines(
            &agent.sandbox_file("posix.kill", "pids"),
            2,
            Duration::from_secs(10),
        )
        .await,
    );
    agent.containerizer.kill("posix.kill").await.expect("kill");
    let exit = agent.next_exit(EXIT_TIMEOUT).await;
    assert_eq!(exit.kind, ExitKind::Killed);
    wait_gone(&pids, Duration::from_secs(5)).await;
}

#[test]
fn process_groups_enforce_no_limits_and_have_no_cgroups() {
    let isolation = PosixIsolator::new()
        .create("posix.limits", &Limits::default())
        .expect("create");
    assert_eq!(isolation.limits().expect("limits"), None);
    assert!(isolation.cgroup_dirs().is_empty());
    assert!(!isolation.oom_killed());
    isolation.destroy().expect("destroy");
}

/// An isolator that takes its time, so a kill can arrive while a launch is under way.
struct Slow(PosixIsolator);

impl Isolator for Slow {
    fn name(&self) -> &'static str {
        "slow"
    }
    fn create(
        &self,
        id: &str,
        limits: &Limits,
    ) -> Result<Box<dyn mesofs_agent::Isolation>, mesofs_agent::IsolatorError> {
        std::thread::sleep(Duration::from_millis(300));
        self.0.create(id, limits)
    }
    fn recover(
        &self,
        id: &str,
        pid: i32,
    ) -> Result<Box<dyn mesofs_agent::Isolation>, mesofs_agent::IsolatorError> {
        self.0.recover(id, pid)
    }
    fn sweep(&self, keep: &std::collections::BTreeSet<String>) {
        self.0.sweep(keep)
    }
}

#[tokio::test]
async fn a_kill_during_the_launch_kills_the_task_as_soon_as_it_runs() {
    let mut agent = Agent::new(Box::new(Slow(PosixIsolator::new())));
    let spec = LaunchSpec::new("slow.1", Command::Shell("sleep 600".into()));
    let (launched, killed) = tokio::join!(agent.containerizer.launch(spec), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(agent.containerizer.running(), vec!["slow.1".to_string()]);
        agent.containerizer.kill("slow.1").await
    });
    launched.expect("launch");
    killed.expect("kill");
    let exit = agent.next_exit(EXIT_TIMEOUT).await;
    assert_eq!(exit.kind, ExitKind::Killed);
}
