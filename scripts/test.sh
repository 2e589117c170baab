#!/usr/bin/env bash
# Spindle's one test command: builds the components, then runs every check
# and test (formatting, lints for native and wasm32-wasip2, unit tests, the
# WIT world check, migration tests, the test host's fidelity test, the
# HTTP suite with its chaos test, and Schemathesis against the OpenAPI
# document) on the project's test host, then the HTTP suite, the chaos test
# and Schemathesis again on a real Spin: `spin` on PATH, else the Spin kept in
# ../shared/spin (installed into target/spin). Each real `spin up` is started
# by the suite (or the Schemathesis script) on loopback and fresh state, in a
# process group of its own that is killed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

components=(-p accounts -p workflows -p agents -p execute -p usage)

step() { printf '\n==> %s\n' "$*"; }

# The real Spin to test on: `spin` on PATH, else the one kept beside the
# repository (../shared/spin), installed once into target/spin.
spin_binary() {
    if command -v spin >/dev/null; then
        command -v spin
    elif [[ -x target/spin/spin ]]; then
        echo "$PWD/target/spin/spin"
    elif [[ -f ../shared/spin/install.sh ]]; then
        bash ../shared/spin/install.sh "$PWD/target/spin" | tail -n 1
    else
        echo "no Spin: install it (https://spinframework.dev) or put it on PATH" >&2
        exit 1
    fi
}

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

# Schemathesis (scripts/schemathesis.sh) needs the virtualenv `.ci/run`
# makes; without one (no python3 venv here) both Schemathesis steps say so
# and are skipped.
venv=${SCHEMATHESIS_VENV:-target/schemathesis-venv}
schemathesis() {
    if [[ -x "$venv/bin/schemathesis" ]]; then
        step "schemathesis: every operation of openapi.json against the $1"
        bash scripts/schemathesis.sh
    else
        step "schemathesis on the $1: skipped (no $venv; .ci/run creates it, or see README.md, \"API description\")"
    fi
}
schemathesis "test host"

spin=$(spin_binary)
step "real Spin: $spin ($("$spin" --version))"
export SPINDLE_HOST=spin SPIN_BIN=$spin

# The fidelity probe (tests/probe) on real Spin: the test host is held to
# golden-spin-4.0.2.txt by `cargo test -p spin-test-host --test fidelity`;
# this holds the real Spin under test to the same file.
step "fidelity probe on real Spin (tests/probe/golden-spin-4.0.2.txt)"
probe_state=$(mktemp -d)
probe_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
setsid "$spin" up --from tests/probe/spin.toml --listen "127.0.0.1:$probe_port" \
    --state-dir "$probe_state/spin" >"$probe_state/spin.log" 2>&1 &
probe_group=$!
for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "http://127.0.0.1:$probe_port/trivial" 2>/dev/null && break
    sleep 0.2
done
probe_ok=true
bash tests/probe/fidelity.sh "http://127.0.0.1:$probe_port" >"$probe_state/spin.txt" 2>&1
diff -u tests/probe/golden-spin-4.0.2.txt "$probe_state/spin.txt" || probe_ok=false
kill -KILL -- "-$probe_group" 2>/dev/null || true
wait "$probe_group" 2>/dev/null || true
rm -rf "$probe_state"
$probe_ok || { echo "real Spin differs from the probe's golden file" >&2; exit 1; }

# Tests of the test host's own fault injection cannot run on real Spin: they
# live in modules named host_faults and are reported as filtered out.
step "the HTTP suite and the chaos test on real Spin (skipping host_faults::, the test host's fault injection)"
cargo test -p spindle-suite --all-features -- --skip host_faults::

schemathesis "real Spin"

# The first run as README tells it: development mode on real Spin (fresh
# state, free ports), then the quickstart it prints, which must complete a run.
step "first run: scripts/dev.sh on real Spin, then scripts/quickstart.sh"
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
dev_state=$(mktemp -d)
dev_port=$(free_port)
SPINDLE_DEV_LISTEN=127.0.0.1:$dev_port SPINDLE_DEV_STATE_DIR=$dev_state/spin \
    FAKE_LLM_PORT=$(free_port) setsid bash scripts/dev.sh >"$dev_state/dev.log" 2>&1 &
dev=$!
stop_dev() {
    kill -TERM "$dev" 2>/dev/null || true
    wait "$dev" 2>/dev/null || true
}
trap stop_dev EXIT
for _ in $(seq 1 600); do
    grep -qs '^Admin key: ' "$dev_state/dev.log" && break
    kill -0 "$dev" 2>/dev/null || break
    sleep 0.5
done
if ! grep -q '^Admin key: ' "$dev_state/dev.log"; then
    echo "scripts/dev.sh did not come up:" >&2
    cat "$dev_state/dev.log" >&2
    exit 1
fi
SPINDLE=http://127.0.0.1:$dev_port SPINDLE_ADMIN_KEY=$(sed -n 's/^Admin key: //p' "$dev_state/dev.log") \
    bash scripts/quickstart.sh
stop_dev
trap - EXIT
rm -rf "$dev_state"
