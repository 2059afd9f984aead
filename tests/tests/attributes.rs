//! An agent's attributes (`--attributes`) are shown with the agent and with its offers, so a
//! shell framework can place by constraint; malformed ones stop the agent from starting.

use std::process::Command;

use mesofs_tests::{can_run, mesofs_bin, Dev, Mounted};

#[test]
fn attributes_show_on_the_agent_and_its_offers_and_malformed_ones_are_refused() {
    if !can_run() {
        return;
    }
    let dev = Dev::start_with(&["--attributes", "zone:a;rack:r1"]);
    let agent = dev.sh_ok("ls agents").trim().to_string();
    assert_eq!(
        dev.read(&format!("agents/{agent}/attributes")),
        "rack:r1\nzone:a"
    );
    dev.sh_ok("mkdir frameworks/f");
    // A framework that takes only offers in zone a.
    let placed = dev.sh_ok(
        "o=$(timeout 10 cat frameworks/f/offers/next) && \
         grep -qx 'zone:a' frameworks/f/offers/$o/attributes && \
         echo 'name=t -- true' > frameworks/f/offers/$o/launch && \
         cat frameworks/f/tasks/t/wait",
    );
    assert_eq!(placed.trim(), "TASK_FINISHED");

    let out = Command::new(mesofs_bin())
        .args([
            "agent",
            "--insecure",
            "--work-dir",
            "/nonexistent-mesofs-test",
            "--attributes",
            "rack",
        ])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid --attributes") && stderr.contains("not name:value"),
        "{stderr}"
    );
}
