//! Mounting and unmounting: the session runs on fuser's background thread; the [`Mount`]
//! handle unmounts (on `unmount` or drop) and joins it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use mesofs_kernel::client::{LocalCopy, MasterClient};
use tracing::{info, warn};

use crate::blocking::SIGNAL_CHECK;
use crate::filesystem::MesoFs;
use crate::shared::Shared;
use crate::FsError;

/// How long unmounting waits for the session thread to end before leaving it behind.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A mounted mesofs; unmounts when dropped.
pub struct Mount {
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
    shared: Arc<Shared>,
    /// The FUSE connection number (the minor of the mount's device), for aborting it.
    connection: Option<u32>,
}

/// Mounts the cluster at `mountpoint` (an existing directory) and serves it in the background:
/// reads from `copy`, writes through `client`, waits and network calls on `rt` (a runtime that
/// keeps running, e.g. multi-threaded).
pub fn mount(
    mountpoint: &Path,
    client: MasterClient,
    copy: LocalCopy,
    rt: tokio::runtime::Handle,
) -> Result<Mount, FsError> {
    let shared = Arc::new(Shared::new(client, copy, rt));
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("mesofs".into()),
        MountOption::Subtype("mesofs".into()),
        MountOption::NoAtime,
        MountOption::NoExec,
    ];
    // allow_other: other users run frameworks too. No default_permissions: ownership and
    // modes are enforced in the callbacks.
    config.acl = SessionACL::All;
    let session =
        fuser::spawn_mount(MesoFs::new(shared.clone()), mountpoint, &config).map_err(|source| {
            FsError::Mount {
                path: mountpoint.to_path_buf(),
                source,
            }
        })?;
    let connection = std::fs::metadata(mountpoint)
        .ok()
        .map(|m| nix::sys::stat::minor(m.dev()) as u32);
    info!(mountpoint = %mountpoint.display(), "mounted");
    Ok(Mount {
        mountpoint: mountpoint.to_path_buf(),
        session: Some(session),
        shared,
        connection,
    })
}

impl Mount {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the session thread to end. Held reads are answered first; if
    /// the mount is busy (a process has a file open or its cwd inside), it is detached lazily.
    pub fn unmount(mut self) -> Result<(), FsError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), FsError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        self.shared.unmounting.store(true, Ordering::Relaxed);
        // Held reads notice within one signal check; give them that long to answer, so their
        // readers let go of the mount.
        std::thread::sleep(SIGNAL_CHECK * 2);
        let mut result = Ok(());
        if let Err(e) = nix::mount::umount(&self.mountpoint) {
            warn!(mountpoint = %self.mountpoint.display(), error = %e, "unmount failed; detaching lazily");
            if let Err(e2) = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH)
            {
                result = Err(FsError::Unmount {
                    path: self.mountpoint.clone(),
                    source: std::io::Error::from(e2),
                });
            }
            self.abort_connection();
        }
        let deadline = Instant::now() + JOIN_TIMEOUT;
        while !session.guard.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if session.guard.is_finished() {
            if let Err(e) = session.join() {
                warn!(error = %e, "the FUSE session ended with an error");
            }
            info!(mountpoint = %self.mountpoint.display(), "unmounted");
        } else {
            warn!(mountpoint = %self.mountpoint.display(), "the FUSE session is still busy; leaving it to end when its last user lets go");
            std::mem::forget(session);
        }
        result
    }

    /// Aborts the FUSE connection through fusectl when it is mounted, so a lazily detached
    /// mount ends now instead of when its last user goes.
    fn abort_connection(&self) {
        let Some(conn) = self.connection else {
            return;
        };
        let abort = format!("/sys/fs/fuse/connections/{conn}/abort");
        if std::fs::write(&abort, "1").is_ok() {
            info!(connection = conn, "aborted the FUSE connection");
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            warn!(error = %e, "unmount on drop failed");
        }
    }
}
