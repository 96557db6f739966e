//! Cold backup: snapshots, the log archive, schedules and retention, restore.
//!
//! - [`snapshot`]: a consistent copy of a store (or of some components) as of one change-feed
//!   position, taken through a SQLite read transaction while the node keeps writing; zstd
//!   compressed, sha256 checksummed, with a manifest (components, record counts, per-component
//!   digests, epoch, clock range, engine and plugin versions and digests).
//! - [`archive`]: segments of the change feed written continuously between snapshots, for
//!   point-in-time restore.
//! - [`container`]: the file format both share, and the checks that refuse a truncated or
//!   altered file with a message naming the file and what is wrong.
//! - [`policy`]: schedules (interval or time of day) and retention (keep last N, one a day for D
//!   days) as pure functions.
//! - [`restore`]: a store rebuilt in a temporary file and renamed into place.
//! - [`service`]: the scheduler and archiver thread of a running node.
//! - [`peer`]: snapshots sent to the passive peer's inbox over the peer protocol.
//! - [`config`]: the `[backup]` configuration section.
//!
//! A backup target directory holds `snapshots/*.tsnap` and `archive/*.tseg`.

pub mod archive;
pub mod config;
pub mod container;
pub mod peer;
pub mod policy;
pub mod restore;
pub mod service;
pub mod snapshot;
pub mod time;

pub use config::BackupSection;
pub use container::Corrupt;
