//! The stages of a local write, one at a time in one thread, each as the thread's CPU time per
//! record: the plugin's `serialize`, `validate` and `deserialize` (in batches of BATCH per
//! instance, as a lane runs them) and the node store's `commit` of the stored bytes, beside plain
//! SQLite upserts of the same bytes with the same batching; then the time the store takes to
//! open again, and to check its kept digests (which a node does on a reader after it started).
//!
//! cargo run --profile bench -p tandem-tests --example bench_write_path [-- RECORDS [BATCH]]
//!
//! `TANDEM_BENCH_PLUGIN=FILE` times that trunks plugin file instead of the bundled one (e.g. one
//! rebuilt after an SDK change, without rebuilding the engine that embeds the bundled plugins).

use std::time::Instant;

use tandem::node::store::{Store, StoreOptions, WriteRow};
use tandem::plugin::{Op, Session, Stamp};
use tandem_tests::bench::{plain_sqlite_upserts, thread_cpu_ns};

/// Bytes this process has handed to write calls so far (`/proc/self/io`, `wchar`).
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("wchar: ").and_then(|v| v.trim().parse().ok())))
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(40_000);
    let batch: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(168);
    let root = tempfile::tempdir().expect("tempdir");
    let runtime = tandem::plugin::Runtime::new(tandem::plugin::RuntimeConfig::default()).expect("runtime");
    let file = std::env::var_os("TANDEM_BENCH_PLUGIN").map(|p| std::fs::read(p).expect("read TANDEM_BENCH_PLUGIN"));
    let bytes = file.as_deref().unwrap_or_else(|| tandem::bundled::get("trunks").expect("bundled trunks"));
    let plugin = runtime.load("trunks", bytes, tandem::plugin::Limits::default()).expect("plugin");
    let stamp = Stamp::new(1_700_000_000_000, 0, "a");
    let inputs: Vec<(String, Op)> = (0..n)
        .map(|i| {
            let key = format!("trunk-{i:06}");
            (key, Op::Put(format!("{{\"host\": \"h{i}.carrier.example\", \"transport\": \"udp\", \"max_channels\": {}}}", 10 + i % 50)))
        })
        .collect();
    // Each call on its own pass, so that each is timed alone (validate and deserialize then
    // decode the bytes, where after serialize in one session the SDK reuses its document), then
    // the three in one session, as a local write runs them.
    let per_record = |since: u64| (thread_cpu_ns() - since) as f64 / n as f64 / 1000.0;
    let pass = |each: &mut dyn FnMut(&mut Session, usize)| {
        let cpu = thread_cpu_ns();
        for start in (0..n).step_by(batch) {
            let mut session = plugin.session(std::sync::Arc::new(tandem::plugin::NoLookup)).expect("session");
            for i in start..(start + batch).min(n) {
                each(&mut session, i);
            }
        }
        per_record(cpu)
    };
    let mut records: Vec<(String, Vec<u8>)> = Vec::with_capacity(n);
    let serialize = pass(&mut |s, i| {
        let (key, op) = &inputs[i];
        let stored = s.serialize(key, op, None, &stamp).expect("call").expect("serialize");
        records.push((key.clone(), stored.data.to_vec()));
    });
    let validate = pass(&mut |s, i| s.validate(&records[i].0, &records[i].1).expect("call").expect("valid"));
    let deserialize = pass(&mut |s, i| drop(s.deserialize(&records[i].0, &records[i].1).expect("call").expect("live")));
    let together = pass(&mut |s, i| {
        let (key, op) = &inputs[i];
        let stored = s.serialize(key, op, None, &stamp).expect("call").expect("serialize");
        s.validate(key, &stored.data).expect("call").expect("valid");
        s.deserialize(key, &stored.data).expect("call").expect("live");
    });
    println!("records {n}, batch {batch}; CPU time per record:");
    println!("plugin serialize {serialize:6.2} µs, validate {validate:6.2} µs, deserialize {deserialize:6.2} µs");
    println!("plugin serialize + validate + deserialize in one session, as a local write runs them: {together:6.2} µs");

    let (cpu, written) = (thread_cpu_ns(), written_bytes());
    let took = plain_sqlite_upserts(&root.path().join("plain.db"), &records, batch);
    let (plain_wall, plain_cpu) = (took.as_nanos() as f64 / n as f64 / 1000.0, per_record(cpu));
    let plain_written = (written_bytes() - written) / n as u64;
    println!("plain SQLite upserts:  {plain_wall:6.2} µs wall, {plain_cpu:6.2} µs CPU, {plain_written} bytes written per row");

    let mut store = Store::open(&root.path().join("store.db"), "a", &StoreOptions::default(), 1).expect("store");
    let (t, cpu, written) = (Instant::now(), thread_cpu_ns(), written_bytes());
    for chunk in records.chunks(batch) {
        let rows: Vec<WriteRow<'_>> = chunk
            .iter()
            .map(|(k, v)| WriteRow {
                component: "trunks",
                key: k,
                data: v,
                tombstone: false,
                stamp: &stamp,
                origin: "a",
                idem: None,
                resolves_conflicts: true,
                conflict: None,
                keep: false,
            })
            .collect();
        store.commit(&rows, 1).expect("commit");
    }
    let (wall, cpu) = (t.elapsed().as_nanos() as f64 / n as f64 / 1000.0, per_record(cpu));
    let written = (written_bytes() - written) / n as u64;
    println!(
        "node store commit:     {wall:6.2} µs wall, {cpu:6.2} µs CPU, {written} bytes written per row ({:.2}x, {:.2}x, {:.2}x)",
        wall / plain_wall,
        cpu / plain_cpu,
        written as f64 / plain_written.max(1) as f64
    );

    // Opening the store again: what a node's start waits for, with the page cache warm.
    drop(store);
    let t = Instant::now();
    let store = Store::open(&root.path().join("store.db"), "a", &StoreOptions::default(), 2).expect("reopen");
    let open_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let readers = tandem::node::store::Readers::new(&root.path().join("store.db"), 1);
    let found = readers.with(|c| tandem::node::store::scrub_digests(c, &Default::default())).expect("scrub");
    assert!(found.is_empty(), "{found:?}");
    println!(
        "store open with {n} records: {open_ms:.1} ms; the scrub of its digests after a start (on a reader): {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    drop(store);
}
