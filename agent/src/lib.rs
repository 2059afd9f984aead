//! The mesofs agent: registers its resources with the leading master, runs tasks in
//! sandboxes, each process tree in its own isolation (cgroups when the agent is root, process
//! groups otherwise), reports how each one ended until the master acknowledges it, and serves
//! the sandboxes' files and what the tasks use. It checkpoints what it runs, so that restarted
//! after a crash it takes its running tasks back and loses no status update.

pub mod acls;
pub mod checkpoint;
pub mod containerizer;
pub mod daemon;
pub mod files;
pub mod inventory;
pub mod isolator;
pub mod sandbox;
pub mod session;
pub mod supervisor;

mod health;
mod init;
mod process;
mod procfs;
mod reaper;
mod spawner;

pub use containerizer::{
    bare_launch_cycle, Command, Confinement, Containerizer, ExitKind, KillError, LaunchError,
    LaunchSpec, Namespaces, TaskEvent, TaskExit, TaskUser,
};
pub use isolator::{detect, Isolation, Isolator, IsolatorError, Limits, Usage};
