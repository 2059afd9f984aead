//! What this machine offers: detected cpus, memory, disk and a port range, in Mesos syntax.

use std::path::Path;

/// Memory kept back for the system and the agent itself, in MB.
const RESERVED_MEM_MB: u64 = 1024;
/// The port range offered by default, as in Mesos.
pub const DEFAULT_PORTS: &str = "[31000-32000]";

/// Detects this machine's resources: all cpus, memory less a reserve, the free disk of the
/// work directory's filesystem, and the default port range.
pub fn detect(work_dir: &Path) -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_mb = mem_total_mb()
        .map(|m| m.saturating_sub(RESERVED_MEM_MB).max(m / 2))
        .unwrap_or(1024);
    let disk_mb = nix::sys::statvfs::statvfs(work_dir)
        .map(|s| s.blocks_available() * s.fragment_size() / (1024 * 1024))
        .unwrap_or(0);
    format!("cpus:{cpus};mem:{mem_mb};disk:{disk_mb};ports:{DEFAULT_PORTS}")
}

fn mem_total_mb() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// This agent's id: read from the work directory, or saved there on first start (the name its
/// certificate gives, `named`, or one made of the host name). `Err` when the directory holds
/// another id than `named`.
pub fn agent_id(
    work_dir: &Path,
    hostname: &str,
    named: Option<&str>,
) -> std::io::Result<Result<String, String>> {
    let path = work_dir.join("agent_id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => {
            let id = id.trim().to_string();
            Ok(match named {
                Some(n) if n != id => Err(format!(
                    "the work directory {} belongs to agent {id:?}, but the certificate names agent {n:?}: use that agent's certificate, or another --work-dir",
                    work_dir.display()
                )),
                _ => Ok(id),
            })
        }
        _ => {
            let mut bytes = [0u8; 4];
            use std::io::Read;
            std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
            let host: String = hostname
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            let id = named.map_or_else(
                || format!("{host}-{:08x}", u32::from_le_bytes(bytes)),
                String::from,
            );
            std::fs::create_dir_all(work_dir)?;
            let tmp = work_dir.join("agent_id.tmp");
            std::fs::write(&tmp, format!("{id}\n"))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(Ok(id))
        }
    }
}
