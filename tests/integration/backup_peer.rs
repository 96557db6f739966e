//! Cold backup with live nodes: the log archive holds every committed version (a key overwritten
//! many times within milliseconds restores to each version at its instant), the backup status
//! route and metrics, snapshots sent to the passive peer's inbox over the peer protocol
//! (damaged transfers refused, a peer that is down leaves the snapshot local and says so), and a
//! secondary restored from the primary's backups that catches up over replication from where
//! the backup ends, without copying everything again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tandem::backup::restore::{self, RestoreOptions};
use tandem::backup::{archive, peer as backup_peer, service, snapshot};
use tandem::node::Server;
use tandem::node::store;
use tandem::peer::proto::{Hello, Msg};
use tandem::peer::{self, PROTOCOL_VERSION};
use tandem_tests::cluster::{NodeDef, free_port, write_cluster_node};
use tandem_tests::{client, start_node, tandem_bin, wait_until, write_node_dir};

const WAIT: Duration = Duration::from_secs(30);

fn tandem(args: &[&str]) -> Output {
    std::process::Command::new(tandem_bin()).args(args).output().expect("run tandem")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn backup_status(s: &Server) -> serde_json::Value {
    let r = client(s).raw("GET", "/v1/admin/backup", None, &[], None).expect("GET /v1/admin/backup");
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).expect("JSON")
}

/// The value of an unlabelled metric line.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

fn stored_value(db: &Path, component: &str, key: &str) -> Option<String> {
    let conn = store::open_for_inspection(db).expect("open");
    conn.query_row("SELECT data FROM records WHERE component = ?1 AND key = ?2", [component, key], |r| r.get::<_, Vec<u8>>(0))
        .ok()
        .map(|d| String::from_utf8_lossy(&d).into_owned())
}

fn digests(s: &Server, components: &[&str]) -> BTreeMap<String, String> {
    components.iter().map(|c| ((*c).to_owned(), s.node().digest(c).expect("digest"))).collect()
}

#[test]
fn backup_archive_holds_every_version_of_a_key_overwritten_quickly_and_the_status_route_shows_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let a = root.path().join("a");
    let target = root.path().join("backup");
    let extra = format!(
        "\n[backup]\ntarget = {:?}\nsegment_age = \"200ms\"\n\n[[backup.schedule]]\nevery = \"1h\"\n",
        target.display().to_string()
    );
    write_node_dir(&a, "a", &["trunks"], &extra);
    let server = start_node(&a);
    let backup = service::start(server.node()).expect("backup thread").expect("a target is configured");
    let c = client(&server);
    wait_until("the first scheduled snapshot", WAIT, || !snapshot::list(&target).is_empty());
    // One key, overwritten back to back: many versions within one millisecond and within what
    // used to be one pass of the archiver.
    let mut versions = Vec::new();
    for i in 0..80 {
        let ack = c.put("trunks", "hot", &format!(r#"{{"host": "v{i}.example"}}"#), None).expect("put");
        assert!(ack.changed);
        versions.push((ack.stamp.physical, ack.seq, i));
    }
    let last = versions.last().map_or(0, |v| v.1);
    wait_until("the archive reaches the last version", WAIT, || backup.status().archive_seq >= last);
    let segs = archive::list(&target);
    let manifests: Vec<archive::SegmentManifest> = segs.iter().map(|(_, m)| m.clone().expect("readable segment")).collect();
    let entries: u64 = manifests.iter().map(|m| m.entries).sum();
    let skipped: u64 = manifests.iter().map(|m| m.skipped).sum();
    assert_eq!(skipped, 0, "no version skipped: {manifests:?}");
    assert!(entries >= 80, "every version archived: {entries} entries");

    // Restore to each version's instant: the key as it was after the last write of that
    // millisecond (an instant has millisecond resolution).
    let mut instants: BTreeMap<u64, usize> = BTreeMap::new();
    for (physical, _, i) in &versions {
        instants.insert(*physical, *i);
    }
    assert!(instants.len() >= 3, "the writes spread over several milliseconds: {instants:?}");
    for (n, (at, i)) in instants.iter().enumerate() {
        let dest = root.path().join(format!("pitr{n}")).join("store.db");
        let r = restore::restore(&RestoreOptions {
            target: Some(target.clone()),
            to_ms: Some(*at),
            node_name: "r".into(),
            dest: dest.clone(),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("restore to {at}: {e:#}"));
        assert_eq!(r.unarchived, 0, "restore to {at}");
        let v = stored_value(&dest, "trunks", "hot").expect("the key is restored");
        assert!(v.contains(&format!("\"v{i}.example\"")), "restore to {at}: expected version {i}, got {v}");
    }

    // The status route: behind the token, with the last snapshot, the next one, the archive.
    let st = backup_status(&server);
    assert_eq!(st["archive_source"], "commit tap", "{st}");
    assert!(st["archive_seq"].as_u64().is_some_and(|s| s >= last), "{st}");
    assert_eq!(st["archive_gaps"], 0, "{st}");
    assert!(st["last_snapshot"]["file"].as_str().is_some_and(|f| f.ends_with(".tsnap")), "{st}");
    let now = tandem::backup::time::now_ms();
    let due = st["next_scheduled"][0]["due_ms"].as_u64().unwrap_or(0);
    assert!(due > now + 3_000_000 && due <= now + 3_600_000, "next snapshot in about an hour: {st}");
    assert!(st["last_error"].is_null(), "{st}");
    let r = c.raw("GET", "/v1/admin/backup", None, &[], Some("")).expect("request");
    assert_eq!(r.status, 401, "{}", r.body);
    let r = c.raw("GET", "/v1/admin/backup", None, &[], Some("wrong-token")).expect("request");
    assert_eq!(r.status, 401, "{}", r.body);
    let m = c.metrics().expect("metrics");
    assert!(metric(&m, "tandem_backup_archive_seq").is_some_and(|v| v >= last as f64), "{m}");
    assert_eq!(metric(&m, "tandem_backup_snapshots_total"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "tandem_backup_error"), Some(0.0), "{m}");
    assert!(metric(&m, "tandem_backup_next_snapshot_timestamp_seconds").is_some_and(|v| v * 1000.0 > now as f64), "{m}");
    assert!(metric(&m, "tandem_backup_last_snapshot_timestamp_seconds").is_some_and(|v| v > 0.0), "{m}");
    // `tandem status` shows the same.
    let out = std::process::Command::new(tandem_tests::tandem_bin())
        .args(["status", "--api", &server.api_addr().to_string(), "--token", tandem_tests::TEST_TOKEN])
        .output()
        .expect("tandem status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("backup: target") && text.contains("last snapshot") && text.contains("log archive (commit tap)"), "{text}");
    backup.stop();
    drop(server);

    // A node without a backup target answers 404 with a pointer to the configuration.
    let n = root.path().join("n");
    write_node_dir(&n, "n", &["trunks"], "");
    let plain = start_node(&n);
    let r = client(&plain).raw("GET", "/v1/admin/backup", None, &[], None).expect("request");
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.contains("no_backup") && r.body.contains("[backup] target"), "{}", r.body);
    assert!(!client(&plain).metrics().expect("metrics").contains("tandem_backup_"));
}

fn creds_of(dir: &Path) -> tandem::peer::tls::Credentials {
    let c = dir.join("creds");
    tandem::peer::tls::load(&c.join("cluster-ca.pem"), &c.join("node.pem"), &c.join("node.key")).expect("credentials")
}

/// Offers `bytes` as `name` (announcing `size` and `sha256`) to the inbox of the node at
/// `address`, as node `us`; returns the receiver's last answer.
fn offer(creds: &tandem::peer::tls::Credentials, us: &str, address: &str, name: &str, announced: &[u8], bytes: &[u8]) -> Msg {
    offer_from(creds, us, address, name, announced, bytes, None).1
}

/// Chunk size of [`offer_from`].
const STEP: usize = 200;

/// [`offer`], sending from the offset the receiver asks for, in chunks of [`STEP`] bytes; with
/// `cut_at`, the link is dropped once that many bytes were sent. Returns that offset (`None` if
/// the receiver answered the offer otherwise) and the last answer (`SnapshotReady` after a cut).
fn offer_from(
    creds: &tandem::peer::tls::Credentials,
    us: &str,
    address: &str,
    name: &str,
    announced: &[u8],
    bytes: &[u8],
    cut_at: Option<usize>,
) -> (Option<u64>, Msg) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let tls = peer::dial(address, creds, PROTOCOL_VERSION, Duration::from_secs(10)).await.expect("dial");
        let (mut rd, mut wr) = tokio::io::split(tls);
        let hello = Hello { node: us.into(), epoch: 0, api: None, primary: None, last_seq: 0, components: Vec::new() };
        peer::send(&mut wr, &Msg::Hello(hello), false).await.expect("hello");
        assert!(matches!(peer::recv(&mut rd).await.expect("their hello"), Msg::Hello(_)));
        let sha256 = backup_peer::sha256_hex(announced);
        let size = announced.len() as u64;
        peer::send(&mut wr, &Msg::SnapshotOffer { name: name.into(), size, sha256 }, false).await.expect("offer");
        let from = match peer::recv(&mut rd).await.expect("answer to the offer") {
            Msg::SnapshotReady { from } => from,
            other => return (None, other),
        };
        let start = usize::try_from(from).expect("offset").min(bytes.len());
        for (i, chunk) in bytes[start..].chunks(STEP).enumerate() {
            let offset = (start + i * STEP) as u64;
            if cut_at.is_some_and(|cut| offset as usize >= cut) {
                return (Some(from), Msg::SnapshotReady { from });
            }
            peer::send(&mut wr, &Msg::SnapshotChunk { offset, bytes: chunk.to_vec() }, false).await.expect("chunk");
        }
        peer::send(&mut wr, &Msg::SnapshotDone, false).await.expect("done");
        (Some(from), peer::recv(&mut rd).await.expect("final answer"))
    })
}

/// The partial files in an inbox, with their sizes.
fn partials(inbox: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(snapshot::dir(inbox))
        .expect("inbox")
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().map(|m| m.len()).unwrap_or(0)))
        .filter(|(n, _)| n.ends_with(".partial"))
        .collect();
    v.sort();
    v
}

fn refusal(m: &Msg) -> String {
    match m {
        Msg::Refuse { reason } => reason.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn cluster_pair(root: &Path, ap: u16, bp: u16, mode: &str, a_extra: &str) -> (PathBuf, PathBuf) {
    let cluster = format!("mode = \"{mode}\"\nprimary = \"a\"");
    let a = write_cluster_node(
        root,
        &NodeDef { name: "a", port: ap, peers: vec![("b".into(), addr(bp))], cluster: &cluster, extra: a_extra },
        &["trunks"],
        None,
    );
    let b = write_cluster_node(
        root,
        &NodeDef { name: "b", port: bp, peers: vec![("a".into(), addr(ap))], cluster: &cluster, extra: "" },
        &["trunks"],
        Some(&a),
    );
    (a, b)
}

#[test]
fn backup_peer_inbox_receives_scheduled_snapshots_refuses_damaged_ones_and_a_down_peer_leaves_them_local() {
    let root = tempfile::tempdir().expect("tempdir");
    let (ap, bp) = (free_port(), free_port());
    let target = root.path().join("backup");
    let extra = format!(
        "\n[backup]\ntarget = {:?}\npeer = \"b\"\n\n[[backup.schedule]]\nevery = \"3s\"\n\n[backup.retention]\nkeep_last = 50\n",
        target.display().to_string()
    );
    let (a_dir, b_dir) = cluster_pair(root.path(), ap, bp, "cold", &extra);
    let b = start_node(&b_dir);
    let a = start_node(&a_dir);
    let ca = client(&a);
    for i in 0..30 {
        ca.put("trunks", &format!("t{i}"), &format!(r#"{{"host": "h{i}.example"}}"#), None).expect("put");
    }
    let backup = service::start(a.node()).expect("backup thread").expect("a target is configured");
    let inbox = backup_peer::inbox(&b_dir);
    wait_until("a snapshot in the peer's inbox", WAIT, || !snapshot::list(&inbox).is_empty());
    wait_until("the send in a's status", WAIT, || backup.status().last_peer_send.is_some_and(|s| s.ok));
    let st = backup_status(&a);
    assert_eq!(st["peer"], "b", "{st}");
    assert_eq!(st["last_peer_send"]["ok"], true, "{st}");
    assert!(st["last_peer_send"]["message"].as_str().is_some_and(|m| m.contains("stored by b")), "{st}");
    // The inbox copy is the very file of the local target, complete and checked.
    let (received, manifest) = snapshot::list(&inbox).into_iter().next().expect("received");
    let manifest = manifest.expect("readable");
    assert_eq!(manifest.records(), 30);
    let name = received.file_name().expect("name").to_owned();
    let local = snapshot::dir(&target).join(&name);
    assert_eq!(std::fs::read(&received).expect("inbox file"), std::fs::read(&local).expect("local file"));
    snapshot::verify(&received).expect("the inbox copy verifies");
    // The inbox is a backup target: a restore reads it.
    let dest = root.path().join("from-inbox").join("store.db");
    let r = restore::restore(&RestoreOptions { target: Some(inbox.clone()), node_name: "r".into(), dest, ..Default::default() })
        .expect("restore from the inbox");
    assert_eq!(r.records, 30);
    let m = ca.metrics().expect("metrics");
    assert!(metric(&m, "tandem_backup_peer_sends_total").is_some_and(|v| v >= 1.0), "{m}");

    // Damaged transfers are refused, naming what is wrong, and leave nothing behind.
    let creds = creds_of(&a_dir);
    let good = std::fs::read(&local).expect("snapshot bytes");
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let why = refusal(&offer(&creds, "a", &addr(bp), "20990101T000000001Z-a-all.tsnap", &good, &flipped));
    assert!(why.contains("corrupted in transfer") && why.contains("20990101T000000001Z-a-all.tsnap"), "{why}");
    let why = refusal(&offer(&creds, "a", &addr(bp), "20990101T000000002Z-a-all.tsnap", &good, &good[..good.len() / 3]));
    assert!(why.contains("truncated") && why.contains(&format!("of the {} bytes", good.len())), "{why}");
    // Intact in transfer, but not a valid snapshot (altered at the source): the checks refuse it.
    let why = refusal(&offer(&creds, "a", &addr(bp), "20990101T000000003Z-a-all.tsnap", &flipped, &flipped));
    assert!(why.contains("does not verify"), "{why}");
    let why = refusal(&offer(&creds, "a", &addr(bp), "../escape.tsnap", &good, &good));
    assert!(why.contains("not a snapshot file name"), "{why}");
    let leftovers: Vec<String> = std::fs::read_dir(snapshot::dir(&inbox))
        .expect("inbox")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') || n.starts_with("20990101"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(!root.path().join("b").join("backup").join("escape.tsnap").exists());
    // Sending the same file again is answered at once: it is there already.
    assert!(matches!(offer(&creds, "a", &addr(bp), &name.to_string_lossy(), &good, &good), Msg::SnapshotStored { .. }));

    // A transfer that breaks off leaves what arrived, and the next offer of the file resumes
    // after it; the whole file's sha256 is checked all the same.
    assert!(good.len() > 4 * STEP, "{} bytes", good.len());
    let cut = good.len() / 2 / STEP * STEP;
    let resumed = "20990101T000000004Z-a-all.tsnap";
    let (from, _) = offer_from(&creds, "a", &addr(bp), resumed, &good, &good, Some(cut));
    assert_eq!(from, Some(0));
    wait_until("the partial file holds what was sent", WAIT, || partials(&inbox).iter().any(|(_, n)| *n == cut as u64));
    let (from, answer) = offer_from(&creds, "a", &addr(bp), resumed, &good, &good, None);
    assert_eq!(from, Some(cut as u64));
    assert!(matches!(answer, Msg::SnapshotStored { .. }), "{answer:?}");
    assert_eq!(std::fs::read(snapshot::dir(&inbox).join(resumed)).expect("stored"), good);
    assert!(partials(&inbox).is_empty(), "{:?}", partials(&inbox));
    // What a broken transfer left is damaged before the resume: the end's check refuses the
    // file, the partial file goes, and the offer after that starts over.
    let damaged = "20990101T000000005Z-a-all.tsnap";
    offer_from(&creds, "a", &addr(bp), damaged, &good, &good, Some(cut));
    wait_until("the partial file holds what was sent", WAIT, || partials(&inbox).iter().any(|(_, n)| *n == cut as u64));
    let (held, _) = partials(&inbox).into_iter().next().expect("partial");
    let held = snapshot::dir(&inbox).join(held);
    let mut bytes = std::fs::read(&held).expect("partial");
    bytes[10] ^= 0x01;
    std::fs::write(&held, &bytes).expect("damage");
    let (from, answer) = offer_from(&creds, "a", &addr(bp), damaged, &good, &good, None);
    assert_eq!(from, Some(cut as u64));
    assert!(refusal(&answer).contains("corrupted in transfer"), "{answer:?}");
    assert!(partials(&inbox).is_empty(), "{:?}", partials(&inbox));
    let (from, answer) = offer_from(&creds, "a", &addr(bp), damaged, &good, &good, None);
    assert_eq!(from, Some(0));
    assert!(matches!(answer, Msg::SnapshotStored { .. }), "{answer:?}");

    // The peer goes down: the next scheduled snapshot stays in the local target, and says so.
    drop(b);
    let before = backup.status().peer_sends_failed;
    wait_until("a failed send in a's status", WAIT, || backup.status().peer_sends_failed > before);
    let st = backup_status(&a);
    assert_eq!(st["last_peer_send"]["ok"], false, "{st}");
    let msg = st["last_peer_send"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(msg.contains("local target only until it is sent again") && msg.contains("peer b"), "{st}");
    let file = st["last_peer_send"]["file"].as_str().unwrap_or_default().to_owned();
    assert!(Path::new(&file).is_file(), "{st}");
    let m = ca.metrics().expect("metrics");
    assert!(metric(&m, "tandem_backup_peer_send_failures_total").is_some_and(|v| v >= 1.0), "{m}");
    assert_eq!(metric(&m, "tandem_backup_error"), Some(1.0), "{m}");
    // By hand, too: the snapshot is taken, the send fails, exit code 1.
    let ad = a_dir.display().to_string();
    let out = tandem(&["snapshot", "create", "--dir", &ad, "--to-peer", "b"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("local target only") && text(&out).contains("peer b"), "{}", text(&out));
    let out = tandem(&["snapshot", "create", "--dir", &ad, "--to-peer", "nosuch"]);
    assert!(!out.status.success() && text(&out).contains("no [[peer]] named \"nosuch\""), "{}", text(&out));
    backup.stop();
}

#[test]
fn backup_peer_snapshot_that_could_not_be_sent_is_sent_again_once_the_peer_is_back() {
    let root = tempfile::tempdir().expect("tempdir");
    let (ap, bp) = (free_port(), free_port());
    let target = root.path().join("backup");
    // One snapshot an hour: the first is taken at start, and no other during the test.
    let extra = format!("\n[backup]\ntarget = {:?}\npeer = \"b\"\n\n[[backup.schedule]]\nevery = \"1h\"\n", target.display().to_string());
    let (a_dir, b_dir) = cluster_pair(root.path(), ap, bp, "cold", &extra);
    let a = start_node(&a_dir);
    let ca = client(&a);
    for i in 0..10 {
        ca.put("trunks", &format!("t{i}"), &format!(r#"{{"host": "h{i}.example"}}"#), None).expect("put");
    }
    let backup = service::start(a.node()).expect("backup thread").expect("a target is configured");
    wait_until("a failed send, to be retried", WAIT, || backup.status().peer_retry.is_some_and(|r| r.attempts >= 1));
    let st = backup_status(&a);
    assert_eq!(st["last_peer_send"]["ok"], false, "{st}");
    let file = st["peer_retry"]["file"].as_str().unwrap_or_default().to_owned();
    assert!(Path::new(&file).is_file() && st["peer_retry"]["next_ms"].as_u64().is_some(), "{st}");
    // The peer comes up: the same snapshot reaches its inbox, without a new one being taken.
    let b = start_node(&b_dir);
    let inbox = backup_peer::inbox(&b_dir);
    wait_until("the snapshot in the peer's inbox", Duration::from_secs(60), || !snapshot::list(&inbox).is_empty());
    wait_until("the retry done", WAIT, || backup.status().peer_retry.is_none());
    let (received, _) = snapshot::list(&inbox).into_iter().next().expect("received");
    assert_eq!(received.file_name(), Path::new(&file).file_name());
    assert_eq!(std::fs::read(&received).expect("inbox copy"), std::fs::read(&file).expect("local copy"));
    assert_eq!(snapshot::list(&target).len(), 1, "no other snapshot was taken");
    let st = backup_status(&a);
    assert_eq!(st["last_peer_send"]["ok"], true, "{st}");
    assert_eq!(st["snapshots_taken"], 1, "{st}");
    backup.stop();

    // A snapshot the peer did not get before the backup thread stopped is sent when it starts
    // again; one the peer got is not sent again.
    let ad = a_dir.display().to_string();
    let out = tandem(&["snapshot", "create", "--dir", &ad]);
    assert!(out.status.success(), "{}", text(&out));
    let backup = service::start(a.node()).expect("backup thread").expect("a target is configured");
    wait_until("the unsent snapshot in the peer's inbox", WAIT, || snapshot::list(&inbox).len() == 2);
    wait_until("the send in the status", WAIT, || backup.status().last_peer_send.is_some_and(|s| s.ok));
    assert_eq!(backup.status().snapshots_taken, 0);
    backup.stop();
    let backup = service::start(a.node()).expect("backup thread").expect("a target is configured");
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(backup.status().last_peer_send, None, "nothing to send again");
    backup.stop();

    // By hand: `snapshot send` sends the newest snapshot, resuming a transfer that broke off.
    let out = tandem(&["snapshot", "send", "--dir", &ad, "--to-peer", "b", &file]);
    assert!(out.status.success() && text(&out).contains("holds") && text(&out).contains("already"), "{}", text(&out));
    let out = tandem(&["snapshot", "create", "--dir", &ad]);
    assert!(out.status.success(), "{}", text(&out));
    let newest = snapshot::newest(&target).expect("newest");
    assert_ne!(newest, Path::new(&file));
    let bytes = std::fs::read(&newest).expect("snapshot");
    let name = newest.file_name().expect("name").to_string_lossy().into_owned();
    let cut = bytes.len() / 2 / STEP * STEP;
    offer_from(&creds_of(&a_dir), "a", &addr(bp), &name, &bytes, &bytes, Some(cut));
    wait_until("the partial file holds what was sent", WAIT, || partials(&inbox).iter().any(|(_, n)| *n == cut as u64));
    let out = tandem(&["snapshot", "send", "--dir", &ad, "--to-peer", "b"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("stored in its inbox as") && text(&out).contains("resumed after"), "{}", text(&out));
    assert_eq!(std::fs::read(snapshot::dir(&inbox).join(&name)).expect("stored"), bytes);
    // Progress is reported as the file goes, from where the transfer starts to its end.
    let config = tandem::node::Config::load(&a_dir.join("tandem.toml")).expect("config");
    let to_b = backup_peer::PeerTarget::from_config(&config, "b").expect("peer b");
    let out = tandem(&["snapshot", "create", "--dir", &ad]);
    assert!(out.status.success(), "{}", text(&out));
    let third = snapshot::newest(&target).expect("newest");
    let seen = std::sync::Mutex::new(Vec::new());
    let record = |done: u64, total: u64| seen.lock().expect("lock").push((done, total));
    let stored = to_b.send_blocking_with(&third, Some(&record)).expect("send");
    let seen = seen.into_inner().expect("lock");
    let size = std::fs::metadata(&third).expect("size").len();
    assert_eq!((seen.first().copied(), seen.last().copied()), (Some((0, size)), Some((size, size))), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
    assert_eq!((stored.bytes, stored.resumed_from), (size, 0));
    drop(b);
    let out = tandem(&["snapshot", "send", "--dir", &ad, "--to-peer", "b"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("run the same command again"), "{}", text(&out));
    let out = tandem(&["snapshot", "send", "--dir", &ad, "--to-peer", "nosuch"]);
    assert!(!out.status.success() && text(&out).contains("no [[peer]] named \"nosuch\""), "{}", text(&out));
}

#[test]
fn backup_peer_inbox_refuses_an_offer_that_would_eat_into_the_space_its_store_needs() {
    let root = tempfile::tempdir().expect("tempdir");
    let (ap, bp) = (free_port(), free_port());
    let cluster = "mode = \"cold\"\nprimary = \"a\"";
    let a_dir = write_cluster_node(
        root.path(),
        &NodeDef { name: "a", port: ap, peers: vec![("b".into(), addr(bp))], cluster, extra: "" },
        &["trunks"],
        None,
    );
    // More space kept free than any disk here has.
    let reserve = "\n[backup]\ninbox_min_free_mb = 1000000000000\n";
    let b_dir = write_cluster_node(
        root.path(),
        &NodeDef { name: "b", port: bp, peers: vec![("a".into(), addr(ap))], cluster, extra: reserve },
        &["trunks"],
        Some(&a_dir),
    );
    let _b = start_node(&b_dir);
    let bytes = vec![7u8; 300_000];
    let why = refusal(&offer(&creds_of(&a_dir), "a", &addr(bp), "20990101T000000001Z-a-all.tsnap", &bytes, &bytes));
    assert!(why.contains("not enough space") && why.contains("backup.inbox_min_free_mb"), "{why}");
    assert!(why.contains("the snapshot takes 300000 bytes"), "{why}");
    // Refused before any byte was written: no file, not even a temporary one.
    let dir = snapshot::dir(&backup_peer::inbox(&b_dir));
    let left: Vec<_> = std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn backup_restored_secondary_catches_up_from_the_primary_from_where_the_backup_ends() {
    let root = tempfile::tempdir().expect("tempdir");
    let (ap, bp) = (free_port(), free_port());
    let target = root.path().join("backup");
    let extra = format!("\n[backup]\ntarget = {:?}\nsegment_age = \"200ms\"\n", target.display().to_string());
    let (a_dir, b_dir) = cluster_pair(root.path(), ap, bp, "warm", &extra);
    // The primary runs alone (the secondary is off) and writes its backups.
    let a = start_node(&a_dir);
    let backup = service::start(a.node()).expect("backup thread").expect("a target is configured");
    let ca = client(&a);
    for i in 0..60 {
        ca.put("trunks", &format!("t{i:03}"), &format!(r#"{{"host": "h{i}.example"}}"#), None).expect("put");
    }
    snapshot::create(&a_dir.join("store.db"), &target, &snapshot::CreateOptions::default()).expect("snapshot");
    for i in 0..20 {
        ca.put("trunks", &format!("t{i:03}"), &format!(r#"{{"host": "changed{i}.example"}}"#), None).expect("put");
    }
    for i in 60..70 {
        ca.put("trunks", &format!("t{i:03}"), &format!(r#"{{"host": "h{i}.example"}}"#), None).expect("put");
    }
    for i in 50..53 {
        ca.delete("trunks", &format!("t{i:03}"), None).expect("delete");
    }
    let archived = a.node().last_seq();
    wait_until("the archive reaches the last write", WAIT, || backup.status().archive_seq >= archived);
    backup.stop();
    // Written after the backup: only the primary has these.
    for i in 70..95 {
        ca.put("trunks", &format!("t{i:03}"), &format!(r#"{{"host": "h{i}.example"}}"#), None).expect("put");
    }
    // The secondary's directory holds positions of an older life, past what the restored store
    // has: kept, they would skip the primary's changes after the backup.
    let positions = b_dir.join("replication").join("positions.json");
    std::fs::create_dir_all(positions.parent().expect("dir")).expect("mkdir");
    std::fs::write(&positions, r#"{"a": {"seq": 999999, "epoch": 1}}"#).expect("stale positions");

    let (bd, td) = (b_dir.display().to_string(), target.display().to_string());
    let out = tandem(&["restore", "--dir", &bd, "--target", &td]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("catching up from a resumes after seq {archived}")), "{}", text(&out));
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&positions).expect("positions")).expect("JSON");
    assert_eq!(saved["a"]["seq"], archived, "{saved}");
    let kept = std::fs::read_dir(b_dir.join("replication"))
        .expect("dir")
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("positions.json.pre-restore-"));
    assert!(kept, "the old positions are kept");

    let restored: String = store::open_for_inspection(&b_dir.join("store.db"))
        .expect("open")
        .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| r.get(0))
        .expect("last_seq");
    assert_eq!(restored, archived.to_string(), "the restored store holds the primary's feed up to the backup's end");

    // The secondary starts with the primary as its peer and catches up.
    let b = start_node(&b_dir);
    wait_until("the secondary caught up", WAIT, || digests(&a, &["trunks"]) == digests(&b, &["trunks"]));
    // Exactly the primary's changes after the backup were copied (each once), nothing before.
    let after = a.block_on(a.node().changes(archived, 100_000)).expect("feed").len() as u64;
    assert_eq!(after, 25);
    wait_until("the secondary's position", WAIT, || b.node().last_seq() >= archived + after);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(b.node().last_seq(), archived + after, "no version applied twice, none re-copied");
    assert_eq!(client(&b).list_all("trunks", "").expect("list").len(), 92);
    let doc = client(&b).get("trunks", "t005").expect("restored and kept");
    assert!(doc.value.to_string().contains("changed5.example"), "{doc:?}");
    // And it keeps following.
    ca.put("trunks", "t999", r#"{"host": "late.example"}"#, None).expect("put");
    wait_until("a later write reaches the secondary", WAIT, || client(&b).get("trunks", "t999").is_ok());
}

#[test]
fn backup_archive_that_falls_behind_the_writer_says_so_and_catches_up_from_the_store() {
    let root = tempfile::tempdir().expect("tempdir");
    let a = root.path().join("a");
    let target = root.path().join("backup");
    let extra = format!("\n[backup]\ntarget = {:?}\nsegment_age = \"200ms\"\n", target.display().to_string());
    write_node_dir(&a, "a", &["trunks"], &extra);
    let server = start_node(&a);
    // A tap that holds at most 10 versions: one commit of 30 versions overflows it.
    server.node().commit_tap().set_limits(10, 1 << 20);
    let backup = service::start(server.node()).expect("backup thread").expect("a target is configured");
    let c = client(&server);
    c.put("trunks", "before", r#"{"host": "before.example"}"#, None).expect("put");
    wait_until("the archive has the first write", WAIT, || backup.status().archive_seq >= 1);
    let writes: Vec<(String, tandem::plugin::Op)> =
        (0..30).map(|i| ("burst".to_owned(), tandem::plugin::Op::Put(format!(r#"{{"host": "b{i}.example"}}"#)))).collect();
    for r in server.block_on(server.node().write_many("trunks", writes)).expect("batch") {
        r.expect("write");
    }
    let last = server.node().last_seq();
    assert_eq!(last, 31);
    wait_until("the archive catches up", WAIT, || backup.status().archive_seq >= last);
    assert_eq!(server.node().commit_tap().overflows(), 1);
    let st = backup_status(&server);
    assert_eq!(st["archive_gaps"], 1, "{st}");
    // 30 versions of one key in one commit: the store holds the last, 29 are not archived.
    assert_eq!(st["archive_unarchived"], 29, "{st}");
    assert!(st["last_error"]["message"].as_str().is_some_and(|m| m.contains("fell behind the writer")), "{st}");
    let m = c.metrics().expect("metrics");
    assert_eq!(metric(&m, "tandem_backup_archive_gaps_total"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "tandem_backup_archive_unarchived_total"), Some(29.0), "{m}");
    // The archive is exact again after the gap: every later version is there.
    for i in 0..5 {
        c.put("trunks", "after", &format!(r#"{{"host": "a{i}.example"}}"#), None).expect("put");
    }
    let last = server.node().last_seq();
    wait_until("the archive reaches the last write", WAIT, || backup.status().archive_seq >= last);
    let skipped: u64 = archive::list(&target).iter().map(|(_, m)| m.as_ref().map_or(0, |m| m.skipped)).sum();
    assert_eq!(skipped, 29, "the segments count the versions of the gap, and only those");
    backup.stop();
    // The latest state restores exactly.
    let dest = root.path().join("r").join("store.db");
    snapshot::create(&a.join("store.db"), &target, &snapshot::CreateOptions::default()).expect("snapshot");
    let r =
        restore::restore(&RestoreOptions { target: Some(target.clone()), node_name: "r".into(), dest: dest.clone(), ..Default::default() })
            .expect("restore");
    assert_eq!(r.records, 3);
    assert!(stored_value(&dest, "trunks", "burst").is_some_and(|v| v.contains("b29.example")));
}
