#!/usr/bin/env bash
# Installs Debian `redis-server` (and `redis-tools`: redis-cli), the shared
# resume store the Redis tests (tests/suite/redis_store.rs) and
# deploy/scale-test.sh start on 127.0.0.1 with their own config file, on a
# free port. Idempotent: does nothing when redis-server is already there.
# Never leaves the package's system service running: the tests run their
# own foreground instances and stop them by PID.
set -euo pipefail

have_redis() {
    { command -v redis-server >/dev/null 2>&1 || [[ -x /usr/bin/redis-server ]]; } &&
        { command -v redis-cli >/dev/null 2>&1 || [[ -x /usr/bin/redis-cli ]]; }
}

if have_redis; then
    echo "install-redis: $(redis-server --version | cut -d' ' -f1-3) already present"
    exit 0
fi

bash "$(dirname "$0")/apt-install.sh" install-redis redis-server redis-tools

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
    SUDO="sudo"
fi

# The package may start a system service (port 6379); the tests never use
# it, so stop it and keep it from starting at boot.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
    $SUDO systemctl stop redis-server || true
    $SUDO systemctl disable redis-server >/dev/null 2>&1 || true
elif command -v service >/dev/null 2>&1; then
    $SUDO service redis-server stop >/dev/null 2>&1 || true
fi
for pidfile in /run/redis/redis-server.pid /var/run/redis/redis-server.pid; do
    if [[ -s "$pidfile" ]]; then
        pid="$(cat "$pidfile")"
        if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
            $SUDO kill "$pid" || true
        fi
    fi
done

if ! have_redis; then
    echo "install-redis: redis-server still missing after apt-get install" >&2
    exit 1
fi
echo "install-redis: $(redis-server --version | cut -d' ' -f1-3) installed"
