//! `tandem plugin check|describe|new`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::conformance::{CheckOptions, check};
use crate::plugin::{Limits, Runtime, RuntimeConfig};

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Check a plugin against the contract's laws with generated cases (exit 1 on failure).
    Check(CheckArgs),
    /// Print what a plugin declares: component, versions, examples.
    Describe(DescribeArgs),
    /// Create a new plugin crate that builds with one command.
    New(NewArgs),
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The plugin's .wasm file.
    pub file: PathBuf,
    /// Seed of the generated cases; a failure reproduces with the same seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Generated cases per law.
    #[arg(long, default_value_t = 200)]
    pub cases: usize,
    /// Fuel per call (default: the engine's default limit).
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DescribeArgs {
    /// The plugin's .wasm file.
    pub file: PathBuf,
    /// Print JSON, for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct NewArgs {
    /// Component name: lower-case letters, digits and dashes, e.g. `parking-lots`.
    pub name: String,
    /// Directory to create (default: ./NAME).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Path to the tandem-sdk crate (default: the SDK this tandem was built from).
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

pub fn run(cmd: PluginCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PluginCommand::Check(args) => run_check(args),
        PluginCommand::Describe(args) => run_describe(args),
        PluginCommand::New(args) => run_new(args),
    }
}

fn read_plugin(file: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("cannot read plugin file {}", file.display()))
}

fn run_check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let wasm = read_plugin(&args.file)?;
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let mut limits = Limits::default();
    if let Some(fuel) = args.fuel {
        limits.fuel = fuel;
    }
    let options = CheckOptions { seed: args.seed, cases: args.cases, limits };
    let report = check(&runtime, &wasm, &options).map_err(|e| anyhow::anyhow!("{e}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
        println!("{}", if report.passed() { "all laws hold" } else { "some laws FAILED" });
    }
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn run_describe(args: DescribeArgs) -> anyhow::Result<ExitCode> {
    let wasm = read_plugin(&args.file)?;
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let plugin = runtime.load(&args.file.display().to_string(), &wasm, Limits::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let info = plugin.info();
    if args.json {
        let examples: Vec<serde_json::Value> = info
            .examples
            .iter()
            .map(|e| {
                let input = serde_json::from_str::<serde_json::Value>(&e.input).unwrap_or(serde_json::Value::String(e.input.clone()));
                serde_json::json!({"key": e.key, "input": input})
            })
            .collect();
        let out = serde_json::json!({
            "component": info.component,
            "plugin_version": info.plugin_version,
            "schema_version": info.schema_version,
            "contract": format!("{}@{}", crate::plugin::CONTRACT_PACKAGE, plugin.contract()),
            "digest": format!("sha256:{}", plugin.digest()),
            "description": info.description,
            "shape": info.shape,
            "retention": info.retention.as_ref().map(|r| serde_json::json!({"max_age_ms": r.max_age_ms, "max_count": r.max_count})),
            "examples": examples,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("component:       {}", info.component);
        println!("plugin version:  {}", info.plugin_version);
        println!("schema version:  {}", info.schema_version);
        println!("contract:        {}@{}", crate::plugin::CONTRACT_PACKAGE, plugin.contract());
        println!("digest:          sha256:{}", plugin.digest());
        println!("shape:           {}", info.shape);
        println!("description:     {}", info.description);
        if let Some(r) = &info.retention {
            println!("retention:       max age {:?} ms, max count {:?}", r.max_age_ms, r.max_count);
        }
        println!("examples:");
        for e in &info.examples {
            println!("  {}: {}", e.key, e.input);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the SDK this binary was built from lives, if it is still there.
fn default_sdk() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("sdk");
    std::fs::canonicalize(p).ok().filter(|p| p.join("Cargo.toml").is_file())
}

fn run_new(args: NewArgs) -> anyhow::Result<ExitCode> {
    let name = args.name;
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if !valid {
        bail!("component name {name:?} must start with a letter and be 1 to 64 of a-z, 0-9 and -");
    }
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&name));
    if dir.exists() && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists and is not empty; choose another --dir", dir.display());
    }
    let sdk = match args.sdk.or_else(default_sdk) {
        Some(p) => std::fs::canonicalize(&p).with_context(|| format!("SDK path {} does not exist", p.display()))?,
        None => bail!("cannot find the tandem-sdk crate; pass --sdk PATH (the sdk/ directory of the Tandem source)"),
    };
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("creating {}", dir.display()))?;
    let crate_name = format!("tandem-plugin-{name}");
    let wasm_name = crate_name.replace('-', "_");
    let files = [
        ("Cargo.toml", template::cargo_toml(&crate_name, &sdk)),
        ("src/lib.rs", template::lib_rs(&name)),
        ("README.md", template::readme(&name, &wasm_name)),
        (".gitignore", "/target\n".to_owned()),
    ];
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("created {} ({crate_name})", dir.display());
    println!("next:");
    println!("  cd {}", dir.display());
    println!("  cargo test                                          # native tests of your schema");
    println!("  cargo build --release --target wasm32-wasip2         # -> target/wasm32-wasip2/release/{wasm_name}.wasm");
    println!("  tandem plugin check target/wasm32-wasip2/release/{wasm_name}.wasm");
    Ok(ExitCode::SUCCESS)
}

mod template {
    use std::path::Path;

    pub fn cargo_toml(crate_name: &str, sdk: &Path) -> String {
        format!(
            r#"[package]
name = "{crate_name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
tandem-sdk = {{ path = {sdk:?} }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "abort"

# A standalone crate, not part of any enclosing workspace.
[workspace]
"#,
            sdk = sdk.display().to_string()
        )
    }

    pub fn lib_rs(name: &str) -> String {
        let type_name: String = name
            .split('-')
            .map(|w| {
                let mut c = w.chars();
                c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
            })
            .collect();
        format!(
            r#"//! Tandem component plugin `{name}`.
//!
//! Each record is a JSON object whose fields merge one by one, last writer wins; `validate`
//! holds the component's rules. See the plugin guide for the other shapes (strict fields, sets,
//! append-only reports).

use serde::{{Deserialize, Serialize}};
use serde_json::json;
use tandem_sdk::record::{{RecordPlugin, RecordSchema}};
use tandem_sdk::{{Example, Host, Info, Violation}};

/// One record of the `{name}` component.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct {type_name} {{
    pub label: String,
    #[serde(default)]
    pub enabled: bool,
}}

impl RecordSchema for {type_name} {{
    fn info() -> Info {{
        Info {{
            component: "{name}".to_owned(),
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: 1,
            description: "Describe the component in one line".to_owned(),
            shape: String::new(),
            examples: vec![
                Example::new("first", json!({{"label": "First", "enabled": true}})),
                Example::new("second", json!({{"label": "Second"}})),
            ],
            retention: None,
        }}
    }}

    fn validate(&self, _key: &str, _host: &dyn Host) -> Vec<Violation> {{
        let mut v = Vec::new();
        if self.label.trim().is_empty() {{
            v.push(Violation::new("label", "required", "label must not be empty"));
        }}
        v
    }}
}}

/// The plugin: exported as the WebAssembly component's implementation.
pub type Plugin = RecordPlugin<{type_name}>;
tandem_sdk::export_plugin!(Plugin);

#[cfg(test)]
mod tests {{
    use super::*;
    use tandem_sdk::testing::{{NoHost, codes, write_violations}};

    #[test]
    fn accepts_a_valid_record() {{
        assert!(write_violations::<Plugin>("first", json!({{"label": "First"}}), &NoHost).is_empty());
    }}

    #[test]
    fn refuses_an_empty_label() {{
        let v = write_violations::<Plugin>("first", json!({{"label": " "}}), &NoHost);
        assert_eq!(codes(&v), vec![("/label".to_owned(), "required".to_owned())]);
    }}
}}
"#
        )
    }

    pub fn readme(name: &str, wasm_name: &str) -> String {
        format!(
            "# Tandem plugin `{name}`\n\n```sh\ncargo test\ncargo build --release --target wasm32-wasip2\ntandem plugin check target/wasm32-wasip2/release/{wasm_name}.wasm\n```\n\nThen register `target/wasm32-wasip2/release/{wasm_name}.wasm` for component `{name}` in each node's `tandem.toml` (the same file, and digest, on every node).\n"
        )
    }
}
