#!/usr/bin/env bash
# Installs the Debian packages Ringfence needs to build and test, when they are missing:
#   protobuf-compiler  protoc, for the gRPC code generated at build time (etcd client)
#   libprotobuf-dev    the well-known .proto files protoc imports (google/protobuf/*.proto)
#   etcd-server        real etcd members started by the tests and the benchmark
#   openssl            the reference X.509 tool the identity tests check certificates with
#   gcc, libc6-dev     the sandbox suite builds its static workload (crates/test-util/progs/probe.c)
#   busybox-static     the demo images of `ringfence up`, and the sandbox benchmark's rootfs
#   bubblewrap, crun   the peers the sandbox benchmark is measured against
#   iproute2           `ip`, which creates a sandbox's veth pair (--net veth:...) and the
#                      network suite's namespaces
#   util-linux         `setpriv`, which runs a Workload API client under another uid in tests
#   curl               the HTTP client the mesh's end-to-end test calls through the proxies
#   nginx-light, wrk   the mesh benchmark's peer proxy pair and backend, and its load generator
# and, from PyPI, py-spiffe (`spiffe`), the Python SPIFFE Workload API client the identity
# tests talk to, securesystemslib, the DSSE reference implementation, and in-toto-attestation,
# the in-toto attestation framework's bindings (Statement v1, SLSA Provenance v1).
# With --build, only what building and `ringfence up` need (protoc and its .proto files, and
# the static busybox the demo images carry), for `scripts/up.sh`.
set -euo pipefail

build_only=false
[ "${1:-}" = "--build" ] && build_only=true

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
[ -x /bin/busybox ] || need+=(busybox-static)
if ! $build_only; then
{ command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ]; } || need+=(etcd-server)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
command -v crun >/dev/null 2>&1 || need+=(crun)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
fi

if [ "${#need[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}" >&2
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

$build_only && exit 0

py=()
python3 -c 'import spiffe' >/dev/null 2>&1 || py+=('spiffe==0.3.2')
python3 -c 'import securesystemslib' >/dev/null 2>&1 || py+=('securesystemslib[crypto]==1.6.0')
python3 -c 'import in_toto_attestation' >/dev/null 2>&1 || py+=('in-toto-attestation==0.9.3')
if [ "${#py[@]}" -gt 0 ]; then
  echo "installing from PyPI: ${py[*]}" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${py[@]}"
fi
