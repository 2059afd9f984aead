//! Offers: allocation passes (planned by [`crate::allocator`]) and offer expiry.
//!
//! Anything that may free or add resources asks for a pass ([`Leader::reallocate`]); passes run
//! at most once per allocation interval, each over every connected agent, so a burst of task
//! ends is offered in one pass rather than one pass each.

use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info};

use super::{after, now_ms, Leader};
use crate::allocator;
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
        let mut guard = self.alloc.lock().expect("alloc lock");
        // One borrow of the guard, so that the allocator and the inputs it reads beside it
        // are borrowed apart.
        let alloc = &mut *guard;
        let now = Instant::now();
        alloc.filters.retain(|_, until| *until > now);
        let connected = self
            .sessions
            .lock()
            .expect("sessions lock")
            .connected
            .clone();
        // Copies of persistent maps, made in no time under the board's and the state's locks:
        // commands apply and offers change while the pass runs.
        let offers = self.board.read(|o| o.clone());
        let cluster = self.hub.read(allocator::pass::Cluster::gather);
        let pass = alloc.allocator.pass(&allocator::pass::Input {
            cluster: &cluster,
            connected: &connected,
            offers: &offers,
            pending: &alloc.pending,
            pending_held: &alloc.pending_held,
            filters: &alloc.filters,
            now,
        });
        let frameworks = pass.frameworks;
        for (fw, text) in pass.why {
            self.board.set_why(&fw, text);
        }
        for gone in self.board.why_frameworks() {
            if !frameworks.contains(&gone) {
                self.board.set_why(&gone, String::new());
            }
        }
        let mut made = Vec::with_capacity(pass.planned.len());
        for p in pass.planned {
            alloc.offer_seq += 1;
            let offer = Offer {
                id: format!("{}-{}", self.epoch, alloc.offer_seq),
                framework_id: p.framework_id,
                hostname: p.hostname,
                agent_id: p.agent_id,
                resources: p.resources,
                role: p.role,
                created_ms: now_ms(),
                optimistic: p.optimistic,
            };
            debug!(offer = %offer.id, framework = %offer.framework_id, agent = %offer.agent_id, role = %offer.role, resources = %offer.resources, "offer made");
            made.push(offer.id.clone());
            self.board.add_offer(offer);
        }
        drop(guard);
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
