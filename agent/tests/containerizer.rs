//! The containerizer with real cgroups: how tasks run, end, are killed and are reported.
//! Needs root; without it each test says so loudly and passes, unless CI=true.

mod common;

use std::time::{Duration, Instant};

use common::{pids_in, wait_for_lines, wait_gone, Agent};
use mesofs_agent::containerizer::{
    REASON_COMMAND_EXITED, REASON_CONTAINER_LIMITATION_MEMORY, REASON_TASK_KILLED,
};
use mesofs_agent::{Command, ExitKind, LaunchError, LaunchSpec, TaskUser};

const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

fn shell(id: &str, line: &str) -> LaunchSpec {
    LaunchSpec::new(id, Command::Shell(line.to_string()))
}

#[tokio::test]
async fn a_task_that_exits_zero_writes_stdout_in_its_sandbox_and_finishes() {
    let Some(mut agent) = Agent::with_cgroups("finished") else {
        return;
    };
    let sandbox = agent
        .containerizer
        .launch(shell("finish.1", "echo hello world; echo oops >&2"))
        .await
        .expect("launch");
    assert_eq!(sandbox, agent.work.path().join("sandboxes/finish.1"));
    let exit = agent.next_exit(EXIT_TIMEOUT).await;
    assert_eq!(exit.task_id, "finish.1");
    assert_eq!(exit.kind, ExitKind::Finished);
    assert_eq!(exit.reason, REASON_COMMAND_EXITED);
    assert_eq!((exit.exit_code, exit.signal), (Some(0), None));
    assert_eq!(
        std::fs::read_to_string(sandbox.join("stdout")).unwrap(),
        "hello world\n"
    );
    assert_eq!(
        std::fs::read_to_string(sandbox.join("stderr")).unwrap(),
        "oops\n"
    );
    assert!(agent.containerizer.running().is_empty());
    assert_eq!(agent.containerizer.sandbox("finish.1"), Some(sandbox));
}

#[tokio::test]
async fn a_nonzero_exit_is_a_failure_that_gives_the_status() {
    let Some(mut agent) = Agent::with_cgroups("nonzero") else {
        return;
    };
    agent
        .containerizer
        .launch(shell("nonzero-1", "exit 3"))
        .await
        .expect("launch");
    let exit = agent.next_exit(EXIT_TIMEOUT).await;
    assert_eq!(exit.kind, ExitKind::Failed);
    assert_eq!(exit.reason, REASON_COMMAND_EXITED);
    assert_eq!(exit.message, "exited with status 3");
    assert_eq!(exit.exit_code, Some(3));
}

#[tokio::test]
async fn a_task_killed_by_a_signal_fails_naming_the_signal() {
    let Some(mut agent) = Agent::with_cgroups("signaled") else {
        return;
    };
    agent
        .containerizer
        .launch(shell("signaled_1", "kill -KILL $$"))
        .await
        .expect("launch");
    let exit = agent.next_exit(EXIT_TIMEOUT).await;
    assert_eq!(exit.kind, ExitKind::Failed);
    assert_eq!(exit.message, "killed by signal 9 (SIGKILL)");
    assert_eq!((exit.exit_code, exit.signal), (None, Some(9)));
}

#[tokio::test]
async fn a_task_over_its_memory_limit_fails_with_the_memory_reason() {
    let Some(mut agent) = Agent::with_cgroups("oom") else {
        return;
    };
    // The shell itself holds the 200 MB of the substitution in memory.
    let mut spec = shell(
        "oom.1",
        r#"x=$(head -c 200000000 /dev/zero | tr '\0' a); echo survived"#,
    );
    spec.mem_mb = 32;
    agent.containerizer.launch(spec).await.expect("launch");
    let exit = agent.next_exit(EXIT_TIMEOUT).await;
    assert_eq!(exit.kind, ExitKind::Failed, "{exit:?}");
    assert_eq!(exit.reason, REASON_CONTAINER_LIMITATION_MEMORY, "{exit:?}");
    assert!(
        exit.message.contains("memory limit of 32 MB exceeded"),
        "{}",
        exit.message
    );
    assert_eq!(
        std::fs::read_to_string(agent.sandbox_file("oom.1", "stdout")).unwrap(),
        ""
    );
}

#[tokio::test]
async fn a_process_killed_for_memory_takes_the_whole_task_with_it() {
    let Some(mut agent) = Agent::with_cgroups("oom-child") else {
        return;
    };
    // dd's 100 MB buffer is what does not fit; the shell would go on without it.
    let mut spec = shell(
        "oom.2",
        "dd if=/dev/zero of=/dev/null bs=100M count=1; echo survived; sleep 600",
    );
    spec.mem_mb = 32;
    agent.containerizer.launch(spec).await.expect("launch");
    let exit = agent.next_exit(EXIT_TIMEOUT).await;
    assert_eq!(exit.kind, ExitKind::Failed, "{exit:?}");
    assert_eq!(exit.reason, REASON_CONTAINER_LIMITATION_MEMORY, "{exit:?}");
    assert_eq!(
        std::fs::read_to_string(agent.sandbox_file("oom.2", "stdout")).unwrap(),
        "",
        "nothing of the task ran on after the kill"
    );
}

#[tokio::test]
async fn a_task_runs_as_its_user_in_a_sandbox_it_owns_with_default_signal_dispositions() {
    let Some(mut agent) = Agent::with_cgroups("user") else {
        return;
    };
    // Ignored signals survive exec; the task must not inherit this one.
    // SAFETY: ignoring SIGQUIT in the test process, which never uses it.
    unsafe { libc::signal(libc::SIGQUIT, libc::SIG_IGN) };
    let mut spec = shell(
        "user.1",
        "id -u; id -g; echo mine > own; stat -c %u:%g . own stdout; grep SigIgn /proc/self/status",
    );
    spec.user = Some(TaskUser {
        uid: 65534,
        gid: 65533,
    });
    agent.containerizer.launch(spec).await.expect("launch");
    let exit = agent.next_exit(EXIT_TIMEOUT).await;
    let stdout = std::fs::read_to_string(agent.sandbox_file("user.1", "stdout")).unwrap();
    let stderr = std::fs::read_to_string(agent.sandbox_file("user.1", "stderr")).unwrap();
    assert_eq!(exit.kind, ExitKind::Finished, "{exit:?} {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[..5],
        [
            "65534",
            "65533",
            "65534:65533",
            "65534:65533",
            "65534:65533"
        ]
    );
    let ignored = lines[5].trim_start_matches("SigIgn:").trim();
    let ignored = u64::from_str_radix(ignored, 16).expect("a SigIgn mask");
    // Signals 1 to 31; glibc keeps 32 and 33 for itself and refuses to reset them.
    assert_eq!(ignored & 0x7fff_ffff, 0, "ignored signals: {ignored:#x}");
}

#[tokio::test]
async fn kill_ends_every_process_of_the_task_removes_its_cgroups_and_reports_killed() {
    let Some(mut agent) = Agent::with_cgroups("kill") else {
        return;
    };
    let spec = shell(
        "kill.1",
        "sleep 600 & echo $! > pids; echo $$ >> pids; sleep 600",
    );
    agent.containerizer.launch(spec).await.expect("launch");
    let pids = pids_in(
        &wait_for_lines(
            &agent.sandbox_file("kill.1", "pids"),
            2,
            Duration::from_secs(10),
        )
        .await,
    );
    let dirs = agent.containerizer.cgroup_dirs("kill.1");
    assert!(!dirs.is_empty());
    assert!(dirs.iter().all(|d| d.is_dir()));
    assert_eq!(agent.containerizer.running(), vec!["kill.1".to_string()]);

    agent.containerizer.kill("kill.1").await.expect("kill");
    let exit = agent.next_exit(EXIT_TIMEOUT).await;
    assert_eq!(exit.kind, ExitKind::Killed);
    assert_eq!(exit.reason, REASON_TASK_KILLED);
    assert_eq!(exit.signal, Some(15), "sh dies of the SIGTERM: {exit:?}");
    // Dead and reaped, not zombies.
    wait_gone(&pids, Duration::from_secs(5)).await;
    for d in &dirs {
        assert!(!d.exists(), "{} still exists", d.display());
    }
    assert!(agent.containerizer.running().is_empty());
    assert!(agent.containerizer.kill("kill.1").await.is_err());
}

#[tokio::test]
async fn a_task_ignoring_sigterm_is_sigkilled_once_its_grace_period_is_over() {
    let Some(mut agent) = Agent::with_cgroups("grace") else {
        return;
    };
    // Ignored signals stay ignored across exec: neither sh nor sleep heeds SIGTERM.
    let mut spec = shell("grace.1", "trap '' TERM; echo $$ > pids; sleep 600");
    spec.kill_grace = Duration::from_millis(1500);
    agent.containerizer.launch(spec).await.expect("launch");
    wait_for_lines(
        &agent.sandbox_file("grace.1", "pids"),
        1,
        Duration::from_secs(10),
    )
    .await;
    let asked = Instant::now();
    agent.containerizer.kill("grace.1").await.expect("kill");
    let exit = agent.next_exit(EXIT_TIMEOUT).await;
    let took = asked.elapsed();
    assert_eq!(exit.kind, ExitKind::Killed);
    assert_eq!(exit.signal, Some(9), "{exit:?}");
    assert!(took >= Duration::from_millis(1500), "ended after {took:?}");
    assert!(took < Duration::from_secs(10), "ended after {took:?}");
}

#[tokio::test]
async fn a_task_that_heeds_sigterm_ends_without_waiting_for_the_grace_period() {
    let Some(mut agent) = Agent::with_cgroups("heeds") else {
        return;
    };
    let mut spec = LaunchSpec::new("heeds.1", Command::Argv(vec!["sleep".into(), "600".into()]));
    spec.kill_grace = Duration::from_secs(60);
    agent.containerizer.launch(spec).await.expect("launch");
    let asked = Instant::now();
    agent.containerizer.kill("heeds.1").await.expect("kill");
    let exit = agent.next_exit(EXIT_TIMEOUT).await;
    assert_eq!(exit.kind, ExitKind::Killed);
    assert_eq!(exit.signal, Some(15));
    assert!(asked.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_task_sees_its_id_sandbox_and_environment_and_runs_in_its_sandbox() {
    let Some(mut agent) = Agent::with_cgroups("env") else {
        return;
    };
    let mut spec = shell(
        "env.1",
        r#"printf '%s\n' "$MESOFS_TASK_ID" "$MESOFS_SANDBOX" "$GREETING" "$HOME" "$(pwd)" "$PATH"; cat"#,
    );
    spec.env = vec![("GREETING".into(), "hello there".into())];
    let sandbox = agent.containerizer.launch(spec).await.expect("launch");
    let exit = agent.next_exit(EXIT_TIMEOUT).await;
    assert_eq!(
        exit.kind,
        ExitKind::Finished,
        "stdin is /dev/null: {exit:?}"
    );
    let out = std::fs::read_to_string(sandbox.join("stdout")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    let sb = sandbox.to_str().unwrap();
    assert_eq!(lines[..5], ["env.1", sb, "hello there", sb, sb]);
    assert!(lines[5].contains("/usr/bin"), "PATH is {}", lines[5]);
}

#[tokio::test]
async fn a_task_runs_in_its_own_cgroups_which_enforce_its_limits() {
    let Some(mut agent) = Agent::with_cgroups("own-cgroups") else {
        return;
    };
    let mut spec = shell(
        "cg.1",
        "cat /proc/self/cgroup > cgroup; echo ok > ready; sleep 600",
    );
    spec.cpus_milli = 250;
    spec.mem_mb = 48;
    spec.pids_max = 77;
    agent.containerizer.launch(spec).await.expect("launch");
    wait_for_lines(
        &agent.sandbox_file("cg.1", "ready"),
        1,
        Duration::from_secs(10),
    )
    .await;
    let own = std::fs::read_to_string(agent.sandbox_file("cg.1", "cgroup")).unwrap();
    let ours: Vec<&str> = own
        .lines()
        .filter(|l| l.ends_with("/cg.1") && l.contains("/mesofs/"))
        .collect();
    assert!(!ours.is_empty(), "not in a task cgroup: {own}");
    let dirs = agent.containerizer.cgroup_dirs("cg.1");
    let read = |file: &str| -> String {
        let d = dirs
            .iter()
            .find(|d| d.join(file).exists())
            .unwrap_or_else(|| panic!("no {file} in {dirs:?}"));
        std::fs::read_to_string(d.join(file))
            .unwrap()
            .trim()
            .to_string()
    };
    if dirs.len() == 1 {
        assert_eq!(read("memory.max"), (48u64 << 20).to_string());
        assert_eq!(read("cpu.max"), "25000 100000");
    } else {
        assert_eq!(read("memory.limit_in_bytes"), (48u64 << 20).to_string());
        assert_eq!(read("cpu.shares"), "256");
        assert_eq!(read("cpu.cfs_quota_us"), "25000");
        assert_eq!(read("cpu.cfs_period_us"), "100000");
    }
    assert_eq!(read("pids.max"), "77");
    agent.containerizer.kill("cg.1").await.expect("kill");
    agent.next_exit(EXIT_TIMEOUT).await;
}

#[tokio::test]
async fn the_pids_limit_makes_forks_fail() {
    let Some(mut agent) = Agent::with_cgroups("pids") else {
        return;
    };
    let mut spec = shell(
        "pids.1",
        "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 30 & done; wait",
    );
    spec.pids_max = 4;
    agent.containerizer.launch(spec).await.expect("launch");
    let exit = agent.next_exit(EXIT_TIMEOUT).await;
    assert_eq!(exit.kind, ExitKind::Failed, "{exit:?}");
    let err = std::fs::read_to_string(agent.sandbox_file("pids.1", "stderr")).unwrap();
    assert!(err.to_lowercase().contains("fork"), "stderr: {err}");
}

#[tokio::test]
async fn the_cpu_quota_throttles_a_busy_task() {
    let Some(mut agent) = Agent::with_cgroups("quota") else {
        return;
    };
    let mut spec = shell("quota.1", "while :; do :; done");
    spec.cpus_milli = 100;
    agent.containerizer.launch(spec).await.expect("launch");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let used = agent.containerizer.usage("quota.1").expect("running");
    agent.containerizer.kill("quota.1").await.expect("kill");
    agent.next_exit(EXIT_TIMEOUT).await;
    // A tenth of a core for a second, plus a period of slack; unthrottled it would be ~1 s.
    assert!(used.cpu_ns > 0, "{used:?}");
    assert!(used.cpu_ns < 300_000_000, "{used:?}");
}

#[tokio::test]
async fn a_busy_tasks_usage_shows_its_cpu_split_its_memory_peak_and_its_processes() {
    let Some(mut agent) = Agent::with_cgroups("usage") else {
        return;
    };
    let spec = shell("usage.1", "sleep 631 & while :; do :; done");
    agent.containerizer.launch(spec).await.expect("launch");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first = agent.containerizer.usage("usage.1").expect("running");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let then = agent.containerizer.usage("usage.1").expect("running");
    agent.containerizer.kill("usage.1").await.expect("kill");
    agent.next_exit(EXIT_TIMEOUT).await;

    assert!(then.cpu_ns > first.cpu_ns, "{first:?} then {then:?}");
    let (user, system) = (
        then.cpu_user_ns.expect("user time"),
        then.cpu_system_ns.expect("system time"),
    );
    // A loop of `:` runs in user mode.
    assert!(user > system, "{then:?}");
    assert!(then.pids >= Some(2), "the shell and its sleep: {then:?}");
    let peak = then.mem_peak_bytes.expect("a memory peak");
    assert!(peak >= then.mem_bytes && peak > 0, "{then:?}");
}

#[tokio::test]
async fn argv_commands_run_without_a_shell() {
    let Some(mut agent) = Agent::with_cgroups("argv") else {
        return;
    };
    let spec = LaunchSpec::new(
        "argv.1",
        Command::Argv(vec!["echo".into(), "$HOME is not expanded".into()]),
    );
    let sandbox = agent.containerizer.launch(spec).await.expect("launch");
    assert_eq!(agent.next_exit(EXIT_TIMEOUT).await.kind, ExitKind::Finished);
    assert_eq!(
        std::fs::read_to_string(sandbox.join("stdout")).unwrap(),
        "$HOME is not expanded\n"
    );
}

#[tokio::test]
async fn a_shell_command_of_plain_words_runs_as_its_program_with_what_sh_would_give_it() {
    let Some(mut agent) = Agent::with_cgroups("plain") else {
        return;
    };
    agent
        .containerizer
        .launch(shell("plain.1", "sleep 600"))
        .await
        .expect("launch");
    // The task's only process is the program itself: no shell forked it.
    let procs = agent
        .containerizer
        .cgroup_dirs("plain.1")
        .iter()
        .map(|d| std::fs::read_to_string(d.join("cgroup.procs")).unwrap())
        .next()
        .expect("a cgroup");
    let pids = pids_in(&procs);
    assert_eq!(pids.len(), 1, "{procs}");
    // The launch returns once exec has passed its point of no return (close-on-exec
    // closed the report pipe); the kernel sets the new program's arguments a moment
    // later, and until then cmdline reads empty.
    let cmdline_path = format!("/proc/{}/cmdline", pids[0]);
    let mut cmdline = Vec::new();
    for _ in 0..1000 {
        cmdline = std::fs::read(&cmdline_path).unwrap();
        if !cmdline.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(cmdline, [&b"sleep"[..], b"\0", b"600", b"\0"].concat());
    agent.containerizer.kill("plain.1").await.expect("kill");
    agent.next_exit(EXIT_TIMEOUT).await;

    // What sh would export to it, PWD included.
    let sandbox = agent
        .containerizer
        .launch(shell("plain.2", "env"))
        .await
        .expect("launch");
    assert_eq!(agent.next_exit(EXIT_TIMEOUT).await.kind, ExitKind::Finished);
    let env = std::fs::read_to_string(sandbox.join("stdout")).unwrap();
    let pwd = format!("PWD={}", sandbox.display());
    assert!(env.lines().any(|l| l == pwd), "{env}");

    // A program that is not there is the shell's to report, as ever: 127 and its message.
    agent
        .containerizer
        .launch(shell("plain.3", "no-such-program-anywhere --flag"))
        .await
        .expect("launch");
    let exit = agent.next_exit(EXIT_TIMEOUT).await;
    assert_eq!((exit.kind, exit.exit_code), (ExitKind::Failed, Some(127)));
    let err = std::fs::read_to_string(agent.sandbox_file("plain.3", "stderr")).unwrap();
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test]
async fn a_launch_that_cannot_exec_fails_and_leaves_nothing_behind() {
    let Some(agent) = Agent::with_cgroups("noexec") else {
        return;
    };
    let spec = LaunchSpec::new("noexec.1", Command::Argv(vec!["/no/such/program".into()]));
    let err = agent.containerizer.launch(spec).await.unwrap_err();
    assert!(matches!(err, LaunchError::Spawn { .. }), "{err}");
    assert!(agent.containerizer.running().is_empty());
    // The id is free again, and its cgroups were removed (else this create would clean up).
    let again = LaunchSpec::new("noexec.1", Command::Argv(vec!["true".into()]));
    agent.containerizer.launch(again).await.expect("relaunch");
}

#[tokio::test]
async fn a_health_check_is_refused_by_an_agent_without_supervisors_to_run_it() {
    let Some(agent) = Agent::with_cgroups("nohealth") else {
        return;
    };
    let mut spec = shell("nohealth.1", "sleep 600");
    spec.health = Some(mesofs_kernel::health::HealthCheck::new(
        mesofs_kernel::health::Probe::Cmd("true".into()),
    ));
    let err = agent.containerizer.launch(spec).await.unwrap_err();
    assert!(matches!(err, LaunchError::HealthNeedsSupervisor), "{err}");
    assert!(err.to_string().contains("without a health check"), "{err}");
    assert!(agent.containerizer.running().is_empty());
    assert!(!agent.work.path().join("sandboxes/nohealth.1").exists());
}

#[tokio::test]
async fn bad_ids_duplicates_and_empty_commands_are_refused() {
    let Some(mut agent) = Agent::with_cgroups("refused") else {
        return;
    };
    for bad in ["", "..", "a/b", "new\nline"] {
        let err = agent
            .containerizer
            .launch(shell(bad, "true"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, LaunchError::InvalidTaskId(_)),
            "{bad:?}: {err}"
        );
    }
    let err = agent
        .containerizer
        .launch(LaunchSpec::new("empty.1", Command::Argv(vec![])))
        .await
        .unwrap_err();
    assert!(matches!(err, LaunchError::EmptyCommand), "{err}");

    agent
        .containerizer
        .launch(shell("dup.1", "sleep 600"))
        .await
        .expect("launch");
    let err = agent
        .containerizer
        .launch(shell("dup.1", "true"))
        .await
        .unwrap_err();
    assert!(matches!(err, LaunchError::Duplicate(_)), "{err}");
    agent.containerizer.kill("dup.1").await.expect("kill");
    assert_eq!(agent.next_exit(EXIT_TIMEOUT).await.task_id, "dup.1");
}

#[tokio::test]
async fn shutdown_kills_every_task_and_returns_once_all_are_reported() {
    let Some(mut agent) = Agent::with_cgroups("shutdown") else {
        return;
    };
    for id in ["down.1", "down.2"] {
        agent
            .containerizer
            .launch(shell(id, "sleep 600"))
            .await
            .expect("launch");
    }
    tokio::time::timeout(EXIT_TIMEOUT, agent.containerizer.shutdown())
        .await
        .expect("shutdown in time");
    let mut ended = [
        agent.next_exit(Duration::ZERO).await,
        agent.next_exit(Duration::ZERO).await,
    ];
    ended.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    assert_eq!(ended[0].task_id, "down.1");
    assert_eq!(ended[1].task_id, "down.2");
    assert!(ended.iter().all(|e| e.kind == ExitKind::Killed));
    assert!(agent.containerizer.running().is_empty());
    let err = agent
        .containerizer
        .launch(shell("down.3", "true"))
        .await
        .unwrap_err();
    assert!(matches!(err, LaunchError::ShuttingDown), "{err}");
}

#[tokio::test]
async fn a_launch_to_exit_cycle_of_true_is_quick() {
    let Some(mut agent) = Agent::with_cgroups("cycle") else {
        return;
    };
    let n = 20;
    let start = Instant::now();
    for i in 0..n {
        let spec = LaunchSpec::new(format!("cycle.{i}"), Command::Argv(vec!["true".into()]));
        agent.containerizer.launch(spec).await.expect("launch");
        assert_eq!(agent.next_exit(EXIT_TIMEOUT).await.kind, ExitKind::Finished);
    }
    let each = start.elapsed() / n;
    eprintln!("launch-to-exit of `true` through the containerizer: {each:?} per task");
    assert!(each < Duration::from_secs(2), "{each:?}");
}
