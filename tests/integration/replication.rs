//! Replication between real nodes over real sockets on loopback: warm streaming and standby
//! refusals, resume after restart, hot convergence, `standby` acks, refusals of wrong
//! credentials, wrong protocol versions and corrupted frames, plugin mismatches, and healing
//! after delays and cuts through a fault proxy; a synchronous set of two members, one of whose
//! links stalls. Timings are relaxed for a busy 2-core machine.

use std::path::Path;
use std::time::{Duration, Instant};

use tandem::node::Server;
use tandem_tests::cluster::{NodeDef, free_port, write_cluster_node};
use tandem_tests::fault_proxy::FaultProxy;
use tandem_tests::{alarms, client, digest, start_node, wait_until};

const WAIT: Duration = Duration::from_secs(30);

fn trunk(i: usize) -> (String, String) {
    (format!("trunk-{i:04}"), format!("{{\"host\": \"h{i}.carrier.example\", \"transport\": \"udp\", \"max_channels\": {}}}", 10 + i % 50))
}

/// A CRM account key (kind:ULID).
fn account(i: usize) -> String {
    const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut tail = String::new();
    let mut n = i;
    for _ in 0..4 {
        tail.insert(0, CROCKFORD[n % 32] as char);
        n /= 32;
    }
    format!("account:01J8Z3K4M5N6P7Q8R9S0T1{tail}")
}

fn count(s: &Server, component: &str) -> usize {
    client(s).list_all(component, "").expect("list").len()
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// The trunks acknowledged by the standby (`extra` of [`warm_pair`]).
const STANDBY_ACK_TRUNKS: &str = "\n[components.trunks]\nplugin = \"plugins/trunks.wasm\"\nack = \"standby\"\n";

/// A warm pair: `a` primary, `b` standby; `b` reaches `a` at `a_addr_for_b` (a proxy or direct).
fn warm_pair(root: &Path, a_port: u16, b_port: u16, a_addr_for_b: &str, extra: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let a = write_cluster_node(
        root,
        &NodeDef {
            name: "a",
            port: a_port,
            peers: vec![("b".into(), addr(b_port))],
            cluster: "mode = \"warm\"\nprimary = \"a\"\nack_timeout_ms = 1500\nsync_drop_ms = 2500",
            extra,
        },
        &["trunks", "pbx-reports"],
        None,
    );
    let b = write_cluster_node(
        root,
        &NodeDef {
            name: "b",
            port: b_port,
            peers: vec![("a".into(), a_addr_for_b.to_owned())],
            cluster: "mode = \"warm\"\nprimary = \"a\"\nack_timeout_ms = 1500\nsync_drop_ms = 2500",
            extra,
        },
        &["trunks", "pbx-reports"],
        Some(&a),
    );
    (a, b)
}

#[test]
fn replication_warm_streams_to_the_standby_which_refuses_writes_naming_the_primary() {
    let root = tempfile::tempdir().expect("tempdir");
    let (ap, bp) = (free_port(), free_port());
    let (a_dir, b_dir) = warm_pair(root.path(), ap, bp, &addr(ap), "");
    let a = start_node(&a_dir);
    let b = start_node(&b_dir);
    let (ca, cb) = (client(&a), client(&b));
    for i in 0..40 {
        let (k, v) = trunk(i);
        ca.put("trunks", &k, &v, None).expect("put on the primary");
    }
    ca.delete("trunks", "trunk-0003", None).expect("delete");
    wait_until("the standby has every trunk", WAIT, || digest(&a, "trunks") == digest(&b, "trunks"));
    assert_eq!(count(&b, "trunks"), 39);
    let doc = cb.get("trunks", "trunk-0007").expect("read on the standby");
    assert_eq!(doc.value["host"], "h7.carrier.example");
    assert!(cb.get("trunks", "trunk-0003").is_err(), "the delete reached the standby");

    // The standby refuses writes and says where the primary is.
    let (k, v) = trunk(99);
    let err = cb.put("trunks", &k, &v, None).expect_err("a standby refuses writes");
    assert_eq!(err.code(), Some("not_primary"), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("primary, a") && msg.contains(&a.api_addr().to_string()), "{msg}");
    // Nothing flows back from a standby: the primary has no trunk-0099.
    assert!(ca.get("trunks", &k).is_err());
    let st = b.replication().expect("replication").status();
    let pa = st.peers.iter().find(|p| p.name == "a").expect("peer a");
    assert!(pa.following && pa.applied_seq >= 41, "{pa:?}");
    // Status and metrics over HTTP show the links and the per-component digests.
    let want = digest(&a, "trunks");
    wait_until("the digests in /v1/status", WAIT, || {
        [&ca, &cb]
            .iter()
            .all(|c| c.status().ok().and_then(|s| s.replication).is_some_and(|r| r["digests"]["trunks"].as_str() == Some(want.as_str())))
    });
    let metrics = cb.metrics().expect("metrics");
    assert!(metrics.contains("tandem_replication_peer_up{peer=\"a\"} 1"), "{metrics}");
    assert!(metrics.contains(&format!("tandem_component_digest{{component=\"trunks\",digest=\"{want}\"}} 1")), "{metrics}");
}

#[test]
fn replication_resumes_after_restart_and_disconnect_without_loss_or_duplication() {
    let root = tempfile::tempdir().expect("tempdir");
    let (ap, bp) = (free_port(), free_port());
    let proxy_target: std::net::SocketAddr = addr(ap).parse().expect("addr");
    let proxy = FaultProxy::start(proxy_target);
    let (a_dir, b_dir) = warm_pair(root.path(), ap, bp, &proxy.addr().to_string(), "");
    let a = start_node(&a_dir);
    let ca = client(&a);
    let mut b = start_node(&b_dir);
    for i in 0..20 {
        let (k, v) = trunk(i);
        ca.put("trunks", &k, &v, None).expect("put");
    }
    wait_until("first sync", WAIT, || digest(&a, "trunks") == digest(&b, "trunks"));
    let seq_before = b.node().last_seq();
    assert_eq!(seq_before, 20, "each version applied once");

    // Restart the standby while the primary goes on writing. A node writes its positions at
    // most every 250 ms while they move, and at stop: the file holds the last applied position.
    drop(b);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b_dir.join("replication").join("positions.json")).expect("positions")).expect("JSON");
    assert_eq!(saved["a"]["seq"], 20, "{saved}");
    for i in 20..50 {
        let (k, v) = trunk(i);
        ca.put("trunks", &k, &v, None).expect("put");
    }
    for i in 0..5 {
        ca.delete("trunks", &trunk(i).0, None).expect("delete");
    }
    b = start_node(&b_dir);
    wait_until("sync after restart", WAIT, || digest(&a, "trunks") == digest(&b, "trunks"));
    // Resumed from its position: only the 35 new versions were applied, none again.
    assert_eq!(b.node().last_seq(), seq_before + 35);

    // Cut the link mid-stream; it comes back and catches up.
    for i in 50..80 {
        let (k, v) = trunk(i);
        ca.put("trunks", &k, &v, None).expect("put");
        if i == 60 {
            proxy.cut();
        }
    }
    wait_until("sync after a cut", WAIT, || digest(&a, "trunks") == digest(&b, "trunks"));
    assert_eq!(b.node().last_seq(), seq_before + 35 + 30);
    assert_eq!(count(&b, "trunks"), 75);
}

#[test]
fn replication_digests_that_stay_different_raise_an_alarm_until_a_write_repairs_them() {
    let root = tempfile::tempdir().expect("tempdir");
    let (ap, bp) = (free_port(), free_port());
    // Purges run every 100 ms: stores that agree never differ for more than 2 s (four
    // heartbeats), the time a difference must last.
    let (a_dir, b_dir) = warm_pair(root.path(), ap, bp, &addr(ap), "\n[store]\nmaintenance_interval_ms = 100\n");
    let a = start_node(&a_dir);
    let ca = client(&a);
    let mut b = start_node(&b_dir);
    for i in 0..10 {
        let (k, v) = trunk(i);
        ca.put("trunks", &k, &v, None).expect("put");
    }
    wait_until("first sync", WAIT, || digest(&a, "trunks") == digest(&b, "trunks"));
    std::thread::sleep(Duration::from_millis(3_000));
    assert!(!alarms(&b).iter().any(|m| m.contains("differs")), "{:?}", alarms(&b));

    // The standby's store is edited behind replication's back: one record takes another's
    // bytes; its position and stamp stay, so no feed will ever carry a correction.
    drop(b);
    {
        let conn = rusqlite::Connection::open(b_dir.join("store.db")).expect("open");
        let n = conn
            .execute(
                "UPDATE records SET data = (SELECT data FROM records WHERE component = 'trunks' AND key = 'trunk-0004')
                 WHERE component = 'trunks' AND key = 'trunk-0003'",
                [],
            )
            .expect("edit");
        assert_eq!(n, 1);
    }
    b = start_node(&b_dir);
    wait_until("the divergence alarm", WAIT, || {
        alarms(&b).iter().any(|m| m.starts_with("trunks: this node's digest") && m.contains("differs from a's"))
    });
    assert_ne!(digest(&a, "trunks"), digest(&b, "trunks"));
    // The standby's scrub after its start found the edit.
    let m = client(&b).metrics().expect("metrics");
    assert!(m.contains("tandem_store_digest_corrections_total{node=\"b\"} 1"), "{m}");
    // The standby compares; the primary shows what the standby reports.
    wait_until("the primary shows the standby's report", WAIT, || {
        alarms(&a).iter().any(|m| m.starts_with("trunks: b reports that its copy differs from this node's"))
    });

    // An ordinary write of the record on the primary repairs it, and the alarm clears.
    ca.put("trunks", "trunk-0003", r#"{"host": "repaired.carrier.example", "transport": "udp", "max_channels": 12}"#, None).expect("put");
    wait_until("digests agree again", WAIT, || digest(&a, "trunks") == digest(&b, "trunks"));
    wait_until("the alarms clear", WAIT, || !alarms(&b).iter().chain(&alarms(&a)).any(|m| m.contains("differs")));
}

#[test]
fn replication_hot_concurrent_writes_on_two_nodes_converge() {
    let root = tempfile::tempdir().expect("tempdir");
    let (ap, bp) = (free_port(), free_port());
    let a_dir = write_cluster_node(
        root.path(),
        &NodeDef { name: "a", port: ap, peers: vec![("b".into(), addr(bp))], cluster: "mode = \"hot\"", extra: "" },
        &["crm"],
        None,
    );
    let b_dir = write_cluster_node(
        root.path(),
        &NodeDef { name: "b", port: bp, peers: vec![("a".into(), addr(ap))], cluster: "mode = \"hot\"", extra: "" },
        &["crm"],
        Some(&a_dir),
    );
    let a = start_node(&a_dir);
    let b = start_node(&b_dir);
    let started = Instant::now();
    std::thread::scope(|s| {
        for (server, who) in [(&a, "a"), (&b, "b")] {
            let c = client(server);
            s.spawn(move || {
                for i in 0..30 {
                    // Same keys on both nodes, different fields: the plugin's merge joins them.
                    let doc = if who == "a" {
                        format!("{{\"kind\": \"account\", \"name\": \"Acme {i}\", \"industry\": \"from-a\"}}")
                    } else {
                        format!("{{\"kind\": \"account\", \"name\": \"Acme {i}\", \"website\": \"https://{i}.b.example\"}}")
                    };
                    c.put("crm", &account(i), &doc, None).expect("hot write");
                    // And keys of its own.
                    let own = account(1000 + i + if who == "a" { 0 } else { 100 });
                    c.put("crm", &own, &format!("{{\"kind\": \"account\", \"name\": \"{who} {i}\"}}"), None).expect("hot write");
                }
            });
        }
    });
    wait_until("hot digests converge", WAIT, || digest(&a, "crm") == digest(&b, "crm"));
    let took = started.elapsed();
    assert_eq!(count(&a, "crm"), 90);
    assert_eq!(count(&b, "crm"), 90);
    let (ra, rb) = (client(&a).get("crm", &account(5)).expect("a"), client(&b).get("crm", &account(5)).expect("b"));
    assert_eq!(ra.value, rb.value);
    // Both writers' fields survive the merge, unless one write replaced the other whole.
    eprintln!("converged in {took:?}: {}", ra.value);
    // Hot nodes both take writes: neither refuses.
    assert!(a.replication().expect("r").status().alarms.is_empty());
}

#[test]
fn replication_standby_ack_waits_for_the_standby_and_answers_outcome_unknown_without_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let (ap, bp) = (free_port(), free_port());
    let (a_dir, b_dir) = warm_pair(root.path(), ap, bp, &addr(ap), STANDBY_ACK_TRUNKS);
    let a = start_node(&a_dir);
    let b = start_node(&b_dir);
    let ca = client(&a);
    wait_until("the standby follows", WAIT, || b.replication().is_some_and(|r| r.status().peers.iter().any(|p| p.following)));
    for i in 0..10 {
        let (k, v) = trunk(i);
        let ack = ca.put("trunks", &k, &v, None).expect("standby-acked write");
        // Acknowledged only once the standby has it: it is readable there right away.
        let on_b = b.block_on(b.node().get("trunks", &k)).expect("read").expect("on the standby at ack time");
        assert_eq!(on_b.stamp.physical, ack.stamp.physical);
    }
    drop(b);
    let (k, v) = trunk(50);
    let t = Instant::now();
    let err = ca.put("trunks", &k, &v, Some("idem-50")).expect_err("no standby: outcome unknown");
    assert_eq!(err.code(), Some("outcome_unknown"), "{err}");
    assert!(t.elapsed() >= Duration::from_millis(1400));
    // Committed locally all the same ("unknown", never a false "failed").
    assert!(ca.get("trunks", &k).is_ok());
    // Once the standby has been down past sync_drop_ms, the primary records (on disk) that it
    // left the synchronous set, and standby acks fall back to local ones.
    wait_until("b leaves the synchronous set", WAIT, || a.replication().expect("r").status().sync_set.members.is_empty());
    let recorded = std::fs::read_to_string(a_dir.join("replication/sync_set.json")).expect("the set is on disk");
    assert!(!recorded.contains("\"b\""), "{recorded}");
    assert!(a.replication().expect("r").status().alarms.iter().any(|al| al.contains("left the synchronous set")));
    let t = Instant::now();
    let (k, v) = trunk(51);
    ca.put("trunks", &k, &v, None).expect("local ack while the set is empty");
    assert!(t.elapsed() < Duration::from_millis(1000));
    // b comes back, catches up, rejoins; writes wait for it again.
    let b = start_node(&b_dir);
    wait_until("b rejoins the synchronous set", WAIT, || a.replication().expect("r").status().sync_set.members.contains_key("b"));
    let (k, v) = trunk(52);
    ca.put("trunks", &k, &v, None).expect("standby-acked write");
    assert!(b.block_on(b.node().get("trunks", &k)).expect("read").is_some(), "on the standby at ack time");
    assert!(b.block_on(b.node().get("trunks", &trunk(51).0)).expect("read").is_some(), "caught up");
    // pbx-reports keeps local acks.
    if let Err(e) = ca.put("pbx-reports", "a:1:1", "{}", None) {
        assert_ne!(e.code(), Some("outcome_unknown"), "{e}");
    }
}

/// A standby restarted while the cluster moved on may still believe it is the primary: it
/// subscribes to the real primary for no warm component, and acknowledges the positions it is
/// sent. Those acknowledgements say nothing of the warm writes: the standby must neither count
/// for a `standby`-ack write nor stay in the synchronous set (where it could be promoted with
/// writes it never had).
#[test]
fn replication_a_standby_that_subscribes_to_no_warm_component_never_acknowledges_standby_ack_writes() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use tandem::peer::proto::{Hello, Msg};
    let root = tempfile::tempdir().expect("tempdir");
    let (ap, bp) = (free_port(), free_port());
    let (a_dir, b_dir) = warm_pair(root.path(), ap, bp, &addr(ap), STANDBY_ACK_TRUNKS);
    let creds = creds_of(&b_dir);
    let a = start_node(&a_dir);
    let ca = client(&a);
    let (stop, acked) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let (stop2, acked2) = (stop.clone(), acked.clone());
    // The stale b: it learns a's components from a's own dial, then subscribes to none of them.
    let fake = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(addr(bp)).await.expect("bind b's port");
            let (tcp, _) = tokio::time::timeout(WAIT, listener.accept()).await.expect("a dials b").expect("accept");
            let mut from_a = tandem::peer::accept(tcp, &creds, "b", Duration::from_secs(10)).await.expect("tls");
            let Msg::Hello(a_hello) = tandem::peer::recv(&mut from_a).await.expect("hello") else { panic!("expected hello") };
            let mut link =
                tandem::peer::dial(&addr(ap), &creds, tandem::peer::PROTOCOL_VERSION, Duration::from_secs(10)).await.expect("dial a");
            let hello = Hello {
                node: "b".into(),
                epoch: a_hello.epoch,
                api: None,
                primary: Some("b".into()),
                last_seq: 0,
                components: a_hello.components.clone(),
            };
            tandem::peer::send(&mut link, &Msg::Hello(hello), false).await.expect("send hello");
            let Msg::Hello(_) = tandem::peer::recv(&mut link).await.expect("a's hello") else { panic!("expected hello") };
            tandem::peer::send(&mut link, &Msg::Subscribe { after_seq: 0, components: Vec::new() }, false).await.expect("subscribe");
            while !stop2.load(Ordering::SeqCst) {
                let Ok(m) = tokio::time::timeout(Duration::from_millis(100), tandem::peer::recv(&mut link)).await else { continue };
                if let Msg::Batch(b) = m.expect("a streams") {
                    assert!(b.changes.is_empty(), "nothing flows on a subscription to no component: {:?}", b.changes);
                    let ack = Msg::Ack { seq: b.up_to, high: b.high.max(b.up_to), epoch: a_hello.epoch };
                    tandem::peer::send(&mut link, &ack, false).await.expect("ack");
                    acked2.fetch_max(b.up_to, Ordering::SeqCst);
                }
            }
            drop(from_a);
        });
    });
    let peer_b = || a.replication().expect("r").status().peers.into_iter().find(|p| p.name == "b").expect("peer b");
    wait_until("the stale b subscribes", WAIT, || peer_b().subscribed);
    assert!(!peer_b().synchronous, "{:?}", peer_b());
    assert!(a.replication().expect("r").status().sync_set.members.contains_key("b"), "b is in the set from the first start");
    let (k, v) = trunk(1);
    let err = ca.put("trunks", &k, &v, None).expect_err("b's acknowledgements do not count");
    assert_eq!(err.code(), Some("outcome_unknown"), "{err}");
    // b did acknowledge that position: under the old rule it would have counted.
    let seq = a.node().last_seq();
    wait_until("the stale b acknowledges the write's position", WAIT, || acked.load(Ordering::SeqCst) >= seq);
    // A member whose link carries nothing it waits for is down: it leaves the set.
    wait_until("b leaves the synchronous set", WAIT, || !a.replication().expect("r").status().sync_set.members.contains_key("b"));
    stop.store(true, Ordering::SeqCst);
    fake.join().expect("the stale b");
}

#[test]
fn replication_refuses_a_peer_without_the_cluster_credentials_before_any_record() {
    let root = tempfile::tempdir().expect("tempdir");
    let (ap, bp) = (free_port(), free_port());
    let (a_dir, _) = warm_pair(root.path(), ap, bp, &addr(ap), "");
    // b gets credentials of another CA.
    let other = tempfile::tempdir().expect("tempdir");
    let b_dir = write_cluster_node(
        other.path(),
        &NodeDef { name: "b", port: bp, peers: vec![("a".into(), addr(ap))], cluster: "mode = \"warm\"\nprimary = \"a\"", extra: "" },
        &["trunks", "pbx-reports"],
        None,
    );
    let a = start_node(&a_dir);
    let (k, v) = trunk(1);
    client(&a).put("trunks", &k, &v, None).expect("put");
    let b = start_node(&b_dir);
    wait_until("b's link attempt fails", WAIT, || {
        b.replication().expect("r").status().peers.iter().any(|p| p.last_error.as_deref().is_some_and(|e| e.contains("TLS")))
    });
    let st = b.replication().expect("r").status();
    assert!(!st.peers[0].following, "{st:?}");
    assert_eq!(count(&b, "trunks"), 0, "no record flowed");
    // The same from a raw dial with foreign credentials.
    let creds = tandem::peer::tls::load(&b_dir.join("creds/cluster-ca.pem"), &b_dir.join("creds/node.pem"), &b_dir.join("creds/node.key"))
        .expect("creds");
    let r = a.block_on(tandem::peer::dial(&addr(ap), &creds, tandem::peer::PROTOCOL_VERSION, Duration::from_secs(5)));
    assert!(matches!(r, Err(tandem::peer::LinkError::Tls(_))), "{:?}", r.err());
}

fn creds_of(dir: &Path) -> tandem::peer::tls::Credentials {
    tandem::peer::tls::load(&dir.join("creds/cluster-ca.pem"), &dir.join("creds/node.pem"), &dir.join("creds/node.key")).expect("creds")
}

#[test]
fn replication_refuses_another_protocol_version_naming_both_and_resets_on_a_corrupted_frame() {
    use tandem::peer::proto::{Hello, Msg};
    let root = tempfile::tempdir().expect("tempdir");
    let (ap, bp) = (free_port(), free_port());
    let (a_dir, b_dir) = warm_pair(root.path(), ap, bp, &addr(ap), "");
    let a = start_node(&a_dir);
    let creds = creds_of(&b_dir);
    let r = a.block_on(tandem::peer::dial(&addr(ap), &creds, 99, Duration::from_secs(5)));
    match r {
        Err(tandem::peer::LinkError::Refused(reason)) => {
            assert!(reason.contains(&format!("protocol {}", tandem::peer::PROTOCOL_VERSION)) && reason.contains("version 99"), "{reason}");
        }
        other => panic!("expected a refusal, got {:?}", other.err()),
    }

    // A frame that fails its checksum resets the link and is counted.
    a.block_on(async {
        use tokio::io::AsyncWriteExt as _;
        let mut link = tandem::peer::dial(&addr(ap), &creds, tandem::peer::PROTOCOL_VERSION, Duration::from_secs(5)).await.expect("dial");
        let hello = Hello { node: "b".into(), epoch: 0, api: None, primary: Some("a".into()), last_seq: 0, components: vec![] };
        tandem::peer::send(&mut link, &Msg::Hello(hello), false).await.expect("hello");
        let Msg::Hello(_) = tandem::peer::recv(&mut link).await.expect("their hello") else { panic!("expected hello") };
        tandem::peer::send(&mut link, &Msg::Subscribe { after_seq: 0, components: vec![] }, false).await.expect("subscribe");
        let mut bad = tandem::peer::frame::encode(&Msg::Ack { seq: 0, high: 0, epoch: 0 }.encode().expect("encode"), false).expect("frame");
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        link.write_all(&bad).await.expect("write");
        link.flush().await.expect("flush");
        // The node closes the link.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout(Duration::from_secs(10), tandem::peer::recv(&mut link)).await {
                Ok(Ok(Msg::Heartbeat { .. } | Msg::Batch(_))) if Instant::now() < deadline => continue,
                Ok(Err(_)) => break,
                other => panic!("the link was not reset: {other:?}"),
            }
        }
    });
    let st = a.replication().expect("r").status();
    let pb = st.peers.iter().find(|p| p.name == "b").expect("b");
    assert!(pb.corrupt_frames >= 1, "{pb:?}");
    assert!(pb.last_error.as_deref().is_some_and(|e| e.contains("corrupted frame")), "{pb:?}");
}

#[test]
fn replication_plugin_digest_mismatch_pauses_that_component_with_an_alarm() {
    let root = tempfile::tempdir().expect("tempdir");
    let (ap, bp) = (free_port(), free_port());
    let (a_dir, b_dir) = warm_pair(root.path(), ap, bp, &addr(ap), "");
    // b runs different code for trunks: the same plugin with a custom section appended.
    let wasm = b_dir.join("plugins/trunks.wasm");
    let mut bytes = std::fs::read(&wasm).expect("read");
    bytes.extend_from_slice(&[0x00, 0x06, 0x04, b't', b'e', b's', b't', b'x']);
    std::fs::write(&wasm, bytes).expect("write");
    let a = start_node(&a_dir);
    let b = start_node(&b_dir);
    let ca = client(&a);
    let (k, v) = trunk(1);
    ca.put("trunks", &k, &v, None).expect("put");
    ca.put("pbx-reports", "a:u1:1", "{\"event\": \"x\"}", None).ok();
    wait_until("the mismatch alarm", WAIT, || {
        let st = b.replication().expect("r").status();
        !st.alarms.is_empty() && st.peers.iter().any(|p| p.following)
    });
    let st = b.replication().expect("r").status();
    let alarm = st.alarms.join("\n");
    let (da, db) = (
        a.node().registry().get("trunks").expect("a").digest().to_owned(),
        b.node().registry().get("trunks").expect("b").digest().to_owned(),
    );
    assert_ne!(da, db);
    assert!(alarm.contains("trunks") && alarm.contains(&da) && alarm.contains(&db), "{alarm}");
    let pa = st.peers.iter().find(|p| p.name == "a").expect("a");
    assert_eq!(pa.paused, vec!["trunks".to_owned()]);
    assert!(pa.components.contains(&"pbx-reports".to_owned()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count(&b, "trunks"), 0, "a paused component is not replicated");
}

#[test]
fn replication_heals_after_delays_partitions_and_corruption_through_a_fault_proxy() {
    let root = tempfile::tempdir().expect("tempdir");
    let (ap, bp) = (free_port(), free_port());
    let pa = FaultProxy::start(addr(ap).parse().expect("addr"));
    let pb = FaultProxy::start(addr(bp).parse().expect("addr"));
    let a_dir = write_cluster_node(
        root.path(),
        &NodeDef { name: "a", port: ap, peers: vec![("b".into(), pb.addr().to_string())], cluster: "mode = \"hot\"", extra: "" },
        &["crm"],
        None,
    );
    let b_dir = write_cluster_node(
        root.path(),
        &NodeDef { name: "b", port: bp, peers: vec![("a".into(), pa.addr().to_string())], cluster: "mode = \"hot\"", extra: "" },
        &["crm"],
        Some(&a_dir),
    );
    let a = start_node(&a_dir);
    let b = start_node(&b_dir);
    let mut acked = Vec::new();
    let (ca, cb) = (client(&a), client(&b));
    for i in 0..60 {
        match i {
            10 => {
                pa.set_delay(30);
                pb.set_delay(30);
            }
            20 => {
                pa.set_blocked(true);
                pb.set_blocked(true);
            }
            35 => {
                pa.set_blocked(false);
                pb.set_blocked(false);
                pa.set_delay(0);
                pb.set_delay(0);
            }
            45 => {
                pa.corrupt_next();
                pb.cut();
            }
            _ => {}
        }
        let (c, who) = if i % 2 == 0 { (&ca, "a") } else { (&cb, "b") };
        let key = account(i);
        c.put("crm", &key, &format!("{{\"kind\": \"account\", \"name\": \"{who} {i}\"}}"), None).expect("write");
        acked.push(key);
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_until("digests match after healing", WAIT, || digest(&a, "crm") == digest(&b, "crm"));
    for k in &acked {
        assert!(ca.get("crm", k).is_ok() && cb.get("crm", k).is_ok(), "{k} missing");
    }
    // The faults did happen: links were reset and came back.
    let resets: u64 = [&a, &b].iter().flat_map(|s| s.replication().expect("r").status().peers).map(|p| p.link_resets).sum();
    assert!(resets >= 2, "links reset {resets} times");
}

#[test]
fn replication_priority_lane_keeps_trunk_changes_ahead_of_a_report_flood() {
    let root = tempfile::tempdir().expect("tempdir");
    let (ap, bp) = (free_port(), free_port());
    let extra = "\n[components.trunks]\nplugin = \"plugins/trunks.wasm\"\npriority = \"high\"\n\n[components.pbx-reports]\nplugin = \"plugins/pbx-reports.wasm\"\npriority = \"low\"\n";
    let (a_dir, b_dir) = warm_pair(root.path(), ap, bp, &addr(ap), extra);
    let a = start_node(&a_dir);
    let b = start_node(&b_dir);
    wait_until("the standby follows", WAIT, || b.replication().is_some_and(|r| r.status().peers.iter().any(|p| p.following)));
    // Stop b from following while the flood builds up, so that a backlog is there for sure.
    drop(b);
    let report = |i: usize| {
        (
            format!("pbx-a:1764057600.{i}:1"),
            tandem::plugin::Op::Put(format!(
                "{{\"node\": \"pbx-a\", \"unique_id\": \"1764057600.{i}\", \"sequence\": 1, \"linked_id\": \"1764057600.{i}\", \"start_ms\": 1764057600000, \"end_ms\": 1764057601000, \"src\": \"1001\", \"dst\": \"1002\", \"dst_context\": \"from-internal\", \"channel\": \"PJSIP/1001-1\", \"last_app\": \"Dial\", \"disposition\": \"no_answer\", \"direction\": \"internal\"}}"
            )),
        )
    };
    let flood = 6000;
    for chunk in (0..flood).collect::<Vec<_>>().chunks(500) {
        let writes = chunk.iter().map(|&i| report(i)).collect();
        for r in a.block_on(a.node().write_many("pbx-reports", writes)).expect("flood") {
            r.expect("report write");
        }
    }
    let (k, v) = trunk(1);
    client(&a).put("trunks", &k, &v, None).expect("trunk change after the flood");
    let b = start_node(&b_dir);
    let t = Instant::now();
    wait_until("the trunk on the standby", WAIT, || b.block_on(b.node().get("trunks", &k)).ok().flatten().is_some());
    let trunk_lag = t.elapsed();
    let reports_then =
        b.block_on(b.node().changes(0, usize::MAX)).map(|c| c.iter().filter(|c| c.component == "pbx-reports").count()).unwrap_or(0);
    wait_until("the flood on the standby", Duration::from_secs(90), || digest(&a, "pbx-reports") == digest(&b, "pbx-reports"));
    let flood_time = t.elapsed();
    eprintln!("trunk after {trunk_lag:?} ({reports_then} of {flood} reports there then); all reports after {flood_time:?}");
    // Catch-up progress was shown and is complete.
    wait_until("catch-up complete in status", WAIT, || {
        b.replication()
            .expect("r")
            .status()
            .peers
            .iter()
            .any(|p| !p.catching_up && p.catch_up_percent == 100 && p.catch_up_target > flood as u64)
    });
    // The trunk change was written after the whole flood, yet arrived before most of it.
    assert!(reports_then < flood / 2, "the trunk waited behind {reports_then} reports");
    assert_eq!(digest(&a, "trunks"), digest(&b, "trunks"));
}

#[test]
fn replication_geo_links_compress_and_still_converge() {
    let mut forwarded = Vec::new();
    for profile in ["local", "geo"] {
        let root = tempfile::tempdir().expect("tempdir");
        let (ap, bp) = (free_port(), free_port());
        let proxy = FaultProxy::start(addr(ap).parse().expect("addr"));
        let (a_dir, b_dir) = warm_pair(root.path(), ap, bp, &proxy.addr().to_string(), "");
        for dir in [&a_dir, &b_dir] {
            let file = dir.join("tandem.toml");
            let text = std::fs::read_to_string(&file).expect("read").replace("\n[[peer]]\n", "\n[[peer]]\nprofile = \"PROFILE\"\n");
            std::fs::write(&file, text.replace("PROFILE", profile)).expect("write");
        }
        let a = start_node(&a_dir);
        let b = start_node(&b_dir);
        let writes: Vec<(String, tandem::plugin::Op)> = (0..400)
            .map(|i| {
                let (k, v) = trunk(i);
                (k, tandem::plugin::Op::Put(v))
            })
            .collect();
        for r in a.block_on(a.node().write_many("trunks", writes)).expect("write_many") {
            r.expect("write");
        }
        wait_until("the standby has the trunks", WAIT, || digest(&a, "trunks") == digest(&b, "trunks"));
        forwarded.push(proxy.forwarded());
    }
    eprintln!("bytes through the link: local {}, geo {}", forwarded[0], forwarded[1]);
    assert!(forwarded[1] * 2 < forwarded[0], "geo links compress: {forwarded:?}");
}

/// Two hot nodes, each dialing the other through a fault proxy, both proxies blocked.
struct Partitioned {
    a: Server,
    b: Server,
    /// In front of a and of b.
    pa: FaultProxy,
    pb: FaultProxy,
}

fn partitioned_hot_pair(root: &Path, components: &[&str], extra: &str) -> Partitioned {
    let (ap, bp) = (free_port(), free_port());
    let pa = FaultProxy::start(addr(ap).parse().expect("addr"));
    let pb = FaultProxy::start(addr(bp).parse().expect("addr"));
    pa.set_blocked(true);
    pb.set_blocked(true);
    let def =
        |name, port, peer: &str, at: String| NodeDef { name, port, peers: vec![(peer.to_owned(), at)], cluster: "mode = \"hot\"", extra };
    let a_dir = write_cluster_node(root, &def("a", ap, "b", pb.addr().to_string()), components, None);
    let b_dir = write_cluster_node(root, &def("b", bp, "a", pa.addr().to_string()), components, Some(&a_dir));
    Partitioned { a: start_node(&a_dir), b: start_node(&b_dir), pa, pb }
}

#[test]
fn replication_hot_conflicting_versions_are_listed_alike_on_both_nodes() {
    let root = tempfile::tempdir().expect("tempdir");
    let Partitioned { a, b, pa, pb } = partitioned_hot_pair(root.path(), &["security-settings"], "");
    let (ca, cb) = (client(&a), client(&b));
    // Partitioned: each node gives the role different permissions (a strict field).
    ca.put("security-settings", "role:ops", r#"{"kind": "role", "permissions": ["crm:read"]}"#, None).expect("a");
    cb.put("security-settings", "role:ops", r#"{"kind": "role", "permissions": ["crm:write"]}"#, None).expect("b");
    pa.set_blocked(false);
    pb.set_blocked(false);
    wait_until("hot digests converge", WAIT, || digest(&a, "security-settings") == digest(&b, "security-settings"));
    let ids = |c: &tandem::node::client::Client| {
        let mut v: Vec<String> = c.conflicts(Some("security-settings"), false).expect("conflicts").into_iter().map(|c| c.id).collect();
        v.sort();
        v
    };
    wait_until("the conflict listed on both nodes", WAIT, || !ids(&ca).is_empty() && ids(&ca) == ids(&cb));
    assert_eq!(ids(&ca).len(), 1);
}

/// A replicated version the plugin refuses to merge with the local one (an error it returns, or
/// a panic) does not stop the link: it goes to the conflict queue, listed alike on both nodes,
/// each node keeps its own version, and the rest of the feed flows past it.
#[test]
fn replication_hot_a_version_the_plugin_refuses_to_merge_goes_to_the_conflict_queue_and_the_rest_flows() {
    let root = tempfile::tempdir().expect("tempdir");
    let extra = format!("\n[components.hostile]\nplugin = {:?}\n", tandem_tests::wasm_path("tandem_test_hostile").display().to_string());
    let Partitioned { a, b, pa, pb } = partitioned_hot_pair(root.path(), &["crm"], &extra);
    let (ca, cb) = (client(&a), client(&b));
    // Partitioned: both nodes write the key whose versions the plugin refuses to merge, then a
    // key of their own after it in their feeds.
    ca.put("hostile", "unmergeable", r#"{"v": "a"}"#, None).expect("a");
    cb.put("hostile", "unmergeable", r#"{"v": "b"}"#, None).expect("b");
    // And a key whose merge panics: a trap every node meets alike.
    ca.put("hostile", "merge-trap", r#"{"v": "a"}"#, None).expect("a");
    cb.put("hostile", "merge-trap", r#"{"v": "b"}"#, None).expect("b");
    ca.put("hostile", "only-a", r#"{"v": 1}"#, None).expect("a");
    cb.put("hostile", "only-b", r#"{"v": 2}"#, None).expect("b");
    pa.set_blocked(false);
    pb.set_blocked(false);
    wait_until("each node has the other's later write", WAIT, || {
        cb.get("hostile", "only-a").is_ok() && ca.get("hostile", "only-b").is_ok()
    });
    let open = |c: &tandem::node::client::Client| c.conflicts(Some("hostile"), false).expect("conflicts");
    wait_until("the conflicts listed on both nodes", WAIT, || open(&ca).len() == 2 && open(&cb).len() == 2);
    let by_key = |c: &tandem::node::client::Client| {
        let mut v = open(c);
        v.sort_by(|x, y| x.key.cmp(&y.key));
        v
    };
    let (on_a, on_b) = (by_key(&ca), by_key(&cb));
    assert_eq!((on_a[0].key.as_str(), on_a[1].key.as_str()), ("merge-trap", "unmergeable"));
    assert!(on_a[0].reason.contains("refused to merge") && on_a[0].reason.contains("merge trapped"), "{}", on_a[0].reason);
    assert!(on_a[1].reason.contains("refused to merge") && on_a[1].reason.contains("deliberately"), "{}", on_a[1].reason);
    for (x, y) in on_a.iter().zip(&on_b) {
        // The same id on both nodes, and both versions listed in the same order.
        assert_eq!(x.id, y.id);
        assert_eq!(x.versions, y.versions);
        assert_eq!(x.versions.as_array().map(Vec::len), Some(2), "{}", x.versions);
    }
    // Each node keeps its own version; the link goes on: a write made after it arrives.
    assert_eq!(ca.get("hostile", "unmergeable").expect("a").value["v"], "a");
    assert_eq!(cb.get("hostile", "unmergeable").expect("b").value["v"], "b");
    ca.put("hostile", "after", r#"{"v": 3}"#, None).expect("a");
    wait_until("a later write reaches b", WAIT, || cb.get("hostile", "after").is_ok());
    let link = b.replication().expect("replication").status().peers.into_iter().find(|p| p.name == "a").expect("peer a");
    assert!(link.last_error.as_deref().is_none_or(|e| !e.contains("merge")), "{link:?}");
}

/// With two members in the synchronous set, a `standby`-ack write is acknowledged by whichever
/// member has it first, so the member that then goes down may be its only holder besides the
/// primary. It leaves the set only once the member that stays holds that write: until then the
/// set keeps it (and failover could still pick it); b's link here stalls, neither cut nor timed
/// out, while c is due to leave.
#[test]
fn replication_a_member_leaves_the_synchronous_set_only_once_the_members_that_stay_hold_what_it_acknowledged() {
    let root = tempfile::tempdir().expect("tempdir");
    let (ap, bp, cp) = (free_port(), free_port(), free_port());
    // Every link between a and b runs through a proxy, whichever side dials.
    let (to_a, to_b) = (FaultProxy::start(addr(ap).parse().expect("addr")), FaultProxy::start(addr(bp).parse().expect("addr")));
    // No automatic failover: the voters' traffic would stall with b's link; the rule holds
    // without it.
    let cluster = "mode = \"warm\"\nprimary = \"a\"\nfailover = false\nack_timeout_ms = 3000\nsync_drop_ms = 1000";
    let def = |name, port, peers: [(&str, String); 2]| NodeDef {
        name,
        port,
        peers: peers.into_iter().map(|(n, a)| (n.to_owned(), a)).collect(),
        cluster,
        extra: STANDBY_ACK_TRUNKS,
    };
    let a_dir = write_cluster_node(root.path(), &def("a", ap, [("b", to_b.addr().to_string()), ("c", addr(cp))]), &["trunks"], None);
    let b_dir =
        write_cluster_node(root.path(), &def("b", bp, [("a", to_a.addr().to_string()), ("c", addr(cp))]), &["trunks"], Some(&a_dir));
    let c_dir = write_cluster_node(root.path(), &def("c", cp, [("a", addr(ap)), ("b", addr(bp))]), &["trunks"], Some(&a_dir));
    let a = start_node(&a_dir);
    let b = start_node(&b_dir);
    let c = start_node(&c_dir);
    let ca = client(&a);
    let set = || a.replication().expect("r").status().sync_set.members;
    wait_until("b and c are in the synchronous set", WAIT, || {
        let m = set();
        m.contains_key("b") && m.contains_key("c")
    });
    for i in 0..5 {
        let (k, v) = trunk(i);
        ca.put("trunks", &k, &v, None).expect("standby-acked write");
    }
    wait_until("b follows", WAIT, || count(&b, "trunks") == 5);
    let b_resets = || a.replication().expect("r").status().peers.iter().find(|p| p.name == "b").map(|p| p.link_resets);
    let resets_before = b_resets();
    // The link to b stalls: the next write is acknowledged by c alone, then c goes down.
    to_a.set_held(true);
    to_b.set_held(true);
    let held = Instant::now();
    let (k, v) = trunk(99);
    ca.put("trunks", &k, &v, None).expect("acknowledged by c");
    assert!(c.block_on(c.node().get("trunks", &k)).expect("read").is_some(), "c has it at ack time");
    drop(c);
    let down = Instant::now();
    let b_has_it = || b.block_on(b.node().get("trunks", &k)).expect("read").is_some();
    // c has been down well past sync_drop_ms; b is up (its link is under the 5 s timeout) but
    // lacks the write: c stays.
    while held.elapsed() < Duration::from_millis(3_000) {
        let m = set();
        assert!(m.contains_key("c") || b_has_it(), "c left the set {:?} after {:?} down while b lacks the write", m, down.elapsed());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(down.elapsed() > Duration::from_millis(2_000), "c was down {:?}", down.elapsed());
    assert!(set().contains_key("c"), "c is still a member: {:?}", set());
    assert!(!b_has_it(), "the link to b held the write back");
    to_a.set_held(false);
    to_b.set_held(false);
    wait_until("c leaves once b holds the write", WAIT, || {
        let m = set();
        assert!(m.contains_key("c") || b_has_it(), "c left the set {m:?} while b lacks the write");
        !m.contains_key("c")
    });
    assert!(set().contains_key("b"), "b stays: {:?}", set());
    assert!(b_has_it());
    // b's link survived the stall (shorter than the link timeout): b was up all along.
    assert_eq!(b_resets(), resets_before, "b's link was not reset");
}
