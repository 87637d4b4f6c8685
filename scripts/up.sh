#!/usr/bin/env bash
# The main job: `ringfence up` with embedded defaults (data in ./.ringfence). Installs what
# building and the demo need on a fresh machine (protoc, busybox-static), builds the release
# binary, and runs it (as root, tasks run in the sandbox); extra arguments go to
# `ringfence up` (e.g. --once).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/install-deps.sh" --build
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ringfence-target}"
cargo build --release --locked --manifest-path "$root/Cargo.toml" -p ringfence-cli
exec "$CARGO_TARGET_DIR/release/ringfence" up "$@"
