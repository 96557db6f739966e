//! The node's HTTP API: round trips for every bundled component, refusals with their codes,
//! authentication, listing, idempotency, status and metrics.

use std::collections::BTreeMap;
use std::sync::Arc;

use tandem::plugin::{NoLookup, Op, Stamp};
use tandem_tests::{client, start_node, write_node_dir};

/// (component, key, input) of every example of every bundled plugin.
fn all_examples(server: &tandem::node::Server) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (name, _) in tandem::bundled::BUNDLED {
        let plugin = server.node().registry().get(name).unwrap_or_else(|| panic!("{name} is not loaded"));
        assert!(!plugin.info().examples.is_empty(), "bundled plugin {name} has no examples");
        for ex in &plugin.info().examples {
            out.push(((*name).to_owned(), ex.key.clone(), ex.input.clone()));
        }
    }
    out
}

/// What the plugin itself makes of an input: serialize, then deserialize.
fn expected_document(server: &tandem::node::Server, component: &str, key: &str, input: &str) -> serde_json::Value {
    let plugin = server.node().registry().get(component).expect("plugin");
    let mut s = plugin.session(Arc::new(NoLookup)).expect("session");
    let stored = s.serialize(key, &Op::Put(input.to_owned()), None, &Stamp::new(1, 0, "x")).expect("call").expect("serialize");
    let doc = s.deserialize(key, &stored.data).expect("call").expect("deserialize").expect("live");
    serde_json::from_str(&doc).expect("json")
}

#[test]
fn every_bundled_component_round_trips_its_examples_through_the_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_node_dir(dir.path(), "a", &[], "");
    let server = start_node(dir.path());
    let c = client(&server);
    let examples = all_examples(&server);
    assert!(examples.len() >= tandem::bundled::BUNDLED.len());

    // Examples may refer to each other (a route names a trunk): write in passes until all are in.
    let mut pending = examples.clone();
    let mut written = Vec::new();
    let mut last_refusals = Vec::new();
    for _pass in 0..5 {
        let mut refused = Vec::new();
        for (component, key, input) in pending {
            match c.put(&component, &key, &input, None) {
                Ok(ack) => {
                    assert_eq!((ack.component.as_str(), ack.key.as_str()), (component.as_str(), key.as_str()));
                    assert!(ack.changed && !ack.replayed && !ack.deleted && ack.seq > 0);
                    assert_eq!(ack.stamp.node, "a");
                    written.push((component, key, input));
                }
                Err(e) if e.status() == Some(422) => refused.push((component, key, input, e.to_string())),
                Err(e) => panic!("{component}/{key}: {e}"),
            }
        }
        pending = refused.iter().map(|(c, k, i, _)| (c.clone(), k.clone(), i.clone())).collect();
        last_refusals = refused;
        if pending.is_empty() {
            break;
        }
    }
    assert!(pending.is_empty(), "examples never accepted: {last_refusals:#?}");

    let mut per_component: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (component, key, input) in &written {
        let r = c.get(component, key).unwrap_or_else(|e| panic!("get {component}/{key}: {e}"));
        assert_eq!(r.value, expected_document(&server, component, key, input), "{component}/{key}");
        assert_eq!(r.origin, "a");
        assert!(r.seq > 0);
        per_component.entry(component.clone()).or_default().push(key.clone());
    }
    let status = c.status().expect("status");
    for (component, keys) in &per_component {
        let mut listed: Vec<String> = c.list_all(component, "").expect("list").into_iter().map(|r| r.key).collect();
        let mut keys = keys.clone();
        keys.sort();
        keys.dedup();
        listed.sort();
        assert_eq!(listed, keys, "{component}");
        let s = status.components.iter().find(|s| &s.name == component).expect("component in status");
        assert_eq!(s.live, keys.len() as u64, "{component}");
    }

    // Deletes: settings go away; append-only reports refuse them with a violation.
    for (component, key, _) in &written {
        match c.delete(component, key, None) {
            Ok(ack) => {
                assert!(ack.deleted);
                let e = c.get(component, key).expect_err("deleted");
                assert_eq!(e.code(), Some("not_found"));
            }
            Err(e) => {
                assert_eq!(e.code(), Some("invalid"), "{component}/{key}: {e}");
                assert!(c.get(component, key).is_ok(), "a refused delete changes nothing");
            }
        }
    }
}

#[test]
fn invalid_writes_are_refused_with_their_violations_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_node_dir(dir.path(), "a", &["trunks"], "");
    let server = start_node(dir.path());
    let c = client(&server);
    let before = server.node().last_seq();

    let e = c.put("trunks", "bad", r#"{"host": "sip..example", "port": 0}"#, None).expect_err("invalid");
    assert_eq!(e.status(), Some(422));
    let tandem::node::client::ClientError::Api { body, .. } = &e else { panic!("{e}") };
    let violations = body.error.violations.clone().expect("violations");
    let fields: Vec<(&str, &str)> = violations.iter().map(|v| (v.field.as_str(), v.code.as_str())).collect();
    assert!(fields.contains(&("/port", "range")), "{fields:?}");
    assert!(fields.contains(&("/host", "format")), "{fields:?}");
    assert_eq!(c.get("trunks", "bad").expect_err("not written").code(), Some("not_found"));

    let e = c.put("trunks", "bad", r#"{"host": "a.example", "colour": "red"}"#, None).expect_err("unknown field");
    assert_eq!((e.status(), e.code()), (Some(400), Some("malformed")));
    let r = c.raw("PUT", "/v1/components/trunks/records/bad", Some(b"{not json"), &[], None).expect("answer");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("\"malformed\""), "{}", r.body);
    let e = c.put("no-such-component", "k", "{}", None).expect_err("unknown component");
    assert_eq!((e.status(), e.code()), (Some(404), Some("unknown_component")));
    let e = c.delete("trunks", "never-written", None).expect_err("nothing to delete");
    assert_eq!((e.status(), e.code()), (Some(404), Some("not_found")));

    assert_eq!(server.node().last_seq(), before, "refused writes are not in the change feed");
    let status = c.status().expect("status");
    assert_eq!(status.components[0].records, 0);
    assert!(status.components[0].refusals >= 3);
}

#[test]
fn the_token_is_required_everywhere_but_healthz_and_errors_are_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_node_dir(dir.path(), "a", &["trunks"], "");
    let text = std::fs::read_to_string(&file).expect("read").replace("[api]\n", "[api]\nmax_body_bytes = 4096\n");
    std::fs::write(&file, text).expect("write");
    let server = start_node(dir.path());
    let c = client(&server);
    for (method, path) in [
        ("GET", "/v1/status"),
        ("GET", "/metrics"),
        ("GET", "/v1/components"),
        ("GET", "/v1/components/trunks/records"),
        ("GET", "/v1/components/trunks/records/k"),
        ("PUT", "/v1/components/trunks/records/k"),
        ("DELETE", "/v1/components/trunks/records/k"),
        ("GET", "/v1/conflicts"),
    ] {
        let body = (method == "PUT").then_some(&b"{\"host\": \"a.example\"}"[..]);
        let none = c.raw(method, path, body, &[], Some("")).expect("answer");
        assert_eq!(none.status, 401, "{method} {path} without a token");
        assert!(none.body.contains("\"unauthorized\""), "{}", none.body);
        let wrong = c.raw(method, path, body, &[], Some("wrong-token")).expect("answer");
        assert_eq!(wrong.status, 401, "{method} {path} with a wrong token");
    }
    assert_eq!(c.get("trunks", "k").expect_err("never written").code(), Some("not_found"), "the real token works");
    let (code, health) = c.health().expect("healthz needs no token");
    assert_eq!(code, 200);
    assert!(health.reads && health.writes);

    let big = format!("{{\"host\": \"a.example\", \"pad\": \"{}\"}}", "x".repeat(8192));
    let r = c.raw("PUT", "/v1/components/trunks/records/k", Some(big.as_bytes()), &[], None).expect("answer");
    assert_eq!(r.status, 413);
    assert!(r.body.contains("\"body_too_large\""), "{}", r.body);
    let r = c.raw("GET", "/v1/nothing-here", None, &[], None).expect("answer");
    assert_eq!(r.status, 404);
    assert!(r.body.contains("\"no_route\""), "{}", r.body);
    let r = c.raw("POST", "/v1/components/trunks/records/k", Some(b"{}"), &[], None).expect("answer");
    assert_eq!(r.status, 405);
    assert_eq!(
        server.node().metrics().lines().find(|l| l.starts_with("tandem_unauthorized_total")).map(|l| l.ends_with(" 16")),
        Some(true)
    );
}

#[test]
fn listing_pages_through_a_prefix_in_key_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_node_dir(dir.path(), "a", &["trunks"], "");
    let server = start_node(dir.path());
    let c = client(&server);
    for i in 0..25 {
        c.put("trunks", &format!("site-{i:02}"), r#"{"host": "a.example"}"#, None).expect("put");
    }
    c.put("trunks", "other", r#"{"host": "a.example"}"#, None).expect("put");
    c.delete("trunks", "site-03", None).expect("delete");
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = c.list("trunks", "site-", after.as_deref(), 10).expect("page");
        assert!(page.records.len() <= 10);
        seen.extend(page.records.iter().map(|r| r.key.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).filter(|i| *i != 3).map(|i| format!("site-{i:02}")).collect();
    assert_eq!(seen, expected);
    let page = c.list("trunks", "", None, 1000).expect("all");
    assert_eq!(page.records.len(), 25);
    assert_eq!(page.next, None);
}

#[test]
fn idempotency_keys_apply_a_write_once_even_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_node_dir(dir.path(), "a", &["trunks"], "");
    let first = {
        let server = start_node(dir.path());
        let c = client(&server);
        let first = c.put("trunks", "k", r#"{"host": "a.example"}"#, Some("req-1")).expect("put");
        assert!(!first.replayed);
        // The same request again: the remembered answer, nothing applied.
        let again = c
            .raw("PUT", "/v1/components/trunks/records/k", Some(br#"{"host": "a.example"}"#), &[("idempotency-key", "req-1")], None)
            .expect("answer");
        assert_eq!(again.status, 200);
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        let again: tandem::node::types::WriteAck = serde_json::from_str(&again.body).expect("ack");
        assert_eq!((again.seq, &again.stamp), (first.seq, &first.stamp));
        assert!(again.replayed);
        // A later write, then a retry of the first request: still not applied again.
        c.put("trunks", "k", r#"{"host": "b.example"}"#, None).expect("put");
        let retry = c.put("trunks", "k", r#"{"host": "a.example"}"#, Some("req-1")).expect("retry");
        assert!(retry.replayed);
        assert_eq!(c.get("trunks", "k").expect("get").value["host"], "b.example");
        // The same key for another request is refused.
        let e = c.put("trunks", "k", r#"{"host": "c.example"}"#, Some("req-1")).expect_err("reused");
        assert_eq!((e.status(), e.code()), (Some(409), Some("idempotency_key_reused")));
        server.shutdown();
        first
    };
    let server = start_node(dir.path());
    let c = client(&server);
    let retry = c.put("trunks", "k", r#"{"host": "a.example"}"#, Some("req-1")).expect("retry after restart");
    assert!(retry.replayed);
    assert_eq!(retry.seq, first.seq);
    assert_eq!(c.get("trunks", "k").expect("get").value["host"], "b.example");
}

#[test]
fn writing_the_same_value_again_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_node_dir(dir.path(), "a", &["trunks"], "");
    let server = start_node(dir.path());
    let c = client(&server);
    let a = c.put("trunks", "k", r#"{"host": "a.example"}"#, None).expect("put");
    let b = c.put("trunks", "k", r#"{"host": "a.example"}"#, None).expect("put");
    assert!(!b.changed);
    assert_eq!((b.seq, &b.stamp), (a.seq, &a.stamp));
    assert_eq!(server.node().last_seq(), a.seq);
}

#[test]
fn status_and_metrics_describe_the_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_node_dir(dir.path(), "a", &["trunks", "pbx-reports"], "[[peer]]\nname = \"b\"\naddress = \"10.0.0.2:7401\"\nprofile = \"geo\"\n");
    let server = start_node(dir.path());
    let c = client(&server);
    c.put("trunks", "k", r#"{"host": "a.example"}"#, None).expect("put");
    c.get("trunks", "k").expect("get");
    let _ = c.get("trunks", "missing");
    let _ = c.put("trunks", "bad", r#"{"host": "a.example", "port": 0}"#, None);
    let s = c.status().expect("status");
    assert_eq!(s.node.name, "a");
    assert!(s.node.reads && s.node.writes);
    assert_eq!(s.store.last_seq, 1);
    assert!(!s.store.read_only);
    assert_eq!(s.peers.len(), 1);
    assert_eq!(s.peers[0].profile, "geo");
    let t = s.components.iter().find(|c| c.name == "trunks").expect("trunks");
    assert_eq!((t.records, t.live, t.in_memory, t.writes, t.reads), (1, 1, 1, 1, 1));
    assert!(t.memory_bytes > 0);
    assert!(t.plugin.digest.starts_with("sha256:"));
    assert!(t.plugin.calls >= 3, "serialize, validate, deserialize: {}", t.plugin.calls);
    assert!(t.load_ms >= 0.0);
    let m = c.metrics().expect("metrics");
    for line in [
        "tandem_writes_total{node=\"a\",component=\"trunks\"} 1",
        "tandem_reads_total{node=\"a\",component=\"trunks\"} 1",
        "tandem_read_misses_total{node=\"a\",component=\"trunks\"} 1",
        "tandem_refusals_total{node=\"a\",component=\"trunks\",code=\"invalid\"} 1",
        "tandem_records{node=\"a\",component=\"trunks\"} 1",
        "tandem_last_seq{node=\"a\"} 1",
        "tandem_read_only{node=\"a\"} 0",
    ] {
        assert!(m.lines().any(|l| l == line), "missing {line:?} in:\n{m}");
    }
    for family in [
        "tandem_plugin_fuel_total",
        "tandem_plugin_call_seconds_bucket",
        "tandem_write_seconds_count",
        "tandem_commit_seconds_sum",
        "tandem_memory_bytes",
    ] {
        assert!(m.contains(family), "missing {family}");
    }
}

#[test]
fn a_misbehaving_plugin_is_contained_and_quarantined_while_other_components_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hostile = tandem_tests::wasm_path("tandem_test_hostile");
    let extra = format!(
        "[components.hostile]\nplugin = {}\n[components.hostile.limits]\nquarantine_after = 3\nfuel = 50000000\n",
        tandem::node::config::toml_str(&hostile.display().to_string())
    );
    write_node_dir(dir.path(), "a", &["trunks"], &extra);
    let server = start_node(dir.path());
    let c = client(&server);
    c.put("hostile", "ok", r#"{"v": 1}"#, None).expect("a well-behaved call");
    let e = c.put("hostile", "loop", r#"{"v": 1}"#, None).expect_err("runaway");
    assert_eq!((e.status(), e.code()), (Some(500), Some("plugin_out_of_fuel")), "{e}");
    c.put("trunks", "k", r#"{"host": "a.example"}"#, None).expect("other components are unaffected");
    let e = c.put("hostile", "trap", r#"{"v": 1}"#, None).expect_err("trap");
    assert_eq!(e.code(), Some("plugin_trap"), "{e}");
    let e = c.put("hostile", "memory", r#"{"v": 1}"#, None).expect_err("memory");
    assert_eq!(e.code(), Some("plugin_out_of_memory"), "{e}");
    // Three failures in a row: quarantined; even good calls are refused with 503.
    let e = c.put("hostile", "ok2", r#"{"v": 2}"#, None).expect_err("quarantined");
    assert_eq!((e.status(), e.code()), (Some(503), Some("plugin_quarantined")), "{e}");
    assert_eq!(c.get("hostile", "ok").expect("reads come from memory").value["v"], 1);
    let s = c.status().expect("status");
    let h = s.components.iter().find(|x| x.name == "hostile").expect("hostile");
    assert!(h.plugin.quarantined && h.plugin.failures >= 3);
    assert!(c.metrics().expect("metrics").contains("tandem_plugin_quarantined{node=\"a\",component=\"hostile\"} 1"));
    c.put("trunks", "k2", r#"{"host": "b.example"}"#, None).expect("the node serves on");
    assert_eq!(c.list_all("hostile", "").expect("list").len(), 1);
}
