//! The allocator: which framework, in which role, each agent's free resources are offered to.
//!
//! One allocation pass takes the agents' free resources and the roles' quotas, and plans
//! offers in hierarchical DRF order ([`drf`]): first to roles below their guarantee (up to it),
//! then to every role, never past a role's limit, keeping back what the unmet guarantees still
//! need. An agent's free resources may be split between several frameworks in one pass when a
//! limit or guarantee cuts an offer short. The pass is pure: the leader gives it the state and
//! makes the offers it plans.

pub mod drf;
pub mod pass;
pub mod roles;

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::resources::{split_key, Resources, Scalar, Value, CPUS, MEM};
use drf::Sorter;

/// A role's quota: what it is guaranteed, and what it may never exceed (Mesos syntax, scalars).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Offered to the role before any other role gets more, while the cluster has it.
    #[serde(default)]
    pub guarantee: Resources,
    /// Never offered past, counting what the role and the roles under it hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<Resources>,
}

/// An agent's resources free this pass (its id and host name lent by what the pass starts
/// from: copied only into the offers planned).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Free<'a> {
    /// The agent.
    pub agent_id: Cow<'a, str>,
    /// Its host name.
    pub hostname: Cow<'a, str>,
    /// What it has free: not held by tasks, pending launches or outstanding offers.
    pub resources: Resources,
}

/// An offer the pass plans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// The agent whose resources it offers.
    pub agent_id: String,
    /// The agent's host name.
    pub hostname: String,
    /// The framework it goes to.
    pub framework_id: String,
    /// The role it is for.
    pub role: String,
    /// What it offers.
    pub resources: Resources,
    /// Whether it is an optimistic offer (other optimistic frameworks may be offered the same).
    pub optimistic: bool,
}

/// Whether resources are worth offering: some cpus and some memory (Mesos's minimum
/// allocatable resources), however reserved.
pub fn allocatable(r: &Resources) -> bool {
    // One look at each of the few entries: asked several times per offer a pass plans.
    let (mut cpus, mut mem) = (false, false);
    for (key, v) in r.iter() {
        if let Value::Scalar(s) = v {
            if !s.is_zero() {
                match split_key(key).0 {
                    CPUS => cpus = true,
                    MEM => mem = true,
                    _ => {}
                }
            }
        }
    }
    cpus && mem
}

/// An upper bound on some scalars (by name); scalars it does not name are unbounded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cap(BTreeMap<String, Scalar>);

impl Cap {
    /// The scalars of `r` (however reserved) as bounds.
    pub fn of(r: &Resources) -> Cap {
        Cap(r
            .flatten()
            .iter()
            .filter_map(|(name, v)| match v {
                Value::Scalar(s) => Some((name.to_string(), *s)),
                _ => None,
            })
            .collect())
    }

    /// Each bound less what `held` has of it, down to zero.
    pub fn less(&self, held: &Resources) -> Cap {
        Cap(self
            .0
            .iter()
            .map(|(name, s)| {
                let left = s.checked_sub(held.scalar_all(name)).unwrap_or_default();
                (name.clone(), left)
            })
            .collect())
    }

    /// The tighter of two caps, bound by bound.
    pub fn min(&self, other: &Cap) -> Cap {
        let mut out = self.0.clone();
        for (name, s) in &other.0 {
            out.entry(name.clone())
                .and_modify(|mine| *mine = (*mine).min(*s))
                .or_insert(*s);
        }
        Cap(out)
    }

    /// The sum of two caps (of what is owed), bound by bound.
    pub fn plus(&self, other: &Cap) -> Cap {
        let mut out = self.0.clone();
        for (name, s) in &other.0 {
            out.entry(name.clone())
                .and_modify(|mine| *mine = mine.saturating_add(*s))
                .or_insert(*s);
        }
        Cap(out)
    }

    /// The bound on one scalar, if any.
    pub fn get(&self, name: &str) -> Option<Scalar> {
        self.0.get(name).copied()
    }

    /// Only the bounds above zero (what is still owed, of a guarantee).
    pub fn owed(&self) -> Cap {
        Cap(self
            .0
            .iter()
            .filter(|(_, s)| !s.is_zero())
            .map(|(n, s)| (n.clone(), *s))
            .collect())
    }

    /// Whether every bound is zero (nothing left, or nothing owed).
    pub fn is_zero(&self) -> bool {
        self.0.values().all(|s| s.is_zero())
    }

    /// `r` with each scalar this names cut to its bound, reservations counted first (they can
    /// serve no one else); everything else kept.
    pub fn apply(&self, r: Resources) -> Resources {
        if self.0.is_empty() {
            return r;
        }
        let mut budget = self.0.clone();
        let (reserved, unreserved): (Vec<_>, Vec<_>) =
            r.iter().partition(|(key, _)| split_key(key).1.is_some());
        let mut out = Resources::default();
        for (key, v) in reserved.into_iter().chain(unreserved) {
            let v = match (v, budget.get_mut(split_key(key).0)) {
                (Value::Scalar(s), Some(bound)) => {
                    let taken = (*s).min(*bound);
                    *bound -= taken;
                    Value::Scalar(taken)
                }
                _ => v.clone(),
            };
            out = out.with_value(key, v);
        }
        out
    }
}

/// What is left before `role` or a role above it reaches its limit (`None`: no limit).
pub fn room(sorter: &Sorter, quotas: &BTreeMap<String, Quota>, role: &str) -> Option<Cap> {
    quotas
        .iter()
        .filter(|(r, _)| drf::is_within(role, r))
        .filter_map(|(r, q)| Some(Cap::of(q.limit.as_ref()?).less(&sorter.held(r))))
        .reduce(|a, b| a.min(&b))
}

/// What each role with a guarantee still lacks of it (roles that lack nothing left out).
fn unmet(sorter: &Sorter, quotas: &BTreeMap<String, Quota>) -> BTreeMap<String, Cap> {
    quotas
        .iter()
        .map(|(r, q)| (r.clone(), Cap::of(&q.guarantee).less(&sorter.held(r))))
        .filter(|(_, lack)| !lack.is_zero())
        .collect()
}

/// The best offer of `free` for a (role, framework) in DRF order, cut by `cut(role)`.
fn pick(
    sorter: &Sorter,
    quotas: &BTreeMap<String, Quota>,
    free: &Free,
    may_offer: &impl Fn(&str, &str, &str) -> bool,
    cut: impl Fn(&str) -> Option<Cap>,
) -> Option<(String, String, Resources)> {
    sorter.find_map(|role, fw| {
        let lack = cut(role)?;
        if !may_offer(fw, role, &free.agent_id) {
            return None;
        }
        // Resources reserved for other roles are not this role's to take.
        let mut offer = lack.apply(free.resources.usable_by(role));
        if let Some(room) = room(sorter, quotas, role) {
            offer = room.apply(offer);
        }
        allocatable(&offer).then(|| (role.to_string(), fw.to_string(), offer))
    })
}

/// Plans one pass: offers of the agents' free resources, in DRF order, within the quotas.
/// `sorter` holds what every (role, framework) holds now, and is updated with the planned
/// offers. `may_offer(framework, role, agent)` says whether a framework takes offers of that
/// agent for that role now (not suppressed, not filtered).
pub fn plan(
    sorter: &mut Sorter,
    quotas: &BTreeMap<String, Quota>,
    agents: Vec<Free>,
    may_offer: impl Fn(&str, &str, &str) -> bool,
) -> Vec<Planned> {
    let mut agents = agents;
    let mut out = Vec::new();
    // Stage 1: roles below their guarantee, each offered up to what it lacks.
    for agent in &mut agents {
        while allocatable(&agent.resources) {
            let lacking = unmet(sorter, quotas);
            if lacking.is_empty() {
                break;
            }
            // Capped at what is still owed of each scalar; scalars of the guarantee already met
            // are offered as the agent has them (a role short of cpus needs memory with them).
            let lack_of = |role: &str| {
                lacking
                    .iter()
                    .filter(|(r, _)| drf::is_within(role, r))
                    .map(|(_, l)| l.owed())
                    .reduce(|a, b| a.min(&b))
            };
            let Some((role, fw, offer)) = pick(sorter, quotas, agent, &may_offer, lack_of) else {
                break;
            };
            take(sorter, agent, &mut out, role, fw, offer);
        }
    }
    // Stage 2: every role; what unmet guarantees still lack is kept back, from the first
    // agents' free resources, so that no other role takes it.
    let mut keep_back = unmet(sorter, quotas)
        .into_values()
        .fold(Cap::default(), |acc, l| acc.plus(&l));
    for agent in &mut agents {
        if !keep_back.is_zero() {
            // Reserved resources serve only their roles: the keep-back comes from the rest.
            let kept = keep_back.apply(agent.resources.unreserved());
            keep_back = keep_back.less(&kept);
            agent.resources = agent
                .resources
                .checked_sub(&only_scalars(&kept))
                .unwrap_or_default();
        }
        while allocatable(&agent.resources) {
            let Some((role, fw, offer)) =
                pick(sorter, quotas, agent, &may_offer, |_| Some(Cap::default()))
            else {
                break;
            };
            take(sorter, agent, &mut out, role, fw, offer);
        }
    }
    out
}

/// Only the scalars of `r`.
fn only_scalars(r: &Resources) -> Resources {
    r.iter()
        .filter(|(_, v)| matches!(v, Value::Scalar(_)))
        .fold(Resources::default(), |acc, (name, v)| {
            acc.with_value(name, v.clone())
        })
}

/// Records a planned offer: the framework holds it, the agent has it no more.
fn take(
    sorter: &mut Sorter,
    agent: &mut Free,
    out: &mut Vec<Planned>,
    role: String,
    framework_id: String,
    offer: Resources,
) {
    sorter.allocate(&role, &framework_id, &offer);
    // Most offers are all the agent has free: told by a comparison, without a subtraction.
    if offer == agent.resources || !agent.resources.checked_sub_assign(&offer) {
        agent.resources = Resources::default();
    }
    out.push(Planned {
        agent_id: agent.agent_id.to_string(),
        hostname: agent.hostname.to_string(),
        framework_id,
        role,
        resources: offer,
        optimistic: false,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(text: &str) -> Resources {
        Resources::parse(text).unwrap()
    }

    fn agents(n: usize, each: &str) -> Vec<Free<'static>> {
        (0..n)
            .map(|i| Free {
                agent_id: format!("a{i}").into(),
                hostname: format!("h{i}").into(),
                resources: r(each),
            })
            .collect()
    }

    fn sorter_for(agents: &[Free], clients: &[(&str, &str)]) -> Sorter {
        let mut s = Sorter::new();
        s.set_total(
            agents
                .iter()
                .fold(Resources::default(), |acc, a| acc.add(&a.resources)),
        );
        for (role, fw) in clients {
            s.add_client(role, fw);
        }
        s
    }

    fn anyone(_: &str, _: &str, _: &str) -> bool {
        true
    }

    fn held(plans: &[Planned], fw: &str) -> Resources {
        plans
            .iter()
            .filter(|p| p.framework_id == fw)
            .fold(Resources::default(), |acc, p| acc.add(&p.resources))
    }

    #[test]
    fn each_agent_goes_whole_to_the_framework_with_the_least_share() {
        let free = agents(4, "cpus:4;mem:400;ports:[31000-31009]");
        let mut s = sorter_for(&free, &[("*", "f1"), ("*", "f2")]);
        let plans = plan(&mut s, &BTreeMap::new(), free, anyone);
        assert_eq!(plans.len(), 4);
        let to: Vec<&str> = plans.iter().map(|p| p.framework_id.as_str()).collect();
        assert_eq!(to, ["f1", "f2", "f1", "f2"]);
        assert_eq!(plans[0].resources, r("cpus:4;mem:400;ports:[31000-31009]"));
    }

    #[test]
    fn weights_give_shares_in_proportion() {
        let free = agents(8, "cpus:1;mem:100");
        let mut s = sorter_for(&free, &[("a", "fa"), ("b", "fb")]);
        s.set_weight("b", Some(3.0));
        let plans = plan(&mut s, &BTreeMap::new(), free, anyone);
        assert_eq!(held(&plans, "fa").cpus(), Scalar::from_units(2));
        assert_eq!(held(&plans, "fb").cpus(), Scalar::from_units(6));
    }

    #[test]
    fn a_limit_is_never_passed_and_splits_an_agent() {
        let free = agents(2, "cpus:4;mem:400");
        let mut s = sorter_for(&free, &[("capped", "c"), ("*", "other")]);
        let quotas = BTreeMap::from([(
            "capped".to_string(),
            Quota {
                guarantee: Resources::default(),
                limit: Some(r("cpus:3;mem:300")),
            },
        )]);
        let plans = plan(&mut s, &quotas, free, anyone);
        assert_eq!(held(&plans, "c").cpus(), Scalar::from_units(3));
        assert_eq!(held(&plans, "other").cpus(), Scalar::from_units(5));
        // "*" sorts before "capped": a0 goes whole to other, then a1 is split.
        let on_second: Vec<(&str, Resources)> = plans
            .iter()
            .filter(|p| p.agent_id == "a1")
            .map(|p| (p.framework_id.as_str(), p.resources.clone()))
            .collect();
        assert_eq!(
            on_second,
            [("c", r("cpus:3;mem:300")), ("other", r("cpus:1;mem:100"))],
            "the capped offer leaves the rest to another"
        );
    }

    #[test]
    fn a_guarantee_is_met_first_and_kept_back_from_others() {
        // The guaranteed role's framework is declined on the first two agents: its guarantee
        // must then be kept on the others rather than offered to the greedy role.
        let free = agents(4, "cpus:2;mem:200");
        let mut s = sorter_for(&free, &[("greedy", "g"), ("owed", "o")]);
        s.allocate("greedy", "g", &Resources::default());
        let quotas = BTreeMap::from([(
            "owed".to_string(),
            Quota {
                guarantee: r("cpus:4;mem:100"),
                limit: None,
            },
        )]);
        let may = |fw: &str, _: &str, agent: &str| fw != "o" || agent == "a3";
        let plans = plan(&mut s, &quotas, free, may);
        assert_eq!(held(&plans, "o").cpus(), Scalar::from_units(2), "a3 only");
        // 2 more cpus are owed to "owed": kept back, so greedy gets 8 - 2 - 2 = 4.
        assert_eq!(held(&plans, "g").cpus(), Scalar::from_units(4));
    }

    #[test]
    fn no_offer_to_a_framework_that_may_not_take_one() {
        let free = agents(2, "cpus:1;mem:100");
        let mut s = sorter_for(&free, &[("*", "suppressed")]);
        let plans = plan(&mut s, &BTreeMap::new(), free, |fw, _, _| {
            fw != "suppressed"
        });
        assert!(plans.is_empty());
        let free = agents(1, "cpus:0;mem:100");
        let mut s = sorter_for(&free, &[("*", "f")]);
        assert!(
            plan(&mut s, &BTreeMap::new(), free, anyone).is_empty(),
            "no cpus"
        );
    }

    #[test]
    fn reserved_resources_are_offered_only_to_their_role_and_the_roles_under_it() {
        let free = agents(1, "cpus:1;mem:100;cpus(eng):2;mem(eng):200");
        let mut s = sorter_for(&free, &[("ops", "o")]);
        let plans = plan(&mut s, &BTreeMap::new(), free.clone(), anyone);
        assert_eq!(
            held(&plans, "o"),
            r("cpus:1;mem:100"),
            "ops gets the rest only"
        );

        let mut s = sorter_for(&free, &[("eng/web", "w")]);
        let plans = plan(&mut s, &BTreeMap::new(), free.clone(), anyone);
        assert_eq!(
            held(&plans, "w"),
            r("cpus:1;mem:100;cpus(eng):2;mem(eng):200")
        );

        // With both, the reservation ends with eng's framework whoever comes first.
        let mut s = sorter_for(&free, &[("eng", "e"), ("ops", "o")]);
        let plans = plan(&mut s, &BTreeMap::new(), free, anyone);
        assert_eq!(held(&plans, "e").scalar("cpus(eng)"), Scalar::from_units(2));
        assert!(!held(&plans, "o").has_reservations());
        assert_eq!(
            held(&plans, "e").add(&held(&plans, "o")),
            r("cpus:1;mem:100;cpus(eng):2;mem(eng):200"),
            "everything offered once"
        );
    }

    #[test]
    fn a_limit_counts_reserved_resources_too() {
        let free = agents(1, "cpus:4;mem:400;cpus(eng):2;mem(eng):200");
        let mut s = sorter_for(&free, &[("eng", "e")]);
        let quotas = BTreeMap::from([(
            "eng".to_string(),
            Quota {
                guarantee: Resources::default(),
                limit: Some(r("cpus:3;mem:300")),
            },
        )]);
        let plans = plan(&mut s, &quotas, free, anyone);
        let got = held(&plans, "e");
        assert_eq!(got.cpus(), Scalar::from_units(3));
        assert_eq!(
            got.scalar("cpus(eng)"),
            Scalar::from_units(2),
            "reserved first"
        );
    }
}
