//! The backup thread of a running node: writes every committed version (from the node's commit
//! tap) into the log archive, takes the scheduled snapshots, sends them to the peer's inbox
//! (`[backup] peer`), applies retention, and keeps the status `GET /v1/admin/backup` and
//! `/metrics` show. It reads the store through its own connection and takes versions from a
//! channel the writer never waits on, so it never holds up the node's writer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use super::archive::{self, Archiver, ArchiverOptions};
use super::config::Plan;
use super::policy::{self, Snap};
use super::snapshot::{self, CreateOptions, PluginManifest};
use super::{peer, time};
use crate::node::tap::{BackupView, TapClosed, TapReceiver};
use crate::node::{Config, Node};
use crate::plugin::registry::Registry;

/// The running backup thread; dropping it stops the thread after a last archive flush.
pub struct BackupService {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    status: SharedStatus,
}

impl BackupService {
    /// The thread's status now.
    pub fn status(&self) -> BackupStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops the thread, flushing what the archive has pending.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for BackupService {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Plugin lines of a manifest from the serving plugins.
pub fn plugins_from_registry(registry: &Registry) -> Vec<PluginManifest> {
    registry
        .status()
        .into_iter()
        .map(|s| PluginManifest {
            component: s.component,
            path: s.path.display().to_string(),
            digest: Some(if s.digest.starts_with("sha256:") { s.digest } else { format!("sha256:{}", s.digest) }),
            version: Some(s.plugin_version),
            schema_version: Some(s.schema_version),
        })
        .collect()
}

/// Plugin lines of a manifest from the configured files (when no node is at hand): each file's
/// sha256, and its version from `describe` when the plugin loads (from the node's compile cache
/// when it is warm; a plugin that does not load is listed with its digest only).
pub fn plugins_from_config(config: &Config) -> Vec<PluginManifest> {
    use sha2::Digest as _;
    let runtime = crate::plugin::Runtime::new(crate::plugin::RuntimeConfig { cache_dir: config.cache_dir(), ..Default::default() });
    config
        .components
        .iter()
        .map(|c| {
            let bytes = std::fs::read(&c.plugin).ok();
            let loaded = match (&runtime, &bytes) {
                (Ok(rt), Some(b)) => rt.load(&c.name, b, c.limits.clone()).ok(),
                _ => None,
            };
            PluginManifest {
                component: c.name.clone(),
                path: c.plugin.display().to_string(),
                digest: bytes.as_ref().map(|b| format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))),
                version: loaded.as_ref().map(|p| p.info().plugin_version.clone()),
                schema_version: loaded.as_ref().map(|p| p.info().schema_version),
            }
        })
        .collect()
}

/// What `GET /v1/admin/backup` shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BackupStatus {
    pub target: String,
    /// The log archive runs.
    pub archive: bool,
    /// Where the archive reads committed versions from: `commit tap` (every version, inside a
    /// running node) or `store` (the latest version of each key, without a node); `off`.
    pub archive_source: String,
    /// Everything up to this feed position is in archive segment files.
    pub archive_seq: u64,
    /// Read, not yet in a segment file.
    pub archive_pending: usize,
    pub archive_segments_written: u64,
    pub last_segment: Option<String>,
    /// Times the archive fell behind the writer by more than the tap's bound and re-read the
    /// store (versions overwritten meanwhile are then not archived separately).
    pub archive_gaps: u64,
    /// Versions the archive holds no copy of (overwritten before they could be read).
    pub archive_unarchived: u64,
    pub last_snapshot: Option<SnapshotInfo>,
    pub next_scheduled: Vec<NextSnapshot>,
    pub snapshots_taken: u64,
    pub snapshots_failed: u64,
    /// The peer whose inbox receives each scheduled snapshot (`[backup] peer`).
    pub peer: Option<String>,
    pub last_peer_send: Option<PeerSend>,
    pub peer_sends_ok: u64,
    pub peer_sends_failed: u64,
    /// The newest snapshot not yet in the peer's inbox, sent again until it is (or a newer one
    /// is): after 5 s, then twice as long each time, up to 5 minutes.
    pub peer_retry: Option<PeerRetry>,
    /// The last failure of any backup action (kept after a later success, for the record).
    pub last_error: Option<BackupError>,
    /// Areas whose last attempt failed (`archive`, `snapshot`, `peer`, `config`).
    pub failing: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SnapshotInfo {
    pub file: String,
    pub scope: String,
    pub created_ms: u64,
    pub created: String,
    pub last_seq: u64,
    pub records: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NextSnapshot {
    pub scope: String,
    pub due_ms: u64,
    pub due: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PeerSend {
    pub peer: String,
    pub file: String,
    pub at_ms: u64,
    pub ok: bool,
    /// Where the peer stored it, or why it was not sent (the snapshot is then only in the local
    /// target).
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PeerRetry {
    pub file: String,
    /// Failed sends of it so far.
    pub attempts: u32,
    pub next_ms: u64,
    pub next: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BackupError {
    pub at_ms: u64,
    pub at: String,
    pub message: String,
}

type SharedStatus = Arc<Mutex<BackupStatus>>;

fn update(status: &SharedStatus, f: impl FnOnce(&mut BackupStatus)) {
    f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
}

/// Records a failure of one area (`archive`, `snapshot`, `peer`, `config`): `last_error`, and
/// the area is failing until its next success.
fn note_error(status: &SharedStatus, area: &str, message: String) {
    let at_ms = time::now_ms();
    update(status, |s| {
        s.last_error = Some(BackupError { at_ms, at: time::format_ms(at_ms), message });
        if !s.failing.iter().any(|a| a == area) {
            s.failing.push(area.to_owned());
            s.failing.sort();
        }
    });
}

fn note_ok(status: &SharedStatus, area: &str) {
    update(status, |s| s.failing.retain(|a| a != area));
}

struct View(SharedStatus);

impl BackupView for View {
    fn status(&self) -> serde_json::Value {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        serde_json::to_value(s).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        metrics_text(&self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Prometheus lines of the backup thread.
pub fn metrics_text(s: &BackupStatus) -> String {
    let mut out = String::new();
    let mut line = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
    };
    let last = s.last_snapshot.as_ref();
    line(
        "tandem_backup_last_snapshot_timestamp_seconds",
        "gauge",
        "When the newest snapshot in the target was taken (0: none).",
        format!("{}", last.map_or(0.0, |l| l.created_ms as f64 / 1000.0)),
    );
    line(
        "tandem_backup_last_snapshot_seq",
        "gauge",
        "Feed position of the newest snapshot.",
        format!("{}", last.map_or(0, |l| l.last_seq)),
    );
    let next = s.next_scheduled.iter().map(|n| n.due_ms).min();
    line(
        "tandem_backup_next_snapshot_timestamp_seconds",
        "gauge",
        "When the next scheduled snapshot is due (0: no schedule).",
        format!("{}", next.map_or(0.0, |n| n as f64 / 1000.0)),
    );
    line("tandem_backup_snapshots_total", "counter", "Scheduled snapshots taken since start.", s.snapshots_taken.to_string());
    line(
        "tandem_backup_snapshot_failures_total",
        "counter",
        "Scheduled snapshots that failed since start.",
        s.snapshots_failed.to_string(),
    );
    line("tandem_backup_archive_seq", "gauge", "Everything up to this feed position is in archive segments.", s.archive_seq.to_string());
    line("tandem_backup_archive_pending", "gauge", "Versions read by the archive and not yet in a segment.", s.archive_pending.to_string());
    line(
        "tandem_backup_archive_segments_total",
        "counter",
        "Archive segments written since start.",
        s.archive_segments_written.to_string(),
    );
    line(
        "tandem_backup_archive_gaps_total",
        "counter",
        "Times the archive fell behind the writer and re-read the store.",
        s.archive_gaps.to_string(),
    );
    line(
        "tandem_backup_archive_unarchived_total",
        "counter",
        "Versions not archived separately (overwritten before the archive read them).",
        s.archive_unarchived.to_string(),
    );
    line("tandem_backup_peer_sends_total", "counter", "Snapshots stored by the peer's inbox since start.", s.peer_sends_ok.to_string());
    line(
        "tandem_backup_peer_send_failures_total",
        "counter",
        "Snapshots that could not be sent to the peer (kept in the local target).",
        s.peer_sends_failed.to_string(),
    );
    line(
        "tandem_backup_error",
        "gauge",
        "1 while the last attempt of some backup action (archive, snapshot, peer send) failed.",
        u8::from(!s.failing.is_empty()).to_string(),
    );
    out
}

/// Starts the backup thread of a node if its configuration names a backup target: the archive
/// takes every committed version from the node's commit tap, and `GET /v1/admin/backup` and
/// `/metrics` show its status.
pub fn start(node: &Arc<Node>) -> anyhow::Result<Option<BackupService>> {
    let config = node.config();
    let Some(target) = config.raw.backup.target_dir(&config.file) else { return Ok(None) };
    let plugins = plugins_from_registry(node.registry());
    let svc = spawn_with(config, &target, plugins, Some(node.clone()))?;
    node.set_backup_view(Arc::new(View(svc.status.clone())));
    Ok(Some(svc))
}

/// Starts the backup thread for the store of `config` with no node: the archive reads the
/// store (tests, tools).
pub fn spawn(
    config: &Config,
    target: &Path,
    plugins: Vec<PluginManifest>,
    _seq: Option<watch::Receiver<u64>>,
) -> anyhow::Result<BackupService> {
    spawn_with(config, target, plugins, None)
}

fn spawn_with(config: &Config, target: &Path, plugins: Vec<PluginManifest>, node: Option<Arc<Node>>) -> anyhow::Result<BackupService> {
    let section = config.raw.backup.clone();
    let plans = section.plans().map_err(|p| anyhow::anyhow!("backup.schedule in {}: {p}", config.file.display()))?;
    let store_path = config.store_path();
    let archive_opts = section.archive.then(|| ArchiverOptions {
        segment_bytes: usize::try_from(section.segment_mb << 20).unwrap_or(usize::MAX),
        segment_age: section.segment_age(),
    });
    let status: SharedStatus = Arc::new(Mutex::new(BackupStatus {
        target: target.display().to_string(),
        archive: section.archive,
        archive_source: match (section.archive, node.is_some()) {
            (false, _) => "off",
            (true, true) => "commit tap",
            (true, false) => "store",
        }
        .to_owned(),
        peer: section.peer.clone(),
        ..Default::default()
    }));
    let peer = match &section.peer {
        None => None,
        Some(name) => match peer::PeerTarget::from_config(config, name) {
            Ok(p) => Some(p),
            Err(e) => {
                let msg = format!("backup.peer: {e:#}; snapshots stay in the local target only");
                tracing::error!("{msg}");
                note_error(&status, "config", msg);
                None
            }
        },
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut worker = Worker {
        store_path,
        target: target.to_path_buf(),
        plans,
        retention: section.retention(),
        level: section.level,
        plugins,
        archive_opts,
        archiver: None,
        last_open: None,
        tap: None,
        caught_up: false,
        job: None,
        unsent: peer.as_ref().and_then(|p| unsent_at_start(target, &p.peer.name)),
        failed: std::collections::HashMap::new(),
        node,
        peer,
        status: status.clone(),
        stop: stop.clone(),
    };
    let thread = std::thread::Builder::new().name("tandem-backup".into()).spawn(move || worker.run())?;
    tracing::info!(target = %target.display(), "backup: archive and schedules running");
    Ok(BackupService { stop, thread: Some(thread), status })
}

struct Worker {
    store_path: PathBuf,
    target: PathBuf,
    plans: Vec<Plan>,
    retention: policy::Retention,
    level: i32,
    plugins: Vec<PluginManifest>,
    archive_opts: Option<ArchiverOptions>,
    archiver: Option<Archiver>,
    /// When opening the archiver was last tried (the target may be unreachable at start).
    last_open: Option<Instant>,
    /// The node's commit tap, once subscribed.
    tap: Option<TapReceiver>,
    /// The archive read the store up to the tap's start.
    caught_up: bool,
    /// The thread taking scheduled snapshots (or sending one again), if one runs.
    job: Option<JoinHandle<JobOutcome>>,
    /// The newest snapshot the peer's inbox lacks, while one does.
    unsent: Option<Unsent>,
    failed: std::collections::HashMap<String, Instant>,
    node: Option<Arc<Node>>,
    peer: Option<peer::PeerTarget>,
    status: SharedStatus,
    stop: Arc<AtomicBool>,
}

/// What a snapshot thread did.
#[derive(Default)]
struct JobOutcome {
    /// Scopes whose snapshot failed.
    failed: Vec<String>,
    /// Each snapshot offered to the peer, in the order taken, and whether the peer stored it.
    sent: Vec<(PathBuf, bool)>,
}

/// A snapshot to send to the peer again.
struct Unsent {
    path: PathBuf,
    attempts: u32,
    next: Instant,
}

/// The file beside a target's snapshots that names the last one `peer` stored (so that a
/// snapshot still unsent when the node stopped is sent after it starts again).
fn sent_marker(snapshots: &Path, peer: &str) -> PathBuf {
    snapshots.join(format!(".sent-to-{peer}"))
}

/// Records that `peer` stored the snapshot at `path` (beside it, in [`sent_marker`], when it is
/// in a target's `snapshots` directory), unless a newer one is recorded already. The marker is
/// written whole, synced, and renamed into place.
pub fn note_stored(path: &Path, peer: &str) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return };
    if dir.file_name().is_none_or(|d| d != "snapshots") {
        return;
    }
    let marker = sent_marker(dir, peer);
    let name = name.to_string_lossy();
    // Snapshot names begin with their creation time: the greater name is the newer snapshot.
    if std::fs::read_to_string(&marker).is_ok_and(|recorded| recorded.trim() > name.as_ref()) {
        return;
    }
    if let Err(e) = crate::replication::write_durably(&marker, name.as_bytes()) {
        tracing::warn!(file = %marker.display(), error = %e, "backup: cannot record the last snapshot the peer stored");
    }
}

/// The newest snapshot of the target, unless the marker says `peer` stored it: what the backup
/// thread sends first (a peer that holds it already says so at once).
fn unsent_at_start(target: &Path, peer: &str) -> Option<Unsent> {
    let newest = snapshot::newest(target)?;
    let name = newest.file_name()?.to_string_lossy().into_owned();
    let sent = std::fs::read_to_string(sent_marker(&snapshot::dir(target), peer)).unwrap_or_default();
    (sent.trim() != name).then(|| Unsent { path: newest, attempts: 0, next: Instant::now() })
}

/// The wait before sending a snapshot again after `attempts` failed sends: 5 s, doubling, at
/// most 5 minutes.
fn retry_after(attempts: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1 << attempts.saturating_sub(1).min(6)).min(300))
}

impl Worker {
    /// Takes what a finished snapshot thread did: the scopes to retry, and what the peer lacks.
    fn took(&mut self, outcome: JobOutcome) {
        for label in outcome.failed {
            self.failed.insert(label, Instant::now());
        }
        for (path, ok) in outcome.sent {
            if ok {
                // Sent: that one, and any older one, is in the inbox or superseded.
                self.unsent = None;
            } else {
                let attempts = self.unsent.as_ref().filter(|u| u.path == path).map_or(0, |u| u.attempts) + 1;
                self.unsent = Some(Unsent { path, attempts, next: Instant::now() + retry_after(attempts) });
            }
        }
        let retry = self.unsent.as_ref().map(|u| {
            let next_ms = time::now_ms() + u64::try_from(u.next.saturating_duration_since(Instant::now()).as_millis()).unwrap_or(0);
            PeerRetry { file: u.path.display().to_string(), attempts: u.attempts, next_ms, next: time::format_ms(next_ms) }
        });
        update(&self.status, |s| s.peer_retry = retry);
    }

    /// Sends the snapshot the peer lacks again, once its wait is over (and no snapshot thread
    /// runs); a snapshot deleted by retention meanwhile is given up.
    fn retry_send(&mut self) {
        let (Some(peer), Some(u)) = (&self.peer, &self.unsent) else { return };
        if self.job.is_some() || Instant::now() < u.next {
            return;
        }
        if !u.path.is_file() {
            tracing::warn!(file = %u.path.display(), "backup: the snapshot to send to the peer again is gone (retention); the next one is sent");
            self.unsent = None;
            update(&self.status, |s| s.peer_retry = None);
            return;
        }
        let (peer, path, status) = (peer.clone(), u.path.clone(), self.status.clone());
        let job = std::thread::Builder::new().name("tandem-snapshot".into()).spawn(move || {
            tracing::info!(peer = %peer.peer.name, file = %path.display(), "backup: sending a snapshot to the peer again");
            let ok = send_to_peer(&peer, &path, &status);
            JobOutcome { failed: Vec::new(), sent: vec![(path, ok)] }
        });
        match job {
            Ok(j) => self.job = Some(j),
            Err(e) => tracing::error!(error = %e, "backup: cannot start a thread to send a snapshot again"),
        }
    }

    fn run(&mut self) {
        let mut last_schedule_check: Option<Instant> = None;
        loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            self.open_archiver();
            if self.archiver.is_some() {
                if let Err(e) = self.archive_pass(stopping) {
                    let msg = format!("the log archive: {e:#}");
                    tracing::warn!(error = %msg, "backup: archive pass failed; retrying");
                    note_error(&self.status, "archive", msg);
                }
                self.note_archive();
            }
            if stopping {
                if let Some(a) = self.archiver.as_mut() {
                    match a.flush() {
                        Ok(Some(p)) => update(&self.status, |s| {
                            s.archive_segments_written += 1;
                            s.last_segment = Some(p.display().to_string());
                        }),
                        Ok(None) => {}
                        Err(e) => tracing::error!(error = %format!("{e:#}"), "backup: the last archive segment could not be written"),
                    }
                }
                self.note_archive();
                if let Some(job) = self.job.take() {
                    let _ = job.join();
                }
                return;
            }
            if last_schedule_check.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_schedule_check = Some(Instant::now());
                self.run_schedules(time::now_ms());
                self.retry_send();
            }
            if self.tap.is_none() || self.archiver.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// One pass of the archive. With a node: subscribe to its commit tap, read the store up to
    /// where the tap starts, then take every committed version from the tap (waiting up to 20 ms
    /// for one). Without: read the store.
    fn archive_pass(&mut self, stopping: bool) -> anyhow::Result<()> {
        let Some(a) = self.archiver.as_mut() else { return Ok(()) };
        let Some(node) = &self.node else {
            a.poll()?;
            return Ok(());
        };
        if self.tap.is_none() {
            self.tap = Some(node.commit_tap().subscribe());
            self.caught_up = false;
        }
        let Some(tap) = self.tap.as_ref() else { return Ok(()) };
        if !self.caught_up {
            let before = a.cursor();
            let read = a.poll_until(tap.from_seq)? as u64;
            self.caught_up = true;
            // Seqs in the range read from the store that it no longer holds: overwritten (or
            // purged) before the archive could read them.
            let lacking = tap.from_seq.saturating_sub(before).saturating_sub(read);
            if lacking > 0 {
                update(&self.status, |s| s.archive_unarchived += lacking);
            }
            tracing::debug!(from = before, to = tap.from_seq, read, lacking, "backup: archive read the store up to the commit tap");
        }
        let mut wait = if stopping { Duration::ZERO } else { Duration::from_millis(20) };
        let mut closed = false;
        // Bounded, so that segments and schedules get their turn under a steady stream; stopping
        // drains everything.
        let mut groups = 0usize;
        loop {
            if !stopping && groups >= 4096 {
                break;
            }
            groups += 1;
            let got = if wait.is_zero() { tap.try_recv() } else { tap.recv_timeout(wait) };
            wait = Duration::ZERO;
            match got {
                Ok(Some(rows)) => {
                    let missing = a.push(rows);
                    if missing > 0 {
                        let msg = format!("the log archive lacks {missing} versions before seq {}", a.cursor());
                        tracing::warn!("backup: {msg}");
                        update(&self.status, |s| s.archive_unarchived += missing);
                        note_error(&self.status, "archive", msg);
                    }
                }
                Ok(None) => break,
                Err(TapClosed) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            self.tap = None;
            let cursor = a.cursor();
            if node.commit_tap().overflows() > self.status.lock().unwrap_or_else(|e| e.into_inner()).archive_gaps {
                let msg = format!(
                    "the log archive fell behind the writer (more versions pending than the commit tap holds) at seq {cursor}: it reads the store to catch up, and versions overwritten meanwhile are not archived separately"
                );
                tracing::warn!("backup: {msg}");
                update(&self.status, |s| s.archive_gaps += 1);
                note_error(&self.status, "archive", msg);
            }
        }
        if a.due() {
            let seg = a.flush()?;
            if let Some(p) = seg {
                update(&self.status, |s| {
                    s.archive_segments_written += 1;
                    s.last_segment = Some(p.display().to_string());
                });
                note_ok(&self.status, "archive");
            }
        }
        Ok(())
    }

    fn note_archive(&self) {
        if let Some(a) = &self.archiver {
            let (seq, pending) = (a.flushed_seq(), a.pending());
            update(&self.status, |s| {
                s.archive_seq = seq;
                s.archive_pending = pending;
            });
        }
    }

    /// Opens the archiver if the archive is on and it is not open yet (retried every 5 s: a
    /// target that is not mounted yet must not stop the node, but it is logged every time).
    fn open_archiver(&mut self) {
        let Some(opts) = &self.archive_opts else { return };
        if self.archiver.is_some() || self.last_open.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
            return;
        }
        self.last_open = Some(Instant::now());
        match Archiver::open(&self.store_path, &self.target, opts.clone()) {
            Ok(a) => {
                tracing::info!(target = %self.target.display(), from_seq = a.flushed_seq(), "backup: log archive running");
                self.archiver = Some(a);
                self.tap = None;
            }
            Err(e) => {
                let msg = format!("cannot start the log archive in {}: {e:#}; retrying in 5 s", self.target.display());
                tracing::error!("backup: {msg}");
                note_error(&self.status, "archive", msg);
            }
        }
    }

    /// Starts the snapshots that are due, on a thread of their own so the archive keeps up
    /// meanwhile (one batch at a time), then applies retention and sends them to the peer.
    fn run_schedules(&mut self, now: u64) {
        if let Some(job) = self.job.take() {
            if !job.is_finished() {
                self.job = Some(job);
                return;
            }
            let outcome = job.join().unwrap_or_default();
            self.took(outcome);
        }
        if self.plans.is_empty() {
            return;
        }
        let existing = snapshot::list(&self.target);
        let mut due = Vec::new();
        let mut next = Vec::new();
        let mut newest: Option<SnapshotInfo> = None;
        for (p, m) in &existing {
            if let Ok(m) = m
                && newest.as_ref().is_none_or(|n| m.created_ms >= n.created_ms)
            {
                newest = Some(SnapshotInfo {
                    file: p.display().to_string(),
                    scope: m.scope_label(),
                    created_ms: m.created_ms,
                    created: m.created.clone(),
                    last_seq: m.last_seq,
                    records: m.records(),
                });
            }
        }
        for plan in &self.plans {
            let label = plan.scope_label();
            let last =
                existing.iter().filter_map(|(_, m)| m.as_ref().ok()).filter(|m| m.scope_label() == label).map(|m| m.created_ms).max();
            let due_ms = plan.schedule.next_due(last, now);
            next.push(NextSnapshot { scope: label.clone(), due_ms, due: time::format_ms(due_ms) });
            // A failed snapshot is retried after a minute, not at every pass.
            if self.failed.get(&label).is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
                continue;
            }
            if due_ms <= now {
                due.push(plan.clone());
            }
        }
        update(&self.status, |s| {
            s.next_scheduled = next;
            s.last_snapshot = newest;
        });
        if due.is_empty() {
            return;
        }
        let (store_path, target, level, plugins, retention) =
            (self.store_path.clone(), self.target.clone(), self.level, self.plugins.clone(), self.retention);
        let (status, peer) = (self.status.clone(), self.peer.clone());
        let job = std::thread::Builder::new().name("tandem-snapshot".into()).spawn(move || {
            let mut failed = Vec::new();
            let mut took = Vec::new();
            for plan in due {
                let label = plan.scope_label();
                let opts = CreateOptions { components: plan.components.clone(), level, plugins: plugins.clone(), ..Default::default() };
                match snapshot::create(&store_path, &target, &opts) {
                    Ok((path, m)) => {
                        tracing::info!(file = %path.display(), records = m.records(), seq = m.last_seq, "backup: snapshot taken");
                        let next_ms = plan.schedule.next_due(Some(m.created_ms), time::now_ms());
                        update(&status, |s| {
                            for n in s.next_scheduled.iter_mut().filter(|n| n.scope == label) {
                                n.due_ms = next_ms;
                                n.due = time::format_ms(next_ms);
                            }
                            s.snapshots_taken += 1;
                            s.last_snapshot = Some(SnapshotInfo {
                                file: path.display().to_string(),
                                scope: m.scope_label(),
                                created_ms: m.created_ms,
                                created: m.created.clone(),
                                last_seq: m.last_seq,
                                records: m.records(),
                            });
                        });
                        note_ok(&status, "snapshot");
                        took.push(path);
                    }
                    Err(e) => {
                        let msg = format!("scheduled snapshot of {label} failed: {e:#}; retrying in 60 s");
                        tracing::error!("backup: {msg}");
                        update(&status, |s| s.snapshots_failed += 1);
                        note_error(&status, "snapshot", msg);
                        failed.push(label);
                    }
                }
            }
            let mut sent = Vec::new();
            if let Some(peer) = &peer {
                for path in &took {
                    sent.push((path.clone(), send_to_peer(peer, path, &status)));
                }
            }
            if !took.is_empty() {
                apply_retention(&target, time::now_ms(), retention);
            }
            JobOutcome { failed, sent }
        });
        match job {
            Ok(j) => self.job = Some(j),
            Err(e) => {
                tracing::error!(error = %e, "backup: cannot start a snapshot thread");
                note_error(&self.status, "snapshot", format!("cannot start a snapshot thread: {e}"));
            }
        }
    }
}

/// Sends a snapshot to the peer's inbox and records the outcome; a peer that is down leaves the
/// snapshot in the local target only (until it is sent again), and the status says so. Returns
/// whether the peer stored it.
fn send_to_peer(peer: &peer::PeerTarget, path: &Path, status: &SharedStatus) -> bool {
    let at_ms = time::now_ms();
    let file = path.display().to_string();
    match peer.send_blocking(path) {
        Ok(stored) => {
            tracing::info!(
                peer = %stored.peer,
                file = %file,
                stored = %stored.path,
                resumed_from = stored.resumed_from,
                "backup: snapshot stored in the peer's inbox"
            );
            update(status, |s| {
                s.peer_sends_ok += 1;
                s.last_peer_send = Some(PeerSend {
                    peer: stored.peer.clone(),
                    file,
                    at_ms,
                    ok: true,
                    message: format!("stored by {} as {}", stored.peer, stored.path),
                });
            });
            note_ok(status, "peer");
            note_stored(path, &peer.peer.name);
            true
        }
        Err(e) => {
            let msg = format!("{e:#}; the snapshot is in the local target only until it is sent again");
            tracing::warn!(peer = %peer.peer.name, "backup: {msg}");
            update(status, |s| {
                s.peer_sends_failed += 1;
                s.last_peer_send = Some(PeerSend { peer: peer.peer.name.clone(), file, at_ms, ok: false, message: msg.clone() });
            });
            note_error(status, "peer", msg);
            false
        }
    }
}

impl Archiver {
    /// A poll when nothing was committed: writes the pending segment once it is old enough.
    pub fn poll_idle(&mut self) -> anyhow::Result<()> {
        if self.due() {
            self.flush()?;
        }
        Ok(())
    }
}

/// Deletes expired snapshots, then archive segments older than the oldest kept full snapshot.
/// Returns the files deleted.
pub fn apply_retention(target: &Path, now: u64, retention: policy::Retention) -> Vec<PathBuf> {
    let listed = snapshot::list(target);
    let snaps: Vec<Snap> = listed
        .iter()
        .filter_map(|(p, m)| {
            m.as_ref().ok().map(|m| Snap { id: p.display().to_string(), created_ms: m.created_ms, scope: m.scope_label() })
        })
        .collect();
    let gone = policy::expired(now, &snaps, retention);
    let mut deleted = Vec::new();
    for id in &gone {
        let p = PathBuf::from(id);
        match std::fs::remove_file(&p) {
            Ok(()) => deleted.push(p),
            Err(e) => tracing::warn!(file = %id, error = %e, "backup: cannot delete an expired snapshot"),
        }
    }
    let oldest_full = listed
        .iter()
        .filter(|(p, _)| !gone.contains(&p.display().to_string()))
        .filter_map(|(_, m)| m.as_ref().ok())
        .filter(|m| m.is_full())
        .map(|m| m.last_seq)
        .min();
    let segs: Vec<(String, u64)> =
        archive::list(target).into_iter().filter_map(|(p, m)| m.ok().map(|m| (p.display().to_string(), m.last_seq))).collect();
    for id in policy::expired_segments(&segs, oldest_full) {
        let p = PathBuf::from(&id);
        match std::fs::remove_file(&p) {
            Ok(()) => deleted.push(p),
            Err(e) => tracing::warn!(file = %id, error = %e, "backup: cannot delete an expired archive segment"),
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_sent_again_after_a_doubling_wait_of_at_most_five_minutes() {
        let waits: Vec<u64> = (1..=9).map(|a| retry_after(a).as_secs()).collect();
        assert_eq!(waits, vec![5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(retry_after(0).as_secs(), 5);
        assert_eq!(retry_after(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn at_start_the_newest_snapshot_is_unsent_unless_the_marker_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(unsent_at_start(dir.path(), "b").is_none(), "no snapshot, nothing to send");
        let snaps = snapshot::dir(dir.path());
        std::fs::create_dir_all(&snaps).expect("dir");
        std::fs::write(sent_marker(&snaps, "b"), "20260101T000000000Z-a-all.tsnap").expect("marker");
        assert!(unsent_at_start(dir.path(), "b").is_none(), "a marker without snapshots sends nothing");
    }

    #[test]
    fn the_marker_names_the_newest_snapshot_stored_and_only_in_a_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snaps = snapshot::dir(dir.path());
        std::fs::create_dir_all(&snaps).expect("dir");
        let (older, newer) = ("20260101T000000000Z-a-all.tsnap", "20260102T000000000Z-a-all.tsnap");
        let marker = || std::fs::read_to_string(sent_marker(&snaps, "b")).ok();
        note_stored(&snaps.join(newer), "b");
        assert_eq!(marker().as_deref(), Some(newer));
        note_stored(&snaps.join(older), "b");
        assert_eq!(marker().as_deref(), Some(newer), "an older snapshot sent by hand does not move it back");
        note_stored(&dir.path().join(older), "b");
        assert!(!dir.path().join(".sent-to-b").exists(), "a file outside a target leaves no marker");
    }
}
