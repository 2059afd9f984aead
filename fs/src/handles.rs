//! Open files and directories: what each open holds between its reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fuser::FileType;

use crate::events::Cursor;
use crate::tree::Node;

/// What one open of a file holds.
pub enum Handle {
    /// A rendered file's content, fixed at open so that one open reads one version.
    Content(Arc<[u8]>),
    /// Nothing to read (a control file opened for writing, or by root for reading).
    Control(Node),
    /// `events`: this open's cursor.
    Events {
        /// The framework's id.
        framework_id: String,
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

/// The table of open handles, by the number given to the kernel.
#[derive(Default)]
pub struct Handles {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Handle>>>,
}

impl Handles {
    /// Stores a handle and returns its number.
    pub fn insert(&self, handle: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.open
            .lock()
            .expect("handles lock")
            .insert(fh, Arc::new(handle));
        fh
    }

    /// The handle with this number.
    pub fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        self.open.lock().expect("handles lock").get(&fh).cloned()
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
