//! The file container shared by snapshots and archive segments.
//!
//! ```text
//! [8 bytes head magic][zstd frame: the body][manifest JSON][u64 LE manifest length]
//! [32 bytes sha256 of everything before][8 bytes end magic "TNDMEND1"]
//! ```
//!
//! The manifest comes last so the body can be streamed; it records the body's own sha256 and
//! length. A file cut short loses its end magic (refused as truncated); a changed byte in the
//! body fails the body checksum, one in the manifest the whole-file checksum. The zstd frame
//! carries its own content checksum as well.
//!
//! Files are written to a hidden temporary name in the target directory, fsynced, renamed into
//! place and the directory fsynced: a reader never sees a half-written file under its real name.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub const END_MAGIC: &[u8; 8] = b"TNDMEND1";
const TRAILER: u64 = 8 + 32 + 8;
/// Largest manifest accepted when reading (a corrupt length must not allocate gigabytes).
const MAX_MANIFEST: u64 = 64 << 20;

/// A snapshot or segment file that is not what it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem}", file.display())]
pub struct Corrupt {
    pub file: PathBuf,
    pub problem: String,
}

pub fn corrupt(file: &Path, problem: impl Into<String>) -> Corrupt {
    Corrupt { file: file.to_path_buf(), problem: problem.into() }
}

/// A writer that hashes and counts what goes through it.
pub struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Hashing { inner, hash: Sha256::new(), bytes: 0 }
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Where the body of a file being written goes: a zstd encoder over a hashing writer over the
/// file. Entries are written with [`BodyWriter::write_all`].
pub struct BodyWriter {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<Hashing<BufWriter<File>>>,
    enc: Option<zstd::stream::write::Encoder<'static, Hashing<Vec<u8>>>>,
    raw_bytes: u64,
    /// Renamed into place: nothing to clean up.
    done: bool,
}

/// Totals of a finished body.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BodyInfo {
    /// sha256 of the compressed body as stored.
    pub sha256: String,
    pub compressed_bytes: u64,
    pub raw_bytes: u64,
}

impl BodyWriter {
    /// Starts `dest` (written as a temporary file next to it until [`BodyWriter::finish`]).
    pub fn create(dest: &Path, magic: &[u8; 8], level: i32) -> anyhow::Result<BodyWriter> {
        use anyhow::Context as _;
        let dir = dest.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut file = Hashing::new(BufWriter::with_capacity(1 << 20, f));
        file.write_all(magic).with_context(|| format!("cannot write {}", tmp.display()))?;
        let mut enc = zstd::stream::write::Encoder::new(Hashing::new(Vec::with_capacity(1 << 20)), level).context("zstd encoder")?;
        enc.include_checksum(true).context("zstd checksum flag")?;
        Ok(BodyWriter { tmp, dest: dest.to_path_buf(), file: Some(file), enc: Some(enc), raw_bytes: 0, done: false })
    }

    /// Appends raw (uncompressed) body bytes.
    pub fn write_all(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let Some(enc) = self.enc.as_mut() else { anyhow::bail!("body already finished") };
        enc.write_all(bytes).with_context(|| format!("cannot write {}", self.tmp.display()))?;
        self.raw_bytes += bytes.len() as u64;
        // Move compressed output to the file as it accumulates.
        let buf = &mut enc.get_mut().inner;
        if buf.len() >= 1 << 20 {
            let Some(file) = self.file.as_mut() else { anyhow::bail!("body already finished") };
            file.write_all(buf).with_context(|| format!("cannot write {}", self.tmp.display()))?;
            buf.clear();
        }
        Ok(())
    }

    pub fn raw_bytes(&self) -> u64 {
        self.raw_bytes
    }

    /// Ends the body, appends the manifest (made by `manifest` from the body's totals) and the
    /// trailer, syncs and renames the file into place. Returns the file's size.
    pub fn finish(mut self, manifest: impl FnOnce(&BodyInfo) -> anyhow::Result<Vec<u8>>) -> anyhow::Result<u64> {
        use anyhow::Context as _;
        let enc = self.enc.take().context("body already finished")?;
        let mut file = self.file.take().context("body already finished")?;
        let mut rest = enc.finish().context("zstd finish")?;
        file.write_all(&rest.inner).with_context(|| format!("cannot write {}", self.tmp.display()))?;
        rest.inner.clear();
        let info = BodyInfo { sha256: hex::encode(rest.hash.finalize()), compressed_bytes: rest.bytes, raw_bytes: self.raw_bytes };
        let m = manifest(&info)?;
        file.write_all(&m).with_context(|| format!("cannot write {}", self.tmp.display()))?;
        file.write_all(&(m.len() as u64).to_le_bytes()).with_context(|| format!("cannot write {}", self.tmp.display()))?;
        let digest = file.hash.finalize();
        let mut w = file.inner;
        w.write_all(&digest).with_context(|| format!("cannot write {}", self.tmp.display()))?;
        w.write_all(END_MAGIC).with_context(|| format!("cannot write {}", self.tmp.display()))?;
        let f = w.into_inner().map_err(|e| anyhow::anyhow!("cannot write {}: {}", self.tmp.display(), e.error()))?;
        f.sync_all().with_context(|| format!("cannot sync {}", self.tmp.display()))?;
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        drop(f);
        if let Err(e) = std::fs::rename(&self.tmp, &self.dest) {
            let _ = std::fs::remove_file(&self.tmp);
            anyhow::bail!("cannot rename {} to {}: {e}", self.tmp.display(), self.dest.display());
        }
        self.done = true;
        sync_dir(self.dest.parent().unwrap_or(Path::new(".")));
        Ok(size)
    }
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        // Abandoned (an error, or a finish that failed before the rename): remove the temporary file.
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Fsyncs a directory (after a rename), best effort.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The located parts of a container file, after its trailer checked out.
pub struct Opened {
    pub path: PathBuf,
    pub manifest: Vec<u8>,
    /// Offset and length of the compressed body.
    pub body: (u64, u64),
    pub size: u64,
}

/// Reads only the trailer and manifest (cheap: for listings). Checks magic, end marker and
/// lengths, not checksums.
pub fn open(path: &Path, magic: &[u8; 8], what: &str) -> Result<Opened, Corrupt> {
    let mut f = File::open(path).map_err(|e| corrupt(path, format!("cannot open: {e}")))?;
    let size = f.metadata().map_err(|e| corrupt(path, format!("cannot stat: {e}")))?.len();
    if size < 8 + TRAILER {
        return Err(corrupt(path, format!("truncated: {size} bytes, shorter than any complete {what}")));
    }
    let mut head = [0u8; 8];
    f.read_exact(&mut head).map_err(|e| corrupt(path, format!("cannot read: {e}")))?;
    if &head != magic {
        return Err(corrupt(path, format!("not a Tandem {what} (wrong magic bytes at the start)")));
    }
    let mut trailer = [0u8; TRAILER as usize];
    f.seek(SeekFrom::Start(size - TRAILER)).map_err(|e| corrupt(path, format!("cannot read: {e}")))?;
    f.read_exact(&mut trailer).map_err(|e| corrupt(path, format!("cannot read: {e}")))?;
    if &trailer[40..48] != END_MAGIC {
        return Err(corrupt(path, format!("truncated or incomplete: the end marker is missing ({size} bytes); the {what} was cut short")));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&trailer[0..8]);
    let mlen = u64::from_le_bytes(len);
    if mlen == 0 || mlen > MAX_MANIFEST || mlen > size - 8 - TRAILER {
        return Err(corrupt(path, format!("corrupt trailer: manifest length {mlen} does not fit a {size}-byte file")));
    }
    let mstart = size - TRAILER - mlen;
    let mut manifest = vec![0u8; usize::try_from(mlen).unwrap_or(0)];
    f.seek(SeekFrom::Start(mstart)).map_err(|e| corrupt(path, format!("cannot read: {e}")))?;
    f.read_exact(&mut manifest).map_err(|e| corrupt(path, format!("cannot read: {e}")))?;
    Ok(Opened { path: path.to_path_buf(), manifest, body: (8, mstart - 8), size })
}

/// Checks the whole-file checksum and the body checksum against `expected_body_sha`.
pub fn check_sums(o: &Opened, body: &BodyInfo) -> Result<(), Corrupt> {
    let path = &o.path;
    if body.compressed_bytes != o.body.1 {
        return Err(corrupt(path, format!("records section is {} bytes but the manifest says {}", o.body.1, body.compressed_bytes)));
    }
    let f = File::open(path).map_err(|e| corrupt(path, format!("cannot open: {e}")))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut whole = Sha256::new();
    let mut part = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    let end = o.size - TRAILER + 8; // through the manifest length
    while pos < end {
        let want = usize::try_from((end - pos).min(buf.len() as u64)).unwrap_or(buf.len());
        r.read_exact(&mut buf[..want]).map_err(|e| corrupt(path, format!("cannot read: {e}")))?;
        whole.update(&buf[..want]);
        // The body part of this chunk.
        let (bs, be) = (o.body.0, o.body.0 + o.body.1);
        let (cs, ce) = (pos, pos + want as u64);
        let (s, e) = (bs.max(cs), be.min(ce));
        if s < e {
            part.update(&buf[usize::try_from(s - cs).unwrap_or(0)..usize::try_from(e - cs).unwrap_or(0)]);
        }
        pos += want as u64;
    }
    let body_sha = hex::encode(part.finalize());
    if body_sha != body.sha256 {
        return Err(corrupt(path, format!("records section is corrupted: sha256 {body_sha}, the manifest says {}", body.sha256)));
    }
    let mut stored = [0u8; 32];
    r.read_exact(&mut stored).map_err(|e| corrupt(path, format!("cannot read: {e}")))?;
    let whole = whole.finalize();
    if whole[..] != stored[..] {
        return Err(corrupt(path, "checksum mismatch: the manifest or header was altered (the file's sha256 differs from its trailer)"));
    }
    Ok(())
}

/// A reader of the decompressed body.
pub fn body_reader(o: &Opened) -> Result<Box<dyn Read>, Corrupt> {
    let path = &o.path;
    let mut f = File::open(path).map_err(|e| corrupt(path, format!("cannot open: {e}")))?;
    f.seek(SeekFrom::Start(o.body.0)).map_err(|e| corrupt(path, format!("cannot read: {e}")))?;
    let limited = BufReader::with_capacity(1 << 20, f).take(o.body.1);
    let dec = zstd::stream::read::Decoder::with_buffer(limited)
        .map_err(|e| corrupt(path, format!("records section does not decompress: {e}")))?;
    Ok(Box::new(dec))
}

/// Binary entry encoding: little-endian integers, u32-length-prefixed strings and blobs.
pub mod enc {
    pub fn u8(out: &mut Vec<u8>, v: u8) {
        out.push(v);
    }
    pub fn u32(out: &mut Vec<u8>, v: u32) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(out: &mut Vec<u8>, v: &[u8]) {
        u32(out, u32::try_from(v.len()).unwrap_or(u32::MAX));
        out.extend_from_slice(v);
    }
    pub fn str(out: &mut Vec<u8>, v: &str) {
        bytes(out, v.as_bytes());
    }
}

/// Reads entries back; every error is a description of what is wrong.
pub struct Dec<R: std::io::Read> {
    pub r: R,
    pub entry: u64,
}

/// Largest single field accepted (records are far smaller; a corrupt length must not allocate).
const MAX_FIELD: u32 = 256 << 20;
/// Fields up to this size are read into a buffer of their length at once.
const SMALL_FIELD: usize = 64 << 10;

impl<R: std::io::Read> Dec<R> {
    fn fail(&self, e: std::io::Error) -> String {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            format!("records section ends in the middle of entry {}", self.entry)
        } else {
            format!("records section unreadable at entry {}: {e}", self.entry)
        }
    }
    /// The next tag, or None at a clean end of the body.
    pub fn tag(&mut self) -> Result<Option<u8>, String> {
        let mut b = [0u8; 1];
        loop {
            match self.r.read(&mut b) {
                Ok(0) => return Ok(None),
                Ok(_) => {
                    self.entry += 1;
                    return Ok(Some(b[0]));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.fail(e)),
            }
        }
    }
    pub fn u8(&mut self) -> Result<u8, String> {
        let mut b = [0u8; 1];
        self.r.read_exact(&mut b).map_err(|e| self.fail(e))?;
        Ok(b[0])
    }
    pub fn u32(&mut self) -> Result<u32, String> {
        let mut b = [0u8; 4];
        self.r.read_exact(&mut b).map_err(|e| self.fail(e))?;
        Ok(u32::from_le_bytes(b))
    }
    pub fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        self.r.read_exact(&mut b).map_err(|e| self.fail(e))?;
        Ok(u64::from_le_bytes(b))
    }
    pub fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let n = self.u32()?;
        if n > MAX_FIELD {
            return Err(format!("records section malformed at entry {}: a field claims {n} bytes", self.entry));
        }
        let n = n as usize;
        if n <= SMALL_FIELD {
            let mut v = vec![0u8; n];
            self.r.read_exact(&mut v).map_err(|e| self.fail(e))?;
            return Ok(v);
        }
        // A large field grows as its bytes arrive: a corrupt length in a short section
        // allocates what the section holds, not what the length claims.
        let mut v = Vec::with_capacity(SMALL_FIELD);
        let got = (&mut self.r).take(n as u64).read_to_end(&mut v).map_err(|e| self.fail(e))?;
        if got != n {
            return Err(self.fail(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(v)
    }
    pub fn str(&mut self) -> Result<String, String> {
        let b = self.bytes()?;
        String::from_utf8(b).map_err(|_| format!("records section malformed at entry {}: a text field is not UTF-8", self.entry))
    }
}

/// sha256 of some bytes (for tools and tests that build or inspect files by hand).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}
