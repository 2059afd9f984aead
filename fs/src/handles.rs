//! Open files and directories: what each open holds between its reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fuser::{FileAttr, FileType};

use crate::events::Cursor;
use crate::tree::Node;

/// What one open of a file holds.
pub enum Handle {
    /// A rendered file's content, fixed at open so that one open reads one version.
    Content(Arc<[u8]>),
    /// Nothing to read (a control file opened for writing, or by root for reading).
    Control(Node),
    /// `events` or `events_pipe`: this open's cursor.
    Events {
        /// The framework's id.
        framework_id: String,
        /// True for `events_pipe`: a read at the end waits for more.
        blocking: bool,
        /// Where the next sequential read continues.
        cursor: Mutex<Cursor>,
    },
    /// `offers/next` or `wait`: the answer, once found, stays this open's answer.
    Answer {
        /// What is waited for.
        wait: Awaited,
        /// The answer once known.
        answer: Mutex<Option<Arc<[u8]>>>,
    },
    /// `stdout`/`stderr`: read from the agent at each read's offset.
    Sandbox {
        /// The task's cluster-unique id.
        task_id: String,
        /// `stdout` or `stderr`.
        file: &'static str,
    },
    /// An open directory: its entries as they were at `opendir`.
    Dir(Vec<DirEntry>),
}

/// What an answer file waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Awaited {
    /// An offer to this framework id.
    NextOffer(String),
    /// This task id to be terminal.
    TaskEnd(String),
}

/// One entry of a directory listing.
#[derive(Clone, Debug)]
pub struct DirEntry {
    /// Its inode number.
    pub ino: u64,
    /// Its kind.
    pub kind: FileType,
    /// Its name.
    pub name: String,
}

/// What an open file is, for `fstat`: Linux sends fstat as a getattr without the handle, so
/// the mount finds the open by its inode and the calling process.
#[derive(Clone, Debug)]
pub struct OpenFile {
    /// The inode opened.
    pub ino: u64,
    /// The process (thread group id) that opened it; 0 when unknown.
    pub opener: u32,
    /// The attributes at open; for a snapshot, those of the version this open reads.
    pub attr: FileAttr,
    /// Whether the content was fixed at open (a rendered file): then `attr` is the open's
    /// answer even while the node lives on in a newer version.
    pub snapshot: bool,
}

struct Entry {
    handle: Arc<Handle>,
    file: Option<OpenFile>,
}

/// The table of open handles, by the number given to the kernel.
#[derive(Default)]
pub struct Handles {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
}

impl Handles {
    fn store(&self, handle: Handle, file: Option<OpenFile>) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Entry {
            handle: Arc::new(handle),
            file,
        };
        self.open.lock().expect("handles lock").insert(fh, entry);
        fh
    }

    /// Stores a handle (of a directory) and returns its number.
    pub fn insert(&self, handle: Handle) -> u64 {
        self.store(handle, None)
    }

    /// Stores the handle of an open file with what `fstat` answers from; returns its number.
    pub fn insert_file(&self, handle: Handle, file: OpenFile) -> u64 {
        self.store(handle, Some(file))
    }

    /// The handle with this number.
    pub fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        self.open
            .lock()
            .expect("handles lock")
            .get(&fh)
            .map(|e| e.handle.clone())
    }

    /// The open file with this handle number.
    pub fn file(&self, fh: u64) -> Option<OpenFile> {
        self.open
            .lock()
            .expect("handles lock")
            .get(&fh)
            .and_then(|e| e.file.clone())
    }

    /// The open files of an inode, newest open first.
    pub fn files_of(&self, ino: u64) -> Vec<OpenFile> {
        let open = self.open.lock().expect("handles lock");
        let mut files: Vec<(u64, OpenFile)> = open
            .iter()
            .filter_map(|(&fh, e)| e.file.clone().map(|f| (fh, f)))
            .filter(|(_, f)| f.ino == ino)
            .collect();
        files.sort_by_key(|&(fh, _)| std::cmp::Reverse(fh));
        files.into_iter().map(|(_, f)| f).collect()
    }

    /// Forgets a handle (on release).
    pub fn remove(&self, fh: u64) {
        self.open.lock().expect("handles lock").remove(&fh);
    }

    /// How many handles are open.
    pub fn len(&self) -> usize {
        self.open.lock().expect("handles lock").len()
    }

    /// Whether no handle is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The part of `data` a read at `offset` of at most `size` bytes gets.
pub fn slice_at(data: &[u8], offset: u64, size: u32) -> &[u8] {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let end = start.saturating_add(size as usize).min(data.len());
    &data[start..end]
}

/// Which open answers a getattr that came without a handle, as `fstat` does on Linux, given
/// the inode's opens (newest first) and the calling process with its ancestors (an fd is
/// inherited: `exec 8<file; cat <&8`). `None`: answer from the node as it is now.
///
/// A stat by path (`path_stat`: the caller just looked the name up) of a live node gets the
/// current version. Otherwise the caller's own open of a snapshot answers, so fstat agrees with
/// what its reads give. A node that is gone can only be reached through an open (or a cwd):
/// any open answers then, the caller's first.
pub fn open_for_stat<'a>(
    files: &'a [OpenFile],
    callers: &[u32],
    node_exists: bool,
    path_stat: bool,
) -> Option<&'a OpenFile> {
    if node_exists && path_stat {
        return None;
    }
    let mine = files
        .iter()
        .find(|f| f.opener != 0 && callers.contains(&f.opener));
    if node_exists {
        mine.filter(|f| f.snapshot)
    } else {
        mine.or(files.first())
    }
}

/// A thread's process (thread group id) followed by its ancestors, from `/proc`; empty when
/// unknown (pid 0: a caller outside the mount's pid namespace). Stops before pid 1.
pub fn process_and_ancestors(pid: u32) -> Vec<u32> {
    let mut chain = Vec::new();
    let mut next = pid;
    // Deep enough for any shell nesting; bounded in case /proc changes under us.
    while next > 1 && chain.len() < 64 {
        let Some((tgid, ppid)) = process_of(next) else {
            break;
        };
        if chain.contains(&tgid) {
            break;
        }
        chain.push(tgid);
        next = ppid;
    }
    chain
}

/// A thread's process (thread group id), from one read of `/proc`; 0 when unknown.
pub fn process(pid: u32) -> u32 {
    if pid > 1 {
        process_of(pid).map_or(0, |(tgid, _)| tgid)
    } else {
        0
    }
}

/// A thread's thread group id and its parent's pid, from `/proc/<pid>/status`.
fn process_of(pid: u32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u32>().ok())
    };
    Some((field("Tgid:")?, field("PPid:").unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use fuser::INodeNo;

    use super::*;

    fn file(ino: u64, opener: u32, size: u64, snapshot: bool) -> OpenFile {
        OpenFile {
            ino,
            opener,
            attr: FileAttr {
                ino: INodeNo(ino),
                size,
                blocks: 0,
                atime: UNIX_EPOCH,
                mtime: UNIX_EPOCH,
                ctime: UNIX_EPOCH,
                crtime: UNIX_EPOCH,
                kind: FileType::RegularFile,
                perm: 0o444,
                nlink: 1,
                uid: 0,
                gid: 0,
                rdev: 0,
                blksize: 4096,
                flags: 0,
            },
            snapshot,
        }
    }

    #[test]
    fn files_of_an_inode_come_newest_first_and_leave_on_release() {
        let h = Handles::default();
        let a = h.insert_file(Handle::Content(Arc::from(&b"ab"[..])), file(7, 10, 2, true));
        h.insert(Handle::Dir(Vec::new()));
        let b = h.insert_file(
            Handle::Content(Arc::from(&b"abc"[..])),
            file(7, 11, 3, true),
        );
        h.insert_file(Handle::Content(Arc::from(&b"x"[..])), file(8, 10, 1, true));
        let sizes: Vec<u64> = h.files_of(7).iter().map(|f| f.attr.size).collect();
        assert_eq!(sizes, [3, 2]);
        assert_eq!(h.file(a).map(|f| f.attr.size), Some(2));
        h.remove(b);
        assert_eq!(h.files_of(7).len(), 1);
    }

    #[test]
    fn fstat_without_a_handle_answers_from_the_callers_snapshot_and_path_stat_from_the_node() {
        let files = [file(7, 20, 1011, true), file(7, 10, 736, true)];
        // The opener (or a child that inherited its fd) fstats: the version it reads.
        let of = |callers: &[u32], exists, path| {
            open_for_stat(&files, callers, exists, path).map(|f| f.attr.size)
        };
        assert_eq!(of(&[10], true, false), Some(736));
        assert_eq!(of(&[30, 10, 5], true, false), Some(736));
        // A stat by path, or a process without an open: the current version.
        assert_eq!(of(&[10], true, true), None);
        assert_eq!(of(&[30], true, false), None);
        // Gone: any open answers (the caller's first), even for a stat that looked it up.
        assert_eq!(of(&[10], false, true), Some(736));
        assert_eq!(of(&[30], false, false), Some(1011));
        assert_eq!(of(&[], false, false), Some(1011));
        assert!(open_for_stat(&[], &[10], false, false).is_none());
        // An open that is not a snapshot (events, stdout) shows the node as it is while it lives.
        let events = [file(9, 10, 50, false)];
        assert!(open_for_stat(&events, &[10], true, false).is_none());
        assert_eq!(
            open_for_stat(&events, &[10], false, false).map(|f| f.attr.size),
            Some(50)
        );
    }

    #[test]
    fn the_process_chain_starts_at_the_callers_thread_group() {
        let me = std::process::id();
        let chain = process_and_ancestors(me);
        assert_eq!(chain.first(), Some(&me));
        assert!(chain.len() >= 2 || nix::unistd::getppid().as_raw() <= 1);
        assert!(process_and_ancestors(0).is_empty());
    }
}
