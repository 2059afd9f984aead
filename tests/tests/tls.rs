//! Components refuse to start without certificates (unless told --insecure), and refuse a
//! certificate of the wrong kind; with certificates, a client from another CA is refused.

use std::process::Command;

use mesofs_kernel::tls::TlsFiles;
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

/// What a master or agent answers a caller holding `tls` (none: no client certificate).
mod calls {
    use mesofs_kernel::proto::files_client::FilesClient;
    use mesofs_kernel::proto::master_client::MasterClient;
    use mesofs_kernel::proto::raft_client::RaftClient;
    use mesofs_kernel::proto::{
        agent_message, AgentMessage, RaftPayload, ReadRequest, RegisterAgent, WriteRequest,
    };
    use mesofs_kernel::tls::TlsFiles;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

    async fn channel(
        addr: &str,
        tls: ClientTlsConfig,
    ) -> Result<tonic::transport::Channel, String> {
        Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|e| format!("connection refused: {e:?}"))
    }

    /// A client that presents `files`'s certificate, or (with `ca_only`) none at all.
    pub fn client(files: &TlsFiles, ca_pem: &str, ca_only: bool) -> ClientTlsConfig {
        if ca_only {
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem))
        } else {
            files.client()
        }
    }

    /// Whether an answer is the TLS layer's refusal (the handshake, or the connection closed
    /// right after it under TLS 1.3), not a service's.
    pub fn never_reached(said: &str) -> bool {
        said.starts_with("connection refused")
            || said.starts_with("Cancelled")
            || said.starts_with("Unavailable")
            || said.starts_with("Unknown: transport error")
    }

    fn said(r: Result<tonic::Status, String>) -> String {
        match r {
            Ok(s) => format!("{:?}: {}", s.code(), s.message()),
            Err(e) => e,
        }
    }

    pub async fn raft(addr: &str, tls: ClientTlsConfig) -> String {
        said(
            async {
                let ch = channel(addr, tls).await?;
                Ok(RaftClient::new(ch)
                    .vote(RaftPayload {
                        json: b"{}".to_vec(),
                    })
                    .await
                    .expect_err("a vote of {} is refused either way"))
            }
            .await,
        )
    }

    pub async fn write(addr: &str, tls: ClientTlsConfig) -> String {
        said(
            async {
                let ch = channel(addr, tls).await?;
                Ok(MasterClient::new(ch)
                    .write(WriteRequest::default())
                    .await
                    .err()
                    .unwrap_or_else(|| tonic::Status::ok("accepted")))
            }
            .await,
        )
    }

    pub async fn register(addr: &str, tls: ClientTlsConfig, agent_id: &str) -> String {
        said(
            async {
                let ch = channel(addr, tls).await?;
                let first = AgentMessage {
                    msg: Some(agent_message::Msg::Register(RegisterAgent {
                        agent_id: agent_id.into(),
                        hostname: "h".into(),
                        address: "127.0.0.1:1".into(),
                        resources: "cpus:1;mem:64".into(),
                        running: vec![],
                    })),
                };
                // Keep the session open: the master answers the registration, not the end.
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tx.send(first).await.unwrap();
                let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
                let r = MasterClient::new(ch).agent_session(outbound).await;
                drop(tx);
                Ok(match r {
                    Ok(mut s) => match s.get_mut().message().await {
                        Ok(Some(_)) => tonic::Status::ok("registered"),
                        Ok(None) => tonic::Status::ok("ended"),
                        Err(e) => e,
                    },
                    Err(e) => e,
                })
            }
            .await,
        )
    }

    pub async fn read_sandbox(addr: &str, tls: ClientTlsConfig) -> String {
        said(
            async {
                let ch = channel(addr, tls).await?;
                Ok(FilesClient::new(ch)
                    .read(ReadRequest {
                        task_id: "nosuchtask".into(),
                        file: "stdout".into(),
                        offset: 0,
                        length: 10,
                    })
                    .await
                    .err()
                    .unwrap_or_else(|| tonic::Status::ok("served")))
            }
            .await,
        )
    }
}
