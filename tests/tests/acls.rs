//! The masters' ACLs (`--acls`): what a mount's principal may do to whose frameworks, refused
//! with EACCES and the reason in the framework's `error` file and the master's log.

use mesofs_tests::{can_run, Cluster, Mounted};

const AS_NOBODY: &str = "setpriv --reuid=65534 --regid=65534 --clear-groups";

/// Starts a cluster whose masters load `acls` (JSON).
fn cluster_with(acls: &str) -> (Cluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acls.json");
    std::fs::write(&path, acls).unwrap();
    let c = Cluster::start(&["--acls", path.to_str().unwrap()]);
    (c, dir)
}

fn offer(c: &Cluster, fw: &str) -> String {
    c.sh_ok(&format!("cat frameworks/{fw}/offers/next"))
        .trim()
        .to_string()
}

#[test]
fn without_a_grant_a_mount_runs_tasks_as_its_users_but_not_as_root() {
    if !can_run() {
        return;
    }
    // The defaults: anything but running tasks as root.
    let (c, _acls) = cluster_with("{}");

    c.sh_ok("mkdir frameworks/mine");
    let o = offer(&c, "mine");
    let out = c.sh(&format!(
        "echo 'name=x -- true' > frameworks/mine/offers/{o}/launch"
    ));
    assert!(!out.status.success(), "root's launch is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "EACCES: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let error = c.read("frameworks/mine/error");
    assert!(
        error.contains("mount:mount may not run tasks as user \"root\"")
            && error.contains("run_tasks ACL"),
        "the reason is in error: {error}"
    );
    assert!(c.master.log_text().contains("may not run tasks as user"));
    assert_eq!(c.sh_ok("ls frameworks/mine/tasks").trim(), "");
    assert_eq!(c.read("frameworks/mine/principal"), "mount:mount");
    c.sh_ok("rmdir frameworks/mine");

    // nobody's framework runs its tasks as nobody through the same mount.
    c.sh_ok(&format!("{AS_NOBODY} mkdir frameworks/theirs"));
    let o = offer(&c, "theirs");
    c.sh_ok(&format!(
        "{AS_NOBODY} sh -c \"echo 'name=who -- id -un' > frameworks/theirs/offers/{o}/launch\""
    ));
    assert_eq!(
        c.sh_ok("cat frameworks/theirs/tasks/who/wait").trim(),
        "TASK_FINISHED"
    );
    assert_eq!(
        c.sh_ok(&format!(
            "{AS_NOBODY} cat frameworks/theirs/tasks/who/stdout"
        ))
        .trim(),
        "nobody"
    );
}

#[test]
fn acls_decide_who_kills_tears_down_and_reads_sandboxes_of_whose_frameworks() {
    if !can_run() {
        return;
    }
    let (mut c, _acls) = cluster_with(
        r#"{
          "register_frameworks": [{"principals": {"type": "ANY"}, "roles": {"type": "ANY"}}],
          "run_tasks": [{"principals": {"type": "ANY"}, "users": {"values": ["root", "nobody"]}}],
          "kill_tasks": [{"principals": {"values": ["mount:mount"]}, "users": {"values": ["root"]}}],
          "teardown_frameworks": [{"principals": {"values": ["mount:mount"]}, "users": {"type": "NONE"}}],
          "access_sandboxes": [{"principals": {"values": ["mount:mount"]}, "users": {"values": ["root"]}}],
          "permissive": false
        }"#,
    );
    // Root's framework: its tasks run, are killed and read.
    c.sh_ok("mkdir frameworks/mine");
    let o = offer(&c, "mine");
    c.sh_ok(&format!(
        "echo 'name=s cpus=0.1 mem=32 -- echo up; sleep 600' > frameworks/mine/offers/{o}/launch"
    ));
    c.wait_for_file(
        "frameworks/mine/tasks/s/state",
        "TASK_RUNNING",
        std::time::Duration::from_secs(30),
    );
    c.wait_for_file(
        "frameworks/mine/tasks/s/stdout",
        "up",
        std::time::Duration::from_secs(30),
    );
    c.sh_ok("echo 1 > frameworks/mine/tasks/s/kill");
    assert_eq!(
        c.sh_ok("cat frameworks/mine/tasks/s/wait").trim(),
        "TASK_KILLED"
    );
    // No principal may tear down anyone's framework.
    let out = c.sh("rmdir frameworks/mine");
    assert!(!out.status.success(), "the teardown is refused");
    let error = c.read("frameworks/mine/error");
    assert!(
        error.contains("may not tear down frameworks of user \"root\"")
            && error.contains("teardown_frameworks[0]"),
        "{error}"
    );

    // nobody's framework: its task runs as nobody, but this mount may neither kill it nor read
    // its sandbox, even for nobody.
    c.sh_ok(&format!("{AS_NOBODY} mkdir frameworks/theirs"));
    let o = offer(&c, "theirs");
    c.sh_ok(&format!(
        "{AS_NOBODY} sh -c \"echo 'name=t cpus=0.1 mem=32 -- echo hidden; sleep 600' > frameworks/theirs/offers/{o}/launch\""
    ));
    c.wait_for_file(
        "frameworks/theirs/tasks/t/state",
        "TASK_RUNNING",
        std::time::Duration::from_secs(30),
    );
    let out = c.sh(&format!(
        "{AS_NOBODY} sh -c 'echo 1 > frameworks/theirs/tasks/t/kill'"
    ));
    assert!(!out.status.success(), "the kill is refused");
    let error = c.read("frameworks/theirs/error");
    assert!(
        error.contains("mount:mount may not kill tasks of user \"nobody\"'s frameworks")
            && error.contains("not permissive"),
        "{error}"
    );
    assert_eq!(c.read("frameworks/theirs/tasks/t/state"), "TASK_RUNNING");
    let out = c.sh(&format!("{AS_NOBODY} cat frameworks/theirs/tasks/t/stdout"));
    assert!(!out.status.success(), "the sandbox read is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        c.agent
            .log_text()
            .contains("may not read the sandboxes of user \"nobody\"'s tasks"),
        "the agent logs why"
    );
}
