#!/usr/bin/env bash
# Installs Debian `tinyproxy`, the forward proxy the proxy tests
# (tests/suite/proxy.rs) start on 127.0.0.1 with their own config file.
# Idempotent: does nothing when `tinyproxy` is already installed. Never
# leaves the package's system service running: the tests run their own
# foreground instance (`tinyproxy -d -c <conf>`) on a free port.
set -euo pipefail

have_tinyproxy() {
    command -v tinyproxy >/dev/null 2>&1 || [[ -x /usr/bin/tinyproxy ]] || [[ -x /usr/sbin/tinyproxy ]]
}

if have_tinyproxy; then
    echo "install-proxy: tinyproxy already present"
    exit 0
fi

bash "$(dirname "$0")/apt-install.sh" install-proxy tinyproxy

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
    SUDO="sudo"
fi

# The package may start a system service (port 8888); the tests never use
# it, so stop it and keep it from starting at boot.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet tinyproxy 2>/dev/null; then
    $SUDO systemctl stop tinyproxy || true
    $SUDO systemctl disable tinyproxy >/dev/null 2>&1 || true
elif command -v service >/dev/null 2>&1; then
    $SUDO service tinyproxy stop >/dev/null 2>&1 || true
fi
for pidfile in /run/tinyproxy/tinyproxy.pid /var/run/tinyproxy/tinyproxy.pid; do
    if [[ -s "$pidfile" ]]; then
        pid="$(cat "$pidfile")"
        if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
            $SUDO kill "$pid" || true
        fi
    fi
done

if ! have_tinyproxy; then
    echo "install-proxy: tinyproxy still missing after apt-get install" >&2
    exit 1
fi
echo "install-proxy: tinyproxy installed at $(command -v tinyproxy || echo /usr/bin/tinyproxy)"
