//! Cold backup around a real node: the backup thread of `tandem run` takes the scheduled
//! snapshot and archives the change feed; `tandem restore` brings the data up in a second
//! node's directory (a cold secondary), to the latest state and to a point in time; `tandem
//! snapshot list|verify` read the target.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use tandem::backup::{archive, snapshot};
use tandem::node::store;
use tandem_tests::{NodeProcess, tandem_bin, wait_until, write_node_dir};

fn tandem(args: &[&str]) -> Output {
    std::process::Command::new(tandem_bin()).args(args).output().expect("run tandem")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn digests(path: &Path) -> BTreeMap<String, (u64, String)> {
    let conn = store::open_for_inspection(path).expect("open");
    let mut out = BTreeMap::new();
    for c in store::components(&conn).expect("components") {
        let (n, _) = store::counts(&conn, &c).expect("counts");
        out.insert(c.clone(), (n, store::digest(&conn, &c).expect("digest")));
    }
    out
}

fn last_seq(path: &Path) -> u64 {
    let conn = store::open_for_inspection(path).expect("open");
    conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM records", [], |r| r.get::<_, i64>(0))
        .map(|v| u64::try_from(v).unwrap_or(0))
        .expect("seq")
}

#[test]
fn backup_node_archives_snapshots_and_a_cold_secondary_comes_up_from_them() {
    let root = tempfile::tempdir().expect("tempdir");
    let a = root.path().join("a");
    let b = root.path().join("b");
    let target = root.path().join("backup");
    let extra = format!(
        "\n[backup]\ntarget = {:?}\nsegment_age = \"200ms\"\n\n[[backup.schedule]]\nevery = \"1h\"\n\n[backup.retention]\nkeep_last = 2\nkeep_daily_days = 0\n",
        target.display().to_string()
    );
    write_node_dir(&a, "a", &["trunks"], &extra);
    write_node_dir(&b, "b", &["trunks"], "");
    let node = NodeProcess::start(&a);
    let client = node.client();
    // The schedule has never run: a snapshot is due at once.
    wait_until("the first scheduled snapshot", Duration::from_secs(30), || !snapshot::list(&target).is_empty());
    for i in 0..40 {
        client.put("trunks", &format!("t{i}"), &format!(r#"{{"host": "h{i}.example"}}"#), None).expect("put");
    }
    std::thread::sleep(Duration::from_millis(20));
    let t1 = tandem::backup::time::now_ms();
    let at_t1 = digests(&a.join("store.db"));
    std::thread::sleep(Duration::from_millis(20));
    for i in 0..20 {
        client.put("trunks", &format!("t{i}"), &format!(r#"{{"host": "changed{i}.example"}}"#), None).expect("put");
    }
    client.delete("trunks", "t39", None).expect("delete");
    let want = last_seq(&a.join("store.db"));
    wait_until("the archive to reach the last write", Duration::from_secs(30), || {
        archive::list(&target).iter().filter_map(|(_, m)| m.as_ref().ok()).any(|m| m.last_seq >= want)
    });
    let status = node.terminate();
    assert!(status.success(), "{status}");
    let source = digests(&a.join("store.db"));

    let (ad, bd, td) = (a.display().to_string(), b.display().to_string(), target.display().to_string());
    // The node's scheduled snapshot names the plugin that served each component.
    let (_, scheduled) = snapshot::list(&target).into_iter().next().expect("a snapshot");
    let scheduled = scheduled.expect("readable");
    let p = scheduled.plugins.iter().find(|p| p.component == "trunks").expect("trunks plugin");
    assert!(p.version.is_some() && p.digest.as_deref().is_some_and(|d| d.starts_with("sha256:")), "{p:?}");
    assert!(!scheduled.engine_version.is_empty());
    // So does one taken by hand, and its manifest is JSON on request.
    let created = tandem(&["snapshot", "create", "--dir", &ad, "--json"]);
    assert!(created.status.success(), "{}", text(&created));
    let m: serde_json::Value = serde_json::from_slice(&created.stdout).expect("manifest JSON");
    assert_eq!(m["plugins"][0]["component"], "trunks", "{m}");
    assert!(m["plugins"][0]["version"].is_string(), "{m}");
    assert_eq!(m["components"][0]["digest"].as_str(), source.get("trunks").map(|(_, d)| d.as_str()), "{m}");
    let list = tandem(&["snapshot", "list", "--dir", &ad]);
    assert!(list.status.success() && text(&list).contains("all") && text(&list).contains("segments"), "{}", text(&list));
    let verify = tandem(&["snapshot", "verify", "--target", &td]);
    assert!(verify.status.success(), "{}", text(&verify));

    // The cold secondary: restore everything, start it, read the data back.
    let out = tandem(&["restore", "--dir", &bd, "--target", &td]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(digests(&b.join("store.db")), source);
    {
        let secondary = NodeProcess::start(&b);
        let doc = secondary.client().get("trunks", "t3").expect("restored record");
        assert!(serde_json::to_string(&doc).expect("json").contains("changed3.example"), "{doc:?}");
        assert!(secondary.terminate().success());
    }
    // Point in time: back to t1, over the existing store (which is kept).
    let out = tandem(&["restore", "--dir", &bd, "--target", &td, "--to", &format!("@{t1}")]);
    assert!(!out.status.success() && text(&out).contains("--force"), "{}", text(&out));
    let out = tandem(&["restore", "--dir", &bd, "--target", &td, "--to", &format!("@{t1}"), "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("pre-restore"), "{}", text(&out));
    assert_eq!(digests(&b.join("store.db")), at_t1);

    // A damaged segment: verify names it and fails.
    let (seg, _) = archive::list(&target).into_iter().last().expect("a segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&seg, bytes).expect("write");
    let verify = tandem(&["snapshot", "verify", "--target", &td]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    assert!(text(&verify).contains(&seg.display().to_string()) && text(&verify).contains("truncated"), "{}", text(&verify));
}
