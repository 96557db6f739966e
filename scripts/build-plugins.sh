#!/usr/bin/env bash
# Builds every WebAssembly component the project needs: the bundled plugins in plugins/ and the
# hostile test plugins in tests/plugins/. Output: target/wasm32-wasip2/release/*.wasm
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "installing the wasm32-wasip2 target" >&2
  rustup target add wasm32-wasip2
fi
pkgs=()
for dir in plugins/*/ tests/plugins/*/; do
  [ -f "$dir/Cargo.toml" ] || continue
  name=$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$dir/Cargo.toml" | head -n1)
  pkgs+=(-p "$name")
done
cargo build --quiet --release --target wasm32-wasip2 "${pkgs[@]}"
