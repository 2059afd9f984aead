//! The mesofs cluster model and master: resources, task specs and their health checks, the replicated state machine,
//! Raft storage and network, the allocator, the leader's runtime, the gRPC services, a client
//! that finds and follows the leader, the cluster's certificates and TLS, and its ACLs.

pub mod acls;
pub mod allocator;
pub mod attributes;
pub mod client;
pub mod health;
pub mod limits;
pub mod master;
pub mod proto;
pub mod raft;
pub mod resources;
pub mod spec;
pub mod state;
pub mod tls;
pub mod watch;
