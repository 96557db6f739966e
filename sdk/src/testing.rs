//! Helpers for testing plugins natively (`cargo test`), without the engine.

use std::collections::BTreeMap;

use crate::{Host, Op, Plugin, Stamp, Stored, Violation, WriteError};

/// A host with no other records.
pub struct NoHost;

impl Host for NoHost {
    fn lookup(&self, _component: &str, _key: &str) -> Option<serde_json::Value> {
        None
    }
}

/// A host backed by a map of (component, key) to JSON documents.
#[derive(Default)]
pub struct MapHost(pub BTreeMap<(String, String), serde_json::Value>);

impl MapHost {
    /// Adds a record.
    pub fn with(mut self, component: &str, key: &str, doc: serde_json::Value) -> Self {
        self.0.insert((component.to_owned(), key.to_owned()), doc);
        self
    }
}

impl Host for MapHost {
    fn lookup(&self, component: &str, key: &str) -> Option<serde_json::Value> {
        self.0.get(&(component.to_owned(), key.to_owned())).cloned()
    }
}

/// A stamp at `physical` ms from `node`.
pub fn stamp(physical: u64, node: &str) -> Stamp {
    Stamp::new(physical, 0, node)
}

/// Serializes `doc` as a put over `prior`, panicking with the plugin's error if refused.
pub fn put<P: Plugin>(key: &str, doc: serde_json::Value, prior: Option<&Stored>, stamp: &Stamp) -> Stored {
    match P::serialize(key, Op::Put(doc.to_string()), prior.map(|p| p.data.as_slice()), stamp) {
        Ok(s) => s,
        Err(e) => panic!("put of {key} refused: {e:?}"),
    }
}

/// Serializes `doc` as a put and returns the write error it must produce.
pub fn put_err<P: Plugin>(key: &str, doc: serde_json::Value, prior: Option<&Stored>, stamp: &Stamp) -> WriteError {
    match P::serialize(key, Op::Put(doc.to_string()), prior.map(|p| p.data.as_slice()), stamp) {
        Ok(_) => panic!("put of {key} was accepted, expected a refusal"),
        Err(e) => e,
    }
}

/// Serializes then validates, as the engine does for a local write; returns the violations.
pub fn write_violations<P: Plugin>(key: &str, doc: serde_json::Value, host: &dyn Host) -> Vec<Violation> {
    match P::serialize(key, Op::Put(doc.to_string()), None, &stamp(1, "test")) {
        Ok(s) => P::validate(key, &s.data, host).err().unwrap_or_default(),
        Err(WriteError::Invalid(v)) => v,
        Err(WriteError::Malformed(m)) => vec![Violation::new("", "malformed", m)],
    }
}

/// The codes of a list of violations, for compact assertions.
pub fn codes(violations: &[Violation]) -> Vec<(String, String)> {
    violations.iter().map(|v| (v.field.clone(), v.code.clone())).collect()
}

/// What a reader sees of a stored version.
pub fn read<P: Plugin>(key: &str, stored: &Stored) -> Option<serde_json::Value> {
    match P::deserialize(key, &stored.data) {
        Ok(Some(json)) => serde_json::from_str(&json).ok(),
        Ok(None) => None,
        Err(e) => panic!("deserialize of {key} failed: {e}"),
    }
}

/// Merges two versions, panicking on error.
pub fn merge<P: Plugin>(key: &str, a: &Stored, b: &Stored) -> Stored {
    match P::merge(key, &a.data, &b.data) {
        Ok(s) => s,
        Err(e) => panic!("merge of {key} failed: {e}"),
    }
}
