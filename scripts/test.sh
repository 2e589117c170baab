#!/usr/bin/env bash
# Spindle's one test command: builds the components, then runs every check
# and test (formatting, lints for native and wasm32-wasip2, unit tests, the
# WIT world check, migration tests, the test host's fidelity test, the
# HTTP suite and Schemathesis against the OpenAPI document). Set SPINDLE_URL to run the HTTP suite against a real `spin up`.
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

# Schemathesis against the test host (scripts/schemathesis.sh); `.ci/run`
# makes its virtualenv. Without one (no python3 venv here) the step says so
# and is skipped.
venv=${SCHEMATHESIS_VENV:-target/schemathesis-venv}
if [[ -x "$venv/bin/schemathesis" ]]; then
    step "schemathesis: every operation of openapi.json against the test host"
    bash scripts/schemathesis.sh
else
    step "schemathesis: skipped (no $venv; .ci/run creates it, or see README.md, \"API description\")"
fi
