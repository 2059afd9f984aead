//! The users of the mount's machine: names of uids and ids of names, from the system's user
//! database. A framework belongs to a user name; in this mount its files belong to that
//! name's uid here, whatever uid the name has on the machine it was made from.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a lookup is trusted: users added or removed are seen within it.
const FRESH_FOR: Duration = Duration::from_secs(30);

/// Lookups, each with when it was made.
type Cache<K, V> = Mutex<HashMap<K, (Instant, V)>>;

/// Cached lookups in the system's user database (which may be slow: NSS, LDAP).
#[derive(Default)]
pub struct Users {
    names: Cache<u32, Option<String>>,
    ids: Cache<String, Option<(u32, u32)>>,
}

/// A cached value, or a fresh lookup stored in its place.
fn cached<K: std::hash::Hash + Eq + Clone, V: Clone>(
    map: &Cache<K, V>,
    key: &K,
    look_up: impl FnOnce() -> V,
) -> V {
    let mut map = map.lock().expect("users lock");
    match map.get(key) {
        Some((at, v)) if at.elapsed() < FRESH_FOR => v.clone(),
        _ => {
            let v = look_up();
            map.insert(key.clone(), (Instant::now(), v.clone()));
            v
        }
    }
}

impl Users {
    /// The user name of a uid, if the system knows one.
    pub fn name(&self, uid: u32) -> Option<String> {
        cached(&self.names, &uid, || {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.name)
        })
    }

    /// The uid and primary gid of a user name, if the system knows it.
    pub fn ids(&self, name: &str) -> Option<(u32, u32)> {
        if name.is_empty() {
            return None;
        }
        cached(&self.ids, &name.to_string(), || {
            nix::unistd::User::from_name(name)
                .ok()
                .flatten()
                .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_uid_0_both_ways_and_unknown_names_have_no_ids() {
        let users = Users::default();
        assert_eq!(users.name(0).as_deref(), Some("root"));
        assert_eq!(users.ids("root"), Some((0, 0)));
        assert_eq!(users.ids("no-such-user-here"), None);
        assert_eq!(users.ids(""), None);
    }
}
