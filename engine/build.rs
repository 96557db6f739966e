//! Embeds the bundled component plugins (built to WebAssembly by `scripts/build-plugins.sh`).

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("engine/ is inside the workspace").to_path_buf();
    let wasm_dir = match std::env::var_os("TANDEM_WASM_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
            let target = if target.is_relative() { root.join(target) } else { target };
            target.join("wasm32-wasip2").join("release")
        }
    };
    println!("cargo:rerun-if-env-changed=TANDEM_WASM_DIR");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let plugins = root.join("plugins");
    println!("cargo:rerun-if-changed={}", plugins.display());
    let mut names: Vec<String> = std::fs::read_dir(&plugins)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().join("Cargo.toml").is_file())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut out =
        String::from("/// The bundled plugins: (directory name, WebAssembly component).\npub static BUNDLED: &[(&str, &[u8])] = &[\n");
    let mut missing = Vec::new();
    for name in &names {
        let file = wasm_dir.join(format!("tandem_plugin_{}.wasm", name.replace('-', "_")));
        println!("cargo:rerun-if-changed={}", file.display());
        if !file.is_file() {
            missing.push(file.display().to_string());
            continue;
        }
        let _ = writeln!(out, "    ({name:?}, include_bytes!({:?})),", file.display().to_string());
    }
    out.push_str("];\n");
    if !missing.is_empty() {
        panic!(
            "the bundled plugins are not built ({} missing, e.g. {}).\nBuild them first: `bash scripts/build-plugins.sh` (the README's commands do it for you).",
            missing.len(),
            missing[0]
        );
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out_dir.join("bundled.rs"), out).expect("write bundled.rs");
}
