//! Prints where the time of loading a plugin goes: compiled, then from the compile cache as a
//! restarted node loads it (a new runtime and registry; the plugin file named by a spec), and from
//! the cache with the plugin's bytes in memory (`Runtime::load`, which hashes them every time).
//!
//!     RUST_LOG=tandem=debug cargo run -p tandem-tests --example load_time [-- ROUNDS [PLUGINS]]

use std::time::Instant;

use tandem::plugin::registry::{PluginSpec, Registry};
use tandem::plugin::{FILE_DIGEST_SETTLED, Limits, Runtime, RuntimeConfig};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn main() {
    tracing_subscriber_init();
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let root = std::env::temp_dir().join(format!("tandem-load-time-{}", std::process::id()));
    let cache = root.join("cache");
    let config = || RuntimeConfig { cache_dir: Some(cache.clone()), ..RuntimeConfig::default() };
    let files = tandem::bundled::write_all(&root.join("plugins")).expect("write the bundled plugins");
    let files = &files[..count.min(files.len())];
    let spec = |name: &str, path: &std::path::Path| PluginSpec {
        component: name.to_owned(),
        path: path.to_path_buf(),
        digest: None,
        limits: Limits::default(),
    };
    // A file's digest is only remembered once the file is older than this (see plugin/cache.rs);
    // a restarted node's plugin files are older than that.
    std::thread::sleep(FILE_DIGEST_SETTLED + std::time::Duration::from_millis(100));

    let registry = Registry::new(Runtime::new(config()).expect("runtime"));
    for (name, path) in files {
        let p = registry.add(spec(name, path)).expect("load");
        println!("compile   {name:<24} from_cache={:<5} {:>8} µs", p.from_cache(), p.load_micros());
    }
    let (mut load, mut wall, mut bytes_load) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        // A restart: a new runtime and registry.
        let registry = Registry::new(Runtime::new(config()).expect("runtime"));
        for (name, path) in files {
            let t = Instant::now();
            let p = registry.add(spec(name, path)).expect("load");
            let us = t.elapsed().as_secs_f64() * 1e6;
            assert!(p.from_cache());
            println!("restart {round} {name:<24} from_cache={:<5} {:>8} µs (registry add {us:.0} µs)", p.from_cache(), p.load_micros());
            load.push(p.load_micros() as f64);
            wall.push(us);
        }
        let rt = Runtime::new(config()).expect("runtime");
        for (name, _) in files {
            let wasm = tandem::bundled::get(name).expect("bundled");
            let p = rt.load(name, wasm, Limits::default()).expect("load");
            bytes_load.push(p.load_micros() as f64);
        }
    }
    println!(
        "median over {} cached loads: {:.0} µs from the file (registry add {:.0} µs), {:.0} µs from bytes in memory (hashed every time)",
        load.len(),
        median(&mut load),
        median(&mut wall),
        median(&mut bytes_load)
    );
    let _ = std::fs::remove_dir_all(&root);
}

fn tracing_subscriber_init() {
    let cli = <tandem::cli::Cli as clap::Parser>::parse_from(["tandem", "--log-level", "tandem=debug", "demo"]);
    tandem::cli::init_logging(&cli.log);
}
