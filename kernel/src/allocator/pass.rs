//! One allocation pass over a cluster's state: what every connected agent has free, offered in
//! DRF order within the roles' quotas ([`super::plan`]); then, to every framework that takes
//! optimistic offers, what it is not offered yet of the free resources no other framework
//! holds exclusively (offers to optimistic frameworks may overlap); and, for every framework
//! left without an offer, why. Pure: the leader gives it what it needs of the state, gathered
//! while it holds the state's lock ([`Cluster::gather`], copies of persistent maps of the
//! agents, frameworks and allocation sums, made in microseconds, so that the pass itself does
//! not keep commands from applying), and what only it holds (offers, launches being
//! committed, decline filters, who is connected), and makes the offers it plans.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use super::drf::Sorter;
use super::{allocatable, plan, room, Free, Planned, Quota};
use crate::allocator::roles::RoleInfo;
use crate::resources::{Resources, Scalar};
use crate::state::{AgentInfo, AgentState, Allocations, ClusterState, FrameworkInfo};
use crate::watch::Offers;

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
    /// Whether an agent is connected to the leader.
    pub connected: &'a dyn Fn(&str) -> bool,
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
    /// Host names of the agents offered.
    pub hostnames: HashMap<String, String>,
    /// The registered frameworks.
    pub frameworks: HashSet<String>,
}

/// Runs one pass.
pub fn run(input: &Input) -> Output {
    let state = input.cluster;
    let mut sorter = Sorter::new();
    let active: Vec<&AgentInfo> = state
        .agents
        .values()
        .filter(|a| a.state == AgentState::Active && (input.connected)(&a.id))
        .collect();
    let frameworks: Vec<&FrameworkInfo> = state
        .frameworks
        .values()
        .filter(|f| f.removed_ms.is_none())
        .collect();
    let mut total = Resources::default();
    for a in &active {
        total.add_assign(&a.resources);
    }
    sorter.set_total(total);
    // A framework's tasks in a role it has left still count there, but it is offered only for
    // the roles it has now.
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
    // What live tasks hold comes from the sums the state keeps up to date: no walk of every
    // task, and no copy of them.
    for ((role, fw), r) in &state.allocations.held {
        let registered = state
            .frameworks
            .get(fw)
            .is_some_and(|f| f.removed_ms.is_none());
        if registered {
            sorter.allocate(role, fw, &r.sum());
        }
    }
    // Exclusive offers add up; optimistic ones may overlap: together they can take at most
    // their join.
    let mut offered: HashMap<&str, Resources> = HashMap::new();
    let mut optimistic_offered: HashMap<&str, Resources> = HashMap::new();
    for o in input.offers.values() {
        if o.optimistic {
            let h = optimistic_offered.entry(o.agent_id.as_str()).or_default();
            *h = h.join(&o.resources);
        } else {
            offered
                .entry(o.agent_id.as_str())
                .or_default()
                .add_assign(&o.resources);
        }
        sorter.allocate(&o.role, &o.framework_id, &o.resources);
    }
    for ((role, fw), r) in input.pending_held {
        sorter.allocate(role, fw, r);
    }
    let optimistic: Vec<&FrameworkInfo> = frameworks
        .iter()
        .filter(|f| f.optimistic && !f.suppressed)
        .copied()
        .collect();
    // Whether every agent's unheld resources are needed (for optimistic offers), or only those
    // of agents with something to offer.
    let all_unheld = !(optimistic.is_empty() && optimistic_offered.is_empty());
    // What no task, launch in flight or exclusive offer holds, per agent (none of an agent
    // that has less than they hold).
    let mut unheld: Vec<Free> = active
        .iter()
        .filter_map(|a| {
            let taken = [
                state.allocations.by_agent.get(&a.id),
                offered.get(a.id.as_str()),
                input.pending.get(&a.id),
            ];
            if !all_unheld {
                // An agent with no cpus or no memory left is offered nothing: told by two
                // scalars, without a copy of its resources (in a busy cluster, most agents).
                let left = |of: fn(&Resources) -> Scalar| {
                    taken
                        .iter()
                        .flatten()
                        .try_fold(of(&a.resources), |left, t| left.checked_sub(of(t)))
                        .is_some_and(|s| !s.is_zero())
                };
                if !left(Resources::cpus) || !left(Resources::mem) {
                    return None;
                }
            }
            let mut left = a.resources.clone();
            for t in taken.into_iter().flatten() {
                if !left.checked_sub_assign(t) {
                    return None;
                }
            }
            Some(Free {
                agent_id: a.id.clone(),
                resources: left,
            })
        })
        .collect();
    // Offered exclusively only when no optimistic offer holds it either. `unheld` is kept
    // for the optimistic stage only when some framework takes optimistic offers.
    let exclusive = |f: &Free| Free {
        agent_id: f.agent_id.clone(),
        resources: match optimistic_offered.get(f.agent_id.as_str()) {
            Some(o) => f.resources.saturating_sub(o),
            None => f.resources.clone(),
        },
    };
    let free: Vec<Free> = if !all_unheld {
        std::mem::take(&mut unheld)
            .into_iter()
            .filter(|f| allocatable(&f.resources))
            .collect()
    } else {
        unheld
            .iter()
            .map(exclusive)
            .filter(|f| allocatable(&f.resources))
            .collect()
    };
    let had_free = !free.is_empty();
    // Asked once or more per offer: no key is built unless a filter may match.
    let may_offer = |fw: &str, role: &str, agent: &str| {
        subscribed.contains(&(role, fw))
            && (input.filters.is_empty()
                || !input
                    .filters
                    .contains_key(&(fw.to_string(), agent.to_string())))
    };
    let mut planned = if had_free {
        plan(&mut sorter, &quotas, free, may_offer)
    } else {
        Vec::new()
    };
    if !optimistic.is_empty() {
        let ids: HashSet<&str> = optimistic.iter().map(|f| f.id.as_str()).collect();
        for p in &mut planned {
            p.optimistic = ids.contains(p.framework_id.as_str());
        }
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
    let mut holding: HashSet<&str> = input
        .offers
        .values()
        .map(|o| o.framework_id.as_str())
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
    let offered: HashSet<&str> = planned.iter().map(|p| p.agent_id.as_str()).collect();
    let hostnames = offered
        .iter()
        .filter_map(|a| state.agents.get(*a))
        .map(|a| (a.id.clone(), a.hostname.clone()))
        .collect();
    let frameworks = frameworks.iter().map(|f| f.id.clone()).collect();
    Output {
        planned,
        why,
        hostnames,
        frameworks,
    }
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
        .map(|(i, f)| (f.agent_id.clone(), i))
        .collect();
    for p in planned.iter().filter(|p| !p.optimistic) {
        if let Some(&i) = at.get(&p.agent_id) {
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
                let key = (fw.id.clone(), pool.agent_id.clone());
                let held = mine.get(&key).cloned().unwrap_or_default();
                let mut offer = pool.resources.usable_by(role).saturating_sub(&held);
                if let Some(room) = room(sorter, quotas, role) {
                    offer = room.apply(&offer);
                }
                if !allocatable(&offer) {
                    continue;
                }
                sorter.allocate(role, &fw.id, &offer);
                mine.insert(key, held.add(&offer));
                out.push(Planned {
                    agent_id: pool.agent_id.clone(),
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
        run(&Input {
            cluster: &Cluster::gather(state),
            connected: &|agent| agent == "a1",
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
}
