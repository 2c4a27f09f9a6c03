#!/usr/bin/env python3
"""Summarise `cargo bench -p meshgate --bench policy` from criterion's own
estimates, and check its targets: one evaluation of the embedded full-mesh
policy at most 10 us with 10 members and at most 100 us with 1,000.

Usage: python3 bench/policy-report.py [TARGET_DIR]   (default: target)
Exit status 2 when a target is not met.
"""
import datetime
import json
import pathlib
import subprocess
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target") / "criterion"
commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
print(f"# commit {commit or 'unknown'}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")


def median_us(*parts):
    path = root.joinpath(*map(str, parts), "new", "estimates.json")
    return json.loads(path.read_text())["median"]["point_estimate"] / 1000.0


print(f"{'members':>8} {'wasm':>10} {'view-only':>10} {'native':>10} {'view from membership':>21}")
missed = []
for n, target in ((10, 10.0), (1000, 100.0)):
    wasm = median_us("evaluate", "wasm", n)
    row = (wasm, median_us("evaluate", "wasm-view-only", n), median_us("evaluate", "native", n),
           median_us("view_from_membership", n))
    print(f"{n:>8} " + " ".join(f"{x:>8.2f}us" for x in row[:3]) + f" {row[3]:>19.2f}us")
    if wasm > target:
        missed.append(f"{n} members: {wasm:.1f} us, the target is at most {target:.0f} us")
for m in missed:
    print(f"TARGET NOT MET: {m}")
if missed:
    sys.exit(2)
print("targets met: at most 10 us at 10 members and 100 us at 1,000")
