//! The node's hybrid logical clock.
//!
//! A stamp is (physical milliseconds, logical counter, node). The clock hands out stamps that are
//! strictly increasing on this node whatever the wall clock does: when the wall clock steps back,
//! the physical part stays where it was and the logical counter advances. The last stamp is
//! persisted with every committed write, and a restarted node resumes above it, so stamps stay
//! monotonic across restarts too.
//!
//! A stamp received from another node moves the clock forward (so that this node's next stamps
//! order after everything it has seen), unless it is further ahead of this node's wall clock than
//! `max_ahead_ms`: a node with a wild clock must not drag everyone's stamps into the future, so
//! such a stamp is refused and reported.
//!
//! [`Hlc`] is plain logic that takes the wall-clock reading as an argument; [`Clock`] wraps it
//! with a lock and a wall-clock source for the running node.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::plugin::Stamp;

/// A reading of the clock without the node name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct HlcTime {
    pub physical: u64,
    pub logical: u32,
}

impl HlcTime {
    pub fn of(stamp: &Stamp) -> HlcTime {
        HlcTime { physical: stamp.physical, logical: stamp.logical }
    }
}

/// A remote stamp the clock refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "stamp from node {node:?} is {ahead_ms} ms ahead of this node's clock (physical {remote} vs wall {wall}); the bound is {bound_ms} ms: check the clocks (NTP) of both nodes"
)]
pub struct ClockAhead {
    pub node: String,
    pub remote: u64,
    pub wall: u64,
    pub ahead_ms: u64,
    pub bound_ms: u64,
}

/// The clock's state machine. Time comes in as an argument.
#[derive(Clone, Debug)]
pub struct Hlc {
    node: String,
    last: HlcTime,
    max_ahead_ms: u64,
}

impl Hlc {
    /// A clock for `node` that resumes above `persisted` (the last stamp known to be on disk).
    pub fn new(node: &str, persisted: HlcTime, max_ahead_ms: u64) -> Hlc {
        Hlc { node: node.to_owned(), last: persisted, max_ahead_ms }
    }

    /// The node name stamps carry.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The last reading handed out or observed.
    pub fn last(&self) -> HlcTime {
        self.last
    }

    /// The bound on how far ahead of the wall clock a remote stamp may be.
    pub fn max_ahead_ms(&self) -> u64 {
        self.max_ahead_ms
    }

    /// A new stamp for a local event, strictly greater than every stamp handed out or observed.
    pub fn tick(&mut self, wall_ms: u64) -> Stamp {
        let next = if wall_ms > self.last.physical {
            HlcTime { physical: wall_ms, logical: 0 }
        } else if self.last.logical < u32::MAX {
            HlcTime { physical: self.last.physical, logical: self.last.logical + 1 }
        } else {
            // Four billion stamps in one millisecond: borrow the next millisecond.
            HlcTime { physical: self.last.physical.saturating_add(1), logical: 0 }
        };
        self.last = next;
        Stamp { physical: next.physical, logical: next.logical, node: self.node.clone() }
    }

    /// Takes a remote stamp into account: later local stamps order after it. Refuses (and leaves
    /// the clock alone) a stamp more than `max_ahead_ms` ahead of `wall_ms`.
    pub fn observe(&mut self, remote: &Stamp, wall_ms: u64) -> Result<(), ClockAhead> {
        let ahead = remote.physical.saturating_sub(wall_ms);
        if ahead > self.max_ahead_ms {
            return Err(ClockAhead {
                node: remote.node.clone(),
                remote: remote.physical,
                wall: wall_ms,
                ahead_ms: ahead,
                bound_ms: self.max_ahead_ms,
            });
        }
        let seen = HlcTime::of(remote);
        if seen > self.last {
            self.last = seen;
        }
        Ok(())
    }

    /// Raises the clock to at least `time` (e.g. the newest stamp found in the store at start).
    pub fn raise(&mut self, time: HlcTime) {
        if time > self.last {
            self.last = time;
        }
    }
}

/// Where wall-clock time comes from: the system clock, or a hand-driven clock in tests.
pub trait WallClock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's real-time clock.
pub struct SystemWallClock;

impl WallClock for SystemWallClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
    }
}

/// A clock that shows what a test sets.
#[derive(Default)]
pub struct ManualWallClock(std::sync::atomic::AtomicU64);

impl ManualWallClock {
    pub fn new(ms: u64) -> Arc<ManualWallClock> {
        Arc::new(ManualWallClock(std::sync::atomic::AtomicU64::new(ms)))
    }
    pub fn set(&self, ms: u64) {
        self.0.store(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl WallClock for ManualWallClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The running node's clock: an [`Hlc`] behind a lock, fed by a [`WallClock`].
pub struct Clock {
    hlc: Mutex<Hlc>,
    wall: Arc<dyn WallClock>,
    refused: std::sync::atomic::AtomicU64,
    last_refusal: Mutex<Option<String>>,
}

impl Clock {
    pub fn new(hlc: Hlc, wall: Arc<dyn WallClock>) -> Clock {
        Clock { hlc: Mutex::new(hlc), wall, refused: Default::default(), last_refusal: Mutex::new(None) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hlc> {
        self.hlc.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stamp for a local write.
    pub fn tick(&self) -> Stamp {
        let wall = self.wall.now_ms();
        self.lock().tick(wall)
    }

    /// Takes in a remote stamp; a refusal is counted and kept for status.
    pub fn observe(&self, remote: &Stamp) -> Result<(), ClockAhead> {
        let wall = self.wall.now_ms();
        let result = self.lock().observe(remote, wall);
        if let Err(e) = &result {
            self.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(error = %e, "remote stamp refused");
            *self.last_refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
        }
        result
    }

    /// The last reading handed out or observed.
    pub fn last(&self) -> HlcTime {
        self.lock().last()
    }

    /// Wall-clock milliseconds now.
    pub fn wall_ms(&self) -> u64 {
        self.wall.now_ms()
    }

    /// Remote stamps refused so far, and the last reason.
    pub fn refusals(&self) -> (u64, Option<String>) {
        (self.refused.load(std::sync::atomic::Ordering::Relaxed), self.last_refusal.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// The bound on remote stamps.
    pub fn max_ahead_ms(&self) -> u64 {
        self.lock().max_ahead_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_follow_the_wall_clock_when_it_advances() {
        let mut c = Hlc::new("a", HlcTime::default(), 1000);
        let s1 = c.tick(100);
        let s2 = c.tick(105);
        assert_eq!((s1.physical, s1.logical), (100, 0));
        assert_eq!((s2.physical, s2.logical), (105, 0));
        assert_eq!(s2.node, "a");
    }

    #[test]
    fn same_millisecond_advances_the_logical_counter() {
        let mut c = Hlc::new("a", HlcTime::default(), 1000);
        let s1 = c.tick(100);
        let s2 = c.tick(100);
        let s3 = c.tick(100);
        assert!(s1 < s2 && s2 < s3);
        assert_eq!((s3.physical, s3.logical), (100, 2));
    }

    #[test]
    fn monotonic_when_the_wall_clock_steps_back() {
        let mut c = Hlc::new("a", HlcTime::default(), 1000);
        let before = c.tick(10_000);
        let after = c.tick(4_000);
        assert!(after > before);
        assert_eq!(after.physical, 10_000);
        // When the wall clock catches up, the physical part follows it again.
        let later = c.tick(10_001);
        assert_eq!((later.physical, later.logical), (10_001, 0));
    }

    #[test]
    fn resumes_above_the_persisted_reading_after_a_restart() {
        let mut c = Hlc::new("a", HlcTime { physical: 50_000, logical: 7 }, 1000);
        // The machine came back with its clock behind the last persisted stamp.
        let s = c.tick(20_000);
        assert_eq!((s.physical, s.logical), (50_000, 8));
    }

    #[test]
    fn logical_overflow_borrows_the_next_millisecond() {
        let mut c = Hlc::new("a", HlcTime { physical: 9, logical: u32::MAX }, 1000);
        let s = c.tick(5);
        assert_eq!((s.physical, s.logical), (10, 0));
    }

    #[test]
    fn observed_remote_stamps_order_before_later_local_stamps() {
        let mut c = Hlc::new("a", HlcTime::default(), 1000);
        c.tick(100);
        let remote = Stamp::new(600, 3, "b");
        c.observe(&remote, 100).expect("within the bound");
        let next = c.tick(100);
        assert!(next > remote);
        assert_eq!((next.physical, next.logical), (600, 4));
        // An older remote stamp does not move the clock back.
        c.observe(&Stamp::new(50, 0, "b"), 100).expect("old stamps are fine");
        assert_eq!(c.last(), HlcTime { physical: 600, logical: 4 });
    }

    #[test]
    fn remote_stamps_too_far_ahead_are_refused_and_do_not_move_the_clock() {
        let mut c = Hlc::new("a", HlcTime::default(), 1000);
        c.tick(5_000);
        let wild = Stamp::new(5_000 + 1_001, 0, "b");
        let err = c.observe(&wild, 5_000).expect_err("past the bound");
        assert_eq!(err.ahead_ms, 1_001);
        assert_eq!(err.node, "b");
        assert!(err.to_string().contains("1001 ms ahead"));
        assert_eq!(c.last(), HlcTime { physical: 5_000, logical: 0 });
        // Exactly at the bound is accepted.
        c.observe(&Stamp::new(6_000, 0, "b"), 5_000).expect("at the bound");
    }

    #[test]
    fn clock_with_manual_wall_source() {
        let wall = ManualWallClock::new(1_000);
        let clock = Clock::new(Hlc::new("n", HlcTime::default(), 10), wall.clone());
        let a = clock.tick();
        wall.set(500);
        let b = clock.tick();
        assert!(b > a);
        assert!(clock.observe(&Stamp::new(2_000, 0, "x")).is_err());
        assert_eq!(clock.refusals().0, 1);
        assert!(clock.refusals().1.is_some_and(|m| m.contains("\"x\"")));
    }
}
