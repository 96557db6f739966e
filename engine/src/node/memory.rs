//! The in-memory view of a component's records.
//!
//! Each record in memory keeps its stored bytes (the prior of the next write), its metadata, and
//! the JSON document readers see (decoded once, at write or preload time, so that a read is a
//! map lookup and never a plugin call). The store's writer thread updates the view right after
//! each commit and before the write is acknowledged, in commit order, so that memory and store
//! never disagree: a record in memory is the store's latest version of it.
//!
//! With the `all` policy the view holds every record and a miss means "no such record"; with
//! `recent` it holds the records stamped within the window and a miss falls through to the store;
//! with `none` it holds nothing.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::config::Preload;
use crate::plugin::Stamp;

/// A record as memory holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemRecord {
    pub data: Arc<[u8]>,
    pub tombstone: bool,
    pub stamp: Stamp,
    pub origin: Arc<str>,
    pub seq: u64,
    /// The reader's document; `None` for a tombstone.
    pub doc: Option<Arc<str>>,
}

/// Approximate heap bytes a record costs (map node, strings, bytes).
fn cost(key: &str, r: &MemRecord) -> u64 {
    const OVERHEAD: usize = 160;
    (OVERHEAD + key.len() + r.data.len() + r.doc.as_ref().map_or(0, |d| d.len()) + r.origin.len() + r.stamp.node.len()) as u64
}

/// One component's records in memory.
pub struct ComponentMem {
    policy: Preload,
    map: RwLock<BTreeMap<String, MemRecord>>,
    bytes: AtomicU64,
    /// Digest of the plugin that decoded the documents.
    decoded_with: Mutex<String>,
}

impl ComponentMem {
    pub fn new(policy: Preload) -> ComponentMem {
        ComponentMem { policy, map: RwLock::new(BTreeMap::new()), bytes: AtomicU64::new(0), decoded_with: Mutex::new(String::new()) }
    }

    pub fn policy(&self) -> Preload {
        self.policy
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, MemRecord>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, MemRecord>> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The record, if memory holds it.
    pub fn get(&self, key: &str) -> Option<MemRecord> {
        self.read().get(key).cloned()
    }

    /// Puts the latest version of a record, or drops it from memory when the policy does not
    /// keep it (`now_ms` decides the recent window).
    pub fn apply(&self, key: &str, record: MemRecord, now_ms: u64) {
        let keep = self.policy.keeps(record.stamp.physical, now_ms);
        let mut map = self.write();
        if keep {
            let added = cost(key, &record);
            if let Some(old) = map.insert(key.to_owned(), record) {
                self.bytes.fetch_sub(cost(key, &old), Ordering::Relaxed);
            }
            self.bytes.fetch_add(added, Ordering::Relaxed);
        } else if let Some(old) = map.remove(key) {
            self.bytes.fetch_sub(cost(key, &old), Ordering::Relaxed);
        }
    }

    /// Drops a record from memory.
    pub fn remove(&self, key: &str) {
        let mut map = self.write();
        if let Some(old) = map.remove(key) {
            self.bytes.fetch_sub(cost(key, &old), Ordering::Relaxed);
        }
    }

    /// Loads many records at once (preload).
    pub fn load(&self, records: Vec<(String, MemRecord)>) {
        let mut map = self.write();
        for (key, record) in records {
            let added = cost(&key, &record);
            if let Some(old) = map.insert(key.clone(), record) {
                self.bytes.fetch_sub(cost(&key, &old), Ordering::Relaxed);
            }
            self.bytes.fetch_add(added, Ordering::Relaxed);
        }
    }

    /// Drops records stamped before the recent window. Returns how many.
    pub fn evict(&self, now_ms: u64) -> usize {
        if !matches!(self.policy, Preload::Recent(_)) {
            return 0;
        }
        let mut map = self.write();
        let before = map.len();
        let mut freed = 0u64;
        map.retain(|k, r| {
            let keep = self.policy.keeps(r.stamp.physical, now_ms);
            if !keep {
                freed += cost(k, r);
            }
            keep
        });
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
        before - map.len()
    }

    /// Live records whose key starts with `prefix` and sorts after `after`, at most `limit`.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<(String, MemRecord)> {
        let map = self.read();
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_owned()),
            _ => Bound::Included(prefix.to_owned()),
        };
        map.range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, r)| !r.tombstone)
            .take(limit)
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    }

    /// Records in memory (tombstones included).
    pub fn len(&self) -> u64 {
        self.read().len() as u64
    }

    /// Whether memory holds no record of the component.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// (records, live records) in memory (walks them all).
    pub fn counts(&self) -> (u64, u64) {
        let map = self.read();
        (map.len() as u64, map.values().filter(|r| !r.tombstone).count() as u64)
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Keys and stored bytes of every record, to decode again with a new plugin version.
    pub fn snapshot_for_decode(&self) -> Vec<(String, u64, Arc<[u8]>, bool)> {
        self.read().iter().map(|(k, r)| (k.clone(), r.seq, r.data.clone(), r.tombstone)).collect()
    }

    /// Replaces decoded documents of records that did not change since the snapshot.
    pub fn redecoded(&self, docs: Vec<(String, u64, Option<Arc<str>>)>, digest: &str) {
        let mut map = self.write();
        for (key, seq, doc) in docs {
            if let Some(r) = map.get_mut(&key)
                && r.seq == seq
            {
                let before = cost(&key, r);
                r.doc = doc;
                let after = cost(&key, r);
                self.bytes.fetch_add(after, Ordering::Relaxed);
                self.bytes.fetch_sub(before, Ordering::Relaxed);
            }
        }
        drop(map);
        self.set_decoded_with(digest);
    }

    pub fn decoded_with(&self) -> String {
        self.decoded_with.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_decoded_with(&self, digest: &str) {
        *self.decoded_with.lock().unwrap_or_else(|e| e.into_inner()) = digest.to_owned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rec(p: u64, seq: u64, tomb: bool) -> MemRecord {
        MemRecord {
            data: Arc::from(&b"data"[..]),
            tombstone: tomb,
            stamp: Stamp::new(p, 0, "a"),
            origin: Arc::from("a"),
            seq,
            doc: if tomb { None } else { Some(Arc::from("{}")) },
        }
    }

    #[test]
    fn byte_accounting_returns_to_zero() {
        let m = ComponentMem::new(Preload::All);
        m.apply("a", rec(1, 1, false), 0);
        m.apply("a", rec(2, 2, false), 0);
        m.apply("b", rec(2, 3, true), 0);
        assert!(m.bytes() > 0);
        assert_eq!(m.counts(), (2, 1));
        m.remove("a");
        m.remove("b");
        m.remove("missing");
        assert_eq!(m.bytes(), 0);
    }

    #[test]
    fn recent_window_keeps_only_recent_records() {
        let m = ComponentMem::new(Preload::Recent(Duration::from_millis(100)));
        m.apply("old", rec(100, 1, false), 1_000);
        m.apply("new", rec(950, 2, false), 1_000);
        assert!(m.get("old").is_none());
        assert!(m.get("new").is_some());
        assert_eq!(m.evict(1_100), 1);
        assert!(m.get("new").is_none());
        assert_eq!(m.bytes(), 0);
    }

    #[test]
    fn listing_respects_prefix_cursor_and_tombstones() {
        let m = ComponentMem::new(Preload::All);
        for (i, k) in ["a1", "a2", "a3", "b1"].iter().enumerate() {
            m.apply(k, rec(1, i as u64, *k == "a2"), 0);
        }
        let keys = |v: Vec<(String, MemRecord)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(m.list("a", None, 10)), vec!["a1", "a3"]);
        assert_eq!(keys(m.list("a", Some("a1"), 10)), vec!["a3"]);
        assert_eq!(keys(m.list("", None, 2)), vec!["a1", "a3"]);
        assert_eq!(keys(m.list("", Some("a3"), 10)), vec!["b1"]);
        assert_eq!(keys(m.list("b", Some("a9"), 10)), vec!["b1"]);
    }
}
