//! Append-only records: reports, call records, audit events.
//!
//! A record is written once. Writing the same document again is a no-op (a safe retry); writing a
//! different document to an existing key is refused (`immutable`). When two nodes wrote different
//! documents under one key, the merge keeps both versions and `validate` reports a `conflict`; an
//! operator's next write supersedes exactly the versions it saw. Deletes are refused: reports leave
//! only by the component's retention rule, which the engine applies the same way on every node.
//!
//! Stored form (canonical JSON): `{"v":1,"e":[{"s":stamp,"v":doc}...],"x":[superseded stamps]}`.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dots::{Entry, normalize_entries};
use crate::{Host, Info, Op, Plugin, Stamp, Stored, Violation, WriteError, canonical_json, cmp_values};

/// What a plugin writes for an append-only component.
pub trait ReportSchema: Serialize + DeserializeOwned {
    /// Static facts; set `retention`.
    fn info() -> Info;

    /// The report's invariants.
    fn validate(&self, key: &str, host: &dyn Host) -> Vec<Violation> {
        let _ = (key, host);
        Vec::new()
    }
}

/// A [`Plugin`] for a [`ReportSchema`].
pub struct AppendPlugin<T>(PhantomData<T>);

const FORMAT: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Log {
    v: u32,
    e: Vec<Entry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    x: Vec<Stamp>,
}

fn decode(data: &[u8]) -> Result<Log, String> {
    let log: Log = serde_json::from_slice(data).map_err(|e| format!("stored report is not readable: {e}"))?;
    if log.v != FORMAT {
        return Err(format!("stored report has format {}, this plugin reads format {FORMAT}", log.v));
    }
    Ok(normalize(log))
}

fn normalize(mut log: Log) -> Log {
    log.x.sort();
    log.x.dedup();
    let superseded = log.x.clone();
    log.e.retain(|e| superseded.binary_search(&e.stamp).is_err());
    normalize_entries(&mut log.e);
    log.v = FORMAT;
    log
}

fn encode(log: &Log) -> Stored {
    let value = serde_json::to_value(log).unwrap_or(Value::Null);
    Stored { data: canonical_json(&value), tombstone: false }
}

/// The distinct documents of a log, in canonical order.
fn bodies(log: &Log) -> Vec<Value> {
    let mut values: Vec<Value> = log.e.iter().map(|e| e.value.clone()).collect();
    values.sort_by(cmp_values);
    values.dedup();
    values
}

impl<T: ReportSchema> Plugin for AppendPlugin<T> {
    fn describe() -> Info {
        let mut info = T::info();
        if info.shape.is_empty() {
            info.shape = "append-only".to_owned();
        }
        info
    }

    fn serialize(_key: &str, op: Op, prior: Option<&[u8]>, stamp: &Stamp) -> Result<Stored, WriteError> {
        let input = match op {
            Op::Put(input) => input,
            Op::Delete => {
                return Err(WriteError::Invalid(vec![Violation::new(
                    "",
                    "immutable",
                    "reports cannot be deleted; they leave by the component's retention rule",
                )]));
            }
        };
        let value: Value = serde_json::from_str(&input).map_err(|e| WriteError::Malformed(format!("input is not JSON: {e}")))?;
        let typed: T = serde_json::from_value(value)
            .map_err(|e| WriteError::Malformed(format!("input does not match the {} schema: {e}", T::info().component)))?;
        let value = serde_json::to_value(&typed).map_err(|e| WriteError::Malformed(e.to_string()))?;
        let mut log = match prior {
            Some(bytes) => decode(bytes).map_err(WriteError::Malformed)?,
            None => Log { v: FORMAT, e: Vec::new(), x: Vec::new() },
        };
        let existing = bodies(&log);
        match existing.len() {
            0 => log.e.push(Entry { stamp: stamp.clone(), value }),
            1 if existing[0] == value => return Ok(encode(&log)),
            1 => {
                return Err(WriteError::Invalid(vec![Violation::new(
                    "",
                    "immutable",
                    "a report is written once; this key already holds a different report",
                )]));
            }
            _ => {
                // Resolving a conflict: supersede every version this node has seen.
                log.x.extend(log.e.iter().map(|e| e.stamp.clone()));
                log.e.push(Entry { stamp: stamp.clone(), value });
            }
        }
        Ok(encode(&normalize(log)))
    }

    fn deserialize(_key: &str, data: &[u8]) -> Result<Option<String>, String> {
        let log = decode(data)?;
        let versions = bodies(&log);
        let Some(first) = log.e.first() else { return Ok(None) };
        let mut out = first.value.clone();
        if versions.len() > 1
            && let Value::Object(map) = &mut out
        {
            map.insert("_conflicts".to_owned(), Value::Array(versions));
        }
        Ok(Some(crate::canonical_json_string(&out)))
    }

    fn merge(_key: &str, a: &[u8], b: &[u8]) -> Result<Stored, String> {
        let mut a = decode(a)?;
        let b = decode(b)?;
        a.e.extend(b.e);
        a.x.extend(b.x);
        Ok(encode(&normalize(a)))
    }

    fn validate(key: &str, data: &[u8], host: &dyn Host) -> Result<(), Vec<Violation>> {
        let log = decode(data).map_err(|e| vec![Violation::new("", "schema", e)])?;
        let versions = bodies(&log);
        let mut violations = Vec::new();
        if versions.len() > 1 {
            violations.push(Violation::new(
                "",
                "conflict",
                format!("{} different reports were written under this key; an operator must keep one", versions.len()),
            ));
        }
        for body in versions {
            match serde_json::from_value::<T>(body) {
                Ok(typed) => violations.extend(typed.validate(key, host)),
                Err(e) => violations.push(Violation::new("", "schema", format!("the stored report does not match the schema: {e}"))),
            }
        }
        if violations.is_empty() { Ok(()) } else { Err(violations) }
    }
}
