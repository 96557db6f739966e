//! `tandem demo`: a real local cluster on an embedded default. Two nodes in temporary
//! directories on loopback ports, with the bundled plugins and cluster credentials made for the
//! occasion: a warm component (trunks) written on the primary shows up on the standby, which
//! refuses writes naming the primary; a hot component (crm) written on both nodes at once
//! converges to the same digest. Then the primary stops without a word and the standby takes
//! over by itself (a witness gives the third vote): the takeover time is printed. Every step
//! prints the time it took.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::node::{Config, NodeOptions, Server};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the temporary node directories (their path is printed) instead of deleting them.
    #[arg(long)]
    pub keep: bool,
    /// Compile the plugins again instead of using the demo's compile cache (in
    /// `$XDG_CACHE_HOME/tandem` or `~/.cache/tandem`, one set of the bundled plugins' code).
    #[arg(long)]
    pub no_cache: bool,
}

/// The compile cache of the bundled plugins this build embeds, kept between runs so that only
/// the first one compiles them: `CACHE_HOME/tandem/demo-compile-cache-ID`, where ID names the
/// bundled plugins and this version. Caches of other builds are removed, so it holds one set.
/// `None` without a home directory, or when it cannot be made.
fn persistent_cache() -> Option<std::path::PathBuf> {
    use sha2::{Digest, Sha256};
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| Path::new(&h).join(".cache")))?
        .join("tandem");
    let mut h = Sha256::new();
    h.update(env!("CARGO_PKG_VERSION"));
    for (name, wasm) in crate::bundled::BUNDLED {
        h.update(name.as_bytes());
        h.update(wasm);
    }
    let id = hex::encode(h.finalize());
    let prefix = "demo-compile-cache-";
    let dir = base.join(format!("{prefix}{}", id.get(..16).unwrap_or(&id)));
    std::fs::create_dir_all(&dir).ok()?;
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            let stale = e.file_name().to_str().is_some_and(|n| n.starts_with(prefix)) && e.path() != dir;
            if stale {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Some(dir)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn write_witness(root: &Path, port: u16, peers: [(&str, u16); 2], ca_from: &Path) -> anyhow::Result<std::path::PathBuf> {
    let dir = root.join("w");
    std::fs::create_dir_all(&dir).context("creating the witness directory")?;
    crate::peer::tls::write_node_credentials(&dir, "w", Some(ca_from))?;
    let token = hex::encode(rand::random::<[u8; 16]>());
    let text = format!(
        "[node]\nname = \"w\"\nrole = \"witness\"\nlisten = \"127.0.0.1:{port}\"\napi = \"127.0.0.1:0\"\n\n[api]\ntoken = \"{token}\"\n\n\
         [cluster]\nmode = \"warm\"\nca = \"cluster-ca.pem\"\ncert = \"node.pem\"\nkey = \"node.key\"\n\n\
         [[peer]]\nname = \"{}\"\naddress = \"127.0.0.1:{}\"\n\n[[peer]]\nname = \"{}\"\naddress = \"127.0.0.1:{}\"\n",
        peers[0].0, peers[0].1, peers[1].0, peers[1].1
    );
    std::fs::write(dir.join(crate::node::config::CONFIG_FILE), text).context("writing the witness configuration")?;
    Ok(dir)
}

fn write_node(
    root: &Path,
    name: &str,
    port: u16,
    peer: (&str, u16),
    witness: u16,
    ca_from: Option<&Path>,
    cache: &Path,
) -> anyhow::Result<std::path::PathBuf> {
    let dir = root.join(name);
    crate::bundled::write_all(&dir.join("plugins")).context("writing the bundled plugins")?;
    crate::peer::tls::write_node_credentials(&dir, name, ca_from)?;
    let token = hex::encode(rand::random::<[u8; 16]>());
    let text = format!(
        "[node]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\napi = \"127.0.0.1:0\"\n\n[api]\ntoken = \"{token}\"\n\n\
         [cluster]\nmode = \"warm\"\nprimary = \"a\"\nca = \"cluster-ca.pem\"\ncert = \"node.pem\"\nkey = \"node.key\"\n\n\
         [[peer]]\nname = \"{}\"\naddress = \"127.0.0.1:{}\"\n\n[witness]\nname = \"w\"\naddress = \"127.0.0.1:{witness}\"\n\n[plugins]\ncache_dir = {:?}\nwatch = false\n\n[runtime]\nworkers = 2\n\n\
         [components.trunks]\nplugin = \"plugins/trunks.wasm\"\nmode = \"warm\"\nack = \"standby\"\npriority = \"high\"\n\n\
         [components.crm]\nplugin = \"plugins/crm.wasm\"\nmode = \"hot\"\n",
        peer.0,
        peer.1,
        cache.display().to_string()
    );
    std::fs::write(dir.join(crate::node::config::CONFIG_FILE), text).context("writing the demo configuration")?;
    Ok(dir)
}

fn start(dir: &Path) -> anyhow::Result<Server> {
    let config = Config::load(&dir.join(crate::node::config::CONFIG_FILE)).map_err(|e| anyhow::anyhow!("{e}"))?;
    Server::start(config, NodeOptions::default())
}

fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while !cond() {
        if started.elapsed() > timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(started.elapsed())
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let tmp = tempfile::Builder::new().prefix("tandem-demo-").tempdir().context("creating a temporary directory")?;
    let root = tmp.path().to_path_buf();
    let (pa, pb, pw) = (free_port()?, free_port()?, free_port()?);
    let lasting = if args.no_cache { None } else { persistent_cache() };
    let cache = lasting.clone().unwrap_or_else(|| root.join("compile-cache"));
    let a_dir = write_node(&root, "a", pa, ("b", pb), pw, None, &cache)?;
    let b_dir = write_node(&root, "b", pb, ("a", pa), pw, Some(&a_dir), &cache)?;
    let w_dir = write_witness(&root, pw, [("a", pa), ("b", pb)], &a_dir)?;
    // The bundled plugins, briefly (compiled into the cache the two nodes then share).
    let t = Instant::now();
    let runtime = crate::plugin::Runtime::new(crate::plugin::RuntimeConfig { cache_dir: Some(cache.clone()), ..Default::default() })?;
    println!("Bundled plugins (sandboxed WebAssembly components):");
    let mut cached = 0;
    for (name, wasm) in crate::bundled::BUNDLED {
        let p = runtime.load(name, wasm, crate::plugin::Limits::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
        cached += usize::from(p.from_cache());
        println!(
            "  {:<34} {:>8}  sha256:{}…  {:>6.1} ms",
            p.name(),
            p.info().plugin_version,
            p.digest().trim_start_matches("sha256:").get(..12).unwrap_or(p.digest()),
            p.load_micros() as f64 / 1000.0
        );
    }
    let from = match &lasting {
        Some(dir) => format!("{cached} of them from the compile cache {} (`--no-cache` compiles them again)", dir.display()),
        None => "compiled for this run".to_owned(),
    };
    println!("  {} plugins in {}, {from}\n", crate::bundled::BUNDLED.len(), ms(t.elapsed()));
    drop(runtime);
    println!("A two-node cluster and a witness in {} (peer links: mutual TLS with a cluster CA made just now)", root.display());

    let t = Instant::now();
    let w = start(&w_dir)?;
    let a = start(&a_dir)?;
    let b = start(&b_dir)?;
    println!("  nodes a and b and witness w started in {} (plugins compiled once, then cached)", ms(t.elapsed()));
    let role = |s: &Server| s.replication().map(|r| r.status().role).unwrap_or_default();
    let elected = wait("a to hold the primary's lease", Duration::from_secs(20), || role(&a) == "primary")?;
    println!("  consensus (a, b, w) assigned a as the warm primary; a holds its lease after {}", ms(elected));
    let plugins = a.node().registry().status();
    println!(
        "  components: {}",
        plugins.iter().map(|p| format!("{} (from cache: {})", p.component, p.from_cache)).collect::<Vec<_>>().join(", ")
    );
    let linked = wait("the nodes to link", Duration::from_secs(20), || {
        [&a, &b].iter().all(|s| s.replication().is_some_and(|r| r.status().peers.iter().all(|p| p.following)))
    })?;
    println!("  linked in {}", ms(linked));

    // Warm: write on the primary, read on the standby.
    println!("\nWarm (trunks, primary a, `standby` acks):");
    let doc = r#"{"host": "sip.carrier.example", "port": 5060, "transport": "udp", "max_channels": 60}"#;
    let t = Instant::now();
    let ack = a.block_on(a.node().put("trunks", "carrier-main", doc, None)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let acked = t.elapsed();
    let seen = wait("the standby to have the trunk", Duration::from_secs(10), || {
        b.block_on(b.node().get("trunks", "carrier-main"))
            .ok()
            .flatten()
            .is_some_and(|r| r.stamp.physical == ack.stamp.physical && r.stamp.logical == ack.stamp.logical)
    })?;
    println!("  put on a: acknowledged in {} (after b had it on disk); on b after {}", ms(acked), ms(acked + seen));
    let on_b = b.block_on(b.node().get("trunks", "carrier-main")).map_err(|e| anyhow::anyhow!("{e}"))?.context("missing on b")?;
    println!("  get on b: {}", on_b.doc);
    match b.block_on(b.node().put("trunks", "carrier-backup", doc, None)) {
        Err(e) => println!("  put on b: refused ({}): {e}", e.code()),
        Ok(_) => println!("  put on b: accepted (unexpected for a standby)"),
    }

    // Hot: both nodes write the same record at once.
    println!("\nHot (crm, both nodes writable):");
    let key = "account:01J8Z3K4M5N6P7Q8R9S0T1V2W3";
    let t = Instant::now();
    let (na, nb) = (a.node().clone(), b.node().clone());
    let wa = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(na.put("crm", key, r#"{"kind": "account", "name": "Northwind", "industry": "wholesale"}"#, None))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    });
    let wb = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(nb.put("crm", key, r#"{"kind": "account", "name": "Northwind", "website": "https://northwind.example"}"#, None))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    });
    wa.join().map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    wb.join().map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    let written = t.elapsed();
    let digest = |s: &Server| s.node().digest("crm").unwrap_or_default();
    let converged = wait("the crm digests to converge", Duration::from_secs(10), || digest(&a) == digest(&b))?;
    println!("  a and b wrote {key} concurrently in {}; digests equal {} later: {}", ms(written), ms(converged), &digest(&a));
    for (name, s) in [("a", &a), ("b", &b)] {
        let r = s.block_on(s.node().get("crm", key)).map_err(|e| anyhow::anyhow!("{e}"))?.context("missing")?;
        println!("  on {name}: {}", r.doc);
    }
    let st = a.replication().map(|r| r.status()).unwrap_or_default();
    for p in st.peers {
        println!("\nPeer {} from a: following {}, applied seq {}, acknowledged {}", p.name, p.following, p.applied_seq, p.acked_by_peer);
    }

    // Failover: the primary goes away without a word; the standby takes over by itself.
    println!("\nFailover (lease {} ms, the witness gives the third vote):", crate::failover::timing_of(&a.node().config().raw).lease_ms);
    let before = b.block_on(b.node().get("trunks", "carrier-main")).ok().flatten().is_some();
    let t = Instant::now();
    drop(a);
    wait("b to take over", Duration::from_secs(30), || role(&b) == "primary")?;
    let takeover = t.elapsed();
    let epoch = b.node().epoch();
    println!("  a stopped; b accepts warm writes {} later, in epoch {epoch}", ms(takeover));
    let t = Instant::now();
    let ack = b.block_on(b.node().put("trunks", "carrier-backup", doc, None));
    match ack {
        Ok(_) => println!("  put on b: acknowledged in {}; the trunk written on a before is on b: {before}", ms(t.elapsed())),
        Err(e) => println!("  put on b: {e}"),
    }
    println!("  takeover time: {}", ms(takeover));
    drop(b);
    drop(w);
    if args.keep {
        let kept = tmp.keep();
        println!("\nNode directories kept in {}", kept.display());
    }
    Ok(ExitCode::SUCCESS)
}
