//! How a task's command ended is in its `status.json`: the exit status of one that exited,
//! the signal of one a signal killed; and a task given a `timeout` ends when it runs out.

use mesofs_tests::{can_run, Dev, Mounted};

/// Launches `command` (shell form) as `name` in framework `f`, waits for its end; returns its
/// final state and `status.json`.
fn run(dev: &mut Dev, name: &str, command: &str) -> (String, serde_json::Value) {
    let offer = dev.sh_ok("cat frameworks/f/offers/next").trim().to_string();
    dev.sh_ok(&format!(
        "echo 'name={name} cpus=0.1 mem=32 -- {command}' > frameworks/f/offers/{offer}/launch"
    ));
    let state = dev
        .sh_ok(&format!("cat frameworks/f/tasks/{name}/wait"))
        .trim()
        .to_string();
    let status = serde_json::from_str(&dev.read(&format!("frameworks/f/tasks/{name}/status.json")))
        .expect("status.json is JSON");
    (state, status)
}

#[test]
fn status_json_gives_the_exit_code_of_a_command_that_exited_and_the_signal_of_one_killed() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::start();
    dev.sh_ok("mkdir frameworks/f");

    let (state, status) = run(&mut dev, "three", "echo bye; exit 3");
    assert_eq!(state, "TASK_FAILED");
    assert_eq!(status["exit_code"], 3, "{status}");
    assert!(status.get("signal").is_none(), "{status}");

    let (state, status) = run(&mut dev, "zero", "true");
    assert_eq!(state, "TASK_FINISHED");
    assert_eq!(status["exit_code"], 0, "{status}");

    let (state, status) = run(&mut dev, "segv", "kill -SEGV $$");
    assert_eq!(state, "TASK_FAILED");
    assert_eq!(status["signal"], 11, "{status}");
    assert!(status.get("exit_code").is_none(), "{status}");

    // Still running: nothing is said of how it ended.
    let offer = dev.sh_ok("cat frameworks/f/offers/next").trim().to_string();
    dev.sh_ok(&format!(
        "echo 'name=long cpus=0.1 mem=32 -- sleep 613' > frameworks/f/offers/{offer}/launch"
    ));
    let mount = dev.mount.clone();
    dev.wait_for(
        "the long task to run",
        std::time::Duration::from_secs(30),
        || {
            std::fs::read_to_string(mount.join("frameworks/f/tasks/long/state"))
                .map(|s| s.trim() == "TASK_RUNNING")
                .unwrap_or(false)
        },
    );
    let status: serde_json::Value =
        serde_json::from_str(&dev.read("frameworks/f/tasks/long/status.json")).unwrap();
    assert!(
        status.get("exit_code").is_none() && status.get("signal").is_none(),
        "{status}"
    );
    // Killed: SIGTERM, which `sleep` does not catch.
    dev.sh_ok("echo > frameworks/f/tasks/long/kill");
    assert_eq!(
        dev.sh_ok("cat frameworks/f/tasks/long/wait").trim(),
        "TASK_KILLED"
    );
    let status: serde_json::Value =
        serde_json::from_str(&dev.read("frameworks/f/tasks/long/status.json")).unwrap();
    assert_eq!(status["signal"], 15, "{status}");
}

#[test]
fn a_task_past_its_timeout_is_killed_and_fails_with_the_timeout_reason() {
    if !can_run() {
        return;
    }
    let dev = Dev::start();
    dev.sh_ok("mkdir frameworks/f");
    let offer = dev.sh_ok("cat frameworks/f/offers/next").trim().to_string();
    let started = std::time::Instant::now();
    dev.sh_ok(&format!(
        "echo 'name=bounded cpus=0.1 mem=32 timeout=1s -- sleep 619' > frameworks/f/offers/{offer}/launch"
    ));
    assert!(
        dev.read("frameworks/f/tasks/bounded/spec")
            .contains("timeout=1s"),
        "the spec's canonical form keeps the timeout"
    );
    assert_eq!(
        dev.sh_ok("timeout 60 cat frameworks/f/tasks/bounded/wait")
            .trim(),
        "TASK_FAILED"
    );
    // A bound on correctness, not a speed: sleep would have run for ten minutes.
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    let status: serde_json::Value =
        serde_json::from_str(&dev.read("frameworks/f/tasks/bounded/status.json")).unwrap();
    assert_eq!(
        status["reason"], "REASON_MAX_COMPLETION_TIME_REACHED",
        "{status}"
    );
    assert_eq!(
        status["signal"], 15,
        "killed with its kill policy: {status}"
    );
    assert!(!mesofs_tests::process_running("sleep 619"));
}

#[test]
fn a_timeout_still_runs_out_after_a_sigkill_and_restart_of_the_agent() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::start();
    dev.sh_ok("mkdir frameworks/f");
    let offer = dev.sh_ok("cat frameworks/f/offers/next").trim().to_string();
    dev.sh_ok(&format!(
        "echo 'name=bounded cpus=0.1 mem=32 timeout=5s -- sleep 623' > frameworks/f/offers/{offer}/launch"
    ));
    let mount = dev.mount.clone();
    dev.wait_for(
        "the task to run",
        std::time::Duration::from_secs(30),
        || {
            std::fs::read_to_string(mount.join("frameworks/f/tasks/bounded/state"))
                .map(|s| s.trim() == "TASK_RUNNING")
                .unwrap_or(false)
        },
    );
    dev.kill9();
    assert!(
        mesofs_tests::process_running("sleep 623"),
        "it outlives its agent"
    );
    dev.restart();
    assert_eq!(
        dev.sh_ok("timeout 60 cat frameworks/f/tasks/bounded/wait")
            .trim(),
        "TASK_FAILED"
    );
    let status: serde_json::Value =
        serde_json::from_str(&dev.read("frameworks/f/tasks/bounded/status.json")).unwrap();
    assert_eq!(
        status["reason"], "REASON_MAX_COMPLETION_TIME_REACHED",
        "{status}"
    );
    assert!(!mesofs_tests::process_running("sleep 623"));
}
