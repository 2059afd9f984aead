//! A leader cut off from the majority (its host's link down) stops serving; the majority
//! elects another and goes on; after healing the old leader follows, and nothing the minority
//! side attempted exists.

use std::time::{Duration, Instant};

use mesofs_tests::masters::Masters;
use mesofs_tests::{can_run, netns, Mounted};

#[test]
fn a_leader_cut_off_from_the_majority_stops_serving_and_follows_after_healing() {
    if !can_run() || !netns::can_run() {
        return;
    }
    let mut c = Masters::start_on_hosts(3, &[]);
    c.sh_ok("mkdir frameworks/before");
    let old = c.leader().expect("a leader");
    // A mount on the old leader's host: once cut off, that is the only master it reaches.
    let minority = c.add_mount_on("minority", Some(old), &[old], &["--leader-wait", "3"]);
    let listed = c.sh_in(&minority, "ls frameworks");
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "before");

    c.net.as_ref().unwrap().cut(old as usize);
    let cut = Instant::now();
    let new = c.wait_for_leader(Some(old), Duration::from_secs(30));
    println!("m{new} leads {:?} after the cut", cut.elapsed());
    c.sh_ok("mkdir frameworks/majority");

    // The old leader accepts no write: the minority's write fails, and says why.
    let started = Instant::now();
    let out = c.sh_in(&minority, "mkdir frameworks/minority");
    println!("the minority's write failed after {:?}", started.elapsed());
    assert!(!out.status.success(), "a write on the minority side fails");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Input/output error"), "{err}");
    let leader_there = c.sh_in(&minority, "cat cluster/leader");
    assert_eq!(
        String::from_utf8_lossy(&leader_there.stdout).trim(),
        "",
        "the minority mount shows no leader"
    );

    c.net.as_ref().unwrap().heal(old as usize);
    c.wait_for_file(
        &format!("cluster/masters/{old}/role"),
        "follower",
        Duration::from_secs(30),
    );
    // The old leader's host catches up: its mount sees the majority's write.
    let seen = minority.join("frameworks/majority");
    c.wait_for(
        "the minority side to catch up",
        Duration::from_secs(30),
        || seen.exists(),
    );
    for m in [c.mount.clone(), minority] {
        let listed = c.sh_in(&m, "ls frameworks");
        assert_eq!(
            String::from_utf8_lossy(&listed.stdout)
                .lines()
                .collect::<Vec<_>>(),
            ["before", "majority"],
            "nothing the minority attempted exists"
        );
    }
}
