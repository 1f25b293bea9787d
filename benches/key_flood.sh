#!/usr/bin/env bash
# Key-flood benchmark: SECONDS of distinct, well-formed, unknown API keys (CONCURRENCY
# connections, clients spread over 65,536 addresses via a trusted X-Forwarded-For) against a
# gateway whose keys come from a mock control plane, while one valid key keeps calling.
# Prints, every 5 s, RSS, control-plane lookups per second, the flood's answers and the
# valid key's, first with the old behaviour reproduced by config ("before": a million unknown
# keys remembered, no real lookup budget, no failure limit), then with the defaults ("after").
#
# Usage:
#   benches/key_flood.sh                     # builds the example first (bench profile)
#   BIN=target/release/examples/key_flood benches/key_flood.sh
#
# Knobs (environment): SECONDS_PER_RUN=60, CONCURRENCY=64, MODES="before after".
# Runtime: about 2 × SECONDS_PER_RUN after the build.
set -euo pipefail

cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${SECONDS_PER_RUN:-60}
CONCURRENCY=${CONCURRENCY:-64}
MODES=${MODES:-before after}

log() { printf '[key_flood] %s\n' "$*" >&2; }

if [[ -z ${BIN:-} ]]; then
    log "building the example (cargo build --profile bench --locked --example key_flood)"
    cargo build --profile bench --locked --example key_flood >&2
fi
BIN=${BIN:-target/release/examples/key_flood}
[[ -x $BIN ]] || { log "error: no benchmark binary at $BIN"; exit 2; }

for mode in $MODES; do
    log "running $mode for ${SECONDS_PER_RUN} s"
    "$BIN" "$mode" "$SECONDS_PER_RUN" "$CONCURRENCY"
    echo
done
