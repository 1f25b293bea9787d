#!/usr/bin/env bash
# Coverage-guided fuzzing of the HTTP/1.1 codec (fuzz/, docs/http1.md "Fuzzing"): builds every
# target, replays fuzz/regressions/<target>/, then fuzzes each target for SECONDS (default 30)
# from its committed seed corpus. Exits non-zero if any target crashed; the input that did is
# left in fuzz/artifacts/<target>/ (copy it to fuzz/regressions/<target>/ with a name).
#
# The machine has a stable toolchain only: cargo-fuzz builds with libFuzzer's coverage
# instrumentation (stable -C flags) and `--sanitizer none`, since AddressSanitizer needs
# nightly's -Zsanitizer. authgate forbids unsafe code, so what a sanitizer would add is small;
# panics, overflow checks and debug assertions (cargo-fuzz turns both on) are the oracles.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-30}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

flags=(--sanitizer none)
cargo fuzz build "${flags[@]}"

# New inputs the fuzzer finds go to a scratch directory: the committed corpus stays as made
# by fuzz/seeds.py, and a run leaves the work tree clean.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
for target in $(cargo fuzz list); do
  seeds="corpus/$target"
  # The roundtrip target reads request streams, like request_head: one corpus serves both.
  [ "$target" = roundtrip ] && seeds="corpus/request_head"
  dirs=("$work/$target" "$seeds")
  [ -d "regressions/$target" ] && dirs+=("regressions/$target")
  mkdir -p "$work/$target"
  log="$work/$target.log"
  if cargo fuzz run "${flags[@]}" "$target" "${dirs[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    echo "fuzz $target: ${runs:-?} executions in ${seconds}s, no crash"
  else
    tail -n 60 "$log"
    echo "fuzz $target: FAILED (input in fuzz/artifacts/$target/)"
    failed+=("$target")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz targets that failed: ${failed[*]}"
  exit 1
fi
