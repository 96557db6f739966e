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
}

struct Measured {
    label: String,
    records: usize,
    secs: f64,
    batch: f64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.records as f64 / self.secs.max(1e-9)
    }
}

/// Plain rusqlite: upserts of (component, key, bytes) in transactions of `batch`, WAL, FULL.
fn sqlite_baseline(path: &Path, component: &str, records: &[(String, Vec<u8>)], batch: usize) -> anyhow::Result<f64> {
    let _ = std::fs::remove_file(path);
    let mut conn = rusqlite::Connection::open(path)?;
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE kv (component TEXT NOT NULL, key TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (component, key)) WITHOUT ROWID",
    )?;
    let started = Instant::now();
    for chunk in records.chunks(batch.max(1)) {
        let tx = conn.transaction()?;
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

fn node_config(dir: &Path, component: &str, plugin: &Path) -> anyhow::Result<Config> {
    let text = format!(
        "[node]\nname = \"bench\"\nlisten = \"127.0.0.1:1\"\napi = \"127.0.0.1:0\"\n[api]\ntoken = \"bench-token-0123456789\"\n[components.{component}]\nplugin = {}\n",
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
    drop(session);
    let n = args.records;
    let keys = |prefix: &str| (0..n).map(|i| format!("{prefix}{i:07}")).collect::<Vec<_>>();
    let stored_of = |ks: &[String]| ks.iter().map(|k| (k.clone(), stored.data.clone())).collect::<Vec<_>>();
    let mut results: Vec<Measured> = Vec::new();

    println!(
        "node-bench: {n} records of {} ({} bytes stored, {} bytes JSON) per run, in {}",
        args.component,
        stored.data.len(),
        example.input.len(),
        dir.display()
    );

    // Internal write path vs SQLite, batch B.
    let base_b = sqlite_baseline(&dir.join("plain-b.db"), &args.component, &stored_of(&keys("s")), args.batch)?;
    results.push(Measured { label: format!("plain SQLite, batch {}", args.batch), records: n, secs: base_b, batch: args.batch as f64 });

    let node_dir = dir.join("node");
    let _ = std::fs::remove_dir_all(&node_dir);
    std::fs::create_dir_all(&node_dir)?;
    let config = node_config(&node_dir, &args.component, &plugin_path)?;
    let server = Server::start(config, NodeOptions::default())?;
    let node = server.node().clone();
    let internal_keys = keys("i");
    let started = Instant::now();
    for chunk in internal_keys.chunks(args.batch.max(1)) {
        let writes = chunk.iter().map(|k| (k.clone(), Op::Put(example.input.clone()))).collect();
        let results = server.block_on(node.write_many(&args.component, writes)).map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            anyhow::bail!("internal write refused: {e}");
        }
    }
    let internal = started.elapsed().as_secs_f64();
    results.push(Measured {
        label: format!("node internal path, batch {}", args.batch),
        records: n,
        secs: internal,
        batch: args.batch as f64,
    });

    // Single writes, one at a time: fsync-bound on both sides.
    let singles = (n / 10).clamp(100, 2_000);
    let base_1 = sqlite_baseline(&dir.join("plain-1.db"), &args.component, &stored_of(&keys("s")[..singles]), 1)?;
    results.push(Measured { label: "plain SQLite, batch 1".into(), records: singles, secs: base_1, batch: 1.0 });
    let single_keys: Vec<String> = (0..singles).map(|i| format!("one{i:07}")).collect();
    let started = Instant::now();
    for k in &single_keys {
        server.block_on(node.put(&args.component, k, &example.input, None)).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    results.push(Measured {
        label: "node internal path, batch 1".into(),
        records: singles,
        secs: started.elapsed().as_secs_f64(),
        batch: 1.0,
    });

    // The HTTP API: C clients, one PUT per request; the node batches concurrent writes into
    // shared commits (group commit).
    let status_before = node.status();
    let commits_before = status_before.store.commits;
    let addr = server.api_addr().to_string();
    let token = node.config().raw.api.token.clone();
    let api_keys = Arc::new(keys("h"));
    let clients = args.clients.max(1);
    let started = Instant::now();
    let mut handles = Vec::new();
    for c in 0..clients {
        let (addr, token, keys, doc, comp) = (addr.clone(), token.clone(), api_keys.clone(), example.input.clone(), args.component.clone());
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
    results.push(Measured { label: format!("node HTTP API, {clients} clients"), records: n, secs: api_secs, batch: mean_batch });
    let same_batch = (mean_batch.round() as usize).max(1);
    let base_api = sqlite_baseline(&dir.join("plain-api.db"), &args.component, &stored_of(&keys("s")), same_batch)?;
    results.push(Measured {
        label: format!("plain SQLite, batch {same_batch} (the API run's mean)"),
        records: n,
        secs: base_api,
        batch: same_batch as f64,
    });
    server.shutdown();

    println!();
    println!("| run | records | mean batch | seconds | records/s |");
    println!("|---|---:|---:|---:|---:|");
    for m in &results {
        println!("| {} | {} | {:.1} | {:.3} | {:.0} |", m.label, m.records, m.batch, m.secs, m.rate());
    }
    let rate = |label_start: &str| results.iter().find(|m| m.label.starts_with(label_start)).map(Measured::rate).unwrap_or(0.0);
    println!();
    println!(
        "internal path / SQLite at batch {}: {:.2}x",
        args.batch,
        rate(&format!("node internal path, batch {}", args.batch)) / rate(&format!("plain SQLite, batch {}", args.batch)).max(1e-9)
    );
    println!("internal path / SQLite at batch 1: {:.2}x", rate("node internal path, batch 1") / rate("plain SQLite, batch 1").max(1e-9));
    println!(
        "HTTP API / SQLite at the API's mean batch ({same_batch}): {:.2}x",
        rate("node HTTP API") / rate(&format!("plain SQLite, batch {same_batch} ")).max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}
