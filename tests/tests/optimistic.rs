//! Optimistic offers through the mount: two frameworks that write `1` to `optimistic` are
//! offered the same free resources at once; when both launch on them, exactly one wins and the
//! other gets ESTALE, a reason naming the winner, and a fresh offer. A framework that takes
//! exclusive offers never shares its offer's resources with them.

use std::time::Duration;

use mesofs_tests::{can_run, Dev, Mounted, TEST_RESOURCES};

/// Waits for an offer to `framework` and returns its id.
fn next_offer(dev: &Dev, framework: &str) -> String {
    dev.sh_ok(&format!("cat frameworks/{framework}/offers/next"))
        .trim()
        .to_string()
}

/// The ids of the offers `framework` holds.
fn offers(dev: &Dev, framework: &str) -> Vec<String> {
    dev.sh_ok(&format!("ls frameworks/{framework}/offers"))
        .lines()
        .filter(|l| *l != "next" && *l != "why")
        .map(String::from)
        .collect()
}

#[test]
fn two_optimistic_frameworks_share_an_offer_and_the_second_launch_gets_estale_and_a_fresh_offer() {
    if !can_run() {
        return;
    }
    let dev = Dev::start();
    dev.sh_ok("mkdir frameworks/a frameworks/b");
    dev.sh_ok("echo 1 > frameworks/a/optimistic && echo 1 > frameworks/b/optimistic");
    assert_eq!(dev.read("frameworks/a/optimistic"), "1");
    let oa = next_offer(&dev, "a");
    let ob = next_offer(&dev, "b");
    // The same free resources, offered to both at once.
    for (f, o) in [("a", &oa), ("b", &ob)] {
        assert_eq!(
            dev.read(&format!("frameworks/{f}/offers/{o}/resources")),
            "cpus:4;disk:1024;mem:4096;ports:[31000-31099]",
            "{f}: all of {TEST_RESOURCES}"
        );
    }

    // A framework taking exclusive offers is offered none of what they hold.
    dev.sh_ok("mkdir frameworks/c");
    std::thread::sleep(Duration::from_millis(500));
    assert!(offers(&dev, "c").is_empty(), "{:?}", offers(&dev, "c"));

    // Both launch on the same 3 of the 4 cpus at once: exactly one wins. The files are opened
    // first, so that the loser's write reaches the master even once its offer is rescinded.
    let out = dev.sh(&format!(
        "exec 3>frameworks/a/offers/{oa}/launch 4>frameworks/b/offers/{ob}/launch
         (echo 'name=t cpus=3 mem=64 -- sleep 600' >&3 && echo a won) &
         (echo 'name=t cpus=3 mem=64 -- sleep 600' >&4 && echo b won) &
         wait"
    ));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let winners: Vec<&str> = said.lines().filter(|l| l.ends_with("won")).collect();
    assert_eq!(winners.len(), 1, "one winner: {said}\n{err}");
    let (winner, loser, lost_offer) = match winners[0] {
        "a won" => ("a", "b", &ob),
        _ => ("b", "a", &oa),
    };
    assert!(err.contains("Stale file handle"), "{err}");
    let why = dev.read(&format!("frameworks/{loser}/error"));
    assert!(
        why.contains(&format!("offer {lost_offer} is stale"))
            && why.contains(&format!("framework {winner} launched t")),
        "{why}"
    );
    assert!(dev
        .sh(&format!("test -d frameworks/{winner}/tasks/t"))
        .status
        .success());
    assert!(!dev
        .sh(&format!("test -e frameworks/{loser}/tasks/t"))
        .status
        .success());
    // The stale offer is gone from the loser's offers.
    assert!(!offers(&dev, loser).contains(lost_offer));

    // The loser is offered what is left, afresh.
    let fresh = next_offer(&dev, loser);
    assert_ne!(&fresh, lost_offer);
    assert_eq!(
        dev.read(&format!("frameworks/{loser}/offers/{fresh}/cpus")),
        "1"
    );

    // Once both decline what is left, the exclusive framework gets it; a revived optimistic
    // framework is then offered nothing of it.
    for f in ["a", "b"] {
        dev.sh_ok(&format!(
            "for o in $(ls frameworks/{f}/offers | grep -v -e next -e why); do echo 60s > frameworks/{f}/offers/$o/decline; done"
        ));
    }
    let oc = next_offer(&dev, "c");
    assert_eq!(dev.read(&format!("frameworks/c/offers/{oc}/cpus")), "1");
    dev.sh_ok("echo > frameworks/a/revive");
    std::thread::sleep(Duration::from_millis(500));
    assert!(offers(&dev, "a").is_empty(), "{:?}", offers(&dev, "a"));
    dev.sh_ok(&format!(
        "echo 'name=t cpus=1 mem=64 -- sleep 600' > frameworks/c/offers/{oc}/launch"
    ));
}
