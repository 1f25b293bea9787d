#!/usr/bin/env bash
# Key-flood benchmark: SECONDS of distinct, well-formed, unknown API keys (CONCURRENCY
# connections, clients spread over 65,536 addresses via a trusted X-Forwarded-For) against a
# gateway whose keys come from a key source, while one valid key keeps calling.
# Prints, every 5 s, RSS, key-source lookups per second, the flood's answers and the valid
# key's, first with the old behaviour reproduced by config ("before": a million unknown keys
# remembered, no real lookup budget, no failure limit), then with the defaults ("after").
#
# Key sources (SOURCE):
#   control_plane  a mock control plane in the process (404 for every key but the valid one)
#   database       the key service on a SQLite file in a temp folder, seeded with the valid key
#                  by `authgate keys add --database`; the flood's keys carry valid checksums,
#                  so each one is a lookup candidate (the worst case for the database)
#
# Usage:
#   benches/key_flood.sh                     # builds the example and authgate first (release)
#   SOURCE=database benches/key_flood.sh
#   BIN=target/release/examples/key_flood AUTHGATE=target/release/authgate SOURCE=database benches/key_flood.sh
#
# Knobs (environment): SOURCE=control_plane, SECONDS_PER_RUN=60, CONCURRENCY=64,
# MODES="before after". Runtime: about 2 × SECONDS_PER_RUN after the build.
set -euo pipefail

cd "$(dirname "$0")/.."
SOURCE=${SOURCE:-control_plane}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-60}
CONCURRENCY=${CONCURRENCY:-64}
MODES=${MODES:-before after}

log() { printf '[key_flood] %s\n' "$*" >&2; }

case $SOURCE in
    control_plane | database) ;;
    *) log "error: SOURCE must be control_plane or database, not $SOURCE"; exit 2 ;;
esac

if [[ -z ${BIN:-} || ($SOURCE == database && -z ${AUTHGATE:-}) ]]; then
    log "building (cargo build --release --locked --example key_flood --bin authgate)"
    cargo build --release --locked --example key_flood --bin authgate >&2
fi
BIN=${BIN:-target/release/examples/key_flood}
AUTHGATE=${AUTHGATE:-target/release/authgate}
[[ -x $BIN ]] || { log "error: no benchmark binary at $BIN"; exit 2; }

for mode in $MODES; do
    if [[ $SOURCE == database ]]; then
        [[ -x $AUTHGATE ]] || { log "error: no authgate binary at $AUTHGATE"; exit 2; }
        # A fresh database per run, so "before" and "after" start alike.
        dir=$(mktemp -d "${TMPDIR:-/tmp}/authgate-key-flood-db.XXXXXX")
        trap 'rm -rf "$dir"' EXIT
        database="sqlite://$dir/keys.db"
        seeded=$("$AUTHGATE" keys add --database "$database" --tenant acme \
            --description "the key-flood benchmark's valid key")
        export KEY_FLOOD_DATABASE=$database
        KEY_FLOOD_VALID_KEY=$(sed -n 1p <<<"$seeded")
        export KEY_FLOOD_VALID_KEY
        log "seeded $database with key_id $(sed -n 2p <<<"$seeded")"
    fi
    log "running $mode against the $SOURCE source for ${SECONDS_PER_RUN} s"
    "$BIN" "$mode" "$SECONDS_PER_RUN" "$CONCURRENCY"
    if [[ $SOURCE == database ]]; then
        rm -rf "$dir"
        trap - EXIT
    fi
    echo
done
