//! What only the leader holds and every mount is told: outstanding offers, refused writes and
//! the masters' roles, numbered within this leadership and broadcast as the leader stream.
//! Closing the board ends every leader stream: the leadership is over.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::resources::Resources;
use crate::watch::{LeaderEvent, LeaderInfo, MasterStatus, Offer, Offers};

/// How many events a slow follower of the leader stream may fall behind before its stream is
/// ended (it reconnects and starts over).
const BUFFER: usize = 65_536;

/// A leader event, encoded once for every follower.
#[derive(Debug)]
pub struct EncodedLeaderEvent {
    /// Its position.
    pub seq: u64,
    /// The [`LeaderEvent`] as JSON, shared by every follower's stream.
    pub json: prost::bytes::Bytes,
}

fn encode(event: &LeaderEvent) -> Arc<EncodedLeaderEvent> {
    Arc::new(EncodedLeaderEvent {
        seq: event.seq(),
        json: serde_json::to_vec(event)
            .expect("leader events serialize")
            .into(),
    })
}

struct Inner {
    seq: u64,
    offers: Offers,
    masters: Vec<MasterStatus>,
    why: BTreeMap<String, String>,
    tx: Option<broadcast::Sender<Arc<EncodedLeaderEvent>>>,
}

/// The leader's offers and announcements.
pub struct Board {
    leader: LeaderInfo,
    inner: Mutex<Inner>,
}

impl Board {
    /// An empty board for this leadership.
    pub fn new(leader: LeaderInfo) -> Board {
        Board {
            leader,
            inner: Mutex::new(Inner {
                seq: 0,
                offers: Offers::default(),
                masters: Vec::new(),
                why: BTreeMap::new(),
                tx: Some(broadcast::channel(BUFFER).0),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("board lock")
    }

    fn publish(inner: &mut Inner, make: impl FnOnce(u64) -> LeaderEvent) -> u64 {
        inner.seq += 1;
        let seq = inner.seq;
        if let Some(tx) = &inner.tx {
            // No receivers is fine: nobody follows yet.
            let _ = tx.send(encode(&make(seq)));
        }
        seq
    }

    /// The first event of a new follower and the feed of every later one; `None` once the
    /// leadership is over.
    pub fn subscribe(
        &self,
    ) -> Option<(
        Arc<EncodedLeaderEvent>,
        broadcast::Receiver<Arc<EncodedLeaderEvent>>,
    )> {
        let inner = self.lock();
        let rx = inner.tx.as_ref()?.subscribe();
        let first = encode(&LeaderEvent::Leading {
            seq: inner.seq,
            leader: self.leader.clone(),
            offers: inner.offers.values().cloned().collect(),
            masters: inner.masters.clone(),
            why: inner.why.clone(),
        });
        Some((first, rx))
    }

    /// Ends every leader stream; later changes are not announced.
    pub fn close(&self) {
        self.lock().tx = None;
    }

    /// The position of the last event.
    pub fn seq(&self) -> u64 {
        self.lock().seq
    }

    /// Reads the outstanding offers.
    pub fn read<R>(&self, f: impl FnOnce(&Offers) -> R) -> R {
        f(&self.lock().offers)
    }

    /// The masters as last announced.
    pub fn masters(&self) -> Vec<MasterStatus> {
        self.lock().masters.clone()
    }

    /// Adds an offer.
    pub fn add_offer(&self, offer: Offer) -> u64 {
        let mut inner = self.lock();
        inner.offers.insert(offer.clone());
        Self::publish(&mut inner, |seq| LeaderEvent::OfferCreated { seq, offer })
    }

    /// Changes what an outstanding offer holds (after a launch used part of it).
    pub fn update_offer(&self, offer_id: &str, resources: Resources) {
        let mut inner = self.lock();
        let Some(mut offer) = inner.offers.get(offer_id).cloned() else {
            return;
        };
        offer.resources = resources;
        inner.offers.insert(offer.clone());
        Self::publish(&mut inner, |seq| LeaderEvent::OfferCreated { seq, offer });
    }

    /// Removes an offer if it is still there; returns it.
    pub fn remove_offer(&self, offer_id: &str, reason: &str, rescinded: bool) -> Option<Offer> {
        let mut inner = self.lock();
        let offer = inner.offers.remove(offer_id)?;
        let framework_id = offer.framework_id.clone();
        Self::publish(&mut inner, |seq| LeaderEvent::OfferRemoved {
            seq,
            offer_id: offer_id.to_string(),
            framework_id,
            reason: reason.to_string(),
            rescinded,
        });
        Some(offer)
    }

    /// Removes every offer matching `pred`; returns them.
    pub fn remove_offers_where(
        &self,
        pred: impl Fn(&Offer) -> bool,
        reason: &str,
        rescinded: bool,
    ) -> Vec<Offer> {
        let ids: Vec<String> = self.read(|offers| {
            offers
                .values()
                .filter(|o| pred(o))
                .map(|o| o.id.clone())
                .collect()
        });
        ids.iter()
            .filter_map(|id| self.remove_offer(id, reason, rescinded))
            .collect()
    }

    /// Records a refused write so the framework can read why; returns its position.
    pub fn refused(&self, framework_id: &str, message: &str) -> u64 {
        let mut inner = self.lock();
        Self::publish(&mut inner, |seq| LeaderEvent::Refused {
            seq,
            framework_id: framework_id.to_string(),
            message: message.to_string(),
        })
    }

    /// Announces why a framework holds no offer (empty: it does, or nothing keeps offers from
    /// it), if that changed.
    pub fn set_why(&self, framework_id: &str, text: String) {
        let mut inner = self.lock();
        let now = inner.why.get(framework_id).map_or("", String::as_str);
        if now == text {
            return;
        }
        if text.is_empty() {
            inner.why.remove(framework_id);
        } else {
            inner.why.insert(framework_id.to_string(), text.clone());
        }
        let framework_id = framework_id.to_string();
        Self::publish(&mut inner, |seq| LeaderEvent::Why {
            seq,
            framework_id,
            text,
        });
    }

    /// The frameworks it has said why of.
    pub fn why_frameworks(&self) -> Vec<String> {
        self.lock().why.keys().cloned().collect()
    }

    /// Announces the masters, if they changed.
    pub fn set_masters(&self, masters: Vec<MasterStatus>) {
        let mut inner = self.lock();
        if inner.masters == masters {
            return;
        }
        inner.masters = masters.clone();
        Self::publish(&mut inner, |seq| LeaderEvent::Masters { seq, masters });
    }
}
