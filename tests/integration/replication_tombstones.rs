//! Tombstones (deletions) are purged only once every data peer has them, or past
//! `store.peer_hold_max_ms` with a warning first; a peer that comes back after that fell off
//! the feed and is bootstrapped from a consistent snapshot merged into its own store.

use std::time::Duration;

use tandem::node::Server;
use tandem_tests::cluster::{NodeDef, free_port, write_cluster_node};
use tandem_tests::{client, start_node, wait_until};

const WAIT: Duration = Duration::from_secs(30);
const STORE: &str = "\n[store]\ntombstone_keep_ms = 1\npeer_hold_max_ms = 4000\nmaintenance_interval_ms = 100\n";

fn account(i: usize) -> String {
    format!("account:01J8Z3K4M5N6P7Q8R9S0T1V{i:03}")
}

fn doc(i: usize) -> String {
    format!("{{\"kind\": \"account\", \"name\": \"Acme {i}\"}}")
}

/// Whether `s` still holds a tombstone for `key` in its feed.
fn has_tombstone(s: &Server, key: &str) -> bool {
    let changes = s.block_on(s.node().changes(0, 100_000)).expect("feed");
    changes.iter().any(|c| c.key == key && c.stored.tombstone)
}

/// The node's replication alarms as one text.
fn alarms(s: &Server) -> String {
    tandem_tests::alarms(s).join("\n")
}

#[test]
fn replication_tombstones_wait_for_every_peer_and_a_peer_past_the_cap_is_bootstrapped() {
    let root = tempfile::tempdir().expect("tempdir");
    let (ap, bp) = (free_port(), free_port());
    let a_dir = write_cluster_node(
        root.path(),
        &NodeDef { name: "a", port: ap, peers: vec![("b".into(), format!("127.0.0.1:{bp}"))], cluster: "mode = \"hot\"", extra: STORE },
        &["crm"],
        None,
    );
    let b_dir = write_cluster_node(
        root.path(),
        &NodeDef { name: "b", port: bp, peers: vec![("a".into(), format!("127.0.0.1:{ap}"))], cluster: "mode = \"hot\"", extra: STORE },
        &["crm"],
        Some(&a_dir),
    );
    let a = start_node(&a_dir);
    let b = start_node(&b_dir);
    let (ca, cb) = (client(&a), client(&b));
    for i in 0..3 {
        ca.put("crm", &account(i), &doc(i), None).expect("write on a");
    }
    wait_until("b has a's writes", WAIT, || (0..3).all(|i| cb.get("crm", &account(i)).is_ok()));

    // b is away: a's deletion is kept for it, however old.
    drop(b);
    ca.delete("crm", &account(0), None).expect("delete on a");
    std::thread::sleep(Duration::from_millis(300));
    a.block_on(a.node().maintain_now());
    assert!(has_tombstone(&a, &account(0)), "a purged a deletion its peer b never received");

    // b returns, receives the deletion, and acknowledges it: then a purges it.
    let b = start_node(&b_dir);
    let cb = client(&b);
    wait_until("b applies the deletion", WAIT, || cb.get("crm", &account(0)).is_err());
    wait_until("a purges the tombstone once b has it", WAIT, || {
        a.block_on(a.node().maintain_now());
        !has_tombstone(&a, &account(0))
    });
    // Each node purges tombstones on its own tick: stores that hold the same live records agree
    // (digests count live records), and no divergence alarm is raised while nothing is written
    // for longer than it waits (2 s here).
    wait_until("the digests agree", WAIT, || a.node().digest("crm").ok() == b.node().digest("crm").ok());
    std::thread::sleep(Duration::from_millis(3_000));
    assert!(!alarms(&a).contains("differs") && !alarms(&b).contains("differs"), "{}\n{}", alarms(&a), alarms(&b));

    // b is away past the cap: a warns first, then purges anyway.
    drop(b);
    ca.delete("crm", &account(1), None).expect("delete on a");
    wait_until("a warns that b is about to fall off", WAIT, || alarms(&a).contains("purged anyway"));
    wait_until("a purges past the cap", WAIT, || {
        a.block_on(a.node().maintain_now());
        !has_tombstone(&a, &account(1))
    });
    let purged = a.block_on(a.node().tombstones_purged_through()).expect("purged through");
    assert!(purged > 0);
    ca.put("crm", &account(7), &doc(7), None).expect("write while b is away");

    // b comes back behind the purge: it is bootstrapped from a snapshot, merged into its store.
    let b = start_node(&b_dir);
    let cb = client(&b);
    wait_until("b gets the write made while it was away", WAIT, || cb.get("crm", &account(7)).is_ok());
    assert!(alarms(&a).contains("fell off"), "{}", alarms(&a));
    // The deletion it missed was purged: the snapshot cannot carry it (the documented cost of
    // the cap); everything else is there.
    assert!(cb.get("crm", &account(1)).is_ok());
    assert!(cb.get("crm", &account(2)).is_ok());
    assert!(cb.get("crm", &account(0)).is_err());
    // That difference lasts (no feed will carry the deletion again): b's digest of crm differs
    // from a's, and once nothing is written both nodes say so.
    wait_until("b raises the divergence alarm", WAIT, || alarms(&b).contains("crm: this node's digest"));
    wait_until("a shows b's report", WAIT, || alarms(&a).contains("crm: b reports that its copy differs"));
}
