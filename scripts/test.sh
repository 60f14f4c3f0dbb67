#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests
# need (headless Chromium + ChromeDriver for the browser tests), then the
# whole cargo test suite (unit, integration, browser).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-browser.sh
bash scripts/install-proxy.sh
bash scripts/install-deploy-deps.sh

# Two cores: one test binary, a few tests at a time.
cargo test --all-targets --locked -- --test-threads "${NETFLY_TEST_THREADS:-4}"

# Scale-out: nginx in front of two gateways, one killed mid-run.
bash deploy/scale-test.sh
