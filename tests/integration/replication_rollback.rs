//! A node whose store went back in time (a VM snapshot or an older copy of its data directory
//! restored) while a peer kept its position in the node's feed: the peer's position is past the
//! feed's end. A hot link resumes from the end (the node's new writes reach the peer and the
//! digests converge); a warm link is refused with an alarm on both nodes until an operator
//! re-seeds one side, after which the standby is bootstrapped and the alarm clears.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem::node::Server;
use tandem_tests::cluster::{NodeDef, free_port, write_cluster_node};
use tandem_tests::{alarms, client, digest, start_node, wait_until};

const WAIT: Duration = Duration::from_secs(30);

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn trunk(i: usize) -> (String, String) {
    (format!("trunk-{i:04}"), format!("{{\"host\": \"h{i}.carrier.example\", \"transport\": \"udp\", \"max_channels\": 10}}"))
}

fn pair(root: &Path, cluster: &str, components: &[&str]) -> (PathBuf, PathBuf) {
    let (ap, bp) = (free_port(), free_port());
    let a = write_cluster_node(
        root,
        &NodeDef { name: "a", port: ap, peers: vec![("b".into(), addr(bp))], cluster, extra: "" },
        components,
        None,
    );
    let b = write_cluster_node(
        root,
        &NodeDef { name: "b", port: bp, peers: vec![("a".into(), addr(ap))], cluster, extra: "" },
        components,
        Some(&a),
    );
    (a, b)
}

/// What a VM snapshot of a stopped node holds: its store and its replication state.
fn copy_state(node_dir: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    std::fs::copy(node_dir.join("store.db"), to.join("store.db")).expect("copy the store");
    copy_dir(&node_dir.join("replication"), &to.join("replication"));
}

/// Puts a stopped node's store back as `from` holds it (its replication state stays).
fn restore_store(from: &Path, node_dir: &Path) {
    for f in ["store.db-wal", "store.db-shm"] {
        let _ = std::fs::remove_file(node_dir.join(f));
    }
    std::fs::copy(from.join("store.db"), node_dir.join("store.db")).expect("restore the store");
}

/// Puts a node's state back as `from` holds it (the node is stopped).
fn restore_state(from: &Path, node_dir: &Path) {
    restore_store(from, node_dir);
    let _ = std::fs::remove_dir_all(node_dir.join("replication"));
    copy_dir(&from.join("replication"), &node_dir.join("replication"));
}

fn copy_dir(from: &Path, to: &Path) {
    let Ok(entries) = std::fs::read_dir(from) else { return };
    std::fs::create_dir_all(to).expect("mkdir");
    for e in entries.flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

/// Moves a stopped node's store and replication state aside: it starts as a new peer.
fn reseed(node_dir: &Path) {
    for f in ["store.db", "store.db-wal", "store.db-shm"] {
        let _ = std::fs::remove_file(node_dir.join(f));
    }
    let _ = std::fs::remove_dir_all(node_dir.join("replication"));
}

/// Both nodes running; `a` writes ten trunks, is stopped and its state copied (the snapshot),
/// then started again to write ten more. Each time `b` has them all.
fn history(a_dir: &Path, b_dir: &Path, snapshot: &Path) -> (Server, Server) {
    let (mut a, b) = (start_node(a_dir), start_node(b_dir));
    for i in 0..10 {
        let (k, v) = trunk(i);
        client(&a).put("trunks", &k, &v, None).expect("put");
    }
    wait_until("first sync", WAIT, || digest(&a, "trunks") == digest(&b, "trunks"));
    drop(a);
    copy_state(a_dir, snapshot);
    a = start_node(a_dir);
    for i in 10..20 {
        let (k, v) = trunk(i);
        client(&a).put("trunks", &k, &v, None).expect("put");
    }
    wait_until("second sync", WAIT, || digest(&a, "trunks") == digest(&b, "trunks"));
    (a, b)
}

#[test]
fn rollback_hot_peer_resumes_from_the_end_of_a_rolled_back_feed_and_converges() {
    let root = tempfile::tempdir().expect("tempdir");
    let (a_dir, b_dir) = pair(root.path(), "mode = \"hot\"", &["trunks"]);
    let snapshot = root.path().join("a-snapshot");
    let (a, b) = history(&a_dir, &b_dir, &snapshot);
    let b_position = a.node().last_seq();

    // `a` goes back to its snapshot and takes a write before `b` reconnects: that write's
    // position in a's feed is one `b` believes it has.
    drop(b);
    drop(a);
    restore_state(&snapshot, &a_dir);
    let a = start_node(&a_dir);
    assert!(a.node().last_seq() < b_position, "the feed went back");
    let (k, v) = trunk(100);
    client(&a).put("trunks", &k, &v, None).expect("a write after the rollback");
    let b = start_node(&b_dir);
    // The new write reaches `b`, and the ten writes `a` lost come back to it from `b`.
    wait_until("the write after the rollback reaches b", WAIT, || client(&b).get("trunks", &k).is_ok());
    wait_until("digests converge", WAIT, || digest(&a, "trunks") == digest(&b, "trunks"));
    assert_eq!(client(&a).list_all("trunks", "").expect("list").len(), 21);
    assert!(alarms(&a).iter().all(|m| !m.contains("went back in time")), "{:?}", alarms(&a));
}

/// A warm pair whose primary `a` went back to the state it had after its first ten writes,
/// while the standby `b` holds all twenty.
fn rolled_back_warm_primary(root: &Path) -> (PathBuf, PathBuf, Server, Server) {
    let (a_dir, b_dir) = pair(root, "mode = \"warm\"\nprimary = \"a\"", &["trunks"]);
    let snapshot = root.join("a-snapshot");
    let (a, b) = history(&a_dir, &b_dir, &snapshot);
    drop(a);
    restore_state(&snapshot, &a_dir);
    let a = start_node(&a_dir);
    (a_dir, b_dir, a, b)
}

#[test]
fn rollback_warm_primary_refuses_its_standby_with_an_alarm_until_one_side_is_reseeded() {
    let root = tempfile::tempdir().expect("tempdir");
    let (_, b_dir, a, b) = rolled_back_warm_primary(root.path());
    let rolled = |s: &Server| alarms(s).into_iter().find(|m| m.contains("went back in time"));
    wait_until("the primary raises the alarm", WAIT, || rolled(&a).is_some());
    wait_until("the standby raises it too", WAIT, || rolled(&b).is_some());
    let message = rolled(&a).expect("alarm");
    assert!(message.contains("b holds a's feed up to"), "{message}");
    // A write on the rolled-back primary does not reach the standby, which holds versions
    // the primary lost.
    let (k, v) = trunk(100);
    client(&a).put("trunks", &k, &v, None).expect("put");
    std::thread::sleep(Duration::from_millis(500));
    assert!(client(&b).get("trunks", &k).is_err(), "nothing flows to the standby");
    assert!(client(&b).get("trunks", &trunk(15).0).is_ok(), "the standby keeps what the primary lost");

    // Keep the primary's data: re-seed the standby, which is bootstrapped from the primary.
    drop(b);
    reseed(&b_dir);
    let b = start_node(&b_dir);
    wait_until("the re-seeded standby converges", WAIT, || digest(&a, "trunks") == digest(&b, "trunks"));
    assert!(client(&b).get("trunks", &k).is_ok());
    assert!(client(&b).get("trunks", &trunk(15).0).is_err(), "the standby now holds the primary's data");
    wait_until("the alarm clears on the primary", WAIT, || rolled(&a).is_none());
}

#[test]
fn rollback_warm_standby_keeps_what_the_primary_lost_when_promoted_and_the_old_primary_is_reseeded() {
    let root = tempfile::tempdir().expect("tempdir");
    let (a_dir, _, a, b) = rolled_back_warm_primary(root.path());
    wait_until("the standby raises the alarm", WAIT, || alarms(&b).iter().any(|m| m.contains("went back in time")));

    // Keep the standby's data: the old primary is stopped and re-seeded, the standby promoted.
    drop(a);
    reseed(&a_dir);
    b.block_on(b.node().promote()).expect("promote b");
    let a = start_node(&a_dir);
    wait_until("the old primary is bootstrapped from the new one", WAIT, || digest(&a, "trunks") == digest(&b, "trunks"));
    assert!(client(&a).get("trunks", &trunk(15).0).is_ok(), "the writes the old primary lost are back");
    assert_eq!(client(&a).list_all("trunks", "").expect("list").len(), 20);
    let (k, v) = trunk(100);
    client(&b).put("trunks", &k, &v, None).expect("the new primary takes writes");
    assert!(client(&a).put("trunks", &k, &v, None).is_err(), "the old primary is a standby");
    wait_until("the new write reaches the old primary", WAIT, || client(&a).get("trunks", &k).is_ok());
    wait_until("no alarm is left", WAIT, || alarms(&b).iter().all(|m| !m.contains("went back in time")));
}

#[test]
fn rollback_of_the_store_alone_is_seen_from_what_peers_acknowledged_even_after_more_writes() {
    let root = tempfile::tempdir().expect("tempdir");
    let (a_dir, b_dir) = pair(root.path(), "mode = \"warm\"\nprimary = \"a\"", &["trunks"]);
    let snapshot = root.path().join("a-snapshot");
    let (a, b) = history(&a_dir, &b_dir, &snapshot);
    // `a` records what `b` acknowledged (at most a second later).
    let acked = a_dir.join("replication").join("acked.json");
    let read_acked = || -> u64 {
        std::fs::read(&acked)
            .ok()
            .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
            .and_then(|v| v["b"].as_u64())
            .unwrap_or(0)
    };
    let end = a.node().last_seq();
    wait_until("a records b's acknowledgement", WAIT, || read_acked() >= end);
    drop(b);
    drop(a);
    // An older copy of the store alone is put back; `a` then takes more writes than `b` was
    // ahead by before `b` is back: comparing positions with the feed's end would not see it.
    restore_store(&snapshot, &a_dir);
    let a = start_node(&a_dir);
    let rolled = |s: &Server| alarms(s).into_iter().find(|m| m.contains("went back in time"));
    assert!(rolled(&a).is_some_and(|m| m.contains("b holds a's feed up to 20")), "{:?}", alarms(&a));
    for i in 200..230 {
        let (k, v) = trunk(i);
        client(&a).put("trunks", &k, &v, None).expect("put");
    }
    assert!(a.node().last_seq() > end, "the feed grew past b's position again");
    let b = start_node(&b_dir);
    wait_until("the standby is refused with the alarm", WAIT, || rolled(&b).is_some());
    assert!(rolled(&a).is_some());
    std::thread::sleep(Duration::from_millis(500));
    assert!(client(&b).get("trunks", &trunk(229).0).is_err(), "nothing flows to the standby");
}
