//! Certificates for the subcommands: the `--tls DIR` / `--insecure` choice every component
//! makes, and the CA and certificates `mesofs dev` makes for itself in its data directory.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Args;
use mesofs_kernel::acls::Acls;
use mesofs_kernel::tls::{self, Kind, TlsFiles};
use tracing::warn;

/// How a component secures its connections.
#[derive(Args, Clone)]
pub struct TlsArgs {
    /// A TLS directory (ca.pem, cert.pem, key.pem) for mutual TLS on every connection; make it
    /// with `mesofs ca init` and `mesofs cert issue`.
    #[arg(long, value_name = "DIR", conflicts_with = "insecure")]
    tls: Option<std::path::PathBuf>,
    /// Talk plain gRPC, with no certificates: anyone who reaches the port is trusted.
    #[arg(long)]
    insecure: bool,
}

impl TlsArgs {
    /// The TLS files, `None` with `--insecure`; an error saying what to pass with neither.
    /// `kinds` are the certificate kinds this component may use; `example` shows how to
    /// issue one.
    pub fn load(&self, component: &str, kinds: &[Kind], example: &str) -> Result<Option<TlsFiles>> {
        let Some(dir) = &self.tls else {
            if self.insecure {
                warn!("{component} runs with --insecure: no certificates, plain gRPC");
                return Ok(None);
            }
            bail!(
                "{component} needs --tls DIR: a directory with ca.pem, cert.pem and key.pem, made with `mesofs ca init --dir CA` and `{example}`; or --insecure to talk plain gRPC (then anyone who reaches a master can write as any user and register as any agent)"
            );
        };
        let files = TlsFiles::load(dir)
            .with_context(|| format!("loading the TLS directory {}", dir.display()))?;
        if !kinds.contains(&files.principal.kind) {
            bail!(
                "{}: the certificate is for {}, which is not what {component} uses ({}); `{example}`",
                dir.display(),
                files.principal,
                kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(" or ")
            );
        }
        Ok(Some(files))
    }
}

/// The TLS directories of `mesofs dev`, made on its first start in `<data>/tls` and kept: a CA,
/// and certificates for the master (id 1), the agent (its id) and the mount.
pub struct DevTls {
    /// The master's.
    pub master: TlsFiles,
    /// The agent's.
    pub agent: TlsFiles,
    /// The mount's.
    pub mount: TlsFiles,
}

impl DevTls {
    /// The ACLs of a one-machine cluster: the defaults, and its own mount may run tasks as
    /// root (the cluster is that machine's root's).
    pub fn acls(&self) -> Acls {
        let mut acls = Acls::default();
        acls.grant_run_tasks(&self.mount.principal, "root");
        acls
    }
}

/// Makes (once) and loads `mesofs dev`'s certificates; `ip` is the address it listens on.
pub fn dev_tls(data: &Path, agent_id: &str, ip: IpAddr) -> Result<DevTls> {
    let dir = data.join("tls");
    let ca = dir.join("ca");
    if !ca.join("ca.key").exists() {
        tls::init_ca(&ca).context("making mesofs dev's CA")?;
    }
    let hosts = vec![ip.to_string(), "127.0.0.1".into(), "localhost".into()];
    let get = |kind: Kind, name: &str| -> Result<TlsFiles> {
        let out = dir.join(kind.as_str());
        let current = TlsFiles::load(&out).ok();
        let fits = current
            .as_ref()
            .is_some_and(|f| f.principal.kind == kind && f.principal.name == name);
        if !fits {
            tls::issue(&ca, kind, name, &hosts, &out)
                .with_context(|| format!("issuing mesofs dev's {kind} certificate"))?;
        }
        TlsFiles::load(&out).with_context(|| format!("loading {}", out.display()))
    };
    Ok(DevTls {
        master: get(Kind::Master, "1")?,
        agent: get(Kind::Agent, agent_id)?,
        mount: get(Kind::Mount, "dev")?,
    })
}
