//! The `[backup]` section of a node's configuration.
//!
//! ```toml
//! [backup]
//! target = "/mnt/backup/tandem"   # a local directory (a mounted remote disk in practice)
//! archive = true                  # continuous log archive for point-in-time restore
//! segment_age = "60s"             # an archive segment is written at least this often
//! segment_mb = 8                  # ... or once this much is pending
//! inbox_min_free_mb = 1024        # snapshots received from a peer leave this much free
//! peer = "pbx2"                   # also send each scheduled snapshot to this peer's inbox
//!
//! [[backup.schedule]]             # the whole store every 6 hours
//! every = "6h"
//!
//! [[backup.schedule]]             # trunks and extensions also daily at 02:30 UTC
//! at = "02:30"
//! components = ["trunks", "extensions"]
//!
//! [backup.retention]
//! keep_last = 7
//! keep_daily_days = 14
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::policy::{Retention, Schedule, parse_duration_ms};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupSection {
    /// The backup target directory (relative to the config file). None: no backups.
    pub target: Option<PathBuf>,
    /// Write the continuous log archive while the node runs.
    pub archive: bool,
    pub segment_age: String,
    pub segment_mb: u64,
    /// zstd level of snapshots.
    pub level: i32,
    /// A `[[peer]]` whose inbox also receives each scheduled snapshot (over the peer protocol)
    /// when it is up; the local target always keeps it.
    pub peer: Option<String>,
    /// Space (MiB) that snapshots received in this node's inbox must leave free on its disk, for
    /// the node's own store: an offer that would eat into it is refused before any byte flows.
    pub inbox_min_free_mb: u64,
    #[serde(rename = "schedule")]
    pub schedules: Vec<ScheduleSection>,
    pub retention: RetentionSection,
}

impl Default for BackupSection {
    fn default() -> Self {
        BackupSection {
            target: None,
            archive: true,
            segment_age: "60s".to_owned(),
            segment_mb: 8,
            level: 3,
            peer: None,
            inbox_min_free_mb: 1024,
            schedules: Vec::new(),
            retention: RetentionSection::default(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSection {
    /// An interval: "6h", "30m", "1d".
    #[serde(default)]
    pub every: Option<String>,
    /// A time of day, UTC: "02:30".
    #[serde(default)]
    pub at: Option<String>,
    /// Components; empty: the whole store.
    #[serde(default)]
    pub components: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    pub keep_last: u32,
    pub keep_daily_days: u32,
}

impl Default for RetentionSection {
    fn default() -> Self {
        let r = Retention::default();
        RetentionSection { keep_last: r.keep_last, keep_daily_days: r.keep_daily_days }
    }
}

/// A schedule, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub schedule: Schedule,
    /// Sorted; empty: the whole store.
    pub components: Vec<String>,
}

impl Plan {
    pub fn scope_label(&self) -> String {
        if self.components.is_empty() { "all".to_owned() } else { self.components.join("+") }
    }
}

impl BackupSection {
    /// Problems, as (key under `backup.`, problem).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if parse_duration_ms(&self.segment_age).is_none_or(|ms| ms < 100) {
            out.push(("segment_age".to_owned(), format!("{:?} is not a duration of at least 100ms, e.g. \"60s\"", self.segment_age)));
        }
        if self.segment_mb == 0 {
            out.push(("segment_mb".to_owned(), "must be at least 1".to_owned()));
        }
        if !(1..=22).contains(&self.level) {
            out.push(("level".to_owned(), "the zstd level is between 1 and 22".to_owned()));
        }
        if self.target.is_none() && !self.schedules.is_empty() {
            out.push(("target".to_owned(), "schedules need a target directory".to_owned()));
        }
        if self.peer.is_some() && self.target.is_none() {
            out.push(("peer".to_owned(), "snapshots sent to a peer are taken into a local target first: set `target` too".to_owned()));
        }
        for (i, s) in self.schedules.iter().enumerate() {
            if let Err(p) = s.resolve() {
                out.push((format!("schedule[{i}]"), p));
            }
        }
        out
    }

    pub fn plans(&self) -> Result<Vec<Plan>, String> {
        self.schedules.iter().map(ScheduleSection::resolve).collect()
    }

    pub fn retention(&self) -> Retention {
        Retention { keep_last: self.retention.keep_last.max(1), keep_daily_days: self.retention.keep_daily_days }
    }

    pub fn segment_age(&self) -> Duration {
        Duration::from_millis(parse_duration_ms(&self.segment_age).unwrap_or(60_000))
    }

    /// The target, resolved against the configuration file's directory.
    pub fn target_dir(&self, config_file: &Path) -> Option<PathBuf> {
        let t = self.target.as_ref()?;
        if t.is_absolute() {
            return Some(t.clone());
        }
        let base = config_file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Some(base.join(t))
    }
}

impl ScheduleSection {
    fn resolve(&self) -> Result<Plan, String> {
        let schedule = match (&self.every, &self.at) {
            (Some(e), None) => Schedule::parse(e)?,
            (None, Some(a)) => Schedule::parse(&format!("daily {a}"))?,
            _ => return Err("give either `every = \"6h\"` or `at = \"02:30\"`".to_owned()),
        };
        let mut components = self.components.clone();
        components.sort();
        components.dedup();
        Ok(Plan { schedule, components })
    }
}
