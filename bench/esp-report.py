#!/usr/bin/env python3
"""Summarise `cargo bench -p meshgate-esp --bench esp` from criterion's own
estimates: per backend and size, ESP encap/decap against the raw AEAD of the
same backend, measured in the same run, as ratios; and the 64-byte encap
rate of one core.

Usage: python3 bench/esp-report.py [TARGET_DIR]   (default: target)
"""
import datetime
import json
import pathlib
import subprocess
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target") / "criterion"

commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
print(f"# commit {commit or 'unknown'}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")


def median_ns(group, backend, size):
    path = root / group / backend / str(size) / "new" / "estimates.json"
    return json.loads(path.read_text())["median"]["point_estimate"]


print(f"{'backend':<11} {'bytes':>6} {'encap':>9} {'decap':>9} {'enc+dec':>9} {'seal':>9} {'open':>9} {'seal+open':>10} {'ratio':>6}")
for backend in ("ring", "rustcrypto"):
    for size in (64, 1400, 8192):
        row = {g: median_ns(g, backend, size) for g in ("encap", "decap", "encap+decap", "aead_seal", "aead_open", "aead_seal+open")}
        ratio = row["encap+decap"] / row["aead_seal+open"]
        print(
            f"{backend:<11} {size:>6} {row['encap']:>7.0f}ns {row['decap']:>7.0f}ns {row['encap+decap']:>7.0f}ns "
            f"{row['aead_seal']:>7.0f}ns {row['aead_open']:>7.0f}ns {row['aead_seal+open']:>8.0f}ns {ratio:>6.3f}"
        )
for backend in ("ring", "rustcrypto"):
    ns = median_ns("encap", backend, 64)
    print(f"64 B encap, one core, {backend}: {1e3 / ns:.2f} Mpps ({ns:.0f} ns per packet)")

# The target these benches measure: ESP encap+decap of a 1400-byte packet at
# most 1.1x the raw AEAD seal+open of the default backend (ring), same run.
ratio = median_ns("encap+decap", "ring", 1400) / median_ns("aead_seal+open", "ring", 1400)
if ratio > 1.1:
    print(f"TARGET NOT MET: ring at 1400 B is {ratio:.3f}x the raw AEAD; the target is at most 1.1x")
    sys.exit(2)
print(f"target met: ring at 1400 B is {ratio:.3f}x the raw AEAD (at most 1.1x)")
