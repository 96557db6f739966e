//! Automatic failover between real processes on loopback: two data nodes and a witness; the
//! primary is SIGKILLed or SIGSTOPped under a `standby`-ack write load; the standby takes over
//! by itself, no acknowledged write is lost, and the old primary never takes writes again
//! until the cluster says so (it comes back as a standby).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_tests::NodeProcess;
use tandem_tests::cluster::{RunningTrio, free_port, replace_with_empty_server, set_lease, start_trio, trio, trio_on, writable};
use tandem_tests::fault_proxy::FaultProxy;

const WAIT: Duration = Duration::from_secs(60);

fn trunk(i: usize) -> String {
    format!("{{\"host\": \"h{i}.carrier.example\", \"transport\": \"udp\", \"max_channels\": 10}}")
}

/// Writes to `c` until stopped; returns the keys acknowledged.
fn load(c: tandem::node::client::Client, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<String>>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) && i < 100_000 {
            let key = format!("trunk-{i:06}");
            if c.put("trunks", &key, &trunk(i), None).is_ok() {
                acked.lock().expect("acked").push(key);
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
    })
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < WAIT, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

/// The replication part of a node's status.
fn status(c: &tandem::node::client::Client) -> serde_json::Value {
    c.status().expect("status").replication.unwrap_or_default()
}

#[test]
fn failover_sigkill_of_the_primary_the_standby_takes_over_with_every_acknowledged_write() {
    let root = tempfile::tempdir().expect("tempdir");
    let t = trio(root.path());
    let RunningTrio { w, a, b } = start_trio(&t);
    let (ca, cb) = (a.client(), b.client());
    let st = status(&cb);
    assert!(st["automatic_failover"].as_str().is_some_and(|s| s.starts_with("on")), "{st}");

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = load(ca.clone(), stop.clone(), acked.clone());
    wait_until("the load is under way", || acked.lock().map_or(0, |a| a.len()) >= 50);
    // Never two writable nodes while both run.
    assert!(!writable(&cb));
    a.kill();
    let killed = Instant::now();
    wait_until("b takes writes", || writable(&cb));
    let takeover = killed.elapsed();
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    let acked = acked.lock().expect("acked").clone();
    assert!(acked.len() >= 50, "the load ran: {} writes acknowledged", acked.len());
    for k in &acked {
        assert!(cb.get("trunks", k).is_ok(), "acknowledged {k} was lost in the takeover");
    }
    let st = status(&cb);
    assert_eq!(st["failover"]["assignment"]["primary"].as_str(), Some("b"), "{st}");
    assert_eq!(st["failover"]["assignment"]["old"].as_str(), Some("a"), "{st}");
    assert!(takeover < Duration::from_secs(10), "takeover took {takeover:?}");
    let cw = w.client();
    wait_until("the witness's status names b as the primary", || status(&cw)["primary"].as_str() == Some("b"));
    cb.put("trunks", "after-takeover", &trunk(1), None).expect("b takes writes");

    // The old primary comes back as a standby and catches up.
    let a = NodeProcess::start(&t.a);
    let ca = a.client();
    let started = Instant::now();
    while ca.get("trunks", "after-takeover").is_err() {
        if started.elapsed() > WAIT {
            let log = std::fs::read_to_string(t.a.join("node.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            panic!("a did not follow b; a's status {}\nlog (newest first):\n{}", status(&ca), tail.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!writable(&ca), "the old primary must not take writes");
    assert!(ca.put("trunks", "on-old-primary", &trunk(2), None).is_err());
    drop(w);
}

#[test]
fn failover_a_stopped_primary_loses_its_lease_and_never_takes_writes_after_the_takeover() {
    let root = tempfile::tempdir().expect("tempdir");
    let t = trio(root.path());
    let RunningTrio { w: _w, a, b } = start_trio(&t);
    let (ca, cb) = (a.client(), b.client());
    ca.put("trunks", "before", &trunk(0), None).expect("write before");
    let pid = a.child.id().to_string();
    let signal = |s: &str| {
        std::process::Command::new("kill").args([s, &pid]).status().expect("kill");
    };
    signal("-STOP");
    wait_until("b takes writes", || writable(&cb));
    cb.put("trunks", "during", &trunk(1), None).expect("b takes writes");
    signal("-CONT");
    // At once on waking, a's lease is over: it refuses writes, then follows b.
    let refused = ca.put("trunks", "after-wake", &trunk(2), None);
    assert!(refused.is_err(), "the woken old primary accepted a write: {refused:?}");
    wait_until("a follows b", || ca.get("trunks", "during").is_ok());
    assert!(!writable(&ca));
    assert!(cb.get("trunks", "before").is_ok());
    assert!(cb.get("trunks", "after-wake").is_err());
}

#[test]
fn failover_the_demo_kills_its_primary_and_prints_the_takeover_time() {
    // The demo keeps its compile cache in the user's cache directory: here, a temporary one.
    let home = tempfile::tempdir().expect("tempdir");
    let demo = || {
        let out = std::process::Command::new(tandem_tests::tandem_bin())
            .arg("demo")
            .env("XDG_CACHE_HOME", home.path())
            .output()
            .expect("run tandem demo");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{text}");
        text
    };
    let text = demo();
    let n = tandem::bundled::BUNDLED.len();
    assert!(text.contains(&format!("{n} plugins in ")) && text.contains("0 of them from the compile cache"), "{text}");
    // A second run finds every plugin compiled.
    let again = demo();
    assert!(again.contains(&format!("{n} of them from the compile cache {}", home.path().join("tandem").display())), "{again}");
    assert!(text.contains("assigned a as the warm primary"), "{text}");
    assert!(text.contains("the trunk written on a before is on b: true"), "{text}");
    let ms: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("takeover time: "))
        .and_then(|v| v.trim_end_matches(" ms").parse().ok())
        .unwrap_or_else(|| panic!("no takeover time in:\n{text}"));
    assert!(ms > 0.0 && ms < 20_000.0, "takeover time {ms} ms");
}

/// A partition cuts the primary off from both others: it stops taking writes within its lease,
/// the standby takes over; a write the old primary committed but could not get acknowledged
/// (no standby heard it) is not lost when the partition heals: it goes to the old primary's
/// conflict queue, and the old primary rewinds and follows.
#[test]
fn failover_a_partitioned_primary_steps_down_and_its_unacknowledged_write_goes_to_the_conflict_queue() {
    let root = tempfile::tempdir().expect("tempdir");
    let ports = [free_port(), free_port(), free_port()];
    let local = |p: u16| -> std::net::SocketAddr { format!("127.0.0.1:{p}").parse().expect("addr") };
    // Every link that touches a goes through a proxy of its own.
    let to_a_from_b = FaultProxy::start(local(ports[0]));
    let to_a_from_w = FaultProxy::start(local(ports[0]));
    let to_b_from_a = FaultProxy::start(local(ports[1]));
    let to_w_from_a = FaultProxy::start(local(ports[2]));
    let proxies = [&to_a_from_b, &to_a_from_w, &to_b_from_a, &to_w_from_a];
    let t = trio_on(root.path(), ports, |from, to| match (from, to) {
        ("b", "a") => to_a_from_b.addr().to_string(),
        ("w", "a") => to_a_from_w.addr().to_string(),
        ("a", "b") => to_b_from_a.addr().to_string(),
        ("a", "w") => to_w_from_a.addr().to_string(),
        (_, "b") => format!("127.0.0.1:{}", ports[1]),
        _ => format!("127.0.0.1:{}", ports[2]),
    });
    let RunningTrio { w: _w, a, b } = start_trio(&t);
    let (ca, cb) = (a.client(), b.client());
    ca.put("trunks", "acknowledged", &trunk(0), None).expect("write before the partition");

    for p in proxies {
        p.set_blocked(true);
    }
    // Committed on a, but no standby acknowledges it: the client hears "outcome unknown".
    let orphan = ca.put("trunks", "orphan", &trunk(1), None);
    assert!(orphan.is_err(), "a write without its standby's acknowledgement must not be acknowledged: {orphan:?}");
    wait_until("a stops taking writes (its lease ran out)", || !writable(&ca));
    wait_until("b takes writes", || writable(&cb));
    cb.put("trunks", "on-b", &trunk(2), None).expect("b takes writes");

    for p in proxies {
        p.set_blocked(false);
    }
    wait_until("a follows b", || ca.get("trunks", "on-b").is_ok());
    wait_until("a rewound the orphan", || ca.get("trunks", "orphan").is_err());
    let conflicts = ca.raw("GET", "/v1/conflicts", None, &[], None).expect("conflicts");
    assert!(conflicts.body.contains("orphan") && conflicts.body.contains("fork point"), "{}", conflicts.body);
    assert!(status(&ca)["alarms"].to_string().contains("conflict queue"), "{}", status(&ca));
    assert!(cb.get("trunks", "acknowledged").is_ok());
    assert!(cb.get("trunks", "orphan").is_err(), "the orphan never reached b");
    assert!(!writable(&ca));
}

/// `tandem demote` then `tandem promote` with failover on: the promotion goes through the
/// consensus (the old primary's lease is revoked first, the new primary waits it out) and no
/// write is lost.
#[test]
fn failover_planned_switch_over_goes_through_the_consensus() {
    let root = tempfile::tempdir().expect("tempdir");
    let t = trio(root.path());
    // A long lease: with the default 500 ms, a stall of the busy machine could fail a over by
    // itself between the demotion and the promotion, and the promotion would find b assigned.
    set_lease(&t, 2_000);
    let RunningTrio { w: _w, a, b } = start_trio(&t);
    let (ca, cb) = (a.client(), b.client());
    for i in 0..20 {
        ca.put("trunks", &format!("before-{i}"), &trunk(i), None).expect("write on a");
    }
    let demoted = ca.demote(10_000).expect("demote a");
    assert_eq!(demoted["caught_up"].as_bool(), Some(true), "{demoted}");
    let promoted = cb.promote().expect("promote b");
    assert_eq!(promoted["role"].as_str(), Some("primary"), "{promoted}");
    assert!(
        promoted["takes_writes_after_ms"].as_u64().is_some_and(|ms| ms >= 2_000),
        "the new primary waits out the old lease: {promoted}"
    );
    let started = Instant::now();
    while !writable(&cb) {
        assert!(started.elapsed() < WAIT, "b does not take writes after its promotion: {}", status(&cb));
        std::thread::sleep(Duration::from_millis(10));
    }
    cb.put("trunks", "after", &trunk(99), None).expect("b takes writes");
    let st = status(&cb);
    assert_eq!(st["failover"]["assignment"]["primary"].as_str(), Some("b"), "{st}");
    // `tandem status` shows the consensus.
    let out = std::process::Command::new(tandem_tests::tandem_bin())
        .args(["status", "--api", &b.addr, "--token", tandem_tests::TEST_TOKEN])
        .output()
        .expect("tandem status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("failover: on: 3 voters (a, b, w)") && text.contains("primary b in epoch"), "{text}");
    // Promoting the primary again changes nothing, and says so.
    let out = std::process::Command::new(tandem_tests::tandem_bin())
        .args(["promote", "--api", &b.addr, "--token", tandem_tests::TEST_TOKEN])
        .output()
        .expect("tandem promote");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("b was already the warm primary, epoch"), "{text}");
    assert_eq!(status(&cb)["failover"]["assignment"], st["failover"]["assignment"], "a second promotion assigned again");
    wait_until("a follows b", || ca.get("trunks", "after").is_ok());
    assert!(!writable(&ca));
    for i in 0..20 {
        assert!(cb.get("trunks", &format!("before-{i}")).is_ok(), "before-{i} was lost in the switch-over");
    }
    assert!(
        ca.raw("GET", "/v1/conflicts", None, &[], None).expect("conflicts").body.contains("[]"),
        "a planned switch-over leaves no conflict"
    );
}

/// A standby's server dies and is replaced by a new one under the same name: the node's
/// configuration and credentials, an empty data directory, the rejoin marker of `tandem init
/// --replaces`. It rejoins the consensus (voting again once caught up), is bootstrapped from the
/// primary under a write load, joins the synchronous set, and when the primary is SIGKILLed it
/// takes over with every write acknowledged before and after the replacement.
#[test]
fn failover_a_standby_replaced_by_an_empty_server_catches_up_and_takes_over_with_every_acknowledged_write() {
    let root = tempfile::tempdir().expect("tempdir");
    let t = trio(root.path());
    let RunningTrio { w: _w, a, b } = start_trio(&t);
    let ca = a.client();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = load(ca.clone(), stop.clone(), acked.clone());
    wait_until("the load is under way", || acked.lock().map_or(0, |a| a.len()) >= 50);
    b.kill();
    // The new server: configuration, credentials and plugins; no store, no replication or
    // consensus state; what `tandem init --replaces` leaves: it rejoins the consensus.
    let marker = replace_with_empty_server(&t.b);
    let during = acked.lock().map_or(0, |a| a.len());
    wait_until("the primary takes writes without the standby", || acked.lock().map_or(0, |a| a.len()) >= during + 20);
    let b = NodeProcess::start(&t.b);
    let cb = b.client();
    // The set names the store that joined: the old b's until a hears of the new one, which
    // then joins in its place once caught up.
    let new_store = cb.status().expect("b's status").node.id;
    wait_until("the new b's store is in a's synchronous set", || {
        let set = &status(&ca)["sync_set"];
        set["members"].get("b").is_some() && set["stores"]["b"].as_str() == Some(new_store.as_str())
    });
    let log = || std::fs::read_to_string(t.b.join("node.log")).unwrap_or_default();
    wait_until("the new b caught up with the consensus and votes again", || log().contains("rejoined: caught up"));
    assert!(log().contains("rejoining: this voter replaces a lost one"));
    assert!(!marker.exists(), "the marker is consumed at start");
    assert_eq!(status(&cb)["failover"]["rejoining"], false, "{}", status(&cb));
    let joined = acked.lock().map_or(0, |a| a.len());
    wait_until("writes acknowledged by the new b", || acked.lock().map_or(0, |a| a.len()) >= joined + 50);
    assert!(!writable(&cb));
    a.kill();
    let killed = Instant::now();
    while !writable(&cb) {
        if killed.elapsed() > WAIT {
            let log = std::fs::read_to_string(t.b.join("node.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            panic!("the new b did not take over; its status {}\nlog (newest first):\n{}", status(&cb), tail.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    let acked = acked.lock().expect("acked").clone();
    let lost: Vec<&String> = acked.iter().filter(|k| cb.get("trunks", k).is_err()).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged writes lost: {:?}", lost.len(), acked.len(), &lost[..lost.len().min(10)]);
    let st = status(&cb);
    assert_eq!(st["failover"]["assignment"]["primary"].as_str(), Some("b"), "{st}");
    cb.put("trunks", "after-takeover", &trunk(1), None).expect("the new b takes writes");
}

/// A standby's server is replaced by an empty one that the primary cannot reach yet, and the
/// primary dies before it has dropped the old standby from its synchronous set: the set still
/// names b. The new b is not promoted (it holds none of the acknowledged writes); the old
/// primary, restarted, is. Two rules stop it: started without the rejoin marker and with no
/// consensus state, it learns from the witness that the cluster has a history and rejoins (no
/// vote, no endorsement until caught up, which needs every other voter); and the set names the
/// store that joined, which the new b's is not (the simulation's
/// `a_member_replaced_by_an_empty_server_is_not_promoted_in_its_place` checks that rule alone).
#[test]
fn failover_a_replaced_standby_that_never_caught_up_is_not_promoted_in_the_old_ones_place() {
    let root = tempfile::tempdir().expect("tempdir");
    let ports = [free_port(), free_port(), free_port()];
    let local = |p: u16| -> std::net::SocketAddr { format!("127.0.0.1:{p}").parse().expect("addr") };
    let to_a_from_b = FaultProxy::start(local(ports[0]));
    let to_b_from_a = FaultProxy::start(local(ports[1]));
    let t = trio_on(root.path(), ports, |from, to| match (from, to) {
        ("b", "a") => to_a_from_b.addr().to_string(),
        ("a", "b") => to_b_from_a.addr().to_string(),
        (_, "a") => format!("127.0.0.1:{}", ports[0]),
        (_, "b") => format!("127.0.0.1:{}", ports[1]),
        _ => format!("127.0.0.1:{}", ports[2]),
    });
    let RunningTrio { w: _w, a, b } = start_trio(&t);
    let (ca, cb) = (a.client(), b.client());
    let old_store = cb.status().expect("b's status").node.id;
    wait_until("a's synchronous set names b's store", || status(&ca)["sync_set"]["stores"]["b"].as_str() == Some(old_store.as_str()));
    let acked: Vec<String> = (0..20).map(|i| format!("acked-{i}")).collect();
    for k in &acked {
        ca.put("trunks", k, &trunk(1), None).expect("a standby-ack write");
    }
    // b's server is lost and replaced (without the rejoin marker: an operator who skipped it);
    // a cannot reach the new one.
    to_a_from_b.set_blocked(true);
    to_b_from_a.set_blocked(true);
    b.kill();
    replace_with_empty_server(&t.b);
    std::fs::remove_file(tandem::failover::rejoin_marker(&t.b)).expect("remove the marker");
    let b = NodeProcess::start(&t.b);
    let cb = b.client();
    assert!(status(&ca)["sync_set"]["members"].get("b").is_some(), "b is still in a's set: {}", status(&ca));
    a.kill();
    // The witness and the new b are a quorum, but b is not the member the set names.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        assert!(!writable(&cb), "the empty b was promoted: {}", status(&cb));
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = status(&cb);
    assert_eq!(st["failover"]["rejoining"].as_bool(), Some(true), "the new b found it replaces a lost voter: {st}");
    assert_ne!(st["failover"]["assignment"]["primary"].as_str(), Some("b"), "{st}");
    // The old primary comes back and takes writes again; the links heal; nothing is lost.
    to_a_from_b.set_blocked(false);
    to_b_from_a.set_blocked(false);
    let a = NodeProcess::start(&t.a);
    let ca = a.client();
    wait_until("a takes writes again", || writable(&ca));
    for k in &acked {
        assert!(ca.get("trunks", k).is_ok(), "acknowledged {k} lost");
    }
    wait_until("the new b has every acknowledged write", || acked.iter().all(|k| cb.get("trunks", k).is_ok()));
}

/// The primary's wall clock steps back (NTP, a VM restored) before a standby leaves its
/// synchronous set. The voters must hear the smaller set all the same: if they kept the older
/// one, which names the standby, it would be promoted once the primary is gone, without the
/// writes acknowledged after it left.
#[test]
fn failover_a_standby_that_left_the_set_is_not_promoted_after_the_primarys_clock_stepped_back() {
    use tandem::node::hlc::ManualWallClock;
    let root = tempfile::tempdir().expect("tempdir");
    let t = trio(root.path());
    let now_ms =
        || u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_millis()).expect("ms");
    let wall = ManualWallClock::new(now_ms());
    let _w = NodeProcess::start(&t.w);
    let a = tandem_tests::start_node_with(&t.a, tandem::node::service::NodeOptions { wall: wall.clone() });
    let b = NodeProcess::start(&t.b);
    let ca = tandem_tests::client(&a);
    wait_until("a takes writes under a lease", || writable(&ca));
    wait_until("b is in a's synchronous set", || status(&ca)["sync_set"]["members"].get("b").is_some());
    ca.put("trunks", "before", &trunk(0), None).expect("a standby-ack write");
    // An hour back, then b goes.
    wall.set(now_ms() - 3_600_000);
    b.kill();
    wait_until("b leaves a's synchronous set", || status(&ca)["sync_set"]["members"].as_object().is_some_and(|m| m.is_empty()));
    // Acknowledged on a alone: the set is empty.
    ca.put("trunks", "after", &trunk(1), None).expect("a write acknowledged locally");
    drop(a);
    // b returns without a: the witness and b are a quorum, but b is not in the set any more.
    let b = NodeProcess::start(&t.b);
    let cb = b.client();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        assert!(!writable(&cb), "b was promoted without the write acknowledged after it left the set: {}", status(&cb));
        std::thread::sleep(Duration::from_millis(20));
    }
    // a comes back (its clock right again), takes writes, and b gets what it missed.
    let a = tandem_tests::start_node(&t.a);
    let ca = tandem_tests::client(&a);
    wait_until("a takes writes again", || writable(&ca));
    assert!(ca.get("trunks", "after").is_ok(), "a lost its acknowledged write");
    wait_until("b has every acknowledged write", || ["before", "after"].iter().all(|k| cb.get("trunks", k).is_ok()));
}
