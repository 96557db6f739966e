//! Compiled plugins on disk, keyed by plugin digest, wasmtime version and engine configuration,
//! so that a restart loads a plugin without recompiling it.
//!
//! Each entry is `<digest>-<config>.cwasm` with a `.crc` sidecar holding the CRC-32 and length of
//! the compiled bytes. An entry that fails the check (truncated, corrupted, from another engine
//! build) is recompiled and replaced: the cache can only make loading faster, never wrong.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use wasmtime::Engine;
use wasmtime::component::Component;

pub struct CompileCache {
    dir: PathBuf,
    config_key: String,
}

impl CompileCache {
    pub fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        CompileCache { dir, config_key: format!("{:016x}", hasher.finish()) }
    }

    fn paths(&self, digest: &str) -> (PathBuf, PathBuf) {
        let stem = format!("{digest}-{}", self.config_key);
        (self.dir.join(format!("{stem}.cwasm")), self.dir.join(format!("{stem}.crc")))
    }

    /// Returns the compiled component and whether it came from the cache.
    pub fn get_or_compile(&self, engine: &Engine, digest: &str, wasm: &[u8]) -> anyhow::Result<(Component, bool)> {
        let (code_path, crc_path) = self.paths(digest);
        if let Some(component) = self.read(engine, &code_path, &crc_path) {
            return Ok((component, true));
        }
        let component = Component::new(engine, wasm).map_err(|e| anyhow::anyhow!("not a valid component: {e:#}"))?;
        if let Err(e) = self.write(&component, &code_path, &crc_path) {
            tracing::warn!(dir = %self.dir.display(), error = %format!("{e:#}"), "cannot write the plugin compile cache; plugins will be recompiled at the next start");
        }
        Ok((component, false))
    }

    fn read(&self, engine: &Engine, code_path: &Path, crc_path: &Path) -> Option<Component> {
        let t0 = std::time::Instant::now();
        let expected = std::fs::read_to_string(crc_path).ok()?;
        let bytes = std::fs::read(code_path).ok()?;
        let actual = format!("{:08x}-{}", crc32fast::hash(&bytes), bytes.len());
        if expected.trim() != actual {
            tracing::warn!(file = %code_path.display(), "compiled plugin in the cache fails its checksum; recompiling");
            return None;
        }
        // SAFETY: the bytes were produced by `Component::serialize` of an engine with the same
        // compatibility hash (it is part of the file name), written by us, and pass the checksum
        // written alongside them; wasmtime additionally checks the header and engine settings.
        let t_read = t0.elapsed();
        // Map the file rather than copying the bytes: the checked bytes are in the page cache.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize_file(engine, code_path) };
        tracing::debug!(
            bytes = bytes.len(),
            read_and_check_us = t_read.as_micros() as u64,
            deserialize_us = (t0.elapsed() - t_read).as_micros() as u64,
            "compiled plugin read from the cache"
        );
        component.ok()
    }

    fn write(&self, component: &Component, code_path: &Path, crc_path: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let tmp = code_path.with_extension("tmp");
        std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, code_path).with_context(|| format!("renaming to {}", code_path.display()))?;
        let crc = format!("{:08x}-{}", crc32fast::hash(&bytes), bytes.len());
        std::fs::write(crc_path, crc).with_context(|| format!("writing {}", crc_path.display()))?;
        Ok(())
    }
}
