//! A mount whose state stream comes from a follower still reads its own writes: every write
//! returns only once the follower's stream has brought the mount the write's log index.

use std::time::Duration;

use mesofs_tests::masters::Masters;
use mesofs_tests::{can_run, Mounted};

#[test]
fn a_mount_reading_from_a_follower_sees_every_write_at_once_500_times() {
    if !can_run() {
        return;
    }
    let mut c = Masters::start(3, &[]);
    let leader = c.leader().expect("a leader");
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let order: Vec<u64> = std::iter::once(follower)
        .chain((1..=3).filter(|id| *id != follower))
        .collect();
    let m = c.add_mount("from-follower", &order);
    let addr = c.addrs[follower as usize - 1].clone();
    // The mount shows a leader (from the leader stream) before it logs the first event of
    // the state stream: waited for, not looked at once.
    let reading = format!("reading the cluster state from this master master={addr}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !c.log_of("from-follower").contains(&reading) {
        assert!(
            std::time::Instant::now() < deadline,
            "the mount reads from the follower:\n{}",
            c.log_of("from-follower")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let script = r#"set -u
fail() { echo "iteration $i: $1" >&2; exit 1; }
for i in $(seq 1 500); do
  mkdir frameworks/f$i || fail "mkdir failed"
  [ -d frameworks/f$i ] || fail "mkdir not visible"
  o=$(timeout 30 cat frameworks/f$i/offers/next) || fail "no offer"
  echo "name=t cpus=0.01 mem=4 -- sleep 100" > frameworks/f$i/offers/$o/launch || fail "launch failed"
  [ -d frameworks/f$i/tasks/t ] || fail "launch not visible"
  echo > frameworks/f$i/tasks/t/kill || fail "kill failed"
  grep -q '"kill_requested": *true' frameworks/f$i/tasks/t/status.json || fail "kill not visible"
  rmdir frameworks/f$i || fail "rmdir failed"
  [ ! -e frameworks/f$i ] || fail "rmdir not visible"
done
echo done"#;
    let out = c.sh_in(&m, script);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.log_text()
    );
    // The follower stayed the mount's source throughout.
    assert_eq!(
        c.log_of("from-follower")
            .matches("reading the cluster state from this master")
            .count(),
        1,
        "{}",
        c.log_of("from-follower")
    );
    c.wait_for("every task to end", Duration::from_secs(60), || {
        !mesofs_tests::process_running("sleep 100")
    });
}
