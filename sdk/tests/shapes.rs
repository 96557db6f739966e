//! Semantics of the SDK's merge shapes, natively: what concurrent writes on two nodes become.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tandem_sdk::append::{AppendPlugin, ReportSchema};
use tandem_sdk::record::{FieldKind, RecordPlugin, RecordSchema};
use tandem_sdk::testing::{NoHost, merge, put, put_err, read, stamp};
use tandem_sdk::{Example, Host, Info, Op, Plugin, Stored, Violation, WriteError};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    notes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<String>,
}

const STATUS: &[&str] = &["open", "doing", "done"];

impl RecordSchema for Doc {
    fn info() -> Info {
        Info {
            component: "docs".into(),
            plugin_version: "1.0.0".into(),
            schema_version: 1,
            description: String::new(),
            shape: String::new(),
            examples: vec![Example::new("a", json!({"name": "x"}))],
            retention: None,
        }
    }
    fn fields() -> &'static [(&'static str, FieldKind)] {
        &[("role", FieldKind::Strict), ("tags", FieldKind::Set), ("notes", FieldKind::Append), ("status", FieldKind::Rank(STATUS))]
    }
    fn validate(&self, _key: &str, _host: &dyn Host) -> Vec<Violation> {
        match self.size {
            Some(s) if s > 100 => vec![Violation::new("size", "range", "at most 100")],
            _ => Vec::new(),
        }
    }
}

type P = RecordPlugin<Doc>;

fn both_orders(a: &Stored, b: &Stored) -> Stored {
    let ab = merge::<P>("k", a, b);
    assert_eq!(ab, merge::<P>("k", b, a), "merge is commutative");
    ab
}

#[test]
fn concurrent_edits_of_different_fields_both_survive() {
    let base = put::<P>("k", json!({"name": "x", "size": 1}), None, &stamp(1, "a"));
    let on_a = put::<P>("k", json!({"name": "y", "size": 1}), Some(&base), &stamp(2, "a"));
    let on_b = put::<P>("k", json!({"name": "x", "size": 2}), Some(&base), &stamp(3, "b"));
    assert_eq!(read::<P>("k", &both_orders(&on_a, &on_b)), Some(json!({"name": "y", "size": 2})));
}

#[test]
fn concurrent_edits_of_one_field_go_to_the_later_stamp() {
    let base = put::<P>("k", json!({"name": "x"}), None, &stamp(1, "a"));
    let on_a = put::<P>("k", json!({"name": "from-a"}), Some(&base), &stamp(5, "a"));
    let on_b = put::<P>("k", json!({"name": "from-b"}), Some(&base), &stamp(5, "b"));
    // Same millisecond: the node name breaks the tie, the same way everywhere.
    assert_eq!(read::<P>("k", &both_orders(&on_a, &on_b)), Some(json!({"name": "from-b"})));
}

#[test]
fn a_delete_beats_older_updates_and_a_later_write_resurrects() {
    let base = put::<P>("k", json!({"name": "x", "size": 1}), None, &stamp(1, "a"));
    let deleted = P::serialize("k", Op::Delete, Some(&base.data), &stamp(10, "a")).expect("delete");
    assert!(deleted.tombstone);
    let older_update = put::<P>("k", json!({"name": "x", "size": 7}), Some(&base), &stamp(5, "b"));
    let m = both_orders(&deleted, &older_update);
    assert!(m.tombstone, "the update was stamped before the delete");
    assert_eq!(read::<P>("k", &m), None);
    let newer = put::<P>("k", json!({"name": "z"}), Some(&base), &stamp(20, "b"));
    let m = both_orders(&deleted, &newer);
    assert!(!m.tombstone);
    assert_eq!(read::<P>("k", &m), Some(json!({"name": "z"})), "only what was written after the delete comes back");
}

#[test]
fn concurrent_strict_changes_are_a_conflict_until_an_operator_writes() {
    let base = put::<P>("k", json!({"role": "agent"}), None, &stamp(1, "a"));
    let on_a = put::<P>("k", json!({"role": "admin"}), Some(&base), &stamp(2, "a"));
    let on_b = put::<P>("k", json!({"role": "supervisor"}), Some(&base), &stamp(3, "b"));
    let m = both_orders(&on_a, &on_b);
    let errs = P::validate("k", &m.data, &NoHost).expect_err("conflict");
    assert_eq!((errs[0].field.as_str(), errs[0].code.as_str()), ("/role", "conflict"));
    let shown = read::<P>("k", &m).expect("live");
    assert_eq!(shown["_conflicts"]["role"], json!(["admin", "supervisor"]));

    let resolved = put::<P>("k", json!({"role": "admin"}), Some(&m), &stamp(4, "b"));
    assert!(P::validate("k", &resolved.data, &NoHost).is_ok());
    // The resolution saw both values: merging it with either old side does not revive the other.
    let again = both_orders(&resolved, &on_a);
    assert_eq!(both_orders(&again, &on_b), again);
    assert_eq!(read::<P>("k", &again), Some(json!({"role": "admin"})));
}

#[test]
fn sets_are_add_wins_and_lists_append() {
    let base = put::<P>("k", json!({"tags": ["vip", "eu"], "notes": ["first"]}), None, &stamp(1, "a"));
    let removed = put::<P>("k", json!({"tags": ["eu"], "notes": ["first"]}), Some(&base), &stamp(2, "a"));
    let re_added = put::<P>("k", json!({"tags": ["vip", "eu", "new"], "notes": ["first", "second"]}), Some(&base), &stamp(3, "b"));
    let m = both_orders(&removed, &re_added);
    let doc = read::<P>("k", &m).expect("live");
    assert_eq!(doc["tags"], json!(["eu", "new"]), "vip was removed on a after it was seen; b's concurrent add was of 'new'");
    assert_eq!(doc["notes"], json!(["first", "second"]));

    // A concurrent add of an element the other side removed survives.
    let add_vip_again = put::<P>("k", json!({"tags": ["eu"], "notes": []}), Some(&base), &stamp(4, "b"));
    let add_vip_again = put::<P>("k", json!({"tags": ["eu", "vip"]}), Some(&add_vip_again), &stamp(5, "b"));
    let doc = read::<P>("k", &both_orders(&removed, &add_vip_again)).expect("live");
    assert_eq!(doc["tags"], json!(["eu", "vip"]));
}

#[test]
fn a_rank_field_only_moves_forward() {
    let base = put::<P>("k", json!({"status": "open"}), None, &stamp(1, "a"));
    let done = put::<P>("k", json!({"status": "done"}), Some(&base), &stamp(2, "a"));
    let doing = put::<P>("k", json!({"status": "doing"}), Some(&base), &stamp(3, "b"));
    assert_eq!(read::<P>("k", &both_orders(&done, &doing)).expect("live")["status"], json!("done"));
    match put_err::<P>("k", json!({"status": "open"}), Some(&done), &stamp(4, "a")) {
        WriteError::Invalid(v) => assert_eq!(v[0].code, "workflow"),
        other => panic!("{other:?}"),
    }
}

#[derive(Serialize, Deserialize)]
struct Event {
    what: String,
}

impl ReportSchema for Event {
    fn info() -> Info {
        Info {
            component: "events".into(),
            plugin_version: "1.0.0".into(),
            schema_version: 1,
            description: String::new(),
            shape: String::new(),
            examples: Vec::new(),
            retention: None,
        }
    }
}

type R = AppendPlugin<Event>;

#[test]
fn reports_are_written_once() {
    let first = tandem_sdk::testing::put::<R>("e1", json!({"what": "login"}), None, &stamp(1, "a"));
    let retry = tandem_sdk::testing::put::<R>("e1", json!({"what": "login"}), Some(&first), &stamp(2, "a"));
    assert_eq!(retry, first, "a retry is a no-op");
    match tandem_sdk::testing::put_err::<R>("e1", json!({"what": "logout"}), Some(&first), &stamp(3, "a")) {
        WriteError::Invalid(v) => assert_eq!(v[0].code, "immutable"),
        other => panic!("{other:?}"),
    }
    assert!(R::serialize("e1", Op::Delete, Some(&first.data), &stamp(4, "a")).is_err());

    let other = tandem_sdk::testing::put::<R>("e1", json!({"what": "logout"}), None, &stamp(5, "b"));
    let m = tandem_sdk::testing::merge::<R>("e1", &first, &other);
    assert_eq!(m, tandem_sdk::testing::merge::<R>("e1", &other, &first));
    assert_eq!(R::validate("e1", &m.data, &NoHost).expect_err("conflict")[0].code, "conflict");
    let resolved = tandem_sdk::testing::put::<R>("e1", json!({"what": "login"}), Some(&m), &stamp(6, "a"));
    assert!(R::validate("e1", &resolved.data, &NoHost).is_ok());
    let again = tandem_sdk::testing::merge::<R>("e1", &resolved, &other);
    assert!(R::validate("e1", &again.data, &NoHost).is_ok(), "the superseded version stays superseded");
}

/// xorshift: a small deterministic generator, so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn merge_laws_hold_over_random_histories() {
    let docs: Vec<Value> = vec![
        json!({"name": "a", "size": 1, "role": "x", "tags": ["1"], "notes": ["n1"], "status": "open"}),
        json!({"name": "b", "role": "y", "tags": ["1", "2"], "status": "doing"}),
        json!({"size": 3, "tags": [], "notes": ["n1", "n2"], "status": "done"}),
        json!({"name": "c", "role": "x"}),
    ];
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let nodes = ["a", "b", "c"];
        let mut states: Vec<Option<Stored>> = vec![None, None, None];
        let mut seen: Vec<Stored> = Vec::new();
        for t in 0..40u64 {
            let i = rng.below(3);
            let s = stamp(t * 3 + rng.below(3) as u64, nodes[i]);
            let prior = states[i].clone();
            let next = match rng.below(10) {
                0..=5 => {
                    P::serialize("k", Op::Put(docs[rng.below(docs.len())].to_string()), prior.as_ref().map(|p| p.data.as_slice()), &s).ok()
                }
                6 => P::serialize("k", Op::Delete, prior.as_ref().map(|p| p.data.as_slice()), &s).ok(),
                _ => {
                    let j = rng.below(3);
                    match (&states[i], &states[j]) {
                        (Some(x), Some(y)) => Some(merge::<P>("k", x, y)),
                        (None, y) => y.clone(),
                        (x, None) => x.clone(),
                    }
                }
            };
            if let Some(v) = next {
                seen.push(v.clone());
                states[i] = Some(v);
            }
        }
        for _ in 0..60 {
            let (a, b, c) = (&seen[rng.below(seen.len())], &seen[rng.below(seen.len())], &seen[rng.below(seen.len())]);
            assert_eq!(merge::<P>("k", a, a), *a, "idempotent (seed {seed})");
            assert_eq!(merge::<P>("k", a, b), merge::<P>("k", b, a), "commutative (seed {seed})");
            let left = merge::<P>("k", &merge::<P>("k", a, b), c);
            let right = merge::<P>("k", a, &merge::<P>("k", b, c));
            assert_eq!(left, right, "associative (seed {seed})");
        }
    }
}
