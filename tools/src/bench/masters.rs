//! Masters for the benchmarks: `mesofs master` processes on loopback forming one cluster, with
//! mutual TLS from a CA of the benchmark's own, so a benchmark can SIGKILL one as a real
//! failure would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};
use mesofs_kernel::tls::{self, Kind, TlsFiles};

/// Master processes, `children[i]` being master `i + 1`.
pub struct LocalMasters {
    children: Vec<Option<Child>>,
    /// Their addresses.
    pub addrs: Vec<String>,
    dir: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl LocalMasters {
    /// Starts `n` masters with data and logs under `dir`.
    pub fn start(n: usize, dir: &Path) -> Result<LocalMasters> {
        let addrs = (0..n)
            .map(|_| Ok(format!("127.0.0.1:{}", free_port()?)))
            .collect::<Result<Vec<_>>>()?;
        let m = LocalMasters {
            children: Vec::new(),
            addrs,
            dir: dir.to_path_buf(),
        };
        tls::init_ca(&m.dir.join("ca")).context("making the benchmark's CA")?;
        let mut m = m;
        for id in 1..=n as u64 {
            m.issue(Kind::Master, &id.to_string())?;
            let child = m.spawn(id)?;
            m.children.push(Some(child));
        }
        Ok(m)
    }

    /// Issues a certificate from the benchmark's CA (valid for loopback) and loads it.
    pub fn issue(&self, kind: Kind, name: &str) -> Result<TlsFiles> {
        let out = self.dir.join("tls").join(format!("{kind}-{name}"));
        tls::issue(
            &self.dir.join("ca"),
            kind,
            name,
            &["127.0.0.1".into()],
            &out,
        )?;
        Ok(TlsFiles::load(&out)?)
    }

    fn spawn(&self, id: u64) -> Result<Child> {
        let peers: Vec<String> = self
            .addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("master{id}.log")))?;
        Command::new(std::env::current_exe().context("finding the mesofs binary")?)
            .args(["master", "--id", &id.to_string(), "--listen"])
            .arg(&self.addrs[id as usize - 1])
            .args(["--peers", &peers.join(","), "--data-dir"])
            .arg(self.dir.join(format!("master{id}")))
            .arg("--tls")
            .arg(self.dir.join("tls").join(format!("master-{id}")))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting master {id}"))
    }

    /// SIGKILLs master `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.children[id as usize - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts master `id` again on its data directory.
    pub fn restart(&mut self, id: u64) -> Result<()> {
        let child = self.spawn(id)?;
        self.children[id as usize - 1] = Some(child);
        Ok(())
    }
}

impl Drop for LocalMasters {
    fn drop(&mut self) {
        for id in 1..=self.children.len() as u64 {
            self.kill(id);
        }
    }
}
