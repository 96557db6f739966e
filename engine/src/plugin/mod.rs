//! The plugin runtime: loads component plugins into a sandbox and calls them under limits.
//!
//! - [`Runtime`] owns the wasmtime engine (pooling allocator, fuel, epoch interruption, NaN
//!   canonicalization, no threads) and the compile cache.
//! - [`Runtime::load_file`] (a plugin file, as the registry loads it) and [`Runtime::load`] (bytes)
//!   compile (or fetch from the cache) a plugin, check its contract version and `describe` (whose
//!   answer the cache keeps too), and return a [`LoadedPlugin`]: an `InstancePre` ready to
//!   instantiate.
//! - [`LoadedPlugin::session`] makes a [`Session`]: one fresh instance that serves a batch of calls
//!   and is then dropped. A call that traps, runs out of fuel or memory, overruns its deadline or
//!   returns too much comes back as a [`PluginError`]; the instance is discarded and the next call
//!   gets a fresh one. Consecutive failures quarantine the plugin.
//!
//! Plugin calls are synchronous and may take up to their deadline: callers on the async runtime
//! go through [`pool::PluginPool`], never call them from a runtime worker.

mod cache;
pub mod host;
pub mod pool;
pub mod registry;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Inlining, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

pub use tandem_sdk::{Example, Info, Op, Retention, Stamp, Stored, Violation, WriteError};

pub use cache::SETTLED as FILE_DIGEST_SETTLED;
use host::{PluginPre, State};

/// The contract version this engine speaks (the WIT package version in `sdk/wit`).
pub const CONTRACT_VERSION: &str = tandem_sdk::CONTRACT_VERSION;
/// The WIT package of the contract.
pub const CONTRACT_PACKAGE: &str = "tandem:plugin";

/// Milliseconds between epoch ticks: the resolution of the wall-clock deadline.
const EPOCH_TICK_MS: u64 = 5;
/// Bytes of each linear memory (and table) the pooling allocator zeroes in place when an
/// instance ends, instead of handing the pages back: the next session on that slot starts on
/// resident pages rather than taking a page fault for every page its plugin touches (most of a
/// single write's plugin time otherwise). Bounded by the slots in use.
const KEEP_RESIDENT_BYTES: usize = 2 << 20;
const KEEP_RESIDENT_TABLE_BYTES: usize = 64 << 10;

/// Read-only view of the node's records that `validate` may consult.
pub trait Lookup: Send + Sync {
    /// The JSON document of a live record, or `None`.
    fn lookup(&self, component: &str, key: &str) -> Option<String>;
}

/// A [`Lookup`] that knows no records.
pub struct NoLookup;

impl Lookup for NoLookup {
    fn lookup(&self, _component: &str, _key: &str) -> Option<String> {
        None
    }
}

/// Resource limits of one plugin. They change results (a call out of fuel on one node and not on
/// another), so they are part of a component's cluster-wide definition.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Fuel (roughly, WebAssembly instructions) per call.
    pub fuel: u64,
    /// Wall-clock backstop per call, in milliseconds.
    pub deadline_ms: u64,
    /// Linear memory cap per instance, in bytes.
    pub memory_bytes: usize,
    /// Largest input (document, stored version) passed to a call, in bytes.
    pub max_input_bytes: usize,
    /// Largest output returned by a call, in bytes.
    pub max_output_bytes: usize,
    /// Consecutive failed calls after which the plugin is quarantined.
    pub quarantine_after: u32,
}

/// Default fuel per call. Calibrated by `tandem plugin check` over the bundled plugins: the
/// costliest call (a security-settings write that hashes a password, about 10 M units) uses 5% of
/// it; ordinary record calls use well under 1% (see docs/BENCHMARKS.md).
pub const DEFAULT_FUEL: u64 = 200_000_000;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: DEFAULT_FUEL,
            deadline_ms: 1_000,
            memory_bytes: 16 << 20,
            max_input_bytes: 1 << 20,
            max_output_bytes: 4 << 20,
            quarantine_after: 5,
        }
    }
}

/// Why a plugin call did not produce an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginError {
    /// The plugin trapped (a panic, an unreachable, a stack overflow, a bad memory access).
    Trap { plugin: String, call: &'static str, message: String },
    /// The call used up its fuel.
    OutOfFuel { plugin: String, call: &'static str, fuel: u64 },
    /// The call ran past its wall-clock deadline.
    Deadline { plugin: String, call: &'static str, ms: u64 },
    /// The instance asked for more memory than its cap.
    OutOfMemory { plugin: String, call: &'static str, limit: usize },
    /// The plugin called an import the sandbox does not offer (files, network, ...).
    Capability { plugin: String, call: &'static str, import: String },
    /// An input was over the limit; the plugin was not called.
    InputTooLarge { plugin: String, call: &'static str, size: usize, limit: usize },
    /// The plugin returned more than the limit.
    OutputTooLarge { plugin: String, call: &'static str, size: usize, limit: usize },
    /// The plugin failed too often and is not called until it is reloaded or released.
    Quarantined { plugin: String, failures: u32, last: String },
    /// The plugin file could not be compiled or instantiated.
    Load { plugin: String, message: String },
    /// The plugin was built against a contract this engine does not speak.
    Incompatible { plugin: String, found: String, expected: String },
    /// A pinned plugin's file does not have the configured digest.
    DigestMismatch { plugin: String, expected: String, found: String },
}

impl PluginError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            PluginError::Trap { .. } => "plugin_trap",
            PluginError::OutOfFuel { .. } => "plugin_out_of_fuel",
            PluginError::Deadline { .. } => "plugin_deadline",
            PluginError::OutOfMemory { .. } => "plugin_out_of_memory",
            PluginError::Capability { .. } => "plugin_capability",
            PluginError::InputTooLarge { .. } => "plugin_input_too_large",
            PluginError::OutputTooLarge { .. } => "plugin_output_too_large",
            PluginError::Quarantined { .. } => "plugin_quarantined",
            PluginError::Load { .. } => "plugin_load",
            PluginError::Incompatible { .. } => "plugin_incompatible",
            PluginError::DigestMismatch { .. } => "plugin_digest_mismatch",
        }
    }

    /// Whether the failure follows from the code, the inputs and the component's limits alone
    /// (which every node shares), so that every node meets it alike: not from the machine (the
    /// deadline) or the node's history (quarantine, loading).
    pub fn same_on_every_node(&self) -> bool {
        matches!(
            self,
            PluginError::Trap { .. }
                | PluginError::OutOfFuel { .. }
                | PluginError::OutOfMemory { .. }
                | PluginError::Capability { .. }
                | PluginError::InputTooLarge { .. }
                | PluginError::OutputTooLarge { .. }
        )
    }

    /// Whether this error counts toward quarantine (the plugin misbehaved during a call).
    fn is_call_failure(&self) -> bool {
        matches!(
            self,
            PluginError::Trap { .. }
                | PluginError::OutOfFuel { .. }
                | PluginError::Deadline { .. }
                | PluginError::OutOfMemory { .. }
                | PluginError::Capability { .. }
                | PluginError::OutputTooLarge { .. }
        )
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginError::Trap { plugin, call, message } => write!(f, "plugin {plugin}: {call} trapped: {message}"),
            PluginError::OutOfFuel { plugin, call, fuel } => write!(f, "plugin {plugin}: {call} ran out of fuel ({fuel} units)"),
            PluginError::Deadline { plugin, call, ms } => write!(f, "plugin {plugin}: {call} overran its {ms} ms deadline"),
            PluginError::OutOfMemory { plugin, call, limit } => {
                write!(f, "plugin {plugin}: {call} exceeded its memory cap of {limit} bytes")
            }
            PluginError::Capability { plugin, call, import } => {
                write!(
                    f,
                    "plugin {plugin}: {call} called {import}, which the sandbox does not offer (no files, network, environment or real clock)"
                )
            }
            PluginError::InputTooLarge { plugin, call, size, limit } => {
                write!(f, "plugin {plugin}: {call} input of {size} bytes is over the limit of {limit}")
            }
            PluginError::OutputTooLarge { plugin, call, size, limit } => {
                write!(f, "plugin {plugin}: {call} returned {size} bytes, over the limit of {limit}")
            }
            PluginError::Quarantined { plugin, failures, last } => {
                write!(
                    f,
                    "plugin {plugin} is quarantined after {failures} consecutive failures (last: {last}); reload a fixed plugin to release it"
                )
            }
            PluginError::Load { plugin, message } => write!(f, "plugin {plugin} could not be loaded: {message}"),
            PluginError::Incompatible { plugin, found, expected } => write!(
                f,
                "plugin {plugin} was built against contract {found}, this engine speaks {CONTRACT_PACKAGE}@{expected}: rebuild it with a compatible tandem-sdk"
            ),
            PluginError::DigestMismatch { plugin, expected, found } => {
                write!(f, "plugin {plugin}: the file's digest is sha256:{found}, the configuration pins sha256:{expected}")
            }
        }
    }
}

impl std::error::Error for PluginError {}

/// Settings of the runtime itself (not of one plugin).
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where compiled plugins are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Instances the pooling allocator keeps slots for (concurrent sessions across all plugins).
    pub max_instances: u32,
    /// Largest memory cap any plugin may be given.
    pub max_memory_bytes: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { cache_dir: None, max_instances: 128, max_memory_bytes: 256 << 20 }
    }
}

/// Resources used by one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallStats {
    pub fuel: u64,
    pub memory_peak: usize,
    pub micros: u64,
}

/// Shared wasmtime engine, linker and compile cache.
pub struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    /// `linker` plus trapping stubs for the unknown imports of the components loaded so far.
    trap_linker: Mutex<Linker<State>>,
    cache: Option<cache::CompileCache>,
    max_memory_bytes: usize,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// sha256 of a plugin file, as lower-case hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The size `describe`'s answer counts against `max_output_bytes`.
fn describe_output_size(info: &Info) -> usize {
    info.examples.iter().map(|e| e.key.len() + e.input.len()).sum::<usize>() + info.description.len()
}

impl Runtime {
    /// Builds the engine. Fails only if the host cannot provide what the sandbox needs.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Arc<Runtime>> {
        let mut cfg = Config::new();
        cfg.wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .cranelift_nan_canonicalization(true)
            .relaxed_simd_deterministic(true)
            .max_wasm_stack(512 << 10)
            .parallel_compilation(true)
            // Cranelift inlines small functions (within the plugin and across the component's
            // adapters): about 10% less time per call in the plugins' serde-heavy code, for about
            // three times the compile time of a cache miss. Fuel is counted per WebAssembly
            // operator before inlining, so every call uses the same fuel as without it.
            .compiler_inlining(Inlining::Yes);
        // For profiling plugins: `TANDEM_PERFMAP=1` writes `/tmp/perf-PID.map`, from which
        // `perf report` names each plugin function (see docs/plugin-guide.md). Results do not
        // change; it only costs the map file's writes when code is loaded.
        if std::env::var_os("TANDEM_PERFMAP").is_some() {
            cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances.saturating_mul(4))
            .total_memories(config.max_instances.saturating_mul(2))
            .total_tables(config.max_instances.saturating_mul(4))
            .max_memory_size(config.max_memory_bytes)
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_TABLE_BYTES);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&cfg).map_err(|e| anyhow::anyhow!("cannot create the WebAssembly engine: {e}"))?;
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("cannot set up the plugin host: {e}"))?;
        let cache = config.cache_dir.map(|dir| cache::CompileCache::new(dir, &engine));
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let stop = ticker_stop.clone();
        let ticking = engine.clone();
        std::thread::Builder::new()
            .name("tandem-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
                    ticking.increment_epoch();
                }
            })
            .map_err(|e| anyhow::anyhow!("cannot start the epoch thread: {e}"))?;
        let trap_linker = Mutex::new(linker.clone());
        Ok(Arc::new(Runtime { engine, linker, trap_linker, cache, max_memory_bytes: config.max_memory_bytes, ticker_stop }))
    }

    /// Compiles (or loads from the cache) a plugin, checks its contract version and `describe`.
    /// `name` is used in messages until the plugin has told its component name.
    pub fn load(self: &Arc<Self>, name: &str, bytes: &[u8], limits: Limits) -> Result<Arc<LoadedPlugin>, PluginError> {
        let started = Instant::now();
        let digest = digest(bytes);
        let digest_us = micros(started.elapsed());
        self.load_bytes(name, bytes, digest, limits, started, digest_us)
    }

    /// [`Runtime::load`] for a caller that already computed `digest(bytes)` (e.g. to check a pin).
    pub fn load_with_digest(
        self: &Arc<Self>,
        name: &str,
        bytes: &[u8],
        digest: String,
        limits: Limits,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        self.load_bytes(name, bytes, digest, limits, Instant::now(), 0)
    }

    /// Loads the plugin file at `path`, refusing it if `pinned` (a sha256 in hex) is given and
    /// differs from the file's digest.
    ///
    /// With a compile cache, the file's digest is remembered beside the compiled code, keyed by
    /// the file's identity (device, inode, size, modification and change times): a file whose
    /// identity is unchanged is not read again when its compiled code is in the cache. A file that
    /// changed in any way is read and hashed again, so a replaced file is never served under the
    /// old digest. See `cache.rs` for the exact rule and its limits.
    pub fn load_file(
        self: &Arc<Self>,
        name: &str,
        path: &Path,
        pinned: Option<&str>,
        limits: Limits,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let started = Instant::now();
        self.check_memory_cap(name, &limits)?;
        let read_err =
            |e: std::io::Error| PluginError::Load { plugin: name.to_owned(), message: format!("cannot read {}: {e}", path.display()) };
        let check_pin = |found: &str| match pinned {
            Some(expected) if expected != found => {
                Err(PluginError::DigestMismatch { plugin: name.to_owned(), expected: expected.to_owned(), found: found.to_owned() })
            }
            _ => Ok(()),
        };
        let mut file = std::fs::File::open(path).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        let id = cache::FileId::of(&meta);
        if let (Some(cache), Some(id)) = (&self.cache, &id)
            && let Some(found) = cache.remembered_digest(path, id)
        {
            check_pin(&found)?;
            let digest_us = micros(started.elapsed());
            if let Some(hit) = cache.get(&self.engine, &found, CONTRACT_VERSION) {
                return self.finish_load(name, found, hit.component, hit.describe, true, limits, started, digest_us);
            }
        }
        let hashing_started = SystemTime::now();
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        std::io::Read::read_to_end(&mut file, &mut bytes).map_err(read_err)?;
        let found = digest(&bytes);
        if let (Some(cache), Some(before)) = (&self.cache, &id)
            && let Ok(after) = file.metadata()
            && let Some(after) = cache::FileId::of(&after)
        {
            cache.remember_digest(path, before, &after, hashing_started, &found);
        }
        check_pin(&found)?;
        let digest_us = micros(started.elapsed());
        self.load_bytes(name, &bytes, found, limits, started, digest_us)
    }

    /// Refuses limits whose memory cap the runtime's pooling allocator cannot give (checked
    /// before any compiling).
    fn check_memory_cap(&self, name: &str, limits: &Limits) -> Result<(), PluginError> {
        if limits.memory_bytes > self.max_memory_bytes {
            let message = format!("memory cap {} is over the runtime's maximum of {}", limits.memory_bytes, self.max_memory_bytes);
            return Err(PluginError::Load { plugin: name.to_owned(), message });
        }
        Ok(())
    }

    fn load_bytes(
        self: &Arc<Self>,
        name: &str,
        bytes: &[u8],
        digest: String,
        limits: Limits,
        started: Instant,
        digest_us: u64,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let load_err = |message: String| PluginError::Load { plugin: name.to_owned(), message };
        self.check_memory_cap(name, &limits)?;
        let (component, describe, from_cache) = match &self.cache {
            Some(cache) => match cache.get(&self.engine, &digest, CONTRACT_VERSION) {
                Some(hit) => (hit.component, hit.describe, true),
                None => {
                    (cache.compile(&self.engine, &digest, CONTRACT_VERSION, bytes).map_err(|e| load_err(format!("{e:#}")))?, None, false)
                }
            },
            None => (Component::new(&self.engine, bytes).map_err(|e| load_err(format!("not a valid component: {e:#}")))?, None, false),
        };
        self.finish_load(name, digest, component, describe, from_cache, limits, started, digest_us)
    }

    /// Contract version check, linking, and `describe` (from the cache when its answer is there
    /// and the limits allow what the call took, else called on a first instance).
    #[allow(clippy::too_many_arguments)]
    fn finish_load(
        self: &Arc<Self>,
        name: &str,
        digest: String,
        component: Component,
        cached_describe: Option<cache::CachedDescribe>,
        from_cache: bool,
        limits: Limits,
        started: Instant,
        digest_us: u64,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let load_err = |message: String| PluginError::Load { plugin: name.to_owned(), message };
        let t_code = started.elapsed();
        let contract = contract_version(&self.engine, &component)
            .ok_or_else(|| load_err(format!("it does not export {CONTRACT_PACKAGE}/component: not a Tandem plugin")))?;
        if !compatible(&contract, CONTRACT_VERSION) {
            return Err(PluginError::Incompatible {
                plugin: name.to_owned(),
                found: format!("{CONTRACT_PACKAGE}@{contract}"),
                expected: CONTRACT_VERSION.to_owned(),
            });
        }
        let pre = self.link(&component).map_err(|e| load_err(format!("{e:#}")))?;
        let t_link = started.elapsed();
        let mut plugin = LoadedPlugin {
            name: name.to_owned(),
            digest,
            contract,
            info: Info {
                component: name.to_owned(),
                plugin_version: String::new(),
                schema_version: 0,
                description: String::new(),
                shape: String::new(),
                examples: Vec::new(),
                retention: None,
            },
            limits,
            pre,
            runtime: self.clone(),
            from_cache,
            describe_cached: false,
            load_micros: 0,
            health: Health::default(),
        };
        // Execution is deterministic: the cached answer is what the call would return, provided
        // the limits let it finish as it did when it was cached.
        let usable = cached_describe.filter(|d| {
            d.fuel < plugin.limits.fuel && d.memory_peak <= plugin.limits.memory_bytes && d.output_bytes <= plugin.limits.max_output_bytes
        });
        let describe_cached = usable.is_some();
        let info = match usable {
            Some(d) => d.info,
            None => {
                let describe_plugin = Arc::new(plugin.clone_for_describe());
                let mut session = describe_plugin.session(Arc::new(NoLookup))?;
                let info = session.describe()?;
                let stats = session.last_call();
                if let Some(cache) = &self.cache
                    && check_info(&info).is_ok()
                {
                    let answer = cache::CachedDescribe {
                        info: info.clone(),
                        fuel: stats.fuel,
                        memory_peak: stats.memory_peak,
                        output_bytes: describe_output_size(&info),
                    };
                    cache.put_describe(&plugin.digest, CONTRACT_VERSION, &answer);
                }
                info
            }
        };
        if let Err(why) = check_info(&info) {
            return Err(load_err(format!("describe() is not well-formed: {why}")));
        }
        plugin.name = info.component.clone();
        plugin.info = info;
        plugin.describe_cached = describe_cached;
        plugin.load_micros = micros(started.elapsed());
        tracing::debug!(
            plugin = %plugin.name,
            from_cache,
            describe_cached,
            digest_us,
            code_us = micros(t_code).saturating_sub(digest_us),
            link_us = micros(t_link - t_code),
            describe_us = micros(started.elapsed() - t_link),
            total_us = plugin.load_micros,
            "plugin loaded"
        );
        Ok(Arc::new(plugin))
    }

    /// Links a component: the host's functions, and a trap for every other import.
    ///
    /// Stubbing a component's unknown imports (every WASI interface it pulls in) is most of the
    /// cost of linking, and plugins import much the same ones, so the stubs are kept in a linker
    /// shared by the runtime's loads: it only ever gains stubs (which trap whatever their type) and
    /// never loses or replaces the host's definitions. A component that does not link against it
    /// (an import of a name already stubbed as another kind of item) is linked on its own.
    fn link(&self, component: &Component) -> wasmtime::Result<PluginPre<State>> {
        {
            let mut shared = self.trap_linker.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(pre) = shared.instantiate_pre(component) {
                return PluginPre::new(pre);
            }
            if shared.define_unknown_imports_as_traps(component).is_ok()
                && let Ok(pre) = shared.instantiate_pre(component)
            {
                return PluginPre::new(pre);
            }
        }
        let mut linker = self.linker.clone();
        linker.define_unknown_imports_as_traps(component)?;
        PluginPre::new(linker.instantiate_pre(component)?)
    }

    /// The wasmtime engine (for benchmarks and tests).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// Checks the facts a plugin declares.
pub fn check_info(info: &Info) -> Result<(), String> {
    let name_ok = !info.component.is_empty()
        && info.component.len() <= 64
        && info.component.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !info.component.starts_with('-');
    if !name_ok {
        return Err(format!("component name {:?} must be 1 to 64 of a-z, 0-9 and -", info.component));
    }
    let semver_ok = {
        let parts: Vec<&str> = info.plugin_version.split(['-', '+']).next().unwrap_or("").split('.').collect();
        parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
    };
    if !semver_ok {
        return Err(format!("plugin version {:?} is not semver (MAJOR.MINOR.PATCH)", info.plugin_version));
    }
    for (i, ex) in info.examples.iter().enumerate() {
        if ex.key.is_empty() {
            return Err(format!("example {i} has an empty key"));
        }
        if serde_json::from_str::<serde_json::Value>(&ex.input).is_err() {
            return Err(format!("example {i} ({}) is not JSON", ex.key));
        }
    }
    Ok(())
}

/// The contract version a component exports, from its export names.
fn contract_version(engine: &Engine, component: &Component) -> Option<String> {
    let ty = component.component_type();
    let prefix = format!("{CONTRACT_PACKAGE}/component@");
    ty.exports(engine).find_map(|(name, _)| name.strip_prefix(&prefix).map(str::to_owned))
}

/// The compatibility rule (see sdk/wit/plugin.wit): same major version and a minor version no newer
/// than the engine's (a newer minor may import host functions this engine lacks); for 0.x, the
/// same minor version.
pub fn compatible(plugin: &str, engine: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64, u64)> {
        let mut it = v.split(['-', '+']).next()?.split('.').map(|p| p.parse::<u64>().ok());
        Some((it.next()??, it.next()??, it.next()??))
    };
    match (parse(plugin), parse(engine)) {
        (Some((0, pm, _)), Some((0, em, _))) => pm == em,
        (Some((pmaj, pmin, _)), Some((emaj, emin, _))) => pmaj == emaj && pmaj != 0 && pmin <= emin,
        _ => false,
    }
}

/// Failure bookkeeping of one loaded plugin.
#[derive(Default)]
struct Health {
    consecutive: AtomicU32,
    total_failures: AtomicU64,
    calls: AtomicU64,
    fuel: AtomicU64,
    quarantined: AtomicBool,
    last: Mutex<String>,
}

/// A compiled, checked plugin, ready to instantiate.
pub struct LoadedPlugin {
    name: String,
    digest: String,
    contract: String,
    info: Info,
    limits: Limits,
    pre: PluginPre<State>,
    /// Keeps the engine and its epoch ticker alive while the plugin can be called.
    runtime: Arc<Runtime>,
    from_cache: bool,
    describe_cached: bool,
    load_micros: u64,
    health: Health,
}

impl fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("version", &self.info.plugin_version)
            .field("digest", &self.digest)
            .field("contract", &self.contract)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("plugin", &self.plugin.name).field("live", &self.live.is_some()).finish_non_exhaustive()
    }
}

/// Counters of a loaded plugin, for status and metrics.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PluginHealth {
    pub calls: u64,
    pub failures: u64,
    pub fuel: u64,
    pub quarantined: bool,
    pub last_failure: String,
}

impl LoadedPlugin {
    fn clone_for_describe(&self) -> LoadedPlugin {
        LoadedPlugin {
            name: self.name.clone(),
            digest: self.digest.clone(),
            contract: self.contract.clone(),
            info: self.info.clone(),
            limits: self.limits.clone(),
            pre: self.pre.clone(),
            runtime: self.runtime.clone(),
            from_cache: self.from_cache,
            describe_cached: false,
            load_micros: 0,
            health: Health::default(),
        }
    }

    /// Component name, as the plugin describes itself.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// sha256 of the plugin file (hex).
    pub fn digest(&self) -> &str {
        &self.digest
    }
    /// Contract version the plugin was built against.
    pub fn contract(&self) -> &str {
        &self.contract
    }
    /// What `describe` returned at load.
    pub fn info(&self) -> &Info {
        &self.info
    }
    /// The limits calls run under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
    /// Whether the compiled code came from the cache.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }
    /// Whether `describe`'s answer came from the cache (no instance was made at load).
    pub fn describe_cached(&self) -> bool {
        self.describe_cached
    }
    /// Time spent loading (digest, compile or cache read, link, `describe`), in microseconds.
    pub fn load_micros(&self) -> u64 {
        self.load_micros
    }

    /// Counters since load.
    pub fn health(&self) -> PluginHealth {
        PluginHealth {
            calls: self.health.calls.load(Ordering::Relaxed),
            failures: self.health.total_failures.load(Ordering::Relaxed),
            fuel: self.health.fuel.load(Ordering::Relaxed),
            quarantined: self.health.quarantined.load(Ordering::Relaxed),
            last_failure: self.health.last.lock().map(|s| s.clone()).unwrap_or_default(),
        }
    }

    /// Whether the plugin is quarantined.
    pub fn is_quarantined(&self) -> bool {
        self.health.quarantined.load(Ordering::Relaxed)
    }

    /// Lets a quarantined plugin be called again.
    pub fn release(&self) {
        self.health.consecutive.store(0, Ordering::Relaxed);
        self.health.quarantined.store(false, Ordering::Relaxed);
    }

    fn quarantine_error(&self) -> PluginError {
        PluginError::Quarantined {
            plugin: self.name.clone(),
            failures: self.health.consecutive.load(Ordering::Relaxed),
            last: self.health.last.lock().map(|s| s.clone()).unwrap_or_default(),
        }
    }

    fn record(&self, outcome: Result<u64, &PluginError>) {
        self.health.calls.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(fuel) => {
                self.health.fuel.fetch_add(fuel, Ordering::Relaxed);
                self.health.consecutive.store(0, Ordering::Relaxed);
            }
            Err(e) if e.is_call_failure() => {
                self.health.total_failures.fetch_add(1, Ordering::Relaxed);
                let n = self.health.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                if let Ok(mut last) = self.health.last.lock() {
                    *last = e.to_string();
                }
                if n >= self.limits.quarantine_after && !self.health.quarantined.swap(true, Ordering::Relaxed) {
                    tracing::error!(plugin = %self.name, failures = n, last = %e, "plugin quarantined");
                }
            }
            Err(_) => {}
        }
    }

    /// A session: a fresh instance for a batch of calls.
    pub fn session(self: &Arc<Self>, lookup: Arc<dyn Lookup>) -> Result<Session, PluginError> {
        if self.is_quarantined() {
            return Err(self.quarantine_error());
        }
        Ok(Session { plugin: self.clone(), lookup, live: None, last: CallStats::default() })
    }

    fn new_store(&self, lookup: Arc<dyn Lookup>) -> Store<State> {
        let state = State { lookup, lookups: 0, memory_cap: self.limits.memory_bytes, memory_peak: 0, memory_refused: false };
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| s as &mut dyn wasmtime::ResourceLimiter);
        store.epoch_deadline_trap();
        store
    }
}

/// One instance serving a batch of calls. Dropped at the end of the batch.
pub struct Session {
    plugin: Arc<LoadedPlugin>,
    lookup: Arc<dyn Lookup>,
    /// The store and its one instance; replaced whole after a failed call, so that nothing of a
    /// failed instance (memory, pool slot, state) survives it.
    live: Option<(Store<State>, host::Plugin)>,
    last: CallStats,
}

impl Session {
    /// The plugin this session calls.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    /// Resources used by the last call.
    pub fn last_call(&self) -> CallStats {
        self.last
    }

    fn check_input(&self, call: &'static str, size: usize) -> Result<(), PluginError> {
        let limit = self.plugin.limits.max_input_bytes;
        if size > limit {
            return Err(PluginError::InputTooLarge { plugin: self.plugin.name.clone(), call, size, limit });
        }
        Ok(())
    }

    fn check_output(&self, call: &'static str, size: usize) -> Result<(), PluginError> {
        let limit = self.plugin.limits.max_output_bytes;
        if size > limit {
            return Err(PluginError::OutputTooLarge { plugin: self.plugin.name.clone(), call, size, limit });
        }
        Ok(())
    }

    /// Runs one call with fresh fuel and deadline, classifying any failure.
    fn call<R>(
        &mut self,
        call: &'static str,
        f: impl FnOnce(&host::Plugin, &mut Store<State>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        if self.plugin.is_quarantined() {
            return Err(self.plugin.quarantine_error());
        }
        let limits = self.plugin.limits.clone();
        let started = Instant::now();
        let mut failed_state = None;
        let result = (|| -> wasmtime::Result<R> {
            if self.live.is_none() {
                let mut store = self.plugin.new_store(self.lookup.clone());
                store.set_fuel(limits.fuel)?;
                store.set_epoch_deadline(limits.deadline_ms.div_ceil(EPOCH_TICK_MS) + 1);
                let instance = self.plugin.pre.instantiate(&mut store);
                match instance {
                    Ok(instance) => self.live = Some((store, instance)),
                    Err(e) => {
                        failed_state = Some(store.data().memory_refused);
                        return Err(e);
                    }
                }
            }
            let (store, instance) = self.live.as_mut().ok_or_else(|| wasmtime::format_err!("no instance"))?;
            store.set_fuel(limits.fuel)?;
            store.set_epoch_deadline(limits.deadline_ms.div_ceil(EPOCH_TICK_MS) + 1);
            let state = store.data_mut();
            state.lookups = 0;
            state.memory_refused = false;
            f(instance, store)
        })();
        let (fuel_left, memory, refused) = match (&self.live, failed_state) {
            (Some((store, _)), _) => (store.get_fuel().unwrap_or(0), store.data().memory_peak, store.data().memory_refused),
            (None, Some(refused)) => (0, 0, refused),
            (None, None) => (0, 0, false),
        };
        self.last = CallStats {
            fuel: limits.fuel.saturating_sub(fuel_left),
            memory_peak: memory,
            micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        };
        let outcome = result.map_err(|e| {
            // A failed instance is never reused: drop its whole store.
            self.live = None;
            self.classify(call, &e, &limits, refused)
        });
        self.plugin.record(outcome.as_ref().map(|_| self.last.fuel));
        outcome
    }

    fn classify(&self, call: &'static str, e: &wasmtime::Error, limits: &Limits, memory_refused: bool) -> PluginError {
        let plugin = self.plugin.name.clone();
        if memory_refused {
            return PluginError::OutOfMemory { plugin, call, limit: limits.memory_bytes };
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => return PluginError::OutOfFuel { plugin, call, fuel: limits.fuel },
            Some(Trap::Interrupt) => return PluginError::Deadline { plugin, call, ms: limits.deadline_ms },
            Some(Trap::StackOverflow) => return PluginError::Trap { plugin, call, message: "stack overflow".to_owned() },
            Some(trap) => return PluginError::Trap { plugin, call, message: trap.to_string() },
            None => {}
        }
        let full = format!("{e:#}");
        tracing::debug!(plugin = %plugin, call, error = %full, "plugin call failed");
        if let Some(rest) = full.split("unknown import: `").nth(1) {
            let import = rest.split('`').next().unwrap_or(rest).to_owned();
            // A Rust guest reaches for stderr when it panics, and for exit when it aborts.
            if import.starts_with("wasi:cli/stderr") || import.starts_with("wasi:cli/stdout") || import.starts_with("wasi:cli/exit") {
                return PluginError::Trap {
                    plugin,
                    call,
                    message: format!("the plugin panicked or aborted (it called {import}; output is not available to plugins)"),
                };
            }
            return PluginError::Capability { plugin, call, import };
        }
        // The first line names the failure; the wasm backtrace after it goes to the debug log.
        let message = full.lines().next().unwrap_or("trap").to_owned();
        PluginError::Trap { plugin, call, message }
    }

    /// `describe()`.
    pub fn describe(&mut self) -> Result<Info, PluginError> {
        let info = self.call("describe", |p, s| p.tandem_plugin_component().call_describe(s))?;
        let info = Info {
            component: info.component,
            plugin_version: info.plugin_version,
            schema_version: info.schema_version,
            description: info.description,
            shape: info.shape,
            examples: info.examples.into_iter().map(|e| Example { key: e.key, input: e.input }).collect(),
            retention: info.retention.map(|r| Retention { max_age_ms: r.max_age_ms, max_count: r.max_count }),
        };
        self.check_output("describe", describe_output_size(&info))?;
        Ok(info)
    }

    /// `serialize(key, op, prior, stamp)`.
    pub fn serialize(
        &mut self,
        key: &str,
        op: &Op,
        prior: Option<&[u8]>,
        stamp: &Stamp,
    ) -> Result<Result<Stored, WriteError>, PluginError> {
        let input_size = key.len() + prior.map_or(0, <[u8]>::len) + if let Op::Put(doc) = op { doc.len() } else { 0 };
        self.check_input("serialize", input_size)?;
        let wit_op = match op {
            Op::Put(doc) => host::tandem::plugin::types::Op::Put(doc.clone()),
            Op::Delete => host::tandem::plugin::types::Op::Delete,
        };
        let wit_stamp = host::tandem::plugin::types::Stamp { physical: stamp.physical, logical: stamp.logical, node: stamp.node.clone() };
        let out = self.call("serialize", |p, s| p.tandem_plugin_component().call_serialize(s, key, &wit_op, prior, &wit_stamp))?;
        match out {
            Ok(stored) => {
                self.check_output("serialize", stored.data.len())?;
                Ok(Ok(Stored { data: stored.data, tombstone: stored.tombstone }))
            }
            Err(host::tandem::plugin::types::WriteError::Invalid(v)) => {
                self.check_output("serialize", violations_size(&v))?;
                Ok(Err(WriteError::Invalid(v.into_iter().map(violation).collect())))
            }
            Err(host::tandem::plugin::types::WriteError::Malformed(m)) => {
                self.check_output("serialize", m.len())?;
                Ok(Err(WriteError::Malformed(m)))
            }
        }
    }

    /// `deserialize(key, data)`.
    pub fn deserialize(&mut self, key: &str, data: &[u8]) -> Result<Result<Option<String>, String>, PluginError> {
        self.check_input("deserialize", key.len() + data.len())?;
        let out = self.call("deserialize", |p, s| p.tandem_plugin_component().call_deserialize(s, key, data))?;
        let size = match &out {
            Ok(doc) => doc.as_ref().map_or(0, String::len),
            Err(m) => m.len(),
        };
        self.check_output("deserialize", size)?;
        Ok(out)
    }

    /// `merge(key, a, b)`.
    pub fn merge(&mut self, key: &str, a: &[u8], b: &[u8]) -> Result<Result<Stored, String>, PluginError> {
        self.check_input("merge", key.len() + a.len() + b.len())?;
        let out = self.call("merge", |p, s| p.tandem_plugin_component().call_merge(s, key, a, b))?;
        match out {
            Ok(stored) => {
                self.check_output("merge", stored.data.len())?;
                Ok(Ok(Stored { data: stored.data, tombstone: stored.tombstone }))
            }
            Err(m) => {
                self.check_output("merge", m.len())?;
                Ok(Err(m))
            }
        }
    }

    /// `validate(key, data)`.
    pub fn validate(&mut self, key: &str, data: &[u8]) -> Result<Result<(), Vec<Violation>>, PluginError> {
        self.check_input("validate", key.len() + data.len())?;
        let out = self.call("validate", |p, s| p.tandem_plugin_component().call_validate(s, key, data))?;
        match out {
            Ok(()) => Ok(Ok(())),
            Err(v) => {
                self.check_output("validate", violations_size(&v))?;
                Ok(Err(v.into_iter().map(violation).collect()))
            }
        }
    }
}

fn violations_size(v: &[host::tandem::plugin::types::Violation]) -> usize {
    v.iter().map(|x| x.field.len() + x.code.len() + x.message.len()).sum()
}

fn violation(v: host::tandem::plugin::types::Violation) -> Violation {
    Violation { field: v.field, code: v.code, message: v.message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached_runtime(dir: &Path) -> Arc<Runtime> {
        let config = RuntimeConfig { cache_dir: Some(dir.to_path_buf()), max_instances: 8, max_memory_bytes: 64 << 20 };
        Runtime::new(config).expect("runtime")
    }

    fn trunks() -> &'static [u8] {
        crate::bundled::get("trunks").expect("trunks is bundled")
    }

    fn files_ending(dir: &Path, ext: &str) -> Vec<PathBuf> {
        let entries = std::fs::read_dir(dir).expect("cache dir");
        entries.map(|e| e.expect("entry").path()).filter(|p| p.extension().is_some_and(|e| e == ext)).collect()
    }

    #[test]
    fn describe_is_cached_beside_the_code_and_a_corrupted_meta_file_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = cached_runtime(dir.path()).load("trunks", trunks(), Limits::default()).expect("load");
        assert!(!first.from_cache() && !first.describe_cached());
        let second = cached_runtime(dir.path()).load("trunks", trunks(), Limits::default()).expect("load");
        assert!(second.from_cache() && second.describe_cached());
        assert_eq!(second.info(), first.info());
        assert_eq!(second.name(), "trunks");

        // One changed byte anywhere in the meta file: the entry is not trusted.
        for meta in files_ending(dir.path(), "meta") {
            let text = std::fs::read_to_string(&meta).expect("meta");
            std::fs::write(&meta, text.replacen("trunks", "trunkz", 1)).expect("tamper");
        }
        let third = cached_runtime(dir.path()).load("trunks", trunks(), Limits::default()).expect("load");
        assert!(!third.from_cache() && !third.describe_cached(), "a corrupted meta file is ignored");
        assert_eq!(third.info(), first.info());

        // A truncated compiled file is recompiled.
        for code in files_ending(dir.path(), "cwasm") {
            let bytes = std::fs::read(&code).expect("code");
            std::fs::write(&code, &bytes[..bytes.len() - 1]).expect("truncate");
        }
        let fourth = cached_runtime(dir.path()).load("trunks", trunks(), Limits::default()).expect("load");
        assert!(!fourth.from_cache());
        let mut s = fourth.session(Arc::new(NoLookup)).expect("session");
        assert!(s.describe().is_ok());
    }

    #[test]
    fn a_cached_describe_is_not_used_under_limits_it_would_not_fit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = cached_runtime(dir.path()).load("trunks", trunks(), Limits::default()).expect("load");
        assert!(!first.describe_cached());
        // Far too little fuel for describe: the cached answer must not hide that.
        let tight = Limits { fuel: 1_000, ..Limits::default() };
        let err = cached_runtime(dir.path()).load("trunks", trunks(), tight).expect_err("describe runs out of fuel");
        assert_eq!(err.code(), "plugin_out_of_fuel", "{err}");
        let small_output = Limits { max_output_bytes: 10, ..Limits::default() };
        let err = cached_runtime(dir.path()).load("trunks", trunks(), small_output).expect_err("describe is too large");
        assert_eq!(err.code(), "plugin_output_too_large", "{err}");
        let again = cached_runtime(dir.path()).load("trunks", trunks(), Limits::default()).expect("load");
        assert!(again.describe_cached());
    }

    #[test]
    fn a_remembered_file_digest_never_outlives_the_file_and_pins_still_hold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache_dir = dir.path().join("cache");
        let file = dir.path().join("trunks.wasm");
        std::fs::write(&file, trunks()).expect("write");
        let rt = cached_runtime(&cache_dir);
        let loaded = rt.load_file("trunks", &file, None, Limits::default()).expect("load");
        assert_eq!(loaded.digest(), digest(trunks()));
        // A file this new is not remembered; pretend it settled long ago, as at a restart.
        let cache = rt.cache.as_ref().expect("cache");
        let id = cache::FileId::of(&std::fs::metadata(&file).expect("meta")).expect("id");
        let later = SystemTime::now() + Duration::from_secs(60);
        cache.remember_digest(&file, &id, &id, later, loaded.digest());
        assert_eq!(cache.remembered_digest(&file, &id).as_deref(), Some(loaded.digest()));

        let again = cached_runtime(&cache_dir).load_file("trunks", &file, None, Limits::default()).expect("load");
        assert!(again.from_cache() && again.describe_cached());
        assert_eq!(again.digest(), loaded.digest());
        // A pin that differs is refused without reading the file ...
        let other = "0".repeat(64);
        let err = cached_runtime(&cache_dir).load_file("trunks", &file, Some(&other), Limits::default()).expect_err("pin");
        assert_eq!(err.code(), "plugin_digest_mismatch");
        // ... and the right pin passes.
        cached_runtime(&cache_dir).load_file("trunks", &file, Some(loaded.digest()), Limits::default()).expect("pinned load");

        // The file rewritten in place (same inode) with other bytes: hashed again, never served
        // under the remembered digest.
        let hostile = crate::bundled::get("crm").expect("crm is bundled");
        std::fs::write(&file, hostile).expect("rewrite");
        let err = cached_runtime(&cache_dir).load_file("trunks", &file, Some(loaded.digest()), Limits::default()).expect_err("pin");
        assert_eq!(err.code(), "plugin_digest_mismatch");
        let replaced = cached_runtime(&cache_dir).load_file("trunks", &file, None, Limits::default()).expect("load");
        assert_eq!(replaced.digest(), digest(hostile));
        assert_eq!(replaced.name(), "crm");
    }

    #[test]
    fn compatibility_rule() {
        assert!(compatible("0.1.0", "0.1.0"));
        assert!(compatible("0.1.3", "0.1.0"));
        assert!(!compatible("0.2.0", "0.1.0"));
        assert!(!compatible("9.0.0", "0.1.0"));
        assert!(compatible("1.0.0", "1.4.0"));
        assert!(!compatible("1.4.0", "1.0.0"));
        assert!(!compatible("2.0.0", "1.9.0"));
        assert!(!compatible("garbage", "0.1.0"));
    }
}
