//! Calls to a master's and an agent's services as any certificate holder (or none), saying
//! what each answered: how tests probe what the services refuse.

use mesofs_kernel::proto::files_client::FilesClient;
use mesofs_kernel::proto::master_client::MasterClient;
use mesofs_kernel::proto::raft_client::RaftClient;
use mesofs_kernel::proto::{
    agent_message, AgentMessage, RaftPayload, ReadRequest, RegisterAgent, WriteRequest,
};
use mesofs_kernel::tls::TlsFiles;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

async fn channel(addr: &str, tls: ClientTlsConfig) -> Result<tonic::transport::Channel, String> {
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

/// A Raft vote of `{}`, as `tls` holds.
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

/// A Raft vote request from a candidate `node` at `term`, as `tls` holds: what the master
/// answered (`Ok` with its reply, or its refusal).
pub async fn raft_vote_as(addr: &str, tls: ClientTlsConfig, node: u64, term: u64) -> String {
    let vote = openraft::raft::VoteRequest::<u64>::new(openraft::Vote::new(term, node), None);
    let json = serde_json::to_vec(&vote).unwrap();
    let r: Result<String, String> = async {
        let ch = channel(addr, tls).await?;
        Ok(match RaftClient::new(ch).vote(RaftPayload { json }).await {
            Ok(r) => format!("Ok: {}", String::from_utf8_lossy(&r.into_inner().json)),
            Err(s) => format!("{:?}: {}", s.code(), s.message()),
        })
    }
    .await;
    r.unwrap_or_else(|e| e)
}

/// A write with no operation, as `tls` holds.
pub async fn write(addr: &str, tls: ClientTlsConfig) -> String {
    send_write(addr, tls, WriteRequest::default()).await
}

/// Sends `req` as a write: the master's answer as `errno N: reason`, or its refusal.
pub async fn send_write(addr: &str, tls: ClientTlsConfig, req: WriteRequest) -> String {
    let r: Result<String, String> = async {
        let ch = channel(addr, tls).await?;
        match MasterClient::new(ch)
            .max_encoding_message_size(usize::MAX)
            .write(req)
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                Ok(format!("errno {}: {}", r.errno, r.error))
            }
            Err(s) => Ok(format!("{:?}: {}", s.code(), s.message())),
        }
    }
    .await;
    r.unwrap_or_else(|e| e)
}

/// An agent session registering `agent_id`, as `tls` holds.
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
                    attributes: String::new(),
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

/// A read of a sandbox file, as `tls` holds.
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
