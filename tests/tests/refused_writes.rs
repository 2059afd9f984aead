//! Bad writes fail with a distinct errno the shell shows, say why in the tree, and launch
//! nothing.

use mesofs_tests::{can_run, Dev, Mounted};

/// Writes `text` to the offer's launch file; returns bash's stderr (the errno's text).
fn launch_err(dev: &Dev, offer: &str, text: &str) -> String {
    let out = dev.sh(&format!(
        "echo '{text}' > frameworks/f/offers/{offer}/launch"
    ));
    assert!(!out.status.success(), "the write of {text:?} was refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn malformed_oversized_and_stale_launches_fail_with_distinct_errnos_and_launch_nothing() {
    if !can_run() {
        return;
    }
    let dev = Dev::start();
    dev.sh_ok("mkdir frameworks/f");
    let offer = dev.sh_ok("cat frameworks/f/offers/next").trim().to_string();

    let err = launch_err(&dev, &offer, "name=bad cpus=lots -- true");
    assert!(
        err.contains("Invalid argument"),
        "malformed spec: EINVAL, got {err}"
    );
    let why = dev.read("frameworks/f/error");
    assert!(
        why.contains("cpus"),
        "the error file names the bad field: {why}"
    );

    // The dev agent offers cpus:4; one task asks for more than the whole offer.
    let err = launch_err(&dev, &offer, "name=big cpus=64 mem=32 -- true");
    assert!(
        err.contains("No space left on device"),
        "too large: ENOSPC, got {err}"
    );
    let why = dev.read("frameworks/f/error");
    assert!(why.contains(&offer), "the error names the offer: {why}");

    // The offer is still there after refused writes: nothing was taken from it.
    assert!(dev
        .mount
        .join(format!("frameworks/f/offers/{offer}"))
        .exists());

    // A launch uses part of the offer; the rest stays offered under the same id.
    dev.sh_ok(&format!(
        "echo 'name=ok -- true' > frameworks/f/offers/{offer}/launch"
    ));
    assert!(dev
        .mount
        .join(format!("frameworks/f/offers/{offer}"))
        .exists());
    // Hold the launch file open, decline the offer, then write: the offer is gone.
    let out = dev.sh(&format!(
        "exec 3> frameworks/f/offers/{offer}/launch && echo 60s > frameworks/f/offers/{offer}/decline \
         && echo 'name=late -- true' >&3"
    ));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("No such file or directory"),
        "stale offer: ENOENT, got {err}"
    );
    assert!(dev.read("frameworks/f/error").contains("gone"));

    let tasks = dev.sh_ok("ls frameworks/f/tasks");
    assert_eq!(
        tasks.trim(),
        "ok",
        "only the accepted launch created a task"
    );
    let events = dev.sh_ok("timeout 2 cat frameworks/f/events || true");
    assert!(
        events.contains("error "),
        "refusals appear in events:\n{events}"
    );
}

#[test]
fn a_launch_write_with_one_bad_line_launches_none_of_its_tasks() {
    if !can_run() {
        return;
    }
    let dev = Dev::start();
    dev.sh_ok("mkdir frameworks/f");
    let offer = dev.sh_ok("cat frameworks/f/offers/next").trim().to_string();
    // coreutils printf makes one write(2) of both lines (bash's builtin makes one per line).
    let out = dev.sh(&format!(
        "/usr/bin/printf 'name=a -- true\\nname=b bogus=1 -- true\\n' > frameworks/f/offers/{offer}/launch"
    ));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Invalid argument"));
    assert!(dev.read("frameworks/f/error").contains("bogus"));
    assert_eq!(dev.sh_ok("ls frameworks/f/tasks").trim(), "");
}
