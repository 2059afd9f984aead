//! Who may do what. The mount runs without `default_permissions`, so these checks are the
//! only ones: they follow the mode bits the tree shows, with root allowed everything the
//! files can do, and writing a file that has no write meaning refused to everyone. Reading a
//! task's `stdout`/`stderr` is for its framework's owner (and root).

use mesofs_kernel::watch::View;

use crate::tree::{Kind, Node};
use crate::users::Users;

/// Whether `uid` counts as the owner of a node (root always does).
pub fn owns(view: &View, users: &Users, node: &Node, uid: u32) -> bool {
    uid == 0 || node.owner(view, users).0 == uid
}

/// The errno for opening a file for reading and/or writing, if refused.
pub fn check_open(
    view: &View,
    users: &Users,
    node: &Node,
    uid: u32,
    read: bool,
    write: bool,
) -> Result<(), i32> {
    match node.kind() {
        Kind::Dir if write => return Err(libc::EISDIR),
        Kind::Dir | Kind::Symlink => return Ok(()),
        Kind::File => {}
    }
    if write {
        if !node.writable() {
            return Err(libc::EACCES);
        }
        if !owns(view, users, node, uid) {
            return Err(libc::EACCES);
        }
    }
    if read && !node.readable() && uid != 0 {
        return Err(libc::EACCES);
    }
    // Readable by others only when the mode says so (a task's output is its owner's).
    if read && node.mode() & 0o004 == 0 && !owns(view, users, node, uid) {
        return Err(libc::EACCES);
    }
    Ok(())
}

/// The errno for `access(2)` with `R_OK`/`W_OK`/`X_OK` bits, if refused.
pub fn check_access(
    view: &View,
    users: &Users,
    node: &Node,
    uid: u32,
    mask: i32,
) -> Result<(), i32> {
    let read = mask & libc::R_OK != 0;
    let write = mask & libc::W_OK != 0;
    let exec = mask & libc::X_OK != 0;
    match node.kind() {
        Kind::Dir => {
            // Anyone may mkdir in /frameworks; elsewhere only the owner "writes" a directory.
            if write && *node != Node::Frameworks && !owns(view, users, node, uid) {
                return Err(libc::EACCES);
            }
            Ok(())
        }
        Kind::Symlink => Ok(()),
        Kind::File => {
            if exec {
                return Err(libc::EACCES);
            }
            check_open(view, users, node, uid, read, write)
        }
    }
}

/// Whether `uid` may tear down (rmdir) this framework directory.
pub fn may_remove(view: &View, users: &Users, node: &Node, uid: u32) -> bool {
    owns(view, users, node, uid)
}
