//! The "done means" script, run through the mount with bash: a framework launches two
//! tasks in one write, one finishes, one is killed, one dies over its memory limit.

use std::time::Duration;

use mesofs_tests::{can_run, process_running, Dev, Mounted};

#[test]
fn a_shell_framework_launches_kills_and_sees_a_memory_kill_through_the_mount() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::start();

    dev.sh_ok("mkdir frameworks/hello");
    let offer = dev
        .sh_ok("cat frameworks/hello/offers/next")
        .trim()
        .to_string();
    assert!(!offer.is_empty(), "offers/next printed an offer id");

    // Two tasks in one write(2): coreutils printf writes its whole output at once.
    dev.sh_ok(&format!(
        "/usr/bin/printf '%s\\n%s\\n' 'name=hi cpus=0.1 mem=32 -- sleep 1; echo hi' \
         'name=long cpus=0.1 mem=32 -- sleep 601' > frameworks/hello/offers/{offer}/launch"
    ));
    // Read your writes: both tasks exist as soon as the write returns.
    let tasks = dev.sh_ok("ls frameworks/hello/tasks");
    assert_eq!(
        tasks.split_whitespace().collect::<Vec<_>>(),
        vec!["hi", "long"]
    );

    assert_eq!(
        dev.sh_ok("cat frameworks/hello/tasks/hi/wait").trim(),
        "TASK_FINISHED"
    );
    assert_eq!(dev.read("frameworks/hello/tasks/hi/stdout"), "hi");
    assert_eq!(dev.read("frameworks/hello/tasks/hi/state"), "TASK_FINISHED");

    let mount = dev.mount.clone();
    dev.wait_for("the long task to run", Duration::from_secs(30), || {
        std::fs::read_to_string(mount.join("frameworks/hello/tasks/long/state"))
            .map(|s| s.trim() == "TASK_RUNNING")
            .unwrap_or(false)
    });
    assert!(process_running("sleep 601"), "the long task's process runs");
    dev.sh_ok("echo > frameworks/hello/tasks/long/kill");
    assert_eq!(
        dev.sh_ok("cat frameworks/hello/tasks/long/wait").trim(),
        "TASK_KILLED"
    );
    assert!(
        !process_running("sleep 601"),
        "no process of the killed task is left"
    );

    // A task over its memory limit is killed by the kernel and reported as such.
    let offer = dev
        .sh_ok("cat frameworks/hello/offers/next")
        .trim()
        .to_string();
    dev.sh_ok(&format!(
        "echo 'name=hog cpus=0.1 mem=32 -- x=$(head -c 200000000 /dev/zero | tr \"\\\\0\" a); echo survived' \
         > frameworks/hello/offers/{offer}/launch"
    ));
    assert_eq!(
        dev.sh_ok("cat frameworks/hello/tasks/hog/wait").trim(),
        "TASK_FAILED"
    );
    let status: serde_json::Value =
        serde_json::from_str(&dev.read("frameworks/hello/tasks/hog/status.json")).unwrap();
    let reason = format!("{} {}", status["reason"], status["message"]);
    assert!(
        reason.to_lowercase().contains("memory"),
        "the failure names memory: {reason}"
    );
    assert_eq!(
        dev.read("frameworks/hello/tasks/hog/stdout"),
        "",
        "it did not survive"
    );

    dev.sh_ok("rmdir frameworks/hello");
    assert!(!dev.mount.join("frameworks/hello").exists());
}

#[test]
fn appending_launches_like_writing_and_tail_follows_a_running_tasks_stdout() {
    if !can_run() {
        return;
    }
    let dev = Dev::start();
    dev.sh_ok("mkdir frameworks/app");
    let offer = dev
        .sh_ok("cat frameworks/app/offers/next")
        .trim()
        .to_string();
    dev.sh_ok(&format!(
        "echo 'name=ticker -- for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.3; done' \
         >> frameworks/app/offers/{offer}/launch"
    ));
    // tail -f sees lines written after it started following, then we stop it.
    let out = dev.sh_ok("timeout 4 tail -n +1 -f frameworks/app/tasks/ticker/stdout | head -n 6");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["tick 1", "tick 2", "tick 3", "tick 4", "tick 5", "tick 6"]
    );
    assert_eq!(
        dev.sh_ok("cat frameworks/app/tasks/ticker/wait").trim(),
        "TASK_FINISHED"
    );
}

#[test]
fn a_kill_written_right_after_the_launch_is_reported_killing_and_sends_sigterm_first() {
    if !can_run() {
        return;
    }
    let dev = Dev::start();
    dev.sh_ok("mkdir frameworks/quick");
    let offer = dev
        .sh_ok("cat frameworks/quick/offers/next")
        .trim()
        .to_string();
    // The kill arrives while the task is still being started.
    dev.sh_ok(&format!(
        "echo 'name=k grace=60s -- sleep 100' > frameworks/quick/offers/{offer}/launch; \
         echo > frameworks/quick/tasks/k/kill"
    ));
    assert_eq!(
        dev.sh_ok("cat frameworks/quick/tasks/k/wait").trim(),
        "TASK_KILLED"
    );
    let status: serde_json::Value =
        serde_json::from_str(&dev.read("frameworks/quick/tasks/k/status.json")).unwrap();
    let message = status["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains("SIGTERM"),
        "the task got SIGTERM, not SIGKILL after its grace period: {message}"
    );
    let states: Vec<&str> = status["history"]
        .as_array()
        .expect("a history")
        .iter()
        .filter_map(|t| t["state"].as_str())
        .collect();
    assert_eq!(
        states[states.len() - 2..],
        ["TASK_KILLING", "TASK_KILLED"],
        "{states:?}"
    );
}
