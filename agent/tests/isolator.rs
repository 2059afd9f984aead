//! The cgroups isolator on its own: limits as the kernel shows them, joining, killing,
//! removal, and the bare launch cycle benchmarks use. Needs root; without it each test says
//! so loudly and passes, unless CI=true.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{cgroups_or_skip, is_root};
use mesofs_agent::isolator::{CgroupsIsolator, Isolation, Limits};
use mesofs_agent::{bare_launch_cycle, Isolator};

fn limits() -> Limits {
    Limits {
        cpus_milli: 1500,
        mem_bytes: 100 << 20,
        pids_max: 321,
    }
}

fn read(isolation: &dyn Isolation, file: &str) -> String {
    let dirs = isolation.cgroup_dirs();
    let dir = dirs
        .iter()
        .find(|d| d.join(file).exists())
        .unwrap_or_else(|| panic!("no {file} in {dirs:?}"));
    std::fs::read_to_string(dir.join(file))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn limits_read_back_from_the_cgroup_files_are_the_ones_asked_for() {
    let Some(isolator) = cgroups_or_skip("limits") else {
        return;
    };
    let isolation = isolator.create("limits.1", &limits()).expect("create");
    if isolator.is_v2() {
        assert_eq!(read(&*isolation, "memory.max"), (100u64 << 20).to_string());
        assert_eq!(read(&*isolation, "cpu.max"), "150000 100000");
        // runc's conversion of 1536 shares.
        assert_eq!(read(&*isolation, "cpu.weight"), "59");
    } else {
        assert_eq!(
            read(&*isolation, "memory.limit_in_bytes"),
            (100u64 << 20).to_string()
        );
        assert_eq!(read(&*isolation, "cpu.shares"), "1536");
        assert_eq!(read(&*isolation, "cpu.cfs_quota_us"), "150000");
        assert_eq!(read(&*isolation, "cpu.cfs_period_us"), "100000");
    }
    assert_eq!(read(&*isolation, "pids.max"), "321");
    assert_eq!(isolation.limits().expect("limits"), Some(limits()));
    assert!(!isolation.oom_killed());
    assert!(isolation.pids().is_empty());
    isolation.destroy().expect("destroy");
}

#[test]
fn task_groups_are_named_for_the_agent_instance_and_the_task() {
    let Some(isolator) = cgroups_or_skip("naming") else {
        return;
    };
    let isolation = isolator.create("named.1", &limits()).expect("create");
    let suffix = format!("mesofs/{}/named.1", isolator.instance());
    for dir in isolation.cgroup_dirs() {
        assert!(dir.ends_with(&suffix), "{}", dir.display());
    }
    isolation.destroy().expect("destroy");
}

#[test]
fn a_child_joins_before_exec_and_kill_all_leaves_no_process() {
    let Some(isolator) = cgroups_or_skip("kill_all") else {
        return;
    };
    let isolation = isolator.create("killall.1", &limits()).expect("create");
    let joiner = isolation.joiner().expect("joiner");
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args(["-c", "sleep 600 & sleep 600 & wait"])
        .stdout(Stdio::null());
    // SAFETY: join_self only writes to pre-opened descriptors.
    unsafe {
        cmd.pre_exec(move || joiner.join_self());
    }
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    while isolation.pids().len() < 3 {
        assert!(Instant::now() < deadline, "pids: {:?}", isolation.pids());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(isolation.pids().contains(&(child.id() as i32)));
    assert!(
        !isolation.pids().contains(&(std::process::id() as i32)),
        "the agent itself must stay out of task groups"
    );
    assert!(isolation.usage().mem_bytes > 0);

    let killed = isolation.kill_all().expect("kill_all");
    assert_eq!(killed.len(), 3, "{killed:?}");
    assert!(isolation.pids().is_empty());
    assert!(!child.wait().expect("wait").success());
    let dirs = isolation.cgroup_dirs();
    isolation.destroy().expect("destroy");
    assert!(dirs.iter().all(|d| !d.exists()));
    // Idempotent.
    isolation.destroy().expect("destroy again");
    assert!(isolation.kill_all().expect("kill_all again").is_empty());
}

#[test]
fn bad_ids_are_refused() {
    let Some(isolator) = cgroups_or_skip("bad_ids") else {
        return;
    };
    for bad in ["", ".", "..", "a/b"] {
        assert!(isolator.create(bad, &limits()).is_err(), "{bad:?}");
    }
}

#[test]
fn the_bare_launch_cycle_creates_runs_and_removes() {
    let Some(isolator) = cgroups_or_skip("bare_cycle") else {
        return;
    };
    let n = 50;
    let start = Instant::now();
    for i in 0..n {
        bare_launch_cycle(&isolator, &format!("bare.{i}")).expect("cycle");
    }
    let each = start.elapsed() / n;
    eprintln!(
        "bare cycle ({}): create cgroups + fork/exec `true` + wait + destroy: {each:?}",
        isolator.name()
    );
    assert!(each < Duration::from_secs(1), "{each:?}");
}

#[test]
fn detect_picks_cgroups_as_root_and_process_groups_otherwise() {
    let name = mesofs_agent::detect().name();
    if is_root() {
        assert!(name.starts_with("cgroups"), "{name}");
    } else {
        assert_eq!(name, "posix");
    }
}

#[test]
fn a_new_isolator_kills_and_removes_what_a_dead_agent_left() {
    if cgroups_or_skip("sweep").is_none() {
        return;
    }
    // An instance named for a pid that no longer exists, as a SIGKILLed agent leaves it.
    // Isolators made concurrently by other tests may sweep it before our process joins it;
    // then try again.
    let (mut orphan, dirs) = (0..10)
        .find_map(|_| {
            let mut gone = std::process::Command::new("true").spawn().expect("spawn");
            let dead_pid = gone.id();
            gone.wait().expect("wait");
            let dead = CgroupsIsolator::with_instance(&format!("{dead_pid}-0")).expect("isolator");
            let isolation = dead.create("left.1", &limits()).ok()?;
            let joiner = isolation.joiner().ok()?;
            let mut cmd = std::process::Command::new("sleep");
            cmd.arg("600");
            // SAFETY: join_self only writes to pre-opened descriptors.
            unsafe {
                cmd.pre_exec(move || joiner.join_self());
            }
            let orphan = cmd.spawn().ok()?;
            let dirs = isolation.cgroup_dirs();
            // The agent dies without cleaning up.
            std::mem::forget(isolation);
            std::mem::forget(dead);
            Some((orphan, dirs))
        })
        .expect("a process in a dead agent's cgroup");

    let _fresh = CgroupsIsolator::new().expect("isolator");
    let status = orphan.wait().expect("wait");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    for d in &dirs {
        assert!(!d.exists(), "{} still exists", d.display());
        assert!(
            !d.parent().unwrap().exists(),
            "the dead instance's group remains"
        );
    }
}
