//! The launch benchmark runs small in CI, so that it keeps working; its figures are printed,
//! never asserted (these machines are shared and noisy).

use std::process::Command;

use mesofs_tests::{can_run, mesofs_bin};

/// The number just before `unit` on the line that contains `label`.
fn figure(out: &str, label: &str, unit: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.contains(label))
        .unwrap_or_else(|| panic!("no line with {label:?} in:\n{out}"));
    let before = &line[..line
        .find(unit)
        .unwrap_or_else(|| panic!("no {unit:?} in {line:?}"))];
    before
        .split_whitespace()
        .last()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no number before {unit:?} in {line:?}"))
}

#[test]
fn the_benchmark_launches_its_tasks_and_prints_every_figure() {
    if !can_run() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = Command::new(mesofs_bin())
        .args(["bench", "--tasks", "20", "--batch", "4", "--dir"])
        .arg(tmp.path())
        .output()
        .expect("running mesofs bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mesofs bench failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    assert!(figure(&stdout, "through the mount", "tasks/s") > 0.0);
    assert!(figure(&stdout, "TASK_RUNNING visible", "ms,") > 0.0);
    assert!(figure(&stdout, "bare cgroup", "tasks/s") > 0.0);
    let ratio: f64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("ratio mesofs / bare:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ratio in:\n{stdout}"));
    assert!(ratio > 0.0);
}

/// Runs `mesofs bench ARGS` in a temporary directory; returns what it printed.
fn bench(args: &[&str]) -> String {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = Command::new(mesofs_bin())
        .arg("bench")
        .args(args)
        .arg("--dir")
        .arg(tmp.path())
        .output()
        .expect("running mesofs bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "mesofs bench {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    stdout
}

#[test]
fn the_failover_benchmark_kills_the_leader_and_prints_both_times() {
    if !can_run() {
        return;
    }
    let out = bench(&["failover", "--rounds", "1", "--agents", "2"]);
    assert!(figure(&out, "to the first write accepted", "ms") > 0.0);
    assert!(figure(&out, "registered with the new leader", "ms") > 0.0);
}

#[test]
fn the_writes_benchmark_prints_a_rate_per_number_of_writers() {
    if !can_run() {
        return;
    }
    let out = bench(&["writes", "--writers", "1,4", "--seconds", "0.5"]);
    assert!(figure(&out, " 1 writers:", "writes/s") > 0.0);
    assert!(figure(&out, " 4 writers:", "writes/s") > 0.0);
}

#[test]
fn the_alloc_benchmark_offers_every_agent_and_prints_a_rate_from_its_own_figures() {
    let out = Command::new(mesofs_bin())
        .args([
            "bench",
            "alloc",
            "--agents",
            "20",
            "--frameworks",
            "5",
            "--tasks",
            "50",
            "--rounds",
            "2",
        ])
        .output()
        .expect("running mesofs bench alloc");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    println!("{stdout}");
    for kind in ["register agent", "launch", "status update"] {
        assert!(figure(&stdout, &format!("apply {kind}:"), "us per command") > 0.0);
    }
    let ms = figure(&stdout, "full pass", "ms (min");
    let offers = figure(&stdout, "full pass", "offers,");
    let rate = figure(&stdout, "full pass", "offers/s");
    assert_eq!(
        offers, 20.0,
        "every agent has free resources: one offer each"
    );
    let computed = offers / (ms / 1000.0);
    // ms is printed to 0.001: the rate may differ from it by that rounding, and by 1 for its own.
    assert!(
        (rate - computed).abs() <= computed * (0.0005 / ms) + 1.0,
        "offers/s {rate} is {offers} offers over {ms} ms ({computed})"
    );
    assert!(figure(&stdout, "pass with nothing free", "ms (min") >= 0.0);
    assert!(figure(&stdout, "memory:", "MiB resident") > 0.0);
}
