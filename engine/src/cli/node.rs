//! The node's verbs: `init`, `run`, and the client verbs `put`, `get`, `delete`, `list`,
//! `status`, `conflicts`.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::node::client::{Client, ClientError};
use crate::node::config::{CONFIG_FILE, Config, Mode, check_host_port, check_name, toml_str};
use crate::node::types::Status;
use crate::node::{NodeOptions, Server};
use crate::plugin::{Limits, Runtime, RuntimeConfig};

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Create a node directory: DIR/tandem.toml with a fresh API token and every bundled plugin
    /// registered, and DIR/plugins with the plugins.
    Init(InitArgs),
    /// Run a node (until SIGINT or SIGTERM).
    Run(RunArgs),
    /// Write a record: JSON from the argument, or from stdin when absent or `-`.
    Put(PutArgs),
    /// Read a record (prints its JSON document).
    Get(GetArgs),
    /// Delete a record.
    Delete(DeleteArgs),
    /// List a component's records in key order.
    List(ListArgs),
    /// Show the node's state: clock, store, components, plugins.
    Status(StatusArgs),
    /// Make this node the warm primary, in a new epoch (a planned switch-over: `tandem demote`
    /// the old primary first; see docs/operations.md, "Switch-over and load balancers").
    Promote(PromoteArgs),
    /// Close this primary's warm writes and wait until its standbys acknowledged everything it
    /// acknowledged (then promote one of them).
    Demote(DemoteArgs),
    /// List, show and resolve conflicts (versions that merged into an invalid record).
    #[command(subcommand)]
    Conflicts(ConflictsCommand),
    /// Measure write throughput against plain SQLite (see docs/BENCHMARKS.md).
    #[command(hide = true)]
    NodeBench(crate::node::bench::BenchArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    Data,
    Witness,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The node directory to create (config, store, plugins, compile cache).
    #[arg(long)]
    pub dir: PathBuf,
    /// This node's name: unique in the cluster; a-z, 0-9 and -.
    #[arg(long)]
    pub node: String,
    /// Peer-protocol address, HOST:PORT (replication between nodes).
    #[arg(long)]
    pub listen: String,
    /// HTTP API address, IP:PORT (keep it on loopback or a private network).
    #[arg(long)]
    pub api: String,
    /// Another node of the cluster, NAME=HOST:PORT (its --listen address). Repeat for each.
    #[arg(long = "peer", value_name = "NAME=ADDR")]
    pub peers: Vec<String>,
    /// The cluster's witness (a data-less voter for two-node clusters), NAME=HOST:PORT.
    #[arg(long, value_name = "NAME=ADDR")]
    pub witness: Option<String>,
    /// Default backup mode of every component.
    #[arg(long, value_enum, default_value_t = Mode::Warm)]
    pub mode: Mode,
    /// `witness` makes a node that holds no data and only votes.
    #[arg(long, value_enum, default_value_t = RoleArg::Data)]
    pub role: RoleArg,
    /// Overwrite an existing DIR/tandem.toml.
    #[arg(long)]
    pub force: bool,
    /// The directory of the first node of the cluster (it holds cluster-ca.pem and
    /// cluster-ca.key): this node's certificate is signed by that cluster CA. Without it a new
    /// cluster CA is made in DIR.
    #[arg(long, value_name = "DIR")]
    pub ca_from: Option<PathBuf>,
    /// The node that takes warm writes (until automatic failover elects one).
    #[arg(long, value_name = "NAME")]
    pub primary: Option<String>,
    /// This node replaces a lost server of the same name in a running cluster with automatic
    /// failover: at its first start it neither votes nor endorses a promotion until it has
    /// caught up with the cluster's consensus (the lost server's votes are forgotten).
    #[arg(long)]
    pub replaces: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The node directory (made by `tandem init`).
    #[arg(long, env = "TANDEM_DIR")]
    pub dir: Option<PathBuf>,
    /// The configuration file, if not DIR/tandem.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Which node a client verb talks to.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The node's directory: its tandem.toml gives the address and the token.
    #[arg(long, env = "TANDEM_DIR")]
    pub dir: Option<PathBuf>,
    /// The node's API address, HOST:PORT (with --token).
    #[arg(long, env = "TANDEM_API")]
    pub api: Option<String>,
    /// The API token (with --api).
    #[arg(long, env = "TANDEM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl Target {
    fn client(&self) -> anyhow::Result<Client> {
        match (&self.dir, &self.api) {
            (Some(_), Some(_)) => bail!("give either --dir or --api, not both"),
            (Some(dir), None) => Client::from_dir(dir),
            (None, Some(api)) => {
                let token = self
                    .token
                    .as_deref()
                    .context("--api needs --token (or TANDEM_TOKEN): the token is in the node's tandem.toml, [api] token")?;
                check_host_port(api).map_err(|p| anyhow::anyhow!("--api: {p}"))?;
                Ok(Client::new(api, token))
            }
            (None, None) if Path::new(CONFIG_FILE).is_file() => Client::from_dir(Path::new(".")),
            (None, None) => bail!("which node? pass --dir DIR (the node's directory) or --api HOST:PORT --token TOKEN"),
        }
    }
}

#[derive(Args, Debug)]
pub struct PutArgs {
    #[command(flatten)]
    pub target: Target,
    /// Component, e.g. `trunks`.
    pub component: String,
    /// Record key.
    pub key: String,
    /// The JSON document; read from stdin when absent or `-`.
    pub json: Option<String>,
    /// Idempotency key (default: a random one, so that retries after a lost answer are safe).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Print the acknowledgement as JSON.
    #[arg(long)]
    pub json_output: bool,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    pub target: Target,
    pub component: String,
    pub key: String,
    /// Print the record with its stamp, origin and seq, not just the document.
    #[arg(long)]
    pub meta: bool,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub target: Target,
    pub component: String,
    pub key: String,
    /// Idempotency key (default: a random one).
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub target: Target,
    pub component: String,
    /// Only keys starting with this.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Start after this key (from a previous page).
    #[arg(long)]
    pub after: Option<String>,
    /// Records per page.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Follow every page.
    #[arg(long)]
    pub all: bool,
    /// Print keys only.
    #[arg(long)]
    pub keys: bool,
    /// Print the records as a JSON array.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print the status as JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DemoteArgs {
    #[command(flatten)]
    pub target: Target,
    /// How long to wait for the standbys to acknowledge everything, in seconds (at most 50).
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ConflictsCommand {
    /// List conflicts (open ones unless --all).
    List(ConflictListArgs),
    /// Show a conflict with the versions involved.
    Show(ConflictShowArgs),
    /// Resolve a conflict by writing the record (JSON from the argument or stdin), or --delete.
    Resolve(ConflictResolveArgs),
}

#[derive(Args, Debug)]
pub struct ConflictListArgs {
    #[command(flatten)]
    pub target: Target,
    /// Only this component's.
    #[arg(long)]
    pub component: Option<String>,
    /// Include resolved conflicts.
    #[arg(long)]
    pub all: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ConflictShowArgs {
    #[command(flatten)]
    pub target: Target,
    pub id: String,
}

#[derive(Args, Debug)]
pub struct ConflictResolveArgs {
    #[command(flatten)]
    pub target: Target,
    pub id: String,
    /// The record's new JSON document; read from stdin when absent or `-`.
    pub json: Option<String>,
    /// Resolve by deleting the record.
    #[arg(long, conflicts_with = "json")]
    pub delete: bool,
}

pub fn run(cmd: NodeCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        NodeCommand::Init(a) => init(a),
        NodeCommand::Run(a) => run_node(a),
        NodeCommand::Put(a) => put(a),
        NodeCommand::Get(a) => get(a),
        NodeCommand::Delete(a) => delete(a),
        NodeCommand::List(a) => list(a),
        NodeCommand::Status(a) => status(a),
        NodeCommand::Promote(a) => promote(a),
        NodeCommand::Demote(a) => demote(a),
        NodeCommand::Conflicts(c) => conflicts(c),
        NodeCommand::NodeBench(a) => crate::node::bench::run(a),
    }
}

fn split_named(flag: &str, value: &str) -> anyhow::Result<(String, String)> {
    let (name, addr) = value.split_once('=').with_context(|| format!("{flag} {value:?}: expected NAME=HOST:PORT"))?;
    check_name(name).map_err(|p| anyhow::anyhow!("{flag} {value:?}: the name {p}"))?;
    check_host_port(addr).map_err(|p| anyhow::anyhow!("{flag} {value:?}: {p}"))?;
    Ok((name.to_owned(), addr.to_owned()))
}

fn init(a: InitArgs) -> anyhow::Result<ExitCode> {
    check_name(&a.node).map_err(|p| anyhow::anyhow!("--node: {p}"))?;
    check_host_port(&a.listen).map_err(|p| anyhow::anyhow!("--listen: {p}"))?;
    a.api.parse::<std::net::SocketAddr>().map_err(|_| anyhow::anyhow!("--api {:?}: expected IP:PORT, e.g. 127.0.0.1:7400", a.api))?;
    let peers = a.peers.iter().map(|p| split_named("--peer", p)).collect::<anyhow::Result<Vec<_>>>()?;
    let witness = a.witness.as_deref().map(|w| split_named("--witness", w)).transpose()?;
    let mut names = std::collections::BTreeSet::from([a.node.clone()]);
    for n in peers.iter().map(|(n, _)| n).chain(witness.iter().map(|(n, _)| n)) {
        if !names.insert(n.clone()) {
            bail!("the node name {n:?} is used twice: every node of a cluster needs its own name");
        }
    }
    let file = a.dir.join(CONFIG_FILE);
    if file.exists() && !a.force {
        bail!("{} already exists: this directory is already a node (pass --force to overwrite its configuration)", file.display());
    }
    std::fs::create_dir_all(&a.dir).with_context(|| format!("cannot create {}", a.dir.display()))?;
    let token = hex::encode(rand::random::<[u8; 24]>());
    let role = match a.role {
        RoleArg::Data => "data",
        RoleArg::Witness => "witness",
    };
    let mut text = String::new();
    text.push_str(&format!(
        "# Tandem node configuration, written by `tandem init`.\n# Reference: docs/operations.md. Relative paths are relative to this file.\n\n[node]\nname = {}\nrole = \"{role}\"\n# Peer protocol (replication between nodes).\nlisten = {}\n# HTTP API (applications, the CLI). Keep it on loopback or a private network.\napi = {}\n\n[api]\n# Bearer token for every API route but /healthz. Keep this file private.\ntoken = \"{token}\"\n\n[cluster]\n# Default mode of every component: cold, warm or hot.\nmode = \"{}\"\n",
        toml_str(&a.node),
        toml_str(&a.listen),
        toml_str(&a.api),
        a.mode
    ));
    if let Some(p) = &a.primary {
        check_name(p).map_err(|e| anyhow::anyhow!("--primary: {e}"))?;
        text.push_str(&format!("# The node that takes warm writes.\nprimary = {}\n", toml_str(p)));
    }
    let (ca, cert, key) = crate::peer::tls::write_node_credentials(&a.dir, &a.node, a.ca_from.as_deref())
        .context("writing the cluster credentials (--ca-from names the first node's directory)")?;
    let rel = |p: &Path| p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    text.push_str(&format!(
        "# Cluster credentials (mutual TLS between nodes): the cluster CA and this node's certificate and key.\nca = {}\ncert = {}\nkey = {}\n",
        toml_str(&rel(&ca)),
        toml_str(&rel(&cert)),
        toml_str(&rel(&key))
    ));
    for (name, addr) in &peers {
        text.push_str(&format!(
            "\n[[peer]]\nname = {}\naddress = {}\n# local (same data center) or geo (another one)\nprofile = \"local\"\n",
            toml_str(name),
            toml_str(addr)
        ));
    }
    if let Some((name, addr)) = &witness {
        text.push_str(&format!("\n[witness]\nname = {}\naddress = {}\n", toml_str(name), toml_str(addr)));
    }
    text.push_str("\n[store]\n# WAL mode; every acknowledged write is fsynced (full or extra).\nsynchronous = \"full\"\n");
    let mut count = 0;
    if a.role == RoleArg::Data {
        let plugins_dir = a.dir.join("plugins");
        let written = crate::bundled::write_all(&plugins_dir)
            .with_context(|| format!("cannot write the bundled plugins to {}", plugins_dir.display()))?;
        // Loading each plugin checks it, tells its shape (reports get a recent-window preload)
        // and fills the compile cache for the first `tandem run`.
        let runtime = Runtime::new(RuntimeConfig { cache_dir: Some(a.dir.join("cache")), ..RuntimeConfig::default() })?;
        for (name, path) in written {
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let plugin = runtime.load(&name, &bytes, Limits::default()).map_err(|e| anyhow::anyhow!("bundled plugin {name}: {e}"))?;
            let info = plugin.info();
            let report = info.retention.is_some() || info.shape == "append-only";
            text.push_str(&format!(
                "\n[components.{}]\n# {} ({} {}, {})\nplugin = \"plugins/{name}.wasm\"\n# Pin the plugin (it is then no longer hot-reloaded when the file changes):\n# digest = \"sha256:{}\"\n",
                plugin.name(),
                info.description.replace('\n', " "),
                plugin.name(),
                info.plugin_version,
                if info.shape.is_empty() { "record" } else { info.shape.as_str() },
                plugin.digest()
            ));
            if report {
                text.push_str("# Reports: only the last 30 days are kept in memory; older ones are read from the store.\npreload = \"recent\"\npreload_window = \"30d\"\n");
            } else {
                text.push_str("preload = \"all\"\n");
            }
            count += 1;
        }
    }
    // The file we write must be one `tandem run` accepts.
    let config = Config::parse(&file, &text).map_err(|e| anyhow::anyhow!("internal error: the generated configuration is invalid: {e}"))?;
    write_private(&file, &text)?;
    if a.replaces {
        let marker = crate::failover::rejoin_marker(&config.data_dir);
        if let Some(dir) = marker.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&marker, b"").with_context(|| format!("cannot write {}", marker.display()))?;
        println!("Replacing a lost server: its first start rejoins the consensus ({})", marker.display());
    }
    let dir = a.dir.display();
    println!("Initialised node {:?} ({role}) in {dir}", a.node);
    println!("  config   {} (holds the API token: keep it private)", file.display());
    if a.role == RoleArg::Data {
        println!("  plugins  {count} bundled plugins in {}", a.dir.join("plugins").display());
    }
    println!("  cluster  {} (CA), {} and {} (this node's credentials)", ca.display(), cert.display(), key.display());
    println!("\nNext:");
    println!("  tandem run --dir {dir}                # start the node (SIGTERM or Ctrl-C stops it)");
    println!("  tandem status --dir {dir}             # from another terminal");
    if a.role == RoleArg::Data {
        println!("  tandem put --dir {dir} trunks carrier-main '{{\"host\": \"sip.carrier.example\"}}'");
        println!("  tandem get --dir {dir} trunks carrier-main");
    }
    if !peers.is_empty() && a.ca_from.is_none() {
        println!("\nThis node made a new cluster CA. On each peer, run `tandem init` with its own --node, --listen and");
        println!(
            "--api, this node as a --peer, and --ca-from DIR where DIR holds copies of {dir}/{} and {}.",
            crate::peer::tls::CA_FILE,
            crate::peer::tls::CA_KEY_FILE
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("toml.tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::io::Write::write_all(&mut f, text.as_bytes()).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all().ok();
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn run_node(a: RunArgs) -> anyhow::Result<ExitCode> {
    let file = match (&a.config, &a.dir) {
        (Some(f), _) => f.clone(),
        (None, Some(d)) => d.join(CONFIG_FILE),
        (None, None) => bail!("which node? pass --dir DIR (a directory made by `tandem init`)"),
    };
    let config = Config::load(&file)?;
    let name = config.node_name().to_owned();
    let server = Server::start(config, NodeOptions::default())?;
    // Cold backup: the log archive and scheduled snapshots, when `[backup] target` is set.
    let backup = crate::backup::service::start(server.node())?;
    let status = server.node().status();
    let records: u64 = status.components.iter().map(|c| c.live).sum();
    println!(
        "node {name} serving the API on {} ({} components, {records} records, store {})",
        server.api_addr(),
        status.components.len(),
        status.store.path
    );
    server.wait_for_signal()?;
    println!("node {name} stopping");
    server.shutdown();
    if let Some(b) = backup {
        b.stop();
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints an API refusal and returns exit code 1; passes other errors up.
fn refused(e: ClientError) -> anyhow::Result<ExitCode> {
    match e {
        ClientError::Api { status, body } => {
            eprintln!("error: {} [{}, HTTP {status}]", body.error.message, body.error.code);
            for v in body.error.violations.unwrap_or_default() {
                let field = if v.field.is_empty() { "(record)" } else { v.field.as_str() };
                eprintln!("  - {field}: {} [{}]", v.message, v.code);
            }
            if let Some(s) = body.error.retry_after_s {
                eprintln!("  retry in {s} s");
            }
            Ok(ExitCode::from(1))
        }
        ClientError::Transport { addr, message } => {
            bail!("cannot reach the node at {addr}: {message}\n  is it running? start it with `tandem run --dir DIR`")
        }
        other => Err(other.into()),
    }
}

fn read_json_arg(arg: Option<&str>) -> anyhow::Result<String> {
    let text = match arg {
        Some("-") | None => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("reading the JSON document from stdin")?;
            s
        }
        Some(s) => s.to_owned(),
    };
    serde_json::from_str::<serde_json::Value>(&text).map_err(|e| anyhow::anyhow!("the document is not JSON: {e}"))?;
    Ok(text)
}

/// Retries a write after transport errors with the same idempotency key: the node applies it
/// at most once.
fn with_retries<T>(mut f: impl FnMut() -> Result<T, ClientError>) -> Result<T, ClientError> {
    let mut attempt = 0;
    loop {
        match f() {
            Err(ClientError::Transport { addr, message }) if attempt < 3 => {
                attempt += 1;
                eprintln!("warning: {message} (talking to {addr}); retrying ({attempt}/3)");
                std::thread::sleep(Duration::from_millis(200 * attempt));
            }
            Err(ClientError::Api { status: 429 | 503, body }) if attempt < 3 && body.error.code != "plugin_quarantined" => {
                attempt += 1;
                let wait = body.error.retry_after_s.unwrap_or(1).min(5);
                eprintln!("warning: {} ; retrying in {wait} s ({attempt}/3)", body.error.message);
                std::thread::sleep(Duration::from_secs(wait));
            }
            other => return other,
        }
    }
}

fn new_idempotency_key() -> String {
    format!("cli-{}", hex::encode(rand::random::<[u8; 12]>()))
}

fn print_ack(ack: &crate::node::types::WriteAck, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(ack)?);
    } else {
        let what = if ack.deleted { "deleted" } else { "written" };
        let note = if !ack.changed {
            " (unchanged)"
        } else if ack.replayed {
            " (already applied)"
        } else {
            ""
        };
        println!(
            "{what} {}/{} at seq {} (stamp {}.{}@{}){note}",
            ack.component, ack.key, ack.seq, ack.stamp.physical, ack.stamp.logical, ack.stamp.node
        );
    }
    Ok(())
}

fn put(a: PutArgs) -> anyhow::Result<ExitCode> {
    let json = read_json_arg(a.json.as_deref())?;
    let client = a.target.client()?;
    let idem = a.idempotency_key.unwrap_or_else(new_idempotency_key);
    match with_retries(|| client.put(&a.component, &a.key, &json, Some(&idem))) {
        Ok(ack) => {
            print_ack(&ack, a.json_output)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => refused(e),
    }
}

fn get(a: GetArgs) -> anyhow::Result<ExitCode> {
    let client = a.target.client()?;
    match client.get(&a.component, &a.key) {
        Ok(r) if a.meta => {
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(ExitCode::SUCCESS)
        }
        Ok(r) => {
            println!("{}", serde_json::to_string_pretty(&r.value)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => refused(e),
    }
}

fn delete(a: DeleteArgs) -> anyhow::Result<ExitCode> {
    let client = a.target.client()?;
    let idem = a.idempotency_key.unwrap_or_else(new_idempotency_key);
    match with_retries(|| client.delete(&a.component, &a.key, Some(&idem))) {
        Ok(ack) => {
            print_ack(&ack, false)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => refused(e),
    }
}

fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let client = a.target.client()?;
    let mut after = a.after.clone();
    let mut all = Vec::new();
    loop {
        let page = match client.list(&a.component, &a.prefix, after.as_deref(), a.limit) {
            Ok(p) => p,
            Err(e) => return refused(e),
        };
        if a.json {
            all.extend(page.records);
        } else {
            for r in &page.records {
                if a.keys {
                    println!("{}", r.key);
                } else {
                    println!("{}\t{}", r.key, serde_json::to_string(&r.value)?);
                }
            }
        }
        match page.next {
            Some(n) if a.all => after = Some(n),
            Some(n) => {
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&all)?);
                }
                eprintln!("(more records: --after {n:?}, or --all)");
                return Ok(ExitCode::SUCCESS);
            }
            None => break,
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(ExitCode::SUCCESS)
}

fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n < 1024.0 {
        format!("{n} B")
    } else if n < 1024.0 * 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else if n < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / 1024.0 / 1024.0)
    } else {
        format!("{:.2} GiB", n / 1024.0 / 1024.0 / 1024.0)
    }
}

fn human_duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// The status as a table.
pub fn render_status(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let n = &s.node;
    let _ = writeln!(
        o,
        "node {} ({}; id {}; epoch {}; tandem {}; up {})",
        n.name,
        n.role,
        n.id,
        n.epoch,
        n.version,
        human_duration(n.uptime_s)
    );
    let _ = writeln!(o, "  api {}   peer listen {}   default mode {}", n.api, n.listen, n.mode);
    let serving = match (n.reads, n.writes) {
        (true, true) => "reads and writes".to_owned(),
        (true, false) => "reads only".to_owned(),
        (false, _) => "nothing".to_owned(),
    };
    let _ = writeln!(o, "  serving {serving}");
    let _ = writeln!(
        o,
        "  clock {}.{} ({} ms ahead of the wall clock; remote stamps refused past {} ms: {} so far)",
        n.hlc.physical, n.hlc.logical, n.clock_ahead_ms, n.clock_max_ahead_ms, n.clock_refusals
    );
    if let Some(r) = &n.last_clock_refusal {
        let _ = writeln!(o, "  last clock refusal: {r}");
    }
    let st = &s.store;
    let _ = writeln!(
        o,
        "store {}  {} (+{} WAL)  seq {}  commits {}  conflicts open {}  idempotency keys {}",
        st.path,
        human_bytes(st.size_bytes),
        human_bytes(st.wal_bytes),
        st.last_seq,
        st.commits,
        st.conflicts_open,
        st.idempotency_keys
    );
    if st.read_only {
        let _ = writeln!(o, "  READ-ONLY: {}", st.read_only_reason.as_deref().unwrap_or("no reason recorded"));
    }
    if !s.components.is_empty() {
        let headers = [
            "COMPONENT",
            "MODE",
            "PRELOAD",
            "RECORDS",
            "LIVE",
            "IN MEMORY",
            "MEMORY",
            "LOAD",
            "WRITES",
            "READS",
            "REFUSED",
            "QUEUE",
            "PLUGIN",
        ];
        let rows: Vec<Vec<String>> = s
            .components
            .iter()
            .map(|c| {
                let plugin = format!(
                    "{} {}{}",
                    c.plugin.version,
                    c.plugin.digest.get(..19).unwrap_or(&c.plugin.digest),
                    if c.plugin.quarantined { " QUARANTINED" } else { "" }
                );
                vec![
                    c.name.clone(),
                    c.mode.clone(),
                    c.preload.clone(),
                    c.records.to_string(),
                    c.live.to_string(),
                    c.in_memory.to_string(),
                    human_bytes(c.memory_bytes),
                    format!("{:.1} ms", c.load_ms),
                    c.writes.to_string(),
                    c.reads.to_string(),
                    c.refusals.to_string(),
                    format!("{}/{}", c.queue_depth, c.queue_capacity),
                    plugin,
                ]
            })
            .collect();
        let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
        for r in &rows {
            for (i, cell) in r.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: Vec<String>| -> String {
            let mut l = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(c);
                } else {
                    let _ = write!(l, "{c:<w$}  ", w = widths[i]);
                }
            }
            l
        };
        let _ = writeln!(o);
        let _ = writeln!(o, "{}", line(headers.iter().map(|h| (*h).to_owned()).collect()));
        for r in rows {
            let _ = writeln!(o, "{}", line(r));
        }
        for c in s.components.iter().filter(|c| c.plugin.quarantined || c.plugin.last_reload_error.is_some()) {
            if c.plugin.quarantined {
                let _ = writeln!(o, "  {}: plugin quarantined: {}", c.name, c.plugin.last_failure);
            }
            if let Some(e) = &c.plugin.last_reload_error {
                let _ = writeln!(o, "  {}: last reload refused: {e}", c.name);
            }
        }
    }
    if !s.peers.is_empty() || s.witness.is_some() {
        let _ = writeln!(o);
        for p in &s.peers {
            let _ = writeln!(o, "peer {} {} ({})", p.name, p.address, p.profile);
        }
        if let Some(w) = &s.witness {
            let _ = writeln!(o, "witness {} {}", w.name, w.address);
        }
    }
    if let Some(r) = &s.replication {
        render_replication(&mut o, r);
    }
    o
}

/// The replication part of `tandem status` (see `crate::replication::Status`).
fn render_replication(o: &mut String, r: &serde_json::Value) {
    use std::fmt::Write as _;
    let str_of = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_owned();
    let num = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let _ = writeln!(o, "\nreplication: primary {}, peer listen {}", str_of(r, "primary"), str_of(r, "listen"));
    let _ = writeln!(o, "  warm role {}, epoch {}", str_of(r, "role"), r["epoch"].as_u64().unwrap_or(0));
    if let Some(line) = sync_set_line(r) {
        let _ = writeln!(o, "  {line}");
    }
    let _ = writeln!(o, "  failover: {}", str_of(r, "automatic_failover"));
    if let Some(f) = r.get("failover").filter(|f| f.is_object()) {
        let a = &f["assignment"];
        let _ = writeln!(
            o,
            "  consensus: leader {}, term {}; assignment {}: primary {} in epoch {}{}; lease {} ms, held here: {}",
            str_of(f, "leader"),
            num(f, "term"),
            num(a, "index"),
            str_of(a, "primary"),
            num(a, "epoch"),
            a.get("old")
                .and_then(|x| x.as_str())
                .map(|old| format!(" (took over from {old} at its position {})", num(a, "fork")))
                .unwrap_or_default(),
            num(f, "lease_ms"),
            f.get("lease").and_then(|x| x.as_bool()).unwrap_or(false)
        );
        if f.get("rejoining").and_then(|x| x.as_bool()).unwrap_or(false) {
            let _ = writeln!(o, "  rejoining: replaces a lost voter; neither votes nor endorses until caught up with a leader");
        }
        if f.get("probing").and_then(|x| x.as_bool()).unwrap_or(false) {
            let _ = writeln!(o, "  probing: no consensus state yet; waits for every other voter's first answer");
        }
        if let Some(e) = f.get("last_event").and_then(|x| x.as_str()).filter(|e| !e.is_empty()) {
            let _ = writeln!(o, "  last failover event: {e}");
        }
    }
    for p in r.get("peers").and_then(|p| p.as_array()).into_iter().flatten() {
        let up = p.get("following").and_then(|x| x.as_bool()).unwrap_or(false);
        let _ = writeln!(
            o,
            "  from {}: {}  applied {} of {}  acked by it {}  resets {}{}",
            str_of(p, "name"),
            match (up, p.get("catching_up").and_then(|x| x.as_bool()).unwrap_or(false)) {
                (true, true) => format!("catching up {}%", num(p, "catch_up_percent")),
                (true, false) => "following".to_owned(),
                (false, _) => "down".to_owned(),
            },
            num(p, "applied_seq"),
            num(p, "peer_last_seq"),
            num(p, "acked_by_peer"),
            num(p, "link_resets"),
            p.get("last_error").and_then(|e| e.as_str()).map(|e| format!("  last error: {e}")).unwrap_or_default()
        );
    }
    for c in r.get("components").and_then(|p| p.as_array()).into_iter().flatten() {
        let name = str_of(c, "name");
        let digest = r.get("digests").and_then(|d| d.get(&name)).and_then(|d| d.as_str()).map(|d| d.get(..16).unwrap_or(d)).unwrap_or("-");
        let _ = writeln!(
            o,
            "  {:<34} {:<4} ack {:<7} {:<6} lag {} ms (max {})  digest {digest}",
            name,
            str_of(c, "mode"),
            str_of(c, "ack"),
            str_of(c, "priority"),
            num(c, "lag_ms"),
            num(c, "max_lag_ms")
        );
    }
    for a in r.get("alarms").and_then(|p| p.as_array()).into_iter().flatten() {
        let _ = writeln!(o, "  ALARM {}", a.as_str().unwrap_or_default());
    }
}

/// On a primary with warm components acknowledged by `standby`: who those writes wait for
/// (and who alone may be promoted automatically).
fn sync_set_line(r: &serde_json::Value) -> Option<String> {
    let standby_acks = r
        .get("components")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
        .any(|c| c.get("mode").and_then(|m| m.as_str()) == Some("warm") && c.get("ack").and_then(|a| a.as_str()) == Some("standby"));
    if r.get("role").and_then(|x| x.as_str()) != Some("primary") || !standby_acks {
        return None;
    }
    let members = r.get("sync_set").and_then(|s| s.get("members")).and_then(|m| m.as_object());
    let listed: Vec<String> =
        members.into_iter().flatten().map(|(name, from)| format!("{name} (complete from {})", from.as_u64().unwrap_or(0))).collect();
    Some(if listed.is_empty() {
        "synchronous set: empty: `standby`-ack writes are acknowledged on this node's disk alone until a standby catches up, and no node can be promoted automatically".to_owned()
    } else {
        format!("synchronous set: {}: each `standby`-ack write waits for one of them", listed.join(", "))
    })
}

fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = a.target.client()?;
    match client.status() {
        Ok(s) if a.json => {
            println!("{}", serde_json::to_string_pretty(&s)?);
            Ok(ExitCode::SUCCESS)
        }
        Ok(s) => {
            print!("{}", render_status(&s));
            // The backup thread, when the node has a backup target (404 otherwise).
            if let Ok(r) = client.raw("GET", "/v1/admin/backup", None, &[], None)
                && r.status == 200
                && let Ok(b) = serde_json::from_str::<serde_json::Value>(&r.body)
            {
                print!("{}", render_backup(&b));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => refused(e),
    }
}

/// The backup part of `tandem status` (see `crate::backup::service::BackupStatus`).
fn render_backup(b: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_owned();
    let num = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let mut o = format!("\nbackup: target {}\n", text(b, "target"));
    match b.get("last_snapshot").filter(|s| s.is_object()) {
        Some(s) => o.push_str(&format!(
            "  last snapshot {} ({}, {} records, up to seq {}) at {}\n",
            text(s, "file"),
            text(s, "scope"),
            num(s, "records"),
            num(s, "last_seq"),
            text(s, "created")
        )),
        None => o.push_str("  no snapshot yet\n"),
    }
    for n in b.get("next_scheduled").and_then(|x| x.as_array()).into_iter().flatten() {
        o.push_str(&format!("  next {} snapshot due {}\n", text(n, "scope"), text(n, "due")));
    }
    if b.get("archive").and_then(|x| x.as_bool()).unwrap_or(false) {
        o.push_str(&format!(
            "  log archive ({}) up to seq {}, {} pending, {} gap(s), {} version(s) not archived\n",
            text(b, "archive_source"),
            num(b, "archive_seq"),
            num(b, "archive_pending"),
            num(b, "archive_gaps"),
            num(b, "archive_unarchived")
        ));
    }
    if let Some(p) = b.get("last_peer_send").filter(|p| p.is_object()) {
        let ok = p.get("ok").and_then(|x| x.as_bool()).unwrap_or(false);
        o.push_str(&format!("  last send to {}'s inbox: {} ({})\n", text(p, "peer"), if ok { "ok" } else { "FAILED" }, text(p, "message")));
    }
    if let Some(e) = b.get("last_error").filter(|e| e.is_object()) {
        o.push_str(&format!("  last error at {}: {}\n", text(e, "at"), text(e, "message")));
    }
    o
}

fn promote(a: PromoteArgs) -> anyhow::Result<ExitCode> {
    let client = a.target.client()?;
    match client.promote() {
        Ok(v) if a.json => {
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Ok(v) => {
            let (node, epoch) = (v["node"].as_str().unwrap_or("?"), v["epoch"].as_u64().unwrap_or(0));
            if v["already_primary"].as_bool() == Some(true) {
                println!("{node} was already the warm primary, epoch {epoch} (the cluster assigned it before this request)");
            } else {
                println!("{node} is the warm primary, epoch {epoch} (was: {})", v["previous_primary"].as_str().unwrap_or("none"));
                if let Some(ms) = v["takes_writes_after_ms"].as_u64().filter(|ms| *ms > 0) {
                    println!("it takes writes once the old primary's lease has run out, within {ms} ms");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => refused(e),
    }
}

fn demote(a: DemoteArgs) -> anyhow::Result<ExitCode> {
    let client = a.target.client()?;
    let v = match client.demote(a.timeout.min(50).saturating_mul(1000)) {
        Ok(v) => v,
        Err(e) => return refused(e),
    };
    let caught_up = v["caught_up"].as_bool().unwrap_or(false);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}", v["message"].as_str().unwrap_or(""));
        for s in v["standbys"].as_array().into_iter().flatten() {
            println!(
                "  {:<16} acknowledged {:>10}  {}",
                s["name"].as_str().unwrap_or("?"),
                s["acknowledged"].as_u64().unwrap_or(0),
                if s["caught_up"].as_bool().unwrap_or(false) { "caught up" } else { "BEHIND" }
            );
        }
    }
    Ok(if caught_up { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

fn conflicts(c: ConflictsCommand) -> anyhow::Result<ExitCode> {
    match c {
        ConflictsCommand::List(a) => {
            let client = a.target.client()?;
            let list = match client.conflicts(a.component.as_deref(), a.all) {
                Ok(l) => l,
                Err(e) => return refused(e),
            };
            if a.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no {}conflicts", if a.all { "" } else { "open " });
            } else {
                println!("{:<24}  {:<6}  {:<20}  {:<24}  VIOLATIONS", "ID", "STATE", "COMPONENT", "KEY");
                for c in list {
                    let v: Vec<String> = c
                        .violations
                        .iter()
                        .map(|v| format!("{} {}", if v.field.is_empty() { "(record)" } else { &v.field }, v.code))
                        .collect();
                    println!(
                        "{:<24}  {:<6}  {:<20}  {:<24}  {}",
                        c.id,
                        if c.open { "open" } else { "closed" },
                        c.component,
                        c.key,
                        v.join(", ")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ConflictsCommand::Show(a) => {
            let client = a.target.client()?;
            match client.conflict(&a.id) {
                Ok(c) => {
                    println!("{}", serde_json::to_string_pretty(&c)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => refused(e),
            }
        }
        ConflictsCommand::Resolve(a) => {
            let client = a.target.client()?;
            let value = if a.delete { None } else { Some(serde_json::from_str::<serde_json::Value>(&read_json_arg(a.json.as_deref())?)?) };
            match client.resolve(&a.id, value.as_ref()) {
                Ok(ack) => {
                    println!("conflict {} resolved:", ack.conflict);
                    print_ack(&ack.write, false)?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => refused(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_the_synchronous_set_on_a_primary_with_standby_acks() {
        let mut r = serde_json::json!({
            "role": "primary",
            "components": [{ "name": "trunks", "mode": "warm", "ack": "standby" }, { "name": "crm", "mode": "hot", "ack": "local" }],
            "sync_set": { "members": { "b": 120 }, "version": 4398046511105u64 },
        });
        let mut o = String::new();
        render_replication(&mut o, &r);
        assert!(o.contains("synchronous set: b (complete from 120): each `standby`-ack write waits for one of them"), "{o}");
        r["sync_set"]["members"] = serde_json::json!({});
        assert!(sync_set_line(&r).is_some_and(|l| l.contains("empty") && l.contains("disk alone")), "{r}");
        // Nothing to say on a standby, or without `standby` acks.
        r["role"] = "standby".into();
        assert_eq!(sync_set_line(&r), None);
        r["role"] = "primary".into();
        r["components"][0]["ack"] = "local".into();
        assert_eq!(sync_set_line(&r), None);
    }
}
