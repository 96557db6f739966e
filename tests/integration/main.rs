//! All integration tests, in one binary (each test binary links wasmtime: one link, not many).

mod backup;
mod backup_node;
mod backup_peer;
mod chaos;
mod failover_auto;
mod failover_manual;
mod node_api;
mod node_api_fuzz;
mod node_cli;
mod node_durability;
mod node_feed;
mod plugins_all;
mod plugins_conformance;
mod plugins_new;
mod plugins_reload;
mod plugins_sandbox;
mod replication;
mod replication_rollback;
mod replication_tombstones;
