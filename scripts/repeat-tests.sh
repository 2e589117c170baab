#!/usr/bin/env bash
# Runs the test command (`bash scripts/test.sh`) N times in a row, stopping
# at the first failure, while another build runs beside it: the check that
# the suite passes on a loaded machine (issue 15). Each run's output goes to
# DIR/run-K.log and a line per run to DIR/runs.log; the build beside it (the
# native crates and tests, and the wasm32-wasip2 cdylibs, from nothing, then
# `cargo clean`, over and over, in a target directory of its own) logs to
# DIR/load.log.
#
#   bash scripts/repeat-tests.sh [N (10)] [DIR (target/repeat-tests)]
#
# Run it from a clean clone (the first run builds everything); it takes about
# an hour per run on a 2-core machine.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=${1:-10}
dir=$(mkdir -p "${2:-target/repeat-tests}" && cd "${2:-target/repeat-tests}" && pwd)
load_target="$dir/load-target"
cdylibs=(accounts workflows agents execute usage probe)
excludes=()
packages=()
for crate in "${cdylibs[@]}"; do
    excludes+=(--exclude "$crate")
    packages+=(-p "$crate")
done

load() {
    local i=0 start rc
    while :; do
        i=$((i + 1))
        start=$(date +%s)
        CARGO_TARGET_DIR=$load_target cargo build -q --workspace --all-targets "${excludes[@]}" \
            >/dev/null 2>>"$dir/load-errors.log" &&
            CARGO_TARGET_DIR=$load_target cargo build -q --target wasm32-wasip2 --release \
                "${packages[@]}" >/dev/null 2>>"$dir/load-errors.log"
        rc=$?
        echo "build $i rc=$rc $(($(date +%s) - start))s $(date -u +%FT%TZ)" >>"$dir/load.log"
        CARGO_TARGET_DIR=$load_target cargo clean -q 2>/dev/null
    done
}

# The build beside runs in a process group of its own, killed at the end.
set -m
load &
load_group=$!
set +m
trap 'kill -- -"$load_group" 2>/dev/null' EXIT

echo "commit $(git rev-parse --short HEAD) start $(date -u +%FT%TZ)" >>"$dir/runs.log"
for n in $(seq 1 "$runs"); do
    start=$(date +%s)
    bash scripts/test.sh >"$dir/run-$n.log" 2>&1
    rc=$?
    echo "run $n rc=$rc $(($(date +%s) - start))s end $(date -u +%FT%TZ)" >>"$dir/runs.log"
    if ((rc != 0)); then
        echo "run $n failed: $dir/run-$n.log" >&2
        exit "$rc"
    fi
done
echo "$runs runs passed: $dir/runs.log"
