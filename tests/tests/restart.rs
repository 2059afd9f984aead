//! Nothing acknowledged is lost when `mesofs dev` is SIGKILLed and started again on the same
//! data directory: not the state, not the tasks that kept running, not how the others ended.

use std::time::Duration;

use mesofs_tests::{can_run, Dev, Mounted};

#[test]
fn frameworks_and_final_task_states_survive_a_sigkill_of_mesofs_dev() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::start();
    dev.sh_ok("mkdir frameworks/keep");
    let offer = dev
        .sh_ok("cat frameworks/keep/offers/next")
        .trim()
        .to_string();
    dev.sh_ok(&format!(
        "/usr/bin/printf 'name=ok -- echo done\\nname=bad -- exit 3\\n' > frameworks/keep/offers/{offer}/launch"
    ));
    assert_eq!(
        dev.sh_ok("cat frameworks/keep/tasks/ok/wait").trim(),
        "TASK_FINISHED"
    );
    assert_eq!(
        dev.sh_ok("cat frameworks/keep/tasks/bad/wait").trim(),
        "TASK_FAILED"
    );
    let id_before = dev.read("frameworks/keep/id");

    dev.kill9();
    dev.restart();

    assert_eq!(dev.read("frameworks/keep/id"), id_before);
    assert_eq!(dev.read("frameworks/keep/tasks/ok/state"), "TASK_FINISHED");
    assert_eq!(dev.read("frameworks/keep/tasks/bad/state"), "TASK_FAILED");
    let status: serde_json::Value =
        serde_json::from_str(&dev.read("frameworks/keep/tasks/bad/status.json")).unwrap();
    assert!(
        status["message"].as_str().unwrap_or("").contains('3'),
        "the exit status survives: {status}"
    );
    // The restarted cluster works: its agent offers again.
    let offer = dev
        .sh_ok("cat frameworks/keep/offers/next")
        .trim()
        .to_string();
    assert!(!offer.is_empty());
}

#[test]
fn sigterm_stops_tasks_unmounts_and_exits_cleanly() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::start();
    dev.sh_ok("mkdir frameworks/f");
    let offer = dev.sh_ok("cat frameworks/f/offers/next").trim().to_string();
    dev.sh_ok(&format!(
        "echo 'name=s -- sleep 602' > frameworks/f/offers/{offer}/launch"
    ));
    let mount = dev.mount.clone();
    dev.wait_for(
        "the task to run",
        std::time::Duration::from_secs(30),
        || {
            std::fs::read_to_string(mount.join("frameworks/f/tasks/s/state"))
                .map(|s| s.trim() == "TASK_RUNNING")
                .unwrap_or(false)
        },
    );
    let status = dev.stop();
    assert!(
        status.success(),
        "clean exit, got {}",
        mesofs_tests::describe(status)
    );
    assert!(
        !mesofs_tests::process_running("sleep 602"),
        "its task was stopped"
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&*mount.to_string_lossy()), "it unmounted");
}

#[test]
fn tasks_outlive_a_sigkill_of_mesofs_dev_and_are_taken_back_on_restart() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::start();
    dev.sh_ok("mkdir frameworks/f");
    let offer = dev.sh_ok("cat frameworks/f/offers/next").trim().to_string();
    dev.sh_ok(&format!(
        "/usr/bin/printf 'name=long -- sleep 643\\nname=short -- sleep 2.51; echo back\\nname=bad -- sleep 2.51; exit 7\\n' > frameworks/f/offers/{offer}/launch"
    ));
    for t in ["long", "short", "bad"] {
        dev.wait_for_file(
            &format!("frameworks/f/tasks/{t}/state"),
            "TASK_RUNNING",
            Duration::from_secs(30),
        );
    }

    dev.kill9();
    // The tasks go on without their agent; two of them end while it is down.
    assert!(mesofs_tests::process_running("sleep 643"));
    dev.wait_for("the short tasks to end", Duration::from_secs(30), || {
        !mesofs_tests::process_running("sleep 2.51")
    });
    dev.restart();

    assert_eq!(
        dev.sh_ok("cat frameworks/f/tasks/short/wait").trim(),
        "TASK_FINISHED"
    );
    assert_eq!(dev.read("frameworks/f/tasks/short/stdout"), "back");
    assert_eq!(
        dev.sh_ok("cat frameworks/f/tasks/bad/wait").trim(),
        "TASK_FAILED"
    );
    let status: serde_json::Value =
        serde_json::from_str(&dev.read("frameworks/f/tasks/bad/status.json")).unwrap();
    assert_eq!(status["message"], "exited with status 7", "{status}");
    // The long one was never interrupted, and is under control again.
    assert_eq!(dev.read("frameworks/f/tasks/long/state"), "TASK_RUNNING");
    assert!(mesofs_tests::process_running("sleep 643"));
    dev.sh_ok("echo > frameworks/f/tasks/long/kill");
    assert_eq!(
        dev.sh_ok("cat frameworks/f/tasks/long/wait").trim(),
        "TASK_KILLED"
    );
    assert!(!mesofs_tests::process_running("sleep 643"));
}
