//! Inode numbers: one per node, stable for as long as the node exists (and longer, while the
//! kernel still holds it), never reused for another node during the mount's lifetime.

use std::collections::HashMap;

use crate::tree::Node;

/// The inode number of `/`.
pub const ROOT_INO: u64 = 1;

struct Entry {
    node: Node,
    /// Lookups the kernel has not forgotten yet.
    lookups: u64,
}

/// The table of inode numbers given out.
pub struct Inodes {
    by_node: HashMap<Node, u64>,
    by_ino: HashMap<u64, Entry>,
    next: u64,
    /// Table size after the last sweep; the next sweep runs when it has doubled.
    swept_len: usize,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut inodes = Inodes {
            by_node: HashMap::new(),
            by_ino: HashMap::new(),
            next: ROOT_INO,
            swept_len: 0,
        };
        inodes.ino(&Node::Root);
        inodes
    }
}

impl Inodes {
    /// The inode number of a node, given out now if it has none yet.
    pub fn ino(&mut self, node: &Node) -> u64 {
        if let Some(&ino) = self.by_node.get(node) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_node.insert(node.clone(), ino);
        self.by_ino.insert(
            ino,
            Entry {
                node: node.clone(),
                lookups: 0,
            },
        );
        ino
    }

    /// The node an inode number was given to, unless it was swept.
    pub fn node(&self, ino: u64) -> Option<Node> {
        self.by_ino.get(&ino).map(|e| e.node.clone())
    }

    /// Counts one lookup reply the kernel will later forget.
    pub fn looked_up(&mut self, ino: u64) {
        if let Some(e) = self.by_ino.get_mut(&ino) {
            e.lookups += 1;
        }
    }

    /// The kernel forgot `n` lookups; a node that no longer exists and is no longer held is
    /// dropped from the table.
    pub fn forget(&mut self, ino: u64, n: u64, exists: impl Fn(&Node) -> bool) {
        let Some(e) = self.by_ino.get_mut(&ino) else {
            return;
        };
        e.lookups = e.lookups.saturating_sub(n);
        if e.lookups == 0 && ino != ROOT_INO && !exists(&e.node) {
            let node = e.node.clone();
            self.by_ino.remove(&ino);
            self.by_node.remove(&node);
        }
    }

    /// Drops nodes that are gone and unheld once the table has doubled since the last sweep:
    /// readdir hands out numbers the kernel never forgets, and offers come and go forever.
    pub fn sweep_if_grown(&mut self, exists: impl Fn(&Node) -> bool) {
        if self.by_ino.len() < 2 * self.swept_len.max(512) {
            return;
        }
        let gone: Vec<u64> = self
            .by_ino
            .iter()
            .filter(|(&ino, e)| ino != ROOT_INO && e.lookups == 0 && !exists(&e.node))
            .map(|(&ino, _)| ino)
            .collect();
        for ino in gone {
            if let Some(e) = self.by_ino.remove(&ino) {
                self.by_node.remove(&e.node);
            }
        }
        self.swept_len = self.by_ino.len();
    }

    /// How many numbers are held.
    pub fn len(&self) -> usize {
        self.by_ino.len()
    }

    /// Whether the table is empty (never: `/` is always there).
    pub fn is_empty(&self) -> bool {
        self.by_ino.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_and_never_reused() {
        let mut t = Inodes::default();
        assert_eq!(t.ino(&Node::Root), ROOT_INO);
        let a = t.ino(&Node::Agents);
        assert_eq!(t.ino(&Node::Agents), a);
        let f = t.ino(&Node::Framework("f-1".into()));
        t.looked_up(f);
        // Still held by the kernel: kept even though gone.
        t.forget(f, 0, |_| false);
        assert_eq!(t.node(f), Some(Node::Framework("f-1".into())));
        t.forget(f, 1, |_| false);
        assert_eq!(t.node(f), None);
        let again = t.ino(&Node::Framework("f-1".into()));
        assert!(again > f, "a number is never given out twice");
    }

    #[test]
    fn sweeping_drops_only_gone_unheld_nodes() {
        let mut t = Inodes::default();
        let held = t.ino(&Node::Offer("f".into(), "held".into()));
        t.looked_up(held);
        for i in 0..2000 {
            t.ino(&Node::Offer("f".into(), format!("o{i}")));
        }
        let live = t.ino(&Node::Offer("f".into(), "o7".into()));
        t.sweep_if_grown(|n| *n == Node::Offer("f".into(), "o7".into()));
        assert_eq!(t.node(live), Some(Node::Offer("f".into(), "o7".into())));
        assert!(t.node(held).is_some());
        assert_eq!(t.len(), 3);
    }
}
