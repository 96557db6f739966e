//! The node's SQLite store.
//!
//! One database file in WAL mode with `synchronous=FULL`: a commit returns only once its WAL
//! frames are fsynced, so an acknowledged write survives a crash or power loss.
//!
//! Tables:
//! - `records`: one row per (component, key): the plugin's stored bytes, the tombstone flag, the
//!   stamp, the origin node, the epoch it was written in, and `seq`. Every write gives the row a
//!   new, strictly increasing `seq` (never reused, even after rows are purged: the counter lives in
//!   `meta`). The merge is state-based, so a peer needs only each key's latest version: the
//!   records table read in `seq` order *is* the change feed ([`Store::changes`]).
//! - `meta`: node identity (name, id), epoch, the clock's last persisted reading, `last_seq`.
//! - `conflicts`: versions that could not be merged into a valid record, kept for an operator.
//! - `idempotency`: the outcome of writes sent with an idempotency key.
//!
//! Only one connection writes (the node's writer thread owns the [`Store`]); readers use
//! [`Readers`], a small pool of connections that see committed state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::config::Synchronous;
use super::digest::SetDigest;
use super::hlc::HlcTime;
use crate::plugin::{Stamp, Stored};

/// The newest schema this build reads and writes.
pub const SCHEMA_VERSION: i64 = 2;

/// The oldest schema whose `records` rows this build reads as its own (snapshots of stores from
/// `RECORDS_SINCE` to [`SCHEMA_VERSION`] restore): the versions between differ in indexes only.
pub const RECORDS_SINCE: i64 = 1;

const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE records (
        component TEXT NOT NULL,
        key TEXT NOT NULL,
        data BLOB NOT NULL,
        tombstone INTEGER NOT NULL,
        stamp_p INTEGER NOT NULL,
        stamp_l INTEGER NOT NULL,
        stamp_n TEXT NOT NULL,
        origin TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (component, key)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX records_by_seq ON records(seq);
    CREATE INDEX records_by_age ON records(component, stamp_p);
    CREATE TABLE conflicts (
        id TEXT PRIMARY KEY,
        component TEXT NOT NULL,
        key TEXT NOT NULL,
        reason TEXT NOT NULL,
        violations TEXT NOT NULL,
        versions TEXT NOT NULL,
        detected_p INTEGER NOT NULL,
        detected_seq INTEGER NOT NULL,
        resolved_seq INTEGER,
        resolution TEXT
    ) WITHOUT ROWID;
    CREATE INDEX conflicts_by_key ON conflicts(component, key, resolved_seq);
    CREATE TABLE idempotency (
        component TEXT NOT NULL,
        idem_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        key TEXT NOT NULL,
        seq INTEGER NOT NULL,
        stamp_p INTEGER NOT NULL,
        stamp_l INTEGER NOT NULL,
        stamp_n TEXT NOT NULL,
        tombstone INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (component, idem_key)
    ) WITHOUT ROWID;
    CREATE INDEX idempotency_by_age ON idempotency(created_ms);
    CREATE TABLE probe (id INTEGER PRIMARY KEY, filler BLOB NOT NULL);
    "#,
    // 2: every write paid an entry in an index by age that only retention reads: retention has
    // an index per component that has retention (`Store::purge`), and the tombstone purge an
    // index of tombstones only.
    r#"
    DROP INDEX records_by_age;
    CREATE INDEX records_tombstones ON records(stamp_p) WHERE tombstone = 1;
    "#,
];

/// What went wrong in the store.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The disk (or the configured size cap) is full. Nothing of the transaction was applied.
    #[error("the disk is full ({0}); the node is read-only until space is freed")]
    DiskFull(String),
    /// An I/O error: the outcome of the transaction cannot be trusted; the node needs a restart.
    #[error("I/O error in the store ({0}); restart the node once the disk is healthy")]
    Io(String),
    /// The data directory belongs to another node.
    #[error("the store {path} belongs to node {found:?}, not {expected:?}: point node.data_dir at this node's own directory")]
    WrongNode { path: PathBuf, found: String, expected: String },
    /// Written by a newer build.
    #[error("the store {path} has schema version {found}; this tandem reads up to {SCHEMA_VERSION}: upgrade tandem")]
    TooNew { path: PathBuf, found: i64 },
    /// A request the store refuses (e.g. an epoch going back).
    #[error("{0}")]
    Refused(String),
    /// Any other SQLite error.
    #[error("store error: {0}")]
    Sqlite(String),
}

impl StoreError {
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::DiskFull(_) => "disk_full",
            StoreError::Io(_) => "store_io_error",
            StoreError::WrongNode { .. } => "store_wrong_node",
            StoreError::TooNew { .. } => "store_too_new",
            StoreError::Refused(_) => "refused",
            StoreError::Sqlite(_) => "store_error",
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => StoreError::DiskFull(e.to_string()),
            Some(ErrorCode::SystemIoFailure) => {
                // ENOSPC while extending a file can surface as an I/O error.
                let text = e.to_string();
                if text.contains("No space left") || text.contains("ENOSPC") { StoreError::DiskFull(text) } else { StoreError::Io(text) }
            }
            _ => StoreError::Sqlite(e.to_string()),
        }
    }
}

/// Opening options.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub synchronous: Synchronous,
    /// Cap on the database size in bytes (0: none).
    pub max_size_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { synchronous: Synchronous::Full, max_size_bytes: 0 }
    }
}

/// The node's persistent identity and clocks, as found at open.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    pub node_name: String,
    /// Random id made when the store was created: tells two incarnations of a name apart.
    pub node_id: String,
    pub created_ms: u64,
    pub epoch: u64,
    pub hlc: HlcTime,
    pub last_seq: u64,
}

/// One row of `records`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordRow {
    pub component: String,
    pub key: String,
    pub data: Vec<u8>,
    pub tombstone: bool,
    pub stamp: Stamp,
    pub origin: String,
    pub epoch: u64,
    pub seq: u64,
}

impl RecordRow {
    pub fn stored(&self) -> Stored {
        Stored { data: self.data.clone(), tombstone: self.tombstone }
    }
}

/// An idempotency key to remember with a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdemKey {
    pub key: String,
    pub fingerprint: String,
}

/// A remembered outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdemRow {
    pub component: String,
    pub idem_key: String,
    pub fingerprint: String,
    pub key: String,
    pub seq: u64,
    pub stamp: Stamp,
    pub tombstone: bool,
    pub created_ms: u64,
}

/// A conflict to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictRow {
    pub id: String,
    pub component: String,
    pub key: String,
    pub reason: String,
    /// JSON array of violations.
    pub violations: String,
    /// JSON array of the versions involved.
    pub versions: String,
    pub detected_p: u64,
    pub detected_seq: u64,
    pub resolved_seq: Option<u64>,
    pub resolution: Option<String>,
}

/// One record write inside a commit.
#[derive(Clone, Debug)]
pub struct WriteRow<'a> {
    pub component: &'a str,
    pub key: &'a str,
    pub data: &'a [u8],
    pub tombstone: bool,
    pub stamp: &'a Stamp,
    pub origin: &'a str,
    pub idem: Option<&'a IdemKey>,
    /// A local write: marks the key's open conflicts resolved by this write.
    pub resolves_conflicts: bool,
    /// A conflict detected by this write (a merge that does not validate).
    pub conflict: Option<&'a ConflictRow>,
    /// Only `conflict` is recorded: the record stays as it is (a replicated version the plugin
    /// refused to merge). Takes no seq: its place in [`CommitOutcome::seqs`] holds the last one.
    pub keep: bool,
}

/// What a commit did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The seq given to each write, in order.
    pub seqs: Vec<u64>,
    /// Conflicts the commit marked resolved.
    pub resolved: u64,
    /// Conflicts the commit recorded (new ids only).
    pub recorded: u64,
}

fn sql_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn sql_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn configure(conn: &Connection, opts: &StoreOptions) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Sqlite(format!("cannot switch the store to WAL mode (it stays in {mode} mode)")));
    }
    let sync = match opts.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Extra => "EXTRA",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // Checkpoints run automatically every 1000 pages; keep the WAL from growing without bound.
    conn.pragma_update(None, "journal_size_limit", 64i64 << 20)?;
    Ok(())
}

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    Connection::open_with_flags(path, flags).map_err(|e| StoreError::Sqlite(format!("cannot open {}: {e}", path.display())))
}

/// A `records` row read as `SELECT {RECORD_COLUMNS}`.
pub(crate) fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecordRow> {
    Ok(RecordRow {
        component: r.get(0)?,
        key: r.get(1)?,
        data: r.get(2)?,
        tombstone: r.get::<_, i64>(3)? != 0,
        stamp: Stamp { physical: sql_u64(r.get(4)?), logical: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(0), node: r.get(6)? },
        origin: r.get(7)?,
        epoch: sql_u64(r.get(8)?),
        seq: sql_u64(r.get(9)?),
    })
}

pub(crate) const RECORD_COLUMNS: &str = "component, key, data, tombstone, stamp_p, stamp_l, stamp_n, origin, epoch, seq";

/// The writing side of the store. Owned by one thread.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    meta: Meta,
    page_size: u64,
    /// Each component's convergence digest as of the last commit (see [`super::digest`]):
    /// computed from every record at open, then moved by each write and purge.
    digests: BTreeMap<String, SetDigest>,
    /// Conflicts not yet resolved, as of the last commit: while there are none, a local write
    /// has no conflict to mark resolved and skips that statement.
    open_conflicts: u64,
    /// Components whose index by age ([`AgeSql`]) this store has made sure of.
    aged: std::collections::BTreeSet<String>,
}

impl Store {
    /// Opens (creating if needed) the store of node `node_name`.
    pub fn open(path: &Path, node_name: &str, opts: &StoreOptions, now_ms: u64) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut conn = open_conn(path)?;
        configure(&conn, opts)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew { path: path.to_path_buf(), found: version });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i64::try_from(i + 1).unwrap_or(i64::MAX))?;
            tx.commit()?;
        }
        let (meta, kept) = {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // The digests `meta` keeps, read with the rest of `meta`.
            let kept = kept_digests(&tx)?;
            let get = |k: &str| -> Result<Option<String>, StoreError> {
                Ok(tx.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get::<_, String>(0)).optional()?)
            };
            let meta = match get("node_name")? {
                None => {
                    let id = hex::encode(rand::random::<[u8; 16]>());
                    let meta = Meta {
                        node_name: node_name.to_owned(),
                        node_id: id,
                        created_ms: now_ms,
                        epoch: 0,
                        hlc: HlcTime::default(),
                        last_seq: 0,
                    };
                    let mut put = tx.prepare("INSERT INTO meta (key, value) VALUES (?1, ?2)")?;
                    for (k, v) in [
                        ("node_name", meta.node_name.clone()),
                        ("node_id", meta.node_id.clone()),
                        ("created_ms", meta.created_ms.to_string()),
                        ("epoch", "0".to_owned()),
                        ("hlc_p", "0".to_owned()),
                        ("hlc_l", "0".to_owned()),
                        ("last_seq", "0".to_owned()),
                    ] {
                        put.execute(params![k, v])?;
                    }
                    meta
                }
                Some(found) if found != node_name => {
                    return Err(StoreError::WrongNode { path: path.to_path_buf(), found, expected: node_name.to_owned() });
                }
                Some(found) => {
                    let num = |k: &str| -> Result<u64, StoreError> {
                        get(k)?
                            .ok_or_else(|| StoreError::Sqlite(format!("meta.{k} is missing")))?
                            .parse::<u64>()
                            .map_err(|e| StoreError::Sqlite(format!("meta.{k} is not a number: {e}")))
                    };
                    let mut meta = Meta {
                        node_name: found,
                        node_id: get("node_id")?.unwrap_or_default(),
                        created_ms: num("created_ms")?,
                        epoch: num("epoch")?,
                        hlc: HlcTime { physical: num("hlc_p")?, logical: u32::try_from(num("hlc_l")?).unwrap_or(u32::MAX) },
                        last_seq: num("last_seq")?,
                    };
                    // Belt and braces: the clock and the sequence resume above anything on disk
                    // (the clock from every record only where the digests are read from every
                    // record too: a store written by this build's writer keeps both in `meta`).
                    let max_seq: Option<i64> = tx.query_row("SELECT MAX(seq) FROM records", [], |r| r.get(0))?;
                    meta.last_seq = meta.last_seq.max(max_seq.map_or(0, sql_u64));
                    let max_p: Option<i64> =
                        if kept.is_some() { None } else { tx.query_row("SELECT MAX(stamp_p) FROM records", [], |r| r.get(0))? };
                    if let Some(p) = max_p.map(sql_u64)
                        && p > meta.hlc.physical
                    {
                        let l: i64 = tx.query_row("SELECT MAX(stamp_l) FROM records WHERE stamp_p = ?1", [sql_i64(p)], |r| {
                            r.get::<_, Option<i64>>(0).map(|v| v.unwrap_or(0))
                        })?;
                        meta.hlc = HlcTime { physical: p, logical: u32::try_from(l).unwrap_or(u32::MAX) };
                    }
                    meta
                }
            };
            tx.commit()?;
            (meta, kept)
        };
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let digests = match kept {
            Some(kept) => kept,
            None => {
                // A store from before the digests were kept, or a restored one: read every record
                // once, and keep the result.
                let all = set_digests(&conn)?;
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                save_digests(&tx, &all)?;
                tx.commit()?;
                all
            }
        };
        let open_conflicts = open_conflicts(&conn)?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            meta,
            page_size: sql_u64(page_size).max(512),
            digests,
            open_conflicts,
            aged: Default::default(),
        };
        store.set_max_size(opts.max_size_bytes)?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Identity and clocks as of the last commit.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// A component's convergence digest as of the last commit (zeros for a component without
    /// records).
    pub fn digest(&self, component: &str) -> SetDigest {
        self.digests.get(component).copied().unwrap_or_default()
    }

    /// Corrects a component's digest kept from `kept` to `actual` (what [`scrub_digests`] found):
    /// the digest moves by the difference, which keeps the writes made since the scrub read the
    /// store.
    pub fn correct_digest(&mut self, component: &str, kept: SetDigest, actual: SetDigest) -> Result<(), StoreError> {
        let mut d = self.digest(component);
        d.shift(kept, actual);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        put_digest(&tx, component, &d)?;
        tx.commit()?;
        self.digests.insert(component.to_owned(), d);
        Ok(())
    }

    /// Conflicts not yet resolved, as of the last commit.
    pub fn conflicts_open(&self) -> u64 {
        self.open_conflicts
    }

    /// Caps the database size (0: no cap). Past the cap, writes fail as on a full disk.
    pub fn set_max_size(&mut self, bytes: u64) -> Result<(), StoreError> {
        let pages = if bytes == 0 { 4_294_967_294 } else { (bytes / self.page_size).max(1) };
        self.conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
        Ok(())
    }

    /// Writes a batch of records in one transaction: all or nothing.
    pub fn commit(&mut self, writes: &[WriteRow<'_>], now_ms: u64) -> Result<CommitOutcome, StoreError> {
        let mut seq = self.meta.last_seq;
        let mut hlc = self.meta.hlc;
        let epoch = self.meta.epoch;
        let mut out = CommitOutcome { seqs: Vec::with_capacity(writes.len()), resolved: 0, recorded: 0 };
        // Open conflicts as the transaction goes: none open, none to resolve.
        let open_before = self.open_conflicts;
        let open = |out: &CommitOutcome| (open_before + out.recorded).saturating_sub(out.resolved);
        // The digests move only once the transaction commits.
        let mut digests: BTreeMap<&str, SetDigest> = BTreeMap::new();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            // The live version a write replaces leaves the digest (tombstones are not in it).
            let mut prior = tx.prepare_cached("SELECT data FROM records WHERE component = ?1 AND key = ?2 AND tombstone = 0")?;
            let mut upsert = tx.prepare_cached(
                "INSERT INTO records (component, key, data, tombstone, stamp_p, stamp_l, stamp_n, origin, epoch, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (component, key) DO UPDATE SET data = excluded.data, tombstone = excluded.tombstone,
                   stamp_p = excluded.stamp_p, stamp_l = excluded.stamp_l, stamp_n = excluded.stamp_n,
                   origin = excluded.origin, epoch = excluded.epoch, seq = excluded.seq",
            )?;
            for w in writes {
                if !w.keep {
                    seq += 1;
                    let digest = digests.entry(w.component).or_insert_with(|| self.digests.get(w.component).copied().unwrap_or_default());
                    prior
                        .query_row(params![w.component, w.key], |r| {
                            digest.remove(w.key, r.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?, false);
                            Ok(())
                        })
                        .optional()?;
                    digest.add(w.key, w.data, w.tombstone);
                    upsert.execute(params![
                        w.component,
                        w.key,
                        w.data,
                        i64::from(w.tombstone),
                        sql_i64(w.stamp.physical),
                        i64::from(w.stamp.logical),
                        w.stamp.node,
                        w.origin,
                        sql_i64(epoch),
                        sql_i64(seq)
                    ])?;
                    hlc = hlc.max(HlcTime::of(w.stamp));
                }
                if let Some(idem) = w.idem {
                    let mut ins = tx.prepare_cached(
                        "INSERT OR REPLACE INTO idempotency
                         (component, idem_key, fingerprint, key, seq, stamp_p, stamp_l, stamp_n, tombstone, created_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    )?;
                    ins.execute(params![
                        w.component,
                        idem.key,
                        idem.fingerprint,
                        w.key,
                        sql_i64(seq),
                        sql_i64(w.stamp.physical),
                        i64::from(w.stamp.logical),
                        w.stamp.node,
                        i64::from(w.tombstone),
                        sql_i64(now_ms)
                    ])?;
                }
                if w.resolves_conflicts && open(&out) > 0 {
                    let mut res = tx.prepare_cached(
                        "UPDATE conflicts SET resolved_seq = ?3, resolution = ?4
                         WHERE component = ?1 AND key = ?2 AND resolved_seq IS NULL",
                    )?;
                    let n = res.execute(params![
                        w.component,
                        w.key,
                        sql_i64(seq),
                        format!("superseded by a write stamped {}.{}@{}", w.stamp.physical, w.stamp.logical, w.stamp.node)
                    ])?;
                    out.resolved += u64::try_from(n).unwrap_or(0);
                }
                if let Some(c) = w.conflict {
                    // An older open conflict on the key is superseded by this one (its versions
                    // are part of the new merge).
                    let mut sup = tx.prepare_cached(
                        "UPDATE conflicts SET resolved_seq = ?3, resolution = ?4
                         WHERE component = ?1 AND key = ?2 AND resolved_seq IS NULL AND id <> ?5",
                    )?;
                    if open(&out) > 0 {
                        let n = sup.execute(params![w.component, w.key, sql_i64(seq), format!("superseded by conflict {}", c.id), c.id])?;
                        out.resolved += u64::try_from(n).unwrap_or(0);
                    }
                    let mut ins = tx.prepare_cached(
                        "INSERT INTO conflicts (id, component, key, reason, violations, versions, detected_p, detected_seq)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING",
                    )?;
                    let n = ins.execute(params![
                        c.id,
                        w.component,
                        w.key,
                        c.reason,
                        c.violations,
                        c.versions,
                        sql_i64(c.detected_p),
                        sql_i64(seq)
                    ])?;
                    out.recorded += u64::try_from(n).unwrap_or(0);
                }
                out.seqs.push(seq);
            }
            for (component, d) in &digests {
                put_digest(&tx, component, d)?;
            }
            let mut meta = tx.prepare_cached("UPDATE meta SET value = ?2 WHERE key = ?1")?;
            meta.execute(params!["last_seq", seq.to_string()])?;
            if hlc != self.meta.hlc {
                meta.execute(params!["hlc_p", hlc.physical.to_string()])?;
                meta.execute(params!["hlc_l", hlc.logical.to_string()])?;
            }
        }
        tx.commit()?;
        self.meta.last_seq = seq;
        self.meta.hlc = hlc;
        self.open_conflicts = open(&out);
        for (component, d) in digests {
            self.digests.insert(component.to_owned(), d);
        }
        Ok(out)
    }

    /// Persists the clock's reading without a record (e.g. before a planned shutdown).
    pub fn persist_hlc(&mut self, time: HlcTime) -> Result<(), StoreError> {
        if time <= self.meta.hlc {
            return Ok(());
        }
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("UPDATE meta SET value = ?1 WHERE key = 'hlc_p'", [time.physical.to_string()])?;
        tx.execute("UPDATE meta SET value = ?1 WHERE key = 'hlc_l'", [time.logical.to_string()])?;
        tx.commit()?;
        self.meta.hlc = time;
        Ok(())
    }

    /// Moves the node to a new epoch. Epochs never go back.
    pub fn set_epoch(&mut self, epoch: u64) -> Result<u64, StoreError> {
        if epoch < self.meta.epoch {
            return Err(StoreError::Refused(format!("epoch {epoch} is older than the node's epoch {}", self.meta.epoch)));
        }
        if epoch == self.meta.epoch {
            return Ok(epoch);
        }
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("UPDATE meta SET value = ?1 WHERE key = 'epoch'", [epoch.to_string()])?;
        tx.commit()?;
        self.meta.epoch = epoch;
        Ok(epoch)
    }

    /// Deletes a component's records stamped before `before_physical` and, with `keep_newest`,
    /// all but the newest that many (by stamp). Returns the (key, was-live) pairs removed.
    pub fn purge(
        &mut self,
        component: &str,
        before_physical: Option<u64>,
        keep_newest: Option<u64>,
    ) -> Result<Vec<(String, bool)>, StoreError> {
        let mut digest = self.digest(component);
        let sql = AgeSql::of(component);
        self.ensure_age(component, &sql)?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut removed = Vec::new();
        {
            let mut take = |q: &mut rusqlite::CachedStatement<'_>, p: &[&dyn rusqlite::ToSql]| -> Result<(), StoreError> {
                let mut rows = q.query(p)?;
                while let Some(r) = rows.next()? {
                    let (key, data, tombstone) = (r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, i64>(2)? != 0);
                    digest.remove(&key, &data, tombstone);
                    removed.push((key, !tombstone));
                }
                Ok(())
            };
            if let Some(before) = before_physical {
                let mut q = tx.prepare_cached(&sql.older)?;
                take(&mut q, params![sql_i64(before)])?;
            }
            if let Some(keep) = keep_newest {
                let mut q = tx.prepare_cached(&sql.keep)?;
                take(&mut q, params![sql_i64(keep)])?;
            }
        }
        if !removed.is_empty() {
            put_digest(&tx, component, &digest)?;
        }
        tx.commit()?;
        if !removed.is_empty() {
            self.digests.insert(component.to_owned(), digest);
        }
        Ok(removed)
    }

    /// Makes sure `component` has its index by age (see [`AgeSql`]): made once, as long as it
    /// takes to sort the component's records, then kept up by the component's writes only. A
    /// node makes those of its components with retention before it takes writes; a purge makes
    /// its own if it is missing (a plugin that took retention on since).
    pub fn ensure_age_index(&mut self, component: &str) -> Result<(), StoreError> {
        self.ensure_age(component, &AgeSql::of(component))
    }

    fn ensure_age(&mut self, component: &str, sql: &AgeSql) -> Result<(), StoreError> {
        if !self.aged.contains(component) {
            self.conn.execute_batch(&sql.create)?;
            self.aged.insert(component.to_owned());
        }
        Ok(())
    }

    /// The components that have an index by age in the store, whatever made it.
    pub fn age_indexed(&self) -> Result<Vec<String>, StoreError> {
        let mut q = self.conn.prepare("SELECT name FROM sqlite_master WHERE type = 'index'")?;
        let names = q.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
        Ok(names
            .iter()
            .filter_map(|n| hex::decode(n.strip_prefix(AGE_INDEX_PREFIX)?).ok())
            .filter_map(|b| String::from_utf8(b).ok())
            .collect())
    }

    /// Drops `component`'s index by age, if it has one (its plugin no longer has retention, or
    /// the node no longer configures it: its writes stop paying for the index).
    pub fn drop_age_index(&mut self, component: &str) -> Result<(), StoreError> {
        self.conn.execute_batch(&format!("DROP INDEX IF EXISTS {}", AgeSql::of(component).index))?;
        self.aged.remove(component);
        Ok(())
    }

    /// Deletes tombstones (deletions) stamped before `before_physical` and at feed positions up
    /// to `through_seq`, plus any stamped before `hard_before_physical` whatever their position
    /// (a peer held them back too long). Records the highest position purged (`meta`
    /// `tombstones_purged_through`, in the same transaction): a peer whose position is below it
    /// missed deletions and is bootstrapped. Returns the (component, key) pairs removed.
    pub fn purge_tombstones(
        &mut self,
        before_physical: u64,
        through_seq: u64,
        hard_before_physical: u64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut removed = Vec::new();
        let mut highest = 0u64;
        {
            // Tombstones count as absent in the digests: purging them moves none.
            let mut q = tx.prepare_cached(
                "DELETE FROM records WHERE tombstone = 1 AND stamp_p < ?1 AND (seq <= ?2 OR stamp_p < ?3)
                 RETURNING component, key, seq",
            )?;
            let rows = q.query_map(params![sql_i64(before_physical), sql_i64(through_seq), sql_i64(hard_before_physical)], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, sql_u64(r.get::<_, i64>(2)?)))
            })?;
            for row in rows {
                let (c, k, seq) = row?;
                highest = highest.max(seq);
                removed.push((c, k));
            }
        }
        if highest > 0 {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('tombstones_purged_through', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                [highest.to_string()],
            )?;
        }
        tx.commit()?;
        Ok(removed)
    }

    /// Forgets idempotency keys created before `before_ms`.
    pub fn expire_idempotency(&mut self, before_ms: u64) -> Result<usize, StoreError> {
        Ok(self.conn.execute("DELETE FROM idempotency WHERE created_ms < ?1", [sql_i64(before_ms)])?)
    }

    /// Checks whether the disk takes writes again: commits `reserve` bytes and deletes them.
    /// Also checks that no commit reported as failed actually landed.
    pub fn probe(&mut self, reserve: usize) -> Result<(), StoreError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("INSERT OR REPLACE INTO probe (id, filler) VALUES (1, zeroblob(?1))", [i64::try_from(reserve).unwrap_or(0)])?;
        tx.commit()?;
        self.conn.execute("DELETE FROM probe", [])?;
        let on_disk: String = self.conn.query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| r.get(0))?;
        if on_disk != self.meta.last_seq.to_string() {
            return Err(StoreError::Io(format!(
                "the store's last_seq is {on_disk} but the node thinks {}: a failed commit may have landed",
                self.meta.last_seq
            )));
        }
        Ok(())
    }

    /// Checkpoints the WAL into the database file (on clean shutdown).
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// The writer's own connection, for tests and tools.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// A pool of read connections.
pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

impl Readers {
    pub fn new(path: &Path, max_idle: usize) -> Readers {
        Readers { path: path.to_path_buf(), idle: Mutex::new(Vec::new()), max_idle }
    }

    /// Runs `f` with a read connection.
    pub fn with<R>(&self, f: impl FnOnce(&Connection) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let conn = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let c = Connection::open_with_flags(&self.path, flags)
                    .map_err(|e| StoreError::Sqlite(format!("cannot open {}: {e}", self.path.display())))?;
                c.busy_timeout(std::time::Duration::from_secs(10))?;
                c.pragma_update(None, "query_only", true)?;
                c
            }
        };
        let result = f(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
        result
    }
}

/// A component's index by age and retention's statements that read it. Only components with
/// retention have the index ([`Store::ensure_age_index`]): the other components' writes pay no
/// entry in it.
struct AgeSql {
    index: String,
    create: String,
    /// Deletes the records stamped before `?1`.
    older: String,
    /// Deletes all but the newest `?1` records.
    keep: String,
}

/// The name of a component's index by age: this, then the component's name in hex.
const AGE_INDEX_PREFIX: &str = "records_age_";

impl AgeSql {
    fn of(component: &str) -> AgeSql {
        let index = format!("{AGE_INDEX_PREFIX}{}", hex::encode(component));
        // The component as a literal, which is what lets SQLite use the partial index; and
        // INDEXED BY, since without statistics the primary key's prefix looks as good to it.
        let c = format!("'{}'", component.replace('\'', "''"));
        AgeSql {
            create: format!("CREATE INDEX IF NOT EXISTS {index} ON records(stamp_p, stamp_l, stamp_n) WHERE component = {c}"),
            older: format!("DELETE FROM records INDEXED BY {index} WHERE component = {c} AND stamp_p < ?1 RETURNING key, data, tombstone"),
            keep: format!(
                "DELETE FROM records WHERE component = {c} AND key IN (
                   SELECT key FROM records INDEXED BY {index} WHERE component = {c}
                   ORDER BY stamp_p DESC, stamp_l DESC, stamp_n DESC LIMIT -1 OFFSET ?1)
                 RETURNING key, data, tombstone"
            ),
            index,
        }
    }
}

/// One record.
pub fn get(conn: &Connection, component: &str, key: &str) -> Result<Option<RecordRow>, StoreError> {
    let mut q = conn.prepare_cached(&format!("SELECT {RECORD_COLUMNS} FROM records WHERE component = ?1 AND key = ?2"))?;
    Ok(q.query_row(params![component, key], row_to_record).optional()?)
}

/// Every record of a component (stamped at or after `since_physical`), in key order.
pub fn scan(conn: &Connection, component: &str, since_physical: Option<u64>, mut f: impl FnMut(RecordRow)) -> Result<(), StoreError> {
    let mut q =
        conn.prepare_cached(&format!("SELECT {RECORD_COLUMNS} FROM records WHERE component = ?1 AND stamp_p >= ?2 ORDER BY key"))?;
    let rows = q.query_map(params![component, sql_i64(since_physical.unwrap_or(0))], row_to_record)?;
    for row in rows {
        f(row?);
    }
    Ok(())
}

/// Live records of a component whose key starts with `prefix` and sorts after `after`, in key
/// order, at most `limit`.
pub fn list(conn: &Connection, component: &str, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<RecordRow>, StoreError> {
    let mut q = conn.prepare_cached(&format!(
        "SELECT {RECORD_COLUMNS} FROM records WHERE component = ?1 AND key >= ?2 AND key > ?3 AND tombstone = 0 ORDER BY key LIMIT ?4"
    ))?;
    let mut out = Vec::new();
    let rows = q.query_map(params![component, prefix, after.unwrap_or(""), i64::try_from(limit).unwrap_or(i64::MAX)], row_to_record)?;
    for row in rows {
        let row = row?;
        if !row.key.starts_with(prefix) {
            break;
        }
        out.push(row);
    }
    Ok(out)
}

/// The change feed: records written after `after_seq`, in seq order, at most `limit`. A key
/// written several times appears once, at its latest seq.
pub fn changes(conn: &Connection, after_seq: u64, limit: usize) -> Result<Vec<RecordRow>, StoreError> {
    let mut q = conn.prepare_cached(&format!("SELECT {RECORD_COLUMNS} FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2"))?;
    let rows = q.query_map(params![sql_i64(after_seq), i64::try_from(limit).unwrap_or(i64::MAX)], row_to_record)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row?);
    }
    Ok(out)
}

/// The change feed of some components only (replication's priority lane): their records
/// written after `after_seq`, in seq order, at most `limit`.
pub fn changes_of(conn: &Connection, components: &[String], after_seq: u64, limit: usize) -> Result<Vec<RecordRow>, StoreError> {
    if components.is_empty() {
        return Ok(Vec::new());
    }
    let marks = vec!["?"; components.len()].join(",");
    let mut q = conn
        .prepare_cached(&format!("SELECT {RECORD_COLUMNS} FROM records WHERE seq > ? AND component IN ({marks}) ORDER BY seq LIMIT ?"))?;
    let mut args: Vec<rusqlite::types::Value> = vec![rusqlite::types::Value::Integer(sql_i64(after_seq))];
    args.extend(components.iter().map(|c| rusqlite::types::Value::Text(c.clone())));
    args.push(rusqlite::types::Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
    let rows = q.query_map(rusqlite::params_from_iter(args), row_to_record)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row?);
    }
    Ok(out)
}

/// The highest feed position of a purged tombstone (0: none purged).
pub fn tombstones_purged_through(conn: &Connection) -> Result<u64, StoreError> {
    let v: Option<String> =
        conn.query_row("SELECT value FROM meta WHERE key = 'tombstones_purged_through'", [], |r| r.get(0)).optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Tombstones stamped before `before_physical` at positions past `after_seq`: what a peer at
/// `after_seq` holds back.
pub fn tombstones_held(conn: &Connection, after_seq: u64, before_physical: u64) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM records WHERE tombstone = 1 AND seq > ?1 AND stamp_p < ?2",
        params![sql_i64(after_seq), sql_i64(before_physical)],
        |r| r.get(0),
    )?;
    Ok(sql_u64(n))
}

/// A consistent snapshot of some components' records, as the change feed from `after_seq`:
/// one read transaction, in seq order, handed to `sink` `chunk` records at a time (it returns
/// false to stop). Returns the feed position the snapshot is complete up to.
pub fn stream_snapshot(
    conn: &Connection,
    components: &[String],
    after_seq: u64,
    chunk: usize,
    mut sink: impl FnMut(Vec<RecordRow>, u64) -> bool,
) -> Result<u64, StoreError> {
    let tx = conn.unchecked_transaction()?;
    let as_of: u64 =
        tx.query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| r.get::<_, String>(0)).map(|v| v.parse().unwrap_or(0))?;
    {
        let marks = vec!["?"; components.len().max(1)].join(",");
        let mut q = tx
            .prepare(&format!("SELECT {RECORD_COLUMNS} FROM records WHERE seq > ? AND seq <= ? AND component IN ({marks}) ORDER BY seq"))?;
        let mut args: Vec<rusqlite::types::Value> =
            vec![rusqlite::types::Value::Integer(sql_i64(after_seq)), rusqlite::types::Value::Integer(sql_i64(as_of))];
        args.extend(components.iter().map(|c| rusqlite::types::Value::Text(c.clone())));
        if components.is_empty() {
            args.push(rusqlite::types::Value::Null);
        }
        let rows = q.query_map(rusqlite::params_from_iter(args), row_to_record)?;
        let mut batch = Vec::with_capacity(chunk.max(1));
        for row in rows {
            batch.push(row?);
            if batch.len() >= chunk.max(1) && !sink(std::mem::take(&mut batch), as_of) {
                return Ok(as_of);
            }
        }
        if !batch.is_empty() {
            sink(batch, as_of);
        }
    }
    tx.finish()?;
    Ok(as_of)
}

/// (records, live records) of a component.
pub fn counts(conn: &Connection, component: &str) -> Result<(u64, u64), StoreError> {
    let (total, live): (i64, Option<i64>) = conn.query_row(
        "SELECT COUNT(*), SUM(CASE WHEN tombstone = 0 THEN 1 ELSE 0 END) FROM records WHERE component = ?1",
        [component],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok((sql_u64(total), live.map_or(0, sql_u64)))
}

/// Components that have records in the store.
pub fn components(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut q = conn.prepare("SELECT DISTINCT component FROM records ORDER BY component")?;
    let rows = q.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for r in rows {
        out.push(r?);
    }
    Ok(out)
}

/// `meta` holds every component's convergence digest (`digest:COMPONENT`, absent: zeros) while
/// this key is there: the store's writes and purges keep them in the same transaction. A writer
/// that writes records otherwise (a restore) removes it first ([`forget_digests`]).
const DIGESTS_KEPT: &str = "digests_kept";

fn put_digest(tx: &rusqlite::Transaction<'_>, component: &str, d: &SetDigest) -> Result<(), StoreError> {
    let mut put = tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('digest:' || ?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?;
    put.execute(params![component, d.hex()])?;
    Ok(())
}

/// The digests `meta` keeps, if it keeps them.
fn kept_digests(conn: &Connection) -> Result<Option<BTreeMap<String, SetDigest>>, StoreError> {
    if conn.query_row("SELECT 1 FROM meta WHERE key = ?1", [DIGESTS_KEPT], |_| Ok(())).optional()?.is_none() {
        return Ok(None);
    }
    let mut out = BTreeMap::new();
    let mut q = conn.prepare("SELECT key, value FROM meta WHERE key >= 'digest:' AND key < 'digest;'")?;
    let mut rows = q.query([])?;
    while let Some(r) = rows.next()? {
        let (key, value) = (r.get::<_, String>(0)?, r.get::<_, String>(1)?);
        let component = key.strip_prefix("digest:").unwrap_or(&key);
        out.insert(component.to_owned(), kept_value(&key, &value)?);
    }
    Ok(Some(out))
}

/// Makes `meta` keep `digests`, which must be every component's digest from every record.
pub(crate) fn save_digests(tx: &rusqlite::Transaction<'_>, digests: &BTreeMap<String, SetDigest>) -> Result<(), StoreError> {
    forget_digests(tx)?;
    for (component, d) in digests {
        put_digest(tx, component, d)?;
    }
    tx.execute("INSERT INTO meta (key, value) VALUES (?1, '1')", [DIGESTS_KEPT])?;
    Ok(())
}

/// Makes `meta` stop keeping the digests: the next open reads them from every record.
fn forget_digests(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("DELETE FROM meta WHERE key = ?1 OR (key >= 'digest:' AND key < 'digest;')", [DIGESTS_KEPT])?;
    Ok(())
}

/// A component whose records do not sum to the digest kept with them (a store edited outside
/// Tandem, or damaged): `kept` is what `meta` held, `actual` what the records sum to, both as of
/// one read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestMismatch {
    pub component: String,
    pub kept: SetDigest,
    pub actual: SetDigest,
}

/// Reads every record and compares each component's sum with the digest `meta` keeps for it,
/// one component per read transaction (so that the WAL can be checkpointed between them): what
/// the open of a store used to do before it kept them, now on a reader, without holding the
/// writer up. Stops early, finding nothing, once `cancel` is set.
pub fn scrub_digests(conn: &Connection, cancel: &std::sync::atomic::AtomicBool) -> Result<Vec<DigestMismatch>, StoreError> {
    // Which components: those with a digest kept and those with records (names only: each is
    // then read in a transaction of its own).
    let Some(kept) = kept_digests(conn)? else { return Ok(Vec::new()) };
    let mut names: std::collections::BTreeSet<String> = kept.into_keys().collect();
    let mut next = conn.prepare("SELECT component FROM records WHERE component > ?1 ORDER BY component LIMIT 1")?;
    let mut after = String::new();
    while let Some(c) = next.query_row([&after], |r| r.get::<_, String>(0)).optional()? {
        names.insert(c.clone());
        after = c;
    }
    let mut found = Vec::new();
    for component in names {
        conn.execute_batch("BEGIN DEFERRED")?;
        let read = (|| Ok::<_, StoreError>((kept_digest(conn, &component)?, sum_component(conn, &component, cancel)?)))();
        let _ = conn.execute_batch("ROLLBACK");
        let (kept, Some(actual)) = read? else { return Ok(Vec::new()) };
        if kept != actual {
            found.push(DigestMismatch { component, kept, actual });
        }
    }
    Ok(found)
}

/// The digest `meta` keeps for one component (zero when it keeps none: no live record).
fn kept_digest(conn: &Connection, component: &str) -> Result<SetDigest, StoreError> {
    let key = format!("digest:{component}");
    match conn.query_row("SELECT value FROM meta WHERE key = ?1", [&key], |r| r.get::<_, String>(0)).optional()? {
        None => Ok(SetDigest::default()),
        Some(v) => kept_value(&key, &v),
    }
}

/// A digest as `meta` keeps it under `key`.
fn kept_value(key: &str, value: &str) -> Result<SetDigest, StoreError> {
    SetDigest::from_hex(value).ok_or_else(|| StoreError::Sqlite(format!("meta.{key} is not a digest: {value:?}")))
}

/// One component's digest from its records, or `None` once `cancel` is set.
fn sum_component(conn: &Connection, component: &str, cancel: &std::sync::atomic::AtomicBool) -> Result<Option<SetDigest>, StoreError> {
    let mut d = SetDigest::default();
    let mut q = conn.prepare_cached("SELECT key, data FROM records WHERE component = ?1 AND tombstone = 0")?;
    let mut rows = q.query([component])?;
    let mut n = 0u64;
    while let Some(r) = rows.next()? {
        n += 1;
        if n.is_multiple_of(4096) && cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(None);
        }
        let key = r.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
        d.add(key, r.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?, false);
    }
    Ok(Some(d))
}

/// Every component's convergence digest, from every record (see [`super::digest`]): what
/// [`Store`] starts from when `meta` does not keep them, and what the one it maintains must
/// always equal.
pub fn set_digests(conn: &Connection) -> Result<BTreeMap<String, SetDigest>, StoreError> {
    let mut out: BTreeMap<String, SetDigest> = BTreeMap::new();
    // Tombstones count as absent.
    let mut q = conn.prepare("SELECT component, key, data FROM records WHERE tombstone = 0")?;
    let mut rows = q.query([])?;
    while let Some(r) = rows.next()? {
        let component = r.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
        let key = r.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
        let data = r.get_ref(2)?.as_blob().map_err(rusqlite::Error::from)?;
        match out.get_mut(component) {
            Some(d) => d.add(key, data, false),
            None => out.entry(component.to_owned()).or_default().add(key, data, false),
        }
    }
    Ok(out)
}

/// The snapshot digest of a component's records (keys, stored bytes and tombstones, hashed in
/// key order), as backup manifests record it: equal on two stores exactly when they hold the
/// same versions. Nodes show the convergence digest instead ([`super::digest`]), which the
/// writer keeps up to date without reading every record.
pub fn digest(conn: &Connection, component: &str) -> Result<String, StoreError> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut q = conn.prepare_cached("SELECT key, data, tombstone FROM records WHERE component = ?1 ORDER BY key")?;
    let mut rows = q.query([component])?;
    while let Some(r) = rows.next()? {
        let key: String = r.get(0)?;
        let data: Vec<u8> = r.get(1)?;
        let tomb: i64 = r.get(2)?;
        h.update((key.len() as u64).to_le_bytes());
        h.update(key.as_bytes());
        h.update((data.len() as u64).to_le_bytes());
        h.update(&data);
        h.update([u8::from(tomb != 0)]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Every remembered idempotency key created at or after `since_ms`.
pub fn idempotency_rows(conn: &Connection, since_ms: u64) -> Result<Vec<IdemRow>, StoreError> {
    let mut q = conn.prepare(
        "SELECT component, idem_key, fingerprint, key, seq, stamp_p, stamp_l, stamp_n, tombstone, created_ms
         FROM idempotency WHERE created_ms >= ?1",
    )?;
    let rows = q.query_map([sql_i64(since_ms)], |r| {
        Ok(IdemRow {
            component: r.get(0)?,
            idem_key: r.get(1)?,
            fingerprint: r.get(2)?,
            key: r.get(3)?,
            seq: sql_u64(r.get(4)?),
            stamp: Stamp { physical: sql_u64(r.get(5)?), logical: u32::try_from(r.get::<_, i64>(6)?).unwrap_or(0), node: r.get(7)? },
            tombstone: r.get::<_, i64>(8)? != 0,
            created_ms: sql_u64(r.get(9)?),
        })
    })?;
    let mut out = Vec::new();
    for r in rows {
        out.push(r?);
    }
    Ok(out)
}

/// A `conflicts` row read as `SELECT {CONFLICT_COLUMNS}`.
pub(crate) fn row_to_conflict(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConflictRow> {
    Ok(ConflictRow {
        id: r.get(0)?,
        component: r.get(1)?,
        key: r.get(2)?,
        reason: r.get(3)?,
        violations: r.get(4)?,
        versions: r.get(5)?,
        detected_p: sql_u64(r.get(6)?),
        detected_seq: sql_u64(r.get(7)?),
        resolved_seq: r.get::<_, Option<i64>>(8)?.map(sql_u64),
        resolution: r.get(9)?,
    })
}

pub(crate) const CONFLICT_COLUMNS: &str =
    "id, component, key, reason, violations, versions, detected_p, detected_seq, resolved_seq, resolution";

/// Conflicts, open ones only unless `all`, optionally of one component, oldest first.
pub fn conflicts(conn: &Connection, component: Option<&str>, all: bool, limit: usize) -> Result<Vec<ConflictRow>, StoreError> {
    let mut q = conn.prepare_cached(&format!(
        "SELECT {CONFLICT_COLUMNS} FROM conflicts WHERE (?1 IS NULL OR component = ?1) AND (?2 OR resolved_seq IS NULL)
         ORDER BY detected_seq LIMIT ?3"
    ))?;
    let rows = q.query_map(params![component, all, i64::try_from(limit).unwrap_or(i64::MAX)], row_to_conflict)?;
    let mut out = Vec::new();
    for r in rows {
        out.push(r?);
    }
    Ok(out)
}

/// One conflict.
pub fn conflict(conn: &Connection, id: &str) -> Result<Option<ConflictRow>, StoreError> {
    let mut q = conn.prepare_cached(&format!("SELECT {CONFLICT_COLUMNS} FROM conflicts WHERE id = ?1"))?;
    Ok(q.query_row([id], row_to_conflict).optional()?)
}

/// Whether a record has an open conflict.
pub fn has_open_conflict(conn: &Connection, component: &str, key: &str) -> Result<bool, StoreError> {
    let mut q = conn.prepare_cached("SELECT 1 FROM conflicts WHERE component = ?1 AND key = ?2 AND resolved_seq IS NULL LIMIT 1")?;
    Ok(q.exists(params![component, key])?)
}

/// Number of open conflicts.
pub fn open_conflicts(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM conflicts WHERE resolved_seq IS NULL", [], |r| r.get(0))?;
    Ok(sql_u64(n))
}

/// SQLite's integrity check: "ok" or the problems found.
pub fn integrity_check(conn: &Connection) -> Result<String, StoreError> {
    let mut q = conn.prepare("PRAGMA integrity_check")?;
    let rows = q.query_map([], |r| r.get::<_, String>(0))?;
    let mut lines = Vec::new();
    for r in rows {
        lines.push(r?);
    }
    Ok(lines.join("; "))
}

/// Sizes of the database and WAL files, in bytes.
pub fn file_sizes(path: &Path) -> (u64, u64) {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    (size(path), size(Path::new(&wal)))
}

/// Opens a store's file for inspection only (tests, tools): no writes, no migration.
pub fn open_for_inspection(path: &Path) -> Result<Connection, StoreError> {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| StoreError::Sqlite(format!("cannot open {}: {e}", path.display())))?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    c.pragma_update(None, "query_only", true)?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(component: &'a str, key: &'a str, data: &'a [u8], stamp: &'a Stamp) -> WriteRow<'a> {
        WriteRow {
            component,
            key,
            data,
            tombstone: false,
            stamp,
            origin: &stamp.node,
            idem: None,
            resolves_conflicts: true,
            conflict: None,
            keep: false,
        }
    }

    #[test]
    fn commits_give_increasing_seqs_and_the_feed_holds_latest_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let mut s = Store::open(&path, "a", &StoreOptions::default(), 1).expect("open");
        let st = Stamp::new(10, 0, "a");
        let out = s.commit(&[row("t", "k1", b"1", &st), row("t", "k2", b"2", &st)], 5).expect("commit");
        assert_eq!(out.seqs, vec![1, 2]);
        let st2 = Stamp::new(11, 0, "a");
        let out = s.commit(&[row("t", "k1", b"1b", &st2)], 6).expect("commit");
        assert_eq!(out.seqs, vec![3]);
        let r = Readers::new(&path, 2);
        let feed = r.with(|c| changes(c, 0, 10)).expect("feed");
        let keys: Vec<(&str, u64)> = feed.iter().map(|r| (r.key.as_str(), r.seq)).collect();
        assert_eq!(keys, vec![("k2", 2), ("k1", 3)]);
        assert_eq!(feed[1].data, b"1b");
        assert_eq!(r.with(|c| changes(c, 2, 10)).expect("feed").len(), 1);
        assert_eq!(s.meta().hlc, HlcTime { physical: 11, logical: 0 });
    }

    #[test]
    fn reopen_keeps_identity_seq_and_clock_and_refuses_another_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let id = {
            let mut s = Store::open(&path, "a", &StoreOptions::default(), 1).expect("open");
            let st = Stamp::new(77, 3, "a");
            s.commit(&[row("t", "k", b"x", &st)], 1).expect("commit");
            s.set_epoch(4).expect("epoch");
            assert!(s.set_epoch(3).is_err());
            s.meta().node_id.clone()
        };
        let s = Store::open(&path, "a", &StoreOptions::default(), 2).expect("reopen");
        assert_eq!(s.meta().node_id, id);
        assert_eq!(s.meta().last_seq, 1);
        assert_eq!(s.meta().epoch, 4);
        assert_eq!(s.meta().hlc, HlcTime { physical: 77, logical: 3 });
        drop(s);
        let e = Store::open(&path, "b", &StoreOptions::default(), 3).err().expect("wrong node");
        assert!(matches!(e, StoreError::WrongNode { .. }), "{e}");
    }

    #[test]
    fn purged_rows_never_give_their_seq_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let mut s = Store::open(&path, "a", &StoreOptions::default(), 1).expect("open");
        let old = Stamp::new(10, 0, "a");
        let new = Stamp::new(20, 0, "a");
        s.commit(&[row("r", "old", b"o", &old), row("r", "new", b"n", &new)], 1).expect("commit");
        let removed = s.purge("r", Some(15), None).expect("purge");
        assert_eq!(removed, vec![("old".to_owned(), true)]);
        s.commit(&[row("r", "k", b"n", &new)], 1).expect("commit");
        let out = s.commit(&[row("r", "k2", b"n", &new)], 1).expect("commit");
        assert_eq!(out.seqs, vec![4]);
        drop(s);
        let s = Store::open(&path, "a", &StoreOptions::default(), 2).expect("reopen");
        assert_eq!(s.meta().last_seq, 4);
    }

    #[test]
    fn the_maintained_digest_always_equals_one_computed_from_every_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let mut s = Store::open(&path, "a", &StoreOptions::default(), 1).expect("open");
        let check = |s: &Store, when: &str| {
            let full = set_digests(&s.conn).expect("full");
            for c in ["t", "r", "none"] {
                assert_eq!(s.digest(c), full.get(c).copied().unwrap_or_default(), "{c} after {when}");
            }
        };
        let (old, new) = (Stamp::new(10, 0, "a"), Stamp::new(20, 0, "a"));
        s.commit(&[row("t", "k1", b"1", &old), row("t", "k2", b"2", &old), row("r", "k1", b"1", &old)], 1).expect("commit");
        check(&s, "inserts");
        assert_ne!(s.digest("t"), s.digest("r"));
        // The same key twice in one commit, and a deletion.
        let mut gone = row("t", "k2", b"", &new);
        gone.tombstone = true;
        s.commit(&[row("t", "k1", b"1b", &new), row("t", "k1", b"1c", &new), gone, row("r", "k9", b"9", &new)], 1).expect("commit");
        check(&s, "overwrites");
        // A commit that fails moves nothing.
        let before = s.digest("t");
        s.set_max_size(64 * 1024).expect("cap");
        let blob = vec![7u8; 256 * 1024];
        assert!(s.commit(&[row("t", "k1", &blob, &new)], 1).is_err());
        assert_eq!(s.digest("t"), before);
        s.set_max_size(0).expect("uncap");
        check(&s, "a failed commit");
        assert_eq!(s.purge("r", Some(15), None).expect("purge").len(), 1);
        check(&s, "a purge");
        assert_eq!(s.purge_tombstones(30, 100, 0).expect("purge").len(), 1);
        check(&s, "a tombstone purge");
        // Writing back what was there gives the digest back: it depends on the versions only.
        let mut s2 = Store::open(&dir.path().join("s2.db"), "b", &StoreOptions::default(), 1).expect("open");
        s2.commit(&[row("t", "k1", b"x", &old), row("r", "k9", b"9", &new), row("t", "k1", b"1c", &new)], 1).expect("commit");
        assert_eq!(s2.digest("t"), s.digest("t"));
        assert_eq!(s2.digest("r"), s.digest("r"));
        let digest = s.digest("t");
        drop(s);
        let s = Store::open(&path, "a", &StoreOptions::default(), 2).expect("reopen");
        assert_eq!(s.digest("t"), digest);
        check(&s, "a reopen");
    }

    #[test]
    fn a_reopened_store_reads_its_kept_digests_and_a_scrub_corrects_an_edited_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let st = Stamp::new(10, 0, "a");
        let full = {
            let mut s = Store::open(&path, "a", &StoreOptions::default(), 1).expect("open");
            s.commit(&[row("t", "k1", b"1", &st), row("t", "k2", b"2", &st), row("r", "k", b"r", &st)], 1).expect("commit");
            // Edited behind the store's back: a record's bytes change, its kept digest does not.
            s.conn.execute("UPDATE records SET data = x'00' WHERE component = 't' AND key = 'k2'", []).expect("edit");
            set_digests(&s.conn).expect("full")
        };
        let mut s = Store::open(&path, "a", &StoreOptions::default(), 2).expect("reopen");
        let kept = s.digest("t");
        assert_ne!(kept, full["t"], "the open read the kept digest, not every record");
        assert_eq!(s.digest("r"), full["r"]);
        let r = Readers::new(&path, 1);
        let cancel = std::sync::atomic::AtomicBool::new(false);
        let found = r.with(|c| scrub_digests(c, &cancel)).expect("scrub");
        assert_eq!(found, vec![DigestMismatch { component: "t".into(), kept, actual: full["t"] }]);
        // A write between the scrub's read and the correction stays counted.
        s.commit(&[row("t", "k3", b"3", &st)], 1).expect("commit");
        s.correct_digest("t", found[0].kept, found[0].actual).expect("correct");
        assert_eq!(s.digest("t"), set_digests(&s.conn).expect("full")["t"]);
        assert_eq!(r.with(|c| scrub_digests(c, &cancel)).expect("scrub"), vec![]);
        // A component whose records were all removed behind the store's back is found from its
        // kept digest alone (each component is read in a transaction of its own).
        s.conn.execute("DELETE FROM records WHERE component = 'r'", []).expect("edit");
        let found = r.with(|c| scrub_digests(c, &cancel)).expect("scrub");
        assert_eq!(found, vec![DigestMismatch { component: "r".into(), kept: s.digest("r"), actual: SetDigest::default() }]);
        s.correct_digest("r", found[0].kept, found[0].actual).expect("correct");
        assert_eq!(s.digest("r"), SetDigest::default());
        // A cancelled scrub finds nothing (it stops within 4,096 records).
        cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        let many: Vec<String> = (0..5000).map(|i| format!("m{i}")).collect();
        s.commit(&many.iter().map(|k| row("t", k, b"m", &st)).collect::<Vec<_>>(), 1).expect("commit");
        s.conn.execute("UPDATE records SET data = x'01' WHERE component = 't' AND key = 'k1'", []).expect("edit");
        assert_eq!(r.with(|c| scrub_digests(c, &cancel)).expect("scrub"), vec![]);
        // A store whose records were written otherwise (a restore) forgets its digests, and the
        // next open reads every record.
        {
            let tx = s.conn.transaction().expect("tx");
            forget_digests(&tx).expect("forget");
            tx.commit().expect("commit");
        }
        drop(s);
        let s = Store::open(&path, "a", &StoreOptions::default(), 3).expect("reopen");
        assert_eq!(s.digest("t"), set_digests(&s.conn).expect("full")["t"]);
    }

    #[test]
    fn keep_newest_purges_by_stamp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let mut s = Store::open(&path, "a", &StoreOptions::default(), 1).expect("open");
        let stamps: Vec<Stamp> = (0..5).map(|i| Stamp::new(100 + i, 0, "a")).collect();
        let keys = ["e", "d", "c", "b", "a"];
        let rows: Vec<WriteRow<'_>> = keys.iter().zip(&stamps).map(|(k, st)| row("r", k, b"x", st)).collect();
        s.commit(&rows, 1).expect("commit");
        let mut removed = s.purge("r", None, Some(2)).expect("purge");
        removed.sort();
        assert_eq!(removed.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), vec!["c", "d", "e"]);
    }

    /// How SQLite runs `sql` (with its parameters bound to 1), one line per step.
    fn plan(conn: &Connection, sql: &str) -> String {
        let mut q = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("explain");
        let ones = vec![1i64; q.parameter_count()];
        let steps = q.query_map(rusqlite::params_from_iter(ones), |r| r.get::<_, String>(3)).expect("plan");
        steps.map(|s| s.expect("step")).collect::<Vec<_>>().join("\n")
    }

    fn indexes(conn: &Connection) -> Vec<String> {
        let mut q = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'records' ORDER BY name").expect("q");
        q.query_map([], |r| r.get::<_, String>(0)).expect("names").map(|n| n.expect("name")).collect()
    }

    #[test]
    fn only_components_with_retention_index_records_by_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let mut s = Store::open(&path, "a", &StoreOptions::default(), 1).expect("open");
        assert_eq!(indexes(&s.conn), vec!["records_by_seq", "records_tombstones"], "a write pays no index by age");
        let (old, new) = (Stamp::new(10, 0, "a"), Stamp::new(20, 0, "a"));
        s.commit(&[row("r", "old", b"o", &old), row("r", "new", b"n", &new), row("t", "old", b"o", &old)], 1).expect("commit");
        assert_eq!(s.purge("r", Some(15), None).expect("purge"), vec![("old".to_owned(), true)]);
        let sql = AgeSql::of("r");
        assert_eq!(indexes(&s.conn), vec![sql.index.clone(), "records_by_seq".to_owned(), "records_tombstones".to_owned()]);
        // Retention reads the component's own index.
        for q in [&sql.older, &sql.keep] {
            let steps = plan(&s.conn, q);
            assert!(steps.contains(&sql.index) && !steps.contains("TEMP B-TREE"), "{q}: {steps}");
        }
        // The other component's records are untouched, and a reopened store purges as before.
        drop(s);
        let mut s = Store::open(&path, "a", &StoreOptions::default(), 2).expect("reopen");
        assert_eq!(s.purge("t", Some(15), None).expect("purge"), vec![("old".to_owned(), true)]);
        assert_eq!(s.purge("r", Some(25), None).expect("purge"), vec![("new".to_owned(), true)]);
        // A component whose plugin no longer has retention loses its index.
        assert_eq!(indexes(&s.conn).len(), 4, "r's and t's, made by their purges");
        assert_eq!(s.age_indexed().expect("list"), vec!["r".to_owned(), "t".to_owned()]);
        for c in ["r", "t", "never-had-one"] {
            s.drop_age_index(c).expect("drop");
        }
        assert_eq!(indexes(&s.conn), vec!["records_by_seq", "records_tombstones"]);
        assert!(s.age_indexed().expect("list").is_empty());
        // The tombstone purge reads the index of tombstones, not every record.
        let tomb = plan(&s.conn, "DELETE FROM records WHERE tombstone = 1 AND stamp_p < 1 AND (seq <= 2 OR stamp_p < 3)");
        assert!(tomb.contains("records_tombstones"), "{tomb}");
    }

    #[test]
    fn a_store_of_schema_1_is_migrated_with_its_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        {
            // A store as the first schema's build left it.
            let mut s = Store::open(&path, "a", &StoreOptions::default(), 1).expect("open");
            let st = Stamp::new(10, 0, "a");
            s.commit(&[row("t", "k1", b"1", &st), row("r", "k2", b"2", &st)], 1).expect("commit");
            s.conn
                .execute_batch(
                    "DROP INDEX records_tombstones; CREATE INDEX records_by_age ON records(component, stamp_p); PRAGMA user_version = 1;",
                )
                .expect("back to schema 1");
        }
        let digest = {
            let s = Store::open(&path, "a", &StoreOptions::default(), 2).expect("reopen");
            assert_eq!(indexes(&s.conn), vec!["records_by_seq", "records_tombstones"]);
            let v: i64 = s.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
            assert_eq!(v, SCHEMA_VERSION);
            assert_eq!(s.meta().last_seq, 2);
            s.digest("t")
        };
        assert_ne!(digest, SetDigest::default());
        let r = Readers::new(&path, 1);
        assert_eq!(r.with(|c| changes(c, 0, 10)).expect("feed").len(), 2);
    }

    #[test]
    fn size_cap_fails_like_a_full_disk_and_rolls_back_whole_batches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let mut s = Store::open(&path, "a", &StoreOptions::default(), 1).expect("open");
        s.set_max_size(64 * 1024).expect("cap");
        let st = Stamp::new(1, 0, "a");
        let blob = vec![7u8; 8 * 1024];
        let mut committed = 0u64;
        let err = loop {
            let key = format!("k{committed}");
            match s.commit(&[row("t", &key, &blob, &st)], 1) {
                Ok(_) => committed += 1,
                Err(e) => break e,
            }
            assert!(committed < 1000, "the cap never hit");
        };
        assert!(matches!(err, StoreError::DiskFull(_)), "{err}");
        assert_eq!(s.meta().last_seq, committed);
        assert!(s.probe(4096).is_err());
        s.set_max_size(0).expect("uncap");
        s.probe(4096).expect("space is back");
        let out = s.commit(&[row("t", "after", b"x", &st)], 1).expect("writes again");
        assert_eq!(out.seqs, vec![committed + 1]);
        let r = Readers::new(&path, 1);
        assert_eq!(r.with(|c| counts(c, "t")).expect("counts"), (committed + 1, committed + 1));
        assert_eq!(r.with(integrity_check).expect("check"), "ok");
    }

    #[test]
    fn conflicts_are_recorded_once_and_resolved_by_a_local_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let mut s = Store::open(&path, "a", &StoreOptions::default(), 1).expect("open");
        let st = Stamp::new(1, 0, "b");
        let c = ConflictRow {
            id: "c1".into(),
            component: "t".into(),
            key: "k".into(),
            reason: "merge does not validate".into(),
            violations: "[]".into(),
            versions: "[]".into(),
            detected_p: 1,
            detected_seq: 0,
            resolved_seq: None,
            resolution: None,
        };
        let mut w = row("t", "k", b"m", &st);
        w.resolves_conflicts = false;
        w.conflict = Some(&c);
        assert_eq!(s.commit(&[w.clone()], 1).expect("commit").recorded, 1);
        assert_eq!(s.commit(&[w], 1).expect("commit").recorded, 0);
        let r = Readers::new(&path, 1);
        assert_eq!(r.with(open_conflicts).expect("n"), 1);
        // Reopened, the store still knows a conflict is open (local writes skip resolving while
        // none is).
        drop(s);
        let mut s = Store::open(&path, "a", &StoreOptions::default(), 2).expect("reopen");
        let out = s.commit(&[row("t", "k", b"fixed", &Stamp::new(2, 0, "a"))], 1).expect("commit");
        assert_eq!(out.resolved, 1);
        assert_eq!(r.with(open_conflicts).expect("n"), 0);
        let c = r.with(|c| conflict(c, "c1")).expect("get").expect("exists");
        assert_eq!(c.resolved_seq, Some(3));
        assert!(c.resolution.as_ref().is_some_and(|r| r.contains("superseded")));
        // A conflict recorded and resolved within one commit.
        let c2 = ConflictRow { id: "c2".into(), ..c };
        let mut w = row("t", "k", b"m2", &st);
        w.resolves_conflicts = false;
        w.conflict = Some(&c2);
        let out = s.commit(&[w, row("t", "k", b"fixed2", &Stamp::new(3, 0, "a"))], 1).expect("commit");
        assert_eq!((out.recorded, out.resolved), (1, 1));
        assert_eq!(r.with(open_conflicts).expect("n"), 0);
    }

    #[test]
    fn listing_by_prefix_skips_tombstones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let mut s = Store::open(&path, "a", &StoreOptions::default(), 1).expect("open");
        let st = Stamp::new(1, 0, "a");
        let mut dead = row("t", "ab2", b"x", &st);
        dead.tombstone = true;
        s.commit(&[row("t", "aa", b"x", &st), row("t", "ab1", b"x", &st), dead, row("t", "ab3", b"x", &st), row("t", "b", b"x", &st)], 1)
            .expect("commit");
        let r = Readers::new(&path, 1);
        let keys = |v: Vec<RecordRow>| v.into_iter().map(|r| r.key).collect::<Vec<_>>();
        assert_eq!(keys(r.with(|c| list(c, "t", "ab", None, 10)).expect("list")), vec!["ab1", "ab3"]);
        assert_eq!(keys(r.with(|c| list(c, "t", "ab", Some("ab1"), 10)).expect("list")), vec!["ab3"]);
        assert_eq!(keys(r.with(|c| list(c, "t", "", None, 2)).expect("list")), vec!["aa", "ab1"]);
    }
}
