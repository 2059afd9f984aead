//! Each task in a pid namespace of its own, under an init of ours, and a mount namespace of its
//! own with a private `/tmp`: it sees and signals only its own processes, and what it puts in
//! `/tmp` is nobody else's to see. Agent flags turn each off.

use mesofs_tests::{can_run, pids_of, process_running, Dev, Mounted};

/// Runs `command` as task `name` to its end; returns its stdout.
fn output_of(dev: &Dev, name: &str, command: &str) -> String {
    dev.launch("f", &format!("name={name} cpus=0.1 mem=32 -- {command}"));
    let (state, status) = dev.end_of("f", name);
    assert_eq!(state, "TASK_FINISHED", "{status}");
    dev.read(&format!("frameworks/f/tasks/{name}/stdout"))
}

#[test]
fn a_task_sees_only_its_own_processes_under_our_init_and_cannot_signal_another_tasks() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::with_framework(&[]);
    dev.launch("f", "name=neighbour cpus=0.1 mem=32 -- sleep 671");
    dev.wait_running("f", "neighbour");
    let neighbour = pids_of("sleep 671")[0];

    let ps = output_of(&dev, "ps", "ps ax -o pid=,args=");
    let procs: Vec<(u32, &str)> = ps
        .lines()
        .map(|l| {
            let (pid, args) = l.trim().split_once(' ').expect("pid and args");
            (pid.parse().expect("a pid"), args.trim())
        })
        .collect();
    assert_eq!(procs.len(), 2, "the init and ps alone: {ps}");
    assert_eq!(procs[0].0, 1, "{ps}");
    assert!(procs[0].1.contains("supervise"), "pid 1 is our init: {ps}");
    assert!(procs[1].1.ends_with("ps ax -o pid=,args="), "{ps}");

    // Another task's process: not there to signal.
    let kill = output_of(
        &dev,
        "killer",
        &format!("kill -TERM {neighbour} 2>&1; echo status $?"),
    );
    assert!(kill.ends_with("status 1"), "{kill}");
    assert!(process_running("sleep 671"), "the neighbour lives");
    assert_eq!(
        dev.read("frameworks/f/tasks/neighbour/state"),
        "TASK_RUNNING"
    );
    dev.sh_ok("echo > frameworks/f/tasks/neighbour/kill");
    assert_eq!(dev.end_of("f", "neighbour").0, "TASK_KILLED");
}

#[test]
fn the_init_reaps_what_the_task_orphans_and_passes_on_what_the_task_sends_it() {
    if !can_run() {
        return;
    }
    let dev = Dev::with_framework(&[]);
    let out = output_of(
        &dev,
        "orphans",
        "trap \"echo passed on; exit 0\" TERM; (sleep 0.2 &); sleep 1; \
         echo zombies $(ps ax -o stat= | grep -c ^Z); kill -TERM 1; sleep 60 & wait",
    );
    assert_eq!(out, "zombies 0\npassed on", "{out}");
}

#[test]
fn what_a_task_writes_to_tmp_is_invisible_to_another_task_and_to_the_machine() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::with_framework(&[]);
    let name = format!("mesofs-private-{}", std::process::id());
    dev.launch(
        "f",
        &format!("name=writer cpus=0.1 mem=32 -- echo secret > /tmp/{name} && exec sleep 673"),
    );
    dev.wait_running("f", "writer");
    let id = dev.status_json("f", "writer")["id"]
        .as_str()
        .unwrap()
        .to_string();
    // It is the sandbox's tmp: counted in its disk, gone with it.
    let in_sandbox = dev
        .data
        .join("agent/sandboxes")
        .join(&id)
        .join("tmp")
        .join(&name);
    let wait = std::time::Duration::from_secs(30);
    dev.wait_for("the file in the sandbox's tmp", wait, || {
        in_sandbox.exists()
    });
    assert_eq!(std::fs::read_to_string(&in_sandbox).unwrap(), "secret\n");
    assert!(!std::path::Path::new("/tmp").join(&name).exists());
    let seen = output_of(
        &dev,
        "reader",
        &format!("cat /tmp/{name} 2>&1; ls -A /tmp | wc -l"),
    );
    assert!(seen.contains("No such file"), "{seen}");
    assert!(seen.ends_with('0'), "its own /tmp starts empty: {seen}");
    dev.sh_ok("echo > frameworks/f/tasks/writer/kill");
    assert_eq!(dev.end_of("f", "writer").0, "TASK_KILLED");
}

#[test]
fn agent_flags_run_tasks_in_the_agents_pid_and_mount_namespaces() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::with_framework(&["--no-pid-namespace", "--no-mount-namespace"]);
    dev.launch("f", "name=neighbour cpus=0.1 mem=32 -- sleep 677");
    dev.wait_running("f", "neighbour");
    let ps = output_of(&dev, "ps", "ps ax -o args=");
    assert!(ps.lines().any(|l| l.ends_with("sleep 677")), "{ps}");
    let name = format!("mesofs-shared-{}", std::process::id());
    output_of(&dev, "writer", &format!("echo shared > /tmp/{name}"));
    let host = std::path::Path::new("/tmp").join(&name);
    assert_eq!(std::fs::read_to_string(&host).unwrap(), "shared\n");
    std::fs::remove_file(host).unwrap();
    dev.sh_ok("echo > frameworks/f/tasks/neighbour/kill");
    assert_eq!(dev.end_of("f", "neighbour").0, "TASK_KILLED");
}
