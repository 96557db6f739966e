//! What the sandbox offers a plugin: the `tandem:plugin/host` lookup, inert stand-ins for the
//! WASI functions that compiled languages pull in for clocks, randomness and the environment,
//! and a trap for every other import.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{ResourceLimiter, Result as WtResult};

use super::Lookup;

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "plugin",
});

/// Calls to `host.lookup` allowed in one plugin call.
pub const MAX_LOOKUPS_PER_CALL: u32 = 10_000;

/// The per-instance state a plugin's store carries.
pub struct State {
    pub lookup: Arc<dyn Lookup>,
    pub lookups: u32,
    pub memory_cap: usize,
    /// Largest linear memory size of the instance so far.
    pub memory_peak: usize,
    /// Set when the memory cap refused a growth.
    pub memory_refused: bool,
}

impl tandem::plugin::types::Host for State {}

impl tandem::plugin::host::Host for State {
    fn lookup(&mut self, component: String, key: String) -> Option<String> {
        self.lookups = self.lookups.saturating_add(1);
        if self.lookups > MAX_LOOKUPS_PER_CALL {
            return None;
        }
        self.lookup.lookup(&component, &key)
    }
}

impl ResourceLimiter for State {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> WtResult<bool> {
        if desired > self.memory_cap {
            self.memory_refused = true;
            wasmtime::bail!("memory limit of {} bytes reached (asked for {desired})", self.memory_cap);
        }
        self.memory_peak = self.memory_peak.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> WtResult<bool> {
        Ok(desired <= 100_000)
    }
}

/// `wasi:clocks/wall-clock.datetime`. Plugins read the Unix epoch; stamps come from the engine.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower, wasmtime::component::Lift, Clone, Copy)]
#[component(record)]
struct Datetime {
    seconds: u64,
    nanoseconds: u32,
}

/// Adds the host lookup and the inert WASI stand-ins to `linker`.
pub fn add_to_linker(linker: &mut Linker<State>) -> WtResult<()> {
    Plugin::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;

    // Clocks read as zero and randomness as zero bytes, the same on every node and every call, so
    // a plugin whose language runtime seeds a hash map or reads the time still runs
    // deterministically.
    let mut wall = linker.instance("wasi:clocks/wall-clock@0.2.6")?;
    wall.func_wrap("now", |_, (): ()| -> WtResult<(Datetime,)> { Ok((Datetime { seconds: 0, nanoseconds: 0 },)) })?;
    wall.func_wrap("resolution", |_, (): ()| -> WtResult<(Datetime,)> { Ok((Datetime { seconds: 0, nanoseconds: 1 },)) })?;
    let mut mono = linker.instance("wasi:clocks/monotonic-clock@0.2.6")?;
    mono.func_wrap("now", |_, (): ()| -> WtResult<(u64,)> { Ok((0,)) })?;
    mono.func_wrap("resolution", |_, (): ()| -> WtResult<(u64,)> { Ok((1,)) })?;
    for name in ["wasi:random/random@0.2.6", "wasi:random/insecure@0.2.6"] {
        let mut random = linker.instance(name)?;
        random.func_wrap("get-random-bytes", |_, (len,): (u64,)| -> WtResult<(Vec<u8>,)> {
            let len = usize::try_from(len.min(1 << 20)).unwrap_or(0);
            Ok((vec![0u8; len],))
        })?;
        random.func_wrap("get-random-u64", |_, (): ()| -> WtResult<(u64,)> { Ok((0,)) })?;
    }
    linker
        .instance("wasi:random/insecure-seed@0.2.6")?
        .func_wrap("insecure-seed", |_, (): ()| -> WtResult<((u64, u64),)> { Ok(((0, 0),)) })?;
    let mut env = linker.instance("wasi:cli/environment@0.2.6")?;
    env.func_wrap("get-environment", |_, (): ()| -> WtResult<(Vec<(String, String)>,)> { Ok((Vec::new(),)) })?;
    env.func_wrap("get-arguments", |_, (): ()| -> WtResult<(Vec<String>,)> { Ok((Vec::new(),)) })?;
    env.func_wrap("initial-cwd", |_, (): ()| -> WtResult<(Option<String>,)> { Ok((None,)) })?;
    Ok(())
}
