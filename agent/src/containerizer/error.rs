//! Why a launch or a kill was not done.

use std::io;
use std::path::PathBuf;

use crate::isolator::IsolatorError;

/// Why a launch failed (nothing of the task is left running).
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The task id cannot name a sandbox and a cgroup.
    #[error("invalid task id {0:?}: it must be a non-empty name without '/', NUL or control characters, and not '.' or '..'")]
    InvalidTaskId(String),
    /// A task of that id is already running here.
    #[error("task {0} is already running on this agent")]
    Duplicate(String),
    /// The containerizer is shutting down.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// An argv command with no program.
    #[error("the command is empty")]
    EmptyCommand,
    /// An environment variable that cannot be passed.
    #[error("invalid environment variable name {0:?}")]
    InvalidEnv(String),
    /// The sandbox could not be made.
    #[error("cannot create the sandbox {}: {source}", path.display())]
    Sandbox {
        /// The sandbox directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The isolation could not be made (or its limits did not take).
    #[error(transparent)]
    Isolation(#[from] IsolatorError),
    /// Fork or exec failed (e.g. no such program).
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The task must run as another user, and the agent is not root.
    #[error("the agent runs as uid {agent} and cannot run tasks as uid {task}; run the agent as root, or the framework as uid {agent}")]
    User {
        /// The agent's uid.
        agent: u32,
        /// The task's.
        task: u32,
    },
    /// A health check asked of an agent whose tasks have no supervisor to run it.
    #[error("this agent runs tasks without supervisors, so it cannot run health checks; run the agent with its checkpoints and the mesofs binary, or launch the task without a health check")]
    HealthNeedsSupervisor,
    /// An internal task of the agent failed.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a kill was not done.
#[derive(Debug, thiserror::Error)]
pub enum KillError {
    /// No task of that id is running here (never launched, or already reported).
    #[error("task {0} is not running on this agent")]
    NotRunning(String),
}
