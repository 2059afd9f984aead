//! How a process dials masters and agents: plain gRPC, or mutual TLS with its own certificate
//! (the cluster CA's, `crate::tls`). One connector per identity: in `mesofs dev` the master,
//! the agent and the mount each dial as themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::tls::TlsFiles;

/// How often a connection is pinged, and how long the answer may take before the connection
/// counts as dead: a peer whose host or link went down is noticed within 1 to 3 s.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Dials `host:port` addresses as one identity, keeping a channel per address.
#[derive(Clone, Default)]
pub struct Connector {
    tls: Option<Arc<TlsFiles>>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Connector {
    /// Plain gRPC (`--insecure`).
    pub fn plain() -> Connector {
        Connector::default()
    }

    /// Mutual TLS with this component's certificate.
    pub fn tls(files: TlsFiles) -> Connector {
        Connector {
            tls: Some(Arc::new(files)),
            channels: Arc::default(),
        }
    }

    /// Its TLS files, if it uses TLS.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_deref()
    }

    fn endpoint(&self, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            ep = ep.tls_config(tls.client())?;
        }
        Ok(ep)
    }

    /// A cached channel to `addr`: connected on first use, reconnected after failures.
    pub fn channel(&self, addr: &str) -> Channel {
        let mut channels = self.channels.lock().expect("channels lock");
        if let Some(ch) = channels.get(addr) {
            return ch.clone();
        }
        let ch = self.endpoint(addr).map_or_else(
            // An address that is not one: every call fails, saying so.
            |_| Endpoint::from_static("http://invalid.invalid:1").connect_lazy(),
            |e| e.connect_lazy(),
        );
        channels.insert(addr.to_string(), ch.clone());
        ch
    }

    /// A new connection to `addr`, made now.
    pub async fn connect(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.endpoint(addr)?.connect().await
    }
}
