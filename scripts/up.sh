#!/usr/bin/env bash
# The main job: `ringfence up` with embedded defaults (data in ./.ringfence). Installs what
# building and the demo need on a fresh machine (protoc, busybox-static), builds the release
# binary, and runs it (as root, tasks run in the sandbox); extra arguments go to
# `ringfence up` (e.g. --once).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/install-deps.sh" --build
# One target directory per clone, outside it: repeat runs reuse the build, and two clones
# never share one (cargo would keep test binaries built in the other clone, with its paths).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ringfence-target/$(printf %s "$root" | sha256sum | cut -c1-12)}"
cargo build --release --locked --manifest-path "$root/Cargo.toml" -p ringfence-cli
exec "$CARGO_TARGET_DIR/release/ringfence" up "$@"
