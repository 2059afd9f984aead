//! A running task's `usage` file and the `usage` in its `status.json`: what its agent reads
//! from the task's cgroups and measures of its sandbox, read through the mount.

use std::collections::HashMap;
use std::time::Duration;

use mesofs_tests::{can_run, Dev, Mounted};

const BUSY: &str = "frameworks/f/tasks/busy/usage";

/// The `usage` file as figures by name.
fn figures(text: &str) -> HashMap<String, f64> {
    text.lines()
        .map(|l| {
            let (name, value) = l.split_once(' ').expect("`name value` lines");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

#[test]
fn a_busy_tasks_usage_shows_its_cpu_seconds_growing_about_one_per_second_and_its_sandbox() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::start();
    dev.sh_ok("mkdir frameworks/f");
    dev.launch(
        "f",
        "name=busy cpus=1 mem=64 -- head -c 3000000 /dev/urandom > ballast; while :; do :; done",
    );
    dev.wait_running("f", "busy");
    // The agent measures the sandbox about once a second.
    let usage = dev.mount.join(BUSY);
    dev.wait_for(
        "the sandbox's ballast measured",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&usage)
                .is_ok_and(|t| figures(&t).get("disk_bytes").is_some_and(|&d| d >= 3e6))
        },
    );

    let first = figures(&dev.read(BUSY));
    std::thread::sleep(Duration::from_secs(2));
    let then = figures(&dev.read(BUSY));
    let cpu = then["cpu_seconds"] - first["cpu_seconds"];
    let wall = (then["time_ms"] - first["time_ms"]) / 1000.0;
    // One core at most (its CFS quota), and not far below on a machine as busy as CI's.
    let rate = cpu / wall;
    assert!(
        (0.2..1.1).contains(&rate),
        "{cpu} cpu seconds in {wall} s: {first:?} then {then:?}"
    );
    assert!(
        then["cpu_user_seconds"] > then["cpu_system_seconds"],
        "a shell loop runs in user mode: {then:?}"
    );
    assert!(
        then["mem_bytes"] > 0.0 && then["mem_peak_bytes"] > 0.0,
        "{then:?}"
    );
    // The task's init stays out of its cgroups, as its supervisor does.
    assert_eq!(then["pids"], 1.0, "the shell alone: {then:?}");

    // status.json holds the same figures, measured when it was opened.
    let status = dev.status_json("f", "busy");
    let in_status = &status["usage"];
    assert!(
        in_status["cpu_seconds"].as_f64().unwrap() >= then["cpu_seconds"],
        "{status}"
    );
    assert!(
        in_status["disk_bytes"].as_u64().unwrap() >= 3_000_000,
        "{status}"
    );

    // Once the task has ended there is nothing to measure.
    dev.sh_ok("echo > frameworks/f/tasks/busy/kill");
    let (state, status) = dev.end_of("f", "busy");
    assert_eq!(state, "TASK_KILLED");
    assert!(status.get("usage").is_none(), "{status}");
    assert_eq!(dev.read(BUSY), "");
}
