//! All bundled plugins in one engine, under a mixed workload from two threads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tandem::plugin::registry::{PluginSpec, Registry};
use tandem::plugin::{Limits, Lookup, Op, Stamp, Stored, WriteError};

/// (component, key) to the stored version and the JSON readers see.
type RecordMap = BTreeMap<(String, String), (Stored, Option<String>)>;

/// The records written so far, as the node's store would hold them.
#[derive(Default)]
struct Records(Mutex<RecordMap>);

impl Lookup for Records {
    fn lookup(&self, component: &str, key: &str) -> Option<String> {
        let map = self.0.lock().ok()?;
        map.get(&(component.to_owned(), key.to_owned())).and_then(|(_, json)| json.clone())
    }
}

#[test]
fn eighteen_plugins_serve_a_mixed_workload_in_one_engine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = tandem::bundled::write_all(dir.path()).expect("write plugins");
    assert_eq!(files.len(), 18, "every component of the seed is bundled");
    let registry = Registry::new(tandem_tests::runtime());
    for (name, path) in &files {
        registry.add(PluginSpec { component: name.clone(), path: path.clone(), digest: None, limits: Limits::default() }).expect(name);
    }
    let records = Arc::new(Records::default());

    // Every example of every component is accepted, in one pass, with no ordering help.
    for component in registry.components() {
        let plugin = registry.get(&component).expect("registered");
        let mut s = plugin.session(records.clone()).expect("session");
        for (i, ex) in plugin.info().examples.iter().enumerate() {
            let stored =
                s.serialize(&ex.key, &Op::Put(ex.input.clone()), None, &Stamp::new(1_000 + i as u64, 0, "node-a")).expect("no trap");
            let stored = stored.unwrap_or_else(|e| panic!("{component}/{}: {e:?}", ex.key));
            assert_eq!(s.validate(&ex.key, &stored.data).expect("no trap"), Ok(()), "{component}/{}", ex.key);
            let json = s.deserialize(&ex.key, &stored.data).expect("no trap").expect("readable");
            records.0.lock().expect("lock").insert((component.clone(), ex.key.clone()), (stored, json));
        }
    }

    // Two threads, each a share of the components: updates from node-a, concurrent writes from
    // node-b merged in both orders, deletes where the component allows them.
    let components = registry.components();
    let halves: Vec<Vec<String>> =
        vec![components.iter().step_by(2).cloned().collect(), components.iter().skip(1).step_by(2).cloned().collect()];
    let threads: Vec<_> = halves
        .into_iter()
        .map(|mine| {
            let (registry, records) = (registry.clone(), records.clone());
            std::thread::spawn(move || {
                let mut done = 0u32;
                for round in 0..6u64 {
                    for component in &mine {
                        let plugin = registry.get(component).expect("registered");
                        let mut s = plugin.session(records.clone()).expect("session");
                        let examples = plugin.info().examples.clone();
                        for (i, ex) in examples.iter().enumerate() {
                            let other = &examples[(i + 1 + round as usize) % examples.len()];
                            let prior = records.0.lock().expect("lock").get(&(component.clone(), ex.key.clone())).map(|(s, _)| s.clone());
                            let t = 10_000 + round * 100 + i as u64;
                            let a = s.serialize(
                                &ex.key,
                                &Op::Put(ex.input.clone()),
                                prior.as_ref().map(|p| p.data.as_slice()),
                                &Stamp::new(t, 0, "node-a"),
                            );
                            let b = s.serialize(
                                &ex.key,
                                &Op::Put(other.input.clone()),
                                prior.as_ref().map(|p| p.data.as_slice()),
                                &Stamp::new(t, 1, "node-b"),
                            );
                            let del =
                                s.serialize(&ex.key, &Op::Delete, prior.as_ref().map(|p| p.data.as_slice()), &Stamp::new(t, 2, "node-c"));
                            let a = a.expect("no trap").unwrap_or_else(|e| panic!("{component}/{}: {e:?}", ex.key));
                            let mut merged = a.clone();
                            for branch in [b.expect("no trap"), del.expect("no trap")] {
                                match branch {
                                    Ok(v) => {
                                        let m1 = s.merge(&ex.key, &merged.data, &v.data).expect("no trap").expect("merge");
                                        let m2 = s.merge(&ex.key, &v.data, &merged.data).expect("no trap").expect("merge");
                                        assert_eq!(m1, m2, "{component}/{}: merge is commutative", ex.key);
                                        merged = m1;
                                    }
                                    // Reports refuse a different second version and deletes; a
                                    // component with several record types (users, roles) refuses
                                    // another type's document under this key.
                                    Err(WriteError::Invalid(v)) => assert!(!v.is_empty()),
                                    Err(WriteError::Malformed(m)) => assert!(!m.is_empty()),
                                }
                            }
                            // Validation may report a conflict (strict fields, reports): never a trap.
                            let _ = s.validate(&ex.key, &merged.data).expect("no trap");
                            let json = s.deserialize(&ex.key, &merged.data).expect("no trap").expect("readable");
                            assert_eq!(
                                json.is_none(),
                                merged.tombstone,
                                "{component}/{}: tombstone flag matches the reader's view",
                                ex.key
                            );
                            records.0.lock().expect("lock").insert((component.clone(), ex.key.clone()), (merged, json));
                            done += 1;
                        }
                    }
                }
                done
            })
        })
        .collect();
    let total: u32 = threads.into_iter().map(|t| t.join().expect("worker")).sum();
    assert!(total > 200, "records processed: {total}");
    for status in registry.status() {
        assert_eq!(status.health.failures, 0, "{}: {}", status.component, status.health.last_failure);
        assert!(status.health.calls > 20, "{} served {} calls", status.component, status.health.calls);
    }
}
