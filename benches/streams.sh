#!/usr/bin/env bash
# Many long streams, little memory (issue #16): N concurrent long-lived SSE streams through
# authgate and through nginx doing the same job, both measured in one run.
#
#   benches/streams.sh                                    # N=4000, about 3 minutes
#   STREAMS=10000 AUTHGATE_BIN=target/release/authgate benches/streams.sh > result.md  # RLIMIT_NOFILE >= 20256
#   CLIENT_PROTO=h2 H2_CONNS=40 benches/streams.sh      # the clients over HTTP/2 (h2c), 100 streams per connection
#
# Path: client (benches/streams/sse_clients.py, Python asyncio, HTTP/1.1, one connection per
# stream, `Authorization: Bearer KEY`) -> proxy -> upstream (benches/streams/sse_upstream.py,
# Python asyncio: 200, text/event-stream, chunked, one event of ~EVENT_BYTES bytes every
# INTERVAL s for DURATION s, then the end of the body). The proxies do the same job: check the
# API key (authgate: a key file made by `authgate keys add --file`; nginx: a `map` on the
# Authorization header with the same key), forward with a keep-alive upstream pool, no
# response buffering (nginx `proxy_buffering off`), access log off. Each proxy has its own
# upstream port, so neither meets the other's TIME_WAIT sockets.
#
# Per proxy, one after the other (the other proxy is stopped meanwhile):
#   1. idle RSS (VmRSS of /proc/PID/status) a few seconds after start and one sanity request;
#   2. N streams started evenly over RAMP s; peak RSS = the highest VmRSS sampled every 0.5 s
#      while the streams run (VmHWM is in the notes); per stream = (peak - idle) / N;
#   3. RSS 5, 15 and 30 s (AFTER) after the last stream ended;
#   4. CPU per forwarded event: utime+stime (/proc/PID/stat, all threads) from the first
#      connection to the last stream's end, over the events the client received (so stream
#      set-up, authentication and tear-down are included); the steady-state figure (all
#      streams open, events only, counted by the client on SIGUSR1) is in the notes;
#   5. time to first byte (request written to the first response byte, on a new connection
#      per stream, so the proxy's accept is included) of PROBES sequential short streams
#      while 0 and 999 other streams are open (TTFB_LEVELS "1 1000": concurrent streams, the
#      probe included), minus the same against the upstream directly on one kept-alive
#      connection (as the proxies reach it from their pools; a new connection per probe would
#      charge the baseline with Python's accept path, ~0.3 ms, and make the proxies look
#      free): the added p50 / p99.
#
# Pinning: the proxy under test on PROXY_CPU (authgate --threads THREADS, nginx one process
# with master_process off), the client and the upstream on LOAD_CPU. On a 2-core machine the
# client and the upstream share CPU 1 (check "client CPU" in the notes: near 100 % means the
# client, not the proxy, set the pace), and anything else running (builds) shares both.
#
# Knobs (environment):
#   STREAMS=4000        concurrent streams (each proxy holds 2 sockets per stream: the soft
#                       RLIMIT_NOFILE is raised to the hard limit, and the run refuses to start
#                       when 2*STREAMS+256 does not fit)
#   INTERVAL=2 DURATION=30 EVENT_BYTES=100   the upstream's stream (events per stream =
#                       ceil(DURATION/INTERVAL))
#   RAMP=               seconds over which the streams are opened (default STREAMS/1000, min 2)
#   AFTER="5 15 30"     RSS samples, seconds after the last stream ended
#   TTFB_LEVELS="1 1000"  PROBES=500   time-to-first-byte levels and probes per level
#   THREADS=1           authgate serve --threads (its runtime's worker threads)
#   UP_KEEPALIVE=512    nginx `keepalive` (idle upstream connections kept); authgate's pool
#                       keeps up to 512 idle connections per upstream (POOL_MAX_IDLE_PER_HOST)
#   SOURCES=4           client source addresses 127.0.0.2.. (ephemeral ports per address)
#   TARGETS="authgate nginx"
#   AUTHGATE_BIN=       the authgate binary; unset: `cargo build --release --locked`
#   PROXY_CPU=0 LOAD_CPU=1   KEEP_TMP=1 keeps the temp dir (configs, logs, JSON, smaps)
#   CLIENT_PROTO=h1     h1: HTTP/1.1, one connection per stream (sse_clients.py); h2: HTTP/2
#                       h2c prior knowledge, streams multiplexed over H2_CONNS connections
#   H2_CONNS=40         h2 only: client connections (STREAMS/H2_CONNS streams each, at most 256)
#
# Huge pages: authgate's allocator (mimalloc) asks for transparent huge pages for its heap
# (the kernel's THP mode "madvise" is enough), so its RSS moves in 2 MiB pages, and after the
# streams close khugepaged can collapse the freed, partly purged ranges back into whole huge
# pages: RSS then grows while authgate is idle. nginx (glibc malloc) uses none. The smaps
# notes give the share in huge pages; `MIMALLOC_ALLOW_THP=0 benches/streams.sh` (the
# environment reaches authgate) shows authgate's heap without them.
#
# HTTP/2 clients (CLIENT_PROTO=h2): the clients speak cleartext HTTP/2 with prior knowledge
# (h2c, no Upgrade) to the proxy, the upstream side stays HTTP/1.1 keep-alive. The client is
# h2load (Debian nghttp2-client, installed like the other tools): `h2load -n STREAMS
# -c H2_CONNS -m ceil(STREAMS/H2_CONNS)`, one request per stream, all streams of a connection
# opened at once, the connections started evenly over RAMP s (h2load --rate per 1 s). authgate
# serves h2c prior knowledge on its main listener (max_concurrent_streams 256); nginx gets
# `listen ... http2` (1.22: that port then speaks only HTTP/2) and
# `http2_max_concurrent_streams 256` (its default is 128). What differs from h1 mode:
#   - all N streams open at once is checked at the upstream (SIGUSR2: streams open now, and
#     the most open at once), not by the client: the row is INVALID if it never reaches N;
#   - h2load does not count events: a run is valid when every response is 200 and complete
#     (no reset, no timeout) and the DATA bytes received are exactly N times the bytes of one
#     stream's events, so events = N * ceil(DURATION/INTERVAL); the steady-state CPU figure
#     counts the events the upstream wrote in the window (SIGUSR2), not those received;
#   - no event delay; the ramp's TTFB is h2load's min / mean / max (no percentiles);
#   - the TTFB probes (TTFB_LEVELS) are skipped (they are HTTP/1.1, one connection each);
#   - the sanity requests use curl --http2-prior-knowledge (and must come back as HTTP/2).
#
# Output: markdown on stdout, progress on stderr. Exit status 1 when any stream failed (a run
# with failures is not a valid measurement: the row is marked INVALID).
set -euo pipefail

INVOKED_AS=$0
cd "$(dirname "$0")/.."
REPO_ROOT=$(pwd)
HERE=$REPO_ROOT/benches/streams

STREAMS=${STREAMS:-4000}
INTERVAL=${INTERVAL:-2}
DURATION=${DURATION:-30}
EVENT_BYTES=${EVENT_BYTES:-100}
RAMP=${RAMP:-$(awk -v n="$STREAMS" 'BEGIN { r = n / 1000; if (r < 2) r = 2; print r }')}
AFTER=${AFTER:-5 15 30}
TTFB_LEVELS=${TTFB_LEVELS:-1 1000}
PROBES=${PROBES:-500}
THREADS=${THREADS:-1}
UP_KEEPALIVE=${UP_KEEPALIVE:-512}
SOURCES=${SOURCES:-4}
TARGETS=${TARGETS:-authgate nginx}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
KEEP_TMP=${KEEP_TMP:-0}
CLIENT_PROTO=${CLIENT_PROTO:-h1}
H2_CONNS=${H2_CONNS:-40}

log() { printf '[streams.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- tools ----
need_pkg() { # need_pkg COMMAND DEBIAN_PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    [[ -x /usr/sbin/$1 ]] && return 0
    log "installing $2"
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    fi
}
need_pkg nginx nginx
need_pkg curl curl
need_pkg taskset util-linux
need_pkg ss iproute2
need_pkg python3 python3
[[ $CLIENT_PROTO == h1 || $CLIENT_PROTO == h2 ]] || die "CLIENT_PROTO must be h1 or h2, not '$CLIENT_PROTO'"
[[ $CLIENT_PROTO == h1 ]] || need_pkg h2load nghttp2-client
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

for cpu in "$PROXY_CPU" "$LOAD_CPU"; do
    taskset -c "$cpu" true 2>/dev/null || die "cannot pin to CPU $cpu (nproc=$(nproc)); set PROXY_CPU/LOAD_CPU"
done
[[ $PROXY_CPU != "$LOAD_CPU" ]] || log "warning: PROXY_CPU == LOAD_CPU, the proxy shares a CPU with the client and upstream"
[[ $STREAMS =~ ^[0-9]+$ ]] && ((STREAMS > 0)) || die "STREAMS must be a positive integer"
for lvl in $TTFB_LEVELS; do [[ $lvl =~ ^[1-9][0-9]*$ ]] || die "TTFB_LEVELS: $lvl is not a positive integer"; done
# PROBE_LEVELS: the TTFB levels actually measured (none with h2 clients: the probes are HTTP/1.1).
# PROXY_CURL: curl options for requests to the proxies' listeners.
PROBE_LEVELS=$TTFB_LEVELS
PROXY_CURL=()
NGX_HTTP2="" NGX_H2_CONF=""
if [[ $CLIENT_PROTO == h2 ]]; then
    [[ $H2_CONNS =~ ^[0-9]+$ ]] && ((H2_CONNS > 0)) || die "H2_CONNS must be a positive integer"
    ((H2_CONNS <= STREAMS)) || die "H2_CONNS=$H2_CONNS is more than STREAMS=$STREAMS"
    H2_PER_CONN=$(((STREAMS + H2_CONNS - 1) / H2_CONNS))
    ((H2_PER_CONN <= 256)) || die "STREAMS/H2_CONNS = $H2_PER_CONN streams per connection: authgate allows 256; raise H2_CONNS"
    PROBE_LEVELS=""
    PROXY_CURL=(--http2-prior-knowledge)
    NGX_HTTP2=" http2"
    NGX_H2_CONF="http2_max_concurrent_streams 256;"
fi

# Open files: every stream is one client socket and one upstream socket in the proxy.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
NEED_FILES=$((2 * STREAMS + 256))
if [[ $NOFILE != unlimited ]] && ((NOFILE < NEED_FILES)); then
    die "STREAMS=$STREAMS needs about $NEED_FILES open files in each proxy (a client and an upstream socket per stream, plus its own), but RLIMIT_NOFILE here is $NOFILE (hard limit $(ulimit -Hn)) and cannot be raised: run as root with CAP_SYS_RESOURCE (ulimit -n 65536), or in a container started with --ulimit nofile=65536, or use STREAMS<=$(((NOFILE - 256) / 2))"
fi
for lvl in $TTFB_LEVELS; do
    ((2 * lvl + 256 <= NOFILE)) || die "TTFB level $lvl does not fit RLIMIT_NOFILE $NOFILE"
done

CLK_TCK=$(getconf CLK_TCK)
EXPECT=$(awk -v d="$DURATION" -v i="$INTERVAL" 'BEGIN { n = d / i; e = int(n); if (e < n) e++; if (e < 1) e = 1; print e }')
to_us() { awk -v s="$1" 'BEGIN { printf "%d\n", s * 1000000 }'; }
RAMP_US=$(to_us "$RAMP")
DURATION_US=$(to_us "$DURATION")
# Steady-state window: from 1 s after the last stream opened to 1 s before the first one ends.
STEADY_US=$((DURATION_US - RAMP_US - 2000000))
SRC_ADDRS=$(seq -s, -f '127.0.0.%g' 2 $((SOURCES + 1)))
((SOURCES > 0)) || SRC_ADDRS=""

# ----------------------------------------------------- temp dir, cleanup ----
TMP=$(mktemp -d -t authgate-streams.XXXXXX)
PIDS=()
cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    [[ -z ${CLIENT_PID:-} ]] || PIDS+=("$CLIENT_PID")
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $KEEP_TMP == 1 ]]; then
        log "kept temp dir $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------------- ports ----
USED_PORTS=" "
free_port() { # sets PORT: free, below the ephemeral range
    local low p tries
    low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    ((low > 21000)) || low=61000
    for ((tries = 0; tries < 200; tries++)); do
        p=$((20000 + RANDOM % (low - 20000)))
        [[ $USED_PORTS == *" $p "* ]] && continue
        [[ -z $(ss -ltnH "( sport = :$p )") ]] || continue
        USED_PORTS+="$p "
        PORT=$p
        return 0
    done
    die "no free port found"
}

# --------------------------------------------------------------- helpers ----
proc_stat() { # proc_stat PID -> sets F: /proc/PID/stat fields from field 3 on
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    read -r -a F <<<"${stat##*) }"
}
alive() { proc_stat "$1" && [[ ${F[0]} != Z && ${F[0]} != X ]]; }
cpu_ticks() { alive "$1" || return 1; echo $((F[11] + F[12])); }
status_kb() { # status_kb PID FIELD (VmRSS, VmHWM) -> kB
    awk -v f="$2:" '$1 == f { print $2; found = 1 } END { exit !found }' "/proc/$1/status" 2>/dev/null
}
cpu_line() { # cpu_line CPU -> "BUSY TOTAL" ticks of that CPU from /proc/stat
    awk -v c="cpu$1" '$1 == c { busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6 }' /proc/stat
}
now_us() { echo "${EPOCHREALTIME/./}"; }
sleep_until_us() { # sleep_until_us EPOCH_US
    local rem=$(($1 - ${EPOCHREALTIME/./}))
    ((rem <= 0)) || sleep "$(printf '%d.%06d' $((rem / 1000000)) $((rem % 1000000)))"
}
jget() { # jget FILE PY_EXPR_ON_d: a value from a result JSON ("-" for None)
    python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
v = eval(sys.argv[2], {}, {"d": d})
print("-" if v is None else v)' "$1" "$2"
}
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

wait_http() { # wait_http URL PID NAME LOGFILE [HEADER [CURL_OPTION...]]: until URL answers 200, max 30 s
    local url=$1 pid=$2 name=$3 logfile=$4 hdr=${5:-X-Bench: 1} i
    shift $(($# < 5 ? $# : 5))
    for ((i = 0; i < 300; i++)); do
        if ! alive "$pid"; then
            log "$name exited during start-up; last log lines:"
            tail -n 30 "$logfile" >&2 || true
            die "$name failed to start"
        fi
        [[ $(curl "$@" -s -o /dev/null -w '%{http_code}' --max-time 2 -H "$hdr" "$url" || true) == 200 ]] && return 0
        sleep 0.1
    done
    tail -n 30 "$logfile" >&2 || true
    die "$name not ready at $url after 30 s"
}
stop_pid() { # stop_pid PID: TERM, then KILL after 5 s
    local i
    kill -TERM "$1" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive "$1" || break
        sleep 0.1
    done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# ------------------------------------------------------------- authgate ----
if [[ -n ${AUTHGATE_BIN:-} ]]; then
    BIN=$AUTHGATE_BIN
else
    log "building authgate (cargo build --release --locked)"
    cargo build --release --locked >&2
    BIN=$REPO_ROOT/target/release/authgate
fi
[[ -x $BIN ]] || die "authgate binary not found or not executable: $BIN"

API_KEY=$("$BIN" keys add --file "$TMP/keys.toml" --tenant t1 --scope api | sed -n 1p)
[[ $API_KEY == sgk_* ]] || die "authgate keys add printed no key: '$API_KEY'"

# ------------------------------------------------------------- upstream ----
free_port; UP_DIRECT=$PORT
free_port; UP_AUTHGATE=$PORT
free_port; UP_NGINX=$PORT
taskset -c "$LOAD_CPU" python3 "$HERE/sse_upstream.py" --port "$UP_DIRECT" --port "$UP_AUTHGATE" \
    --port "$UP_NGINX" --interval "$INTERVAL" --duration "$DURATION" --event-bytes "$EVENT_BYTES" \
    >"$TMP/upstream.log" 2>&1 &
UP_PID=$!
PIDS+=("$UP_PID")
wait_http "http://127.0.0.1:$UP_DIRECT/sse/stream?duration=0" "$UP_PID" upstream "$TMP/upstream.log"
log "upstream pid $UP_PID on :$UP_DIRECT (direct), :$UP_AUTHGATE (for authgate), :$UP_NGINX (for nginx), CPU $LOAD_CPU"

# --------------------------------------------------------------- proxies ----
start_authgate() { # sets PROXY_PID PROXY_PORT
    local admin
    free_port; PROXY_PORT=$PORT
    free_port; admin=$PORT
    cat >"$TMP/authgate.toml" <<TOML
[server]
listen = "127.0.0.1:$PROXY_PORT"
max_connections = $((STREAMS + 2000))

[admin]
listen = "127.0.0.1:$admin"

[log]
access_log = false

[api_keys]
file = "$TMP/keys.toml"

[[routes]]
name = "sse"
match = { path_prefix = "/sse/" }
upstream = "http://127.0.0.1:$UP_AUTHGATE"
auth = ["api_key"]
scopes = ["api"]
TOML
    "$BIN" check -c "$TMP/authgate.toml" >"$TMP/authgate-check.log" 2>&1 ||
        { cat "$TMP/authgate-check.log" >&2; die "authgate config invalid: $TMP/authgate.toml"; }
    taskset -c "$PROXY_CPU" "$BIN" serve -c "$TMP/authgate.toml" --log-level warn --threads "$THREADS" \
        >"$TMP/authgate.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_http "http://127.0.0.1:$admin/ready" "$PROXY_PID" authgate "$TMP/authgate.log"
}

start_nginx() { # sets PROXY_PID PROXY_PORT; one process (master_process off) = the worker
    local dir=$TMP/nginx
    mkdir -p "$dir"
    free_port; PROXY_PORT=$PORT
    cat >"$dir/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile $NOFILE;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    # 2 per stream; nginx starts closing connections that wait for their request ("worker
    # connections are not enough, reusing connections": the client sees EOF) as soon as
    # fewer than 1/16 are free, so keep that much headroom above 2 * STREAMS.
    worker_connections $((2 * STREAMS + STREAMS / 4 + 512));
}
http {
    access_log off;
    default_type text/plain;
    server_tokens off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream sse {
        server 127.0.0.1:$UP_NGINX;
        keepalive $UP_KEEPALIVE;
        keepalive_requests 1000000;
        keepalive_timeout 90s;
    }
    map_hash_bucket_size 128;
    map \$http_authorization \$api_key_ok {
        default 0;
        "Bearer $API_KEY" 1;
    }
    server {
        listen 127.0.0.1:$PROXY_PORT reuseport backlog=4096$NGX_HTTP2;
        $NGX_H2_CONF
        location /sse/ {
            if (\$api_key_ok = 0) { return 401; }
            proxy_pass http://sse;
            proxy_http_version 1.1;
            proxy_buffering off;
            proxy_read_timeout 1h;
            proxy_set_header Connection "";
            proxy_set_header Authorization "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Auth-Tenant-Id t1;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Request-Id \$request_id;
        }
    }
}
CONF
    "$NGINX" -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" || die "nginx config invalid: $dir/nginx.conf"
    taskset -c "$PROXY_CPU" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/stdout.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_http "http://127.0.0.1:$PROXY_PORT/sse/stream?duration=0" "$PROXY_PID" nginx "$dir/error.log" \
        "Authorization: Bearer $API_KEY" "${PROXY_CURL[@]}"
}

# ------------------------------------------------------------- measures ----
progress_events() { # progress_events CLIENT_PID FILE -> events the client has read so far
    local i ev
    rm -f "$2"
    kill -USR1 "$1" 2>/dev/null || return 1
    for ((i = 0; i < 200; i++)); do
        [[ -s $2 ]] && break
        sleep 0.01
    done
    [[ -s $2 ]] || return 1
    read -r ev _ <"$2"
    echo "$ev"
}

# up_stat: the upstream's SIGUSR2 line -> sets UP_OPEN (streams open now), UP_EVENTS (events
# written so far) and raises UP_RUNMAX to the most streams open at once since the last call
UP_RUNMAX=0
up_stat() {
    local n0 i line
    n0=$(grep -ac 'sse_upstream: now open' "$TMP/upstream.log" || true)
    kill -USR2 "$UP_PID" 2>/dev/null || return 1
    for ((i = 0; i < 300; i++)); do
        (($(grep -ac 'sse_upstream: now open' "$TMP/upstream.log" || true) > n0)) && break
        sleep 0.01
    done
    line=$(grep -a 'sse_upstream: now open' "$TMP/upstream.log" | tail -n 1)
    UP_OK=0
    [[ $line =~ now\ open\ ([0-9]+),\ max\ open\ since\ last\ ([0-9]+),\ events\ ([0-9]+) ]] || return 1
    UP_OPEN=${BASH_REMATCH[1]} UP_EVENTS=${BASH_REMATCH[3]}
    ((BASH_REMATCH[2] <= UP_RUNMAX)) || UP_RUNMAX=${BASH_REMATCH[2]}
    UP_OK=1
}
# events_now CLIENT_PID FILE -> events so far: received by the client (h1), or written by the
# upstream as of the up_stat call just made (h2; run in $(...), so it must not signal itself)
events_now() {
    if [[ $CLIENT_PROTO == h2 ]]; then
        ((UP_OK == 1)) || return 1
        echo "$UP_EVENTS"
    else
        progress_events "$@"
    fi
}

# h2_result NAME LOG -> JSON (stdout) from h2load's summary: streams, completed (2xx and the
# whole body), failed, events, ttfb, client CPU
h2_result() {
    python3 - "$STREAMS" "$EXPECT" "$EVENT_BYTES" "$2" "${H2_CLIENT_CPU:-0}" <<'PY'
import json, re, sys, time
n, expect, eb, log, ccpu = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
text = open(log, errors="replace").read()
pad = "x" * max(0, eb - 48)
# the upstream's event: `data: {"seq":K,"t":%.6f,"pad":".."}\n\n` (t has 10 integer digits)
per_stream = sum(len('data: {"seq":%d,"t":%.6f,"pad":"%s"}\n\n' % (k, 1765000000.0, pad)) for k in range(expect))
def grab(pat, default=None):
    m = re.search(pat, text)
    return m.groups() if m else default
req = grab(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout")
codes = grab(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
traffic = grab(r"traffic: .*?\((\d+)\) total, .*?\((\d+)\) headers .*?, .*?\((\d+)\) data")
ttfb = grab(r"time to 1st byte:\s+(\S+)\s+(\S+)\s+(\S+)")
reasons = {}
if req is None or codes is None or traffic is None:
    reasons["no h2load summary"] = n
    done = ok = 0
    data = 0
else:
    total, started, done, succeeded, failed, errored, timeout = map(int, req)
    ok = min(succeeded, int(codes[0]))
    data = int(traffic[2])
    for k, v in (("not started", n - started), ("failed", failed), ("errored", errored),
                 ("timeout", timeout), ("non-2xx", sum(map(int, codes[1:])))):
        if v:
            reasons[k] = v
    if data != ok * per_stream:
        reasons["DATA bytes %d != %d complete streams x %d" % (data, ok, per_stream)] = max(1, n - data // per_stream)
failed = n - ok if ok < n else 0
if not failed and reasons:
    failed = max(reasons.values())
exact = not reasons and ok == n
events = ok * expect if exact else int(round(data / (per_stream / expect)))
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)$", v)
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)] if m else None
print(json.dumps({
    "streams": n, "completed": ok, "failed": failed, "fail_reasons": reasons, "events": events,
    "events_exact": exact, "data_bytes": data, "expected_data_bytes": n * per_stream,
    "ttfb_ms": {"min": ms(ttfb[0]), "max": ms(ttfb[1]), "mean": ms(ttfb[2])} if ttfb else None,
    "client_cpu_share": ccpu}))
PY
}

# probe NAME PORT LEVEL [--reuse]: time to first byte with LEVEL-1 other streams open; sets
# TTFB_P50 TTFB_P99
probe() {
    local name=$1 port=$2 level=$3 bg=$(($3 - 1)) out=$TMP/$1-ttfb-$3.json rc=0
    shift 3
    taskset -c "$LOAD_CPU" python3 "$HERE/sse_clients.py" --mode probe --port "$port" --key "$API_KEY" \
        --path "/sse/stream?duration=0" --bg-path "/sse/stream?duration=3600" --background "$bg" \
        --ramp "$(awk -v n="$bg" 'BEGIN { r = n / 1000; if (r < 0.2) r = 0.2; print r }')" \
        --probes "$PROBES" --warmup 20 --expect-events 1 --sources "$SRC_ADDRS" --timeout 60 \
        --result "$out" "$@" 2>>"$TMP/$name-probe.log" &
    CLIENT_PID=$!
    wait "$CLIENT_PID" || rc=$?
    CLIENT_PID=
    if ((rc != 0)); then
        tail -n 20 "$TMP/$name-probe.log" >&2
        log "$name: TTFB probes at $level streams FAILED (see above): not a valid measurement"
        INVALID+=" $name(ttfb@$level)"
        TTFB_P50=- TTFB_P99=-
        return 0
    fi
    TTFB_P50=$(jget "$out" 'round(d["ttfb_ms"]["p50"], 3)')
    TTFB_P99=$(jget "$out" 'round(d["ttfb_ms"]["p99"], 3)')
    log "$(printf '%-8s TTFB with %5d streams open: p50 %s ms, p99 %s ms (%s probes)' "$name" "$level" "$TTFB_P50" "$TTFB_P99" "$PROBES")"
}

INVALID=""
declare -A R_MAXOPEN R_IDLE R_PEAK R_HWM R_PER R_AFTER R_CPU R_STEADY R_EVENTS R_DELAY R_CLIENT R_OTHER R_TTFB R_SMAPS R_FAIL R_OPEN R_TTFBSTREAM

# run_streams NAME PID PORT: the memory run of one proxy
run_streams() {
    local name=$1 pid=$2 port=$3 out=$TMP/$1.json rc=0
    local idle peak=0 r now open_at="" open_kb="" s0="" s0_t="" s1="" e0="" e1="" t0 t1 c0b c0t c1b c1t
    local prog=$TMP/$name.progress
    sleep 2
    idle=$(status_kb "$pid" VmRSS) || die "$name (pid $pid) is not running"
    cp "/proc/$pid/smaps_rollup" "$TMP/$name-smaps-idle.txt" 2>/dev/null || true
    R_IDLE[$name]=$idle
    log "$name idle RSS $(mb "$idle") MB; opening $STREAMS streams over $RAMP s"
    rm -f "$TMP/$name.open" "$prog"
    t0=$(cpu_ticks "$pid")
    read -r c0b c0t < <(cpu_line "$PROXY_CPU")
    local start_us cl_ticks=0 h2_rate h2_pid=""
    start_us=$(now_us)
    if [[ $CLIENT_PROTO == h2 ]]; then
        up_stat || die "no counters from the upstream (SIGUSR2)"
        UP_RUNMAX=$UP_OPEN
        # connections started evenly over RAMP s: h2_rate per 1 s, each opening its streams at once
        h2_rate=$(awk -v c="$H2_CONNS" -v r="$RAMP" 'BEGIN { x = c / r; if (x != int(x)) x = int(x) + 1; if (x < 1) x = 1; print x }')
        taskset -c "$LOAD_CPU" timeout $((${DURATION%.*} + ${RAMP%.*} + 90)) h2load -n "$STREAMS" -c "$H2_CONNS" \
            -m "$H2_PER_CONN" -t 1 -r "$h2_rate" --rate-period 1s -H "authorization: Bearer $API_KEY" \
            "http://127.0.0.1:$port/sse/stream" >"$TMP/$name-client.log" 2>&1 &
    else
        taskset -c "$LOAD_CPU" python3 "$HERE/sse_clients.py" --mode streams --port "$port" --key "$API_KEY" \
            --path /sse/stream --streams "$STREAMS" --ramp "$RAMP" --expect-events "$EXPECT" \
            --timeout $((${DURATION%.*} + 60)) --sources "$SRC_ADDRS" --open-file "$TMP/$name.open" \
            --progress-file "$prog" --result "$out" 2>"$TMP/$name-client.log" &
    fi
    CLIENT_PID=$!
    while alive "$CLIENT_PID"; do
        r=$(status_kb "$pid" VmRSS) || die "$name (pid $pid) died during the run; see $TMP"
        ((r <= peak)) || peak=$r
        now=$(now_us)
        if [[ $CLIENT_PROTO == h2 ]]; then
            # CLIENT_PID is timeout(1); h2load is its child
            [[ -n $h2_pid ]] || { read -r h2_pid _ <"/proc/$CLIENT_PID/task/$CLIENT_PID/children"; } 2>/dev/null || true
            [[ -z $h2_pid ]] || cl_ticks=$(cpu_ticks "$h2_pid" || echo "$cl_ticks")
            up_stat || true
            if [[ -z $open_at ]] && ((UP_RUNMAX >= STREAMS)); then
                open_at=$now open_kb=$r
                log "$name: all $STREAMS streams open at the upstream ($(awk -v d=$((now - start_us)) 'BEGIN { printf "%.2f", d / 1e6 }') s after the client started); RSS $(mb "$r") MB"
            fi
        elif [[ -z $open_at && -s $TMP/$name.open ]]; then
            open_at=$now open_kb=$r
            log "$name: all $STREAMS streams answered ($(jget "$TMP/$name.open" 'round(d["since_start_s"], 2)') s after the first); RSS $(mb "$r") MB"
        fi
        if [[ -n $open_at && -z $s0 ]] && ((STEADY_US > 0 && now >= open_at + 1000000)); then
            if e0=$(events_now "$CLIENT_PID" "$prog"); then s0=$(cpu_ticks "$pid") s0_t=$(now_us); fi
        fi
        if [[ -n $s0 && -z $s1 ]] && ((now >= s0_t + STEADY_US)); then
            if e1=$(events_now "$CLIENT_PID" "$prog"); then
                s1=$(cpu_ticks "$pid")
                cp "/proc/$pid/smaps_rollup" "$TMP/$name-smaps-peak.txt" 2>/dev/null || true
            fi
        fi
        sleep 0.5
    done
    wait "$CLIENT_PID" || rc=$?
    CLIENT_PID=
    local close_us
    close_us=$(now_us)
    t1=$(cpu_ticks "$pid") || die "$name (pid $pid) died during the run"
    read -r c1b c1t < <(cpu_line "$PROXY_CPU")
    R_HWM[$name]=$(status_kb "$pid" VmHWM)
    if [[ $CLIENT_PROTO == h2 ]]; then
        up_stat || true
        H2_CLIENT_CPU=$(awk -v t="$cl_ticks" -v hz="$CLK_TCK" -v d=$((close_us - start_us)) 'BEGIN { printf "%.3f", (d > 0 ? t / hz / (d / 1e6) : 0) }')
        h2_result "$name" "$TMP/$name-client.log" >"$out" || die "$name: cannot read h2load's summary in $TMP/$name-client.log"
        ((rc != 0)) || [[ $(jget "$out" 'd["failed"]') == 0 ]] || rc=1
        R_MAXOPEN[$name]=$UP_RUNMAX
        if ((UP_RUNMAX < STREAMS)); then
            log "$name: at most $UP_RUNMAX of $STREAMS streams were open at the upstream at once"
            rc=1
        fi
    fi
    [[ -s $out ]] || { tail -n 30 "$TMP/$name-client.log" >&2; die "$name: the client wrote no result"; }
    if ((rc != 0)); then
        tail -n 30 "$TMP/$name-client.log" >&2
        log "$name: $(jget "$out" 'd["failed"]') streams FAILED ($(jget "$out" 'd["fail_reasons"]')): NOT A VALID MEASUREMENT"
        INVALID+=" $name"
    fi
    R_FAIL[$name]=$(jget "$out" 'd["failed"]')
    R_EVENTS[$name]=$(jget "$out" 'd["events"]')
    R_PEAK[$name]=$peak
    R_OPEN[$name]=${open_kb:--}
    R_PER[$name]=$(awk -v p="$peak" -v i="$idle" -v n="$STREAMS" 'BEGIN { printf "%.1f", (p - i) / n }')
    R_CPU[$name]=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v e="${R_EVENTS[$name]}" \
        'BEGIN { if (e > 0) printf "%.1f", d * 1000 / hz / e * 1000; else print "-" }')
    if [[ -n $s1 ]]; then
        R_STEADY[$name]=$(awk -v d=$((s1 - s0)) -v hz="$CLK_TCK" -v e=$((e1 - e0)) \
            'BEGIN { if (e > 0) printf "%.1f ms per 1000 events (%d events, %.2f s CPU)", d * 1000 / hz / e * 1000, e, d / hz; else print "-" }')
    else
        R_STEADY[$name]="- (no steady window: RAMP too close to DURATION)"
    fi
    R_OTHER[$name]=$(awk -v b=$((c1b - c0b - (t1 - t0))) -v t=$((c1t - c0t)) \
        'BEGIN { printf "%.0f", (t > 0 && b > 0 ? b / t * 100 : 0) }')
    if [[ $CLIENT_PROTO == h2 ]]; then
        R_DELAY[$name]=-
        R_TTFBSTREAM[$name]=$(jget "$out" '"%.2f / %.2f / %.2f" % (d["ttfb_ms"]["min"], d["ttfb_ms"]["mean"], d["ttfb_ms"]["max"]) if d["ttfb_ms"] else "-"')
    else
        R_DELAY[$name]=$(jget "$out" '"%.1f / %.1f / %.1f" % (d["event_delay_ms"]["p50"], d["event_delay_ms"]["p99"], d["event_delay_ms"]["max"]) if d["event_delay_ms"]["n"] else "-"')
        R_TTFBSTREAM[$name]=$(jget "$out" '"%.2f / %.2f" % (d["ttfb_ms"]["p50"], d["ttfb_ms"]["p99"]) if d["ttfb_ms"]["n"] else "-"')
    fi
    R_CLIENT[$name]=$(jget "$out" '"%.0f%%" % (100 * d["client_cpu_share"])')
    log "$name: peak RSS $(mb "$peak") MB (VmHWM $(mb "${R_HWM[$name]}") MB), $(jget "$out" 'd["completed"]') streams completed, ${R_EVENTS[$name]} events, CPU $(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", d / hz }') s (${R_CPU[$name]} ms per 1000 events), client CPU ${R_CLIENT[$name]}"
    local a after=""
    for a in $AFTER; do
        sleep_until_us $((close_us + $(to_us "$a")))
        r=$(status_kb "$pid" VmRSS) || die "$name (pid $pid) died after the run"
        after+="${after:+ / }$(mb "$r")"
        log "$name: RSS $a s after close: $(mb "$r") MB"
    done
    cp "/proc/$pid/smaps_rollup" "$TMP/$name-smaps-after.txt" 2>/dev/null || true
    R_AFTER[$name]=$after
    local f smaps=""
    for f in idle peak after; do
        [[ -s $TMP/$name-smaps-$f.txt ]] || continue
        smaps+="${smaps:+; }$f: $(awk '$1 == "Rss:" { r = $2 } $1 == "Anonymous:" { a = $2 } $1 == "AnonHugePages:" { h = $2 }
            END { printf "Rss %.1f, Anonymous %.1f, of which in huge pages %.1f MB", r / 1024, a / 1024, h / 1024 }' "$TMP/$name-smaps-$f.txt")"
    done
    R_SMAPS[$name]=${smaps:--}
    # Each level: the upstream directly, then through the proxy, back to back, so that load
    # from elsewhere on the machine hits both alike.
    local lvl
    for lvl in $PROBE_LEVELS; do
        probe "direct" "$UP_DIRECT" "$lvl" --reuse
        R_TTFB[$name-direct@$lvl]="$TTFB_P50 $TTFB_P99"
        probe "$name" "$port" "$lvl"
        R_TTFB[$name@$lvl]="$TTFB_P50 $TTFB_P99"
    done
}

START=$(date +%s)

TARGET_LIST=()
for name in ${TARGETS//,/ }; do
    case $name in
    authgate) start_authgate ;;
    nginx) start_nginx ;;
    *) die "unknown target $name (authgate, nginx)" ;;
    esac
    TARGET_LIST+=("$name")
    # Sanity: one short stream with the key (200, an event), none without (401).
    resp=$(curl "${PROXY_CURL[@]}" -s -N --max-time 5 -H "Authorization: Bearer $API_KEY" -w '%{http_code}' \
        "http://127.0.0.1:$PROXY_PORT/sse/stream?duration=0" || true)
    [[ $resp == data:*200 ]] || die "$name: expected an event and 200 from /sse/stream, got '${resp:0:200}'"
    code=$(curl "${PROXY_CURL[@]}" -s -o /dev/null --max-time 5 -w '%{http_code}' "http://127.0.0.1:$PROXY_PORT/sse/stream?duration=0" || true)
    [[ $code == 401 ]] || die "$name: expected 401 without a key, got $code"
    if [[ $CLIENT_PROTO == h2 ]]; then
        ver=$(curl "${PROXY_CURL[@]}" -s -o /dev/null --max-time 5 -H "Authorization: Bearer $API_KEY" -w '%{http_version}' \
            "http://127.0.0.1:$PROXY_PORT/sse/stream?duration=0" || true)
        [[ $ver == 2 ]] || die "$name: does not answer HTTP/2 with prior knowledge (h2c) on its listener (HTTP version '$ver')"
    fi
    log "$name pid $PROXY_PID on :$PROXY_PORT (CPU $PROXY_CPU)"
    run_streams "$name" "$PROXY_PID" "$PROXY_PORT"
    stop_pid "$PROXY_PID"
done
kill -USR1 "$UP_PID" 2>/dev/null || true
sleep 0.2
log "$(grep -a 'sse_upstream: connections' "$TMP/upstream.log" | tail -n 1)"
log "runs took $(($(date +%s) - START)) s"

# --------------------------------------------------------------- report ----
added() { # added PROXY_VALUE DIRECT_VALUE
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%.2f", a - b }'
}
{
    cmd="STREAMS=$STREAMS"
    [[ $INTERVAL == 2 && $DURATION == 30 && $EVENT_BYTES == 100 ]] || cmd+=" INTERVAL=$INTERVAL DURATION=$DURATION EVENT_BYTES=$EVENT_BYTES"
    [[ -z ${AUTHGATE_BIN:-} ]] || cmd+=" AUTHGATE_BIN=$(printf '%q' "$AUTHGATE_BIN")"
    [[ $RAMP == "$(awk -v n="$STREAMS" 'BEGIN { r = n / 1000; if (r < 2) r = 2; print r }')" ]] || cmd+=" RAMP=$RAMP"
    [[ $AFTER == "5 15 30" ]] || cmd+=" AFTER=$(printf '%q' "$AFTER")"
    [[ $TTFB_LEVELS == "1 1000" ]] || cmd+=" TTFB_LEVELS=$(printf '%q' "$TTFB_LEVELS")"
    [[ $PROBES == 500 ]] || cmd+=" PROBES=$PROBES"
    [[ $SOURCES == 4 ]] || cmd+=" SOURCES=$SOURCES"
    [[ $THREADS == 1 ]] || cmd+=" THREADS=$THREADS"
    [[ $UP_KEEPALIVE == 512 ]] || cmd+=" UP_KEEPALIVE=$UP_KEEPALIVE"
    [[ $TARGETS == "authgate nginx" ]] || cmd+=" TARGETS=$(printf '%q' "$TARGETS")"
    [[ $PROXY_CPU == 0 && $LOAD_CPU == 1 ]] || cmd+=" PROXY_CPU=$PROXY_CPU LOAD_CPU=$LOAD_CPU"
    [[ $CLIENT_PROTO == h1 ]] || cmd+=" CLIENT_PROTO=$CLIENT_PROTO H2_CONNS=$H2_CONNS"
    cmd+=" $INVOKED_AS"
    echo "## authgate streams benchmark (issue #16)"
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- Command: \`$cmd\`"
    echo "- Machine: nproc=$(nproc), CPU: $(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r), RLIMIT_NOFILE $NOFILE, transparent huge pages: $(sed -n 's/.*\[\(.*\)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo unknown)"
    if [[ $CLIENT_PROTO == h2 ]]; then
        echo "- Tools: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(python3 --version), $(h2load --version 2>&1 | head -n1), authgate: \`$BIN\` ($("$BIN" --version 2>/dev/null | head -n1 || true))"
        echo "- Client protocol: **HTTP/2** (cleartext, prior knowledge), client h2load; upstream side HTTP/1.1 keep-alive"
        echo "- Load: $STREAMS SSE streams over HTTP/2 ($H2_CONNS client connections from 127.0.0.1, up to $H2_PER_CONN streams each, opened at once per connection; the connections started over $RAMP s; authgate max_concurrent_streams 256, nginx \`listen ... http2\` with \`http2_max_concurrent_streams 256\`); the upstream sends one event of $EVENT_BYTES bytes every $INTERVAL s for $DURATION s ($EXPECT events per stream), then ends the body; keep-alive upstream (authgate's pool: up to 512 idle per upstream; nginx \`keepalive $UP_KEEPALIVE\`, \`proxy_buffering off\`); API key checked by both; access log off"
    else
        echo "- Tools: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(python3 --version), authgate: \`$BIN\` ($("$BIN" --version 2>/dev/null | head -n1 || true))"
        echo "- Load: $STREAMS SSE streams over HTTP/1.1 (one connection each, from $SOURCES local addresses), opened over $RAMP s; the upstream sends one event of $EVENT_BYTES bytes every $INTERVAL s for $DURATION s ($EXPECT events per stream), then ends the body; keep-alive upstream (authgate's pool: up to 512 idle per upstream; nginx \`keepalive $UP_KEEPALIVE\`, \`proxy_buffering off\`); API key checked by both; access log off"
    fi
    echo "- Pinning: the proxy on CPU $PROXY_CPU (authgate --threads $THREADS; nginx 1 process), the client and the upstream ($([[ $CLIENT_PROTO == h2 ]] && echo 'h2load, one thread; Python asyncio' || echo 'Python asyncio')) on CPU $LOAD_CPU; the proxies run one after the other"
    echo "- RSS: VmRSS, MB = 1024 KiB; peak = highest 0.5 s sample with the streams open; per stream = (peak - idle) / $STREAMS; after close = ${AFTER// //} s after the last stream ended"
    if [[ $CLIENT_PROTO == h2 ]]; then
        echo "- CPU: utime+stime of the proxy process from the first connection to the last stream's end (set-up, authentication and tear-down included) / events received (h2load counts no events: every stream complete with 200 and the DATA bytes exactly $STREAMS streams' worth, so events = $STREAMS x $EXPECT)"
        echo "- TTFB probes: skipped with HTTP/2 clients (the probes are HTTP/1.1, a connection each); the ramp's TTFB (h2load) is in the notes"
    else
        echo "- CPU: utime+stime of the proxy process from the first connection to the last stream's end (set-up, authentication and tear-down included) / events received"
        echo "- TTFB @N: request written to the first response byte of a new stream on a new connection, $PROBES probes in sequence with N-1 other streams open, minus the upstream's own figure at the same level measured just before (direct, on one kept-alive connection, as the proxies' pools reach it)"
    fi
    [[ -z $INVALID ]] || echo "- **NOT A VALID MEASUREMENT: failures in:$INVALID** (see the notes)"
    echo
    hdr="| proxy | streams | idle RSS MB | peak RSS MB | per stream KB | RSS after close ${AFTER// //}s MB | CPU ms per 1000 events |"
    sep="|---|---:|---:|---:|---:|---:|---:|"
    if [[ $CLIENT_PROTO == h2 ]]; then
        hdr="| proxy | client protocol | streams | idle RSS MB | peak RSS MB | per stream KB | RSS after close ${AFTER// //}s MB | CPU ms per 1000 events |"
        sep="|---|---|---:|---:|---:|---:|---:|---:|"
    fi
    for lvl in $PROBE_LEVELS; do
        hdr+=" TTFB added ms p50/p99 @$lvl |"
        sep+="---:|"
    done
    echo "$hdr"
    echo "$sep"
    for name in "${TARGET_LIST[@]}"; do
        row="| $name$([[ $INVALID != *" $name"* ]] || echo ' (INVALID)') | $STREAMS | $(mb "${R_IDLE[$name]}") | $(mb "${R_PEAK[$name]}") | ${R_PER[$name]} | ${R_AFTER[$name]} | ${R_CPU[$name]} |"
        [[ $CLIENT_PROTO == h1 ]] || row="| $name$([[ $INVALID != *" $name"* ]] || echo ' (INVALID)') | h2c, $H2_CONNS conns x $H2_PER_CONN | $STREAMS | $(mb "${R_IDLE[$name]}") | $(mb "${R_PEAK[$name]}") | ${R_PER[$name]} | ${R_AFTER[$name]} | ${R_CPU[$name]} |"
        for lvl in $PROBE_LEVELS; do
            read -r p50 p99 <<<"${R_TTFB[$name@$lvl]}"
            read -r d50 d99 <<<"${R_TTFB[$name-direct@$lvl]}"
            row+=" $(added "$p50" "$d50") / $(added "$p99" "$d99") |"
        done
        echo "$row"
    done
    echo
    echo "Notes:"
    echo
    for lvl in $PROBE_LEVELS; do
        line="- TTFB ms p50/p99 at $lvl streams:"
        for name in "${TARGET_LIST[@]}"; do
            read -r p50 p99 <<<"${R_TTFB[$name@$lvl]}"
            read -r d50 d99 <<<"${R_TTFB[$name-direct@$lvl]}"
            line+=" $name $p50 / $p99 (direct just before: $d50 / $d99);"
        done
        echo "${line%;}"
    done
    for name in "${TARGET_LIST[@]}"; do
        if [[ $CLIENT_PROTO == h2 ]]; then
            echo "- $name: RSS when all $STREAMS streams were open at the upstream $( [[ ${R_OPEN[$name]} == - ]] && echo - || mb "${R_OPEN[$name]}") MB, most open there at once ${R_MAXOPEN[$name]}, VmHWM $(mb "${R_HWM[$name]}") MB;" \
                "steady-state CPU ${R_STEADY[$name]} (events written by the upstream in the window); events ${R_EVENTS[$name]} (expected $((STREAMS * EXPECT)); $(jget "$TMP/$name.json" '"exact" if d["events_exact"] else "estimated"'): DATA bytes $(jget "$TMP/$name.json" 'd["data_bytes"]') of $(jget "$TMP/$name.json" 'd["expected_data_bytes"]')), streams complete with 200 $(jget "$TMP/$name.json" 'd["completed"]'), failed streams ${R_FAIL[$name]}$(jget "$TMP/$name.json" '" %s" % d["fail_reasons"] if d["fail_reasons"] else ""');" \
                "TTFB of the $STREAMS streams during the ramp (new upstream connections; h2load) min/mean/max ${R_TTFBSTREAM[$name]} ms;" \
                "client CPU (h2load) ${R_CLIENT[$name]} of a core; CPU $PROXY_CPU busy with other work ${R_OTHER[$name]}% of the run$( ((R_OTHER[$name] <= 5)) || echo ' (NOISY: CPU figures unreliable; RSS is not affected)')"
            echo "- $name smaps_rollup: ${R_SMAPS[$name]}"
            continue
        fi
        echo "- $name: RSS when all streams had answered $( [[ ${R_OPEN[$name]} == - ]] && echo - || mb "${R_OPEN[$name]}") MB, VmHWM $(mb "${R_HWM[$name]}") MB;" \
            "steady-state CPU ${R_STEADY[$name]}; events received ${R_EVENTS[$name]} (expected $((STREAMS * EXPECT))), failed streams ${R_FAIL[$name]};" \
            "event delay (upstream write to client read) p50/p99/max ${R_DELAY[$name]} ms; TTFB of the $STREAMS streams during the ramp (new upstream connections) p50/p99 ${R_TTFBSTREAM[$name]} ms;" \
            "client CPU ${R_CLIENT[$name]} of a core; CPU $PROXY_CPU busy with other work ${R_OTHER[$name]}% of the run$( ((R_OTHER[$name] <= 5)) || echo ' (NOISY: CPU and TTFB figures unreliable; RSS is not affected)')"
        echo "- $name smaps_rollup: ${R_SMAPS[$name]}"
    done
}
[[ -z $INVALID ]] || { log "failures in:$INVALID: not a valid measurement"; exit 1; }
