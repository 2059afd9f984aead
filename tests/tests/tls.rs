//! Components refuse to start without certificates (unless told --insecure), and refuse a
//! certificate of the wrong kind; with certificates, a client from another CA is refused.

use std::process::Command;

use mesofs_kernel::tls::TlsFiles;
use mesofs_tests::probe as calls;
use mesofs_tests::{can_run, mesofs_bin, Cluster, Mounted, TestCa};

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

#[test]
fn masters_and_agents_refuse_callers_without_a_certificate_from_another_ca_or_of_the_wrong_kind() {
    if !can_run() {
        return;
    }
    let c = Cluster::start(&[]);
    let agent_id = c.agent_id();
    let files_addr = c.read(&format!("agents/{agent_id}/address"));
    let master_addr = c.master_addr.clone();
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = TestCa::new(other_dir.path());
    let load = |dir: std::path::PathBuf| TlsFiles::load(&dir).unwrap();
    let mount_dir = c.ca.issue("mount", "probe", &[]);
    let ca_pem = std::fs::read_to_string(mount_dir.join("ca.pem")).unwrap();
    let mount = load(mount_dir);
    let master = load(c.ca.issue("master", "9", &["127.0.0.1"]));
    let agent = load(c.ca.issue("agent", "a-second", &["127.0.0.1"]));
    let stranger = load(other_ca.issue("master", "1", &["127.0.0.1"]));
    let as_ = |f: &TlsFiles| calls::client(f, &ca_pem, false);
    let no_certificate = calls::client(&mount, &ca_pem, true);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Raft: masters only.
        let m = &master_addr;
        let said = calls::raft(m, as_(&master)).await;
        assert!(
            said.contains("bad raft message"),
            "a master is heard: {said}"
        );
        // A master speaks as the id its certificate names, no other.
        let said = calls::raft_vote_as(m, as_(&master), 1, 1).await;
        assert!(
            said.starts_with("PermissionDenied")
                && said.contains("master:9 may not speak Raft as master 1"),
            "{said}"
        );
        let said = calls::raft_vote_as(m, as_(&master), 9, 1).await;
        assert!(
            said.starts_with("Ok"),
            "master 9 is heard as itself: {said}"
        );
        let said = calls::raft(m, as_(&mount)).await;
        assert!(
            said.starts_with("PermissionDenied") && said.contains("mount:probe may not speak Raft"),
            "{said}"
        );
        for (who, tls) in [
            ("no certificate", no_certificate.clone()),
            ("another CA", as_(&stranger)),
        ] {
            let said = calls::raft(m, tls).await;
            assert!(
                calls::never_reached(&said),
                "{who} never reaches the service: {said}"
            );
        }

        // Agents register, under their own name only.
        let said = calls::register(m, as_(&mount), "a-second").await;
        assert!(
            said.contains("mount:probe may not register as an agent"),
            "{said}"
        );
        let said = calls::register(m, as_(&agent), &agent_id).await;
        assert!(
            said.starts_with("PermissionDenied")
                && said.contains(&format!(
                    "agent:a-second may not register as agent \"{agent_id}\""
                )),
            "an agent cannot take another's id: {said}"
        );
        let said = calls::register(m, no_certificate.clone(), "a-second").await;
        assert!(calls::never_reached(&said), "{said}");

        // Writes come from mounts and operators.
        let said = calls::write(m, as_(&agent)).await;
        assert!(said.contains("agent:a-second may not write"), "{said}");
        let said = calls::write(m, as_(&mount)).await;
        assert!(
            !said.starts_with("PermissionDenied"),
            "a mount writes: {said}"
        );

        // Sandboxes are read by masters and mounts.
        let f = &files_addr;
        for (who, files) in [("mount", &mount), ("master", &master)] {
            let said = calls::read_sandbox(f, as_(files)).await;
            assert!(
                !said.starts_with("PermissionDenied") && !said.contains("connection refused"),
                "a {who} reads sandboxes: {said}"
            );
        }
        let said = calls::read_sandbox(f, as_(&agent)).await;
        assert!(
            said.contains("agent:a-second may not read sandboxes"),
            "{said}"
        );
        for (who, tls) in [
            ("no certificate", no_certificate.clone()),
            ("another CA", as_(&stranger)),
        ] {
            let said = calls::read_sandbox(f, tls).await;
            assert!(
                calls::never_reached(&said),
                "{who} never reaches the file service: {said}"
            );
        }
    });

    let master_log = c.master.log_text();
    for refusal in [
        "mount:probe may not speak Raft",
        "may not register as agent",
        "agent:a-second may not write",
    ] {
        assert!(master_log.contains(refusal), "the master logs {refusal:?}");
    }
    assert!(
        c.agent
            .log_text()
            .contains("agent:a-second may not read sandboxes"),
        "the agent logs its refusal"
    );
    // The cluster's own agent is still registered, and the one refused never was.
    assert_eq!(c.sh_ok("ls agents").trim(), agent_id);
}
