#!/usr/bin/env bash
# Scale-out check: Debian's nginx, running deploy/nginx.conf (ports and
# paths rewritten into a temp dir), in front of two netfly gateways with the
# built-in demo upstream, sharing one Debian redis-server as their resume
# store (`--resume-store redis://…`), all on free 127.0.0.1 ports.
#
#   bash deploy/scale-test.sh [path/to/netfly]      (default: cargo build, debug)
#
# 1. 200 WebSockets through nginx, one chat each, all at once: every chat
#    must end with `done` and its exact text; both gateways must have served
#    some (their /metrics netfly_chats_total{outcome="done"}).
# 2. One streamed POST /v1/chat/completions through nginx (SSE, [DONE]).
# 3. Resume across instances: a chat started through nginx, its socket
#    closed mid-answer, reconnects through nginx (wherever it lands), then
#    through two test-only nginx ports that each reach one gateway, so every
#    chat is resumed both on the instance running it and on the other one:
#    the text is exact (deploy/ws-resume.py hop).
# 4. Owner death: a chat running on gateway 1 (reached through its own
#    port); gateway 1 is SIGKILLed mid-answer and the chat resumed through
#    nginx (so on gateway 2): everything logged, then `upstream_broken`
#    within 10 s of the kill (deploy/ws-resume.py death).
# 5. 50 more WebSocket chats and two /v1 POSTs through nginx must all
#    succeed on gateway 2.
# Then the store's figures: Redis commands per frame (INFO commandstats)
# and memory per chat log (MEMORY USAGE).
# Everything it starts is stopped on exit (trap), by PID. Exits non-zero on
# any failure, with a summary and the logs' tails. Needs nginx, curl, the
# venv of scripts/install-deploy-deps.sh and scripts/install-redis.sh.
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
REDIS_SERVER="$(command -v redis-server || echo /usr/bin/redis-server)"
REDIS_CLI="$(command -v redis-cli || echo /usr/bin/redis-cli)"
[[ -x "$REDIS_SERVER" && -x "$REDIS_CLI" ]] || die "redis-server missing: run bash scripts/install-redis.sh"

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
REDIS_PID=""

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
    stop_pid "$REDIS_PID"
    if [[ $rc -ne 0 || $FAILED -ne 0 ]]; then
        for f in gw1.log gw2.log nginx-error.log netfly-error.log redis.log; do
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

# netfly_resumes_total{result="ok"} of the gateway on port $1.
resumes_ok() {
    curl -s --max-time 5 "http://127.0.0.1:$1/metrics" |
        awk '/^netfly_resumes_total\{result="ok"\}/ { print $2; found = 1 } END { if (!found) print 0 }'
}

# The shared resume store: a redis-server of our own, nothing persisted.
RPORT="$(free_port)"
cat >"$TMP/redis.conf" <<EOF
bind 127.0.0.1
port $RPORT
protected-mode yes
daemonize no
save ""
appendonly no
dir $TMP
logfile $TMP/redis.log
EOF
"$REDIS_SERVER" "$TMP/redis.conf" &
REDIS_PID=$!
up=0
for _ in $(seq 100); do
    if [[ "$("$REDIS_CLI" -p "$RPORT" ping 2>/dev/null)" == PONG ]]; then
        up=1
        break
    fi
    sleep 0.1
done
[[ $up == 1 ]] || die "redis-server did not answer on 127.0.0.1:$RPORT"
say "$("$REDIS_SERVER" --version | cut -d' ' -f1-3) on 127.0.0.1:$RPORT (pid $REDIS_PID)"

# Answers of a couple of seconds (30 ms a word), so that sockets can be
# closed mid-answer and a gateway killed while a chat runs.
GW_ARGS=(--bind 127.0.0.1:0 --upstream demo --demo-word-delay-ms 30 --trusted-proxies 127.0.0.1
    --resume-store "redis://127.0.0.1:$RPORT/0")
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
# Test-only: one more port per gateway, each reaching that gateway alone
# (the same WebSocket proxying as deploy/nginx.conf's /ws), so that a
# resume can be sent to the instance running a chat or to the other one.
N1PORT="$(free_port)"
N2PORT="$(free_port)"
[[ "$(tail -n 1 "$TMP/nginx.conf")" == "}" ]] || die "deploy/nginx.conf must end with the http block's closing brace"
sed -i '$d' "$TMP/nginx.conf"
for pair in "$N1PORT:$P1" "$N2PORT:$P2"; do
    cat >>"$TMP/nginx.conf" <<'EOF'
    server {
        listen 127.0.0.1:NPORT_HERE;
        location = /ws {
            proxy_pass http://127.0.0.1:GPORT_HERE;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 1h;
            proxy_buffering off;
        }
    }
EOF
    sed -i -e "s#NPORT_HERE#${pair%%:*}#" -e "s#GPORT_HERE#${pair##*:}#" "$TMP/nginx.conf"
done
echo "}" >>"$TMP/nginx.conf"
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

# ---- 3: resume across instances, through nginx
MAIN="ws://127.0.0.1:$NPORT/ws"
TO1="ws://127.0.0.1:$N1PORT/ws"
TO2="ws://127.0.0.1:$N2PORT/ws"
RESUMED_BEFORE=$(($(resumes_ok "$P1") + $(resumes_ok "$P2")))
for order in "1 2" "2 1" "1 2" "2 1"; do
    first="${order% *}"
    if [[ $first == 1 ]]; then route=("$MAIN" "$TO1" "$TO2"); else route=("$MAIN" "$TO2" "$TO1"); fi
    if ! HOP="$(timeout 60 "$PY" deploy/ws-resume.py hop "$MAIN" "${route[@]}")"; then
        die "phase 3: a resume across instances failed: $HOP"
    fi
    say "phase 3: started and resumed through nginx, then resumed on gateway $first and on the other: $HOP"
done
RESUMED=$(($(resumes_ok "$P1") + $(resumes_ok "$P2") - RESUMED_BEFORE))
[[ "$RESUMED" -eq 12 ]] || die "phase 3: expected 12 resumes, the gateways counted $RESUMED"
say "phase 3: 4 chats, 12 resumes (each chat resumed on the instance running it and on the other), every text exact"

# ---- 4: the instance running a chat dies mid-answer
say "phase 4: a chat on gateway 1; gateway 1 SIGKILLed mid-answer; resumed through nginx"
if ! DEATH="$(timeout 60 "$PY" deploy/ws-resume.py death "$TO1" "$MAIN" "$GW1_PID")"; then
    die "phase 4: the resumed chat did not end as it should: $DEATH"
fi
{ wait "$GW1_PID"; } 2>/dev/null || true
GW1_PID=""
say "phase 4: $DEATH"

# ---- 5: nginx keeps serving through the survivor
BEFORE2="$(done_count "$P2")"
say "phase 5: $AFTER_KILL more WebSockets through nginx"
if ! LOAD2="$(timeout 100 "$PY" deploy/ws-load.py "ws://127.0.0.1:$NPORT/ws" "$AFTER_KILL" "$ORIGIN")"; then
    die "phase 5: chats failed after gateway 1 died: $LOAD2"
fi
say "phase 5: $LOAD2"
for i in 1 2; do
    SSE="$(sse_once)" || die "phase 5: curl $i failed"
    [[ "$(grep '^data: ' <<<"$SSE" | tail -n1)" == "data: [DONE]" ]] || die "phase 5: POST $i did not finish: $SSE"
done
AFTER2="$(done_count "$P2")"
[[ $((AFTER2 - BEFORE2)) -eq $((AFTER_KILL + 2)) ]] ||
    die "phase 5: gateway 2 served $((AFTER2 - BEFORE2)) chats, expected $((AFTER_KILL + 2))"
REFUSED="$(grep -c 'connect() failed' "$TMP/netfly-error.log" 2>/dev/null || true)"
say "phase 5: gateway 2 served all $((AFTER2 - BEFORE2)) chats; nginx logged $REFUSED refused connect(s) to gateway 1 and passed them on"

# ---- the store's figures
STATS="$("$REDIS_CLI" -p "$RPORT" info commandstats | tr -d '\r')"
calls() {
    awk -F'[:=,]' -v c="cmdstat_$1" '$1 == c { print $3; found = 1 } END { if (!found) print 0 }' <<<"$STATS"
}
ALL_CALLS="$(awk -F'[:=,]' '/^cmdstat_/ { n += $3 } END { print n + 0 }' <<<"$STATS")"
MEM=0
NLOGS=0
while read -r key; do
    [[ -n "$key" ]] || continue
    m="$("$REDIS_CLI" -p "$RPORT" memory usage "$key" | tr -d '\r')"
    [[ "$m" =~ ^[0-9]+$ ]] || continue
    MEM=$((MEM + m))
    NLOGS=$((NLOGS + 1))
done < <("$REDIS_CLI" -p "$RPORT" --scan --pattern 'netfly:{*:log' | head -n 100)
say "store: $ALL_CALLS Redis commands: $(calls xadd) XADD (one per frame), $(calls set) SET, $(calls pexpire) PEXPIRE, $(calls del) DEL, $(calls evalsha) EVALSHA, $(calls xrange) XRANGE, $(calls xread) XREAD, $(calls publish) PUBLISH"
if [[ $NLOGS -gt 0 ]]; then
    say "store: $NLOGS chat logs sampled: $((MEM / NLOGS)) bytes each on average (MEMORY USAGE)"
fi

say "PASS: $SOCKETS WebSocket chats split $D1/$D2 across two gateways behind nginx; SSE through nginx; resumes exact on the owner and on the other instance; owner death ends the resumed chat upstream_broken; failover after a crash ($AFTER_KILL + 2 chats on the survivor)"
