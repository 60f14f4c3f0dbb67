#!/usr/bin/env bash
# Installs what the browser tests need: headless Chromium and its WebDriver
# (Debian packages `chromium` and `chromium-driver`), and axe-core (the npm
# package pinned in tests/js/package-lock.json, installed with `npm ci`;
# Debian's `nodejs`/`npm` first if node is missing). Idempotent: does
# nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver
AXE=tests/js/node_modules/axe-core/axe.min.js

if [[ -x "$CHROMIUM" && -x "$CHROMEDRIVER" ]]; then
    echo "install-browser: $CHROMIUM and $CHROMEDRIVER already present"
else
    bash scripts/apt-install.sh install-browser chromium chromium-driver
    for bin in "$CHROMIUM" "$CHROMEDRIVER"; do
        if [[ ! -x "$bin" ]]; then
            echo "install-browser: $bin still missing after install" >&2
            exit 1
        fi
    done
    "$CHROMIUM" --version || true
    "$CHROMEDRIVER" --version || true
fi

# axe-core: reinstalled when missing or when the lock file is newer.
if [[ -f "$AXE" && "$AXE" -nt tests/js/package-lock.json ]]; then
    echo "install-browser: axe-core already installed ($AXE)"
else
    if ! command -v npm >/dev/null 2>&1; then
        bash scripts/apt-install.sh install-browser nodejs npm
    fi
    (cd tests/js && npm ci --no-audit --no-fund)
    if [[ ! -f "$AXE" ]]; then
        echo "install-browser: $AXE missing after npm ci" >&2
        exit 1
    fi
    touch "$AXE"
fi
