//! Hot reload, pinning by digest and the compile cache.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tandem::plugin::registry::{PluginSpec, Registry};
use tandem::plugin::{Limits, NoLookup, Op, Runtime, RuntimeConfig, Stamp, digest};
use tandem_tests::{runtime, wasm};

fn spec(path: &Path, pinned: Option<String>) -> PluginSpec {
    PluginSpec { component: "hostile".into(), path: path.to_path_buf(), digest: pinned, limits: Limits::default() }
}

fn version(registry: &Registry) -> String {
    registry.get("hostile").map(|p| p.info().plugin_version.clone()).unwrap_or_default()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Calls the serving plugin in a loop on two threads until stopped; returns (calls, failures).
fn hammer(registry: &Arc<Registry>, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<(u64, u64)>> {
    (0..2)
        .map(|_| {
            let (registry, stop) = (registry.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut calls, mut failures) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let Some(plugin) = registry.get("hostile") else {
                        failures += 1;
                        continue;
                    };
                    let ok = plugin
                        .session(Arc::new(NoLookup))
                        .and_then(|mut s| s.serialize("ok", &Op::Put("{}".into()), None, &Stamp::new(1, 0, "n1")))
                        .is_ok_and(|r| r.is_ok());
                    calls += 1;
                    if !ok {
                        failures += 1;
                    }
                }
                (calls, failures)
            })
        })
        .collect()
}

#[test]
fn a_replaced_file_is_swapped_in_without_a_failed_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hostile.wasm");
    std::fs::write(&path, wasm("tandem_test_hostile")).expect("write");
    let registry = Registry::new(runtime());
    registry.add(spec(&path, None)).expect("v1 loads");
    registry.watch().expect("watch");
    assert_eq!(version(&registry), "1.0.0");

    let stop = Arc::new(AtomicBool::new(false));
    let threads = hammer(&registry, &stop);
    std::thread::sleep(Duration::from_millis(200));
    // Deploy v2 the usual way: write beside, rename over.
    let tmp = dir.path().join("hostile.wasm.new");
    std::fs::write(&tmp, wasm("tandem_test_hostile_v2")).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    wait_for("version 2 to serve", || version(&registry) == "2.0.0");
    // And back to v1 by rewriting the file in place (a partial file must never serve).
    std::fs::write(&path, wasm("tandem_test_hostile")).expect("write");
    wait_for("version 1 to serve again", || version(&registry) == "1.0.0");
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let (calls, failures) = threads.into_iter().map(|t| t.join().expect("thread")).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert!(calls > 20, "calls made during the swaps: {calls}");
    assert_eq!(failures, 0, "no call failed across two swaps");
    assert!(registry.status()[0].reloads >= 2);
}

#[test]
fn a_broken_new_file_leaves_the_old_version_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hostile.wasm");
    std::fs::write(&path, wasm("tandem_test_hostile")).expect("write");
    let registry = Registry::new(runtime());
    registry.add(spec(&path, None)).expect("loads");
    registry.watch().expect("watch");
    std::fs::write(&path, b"\0asm not really").expect("write");
    wait_for("the reload error to be recorded", || registry.status()[0].last_reload_error.is_some());
    assert_eq!(version(&registry), "1.0.0");
    let err = registry.reload("hostile").expect_err("still broken");
    assert_eq!(err.code(), "plugin_load");
    // A file declaring another component is refused too.
    std::fs::write(&path, wasm("tandem_plugin_trunks")).expect("write");
    let err = registry.reload("hostile").expect_err("wrong component");
    assert!(err.to_string().contains("declares component \"trunks\""), "{err}");
    assert_eq!(version(&registry), "1.0.0");
}

#[test]
fn a_pinned_plugin_must_match_its_digest_and_moves_only_with_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = dir.path().join("v1.wasm");
    let v2 = dir.path().join("v2.wasm");
    std::fs::write(&v1, wasm("tandem_test_hostile")).expect("write");
    std::fs::write(&v2, wasm("tandem_test_hostile_v2")).expect("write");
    let d1 = digest(&wasm("tandem_test_hostile"));
    let d2 = digest(&wasm("tandem_test_hostile_v2"));
    let registry = Registry::new(runtime());

    let err = registry.add(spec(&v1, Some(format!("sha256:{d2}")))).expect_err("digest mismatch");
    assert_eq!(err.code(), "plugin_digest_mismatch");
    assert!(err.to_string().contains(&d1) && err.to_string().contains(&d2), "{err}");
    assert!(registry.get("hostile").is_none(), "nothing was added");

    registry.add(spec(&v1, Some(format!("sha256:{d1}")))).expect("pinned v1 loads");
    registry.watch().expect("watch");
    // Changing the pinned file does nothing: pinned plugins follow the configuration only.
    std::fs::write(&v1, wasm("tandem_test_hostile_v2")).expect("write");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(version(&registry), "1.0.0");
    assert!(registry.update_spec(spec(&v2, Some(d2.clone()))).expect("new pin loads"));
    assert_eq!(version(&registry), "2.0.0");
    assert!(!registry.update_spec(spec(&v2, Some(d2))).expect("same spec"), "an unchanged spec reloads nothing");
}

#[test]
fn the_compile_cache_skips_compilation_and_survives_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || RuntimeConfig { cache_dir: Some(dir.path().to_path_buf()), max_instances: 16, max_memory_bytes: 64 << 20 };
    let bytes = wasm("tandem_plugin_trunks");
    let first = Runtime::new(config()).expect("runtime").load("trunks", &bytes, Limits::default()).expect("load");
    assert!(!first.from_cache());
    let second = Runtime::new(config()).expect("runtime").load("trunks", &bytes, Limits::default()).expect("load");
    assert!(second.from_cache());
    assert!(second.load_micros() < first.load_micros(), "cached load {} µs vs compile {} µs", second.load_micros(), first.load_micros());

    for entry in std::fs::read_dir(dir.path()).expect("cache dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "cwasm") {
            let mut code = std::fs::read(&path).expect("read");
            let mid = code.len() / 2;
            code[mid] ^= 0xff;
            std::fs::write(&path, code).expect("corrupt");
        }
    }
    let third = Runtime::new(config()).expect("runtime").load("trunks", &bytes, Limits::default()).expect("load after corruption");
    assert!(!third.from_cache(), "a corrupted entry is recompiled, not trusted");
    let mut s = third.session(Arc::new(NoLookup)).expect("session");
    let ex = third.info().examples[0].clone();
    assert!(s.serialize(&ex.key, &Op::Put(ex.input), None, &Stamp::new(1, 0, "n")).expect("no trap").is_ok());
}
