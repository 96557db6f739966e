//! The conformance kit: runs the production plugin runtime against a plugin and checks the laws of
//! the contract with generated cases.
//!
//! Cases are generated from the plugin's example inputs: the examples themselves, variants that
//! borrow fields from other examples or drop them, and histories of puts, deletes and merges on
//! three simulated nodes with advancing stamps. Everything derives from one seed, so a failure
//! reproduces with `--seed`. For each law the smallest failing case found is reported.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::plugin::{CallStats, Limits, LoadedPlugin, NoLookup, Op, PluginError, Runtime, Session, Stamp, Stored, WriteError, check_info};

/// How hard to look.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    pub seed: u64,
    /// Generated cases per law.
    pub cases: usize,
    pub limits: Limits,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { seed: 1, cases: 200, limits: Limits::default() }
    }
}

/// The outcome of one law.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LawResult {
    pub law: &'static str,
    pub cases: usize,
    pub failures: usize,
    /// The smallest failing case found, described for a person.
    pub smallest_failure: Option<String>,
}

/// Resources used by one kind of call.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CallUsage {
    pub calls: u64,
    pub max_fuel: u64,
    pub total_fuel: u64,
    pub max_memory: usize,
    pub max_micros: u64,
    pub total_micros: u64,
}

/// What `check` found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub component: String,
    pub plugin_version: String,
    pub digest: String,
    pub seed: u64,
    pub laws: Vec<LawResult>,
    pub usage: BTreeMap<&'static str, CallUsage>,
}

impl Report {
    /// Whether every law held.
    pub fn passed(&self) -> bool {
        self.laws.iter().all(|l| l.failures == 0)
    }

    /// A readable summary: one row per law, then resources per call.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "plugin {} {} (sha256:{}), seed {}", self.component, self.plugin_version, self.digest, self.seed);
        let _ = writeln!(s, "{:<40} {:>7} {:>9}  result", "law", "cases", "failures");
        for l in &self.laws {
            let _ = writeln!(s, "{:<40} {:>7} {:>9}  {}", l.law, l.cases, l.failures, if l.failures == 0 { "ok" } else { "FAILED" });
        }
        let _ = writeln!(s, "\n{:<12} {:>7} {:>12} {:>12} {:>12} {:>10}", "call", "calls", "fuel max", "fuel mean", "memory max", "µs max");
        for (call, u) in &self.usage {
            let mean = u.total_fuel.checked_div(u.calls).unwrap_or(0);
            let _ = writeln!(s, "{:<12} {:>7} {:>12} {:>12} {:>12} {:>10}", call, u.calls, u.max_fuel, mean, u.max_memory, u.max_micros);
        }
        for l in self.laws.iter().filter(|l| l.failures > 0) {
            let _ = writeln!(
                s,
                "\n{} failed ({} of {} cases). Smallest failing case (reproduce with --seed {}):",
                l.law, l.failures, l.cases, self.seed
            );
            let _ = writeln!(s, "{}", l.smallest_failure.as_deref().unwrap_or("(no detail)"));
        }
        s
    }
}

struct Law {
    name: &'static str,
    cases: usize,
    failures: usize,
    smallest: Option<(usize, String)>,
}

impl Law {
    fn new(name: &'static str) -> Self {
        Law { name, cases: 0, failures: 0, smallest: None }
    }

    fn pass(&mut self) {
        self.cases += 1;
    }

    fn fail(&mut self, size: usize, describe: impl FnOnce() -> String) {
        self.cases += 1;
        self.failures += 1;
        if self.smallest.as_ref().is_none_or(|(s, _)| size < *s) {
            self.smallest = Some((size, describe()));
        }
    }

    fn result(self) -> LawResult {
        LawResult { law: self.name, cases: self.cases, failures: self.failures, smallest_failure: self.smallest.map(|(_, d)| d) }
    }
}

/// Calls a plugin and accounts for the resources each call used.
struct Caller {
    plugin: Arc<LoadedPlugin>,
    session: Session,
    usage: BTreeMap<&'static str, CallUsage>,
}

impl Caller {
    fn new(plugin: &Arc<LoadedPlugin>) -> Result<Caller, PluginError> {
        Ok(Caller { plugin: plugin.clone(), session: plugin.session(Arc::new(NoLookup))?, usage: BTreeMap::new() })
    }

    fn account(&mut self, call: &'static str) {
        let CallStats { fuel, memory_peak, micros } = self.session.last_call();
        let u = self.usage.entry(call).or_default();
        u.calls += 1;
        u.max_fuel = u.max_fuel.max(fuel);
        u.total_fuel += fuel;
        u.max_memory = u.max_memory.max(memory_peak);
        u.max_micros = u.max_micros.max(micros);
        u.total_micros += micros;
    }

    fn serialize(&mut self, key: &str, op: &Op, prior: Option<&[u8]>, stamp: &Stamp) -> Result<Result<Stored, WriteError>, PluginError> {
        let r = self.session.serialize(key, op, prior, stamp);
        self.account("serialize");
        r
    }
    fn deserialize(&mut self, key: &str, data: &[u8]) -> Result<Result<Option<String>, String>, PluginError> {
        let r = self.session.deserialize(key, data);
        self.account("deserialize");
        r
    }
    fn merge(&mut self, key: &str, a: &[u8], b: &[u8]) -> Result<Result<Stored, String>, PluginError> {
        let r = self.session.merge(key, a, b);
        self.account("merge");
        r
    }
    fn validate(&mut self, key: &str, data: &[u8]) -> Result<Result<(), Vec<crate::plugin::Violation>>, PluginError> {
        let r = self.session.validate(key, data);
        self.account("validate");
        r
    }

    /// Replaces the session (after a failed call, the runtime already discarded the instance).
    fn fresh(&mut self) -> Result<(), PluginError> {
        self.session = self.plugin.session(Arc::new(NoLookup))?;
        Ok(())
    }
}

fn show(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.len() > 600 { format!("{}… ({} bytes)", &text[..text.floor_char_boundary(600)], bytes.len()) } else { text.into_owned() }
}

fn stamp(physical: u64, logical: u32, node: &str) -> Stamp {
    Stamp { physical: 1_700_000_000_000 + physical, logical, node: node.to_owned() }
}

/// Example-derived documents the plugin accepts for a key.
fn candidates(examples: &[(String, Value)], rng: &mut StdRng) -> Vec<Value> {
    let mut out: Vec<Value> = examples.iter().map(|(_, v)| v.clone()).collect();
    for (_, a) in examples {
        let Value::Object(a_map) = a else { continue };
        for (_, b) in examples {
            let Value::Object(b_map) = b else { continue };
            for (field, value) in b_map {
                if a_map.contains_key(field) && a_map.get(field) != Some(value) {
                    let mut m = a_map.clone();
                    m.insert(field.clone(), value.clone());
                    out.push(Value::Object(m));
                }
            }
        }
        for field in a_map.keys() {
            let mut m = a_map.clone();
            m.remove(field);
            out.push(Value::Object(m));
        }
    }
    // Keep the examples and a bounded random sample of variants.
    let n = examples.len();
    let mut variants = out.split_off(n.min(out.len()));
    while variants.len() > 48 {
        let i = rng.random_range(0..variants.len());
        variants.swap_remove(i);
    }
    out.extend(variants);
    out
}

/// Runs every check. Errors only if the plugin cannot be loaded at all.
pub fn check(runtime: &Arc<Runtime>, wasm: &[u8], options: &CheckOptions) -> Result<Report, PluginError> {
    let plugin = runtime.load("plugin", wasm, options.limits.clone())?;
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut caller = Caller::new(&plugin)?;
    let info = plugin.info().clone();
    let mut laws = Vec::new();

    // describe is well-formed and stable.
    let mut law = Law::new("describe is well-formed and stable");
    match (check_info(&info), caller.session.describe()) {
        (Ok(()), Ok(again)) if again == info && !info.examples.is_empty() => law.pass(),
        (Err(why), _) => law.fail(0, || why),
        (_, Err(e)) => law.fail(0, || e.to_string()),
        (Ok(()), Ok(again)) if again != info => law.fail(0, || "two describe() calls returned different values".to_owned()),
        _ => law.fail(0, || "describe() lists no example inputs; the kit needs at least one".to_owned()),
    }
    laws.push(law);

    let examples: Vec<(String, Value)> =
        info.examples.iter().filter_map(|e| serde_json::from_str(&e.input).ok().map(|v| (e.key.clone(), v))).collect();

    // Every example serializes and validates; deserialize after serialize round-trips.
    let mut serialize_law = Law::new("examples serialize and validate");
    let mut round_trip = Law::new("deserialize(serialize(x)) round-trips");
    for (i, (key, doc)) in examples.iter().enumerate() {
        let s = stamp(i as u64, 0, "n1");
        let input = doc.to_string();
        let stored = match caller.serialize(key, &Op::Put(input.clone()), None, &s) {
            Ok(Ok(stored)) => stored,
            other => {
                serialize_law.fail(input.len(), || format!("example {key}: {input}\nserialize answered {other:?}"));
                let _ = caller.fresh();
                continue;
            }
        };
        match caller.validate(key, &stored.data) {
            Ok(Ok(())) => serialize_law.pass(),
            other => serialize_law.fail(input.len(), || format!("example {key}: {input}\nvalidate answered {other:?}")),
        }
        let first = match caller.deserialize(key, &stored.data) {
            Ok(Ok(Some(json))) => json,
            other => {
                round_trip.fail(input.len(), || format!("example {key}: {input}\ndeserialize answered {other:?}"));
                continue;
            }
        };
        // Writing back what a reader saw changes nothing a reader sees.
        let again = caller
            .serialize(key, &Op::Put(first.clone()), Some(&stored.data), &stamp(i as u64 + 1, 0, "n2"))
            .ok()
            .and_then(Result::ok)
            .and_then(|s2| caller.deserialize(key, &s2.data).ok().and_then(Result::ok).flatten());
        let same = again.as_deref().and_then(|a| serde_json::from_str::<Value>(a).ok()) == serde_json::from_str::<Value>(&first).ok();
        if same {
            round_trip.pass();
        } else {
            round_trip.fail(input.len(), || format!("example {key}: {input}\nfirst read: {first}\nafter writing it back: {again:?}"));
        }
    }
    laws.push(serialize_law);
    laws.push(round_trip);

    // Versions from simulated histories on three nodes.
    let key = examples.first().map(|(k, _)| k.clone()).unwrap_or_else(|| "key".to_owned());
    let docs = candidates(&examples, &mut rng);
    let versions = histories(&mut caller, &key, &docs, &mut rng, options.cases);

    let mut comm = Law::new("merge is commutative");
    let mut assoc = Law::new("merge is associative");
    let mut idem = Law::new("merge is idempotent");
    let mut merge_ok = Law::new("merge accepts its own versions");
    if !versions.is_empty() {
        for _ in 0..options.cases {
            let a = &versions[rng.random_range(0..versions.len())];
            let b = &versions[rng.random_range(0..versions.len())];
            let c = &versions[rng.random_range(0..versions.len())];
            let size = a.data.len() + b.data.len() + c.data.len();
            let ab = caller.merge(&key, &a.data, &b.data);
            let ba = caller.merge(&key, &b.data, &a.data);
            match (&ab, &ba) {
                (Ok(Ok(x)), Ok(Ok(y))) if x == y => comm.pass(),
                _ => comm
                    .fail(size, || format!("a = {}\nb = {}\nmerge(a,b) = {:?}\nmerge(b,a) = {:?}", show(&a.data), show(&b.data), ab, ba)),
            }
            let aa = caller.merge(&key, &a.data, &a.data);
            match &aa {
                Ok(Ok(x)) if x == a => idem.pass(),
                _ => idem.fail(a.data.len(), || format!("a = {}\nmerge(a,a) = {:?}", show(&a.data), aa)),
            }
            let left = match &ab {
                Ok(Ok(x)) => caller.merge(&key, &x.data, &c.data),
                _ => {
                    merge_ok.fail(size, || format!("a = {}\nb = {}\nmerge answered {:?}", show(&a.data), show(&b.data), ab));
                    let _ = caller.fresh();
                    continue;
                }
            };
            merge_ok.pass();
            let right = match caller.merge(&key, &b.data, &c.data) {
                Ok(Ok(bc)) => caller.merge(&key, &a.data, &bc.data),
                other => other,
            };
            match (&left, &right) {
                (Ok(Ok(x)), Ok(Ok(y))) if x == y => assoc.pass(),
                _ => assoc.fail(size, || {
                    format!(
                        "a = {}\nb = {}\nc = {}\n(a·b)·c = {:?}\na·(b·c) = {:?}",
                        show(&a.data),
                        show(&b.data),
                        show(&c.data),
                        left,
                        right
                    )
                }),
            }
        }
    }
    laws.push(comm);
    laws.push(assoc);
    laws.push(idem);
    laws.push(merge_ok);

    // A delete and concurrent updates converge whatever the delivery order.
    let mut converge = Law::new("deletes and updates converge");
    for round in 0..options.cases.div_ceil(10) {
        let base = rng.random_range(0..1000u64) * 10;
        let Some(doc1) = docs.get(rng.random_range(0..docs.len().max(1))) else { break };
        let Some(doc2) = docs.get(rng.random_range(0..docs.len().max(1))) else { break };
        let start = caller.serialize(&key, &Op::Put(doc1.to_string()), None, &stamp(base, 0, "n1"));
        let Ok(Ok(start)) = start else { continue };
        let del = caller.serialize(&key, &Op::Delete, Some(&start.data), &stamp(base + 2, 0, "n2"));
        let upd = caller.serialize(&key, &Op::Put(doc2.to_string()), Some(&start.data), &stamp(base + 1 + (round as u64 % 3), 0, "n3"));
        let mut branches = vec![start.clone()];
        if let Ok(Ok(d)) = del {
            branches.push(d);
        }
        if let Ok(Ok(u)) = upd {
            branches.push(u);
        }
        let orders: Vec<Vec<usize>> = permutations(branches.len());
        let mut results = Vec::new();
        for order in &orders {
            let mut acc: Option<Stored> = None;
            for &i in order {
                acc = Some(match acc {
                    None => branches[i].clone(),
                    Some(x) => match caller.merge(&key, &x.data, &branches[i].data) {
                        Ok(Ok(m)) => m,
                        _ => x,
                    },
                });
            }
            results.push(acc);
        }
        let size: usize = branches.iter().map(|b| b.data.len()).sum();
        if results.windows(2).all(|w| w[0] == w[1]) {
            converge.pass();
        } else {
            converge.fail(size, || {
                let mut s = String::new();
                for (i, b) in branches.iter().enumerate() {
                    let _ = writeln!(s, "branch {i} = {}", show(&b.data));
                }
                for (o, r) in orders.iter().zip(&results) {
                    let _ = writeln!(s, "order {o:?} -> {}", r.as_ref().map(|x| show(&x.data)).unwrap_or_default());
                }
                s
            });
        }
    }
    laws.push(converge);

    // The same calls give byte-identical results in fresh instances, and a call's result does not
    // depend on what the instance served before.
    let script = call_script(&key, &docs, &versions, &mut rng, options.cases.min(100));
    let mut determinism = Law::new("fresh instances agree byte for byte");
    let mut history = Law::new("results do not depend on history");
    let first = run_script(&plugin, &script, None);
    let second = run_script(&plugin, &script, None);
    let mut order: Vec<usize> = (0..script.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let shuffled = run_script(&plugin, &script, Some(&order));
    for i in 0..script.len() {
        let size = script[i].size();
        if first[i] == second[i] {
            determinism.pass();
        } else {
            determinism.fail(size, || format!("call {:?}\nfirst instance: {}\nsecond instance: {}", script[i], first[i], second[i]));
        }
        if first[i] == shuffled[i] {
            history.pass();
        } else {
            history.fail(size, || format!("call {:?}\nin a fresh instance: {}\nafter other calls: {}", script[i], first[i], shuffled[i]));
        }
    }
    laws.push(determinism);
    laws.push(history);

    // Garbage gives errors, never traps.
    let mut garbage_law = Law::new("garbage is refused without trapping");
    let valid = versions.first().map(|v| v.data.clone()).unwrap_or_default();
    for g in garbage(&versions, &mut rng, options.cases) {
        let size = g.bytes.len();
        let results = [
            ("merge(garbage, valid)", caller.merge(&key, &g.bytes, &valid).map(|r| r.is_ok())),
            ("merge(valid, garbage)", caller.merge(&key, &valid, &g.bytes).map(|r| r.is_ok())),
            ("deserialize", caller.deserialize(&key, &g.bytes).map(|r| r.is_ok())),
            ("validate", caller.validate(&key, &g.bytes).map(|r| r.is_ok())),
            ("serialize(prior = garbage)", caller.serialize(&key, &Op::Delete, Some(&g.bytes), &stamp(1, 0, "n1")).map(|r| r.is_ok())),
            (
                "serialize(input = garbage)",
                caller
                    .serialize(&key, &Op::Put(String::from_utf8_lossy(&g.bytes).into_owned()), None, &stamp(1, 0, "n1"))
                    .map(|r| r.is_ok()),
            ),
        ];
        let mut bad = None;
        for (what, r) in results {
            match r {
                Err(e) => {
                    bad = Some(format!("{what} trapped: {e}"));
                    let _ = caller.fresh();
                }
                Ok(true) if g.must_refuse && what != "serialize(input = garbage)" && what != "serialize(prior = garbage)" => {
                    bad = Some(format!("{what} accepted bytes that are not a stored version"))
                }
                _ => {}
            }
        }
        match bad {
            None => garbage_law.pass(),
            Some(why) => garbage_law.fail(size, || format!("{} ({}): {}\n{why}", g.kind, size, show(&g.bytes))),
        }
    }
    laws.push(garbage_law);

    let usage = caller.usage;
    Ok(Report {
        component: info.component,
        plugin_version: info.plugin_version,
        digest: plugin.digest().to_owned(),
        seed: options.seed,
        laws: laws.into_iter().map(Law::result).collect(),
        usage,
    })
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n <= 1 {
        return vec![(0..n).collect()];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}

/// Puts, deletes and merges on three nodes; returns the distinct versions seen.
fn histories(caller: &mut Caller, key: &str, docs: &[Value], rng: &mut StdRng, steps: usize) -> Vec<Stored> {
    const NODES: [&str; 3] = ["n1", "n2", "n3"];
    let mut states: [Option<Stored>; 3] = [None, None, None];
    let mut clocks = [0u64; 3];
    let mut seen: Vec<Stored> = Vec::new();
    for step in 0..steps.max(30) {
        let i = rng.random_range(0..3);
        clocks[i] = clocks[i].max(step as u64) + rng.random_range(0..3u64);
        let s = stamp(clocks[i], rng.random_range(0..2u32), NODES[i]);
        let prior = states[i].as_ref().map(|p| p.data.clone());
        let roll = rng.random_range(0..100);
        let next = if roll < 55 && !docs.is_empty() {
            let doc = &docs[rng.random_range(0..docs.len())];
            caller.serialize(key, &Op::Put(doc.to_string()), prior.as_deref(), &s).ok().and_then(Result::ok)
        } else if roll < 70 {
            caller.serialize(key, &Op::Delete, prior.as_deref(), &s).ok().and_then(Result::ok)
        } else {
            let j = rng.random_range(0..3);
            match (&states[i], &states[j]) {
                (Some(a), Some(b)) => caller.merge(key, &a.data, &b.data).ok().and_then(Result::ok),
                (None, Some(b)) => Some(b.clone()),
                _ => None,
            }
        };
        if let Some(v) = next {
            if !seen.contains(&v) {
                seen.push(v.clone());
            }
            states[i] = Some(v);
        }
    }
    seen
}

#[derive(Clone, Debug)]
enum Call {
    Serialize(String, Op, Option<Vec<u8>>, Stamp),
    Deserialize(String, Vec<u8>),
    Merge(String, Vec<u8>, Vec<u8>),
    Validate(String, Vec<u8>),
}

impl Call {
    fn size(&self) -> usize {
        match self {
            Call::Serialize(_, op, prior, _) => prior.as_ref().map_or(0, Vec::len) + if let Op::Put(d) = op { d.len() } else { 0 },
            Call::Deserialize(_, d) | Call::Validate(_, d) => d.len(),
            Call::Merge(_, a, b) => a.len() + b.len(),
        }
    }
}

fn call_script(key: &str, docs: &[Value], versions: &[Stored], rng: &mut StdRng, n: usize) -> Vec<Call> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let version =
            |rng: &mut StdRng| versions.get(rng.random_range(0..versions.len().max(1))).map(|v| v.data.clone()).unwrap_or_default();
        let call = match i % 4 {
            0 => {
                let doc = docs.get(rng.random_range(0..docs.len().max(1))).map(|d| d.to_string()).unwrap_or_else(|| "{}".to_owned());
                let prior = if rng.random_bool(0.5) { Some(version(rng)) } else { None };
                Call::Serialize(key.to_owned(), Op::Put(doc), prior, stamp(i as u64, 0, "n1"))
            }
            1 => Call::Deserialize(key.to_owned(), version(rng)),
            2 => Call::Merge(key.to_owned(), version(rng), version(rng)),
            _ => Call::Validate(key.to_owned(), version(rng)),
        };
        out.push(call);
    }
    out
}

/// Runs the script (in `order`, or in order) in one fresh instance; returns each call's outcome as
/// text, indexed like the script.
fn run_script(plugin: &Arc<LoadedPlugin>, script: &[Call], order: Option<&[usize]>) -> Vec<String> {
    let mut out = vec![String::new(); script.len()];
    let mut session = match plugin.session(Arc::new(NoLookup)) {
        Ok(s) => s,
        Err(e) => return vec![e.to_string(); script.len()],
    };
    let default: Vec<usize> = (0..script.len()).collect();
    for &i in order.unwrap_or(&default) {
        out[i] = match &script[i] {
            Call::Serialize(k, op, prior, s) => format!("{:?}", session.serialize(k, op, prior.as_deref(), s)),
            Call::Deserialize(k, d) => format!("{:?}", session.deserialize(k, d)),
            Call::Merge(k, a, b) => format!("{:?}", session.merge(k, a, b)),
            Call::Validate(k, d) => format!("{:?}", session.validate(k, d)),
        };
    }
    out
}

struct Garbage {
    kind: &'static str,
    bytes: Vec<u8>,
    /// Random bytes can't be a stored version: accepting them is a failure too.
    must_refuse: bool,
}

fn garbage(versions: &[Stored], rng: &mut StdRng, n: usize) -> Vec<Garbage> {
    let mut out = vec![
        Garbage { kind: "empty", bytes: Vec::new(), must_refuse: true },
        Garbage { kind: "json null", bytes: b"null".to_vec(), must_refuse: true },
        Garbage { kind: "json array", bytes: b"[1,2,3]".to_vec(), must_refuse: true },
        Garbage { kind: "deep nesting", bytes: [vec![b'['; 100_000], vec![b']'; 100_000]].concat(), must_refuse: true },
    ];
    for i in 0..n.div_ceil(4) {
        let len = [1usize, 7, 64, 1000, 20_000][i % 5];
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes[..]);
        // Make sure it does not start like JSON.
        bytes[0] = 0xff;
        out.push(Garbage { kind: "random bytes", bytes, must_refuse: true });
        if let Some(v) = versions.get(rng.random_range(0..versions.len().max(1)))
            && v.data.len() > 1
        {
            let cut = rng.random_range(1..v.data.len());
            out.push(Garbage { kind: "truncated version", bytes: v.data[..cut].to_vec(), must_refuse: false });
            let mut flipped = v.data.clone();
            let at = rng.random_range(0..flipped.len());
            flipped[at] ^= 1 << rng.random_range(0..8);
            out.push(Garbage { kind: "bit-flipped version", bytes: flipped, must_refuse: false });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::permutations;

    #[test]
    fn permutations_are_complete() {
        assert_eq!(permutations(3).len(), 6);
        assert_eq!(permutations(1), vec![vec![0]]);
    }
}
