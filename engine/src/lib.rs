//! Tandem: keeps the data of an application's components identical on a primary and its
//! secondaries. See docs/ARCHITECTURE.md for the code map and the invariants.

#![deny(unsafe_code)]

pub mod backup;
pub mod bundled;
pub mod cli;
pub mod conformance;
pub mod failover;
pub mod node;
pub mod peer;
pub mod plugin;
pub mod replication;
