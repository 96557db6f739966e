//! Cold backup: snapshots, the log archive, point-in-time restore, corruption detection.
//!
//! Most tests drive a store directly (the backup code reads the store file through its own
//! connection, exactly as it does beside a running node); the last one runs a real node with a
//! `[backup]` section and restores its backups into a second node's directory with the CLI.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tandem::backup::archive::{self, Archiver, ArchiverOptions};
use tandem::backup::restore::{self, RestoreOptions};
use tandem::backup::snapshot::{self, CreateOptions};
use tandem::backup::time::now_ms;
use tandem::node::store::{self, ConflictRow, Store, StoreOptions, WriteRow};
use tandem::plugin::Stamp;

const COMPONENTS: [&str; 3] = ["trunks", "extensions", "pbx-reports"];

/// One write: component, key, data (None: a tombstone).
type W = (String, String, Option<Vec<u8>>);

fn commit(s: &mut Store, writes: &[W], physical: u64) -> Vec<u64> {
    let stamp = Stamp { physical, logical: 0, node: "a".into() };
    let rows: Vec<WriteRow<'_>> = writes
        .iter()
        .map(|(c, k, d)| WriteRow {
            component: c,
            key: k,
            data: d.as_deref().unwrap_or(b""),
            tombstone: d.is_none(),
            stamp: &stamp,
            origin: "a",
            idem: None,
            resolves_conflicts: false,
            conflict: None,
            keep: false,
        })
        .collect();
    s.commit(&rows, physical).expect("commit").seqs
}

fn w(c: &str, k: &str, d: &str) -> W {
    (c.to_owned(), k.to_owned(), Some(d.as_bytes().to_vec()))
}

fn del(c: &str, k: &str) -> W {
    (c.to_owned(), k.to_owned(), None)
}

/// Component -> (records, digest).
type Digests = BTreeMap<String, (u64, String)>;

/// (records, digest) of every component of a store file.
fn digests(path: &Path) -> Digests {
    let conn = store::open_for_inspection(path).expect("open");
    let mut out = BTreeMap::new();
    for c in store::components(&conn).expect("components") {
        let (n, _) = store::counts(&conn, &c).expect("counts");
        out.insert(c.clone(), (n, store::digest(&conn, &c).expect("digest")));
    }
    out
}

fn fill(s: &mut Store, n: usize, round: usize) {
    let mut writes = Vec::new();
    for i in 0..n {
        let c = COMPONENTS[i % COMPONENTS.len()];
        writes.push(w(c, &format!("k{i:05}"), &format!("{{\"round\":{round},\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 50))));
    }
    commit(s, &writes, now_ms());
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn restore_to(target: &Path, to_ms: Option<u64>, dest: &Path) -> restore::Report {
    restore::restore(&RestoreOptions {
        target: Some(target.to_path_buf()),
        to_ms,
        node_name: "b".into(),
        dest: dest.to_path_buf(),
        force: true,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("restore to {to_ms:?}: {e:#}"))
}

#[test]
fn backup_restore_equals_the_source_digests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("a").join("store.db");
    let target = dir.path().join("backup");
    let mut s = Store::open(&src, "a", &StoreOptions::default(), now_ms()).expect("open");
    fill(&mut s, 3000, 0);
    commit(&mut s, &[del("trunks", "k00003"), del("extensions", "k00004"), w("crm", "c1", "{}")], now_ms());
    // A conflict rides along.
    let c = ConflictRow {
        id: "c1".into(),
        component: "trunks".into(),
        key: "k00006".into(),
        reason: "merge does not validate".into(),
        violations: "[]".into(),
        versions: "[]".into(),
        detected_p: 1,
        detected_seq: 1,
        resolved_seq: None,
        resolution: None,
    };
    let stamp = Stamp { physical: now_ms(), logical: 0, node: "b".into() };
    let row = WriteRow {
        component: "trunks",
        key: "k00006",
        data: b"merged",
        tombstone: false,
        stamp: &stamp,
        origin: "b",
        idem: None,
        resolves_conflicts: false,
        conflict: Some(&c),
        keep: false,
    };
    s.commit(&[row], now_ms()).expect("commit");
    s.set_epoch(7).expect("epoch");
    let last_seq = s.meta().last_seq;

    let (file, m) = snapshot::create(&src, &target, &CreateOptions { level: 3, ..Default::default() }).expect("snapshot");
    assert_eq!(m.last_seq, last_seq);
    assert_eq!(m.epoch, 7);
    assert_eq!(m.records(), 3001);
    assert_eq!(m.conflicts, 1);
    assert!(m.body.compressed_bytes < m.body.raw_bytes, "{:?}", m.body);
    assert!(m.clock_min.is_some() && m.clock_max >= m.clock_min);
    let source = digests(&src);
    for c in &m.components {
        assert_eq!(source.get(&c.name), Some(&(c.records, c.digest.clone())), "manifest digest of {}", c.name);
    }
    assert_eq!(snapshot::verify(&file).expect("verify"), m);

    // Restore into another node's (empty) directory.
    let dest = dir.path().join("b").join("store.db");
    let r = restore::restore(&RestoreOptions {
        snapshot: Some(file.clone()),
        snapshot_only: true,
        node_name: "b".into(),
        dest: dest.clone(),
        ..Default::default()
    })
    .expect("restore");
    assert_eq!(r.records, 3001);
    assert_eq!(digests(&dest), source);
    drop(s);
    // The restored store opens as node b, keeps the epoch, the seq and the conflict.
    let b = Store::open(&dest, "b", &StoreOptions::default(), now_ms()).expect("open the restored store");
    assert_eq!(b.meta().epoch, 7);
    assert_eq!(b.meta().last_seq, last_seq);
    assert_eq!(store::open_conflicts(b.conn()).expect("conflicts"), 1);
    assert_eq!(store::integrity_check(b.conn()).expect("check"), "ok");
    drop(b);

    // A component snapshot holds only that component.
    let (_, part) =
        snapshot::create(&src, &target, &CreateOptions { components: vec!["crm".into()], ..Default::default() }).expect("snapshot");
    assert_eq!(part.components.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), vec!["crm"]);
    assert_eq!(part.records(), 1);
}

#[test]
fn backup_snapshot_under_a_write_burst_is_consistent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("store.db");
    let target = dir.path().join("backup");
    let mut s = Store::open(&src, "a", &StoreOptions::default(), now_ms()).expect("open");
    // Every commit writes the same round number to key i of two components and bumps a counter
    // record: a consistent snapshot has equal pairs and a counter equal to the rounds it holds.
    let keys = 400;
    let round0: Vec<W> = (0..keys)
        .flat_map(|i| [w("trunks", &format!("k{i}"), "0"), w("extensions", &format!("k{i}"), "0")])
        .chain([w("crm", "counter", "0")])
        .collect();
    commit(&mut s, &round0, now_ms());
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, rounds) = (stop.clone(), rounds.clone());
        std::thread::spawn(move || {
            let mut r = 0u64;
            while !stop.load(Ordering::SeqCst) {
                r += 1;
                let mut writes = Vec::new();
                for j in 0..20 {
                    let i = (r as usize * 37 + j * 11) % keys;
                    writes.push(w("trunks", &format!("k{i}"), &r.to_string()));
                    writes.push(w("extensions", &format!("k{i}"), &r.to_string()));
                }
                writes.push(w("crm", "counter", &r.to_string()));
                commit(&mut s, &writes, now_ms());
                rounds.store(r, Ordering::SeqCst);
            }
            s
        })
    };
    let mut snaps = Vec::new();
    for _ in 0..4 {
        while rounds.load(Ordering::SeqCst) < 5 {
            sleep_ms(1);
        }
        let before = rounds.load(Ordering::SeqCst);
        // Let the writer commit more rounds after the snapshot's read has begun.
        let started = || {
            let at = rounds.load(Ordering::SeqCst);
            while rounds.load(Ordering::SeqCst) < at + 3 {
                std::thread::yield_now();
            }
        };
        let (file, m) =
            snapshot::create(&src, &target, &CreateOptions { on_started: Some(&started), ..Default::default() }).expect("snapshot");
        let after = rounds.load(Ordering::SeqCst);
        assert!(after >= before + 3, "the writer kept committing during the snapshot");
        snaps.push((file, m));
        sleep_ms(5);
    }
    stop.store(true, Ordering::SeqCst);
    let s = writer.join().expect("writer");
    for (file, m) in &snaps {
        let mut pairs: BTreeMap<(String, String), Vec<u8>> = BTreeMap::new();
        let mut counter = None;
        let mut max_seq = 0;
        snapshot::scan(file, |e| {
            if let snapshot::Entry::Record(r) = e {
                max_seq = max_seq.max(r.seq);
                if r.component == "crm" {
                    counter = Some(String::from_utf8(r.data).expect("utf8"));
                } else {
                    pairs.insert((r.component, r.key), r.data);
                }
            }
            Ok(())
        })
        .expect("scan");
        assert_eq!(max_seq, m.last_seq, "{}: the newest record is the snapshot point", file.display());
        for i in 0..keys {
            let k = format!("k{i}");
            assert_eq!(pairs.get(&("trunks".into(), k.clone())), pairs.get(&("extensions".into(), k.clone())), "pair {k} torn");
        }
        // Round r is the only commit holding counter = r: the newest round in the snapshot.
        let counter: u64 = counter.expect("counter").parse().expect("number");
        let newest = pairs.values().map(|v| String::from_utf8_lossy(v).parse::<u64>().unwrap_or(0)).max().unwrap_or(0);
        assert_eq!(counter, newest, "{}: counter and records from different points", file.display());
        // Exactly the commits up to the point: each round commits 41 rows.
        assert_eq!(m.last_seq, u64::try_from(keys * 2 + 1).unwrap_or(0) + counter * 41, "{}", file.display());
    }
    assert!(s.meta().last_seq > snaps.last().map_or(0, |(_, m)| m.last_seq));
}

#[test]
fn backup_point_in_time_restores_match_the_state_at_those_instants() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("a").join("store.db");
    let target = dir.path().join("backup");
    let mut s = Store::open(&src, "a", &StoreOptions::default(), now_ms()).expect("open");
    fill(&mut s, 300, 0);
    let (_, first) = snapshot::create(&src, &target, &CreateOptions::default()).expect("snapshot");
    // Small segments: several files, and the test's instants fall inside and between them.
    let mut archiver =
        Archiver::open(&src, &target, ArchiverOptions { segment_bytes: 4096, segment_age: Duration::from_secs(3600) }).expect("archiver");
    let mut instants: Vec<(u64, Digests)> = Vec::new();
    let mut second_snapshot = None;
    for phase in 1..=8usize {
        sleep_ms(3);
        let mut writes = Vec::new();
        for i in 0..40 {
            let key = format!("k{:05}", (phase * 53 + i * 7) % 300);
            let c = COMPONENTS[(phase + i) % COMPONENTS.len()];
            if i % 9 == 0 {
                writes.push(del(c, &key));
            } else {
                writes.push(w(c, &key, &format!("{{\"phase\":{phase},\"i\":{i}}}")));
            }
        }
        writes.push(w("crm", &format!("new{phase}"), "{}"));
        commit(&mut s, &writes[..20], now_ms());
        archiver.poll().expect("poll");
        commit(&mut s, &writes[20..], now_ms());
        archiver.poll().expect("poll");
        sleep_ms(3);
        instants.push((now_ms(), digests(&src)));
        if phase == 4 {
            sleep_ms(3);
            second_snapshot = Some(snapshot::create(&src, &target, &CreateOptions::default()).expect("snapshot").1);
        }
    }
    archiver.flush().expect("flush");
    let final_state = digests(&src);
    let segments = archive::list(&target);
    assert!(segments.len() >= 3, "{} segments", segments.len());
    for (p, _) in &segments {
        archive::verify(p).expect("segment verifies");
    }
    let second = second_snapshot.expect("second snapshot");
    for (i, (at, expected)) in instants.iter().enumerate() {
        let dest = dir.path().join(format!("pitr{i}")).join("store.db");
        let r = restore_to(&target, Some(*at), &dest);
        let want_snapshot = if *at >= second.created_ms { &second } else { &first };
        assert_eq!(r.plan.manifest.last_seq, want_snapshot.last_seq, "instant {i}: the newest snapshot before it");
        assert!(r.replayed > 0, "instant {i}: archive replayed");
        assert_eq!(r.unarchived, 0, "instant {i}: the archiver read every version");
        assert_eq!(&digests(&dest), expected, "instant {i} ({at})");
    }
    // Before the first write after the first snapshot: the snapshot's state.
    let dest = dir.path().join("pitr-first").join("store.db");
    let r = restore_to(&target, Some(first.created_ms), &dest);
    assert_eq!(r.replayed, 0);
    // No --to: everything archived, i.e. the final state.
    let dest = dir.path().join("latest").join("store.db");
    assert_eq!(restore_to(&target, None, &dest).unarchived, 0);
    assert_eq!(digests(&dest), final_state);
    // A key written twice between two archiver passes: the first version is not archived, the
    // restore says so, and the latest state is still exact.
    commit(&mut s, &[w("trunks", "twice", "1")], now_ms());
    commit(&mut s, &[w("trunks", "twice", "2")], now_ms());
    archiver.poll().expect("poll");
    archiver.flush().expect("flush");
    let r = restore_to(&target, None, &dest);
    assert_eq!(r.unarchived, 1);
    assert_eq!(digests(&dest), digests(&src));
    // Before the oldest snapshot: refused with the oldest snapshot's time.
    let e = restore::restore(&RestoreOptions {
        target: Some(target.clone()),
        to_ms: Some(first.created_ms - 1000),
        node_name: "b".into(),
        dest: dir.path().join("early").join("store.db"),
        ..Default::default()
    })
    .expect_err("too early");
    assert!(format!("{e:#}").contains("no full snapshot"), "{e:#}");
}

/// A copy of `file` changed by `f`, in a directory of its own.
fn damaged(dir: &Path, file: &Path, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(file).expect("read");
    f(&mut bytes);
    let out = dir.join(name);
    std::fs::write(&out, bytes).expect("write");
    out
}

fn refusal(result: anyhow::Result<impl std::fmt::Debug>) -> String {
    format!("{:#}", result.expect_err("refused"))
}

#[test]
fn backup_corruption_of_each_kind_is_detected_and_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("a").join("store.db");
    let target = dir.path().join("backup");
    let mut s = Store::open(&src, "a", &StoreOptions::default(), now_ms()).expect("open");
    fill(&mut s, 2000, 0);
    let (snap, m) = snapshot::create(&src, &target, &CreateOptions::default()).expect("snapshot");
    let mut archiver = Archiver::open(&src, &target, ArchiverOptions::default()).expect("archiver");
    fill(&mut s, 500, 1);
    archiver.poll().expect("poll");
    let seg1 = archiver.flush().expect("flush").expect("a segment");
    fill(&mut s, 500, 2);
    archiver.poll().expect("poll");
    let seg2 = archiver.flush().expect("flush").expect("a segment");
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).expect("mkdir");
    let size = std::fs::metadata(&snap).expect("stat").len() as usize;
    let body_mid = 8 + usize::try_from(m.body.compressed_bytes / 2).unwrap_or(0);
    let manifest_at = 8 + usize::try_from(m.body.compressed_bytes).unwrap_or(0) + 40;

    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("truncated", damaged(&bad, &snap, "truncated.tsnap", |b| b.truncate(size - 100)), "truncated"),
        ("cut in the body", damaged(&bad, &snap, "cut.tsnap", |b| b.truncate(body_mid)), "truncated"),
        ("empty", damaged(&bad, &snap, "empty.tsnap", Vec::clear), "truncated"),
        ("flipped body byte", damaged(&bad, &snap, "body.tsnap", |b| b[body_mid] ^= 0x40), "records section is corrupted"),
        ("flipped manifest byte", damaged(&bad, &snap, "manifest.tsnap", |b| b[manifest_at] ^= 0x01), "manifest"),
        ("flipped checksum", damaged(&bad, &snap, "sum.tsnap", |b| b[size - 20] ^= 0x01), "checksum mismatch"),
        ("wrong magic", damaged(&bad, &snap, "magic.tsnap", |b| b[0] = b'X'), "not a Tandem snapshot"),
        ("segment for snapshot", damaged(&bad, &seg1, "seg-as-snap.tsnap", |_| ()), "not a Tandem snapshot"),
        (
            "bad manifest length",
            damaged(&bad, &snap, "len.tsnap", |b| {
                let at = b.len() - 48;
                b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
            }),
            "corrupt trailer",
        ),
    ];
    for (what, file, expect) in &cases {
        let msg = refusal(snapshot::verify(file));
        assert!(msg.contains(&file.display().to_string()), "{what}: the message names the file: {msg}");
        assert!(msg.contains(expect), "{what}: expected {expect:?} in {msg}");
    }

    // A manifest whose digests do not match the records (checksums recomputed, so only the
    // digest check can tell).
    let forged = {
        let mut m2 = m.clone();
        m2.components[0].digest = "00".repeat(32);
        let bytes = std::fs::read(&snap).expect("read");
        let body_end = 8 + usize::try_from(m.body.compressed_bytes).unwrap_or(0);
        let mut out = bytes[..body_end].to_vec();
        let json = serde_json::to_vec_pretty(&m2).expect("json");
        out.extend_from_slice(&json);
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        let sum = tandem::backup::container::sha256(&out);
        out.extend_from_slice(&sum);
        out.extend_from_slice(b"TNDMEND1");
        let p = bad.join("forged.tsnap");
        std::fs::write(&p, out).expect("write");
        p
    };
    let msg = refusal(snapshot::verify(&forged));
    assert!(msg.contains("forged.tsnap") && msg.contains("digest") && msg.contains(&m.components[0].name), "{msg}");

    // Segments: truncated and altered.
    let seg_size = std::fs::metadata(&seg1).expect("stat").len() as usize;
    let t = damaged(&bad, &seg1, "t.tseg", |b| b.truncate(seg_size / 2));
    let msg = refusal(archive::verify(&t));
    assert!(msg.contains("t.tseg") && msg.contains("truncated"), "{msg}");
    let f = damaged(&bad, &seg1, "f.tseg", |b| b[20] ^= 0x10);
    let msg = refusal(archive::verify(&f));
    assert!(msg.contains("f.tseg") && msg.contains("corrupted"), "{msg}");

    // In the target: a restore refuses a damaged segment, naming it, and leaves no store.
    let dest = dir.path().join("b").join("store.db");
    let original = std::fs::read(&seg2).expect("read");
    std::fs::write(&seg2, &original[..original.len() - 10]).expect("truncate");
    let msg = refusal(restore::restore(&RestoreOptions {
        target: Some(target.clone()),
        node_name: "b".into(),
        dest: dest.clone(),
        ..Default::default()
    }));
    assert!(msg.contains(&seg2.display().to_string()) && msg.contains("truncated"), "{msg}");
    assert!(!dest.exists(), "no store after a refused restore");
    // A missing segment is a hole in the archive: refused, naming where the hole is.
    std::fs::remove_file(&seg2).expect("rm");
    std::fs::remove_file(&seg1).expect("rm");
    std::fs::write(&seg2, &original).expect("restore seg2");
    let msg = refusal(restore::restore(&RestoreOptions {
        target: Some(target.clone()),
        node_name: "b".into(),
        dest: dest.clone(),
        ..Default::default()
    }));
    assert!(msg.contains("missing the changes after seq") && msg.contains(&m.last_seq.to_string()), "{msg}");
    assert!(!dest.exists());
}

#[test]
fn backup_restore_never_leaves_a_half_written_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("a").join("store.db");
    let target = dir.path().join("backup");
    let mut s = Store::open(&src, "a", &StoreOptions::default(), now_ms()).expect("open");
    fill(&mut s, 1500, 0);
    let (good, _) = snapshot::create(&src, &target, &CreateOptions::default()).expect("snapshot");
    // The destination node already has a store with other data.
    let dest_dir = dir.path().join("b");
    let dest = dest_dir.join("store.db");
    {
        let mut b = Store::open(&dest, "b", &StoreOptions::default(), now_ms()).expect("open");
        commit(&mut b, &[w("trunks", "mine", "1")], now_ms());
    }
    let before = digests(&dest);
    // Without --force: refused.
    let msg = refusal(restore::restore(&RestoreOptions {
        snapshot: Some(good.clone()),
        node_name: "b".into(),
        dest: dest.clone(),
        ..Default::default()
    }));
    assert!(msg.contains("--force"), "{msg}");
    // A snapshot that fails half-way through its records: the existing store is untouched and
    // no temporary file is left.
    let len = std::fs::metadata(&good).expect("stat").len() as usize;
    let m = snapshot::read_manifest(&good).expect("manifest");
    let broken = damaged(dir.path(), &good, "broken.tsnap", |b| {
        let at = 8 + usize::try_from(m.body.compressed_bytes).unwrap_or(0) * 3 / 4;
        b[at] ^= 0xff;
        assert!(at < len);
    });
    let msg = refusal(restore::restore(&RestoreOptions {
        snapshot: Some(broken),
        node_name: "b".into(),
        dest: dest.clone(),
        force: true,
        ..Default::default()
    }));
    assert!(msg.contains("broken.tsnap"), "{msg}");
    assert_eq!(digests(&dest), before);
    let names: Vec<String> =
        std::fs::read_dir(&dest_dir).expect("ls").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.contains("restoring")), "temporary files left: {names:?}");
    // With --force and a good snapshot: replaced, the old store kept beside it.
    let r = restore::restore(&RestoreOptions {
        snapshot: Some(good),
        node_name: "b".into(),
        dest: dest.clone(),
        force: true,
        ..Default::default()
    })
    .expect("restore");
    assert_eq!(digests(&dest), digests(&src));
    let previous = r.previous.expect("the old store is kept");
    assert_eq!(digests(&previous), before);
}

#[test]
fn backup_service_takes_scheduled_snapshots_per_scope_archives_and_applies_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node_dir = dir.path().join("a");
    let target = dir.path().join("backup");
    let extra = format!(
        "\n[backup]\ntarget = {:?}\nsegment_age = \"100ms\"\n\n[[backup.schedule]]\nevery = \"1s\"\ncomponents = [\"trunks\"]\n\n[[backup.schedule]]\nevery = \"2s\"\n\n[backup.retention]\nkeep_last = 2\nkeep_daily_days = 0\n",
        target.display().to_string()
    );
    tandem_tests::write_node_dir(&node_dir, "a", &["trunks"], &extra);
    let config = tandem_tests::load_config(&node_dir);
    let src = config.store_path();
    let mut s = Store::open(&src, "a", &StoreOptions::default(), now_ms()).expect("open");
    fill(&mut s, 300, 0);
    let svc = tandem::backup::service::spawn(&config, &target, Vec::new(), None).expect("backup thread");
    let started = std::time::Instant::now();
    let mut round = 1;
    while started.elapsed() < Duration::from_millis(5500) {
        commit(&mut s, &[w("trunks", &format!("r{round}"), "1"), w("crm", "counter", &round.to_string())], now_ms());
        round += 1;
        sleep_ms(50);
    }
    svc.stop();
    let final_state = digests(&src);
    let snaps: Vec<snapshot::Manifest> = snapshot::list(&target).into_iter().map(|(_, m)| m.expect("readable")).collect();
    let count = |label: &str| snaps.iter().filter(|m| m.scope_label() == label).count();
    // About five trunks snapshots and three full ones were taken; retention kept two of each.
    assert_eq!(count("trunks"), 2, "{snaps:?}");
    assert_eq!(count("all"), 2, "{snaps:?}");
    assert!(snaps.iter().filter(|m| m.scope_label() == "trunks").all(|m| m.components.iter().all(|c| c.name == "trunks")));
    // Segments wholly before the oldest kept full snapshot are gone; the rest restore to the
    // final state.
    let oldest_full = snaps.iter().filter(|m| m.is_full()).map(|m| m.last_seq).min().expect("a full snapshot");
    let segs = archive::list(&target);
    assert!(!segs.is_empty());
    assert!(segs.iter().all(|(_, m)| m.as_ref().expect("readable").last_seq > oldest_full), "expired segments remain");
    let dest = dir.path().join("b").join("store.db");
    restore_to(&target, None, &dest);
    assert_eq!(digests(&dest), final_state);
}
