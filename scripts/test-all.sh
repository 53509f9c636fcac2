#!/usr/bin/env bash
# Everything CI checks, in order; the README's test command. Each step prints
# a banner, and any failure stops the run (no step can silently skip).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==== %s\n' "$*"; }
# Test runs whose summary lines the log keeps short.
export CARGO_TERM_COLOR=never

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
cargo test --target aarch64-unknown-linux-gnu --features fp-control --tests
cargo test --target aarch64-unknown-linux-gnu --tests

step "tests under Valgrind memcheck (x86_64, debug): no errors, no definite leaks"
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="valgrind --error-exitcode=1 --quiet \
--leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite" \
    cargo test --tests -- --test-threads=1

step "scale: a million parked fibers, own stacks and one pool (release)"
cargo test --release --test scale -- --ignored --nocapture

step "compare --quick (smoke run of the comparison)"
cargo run --release --features wasmtime --example compare -- --quick
