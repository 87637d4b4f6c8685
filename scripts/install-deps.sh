#!/usr/bin/env bash
# Installs the Debian packages Ringfence needs to build and test, when they are missing:
#   protobuf-compiler  protoc, for the gRPC code generated at build time (etcd client)
#   etcd-server        real etcd members started by the tests and the benchmark
#   openssl            the reference X.509 tool the identity tests check certificates with
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
{ command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ]; } || need+=(etcd-server)
command -v openssl >/dev/null 2>&1 || need+=(openssl)

if [ "${#need[@]}" -eq 0 ]; then
  exit 0
fi
echo "installing Debian packages: ${need[*]}" >&2
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
