//! The plugins of a node, one per component, with pinning and hot reload.
//!
//! Swapping is atomic: callers take an `Arc<LoadedPlugin>` for a batch, so calls in flight finish
//! on the version they started with while new batches get the new one. A file that fails to load
//! (not a component, wrong contract, bad `describe`, wrong component name, pinned digest mismatch)
//! leaves the serving version in place, and the reason is logged and kept for status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::{Limits, LoadedPlugin, PluginError, Runtime};

/// How a component's plugin is configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginSpec {
    /// The component the plugin must declare.
    pub component: String,
    /// The `.wasm` file.
    pub path: PathBuf,
    /// Pinned sha256 digest (hex, optionally prefixed `sha256:`). A file that does not match is
    /// refused; the file is not watched.
    pub digest: Option<String>,
    pub limits: Limits,
}

impl PluginSpec {
    fn pinned(&self) -> Option<String> {
        self.digest.as_ref().map(|d| d.strip_prefix("sha256:").unwrap_or(d).to_ascii_lowercase())
    }
}

struct Entry {
    spec: PluginSpec,
    current: Arc<LoadedPlugin>,
    reloads: u64,
    last_error: Option<String>,
}

/// What status shows of a component's plugin.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PluginStatus {
    pub component: String,
    pub path: PathBuf,
    pub digest: String,
    pub pinned: bool,
    pub plugin_version: String,
    pub schema_version: u32,
    pub contract: String,
    pub load_micros: u64,
    pub from_cache: bool,
    pub reloads: u64,
    pub last_reload_error: Option<String>,
    pub health: super::PluginHealth,
}

/// The plugins of one node.
pub struct Registry {
    runtime: Arc<Runtime>,
    entries: RwLock<BTreeMap<String, Entry>>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

impl Registry {
    pub fn new(runtime: Arc<Runtime>) -> Arc<Registry> {
        Arc::new(Registry { runtime, entries: RwLock::new(BTreeMap::new()), watcher: Mutex::new(None) })
    }

    /// The runtime plugins are loaded into.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Reads, checks and compiles the plugin a spec names. The file's digest serves the pin check
    /// and the compile cache's key; it is remembered by the cache while the file is unchanged
    /// (see [`Runtime::load_file`]).
    pub fn load_spec(&self, spec: &PluginSpec) -> Result<Arc<LoadedPlugin>, PluginError> {
        let pinned = spec.pinned();
        let plugin = self.runtime.load_file(&spec.component, &spec.path, pinned.as_deref(), spec.limits.clone())?;
        if plugin.name() != spec.component {
            return Err(PluginError::Load {
                plugin: spec.component.clone(),
                message: format!(
                    "{} declares component {:?}, but is configured for {:?}",
                    spec.path.display(),
                    plugin.name(),
                    spec.component
                ),
            });
        }
        Ok(plugin)
    }

    /// Adds (or replaces) a component's plugin. Fails without changing anything if it does not load.
    pub fn add(&self, spec: PluginSpec) -> Result<Arc<LoadedPlugin>, PluginError> {
        let plugin = self.load_spec(&spec)?;
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.insert(spec.component.clone(), Entry { spec, current: plugin.clone(), reloads: 0, last_error: None });
        drop(entries);
        self.rewatch();
        Ok(plugin)
    }

    /// The serving version of a component's plugin.
    pub fn get(&self, component: &str) -> Option<Arc<LoadedPlugin>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).get(component).map(|e| e.current.clone())
    }

    /// Configured components, sorted.
    pub fn components(&self) -> Vec<String> {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// Status of every plugin.
    pub fn status(&self) -> Vec<PluginStatus> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .values()
            .map(|e| PluginStatus {
                component: e.spec.component.clone(),
                path: e.spec.path.clone(),
                digest: format!("sha256:{}", e.current.digest()),
                pinned: e.spec.digest.is_some(),
                plugin_version: e.current.info().plugin_version.clone(),
                schema_version: e.current.info().schema_version,
                contract: e.current.contract().to_owned(),
                load_micros: e.current.load_micros(),
                from_cache: e.current.from_cache(),
                reloads: e.reloads,
                last_reload_error: e.last_error.clone(),
                health: e.current.health(),
            })
            .collect()
    }

    /// Re-reads a component's file; swaps in the new version if its digest changed. Returns
    /// whether a new version now serves. On failure the old version keeps serving.
    pub fn reload(&self, component: &str) -> Result<bool, PluginError> {
        let spec = {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            match entries.get(component) {
                Some(e) => e.spec.clone(),
                None => return Ok(false),
            }
        };
        self.replace(spec, false)
    }

    /// Applies a changed configuration for a component: a new pinned digest, path or limits load
    /// the plugin again.
    pub fn update_spec(&self, spec: PluginSpec) -> Result<bool, PluginError> {
        let same = {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            match entries.get(&spec.component) {
                Some(e) => e.spec == spec,
                None => false,
            }
        };
        if same {
            return Ok(false);
        }
        let known = self.get(&spec.component).is_some();
        if !known {
            self.add(spec)?;
            return Ok(true);
        }
        let changed = self.replace(spec, true)?;
        self.rewatch();
        Ok(changed)
    }

    fn replace(&self, spec: PluginSpec, force: bool) -> Result<bool, PluginError> {
        let component = spec.component.clone();
        match self.load_spec(&spec) {
            Ok(plugin) => {
                let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
                let Some(entry) = entries.get_mut(&component) else { return Ok(false) };
                if !force && entry.current.digest() == plugin.digest() {
                    entry.last_error = None;
                    return Ok(false);
                }
                tracing::info!(component = %component, from = %entry.current.digest(), to = %plugin.digest(), version = %plugin.info().plugin_version, "plugin reloaded");
                entry.current = plugin;
                entry.spec = spec;
                entry.reloads += 1;
                entry.last_error = None;
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(component = %component, error = %e, "new plugin version refused; the previous version keeps serving");
                let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
                if let Some(entry) = entries.get_mut(&component) {
                    entry.last_error = Some(e.to_string());
                }
                Err(e)
            }
        }
    }

    /// Starts watching unpinned plugin files; a changed file is reloaded.
    pub fn watch(self: &Arc<Self>) -> notify::Result<()> {
        let weak = Arc::downgrade(self);
        let (tx, rx) = crossbeam_channel::unbounded::<PathBuf>();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                for path in event.paths {
                    let _ = tx.send(path);
                }
            }
        })?;
        for dir in self.watched_dirs() {
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        }
        *self.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(watcher);
        std::thread::Builder::new()
            .name("tandem-plugin-watch".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Let a writer finish, and fold a burst of events into one reload.
                    std::thread::sleep(Duration::from_millis(50));
                    let mut paths = vec![first];
                    paths.extend(rx.try_iter());
                    let Some(registry) = weak.upgrade() else { return };
                    for component in registry.components_for(&paths) {
                        let _ = registry.reload(&component);
                    }
                }
            })
            .map_err(|e| notify::Error::generic(&e.to_string()))?;
        Ok(())
    }

    fn watched_dirs(&self) -> Vec<PathBuf> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let mut dirs: Vec<PathBuf> = entries
            .values()
            .filter(|e| e.spec.digest.is_none())
            .filter_map(|e| e.spec.path.parent().map(Path::to_path_buf))
            .map(|d| if d.as_os_str().is_empty() { PathBuf::from(".") } else { d })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    fn rewatch(&self) {
        let mut guard = self.watcher.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(watcher) = guard.as_mut() {
            for dir in self.watched_dirs() {
                let _ = watcher.watch(&dir, RecursiveMode::NonRecursive);
            }
        }
    }

    fn components_for(&self, paths: &[PathBuf]) -> Vec<String> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        entries
            .values()
            .filter(|e| e.spec.digest.is_none())
            .filter(|e| {
                let mine = canon(&e.spec.path);
                paths.iter().any(|p| p == &e.spec.path || canon(p) == mine || p.file_name() == e.spec.path.file_name())
            })
            .map(|e| e.spec.component.clone())
            .collect()
    }
}
