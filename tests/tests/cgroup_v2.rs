//! mesofs on a cgroup v2 machine. These hosts mount cgroup v1, so the test boots a guest
//! that mounts only cgroup v2 (see `mesofs_tests::vm`) and runs `mesofs dev` there; the
//! guest's script (`tests/vm/cgroup_v2.sh`) drives a framework through the mount and prints
//! what it saw, and this test judges it.

use std::time::Duration;

use mesofs_tests::{mesofs_bin, vm};

#[test]
fn on_cgroup_v2_tasks_get_limited_groups_survive_a_crash_and_are_killed_whole() {
    if !vm::can_boot() {
        return;
    }
    let kernel = vm::find_kernel().expect("a kernel (can_boot checked)");
    let mut image = vm::Image::new(&kernel, include_str!("../vm/cgroup_v2.sh"));
    image.binary("mesofs", &mesofs_bin());
    let run = vm::boot(&kernel, image, 1536, Duration::from_secs(600));
    assert!(
        run.finished,
        "the guest did not power off in time; its console:\n{}",
        run.console
    );
    let console = &run.console;
    // Shown with --nocapture, and by the harness when the test fails.
    eprintln!("{console}");
    assert_eq!(run.fact("done"), "ok", "{console}");

    // The guest is a cgroup v2 machine, and the agent chose v2.
    assert_eq!(run.fact("cgroup_magic"), "63677270", "{console}");
    assert_eq!(run.fact("isolator"), "isolator=\"cgroups-v2\"", "{console}");

    assert_eq!(run.fact("short"), "TASK_FINISHED", "{console}");
    assert_eq!(run.fact("short_stdout"), "hi", "{console}");

    // A running task is in its own group below the agent's, with its limits in force.
    assert_eq!(run.fact("long_state"), "TASK_RUNNING", "{console}");
    let group = run.fact("long_group");
    assert!(
        group.starts_with("/mesofs/agent-") && group.ends_with("/v2-1.long"),
        "{console}"
    );
    assert_eq!(run.fact("sleep_cgroup"), format!("0::{group}"), "{console}");
    assert_eq!(
        run.fact("memory_max"),
        (48 * 1024 * 1024).to_string(),
        "{console}"
    );
    assert_eq!(run.fact("cpu_max"), "50000 100000", "{console}");
    assert_eq!(run.fact("pids_max"), "4096", "{console}");
    let enabled = run.fact("subtree_control");
    for controller in ["cpu", "memory", "pids"] {
        assert!(
            enabled.split_whitespace().any(|c| c == controller),
            "{controller} is enabled for the task groups: {console}"
        );
    }

    // A crash of mesofs dev leaves it running, and the one started again takes it back.
    assert_eq!(run.fact("long_after_restart"), "TASK_RUNNING", "{console}");
    assert_eq!(
        run.fact("sleep_after_restart"),
        run.fact("sleep_pid"),
        "{console}"
    );

    // Killing it leaves no process and no group.
    assert_eq!(run.fact("long"), "TASK_KILLED", "{console}");
    assert_eq!(run.fact("sleep_left"), "", "{console}");
    assert_eq!(run.fact("long_group_left"), "", "{console}");

    // The kernel kills a task over its memory limit, and the agent says so.
    assert_eq!(run.fact("hog"), "TASK_FAILED", "{console}");
    assert_eq!(
        run.fact("hog_reason"),
        "REASON_CONTAINER_LIMITATION_MEMORY",
        "{console}"
    );
    assert_eq!(run.fact("hog_stdout"), "", "{console}");

    // Ctrl-C stops it cleanly: unmounted, no task group left.
    assert_eq!(run.fact("dev_exit"), "0", "{console}");
    assert_eq!(run.fact("mounted"), "0", "{console}");
    assert_eq!(run.fact("groups_left"), "0", "{console}");
}
