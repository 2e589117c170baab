#!/usr/bin/env bash
# Development mode: the first run that works with no setup.
#
#   bash scripts/dev.sh
#
# - generates strong random keys once into .spindle-dev.env (git-ignored,
#   mode 600) and reuses them on every later run;
# - starts the fake LLM provider (tests/fake-llm) on 127.0.0.1:9999, which
#   answers OpenAI, Anthropic and Gemini requests, and points every provider
#   at it, so agents run without provider keys;
# - runs `spin build --up` (Spin on PATH, or SPIN_BIN) with those settings; the
#   app ticks itself (self_tick), so delays, retries, waits and schedules move;
# - once the app answers, prints the admin key and a ready-to-paste quickstart
#   (scripts/quickstart.sh) that runs a workflow end to end.
#
# Ctrl-C stops the app and the fake provider. Settings (environment):
# SPINDLE_DEV_LISTEN (default 127.0.0.1:3000), SPINDLE_DEV_STATE_DIR (default
# .spin, Spin's own), FAKE_LLM_PORT (default 9999), SPIN_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."

listen=${SPINDLE_DEV_LISTEN:-127.0.0.1:3000}
state_dir=${SPINDLE_DEV_STATE_DIR:-.spin}
fake_port=${FAKE_LLM_PORT:-9999}
spin=${SPIN_BIN:-$(command -v spin || true)}
if [[ -z "$spin" ]]; then
    echo "dev.sh: no spin on PATH: install Spin (https://spinframework.dev/install), or set SPIN_BIN" >&2
    exit 1
fi

env_file=.spindle-dev.env
key() { head -c 32 /dev/urandom | base64 | tr -d '+/=\n'; }
if [[ ! -f "$env_file" ]]; then
    (
        umask 077
        {
            echo "# Keys of Spindle's development mode (scripts/dev.sh), made once on this machine."
            echo "SPIN_VARIABLE_ADMIN_KEY=$(key)"
            echo "SPIN_VARIABLE_INTERNAL_KEY=$(key)"
            echo "SPIN_VARIABLE_TICK_KEY=$(key)"
            echo "SPIN_VARIABLE_JWT_SECRET=$(key)"
            echo "SPIN_VARIABLE_METRICS_TOKEN=$(key)"
        } >"$env_file"
    )
    echo "dev.sh: made new keys in $env_file"
fi
set -a
# shellcheck source=/dev/null
source "$env_file"
set +a

fake="http://127.0.0.1:$fake_port"
export SPIN_VARIABLE_OPENAI_BASE_URL="$fake/v1" SPIN_VARIABLE_ANTHROPIC_BASE_URL="$fake/v1" \
    SPIN_VARIABLE_GEMINI_BASE_URL="$fake/v1beta" SPIN_VARIABLE_GROQ_BASE_URL="$fake/openai/v1" \
    SPIN_VARIABLE_OPENAI_COMPATIBLE_BASE_URL="$fake/compat/v1" \
    SPIN_VARIABLE_OPENAI_API_KEY=fake-key SPIN_VARIABLE_ANTHROPIC_API_KEY=fake-key \
    SPIN_VARIABLE_GEMINI_API_KEY=fake-key SPIN_VARIABLE_GROQ_API_KEY=fake-key

cargo build --quiet -p fake-llm
group=""
fake_pid=""
stop() {
    # `spin up` serves from a child process: stop its whole process group.
    [[ -n "$group" ]] && kill -TERM -- "-$group" 2>/dev/null || true
    [[ -n "$fake_pid" ]] && kill "$fake_pid" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM
target/debug/fake-llm --listen "127.0.0.1:$fake_port" &
fake_pid=$!

# setsid: `spin build --up` and the app it serves get a process group of their own.
setsid "$spin" build --up --listen "$listen" --state-dir "$state_dir" &
group=$!

base="http://$listen"
until curl -fsS "$base/healthz" >/dev/null 2>&1; do
    if ! kill -0 "$group" 2>/dev/null; then
        echo "dev.sh: spin build --up stopped before the app answered" >&2
        exit 1
    fi
    sleep 0.5
done

cat <<EOT

Spindle is up at $base (development mode: fake LLM provider at $fake).
Admin key: $SPIN_VARIABLE_ADMIN_KEY

Quickstart (creates an organisation, an agent and a workflow, runs it, prints the result):

    export SPINDLE=$base SPINDLE_ADMIN_KEY=$SPIN_VARIABLE_ADMIN_KEY
    bash scripts/quickstart.sh

Ctrl-C stops everything.
EOT
wait "$group"
