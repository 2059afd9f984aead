//! `events` is a log file: `cat`, `grep` and `cp` read it to its end and stop, `tail -n +1 -f`
//! prints the history and then each new line; `events_pipe` is the stream that waits.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use mesofs_tests::{can_run, Dev, Mounted};

#[test]
fn events_reads_to_its_end_and_tail_follows_it_while_events_pipe_waits() {
    if !can_run() {
        return;
    }
    let dev = Dev::start();
    dev.sh_ok("mkdir frameworks/f");
    let o = dev.sh_ok("cat frameworks/f/offers/next").trim().to_string();
    dev.sh_ok(&format!(
        "echo 'name=a cpus=0.1 mem=16 -- true' > frameworks/f/offers/{o}/launch"
    ));
    assert_eq!(
        dev.sh_ok("cat frameworks/f/tasks/a/wait").trim(),
        "TASK_FINISHED"
    );

    // The resources the task freed are offered again (an `offer` line) within the allocation
    // interval: wait until the log stops growing, so that cat, cp and stat see one log.
    let mut log = String::new();
    for _ in 0..50 {
        let now = dev.sh_ok("timeout 5 cat frameworks/f/events");
        if now == log {
            break;
        }
        log = now;
        std::thread::sleep(Duration::from_millis(300));
    }

    // cat, grep and cp end at the end of the log.
    assert!(log.contains("task a TASK_STAGING\n"), "{log}");
    assert!(log.contains("task a TASK_FINISHED"), "{log}");
    let count = dev.sh_ok("timeout 5 grep -c '^task a ' frameworks/f/events");
    assert!(count.trim().parse::<u32>().unwrap() >= 4, "{count}");
    let copy = dev.mount.parent().unwrap().join("events.copy");
    dev.sh_ok(&format!(
        "timeout 5 cp frameworks/f/events {}",
        copy.display()
    ));
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), log);
    let size = dev.sh_ok("stat -c %s frameworks/f/events");
    assert_eq!(
        size.trim(),
        log.len().to_string(),
        "its size is what cat reads"
    );

    // The pipe waits at its end.
    let pipe = dev.sh("timeout 1 cat frameworks/f/events_pipe");
    assert_eq!(pipe.status.code(), Some(124), "cat of events_pipe waits");
    assert_eq!(
        String::from_utf8_lossy(&pipe.stdout),
        log,
        "with the same lines"
    );

    // tail -n +1 -f: the whole history, then each new line.
    let mut tail = Command::new("tail")
        .args(["-n", "+1", "-f", "-s", "0.2", "frameworks/f/events"])
        .current_dir(&dev.mount)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let recv = || {
        rx.recv_timeout(Duration::from_secs(5))
            .expect("tail printed a line")
    };
    for want in log.lines() {
        assert_eq!(recv(), want, "tail prints the history first");
    }
    let o = dev.sh_ok("cat frameworks/f/offers/next").trim().to_string();
    dev.sh_ok(&format!(
        "echo 'name=b cpus=0.1 mem=16 -- true' > frameworks/f/offers/{o}/launch"
    ));
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.starts_with("task b TASK_FINISHED"))
    {
        seen.push(recv());
    }
    assert!(
        seen.contains(&"task b TASK_STAGING".to_string()),
        "{seen:?}"
    );
    tail.kill().unwrap();
    tail.wait().unwrap();
}
