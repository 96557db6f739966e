//! Snapshots sent to the passive peer's inbox over the peer protocol (mutual TLS, the peer's
//! listener).
//!
//! The sender dials the peer, exchanges hellos as a replication link does, then offers the file
//! ([`Msg::SnapshotOffer`]: name, size, sha256). The receiver answers [`Msg::SnapshotReady`]
//! with the offset it wants the file from (or [`Msg::SnapshotStored`] at once when it already
//! holds that very file, or [`Msg::Refuse`]). The file follows in [`Msg::SnapshotChunk`]s of at
//! most [`CHUNK`] bytes, each at the offset the receiver expects, then [`Msg::SnapshotDone`]. The
//! receiver writes into a hidden partial file in `DATA_DIR/backup/inbox/snapshots/` named after
//! the file's name and sha256, checks the size and the sha256 of what arrived, fsyncs, checks
//! the snapshot completely (the same checks as `tandem snapshot verify`), and only then renames
//! it to its name and answers [`Msg::SnapshotStored`]. A truncated, corrupted or unverifiable
//! transfer is refused with a message naming what is wrong, and the partial file removed. When
//! the link drops instead, the partial file stays: the next offer of the same file resumes
//! after the bytes it holds (the sha256 of the whole file is checked all the same), so a large
//! snapshot over a geo link that breaks at 90% sends the last 10% again, not the whole. Partial
//! files untouched for [`PARTIAL_KEEP`] are removed.
//!
//! The inbox is laid out as a backup target, so `tandem restore --target DATA_DIR/backup/inbox`
//! and `tandem snapshot list|verify --target ...` work on it; the receiving node's retention
//! applies to it after each stored snapshot.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{policy, service, snapshot, time};
use crate::node::Config;
use crate::node::config::PeerSection;
use crate::peer::proto::{Hello, Msg};
use crate::peer::tls::Credentials;
use crate::peer::{self, LinkError, PROTOCOL_VERSION};

/// Bytes per chunk sent.
pub const CHUNK: usize = 1 << 20;
/// Largest chunk a receiver accepts.
pub const MAX_CHUNK: usize = 4 << 20;
/// How long a receiver waits for the next chunk, and a sender for each answer.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a sender waits for the receiver to check the whole file.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long the partial file of a transfer that broke off is kept for the sender to resume it.
pub const PARTIAL_KEEP: Duration = Duration::from_secs(24 * 3600);

/// Bytes available to this process on the filesystem of `dir`.
fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// How many bytes are missing to store `size` bytes and still leave `min_free` of `free`.
fn space_short(size: u64, free: u64, min_free: u64) -> Option<u64> {
    let needed = size.saturating_add(min_free);
    (needed > free).then(|| needed - free)
}

/// The inbox of a node: a backup target directory.
pub fn inbox(data_dir: &Path) -> PathBuf {
    data_dir.join("backup").join("inbox")
}

/// What the receiver says it stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub peer: String,
    /// The file on the peer.
    pub path: String,
    pub bytes: u64,
    pub last_seq: u64,
    pub records: u64,
    /// The offset this transfer started at: above 0, it resumed one that broke off.
    pub resumed_from: u64,
}

/// A peer to send snapshots to, with this node's credentials.
#[derive(Clone, Debug)]
pub struct PeerTarget {
    pub us: String,
    pub peer: PeerSection,
    pub creds: Credentials,
}

impl PeerTarget {
    /// The peer `name` of `config`, and the cluster credentials the configuration names.
    pub fn from_config(config: &Config, name: &str) -> anyhow::Result<PeerTarget> {
        let raw = &config.raw;
        let Some(peer) = raw.peers.iter().find(|p| p.name == name).cloned() else {
            let known: Vec<&str> = raw.peers.iter().map(|p| p.name.as_str()).collect();
            anyhow::bail!("{} has no [[peer]] named {name:?} (peers: {known:?})", config.file.display());
        };
        let c = &raw.cluster;
        let (Some(ca), Some(cert), Some(key)) = (&c.ca, &c.cert, &c.key) else {
            anyhow::bail!(
                "{} has no cluster credentials (cluster.ca, cluster.cert, cluster.key): `tandem init` writes them",
                config.file.display()
            );
        };
        let base = config.file.parent().map(PathBuf::from).unwrap_or_default();
        let creds = crate::peer::tls::load(&base.join(ca), &base.join(cert), &base.join(key)).context("loading the cluster credentials")?;
        Ok(PeerTarget { us: raw.node.name.clone(), peer, creds })
    }

    /// Sends a snapshot file, blocking (a runtime of its own: callers are backup threads and the
    /// CLI).
    pub fn send_blocking(&self, file: &Path) -> anyhow::Result<Stored> {
        self.send_blocking_with(file, None)
    }

    /// [`PeerTarget::send_blocking`], calling `progress` with (bytes the peer holds, size) as the
    /// file goes.
    pub fn send_blocking_with(&self, file: &Path, progress: Option<&dyn Fn(u64, u64)>) -> anyhow::Result<Stored> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting a runtime to send the snapshot")?;
        rt.block_on(send(self, file, progress))
    }
}

/// The sha256 of some bytes, hex (as offers carry it).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

fn sha256_of(file: &Path) -> anyhow::Result<(u64, String)> {
    let (n, h) = hash_upto(file, u64::MAX).with_context(|| format!("cannot read {}", file.display()))?;
    Ok((n, hex::encode(h.finalize())))
}

/// The bytes read of a file's first `limit` (all of it if shorter), and their sha256 state.
fn hash_upto(path: &Path, limit: u64) -> std::io::Result<(u64, sha2::Sha256)> {
    use std::io::Read as _;
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(path)?.take(limit);
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, h))
}

async fn answer<R: AsyncRead + Unpin>(rd: &mut R, within: Duration, what: &str) -> Result<Msg, LinkError> {
    tokio::time::timeout(within, peer::recv(rd)).await.map_err(|_| LinkError::Timeout(what.to_owned()))?
}

/// Sends a snapshot to the peer's inbox and waits until the peer has checked and stored it.
pub async fn send(target: &PeerTarget, file: &Path, progress: Option<&dyn Fn(u64, u64)>) -> anyhow::Result<Stored> {
    let name =
        file.file_name().map(|n| n.to_string_lossy().into_owned()).with_context(|| format!("{} is not a file name", file.display()))?;
    // Never offer a file that does not verify here.
    snapshot::verify(file).with_context(|| format!("{} does not verify: not sent", file.display()))?;
    let (size, sha256) = sha256_of(file)?;
    let peer_name = &target.peer.name;
    let fail = |e: LinkError| anyhow::anyhow!("sending {name} to peer {peer_name} ({}): {e}", target.peer.address);
    let tls = peer::dial(&target.peer.address, &target.creds, PROTOCOL_VERSION, STEP_TIMEOUT).await.map_err(fail)?;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let hello = Hello { node: target.us.clone(), epoch: 0, api: None, primary: None, last_seq: 0, components: Vec::new() };
    peer::send(&mut wr, &Msg::Hello(hello), false).await.map_err(fail)?;
    match answer(&mut rd, STEP_TIMEOUT, "waiting for the peer's hello").await.map_err(fail)? {
        Msg::Hello(h) if h.node == *peer_name => {}
        Msg::Hello(h) => return Err(fail(LinkError::Protocol(format!("the peer answered as {:?}", h.node)))),
        Msg::Refuse { reason } => return Err(fail(LinkError::Refused(reason))),
        other => return Err(fail(LinkError::Protocol(format!("expected hello, got {}", kind(&other))))),
    }
    peer::send(&mut wr, &Msg::SnapshotOffer { name: name.clone(), size, sha256 }, false).await.map_err(fail)?;
    let from = match answer(&mut rd, STEP_TIMEOUT, "waiting for the peer to accept the snapshot").await.map_err(fail)? {
        Msg::SnapshotReady { from } if from <= size => from,
        Msg::SnapshotReady { from } => {
            return Err(fail(LinkError::Protocol(format!("the peer asked for the file from byte {from}, past its {size} bytes"))));
        }
        Msg::SnapshotStored { path, last_seq, records } => {
            return Ok(Stored { peer: peer_name.clone(), path, bytes: size, last_seq, records, resumed_from: size });
        }
        Msg::Refuse { reason } => return Err(fail(LinkError::Refused(reason))),
        other => return Err(fail(LinkError::Protocol(format!("expected ready, got {}", kind(&other))))),
    };
    if from > 0 {
        tracing::info!(peer = %peer_name, file = %name, from, size, "backup: resuming a transfer that broke off");
    }
    if let Some(p) = progress {
        p(from, size);
    }
    // Blocking reads: the sender runs on a runtime of its own (`send_blocking`).
    let mut f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(from)).with_context(|| format!("cannot read {}", file.display()))?;
    let mut offset = from;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut k = 0;
        while k < CHUNK {
            let n = std::io::Read::read(&mut f, &mut buf[k..]).with_context(|| format!("cannot read {}", file.display()))?;
            if n == 0 {
                break;
            }
            k += n;
        }
        if k == 0 {
            break;
        }
        peer::send(&mut wr, &Msg::SnapshotChunk { offset, bytes: buf[..k].to_vec() }, false).await.map_err(fail)?;
        offset += k as u64;
        if let Some(p) = progress {
            p(offset, size);
        }
    }
    if offset != size {
        anyhow::bail!("{} changed while it was sent ({offset} bytes read, {size} when offered)", file.display());
    }
    peer::send(&mut wr, &Msg::SnapshotDone, false).await.map_err(fail)?;
    match answer(&mut rd, VERIFY_TIMEOUT, "waiting for the peer to check the snapshot").await.map_err(fail)? {
        Msg::SnapshotStored { path, last_seq, records } => {
            Ok(Stored { peer: peer_name.clone(), path, bytes: size, last_seq, records, resumed_from: from })
        }
        Msg::Refuse { reason } => Err(fail(LinkError::Refused(reason))),
        other => Err(fail(LinkError::Protocol(format!("expected stored, got {}", kind(&other))))),
    }
}

fn kind(m: &Msg) -> &'static str {
    match m {
        Msg::Hello(_) => "hello",
        Msg::Subscribe { .. } => "subscribe",
        Msg::Batch(_) => "batch",
        Msg::Ack { .. } => "ack",
        Msg::Heartbeat { .. } => "heartbeat",
        Msg::Refuse { .. } => "refuse",
        Msg::SnapshotOffer { .. } => "snapshot offer",
        Msg::SnapshotReady { .. } => "snapshot ready",
        Msg::SnapshotChunk { .. } => "snapshot chunk",
        Msg::SnapshotDone => "snapshot done",
        Msg::SnapshotStored { .. } => "snapshot stored",
        #[allow(unreachable_patterns)]
        _ => "another message",
    }
}

/// Whether `name` may name a file in the inbox: a snapshot file name, no directories.
pub fn valid_name(name: &str) -> bool {
    name.len() <= 200
        && !name.starts_with('.')
        && name.ends_with(&format!(".{}", snapshot::EXTENSION))
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
}

/// The partial files being written by this process's transfers.
static RECEIVING: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// A transfer's claim on its partial file: one transfer at a time writes it.
struct Claim(PathBuf);

impl Claim {
    fn take(path: &Path) -> Option<Claim> {
        RECEIVING.lock().unwrap_or_else(|e| e.into_inner()).insert(path.to_path_buf()).then(|| Claim(path.to_path_buf()))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        RECEIVING.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.0);
    }
}

/// The partial file of a transfer of `name` with that sha256.
fn partial_path(dir: &Path, name: &str, sha256: &str) -> PathBuf {
    dir.join(format!(".{name}.{}.partial", sha256.get(..16).unwrap_or(sha256)))
}

/// Removes the partial files of transfers that broke off longer than `keep` ago and that no
/// transfer is writing; returns them.
fn sweep_partials(dir: &Path, keep: Duration) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // `.receiving-` names are those of builds that did not resume.
        if !name.starts_with('.') || !(name.ends_with(".partial") || name.contains(".receiving-")) {
            continue;
        }
        let path = e.path();
        let old = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age >= keep);
        if old
            && let Some(_claim) = Claim::take(&path)
            && std::fs::remove_file(&path).is_ok()
        {
            removed.push(path);
        }
    }
    removed
}

/// The sha256 state of a file's first `len` bytes.
fn hash_prefix(path: &Path, len: u64) -> std::io::Result<sha2::Sha256> {
    let (n, h) = hash_upto(path, len)?;
    if n != len {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("{} holds {n} bytes, not {len}", path.display())));
    }
    Ok(h)
}

/// Receives an offered snapshot into the inbox under `data_dir` (the listener's side, after the
/// hello exchange), keeping `backup.inbox_min_free_mb` free and pruning by the backup
/// retention. Returns where it was stored; a refusal is sent to the peer and returned.
pub async fn receive<R, W>(
    data_dir: &Path,
    backup: &super::config::BackupSection,
    from: &str,
    offer: (String, u64, String),
    rd: &mut R,
    wr: &mut W,
) -> Result<PathBuf, LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (name, size, sha256) = offer;
    let min_free = backup.inbox_min_free_mb.saturating_mul(1 << 20);
    match receive_inner(data_dir, backup.retention(), min_free, from, &name, size, &sha256, rd, wr).await {
        Ok(p) => Ok(p),
        Err(Refusal::Link(e)) => Err(e),
        Err(Refusal::Say(reason)) => {
            let reason = format!("snapshot {name} from {from} refused: {reason}");
            tracing::error!(peer = %from, "{reason}");
            peer::send(wr, &Msg::Refuse { reason: reason.clone() }, false).await?;
            Err(LinkError::RefusedPeer(reason))
        }
    }
}

enum Refusal {
    /// Tell the peer.
    Say(String),
    /// The link failed.
    Link(LinkError),
}

impl From<LinkError> for Refusal {
    fn from(e: LinkError) -> Self {
        Refusal::Link(e)
    }
}

#[allow(clippy::too_many_arguments)]
async fn receive_inner<R, W>(
    data_dir: &Path,
    retention: policy::Retention,
    min_free: u64,
    from: &str,
    name: &str,
    size: u64,
    sha256: &str,
    rd: &mut R,
    wr: &mut W,
) -> Result<PathBuf, Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let say = |s: String| Refusal::Say(s);
    if !valid_name(name) {
        return Err(say(format!("{name:?} is not a snapshot file name")));
    }
    if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(say(format!("{sha256:?} is not a sha256")));
    }
    let target = inbox(data_dir);
    let dir = snapshot::dir(&target);
    std::fs::create_dir_all(&dir).map_err(|e| say(format!("cannot create {}: {e}", dir.display())))?;
    let dest = dir.join(name);
    if dest.exists() {
        let d = dest.clone();
        let same = tokio::task::spawn_blocking(move || sha256_of(&d).ok()).await.ok().flatten();
        if same.as_ref().is_some_and(|(n, h)| *n == size && h == sha256) {
            let m = snapshot::read_manifest(&dest).map_err(|e| say(e.to_string()))?;
            let stored = Msg::SnapshotStored { path: dest.display().to_string(), last_seq: m.last_seq, records: m.records() };
            peer::send(wr, &stored, false).await?;
            return Ok(dest);
        }
        return Err(say(format!("{} already holds a different file of that name", dest.display())));
    }
    for gone in sweep_partials(&dir, PARTIAL_KEEP) {
        tracing::info!(file = %gone.display(), "backup: removed the partial file of a transfer that broke off long ago");
    }
    let partial = partial_path(&dir, name, sha256);
    let Some(_claim) = Claim::take(&partial) else {
        return Err(say("a transfer of this file is already running; retry once it ended".to_owned()));
    };
    match transfer(&dir, &partial, name, size, sha256, min_free, from, rd, wr).await {
        Ok(m) => {
            std::fs::rename(&partial, &dest).map_err(|e| say(format!("cannot rename into {}: {e}", dest.display())))?;
            super::container::sync_dir(&dir);
            tracing::info!(peer = %from, file = %dest.display(), bytes = size, seq = m.last_seq, "backup: snapshot received into the inbox");
            // The inbox keeps what the node's retention keeps.
            let t = target.clone();
            let _ = tokio::task::spawn_blocking(move || service::apply_retention(&t, time::now_ms(), retention)).await;
            let stored = Msg::SnapshotStored { path: dest.display().to_string(), last_seq: m.last_seq, records: m.records() };
            peer::send(wr, &stored, false).await?;
            Ok(dest)
        }
        Err(Refusal::Say(reason)) => {
            // What arrived is wrong: the next offer starts over.
            let _ = std::fs::remove_file(&partial);
            Err(Refusal::Say(reason))
        }
        // The link broke: what arrived stays for the next offer to resume.
        Err(link) => Err(link),
    }
}

/// Receives the file into `partial` (resuming after what it holds), checks it, and returns its
/// manifest.
#[allow(clippy::too_many_arguments)]
async fn transfer<R, W>(
    dir: &Path,
    partial: &Path,
    name: &str,
    size: u64,
    sha256: &str,
    min_free: u64,
    from: &str,
    rd: &mut R,
    wr: &mut W,
) -> Result<snapshot::Manifest, Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let say = |s: String| Refusal::Say(s);
    let held = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    let resume = if held <= size { held } else { 0 };
    let free = available_bytes(dir).map_err(|e| say(format!("cannot tell the free space of {}: {e}", dir.display())))?;
    if let Some(short) = space_short(size - resume, free, min_free) {
        return Err(say(format!(
            "not enough space in {}: the snapshot takes {size} bytes and {min_free} must stay free for this node's store \
             (backup.inbox_min_free_mb), {free} are free ({short} short); free space, or lower the peer's retention",
            dir.display()
        )));
    }
    // The bytes held are hashed again: the sha256 checked at the end covers the whole file.
    let mut hasher = if resume > 0 {
        let p = partial.to_path_buf();
        tokio::task::spawn_blocking(move || hash_prefix(&p, resume))
            .await
            .map_err(|e| say(format!("reading {}: {e}", partial.display())))?
            .map_err(|e| say(format!("cannot read {}: {e}", partial.display())))?
    } else {
        sha2::Sha256::new()
    };
    // Chunks are written as they come (a page-cache write of at most a chunk); the fsync and the
    // checks run off the async workers.
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(partial)
        .and_then(|mut f| {
            f.set_len(resume)?;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(resume))?;
            Ok(f)
        })
        .map_err(|e| say(format!("cannot open {}: {e}", partial.display())))?;
    if resume > 0 {
        tracing::info!(peer = %from, file = %name, from = resume, size, "backup: resuming a transfer that broke off");
    }
    peer::send(wr, &Msg::SnapshotReady { from: resume }, false).await?;
    let mut got = resume;
    loop {
        let m = tokio::time::timeout(STEP_TIMEOUT, peer::recv(rd))
            .await
            .map_err(|_| LinkError::Timeout(format!("no snapshot chunk from {from} for {} s", STEP_TIMEOUT.as_secs())))??;
        match m {
            Msg::SnapshotChunk { offset, bytes } => {
                if offset != got {
                    return Err(say(format!("a chunk at offset {offset}, expected {got}")));
                }
                if bytes.len() > MAX_CHUNK {
                    return Err(say(format!("a chunk of {} bytes exceeds the limit of {MAX_CHUNK}", bytes.len())));
                }
                if got + bytes.len() as u64 > size {
                    return Err(say(format!("more than the {size} bytes offered")));
                }
                hasher.update(&bytes);
                std::io::Write::write_all(&mut f, &bytes).map_err(|e| say(format!("cannot write {}: {e}", partial.display())))?;
                got += bytes.len() as u64;
            }
            Msg::SnapshotDone => break,
            other => return Err(say(format!("expected a chunk, got {}", kind(&other)))),
        }
    }
    if got != size {
        return Err(say(format!("truncated: {got} of the {size} bytes offered arrived")));
    }
    let computed = hex::encode(hasher.finalize());
    if computed != sha256 {
        return Err(say(format!("corrupted in transfer: sha256 {computed}, the sender offered {sha256}")));
    }
    let p = partial.to_path_buf();
    let checked = tokio::task::spawn_blocking(move || -> Result<snapshot::Manifest, String> {
        f.sync_all().map_err(|e| format!("cannot fsync {}: {e}", p.display()))?;
        drop(f);
        snapshot::verify(&p).map_err(|e| format!("the file does not verify: {e:#}"))
    })
    .await
    .map_err(|e| say(format!("checking: {e}")))?;
    checked.map_err(say)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_names_are_plain_snapshot_file_names() {
        assert!(valid_name("20261125T023000000Z-pbx1-all.tsnap"));
        assert!(valid_name("20261125T023000000Z-pbx1-trunks+ivr.tsnap"));
        for bad in ["../x.tsnap", "a/b.tsnap", ".hidden.tsnap", "x.tseg", "x.tsnap/", "", "a\\b.tsnap"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn old_partial_files_are_swept_unless_a_transfer_writes_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let long_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
        let make = |name: &str, old: bool| {
            let f = std::fs::File::create(dir.path().join(name)).expect("create");
            if old {
                f.set_modified(long_ago).expect("mtime");
            }
        };
        make(".a.tsnap.0123456789abcdef.partial", true);
        make(".b.tsnap.0123456789abcdef.partial", false);
        make(".c.tsnap.receiving-12-3", true);
        make("d.tsnap", true);
        make(".e.tsnap.0123456789abcdef.partial", true);
        let busy = Claim::take(&dir.path().join(".e.tsnap.0123456789abcdef.partial")).expect("claim");
        assert!(Claim::take(&dir.path().join(".e.tsnap.0123456789abcdef.partial")).is_none(), "one transfer at a time");
        let mut gone: Vec<String> =
            sweep_partials(dir.path(), PARTIAL_KEEP).iter().map(|p| p.file_name().expect("name").to_string_lossy().into_owned()).collect();
        gone.sort();
        assert_eq!(gone, vec![".a.tsnap.0123456789abcdef.partial", ".c.tsnap.receiving-12-3"]);
        drop(busy);
        assert_eq!(sweep_partials(dir.path(), PARTIAL_KEEP).len(), 1, "released, the old one goes too");
        assert!(dir.path().join("d.tsnap").exists() && dir.path().join(".b.tsnap.0123456789abcdef.partial").exists());
    }

    #[test]
    fn a_prefix_hashes_as_the_start_of_the_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        let mut h = hash_prefix(&path, 1_234_567).expect("prefix");
        h.update(&bytes[1_234_567..]);
        assert_eq!(hex::encode(h.finalize()), sha256_hex(&bytes));
        assert!(hash_prefix(&path, 3_000_001).is_err(), "a file shorter than what it should hold");
    }

    #[test]
    fn an_offer_must_leave_the_reserve_free() {
        assert_eq!(space_short(100, 1_000, 900), None);
        assert_eq!(space_short(101, 1_000, 900), Some(1));
        assert_eq!(space_short(u64::MAX, 1_000, 900), Some(u64::MAX - 1_000));
        assert!(available_bytes(Path::new(".")).is_ok_and(|b| b > 0));
    }
}
