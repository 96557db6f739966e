//! The node's configuration: one TOML file per node (`DIR/tandem.toml`).
//!
//! [`Config::load`] parses and validates the whole file at start. Every problem is reported with
//! the file, the key and what is wrong (all of them at once, not just the first), so an operator
//! fixes a file in one go. Relative paths in the file are relative to the file's directory.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::plugin::Limits;

/// The configuration file's name inside a node directory.
pub const CONFIG_FILE: &str = "tandem.toml";

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key, e.g. `components.trunks.preload` (empty for the file as a whole).
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.problem)
        } else {
            write!(f, "{}: `{}`: {}", self.file.display(), self.key, self.problem)
        }
    }
}

/// Every problem found in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "invalid configuration: {one}"),
            many => {
                write!(f, "invalid configuration ({} problems):", many.len())?;
                for e in many {
                    write!(f, "\n  - {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigErrors {}

/// What a node is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds data and serves the API.
    #[default]
    Data,
    /// Holds no data; only votes in failover (later work).
    Witness,
}

/// Backup mode of a component (see the brief). Replication and backup use it; a single node
/// records it and shows it in status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Cold,
    #[default]
    Warm,
    Hot,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Cold => "cold",
            Mode::Warm => "warm",
            Mode::Hot => "hot",
        })
    }
}

/// Link profile of a peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    #[default]
    Local,
    Geo,
}

/// Replication priority of a component.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

/// Which records of a component are kept in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreloadKind {
    /// Every record (settings).
    #[default]
    All,
    /// Records stamped within `preload_window` (reports).
    Recent,
    /// None: reads go to the store.
    None,
}

/// A component's preload policy, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preload {
    All,
    Recent(Duration),
    None,
}

impl Preload {
    /// Whether memory holds every record, so that a miss in memory means "no such record".
    pub fn is_complete(&self) -> bool {
        matches!(self, Preload::All)
    }

    /// Whether a record stamped at `physical_ms` belongs in memory at wall time `now_ms`.
    pub fn keeps(&self, physical_ms: u64, now_ms: u64) -> bool {
        match self {
            Preload::All => true,
            Preload::None => false,
            Preload::Recent(window) => {
                let window = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
                physical_ms >= now_ms.saturating_sub(window)
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Preload::All => "all".to_owned(),
            Preload::None => "none".to_owned(),
            Preload::Recent(w) => format!("recent {}", format_duration(*w)),
        }
    }
}

/// Durability of an acknowledged write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// SQLite `synchronous=FULL` in WAL mode: the WAL is fsynced at every commit.
    #[default]
    Full,
    /// `synchronous=EXTRA`: FULL, and the directory is synced when the journal is deleted.
    Extra,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// This node's name: unique in the cluster, carried by every stamp it makes.
    pub name: String,
    #[serde(default)]
    pub role: Role,
    /// Data directory (store, compile cache). Default: the config file's directory.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Peer-protocol address (replication).
    pub listen: String,
    /// HTTP API address. Default: loopback, 127.0.0.1:7400.
    #[serde(default = "default_api")]
    pub api: String,
}

/// The API listens on loopback unless configured otherwise.
pub const DEFAULT_API: &str = "127.0.0.1:7400";

fn default_api() -> String {
    DEFAULT_API.to_owned()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// Bearer token for every route but /healthz.
    pub token: String,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Largest page of a listing.
    pub max_page: usize,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection { token: String::new(), max_body_bytes: 1 << 20, max_page: 1000 }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Default mode of every component.
    pub mode: Mode,
    /// The node that takes warm writes (replication; failover will elect it instead). Default:
    /// this node when it has no peers.
    pub primary: Option<String>,
    /// Cluster credentials (PEM, relative to this file), written by `tandem init`: the cluster
    /// CA's certificate, this node's certificate and its private key. Without them, no peer
    /// link is made.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// How long a `standby`-ack write waits for a standby before answering "outcome unknown".
    pub ack_timeout_ms: Option<u64>,
    /// How long a standby of the synchronous set may be unreachable before the primary records
    /// that it left the set and `standby` acks fall back to local (default 5000).
    pub sync_drop_ms: Option<u64>,
    /// Automatic failover (default: on when the cluster has three voters: two data nodes and
    /// a witness, or more). Off, only `tandem promote` changes the primary.
    pub failover: Option<bool>,
    /// The primary's lease (ms): a primary that has not heard from a quorum within it, less
    /// the drift margin, stops taking writes; a standby takes over after it plus the margin.
    /// Default 500 on local links, 3000 when a peer is on a geo link.
    pub lease_ms: Option<u64>,
    /// How often the primary renews its lease (default: a tenth of the lease).
    pub heartbeat_ms: Option<u64>,
    /// The clock-rate difference allowed between nodes, per mille of the lease (default 100).
    pub drift_permille: Option<u64>,
}

/// When a warm write is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ack {
    /// When this node has it on disk (async replication).
    #[default]
    Local,
    /// When a standby of the synchronous set has it on disk too.
    Standby,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub profile: Profile,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockSection {
    /// A remote stamp further ahead of this node's clock than this is refused.
    pub max_ahead_ms: u64,
}

impl Default for ClockSection {
    fn default() -> Self {
        ClockSection { max_ahead_ms: 10_000 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    pub synchronous: Synchronous,
    /// Cap on the database size in MiB (0: none). Past it, writes are refused as on a full disk.
    pub max_size_mb: u64,
    /// Most records committed in one transaction (group commit).
    pub max_batch: usize,
    /// While read-only after a full disk, how often to check whether space came back.
    pub probe_interval_ms: u64,
    /// How long idempotency keys are remembered.
    pub idempotency_ttl_s: u64,
    /// How often retention, window eviction and key expiry run.
    pub maintenance_interval_ms: u64,
    /// How long a deletion's tombstone is kept before it may be purged, once every data peer
    /// has it (0: never purge).
    pub tombstone_keep_ms: u64,
    /// How long a peer that does not acknowledge may hold tombstones back: past it they are
    /// purged anyway (loudly), and that peer is bootstrapped from a snapshot when it returns.
    pub peer_hold_max_ms: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            synchronous: Synchronous::Full,
            max_size_mb: 0,
            max_batch: 512,
            probe_interval_ms: 1000,
            idempotency_ttl_s: 86_400,
            maintenance_interval_ms: 10_000,
            tombstone_keep_ms: 7 * 86_400_000,
            peer_hold_max_ms: 30 * 86_400_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSection {
    /// Requests waiting per component before new ones get 429.
    pub write_queue: usize,
    /// A request that waited longer than this in a queue is dropped unapplied (503).
    pub max_wait_ms: u64,
    /// Commit jobs waiting for the store writer.
    pub commit_queue: usize,
    /// Reads from the store (components not wholly in memory) at once before 429.
    pub store_reads: usize,
}

impl Default for QueueSection {
    fn default() -> Self {
        QueueSection { write_queue: 1024, max_wait_ms: 5_000, commit_queue: 256, store_reads: 64 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsSection {
    /// Compile cache (relative to the data directory). Empty: no cache.
    pub cache_dir: PathBuf,
    /// Threads running plugin calls (0: one per CPU).
    pub threads: usize,
    /// Plugin jobs waiting for a thread before callers get 503.
    pub queue: usize,
    /// Reload plugins whose files change (unpinned plugins only).
    pub watch: bool,
}

impl Default for PluginsSection {
    fn default() -> Self {
        PluginsSection { cache_dir: PathBuf::from("cache"), threads: 0, queue: 1024, watch: true }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// Async runtime worker threads (0: one per CPU, at most 4).
    pub workers: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentSection {
    /// The plugin's .wasm file (relative to the config file).
    pub plugin: PathBuf,
    /// Pinned sha256 digest, `sha256:HEX`.
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default)]
    pub preload: PreloadKind,
    /// With `preload = "recent"`: how far back, e.g. "30d", "12h".
    #[serde(default)]
    pub preload_window: Option<String>,
    #[serde(default)]
    pub limits: Limits,
    /// Warm acknowledgement (replication).
    #[serde(default)]
    pub ack: Ack,
    /// Replication lag over which the component's lag alarm is raised (ms; default 1000).
    #[serde(default)]
    pub lag_budget_ms: Option<u64>,
}

/// A whole node configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub node: NodeSection,
    #[serde(default)]
    pub api: ApiSection,
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerSection>,
    #[serde(default)]
    pub witness: Option<PeerSection>,
    #[serde(default)]
    pub clock: ClockSection,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub queues: QueueSection,
    #[serde(default)]
    pub plugins: PluginsSection,
    #[serde(default)]
    pub runtime: RuntimeSection,
    #[serde(default)]
    pub components: BTreeMap<String, ComponentSection>,
    /// Cold backup: target, schedules, retention, log archive (see `crate::backup::config`).
    #[serde(default)]
    pub backup: crate::backup::BackupSection,
}

/// A component's configuration, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct ComponentConfig {
    pub name: String,
    pub plugin: PathBuf,
    pub digest: Option<String>,
    pub mode: Mode,
    pub priority: Priority,
    pub preload: Preload,
    pub limits: Limits,
}

/// A validated configuration with paths resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    pub raw: ConfigFile,
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    pub components: Vec<ComponentConfig>,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
        let err = |key: &str, problem: String| ConfigErrors(vec![ConfigError { file: file.to_path_buf(), key: key.to_owned(), problem }]);
        let text = std::fs::read_to_string(file).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound { " (create one with `tandem init --dir DIR ...`)" } else { "" };
            err("", format!("cannot read it: {e}{hint}"))
        })?;
        Config::parse(file, &text)
    }

    /// Parses and validates configuration text that came from `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let raw = parse_raw(file, text)?;
        Config::from_raw(file, raw)
    }

    /// Validates a parsed file.
    pub fn from_raw(file: &Path, raw: ConfigFile) -> Result<Config, ConfigErrors> {
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
        let mut errors = Vec::new();
        let mut bad = |key: String, problem: String| errors.push(ConfigError { file: file.to_path_buf(), key, problem });

        if let Err(p) = check_name(&raw.node.name) {
            bad("node.name".into(), p);
        }
        let api = match raw.node.api.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                bad("node.api".into(), format!("{:?} is not an IP:port address, e.g. \"127.0.0.1:7400\"", raw.node.api));
                None
            }
        };
        if let Err(p) = check_host_port(&raw.node.listen) {
            bad("node.listen".into(), p);
        }
        if raw.node.role == Role::Data {
            if raw.api.token.len() < 16 {
                bad("api.token".into(), "must be at least 16 characters (`tandem init` writes a random one)".into());
            }
        } else if !raw.components.is_empty() {
            bad("components".into(), "a witness holds no data: remove the components".into());
        }
        if raw.api.token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bad("api.token".into(), "must not contain spaces or control characters".into());
        }
        if raw.api.max_body_bytes < 1024 {
            bad("api.max_body_bytes".into(), "must be at least 1024".into());
        }
        if raw.api.max_page == 0 {
            bad("api.max_page".into(), "must be at least 1".into());
        }
        let mut names = std::collections::BTreeSet::new();
        names.insert(raw.node.name.clone());
        for (i, peer) in raw.peers.iter().enumerate() {
            if let Err(p) = check_name(&peer.name) {
                bad(format!("peer[{i}].name"), p);
            } else if !names.insert(peer.name.clone()) {
                bad(format!("peer[{i}].name"), format!("{:?} is used twice (node names are unique in a cluster)", peer.name));
            }
            if let Err(p) = check_host_port(&peer.address) {
                bad(format!("peer[{i}].address"), p);
            }
        }
        if let Some(w) = &raw.witness {
            if let Err(p) = check_name(&w.name) {
                bad("witness.name".into(), p);
            } else if !names.insert(w.name.clone()) {
                bad("witness.name".into(), format!("{:?} is already the name of another node", w.name));
            }
            if let Err(p) = check_host_port(&w.address) {
                bad("witness.address".into(), p);
            }
        }
        if let Err(p) = crate::failover::timing_of(&raw).check() {
            bad("cluster.lease_ms".into(), p);
        }
        if raw.clock.max_ahead_ms == 0 {
            bad("clock.max_ahead_ms".into(), "must be more than 0".into());
        }
        for (key, problem) in raw.backup.problems() {
            bad(format!("backup.{key}"), problem);
        }
        if raw.store.max_batch == 0 {
            bad("store.max_batch".into(), "must be at least 1".into());
        }
        if raw.store.probe_interval_ms == 0 {
            bad("store.probe_interval_ms".into(), "must be more than 0".into());
        }
        if raw.store.maintenance_interval_ms < 10 {
            bad("store.maintenance_interval_ms".into(), "must be at least 10".into());
        }
        if raw.queues.write_queue == 0 {
            bad("queues.write_queue".into(), "must be at least 1".into());
        }
        if raw.queues.commit_queue == 0 {
            bad("queues.commit_queue".into(), "must be at least 1".into());
        }
        if raw.queues.store_reads == 0 {
            bad("queues.store_reads".into(), "must be at least 1".into());
        }
        if raw.plugins.queue == 0 {
            bad("plugins.queue".into(), "must be at least 1".into());
        }
        if raw.plugins.threads > 256 {
            bad("plugins.threads".into(), "must be at most 256".into());
        }
        if raw.runtime.workers > 256 {
            bad("runtime.workers".into(), "must be at most 256".into());
        }

        // Only `local` peers join the synchronous set that `standby` acks wait for.
        let only_geo_peers = !raw.peers.is_empty() && raw.peers.iter().all(|p| p.profile != Profile::Local);
        let mut components = Vec::new();
        for (name, c) in &raw.components {
            let key = |field: &str| format!("components.{name}.{field}");
            if let Err(p) = check_name(name) {
                bad(format!("components.{name}"), format!("not a component name: {p}"));
            }
            let plugin = if c.plugin.is_absolute() { c.plugin.clone() } else { base.join(&c.plugin) };
            if !plugin.is_file() {
                bad(key("plugin"), format!("plugin file {} does not exist", plugin.display()));
            }
            if let Some(d) = &c.digest {
                let hex = d.strip_prefix("sha256:").unwrap_or(d);
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    bad(key("digest"), format!("{d:?} is not a sha256 digest (\"sha256:\" and 64 hex digits)"));
                }
            }
            let preload = match (c.preload, &c.preload_window) {
                (PreloadKind::All, None) => Preload::All,
                (PreloadKind::None, None) => Preload::None,
                (PreloadKind::Recent, Some(w)) => match parse_duration(w) {
                    Ok(d) if !d.is_zero() => Preload::Recent(d),
                    Ok(_) => {
                        bad(key("preload_window"), "must be more than 0".into());
                        Preload::None
                    }
                    Err(p) => {
                        bad(key("preload_window"), p);
                        Preload::None
                    }
                },
                (PreloadKind::Recent, None) => {
                    bad(key("preload_window"), "required with preload = \"recent\", e.g. \"30d\"".into());
                    Preload::None
                }
                (_, Some(_)) => {
                    bad(key("preload_window"), "only meaningful with preload = \"recent\"".into());
                    Preload::None
                }
            };
            let l = &c.limits;
            if l.fuel == 0 {
                bad(key("limits.fuel"), "must be more than 0".into());
            }
            if l.deadline_ms == 0 {
                bad(key("limits.deadline_ms"), "must be more than 0".into());
            }
            if l.memory_bytes < (1 << 16) {
                bad(key("limits.memory_bytes"), "must be at least 65536 (one WebAssembly page)".into());
            }
            if l.memory_bytes > MAX_PLUGIN_MEMORY {
                bad(key("limits.memory_bytes"), format!("must be at most {MAX_PLUGIN_MEMORY}"));
            }
            if l.max_input_bytes == 0 || l.max_output_bytes == 0 {
                bad(key("limits"), "max_input_bytes and max_output_bytes must be more than 0".into());
            }
            if l.quarantine_after == 0 {
                bad(key("limits.quarantine_after"), "must be at least 1".into());
            }
            let mode = c.mode.unwrap_or(raw.cluster.mode);
            if c.ack == Ack::Standby && mode != Mode::Warm {
                // Ignoring it would let an operator believe these writes wait for another node.
                let m = if mode == Mode::Hot { "hot" } else { "cold" };
                bad(
                    key("ack"),
                    format!(
                        "`standby` acks are for warm components; this one is {m}, and its writes are acknowledged once on this \
                         node's disk: remove `ack` or make the component warm"
                    ),
                );
            } else if c.ack == Ack::Standby && only_geo_peers {
                // The set would always be empty: every write acknowledged locally, silently.
                bad(
                    key("ack"),
                    "`standby` acks wait for a standby of the synchronous set, which only peers with the `local` profile join, \
                     and every peer of this node is `geo`: no write could ever wait for a standby. Give the standby's [[peer]] \
                     `profile = \"local\"` (its timings and no compression), or use `ack = \"local\"`"
                        .into(),
                );
            }
            components.push(ComponentConfig {
                name: name.clone(),
                plugin,
                digest: c.digest.clone(),
                mode: c.mode.unwrap_or(raw.cluster.mode),
                priority: c.priority,
                preload,
                limits: c.limits.clone(),
            });
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let data_dir = match &raw.node.data_dir {
            Some(d) if d.is_absolute() => d.clone(),
            Some(d) => base.join(d),
            None => base.clone(),
        };
        let api = api.ok_or_else(|| ConfigErrors(Vec::new()))?;
        Ok(Config { file: file.to_path_buf(), raw, data_dir, api, components })
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.raw.node.name
    }

    /// The SQLite database file.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("store.db")
    }

    /// The plugin compile cache, if any.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        let c = &self.raw.plugins.cache_dir;
        if c.as_os_str().is_empty() {
            None
        } else if c.is_absolute() {
            Some(c.clone())
        } else {
            Some(self.data_dir.join(c))
        }
    }

    /// Where a running node writes the API address it bound (useful with port 0).
    pub fn api_addr_file(&self) -> PathBuf {
        self.data_dir.join("api.addr")
    }
}

/// Largest plugin memory cap the node's runtime accepts.
pub const MAX_PLUGIN_MEMORY: usize = 256 << 20;

fn parse_raw(file: &Path, text: &str) -> Result<ConfigFile, ConfigErrors> {
    let one = |key: String, problem: String| ConfigErrors(vec![ConfigError { file: file.to_path_buf(), key, problem }]);
    let de = toml::Deserializer::parse(text).map_err(|e| one(String::new(), format!("not valid TOML: {}", squash(&e.to_string()))))?;
    serde_path_to_error::deserialize::<_, ConfigFile>(de).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." { String::new() } else { path };
        one(key, squash(&e.inner().to_string()))
    })
}

/// Folds a multi-line parser message (with its source excerpt) into one line.
fn squash(message: &str) -> String {
    let mut location = None;
    let mut rest = Vec::new();
    for line in message.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('|') || line.chars().next().is_some_and(|c| c.is_ascii_digit()) && line.contains('|') {
            continue;
        }
        if let Some(loc) = line.strip_prefix("TOML parse error at ") {
            location = Some(loc.to_owned());
            continue;
        }
        rest.push(line.to_owned());
    }
    let body = rest.join(" ");
    match location {
        Some(loc) => format!("{body} (at {loc})"),
        None => body,
    }
}

/// Checks a node or component name: 1 to 64 of a-z, 0-9 and -, not starting with -.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if ok { Ok(()) } else { Err(format!("{name:?} must be 1 to 64 of a-z, 0-9 and - (not starting with -)")) }
}

/// Checks a HOST:PORT address (a name or an IP; IPv6 in brackets).
pub fn check_host_port(addr: &str) -> Result<(), String> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let problem = || format!("{addr:?} is not a HOST:PORT address, e.g. \"10.0.0.2:7401\"");
    let (host, port) = addr.rsplit_once(':').ok_or_else(problem)?;
    if host.is_empty() || host.contains(':') || port.parse::<u16>().is_err() {
        return Err(problem());
    }
    if !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        return Err(problem());
    }
    Ok(())
}

/// Parses "500ms", "90s", "15m", "12h", "30d".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let problem = || format!("{text:?} is not a duration: a number and a unit (ms, s, m, h, d), e.g. \"30d\"");
    let n: u64 = num.parse().map_err(|_| problem())?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(problem()),
    };
    ms.map(Duration::from_millis).ok_or_else(|| format!("{text:?} is too long"))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    for (unit, size) in [("d", 86_400_000u64), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Quotes a string for TOML.
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with_plugin() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("plugins")).expect("mkdir");
        std::fs::write(dir.path().join("plugins/trunks.wasm"), b"x").expect("write");
        dir
    }

    const GOOD: &str = r#"
[node]
name = "a"
listen = "127.0.0.1:7401"
api = "127.0.0.1:7400"

[api]
token = "0123456789abcdef0123"

[[peer]]
name = "b"
address = "pbx-b.example:7401"
profile = "geo"

[components.trunks]
plugin = "plugins/trunks.wasm"
preload = "recent"
preload_window = "30d"
"#;

    #[test]
    fn a_good_file_loads_with_defaults() {
        let dir = dir_with_plugin();
        let file = dir.path().join(CONFIG_FILE);
        let c = Config::parse(&file, GOOD).expect("valid");
        assert_eq!(c.node_name(), "a");
        assert_eq!(c.data_dir, dir.path());
        assert_eq!(c.components.len(), 1);
        assert_eq!(c.components[0].preload, Preload::Recent(Duration::from_secs(30 * 86_400)));
        assert_eq!(c.components[0].mode, Mode::Warm);
        assert_eq!(c.components[0].plugin, dir.path().join("plugins/trunks.wasm"));
        assert_eq!(c.raw.peers[0].profile, Profile::Geo);
        assert_eq!(c.raw.store.synchronous, Synchronous::Full);
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_problem() {
        let dir = dir_with_plugin();
        let file = dir.path().join(CONFIG_FILE);
        let text = GOOD.replace("preload = \"recent\"", "preload = \"sometimes\"");
        let e = Config::parse(&file, &text).expect_err("bad enum");
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].key, "components.trunks.preload");
        assert!(e.0[0].problem.contains("sometimes"), "{}", e.0[0].problem);
        let shown = e.to_string();
        assert!(shown.contains(&file.display().to_string()) && shown.contains("`components.trunks.preload`"), "{shown}");

        let text = GOOD.replace("[api]", "[api]\ncolour = 3");
        let e = Config::parse(&file, &text).expect_err("unknown key");
        assert!(e.0[0].key.starts_with("api"), "{:?}", e.0[0]);
        assert!(e.0[0].problem.contains("colour"), "{}", e.0[0].problem);

        let e = Config::parse(&file, "[node\nname=").expect_err("syntax");
        assert!(e.0[0].problem.contains("not valid TOML") && e.0[0].problem.contains("line"), "{}", e.0[0].problem);
    }

    #[test]
    fn standby_acks_need_a_peer_that_can_join_the_synchronous_set() {
        let dir = dir_with_plugin();
        let file = dir.path().join(CONFIG_FILE);
        let standby = GOOD.replace("preload = \"recent\"", "ack = \"standby\"\npreload = \"recent\"");
        // The only peer is geo: the synchronous set could never hold it.
        let e = Config::parse(&file, &standby).expect_err("geo only");
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].key, "components.trunks.ack");
        assert!(e.0[0].problem.contains("`geo`") && e.0[0].problem.contains("profile = \"local\""), "{}", e.0[0].problem);
        // Not a warm component: refused too (nothing would wait).
        let hot = standby.replace("ack = \"standby\"", "ack = \"standby\"\nmode = \"hot\"");
        let e = Config::parse(&file, &hot).expect_err("hot");
        assert_eq!(e.0[0].key, "components.trunks.ack");
        assert!(e.0[0].problem.contains("this one is hot"), "{}", e.0[0].problem);
        // A local standby beside it, a local ack or no peer at all: accepted.
        let with_local =
            standby.replacen("[components.trunks]", "[[peer]]\nname = \"c\"\naddress = \"pbx-c.example:7401\"\n\n[components.trunks]", 1);
        Config::parse(&file, &with_local).expect("a local peer can join the set");
        Config::parse(&file, GOOD).expect("local acks");
        let alone = standby.replace("[[peer]]\nname = \"b\"\naddress = \"pbx-b.example:7401\"\nprofile = \"geo\"\n", "");
        Config::parse(&file, &alone).expect("no peer");
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let dir = dir_with_plugin();
        let file = dir.path().join(CONFIG_FILE);
        let text = GOOD
            .replace("name = \"a\"", "name = \"A B\"")
            .replace("api = \"127.0.0.1:7400\"", "api = \"localhost\"")
            .replace("0123456789abcdef0123", "short")
            .replace("30d", "30 fortnights")
            .replace("plugins/trunks.wasm", "plugins/missing.wasm");
        let e = Config::parse(&file, &text).expect_err("many problems");
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        for k in ["node.name", "node.api", "api.token", "components.trunks.plugin", "components.trunks.preload_window"] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn the_api_defaults_to_loopback() {
        let dir = dir_with_plugin();
        let file = dir.path().join(CONFIG_FILE);
        let c = Config::parse(&file, &GOOD.replace("api = \"127.0.0.1:7400\"\n", "")).expect("valid");
        assert!(c.api.ip().is_loopback());
        assert_eq!(c.api.to_string(), DEFAULT_API);
    }

    #[test]
    fn durations_round_trip() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn addresses() {
        assert!(check_host_port("127.0.0.1:1").is_ok());
        assert!(check_host_port("[::1]:7400").is_ok());
        assert!(check_host_port("pbx-b.example:7401").is_ok());
        assert!(check_host_port("pbx-b.example").is_err());
        assert!(check_host_port(":80").is_err());
        assert!(check_host_port("a b:80").is_err());
    }

    #[test]
    fn preload_window_membership() {
        let p = Preload::Recent(Duration::from_millis(100));
        assert!(p.keeps(900, 1_000));
        assert!(!p.keeps(899, 1_000));
        assert!(Preload::All.keeps(0, u64::MAX));
        assert!(!Preload::None.keeps(1, 1));
    }
}
