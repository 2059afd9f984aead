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
use std::collections::{BTreeMap, BTreeSet};

use crate::resources::{split_key, Resources, Scalar, Value};

/// A role's weight when none was set.
pub const DEFAULT_WEIGHT: f64 = 1.0;

/// Allocations of one role's frameworks.
#[derive(Clone, Debug, Default)]
struct Role {
    /// Its weight.
    weight: Option<f64>,
    /// What each of its frameworks holds in it (offered or allocated), by framework id.
    clients: BTreeMap<String, Amounts>,
    /// Its frameworks by dominant share, least first (kept as allocations change).
    sorted: BTreeSet<(Share, String)>,
    /// What its frameworks hold together.
    total: Amounts,
    /// What it and every role under it hold (kept as allocations change, so that a role's
    /// share costs no sum over the roles at every step of a walk).
    subtree: Amounts,
}

/// Scalar amounts, however reserved, by the sorter's index of resource names (names past the
/// end hold zero). Shares and quotas count only these, and a pass changes them once per offer
/// and per holding: as a vector they add and subtract without allocating.
#[derive(Clone, Debug, Default, PartialEq)]
struct Amounts(Vec<Scalar>);

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
#[derive(Clone, Debug, Default)]
pub struct Sorter {
    /// The resource names amounts are indexed by, in the order first seen.
    names: Vec<String>,
    total: Amounts,
    /// Every role, and every role above one (so that each node of the tree has its entry).
    roles: BTreeMap<String, Role>,
    /// Each node's child roles ("" is the root), kept as roles are added: a walk runs once per
    /// offer a pass plans, and the tree changes only when a role is first seen.
    children: BTreeMap<String, BTreeSet<String>>,
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
        let mut out = Amounts(vec![Scalar::default(); self.names.len()]);
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
        for r in self.roles.values_mut() {
            r.sorted = r
                .clients
                .iter()
                .map(|(f, h)| (Share(dominant(&self.total, h)), f.clone()))
                .collect();
        }
    }

    /// A role's entry, made (with the entries of the roles above it, and their places in the
    /// tree) when it is first seen.
    fn role_mut(&mut self, role: &str) -> &mut Role {
        if !self.roles.contains_key(role) {
            let mut child = role;
            for parent in ancestors(role)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .chain([""])
            {
                self.children
                    .entry(parent.to_string())
                    .or_default()
                    .insert(child.to_string());
                self.roles.entry(child.to_string()).or_default();
                child = parent;
            }
        }
        self.roles.get_mut(role).expect("role just made")
    }

    /// Sets a role's weight (`None`: the default).
    pub fn set_weight(&mut self, role: &str, weight: Option<f64>) {
        self.role_mut(role).weight = weight;
    }

    /// A role's weight.
    pub fn weight(&self, role: &str) -> f64 {
        self.roles
            .get(role)
            .and_then(|r| r.weight)
            .unwrap_or(DEFAULT_WEIGHT)
    }

    /// Adds a framework to a role (it is offered resources for that role).
    pub fn add_client(&mut self, role: &str, framework: &str) {
        let r = self.role_mut(role);
        if !r.clients.contains_key(framework) {
            r.clients.insert(framework.to_string(), Amounts::default());
            r.sorted.insert((Share(0.0), framework.to_string()));
        }
    }

    /// Removes a framework from a role, with what it held there.
    pub fn remove_client(&mut self, role: &str, framework: &str) {
        let total = &self.total;
        let Some(r) = self.roles.get_mut(role) else {
            return;
        };
        let Some(held) = r.clients.remove(framework) else {
            return;
        };
        r.sorted
            .remove(&(Share(dominant(total, &held)), framework.to_string()));
        self.change_sums(role, |sum| sum.sub(&held));
    }

    /// Changes what `role` holds, and the subtree sums of it and the roles above it, with `f`.
    fn change_sums(&mut self, role: &str, f: impl Fn(&mut Amounts)) {
        if let Some(r) = self.roles.get_mut(role) {
            f(&mut r.total);
        }
        for node in std::iter::once(role).chain(ancestors(role)) {
            if let Some(r) = self.roles.get_mut(node) {
                f(&mut r.subtree);
            }
        }
    }

    /// Changes what a framework holds in a role with `f`, keeping the role's order.
    fn change(&mut self, role: &str, framework: &str, f: impl FnOnce(&mut Amounts)) {
        self.add_client(role, framework);
        let total = &self.total;
        let r = self.roles.get_mut(role).expect("role just added");
        let held = r.clients.get_mut(framework).expect("client just added");
        let before = Share(dominant(total, held));
        f(held);
        let after = Share(dominant(total, held));
        if before != after {
            let mut key = (before, framework.to_string());
            r.sorted.remove(&key);
            key.0 = after;
            r.sorted.insert(key);
        }
    }

    /// Counts `resources` as held by a framework in a role (offered or allocated).
    pub fn allocate(&mut self, role: &str, framework: &str, resources: &Resources) {
        let more = self.amounts(resources);
        self.change(role, framework, |h| h.add(&more));
        self.change_sums(role, |sum| sum.add(&more));
    }

    /// No longer counts `resources` as held by a framework in a role.
    pub fn unallocate(&mut self, role: &str, framework: &str, resources: &Resources) {
        let known = self
            .roles
            .get(role)
            .is_some_and(|r| r.clients.contains_key(framework));
        if known {
            let less = self.amounts(resources);
            let mut gone = self.held_amounts(role, framework);
            self.change(role, framework, |h| h.sub(&less));
            // What it held less what it holds now: no more than it had.
            gone.sub(&self.held_amounts(role, framework));
            self.change_sums(role, |sum| sum.sub(&gone));
        }
    }

    fn held_amounts(&self, role: &str, framework: &str) -> Amounts {
        self.roles
            .get(role)
            .and_then(|r| r.clients.get(framework))
            .cloned()
            .unwrap_or_default()
    }

    /// What a role and every role under it hold.
    pub fn held(&self, role: &str) -> Resources {
        self.roles
            .get(role)
            .map(|r| self.resources(&r.subtree))
            .unwrap_or_default()
    }

    /// What one framework holds in one role.
    pub fn held_by(&self, role: &str, framework: &str) -> Resources {
        self.roles
            .get(role)
            .and_then(|r| r.clients.get(framework))
            .map(|a| self.resources(a))
            .unwrap_or_default()
    }

    /// The dominant share of `held`: the largest fraction of any scalar of the total.
    pub fn dominant_share(&self, held: &Resources) -> f64 {
        dominant(&self.total, &self.known_amounts(held))
    }

    /// A role's weighted share: its subtree's dominant share over its weight.
    pub fn share(&self, role: &str) -> f64 {
        self.roles.get(role).map_or(0.0, |r| {
            dominant(&self.total, &r.subtree) / r.weight.unwrap_or(DEFAULT_WEIGHT)
        })
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
        self.walk("", &mut f)
    }

    /// Walks the order under `node` ("" is the root).
    fn walk<T>(&self, node: &str, f: &mut impl FnMut(&str, &str) -> Option<T>) -> Option<T> {
        // The entries at this node: child roles, and the role's own frameworks as one (`.`).
        let children = self.children.get(node);
        let mut entries: Vec<(Share, &str, bool)> =
            Vec::with_capacity(children.map_or(0, BTreeSet::len) + 1);
        entries.extend(
            children
                .into_iter()
                .flatten()
                .filter(|c| !c.is_empty() && c.as_str() != node)
                .map(|c| (Share(self.share(c)), c.as_str(), false)),
        );
        if let Some(own) = self.roles.get(node).filter(|r| !r.clients.is_empty()) {
            let share = dominant(&self.total, &own.total) / self.weight(node);
            entries.push((Share(share), ".", true));
        }
        entries.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for (_, child, own) in entries {
            let found = if own {
                let r = self.roles.get(node).expect("own role");
                r.sorted.iter().find_map(|(_, fw)| f(node, fw))
            } else {
                self.walk(child, f)
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
        assert_eq!(s.share("nobody"), 0.0);
    }
}
