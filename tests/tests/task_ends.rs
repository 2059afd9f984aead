//! How a task's command ended is in its `status.json`: the exit status of one that exited,
//! the signal of one a signal killed.

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
