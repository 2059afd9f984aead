//! A framework stops offers with `suppressed` and takes them again with `0` or `revive`, which
//! also forgets its declines.

use std::time::Duration;

use mesofs_tests::{can_run, Dev, Mounted};

fn offers(dev: &Dev) -> String {
    dev.sh_ok("ls frameworks/f/offers")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn wait_for_why(dev: &mut Dev, want: &str) {
    let why = dev.mount.join("frameworks/f/offers/why");
    dev.wait_for(
        &format!("offers/why to say {want:?}"),
        Duration::from_secs(10),
        || std::fs::read_to_string(&why).is_ok_and(|t| t.contains(want)),
    );
}

#[test]
fn a_suppressed_framework_gets_no_offer_until_it_revives_which_also_forgets_its_declines() {
    if !can_run() {
        return;
    }
    // Declines last an hour unless revived.
    let mut dev = Dev::start_with(&["--refuse-default", "3600"]);
    dev.sh_ok("mkdir frameworks/f");
    dev.sh_ok("timeout 10 cat frameworks/f/offers/next");
    assert_eq!(dev.read("frameworks/f/suppressed"), "0");

    dev.sh_ok("echo 1 > frameworks/f/suppressed");
    assert_eq!(dev.read("frameworks/f/suppressed"), "1");
    assert_eq!(offers(&dev), "next why", "its offer was rescinded");
    // Said after the next allocation pass.
    wait_for_why(&mut dev, "suppressed: it asked for no offers");
    // Many allocation intervals later, still none.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(offers(&dev), "next why");
    assert!(dev.read("frameworks/f/events").contains("suppressed"));

    dev.sh_ok("echo 0 > frameworks/f/suppressed");
    let o = dev
        .sh_ok("timeout 10 cat frameworks/f/offers/next")
        .trim()
        .to_string();
    dev.sh_ok(&format!("echo > frameworks/f/offers/{o}/decline"));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(offers(&dev), "next why", "declined for an hour");
    wait_for_why(&mut dev, "declined agent");

    dev.sh_ok("echo > frameworks/f/revive");
    assert_eq!(dev.read("frameworks/f/suppressed"), "0");
    dev.sh_ok("timeout 10 cat frameworks/f/offers/next");

    // Malformed, or not the owner: refused, nothing changes.
    let out = dev.sh("echo 2 > frameworks/f/suppressed");
    assert!(!out.status.success());
    assert!(dev
        .read("frameworks/f/error")
        .contains("write 1 to stop offers"));
    let out = dev.sh("setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'echo 1 > frameworks/f/suppressed'");
    assert!(!out.status.success(), "another user cannot suppress it");
    assert_eq!(dev.read("frameworks/f/suppressed"), "0");
}
