//! Why a node refused a request: one enum, each case with a stable code and an HTTP status.

use crate::plugin::{PluginError, Violation};

use super::admission::Shed;
use super::hlc::ClockAhead;
use super::store::StoreError;

/// A refusal or failure of a node operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("unknown component {0:?}: see `tandem status` for this node's components")]
    UnknownComponent(String),
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("no record {key:?} in {component}")]
    NotFound { component: String, key: String },
    #[error("the write breaks {} rule(s) of the component", .0.len())]
    Invalid(Vec<Violation>),
    #[error("not a document of this component: {0}")]
    Malformed(String),
    #[error("{0}")]
    Plugin(PluginError),
    #[error("{0}")]
    QueueFull(Shed),
    #[error("{0}")]
    Shed(Shed),
    #[error("the plugin workers are saturated; retry shortly")]
    Busy,
    #[error("the node is read-only: {0}")]
    DiskFull(String),
    #[error("the node's store failed and it no longer takes writes: {0}")]
    StoreFailed(String),
    #[error("store error: {0}")]
    Store(String),
    #[error("idempotency key {0:?} was already used for a different request")]
    IdempotencyReused(String),
    #[error("{0}")]
    ClockAhead(ClockAhead),
    #[error("no conflict {0:?}")]
    ConflictNotFound(String),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Refused(String),
    #[error("a witness holds no data")]
    Witness,
    /// This node is a warm standby for the component: write to the primary.
    #[error("this node is a warm standby for {component}: write to the primary, {primary}{}", .api.as_deref().map(|a| format!(" (API {a})")).unwrap_or_default())]
    NotPrimary { component: String, primary: String, api: Option<String> },
    /// A `standby`-ack write committed here but no standby confirmed it in time: it may still
    /// reach them. Retry with the same idempotency key.
    #[error(
        "outcome unknown: committed on this node, but no standby of the synchronous set confirmed it within {0} ms; retry with the same idempotency key"
    )]
    OutcomeUnknown(u64),
    /// A warm write committed here, but this node lost its primary's lease before it could be
    /// acknowledged: another node may have taken over without it.
    #[error(
        "outcome unknown: committed on this node, but it lost its primary lease (no quorum of voters heard from it in time) before acknowledging; another node may have taken over: retry on the primary with the same idempotency key"
    )]
    LeaseLost,
}

impl NodeError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            NodeError::UnknownComponent(_) => "unknown_component",
            NodeError::InvalidKey(_) => "invalid_key",
            NodeError::NotFound { .. } => "not_found",
            NodeError::Invalid(_) => "invalid",
            NodeError::Malformed(_) => "malformed",
            NodeError::Plugin(e) => e.code(),
            NodeError::QueueFull(_) => "overloaded",
            NodeError::Shed(_) => "overloaded",
            NodeError::Busy => "busy",
            NodeError::DiskFull(_) => "disk_full",
            NodeError::StoreFailed(_) => "store_failed",
            NodeError::Store(_) => "store_error",
            NodeError::IdempotencyReused(_) => "idempotency_key_reused",
            NodeError::ClockAhead(_) => "clock_ahead",
            NodeError::ConflictNotFound(_) => "not_found",
            NodeError::ShuttingDown => "shutting_down",
            NodeError::Refused(_) => "refused",
            NodeError::Witness => "witness",
            NodeError::NotPrimary { .. } => "not_primary",
            NodeError::OutcomeUnknown(_) => "outcome_unknown",
            NodeError::LeaseLost => "lease_lost",
        }
    }

    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            NodeError::UnknownComponent(_) | NodeError::NotFound { .. } | NodeError::ConflictNotFound(_) | NodeError::Witness => 404,
            NodeError::InvalidKey(_) | NodeError::Malformed(_) => 400,
            NodeError::Invalid(_) | NodeError::ClockAhead(_) | NodeError::Refused(_) => 422,
            NodeError::Plugin(PluginError::Quarantined { .. }) => 503,
            NodeError::Plugin(PluginError::InputTooLarge { .. }) => 413,
            NodeError::Plugin(_) => 500,
            NodeError::QueueFull(_) => 429,
            NodeError::Shed(_) | NodeError::Busy | NodeError::ShuttingDown | NodeError::StoreFailed(_) => 503,
            NodeError::DiskFull(_) => 507,
            NodeError::Store(_) => 500,
            NodeError::IdempotencyReused(_) => 409,
            NodeError::NotPrimary { .. } => 421,
            NodeError::OutcomeUnknown(_) | NodeError::LeaseLost => 504,
        }
    }

    /// Whether the request certainly was not applied (a client may retry it without an
    /// idempotency key). Every refusal here happens before the commit, or the commit failed
    /// as a whole, except a store I/O failure, whose outcome is unknown.
    pub fn outcome_known(&self) -> bool {
        !matches!(self, NodeError::StoreFailed(_) | NodeError::OutcomeUnknown(_) | NodeError::LeaseLost)
    }

    /// The violations, for 422 answers.
    pub fn violations(&self) -> Option<&[Violation]> {
        match self {
            NodeError::Invalid(v) => Some(v),
            _ => None,
        }
    }
}

impl From<StoreError> for NodeError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::DiskFull(m) => NodeError::DiskFull(m),
            StoreError::Io(m) => NodeError::StoreFailed(m),
            StoreError::Refused(m) => NodeError::Refused(m),
            other => NodeError::Store(other.to_string()),
        }
    }
}

impl From<PluginError> for NodeError {
    fn from(e: PluginError) -> Self {
        NodeError::Plugin(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes() {
        assert_eq!(NodeError::Invalid(vec![]).status(), 422);
        assert_eq!(NodeError::DiskFull("x".into()).status(), 507);
        assert_eq!(NodeError::DiskFull("x".into()).code(), "disk_full");
        let q = PluginError::Quarantined { plugin: "p".into(), failures: 5, last: "trap".into() };
        assert_eq!(NodeError::Plugin(q).status(), 503);
        assert_eq!(
            NodeError::Plugin(PluginError::Quarantined { plugin: "p".into(), failures: 5, last: String::new() }).code(),
            "plugin_quarantined"
        );
        assert_eq!(NodeError::QueueFull(Shed::QueueFull { depth: 1, capacity: 1 }).status(), 429);
        assert_eq!(NodeError::from(StoreError::Io("eio".into())).code(), "store_failed");
        assert!(!NodeError::StoreFailed("x".into()).outcome_known());
    }
}
