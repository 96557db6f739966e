//! What replication and failover will build on: remote versions (merge, replace, the clock
//! bound), conflicts, the change feed, epochs; and preload policies and retention.

use std::sync::Arc;

use tandem::node::hlc::ManualWallClock;
use tandem::node::{Applied, ApplyMode, NodeError, NodeOptions, RemoteVersion};
use tandem::plugin::{NoLookup, Op, Stamp};
use tandem_tests::{client, start_node, start_node_with, write_node_dir};

const DAY: u64 = 86_400_000;

/// A version of a trunk as node `node` would have stored it (serialize only, not validated).
fn remote_trunk(server: &tandem::node::Server, key: &str, doc: &str, prior: Option<&[u8]>, stamp: Stamp) -> RemoteVersion {
    let plugin = server.node().registry().get("trunks").expect("trunks");
    let mut s = plugin.session(Arc::new(NoLookup)).expect("session");
    let stored = s.serialize(key, &Op::Put(doc.to_owned()), prior, &stamp).expect("call").expect("serialize");
    RemoteVersion { key: key.to_owned(), origin: stamp.node.clone(), stored, stamp, doc: None }
}

fn apply(server: &tandem::node::Server, v: RemoteVersion, mode: ApplyMode) -> Result<Applied, NodeError> {
    server.block_on(server.node().apply_remote("trunks", vec![v], mode)).expect("submitted").remove(0)
}

#[test]
fn remote_versions_merge_once_move_the_clock_and_far_future_stamps_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_node_dir(dir.path(), "a", &["trunks"], "[clock]\nmax_ahead_ms = 5000\n");
    let wall = ManualWallClock::new(1_800_000_000_000);
    let server = start_node_with(dir.path(), NodeOptions { wall: wall.clone() });
    let c = client(&server);

    let v = remote_trunk(&server, "k", r#"{"host": "b.example"}"#, None, Stamp::new(1_800_000_001_000, 0, "b"));
    let Applied::Stored { seq, conflict: None } = apply(&server, v.clone(), ApplyMode::Merge).expect("applied") else {
        panic!("not stored")
    };
    let r = c.get("trunks", "k").expect("get");
    assert_eq!((r.value["host"].as_str(), r.origin.as_str(), r.seq), (Some("b.example"), "b", seq));
    // Applying it again changes nothing (replication is idempotent).
    assert_eq!(apply(&server, v.clone(), ApplyMode::Merge), Ok(Applied::Unchanged));
    assert_eq!(server.node().last_seq(), seq);
    // The next local stamp orders after the remote one, though the wall clock is behind it.
    let ack = c.put("trunks", "k", r#"{"host": "a.example"}"#, None).expect("put");
    assert!(Stamp::from(&ack.stamp) > v.stamp);
    // A concurrent older remote change of another field merges in; the newer local host stays.
    let older = remote_trunk(
        &server,
        "k",
        r#"{"host": "b.example", "max_channels": 7}"#,
        Some(&v.stored.data),
        Stamp::new(1_800_000_001_500, 0, "b"),
    );
    assert!(matches!(apply(&server, older, ApplyMode::Merge), Ok(Applied::Stored { .. })));
    let r = c.get("trunks", "k").expect("get");
    assert_eq!((r.value["host"].as_str(), r.value["max_channels"].as_u64()), (Some("a.example"), Some(7)));

    // A node with a wild clock: refused, reported, nothing applied.
    let wild = remote_trunk(&server, "w", r#"{"host": "w.example"}"#, None, Stamp::new(1_800_000_000_000 + 60_000, 0, "c"));
    let e = apply(&server, wild, ApplyMode::Merge).expect_err("too far ahead");
    assert_eq!(e.code(), "clock_ahead");
    assert!(e.to_string().contains("\"c\""), "{e}");
    assert_eq!(c.get("trunks", "w").expect_err("not applied").code(), Some("not_found"));
    let s = c.status().expect("status");
    assert_eq!(s.node.clock_refusals, 1);
    assert!(s.node.last_clock_refusal.is_some_and(|m| m.contains("ahead")));
    assert!(c.metrics().expect("metrics").contains("tandem_clock_refusals_total{node=\"a\"} 1"));

    // Replace mode (a warm standby): only a newer version replaces the local one.
    let stale = remote_trunk(&server, "k", r#"{"host": "old.example"}"#, None, Stamp::new(1_700_000_000_000, 0, "b"));
    assert_eq!(apply(&server, stale, ApplyMode::Replace), Ok(Applied::Older));
    let newer = remote_trunk(&server, "k", r#"{"host": "primary.example"}"#, None, Stamp::new(1_800_000_003_000, 0, "b"));
    assert!(matches!(apply(&server, newer, ApplyMode::Replace), Ok(Applied::Stored { .. })));
    assert_eq!(c.get("trunks", "k").expect("get").value["host"], "primary.example");

    // A warm version may bring the document the sender's plugin read: it is kept as the reader's
    // view. One that is not JSON is not kept: this node's plugin reads the version instead.
    let mut shipped = remote_trunk(&server, "k", r#"{"host": "shipped.example"}"#, None, Stamp::new(1_800_000_004_000, 0, "b"));
    let plugin = server.node().registry().get("trunks").expect("trunks");
    let mut session = plugin.session(Arc::new(NoLookup)).expect("session");
    let doc = session.deserialize("k", &shipped.stored.data).expect("call").expect("read").expect("live");
    shipped.doc = Some(Arc::from(doc.as_str()));
    assert!(matches!(apply(&server, shipped, ApplyMode::Replace), Ok(Applied::Stored { .. })));
    assert_eq!(c.get("trunks", "k").expect("get").value, serde_json::from_str::<serde_json::Value>(&doc).expect("json"));
    let mut garbled = remote_trunk(&server, "k", r#"{"host": "garbled.example"}"#, None, Stamp::new(1_800_000_005_000, 0, "b"));
    garbled.doc = Some(Arc::from("{\"host\": \"not what was stored\""));
    assert!(matches!(apply(&server, garbled, ApplyMode::Replace), Ok(Applied::Stored { .. })));
    assert_eq!(c.get("trunks", "k").expect("get").value["host"], "garbled.example");
}

#[test]
fn a_merge_that_breaks_the_rules_is_kept_as_a_conflict_until_a_write_resolves_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_node_dir(dir.path(), "a", &["trunks"], "");
    let server = start_node(dir.path());
    let c = client(&server);
    c.put("trunks", "k", r#"{"host": "a.example"}"#, None).expect("put");
    // Node b's version has a port validation refuses; a replicated version is never refused.
    let now = server.node().clock().wall_ms();
    let bad = remote_trunk(&server, "k", r#"{"host": "a.example", "port": 0}"#, None, Stamp::new(now + 1, 0, "b"));
    let Ok(Applied::Stored { conflict: Some(id), .. }) = apply(&server, bad, ApplyMode::Merge) else { panic!("expected a conflict") };

    let open = c.conflicts(None, false).expect("list");
    assert_eq!(open.len(), 1);
    let conflict = &open[0];
    assert_eq!((conflict.id.as_str(), conflict.component.as_str(), conflict.key.as_str()), (id.as_str(), "trunks", "k"));
    assert!(conflict.open);
    assert!(conflict.violations.iter().any(|v| v.field == "/port" && v.code == "range"), "{:?}", conflict.violations);
    let versions = conflict.versions.as_array().expect("versions");
    let origins: Vec<&str> = versions.iter().filter_map(|v| v["origin"].as_str()).collect();
    assert_eq!(origins, vec!["a", "b"]);
    assert_eq!(c.conflict(&id).expect("show").id, id);
    assert_eq!(c.status().expect("status").store.conflicts_open, 1);
    assert!(c.metrics().expect("metrics").contains("tandem_conflicts_open{node=\"a\"} 1"));
    assert_eq!(c.conflict("nope").expect_err("unknown").code(), Some("not_found"));

    // The resolution is an ordinary write; one that still breaks the rules is refused.
    let e = c.resolve(&id, Some(&serde_json::json!({"host": "a.example", "port": 0}))).expect_err("still invalid");
    assert_eq!(e.code(), Some("invalid"));
    let ack = c.resolve(&id, Some(&serde_json::json!({"host": "a.example", "port": 5070}))).expect("resolve");
    assert_eq!(ack.conflict, id);
    assert_eq!(c.get("trunks", "k").expect("get").value["port"], 5070);
    assert!(c.conflicts(None, false).expect("list").is_empty());
    let all = c.conflicts(None, true).expect("list");
    assert_eq!(all.len(), 1);
    assert!(!all[0].open);
    assert_eq!(all[0].resolved_seq, Some(ack.write.seq));
    assert_eq!(c.resolve(&id, None).expect_err("already resolved").code(), Some("refused"));
    assert_eq!(c.status().expect("status").store.conflicts_open, 0);
}

#[test]
fn the_change_feed_holds_each_keys_latest_version_in_seq_order_with_its_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_node_dir(dir.path(), "a", &["trunks", "crm"], "");
    {
        let server = start_node(dir.path());
        let node = server.node();
        let c = client(&server);
        let mut watch = node.watch_seq();
        c.put("trunks", "k1", r#"{"host": "one.example"}"#, None).expect("put");
        c.put("trunks", "k2", r#"{"host": "two.example"}"#, None).expect("put");
        assert_eq!(server.block_on(node.set_epoch(5)).expect("epoch"), 5);
        c.put("trunks", "k1", r#"{"host": "uno.example"}"#, None).expect("put");
        c.delete("trunks", "k2", None).expect("delete");
        let feed = server.block_on(node.changes(0, 100)).expect("feed");
        let summary: Vec<(u64, &str, bool, u64)> = feed.iter().map(|c| (c.seq, c.key.as_str(), c.stored.tombstone, c.epoch)).collect();
        assert_eq!(summary, vec![(3, "k1", false, 5), (4, "k2", true, 5)]);
        assert!(feed.iter().all(|c| c.origin == "a" && c.component == "trunks" && c.stamp.node == "a"));
        assert_eq!(server.block_on(node.changes(3, 100)).expect("feed").len(), 1);
        assert_eq!(server.block_on(node.changes(4, 100)).expect("feed").len(), 0);
        assert_eq!(*watch.borrow_and_update(), 4);
        assert_eq!(server.block_on(node.set_epoch(4)).expect_err("epochs never go back").code(), "refused");
        server.shutdown();
    }
    let server = start_node(dir.path());
    assert_eq!(server.node().epoch(), 5, "the epoch is durable");
    assert_eq!(server.node().last_seq(), 4);
}

#[test]
fn preload_policies_decide_what_memory_holds_and_reads_still_see_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "[components.trunks]\nplugin = \"plugins/trunks.wasm\"\npreload = \"none\"\n\n[components.pbx-reports]\nplugin = \"plugins/pbx-reports.wasm\"\npreload = \"recent\"\npreload_window = \"1d\"\n";
    write_node_dir(dir.path(), "a", &["trunks", "pbx-reports", "crm"], extra);
    let t0 = 1_800_000_000_000;
    let wall = ManualWallClock::new(t0 - 3 * DAY);
    let options = NodeOptions { wall: wall.clone() };
    let examples = {
        let server = start_node_with(dir.path(), options.clone());
        let c = client(&server);
        let examples = server.node().registry().get("pbx-reports").expect("plugin").info().examples.clone();
        assert!(examples.len() >= 2);
        c.put("pbx-reports", &examples[0].key, &examples[0].input, None).expect("old report");
        wall.set(t0);
        for ex in &examples[1..] {
            c.put("pbx-reports", &ex.key, &ex.input, None).expect("new report");
        }
        c.put("trunks", "k", r#"{"host": "a.example"}"#, None).expect("put");
        let crm = server.node().registry().get("crm").expect("crm").info().examples[0].clone();
        c.put("crm", &crm.key, &crm.input, None).expect("crm");
        server.block_on(server.node().maintain_now());
        let s = c.status().expect("status");
        let by = |n: &str| s.components.iter().find(|c| c.name == n).expect("component").clone();
        assert_eq!((by("trunks").records, by("trunks").in_memory), (1, 0));
        assert_eq!((by("pbx-reports").records, by("pbx-reports").in_memory), (examples.len() as u64, examples.len() as u64 - 1));
        assert_eq!(by("pbx-reports").preload, "recent 1d");
        assert_eq!(by("crm").in_memory, 1);
        // Reads of records not in memory come from the store.
        assert_eq!(c.get("trunks", "k").expect("get").value["host"], "a.example");
        assert!(c.get("pbx-reports", &examples[0].key).is_ok());
        assert_eq!(c.list_all("pbx-reports", "").expect("list").len(), examples.len());
        assert_eq!(c.list_all("trunks", "").expect("list").len(), 1);
        assert!(
            c.metrics()
                .expect("metrics")
                .lines()
                .any(|l| l.starts_with("tandem_store_reads_total{node=\"a\",component=\"trunks\"}") && !l.ends_with(" 0"))
        );
        server.shutdown();
        examples
    };
    let server = start_node_with(dir.path(), options);
    let s = client(&server).status().expect("status");
    let by = |n: &str| s.components.iter().find(|c| c.name == n).expect("component").clone();
    assert_eq!(by("trunks").in_memory, 0);
    assert_eq!(by("pbx-reports").in_memory, examples.len() as u64 - 1, "only the recent window is preloaded");
    assert_eq!(by("crm").in_memory, 1);
    assert!(by("crm").memory_bytes > 0);
}

#[test]
fn retention_purges_reports_older_than_the_plugins_rule_from_their_stamps() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_node_dir(dir.path(), "a", &["pbx-reports"], "");
    let t0 = 1_800_000_000_000;
    let wall = ManualWallClock::new(t0);
    let server = start_node_with(dir.path(), NodeOptions { wall: wall.clone() });
    let c = client(&server);
    // The node made the component's index by age before taking writes (store schema 2: only
    // components with retention have one).
    let hex: String = "pbx-reports".bytes().map(|b| format!("{b:02x}")).collect();
    assert_eq!(age_indexes(&server.node().config().store_path()), vec![format!("records_age_{hex}")]);
    let plugin = server.node().registry().get("pbx-reports").expect("plugin");
    let max_age = plugin.info().retention.clone().and_then(|r| r.max_age_ms).expect("reports have a retention age");
    let examples = plugin.info().examples.clone();
    c.put("pbx-reports", &examples[0].key, &examples[0].input, None).expect("old");
    wall.set(t0 + max_age - DAY);
    c.put("pbx-reports", &examples[1].key, &examples[1].input, None).expect("younger");
    server.block_on(server.node().maintain_now());
    assert_eq!(c.status().expect("status").components[0].records, 2, "nothing is old enough yet");
    wall.set(t0 + max_age + DAY);
    server.block_on(server.node().maintain_now());
    assert_eq!(c.get("pbx-reports", &examples[0].key).expect_err("purged").code(), Some("not_found"));
    assert!(c.get("pbx-reports", &examples[1].key).is_ok());
    let s = c.status().expect("status");
    assert_eq!((s.components[0].records, s.components[0].live), (1, 1));
    assert!(c.metrics().expect("metrics").contains("tandem_purged_total{node=\"a\",component=\"pbx-reports\"} 1"));
}

/// The store's indexes by age (`records_age_HEX`).
fn age_indexes(store: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(store).expect("store");
    let mut q = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'records_age_%'").expect("query");
    q.query_map([], |r| r.get(0)).expect("rows").map(|n| n.expect("name")).collect()
}

#[test]
fn a_component_whose_plugin_has_no_retention_or_is_not_configured_loses_its_index_by_age_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_node_dir(dir.path(), "a", &["trunks"], "");
    let server = start_node(dir.path());
    let store = server.node().config().store_path();
    drop(server);
    // Left by a plugin version that had retention, and by a component no longer configured.
    let conn = rusqlite::Connection::open(&store).expect("store");
    for c in ["trunks", "old-reports"] {
        let hex: String = c.bytes().map(|b| format!("{b:02x}")).collect();
        conn.execute_batch(&format!("CREATE INDEX records_age_{hex} ON records(stamp_p, stamp_l, stamp_n) WHERE component = '{c}'"))
            .expect("index");
    }
    drop(conn);
    assert_eq!(age_indexes(&store).len(), 2);
    let _server = start_node(dir.path());
    assert_eq!(age_indexes(&store), Vec::<String>::new());
}

#[test]
fn validate_lookups_see_memory_the_store_and_the_batchs_earlier_writes() {
    for preload in ["all", "none"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let extra = format!("[components.requirements]\nplugin = \"plugins/requirements.wasm\"\npreload = \"{preload}\"\n");
        write_node_dir(dir.path(), "a", &["requirements"], &extra);
        let server = start_node(dir.path());
        let c = client(&server);
        let e = c.put("requirements", "b", r#"{"title": "B", "depends_on": ["a"]}"#, None).expect_err("a does not exist yet");
        let tandem::node::client::ClientError::Api { body, .. } = &e else { panic!("{e}") };
        assert!(body.error.violations.as_ref().is_some_and(|v| v.iter().any(|v| v.code == "reference")), "{preload}: {e}");
        c.put("requirements", "a", r#"{"title": "A"}"#, None).expect("a");
        // With preload = none the lookup reads `a` from the store and decodes it with the plugin.
        c.put("requirements", "b", r#"{"title": "B", "depends_on": ["a"]}"#, None).unwrap_or_else(|e| panic!("{preload}: {e}"));
        // In one batch, a later write sees an earlier one.
        let writes = vec![
            ("c".to_owned(), Op::Put(r#"{"title": "C"}"#.to_owned())),
            ("d".to_owned(), Op::Put(r#"{"title": "D", "depends_on": ["c", "b"]}"#.to_owned())),
        ];
        let results = server.block_on(server.node().write_many("requirements", writes)).expect("batch");
        assert!(results.iter().all(Result::is_ok), "{preload}: {results:?}");
        c.delete("requirements", "c", None).expect("delete");
        let e = c.put("requirements", "e", r#"{"title": "E", "depends_on": ["c"]}"#, None).expect_err("c is deleted");
        assert_eq!(e.code(), Some("invalid"), "{preload}");
    }
}
