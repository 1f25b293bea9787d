#!/usr/bin/env bash
# User-space instructions per proxied request, authgate vs nginx, counted by callgrind.
#
# Unlike CPU time, instruction counts repeat to within a fraction of a percent whatever else
# the machine does, so this is the figure to compare changes with on a shared machine.
# Kernel work (system calls, TCP) is not counted: see benches/load.sh for total CPU.
#
#   benches/callgrind.sh                     # public route, authgate and nginx
#   AUTHGATE_BIN=target/profiling/authgate TARGETS=authgate benches/callgrind.sh
#   TARGETS="authgate-apikey authgate-401" benches/callgrind.sh   # API-key route
#   TARGETS="authgate-apikey nginx-apikey" benches/callgrind.sh   # API-key route, both proxies
#   TARGETS="authgate-apikey authgate-apikey-assert" benches/callgrind.sh   # signed assertion cost
#   TARGETS="authgate-apikey authgate-apikey-db" benches/callgrind.sh   # key service: usage counting
#   TARGETS="authgate-apikey authgate-check" benches/callgrind.sh   # forward-auth check vs proxied
#   TARGETS="authgate-apikey authgate-apikey-h2 nginx-h2" benches/callgrind.sh   # HTTP/2 (h2c)
#   TARGETS="authgate-apikey-h2tls nginx-h2tls" benches/callgrind.sh   # HTTP/2 over TLS
#
# Knobs: AUTHGATE_BIN (default: cargo build --profile profiling --locked: the release build
# with symbols, so the kept profiles name functions; the instructions are the release's), TARGETS ("authgate nginx";
# also authgate-apikey: the API-key route with a valid cached key, and authgate-401: the same
# route with a well-formed unknown key, refused with 401; nginx-401: nginx refusing the same
# key with a `map` check; nginx-apikey: nginx accepting a known key with load.sh's `map` check
# and headers; authgate-apikey-assert: authgate-apikey with identity.assertion on,
# so each request carries the identity's cached signed assertion; authgate-check: the same
# key's request asked of the [forward_auth] listener as nginx's auth_request asks it,
# X-Original-Method/-URI and X-Forwarded-Host, answered 200 with the identity;
# authgate-apikey-h2: authgate-apikey's route and key over cleartext HTTP/2 with prior knowledge
# on the main listener, loaded by h2load -t1 -c8 -m8 (8 connections of 8 concurrent streams),
# the requests counted being h2load's succeeded ones, and the run failing unless every answer
# was 2xx; nginx-h2: the nginx target's public-route proxy on a port of its own with
# `listen ... http2` (prior-knowledge h2c; that port refuses HTTP/1.1), loaded the same way;
# authgate-apikey-h2tls and nginx-h2tls: the same two over TLS 1.3 (ALPN h2, one self-signed
# EC P-256 certificate, TLS_AES_128_GCM_SHA256 for both), the encryption counted with the
# rest),
# DURATION (wrk/h2load seconds counted, default 10), KEEP_TMP=1 (keep the callgrind profiles). Needs valgrind, wrk, nginx
# (and h2load, apt package nghttp2-client, for an -h2 target: installed with apt if missing).
# Each proxy runs under callgrind on CPU 0, wrk or h2load and the upstream nginx on CPU 1.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=${TARGETS:-authgate nginx}
DURATION=${DURATION:-10}
log() { printf '[callgrind.sh] %s\n' "$*" >&2; }
tools=(valgrind wrk nginx curl)
[[ " $TARGETS " == *"-h2 "* || " $TARGETS " == *"-h2tls "* ]] && tools+=(h2load openssl)
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x /usr/sbin/$tool ]] || {
        pkg=$tool
        [[ $tool == h2load ]] && pkg=nghttp2-client
        log "installing $pkg"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
    }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [[ -z ${AUTHGATE_BIN:-} ]]; then
    cargo build --profile profiling --locked >&2
    AUTHGATE_BIN=target/profiling/authgate
fi

TMP=$(mktemp -d -t authgate-callgrind.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $TMP (callgrind_annotate $TMP/NAME.out.1)"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nginx_conf() { # nginx_conf DIR SERVER_BLOCK
    mkdir -p "$1"
    cat >"$1/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $1; proxy_temp_path $1; fastcgi_temp_path $1;
    uwsgi_temp_path $1; scgi_temp_path $1;
    $2
}
EOF
}
wait_http() { # wait_http URL [CURL_ARG...]
    for _ in $(seq 1 100); do curl -s -o /dev/null "${@:2}" "$1" && return 0; sleep 0.2; done
    log "no answer from $1"; exit 1
}

UP=$(port)
nginx_conf "$TMP/upstream" "server { listen 127.0.0.1:$UP; location / { return 200 \"ok\"; } }"
taskset -c 1 "$NGINX" -c "$TMP/upstream/nginx.conf" &
PIDS+=($!)
wait_http "http://127.0.0.1:$UP/"

if [[ " $TARGETS " == *"-h2tls "* ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -keyout "$TMP/tls.key" -out "$TMP/tls.crt" -subj /CN=127.0.0.1 \
        -addext subjectAltName=IP:127.0.0.1 2>/dev/null || { log "cannot make the TLS certificate"; exit 1; }
fi

# h2load_run NAME SECONDS URL [H2LOAD_ARG...]: h2load over prior-knowledge h2c from CPU 1;
# sets n to the succeeded requests, and fails the run unless every answer was 2xx.
h2load_run() {
    local name=$1 secs=$2 url=$3 out=$TMP/$1.h2load ok codes
    local tls=()
    [[ $url == https:* ]] && tls=(--tls13-ciphers=TLS_AES_128_GCM_SHA256)
    taskset -c 1 h2load -t1 -c8 -m8 -D "$secs" "${tls[@]}" "${@:4}" "$url" >"$out" 2>&1 || true
    n=$(awk '/^requests:/ {for (i = 2; i < NF; i++) if ($(i + 1) ~ /^succeeded/) print $i}' "$out")
    codes=$(awk '/^status codes:/ {print $3, $5, $7, $9}' "$out") # 2xx 3xx 4xx 5xx
    ok=${codes%% *}
    if [[ -z $n || $n == 0 || $codes != "$ok 0 0 0" || $ok != "$n" ]]; then
        log "$name: h2load answers not all 2xx (succeeded ${n:-?}; 2xx 3xx 4xx 5xx: ${codes:-?}):"
        cat "$out" >&2
        exit 1
    fi
}

# count NAME URL AUTH COMMAND...: runs COMMAND under callgrind, loads URL (with
# `Authorization: AUTH` unless AUTH is empty) and prints instructions per request.
# A NAME ending in -h2 is loaded by h2load over prior-knowledge h2c, one ending in -h2tls by
# h2load over TLS, any other by wrk.
count() {
    local name=$1 url=$2 auth=$3 pid n total
    local header=("${EXTRA_HEADERS[@]}")
    shift 3
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$TMP/$name.out" "$@" \
        >"$TMP/$name.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    if [[ $name == *-h2 || $name == *-h2tls ]]; then
        [[ -n $auth ]] && header+=(-H "authorization: $auth")
        if [[ $name == *-h2tls ]]; then
            wait_http "${url%/*}/" --http2 --cacert "$TMP/tls.crt"
        else
            wait_http "${url%/*}/" --http2-prior-knowledge
        fi
        h2load_run "$name" 3 "$url" "${header[@]}"
        callgrind_control -z "$pid" >/dev/null 2>&1
        h2load_run "$name" "$DURATION" "$url" "${header[@]}"
    else
        [[ -n $auth ]] && header+=(-H "Authorization: $auth")
        wait_http "${url%/*}/"
        taskset -c 1 wrk -t1 -c8 -d3s "${header[@]}" "$url" >/dev/null
        callgrind_control -z "$pid" >/dev/null 2>&1
        n=$(taskset -c 1 wrk -t1 -c8 -d"${DURATION}s" "${header[@]}" "$url" | awk '/requests in/ {print $1}')
    fi
    callgrind_control -d "$pid" >/dev/null 2>&1
    sleep 1
    total=$(callgrind_annotate "$TMP/$name.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    kill "$pid" 2>/dev/null || true
    printf '| %s | %s | %s |\n' "$name" "$n" "$((total / n))"
}

EXTRA_HEADERS=()
echo "| proxy | requests counted | user-space instructions per request |"
echo "|---|---:|---:|"
for target in $TARGETS; do
    case $target in
    authgate | authgate-apikey | authgate-apikey-assert | authgate-401 | authgate-apikey-db | authgate-check | authgate-apikey-h2 | authgate-apikey-h2tls)
        AG=$(port) ADMIN=$(port) FA=$(port)
        [[ -f $TMP/keys.toml ]] ||
            KEY=$("$AUTHGATE_BIN" keys add --file "$TMP/keys.toml" --tenant t1 --scope api | sed -n 1p)
        # authgate-apikey-db: the same key in the key service's SQLite database, so every
        # request is also counted in the per-key usage (flushed every 10 s).
        keys_source="file = \"$TMP/keys.toml\""
        if [[ $target == authgate-apikey-db ]]; then
            rm -f "$TMP"/keys.db*
            "$AUTHGATE_BIN" keys import --file "$TMP/keys.toml" --database "sqlite://$TMP/keys.db" >/dev/null
            keys_source="source = \"database\"
[database]
url = \"sqlite://$TMP/keys.db\""
        fi
        cat >"$TMP/authgate.toml" <<EOF
[server]
listen = "127.0.0.1:$AG"
[admin]
listen = "127.0.0.1:$ADMIN"
[log]
access_log = false
[api_keys]
$keys_source
[[routes]]
name = "api"
match = { path_prefix = "/api/" }
upstream = "http://127.0.0.1:$UP"
auth = ["api_key"]
scopes = ["api"]
[[routes]]
name = "public"
match = { path_prefix = "/" }
upstream = "http://127.0.0.1:$UP"
auth = "none"
EOF
        # The signing key is generated at the first start (absent file) and reused after.
        # The 401 target repeats one unknown key from one client: with the default per-client
        # failure limit it would be answered 429 after 50 requests. A limit it never reaches
        # keeps the limiter's check and bookkeeping in the count while every answer is a 401.
        # (A build older than the limiter refuses the field: it is then left out.)
        if [[ $target == authgate-401 ]]; then
            cp "$TMP/authgate.toml" "$TMP/authgate.toml.plain"
            sed -i 's/^\[api_keys\]$/[api_keys]\nfailed_auth_limit = { requests_per_second = 1000000000, burst = 1000000000 }/' "$TMP/authgate.toml"
            "$AUTHGATE_BIN" check -c "$TMP/authgate.toml" >/dev/null 2>&1 ||
                mv "$TMP/authgate.toml.plain" "$TMP/authgate.toml"
        fi
        [[ $target == authgate-apikey-assert ]] &&
            printf '[identity]\nassertion = { key = "%s/assertion.pem" }\n' "$TMP" >>"$TMP/authgate.toml"
        [[ $target == authgate-apikey-h2tls ]] &&
            sed -i "/^\[server\]\$/a tls = { cert = \"$TMP/tls.crt\", key = \"$TMP/tls.key\" }" "$TMP/authgate.toml"
        [[ $target == authgate-check ]] &&
            printf '[forward_auth]\nlisten = "127.0.0.1:%s"\n' "$FA" >>"$TMP/authgate.toml"
        EXTRA_HEADERS=()
        case $target in
        authgate-check)
            url="http://127.0.0.1:$FA/_authgate" auth="Bearer $KEY"
            EXTRA_HEADERS=(-H "X-Original-Method: GET" -H "X-Original-URI: /api/x" -H "X-Forwarded-Host: 127.0.0.1:$AG")
            ;;
        authgate) url="http://127.0.0.1:$AG/" auth="" ;;
        authgate-apikey | authgate-apikey-assert | authgate-apikey-db | authgate-apikey-h2) url="http://127.0.0.1:$AG/api/x" auth="Bearer $KEY" ;;
        authgate-apikey-h2tls) url="https://127.0.0.1:$AG/api/x" auth="Bearer $KEY" ;;
        *) url="http://127.0.0.1:$AG/api/x" auth="Bearer sgk_$(printf 'x%.0s' {1..40})" ;;
        esac
        count "$target" "$url" "$auth" "$AUTHGATE_BIN" serve --config "$TMP/authgate.toml" --threads 1
        ;;
    nginx | nginx-h2 | nginx-h2tls)
        # nginx-h2: the same proxy on a port of its own that speaks only (prior-knowledge) h2c;
        # nginx-h2tls: HTTP/2 over TLS with authgate-apikey-h2tls's certificate.
        PX=$(port) dir=$TMP/proxy listen_opts="" scheme=http
        [[ $target == nginx-h2 ]] && dir=$TMP/proxyh2 listen_opts=" http2"
        [[ $target == nginx-h2tls ]] && dir=$TMP/proxyh2tls scheme=https \
            listen_opts=" ssl http2; ssl_certificate $TMP/tls.crt; ssl_certificate_key $TMP/tls.key; ssl_protocols TLSv1.3"
        nginx_conf "$dir" "upstream backend { server 127.0.0.1:$UP; keepalive 64; }
    server { listen 127.0.0.1:$PX$listen_opts; location / { proxy_pass http://backend; proxy_http_version 1.1;
        proxy_set_header Connection \"\"; proxy_set_header Host \$http_host;
        proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto \$scheme; proxy_set_header X-Forwarded-Host \$host;
        proxy_set_header X-Request-Id \$request_id; } }"
        count "$target" "$scheme://127.0.0.1:$PX/" "" "$NGINX" -c "$dir/nginx.conf"
        ;;
    nginx-apikey)
        # The API-key route as benches/load.sh's nginx-apikey does it: a `map` of the key to
        # allowed and to its tenant, the credential dropped, the tenant and the forwarding
        # headers set. One key in the map: a hash lookup costs the same at 10,000.
        PX=$(port)
        nginx_conf "$TMP/proxyapikey" "upstream backend { server 127.0.0.1:$UP; keepalive 64; }
    map \$http_authorization \$api_key_ok { default 0; \"Bearer sgk_known\" 1; }
    map \$http_authorization \$api_tenant { default \"\"; \"Bearer sgk_known\" t1; }
    server { listen 127.0.0.1:$PX; location /api/ { if (\$api_key_ok = 0) { return 401; }
        proxy_pass http://backend; proxy_http_version 1.1;
        proxy_set_header Connection \"\"; proxy_set_header Authorization \"\";
        proxy_set_header Host \$http_host; proxy_set_header X-Auth-Tenant-Id \$api_tenant;
        proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto \$scheme; proxy_set_header X-Forwarded-Host \$host;
        proxy_set_header X-Request-Id \$request_id; } }"
        count nginx-apikey "http://127.0.0.1:$PX/api/x" "Bearer sgk_known" \
            "$NGINX" -c "$TMP/proxyapikey/nginx.conf"
        ;;
    nginx-401)
        # nginx refusing an unknown key with a `map` check, as benches/load.sh's nginx-401.
        PX=$(port)
        nginx_conf "$TMP/proxy401" "map \$http_authorization \$api_key_ok { default 0; \"Bearer sgk_known\" 1; }
    server { listen 127.0.0.1:$PX; location / { return 200 \"ok\"; }
        location /api/ { if (\$api_key_ok = 0) { return 401; } return 200 \"ok\"; } }"
        count nginx-401 "http://127.0.0.1:$PX/api/x" "Bearer sgk_$(printf 'x%.0s' {1..40})" \
            "$NGINX" -c "$TMP/proxy401/nginx.conf"
        ;;
    *) log "unknown target $target"; exit 1 ;;
    esac
done
