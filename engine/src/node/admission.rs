//! Load shedding: when to refuse work instead of letting queues (and latency, and memory) grow.
//!
//! Two rules, both plain functions of their inputs:
//! - at the door: a component's write queue holds at most `capacity` requests; the next one is
//!   refused at once (HTTP 429) rather than waiting without bound;
//! - at the head of the queue: a request that already waited longer than `max_wait_ms` is dropped
//!   unapplied (HTTP 503): its client has likely given up, and applying it late only makes the
//!   queue behind it later still. It was never applied, so the client may retry it safely.

/// Why a request was refused before being applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shed {
    /// The queue is full.
    QueueFull { depth: usize, capacity: usize },
    /// The request waited in the queue past the budget.
    Waited { waited_ms: u64, budget_ms: u64 },
}

impl std::fmt::Display for Shed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shed::QueueFull { depth, capacity } => {
                write!(f, "the write queue is full ({depth} of {capacity} waiting); retry shortly")
            }
            Shed::Waited { waited_ms, budget_ms } => write!(
                f,
                "the request waited {waited_ms} ms in the write queue, over the {budget_ms} ms budget; it was not applied, retry shortly"
            ),
        }
    }
}

/// The limits of one queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    pub capacity: usize,
    pub max_wait_ms: u64,
}

impl Admission {
    /// May a request join a queue that holds `depth` requests?
    pub fn enqueue(&self, depth: usize) -> Result<(), Shed> {
        if depth >= self.capacity { Err(Shed::QueueFull { depth, capacity: self.capacity }) } else { Ok(()) }
    }

    /// May a request that joined the queue at `enqueued_ms` still be applied at `now_ms`?
    pub fn dequeue(&self, enqueued_ms: u64, now_ms: u64) -> Result<(), Shed> {
        let waited_ms = now_ms.saturating_sub(enqueued_ms);
        if self.max_wait_ms > 0 && waited_ms > self.max_wait_ms {
            Err(Shed::Waited { waited_ms, budget_ms: self.max_wait_ms })
        } else {
            Ok(())
        }
    }

    /// Seconds a refused client should wait before retrying: the time the queue needs to drain
    /// at the recent rate, between 1 and 30 s.
    pub fn retry_after_secs(depth: usize, rows_per_sec: f64) -> u64 {
        if rows_per_sec <= 0.0 || !rows_per_sec.is_finite() {
            return 1;
        }
        let secs = (depth as f64 / rows_per_sec).ceil();
        if secs.is_finite() { (secs as u64).clamp(1, 30) } else { 30 }
    }
}

/// A smoothed rate (events per second) from counts observed at given times.
#[derive(Clone, Debug, Default)]
pub struct Rate {
    per_sec: f64,
    window_start_ms: u64,
    count: u64,
}

impl Rate {
    /// Counts `n` events at `now_ms`; the rate is updated once per second of input.
    pub fn add(&mut self, n: u64, now_ms: u64) {
        if self.window_start_ms == 0 {
            self.window_start_ms = now_ms;
        }
        self.count += n;
        let elapsed = now_ms.saturating_sub(self.window_start_ms);
        if elapsed >= 1000 {
            let sample = self.count as f64 * 1000.0 / elapsed as f64;
            self.per_sec = if self.per_sec == 0.0 { sample } else { 0.7 * self.per_sec + 0.3 * sample };
            self.window_start_ms = now_ms;
            self.count = 0;
        }
    }

    pub fn per_sec(&self) -> f64 {
        self.per_sec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_at_capacity() {
        let a = Admission { capacity: 3, max_wait_ms: 100 };
        assert!(a.enqueue(0).is_ok());
        assert!(a.enqueue(2).is_ok());
        assert_eq!(a.enqueue(3), Err(Shed::QueueFull { depth: 3, capacity: 3 }));
    }

    #[test]
    fn sheds_requests_that_waited_too_long() {
        let a = Admission { capacity: 3, max_wait_ms: 100 };
        assert!(a.dequeue(1_000, 1_100).is_ok());
        assert_eq!(a.dequeue(1_000, 1_101), Err(Shed::Waited { waited_ms: 101, budget_ms: 100 }));
        // A clock that went back never sheds.
        assert!(a.dequeue(1_000, 900).is_ok());
        // No budget: never shed.
        assert!(Admission { capacity: 1, max_wait_ms: 0 }.dequeue(0, u64::MAX).is_ok());
    }

    #[test]
    fn retry_after_follows_the_drain_rate() {
        assert_eq!(Admission::retry_after_secs(100, 0.0), 1);
        assert_eq!(Admission::retry_after_secs(100, 1000.0), 1);
        assert_eq!(Admission::retry_after_secs(5000, 1000.0), 5);
        assert_eq!(Admission::retry_after_secs(1_000_000, 10.0), 30);
    }

    #[test]
    fn rate_is_smoothed_per_second() {
        let mut r = Rate::default();
        r.add(10, 1_000);
        r.add(990, 1_500);
        assert_eq!(r.per_sec(), 0.0);
        r.add(0, 2_000);
        assert!((r.per_sec() - 1000.0).abs() < 1e-6);
        r.add(0, 3_000);
        assert!((r.per_sec() - 700.0).abs() < 1e-6);
    }
}
