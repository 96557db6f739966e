//! The node: the write path, the read path, remote versions, conflicts, status and upkeep.
//!
//! # The write path
//! Each component has a *lane*: a bounded queue (full: 429) and one task that takes a batch of
//! waiting requests at a time and
//! 1. drops requests that waited past the budget (503, never applied);
//! 2. runs the plugin on a plugin thread ([`PluginPool`], full: 503): for each write, the
//!    idempotency check, a stamp from the clock, `serialize` against the prior version, `validate`
//!    (whose lookups see committed records and the batch's earlier writes) and `deserialize` (the
//!    document readers will get);
//! 3. hands the prepared versions to the store's writer thread, which commits everything waiting
//!    (from every lane) in one SQLite transaction, fsynced, then updates memory and the change
//!    feed position, and answers.
//!
//! A lane handles one batch at a time, so writes to one key are applied in order against the
//! latest committed version; batches of different components share commits (group commit).
//! A write is acknowledged only after its transaction is durable and memory shows it. A failed
//! commit fails every write in it and changes nothing, in the store or in memory.
//!
//! # Full disk
//! A commit that fails for lack of space turns the node read-only (writes answer 507; reads go
//! on). The writer then probes the disk every `store.probe_interval_ms`, and the node takes writes
//! again as soon as a probe commit succeeds. An I/O error, whose outcome SQLite cannot vouch for,
//! stops writes until a restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, TryRecvError};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, oneshot, watch};

use super::admission::{Admission, Rate, Shed};
use super::config::{ComponentConfig, Config, Role};
use super::error::NodeError;
use super::hlc::{Clock, Hlc, SystemWallClock, WallClock};
use super::memory::{ComponentMem, MemRecord};
use super::metrics::{ComponentMetrics, Exposition, NodeMetrics, label};
use super::store::{self, CommitOutcome, ConflictRow, IdemKey, Meta, Readers, RecordRow, Store, StoreError, StoreOptions, WriteRow};
use super::types::{self as api, StampView, WriteAck};
use crate::plugin::pool::PluginPool;
use crate::plugin::registry::{PluginSpec, Registry};
use crate::plugin::{LoadedPlugin, Lookup, NoLookup, Op, PluginError, Runtime, RuntimeConfig, Session, Stamp, Stored, Violation};

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Options that are not part of the configuration file (tests inject a clock).
#[derive(Clone)]
pub struct NodeOptions {
    pub wall: Arc<dyn WallClock>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions { wall: Arc::new(SystemWallClock) }
    }
}

/// A version of a record that another node sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteVersion {
    pub key: String,
    pub stored: Stored,
    pub stamp: Stamp,
    /// The node that made the version.
    pub origin: String,
    /// Its reader's document as the sender's plugin read it, if sent: kept as is (when it is
    /// JSON) when the version replaces the local one (`ApplyMode::Replace`), instead of calling
    /// the plugin.
    pub doc: Option<Arc<str>>,
}

/// How a remote version meets the local one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyMode {
    /// Hot: join the two with the plugin's merge; validate the join (a failure is recorded as a
    /// conflict, never refused, or nodes would diverge).
    Merge,
    /// Warm standby: the primary's version replaces the local one if its stamp is newer; not
    /// validated again.
    Replace,
    /// A returning old primary rewinds a version written after the fork point (the node that
    /// took over never received it): the local version, if its stamp is still the remote
    /// version's, goes to the conflict queue for an operator and is replaced by a tombstone of
    /// stamp zero, which the new primary's version of the key (if any) then replaces.
    Fork,
}

/// What applying a remote version did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Stored at `seq`; `conflict` when the join does not validate.
    Stored { seq: u64, conflict: Option<String> },
    /// The local version already contains it.
    Unchanged,
    /// Replace mode: the local version is newer.
    Older,
    /// Merge mode: the plugin refused to merge the version with the local one. The local
    /// version stays; both are in the conflict queue under `conflict`.
    Kept { conflict: String },
}

/// An entry of the change feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub seq: u64,
    pub component: String,
    pub key: String,
    pub stored: Stored,
    pub stamp: Stamp,
    pub origin: String,
    /// The epoch the version was written in on this node.
    pub epoch: u64,
    /// The reader's document, when the version comes from memory (the in-memory tail).
    pub doc: Option<Arc<str>>,
}

impl From<RecordRow> for Change {
    fn from(r: RecordRow) -> Self {
        Change {
            seq: r.seq,
            component: r.component,
            key: r.key,
            stored: Stored { data: r.data, tombstone: r.tombstone },
            stamp: r.stamp,
            origin: r.origin,
            epoch: r.epoch,
            doc: None,
        }
    }
}

/// A record as a reader gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRecord {
    pub component: String,
    pub key: String,
    /// The JSON document.
    pub doc: Arc<str>,
    pub stamp: Stamp,
    pub origin: Arc<str>,
    pub seq: u64,
}

/// One write of a batch.
#[derive(Clone, Debug)]
pub enum WriteItem {
    Local { key: String, op: Op, idem: Option<IdemKey> },
    Remote { version: RemoteVersion, mode: ApplyMode },
}

/// The result of one write of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Local(WriteAck),
    Remote(Applied),
}

type Reply = oneshot::Sender<Vec<Result<WriteOutcome, NodeError>>>;

struct Request {
    items: Vec<WriteItem>,
    enqueued_ms: u64,
    enqueued: Instant,
    reply: Reply,
}

/// What `/healthz` needs, cheaply.
#[derive(Default)]
struct StoreHealth {
    read_only: AtomicBool,
    failed: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl StoreHealth {
    fn reason(&self) -> Option<String> {
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, read_only: bool, failed: bool, reason: Option<String>) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
        self.failed.store(failed, Ordering::SeqCst);
        self.read_only.store(read_only, Ordering::SeqCst);
    }
    fn refusal(&self) -> Option<NodeError> {
        if self.failed.load(Ordering::SeqCst) {
            return Some(NodeError::StoreFailed(self.reason().unwrap_or_default()));
        }
        if self.read_only.load(Ordering::SeqCst) {
            return Some(NodeError::DiskFull(self.reason().unwrap_or_else(|| "the disk is full".to_owned())));
        }
        None
    }
}

/// A remembered idempotent write.
#[derive(Clone, Debug)]
struct IdemEntry {
    fingerprint: String,
    key: String,
    seq: u64,
    stamp: Stamp,
    tombstone: bool,
    created_ms: u64,
}

/// The answer to a write whose idempotency key was already used for the same request: the
/// remembered outcome, marked as replayed.
fn replayed_ack(comp: &ComponentState, entry: IdemEntry) -> WriteAck {
    comp.metrics.replays.fetch_add(1, Ordering::Relaxed);
    WriteAck {
        component: comp.name().to_owned(),
        key: entry.key,
        seq: entry.seq,
        stamp: StampView::from(&entry.stamp),
        deleted: entry.tombstone,
        changed: true,
        replayed: true,
    }
}

/// One component's state on this node.
pub struct ComponentState {
    pub config: ComponentConfig,
    mem: ComponentMem,
    pub metrics: ComponentMetrics,
    records: AtomicU64,
    live: AtomicU64,
    load_micros: AtomicU64,
    rate: Mutex<Rate>,
}

impl ComponentState {
    fn name(&self) -> &str {
        &self.config.name
    }
}

/// Everything the plugin threads and the writer thread share.
struct Ctx {
    name: String,
    clock: Arc<Clock>,
    registry: Arc<Registry>,
    components: BTreeMap<String, Arc<ComponentState>>,
    readers: Arc<Readers>,
    idem: Mutex<HashMap<(String, String), IdemEntry>>,
    health: StoreHealth,
    epoch: AtomicU64,
    last_seq: AtomicU64,
    commits: AtomicU64,
    conflicts_open: AtomicU64,
    metrics: NodeMetrics,
    seq_tx: watch::Sender<u64>,
    /// Every committed version, for the log archive (see [`super::tap`]).
    tap: super::tap::CommitTap,
    /// The newest committed versions, for replication's senders (see [`super::tail`]).
    tail: Mutex<super::tail::Tail>,
    /// Whether the node has peers, so that the tail has readers (it stays empty otherwise).
    keep_tail: bool,
    /// The convergence digests as of a feed position, published by the writer thread after
    /// each commit and purge (see [`Digests`]).
    digests: Mutex<Digests>,
}

/// The components' convergence digests (see [`super::digest`]) and the feed position they hold
/// at: read together, under one lock, so that a peer can compare them with its own once it
/// applied the feed up to that position.
#[derive(Clone, Debug, Default)]
struct Digests {
    seq: u64,
    of: BTreeMap<String, super::digest::SetDigest>,
}

impl Ctx {
    /// Publishes the store's digests of `components` (writer thread, after a commit or purge).
    fn publish_digests<'a>(&self, store: &Store, components: impl IntoIterator<Item = &'a str>) {
        let mut d = self.digests.lock().unwrap_or_else(|e| e.into_inner());
        for c in components {
            match d.of.get_mut(c) {
                Some(digest) => *digest = store.digest(c),
                None => {
                    d.of.insert(c.to_owned(), store.digest(c));
                }
            }
        }
        d.seq = store.meta().last_seq;
    }
}

/// Jobs for the writer thread.
enum Job {
    Commit { writes: Vec<Prepared>, reply: oneshot::Sender<Result<CommitOutcome, StoreError>> },
    Purge { component: String, before: Option<u64>, keep: Option<u64>, reply: oneshot::Sender<Result<usize, StoreError>> },
    PurgeTombstones { before: u64, through: u64, hard_before: u64, reply: oneshot::Sender<Result<usize, StoreError>> },
    ExpireIdem { before_ms: u64 },
    SetEpoch { epoch: u64, reply: oneshot::Sender<Result<u64, StoreError>> },
    SetMaxSize { bytes: u64, reply: oneshot::Sender<Result<(), StoreError>> },
    CorrectDigest { found: store::DigestMismatch },
    Shutdown { reply: oneshot::Sender<()> },
}

/// A version ready to commit.
struct Prepared {
    component: Arc<ComponentState>,
    key: String,
    data: Arc<[u8]>,
    tombstone: bool,
    stamp: Stamp,
    origin: String,
    doc: Option<Arc<str>>,
    idem: Option<IdemKey>,
    resolves: bool,
    conflict: Option<ConflictRow>,
    /// Whether the key had a live record before (for counts).
    prior_live: Option<bool>,
    /// A local write, a replicated version, or a replicated version the plugin refused to
    /// merge, of which only `conflict` is committed (see [`store::WriteRow::keep`]).
    kind: Kind,
}

/// The prior version of a key.
#[derive(Clone)]
struct Prior {
    data: Arc<[u8]>,
    tombstone: bool,
    stamp: Stamp,
    origin: String,
    /// `None` while only in this batch.
    seq: Option<u64>,
}

/// A running node.
pub struct Node {
    ctx: Arc<Ctx>,
    config: Config,
    meta: Meta,
    pool: Arc<PluginPool>,
    writer: crossbeam_channel::Sender<Job>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    lanes: BTreeMap<String, tokio::sync::mpsc::Sender<Request>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    admission: Admission,
    store_reads: Arc<Semaphore>,
    closing: AtomicBool,
    stop_tx: watch::Sender<bool>,
    started: Instant,
    seq_rx: watch::Receiver<u64>,
    /// Replication's say on local writes (see [`super::gate`]).
    gate: Arc<super::gate::GateCell>,
    /// The backup thread's status and metrics (see [`super::tap`]).
    backup: super::tap::BackupCell,
}

fn micros_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn plugin_err(plugin: &str, call: &'static str, message: String) -> NodeError {
    NodeError::Plugin(PluginError::Trap { plugin: plugin.to_owned(), call, message })
}

/// Checks a record key.
pub fn check_key(key: &str) -> Result<(), NodeError> {
    if key.is_empty() {
        return Err(NodeError::InvalidKey("a key cannot be empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(NodeError::InvalidKey(format!("a key is at most {MAX_KEY_BYTES} bytes (this one has {})", key.len())));
    }
    if key.chars().any(char::is_control) {
        return Err(NodeError::InvalidKey("a key cannot contain control characters".into()));
    }
    Ok(())
}

/// The fingerprint an idempotency key is bound to.
pub fn fingerprint(key: &str, op: &Op) -> String {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update([0]);
    match op {
        Op::Put(doc) => {
            h.update(b"put\0");
            h.update(doc.as_bytes());
        }
        Op::Delete => h.update(b"delete\0"),
    }
    hex::encode(&h.finalize()[..16])
}

/// A conflict's id: derived from the component, the key and the merged version, so every node
/// that reaches the same join lists the same id.
pub fn conflict_id(component: &str, key: &str, merged: &[u8]) -> String {
    let mut h = Sha256::new();
    for part in [component.as_bytes(), key.as_bytes(), merged] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    hex::encode(&h.finalize()[..12])
}

/// Checks that a plugin's document is JSON.
fn checked_doc(plugin: &str, doc: String) -> Result<Arc<str>, NodeError> {
    serde_json::from_str::<serde::de::IgnoredAny>(&doc)
        .map_err(|e| plugin_err(plugin, "deserialize", format!("returned a document that is not JSON: {e}")))?;
    Ok(Arc::from(doc))
}

/// Decodes stored bytes into the reader's document with a session.
fn decode(session: &mut Session, comp: &ComponentState, key: &str, data: &[u8], tombstone: bool) -> Result<Option<Arc<str>>, NodeError> {
    if tombstone {
        return Ok(None);
    }
    let started = Instant::now();
    let out = session.deserialize(key, data);
    comp.metrics.plugin_latency.observe(started.elapsed().as_secs_f64());
    match out? {
        Ok(Some(doc)) => Ok(Some(checked_doc(comp.name(), doc)?)),
        Ok(None) => Ok(None),
        Err(m) => Err(plugin_err(comp.name(), "deserialize", format!("cannot read a stored version: {m}"))),
    }
}

/// Documents written earlier in the batch (all of the batch's component), by key: what
/// `validate` lookups see before the batch is committed.
type Overlay = Mutex<HashMap<String, Option<Arc<str>>>>;

/// The read-only view `validate` gets: committed records, under the batch in flight's writes,
/// under the batch's own earlier writes.
struct NodeLookup {
    ctx: Arc<Ctx>,
    /// The component the batch writes (the overlay and the pending batch hold only its keys).
    component: Arc<ComponentState>,
    overlay: Arc<Overlay>,
    pending: Option<Arc<Pending>>,
}

impl Lookup for NodeLookup {
    fn lookup(&self, component: &str, key: &str) -> Option<String> {
        if component == self.component.name() {
            let written = self.overlay.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned();
            if let Some(doc) = written.or_else(|| self.pending.as_ref()?.docs.get(key).cloned()) {
                return doc.map(|d| d.to_string());
            }
        }
        let comp = self.ctx.components.get(component)?;
        if let Some(r) = comp.mem.get(key) {
            return r.doc.map(|d| d.to_string());
        }
        if comp.mem.policy().is_complete() {
            return None;
        }
        let row = self.ctx.readers.with(|c| store::get(c, component, key)).ok()??;
        if row.tombstone {
            return None;
        }
        let plugin = self.ctx.registry.get(component)?;
        let mut session = plugin.session(Arc::new(NoLookup)).ok()?;
        session.deserialize(key, &row.data).ok()?.ok()?
    }
}

impl Ctx {
    /// Whether the key has an open conflict (a store read, only when some conflict is open).
    fn has_open_conflict(&self, component: &str, key: &str) -> Result<bool, NodeError> {
        if self.conflicts_open.load(Ordering::Relaxed) == 0 {
            return Ok(false);
        }
        Ok(self.readers.with(|c| store::has_open_conflict(c, component, key))?)
    }

    fn component(&self, name: &str) -> Result<&Arc<ComponentState>, NodeError> {
        self.components.get(name).ok_or_else(|| NodeError::UnknownComponent(name.to_owned()))
    }

    /// The committed version of a key.
    fn prior(&self, comp: &ComponentState, key: &str) -> Result<Option<Prior>, NodeError> {
        if let Some(r) = comp.mem.get(key) {
            return Ok(Some(Prior {
                data: r.data,
                tombstone: r.tombstone,
                stamp: r.stamp,
                origin: r.origin.to_string(),
                seq: Some(r.seq),
            }));
        }
        if comp.mem.policy().is_complete() {
            return Ok(None);
        }
        comp.metrics.store_reads.fetch_add(1, Ordering::Relaxed);
        let row = self.readers.with(|c| store::get(c, comp.name(), key))?;
        Ok(row.map(|r| Prior { data: Arc::from(r.data), tombstone: r.tombstone, stamp: r.stamp, origin: r.origin, seq: Some(r.seq) }))
    }
}

/// What preparing one write came to.
enum Step {
    Commit(Box<Prepared>),
    Done(WriteOutcome),
    /// Same idempotency key as an earlier write of the batch: same answer.
    SameAs(usize),
    /// Same idempotency key as a write of the batch still being committed: its answer, once
    /// known.
    SameAsPending(String),
}

/// What a batch being committed shows the preparation of the next one (a lane prepares batch
/// N+1 while the writer commits batch N): its versions as priors, its documents for lookups,
/// its idempotency keys. Looked up behind the next batch's own writes, never copied into them.
#[derive(Default)]
struct Pending {
    priors: HashMap<String, Prior>,
    docs: HashMap<String, Option<Arc<str>>>,
    idem: HashMap<String, String>,
}

/// What preparing a batch has written so far, over the batch in flight.
struct Seen {
    pending: Option<Arc<Pending>>,
    priors: HashMap<String, Prior>,
    /// Idempotency keys: the index of the batch's first write with it, and its fingerprint.
    idem: HashMap<String, (usize, String)>,
}

impl Seen {
    /// The newest version of `key` written by the batch or the batch in flight.
    fn prior(&self, key: &str) -> Option<Prior> {
        self.priors.get(key).or_else(|| self.pending.as_ref()?.priors.get(key)).cloned()
    }

    /// Where an idempotency key was used: `Some(Some(index))` by this batch's write `index`,
    /// `Some(None)` by the batch in flight, with its fingerprint.
    fn idem(&self, idem_key: &str) -> Option<(Option<usize>, &str)> {
        if let Some((first, fp)) = self.idem.get(idem_key) {
            return Some((Some(*first), fp));
        }
        self.pending.as_ref()?.idem.get(idem_key).map(|fp| (None, fp.as_str()))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Local,
    Remote,
    /// A replicated version refused by the plugin's merge: only its conflict is committed.
    Kept,
}

/// Runs the plugin side of a batch (on a plugin thread).
fn prepare_batch(
    ctx: &Arc<Ctx>,
    comp: &Arc<ComponentState>,
    plugin: &Arc<LoadedPlugin>,
    items: Vec<WriteItem>,
    pending: Option<Arc<Pending>>,
) -> (Vec<Result<Step, NodeError>>, Pending, Option<Session>) {
    // The batch in flight, if any, is under this one: its versions are the priors, its
    // documents what lookups see, its idempotency keys taken.
    let overlay: Arc<Overlay> = Arc::new(Mutex::new(HashMap::with_capacity(items.len())));
    let lookup = Arc::new(NodeLookup { ctx: ctx.clone(), component: comp.clone(), overlay: overlay.clone(), pending: pending.clone() });
    let mut seen = Seen { pending, priors: HashMap::with_capacity(items.len()), idem: HashMap::new() };
    let mut session = match plugin.session(lookup) {
        Ok(s) => s,
        Err(e) => return (items.iter().map(|_| Err(NodeError::Plugin(e.clone()))).collect(), Pending::default(), None),
    };
    let mut out = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let step = match item {
            WriteItem::Local { key, op, idem } => prepare_local(ctx, comp, &mut session, &mut seen, &overlay, index, key, op, idem),
            WriteItem::Remote { version, mode } => prepare_remote(ctx, comp, &mut session, &mut seen, &overlay, version, mode),
        };
        if let Err(e) = &step {
            comp.metrics.refuse(e.code());
        }
        out.push(step);
    }
    // What the next batch is prepared on top of while this one commits: exactly this batch's
    // versions to commit (the batch in flight under it is committed by then), moved, not copied.
    // The session (which holds the overlay through its lookup) is handed back to be dropped
    // once the batch is on its way: its instance's teardown is off the write's path.
    let docs = std::mem::take(&mut *overlay.lock().unwrap_or_else(|e| e.into_inner()));
    let idem = out
        .iter()
        .filter_map(|step| match step {
            Ok(Step::Commit(w)) => w.idem.as_ref().map(|ik| (ik.key.clone(), ik.fingerprint.clone())),
            _ => None,
        })
        .collect();
    (out, Pending { priors: seen.priors, docs, idem }, Some(session))
}

fn timed<R>(comp: &ComponentState, f: impl FnOnce() -> R) -> R {
    let started = Instant::now();
    let r = f();
    comp.metrics.plugin_latency.observe(started.elapsed().as_secs_f64());
    r
}

#[allow(clippy::too_many_arguments)]
fn prepare_local(
    ctx: &Ctx,
    comp: &Arc<ComponentState>,
    session: &mut Session,
    seen: &mut Seen,
    overlay: &Overlay,
    index: usize,
    key: String,
    op: Op,
    idem: Option<IdemKey>,
) -> Result<Step, NodeError> {
    if let Some(ik) = &idem {
        if let Some((first, fp)) = seen.idem(&ik.key) {
            return match (fp == ik.fingerprint, first) {
                (false, _) => Err(NodeError::IdempotencyReused(ik.key.clone())),
                (true, None) => Ok(Step::SameAsPending(ik.key.clone())),
                (true, Some(first)) => Ok(Step::SameAs(first)),
            };
        }
        let known = ctx.idem.lock().unwrap_or_else(|e| e.into_inner()).get(&(comp.name().to_owned(), ik.key.clone())).cloned();
        if let Some(entry) = known {
            if entry.fingerprint != ik.fingerprint {
                return Err(NodeError::IdempotencyReused(ik.key.clone()));
            }
            return Ok(Step::Done(WriteOutcome::Local(replayed_ack(comp, entry))));
        }
        seen.idem.insert(ik.key.clone(), (index, ik.fingerprint.clone()));
    }
    let prior = match seen.prior(&key) {
        Some(p) => Some(p),
        None => ctx.prior(comp, &key)?,
    };
    if matches!(op, Op::Delete) && prior.as_ref().is_none_or(|p| p.tombstone) {
        return Err(NodeError::NotFound { component: comp.name().to_owned(), key });
    }
    let stamp = ctx.clock.tick();
    let stored = match timed(comp, || session.serialize(&key, &op, prior.as_ref().map(|p| &p.data[..]), &stamp))? {
        Ok(s) => s,
        Err(crate::plugin::WriteError::Invalid(v)) => return Err(NodeError::Invalid(v)),
        Err(crate::plugin::WriteError::Malformed(m)) => return Err(NodeError::Malformed(m)),
    };
    if !stored.tombstone
        && let Err(v) = timed(comp, || session.validate(&key, &stored.data))?
    {
        return Err(NodeError::Invalid(v));
    }
    // A write that changes nothing is not committed, unless it settles an open conflict.
    if let Some(p) = &prior
        && let Some(seq) = p.seq
        && p.tombstone == stored.tombstone
        && p.data[..] == stored.data[..]
        && !ctx.has_open_conflict(comp.name(), &key)?
    {
        comp.metrics.unchanged.fetch_add(1, Ordering::Relaxed);
        return Ok(Step::Done(WriteOutcome::Local(WriteAck {
            component: comp.name().to_owned(),
            key,
            seq,
            stamp: StampView::from(&p.stamp),
            deleted: p.tombstone,
            changed: false,
            replayed: false,
        })));
    }
    let doc = decode(session, comp, &key, &stored.data, stored.tombstone)?;
    let data: Arc<[u8]> = Arc::from(stored.data);
    overlay.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), doc.clone());
    seen.priors.insert(
        key.clone(),
        Prior { data: data.clone(), tombstone: stored.tombstone, stamp: stamp.clone(), origin: ctx.name.clone(), seq: None },
    );
    let prior_live = prior.as_ref().map(|p| !p.tombstone);
    Ok(Step::Commit(Box::new(Prepared {
        component: comp.clone(),
        key,
        data,
        tombstone: stored.tombstone,
        origin: ctx.name.clone(),
        stamp,
        doc,
        idem,
        resolves: true,
        conflict: None,
        prior_live,
        kind: Kind::Local,
    })))
}

fn version_json(
    session: &mut Session,
    comp: &ComponentState,
    key: &str,
    origin: &str,
    stamp: &Stamp,
    data: &[u8],
    tombstone: bool,
) -> serde_json::Value {
    version_view(origin, stamp, data, tombstone, decode(session, comp, key, data, tombstone))
}

/// A version as a conflict lists it: its document, or, when the plugin cannot read it (a plugin
/// bug, bytes from an older schema, a damaged copy), why not and the stored bytes themselves
/// (`stored_text` when they are UTF-8, `stored_hex` otherwise), so that the operator can still
/// see what the version held.
fn version_view(
    origin: &str,
    stamp: &Stamp,
    data: &[u8],
    tombstone: bool,
    decoded: Result<Option<Arc<str>>, NodeError>,
) -> serde_json::Value {
    let read = match decoded {
        Ok(None) => Ok(serde_json::Value::Null),
        Ok(Some(doc)) => serde_json::from_str::<serde_json::Value>(&doc).map_err(|e| format!("the plugin's document is not JSON: {e}")),
        Err(e) => Err(e.to_string()),
    };
    let mut view = serde_json::json!({"origin": origin, "stamp": StampView::from(stamp), "deleted": tombstone});
    match read {
        Ok(value) => view["value"] = value,
        Err(why) => {
            view["value"] = serde_json::Value::Null;
            view["unreadable"] = why.into();
            match std::str::from_utf8(data) {
                Ok(text) => view["stored_text"] = text.into(),
                Err(_) => view["stored_hex"] = hex::encode(data).into(),
            }
        }
    }
    view
}

/// A replicated version the plugin refused to merge with the local one: a conflict that lists
/// both, the record left as it is. Its id comes from the two versions in a fixed order, so the
/// node that receives the other version lists the same id.
fn refused_merge(
    ctx: &Ctx,
    comp: &Arc<ComponentState>,
    session: &mut Session,
    key: String,
    prior: &Prior,
    version: &RemoteVersion,
    why: &str,
) -> Step {
    let local = (&prior.origin, &prior.stamp, &prior.data[..], prior.tombstone);
    let incoming = (&version.origin, &version.stamp, &version.stored.data[..], version.stored.tombstone);
    let (first, second) = if local.2 <= incoming.2 { (local, incoming) } else { (incoming, local) };
    let mut both = (first.2.len() as u64).to_le_bytes().to_vec();
    both.extend_from_slice(first.2);
    both.extend_from_slice(second.2);
    let versions: Vec<serde_json::Value> =
        [first, second].iter().map(|(origin, stamp, data, tomb)| version_json(session, comp, &key, origin, stamp, data, *tomb)).collect();
    let conflict = ConflictRow {
        id: conflict_id(comp.name(), &key, &both),
        component: comp.name().to_owned(),
        key: key.clone(),
        reason: format!("the plugin refused to merge these versions ({why}); each node keeps its own until a write supersedes them"),
        violations: "[]".to_owned(),
        versions: serde_json::Value::Array(versions).to_string(),
        detected_p: ctx.clock.wall_ms(),
        detected_seq: 0,
        resolved_seq: None,
        resolution: None,
    };
    tracing::warn!(component = comp.name(), key = %key, conflict = %conflict.id, "the plugin refused to merge a replicated version: it is in the conflict queue");
    Step::Commit(Box::new(Prepared {
        component: comp.clone(),
        key,
        data: prior.data.clone(),
        tombstone: prior.tombstone,
        stamp: prior.stamp.clone(),
        origin: prior.origin.clone(),
        doc: None,
        idem: None,
        resolves: false,
        conflict: Some(conflict),
        prior_live: Some(!prior.tombstone),
        kind: Kind::Kept,
    }))
}

fn prepare_remote(
    ctx: &Ctx,
    comp: &Arc<ComponentState>,
    session: &mut Session,
    seen: &mut Seen,
    overlay: &Overlay,
    version: RemoteVersion,
    mode: ApplyMode,
) -> Result<Step, NodeError> {
    check_key(&version.key)?;
    ctx.clock.observe(&version.stamp).map_err(NodeError::ClockAhead)?;
    let key = version.key.clone();
    let prior = match seen.prior(&key) {
        Some(p) => Some(p),
        None => ctx.prior(comp, &key)?,
    };
    let same = |p: &Prior, s: &Stored| p.tombstone == s.tombstone && p.data[..] == s.data[..];
    let (stored, stamp, origin, conflict) = match (mode, &prior) {
        (ApplyMode::Fork, None) => return Ok(Step::Done(WriteOutcome::Remote(Applied::Unchanged))),
        (ApplyMode::Fork, Some(p)) if p.stamp != version.stamp => {
            // Written again since (the new primary's version arrived): nothing to rewind.
            return Ok(Step::Done(WriteOutcome::Remote(Applied::Unchanged)));
        }
        (ApplyMode::Fork, Some(p)) => {
            let orphan = version_json(session, comp, &key, &p.origin, &p.stamp, &p.data, p.tombstone);
            let conflict = ConflictRow {
                id: conflict_id(comp.name(), &key, &p.data),
                component: comp.name().to_owned(),
                key: key.clone(),
                reason: "written on this node after the fork point, while it was the primary: the node that took over never received it; this node now follows that node".to_owned(),
                violations: "[]".to_owned(),
                versions: serde_json::Value::Array(vec![orphan]).to_string(),
                detected_p: ctx.clock.wall_ms(),
                detected_seq: 0,
                resolved_seq: None,
                resolution: None,
            };
            let rewound = Stored { data: Vec::new(), tombstone: true };
            (rewound, Stamp::new(0, 0, ""), p.origin.clone(), Some(conflict))
        }
        (ApplyMode::Replace, Some(p)) if p.stamp >= version.stamp => {
            return Ok(Step::Done(WriteOutcome::Remote(if same(p, &version.stored) { Applied::Unchanged } else { Applied::Older })));
        }
        (ApplyMode::Replace, _) => (version.stored.clone(), version.stamp.clone(), version.origin.clone(), None),
        (ApplyMode::Merge, _) => {
            let merged = match &prior {
                None => version.stored.clone(),
                Some(p) => match timed(comp, || session.merge(&key, &p.data, &version.stored.data)) {
                    Ok(Ok(m)) => m,
                    // The plugin's own refusal, and a failure any node meets with these two
                    // versions (same code, same limits), go to the conflict queue, and the rest
                    // of the feed flows. A deadline depends on the machine's load: it fails the
                    // batch, which comes again.
                    Ok(Err(m)) => return Ok(refused_merge(ctx, comp, session, key, p, &version, &m)),
                    Err(e) if e.same_on_every_node() => return Ok(refused_merge(ctx, comp, session, key, p, &version, &e.to_string())),
                    Err(e) => return Err(e.into()),
                },
            };
            if let Some(p) = &prior
                && same(p, &merged)
            {
                return Ok(Step::Done(WriteOutcome::Remote(Applied::Unchanged)));
            }
            let (stamp, origin) = match &prior {
                Some(p) if p.stamp > version.stamp => (p.stamp.clone(), p.origin.clone()),
                _ => (version.stamp.clone(), version.origin.clone()),
            };
            let conflict = if merged.tombstone {
                None
            } else {
                match timed(comp, || session.validate(&key, &merged.data))? {
                    Ok(()) => None,
                    Err(violations) => {
                        let mut versions = Vec::new();
                        if let Some(p) = &prior {
                            versions.push(version_json(session, comp, &key, &p.origin, &p.stamp, &p.data, p.tombstone));
                        }
                        versions.push(version_json(
                            session,
                            comp,
                            &key,
                            &version.origin,
                            &version.stamp,
                            &version.stored.data,
                            version.stored.tombstone,
                        ));
                        Some(ConflictRow {
                            id: conflict_id(comp.name(), &key, &merged.data),
                            component: comp.name().to_owned(),
                            key: key.clone(),
                            reason: "the merged versions break the component's rules".to_owned(),
                            violations: serde_json::to_string(&violations).unwrap_or_else(|_| "[]".to_owned()),
                            versions: serde_json::Value::Array(versions).to_string(),
                            detected_p: ctx.clock.wall_ms(),
                            detected_seq: 0,
                            resolved_seq: None,
                            resolution: None,
                        })
                    }
                }
            };
            (merged, stamp, origin, conflict)
        }
    };
    // A document the sender's plugin made (checked in `apply_remote`) is kept; otherwise this
    // node's plugin reads the version.
    let doc = match (&version.doc, mode) {
        (Some(doc), ApplyMode::Replace) if !stored.tombstone => Some(doc.clone()),
        _ => decode(session, comp, &key, &stored.data, stored.tombstone)?,
    };
    let data: Arc<[u8]> = Arc::from(stored.data);
    overlay.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), doc.clone());
    seen.priors.insert(
        key.clone(),
        Prior { data: data.clone(), tombstone: stored.tombstone, stamp: stamp.clone(), origin: origin.clone(), seq: None },
    );
    let prior_live = prior.as_ref().map(|p| !p.tombstone);
    Ok(Step::Commit(Box::new(Prepared {
        component: comp.clone(),
        key,
        data,
        tombstone: stored.tombstone,
        stamp,
        origin,
        doc,
        idem: None,
        resolves: false,
        conflict,
        prior_live,
        kind: Kind::Remote,
    })))
}

/// The writer thread: owns the store; commits, then updates memory, in commit order.
fn writer_loop(mut store: Store, ctx: Arc<Ctx>, rx: crossbeam_channel::Receiver<Job>, max_batch: usize, probe_every: Duration) {
    let mut pending: std::collections::VecDeque<Job> = std::collections::VecDeque::new();
    loop {
        let job = match pending.pop_front() {
            Some(j) => j,
            None if ctx.health.read_only.load(Ordering::SeqCst) && !ctx.health.failed.load(Ordering::SeqCst) => {
                match rx.recv_timeout(probe_every) {
                    Ok(j) => j,
                    Err(RecvTimeoutError::Timeout) => {
                        match store.probe(64 * 1024) {
                            Ok(()) => {
                                tracing::warn!("disk space is back: the node takes writes again");
                                ctx.health.set(false, false, None);
                            }
                            Err(StoreError::DiskFull(_)) => {}
                            Err(e) => {
                                tracing::error!(error = %e, "store probe failed; the node stays read-only until restarted");
                                ctx.health.set(true, true, Some(e.to_string()));
                            }
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        match job {
            Job::Commit { writes, reply } => {
                let mut group = vec![(writes, reply)];
                let mut rows: usize = group[0].0.len();
                while rows < max_batch {
                    match rx.try_recv() {
                        Ok(Job::Commit { writes, reply }) => {
                            rows += writes.len();
                            group.push((writes, reply));
                        }
                        Ok(other) => {
                            pending.push_back(other);
                            break;
                        }
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                }
                commit_group(&mut store, &ctx, group);
            }
            Job::Purge { component, before, keep, reply } => {
                let result = if ctx.health.refusal().is_some() {
                    Ok(0)
                } else {
                    store.purge(&component, before, keep).map(|removed| {
                        ctx.publish_digests(&store, [component.as_str()]);
                        if let Some(comp) = ctx.components.get(&component) {
                            for (key, live) in &removed {
                                comp.mem.remove(key);
                                comp.records.fetch_sub(1, Ordering::Relaxed);
                                if *live {
                                    comp.live.fetch_sub(1, Ordering::Relaxed);
                                }
                            }
                            comp.metrics.purged.fetch_add(removed.len() as u64, Ordering::Relaxed);
                        }
                        removed.len()
                    })
                };
                if let Err(e) = &result {
                    note_store_error(&ctx, e);
                }
                let _ = reply.send(result);
            }
            Job::PurgeTombstones { before, through, hard_before, reply } => {
                let result = if ctx.health.refusal().is_some() {
                    Ok(0)
                } else {
                    store.purge_tombstones(before, through, hard_before).map(|removed| {
                        for (component, key) in &removed {
                            if let Some(comp) = ctx.components.get(component) {
                                comp.mem.remove(key);
                                comp.records.fetch_sub(1, Ordering::Relaxed);
                                comp.metrics.purged.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        removed.len()
                    })
                };
                if let Err(e) = &result {
                    note_store_error(&ctx, e);
                }
                let _ = reply.send(result);
            }
            Job::ExpireIdem { before_ms } => {
                if ctx.health.refusal().is_none() {
                    match store.expire_idempotency(before_ms) {
                        Ok(_) => ctx.idem.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, e| e.created_ms >= before_ms),
                        Err(e) => note_store_error(&ctx, &e),
                    }
                }
            }
            Job::SetEpoch { epoch, reply } => {
                let result = store.set_epoch(epoch);
                match &result {
                    Ok(e) => ctx.epoch.store(*e, Ordering::SeqCst),
                    Err(e) => note_store_error(&ctx, e),
                }
                let _ = reply.send(result);
            }
            Job::SetMaxSize { bytes, reply } => {
                let _ = reply.send(store.set_max_size(bytes));
            }
            Job::CorrectDigest { found } => match store.correct_digest(&found.component, found.kept, found.actual) {
                Ok(()) => {
                    ctx.metrics.digest_corrections.fetch_add(1, Ordering::Relaxed);
                    ctx.publish_digests(&store, [found.component.as_str()]);
                }
                Err(e) => {
                    tracing::warn!(component = %found.component, error = %e, "cannot correct the digest; corrected at the next start")
                }
            },
            Job::Shutdown { reply } => {
                if ctx.health.refusal().is_none() {
                    let _ = store.persist_hlc(ctx.clock.last());
                    if let Err(e) = store.checkpoint() {
                        tracing::warn!(error = %e, "checkpoint at shutdown failed; the WAL is replayed at the next start");
                    }
                }
                let _ = reply.send(());
                return;
            }
        }
    }
}

fn note_store_error(ctx: &Ctx, e: &StoreError) {
    match e {
        StoreError::DiskFull(m) => {
            if !ctx.health.read_only.load(Ordering::SeqCst) {
                tracing::error!(error = %m, "the disk is full: the node is read-only until space is freed");
            }
            ctx.health.set(true, false, Some(format!("the disk is full ({m}); free space and the node resumes writes by itself")));
        }
        StoreError::Io(m) => {
            tracing::error!(error = %m, "store I/O error: the node no longer takes writes; restart it once the disk is healthy");
            ctx.health.set(true, true, Some(e.to_string()));
        }
        _ => {}
    }
}

type CommitReply = oneshot::Sender<Result<CommitOutcome, StoreError>>;

fn commit_group(store: &mut Store, ctx: &Ctx, group: Vec<(Vec<Prepared>, CommitReply)>) {
    if let Some(refusal) = ctx.health.refusal() {
        let e = match refusal {
            NodeError::DiskFull(m) => StoreError::DiskFull(m),
            other => StoreError::Io(other.to_string()),
        };
        for (_, reply) in group {
            let _ = reply.send(Err(e.clone()));
        }
        return;
    }
    let started = Instant::now();
    let now_ms = ctx.clock.wall_ms();
    let result = {
        let rows: Vec<WriteRow<'_>> = group
            .iter()
            .flat_map(|(writes, _)| writes.iter())
            .map(|p| WriteRow {
                component: p.component.name(),
                key: &p.key,
                data: &p.data,
                tombstone: p.tombstone,
                stamp: &p.stamp,
                origin: &p.origin,
                idem: p.idem.as_ref(),
                resolves_conflicts: p.resolves,
                conflict: p.conflict.as_ref(),
                keep: p.kind == Kind::Kept,
            })
            .collect();
        store.commit(&rows, now_ms)
    };
    let elapsed = started.elapsed().as_secs_f64();
    match result {
        Ok(outcome) => {
            let total: usize = group.iter().map(|(w, _)| w.len()).sum();
            ctx.metrics.commits.fetch_add(1, Ordering::Relaxed);
            ctx.commits.fetch_add(1, Ordering::Relaxed);
            ctx.metrics.commit_rows.fetch_add(total as u64, Ordering::Relaxed);
            ctx.metrics.commit_latency.observe(elapsed);
            ctx.metrics.commit_size.observe(total as f64);
            ctx.metrics.conflicts_recorded.fetch_add(outcome.recorded, Ordering::Relaxed);
            ctx.conflicts_open.store(store.conflicts_open(), Ordering::Relaxed);
            let mut seqs = outcome.seqs.iter();
            let tapped = ctx.tap.active();
            let epoch = store.meta().epoch;
            let mut tap = Vec::with_capacity(if tapped { total } else { 0 });
            let mut tail = Vec::with_capacity(if ctx.keep_tail { total } else { 0 });
            let mut idem = ctx.idem.lock().unwrap_or_else(|e| e.into_inner());
            let mut offset = 0;
            let mut replies = Vec::with_capacity(group.len());
            let mut touched: Vec<Arc<ComponentState>> = Vec::new();
            for (writes, reply) in group {
                for p in &writes {
                    let Some(&seq) = seqs.next() else { break };
                    if p.kind == Kind::Kept {
                        // Only its conflict was committed.
                        continue;
                    }
                    let comp = &p.component;
                    if !touched.iter().any(|c| Arc::ptr_eq(c, comp)) {
                        touched.push(comp.clone());
                    }
                    if tapped {
                        tap.push(super::store::RecordRow {
                            component: comp.name().to_owned(),
                            key: p.key.clone(),
                            data: p.data.to_vec(),
                            tombstone: p.tombstone,
                            stamp: p.stamp.clone(),
                            origin: p.origin.clone(),
                            epoch,
                            seq,
                        });
                    }
                    if ctx.keep_tail {
                        tail.push(Change {
                            seq,
                            component: comp.name().to_owned(),
                            key: p.key.clone(),
                            stored: Stored { data: p.data.to_vec(), tombstone: p.tombstone },
                            stamp: p.stamp.clone(),
                            origin: p.origin.clone(),
                            epoch,
                            doc: p.doc.clone(),
                        });
                    }
                    comp.mem.apply(
                        &p.key,
                        MemRecord {
                            data: p.data.clone(),
                            tombstone: p.tombstone,
                            stamp: p.stamp.clone(),
                            origin: Arc::from(p.origin.as_str()),
                            seq,
                            doc: p.doc.clone(),
                        },
                        now_ms,
                    );
                    match p.prior_live {
                        None => {
                            comp.records.fetch_add(1, Ordering::Relaxed);
                            if !p.tombstone {
                                comp.live.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some(true) if p.tombstone => {
                            comp.live.fetch_sub(1, Ordering::Relaxed);
                        }
                        Some(false) if !p.tombstone => {
                            comp.live.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(_) => {}
                    }
                    if let Some(ik) = &p.idem {
                        idem.insert(
                            (comp.name().to_owned(), ik.key.clone()),
                            IdemEntry {
                                fingerprint: ik.fingerprint.clone(),
                                key: p.key.clone(),
                                seq,
                                stamp: p.stamp.clone(),
                                tombstone: p.tombstone,
                                created_ms: now_ms,
                            },
                        );
                    }
                }
                let n = writes.len();
                let part = CommitOutcome {
                    seqs: outcome.seqs.get(offset..offset + n).map(<[u64]>::to_vec).unwrap_or_default(),
                    resolved: 0,
                    recorded: 0,
                };
                offset += n;
                replies.push((reply, part));
            }
            drop(idem);
            ctx.publish_digests(store, touched.iter().map(|c| c.name()));
            let last = store.meta().last_seq;
            if ctx.keep_tail {
                ctx.tail.lock().unwrap_or_else(|e| e.into_inner()).push(tail);
            }
            ctx.tap.publish(tap, last);
            ctx.last_seq.store(last, Ordering::SeqCst);
            ctx.seq_tx.send_replace(last);
            for (reply, part) in replies {
                let _ = reply.send(Ok(part));
            }
        }
        Err(e) => {
            ctx.metrics.commit_failures.fetch_add(1, Ordering::Relaxed);
            note_store_error(ctx, &e);
            for (_, reply) in group {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// A lane: the write queue of one component and the task that drains it. While the writer
/// commits a batch, the lane already runs the plugin over the next one (on top of the batch in
/// flight); it hands that one to the writer only once the first is committed, and fails it
/// whole, unapplied, if the first failed.
#[allow(clippy::too_many_arguments)]
async fn lane(
    ctx: Arc<Ctx>,
    comp: Arc<ComponentState>,
    pool: Arc<PluginPool>,
    writer: crossbeam_channel::Sender<Job>,
    mut rx: tokio::sync::mpsc::Receiver<Request>,
    mut stop: watch::Receiver<bool>,
    admission: Admission,
    max_batch: usize,
) {
    let mut inflight: Option<InFlight> = None;
    let mut stopping = false;
    loop {
        let first = match inflight.as_mut() {
            Some(f) => tokio::select! {
                biased;
                done = &mut f.rx => {
                    if let Some(f) = inflight.take() {
                        let _ = finish_batch(&ctx, &comp, f.batch, flatten(done));
                    }
                    continue;
                }
                r = rx.recv() => r,
            },
            // Stopping: finish what is queued, take nothing new.
            None if stopping => rx.try_recv().ok(),
            None => tokio::select! {
                biased;
                r = rx.recv() => r,
                _ = stop.changed() => {
                    stopping = true;
                    rx.try_recv().ok()
                }
            },
        };
        let Some(first) = first else {
            // Closed or stopping: settle what is in flight, then end.
            if let Some(f) = inflight.take() {
                let _ = settle(&ctx, &comp, f).await;
            }
            return;
        };
        let mut requests = vec![first];
        let mut items = requests[0].items.len();
        while items < max_batch {
            match rx.try_recv() {
                Ok(r) => {
                    items += r.items.len();
                    requests.push(r);
                }
                Err(_) => break,
            }
        }
        let now_ms = ctx.clock.wall_ms();
        let mut live = Vec::with_capacity(requests.len());
        for r in requests {
            comp.metrics.queue_wait.observe(r.enqueued.elapsed().as_secs_f64());
            match admission.dequeue(r.enqueued_ms, now_ms) {
                Ok(()) => live.push(r),
                Err(shed) => {
                    comp.metrics.refuse("overloaded");
                    let n = r.items.len();
                    let _ = r.reply.send((0..n).map(|_| Err(NodeError::Shed(shed.clone()))).collect());
                }
            }
        }
        if live.is_empty() {
            continue;
        }
        let pending = inflight.as_ref().map(|f| f.view.clone());
        let prepared = prepare(&ctx, &comp, &pool, live, pending).await;
        if let Some(f) = inflight.take()
            && let Err(e) = settle(&ctx, &comp, f).await
        {
            // The next batch was prepared on top of versions that were not committed.
            if let Some(p) = prepared {
                p.fail(&comp, e);
            }
            continue;
        }
        if let Some(p) = prepared {
            inflight = submit_commit(&ctx, &comp, &writer, p);
        }
    }
}

type CommitResult = Result<CommitOutcome, StoreError>;

fn flatten(r: Result<CommitResult, oneshot::error::RecvError>) -> Result<CommitOutcome, NodeError> {
    r.map_err(|_| NodeError::ShuttingDown).and_then(|r| r.map_err(NodeError::from))
}

/// A prepared batch: answers so far, versions to commit, and who to answer.
struct PreparedBatch {
    results: Vec<Option<Result<WriteOutcome, NodeError>>>,
    to_commit: Vec<Prepared>,
    slots: Vec<(usize, Kind, String, Stamp, bool, Option<String>)>,
    same_as: Vec<(usize, usize)>,
    same_as_pending: Vec<(usize, String)>,
    replies: Vec<(Reply, usize)>,
    view: Arc<Pending>,
}

impl PreparedBatch {
    /// Answers every request with `e` (nothing of the batch is applied).
    fn fail(self, comp: &ComponentState, e: NodeError) {
        comp.metrics.refuse(e.code());
        for (reply, n) in self.replies {
            let _ = reply.send((0..n).map(|_| Err(e.clone())).collect());
        }
    }
}

/// A batch handed to the writer.
struct InFlight {
    rx: oneshot::Receiver<CommitResult>,
    view: Arc<Pending>,
    batch: PreparedBatch,
}

fn fail_requests(requests: Vec<Request>, e: NodeError) {
    for r in requests {
        let n = r.items.len();
        let _ = r.reply.send((0..n).map(|_| Err(e.clone())).collect());
    }
}

/// Runs the plugin over a batch (on a plugin thread), on top of the batch in flight.
async fn prepare(
    ctx: &Arc<Ctx>,
    comp: &Arc<ComponentState>,
    pool: &PluginPool,
    requests: Vec<Request>,
    pending: Option<Arc<Pending>>,
) -> Option<PreparedBatch> {
    if let Some(e) = ctx.health.refusal() {
        comp.metrics.refuse(e.code());
        fail_requests(requests, e);
        return None;
    }
    let Some(plugin) = ctx.registry.get(comp.name()) else {
        fail_requests(requests, NodeError::UnknownComponent(comp.name().to_owned()));
        return None;
    };
    let mut replies = Vec::with_capacity(requests.len());
    let mut items = Vec::new();
    for r in requests {
        replies.push((r.reply, r.items.len()));
        items.extend(r.items);
    }
    let total = items.len();
    let (steps, view) = if needs_no_plugin(comp, &items) {
        // Warm versions that come with their document: nothing for the plugin to do and nothing
        // to read from the store, so no hop to a plugin thread.
        let (steps, view, _) = prepare_batch(ctx, comp, &plugin, items, pending);
        (steps, view)
    } else {
        let (job_ctx, job_comp) = (ctx.clone(), comp.clone());
        let job = move || {
            let (steps, view, session) = prepare_batch(&job_ctx, &job_comp, &plugin, items, pending);
            ((steps, view), session)
        };
        match pool.run_then_drop(job).await {
            Ok(prepared) => prepared,
            Err(_busy) => {
                comp.metrics.refuse("busy");
                for (reply, n) in replies {
                    let _ = reply.send((0..n).map(|_| Err(NodeError::Busy)).collect());
                }
                return None;
            }
        }
    };
    let view = Arc::new(view);
    let mut p = PreparedBatch {
        results: Vec::with_capacity(total),
        to_commit: Vec::new(),
        slots: Vec::new(),
        same_as: Vec::new(),
        same_as_pending: Vec::new(),
        replies,
        view,
    };
    for (i, step) in steps.into_iter().enumerate() {
        match step {
            Ok(Step::Commit(w)) => {
                let w = *w;
                p.slots.push((i, w.kind, w.key.clone(), w.stamp.clone(), w.tombstone, w.conflict.as_ref().map(|c| c.id.clone())));
                p.to_commit.push(w);
                p.results.push(None);
            }
            Ok(Step::Done(o)) => p.results.push(Some(Ok(o))),
            Ok(Step::SameAs(first)) => {
                p.same_as.push((i, first));
                p.results.push(None);
            }
            Ok(Step::SameAsPending(key)) => {
                p.same_as_pending.push((i, key));
                p.results.push(None);
            }
            Err(e) => p.results.push(Some(Err(e))),
        }
    }
    Some(p)
}

/// Whether preparing `items` is short and calls no plugin function and reads nothing from the
/// store: at most [`INLINE_PREPARE_MAX`] items, each a warm version that replaces the local one
/// and brings its document (or is a tombstone), on a component whose records are all in memory.
fn needs_no_plugin(comp: &ComponentState, items: &[WriteItem]) -> bool {
    items.len() <= INLINE_PREPARE_MAX
        && comp.mem.policy().is_complete()
        && items.iter().all(|i| match i {
            WriteItem::Remote { version, mode: ApplyMode::Replace } => version.stored.tombstone || version.doc.is_some(),
            _ => false,
        })
}

/// Items a lane prepares on its own task when no plugin call is needed (larger batches still go
/// to a plugin thread, so that the runtime's worker is never held for long).
const INLINE_PREPARE_MAX: usize = 64;

/// Hands a prepared batch's versions to the writer; a batch with nothing to commit is answered
/// at once.
fn submit_commit(ctx: &Ctx, comp: &ComponentState, writer: &crossbeam_channel::Sender<Job>, mut p: PreparedBatch) -> Option<InFlight> {
    if p.to_commit.is_empty() {
        let _ = finish_batch(ctx, comp, p, Ok(CommitOutcome::default()));
        return None;
    }
    let (tx, rx) = oneshot::channel();
    let writes = std::mem::take(&mut p.to_commit);
    match writer.try_send(Job::Commit { writes, reply: tx }) {
        Ok(()) => Some(InFlight { rx, view: p.view.clone(), batch: p }),
        Err(crossbeam_channel::TrySendError::Full(_)) => {
            let _ = finish_batch(ctx, comp, p, Err(NodeError::Busy));
            None
        }
        Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
            let _ = finish_batch(ctx, comp, p, Err(NodeError::ShuttingDown));
            None
        }
    }
}

/// Waits for a batch's commit and answers it. Returns the commit's failure, if any.
async fn settle(ctx: &Ctx, comp: &ComponentState, f: InFlight) -> Result<(), NodeError> {
    let InFlight { rx, batch, .. } = f;
    finish_batch(ctx, comp, batch, flatten(rx.await))
}

/// Answers a batch once its commit is done. Returns the commit's failure, if any.
fn finish_batch(ctx: &Ctx, comp: &ComponentState, p: PreparedBatch, outcome: Result<CommitOutcome, NodeError>) -> Result<(), NodeError> {
    let PreparedBatch { mut results, slots, same_as, same_as_pending, replies, .. } = p;
    let total = results.len();
    let failure = match outcome {
        Ok(out) => {
            for ((i, kind, key, stamp, tombstone, conflict), seq) in slots.into_iter().zip(out.seqs) {
                results[i] = Some(Ok(match kind {
                    Kind::Local => {
                        if tombstone {
                            comp.metrics.deletes.fetch_add(1, Ordering::Relaxed);
                        } else {
                            comp.metrics.writes.fetch_add(1, Ordering::Relaxed);
                        }
                        WriteOutcome::Local(WriteAck {
                            component: comp.name().to_owned(),
                            key,
                            seq,
                            stamp: StampView::from(&stamp),
                            deleted: tombstone,
                            changed: true,
                            replayed: false,
                        })
                    }
                    Kind::Remote => {
                        comp.metrics.remote_applied.fetch_add(1, Ordering::Relaxed);
                        WriteOutcome::Remote(Applied::Stored { seq, conflict })
                    }
                    Kind::Kept => WriteOutcome::Remote(Applied::Kept { conflict: conflict.unwrap_or_default() }),
                }));
            }
            None
        }
        Err(e) => {
            comp.metrics.refuse(e.code());
            for (i, ..) in slots {
                results[i] = Some(Err(e.clone()));
            }
            Some(e)
        }
    };
    for (i, first) in same_as {
        let r = match results.get(first).cloned().flatten() {
            Some(Ok(WriteOutcome::Local(mut ack))) => {
                ack.replayed = true;
                Ok(WriteOutcome::Local(ack))
            }
            Some(other) => other,
            None => Err(NodeError::Busy),
        };
        results[i] = Some(r);
    }
    for (i, idem_key) in same_as_pending {
        // The earlier batch is committed: its answer is remembered.
        let entry = ctx.idem.lock().unwrap_or_else(|e| e.into_inner()).get(&(comp.name().to_owned(), idem_key)).cloned();
        results[i] = Some(match entry {
            Some(e) => Ok(WriteOutcome::Local(replayed_ack(comp, e))),
            None => Err(NodeError::Busy),
        });
    }
    if let Ok(mut rate) = comp.rate.lock() {
        rate.add(total as u64, ctx.clock.wall_ms());
    }
    let mut results = results.into_iter().map(|r| r.unwrap_or(Err(NodeError::Busy)));
    for (reply, n) in replies {
        let part: Vec<_> = results.by_ref().take(n).collect();
        let _ = reply.send(part);
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Loads a component's records into memory (on a plugin thread).
fn preload(ctx: &Ctx, comp: &ComponentState, plugin: &Arc<LoadedPlugin>) -> Result<(), String> {
    let started = Instant::now();
    let (records, live) = ctx.readers.with(|c| store::counts(c, comp.name())).map_err(|e| e.to_string())?;
    comp.records.store(records, Ordering::Relaxed);
    comp.live.store(live, Ordering::Relaxed);
    let now = ctx.clock.wall_ms();
    let since = match comp.mem.policy() {
        super::config::Preload::None => {
            comp.mem.set_decoded_with(plugin.digest());
            comp.load_micros.store(micros_since(started), Ordering::Relaxed);
            return Ok(());
        }
        super::config::Preload::All => None,
        super::config::Preload::Recent(w) => Some(now.saturating_sub(u64::try_from(w.as_millis()).unwrap_or(u64::MAX))),
    };
    let mut session = plugin.session(Arc::new(NoLookup)).map_err(|e| e.to_string())?;
    let mut loaded = Vec::new();
    let mut failure = None;
    ctx.readers
        .with(|c| {
            store::scan(c, comp.name(), since, |row| {
                if failure.is_some() {
                    return;
                }
                match decode(&mut session, comp, &row.key, &row.data, row.tombstone) {
                    Ok(doc) => loaded.push((
                        row.key,
                        MemRecord {
                            data: Arc::from(row.data),
                            tombstone: row.tombstone,
                            stamp: row.stamp,
                            origin: Arc::from(row.origin),
                            seq: row.seq,
                            doc,
                        },
                    )),
                    Err(e) => failure = Some(format!("record {:?}: {e}", row.key)),
                }
            })
        })
        .map_err(|e| e.to_string())?;
    if let Some(f) = failure {
        return Err(f);
    }
    comp.mem.load(loaded);
    comp.mem.set_decoded_with(plugin.digest());
    comp.load_micros.store(micros_since(started), Ordering::Relaxed);
    Ok(())
}

impl Node {
    /// Opens the store, loads the plugins, preloads memory and starts the lanes and the writer.
    /// Must run inside a tokio runtime.
    pub async fn start(config: Config, options: NodeOptions) -> anyhow::Result<Node> {
        use anyhow::Context as _;
        let now = options.wall.now_ms();
        let store_path = config.store_path();
        let store_opts = StoreOptions { synchronous: config.raw.store.synchronous, max_size_bytes: config.raw.store.max_size_mb << 20 };
        let name = config.node_name().to_owned();
        let store = {
            let (p, n, o) = (store_path.clone(), name.clone(), store_opts.clone());
            tokio::task::spawn_blocking(move || Store::open(&p, &n, &o, now))
                .await
                .context("opening the store")?
                .with_context(|| format!("cannot open the store {}", store_path.display()))?
        };
        let meta = store.meta().clone();
        let threads = match config.raw.plugins.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            n => n,
        };
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: config.cache_dir(),
            max_instances: u32::try_from(threads * 4 + 16).unwrap_or(64),
            max_memory_bytes: super::config::MAX_PLUGIN_MEMORY,
        })?;
        let registry = Registry::new(runtime);
        {
            let specs: Vec<PluginSpec> = config
                .components
                .iter()
                .map(|c| PluginSpec {
                    component: c.name.clone(),
                    path: c.plugin.clone(),
                    digest: c.digest.clone(),
                    limits: c.limits.clone(),
                })
                .collect();
            let registry = registry.clone();
            let file = config.file.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                for spec in specs {
                    let component = spec.component.clone();
                    registry.add(spec).map_err(|e| anyhow::anyhow!("{}: `components.{component}.plugin`: {e}", file.display()))?;
                }
                Ok(())
            })
            .await
            .context("loading plugins")??;
        }
        let clock = Arc::new(Clock::new(Hlc::new(&name, meta.hlc, config.raw.clock.max_ahead_ms), options.wall.clone()));
        let readers = Arc::new(Readers::new(&store_path, threads + 4));
        let components: BTreeMap<String, Arc<ComponentState>> = config
            .components
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    Arc::new(ComponentState {
                        config: c.clone(),
                        mem: ComponentMem::new(c.preload),
                        metrics: ComponentMetrics::default(),
                        records: AtomicU64::new(0),
                        live: AtomicU64::new(0),
                        load_micros: AtomicU64::new(0),
                        rate: Mutex::new(Rate::default()),
                    }),
                )
            })
            .collect();
        let (seq_tx, seq_rx) = watch::channel(meta.last_seq);
        let ctx = Arc::new(Ctx {
            name: name.clone(),
            clock,
            registry: registry.clone(),
            components,
            readers: readers.clone(),
            idem: Mutex::new(HashMap::new()),
            health: StoreHealth::default(),
            epoch: AtomicU64::new(meta.epoch),
            last_seq: AtomicU64::new(meta.last_seq),
            commits: AtomicU64::new(0),
            conflicts_open: AtomicU64::new(store.conflicts_open()),
            metrics: NodeMetrics::default(),
            seq_tx,
            tap: super::tap::CommitTap::default(),
            tail: Mutex::new(super::tail::Tail::default()),
            keep_tail: !config.raw.peers.is_empty(),
            digests: Mutex::new(Digests {
                seq: meta.last_seq,
                of: config.components.iter().map(|c| (c.name.clone(), store.digest(&c.name))).collect(),
            }),
        });
        // Idempotency keys, and components the store has but the config lacks.
        {
            let ctx = ctx.clone();
            let ttl_ms = config.raw.store.idempotency_ttl_s.saturating_mul(1000);
            tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
                let rows = ctx.readers.with(|c| store::idempotency_rows(c, now.saturating_sub(ttl_ms)))?;
                let mut idem = ctx.idem.lock().unwrap_or_else(|e| e.into_inner());
                for r in rows {
                    idem.insert(
                        (r.component, r.idem_key),
                        IdemEntry { fingerprint: r.fingerprint, key: r.key, seq: r.seq, stamp: r.stamp, tombstone: r.tombstone, created_ms: r.created_ms },
                    );
                }
                drop(idem);
                for c in ctx.readers.with(store::components)? {
                    if !ctx.components.contains_key(&c) {
                        tracing::warn!(component = %c, "the store holds records of a component that is not configured; they are kept but not served");
                    }
                }
                Ok(())
            })
            .await
            .context("reading the store")?
            .context("reading the store")?;
        }
        let pool = Arc::new(PluginPool::new(threads, config.raw.plugins.queue).context("starting the plugin threads")?);
        // Preload, components in parallel on the plugin threads.
        let mut loads = tokio::task::JoinSet::new();
        for comp in ctx.components.values() {
            let (ctx2, comp2, pool2) = (ctx.clone(), comp.clone(), pool.clone());
            let plugin = registry.get(comp.name()).context("plugin vanished")?;
            loads.spawn(async move {
                let name = comp2.name().to_owned();
                let r = pool2.run(move || preload(&ctx2, &comp2, &plugin)).await;
                (name, r)
            });
        }
        while let Some(done) = loads.join_next().await {
            let (name, r) = done.context("preload task")?;
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => anyhow::bail!("cannot preload component {name}: {e}"),
                Err(_) => anyhow::bail!("cannot preload component {name}: the plugin threads are saturated"),
            }
        }
        // Retention's indexes before any write (made once: a pause at the first start after an
        // upgrade, not in the middle of taking writes); a component whose plugin no longer has
        // retention, or that is no longer configured, loses its index.
        let mut store = store;
        let aged: Vec<String> = ctx
            .components
            .keys()
            .filter(|c| {
                registry.get(c).and_then(|p| p.info().retention.clone()).is_some_and(|r| r.max_age_ms.is_some() || r.max_count.is_some())
            })
            .cloned()
            .collect();
        let store = tokio::task::spawn_blocking(move || -> Result<Store, StoreError> {
            for c in &aged {
                store.ensure_age_index(c)?;
            }
            for c in store.age_indexed()?.into_iter().filter(|c| !aged.contains(c)) {
                store.drop_age_index(&c)?;
            }
            Ok(store)
        })
        .await
        .context("indexing the store")?
        .context("indexing the store for retention")?;
        let (writer_tx, writer_rx) = crossbeam_channel::bounded(config.raw.queues.commit_queue);
        let writer_thread = {
            let ctx = ctx.clone();
            let max_batch = config.raw.store.max_batch;
            let probe = Duration::from_millis(config.raw.store.probe_interval_ms);
            std::thread::Builder::new()
                .name("tandem-writer".into())
                .spawn(move || writer_loop(store, ctx, writer_rx, max_batch, probe))
                .context("starting the writer thread")?
        };
        let admission = Admission { capacity: config.raw.queues.write_queue, max_wait_ms: config.raw.queues.max_wait_ms };
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut lanes = BTreeMap::new();
        let mut tasks = Vec::new();
        for comp in ctx.components.values() {
            let (tx, rx) = tokio::sync::mpsc::channel(config.raw.queues.write_queue);
            lanes.insert(comp.name().to_owned(), tx);
            tasks.push(tokio::spawn(lane(
                ctx.clone(),
                comp.clone(),
                pool.clone(),
                writer_tx.clone(),
                rx,
                stop_rx.clone(),
                admission,
                config.raw.store.max_batch,
            )));
        }
        let node = Node {
            ctx: ctx.clone(),
            meta,
            pool,
            writer: writer_tx,
            writer_thread: Mutex::new(Some(writer_thread)),
            lanes,
            tasks: Mutex::new(tasks),
            admission,
            store_reads: Arc::new(Semaphore::new(config.raw.queues.store_reads)),
            closing: AtomicBool::new(false),
            stop_tx,
            started: Instant::now(),
            seq_rx,
            gate: Default::default(),
            backup: Default::default(),
            config,
        };
        node.spawn_scrub(stop_rx.clone());
        node.spawn_maintenance(stop_rx);
        if node.config.raw.plugins.watch
            && node.config.components.iter().any(|c| c.digest.is_none())
            && let Err(e) = registry.watch()
        {
            tracing::warn!(error = %e, "cannot watch plugin files; plugins will not be reloaded when they change");
        }
        Ok(node)
    }

    /// Reads every record once, on a reader, and checks that each component's records sum to
    /// the digest the store keeps with them (invariant 9): a store edited outside Tandem, or
    /// damaged, is logged and its digest corrected, so that the comparison with the peers shows
    /// what the records hold.
    fn spawn_scrub(&self, mut stop: watch::Receiver<bool>) {
        let (ctx, writer) = (self.ctx.clone(), self.writer.clone());
        let task = tokio::spawn(async move {
            let cancel = Arc::new(AtomicBool::new(false));
            let scrub = {
                let (ctx, cancel) = (ctx.clone(), cancel.clone());
                tokio::task::spawn_blocking(move || ctx.readers.with(|c| store::scrub_digests(c, &cancel)))
            };
            let found = tokio::select! {
                r = scrub => r,
                _ = stop.changed() => {
                    cancel.store(true, Ordering::Relaxed);
                    return;
                }
            };
            match found {
                Ok(Ok(found)) => {
                    for f in found {
                        tracing::warn!(
                            component = %f.component,
                            kept = %f.kept.hex(),
                            records = %f.actual.hex(),
                            "the component's records do not sum to the digest kept with them: the store was edited outside tandem, or damaged; the digest is corrected, compare it with the peers'"
                        );
                        if writer.send(Job::CorrectDigest { found: f }).is_err() {
                            return;
                        }
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot check the store's digests"),
                Err(_) => {}
            }
        });
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(task);
    }

    fn spawn_maintenance(&self, mut stop: watch::Receiver<bool>) {
        let ctx = self.ctx.clone();
        let writer = self.writer.clone();
        let pool = self.pool.clone();
        let every = Duration::from_millis(self.config.raw.store.maintenance_interval_ms);
        let ttl_ms = self.config.raw.store.idempotency_ttl_s.saturating_mul(1000);
        let gate = self.gate.clone();
        let tombstones = Tombstones::of(&self.config);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                maintain(&ctx, &writer, &pool, ttl_ms).await;
                purge_tombstones(&ctx, &writer, &gate, tombstones).await;
            }
        });
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(task);
    }

    /// Runs one round of upkeep now (retention, window eviction, key expiry, re-decoding after a
    /// plugin reload). It also runs every `store.maintenance_interval_ms`.
    pub async fn maintain_now(&self) {
        let ttl_ms = self.config.raw.store.idempotency_ttl_s.saturating_mul(1000);
        maintain(&self.ctx, &self.writer, &self.pool, ttl_ms).await;
        purge_tombstones(&self.ctx, &self.writer, &self.gate, Tombstones::of(&self.config)).await;
    }

    /// The highest feed position of a purged tombstone: a peer behind it missed deletions.
    pub async fn tombstones_purged_through(&self) -> Result<u64, NodeError> {
        let ctx = self.ctx.clone();
        self.store_read(move || Ok(ctx.readers.with(store::tombstones_purged_through)?)).await
    }

    /// How many tombstones old enough to purge a peer at `after_seq` holds back.
    pub async fn tombstones_held(&self, after_seq: u64, older_than_ms: u64) -> Result<u64, NodeError> {
        let ctx = self.ctx.clone();
        let before = self.ctx.clock.wall_ms().saturating_sub(older_than_ms);
        self.store_read(move || Ok(ctx.readers.with(|c| store::tombstones_held(c, after_seq, before))?)).await
    }

    /// A consistent snapshot of some components as the change feed after `after_seq` (one read
    /// transaction, in seq order), `chunk` versions at a time with the position it is complete
    /// up to. The channel is bounded: a slow consumer holds the read back, not memory.
    pub fn snapshot_feed(
        &self,
        components: Vec<String>,
        after_seq: u64,
        chunk: usize,
    ) -> tokio::sync::mpsc::Receiver<Result<(Vec<Change>, u64), NodeError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let ctx = self.ctx.clone();
        tokio::task::spawn_blocking(move || {
            let r = ctx.readers.with(|c| {
                store::stream_snapshot(c, &components, after_seq, chunk, |rows, as_of| {
                    tx.blocking_send(Ok((rows.into_iter().map(Change::from).collect(), as_of))).is_ok()
                })
            });
            match r {
                Ok(as_of) => {
                    let _ = tx.blocking_send(Ok((Vec::new(), as_of)));
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(NodeError::from(e)));
                }
            }
        });
        rx
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Identity as found in the store at start.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.ctx.name
    }

    /// The plugins.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.ctx.registry
    }

    /// The node's clock (stamps, remote-stamp checks).
    pub fn clock(&self) -> &Arc<Clock> {
        &self.ctx.clock
    }

    /// The configured components, sorted.
    pub fn components(&self) -> Vec<String> {
        self.ctx.components.keys().cloned().collect()
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.ctx.epoch.load(Ordering::SeqCst)
    }

    /// The seq of the last committed write.
    pub fn last_seq(&self) -> u64 {
        self.ctx.last_seq.load(Ordering::SeqCst)
    }

    /// Notified with the last committed seq after every commit.
    pub fn watch_seq(&self) -> watch::Receiver<u64> {
        self.seq_rx.clone()
    }

    /// Counts a request refused for its token.
    pub fn note_unauthorized(&self) {
        self.ctx.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether writes are currently refused (and why).
    pub fn write_refusal(&self) -> Option<NodeError> {
        if self.closing.load(Ordering::SeqCst) {
            return Some(NodeError::ShuttingDown);
        }
        self.ctx.health.refusal()
    }

    async fn submit(&self, component: &str, items: Vec<WriteItem>) -> Result<Vec<Result<WriteOutcome, NodeError>>, NodeError> {
        if self.config.raw.node.role == Role::Witness {
            return Err(NodeError::Witness);
        }
        let comp = self.ctx.component(component)?;
        if let Some(gate) = self.gate.get()
            && items.iter().any(|i| matches!(i, WriteItem::Local { .. }))
            && let Some(e) = gate.refuse(component)
        {
            comp.metrics.refuse(e.code());
            return Err(e);
        }
        if let Some(e) = self.write_refusal() {
            comp.metrics.refuse(e.code());
            return Err(e);
        }
        let lane = self.lanes.get(component).ok_or_else(|| NodeError::UnknownComponent(component.to_owned()))?;
        let depth = self.admission.capacity.saturating_sub(lane.capacity());
        if let Err(shed) = self.admission.enqueue(depth) {
            comp.metrics.refuse("overloaded");
            return Err(NodeError::QueueFull(shed));
        }
        let (tx, rx) = oneshot::channel();
        let request = Request { items, enqueued_ms: self.ctx.clock.wall_ms(), enqueued: Instant::now(), reply: tx };
        match lane.try_send(request) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                comp.metrics.refuse("overloaded");
                return Err(NodeError::QueueFull(Shed::QueueFull { depth: self.admission.capacity, capacity: self.admission.capacity }));
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return Err(NodeError::ShuttingDown),
        }
        rx.await.map_err(|_| NodeError::ShuttingDown)
    }

    /// Seconds a client refused with 429 should wait, from the component's recent write rate.
    pub fn retry_after(&self, component: &str) -> u64 {
        let Some(comp) = self.ctx.components.get(component) else { return 1 };
        let depth = self.lanes.get(component).map_or(0, |l| self.admission.capacity.saturating_sub(l.capacity()));
        let rate = comp.rate.lock().map(|r| r.per_sec()).unwrap_or(0.0);
        Admission::retry_after_secs(depth, rate)
    }

    /// An application write (put or delete), optionally with an idempotency key.
    pub async fn write(&self, component: &str, key: &str, op: Op, idempotency_key: Option<&str>) -> Result<WriteAck, NodeError> {
        let started = Instant::now();
        check_key(key)?;
        let idem = match idempotency_key {
            Some(k) if k.is_empty() || k.len() > 256 => {
                return Err(NodeError::InvalidKey("an idempotency key is 1 to 256 bytes".into()));
            }
            Some(k) => Some(IdemKey { key: k.to_owned(), fingerprint: fingerprint(key, &op) }),
            None => None,
        };
        let item = WriteItem::Local { key: key.to_owned(), op, idem };
        let result = self.submit(component, vec![item]).await?.into_iter().next().unwrap_or(Err(NodeError::Busy));
        if let Some(comp) = self.ctx.components.get(component) {
            comp.metrics.write_latency.observe(started.elapsed().as_secs_f64());
        }
        match result? {
            WriteOutcome::Local(ack) => {
                self.await_gate(component, ack.seq).await?;
                Ok(ack)
            }
            WriteOutcome::Remote(_) => Err(NodeError::Busy),
        }
    }

    /// Installs replication's write gate (once).
    pub fn set_gate(&self, gate: Arc<dyn super::gate::WriteGate>) -> bool {
        self.gate.set(gate)
    }

    /// Every committed version, for the log archive.
    pub fn commit_tap(&self) -> &super::tap::CommitTap {
        &self.ctx.tap
    }

    /// Installs the backup thread's status and metrics (once).
    pub fn set_backup_view(&self, view: Arc<dyn super::tap::BackupView>) -> bool {
        self.backup.set(view)
    }

    /// The backup thread's status, if one runs.
    pub fn backup_status(&self) -> Option<serde_json::Value> {
        self.backup.get().map(|b| b.status())
    }

    /// Waits for what the gate requires of a write committed at `seq` (a `standby` ack).
    async fn await_gate(&self, component: &str, seq: u64) -> Result<(), NodeError> {
        match self.gate.get().and_then(|g| g.after_commit(component, seq)) {
            Some(wait) => wait.await,
            None => Ok(()),
        }
    }

    /// Writes a JSON document.
    pub async fn put(&self, component: &str, key: &str, json: &str, idempotency_key: Option<&str>) -> Result<WriteAck, NodeError> {
        self.write(component, key, Op::Put(json.to_owned()), idempotency_key).await
    }

    /// Deletes a record (404 when there is no live record).
    pub async fn delete(&self, component: &str, key: &str, idempotency_key: Option<&str>) -> Result<WriteAck, NodeError> {
        self.write(component, key, Op::Delete, idempotency_key).await
    }

    /// Several writes of one component, committed in one transaction (each succeeds or fails
    /// on its own: a refused write does not stop the others).
    pub async fn write_many(&self, component: &str, writes: Vec<(String, Op)>) -> Result<Vec<Result<WriteAck, NodeError>>, NodeError> {
        for (k, _) in &writes {
            check_key(k)?;
        }
        let items = writes.into_iter().map(|(key, op)| WriteItem::Local { key, op, idem: None }).collect();
        let results = self.submit(component, items).await?;
        if let Some(seq) = results
            .iter()
            .filter_map(|r| match r {
                Ok(WriteOutcome::Local(ack)) => Some(ack.seq),
                _ => None,
            })
            .max()
        {
            self.await_gate(component, seq).await?;
        }
        Ok(results
            .into_iter()
            .map(|r| match r? {
                WriteOutcome::Local(ack) => Ok(ack),
                WriteOutcome::Remote(_) => Err(NodeError::Busy),
            })
            .collect())
    }

    /// Applies versions received from another node (replication). Each version's stamp is
    /// checked against the clock bound first (`clock_ahead` refusal).
    pub async fn apply_remote(
        &self,
        component: &str,
        versions: Vec<RemoteVersion>,
        mode: ApplyMode,
    ) -> Result<Vec<Result<Applied, NodeError>>, NodeError> {
        // A document the sender's plugin made is kept only when it is JSON; without one this
        // node's plugin reads the version.
        let items = versions
            .into_iter()
            .map(|mut version| {
                version.doc = version.doc.filter(|d| serde_json::from_str::<serde::de::IgnoredAny>(d).is_ok());
                WriteItem::Remote { version, mode }
            })
            .collect();
        let results = self.submit(component, items).await?;
        Ok(results
            .into_iter()
            .map(|r| match r? {
                WriteOutcome::Remote(a) => Ok(a),
                WriteOutcome::Local(_) => Err(NodeError::Busy),
            })
            .collect())
    }

    /// A record as readers see it, or `None`.
    pub async fn get(&self, component: &str, key: &str) -> Result<Option<ReadRecord>, NodeError> {
        let started = Instant::now();
        if self.config.raw.node.role == Role::Witness {
            return Err(NodeError::Witness);
        }
        let comp = self.ctx.component(component)?.clone();
        check_key(key)?;
        let result = match comp.mem.get(key) {
            Some(r) => Ok(r.doc.map(|doc| ReadRecord {
                component: component.to_owned(),
                key: key.to_owned(),
                doc,
                stamp: r.stamp,
                origin: r.origin,
                seq: r.seq,
            })),
            None if comp.mem.policy().is_complete() => Ok(None),
            None => {
                let (ctx, c2, k) = (self.ctx.clone(), comp.clone(), key.to_owned());
                self.store_read(move || {
                    c2.metrics.store_reads.fetch_add(1, Ordering::Relaxed);
                    let Some(row) = ctx.readers.with(|c| store::get(c, c2.name(), &k))? else { return Ok(None) };
                    if row.tombstone {
                        return Ok(None);
                    }
                    let plugin = ctx.registry.get(c2.name()).ok_or_else(|| NodeError::UnknownComponent(c2.name().to_owned()))?;
                    let mut session = plugin.session(Arc::new(NoLookup))?;
                    Ok(decode(&mut session, &c2, &k, &row.data, false)?.map(|doc| ReadRecord {
                        component: row.component,
                        key: row.key,
                        doc,
                        stamp: row.stamp,
                        origin: Arc::from(row.origin),
                        seq: row.seq,
                    }))
                })
                .await
            }
        };
        match &result {
            Ok(Some(_)) => comp.metrics.reads.fetch_add(1, Ordering::Relaxed),
            Ok(None) => comp.metrics.read_misses.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                comp.metrics.refuse(e.code());
                0
            }
        };
        comp.metrics.read_latency.observe(started.elapsed().as_secs_f64());
        result
    }

    /// Live records whose key starts with `prefix`, after `after`, at most `limit`; and the key
    /// to continue from when there may be more.
    pub async fn list(
        &self,
        component: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ReadRecord>, Option<String>), NodeError> {
        if self.config.raw.node.role == Role::Witness {
            return Err(NodeError::Witness);
        }
        let comp = self.ctx.component(component)?.clone();
        let limit = limit.clamp(1, self.config.raw.api.max_page);
        let records = if comp.mem.policy().is_complete() {
            comp.mem
                .list(prefix, after, limit + 1)
                .into_iter()
                .filter_map(|(key, r)| {
                    r.doc.map(|doc| ReadRecord { component: component.to_owned(), key, doc, stamp: r.stamp, origin: r.origin, seq: r.seq })
                })
                .collect::<Vec<_>>()
        } else {
            let (ctx, c2, prefix, after) = (self.ctx.clone(), comp.clone(), prefix.to_owned(), after.map(str::to_owned));
            self.store_read(move || {
                let rows = ctx.readers.with(|c| store::list(c, c2.name(), &prefix, after.as_deref(), limit + 1))?;
                let plugin = ctx.registry.get(c2.name()).ok_or_else(|| NodeError::UnknownComponent(c2.name().to_owned()))?;
                let mut session = plugin.session(Arc::new(NoLookup))?;
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    let doc = match c2.mem.get(&row.key) {
                        Some(m) if m.seq == row.seq => m.doc,
                        _ => decode(&mut session, &c2, &row.key, &row.data, row.tombstone)?,
                    };
                    if let Some(doc) = doc {
                        out.push(ReadRecord {
                            component: row.component,
                            key: row.key,
                            doc,
                            stamp: row.stamp,
                            origin: Arc::from(row.origin),
                            seq: row.seq,
                        });
                    }
                }
                Ok(out)
            })
            .await?
        };
        comp.metrics.reads.fetch_add(1, Ordering::Relaxed);
        let mut records = records;
        let next = if records.len() > limit {
            records.truncate(limit);
            records.last().map(|r| r.key.clone())
        } else {
            None
        };
        Ok((records, next))
    }

    /// Runs store work (and plugin calls) on a plugin thread, bounded by `queues.store_reads`.
    async fn store_read<R: Send + 'static>(&self, f: impl FnOnce() -> Result<R, NodeError> + Send + 'static) -> Result<R, NodeError> {
        let permit = self.store_reads.clone().try_acquire_owned().map_err(|_| {
            NodeError::QueueFull(Shed::QueueFull {
                depth: self.config.raw.queues.store_reads,
                capacity: self.config.raw.queues.store_reads,
            })
        })?;
        let r = self.pool.run(f).await.map_err(|_| NodeError::Busy)?;
        drop(permit);
        r
    }

    /// The change feed: versions written after `after_seq`, in seq order, at most `limit`.
    /// Each key appears once, at its latest version. Resume from the last `seq` received.
    pub async fn changes(&self, after_seq: u64, limit: usize) -> Result<Vec<Change>, NodeError> {
        let ctx = self.ctx.clone();
        self.store_read(move || Ok(ctx.readers.with(|c| store::changes(c, after_seq, limit))?.into_iter().map(Change::from).collect()))
            .await
    }

    /// The change feed for a replication sender: what [`Node::changes`] (or, with `only`,
    /// [`Node::changes_of`]) answers, from the newest versions kept in memory when they cover it
    /// (see [`super::tail`]; those carry their documents), from the store otherwise.
    pub async fn replication_feed(&self, after_seq: u64, limit: usize, only: Option<&[String]>) -> Result<Vec<Change>, NodeError> {
        let recent = {
            let tail = self.ctx.tail.lock().unwrap_or_else(|e| e.into_inner());
            tail.read(after_seq, limit, only, self.ctx.last_seq.load(Ordering::SeqCst))
        };
        match (recent, only) {
            (Some(recent), _) => Ok(recent),
            (None, Some(components)) => self.changes_of(components.to_vec(), after_seq, limit).await,
            (None, None) => self.changes(after_seq, limit).await,
        }
    }

    /// The change feed of some components only (replication's priority lane).
    pub async fn changes_of(&self, components: Vec<String>, after_seq: u64, limit: usize) -> Result<Vec<Change>, NodeError> {
        let ctx = self.ctx.clone();
        self.store_read(move || {
            Ok(ctx.readers.with(|c| store::changes_of(c, &components, after_seq, limit))?.into_iter().map(Change::from).collect())
        })
        .await
    }

    /// A component's convergence digest as of the last commit (see [`super::digest`]): equal on
    /// two nodes holding the same versions. The writer keeps it up to date; reading it costs
    /// nothing.
    pub fn digest(&self, component: &str) -> Result<String, NodeError> {
        self.ctx.component(component)?;
        let d = self.ctx.digests.lock().unwrap_or_else(|e| e.into_inner());
        Ok(d.of.get(component).copied().unwrap_or_default().hex())
    }

    /// The digests of `components` (unknown ones left out) and the feed position they hold at,
    /// read together.
    pub fn digests_at<'a>(&self, components: impl IntoIterator<Item = &'a String>) -> (u64, Vec<(String, String)>) {
        let d = self.ctx.digests.lock().unwrap_or_else(|e| e.into_inner());
        let of = components.into_iter().filter_map(|c| Some((c.clone(), d.of.get(c)?.hex()))).collect();
        (d.seq, of)
    }

    /// Moves the node to `epoch` (durably). Epochs never go back.
    pub async fn set_epoch(&self, epoch: u64) -> Result<u64, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.writer.send(Job::SetEpoch { epoch, reply: tx }).map_err(|_| NodeError::ShuttingDown)?;
        Ok(rx.await.map_err(|_| NodeError::ShuttingDown)??)
    }

    /// Caps the store's size (0: no cap), as `store.max_size_mb` does at start.
    pub async fn set_store_cap(&self, bytes: u64) -> Result<(), NodeError> {
        let (tx, rx) = oneshot::channel();
        self.writer.send(Job::SetMaxSize { bytes, reply: tx }).map_err(|_| NodeError::ShuttingDown)?;
        Ok(rx.await.map_err(|_| NodeError::ShuttingDown)??)
    }

    /// Conflicts (open only unless `all`), oldest first.
    pub async fn conflicts(&self, component: Option<&str>, all: bool, limit: usize) -> Result<Vec<api::ConflictView>, NodeError> {
        let (ctx, c) = (self.ctx.clone(), component.map(str::to_owned));
        self.store_read(move || {
            Ok(ctx.readers.with(|conn| store::conflicts(conn, c.as_deref(), all, limit))?.into_iter().map(conflict_view).collect())
        })
        .await
    }

    /// One conflict.
    pub async fn conflict(&self, id: &str) -> Result<api::ConflictView, NodeError> {
        let (ctx, i) = (self.ctx.clone(), id.to_owned());
        self.store_read(move || ctx.readers.with(|conn| store::conflict(conn, &i)).map_err(NodeError::from))
            .await?
            .map(conflict_view)
            .ok_or_else(|| NodeError::ConflictNotFound(id.to_owned()))
    }

    /// Resolves a conflict with an ordinary write of the record (which supersedes every version
    /// in conflict).
    pub async fn resolve(&self, id: &str, op: Op, idempotency_key: Option<&str>) -> Result<api::ResolveAck, NodeError> {
        let c = self.conflict(id).await?;
        if !c.open {
            return Err(NodeError::Refused(format!(
                "conflict {id} is already resolved ({})",
                c.resolution.unwrap_or_else(|| "no detail".to_owned())
            )));
        }
        let write = self.write(&c.component, &c.key, op, idempotency_key).await?;
        Ok(api::ResolveAck { conflict: id.to_owned(), write })
    }

    /// What a load balancer needs to know.
    pub fn health(&self) -> api::Health {
        let role = match self.config.raw.node.role {
            Role::Data => "data",
            Role::Witness => "witness",
        };
        let refusal = self.write_refusal();
        let data = self.config.raw.node.role == Role::Data;
        // With replication, the role is the warm one: a standby or a demoted primary does not
        // take (warm) writes.
        let warm = self.gate.get().and_then(|g| g.role()).filter(|_| data);
        let takes = warm.as_ref().is_none_or(|(_, takes)| *takes);
        let reason = match (&refusal, &warm) {
            (Some(e), _) => Some(e.to_string()),
            (None, Some((r, false))) => Some(format!("this node is the warm {r}: writes go to the primary")),
            _ => None,
        };
        api::Health {
            node: self.ctx.name.clone(),
            role: warm.map_or_else(|| role.to_owned(), |(r, _)| r),
            node_role: role.to_owned(),
            epoch: self.epoch(),
            reads: data && !self.closing.load(Ordering::SeqCst),
            writes: data && refusal.is_none() && takes,
            reason,
        }
    }

    /// Makes this node the warm primary in a new epoch (`tandem promote`).
    pub async fn promote(&self) -> Result<serde_json::Value, NodeError> {
        match self.gate.get() {
            Some(g) => g.promote().await,
            None => Err(NodeError::Refused("replication is not running on this node (no peers or no cluster credentials)".into())),
        }
    }

    /// Closes warm writes and waits up to `timeout` for the standbys to have everything (`tandem demote`).
    pub async fn demote(&self, timeout: std::time::Duration) -> Result<serde_json::Value, NodeError> {
        match self.gate.get() {
            Some(g) => g.demote(timeout).await,
            None => Err(NodeError::Refused("replication is not running on this node (no peers or no cluster credentials)".into())),
        }
    }

    /// Status of the node, its store and its components.
    pub fn status(&self) -> api::Status {
        let health = self.health();
        let last = self.ctx.clock.last();
        let wall = self.ctx.clock.wall_ms();
        let (refusals, last_refusal) = self.ctx.clock.refusals();
        let (size, wal) = store::file_sizes(&self.config.store_path());
        let plugins: BTreeMap<String, crate::plugin::registry::PluginStatus> =
            self.ctx.registry.status().into_iter().map(|s| (s.component.clone(), s)).collect();
        let components = self
            .ctx
            .components
            .values()
            .map(|c| {
                let p = plugins.get(c.name());
                let info = self.ctx.registry.get(c.name());
                let depth = self.lanes.get(c.name()).map_or(0, |l| self.admission.capacity.saturating_sub(l.capacity()));
                api::ComponentStatus {
                    name: c.name().to_owned(),
                    mode: c.config.mode.to_string(),
                    priority: format!("{:?}", c.config.priority).to_lowercase(),
                    preload: c.config.preload.describe(),
                    records: c.records.load(Ordering::Relaxed),
                    live: c.live.load(Ordering::Relaxed),
                    in_memory: c.mem.len(),
                    memory_bytes: c.mem.bytes(),
                    load_ms: c.load_micros.load(Ordering::Relaxed) as f64 / 1000.0,
                    writes: c.metrics.writes.load(Ordering::Relaxed) + c.metrics.deletes.load(Ordering::Relaxed),
                    reads: c.metrics.reads.load(Ordering::Relaxed),
                    refusals: c.metrics.refusals().values().sum(),
                    queue_depth: depth as u64,
                    queue_capacity: self.admission.capacity as u64,
                    plugin: api::PluginView {
                        version: p.map(|p| p.plugin_version.clone()).unwrap_or_default(),
                        digest: p.map(|p| p.digest.clone()).unwrap_or_default(),
                        pinned: p.is_some_and(|p| p.pinned),
                        shape: info.map(|i| i.info().shape.clone()).unwrap_or_default(),
                        quarantined: p.is_some_and(|p| p.health.quarantined),
                        calls: p.map_or(0, |p| p.health.calls),
                        failures: p.map_or(0, |p| p.health.failures),
                        fuel: p.map_or(0, |p| p.health.fuel),
                        last_failure: p.map(|p| p.health.last_failure.clone()).unwrap_or_default(),
                        reloads: p.map_or(0, |p| p.reloads),
                        last_reload_error: p.and_then(|p| p.last_reload_error.clone()),
                    },
                }
            })
            .collect();
        let raw = &self.config.raw;
        let peer = |p: &super::config::PeerSection| api::PeerStatus {
            name: p.name.clone(),
            address: p.address.clone(),
            profile: format!("{:?}", p.profile).to_lowercase(),
        };
        api::Status {
            node: api::NodeStatus {
                name: self.ctx.name.clone(),
                id: self.meta.node_id.clone(),
                role: health.node_role.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                api: raw.node.api.clone(),
                listen: raw.node.listen.clone(),
                mode: raw.cluster.mode.to_string(),
                epoch: self.epoch(),
                uptime_s: self.started.elapsed().as_secs(),
                hlc: StampView { physical: last.physical, logical: last.logical, node: self.ctx.name.clone() },
                wall_ms: wall,
                clock_ahead_ms: last.physical.saturating_sub(wall),
                clock_max_ahead_ms: self.ctx.clock.max_ahead_ms(),
                clock_refusals: refusals,
                last_clock_refusal: last_refusal,
                reads: health.reads,
                writes: health.writes,
            },
            store: api::StoreStatus {
                path: self.config.store_path().display().to_string(),
                size_bytes: size,
                wal_bytes: wal,
                last_seq: self.last_seq(),
                read_only: self.ctx.health.read_only.load(Ordering::SeqCst),
                read_only_reason: self.ctx.health.reason(),
                commits: self.ctx.commits.load(Ordering::Relaxed),
                conflicts_open: self.ctx.conflicts_open.load(Ordering::Relaxed),
                idempotency_keys: self.ctx.idem.lock().map(|m| m.len() as u64).unwrap_or(0),
            },
            components,
            peers: raw.peers.iter().map(peer).collect(),
            witness: raw.witness.as_ref().map(peer),
            replication: self.gate.get().and_then(|g| g.status()),
        }
    }

    /// Metrics in the Prometheus text format.
    pub fn metrics(&self) -> String {
        let mut e = Exposition::default();
        let node = format!("node=\"{}\"", label(&self.ctx.name));
        let m = &self.ctx.metrics;
        e.gauge("tandem_up", "1 while the node runs.", &node, 1.0);
        e.gauge("tandem_epoch", "The node's epoch.", &node, self.epoch() as f64);
        e.gauge("tandem_last_seq", "Seq of the last committed write (change feed position).", &node, self.last_seq() as f64);
        e.gauge(
            "tandem_read_only",
            "1 when the node refuses writes (full disk or store failure).",
            &node,
            f64::from(u8::from(self.write_refusal().is_some())),
        );
        e.counter("tandem_commits_total", "Store transactions committed.", &node, m.commits.load(Ordering::Relaxed));
        e.counter("tandem_commit_rows_total", "Records written by committed transactions.", &node, m.commit_rows.load(Ordering::Relaxed));
        e.counter(
            "tandem_commit_failures_total",
            "Store transactions that failed (nothing applied).",
            &node,
            m.commit_failures.load(Ordering::Relaxed),
        );
        e.histogram("tandem_commit_seconds", "Time to commit a transaction, fsync included.", &node, &m.commit_latency);
        e.histogram("tandem_commit_rows", "Records per committed transaction (group commit).", &node, &m.commit_size);
        e.gauge(
            "tandem_conflicts_open",
            "Conflicts waiting for an operator.",
            &node,
            self.ctx.conflicts_open.load(Ordering::Relaxed) as f64,
        );
        e.counter("tandem_conflicts_recorded_total", "Conflicts recorded.", &node, m.conflicts_recorded.load(Ordering::Relaxed));
        e.counter(
            "tandem_store_digest_corrections_total",
            "Components whose records did not sum to the digest kept with them (a store edited outside tandem, or damaged), found by the scrub after the start.",
            &node,
            m.digest_corrections.load(Ordering::Relaxed),
        );
        e.counter(
            "tandem_unauthorized_total",
            "Requests refused for a missing or wrong token.",
            &node,
            m.unauthorized.load(Ordering::Relaxed),
        );
        let last = self.ctx.clock.last();
        let wall = self.ctx.clock.wall_ms();
        e.gauge(
            "tandem_clock_ahead_ms",
            "How far the hybrid clock runs ahead of the wall clock.",
            &node,
            last.physical.saturating_sub(wall) as f64,
        );
        e.counter("tandem_clock_refusals_total", "Remote stamps refused for being too far ahead.", &node, self.ctx.clock.refusals().0);
        let plugins: BTreeMap<String, crate::plugin::registry::PluginStatus> =
            self.ctx.registry.status().into_iter().map(|s| (s.component.clone(), s)).collect();
        for c in self.ctx.components.values() {
            let l = format!("{node},component=\"{}\"", label(c.name()));
            let cm = &c.metrics;
            e.counter("tandem_writes_total", "Local writes applied (puts).", &l, cm.writes.load(Ordering::Relaxed));
            e.counter("tandem_deletes_total", "Local deletes applied.", &l, cm.deletes.load(Ordering::Relaxed));
            e.counter("tandem_writes_unchanged_total", "Writes that changed nothing.", &l, cm.unchanged.load(Ordering::Relaxed));
            e.counter("tandem_remote_applied_total", "Remote versions applied.", &l, cm.remote_applied.load(Ordering::Relaxed));
            e.counter(
                "tandem_idempotent_replays_total",
                "Writes answered from an idempotency key.",
                &l,
                cm.replays.load(Ordering::Relaxed),
            );
            e.counter("tandem_reads_total", "Reads served.", &l, cm.reads.load(Ordering::Relaxed));
            e.counter("tandem_read_misses_total", "Reads of records that do not exist.", &l, cm.read_misses.load(Ordering::Relaxed));
            e.counter(
                "tandem_store_reads_total",
                "Reads that went to the store (not in memory).",
                &l,
                cm.store_reads.load(Ordering::Relaxed),
            );
            e.counter("tandem_purged_total", "Records removed by the retention rule.", &l, cm.purged.load(Ordering::Relaxed));
            for (code, n) in cm.refusals() {
                e.counter("tandem_refusals_total", "Requests refused, by error code.", &format!("{l},code=\"{code}\""), n);
            }
            e.gauge("tandem_records", "Records in the store (tombstones included).", &l, c.records.load(Ordering::Relaxed) as f64);
            e.gauge("tandem_records_live", "Records that are not deleted.", &l, c.live.load(Ordering::Relaxed) as f64);
            e.gauge("tandem_memory_records", "Records held in memory.", &l, c.mem.len() as f64);
            e.gauge("tandem_memory_bytes", "Approximate memory held by preloaded records.", &l, c.mem.bytes() as f64);
            e.gauge(
                "tandem_preload_seconds",
                "Time the preload of the component took.",
                &l,
                c.load_micros.load(Ordering::Relaxed) as f64 / 1e6,
            );
            let depth = self.lanes.get(c.name()).map_or(0, |q| self.admission.capacity.saturating_sub(q.capacity()));
            e.gauge("tandem_write_queue_depth", "Write requests waiting.", &l, depth as f64);
            e.histogram("tandem_write_seconds", "Write latency, queue to acknowledgement.", &l, &cm.write_latency);
            e.histogram("tandem_read_seconds", "Read latency.", &l, &cm.read_latency);
            e.histogram("tandem_plugin_call_seconds", "Plugin call latency.", &l, &cm.plugin_latency);
            e.histogram("tandem_queue_wait_seconds", "Time write requests waited in the queue.", &l, &cm.queue_wait);
            if let Some(p) = plugins.get(c.name()) {
                e.counter("tandem_plugin_calls_total", "Plugin calls (since the plugin version was loaded).", &l, p.health.calls);
                e.counter("tandem_plugin_failures_total", "Plugin calls that failed.", &l, p.health.failures);
                e.counter("tandem_plugin_fuel_total", "Fuel used by plugin calls.", &l, p.health.fuel);
                e.gauge("tandem_plugin_quarantined", "1 when the plugin is quarantined.", &l, f64::from(u8::from(p.health.quarantined)));
                e.counter("tandem_plugin_reloads_total", "Plugin versions swapped in.", &l, p.reloads);
            }
        }
        let mut text = e.finish();
        if let Some(g) = self.gate.get() {
            text.push_str(&g.metrics());
        }
        if let Some(b) = self.backup.get() {
            text.push_str(&b.metrics());
        }
        text
    }

    /// Stops taking requests, finishes queued writes, checkpoints and closes the store.
    pub async fn shutdown(&self) {
        if self.closing.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self.stop_tx.send(true);
        let tasks: Vec<_> = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        for t in tasks {
            let _ = t.await;
        }
        let (tx, rx) = oneshot::channel();
        if self.writer.send(Job::Shutdown { reply: tx }).is_ok() {
            let _ = rx.await;
        }
        let handle = self.writer_thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

fn conflict_view(c: ConflictRow) -> api::ConflictView {
    api::ConflictView {
        open: c.resolved_seq.is_none(),
        violations: serde_json::from_str::<Vec<Violation>>(&c.violations).unwrap_or_default(),
        versions: serde_json::from_str(&c.versions).unwrap_or(serde_json::Value::Null),
        id: c.id,
        component: c.component,
        key: c.key,
        reason: c.reason,
        detected_at_ms: c.detected_p,
        detected_seq: c.detected_seq,
        resolved_seq: c.resolved_seq,
        resolution: c.resolution,
    }
}

/// One round of upkeep.
/// When tombstones (deletions) are purged: `store.tombstone_keep_ms` after the deletion, once
/// every data peer has them; past `store.peer_hold_max_ms` whatever the peers.
#[derive(Clone, Copy, Debug)]
struct Tombstones {
    keep_ms: u64,
    hold_max_ms: u64,
}

impl Tombstones {
    fn of(config: &Config) -> Tombstones {
        Tombstones { keep_ms: config.raw.store.tombstone_keep_ms, hold_max_ms: config.raw.store.peer_hold_max_ms }
    }
}

async fn purge_tombstones(ctx: &Arc<Ctx>, writer: &crossbeam_channel::Sender<Job>, gate: &super::gate::GateCell, t: Tombstones) {
    if t.keep_ms == 0 {
        return;
    }
    let now = ctx.clock.wall_ms();
    // Only positions every data peer acknowledged; without replication, all.
    let through = gate.get().and_then(|g| g.purge_horizon()).unwrap_or(u64::MAX);
    let hard_before = now.saturating_sub(t.hold_max_ms.max(t.keep_ms));
    let (tx, rx) = oneshot::channel();
    let job = Job::PurgeTombstones { before: now.saturating_sub(t.keep_ms), through, hard_before, reply: tx };
    if writer.send(job).is_ok() {
        match rx.await {
            Ok(Ok(n)) if n > 0 => tracing::info!(purged = n, through, "tombstones purged"),
            Ok(Err(e)) => tracing::warn!(error = %e, "purging tombstones failed; retried at the next round"),
            _ => {}
        }
    }
}

async fn maintain(ctx: &Arc<Ctx>, writer: &crossbeam_channel::Sender<Job>, pool: &Arc<PluginPool>, ttl_ms: u64) {
    let now = ctx.clock.wall_ms();
    for comp in ctx.components.values() {
        comp.mem.evict(now);
        let Some(plugin) = ctx.registry.get(comp.name()) else { continue };
        if let Some(r) = plugin.info().retention.clone()
            && (r.max_age_ms.is_some() || r.max_count.is_some())
        {
            let (tx, rx) = oneshot::channel();
            let before = r.max_age_ms.map(|age| now.saturating_sub(age));
            let job = Job::Purge { component: comp.name().to_owned(), before, keep: r.max_count, reply: tx };
            if writer.send(job).is_ok() {
                match rx.await {
                    Ok(Ok(n)) if n > 0 => tracing::info!(component = %comp.name(), purged = n, "retention applied"),
                    Ok(Err(e)) => tracing::warn!(component = %comp.name(), error = %e, "retention failed; retried at the next round"),
                    _ => {}
                }
            }
        }
        if comp.mem.decoded_with() != plugin.digest() {
            let (c2, p2) = (comp.clone(), plugin.clone());
            let redecode = move || -> Result<(), NodeError> {
                let snapshot = c2.mem.snapshot_for_decode();
                let mut session = p2.session(Arc::new(NoLookup))?;
                let mut docs = Vec::with_capacity(snapshot.len());
                for (key, seq, data, tombstone) in snapshot {
                    docs.push((key.clone(), seq, decode(&mut session, &c2, &key, &data, tombstone)?));
                }
                c2.mem.redecoded(docs, p2.digest());
                Ok(())
            };
            match pool.run(redecode).await {
                Ok(Ok(())) => tracing::info!(component = %comp.name(), "documents decoded again with the new plugin version"),
                Ok(Err(e)) => tracing::warn!(component = %comp.name(), error = %e, "cannot decode documents with the new plugin version"),
                Err(_) => {}
            }
        }
    }
    let _ = writer.try_send(Job::ExpireIdem { before_ms: now.saturating_sub(ttl_ms) });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert!(check_key("carrier-main").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key("a\nb").is_err());
        assert!(check_key(&"x".repeat(MAX_KEY_BYTES + 1)).is_err());
    }

    #[test]
    fn fingerprints_bind_key_and_body() {
        let a = fingerprint("k", &Op::Put("{}".into()));
        assert_eq!(a, fingerprint("k", &Op::Put("{}".into())));
        assert_ne!(a, fingerprint("k", &Op::Put("{ }".into())));
        assert_ne!(a, fingerprint("k2", &Op::Put("{}".into())));
        assert_ne!(fingerprint("k", &Op::Delete), a);
    }

    #[test]
    fn a_version_the_plugin_cannot_read_is_listed_with_why_and_its_stored_bytes() {
        let stamp = Stamp { physical: 1_700_000_000_000, logical: 2, node: "b".into() };
        let read = version_view("b", &stamp, b"{}", false, Ok(Some(Arc::from(r#"{"v":1}"#))));
        assert_eq!(read["value"]["v"], 1);
        assert!(read.get("unreadable").is_none(), "{read}");
        let refused = || plugin_err("crm", "deserialize", "cannot read a stored version: bad magic".to_owned());
        let text = version_view("b", &stamp, b"garbled", false, Err(refused()));
        assert!(text["value"].is_null());
        assert!(text["unreadable"].as_str().is_some_and(|w| w.contains("bad magic")), "{text}");
        assert_eq!(text["stored_text"], "garbled");
        let binary = version_view("b", &stamp, &[0xff, 0x00, 0x10], false, Err(refused()));
        assert_eq!(binary["stored_hex"], "ff0010");
        assert!(binary.get("stored_text").is_none(), "{binary}");
        let not_json = version_view("b", &stamp, b"x", false, Ok(Some(Arc::from("{"))));
        assert!(not_json["unreadable"].as_str().is_some_and(|w| w.contains("not JSON")), "{not_json}");
        let deleted = version_view("b", &stamp, b"", true, Ok(None));
        assert!(deleted["value"].is_null() && deleted["deleted"] == true && deleted.get("unreadable").is_none(), "{deleted}");
    }

    #[test]
    fn conflict_ids_depend_on_the_join_only() {
        assert_eq!(conflict_id("c", "k", b"m"), conflict_id("c", "k", b"m"));
        assert_ne!(conflict_id("c", "k", b"m"), conflict_id("c", "k2", b"m"));
        assert_ne!(conflict_id("c", "km", b""), conflict_id("c", "k", b"m"));
    }
}
