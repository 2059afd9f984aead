//! Offers move between frameworks: a decline filters the agent for the decliner and offers
//! it to the next framework; an unused offer is rescinded when it expires; tearing a
//! framework down kills its tasks and frees their resources.

use std::time::Duration;

use mesofs_tests::{can_run, process_running, Dev, Mounted};

#[test]
fn a_declined_offer_goes_to_the_next_framework() {
    if !can_run() {
        return;
    }
    let dev = Dev::start();
    dev.sh_ok(
        "mkdir frameworks/a && cat frameworks/a/offers/next >/dev/null && mkdir frameworks/b",
    );
    // The only agent's resources are offered to a; b has nothing yet.
    assert_eq!(
        dev.sh_ok("ls frameworks/b/offers")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["next", "why"]
    );
    let offer = dev.sh_ok("cat frameworks/a/offers/next").trim().to_string();
    dev.sh_ok(&format!("echo 60s > frameworks/a/offers/{offer}/decline"));
    let moved = dev
        .sh_ok("timeout 5 cat frameworks/b/offers/next")
        .trim()
        .to_string();
    assert_ne!(moved, offer, "a new offer");
    assert_eq!(
        dev.sh_ok("ls frameworks/a/offers")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["next", "why"],
        "a declined it for 60 s"
    );
    // A bad refuse duration is refused and changes nothing.
    let out = dev.sh(&format!("echo soon > frameworks/b/offers/{moved}/decline"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Invalid argument"));
    assert!(dev
        .mount
        .join(format!("frameworks/b/offers/{moved}"))
        .exists());
}

#[test]
fn an_unused_offer_is_rescinded_when_it_expires_and_offered_again() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::start_with(&["--offer-timeout", "1"]);
    dev.sh_ok("mkdir frameworks/slow");
    let first = dev
        .sh_ok("cat frameworks/slow/offers/next")
        .trim()
        .to_string();
    let gone = dev.mount.join(format!("frameworks/slow/offers/{first}"));
    dev.wait_for("the offer to expire", Duration::from_secs(10), || {
        !gone.exists()
    });
    let events = dev.sh_ok("timeout 1 cat frameworks/slow/events || true");
    assert!(
        events.contains(&format!("rescind {first} expired")),
        "events show the rescind:\n{events}"
    );
    let again = dev
        .sh_ok("timeout 5 cat frameworks/slow/offers/next")
        .trim()
        .to_string();
    assert_ne!(again, first);
}

#[test]
fn rmdir_kills_a_frameworks_running_tasks_and_frees_their_resources() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::start();
    dev.sh_ok("mkdir frameworks/gone");
    let offer = dev
        .sh_ok("cat frameworks/gone/offers/next")
        .trim()
        .to_string();
    dev.sh_ok(&format!(
        "echo 'name=s cpus=3 -- sleep 604' > frameworks/gone/offers/{offer}/launch"
    ));
    let mount = dev.mount.clone();
    dev.wait_for("the task to run", Duration::from_secs(30), || {
        std::fs::read_to_string(mount.join("frameworks/gone/tasks/s/state"))
            .map(|s| s.trim() == "TASK_RUNNING")
            .unwrap_or(false)
    });
    dev.sh_ok("rmdir frameworks/gone");
    dev.wait_for("the task's process to end", Duration::from_secs(30), || {
        !process_running("sleep 604")
    });
    // Its cpus are free again: a new framework is offered all 4 (in one offer, or in two when
    // it registered before the task's end was committed and the freed cpus came after).
    dev.sh_ok("mkdir frameworks/next");
    let offers = mount.join("frameworks/next/offers");
    let offered_cpus = || -> f64 {
        std::fs::read_dir(&offers)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path().join("cpus")).ok())
                    .filter_map(|c| c.trim().parse::<f64>().ok())
                    .sum()
            })
            .unwrap_or(0.0)
    };
    dev.wait_for(
        "the freed cpus to be offered",
        Duration::from_secs(10),
        || offered_cpus() == 4.0,
    );
    assert_eq!(offered_cpus(), 4.0, "all cpus offered after the teardown");
}
