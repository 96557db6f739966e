//! A Tandem node: the SQLite store, the in-memory preload, the write and read paths, the HTTP
//! API, the client, and the node's configuration and observability.
//!
//! - [`config`]: the node's TOML file, validated at start.
//! - [`store`]: SQLite in WAL mode, `synchronous=FULL`; records ordered by `seq` are the change
//!   feed; node metadata (identity, epoch, clock); conflicts; idempotency keys.
//! - [`hlc`]: the hybrid logical clock.
//! - [`memory`]: each component's records in memory.
//! - [`service`]: [`Node`], the write path (lanes, plugin threads, the writer thread with group
//!   commit), reads, remote versions, the change feed, conflicts, status and metrics.
//! - [`tap`]: every committed version for the log archive; the backup thread's status.
//! - [`tail`]: the newest committed versions in memory, read by replication's senders.
//! - [`admission`]: load shedding decisions.
//! - [`api`]: the axum routes; [`server`]: a node serving its API on its own runtime;
//!   [`client`]: a blocking client.

pub mod admission;
pub mod api;
pub mod bench;
pub mod client;
pub mod config;
pub mod digest;
pub mod error;
pub mod gate;
pub mod hlc;
pub mod memory;
pub mod metrics;
pub mod server;
pub mod service;
pub mod store;
pub mod tail;
pub mod tap;
pub mod types;

pub use config::Config;
pub use error::NodeError;
pub use server::Server;
pub use service::{Applied, ApplyMode, Change, Node, NodeOptions, ReadRecord, RemoteVersion};
