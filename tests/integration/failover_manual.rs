//! Planned switch-over between real nodes on loopback: `tandem demote` on the primary, then
//! `tandem promote` on a standby, under a small write load; epochs after a promotion; fencing of
//! warm batches from an older epoch; `/healthz` per role, and the keepalived check script.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_tests::cluster::{NodeDef, free_port, write_cluster_node};
use tandem_tests::{client, load_config, start_node, tandem_bin, wait_until};

const WAIT: Duration = Duration::from_secs(30);

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn trunk(i: usize) -> (String, String) {
    (format!("trunk-{i:05}"), format!("{{\"host\": \"h{i}.carrier.example\", \"transport\": \"udp\", \"max_channels\": 10}}"))
}

fn warm_pair(root: &Path, ap: u16, bp: u16) -> (std::path::PathBuf, std::path::PathBuf) {
    let cluster = "mode = \"warm\"\nprimary = \"a\"";
    let a = write_cluster_node(
        root,
        &NodeDef { name: "a", port: ap, peers: vec![("b".into(), addr(bp))], cluster, extra: "" },
        &["trunks"],
        None,
    );
    let b = write_cluster_node(
        root,
        &NodeDef { name: "b", port: bp, peers: vec![("a".into(), addr(ap))], cluster, extra: "" },
        &["trunks"],
        Some(&a),
    );
    (a, b)
}

/// A warm pair whose node "a" is played by the test, with a's credentials.
struct Played {
    b: tandem::node::Server,
    creds: tandem::peer::tls::Credentials,
    a_port: u16,
    b_port: u16,
}

fn b_with_a_played_by_the_test(root: &Path) -> Played {
    let (a_port, b_port) = (free_port(), free_port());
    let (a_dir, b_dir) = warm_pair(root, a_port, b_port);
    let creds = tandem::peer::tls::load(&a_dir.join("creds/cluster-ca.pem"), &a_dir.join("creds/node.pem"), &a_dir.join("creds/node.key"))
        .expect("creds");
    Played { b: start_node(&b_dir), creds, a_port, b_port }
}

/// Dials b as an "a" that believes it is the primary of epoch 1: the link after the hellos,
/// and b's hello.
async fn dial_as_stale_a(
    b_port: u16,
    creds: &tandem::peer::tls::Credentials,
) -> (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static, tandem::peer::proto::Hello) {
    use tandem::peer::proto::{Hello, Msg};
    let mut link = tandem::peer::dial(&addr(b_port), creds, tandem::peer::PROTOCOL_VERSION, Duration::from_secs(10)).await.expect("dial b");
    let ours = Hello { node: "a".into(), epoch: 1, api: None, primary: Some("a".into()), last_seq: 0, components: Vec::new() };
    tandem::peer::send(&mut link, &Msg::Hello(ours), false).await.expect("send hello");
    let Msg::Hello(theirs) = tandem::peer::recv(&mut link).await.expect("hello") else { panic!("expected hello") };
    (link, theirs)
}

/// `tandem VERB --api ADDR --token T ARGS...`: (exit code, stdout).
fn cli(server: &tandem::node::Server, dir: &Path, args: &[&str]) -> (i32, String) {
    let token = load_config(dir).raw.api.token;
    let out = std::process::Command::new(tandem_bin())
        .args(args)
        .args(["--api", &server.api_addr().to_string(), "--token", &token])
        .output()
        .expect("run tandem");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
}

fn healthz(c: &tandem::node::client::Client, need: &str) -> (u16, serde_json::Value) {
    let r = c.raw("GET", &format!("/healthz?need={need}"), None, &[], Some("")).expect("healthz");
    (r.status, serde_json::from_str(&r.body).expect("healthz json"))
}

#[test]
fn failover_planned_switch_over_loses_no_acknowledged_write_and_fences_the_old_primary() {
    let root = tempfile::tempdir().expect("tempdir");
    let (ap, bp) = (free_port(), free_port());
    let (a_dir, b_dir) = warm_pair(root.path(), ap, bp);
    let a = start_node(&a_dir);
    let b = start_node(&b_dir);
    let (ca, cb) = (client(&a), client(&b));
    let epoch_before = a.node().epoch();
    assert!(epoch_before >= 1, "a primary's start begins an epoch");
    wait_until("b follows a", WAIT, || {
        b.replication().expect("r").status().peers.iter().any(|p| p.name == "a" && p.following && p.components.contains(&"trunks".into()))
    });

    // Health per role before the switch-over.
    let (code, h) = healthz(&ca, "writes");
    assert_eq!((code, h["role"].as_str(), h["writes"].as_bool()), (200, Some("primary"), Some(true)), "{h}");
    let (code, h) = healthz(&cb, "writes");
    assert_eq!((code, h["role"].as_str(), h["writes"].as_bool()), (503, Some("standby"), Some(false)), "{h}");
    let (code, h) = healthz(&cb, "reads");
    assert_eq!((code, h["reads"].as_bool()), (200, Some(true)), "{h}");
    assert_eq!(h["epoch"].as_u64(), Some(b.node().epoch()));

    // A small write load on a: every acknowledged key is recorded.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, c) = (acked.clone(), stop.clone(), client(&a));
        std::thread::spawn(move || {
            let mut refused = 0usize;
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let (k, v) = trunk(i);
                i += 1;
                match c.put("trunks", &k, &v, None) {
                    Ok(_) => acked.lock().expect("lock").push(k),
                    Err(e) => {
                        assert_eq!(e.code(), Some("not_primary"), "{e}");
                        refused += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            refused
        })
    };
    wait_until("some writes acknowledged", WAIT, || acked.lock().expect("lock").len() >= 50);

    // Demote a (CLI): warm writes close, and b has acknowledged everything.
    let (code, out) = cli(&a, &a_dir, &["demote", "--json", "--timeout", "20"]);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        report["caught_up"].as_bool(),
        Some(true),
        "{report}\n{:?}\n{:?}",
        a.replication().expect("r").status().peers,
        b.replication().expect("r").status().peers
    );
    let (code, h) = healthz(&ca, "writes");
    assert_eq!((code, h["role"].as_str()), (503, Some("demoted")), "{h}");
    let err = ca.put("trunks", "after-demote", &trunk(0).1, None).expect_err("a demoted primary refuses writes");
    assert_eq!(err.code(), Some("not_primary"), "{err}");

    // Promote b (CLI): a new epoch, higher than any before.
    let (code, out) = cli(&b, &b_dir, &["promote"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("b is the warm primary"), "{out}");
    stop.store(true, Ordering::SeqCst);
    let refused = writer.join().expect("writer");
    assert!(refused > 0, "the writer saw the refusals");
    let new_epoch = b.node().epoch();
    assert!(new_epoch > epoch_before, "{new_epoch} > {epoch_before}");

    // No acknowledged write is lost: b has every one.
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 50);
    for k in &acked {
        cb.get("trunks", k).unwrap_or_else(|e| panic!("acknowledged {k} is missing on the new primary: {e}"));
    }
    let (code, h) = healthz(&cb, "writes");
    assert_eq!((code, h["role"].as_str(), h["epoch"].as_u64()), (200, Some("primary"), Some(new_epoch)), "{h}");

    // The old primary learns the new one (and its epoch) and refuses writes naming it.
    wait_until("a follows b in the new epoch", WAIT, || a.node().epoch() == new_epoch);
    wait_until("a names b", WAIT, || {
        ca.put("trunks", "after-promote", &trunk(1).1, None)
            .err()
            .is_some_and(|e| e.code() == Some("not_primary") && e.to_string().contains("primary, b"))
    });
    let (code, h) = healthz(&ca, "writes");
    assert_eq!((code, h["role"].as_str(), h["epoch"].as_u64()), (503, Some("standby"), Some(new_epoch)), "{h}");
    // Writes on b flow to a.
    cb.put("trunks", "on-b", &trunk(2).1, None).expect("the new primary takes writes");
    wait_until("a has b's write", WAIT, || ca.get("trunks", "on-b").is_ok());

    // Status says the role, the epoch, and why automatic failover is off.
    let st = cb.status().expect("status");
    let r = st.replication.expect("replication status");
    assert_eq!((r["role"].as_str(), r["epoch"].as_u64()), (Some("primary"), Some(new_epoch)), "{r}");
    let note = r["automatic_failover"].as_str().unwrap_or_default();
    assert!(note.contains("automatic failover is off") && note.contains("tandem promote") && note.contains("witness"), "{note}");
    let (code, out) = cli(&a, &a_dir, &["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warm role standby") && out.contains("automatic failover is off"), "{out}");

    // The role is durable: a restarted a is still a standby of b.
    drop(a);
    let a = start_node(&a_dir);
    let ca = client(&a);
    let err = ca.put("trunks", "after-restart", &trunk(3).1, None).expect_err("still a standby");
    assert!(err.to_string().contains("primary, b"), "{err}");
    assert_eq!(a.node().epoch(), new_epoch);
}

#[test]
fn failover_warm_batches_of_an_older_epoch_are_refused() {
    use tandem::peer::proto::{Batch, Hello, Msg, WireChange};
    let root = tempfile::tempdir().expect("tempdir");
    // A stale "a" that still believes it is the primary of epoch 1.
    let Played { b, creds, a_port: ap, .. } = b_with_a_played_by_the_test(root.path());
    // b has been through a promotion since: its epoch is 5.
    assert_eq!(b.block_on(b.node().set_epoch(5)).expect("epoch"), 5);
    let listener = b.block_on(tokio::net::TcpListener::bind(addr(ap))).expect("bind a's port");
    b.block_on(async {
        let (tcp, _) = tokio::time::timeout(WAIT, listener.accept()).await.expect("b dials a").expect("accept");
        let mut link = tandem::peer::accept(tcp, &creds, "a", Duration::from_secs(10)).await.expect("tls");
        let Msg::Hello(theirs) = tandem::peer::recv(&mut link).await.expect("hello") else { panic!("expected hello") };
        assert_eq!(theirs.epoch, 5);
        let hello = Hello { node: "a".into(), epoch: 1, api: None, primary: Some("a".into()), last_seq: 1, components: theirs.components };
        tandem::peer::send(&mut link, &Msg::Hello(hello), false).await.expect("send hello");
        let Msg::Subscribe { components, .. } = tandem::peer::recv(&mut link).await.expect("subscribe") else {
            panic!("expected subscribe")
        };
        assert!(components.contains(&"trunks".to_owned()), "{components:?}");
        let change = WireChange {
            seq: 1,
            component: "trunks".into(),
            key: "stale".into(),
            data: b"{}".to_vec(),
            tombstone: false,
            physical: 1,
            logical: 0,
            stamp_node: "a".into(),
            origin: "a".into(),
            doc: None,
        };
        tandem::peer::send(&mut link, &Msg::Batch(Batch { epoch: 1, up_to: 1, high: 1, changes: vec![change] }), false)
            .await
            .expect("batch");
        // b refuses the batch and closes the link without acknowledging it.
        loop {
            match tokio::time::timeout(Duration::from_secs(10), tandem::peer::recv(&mut link)).await {
                Ok(Ok(Msg::Heartbeat { .. })) => continue,
                Ok(Ok(Msg::Ack { seq, .. })) => panic!("b acknowledged a fenced batch up to {seq}"),
                Ok(Ok(other)) => panic!("unexpected {other:?}"),
                Ok(Err(_)) => break,
                Err(_) => panic!("b did not close the link"),
            }
        }
    });
    let st = b.replication().expect("r").status();
    assert!(st.alarms.iter().any(|a| a.contains("epoch 1 refused") && a.contains("fenced")), "{:?}", st.alarms);
    assert!(client(&b).get("trunks", "stale").is_err(), "nothing of the fenced batch was applied");
    assert_eq!(b.node().epoch(), 5);
}

#[test]
fn failover_healthz_check_script_answers_per_role() {
    let root = tempfile::tempdir().expect("tempdir");
    let (ap, bp) = (free_port(), free_port());
    let (a_dir, b_dir) = warm_pair(root.path(), ap, bp);
    let a = start_node(&a_dir);
    let b = start_node(&b_dir);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tandem-healthz-check.sh");
    let run = |need: &str, s: &tandem::node::Server| {
        std::process::Command::new("bash").arg(&script).args([need, &s.api_addr().to_string()]).status().expect("bash").code()
    };
    assert_eq!(run("writes", &a), Some(0));
    assert_eq!(run("reads", &a), Some(0));
    assert_eq!(run("writes", &b), Some(1));
    assert_eq!(run("reads", &b), Some(0));
    // No node there: a failure, not a hang.
    let nobody = std::process::Command::new("bash").arg(&script).args(["writes", &addr(free_port())]).status().expect("bash").code();
    assert_eq!(nobody, Some(1));
    // Bad request to the script itself.
    assert_eq!(run("everything", &a), Some(2));
    // Promotion without a demotion of a: b takes writes at once, a steps down when it hears of b.
    b.block_on(b.node().promote()).expect("promote b");
    assert_eq!(run("writes", &b), Some(0));
    wait_until("a steps down", WAIT, || run("writes", &a) == Some(1));
}

#[test]
fn failover_a_promotion_during_a_peers_handshake_still_resets_its_link() {
    // A follower learns of a newer primary at a handshake. A promotion that lands after this
    // node's hello went out (naming the old primary) but before the stream starts must still
    // reset the link, or the peer keeps following on what that hello said and never hears of it.
    use tandem::peer::proto::Msg;
    let root = tempfile::tempdir().expect("tempdir");
    // Nothing listens on a's port: b's own links to a keep failing and only this one is up.
    let Played { b, creds, b_port: bp, .. } = b_with_a_played_by_the_test(root.path());
    b.block_on(async {
        let (mut link, theirs) = dial_as_stale_a(bp, &creds).await;
        assert_eq!(theirs.primary.as_deref(), Some("a"), "b follows a when it answers");
        // b is promoted between its hello and the subscription.
        b.node().promote().await.expect("promote b");
        tandem::peer::send(&mut link, &Msg::Subscribe { after_seq: 0, components: vec!["trunks".into()] }, false).await.expect("subscribe");
        // The link is reset. This side keeps it alive meanwhile, as a follower does, so that
        // only a reset ends it within the deadline.
        let (mut rd, mut wr) = tokio::io::split(link);
        let beats = tokio::spawn(async move {
            loop {
                let hb = Msg::Heartbeat { last_seq: 0, epoch: 1, digests: Vec::new(), diverged: Vec::new() };
                if tandem::peer::send(&mut wr, &hb, false).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match tokio::time::timeout_at(deadline, tandem::peer::recv(&mut rd)).await {
                Ok(Ok(Msg::Heartbeat { .. } | Msg::Batch(_))) => continue,
                Ok(Ok(other)) => panic!("unexpected {other:?}"),
                Ok(Err(_)) => break,
                Err(_) => panic!("b kept streaming on the role its hello announced: the promotion never reached this peer"),
            }
        }
        beats.abort();
        // The next handshake names the new primary.
        let (_link, theirs) = dial_as_stale_a(bp, &creds).await;
        assert_eq!((theirs.primary.as_deref(), theirs.epoch), (Some("b"), 2));
    });
}
