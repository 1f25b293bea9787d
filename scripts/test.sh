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

# PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth on loopback) for the key service's
# tests (tests/common/database.rs); they fail loudly without it unless AUTHGATE_SKIP_POSTGRES=1.
if [ "${AUTHGATE_SKIP_POSTGRES:-}" != 1 ]; then
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
      apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
      # A fresh cluster asks for passwords on TCP; the tests connect as postgres without one,
      # on loopback only.
      for hba in /etc/postgresql/*/main/pg_hba.conf; do
        sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
      done
    fi
    pg_lsclusters -h 2>/dev/null | while read -r version cluster _; do
      pg_ctlcluster "$version" "$cluster" start >/dev/null 2>&1 || true
    done
    pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null || service postgresql start >/dev/null 2>&1 || true
    for _ in $(seq 1 100); do
      pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null && break
      sleep 0.1
    done
  fi
  # Databases earlier runs left (each test makes its own). One still in use is kept: DROP
  # without FORCE refuses it, and the error is ignored.
  pg_url="${AUTHGATE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
  psql "$pg_url" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'authgate\_t\_%'" 2>/dev/null |
    while read -r name; do
      psql "$pg_url" -qc "DROP DATABASE IF EXISTS \"$name\"" >/dev/null 2>&1 || true
    done
fi

# nginx (auth_request) and Caddy (forward_auth) for the forward-auth end-to-end tests
# (tests/forward_auth.rs), which run their own nginx and Caddy processes on free loopback
# ports. Only installed: the packages' system services are kept from starting (policy-rc.d).
if ! [ -x /usr/sbin/nginx ] || ! command -v caddy >/dev/null 2>&1; then
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    policy=/usr/sbin/policy-rc.d
  fi
  apt-get update -qq && apt-get install -y -qq nginx-light caddy >/dev/null || true
  if [ -n "$policy" ]; then rm -f "$policy"; fi
fi

# PyJWT for the upstream-verification example that tests/assertion.rs runs (docs/assertion.md).
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import jwt, cryptography' >/dev/null 2>&1; then
  python3 -m pip install --quiet pyjwt cryptography
fi

# The Anthropic and OpenAI Python SDKs for tests/llm_sdks.rs (clients unchanged through authgate).
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import anthropic, openai' >/dev/null 2>&1; then
  python3 -m pip install --quiet anthropic openai
fi

cargo test --locked --all-targets "$@"
