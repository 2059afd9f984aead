//! Components refuse to start without certificates (unless told --insecure), and refuse a
//! certificate of the wrong kind; with certificates, a client from another CA is refused.

use std::process::Command;

use mesofs_tests::{can_run, mesofs_bin, TestCa};

fn run(args: &[&str], more: &[&std::path::Path]) -> (bool, String) {
    let out = Command::new(mesofs_bin())
        .args(args)
        .args(more)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running mesofs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn master_agent_and_mount_refuse_to_start_without_tls_or_with_the_wrong_certificate() {
    if !can_run() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for (what, args) in [
        ("master", vec!["master", "--data-dir"]),
        ("agent", vec!["agent", "--work-dir"]),
        ("mount", vec!["mount", "--mount"]),
    ] {
        let (ok, stderr) = run(&args, &[&data]);
        assert!(!ok, "mesofs {what} started without --tls or --insecure");
        assert!(
            stderr.contains("needs --tls DIR") && stderr.contains("mesofs ca init"),
            "mesofs {what} says what to pass: {stderr}"
        );
    }
    let ca = TestCa::new(tmp.path());
    let agent_cert = ca.issue("agent", "a1", &["127.0.0.1"]);
    let (ok, stderr) = run(
        &["master", "--listen", "127.0.0.1:0", "--data-dir"],
        &[&data, "--tls".as_ref(), &agent_cert],
    );
    assert!(!ok);
    assert!(
        stderr.contains("agent:a1") && stderr.contains("not what mesofs master uses"),
        "{stderr}"
    );
}
