//! Records whose fields merge one by one: the shape of settings, CRM contacts, requirements.
//!
//! A plugin declares a serde type for its documents ([`RecordSchema`]) and, for the fields that
//! do not simply take the last writer's value, a [`FieldKind`]. [`RecordPlugin`] then implements
//! the whole contract.
//!
//! # Stored form
//! Canonical JSON: `{"v":1,"d":<delete stamp>?,"f":{field: cell}}`. Each cell carries the stamps
//! it needs to merge. Serialization compares the input with the prior version: only fields whose
//! value changed take the write's stamp, so two nodes editing different fields of one record both
//! keep their change.
//!
//! # Deletes
//! A delete records its stamp. Every field value stamped at or before the newest delete is hidden
//! (and dropped at the next merge); a write stamped after it brings the record back with only
//! what was written after the delete. So a delete and a concurrent update resolve by stamp order,
//! the same way on every node. A record is a tombstone when no field value is newer than its delete.
//!
//! # Merge rules per kind
//! - [`FieldKind::Lww`]: the value with the greater stamp wins (stamps tie only for equal writes;
//!   a tie on different values goes to the greater canonical encoding).
//! - [`FieldKind::Strict`]: a multi-value register. Concurrent writes are all kept; `validate`
//!   reports a `conflict`; the next local write replaces exactly the values it saw.
//! - [`FieldKind::Set`]: an add-wins set of JSON values (an element removed on one node and
//!   re-added concurrently on another stays).
//! - [`FieldKind::Append`]: an append-only list; writes add elements, never remove them.
//! - [`FieldKind::Rank`]: a workflow state that only moves forward: the join is the highest rank
//!   that no delete hides.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::dots::{Context, Entry, join_entries, normalize_entries};
use crate::{Host, Info, Op, Plugin, Stamp, Stored, Violation, WriteError, canonical_json, cmp_values, write_canonical, write_json_str};

/// How one field merges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// Last writer wins by stamp (the default for undeclared fields).
    Lww,
    /// Concurrent changes are kept side by side and reported as a conflict.
    Strict,
    /// Add-wins set; the field's JSON value is an array of distinct elements.
    Set,
    /// Append-only list; the field's JSON value is an array; elements are never removed.
    Append,
    /// A string from this list, which only moves forward (later in the list) under merge.
    Rank(&'static [&'static str]),
}

/// What a plugin writes for a per-field record component.
pub trait RecordSchema: Serialize + DeserializeOwned {
    /// Static facts: component name, versions, description, examples.
    fn info() -> Info;

    /// Fields that do not merge as last-writer-wins.
    fn fields() -> &'static [(&'static str, FieldKind)] {
        &[]
    }

    /// The record's invariants. `host` looks up other records (for references and uniqueness).
    fn validate(&self, key: &str, host: &dyn Host) -> Vec<Violation> {
        let _ = (key, host);
        Vec::new()
    }

    /// Rewrites an input before it is stored, e.g. to hash a secret. Deterministic: it may use the
    /// key, the stamp and the prior document, never a clock or randomness.
    fn before_store(input: Value, key: &str, stamp: &Stamp, prior: Option<&Value>) -> Result<Value, Vec<Violation>> {
        let _ = (key, stamp, prior);
        Ok(input)
    }

    /// Removes what readers must never see (e.g. credential hashes) from a document.
    fn redact(doc: &mut Map<String, Value>) {
        let _ = doc;
    }
}

/// A [`Plugin`] for a [`RecordSchema`].
pub struct RecordPlugin<T>(PhantomData<T>);

/// Version of the stored form written by this module.
const FORMAT: u32 = 1;

/// One field of the stored form. Serde's derive describes the stored form (and is the reference
/// the tests hold [`write_doc`] to); reading and writing go through [`RawCell`] and [`write_doc`],
/// which are several times faster than serde's internally tagged enums.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "k")]
enum Cell {
    #[serde(rename = "w")]
    Lww { s: Stamp, v: Value },
    #[serde(rename = "m")]
    Strict { e: Vec<Entry>, c: Context },
    #[serde(rename = "s")]
    Set { e: Vec<Entry>, c: Context },
    #[serde(rename = "a")]
    Append { e: Vec<Entry> },
    /// Besides the highest rank, keeps each lower rank written after every higher one: a delete
    /// that hides the higher ones brings it back, whatever the order of delivery.
    #[serde(rename = "r")]
    Rank { e: Vec<Ranked> },
}

/// A value of a rank field with its rank and stamp.
#[derive(Clone, Debug, PartialEq, Serialize)]
struct Ranked {
    r: u32,
    s: Stamp,
    v: Value,
}

/// A cell as stored, before its kind is known: every kind's members, each optional.
#[derive(Deserialize)]
struct RawCell {
    k: RawKind,
    #[serde(default)]
    s: Option<Stamp>,
    #[serde(default, deserialize_with = "present")]
    v: Option<Value>,
    #[serde(default)]
    e: Option<Vec<RawEntry>>,
    #[serde(default)]
    c: Option<Context>,
}

#[derive(Deserialize)]
enum RawKind {
    #[serde(rename = "w")]
    Lww,
    #[serde(rename = "m")]
    Strict,
    #[serde(rename = "s")]
    Set,
    #[serde(rename = "a")]
    Append,
    #[serde(rename = "r")]
    Rank,
}

/// An entry of a dotted or rank cell; `r` only in rank cells.
#[derive(Deserialize)]
struct RawEntry {
    #[serde(default)]
    r: Option<u32>,
    s: Stamp,
    #[serde(deserialize_with = "present")]
    v: Option<Value>,
}

/// A member that is present, even as `null` (which `Option` alone would read as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl RawCell {
    fn into_cell(self) -> Result<Cell, String> {
        fn need<T>(x: Option<T>, member: &str) -> Result<T, String> {
            x.ok_or_else(|| format!("missing field `{member}`"))
        }
        fn entries(e: Vec<RawEntry>) -> Vec<Entry> {
            e.into_iter().map(|x| Entry { stamp: x.s, value: x.v.unwrap_or(Value::Null) }).collect()
        }
        Ok(match self.k {
            RawKind::Lww => Cell::Lww { s: need(self.s, "s")?, v: need(self.v, "v")? },
            RawKind::Strict => Cell::Strict { e: entries(need(self.e, "e")?), c: need(self.c, "c")? },
            RawKind::Set => Cell::Set { e: entries(need(self.e, "e")?), c: need(self.c, "c")? },
            RawKind::Append => Cell::Append { e: entries(need(self.e, "e")?) },
            RawKind::Rank => Cell::Rank {
                e: need(self.e, "e")?
                    .into_iter()
                    .map(|x| Ok(Ranked { r: need(x.r, "r")?, s: x.s, v: x.v.unwrap_or(Value::Null) }))
                    .collect::<Result<_, String>>()?,
            },
        })
    }
}

impl<'de> Deserialize<'de> for Cell {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawCell::deserialize(d)?.into_cell().map_err(serde::de::Error::custom)
    }
}

/// Appends the canonical JSON of `doc` (members in key order, no whitespace): the bytes
/// `canonical_json(&serde_json::to_value(doc))` gives, without building the value tree.
fn write_doc(doc: &Doc, out: &mut Vec<u8>) {
    let mut memo = StampMemo::default();
    out.push(b'{');
    if let Some(d) = &doc.d {
        out.extend_from_slice(b"\"d\":");
        write_stamp(d, out, &mut memo);
        out.push(b',');
    }
    out.extend_from_slice(b"\"f\":{");
    for (i, (name, cell)) in doc.f.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(name, out);
        out.push(b':');
        write_cell(cell, out, &mut memo);
    }
    out.extend_from_slice(b"},\"v\":");
    write_number(doc.v, out);
    out.push(b'}');
}

fn write_cell<'a>(cell: &'a Cell, out: &mut Vec<u8>, memo: &mut StampMemo<'a>) {
    match cell {
        Cell::Lww { s, v } => {
            out.extend_from_slice(b"{\"k\":\"w\",\"s\":");
            write_stamp(s, out, memo);
            out.extend_from_slice(b",\"v\":");
            write_canonical(v, out);
        }
        Cell::Strict { e, c } | Cell::Set { e, c } => {
            out.extend_from_slice(b"{\"c\":{");
            for (i, (node, (p, l))) in c.0.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_str(node, out);
                out.extend_from_slice(b":[");
                write_number(*p, out);
                out.push(b',');
                write_number(*l, out);
                out.push(b']');
            }
            out.extend_from_slice(b"},\"e\":");
            write_entries(e, out, memo);
            out.extend_from_slice(if matches!(cell, Cell::Strict { .. }) { b",\"k\":\"m\"" } else { b",\"k\":\"s\"" });
        }
        Cell::Append { e } => {
            out.extend_from_slice(b"{\"e\":");
            write_entries(e, out, memo);
            out.extend_from_slice(b",\"k\":\"a\"");
        }
        Cell::Rank { e } => {
            out.extend_from_slice(b"{\"e\":");
            write_list(e.iter().map(|x| (Some(x.r), &x.s, &x.v)), out, memo);
            out.extend_from_slice(b",\"k\":\"r\"");
        }
    }
    out.push(b'}');
}

fn write_entries<'a>(e: &'a [Entry], out: &mut Vec<u8>, memo: &mut StampMemo<'a>) {
    write_list(e.iter().map(|x| (None, &x.stamp, &x.value)), out, memo);
}

/// A list of `{"r"?, "s", "v"}` objects: rank entries carry their rank, dotted entries none.
fn write_list<'a>(items: impl Iterator<Item = (Option<u32>, &'a Stamp, &'a Value)>, out: &mut Vec<u8>, memo: &mut StampMemo<'a>) {
    out.push(b'[');
    for (i, (rank, stamp, value)) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'{');
        if let Some(r) = rank {
            out.extend_from_slice(b"\"r\":");
            write_number(r, out);
            out.push(b',');
        }
        out.extend_from_slice(b"\"s\":");
        write_stamp(stamp, out, memo);
        out.extend_from_slice(b",\"v\":");
        write_canonical(value, out);
        out.push(b'}');
    }
    out.push(b']');
}

/// The stamp [`write_stamp`] wrote last and where its encoding is in the output: most cells of a
/// version carry the same stamp (the write's), which is then copied rather than encoded again.
#[derive(Default)]
struct StampMemo<'a> {
    last: Option<(&'a Stamp, std::ops::Range<usize>)>,
}

fn write_stamp<'a>(s: &'a Stamp, out: &mut Vec<u8>, memo: &mut StampMemo<'a>) {
    if let Some((last, at)) = &memo.last
        && *last == s
    {
        out.extend_from_within(at.clone());
        return;
    }
    let start = out.len();
    out.extend_from_slice(b"{\"l\":");
    write_number(s.logical, out);
    out.extend_from_slice(b",\"n\":");
    write_json_str(&s.node, out);
    out.extend_from_slice(b",\"p\":");
    write_number(s.physical, out);
    out.push(b'}');
    memo.last = Some((s, start..out.len()));
}

fn write_number(n: impl Into<u64>, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(n.into()).as_bytes());
}

/// Drops the rank entries that the delete hides or that a higher (or equal) rank at least as new
/// dominates (a delete hiding that one hides them too), leaving the canonical "staircase": ranks
/// ascending, stamps descending.
fn staircase(mut e: Vec<Ranked>, deleted: Option<&Stamp>) -> Vec<Ranked> {
    e.retain(|x| !hidden(&x.s, deleted));
    e.sort_by(|a, b| (b.r, &b.s, canonical_json(&b.v)).cmp(&(a.r, &a.s, canonical_json(&a.v))));
    let mut kept: Vec<Ranked> = Vec::with_capacity(e.len());
    for x in e {
        if kept.last().is_none_or(|newest_above| x.s > newest_above.s) {
            kept.push(x);
        }
    }
    kept.reverse();
    kept
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<Stamp>,
    f: BTreeMap<String, Cell>,
}

/// A field's value as readers see it, with the concurrent values of a strict field.
struct View {
    doc: Map<String, Value>,
    conflicts: Map<String, Value>,
    live: bool,
}

fn hidden(s: &Stamp, deleted: Option<&Stamp>) -> bool {
    deleted.is_some_and(|d| s <= d)
}

impl Cell {
    fn max_stamp(&self) -> Option<&Stamp> {
        match self {
            Cell::Lww { s, .. } => Some(s),
            Cell::Rank { e } => e.iter().map(|x| &x.s).max(),
            Cell::Strict { e, .. } | Cell::Set { e, .. } | Cell::Append { e } => e.iter().map(|x| &x.stamp).max(),
        }
    }

    /// Drops what the delete stamp hides and restores canonical order. Returns false when nothing of
    /// the cell is left and it carries no context worth keeping.
    fn normalize(&mut self, deleted: Option<&Stamp>) -> bool {
        match self {
            Cell::Lww { s, .. } => {
                if hidden(s, deleted) {
                    return false;
                }
            }
            Cell::Rank { e } => {
                *e = staircase(std::mem::take(e), deleted);
                if e.is_empty() {
                    return false;
                }
            }
            Cell::Strict { e, c } | Cell::Set { e, c } => {
                for x in e.iter() {
                    c.add(&x.stamp);
                }
                e.retain(|x| !hidden(&x.stamp, deleted));
                normalize_entries(e);
            }
            Cell::Append { e } => {
                e.retain(|x| !hidden(&x.stamp, deleted));
                normalize_entries(e);
                if e.is_empty() {
                    return false;
                }
            }
        }
        true
    }

    fn join(a: &Cell, b: &Cell) -> Result<Cell, String> {
        Ok(match (a, b) {
            (Cell::Lww { s: sa, v: va }, Cell::Lww { s: sb, v: vb }) => {
                // Stamps tie only for equal writes; then the greater canonical encoding wins.
                let a_wins = match sa.cmp(sb) {
                    std::cmp::Ordering::Equal => canonical_json(va) >= canonical_json(vb),
                    order => order == std::cmp::Ordering::Greater,
                };
                if a_wins { a.clone() } else { b.clone() }
            }
            (Cell::Rank { e: ea }, Cell::Rank { e: eb }) => Cell::Rank { e: staircase([ea.as_slice(), eb].concat(), None) },
            (Cell::Strict { e: ea, c: ca }, Cell::Strict { e: eb, c: cb }) => {
                let mut c = ca.clone();
                c.join(cb);
                Cell::Strict { e: join_entries(ea, ca, eb, cb), c }
            }
            (Cell::Set { e: ea, c: ca }, Cell::Set { e: eb, c: cb }) => {
                let mut c = ca.clone();
                c.join(cb);
                Cell::Set { e: join_entries(ea, ca, eb, cb), c }
            }
            (Cell::Append { e: ea }, Cell::Append { e: eb }) => {
                let mut e = ea.clone();
                e.extend(eb.iter().cloned());
                normalize_entries(&mut e);
                Cell::Append { e }
            }
            _ => return Err("the two versions store one field with different merge kinds".to_owned()),
        })
    }
}

fn decode(data: &[u8]) -> Result<Doc, String> {
    let doc: Doc = serde_json::from_slice(data).map_err(|e| format!("stored record is not readable: {e}"))?;
    if doc.v != FORMAT {
        return Err(format!("stored record has format {}, this plugin reads format {FORMAT}", doc.v));
    }
    Ok(doc)
}

fn normalize(mut doc: Doc) -> Doc {
    let deleted = doc.d.as_ref();
    doc.f.retain(|_, c| c.normalize(deleted));
    doc.v = FORMAT;
    doc
}

fn encode(doc: Doc) -> Stored {
    let mut data = Vec::with_capacity(512);
    write_doc(&doc, &mut data);
    let tombstone = !is_live(&doc);
    LAST.with_borrow_mut(|last| *last = Some(Last { bytes: data.clone(), doc, view: None }));
    Stored { data, tombstone }
}

/// The version this plugin encoded last, with its document and, once a call has needed it, the
/// document's view.
struct Last {
    bytes: Vec<u8>,
    doc: Doc,
    view: Option<View>,
}

thread_local! {
    /// The version this plugin encoded last: the engine validates and reads the bytes
    /// `serialize` or `merge` has just returned, which then need no decoding, and `validate`
    /// leaves the view it made for `deserialize`. A pure cache: the bytes are compared in full,
    /// and a view is a function of the document, so every answer is the one decoding would give.
    static LAST: std::cell::RefCell<Option<Last>> = const { std::cell::RefCell::new(None) };
}

/// Whether two byte strings are equal, compared eight bytes at a time: slice equality calls the
/// C library's `memcmp`, which in WebAssembly compares one byte per loop turn (and is charged
/// fuel per turn), about a microsecond for a stored version of a few hundred bytes.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let ((wa, ta), (wb, tb)) = (a.as_chunks::<8>(), b.as_chunks::<8>());
    ta == tb && wa.iter().zip(wb).all(|(x, y)| u64::from_ne_bytes(*x) == u64::from_ne_bytes(*y))
}

/// The document [`LAST`] holds for `data`, with its view slot, if `data` is its bytes.
fn cached<'l>(last: &'l mut Option<Last>, data: &[u8]) -> Option<(&'l Doc, &'l mut Option<View>)> {
    match last {
        Some(Last { bytes, doc, view }) if same_bytes(bytes, data) => Some((doc, view)),
        _ => None,
    }
}

/// Runs `f` on the view of the document stored as `data`: from [`LAST`] (made once, then kept
/// there), or decoded.
fn with_view<R>(data: &[u8], f: impl FnOnce(&View) -> R) -> Result<R, String> {
    LAST.with_borrow_mut(|last| match cached(last, data) {
        Some((doc, slot)) => Ok(f(slot.get_or_insert_with(|| view(doc)))),
        None => decode(data).map(|doc| f(&view(&doc))),
    })
}

/// The view of the document stored as `data`, taken from [`LAST`] when there, else made from the
/// document there or decoded.
fn take_view(data: &[u8]) -> Result<View, String> {
    LAST.with_borrow_mut(|last| match cached(last, data) {
        Some((doc, slot)) => Ok(slot.take().unwrap_or_else(|| view(doc))),
        None => decode(data).map(|doc| view(&doc)),
    })
}

/// Every field of the input and of the stored version, in name order, each with the input's value
/// (null when the input leaves it out) and the stored cell (if any).
fn paired(new: Map<String, Value>, old: BTreeMap<String, Cell>) -> Vec<(String, Value, Option<Cell>)> {
    let mut new: Vec<(String, Value)> = new.into_iter().collect();
    // serde_json's map is sorted unless another crate turns on its `preserve_order`.
    if !new.is_sorted_by(|a, b| a.0 < b.0) {
        new.sort_by(|a, b| a.0.cmp(&b.0));
    }
    let mut out = Vec::with_capacity(new.len() + old.len());
    let (mut new, mut old) = (new.into_iter().peekable(), old.into_iter().peekable());
    loop {
        let order = match (new.peek(), old.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((n, _)), Some((o, _))) => n.cmp(o),
        };
        let next = match order {
            std::cmp::Ordering::Less => new.next().map(|(name, value)| (name, value, None)),
            std::cmp::Ordering::Greater => old.next().map(|(name, cell)| (name, Value::Null, Some(cell))),
            std::cmp::Ordering::Equal => new.next().map(|(name, value)| (name, value, old.next().map(|(_, cell)| cell))),
        };
        out.extend(next);
    }
    out
}

fn is_live(doc: &Doc) -> bool {
    doc.f.values().any(|c| c.max_stamp().is_some_and(|s| !hidden(s, doc.d.as_ref())))
}

fn distinct_values(entries: &[Entry]) -> Vec<Value> {
    let mut values: Vec<Value> = entries.iter().map(|e| e.value.clone()).collect();
    values.sort_by(cmp_values);
    values.dedup();
    values
}

fn view(doc: &Doc) -> View {
    let d = doc.d.as_ref();
    let mut out = Map::new();
    let mut conflicts = Map::new();
    for (name, cell) in &doc.f {
        let value = match cell {
            Cell::Lww { s, v } => {
                if hidden(s, d) {
                    continue;
                }
                v.clone()
            }
            Cell::Rank { e } => {
                let Some(top) = e.iter().filter(|x| !hidden(&x.s, d)).max_by_key(|x| x.r) else { continue };
                top.v.clone()
            }
            Cell::Strict { e, .. } => {
                let visible: Vec<&Entry> = e.iter().filter(|x| !hidden(&x.stamp, d)).collect();
                let Some(newest) = visible.iter().max_by(|a, b| a.stamp.cmp(&b.stamp)) else { continue };
                let values = distinct_values(&visible.iter().map(|x| (*x).clone()).collect::<Vec<_>>());
                if values.len() > 1 {
                    conflicts.insert(name.clone(), Value::Array(values));
                }
                newest.value.clone()
            }
            Cell::Set { e, .. } => {
                let visible: Vec<Entry> = e.iter().filter(|x| !hidden(&x.stamp, d)).cloned().collect();
                Value::Array(distinct_values(&visible))
            }
            Cell::Append { e } => Value::Array(e.iter().filter(|x| !hidden(&x.stamp, d)).map(|x| x.value.clone()).collect()),
        };
        if !value.is_null() {
            out.insert(name.clone(), value);
        }
    }
    View { doc: out, conflicts, live: is_live(doc) }
}

impl<T: RecordSchema> RecordPlugin<T> {
    fn kind_of(field: &str) -> FieldKind {
        T::fields().iter().find(|(n, _)| *n == field).map(|(_, k)| *k).unwrap_or(FieldKind::Lww)
    }

    fn put(key: &str, input: &str, prior: Option<Doc>, stamp: &Stamp) -> Result<Stored, WriteError> {
        let input: Value = serde_json::from_str(input).map_err(|e| WriteError::Malformed(format!("input is not JSON: {e}")))?;
        if !input.is_object() {
            return Err(WriteError::Malformed("input must be a JSON object".to_owned()));
        }
        let mut doc = prior.unwrap_or(Doc { v: FORMAT, d: None, f: BTreeMap::new() });
        let mut current = view(&doc);
        // The prior document is lent to `before_store`, then put back.
        let prior_view = current.live.then(|| Value::Object(std::mem::take(&mut current.doc)));
        let input = T::before_store(input, key, stamp, prior_view.as_ref()).map_err(WriteError::Invalid)?;
        if let Some(Value::Object(doc)) = prior_view {
            current.doc = doc;
        }
        // The typed round trip checks the shape and fills in defaults.
        let typed: T = serde_json::from_value(input)
            .map_err(|e| WriteError::Malformed(format!("input does not match the {} schema: {e}", T::info().component)))?;
        let Value::Object(new) = serde_json::to_value(&typed).map_err(|e| WriteError::Malformed(e.to_string()))? else {
            return Err(WriteError::Malformed("the schema must serialize to a JSON object".to_owned()));
        };

        let mut violations = Vec::new();
        let mut cells = Vec::with_capacity(new.len() + doc.f.len());
        for (name, wanted, old) in paired(new, std::mem::take(&mut doc.f)) {
            let seen = current.doc.get(&name).unwrap_or(&Value::Null);
            let in_conflict = current.conflicts.contains_key(&name);
            let cell = match Self::kind_of(&name) {
                FieldKind::Lww => {
                    if wanted == *seen && old.is_some() {
                        old
                    } else if wanted.is_null() && old.is_none() {
                        None
                    } else {
                        Some(Cell::Lww { s: stamp.clone(), v: wanted })
                    }
                }
                FieldKind::Rank(order) => match wanted.as_str().and_then(|w| order.iter().position(|o| *o == w)) {
                    None if wanted.is_null() => old,
                    None => {
                        violations.push(Violation::new(&name, "format", format!("must be one of: {}", order.join(", "))));
                        old
                    }
                    Some(rank) => {
                        let old_entries = match &old {
                            Some(Cell::Rank { e }) => staircase(e.clone(), doc.d.as_ref()),
                            _ => Vec::new(),
                        };
                        let old_rank = old_entries.iter().map(|x| x.r).max();
                        match old_rank {
                            Some(r) if (rank as u32) < r => {
                                violations.push(Violation::new(&name, "workflow", format!("cannot move back from {} to {}", seen, wanted)));
                                old
                            }
                            Some(r) if rank as u32 == r => old,
                            _ => {
                                let new = Ranked { r: rank as u32, s: stamp.clone(), v: wanted };
                                Some(Cell::Rank { e: staircase([old_entries, vec![new]].concat(), None) })
                            }
                        }
                    }
                },
                FieldKind::Strict => {
                    let (entries, mut ctx) = match old {
                        Some(Cell::Strict { e, c }) => (e, c),
                        _ => (Vec::new(), Context::default()),
                    };
                    if wanted == *seen && !in_conflict {
                        if entries.is_empty() && wanted.is_null() { None } else { Some(Cell::Strict { e: entries, c: ctx }) }
                    } else {
                        for x in &entries {
                            ctx.add(&x.stamp);
                        }
                        ctx.add(stamp);
                        let e = if wanted.is_null() { Vec::new() } else { vec![Entry { stamp: stamp.clone(), value: wanted }] };
                        Some(Cell::Strict { e, c: ctx })
                    }
                }
                FieldKind::Set => {
                    let (mut entries, mut ctx) = match old {
                        Some(Cell::Set { e, c }) => (e, c),
                        _ => (Vec::new(), Context::default()),
                    };
                    let wanted_items = match wanted {
                        Value::Array(items) => items,
                        Value::Null => Vec::new(),
                        _ => {
                            violations.push(Violation::new(&name, "format", "must be an array"));
                            Vec::new()
                        }
                    };
                    let seen_items: &[Value] = match seen {
                        Value::Array(items) => items,
                        _ => &[],
                    };
                    let mut changed = false;
                    for x in &entries {
                        ctx.add(&x.stamp);
                    }
                    // Removed elements: drop every entry of them (their stamps stay in the context).
                    let before = entries.len();
                    entries.retain(|x| hidden(&x.stamp, doc.d.as_ref()) || wanted_items.contains(&x.value));
                    changed |= entries.len() != before;
                    for item in wanted_items {
                        if !seen_items.contains(&item) {
                            entries.push(Entry { stamp: stamp.clone(), value: item });
                            changed = true;
                        }
                    }
                    if changed {
                        ctx.add(stamp);
                    }
                    if entries.is_empty() && ctx.0.is_empty() { None } else { Some(Cell::Set { e: entries, c: ctx }) }
                }
                FieldKind::Append => {
                    let mut entries = match old {
                        Some(Cell::Append { e }) => e,
                        _ => Vec::new(),
                    };
                    match &wanted {
                        Value::Array(items) => {
                            let seen_items: &[Value] = match seen {
                                Value::Array(s) => s,
                                _ => &[],
                            };
                            for item in items {
                                if !seen_items.contains(item) {
                                    entries.push(Entry { stamp: stamp.clone(), value: item.clone() });
                                }
                            }
                        }
                        Value::Null => {}
                        _ => violations.push(Violation::new(&name, "format", "must be an array")),
                    }
                    if entries.is_empty() { None } else { Some(Cell::Append { e: entries }) }
                }
            };
            if let Some(cell) = cell {
                cells.push((name, cell));
            }
        }
        // In key order already: the map is built in one pass.
        doc.f = cells.into_iter().collect();
        if !violations.is_empty() {
            return Err(WriteError::Invalid(violations));
        }
        let doc = normalize(doc);
        if !is_live(&doc) {
            // An empty document after a delete: give it one visible mark so it reads as present.
            return Err(WriteError::Invalid(vec![Violation::new("", "required", "the document has no fields")]));
        }
        Ok(encode(doc))
    }
}

impl<T: RecordSchema> Plugin for RecordPlugin<T> {
    fn describe() -> Info {
        let mut info = T::info();
        if info.shape.is_empty() {
            let strict = T::fields().iter().any(|(_, k)| *k == FieldKind::Strict);
            info.shape = if strict { "strict" } else { "lww-record" }.to_owned();
        }
        info
    }

    fn serialize(key: &str, op: Op, prior: Option<&[u8]>, stamp: &Stamp) -> Result<Stored, WriteError> {
        let prior = match prior {
            Some(bytes) => Some(decode(bytes).map_err(WriteError::Malformed)?),
            None => None,
        };
        match op {
            Op::Put(input) => Self::put(key, &input, prior, stamp),
            Op::Delete => {
                let mut doc = prior.unwrap_or(Doc { v: FORMAT, d: None, f: BTreeMap::new() });
                // The delete saw every value it hides.
                for cell in doc.f.values_mut() {
                    if let Cell::Strict { e, c } | Cell::Set { e, c } = cell {
                        for x in e.iter() {
                            c.add(&x.stamp);
                        }
                    }
                }
                if doc.d.as_ref().is_none_or(|d| d < stamp) {
                    doc.d = Some(stamp.clone());
                }
                Ok(encode(normalize(doc)))
            }
        }
    }

    fn deserialize(_key: &str, data: &[u8]) -> Result<Option<String>, String> {
        let mut v = take_view(data)?;
        if !v.live {
            return Ok(None);
        }
        T::redact(&mut v.doc);
        if !v.conflicts.is_empty() {
            let mut conflicts = v.conflicts;
            T::redact(&mut conflicts);
            v.doc.insert("_conflicts".to_owned(), Value::Object(conflicts));
        }
        Ok(Some(crate::canonical_json_string(&Value::Object(v.doc))))
    }

    fn merge(_key: &str, a: &[u8], b: &[u8]) -> Result<Stored, String> {
        let a = normalize(decode(a)?);
        let b = normalize(decode(b)?);
        let d = match (a.d, b.d) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        let mut f = a.f;
        for (name, cb) in b.f {
            let joined = match f.get(&name) {
                Some(ca) => Cell::join(ca, &cb)?,
                None => cb,
            };
            f.insert(name, joined);
        }
        Ok(encode(normalize(Doc { v: FORMAT, d, f })))
    }

    fn validate(key: &str, data: &[u8], host: &dyn Host) -> Result<(), Vec<Violation>> {
        let checked = with_view(data, |v| {
            if !v.live {
                return None;
            }
            // Violations reach operators and logs: they show the values only as readers may see them.
            let mut shown = v.conflicts.clone();
            T::redact(&mut shown);
            let violations: Vec<Violation> = v
                .conflicts
                .keys()
                .map(|field| {
                    let message = match shown.get(field) {
                        Some(values) => {
                            format!("concurrent changes need an operator's decision: {}", crate::canonical_json_string(values))
                        }
                        None => "concurrent changes need an operator's decision (the values are not shown)".to_owned(),
                    };
                    Violation::new(field, "conflict", message)
                })
                .collect();
            Some((violations, T::deserialize(&v.doc)))
        })
        .map_err(|e| vec![Violation::new("", "schema", e)])?;
        let Some((mut violations, typed)) = checked else {
            return Ok(());
        };
        match typed {
            Ok(typed) => violations.extend(typed.validate(key, host)),
            Err(e) => violations.push(Violation::new("", "schema", format!("the merged document does not match the schema: {e}"))),
        }
        if violations.is_empty() { Ok(()) } else { Err(violations) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{NoHost, merge, put, stamp};

    #[derive(Serialize, Deserialize)]
    struct Account {
        name: String,
        secret: String,
    }

    impl RecordSchema for Account {
        fn info() -> Info {
            Info {
                component: "accounts".to_owned(),
                plugin_version: "0.1.0".to_owned(),
                schema_version: 1,
                description: String::new(),
                shape: String::new(),
                examples: Vec::new(),
                retention: None,
            }
        }

        fn fields() -> &'static [(&'static str, FieldKind)] {
            &[("name", FieldKind::Strict), ("secret", FieldKind::Strict)]
        }

        fn redact(doc: &mut Map<String, Value>) {
            doc.remove("secret");
        }
    }

    #[derive(Serialize, Deserialize)]
    struct Item {
        status: String,
    }

    impl RecordSchema for Item {
        fn info() -> Info {
            Account::info()
        }

        fn fields() -> &'static [(&'static str, FieldKind)] {
            &[("status", FieldKind::Rank(&["draft", "approved", "done"]))]
        }
    }

    #[derive(Serialize, Deserialize)]
    struct Every {
        #[serde(default)]
        note: Option<String>,
        #[serde(default)]
        owner: Option<String>,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        log: Vec<serde_json::Value>,
        #[serde(default)]
        status: Option<String>,
    }

    impl RecordSchema for Every {
        fn info() -> Info {
            Account::info()
        }

        fn fields() -> &'static [(&'static str, FieldKind)] {
            &[
                ("owner", FieldKind::Strict),
                ("tags", FieldKind::Set),
                ("log", FieldKind::Append),
                ("status", FieldKind::Rank(&["draft", "approved", "done"])),
            ]
        }
    }

    /// The hand-written writer and reader agree byte for byte with serde's description of the
    /// stored form, over versions of every cell kind built by puts, deletes and merges.
    #[test]
    fn stored_form_matches_the_serde_reference() {
        type P = RecordPlugin<Every>;
        let statuses = ["draft", "approved", "done"];
        let nodes = ["a", "b\"q", "n\u{e9}\u{1}"];
        let mut versions: Vec<Stored> = Vec::new();
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for i in 0..300u64 {
            let prior = if versions.is_empty() { None } else { Some(versions[next(versions.len() as u64) as usize].clone()) };
            let node = nodes[next(3) as usize];
            let st = Stamp::new(1_000 + next(50), next(3) as u32, node);
            let version = match next(5) {
                0 => P::serialize("k", Op::Delete, prior.as_ref().map(|p| p.data.as_slice()), &st).ok(),
                1 if versions.len() > 1 => {
                    let other = &versions[next(versions.len() as u64) as usize];
                    prior.and_then(|p| P::merge("k", &p.data, &other.data).ok())
                }
                _ => {
                    let input = serde_json::json!({
                        "note": if next(2) == 0 { serde_json::json!(format!("n\"{i}\\\u{2028}")) } else { serde_json::Value::Null },
                        "owner": format!("o{}", next(3)),
                        "tags": (0..next(3)).map(|t| format!("t{t}")).collect::<Vec<_>>(),
                        "log": [{"at": i, "z": [1.5, -2, null, true]}],
                        "status": statuses[next(3) as usize],
                    });
                    P::serialize("k", Op::Put(input.to_string()), prior.as_ref().map(|p| p.data.as_slice()), &st).ok()
                }
            };
            if let Some(v) = version {
                versions.push(v);
            }
        }
        assert!(versions.len() > 200, "too few versions were built: {}", versions.len());
        let mut kinds = std::collections::HashSet::new();
        for v in &versions {
            let doc = match decode(&v.data) {
                Ok(doc) => doc,
                Err(e) => panic!("{e}: {}", String::from_utf8_lossy(&v.data)),
            };
            for cell in doc.f.values() {
                kinds.insert(std::mem::discriminant(cell));
            }
            let reference = canonical_json(&serde_json::to_value(&doc).unwrap_or(Value::Null));
            assert_eq!(String::from_utf8_lossy(&v.data), String::from_utf8_lossy(&reference));
            assert_eq!(encode(doc).data, v.data);
        }
        assert_eq!(kinds.len(), 5, "every cell kind occurs");
        // A null value is stored, and read back as present.
        let st = Stamp::new(1, 0, "a");
        let with_null = Doc { v: FORMAT, d: None, f: BTreeMap::from([("x".to_owned(), Cell::Lww { s: st, v: Value::Null })]) };
        assert_eq!(decode(&encode(with_null.clone()).data), Ok(with_null));
        // A cell without its value is refused, not read as null.
        assert!(decode(br#"{"f":{"x":{"k":"w","s":{"l":0,"n":"a","p":1}}},"v":1}"#).is_err());
        assert!(decode(br#"{"f":{"x":{"k":"r","e":[{"s":{"l":0,"n":"a","p":1},"v":"a"}]}},"v":1}"#).is_err());
        assert!(decode(br#"{"f":{"x":{"k":"q","s":{"l":0,"n":"a","p":1},"v":1}},"v":1}"#).is_err());
    }

    #[test]
    fn rank_merge_is_associative_across_deletes() {
        type P = RecordPlugin<Item>;
        // "approved" written early, a delete after it, "draft" written after the delete: the
        // draft is what survives, whichever two versions meet first.
        let approved = put::<P>("k", serde_json::json!({"status": "approved"}), None, &stamp(22, "c"));
        let deleted = match P::serialize("k", Op::Delete, None, &stamp(57, "b")) {
            Ok(s) => s,
            Err(e) => panic!("{e:?}"),
        };
        let draft = put::<P>("k", serde_json::json!({"status": "draft"}), None, &stamp(149, "a"));
        let left = merge::<P>("k", &merge::<P>("k", &draft, &deleted), &approved);
        let right = merge::<P>("k", &draft, &merge::<P>("k", &deleted, &approved));
        assert_eq!(left, right);
        assert_eq!(crate::testing::read::<P>("k", &left), Some(serde_json::json!({"status": "draft"})));
        // Without the delete the higher rank wins.
        let both = merge::<P>("k", &draft, &approved);
        assert_eq!(crate::testing::read::<P>("k", &both), Some(serde_json::json!({"status": "approved"})));
        assert_eq!(merge::<P>("k", &approved, &draft), both);
    }

    #[test]
    fn same_bytes_is_slice_equality() {
        let base: Vec<u8> = (0..=40u8).collect();
        for len in 0..base.len() {
            let a = &base[..len];
            assert!(same_bytes(a, a));
            assert!(!same_bytes(a, &base[..len + 1]), "lengths {len} and {}", len + 1);
            // One byte changed anywhere, in a whole word or in the tail.
            for at in 0..len {
                let mut b = a.to_vec();
                b[at] ^= 0x80;
                assert!(!same_bytes(a, &b), "length {len}, byte {at} changed");
            }
        }
    }

    #[test]
    fn conflict_violations_do_not_show_redacted_values() {
        type P = RecordPlugin<Account>;
        let base = put::<P>("k", serde_json::json!({"name": "n0", "secret": "s0"}), None, &stamp(1, "a"));
        let a = put::<P>("k", serde_json::json!({"name": "n1", "secret": "s1-hidden"}), Some(&base), &stamp(2, "a"));
        let b = put::<P>("k", serde_json::json!({"name": "n2", "secret": "s2-hidden"}), Some(&base), &stamp(2, "b"));
        let violations = P::validate("k", &merge::<P>("k", &a, &b).data, &NoHost).err().unwrap_or_default();
        assert_eq!(
            violations.iter().map(|v| (v.field.as_str(), v.code.as_str())).collect::<Vec<_>>(),
            [("/name", "conflict"), ("/secret", "conflict")]
        );
        assert!(violations[0].message.contains("n1") && violations[0].message.contains("n2"));
        assert!(!violations[1].message.contains("hidden"), "{}", violations[1].message);
    }
}
