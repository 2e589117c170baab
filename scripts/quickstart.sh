#!/usr/bin/env bash
# Runs a workflow end to end against a Spindle app, step by step as a new user
# would with curl: creates an organisation (with the platform admin key), an
# agent, and a workflow of an agent step, a one-second delay and an output;
# starts a run and polls it until it ends, then prints its output and cost.
#
#   SPINDLE=http://127.0.0.1:3000 SPINDLE_ADMIN_KEY=... bash scripts/quickstart.sh
#
# Needs curl and python3 (to read JSON). scripts/dev.sh prints this with the
# values filled in.
set -euo pipefail
base=${SPINDLE:-http://127.0.0.1:3000}
admin=${SPINDLE_ADMIN_KEY:?set SPINDLE_ADMIN_KEY to the app admin_key (scripts/dev.sh prints it)}
field() { python3 -c 'import json, sys; v = json.load(sys.stdin)
for k in sys.argv[1].split("."): v = v[k]
print(v if isinstance(v, str) else json.dumps(v))' "$1"; }
call() { # METHOD PATH [BODY]: with the organisation's key once there is one
    curl -fsS -X "$1" "$base$2" -H "authorization: Bearer ${key:-$admin}" \
        -H 'content-type: application/json' ${3:+-d "$3"}
}

echo "1. an organisation, and its owner key"
key=$(call POST /api/v1/orgs '{"name": "Quickstart"}' | field api_key.secret)

echo "2. an agent (OpenAI's gpt-4o-mini; the fake provider in development mode)"
agent=$(call POST /api/v1/agents '{"name": "Greeter", "instructions": "Greet people warmly.",
    "model_config": {"provider": "openai", "model": "gpt-4o-mini"}}' | field id)

echo "3. a workflow: trigger -> agent -> one-second delay -> output"
workflow=$(call POST /api/v1/workflows "{\"name\": \"Hello\", \"nodes\": [
    {\"id\": \"start\", \"type\": \"trigger\", \"config\": {\"inputs\": {\"name\": {\"type\": \"string\", \"required\": true}}}},
    {\"id\": \"greet\", \"type\": \"agent\", \"config\": {\"agent_id\": \"$agent\", \"prompt\": \"Say hello to {{ trigger.name }}\"}},
    {\"id\": \"pause\", \"type\": \"delay\", \"config\": {\"duration_ms\": 1000}},
    {\"id\": \"done\", \"type\": \"output\", \"config\": {\"value\": \"{{ steps.greet.output }}\"}}],
  \"edges\": [{\"source\": \"start\", \"target\": \"greet\"}, {\"source\": \"greet\", \"target\": \"pause\"},
    {\"source\": \"pause\", \"target\": \"done\"}]}" | field id)

echo "4. a run, polled until it ends"
run=$(call POST "/api/v1/workflows/$workflow/execute" '{"inputs": {"name": "Ada"}}' | field execution_id)
for _ in $(seq 1 120); do
    status=$(call GET "/api/v1/executions/$run" | field status)
    [[ "$status" == running || "$status" == pending ]] || break
    sleep 0.5
done
result=$(call GET "/api/v1/executions/$run")
echo "run $run: $(field status <<<"$result")"
echo "output: $(field output <<<"$result")"
echo "billed: $(field cost.billed_micros <<<"$result") micro-dollars"
[[ "$(field status <<<"$result")" == completed ]]
