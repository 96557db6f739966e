//! Prints where the time of loading a plugin goes, compiled and from the cache.
//!
//!     RUST_LOG=tandem=debug cargo run -p tandem-tests --example load_time

use tandem::plugin::{Limits, Runtime, RuntimeConfig};

fn main() {
    tracing_subscriber_init();
    let cache = std::env::temp_dir().join(format!("tandem-load-time-{}", std::process::id()));
    for (name, wasm) in tandem::bundled::BUNDLED.iter().take(3) {
        for _ in 0..3 {
            let rt = Runtime::new(RuntimeConfig { cache_dir: Some(cache.clone()), ..RuntimeConfig::default() }).expect("runtime");
            let p = rt.load(name, wasm, Limits::default()).expect("load");
            println!("{name:<24} from_cache={:<5} {:>8} µs", p.from_cache(), p.load_micros());
        }
    }
    let _ = std::fs::remove_dir_all(&cache);
}

fn tracing_subscriber_init() {
    let cli = <tandem::cli::Cli as clap::Parser>::parse_from(["tandem", "--log-level", "tandem=debug", "demo"]);
    tandem::cli::init_logging(&cli.log);
}
