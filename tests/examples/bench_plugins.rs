//! Plugin runtime benchmark: instantiation cost, per-call overhead, and the per-record cost of
//! serialize + merge + validate through the WebAssembly plugin against the same logic compiled
//! natively, in one run.
//!
//!     bash scripts/build-plugins.sh
//!     cargo run --profile bench -p tandem-tests --example bench_plugins -- [RECORDS [ROUNDS]]
//!
//! Native and plugin runs alternate for ROUNDS rounds (default 5) and the medians are reported,
//! each as wall time and as the CPU time of the benchmark's thread (from
//! `/proc/thread-self/schedstat`): on a shared machine, CPU time is disturbed far less by other
//! processes than wall time.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use tandem::plugin::{Limits, LoadedPlugin, NoLookup, Op, Runtime, RuntimeConfig, Stamp};
use tandem_sdk::Plugin as _;
use tandem_sdk::testing::NoHost;

type Native = tandem_plugin_trunks::TrunksPlugin;

fn records(n: usize) -> Vec<(String, String, String)> {
    (0..n)
        .map(|i| {
            let a = json!({"host": format!("sip{i}.carrier.example"), "port": 5060, "transport": "udp", "codecs": ["alaw", "g722"], "max_channels": 30 + (i % 50)});
            let mut b: Value = a.clone();
            b["max_channels"] = json!(100 + (i % 7));
            b["transport"] = json!("tcp");
            (format!("trunk-{i}"), a.to_string(), b.to_string())
        })
        .collect()
}

/// Time this thread has spent on a CPU, in seconds (Linux), or `None`.
fn cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 / 1e9)
}

/// Per-record (wall, CPU) seconds of `f` over `n` records.
fn timed(n: usize, f: impl FnOnce()) -> (f64, f64) {
    let (wall, cpu) = (Instant::now(), cpu_seconds());
    f();
    let wall = wall.elapsed().as_secs_f64();
    let cpu = match (cpu, cpu_seconds()) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    (wall / n as f64, cpu / n as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn per_record_wasm(plugin: &Arc<LoadedPlugin>, recs: &[(String, String, String)], batch: usize) -> f64 {
    timed(recs.len(), || run_wasm(plugin, recs, batch)).0
}

fn run_wasm(plugin: &Arc<LoadedPlugin>, recs: &[(String, String, String)], batch: usize) {
    for chunk in recs.chunks(batch) {
        let mut s = plugin.session(Arc::new(NoLookup)).expect("session");
        for (key, a, b) in chunk {
            let s1 = s.serialize(key, &Op::Put(a.clone()), None, &Stamp::new(1_000, 0, "node-a")).expect("call").expect("ok");
            let s2 = s.serialize(key, &Op::Put(b.clone()), Some(&s1.data), &Stamp::new(1_001, 0, "node-b")).expect("call").expect("ok");
            let m = s.merge(key, &s1.data, &s2.data).expect("call").expect("ok");
            s.validate(key, &m.data).expect("call").expect("valid");
            black_box(m);
        }
    }
}

fn run_native(recs: &[(String, String, String)]) {
    for (key, a, b) in recs {
        let s1 = Native::serialize(key, Op::Put(a.clone()), None, &Stamp::new(1_000, 0, "node-a")).expect("ok");
        let s2 = Native::serialize(key, Op::Put(b.clone()), Some(&s1.data), &Stamp::new(1_001, 0, "node-b")).expect("ok");
        let m = Native::merge(key, &s1.data, &s2.data).expect("ok");
        Native::validate(key, &m.data, &NoHost).expect("valid");
        black_box(m);
    }
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let rounds: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(5).max(1);
    let cache = std::env::temp_dir().join(format!("tandem-bench-cache-{}", std::process::id()));
    let config = || RuntimeConfig { cache_dir: Some(cache.clone()), ..RuntimeConfig::default() };
    let wasm = tandem::bundled::get("trunks").expect("trunks is bundled");
    let started = Instant::now();
    let _ = Runtime::new(config()).expect("runtime").load("trunks", wasm, Limits::default()).expect("load");
    let compile = started.elapsed().as_secs_f64();
    // A restart: a new runtime loads the plugin from the compile cache.
    let runtime = Runtime::new(config()).expect("runtime");
    let plugin = runtime.load("trunks", wasm, Limits::default()).expect("load");
    assert!(plugin.from_cache());
    let cached = plugin.load_micros() as f64 / 1e6;
    let _ = std::fs::remove_dir_all(&cache);

    // Per-call overhead: a call that returns at once (deserialize of empty bytes is refused).
    let mut s = plugin.session(Arc::new(NoLookup)).expect("session");
    let _ = s.deserialize("k", b"");
    let calls = 100_000;
    let t = Instant::now();
    for _ in 0..calls {
        black_box(s.deserialize("k", b"").expect("no trap").is_err());
    }
    let per_call = t.elapsed().as_secs_f64() / calls as f64;

    // Instantiation: a fresh session and its first trivial call, minus the call itself.
    let sessions = 5_000;
    let t = Instant::now();
    for _ in 0..sessions {
        let mut s = plugin.session(Arc::new(NoLookup)).expect("session");
        black_box(s.deserialize("k", b"").expect("no trap").is_err());
    }
    let instantiate = t.elapsed().as_secs_f64() / sessions as f64 - per_call;

    let recs = records(n);
    run_native(&recs[..recs.len().min(1000)]);
    run_wasm(&plugin, &recs[..recs.len().min(1000)], 256);
    println!("plugin runtime benchmark (trunks, {n} records; serialize + serialize over prior + merge + validate per record)");
    println!("  compile (no cache)                 {:>10.1} ms", compile * 1e3);
    println!("  load from the compile cache        {:>10.2} ms   (bytes in memory: digest, code, link, describe)", cached * 1e3);
    println!("  instantiation                      {:>10.1} µs", instantiate * 1e6);
    println!("  per-call overhead                  {:>10.2} µs", per_call * 1e6);
    let (mut wall_ratio, mut cpu_ratio, mut native_wall, mut native_cpu, mut wasm_wall, mut wasm_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let native = timed(recs.len(), || run_native(&recs));
        let wasm = timed(recs.len(), || run_wasm(&plugin, &recs, 256));
        println!(
            "  round {round}: per record native {:.2} µs (CPU {:.2}), plugin in batches of 256 {:.2} µs (CPU {:.2}): {:.2}x wall, {:.2}x CPU",
            native.0 * 1e6,
            native.1 * 1e6,
            wasm.0 * 1e6,
            wasm.1 * 1e6,
            wasm.0 / native.0,
            wasm.1 / native.1
        );
        wall_ratio.push(wasm.0 / native.0);
        cpu_ratio.push(wasm.1 / native.1);
        native_wall.push(native.0);
        native_cpu.push(native.1);
        wasm_wall.push(wasm.0);
        wasm_cpu.push(wasm.1);
    }
    let native = median(native_wall);
    let single = per_record_wasm(&plugin, &recs[..recs.len().min(5000)], 1);
    println!("  medians of {rounds} rounds:");
    println!("  native Rust, per record            {:>10.2} µs   1.00x (CPU {:.2} µs)", native * 1e6, median(native_cpu) * 1e6);
    println!(
        "  plugin, batches of 256, per record {:>10.2} µs   {:.2}x native (CPU {:.2} µs, {:.2}x native)",
        median(wasm_wall) * 1e6,
        median(wall_ratio),
        median(wasm_cpu) * 1e6,
        median(cpu_ratio)
    );
    println!("  plugin, one record per instance    {:>10.2} µs   {:.2}x native (one run)", single * 1e6, single / native);
}
