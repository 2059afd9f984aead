//! How a task's command ended is in its `status.json`: the exit status of one that exited,
//! the signal of one a signal killed; and a task given a `timeout` ends when it runs out.

use std::time::{Duration, Instant};

use mesofs_tests::{can_run, process_running, Dev, Mounted};

/// Launches `keys -- command` (shell form) in framework `f`, small.
fn launch(dev: &Dev, keys: &str, command: &str) {
    dev.launch("f", &format!("{keys} cpus=0.1 mem=32 -- {command}"));
}

#[test]
fn status_json_gives_the_exit_code_of_a_command_that_exited_and_the_signal_of_one_killed() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::with_framework(&[]);

    launch(&dev, "name=three", "echo bye; exit 3");
    let (state, status) = dev.end_of("f", "three");
    assert_eq!(state, "TASK_FAILED");
    assert_eq!(status["exit_code"], 3, "{status}");
    assert!(status.get("signal").is_none(), "{status}");

    launch(&dev, "name=zero", "true");
    let (state, status) = dev.end_of("f", "zero");
    assert_eq!(state, "TASK_FINISHED");
    assert_eq!(status["exit_code"], 0, "{status}");

    launch(&dev, "name=segv", "kill -SEGV $$");
    let (state, status) = dev.end_of("f", "segv");
    assert_eq!(state, "TASK_FAILED");
    assert_eq!(status["signal"], 11, "{status}");
    assert!(status.get("exit_code").is_none(), "{status}");

    // Still running: nothing is said of how it ended.
    launch(&dev, "name=long", "sleep 613");
    dev.wait_running("f", "long");
    let status = dev.status_json("f", "long");
    assert!(
        status.get("exit_code").is_none() && status.get("signal").is_none(),
        "{status}"
    );
    // Killed: SIGTERM, which `sleep` does not catch.
    dev.sh_ok("echo > frameworks/f/tasks/long/kill");
    let (state, status) = dev.end_of("f", "long");
    assert_eq!(state, "TASK_KILLED");
    assert_eq!(status["signal"], 15, "{status}");
}

#[test]
fn a_task_past_its_timeout_is_killed_and_fails_with_the_timeout_reason() {
    if !can_run() {
        return;
    }
    let dev = Dev::with_framework(&[]);
    let started = Instant::now();
    launch(&dev, "name=bounded timeout=1s", "sleep 619");
    assert!(
        dev.read("frameworks/f/tasks/bounded/spec")
            .contains("timeout=1s"),
        "the spec's canonical form keeps the timeout"
    );
    let (state, status) = dev.end_of("f", "bounded");
    assert_eq!(state, "TASK_FAILED");
    // A bound on correctness, not a speed: sleep would have run for ten minutes.
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(
        status["reason"], "REASON_MAX_COMPLETION_TIME_REACHED",
        "{status}"
    );
    assert_eq!(
        status["signal"], 15,
        "killed with its kill policy: {status}"
    );
    assert!(!process_running("sleep 619"));
}

#[test]
fn a_timeout_still_runs_out_after_a_sigkill_and_restart_of_the_agent() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::with_framework(&[]);
    launch(&dev, "name=bounded timeout=5s", "sleep 623");
    dev.wait_running("f", "bounded");
    dev.kill9();
    assert!(process_running("sleep 623"), "it outlives its agent");
    dev.restart();
    let (state, status) = dev.end_of("f", "bounded");
    assert_eq!(state, "TASK_FAILED");
    assert_eq!(
        status["reason"], "REASON_MAX_COMPLETION_TIME_REACHED",
        "{status}"
    );
    assert!(!process_running("sleep 623"));
}
