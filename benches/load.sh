#!/usr/bin/env bash
# Load benchmark: keep-alive small GET, direct vs authgate vs nginx.
#
# Runs every target once per round, interleaved (direct, authgate, nginx,
# direct, authgate, nginx, ...), so that drift on the machine hits all targets
# alike, then prints a markdown table of medians over the rounds.
#
# Pinning: the proxies under test (authgate, nginx proxy) run on PROXY_CPU
# (default 0); wrk and the upstream nginx run on LOAD_CPU (default 1).
# CPU cost of a proxy = (utime+stime) of its whole process from
# /proc/<pid>/stat (all threads) over the wrk run, divided by the number of
# requests wrk completed.
#
# Knobs (environment):
#   ROUNDS=3         rounds (every target once per round)
#   DURATION=5s      wrk -d per run
#   CONNS=32         wrk -c (keep-alive connections), always -t1
#   WARMUP=1s        one unrecorded wrk run per target before round 1 (0 = off)
#   THREADS=1        authgate worker threads (--threads)
#   AUTHGATE_BIN=    use this binary instead of `cargo build --release --locked`
#   PROXY_CPU=0 LOAD_CPU=1   CPUs for the proxies / for wrk + upstream
#   BASELINE=nginx   target the ratio columns are relative to (default: nginx if
#                    selected, else the first target)
#   KEEP_TMP=1       keep the temp dir (configs, logs, raw wrk output)
#   TARGETS=         only these targets (space- or comma-separated names); default: all
#   LIMITS=1         rate-limit targets (authgate-limited, authgate-redis); 0 = skip them
#   REDIS_URL=       Redis for authgate-redis; default: a private redis-server started
#                    by this script on LOAD_CPU (pinned, no persistence)
#   FA=1             forward-auth targets (front-proxy, front-check); 0 = skip them
#   TLS=1            TLS targets (authgate-apikey-tls, nginx-apikey-tls, authgate-apikey-h2,
#                    nginx-apikey-h2); 0 = skip them
#   TLS_SUITE=TLS_AES_128_GCM_SHA256   the one TLS 1.3 cipher suite the clients offer
#   H2_STREAMS=8     h2load -m (concurrent streams per connection) of the *-h2 targets
#
# TLS (the *-tls and *-h2 targets): the API-key route with the same key and the same
# plain-http upstream, but the client talks TLS 1.3 to the proxy, with one self-signed EC
# P-256 certificate (made with openssl in the temp dir) served by both proxies. authgate
# serves TLS on its main listener only, so a second authgate process (same config plus
# server.tls, on PROXY_CPU too) serves these targets, and its CPU is measured; nginx serves
# them from an extra `listen ... ssl http2` server in the proxy nginx. The cipher suite is
# pinned at the clients, since authgate's (rustls's) suites cannot be configured and it
# follows the client's order: wrk gets an OPENSSL_CONF that offers TLS_SUITE alone, h2load
# --tls13-ciphers=TLS_SUITE; nginx is also restricted to it (ssl_conf_command). Start-up
# checks that wrk offers TLS_SUITE first (a logging TLS probe on the upstream nginx) and what
# each proxy negotiates (openssl s_client); the suites are printed below the table.
#   *-tls: wrk over https, HTTP/1.1 keep-alive (-c CONNS), like authgate-apikey.
#   *-h2:  `h2load -t1 -c CONNS -m H2_STREAMS -D DURATION` over https with ALPN h2, on
#          LOAD_CPU like wrk; p50/p99 come from h2load's per-request log (--log-file),
#          errors = failed + errored + timed-out requests + non-2xx answers.
# Every target on the API-key route must also answer 401 to a request without the key
# (checked at start-up, over TLS and h2 too).
#
# Forward-auth (front-proxy vs front-check): a front nginx on LOAD_CPU either proxies the
# API-key route through authgate (front-proxy), or asks authgate's [forward_auth] listener
# with auth_request and proxies to the upstream itself (front-check). Both charge the same
# authgate process, so its CPU per check over its CPU per proxied request, on the same route
# with the same key, is printed below the table (issue #15 asks for at most 0.6). The front
# nginx's own CPU per request is in the helper line.
#
# Adding a target: see the "Targets" section near the end.
set -euo pipefail

INVOKED_AS=$0
cd "$(dirname "$0")/.."
REPO_ROOT=$(pwd)

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-32}
WARMUP=${WARMUP:-1s}
THREADS=${THREADS:-1}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BASELINE=${BASELINE:-}
KEEP_TMP=${KEEP_TMP:-0}
TARGETS=${TARGETS:-}
LIMITS=${LIMITS:-1}
REDIS_URL=${REDIS_URL:-}
TLS=${TLS:-1}
TLS_SUITE=${TLS_SUITE:-TLS_AES_128_GCM_SHA256}
H2_STREAMS=${H2_STREAMS:-8}

log() { printf '[load.sh] %s\n' "$*" >&2; }
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
need_pkg wrk wrk
need_pkg nginx nginx
need_pkg curl curl
need_pkg taskset util-linux
need_pkg ss iproute2
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

for cpu in "$PROXY_CPU" "$LOAD_CPU"; do
    taskset -c "$cpu" true 2>/dev/null || die "cannot pin to CPU $cpu (nproc=$(nproc)); set PROXY_CPU/LOAD_CPU"
done
[[ $PROXY_CPU != "$LOAD_CPU" ]] || log "warning: PROXY_CPU == LOAD_CPU, proxies share a CPU with wrk"

CLK_TCK=$(getconf CLK_TCK)

# ----------------------------------------------------- temp dir, cleanup ----
TMP=$(mktemp -d -t authgate-load.XXXXXX)
PIDS=()

cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    [[ -z ${WRK_PID:-} ]] || PIDS+=("$WRK_PID")
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
# Free TCP ports below the ephemeral range (so wrk's / the proxies' outgoing
# connections can never take them), checked against current listeners.
USED_PORTS=" "
free_port() { # sets PORT
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
wait_http() { # wait_http URL PID NAME LOGFILE: wait until URL answers 200, max 30 s
    local url=$1 pid=$2 name=$3 logfile=$4 i
    for ((i = 0; i < 300; i++)); do
        if ! alive "$pid"; then
            log "$name exited during start-up; last log lines:"
            tail -n 30 "$logfile" >&2 || true
            die "$name failed to start"
        fi
        if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true) == 200 ]]; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 30 "$logfile" >&2 || true
    die "$name not ready at $url after 30 s"
}

# start_nginx NAME CPU HTTP_BLOCK_BODY: start a single-process nginx
# (master_process off, so $! is the process serving requests) pinned to CPU.
# Sets NGINX_PID. Writes $TMP/nginx-NAME/{nginx.conf,error.log,...}.
start_nginx() {
    local name=$1 cpu=$2 body=$3 dir=$TMP/nginx-$1
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 16384;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections 4096;
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
    # nginx closes a keep-alive connection after 1000 requests by default;
    # raise it so every target really is measured over persistent connections.
    keepalive_requests 1000000;
    keepalive_timeout 75s;
$body
}
EOF
    "$NGINX" -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" ||
        die "nginx config $name invalid: $dir/nginx.conf"
    taskset -c "$cpu" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
        >"$dir/stdout.log" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
}

proc_stat() { # proc_stat PID -> sets F: /proc/PID/stat fields from field 3 on
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    read -r -a F <<<"${stat##*) }" # drop "pid (comm) ", comm may hold spaces
}
alive() { # alive PID: running and not a zombie
    proc_stat "$1" && [[ ${F[0]} != Z && ${F[0]} != X ]]
}
cpu_ticks() { # cpu_ticks PID: utime+stime (fields 14, 15) of the whole process,
    # which /proc/PID/stat already sums over all (live and exited) threads
    alive "$1" || return 1
    echo $((F[11] + F[12]))
}
user_ticks() { # user_ticks PID: utime alone (the proxy's own code; stime is the kernel's)
    alive "$1" || return 1
    echo "${F[11]}"
}

cpu_line() { # cpu_line CPU -> "BUSY TOTAL" ticks of that CPU from /proc/stat
    awk -v c="cpu$1" '$1 == c { busy = $2 + $3 + $4 + $7 + $8 + $9;
        print busy, busy + $5 + $6 }' /proc/stat
}

to_ms() { # wrk latency ("812.00us", "1.23ms", "2.00s", "1.50m") -> ms
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000
        else if (u == "m") n *= 60000; else if (u == "h") n *= 3600000
        else if (u != "ms") { print "NaN"; exit 1 }
        printf "%.4f\n", n }'
}

median() { # median NUM... (ignores "-")
    printf '%s\n' "$@" | { grep -v '^-$' || true; } | sort -g |
        awk '{a[NR] = $1} END { if (NR == 0) print "-";
             else if (NR % 2) print a[(NR + 1) / 2];
             else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# --------------------------------------------------------------- targets ----
# A target = NAME, URL, PID whose CPU is measured ("-" = none), extra wrk args.
# Extra args are stored joined with \x1f (unit separator) to survive spaces.
TARGET_NAMES=()
declare -A TARGET_URL TARGET_PID TARGET_ARGS TARGET_XPID TARGET_TOOL
add_target() { # add_target NAME URL PID [extra wrk args...] (TARGET_TOOL[NAME]=h2load: h2load args)
    local name=$1 url=$2 pid=$3 IFS=$'\x1f'
    shift 3
    selected "$name" || return 0
    TARGET_NAMES+=("$name")
    TARGET_URL[$name]=$url
    TARGET_PID[$name]=$pid
    TARGET_ARGS[$name]="$*"
}
selected() { # selected NAME: NAME is in TARGETS (or TARGETS is empty)
    [[ -z $TARGETS ]] && return 0
    [[ " ${TARGETS//,/ } " == *" $1 "* ]]
}
target_args() { # target_args NAME -> sets ARGS array
    ARGS=()
    [[ -z ${TARGET_ARGS[$1]} ]] || IFS=$'\x1f' read -r -a ARGS <<<"${TARGET_ARGS[$1]}"
}

MAX_OTHER=0 # highest share (%) of PROXY_CPU used by something else during a proxy run
# Results, per target: space-separated values, one per round.
declare -A R_RPS R_P50 R_P99 R_CPU R_USR R_ERR R_XCPU R_SUITE

# bench_parse_wrk NAME OUT / bench_parse_h2load NAME OUT: parse one run's output into
# rps p50 p99 (ms) reqs secs and ERRS (bench_target's locals).
bench_parse_wrk() {
    local name=$1 out=$2 non2xx sockerr
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p50=$(awk '$1 == "50%" {print $2}' "$out")
    p99=$(awk '$1 == "99%" {print $2}' "$out")
    reqs=$(awk '/ requests in / {print $1}' "$out")
    secs=$(awk '/ requests in / {v = $4; sub(/s,$/, "", v); print v}' "$out")
    [[ -n $rps && -n $p50 && -n $p99 && -n $reqs ]] ||
        { cat "$out" >&2; die "cannot parse wrk output for $name"; }
    ((reqs > 0)) || { cat "$out" >&2; die "$name: no requests completed"; }
    p50=$(to_ms "$p50")
    p99=$(to_ms "$p99")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
    sockerr=$(awk '/Socket errors:/ {gsub(/,/, ""); print $4 + $6 + $8 + $10}' "$out")
    # The *-401 targets measure the refusal path: their 401s are the point, not errors.
    [[ $name == *-401 ]] && non2xx=0
    ERRS=$((${non2xx:-0} + ${sockerr:-0}))
}
# h2load prints no percentiles: they come from its per-request log (OUT.log: start µs,
# status, µs to the end of the response; status -1 = failed stream), nearest rank.
bench_parse_h2load() {
    local name=$1 out=$2 failed non2xx suite alpn
    # "finished in 3.00s, 40178.67 req/s, 1.38MB/s"
    rps=$(awk '/^finished in / {print $4}' "$out")
    secs=$(awk '/^finished in / {v = $3; sub(/,$/, "", v);
        if (v ~ /ms$/) { sub(/ms$/, "", v); v /= 1000 } else sub(/s$/, "", v); print v}' "$out")
    # "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
    reqs=$(awk '/^requests: / {print $6}' "$out")
    failed=$(awk '/^requests: / {print $10 + $12 + $14}' "$out")
    # "status codes: N 2xx, N 3xx, N 4xx, N 5xx"
    non2xx=$(awk '/^status codes: / {print $5 + $7 + $9}' "$out")
    suite=$(awk '/^Cipher: / {print $2}' "$out")
    alpn=$(awk '/^Application protocol: / {print $3}' "$out")
    [[ -n $rps && -n $secs && -n $reqs && -n $failed && -n $non2xx ]] ||
        { cat "$out" >&2; die "cannot parse h2load output for $name"; }
    ((reqs > 0)) || { cat "$out" >&2; die "$name: no requests completed"; }
    [[ $alpn == h2 ]] || { cat "$out" >&2; die "$name: h2load did not negotiate h2 (got '$alpn')"; }
    [[ $suite == "$TLS_SUITE" ]] || { cat "$out" >&2; die "$name: h2load negotiated '$suite', not $TLS_SUITE"; }
    R_SUITE[$name]=$suite
    read -r p50 p99 < <(awk -F'\t' '$2 >= 0 {print $3}' "$out.log" | sort -n |
        awk '{a[NR] = $1} END { if (NR == 0) { print "NaN NaN"; exit }
            i = int(NR * 0.5); if (i < NR * 0.5) i++; j = int(NR * 0.99); if (j < NR * 0.99) j++;
            printf "%.4f %.4f\n", a[i] / 1000, a[j] / 1000 }')
    [[ $name == *-401 ]] && non2xx=0
    ERRS=$((failed + non2xx))
}

# bench_target NAME URL PID [extra wrk args...]: one wrk run, recorded.
# With RECORD=0 (warm-up) nothing is recorded.
bench_target() {
    local name=$1 url=$2 pid=$3 out t0 t1 u0 u1 user_us rps p50 p99 reqs cpu_us util secs other ERRS
    local c0_busy c0_total c1_busy c1_total x0 x1 xpid=${TARGET_XPID[$1]:--} tool=${TARGET_TOOL[$1]:-wrk}
    shift 3
    out=$TMP/wrk-$name-$ROUND.txt
    if [[ $pid != - ]]; then
        t0=$(cpu_ticks "$pid") || die "$name (pid $pid) is not running"
        u0=$(user_ticks "$pid")
    fi
    [[ $xpid == - ]] || x0=$(cpu_ticks "$xpid") || die "helper pid $xpid of $name is not running"
    read -r c0_busy c0_total < <(cpu_line "$PROXY_CPU")
    local dur=$DURATION
    [[ ${RECORD:-1} == 1 ]] || dur=$WARMUP
    # In the background + wait, so that a signal to this script is handled
    # (cleanup trap) at once rather than after wrk finishes.
    if [[ $tool == h2load ]]; then
        # h2load: HTTP/2 over TLS (ALPN h2), CONNS connections x H2_STREAMS streams.
        taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNS" -m"$H2_STREAMS" -D "$dur" \
            --tls13-ciphers="$TLS_SUITE" --log-file="$out.log" "$@" "$url" >"$out" 2>&1 &
    elif [[ $url == https://* ]]; then
        # wrk has no cipher option: its OpenSSL gets a config that offers TLS_SUITE alone.
        OPENSSL_CONF=$TLS_CLIENT_CNF taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$dur" --latency "$@" "$url" >"$out" 2>&1 &
    else
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$dur" --latency "$@" "$url" >"$out" 2>&1 &
    fi
    WRK_PID=$!
    wait "$WRK_PID" || { cat "$out" >&2; die "$tool failed for $name"; }
    WRK_PID=
    if [[ $pid != - ]]; then
        t1=$(cpu_ticks "$pid") || die "$name (pid $pid) died during the run"
        u1=$(user_ticks "$pid")
    fi
    [[ $xpid == - ]] || x1=$(cpu_ticks "$xpid") || die "helper pid $xpid of $name died during the run"
    read -r c1_busy c1_total < <(cpu_line "$PROXY_CPU")
    [[ ${RECORD:-1} == 1 ]] || return 0

    if [[ $tool == h2load ]]; then
        bench_parse_h2load "$name" "$out"
    else
        bench_parse_wrk "$name" "$out"
    fi
    local errs=$ERRS

    if [[ $pid == - ]]; then
        cpu_us=- user_us=- util=- other=-
    else
        # Time CPU PROXY_CPU spent on anything but the proxy (other processes,
        # interrupts, steal): a noisy neighbour makes req/s/latency unreliable.
        other=$(awk -v b=$((c1_busy - c0_busy - (t1 - t0))) -v t=$((c1_total - c0_total)) \
            'BEGIN {printf "%.0f", (t > 0 && b > 0 ? b / t * 100 : 0)}')
        ((other <= MAX_OTHER)) || MAX_OTHER=$other
        cpu_us=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.3f", d * 1e6 / hz / n}')
        user_us=$(awk -v d=$((u1 - u0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.3f", d * 1e6 / hz / n}')
        util=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v s="$secs" 'BEGIN {printf "%.0f%%", (s > 0 ? d / hz / s * 100 : 0)}')
    fi
    R_RPS[$name]+="$rps "
    R_P50[$name]+="$p50 "
    R_P99[$name]+="$p99 "
    R_CPU[$name]+="$cpu_us "
    R_USR[$name]+="$user_us "
    [[ $xpid == - ]] ||
        R_XCPU[$name]+="$(awk -v d=$((x1 - x0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.3f", d * 1e6 / hz / n}') "
    R_ERR[$name]=$((${R_ERR[$name]:-0} + errs))
    log "$(printf 'round %d %-19s %10s req/s  p50 %7.3f ms  p99 %7.3f ms  cpu %7s us/req (user %s; %s of a core; CPU %s other load %s)  errors %d' \
        "$ROUND" "$name" "$rps" "$p50" "$p99" "$cpu_us" "$user_us" "$util" "$PROXY_CPU" "$other$([[ $other == - ]] || echo %)" "$errs")"
    ((errs == 0)) || log "warning: $name had $errs non-2xx/socket errors in round $ROUND (see $out)"
}

# ------------------------------------------------------------------ TLS ----
# One self-signed EC P-256 certificate for both proxies (SAN IP:127.0.0.1: curl checks it
# with --cacert), and an OpenSSL config that makes wrk offer TLS 1.3 with TLS_SUITE alone.
# The upstream nginx gets a TLS probe server that logs the suite each handshake chose
# (client's order, all suites allowed): the start-up check of what wrk really offers.
TLS_ON=0 UP_TLS=""
if [[ $TLS == 1 ]] && { selected authgate-apikey-tls || selected nginx-apikey-tls ||
    selected authgate-apikey-h2 || selected nginx-apikey-h2; }; then
    TLS_ON=1
    if selected authgate-apikey-h2 || selected nginx-apikey-h2; then
        need_pkg h2load nghttp2-client
    fi
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
        -keyout "$TMP/tls.key" -out "$TMP/tls.crt" 2>"$TMP/tls-req.log" ||
        { cat "$TMP/tls-req.log" >&2; die "cannot make the TLS certificate"; }
    TLS_CLIENT_CNF=$TMP/openssl-client.cnf
    cat >"$TLS_CLIENT_CNF" <<EOF
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MinProtocol = TLSv1.3
Ciphersuites = $TLS_SUITE
EOF
    free_port; PROBE_PORT=$PORT
    UP_TLS="
    log_format tlsprobe '\$ssl_protocol \$ssl_cipher';
    server {
        listen 127.0.0.1:$PROBE_PORT ssl;
        ssl_certificate $TMP/tls.crt;
        ssl_certificate_key $TMP/tls.key;
        ssl_protocols TLSv1.3;
        access_log $TMP/tls-probe.log tlsprobe;
        location / { return 200 \"ok\"; }
    }"
fi

# ------------------------------------------------------------- upstream ----
free_port; UP_PORT=$PORT
start_nginx upstream "$LOAD_CPU" "
    server {
        listen 127.0.0.1:$UP_PORT reuseport backlog=4096;
        location = /jwks.json { default_type application/json; alias $TMP/jwks.json; }
        location / { return 200 \"ok\"; }
    }$UP_TLS"
UP_PID=$NGINX_PID
wait_http "http://127.0.0.1:$UP_PORT/" "$UP_PID" "upstream nginx" "$TMP/nginx-upstream/error.log"
log "upstream nginx pid $UP_PID on :$UP_PORT (CPU $LOAD_CPU)"

# ------------------------------------------------------------- API keys ----
# 10,000 keys: an authgate key file (hashes only) and an nginx `map` of the same keys,
# so both proxies do an equivalent lookup per request.
KEYS=${KEYS:-10000}
python3 - "$TMP" "$KEYS" <<'PY'
import hashlib, secrets, string, sys
tmp, n = sys.argv[1], int(sys.argv[2])
alphabet = string.ascii_letters + string.digits
with open(f"{tmp}/keys.toml", "w") as keys, open(f"{tmp}/keys.map", "w") as nmap, \
     open(f"{tmp}/tenants.map", "w") as tmap, open(f"{tmp}/one.key", "w") as one:
    for i in range(n):
        key = "sgk_" + "".join(secrets.choice(alphabet) for _ in range(40))
        digest = hashlib.sha256(key.encode()).hexdigest()
        keys.write(f'[[keys]]\nhash = "{digest}"\nkey_id = "key-{i}"\ntenant_id = "tenant-{i % 100}"\nscopes = ["api"]\n\n')
        nmap.write(f'"Bearer {key}" 1;\n')
        tmap.write(f'"Bearer {key}" "tenant-{i % 100}";\n')
        if i == n // 2:
            one.write(key)
PY
API_KEY=$(cat "$TMP/one.key")

# A JWT route: an RS256 key made with openssl, its JWKS served as a static file by the
# upstream nginx, and one token signed with it (verified once, then served from the
# verified-token cache, as a client reusing its access token would be).
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/jwt.key" 2>/dev/null
JWT=$(python3 - "$TMP" <<'PY'
import base64, json, subprocess, sys, time
tmp = sys.argv[1]
b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
modulus = subprocess.run(["openssl", "rsa", "-in", f"{tmp}/jwt.key", "-noout", "-modulus"],
                         capture_output=True, text=True, check=True).stdout.strip().split("=", 1)[1]
n = bytes.fromhex(modulus)
with open(f"{tmp}/jwks.json", "w") as f:
    json.dump({"keys": [{"kty": "RSA", "kid": "bench", "use": "sig", "alg": "RS256",
                         "n": b64(n), "e": b64((65537).to_bytes(3, "big"))}]}, f)
now = int(time.time())
header = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "bench"}).encode())
claims = b64(json.dumps({"iss": "https://idp.bench.example", "sub": "client-1", "aud": "bench",
                         "exp": now + 86400, "iat": now, "scope": "api", "tenant_id": "t1"}).encode())
signing_input = f"{header}.{claims}".encode()
signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", f"{tmp}/jwt.key"],
                           input=signing_input, capture_output=True, check=True).stdout
print(f"{header}.{claims}.{b64(signature)}")
PY
)
BAD_KEY="sgk_$(printf 'x%.0s' {1..40})"
log "generated $KEYS API keys"

# ---------------------------------------------------------- nginx proxy ----
# Equivalent reverse proxy: keep-alive pool to the upstream, same kinds of
# headers authgate adds. Further servers (e.g. a `map`-based API-key check)
# can be added to this http block on their own ports; they share the process,
# which is fine since only one target is loaded at a time.
free_port; NGX_PORT=$PORT
# The same locations in clear and, with TLS, on a TLS 1.3 listener (HTTP/1.1 and h2, ALPN)
# restricted to TLS_SUITE, in the same process.
NGX_LOCATIONS="
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Request-Id \$request_id;
        }
        location /api/ {
            if (\$api_key_ok = 0) { return 401; }
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Authorization \"\";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Auth-Tenant-Id \$api_tenant;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Request-Id \$request_id;
        }"
NGX_TLS=""
if [[ $TLS_ON == 1 ]]; then
    free_port; NGX_TLS_PORT=$PORT
    NGX_TLS="
    server {
        listen 127.0.0.1:$NGX_TLS_PORT ssl http2 reuseport backlog=4096;
        ssl_certificate $TMP/tls.crt;
        ssl_certificate_key $TMP/tls.key;
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites $TLS_SUITE;
$NGX_LOCATIONS
    }"
fi
# Idle upstream connections nginx keeps: 64, or with the h2 targets as many as the requests
# they keep in flight (CONNS x H2_STREAMS), lest nginx open and close upstream connections
# all along where authgate's pool (512 idle per host) reuses them.
NGX_UP_KEEPALIVE=64
if [[ $TLS_ON == 1 ]] && ((CONNS * H2_STREAMS > NGX_UP_KEEPALIVE)); then
    NGX_UP_KEEPALIVE=$((CONNS * H2_STREAMS))
fi
start_nginx proxy "$PROXY_CPU" "
    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive $NGX_UP_KEEPALIVE;
        keepalive_requests 1000000;
    }
    map_hash_bucket_size 128;
    map \$http_authorization \$api_key_ok {
        default 0;
        include $TMP/keys.map;
    }
    map \$http_authorization \$api_tenant {
        default \"\";
        include $TMP/tenants.map;
    }
    server {
        listen 127.0.0.1:$NGX_PORT reuseport backlog=4096;
$NGX_LOCATIONS
    }$NGX_TLS"
NGX_PID=$NGINX_PID
wait_http "http://127.0.0.1:$NGX_PORT/" "$NGX_PID" "nginx proxy" "$TMP/nginx-proxy/error.log"
log "nginx proxy pid $NGX_PID on :$NGX_PORT (CPU $PROXY_CPU)"

# ------------------------------------------------------------- authgate ----
if [[ -n ${AUTHGATE_BIN:-} ]]; then
    BIN=$AUTHGATE_BIN
else
    log "building authgate (cargo build --release --locked)"
    cargo build --release --locked >&2
    BIN=$REPO_ROOT/target/release/authgate
fi
[[ -x $BIN ]] || die "authgate binary not found or not executable: $BIN"

# write_authgate_config FILE PORT ADMIN_PORT [EXTRA_TOML]: the routes every authgate
# instance serves; EXTRA_TOML (e.g. a [rate_limits] backend) goes before the routes.
write_authgate_config() {
    cat >"$1" <<EOF
[server]
listen = "127.0.0.1:$2"

[admin]
listen = "127.0.0.1:$3"

[log]
access_log = false

[api_keys]
file = "$TMP/keys.toml"

[[jwt.issuers]]
issuer = "https://idp.bench.example"
jwks_uri = "http://127.0.0.1:$UP_PORT/jwks.json"
audiences = ["bench"]
algorithms = ["RS256"]
${4:-}

[[routes]]
name = "jwt"
match = { path_prefix = "/jwt/" }
upstream = "http://127.0.0.1:$UP_PORT"
auth = ["jwt"]
scopes = ["api"]

[[routes]]
name = "api"
match = { path_prefix = "/api/" }
upstream = "http://127.0.0.1:$UP_PORT"
auth = ["api_key"]
scopes = ["api"]

# The API-key route again with a per-principal rate limit so high that it never refuses:
# every request pays the full check-and-count, none is turned into a cheap 429.
[[routes]]
name = "limited"
match = { path_prefix = "/limited/" }
upstream = "http://127.0.0.1:$UP_PORT"
auth = ["api_key"]
scopes = ["api"]
rate_limit = { requests_per_second = 1000000000, burst = 1000000000 }

[[routes]]
name = "public"
match = { path_prefix = "/" }
upstream = "http://127.0.0.1:$UP_PORT"
auth = "none"
EOF
    # authgate-401 repeats one unknown key from one client: with the default per-client
    # failure limit, every API key from this client (the valid ones of authgate-apikey too)
    # would be answered 429 after 50 failures. A limit it never reaches keeps the limiter's
    # check and bookkeeping in the measurement while every answer stays what it should be.
    # (A build older than the limiter refuses the field: it is then left out.)
    cp "$1" "$1.plain"
    sed -i 's/^\[api_keys\]$/[api_keys]\nfailed_auth_limit = { requests_per_second = 1000000000, burst = 1000000000 }/' "$1"
    "$BIN" check -c "$1" >/dev/null 2>&1 || mv "$1.plain" "$1"
}

# start_authgate NAME CONFIG ADMIN_PORT: sets AUTHGATE_PID.
start_authgate() {
    taskset -c "$PROXY_CPU" "$BIN" serve -c "$2" --log-level warn --threads "$THREADS" \
        >"$TMP/$1.log" 2>&1 &
    AUTHGATE_PID=$!
    PIDS+=("$AUTHGATE_PID")
    wait_http "http://127.0.0.1:$3/ready" "$AUTHGATE_PID" "$1" "$TMP/$1.log"
}

free_port; AG_PORT=$PORT
free_port; ADMIN_PORT=$PORT
# The main authgate also answers forward-auth checks (for front-check), when the binary has
# a [forward_auth] listener (an older AUTHGATE_BIN refuses the section: the targets go).
FA_SECTION=""
if [[ ${FA:-1} == 1 ]] && { selected front-proxy || selected front-check; }; then
    free_port; FA_PORT=$PORT
    printf '[forward_auth]\nlisten = "127.0.0.1:%s"\n' "$FA_PORT" >"$TMP/forward-auth-probe.toml"
    if "$BIN" check -c "$TMP/forward-auth-probe.toml" >/dev/null 2>&1; then
        FA_SECTION="[forward_auth]
listen = \"127.0.0.1:$FA_PORT\""
    else
        log "this authgate has no [forward_auth] listener: front-proxy and front-check are skipped"
    fi
fi
write_authgate_config "$TMP/authgate.toml" "$AG_PORT" "$ADMIN_PORT" "$FA_SECTION"
start_authgate authgate "$TMP/authgate.toml" "$ADMIN_PORT"
AG_PID=$AUTHGATE_PID
log "authgate pid $AG_PID on :$AG_PORT, admin :$ADMIN_PORT (CPU $PROXY_CPU, --threads $THREADS)"

# A second authgate, identical but with server.tls on its listener, for the *-tls and *-h2
# targets (authgate serves TLS on its main listener only).
ATLS_PID=-
if [[ $TLS_ON == 1 ]] && { selected authgate-apikey-tls || selected authgate-apikey-h2; }; then
    free_port; ATLS_PORT=$PORT
    free_port; ATLS_ADMIN_PORT=$PORT
    write_authgate_config "$TMP/authgate-tls.toml" "$ATLS_PORT" "$ATLS_ADMIN_PORT"
    sed -i "/^\[server\]\$/a tls = { cert = \"$TMP/tls.crt\", key = \"$TMP/tls.key\" }" "$TMP/authgate-tls.toml"
    "$BIN" check -c "$TMP/authgate-tls.toml" >"$TMP/authgate-tls.check" 2>&1 ||
        { cat "$TMP/authgate-tls.check" >&2; die "authgate refuses its TLS config $TMP/authgate-tls.toml"; }
    start_authgate authgate-tls "$TMP/authgate-tls.toml" "$ATLS_ADMIN_PORT"
    ATLS_PID=$AUTHGATE_PID
    log "authgate (TLS) pid $ATLS_PID on https :$ATLS_PORT, admin :$ATLS_ADMIN_PORT (CPU $PROXY_CPU, --threads $THREADS)"
fi

# The front nginx of the forward-auth targets, on LOAD_CPU (its CPU is reported apart): one
# server proxies through authgate, the other asks authgate's check listener (auth_request, as
# in config/examples/forward-auth.nginx.conf, reduced to what the route answers) and proxies
# to the upstream itself. Keep-alive everywhere, the check's connections included.
FRONT_PID=-
if [[ -n $FA_SECTION ]]; then
    free_port; FP_PORT=$PORT
    free_port; FC_PORT=$PORT
    start_nginx front "$LOAD_CPU" "
    upstream authgate_proxy {
        server 127.0.0.1:$AG_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    upstream authgate_check {
        server 127.0.0.1:$FA_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$FP_PORT reuseport backlog=4096;
        location / {
            proxy_pass http://authgate_proxy;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }
    server {
        listen 127.0.0.1:$FC_PORT reuseport backlog=4096;
        location / {
            auth_request /_authgate;
            auth_request_set \$authgate_method \$upstream_http_x_auth_method;
            auth_request_set \$authgate_subject \$upstream_http_x_auth_subject;
            auth_request_set \$authgate_tenant_id \$upstream_http_x_auth_tenant_id;
            auth_request_set \$authgate_key_id \$upstream_http_x_auth_key_id;
            auth_request_set \$authgate_scopes \$upstream_http_x_auth_scopes;
            auth_request_set \$authgate_request_id \$upstream_http_x_request_id;
            proxy_set_header X-Auth-Method \$authgate_method;
            proxy_set_header X-Auth-Subject \$authgate_subject;
            proxy_set_header X-Auth-Tenant-Id \$authgate_tenant_id;
            proxy_set_header X-Auth-Key-Id \$authgate_key_id;
            proxy_set_header X-Auth-Scopes \$authgate_scopes;
            proxy_set_header X-Request-Id \$authgate_request_id;
            proxy_set_header Authorization \"\";
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
        location = /_authgate {
            internal;
            proxy_pass http://authgate_check;
            proxy_pass_request_body off;
            proxy_set_header Content-Length \"\";
            proxy_set_header X-Original-Method \$request_method;
            proxy_set_header X-Original-URI \$request_uri;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
    FRONT_PID=$NGINX_PID
    wait_http "http://127.0.0.1:$FP_PORT/" "$FRONT_PID" "front nginx" "$TMP/nginx-front/error.log"
    wait_http "http://127.0.0.1:$FC_PORT/" "$FRONT_PID" "front nginx" "$TMP/nginx-front/error.log"
    log "front nginx pid $FRONT_PID: through authgate :$FP_PORT, auth_request to :$FA_PORT on :$FC_PORT (CPU $LOAD_CPU)"
fi

# A second authgate, identical but with its limiter state in Redis, for authgate-redis.
# on_backend_error = "deny": if Redis failed, the run would show 503 errors instead of
# silently measuring the local fallback.
RG_PID=- REDIS_PID=-
if [[ $LIMITS == 1 ]] && selected authgate-redis; then
    if [[ -z $REDIS_URL ]]; then
        command -v redis-server >/dev/null 2>&1 || die "authgate-redis needs redis-server (apt-get install redis-server) or REDIS_URL"
        free_port; REDIS_PORT=$PORT
        mkdir -p "$TMP/redis"
        taskset -c "$LOAD_CPU" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
            --appendonly no --dir "$TMP/redis" >"$TMP/redis/redis.log" 2>&1 &
        REDIS_PID=$!
        PIDS+=("$REDIS_PID")
        REDIS_URL=redis://127.0.0.1:$REDIS_PORT
        for ((i = 0; i < 100; i++)); do
            [[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]] && break
            alive "$REDIS_PID" || { cat "$TMP/redis/redis.log" >&2; die "redis-server failed to start"; }
            sleep 0.1
        done
        log "redis-server pid $REDIS_PID on :$REDIS_PORT (CPU $LOAD_CPU)"
    fi
    REDIS_PREFIX="authgate-load-$$-$RANDOM:"
    free_port; RG_PORT=$PORT
    free_port; RG_ADMIN_PORT=$PORT
    write_authgate_config "$TMP/authgate-redis.toml" "$RG_PORT" "$RG_ADMIN_PORT" "
[rate_limits]
backend = \"redis\"
on_backend_error = \"deny\"

[redis]
url = \"$REDIS_URL\"
key_prefix = \"$REDIS_PREFIX\""
    start_authgate authgate-redis "$TMP/authgate-redis.toml" "$RG_ADMIN_PORT"
    RG_PID=$AUTHGATE_PID
    log "authgate (redis backend, $REDIS_URL, key_prefix $REDIS_PREFIX) pid $RG_PID on :$RG_PORT, admin :$RG_ADMIN_PORT"
fi

# -------------------------------------------------------------- Targets ----
# add_target NAME URL PID [extra wrk args...]
# PID is the process whose CPU time is charged to the target ("-": none).
# Example for an API-key route:
#   add_target authgate-apikey "http://127.0.0.1:$AG_PORT/api/" "$AG_PID" \
#       -H "Authorization: Bearer $API_KEY"
add_target direct "http://127.0.0.1:$UP_PORT/" -
add_target authgate "http://127.0.0.1:$AG_PORT/" "$AG_PID"
add_target nginx "http://127.0.0.1:$NGX_PORT/" "$NGX_PID"
if [[ ${API:-1} == 1 ]]; then
    add_target authgate-apikey "http://127.0.0.1:$AG_PORT/api/x" "$AG_PID" -H "Authorization: Bearer $API_KEY"
    add_target nginx-apikey "http://127.0.0.1:$NGX_PORT/api/x" "$NGX_PID" -H "Authorization: Bearer $API_KEY"
    add_target authgate-jwt "http://127.0.0.1:$AG_PORT/jwt/x" "$AG_PID" -H "Authorization: Bearer $JWT"
    add_target authgate-401 "http://127.0.0.1:$AG_PORT/api/x" "$AG_PID" -H "Authorization: Bearer $BAD_KEY"
    add_target nginx-401 "http://127.0.0.1:$NGX_PORT/api/x" "$NGX_PID" -H "Authorization: Bearer $BAD_KEY"
fi
if [[ $LIMITS == 1 ]]; then
    # The API-key route with a rate limit that never refuses: local limiter, then Redis.
    add_target authgate-limited "http://127.0.0.1:$AG_PORT/limited/x" "$AG_PID" -H "Authorization: Bearer $API_KEY"
    [[ $RG_PID == - ]] ||
        add_target authgate-redis "http://127.0.0.1:$RG_PORT/limited/x" "$RG_PID" -H "Authorization: Bearer $API_KEY"
    [[ $REDIS_PID == - || -z ${TARGET_URL[authgate-redis]:-} ]] || TARGET_XPID[authgate-redis]=$REDIS_PID
fi
if [[ $FRONT_PID != - ]]; then
    # The same API-key route and key both ways; authgate's CPU is what is compared.
    add_target front-proxy "http://127.0.0.1:$FP_PORT/api/x" "$AG_PID" -H "Authorization: Bearer $API_KEY"
    add_target front-check "http://127.0.0.1:$FC_PORT/api/x" "$AG_PID" -H "Authorization: Bearer $API_KEY"
    for name in front-proxy front-check; do
        [[ -z ${TARGET_URL[$name]:-} ]] || TARGET_XPID[$name]=$FRONT_PID
    done
fi
if [[ $TLS_ON == 1 ]]; then
    # The API-key route and key over TLS 1.3: HTTP/1.1 keep-alive (wrk), then h2 (h2load).
    if [[ $ATLS_PID != - ]]; then
        add_target authgate-apikey-tls "https://127.0.0.1:$ATLS_PORT/api/x" "$ATLS_PID" -H "Authorization: Bearer $API_KEY"
    fi
    add_target nginx-apikey-tls "https://127.0.0.1:$NGX_TLS_PORT/api/x" "$NGX_PID" -H "Authorization: Bearer $API_KEY"
    if [[ $ATLS_PID != - ]]; then
        add_target authgate-apikey-h2 "https://127.0.0.1:$ATLS_PORT/api/x" "$ATLS_PID" -H "authorization: Bearer $API_KEY"
    fi
    add_target nginx-apikey-h2 "https://127.0.0.1:$NGX_TLS_PORT/api/x" "$NGX_PID" -H "authorization: Bearer $API_KEY"
    for name in authgate-apikey-h2 nginx-apikey-h2; do
        [[ -z ${TARGET_URL[$name]:-} ]] || TARGET_TOOL[$name]=h2load
    done
fi
((${#TARGET_NAMES[@]} > 0)) || die "TARGETS=$TARGETS selects no target"

if [[ -z $BASELINE ]]; then
    BASELINE=nginx
    [[ -n ${TARGET_URL[nginx]:-} ]] || BASELINE=${TARGET_NAMES[0]}
fi
[[ -n ${TARGET_URL[$BASELINE]:-} ]] || die "BASELINE=$BASELINE is not a target"

# Sanity check: every target answers 200 with the upstream body, using the
# target's -H headers, and on the API-key route 401 without them (over TLS with the
# target's HTTP version: 1.1 for wrk, 2 for h2load).
for name in "${TARGET_NAMES[@]}"; do
    target_args "$name"
    curl_args=() want_ver=1.1
    if [[ ${TARGET_URL[$name]} == https://* ]]; then
        curl_args=(--cacert "$TMP/tls.crt" --tlsv1.3)
        if [[ ${TARGET_TOOL[$name]:-wrk} == h2load ]]; then
            curl_args+=(--http2) want_ver=2
        else
            curl_args+=(--http1.1)
        fi
    fi
    if [[ ${TARGET_URL[$name]} == */api/* && $name != *-401 ]]; then
        code=$(curl -s -o /dev/null --max-time 5 -w '%{http_version} %{http_code}' "${curl_args[@]}" "${TARGET_URL[$name]}" || true)
        [[ $code == "$want_ver 401" ]] ||
            die "target $name: expected HTTP/$want_ver 401 without the key from ${TARGET_URL[$name]}, got '$code'"
    fi
    for ((i = 0; i < ${#ARGS[@]}; i++)); do
        if [[ ${ARGS[i]} == -H || ${ARGS[i]} == --header ]]; then
            curl_args+=(-H "${ARGS[i + 1]}")
            i=$((i + 1))
        fi
    done
    if [[ $name == *-401 ]]; then
        code=$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' "${curl_args[@]}" "${TARGET_URL[$name]}" || true)
        [[ $code == 401 ]] || die "target $name: expected 401 from ${TARGET_URL[$name]}, got $code"
        continue
    fi
    resp=$(curl -s --max-time 5 -w ' %{http_version} %{http_code}' "${curl_args[@]}" "${TARGET_URL[$name]}" || true)
    [[ $resp == "ok $want_ver 200" ]] ||
        die "target $name: expected 'ok $want_ver 200' from ${TARGET_URL[$name]}, got '${resp:0:200}'"
done

# The Redis target must really have gone through Redis: its limit state is there.
if [[ -n ${TARGET_URL[authgate-redis]:-} ]]; then
    states=$(redis-cli -u "$REDIS_URL" --scan --pattern "${REDIS_PREFIX}rl:*" | wc -l)
    ((states > 0)) || die "authgate-redis: no limit state under ${REDIS_PREFIX}rl:* in $REDIS_URL"
fi

# TLS: which suite wrk offers first (the probe logs what each handshake chose, the client's
# order deciding), and what each proxy negotiates with an OpenSSL client pinned like wrk and,
# for comparison, unpinned (OpenSSL's default order, AES-256 first).
TLS_NOTES=()
if [[ $TLS_ON == 1 ]]; then
    OPENSSL_CONF=$TLS_CLIENT_CNF taskset -c "$LOAD_CPU" wrk -t1 -c1 -d1s "https://127.0.0.1:$PROBE_PORT/" \
        >"$TMP/tls-probe.wrk" 2>&1 || { cat "$TMP/tls-probe.wrk" >&2; die "wrk over TLS to the probe failed"; }
    wrk_suite=$(sort -u "$TMP/tls-probe.log" 2>/dev/null | paste -sd, -)
    [[ $wrk_suite == "TLSv1.3 $TLS_SUITE" ]] ||
        die "wrk (OPENSSL_CONF=$TLS_CLIENT_CNF) negotiated '$wrk_suite' with the TLS probe, not TLSv1.3 $TLS_SUITE"
    TLS_NOTES+=("wrk (OPENSSL_CONF) offers and gets: $wrk_suite")
    s_client_suite() { # s_client_suite PORT [OPENSSL_CONF] -> "TLSv1.3 SUITE"
        local envp=()
        [[ -z ${2:-} ]] || envp=(env "OPENSSL_CONF=$2")
        "${envp[@]}" timeout 5 openssl s_client -connect "127.0.0.1:$1" \
            -CAfile "$TMP/tls.crt" -verify_return_error </dev/null 2>/dev/null |
            sed -n 's/^New, \(.*\), Cipher is \(.*\)$/\1 \2/p' | head -n1
    }
    for name in authgate nginx; do
        if [[ $name == authgate ]]; then port=${ATLS_PORT:-}; else port=$NGX_TLS_PORT; fi
        [[ -n $port ]] || continue
        pinned=$(s_client_suite "$port" "$TLS_CLIENT_CNF")
        [[ $pinned == "TLSv1.3 $TLS_SUITE" ]] ||
            die "$name over TLS negotiates '$pinned' with a client offering $TLS_SUITE alone"
        unpinned=$(s_client_suite "$port")
        TLS_NOTES+=("$name: $pinned (openssl s_client pinned like wrk; unpinned OpenSSL client: ${unpinned:-handshake failed})")
    done
fi

# ---------------------------------------------------------------- runs ----
START=$(date +%s)
if [[ $WARMUP != 0 && $WARMUP != 0s ]]; then
    log "warm-up: $WARMUP per target"
    ROUND=0
    for name in "${TARGET_NAMES[@]}"; do
        target_args "$name"
        RECORD=0 bench_target "$name" "${TARGET_URL[$name]}" "${TARGET_PID[$name]}" "${ARGS[@]}"
    done
fi
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    for name in "${TARGET_NAMES[@]}"; do
        target_args "$name"
        bench_target "$name" "${TARGET_URL[$name]}" "${TARGET_PID[$name]}" "${ARGS[@]}"
    done
done
log "runs took $(($(date +%s) - START)) s"

# --------------------------------------------------------------- report ----
ratio() { # ratio A B
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f\n", a / b }'
}
fmt() { # fmt PRINTF_FMT VALUE
    if [[ $2 == - ]]; then echo -; else awk -v v="$2" -v f="$1" 'BEGIN {printf f "\n", v}'; fi
}

# shellcheck disable=SC2086 # word splitting of the per-round lists is intended
{
    b_rps=$(median ${R_RPS[$BASELINE]})
    b_p99=$(median ${R_P99[$BASELINE]})
    b_cpu=$(median ${R_CPU[$BASELINE]})
    cmd="ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS WARMUP=$WARMUP THREADS=$THREADS"
    [[ -z ${AUTHGATE_BIN:-} ]] || cmd+=" AUTHGATE_BIN=$(printf '%q' "$AUTHGATE_BIN")"
    [[ $PROXY_CPU == 0 && $LOAD_CPU == 1 ]] || cmd+=" PROXY_CPU=$PROXY_CPU LOAD_CPU=$LOAD_CPU"
    [[ $BASELINE == nginx ]] || cmd+=" BASELINE=$BASELINE"
    [[ -z $TARGETS ]] || cmd+=" TARGETS=$(printf '%q' "$TARGETS")"
    [[ $LIMITS == 1 ]] || cmd+=" LIMITS=$LIMITS"
    [[ $REDIS_PID != - || -z ${TARGET_URL[authgate-redis]:-} ]] || cmd+=" REDIS_URL=$REDIS_URL"
    [[ $TLS == 1 ]] || cmd+=" TLS=$TLS"
    [[ $TLS_SUITE == TLS_AES_128_GCM_SHA256 ]] || cmd+=" TLS_SUITE=$TLS_SUITE"
    [[ $H2_STREAMS == 8 ]] || cmd+=" H2_STREAMS=$H2_STREAMS"
    cmd+=" $INVOKED_AS"

    echo "## authgate load benchmark"
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- Command: \`$cmd\`"
    echo "- Machine: nproc=$(nproc), CPU: $(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r)"
    echo "- Tools: $(wrk -v 2>&1 | awk 'NR == 1 {print $1, $2}'), $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), authgate: \`$BIN\` ($("$BIN" --version 2>/dev/null | head -n1 || true))"
    echo "- Load: \`wrk -t1 -c$CONNS -d$DURATION --latency\`, keep-alive GET /, upstream nginx \`return 200 \"ok\"\`;" \
        "$ROUNDS rounds interleaved ($(
            IFS=,
            echo "${TARGET_NAMES[*]}"
        )), medians over rounds"
    if [[ $TLS_ON == 1 ]]; then
        echo "- TLS (*-tls, *-h2): TLS 1.3 to the proxy (self-signed EC P-256 certificate, both proxies), plain http to the upstream;" \
            "*-tls: wrk as above over https; *-h2: \`h2load -t1 -c$CONNS -m$H2_STREAMS -D $DURATION --tls13-ciphers=$TLS_SUITE\`" \
            "($(h2load --version 2>/dev/null | head -n1 || echo 'h2load ?'); ALPN h2, p50/p99 from its per-request log);" \
            "authgate: a second process with server.tls, nginx: an ssl http2 server in the proxy nginx"
        echo "- TLS cipher suites: clients pinned to $TLS_SUITE$(printf '; %s' "${TLS_NOTES[@]}")$(for name in "${TARGET_NAMES[@]}"; do [[ -z ${R_SUITE[$name]:-} ]] || printf '; h2load %s: %s' "$name" "${R_SUITE[$name]}"; done)"
    fi
    echo "- Pinning: proxies on CPU $PROXY_CPU (authgate --threads $THREADS, nginx 1 process); wrk + upstream nginx on CPU $LOAD_CPU"
    echo "- Noise: CPU $PROXY_CPU was busy with other work for at most $MAX_OTHER% of a proxy run$( ((MAX_OTHER <= 5)) || echo ' (NOISY: req/s and latency unreliable, CPU µs/req still usable)')"
    echo "- CPU µs/req: utime+stime of the proxy process (/proc/<pid>/stat, all threads, CLK_TCK=$CLK_TCK) over the run / requests; \"of which user\": utime alone"
    echo
    echo "| target | req/s | p50 ms | p99 ms | CPU µs/req | of which user | req/s vs $BASELINE | CPU vs $BASELINE | p99 vs $BASELINE | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for name in "${TARGET_NAMES[@]}"; do
        rps=$(median ${R_RPS[$name]})
        p50=$(median ${R_P50[$name]})
        p99=$(median ${R_P99[$name]})
        cpu=$(median ${R_CPU[$name]})
        usr=$(median ${R_USR[$name]})
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" \
            "$(fmt %.0f "$rps")" "$(fmt %.3f "$p50")" "$(fmt %.3f "$p99")" "$(fmt %.2f "$cpu")" "$(fmt %.2f "$usr")" \
            "$(ratio "$rps" "$b_rps")" "$(ratio "$cpu" "$b_cpu")" "$(ratio "$p99" "$b_p99")" \
            "${R_ERR[$name]:-0}"
    done
    echo
    echo "Per-round values (req/s; CPU µs/req):"
    echo
    for name in "${TARGET_NAMES[@]}"; do
        echo "- $name: ${R_RPS[$name]% }; ${R_CPU[$name]% }"
    done
    pairs=""
    for suffix in apikey apikey-tls apikey-h2; do
        [[ -n ${TARGET_URL[authgate-$suffix]:-} && -n ${TARGET_URL[nginx-$suffix]:-} ]] || continue
        pairs+="$([[ -z $pairs ]] || echo ';') $suffix: CPU $(ratio "$(median ${R_CPU[authgate-$suffix]})" "$(median ${R_CPU[nginx-$suffix]})")"
        pairs+=", req/s $(ratio "$(median ${R_RPS[authgate-$suffix]})" "$(median ${R_RPS[nginx-$suffix]})")"
    done
    if [[ -n $pairs ]]; then
        echo
        echo "authgate / nginx on the same route and transport (medians):$pairs"
    fi
    if [[ -n ${TARGET_URL[front-proxy]:-} && -n ${TARGET_URL[front-check]:-} ]]; then
        fa_proxy=$(median ${R_CPU[front-proxy]})
        fa_check=$(median ${R_CPU[front-check]})
        echo
        echo "Forward-auth, route /api/ with one API key: authgate CPU per check $(fmt %.2f "$fa_check") µs" \
            "(front-check) vs per proxied request $(fmt %.2f "$fa_proxy") µs (front-proxy): ratio $(ratio "$fa_check" "$fa_proxy")" \
            "(issue #15: at most 0.6). Front nginx (CPU $LOAD_CPU) µs/req: front-proxy $(fmt %.2f "$(median ${R_XCPU[front-proxy]})")," \
            "front-check $(fmt %.2f "$(median ${R_XCPU[front-check]})")."
    fi
    if [[ -n ${TARGET_URL[authgate-redis]:-} ]]; then
        echo
        if [[ -n ${R_XCPU[authgate-redis]:-} ]]; then
            echo "redis-server (CPU $LOAD_CPU) CPU µs/req during authgate-redis: $(fmt %.2f "$(median ${R_XCPU[authgate-redis]})") (per round: ${R_XCPU[authgate-redis]% })"
        fi
        errors=$(curl -s "http://127.0.0.1:$RG_ADMIN_PORT/metrics" |
            awk '/^authgate_rate_limit_(backend_errors|fallbacks)_total/ {n += $NF} END {print n + 0}')
        echo "authgate-redis: Redis errors + fallbacks during the runs: $errors (must be 0)"
    fi
}
