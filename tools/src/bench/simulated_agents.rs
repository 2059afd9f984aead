//! Simulated agents for the control-plane benchmark: each speaks the real agent session
//! protocol to the leader over gRPC with its own certificate (registration, heartbeats, status
//! updates), and answers every launch at once with TASK_RUNNING then TASK_FINISHED, running
//! nothing. What a real agent does besides (a TASK_STARTING update, processes, cgroups,
//! sandboxes, checkpoints, resending updates until they are acknowledged) is left out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use mesofs_agent::containerizer::REASON_COMMAND_EXITED;
use mesofs_kernel::client::{master_rpc, Connector};
use mesofs_kernel::proto::{self, agent_message, master_message, AgentMessage};
use mesofs_kernel::state::TaskState;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

/// The Files address the simulated agents register: they serve no sandbox, so nothing dials it.
const NO_FILES: &str = "127.0.0.1:1";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One simulated agent's session, registered as `id` with `resources` (Mesos syntax) at the
/// leader `master`, dialed through `connector` (the agent's own certificate).
pub fn start(
    id: String,
    resources: String,
    master: String,
    connector: Connector,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = session(&id, resources, &master, &connector).await {
            warn!(agent = %id, error = %format!("{e:#}"), "simulated agent's session ended");
        }
    })
}

async fn session(id: &str, resources: String, master: &str, connector: &Connector) -> Result<()> {
    let (tx, rx) = mpsc::unbounded_channel::<AgentMessage>();
    let send = |msg| {
        // Fails only once the session's stream is gone, which ends the loop below anyway.
        let _ = tx.send(AgentMessage { msg: Some(msg) });
    };
    send(agent_message::Msg::Register(proto::RegisterAgent {
        agent_id: id.to_string(),
        hostname: id.to_string(),
        address: NO_FILES.into(),
        resources,
        running: Vec::new(),
        attributes: String::new(),
    }));
    let outbound = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let mut inbound = master_rpc(connector.channel(master))
        .agent_session(outbound)
        .await
        .with_context(|| format!("opening agent {id}'s session"))?
        .into_inner();
    let mut updates = 0u64;
    let mut update = |task_id: &str, state: TaskState, reason: &str| {
        updates += 1;
        send(agent_message::Msg::Status(proto::StatusUpdate {
            update_id: format!("{id}-{updates}"),
            task_id: task_id.to_string(),
            state: state.as_str().into(),
            reason: reason.into(),
            message: String::new(),
            time_ms: now_ms(),
            ..proto::StatusUpdate::default()
        }));
    };
    while let Some(msg) = inbound
        .message()
        .await
        .with_context(|| format!("agent {id}'s session"))?
    {
        match msg.msg {
            Some(master_message::Msg::Registered(r)) if r.heartbeat_interval_ms > 0 => {
                tokio::spawn(heartbeat(
                    tx.clone(),
                    Duration::from_millis(r.heartbeat_interval_ms),
                ));
            }
            Some(master_message::Msg::Launch(l)) => {
                update(&l.task_id, TaskState::Running, "");
                update(&l.task_id, TaskState::Finished, REASON_COMMAND_EXITED);
            }
            Some(master_message::Msg::Kill(k)) => {
                update(&k.task_id, TaskState::Killed, "REASON_TASK_KILLED");
            }
            // Nothing to resend: every update is sent once, on a session that stays up.
            Some(master_message::Msg::Ack(_) | master_message::Msg::Registered(_)) | None => {}
        }
    }
    Ok(())
}

/// Sends a heartbeat every `interval` until the session is gone.
async fn heartbeat(tx: mpsc::UnboundedSender<AgentMessage>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let beat = AgentMessage {
            msg: Some(agent_message::Msg::Heartbeat(proto::Heartbeat {})),
        };
        if tx.send(beat).is_err() {
            return;
        }
    }
}
