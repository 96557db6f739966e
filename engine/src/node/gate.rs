//! A hook through which replication takes part in local writes: it refuses writes on a warm
//! standby (naming the primary), and holds a `standby`-ack write until a member of the
//! synchronous set has it on disk. A node without replication has no gate.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use super::error::NodeError;

/// A future a write waits on after its commit.
pub type AckWait = Pin<Box<dyn Future<Output = Result<(), NodeError>> + Send>>;

/// An administrative action of replication (promote, demote) and its report.
pub type AdminWait = Pin<Box<dyn Future<Output = Result<serde_json::Value, NodeError>> + Send>>;

fn no_replication() -> AdminWait {
    Box::pin(async { Err(NodeError::Refused("replication is not running on this node (no peers or no cluster credentials)".into())) })
}

/// What replication decides about local writes.
pub trait WriteGate: Send + Sync {
    /// Refuses a local write to `component` (e.g. this node is a warm standby for it).
    fn refuse(&self, component: &str) -> Option<NodeError>;
    /// After a local write committed at `seq`: what to wait for before acknowledging it.
    fn after_commit(&self, component: &str, seq: u64) -> Option<AckWait>;
    /// Replication's part of `/v1/status`.
    fn status(&self) -> Option<serde_json::Value> {
        None
    }
    /// Replication's lines of `/metrics` (Prometheus text format).
    fn metrics(&self) -> String {
        String::new()
    }
    /// The warm role (`primary`, `demoted`, `standby`) and whether this node takes every write.
    fn role(&self) -> Option<(String, bool)> {
        None
    }
    /// The feed position up to which tombstones may be purged: what every data peer
    /// acknowledged (`None`: no peer holds them back).
    fn purge_horizon(&self) -> Option<u64> {
        None
    }
    /// Makes this node the warm primary in a new epoch.
    fn promote(&self) -> AdminWait {
        no_replication()
    }
    /// Closes warm writes and waits (up to `timeout`) for the standbys to have everything.
    fn demote(&self, timeout: std::time::Duration) -> AdminWait {
        let _ = timeout;
        no_replication()
    }
}

/// The node's gate, set once by replication at start.
#[derive(Default)]
pub struct GateCell(OnceLock<Arc<dyn WriteGate>>);

impl GateCell {
    pub fn set(&self, gate: Arc<dyn WriteGate>) -> bool {
        self.0.set(gate).is_ok()
    }
    pub fn get(&self) -> Option<&Arc<dyn WriteGate>> {
        self.0.get()
    }
}
