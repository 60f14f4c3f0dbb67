#!/usr/bin/env bash
# Builds and runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer) for
# ${FUZZ_SECONDS:-20} seconds each. Installs
# cargo-fuzz when it is missing. cargo-fuzz needs nightly; on a stable
# toolchain RUSTC_BOOTSTRAP=1 lets stable accept the nightly-only flags.
# Longer runs: see docs/SOAK.md ("Fuzzing").
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH="${FUZZ_SECONDS:-20}"
TARGETS=(sse_split chunk_decode client_frame framing_guard ws_frame_guard)

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi

cd fuzz
# -O: optimised with debug assertions; the address sanitizer stays on.
cargo fuzz build -O
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t"
    echo "== fuzz $t for ${SECONDS_EACH}s"
    log="$(mktemp)"
    status=0
    cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECONDS_EACH" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E "^#[0-9]+ +DONE|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb" "$log" || true
    if [ "$status" -ne 0 ]; then
        echo "fuzz target $t failed (exit $status):" >&2
        grep -E -A3 "panicked at" "$log" >&2 || true
        tail -40 "$log" >&2
        ls -l "artifacts/$t" 2>/dev/null >&2 || true
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
done
echo "fuzz: all targets ran ${SECONDS_EACH}s without a failure"
