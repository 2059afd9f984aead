//! The allocator: which framework an agent's free resources are offered to, and offer expiry.

use std::time::Instant;

use tracing::{debug, info};

use super::{after, now_ms, Leader};
use crate::resources::Scalar;
use crate::state::{AgentState, FrameworkInfo};
use crate::watch::Offer;

impl Leader {
    /// Offers the free resources of these agents, each to the next framework in turn.
    pub fn allocate(&self, agents: impl IntoIterator<Item = String>) {
        for agent_id in agents {
            self.allocate_agent(&agent_id);
        }
    }

    fn allocate_agent(&self, agent_id: &str) {
        if self.is_stopped() || !self.connected(agent_id) {
            return;
        }
        let mut alloc = self.alloc.lock().expect("alloc lock");
        let now = Instant::now();
        alloc.filters.retain(|_, until| *until > now);
        let pending = alloc.pending.get(agent_id).cloned().unwrap_or_default();
        let last = alloc.last_framework.clone();
        if self
            .board
            .read(|offers| offers.values().any(|o| o.agent_id == agent_id))
        {
            return;
        }
        let choice = self.hub.read(|state| {
            let agent = state.agents.get(agent_id)?;
            if agent.state != AgentState::Active {
                return None;
            }
            let free = agent
                .resources
                .checked_sub(&state.allocated_on(agent_id))
                .and_then(|r| r.checked_sub(&pending))?;
            if free.cpus() == Scalar::default() || free.mem() == Scalar::default() {
                return None;
            }
            let frameworks: Vec<&FrameworkInfo> = state.active_frameworks().collect();
            if frameworks.is_empty() {
                return None;
            }
            // Round robin: start after the framework offered to last.
            let start = last
                .as_ref()
                .and_then(|l| frameworks.iter().position(|f| f.id > *l))
                .unwrap_or(0);
            let fw = (0..frameworks.len())
                .map(|i| frameworks[(start + i) % frameworks.len()])
                .find(|f| {
                    !alloc
                        .filters
                        .contains_key(&(f.id.clone(), agent_id.to_string()))
                })?;
            Some((fw.id.clone(), agent.hostname.clone(), free))
        });
        let Some((framework_id, hostname, resources)) = choice else {
            return;
        };
        alloc.offer_seq += 1;
        alloc.last_framework = Some(framework_id.clone());
        let offer = Offer {
            id: format!("{}-{}", self.epoch, alloc.offer_seq),
            framework_id,
            agent_id: agent_id.to_string(),
            hostname,
            resources,
            created_ms: now_ms(),
        };
        debug!(offer = %offer.id, framework = %offer.framework_id, agent = %agent_id, resources = %offer.resources, "offer made");
        let id = offer.id.clone();
        self.board.add_offer(offer);
        drop(alloc);
        self.expire_offer_later(id, agent_id.to_string());
    }

    fn expire_offer_later(&self, offer_id: String, agent_id: String) {
        let me = self.me.clone();
        let timeout = self.config.offer_timeout;
        tokio::spawn(async move {
            let Some(me) = after(&me, timeout).await else {
                return;
            };
            let reason = format!("expired after {}s unused", timeout.as_secs_f64());
            if me.board.remove_offer(&offer_id, &reason, true).is_some() {
                info!(offer = %offer_id, "offer rescinded: {reason}");
                me.allocate([agent_id]);
            }
        });
    }
}
