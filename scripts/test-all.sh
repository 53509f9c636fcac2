#!/usr/bin/env bash
# Everything CI checks, in order; the README's test command. Each step prints
# a banner, and any failure stops the run (no step can silently skip).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "clippy (all targets, all features, warnings denied)"
cargo clippy --all-targets --all-features -- -D warnings

step "rustdoc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features

step "tests, x86_64, debug, all features"
cargo test --all-features

step "tests, x86_64, release, all features"
cargo test --release --all-features

step "tests, x86_64, debug, default features (no fp-control, no wasmtime)"
cargo test

step "tests, aarch64 under qemu-aarch64, fp-control on and off"
cargo test --target aarch64-unknown-linux-gnu --features fp-control
cargo test --target aarch64-unknown-linux-gnu
