//! Dynamic reservations, made through offers: a write to `offers/<id>/reserve` reserves some
//! of the offer's unreserved resources for the offer's role, one to `offers/<id>/unreserve`
//! gives back resources reserved that way. The offer stays the framework's, holding the
//! resources in their new form.

use tracing::{info, info_span, Instrument};

use super::writes::Writer;
use super::{refuse, Leader, Refusal};
use crate::acls::Action;
use crate::allocator::roles::DEFAULT_ROLE;
use crate::resources::{split_key, Resources};
use crate::state::clients::WriteId;
use crate::state::Command;

/// What a reserve or unreserve write asks, in the state's terms.
struct Change {
    /// What leaves the offer (and is held while the command commits).
    take: Resources,
    /// What the offer holds instead once it committed.
    give: Resources,
    /// The roles whose reservations change.
    roles: Vec<String>,
}

/// Reads a write to `reserve` or `unreserve` of an offer for `role`. Amounts written without a
/// role are for the offer's role; one written with a role must name the offer's role (to
/// reserve) or a role whose reservations the offer holds (to give back).
fn change(text: &str, role: &str, unreserve: bool) -> Result<Change, Refusal> {
    let asked = Resources::parse(text).map_err(|e| refuse(libc::EINVAL, e.to_string()))?;
    if asked.is_empty() {
        return Err(refuse(
            libc::EINVAL,
            "write the resources, e.g. cpus:1;mem:256 (for the offer's role)",
        ));
    }
    if role == DEFAULT_ROLE && !asked.unreserved().is_empty() {
        return Err(refuse(
            libc::EINVAL,
            "this offer is for the default role *, which holds no reservations; write a role to the framework's role file first",
        ));
    }
    let keyed = asked.unreserved().reserved_for(role).add(&asked.reserved());
    let mut roles: Vec<String> = keyed
        .iter()
        .filter_map(|(k, _)| split_key(k).1.map(String::from))
        .collect();
    roles.sort();
    roles.dedup();
    if !unreserve {
        if let Some(other) = roles.iter().find(|r| *r != role) {
            return Err(refuse(
                libc::EINVAL,
                format!(
                    "an offer for role {role} reserves for {role} only, not {other}; write amounts without a role (cpus:1)"
                ),
            ));
        }
        return Ok(Change {
            take: keyed.flatten().into_owned(),
            give: keyed,
            roles,
        });
    }
    Ok(Change {
        give: keyed.flatten().into_owned(),
        take: keyed,
        roles,
    })
}

impl Leader {
    /// Reserves part of an offer for its role, or (`unreserve`) gives back reserved resources
    /// it holds: its framework's owner (or root) may, for roles the ACLs let the mount's
    /// principal reserve or unreserve for. The offer keeps its id.
    pub(super) async fn reserve(
        &self,
        write: Option<&WriteId>,
        framework: &str,
        writer: &Writer,
        offer_id: &str,
        text: &str,
        unreserve: bool,
    ) -> Result<u64, Refusal> {
        let fw = self.owned_framework(framework, writer, None)?;
        let offer = self
            .board
            .read(|offers| offers.get(offer_id).cloned())
            .filter(|o| o.framework_id == fw.id)
            .ok_or_else(|| {
                self.alloc
                    .lock()
                    .expect("alloc lock")
                    .optimistic
                    .gone(offer_id)
            })?;
        let span = info_span!("reserve", framework = %fw.id, agent = %offer.agent_id, offer = %offer_id, unreserve);
        async {
            let Change { take, give, roles } = change(text, &offer.role, unreserve)?;
            let action = if unreserve {
                Action::UnreserveResources
            } else {
                Action::ReserveResources
            };
            for role in &roles {
                self.permit(writer, action, role)?;
            }
            let too_little = |has: &Resources| {
                refuse(
                    libc::ENOSPC,
                    format!(
                        "offer {offer_id} has {has}, not {take}; {} fewer resources",
                        if unreserve { "give back" } else { "reserve" }
                    ),
                )
            };
            if !offer.resources.contains(&take) {
                return Err(too_little(&offer.resources));
            }
            // The reservation itself is checked before anything moves, so that bad input
            // costs no log entry.
            let reserved = if unreserve { &take } else { &give };
            self.hub
                .read(|s| match unreserve {
                    true => s.check_unreserve(&offer.agent_id, reserved),
                    false => s.check_reserve(&offer.agent_id, reserved),
                })
                .map_err(|e| refuse(libc::EINVAL, e.to_string()))?;
            // Out of the offer under the allocation lock, so a concurrent launch cannot use
            // them; both forms held while the command commits, so no pass offers either.
            let held = take.add(&give);
            {
                let mut alloc = self.alloc.lock().expect("alloc lock");
                let now = self
                    .board
                    .read(|offers| offers.get(offer_id).cloned())
                    .filter(|o| o.framework_id == fw.id)
                    .ok_or_else(|| alloc.optimistic.gone(offer_id))?;
                let Some(left) = now.resources.checked_sub(&take) else {
                    return Err(too_little(&now.resources));
                };
                self.check_fresh(&mut alloc, &now, &take)?;
                self.board.update_offer(offer_id, left);
                alloc.hold(&offer.agent_id, &offer.role, &fw.id, &held);
            }
            let command = match unreserve {
                true => Command::Unreserve {
                    agent_id: offer.agent_id.clone(),
                    resources: take.clone(),
                },
                false => Command::Reserve {
                    agent_id: offer.agent_id.clone(),
                    resources: give.clone(),
                },
            };
            let result = self.commit_write(write, command).await;
            let applied = match &result {
                Ok(r) => r.applied.error.is_none() && r.applied.duplicate_of.is_none(),
                Err(_) => false,
            };
            {
                let mut alloc = self.alloc.lock().expect("alloc lock");
                alloc.release(&offer.agent_id, &offer.role, &fw.id, &held);
                // The offer, if still out, holds the resources in their new form (or, if the
                // command failed, as they were).
                let back = if applied { &give } else { &take };
                let now = self
                    .board
                    .read(|offers| offers.get(offer_id).map(|o| o.resources.clone()));
                if let Some(now) = now {
                    self.board.update_offer(offer_id, now.add(back));
                }
            }
            if applied && offer.optimistic {
                self.rescind_stale(&offer.agent_id);
            }
            self.reallocate();
            let r = result?;
            if let Some(e) = r.applied.error {
                return Err(refuse(libc::EINVAL, e.to_string()));
            }
            if let Some(first) = r.applied.duplicate_of {
                return Ok(first);
            }
            match unreserve {
                true => info!(resources = %take, "resources unreserved"),
                false => info!(resources = %give, "resources reserved"),
            }
            Ok(r.index)
        }
        .instrument(span)
        .await
    }
}
