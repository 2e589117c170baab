#!/usr/bin/env bash
# Schemathesis against the app: starts the fake LLM provider and the app
# (serving the built components from spin.toml on fresh state, on loopback)
# on the test host, or with SPINDLE_HOST=spin on a real `spin up` (SPIN_BIN,
# else `spin` on PATH) in a process group of its own that is killed at the end;
# creates an organisation with the platform admin key, runs every operation
# of crates/spindle-api/openapi.json with the owner key, and stops
# everything. Zero failures or it exits non-zero.
#
# Needs the components built (`cargo build --target wasm32-wasip2 --release
# -p accounts -p workflows -p agents -p execute -p usage`) and Schemathesis in
# a virtualenv (`.ci/run` makes it):
#   python3 -m venv target/schemathesis-venv
#   target/schemathesis-venv/bin/pip install schemathesis==4.32.5
# Settings (environment): SCHEMATHESIS_VENV (default target/schemathesis-venv),
# SCHEMATHESIS_EXAMPLES (test cases per operation and phase, default 100),
# SCHEMATHESIS_SEED (default 20261125), SCHEMATHESIS_WORKERS (default 2),
# SPINDLE_HOST (`spin` for a real Spin; default the test host),
# SCHEMATHESIS_SCHEMA (default: the document the app serves; a file path
# checks an edited crates/spindle-api/openapi.json before the rebuild).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${SCHEMATHESIS_VENV:-target/schemathesis-venv}
examples=${SCHEMATHESIS_EXAMPLES:-100}
seed=${SCHEMATHESIS_SEED:-20261125}
workers=${SCHEMATHESIS_WORKERS:-2}
if [[ ! -x "$venv/bin/schemathesis" ]]; then
    echo "no Schemathesis in $venv: python3 -m venv $venv && $venv/bin/pip install schemathesis==4.32.5" >&2
    exit 1
fi

cargo build --quiet -p spin-test-host -p fake-llm

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
llm_port=$(free_port)
app_port=$(free_port)
base="http://127.0.0.1:$app_port"
admin_key="schemathesis-admin-key-not-for-production"
work=$(mktemp -d)
pids=()
group=""
cleanup() {
    # `spin up` serves from a child process: kill its whole process group.
    if [[ -n "$group" ]]; then
        kill -KILL -- "-$group" 2>/dev/null || true
    fi
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

target/debug/fake-llm --listen "127.0.0.1:$llm_port" >"$work/fake-llm.log" 2>&1 &
pids+=($!)
fake="http://127.0.0.1:$llm_port"
# The suite's settings (tests/suite/src/lib.rs, suite_variables), with a
# per-subject rate limit high enough that the run measures the API, not the
# limiter (a 429 is still a documented answer).
variables=(
    "admin_key=$admin_key"
    "jwt_secret=suite-jwt-secret-of-at-least-32-bytes"
    "jwt_issuer=spindle-suite" "jwt_audience=spindle-api"
    "jwt_public_key=$(cat tests/suite/fixtures/jwt-ed25519.pub.pem)"
    "openai_api_key=test-openai-key" "anthropic_api_key=test-anthropic-key"
    "gemini_api_key=test-gemini-key" "groq_api_key=test-groq-key"
    "openai_base_url=$fake/v1" "anthropic_base_url=$fake/v1"
    "gemini_base_url=$fake/v1beta" "groq_base_url=$fake/openai/v1"
    "openai_compatible_base_url=$fake/compat/v1"
    "provider_timeout_ms=5000"
    "internal_key=suite-internal-key-not-for-production"
    "tick_key=suite-tick-key-not-for-production"
    "metrics_token=suite-metrics-token-not-for-production"
    "step_lease_ms=2000" "event_retry_base_ms=200"
    "rate_limit_per_minute=1000000"
)
if [[ "${SPINDLE_HOST:-}" == spin ]]; then
    host_name="real Spin"
    spin=${SPIN_BIN:-$(command -v spin)}
    env_vars=()
    for variable in "${variables[@]}"; do
        name=${variable%%=*}
        env_vars+=("SPIN_VARIABLE_${name^^}=${variable#*=}")
    done
    # setsid: a new session and process group, led by `spin up`.
    env "${env_vars[@]}" setsid "$spin" up --from spin.toml --listen "127.0.0.1:$app_port" \
        --state-dir "$work/state" >"$work/host.log" 2>&1 &
    group=$!
else
    host_name="test host"
    flags=()
    for variable in "${variables[@]}"; do
        flags+=(--variable "$variable")
    done
    target/debug/spin-test-host --listen "127.0.0.1:$app_port" --state-dir "$work/state" \
        "${flags[@]}" >"$work/host.log" 2>&1 &
    pids+=($!)
fi

for _ in $(seq 1 300); do
    if curl -fsS "$base/healthz" >/dev/null 2>&1; then
        break
    fi
    sleep 0.2
done
if ! curl -fsS "$base/healthz" >/dev/null; then
    echo "the $host_name did not start:" >&2
    cat "$work/host.log" >&2
    exit 1
fi

# Seed: an organisation (its owner key authenticates every call), and a
# resource of each kind whose id the operations that take one draw most of
# the time (the rest are generated), so the answers checked against the
# document include real agents, runs, steps, logs, budgets and the like.
# Deleting operations get resources of their own. Writes the Schemathesis
# configuration with the credentials of each security scheme.
BASE=$base ADMIN_KEY=$admin_key METRICS_TOKEN=suite-metrics-token-not-for-production \
    CONFIG="$work/schemathesis.toml" python3 - <<'PY'
import json, os, time, urllib.request

base, admin = os.environ["BASE"], os.environ["ADMIN_KEY"]

def call(method, path, body=None, key=None, expect=(200, 201, 202)):
    request = urllib.request.Request(base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
    request.add_header("authorization", f"Bearer {key or owner}")
    request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request) as response:
        assert response.status in expect, (method, path, response.status)
        return json.loads(response.read() or b"null")

owner = None
owner = call("POST", "/api/v1/orgs", {"name": "Schemathesis"}, key=admin)["api_key"]["secret"]
agent_def = {"name": "Seed", "model_config": {"provider": "openai", "model": "gpt-4o-mini"}}
agents = [call("POST", "/api/v1/agents", agent_def)["id"] for _ in range(2)]
call("POST", f"/api/v1/agents/{agents[0]}/execute", {"task": "Say hello"})
def workflow(nodes, edges):
    return call("POST", "/api/v1/workflows", {"name": "Seed", "nodes": nodes, "edges": edges})["id"]
trigger = {"id": "start", "type": "trigger", "config": {}}
ask = {"id": "ask", "type": "agent", "config": {"agent_id": agents[0], "prompt": "Hello"}}
done = {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
wait = {"id": "approval", "type": "wait", "config": {"signal": "approved", "timeout_ms": 3600000}}
flows = [workflow([trigger, ask, done], [{"source": "start", "target": "ask"}, {"source": "ask", "target": "done"}])
         for _ in range(2)]
waiting = workflow([trigger, wait, done], [{"source": "start", "target": "approval"}, {"source": "approval", "target": "done"}])
finished = call("POST", f"/api/v1/workflows/{flows[0]}/execute", {})["execution_id"]
parked = call("POST", f"/api/v1/workflows/{waiting}/execute", {})["execution_id"]
for _ in range(100):
    if call("GET", f"/api/v1/executions/{finished}")["status"] != "running":
        break
    time.sleep(0.1)
call("PUT", f"/api/v1/workflows/{flows[0]}/schedules", {"schedules": [{"cron": "0 9 * * MON-FRI", "timezone": "Europe/Paris"}]})
keys = [call("POST", "/api/v1/api-keys", {"name": "seed", "role": "viewer"})["id"] for _ in range(2)]
subscription = {"url": "http://127.0.0.1:9/events"}
subscriptions = [call("POST", "/api/v1/event-subscriptions", subscription)["id"] for _ in range(2)]
call("PUT", "/api/v1/usage/budgets/org/current", {"period": "month", "limit": 50_000_000, "action": "alert"})
call("PUT", f"/api/v1/usage/budgets/agent/{agents[0]}", {"period": "day", "limit": 1_000_000, "action": "block"})
call("PUT", "/api/v1/usage/pricing/openai/seed-model", {"input_micros_per_million": 1, "output_micros_per_million": 2})
call("PUT", "/api/v1/usage/limits/anthropic", {"requests_per_minute": 600})
org = call("GET", "/api/v1/orgs/current")["id"]

dictionaries = {
    "agents": [agents[0]], "deleted_agents": [agents[1]],
    "workflows": [flows[0], waiting], "deleted_workflows": [flows[1]],
    "runs": [finished, parked], "finished_runs": [finished], "parked_runs": [parked],
    "signals": ["approved"], "versions": [1],
    "keys": [keys[0]], "revoked_keys": [keys[1]],
    "subscriptions": [subscriptions[0]], "deleted_subscriptions": [subscriptions[1]],
    "templates": ["content-pipeline", "lead-scoring", "it-incident-triage", "contract-review"],
    "scopes": ["org", "agent"], "scope_ids": ["current", org, agents[0]],
    "models": ["seed-model", "gpt-4o-mini"],
}
bindings = {
    ("getAgent", "updateAgent", "executeAgent", "listAgentExecutions"): {"path.id": "agents"},
    ("deleteAgent",): {"path.id": "deleted_agents"},
    ("getWorkflow", "replaceWorkflow", "updateWorkflowSettings", "listWorkflowVersions",
     "rotateWebhookSecret", "replaceSchedules", "listSchedules", "executeWorkflow", "workflowCosts"): {"path.id": "workflows"},
    ("getWorkflowVersion",): {"path.id": "workflows", "path.version": "versions"},
    ("deleteWorkflow",): {"path.id": "deleted_workflows"},
    ("receiveWebhook",): {"path.workflow_id": "workflows"},
    ("getExecution", "listExecutionLogs", "cancelExecution", "retryExecution"): {"path.id": "runs"},
    ("streamExecutionEvents", "rerunExecution"): {"path.id": "finished_runs"},
    ("signalExecution",): {"path.id": "parked_runs", "path.name": "signals"},
    ("getApiKey",): {"path.id": "keys"},
    ("revokeApiKey",): {"path.id": "revoked_keys"},
    ("getEventSubscription", "updateEventSubscription", "listDeliveries"): {"path.id": "subscriptions"},
    ("deleteEventSubscription",): {"path.id": "deleted_subscriptions"},
    ("getTemplate", "useTemplate"): {"path.id": "templates"},
    ("getBudget", "putBudget", "deleteBudget"): {"path.scope": "scopes", "path.id": "scope_ids"},
    ("putPrice", "deletePrice"): {"path.model": "models"},
    ("estimateCost",): {"body.workflow_id": "workflows"},
}
def toml(value):
    return json.dumps(value)  # TOML basic strings and arrays read the same as JSON's
lines = [
    f"[auth.openapi.bearerAuth]\nbearer = {toml(owner)}",
    f"[auth.openapi.adminKey]\nbearer = {toml(admin)}",
    f"[auth.openapi.metricsToken]\nbearer = {toml(os.environ['METRICS_TOKEN'])}",
]
for name, values in dictionaries.items():
    lines.append(f"[dictionaries.{name}]\nvalues = {toml(values)}")
for operations, parameters in bindings.items():
    for operation in operations:
        inline = ", ".join(f'{toml(key)} = {{ dictionary = {toml(dictionary)}, probability = 0.8 }}'
                           for key, dictionary in parameters.items())
        lines.append(f"[[operations]]\ninclude-operation-id = {toml(operation)}\nparameters = {{ {inline} }}")
with open(os.environ["CONFIG"], "w") as config:
    config.write("\n\n".join(lines) + "\n")
PY

started=$(date +%s)
status=0
schema=${SCHEMATHESIS_SCHEMA:-$base/openapi.json}
if [[ -f "$schema" ]]; then
    schema=$(realpath "$schema")
fi
schemathesis=$(realpath "$venv/bin/schemathesis")
# Run in the temporary directory: Schemathesis keeps a cache of earlier
# failures in `.schemathesis/` under the working directory, and every run
# here starts without one.
(cd "$work" && "$schemathesis" --config-file "$work/schemathesis.toml" run "$schema" --url "$base" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$examples" --seed "$seed" --workers "$workers" \
    --generation-database none --request-timeout 30 \
    --no-color) | tee "$work/schemathesis.log" || status=$?
echo "schemathesis: $(($(date +%s) - started)) s"
if [[ $status -ne 0 ]]; then
    echo "--- $host_name log (last 50 lines)" >&2
    tail -n 50 "$work/host.log" >&2
    exit "$status"
fi
# The closing line test logs are read for: test cases run, none failed.
passed=$(sed -n 's/^ *\([0-9]*\) generated, \([0-9]*\) passed$/\2/p' "$work/schemathesis.log" | tail -n 1)
echo "schemathesis: ${passed:-0} passed, 0 failed"
