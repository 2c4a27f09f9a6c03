#!/usr/bin/env bash
#
# bench/remeasure.sh: every figure in BENCHMARKS.md, measured again in one
# run, each section headed by its command, the commit and the UTC time.
#
# HOW TO RUN (as root, from the repository root; about an hour on 2 cores)
#   sudo bench/remeasure.sh 2>&1 | tee /tmp/remeasure.log
#   sudo ONLY="esp throughput" bench/remeasure.sh
#
# ENVIRONMENT
#   ONLY     a subset of the sections below, by name (default: all, in order)
#   BEFORE   the commit the before/after section compares with (default
#            97dd960, the last commit before issue 9 moved the ESP core)
#
# Sections: before-after throughput policy keys mesh30 membership scale
# member lab hotswap. The 1,000-member five-minute lossy simulation is not
# among them (about half an hour of one core): run it on its own with
# `cargo test -p meshgate --release --lib at_1000_members_10_percent --
# --ignored --nocapture`.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ONLY="${ONLY:-before-after throughput policy keys mesh30 membership scale member lab hotswap}"
BEFORE="${BEFORE:-97dd960}"

section() {
    echo
    echo "=== $1: commit $(git describe --always --dirty), $(date -u '+%Y-%m-%d %H:%M:%S') UTC, load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "=== \$ $2"
}
want() { [[ " $ONLY " == *" $1 "* ]]; }

echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r), $(rustc --version)"
cargo build --release --quiet -p meshgate

if want before-after; then
    section before-after "bench/before-after.sh $BEFORE"
    bash bench/before-after.sh "$BEFORE"
fi
if want throughput; then
    section throughput "DURATION=10 bash bench/throughput.sh"
    DURATION=10 bash bench/throughput.sh 2>&1 | grep -E '^(RESULT|RATIO)|Gbit|kpps|TARGET' || true
fi
if want policy; then
    section policy "cargo bench -p meshgate --bench policy && python3 bench/policy-report.py"
    cargo bench --quiet -p meshgate --bench policy >/dev/null 2>&1
    python3 bench/policy-report.py "${CARGO_TARGET_DIR:-target}" || true
fi
if want keys; then
    section keys "cargo bench -p meshgate --bench keys"
    cargo bench --quiet -p meshgate --bench keys 2>&1 | grep -E 'time:' || true
fi
if want mesh30; then
    section mesh30 "cargo test -p meshgate --release --lib mesh_of_30 -- --ignored --nocapture"
    cargo test --quiet -p meshgate --release --lib mesh_of_30 -- --ignored --nocapture 2>&1 | grep -vE '^$|running|test result|^test ' || true
fi
if want membership; then
    section membership "cargo test -p meshgate --release --lib membership::sim -- --nocapture --include-ignored"
    cargo test --quiet -p meshgate --release --lib membership::sim -- --nocapture --include-ignored 2>&1 | grep -vE '^$|^running|^test |has been running' || true
fi
if want scale; then
    section scale "cargo test -p meshgate --release --lib membership::scale -- --nocapture --include-ignored --skip five_minutes"
    cargo test --quiet -p meshgate --release --lib membership::scale -- --nocapture --include-ignored --skip five_minutes 2>&1 | grep -vE '^$|^running|^test |has been running' || true
fi
if want member; then
    section member "cargo test -p meshgate --lib member::tests -- --nocapture"
    cargo test --quiet -p meshgate --lib member::tests -- --nocapture 2>&1 | grep -vE '^$|^running|^test ' || true
fi
if want lab; then
    section lab "cargo test -p meshgate --test mesh -- --nocapture --test-threads 1"
    cargo test --quiet -p meshgate --test mesh -- --nocapture --test-threads 1 2>&1 | grep -vE '^$|^running|^test |has been running' || true
fi
if want hotswap; then
    section hotswap "meshgate lab --regions 3 --keep, then six times: meshgate policy reload (over region 1's control socket)"
    log="$(mktemp)"
    ./target/release/meshgate lab --regions 3 --keep >"$log" 2>&1 &
    lab=$!
    control=""
    for _ in $(seq 1 600); do
        control="$(sed -n 's/.*policy reload --module hub-spoke --control \([^ ]*\)$/\1/p' "$log" | head -n1)"
        [ -n "$control" ] && break
        sleep 0.2
    done
    if [ -z "$control" ]; then echo "the lab did not come up:"; cat "$log"; kill -INT "$lab"; exit 1; fi
    for i in 1 2 3 4 5 6; do
        echo "reload $i: $(./target/release/meshgate policy reload --control "$control" 2>&1 | tr '\n' ' ')"
    done
    kill -INT "$lab"
    wait "$lab" || true
    rm -f "$log"
fi
