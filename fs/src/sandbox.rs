//! Task sandbox files (`stdout`, `stderr`) and running tasks' usage, read from the Files
//! service of the task's agent over one cached connection per agent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use mesofs_kernel::client::Connector;
use mesofs_kernel::proto::files_client::FilesClient;
use mesofs_kernel::proto::{ReadReply, ReadRequest, UsageReply, UsageRequest};
use tonic::transport::Channel;
use tracing::debug;

/// How long a read of a sandbox file may take before the reader gets EIO.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long finding a sandbox file's size for `stat` may take before it shows as 0.
pub const SIZE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a sandbox file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The agent could not be reached.
    #[error("agent {address} unreachable: {message}")]
    Unreachable {
        /// The agent's Files address.
        address: String,
        /// Why.
        message: String,
    },
    /// The agent answered with an error.
    #[error("agent {address} refused the read: {status}")]
    Refused {
        /// The agent's Files address.
        address: String,
        /// Its answer.
        status: tonic::Status,
    },
    /// No answer in time.
    #[error("agent {address} did not answer within {timeout:?}")]
    Timeout {
        /// The agent's Files address.
        address: String,
        /// The time allowed.
        timeout: Duration,
    },
}

/// Connections to agents' Files services, one per address, made on first use.
pub struct SandboxFiles {
    connector: Connector,
    channels: Mutex<HashMap<String, Channel>>,
}

impl SandboxFiles {
    /// Connections dialed through `connector` (as the mount).
    pub fn new(connector: Connector) -> SandboxFiles {
        SandboxFiles {
            connector,
            channels: Mutex::default(),
        }
    }

    async fn client(&self, address: &str) -> Result<FilesClient<Channel>, SandboxError> {
        let cached = self
            .channels
            .lock()
            .expect("channels lock")
            .get(address)
            .cloned();
        let ch = match cached {
            Some(ch) => ch,
            None => {
                let ch = self.connector.connect(address).await.map_err(|e| {
                    SandboxError::Unreachable {
                        address: address.to_string(),
                        message: e.to_string(),
                    }
                })?;
                self.channels
                    .lock()
                    .expect("channels lock")
                    .insert(address.to_string(), ch.clone());
                ch
            }
        };
        Ok(FilesClient::new(ch))
    }

    /// Reads `length` bytes at `offset` of a task's `stdout` or `stderr`; the reply also has
    /// the file's current size.
    pub async fn read(
        &self,
        address: &str,
        task_id: &str,
        file: &str,
        offset: u64,
        length: u64,
        timeout: Duration,
    ) -> Result<ReadReply, SandboxError> {
        let request = ReadRequest {
            task_id: task_id.to_string(),
            file: file.to_string(),
            offset,
            length,
        };
        self.call(address, timeout, |mut client| async move {
            client.read(request).await
        })
        .await
        .inspect_err(|e| debug!(task = %task_id, error = %e, "sandbox read failed"))
    }

    /// What every task the agent at `address` runs uses now.
    pub async fn usage(
        &self,
        address: &str,
        timeout: Duration,
    ) -> Result<UsageReply, SandboxError> {
        self.call(address, timeout, |mut client| async move {
            client.usage(UsageRequest::default()).await
        })
        .await
        .inspect_err(|e| debug!(agent = %address, error = %e, "usage request failed"))
    }

    /// One call to the agent at `address`, given up after `timeout`.
    async fn call<T, F>(
        &self,
        address: &str,
        timeout: Duration,
        call: impl FnOnce(FilesClient<Channel>) -> F,
    ) -> Result<T, SandboxError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let request = async {
            let client = self.client(address).await?;
            call(client)
                .await
                .map(|r| r.into_inner())
                .map_err(|status| SandboxError::Refused {
                    address: address.to_string(),
                    status,
                })
        };
        let result = match tokio::time::timeout(timeout, request).await {
            Ok(r) => r,
            Err(_) => Err(SandboxError::Timeout {
                address: address.to_string(),
                timeout,
            }),
        };
        if result.is_err() {
            // A fresh connection next time: the agent may have restarted elsewhere.
            self.channels.lock().expect("channels lock").remove(address);
        }
        result
    }
}
