//! Leases and endorsements: the pure decisions that keep a cut-off primary from taking writes
//! once any other node may be promoted. Every function takes the time (ms of the deciding
//! node's own monotonic clock) as an argument and does no I/O.
//!
//! The argument, with `L` the lease, `m` the drift margin (`L * drift`), and clocks whose rates
//! differ by less than `drift`:
//! - the primary sends lease requests; a voter grants one only while the consensus state names
//!   the requester as primary and it has not endorsed the requester's removal;
//! - the primary takes (and acknowledges) writes only while a quorum of voters, itself
//!   included, granted requests it *sent* less than `L - m` ago (its clock);
//! - a voter endorses a promotion only `L + m` (its clock) after it last granted the primary a
//!   lease, and grants it no lease after that.
//!
//! A promotion needs endorsements from a quorum, which shares a voter with every lease quorum:
//! that voter granted its last lease at some instant `g`; the primary's lease from it ends
//! before `g + L - m` (primary clock) and the endorsement happens after `g + L + m` (voter
//! clock): with drift under `m / L`, the lease is over before the endorsement.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Lease timing, per link profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// The lease (ms).
    pub lease_ms: u64,
    /// The largest clock-rate difference between two nodes, in parts per thousand.
    pub drift_permille: u64,
    /// How often the primary renews its lease (ms): the heartbeat.
    pub heartbeat_ms: u64,
}

impl Timing {
    /// The local profile: a 500 ms lease renewed every 50 ms, 10% drift margin.
    pub const LOCAL: Timing = Timing { lease_ms: 500, drift_permille: 100, heartbeat_ms: 50 };
    /// The geo profile: a 3 s lease renewed every 300 ms.
    pub const GEO: Timing = Timing { lease_ms: 3_000, drift_permille: 100, heartbeat_ms: 300 };

    pub fn margin_ms(&self) -> u64 {
        self.lease_ms.saturating_mul(self.drift_permille) / 1_000
    }

    /// How long a granted request keeps the primary's lease, from when it was sent.
    pub fn hold_ms(&self) -> u64 {
        self.lease_ms.saturating_sub(self.margin_ms())
    }

    /// How long a voter refuses to endorse a promotion after it last granted the primary.
    pub fn refuse_ms(&self) -> u64 {
        self.lease_ms.saturating_add(self.margin_ms())
    }

    /// Checks the timing is usable: the heartbeat must renew the lease several times over.
    pub fn check(&self) -> Result<(), String> {
        if self.drift_permille == 0 || self.drift_permille >= 500 {
            return Err(format!("the drift margin must be between 1 and 499 per mille, not {}", self.drift_permille));
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms.saturating_mul(3) > self.hold_ms() {
            return Err(format!(
                "the heartbeat ({} ms) must fit at least three times in the lease less its margin ({} ms)",
                self.heartbeat_ms,
                self.hold_ms()
            ));
        }
        Ok(())
    }
}

/// The primary's side: which voters granted which request.
#[derive(Clone, Debug, Default)]
pub struct Holder {
    /// Voter -> when the newest request it granted was sent (holder's clock).
    grants: BTreeMap<String, u64>,
    /// No lease before this instant (a manual promotion waits out the old primary's lease).
    not_before: u64,
    /// The newest synchronous-set version a quorum granted requests carrying, per voter.
    sync_versions: BTreeMap<String, u64>,
}

impl Holder {
    /// Starts holding (a new primary): no grants yet, no lease before `not_before`.
    pub fn new(not_before: u64) -> Holder {
        Holder { not_before, ..Default::default() }
    }

    /// `voter` granted the request sent at `sent_at`, which carried synchronous-set `version`.
    pub fn granted(&mut self, voter: &str, sent_at: u64, version: u64) {
        let g = self.grants.entry(voter.to_owned()).or_insert(sent_at);
        *g = (*g).max(sent_at);
        let v = self.sync_versions.entry(voter.to_owned()).or_insert(version);
        *v = (*v).max(version);
    }

    /// Until when the lease holds (exclusive), for a cluster of `voters` voters; `None` when a
    /// quorum never granted. This node's own grant counts only if its own voter gave it, under
    /// the same rules as any other (it may have granted another node a lease just before).
    pub fn valid_until(&self, voters: usize, timing: &Timing) -> Option<u64> {
        let needed = quorum(voters);
        if voters < 3 {
            return None; // failover needs three voters
        }
        let mut sent: Vec<u64> = self.grants.values().copied().collect();
        sent.sort_unstable_by(|a, b| b.cmp(a));
        let oldest_needed = *sent.get(needed - 1)?;
        let until = oldest_needed.saturating_add(timing.hold_ms());
        (until > self.not_before).then_some(until)
    }

    /// Whether the lease holds at `now`.
    pub fn valid(&self, now: u64, voters: usize, timing: &Timing) -> bool {
        now >= self.not_before && self.valid_until(voters, timing).is_some_and(|u| now < u)
    }

    /// The newest synchronous-set version a quorum (this node's own grant included) has seen.
    pub fn confirmed_sync_version(&self, voters: usize) -> u64 {
        let mut v: Vec<u64> = self.sync_versions.values().copied().collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.get(quorum(voters) - 1).copied().unwrap_or(0)
    }
}

/// A voter's side: when it last granted each primary, and whom it endorsed the removal of.
#[derive(Clone, Debug)]
pub struct Voter {
    /// When this voter started: it may have granted leases before a restart, so it counts as
    /// having heard every primary then.
    started_at: u64,
    /// The silence baseline of each primary: its last grant, or its assignment.
    heard: BTreeMap<String, u64>,
    /// When this voter last granted each node a lease.
    granted: BTreeMap<String, u64>,
    /// The primaries whose removal this voter endorsed, and the newest assignment index they
    /// were endorsed under: an assignment past it ends them.
    revoked: BTreeSet<String>,
    assignment: u64,
}

/// Why a lease request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotThePrimary(Option<String>),
    Revoked,
    /// A lease this voter granted another node (or may have, before it restarted) may still hold.
    Handoff(u64),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotThePrimary(Some(p)) => write!(f, "the consensus state names {p} as the primary"),
            Refusal::NotThePrimary(None) => write!(f, "the consensus state names no primary yet"),
            Refusal::Revoked => write!(f, "this voter endorsed a promotion: it grants this primary no lease until the next assignment"),
            Refusal::Handoff(ms) => write!(f, "a lease this voter granted another node may hold {ms} ms more"),
        }
    }
}

impl Voter {
    pub fn new(now: u64) -> Voter {
        Voter { started_at: now, heard: BTreeMap::new(), granted: BTreeMap::new(), revoked: BTreeSet::new(), assignment: 0 }
    }

    /// The endorsements a voter saved before it restarted ([`Voter::endorsements`]): they hold
    /// until it applies an assignment past the one they were given under.
    pub fn restore(&mut self, assignment: u64, revoked: BTreeSet<String>) {
        self.assignment = assignment;
        self.revoked = revoked;
    }

    /// What a voter must save before it answers an endorsement: the assignment index it
    /// endorsed under, and every primary it endorsed removing.
    pub fn endorsements(&self) -> (u64, BTreeSet<String>) {
        (self.assignment, self.revoked.clone())
    }

    /// A lease request from `from` while the consensus state names `assigned`. Besides the
    /// assignment and endorsements, a voter never grants a node a lease while one it granted
    /// another node may still hold (`lease + margin` after that grant), nor in the first
    /// `lease + margin` after it started (it may have granted anyone before a restart): so a
    /// change of primary reaching a voter, however it came about (a promotion committed late,
    /// by another leader, after a replaced voter lost its endorsements), never gives two nodes a
    /// lease from it at once.
    pub fn on_lease(&mut self, from: &str, assigned: Option<&str>, now: u64, timing: &Timing) -> Result<(), Refusal> {
        if assigned != Some(from) {
            return Err(Refusal::NotThePrimary(assigned.map(str::to_owned)));
        }
        if self.revoked.contains(from) {
            return Err(Refusal::Revoked);
        }
        let last_other = self.granted.iter().filter(|(n, _)| n.as_str() != from).map(|(_, t)| *t).max().unwrap_or(0).max(self.started_at);
        let free_at = last_other.saturating_add(timing.refuse_ms());
        if now < free_at {
            return Err(Refusal::Handoff(free_at - now));
        }
        for map in [&mut self.heard, &mut self.granted] {
            let h = map.entry(from.to_owned()).or_insert(now);
            *h = (*h).max(now);
        }
        Ok(())
    }

    /// How long since this voter last granted `primary` a lease (or started).
    pub fn silent_ms(&self, primary: &str, now: u64) -> u64 {
        now.saturating_sub(self.heard.get(primary).copied().unwrap_or(self.started_at).max(self.started_at))
    }

    /// Whether this voter would endorse removing `primary` now.
    pub fn may_endorse(&self, primary: &str, now: u64, timing: &Timing) -> bool {
        self.revoked.contains(primary) || self.silent_ms(primary, now) >= timing.refuse_ms()
    }

    /// Endorses removing `primary`, the primary of assignment `index` (it gets no lease from
    /// this voter afterwards, until an assignment past `index`). `forced` is a manual
    /// promotion: the new primary then waits out the lease (see [`Timing::refuse_ms`]).
    pub fn endorse(&mut self, primary: &str, index: u64, now: u64, timing: &Timing, forced: bool) -> bool {
        if forced || self.may_endorse(primary, now, timing) {
            self.revoked.insert(primary.to_owned());
            self.assignment = self.assignment.max(index);
            true
        } else {
            false
        }
    }

    /// Whether this voter endorsed removing `primary`.
    pub fn revoked(&self, primary: &str) -> bool {
        self.revoked.contains(primary)
    }

    /// Assignment `index` naming `primary` was applied at `now`: endorsements given under an
    /// earlier one end (not those given under this one, or a later one this voter had not
    /// applied yet when asked), and the new primary's silence counts from now (it had no reason
    /// to renew a lease before).
    pub fn on_assignment(&mut self, primary: &str, index: u64, now: u64) {
        if index > self.assignment {
            self.revoked.clear();
            self.assignment = index;
        }
        let h = self.heard.entry(primary.to_owned()).or_insert(now);
        *h = (*h).max(now);
    }
}

/// The quorum of `voters`.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// What a voter told the deciding node in a poll.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollReply {
    pub node: String,
    /// It holds data (a witness does not).
    pub data: bool,
    /// How long since it last granted the primary a lease.
    pub silent_ms: u64,
    pub may_endorse: bool,
    pub revoked: bool,
    /// Its position in the primary's feed, and its epoch.
    pub applied: u64,
    pub epoch: u64,
    /// The newest synchronous set it heard from the primary.
    pub sync: SyncView,
    /// The primary it believes in (its durable role), for the first assignment.
    pub believes: Option<String>,
    /// Its store's id (made when the store was created): a server replaced under the same name
    /// has another one.
    #[serde(default)]
    pub store: String,
    /// The consensus leader it follows and its term (a replacement admits a leader only when
    /// the other voters agree on both).
    #[serde(default)]
    pub leader: Option<String>,
    #[serde(default)]
    pub term: u64,
    /// Its consensus log holds an entry past the initial membership (a leader was elected
    /// once), or it is rejoining. A voter that starts with no consensus state and hears this
    /// replaces a lost one.
    #[serde(default)]
    pub history: bool,
    /// It is rejoining or probing (see `Coordinator::abstains`): it follows no leader yet, so
    /// a rejoining voter does not wait for it to agree on one.
    #[serde(default)]
    pub abstaining: bool,
}

/// The synchronous set as the primary announces it in lease requests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncView {
    pub version: u64,
    /// Whether promotions are restricted to the set (some warm component acknowledges with
    /// `standby`).
    pub required: bool,
    /// Member -> the primary's position from which it holds every acknowledged write.
    pub members: BTreeMap<String, u64>,
    /// Member -> the id of the store that joined (when the primary knew it): another store
    /// under that name (a replaced server) is not the member.
    #[serde(default)]
    pub stores: BTreeMap<String, String>,
}

/// Which node to promote when `primary` is gone: a data node that answered, never the old
/// primary; the one furthest in the primary's feed, by name on a tie. When promotions are
/// restricted to the freshest synchronous set known: a member of it, complete from its join
/// position and with the store that joined (when the set names it), and only once every
/// member has answered with that store, as far as the furthest of them. A `standby`-ack write
/// waits for one member, any of them, and a member holds a prefix of the primary's feed: the
/// newest acknowledged write is on the furthest member, and on no node the others can vouch
/// for. A member whose server was replaced (another store) may have been the only holder of
/// some, besides the primary: no promotion then, until the primary returns or an operator
/// decides.
pub fn pick_candidate(primary: &str, replies: &[PollReply]) -> Option<(String, u64)> {
    let sync = replies.iter().map(|r| &r.sync).max_by_key(|s| s.version)?;
    let answered = |m: &String| replies.iter().any(|r| r.node == *m && sync.stores.get(m).is_none_or(|store| *store == r.store));
    // The old primary is a member only of a set from before its own promotion (it never held
    // a lease, or a quorum would have heard its own set): it may then hold writes acknowledged
    // in the epoch before, like any member, and must answer too.
    if sync.required && !sync.members.keys().all(answered) {
        return None;
    }
    let furthest_member = replies.iter().filter(|r| sync.members.contains_key(&r.node)).map(|r| r.applied).max();
    replies
        .iter()
        .filter(|r| r.data && r.node != primary && r.may_endorse)
        .filter(|r| {
            !sync.required
                || (sync.members.get(&r.node).is_some_and(|from| r.applied >= *from)
                    && sync.stores.get(&r.node).is_none_or(|store| *store == r.store)
                    && furthest_member.is_none_or(|top| r.applied >= top))
        })
        .max_by(|a, b| a.applied.cmp(&b.applied).then_with(|| b.node.cmp(&a.node)))
        .map(|r| (r.node.clone(), r.applied))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing { lease_ms: 1_000, drift_permille: 100, heartbeat_ms: 100 };

    #[test]
    fn a_lease_needs_a_quorum_of_recent_grants() {
        let mut h = Holder::new(0);
        assert!(!h.valid(10, 3, &T), "no grant, no lease");
        h.granted("w", 100, 0);
        assert!(!h.valid(150, 3, &T), "one grant of three is not a quorum, even its own would be");
        h.granted("self", 120, 0);
        assert!(h.valid(150, 3, &T), "its own voter and one other of three is a quorum");
        assert!(h.valid(999, 3, &T));
        assert!(!h.valid(1_000, 3, &T), "the lease ends lease - margin after the request was sent");
        assert!(!h.valid(150, 5, &T), "two of five is not a quorum");
        h.granted("x", 50, 0);
        assert_eq!(h.valid_until(5, &T), Some(950), "the oldest of the three grants needed bounds it");
        assert_eq!(Holder::new(0).valid_until(1, &T), None);
    }

    #[test]
    fn a_manual_promotion_waits_out_the_old_lease() {
        let mut h = Holder::new(2_000);
        h.granted("self", 1_500, 0);
        h.granted("w", 1_500, 0);
        assert!(!h.valid(1_600, 3, &T));
        h.granted("self", 1_900, 0);
        h.granted("w", 1_900, 0);
        assert!(h.valid(2_000, 3, &T));
    }

    #[test]
    fn a_voter_grants_only_the_assigned_primary_and_not_after_endorsing() {
        let mut v = Voter::new(0);
        assert_eq!(v.on_lease("a", Some("a"), 5, &T), Err(Refusal::Handoff(1_095)), "a voter just started grants nothing yet");
        let t0 = 1_100;
        assert_eq!(v.on_lease("a", Some("b"), t0, &T), Err(Refusal::NotThePrimary(Some("b".into()))));
        assert_eq!(v.on_lease("a", Some("a"), t0, &T), Ok(()));
        assert!(!v.may_endorse("a", t0 + 1_099, &T), "silent for less than lease + margin");
        assert!(!v.endorse("a", 1, t0 + 1_000, &T, false));
        assert!(v.endorse("a", 1, t0 + 1_100, &T, false));
        assert_eq!(v.on_lease("a", Some("a"), t0 + 1_200, &T), Err(Refusal::Revoked));
        v.on_assignment("a", 2, t0 + 1_250);
        assert_eq!(v.on_lease("a", Some("a"), t0 + 1_300, &T), Ok(()));
    }

    #[test]
    fn endorsements_restored_after_a_restart_hold_until_the_next_assignment() {
        let mut v = Voter::new(0);
        v.on_assignment("a", 4, 0);
        assert!(v.endorse("a", 4, 5_000, &T, false));
        let (index, revoked) = v.endorsements();
        assert_eq!((index, revoked.iter().map(String::as_str).collect::<Vec<_>>()), (4, vec!["a"]));
        // Restarted: the same assignment is applied again at start; the endorsement stands.
        let mut again = Voter::new(6_000);
        again.restore(index, revoked);
        again.on_assignment("a", 4, 6_000);
        assert_eq!(again.on_lease("a", Some("a"), 8_000, &T), Err(Refusal::Revoked));
        // The next assignment (a promotion, or a reinstated primary) ends it.
        again.on_assignment("a", 5, 8_100);
        assert_eq!(again.on_lease("a", Some("a"), 8_200, &T), Ok(()));
    }

    #[test]
    fn an_endorsement_given_before_the_voter_applied_that_assignment_stands_when_it_does() {
        // Cut off, this voter applied nothing yet; the leader asks it to endorse removing a, the
        // primary of assignment 2.
        let mut v = Voter::new(0);
        assert!(v.endorse("a", 2, 5_000, &T, false));
        // Assignment 2 reaches it afterwards: a still gets nothing from it.
        v.on_assignment("a", 2, 5_100);
        assert_eq!(v.on_lease("a", Some("a"), 7_000, &T), Err(Refusal::Revoked));
        v.on_assignment("b", 3, 7_100);
        assert_eq!(v.on_lease("a", Some("b"), 7_200, &T), Err(Refusal::NotThePrimary(Some("b".into()))));
        assert!(!v.revoked("a"), "a later assignment ends it");
    }

    #[test]
    fn a_voter_grants_a_new_primary_only_once_its_grant_to_the_old_one_ran_out() {
        let mut v = Voter::new(0);
        assert_eq!(v.on_lease("a", Some("a"), 2_000, &T), Ok(()));
        // The assignment changes without an endorsement here (a late commit, another leader).
        v.on_assignment("b", 2, 2_100);
        assert_eq!(v.on_lease("b", Some("b"), 2_200, &T), Err(Refusal::Handoff(900)));
        assert_eq!(v.on_lease("b", Some("b"), 3_100, &T), Ok(()));
        assert_eq!(v.on_lease("a", Some("b"), 3_150, &T), Err(Refusal::NotThePrimary(Some("b".into()))));
    }

    #[test]
    fn a_new_primary_is_silent_only_from_its_assignment_on() {
        let mut v = Voter::new(0);
        assert!(v.may_endorse("b", 50_000, &T), "never heard b since the start");
        v.on_assignment("b", 2, 50_000);
        assert!(!v.may_endorse("b", 50_500, &T), "b was just made primary: it gets a lease's time to renew");
        assert!(v.may_endorse("b", 51_100, &T));
    }

    #[test]
    fn a_restarted_voter_counts_as_having_just_heard_everyone() {
        let v = Voter::new(10_000);
        assert!(!v.may_endorse("a", 10_500, &T));
        assert!(v.may_endorse("a", 11_100, &T));
    }

    /// The property the whole scheme rests on, over many interleavings: with clock rates that
    /// differ by less than the margin, no voter endorses while the primary's lease from it holds.
    #[test]
    fn no_endorsement_while_a_lease_holds_under_drift() {
        use rand08::{Rng, SeedableRng};
        let mut rng = rand08::rngs::StdRng::seed_from_u64(7);
        for _ in 0..2_000 {
            // Real time in µs; each clock runs at its own rate within ±4.9%.
            let rate_p = 1.0 + rng.gen_range(-0.049..0.049);
            let rate_v = 1.0 + rng.gen_range(-0.049..0.049);
            let p_clock = |real: f64| (real * rate_p / 1_000.0) as u64;
            let v_clock = |real: f64| (real * rate_v / 1_000.0) as u64;
            let mut h = Holder::new(0);
            let mut v = Voter::new(0);
            let mut real = rng.gen_range(2_000_000.0..3_000_000.0);
            let sent = p_clock(real);
            real += rng.gen_range(0.0..50_000.0);
            v.on_lease("p", Some("p"), v_clock(real), &T).expect("granted");
            real += rng.gen_range(0.0..50_000.0);
            h.granted("v", sent, 0);
            h.granted("self", sent, 0);
            // Find the first real instant the voter endorses; the lease must be over then.
            let mut t = real;
            while !v.may_endorse("p", v_clock(t), &T) {
                t += 1_000.0;
            }
            assert!(!h.valid(p_clock(t), 3, &T), "lease held at {t} while the voter endorsed (rates {rate_p} {rate_v})");
        }
    }

    /// A poll reply from `node` (a data node unless it is the witness w), endorsing, at
    /// position `applied`, with the set `sync`.
    fn reply(node: &str, applied: u64, sync: &SyncView) -> PollReply {
        PollReply { node: node.into(), data: node != "w", may_endorse: true, applied, sync: sync.clone(), ..Default::default() }
    }

    #[test]
    fn the_candidate_is_the_furthest_sync_member_never_the_old_primary_or_a_witness() {
        let sync =
            SyncView { version: 3, required: true, members: BTreeMap::from([("b".into(), 10), ("c".into(), 50)]), ..Default::default() };
        let r = |node: &str, applied: u64| reply(node, applied, &sync);
        let replies = vec![r("a", 100), r("b", 40), r("c", 35), r("w", 0)];
        assert_eq!(pick_candidate("a", &replies), Some(("b".into(), 40)), "c is a member only from 50");
        let mut older = replies.clone();
        older[0].sync = SyncView { version: 2, required: true, members: BTreeMap::from([("c".into(), 0)]), ..Default::default() };
        older[1].sync = older[0].sync.clone();
        assert_eq!(pick_candidate("a", &older), Some(("b".into(), 40)), "the freshest set wins");
        let none = vec![r("w", 0)];
        assert_eq!(pick_candidate("a", &none), None);
        let mut free = replies.clone();
        for x in &mut free {
            x.sync.required = false;
            x.sync.members.clear();
        }
        free[2].applied = 45;
        assert_eq!(pick_candidate("a", &free), Some(("c".into(), 45)), "without standby acks, the furthest data node");
    }

    #[test]
    fn with_several_members_every_one_answers_and_the_candidate_is_as_far_as_the_furthest() {
        // A `standby`-ack write waits for any one member: the newest may be on b or on c alone.
        let sync =
            SyncView { version: 3, required: true, members: BTreeMap::from([("b".into(), 10), ("c".into(), 20)]), ..Default::default() };
        let r = |node: &str, applied: u64, may_endorse: bool| PollReply { may_endorse, ..reply(node, applied, &sync) };
        let all = vec![r("b", 40, true), r("c", 45, true), r("w", 0, true)];
        assert_eq!(pick_candidate("a", &all), Some(("c".into(), 45)));
        // c silent: it may hold writes acknowledged by it alone.
        let without_c = vec![r("b", 40, true), r("w", 0, true)];
        assert_eq!(pick_candidate("a", &without_c), None, "a quorum without c cannot tell what c acknowledged");
        // c answers but still hears the primary: b is behind it, so b is not promoted either.
        let c_not_endorsing = vec![r("b", 40, true), r("c", 45, false), r("w", 0, true)];
        assert_eq!(pick_candidate("a", &c_not_endorsing), None);
        // Level: either will do, by name.
        let level = vec![r("b", 45, true), r("c", 45, true), r("w", 0, true)];
        assert_eq!(pick_candidate("a", &level), Some(("b".into(), 45)));
        // The old primary a in the set: a set from before its promotion (no quorum heard its
        // own). A write acknowledged then may be on a alone among the members: a answers, and
        // the candidate is as far as a is; silent, nobody is promoted.
        let mut with_a = all.clone();
        for x in &mut with_a {
            x.sync.members.insert("a".into(), 0);
        }
        assert_eq!(pick_candidate("a", &with_a), None, "a silent");
        let mut a_answers = with_a.clone();
        a_answers.push(PollReply { may_endorse: false, ..reply("a", 50, &with_a[0].sync) });
        assert_eq!(pick_candidate("a", &a_answers), None, "a is further than b and c");
        a_answers.last_mut().expect("a").applied = 45;
        assert_eq!(pick_candidate("a", &a_answers), Some(("c".into(), 45)));
    }

    #[test]
    fn a_member_is_a_candidate_only_with_the_store_that_joined() {
        let sync = SyncView {
            version: 3,
            required: true,
            members: BTreeMap::from([("b".into(), 0)]),
            stores: BTreeMap::from([("b".into(), "b-1".into())]),
        };
        let r = |node: &str, store: &str, applied: u64| PollReply { store: store.into(), ..reply(node, applied, &sync) };
        assert_eq!(pick_candidate("a", &[r("b", "b-1", 40)]), Some(("b".into(), 40)));
        // A server replaced under b's name (its store is new, and holds nothing yet).
        assert_eq!(pick_candidate("a", &[r("b", "b-2", 0)]), None);
        // With two members, the one replaced may have been the only one with the newest
        // acknowledged writes: the other, behind, is not promoted either.
        let two = SyncView {
            members: BTreeMap::from([("b".into(), 0), ("c".into(), 0)]),
            stores: BTreeMap::from([("b".into(), "b-1".into()), ("c".into(), "c-1".into())]),
            ..sync.clone()
        };
        let r2 = |node: &str, store: &str, applied: u64| PollReply { store: store.into(), ..reply(node, applied, &two) };
        assert_eq!(pick_candidate("a", &[r2("b", "b-1", 40), r2("c", "c-1", 30)]), Some(("b".into(), 40)));
        assert_eq!(pick_candidate("a", &[r2("b", "b-2", 0), r2("c", "c-1", 30)]), None);
        // A set that never learned the member's store checks positions only.
        let mut unknown = r("b", "b-2", 0);
        unknown.sync.stores.clear();
        assert_eq!(pick_candidate("a", &[unknown]), Some(("b".into(), 0)));
    }
}
