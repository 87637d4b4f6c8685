#!/usr/bin/env bash
# Runs the whole Ringfence test suite: installs the Debian packages it needs when missing
# (see scripts/install-deps.sh), then runs every test of the workspace with nextest.
# Extra arguments go to nextest, e.g. `scripts/test.sh -E 'binary(store_conformance)'`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# One target directory per clone, outside it: repeat runs reuse the build, and two clones
# never share one (cargo would keep test binaries built in the other clone, with its paths).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ringfence-target/$(printf %s "$(pwd)" | sha256sum | cut -c1-12)}"

if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --locked --no-fail-fast "$@"
fi
echo "cargo-nextest not found; running cargo test instead" >&2
exec cargo test --workspace --locked --no-fail-fast "$@"
