#!/usr/bin/env bash
# The test command (README): installs what the tests need on a fresh
# Debian machine, then runs every test of the workspace. Run as root: the
# tests build network namespaces, TUN devices and iptables rules.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
need=()
command -v ip >/dev/null || need+=(iproute2)
# tshark decrypts the gateway's ESP captures; promtool checks its metrics.
command -v tshark >/dev/null || need+=(tshark)
command -v promtool >/dev/null || need+=(prometheus)
# The mesh tests cut and impair the lab's underlay with iptables.
command -v iptables >/dev/null || need+=(iptables)
# The package test verifies the installed unit and strips the binary.
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v strip >/dev/null || need+=(binutils)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# moto plays AWS for the cloud tests (the official SDK against a local
# server): a venv of its own, pinned, with only the services used.
MOTO_VENV="${MOTO_VENV:-${CARGO_TARGET_DIR:-$PWD/target}/moto-venv}"
MOTO_EXTRAS='autoscaling,ec2,iam,kms,route53,secretsmanager,sts'
if [ ! -f "$MOTO_VENV/.extras-$MOTO_EXTRAS" ]; then
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q "moto[$MOTO_EXTRAS]==5.2.5" flask flask-cors
  touch "$MOTO_VENV/.extras-$MOTO_EXTRAS"
fi
export MESHGATE_MOTO_SERVER="$MOTO_VENV/bin/moto_server"

# cfn-lint checks the fleet's CloudFormation templates (its own venv:
# its pins and moto's need not agree).
CFN_VENV="${CFN_VENV:-${CARGO_TARGET_DIR:-$PWD/target}/cfn-venv}"
if [ ! -x "$CFN_VENV/bin/cfn-lint" ]; then
  python3 -m venv "$CFN_VENV"
  "$CFN_VENV/bin/pip" install -q "cfn-lint==1.58.0"
fi
export MESHGATE_CFN_LINT="$CFN_VENV/bin/cfn-lint"

# The toolchain and targets rust-toolchain.toml lists: the gateway's build
# compiles the built-in policies for wasm32-unknown-unknown, and a plain
# cargo build does not add a missing target.
rustup toolchain install
rustup target add wasm32-unknown-unknown

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Every target (--all-targets) in two runs: the unit tests, simulations and
# bench smoke runs in parallel; the integration tests, which build labs of
# namespaces and processes on this 2-core machine, one at a time, so no
# lab's timing depends on another's load.
cargo test --workspace --lib --bins --benches --examples
cargo test --workspace --test '*' -- --test-threads=1
cargo test --workspace --doc

# Coverage-guided fuzzing on the stable toolchain: every target for 10 s
# from its seeds (fuzz/run.sh; the long runs are in BENCHMARKS.md).
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  export CARGO_TARGET_DIR="$CARGO_TARGET_DIR/fuzz"
fi
FUZZ_PROFILE=--dev fuzz/run.sh 10
