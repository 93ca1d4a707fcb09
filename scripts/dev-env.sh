#!/usr/bin/env bash
# Makes sure the tools the tests need are on this machine. Sourced by scripts/test.sh; safe to run
# on its own. Installs only what is missing.
#
# Services the tests need (the example server for the Python protocol client) are started and
# stopped by scripts/test.sh itself.
set -euo pipefail

need() { command -v "$1" >/dev/null 2>&1; }

if ! need cargo; then
    echo "dev-env: cargo is missing; install Rust (https://rustup.rs) first" >&2
    exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "dev-env: installing cargo-nextest"
    cargo install cargo-nextest --locked
fi
if ! need python3; then
    echo "dev-env: installing python3"
    apt-get update -qq && apt-get install -y -qq python3
fi
