//! One allocation pass over a cluster's state: what every connected agent has free, offered in
//! DRF order within the roles' quotas ([`super::plan`]), and, for every framework left without
//! an offer, why. Pure: the leader gives it the state and what only it holds (offers, launches
//! being committed, decline filters), and makes the offers it plans.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use super::drf::Sorter;
use super::{allocatable, plan, room, Free, Planned, Quota};
use crate::resources::Resources;
use crate::state::{AgentState, ClusterState};
use crate::watch::Offer;

/// What a pass starts from.
pub struct Input<'a> {
    /// The replicated state.
    pub state: &'a ClusterState,
    /// The agents connected to the leader: only their resources are offered.
    pub connected: &'a HashSet<String>,
    /// The outstanding offers.
    pub offers: &'a [Offer],
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
    let state = input.state;
    let mut sorter = Sorter::new();
    let active: Vec<_> = state
        .agents
        .values()
        .filter(|a| a.state == AgentState::Active && input.connected.contains(&a.id))
        .collect();
    sorter.set_total(
        active
            .iter()
            .fold(Resources::default(), |acc, a| acc.add(&a.resources)),
    );
    // A framework's tasks in a role it has left still count there, but it is offered only for
    // the roles it has now.
    let mut subscribed = HashSet::new();
    for fw in state.active_frameworks() {
        for role in fw.roles() {
            sorter.add_client(role, &fw.id);
            if !fw.suppressed {
                subscribed.insert((role.to_string(), fw.id.clone()));
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
    let mut held: HashMap<&str, Resources> = HashMap::new();
    for t in state.tasks.values().filter(|t| !t.state().is_terminal()) {
        let h = held.entry(t.agent_id.as_str()).or_default();
        *h = h.add(&t.resources);
        if let Some(fw) = state.frameworks.get(&t.framework_id) {
            if fw.removed_ms.is_none() {
                sorter.allocate(&t.role, &fw.id, &t.resources);
            }
        }
    }
    for o in input.offers {
        let h = held.entry(o.agent_id.as_str()).or_default();
        *h = h.add(&o.resources);
        sorter.allocate(&o.role, &o.framework_id, &o.resources);
    }
    for ((role, fw), r) in input.pending_held {
        sorter.allocate(role, fw, r);
    }
    let free: Vec<Free> = active
        .iter()
        .filter_map(|a| {
            let taken = held
                .get(a.id.as_str())
                .cloned()
                .unwrap_or_default()
                .add(&input.pending.get(&a.id).cloned().unwrap_or_default());
            Some(Free {
                agent_id: a.id.clone(),
                resources: a.resources.checked_sub(&taken)?,
            })
        })
        .filter(|f| allocatable(&f.resources))
        .collect();
    let had_free = !free.is_empty();
    let planned = if had_free {
        plan(&mut sorter, &quotas, free, |fw, role, agent| {
            subscribed.contains(&(role.to_string(), fw.to_string()))
                && !input
                    .filters
                    .contains_key(&(fw.to_string(), agent.to_string()))
        })
    } else {
        Vec::new()
    };
    let mut holding: HashSet<&str> = input
        .offers
        .iter()
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
    let why = state
        .active_frameworks()
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
    let hostnames = planned
        .iter()
        .filter_map(|p| {
            let a = state.agents.get(&p.agent_id)?;
            Some((a.id.clone(), a.hostname.clone()))
        })
        .collect();
    let frameworks = state.active_frameworks().map(|f| f.id.clone()).collect();
    Output {
        planned,
        why,
        hostnames,
        frameworks,
    }
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
