//! The consensus plumbing: openraft's type configuration, its runtime (tokio, with randomness
//! drawn from a seedable generator so that a simulation replays), a log and state machine kept
//! on a [`Disk`], and the network over a [`Transport`].
//!
//! The state machine holds one thing: the current [`Assignment`] (which node is the warm
//! primary, in which epoch, and where it forked from the one before).

// openraft's storage traits fix the error type (`StorageError`, large): not ours to box.
#![allow(clippy::result_large_err)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftNetwork, RaftNetworkFactory, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use rand08::SeedableRng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::lease::SyncView;
use super::{Reply, Request, Transport};

/// What goes through the consensus log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `node` is the warm primary from `epoch` on. `old` was the primary before and `fork` the
    /// last position of its feed that `node` had (the fork point). `not_before_ms`: the new
    /// primary takes writes only after waiting this long (a manual promotion waits out the
    /// old primary's lease; an automatic one already did). `prev` is the index of the
    /// assignment it was decided against: it applies only if that is still the current one (a
    /// decision made on stale knowledge, e.g. by a leader that lost its term, changes nothing).
    Promote {
        node: String,
        epoch: u64,
        old: Option<String>,
        fork: u64,
        not_before_ms: u64,
        #[serde(default)]
        prev: u64,
    },
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Promote { node, epoch, old, fork, .. } => {
                write!(f, "promote {node} in epoch {epoch} (old primary {old:?}, fork point {fork})")
            }
        }
    }
}

/// The consensus state: who is the warm primary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub primary: Option<String>,
    pub epoch: u64,
    /// The primary before, and the fork point in its feed.
    pub old: Option<String>,
    pub fork: u64,
    pub not_before_ms: u64,
    /// The log index of the entry that made it (0: none yet).
    pub index: u64,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = (),
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
        AsyncRuntime = SeededRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
type SErr = StorageError<u64>;

// ---- runtime ----

thread_local! {
    static RNG: RefCell<Option<rand08::rngs::StdRng>> = const { RefCell::new(None) };
}

/// Seeds the randomness openraft draws on this thread (a simulation runs on one thread).
pub fn seed_thread(seed: u64) {
    RNG.with(|r| *r.borrow_mut() = Some(rand08::rngs::StdRng::seed_from_u64(seed)));
}

/// Tokio, with openraft's randomness from a per-thread generator that [`seed_thread`] seeds
/// (from the OS otherwise).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SeededRuntime;

impl openraft::AsyncRuntime for SeededRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: openraft::OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = openraft::TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + openraft::OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = rand08::rngs::StdRng;
    type OneshotSender<T: openraft::OptionalSend> = openraft::async_runtime::TokioOneShotSender<T>;
    type OneshotReceiver<T: openraft::OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + openraft::OptionalSend + 'static,
        T::Output: openraft::OptionalSend + 'static,
    {
        tokio::task::spawn(future)
    }
    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }
    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }
    fn timeout<R, F: Future<Output = R> + openraft::OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }
    fn timeout_at<R, F: Future<Output = R> + openraft::OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
    }
    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }
    fn thread_rng() -> Self::ThreadLocalRng {
        RNG.with(|r| {
            let mut r = r.borrow_mut();
            let parent = r.get_or_insert_with(rand08::rngs::StdRng::from_entropy);
            rand08::rngs::StdRng::from_rng(parent).unwrap_or_else(|_| rand08::rngs::StdRng::from_entropy())
        })
    }
    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: openraft::OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (openraft::async_runtime::TokioOneShotSender(tx), rx)
    }
}

// ---- storage ----

/// Where the consensus state lives: a file (fsynced on every change) or memory (simulation,
/// where a "crash" keeps exactly what was saved).
pub trait Disk: Send + Sync + 'static {
    fn load(&self) -> std::io::Result<Option<Vec<u8>>>;
    fn save(&self, bytes: &[u8]) -> std::io::Result<()>;
}

/// A file written durably (temporary file, fsync, rename, fsync of the directory).
pub struct FileDisk(pub std::path::PathBuf);

impl Disk for FileDisk {
    fn load(&self) -> std::io::Result<Option<Vec<u8>>> {
        match std::fs::read(&self.0) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn save(&self, bytes: &[u8]) -> std::io::Result<()> {
        crate::replication::write_durably(&self.0, bytes)
    }
}

/// Memory that survives a simulated crash (everything saved was "synced").
#[derive(Default)]
pub struct MemDisk(pub Mutex<Option<Vec<u8>>>);

impl Disk for MemDisk {
    fn load(&self) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
    fn save(&self, bytes: &[u8]) -> std::io::Result<()> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes.to_vec());
        Ok(())
    }
}

/// What is on the disk.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Persisted {
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    last_purged: Option<LogId<u64>>,
    log: BTreeMap<u64, Entry<TypeConfig>>,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    assignment: Assignment,
    snapshot: Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>,
    /// This voter replaces a lost one (`tandem init --replaces`): until it has caught up with a
    /// leader it may lack entries the lost one helped commit and has forgotten the votes it
    /// gave, so it neither votes nor endorses (see `Coordinator::handle`). Kept here until
    /// cleared, so that a restart halfway through the catch-up does not end it early.
    #[serde(default)]
    rejoining: bool,
    /// The freshest synchronous set this voter heard from a primary it granted a lease: saved
    /// before the grant, so that a restarted voter still restricts promotions to it.
    #[serde(default)]
    sync_heard: SyncView,
    /// The primaries whose removal this voter endorsed, and the assignment they were endorsed
    /// under: saved before the endorsement is answered, so that a restarted voter still grants
    /// them no lease until the next assignment (a promotion decided then may commit late).
    #[serde(default)]
    endorsed_under: u64,
    #[serde(default)]
    endorsed: BTreeSet<String>,
}

/// The log and the state machine, saved together (they are tiny: promotions are rare, and the
/// log is compacted into snapshots).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Persisted>>,
    disk: Arc<dyn Disk>,
    assignment: watch::Sender<Assignment>,
}

/// The snapshot of the state machine.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct MachineImage {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    assignment: Assignment,
}

impl Store {
    /// Opens the store on `disk`.
    pub fn open(disk: Arc<dyn Disk>) -> anyhow::Result<Store> {
        let persisted: Persisted = match disk.load()? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("the consensus state is unreadable: {e}"))?,
            None => Persisted::default(),
        };
        let (assignment, _) = watch::channel(persisted.assignment.clone());
        Ok(Store { inner: Arc::new(Mutex::new(persisted)), disk, assignment })
    }

    /// The current assignment, and its changes.
    pub fn assignment(&self) -> watch::Receiver<Assignment> {
        self.assignment.subscribe()
    }

    /// Nothing was ever saved: no vote, no log, no applied entry (a voter's first start).
    pub fn is_fresh(&self) -> bool {
        let p = self.lock();
        p.vote.is_none() && p.log.is_empty() && p.last_applied.is_none() && p.snapshot.is_none() && !p.rejoining
    }

    /// Whether this voter is rejoining (see [`Persisted::rejoining`]).
    pub fn rejoining(&self) -> bool {
        self.lock().rejoining
    }

    /// Records, durably, whether this voter is rejoining.
    pub fn set_rejoining(&self, rejoining: bool) -> anyhow::Result<()> {
        self.save_with(|p| p.rejoining = rejoining)
    }

    /// Applies `change` and saves the state; on a failed save the change is undone.
    fn save_with(&self, change: impl FnOnce(&mut Persisted)) -> anyhow::Result<()> {
        let mut p = self.lock();
        let before = p.clone();
        change(&mut p);
        let saved = serde_json::to_vec(&*p)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| self.disk.save(&bytes).map_err(|e| anyhow::anyhow!("saving the consensus state: {e}")));
        if saved.is_err() {
            *p = before;
        }
        saved
    }

    /// The last entry of the log (or the last one purged into the snapshot).
    pub fn last_log_id(&self) -> Option<LogId<u64>> {
        let p = self.lock();
        p.log.values().next_back().map(|e| e.log_id).or(p.last_purged)
    }

    /// The last entry applied to the state machine.
    pub fn last_applied(&self) -> Option<LogId<u64>> {
        self.lock().last_applied
    }

    /// The freshest synchronous set this voter heard (see [`Persisted::sync_heard`]).
    pub fn sync_heard(&self) -> SyncView {
        self.lock().sync_heard.clone()
    }

    /// Records, durably, the synchronous set a primary announced.
    pub fn save_sync_heard(&self, sync: &SyncView) -> anyhow::Result<()> {
        self.save_with(|p| p.sync_heard = sync.clone())
    }

    /// The endorsements this voter gave (see [`Persisted::endorsed`]).
    pub fn endorsed(&self) -> (u64, BTreeSet<String>) {
        let p = self.lock();
        (p.endorsed_under, p.endorsed.clone())
    }

    /// Records, durably, the endorsements this voter gave under assignment `index`.
    pub fn save_endorsed(&self, index: u64, primaries: &BTreeSet<String>) -> anyhow::Result<()> {
        self.save_with(|p| {
            p.endorsed_under = index;
            p.endorsed = primaries.clone();
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Persisted> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, p: &Persisted, what: fn(AnyError) -> StorageIOError<u64>) -> Result<(), SErr> {
        let bytes = serde_json::to_vec(p).map_err(|e| SErr::from(what(AnyError::new(&e))))?;
        self.disk.save(&bytes).map_err(|e| SErr::from(what(AnyError::new(&e))))
    }
}

impl RaftLogReader<TypeConfig> for Store {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + openraft::OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        Ok(self.lock().log.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for Store {
    type LogReader = Store;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let last = self.last_log_id();
        Ok(LogState { last_purged_log_id: self.lock().last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), SErr> {
        let mut p = self.lock();
        p.vote = Some(*vote);
        self.save(&p, StorageIOError::write_vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, SErr> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), SErr> {
        let mut p = self.lock();
        p.committed = committed;
        self.save(&p, StorageIOError::write_logs)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, SErr> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let r = {
            let mut p = self.lock();
            for e in entries {
                p.log.insert(e.log_id.index, e);
            }
            self.save(&p, StorageIOError::write_logs)
        };
        callback.log_io_completed(r.clone().map_err(|e| std::io::Error::other(e.to_string())));
        r
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        let mut p = self.lock();
        p.log.retain(|i, _| *i < log_id.index);
        self.save(&p, StorageIOError::write_logs)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        let mut p = self.lock();
        p.log.retain(|i, _| *i > log_id.index);
        p.last_purged = Some(log_id);
        self.save(&p, StorageIOError::write_logs)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Store {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let mut p = self.lock();
        let image = MachineImage { last_applied: p.last_applied, membership: p.membership.clone(), assignment: p.assignment.clone() };
        let bytes = serde_json::to_vec(&image).map_err(|e| SErr::from(StorageIOError::read_state_machine(AnyError::new(&e))))?;
        let id = p.last_applied.map(|l| format!("{}-{}", l.leader_id.term, l.index)).unwrap_or_else(|| "0-0".into());
        let meta = SnapshotMeta { last_log_id: p.last_applied, last_membership: p.membership.clone(), snapshot_id: id };
        p.snapshot = Some((meta.clone(), bytes.clone()));
        self.save(&p, StorageIOError::write_state_machine)?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl RaftStateMachine<TypeConfig> for Store {
    type SnapshotBuilder = Store;

    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), SErr> {
        let p = self.lock();
        Ok((p.last_applied, p.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut out = Vec::new();
        let changed = {
            let mut p = self.lock();
            let before = p.assignment.clone();
            for e in entries {
                p.last_applied = Some(e.log_id);
                match e.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Membership(m) => p.membership = StoredMembership::new(Some(e.log_id), m),
                    EntryPayload::Normal(Command::Promote { node, epoch, old, fork, not_before_ms, prev }) => {
                        // Decided against the current assignment, and epochs only move forward:
                        // a stale proposal changes nothing.
                        if prev == p.assignment.index && (epoch > p.assignment.epoch || p.assignment.primary.is_none()) {
                            p.assignment = Assignment { primary: Some(node), epoch, old, fork, not_before_ms, index: e.log_id.index };
                        }
                    }
                }
                out.push(());
            }
            self.save(&p, StorageIOError::write_state_machine)?;
            (p.assignment != before).then(|| p.assignment.clone())
        };
        if let Some(a) = changed {
            self.assignment.send_replace(a);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta<u64, BasicNode>, snapshot: Box<Cursor<Vec<u8>>>) -> Result<(), SErr> {
        let bytes = snapshot.into_inner();
        let image: MachineImage =
            serde_json::from_slice(&bytes).map_err(|e| SErr::from(StorageIOError::read_state_machine(AnyError::new(&e))))?;
        let a = {
            let mut p = self.lock();
            p.last_applied = image.last_applied;
            p.membership = image.membership;
            p.assignment = image.assignment;
            p.snapshot = Some((meta.clone(), bytes));
            self.save(&p, StorageIOError::write_state_machine)?;
            p.assignment.clone()
        };
        self.assignment.send_replace(a);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let p = self.lock();
        Ok(p.snapshot.as_ref().map(|(meta, bytes)| Snapshot { meta: meta.clone(), snapshot: Box::new(Cursor::new(bytes.clone())) }))
    }
}

// ---- network ----

/// openraft's network: each RPC is a [`Request`] over the [`Transport`].
#[derive(Clone)]
pub struct Network {
    pub transport: Arc<dyn Transport>,
    /// Node id -> name.
    pub names: Arc<BTreeMap<u64, String>>,
}

pub struct Peer {
    transport: Arc<dyn Transport>,
    target: u64,
    name: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;
    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Peer {
        let name = self.names.get(&target).cloned().unwrap_or_else(|| format!("node-{target}"));
        Peer { transport: self.transport.clone(), target, name }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

impl Peer {
    /// One RPC: the request over the transport, the matching answer picked out of the reply.
    async fn rpc<T, E: std::error::Error>(
        &self,
        req: Request,
        option: RPCOption,
        pick: impl FnOnce(Reply) -> Result<Result<T, E>, Reply>,
    ) -> Result<T, RPCError<u64, BasicNode, E>> {
        let timeout = option.hard_ttl();
        let reply = match tokio::time::timeout(timeout, self.transport.call(&self.name, req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(RPCError::Unreachable(Unreachable::new(&Msg(e)))),
            Err(_) => {
                let e = format!("no answer from {} within {} ms", self.name, timeout.as_millis());
                return Err(RPCError::Unreachable(Unreachable::new(&Msg(e))));
            }
        };
        match pick(reply) {
            Ok(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(other) => Err(RPCError::Network(NetworkError::new(&Msg(format!("unexpected answer {other:?}"))))),
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.rpc(Request::Append(rpc), option, |r| if let Reply::Append(r) = r { Ok(r) } else { Err(r) }).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        self.rpc(Request::Snapshot(rpc), option, |r| if let Reply::Snapshot(r) = r { Ok(r) } else { Err(r) }).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.rpc(Request::Vote(rpc), option, |r| if let Reply::Vote(r) = r { Ok(r) } else { Err(r) }).await
    }
}

/// The raft configuration for a lease timing: elections well inside the lease, so that a
/// consensus leader is there to decide by the time the old primary's lease runs out.
pub fn config(timing: &super::lease::Timing) -> anyhow::Result<Arc<openraft::Config>> {
    let heartbeat = (timing.heartbeat_ms).max(20);
    let config = openraft::Config {
        cluster_name: "tandem".into(),
        heartbeat_interval: heartbeat,
        election_timeout_min: heartbeat * 3,
        election_timeout_max: heartbeat * 6,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(64),
        max_in_snapshot_log_to_keep: 16,
        ..Default::default()
    };
    Ok(Arc::new(config.validate().map_err(|e| anyhow::anyhow!("consensus configuration: {e}"))?))
}
