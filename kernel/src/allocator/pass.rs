//! Allocation passes over a cluster's state: what every connected agent has free, offered in
//! DRF order within the roles' quotas ([`super::plan`]); then, to every framework that takes
//! optimistic offers, what it is not offered yet of the free resources no other framework
//! holds exclusively (offers to optimistic frameworks may overlap); and, for every framework
//! left without an offer, why. The leader gives a pass what it needs of the state, gathered
//! while it holds the state's lock ([`Cluster::gather`], copies of persistent maps of the
//! agents, frameworks and allocation sums, made in microseconds, so that the pass itself does
//! not keep commands from applying), and what only it holds (offers, launches being
//! committed, decline filters, who is connected), and makes the offers it plans. Its
//! [`Allocator`] keeps what each agent has free from one pass to the next, and works out again
//! only what changed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use imbl::OrdSet;

use super::drf::Sorter;
use super::{allocatable, plan, room, Free, Planned, Quota};
use crate::allocator::roles::RoleInfo;
use crate::resources::Resources;
use crate::state::{AgentInfo, AgentState, Allocations, ClusterState, FrameworkInfo};
use crate::watch::{Offer, Offers};

/// What a pass needs of the replicated state, copied out of it: persistent maps, so the copy
/// costs the same (almost nothing) however large the cluster.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    /// Every agent: only the active ones connected to the leader are offered.
    agents: imbl::OrdMap<String, AgentInfo>,
    /// Every framework: only the registered ones are offered.
    frameworks: imbl::OrdMap<String, FrameworkInfo>,
    /// What is set on roles.
    roles: BTreeMap<String, RoleInfo>,
    /// What live tasks hold, by agent and by (role, framework).
    allocations: Allocations,
}

impl Cluster {
    /// Copies what a pass needs out of the state, in time that does not grow with the cluster
    /// (the roles' settings aside, which are few).
    pub fn gather(state: &ClusterState) -> Cluster {
        Cluster {
            agents: state.agents.clone(),
            frameworks: state.frameworks.clone(),
            roles: state.roles.clone(),
            allocations: state.allocations(),
        }
    }
}

/// What a pass starts from.
pub struct Input<'a> {
    /// What it needs of the replicated state.
    pub cluster: &'a Cluster,
    /// The agents connected to the leader (only they are offered).
    pub connected: &'a OrdSet<String>,
    /// The outstanding offers.
    pub offers: &'a Offers,
    /// Resources of launches being committed, per agent.
    pub pending: &'a HashMap<String, Resources>,
    /// The same, per (role, framework).
    pub pending_held: &'a HashMap<(String, String), Resources>,
    /// Decline filters: (framework, agent) not offered until the instant.
    pub filters: &'a HashMap<(String, String), Instant>,
    /// Now.
    pub now: Instant,
}

/// What a pass decided.
pub struct Output {
    /// The offers to make.
    pub planned: Vec<Planned>,
    /// For every registered framework, why it holds no offer (empty: it holds one).
    pub why: Vec<(String, String)>,
    /// The registered frameworks.
    pub frameworks: HashSet<String>,
    /// How many agents the pass looked at again, their inputs having changed since the last.
    pub agents_changed: usize,
}

/// The inputs of the last pass that decide what each agent has free: copies of persistent
/// maps, which share their unchanged parts with the next pass's, so that comparing the two
/// walks only what changed.
struct Seen {
    agents: imbl::OrdMap<String, AgentInfo>,
    by_agent: imbl::OrdMap<String, Resources>,
    offers: Offers,
    connected: OrdSet<String>,
    pending: HashMap<String, Resources>,
}

impl Seen {
    /// The copies of what `input` holds.
    fn of(input: &Input) -> Seen {
        Seen {
            agents: input.cluster.agents.clone(),
            by_agent: input.cluster.allocations.by_agent.clone(),
            offers: input.offers.clone(),
            connected: input.connected.clone(),
            pending: input.pending.clone(),
        }
    }
}

/// What one connected, active agent has free.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pool {
    /// The agent's host name.
    hostname: String,
    /// What no task, launch in flight or exclusive offer holds.
    unheld: Resources,
    /// Of that, what no optimistic offer holds either, when an optimistic offer holds some of
    /// it (`None`: all of it): what may be offered exclusively.
    exclusive: Option<Resources>,
}

impl Pool {
    /// What may be offered exclusively.
    fn exclusive(&self) -> &Resources {
        self.exclusive.as_ref().unwrap_or(&self.unheld)
    }
}

/// An allocator: plans offers pass after pass, keeping from one pass to the next what each
/// agent has free and what each (role, framework)'s offers hold. A pass finds the agents whose
/// inputs changed since the last one (their record, their tasks, their offers, their
/// connection, launches in flight) by comparing persistent maps, and works out only theirs
/// again: a pass over a cluster where little changed costs little however many agents it has.
/// When many changed (every offer withdrawn, or the last pass's offers made), it works out
/// every agent in one walk instead. The leader keeps one per leadership; a new one starts
/// from nothing and looks at every agent.
pub struct Allocator {
    seen: Option<Seen>,
    /// The agents whose unheld resources are worth offering, by id (the order they are offered in).
    pools: BTreeMap<String, Pool>,
    /// The scalars of every active, connected agent together: the cluster that shares are of.
    total: Resources,
    /// What the outstanding offers hold, per (role, framework): scalars, and how many offers.
    offered: Offered,
    /// Past this share of the agents changed, a pass works out every agent again in one walk
    /// rather than looking up each changed one.
    walk_past: f64,
}

impl Default for Allocator {
    fn default() -> Allocator {
        Allocator {
            seen: None,
            pools: BTreeMap::new(),
            total: Resources::default(),
            offered: Offered::default(),
            // At 50,000 agents a changed agent looked up costs about 1.3 us and a step of the
            // walk about 0.5 us: past a quarter, the walk is no slower.
            walk_past: 0.25,
        }
    }
}

impl Allocator {
    /// Runs one pass.
    pub fn pass(&mut self, input: &Input) -> Output {
        let agents_changed = self.catch_up(input);
        let mut out = self.plan(input);
        out.agents_changed = agents_changed;
        out
    }

    /// Brings what is kept up to date with `input`; returns how many agents were looked at.
    fn catch_up(&mut self, input: &Input) -> usize {
        let cluster = input.cluster;
        let seen = self.seen.take();
        // Agents whose record or connection changed (their share of the total may have), and
        // those whose free resources may have.
        let mut records: HashSet<&str> = HashSet::new();
        let mut changed: Vec<&str> = Vec::new();
        let mut offers_changed = Vec::new();
        match &seen {
            None => {
                // Nothing kept: every agent is looked at.
                self.rebuild(input);
                return cluster.agents.len();
            }
            Some(seen) => {
                use imbl::ordmap::DiffItem;
                for d in seen.agents.diff(&cluster.agents) {
                    match d {
                        DiffItem::Add(k, _) | DiffItem::Remove(k, _) => records.insert(k),
                        DiffItem::Update { new: (k, _), .. } => records.insert(k),
                    };
                }
                for d in seen.by_agent.diff(&cluster.allocations.by_agent) {
                    match d {
                        DiffItem::Add(k, _) | DiffItem::Remove(k, _) => changed.push(k),
                        DiffItem::Update { new: (k, _), .. } => changed.push(k),
                    };
                }
                for d in seen.connected.diff(input.connected) {
                    match d {
                        imbl::ordset::DiffItem::Add(k) | imbl::ordset::DiffItem::Remove(k) => {
                            records.insert(k)
                        }
                    };
                }
                changed.extend(records.iter().copied());
                // The offers the last pass planned turn up here too: their agents are worked
                // out again, as are those of offers used, declined or rescinded.
                for (before, now) in input.offers.changes_since(&seen.offers) {
                    changed.extend(before.iter().chain(&now).map(|o| o.agent_id.as_str()));
                    offers_changed.push((before, now));
                }
                let pending = seen.pending.keys().chain(input.pending.keys());
                for agent in pending {
                    if seen.pending.get(agent) != input.pending.get(agent) {
                        changed.push(agent);
                    }
                }
            }
        }
        // Past a share of the agents, a walk of them all in order costs less than looking up
        // each changed one (every offer withdrawn at once, a new leader's first pass). Counted
        // before duplicates are taken out (an agent whose several offers changed counts for
        // each), which would cost a sort of them all.
        if changed.len() as f64 > cluster.agents.len() as f64 * self.walk_past {
            self.rebuild(input);
            return cluster.agents.len();
        }
        changed.sort_unstable();
        changed.dedup();
        for (before, now) in offers_changed {
            if let Some(o) = before {
                count_offer(&mut self.offered, o, false);
            }
            if let Some(o) = now {
                count_offer(&mut self.offered, o, true);
            }
        }
        for &id in &changed {
            let agent = cluster
                .agents
                .get(id)
                .filter(|a| a.state == AgentState::Active && input.connected.contains(id));
            if records.contains(id) {
                let before = seen.as_ref().and_then(|s| {
                    s.agents
                        .get(id)
                        .filter(|a| a.state == AgentState::Active && s.connected.contains(id))
                });
                if let Some(before) = before {
                    self.total.sub_scalars(&before.resources);
                }
                if let Some(a) = agent {
                    self.total.add_scalars(&a.resources);
                }
            }
            match (
                agent.and_then(|a| {
                    let tasks = cluster.allocations.by_agent.get(id);
                    pool(a, tasks, input.offers.on_agent(id), input)
                }),
                self.pools.get_mut(id),
            ) {
                (Some(p), Some(kept)) => *kept = p,
                (Some(p), None) => {
                    self.pools.insert(id.to_string(), p);
                }
                (None, _) => {
                    self.pools.remove(id);
                }
            }
        }
        let looked_at = changed.len();
        self.seen = Some(Seen::of(input));
        looked_at
    }

    /// Works out every agent's free resources, the total and what the offers hold again, from
    /// `input` alone: one walk of the agents, their connections and what their tasks hold, all
    /// three in agent order, with no lookups.
    fn rebuild(&mut self, input: &Input) {
        let cluster = input.cluster;
        self.offered.clear();
        for o in input.offers.values() {
            count_offer(&mut self.offered, o, true);
        }
        self.total = Resources::default();
        // Dropped first, so that the new pools reuse their memory.
        self.pools.clear();
        let mut connected = input.connected.iter().peekable();
        let mut held = cluster.allocations.by_agent.iter().peekable();
        // The offers by agent, from one walk of them (a lookup of each agent's costs more).
        let mut offers: HashMap<&str, Vec<&Offer>> = HashMap::new();
        for o in input.offers.values() {
            offers.entry(o.agent_id.as_str()).or_default().push(o);
        }
        let mut pools = Vec::new();
        for (id, a) in &cluster.agents {
            while connected.next_if(|c| *c < id).is_some() {}
            while held.next_if(|(h, _)| *h < id).is_some() {}
            if a.state != AgentState::Active || connected.peek() != Some(&id) {
                continue;
            }
            self.total.add_scalars(&a.resources);
            let tasks = held.peek().filter(|(h, _)| *h == id).map(|(_, r)| *r);
            let on_agent = offers.get(id.as_str()).into_iter().flatten().copied();
            if let Some(p) = pool(a, tasks, on_agent, input) {
                pools.push((id.clone(), p));
            }
        }
        // In order already: built in bulk.
        self.pools = pools.into_iter().collect();
        self.seen = Some(Seen::of(input));
    }

    /// Plans the pass's offers from what is kept.
    fn plan(&self, input: &Input) -> Output {
        let state = input.cluster;
        let mut sorter = Sorter::new();
        let frameworks: Vec<&FrameworkInfo> = state
            .frameworks
            .values()
            .filter(|f| f.removed_ms.is_none())
            .collect();
        sorter.set_total(self.total.clone());
        // A framework's tasks in a role it has left still count there, but it is offered only
        // for the roles it has now.
        let mut subscribed: HashSet<(&str, &str)> = HashSet::new();
        for fw in &frameworks {
            for role in fw.roles() {
                sorter.add_client(role, &fw.id);
                if !fw.suppressed {
                    subscribed.insert((role, fw.id.as_str()));
                }
            }
        }
        let mut quotas = BTreeMap::new();
        for (role, info) in &state.roles {
            if let Some(w) = info.weight {
                sorter.set_weight(role, Some(w.milli() as f64 / 1000.0));
            }
            if info.quota != Quota::default() {
                quotas.insert(role.clone(), info.quota.clone());
            }
        }
        // What live tasks hold comes from the sums the state keeps up to date, what offers
        // hold from the sums kept here: no walk of every task or offer.
        let registered = |fw: &str| {
            state
                .frameworks
                .get(fw)
                .is_some_and(|f| f.removed_ms.is_none())
        };
        for ((role, fw), r) in &state.allocations.held {
            if registered(fw) {
                sorter.allocate(role, fw, &r.sum());
            }
        }
        for (role, of_role) in &self.offered {
            for (fw, (r, _)) in of_role {
                sorter.allocate(role, fw, r);
            }
        }
        for ((role, fw), r) in input.pending_held {
            sorter.allocate(role, fw, r);
        }
        let optimistic: Vec<&FrameworkInfo> = frameworks
            .iter()
            .filter(|f| f.optimistic && !f.suppressed)
            .copied()
            .collect();
        let free: Vec<Free> = self
            .pools
            .iter()
            .filter(|(_, p)| allocatable(p.exclusive()))
            .map(|(id, p)| Free {
                agent_id: id.into(),
                hostname: p.hostname.as_str().into(),
                resources: p.exclusive().clone(),
            })
            .collect();
        let had_free = !free.is_empty();
        // Asked once or more per offer: no key is built unless a filter may match.
        let may_offer = |fw: &str, role: &str, agent: &str| {
            subscribed.contains(&(role, fw))
                && (input.filters.is_empty()
                    || !input
                        .filters
                        .contains_key(&(fw.to_string(), agent.to_string())))
        };
        let mut planned = if had_free && !subscribed.is_empty() {
            plan(&mut sorter, &quotas, free, may_offer)
        } else {
            Vec::new()
        };
        if !optimistic.is_empty() {
            let ids: HashSet<&str> = optimistic.iter().map(|f| f.id.as_str()).collect();
            for p in &mut planned {
                p.optimistic = ids.contains(p.framework_id.as_str());
            }
            let mut unheld: Vec<Free> = self
                .pools
                .iter()
                .map(|(id, p)| Free {
                    agent_id: id.into(),
                    hostname: p.hostname.as_str().into(),
                    resources: p.unheld.clone(),
                })
                .collect();
            let shared = offer_optimistically(
                &mut sorter,
                &quotas,
                &mut unheld,
                input.offers,
                &planned,
                &optimistic,
                may_offer,
            );
            planned.extend(shared);
        }
        let mut holding: HashSet<&str> = self
            .offered
            .values()
            .flat_map(|of_role| of_role.keys().map(String::as_str))
            .collect();
        holding.extend(planned.iter().map(|p| p.framework_id.as_str()));
        let context = WhyContext {
            sorter: &sorter,
            quotas: &quotas,
            filters: input.filters,
            had_free,
            others_offered: !planned.is_empty(),
            now: input.now,
        };
        let why = frameworks
            .iter()
            .map(|f| {
                let text = if holding.contains(f.id.as_str()) {
                    String::new()
                } else {
                    let roles: Vec<String> = f.roles().into_iter().map(String::from).collect();
                    context.why(&f.id, f.suppressed, &roles)
                };
                (f.id.clone(), text)
            })
            .collect();
        let frameworks = frameworks.iter().map(|f| f.id.clone()).collect();
        Output {
            planned,
            why,
            frameworks,
            agents_changed: 0,
        }
    }
}

/// What the outstanding offers hold, by role then framework: their scalars and how many there
/// are. Looked up by name, so counting an offer builds no key once its role and framework are
/// known.
type Offered = HashMap<String, HashMap<String, (Resources, usize)>>;

/// Counts an offer among what its (role, framework) is offered (`add`), or no longer.
fn count_offer(offered: &mut Offered, o: &Offer, add: bool) {
    if add {
        if !offered.contains_key(&o.role) {
            offered.insert(o.role.clone(), HashMap::new());
        }
        let of_role = offered.get_mut(&o.role).expect("just made");
        if !of_role.contains_key(&o.framework_id) {
            of_role.insert(o.framework_id.clone(), Default::default());
        }
        let e = of_role.get_mut(&o.framework_id).expect("just made");
        e.0.add_scalars(&o.resources);
        e.1 += 1;
        return;
    }
    let Some(of_role) = offered.get_mut(&o.role) else {
        return;
    };
    if let Some(e) = of_role.get_mut(&o.framework_id) {
        e.0.sub_scalars(&o.resources);
        e.1 -= 1;
        if e.1 == 0 {
            of_role.remove(&o.framework_id);
        }
    }
    if of_role.is_empty() {
        offered.remove(&o.role);
    }
}

/// What an active, connected agent has free (`None`: nothing worth offering), from its
/// record, what its tasks hold (`tasks`), its launches in flight and its outstanding offers
/// (`offers`, in the order of their ids).
fn pool<'o>(
    agent: &AgentInfo,
    tasks: Option<&Resources>,
    offers: impl IntoIterator<Item = &'o Offer>,
    input: &Input,
) -> Option<Pool> {
    let mut unheld = agent.resources.clone();
    if let Some(tasks) = tasks {
        if !unheld.checked_sub_assign(tasks) {
            return None;
        }
    }
    if let Some(launching) = input.pending.get(&agent.id) {
        if !unheld.checked_sub_assign(launching) {
            return None;
        }
    }
    // Exclusive offers add up; optimistic ones may overlap: together they can take at most
    // their join.
    let mut optimistic: Option<Resources> = None;
    for o in offers {
        if o.optimistic {
            optimistic = Some(match optimistic {
                Some(j) => j.join(&o.resources),
                None => o.resources.clone(),
            });
        } else if !unheld.checked_sub_assign(&o.resources) {
            return None;
        }
    }
    if !allocatable(&unheld) {
        return None;
    }
    let exclusive = optimistic.map(|o| unheld.saturating_sub(&o));
    Some(Pool {
        hostname: agent.hostname.clone(),
        unheld,
        exclusive,
    })
}

/// Plans offers to the optimistic frameworks: each is offered, on each agent, what it is not
/// offered yet of the resources that no task, launch in flight or exclusive offer holds
/// (`unheld`, less the exclusive offers `planned` makes), within its roles' limits.
fn offer_optimistically(
    sorter: &mut Sorter,
    quotas: &BTreeMap<String, Quota>,
    unheld: &mut [Free],
    offers: &Offers,
    planned: &[Planned],
    optimistic: &[&FrameworkInfo],
    may_offer: impl Fn(&str, &str, &str) -> bool,
) -> Vec<Planned> {
    let mut mine: HashMap<(String, String), Resources> = HashMap::new();
    let optimistic_offers = offers
        .values()
        .filter(|o| o.optimistic)
        .map(|o| (&o.framework_id, &o.agent_id, &o.resources));
    let planned_offers = planned
        .iter()
        .map(|p| (&p.framework_id, &p.agent_id, &p.resources));
    for (fw, agent, r) in optimistic_offers.chain(planned_offers) {
        let m = mine.entry((fw.clone(), agent.clone())).or_default();
        *m = m.add(r);
    }
    let at: HashMap<String, usize> = unheld
        .iter()
        .enumerate()
        .map(|(i, f)| (f.agent_id.to_string(), i))
        .collect();
    for p in planned.iter().filter(|p| !p.optimistic) {
        if let Some(&i) = at.get(p.agent_id.as_str()) {
            unheld[i].resources = unheld[i].resources.saturating_sub(&p.resources);
        }
    }
    let mut out = Vec::new();
    for pool in unheld.iter().filter(|f| allocatable(&f.resources)) {
        for fw in optimistic {
            for role in fw.roles() {
                if !may_offer(&fw.id, role, &pool.agent_id) {
                    continue;
                }
                let key = (fw.id.clone(), pool.agent_id.to_string());
                let held = mine.get(&key).cloned().unwrap_or_default();
                let mut offer = pool.resources.usable_by(role).saturating_sub(&held);
                if let Some(room) = room(sorter, quotas, role) {
                    offer = room.apply(offer);
                }
                if !allocatable(&offer) {
                    continue;
                }
                sorter.allocate(role, &fw.id, &offer);
                mine.insert(key, held.add(&offer));
                out.push(Planned {
                    agent_id: pool.agent_id.to_string(),
                    hostname: pool.hostname.to_string(),
                    framework_id: fw.id.clone(),
                    role: role.to_string(),
                    resources: offer,
                    optimistic: true,
                });
            }
        }
    }
    out
}

/// What an allocation pass saw, to say why a framework holds no offer.
struct WhyContext<'a> {
    sorter: &'a Sorter,
    quotas: &'a BTreeMap<String, Quota>,
    filters: &'a HashMap<(String, String), Instant>,
    had_free: bool,
    others_offered: bool,
    now: Instant,
}

impl WhyContext<'_> {
    /// One reason a line: why framework `fw` (in `roles`) holds no offer after the pass.
    fn why(&self, fw: &str, suppressed: bool, roles: &[String]) -> String {
        if suppressed {
            return "suppressed: it asked for no offers (write 0 to suppressed, or write to revive)\n"
                .into();
        }
        let mut lines = Vec::new();
        let mut declined: Vec<(&String, &Instant)> = self
            .filters
            .iter()
            .filter(|((f, _), _)| f == fw)
            .map(|((_, agent), until)| (agent, until))
            .collect();
        declined.sort();
        for (agent, until) in declined {
            let left = until.saturating_duration_since(self.now).as_secs_f64();
            lines.push(format!(
                "declined agent {agent}: not offered it again for {left:.1}s (write to revive to forget declines)"
            ));
        }
        for role in roles {
            let Some(room) = room(self.sorter, self.quotas, role) else {
                continue;
            };
            let full = ["cpus", "mem"]
                .iter()
                .any(|r| room.get(r).is_some_and(|s| s.is_zero()));
            if full {
                lines.push(format!(
                    "role {role} is at its quota limit: it holds {}",
                    self.sorter.held(role)
                ));
            }
        }
        if !self.had_free {
            lines.push(
                "no agent has the minimum allocatable resources free (some cpus and some memory): tasks and outstanding offers hold them"
                    .into(),
            );
        } else if self.others_offered {
            for role in roles {
                lines.push(format!(
                    "fair share: role {role} holds {:.3} of the cluster (weighted) and this framework {:.3} of the cluster; the free resources went to roles and frameworks holding less",
                    self.sorter.share(role),
                    self.sorter.dominant_share(&self.sorter.held_by(role, fw)),
                ));
            }
        }
        lines.into_iter().map(|l| l + "\n").collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{AgentInfo, Command};
    use crate::watch::Offer;

    fn r(text: &str) -> Resources {
        Resources::parse(text).unwrap()
    }

    /// One agent of `cpus:4;mem:400` and frameworks `(name, optimistic)`, by id.
    fn cluster(frameworks: &[(&str, bool)]) -> (ClusterState, Vec<String>) {
        let mut s = ClusterState::default();
        s.apply(
            1,
            &Command::RegisterAgent {
                agent: AgentInfo {
                    id: "a1".into(),
                    hostname: "h".into(),
                    address: "127.0.0.1:1".into(),
                    resources: r("cpus:4;mem:400"),
                    state: AgentState::Active,
                    registered_ms: 1,
                    registration: 0,
                    attributes: Default::default(),
                },
                running: vec![],
            },
        );
        let mut ids = Vec::new();
        for (name, optimistic) in frameworks {
            let id = s
                .apply(
                    2,
                    &Command::RegisterFramework {
                        name: name.to_string(),
                        user: "root".into(),
                        principal: None,
                        uid: 0,
                        gid: 0,
                        time_ms: 1,
                    },
                )
                .framework_id
                .unwrap();
            s.apply(
                3,
                &Command::SetOptimistic {
                    framework_id: id.clone(),
                    optimistic: *optimistic,
                },
            );
            ids.push(id);
        }
        (s, ids)
    }

    fn pass(state: &ClusterState, offers: &[Offer]) -> Vec<Planned> {
        let mut outstanding = Offers::default();
        for o in offers {
            outstanding.insert(o.clone());
        }
        Allocator::default()
            .pass(&Input {
                cluster: &Cluster::gather(state),
                connected: &OrdSet::unit("a1".to_string()),
                offers: &outstanding,
                pending: &HashMap::new(),
                pending_held: &HashMap::new(),
                filters: &HashMap::new(),
                now: Instant::now(),
            })
            .planned
    }

    fn offer(p: &Planned) -> Offer {
        Offer {
            id: format!("o-{}", p.framework_id),
            framework_id: p.framework_id.clone(),
            agent_id: p.agent_id.clone(),
            hostname: "h".into(),
            resources: p.resources.clone(),
            role: p.role.clone(),
            created_ms: 0,
            optimistic: p.optimistic,
        }
    }

    #[test]
    fn optimistic_frameworks_are_offered_the_same_free_resources_and_others_none_of_them() {
        let (state, ids) = cluster(&[("f", true), ("g", true), ("x", false)]);
        let planned = pass(&state, &[]);
        let to: Vec<(&str, &Resources, bool)> = planned
            .iter()
            .map(|p| (p.framework_id.as_str(), &p.resources, p.optimistic))
            .collect();
        let all = r("cpus:4;mem:400");
        // f comes first in DRF order (ties by name) and takes the agent; g is offered it too.
        assert_eq!(
            to,
            [(ids[0].as_str(), &all, true), (ids[1].as_str(), &all, true)]
        );
        // With those offers out, nothing is offered again: not to x, not twice to f or g.
        let out: Vec<Offer> = planned.iter().map(offer).collect();
        assert!(pass(&state, &out).is_empty());
        // Once g's is gone (used or declined), only g is offered again.
        let planned = pass(&state, &out[..1]);
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].framework_id, ids[1]);
        assert!(planned[0].optimistic);
    }

    #[test]
    fn an_exclusive_offer_is_never_offered_optimistically_too() {
        let (state, ids) = cluster(&[("a", false), ("g", true)]);
        let planned = pass(&state, &[]);
        assert_eq!(planned.len(), 1, "{planned:?}");
        assert_eq!(planned[0].framework_id, ids[0]);
        assert!(!planned[0].optimistic);
        let out: Vec<Offer> = planned.iter().map(offer).collect();
        assert!(pass(&state, &out).is_empty(), "g gets nothing a holds");
    }

    /// One change between two passes, as the leader sees them.
    #[derive(Clone, Debug)]
    enum Change {
        Launch { fw: usize, agent: usize, cpus: u64 },
        Finish { task: usize },
        Connect { agent: usize, up: bool },
        Decline { offer: usize },
        UsePart { offer: usize },
        Pending { agent: usize, cpus: u64 },
        Optimistic { fw: usize, on: bool },
        Suppress { fw: usize, on: bool },
        Disconnect { agent: usize },
    }

    fn change() -> impl proptest::strategy::Strategy<Value = Change> {
        use proptest::prelude::*;
        prop_oneof![
            (0..3usize, 0..4usize, 1..3u64).prop_map(|(fw, agent, cpus)| Change::Launch {
                fw,
                agent,
                cpus
            }),
            (0..8usize).prop_map(|task| Change::Finish { task }),
            (0..4usize, any::<bool>()).prop_map(|(agent, up)| Change::Connect { agent, up }),
            (0..6usize).prop_map(|offer| Change::Decline { offer }),
            (0..6usize).prop_map(|offer| Change::UsePart { offer }),
            (0..4usize, 0..3u64).prop_map(|(agent, cpus)| Change::Pending { agent, cpus }),
            (0..3usize, any::<bool>()).prop_map(|(fw, on)| Change::Optimistic { fw, on }),
            (0..3usize, any::<bool>()).prop_map(|(fw, on)| Change::Suppress { fw, on }),
            (0..4usize).prop_map(|agent| Change::Disconnect { agent }),
        ]
    }

    proptest::proptest! {
        /// The allocator kept from pass to pass plans, after any changes, exactly what a new
        /// one (which looks at every agent) plans from the same inputs.
        #[test]
        fn a_kept_allocator_plans_what_a_new_one_plans(
            changes in proptest::collection::vec(change(), 1..40)
        ) {
            let (mut state, fws) = cluster(&[("f", false), ("g", false), ("h", false)]);
            let agents: Vec<String> = (0..4).map(|i| format!("a{i}")).collect();
            for (i, id) in agents.iter().enumerate().skip(1) {
                let mut a = state.agents.get("a1").unwrap().clone();
                a.id = id.clone();
                a.hostname = format!("h{i}");
                a.resources = r("cpus:4;mem:400;ports:[31000-31009]");
                state.apply(10 + i as u64, &Command::RegisterAgent { agent: a, running: vec![] });
            }
            let mut index = 100;
            let mut connected: OrdSet<String> = agents.iter().cloned().collect();
            let mut offers = Offers::default();
            let mut pending: HashMap<String, Resources> = HashMap::new();
            let mut kept = Allocator::default();
            // The same, never walking every agent: each changed one looked up.
            let mut looking_up = Allocator { walk_past: f64::INFINITY, ..Allocator::default() };
            let mut tasks: Vec<String> = Vec::new();
            let mut offer_seq = 0;
            for c in changes {
                index += 1;
                let ids: Vec<String> = offers.values().map(|o| o.id.clone()).collect();
                match c {
                    Change::Launch { fw, agent, cpus } => {
                        let spec = crate::spec::parse_spec_line(&format!(
                            "name=t{index} cpus={cpus} mem=10 -- true"
                        ))
                        .unwrap();
                        let applied = state.apply(index, &Command::LaunchTasks {
                            framework_id: fws[fw].clone(),
                            agent_id: agents[agent].clone(),
                            role: "*".into(),
                            tasks: vec![crate::state::NewTask {
                                resources: spec.resources(),
                                spec,
                                ports: vec![],
                            }],
                            time_ms: 5,
                        });
                        if applied.error.is_none() {
                            tasks.push(format!("{}.t{index}", fws[fw]));
                        }
                    }
                    Change::Finish { task } => {
                        if let Some(id) = tasks.get(task) {
                            state.apply(index, &Command::UpdateTask {
                                task_id: id.clone(),
                                transition: crate::state::Transition {
                                    state: crate::state::TaskState::Finished,
                                    reason: String::new(),
                                    message: String::new(),
                                    time_ms: 9,
                                    exit_code: None,
                                    signal: None,
                                },
                            });
                        }
                    }
                    Change::Connect { agent, up } => {
                        if up {
                            connected.insert(agents[agent].clone());
                        } else {
                            connected.remove(&agents[agent]);
                        }
                    }
                    Change::Decline { offer } => {
                        if let Some(id) = ids.get(offer) {
                            offers.remove(id);
                        }
                    }
                    Change::UsePart { offer } => {
                        if let Some(mut o) = ids.get(offer).and_then(|id| offers.get(id)).cloned() {
                            o.resources = o.resources.saturating_sub(&r("cpus:1;mem:10"));
                            offers.insert(o);
                        }
                    }
                    Change::Pending { agent, cpus } => {
                        if cpus == 0 {
                            pending.remove(&agents[agent]);
                        } else {
                            pending.insert(agents[agent].clone(), r(&format!("cpus:{cpus};mem:5")));
                        }
                    }
                    Change::Optimistic { fw, on } => {
                        state.apply(index, &Command::SetOptimistic {
                            framework_id: fws[fw].clone(),
                            optimistic: on,
                        });
                    }
                    Change::Suppress { fw, on } => {
                        state.apply(index, &Command::SuppressFramework {
                            framework_id: fws[fw].clone(),
                            suppressed: on,
                        });
                    }
                    Change::Disconnect { agent } => {
                        state.apply(index, &Command::DisconnectAgent {
                            agent_id: agents[agent].clone(),
                            registration: None,
                            time_ms: 7,
                        });
                    }
                }
                let cluster = Cluster::gather(&state);
                let now = Instant::now();
                let input = Input {
                    cluster: &cluster,
                    connected: &connected,
                    offers: &offers,
                    pending: &pending,
                    pending_held: &HashMap::new(),
                    filters: &HashMap::new(),
                    now,
                };
                let got = kept.pass(&input);
                let want = Allocator::default().pass(&input);
                proptest::prop_assert_eq!(&got.planned, &want.planned);
                proptest::prop_assert_eq!(&got.why, &want.why);
                let looked_up = looking_up.pass(&input);
                proptest::prop_assert_eq!(&looked_up.planned, &want.planned);
                proptest::prop_assert_eq!(&looked_up.why, &want.why);
                // The leader makes the offers planned.
                for p in got.planned {
                    offer_seq += 1;
                    let mut o = offer(&p);
                    o.id = format!("o{offer_seq}");
                    offers.insert(o);
                }
            }
        }
    }
}
