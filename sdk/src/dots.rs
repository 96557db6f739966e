//! Causal bookkeeping for fields that must know what a writer saw.
//!
//! Every write has a unique [`Stamp`] (hybrid logical clock + node), which serves as its "dot".
//! A record's [`Context`] records, per node, the newest stamp of that node whose effect the record
//! has seen. Because a node's stamps only grow and each of its writes to a record starts from its
//! own current version, "seen stamp s of node n" implies "seen every earlier stamp of n" for that
//! record: one entry per node is enough (a version vector).
//!
//! [`join_entries`] is the causal join of two dotted sets: an entry survives if both sides have
//! it, or if the other side has never seen it. An entry that one side saw and dropped (superseded
//! by a later write) stays dropped. This makes the join commutative, associative and idempotent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Stamp;

/// A value with the stamp of the write that produced it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(rename = "s")]
    pub stamp: Stamp,
    #[serde(rename = "v")]
    pub value: serde_json::Value,
}

impl Entry {
    fn sort_key(&self) -> (&Stamp, Vec<u8>) {
        (&self.stamp, crate::canonical_json(&self.value))
    }
}

/// Per node, the newest (physical, logical) seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context(pub BTreeMap<String, (u64, u32)>);

impl Context {
    /// Whether the write stamped `s` is known to this context.
    pub fn covers(&self, s: &Stamp) -> bool {
        self.0.get(&s.node).is_some_and(|seen| *seen >= (s.physical, s.logical))
    }

    /// Record that the write stamped `s` has been seen.
    pub fn add(&mut self, s: &Stamp) {
        let slot = self.0.entry(s.node.clone()).or_insert((0, 0));
        if (s.physical, s.logical) > *slot {
            *slot = (s.physical, s.logical);
        }
    }

    /// Pointwise maximum.
    pub fn join(&mut self, other: &Context) {
        for (node, seen) in &other.0 {
            let slot = self.0.entry(node.clone()).or_insert((0, 0));
            if *seen > *slot {
                *slot = *seen;
            }
        }
    }
}

/// Sorts entries into their canonical order and removes exact duplicates.
pub fn normalize_entries(entries: &mut Vec<Entry>) {
    entries.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    entries.dedup();
}

/// The causal join of two dotted sets (see the module documentation).
pub fn join_entries(a: &[Entry], ca: &Context, b: &[Entry], cb: &Context) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::with_capacity(a.len() + b.len());
    for e in a {
        if b.contains(e) || !cb.covers(&e.stamp) {
            out.push(e.clone());
        }
    }
    for e in b {
        if a.contains(e) || !ca.covers(&e.stamp) {
            out.push(e.clone());
        }
    }
    normalize_entries(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn e(p: u64, node: &str, v: serde_json::Value) -> Entry {
        Entry { stamp: Stamp::new(p, 0, node), value: v }
    }

    fn ctx(entries: &[Entry]) -> Context {
        let mut c = Context::default();
        for x in entries {
            c.add(&x.stamp);
        }
        c
    }

    #[test]
    fn superseded_entry_stays_dropped() {
        // b saw a's entry and replaced it; a still has it: the join keeps only b's.
        let old = e(1, "a", json!("x"));
        let new = e(2, "b", json!("y"));
        let ca = ctx(std::slice::from_ref(&old));
        let mut cb = ctx(std::slice::from_ref(&old));
        cb.add(&new.stamp);
        let joined = join_entries(std::slice::from_ref(&old), &ca, std::slice::from_ref(&new), &cb);
        assert_eq!(joined, vec![new]);
    }

    #[test]
    fn concurrent_entries_are_both_kept() {
        let x = e(5, "a", json!("x"));
        let y = e(5, "b", json!("y"));
        let (one_x, one_y) = (std::slice::from_ref(&x), std::slice::from_ref(&y));
        let j = join_entries(one_x, &ctx(one_x), one_y, &ctx(one_y));
        assert_eq!(j, vec![x, y]);
    }
}
