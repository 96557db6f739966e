//! `tandem snapshot create|list|verify|prune` and `tandem restore`: cold backup from the command
//! line. These verbs work on the store file and the backup target directly, so they work whether
//! the node runs or not (a snapshot reads through its own SQLite read transaction; a restore
//! refuses to replace the store of a running node).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::backup::{archive, restore, service, snapshot, time};
use crate::node::config::{CONFIG_FILE, Config};

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Take a snapshot now (consistent as of one point; the node may keep running and writing).
    Create(CreateArgs),
    /// Send a snapshot to a peer's inbox (default: the newest in the backup target). A transfer
    /// that broke off, by this command or the backup thread, resumes where it stopped.
    Send(SendArgs),
    /// List the snapshots and archive segments in the backup target.
    List(ListArgs),
    /// Check snapshots and archive segments completely: checksums, every record, digests, and
    /// that the archive has no holes. Exit code 1 if anything is wrong.
    Verify(VerifyArgs),
    /// Apply the retention policy now: delete expired snapshots and unneeded archive segments.
    Prune(PruneArgs),
    /// Measure snapshot and restore throughput against a plain file copy (writes a scratch store).
    #[command(hide = true)]
    Bench(BenchArgs),
}

/// Which node, and which backup target.
#[derive(Args, Debug, Clone)]
pub struct NodeAndTarget {
    /// The node directory (made by `tandem init`).
    #[arg(long, env = "TANDEM_DIR")]
    pub dir: Option<PathBuf>,
    /// The configuration file, if not DIR/tandem.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The backup target directory (default: `[backup] target` of the configuration).
    #[arg(long, value_name = "DIR")]
    pub target: Option<PathBuf>,
}

impl NodeAndTarget {
    fn config(&self) -> anyhow::Result<Config> {
        let file = match (&self.config, &self.dir) {
            (Some(f), _) => f.clone(),
            (None, Some(d)) => d.join(CONFIG_FILE),
            (None, None) if Path::new(CONFIG_FILE).is_file() => PathBuf::from(CONFIG_FILE),
            (None, None) => bail!("which node? pass --dir DIR (a directory made by `tandem init`) or --config FILE"),
        };
        Ok(Config::load(&file)?)
    }

    fn target(&self, config: Option<&Config>) -> anyhow::Result<PathBuf> {
        if let Some(t) = &self.target {
            return Ok(t.clone());
        }
        let config = config.context("give the backup target with --target DIR")?;
        config
            .raw
            .backup
            .target_dir(&config.file)
            .with_context(|| format!("{} has no [backup] target: set one, or pass --target DIR", config.file.display()))
    }

    /// The target, with the config only if one is given or found.
    fn target_only(&self) -> anyhow::Result<PathBuf> {
        if let Some(t) = &self.target {
            return Ok(t.clone());
        }
        let c = self.config()?;
        self.target(Some(&c))
    }
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub at: NodeAndTarget,
    /// Only these components (repeat); default: the whole store.
    #[arg(long = "component", value_name = "NAME")]
    pub components: Vec<String>,
    /// Also send the snapshot to this peer's inbox over the peer protocol (a `[[peer]]` of the
    /// configuration); it stays in the local target either way.
    #[arg(long, value_name = "PEER")]
    pub to_peer: Option<String>,
    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// The snapshot file (default: the newest snapshot in the backup target).
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub at: NodeAndTarget,
    /// The peer whose inbox receives it (a `[[peer]]` of the configuration).
    #[arg(long, value_name = "PEER")]
    pub to_peer: String,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub at: NodeAndTarget,
    /// As JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Snapshot (.tsnap) or segment (.tseg) files; default: everything in the target.
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub at: NodeAndTarget,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub at: NodeAndTarget,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Records to write into the scratch store.
    #[arg(long, default_value_t = 200_000)]
    pub records: u64,
    /// Bytes of data per record.
    #[arg(long, default_value_t = 200)]
    pub size: usize,
    /// Scratch directory (default: a temporary one).
    #[arg(long)]
    pub scratch: Option<PathBuf>,
}

/// Rebuild a node's store from a snapshot and the log archive. The node must be stopped; the new
/// store is built in a temporary file and renamed into place only once complete and checked.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub at: NodeAndTarget,
    /// Restore this snapshot file (default: the newest full snapshot, at or before --to).
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<PathBuf>,
    /// Point in time to restore (UTC, e.g. 2026-11-25T12:37:57Z, or @MILLISECONDS): the newest
    /// snapshot before it, then the archive up to it. Default: everything archived.
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,
    /// Do not replay the archive: the snapshot's state only.
    #[arg(long, conflicts_with = "to")]
    pub snapshot_only: bool,
    /// Replace an existing store (it is kept beside the new one as store.db.pre-restore-TIME).
    #[arg(long)]
    pub force: bool,
    /// Show what would be restored, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(cmd: SnapshotCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SnapshotCommand::Create(a) => create(a),
        SnapshotCommand::Send(a) => send(a),
        SnapshotCommand::List(a) => list(a),
        SnapshotCommand::Verify(a) => verify(a),
        SnapshotCommand::Prune(a) => prune(a),
        SnapshotCommand::Bench(a) => bench(a),
    }
}

fn bar(total: u64, what: &str) -> ProgressBar {
    styled_bar(total, what, "{msg:>9} [{bar:40}] {pos}/{len} records ({per_sec}, eta {eta})")
}

fn styled_bar(total: u64, what: &str, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    let style = ProgressStyle::with_template(template).map(|s| s.progress_chars("=> ")).unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_message(what.to_owned());
    pb
}

/// Sends a snapshot to a peer's inbox with a progress bar in bytes, and records it as stored
/// there (as the backup thread does).
fn send_to_peer(peer: &crate::backup::peer::PeerTarget, file: &Path, what: &str) -> anyhow::Result<crate::backup::peer::Stored> {
    let pb = styled_bar(0, what, "{msg:>9} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})");
    // The first report is what the peer already holds (a resumed transfer): the rate and the
    // estimate count from there, not from the bytes sent before.
    let first = std::cell::Cell::new(true);
    let progress = |done: u64, total: u64| {
        pb.set_length(total);
        pb.set_position(done);
        if first.replace(false) {
            pb.reset_eta();
        }
    };
    let sent = peer.send_blocking_with(file, Some(&progress));
    pb.finish_and_clear();
    let stored = sent?;
    service::note_stored(file, &stored.peer);
    Ok(stored)
}

fn human_bytes(n: u64) -> String {
    let f = n as f64;
    if n >= 1 << 30 {
        format!("{:.1} GiB", f / f64::from(1u32 << 30))
    } else if n >= 1 << 20 {
        format!("{:.1} MiB", f / f64::from(1u32 << 20))
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", f / 1024.0)
    } else {
        format!("{n} B")
    }
}

fn create(a: CreateArgs) -> anyhow::Result<ExitCode> {
    let config = a.at.config()?;
    let target = a.at.target(Some(&config))?;
    // Before the snapshot: a peer that is not configured is a usage error, not a failed send.
    let peer = a.to_peer.as_deref().map(|name| crate::backup::peer::PeerTarget::from_config(&config, name)).transpose()?;
    let pb = bar(0, "snapshot");
    let progress = |done: u64, total: u64| {
        pb.set_length(total);
        pb.set_position(done);
    };
    let opts = snapshot::CreateOptions {
        components: a.components.clone(),
        level: config.raw.backup.level,
        plugins: service::plugins_from_config(&config),
        progress: Some(&progress),
        on_started: None,
    };
    let started = Instant::now();
    let (path, m) = snapshot::create(&config.store_path(), &target, &opts)?;
    pb.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        println!(
            "snapshot {} : {} records in {} components at seq {} (epoch {}), {} -> {} in {:.2}s",
            path.display(),
            m.records(),
            m.components.len(),
            m.last_seq,
            m.epoch,
            human_bytes(m.body.raw_bytes),
            human_bytes(m.body.compressed_bytes),
            started.elapsed().as_secs_f64()
        );
    }
    if let Some(peer) = peer {
        match send_to_peer(&peer, &path, "to peer") {
            Ok(stored) => {
                eprintln!("sent to peer {}: stored in its inbox as {} ({})", stored.peer, stored.path, human_bytes(stored.bytes));
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                eprintln!("the snapshot is in the local target only: {}", path.display());
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn send(a: SendArgs) -> anyhow::Result<ExitCode> {
    let config = a.at.config()?;
    let peer = crate::backup::peer::PeerTarget::from_config(&config, &a.to_peer)?;
    let file = match a.file {
        Some(f) => f,
        None => {
            let target = a.at.target(Some(&config))?;
            snapshot::newest(&target).with_context(|| format!("there is no readable snapshot in {}", target.display()))?
        }
    };
    let started = Instant::now();
    match send_to_peer(&peer, &file, "sending") {
        Ok(stored) if stored.resumed_from >= stored.bytes => {
            eprintln!("peer {} holds {} already, as {}", stored.peer, file.display(), stored.path);
        }
        Ok(stored) => {
            let resumed = if stored.resumed_from > 0 {
                format!(", resumed after the {} a broken transfer had sent", human_bytes(stored.resumed_from))
            } else {
                String::new()
            };
            eprintln!(
                "sent {} to peer {}: stored in its inbox as {} ({}{resumed}) in {:.1} s",
                file.display(),
                stored.peer,
                stored.path,
                human_bytes(stored.bytes),
                started.elapsed().as_secs_f64()
            );
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            eprintln!("run the same command again once the peer is reachable: the transfer resumes where it stopped");
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let target = a.at.target_only()?;
    let snaps = snapshot::list(&target);
    let segs = archive::list(&target);
    if a.json {
        let snaps: Vec<serde_json::Value> = snaps
            .iter()
            .map(|(p, m)| match m {
                Ok(m) => serde_json::json!({"file": p, "manifest": m}),
                Err(e) => serde_json::json!({"file": p, "error": e.problem}),
            })
            .collect();
        let segs: Vec<serde_json::Value> = segs
            .iter()
            .map(|(p, m)| match m {
                Ok(m) => serde_json::json!({"file": p, "manifest": m}),
                Err(e) => serde_json::json!({"file": p, "error": e.problem}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"snapshots": snaps, "segments": segs}))?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("snapshots in {}", snapshot::dir(&target).display());
    if snaps.is_empty() {
        println!("  (none)");
    }
    for (p, m) in &snaps {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match m {
            Ok(m) => println!(
                "  {:<24} {:<10} {:>9} records  seq {:<8} epoch {:<3} {:>10}  {name}",
                m.created,
                m.scope_label(),
                m.records(),
                m.last_seq,
                m.epoch,
                human_bytes(m.body.compressed_bytes)
            ),
            Err(e) => println!("  UNREADABLE {name}: {}", e.problem),
        }
    }
    let ok: Vec<&archive::SegmentManifest> = segs.iter().filter_map(|(_, m)| m.as_ref().ok()).collect();
    println!("archive in {}: {} segments", archive::dir(&target).display(), segs.len());
    if let (Some(first), Some(last)) = (ok.first(), ok.last()) {
        let entries: u64 = ok.iter().map(|m| m.entries).sum();
        println!(
            "  seq {} to {}, {} to {}, {entries} entries",
            first.after_seq,
            last.last_seq,
            time::format_ms(first.from_ms),
            time::format_ms(last.to_ms)
        );
    }
    for (p, m) in &segs {
        if let Err(e) = m {
            println!("  UNREADABLE {}: {}", p.display(), e.problem);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let files: Vec<PathBuf> = if a.files.is_empty() {
        let target = a.at.target_only()?;
        let mut f: Vec<PathBuf> = snapshot::list(&target).into_iter().map(|(p, _)| p).collect();
        f.extend(archive::list(&target).into_iter().map(|(p, _)| p));
        if f.is_empty() {
            println!("nothing to verify in {}", target.display());
        }
        f
    } else {
        a.files.clone()
    };
    let mut bad = 0usize;
    let pb = bar(files.len() as u64, "verify");
    let mut segs: Vec<archive::SegmentManifest> = Vec::new();
    for f in &files {
        let is_seg = f.extension().is_some_and(|e| e == archive::EXTENSION);
        let result = if is_seg {
            archive::verify(f).map(|m| {
                let line = format!("ok  {}: {} entries, seq {}..{}", f.display(), m.entries, m.after_seq, m.last_seq);
                segs.push(m);
                line
            })
        } else {
            snapshot::verify(f).map(|m| format!("ok  {}: {} records, seq {}, taken {}", f.display(), m.records(), m.last_seq, m.created))
        };
        pb.inc(1);
        match result {
            // println through the bar: a hidden bar (no terminal) would drop pb.println's lines.
            Ok(line) => pb.suspend(|| println!("{line}")),
            Err(e) => {
                bad += 1;
                pb.suspend(|| println!("BAD {e:#}"));
            }
        }
    }
    pb.finish_and_clear();
    // Holes between consecutive segments of one store.
    segs.sort_by_key(|m| (m.node_id.clone(), m.after_seq));
    for w in segs.windows(2) {
        if w[0].node_id == w[1].node_id && w[1].after_seq > w[0].last_seq {
            bad += 1;
            println!(
                "BAD archive: no segment holds the changes after seq {} up to {} (a segment file is missing)",
                w[0].last_seq, w[1].after_seq
            );
        }
    }
    if bad > 0 {
        eprintln!("{bad} problem(s) found");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn prune(a: PruneArgs) -> anyhow::Result<ExitCode> {
    let config = a.at.config()?;
    let target = a.at.target(Some(&config))?;
    let deleted = service::apply_retention(&target, time::now_ms(), config.raw.backup.retention());
    for d in &deleted {
        println!("deleted {}", d.display());
    }
    println!("{} file(s) deleted", deleted.len());
    Ok(ExitCode::SUCCESS)
}

pub fn restore(a: RestoreArgs) -> anyhow::Result<ExitCode> {
    let config = a.at.config()?;
    let target = match a.at.target(Some(&config)) {
        Ok(t) => Some(t),
        Err(e) if a.snapshot.is_none() => return Err(e),
        Err(_) => None,
    };
    let to_ms = a.to.as_deref().map(time::parse_time).transpose().map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    if a.dry_run {
        let plan = restore::plan(target.as_deref(), a.snapshot.as_deref(), to_ms, a.snapshot_only)?;
        println!("would restore {} into {}", plan.snapshot.display(), config.store_path().display());
        println!("  snapshot: {} records, seq {}, taken {}", plan.manifest.records(), plan.manifest.last_seq, plan.manifest.created);
        for (p, m) in &plan.segments {
            println!("  then {}: {} entries up to seq {} ({})", p.display(), m.entries, m.last_seq, time::format_ms(m.to_ms));
        }
        if let Some(t) = to_ms {
            println!("  stopping at {}", time::format_ms(t));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let pb = bar(0, "restore");
    let progress = |done: u64, total: u64, phase: &str| {
        pb.set_message(phase.to_owned());
        pb.set_length(total);
        pb.set_position(done);
    };
    let opts = restore::RestoreOptions {
        target,
        snapshot: a.snapshot.clone(),
        to_ms,
        snapshot_only: a.snapshot_only,
        node_name: config.node_name().to_owned(),
        dest: config.store_path(),
        force: a.force,
        progress: Some(&progress),
    };
    let started = Instant::now();
    let r = restore::restore(&opts)?;
    pb.finish_and_clear();
    println!(
        "restored {} ({} records) and {} archived changes into {} in {:.2}s: seq {}, state as of {}",
        r.plan.snapshot.display(),
        r.records,
        r.replayed,
        r.dest.display(),
        started.elapsed().as_secs_f64(),
        r.last_seq,
        time::format_ms(r.reached_ms)
    );
    if let (Some(t), Some((_, end))) = (to_ms, r.plan.archive_end)
        && end < t
    {
        println!("note: the archive reaches only {}: changes after it are not in the backup", time::format_ms(end));
    }
    if r.unarchived > 0 {
        println!(
            "note: {} versions in the replayed range were overwritten before the archiver read them (or purged): \
             the state at an instant inside that range may miss them (their successors are restored)",
            r.unarchived
        );
    }
    if let Some(p) = &r.previous {
        println!("the previous store is kept as {}", p.display());
    }
    match &r.positions.resume {
        Some((node, seq, epoch)) => println!(
            "replication: catching up from {node} resumes after seq {seq} (epoch {epoch}); other peers' feeds are read again from the start"
        ),
        None => println!("replication: every peer's feed is read again from the start (idempotent)"),
    }
    if let Some(p) = &r.positions.previous {
        println!("the previous replication positions are kept as {}", p.display());
    }
    for (c, n, d, live) in &r.components {
        println!("  {c:<32} {n:>9} records  digest {}  status digest {}", &d[..d.len().min(16)], &live[..live.len().min(16)]);
    }
    Ok(ExitCode::SUCCESS)
}

fn bench(a: BenchArgs) -> anyhow::Result<ExitCode> {
    use crate::node::store::{Store, StoreOptions, WriteRow};
    use crate::plugin::Stamp;
    let tmp;
    let scratch = match &a.scratch {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&scratch)?;
    let store_path = scratch.join("store.db");
    {
        let mut s = Store::open(&store_path, "bench", &StoreOptions::default(), time::now_ms())?;
        let pb = bar(a.records, "fill");
        let mut i = 0u64;
        while i < a.records {
            let n = (a.records - i).min(5000);
            let keys: Vec<String> = (i..i + n).map(|k| format!("k{k:09}")).collect();
            // Semi-compressible data: JSON-like text with varying numbers.
            let datas: Vec<Vec<u8>> = (i..i + n)
                .map(|k| {
                    let mut d = format!("{{\"name\":\"record {k}\",\"value\":{},\"pad\":\"", k.wrapping_mul(2_654_435_761) % 1_000_003)
                        .into_bytes();
                    while d.len() + 2 < a.size {
                        d.extend_from_slice(format!("{:x}", k.wrapping_mul(d.len() as u64 + 7)).as_bytes());
                    }
                    d.truncate(a.size.saturating_sub(2));
                    d.extend_from_slice(b"\"}");
                    d
                })
                .collect();
            let stamps: Vec<Stamp> =
                (i..i + n).map(|k| Stamp { physical: 1_700_000_000_000 + k, logical: 0, node: "bench".into() }).collect();
            let rows: Vec<WriteRow<'_>> = (0..n as usize)
                .map(|j| WriteRow {
                    component: if j % 2 == 0 { "pbx-reports" } else { "crm" },
                    key: &keys[j],
                    data: &datas[j],
                    tombstone: false,
                    stamp: &stamps[j],
                    origin: "bench",
                    idem: None,
                    resolves_conflicts: false,
                    conflict: None,
                    keep: false,
                })
                .collect();
            s.commit(&rows, time::now_ms())?;
            i += n;
            pb.set_position(i);
        }
        s.checkpoint()?;
        pb.finish_and_clear();
    }
    let db_bytes = std::fs::metadata(&store_path)?.len();
    let mb = db_bytes as f64 / 1e6;
    let target = scratch.join("backup");
    let copy_to = scratch.join("copy.db");
    let t = Instant::now();
    std::fs::copy(&store_path, &copy_to)?;
    std::fs::File::open(&copy_to)?.sync_all()?;
    let copy_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (snap, m) = snapshot::create(&store_path, &target, &snapshot::CreateOptions { level: 3, ..Default::default() })?;
    let snap_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    snapshot::verify(&snap)?;
    let verify_s = t.elapsed().as_secs_f64();
    let dest = scratch.join("restored").join("store.db");
    let t = Instant::now();
    restore::restore(&restore::RestoreOptions {
        snapshot: Some(snap.clone()),
        snapshot_only: true,
        node_name: "bench".into(),
        dest: dest.clone(),
        ..Default::default()
    })?;
    let restore_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    std::fs::copy(&copy_to, scratch.join("copy2.db"))?;
    std::fs::File::open(scratch.join("copy2.db"))?.sync_all()?;
    let copy2_s = t.elapsed().as_secs_f64();
    println!(
        "store: {} records of {} B, {:.1} MB on disk; snapshot file {:.1} MB ({:.1}x smaller)",
        a.records,
        a.size,
        mb,
        m.body.compressed_bytes as f64 / 1e6,
        db_bytes as f64 / m.body.compressed_bytes.max(1) as f64
    );
    println!("plain file copy (fs::copy + fsync):  {:>8.3} s  {:>8.1} MB/s", copy_s, mb / copy_s);
    println!("snapshot create:                     {:>8.3} s  {:>8.1} MB/s", snap_s, mb / snap_s);
    println!("snapshot verify:                     {:>8.3} s  {:>8.1} MB/s", verify_s, mb / verify_s);
    println!("restore (build, check, rename):      {:>8.3} s  {:>8.1} MB/s", restore_s, mb / restore_s);
    println!("plain file copy, again:              {:>8.3} s  {:>8.1} MB/s", copy2_s, mb / copy2_s);
    Ok(ExitCode::SUCCESS)
}
