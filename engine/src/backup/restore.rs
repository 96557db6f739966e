//! Restore: a store rebuilt from a snapshot and the archive, written to a temporary file next to
//! the destination and moved into place with one rename once it is complete and checked.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use rusqlite::{Connection, params};

use super::archive::{self, SegmentManifest};
use super::snapshot::{self, Entry, Manifest};
use super::time;
use crate::node::store::{self, Store, StoreOptions};

/// A progress callback: (done, total, phase).
pub type Progress<'a> = dyn Fn(u64, u64, &str) + 'a;

/// What to restore.
#[derive(Default)]
pub struct RestoreOptions<'a> {
    /// The backup target (snapshots/ and archive/).
    pub target: Option<PathBuf>,
    /// A snapshot file (default: the newest full snapshot at or before `to_ms`).
    pub snapshot: Option<PathBuf>,
    /// Replay the archive up to this instant (ms since the epoch); None: all of it.
    pub to_ms: Option<u64>,
    /// Skip the archive: the snapshot's state only.
    pub snapshot_only: bool,
    /// The restored store's owner (the node that will run on it).
    pub node_name: String,
    /// The store file to write.
    pub dest: PathBuf,
    /// Replace an existing store (kept beside it as `*.pre-restore-TIME`).
    pub force: bool,
    /// (done, total, phase).
    pub progress: Option<&'a Progress<'a>>,
}

/// The plan: a snapshot and the segments to replay after it.
#[derive(Clone, Debug)]
pub struct Plan {
    pub snapshot: PathBuf,
    pub manifest: Manifest,
    pub segments: Vec<(PathBuf, SegmentManifest)>,
    /// Where the archive ends (last seq, its time) along the chain used.
    pub archive_end: Option<(u64, u64)>,
}

/// Picks the snapshot and the chain of segments for a restore.
pub fn plan(target: Option<&Path>, snapshot: Option<&Path>, to_ms: Option<u64>, snapshot_only: bool) -> anyhow::Result<Plan> {
    let (snap_path, manifest) = match snapshot {
        Some(p) => (p.to_path_buf(), snapshot::read_manifest(p)?),
        None => {
            let target = target.context("give the backup target (--target DIR) or a snapshot file (--snapshot FILE)")?;
            let mut best: Option<(PathBuf, Manifest)> = None;
            let mut oldest: Option<u64> = None;
            for (p, m) in snapshot::list(target) {
                let Ok(m) = m else { continue };
                if !m.is_full() {
                    continue;
                }
                oldest = Some(oldest.map_or(m.created_ms, |o| o.min(m.created_ms)));
                if to_ms.is_some_and(|t| m.created_ms > t) {
                    continue;
                }
                if best.as_ref().is_none_or(|(_, b)| m.created_ms >= b.created_ms) {
                    best = Some((p, m));
                }
            }
            match (best, to_ms, oldest) {
                (Some(b), _, _) => b,
                (None, Some(t), Some(o)) => bail!(
                    "no full snapshot in {} at or before {}: the oldest is from {}",
                    snapshot::dir(target).display(),
                    time::format_ms(t),
                    time::format_ms(o)
                ),
                (None, _, _) => bail!("no full snapshot in {}", snapshot::dir(target).display()),
            }
        }
    };
    let mut segments = Vec::new();
    let mut archive_end = None;
    if !snapshot_only && let Some(target) = target {
        let mut at = manifest.last_seq;
        let mut at_ms = manifest.created_ms;
        let mut chain: Vec<(PathBuf, SegmentManifest)> = Vec::new();
        for (p, m) in archive::list(target) {
            let m = m?;
            if m.node_id != manifest.node_id || m.last_seq <= manifest.last_seq {
                continue;
            }
            chain.push((p, m));
        }
        for (p, m) in chain {
            if to_ms.is_some_and(|t| t < at_ms) {
                break;
            }
            if m.after_seq > at {
                // A hole in the archive: the changes between `at` and `after_seq` are missing.
                if to_ms.is_some_and(|t| t < m.from_ms) {
                    break;
                }
                bail!(
                    "the archive in {} is missing the changes after seq {at} (up to {}): {} starts there; restore with --to {} or earlier, or --snapshot-only",
                    archive::dir(target).display(),
                    m.after_seq,
                    p.display(),
                    time::format_ms(at_ms)
                );
            }
            at = m.last_seq;
            at_ms = m.to_ms;
            segments.push((p, m));
        }
        archive_end = Some((at, at_ms));
    }
    Ok(Plan { snapshot: snap_path, manifest, segments, archive_end })
}

/// What a restore did.
#[derive(Clone, Debug)]
pub struct Report {
    pub plan: Plan,
    pub dest: PathBuf,
    /// The previous store, kept.
    pub previous: Option<PathBuf>,
    pub records: u64,
    pub replayed: u64,
    pub last_seq: u64,
    /// The archive time of the last replayed entry (the snapshot's time if none).
    pub reached_ms: u64,
    /// (component, records, snapshot digest, convergence digest as `tandem status` shows it) of
    /// the restored store.
    pub components: Vec<(String, u64, String, String)>,
    /// Seqs in the replayed range that the archive does not hold: versions overwritten before
    /// the archiver read them (their successors are there), or rows purged by retention.
    pub unarchived: u64,
    /// What replication resumes from (`DATA_DIR/replication/positions.json`, rewritten).
    pub positions: PositionsNote,
}

/// How a restore set the node's replication positions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PositionsNote {
    /// (source node, seq, epoch): the restored store holds the source's feed up to `seq`, so
    /// catching up from it resumes there. None: every peer's feed is read from the start
    /// (applying is idempotent), e.g. after restoring a snapshot of some components only.
    pub resume: Option<(String, u64, u64)>,
    /// The previous positions file, kept.
    pub previous: Option<PathBuf>,
}

fn sql_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Whether a node answers at the address in DATA_DIR/api.addr.
fn running_node(data_dir: &Path) -> Option<String> {
    let addr = std::fs::read_to_string(data_dir.join("api.addr")).ok()?;
    let sock: std::net::SocketAddr = addr.trim().parse().ok()?;
    std::net::TcpStream::connect_timeout(&sock, std::time::Duration::from_millis(300)).ok().map(|_| addr.trim().to_owned())
}

/// Restores. The destination is replaced only by a complete, checked store.
pub fn restore(opts: &RestoreOptions<'_>) -> anyhow::Result<Report> {
    let plan = plan(opts.target.as_deref(), opts.snapshot.as_deref(), opts.to_ms, opts.snapshot_only)?;
    let dest = &opts.dest;
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    if dest.exists() {
        if !opts.force {
            bail!("{} exists: pass --force to replace it (the current store is kept beside it as a .pre-restore file)", dest.display());
        }
        if let Some(addr) = running_node(&dir) {
            bail!("a node is running on {} (its API answers on {addr}): stop it before restoring", dir.display());
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "store.db".to_owned());
    // Leftovers of an interrupted restore (a crash or a kill -9) are never a store: remove them.
    let stale = format!(".{name}.restoring-");
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&stale) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    // The seq counter of the store being replaced: the new one continues past it, so a peer
    // that read this node's feed before never skips a new write as one it already has.
    let floor = if dest.exists() { store_last_seq(dest).unwrap_or(0) } else { 0 };
    let tmp = dir.join(format!(".{name}.restoring-{}", std::process::id()));
    let built = build(&plan, opts, &tmp, floor);
    let Built { records, replayed, last_seq, reached_ms, components, unarchived, epoch } = match built {
        Ok(v) => v,
        Err(e) => {
            remove_db(&tmp);
            return Err(e);
        }
    };
    // Install: settle the old store's WAL into its file (so no stale WAL meets the new file),
    // keep the old file under another name, and rename the new one over it.
    let mut previous = None;
    if dest.exists() {
        {
            let c = Connection::open(dest).with_context(|| format!("cannot open {}", dest.display()))?;
            c.busy_timeout(std::time::Duration::from_secs(10))?;
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .with_context(|| format!("cannot checkpoint {} (is a node still using it?)", dest.display()))?;
        }
        for suffix in ["-wal", "-shm"] {
            let mut p = dest.as_os_str().to_owned();
            p.push(suffix);
            let p = PathBuf::from(p);
            if p.exists() && std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0) > 0 && suffix == "-wal" {
                bail!("{} still has a write-ahead log after a checkpoint: is a node using it?", dest.display());
            }
            let _ = std::fs::remove_file(&p);
        }
        let aside = dir.join(format!("{name}.pre-restore-{}", time::compact_ms(time::now_ms())));
        std::fs::hard_link(dest, &aside)
            .or_else(|_| std::fs::copy(dest, &aside).map(|_| ()))
            .with_context(|| format!("cannot keep the current store as {}", aside.display()))?;
        previous = Some(aside);
    }
    if let Err(e) = std::fs::rename(&tmp, dest) {
        remove_db(&tmp);
        bail!("cannot move the restored store into place ({} to {}): {e}", tmp.display(), dest.display());
    }
    super::container::sync_dir(&dir);
    let positions = reset_positions(&dir, &plan.manifest, &opts.node_name, last_seq, epoch)
        .with_context(|| format!("the store was restored, but its replication positions in {} could not be set", dir.display()))?;
    Ok(Report { plan, dest: dest.clone(), previous, records, replayed, last_seq, reached_ms, components, unarchived, positions })
}

fn store_last_seq(path: &Path) -> Option<u64> {
    let c = store::open_for_inspection(path).ok()?;
    let v: String = c.query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| r.get(0)).ok()?;
    v.parse().ok()
}

/// Rewrites `DATA_DIR/replication/positions.json` for the restored store: the positions saved
/// for the replaced store describe data it no longer has. A full snapshot holds the feed of the
/// node that took it up to `last_seq` (plus the archive replayed after it), so replication from
/// that node resumes there; every other peer's feed is read again from the start (applying is
/// idempotent). A snapshot of some components only resumes nothing. The old file is kept.
fn reset_positions(data_dir: &Path, m: &Manifest, us: &str, last_seq: u64, epoch: u64) -> anyhow::Result<PositionsNote> {
    let file = data_dir.join("replication").join("positions.json");
    let mut note = PositionsNote::default();
    let mut positions = serde_json::Map::new();
    if m.is_full() && m.node != us {
        // The shape of `crate::replication::Position`: every change of that node's feed up to
        // `seq`, warm ones included, is in the restored store.
        positions.insert(m.node.clone(), serde_json::json!({ "seq": last_seq, "epoch": epoch, "warm": true }));
        note.resume = Some((m.node.clone(), last_seq, epoch));
    }
    if file.exists() {
        let aside = data_dir.join("replication").join(format!("positions.json.pre-restore-{}", time::compact_ms(time::now_ms())));
        std::fs::rename(&file, &aside).with_context(|| format!("cannot keep {} as {}", file.display(), aside.display()))?;
        note.previous = Some(aside);
    } else if positions.is_empty() {
        return Ok(note);
    }
    let dir = data_dir.join("replication");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(".positions.json.restoring");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(&positions)?).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("cannot fsync {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, &file).with_context(|| format!("cannot write {}", file.display()))?;
    super::container::sync_dir(&dir);
    Ok(note)
}

fn remove_db(p: &Path) {
    let _ = std::fs::remove_file(p);
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut q = p.as_os_str().to_owned();
        q.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(q));
    }
}

struct Built {
    epoch: u64,
    records: u64,
    replayed: u64,
    last_seq: u64,
    reached_ms: u64,
    components: Vec<(String, u64, String, String)>,
    unarchived: u64,
}

fn build(plan: &Plan, opts: &RestoreOptions<'_>, tmp: &Path, seq_floor: u64) -> anyhow::Result<Built> {
    let m = &plan.manifest;
    // The versions this build reads differ in indexes only: their records restore as they are.
    if !(store::RECORDS_SINCE..=store::SCHEMA_VERSION).contains(&m.store_schema) {
        bail!(
            "{} holds a store of schema version {}; this tandem restores versions {} to {}",
            plan.snapshot.display(),
            m.store_schema,
            store::RECORDS_SINCE,
            store::SCHEMA_VERSION
        );
    }
    // The schema and a fresh identity for the node that will own the store.
    drop(Store::open(tmp, &opts.node_name, &StoreOptions::default(), time::now_ms())?);
    let mut conn = Connection::open(tmp).with_context(|| format!("cannot open {}", tmp.display()))?;
    // The file is private until renamed, and thrown away on any failure: no journal while
    // filling it (WAL would write every page twice), fsync once at the end.
    conn.query_row("PRAGMA journal_mode=OFF", [], |_| Ok(()))?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.pragma_update(None, "cache_size", -65_536i64)?;
    let tx = conn.transaction()?;
    let total = m.records();
    let mut records = 0u64;
    let (mut max_p, mut max_l) = (m.hlc.physical, m.hlc.logical);
    let mut epoch = m.epoch;
    {
        let mut put = tx.prepare(
            "INSERT OR REPLACE INTO records (component, key, data, tombstone, stamp_p, stamp_l, stamp_n, origin, epoch, seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        let mut put_conflict = tx.prepare(
            "INSERT OR REPLACE INTO conflicts (id, component, key, reason, violations, versions, detected_p, detected_seq, resolved_seq, resolution)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        let mut insert = |r: &store::RecordRow| -> anyhow::Result<()> {
            put.execute(params![
                r.component,
                r.key,
                r.data,
                i64::from(r.tombstone),
                sql_i64(r.stamp.physical),
                i64::from(r.stamp.logical),
                r.stamp.node,
                r.origin,
                sql_i64(r.epoch),
                sql_i64(r.seq)
            ])?;
            if (r.stamp.physical, r.stamp.logical) > (max_p, max_l) {
                (max_p, max_l) = (r.stamp.physical, r.stamp.logical);
            }
            epoch = epoch.max(r.epoch);
            Ok(())
        };
        snapshot::scan(&plan.snapshot, |e| {
            match e {
                Entry::Record(r) => {
                    insert(&r)?;
                    records += 1;
                    if records.is_multiple_of(4096)
                        && let Some(p) = opts.progress
                    {
                        p(records, total, "snapshot");
                    }
                }
                Entry::Conflict(c) => {
                    put_conflict.execute(params![
                        c.id,
                        c.component,
                        c.key,
                        c.reason,
                        c.violations,
                        c.versions,
                        sql_i64(c.detected_p),
                        sql_i64(c.detected_seq),
                        c.resolved_seq.map(sql_i64),
                        c.resolution
                    ])?;
                }
            }
            Ok(())
        })?;
        if let Some(p) = opts.progress {
            p(records, total, "snapshot");
        }
        let mut replayed = 0u64;
        let mut unarchived = 0u64;
        let mut last_seq = m.last_seq;
        let mut reached_ms = m.created_ms;
        let seg_total: u64 = plan.segments.iter().map(|(_, s)| s.entries).sum();
        'segments: for (path, _) in &plan.segments {
            let mut stop = false;
            archive::scan(path, |t, r| {
                if stop || r.seq <= last_seq {
                    return Ok(());
                }
                if opts.to_ms.is_some_and(|to| t > to) {
                    stop = true;
                    return Ok(());
                }
                insert(&r)?;
                unarchived += r.seq - last_seq - 1;
                last_seq = r.seq;
                reached_ms = reached_ms.max(t);
                replayed += 1;
                if replayed.is_multiple_of(4096)
                    && let Some(p) = opts.progress
                {
                    p(replayed, seg_total, "archive");
                }
                Ok(())
            })?;
            if stop {
                break 'segments;
            }
        }
        if let Some(p) = opts.progress
            && !plan.segments.is_empty()
        {
            p(replayed, seg_total, "archive");
        }
        drop(put);
        drop(put_conflict);
        for (k, v) in [
            ("epoch", epoch.to_string()),
            ("hlc_p", max_p.to_string()),
            ("hlc_l", max_l.to_string()),
            ("last_seq", last_seq.max(seq_floor).to_string()),
        ] {
            tx.execute("UPDATE meta SET value = ?2 WHERE key = ?1", params![k, v])?;
        }
        tx.commit()?;
        // Back to the node's journal mode (WAL is persistent in the file).
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!("cannot put the restored store in WAL mode (it stays in {mode} mode)");
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let check = store::integrity_check(&conn)?;
        if check != "ok" {
            bail!("the restored store fails SQLite's integrity check: {check}");
        }
        let mut components = Vec::new();
        // The records were written here, not by the store's writer: the digests it keeps are
        // those of every record.
        let status = store::set_digests(&conn)?;
        {
            let tx = conn.transaction()?;
            store::save_digests(&tx, &status)?;
            tx.commit()?;
        }
        for c in store::components(&conn)? {
            let (n, _) = store::counts(&conn, &c)?;
            let live = status.get(&c).copied().unwrap_or_default().hex();
            components.push((c.clone(), n, store::digest(&conn, &c)?, live));
        }
        if replayed == 0 {
            // Nothing replayed: the store must be exactly the snapshot.
            for c in &m.components {
                let got = components.iter().find(|(n, _, _, _)| n == &c.name);
                let ok = match got {
                    Some((_, n, d, _)) => *n == c.records && (c.records == 0 || *d == c.digest),
                    None => c.records == 0,
                };
                if !ok {
                    bail!("the restored component {} does not match {}'s manifest", c.name, plan.snapshot.display());
                }
            }
        }
        drop(conn);
        let f = std::fs::File::open(tmp)?;
        f.sync_all()?;
        Ok(Built { epoch, records, replayed, last_seq, reached_ms, components, unarchived })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::Position;

    fn read(dir: &Path) -> std::collections::BTreeMap<String, Position> {
        serde_json::from_slice(&std::fs::read(dir.join("replication").join("positions.json")).expect("positions")).expect("JSON")
    }

    #[test]
    fn positions_resume_the_source_after_a_full_snapshot_and_nothing_after_a_partial_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let full = Manifest { node: "pbx1".into(), ..Default::default() };
        // No earlier file, a snapshot of this very node: nothing to write.
        let note = reset_positions(dir.path(), &Manifest { node: "pbx2".into(), ..Default::default() }, "pbx2", 9, 1).expect("reset");
        assert_eq!(note, PositionsNote::default());
        assert!(!dir.path().join("replication").join("positions.json").exists());
        // Stale positions of an older store: replaced, kept aside.
        std::fs::create_dir_all(dir.path().join("replication")).expect("mkdir");
        std::fs::write(
            dir.path().join("replication").join("positions.json"),
            r#"{"pbx1": {"seq": 999, "epoch": 1}, "pbx3": {"seq": 5, "epoch": 0}}"#,
        )
        .expect("write");
        let note = reset_positions(dir.path(), &full, "pbx2", 42, 3).expect("reset");
        assert_eq!(note.resume, Some(("pbx1".to_owned(), 42, 3)));
        let kept = note.previous.expect("the old file is kept");
        assert!(std::fs::read_to_string(&kept).expect("kept").contains("999"));
        let p = read(dir.path());
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p["pbx1"].seq, p["pbx1"].epoch), (42, 3));
        // Some components only: every feed is read again.
        let partial = Manifest { node: "pbx1".into(), scope: vec!["trunks".into()], ..Default::default() };
        let note = reset_positions(dir.path(), &partial, "pbx2", 50, 3).expect("reset");
        assert_eq!(note.resume, None);
        assert!(read(dir.path()).is_empty());
    }
}
