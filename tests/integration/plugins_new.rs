//! `tandem plugin new` makes a crate that builds to a working plugin with one command.

use std::process::Command;

use clap::Parser;
use tandem::conformance::{CheckOptions, check};

#[test]
fn a_new_plugin_builds_and_passes_the_kit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crate_dir = dir.path().join("parking-lots");
    let cli = tandem::cli::Cli::parse_from(["tandem", "plugin", "new", "parking-lots", "--dir", crate_dir.to_str().expect("utf-8 path")]);
    let code = tandem::cli::run(cli).expect("plugin new");
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    assert!(crate_dir.join("src/lib.rs").is_file());

    // Refuses to overwrite.
    let again = tandem::cli::Cli::parse_from(["tandem", "plugin", "new", "parking-lots", "--dir", crate_dir.to_str().expect("utf-8 path")]);
    let err = tandem::cli::run(again).expect_err("not empty");
    assert!(err.to_string().contains("not empty"), "{err}");

    // The one build command from the generated README.
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"])
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", dir.path().join("target"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "the new crate builds to WebAssembly");
    let wasm = std::fs::read(dir.path().join("target/wasm32-wasip2/release/tandem_plugin_parking_lots.wasm")).expect("component built");
    let report = check(&tandem_tests::runtime(), &wasm, &CheckOptions { cases: 30, ..CheckOptions::default() }).expect("loads");
    assert!(report.passed(), "{}", report.table());
    assert_eq!(report.component, "parking-lots");
}

#[test]
fn bad_names_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["Parking", "1lots", "lots_x", ""] {
        let cli = tandem::cli::Cli::parse_from(["tandem", "plugin", "new", name, "--dir", dir.path().join("x").to_str().expect("utf-8")]);
        let err = tandem::cli::run(cli).expect_err("bad name");
        assert!(err.to_string().contains("component name"), "{name}: {err}");
    }
}
