//! Replication between nodes: the link I/O around the pure decisions of [`state`].
//!
//! Each node listens on `node.listen` and dials every peer to *pull* from it: the dialer says
//! from which feed position it wants the peer's changes (its last applied position, kept in
//! memory and written to `DATA_DIR/replication/positions.json` every [`POSITIONS_SAVE_MS`]
//! while it moves, at once when its epoch does, and at stop), the peer streams batches
//! of its change feed (warm components only when it is the primary, hot ones always), and the
//! dialer applies them (warm: replace by stamp; hot: the plugin's merge) and acknowledges.
//! Applying is idempotent and a position is saved only after its batch is on disk, so a
//! disconnect or restart resumes without loss or duplication.

pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use self::state::{ComponentPolicy, Lag, LinkProfile, SendWindow};
use crate::failover::{Assignment, Coordinator, DataSide, FailoverStatus, SyncView};
use crate::node::config::{Ack, Mode, PeerSection, Priority, Profile};
use crate::node::error::NodeError;
use crate::node::gate::{AckWait, AdminWait, WriteGate};
use crate::node::service::{ApplyMode, Node, RemoteVersion};
use crate::peer::proto::{Batch, ComponentInfo, Hello, Msg, WireChange};
use crate::peer::tls::Credentials;
use crate::peer::{self, LinkError, PROTOCOL_VERSION};
use crate::plugin::{Stamp, Stored};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages read ahead on a link this node follows.
const FOLLOW_QUEUE: usize = 64;
/// Queued batches a follower applies in one commit, at most.
const MAX_COALESCED_BATCHES: usize = 32;

/// How often, at most, `positions.json` is written while positions move (ms). A node that
/// stops without writing it (a crash) resumes at most this much of its peers' feeds too early:
/// applying again is idempotent.
pub const POSITIONS_SAVE_MS: u64 = 250;

/// A persisted position: how far this node applied a peer's feed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub seq: u64,
    /// The newest warm epoch received from that peer (fencing).
    pub epoch: u64,
    /// Every warm change of the peer's feed up to `seq` was applied (false: the position moved
    /// while the peer was not this node's primary, past warm changes it did not send; when it
    /// becomes the primary, its feed is read again from the start).
    #[serde(default)]
    pub warm: bool,
}

/// What flows on a link this node streams on, and what the peer's acknowledgements are worth.
struct Flow {
    components: std::collections::BTreeSet<String>,
    weight: state::AckWeight,
    /// The role as it was when this node's hello went out (the peer decided what to follow on
    /// it), watched from before that moment: a change at any time after resets the link.
    role: watch::Receiver<Role>,
    primary_at_hello: Option<String>,
}

/// What status shows of one peer.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PeerStatus {
    pub name: String,
    pub address: String,
    pub profile: String,
    /// The link on which this node pulls from the peer is up.
    pub following: bool,
    /// The peer pulls from this node.
    pub subscribed: bool,
    /// It is subscribed, and its subscription carries every warm component whose writes wait
    /// for a standby: it may be in the synchronous set (see [`state::AckWeight`]).
    pub synchronous: bool,
    /// Position applied from the peer's feed, and the peer's last seq when last heard.
    pub applied_seq: u64,
    pub peer_last_seq: u64,
    /// Catching up (a new peer copies the whole feed: a bootstrap): the peer's position when the
    /// link came up, and how much of the way is done.
    pub catching_up: bool,
    pub catch_up_target: u64,
    pub catch_up_percent: u8,
    /// What the peer acknowledged of this node's feed.
    pub acked_by_peer: u64,
    pub components: Vec<String>,
    pub paused: Vec<String>,
    pub last_error: Option<String>,
    pub link_resets: u64,
    pub corrupt_frames: u64,
}

/// What status shows of one component.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ComponentStatus {
    pub name: String,
    pub mode: String,
    pub ack: String,
    pub priority: String,
    pub lag_ms: u64,
    pub max_lag_ms: u64,
    pub applied: u64,
    pub lag_alarm: bool,
}

/// The warm role of a node, durable in `DATA_DIR/replication/role.json` (initialised from
/// `cluster.primary`): which node is the warm primary, and whether this node, when it is that
/// primary, accepts warm writes (`tandem demote` closes them; `tandem promote` opens them on the
/// node it runs on, in a new epoch).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub primary: Option<String>,
    #[serde(default = "yes")]
    pub accepting: bool,
}

fn yes() -> bool {
    true
}

/// The replication part of a node's status.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Status {
    pub node: String,
    pub primary: Option<String>,
    /// `primary` (takes warm writes), `demoted` (the primary, warm writes closed) or `standby`.
    pub role: String,
    pub epoch: u64,
    /// Why automatic failover is off.
    pub automatic_failover: String,
    pub listen: String,
    pub peers: Vec<PeerStatus>,
    pub components: Vec<ComponentStatus>,
    /// Active alarms (plugin mismatches, lag over budget, fenced batches).
    pub alarms: Vec<String>,
    /// Per-component convergence digest of the stored versions, as of the last commit (see
    /// [`crate::node::digest`]): equal on every node once traffic stops.
    pub digests: BTreeMap<String, String>,
    /// The synchronous set (meaningful on the primary).
    pub sync_set: SyncSet,
    /// Automatic failover: the consensus leader, the assignment, this node's lease.
    pub failover: Option<FailoverStatus>,
}

/// What the write gate needs, shared with the links.
struct GateState {
    us: String,
    role: watch::Sender<Role>,
    role_file: PathBuf,
    primary_api: Mutex<Option<String>>,
    policies: BTreeMap<String, ComponentPolicy>,
    /// The highest feed position a standby of the synchronous set has on disk, and the same
    /// for high-priority components (their lane runs ahead).
    sync_acked: watch::Sender<u64>,
    sync_acked_high: watch::Sender<u64>,
    ack_timeout: Duration,
    /// The synchronous set: standbys whose acknowledgement `standby`-ack writes wait for, each
    /// with the primary's position it is complete from. Changed only after it is on disk
    /// (`DATA_DIR/replication/sync_set.json`), where failover reads it.
    sync_set: watch::Sender<SyncSet>,
    /// A member down this long leaves the set (and `standby` acks fall back to local).
    sync_drop_after: Duration,
    /// Where the synchronous set is recorded.
    sync_file: PathBuf,
    /// A synchronous set written to disk, announced to the voters, and not yet in effect.
    sync_set_next: watch::Sender<Option<SyncSet>>,
    /// With automatic failover, the members whose acknowledgements count for `standby` acks
    /// (`None`: every member): those in every set announced since the newest one a quorum of
    /// voters confirmed. A voter holding any of those sets may decide a promotion by it.
    ack_from: watch::Sender<Option<BTreeSet<String>>>,
    /// Each member's latest acknowledgement that would count but for `ack_from` (position,
    /// high-priority position, epoch): counted once its member counts again.
    member_acks: Mutex<BTreeMap<String, (u64, u64, u64)>>,
    /// The failover coordinator, when automatic failover is on: warm writes also need its lease.
    failover: std::sync::OnceLock<Arc<Coordinator>>,
    /// Automatic failover is configured. The coordinator starts after the links do: until it
    /// has, no lease holds and the epochs are the consensus's alone (invariant 31).
    failover_on: bool,
}

/// The synchronous set as recorded on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSet {
    /// Member name -> the primary's feed position from which the member holds every write that
    /// was acknowledged (a member may be promoted automatically only once it applied that far).
    pub members: BTreeMap<String, u64>,
    /// Wall time of the last change (ms), for people: versions are ordered by `version`.
    pub changed_ms: u64,
    /// Orders the sets voters hear ([`state::next_sync_version`]): a newer epoch's set is newer
    /// than any of an older epoch, and each change of one primary newer than the one before,
    /// whatever the clocks say. 0 in a set recorded before versions were (wall time then).
    #[serde(default)]
    pub version: u64,
    /// Member -> the id of its store, once known (with automatic failover, from its answers to
    /// lease renewals): a server replaced under the member's name has another store, is not
    /// the member, and leaves the set until it has caught up and joins again.
    #[serde(default)]
    pub stores: BTreeMap<String, String>,
}

impl GateState {
    /// A member of the synchronous set has everything up to `seq` on disk (`high` in the
    /// high-priority lane): `standby`-ack writes up to there are acknowledged.
    fn count_ack(&self, seq: u64, high: u64) {
        self.sync_acked.send_modify(|a| *a = (*a).max(seq));
        self.sync_acked_high.send_modify(|a| *a = (*a).max(high));
    }

    /// This node is the source of warm data (the primary, demoted or not).
    fn is_primary(&self) -> bool {
        self.role.borrow().primary.as_deref() == Some(self.us.as_str())
    }

    /// This node takes warm writes.
    fn takes_writes(&self) -> bool {
        let r = self.role.borrow();
        r.primary.as_deref() == Some(self.us.as_str()) && r.accepting && self.lease_holds()
    }

    /// Warm writes are allowed as far as failover is concerned: the lease holds, or automatic
    /// failover is off. While its coordinator is starting, no lease holds.
    fn lease_holds(&self) -> bool {
        match self.failover.get() {
            Some(f) => f.holds_lease(),
            None => !self.failover_on,
        }
    }

    fn primary(&self) -> Option<String> {
        self.role.borrow().primary.clone()
    }

    fn role_name(&self) -> &'static str {
        match (self.is_primary(), self.takes_writes()) {
            (true, true) => "primary",
            (true, false) => "demoted",
            _ => "standby",
        }
    }

    /// Records a new role durably, then makes it effective (links reset on the change).
    fn set_role(&self, role: Role) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(&role).map_err(std::io::Error::other)?;
        write_durably(&self.role_file, &bytes)?;
        self.role.send_replace(role);
        Ok(())
    }
}

/// Reads the durable role, or the one the configuration gives.
fn load_role(file: &std::path::Path, configured: Option<String>) -> anyhow::Result<Role> {
    match std::fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("reading {}", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Role { primary: configured, accepting: true }),
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

struct Gate(Arc<GateState>, std::sync::OnceLock<std::sync::Weak<Replication>>);

impl WriteGate for Gate {
    fn status(&self) -> Option<serde_json::Value> {
        let r = self.1.get()?.upgrade()?;
        serde_json::to_value(r.status()).ok()
    }

    fn metrics(&self) -> String {
        self.1.get().and_then(|r| r.upgrade()).map(|r| r.metrics()).unwrap_or_default()
    }

    fn refuse(&self, component: &str) -> Option<NodeError> {
        let g = &self.0;
        let policy = g.policies.get(component)?;
        if policy.mode != Mode::Warm || g.takes_writes() {
            return None;
        }
        let r = g.role.borrow().clone();
        if r.primary.as_deref() == Some(g.us.as_str()) && r.accepting {
            // The role says primary, but the failover lease does not hold.
            let primary = format!(
                "none: this node is the primary but holds no lease from a quorum of voters (cut off, or just promoted); {}",
                "retry shortly, or on the node that took over"
            );
            return Some(NodeError::NotPrimary { component: component.to_owned(), primary, api: None });
        }
        if g.is_primary() || g.primary().is_none() {
            let primary = "none: this node was demoted; run `tandem promote` on the node that should take writes".to_owned();
            return Some(NodeError::NotPrimary { component: component.to_owned(), primary, api: None });
        }
        let primary = g.primary()?;
        let api = g.primary_api.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(NodeError::NotPrimary { component: component.to_owned(), primary, api })
    }

    fn role(&self) -> Option<(String, bool)> {
        let g = &self.0;
        let warm = g.policies.values().any(|p| p.mode == Mode::Warm);
        Some((g.role_name().to_owned(), !warm || g.takes_writes()))
    }

    fn purge_horizon(&self) -> Option<u64> {
        // Replication not running (yet): nothing is known of the peers, purge nothing.
        self.1.get().and_then(|r| r.upgrade()).map_or(Some(0), |r| r.purge_horizon())
    }

    fn promote(&self) -> AdminWait {
        let r = self.1.get().and_then(|r| r.upgrade());
        Box::pin(async move {
            let r = r.ok_or(NodeError::ShuttingDown)?;
            r.promote().await
        })
    }

    fn demote(&self, timeout: Duration) -> AdminWait {
        let r = self.1.get().and_then(|r| r.upgrade());
        Box::pin(async move {
            let r = r.ok_or(NodeError::ShuttingDown)?;
            r.demote(timeout).await
        })
    }

    fn after_commit(&self, component: &str, seq: u64) -> Option<AckWait> {
        let g = &self.0;
        let policy = g.policies.get(component)?;
        if policy.mode != Mode::Warm {
            return None;
        }
        // With automatic failover, a warm write is acknowledged only while the lease holds.
        let (lease, failover_on) = (g.failover.get().cloned(), g.failover_on);
        let check_lease = move || match &lease {
            Some(c) if !c.holds_lease() => Err(NodeError::LeaseLost),
            None if failover_on => Err(NodeError::LeaseLost),
            _ => Ok(()),
        };
        // An empty set is on disk: local acknowledgement.
        if policy.ack != Ack::Standby || !g.takes_writes() || g.sync_set.borrow().members.is_empty() {
            if !failover_on {
                return None;
            }
            return Some(Box::pin(async move { check_lease() }));
        }
        let mut rx = if policy.priority == Priority::High { g.sync_acked_high.subscribe() } else { g.sync_acked.subscribe() };
        let mut set = g.sync_set.subscribe();
        let timeout = g.ack_timeout;
        Some(Box::pin(async move {
            let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            loop {
                if *rx.borrow_and_update() >= seq || set.borrow_and_update().members.is_empty() {
                    return check_lease();
                }
                tokio::select! {
                    _ = &mut deadline => return Err(NodeError::OutcomeUnknown(ms)),
                    r = rx.changed() => if r.is_err() { return Err(NodeError::OutcomeUnknown(ms)) },
                    r = set.changed() => if r.is_err() { return Err(NodeError::OutcomeUnknown(ms)) },
                }
            }
        }))
    }
}

#[derive(Default)]
struct Shared {
    peers: BTreeMap<String, PeerStatus>,
    lag: BTreeMap<String, Lag>,
    alarms: BTreeMap<String, String>,
    /// Peers whose acknowledged position was past the end of this node's feed when it started
    /// (see [`start`]), until they subscribe in step.
    ahead_at_start: std::collections::BTreeSet<String>,
    positions: BTreeMap<String, Position>,
    /// `positions` moved since `positions.json` was last written.
    positions_dirty: bool,
    /// Lag of each applied version (ms), kept only while sampling (benchmarks).
    samples: Option<Vec<u64>>,
    /// The highest epoch heard from any peer (a promotion goes past it).
    max_epoch: u64,
    /// Peer -> the position of this node's feed it acknowledged (`replication/acked.json`).
    acked: BTreeMap<String, u64>,
}

/// Replication of one node.
pub struct Replication {
    node: Arc<Node>,
    gate: Arc<GateState>,
    creds: Credentials,
    peers: Vec<PeerSection>,
    api: Option<String>,
    listen: SocketAddr,
    positions_file: PathBuf,
    /// Held while `positions.json` is written, so that two writers never interleave.
    positions_writing: tokio::sync::Mutex<()>,
    shared: Mutex<Shared>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn policies(node: &Node) -> BTreeMap<String, ComponentPolicy> {
    let raw = &node.config().raw;
    node.config()
        .components
        .iter()
        .map(|c| {
            let section = raw.components.get(&c.name);
            let policy = ComponentPolicy {
                mode: c.mode,
                ack: section.map(|s| s.ack).unwrap_or_default(),
                priority: c.priority,
                lag_budget_ms: section.and_then(|s| s.lag_budget_ms).unwrap_or(1_000),
            };
            (c.name.clone(), policy)
        })
        .collect()
}

fn priority_name(p: Priority) -> &'static str {
    match p {
        Priority::High => "high",
        Priority::Normal => "normal",
        Priority::Low => "low",
    }
}

/// Starts replication for a running node, if it has peers and cluster credentials: binds
/// `node.listen`, installs the write gate, dials every peer. `api` is the node's bound API
/// address (standbys send writers there).
pub async fn start(node: Arc<Node>, api: Option<SocketAddr>) -> anyhow::Result<Option<Arc<Replication>>> {
    let config = node.config().clone();
    let cluster = &config.raw.cluster;
    let peers = config.raw.peers.clone();
    if peers.is_empty() {
        return Ok(None);
    }
    let base = config.file.parent().map(PathBuf::from).unwrap_or_default();
    let (Some(ca), Some(cert), Some(key)) = (&cluster.ca, &cluster.cert, &cluster.key) else {
        tracing::warn!(
            "peers are configured but no cluster credentials (cluster.ca, cluster.cert, cluster.key): replication is off; `tandem init` writes them"
        );
        return Ok(None);
    };
    let creds = crate::peer::tls::load(&base.join(ca), &base.join(cert), &base.join(key)).context("loading the cluster credentials")?;
    let us = config.raw.node.name.clone();
    let is_witness = config.raw.node.role == crate::node::config::Role::Witness;
    let configured = cluster.primary.clone().filter(|p| !is_witness || *p != us).or_else(|| {
        if is_witness {
            return None; // a witness is never the primary; the consensus tells it who is
        }
        let mut names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).chain([us.as_str()]).collect();
        names.sort_unstable();
        names.first().map(|s| (*s).to_owned())
    });
    let listen: SocketAddr = tokio::net::lookup_host(&config.raw.node.listen)
        .await
        .with_context(|| format!("resolving node.listen {}", config.raw.node.listen))?
        .next()
        .with_context(|| format!("node.listen {} resolves to no address", config.raw.node.listen))?;
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen for peers on {listen} (node.listen)"))?;
    let listen = listener.local_addr().context("reading the peer address")?;
    let (sync_acked, _) = watch::channel(0u64);
    let (sync_acked_high, _) = watch::channel(0u64);
    let sync_file = config.data_dir.join("replication").join("sync_set.json");
    let sync = match std::fs::read(&sync_file) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("reading {}", sync_file.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SyncSet {
            // At first start every standby on a local link is in the set, complete from the start.
            members: peers.iter().filter(|p| p.profile == Profile::Local).map(|p| (p.name.clone(), 0)).collect(),
            changed_ms: 0,
            version: 0,
            stores: BTreeMap::new(),
        },
        Err(e) => return Err(e).with_context(|| format!("reading {}", sync_file.display())),
    };
    let (sync_set, _) = watch::channel(sync);
    let role_file = config.data_dir.join("replication").join("role.json");
    let role = load_role(&role_file, configured)?;
    let primary = role.primary.clone();
    let (role, _) = watch::channel(role);
    let failover_on = crate::failover::voters_of(&config.raw).is_ok();
    let gate = Arc::new(GateState {
        us: us.clone(),
        role,
        role_file,
        primary_api: Mutex::new(None),
        policies: policies(&node),
        sync_acked,
        sync_acked_high,
        sync_set,
        sync_drop_after: Duration::from_millis(cluster.sync_drop_ms.unwrap_or(5_000)),
        ack_timeout: Duration::from_millis(cluster.ack_timeout_ms.unwrap_or(2_000)),
        failover: std::sync::OnceLock::new(),
        failover_on,
        sync_set_next: watch::channel(None).0,
        // Until this node, as primary, has had its set confirmed: voters may hold a newer one
        // it announced before a restart.
        ack_from: watch::channel(failover_on.then(BTreeSet::new)).0,
        member_acks: Mutex::new(BTreeMap::new()),
        sync_file: sync_file.clone(),
    });
    let hook = Arc::new(Gate(gate.clone(), std::sync::OnceLock::new()));
    node.set_gate(hook.clone());
    let positions_file = config.data_dir.join("replication").join("positions.json");
    let positions: BTreeMap<String, Position> = match std::fs::read(&positions_file) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("reading {}", positions_file.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", positions_file.display())),
    };
    let seen = positions.values().map(|p| p.epoch).max().unwrap_or(0);
    if gate.takes_writes() {
        // Every start of a primary begins a new epoch (without automatic failover: with it, the
        // consensus gives every epoch, and no lease holds yet).
        let epoch = node.epoch().max(seen) + 1;
        node.set_epoch(epoch).await.with_context(|| format!("beginning epoch {epoch} as the warm primary"))?;
    }
    let acked_file = config.data_dir.join("replication").join("acked.json");
    let acked: BTreeMap<String, u64> = match std::fs::read(&acked_file) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("reading {}", acked_file.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", acked_file.display())),
    };
    let mut shared = Shared { positions, max_epoch: seen, acked, ..Default::default() };
    // Peers that acknowledged more of this node's feed than its store holds: the store went
    // back in time while `acked.json` did not (an older copy of `store.db` put back). Until such
    // a peer subscribes in step, its position is checked against where the feed ended at start,
    // not against its end now: the writes taken since would otherwise hide the rollback.
    let started = node.meta().last_seq;
    let warm = gate.is_primary() && gate.policies.values().any(|p| p.mode == Mode::Warm);
    for (peer, &seq) in &shared.acked {
        match state::resume(seq, started, started, warm, peer, &gate.us) {
            state::Resume::At(_) => continue,
            state::Resume::Refuse(reason) => {
                tracing::error!(peer = %peer, "{reason}");
                shared.alarms.insert(format!("rolled-back:{peer}"), reason);
            }
            state::Resume::RolledBack(_) => tracing::warn!(
                peer = %peer,
                acked = seq,
                started,
                "the peer acknowledged more of this node's feed than its store holds (the store went back in time): when it subscribes, the hot link resumes from where the feed ended at start"
            ),
        }
        shared.ahead_at_start.insert(peer.clone());
    }
    for p in &peers {
        let applied = shared.positions.get(&p.name).map(|p| p.seq).unwrap_or(0);
        shared.peers.insert(
            p.name.clone(),
            PeerStatus {
                name: p.name.clone(),
                address: p.address.clone(),
                profile: format!("{:?}", p.profile).to_lowercase(),
                applied_seq: applied,
                ..Default::default()
            },
        );
    }
    let (stop, _) = watch::channel(false);
    let repl = Arc::new(Replication {
        node,
        gate,
        creds,
        peers: peers.clone(),
        api: api.map(|a| a.to_string()),
        listen,
        positions_file,
        positions_writing: tokio::sync::Mutex::new(()),
        shared: Mutex::new(shared),
        stop,
        tasks: Mutex::new(Vec::new()),
    });
    tracing::info!(node = %us, listen = %listen, primary = ?primary, peers = peers.len(), "replication started");
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(repl.clone().accept_loop(listener)));
    let witness = config.raw.node.role == crate::node::config::Role::Witness;
    if !witness {
        for p in peers {
            tasks.push(tokio::spawn(repl.clone().follow(p)));
        }
    }
    tasks.push(tokio::spawn(repl.clone().positions_loop()));
    tasks.push(tokio::spawn(repl.clone().sync_loop(sync_file)));
    tasks.push(tokio::spawn(repl.clone().acked_loop(acked_file)));
    repl.tasks.lock().unwrap_or_else(|e| e.into_inner()).extend(tasks);
    let _ = hook.1.set(Arc::downgrade(&repl));
    match crate::failover::voters_of(&config.raw) {
        Ok(voters) => {
            let c = start_failover(&repl, voters, witness).await.context("starting automatic failover")?;
            let _ = repl.gate.failover.set(c);
        }
        Err(why) => tracing::info!("{why}"),
    }
    Ok(Some(repl))
}

/// Starts the failover coordinator on a thread and runtime of its own, so that plugin calls
/// and disk work on the node's runtime cannot delay heartbeats and consensus.
async fn start_failover(repl: &Arc<Replication>, voters: Vec<String>, witness: bool) -> anyhow::Result<Arc<Coordinator>> {
    use crate::failover::{FileDisk, NoData, Settings, link::PeerTransport};
    let config = repl.node.config().clone();
    let raw = &config.raw;
    let addrs: BTreeMap<String, String> = raw.peers.iter().chain(raw.witness.iter()).map(|p| (p.name.clone(), p.address.clone())).collect();
    // `tandem init --replaces` leaves this marker; the coordinator records it in its consensus
    // state at start, and the marker goes.
    let rejoin_marker = crate::failover::rejoin_marker(&config.data_dir);
    let rejoin = rejoin_marker.exists();
    let settings = Settings { us: repl.gate.us.clone(), voters, timing: crate::failover::timing_of(raw), rejoin };
    let data: Arc<dyn DataSide> = if witness { Arc::new(NoData) } else { Arc::new(ReplData(Arc::downgrade(repl))) };
    let disk = Arc::new(FileDisk(config.data_dir.join("replication").join("consensus.json")));
    let creds = repl.creds.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tandem-failover".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(anyhow::anyhow!("building the failover runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let us = settings.us.clone();
                let transport = Arc::new(PeerTransport::new(us, creds, addrs, tokio::runtime::Handle::current()));
                match Coordinator::start(settings, disk, transport, data, crate::failover::real_clock()).await {
                    Ok(c) => {
                        if rejoin && let Err(e) = std::fs::remove_file(&rejoin_marker) {
                            tracing::warn!("cannot remove {}: {e}", rejoin_marker.display());
                        }
                        let _ = tx.send(Ok(c.clone()));
                        c.stopped().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })
        .context("starting the failover thread")?;
    rx.await.context("the failover thread ended")?
}

/// The data side of failover: this node's replication.
struct ReplData(std::sync::Weak<Replication>);

impl DataSide for ReplData {
    fn holds_data(&self) -> bool {
        true
    }
    /// Only a position read with the primary's warm components flowing says what this node
    /// holds of its warm writes (a link on which this node believed another primary carried none).
    fn applied_from(&self, primary: &str) -> u64 {
        self.0.upgrade().map_or(0, |r| {
            if r.gate.us == primary {
                // Its own feed: all of it.
                return r.node.last_seq();
            }
            r.shared().positions.get(primary).filter(|p| p.warm).map_or(0, |p| p.seq)
        })
    }
    fn epoch(&self) -> u64 {
        self.0.upgrade().map_or(0, |r| r.node.epoch())
    }
    fn believes(&self) -> Option<String> {
        self.0.upgrade().and_then(|r| r.gate.primary())
    }
    fn sync_view(&self) -> SyncView {
        let Some(r) = self.0.upgrade() else { return SyncView::default() };
        let set = r.gate.sync_set_next.borrow().clone().unwrap_or_else(|| r.gate.sync_set.borrow().clone());
        let required = r.gate.policies.values().any(|p| p.mode == Mode::Warm && p.ack == Ack::Standby);
        SyncView { version: set.version, required, members: set.members, stores: set.stores }
    }
    fn store_id(&self) -> String {
        self.0.upgrade().map_or_else(String::new, |r| r.node.meta().node_id.clone())
    }
    fn assigned(&self, a: Assignment) -> crate::failover::BoxFuture<'static, ()> {
        let r = self.0.upgrade();
        Box::pin(async move {
            if let Some(r) = r {
                r.assigned(a).await;
            }
        })
    }
}

impl Replication {
    /// The address peers reach this node on.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Stops every link.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        if let Some(c) = self.gate.failover.get() {
            c.request_stop();
        }
        for t in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
        self.flush_positions();
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn peer_status(&self, name: &str, f: impl FnOnce(&mut PeerStatus)) {
        if let Some(p) = self.shared().peers.get_mut(name) {
            f(p);
        }
    }

    /// Replication status: links, positions, lag, alarms.
    pub fn status(&self) -> Status {
        // Before the shared lock: the coordinator's status takes its own lock (never both).
        let failover = self.gate.failover.get().map(|f| f.status());
        let role = self.gate.role_name().to_owned();
        let s = self.shared();
        let components = self
            .gate
            .policies
            .iter()
            .map(|(name, p)| {
                let lag = s.lag.get(name).cloned().unwrap_or_default();
                ComponentStatus {
                    name: name.clone(),
                    mode: p.mode.to_string(),
                    ack: format!("{:?}", p.ack).to_lowercase(),
                    priority: priority_name(p.priority).to_owned(),
                    lag_ms: lag.last_ms,
                    max_lag_ms: lag.max_ms,
                    applied: lag.applied,
                    lag_alarm: lag.over_budget,
                }
            })
            .collect();
        let cfg = &self.node.config().raw;
        Status {
            node: self.gate.us.clone(),
            // A witness follows no feed: the consensus's assignment names the primary.
            primary: self.gate.primary().or_else(|| failover.as_ref().and_then(|f| f.assignment.primary.clone())),
            role,
            epoch: self.node.epoch(),
            automatic_failover: match (self.gate.failover.get(), crate::failover::voters_of(cfg)) {
                (Some(_), Ok(v)) => format!("on: {} voters ({})", v.len(), v.join(", ")),
                (None, Ok(_)) => "automatic failover did not start (see the log); use `tandem promote`".into(),
                (_, Err(why)) => why,
            },
            listen: self.listen.to_string(),
            peers: s.peers.values().cloned().collect(),
            components,
            alarms: s.alarms.values().cloned().collect(),
            digests: self
                .node
                .digests_at(self.gate.policies.iter().filter(|(_, p)| p.mode != Mode::Cold).map(|(name, _)| name))
                .1
                .into_iter()
                .collect(),
            sync_set: self.gate.sync_set.borrow().clone(),
            failover,
        }
    }

    /// Keeps the synchronous set (primary only): a member whose link is down longer than
    /// `cluster.sync_drop_ms` leaves it; a `local` standby that caught up joins it. Each change
    /// is written and fsynced before it takes effect.
    async fn sync_loop(self: Arc<Self>, file: PathBuf) {
        let mut stop = self.stop.subscribe();
        let mut down_since: BTreeMap<String, Instant> = BTreeMap::new();
        let mut catch_up: BTreeMap<String, u64> = BTreeMap::new();
        // Members whose store changed, warned about once.
        let mut replaced_seen: BTreeSet<String> = BTreeSet::new();
        // The newest version this loop announced, recorded or not (a smaller set that no quorum
        // confirmed was heard by some voters): the next one is past it.
        let mut announced = 0u64;
        // Where the members that stay must be before a member leaves (see below).
        let mut shrink_target: Option<u64> = None;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if !self.gate.is_primary() {
                continue;
            }
            let current = self.gate.sync_set.borrow().clone();
            let mut next = current.clone();
            let failover = self.gate.failover.get().cloned();
            for p in self.peers.iter().filter(|p| p.profile == Profile::Local) {
                // Up: subscribed, to every warm component its acknowledgements would count for.
                let (up, acked) = self.shared().peers.get(&p.name).map_or((false, 0), |s| (s.synchronous, s.acked_by_peer));
                // The store it answers lease renewals with now (with automatic failover).
                let store = failover.as_ref().and_then(|c| c.store_of(&p.name));
                if current.members.contains_key(&p.name) {
                    let replaced = store.as_ref().is_some_and(|s| current.stores.get(&p.name).is_some_and(|joined| joined != s));
                    if replaced {
                        // Another server under the member's name: it holds none of what was
                        // acknowledged with the member. It joins again once caught up.
                        if replaced_seen.insert(p.name.clone()) {
                            tracing::warn!(peer = %p.name, "the standby's store is not the one that joined the synchronous set (a replaced server): it leaves the set, and joins again once caught up");
                        }
                        next.members.remove(&p.name);
                        next.stores.remove(&p.name);
                        down_since.remove(&p.name);
                    } else if up {
                        down_since.remove(&p.name);
                        replaced_seen.remove(&p.name);
                        if let Some(s) = store.filter(|_| !current.stores.contains_key(&p.name)) {
                            next.stores.insert(p.name.clone(), s);
                        }
                    } else if down_since.entry(p.name.clone()).or_insert_with(Instant::now).elapsed() >= self.gate.sync_drop_after {
                        next.members.remove(&p.name);
                        next.stores.remove(&p.name);
                        down_since.remove(&p.name);
                    }
                } else if up {
                    // Joins once it has what was committed when it came back.
                    let target = *catch_up.entry(p.name.clone()).or_insert_with(|| self.node.last_seq());
                    if acked >= target {
                        next.members.insert(p.name.clone(), self.node.last_seq());
                        if let Some(s) = store {
                            next.stores.insert(p.name.clone(), s);
                        }
                        catch_up.remove(&p.name);
                    }
                } else {
                    catch_up.remove(&p.name);
                }
            }
            let restricted = failover.is_some() && self.gate.ack_from.borrow().is_some();
            if next.members == current.members && next.stores == current.stores {
                shrink_target = None;
                if !restricted {
                    continue;
                }
                // Some member's acknowledgements do not count: the set is announced again,
                // under a new version, until a quorum of voters confirms it.
            }
            // A `standby`-ack write waits for any one member: one that leaves may be the only
            // holder of some. The members that stay must first hold everything committed when
            // the shrink was first wanted (they follow: they get there quickly).
            let shrinks = current.members.keys().any(|m| !next.members.contains_key(m));
            if shrinks {
                let target = *shrink_target.get_or_insert_with(|| self.node.last_seq());
                let behind: Vec<String> = {
                    let s = self.shared();
                    next.members.keys().filter(|m| s.peers.get(*m).map_or(0, |p| p.acked_by_peer) < target).cloned().collect()
                };
                if !behind.is_empty() {
                    tracing::debug!(?behind, target, "the synchronous set shrinks once the members that stay hold what was committed");
                    continue;
                }
            }
            shrink_target = None;
            next.changed_ms = self.node.clock().wall_ms();
            // Past what this node's own voter heard too: a set announced before a restart
            // that no quorum confirmed may be on some voters, and no other set may share its
            // version.
            let heard = failover.as_ref().map_or(0, |c| c.heard_sync_version());
            next.version = state::next_sync_version(announced.max(current.version).max(heard), self.node.epoch());
            announced = next.version;
            let text = match serde_json::to_vec_pretty(&next) {
                Ok(t) => t,
                Err(_) => continue,
            };
            if shrinks && let Some(c) = failover.as_ref() {
                // A smaller set takes effect only once a quorum of voters has heard of it: a
                // member that left must not be promoted with writes acknowledged without it.
                // From now on, the acknowledgements of the members leaving do not count.
                self.restrict_acks(&next);
                self.gate.sync_set_next.send_replace(Some(next.clone()));
                let confirmed = wait_confirmed(c, next.version).await;
                self.gate.sync_set_next.send_replace(None);
                if !confirmed {
                    tracing::warn!("no quorum confirmed the smaller synchronous set: it stays as it was for now");
                    continue;
                }
            }
            let f = file.clone();
            let written = tokio::task::spawn_blocking(move || write_durably(&f, &text)).await;
            match written {
                Ok(Ok(())) => {
                    for gone in current.members.keys().filter(|m| !next.members.contains_key(*m)) {
                        tracing::warn!(peer = %gone, "standby left the synchronous set: `standby` acks fall back to local acks until it returns");
                        self.shared().alarms.insert(
                            format!("sync:{gone}"),
                            format!(
                                "standby {gone} left the synchronous set (down over {} ms); it will not be promoted automatically",
                                self.gate.sync_drop_after.as_millis()
                            ),
                        );
                    }
                    for joined in next.members.keys().filter(|m| !current.members.contains_key(*m)) {
                        tracing::info!(peer = %joined, "standby joined the synchronous set");
                        self.shared().alarms.remove(&format!("sync:{joined}"));
                    }
                    let version = next.version;
                    if let Some(c) = failover.as_ref().filter(|_| !shrinks) {
                        // A member that joins counts once a quorum of voters heard of it: a
                        // voter with the set before could promote without it.
                        self.restrict_acks(&current);
                        self.gate.sync_set.send_replace(next);
                        wait_confirmed(c, version).await;
                    } else {
                        self.gate.sync_set.send_replace(next);
                    }
                    // Every set announced is confirmed (a shrink was, before it was written).
                    if failover.as_ref().is_some_and(|c| c.confirmed_sync_version() >= version) {
                        self.gate.ack_from.send_replace(None);
                        self.recount_member_acks();
                    }
                }
                Ok(Err(e)) => tracing::error!("cannot record the synchronous set in {}: {e}; it stays as it was", file.display()),
                Err(e) => tracing::error!("cannot record the synchronous set: {e}"),
            }
        }
    }

    /// Counts the acknowledgements held back while their members did not count (writes wait
    /// for them; a member acknowledges each position once). Only those of this epoch.
    fn recount_member_acks(&self) {
        let held = std::mem::take(&mut *self.gate.member_acks.lock().unwrap_or_else(|e| e.into_inner()));
        let epoch = self.node.epoch();
        let set = self.gate.sync_set.borrow();
        for (peer, (seq, high, at)) in held {
            if at >= epoch && set.members.contains_key(&peer) {
                self.gate.count_ack(seq, high);
            }
        }
    }

    /// Counts acknowledgements only from members of `set` too (see `GateState::ack_from`).
    fn restrict_acks(&self, set: &SyncSet) {
        self.gate.ack_from.send_modify(|a| *a = Some(state::acks_within(a.as_ref(), set.members.keys())));
    }

    /// Starts (or restarts) recording the lag of every applied version; returns what was
    /// recorded since the last call (benchmarks).
    pub fn take_lag_samples(&self) -> Vec<u64> {
        self.shared().samples.replace(Vec::new()).unwrap_or_default()
    }

    /// Prometheus lines for replication.
    pub fn metrics(&self) -> String {
        let st = self.status();
        let mut out = String::new();
        for c in &st.components {
            out.push_str(&format!("tandem_replication_lag_ms{{component=\"{}\"}} {}\n", c.name, c.lag_ms));
            out.push_str(&format!("tandem_replication_lag_alarm{{component=\"{}\"}} {}\n", c.name, u8::from(c.lag_alarm)));
        }
        for p in &st.peers {
            out.push_str(&format!("tandem_replication_peer_up{{peer=\"{}\"}} {}\n", p.name, u8::from(p.following)));
            out.push_str(&format!("tandem_replication_applied_seq{{peer=\"{}\"}} {}\n", p.name, p.applied_seq));
            out.push_str(&format!("tandem_replication_link_resets_total{{peer=\"{}\"}} {}\n", p.name, p.link_resets));
            out.push_str(&format!("tandem_replication_corrupt_frames_total{{peer=\"{}\"}} {}\n", p.name, p.corrupt_frames));
        }
        out.push_str(&format!("tandem_replication_alarms {}\n", st.alarms.len()));
        for (c, d) in &st.digests {
            out.push_str(&format!("tandem_component_digest{{component=\"{c}\",digest=\"{d}\"}} 1\n"));
        }
        out
    }

    fn hello(&self) -> Hello {
        let components = self
            .gate
            .policies
            .iter()
            .filter(|(_, p)| p.mode != Mode::Cold)
            .filter_map(|(name, p)| {
                let plugin = self.node.registry().get(name)?;
                Some(ComponentInfo {
                    name: name.clone(),
                    mode: p.mode.to_string(),
                    digest: plugin.digest().to_owned(),
                    plugin_version: plugin.info().plugin_version.clone(),
                    schema_version: plugin.info().schema_version,
                    limits: serde_json::to_string(plugin.limits()).unwrap_or_default(),
                })
            })
            .collect();
        Hello {
            node: self.gate.us.clone(),
            epoch: self.node.epoch(),
            api: self.api.clone(),
            primary: self.gate.primary(),
            last_seq: self.node.last_seq(),
            components,
        }
    }

    fn note_error(&self, peer: &str, e: &LinkError) {
        self.peer_status(peer, |p| {
            p.last_error = Some(e.to_string());
            p.link_resets += 1;
            if matches!(e, LinkError::Frame(peer::frame::FrameError::Checksum { .. })) {
                p.corrupt_frames += 1;
            }
        });
    }

    /// Raises or clears the digest-mismatch alarms of a peer.
    fn note_mismatches(&self, peer: &str, mismatches: &[state::Mismatch]) {
        let mut s = self.shared();
        s.alarms.retain(|k, _| !k.starts_with(&format!("plugin:{peer}:")));
        for m in mismatches {
            let msg = m.message(peer);
            tracing::error!(peer, component = %m.component, "{msg}");
            s.alarms.insert(format!("plugin:{peer}:{}", m.component), msg);
        }
        if let Some(p) = s.peers.get_mut(peer) {
            p.paused = mismatches.iter().map(|m| m.component.clone()).collect();
        }
    }

    // ---- the listening side: peers pull from this node ----

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        let mut stop = self.stop.subscribe();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                r = listener.accept() => match r {
                    Ok((tcp, from)) => {
                        let me = self.clone();
                        tokio::spawn(async move {
                            match me.serve(tcp).await {
                                Err(LinkError::Frame(peer::frame::FrameError::Closed)) | Ok(()) => {
                                    tracing::debug!(from = %from, "peer link closed");
                                }
                                Err(e) => tracing::warn!(from = %from, code = e.code(), "peer link closed: {e}"),
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!("accepting a peer: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    async fn serve(self: Arc<Self>, tcp: TcpStream) -> Result<(), LinkError> {
        let tls = peer::accept(tcp, &self.creds, &self.gate.us, HANDSHAKE_TIMEOUT).await?;
        let (mut rd, mut wr) = tokio::io::split(tls);
        let theirs = match tokio::time::timeout(HANDSHAKE_TIMEOUT, peer::recv(&mut rd)).await {
            Ok(Ok(Msg::Hello(h))) => h,
            Ok(Ok(other)) => return Err(LinkError::Protocol(format!("expected hello, got {other:?}"))),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(LinkError::Timeout("waiting for the peer's hello".into())),
        };
        let peer_cfg = self.peers.iter().find(|p| p.name == theirs.node).cloned();
        let voter = self.gate.failover.get().is_some_and(|f| f.is_voter(&theirs.node));
        if peer_cfg.is_none() && !voter {
            let reason = format!("node {:?} is not a peer of {} (add it to [[peer]] in tandem.toml)", theirs.node, self.gate.us);
            peer::send(&mut wr, &Msg::Refuse { reason: reason.clone() }, false).await?;
            return Err(LinkError::RefusedPeer(reason));
        }
        if peer_cfg.is_some() {
            self.note_epoch(theirs.epoch);
        }
        // Watched from before the hello is made: a promotion between the hello (which names the
        // primary the peer then follows) and the stream below still resets the link, so the peer
        // hears of it at its next handshake.
        let role = self.gate.role.subscribe();
        let primary_at_hello = role.borrow().primary.clone();
        peer::send(&mut wr, &Msg::Hello(self.hello()), false).await?;
        let first = match tokio::time::timeout(HANDSHAKE_TIMEOUT, peer::recv(&mut rd)).await {
            Ok(Ok(Msg::Failover(req))) if voter => return self.serve_failover(req, &mut rd, &mut wr).await,
            Ok(r) => r,
            Err(_) => return Err(LinkError::Timeout("waiting for the peer's subscription".into())),
        };
        let Some(peer_cfg) = peer_cfg else {
            return Err(LinkError::Protocol(format!(
                "{} is a voter, not a data peer: expected a failover request, got {first:?}",
                theirs.node
            )));
        };
        let name = peer_cfg.name.clone();
        let profile = LinkProfile::of(peer_cfg.profile);
        let (after, wanted) = match first {
            Ok(Msg::Subscribe { after_seq, components }) => (after_seq, components),
            Ok(Msg::SnapshotOffer { name: file, size, sha256 }) => {
                return self.receive_snapshot(&name, (file, size, sha256), &mut rd, &mut wr).await;
            }
            Ok(other) => return Err(LinkError::Protocol(format!("expected subscribe, got {other:?}"))),
            Err(e) => return Err(e),
        };
        let (same, _) = state::compare(&self.hello().components, &theirs.components);
        // What flows is decided on the role the hello announced.
        let primary_then = primary_at_hello.as_deref() == Some(self.gate.us.as_str());
        let allowed: std::collections::BTreeSet<String> = wanted
            .into_iter()
            .filter(|c| same.contains(c))
            .filter(|c| self.gate.policies.get(c).is_some_and(|p| state::sends(p, primary_then)))
            .collect();
        let warm = allowed.iter().any(|c| self.gate.policies.get(c).is_some_and(|p| p.mode == Mode::Warm));
        let weight = state::ack_weight(&self.gate.policies, &same, &allowed, primary_then);
        let alarm = format!("rolled-back:{name}");
        let started = self.node.meta().last_seq;
        let end = if self.shared().ahead_at_start.contains(&name) { started } else { self.node.last_seq() };
        // Whether what the peer acknowledged before belongs to a feed this store lost.
        let (after, starts_over) = match state::resume(after, started, end, warm, &name, &self.gate.us) {
            state::Resume::At(position) => {
                let mut s = self.shared();
                s.alarms.remove(&alarm);
                (position, s.ahead_at_start.remove(&name))
            }
            state::Resume::RolledBack(last) => {
                tracing::warn!(
                    peer = %name,
                    position = after,
                    last,
                    "the peer's position is past the end of this node's feed (this node's store went back in time): the hot link resumes from where the feed ended when this node started"
                );
                self.shared().ahead_at_start.remove(&name);
                // What the peer holds of this node's feed from now on starts there (tombstones
                // past it are not purged before it has them).
                (last, true)
            }
            state::Resume::Refuse(reason) => {
                tracing::error!(peer = %name, "{reason}");
                self.shared().alarms.insert(alarm, reason.clone());
                peer::send(&mut wr, &Msg::Refuse { reason: reason.clone() }, false).await?;
                return Err(LinkError::RefusedPeer(reason));
            }
        };
        // The peer's position in this node's feed is on its disk: an acknowledgement (of the
        // components it asked for).
        self.peer_status(&name, |p| {
            p.subscribed = true;
            p.synchronous = weight.synchronous;
        });
        if weight.complete {
            self.note_acked(&name, after, starts_over || after == 0);
        } else {
            tracing::info!(peer = %name, asked = allowed.len(), "the peer asks for fewer components than this node sends it (it sees another primary): its acknowledgements count for nothing");
        }
        let purged = self.node.tombstones_purged_through().await.unwrap_or(0);
        let fell_off = after > 0 && after < purged;
        if fell_off {
            tracing::warn!(
                peer = %name,
                position = after,
                purged_through = purged,
                "the peer fell off: deletions it missed were purged here (it was away past store.peer_hold_max_ms); it is bootstrapped from a snapshot merged into its store"
            );
            self.shared().alarms.insert(
                format!("fell-off:{name}"),
                format!("{name} fell off this node's feed at {after} (tombstones purged through {purged}): bootstrapped from a snapshot; deletions it missed are not applied there"),
            );
        }
        let start = if after == 0 || fell_off { None } else { Some(after) };
        let r = self.stream(&name, profile, start, Flow { components: allowed, weight, role, primary_at_hello }, &mut rd, &mut wr).await;
        self.peer_status(&name, |p| {
            p.subscribed = false;
            p.synchronous = false;
        });
        if let Err(e) = &r {
            self.note_error(&name, e);
        }
        r
    }

    /// Cold backup: a peer sends a snapshot to this node's inbox (`crate::backup::peer`).
    async fn receive_snapshot<R, W>(&self, peer: &str, offer: (String, u64, String), rd: &mut R, wr: &mut W) -> Result<(), LinkError>
    where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        let config = self.node.config();
        crate::backup::peer::receive(&config.data_dir, &config.raw.backup, peer, offer, rd, wr).await.map(|_| ())
    }

    async fn stream<R, W>(
        &self,
        peer: &str,
        profile: LinkProfile,
        // Where the peer's feed resumes; `None`: a bootstrap from a snapshot.
        start: Option<u64>,
        flow: Flow,
        rd: &mut R,
        wr: &mut W,
    ) -> Result<(), LinkError>
    where
        R: tokio::io::AsyncRead + Unpin + Send,
        W: tokio::io::AsyncWrite + Unpin + Send,
    {
        let Flow { components: allowed, weight, role: mut role_rx, primary_at_hello: primary_at_start } = flow;
        let (bootstrap, after) = (start.is_none(), start.unwrap_or(0));
        // Acks come in on their own task, so a slow reader never blocks the sender.
        let (ack_tx, mut ack_rx) = mpsc::channel::<Result<Msg, LinkError>>(64);
        let reader = async {
            loop {
                let m = tokio::time::timeout(Duration::from_millis(profile.timeout_ms), peer::recv(rd))
                    .await
                    .unwrap_or_else(|_| Err(LinkError::Timeout(format!("no word from {peer} for {} ms", profile.timeout_ms))));
                let end = m.is_err();
                if ack_tx.send(m).await.is_err() || end {
                    return;
                }
            }
        };
        let high: Vec<String> =
            allowed.iter().filter(|c| self.gate.policies.get(*c).is_some_and(|p| p.priority == Priority::High)).cloned().collect();
        // A lane of its own only when something else could hold it up.
        let lane = !high.is_empty() && high.len() < allowed.len();
        let to_wire = |c: crate::node::service::Change| WireChange {
            seq: c.seq,
            component: c.component,
            key: c.key,
            data: c.stored.data,
            tombstone: c.stored.tombstone,
            physical: c.stamp.physical,
            logical: c.stamp.logical,
            stamp_node: c.stamp.node.to_string(),
            origin: c.origin,
            doc: c.doc.map(|d| d.to_string()),
        };
        let read_err = |e: NodeError| LinkError::Apply(format!("reading the feed: {e}"));
        // Heartbeats carry the digests of what flows on this link.
        let flowing: Vec<String> = allowed.iter().cloned().collect();
        // What the components were at the handshake: a plugin swapped since resets the link.
        let defined = self.hello().components;
        let writer = async {
            let mut window = SendWindow::new(after);
            let mut high_sent = after;
            let mut seq_rx = self.node.watch_seq();
            let mut stop = self.stop.subscribe();
            let mut last_sent = Instant::now();
            if bootstrap {
                // A consistent snapshot (one read transaction) streamed as batches in feed
                // order; the peer merges it into its store, then follows the feed from its end.
                // With a priority lane, the high-priority components' snapshot goes first (on
                // the lane: it moves `high`, not the bulk position).
                let mut passes = Vec::new();
                if lane {
                    passes.push((high.clone(), true));
                }
                passes.push((allowed.iter().cloned().collect::<Vec<String>>(), false));
                for (components, on_lane) in passes {
                    let mut snap = self.node.snapshot_feed(components, 0, profile.max_batch);
                    loop {
                        while !window.can_send(profile.window) {
                            self.on_peer_msg(peer, weight, &mut window, ack_rx.recv().await)?;
                        }
                        let (changes, as_of) = match snap.recv().await {
                            Some(Ok(c)) => c,
                            Some(Err(e)) => return Err(read_err(e)),
                            None => return Err(LinkError::Apply("the snapshot reader ended".into())),
                        };
                        let done = changes.is_empty();
                        let last = changes.last().map_or(as_of, |c| c.seq);
                        let changes = changes.into_iter().map(to_wire).collect();
                        let (up_to, lane_to) = if on_lane { (window.sent_up_to, last) } else { (last, last.max(high_sent)) };
                        high_sent = high_sent.max(lane_to);
                        let batch = Batch { epoch: self.node.epoch(), up_to, high: high_sent.max(up_to), changes };
                        peer::send(wr, &Msg::Batch(batch), profile.compress).await?;
                        window.sent(up_to);
                        last_sent = Instant::now();
                        if done {
                            break;
                        }
                    }
                }
                tracing::info!(peer, up_to = window.sent_up_to, "snapshot sent: the peer follows the feed from here");
                high_sent = high_sent.max(window.sent_up_to);
            }
            loop {
                while window.can_send(profile.window) && self.node.last_seq() > window.sent_up_to {
                    // The priority lane first: high-priority changes past the bulk position are
                    // sent at once, whatever the backlog of other components.
                    let from = high_sent.max(window.sent_up_to);
                    if lane && self.node.last_seq() > from {
                        let seen = self.node.last_seq();
                        let urgent = self.node.replication_feed(from, profile.max_batch, Some(&high)).await.map_err(read_err)?;
                        if let Some(last) = urgent.last().map(|c| c.seq) {
                            high_sent = last;
                            let changes = urgent.into_iter().map(to_wire).collect();
                            let batch = Batch { epoch: self.node.epoch(), up_to: window.sent_up_to, high: high_sent, changes };
                            peer::send(wr, &Msg::Batch(batch), profile.compress).await?;
                            window.sent(window.sent_up_to);
                            last_sent = Instant::now();
                            continue;
                        }
                        // No high-priority change up to what was committed before the query.
                        high_sent = high_sent.max(seen);
                    }
                    if profile.batch_window_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(profile.batch_window_ms)).await;
                    }
                    let before = self.node.last_seq();
                    let changes = self.node.replication_feed(window.sent_up_to, profile.max_batch, None).await.map_err(read_err)?;
                    let full = changes.len() >= profile.max_batch;
                    let last = changes.last().map_or(0, |c| c.seq);
                    let up_to = if full { last } else { last.max(before) };
                    let mut wire: Vec<WireChange> = changes
                        .into_iter()
                        .filter(|c| allowed.contains(&c.component))
                        // Already sent on the priority lane.
                        .filter(|c| !(lane && c.seq <= high_sent && high.contains(&c.component)))
                        .map(to_wire)
                        .collect();
                    state::order_by_priority(&mut wire, |c| self.gate.policies.get(c).map_or(Priority::Normal, |p| p.priority));
                    let batch = Batch { epoch: self.node.epoch(), up_to, high: high_sent.max(up_to), changes: wire };
                    peer::send(wr, &Msg::Batch(batch), profile.compress).await?;
                    window.sent(up_to);
                    last_sent = Instant::now();
                }
                let hb = Duration::from_millis(profile.heartbeat_ms).saturating_sub(last_sent.elapsed());
                tokio::select! {
                    _ = stop.changed() => return Ok(()),
                    r = role_rx.changed() => if r.is_err() || role_rx.borrow().primary != primary_at_start {
                        return Err(LinkError::Protocol("the warm primary changed: the link is reset".into()));
                    },
                    m = ack_rx.recv() => self.on_peer_msg(peer, weight, &mut window, m)?,
                    _ = seq_rx.changed() => {}
                    _ = tokio::time::sleep(hb) => {
                        if self.hello().components != defined {
                            return Err(LinkError::Protocol("a plugin changed on this node: the link is reset to compare digests again".into()));
                        }
                        let (last_seq, digests) = self.node.digests_at(&flowing);
                        peer::send(wr, &Msg::Heartbeat { last_seq, epoch: self.node.epoch(), digests, diverged: Vec::new() }, false).await?;
                        last_sent = Instant::now();
                    }
                }
            }
        };
        tokio::select! {
            r = writer => r,
            () = reader => {
                // The reader ended with an error that the writer has not consumed yet.
                match ack_rx.try_recv() {
                    Ok(Err(e)) => Err(e),
                    _ => Err(LinkError::Protocol("link reader ended".into())),
                }
            }
        }
    }

    /// What the pulling peer sent on a link this node streams on: acknowledgements (which
    /// free the window and, as the subscription's `weight` says, count for `standby` acks and
    /// the purge horizon), heartbeats, or the end of the link.
    fn on_peer_msg(
        &self,
        peer: &str,
        weight: state::AckWeight,
        window: &mut SendWindow,
        m: Option<Result<Msg, LinkError>>,
    ) -> Result<(), LinkError> {
        match m {
            Some(Ok(Msg::Ack { seq, high, epoch })) => {
                if !window.acked(seq) {
                    return Err(LinkError::Protocol(format!("{peer} acknowledged {seq}, past what was sent ({})", window.sent_up_to)));
                }
                self.note_epoch(epoch);
                // An acknowledgement from an older epoch never counts for a `standby` ack; nor one
                // from a member some set not yet confirmed by the voters leaves out (a voter that
                // heard that set may promote without the member).
                let counts = state::ack_counts(self.gate.ack_from.borrow().as_ref(), peer);
                if weight.synchronous && epoch >= self.node.epoch() && self.gate.sync_set.borrow().members.contains_key(peer) {
                    if counts {
                        self.gate.count_ack(seq, high.max(seq));
                    } else {
                        let mut m = self.gate.member_acks.lock().unwrap_or_else(|e| e.into_inner());
                        m.insert(peer.to_owned(), (seq, high.max(seq), epoch));
                    }
                }
                if weight.complete {
                    self.note_acked(peer, seq, false);
                }
                Ok(())
            }
            Some(Ok(Msg::Heartbeat { diverged, .. })) => {
                self.note_reported_divergence(peer, &diverged);
                Ok(())
            }
            Some(Ok(Msg::Refuse { reason })) => Err(LinkError::Refused(reason)),
            Some(Ok(other)) => Err(LinkError::Protocol(format!("unexpected {other:?}"))),
            Some(Err(e)) => Err(e),
            None => Err(LinkError::Protocol("reader ended".into())),
        }
    }

    // ---- the dialing side: this node pulls from each peer ----

    /// A peer this node follows refused the link: an alarm until the peer streams again.
    fn refused_by(&self, peer: &str, reason: String) -> LinkError {
        self.shared().alarms.insert(format!("refused:{peer}"), format!("{peer} refuses to stream to this node: {reason}"));
        LinkError::Refused(reason)
    }

    async fn follow(self: Arc<Self>, peer_cfg: PeerSection) {
        let mut failures = 0u32;
        let mut stop = self.stop.subscribe();
        loop {
            if *stop.borrow() {
                return;
            }
            let started = Instant::now();
            let r = self.follow_once(&peer_cfg).await;
            self.peer_status(&peer_cfg.name, |p| p.following = false);
            if let Err(e) = r {
                if *stop.borrow() {
                    return;
                }
                failures = if started.elapsed() > Duration::from_secs(5) { 1 } else { failures.saturating_add(1) };
                // A peer that is starting or restarting is normal: say so loudly only when it lasts.
                if failures == 5
                    || (failures > 5 && failures.is_multiple_of(50))
                    || matches!(e, LinkError::Tls(_) | LinkError::Refused(_) | LinkError::RefusedPeer(_))
                {
                    tracing::warn!(peer = %peer_cfg.name, code = e.code(), failures, "link to peer: {e}");
                } else {
                    tracing::debug!(peer = %peer_cfg.name, code = e.code(), "link to peer: {e}");
                }
                self.note_error(&peer_cfg.name, &e);
            }
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(state::backoff_ms(failures))) => {}
            }
        }
    }

    async fn follow_once(&self, cfg: &PeerSection) -> Result<(), LinkError> {
        let profile = LinkProfile::of(cfg.profile);
        let tls = peer::dial(&cfg.address, &self.creds, PROTOCOL_VERSION, HANDSHAKE_TIMEOUT).await?;
        let (mut rd, mut wr) = tokio::io::split(tls);
        let ours = self.hello();
        peer::send(&mut wr, &Msg::Hello(ours.clone()), false).await?;
        let theirs = match tokio::time::timeout(HANDSHAKE_TIMEOUT, peer::recv(&mut rd)).await {
            Ok(Ok(Msg::Hello(h))) => h,
            Ok(Ok(Msg::Refuse { reason })) => return Err(self.refused_by(&cfg.name, reason)),
            Ok(Ok(other)) => return Err(LinkError::Protocol(format!("expected hello, got {other:?}"))),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(LinkError::Timeout("waiting for the peer's hello".into())),
        };
        if theirs.node != cfg.name {
            return Err(LinkError::Protocol(format!("{} answered as {:?}, not {:?}", cfg.address, theirs.node, cfg.name)));
        }
        self.note_epoch(theirs.epoch);
        self.adopt(&theirs).await?;
        {
            // Two nodes taking warm writes in one epoch: only an operator can tell which one
            // should (two promotions, or an old primary restarted while cut off).
            let key = format!("two-primaries:{}", cfg.name);
            let both =
                self.gate.takes_writes() && theirs.primary.as_deref() == Some(theirs.node.as_str()) && theirs.epoch == self.node.epoch();
            let mut s = self.shared();
            if both {
                let msg = format!(
                    "{} and {} are both the warm primary in epoch {}: run `tandem demote` on the one that should not take writes, then `tandem promote` on the other",
                    self.gate.us, theirs.node, theirs.epoch
                );
                tracing::error!(peer = %cfg.name, "{msg}");
                s.alarms.insert(key, msg);
            } else {
                s.alarms.remove(&key);
            }
        }
        let mut role_rx = self.gate.role.subscribe();
        let primary_at_start = role_rx.borrow_and_update().primary.clone();
        if self.gate.primary().as_deref() == Some(theirs.node.as_str()) {
            *self.gate.primary_api.lock().unwrap_or_else(|e| e.into_inner()) = theirs.api.clone();
        }
        let (same, mismatches) = state::compare(&ours.components, &theirs.components);
        self.note_mismatches(&cfg.name, &mismatches);
        let modes: BTreeMap<String, ApplyMode> = same
            .iter()
            .filter_map(|c| {
                let p = self.gate.policies.get(c)?;
                Some((c.clone(), state::apply_mode(p, &theirs.node, self.gate.primary().as_deref(), &self.gate.us)?))
            })
            .collect();
        let warm_now = modes.values().any(|m| *m == ApplyMode::Replace);
        let mut after = self.shared().positions.get(&cfg.name).copied().unwrap_or_default();
        if warm_now && !after.warm && after.seq > 0 {
            tracing::info!(peer = %cfg.name, "the peer is the warm primary now: reading its feed again from the start (versions already here are skipped by stamp)");
            after.seq = 0;
        }
        peer::send(&mut wr, &Msg::Subscribe { after_seq: after.seq, components: modes.keys().cloned().collect() }, false).await?;
        let target = theirs.last_seq;
        let start = after.seq;
        self.peer_status(&cfg.name, |p| {
            p.following = true;
            p.components = modes.keys().cloned().collect();
            p.peer_last_seq = theirs.last_seq;
            p.catching_up = start < target;
            p.catch_up_target = target;
            p.catch_up_percent = if start < target { 0 } else { 100 };
        });
        if start == 0 && target > 0 {
            tracing::info!(peer = %cfg.name, records_up_to = target, "bootstrapping: copying the peer's whole feed (merged into this store)");
        }
        let mut reported = 0u8;
        tracing::info!(peer = %cfg.name, after = after.seq, components = modes.len(), paused = mismatches.len(), "following peer");
        let mut newest_epoch = after.epoch;
        let mut high_applied = after.seq;
        let mut last_sent = Instant::now();
        let mut stop = self.stop.subscribe();
        // A task of its own reads the link: a frame is never cut in half by another branch of
        // the select below (reads are not cancel-safe), and batches that arrived while one was
        // being applied are there to be applied together.
        let (msg_tx, mut msg_rx) = tokio::sync::mpsc::channel::<Result<Msg, LinkError>>(FOLLOW_QUEUE);
        let reader = async move {
            loop {
                let m = peer::recv(&mut rd).await;
                let end = m.is_err();
                if msg_tx.send(m).await.is_err() {
                    return;
                }
                if end {
                    // The follower returns the error it was handed.
                    std::future::pending::<()>().await;
                }
            }
        };
        let follower = async move {
            let mut held: Option<Result<Msg, LinkError>> = None;
            let mut flowing = false;
            // How far this node applied the peer's feed, and the digests it compares there.
            let mut applied = start;
            let mut divergence = state::DivergenceWatch::default();
            loop {
                let msg = match held.take() {
                    Some(m) => m?,
                    None => {
                        let hb = Duration::from_millis(profile.heartbeat_ms).saturating_sub(last_sent.elapsed());
                        tokio::select! {
                            _ = stop.changed() => return Ok(()),
                            r = role_rx.changed() => {
                                if r.is_err() || role_rx.borrow().primary != primary_at_start {
                                    return Err(LinkError::Protocol("the warm primary changed: the link is reset".into()));
                                }
                                continue;
                            }
                            m = tokio::time::timeout(Duration::from_millis(profile.timeout_ms), msg_rx.recv()) => match m {
                                Err(_) => return Err(LinkError::Timeout(format!("no word from {} for {} ms", cfg.name, profile.timeout_ms))),
                                Ok(None) => return Err(LinkError::Protocol("link reader ended".into())),
                                Ok(Some(m)) => m?,
                            },
                            _ = tokio::time::sleep(hb) => {
                                if self.hello().components != ours.components {
                                    return Err(LinkError::Protocol("a plugin changed on this node: the link is reset to compare digests again".into()));
                                }
                                let hb = Msg::Heartbeat {
                                    last_seq: self.node.last_seq(),
                                    epoch: self.node.epoch(),
                                    digests: Vec::new(),
                                    diverged: self.diverged_from(&cfg.name),
                                };
                                peer::send(&mut wr, &hb, false).await?;
                                last_sent = Instant::now();
                                continue;
                            }
                        }
                    }
                };
                if !flowing && matches!(msg, Msg::Batch(_) | Msg::Heartbeat { .. }) {
                    // The peer streams: an earlier refusal is over.
                    flowing = true;
                    self.shared().alarms.remove(&format!("refused:{}", cfg.name));
                }
                match msg {
                    Msg::Batch(first) => {
                        if self.hello().components != ours.components {
                            return Err(LinkError::Protocol(
                                "a plugin changed on this node: the link is reset to compare digests again".into(),
                            ));
                        }
                        // The batches already queued behind this one are applied with it, in one
                        // commit and one acknowledgement: a standby that fell behind a burst
                        // catches up in a few large commits instead of many small ones.
                        let mut batches = vec![first];
                        let mut changes = batches[0].changes.len();
                        while batches.len() < MAX_COALESCED_BATCHES && changes < profile.max_batch {
                            match msg_rx.try_recv() {
                                // A batch of another epoch starts a group of its own: the epoch
                                // moves between two commits, as when batches are applied one by one.
                                Ok(Ok(Msg::Batch(b))) if b.epoch == batches[0].epoch => {
                                    changes += b.changes.len();
                                    batches.push(b);
                                }
                                Ok(other) => {
                                    held = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        let epoch = batches[0].epoch;
                        let mut up_to = 0;
                        let mut high = 0;
                        let mut all = Vec::with_capacity(changes);
                        for batch in batches {
                            up_to = up_to.max(batch.up_to);
                            high = high.max(batch.high.max(batch.up_to));
                            let warm = batch.changes.iter().any(|c| modes.get(&c.component) == Some(&ApplyMode::Replace));
                            if warm {
                                // Fenced against the newest epoch seen from this peer and this
                                // node's own (a promotion moved it past every epoch it had heard of).
                                newest_epoch = state::fence(batch.epoch, newest_epoch.max(self.node.epoch())).map_err(|reason| {
                                    self.shared().alarms.insert(format!("fenced:{}", cfg.name), reason.clone());
                                    LinkError::RefusedPeer(reason)
                                })?;
                                if batch.epoch > self.node.epoch() {
                                    self.node
                                        .set_epoch(batch.epoch)
                                        .await
                                        .map_err(|e| LinkError::Apply(format!("moving to epoch {}: {e}", batch.epoch)))?;
                                }
                            }
                            all.extend(batch.changes);
                        }
                        self.apply(&cfg.name, Batch { epoch, up_to, high, changes: all }, &modes).await?;
                        applied = applied.max(up_to);
                        high_applied = high_applied.max(high);
                        peer::send(&mut wr, &Msg::Ack { seq: up_to, high: high_applied, epoch: self.node.epoch() }, false).await?;
                        last_sent = Instant::now();
                        // A hint for the next start (applying again is idempotent), written once
                        // the acknowledgement is on its way.
                        self.save_position(&cfg.name, Position { seq: up_to, epoch: newest_epoch, warm: warm_now }).await?;
                        let percent = if up_to >= target {
                            100
                        } else {
                            u8::try_from((up_to.saturating_sub(start)) * 100 / target.saturating_sub(start).max(1)).unwrap_or(100)
                        };
                        if percent / 10 > reported / 10 && start < target {
                            reported = percent;
                            tracing::info!(peer = %cfg.name, percent, applied = up_to, target, "catching up");
                        }
                        self.peer_status(&cfg.name, |p| {
                            p.catching_up = percent < 100;
                            p.catch_up_percent = percent;
                            p.applied_seq = up_to;
                            p.peer_last_seq = p.peer_last_seq.max(up_to);
                            p.last_error = None;
                        });
                    }
                    Msg::Heartbeat { last_seq, digests, .. } => {
                        self.peer_status(&cfg.name, |p| p.peer_last_seq = last_seq);
                        self.compare_digests(&cfg.name, profile.heartbeat_ms, (last_seq, applied), &digests, &mut divergence);
                    }
                    Msg::Refuse { reason } => return Err(self.refused_by(&cfg.name, reason)),
                    other => return Err(LinkError::Protocol(format!("unexpected {other:?}"))),
                }
            }
        };
        tokio::select! {
            r = follower => r,
            () = reader => Err(LinkError::Protocol("link reader ended".into())),
        }
    }

    /// Answers a voter's failover requests, one at a time, until it closes the link.
    async fn serve_failover<R, W>(&self, first: Vec<u8>, rd: &mut R, wr: &mut W) -> Result<(), LinkError>
    where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        let Some(c) = self.gate.failover.get().cloned() else {
            return Err(LinkError::RefusedPeer("automatic failover is off on this node".into()));
        };
        let mut req = first;
        loop {
            let r = crate::failover::Request::decode(&req).map_err(LinkError::Protocol)?;
            let reply = c.handle(r).await;
            peer::send(wr, &Msg::FailoverReply(reply.encode()), false).await?;
            req = match peer::recv(rd).await? {
                Msg::Failover(b) => b,
                other => return Err(LinkError::Protocol(format!("expected a failover request, got {other:?}"))),
            };
        }
    }

    /// Acts on a committed assignment: takes warm writes when it names this node (in its
    /// epoch), follows the named primary otherwise.
    async fn assigned(&self, a: Assignment) {
        let Some(primary) = a.primary.clone() else { return };
        if a.epoch > self.node.epoch()
            && let Err(e) = self.node.set_epoch(a.epoch).await
        {
            tracing::error!("cannot move to epoch {} of the new assignment: {e}", a.epoch);
            return;
        }
        let role = Role { primary: Some(primary.clone()), accepting: true };
        if primary != self.gate.us && a.old.as_deref() == Some(self.gate.us.as_str()) && self.gate.is_primary() {
            // Before following the new primary: what this node wrote after the fork point goes
            // to the conflict queue, and the node rewinds to what the new primary has.
            self.rewind_to_fork(&primary, a.fork).await;
        }
        if primary == self.gate.us && !self.gate.is_primary() {
            // A new primary starts with an empty synchronous set (its standbys join as they
            // catch up): the set of the old primary named nodes that may be gone with it.
            let version = state::next_sync_version(self.gate.sync_set.borrow().version, a.epoch);
            let set = SyncSet { members: BTreeMap::new(), changed_ms: self.node.clock().wall_ms(), version, stores: BTreeMap::new() };
            match serde_json::to_vec_pretty(&set).map_err(std::io::Error::other).and_then(|b| write_durably(&self.gate.sync_file, &b)) {
                Ok(()) => {
                    self.gate.sync_set.send_replace(set);
                }
                Err(e) => tracing::error!("cannot record the synchronous set in {}: {e}", self.gate.sync_file.display()),
            }
        }
        if *self.gate.role.borrow() != role
            && let Err(e) = self.gate.set_role(role)
        {
            tracing::error!("cannot record the role in {}: {e}", self.gate.role_file.display());
            return;
        }
        if primary == self.gate.us {
            // Taking over from another primary is worth a warning; the cluster's first assignment is not.
            if a.old.is_some() {
                tracing::warn!(epoch = a.epoch, previous = ?a.old, fork = a.fork, "the cluster made this node the warm primary");
            } else {
                tracing::info!(epoch = a.epoch, "the cluster made this node the warm primary (its first assignment)");
            }
        }
    }

    /// A returning old primary: each warm record it wrote after `fork` (its feed position the
    /// new primary had) is recorded in the conflict queue and rewound (see [`ApplyMode::Fork`]).
    async fn rewind_to_fork(&self, primary: &str, fork: u64) {
        const MAX: usize = 1_000_000;
        let warm: Vec<String> = self.gate.policies.iter().filter(|(_, p)| p.mode == Mode::Warm).map(|(n, _)| n.clone()).collect();
        let mut orphans: BTreeMap<String, Vec<RemoteVersion>> = BTreeMap::new();
        let (mut after, mut count) = (fork, 0usize);
        while count < MAX {
            let changes = match self.node.changes_of(warm.clone(), after, 1_000).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("reading the feed after the fork point {fork}: {e}; writes after it stay as they are");
                    return;
                }
            };
            let Some(last) = changes.last().map(|c| c.seq) else { break };
            after = last;
            count += changes.len();
            for c in changes {
                orphans.entry(c.component.clone()).or_default().push(RemoteVersion {
                    key: c.key,
                    stored: c.stored,
                    stamp: c.stamp,
                    origin: c.origin,
                    doc: None,
                });
            }
        }
        if count == 0 {
            return;
        }
        let mut queued = 0usize;
        for (component, versions) in orphans {
            match self.node.apply_remote(&component, versions, ApplyMode::Fork).await {
                Ok(results) => queued += results.iter().filter(|r| matches!(r, Ok(crate::node::service::Applied::Stored { .. }))).count(),
                Err(e) => tracing::error!(component = %component, "rewinding to the fork point: {e}"),
            }
        }
        let msg = format!(
            "this node was the primary until {primary} took over at position {fork} of its feed: {queued} record(s) written here after that never reached {primary}; they are in the conflict queue (`tandem conflicts`) and this node follows {primary}"
        );
        tracing::error!("{msg}");
        self.shared().alarms.insert("fork".into(), msg);
    }

    /// `peer` acknowledged (has on disk) this node's feed up to `seq`. Positions only move
    /// forward, except when the peer `starts_over` (a bootstrap, or a feed this node's store
    /// lost).
    fn note_acked(&self, peer: &str, seq: u64, starts_over: bool) {
        let mut s = self.shared();
        if let Some(p) = s.peers.get_mut(peer) {
            p.acked_by_peer = seq;
        }
        let a = s.acked.entry(peer.to_owned()).or_insert(0);
        *a = if starts_over { seq } else { (*a).max(seq) };
    }

    /// Up to where tombstones may be purged: the lowest position a data peer that ever
    /// subscribed acknowledged (a peer that never did, e.g. a passive cold server, never
    /// holds purging back; it is bootstrapped when it arrives).
    fn purge_horizon(&self) -> Option<u64> {
        if self.gate.policies.values().all(|p| p.mode == Mode::Cold) {
            return None;
        }
        // Only peers still configured: one removed from [[peer]] holds nothing back.
        let s = self.shared();
        s.acked.iter().filter(|(name, _)| self.peers.iter().any(|p| &p.name == *name)).map(|(_, seq)| *seq).min()
    }

    /// Keeps `replication/acked.json` (peer -> acknowledged position) and warns when a peer
    /// holds tombstones back so long it is about to fall off.
    async fn acked_loop(self: Arc<Self>, file: PathBuf) {
        let mut stop = self.stop.subscribe();
        let mut saved: BTreeMap<String, u64> = BTreeMap::new();
        let mut last_check = Instant::now() - Duration::from_secs(3600);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let acked = self.shared().acked.clone();
            if acked != saved {
                let text = serde_json::to_vec_pretty(&acked).unwrap_or_default();
                let f = file.clone();
                match tokio::task::spawn_blocking(move || write_durably(&f, &text)).await {
                    Ok(Ok(())) => saved = acked.clone(),
                    Ok(Err(e)) => tracing::warn!("cannot record the peers' positions in {}: {e}", file.display()),
                    Err(_) => {}
                }
            }
            let raw = &self.node.config().raw.store;
            if raw.tombstone_keep_ms == 0 || last_check.elapsed() < Duration::from_millis(raw.maintenance_interval_ms) {
                continue;
            }
            last_check = Instant::now();
            let warn_after = raw.peer_hold_max_ms.max(raw.tombstone_keep_ms) / 10 * 8;
            for (peer, seq) in acked {
                let held = self.node.tombstones_held(seq, warn_after).await.unwrap_or(0);
                let key = format!("falling-off:{peer}");
                if held > 0 {
                    let msg = format!(
                        "{peer} has not acknowledged {held} deletion(s) older than {} s: past store.peer_hold_max_ms ({} s) they are purged anyway and {peer} is bootstrapped from a snapshot when it returns",
                        warn_after / 1000,
                        raw.peer_hold_max_ms / 1000
                    );
                    if !self.shared().alarms.contains_key(&key) {
                        tracing::warn!(peer = %peer, held, "{msg}");
                    }
                    self.shared().alarms.insert(key, msg);
                } else {
                    self.shared().alarms.remove(&key);
                }
            }
        }
    }

    fn note_epoch(&self, epoch: u64) {
        let mut s = self.shared();
        s.max_epoch = s.max_epoch.max(epoch);
    }

    /// A peer that is the warm primary in a newer epoch than this node's: this node follows it
    /// (an old primary that was demoted, or cut off during a promotion, steps down here).
    async fn adopt(&self, theirs: &Hello) -> Result<(), LinkError> {
        if self.gate.failover_on {
            return Ok(()); // the consensus assigns the primary
        }
        if theirs.primary.as_deref() != Some(theirs.node.as_str()) || theirs.epoch <= self.node.epoch() {
            return Ok(());
        }
        if self.gate.primary().as_deref() == Some(theirs.node.as_str()) {
            return Ok(());
        }
        let was = self.gate.role_name();
        self.node
            .set_epoch(theirs.epoch)
            .await
            .map_err(|e| LinkError::Apply(format!("moving to epoch {} of primary {}: {e}", theirs.epoch, theirs.node)))?;
        self.gate
            .set_role(Role { primary: Some(theirs.node.clone()), accepting: true })
            .map_err(|e| LinkError::Apply(format!("recording the new primary {}: {e}", theirs.node)))?;
        tracing::warn!(primary = %theirs.node, epoch = theirs.epoch, was, "a newer warm primary: this node follows it");
        Ok(())
    }

    /// Makes this node the warm primary in a new epoch, past every epoch it has seen. The epoch
    /// is on disk before the role is, and the role before warm writes are taken.
    pub async fn promote(&self) -> Result<serde_json::Value, NodeError> {
        let previous = self.gate.primary();
        if let Some(c) = self.gate.failover.get().cloned() {
            // Through the consensus: the voters revoke the old primary's lease first.
            let before = c.assignment();
            let a = c.request_promotion().await.map_err(|e| NodeError::Refused(format!("the cluster did not promote this node: {e}")))?;
            // Assigned before this request (e.g. an automatic failover came first): nothing to
            // wait out now.
            let already = a.index == before.index && before.primary.as_deref() == Some(self.gate.us.as_str());
            let mut rx = c.watch();
            let deadline = tokio::time::sleep(Duration::from_secs(10));
            tokio::pin!(deadline);
            while !(self.gate.is_primary() && rx.borrow_and_update().index >= a.index) {
                tokio::select! {
                    _ = &mut deadline => break,
                    r = rx.changed() => if r.is_err() { break },
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            if !already {
                tracing::warn!(epoch = a.epoch, previous = ?previous, "promoted by the cluster: this node is the warm primary");
            }
            return Ok(serde_json::json!({
                "node": self.gate.us, "role": "primary", "epoch": a.epoch, "previous_primary": previous,
                "takes_writes_after_ms": if already { 0 } else { a.not_before_ms }, "already_primary": already,
            }));
        }
        if self.gate.failover_on {
            return Err(NodeError::Refused("automatic failover is starting on this node: try again in a moment".into()));
        }
        let seen = self.shared().max_epoch;
        let epoch = self.node.epoch().max(seen) + 1;
        let epoch = self.node.set_epoch(epoch).await?;
        self.gate
            .set_role(Role { primary: Some(self.gate.us.clone()), accepting: true })
            .map_err(|e| NodeError::Refused(format!("cannot record the role in {}: {e}", self.gate.role_file.display())))?;
        tracing::warn!(epoch, previous = ?previous, "promoted: this node is the warm primary");
        Ok(serde_json::json!({ "node": self.gate.us, "role": "primary", "epoch": epoch, "previous_primary": previous }))
    }

    /// Stops taking warm writes (this node stays the source of its feed), then waits until
    /// every peer acknowledged the whole feed, or `timeout`.
    pub async fn demote(&self, timeout: Duration) -> Result<serde_json::Value, NodeError> {
        if !self.gate.is_primary() {
            return Err(NodeError::Refused(format!(
                "this node is not the warm primary (the primary is {}): nothing to demote",
                self.gate.primary().unwrap_or_else(|| "unknown".into())
            )));
        }
        self.gate
            .set_role(Role { primary: Some(self.gate.us.clone()), accepting: false })
            .map_err(|e| NodeError::Refused(format!("cannot record the role in {}: {e}", self.gate.role_file.display())))?;
        // Writes that passed the gate just before it closed commit within a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let target = self.node.last_seq();
        let started = Instant::now();
        loop {
            let acked: Vec<(String, u64)> = self.shared().peers.values().map(|p| (p.name.clone(), p.acked_by_peer)).collect();
            let done = acked.iter().all(|(_, a)| *a >= target);
            if done || started.elapsed() >= timeout {
                let standbys: Vec<serde_json::Value> =
                    acked.iter().map(|(n, a)| serde_json::json!({ "name": n, "acknowledged": a, "caught_up": *a >= target })).collect();
                let message = if done {
                    format!("warm writes are closed; every standby has acknowledged the feed up to {target}: promote one of them")
                } else {
                    format!(
                        "warm writes are closed, but not every standby acknowledged the feed up to {target} within {} ms: promoting one that did not could lose writes",
                        timeout.as_millis()
                    )
                };
                tracing::warn!(target, caught_up = done, "demoted: warm writes are closed");
                return Ok(serde_json::json!({
                    "node": self.gate.us, "role": "demoted", "epoch": self.node.epoch(), "last_seq": target,
                    "caught_up": done, "standbys": standbys, "message": message,
                }));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Applies a batch, one component at a time in the order received (highest priority
    /// first). Any refused version fails the batch: its position is not saved and the link is
    /// reset, so it is received again.
    async fn apply(&self, peer: &str, batch: Batch, modes: &BTreeMap<String, ApplyMode>) -> Result<(), LinkError> {
        let mut groups: Vec<(String, Vec<RemoteVersion>, Vec<u64>)> = Vec::new();
        for c in batch.changes {
            let Some(_) = modes.get(&c.component) else {
                return Err(LinkError::Protocol(format!("{peer} sent {} which this node did not subscribe to", c.component)));
            };
            let version = RemoteVersion {
                key: c.key,
                stored: Stored { data: c.data, tombstone: c.tombstone },
                stamp: Stamp::new(c.physical, c.logical, &c.stamp_node),
                origin: c.origin,
                doc: c.doc.map(Arc::from),
            };
            match groups.last_mut() {
                Some((comp, v, s)) if *comp == c.component => {
                    v.push(version);
                    s.push(c.physical);
                }
                _ => groups.push((c.component, vec![version], vec![c.physical])),
            }
        }
        for (component, versions, stamps) in groups {
            let mode = modes.get(&component).copied().unwrap_or(ApplyMode::Merge);
            let results =
                self.node.apply_remote(&component, versions, mode).await.map_err(|e| LinkError::Apply(format!("{component}: {e}")))?;
            for r in results {
                if let Err(e) = r {
                    return Err(LinkError::Apply(format!("{component}: {e}")));
                }
            }
            let now = self.node.clock().wall_ms();
            let budget = self.gate.policies.get(&component).map_or(1_000, |p| p.lag_budget_ms);
            let mut s = self.shared();
            let lag = s.lag.entry(component.clone()).or_default();
            let mut raised = false;
            for st in &stamps {
                raised |= lag.observe(*st, now, budget);
            }
            let (over, last) = (lag.over_budget, lag.last_ms);
            if let Some(samples) = s.samples.as_mut()
                && samples.len() < 1_000_000
            {
                samples.extend(stamps.iter().map(|st| now.saturating_sub(*st)));
            }
            if raised {
                tracing::warn!(component = %component, lag_ms = last, budget_ms = budget, "replication lag over budget");
            }
            if over {
                s.alarms
                    .insert(format!("lag:{component}"), format!("{component}: replication lag {last} ms over its budget of {budget} ms"));
            } else {
                s.alarms.remove(&format!("lag:{component}"));
            }
        }
        Ok(())
    }

    /// Compares the digests `peer` sent with a heartbeat, as of its feed position `at.0`, with
    /// this node's, which applied that feed up to `at.1`; raises or clears the divergence alarm
    /// of each component (see [`state::DivergenceWatch`]).
    fn compare_digests(
        &self,
        peer: &str,
        heartbeat_ms: u64,
        at: (u64, u64),
        theirs: &[(String, String)],
        watch: &mut state::DivergenceWatch,
    ) {
        if theirs.is_empty() {
            return;
        }
        let (our_seq, ours) = self.node.digests_at(theirs.iter().map(|(c, _)| c));
        let compared: Vec<(String, String, String)> =
            theirs.iter().filter_map(|(c, t)| ours.iter().find(|(o, _)| o == c).map(|(_, d)| (c.clone(), d.clone(), t.clone()))).collect();
        let quiet = state::divergence_quiet_ms(self.node.config().raw.store.maintenance_interval_ms, heartbeat_ms);
        let now = self.node.clock().wall_ms();
        for (component, verdict) in watch.observe(now, quiet, at.0, at.1, our_seq, &compared) {
            let key = format!("diverged:{peer}:{component}");
            match verdict {
                state::Divergence::Agree => {
                    if self.shared().alarms.remove(&key).is_some() {
                        tracing::info!(peer, component = %component, "the digests agree again");
                    }
                }
                state::Divergence::Diverged { since_ms, ours, theirs } => {
                    let msg = format!(
                        "{component}: this node's digest {} differs from {peer}'s {} although it applied {peer}'s whole feed and nothing was written for {} s: a version is missing, extra or different on one of them, and replication alone will not repair it (see \"Digests that differ\" in the operations guide)",
                        &ours[..ours.len().min(16)],
                        &theirs[..theirs.len().min(16)],
                        now.saturating_sub(since_ms) / 1000
                    );
                    let mut s = self.shared();
                    if !s.alarms.contains_key(&key) {
                        tracing::error!(peer, component = %component, "{msg}");
                    }
                    s.alarms.insert(key, msg);
                }
            }
        }
    }

    /// The components whose digests this node found lastingly different from `peer`'s.
    fn diverged_from(&self, peer: &str) -> Vec<String> {
        let prefix = format!("diverged:{peer}:");
        self.shared().alarms.keys().filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned)).collect()
    }

    /// What `peer`, which follows this node's feed, reports as lastingly different from this
    /// node's digests: shown here too, as it stands in its latest heartbeat.
    fn note_reported_divergence(&self, peer: &str, components: &[String]) {
        let prefix = format!("diverged-at:{peer}:");
        let mut s = self.shared();
        s.alarms.retain(|k, _| k.strip_prefix(&prefix).is_none_or(|c| components.iter().any(|r| r == c)));
        for c in components {
            s.alarms.entry(format!("{prefix}{c}")).or_insert_with(|| {
                tracing::error!(peer, component = %c, "the peer reports that its copy differs from this node's");
                format!(
                    "{c}: {peer} reports that its copy differs from this node's although it applied this node's whole feed (see its status, and \"Digests that differ\" in the operations guide)"
                )
            });
        }
    }

    /// Records how far this node applied `peer`'s feed. The file is a hint for the next start
    /// (applying again is idempotent): it is written at once when the epoch or the warm flag
    /// moved (fencing reads them), otherwise by [`Self::positions_loop`] at most every
    /// [`POSITIONS_SAVE_MS`], so that a standby applying many small batches does not create a
    /// file for each.
    async fn save_position(&self, peer: &str, pos: Position) -> Result<(), LinkError> {
        let urgent = {
            let mut s = self.shared();
            let before = s.positions.insert(peer.to_owned(), pos);
            s.positions_dirty = true;
            before.is_none_or(|b| b.epoch != pos.epoch || b.warm != pos.warm)
        };
        if urgent { self.write_positions().await } else { Ok(()) }
    }

    /// Writes the positions file when positions moved since it was last written (and
    /// [`Self::stop`] once more).
    async fn positions_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(POSITIONS_SAVE_MS)) => {}
            }
            if self.shared().positions_dirty
                && let Err(e) = self.write_positions().await
            {
                tracing::warn!("{e}");
            }
        }
    }

    async fn write_positions(&self) -> Result<(), LinkError> {
        let _writing = self.positions_writing.lock().await;
        let text = self.positions_text()?;
        let file = self.positions_file.clone();
        tokio::task::spawn_blocking(move || write_replacing(&file, &text))
            .await
            .map_err(|e| LinkError::Apply(format!("saving the position: {e}")))?
            .map_err(|e| self.positions_write_error(&e))
    }

    fn positions_write_error(&self, e: &std::io::Error) -> LinkError {
        LinkError::Apply(format!("saving the positions in {}: {e}", self.positions_file.display()))
    }

    /// The positions as the file holds them; they count as written from here on.
    fn positions_text(&self) -> Result<Vec<u8>, LinkError> {
        let mut s = self.shared();
        s.positions_dirty = false;
        serde_json::to_vec_pretty(&s.positions).map_err(|e| LinkError::Apply(e.to_string()))
    }

    /// At stop: writes positions that moved since the last write, unless a write is under way.
    fn flush_positions(&self) {
        if !self.shared().positions_dirty {
            return;
        }
        let Ok(_writing) = self.positions_writing.try_lock() else { return };
        if let Err(e) =
            self.positions_text().and_then(|text| write_replacing(&self.positions_file, &text).map_err(|e| self.positions_write_error(&e)))
        {
            tracing::warn!("{e}");
        }
    }
}

/// Replaces a small file through a temporary one (no fsync: a hint).
fn write_replacing(file: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file)
}

/// Writes a small file durably: temporary file, fsync, rename, fsync of the directory.
/// Waits, up to two leases, until a quorum of voters has confirmed the synchronous set
/// `version` (they heard it with a lease renewal). Whether they did.
async fn wait_confirmed(c: &Coordinator, version: u64) -> bool {
    let deadline = Instant::now() + Duration::from_millis(c.timing().lease_ms * 2);
    while c.confirmed_sync_version() < version && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(c.timing().heartbeat_ms)).await;
    }
    c.confirmed_sync_version() >= version
}

pub(crate) fn write_durably(file: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = file.parent().unwrap_or_else(|| std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = file.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_comes_from_its_file_or_the_configuration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("replication").join("role.json");
        assert_eq!(load_role(&file, Some("a".into())).expect("role"), Role { primary: Some("a".into()), accepting: true });
        write_durably(&file, br#"{"primary": "b"}"#).expect("write");
        assert_eq!(load_role(&file, Some("a".into())).expect("role"), Role { primary: Some("b".into()), accepting: true });
        write_durably(&file, b"{").expect("write");
        let e = load_role(&file, None).expect_err("a broken file is an error");
        assert!(format!("{e:#}").contains("role.json"), "{e:#}");
    }

    fn gate(failover_on: bool) -> GateState {
        GateState {
            us: "a".into(),
            role: watch::channel(Role { primary: Some("a".into()), accepting: true }).0,
            role_file: PathBuf::from("role.json"),
            primary_api: Mutex::new(None),
            policies: BTreeMap::new(),
            sync_acked: watch::channel(0).0,
            sync_acked_high: watch::channel(0).0,
            ack_timeout: Duration::from_secs(1),
            sync_set: watch::channel(SyncSet::default()).0,
            sync_drop_after: Duration::from_secs(1),
            sync_file: PathBuf::from("sync_set.json"),
            sync_set_next: watch::channel(None).0,
            ack_from: watch::channel(None).0,
            member_acks: Mutex::new(BTreeMap::new()),
            failover: std::sync::OnceLock::new(),
            failover_on,
        }
    }

    #[test]
    fn with_failover_configured_no_lease_holds_until_the_coordinator_runs() {
        // The role file names this node primary: without failover it takes warm writes at once.
        let manual = gate(false);
        assert!(manual.is_primary() && manual.takes_writes());
        assert_eq!(manual.role_name(), "primary");
        // With failover configured, the links start before the coordinator: meanwhile the node
        // neither takes writes nor (at start) begins an epoch of its own.
        let automatic = gate(true);
        assert!(automatic.is_primary() && !automatic.lease_holds() && !automatic.takes_writes());
        assert_eq!(automatic.role_name(), "demoted");
    }
}
