//! The benchmarks run small in CI, so that they keep working; their figures are printed and
//! checked against each other, never against a speed (these machines are shared and noisy).

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
fn the_launch_benchmark_prints_each_round_and_a_ratio_that_is_the_quotient_of_its_two_rates() {
    if !can_run() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = Command::new(mesofs_bin())
        .args([
            "bench",
            "--tasks",
            "20",
            "--batch",
            "4",
            "--one-at-a-time",
            "5",
        ])
        .args(["--rounds", "2", "--warmup", "4", "--resident", "3"])
        .args(["--usage-seconds", "2", "--dir"])
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
    let rounds = stdout.lines().filter(|l| l.starts_with("  round ")).count();
    assert_eq!(rounds, 2, "one line per round");
    let running = figure(&stdout, "to TASK_RUNNING visible", "ms,");
    let finished = figure(&stdout, "to TASK_FINISHED visible", "ms,");
    assert!(running > 0.0);
    assert!(
        finished >= running,
        "each task is seen finished after it is seen running, so their medians are in that order"
    );
    let rate = figure(&stdout, "pipelined through the mount", "tasks/s");
    let floor_line = stdout
        .lines()
        .find(|l| l.starts_with("  floor, ") && !l.contains("one at a time"))
        .unwrap_or_else(|| panic!("no line of the floor with mesofs's tasks in flight:\n{stdout}"));
    let floor = figure(floor_line, "at a time:", "tasks/s");
    assert!(figure(&stdout, "floor, one at a time", "tasks/s") > 0.0);
    assert!(rate > 0.0 && floor > 0.0);
    let ratio: f64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("ratio mesofs / floor:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ratio in:\n{stdout}"));
    // The rates are printed to a tenth, the ratio to a thousandth.
    let quotient = rate / floor;
    assert!(
        (ratio - quotient).abs() <= 0.0006 + quotient * 0.1 / rate.min(floor),
        "the ratio {ratio} is not the pipelined rate {rate} over the floor's {floor}"
    );
    // The CPU per task is the sum of the parts it is split into (each printed to 0.01 ms).
    let cpu = figure(&stdout, "CPU per pipelined task", "ms;");
    let cpu_line = stdout
        .lines()
        .find(|l| l.contains("CPU per pipelined task"))
        .expect("a CPU line");
    let parts: Vec<f64> = cpu_line[cpu_line.find("ms;").expect("split") + 3..]
        .split(',')
        .map(|p| {
            p.split_whitespace()
                .last()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no figure in {p:?} of {cpu_line:?}"))
        })
        .collect();
    assert_eq!(
        parts.len(),
        6,
        "master, agent, mount, spawner, tasks, driver: {cpu_line}"
    );
    let sum: f64 = parts.iter().sum();
    assert!(
        cpu > 0.0 && parts[0] > 0.0 && parts[1] > 0.0 && parts[2] > 0.0,
        "{cpu_line}"
    );
    assert!(
        (sum - cpu).abs() <= 0.01 * parts.len() as f64 + cpu * 0.02,
        "the parts {parts:?} do not add up to {cpu} ms"
    );
    // Fsyncs, counted by the kernel: every launch is committed to the Raft log, fsynced.
    let fsync_line = stdout
        .lines()
        .find(|l| l.starts_with("fsyncs per task"))
        .unwrap_or_else(|| panic!("no fsyncs line in:\n{stdout}"));
    if fsync_line.contains("not counted") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root with tracefs, where fsyncs must be counted: {fsync_line}"
        );
        eprintln!("fsyncs not counted here: {fsync_line}");
    } else {
        let all = figure(fsync_line, "):", "in all");
        let master = figure(fsync_line, "in all;", ", agent");
        assert!(all > 0.0 && master > 0.0, "{fsync_line}");
        assert!(master <= all, "{fsync_line}");
    }
    // The memory of tasks left running: found by their supervisors, each with a PSS.
    let supervisor = figure(&stdout, "its supervisor's and init's PSS", "KiB (median)");
    assert!(supervisor > 0.0, "{stdout}");
    assert!(figure(&stdout, "KiB;", "KiB in all") >= supervisor);
    // Every resident task's state, then usage, read once a second: each second's reads took
    // some time, the cost above idle is split into the parts it names, and the ratio printed
    // is the quotient of the two costs printed.
    assert!(
        stdout.contains("every running task's file read once a second (3 tasks, 2 s each"),
        "{stdout}"
    );
    let cost = |file: &str| {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("  {file}: a second's reads take")))
            .unwrap_or_else(|| panic!("no {file} reads line in:\n{stdout}"));
        let median = figure(line, "reads take", "ms (median");
        assert!(
            median > 0.0 && figure(line, "slowest", "ms)") >= median,
            "{line}"
        );
        figure(line, "agent", ", mount");
        figure(line, "above idle", "ms in all")
    };
    let (state, usage) = (cost("state"), cost("usage"));
    let ratio = stdout
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("CPU of usage reads / CPU of state reads:")
        })
        .unwrap_or_else(|| panic!("no ratio of the reads' costs in:\n{stdout}"))
        .trim();
    // Only a measurable cost of state reads makes a ratio; each figure is printed to 0.01.
    if state >= 0.05 {
        let ratio: f64 = ratio.parse().unwrap_or_else(|_| panic!("ratio {ratio:?}"));
        let quotient = usage / state;
        assert!(
            (ratio - quotient).abs() <= 0.006 + 0.006 * (1.0 + quotient) / state,
            "the ratio {ratio} is not {usage} / {state}"
        );
    }
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
            "--clients",
            "50",
            "--no-mount",
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
    assert_eq!(
        figure(&stdout, "full pass of a new leader", "offers,"),
        20.0
    );
    assert!(figure(&stdout, "pass after a full pass", "ms (min") >= 0.0);
    assert!(figure(&stdout, "pass with nothing changed", "ms (min") >= 0.0);
    // The kept allocator looks again at every agent once every offer is withdrawn, at every
    // agent once the offers it planned are made (it works their agents out again, in one walk
    // of all of them), and at none when nothing changed.
    let looked_at = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("agents looked at again by those three passes of the kept allocator: ")
        })
        .unwrap_or_else(|| panic!("no count of agents looked at in:\n{stdout}"));
    assert_eq!(looked_at, "20, 20, 0");
    assert!(figure(&stdout, "memory:", "MiB resident") > 0.0);
    assert!(figure(&stdout, "apply of a client's write", "us with 50") > 0.0);
    assert!(figure(&stdout, "a snapshot's copy with 50 clients", "ms") >= 0.0);
}

/// Whether `printed`, a quotient rounded to `decimals`, is `num / den` where `num` and `den`
/// were themselves printed rounded to `operand_decimals`.
fn quotient_matches(
    printed: f64,
    decimals: i32,
    num: f64,
    den: f64,
    operand_decimals: i32,
) -> bool {
    let computed = num / den;
    let half = |d: i32| 0.5 * 10f64.powi(-d);
    let rounding = computed * (half(operand_decimals) / num + half(operand_decimals) / den);
    (printed - computed).abs() <= half(decimals) + rounding
}

#[test]
fn the_alloc_benchmark_reads_a_state_file_and_lists_tasks_through_a_mount_of_both_clusters() {
    if !can_run() {
        return;
    }
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
            "3",
            "--small-tasks",
            "10",
            "--cat-samples",
            "40",
        ])
        .output()
        .expect("running mesofs bench alloc");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    assert!(
        stdout.contains("a small one (4 agents, 1 frameworks, 10 tasks)"),
        "scaled down in proportion to 10 tasks of 50:\n{stdout}"
    );
    let mut cat = Vec::new();
    let mut ls = Vec::new();
    for cluster in ["large cluster", "small cluster"] {
        let label = format!("state, {cluster}");
        let median = figure(&stdout, &label, "us, p99");
        assert!(median > 0.0);
        assert!(
            figure(&stdout, &label, "us, over") >= median,
            "p99 below the median"
        );
        assert_eq!(figure(&stdout, &label, "reads of"), 40.0);
        assert_eq!(figure(&stdout, &label, "tasks' state"), 5.0);
        cat.push(median);
        let label = format!("ls -l tasks/, {cluster}");
        let median = figure(&stdout, &label, "ms for");
        assert!(median > 0.0);
        // Framework f0 has every fifth of the 50 tasks; the small cluster's one framework all 10.
        assert_eq!(figure(&stdout, &label, "entries"), 10.0);
        assert_eq!(figure(&stdout, &label, "listings"), 3.0);
        ls.push(median);
        assert!(figure(&stdout, &format!("command, {cluster}"), "ms (") > 0.0);
    }
    let cat_ratio = figure(&stdout, "cat ratio large / small:", "(of the medians)");
    assert!(
        quotient_matches(cat_ratio, 2, cat[0], cat[1], 1),
        "cat ratio {cat_ratio} is not {} / {}",
        cat[0],
        cat[1]
    );
    let ls_ratio = figure(&stdout, "ls -l ratio large / small:", "(of the medians)");
    assert!(
        quotient_matches(ls_ratio, 2, ls[0], ls[1], 3),
        "ls -l ratio {ls_ratio} is not {} / {}",
        ls[0],
        ls[1]
    );
}

#[test]
fn the_control_plane_benchmark_finishes_every_task_and_prints_a_rate_from_its_own_figures() {
    let out = bench(&[
        "control-plane",
        "--agents",
        "5",
        "--frameworks",
        "4",
        "--tasks",
        "200",
        "--warmup",
        "40",
        "--batch",
        "2",
    ]);
    assert_eq!(figure(&out, "warm-up:", "tasks launched"), 40.0);
    let rate = figure(&out, "launch rate:", "tasks/s");
    let tasks = figure(&out, "launch rate:", "tasks in");
    let seconds = figure(&out, "launch rate:", "s from");
    assert_eq!(tasks, 200.0);
    assert!(
        quotient_matches(rate, 0, tasks, seconds, 3),
        "{rate} tasks/s is not {tasks} tasks in {seconds} s"
    );
    let median = figure(&out, "launch write answered", "ms, p99");
    assert!(median > 0.0);
    assert!(figure(&out, "launch write answered", "ms, over") >= median);
    // Each framework launched its 50 tasks two to a write.
    assert_eq!(figure(&out, "launch write answered", "writes"), 100.0);
    assert!(figure(&out, "found their offer gone", "launch writes") >= 0.0);
}
