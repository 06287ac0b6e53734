//! Pin enforcement at runtime: every tool list an upstream answers is vetted against the active
//! snapshot's pins (`supply::vet`) once per (list, snapshot), and each new quarantine becomes one
//! monitoring event `tool_quarantined` with the pinned and offered hashes and the diff of the
//! definition.
//!
//! An upstream's list is cached by the upstream client until it sends
//! `notifications/tools/list_changed` (or its session is re-initialised), so a rug pull is seen
//! on the first list or call after the upstream announces it. The verdict is cached here, keyed
//! by the identity of the cached list and of the snapshot: a new list or a new commit vets again,
//! and a commit with the new pin lifts the quarantine by simply not producing it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use serde_json::{Value, json};

use crate::policy::snapshot::{Server, Snapshot};
use crate::supply::{self, Quarantine, Vetted};

/// The verdict cache and what has been reported.
#[derive(Default)]
pub struct Vetting {
    cache: Mutex<HashMap<(usize, usize), Entry>>,
    /// Quarantines already reported as an event.
    reported: Mutex<HashSet<Reported>>,
    /// (server, tool) → the last definition seen that matched its pin, for the diff.
    known_good: Mutex<HashMap<(String, String), Value>>,
}

/// (server, tool, offered hash, commit).
type Reported = (String, String, String, Option<String>);

struct Entry {
    list: Weak<Vec<Value>>,
    snapshot: Weak<Snapshot>,
    vetted: Arc<Vetted>,
}

/// A quarantine seen for the first time (under this commit), to record as an event.
pub struct NewQuarantine {
    pub server: String,
    pub commit: Option<String>,
    pub detail: Value,
}

/// Entries above this many trigger a sweep of those whose list or snapshot is gone.
const SWEEP_AT: usize = 4096;

impl Vetting {
    /// The verdict over `list` (the upstream's cached tool list of `server`) under `snapshot`,
    /// and the quarantines not reported before.
    pub fn vet(&self, snapshot: &Arc<Snapshot>, server: &Server, list: &Arc<Vec<Value>>) -> (Arc<Vetted>, Vec<NewQuarantine>) {
        let key = (Arc::as_ptr(list) as usize, Arc::as_ptr(snapshot) as usize);
        {
            let cache = self.cache.lock().expect("vetting lock");
            if let Some(e) = cache.get(&key)
                && e.list.upgrade().is_some_and(|l| Arc::ptr_eq(&l, list))
                && e.snapshot.upgrade().is_some_and(|s| Arc::ptr_eq(&s, snapshot))
            {
                return (e.vetted.clone(), Vec::new());
            }
        }
        let vetted = Arc::new(supply::vet(server, list, snapshot.tool_names()));
        let fresh = self.report(snapshot, server, list, &vetted);
        let mut cache = self.cache.lock().expect("vetting lock");
        if cache.len() >= SWEEP_AT {
            cache.retain(|_, e| e.list.strong_count() > 0 && e.snapshot.strong_count() > 0);
        }
        cache.insert(key, Entry { list: Arc::downgrade(list), snapshot: Arc::downgrade(snapshot), vetted: vetted.clone() });
        (vetted, fresh)
    }

    fn report(&self, snapshot: &Snapshot, server: &Server, list: &[Value], vetted: &Vetted) -> Vec<NewQuarantine> {
        let by_name: HashMap<&str, &Value> = list.iter().filter_map(|t| Some((t.get("name")?.as_str()?, t))).collect();
        let mut known = self.known_good.lock().expect("vetting lock");
        // Remember definitions that match their pins, for the diff of a later change.
        for (name, t) in &by_name {
            if vetted.quarantine(name).is_none()
                && server.tools.get(*name).and_then(|i| i.sha256.as_deref()).is_some_and(|p| Some(p) == vetted.hash(name))
            {
                known.insert((server.name.clone(), name.to_string()), (*t).clone());
            }
        }
        let mut reported = self.reported.lock().expect("vetting lock");
        let mut fresh = Vec::new();
        let mut quarantined: Vec<&Quarantine> = vetted.quarantined().collect();
        quarantined.sort_by(|a, b| a.tool.cmp(&b.tool));
        for q in quarantined {
            let key = (server.name.clone(), q.tool.clone(), q.hash.clone(), snapshot.commit.clone());
            if !reported.insert(key) {
                continue;
            }
            let mut detail = q.detail();
            detail["server"] = json!(server.name);
            detail["message"] = json!(q.message());
            if let Some(t) = by_name.get(q.tool.as_str()) {
                let old = known.get(&(server.name.clone(), q.tool.clone()));
                detail["definition_known"] = json!(old.is_some());
                detail["diff"] = supply::definition_diff(old, t);
            }
            fresh.push(NewQuarantine { server: server.name.clone(), commit: snapshot.commit.clone(), detail });
        }
        fresh
    }
}
