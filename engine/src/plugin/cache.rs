//! Compiled plugins on disk, keyed by plugin digest, wasmtime version and engine configuration,
//! so that a restart loads a plugin without recompiling it, reading it or instantiating it.
//!
//! Per plugin digest `D` and engine configuration `C` (a hash of wasmtime's compatibility hash and
//! the engine version), two files:
//!
//! - `D-C.cwasm`: the compiled code, mapped (not copied) when loaded.
//! - `D-C.meta`, written after the code: the code's length and CRC-32, and, once a first instance
//!   answered it, `describe`'s answer with the fuel, memory and output size the call took. Its
//!   first line is the sha256 of the rest; the rest names the digest, configuration, meta format
//!   and contract version it is for.
//!
//! A meta file that does not parse, fails its sha256, or names another digest, configuration,
//! format or contract version is ignored; code whose length or CRC-32 differs from its meta file
//! (truncated, corrupted, from another build) is recompiled and replaced. A cached `describe`
//! answer is used only when the plugin's limits allow the fuel, memory and output size the real
//! call took (execution is deterministic, so the call would take the same again); otherwise
//! `describe` is called. The answer is checked (`check_info`) whether it was cached or not. The
//! cache can only make loading faster, never wrong.
//!
//! Plugin files: `file-H.digest` (H: a hash of the configured path) remembers the sha256 of a
//! plugin file together with the file's identity: device, inode, size, modification and change
//! times in nanoseconds. A load that finds the same identity uses the remembered digest (and, with
//! the compiled code and `describe` in the cache, never reads the file). Any write to a file
//! changes its change time (which user space cannot set) and a replaced file is another inode, so
//! a changed file is hashed again. Trade-off: timestamps have a granularity (a clock tick; two
//! seconds on FAT), so a file written twice within one tick could keep its identity; a digest is
//! therefore only remembered for a file whose times are at least [`SETTLED`] older than the moment
//! hashing started and whose identity did not change while it was read (git's "racy clean" rule).
//! What remains: the system clock set back by more than that margin and a rewrite of the same
//! inode to the same size landing on exactly the old change time; or a filesystem whose
//! timestamps come from a clock more than [`SETTLED`] behind this host's (a network filesystem
//! with a skewed server). Nodes where that matters run without a cache directory.

use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use tandem_sdk::{Example, Info, Retention};

/// Version of the meta file layout; part of what a meta file must name to be used.
const META_FORMAT: u32 = 2;
/// Version of the file digest memo layout.
const MEMO_FORMAT: u32 = 1;
/// How much older than the start of hashing a file's times must be for its digest to be
/// remembered (see the module documentation).
pub const SETTLED: Duration = Duration::from_secs(3);
/// Read buffer for checking compiled code: small enough to stay in the CPU cache while the CRC
/// runs over it, so the file is streamed once instead of copied whole and read again.
const CHECK_CHUNK: usize = 256 << 10;

thread_local! {
    /// The read buffer of [`check_code`], kept per thread: a fresh one of this size would be
    /// mapped anew by the allocator and fault in page by page on every load.
    static CHECK_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

pub struct CompileCache {
    dir: PathBuf,
    config_key: String,
}

/// `describe`'s answer as cached, with what the call took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedDescribe {
    pub info: Info,
    pub fuel: u64,
    pub memory_peak: usize,
    pub output_bytes: usize,
}

/// What the cache knows of one compiled plugin.
pub struct CacheHit {
    pub component: Component,
    pub describe: Option<CachedDescribe>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    format: u32,
    digest: String,
    config: String,
    contract: String,
    code_len: u64,
    code_crc32: u32,
    describe: Option<MetaDescribe>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaDescribe {
    fuel: u64,
    memory_peak: usize,
    output_bytes: usize,
    component: String,
    plugin_version: String,
    schema_version: u32,
    description: String,
    shape: String,
    examples: Vec<(String, String)>,
    retention: Option<(Option<u64>, Option<u64>)>,
}

impl From<&CachedDescribe> for MetaDescribe {
    fn from(d: &CachedDescribe) -> Self {
        MetaDescribe {
            fuel: d.fuel,
            memory_peak: d.memory_peak,
            output_bytes: d.output_bytes,
            component: d.info.component.clone(),
            plugin_version: d.info.plugin_version.clone(),
            schema_version: d.info.schema_version,
            description: d.info.description.clone(),
            shape: d.info.shape.clone(),
            examples: d.info.examples.iter().map(|e| (e.key.clone(), e.input.clone())).collect(),
            retention: d.info.retention.as_ref().map(|r| (r.max_age_ms, r.max_count)),
        }
    }
}

impl From<MetaDescribe> for CachedDescribe {
    fn from(m: MetaDescribe) -> Self {
        CachedDescribe {
            info: Info {
                component: m.component,
                plugin_version: m.plugin_version,
                schema_version: m.schema_version,
                description: m.description,
                shape: m.shape,
                examples: m.examples.into_iter().map(|(key, input)| Example { key, input }).collect(),
                retention: m.retention.map(|(max_age_ms, max_count)| Retention { max_age_ms, max_count }),
            },
            fuel: m.fuel,
            memory_peak: m.memory_peak,
            output_bytes: m.output_bytes,
        }
    }
}

/// A file's identity as far as the digest memo is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileId {
    #[cfg(unix)]
    pub fn of(meta: &std::fs::Metadata) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt as _;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Some(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        })
    }

    /// Without a change time user space cannot set, no memo.
    #[cfg(not(unix))]
    pub fn of(_meta: &std::fs::Metadata) -> Option<FileId> {
        None
    }

    fn line(&self, digest: &str) -> String {
        format!("{MEMO_FORMAT} {} {} {} {} {} {digest}", self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `sha256(body)\nbody`.
fn sealed(body: &str) -> String {
    format!("{}\n{body}", sha256_hex(body.as_bytes()))
}

/// The body of a [`sealed`] text, if its sha256 matches.
fn unseal(text: &str) -> Option<&str> {
    let (sum, body) = text.split_once('\n')?;
    (sum == sha256_hex(body.as_bytes())).then_some(body)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that a reader sees the old
/// file or the whole new one.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("renaming to {}", path.display())
    })
}

impl CompileCache {
    pub fn new(dir: PathBuf, engine: &Engine) -> Self {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        CompileCache { dir, config_key: format!("{:016x}", hasher.finish()) }
    }

    fn paths(&self, digest: &str) -> (PathBuf, PathBuf) {
        let stem = format!("{digest}-{}", self.config_key);
        (self.dir.join(format!("{stem}.cwasm")), self.dir.join(format!("{stem}.meta")))
    }

    fn memo_path(&self, file: &Path) -> PathBuf {
        let key = sha256_hex(file.as_os_str().as_encoded_bytes());
        self.dir.join(format!("file-{}.digest", &key[..32]))
    }

    /// The compiled plugin of `digest`, if the cache holds a sound copy. `contract` is the
    /// contract version this engine speaks (a cached `describe` answer is only for the same).
    pub fn get(&self, engine: &Engine, digest: &str, contract: &str) -> Option<CacheHit> {
        let (code_path, meta_path) = self.paths(digest);
        let t0 = std::time::Instant::now();
        let meta = self.read_meta(&meta_path, digest, contract)?;
        if let Err(e) = check_code(&code_path, meta.code_len, meta.code_crc32) {
            tracing::warn!(file = %code_path.display(), error = %format!("{e:#}"), "compiled plugin in the cache fails its check; recompiling");
            return None;
        }
        let t_check = t0.elapsed();
        // SAFETY: the file was produced by `Component::serialize` of an engine with the same
        // compatibility hash (it is part of the file name and of the checked meta file), written
        // by us through a rename, and its length and CRC-32 match the meta file written after
        // it; wasmtime additionally checks the header and engine settings.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize_file(engine, &code_path) };
        let component = match component {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(file = %code_path.display(), error = %format!("{e:#}"), "compiled plugin in the cache does not load; recompiling");
                return None;
            }
        };
        tracing::debug!(
            bytes = meta.code_len,
            read_and_check_us = t_check.as_micros() as u64,
            deserialize_us = (t0.elapsed() - t_check).as_micros() as u64,
            describe_cached = meta.describe.is_some(),
            "compiled plugin read from the cache"
        );
        Some(CacheHit { component, describe: meta.describe.map(CachedDescribe::from) })
    }

    fn read_meta(&self, meta_path: &Path, digest: &str, contract: &str) -> Option<Meta> {
        let text = std::fs::read_to_string(meta_path).ok()?;
        let Some(body) = unseal(&text) else {
            tracing::warn!(file = %meta_path.display(), "plugin cache meta file fails its checksum; ignoring it");
            return None;
        };
        let meta: Meta = match serde_json::from_str(body) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(file = %meta_path.display(), error = %e, "plugin cache meta file does not parse; ignoring it");
                return None;
            }
        };
        (meta.format == META_FORMAT && meta.digest == digest && meta.config == self.config_key && meta.contract == contract).then_some(meta)
    }

    /// Compiles `wasm` and stores the code; `describe` is stored later by [`Self::put_describe`].
    pub fn compile(&self, engine: &Engine, digest: &str, contract: &str, wasm: &[u8]) -> anyhow::Result<Component> {
        let component = Component::new(engine, wasm).map_err(|e| anyhow::anyhow!("not a valid component: {e:#}"))?;
        if let Err(e) = self.write_code(&component, digest, contract) {
            tracing::warn!(dir = %self.dir.display(), error = %format!("{e:#}"), "cannot write the plugin compile cache; plugins will be recompiled at the next start");
        }
        Ok(component)
    }

    fn write_code(&self, component: &Component, digest: &str, contract: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let (code_path, meta_path) = self.paths(digest);
        // The old meta file goes first: code and meta never pair up wrongly, even after a crash.
        let _ = std::fs::remove_file(&meta_path);
        write_atomic(&code_path, &bytes)?;
        let meta = Meta {
            format: META_FORMAT,
            digest: digest.to_owned(),
            config: self.config_key.clone(),
            contract: contract.to_owned(),
            code_len: bytes.len() as u64,
            code_crc32: crc32fast::hash(&bytes),
            describe: None,
        };
        self.write_meta(&meta_path, &meta)
    }

    fn write_meta(&self, meta_path: &Path, meta: &Meta) -> anyhow::Result<()> {
        let body = serde_json::to_string(meta).context("encoding the meta file")?;
        write_atomic(meta_path, sealed(&body).as_bytes())
    }

    /// Adds `describe`'s answer to the meta file of `digest` (whose code was just checked or
    /// written). A failure only costs a `describe` call at the next load.
    pub fn put_describe(&self, digest: &str, contract: &str, describe: &CachedDescribe) {
        let (_, meta_path) = self.paths(digest);
        let Some(mut meta) = self.read_meta(&meta_path, digest, contract) else { return };
        meta.describe = Some(MetaDescribe::from(describe));
        if let Err(e) = self.write_meta(&meta_path, &meta) {
            tracing::warn!(file = %meta_path.display(), error = %format!("{e:#}"), "cannot write the plugin cache meta file");
        }
    }

    /// The remembered digest of the plugin file at `path`, if `id` is the identity it was
    /// remembered with.
    pub fn remembered_digest(&self, path: &Path, id: &FileId) -> Option<String> {
        let text = std::fs::read_to_string(self.memo_path(path)).ok()?;
        let body = unseal(&text)?;
        let (_, digest) = body.rsplit_once(' ')?;
        let valid = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (valid && id.line(digest) == body).then(|| digest.to_owned())
    }

    /// Remembers `digest` for the plugin file at `path` if it is safe to: the identity did not
    /// change while the file was read (`before`, `after`) and the file's times are [`SETTLED`]
    /// before `hashing_started`.
    pub fn remember_digest(&self, path: &Path, before: &FileId, after: &FileId, hashing_started: SystemTime, digest: &str) {
        if before != after {
            return;
        }
        let Ok(started) = hashing_started.duration_since(SystemTime::UNIX_EPOCH) else { return };
        let limit = i128::try_from(started.saturating_sub(SETTLED).as_nanos()).unwrap_or(0);
        if before.mtime_ns >= limit || before.ctime_ns >= limit {
            return;
        }
        let memo = self.memo_path(path);
        if self.remembered_digest(path, before).as_deref() == Some(digest) {
            return;
        }
        let written = std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))
            .and_then(|()| write_atomic(&memo, sealed(&before.line(digest)).as_bytes()));
        if let Err(e) = written {
            tracing::warn!(file = %memo.display(), error = %format!("{e:#}"), "cannot remember a plugin file's digest");
        }
    }
}

/// Streams the code file once: its length, then its CRC-32.
fn check_code(path: &Path, len: u64, crc: u32) -> anyhow::Result<()> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let actual = file.metadata().context("reading its metadata")?.len();
    anyhow::ensure!(actual == len, "{actual} bytes, the meta file says {len}");
    if let Some(actual) = usize::try_from(len).ok().and_then(|len| mapped::crc32(&file, len)) {
        anyhow::ensure!(actual == crc, "CRC-32 {actual:08x}, the meta file says {crc:08x}");
        return Ok(());
    }
    let mut hasher = crc32fast::Hasher::new();
    let mut total = 0u64;
    CHECK_BUFFER.with_borrow_mut(|buf| -> anyhow::Result<()> {
        buf.resize(CHECK_CHUNK, 0);
        loop {
            let n = file.read(buf).context("reading")?;
            if n == 0 {
                return Ok(());
            }
            total += n as u64;
            hasher.update(&buf[..n]);
        }
    })?;
    anyhow::ensure!(total == len, "read {total} bytes, the meta file says {len}");
    let actual = hasher.finalize();
    anyhow::ensure!(actual == crc, "CRC-32 {actual:08x}, the meta file says {crc:08x}");
    Ok(())
}

/// The CRC-32 of a file read through a private read-only mapping, populated at once: no copy into
/// a buffer (most of the cost of reading compiled code that is in the page cache).
mod mapped {
    /// The CRC-32 of the first `len` bytes of `file` (its length, checked by the caller), or `None`
    /// if it cannot be mapped (the caller then reads it).
    pub fn crc32(file: &std::fs::File, len: usize) -> Option<u32> {
        if len == 0 {
            return None;
        }
        // SAFETY: a read-only mapping of an open file, read only while mapped. Cache files are
        // replaced by rename, never rewritten in place; a file truncated under the mapping by
        // another process would fault here exactly as it would in the code wasmtime maps from it.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::MmapOptions::new().len(len).populate().map(file) }.ok()?;
        Some(crc32fast::hash(&map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_text_detects_any_change() {
        let text = sealed("{\"a\":1}");
        assert_eq!(unseal(&text), Some("{\"a\":1}"));
        assert_eq!(unseal(&text.replace("1}", "2}")), None);
        assert_eq!(unseal(&text[..text.len() - 1]), None);
        assert_eq!(unseal("garbage"), None);
    }

    #[test]
    fn the_code_check_catches_a_flipped_byte_and_truncation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("code.cwasm");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        let (len, crc) = (bytes.len() as u64, crc32fast::hash(&bytes));
        check_code(&path, len, crc).expect("intact");
        let mut flipped = bytes.clone();
        flipped[len as usize / 2] ^= 1;
        std::fs::write(&path, &flipped).expect("write");
        assert!(check_code(&path, len, crc).is_err(), "a flipped byte");
        std::fs::write(&path, &bytes[..bytes.len() - 1]).expect("write");
        assert!(check_code(&path, len, crc).is_err(), "truncated");
        std::fs::write(&path, b"").expect("write");
        assert!(check_code(&path, len, crc).is_err(), "empty");
    }

    #[test]
    #[cfg(unix)]
    fn a_digest_is_remembered_only_for_a_settled_unchanged_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::default();
        let cache = CompileCache::new(dir.path().join("cache"), &engine);
        let file = dir.path().join("p.wasm");
        std::fs::write(&file, b"one").expect("write");
        let id = FileId::of(&std::fs::metadata(&file).expect("meta")).expect("id");
        let digest = sha256_hex(b"one");
        // Just written: too recent to be remembered.
        cache.remember_digest(&file, &id, &id, SystemTime::now(), &digest);
        assert_eq!(cache.remembered_digest(&file, &id), None);
        // Changed while read: not remembered.
        let later = SystemTime::now() + Duration::from_secs(60);
        let other = FileId { ctime_ns: id.ctime_ns + 1, ..id };
        cache.remember_digest(&file, &id, &other, later, &digest);
        assert_eq!(cache.remembered_digest(&file, &id), None);
        // Settled (as seen from a minute later) and unchanged: remembered for this identity only.
        cache.remember_digest(&file, &id, &id, later, &digest);
        assert_eq!(cache.remembered_digest(&file, &id), Some(digest.clone()));
        for changed in [
            FileId { ctime_ns: id.ctime_ns + 1, ..id },
            FileId { mtime_ns: id.mtime_ns + 1, ..id },
            FileId { size: id.size + 1, ..id },
            FileId { ino: id.ino + 1, ..id },
            FileId { dev: id.dev + 1, ..id },
        ] {
            assert_eq!(cache.remembered_digest(&file, &changed), None, "{changed:?}");
        }
        // A corrupted memo is ignored.
        let memo = cache.memo_path(&file);
        let text = std::fs::read_to_string(&memo).expect("memo");
        std::fs::write(&memo, text.replacen(&digest[..4], "0000", 1)).expect("corrupt");
        assert_eq!(cache.remembered_digest(&file, &id), None);
    }
}
