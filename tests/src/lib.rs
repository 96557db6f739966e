//! Helpers shared by the integration tests (tests/integration/).

use std::path::PathBuf;
use std::sync::Arc;

use tandem::plugin::{Runtime, RuntimeConfig};

/// Where `scripts/build-plugins.sh` puts the WebAssembly components.
pub fn wasm_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TANDEM_WASM_DIR") {
        return PathBuf::from(dir);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let target = if target.is_relative() { root.join(target) } else { target };
    target.join("wasm32-wasip2").join("release")
}

/// The bytes of a built component, e.g. `wasm("tandem_test_hostile")`.
pub fn wasm(name: &str) -> Vec<u8> {
    let path = wasm_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run `bash scripts/build-plugins.sh` first", path.display()))
}

/// The path of a built component.
pub fn wasm_path(name: &str) -> PathBuf {
    wasm_dir().join(format!("{name}.wasm"))
}

/// A runtime with a small instance pool and no compile cache.
pub fn runtime() -> Arc<Runtime> {
    Runtime::new(RuntimeConfig { cache_dir: None, max_instances: 64, max_memory_bytes: 64 << 20 }).expect("runtime")
}
