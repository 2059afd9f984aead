//! Hierarchical dominant resource fairness: in which order roles, and each role's frameworks,
//! are offered resources.
//!
//! Roles are paths (`eng/web`) forming a tree under an unnamed root. A node's share is its
//! dominant share (the largest fraction of any scalar resource of the cluster that the node and
//! everything under it hold) divided by its weight. At each node the entries are its child roles
//! and, when frameworks are in the role itself, the role's own frameworks taken together (as
//! Mesos's virtual `.` leaf), sorted by share, least first, ties by name. Within a role,
//! frameworks are sorted by their own dominant share in that role.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use smallvec::SmallVec;

use crate::resources::{split_key, Resources, Scalar, Value};

/// A role's weight when none was set.
pub const DEFAULT_WEIGHT: f64 = 1.0;

/// The root of the role tree: its node number.
const ROOT: usize = 0;

/// One node of the role tree: a role, what its frameworks hold in it, and its place in the
/// tree by node number (a walk runs once per offer a pass plans: it follows numbers, not names).
#[derive(Clone, Debug, Default)]
struct Node {
    /// The role's path ("" for the root).
    name: String,
    /// The node above (`None` for the root).
    parent: Option<usize>,
    /// The child roles' nodes.
    children: Vec<usize>,
    /// Its weight.
    weight: Option<f64>,
    /// Its frameworks, by slot: the name, and what it holds in the role (offered or allocated).
    clients: Vec<(Arc<str>, Amounts)>,
    /// The slot of each framework, by id.
    slots: HashMap<Arc<str>, usize>,
    /// Its frameworks by dominant share, least first (kept as allocations change).
    sorted: BTreeSet<(Share, Arc<str>)>,
    /// What its frameworks hold together.
    total: Amounts,
    /// What it and every role under it hold (kept as allocations change, so that a role's
    /// share costs no sum over the roles at every step of a walk).
    subtree: Amounts,
}

/// Scalar amounts, however reserved, by the sorter's index of resource names (names past the
/// end hold zero). Shares and quotas count only these, and a pass changes them once per offer
/// and per holding: as a short inline vector they add and subtract without allocating.
#[derive(Clone, Debug, Default, PartialEq)]
struct Amounts(SmallVec<[Scalar; 6]>);

impl Amounts {
    fn get(&self, i: usize) -> Scalar {
        self.0.get(i).copied().unwrap_or_default()
    }

    fn add(&mut self, other: &Amounts) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), Scalar::default());
        }
        for (mine, s) in self.0.iter_mut().zip(&other.0) {
            *mine = mine.saturating_add(*s);
        }
    }

    /// Less `other`, down to zero.
    fn sub(&mut self, other: &Amounts) {
        for (mine, s) in self.0.iter_mut().zip(&other.0) {
            *mine = mine.checked_sub(*s).unwrap_or_default();
        }
    }
}

/// The DRF order of a cluster's roles and frameworks.
#[derive(Clone, Debug)]
pub struct Sorter {
    /// The resource names amounts are indexed by, in the order first seen.
    names: Vec<String>,
    total: Amounts,
    /// The role tree's nodes: the root first, then every role, and every role above one, in
    /// the order first seen.
    nodes: Vec<Node>,
    /// Each role's node number, by path.
    numbers: HashMap<String, usize>,
}

impl Default for Sorter {
    fn default() -> Sorter {
        Sorter {
            names: Vec::new(),
            total: Amounts::default(),
            nodes: vec![Node::default()],
            numbers: HashMap::from([(String::new(), ROOT)]),
        }
    }
}

/// A share, ordered (NaN never arises: totals of zero give share 0).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Share(f64);

impl Eq for Share {}

impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Share {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The roles that hold `role`: `eng/web` is under `eng`.
pub fn ancestors(role: &str) -> impl Iterator<Item = &str> {
    role.match_indices('/').map(move |(i, _)| &role[..i])
}

/// Whether `role` is `of` or under it.
pub fn is_within(role: &str, of: &str) -> bool {
    role == of || (role.starts_with(of) && role.as_bytes().get(of.len()) == Some(&b'/'))
}

/// The dominant share of `held` in `total`: the largest fraction of any scalar.
fn dominant(total: &Amounts, held: &Amounts) -> f64 {
    held.0
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let t = total.get(i);
            if t.is_zero() {
                0.0
            } else {
                s.milli() as f64 / t.milli() as f64
            }
        })
        .fold(0.0, f64::max)
}

impl Sorter {
    /// An empty sorter.
    pub fn new() -> Sorter {
        Sorter::default()
    }

    /// The scalars of `r` as amounts, indexing names not seen before.
    fn amounts(&mut self, r: &Resources) -> Amounts {
        let mut out = Amounts::default();
        for (key, v) in r.iter() {
            let Value::Scalar(s) = v else { continue };
            let name = split_key(key).0;
            let i = match self.names.iter().position(|n| n == name) {
                Some(i) => i,
                None => {
                    self.names.push(name.to_string());
                    self.names.len() - 1
                }
            };
            if out.0.len() <= i {
                out.0.resize(i + 1, Scalar::default());
            }
            out.0[i] = out.0[i].saturating_add(*s);
        }
        out
    }

    /// The scalars of `r` as amounts, leaving out names never seen (no one holds any of them).
    fn known_amounts(&self, r: &Resources) -> Amounts {
        let mut out = Amounts(SmallVec::from_elem(Scalar::default(), self.names.len()));
        for (key, v) in r.iter() {
            let Value::Scalar(s) = v else { continue };
            if let Some(i) = self.names.iter().position(|n| n == split_key(key).0) {
                out.0[i] = out.0[i].saturating_add(*s);
            }
        }
        out
    }

    /// Amounts as resources (unreserved scalars).
    fn resources(&self, a: &Amounts) -> Resources {
        a.0.iter()
            .zip(&self.names)
            .filter(|(s, _)| !s.is_zero())
            .fold(Resources::default(), |r, (s, name)| r.with_scalar(name, *s))
    }

    /// Sets the cluster's total resources (shares are fractions of it).
    pub fn set_total(&mut self, total: Resources) {
        self.total = self.amounts(&total);
        for node in &mut self.nodes {
            node.sorted = node
                .clients
                .iter()
                .map(|(f, h)| (Share(dominant(&self.total, h)), f.clone()))
                .collect();
        }
    }

    /// A role's node, if it was ever seen.
    fn node(&self, role: &str) -> Option<&Node> {
        self.numbers.get(role).map(|&n| &self.nodes[n])
    }

    /// A role's node number, made (with the nodes of the roles above it) when it is first
    /// seen.
    fn number(&mut self, role: &str) -> usize {
        if let Some(&n) = self.numbers.get(role) {
            return n;
        }
        let parent = match ancestors(role).last() {
            Some(above) => self.number(above),
            None => ROOT,
        };
        let n = self.nodes.len();
        self.nodes.push(Node {
            name: role.to_string(),
            parent: Some(parent),
            ..Node::default()
        });
        self.nodes[parent].children.push(n);
        self.numbers.insert(role.to_string(), n);
        n
    }

    /// A framework's slot in a role's node, made when it is first seen there.
    fn slot(&mut self, node: usize, framework: &str) -> usize {
        let node = &mut self.nodes[node];
        if let Some(&slot) = node.slots.get(framework) {
            return slot;
        }
        let name: Arc<str> = Arc::from(framework);
        let slot = node.clients.len();
        node.clients.push((name.clone(), Amounts::default()));
        node.slots.insert(name.clone(), slot);
        node.sorted.insert((Share(0.0), name));
        slot
    }

    /// Sets a role's weight (`None`: the default).
    pub fn set_weight(&mut self, role: &str, weight: Option<f64>) {
        let n = self.number(role);
        self.nodes[n].weight = weight;
    }

    /// A role's weight.
    pub fn weight(&self, role: &str) -> f64 {
        self.node(role)
            .and_then(|n| n.weight)
            .unwrap_or(DEFAULT_WEIGHT)
    }

    /// Adds a framework to a role (it is offered resources for that role).
    pub fn add_client(&mut self, role: &str, framework: &str) {
        let n = self.number(role);
        self.slot(n, framework);
    }

    /// Removes a framework from a role, with what it held there.
    pub fn remove_client(&mut self, role: &str, framework: &str) {
        let Some(&n) = self.numbers.get(role) else {
            return;
        };
        let node = &mut self.nodes[n];
        let Some(slot) = node.slots.remove(framework) else {
            return;
        };
        let (name, held) = node.clients.swap_remove(slot);
        if let Some((moved, _)) = node.clients.get(slot) {
            node.slots.insert(moved.clone(), slot);
        }
        node.sorted
            .remove(&(Share(dominant(&self.total, &held)), name));
        self.change_sums(n, |sum| sum.sub(&held));
    }

    /// Changes what node `n` holds, and the subtree sums of it and the nodes above it, with
    /// `f`.
    fn change_sums(&mut self, n: usize, f: impl Fn(&mut Amounts)) {
        f(&mut self.nodes[n].total);
        let mut at = Some(n);
        while let Some(i) = at {
            // The root's subtree is the cluster's: no share is taken of it.
            if i == ROOT {
                break;
            }
            f(&mut self.nodes[i].subtree);
            at = self.nodes[i].parent;
        }
    }

    /// Changes what a framework holds in a node with `f`, keeping the node's order.
    fn change(&mut self, n: usize, slot: usize, f: impl FnOnce(&mut Amounts)) {
        let total = &self.total;
        let node = &mut self.nodes[n];
        let (name, held) = &mut node.clients[slot];
        let before = Share(dominant(total, held));
        f(held);
        let after = Share(dominant(total, held));
        if before != after {
            let mut key = (before, name.clone());
            node.sorted.remove(&key);
            key.0 = after;
            node.sorted.insert(key);
        }
    }

    /// Counts `resources` as held by a framework in a role (offered or allocated).
    pub fn allocate(&mut self, role: &str, framework: &str, resources: &Resources) {
        let more = self.amounts(resources);
        let n = self.number(role);
        let slot = self.slot(n, framework);
        self.change(n, slot, |h| h.add(&more));
        self.change_sums(n, |sum| sum.add(&more));
    }

    /// No longer counts `resources` as held by a framework in a role.
    pub fn unallocate(&mut self, role: &str, framework: &str, resources: &Resources) {
        let Some(&n) = self.numbers.get(role) else {
            return;
        };
        let Some(&slot) = self.nodes[n].slots.get(framework) else {
            return;
        };
        let less = self.amounts(resources);
        let mut gone = self.nodes[n].clients[slot].1.clone();
        self.change(n, slot, |h| h.sub(&less));
        // What it held less what it holds now: no more than it had.
        gone.sub(&self.nodes[n].clients[slot].1);
        self.change_sums(n, |sum| sum.sub(&gone));
    }

    /// What a role and every role under it hold.
    pub fn held(&self, role: &str) -> Resources {
        self.node(role)
            .map(|n| self.resources(&n.subtree))
            .unwrap_or_default()
    }

    /// What one framework holds in one role.
    pub fn held_by(&self, role: &str, framework: &str) -> Resources {
        self.node(role)
            .and_then(|n| n.slots.get(framework).map(|&slot| &n.clients[slot].1))
            .map(|a| self.resources(a))
            .unwrap_or_default()
    }

    /// The dominant share of `held`: the largest fraction of any scalar of the total.
    pub fn dominant_share(&self, held: &Resources) -> f64 {
        dominant(&self.total, &self.known_amounts(held))
    }

    /// A role's weighted share: its subtree's dominant share over its weight.
    pub fn share(&self, role: &str) -> f64 {
        match self.numbers.get(role) {
            Some(&n) if n != ROOT => self.share_of(n),
            _ => 0.0,
        }
    }

    /// Node `n`'s weighted share.
    fn share_of(&self, n: usize) -> f64 {
        let node = &self.nodes[n];
        dominant(&self.total, &node.subtree) / node.weight.unwrap_or(DEFAULT_WEIGHT)
    }

    /// Every (role, framework) in DRF order: the first is offered to first.
    pub fn order(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.find_map(|role, fw| {
            out.push((role.to_string(), fw.to_string()));
            None::<()>
        });
        out
    }

    /// The first `f(role, framework)` that is `Some`, in DRF order; only as much of the order
    /// is walked as it takes.
    pub fn find_map<T>(&self, mut f: impl FnMut(&str, &str) -> Option<T>) -> Option<T> {
        self.walk(ROOT, &mut f)
    }

    /// Walks the order under node `n`.
    fn walk<T>(&self, n: usize, f: &mut impl FnMut(&str, &str) -> Option<T>) -> Option<T> {
        let node = &self.nodes[n];
        // The entries at this node: child roles, and the role's own frameworks as one (`.`,
        // no node number).
        let mut entries: SmallVec<[(Share, &str, Option<usize>); 16]> = node
            .children
            .iter()
            .map(|&c| {
                (
                    Share(self.share_of(c)),
                    self.nodes[c].name.as_str(),
                    Some(c),
                )
            })
            .collect();
        if !node.clients.is_empty() {
            let share = dominant(&self.total, &node.total) / node.weight.unwrap_or(DEFAULT_WEIGHT);
            entries.push((Share(share), ".", None));
        }
        // Taken least first: the first entry usually has a taker, so no more is sorted.
        while let Some(least) = (0..entries.len()).min_by(|&a, &b| {
            let (a, b) = (&entries[a], &entries[b]);
            (a.0, a.1).cmp(&(b.0, b.1))
        }) {
            let (_, _, child) = entries.swap_remove(least);
            let found = match child {
                Some(c) => self.walk(c, f),
                None => node.sorted.iter().find_map(|(_, fw)| f(&node.name, fw)),
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(text: &str) -> Resources {
        Resources::parse(text).unwrap()
    }

    fn sorter(total: &str) -> Sorter {
        let mut s = Sorter::new();
        s.set_total(r(total));
        s
    }

    #[test]
    fn the_framework_with_the_least_dominant_share_comes_first() {
        let mut s = sorter("cpus:10;mem:1000");
        for f in ["a", "b", "c"] {
            s.add_client("*", f);
        }
        s.allocate("*", "a", &r("cpus:1;mem:500")); // dominant: mem 0.5
        s.allocate("*", "b", &r("cpus:3;mem:100")); // dominant: cpus 0.3
        let order: Vec<String> = s.order().into_iter().map(|(_, f)| f).collect();
        assert_eq!(order, ["c", "b", "a"]);
        assert!(
            (s.share("*") - 0.6).abs() < 1e-9,
            "mem 600/1000 dominates cpus 4/10"
        );
    }

    #[test]
    fn weights_divide_shares_and_roles_come_before_their_frameworks() {
        let mut s = sorter("cpus:12;mem:1200");
        s.set_weight("heavy", Some(3.0));
        s.add_client("light", "l");
        s.add_client("heavy", "h");
        s.allocate("light", "l", &r("cpus:2;mem:100"));
        s.allocate("heavy", "h", &r("cpus:3;mem:100"));
        // light: 2/12 = 0.167; heavy: 3/12/3 = 0.083.
        assert_eq!(s.order()[0], ("heavy".into(), "h".into()));
        s.allocate("heavy", "h", &r("cpus:4"));
        // heavy: 7/12/3 = 0.194 > 0.167.
        assert_eq!(s.order()[0], ("light".into(), "l".into()));
    }

    #[test]
    fn nested_roles_share_their_parents_share() {
        let mut s = sorter("cpus:10;mem:1000");
        s.add_client("eng/web", "w");
        s.add_client("eng/batch", "b");
        s.add_client("ops", "o");
        s.allocate("eng/web", "w", &r("cpus:2"));
        s.allocate("eng/batch", "b", &r("cpus:2"));
        s.allocate("ops", "o", &r("cpus:3"));
        // eng holds 4 (0.4) against ops's 3 (0.3): ops first, though each of eng's roles holds less.
        let order = s.order();
        assert_eq!(order[0], ("ops".into(), "o".into()));
        assert_eq!(s.held("eng"), r("cpus:4"));
        assert!(is_within("eng/web", "eng") && !is_within("engine", "eng"));
        // A role's own frameworks compete with its child roles.
        s.add_client("eng", "e");
        assert_eq!(s.order()[1], ("eng".into(), "e".into()));
    }

    #[test]
    fn a_role_holds_what_every_role_under_it_holds_as_allocations_change() {
        let mut s = sorter("cpus:10;mem:1000");
        s.allocate("eng/web", "w", &r("cpus:2"));
        s.allocate("eng/web/api", "a", &r("cpus:1;mem:10"));
        s.allocate("eng", "e", &r("mem:100"));
        assert_eq!(s.held("eng"), r("cpus:3;mem:110"));
        assert_eq!(s.held("eng/web"), r("cpus:3;mem:10"));
        s.unallocate("eng/web/api", "a", &r("cpus:1"));
        s.remove_client("eng/web", "w");
        assert_eq!(s.held("eng"), r("mem:110"));
        assert_eq!(s.held("eng/web"), r("mem:10"));
        assert!((s.share("eng") - 0.11).abs() < 1e-9, "mem 110/1000");
        assert_eq!(s.held("ops"), Resources::default());
    }

    #[test]
    fn unallocating_gives_back_and_a_removed_framework_is_no_longer_ordered() {
        let mut s = sorter("cpus:10;mem:1000");
        s.add_client("*", "a");
        s.add_client("*", "b");
        s.allocate("*", "a", &r("cpus:5"));
        s.unallocate("*", "a", &r("cpus:5"));
        assert_eq!(s.held_by("*", "a"), Resources::default());
        assert_eq!(s.order()[0].1, "a", "ties by name");
        s.remove_client("*", "a");
        assert_eq!(s.order(), [("*".to_string(), "b".to_string())]);
        s.allocate("*", "b", &r("cpus:1"));
        assert_eq!(s.held_by("*", "b"), r("cpus:1"), "b keeps its own count");
        assert_eq!(s.held("*"), r("cpus:1"));
        assert_eq!(s.share("nobody"), 0.0);
    }
}
