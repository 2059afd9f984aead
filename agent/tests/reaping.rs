//! The agent as child subreaper: orphans of tasks are reparented to it and must be reaped,
//! while a task runs (zombies count against its pids limit) and after it ends.

mod common;

use std::time::Duration;

use common::{pids_in, wait_for_lines, wait_gone, Agent};
use mesofs_agent::{Command, ExitKind, LaunchSpec};

const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn orphans_of_a_running_task_are_reaped_so_they_do_not_use_up_its_pids_limit() {
    let Some(mut agent) = Agent::with_cgroups("orphans") else {
        return;
    };
    // Each `(sleep 0 &)` leaves an orphan that dies at once: thirty zombies would be far over
    // the limit of 8 unless the agent reaps them as they come.
    let mut spec = LaunchSpec::new(
        "orphans.1",
        Command::Shell("for i in $(seq 30); do (sleep 0 &); sleep 0.05; done; echo done".into()),
    );
    spec.pids_max = 8;
    agent.containerizer.launch(spec).await.expect("launch");
    let exit = agent.next_exit(EXIT_TIMEOUT).await;
    let err = std::fs::read_to_string(agent.sandbox_file("orphans.1", "stderr")).unwrap();
    assert_eq!(exit.kind, ExitKind::Finished, "{exit:?}; stderr: {err}");
    assert_eq!(err, "", "no fork may fail");
    assert_eq!(
        std::fs::read_to_string(agent.sandbox_file("orphans.1", "stdout")).unwrap(),
        "done\n"
    );
}

#[tokio::test]
async fn a_process_that_left_the_task_group_is_killed_and_reaped_when_the_task_ends() {
    let Some(mut agent) = Agent::with_cgroups("escaped") else {
        return;
    };
    // `setsid` puts the sleep in a session of its own; the cgroup still holds it.
    let spec = LaunchSpec::new(
        "escaped.1",
        Command::Shell("setsid sleep 600 & echo $! > pids; echo $$ >> pids; sleep 0.3".into()),
    );
    agent.containerizer.launch(spec).await.expect("launch");
    let pids = pids_in(
        &wait_for_lines(
            &agent.sandbox_file("escaped.1", "pids"),
            2,
            Duration::from_secs(10),
        )
        .await,
    );
    let exit = agent.next_exit(EXIT_TIMEOUT).await;
    assert_eq!(exit.kind, ExitKind::Finished, "{exit:?}");
    wait_gone(&pids, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_child_the_agent_did_not_launch_keeps_its_status_for_whoever_waits_for_it() {
    let Some(mut agent) = Agent::with_cgroups("foreign") else {
        return;
    };
    // Exited before any task does, and waited for only at the end: it may stand first among
    // the process's exited children, and the tasks' ends must still be found behind it.
    let mut foreign = std::process::Command::new("/bin/sh")
        .args(["-c", "exit 7"])
        .spawn()
        .expect("spawn");
    let pid = foreign.id() as i32;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // (A reaper that took it would make it vanish instead.)
    while matches!(common::state(pid), Some(s) if s != 'Z') {
        assert!(std::time::Instant::now() < deadline, "it never exited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..3 {
        let id = format!("foreign.{i}");
        let spec = LaunchSpec::new(&id, Command::Shell(format!("exit {i}")));
        agent.containerizer.launch(spec).await.expect("launch");
        let exit = agent.next_exit(EXIT_TIMEOUT).await;
        assert_eq!(
            (exit.task_id.as_str(), exit.exit_code),
            (id.as_str(), Some(i))
        );
    }
    let status = foreign.wait().expect("its status is still there to take");
    assert_eq!(status.code(), Some(7));
}
