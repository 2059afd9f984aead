//! Exactly-once writes: each write a client (a mount) sends carries its own id, and the state
//! remembers the outcome of every write its client may still retry, so a write sent again
//! after a failover, a timeout or a lost reply is answered, not applied twice (the client
//! sessions of the Raft dissertation, §6.3).
//!
//! A client numbers its writes and tells, with each one, the lowest number it has not had an
//! answer for (`done_below`): outcomes below it are forgotten, so what is kept is bounded by the
//! writes in flight. A client silent for [`CLIENT_IDLE_MS`] is forgotten whole.
//!
//! A hostile client may lie in `done_below` or make up client ids, so both are bounded: at most
//! [`MAX_OUTCOMES_PER_CLIENT`] outcomes per client and [`MAX_CLIENTS_PER_PRINCIPAL`] clients
//! per principal (the leader prefixes each client id with its writer's principal, so that no
//! principal can touch another's), the oldest forgotten first.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Applied, FrameworkId, StateError};

/// How long (by the times in the commands) a client may send no write before its outcomes are
/// forgotten; a retry comes within seconds, a mount restarted is a new client.
pub const CLIENT_IDLE_MS: u64 = 3_600_000;

/// The most outcomes kept for one client: far more writes than a mount has in flight.
pub const MAX_OUTCOMES_PER_CLIENT: usize = 65_536;

/// The most clients kept for one principal: mount processes on one machine, restarted.
pub const MAX_CLIENTS_PER_PRINCIPAL: usize = 64;

/// The principal part of a client id (`mount:web1/<id>`), empty for an unprefixed one. A
/// principal's name has no `/`, so the first one ends it, whatever the client put after.
fn principal_of(client: &str) -> &str {
    client.split_once('/').map_or("", |(p, _)| p)
}

/// Names one write of one client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteId {
    /// The client: unique per mount process.
    pub client: String,
    /// This write's number, from 1, unique within the client.
    pub seq: u64,
    /// Every write of this client numbered below this has been answered and is not retried.
    pub done_below: u64,
}

/// What a write did, kept to answer its retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOutcome {
    /// The log index at which it was applied.
    pub index: u64,
    /// Its refusal by the state machine, if any.
    pub error: Option<StateError>,
    /// The framework id a registration created.
    pub framework_id: Option<FrameworkId>,
}

/// One client's writes that may still be retried.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientWrites {
    /// The time of its latest write (unix ms, as the proposer stamped it).
    pub last_ms: u64,
    /// Outcomes by write number.
    pub outcomes: BTreeMap<u64, WriteOutcome>,
}

/// The outcomes of every client's unanswered writes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clients {
    /// By client id.
    pub clients: BTreeMap<String, ClientWrites>,
}

impl Clients {
    /// The outcome of a write applied before, if it is still remembered.
    pub fn outcome(&self, id: &WriteId) -> Option<&WriteOutcome> {
        self.clients.get(&id.client)?.outcomes.get(&id.seq)
    }

    /// Starts applying write `id` at `time_ms`: forgets what its client says is answered and
    /// idle clients. Returns the answer to give when the write was applied before (or was
    /// answered already), in which case it must change nothing.
    pub fn begin(&mut self, id: &WriteId, time_ms: u64) -> Option<Applied> {
        self.clients
            .retain(|c, w| c == &id.client || w.last_ms.saturating_add(CLIENT_IDLE_MS) > time_ms);
        if !self.clients.contains_key(&id.client) {
            let principal = principal_of(&id.client);
            let mut same: Vec<(u64, &String)> = self
                .clients
                .iter()
                .filter(|(c, _)| principal_of(c) == principal)
                .map(|(c, w)| (w.last_ms, c))
                .collect();
            if same.len() >= MAX_CLIENTS_PER_PRINCIPAL {
                same.sort();
                let forget: Vec<String> = same[..=same.len() - MAX_CLIENTS_PER_PRINCIPAL]
                    .iter()
                    .map(|(_, c)| (*c).clone())
                    .collect();
                for c in forget {
                    self.clients.remove(&c);
                }
            }
        }
        let writes = self.clients.entry(id.client.clone()).or_default();
        writes.last_ms = writes.last_ms.max(time_ms);
        writes.outcomes = writes.outcomes.split_off(&id.done_below);
        if let Some(o) = writes.outcomes.get(&id.seq) {
            return Some(Applied {
                error: o.error.clone(),
                framework_id: o.framework_id.clone(),
                duplicate_of: Some(o.index),
                ..Applied::default()
            });
        }
        if id.seq < id.done_below {
            // Its client had its answer already: a stray copy, changing nothing.
            return Some(Applied {
                duplicate_of: Some(0),
                ..Applied::default()
            });
        }
        None
    }

    /// Records what write `id`, applied at `index`, did.
    pub fn finish(&mut self, id: &WriteId, index: u64, applied: &Applied) {
        let writes = self.clients.entry(id.client.clone()).or_default();
        while writes.outcomes.len() >= MAX_OUTCOMES_PER_CLIENT {
            writes.outcomes.pop_first();
        }
        writes.outcomes.insert(
            id.seq,
            WriteOutcome {
                index,
                error: applied.error.clone(),
                framework_id: applied.framework_id.clone(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(client: &str, seq: u64, done_below: u64) -> WriteId {
        WriteId {
            client: client.into(),
            seq,
            done_below,
        }
    }

    #[test]
    fn a_principal_keeps_at_most_its_newest_clients_and_leaves_others_alone() {
        let mut c = Clients::default();
        c.begin(&id("mount:b/only", 1, 1), 1);
        for n in 0..MAX_CLIENTS_PER_PRINCIPAL + 10 {
            // A slash in the client's own part does not make another principal.
            let w = id(&format!("mount:a/{n}/x"), 1, 1);
            assert!(c.begin(&w, 10 + n as u64).is_none());
            c.finish(&w, 1, &Applied::default());
        }
        let of_a = c
            .clients
            .keys()
            .filter(|k| k.starts_with("mount:a/"))
            .count();
        assert_eq!(of_a, MAX_CLIENTS_PER_PRINCIPAL);
        assert!(
            !c.clients.contains_key("mount:a/0/x"),
            "the oldest went first"
        );
        assert!(c
            .clients
            .contains_key(&format!("mount:a/{}/x", MAX_CLIENTS_PER_PRINCIPAL + 9)));
        assert!(
            c.clients.contains_key("mount:b/only"),
            "another principal's"
        );
    }

    #[test]
    fn a_client_that_never_says_done_keeps_a_bounded_number_of_outcomes() {
        let mut c = Clients::default();
        for seq in 1..=(MAX_OUTCOMES_PER_CLIENT as u64 + 5) {
            let w = id("mount:a/liar", seq, 0);
            assert!(c.begin(&w, 1).is_none());
            c.finish(&w, seq, &Applied::default());
        }
        let kept = &c.clients["mount:a/liar"].outcomes;
        assert_eq!(kept.len(), MAX_OUTCOMES_PER_CLIENT);
        assert_eq!(kept.keys().next(), Some(&6), "the oldest were forgotten");
    }
}
