//! Schedules and retention: pure functions of (now, existing snapshots), so every decision can be
//! tested without clocks or files.
//!
//! Times are milliseconds since the Unix epoch; a time of day is UTC.

use serde::{Deserialize, Serialize};

use super::time::DAY_MS;

/// When snapshots are due.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Schedule {
    /// One every `interval_ms` after the previous one.
    Every { interval_ms: u64 },
    /// One a day at this minute of the day (UTC).
    DailyAt { minute: u32 },
}

impl Schedule {
    /// Parses `every 6h` / `6h` / `30m` / `daily 02:30` / `02:30`.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let t = text.trim();
        let t = t.strip_prefix("every ").map(str::trim).unwrap_or(t);
        if let Some(at) =
            t.strip_prefix("daily ").or_else(|| t.strip_prefix("at ")).map(str::trim).or(if t.contains(':') { Some(t) } else { None })
        {
            let (h, m) = at.split_once(':').ok_or_else(|| format!("{text:?}: a time of day is HH:MM (UTC)"))?;
            let (h, m) = (
                h.parse::<u32>().map_err(|_| format!("{text:?}: bad hour"))?,
                m.parse::<u32>().map_err(|_| format!("{text:?}: bad minute"))?,
            );
            if h > 23 || m > 59 {
                return Err(format!("{text:?}: a time of day is HH:MM between 00:00 and 23:59 (UTC)"));
            }
            return Ok(Schedule::DailyAt { minute: h * 60 + m });
        }
        let interval_ms = parse_duration_ms(t)
            .ok_or_else(|| format!("{text:?} is neither an interval (\"6h\", \"30m\", \"1d\") nor a time of day (\"02:30\")"))?;
        if interval_ms < 1000 {
            return Err(format!("{text:?}: the interval must be at least 1s"));
        }
        Ok(Schedule::Every { interval_ms })
    }

    /// When the next snapshot is due, given the last one's time (None: never taken).
    pub fn next_due(&self, last_ms: Option<u64>, now_ms: u64) -> u64 {
        match *self {
            Schedule::Every { interval_ms } => last_ms.map_or(now_ms, |l| l.saturating_add(interval_ms)),
            Schedule::DailyAt { minute } => {
                let slot_today = now_ms / DAY_MS * DAY_MS + u64::from(minute) * 60_000;
                // The most recent slot at or before now.
                let latest = if slot_today <= now_ms { slot_today } else { slot_today.saturating_sub(DAY_MS) };
                match last_ms {
                    // Never taken: wait for the next slot.
                    None => {
                        if now_ms <= slot_today {
                            slot_today
                        } else {
                            slot_today + DAY_MS
                        }
                    }
                    Some(l) if l >= latest => latest + DAY_MS,
                    // The latest slot has no snapshot (missed while down): due now, once.
                    Some(_) => latest,
                }
            }
        }
    }

    /// Whether a snapshot is due now.
    pub fn due(&self, last_ms: Option<u64>, now_ms: u64) -> bool {
        self.next_due(last_ms, now_ms) <= now_ms
    }
}

/// `90s`, `30m`, `6h`, `1d`, `500ms`.
pub fn parse_duration_ms(t: &str) -> Option<u64> {
    let t = t.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => DAY_MS,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// How many snapshots to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// The newest N (at least 1).
    pub keep_last: u32,
    /// Plus the newest of each of the last D UTC days (today included).
    pub keep_daily_days: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { keep_last: 7, keep_daily_days: 7 }
    }
}

/// A snapshot as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snap {
    pub id: String,
    pub created_ms: u64,
    /// Snapshots of different scopes are retained separately.
    pub scope: String,
}

/// The snapshots to delete. Per scope: the newest `keep_last` stay, and the newest of each of
/// the last `keep_daily_days` days; the newest snapshot of a scope is never deleted.
pub fn expired(now_ms: u64, snaps: &[Snap], policy: Retention) -> Vec<String> {
    let mut scopes: Vec<&str> = snaps.iter().map(|s| s.scope.as_str()).collect();
    scopes.sort_unstable();
    scopes.dedup();
    let today = now_ms / DAY_MS;
    let mut out = Vec::new();
    for scope in scopes {
        let mut these: Vec<&Snap> = snaps.iter().filter(|s| s.scope == scope).collect();
        these.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then_with(|| b.id.cmp(&a.id)));
        let mut days_kept: Vec<u64> = Vec::new();
        for (i, s) in these.iter().enumerate() {
            let keep_recent = i < policy.keep_last.max(1) as usize;
            let day = s.created_ms / DAY_MS;
            let in_window = policy.keep_daily_days > 0 && day + u64::from(policy.keep_daily_days) > today;
            let daily = in_window && !days_kept.contains(&day);
            if daily {
                days_kept.push(day);
            }
            if !keep_recent && !daily {
                out.push(s.id.clone());
            }
        }
    }
    out
}

/// Archive segments no longer needed: those wholly before the oldest kept full snapshot (a
/// restore can only start from a snapshot). `segments` are (id, last_seq); `oldest_full_seq` the
/// oldest kept full snapshot's seq (None: keep every segment).
pub fn expired_segments(segments: &[(String, u64)], oldest_full_seq: Option<u64>) -> Vec<String> {
    match oldest_full_seq {
        None => Vec::new(),
        Some(seq) => segments.iter().filter(|(_, last)| *last <= seq).map(|(id, _)| id.clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;

    #[test]
    fn schedules_parse() {
        assert_eq!(Schedule::parse("6h"), Ok(Schedule::Every { interval_ms: 6 * H }));
        assert_eq!(Schedule::parse("every 30m"), Ok(Schedule::Every { interval_ms: 30 * 60_000 }));
        assert_eq!(Schedule::parse("02:30"), Ok(Schedule::DailyAt { minute: 150 }));
        assert_eq!(Schedule::parse("daily 23:59"), Ok(Schedule::DailyAt { minute: 1439 }));
        assert!(Schedule::parse("24:00").is_err());
        assert!(Schedule::parse("often").is_err());
        assert!(Schedule::parse("10ms").is_err());
    }

    #[test]
    fn interval_schedule_is_due_after_the_interval() {
        let s = Schedule::Every { interval_ms: H };
        assert!(s.due(None, 1000));
        assert!(!s.due(Some(10 * H), 10 * H + H - 1));
        assert!(s.due(Some(10 * H), 11 * H));
        assert_eq!(s.next_due(Some(10 * H), 0), 11 * H);
    }

    #[test]
    fn daily_schedule_fires_once_a_day_at_its_minute_and_catches_up_once() {
        let s = Schedule::DailyAt { minute: 150 }; // 02:30
        let day = 20_000 * DAY_MS;
        let at = day + 150 * 60_000;
        // Never taken: due at the next 02:30, not immediately.
        assert!(!s.due(None, day + H));
        assert_eq!(s.next_due(None, day + H), at);
        assert!(s.due(None, at));
        // Taken at 02:30 today: not again until tomorrow.
        assert!(!s.due(Some(at), at + 10 * H));
        assert!(s.due(Some(at), at + DAY_MS));
        // Missed yesterday's and today's slot (the node was down): one catch-up now.
        assert!(s.due(Some(at - 2 * DAY_MS), at + H));
        assert!(!s.due(Some(at + H), at + 2 * H));
    }

    fn snap(id: &str, ms: u64) -> Snap {
        Snap { id: id.into(), created_ms: ms, scope: "all".into() }
    }

    #[test]
    fn retention_keeps_last_n_and_one_a_day() {
        let day = 20_000 * DAY_MS;
        // Four snapshots a day (every 6 h) for five days, now at the end of the fifth day.
        let mut snaps = Vec::new();
        for d in 0..5u64 {
            for q in 0..4u64 {
                snaps.push(snap(&format!("d{d}q{q}"), day + d * DAY_MS + q * 6 * H));
            }
        }
        let now = day + 4 * DAY_MS + 23 * H;
        let gone = expired(now, &snaps, Retention { keep_last: 3, keep_daily_days: 3 });
        let kept: Vec<&str> = snaps.iter().map(|s| s.id.as_str()).filter(|id| !gone.iter().any(|g| g == id)).collect();
        // Last 3: d4q3, d4q2, d4q1; daily for days 4, 3, 2: d4q3 (already), d3q3, d2q3.
        assert_eq!(kept, vec!["d2q3", "d3q3", "d4q1", "d4q2", "d4q3"]);
        // keep_last = 0 still keeps the newest.
        let gone = expired(now, &snaps, Retention { keep_last: 0, keep_daily_days: 0 });
        assert_eq!(gone.len(), snaps.len() - 1);
        assert!(!gone.contains(&"d4q3".to_owned()));
    }

    #[test]
    fn retention_is_per_scope() {
        let mut snaps = vec![snap("a1", 1), snap("a2", 2)];
        snaps.push(Snap { id: "t1".into(), created_ms: 0, scope: "trunks".into() });
        let gone = expired(10, &snaps, Retention { keep_last: 1, keep_daily_days: 0 });
        assert_eq!(gone, vec!["a1".to_owned()]);
    }

    #[test]
    fn segments_before_the_oldest_full_snapshot_expire() {
        let segs = vec![("s1".to_owned(), 10), ("s2".to_owned(), 20), ("s3".to_owned(), 30)];
        assert_eq!(expired_segments(&segs, Some(20)), vec!["s1".to_owned(), "s2".to_owned()]);
        assert!(expired_segments(&segs, None).is_empty());
    }
}
