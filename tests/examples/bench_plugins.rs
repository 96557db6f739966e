//! Plugin runtime benchmark: instantiation cost, per-call overhead, and the per-record cost of
//! serialize + merge + validate through the WebAssembly plugin against the same logic compiled
//! natively, in one run.
//!
//!     bash scripts/build-plugins.sh
//!     cargo run --profile bench -p tandem-tests --example bench_plugins -- [RECORDS]

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

fn per_record_wasm(plugin: &Arc<LoadedPlugin>, recs: &[(String, String, String)], batch: usize) -> f64 {
    let started = Instant::now();
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
    started.elapsed().as_secs_f64() / recs.len() as f64
}

fn per_record_native(recs: &[(String, String, String)]) -> f64 {
    let started = Instant::now();
    for (key, a, b) in recs {
        let s1 = Native::serialize(key, Op::Put(a.clone()), None, &Stamp::new(1_000, 0, "node-a")).expect("ok");
        let s2 = Native::serialize(key, Op::Put(b.clone()), Some(&s1.data), &Stamp::new(1_001, 0, "node-b")).expect("ok");
        let m = Native::merge(key, &s1.data, &s2.data).expect("ok");
        Native::validate(key, &m.data, &NoHost).expect("valid");
        black_box(m);
    }
    started.elapsed().as_secs_f64() / recs.len() as f64
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
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
    let _ = per_record_native(&recs[..recs.len().min(1000)]);
    let _ = per_record_wasm(&plugin, &recs[..recs.len().min(1000)], 256);
    let native = per_record_native(&recs);
    let wasm_batched = per_record_wasm(&plugin, &recs, 256);
    let wasm_single = per_record_wasm(&plugin, &recs[..recs.len().min(5000)], 1);

    println!("plugin runtime benchmark (trunks, {n} records; serialize + serialize over prior + merge + validate per record)");
    println!("  compile (no cache)                 {:>10.1} ms", compile * 1e3);
    println!("  load from the compile cache        {:>10.2} ms   (incl. instantiate + describe)", cached * 1e3);
    println!("  instantiation                      {:>10.1} µs", instantiate * 1e6);
    println!("  per-call overhead                  {:>10.2} µs", per_call * 1e6);
    println!("  native Rust, per record            {:>10.2} µs   1.00x", native * 1e6);
    println!("  plugin, batches of 256, per record {:>10.2} µs   {:.2}x native", wasm_batched * 1e6, wasm_batched / native);
    println!("  plugin, one record per instance    {:>10.2} µs   {:.2}x native", wasm_single * 1e6, wasm_single / native);
}
