//! Hostile plugins are contained with the right error while healthy plugins keep serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tandem::plugin::{Limits, LoadedPlugin, Lookup, NoLookup, Op, PluginError, Stamp};
use tandem_tests::{runtime, wasm};

fn hostile(limits: Limits) -> Arc<LoadedPlugin> {
    runtime().load("hostile", &wasm("tandem_test_hostile"), limits).expect("hostile plugin loads")
}

fn put(plugin: &Arc<LoadedPlugin>, key: &str) -> Result<Vec<u8>, PluginError> {
    let mut session = plugin.session(Arc::new(NoLookup))?;
    let out = session.serialize(key, &Op::Put("{\"v\":1}".into()), None, &Stamp::new(1, 0, "n1"))?;
    Ok(out.expect("the hostile plugin accepts every write").data)
}

#[test]
fn an_infinite_loop_runs_out_of_fuel() {
    let p = hostile(Limits { fuel: 50_000_000, ..Limits::default() });
    let err = put(&p, "loop").expect_err("must not return");
    assert!(matches!(err, PluginError::OutOfFuel { call, .. } if call == "serialize"), "{err}");
    assert!(err.to_string().contains("hostile"), "the error names the plugin: {err}");
}

#[test]
fn the_deadline_stops_a_loop_when_fuel_would_last() {
    let p = hostile(Limits { fuel: u64::MAX / 4, deadline_ms: 100, ..Limits::default() });
    let started = Instant::now();
    let err = put(&p, "loop").expect_err("must not return");
    assert_eq!(err.code(), "plugin_deadline", "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "stopped after {:?}", started.elapsed());
}

#[test]
fn a_memory_bomb_hits_the_cap() {
    let p = hostile(Limits { memory_bytes: 8 << 20, ..Limits::default() });
    let err = put(&p, "memory").expect_err("must not return");
    assert!(matches!(err, PluginError::OutOfMemory { limit, .. } if limit == 8 << 20), "{err}");
}

#[test]
fn a_panic_is_a_trap() {
    let err = put(&hostile(Limits::default()), "trap").expect_err("must not return");
    assert_eq!(err.code(), "plugin_trap", "{err}");
    assert!(err.to_string().contains("panicked"), "{err}");
}

#[test]
fn a_stack_overflow_is_contained() {
    // Rust keeps its frames on a shadow stack in linear memory: running off its end is an
    // out-of-bounds access; running out of the engine's native stack is a stack overflow.
    let p = hostile(Limits::default());
    let err = put(&p, "stack").expect_err("must not return");
    assert_eq!(err.code(), "plugin_trap", "{err}");
    let msg = err.to_string();
    assert!(msg.contains("stack overflow") || msg.contains("out of bounds"), "{msg}");
    assert!(put(&p, "ok").is_ok(), "the plugin serves again from a fresh instance");
}

#[test]
fn an_oversized_output_is_refused() {
    let p = hostile(Limits { max_output_bytes: 1 << 20, ..Limits::default() });
    let err = put(&p, "big").expect_err("8 MiB is over the limit");
    assert!(matches!(err, PluginError::OutputTooLarge { size, limit, .. } if size == 8 << 20 && limit == 1 << 20), "{err}");
}

#[test]
fn an_oversized_input_is_not_passed_in() {
    let p = hostile(Limits { max_input_bytes: 1024, ..Limits::default() });
    let mut session = p.session(Arc::new(NoLookup)).expect("session");
    let err = session.merge("ok", &vec![b'1'; 2000], b"x").expect_err("over the input limit");
    assert_eq!(err.code(), "plugin_input_too_large");
    assert_eq!(p.health().calls, 0, "the plugin was not called");
}

#[test]
fn reading_a_file_is_refused_by_the_sandbox() {
    let err = put(&hostile(Limits::default()), "file").expect_err("no files in the sandbox");
    match &err {
        PluginError::Capability { import, .. } => assert!(import.starts_with("wasi:filesystem/"), "{import}"),
        other => panic!("expected a capability error, got {other}"),
    }
    assert!(err.to_string().contains("does not offer"), "{err}");
}

#[test]
fn the_clock_and_randomness_are_inert_and_deterministic() {
    let p = hostile(Limits::default());
    assert_eq!(put(&p, "clock").expect("clock call"), b"0", "a plugin reads the Unix epoch, never the real time");
    let first = put(&p, "random").expect("random call");
    let second = put(&hostile(Limits::default()), "random").expect("random call");
    assert_eq!(first, second, "seeded hashing is the same in every instance");
}

#[test]
fn a_plugin_built_for_another_contract_is_refused_naming_both_versions() {
    let err = runtime().load("future", &wasm("tandem_test_wrong_contract"), Limits::default()).expect_err("must be refused");
    assert_eq!(err.code(), "plugin_incompatible");
    let msg = err.to_string();
    assert!(msg.contains("tandem:plugin@9.0.0") && msg.contains("0.1.0"), "{msg}");
}

#[test]
fn garbage_is_not_a_plugin() {
    let err = runtime().load("junk", b"\0asm\x01\0\0\0garbage", Limits::default()).expect_err("must be refused");
    assert_eq!(err.code(), "plugin_load", "{err}");
}

#[test]
fn the_instance_after_a_trap_is_fresh() {
    let p = hostile(Limits::default());
    let mut session = p.session(Arc::new(NoLookup)).expect("session");
    let stamp = Stamp::new(1, 0, "n1");
    assert!(session.serialize("trap", &Op::Delete, None, &stamp).is_err());
    let ok = session.serialize("ok", &Op::Put("{}".into()), None, &stamp).expect("next call succeeds");
    assert!(ok.is_ok());
}

#[test]
fn repeated_failures_quarantine_the_plugin_until_released() {
    let p = hostile(Limits { quarantine_after: 3, ..Limits::default() });
    for _ in 0..3 {
        assert_eq!(put(&p, "trap").expect_err("traps").code(), "plugin_trap");
    }
    assert!(p.is_quarantined());
    let err = put(&p, "ok").expect_err("quarantined");
    assert_eq!(err.code(), "plugin_quarantined");
    assert!(err.to_string().contains("panicked"), "the last failure is named: {err}");
    assert_eq!(p.health().failures, 3);
    p.release();
    assert!(put(&p, "ok").is_ok());
}

#[test]
fn a_success_resets_the_failure_count() {
    let p = hostile(Limits { quarantine_after: 2, ..Limits::default() });
    assert!(put(&p, "trap").is_err());
    assert!(put(&p, "ok").is_ok());
    assert!(put(&p, "trap").is_err());
    assert!(!p.is_quarantined(), "failures were not consecutive");
}

struct OneTrunk;
impl Lookup for OneTrunk {
    fn lookup(&self, component: &str, key: &str) -> Option<String> {
        (component == "trunks" && key == "carrier-main").then(|| "{\"host\":\"sip.example\"}".to_owned())
    }
}

#[test]
fn validate_reads_other_records_through_the_host_lookup() {
    let p = hostile(Limits::default());
    let stored = put(&p, "lookup").expect("serialize");
    let mut with = p.session(Arc::new(OneTrunk)).expect("session");
    assert_eq!(with.validate("lookup", &stored).expect("no trap"), Ok(()));
    let mut without = p.session(Arc::new(NoLookup)).expect("session");
    let violations = without.validate("lookup", &stored).expect("no trap").expect_err("reference missing");
    assert_eq!(violations[0].code, "reference");
}

#[test]
fn a_healthy_plugin_keeps_serving_while_a_hostile_one_misbehaves() {
    let rt = runtime();
    let bad = rt.load("hostile", &wasm("tandem_test_hostile"), Limits { fuel: 20_000_000, ..Limits::default() }).expect("load");
    let good = rt.load("trunks", &wasm("tandem_plugin_trunks"), Limits::default()).expect("load");
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for key in ["loop", "memory", "trap", "stack"] {
        let (bad, stop, failures) = (bad.clone(), stop.clone(), failures.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if put(&bad, key).is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                bad.release();
            }
        }));
    }
    let example = good.info().examples[0].clone();
    let mut served = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let mut s = good.session(Arc::new(NoLookup)).expect("the healthy plugin is never quarantined");
        let stored = s.serialize(&example.key, &Op::Put(example.input.clone()), None, &Stamp::new(5, 0, "n1")).expect("no trap");
        assert!(stored.is_ok(), "{stored:?}");
        served += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("thread");
    }
    assert!(served > 10, "served {served}");
    assert!(failures.load(Ordering::Relaxed) >= 4, "the hostile calls failed");
    assert_eq!(good.health().failures, 0);
}
