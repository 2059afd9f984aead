//! Three masters: the leader SIGKILLed while a shell framework launches tasks one write at a
//! time. Every launch whose write returned 0 exists afterwards and finishes, no task runs
//! twice, and a task started before the kill runs on untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mesofs_tests::masters::Masters;
use mesofs_tests::{can_run, pids_of, Mounted};

const TASKS: usize = 300;

#[test]
fn every_acknowledged_launch_survives_a_sigkill_of_the_leader_and_runs_once() {
    if !can_run() {
        return;
    }
    let mut c = Masters::start(3, &[]);
    c.sh_ok("mkdir frameworks/f");
    let o = c.sh_ok("cat frameworks/f/offers/next").trim().to_string();
    c.sh_ok(&format!(
        "echo 'name=long cpus=0.1 mem=16 -- sleep 7777' > frameworks/f/offers/{o}/launch"
    ));
    c.wait_for_file(
        "frameworks/f/tasks/long/state",
        "TASK_RUNNING",
        Duration::from_secs(30),
    );
    let long_pids = pids_of("sleep 7777");
    assert!(!long_pids.is_empty(), "the long task runs");

    let files = c.dir().to_path_buf();
    let (ran, ok, existed) = (files.join("ran"), files.join("ok"), files.join("existed"));
    // Each launch is retried with a fresh offer until a write returns 0; a launch whose
    // write failed although it took effect shows as an existing task (EEXIST next time).
    let script = format!(
        r#"set -u
cd frameworks/f
for i in $(seq 1 {TASKS}); do
  tries=0
  while :; do
    tries=$((tries+1))
    o=$(timeout 60 cat offers/next) || {{ echo "no offer for t$i" >&2; exit 1; }}
    if echo "name=t$i cpus=0.01 mem=4 -- echo t$i >> {ran}" > offers/$o/launch; then
      echo t$i >> {ok}; break
    fi
    if [ -d tasks/t$i ]; then echo t$i >> {existed}; break; fi
    [ $tries -lt 100 ] || {{ echo "t$i: gave up after $tries tries" >&2; exit 1; }}
    sleep 0.02
  done
done
"#,
        ran = ran.display(),
        ok = ok.display(),
        existed = existed.display(),
    );
    let mut framework = Command::new("bash")
        .args(["-c", &script])
        .current_dir(&c.mount)
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the framework");

    let lines = |p: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    };
    let okf = ok.clone();
    c.wait_for("100 launches", Duration::from_secs(120), || {
        lines(&okf).len() >= 100
    });
    let leader = c.leader().expect("a leader");
    c.kill_master(leader);
    let killed_at = Instant::now();
    let new = c.wait_for_leader(Some(leader), Duration::from_secs(30));
    println!(
        "killed leader m{leader}; the mount shows m{new} after {:?}",
        killed_at.elapsed()
    );

    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(s) = framework.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the framework did not finish\n{}",
            c.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(framework.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        status.success(),
        "framework failed: {stderr}\n{}",
        c.log_text()
    );

    let acknowledged = lines(&ok);
    let existed = lines(&existed);
    println!(
        "{} launches acknowledged, {} took effect after a failed write",
        acknowledged.len(),
        existed.len()
    );
    assert_eq!(acknowledged.len() + existed.len(), TASKS);
    for name in acknowledged.iter().chain(&existed) {
        let end = c.sh_ok(&format!("timeout 60 cat frameworks/f/tasks/{name}/wait"));
        assert_eq!(end.trim(), "TASK_FINISHED", "{name}\n{}", c.log_text());
    }
    let mut runs: BTreeMap<String, usize> = BTreeMap::new();
    for name in lines(&ran) {
        *runs.entry(name).or_default() += 1;
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "tasks that ran twice: {twice:?}");
    let ran_once: BTreeSet<&String> = runs.keys().collect();
    for name in &acknowledged {
        assert!(
            ran_once.contains(name),
            "{name} was acknowledged but never ran"
        );
    }

    assert_eq!(c.read("frameworks/f/tasks/long/state"), "TASK_RUNNING");
    assert_eq!(
        pids_of("sleep 7777"),
        long_pids,
        "the long task was not touched"
    );

    // The framework's events lost and repeated no task line across the failover.
    let events = c.sh_ok("cat frameworks/f/events");
    let mut lines: BTreeMap<&str, usize> = BTreeMap::new();
    for l in events.lines().filter(|l| l.starts_with("task ")) {
        *lines.entry(l).or_default() += 1;
    }
    for name in acknowledged.iter().chain(&existed) {
        for state in ["TASK_STAGING", "TASK_RUNNING"] {
            let line = format!("task {name} {state}");
            assert_eq!(lines.get(line.as_str()), Some(&1), "{line} once in events");
        }
        let finished: usize = lines
            .iter()
            .filter(|(l, _)| l.starts_with(&format!("task {name} TASK_FINISHED")))
            .map(|(_, n)| n)
            .sum();
        assert_eq!(finished, 1, "task {name} TASK_FINISHED once in events");
    }
}
