//! Replication benchmark: replicated write throughput with `local` and with `standby` acks,
//! replication lag p50/p99 at a fixed rate, single `standby`-ack write latency, and hot-mode
//! writes on both nodes with the time until their digests agree, each beside
//! plain local SQLite with the same batching (WAL, synchronous=FULL) in the same run; and one
//! writer committing batches of 1, 8 and 64 records one at a time on both sides. Two nodes
//! in-process on loopback.
//!
//! cargo run -p tandem-tests --example bench_replication [-- RECORDS]

use std::path::Path;
use std::time::{Duration, Instant};

use tandem::node::Server;
use tandem::plugin::Op;
use tandem_tests::bench::{cpu_by_thread, cpu_line, plain_sqlite_upserts};
use tandem_tests::cluster::{NodeDef, free_port, write_cluster_node};
use tandem_tests::start_node;

const BATCH: usize = 64;

fn trunk(i: usize) -> (String, Op) {
    (
        format!("trunk-{i:06}"),
        Op::Put(format!("{{\"host\": \"h{i}.carrier.example\", \"transport\": \"udp\", \"max_channels\": {}}}", 10 + i % 50)),
    )
}

/// Two linked nodes, `a` the warm primary, with `trunks` acknowledged with `ack` (`hot`: the
/// component in hot mode instead, both nodes writable).
fn pair(root: &Path, ack: &str) -> (Server, Server) {
    let (ap, bp) = (free_port(), free_port());
    let extra = if ack == "hot" {
        "\n[components.trunks]\nplugin = \"plugins/trunks.wasm\"\nmode = \"hot\"\n".to_owned()
    } else {
        format!("\n[components.trunks]\nplugin = \"plugins/trunks.wasm\"\nack = \"{ack}\"\n")
    };
    let cluster = "mode = \"warm\"\nprimary = \"a\"\nack_timeout_ms = 5000";
    let a = write_cluster_node(
        root,
        &NodeDef { name: "a", port: ap, peers: vec![("b".into(), format!("127.0.0.1:{bp}"))], cluster, extra: &extra },
        &["trunks"],
        None,
    );
    let b = write_cluster_node(
        root,
        &NodeDef { name: "b", port: bp, peers: vec![("a".into(), format!("127.0.0.1:{ap}"))], cluster, extra: &extra },
        &["trunks"],
        Some(&a),
    );
    let profile = profile();
    for dir in [&a, &b] {
        let file = dir.join("tandem.toml");
        let text = std::fs::read_to_string(&file).expect("read the config");
        let text = text.replace("\n[[peer]]\n", &format!("\n[[peer]]\nprofile = \"{profile}\"\n"));
        std::fs::write(&file, text).expect("write the config");
    }
    let (a, b) = (start_node(&a), start_node(&b));
    let t = Instant::now();
    while !b.replication().is_some_and(|r| r.status().peers.iter().any(|p| p.following)) {
        assert!(t.elapsed() < Duration::from_secs(30), "the standby does not follow");
        std::thread::sleep(Duration::from_millis(10));
    }
    (a, b)
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// The link profile between the two nodes: `local`, or `TANDEM_BENCH_PROFILE` (`geo`: zstd
/// frames, the geo timings).
fn profile() -> String {
    std::env::var("TANDEM_BENCH_PROFILE").unwrap_or_else(|_| "local".into())
}

/// Concurrent writers of the throughput phases: 8, or `TANDEM_BENCH_WRITERS`.
fn writers() -> usize {
    std::env::var("TANDEM_BENCH_WRITERS").ok().and_then(|v| v.parse().ok()).filter(|&w| w > 0).unwrap_or(8)
}

/// Writes the trunks of `keys` on `server` in batches of `BATCH` from [`writers`] concurrent
/// writers (the node groups concurrent batches into one commit).
fn write_concurrently(server: &Server, keys: std::ops::Range<usize>) {
    let writers = writers();
    let node = server.node().clone();
    server.block_on(async move {
        let mut set = tokio::task::JoinSet::new();
        for w in 0..writers {
            let node = node.clone();
            let mine: Vec<usize> = keys.clone().filter(|i| i % writers == w).collect();
            set.spawn(async move {
                for chunk in mine.chunks(BATCH) {
                    let writes = chunk.iter().map(|&i| trunk(i)).collect();
                    for r in node.write_many("trunks", writes).await.expect("write_many") {
                        r.expect("write");
                    }
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.expect("writer");
        }
    });
}

/// Hot mode: `n` writes in batches of `BATCH`, half on each node from [`writers`] concurrent
/// writers each, a third of the keys written on both nodes (their versions merge). Returns the
/// acknowledged rate and the time from the last acknowledgement until both nodes' digests are
/// equal.
fn hot(a: &Server, b: &Server, n: usize) -> (f64, Duration) {
    let cpu = cpu_by_thread();
    let started = Instant::now();
    std::thread::scope(|s| {
        for (server, first) in [(a, 0), (b, n / 3)] {
            s.spawn(move || write_concurrently(server, first..first + n / 2));
        }
    });
    let acked = started.elapsed();
    let digest = |s: &Server| s.node().digest("trunks").unwrap_or_default();
    while digest(a) != digest(b) {
        assert!(started.elapsed() < Duration::from_secs(120), "the hot digests do not converge");
        std::thread::sleep(Duration::from_millis(1));
    }
    let converged = started.elapsed() - acked;
    println!("  {}", cpu_line(&cpu, n, started.elapsed()));
    (n as f64 / acked.as_secs_f64(), converged)
}

/// Writes `n` records in batches of `BATCH` on the primary from [`writers`] concurrent writers
/// (the node groups concurrent batches into one commit); returns (acked rate, replicated rate).
fn throughput(a: &Server, b: &Server, n: usize, offset: usize) -> (f64, f64) {
    let cpu = cpu_by_thread();
    let started = Instant::now();
    write_concurrently(a, offset..offset + n);
    let acked = started.elapsed().as_secs_f64();
    wait_replicated(a, b);
    let replicated = started.elapsed().as_secs_f64();
    println!("  {}", cpu_line(&cpu, n, started.elapsed()));
    (n as f64 / acked, n as f64 / replicated)
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let root = tempfile::tempdir().expect("tempdir");

    // Baseline: the stored bytes of the same records, through plain SQLite.
    let (a, b) = pair(&root.path().join("local"), "local");
    let plugin = a.node().registry().get("trunks").expect("plugin");
    let mut session = plugin.session(std::sync::Arc::new(tandem::plugin::NoLookup)).expect("session");
    let records: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let (k, op) = trunk(i);
            let stored = session.serialize(&k, &op, None, &tandem::plugin::Stamp::new(1, 0, "a")).expect("call").expect("serialize");
            (k, stored.data.to_vec())
        })
        .collect();
    let cpu = cpu_by_thread();
    let took = plain_sqlite_upserts(&root.path().join("baseline.db"), &records, BATCH);
    let sqlite = n as f64 / took.as_secs_f64();
    println!("records {n}, batch {BATCH}, {} concurrent writers, {} link", writers(), profile());
    println!("plain SQLite upserts (WAL, FULL)            {sqlite:>10.0} writes/s");
    println!("  {}", cpu_line(&cpu, n, took));

    let (acked, replicated) = throughput(&a, &b, n, 0);
    println!("local ack: acknowledged on the primary       {acked:>10.0} writes/s  ({:.2}x SQLite)", acked / sqlite);
    println!("local ack: on the standby (replicated)       {replicated:>10.0} writes/s  ({:.2}x SQLite)", replicated / sqlite);

    // Lag at a fixed offered rate: 10 writes every millisecond (10,000/s) for 3 s, open loop (a
    // new batch every tick whatever the earlier ones are doing, as many clients would send).
    let r = b.replication().expect("replication");
    let _ = r.take_lag_samples();
    let node = a.node().clone();
    let (offered, mut acks) = a.block_on(async move {
        let started = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut set = tokio::task::JoinSet::new();
        let mut i = n;
        while started.elapsed() < Duration::from_secs(3) {
            tick.tick().await;
            let writes = (i..i + 10).map(trunk).collect();
            i += 10;
            let node = node.clone();
            set.spawn(async move {
                let t = Instant::now();
                for w in node.write_many("trunks", writes).await.expect("write_many") {
                    w.expect("write");
                }
                t.elapsed().as_micros() as u64
            });
        }
        let offered = (i - n) as f64 / started.elapsed().as_secs_f64();
        let mut acks = Vec::new();
        while let Some(t) = set.join_next().await {
            acks.push(t.expect("writer"));
        }
        (offered, acks)
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut lags = r.take_lag_samples();
    println!(
        "lag at {offered:.0} writes/s offered: p50 {} ms, p99 {} ms, max {} ms ({} versions; ms resolution of the HLC)",
        pct(&mut lags, 0.5),
        pct(&mut lags, 0.99),
        lags.last().copied().unwrap_or(0),
        lags.len()
    );
    println!("  primary's ack time of those batches of 10: p50 {} µs, p99 {} µs", pct(&mut acks, 0.5), pct(&mut acks, 0.99));
    // Single writes, local ack.
    let mut single = single_writes(&a);
    println!("single write, local ack: median {} µs, p99 {} µs", pct(&mut single, 0.5), pct(&mut single, 0.99));
    println!("one writer, one batch at a time (each batch one commit on both sides), local ack:");
    for (i, batch) in [1usize, 8, BATCH].into_iter().enumerate() {
        let k = n.min(2_000 * batch);
        let plain = n_per_s(k, plain_sqlite_upserts(&root.path().join(format!("sequential-{batch}.db")), &records[..k], batch));
        let (acked, replicated) = sequential(&a, &b, 2_000_000 + i * 1_000_000..2_000_000 + i * 1_000_000 + k, batch);
        println!(
            "  batches of {batch:>2}: plain SQLite {plain:>7.0} writes/s, acknowledged {acked:>7.0} ({:.2}x), replicated {replicated:>7.0} ({:.2}x)",
            acked / plain,
            replicated / plain
        );
    }
    drop(a);
    drop(b);

    let (a, b) = pair(&root.path().join("hot"), "hot");
    let (rate, converged) = hot(&a, &b, n);
    println!("hot (both nodes write, a third of the keys on both): {rate:>8.0} writes/s acknowledged ({:.2}x SQLite)", rate / sqlite);
    println!("  digests equal on both nodes {:.1} ms after the last acknowledgement (target: under 1 s)", converged.as_secs_f64() * 1000.0);
    drop(a);
    drop(b);

    if profile() != "local" {
        // Only `local` peers join the synchronous set: a node refuses `standby` acks without one.
        println!("standby ack: not measured on a {} link (only local peers count for `standby` acks)", profile());
        return;
    }
    let (a, b) = pair(&root.path().join("standby"), "standby");
    let (acked, replicated) = throughput(&a, &b, n, 0);
    println!("standby ack: acknowledged                    {acked:>10.0} writes/s  ({:.2}x SQLite)", acked / sqlite);
    println!("standby ack: on the standby                  {replicated:>10.0} writes/s  ({:.2}x SQLite)", replicated / sqlite);
    let mut single = single_writes(&a);
    println!("single write, standby ack: median {} µs, p99 {} µs", pct(&mut single, 0.5), pct(&mut single, 0.99));
}

/// Waits until the standby `b` has applied (on its disk) the primary `a`'s last position.
fn wait_replicated(a: &Server, b: &Server) {
    let target = a.node().last_seq();
    let applied = || b.replication().map(|r| r.status().peers.iter().map(|p| p.applied_seq).max().unwrap_or(0)).unwrap_or(0);
    while applied() < target {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn n_per_s(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

/// Writes the trunks of `keys` on the primary from one writer, in batches of `batch`, each
/// waited for before the next (each batch is one commit); returns (acked rate, replicated rate).
fn sequential(a: &Server, b: &Server, keys: std::ops::Range<usize>, batch: usize) -> (f64, f64) {
    let n = keys.len();
    let node = a.node().clone();
    let started = Instant::now();
    a.block_on(async move {
        let keys: Vec<usize> = keys.collect();
        for chunk in keys.chunks(batch) {
            let writes = chunk.iter().map(|&i| trunk(i)).collect();
            for r in node.write_many("trunks", writes).await.expect("write_many") {
                r.expect("write");
            }
        }
    });
    let acked = started.elapsed();
    wait_replicated(a, b);
    (n_per_s(n, acked), n_per_s(n, started.elapsed()))
}

/// 300 sequential single-record writes on `a`: each one's time to acknowledgement (µs).
fn single_writes(a: &Server) -> Vec<u64> {
    (0..300)
        .map(|j| {
            let (k, op) = trunk(900_000 + j);
            let t = Instant::now();
            a.block_on(a.node().write("trunks", &k, op, None)).expect("write");
            t.elapsed().as_micros() as u64
        })
        .collect()
}
