//! Randomized fault schedules against real processes (`tandem run`), every link through a fault
//! proxy per direction, under a write load, while a seeded schedule SIGKILLs and restarts
//! processes, stops them cleanly, pauses them (SIGSTOP), partitions pairs, delays, cuts and
//! corrupts links. After the schedule everything heals and the invariants are checked.
//!
//! Hot: three nodes written to concurrently, one of them (c) on `geo` links.
//! - The nodes hold the same records (every key, value and stamp), the same digests and the same
//!   open conflicts.
//! - Every acknowledged write is there: a key's last acknowledged put with its value, its last
//!   acknowledged delete as an absence, every acknowledged note on the shared accounts (an
//!   append-only field, so no merge may drop one).
//!
//! Warm with automatic failover: data nodes a and b and witness w, `standby` acks, one writer
//! that follows whichever node takes writes. The schedule may also replace a node other than the
//! one taking writes by an empty server (`tandem init --replaces`, or without the rejoin marker)
//! while the others run.
//! - Never two nodes taking writes in one epoch (each data node's health is polled throughout).
//! - Every acknowledged write is on both data nodes, which hold the same records.
//!
//! Both: no process panicked, and links carry a write made after the healing.
//!
//! A write whose request failed (node killed, connection cut, no primary) has an unknown
//! outcome: the checks skip it. `TANDEM_CHAOS_SEED=S` replays one schedule (it is printed as it
//! runs, and with every failure); `TANDEM_CHAOS_STEPS=N` makes it longer (default 24);
//! `TANDEM_CHAOS_AIM=P` aims P percent of the warm steps at the node taking writes (default 50).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem::node::client::Client;
use tandem::node::types::StampView;
use tandem_tests::cluster::{NodeDef, free_port, replace_with_empty_server, trio_on, writable, write_cluster_node};
use tandem_tests::fault_proxy::FaultProxy;
use tandem_tests::{NodeProcess, TEST_TOKEN};

const HOT: [&str; 3] = ["a", "b", "c"];
const WARM: [&str; 3] = ["a", "b", "w"];
/// Accounts every node adds notes to.
const SHARED: usize = 4;
const CONVERGE: Duration = Duration::from_secs(120);

/// splitmix64: a small seeded generator, so that a schedule replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A CRM account key (kind:ULID) for number `n`.
fn account(n: usize) -> String {
    const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut tail = String::new();
    let mut n = n;
    for _ in 0..5 {
        tail.insert(0, char::from(CROCKFORD[n % 32]));
        n /= 32;
    }
    format!("account:01J8Z3K4M5N6P7Q8R9S0T{tail}")
}

/// What a writer did to a key, in its order.
#[derive(Clone, Debug)]
enum Op {
    Put(String),
    Delete,
    Note(String),
}

#[derive(Clone, Debug)]
struct Done {
    key: String,
    op: Op,
    /// Acknowledged; otherwise the outcome is unknown.
    acked: bool,
}

/// One node's writer: adds notes to the shared accounts, puts and deletes keys of its own.
fn writer(node: usize, client: Client, stop: Arc<AtomicBool>, seed: u64, log: Arc<Mutex<Vec<Done>>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rng = Rng(seed ^ (node as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1));
        let mut own: Vec<String> = Vec::new();
        let mut n = 0usize;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let roll = rng.below(10);
            let (key, op, result) = if roll < 5 {
                let key = account(rng.below(SHARED as u64) as usize);
                let text = format!("{}-{n}", HOT[node]);
                let doc = format!(
                    r#"{{"kind": "account", "name": "Shared", "notes": [{{"at_ms": {n}, "author": "w{}", "text": "{text}"}}]}}"#,
                    HOT[node]
                );
                let r = client.put("crm", &key, &doc, None).map(|_| ());
                (key, Op::Note(text), r)
            } else if roll < 9 || own.is_empty() {
                let key = if own.is_empty() || rng.below(3) == 0 {
                    let k = account(1_000 * (node + 1) + own.len());
                    own.push(k.clone());
                    k
                } else {
                    own[rng.below(own.len() as u64) as usize].clone()
                };
                let name = format!("{} {n}", HOT[node]);
                let r = client.put("crm", &key, &format!(r#"{{"kind": "account", "name": "{name}"}}"#), None).map(|_| ());
                (key, Op::Put(name), r)
            } else {
                let key = own[rng.below(own.len() as u64) as usize].clone();
                let r = client.delete("crm", &key, None).map(|_| ());
                (key, Op::Delete, r)
            };
            let acked = result.is_ok();
            if let Ok(mut l) = log.lock() {
                l.push(Done { key, op, acked });
            }
            // A refused connection (node down) answers at once: do not spin.
            std::thread::sleep(Duration::from_millis(if acked { 8 } else { 60 }));
        }
    })
}

/// Processes of a test cluster, a fault proxy for every link direction, and clients at fixed
/// API ports (so that they reach a node again after a restart).
struct Cluster {
    names: &'static [&'static str],
    dirs: Vec<PathBuf>,
    procs: Vec<Option<NodeProcess>>,
    /// `(from, to)`: the proxy `from` dials to reach `to`.
    proxies: BTreeMap<(usize, usize), FaultProxy>,
    clients: Vec<Client>,
}

/// A proxy for every ordered pair of nodes, in front of the peer ports `ports`.
fn proxies(ports: &[u16]) -> BTreeMap<(usize, usize), FaultProxy> {
    let mut proxies = BTreeMap::new();
    for from in 0..ports.len() {
        for (to, port) in ports.iter().enumerate() {
            if from != to {
                proxies.insert((from, to), FaultProxy::start(format!("127.0.0.1:{port}").parse().expect("address")));
            }
        }
    }
    proxies
}

/// Replaces the first `old` in the configuration of the node in `dir` (which must have it).
fn edit_config(dir: &Path, old: &str, new: &str) {
    let file = dir.join("tandem.toml");
    let text = std::fs::read_to_string(&file).expect("config");
    assert!(text.contains(old), "no {old:?} in {text}");
    std::fs::write(&file, text.replacen(old, new, 1)).expect("config");
}

/// Gives the node in `dir` a fixed API port; returns its client.
fn fixed_api(dir: &Path) -> Client {
    let port = free_port();
    edit_config(dir, "api = \"127.0.0.1:0\"", &format!("api = \"127.0.0.1:{port}\""));
    Client::new(&format!("127.0.0.1:{port}"), TEST_TOKEN)
}

impl Cluster {
    /// Starts a node in each of `dirs`, in order.
    fn start(names: &'static [&'static str], dirs: Vec<PathBuf>, proxies: BTreeMap<(usize, usize), FaultProxy>) -> Cluster {
        let clients = dirs.iter().map(|d| fixed_api(d)).collect();
        let procs = dirs.iter().map(|d| Some(NodeProcess::start(d))).collect();
        Cluster { names, dirs, procs, proxies, clients }
    }

    /// Three hot nodes with the CRM; c's links (both ways) have the `geo` profile: compressed
    /// frames and a batch window.
    fn hot(root: &Path) -> Cluster {
        let ports: Vec<u16> = HOT.iter().map(|_| free_port()).collect();
        let proxies = proxies(&ports);
        let mut dirs: Vec<PathBuf> = Vec::new();
        for (i, name) in HOT.iter().enumerate() {
            let peers: Vec<(String, String)> =
                (0..HOT.len()).filter(|j| *j != i).map(|j| (HOT[j].to_owned(), proxies[&(i, j)].addr().to_string())).collect();
            let def = NodeDef { name, port: ports[i], peers: peers.clone(), cluster: "mode = \"hot\"", extra: "" };
            let dir = write_cluster_node(root, &def, &["crm"], dirs.first().map(PathBuf::as_path));
            for (peer, address) in peers.iter().filter(|(peer, _)| *name == "c" || peer == "c") {
                let line = format!("name = \"{peer}\"\naddress = \"{address}\"\n");
                edit_config(&dir, &line, &format!("{line}profile = \"geo\"\n"));
            }
            dirs.push(dir);
        }
        Cluster::start(&HOT, dirs, proxies)
    }

    /// Data nodes a (primary) and b with warm trunks acknowledged by the standby, and witness w.
    fn warm(root: &Path) -> Cluster {
        let ports = [free_port(), free_port(), free_port()];
        let proxies = proxies(&ports);
        let index = |name: &str| WARM.iter().position(|n| *n == name).unwrap_or(2);
        let t = trio_on(root, ports, |from, to| proxies[&(index(from), index(to))].addr().to_string());
        Cluster::start(&WARM, vec![t.a, t.b, t.w], proxies)
    }

    fn up(&self, i: usize) -> bool {
        self.procs[i].is_some()
    }

    /// Node `i` may be replaced as the operations guide says: every node runs, and none of the
    /// others is rejoining itself (or still probing, as a replacement without the marker does
    /// first).
    fn replaceable(&self, i: usize) -> bool {
        (0..self.names.len()).all(|k| self.up(k))
            && (0..self.names.len()).filter(|k| *k != i).all(|k| {
                self.clients[k]
                    .status()
                    .ok()
                    .and_then(|s| s.replication)
                    .is_some_and(|r| r["failover"]["rejoining"] == false && r["failover"]["probing"] == false)
            })
    }

    fn both(&self, i: usize, j: usize, f: impl Fn(&FaultProxy)) {
        f(&self.proxies[&(i, j)]);
        f(&self.proxies[&(j, i)]);
    }

    fn heal(&mut self) {
        for p in self.proxies.values() {
            p.set_blocked(false);
            p.set_delay(0);
        }
        for i in 0..self.names.len() {
            if !self.up(i) {
                self.procs[i] = Some(NodeProcess::start(&self.dirs[i]));
            }
        }
    }

    /// Stops every process and fails if one of them panicked.
    fn check_logs(&mut self, context: &dyn Fn() -> String) {
        drop(self.procs.drain(..).collect::<Vec<_>>());
        for (dir, name) in self.dirs.iter().zip(self.names) {
            let text = std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
            assert!(!text.contains("panicked"), "{name} panicked:\n{text}\n{}", context());
        }
    }
}

/// One step of the schedule, as printed. At most one process is down at a time. `aim` percent of
/// the steps aim at `focus` when there is one (the node that takes writes).
fn step(c: &mut Cluster, rng: &mut Rng, focus: Option<usize>, aim: u64) -> String {
    let n = c.names.len();
    let i = match focus {
        Some(f) if rng.below(100) < aim => f,
        _ => rng.below(n as u64) as usize,
    };
    let j = (i + 1 + rng.below(n as u64 - 1) as usize) % n;
    let (x, y) = (c.names[i], c.names[j]);
    match rng.below(10) {
        0 if (0..n).all(|k| c.up(k)) => {
            if let Some(p) = c.procs[i].take() {
                p.kill();
            }
            format!("SIGKILL {x}")
        }
        1 if c.up(i) => {
            if let Some(p) = c.procs[i].take() {
                let status = p.terminate();
                assert!(status.success(), "{x} stopped with {status} on SIGTERM");
            }
            c.procs[i] = Some(NodeProcess::start(&c.dirs[i]));
            format!("SIGTERM {x}, start it again")
        }
        0..=2 if !c.up(i) => {
            c.procs[i] = Some(NodeProcess::start(&c.dirs[i]));
            format!("start {x} again")
        }
        2 if c.up(i) => {
            let ms = 200 + rng.below(1_300);
            if let Some(p) = &c.procs[i] {
                let pid = p.child.id().to_string();
                let signal = |s: &str| std::process::Command::new("kill").args([s, &pid]).status().map(|s| s.success());
                assert!(matches!(signal("-STOP"), Ok(true)), "SIGSTOP {x}");
                std::thread::sleep(Duration::from_millis(ms));
                assert!(matches!(signal("-CONT"), Ok(true)), "SIGCONT {x}");
            }
            format!("pause {x} for {ms} ms")
        }
        3 | 4 => {
            c.both(i, j, |p| p.set_blocked(true));
            format!("partition {x} | {y}")
        }
        5 => {
            c.both(i, j, |p| {
                p.set_blocked(false);
                p.set_delay(0);
            });
            format!("heal {x} - {y}")
        }
        6 => {
            let ms = 5 + rng.below(60);
            c.both(i, j, |p| p.set_delay(ms));
            format!("delay {x} - {y} by {ms} ms")
        }
        7 => {
            c.both(i, j, FaultProxy::cut);
            format!("cut {x} - {y}")
        }
        // Warm only: a node other than the one taking writes loses its server and is replaced
        // by an empty one (`tandem init --replaces`), as the operations guide says: one at a
        // time, while the two others run. Half the time without the rejoin marker (an operator
        // who forgot it): the new server learns from the others that it must rejoin.
        9 if focus.is_some_and(|f| f != i) && c.replaceable(i) => {
            if let Some(p) = c.procs[i].take() {
                p.kill();
            }
            let marker = replace_with_empty_server(&c.dirs[i]);
            let keep = rng.below(2) == 0;
            if !keep {
                std::fs::remove_file(&marker).expect("remove the rejoin marker");
            }
            c.procs[i] = Some(NodeProcess::start(&c.dirs[i]));
            format!("replace {x} by an empty server{}", if keep { "" } else { " without the rejoin marker" })
        }
        _ => {
            c.proxies[&(i, j)].corrupt_next();
            format!("corrupt a chunk {x} -> {y}")
        }
    }
}

/// Runs `steps` steps of the schedule of `seed`, then heals everything; returns the schedule.
/// `focus` names the node that `TANDEM_CHAOS_AIM` percent of the steps aim at (50 unless set),
/// if any.
fn schedule(c: &mut Cluster, seed: u64, steps: usize, focus: &dyn Fn(&Cluster) -> Option<usize>) -> Vec<String> {
    let aim = std::env::var("TANDEM_CHAOS_AIM").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(50).min(100);
    let mut rng = Rng(seed);
    let mut done = Vec::new();
    let started = Instant::now();
    for _ in 0..steps {
        let focus_now = focus(c);
        let what = step(c, &mut rng, focus_now, aim);
        eprintln!("chaos seed {seed} at {:>6} ms: {what}", started.elapsed().as_millis());
        done.push(what);
        std::thread::sleep(Duration::from_millis(150 + rng.below(350)));
    }
    c.heal();
    done
}

/// The cluster's directory: kept after the test (and printed) with `TANDEM_CHAOS_KEEP=1`, to read
/// the nodes' logs.
fn root() -> tempfile::TempDir {
    let mut root = tempfile::tempdir().expect("tempdir");
    if std::env::var_os("TANDEM_CHAOS_KEEP").is_some() {
        root.disable_cleanup(true);
        eprintln!("chaos: the nodes' directories are in {}", root.path().display());
    }
    root
}

fn seed_and_steps() -> (u64, usize) {
    let seed = std::env::var("TANDEM_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x0005_eedc_4a05);
    let steps = std::env::var("TANDEM_CHAOS_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(24);
    (seed, steps)
}

/// What the writers' logs say must hold after healing: keys present with a value, keys absent,
/// and notes per shared account.
struct Expected {
    present: BTreeMap<String, String>,
    absent: BTreeSet<String>,
    notes: BTreeMap<String, BTreeSet<String>>,
    acked: usize,
    unknown: usize,
}

fn expected(log: &[Done]) -> Expected {
    let mut e = Expected { present: BTreeMap::new(), absent: BTreeSet::new(), notes: BTreeMap::new(), acked: 0, unknown: 0 };
    // A key of one writer: its last operation decides, if acknowledged (an unknown one before
    // it was stamped earlier, by the same node, so it is superseded).
    let mut last: BTreeMap<&str, &Done> = BTreeMap::new();
    for d in log {
        if d.acked {
            e.acked += 1;
        } else {
            e.unknown += 1;
        }
        match &d.op {
            Op::Note(text) if d.acked => {
                e.notes.entry(d.key.clone()).or_default().insert(text.clone());
            }
            Op::Note(_) => {}
            Op::Put(_) | Op::Delete => {
                last.insert(&d.key, d);
            }
        }
    }
    for (key, d) in last {
        match (&d.op, d.acked) {
            (Op::Put(name), true) => {
                e.present.insert(key.to_owned(), name.clone());
            }
            (Op::Delete, true) => {
                e.absent.insert(key.to_owned());
            }
            _ => {}
        }
    }
    e
}

/// A node's records: key -> value and stamp (what every node must hold alike; a record's
/// `seq` and `origin` are the node's own).
type Records = BTreeMap<String, (serde_json::Value, StampView)>;

/// A node's records of `component`.
fn records(c: &Client, component: &str) -> Result<Records, String> {
    let all = c.list_all(component, "").map_err(|e| e.to_string())?;
    Ok(all.into_iter().map(|r| (r.key, (r.value, r.stamp))).collect())
}

fn open_conflicts(c: &Client, component: &str) -> Result<Vec<String>, String> {
    let mut ids: Vec<String> = c.conflicts(Some(component), false).map_err(|e| e.to_string())?.into_iter().map(|x| x.id).collect();
    ids.sort();
    Ok(ids)
}

fn digest_of(c: &Client, component: &str) -> Option<String> {
    c.status().ok()?.replication?["digests"][component].as_str().map(str::to_owned)
}

/// Waits until every client's node holds the same records and digest of `component`, and the
/// same open conflicts if `same_conflicts` (hot: every node lists every conflict; warm: an old
/// primary's writes that never left it are in its own queue only); returns the records.
fn converged(clients: &[Client], component: &str, same_conflicts: bool, context: &dyn Fn() -> String) -> Records {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let seen: Vec<Result<Records, String>> = clients.iter().map(|c| records(c, component)).collect();
        let digests: Vec<Option<String>> = clients.iter().map(|c| digest_of(c, component)).collect();
        let conflicts: Vec<Result<Vec<String>, String>> = clients.iter().map(|c| open_conflicts(c, component)).collect();
        let same = seen.iter().all(|s| s.is_ok() && s.as_ref().ok() == seen[0].as_ref().ok())
            && digests.iter().all(|d| d.is_some() && *d == digests[0])
            && (!same_conflicts || conflicts.iter().all(|x| x.is_ok() && x.as_ref().ok() == conflicts[0].as_ref().ok()));
        if same {
            return seen.into_iter().next().and_then(Result::ok).unwrap_or_default();
        }
        if Instant::now() > deadline {
            let sizes: Vec<String> =
                seen.iter().map(|s| s.as_ref().map_or_else(Clone::clone, |m| format!("{} records", m.len()))).collect();
            let maps: Vec<&Records> = seen.iter().filter_map(|s| s.as_ref().ok()).collect();
            let keys: BTreeSet<&String> = maps.iter().flat_map(|m| m.keys()).collect();
            let diff: Vec<String> = keys
                .into_iter()
                .filter(|k| maps.iter().any(|m| m.get(*k) != maps[0].get(*k)))
                .take(5)
                .map(|k| format!("{k}: {:?}", maps.iter().map(|m| m.get(k)).collect::<Vec<_>>()))
                .collect();
            panic!(
                "the nodes did not converge within {CONVERGE:?}: {sizes:?}, digests {digests:?}, conflicts {conflicts:?}, first differences {diff:#?}; {}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the writers had 50 more writes acknowledged (`acked` counts them) after the
/// healing: the cluster takes writes again.
fn takes_writes_again(acked: impl Fn() -> usize, context: &dyn Fn() -> String) {
    let (before, deadline) = (acked(), Instant::now() + CONVERGE);
    while acked() < before + 50 {
        assert!(Instant::now() < deadline, "the cluster took {} writes in the {CONVERGE:?} after healing; {}", acked() - before, context());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn context_of(seed: u64, schedule: &[String]) -> impl Fn() -> String {
    move || format!("seed {seed} (TANDEM_CHAOS_SEED={seed} replays it), schedule:\n  {}", schedule.join("\n  "))
}

#[test]
fn chaos_hot_nodes_under_a_random_fault_schedule_converge_with_every_acknowledged_write() {
    let (seed, steps) = seed_and_steps();
    let root = root();
    let mut cluster = Cluster::hot(root.path());
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..HOT.len()).map(|i| writer(i, cluster.clients[i].clone(), stop.clone(), seed, log.clone())).collect();
    let schedule = schedule(&mut cluster, seed, steps, &|_| None);
    let context = context_of(seed, &schedule);
    // Writes go on over healed links: every node takes them again.
    takes_writes_again(|| log.lock().map_or(0, |l| l.iter().filter(|d| d.acked).count()), &context);
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().expect("writer");
    }
    // Every link carries a write made after the healing.
    for (i, c) in cluster.clients.iter().enumerate() {
        c.put("crm", &account(900 + i), r#"{"kind": "account", "name": "after"}"#, None)
            .unwrap_or_else(|e| panic!("write on {} after healing: {e}; {}", HOT[i], context()));
    }
    let all = converged(&cluster.clients, "crm", true, &context);
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    let e = expected(&log);
    eprintln!("chaos seed {seed}: {} writes acknowledged, {} with an unknown outcome, {} records", e.acked, e.unknown, all.len());
    let docs: BTreeMap<&String, &serde_json::Value> = all.iter().map(|(key, (value, _))| (key, value)).collect();
    for (key, name) in &e.present {
        let doc = docs.get(key).unwrap_or_else(|| panic!("{key}: its acknowledged put ({name}) is missing; {}", context()));
        assert_eq!(doc["name"], name.as_str(), "{key}: the value of its last acknowledged put; {}", context());
    }
    for key in &e.absent {
        assert!(!docs.contains_key(key), "{key}: deleted (acknowledged) and there again: {:?}; {}", docs.get(key), context());
    }
    for (key, notes) in &e.notes {
        let doc = docs.get(key).unwrap_or_else(|| panic!("{key}: a shared account is missing; {}", context()));
        let have: BTreeSet<&str> = doc["notes"].as_array().into_iter().flatten().filter_map(|n| n["text"].as_str()).collect();
        let lost: Vec<&String> = notes.iter().filter(|n| !have.contains(n.as_str())).collect();
        assert!(lost.is_empty(), "{key}: acknowledged notes lost: {lost:?}; {}", context());
    }
    for (i, name) in HOT.iter().enumerate() {
        assert!(docs.contains_key(&account(900 + i)), "the write on {name} after healing did not arrive; {}", context());
    }
    cluster.check_logs(&context);
}

/// Writes new trunks to whichever data node takes writes; returns each key with whether it
/// was acknowledged.
fn warm_writer(clients: [Client; 2], stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<(String, bool)>>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut target = 0;
        let mut n = 0usize;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let key = format!("trunk-{n:05}");
            let doc = format!(r#"{{"host": "h{n}.carrier.example", "transport": "udp", "max_channels": 10}}"#);
            let acked = clients[target].put("trunks", &key, &doc, None).is_ok();
            if let Ok(mut l) = log.lock() {
                l.push((key, acked));
            }
            if !acked {
                // Not the primary, down, or without a lease: try the other node next.
                target = 1 - target;
                std::thread::sleep(Duration::from_millis(30));
            }
        }
    })
}

/// Polls a data node's health until stopped; records each epoch in which it said it takes writes.
fn watch_writable(client: Client, stop: Arc<AtomicBool>, epochs: Arc<Mutex<BTreeSet<u64>>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            if let Ok((_, h)) = client.health()
                && h.writes
                && let Ok(mut e) = epochs.lock()
            {
                e.insert(h.epoch);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

#[test]
fn chaos_warm_failover_under_a_random_fault_schedule_keeps_one_primary_per_epoch_and_every_acknowledged_write() {
    let (seed, steps) = seed_and_steps();
    let root = root();
    let mut cluster = Cluster::warm(root.path());
    let data = [cluster.clients[0].clone(), cluster.clients[1].clone()];
    tandem_tests::wait_until("a takes writes", CONVERGE, || writable(&data[0]));
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let writer = warm_writer(data.clone(), stop.clone(), log.clone());
    let epochs: [Arc<Mutex<BTreeSet<u64>>>; 2] = Default::default();
    let watchers: Vec<_> = (0..2).map(|i| watch_writable(data[i].clone(), stop.clone(), epochs[i].clone())).collect();
    let schedule = schedule(&mut cluster, seed, steps, &|c| (0..2).find(|i| c.up(*i) && writable(&c.clients[*i])));
    let context = context_of(seed, &schedule);
    let deadline = Instant::now() + CONVERGE;
    let primary = loop {
        if let Some(i) = (0..2).find(|i| writable(&data[*i])) {
            break i;
        }
        assert!(Instant::now() < deadline, "no data node takes writes {CONVERGE:?} after healing; {}", context());
        std::thread::sleep(Duration::from_millis(50));
    };
    takes_writes_again(|| log.lock().map_or(0, |l| l.iter().filter(|(_, acked)| *acked).count()), &context);
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    for w in watchers {
        w.join().expect("watcher");
    }
    let doc = r#"{"host": "after.carrier.example", "transport": "udp", "max_channels": 10}"#;
    data[primary].put("trunks", "after-healing", doc, None).unwrap_or_else(|e| panic!("write after healing: {e}; {}", context()));
    let all = converged(&data, "trunks", false, &context);
    assert!(all.contains_key("after-healing"), "{}", context());
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    let acked: Vec<&String> = log.iter().filter(|(_, a)| *a).map(|(k, _)| k).collect();
    eprintln!("chaos seed {seed}: {} writes acknowledged, {} refused or with an unknown outcome", acked.len(), log.len() - acked.len());
    let lost: Vec<&&String> = acked.iter().filter(|k| !all.contains_key(k.as_str())).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}; {}", context());
    let (on_a, on_b) = (epochs[0].lock().map(|e| e.clone()).unwrap_or_default(), epochs[1].lock().map(|e| e.clone()).unwrap_or_default());
    let shared: Vec<&u64> = on_a.intersection(&on_b).collect();
    assert!(shared.is_empty(), "a and b both took writes in epochs {shared:?} (a in {on_a:?}, b in {on_b:?}); {}", context());
    eprintln!("chaos seed {seed}: a took writes in epochs {on_a:?}, b in {on_b:?}");
    cluster.check_logs(&context);
}
