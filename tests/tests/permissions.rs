//! A framework directory belongs to the user who made it; other users may read it but not
//! write it; tools such as ls -l, find and stat see consistent sizes and entries.

use mesofs_tests::{can_run, Dev, Mounted};

#[test]
fn another_user_can_read_but_not_write_a_framework() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::start();
    dev.sh_ok("mkdir frameworks/mine");
    let offer = dev
        .sh_ok("cat frameworks/mine/offers/next")
        .trim()
        .to_string();
    let owner = dev.sh_ok("stat -c %u frameworks/mine");
    assert_eq!(owner.trim(), "0");

    // As nobody: reading works, writing is refused with EACCES and launches nothing.
    let out = dev.sh(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups bash -c \
         'cat frameworks/mine/id && echo \"name=x -- true\" > frameworks/mine/offers/{offer}/launch'"
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody's write was refused");
    assert!(
        stderr.contains("Permission denied"),
        "EACCES, got: {stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "nobody could read id"
    );
    let out = dev.sh("setpriv --reuid=65534 --regid=65534 --clear-groups rmdir frameworks/mine");
    assert!(
        !out.status.success(),
        "nobody cannot tear down root's framework"
    );
    assert_eq!(dev.sh_ok("ls frameworks/mine/tasks").trim(), "");

    // nobody can neither kill root's task nor read its output.
    dev.sh_ok(&format!(
        "echo 'name=s cpus=0.1 mem=32 -- echo secret; sleep 600' > frameworks/mine/offers/{offer}/launch"
    ));
    dev.wait_for_file(
        "frameworks/mine/tasks/s/state",
        "TASK_RUNNING",
        std::time::Duration::from_secs(30),
    );
    for attempt in [
        "sh -c 'echo 1 > frameworks/mine/tasks/s/kill'",
        "cat frameworks/mine/tasks/s/stdout",
    ] {
        let out = dev.sh(&format!(
            "setpriv --reuid=65534 --regid=65534 --clear-groups {attempt}"
        ));
        assert!(!out.status.success(), "nobody: {attempt}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "EACCES for {attempt}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(dev.read("frameworks/mine/tasks/s/state"), "TASK_RUNNING");

    // nobody can make a framework of its own, owned by it.
    dev.sh_ok("setpriv --reuid=65534 --regid=65534 --clear-groups mkdir frameworks/theirs");
    assert_eq!(dev.sh_ok("stat -c %u frameworks/theirs").trim(), "65534");
}

#[test]
fn ls_find_and_stat_agree_with_what_cat_reads() {
    if !can_run() {
        return;
    }
    let dev = Dev::start();
    dev.sh_ok("mkdir frameworks/f && cat frameworks/f/offers/next >/dev/null");
    // Every regular file's size in ls -l equals the bytes cat reads (blocking and control files
    // are 0); `events` is a log file like any other.
    let listing = dev.sh_ok(
        "find . -type f ! -name next ! -name events_pipe ! -name wait ! -name launch ! -name decline \
         ! -name kill ! -name ctl ! -name stdout ! -name stderr -print0 | \
         while IFS= read -r -d '' f; do echo \"$f $(stat -c %s \"$f\") $(cat \"$f\" | wc -c)\"; done",
    );
    let mut checked = 0;
    for line in listing.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            parts[1], parts[2],
            "size of {} matches its content",
            parts[0]
        );
        checked += 1;
    }
    assert!(checked >= 10, "checked {checked} files:\n{listing}");
    let readme = dev.read("README");
    assert!(readme.contains("frameworks"));
    let agents = dev.sh_ok("ls agents");
    let agent = agents.split_whitespace().next().unwrap();
    assert_eq!(dev.read(&format!("agents/{agent}/state")), "active");
    assert_eq!(
        dev.read(&format!("agents/{agent}/resources")),
        "cpus:4;disk:1024;mem:4096;ports:[31000-31099]"
    );
}

#[test]
fn only_the_owner_may_touch_a_frameworks_files() {
    if !can_run() {
        return;
    }
    let dev = Dev::start();
    dev.sh_ok("mkdir frameworks/mine");
    let as_nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups";
    // GNU touch reports the EACCES of its open(O_WRONLY) when setting the times fails too.
    for touch in ["touch", "touch -d 2000-01-01"] {
        let out = dev.sh(&format!("{as_nobody} {touch} frameworks/mine/id"));
        assert!(!out.status.success(), "a stranger cannot {touch}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The owner (here root) may; the times are not kept.
    dev.sh_ok("touch frameworks/mine/id && touch -d 2000-01-01 frameworks/mine/id");
}
