#!/usr/bin/env bash
# Revocation propagation benchmark (issue: instant revocation): three authgate
# instances sharing one Redis; COUNT revocations of distinct API keys made through
# instance A's admin API; for each, the time from the API call returning until every
# instance refuses the key (each polled on its main port with the key). Prints
# p50/p99/max and compares p99 with the target (100 ms).
#
# The instances run in one process (examples/revocation_propagation.rs starts them
# through the library API, as the tests do), each with its own listeners, key store,
# revocation list and Redis subscriber.
#
# Usage:
#   benches/revocation_propagation.sh          # builds the release example first
#   BIN=target/release/examples/revocation_propagation benches/revocation_propagation.sh
#
# Knobs (environment):
#   COUNT=200                        revocations (distinct keys), at least 100
#   INSTANCES=3                      gateways
#   TARGET_MS=100                    p99 target
#   REDIS_URL=redis://127.0.0.1:6379 (a redis-server is started on it if it does not
#                                    answer PING and the host is local; stopped after)
# Exit status: 0 when p99 <= TARGET_MS and every instance refused every key, 1 otherwise.
# Runtime: a few seconds after the build.
set -euo pipefail

cd "$(dirname "$0")/.."
COUNT=${COUNT:-200}
INSTANCES=${INSTANCES:-3}
TARGET_MS=${TARGET_MS:-100}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}

log() { printf '[revocation_propagation] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

command -v redis-cli >/dev/null || die "redis-cli is needed"
((COUNT >= 100)) || die "COUNT must be at least 100"

if [[ -z ${BIN:-} ]]; then
    log "building the release example (cargo build --release --locked --example revocation_propagation)"
    cargo build --release --locked --example revocation_propagation >&2
fi
BIN=${BIN:-target/release/examples/revocation_propagation}
[[ -x $BIN ]] || die "no benchmark binary at $BIN"

REDIS_PID=
TMP=$(mktemp -d -t authgate-revocation-propagation.XXXXXX)
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $REDIS_PID ]]; then
        kill -TERM "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

REDIS_HOSTPORT=${REDIS_URL#redis://}
REDIS_HOSTPORT=${REDIS_HOSTPORT##*@}
REDIS_HOSTPORT=${REDIS_HOSTPORT%%/*}
REDIS_HOST=${REDIS_HOSTPORT%:*}
REDIS_PORT=${REDIS_HOSTPORT##*:}
if [[ $(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" PING 2>/dev/null || true) != PONG ]]; then
    [[ $REDIS_HOST == 127.0.0.1 || $REDIS_HOST == localhost ]] ||
        die "Redis at $REDIS_URL does not answer"
    command -v redis-server >/dev/null || die "redis-server is needed"
    log "starting redis-server on port $REDIS_PORT"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        --daemonize no >"$TMP/redis.log" 2>&1 &
    REDIS_PID=$!
    for ((i = 0; i < 100; i++)); do
        [[ $(redis-cli -p "$REDIS_PORT" PING 2>/dev/null || true) == PONG ]] && break
        sleep 0.05
    done
fi

echo "machine: $(nproc) cores, $(uname -sr); redis $(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" INFO server | tr -d '\r' | awk -F: '/^redis_version/ { print $2 }')"
"$BIN" --redis "$REDIS_URL" --count "$COUNT" \
    --instances "$INSTANCES" --target-ms "$TARGET_MS"
