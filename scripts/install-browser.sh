#!/usr/bin/env bash
# Installs headless Chromium and its WebDriver (Debian packages `chromium`
# and `chromium-driver`) for the browser tests. Idempotent: does nothing when
# both binaries are already present.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver

if [[ -x "$CHROMIUM" && -x "$CHROMEDRIVER" ]]; then
    echo "install-browser: $CHROMIUM and $CHROMEDRIVER already present"
    exit 0
fi

bash "$(dirname "$0")/apt-install.sh" install-browser chromium chromium-driver

for bin in "$CHROMIUM" "$CHROMEDRIVER"; do
    if [[ ! -x "$bin" ]]; then
        echo "install-browser: $bin still missing after install" >&2
        exit 1
    fi
done
"$CHROMIUM" --version || true
"$CHROMEDRIVER" --version || true
