//! `tandem demo`: Tandem at work on an embedded default.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use crate::plugin::{Limits, NoLookup, Op, Runtime, RuntimeConfig, Stamp};

#[derive(Args, Debug)]
pub struct DemoArgs {}

pub fn run(_args: DemoArgs) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::new(RuntimeConfig::default())?;
    println!("Loading {} bundled plugins", crate::bundled::BUNDLED.len());
    let mut loaded = Vec::new();
    for (name, wasm) in crate::bundled::BUNDLED {
        let started = Instant::now();
        let plugin = runtime.load(name, wasm, Limits::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
        println!(
            "  {:<34} {:>8}  contract {}  {:>6.1} ms  sha256:{}…",
            plugin.name(),
            plugin.info().plugin_version,
            plugin.contract(),
            started.elapsed().as_secs_f64() * 1000.0,
            &plugin.digest()[..12]
        );
        loaded.push(plugin);
    }
    let plugin = loaded.iter().find(|p| p.name() == "trunks").or(loaded.first()).context("no bundled plugin")?;
    let example = plugin.info().examples.first().context("the plugin has no example")?.clone();
    let mut session = plugin.session(Arc::new(NoLookup)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let err = |e: crate::plugin::PluginError| anyhow::anyhow!("{e}");
    println!("\nA {} record, key {:?}, written concurrently on two nodes:", plugin.name(), example.key);
    let base: serde_json::Value = serde_json::from_str(&example.input)?;
    let on_a = session
        .serialize(&example.key, &Op::Put(base.to_string()), None, &Stamp::new(1_000, 0, "node-a"))
        .map_err(err)?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    println!("  node-a serialize -> {} bytes ({} µs)", on_a.data.len(), session.last_call().micros);
    let mut changed = base.clone();
    if let Some(obj) = changed.as_object_mut() {
        if let Some((k, _)) = obj.iter().find(|(_, v)| v.is_u64()) {
            let k = k.clone();
            obj.insert(k, serde_json::json!(1));
        }
    }
    let on_b = session
        .serialize(&example.key, &Op::Put(changed.to_string()), Some(&on_a.data), &Stamp::new(1_005, 0, "node-b"))
        .map_err(err)?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    println!("  node-b serialize -> {} bytes ({} µs)", on_b.data.len(), session.last_call().micros);
    let merged = session.merge(&example.key, &on_a.data, &on_b.data).map_err(err)?.map_err(|e| anyhow::anyhow!(e))?;
    let merged_other = session.merge(&example.key, &on_b.data, &on_a.data).map_err(err)?.map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "  merge            -> {} bytes ({} µs); same in both orders: {}",
        merged.data.len(),
        session.last_call().micros,
        merged == merged_other
    );
    match session.validate(&example.key, &merged.data).map_err(err)? {
        Ok(()) => println!("  validate         -> ok ({} µs)", session.last_call().micros),
        Err(v) => println!("  validate         -> {} violation(s): {:?}", v.len(), v),
    }
    let doc = session.deserialize(&example.key, &merged.data).map_err(err)?.map_err(|e| anyhow::anyhow!(e))?;
    println!("  deserialize      -> {}", doc.unwrap_or_else(|| "(deleted)".to_owned()));
    Ok(ExitCode::SUCCESS)
}
