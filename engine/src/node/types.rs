//! What the node's API returns, shared by the server and the client.

use serde::{Deserialize, Serialize};

use crate::plugin::{Stamp, Violation};

/// A stamp as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampView {
    pub physical: u64,
    pub logical: u32,
    pub node: String,
}

impl From<&Stamp> for StampView {
    fn from(s: &Stamp) -> Self {
        StampView { physical: s.physical, logical: s.logical, node: s.node.clone() }
    }
}

impl From<&StampView> for Stamp {
    fn from(s: &StampView) -> Self {
        Stamp { physical: s.physical, logical: s.logical, node: s.node.clone() }
    }
}

/// The answer to a write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteAck {
    pub component: String,
    pub key: String,
    /// Position of the write in the change feed.
    pub seq: u64,
    pub stamp: StampView,
    /// The record is deleted.
    pub deleted: bool,
    /// False when the write changed nothing (the record already held this value): `seq` and
    /// `stamp` are then those of the version in place.
    pub changed: bool,
    /// True when this is the remembered answer to an earlier request with the same
    /// idempotency key.
    pub replayed: bool,
}

/// A record as readers see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordView {
    pub component: String,
    pub key: String,
    pub value: serde_json::Value,
    pub stamp: StampView,
    pub origin: String,
    pub seq: u64,
}

/// A page of a listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub component: String,
    pub records: Vec<RecordView>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<String>,
}

/// The body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violations: Option<Vec<Violation>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
}

/// A conflict: versions of a record that merged into something invalid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConflictView {
    pub id: String,
    pub component: String,
    pub key: String,
    pub reason: String,
    pub violations: Vec<Violation>,
    /// The versions involved: `{"origin", "stamp", "value"}` each (value null when deleted or
    /// unreadable).
    pub versions: serde_json::Value,
    pub detected_at_ms: u64,
    pub detected_seq: u64,
    pub open: bool,
    pub resolved_seq: Option<u64>,
    pub resolution: Option<String>,
}

/// Answer to resolving a conflict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResolveAck {
    pub conflict: String,
    pub write: WriteAck,
}

/// What `/healthz` says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub node: String,
    /// The warm role when replication runs (`primary`, `demoted`, `standby`), else `data` or `witness`.
    pub role: String,
    /// `data` or `witness`.
    #[serde(default)]
    pub node_role: String,
    #[serde(default)]
    pub epoch: u64,
    /// Can this node serve reads?
    pub reads: bool,
    /// Can this node take writes?
    pub writes: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node: NodeStatus,
    pub store: StoreStatus,
    pub components: Vec<ComponentStatus>,
    pub peers: Vec<PeerStatus>,
    pub witness: Option<PeerStatus>,
    /// Links, positions, lag, per-component digests and alarms (when replication runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub id: String,
    pub role: String,
    pub version: String,
    pub api: String,
    pub listen: String,
    pub mode: String,
    pub epoch: u64,
    pub uptime_s: u64,
    pub hlc: StampView,
    pub wall_ms: u64,
    /// How far the clock's physical part runs ahead of the wall clock (after a step back).
    pub clock_ahead_ms: u64,
    pub clock_max_ahead_ms: u64,
    pub clock_refusals: u64,
    pub last_clock_refusal: Option<String>,
    pub reads: bool,
    pub writes: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreStatus {
    pub path: String,
    pub size_bytes: u64,
    pub wal_bytes: u64,
    pub last_seq: u64,
    pub read_only: bool,
    pub read_only_reason: Option<String>,
    pub commits: u64,
    pub conflicts_open: u64,
    pub idempotency_keys: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    pub mode: String,
    pub priority: String,
    pub preload: String,
    /// Records in the store, tombstones included.
    pub records: u64,
    /// Records that are not deleted.
    pub live: u64,
    pub in_memory: u64,
    pub memory_bytes: u64,
    pub load_ms: f64,
    pub writes: u64,
    pub reads: u64,
    pub refusals: u64,
    pub queue_depth: u64,
    pub queue_capacity: u64,
    pub plugin: PluginView,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PluginView {
    pub version: String,
    pub digest: String,
    pub pinned: bool,
    pub shape: String,
    pub quarantined: bool,
    pub calls: u64,
    pub failures: u64,
    pub fuel: u64,
    pub last_failure: String,
    pub reloads: u64,
    pub last_reload_error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub address: String,
    pub profile: String,
}
