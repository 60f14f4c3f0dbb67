#!/usr/bin/env bash
# The performance benchmark (issue 6; results in docs/PERFORMANCE.md).
#
#   scripts/bench.sh                 # full set (a–e), 3 interleaved rounds, table on stdout
#   scripts/bench.sh --smoke         # seconds, tiny sizes, no targets (what .ci/run uses)
#   scripts/bench.sh --scenario a --rounds 5 --json
#
# Builds the release gateway and the load tool (package netfly-tools in
# tools/, a workspace member), raises the open-file limit
# (10,000 idle sockets need ~10,100 in each process) and runs
# target/release/netfly-bench with the arguments given. Loopback only; every
# run is bounded by --duration-limit (default 1800 s, smoke 120 s).
set -euo pipefail
cd "$(dirname "$0")/.."

# One invocation for both packages: one feature resolution, shared artifacts.
cargo build --release --locked -p netfly -p netfly-tools --bin netfly --bin netfly-bench >&2

# Soft limit up to the hard one (at most 65536); the tool also raises it itself.
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -gt 65536 ]; then hard=65536; fi
ulimit -n "$hard" 2>/dev/null || true

echo "# $(nproc) CPU(s): $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(uname -sr)" >&2
# The shared workspace target/, or wherever CARGO_TARGET_DIR puts it.
bin="${CARGO_TARGET_DIR:-target}/release"
exec "$bin/netfly-bench" --gateway-bin "$bin/netfly" "$@"
