//! The mesofs FUSE filesystem: the cluster as a tree of files, served from a local copy of the
//! cluster state, with writes sent to the leading master. `docs/filesystem.md` is the
//! reference for every path.

#![warn(missing_docs)]

pub mod blocking;
pub mod commands;
mod error;
pub mod events;
pub mod filesystem;
#[cfg(test)]
mod fixture;
pub mod handles;
pub mod inodes;
mod mount;
#[cfg(test)]
mod mounted;
pub mod permissions;
mod reads;
pub mod render;
pub mod sandbox;
pub mod shared;
pub mod tree;
pub mod usage;
pub mod users;
pub mod write_limit;

pub use error::FsError;
pub use mount::{mount, Mount};
