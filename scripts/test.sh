#!/usr/bin/env bash
# The test command (README): makes sure what the tests need is running, then runs every test.
# Safe on a fresh machine and on CI; it only starts what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# A real Redis on 127.0.0.1:6379 for the cluster rate-limit and revocation tests.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  if ! command -v redis-server >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  fi
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  for _ in $(seq 1 50); do
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
    sleep 0.1
  done
fi

# PyJWT for the upstream-verification example that tests/assertion.rs runs (docs/assertion.md).
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import jwt, cryptography' >/dev/null 2>&1; then
  python3 -m pip install --quiet pyjwt cryptography
fi

cargo test --locked --all-targets "$@"
