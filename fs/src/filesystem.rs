//! The FUSE callbacks. Everything answerable from the local copy is answered on the session
//! thread at once; anything that waits (blocking reads, commands, sandbox reads) runs on the
//! tokio runtime and replies from there, so the session thread never blocks.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use mesofs_kernel::client::{LocalCopy, MasterClient, WriteError};
use mesofs_kernel::proto::write_request::Op;
use mesofs_kernel::watch::View;
use tracing::{debug, info, warn};

use crate::blocking::{self, Interrupted, Waiting};
use crate::commands;
use crate::events::EventStreams;
use crate::handles::{
    open_for_stat, process, process_and_ancestors, slice_at, Awaited, DirEntry, Handle, Handles,
    OpenFile,
};
use crate::inodes::Inodes;
use crate::permissions;
use crate::render::{self, UserNames};
use crate::sandbox::{SandboxError, SandboxFiles, READ_TIMEOUT, SIZE_TIMEOUT};
use crate::tree::{self, Content, Kind, Node};

/// How long the kernel may cache attributes and entries: not at all, so `stat` and path
/// lookups always see the local copy as it is now.
const TTL: Duration = Duration::ZERO;

/// The largest write request the mount asks the kernel for (`max_write`, set in `init`).
pub const MAX_WRITE: u32 = 1 << 20;

/// The command-size limit when the negotiated one is not known: 1 MiB - 4 KiB.
pub const DEFAULT_COMMAND_LIMIT: usize = MAX_WRITE as usize - 4096;

/// How many pages a FUSE request may span when the kernel does not negotiate it
/// (no `FUSE_MAX_PAGES`): the kernel's `FUSE_DEFAULT_MAX_PAGES_PER_REQ`.
const DEFAULT_MAX_PAGES: u32 = 32;

/// The kernel's cap on pages per request when `/proc/sys/fs/fuse/max_pages_limit` cannot be
/// read (its default, and the fixed cap of kernels before the sysctl).
const DEFAULT_MAX_PAGES_LIMIT: u32 = 256;

/// The smallest write request to a control file that is refused (EFBIG): a request this large
/// may be a piece of a larger write(2) the kernel split (each piece is at most the negotiated
/// `max_write` and `max_pages` pages, the first one up to a page shorter when the buffer is
/// not page-aligned), and one write(2) must be one command.
pub fn command_limit(max_write: u32, max_pages: u32, page: usize) -> usize {
    let piece = (max_write as usize).min(max_pages as usize * page);
    piece.saturating_sub(page).max(1)
}

/// The system's page size.
fn page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page)
        .ok()
        .filter(|&p| p > 0)
        .unwrap_or(4096)
}

/// How many pages the kernel lets one request span on this session.
fn negotiated_max_pages(config: &KernelConfig) -> u32 {
    if !config.capabilities().contains(InitFlags::FUSE_MAX_PAGES) {
        return DEFAULT_MAX_PAGES;
    }
    std::fs::read_to_string("/proc/sys/fs/fuse/max_pages_limit")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|&p| p > 0)
        .unwrap_or(DEFAULT_MAX_PAGES_LIMIT)
}

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
    /// Connections to agents for stdout/stderr.
    pub sandbox: SandboxFiles,
    /// uid to user name.
    pub users: UserNames,
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
            client,
            copy,
            rt,
            inodes: Mutex::new(Inodes::default()),
            handles: Handles::default(),
            sandbox: SandboxFiles::default(),
            users: UserNames::default(),
            events: EventStreams::default(),
            unmounting: AtomicBool::new(false),
            started: SystemTime::now(),
            command_limit: AtomicUsize::new(DEFAULT_COMMAND_LIMIT),
            last_lookup: Mutex::new(HashMap::new()),
        }
    }

    fn last_lookup(&self) -> std::sync::MutexGuard<'_, HashMap<u32, u64>> {
        self.last_lookup.lock().expect("last lookup lock")
    }

    /// Sends a command for the caller `pid` (see [`commands::send`]). Only a caller being
    /// killed ends the wait early (EINTR, and the command may still take effect): a caller
    /// that lives on gets the command's real outcome.
    pub async fn send(&self, pid: u32, uid: u32, gid: u32, op: Op) -> Result<(), WriteError> {
        let sending = commands::send(&self.client, &self.copy, uid, gid, op);
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

    fn inodes(&self) -> std::sync::MutexGuard<'_, Inodes> {
        self.inodes.lock().expect("inodes lock")
    }

    /// The node of an inode number, if it was given out and not swept.
    pub fn node(&self, ino: INodeNo) -> Option<Node> {
        self.inodes().node(ino.0)
    }

    /// The attributes of a node as the view has it; `size` only for sandbox files, whose size
    /// is not in the view.
    pub fn attr(&self, view: &View, node: &Node, ino: u64, sandbox_size: u64) -> FileAttr {
        let (uid, gid) = node.owner(view);
        let (kind, size, nlink) = match node.kind() {
            Kind::Dir => {
                let subdirs = node
                    .children(view)
                    .iter()
                    .filter(|(_, c)| c.kind() == Kind::Dir)
                    .count();
                (FileType::Directory, 0, 2 + subdirs as u32)
            }
            Kind::Symlink => (
                FileType::Symlink,
                render::link_target(view, node).map_or(0, |t| t.len() as u64),
                1,
            ),
            Kind::File => {
                let size = match node.content() {
                    Content::Rendered => {
                        render::render(view, node, &self.users).map_or(0, |t| t.len() as u64)
                    }
                    Content::Sandbox { .. } => sandbox_size,
                    // Grows as lines come: tail -f polls it (see `events`).
                    Content::Events { framework_id } => self.events.size(view, &framework_id),
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
    fn time_of(&self, view: &View, node: &Node) -> SystemTime {
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

/// Where a sandbox file lives: the agent's Files address, the task id and the file name.
struct SandboxTarget {
    address: String,
    task_id: String,
    file: &'static str,
}

fn sandbox_target(view: &View, task_id: &str, file: &'static str) -> Option<SandboxTarget> {
    let task = view.state.tasks.get(task_id)?;
    let agent = view.state.agents.get(&task.agent_id)?;
    Some(SandboxTarget {
        address: agent.address.clone(),
        task_id: task_id.to_string(),
        file,
    })
}

/// An entry or attribute reply, answered the same way.
enum AttrReply {
    Entry(ReplyEntry),
    Attr(ReplyAttr),
}

impl AttrReply {
    fn send(self, attr: &FileAttr) {
        match self {
            AttrReply::Entry(r) => r.entry(&TTL, attr, Generation(0)),
            AttrReply::Attr(r) => r.attr(&TTL, attr),
        }
    }
}

/// The filesystem fuser runs.
pub struct MesoFs {
    shared: Arc<Shared>,
}

impl MesoFs {
    /// A filesystem over shared state.
    pub fn new(shared: Arc<Shared>) -> MesoFs {
        MesoFs { shared }
    }

    fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.shared.rt.spawn(fut);
    }

    /// Answers with a node's attributes; a sandbox file's size is asked of its agent on the
    /// runtime first.
    fn answer_attr(&self, view: &View, node: &Node, ino: u64, reply: AttrReply) {
        let attr = self.shared.attr(view, node, ino, 0);
        let target = match node.content() {
            Content::Sandbox { task_id, file } if node.kind() == Kind::File => {
                sandbox_target(view, &task_id, file)
            }
            _ => None,
        };
        let Some(target) = target else {
            reply.send(&attr);
            return;
        };
        let shared = self.shared.clone();
        self.spawn(async move {
            let mut attr = attr;
            match shared
                .sandbox
                .read(
                    &target.address,
                    &target.task_id,
                    target.file,
                    0,
                    0,
                    SIZE_TIMEOUT,
                )
                .await
            {
                Ok(r) => {
                    attr.size = r.size;
                    attr.blocks = r.size.div_ceil(512);
                }
                Err(e) => {
                    debug!(task = %target.task_id, error = %e, "sandbox size unknown; showing 0")
                }
            }
            reply.send(&attr);
        });
    }

    /// The node of a parent directory and the child's name, or the errno.
    fn parent_and_name<'a>(
        &self,
        parent: INodeNo,
        name: &'a OsStr,
    ) -> Result<(Node, &'a str), i32> {
        let node = self.shared.node(parent).ok_or(libc::ENOENT)?;
        let name = name.to_str().ok_or(libc::ENOENT)?;
        Ok((node, name))
    }
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl Filesystem for MesoFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // 1 MiB requests at most (fuser would ask 16 MiB): known, and what the kernel's default
        // page cap gives anyway.
        let max_write = match config.set_max_write(MAX_WRITE) {
            Ok(_) => MAX_WRITE,
            Err(nearest) => {
                let _ = config.set_max_write(nearest);
                nearest
            }
        };
        let limit = command_limit(max_write, negotiated_max_pages(config), page_size());
        self.shared.command_limit.store(limit, Ordering::Relaxed);
        info!(
            max_write,
            command_limit = limit,
            "mesofs filesystem initialised"
        );
        Ok(())
    }

    fn destroy(&mut self) {
        self.shared.unmounting.store(true, Ordering::Relaxed);
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (parent, name) = match self.parent_and_name(parent, name) {
            Ok(x) => x,
            Err(e) => return reply.error(errno(e)),
        };
        let view = self.shared.copy.view();
        if parent.kind() != Kind::Dir {
            return reply.error(Errno::ENOTDIR);
        }
        let Some(child) = parent.child(&view, name) else {
            return reply.error(Errno::ENOENT);
        };
        let ino = {
            let mut inodes = self.shared.inodes();
            let ino = inodes.ino(&child);
            inodes.looked_up(ino);
            ino
        };
        {
            let mut last = self.shared.last_lookup();
            // Threads that looked up and left: forget them now and then.
            if last.len() >= 4096 {
                last.clear();
            }
            last.insert(req.pid(), ino);
        }
        self.answer_attr(&view, &child, ino, AttrReply::Entry(reply));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let view = self.shared.copy.view();
        self.shared
            .inodes()
            .forget(ino.0, nlookup, |n| n.exists(&view));
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let path_stat = self.shared.last_lookup().remove(&req.pid()) == Some(ino.0);
        let node = self.shared.node(ino);
        let view = self.shared.copy.view();
        let exists = node.as_ref().is_some_and(|n| n.exists(&view));
        // An open file answers for itself: its snapshot's size (what its reads give), and its
        // attributes after its node vanished (an open fd stays fstat-able). The kernel gives
        // the handle only for some calls (lseek SEEK_END); fstat comes without one, so the
        // open is found by inode and calling process.
        let open = match fh.and_then(|fh| self.shared.handles.file(fh.0)) {
            Some(f) => Some(f),
            None => {
                let files = self.shared.handles.files_of(ino.0);
                // Only a snapshot, or a node that is gone, needs the caller (a /proc read):
                // `tail -f events` fstats often.
                if files.is_empty() || (exists && !files.iter().any(|f| f.snapshot)) {
                    None
                } else {
                    let callers = process_and_ancestors(req.pid());
                    open_for_stat(&files, &callers, exists, path_stat).cloned()
                }
            }
        };
        match (open, node) {
            (Some(f), node) if f.snapshot || !exists => {
                let mut attr = f.attr;
                // A gone framework's events file keeps its size (tail -f must not see it
                // shrink to what it was at open).
                if let Some(Content::Events { framework_id }) = node.map(|n| n.content()) {
                    attr.size = self.shared.events.size(&view, &framework_id);
                    attr.blocks = attr.size.div_ceil(512);
                }
                reply.attr(&TTL, &attr);
            }
            (_, Some(node)) if exists => {
                self.answer_attr(&view, &node, ino.0, AttrReply::Attr(reply))
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(node) = self.shared.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let view = self.shared.copy.view();
        if !node.exists(&view) {
            return reply.error(Errno::ENOENT);
        }
        if mode.is_some() || uid.is_some() || gid.is_some() {
            return reply.error(Errno::EPERM);
        }
        // Times are not kept, but who may set them is checked as on any filesystem: the owner
        // (or root) any time, others not at all (they cannot write these files), so a
        // stranger's `touch` fails instead of seeming to work.
        let times = [atime, mtime];
        if times.iter().any(Option::is_some) && !permissions::owns(&view, &node, req.uid()) {
            let explicit = times
                .iter()
                .any(|t| matches!(t, Some(TimeOrNow::SpecificTime(_))));
            return reply.error(if explicit {
                Errno::EPERM
            } else {
                Errno::EACCES
            });
        }
        // `echo x > kill` truncates before it writes: a no-op on control files.
        if size.is_some() {
            if let Err(e) = permissions::check_open(&view, &node, req.uid(), false, true) {
                return reply.error(errno(e));
            }
        }
        self.answer_attr(&view, &node, ino.0, AttrReply::Attr(reply));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let Some(node) = self.shared.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let view = self.shared.copy.view();
        match render::link_target(&view, &node) {
            Some(target) => reply.data(target.as_bytes()),
            None if node.exists(&view) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let (parent, name) = match self.parent_and_name(parent, name) {
            Ok(x) => x,
            Err(e) => return reply.error(errno(e)),
        };
        {
            let view = self.shared.copy.view();
            if !parent.exists(&view) {
                return reply.error(Errno::ENOENT);
            }
            if parent.child(&view, name).is_some() {
                return reply.error(Errno::EEXIST);
            }
        }
        if parent != Node::Frameworks {
            return reply.error(Errno::EPERM);
        }
        if !tree::valid_framework_name(name) {
            info!(framework = %name, "mkdir refused: invalid framework name");
            return reply.error(Errno::EINVAL);
        }
        let (uid, gid, pid) = (req.uid(), req.gid(), req.pid());
        let name = name.to_string();
        let shared = self.shared.clone();
        self.spawn(async move {
            let op = commands::register(&name);
            if let Err(e) = shared.send(pid, uid, gid, op).await {
                return reply.error(errno(e.errno));
            }
            let view = shared.copy.view();
            let Some(fw) = view.state.framework_by_name(&name) else {
                warn!(framework = %name, "registered, but not in the local copy");
                return reply.error(Errno::EIO);
            };
            info!(framework = %name, framework_id = %fw.id, uid, "framework registered");
            let node = Node::Framework(fw.id.clone());
            let ino = {
                let mut inodes = shared.inodes();
                let ino = inodes.ino(&node);
                inodes.looked_up(ino);
                ino
            };
            let attr = shared.attr(&view, &node, ino, 0);
            drop(view);
            reply.entry(&TTL, &attr, Generation(0));
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (parent, name) = match self.parent_and_name(parent, name) {
            Ok(x) => x,
            Err(e) => return reply.error(errno(e)),
        };
        let view = self.shared.copy.view();
        match parent.child(&view, name) {
            None => reply.error(Errno::ENOENT),
            Some(c) if c.kind() == Kind::Dir => reply.error(Errno::EISDIR),
            Some(_) => reply.error(Errno::EPERM),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (parent, name) = match self.parent_and_name(parent, name) {
            Ok(x) => x,
            Err(e) => return reply.error(errno(e)),
        };
        let uid = req.uid();
        {
            let view = self.shared.copy.view();
            let Some(child) = parent.child(&view, name) else {
                return reply.error(Errno::ENOENT);
            };
            if child.kind() != Kind::Dir {
                return reply.error(Errno::ENOTDIR);
            }
            if parent != Node::Frameworks {
                return reply.error(Errno::EPERM);
            }
            if !permissions::may_remove(&view, &child, uid) {
                info!(framework = %name, uid, "rmdir refused: not the owner");
                return reply.error(Errno::EACCES);
            }
        }
        let name = name.to_string();
        let (gid, pid) = (req.gid(), req.pid());
        let shared = self.shared.clone();
        self.spawn(async move {
            let op = commands::teardown(&name);
            match shared.send(pid, uid, gid, op).await {
                Ok(()) => {
                    info!(framework = %name, uid, "framework torn down");
                    reply.ok()
                }
                Err(e) => reply.error(errno(e.errno)),
            }
        });
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EPERM);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(node) = self.shared.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let view = self.shared.copy.view();
        if !node.exists(&view) {
            return reply.error(Errno::ENOENT);
        }
        let (read, write) = match flags.acc_mode() {
            OpenAccMode::O_RDONLY => (true, false),
            OpenAccMode::O_WRONLY => (false, true),
            OpenAccMode::O_RDWR => (true, true),
        };
        if let Err(e) = permissions::check_open(&view, &node, req.uid(), read, write) {
            debug!(?node, uid = req.uid(), write, "open refused");
            return reply.error(errno(e));
        }
        // The lookup before this open was not a stat: a getattr after it is an fstat.
        self.shared.last_lookup().remove(&req.pid());
        // Direct I/O everywhere: every read reaches us, so no page cache can serve a stale
        // version, and a read returns exactly what the open's content holds.
        let open_flags = FopenFlags::FOPEN_DIRECT_IO;
        let mut attr = self.shared.attr(&view, &node, ino.0, 0);
        let mut snapshot = false;
        let handle = match node.content() {
            Content::Rendered => {
                let text = render::render(&view, &node, &self.shared.users).unwrap_or_default();
                attr.size = text.len() as u64;
                attr.blocks = attr.size.div_ceil(512);
                snapshot = true;
                Handle::Content(Arc::from(text.into_bytes()))
            }
            Content::Control => Handle::Control(node.clone()),
            Content::Events { framework_id } => {
                let cursor = self.shared.events.open(&view, &framework_id);
                Handle::Events {
                    framework_id,
                    cursor: Mutex::new(cursor),
                }
            }
            Content::NextOffer { framework_id } => Handle::Answer {
                wait: Awaited::NextOffer(framework_id),
                answer: Mutex::new(None),
            },
            Content::Wait { task_id } => Handle::Answer {
                wait: Awaited::TaskEnd(task_id),
                answer: Mutex::new(None),
            },
            Content::Sandbox { task_id, file } => Handle::Sandbox { task_id, file },
        };
        drop(view);
        // Only a snapshot's fstat depends on who opened it; other opens skip the /proc read.
        let opener = if snapshot { process(req.pid()) } else { 0 };
        let file = OpenFile {
            ino: ino.0,
            opener,
            attr,
            snapshot,
        };
        let fh = self.shared.handles.insert_file(handle, file);
        reply.opened(FileHandle(fh), open_flags);
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(handle) = self.shared.handles.get(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        // O_NONBLOCK readers (tail -f sets it) get EAGAIN instead of a wait.
        let wait = Waiting {
            pid: req.pid(),
            nonblocking: flags.0 & libc::O_NONBLOCK != 0,
        };
        match &*handle {
            Handle::Content(data) => reply.data(slice_at(data, offset, size)),
            Handle::Control(_) => reply.data(&[]),
            Handle::Dir(_) => reply.error(Errno::EISDIR),
            Handle::Answer { answer, .. } => {
                if let Some(a) = answer.lock().expect("answer lock").clone() {
                    return reply.data(slice_at(&a, offset, size));
                }
                let shared = self.shared.clone();
                self.spawn(
                    async move { read_answer(shared, handle, wait, offset, size, reply).await },
                );
            }
            Handle::Events { .. } => {
                let shared = self.shared.clone();
                self.spawn(
                    async move { read_events(shared, handle, wait, offset, size, reply).await },
                );
            }
            Handle::Sandbox { .. } => {
                let shared = self.shared.clone();
                self.spawn(async move { read_sandbox(shared, handle, offset, size, reply).await });
            }
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(handle) = self.shared.handles.get(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let Handle::Control(node) = &*handle else {
            return reply.error(Errno::EBADF);
        };
        let limit = self.shared.command_limit.load(Ordering::Relaxed);
        if data.len() >= limit {
            // Maybe the first piece of a write(2) the kernel split: refusing it fails the whole
            // write with nothing applied, where accepting it would apply a part.
            let message = format!(
                "write too large: a write(2) to a control file must be under {limit} bytes, this one reached the mount with {} bytes or more; nothing was applied",
                data.len()
            );
            let framework_id = node.framework_id().unwrap_or_default();
            info!(framework_id, ?node, errno = libc::EFBIG, reason = %message, "write refused");
            commands::record_refusal(&self.shared.copy, framework_id, &message);
            return reply.error(Errno::from_i32(libc::EFBIG));
        }
        let op = {
            let view = self.shared.copy.view();
            commands::control_op(&view, node, data)
        };
        let op = match op {
            Ok(op) => op,
            Err(e) => {
                info!(framework_id = node.framework_id().unwrap_or_default(), ?node, errno = e.errno, reason = %e.message, "write refused");
                return reply.error(errno(e.errno));
            }
        };
        let len = data.len() as u32;
        let (uid, gid, pid) = (req.uid(), req.gid(), req.pid());
        let shared = self.shared.clone();
        self.spawn(async move {
            match shared.send(pid, uid, gid, op).await {
                Ok(()) => reply.written(len),
                Err(e) => reply.error(errno(e.errno)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.shared.handles.remove(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let Some(node) = self.shared.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let view = self.shared.copy.view();
        if !node.exists(&view) {
            return reply.error(Errno::ENOENT);
        }
        if node.kind() != Kind::Dir {
            return reply.error(Errno::ENOTDIR);
        }
        // The listing is taken once per opendir, so a directory read in several calls while
        // offers come and go neither skips nor repeats entries.
        let children = node.children(&view);
        let mut inodes = self.shared.inodes();
        let parent_ino = inodes.ino(&node.parent());
        let mut entries = vec![
            DirEntry {
                ino: ino.0,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirEntry {
                ino: parent_ino,
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        for (name, child) in children {
            entries.push(DirEntry {
                ino: inodes.ino(&child),
                kind: match child.kind() {
                    Kind::Dir => FileType::Directory,
                    Kind::File => FileType::RegularFile,
                    Kind::Symlink => FileType::Symlink,
                },
                name,
            });
        }
        inodes.sweep_if_grown(|n| n.exists(&view));
        drop(inodes);
        drop(view);
        let fh = self.shared.handles.insert(Handle::Dir(entries));
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(handle) = self.shared.handles.get(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let Handle::Dir(entries) = &*handle else {
            return reply.error(Errno::ENOTDIR);
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in entries.iter().enumerate().skip(start) {
            if reply.add(INodeNo(e.ino), (i + 1) as u64, e.kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.shared.handles.remove(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(errno(libc::ENODATA));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let Some(node) = self.shared.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let view = self.shared.copy.view();
        if !node.exists(&view) {
            return reply.error(Errno::ENOENT);
        }
        match permissions::check_access(&view, &node, req.uid(), mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let exists = self
            .shared
            .node(parent)
            .is_some_and(|p| p.exists(&self.shared.copy.view()));
        reply.error(if exists { Errno::EPERM } else { Errno::ENOENT });
    }
}

fn interrupted_errno(e: Interrupted) -> Errno {
    errno(e.errno())
}

/// A read of `offers/next` or `wait`: waits for the answer, keeps it for the open, and
/// answers from it at the read's offset.
async fn read_answer(
    shared: Arc<Shared>,
    handle: Arc<Handle>,
    waiting: Waiting,
    offset: u64,
    size: u32,
    reply: ReplyData,
) {
    let Handle::Answer { wait, answer } = &*handle else {
        return reply.error(Errno::EBADF);
    };
    let found = blocking::wait_for(
        &shared.copy,
        &shared.unmounting,
        waiting,
        |view| match wait {
            Awaited::NextOffer(f) => match render::next_offer(view, f) {
                Some(o) => Some(Ok(format!("{}\n", o.id))),
                None if tree::active_framework(view, f).is_none() => Some(Err(libc::ENOENT)),
                None => None,
            },
            Awaited::TaskEnd(t) => match render::wait_result(view, t) {
                Some(text) => Some(Ok(text)),
                None if !view.state.tasks.contains_key(t) => Some(Err(libc::ENOENT)),
                None => None,
            },
        },
    )
    .await;
    match found {
        Ok(Ok(text)) => {
            // Two reads racing on one open agree on the first answer found.
            let data = answer
                .lock()
                .expect("answer lock")
                .get_or_insert_with(|| Arc::from(text.into_bytes()))
                .clone();
            reply.data(slice_at(&data, offset, size));
        }
        Ok(Err(e)) => reply.error(errno(e)),
        Err(e) => {
            debug!(?wait, pid = waiting.pid, reason = %e, "held read ended");
            reply.error(interrupted_errno(e));
        }
    }
}

/// A read of `events`: the next lines, waiting for one if there is none; end of stream once
/// the framework is torn down.
async fn read_events(
    shared: Arc<Shared>,
    handle: Arc<Handle>,
    waiting: Waiting,
    offset: u64,
    size: u32,
    reply: ReplyData,
) {
    let Handle::Events {
        framework_id,
        cursor,
    } = &*handle
    else {
        return reply.error(Errno::EBADF);
    };
    let found = blocking::wait_for(&shared.copy, &shared.unmounting, waiting, |view| {
        let mut cursor = cursor.lock().expect("cursor lock");
        shared
            .events
            .read(view, framework_id, &mut cursor, offset, size as usize)
    })
    .await;
    match found {
        Ok(data) => reply.data(&data),
        Err(e) => {
            debug!(framework_id = %framework_id, pid = waiting.pid, reason = %e, "events read ended");
            reply.error(interrupted_errno(e));
        }
    }
}

/// A read of `stdout`/`stderr` at an offset, from the task's agent.
async fn read_sandbox(
    shared: Arc<Shared>,
    handle: Arc<Handle>,
    offset: u64,
    size: u32,
    reply: ReplyData,
) {
    let Handle::Sandbox { task_id, file } = &*handle else {
        return reply.error(Errno::EBADF);
    };
    let target = sandbox_target(&shared.copy.view(), task_id, file);
    let Some(target) = target else {
        return reply.error(Errno::ENOENT);
    };
    match shared
        .sandbox
        .read(
            &target.address,
            &target.task_id,
            target.file,
            offset,
            u64::from(size),
            READ_TIMEOUT,
        )
        .await
    {
        Ok(r) => reply.data(slice_at(&r.data, 0, size)),
        Err(SandboxError::Refused { status, .. }) if status.code() == tonic::Code::NotFound => {
            reply.data(&[])
        }
        Err(e) => {
            warn!(task = %task_id, file, error = %e, "sandbox read failed");
            reply.error(Errno::EIO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_limit_is_a_page_under_the_largest_request() {
        assert_eq!(command_limit(MAX_WRITE, 256, 4096), DEFAULT_COMMAND_LIMIT);
        assert_eq!(command_limit(MAX_WRITE, 256, 4096), 1_044_480);
        // Without FUSE_MAX_PAGES requests span 32 pages: 128 KiB.
        assert_eq!(command_limit(MAX_WRITE, 32, 4096), 131_072 - 4096);
        assert_eq!(command_limit(64 * 1024, 256, 4096), 61_440);
    }
}
