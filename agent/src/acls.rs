//! The cluster's ACLs as this agent last heard them from the leader, which decide who reads
//! the sandboxes of whose tasks. They are kept in the work directory, so that an agent that
//! restarts enforces them before it has registered again.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use mesofs_kernel::acls::{Acls, Action};
use mesofs_kernel::tls::Principal;
use tracing::warn;

/// The ACLs of sandbox reads.
pub struct SandboxAcls {
    path: PathBuf,
    acls: RwLock<Option<Acls>>,
}

impl SandboxAcls {
    /// The ACLs kept in `work_dir`, if any were kept.
    pub fn load(work_dir: &Path) -> SandboxAcls {
        let path = work_dir.join("acls.json");
        let acls = match std::fs::read_to_string(&path) {
            Ok(text) => Acls::parse(&text)
                .inspect_err(|e| warn!(path = %path.display(), error = %e, "ignoring kept ACLs"))
                .ok(),
            Err(_) => None,
        };
        SandboxAcls {
            path,
            acls: RwLock::new(acls),
        }
    }

    /// Takes the ACLs the leader sent (JSON), and keeps them.
    pub fn update(&self, json: &str) {
        let acls = match Acls::parse(json) {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "the master sent ACLs this agent cannot read; keeping the ones it had");
                return;
            }
        };
        if let Err(e) = crate::checkpoint::write_json(&self.path, &acls) {
            warn!(path = %self.path.display(), error = %e, "cannot keep the ACLs: a restarted agent refuses sandbox reads until it registers");
        }
        *self.acls.write().expect("acls lock") = Some(acls);
    }

    /// Whether `principal` may read the sandbox of a task that runs as `user`.
    pub fn allows(&self, principal: Option<&Principal>, user: &str) -> Result<(), String> {
        match &*self.acls.read().expect("acls lock") {
            Some(acls) => acls
                .allows(principal, Action::AccessSandboxes, user)
                .map_err(|d| d.to_string()),
            None => Err(
                "this agent has not yet heard the cluster's ACLs from a master (it has never registered); read again once it has".into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesofs_kernel::tls::Kind;

    #[test]
    fn acls_are_kept_across_a_restart_and_none_refuses_every_read() {
        let dir = tempfile::tempdir().unwrap();
        let web = Principal {
            kind: Kind::Mount,
            name: "web".into(),
        };
        let fresh = SandboxAcls::load(dir.path());
        assert!(
            fresh.allows(Some(&web), "alice").is_err(),
            "no ACLs heard yet"
        );
        fresh.update(
            r#"{"access_sandboxes": [{"principals": {"values": ["mount:web"]}, "users": {"type": "NONE"}}]}"#,
        );
        fresh.update("not json: ignored");
        let restarted = SandboxAcls::load(dir.path());
        let denied = restarted.allows(Some(&web), "alice").unwrap_err();
        assert!(
            denied.contains("mount:web may not read the sandboxes"),
            "{denied}"
        );
        let other = Principal {
            kind: Kind::Mount,
            name: "other".into(),
        };
        assert!(restarted.allows(Some(&other), "alice").is_ok());
    }
}
