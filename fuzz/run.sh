#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 10) from its seeds, on
# the stable toolchain (no sanitizer: cargo-fuzz's -s none), and fails on
# the first crash, leak or timeout. `fuzz/run.sh 600` is a long run; the
# last lines of each target's output (executions, coverage) go to stdout.
# FUZZ_PROFILE=--dev builds without optimisation (the tests' short run:
# half the build time, fewer executions per second).
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-10}"
targets=(config tso esp_inbound membership key_exchange decisions order)
profile="${FUZZ_PROFILE:---release}"
cargo fuzz build -s none "$profile"
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "== $t: ${secs}s"
    log="$(mktemp)"
    if ! cargo fuzz run "$t" -s none "$profile" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "fuzz target $t failed: the input is in fuzz/artifacts/$t"
        exit 1
    fi
    grep -E '^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
    rm -f "$log"
done
