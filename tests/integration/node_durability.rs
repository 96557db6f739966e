//! Durability and limits: restart, SIGKILL under a write burst, a full disk, concurrent clients,
//! overload.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem::node::hlc::ManualWallClock;
use tandem::node::{NodeOptions, store};
use tandem::plugin::Stamp;
use tandem_tests::{NodeProcess, client, start_node, start_node_with, wait_until, write_node_dir};

fn trunk(host: &str) -> String {
    format!(r#"{{"host": "{host}", "max_channels": 12}}"#)
}

#[test]
fn a_restart_keeps_every_record_and_the_clock_moves_on_even_when_the_wall_clock_went_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_node_dir(dir.path(), "a", &["trunks", "crm", "pbx-reports"], "");
    let wall = ManualWallClock::new(2_000_000_000_000);
    let options = NodeOptions { wall: wall.clone() };
    let (lists, digests, last_seq, newest) = {
        let server = start_node_with(dir.path(), options.clone());
        let c = client(&server);
        let mut newest = None;
        for i in 0..150 {
            let ack = c.put("trunks", &format!("t{i:03}"), &trunk(&format!("h{i}.example")), None).expect("put");
            newest = Some(ack.stamp);
        }
        for i in (0..150).step_by(15) {
            c.delete("trunks", &format!("t{i:03}"), None).expect("delete");
        }
        for component in ["crm", "pbx-reports"] {
            for ex in &server.node().registry().get(component).expect("plugin").info().examples.clone() {
                newest = Some(c.put(component, &ex.key, &ex.input, None).expect("put").stamp);
            }
        }
        let lists: Vec<_> = ["trunks", "crm", "pbx-reports"].iter().map(|comp| c.list_all(comp, "").expect("list")).collect();
        let digests: Vec<_> = ["trunks", "crm", "pbx-reports"].iter().map(|comp| server.node().digest(comp).expect("digest")).collect();
        let last_seq = server.node().last_seq();
        server.shutdown();
        (lists, digests, last_seq, newest.expect("wrote"))
    };
    assert_eq!(lists[0].len(), 140);

    // The machine comes back with its clock eleven years behind.
    wall.set(1_650_000_000_000);
    let server = start_node_with(dir.path(), options);
    let c = client(&server);
    let again: Vec<_> = ["trunks", "crm", "pbx-reports"].iter().map(|comp| c.list_all(comp, "").expect("list")).collect();
    assert_eq!(again, lists, "every record, with its stamp, origin and seq");
    let digests_again: Vec<_> = ["trunks", "crm", "pbx-reports"].iter().map(|comp| server.node().digest(comp).expect("digest")).collect();
    assert_eq!(digests_again, digests);
    assert_eq!(server.node().last_seq(), last_seq);
    let status = c.status().expect("status");
    let t = status.components.iter().find(|s| s.name == "trunks").expect("trunks");
    assert_eq!((t.records, t.live, t.in_memory), (150, 140, 150));
    let ack = c.put("trunks", "after-restart", &trunk("x.example"), None).expect("put");
    assert_eq!(ack.seq, last_seq + 1);
    let newest = tandem::plugin::Stamp::from(&newest);
    let now = tandem::plugin::Stamp::from(&ack.stamp);
    assert!(now > newest, "stamps move on after a restart with the clock set back: {now:?} <= {newest:?}");
}

/// (key, host) pairs the node acknowledged.
type Acked = Arc<Mutex<Vec<(String, String)>>>;

/// Writers that PUT distinct keys until the node goes away; returns what was acknowledged.
fn burst(addr: &str, round: usize, threads: usize) -> (Acked, Vec<std::thread::JoinHandle<()>>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let handles = (0..threads)
        .map(|t| {
            let (acked, addr) = (acked.clone(), addr.to_owned());
            std::thread::spawn(move || {
                let c = tandem::node::client::Client::new(&addr, tandem_tests::TEST_TOKEN);
                for i in 0.. {
                    let key = format!("r{round}-t{t}-{i:05}");
                    let host = format!("h{i}.t{t}.example");
                    match c.put("trunks", &key, &trunk(&host), None) {
                        Ok(_) => acked.lock().expect("lock").push((key, host)),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    (acked, handles)
}

#[test]
fn sigkill_during_a_write_burst_keeps_a_consistent_store_with_every_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_node_dir(dir.path(), "a", &["trunks"], "");
    let mut all_acked: Vec<(String, String)> = Vec::new();
    for round in 0..3 {
        let node = NodeProcess::start(dir.path());
        let (acked, handles) = burst(&node.addr, round, 6);
        let started = Instant::now();
        // Kill at a different moment each round, mid-burst.
        let at = 100 + round * 300;
        wait_until("acknowledged writes", Duration::from_secs(30), || acked.lock().expect("lock").len() >= at);
        std::thread::sleep(Duration::from_millis(20 * round as u64));
        node.kill();
        for h in handles {
            h.join().expect("writer");
        }
        let acked = acked.lock().expect("lock").clone();
        assert!(acked.len() >= at, "round {round}: {} acks in {:?}", acked.len(), started.elapsed());
        eprintln!("round {round}: killed after {} acknowledged writes in {:?}", acked.len(), started.elapsed());
        all_acked.extend(acked);

        // The store as the killed process left it: consistent.
        let conn = store::open_for_inspection(&dir.path().join("store.db")).expect("open");
        assert_eq!(store::integrity_check(&conn).expect("check"), "ok");
        let (records, _) = store::counts(&conn, "trunks").expect("counts");
        assert!(records as usize >= all_acked.len(), "{records} records < {} acknowledged", all_acked.len());
        let feed = store::changes(&conn, 0, usize::MAX).expect("feed");
        assert!(feed.windows(2).all(|w| w[0].seq < w[1].seq));
        drop(conn);

        // Restarted, it has every acknowledged write.
        let node = NodeProcess::start(dir.path());
        let c = node.client();
        let listed: std::collections::HashMap<String, serde_json::Value> =
            c.list_all("trunks", "").expect("list").into_iter().map(|r| (r.key, r.value)).collect();
        for (key, host) in &all_acked {
            let v = listed.get(key).unwrap_or_else(|| panic!("acknowledged {key} is missing after SIGKILL in round {round}"));
            assert_eq!(v["host"], host.as_str(), "{key}");
        }
        let status = c.status().expect("status");
        assert_eq!(status.store.last_seq, listed.len() as u64, "one seq per record: every key was written once");
        node.kill();
    }
}

/// Unmounts a tmpfs when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn fill_until_refused(c: &tandem::node::client::Client, prefix: &str) -> Vec<String> {
    let mut acked = Vec::new();
    let pad = "p".repeat(200);
    for i in 0..200_000 {
        let key = format!("{prefix}{i:06}");
        let doc = format!(r#"{{"host": "h{i}.example", "codecs": ["alaw"], "username": "{pad}"}}"#);
        match c.put("trunks", &key, &doc, None) {
            Ok(_) => acked.push(key),
            Err(e) => {
                assert_eq!((e.status(), e.code()), (Some(507), Some("disk_full")), "{e}");
                return acked;
            }
        }
    }
    panic!("the disk never filled");
}

fn check_read_only_then_recovered(server: &tandem::node::Server, acked: &[String], free: impl FnOnce()) {
    let c = client(server);
    // Read-only: writes refused with 507, reads go on, health and status say why.
    let e = c.put("trunks", "one-more", &trunk("x.example"), None).expect_err("read-only");
    assert_eq!((e.status(), e.code()), (Some(507), Some("disk_full")));
    assert!(c.get("trunks", &acked[0]).is_ok());
    let (code, h) = c.health().expect("health");
    assert_eq!(code, 200);
    assert!(h.reads && !h.writes);
    let r = c.raw("GET", "/healthz?need=writes", None, &[], Some("")).expect("health");
    assert_eq!(r.status, 503);
    let s = c.status().expect("status");
    assert!(s.store.read_only);
    assert!(s.store.read_only_reason.as_deref().is_some_and(|r| r.contains("full")), "{:?}", s.store.read_only_reason);

    free();
    wait_until("the node to take writes again", Duration::from_secs(20), || c.put("trunks", "after", &trunk("y.example"), None).is_ok());
    assert!(!c.status().expect("status").store.read_only);
    for key in acked {
        assert!(c.get("trunks", key).is_ok(), "{key} lost");
    }
    let conn = store::open_for_inspection(&server.node().config().store_path()).expect("open");
    assert_eq!(store::integrity_check(&conn).expect("check"), "ok");
}

#[test]
fn a_full_store_turns_the_node_read_only_and_it_recovers_when_space_returns() {
    // A size cap is a full disk SQLite can be given without privileges.
    let dir = tempfile::tempdir().expect("tempdir");
    write_node_dir(dir.path(), "a", &["trunks"], "[store]\nmax_size_mb = 1\nprobe_interval_ms = 50\n");
    let server = start_node(dir.path());
    let c = client(&server);
    let acked = fill_until_refused(&c, "cap-");
    eprintln!("size cap reached after {} writes", acked.len());
    assert!(acked.len() > 100, "{}", acked.len());
    check_read_only_then_recovered(&server, &acked, || server.block_on(server.node().set_store_cap(0)).expect("uncap"));
}

#[test]
fn a_full_filesystem_turns_the_node_read_only_and_it_recovers_when_space_returns() {
    // A real full disk: a small tmpfs, when this machine lets us mount one (root); otherwise the
    // size-cap test above covers the same path.
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (not root?)");
        return;
    }
    let _mount = Mount(mnt.clone());
    let data = mnt.join("data");
    write_node_dir(dir.path(), "a", &["trunks"], "[store]\nprobe_interval_ms = 50\n");
    let file = dir.path().join("tandem.toml");
    let text = std::fs::read_to_string(&file)
        .expect("read")
        .replace("[node]\n", &format!("[node]\ndata_dir = {:?}\n", data.display().to_string()));
    std::fs::write(&file, text).expect("write");
    // A filler takes a third of the space; freeing it is "space returns".
    std::fs::write(mnt.join("filler"), vec![0u8; 1 << 20]).expect("filler");
    let server = start_node(dir.path());
    let c = client(&server);
    let acked = fill_until_refused(&c, "fs-");
    eprintln!("tmpfs full after {} writes", acked.len());
    assert!(acked.len() > 50, "{}", acked.len());
    check_read_only_then_recovered(&server, &acked, || std::fs::remove_file(mnt.join("filler")).expect("free space"));
    server.shutdown();
}

#[test]
fn concurrent_clients_each_see_their_writes_and_share_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_node_dir(dir.path(), "a", &["trunks"], "");
    let server = start_node(dir.path());
    let addr = server.api_addr().to_string();
    let threads = 8;
    let per = 40;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let c = tandem::node::client::Client::new(&addr, tandem_tests::TEST_TOKEN);
                let mut acks = Vec::new();
                for i in 0..per {
                    let key = format!("t{t}-{i:03}");
                    let host = format!("h{i}.t{t}.example");
                    acks.push((key.clone(), host.clone(), c.put("trunks", &key, &trunk(&host), None).expect("put")));
                    let shared = format!("s{i}.t{t}.example");
                    acks.push(("shared".to_owned(), shared.clone(), c.put("trunks", "shared", &trunk(&shared), None).expect("put shared")));
                }
                acks
            })
        })
        .collect();
    let acks: Vec<_> = handles.into_iter().flat_map(|h| h.join().expect("client")).collect();
    let c = client(&server);
    let mut seqs: Vec<u64> = acks.iter().filter(|(_, _, a)| a.changed).map(|(_, _, a)| a.seq).collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "every applied write has its own seq");
    for (key, host, _) in acks.iter().filter(|(k, _, _)| k != "shared") {
        assert_eq!(c.get("trunks", key).expect("get").value["host"], host.as_str());
    }
    let last_shared = acks.iter().filter(|(k, _, a)| k == "shared" && a.changed).max_by_key(|(_, _, a)| a.seq).expect("shared writes");
    assert_eq!(c.get("trunks", "shared").expect("get").value["host"], last_shared.1.as_str(), "the last acknowledged write wins");
    let s = c.status().expect("status");
    assert_eq!(s.components[0].live, (threads * per + 1) as u64);
    assert!(s.store.commits <= n as u64);
}

#[test]
fn a_full_write_queue_answers_429_with_retry_after_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_node_dir(dir.path(), "a", &["trunks"], "[queues]\nwrite_queue = 1\n");
    let server = start_node(dir.path());
    let addr = server.api_addr().to_string();
    let handles: Vec<_> = (0..24)
        .map(|t| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let c = tandem::node::client::Client::new(&addr, tandem_tests::TEST_TOKEN);
                let mut out = Vec::new();
                for i in 0..15 {
                    let key = format!("t{t}-{i}");
                    let r = c
                        .raw("PUT", &format!("/v1/components/trunks/records/{key}"), Some(trunk("a.example").as_bytes()), &[], None)
                        .expect("answer");
                    out.push((key, r));
                }
                out
            })
        })
        .collect();
    let answers: Vec<_> = handles.into_iter().flat_map(|h| h.join().expect("client")).collect();
    let c = client(&server);
    let mut refused = 0;
    for (key, r) in &answers {
        match r.status {
            200 => assert!(c.get("trunks", key).is_ok(), "acknowledged {key} missing"),
            429 => {
                refused += 1;
                assert!(r.body.contains("\"overloaded\""), "{}", r.body);
                assert!(r.header("retry-after").is_some_and(|v| v.parse::<u64>().is_ok_and(|s| (1..=30).contains(&s))));
                assert_eq!(c.get("trunks", key).expect_err("refused, never applied").code(), Some("not_found"));
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    eprintln!("{refused} of {} writes refused with 429", answers.len());
    assert!(refused > 0, "24 writers on a queue of 1 should be refused at times");
    assert!(c.metrics().expect("metrics").contains("code=\"overloaded\""));
    c.put("trunks", "calm", &trunk("a.example"), None).expect("writes go through once the burst is over");
}

#[test]
fn concurrent_retries_with_one_idempotency_key_apply_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_node_dir(dir.path(), "a", &["trunks"], "");
    let server = start_node(dir.path());
    let addr = server.api_addr().to_string();
    for round in 0..5 {
        let before = server.node().last_seq();
        let idem = format!("retry-{round}");
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (addr, idem) = (addr.clone(), idem.clone());
                std::thread::spawn(move || {
                    let c = tandem::node::client::Client::new(&addr, tandem_tests::TEST_TOKEN);
                    c.put("trunks", &format!("k{round}"), &trunk("a.example"), Some(&idem)).expect("put")
                })
            })
            .collect();
        let acks: Vec<_> = handles.into_iter().map(|h| h.join().expect("client")).collect();
        assert!(acks.iter().all(|a| a.seq == acks[0].seq && a.stamp == acks[0].stamp), "{acks:?}");
        assert_eq!(acks.iter().filter(|a| !a.replayed).count(), 1, "{acks:?}");
        assert_eq!(server.node().last_seq(), before + 1);
    }
}

#[test]
fn batches_prepared_while_the_previous_one_commits_build_on_it_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_node_dir(dir.path(), "a", &["trunks"], "");
    let server = Arc::new(start_node(dir.path()));
    // Eight callers, each sending batches that touch the same keys: every batch sees the
    // versions of the batches before it (committed or still being committed).
    let handles: Vec<_> = (0..8u32)
        .map(|t| {
            let server = server.clone();
            std::thread::spawn(move || {
                let mut acks = Vec::new();
                for i in 0..10u32 {
                    let writes = (0..16)
                        .map(|k| {
                            (
                                format!("k{k:02}"),
                                tandem::plugin::Op::Put(format!(r#"{{"host": "t{t}.example", "max_channels": {}}}"#, i + 1)),
                            )
                        })
                        .collect();
                    let results = server.block_on(server.node().write_many("trunks", writes)).expect("batch");
                    acks.extend(results.into_iter().map(|r| r.expect("write")));
                }
                acks
            })
        })
        .collect();
    let acks: Vec<_> = handles.into_iter().flat_map(|h| h.join().expect("caller")).collect();
    let mut seqs: Vec<u64> = acks.iter().filter(|a| a.changed).map(|a| a.seq).collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "one seq per applied write");
    let c = client(&server);
    for k in 0..16 {
        let key = format!("k{k:02}");
        let last = acks.iter().filter(|a| a.key == key).max_by_key(|a| a.seq).expect("acks");
        let r = c.get("trunks", &key).expect("get");
        assert_eq!(r.seq, last.seq, "{key}: memory holds the last committed version");
        assert_eq!(Stamp::from(&r.stamp), Stamp::from(&last.stamp));
    }
    let digest_before = server.node().digest("trunks").expect("digest");
    let server = Arc::try_unwrap(server).unwrap_or_else(|_| panic!("still shared"));
    server.shutdown();
    let server = start_node(dir.path());
    assert_eq!(server.node().digest("trunks").expect("digest"), digest_before, "memory and store agreed");
    let c = client(&server);
    for k in 0..16 {
        let key = format!("k{k:02}");
        let last = acks.iter().filter(|a| a.key == key).max_by_key(|a| a.seq).expect("acks");
        assert_eq!(c.get("trunks", &key).expect("get").seq, last.seq);
    }
}
