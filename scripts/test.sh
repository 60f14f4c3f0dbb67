#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests
# need (headless Chromium + ChromeDriver for the browser tests), then the
# whole cargo test suite of the workspace (the gateway's unit, integration,
# browser and Redis tests, and the unit tests of the bench tool in tools/).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-browser.sh
bash scripts/install-proxy.sh
bash scripts/install-redis.sh
bash scripts/install-deploy-deps.sh

# Two cores: one test binary, a few tests at a time.
# (RUST_TEST_THREADS, not --test-threads: the criterion bench target, run
# once in test mode by --all-targets, does not take libtest's flags.)
mkdir -p target
RUST_TEST_THREADS="${NETFLY_TEST_THREADS:-4}" cargo test --workspace --all-targets --locked 2>&1 | tee target/test-output.log

# Scale-out: nginx in front of two gateways sharing one Redis, resumes
# across them, one killed mid-answer.
bash deploy/scale-test.sh

# One closing line with the totals of every cargo test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' target/test-output.log
