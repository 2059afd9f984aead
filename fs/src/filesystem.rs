//! The FUSE callbacks. Everything answerable from the local copy is answered on the session
//! thread at once; anything that waits (blocking reads, commands, sandbox reads, a running
//! task's usage) runs on the tokio runtime and replies from there, so the session thread never
//! blocks.

use std::ffi::OsStr;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use mesofs_kernel::watch::View;
use tracing::{debug, info, warn};

use crate::blocking::Waiting;
use crate::commands;
use crate::handles::{
    open_for_stat, process, process_and_ancestors, slice_at, Awaited, DirEntry, Handle, OpenFile,
};
use crate::permissions;
use crate::reads::{read_answer, read_events, read_sandbox};
use crate::render;
use crate::sandbox::SIZE_TIMEOUT;
use crate::shared::{sandbox_target, usage_target, Shared};
use crate::tree::{self, Content, Kind, Node};
use crate::write_limit::{command_limit, negotiated_max_pages, page_size, MAX_WRITE};

/// How long the kernel may cache attributes and entries: not at all, so `stat` and path
/// lookups always see the local copy as it is now.
const TTL: Duration = Duration::ZERO;

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

pub(crate) fn errno(e: i32) -> Errno {
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
                if let Some(Content::Events { framework_id, .. }) = node.map(|n| n.content()) {
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
        if times.iter().any(Option::is_some)
            && !permissions::owns(&view, &self.shared.users, &node, req.uid())
        {
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
            if let Err(e) =
                permissions::check_open(&view, &self.shared.users, &node, req.uid(), false, true)
            {
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
        // A framework belongs to a user name: its tasks run as that user on every agent.
        let Some(user) = self.shared.users.name(uid) else {
            info!(framework = %name, uid, "mkdir refused: the uid has no user name on this machine, and a framework belongs to a user name (its tasks run as that user on the agents)");
            return reply.error(Errno::EPERM);
        };
        let name = name.to_string();
        let shared = self.shared.clone();
        self.spawn(async move {
            let op = commands::register(&name, &user);
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
            if !permissions::may_remove(&view, &self.shared.users, &child, uid) {
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
        if let Err(e) =
            permissions::check_open(&view, &self.shared.users, &node, req.uid(), read, write)
        {
            debug!(?node, uid = req.uid(), write, "open refused");
            return reply.error(errno(e));
        }
        // The lookup before this open was not a stat: a getattr after it is an fstat.
        self.shared.last_lookup().remove(&req.pid());
        // Direct I/O everywhere: every read reaches us, so no page cache can serve a stale
        // version, and a read returns exactly what the open's content holds.
        let open_flags = FopenFlags::FOPEN_DIRECT_IO;
        if let Content::Measured { task_id } = node.content() {
            if let Some(address) = usage_target(&view, &task_id) {
                drop(view);
                let opener = process(req.pid());
                let shared = self.shared.clone();
                self.spawn(async move {
                    let usage = shared
                        .usages
                        .of(&shared.sandbox, &address, &task_id)
                        .await
                        .ok()
                        .flatten();
                    let view = shared.copy.view();
                    // Gone while its agent was asked.
                    let Some(text) = render::measured(&view, &node, usage.as_ref()) else {
                        return reply.error(Errno::ENOENT);
                    };
                    let mut attr = shared.attr(&view, &node, ino.0, 0);
                    attr.size = text.len() as u64;
                    attr.blocks = attr.size.div_ceil(512);
                    let file = OpenFile {
                        ino: ino.0,
                        opener,
                        attr,
                        snapshot: true,
                    };
                    let handle = Handle::Content(Arc::from(text.into_bytes()));
                    let fh = shared.handles.insert_file(handle, file);
                    reply.opened(FileHandle(fh), open_flags);
                });
                return;
            }
        }
        let mut attr = self.shared.attr(&view, &node, ino.0, 0);
        let mut snapshot = false;
        let handle = match node.content() {
            // A setting opened for writing takes commands; opened to read, it is rendered.
            Content::Setting if write => Handle::Control(node.clone()),
            // Measured files of a task not running have nothing to measure.
            Content::Rendered | Content::Setting | Content::Measured { .. } => {
                let text = render::render(&view, &node, &self.shared.users).unwrap_or_default();
                attr.size = text.len() as u64;
                attr.blocks = attr.size.div_ceil(512);
                snapshot = true;
                Handle::Content(Arc::from(text.into_bytes()))
            }
            Content::Control => Handle::Control(node.clone()),
            Content::Events {
                framework_id,
                blocking,
            } => {
                let cursor = self.shared.events.open(&view, &framework_id);
                Handle::Events {
                    framework_id,
                    blocking,
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
            Handle::Events {
                framework_id,
                blocking: false,
                cursor,
            } => {
                // A log file: what is there, or end-of-file; never a wait.
                let view = self.shared.copy.view();
                let mut cursor = cursor.lock().expect("cursor lock");
                let data = self
                    .shared
                    .events
                    .read(
                        &view,
                        framework_id,
                        &mut cursor,
                        offset,
                        size as usize,
                        false,
                    )
                    .unwrap_or_default();
                reply.data(&data)
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
        match permissions::check_access(&view, &self.shared.users, &node, req.uid(), mask.bits()) {
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
