//! The Tandem plugin SDK.
//!
//! A Tandem component plugin is a WebAssembly component that implements the `tandem:plugin` WIT
//! world (see `wit/plugin.wit`). This crate gives plugin authors:
//!
//! - plain Rust types for everything the contract passes ([`Stamp`], [`Violation`], [`Stored`], ...);
//! - the [`Plugin`] trait, one implementation of which is a whole plugin, and [`export_plugin!`];
//! - ready-made merge shapes, so that most plugins only write their schema and validation:
//!   - [`record`]: a JSON object whose fields merge one by one ([`FieldKind`]): last writer wins by
//!     stamp, strict (concurrent changes kept side by side and reported as a conflict), add-wins
//!     sets, append-only lists, and monotonic "max by rank" fields (workflows);
//!   - [`append`]: append-only records (reports): written once, a different second version of the
//!     same key is a conflict, never an overwrite;
//! - [`check`]: small validators plugins share (hosts, SIP URIs, CIDRs, phone numbers, e-mail
//!   addresses, Asterisk dial patterns, ranges, references to other records).
//!
//! ```ignore
//! use serde::{Deserialize, Serialize};
//! use tandem_sdk::record::{RecordSchema, RecordPlugin};
//! use tandem_sdk::{Host, Info, Violation};
//!
//! #[derive(Serialize, Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Room { name: String, capacity: u32 }
//!
//! impl RecordSchema for Room {
//!     fn info() -> Info { /* component name, versions, examples */ todo!() }
//!     fn validate(&self, _key: &str, _host: &dyn Host) -> Vec<Violation> { Vec::new() }
//! }
//! tandem_sdk::export_plugin!(RecordPlugin<Room>);
//! ```
//!
//! Plugins never read clocks or randomness: every write's [`Stamp`] comes from the engine.

pub mod append;
pub mod check;
pub mod dots;
mod glue;
pub mod record;
pub mod testing;

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// The contract version this SDK builds plugins against (the WIT package version).
pub const CONTRACT_VERSION: &str = "0.1.0";

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "tandem_sdk::bindings",
    });
}

#[doc(hidden)]
pub use glue::Exporter;

/// The stamp of a write: hybrid logical clock reading plus the writing node. Totally ordered by
/// (physical, logical, node).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch (hybrid logical clock).
    #[serde(rename = "p")]
    pub physical: u64,
    /// Logical counter within one millisecond.
    #[serde(rename = "l")]
    pub logical: u32,
    /// The writing node.
    #[serde(rename = "n")]
    pub node: String,
}

impl Stamp {
    /// A stamp, for tests and examples.
    pub fn new(physical: u64, logical: u32, node: &str) -> Self {
        Stamp { physical, logical, node: node.to_owned() }
    }
}

impl Ord for Stamp {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.physical, self.logical, &self.node).cmp(&(other.physical, other.logical, &other.node))
    }
}

impl PartialOrd for Stamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One broken rule of a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Path of the offending field ("" for the whole record), e.g. "/port" or "/options/3".
    pub field: String,
    /// Stable machine-readable code: "required", "range", "format", "unique", "reference",
    /// "conflict", "immutable", "schema", ...
    pub code: String,
    /// Explanation for an operator.
    pub message: String,
}

impl Violation {
    /// A violation of `field` (give it without the leading slash; "" for the whole record).
    pub fn new(field: &str, code: &str, message: impl Into<String>) -> Self {
        let field = if field.is_empty() || field.starts_with('/') { field.to_owned() } else { format!("/{field}") };
        Violation { field, code: code.to_owned(), message: message.into() }
    }
}

/// A version of a record in stored form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The plugin's bytes.
    pub data: Vec<u8>,
    /// True when this version says the record is deleted.
    pub tombstone: bool,
}

/// What an application asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Write this JSON document.
    Put(String),
    /// Delete the record.
    Delete,
}

/// Why a write could not become a stored version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// Well-formed but against the rules.
    Invalid(Vec<Violation>),
    /// Not a document of this component.
    Malformed(String),
}

/// An example write for documentation and the conformance kit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub key: String,
    /// JSON document.
    pub input: String,
}

impl Example {
    /// An example from a key and a JSON value.
    pub fn new(key: &str, input: serde_json::Value) -> Self {
        Example { key: key.to_owned(), input: input.to_string() }
    }
}

/// Retention of an append-only component, applied by the engine from record stamps.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Retention {
    pub max_age_ms: Option<u64>,
    pub max_count: Option<u64>,
}

/// Static facts about a plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub component: String,
    pub plugin_version: String,
    pub schema_version: u32,
    pub description: String,
    pub shape: String,
    pub examples: Vec<Example>,
    pub retention: Option<Retention>,
}

/// Read-only view of the node's other records, for referential checks in `validate`.
pub trait Host {
    /// The JSON document of a live record, or `None` if it does not exist or is deleted.
    fn lookup(&self, component: &str, key: &str) -> Option<serde_json::Value>;
}

/// A whole plugin. Implement it (or use one of the shapes in [`record`] and [`append`]) and export
/// it with [`export_plugin!`].
pub trait Plugin {
    /// Static facts; the same on every call.
    fn describe() -> Info;
    /// An application write into a stored version.
    fn serialize(key: &str, op: Op, prior: Option<&[u8]>, stamp: &Stamp) -> Result<Stored, WriteError>;
    /// The JSON document a reader sees, or `None` for a deleted record.
    fn deserialize(key: &str, data: &[u8]) -> Result<Option<String>, String>;
    /// The join of two versions: deterministic, commutative, associative, idempotent, byte for byte.
    fn merge(key: &str, a: &[u8], b: &[u8]) -> Result<Stored, String>;
    /// The invariants of one stored version.
    fn validate(key: &str, data: &[u8], host: &dyn Host) -> Result<(), Vec<Violation>>;
}

/// Exports a [`Plugin`] implementation as the plugin's WebAssembly component exports. Compiles to
/// nothing outside WebAssembly, so the same crate can be tested natively.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type TandemExportedPlugin = $crate::Exporter<$plugin>;
    $crate::bindings::export!(TandemExportedPlugin with_types_in $crate::bindings);
        };
    };
}

/// Encodes a value as canonical JSON bytes (object keys sorted, no whitespace).
pub fn canonical_json(value: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write_canonical(value, &mut out);
    out
}

/// [`canonical_json`] as a string, without copying it: the encoding of a `Value` is UTF-8.
pub(crate) fn canonical_json_string(value: &serde_json::Value) -> String {
    String::from_utf8(canonical_json(value)).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Appends the canonical JSON encoding of `value` to `out` (see [`canonical_json`]).
pub fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            out.push(b'{');
            // serde_json's map is sorted already unless another crate turns on its
            // `preserve_order`; sort explicitly only then.
            if map.keys().is_sorted() {
                write_members(map.iter(), out);
            } else {
                let mut members: Vec<(&String, &Value)> = map.iter().collect();
                members.sort_by(|a, b| a.0.cmp(b.0));
                write_members(members.into_iter(), out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::String(s) => write_json_str(s, out),
        // Scalars serialize infallibly into a vector.
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

fn write_members<'a>(members: impl Iterator<Item = (&'a String, &'a serde_json::Value)>, out: &mut Vec<u8>) {
    for (i, (key, value)) in members.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(key, out);
        out.push(b':');
        write_canonical(value, out);
    }
}

/// Appends `s` as a JSON string, escaped exactly as serde_json escapes it.
pub fn write_json_str(s: &str, out: &mut Vec<u8>) {
    // Writing a string into a vector cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Total order on JSON values by their canonical encoding: the tie-breaker wherever two different
/// values carry the same stamp, so that every node picks the same one.
pub fn cmp_values(a: &serde_json::Value, b: &serde_json::Value) -> Ordering {
    canonical_json(a).cmp(&canonical_json(b))
}
