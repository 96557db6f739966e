//! Replication decisions as pure logic: which components flow over a link and how they are
//! applied, plugin digest comparison, batch ordering by priority, send windows, lag accounting.
//! No I/O and no clock reads: callers pass events and times, so this is unit-tested here and
//! can be driven by a simulator.

use std::collections::{BTreeMap, BTreeSet};

use crate::node::config::{Ack, Mode, Priority, Profile};
use crate::node::service::ApplyMode;
use crate::peer::proto::{ComponentInfo, WireChange};

/// A component's replication policy on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComponentPolicy {
    pub mode: Mode,
    pub ack: Ack,
    pub priority: Priority,
    pub lag_budget_ms: u64,
}

/// Link timings and handling of a peer's profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkProfile {
    pub heartbeat_ms: u64,
    /// A link silent this long is reset.
    pub timeout_ms: u64,
    /// How long the sender waits to fill a batch once a change is there.
    pub batch_window_ms: u64,
    pub compress: bool,
    /// Batches sent and not yet acknowledged (bounded queue toward the peer).
    pub window: usize,
    pub max_batch: usize,
}

impl LinkProfile {
    pub fn of(p: Profile) -> LinkProfile {
        match p {
            Profile::Local => {
                LinkProfile { heartbeat_ms: 500, timeout_ms: 5_000, batch_window_ms: 0, compress: false, window: 16, max_batch: 1024 }
            }
            Profile::Geo => {
                LinkProfile { heartbeat_ms: 2_000, timeout_ms: 20_000, batch_window_ms: 20, compress: true, window: 32, max_batch: 4096 }
            }
        }
    }
}

/// Whether this node sends `component` to a subscriber: hot components flow both ways; warm
/// ones only from the primary.
pub fn sends(policy: &ComponentPolicy, we_are_primary: bool) -> bool {
    match policy.mode {
        Mode::Hot => true,
        Mode::Warm => we_are_primary,
        Mode::Cold => false,
    }
}

/// How a received version of `component` is applied, if it is accepted from `sender` at all.
pub fn apply_mode(policy: &ComponentPolicy, sender: &str, primary: Option<&str>, us: &str) -> Option<ApplyMode> {
    match policy.mode {
        Mode::Hot => Some(ApplyMode::Merge),
        Mode::Warm if primary == Some(sender) && primary != Some(us) => Some(ApplyMode::Replace),
        _ => None,
    }
}

/// What a subscriber's acknowledgements are worth, from the components its subscription
/// carries. A peer acknowledges positions of this node's feed whatever it asked for; a position
/// says what it holds only of the components that flowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AckWeight {
    /// The subscription carries every component this node sends the peer: its acknowledged
    /// position holds the purge of tombstones back.
    pub complete: bool,
    /// It is complete, this node is the warm primary, and it carries every warm component
    /// whose writes wait for a standby: the peer may be in the synchronous set, and its
    /// acknowledgements count for `standby` acks. A standby that believes another node is the
    /// primary subscribes to no warm component: its acknowledgements say nothing of warm data.
    pub synchronous: bool,
}

/// The worth of a subscription that carries `allowed`, of the components `same` the two nodes
/// define alike, under this node's `policies`.
pub fn ack_weight(
    policies: &BTreeMap<String, ComponentPolicy>,
    same: &[String],
    allowed: &std::collections::BTreeSet<String>,
    we_are_primary: bool,
) -> AckWeight {
    let complete = same.iter().filter(|c| policies.get(*c).is_some_and(|p| sends(p, we_are_primary))).all(|c| allowed.contains(c));
    let waited_for = policies.iter().filter(|(_, p)| p.mode == Mode::Warm && p.ack == Ack::Standby);
    let synchronous = complete && we_are_primary && waited_for.into_iter().all(|(c, _)| allowed.contains(c));
    AckWeight { complete, synchronous }
}

/// A component whose definitions differ between two nodes: its replication pauses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub component: String,
    pub ours: String,
    pub theirs: String,
}

impl Mismatch {
    pub fn message(&self, peer: &str) -> String {
        format!(
            "replication of {} with {peer} is paused: the plugin differs (this node: {}; {peer}: {}); install the same plugin on every node (see docs/operations.md, \"Upgrading a plugin\")",
            self.component, self.ours, self.theirs
        )
    }
}

fn describe(c: &ComponentInfo) -> String {
    format!("{} {} schema {} digest {} limits {}", c.name, c.plugin_version, c.schema_version, c.digest, c.limits)
}

/// Compares the components two nodes share: those with a different digest, schema version,
/// limits or mode. Components only one node has are simply not replicated.
pub fn compare(ours: &[ComponentInfo], theirs: &[ComponentInfo]) -> (Vec<String>, Vec<Mismatch>) {
    let theirs: BTreeMap<&str, &ComponentInfo> = theirs.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut same = Vec::new();
    let mut mismatches = Vec::new();
    for o in ours {
        let Some(t) = theirs.get(o.name.as_str()) else { continue };
        if o.digest == t.digest && o.schema_version == t.schema_version && o.limits == t.limits && o.mode == t.mode {
            same.push(o.name.clone());
        } else {
            let (mut a, mut b) = (describe(o), describe(t));
            if o.mode != t.mode {
                a = format!("mode {} / {a}", o.mode);
                b = format!("mode {} / {b}", t.mode);
            }
            mismatches.push(Mismatch { component: o.name.clone(), ours: a, theirs: b });
        }
    }
    (same, mismatches)
}

/// Orders a batch so that higher-priority components go first (stable within a priority, so a
/// component's versions keep their feed order).
pub fn order_by_priority(changes: &mut [WireChange], priority: impl Fn(&str) -> Priority) {
    changes.sort_by_key(|c| priority(&c.component));
}

/// The sender's view of one subscriber: what was sent, what was acknowledged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendWindow {
    /// Feed positions of batches sent and not yet acknowledged, in order.
    in_flight: std::collections::VecDeque<u64>,
    pub sent_up_to: u64,
    pub acked: u64,
}

impl SendWindow {
    pub fn new(after: u64) -> SendWindow {
        SendWindow { in_flight: Default::default(), sent_up_to: after, acked: after }
    }
    /// Whether another batch may be sent (bounded queue toward the peer).
    pub fn can_send(&self, window: usize) -> bool {
        self.in_flight.len() < window
    }
    pub fn sent(&mut self, up_to: u64) {
        self.sent_up_to = self.sent_up_to.max(up_to);
        self.in_flight.push_back(up_to);
    }
    /// An acknowledgement; returns false when it acknowledges something never sent.
    pub fn acked(&mut self, seq: u64) -> bool {
        if seq > self.sent_up_to {
            return false;
        }
        self.acked = self.acked.max(seq);
        while self.in_flight.front().is_some_and(|&s| s <= seq) {
            self.in_flight.pop_front();
        }
        true
    }
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

/// Replication lag of one component on a receiver.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lag {
    pub last_ms: u64,
    pub max_ms: u64,
    pub applied: u64,
    pub over_budget: bool,
}

impl Lag {
    /// A version stamped at `stamp_ms` applied at `now_ms`; returns true when it raises the alarm
    /// (the lag crossed the budget upward).
    pub fn observe(&mut self, stamp_ms: u64, now_ms: u64, budget_ms: u64) -> bool {
        let lag = now_ms.saturating_sub(stamp_ms);
        self.last_ms = lag;
        self.max_ms = self.max_ms.max(lag);
        self.applied += 1;
        let was = self.over_budget;
        self.over_budget = lag > budget_ms;
        self.over_budget && !was
    }
}

/// Warm fencing on a receiver: batches from an older epoch than the newest seen are refused.
pub fn fence(batch_epoch: u64, newest_seen: u64) -> Result<u64, String> {
    if batch_epoch < newest_seen {
        Err(format!("warm batch of epoch {batch_epoch} refused: epoch {newest_seen} has been seen (fenced)"))
    } else {
        Ok(batch_epoch)
    }
}

/// Where a peer subscribing at `position` in this node's feed resumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// From its position: the usual case.
    At(u64),
    /// The position is past the feed's end and the link is hot only: from where the feed ended
    /// when this node started. Merging is idempotent, so what the peer already has costs
    /// nothing, and the writes this node took since it started are not skipped as ones the peer
    /// believes it has.
    RolledBack(u64),
    /// The position is past the feed's end and the link carries warm components: nothing flows
    /// until an operator re-seeds one side (the message says how).
    Refuse(String),
}

/// `started` is where this node's feed ended when it started, `last` where it ends now.
///
/// A position past the end of this node's feed means this node's store went back in time (a VM
/// snapshot or an older copy of its data directory was restored, or its disk lost writes it had
/// confirmed): the peer holds versions this node no longer has, and this node's new writes take
/// positions the peer believes it applied. Streaming from the peer's position would skip them
/// without a word; a warm standby can be made whole only by an operator's choice of which
/// side's data to keep.
///
/// `last` is the end the position is checked against: the feed's end now, or, for a peer that
/// had acknowledged more than the store held when the node started, `started`. Otherwise only a
/// position past the current end is known to be wrong: a peer's first subscription since this
/// node started may legitimately be past where the feed ended then (a position a restore from
/// this node's backup set). So a store that went back in time together with its record of what
/// peers acknowledged is seen only while its feed has not grown past the peer's position again;
/// peers reconnect at once, so this is the case unless the node took more writes than the peer
/// was ahead by before the peer was back.
pub fn resume(position: u64, started: u64, last: u64, warm: bool, peer: &str, us: &str) -> Resume {
    if position <= last {
        return Resume::At(position);
    }
    if !warm {
        return Resume::RolledBack(started.min(last));
    }
    Resume::Refuse(format!(
        "{peer} holds {us}'s feed up to {position}, past its end at {last}: {us}'s store went back in time (a VM snapshot or an older copy \
         of its data directory was restored, or its disk lost writes it had confirmed), so {peer} holds warm writes {us} does not have. \
         Nothing flows from {us} to {peer} until one side is re-seeded. To keep {peer}'s data: stop {us}, move its store.db (with \
         store.db-wal and store.db-shm) and its replication/ directory aside, run `tandem promote` on {peer}, then start {us} (it \
         rejoins as a standby and is bootstrapped from {peer}). To keep {us}'s data: do the same on {peer} instead, without the promotion."
    ))
}

/// How long two nodes' digests of a component may differ while neither node's feed moves
/// before the divergence alarm: twice the maintenance interval (retention and tombstone purges
/// run on each node's own tick, so two stores that agree can differ for that long) and at least
/// four heartbeats.
pub fn divergence_quiet_ms(maintenance_interval_ms: u64, heartbeat_ms: u64) -> u64 {
    maintenance_interval_ms.saturating_mul(2).max(heartbeat_ms.saturating_mul(4))
}

/// What a comparison of digests decided for one component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Divergence {
    /// The digests agree: any alarm is over.
    Agree,
    /// They differed (this node's digest, the peer's) for the whole quiet time with nothing
    /// written or purged on either node.
    Diverged { since_ms: u64, ours: String, theirs: String },
}

/// Watches the digests a peer sends with its heartbeats against this node's own, for the
/// components that flow from that peer. Two stores that applied the same versions have the
/// same digests; a difference that stays while neither feed moves means a version is missing,
/// extra or different on one of them (a store restored or edited by hand, a disk that lost
/// writes) and that replication alone will not repair it.
#[derive(Clone, Debug, Default)]
pub struct DivergenceWatch {
    /// Component -> since when it has differed, and what did not move since.
    differing: BTreeMap<String, (u64, Unmoved)>,
}

/// What must stay as it is for a difference to count as lasting: both feed positions and both
/// digests (purges move a digest without moving a feed: a component whose old records age out
/// on each node's own tick differs for a moment at every tick).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Unmoved {
    peer_seq: u64,
    our_seq: u64,
    ours: String,
    theirs: String,
}

impl DivergenceWatch {
    /// A heartbeat from the peer: its digests hold at its feed position `peer_seq`, this node
    /// applied that feed up to `applied` and its own feed is at `our_seq`; `compared` lists
    /// (component, ours, theirs). Returns a verdict for each component it can decide.
    pub fn observe(
        &mut self,
        now_ms: u64,
        quiet_ms: u64,
        peer_seq: u64,
        applied: u64,
        our_seq: u64,
        compared: &[(String, String, String)],
    ) -> Vec<(String, Divergence)> {
        let mut out = Vec::new();
        if applied < peer_seq {
            // Versions still on their way: nothing to compare yet.
            self.differing.clear();
            return out;
        }
        for (component, ours, theirs) in compared {
            if ours == theirs {
                self.differing.remove(component);
                out.push((component.clone(), Divergence::Agree));
                continue;
            }
            let now = Unmoved { peer_seq, our_seq, ours: ours.clone(), theirs: theirs.clone() };
            let entry = self.differing.entry(component.clone()).or_insert((now_ms, now.clone()));
            if entry.1 != now {
                // Something was written or purged since: start again.
                *entry = (now_ms, now);
            }
            if now_ms.saturating_sub(entry.0) >= quiet_ms {
                out.push((component.clone(), Divergence::Diverged { since_ms: entry.0, ours: ours.clone(), theirs: theirs.clone() }));
            }
        }
        out
    }
}

/// Where a synchronous-set version's epoch starts: the bits below count the changes of one
/// primary in that epoch. Versions before this scheme were wall-clock milliseconds, below
/// `1 << 42` until the year 2109, so every set of epoch 1 or later is newer than those.
const SYNC_EPOCH_SHIFT: u32 = 42;
/// The largest epoch that orders synchronous sets by itself (about four million promotions).
const SYNC_EPOCH_MAX: u64 = (1 << (64 - SYNC_EPOCH_SHIFT)) - 1;

/// The version of the next synchronous set a primary in `epoch` announces, after its newest
/// one `last`. Voters keep the set of the highest version they hear, and the new primary's
/// standbys are chosen from it, so versions must not follow wall clocks: a new primary whose
/// clock is behind the old one's would go unheard, and a clock stepped back would leave the
/// voters with a set a member had left (promoting it after writes were acknowledged without
/// it). A set of a newer epoch is newer than every set of an older one, and within an epoch
/// each change is newer than the one before.
pub fn next_sync_version(last: u64, epoch: u64) -> u64 {
    if epoch > SYNC_EPOCH_MAX {
        tracing::error!(epoch, "epoch past {SYNC_EPOCH_MAX}: synchronous sets are ordered by their changes alone from now on");
    }
    let floor = epoch.min(SYNC_EPOCH_MAX) << SYNC_EPOCH_SHIFT;
    last.saturating_add(1).max(floor)
}

/// Whether `member`'s acknowledgements count for `standby` acks, with automatic failover:
/// `ack_from` holds the members in every synchronous set announced since the newest one a
/// quorum of voters confirmed (`None`: every member counts).
pub fn ack_counts(ack_from: Option<&BTreeSet<String>>, member: &str) -> bool {
    ack_from.is_none_or(|a| a.contains(member))
}

/// `ack_from` once a set of `members` is announced too: those of them that already counted.
pub fn acks_within<'a>(ack_from: Option<&BTreeSet<String>>, members: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
    members.into_iter().filter(|m| ack_counts(ack_from, m)).cloned().collect()
}

/// Reconnection delay after `failures` consecutive failures (capped exponential).
pub fn backoff_ms(failures: u32) -> u64 {
    (100u64 << failures.min(5)).min(3_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synchronous_set_versions_grow_with_each_change_and_each_epoch_whatever_the_clock() {
        // A set recorded before versions were: its wall-clock version is older than any epoch's.
        let wall_era = 1_796_000_000_000u64; // December 2026, in ms
        let first = next_sync_version(wall_era, 1);
        assert!(first > wall_era, "{first}");
        // Each change of one primary is newer than the one before.
        let second = next_sync_version(first, 1);
        assert_eq!(second, first + 1);
        // A new primary's set is newer than every set of the old epoch, however many changes.
        let old_epoch_last = next_sync_version((2u64 << 42) + 1_000_000, 2);
        let new_primary = next_sync_version(0, 3);
        assert!(new_primary > old_epoch_last, "{new_primary} {old_epoch_last}");
        // The new primary's own older set (from when it was primary before) does not hold it back.
        assert!(next_sync_version(old_epoch_last, 3) > old_epoch_last);
        assert_eq!(next_sync_version(old_epoch_last, 3), 3u64 << 42);
        // Past the epochs the scheme orders, still strictly growing.
        assert_eq!(next_sync_version(u64::MAX - 1, u64::MAX), u64::MAX);
        assert!(next_sync_version(SYNC_EPOCH_MAX << 42, SYNC_EPOCH_MAX + 5) > SYNC_EPOCH_MAX << 42);
    }

    #[test]
    fn divergence_is_raised_only_after_a_quiet_time_and_cleared_by_agreement() {
        let quiet = divergence_quiet_ms(10_000, 500);
        assert_eq!(quiet, 20_000);
        assert_eq!(divergence_quiet_ms(100, 500), 2_000);
        let c = |ours: &str, theirs: &str| vec![("trunks".to_owned(), ours.to_owned(), theirs.to_owned())];
        let mut w = DivergenceWatch::default();
        // Not caught up: undecided, whatever the digests say.
        assert!(w.observe(0, quiet, 10, 9, 5, &c("x", "y")).is_empty());
        // Caught up and differing: undecided until the quiet time has passed.
        assert!(w.observe(1_000, quiet, 10, 10, 5, &c("x", "y")).is_empty());
        assert!(w.observe(20_000, quiet, 10, 10, 5, &c("x", "y")).is_empty());
        assert_eq!(
            w.observe(21_000, quiet, 10, 10, 5, &c("x", "y")),
            vec![("trunks".to_owned(), Divergence::Diverged { since_ms: 1_000, ours: "x".into(), theirs: "y".into() })]
        );
        // A purge (a digest moves, no feed does) starts the wait again.
        assert!(w.observe(21_500, quiet, 10, 10, 5, &c("x", "w")).is_empty());
        assert!(w.observe(41_000, quiet, 10, 10, 5, &c("x", "w")).is_empty());
        assert_eq!(w.observe(41_500, quiet, 10, 10, 5, &c("x", "w")).len(), 1);
        // So does a write on either side.
        assert!(w.observe(42_000, quiet, 11, 11, 5, &c("x", "w")).is_empty());
        assert!(w.observe(50_000, quiet, 11, 11, 6, &c("x", "w")).is_empty());
        assert!(w.observe(69_000, quiet, 11, 11, 6, &c("x", "w")).is_empty());
        assert_eq!(w.observe(70_000, quiet, 11, 11, 6, &c("x", "w")).len(), 1);
        // Agreement clears at once; a later difference waits the whole quiet time again.
        assert_eq!(w.observe(71_000, quiet, 11, 11, 6, &c("x", "x")), vec![("trunks".to_owned(), Divergence::Agree)]);
        assert!(w.observe(72_000, quiet, 11, 11, 6, &c("x", "z")).is_empty());
        assert!(w.observe(80_000, quiet, 11, 11, 6, &c("x", "z")).is_empty());
        // Falling behind forgets what was seen.
        assert!(w.observe(91_000, quiet, 12, 11, 6, &c("x", "z")).is_empty());
        assert!(w.observe(92_000, quiet, 12, 12, 6, &c("x", "z")).is_empty());
        assert!(w.observe(111_000, quiet, 12, 12, 6, &c("x", "z")).is_empty());
        assert_eq!(w.observe(112_000, quiet, 12, 12, 6, &c("x", "z")).len(), 1);
    }

    #[test]
    fn a_position_past_the_feeds_end_is_resumed_from_the_end_when_hot_and_refused_when_warm() {
        assert_eq!(resume(0, 0, 0, true, "b", "a"), Resume::At(0));
        assert_eq!(resume(40, 40, 40, true, "b", "a"), Resume::At(40));
        assert_eq!(resume(12, 40, 45, true, "b", "a"), Resume::At(12));
        // Past where the feed ended at start (a position a restore set, or one acknowledged
        // since), within its end now.
        assert_eq!(resume(45, 40, 45, true, "b", "a"), Resume::At(45));
        // Past the end: hot links resume from where the feed ended at start, so that the
        // writes taken since are sent too.
        assert_eq!(resume(47, 40, 45, false, "b", "a"), Resume::RolledBack(40));
        assert_eq!(resume(41, 40, 40, false, "b", "a"), Resume::RolledBack(40));
        match resume(47, 40, 45, true, "b", "a") {
            Resume::Refuse(m) => {
                assert!(m.contains("b holds a's feed up to 47, past its end at 45"), "{m}");
                assert!(m.contains("`tandem promote` on b"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    fn pol(mode: Mode) -> ComponentPolicy {
        ComponentPolicy { mode, ack: Ack::Local, priority: Priority::Normal, lag_budget_ms: 1000 }
    }

    fn info(name: &str, digest: &str) -> ComponentInfo {
        ComponentInfo {
            name: name.into(),
            mode: "hot".into(),
            digest: digest.into(),
            plugin_version: "1.0.0".into(),
            schema_version: 1,
            limits: "{}".into(),
        }
    }

    #[test]
    fn warm_flows_from_the_primary_only_and_hot_both_ways() {
        assert!(sends(&pol(Mode::Warm), true));
        assert!(!sends(&pol(Mode::Warm), false));
        assert!(sends(&pol(Mode::Hot), false));
        assert!(!sends(&pol(Mode::Cold), true));
        assert_eq!(apply_mode(&pol(Mode::Warm), "a", Some("a"), "b"), Some(ApplyMode::Replace));
        assert_eq!(apply_mode(&pol(Mode::Warm), "c", Some("a"), "b"), None);
        assert_eq!(apply_mode(&pol(Mode::Warm), "b", Some("a"), "a"), None);
        assert_eq!(apply_mode(&pol(Mode::Hot), "c", Some("a"), "b"), Some(ApplyMode::Merge));
    }

    #[test]
    fn acknowledgements_count_only_for_the_components_that_flowed() {
        let standby_ack = ComponentPolicy { ack: Ack::Standby, ..pol(Mode::Warm) };
        let policies: BTreeMap<String, ComponentPolicy> =
            [("trunks".to_owned(), standby_ack), ("reports".to_owned(), pol(Mode::Warm)), ("crm".to_owned(), pol(Mode::Hot))].into();
        let same: Vec<String> = ["trunks", "reports", "crm"].map(str::to_owned).into();
        let set = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<std::collections::BTreeSet<String>>();
        let both = AckWeight { complete: true, synchronous: true };
        assert_eq!(ack_weight(&policies, &same, &set(&["trunks", "reports", "crm"]), true), both);
        // A standby that believes it is the primary asks for the hot components only.
        assert_eq!(ack_weight(&policies, &same, &set(&["crm"]), true), AckWeight::default());
        assert_eq!(ack_weight(&policies, &same, &set(&[]), true), AckWeight::default());
        // On a standby, only hot components flow out: complete, never synchronous.
        assert_eq!(ack_weight(&policies, &same, &set(&["crm"]), false), AckWeight { complete: true, synchronous: false });
        // A standby-ack component whose plugin differs flows nowhere: no synchronous standby.
        let differs: Vec<String> = ["reports", "crm"].map(str::to_owned).into();
        assert_eq!(ack_weight(&policies, &differs, &set(&["reports", "crm"]), true), AckWeight { complete: true, synchronous: false });
        // Without standby acks, a complete subscription is all it takes.
        let local: BTreeMap<String, ComponentPolicy> = [("trunks".to_owned(), pol(Mode::Warm))].into();
        assert_eq!(ack_weight(&local, &["trunks".to_owned()], &set(&["trunks"]), true), both);
    }

    #[test]
    fn digest_mismatch_names_both_versions() {
        let (same, bad) = compare(&[info("crm", "x"), info("ivr", "y"), info("only-ours", "z")], &[info("crm", "x"), info("ivr", "w")]);
        assert_eq!(same, vec!["crm".to_owned()]);
        assert_eq!(bad.len(), 1);
        let m = bad[0].message("b");
        assert!(m.contains("digest y") && m.contains("digest w") && m.contains("ivr"), "{m}");
    }

    #[test]
    fn priority_orders_stably() {
        let ch = |c: &str, seq| WireChange {
            seq,
            component: c.into(),
            key: "k".into(),
            data: vec![],
            tombstone: false,
            physical: 0,
            logical: 0,
            stamp_node: "a".into(),
            origin: "a".into(),
            doc: None,
        };
        let mut v = vec![ch("reports", 1), ch("trunks", 2), ch("reports", 3), ch("trunks", 4)];
        order_by_priority(&mut v, |c| if c == "trunks" { Priority::High } else { Priority::Low });
        assert_eq!(v.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![2, 4, 1, 3]);
    }

    #[test]
    fn send_window_is_bounded_and_acks_free_it() {
        let mut w = SendWindow::new(10);
        assert!(w.can_send(2));
        w.sent(20);
        w.sent(30);
        assert!(!w.can_send(2));
        assert!(!w.acked(31));
        assert!(w.acked(20));
        assert!(w.can_send(2));
        assert_eq!((w.acked, w.in_flight()), (20, 1));
        assert!(w.acked(30));
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn lag_alarm_rises_once_and_clears() {
        let mut l = Lag::default();
        assert!(!l.observe(100, 150, 100));
        assert!(l.observe(100, 300, 100));
        assert!(!l.observe(100, 400, 100));
        assert!(!l.observe(390, 400, 100));
        assert!(!l.over_budget);
        assert_eq!(l.max_ms, 300);
    }

    #[test]
    fn fencing_refuses_older_epochs() {
        assert_eq!(fence(3, 3), Ok(3));
        assert_eq!(fence(4, 3), Ok(4));
        assert!(fence(2, 3).is_err());
        assert_eq!(backoff_ms(0), 100);
        assert_eq!(backoff_ms(30), 3_000);
    }
}
