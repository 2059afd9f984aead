//! Optimistic offers (what Mesos designed and never shipped): a framework that writes `1` to
//! its `optimistic` file may be offered free resources other such frameworks are offered too.
//! The first launch to commit wins; a later one that no longer fits the agent's free resources
//! fails with ESTALE, naming what took them, and its framework is offered afresh. Exclusive
//! offers never hold what an optimistic offer holds, so they never go stale this way.

use std::collections::{HashMap, VecDeque};

use tracing::info;

use super::writes::{offer_gone, Writer};
use super::{now_ms, refuse, Allocation, Leader, Refusal};
use crate::resources::Resources;
use crate::state::clients::WriteId;
use crate::state::Command;
use crate::watch::Offer;

/// Launches remembered per agent, to say what took an optimistic offer's resources.
const RECENT_PER_AGENT: usize = 16;
/// Offers rescinded as stale whose reason a late launch is still told.
const STALE_REMEMBERED: usize = 1024;

/// What one launch took on an agent.
#[derive(Clone, Debug)]
struct Taken {
    /// When (unix ms).
    time_ms: u64,
    /// The framework's id and name.
    framework_id: String,
    framework: String,
    /// Its tasks' names.
    tasks: Vec<String>,
    /// What they hold.
    resources: Resources,
}

/// The leader's record for optimistic offers: recent launches per agent, and offers rescinded
/// because they went stale.
#[derive(Debug, Default)]
pub(super) struct Book {
    recent: HashMap<String, VecDeque<Taken>>,
    stale: VecDeque<(String, String)>,
}

impl Book {
    /// Records a launch on an agent.
    pub(super) fn launched(
        &mut self,
        agent_id: &str,
        framework_id: &str,
        framework: &str,
        tasks: Vec<String>,
        resources: &Resources,
    ) {
        let r = self.recent.entry(agent_id.to_string()).or_default();
        if r.len() == RECENT_PER_AGENT {
            r.pop_front();
        }
        r.push_back(Taken {
            time_ms: now_ms(),
            framework_id: framework_id.to_string(),
            framework: framework.to_string(),
            tasks,
            resources: resources.clone(),
        });
    }

    /// Why `offer` went stale: the launches of other frameworks on its agent since it was made.
    fn why_stale(&self, offer: &Offer, free: &Resources) -> String {
        let took: Vec<String> = self
            .recent
            .get(&offer.agent_id)
            .into_iter()
            .flatten()
            .filter(|t| t.time_ms >= offer.created_ms && t.framework_id != offer.framework_id)
            .map(|t| {
                format!(
                    "framework {} launched {} ({})",
                    t.framework,
                    t.tasks.join(", "),
                    t.resources
                )
            })
            .collect();
        let took = match took.is_empty() {
            true => "the agent's free resources changed".to_string(),
            false => took.join("; "),
        };
        format!(
            "offer {} is stale: since it was made, {took}; agent {} has {} free for it now; read offers/next for a fresh offer",
            offer.id,
            offer.agent_id,
            if free.is_empty() { "nothing".to_string() } else { free.to_string() }
        )
    }

    /// Remembers why an offer was rescinded as stale.
    fn went_stale(&mut self, offer_id: &str, reason: &str) {
        if self.stale.len() == STALE_REMEMBERED {
            self.stale.pop_front();
        }
        self.stale
            .push_back((offer_id.to_string(), reason.to_string()));
    }

    /// The refusal of a write to an offer no longer outstanding: ESTALE with its reason if it
    /// was rescinded as stale, else ENOENT.
    pub(super) fn gone(&self, offer_id: &str) -> Refusal {
        match self.stale.iter().rev().find(|(id, _)| id == offer_id) {
            Some((_, reason)) => refuse(libc::ESTALE, reason.clone()),
            None => offer_gone(offer_id),
        }
    }
}

impl Leader {
    /// What an agent has free for an optimistic offer: its resources less what tasks,
    /// launches in flight and exclusive offers hold (other optimistic offers hold nothing).
    fn free_for_optimistic(&self, alloc: &Allocation, agent_id: &str) -> Resources {
        let unheld = self.hub.read(|s| {
            s.agents
                .get(agent_id)
                .map(|a| a.resources.saturating_sub(&s.allocated_on(agent_id)))
                .unwrap_or_default()
        });
        let exclusive = self.board.read(|offers| {
            offers
                .on_agent(agent_id)
                .filter(|o| !o.optimistic)
                .fold(Resources::new(), |acc, o| acc.add(&o.resources))
        });
        unheld
            .saturating_sub(&alloc.pending.get(agent_id).cloned().unwrap_or_default())
            .saturating_sub(&exclusive)
    }

    /// Checks that `taking` from optimistic `offer` still fits its agent's free resources.
    /// If not, the offer is rescinded as stale (and the framework offered afresh): ESTALE.
    pub(super) fn check_fresh(
        &self,
        alloc: &mut Allocation,
        offer: &Offer,
        taking: &Resources,
    ) -> Result<(), Refusal> {
        if !offer.optimistic {
            return Ok(());
        }
        let free = self.free_for_optimistic(alloc, &offer.agent_id);
        if free.contains(taking) {
            return Ok(());
        }
        let reason = alloc.optimistic.why_stale(offer, &free);
        self.board.remove_offer(&offer.id, &reason, true);
        alloc.optimistic.went_stale(&offer.id, &reason);
        info!(offer = %offer.id, framework = %offer.framework_id, agent = %offer.agent_id, "optimistic offer stale at launch");
        self.reallocate();
        Err(refuse(libc::ESTALE, reason))
    }

    /// After resources of an agent were taken through an optimistic offer: rescinds the
    /// optimistic offers on that agent that no longer fit its free resources.
    pub(super) fn rescind_stale(&self, agent_id: &str) {
        let mut alloc = self.alloc.lock().expect("alloc lock");
        let free = self.free_for_optimistic(&alloc, agent_id);
        let stale: Vec<Offer> = self.board.read(|offers| {
            offers
                .on_agent(agent_id)
                .filter(|o| o.optimistic)
                .filter(|o| !free.contains(&o.resources))
                .cloned()
                .collect()
        });
        for offer in stale {
            let reason = alloc.optimistic.why_stale(&offer, &free);
            if self.board.remove_offer(&offer.id, &reason, true).is_some() {
                info!(offer = %offer.id, framework = %offer.framework_id, agent = %agent_id, "optimistic offer rescinded: stale");
                alloc.optimistic.went_stale(&offer.id, &reason);
            }
        }
        drop(alloc);
        self.reallocate();
    }

    /// Starts (`1`) or stops (`0`) optimistic offers to a framework. Its outstanding offers
    /// are rescinded either way, so that every offer it holds is of the kind it asked for.
    pub(super) async fn set_optimistic(
        &self,
        write: Option<&WriteId>,
        framework: &str,
        writer: &Writer,
        text: &str,
    ) -> Result<u64, Refusal> {
        let fw = self.owned_framework(framework, writer, None)?;
        let optimistic = match text.trim() {
            "1" => true,
            "0" => false,
            other => {
                return Err(refuse(
                    libc::EINVAL,
                    format!(
                        "write 1 to take optimistic offers or 0 to take exclusive ones only, not {other:?}"
                    ),
                ))
            }
        };
        let r = self
            .commit_write(
                write,
                Command::SetOptimistic {
                    framework_id: fw.id.clone(),
                    optimistic,
                },
            )
            .await?;
        if let Some(e) = r.applied.error {
            return Err(refuse(libc::ENOENT, e.to_string()));
        }
        if let Some(first) = r.applied.duplicate_of {
            return Ok(first);
        }
        if fw.optimistic != optimistic {
            info!(framework = %fw.id, optimistic, "optimistic offers {}", if optimistic { "on" } else { "off" });
            self.board.remove_offers_where(
                |o| o.framework_id == fw.id,
                if optimistic {
                    "the framework takes optimistic offers now"
                } else {
                    "the framework takes exclusive offers only now"
                },
                true,
            );
        }
        self.reallocate();
        Ok(r.index)
    }
}
