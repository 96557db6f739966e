//! Counters and histograms, rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Latency buckets, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Size buckets (rows per commit).
pub const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// A fixed-bucket histogram.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum in millionths, to stay atomic.
    sum_micro: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let v = if value.is_finite() && value > 0.0 { value } else { 0.0 };
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micro.fetch_add((v * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> f64 {
        self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// An estimate of the q-quantile (upper bound of the bucket holding it).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= target {
                return Some(self.bounds[i]);
            }
        }
        self.bounds.last().copied()
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count());
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum());
        let _ = writeln!(out, "{name}_count{braces} {}", self.count());
    }
}

/// Counters of one component.
pub struct ComponentMetrics {
    pub writes: AtomicU64,
    pub deletes: AtomicU64,
    pub unchanged: AtomicU64,
    pub remote_applied: AtomicU64,
    pub reads: AtomicU64,
    pub read_misses: AtomicU64,
    pub store_reads: AtomicU64,
    pub replays: AtomicU64,
    pub purged: AtomicU64,
    /// Refusals by error code.
    pub refusals: Mutex<BTreeMap<&'static str, u64>>,
    pub write_latency: Histogram,
    pub read_latency: Histogram,
    pub plugin_latency: Histogram,
    pub queue_wait: Histogram,
}

impl Default for ComponentMetrics {
    fn default() -> Self {
        ComponentMetrics {
            writes: AtomicU64::new(0),
            deletes: AtomicU64::new(0),
            unchanged: AtomicU64::new(0),
            remote_applied: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            read_misses: AtomicU64::new(0),
            store_reads: AtomicU64::new(0),
            replays: AtomicU64::new(0),
            purged: AtomicU64::new(0),
            refusals: Mutex::new(BTreeMap::new()),
            write_latency: Histogram::new(LATENCY_BUCKETS),
            read_latency: Histogram::new(LATENCY_BUCKETS),
            plugin_latency: Histogram::new(LATENCY_BUCKETS),
            queue_wait: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

impl ComponentMetrics {
    pub fn refuse(&self, code: &'static str) {
        *self.refusals.lock().unwrap_or_else(|e| e.into_inner()).entry(code).or_insert(0) += 1;
    }

    pub fn refusals(&self) -> BTreeMap<&'static str, u64> {
        self.refusals.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Counters of the node as a whole.
pub struct NodeMetrics {
    pub commits: AtomicU64,
    pub commit_rows: AtomicU64,
    pub commit_failures: AtomicU64,
    pub commit_latency: Histogram,
    pub commit_size: Histogram,
    pub conflicts_recorded: AtomicU64,
    pub unauthorized: AtomicU64,
    /// Components whose records the start-up scrub found not to sum to their kept digest.
    pub digest_corrections: AtomicU64,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics {
            commits: AtomicU64::new(0),
            commit_rows: AtomicU64::new(0),
            commit_failures: AtomicU64::new(0),
            commit_latency: Histogram::new(LATENCY_BUCKETS),
            commit_size: Histogram::new(SIZE_BUCKETS),
            conflicts_recorded: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
            digest_corrections: AtomicU64::new(0),
        }
    }
}

/// Builds a Prometheus text exposition.
#[derive(Default)]
pub struct Exposition {
    out: String,
    described: std::collections::BTreeSet<String>,
}

/// Escapes a label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Exposition {
    fn describe(&mut self, name: &str, kind: &str, help: &str) {
        if self.described.insert(name.to_owned()) {
            let _ = writeln!(self.out, "# HELP {name} {help}");
            let _ = writeln!(self.out, "# TYPE {name} {kind}");
        }
    }

    pub fn counter(&mut self, name: &str, help: &str, labels: &str, value: u64) {
        self.describe(name, "counter", help);
        self.sample(name, labels, value as f64);
    }

    pub fn gauge(&mut self, name: &str, help: &str, labels: &str, value: f64) {
        self.describe(name, "gauge", help);
        self.sample(name, labels, value);
    }

    pub fn histogram(&mut self, name: &str, help: &str, labels: &str, h: &Histogram) {
        self.describe(name, "histogram", help);
        h.render(&mut self.out, name, labels);
    }

    fn sample(&mut self, name: &str, labels: &str, value: f64) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(3.0);
        let mut e = Exposition::default();
        e.histogram("x_seconds", "help", "c=\"t\"", &h);
        let text = e.finish();
        assert!(text.contains("x_seconds_bucket{c=\"t\",le=\"1\"} 1"), "{text}");
        assert!(text.contains("x_seconds_bucket{c=\"t\",le=\"2\"} 2"), "{text}");
        assert!(text.contains("x_seconds_bucket{c=\"t\",le=\"+Inf\"} 3"), "{text}");
        assert!(text.contains("x_seconds_count{c=\"t\"} 3"), "{text}");
        assert_eq!(h.quantile(0.5), Some(2.0));
    }

    #[test]
    fn help_and_type_once_per_family() {
        let mut e = Exposition::default();
        e.counter("a_total", "A.", "c=\"1\"", 1);
        e.counter("a_total", "A.", "c=\"2\"", 2);
        let text = e.finish();
        assert_eq!(text.matches("# TYPE a_total counter").count(), 1);
        assert!(text.contains("a_total{c=\"2\"} 2"));
        assert_eq!(label("a\"b"), "a\\\"b");
    }
}
