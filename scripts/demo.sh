#!/usr/bin/env bash
# The main job: builds what is needed and runs `tandem demo` on its embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-plugins.sh
cargo run --quiet -p tandem -- demo "$@"
