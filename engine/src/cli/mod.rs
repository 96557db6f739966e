//! Command-line interface: argument definitions and dispatch. Each verb group lives in its own
//! module.

mod backup;
mod demo;
mod node;
mod plugin;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Tandem keeps the data of an application's components identical on redundant servers.
#[derive(Parser, Debug)]
#[command(name = "tandem", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Logging options, common to every verb.
#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log filter, e.g. `info` or `tandem=debug` (also from RUST_LOG).
    #[arg(long, global = true, env = "TANDEM_LOG", default_value = "warn")]
    pub log_level: String,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    pub log_json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show Tandem at work on an embedded default: every bundled plugin loaded, then a real
    /// local cluster (two nodes and a witness on loopback, in temporary directories): warm
    /// replication, concurrent hot writes converging and a failover, with the timings measured.
    Demo(demo::DemoArgs),
    /// Work with component plugins: check, describe, new.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// A node: init, run, and the client verbs.
    #[command(flatten)]
    Node(node::NodeCommand),
    /// Cold backup: take, list, verify and prune snapshots of a node's store.
    #[command(subcommand)]
    Snapshot(backup::SnapshotCommand),
    /// Rebuild a node's store from a snapshot and the log archive, up to now or to a point in time.
    Restore(backup::RestoreArgs),
}

/// Sets up tracing to stderr.
pub fn init_logging(args: &LogArgs) {
    let filter = std::env::var("RUST_LOG").ok().unwrap_or_else(|| {
        // The consensus library reports every unreachable voter at error level: during a
        // failover that is expected, and Tandem's own lines say what matters.
        if args.log_level.contains("openraft") { args.log_level.clone() } else { format!("{},openraft=off", args.log_level) }
    });
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if args.log_json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Plugin(cmd) => plugin::run(cmd),
        Command::Node(cmd) => node::run(cmd),
        Command::Snapshot(cmd) => backup::run(cmd),
        Command::Restore(args) => backup::restore(args),
    }
}
