//! Snapshots: every record (and open or settled conflict) of a store, or of some of its
//! components, as of one point of its change feed, in a [`container`](super::container) file.
//!
//! Consistency: the records, the conflicts and the node metadata are read inside one SQLite read
//! transaction on a connection of its own. In WAL mode that transaction sees the database as of
//! its first read, whatever the node commits meanwhile, and it never blocks the node's writer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::container::{self, BodyInfo, BodyWriter, Corrupt, Dec, corrupt, enc};
use super::time;
use crate::node::hlc::HlcTime;
use crate::node::store::{self, CONFLICT_COLUMNS, ConflictRow, RECORD_COLUMNS, RecordRow, row_to_conflict, row_to_record, sql_u64};
use crate::plugin::Stamp;

pub const MAGIC: &[u8; 8] = b"TNDMSNP1";
pub const EXTENSION: &str = "tsnap";
pub const FORMAT: u32 = 1;

pub(crate) const TAG_RECORD: u8 = 1;
pub(crate) const TAG_CONFLICT: u8 = 2;

/// One component in a snapshot's manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentManifest {
    pub name: String,
    /// Rows, tombstones included.
    pub records: u64,
    pub live: u64,
    /// Same algorithm as [`store::digest`]: equal exactly when the versions are equal.
    pub digest: String,
    pub clock_min: Option<HlcTime>,
    pub clock_max: Option<HlcTime>,
}

/// The plugin that served a component when the snapshot was taken.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginManifest {
    pub component: String,
    pub path: String,
    /// `sha256:HEX` of the .wasm file (absent if the file could not be read).
    pub digest: Option<String>,
    /// From the plugin's `describe` (known when the running node took the snapshot).
    pub version: Option<String>,
    pub schema_version: Option<u32>,
}

/// What a snapshot holds: the last thing in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub kind: String,
    pub node: String,
    pub node_id: String,
    /// Wall clock when the consistent read began.
    pub created_ms: u64,
    pub created: String,
    /// Components asked for; empty: the whole store.
    pub scope: Vec<String>,
    pub epoch: u64,
    /// The node's clock as persisted at the snapshot point.
    pub hlc: HlcTime,
    /// The change-feed position the snapshot is consistent at: every commit up to it, none after.
    pub last_seq: u64,
    pub store_schema: i64,
    pub engine_version: String,
    /// Oldest and newest record stamps in the snapshot.
    pub clock_min: Option<HlcTime>,
    pub clock_max: Option<HlcTime>,
    pub components: Vec<ComponentManifest>,
    pub conflicts: u64,
    pub plugins: Vec<PluginManifest>,
    pub body: BodyInfo,
}

impl Manifest {
    pub fn is_full(&self) -> bool {
        self.scope.is_empty()
    }
    pub fn records(&self) -> u64 {
        self.components.iter().map(|c| c.records).sum()
    }
    pub fn scope_label(&self) -> String {
        if self.scope.is_empty() { "all".to_owned() } else { self.scope.join("+") }
    }
}

/// One entry of a snapshot body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Record(RecordRow),
    Conflict(ConflictRow),
}

pub(crate) fn encode_record(out: &mut Vec<u8>, r: &RecordRow) {
    enc::str(out, &r.component);
    enc::str(out, &r.key);
    enc::bytes(out, &r.data);
    enc::u8(out, u8::from(r.tombstone));
    enc::u64(out, r.stamp.physical);
    enc::u32(out, r.stamp.logical);
    enc::str(out, &r.stamp.node);
    enc::str(out, &r.origin);
    enc::u64(out, r.epoch);
    enc::u64(out, r.seq);
}

pub(crate) fn decode_record<R: std::io::Read>(d: &mut Dec<R>) -> Result<RecordRow, String> {
    let component = d.str()?;
    let key = d.str()?;
    let data = d.bytes()?;
    let tombstone = match d.u8()? {
        0 => false,
        1 => true,
        n => return Err(format!("records section malformed at entry {}: tombstone flag {n}", d.entry)),
    };
    let physical = d.u64()?;
    let logical = d.u32()?;
    let node = d.str()?;
    Ok(RecordRow {
        component,
        key,
        data,
        tombstone,
        stamp: Stamp { physical, logical, node },
        origin: d.str()?,
        epoch: d.u64()?,
        seq: d.u64()?,
    })
}

fn encode_conflict(out: &mut Vec<u8>, c: &ConflictRow) {
    enc::str(out, &c.id);
    enc::str(out, &c.component);
    enc::str(out, &c.key);
    enc::str(out, &c.reason);
    enc::str(out, &c.violations);
    enc::str(out, &c.versions);
    enc::u64(out, c.detected_p);
    enc::u64(out, c.detected_seq);
    enc::u64(out, c.resolved_seq.map_or(u64::MAX, |s| s));
    match &c.resolution {
        Some(r) => {
            enc::u8(out, 1);
            enc::str(out, r);
        }
        None => enc::u8(out, 0),
    }
}

fn decode_conflict<R: std::io::Read>(d: &mut Dec<R>) -> Result<ConflictRow, String> {
    Ok(ConflictRow {
        id: d.str()?,
        component: d.str()?,
        key: d.str()?,
        reason: d.str()?,
        violations: d.str()?,
        versions: d.str()?,
        detected_p: d.u64()?,
        detected_seq: d.u64()?,
        resolved_seq: match d.u64()? {
            u64::MAX => None,
            s => Some(s),
        },
        resolution: match d.u8()? {
            0 => None,
            _ => Some(d.str()?),
        },
    })
}

/// Accumulates a component's manifest line while records stream by (in key order).
#[derive(Default)]
pub(crate) struct ComponentAcc {
    records: u64,
    live: u64,
    hash: Sha256,
    min: Option<HlcTime>,
    max: Option<HlcTime>,
}

impl ComponentAcc {
    pub(crate) fn add(&mut self, r: &RecordRow) {
        self.records += 1;
        if !r.tombstone {
            self.live += 1;
        }
        // Exactly store::digest's framing.
        self.hash.update((r.key.len() as u64).to_le_bytes());
        self.hash.update(r.key.as_bytes());
        self.hash.update((r.data.len() as u64).to_le_bytes());
        self.hash.update(&r.data);
        self.hash.update([u8::from(r.tombstone)]);
        let t = HlcTime { physical: r.stamp.physical, logical: r.stamp.logical };
        self.min = Some(self.min.map_or(t, |m| m.min(t)));
        self.max = Some(self.max.map_or(t, |m| m.max(t)));
    }
    pub(crate) fn finish(self, name: &str) -> ComponentManifest {
        ComponentManifest {
            name: name.to_owned(),
            records: self.records,
            live: self.live,
            digest: hex::encode(self.hash.finalize()),
            clock_min: self.min,
            clock_max: self.max,
        }
    }
}

/// The store's metadata as the current transaction sees it.
pub(crate) struct StoreMeta {
    pub node: String,
    pub node_id: String,
    pub epoch: u64,
    pub hlc: HlcTime,
    pub last_seq: u64,
    pub schema: i64,
}

pub(crate) fn read_meta(conn: &Connection) -> anyhow::Result<StoreMeta> {
    let mut q = conn.prepare("SELECT key, value FROM meta")?;
    let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut m = BTreeMap::new();
    for r in rows {
        let (k, v) = r?;
        m.insert(k, v);
    }
    let num = |k: &str| -> anyhow::Result<u64> {
        m.get(k).with_context(|| format!("the store has no meta.{k}"))?.parse::<u64>().with_context(|| format!("meta.{k} is not a number"))
    };
    let schema: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    Ok(StoreMeta {
        node: m.get("node_name").cloned().unwrap_or_default(),
        node_id: m.get("node_id").cloned().unwrap_or_default(),
        epoch: num("epoch")?,
        hlc: HlcTime { physical: num("hlc_p")?, logical: u32::try_from(num("hlc_l")?).unwrap_or(u32::MAX) },
        last_seq: num("last_seq")?,
        schema,
    })
}

/// Opens a read-only connection to a node's store.
pub(crate) fn open_store(store_path: &Path) -> anyhow::Result<Connection> {
    if !store_path.is_file() {
        anyhow::bail!("there is no store at {} (has the node ever run?)", store_path.display());
    }
    Ok(store::open_for_inspection(store_path)?)
}

/// What to snapshot.
#[derive(Default)]
pub struct CreateOptions<'a> {
    /// Components to include; empty: all.
    pub components: Vec<String>,
    /// zstd level (3 is a good default).
    pub level: i32,
    pub plugins: Vec<PluginManifest>,
    /// Called with (records done, records in total) as the snapshot is written.
    pub progress: Option<&'a dyn Fn(u64, u64)>,
    /// Called once the consistent read has begun (tests use it to write concurrently).
    pub on_started: Option<&'a dyn Fn()>,
}

/// The snapshots directory of a backup target.
pub fn dir(target: &Path) -> PathBuf {
    target.join("snapshots")
}

/// Takes a snapshot of the store at `store_path` into `target/snapshots/`.
pub fn create(store_path: &Path, target: &Path, opts: &CreateOptions<'_>) -> anyhow::Result<(PathBuf, Manifest)> {
    let conn = open_store(store_path)?;
    conn.execute_batch("BEGIN DEFERRED").context("starting the snapshot's read transaction")?;
    let result = create_in(&conn, target, opts);
    let _ = conn.execute_batch("ROLLBACK");
    result
}

fn create_in(conn: &Connection, target: &Path, opts: &CreateOptions<'_>) -> anyhow::Result<(PathBuf, Manifest)> {
    // The first read fixes the transaction's view of the database.
    let meta = read_meta(conn)?;
    let created_ms = time::now_ms();
    if !(store::RECORDS_SINCE..=store::SCHEMA_VERSION).contains(&meta.schema) {
        anyhow::bail!(
            "the store has schema version {}, this tandem reads versions {} to {}",
            meta.schema,
            store::RECORDS_SINCE,
            store::SCHEMA_VERSION
        );
    }
    if let Some(cb) = opts.on_started {
        cb();
    }
    let mut scope = opts.components.clone();
    scope.sort();
    scope.dedup();
    let wanted = |c: &str| scope.is_empty() || scope.iter().any(|s| s == c);
    let total: u64 = if scope.is_empty() {
        sql_u64(conn.query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))?)
    } else {
        let mut n = 0;
        for c in &scope {
            n += sql_u64(conn.query_row("SELECT COUNT(*) FROM records WHERE component = ?1", [c], |r| r.get(0))?);
        }
        n
    };
    let label = if scope.is_empty() { "all".to_owned() } else { scope.join("+") };
    let name = format!("{}-{}-{label}.{EXTENSION}", time::compact_ms(created_ms), meta.node);
    let dest = dir(target).join(&name);
    if dest.exists() {
        anyhow::bail!("{} already exists", dest.display());
    }
    let mut w = BodyWriter::create(&dest, MAGIC, if opts.level == 0 { 3 } else { opts.level })?;
    let mut comps: BTreeMap<String, ComponentAcc> = scope.iter().map(|c| (c.clone(), ComponentAcc::default())).collect();
    let mut buf = Vec::with_capacity(64 << 10);
    let mut done = 0u64;
    {
        let mut q = conn.prepare(&format!("SELECT {RECORD_COLUMNS} FROM records ORDER BY component, key"))?;
        let mut rows = q.query([])?;
        while let Some(row) = rows.next()? {
            let r = row_to_record(row)?;
            if !wanted(&r.component) {
                continue;
            }
            comps.entry(r.component.clone()).or_default().add(&r);
            buf.push(TAG_RECORD);
            encode_record(&mut buf, &r);
            done += 1;
            if buf.len() >= 64 << 10 {
                w.write_all(&buf)?;
                buf.clear();
                if let Some(p) = opts.progress {
                    p(done, total);
                }
            }
        }
    }
    let mut conflicts = 0u64;
    {
        let mut q = conn.prepare(&format!("SELECT {CONFLICT_COLUMNS} FROM conflicts ORDER BY id"))?;
        let mut rows = q.query([])?;
        while let Some(r) = rows.next()? {
            let c = row_to_conflict(r)?;
            if !wanted(&c.component) {
                continue;
            }
            buf.push(TAG_CONFLICT);
            encode_conflict(&mut buf, &c);
            conflicts += 1;
        }
    }
    w.write_all(&buf)?;
    if let Some(p) = opts.progress {
        p(done, total);
    }
    let components: Vec<ComponentManifest> = comps.into_iter().map(|(n, a)| a.finish(&n)).collect();
    let clock_min = components.iter().filter_map(|c| c.clock_min).min();
    let clock_max = components.iter().filter_map(|c| c.clock_max).max();
    let mut manifest = Manifest {
        format: FORMAT,
        kind: "snapshot".to_owned(),
        node: meta.node,
        node_id: meta.node_id,
        created_ms,
        created: time::format_ms(created_ms),
        scope,
        epoch: meta.epoch,
        hlc: meta.hlc,
        last_seq: meta.last_seq,
        store_schema: meta.schema,
        engine_version: env!("CARGO_PKG_VERSION").to_owned(),
        clock_min,
        clock_max,
        components,
        conflicts,
        plugins: opts.plugins.clone(),
        body: BodyInfo::default(),
    };
    let mut out = manifest.clone();
    w.finish(|body| {
        manifest.body = body.clone();
        out = manifest.clone();
        Ok(serde_json::to_vec_pretty(&manifest)?)
    })?;
    Ok((dest, out))
}

/// Reads a snapshot's manifest (checks the frame, not the checksums: see [`verify`]).
pub fn read_manifest(path: &Path) -> Result<Manifest, Corrupt> {
    let o = container::open(path, MAGIC, "snapshot")?;
    parse_manifest(&o)
}

fn parse_manifest(o: &container::Opened) -> Result<Manifest, Corrupt> {
    let m: Manifest = serde_json::from_slice(&o.manifest)
        .map_err(|e| corrupt(&o.path, format!("the manifest is corrupt (not the expected JSON: {e})")))?;
    if m.kind != "snapshot" {
        return Err(corrupt(&o.path, format!("the manifest says this is a {:?}, not a snapshot", m.kind)));
    }
    if m.format != FORMAT {
        return Err(corrupt(&o.path, format!("snapshot format {} is not one this tandem reads ({FORMAT})", m.format)));
    }
    Ok(m)
}

/// Reads a whole snapshot, checking everything (frame, checksums, decompression, every entry,
/// per-component counts and digests), and hands each entry to `each`.
pub fn scan(path: &Path, mut each: impl FnMut(Entry) -> anyhow::Result<()>) -> anyhow::Result<Manifest> {
    let o = container::open(path, MAGIC, "snapshot")?;
    let m = parse_manifest(&o)?;
    container::check_sums(&o, &m.body)?;
    let mut d = Dec { r: container::body_reader(&o)?, entry: 0 };
    let mut comps: BTreeMap<String, ComponentAcc> = BTreeMap::new();
    let mut conflicts = 0u64;
    let mut last: Option<(String, String)> = None;
    let bad = |p: String| -> anyhow::Error { corrupt(path, p).into() };
    while let Some(tag) = d.tag().map_err(bad)? {
        match tag {
            TAG_RECORD => {
                let r = decode_record(&mut d).map_err(bad)?;
                if r.seq > m.last_seq {
                    return Err(bad(format!("record {}/{} has seq {} past the snapshot point {}", r.component, r.key, r.seq, m.last_seq)));
                }
                let k = (r.component.clone(), r.key.clone());
                if last.as_ref().is_some_and(|l| *l >= k) {
                    return Err(bad(format!("records out of order at {}/{}", r.component, r.key)));
                }
                last = Some(k);
                comps.entry(r.component.clone()).or_default().add(&r);
                each(Entry::Record(r))?;
            }
            TAG_CONFLICT => {
                conflicts += 1;
                each(Entry::Conflict(decode_conflict(&mut d).map_err(bad)?))?;
            }
            t => return Err(bad(format!("records section malformed: unknown entry type {t} at entry {}", d.entry))),
        }
    }
    let found: BTreeMap<String, ComponentManifest> = comps.into_iter().map(|(n, a)| (n.clone(), a.finish(&n))).collect();
    for c in &m.components {
        let got = found.get(&c.name).cloned().unwrap_or_else(|| ComponentManifest { name: c.name.clone(), ..Default::default() });
        if got.records != c.records {
            return Err(bad(format!("component {}: {} records in the file, the manifest says {}", c.name, got.records, c.records)));
        }
        if c.records > 0 && got.digest != c.digest {
            return Err(bad(format!("component {}: digest {} does not match the manifest's {}", c.name, got.digest, c.digest)));
        }
    }
    if let Some(extra) = found.keys().find(|n| !m.components.iter().any(|c| &c.name == *n)) {
        return Err(bad(format!("component {extra} is in the file but not in the manifest")));
    }
    if conflicts != m.conflicts {
        return Err(bad(format!("{conflicts} conflicts in the file, the manifest says {}", m.conflicts)));
    }
    Ok(m)
}

/// Checks a snapshot completely. The error names the file and what is wrong.
pub fn verify(path: &Path) -> anyhow::Result<Manifest> {
    scan(path, |_| Ok(()))
}

/// Snapshots in a target, oldest first, with their manifests (or why they cannot be read).
pub fn list(target: &Path) -> Vec<(PathBuf, Result<Manifest, Corrupt>)> {
    let mut out: Vec<(PathBuf, Result<Manifest, Corrupt>)> =
        files(&dir(target), EXTENSION).into_iter().map(|p| (p.clone(), read_manifest(&p))).collect();
    out.sort_by_key(|(p, m)| (m.as_ref().map(|m| m.created_ms).unwrap_or(0), p.clone()));
    out
}

/// The newest readable snapshot of a target.
pub fn newest(target: &Path) -> Option<PathBuf> {
    list(target).into_iter().rev().find_map(|(p, m)| m.ok().map(|_| p))
}

/// Files with an extension in a directory (not hidden temporaries), sorted by name.
pub(crate) fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let hidden = p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !hidden && p.extension().is_some_and(|e| e == ext) && p.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![".{0,10}", "[a-z0-9-]{1,16}"]
    }

    fn record_for(component: String, key: String) -> impl Strategy<Value = RecordRow> {
        (vec(any::<u8>(), 0..200), any::<bool>(), any::<u64>(), any::<u32>(), text(), text(), any::<u64>(), 0..1000u64).prop_map(
            move |(data, tombstone, physical, logical, node, origin, epoch, seq)| RecordRow {
                component: component.clone(),
                key: key.clone(),
                data,
                tombstone,
                stamp: Stamp { physical, logical, node },
                origin,
                epoch,
                seq,
            },
        )
    }

    /// Records in the order a snapshot holds them (by component, then key), seqs up to 999.
    fn records() -> impl Strategy<Value = Vec<RecordRow>> {
        btree_map(("[a-c]", "[a-z0-9]{1,6}"), Just(()), 0..8)
            .prop_flat_map(|keys| keys.into_keys().map(|(c, k)| record_for(c, k)).collect::<Vec<_>>())
    }

    fn conflict() -> impl Strategy<Value = ConflictRow> {
        (
            (text(), text(), text(), text(), text(), text()),
            (any::<u64>(), any::<u64>(), proptest::option::of(0..u64::MAX), proptest::option::of(text())),
        )
            .prop_map(
                |((id, component, key, reason, violations, versions), (detected_p, detected_seq, resolved_seq, resolution))| ConflictRow {
                    id,
                    component,
                    key,
                    reason,
                    violations,
                    versions,
                    detected_p,
                    detected_seq,
                    resolved_seq,
                    resolution,
                },
            )
    }

    fn body_of(records: &[RecordRow], conflicts: &[ConflictRow]) -> Vec<u8> {
        let mut body = Vec::new();
        for r in records {
            body.push(TAG_RECORD);
            encode_record(&mut body, r);
        }
        for c in conflicts {
            body.push(TAG_CONFLICT);
            encode_conflict(&mut body, c);
        }
        body
    }

    /// The manifest a snapshot of these entries carries (its body line is filled when sealed).
    fn manifest_of(records: &[RecordRow], conflicts: &[ConflictRow]) -> Manifest {
        let mut comps: BTreeMap<String, ComponentAcc> = BTreeMap::new();
        for r in records {
            comps.entry(r.component.clone()).or_default().add(r);
        }
        Manifest {
            format: FORMAT,
            kind: "snapshot".into(),
            last_seq: 999,
            components: comps.into_iter().map(|(n, a)| a.finish(&n)).collect(),
            conflicts: conflicts.len() as u64,
            ..Manifest::default()
        }
    }

    /// A snapshot file around `body` whose checksums all hold: what a peer holding the
    /// cluster's credentials could offer to an inbox, however wrong its entries.
    fn sealed(dir: &Path, body: &[u8], manifest: &Manifest) -> PathBuf {
        let path = dir.join("x.tsnap");
        let mut w = BodyWriter::create(&path, MAGIC, 3).expect("create");
        w.write_all(body).expect("write");
        w.finish(|info| Ok(serde_json::to_vec(&Manifest { body: info.clone(), ..manifest.clone() })?)).expect("finish");
        path
    }

    fn read_back(path: &Path) -> anyhow::Result<Vec<Entry>> {
        let mut out = Vec::new();
        scan(path, |e| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    fn decode_all(body: &[u8]) -> Result<Vec<Entry>, String> {
        let mut d = Dec { r: body, entry: 0 };
        let mut out = Vec::new();
        while let Some(tag) = d.tag()? {
            out.push(match tag {
                TAG_RECORD => Entry::Record(decode_record(&mut d)?),
                TAG_CONFLICT => Entry::Conflict(decode_conflict(&mut d)?),
                t => return Err(format!("unknown entry type {t}")),
            });
        }
        Ok(out)
    }

    #[test]
    fn a_large_field_reads_in_full_and_one_longer_than_the_section_ends_the_entry() {
        let big = RecordRow {
            component: "c".into(),
            key: "k".into(),
            data: (0..300_000u32).map(|i| (i % 251) as u8).collect(),
            tombstone: false,
            stamp: Stamp { physical: 1, logical: 2, node: "a".into() },
            origin: "a".into(),
            epoch: 1,
            seq: 3,
        };
        assert_eq!(decode_all(&body_of(std::slice::from_ref(&big), &[])), Ok(vec![Entry::Record(big)]));
        let mut body = vec![TAG_RECORD];
        enc::u32(&mut body, 200 << 20);
        body.extend_from_slice(b"short");
        let err = decode_all(&body).expect_err("refused");
        assert!(err.contains("ends in the middle of entry 1"), "{err}");
        let mut body = vec![TAG_RECORD];
        enc::u32(&mut body, u32::MAX);
        let err = decode_all(&body).expect_err("refused");
        assert!(err.contains("claims 4294967295 bytes"), "{err}");
    }

    proptest! {
        #[test]
        fn entries_round_trip(records in records(), conflicts in vec(conflict(), 0..3)) {
            let expected: Vec<Entry> =
                records.iter().cloned().map(Entry::Record).chain(conflicts.iter().cloned().map(Entry::Conflict)).collect();
            prop_assert_eq!(decode_all(&body_of(&records, &conflicts)), Ok(expected));
        }

        #[test]
        fn arbitrary_bytes_decode_to_entries_or_an_error(body in vec(any::<u8>(), 0..600)) {
            let _ = decode_all(&body);
        }
    }

    proptest! {
        // Each case writes and syncs a file: 48 cases unless PROPTEST_CASES asks for more.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
            ..ProptestConfig::default()
        })]

        #[test]
        fn a_sealed_snapshot_reads_back_and_any_edit_of_its_entries_is_refused_or_read_in_full(
            records in records(),
            conflicts in vec(conflict(), 0..2),
            edits in vec((any::<proptest::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let manifest = manifest_of(&records, &conflicts);
            let mut body = body_of(&records, &conflicts);
            let path = sealed(dir.path(), &body, &manifest);
            let expected: Vec<Entry> =
                records.iter().cloned().map(Entry::Record).chain(conflicts.iter().cloned().map(Entry::Conflict)).collect();
            prop_assert_eq!(read_back(&path).expect("an intact snapshot reads"), expected);

            if body.is_empty() || edits.is_empty() {
                return Ok(());
            }
            for (at, v) in edits {
                let i = at.index(body.len());
                body[i] = v;
            }
            let path = sealed(dir.path(), &body, &manifest);
            // Either refused (naming the file), or every entry the manifest counts was read:
            // an edit that kept the per-component digests (e.g. of an origin or a seq).
            match read_back(&path) {
                Err(e) => prop_assert!(e.to_string().contains("x.tsnap"), "{}", e),
                Ok(entries) => prop_assert_eq!(entries.len(), records.len() + conflicts.len()),
            }
        }
    }
}
