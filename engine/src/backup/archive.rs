//! The log archive: segments of the change feed, written continuously between snapshots, so that
//! a restore can replay the store to any moment of the retained window.
//!
//! The store keeps only each key's latest version, ordered by `seq`; the [`Archiver`] tails it by
//! seq (woken by each commit when it runs inside the node) and writes what it read into segment
//! files: each segment holds the entries with `after_seq < seq <= last_seq`, in seq order, each
//! with its *archive time*: the running maximum of the entries' stamps (hybrid-logical-clock
//! milliseconds), which is non-decreasing along the feed. `restore --to T` replays the prefix of
//! the feed whose archive time is at most T.
//!
//! Inside a running node the archiver takes every committed version from the node's commit tap
//! ([`crate::node::tap`]), so a version overwritten a moment later is archived too. It reads the
//! store only for what was committed before it subscribed (at start, or after it fell behind the
//! tap's bound and the tap closed): a version overwritten before it read the store is then not
//! in the archive (its successor is), and the segment's manifest counts such holes (`skipped`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::container::{self, BodyInfo, BodyWriter, Corrupt, Dec, corrupt};
use super::snapshot::{self, TAG_RECORD, decode_record, encode_record};
use super::time;
use crate::node::store::RecordRow;
use crate::node::store::{RECORD_COLUMNS, row_to_record};

pub const MAGIC: &[u8; 8] = b"TNDMSEG1";
pub const EXTENSION: &str = "tseg";
pub const FORMAT: u32 = 1;

/// A segment's manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentManifest {
    pub format: u32,
    pub kind: String,
    pub node: String,
    pub node_id: String,
    /// Entries have `seq > after_seq`.
    pub after_seq: u64,
    pub last_seq: u64,
    /// Archive time before the first entry and after the last one (ms since the epoch).
    pub from_ms: u64,
    pub to_ms: u64,
    pub entries: u64,
    /// Seqs in (after_seq, last_seq] not in the segment (overwritten before archiving, or purged).
    pub skipped: u64,
    pub created_ms: u64,
    pub body: BodyInfo,
}

/// The archive directory of a backup target.
pub fn dir(target: &Path) -> PathBuf {
    target.join("archive")
}

/// Reads a segment's manifest (frame only).
pub fn read_manifest(path: &Path) -> Result<SegmentManifest, Corrupt> {
    let o = container::open(path, MAGIC, "archive segment")?;
    parse_manifest(&o)
}

fn parse_manifest(o: &container::Opened) -> Result<SegmentManifest, Corrupt> {
    let m: SegmentManifest = serde_json::from_slice(&o.manifest)
        .map_err(|e| corrupt(&o.path, format!("the manifest is corrupt (not the expected JSON: {e})")))?;
    if m.kind != "segment" {
        return Err(corrupt(&o.path, format!("the manifest says this is a {:?}, not an archive segment", m.kind)));
    }
    if m.format != FORMAT {
        return Err(corrupt(&o.path, format!("segment format {} is not one this tandem reads ({FORMAT})", m.format)));
    }
    Ok(m)
}

/// Reads a whole segment, checking everything, handing each (archive time, record) to `each`.
pub fn scan(path: &Path, mut each: impl FnMut(u64, RecordRow) -> anyhow::Result<()>) -> anyhow::Result<SegmentManifest> {
    let o = container::open(path, MAGIC, "archive segment")?;
    let m = parse_manifest(&o)?;
    container::check_sums(&o, &m.body)?;
    let mut d = Dec { r: container::body_reader(&o)?, entry: 0 };
    let bad = |p: String| -> anyhow::Error { corrupt(path, p).into() };
    let (mut prev_seq, mut prev_t, mut n) = (m.after_seq, m.from_ms, 0u64);
    while let Some(tag) = d.tag().map_err(bad)? {
        if tag != TAG_RECORD {
            return Err(bad(format!("records section malformed: unknown entry type {tag} at entry {}", d.entry)));
        }
        let t = d.u64().map_err(bad)?;
        let r = decode_record(&mut d).map_err(bad)?;
        if r.seq <= prev_seq || r.seq > m.last_seq {
            return Err(bad(format!("entry {} has seq {}, outside ({prev_seq}, {}]", d.entry, r.seq, m.last_seq)));
        }
        if t < prev_t {
            return Err(bad(format!("entry {} goes back in time", d.entry)));
        }
        prev_seq = r.seq;
        prev_t = t;
        n += 1;
        each(t, r)?;
    }
    if n != m.entries {
        return Err(bad(format!("{n} entries in the file, the manifest says {}", m.entries)));
    }
    if prev_t != m.to_ms && n > 0 {
        return Err(bad(format!("last entry's time {prev_t} differs from the manifest's {}", m.to_ms)));
    }
    Ok(m)
}

/// Checks a segment completely.
pub fn verify(path: &Path) -> anyhow::Result<SegmentManifest> {
    scan(path, |_, _| Ok(()))
}

/// Segments in a target, in seq order, with their manifests (or why they cannot be read).
pub fn list(target: &Path) -> Vec<(PathBuf, Result<SegmentManifest, Corrupt>)> {
    let mut out: Vec<(PathBuf, Result<SegmentManifest, Corrupt>)> =
        snapshot::files(&dir(target), EXTENSION).into_iter().map(|p| (p.clone(), read_manifest(&p))).collect();
    out.sort_by_key(|(p, m)| (m.as_ref().map(|m| m.after_seq).unwrap_or(0), p.clone()));
    out
}

/// When segments are cut.
#[derive(Clone, Debug)]
pub struct ArchiverOptions {
    /// A segment is written once this much (uncompressed) is pending.
    pub segment_bytes: usize,
    /// ... or once the oldest pending entry is this old.
    pub segment_age: Duration,
}

impl Default for ArchiverOptions {
    fn default() -> Self {
        ArchiverOptions { segment_bytes: 8 << 20, segment_age: Duration::from_secs(60) }
    }
}

/// Tails a store's change feed into segments.
pub struct Archiver {
    store_path: PathBuf,
    dir: PathBuf,
    opts: ArchiverOptions,
    conn: Option<Connection>,
    node: String,
    node_id: String,
    /// Everything up to here is in a segment file.
    flushed_seq: u64,
    flushed_ms: u64,
    /// Everything up to here has been read.
    cursor: u64,
    time: u64,
    pending: Vec<(u64, RecordRow)>,
    pending_bytes: usize,
    pending_since: Option<Instant>,
}

impl Archiver {
    /// Opens the archiver of the store at `store_path`, writing to `target/archive`. It resumes
    /// after the newest segment of this store (by node id); with none, after the newest full
    /// snapshot of this store; with neither, from the start of the feed.
    pub fn open(store_path: &Path, target: &Path, opts: ArchiverOptions) -> anyhow::Result<Archiver> {
        let conn = snapshot::open_store(store_path)?;
        let meta = snapshot::read_meta(&conn)?;
        let mut start = (0u64, 0u64);
        let mut found_segment = false;
        for (p, m) in list(target) {
            match m {
                Ok(m) if m.node_id == meta.node_id && m.last_seq >= start.0 => {
                    start = (m.last_seq, m.to_ms);
                    found_segment = true;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(file = %p.display(), error = %e, "archive: ignoring an unreadable segment"),
            }
        }
        if !found_segment {
            for (_, m) in snapshot::list(target) {
                if let Ok(m) = m
                    && m.node_id == meta.node_id
                    && m.is_full()
                    && m.last_seq >= start.0
                {
                    start = (m.last_seq, m.created_ms);
                }
            }
        }
        if start.0 > meta.last_seq {
            anyhow::bail!(
                "the archive in {} already reaches seq {} but the store is at {}: is this target another store's?",
                target.display(),
                start.0,
                meta.last_seq
            );
        }
        Ok(Archiver {
            store_path: store_path.to_path_buf(),
            dir: dir(target),
            opts,
            conn: Some(conn),
            node: meta.node,
            node_id: meta.node_id,
            flushed_seq: start.0,
            flushed_ms: start.1,
            cursor: start.0,
            time: start.1,
            pending: Vec::new(),
            pending_bytes: 0,
            pending_since: None,
        })
    }

    /// The feed position everything up to which is in segment files.
    pub fn flushed_seq(&self) -> u64 {
        self.flushed_seq
    }

    /// Everything up to here has been read (from the store or the tap).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Entries read and not yet in a segment file.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Reads what was committed since the last poll; writes a segment if one is due. Returns the
    /// number of entries read.
    pub fn poll(&mut self) -> anyhow::Result<usize> {
        self.poll_until(u64::MAX)
    }

    /// Reads from the store what was committed after the cursor, up to seq `up_to`; writes a
    /// segment if one is due. Returns the number of entries read.
    pub fn poll_until(&mut self, up_to: u64) -> anyhow::Result<usize> {
        if self.conn.is_none() {
            self.conn = Some(snapshot::open_store(&self.store_path)?);
        }
        let conn = self.conn.take().context("no store connection")?;
        let read = self.read_store(&conn, up_to);
        self.conn = Some(conn);
        let n = read?;
        if self.due() {
            self.flush()?;
        }
        Ok(n)
    }

    fn read_store(&mut self, conn: &Connection, up_to: u64) -> anyhow::Result<usize> {
        let mut q =
            conn.prepare_cached(&format!("SELECT {RECORD_COLUMNS} FROM records WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT 10000"))?;
        let mut n = 0;
        let limit = i64::try_from(up_to).unwrap_or(i64::MAX);
        loop {
            let rows: Vec<RecordRow> =
                q.query_map([i64::try_from(self.cursor).unwrap_or(i64::MAX), limit], row_to_record)?.collect::<Result<_, _>>()?;
            if rows.is_empty() {
                return Ok(n);
            }
            for r in rows {
                self.add(r);
                n += 1;
            }
        }
    }

    /// Takes committed versions handed over by the node's commit tap, in commit order. Versions
    /// at or before the cursor (already read from the store) are ignored. Returns the number of
    /// seqs between the cursor and the first new version that neither the store read nor the
    /// tap brought (0 when the tap is contiguous with what was read: the normal case).
    pub fn push(&mut self, rows: Vec<RecordRow>) -> u64 {
        let mut missing = 0;
        for r in rows {
            if r.seq <= self.cursor {
                continue;
            }
            missing += r.seq - self.cursor - 1;
            self.add(r);
        }
        missing
    }

    fn add(&mut self, r: RecordRow) {
        self.time = self.time.max(r.stamp.physical);
        self.cursor = r.seq;
        self.pending_bytes += r.data.len() + r.key.len() + r.component.len() + 64;
        self.pending.push((self.time, r));
        if self.pending_since.is_none() {
            self.pending_since = Some(Instant::now());
        }
    }

    /// Whether the pending entries should be written now.
    pub fn due(&self) -> bool {
        self.pending_bytes >= self.opts.segment_bytes || self.pending_since.is_some_and(|t| t.elapsed() >= self.opts.segment_age)
    }

    /// Writes what is pending as a segment (nothing if nothing is pending).
    pub fn flush(&mut self) -> anyhow::Result<Option<PathBuf>> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let name = format!("seg-{:020}-{:020}.{EXTENSION}", self.flushed_seq, self.cursor);
        let dest = self.dir.join(name);
        let mut w = BodyWriter::create(&dest, MAGIC, 3)?;
        let mut buf = Vec::with_capacity(64 << 10);
        for (t, r) in &self.pending {
            buf.push(TAG_RECORD);
            buf.extend_from_slice(&t.to_le_bytes());
            encode_record(&mut buf, r);
            if buf.len() >= 64 << 10 {
                w.write_all(&buf)?;
                buf.clear();
            }
        }
        w.write_all(&buf)?;
        let entries = self.pending.len() as u64;
        let mut m = SegmentManifest {
            format: FORMAT,
            kind: "segment".to_owned(),
            node: self.node.clone(),
            node_id: self.node_id.clone(),
            after_seq: self.flushed_seq,
            last_seq: self.cursor,
            from_ms: self.flushed_ms,
            to_ms: self.time,
            entries,
            skipped: (self.cursor - self.flushed_seq).saturating_sub(entries),
            created_ms: time::now_ms(),
            body: BodyInfo::default(),
        };
        w.finish(|body| {
            m.body = body.clone();
            Ok(serde_json::to_vec_pretty(&m)?)
        })?;
        self.flushed_seq = self.cursor;
        self.flushed_ms = self.time;
        self.pending.clear();
        self.pending_bytes = 0;
        self.pending_since = None;
        Ok(Some(dest))
    }
}
