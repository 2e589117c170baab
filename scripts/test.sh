#!/usr/bin/env bash
# Spindle's one test command: builds the components, then runs every check
# and test (formatting, lints for native and wasm32-wasip2, unit tests, the
# WIT world check, migration tests, the test host's fidelity test and the
# HTTP suite). Set SPINDLE_URL to run the HTTP suite against a real `spin up`.
set -euo pipefail
cd "$(dirname "$0")/.."

components=(-p accounts -p workflows -p agents -p execute -p usage)

step() { printf '\n==> %s\n' "$*"; }

step "formatting"
cargo fmt --all --check

step "build the components (wasm32-wasip2, release) and the Spin probe app"
cargo build --target wasm32-wasip2 --release "${components[@]}" -p probe

step "clippy: wasm32-wasip2 components"
cargo clippy --target wasm32-wasip2 --release "${components[@]}" -p spindle-spin -- -D warnings

step "clippy: native crates, tests and tools"
cargo clippy --workspace --all-targets -- -D warnings

step "tests"
cargo test --workspace --all-features
