//! Adapts a [`Plugin`] to the generated WIT bindings.

use std::marker::PhantomData;

use crate::bindings::exports::tandem::plugin::component::Guest;
use crate::bindings::tandem::plugin::types as wit;
use crate::{Host, Op, Plugin, Stamp, Stored, Violation, WriteError};

/// The type the export macro hands to the bindings. Not for direct use.
pub struct Exporter<P>(PhantomData<P>);

/// The engine's read-only lookup, as seen from inside the sandbox.
struct EngineHost;

impl Host for EngineHost {
    fn lookup(&self, component: &str, key: &str) -> Option<serde_json::Value> {
        let json = crate::bindings::tandem::plugin::host::lookup(component, key)?;
        serde_json::from_str(&json).ok()
    }
}

fn stored(s: Stored) -> wit::Stored {
    wit::Stored { data: s.data, tombstone: s.tombstone }
}

fn violation(v: Violation) -> wit::Violation {
    wit::Violation { field: v.field, code: v.code, message: v.message }
}

impl<P: Plugin> Guest for Exporter<P> {
    fn describe() -> wit::Info {
        let info = P::describe();
        wit::Info {
            component: info.component,
            plugin_version: info.plugin_version,
            schema_version: info.schema_version,
            description: info.description,
            shape: info.shape,
            examples: info.examples.into_iter().map(|e| wit::Example { key: e.key, input: e.input }).collect(),
            retention: info.retention.map(|r| wit::Retention { max_age_ms: r.max_age_ms, max_count: r.max_count }),
        }
    }

    fn serialize(key: String, op: wit::Op, prior: Option<Vec<u8>>, stamp: wit::Stamp) -> Result<wit::Stored, wit::WriteError> {
        let op = match op {
            wit::Op::Put(json) => Op::Put(json),
            wit::Op::Delete => Op::Delete,
        };
        let stamp = Stamp { physical: stamp.physical, logical: stamp.logical, node: stamp.node };
        match P::serialize(&key, op, prior.as_deref(), &stamp) {
            Ok(s) => Ok(stored(s)),
            Err(WriteError::Invalid(v)) => Err(wit::WriteError::Invalid(v.into_iter().map(violation).collect())),
            Err(WriteError::Malformed(m)) => Err(wit::WriteError::Malformed(m)),
        }
    }

    fn deserialize(key: String, data: Vec<u8>) -> Result<Option<String>, String> {
        P::deserialize(&key, &data)
    }

    fn merge(key: String, a: Vec<u8>, b: Vec<u8>) -> Result<wit::Stored, String> {
        P::merge(&key, &a, &b).map(stored)
    }

    fn validate(key: String, data: Vec<u8>) -> Result<(), Vec<wit::Violation>> {
        P::validate(&key, &data, &EngineHost).map_err(|v| v.into_iter().map(violation).collect())
    }
}
