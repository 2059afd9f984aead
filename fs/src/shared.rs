//! What the FUSE callbacks and the runtime's tasks share: the master client, the local copy,
//! inodes, open handles, and the attributes of a node as the copy has it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use mesofs_kernel::client::{LocalCopy, MasterClient, WriteError, Writer};
use mesofs_kernel::proto::write_request::Op;
use mesofs_kernel::state::{AgentState, TaskState};
use mesofs_kernel::watch::View;
use tracing::info;

use crate::blocking;
use crate::commands;
use crate::events::EventStreams;
use crate::handles::Handles;
use crate::inodes::Inodes;
use crate::render;
use crate::sandbox::SandboxFiles;
use crate::tree::{self, Content, Kind, Node};
use crate::usage::Usages;
use crate::users::Users;
use crate::write_limit::DEFAULT_COMMAND_LIMIT;

/// State shared by the session thread, the runtime's tasks and the mount handle.
pub struct Shared {
    /// Sends commands to the leader.
    pub client: MasterClient,
    /// The local copy every read is served from.
    pub copy: LocalCopy,
    /// Where waits and network calls run.
    pub rt: tokio::runtime::Handle,
    /// Inode numbers.
    pub inodes: Mutex<Inodes>,
    /// Open files and directories.
    pub handles: Handles,
    /// Connections to agents for stdout/stderr and usage.
    pub sandbox: SandboxFiles,
    /// Agents' latest answers about their tasks' usage.
    pub usages: Usages,
    /// uid to user name.
    pub users: Users,
    /// Byte offsets of the `events` files.
    pub events: EventStreams,
    /// Set when unmounting: held reads give up.
    pub unmounting: AtomicBool,
    /// When the mount started: the time of nodes that have none of their own.
    pub started: SystemTime,
    /// Write requests to control files this large or larger are refused (EFBIG); see
    /// [`command_limit`].
    pub command_limit: AtomicUsize,
    /// The inode each thread last looked up, until its next getattr or open: a getattr right
    /// after a lookup is a stat by path, anything else (fstat) is about an open file.
    last_lookup: Mutex<HashMap<u32, u64>>,
}

impl Shared {
    /// Shared state over a client, a local copy and a runtime.
    pub fn new(client: MasterClient, copy: LocalCopy, rt: tokio::runtime::Handle) -> Shared {
        Shared {
            sandbox: SandboxFiles::new(client.connector().clone()),
            usages: Usages::default(),
            client,
            copy,
            rt,
            inodes: Mutex::new(Inodes::default()),
            handles: Handles::default(),
            users: Users::default(),
            events: EventStreams::default(),
            unmounting: AtomicBool::new(false),
            started: SystemTime::now(),
            command_limit: AtomicUsize::new(DEFAULT_COMMAND_LIMIT),
            last_lookup: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn last_lookup(&self) -> std::sync::MutexGuard<'_, HashMap<u32, u64>> {
        self.last_lookup.lock().expect("last lookup lock")
    }

    /// Sends a command for the caller `pid` (see [`commands::send`]). Only a caller being
    /// killed ends the wait early (EINTR, and the command may still take effect): a caller
    /// that lives on gets the command's real outcome.
    pub async fn send(&self, pid: u32, uid: u32, gid: u32, op: Op) -> Result<(), WriteError> {
        let writer = Writer {
            uid,
            gid,
            user: self.users.name(uid).unwrap_or_default(),
        };
        let sending = commands::send(&self.client, &self.copy, &writer, op);
        match blocking::unless_caller_dies(pid, &self.unmounting, sending).await {
            Ok(result) => result,
            Err(i) => {
                info!(pid, uid, reason = %i, "command interrupted before its answer");
                Err(WriteError::new(
                    i.errno(),
                    format!("{i} before the master answered; the command may still take effect"),
                ))
            }
        }
    }

    pub(crate) fn inodes(&self) -> std::sync::MutexGuard<'_, Inodes> {
        self.inodes.lock().expect("inodes lock")
    }

    /// The node of an inode number, if it was given out and not swept.
    pub fn node(&self, ino: INodeNo) -> Option<Node> {
        self.inodes().node(ino.0)
    }

    /// The attributes of a node as the view has it; `size` only for sandbox files, whose size
    /// is not in the view.
    pub fn attr(&self, view: &View, node: &Node, ino: u64, sandbox_size: u64) -> FileAttr {
        let (uid, gid) = node.owner(view, &self.users);
        let (kind, size, nlink) = match node.kind() {
            Kind::Dir => (FileType::Directory, 0, 2 + node.subdir_count(view) as u32),
            Kind::Symlink => (
                FileType::Symlink,
                render::link_target(view, node).map_or(0, |t| t.len() as u64),
                1,
            ),
            Kind::File => {
                let size = match node.content() {
                    Content::Rendered | Content::Setting | Content::Measured { .. } => {
                        render::render(view, node, &self.users).map_or(0, |t| t.len() as u64)
                    }
                    Content::Sandbox { .. } => sandbox_size,
                    // Grows as lines come: tail -f polls it (see `events`).
                    Content::Events { framework_id, .. } => self.events.size(view, &framework_id),
                    _ => 0,
                };
                (FileType::RegularFile, size, 1)
            }
        };
        let time = self.time_of(view, node);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm: node.mode(),
            nlink,
            uid,
            gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// A node's time: when its task last changed, its offer was made, its framework or agent
    /// registered; the mount's start otherwise.
    pub(crate) fn time_of(&self, view: &View, node: &Node) -> SystemTime {
        let ms = match node {
            Node::Task(f, t) | Node::TaskFile(f, t, _) | Node::TaskAgent(f, t) => {
                tree::task_of(view, f, t).map(|t| t.last().time_ms)
            }
            Node::Offer(_, o) | Node::OfferFile(_, o, _) | Node::OfferAgent(_, o) => {
                view.offers.get(o).map(|o| o.created_ms)
            }
            Node::Agent(a) | Node::AgentFile(a, _) | Node::AgentTasks(a) => {
                view.state.agents.get(a).map(|a| a.registered_ms)
            }
            _ => node
                .framework_id()
                .and_then(|f| view.state.frameworks.get(f))
                .map(|f| f.registered_ms),
        };
        ms.map_or(self.started, |ms| UNIX_EPOCH + Duration::from_millis(ms))
    }
}

/// The Files address of the agent to ask for a task's usage: only while the task has started
/// and is not over, on an agent that is connected.
pub(crate) fn usage_target(view: &View, task_id: &str) -> Option<String> {
    let task = view.state.tasks.get(task_id)?;
    let state = task.state();
    if state.is_terminal() || state == TaskState::Staging {
        return None;
    }
    let agent = view.state.agents.get(&task.agent_id)?;
    (agent.state == AgentState::Active).then(|| agent.address.clone())
}

/// Where a sandbox file lives: the agent's Files address, the task id and the file name.
pub(crate) struct SandboxTarget {
    pub(crate) address: String,
    pub(crate) task_id: String,
    pub(crate) file: &'static str,
}

pub(crate) fn sandbox_target(
    view: &View,
    task_id: &str,
    file: &'static str,
) -> Option<SandboxTarget> {
    let task = view.state.tasks.get(task_id)?;
    let agent = view.state.agents.get(&task.agent_id)?;
    Some(SandboxTarget {
        address: agent.address.clone(),
        task_id: task_id.to_string(),
        file,
    })
}
