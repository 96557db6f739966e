//! The conformance kit passes every bundled plugin and catches a broken law.

use tandem::conformance::{CheckOptions, check};
use tandem_tests::{runtime, wasm};

#[test]
fn every_bundled_plugin_passes_the_kit() {
    let rt = runtime();
    let options = CheckOptions { cases: 60, ..CheckOptions::default() };
    for (name, bytes) in tandem::bundled::BUNDLED {
        let report = check(&rt, bytes, &options).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(report.passed(), "{name} fails the kit:\n{}", report.table());
        assert_eq!(report.component, *name);
        for call in ["serialize", "deserialize", "merge", "validate"] {
            let usage = report.usage.get(call).unwrap_or_else(|| panic!("{name}: no {call} calls"));
            assert!(usage.calls > 0 && usage.max_fuel > 0, "{name}: {call} usage is reported");
            assert!(
                usage.max_fuel < tandem::plugin::DEFAULT_FUEL / 10,
                "{name}: {call} used {} fuel, too close to the default",
                usage.max_fuel
            );
        }
    }
}

#[test]
fn the_kit_catches_a_non_commutative_merge_and_reproduces_it() {
    let rt = runtime();
    let options = CheckOptions { cases: 40, seed: 7, ..CheckOptions::default() };
    let broken = wasm("tandem_test_hostile_v2");
    let report = check(&rt, &broken, &options).expect("loads");
    assert!(!report.passed());
    let law = report.laws.iter().find(|l| l.law == "merge is commutative").expect("law present");
    assert!(law.failures > 0);
    let case = law.smallest_failure.clone().expect("a smallest case is shown");
    assert!(case.contains("merge(a,b)") && case.contains("merge(b,a)"), "{case}");
    assert!(report.table().contains("--seed 7"), "the table says how to reproduce");
    let again = check(&rt, &broken, &options).expect("loads");
    assert_eq!(again.laws.iter().find(|l| l.law == "merge is commutative").and_then(|l| l.smallest_failure.clone()), Some(case));
}

#[test]
fn the_well_behaved_hostile_plugin_passes() {
    // Version 1 of the same plugin has a commutative merge: the law failure above is real.
    let report = check(&runtime(), &wasm("tandem_test_hostile"), &CheckOptions { cases: 40, ..CheckOptions::default() }).expect("loads");
    assert!(report.passed(), "{}", report.table());
}
