//! Every master SIGKILLed at once and started again: the cluster comes back with the same
//! state, and the tasks that ran meanwhile were never touched.

use std::time::Duration;

use mesofs_tests::masters::Masters;
use mesofs_tests::{can_run, pids_of, Mounted};

#[test]
fn all_masters_sigkilled_at_once_come_back_with_the_same_state_and_tasks_keep_running() {
    if !can_run() {
        return;
    }
    let mut c = Masters::start(3, &[]);
    c.sh_ok("mkdir frameworks/f");
    let o = c.sh_ok("cat frameworks/f/offers/next").trim().to_string();
    c.sh_ok(&format!(
        "/usr/bin/printf 'name=long cpus=0.1 mem=16 -- sleep 8888\\nname=short cpus=0.1 mem=16 -- echo done\\n' > frameworks/f/offers/{o}/launch"
    ));
    c.wait_for_file(
        "frameworks/f/tasks/long/state",
        "TASK_RUNNING",
        Duration::from_secs(30),
    );
    assert_eq!(
        c.sh_ok("cat frameworks/f/tasks/short/wait").trim(),
        "TASK_FINISHED"
    );
    let before = c.sh_ok("cat frameworks/f/id; cat frameworks/f/tasks/*/status.json | grep -o '\"state\": *\"[A-Z_]*\"'");
    let pids = pids_of("sleep 8888");
    assert!(!pids.is_empty());

    for id in 1..=3 {
        c.kill_master(id);
    }
    // With no master left, the mount says so: no leader, no offers.
    c.wait_for_file("cluster/leader", "", Duration::from_secs(30));
    assert_eq!(c.sh_ok("ls frameworks/f/offers"), "next\nwhy\n");
    for id in 1..=3 {
        c.restart_master(id);
    }
    c.wait_for_leader(None, Duration::from_secs(60));
    let after = c.sh_ok("cat frameworks/f/id; cat frameworks/f/tasks/*/status.json | grep -o '\"state\": *\"[A-Z_]*\"'");
    assert_eq!(after, before, "the same state after every master restarted");
    assert_eq!(pids_of("sleep 8888"), pids, "the task ran on untouched");
    // And the cluster works: the agent is back and offers again.
    let agent = c.sh_ok("ls agents").trim().to_string();
    c.wait_for_file(
        &format!("agents/{agent}/state"),
        "active",
        Duration::from_secs(30),
    );
    let o = c
        .sh_ok("timeout 30 cat frameworks/f/offers/next")
        .trim()
        .to_string();
    c.sh_ok(&format!(
        "echo 'name=after cpus=0.1 mem=16 -- true' > frameworks/f/offers/{o}/launch"
    ));
    assert_eq!(
        c.sh_ok("cat frameworks/f/tasks/after/wait").trim(),
        "TASK_FINISHED"
    );
    assert_eq!(c.read("frameworks/f/tasks/long/state"), "TASK_RUNNING");
}
