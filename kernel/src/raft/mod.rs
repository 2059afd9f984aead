//! Raft for the masters: the type configuration, durable storage, and the gRPC network.

// openraft's error types are large and fixed by its traits; boxing them here would only be
// undone at every trait boundary.
#![allow(clippy::result_large_err)]

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::state::{Applied, Command};

pub mod network;
pub mod storage;

/// What applying a command returns to its proposer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The state machine's answer.
    pub applied: Applied,
    /// The watch sequence number at which the command's effects are visible.
    pub seq: u64,
}

openraft::declare_raft_types!(
    /// The masters' Raft types: commands in, responses out, node ids are small integers.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A running Raft node of the masters.
pub type Raft = openraft::Raft<TypeConfig>;
