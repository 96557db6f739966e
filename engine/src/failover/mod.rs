//! Automatic failover: who is the warm primary, decided by a quorum.
//!
//! - [`raft`]: openraft (membership, election, the log of assignments). The data never goes
//!   through it: only "node X is the primary from epoch E, forked from Y at position F".
//! - [`lease`]: the pure lease and endorsement rules that stop a cut-off primary from taking
//!   writes before any other node can be promoted, whatever the consensus leader does.
//! - [`Coordinator`]: the loops around them. The primary renews its lease with every voter
//!   (the heartbeat); the consensus leader polls the voters, and when a quorum has not heard
//!   from the primary for lease + margin, collects their endorsements (each voter then refuses
//!   the old primary any lease) and commits the promotion of the best candidate; every node
//!   applies assignments as they commit ([`DataSide::assigned`]).
//!
//! Everything here takes time from an injected clock and talks through a [`Transport`], so the
//! same code runs over mutual TLS between real nodes and in the deterministic simulation
//! (`tests/integration/failover_sim.rs`).

pub mod lease;
pub mod link;
pub mod raft;
#[cfg(test)]
mod sim;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use self::lease::{Holder, Voter};
pub use self::lease::{PollReply, SyncView, Timing};
pub use self::raft::{Assignment, Command, Disk, FileDisk, MemDisk};
use self::raft::{Network, Raft, Store, TypeConfig};

/// A boxed future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A request between coordinators.
#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum Request {
    Vote(VoteRequest<u64>),
    Append(AppendEntriesRequest<TypeConfig>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// The primary renews its lease (the heartbeat), announcing its synchronous set.
    Lease {
        from: String,
        sync: SyncView,
    },
    /// The consensus leader asks what a voter knows of `primary`.
    Poll {
        primary: Option<String>,
    },
    /// The consensus leader asks a voter to endorse removing `primary` (`forced`: a manual
    /// promotion, which waits out the lease instead), the primary of the leader's assignment
    /// `index`: the endorsement holds until the voter applies a later assignment (one it had
    /// not applied yet when asked does not end it).
    Endorse {
        primary: String,
        forced: bool,
        #[serde(default)]
        index: u64,
    },
    /// A node asks the consensus leader to promote it (`tandem promote`).
    Promote {
        node: String,
    },
}

/// The answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// `store`: the voter's store id (a data node's; empty for a witness), which the primary
    /// records with its synchronous set.
    Lease {
        granted: bool,
        reason: String,
        #[serde(default)]
        store: String,
    },
    Poll(PollReply),
    Endorse {
        granted: bool,
    },
    Promote(Result<Assignment, String>),
    /// Not now (a rejoining voter and a leader it has not admitted): the caller retries.
    NotNow(String),
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    pub fn decode(b: &[u8]) -> Result<Request, String> {
        serde_json::from_slice(b).map_err(|e| format!("undecodable failover request: {e}"))
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    pub fn decode(b: &[u8]) -> Result<Reply, String> {
        serde_json::from_slice(b).map_err(|e| format!("undecodable failover reply: {e}"))
    }
}

/// How coordinators reach each other.
pub trait Transport: Send + Sync + 'static {
    fn call(&self, to: &str, req: Request) -> BoxFuture<'static, Result<Reply, String>>;
}

/// What the coordinator needs of the node's data side (nothing, on a witness).
pub trait DataSide: Send + Sync + 'static {
    /// Whether this node holds data (a witness does not).
    fn holds_data(&self) -> bool;
    /// This node's position in `primary`'s feed.
    fn applied_from(&self, primary: &str) -> u64;
    fn epoch(&self) -> u64;
    /// The primary of the node's durable role (the first assignment comes from these).
    fn believes(&self) -> Option<String>;
    /// The synchronous set, as the primary announces it.
    fn sync_view(&self) -> SyncView;
    /// The id of this node's store (empty without data).
    fn store_id(&self) -> String;
    /// Acts on a committed assignment: take writes, or follow another primary.
    fn assigned(&self, a: Assignment) -> BoxFuture<'static, ()>;
}

/// A witness's data side: no data.
pub struct NoData;

impl DataSide for NoData {
    fn holds_data(&self) -> bool {
        false
    }
    fn applied_from(&self, _: &str) -> u64 {
        0
    }
    fn epoch(&self) -> u64 {
        0
    }
    fn believes(&self) -> Option<String> {
        None
    }
    fn sync_view(&self) -> SyncView {
        SyncView::default()
    }
    fn store_id(&self) -> String {
        String::new()
    }
    fn assigned(&self, _: Assignment) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// A node's monotonic clock, in ms (simulated, with drift, in the simulation).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The real clock: ms since the first call, monotonic.
pub fn real_clock() -> Clock {
    let start = tokio::time::Instant::now();
    Arc::new(move || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX))
}

/// The file that makes a node's next start a rejoin (see [`Settings::rejoin`]), in `data_dir`
/// as `tandem init --replaces` leaves it.
pub fn rejoin_marker(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("replication").join("rejoin")
}

/// Who takes part.
#[derive(Clone, Debug)]
pub struct Settings {
    pub us: String,
    /// Every voter's name, this node's included (data nodes and the witness).
    pub voters: Vec<String>,
    pub timing: Timing,
    /// This voter replaces a lost one of the same name (`tandem init --replaces`): it neither
    /// votes nor endorses until it has caught up with a leader.
    pub rejoin: bool,
}

impl Settings {
    fn ids(&self) -> BTreeMap<String, u64> {
        let mut v = self.voters.clone();
        v.sort();
        v.dedup();
        v.into_iter().zip(1u64..).collect()
    }
}

/// What `tandem status` shows of failover.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FailoverStatus {
    pub enabled: bool,
    pub voters: Vec<String>,
    /// The consensus leader (it decides promotions), if known.
    pub leader: Option<String>,
    pub term: u64,
    pub assignment: Assignment,
    /// This node holds a primary's lease now.
    pub lease: bool,
    pub lease_ms: u64,
    pub heartbeat_ms: u64,
    /// The last decision or problem of this node's coordinator.
    pub last_event: String,
    /// A replacement voter that has not yet caught up: it neither votes nor endorses.
    pub rejoining: bool,
    /// Started with no consensus state, it waits for every other voter's first answer (see
    /// `Coordinator::probe_loop`): it neither votes nor endorses yet.
    #[serde(default)]
    pub probing: bool,
}

#[derive(Default)]
struct State {
    voter: Option<Voter>,
    holder: Option<Holder>,
    /// The holder is for this assignment index.
    holding_for: u64,
    sync_heard: SyncView,
    inflight: BTreeSet<String>,
    last_reinstate: Option<u64>,
    last_event: String,
    /// While rejoining: the leader's commit index to reach (from the first append naming one).
    rejoin_target: Option<u64>,
    /// Each voter's store id, from its last answer to a lease renewal.
    stores: BTreeMap<String, String>,
    /// While rejoining: the leader (its id) and term the other voters agreed on.
    admitted: Option<(u64, u64)>,
    /// Started with no consensus state and no rejoin marker: until the other voters tell
    /// whether the cluster has a history (see [`Coordinator::probe_loop`]), it abstains as a
    /// rejoining voter does.
    probing: bool,
}

/// A node's failover coordinator.
pub struct Coordinator {
    settings: Settings,
    ids: BTreeMap<String, u64>,
    raft: Raft,
    /// The consensus state (also the raft's): the voter saves the synchronous set it heard.
    store: Store,
    transport: Arc<dyn Transport>,
    data: Arc<dyn DataSide>,
    clock: Clock,
    state: Mutex<State>,
    assignment: watch::Receiver<Assignment>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Initialises the consensus with every voter as a member. Every voter does it with the same
/// membership: safe, and whoever comes first leads.
async fn initialize(raft: &Raft, ids: &BTreeMap<String, u64>) {
    let members: BTreeMap<u64, BasicNode> = ids.values().map(|i| (*i, BasicNode::default())).collect();
    if let Err(e) = raft.initialize(members).await {
        tracing::debug!("consensus already initialised elsewhere: {e}");
    }
}

impl Coordinator {
    /// Starts the coordinator: opens the consensus state on `disk`, joins (or forms) the
    /// cluster of `settings.voters`, and spawns its loops on the current runtime.
    pub async fn start(
        settings: Settings,
        disk: Arc<dyn Disk>,
        transport: Arc<dyn Transport>,
        data: Arc<dyn DataSide>,
        clock: Clock,
    ) -> anyhow::Result<Arc<Coordinator>> {
        settings.timing.check().map_err(|e| anyhow::anyhow!("failover timing: {e}"))?;
        let ids = settings.ids();
        let Some(&id) = ids.get(&settings.us) else {
            anyhow::bail!("node {} is not one of the voters {:?}", settings.us, settings.voters);
        };
        anyhow::ensure!(ids.len() >= 3, "automatic failover needs three voters (two data nodes and a witness at least)");
        let store = Store::open(disk)?;
        let fresh = store.is_fresh();
        if settings.rejoin && !store.rejoining() {
            store.set_rejoining(true)?;
        }
        let rejoining = store.rejoining();
        let probing = fresh && !rejoining;
        let assignment = store.assignment();
        let names: BTreeMap<u64, String> = ids.iter().map(|(n, i)| (*i, n.clone())).collect();
        let network = Network { transport: transport.clone(), names: Arc::new(names) };
        let raft = Raft::new(id, raft::config(&settings.timing)?, network, store.clone(), store.clone())
            .await
            .map_err(|e| anyhow::anyhow!("starting consensus: {e}"))?;
        if rejoining || probing {
            // No campaign (initialising would start one): the membership and the log come from
            // the leader (or, probing, once the others said the cluster has no history).
            raft.runtime_config().elect(false);
        } else if !raft.is_initialized().await.map_err(|e| anyhow::anyhow!("starting consensus: {e}"))? {
            initialize(&raft, &ids).await;
        }
        let (stop, _) = watch::channel(false);
        let now = clock();
        let sync_heard = store.sync_heard();
        let mut voter = Voter::new(now);
        let (endorsed_under, endorsed) = store.endorsed();
        voter.restore(endorsed_under, endorsed);
        let c = Arc::new(Coordinator {
            settings,
            ids,
            raft,
            store,
            transport,
            data,
            clock,
            state: Mutex::new(State { voter: Some(voter), sync_heard, probing, ..Default::default() }),
            assignment,
            stop,
            tasks: Mutex::new(Vec::new()),
        });
        if rejoining {
            c.event("rejoining: this voter replaces a lost one; it neither votes nor endorses until it has caught up with a leader".into());
        }
        if probing {
            c.event(
                "no consensus state yet: asking every other voter whether the cluster has a history (a new cluster forms once all have answered)"
                    .into(),
            );
        }
        let mut tasks =
            vec![tokio::spawn(c.clone().apply_loop()), tokio::spawn(c.clone().lease_loop()), tokio::spawn(c.clone().decide_loop())];
        if rejoining {
            tasks.push(tokio::spawn(c.clone().admit_loop()));
        }
        if probing {
            tasks.push(tokio::spawn(c.clone().probe_loop()));
        }
        c.tasks.lock().unwrap_or_else(|e| e.into_inner()).extend(tasks);
        Ok(c)
    }

    /// Stops the loops and consensus (a crash, in the simulation: nothing more is sent).
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        for t in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
        let _ = self.raft.shutdown().await;
    }

    /// Asks the coordinator to stop (from any thread); [`Coordinator::stopped`] does it.
    pub fn request_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until a stop is requested, then stops (the failover thread runs this).
    pub async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                break;
            }
        }
        self.stop().await;
    }

    /// Whether `name` is a voter of this cluster.
    pub fn is_voter(&self, name: &str) -> bool {
        self.ids.contains_key(name)
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn event(&self, e: String) {
        tracing::info!(node = %self.settings.us, "failover: {e}");
        self.state().last_event = e;
    }

    /// The committed assignment.
    pub fn assignment(&self) -> Assignment {
        self.assignment.borrow().clone()
    }

    /// Changes of the assignment.
    pub fn watch(&self) -> watch::Receiver<Assignment> {
        self.assignment.clone()
    }

    /// Whether this node may take warm writes now: the consensus state names it and a quorum
    /// granted it a lease that still holds.
    pub fn holds_lease(&self) -> bool {
        let a = self.assignment.borrow();
        if a.primary.as_deref() != Some(self.settings.us.as_str()) {
            return false;
        }
        let now = self.now();
        let s = self.state();
        s.holding_for == a.index && s.holder.as_ref().is_some_and(|h| h.valid(now, self.ids.len(), &self.settings.timing))
    }

    /// The store id `voter` last answered a lease renewal with (this primary asks every voter
    /// each heartbeat).
    pub fn store_of(&self, voter: &str) -> Option<String> {
        self.state().stores.get(voter).cloned()
    }

    /// The version of the synchronous set this node's own voter holds: the newest this node
    /// announced as primary (its own voter hears each announcement before the others do).
    pub fn heard_sync_version(&self) -> u64 {
        self.state().sync_heard.version
    }

    /// The newest synchronous-set version a quorum has seen from this primary.
    pub fn confirmed_sync_version(&self) -> u64 {
        self.state().holder.as_ref().map_or(0, |h| h.confirmed_sync_version(self.ids.len()))
    }

    pub fn timing(&self) -> Timing {
        self.settings.timing
    }

    pub fn status(&self) -> FailoverStatus {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader.and_then(|l| self.name_of(l));
        let lease = self.holds_lease();
        // One lock, released before the rest: a guard taken inside the literal below would
        // live to its end.
        let (last_event, probing) = {
            let s = self.state();
            (s.last_event.clone(), s.probing)
        };
        FailoverStatus {
            enabled: true,
            voters: self.ids.keys().cloned().collect(),
            leader,
            term: m.current_term,
            assignment: self.assignment(),
            lease,
            lease_ms: self.settings.timing.lease_ms,
            heartbeat_ms: self.settings.timing.heartbeat_ms,
            last_event,
            rejoining: self.store.rejoining(),
            probing,
        }
    }

    fn name_of(&self, id: u64) -> Option<String> {
        self.ids.iter().find(|(_, i)| **i == id).map(|(n, _)| n.clone())
    }

    fn is_leader(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.current_leader == self.ids.get(&self.settings.us).copied() && m.state == openraft::ServerState::Leader
    }

    /// Answers a request of another coordinator.
    pub async fn handle(&self, req: Request) -> Reply {
        match req {
            Request::Vote(_) if self.abstains() => {
                // It may lack entries the lost voter helped commit: its vote could elect a
                // leader without them.
                let vote = self.raft.metrics().borrow().vote;
                Reply::Vote(Ok(VoteResponse::new(vote, self.store.last_log_id(), false)))
            }
            Request::Vote(r) => Reply::Vote(self.raft.vote(r).await),
            Request::Append(r) if self.abstains() && !self.admits(&r.vote) => self.not_admitted(),
            Request::Append(r) => {
                let commit = r.leader_commit.map(|c| c.index);
                let out = self.raft.append_entries(r).await;
                if out.as_ref().is_ok_and(AppendEntriesResponse::is_success) {
                    self.note_leader_commit(commit);
                }
                Reply::Append(out)
            }
            Request::Snapshot(r) if self.abstains() && !self.admits(&r.vote) => self.not_admitted(),
            Request::Snapshot(r) => Reply::Snapshot(self.raft.install_snapshot(r).await),
            Request::Promote { node } => Reply::Promote(self.promote_as_leader(&node).await),
            other => self.answer_as_voter(other),
        }
    }

    /// While rejoining: whether an append under `vote` comes from the leader the other voters
    /// agreed on (see [`Coordinator::admit_loop`]), in its term or a later one.
    fn admits(&self, vote: &openraft::Vote<u64>) -> bool {
        let leader = vote.leader_id();
        self.state().admitted.is_some_and(|(id, term)| leader.term > term || (leader.term == term && leader.voted_for() == Some(id)))
    }

    /// Rejoining, or still probing: it neither votes, endorses nor grants leases.
    pub fn abstains(&self) -> bool {
        self.store.rejoining() || self.state().probing
    }

    /// One round of polls of the other voters (no primary named): the answers that came.
    async fn poll_others(&self, timeout: Duration) -> Vec<PollReply> {
        self.ask_all(Some(&self.settings.us), || Request::Poll { primary: None }, timeout)
            .await
            .into_iter()
            .filter_map(|(_, r)| if let Reply::Poll(p) = r { Some(p) } else { None })
            .collect()
    }

    /// Started with no consensus state and no rejoin marker: a new cluster's first start, or a
    /// server replaced without `tandem init --replaces`. Polls the other voters each heartbeat:
    /// once one of them answers with a consensus history (a leader was elected once, or it is
    /// rejoining), this voter rejoins, as a marked replacement does; once every other voter
    /// answered in one round, none with a history, nothing was ever committed that this voter
    /// could have helped decide, and it initialises. Until then it waits: a majority without a
    /// history is not enough (the lost voter may have elected, with the one voter not
    /// answering, a leader that holds committed entries), so a new cluster forms once every
    /// voter has started.
    async fn probe_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let period = Duration::from_millis(self.settings.timing.heartbeat_ms);
        let timeout = Duration::from_millis(self.settings.timing.heartbeat_ms * 2);
        let others = self.ids.len() - 1;
        loop {
            let polls = self.poll_others(timeout).await;
            if let Some(p) = polls.iter().find(|p| p.history) {
                if let Err(e) = self.store.set_rejoining(true) {
                    tracing::warn!(node = %self.settings.us, "failover: {e:#}");
                } else {
                    self.state().probing = false;
                    self.event(format!(
                        "rejoining: this voter has no consensus state but {} has a history: a replaced server (started without `tandem init --replaces`); it neither votes nor endorses until it has caught up with a leader",
                        p.node
                    ));
                    let admit = tokio::spawn(self.clone().admit_loop());
                    self.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(admit);
                    return;
                }
            } else if polls.len() == others {
                initialize(&self.raft, &self.ids).await;
                self.state().probing = false;
                self.raft.runtime_config().elect(true);
                self.event("a new cluster: every other voter answered without a history".into());
                return;
            }
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                _ = tokio::time::sleep(period) => {}
            }
        }
    }

    fn not_admitted(&self) -> Reply {
        Reply::NotNow(format!("{} is rejoining and has not admitted this leader yet", self.settings.us))
    }

    /// While rejoining: polls the other voters each heartbeat until every one of them answers
    /// and those that do not abstain themselves (rejoining or probing too: they follow nobody
    /// yet), a majority of all the voters at least, follow one leader in one term; that leader
    /// (or any of a later term) is then the one this voter takes the log from. A stale leader,
    /// cut off in an older term, is never taken at its word: the replacement remembers no term
    /// of its own, and a newer term needs the votes of a majority, which would not name the
    /// stale one.
    async fn admit_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let period = Duration::from_millis(self.settings.timing.heartbeat_ms);
        let timeout = Duration::from_millis(self.settings.timing.heartbeat_ms * 2);
        while self.store.rejoining() && self.state().admitted.is_none() {
            let others = self.ids.len() - 1;
            let polls = self.poll_others(timeout).await;
            let voting: Vec<&PollReply> = polls.iter().filter(|p| !p.abstaining).collect();
            let agreed = voting.first().and_then(|p| p.leader.clone().map(|l| (l, p.term)));
            if polls.len() == others
                && voting.len() > self.ids.len() / 2
                && let Some((leader, term)) = agreed
                && voting.iter().all(|p| p.leader.as_deref() == Some(leader.as_str()) && p.term == term)
                && let Some(&id) = self.ids.get(&leader)
            {
                self.state().admitted = Some((id, term));
                self.event(format!("rejoining: the other voters follow {leader} in term {term}; taking the log from it"));
                return;
            }
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                _ = tokio::time::sleep(period) => {}
            }
        }
    }

    /// While rejoining: the first accepted append that names the leader's commit index sets
    /// the target; once this voter has applied that far, it holds every entry committed before
    /// it came back (a leader holds them all), and votes and endorses as any voter.
    fn note_leader_commit(&self, commit: Option<u64>) {
        if !self.store.rejoining() {
            return;
        }
        let target = {
            let mut s = self.state();
            if s.rejoin_target.is_none() {
                s.rejoin_target = commit;
            }
            s.rejoin_target
        };
        let Some(target) = target else { return };
        if self.store.last_applied().is_none_or(|l| l.index < target) {
            return;
        }
        match self.store.set_rejoining(false) {
            Ok(()) => {
                self.raft.runtime_config().elect(true);
                self.event(format!("rejoined: caught up with the consensus log (index {target}); votes and endorses again"));
            }
            Err(e) => tracing::warn!(node = %self.settings.us, "failover: {e:#}"),
        }
    }

    /// The voter's answers (lease, poll, endorsement): no waiting.
    fn answer_as_voter(&self, req: Request) -> Reply {
        match req {
            Request::Lease { from, sync } => {
                let store = self.data.store_id();
                if self.abstains() {
                    // The lost voter's endorsements are gone with it: a promotion decided on them
                    // may still commit, and a lease granted meanwhile could let the old primary
                    // acknowledge writes the promoted node never gets. No promise until caught up.
                    let reason = "this voter replaces a lost one and grants no lease until it has caught up with a leader".to_owned();
                    return Reply::Lease { granted: false, reason, store };
                }
                let now = self.now();
                let timing = self.settings.timing;
                let assigned = self.assignment.borrow().primary.clone();
                let mut s = self.state();
                let r = s.voter.as_mut().map_or(Ok(()), |v| v.on_lease(&from, assigned.as_deref(), now, &timing));
                match r {
                    Ok(()) if sync.version >= s.sync_heard.version && sync != s.sync_heard => {
                        // Saved before the grant: the lease lets the primary acknowledge writes
                        // with this set, and a voter that restarts must still restrict
                        // promotions to it (a default view would restrict nothing).
                        match self.store.save_sync_heard(&sync) {
                            Ok(()) => {
                                s.sync_heard = sync;
                                Reply::Lease { granted: true, reason: String::new(), store }
                            }
                            Err(e) => Reply::Lease { granted: false, reason: format!("cannot record the synchronous set: {e:#}"), store },
                        }
                    }
                    Ok(()) => Reply::Lease { granted: true, reason: String::new(), store },
                    Err(e) => Reply::Lease { granted: false, reason: e.to_string(), store },
                }
            }
            Request::Poll { primary } => Reply::Poll(self.poll_reply(primary.as_deref())),
            Request::Endorse { primary, forced, index } => {
                let now = self.now();
                let timing = self.settings.timing;
                let rejoining = self.abstains();
                let mut s = self.state();
                let Some(v) = s.voter.as_mut() else { return Reply::Endorse { granted: false } };
                if rejoining || !v.endorse(&primary, index, now, &timing, forced) {
                    return Reply::Endorse { granted: false };
                }
                // Saved before the answer: a promotion decided on it may commit long after (a
                // later leader's first entry commits it), and a restarted voter that forgot it
                // would grant the old primary a lease meanwhile, under which it could
                // acknowledge writes the promoted node never gets.
                let (index, endorsed) = v.endorsements();
                match self.store.save_endorsed(index, &endorsed) {
                    Ok(()) => Reply::Endorse { granted: true },
                    Err(e) => {
                        tracing::warn!(node = %self.settings.us, "failover: cannot record an endorsement: {e:#}");
                        Reply::Endorse { granted: false }
                    }
                }
            }
            other => Reply::Promote(Err(format!("not a voter's request: {other:?}"))),
        }
    }

    fn poll_reply(&self, primary: Option<&str>) -> PollReply {
        let now = self.now();
        let timing = self.settings.timing;
        // The state lock is never held while calling the data side (it takes locks of its own,
        // and calls back into `holds_lease`).
        let abstaining = self.abstains();
        let (silent, may, revoked, sync) = {
            let s = self.state();
            let (silent, may, revoked) = match (primary, s.voter.as_ref()) {
                (Some(p), Some(v)) => (v.silent_ms(p, now), !abstaining && v.may_endorse(p, now, &timing), v.revoked(p)),
                _ => (0, false, false),
            };
            (silent, may, revoked, s.sync_heard.clone())
        };
        let raft = self.raft.metrics().borrow().clone();
        PollReply {
            node: self.settings.us.clone(),
            data: self.data.holds_data(),
            silent_ms: silent,
            may_endorse: may,
            revoked,
            applied: primary.map_or(0, |p| self.data.applied_from(p)),
            epoch: self.data.epoch(),
            sync,
            believes: self.data.believes(),
            store: self.data.store_id(),
            leader: raft.current_leader.and_then(|l| self.name_of(l)),
            term: raft.current_term,
            // A rejoining voter knows the cluster has one, though its log may be empty yet.
            history: raft.last_log_index.is_some_and(|i| i >= 1) || self.store.rejoining(),
            abstaining,
        }
    }

    /// Applies each committed assignment: the voter forgets its endorsements, a new primary
    /// starts holding a lease, and the data side follows.
    async fn apply_loop(self: Arc<Self>) {
        let mut rx = self.assignment.clone();
        let mut stop = self.stop.subscribe();
        let mut seen = 0u64;
        loop {
            let a = rx.borrow_and_update().clone();
            if a.index != seen && a.primary.is_some() {
                seen = a.index;
                {
                    let now = self.now();
                    let mut s = self.state();
                    if let (Some(v), Some(p)) = (s.voter.as_mut(), a.primary.as_deref()) {
                        v.on_assignment(p, a.index, now);
                    }
                    if a.primary.as_deref() == Some(self.settings.us.as_str()) {
                        s.holder = Some(Holder::new(now.saturating_add(a.not_before_ms)));
                        s.holding_for = a.index;
                    } else {
                        s.holder = None;
                    }
                }
                self.event(format!("assignment {}: {:?} is the primary in epoch {}", a.index, a.primary, a.epoch));
                self.data.assigned(a).await;
            }
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                r = rx.changed() => if r.is_err() { return },
            }
        }
    }

    /// The primary renews its lease with every other voter each heartbeat.
    async fn lease_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let period = Duration::from_millis(self.settings.timing.heartbeat_ms);
        loop {
            let a = self.assignment();
            if a.primary.as_deref() == Some(self.settings.us.as_str()) {
                let sync = self.data.sync_view();
                // Its own voter grants it under the same rules as the others.
                let sent = self.now();
                let version = sync.version;
                let own = self.answer_as_voter(Request::Lease { from: self.settings.us.clone(), sync: sync.clone() });
                if let Reply::Lease { granted: true, .. } = own {
                    let mut s = self.state();
                    if s.holding_for == a.index
                        && let Some(h) = s.holder.as_mut()
                    {
                        h.granted(&self.settings.us, sent, version);
                    }
                }
                for voter in self.ids.keys().filter(|v| **v != self.settings.us) {
                    if !self.state().inflight.insert(voter.clone()) {
                        continue; // the previous request is still out
                    }
                    let me = self.clone();
                    let voter = voter.clone();
                    let sync = sync.clone();
                    let index = a.index;
                    tokio::spawn(async move {
                        let sent = me.now();
                        let version = sync.version;
                        let timeout = Duration::from_millis(me.settings.timing.hold_ms());
                        let req = Request::Lease { from: me.settings.us.clone(), sync };
                        let r = tokio::time::timeout(timeout, me.transport.call(&voter, req)).await;
                        let mut s = me.state();
                        s.inflight.remove(&voter);
                        if let Ok(Ok(Reply::Lease { store, .. })) = &r
                            && !store.is_empty()
                        {
                            s.stores.insert(voter.clone(), store.clone());
                        }
                        if let Ok(Ok(Reply::Lease { granted: true, .. })) = r
                            && s.holding_for == index
                            && let Some(h) = s.holder.as_mut()
                        {
                            h.granted(&voter, sent, version);
                        }
                    });
                }
            }
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                _ = tokio::time::sleep(period) => {}
            }
        }
    }

    /// Calls every voter but `skip` (this node answers locally), in parallel, each within
    /// `timeout`; returns the answers that came.
    async fn ask_all(&self, skip: Option<&str>, req: impl Fn() -> Request, timeout: Duration) -> Vec<(String, Reply)> {
        let mut set = tokio::task::JoinSet::new();
        let mut out = Vec::new();
        for v in self.ids.keys().filter(|v| Some(v.as_str()) != skip) {
            if *v == self.settings.us {
                out.push((v.clone(), self.answer_as_voter(req())));
                continue;
            }
            let t = self.transport.clone();
            let v = v.clone();
            let r = req();
            set.spawn(async move { (v.clone(), tokio::time::timeout(timeout, t.call(&v, r)).await) });
        }
        let mut late = Vec::new();
        while let Some(j) = set.join_next().await {
            if let Ok((v, Ok(Ok(r)))) = j {
                late.push((v, r));
            }
        }
        // A fixed order, whatever order the answers came in (the simulation replays).
        late.sort_by(|a, b| a.0.cmp(&b.0));
        out.extend(late);
        out
    }

    /// The consensus leader's decisions, each heartbeat.
    async fn decide_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let period = Duration::from_millis(self.settings.timing.heartbeat_ms);
        loop {
            if self.is_leader()
                && let Err(e) = self.decide().await
            {
                self.event(e);
            }
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                _ = tokio::time::sleep(period) => {}
            }
        }
    }

    async fn propose(&self, cmd: Command) -> Result<Assignment, String> {
        let what = cmd.to_string();
        self.raft.client_write(cmd).await.map_err(|e| format!("committing \"{what}\": {e}"))?;
        self.event(format!("committed: {what}"));
        Ok(self.assignment())
    }

    async fn decide(&self) -> Result<(), String> {
        let a = self.assignment();
        let timeout = Duration::from_millis(self.settings.timing.heartbeat_ms * 2);
        let quorum = lease::quorum(self.ids.len());
        let Some(primary) = a.primary.clone() else {
            // The first assignment: the primary the nodes' durable roles name, newest epoch first.
            let replies = self.ask_all(None, || Request::Poll { primary: None }, timeout).await;
            let polls: Vec<PollReply> =
                replies.into_iter().filter_map(|(_, r)| if let Reply::Poll(p) = r { Some(p) } else { None }).collect();
            if polls.len() < quorum {
                return Err(format!("no first assignment yet: {} of {} voters answered", polls.len(), self.ids.len()));
            }
            let Some(best) = polls.iter().filter(|p| p.believes.is_some()).max_by_key(|p| p.epoch) else {
                return Err("no first assignment yet: no voter names a primary".into());
            };
            let node = best.believes.clone().unwrap_or_default();
            // A new epoch, past every one a voter has seen: epochs are the consensus's alone
            // (a node with failover on never begins one by itself).
            let epoch = polls.iter().map(|p| p.epoch).max().unwrap_or(0) + 1;
            self.propose(Command::Promote { node, epoch, old: None, fork: 0, not_before_ms: 0, prev: a.index }).await?;
            return Ok(());
        };
        if primary == self.settings.us {
            // The primary leads: it is alive. If voters endorsed its removal for a promotion that
            // never committed (its leader lost its term), they grant it nothing until a new
            // assignment: reinstate it.
            if self.holds_lease() {
                return Ok(());
            }
            let replies = self.ask_all(Some(&primary), || Request::Poll { primary: Some(primary.clone()) }, timeout).await;
            let polls: Vec<PollReply> =
                replies.into_iter().filter_map(|(_, r)| if let Reply::Poll(p) = r { Some(p) } else { None }).collect();
            if polls.iter().any(|p| p.revoked) {
                self.reinstate(&a, &primary, &polls).await?;
            }
            return Ok(());
        }
        let replies = self.ask_all(Some(&primary), || Request::Poll { primary: Some(primary.clone()) }, timeout).await;
        let polls: Vec<PollReply> = replies.into_iter().filter_map(|(_, r)| if let Reply::Poll(p) = r { Some(p) } else { None }).collect();
        let endorsing: Vec<PollReply> = polls.iter().filter(|p| p.may_endorse).cloned().collect();
        if endorsing.len() >= quorum {
            let Some((candidate, fork)) = lease::pick_candidate(&primary, &polls) else {
                return Err(format!(
                    "{primary} is silent to a quorum, but no node can take over (none is in its synchronous set and complete)"
                ));
            };
            let replies = self
                .ask_all(Some(&primary), || Request::Endorse { primary: primary.clone(), forced: false, index: a.index }, timeout)
                .await;
            let granted = replies.iter().filter(|(_, r)| matches!(r, Reply::Endorse { granted: true })).count();
            if granted < quorum {
                return Err(format!("{granted} of {quorum} endorsements to replace {primary}"));
            }
            let epoch = polls.iter().map(|p| p.epoch).max().unwrap_or(0).max(a.epoch) + 1;
            self.propose(Command::Promote { node: candidate, epoch, old: Some(primary), fork, not_before_ms: 0, prev: a.index }).await?;
            return Ok(());
        }
        // Alive after all, but some voter endorsed its removal: reinstate it in a new epoch so it
        // can hold a lease again (at most once per lease).
        if polls.iter().any(|p| p.revoked) && polls.iter().any(|p| !p.may_endorse) {
            self.reinstate(&a, &primary, &polls).await?;
        }
        Ok(())
    }

    /// Assigns `primary` again, in a new epoch (at most once per lease): the voters forget the
    /// endorsements they gave against it. Safe: no other node is named, and the assignment
    /// applies only if `a` is still the current one.
    async fn reinstate(&self, a: &Assignment, primary: &str, polls: &[PollReply]) -> Result<(), String> {
        let now = self.now();
        let recent = self.state().last_reinstate.is_some_and(|t| now.saturating_sub(t) < self.settings.timing.refuse_ms());
        if recent {
            return Ok(());
        }
        self.state().last_reinstate = Some(now);
        let epoch = polls.iter().map(|p| p.epoch).max().unwrap_or(0).max(a.epoch).max(self.data.epoch()) + 1;
        let cmd =
            Command::Promote { node: primary.to_owned(), epoch, old: Some(primary.to_owned()), fork: 0, not_before_ms: 0, prev: a.index };
        self.propose(cmd).await.map(|_| ())
    }

    /// A manual promotion of `node`, run by the consensus leader: the voters revoke the old
    /// primary's lease, and the new primary waits it out before taking writes.
    async fn promote_as_leader(&self, node: &str) -> Result<Assignment, String> {
        if !self.is_leader() {
            return Err("this node is not the consensus leader".into());
        }
        let a = self.assignment();
        if a.primary.as_deref() == Some(node) {
            return Ok(a);
        }
        let timeout = Duration::from_millis(self.settings.timing.heartbeat_ms * 4);
        let quorum = lease::quorum(self.ids.len());
        let old = a.primary.clone();
        let polls: Vec<PollReply> = self
            .ask_all(old.as_deref(), || Request::Poll { primary: old.clone() }, timeout)
            .await
            .into_iter()
            .filter_map(|(_, r)| if let Reply::Poll(p) = r { Some(p) } else { None })
            .collect();
        let Some(target) = polls.iter().find(|p| p.node == node && p.data) else {
            return Err(format!("{node} did not answer, or holds no data"));
        };
        let fork = target.applied;
        if let Some(p) = &old {
            let replies = self.ask_all(Some(p), || Request::Endorse { primary: p.clone(), forced: true, index: a.index }, timeout).await;
            let granted = replies.iter().filter(|(_, r)| matches!(r, Reply::Endorse { granted: true })).count();
            if granted < quorum {
                return Err(format!("only {granted} of the {quorum} voters needed revoked {p}'s lease"));
            }
        }
        let epoch = polls.iter().map(|p| p.epoch).max().unwrap_or(0).max(a.epoch) + 1;
        let wait = if old.is_some() { self.settings.timing.refuse_ms() } else { 0 };
        self.propose(Command::Promote { node: node.to_owned(), epoch, old, fork, not_before_ms: wait, prev: a.index }).await
    }

    /// `tandem promote` with failover on: asks the consensus leader to promote this node.
    pub async fn request_promotion(&self) -> Result<Assignment, String> {
        let us = self.settings.us.clone();
        if self.is_leader() {
            return self.promote_as_leader(&us).await;
        }
        let leader = self.raft.metrics().borrow().current_leader.and_then(|l| self.name_of(l));
        let Some(leader) = leader else {
            return Err("no consensus leader now (is a quorum of voters up?)".into());
        };
        match tokio::time::timeout(Duration::from_secs(10), self.transport.call(&leader, Request::Promote { node: us })).await {
            Ok(Ok(Reply::Promote(r))) => r,
            Ok(Ok(other)) => Err(format!("unexpected answer {other:?}")),
            Ok(Err(e)) => Err(format!("asking the consensus leader {leader}: {e}")),
            Err(_) => Err(format!("the consensus leader {leader} did not answer within 10 s")),
        }
    }
}

/// The lease timing a configuration asks for: the profile's defaults (geo when any peer is on a
/// geo link), with the `cluster` overrides.
pub fn timing_of(raw: &crate::node::config::ConfigFile) -> Timing {
    let geo = raw.peers.iter().any(|p| p.profile == crate::node::config::Profile::Geo);
    let base = if geo { Timing::GEO } else { Timing::LOCAL };
    let lease_ms = raw.cluster.lease_ms.unwrap_or(base.lease_ms);
    Timing {
        lease_ms,
        drift_permille: raw.cluster.drift_permille.unwrap_or(base.drift_permille),
        heartbeat_ms: raw.cluster.heartbeat_ms.unwrap_or(if raw.cluster.lease_ms.is_some() {
            (lease_ms / 10).max(1)
        } else {
            base.heartbeat_ms
        }),
    }
}

/// The voters of a node's cluster (itself, its peers, the witness), or why automatic failover
/// is off.
pub fn voters_of(raw: &crate::node::config::ConfigFile) -> Result<Vec<String>, String> {
    let mut voters: Vec<String> = std::iter::once(raw.node.name.clone())
        .chain(raw.peers.iter().map(|p| p.name.clone()))
        .chain(raw.witness.iter().map(|w| w.name.clone()))
        .collect();
    voters.sort();
    voters.dedup();
    if raw.cluster.failover == Some(false) {
        return Err("automatic failover is off (cluster.failover = false); use `tandem promote`".into());
    }
    if voters.len() < 3 {
        let data = 1 + raw.peers.len();
        let mut s = "automatic failover is off: it needs three voters".to_owned();
        if data == 2 && raw.witness.is_none() {
            s.push_str("; a two-node cluster needs a witness (`tandem init --role witness`, then `[witness]` in each node's configuration) to fail over by itself");
        }
        s.push_str("; use `tandem promote`");
        return Err(s);
    }
    Ok(voters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> crate::node::config::ConfigFile {
        toml::from_str(text).expect("config")
    }

    #[test]
    fn failover_needs_three_voters_and_says_why_not() {
        let base =
            "[node]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\napi = \"127.0.0.1:0\"\n[[peer]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\n";
        let why = voters_of(&raw(base)).expect_err("two nodes");
        assert!(why.contains("witness") && why.contains("tandem promote"), "{why}");
        let with_witness = format!("{base}[witness]\nname = \"w\"\naddress = \"127.0.0.1:3\"\n");
        assert_eq!(voters_of(&raw(&with_witness)), Ok(vec!["a".into(), "b".into(), "w".into()]));
        let off = with_witness.replace("[[peer]]", "[cluster]\nfailover = false\n[[peer]]");
        assert!(voters_of(&raw(&off)).expect_err("off").contains("cluster.failover = false"));
        let geo = with_witness.replace("address = \"127.0.0.1:2\"", "address = \"127.0.0.1:2\"\nprofile = \"geo\"");
        assert_eq!(timing_of(&raw(&geo)), Timing::GEO);
        assert_eq!(timing_of(&raw(&with_witness)), Timing::LOCAL);
        let custom = with_witness.replace("[[peer]]", "[cluster]\nlease_ms = 2000\n[[peer]]");
        assert_eq!(timing_of(&raw(&custom)).heartbeat_ms, 200);
    }

    #[test]
    fn requests_and_replies_round_trip() {
        let r = Request::Lease {
            from: "a".into(),
            sync: SyncView { version: 3, required: true, members: BTreeMap::from([("b".into(), 7)]), ..Default::default() },
        };
        let back = Request::decode(&r.encode()).expect("decode");
        assert!(matches!(back, Request::Lease { from, sync } if from == "a" && sync.version == 3 && sync.members.get("b") == Some(&7)));
        assert!(Reply::decode(b"{").is_err());
        // A voter of the version before answers without its store: it decodes as unknown.
        let older = Reply::decode(br#"{"Lease":{"granted":true,"reason":""}}"#).expect("decode");
        assert!(matches!(older, Reply::Lease { granted: true, store, .. } if store.is_empty()));
    }

    proptest::proptest! {
        /// A voter decodes what any authenticated peer sends it: a damaged request or reply is
        /// an error (the call fails), never a panic.
        #[test]
        fn damaged_requests_and_replies_decode_or_are_refused(
            edits in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()), 1..5),
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let sync = SyncView { version: 3, required: true, members: BTreeMap::from([("b".into(), 7)]), ..Default::default() };
            let requests = [
                Request::Lease { from: "a".into(), sync },
                Request::Poll { primary: Some("a".into()) },
                Request::Endorse { primary: "a".into(), forced: false, index: 2 },
                Request::Promote { node: "b".into() },
            ];
            let replies = [Reply::Lease { granted: true, reason: String::new(), store: "b-1".into() }, Reply::Endorse { granted: false }];
            let encoded = requests.iter().map(Request::encode).chain(replies.iter().map(Reply::encode));
            for mut bytes in encoded {
                for (at, v) in &edits {
                    let i = at.index(bytes.len());
                    bytes[i] = *v;
                }
                let _ = Request::decode(&bytes);
                let _ = Reply::decode(&bytes);
            }
            let _ = Request::decode(&garbage);
            let _ = Reply::decode(&garbage);
        }
    }
}
