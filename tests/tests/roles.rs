//! Roles through the mount: weighted fair shares, guarantees met first, limits never passed.
//! Each framework is a greedy shell loop: it launches one small task per offer and declines
//! the rest at once, so the allocator decides who gets what.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use mesofs_tests::{can_run, Dev, Mounted};

/// A framework that launches `cpus=0.5 mem=32` tasks running `cmd`, one per offer, until killed.
struct Greedy(Child);

impl Greedy {
    fn start(dev: &Dev, framework: &str, cmd: &str) -> Greedy {
        let script = format!(
            "i=0; while true; do \
               o=$(cat frameworks/{framework}/offers/next) || exit 0; \
               {{ echo \"name=t$i cpus=0.5 mem=32 -- {cmd}\" > frameworks/{framework}/offers/$o/launch; }} 2>/dev/null && i=$((i+1)); \
               {{ echo 0s > frameworks/{framework}/offers/$o/decline; }} 2>/dev/null; \
             done"
        );
        let child = Command::new("bash")
            .args(["-c", &script])
            .current_dir(&dev.mount)
            .process_group(0)
            .spawn()
            .expect("starting a greedy framework");
        Greedy(child)
    }
}

impl Drop for Greedy {
    fn drop(&mut self) {
        // The whole group: a `cat` blocked on offers/next too.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

/// The cpus a role's `allocated` (or another resources file) shows.
fn cpus(dev: &Dev, path: &str) -> f64 {
    let text = dev.read(path);
    text.split(';')
        .find_map(|p| p.strip_prefix("cpus:"))
        .map_or(0.0, |c| c.parse().unwrap())
}

fn running(dev: &Dev, framework: &str) -> usize {
    dev.sh_ok(&format!(
        "cat frameworks/{framework}/tasks/*/state 2>/dev/null | grep -c TASK_RUNNING || true"
    ))
    .trim()
    .parse()
    .unwrap_or(0)
}

/// Waits until the frameworks run `n` tasks between them (the cluster's 4 cpus are full).
fn wait_for_tasks(dev: &mut Dev, frameworks: &[&str], n: usize) {
    let deadline = Duration::from_secs(90);
    let fws: Vec<String> = frameworks.iter().map(|s| s.to_string()).collect();
    let started = Instant::now();
    loop {
        let total: usize = fws.iter().map(|f| running(dev, f)).sum();
        if total >= n {
            return;
        }
        assert!(
            started.elapsed() < deadline,
            "only {total} of {n} tasks running after {deadline:?}\n{}",
            dev.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_roles_weighted_1_and_3_share_a_full_cluster_1_to_3() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::start();
    dev.sh_ok("mkdir frameworks/light frameworks/heavy");
    dev.sh_ok("echo light > frameworks/light/role && echo heavy > frameworks/heavy/role");
    dev.sh_ok("echo 3 > roles/heavy/weight");
    // An offer says which role it is for.
    let o = dev
        .sh_ok("cat frameworks/heavy/offers/next")
        .trim()
        .to_string();
    assert_eq!(
        dev.read(&format!("frameworks/heavy/offers/{o}/role")),
        "heavy"
    );
    assert_eq!(dev.read("roles/heavy/weight"), "3");
    assert_eq!(dev.read("roles/light/weight"), "1");
    assert_eq!(dev.read("frameworks/heavy/role"), "heavy");
    assert_eq!(dev.read("roles/heavy/frameworks"), "heavy");
    let _a = Greedy::start(&dev, "light", "sleep 600");
    let _b = Greedy::start(&dev, "heavy", "sleep 600");
    // 4 cpus in tasks of 0.5: 8 tasks fill the cluster.
    wait_for_tasks(&mut dev, &["light", "heavy"], 8);
    let (light, heavy) = (
        cpus(&dev, "roles/light/allocated"),
        cpus(&dev, "roles/heavy/allocated"),
    );
    assert!(
        (heavy / light - 3.0).abs() <= 0.3,
        "light {light} cpus, heavy {heavy} cpus: 1:3 within a tenth"
    );
}

#[test]
fn a_guarantee_is_met_before_a_heavier_role_gets_more_and_a_limit_is_never_passed() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::start();
    dev.sh_ok("mkdir frameworks/owed frameworks/big frameworks/capped");
    dev.sh_ok(
        "echo owed > frameworks/owed/role && echo big > frameworks/big/role \
         && echo capped > frameworks/capped/role",
    );
    // Without its guarantee, "owed" (weight 1) would get a tenth of what "big" (weight 10)
    // gets: well under 2 cpus.
    dev.sh_ok("echo 10 > roles/big/weight && echo 'cpus:2' > roles/owed/guarantee");
    dev.sh_ok("echo 'cpus:1;mem:1000' > roles/capped/limit");
    assert_eq!(dev.read("roles/owed/guarantee"), "cpus:2");
    // A guarantee above the limit is refused, and changes nothing.
    let out = dev.sh("echo 'cpus:3' > roles/capped/guarantee");
    assert!(!out.status.success(), "a guarantee above the limit");
    assert_eq!(dev.read("roles/capped/guarantee"), "");
    // Tasks that end at once: resources keep coming back, and the limit must hold throughout.
    let _c = Greedy::start(&dev, "capped", "sleep 0.3");
    let _o = Greedy::start(&dev, "owed", "sleep 600");
    let _b = Greedy::start(&dev, "big", "sleep 600");
    let started = Instant::now();
    let mut max_capped: f64 = 0.0;
    while started.elapsed() < Duration::from_secs(90) {
        let held = cpus(&dev, "roles/capped/allocated") + cpus(&dev, "roles/capped/offered");
        max_capped = max_capped.max(held);
        if running(&dev, "owed") + running(&dev, "big") >= 6
            && started.elapsed() > Duration::from_secs(5)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        max_capped <= 1.0,
        "capped held {max_capped} cpus, over its limit of 1"
    );
    assert!(
        cpus(&dev, "roles/owed/allocated") >= 2.0,
        "owed holds {} cpus, under its guarantee of 2 (big holds {})",
        cpus(&dev, "roles/owed/allocated"),
        cpus(&dev, "roles/big/allocated")
    );
    wait_for_tasks(&mut dev, &["owed", "big"], 6);
}

/// Waits until `path` contains `want`.
fn wait_for_text(dev: &mut Dev, path: &str, want: &str) {
    let full = dev.mount.join(path);
    dev.wait_for(
        &format!("{path} to say {want:?}"),
        Duration::from_secs(30),
        || std::fs::read_to_string(&full).is_ok_and(|t| t.contains(want)),
    );
}

#[test]
fn offers_why_names_fair_share_a_quota_limit_and_a_decline() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::start();
    dev.sh_ok("mkdir frameworks/capped frameworks/other");
    dev.sh_ok("echo capped > frameworks/capped/role");
    dev.sh_ok("echo 'cpus:0.5;mem:1000' > roles/capped/limit");
    // The agent goes whole to "other" ("*" sorts before "capped" at equal shares).
    let o = dev
        .sh_ok("timeout 10 cat frameworks/other/offers/next")
        .trim()
        .to_string();
    wait_for_text(
        &mut dev,
        "frameworks/capped/offers/why",
        "fair share: role capped holds",
    );
    assert_eq!(
        dev.read("frameworks/other/offers/why"),
        "",
        "it holds an offer"
    );
    // "other" declines for an hour: "capped" gets what its limit allows, uses it all.
    dev.sh_ok(&format!("echo 3600s > frameworks/other/offers/{o}/decline"));
    let c = dev
        .sh_ok("timeout 10 cat frameworks/capped/offers/next")
        .trim()
        .to_string();
    assert_eq!(
        dev.read(&format!("frameworks/capped/offers/{c}/cpus")),
        "0.5"
    );
    dev.sh_ok(&format!(
        "echo 'name=t cpus=0.5 mem=32 -- sleep 600' > frameworks/capped/offers/{c}/launch"
    ));
    wait_for_text(
        &mut dev,
        "frameworks/capped/offers/why",
        "role capped is at its quota limit",
    );
    wait_for_text(&mut dev, "frameworks/other/offers/why", "declined agent");
}
