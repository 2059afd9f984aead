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
//!
//! Everything here is a persistent map, so a snapshot's copy of the state copies none of it,
//! and it is indexed by last write time, so a write forgets idle clients and finds its
//! principal's oldest without a walk of every client.

use imbl::{HashMap, OrdMap, OrdSet};
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
    pub outcomes: OrdMap<u64, WriteOutcome>,
}

/// The outcomes of every client's unanswered writes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Stored", into = "Stored")]
pub struct Clients {
    /// By client id.
    clients: OrdMap<String, ClientWrites>,
    /// (last write time, client) of every client: the idlest first.
    by_time: OrdSet<(u64, String)>,
    /// The same, by principal.
    by_principal: HashMap<String, OrdSet<(u64, String)>>,
}

/// How [`Clients`] is stored: the clients alone, as they always were; the rest is rebuilt.
#[derive(Serialize, Deserialize)]
struct Stored {
    clients: OrdMap<String, ClientWrites>,
}

impl From<Stored> for Clients {
    fn from(s: Stored) -> Clients {
        let mut c = Clients::default();
        for (client, writes) in s.clients {
            c.index(&client, writes.last_ms);
            c.clients.insert(client, writes);
        }
        c
    }
}

impl From<Clients> for Stored {
    fn from(c: Clients) -> Stored {
        Stored { clients: c.clients }
    }
}

impl Clients {
    /// The outcome of a write applied before, if it is still remembered.
    pub fn outcome(&self, id: &WriteId) -> Option<&WriteOutcome> {
        self.clients.get(&id.client)?.outcomes.get(&id.seq)
    }

    /// A client's writes that may still be retried, if it is remembered.
    pub fn get(&self, client: &str) -> Option<&ClientWrites> {
        self.clients.get(client)
    }

    /// How many clients are remembered.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Puts a client at `last_ms` in the time indexes.
    fn index(&mut self, client: &str, last_ms: u64) {
        self.by_time.insert((last_ms, client.to_string()));
        self.by_principal
            .entry(principal_of(client).to_string())
            .or_default()
            .insert((last_ms, client.to_string()));
    }

    /// Takes a client at `last_ms` out of the time indexes.
    fn unindex(&mut self, client: &str, last_ms: u64) {
        let key = (last_ms, client.to_string());
        self.by_time.remove(&key);
        let principal = principal_of(client);
        if let Some(set) = self.by_principal.get_mut(principal) {
            set.remove(&key);
            if set.is_empty() {
                self.by_principal.remove(principal);
            }
        }
    }

    /// Forgets a client whole.
    fn forget(&mut self, client: &str) {
        if let Some(writes) = self.clients.remove(client) {
            self.unindex(client, writes.last_ms);
        }
    }

    /// A client's writes, its latest write time now at least `time_ms`; a client not
    /// remembered is added, forgetting its principal's oldest clients past the limit.
    fn writes_at(&mut self, client: &str, time_ms: u64) -> &mut ClientWrites {
        match self.clients.get(client).map(|w| w.last_ms) {
            Some(last) if last >= time_ms => {}
            Some(last) => {
                self.unindex(client, last);
                self.index(client, time_ms);
                self.clients.get_mut(client).expect("remembered").last_ms = time_ms;
            }
            None => {
                let principal = principal_of(client);
                while let Some((_, oldest)) = self
                    .by_principal
                    .get(principal)
                    .filter(|set| set.len() >= MAX_CLIENTS_PER_PRINCIPAL)
                    .and_then(|set| set.get_min().cloned())
                {
                    self.forget(&oldest);
                }
                self.index(client, time_ms);
                self.clients.insert(
                    client.to_string(),
                    ClientWrites {
                        last_ms: time_ms,
                        outcomes: OrdMap::new(),
                    },
                );
            }
        }
        self.clients.get_mut(client).expect("remembered")
    }

    /// Starts applying write `id` at `time_ms`: forgets what its client says is answered and
    /// idle clients. Returns the answer to give when the write was applied before (or was
    /// answered already), in which case it must change nothing.
    pub fn begin(&mut self, id: &WriteId, time_ms: u64) -> Option<Applied> {
        // The writing client is touched first, so it is not idle; then the idle ones go, the
        // idlest first, each looked at once.
        if let Some(last) = self.clients.get(&id.client).map(|w| w.last_ms) {
            if last < time_ms {
                self.writes_at(&id.client, time_ms);
            }
        }
        while let Some((last, client)) = self.by_time.get_min().cloned() {
            if last.saturating_add(CLIENT_IDLE_MS) > time_ms || client == id.client {
                break;
            }
            self.forget(&client);
        }
        let writes = self.writes_at(&id.client, time_ms);
        while let Some(&(seq, _)) = writes.outcomes.get_min() {
            if seq >= id.done_below {
                break;
            }
            writes.outcomes.remove(&seq);
        }
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
        let writes = self.writes_at(&id.client, 0);
        while writes.outcomes.len() >= MAX_OUTCOMES_PER_CLIENT {
            let Some(&(oldest, _)) = writes.outcomes.get_min() else {
                break;
            };
            writes.outcomes.remove(&oldest);
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

    #[test]
    fn idle_clients_are_forgotten_whatever_their_names_and_a_busy_one_is_kept() {
        let mut c = Clients::default();
        // "z" wrote first, "a" an hour later; "m" writes on and on.
        c.begin(&id("z", 1, 1), 1);
        c.begin(&id("m", 1, 1), 1);
        c.begin(&id("a", 1, 1), CLIENT_IDLE_MS);
        c.begin(&id("m", 2, 2), CLIENT_IDLE_MS);
        c.begin(&id("m", 3, 3), CLIENT_IDLE_MS + 1);
        assert!(c.get("z").is_none(), "silent for an hour");
        assert!(c.get("a").is_some() && c.get("m").is_some());
        assert_eq!(c.by_time.len(), 2, "the index holds the two it keeps");
        // A write from the idlest client itself keeps it.
        c.begin(&id("a", 2, 2), 2 * CLIENT_IDLE_MS);
        assert!(c.get("a").is_some());
        assert!(
            c.get("m").is_some(),
            "its last write was an hour less 1 ms ago"
        );
    }

    #[test]
    fn clients_are_stored_as_they_were_with_std_maps_and_read_back_with_their_indexes() {
        use std::collections::BTreeMap;
        // Snapshots on disk are read by other versions: the persistent maps must encode as
        // the std maps they replaced did.
        #[derive(Serialize)]
        struct OldWrites {
            last_ms: u64,
            outcomes: BTreeMap<u64, WriteOutcome>,
        }
        #[derive(Serialize)]
        struct OldClients {
            clients: BTreeMap<String, OldWrites>,
        }
        let mut c = Clients::default();
        for (client, seq, time) in [
            ("mount:a/1", 1, 5),
            ("mount:b/2", 7, 3),
            ("mount:a/1", 2, 9),
        ] {
            let w = id(client, seq, 1);
            c.begin(&w, time);
            c.finish(
                &w,
                seq * 10,
                &Applied {
                    framework_id: Some(format!("fw{seq}")),
                    error: (seq == 7).then_some(StateError::NoTask("t".into())),
                    ..Applied::default()
                },
            );
        }
        let old = OldClients {
            clients: c
                .clients
                .iter()
                .map(|(k, w)| {
                    let outcomes = w.outcomes.clone().into_iter().collect();
                    (
                        k.clone(),
                        OldWrites {
                            last_ms: w.last_ms,
                            outcomes,
                        },
                    )
                })
                .collect(),
        };
        let json = serde_json::to_string(&old).unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), json);
        let back: Clients = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c, "the same clients, their indexes rebuilt");
        assert_eq!(back.by_principal["mount:a"].len(), 1);
    }
}
