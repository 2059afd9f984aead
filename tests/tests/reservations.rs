//! Reservations through the mount: a static one (`--resources 'cpus(eng):2;...'`) offered only
//! to its role and the roles under it; a dynamic one made and given back by writes to an
//! offer's `reserve` and `unreserve`, kept across a restart of the whole cluster.

use mesofs_tests::{can_run, Dev, Mounted};

/// The one agent's id.
fn agent(dev: &Dev) -> String {
    dev.sh_ok("ls agents").trim().to_string()
}

/// Waits for an offer to `framework` and returns its id.
fn next_offer(dev: &Dev, framework: &str) -> String {
    dev.sh_ok(&format!("cat frameworks/{framework}/offers/next"))
        .trim()
        .to_string()
}

/// Writes `text` to `path` in the mount; returns the shell's error text (empty on success).
fn write(dev: &Dev, text: &str, path: &str) -> String {
    let out = dev.sh(&format!("echo '{text}' > {path}"));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_static_reservation_is_offered_only_to_its_role_and_the_roles_under_it() {
    if !can_run() {
        return;
    }
    let dev = Dev::start_with(&["--resources", "cpus:1;mem:256;cpus(eng):2;mem(eng):512"]);
    let a = agent(&dev);
    assert_eq!(
        dev.read(&format!("agents/{a}/resources")),
        "cpus:1;cpus(eng):2;mem:256;mem(eng):512"
    );
    assert_eq!(dev.read("roles/eng/reserved"), "cpus(eng):2;mem(eng):512");
    assert!(
        !dev.sh("test -e roles/reserved").status.success(),
        "no role takes the name of a role's file"
    );

    // A framework of another role is offered the unreserved resources only.
    dev.sh_ok("mkdir frameworks/ops && echo ops > frameworks/ops/role");
    let o = next_offer(&dev, "ops");
    assert_eq!(
        dev.read(&format!("frameworks/ops/offers/{o}/resources")),
        "cpus:1;mem:256"
    );
    assert_eq!(dev.read(&format!("frameworks/ops/offers/{o}/cpus")), "1");

    // One of a role under eng is offered the reservation, and its tasks take from it.
    dev.sh_ok("mkdir frameworks/web && echo eng/web > frameworks/web/role");
    let w = next_offer(&dev, "web");
    assert_eq!(
        dev.read(&format!("frameworks/web/offers/{w}/resources")),
        "cpus(eng):2;mem(eng):512"
    );
    assert_eq!(dev.read(&format!("frameworks/web/offers/{w}/cpus")), "2");
    dev.sh_ok(&format!(
        "echo 'name=t cpus=1 mem=64 -- sleep 600' > frameworks/web/offers/{w}/launch"
    ));
    let status = dev.read("frameworks/web/tasks/t/status.json");
    assert!(
        status.contains("\"resources\": \"cpus(eng):1;mem(eng):64\""),
        "{status}"
    );
    assert_eq!(
        dev.read("roles/eng/web/allocated"),
        "cpus(eng):1;mem(eng):64"
    );
    // What the launch left stays offered to web.
    assert_eq!(
        dev.read(&format!("frameworks/web/offers/{w}/resources")),
        "cpus(eng):1;mem(eng):448"
    );

    // A static reservation cannot be given back through an offer.
    let err = write(
        &dev,
        "cpus(eng):1",
        &format!("frameworks/web/offers/{w}/unreserve"),
    );
    assert!(err.contains("Invalid argument"), "{err}");
    assert!(
        dev.read("frameworks/web/error").contains("--resources"),
        "{}",
        dev.read("frameworks/web/error")
    );
}

#[test]
fn a_dynamic_reservation_round_trips_through_an_offer_and_outlives_a_restart() {
    if !can_run() {
        return;
    }
    let mut dev = Dev::start_with(&["--resources", "cpus:2;mem:1024"]);
    let a = agent(&dev);
    dev.sh_ok("mkdir frameworks/eng && echo eng > frameworks/eng/role");
    let o = next_offer(&dev, "eng");
    let offer = format!("frameworks/eng/offers/{o}");

    // Bad writes are refused with a reason and change nothing.
    for (text, errno) in [
        ("cpus:9", "No space left on device"),
        ("cpus(ops):1", "Invalid argument"),
        ("cpus:lots", "Invalid argument"),
        ("", "Invalid argument"),
    ] {
        let err = write(&dev, text, &format!("{offer}/reserve"));
        assert!(err.contains(errno), "reserve {text:?}: {err}");
        assert!(!dev.read("frameworks/eng/error").is_empty());
    }
    assert_eq!(dev.read(&format!("{offer}/resources")), "cpus:2;mem:1024");

    dev.sh_ok(&format!("echo 'cpus:1;mem:256' > {offer}/reserve"));
    let reserved = "cpus:1;cpus(eng):1;mem:768;mem(eng):256";
    assert_eq!(dev.read(&format!("{offer}/resources")), reserved);
    assert_eq!(dev.read(&format!("agents/{a}/resources")), reserved);
    assert_eq!(dev.read("roles/eng/reserved"), "cpus(eng):1;mem(eng):256");
    assert_eq!(dev.read("roles/eng/offered"), reserved);

    // Everything acknowledged outlives a restart: the agent registers its static resources
    // again, and the reservation is made again on them.
    dev.kill9();
    dev.restart();
    assert_eq!(dev.read(&format!("agents/{a}/resources")), reserved);
    let o = next_offer(&dev, "eng");
    let offer = format!("frameworks/eng/offers/{o}");
    assert_eq!(dev.read(&format!("{offer}/resources")), reserved);

    // Giving back more than is reserved fails; giving it back restores the agent.
    let err = write(&dev, "cpus:2", &format!("{offer}/unreserve"));
    assert!(err.contains("No space left on device"), "{err}");
    dev.sh_ok(&format!("echo 'cpus(eng):1;mem:256' > {offer}/unreserve"));
    assert_eq!(dev.read(&format!("{offer}/resources")), "cpus:2;mem:1024");
    assert_eq!(
        dev.read(&format!("agents/{a}/resources")),
        "cpus:2;mem:1024"
    );
    assert_eq!(dev.read("roles/eng/reserved"), "");
}
