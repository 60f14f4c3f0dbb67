#!/usr/bin/env bash
# Scale-out check: Debian's nginx, running deploy/nginx.conf (ports and
# paths rewritten into a temp dir), in front of two netfly gateways with the
# built-in demo upstream, all on free 127.0.0.1 ports.
#
#   bash deploy/scale-test.sh [path/to/netfly]      (default: cargo build, debug)
#
# 1. 200 WebSockets through nginx, one chat each, all at once: every chat
#    must end with `done` and its exact text; both gateways must have served
#    some (their /metrics netfly_chats_total{outcome="done"}).
# 2. One streamed POST /v1/chat/completions through nginx (SSE, [DONE]).
# 3. Gateway 1 is killed (SIGKILL, a crash): 50 more WebSocket chats and
#    two /v1 POSTs through nginx must all succeed on gateway 2.
# Everything it starts is stopped on exit (trap). Exits non-zero on any
# failure, with a summary and the logs' tails. Needs nginx, curl and the
# venv of scripts/install-deploy-deps.sh.
#
# Env: SCALE_SOCKETS (200), SCALE_AFTER_KILL (50), NETFLY_BIN, KEEP_TMP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

SOCKETS="${SCALE_SOCKETS:-200}"
AFTER_KILL="${SCALE_AFTER_KILL:-50}"
PY=target/pyenv/bin/python
BEGAN=$(date +%s)

say() { echo "scale-test: $*"; }
die() {
    echo "scale-test: FAIL: $*" >&2
    FAILED=1
    exit 1
}

[[ -x "$PY" ]] || die "$PY missing: run bash scripts/install-deploy-deps.sh"
NGINX="$(command -v nginx || true)"
[[ -n "$NGINX" ]] || NGINX=/usr/sbin/nginx
[[ -x "$NGINX" ]] || die "nginx missing: run bash scripts/install-deploy-deps.sh"
command -v curl >/dev/null || die "curl missing: run bash scripts/install-deploy-deps.sh"

BIN="${1:-${NETFLY_BIN:-}}"
if [[ -z "$BIN" ]]; then
    say "building the debug binary"
    cargo build --locked --quiet --bin netfly
    BIN="${CARGO_TARGET_DIR:-target}/debug/netfly"
fi
[[ -x "$BIN" ]] || die "gateway binary $BIN not found"

TMP="$(mktemp -d /tmp/netfly-scale.XXXXXX)"
chmod 755 "$TMP" # nginx workers (www-data) reach their temp dirs through it
FAILED=0
GW1_PID=""
GW2_PID=""
NGINX_PID=""

# Stops one process we started: TERM, up to 5 s, then KILL.
stop_pid() {
    local pid="$1"
    [[ -n "$pid" ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    stop_pid "$NGINX_PID"
    stop_pid "$GW1_PID"
    stop_pid "$GW2_PID"
    if [[ $rc -ne 0 || $FAILED -ne 0 ]]; then
        for f in gw1.log gw2.log nginx-error.log netfly-error.log; do
            if [[ -s "$TMP/$f" ]]; then
                echo "---- tail of $f" >&2
                tail -n 15 "$TMP/$f" >&2
            fi
        done
    fi
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then
        say "kept $TMP"
    else
        rm -rf "$TMP"
    fi
    say "finished in $(($(date +%s) - BEGAN)) s, exit $rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits for "listening on http://ADDR" in a gateway log; prints the port.
gateway_port() {
    local log="$1"
    for _ in $(seq 100); do
        local addr
        addr="$(grep -o 'listening on http://[0-9.:]*' "$log" 2>/dev/null | head -n1 || true)"
        if [[ -n "$addr" ]]; then
            echo "${addr##*:}"
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# netfly_chats_total{outcome="done"} of the gateway on port $1.
done_count() {
    curl -s --max-time 5 "http://127.0.0.1:$1/metrics" |
        awk '/^netfly_chats_total\{outcome="done"\}/ { print $2; found = 1 } END { if (!found) print 0 }'
}

GW_ARGS=(--bind 127.0.0.1:0 --upstream demo --demo-word-delay-ms 1 --trusted-proxies 127.0.0.1)
RUST_LOG=warn "$BIN" "${GW_ARGS[@]}" >"$TMP/gw1.log" 2>&1 &
GW1_PID=$!
RUST_LOG=warn "$BIN" "${GW_ARGS[@]}" >"$TMP/gw2.log" 2>&1 &
GW2_PID=$!
P1="$(gateway_port "$TMP/gw1.log")" || die "gateway 1 did not start"
P2="$(gateway_port "$TMP/gw2.log")" || die "gateway 2 did not start"
say "gateways on 127.0.0.1:$P1 (pid $GW1_PID) and 127.0.0.1:$P2 (pid $GW2_PID), binary $BIN"

NPORT="$(free_port)"
sed -e "s#listen 80;#listen 127.0.0.1:$NPORT;#" \
    -e "s#server 127.0.0.1:8081 #server 127.0.0.1:$P1 #" \
    -e "s#server 127.0.0.1:8082 #server 127.0.0.1:$P2 #" \
    -e "s#/run/#$TMP/#g" \
    -e "s#/var/log/nginx/#$TMP/#g" \
    -e "s#/var/lib/nginx/#$TMP/#g" \
    -e "/^worker_rlimit_nofile/d" \
    deploy/nginx.conf >"$TMP/nginx.conf"
if [[ "$(id -u)" -ne 0 ]] || ! id www-data >/dev/null 2>&1; then
    sed -i -e '/^user /d' "$TMP/nginx.conf"
fi
NGINX_ARGS=(-p "$TMP/" -c "$TMP/nginx.conf" -e "$TMP/nginx-error.log")
"$NGINX" "${NGINX_ARGS[@]}" -t -q || die "nginx rejected the config (see above)"
"$NGINX" "${NGINX_ARGS[@]}" -g 'daemon off;' &
NGINX_PID=$!
up=0
for _ in $(seq 100); do
    if curl -sf --max-time 2 "http://127.0.0.1:$NPORT/healthz" >/dev/null 2>&1; then
        up=1
        break
    fi
    sleep 0.1
done
[[ $up == 1 ]] || die "nginx did not answer on 127.0.0.1:$NPORT"
say "nginx $("$NGINX" -v 2>&1 | sed 's/.*\///') on 127.0.0.1:$NPORT (pid $NGINX_PID)"

ORIGIN="http://127.0.0.1:$NPORT"

# ---- 1: many WebSockets through nginx
say "phase 1: $SOCKETS WebSockets through nginx, one chat each"
if ! LOAD1="$(timeout 100 "$PY" deploy/ws-load.py "ws://127.0.0.1:$NPORT/ws" "$SOCKETS" "$ORIGIN")"; then
    die "phase 1: not every chat succeeded: $LOAD1"
fi
say "phase 1: $LOAD1"
D1="$(done_count "$P1")"
D2="$(done_count "$P2")"
say "phase 1: gateway 1 served $D1 chats, gateway 2 served $D2"
[[ "$D1" -gt 0 && "$D2" -gt 0 ]] || die "both gateways must serve chats (got $D1 and $D2)"
[[ $((D1 + D2)) -eq "$SOCKETS" ]] || die "expected $SOCKETS chats in all, got $((D1 + D2))"

# ---- 2: the OpenAI-compatible SSE endpoint through nginx
sse_once() {
    curl -sN --max-time 20 -H 'content-type: application/json' \
        -d '{"stream":true,"messages":[{"role":"user","content":"through nginx"}]}' \
        "http://127.0.0.1:$NPORT/v1/chat/completions"
}
SSE="$(sse_once)" || die "phase 2: curl failed"
CHUNKS="$(grep -c '^data: {' <<<"$SSE" || true)"
[[ "$(grep '^data: ' <<<"$SSE" | tail -n1)" == "data: [DONE]" ]] || die "phase 2: stream did not end with [DONE]: $SSE"
[[ "$CHUNKS" -gt 5 ]] || die "phase 2: only $CHUNKS chunks: $SSE"
say "phase 2: /v1/chat/completions streamed $CHUNKS chunks through nginx, then [DONE]"

# ---- 3: one gateway dies; nginx keeps serving through the other
BEFORE2="$(done_count "$P2")"
kill -KILL "$GW1_PID"
{ wait "$GW1_PID"; } 2>/dev/null || true
GW1_PID=""
say "phase 3: gateway 1 killed (SIGKILL); $AFTER_KILL more WebSockets through nginx"
if ! LOAD2="$(timeout 100 "$PY" deploy/ws-load.py "ws://127.0.0.1:$NPORT/ws" "$AFTER_KILL" "$ORIGIN")"; then
    die "phase 3: chats failed after gateway 1 died: $LOAD2"
fi
say "phase 3: $LOAD2"
for i in 1 2; do
    SSE="$(sse_once)" || die "phase 3: curl $i failed"
    [[ "$(grep '^data: ' <<<"$SSE" | tail -n1)" == "data: [DONE]" ]] || die "phase 3: POST $i did not finish: $SSE"
done
AFTER2="$(done_count "$P2")"
[[ $((AFTER2 - BEFORE2)) -eq $((AFTER_KILL + 2)) ]] ||
    die "phase 3: gateway 2 served $((AFTER2 - BEFORE2)) chats, expected $((AFTER_KILL + 2))"
REFUSED="$(grep -c 'connect() failed' "$TMP/netfly-error.log" 2>/dev/null || true)"
say "phase 3: gateway 2 served all $((AFTER2 - BEFORE2)) chats; nginx logged $REFUSED refused connect(s) to gateway 1 and passed them on"

say "PASS: $SOCKETS WebSocket chats split $D1/$D2 across two gateways behind nginx; SSE through nginx; failover after a crash ($AFTER_KILL + 2 chats on the survivor)"
