//! A task's output is its framework owner's: others cannot read it through the mount, and the
//! agent serves only regular files inside the sandbox, so a task cannot make `stdout` show a
//! file it could not read itself.

use std::os::unix::fs::FileTypeExt;
use std::time::Duration;

use mesofs_tests::{can_run, Dev, Mounted};

const AS_NOBODY: &str = "setpriv --reuid=65534 --regid=65534 --clear-groups";
const AS_OTHER: &str = "setpriv --reuid=65533 --regid=65533 --clear-groups";

#[test]
fn a_task_output_is_readable_by_its_owner_and_root_only() {
    if !can_run() {
        return;
    }
    let dev = Dev::start();
    dev.sh_ok(&format!("{AS_NOBODY} mkdir frameworks/theirs"));
    let offer = dev
        .sh_ok("cat frameworks/theirs/offers/next")
        .trim()
        .to_string();
    dev.sh_ok(&format!(
        "{AS_NOBODY} sh -c \"echo 'name=t -- echo private' > frameworks/theirs/offers/{offer}/launch\""
    ));
    assert_eq!(
        dev.sh_ok("cat frameworks/theirs/tasks/t/wait").trim(),
        "TASK_FINISHED"
    );
    assert_eq!(
        dev.sh_ok("stat -c %a frameworks/theirs/tasks/t/stdout")
            .trim(),
        "400"
    );
    assert_eq!(
        dev.sh_ok(&format!("{AS_NOBODY} cat frameworks/theirs/tasks/t/stdout")),
        "private\n"
    );
    assert_eq!(dev.read("frameworks/theirs/tasks/t/stdout"), "private");
    let out = dev.sh(&format!("{AS_OTHER} cat frameworks/theirs/tasks/t/stdout"));
    assert!(!out.status.success(), "another user cannot read it");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The rest of the framework stays readable to others.
    dev.sh_ok(&format!("{AS_OTHER} cat frameworks/theirs/tasks/t/state"));
}

#[test]
fn a_task_that_links_stdout_to_a_secret_gets_an_error_never_the_file() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::start();
    let secret = dev.mount.parent().unwrap().join("secret");
    std::fs::write(&secret, "the secret\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    dev.sh_ok("mkdir frameworks/f");
    let offer = dev.sh_ok("cat frameworks/f/offers/next").trim().to_string();
    // Runs as root (the framework's owner), so it can make any link it likes in its sandbox.
    dev.sh_ok(&format!(
        "/usr/bin/printf 'name=link -- ln -sf {} stdout; rm -f stderr; mkfifo stderr; sleep 600\\n' > frameworks/f/offers/{offer}/launch",
        secret.display()
    ));
    let task_id = format!("{}.link", dev.read("frameworks/f/id"));
    let sandbox = dev.data.join("agent/sandboxes").join(task_id);
    dev.wait_for(
        "the task to replace its output",
        Duration::from_secs(30),
        || {
            let link = std::fs::symlink_metadata(sandbox.join("stdout"));
            let fifo = std::fs::symlink_metadata(sandbox.join("stderr"));
            link.is_ok_and(|m| m.file_type().is_symlink())
                && fifo.is_ok_and(|m| m.file_type().is_fifo())
        },
    );
    for file in ["stdout", "stderr"] {
        let out = dev.sh(&format!("timeout 5 cat frameworks/f/tasks/link/{file}"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("the secret"), "{file} shows the secret");
        assert!(!out.status.success(), "reading {file} fails");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dev.sh_ok("echo > frameworks/f/tasks/link/kill");
}
