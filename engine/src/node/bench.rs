//! `tandem node-bench`: write throughput of a node, through the HTTP API and through the internal
//! write path, each against plain rusqlite upserts of the same records (the same bytes) with the
//! same batching and the same durability (WAL, `synchronous=FULL`), in the same run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;

use super::client::Client;
use super::config::{CONFIG_FILE, Config};
use super::{NodeOptions, Server};
use crate::plugin::{Limits, NoLookup, Op, Runtime, RuntimeConfig, Stamp};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Records written by each measured run.
    #[arg(long, default_value_t = 20_000)]
    pub records: usize,
    /// Records per transaction for the internal path and its baseline.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Concurrent HTTP clients for the API run.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Bundled component whose first example is written.
    #[arg(long, default_value = "trunks")]
    pub component: String,
    /// Work directory (default: a temporary directory). Put it on the disk you want to measure.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Rounds; each round runs every measurement once, and medians are reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Also run the internal path with the backup thread's log archive on (every committed
    /// version handed to it through the commit tap), right after the same run without it.
    #[arg(long)]
    pub archive: bool,
}

/// Plain rusqlite: upserts of (component, key, bytes) in transactions of a given size, WAL,
/// `synchronous=FULL`: one database for the whole run, like the node's, so that both write to a
/// warm WAL.
struct Baseline {
    conn: rusqlite::Connection,
}

impl Baseline {
    fn open(path: &Path) -> anyhow::Result<Baseline> {
        let _ = std::fs::remove_file(path);
        let conn = rusqlite::Connection::open(path)?;
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE kv (component TEXT NOT NULL, key TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (component, key)) WITHOUT ROWID",
        )?;
        Ok(Baseline { conn })
    }

    /// Seconds to upsert `records` in transactions of `batch`.
    fn run(&mut self, component: &str, records: &[(String, Vec<u8>)], batch: usize) -> anyhow::Result<f64> {
        let started = Instant::now();
        for chunk in records.chunks(batch.max(1)) {
            let tx = self.conn.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO kv (component, key, data) VALUES (?1, ?2, ?3) ON CONFLICT (component, key) DO UPDATE SET data = excluded.data",
                )?;
                for (k, v) in chunk {
                    st.execute(rusqlite::params![component, k, v])?;
                }
            }
            tx.commit()?;
        }
        Ok(started.elapsed().as_secs_f64())
    }
}

/// Writes `keys` through the node's internal path in batches of `batch`, with up to `depth`
/// batches outstanding (as a replication stream would keep them).
fn internal_run(server: &Server, component: &str, doc: &str, keys: &[String], batch: usize, depth: usize) -> anyhow::Result<f64> {
    let node = server.node().clone();
    let started = Instant::now();
    server.block_on(async {
        let mut inflight = std::collections::VecDeque::new();
        let check = |r: Result<Result<Vec<Result<super::types::WriteAck, super::NodeError>>, super::NodeError>, tokio::task::JoinError>| -> anyhow::Result<()> {
            let results = r.map_err(|e| anyhow::anyhow!("{e}"))?.map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                anyhow::bail!("internal write refused: {e}");
            }
            Ok(())
        };
        for chunk in keys.chunks(batch.max(1)) {
            let writes: Vec<(String, Op)> = chunk.iter().map(|k| (k.clone(), Op::Put(doc.to_owned()))).collect();
            let (node, component) = (node.clone(), component.to_owned());
            inflight.push_back(tokio::spawn(async move { node.write_many(&component, writes).await }));
            if inflight.len() >= depth.max(1)
                && let Some(h) = inflight.pop_front()
            {
                check(h.await)?;
            }
        }
        while let Some(h) = inflight.pop_front() {
            check(h.await)?;
        }
        anyhow::Ok(())
    })?;
    Ok(started.elapsed().as_secs_f64())
}

fn node_config(dir: &Path, component: &str, plugin: &Path) -> anyhow::Result<Config> {
    let text = format!(
        "[node]\nname = \"bench\"\nlisten = \"127.0.0.1:1\"\napi = \"127.0.0.1:0\"\n[api]\ntoken = \"bench-token-0123456789\"\n[components.{component}]\nplugin = {}\n[backup]\ntarget = \"backup\"\nsegment_age = \"1s\"\n",
        super::config::toml_str(&plugin.display().to_string())
    );
    let file = dir.join(CONFIG_FILE);
    std::fs::write(&file, &text)?;
    Ok(Config::load(&file)?)
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let wasm = crate::bundled::get(&args.component).with_context(|| format!("{} is not a bundled plugin", args.component))?;
    let plugin_path = dir.join(format!("{}.wasm", args.component));
    std::fs::write(&plugin_path, wasm)?;
    // The records: the component's first example under distinct keys, in stored form (the
    // baseline writes exactly the bytes the node stores).
    let runtime = Runtime::new(RuntimeConfig { cache_dir: Some(dir.join("cache")), ..RuntimeConfig::default() })?;
    let plugin = runtime.load(&args.component, wasm, Limits::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let example = plugin.info().examples.first().cloned().context("the plugin has no example")?;
    let mut session = plugin.session(Arc::new(NoLookup)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stored = session
        .serialize(&example.key, &Op::Put(example.input.clone()), None, &Stamp::new(1_700_000_000_000, 0, "bench"))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    // What the plugin costs per record, on one instance (the write path makes these three calls).
    let calls = 2000usize;
    let (mut ser, mut val, mut de) = (0f64, 0f64, 0f64);
    for i in 0..calls {
        let key = format!("p{i:07}");
        let stamp = Stamp::new(1_700_000_000_000 + i as u64, 0, "bench");
        let t = Instant::now();
        let st = session.serialize(&key, &Op::Put(example.input.clone()), None, &stamp).map_err(|e| anyhow::anyhow!("{e}"))?;
        ser += t.elapsed().as_secs_f64();
        let st = st.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let t = Instant::now();
        let _ = session.validate(&key, &st.data).map_err(|e| anyhow::anyhow!("{e}"))?;
        val += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _ = session.deserialize(&key, &st.data).map_err(|e| anyhow::anyhow!("{e}"))?;
        de += t.elapsed().as_secs_f64();
    }
    let per = |x: f64| x / calls as f64 * 1e6;
    let plugin_us = (per(ser), per(val), per(de));
    drop(session);
    let n = args.records;
    let keys = |prefix: &str, count: usize| (0..count).map(|i| format!("{prefix}{i:07}")).collect::<Vec<_>>();
    let stored_of = |ks: &[String]| ks.iter().map(|k| (k.clone(), stored.data.clone())).collect::<Vec<_>>();
    let singles = (n / 10).clamp(100, 2_000);
    let repeat = args.repeat.max(1);
    println!(
        "node-bench: {n} records of {} ({} bytes stored, {} bytes JSON) per run, {repeat} rounds (medians shown), in {}",
        args.component,
        stored.data.len(),
        example.input.len(),
        dir.display()
    );

    let node_dir = dir.join("node");
    let _ = std::fs::remove_dir_all(&node_dir);
    std::fs::create_dir_all(&node_dir)?;
    let config = node_config(&node_dir, &args.component, &plugin_path)?;
    let server = Server::start(config, NodeOptions::default())?;
    let node = server.node().clone();
    let addr = server.api_addr().to_string();
    let token = node.config().raw.api.token.clone();
    let clients = args.clients.max(1);

    let mut baseline = Baseline::open(&dir.join("plain.db"))?;
    // Warm both up (WAL files grown, caches filled), untimed.
    baseline.run(&args.component, &stored_of(&keys("warm-", n / 2)), args.batch)?;
    internal_run(&server, &args.component, &example.input, &keys("warm-", n / 2), args.batch, 2)?;

    // Each round runs every measurement once, a baseline right before its node run, so that
    // both see the same disk weather; rounds give medians.
    let mut series: Vec<(String, Vec<f64>, f64, usize)> = Vec::new();
    let mut record = |label: String, rate: f64, batch: f64, records: usize| match series.iter_mut().find(|(l, ..)| *l == label) {
        Some((_, rates, b, _)) => {
            rates.push(rate);
            *b += batch;
        }
        None => series.push((label, vec![rate], batch, records)),
    };
    for round in 0..repeat {
        let base = baseline.run(&args.component, &stored_of(&keys(&format!("s{round}-"), n)), args.batch)?;
        record(format!("plain SQLite, batch {}", args.batch), n as f64 / base, args.batch as f64, n);
        let secs = internal_run(&server, &args.component, &example.input, &keys(&format!("i{round}-"), n), args.batch, 2)?;
        record(format!("node internal path, batch {}", args.batch), n as f64 / secs, args.batch as f64, n);
        if args.archive {
            // The same run with a consumer that only drains the commit tap: the writer's share.
            let rx = node.commit_tap().subscribe();
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let drain = {
                let done = done.clone();
                std::thread::spawn(move || {
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        if rx.recv_timeout(std::time::Duration::from_millis(20)).is_err() {
                            return;
                        }
                    }
                })
            };
            let secs = internal_run(&server, &args.component, &example.input, &keys(&format!("t{round}-"), n), args.batch, 2)?;
            record(format!("node internal path, batch {}, commit tap drained", args.batch), n as f64 / secs, args.batch as f64, n);
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = drain.join();
            // The same run with the log archive taking every committed version.
            let backup = crate::backup::service::start(&node)?.context("the bench node has a backup target")?;
            let secs = internal_run(&server, &args.component, &example.input, &keys(&format!("a{round}-"), n), args.batch, 2)?;
            record(format!("node internal path, batch {}, log archive on", args.batch), n as f64 / secs, args.batch as f64, n);
            let started = Instant::now();
            for k in keys(&format!("a1{round}-"), singles) {
                server.block_on(node.put(&args.component, &k, &example.input, None)).map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            record("node internal path, batch 1, log archive on".into(), singles as f64 / started.elapsed().as_secs_f64(), 1.0, singles);
            let st = backup.status();
            backup.stop();
            println!("round {round}: archive at seq {} of {}, {} gaps", st.archive_seq, node.last_seq(), st.archive_gaps);
        }

        // Single writes, one at a time: fsync-bound on both sides.
        let base = baseline.run(&args.component, &stored_of(&keys(&format!("1s{round}-"), singles)), 1)?;
        record("plain SQLite, batch 1".into(), singles as f64 / base, 1.0, singles);
        let started = Instant::now();
        for k in keys(&format!("o{round}-"), singles) {
            server.block_on(node.put(&args.component, &k, &example.input, None)).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        record("node internal path, batch 1".into(), singles as f64 / started.elapsed().as_secs_f64(), 1.0, singles);

        // The HTTP API: C clients, one PUT per request; the node batches concurrent writes
        // into shared commits (group commit). The baseline then uses the mean batch it reached.
        let commits_before = node.status().store.commits;
        let api_keys = Arc::new(keys(&format!("h{round}-"), n));
        let started = Instant::now();
        let mut handles = Vec::new();
        for c in 0..clients {
            let (addr, token, keys, doc, comp) =
                (addr.clone(), token.clone(), api_keys.clone(), example.input.clone(), args.component.clone());
            handles.push(std::thread::spawn(move || -> anyhow::Result<()> {
                let client = Client::new(&addr, &token);
                for k in keys.iter().skip(c).step_by(clients) {
                    client.put(&comp, k, &doc, None).map_err(|e| anyhow::anyhow!("{e}"))?;
                }
                Ok(())
            }));
        }
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        }
        let api_secs = started.elapsed().as_secs_f64();
        let commits = node.status().store.commits.saturating_sub(commits_before).max(1);
        let mean_batch = n as f64 / commits as f64;
        let same_batch = (mean_batch.round() as usize).max(1);
        let base = baseline.run(&args.component, &stored_of(&keys(&format!("ms{round}-"), n)), same_batch)?;
        record("plain SQLite, the API run's mean batch".to_owned(), n as f64 / base, same_batch as f64, n);
        record(format!("node HTTP API, {clients} clients"), n as f64 / api_secs, mean_batch, n);
    }
    server.shutdown();

    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!();
    println!("| run | records | mean batch | records/s (median) | all rounds |");
    println!("|---|---:|---:|---:|---|");
    for (label, rates, batch, records) in &series {
        let all: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        println!("| {label} | {records} | {:.1} | {:.0} | {} |", batch / rates.len() as f64, median(rates), all.join(", "));
    }
    let rate = |label: &str| series.iter().find(|(l, ..)| l == label).map(|(_, r, ..)| median(r)).unwrap_or(0.0);
    println!();
    println!(
        "plugin calls per record (one instance): serialize {:.0} µs, validate {:.0} µs, deserialize {:.0} µs; total {:.0} µs",
        plugin_us.0,
        plugin_us.1,
        plugin_us.2,
        plugin_us.0 + plugin_us.1 + plugin_us.2
    );
    println!(
        "internal path / SQLite at batch {}: {:.2}x",
        args.batch,
        rate(&format!("node internal path, batch {}", args.batch)) / rate(&format!("plain SQLite, batch {}", args.batch)).max(1e-9)
    );
    println!("internal path / SQLite at batch 1: {:.2}x", rate("node internal path, batch 1") / rate("plain SQLite, batch 1").max(1e-9));
    println!(
        "HTTP API / SQLite at the API's mean batch: {:.2}x",
        rate(&format!("node HTTP API, {clients} clients")) / rate("plain SQLite, the API run's mean batch").max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}
