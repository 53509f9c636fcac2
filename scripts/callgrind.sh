#!/usr/bin/env bash
# Instructions per resume + suspend round trip, counted by callgrind (the
# figure that does not move with machine load), for stackswitch and
# corosensei -- or per operation of any cases of the compare example named
# on the command line (round trips, create-*, guard-*; see `compare --help`).
# The first case is the one the others are divided by.
#
# Each case runs N and then 2N operations in `examples/compare --callgrind`;
# the difference of the two totals is N operations with every bit of setup
# and teardown cancelled out.
#
#   scripts/callgrind.sh                       # stackswitch, corosensei
#   scripts/callgrind.sh stackswitch context   # other round-trip cases
#   N=10000 scripts/callgrind.sh create-stackswitch-pooled create-corosensei-reused
#   FEATURES=fp-control scripts/callgrind.sh   # with fp-control
#   N=200000 scripts/callgrind.sh
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 1; }

N=${N:-100000}
FEATURES=${FEATURES:-}
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(stackswitch corosensei)

feature_args=()
[ -n "$FEATURES" ] && feature_args=(--features "$FEATURES")
cargo build --quiet --release "${feature_args[@]}" --example compare 2>/dev/null ||
    cargo build --release "${feature_args[@]}" --example compare
bin=target/release/examples/compare

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Total instructions (Ir) of one run of `compare --callgrind <case> <n>`.
count() {
    local case=$1 n=$2 out="$tmp/$1.$2"
    # No stack registration requests: they cost nothing on a CPU, and
    # callgrind (unlike memcheck) does not need them (src/valgrind.rs).
    STACKSWITCH_VALGRIND_REQUESTS=0 \
        valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --callgrind "$case" "$n" \
        >/dev/null 2>"$out.log" || { cat "$out.log" >&2; exit 1; }
    awk '/^summary:|^totals:/ { print $2; exit }' "$out"
}

printf 'callgrind, instructions per operation (N=%d, 2N-N difference; features: %s)\n' \
    "$N" "${FEATURES:-none}"
declare -A per
for c in "${cases[@]}"; do
    a=$(count "$c" "$N")
    b=$(count "$c" $((2 * N)))
    per[$c]=$(awk -v a="$a" -v b="$b" -v n="$N" 'BEGIN { printf "%.2f", (b - a) / n }')
    printf '  %-26s %8s instructions\n' "$c" "${per[$c]}"
done
base=${cases[0]}
for c in "${cases[@]:1}"; do
    printf '  %s / %s = %s\n' "$base" "$c" \
        "$(awk -v x="${per[$base]}" -v y="${per[$c]}" 'BEGIN { printf "%.3f", x / y }')"
done
