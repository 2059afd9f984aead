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
}

/// A master as the Raft membership records it: the address the others dial, and the
/// incarnation of its data directory (made when the directory was first used), so that a
/// master whose disk was wiped is not taken for the member it replaced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterNode {
    /// `host:port` the other masters, agents and mounts dial.
    pub addr: String,
    /// The incarnation of its data directory; empty in memberships made before incarnations.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub incarnation: String,
}

impl std::fmt::Display for MasterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.incarnation.is_empty() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{} ({})", self.addr, self.incarnation)
        }
    }
}

openraft::declare_raft_types!(
    /// The masters' Raft types: commands in, responses out, node ids are small integers.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = MasterNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A running Raft node of the masters.
pub type Raft = openraft::Raft<TypeConfig>;
