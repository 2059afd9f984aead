//! A master whose data directory was lost is told apart from the member it was, and rejoins
//! through `cluster/masters/ctl`: removed, then added back, catching up by snapshot because the
//! log it needs was purged meanwhile.

use std::time::Duration;

use mesofs_tests::masters::Masters;
use mesofs_tests::{can_run, Mounted};

#[test]
fn a_master_whose_data_directory_was_wiped_rejoins_through_ctl() {
    if !can_run() {
        return;
    }
    // Snapshots every 20 entries, so the log the wiped master would need is soon purged.
    let mut c = Masters::start(3, &["--snapshot-every", "20"]);
    let leader = c.leader().expect("a leader");
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    let addr = c.addrs[victim as usize - 1].clone();
    c.wait_for_file(
        &format!("cluster/masters/{victim}/role"),
        "follower",
        Duration::from_secs(30),
    );

    c.kill_master(victim);
    std::fs::remove_dir_all(c.data_dir(victim)).unwrap();
    c.sh_ok("for i in $(seq 1 40); do mkdir frameworks/f$i; done");
    c.restart_master(victim);
    // A new data directory answering at the member's address is not the member.
    c.wait_for_file(
        &format!("cluster/masters/{victim}/role"),
        "unreachable",
        Duration::from_secs(30),
    );
    // The role reads unreachable from the moment the master was killed: its refusal of the
    // leader's first request after the restart may come a little later.
    let refused = |c: &Masters| {
        c.log_of(&format!("master{victim}"))
            .contains("has a new data directory")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !refused(&c) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        refused(&c),
        "the wiped master refuses the leader's requests meant for the old one:\n{}",
        c.log_of(&format!("master{victim}"))
    );

    c.sh_ok(&format!("echo 'remove {victim}' > cluster/masters/ctl"));
    assert!(!c
        .sh_ok("ls cluster/masters")
        .lines()
        .any(|l| l == victim.to_string()));
    c.sh_ok(&format!("echo 'add {victim} {addr}' > cluster/masters/ctl"));
    c.wait_for_file(
        &format!("cluster/masters/{victim}/role"),
        "follower",
        Duration::from_secs(30),
    );
    assert!(
        c.log_of(&format!("master{victim}"))
            .contains("installed a snapshot from the leader"),
        "it caught up by snapshot:\n{}",
        c.log_of(&format!("master{victim}"))
    );
    // It holds the whole state: a mount reading from it sees every framework.
    let m = c.add_mount("from-rejoined", &[victim]);
    let listed = c.sh_in(&m, "ls frameworks | wc -l");
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "40");
    assert!(c.log_of("from-rejoined").contains(&format!(
        "reading the cluster state from this master master={addr}"
    )));

    // Refusals: a second add of a voter changes nothing; bad lines and unknown ids say why.
    c.sh_ok(&format!("echo 'add {victim} {addr}' > cluster/masters/ctl"));
    for (line, errno) in [
        ("add 9", "Invalid argument"),
        ("remove 9", "No such file or directory"),
        ("add 9 127.0.0.1:1", "Connection refused"),
    ] {
        let out = c.sh(&format!("echo '{line}' > cluster/masters/ctl"));
        assert!(!out.status.success(), "{line}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(errno), "{line}: {err}");
    }
}
