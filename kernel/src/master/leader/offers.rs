//! Offers: allocation passes (planned by [`crate::allocator`]) and offer expiry.
//!
//! Anything that may free or add resources asks for a pass ([`Leader::reallocate`]); passes run
//! at most once per allocation interval, each over every connected agent, so a burst of task
//! ends is offered in one pass rather than one pass each.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info};

use super::{after, now_ms, Leader};
use crate::allocator::{self, drf::Sorter, Free, Quota};
use crate::resources::Resources;
use crate::state::AgentState;
use crate::watch::Offer;

impl Leader {
    /// Asks for an allocation pass within the allocation interval.
    pub fn reallocate(&self) {
        self.allocation_wanted.notify_one();
    }

    /// Runs allocation passes, as asked, while this leadership lasts.
    pub fn run_allocator(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last: Option<tokio::time::Instant> = None;
            loop {
                let Some(leader) = me.upgrade() else { return };
                tokio::select! {
                    _ = leader.allocation_wanted.notified() => {}
                    _ = leader.until_stopped() => return,
                }
                if let Some(last) = last {
                    let next = last + leader.config.allocation_interval;
                    tokio::select! {
                        _ = tokio::time::sleep_until(next) => {}
                        _ = leader.until_stopped() => return,
                    }
                }
                last = Some(tokio::time::Instant::now());
                if leader.is_stopped() {
                    return;
                }
                leader.allocation_pass();
            }
        });
    }

    /// One pass: every connected agent's free resources (less what tasks hold, launches being
    /// committed take and outstanding offers hold) offered as the allocator plans.
    fn allocation_pass(&self) {
        let mut alloc = self.alloc.lock().expect("alloc lock");
        let now = Instant::now();
        alloc.filters.retain(|_, until| *until > now);
        let connected: HashSet<String> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .keys()
            .cloned()
            .collect();
        let offers: Vec<Offer> = self.board.read(|o| o.values().cloned().collect());
        let (mut sorter, quotas, subscribed, free, hostnames, frameworks) =
            self.hub.read(|state| {
                let mut sorter = Sorter::new();
                let active: Vec<_> = state
                    .agents
                    .values()
                    .filter(|a| a.state == AgentState::Active && connected.contains(&a.id))
                    .collect();
                sorter.set_total(
                    active
                        .iter()
                        .fold(Resources::default(), |acc, a| acc.add(&a.resources)),
                );
                // A framework's tasks in a role it has left still count there, but it is offered
                // only for the roles it has now.
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
                for o in &offers {
                    let h = held.entry(o.agent_id.as_str()).or_default();
                    *h = h.add(&o.resources);
                }
                let free: Vec<Free> = active
                    .iter()
                    .filter_map(|a| {
                        let taken = held
                            .get(a.id.as_str())
                            .cloned()
                            .unwrap_or_default()
                            .add(&alloc.pending.get(&a.id).cloned().unwrap_or_default());
                        Some(Free {
                            agent_id: a.id.clone(),
                            resources: a.resources.checked_sub(&taken)?,
                        })
                    })
                    .filter(|f| allocator::allocatable(&f.resources))
                    .collect();
                let hostnames: HashMap<String, String> = active
                    .iter()
                    .map(|a| (a.id.clone(), a.hostname.clone()))
                    .collect();
                let frameworks: Vec<(String, bool, Vec<String>)> = state
                    .active_frameworks()
                    .map(|f| {
                        let roles = f.roles().into_iter().map(String::from).collect();
                        (f.id.clone(), f.suppressed, roles)
                    })
                    .collect();
                (sorter, quotas, subscribed, free, hostnames, frameworks)
            });
        let had_free = !free.is_empty();
        for o in &offers {
            sorter.allocate(&o.role, &o.framework_id, &o.resources);
        }
        for ((role, fw), r) in &alloc.pending_held {
            sorter.allocate(role, fw, r);
        }
        let filters = &alloc.filters;
        let planned = if had_free {
            allocator::plan(&mut sorter, &quotas, free, |fw, role, agent| {
                subscribed.contains(&(role.to_string(), fw.to_string()))
                    && !filters.contains_key(&(fw.to_string(), agent.to_string()))
            })
        } else {
            Vec::new()
        };
        let mut holding: HashSet<String> = offers.iter().map(|o| o.framework_id.clone()).collect();
        holding.extend(planned.iter().map(|p| p.framework_id.clone()));
        let context = WhyContext {
            sorter: &sorter,
            quotas: &quotas,
            filters: &alloc.filters,
            had_free,
            others_offered: !planned.is_empty(),
            now,
        };
        for (fw, suppressed, roles) in &frameworks {
            let text = if holding.contains(fw) {
                String::new()
            } else {
                context.why(fw, *suppressed, roles)
            };
            self.board.set_why(fw, text);
        }
        for gone in self.board.why_frameworks() {
            if !frameworks.iter().any(|(f, _, _)| *f == gone) {
                self.board.set_why(&gone, String::new());
            }
        }
        let mut made = Vec::with_capacity(planned.len());
        for p in planned {
            alloc.offer_seq += 1;
            let offer = Offer {
                id: format!("{}-{}", self.epoch, alloc.offer_seq),
                framework_id: p.framework_id,
                hostname: hostnames.get(&p.agent_id).cloned().unwrap_or_default(),
                agent_id: p.agent_id,
                resources: p.resources,
                role: p.role,
                created_ms: now_ms(),
            };
            debug!(offer = %offer.id, framework = %offer.framework_id, agent = %offer.agent_id, role = %offer.role, resources = %offer.resources, "offer made");
            made.push(offer.id.clone());
            self.board.add_offer(offer);
        }
        drop(alloc);
        for id in made {
            self.expire_offer_later(id);
        }
    }

    fn expire_offer_later(&self, offer_id: String) {
        let me = self.me.clone();
        let timeout = self.config.offer_timeout;
        tokio::spawn(async move {
            let Some(me) = after(&me, timeout).await else {
                return;
            };
            let reason = format!("expired after {}s unused", timeout.as_secs_f64());
            if me.board.remove_offer(&offer_id, &reason, true).is_some() {
                info!(offer = %offer_id, "offer rescinded: {reason}");
                me.reallocate();
            }
        });
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
            let Some(room) = allocator::room(self.sorter, self.quotas, role) else {
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
