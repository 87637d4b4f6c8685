#!/usr/bin/env bash
# Runs the whole Ringfence test suite: installs the Debian packages it needs when missing
# (see scripts/install-deps.sh), then runs every test of the workspace with nextest.
# Extra arguments go to nextest, e.g. `scripts/test.sh -E 'binary(store_conformance)'`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# One target directory outside the clone: repeat runs and other clones reuse the build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ringfence-target}"

if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --locked --no-fail-fast "$@"
fi
echo "cargo-nextest not found; running cargo test instead" >&2
exec cargo test --workspace --locked --no-fail-fast "$@"
