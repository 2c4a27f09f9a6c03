#!/usr/bin/env bash
#
# bench/before-after.sh: the same benchmarks on two commits, in one run.
#
# WHAT IT MEASURES
#   1. ESP encap+decap against the raw AEAD of the same backend: paired
#      rounds (esp/benches/paired.rs), twice each side, alternating; then
#      criterion (bench/esp-report.py), for the BEFORE commit and the
#      working tree.
#   2. The lab's single TCP flow through two meshgate gateways
#      (bench/throughput.sh, MODES=meshgate), alternating the two binaries
#      ROUNDS times (before, after, before, after, ...) so that drift of
#      this noisy machine falls on both alike.
#   It prints both sides and the ratio after/before of the lab medians.
#
# HOW TO RUN (as root, from the repository root)
#   sudo bench/before-after.sh 97dd960
#   sudo ROUNDS=3 DURATION=10 bench/before-after.sh 97dd960
#
# The BEFORE commit is built in a git worktree under $OLD_DIR (default
# /tmp/meshgate-before) with its own target directory; the working tree is
# built with `cargo build --release` here. Both builds come before any
# measurement.
#
# ENVIRONMENT
#   ROUNDS     lab runs per side (default 3; 0 = ESP only)
#   DURATION   seconds of each iperf3 run (default 10)
#   OLD_DIR    where the BEFORE worktree goes (default /tmp/meshgate-before)
#   SKIP_ESP   1 = skip the ESP benches
#   SKIP_CRITERION 1 = of the ESP benches, run only the paired one

set -euo pipefail

BEFORE="${1:?usage: bench/before-after.sh BEFORE_COMMIT}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
OLD_DIR="${OLD_DIR:-/tmp/meshgate-before}"
SKIP_ESP="${SKIP_ESP:-0}"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
NEW_TARGET="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
OLD_TARGET="$OLD_DIR-target"

before_rev="$(git rev-parse --short "$BEFORE")"
after_rev="$(git describe --always --dirty)"
echo "# before: $before_rev; after: $after_rev; $(date -u '+%Y-%m-%d %H:%M') UTC"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, kernel $(uname -r)"

if [ ! -d "$OLD_DIR" ]; then
    git worktree add --detach "$OLD_DIR" "$before_rev" >/dev/null
fi
git -C "$OLD_DIR" checkout --quiet --detach "$before_rev"

echo "# building both (release)"
(cd "$OLD_DIR" && CARGO_TARGET_DIR="$OLD_TARGET" cargo build --release --quiet -p meshgate)
cargo build --release --quiet -p meshgate

if [ "$SKIP_ESP" != 1 ]; then
    # The paired measurement (esp/benches/paired.rs): ESP and raw AEAD
    # timed round by round, so drift cancels; before, after, before, after.
    # A BEFORE commit without it gets this tree's copy, pointed at the
    # gateway crate's `esp` module where the ESP core lived then.
    if [ -f "$OLD_DIR/esp/benches/paired.rs" ]; then
        old_paired=(-p meshgate-esp --bench paired)
    else
        old_paired=(-p meshgate --bench paired)
        sed 's/^use meshgate_esp as esp;/use meshgate::esp;/' esp/benches/paired.rs >"$OLD_DIR/gateway/benches/paired.rs"
        if ! grep -q '^name = "paired"' "$OLD_DIR/gateway/Cargo.toml"; then
            printf '\n[[bench]]\nname = "paired"\nharness = false\n' >>"$OLD_DIR/gateway/Cargo.toml"
        fi
    fi
    for round in 1 2; do
        echo "## ESP paired, round $round, before ($before_rev)"
        (cd "$OLD_DIR" && CARGO_TARGET_DIR="$OLD_TARGET" cargo bench --quiet "${old_paired[@]}" 2>/dev/null) || true
        echo "## ESP paired, round $round, after ($after_rev)"
        cargo bench --quiet -p meshgate-esp --bench paired 2>/dev/null || true
    done
    # Before the move the ESP benches were in the gateway crate.
    old_pkg=meshgate
    if [ -f "$OLD_DIR/esp/benches/esp.rs" ]; then old_pkg=meshgate-esp; fi
    for side in before after; do
        [ "${SKIP_CRITERION:-0}" = 1 ] && break
        if [ "$side" = before ]; then
            (cd "$OLD_DIR" && CARGO_TARGET_DIR="$OLD_TARGET" cargo bench --quiet -p "$old_pkg" --bench esp >/dev/null 2>&1)
            echo "## ESP, before ($before_rev, package $old_pkg)"
            python3 bench/esp-report.py "$OLD_TARGET" | tail -n +2 || true
        else
            cargo bench --quiet -p meshgate-esp --bench esp >/dev/null 2>&1
            echo "## ESP, after ($after_rev)"
            python3 bench/esp-report.py "$NEW_TARGET" | tail -n +2 || true
        fi
    done
fi

(( ROUNDS > 0 )) || exit 0
declare -a OLD_GBPS=() NEW_GBPS=()
for round in $(seq 1 "$ROUNDS"); do
    for side in before after; do
        if [ "$side" = before ]; then bin="$OLD_TARGET/release/meshgate"; else bin="$NEW_TARGET/release/meshgate"; fi
        gbps="$(MODES=meshgate SMALL_SECS=0 DURATION="$DURATION" MESHGATE="$bin" \
            bash bench/throughput.sh 2>/dev/null | sed -n 's/^RESULT mode=meshgate gbps=\([0-9.]*\).*/\1/p')"
        [ -n "$gbps" ] || { echo "ERROR: no result from the $side binary in round $round" >&2; exit 1; }
        echo "round $round $side: $gbps Gbit/s"
        if [ "$side" = before ]; then OLD_GBPS+=("$gbps"); else NEW_GBPS+=("$gbps"); fi
    done
done

python3 - "${OLD_GBPS[*]}" "${NEW_GBPS[*]}" <<'EOF'
import statistics, sys
old = [float(x) for x in sys.argv[1].split()]
new = [float(x) for x in sys.argv[2].split()]
mo, mn = statistics.median(old), statistics.median(new)
print(f"## lab single TCP flow, {len(old)} runs each, alternating")
print(f"before: {' '.join(f'{x:.2f}' for x in old)} Gbit/s, median {mo:.2f}")
print(f"after:  {' '.join(f'{x:.2f}' for x in new)} Gbit/s, median {mn:.2f}")
print(f"after/before (medians): {mn / mo:.3f}; spread within a side: "
      f"before {min(old) / max(old):.2f}, after {min(new) / max(new):.2f} (min/max)")
EOF
