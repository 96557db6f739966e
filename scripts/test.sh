#!/usr/bin/env bash
# Every test: builds the WebAssembly plugins, then runs the whole workspace's tests (engine unit
# tests, the SDK's, every plugin's native tests, and the integration suite in tests/integration).
set -euo pipefail
cd "$(dirname "$0")/.."
phase() { local name=$1; shift; local t0=$SECONDS; echo "== $name"; "$@"; echo "== $name took $((SECONDS - t0)) s"; }
phase "format check" cargo fmt --all --check
phase "build plugins (wasm32-wasip2)" bash scripts/build-plugins.sh
phase "build tests" bash -c 'cargo build --quiet -p tandem && cargo test --workspace --no-run --quiet'
phase "run tests" cargo test --workspace
