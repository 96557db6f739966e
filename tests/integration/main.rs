//! All integration tests, in one binary (each test binary links wasmtime: one link, not many).

mod plugins_conformance;
mod plugins_reload;
mod plugins_sandbox;
