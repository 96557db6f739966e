//! What the benchmarks share: the plain SQLite baseline and the CPU-time readings.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Upserts `records` (key, stored bytes) into a fresh plain SQLite database at `path` (WAL,
/// `synchronous=FULL`, one `(component, key) -> data` table), `batch` rows a transaction: the
/// baseline the benchmarks compare the node with. Returns the time it took.
pub fn plain_sqlite_upserts(path: &Path, records: &[(String, Vec<u8>)], batch: usize) -> Duration {
    let _ = std::fs::remove_file(path);
    let mut conn = rusqlite::Connection::open(path).expect("open");
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(())).expect("wal");
    conn.pragma_update(None, "synchronous", "FULL").expect("full");
    conn.execute_batch(
        "CREATE TABLE kv (component TEXT NOT NULL, key TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (component, key)) WITHOUT ROWID",
    )
    .expect("table");
    let started = Instant::now();
    for chunk in records.chunks(batch) {
        let tx = conn.transaction().expect("tx");
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO kv (component, key, data) VALUES ('trunks', ?1, ?2) ON CONFLICT DO UPDATE SET data = excluded.data",
                )
                .expect("prepare");
            for (k, v) in chunk {
                st.execute((k, v)).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    started.elapsed()
}

/// CPU time (ns) the calling thread has run so far (`/proc/thread-self/schedstat`; 0 without
/// /proc).
pub fn thread_cpu_ns() -> u64 {
    schedstat_ns(Path::new("/proc/thread-self/schedstat"))
}

/// The CPU time (ns) a `schedstat` file gives (its first field); 0 when it cannot be read.
fn schedstat_ns(file: &Path) -> u64 {
    std::fs::read_to_string(file).ok().and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok())).unwrap_or(0)
}

/// CPU time (ns) each thread of this process has run so far, summed by thread name
/// (`/proc/self/task/*/schedstat`); empty without /proc.
pub fn cpu_by_thread() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for t in tasks.flatten() {
        let p = t.path();
        let name = std::fs::read_to_string(p.join("comm")).unwrap_or_default().trim().to_owned();
        *out.entry(name).or_insert(0) += schedstat_ns(&p.join("schedstat"));
    }
    out
}

/// One line: the CPU time per record all threads used since `before` (a [`cpu_by_thread`]
/// reading), as a share of two cores over `wall`, and by thread name (names under 0.5 µs a
/// record left out). Threads that ended since `before` are not counted.
pub fn cpu_line(before: &BTreeMap<String, u64>, records: usize, wall: Duration) -> String {
    let after = cpu_by_thread();
    let per = |ns: u64| ns as f64 / 1000.0 / records.max(1) as f64;
    let used: Vec<(&String, u64)> = after.iter().map(|(k, v)| (k, v.saturating_sub(before.get(k).copied().unwrap_or(0)))).collect();
    let total: u64 = used.iter().map(|(_, d)| d).sum();
    let parts: Vec<String> = used.iter().filter(|(_, d)| per(*d) >= 0.5).map(|(k, d)| format!("{k} {:.1}", per(*d))).collect();
    format!(
        "CPU per write, all threads: {:.1} µs ({:.0}% of two cores): {}",
        per(total),
        100.0 * total as f64 / 2.0 / wall.as_nanos().max(1) as f64,
        parts.join(", ")
    )
}
