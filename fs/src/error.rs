//! The errors of mounting and unmounting.

use std::path::PathBuf;

/// Why mounting or unmounting failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// fuser could not mount (no /dev/fuse, not root and no fusermount3, bad mountpoint...).
    #[error("cannot mount mesofs at {path}: {source}")]
    Mount {
        /// The mountpoint.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Neither a plain nor a lazy unmount worked.
    #[error("cannot unmount {path}: {source}")]
    Unmount {
        /// The mountpoint.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}
