//! Agents and masters failing apart: a silent agent is disconnected and, if it stays away, its
//! tasks are lost (and killed when it returns); a master restart leaves running tasks alone;
//! an agent restarted after a crash takes its tasks and unacknowledged updates back.

use std::time::Duration;

use mesofs_tests::{can_run, mesofs_bin, process_running, Cluster, Mounted};

const WAIT: Duration = Duration::from_secs(60);

/// Registers framework `f`, launches one task from its next offer and waits until it runs.
fn launch_running(c: &mut Cluster, task: &str) {
    c.sh_ok("mkdir -p frameworks/f");
    let offer = c.sh_ok("cat frameworks/f/offers/next").trim().to_string();
    c.sh_ok(&format!(
        "echo '{task}' > frameworks/f/offers/{offer}/launch"
    ));
    let name = task
        .split_whitespace()
        .find_map(|w| w.strip_prefix("name="))
        .expect("the spec names its task");
    c.wait_for_file(
        &format!("frameworks/f/tasks/{name}/state"),
        "TASK_RUNNING",
        WAIT,
    );
}

#[test]
fn a_silent_agent_is_disconnected_then_its_tasks_lost_and_killed_when_it_returns() {
    if !can_run() {
        return;
    }
    let mut c = Cluster::start(&["--agent-timeout", "2", "--agent-reregister-timeout", "2"]);
    let agent = c.agent_id();
    launch_running(&mut c, "name=s -- sleep 613");

    c.agent.pause();
    c.wait_for_file(&format!("agents/{agent}/state"), "disconnected", WAIT);
    // The task's own processes still run; only the agent is frozen.
    assert!(process_running("sleep 613"));
    assert_eq!(c.sh_ok("cat frameworks/f/tasks/s/wait").trim(), "TASK_LOST");
    let status: serde_json::Value =
        serde_json::from_str(&c.read("frameworks/f/tasks/s/status.json")).unwrap();
    assert_eq!(status["reason"], "REASON_AGENT_REMOVED", "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or("")
            .contains("did not register again"),
        "{status}"
    );
    assert_eq!(c.read(&format!("agents/{agent}/state")), "lost");

    c.agent.resume();
    c.wait_for_file(&format!("agents/{agent}/state"), "active", WAIT);
    c.wait_for("the lost task's processes to be killed", WAIT, || {
        !process_running("sleep 613")
    });
    assert_eq!(c.read("frameworks/f/tasks/s/state"), "TASK_LOST");
    // Its resources are free again: the whole agent is offered.
    let offer = c.sh_ok("cat frameworks/f/offers/next").trim().to_string();
    assert_eq!(c.read(&format!("frameworks/f/offers/{offer}/cpus")), "4");
}

#[test]
fn running_tasks_survive_a_sigkill_and_restart_of_the_master() {
    if !can_run() {
        return;
    }
    let mut c = Cluster::start(&[]);
    let agent = c.agent_id();
    launch_running(&mut c, "name=s -- sleep 614");

    c.master.kill9();
    // Reads are served from the mount's copy while no master runs.
    assert_eq!(c.read("frameworks/f/tasks/s/state"), "TASK_RUNNING");
    c.master.restart();

    // A write waits for the restarted leader. The task was not lost: the agent registers
    // again with it, and the kill reaches it.
    c.sh_ok("echo > frameworks/f/tasks/s/kill");
    assert_eq!(
        c.sh_ok("cat frameworks/f/tasks/s/wait").trim(),
        "TASK_KILLED"
    );
    assert!(!process_running("sleep 614"));
    assert_eq!(c.read(&format!("agents/{agent}/state")), "active");
}

#[test]
fn an_agent_that_does_not_return_after_a_master_restart_has_its_tasks_lost() {
    if !can_run() {
        return;
    }
    let mut c = Cluster::start(&["--agent-timeout", "2", "--agent-reregister-timeout", "2"]);
    let agent = c.agent_id();
    launch_running(&mut c, "name=s -- sleep 615");

    c.agent.kill9();
    c.master.kill9();
    c.master.restart();
    // The restarted master knows the agent as connected until it fails to register in time.
    assert_eq!(c.sh_ok("cat frameworks/f/tasks/s/wait").trim(), "TASK_LOST");
    assert_eq!(c.read(&format!("agents/{agent}/state")), "lost");

    // The agent, started again on its work directory, finds the task still running; the
    // master, for which it is lost, has it killed.
    c.agent.restart();
    c.wait_for_file(&format!("agents/{agent}/state"), "active", WAIT);
    c.wait_for("the orphaned task to be killed", WAIT, || {
        !process_running("sleep 615")
    });
    assert_eq!(c.read("frameworks/f/tasks/s/state"), "TASK_LOST");
}

#[test]
fn a_stopped_agent_kills_its_tasks_and_reports_them_before_it_exits() {
    if !can_run() {
        return;
    }
    let mut c = Cluster::start(&[]);
    launch_running(&mut c, "name=s -- sleep 616");

    let status = c.agent.stop();
    assert!(status.success(), "{}", mesofs_tests::describe(status));
    assert!(!process_running("sleep 616"));
    // Its last update was acknowledged before it exited: nothing is left to the timeouts.
    let ended = c.sh_ok("cat frameworks/f/tasks/s/wait");
    assert_eq!(
        ended.trim(),
        "TASK_KILLED",
        "{}\n{}",
        c.read("frameworks/f/tasks/s/status.json"),
        c.log_text()
    );
}

#[test]
fn an_update_the_master_never_acknowledged_survives_a_crash_of_the_agent() {
    if !can_run() {
        return;
    }
    let mut c = Cluster::start(&[]);
    launch_running(&mut c, "name=short -- sleep 2.52; echo back");

    // No master to acknowledge the end: the agent keeps the update, then dies.
    c.master.kill9();
    c.wait_for("the task to end", WAIT, || !process_running("sleep 2.52"));
    c.agent.kill9();
    c.master.restart();
    c.agent.restart();

    assert_eq!(
        c.sh_ok("cat frameworks/f/tasks/short/wait").trim(),
        "TASK_FINISHED"
    );
    assert_eq!(c.read("frameworks/f/tasks/short/stdout"), "back");
}

#[test]
fn a_second_agent_on_the_same_work_directory_refuses_to_start() {
    if !can_run() {
        return;
    }
    let c = Cluster::start(&[]);
    let out = std::process::Command::new(mesofs_bin())
        .args([
            "agent",
            "--master",
            "127.0.0.1:1",
            "--listen",
            "127.0.0.1:0",
            "--insecure",
        ])
        .arg("--work-dir")
        .arg(&c.agent_work_dir)
        .output()
        .expect("running mesofs agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("another agent runs on the work directory"),
        "{stderr}"
    );
    // The first one is untouched.
    let agent = c.agent_id();
    assert_eq!(c.read(&format!("agents/{agent}/state")), "active");
}

/// The parent pid of a process, if it exists.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn a_killed_spawner_leaves_its_tasks_running_and_reported_and_another_takes_its_place() {
    if !can_run() {
        return;
    }
    let mut c = Cluster::start(&[]);
    let flag = mesofs_tests::temp_dir();
    let go = flag.path().join("go");
    launch_running(
        &mut c,
        &format!(
            "name=s -- while [ ! -e {} ]; do sleep 0.05; done; exit 3",
            go.display()
        ),
    );
    let agent = c.agent.pid();
    let spawners: Vec<u32> = mesofs_tests::pids_of("supervise --spawner")
        .into_iter()
        .filter(|&p| parent_of(p) == Some(agent))
        .collect();
    assert_eq!(spawners.len(), 1, "the agent's spawner: {spawners:?}");
    let supervisor = mesofs_tests::pids_of("supervise --exit-file")
        .into_iter()
        .find(|&p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(go.to_str().unwrap()))
        })
        .expect("the task's supervisor, showing its plan");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(spawners[0] as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while std::path::Path::new(&format!("/proc/{}", spawners[0])).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the spawner is never reaped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        c.read("frameworks/f/tasks/s/state"),
        "TASK_RUNNING",
        "the task does not notice"
    );

    // Its supervisor, now the agent's to reap, still reports how the command ended.
    std::fs::write(&go, "").unwrap();
    assert_eq!(
        c.sh_ok("timeout 60 cat frameworks/f/tasks/s/wait").trim(),
        "TASK_FAILED"
    );
    let status = c.read("frameworks/f/tasks/s/status.json");
    assert!(status.contains("exited with status 3"), "{status}");
    while std::path::Path::new(&format!("/proc/{supervisor}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the supervisor is left a zombie"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The next launch starts another spawner.
    launch_running(&mut c, "name=t -- sleep 618");
    assert!(mesofs_tests::pids_of("supervise --spawner")
        .into_iter()
        .any(|p| parent_of(p) == Some(agent)));
}
