//! The backup thread of a running node: tails the change feed into the log archive, takes the
//! scheduled snapshots and applies retention. It reads the store through its own connection, so
//! it never waits on, or holds up, the node's writer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::archive::{self, Archiver, ArchiverOptions};
use super::config::Plan;
use super::policy::{self, Snap};
use super::snapshot::{self, CreateOptions, PluginManifest};
use super::time;
use crate::node::{Config, Node};
use crate::plugin::registry::Registry;

/// The running backup thread; dropping it stops the thread after a last archive flush.
pub struct BackupService {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl BackupService {
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

/// Starts the backup thread of a node if its configuration names a backup target.
pub fn start(node: &Arc<Node>) -> anyhow::Result<Option<BackupService>> {
    let config = node.config();
    let Some(target) = config.raw.backup.target_dir(&config.file) else { return Ok(None) };
    let plugins = plugins_from_registry(node.registry());
    spawn(config, &target, plugins, Some(node.watch_seq())).map(Some)
}

/// Starts the backup thread for the store of `config` (tests call this with no node).
pub fn spawn(
    config: &Config,
    target: &Path,
    plugins: Vec<PluginManifest>,
    seq: Option<watch::Receiver<u64>>,
) -> anyhow::Result<BackupService> {
    let section = config.raw.backup.clone();
    let plans = section.plans().map_err(|p| anyhow::anyhow!("backup.schedule in {}: {p}", config.file.display()))?;
    let store_path = config.store_path();
    let archive_opts = section.archive.then(|| ArchiverOptions {
        segment_bytes: usize::try_from(section.segment_mb << 20).unwrap_or(usize::MAX),
        segment_age: section.segment_age(),
    });
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
        force_poll: true,
        job: None,
        failed: std::collections::HashMap::new(),
        seq,
        stop: stop.clone(),
    };
    let thread = std::thread::Builder::new().name("tandem-backup".into()).spawn(move || worker.run())?;
    tracing::info!(target = %target.display(), "backup: archive and schedules running");
    Ok(BackupService { stop, thread: Some(thread) })
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
    /// Read the feed at the next pass even if no commit was signalled.
    force_poll: bool,
    /// The thread taking scheduled snapshots, if one runs; it returns the scopes that failed.
    job: Option<JoinHandle<Vec<String>>>,
    failed: std::collections::HashMap<String, Instant>,
    seq: Option<watch::Receiver<u64>>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn run(&mut self) {
        let mut last_schedule_check: Option<Instant> = None;
        loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            self.open_archiver();
            let changed =
                std::mem::take(&mut self.force_poll) || stopping || self.seq.as_mut().is_none_or(|rx| rx.has_changed().unwrap_or(true));
            if let Some(a) = self.archiver.as_mut() {
                if changed {
                    if let Some(rx) = self.seq.as_mut() {
                        rx.borrow_and_update();
                    }
                    if let Err(e) = a.poll() {
                        self.force_poll = true;
                        tracing::warn!(error = %format!("{e:#}"), "backup: reading the change feed for the archive failed; retrying");
                    }
                } else if let Err(e) = a.poll_idle() {
                    tracing::warn!(error = %format!("{e:#}"), "backup: writing an archive segment failed; retrying");
                }
            }
            if stopping {
                if let Some(a) = self.archiver.as_mut()
                    && let Err(e) = a.flush()
                {
                    tracing::error!(error = %format!("{e:#}"), "backup: the last archive segment could not be written");
                }
                if let Some(job) = self.job.take() {
                    let _ = job.join();
                }
                return;
            }
            if last_schedule_check.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_schedule_check = Some(Instant::now());
                self.run_schedules(time::now_ms());
            }
            std::thread::sleep(Duration::from_millis(20));
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
                self.force_poll = true;
            }
            Err(e) => {
                tracing::error!(target = %self.target.display(), error = %format!("{e:#}"), "backup: cannot start the log archive; retrying in 5 s")
            }
        }
    }

    /// Starts the snapshots that are due, on a thread of their own so the archive keeps up
    /// meanwhile (one batch at a time), then applies retention.
    fn run_schedules(&mut self, now: u64) {
        if self.plans.is_empty() {
            return;
        }
        if let Some(job) = self.job.take() {
            if !job.is_finished() {
                self.job = Some(job);
                return;
            }
            let failed = job.join().unwrap_or_default();
            for label in failed {
                self.failed.insert(label, Instant::now());
            }
        }
        let existing = snapshot::list(&self.target);
        let mut due = Vec::new();
        for plan in &self.plans {
            let label = plan.scope_label();
            // A failed snapshot is retried after a minute, not at every pass.
            if self.failed.get(&label).is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
                continue;
            }
            let last =
                existing.iter().filter_map(|(_, m)| m.as_ref().ok()).filter(|m| m.scope_label() == label).map(|m| m.created_ms).max();
            if plan.schedule.due(last, now) {
                due.push(plan.clone());
            }
        }
        if due.is_empty() {
            return;
        }
        let (store_path, target, level, plugins, retention) =
            (self.store_path.clone(), self.target.clone(), self.level, self.plugins.clone(), self.retention);
        let job = std::thread::Builder::new().name("tandem-snapshot".into()).spawn(move || {
            let mut failed = Vec::new();
            let mut took = false;
            for plan in due {
                let label = plan.scope_label();
                let opts = CreateOptions { components: plan.components, level, plugins: plugins.clone(), ..Default::default() };
                match snapshot::create(&store_path, &target, &opts) {
                    Ok((path, m)) => {
                        took = true;
                        tracing::info!(file = %path.display(), records = m.records(), seq = m.last_seq, "backup: snapshot taken");
                    }
                    Err(e) => {
                        tracing::error!(scope = %label, error = %format!("{e:#}"), "backup: scheduled snapshot failed; retrying in 60 s");
                        failed.push(label);
                    }
                }
            }
            if took {
                apply_retention(&target, time::now_ms(), retention);
            }
            failed
        });
        match job {
            Ok(j) => self.job = Some(j),
            Err(e) => tracing::error!(error = %e, "backup: cannot start a snapshot thread"),
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
