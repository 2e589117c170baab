//! Workflow runs over HTTP: steps chained by self requests, branches,
//! fan-out and joins, failures, recovery of a step whose instance died,
//! and the internal endpoints' guard.

use fake_llm::Reply;
use serde_json::{Value, json};
use spin_test_host::{Fault, Invocation};
use spindle_suite::{
    Org, STEP_LEASE_MS, Target, await_provider_call, configured, configured_with_faults, fake_llm,
    fake_turn, find_step, fresh, now_ms, shared, step, suite_variables, timestamp_ms,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn linear(agent: &str) -> Value {
    json!({
        "name": "Linear",
        "nodes": [
            {"id": "start", "type": "trigger", "config": {"inputs": {"topic": {"type": "string", "required": true}}}},
            {"id": "draft", "type": "agent", "config": {"agent_id": agent, "prompt": "Write about {{ trigger.topic }}"}},
            {"id": "shape", "type": "transform", "config": {"template": {"text": "{{ steps.draft.output }}", "length": "{{ steps.draft.output | length }}"}}},
            {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
        ],
        "edges": [
            {"source": "start", "target": "draft"},
            {"source": "draft", "target": "shape"},
            {"source": "shape", "target": "done"}
        ]
    })
}

#[test]
fn a_linear_run_completes_and_templates_keep_their_types() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-linear");
    let agent = target.create_agent(&org);
    let workflow = target.create(&org, "/api/v1/workflows", &linear(&agent));
    fake_llm().push(Reply::text("Draft text").tokens(20, 5));
    let id = target.start_run(&org, &workflow, json!({"topic": "tides"}));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], json!({"text": "Draft text", "length": 10}));
    assert_eq!(run["trigger_kind"], "api");
    assert_eq!(run["usage"]["input_tokens"], 20);
    assert_eq!(step(&run, "draft")["status"], "completed");
    assert_eq!(step(&run, "draft")["attempts"], 1);
    assert_eq!(
        step(&run, "draft")["input"],
        json!({"prompt": "Write about tides"}),
        "the rendered prompt is kept on the step"
    );
    let sent = fake_llm().received();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body["messages"][1]["content"], "Write about tides");
}

#[test]
fn a_branch_not_taken_is_skipped_down_to_the_join() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-branch");
    let agent = target.create_agent(&org);
    let workflow = target.create(&org, "/api/v1/workflows", &json!({
            "name": "Branch",
            "variables": {"threshold": 70},
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "score", "type": "agent", "config": {"agent_id": agent, "prompt": "Score {{ trigger.lead }}", "output_schema": {"type": "object"}}},
                {"id": "check", "type": "condition", "config": {"expression": "steps.score.output.score >= variables.threshold"}},
                {"id": "hot", "type": "transform", "config": {"template": {"tier": "hot", "score": "{{ steps.score.output.score }}"}}},
                {"id": "cold", "type": "transform", "config": {"template": {"tier": "cold"}}},
                {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
            ],
            "edges": [
                {"source": "start", "target": "score"},
                {"source": "score", "target": "check"},
                {"source": "check", "target": "hot", "source_handle": "true"},
                {"source": "check", "target": "cold", "source_handle": "false"},
                {"source": "hot", "target": "done"},
                {"source": "cold", "target": "done"}
            ]
        }),
    );
    fake_llm().push(Reply::text("```json\n{\"score\": 85}\n```"));
    let id = target.start_run(&org, &workflow, json!({"lead": {"name": "Ada"}}));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], json!({"tier": "hot", "score": 85}));
    assert_eq!(step(&run, "check")["outcome"], "true");
    assert_eq!(step(&run, "cold")["status"], "skipped");
}

#[test]
fn fan_out_of_three_joins_once() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-fanout");
    let agent = target.create_agent(&org);
    let node = |id: &str| json!({"id": id, "type": "agent", "config": {"agent_id": agent, "prompt": format!("part {id}")}});
    let workflow = target.create(&org, "/api/v1/workflows", &json!({
            "name": "Fan-out",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                node("a"), node("b"), node("c"),
                {"id": "join", "type": "transform", "config": {"template": ["{{ steps.a.output }}", "{{ steps.b.output }}", "{{ steps.c.output }}"]}},
                {"id": "done", "type": "output", "config": {"value": "{{ steps.join.output }}"}}
            ],
            "edges": [
                {"source": "start", "target": "a"}, {"source": "start", "target": "b"}, {"source": "start", "target": "c"},
                {"source": "a", "target": "join"}, {"source": "b", "target": "join"}, {"source": "c", "target": "join"},
                {"source": "join", "target": "done"}
            ]
        }),
    );
    let id = target.start_run(&org, &workflow, json!({}));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    let joins: Vec<&Value> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["node_id"] == "join")
        .collect();
    assert_eq!(joins.len(), 1, "one step row for the join: {run}");
    assert_eq!(joins[0]["status"], "completed", "{run}");
    assert_eq!(joins[0]["attempts"], 1, "the join ran once");
    // It ran after all three branches: it holds each one's own answer.
    let branches: Vec<&Value> = ["a", "b", "c"]
        .iter()
        .map(|id| &step(&run, id)["output"])
        .collect();
    assert_eq!(joins[0]["output"], json!(branches), "{run}");
    assert_eq!(run["output"], joins[0]["output"]);
    let distinct: std::collections::BTreeSet<String> =
        branches.iter().map(|o| o.to_string()).collect();
    assert_eq!(
        distinct.len(),
        3,
        "three answers of their own: {branches:?}"
    );
    assert!(branches.iter().all(|o| o.is_string()), "{branches:?}");
    assert_eq!(fake_llm().received().len(), 3);
}

/// Fan-out hands each branch to an invocation of its own: with every answer
/// held, all three provider calls arrive. Branches run one after another in
/// one invocation would leave the second call unsent while the first waits.
#[test]
fn the_branches_of_a_fan_out_wait_on_their_providers_at_the_same_time() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-fanout-concurrent");
    let agent = target.create_agent(&org);
    let node = |id: &str| json!({"id": id, "type": "agent", "config": {"agent_id": agent, "prompt": format!("part {id}")}});
    let workflow = target.create(&org, "/api/v1/workflows", &json!({
            "name": "Concurrent fan-out",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                node("a"), node("b"), node("c"),
                {"id": "done", "type": "output", "config": {"value": ["{{ steps.a.output }}", "{{ steps.b.output }}", "{{ steps.c.output }}"]}}
            ],
            "edges": [
                {"source": "start", "target": "a"}, {"source": "start", "target": "b"}, {"source": "start", "target": "c"},
                {"source": "a", "target": "done"}, {"source": "b", "target": "done"}, {"source": "c", "target": "done"}
            ]
        }),
    );
    fake_llm().hold();
    let id = target.start_run(&org, &workflow, json!({}));
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake_llm().received().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "with the answers held, only {} of 3 branches called the provider",
            fake_llm().received().len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let prompts: std::collections::BTreeSet<String> = fake_llm()
        .received()
        .iter()
        .map(|r| r.body["messages"].to_string())
        .collect();
    assert_eq!(prompts.len(), 3, "one call per branch: {prompts:?}");
    let run = target.execution(&org, &id);
    for branch in ["a", "b", "c"] {
        assert_eq!(step(&run, branch)["status"], "running", "{run}");
    }
    fake_llm().release();
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(fake_llm().received().len(), 3);
}

#[test]
fn a_failing_step_fails_the_run_and_names_the_node() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-failure");
    let agent = target.create_agent(&org);
    let workflow = target.create(&org, "/api/v1/workflows", &linear(&agent));
    fake_llm().push(Reply::error(400, "content policy"));
    let id = target.start_run(&org, &workflow, json!({"topic": "x"}));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "failed");
    assert_eq!(run["failed_node"], "draft");
    assert_eq!(run["error"]["code"], "provider_rejected");
    assert!(run["output"].is_null());
    assert!(
        run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["node_id"] != "shape"),
        "nothing after it ran"
    );
}

fn two_agents(agent: &str) -> Value {
    json!({
        "name": "Two steps",
        "nodes": [
            {"id": "start", "type": "trigger", "config": {}},
            {"id": "first", "type": "agent", "config": {"agent_id": agent, "prompt": "first"}},
            {"id": "second", "type": "agent", "config": {"agent_id": agent, "prompt": "second: {{ previous_output }}"}},
            {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
        ],
        "edges": [
            {"source": "start", "target": "first"},
            {"source": "first", "target": "second"},
            {"source": "second", "target": "done"}
        ]
    })
}

#[test]
fn retry_after_a_failure_reuses_the_completed_steps() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-retry");
    let agent = target.create_agent(&org);
    let workflow = target.create(&org, "/api/v1/workflows", &two_agents(&agent));
    fake_llm().push(Reply::text("one").tokens(10, 2));
    fake_llm().push(Reply::error(400, "temporarily refused"));
    let id = target.start_run(&org, &workflow, json!({}));
    let failed = target.finished(&org, &id);
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["failed_node"], "second");
    fake_llm().push(Reply::text("two").tokens(20, 4));
    target.retry_run(&org, &id);
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], "two");
    assert_eq!(
        step(&run, "first")["attempts"],
        1,
        "the first step was not run again"
    );
    let prompts: Vec<String> = fake_llm()
        .received()
        .iter()
        .map(|r| {
            r.body["messages"][1]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(prompts, ["first", "second: one", "second: one"]);
    assert_eq!(
        run["usage"]["input_tokens"], 30,
        "the first call is billed once"
    );
    target
        .call(
            "POST",
            &format!("/api/v1/executions/{id}/retry"),
            Some(&org.owner_key),
            None,
        )
        .assert_error(409, "conflict");
}

#[test]
fn a_cancelled_run_starts_nothing_new() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-cancel");
    let agent = target.create_agent(&org);
    let workflow = target.create(&org, "/api/v1/workflows", &two_agents(&agent));
    fake_llm().push(Reply::text("slow one"));
    // The first step's answer waits until the run is cancelled.
    fake_llm().hold();
    let id = target.start_run(&org, &workflow, json!({}));
    await_provider_call(Duration::from_secs(30));
    let reply = target.call(
        "POST",
        &format!("/api/v1/executions/{id}/cancel"),
        Some(&org.owner_key),
        None,
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["status"], "cancelled");
    fake_llm().release();
    // The commit that stores a step's result also readies what follows it, so
    // once `first` is stored, `second` would exist had the run gone on.
    let run = target.await_step(&org, &id, "first", "completed");
    assert_eq!(run["status"], "cancelled");
    assert!(find_step(&run, "second").is_none(), "{run}");
    assert_eq!(fake_llm().received().len(), 1);
    target
        .call(
            "POST",
            &format!("/api/v1/executions/{id}/cancel"),
            Some(&org.owner_key),
            None,
        )
        .assert_error(409, "conflict");
}

#[test]
fn an_idempotency_key_starts_one_run() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-idempotent");
    let agent = target.create_agent(&org);
    let workflow = target.create(&org, "/api/v1/workflows", &linear(&agent));
    let path = format!("/api/v1/workflows/{workflow}/execute");
    let auth = format!("Bearer {}", org.owner_key);
    let post = |key: &str, topic: &str| {
        let body = json!({"inputs": {"topic": topic}}).to_string();
        target.request(
            "POST",
            &path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("idempotency-key", key),
            ],
            Some(body.as_bytes()),
        )
    };
    let first = post("order-42", "tea");
    assert_eq!(first.status, 202);
    let again = post("order-42", "tea");
    assert_eq!(again.status, 202);
    assert_eq!(again.json()["execution_id"], first.json()["execution_id"]);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    post("order-42", "coffee").assert_error(409, "conflict");
    let runs = target.call(
        "GET",
        &format!("/api/v1/executions?workflow_id={workflow}"),
        Some(&org.owner_key),
        None,
    );
    assert_eq!(runs.json()["total"], 1);
    target.finished(&org, first.json()["execution_id"].as_str().unwrap());
}

#[test]
fn a_delay_parks_the_run_until_the_tick_resumes_it() {
    // An app of its own: no other test's tick may resume the run.
    let target = fresh();
    let org = target.create_org("run-delay");
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Delayed",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "pause", "type": "delay", "config": {"duration_ms": 1500}},
                {"id": "done", "type": "output", "config": {"value": "{{ trigger.greeting }}"}}
            ],
            "edges": [{"source": "start", "target": "pause"}, {"source": "pause", "target": "done"}]
        }),
    );
    let id = target.start_run(&org, &workflow, json!({"greeting": "later"}));
    let parked = target.execution(&org, &id);
    assert_eq!(parked["status"], "running");
    assert_eq!(step(&parked, "pause")["status"], "queued");
    // Nothing but the tick resumes it: past its time, untouched, it is still
    // parked (a sleep that only lets the time pass; waiting longer cannot
    // make this fail).
    let due = timestamp_ms(&parked["created_at"]) + 1500;
    std::thread::sleep(Duration::from_millis(
        u64::try_from(due + 200 - now_ms()).unwrap_or(0),
    ));
    let still = target.execution(&org, &id);
    assert_eq!(still["status"], "running", "{still}");
    assert_eq!(step(&still, "pause")["status"], "queued", "{still}");
    let run = target.finished_ticking(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], "later");
    assert!(
        timestamp_ms(&step(&run, "pause")["started_at"]) >= due,
        "the delay ran no earlier than its 1.5 s: {run}"
    );
}

#[test]
fn http_nodes_reach_allowed_hosts_and_are_refused_elsewhere() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-http");
    // The fake provider stands in for any allowed HTTP service: it answers JSON.
    let url = format!("{}/v1/chat/completions", fake_llm().url());
    let definition = |url: &str| {
        json!({
            "name": "HTTP",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "call", "type": "http", "config": {"method": "POST", "url": url,
                    "headers": {"x-request": "{{ trigger.tag }}"},
                    "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "{{ trigger.tag }}"}]}}},
                {"id": "done", "type": "output", "config": {"value": {"status": "{{ steps.call.output.status }}",
                    "model": "{{ steps.call.output.body.model }}"}}}
            ],
            "edges": [{"source": "start", "target": "call"}, {"source": "call", "target": "done"}]
        })
    };
    let allowed = target.create(&org, "/api/v1/workflows", &definition(&url));
    let run = target.finished(
        &org,
        &target.start_run(&org, &allowed, json!({"tag": "t-1"})),
    );
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(
        run["output"],
        json!({"status": 200, "model": "gpt-4o-mini"})
    );
    let input = &step(&run, "call")["input"];
    assert_eq!(input["method"], "POST");
    assert_eq!(input["url"], url);
    // The body as it was sent: the rendered template, serialised.
    let sent_body: Value = serde_json::from_str(input["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent_body,
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "t-1"}]}),
    );
    let output = &step(&run, "call")["output"];
    assert_eq!(output["status"], 200);
    assert_eq!(output["body"]["model"], "gpt-4o-mini");
    assert!(
        output["headers"]["content-type"]
            .as_str()
            .is_some_and(|t| t.starts_with("application/json")),
        "{output}"
    );
    assert_eq!(
        input["header_names"],
        json!(["x-request", "content-type"]),
        "names, never values"
    );
    let sent = fake_llm().received();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].header("x-request"), Some("t-1"));
    assert_eq!(sent[0].body["messages"][0]["content"], "t-1");

    let refused = target.create(
        &org,
        "/api/v1/workflows",
        &definition("http://example.com/hook"),
    );
    let run = target.finished(
        &org,
        &target.start_run(&org, &refused, json!({"tag": "t-2"})),
    );
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "host_not_allowed", "{run}");
    assert_eq!(fake_llm().received().len(), 1, "nothing more was sent");
}

#[test]
fn a_failure_routed_to_an_error_edge_keeps_the_run_going() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-route");
    let agent = target.create_agent(&org);
    let workflow = target.create(&org, "/api/v1/workflows", &json!({
            "name": "Routed",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "ask", "type": "agent", "on_error": "route", "config": {"agent_id": agent, "prompt": "hi"}},
                {"id": "fine", "type": "transform", "config": {"template": "ok"}},
                {"id": "fallback", "type": "transform", "config": {"template": "fallback: {{ steps.ask.output.code }}"}},
                {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
            ],
            "edges": [
                {"source": "start", "target": "ask"},
                {"source": "ask", "target": "fine"},
                {"source": "ask", "target": "fallback", "source_handle": "error"},
                {"source": "fine", "target": "done"},
                {"source": "fallback", "target": "done"}
            ]
        }),
    );
    fake_llm().push(Reply::error(400, "refused"));
    let run = target.finished(&org, &target.start_run(&org, &workflow, json!({})));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], "fallback: provider_rejected");
    let ask = step(&run, "ask");
    assert_eq!(ask["outcome"], "error");
    assert_eq!(
        ask["status"], "failed",
        "a routed failure is still a failure: {ask}"
    );
    assert_eq!(ask["error"]["code"], "provider_rejected");
    assert_eq!(ask["error_handled"], true);
    assert_eq!(step(&run, "fine")["status"], "skipped");
    assert_eq!(run["failed_steps"][0]["node_id"], "ask", "{run}");
}

#[test]
fn a_node_failing_under_on_error_continue_is_shown_failed_in_the_run_and_its_list() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-continue");
    let agent = target.create_agent(&org);
    let workflow = target.create(&org, "/api/v1/workflows", &json!({
            "name": "Continued",
            "nodes": [
                {"id": "start", "type": "trigger"},
                {"id": "ask", "type": "agent", "on_error": "continue", "config": {"agent_id": agent, "prompt": "hi"}},
                {"id": "done", "type": "output", "config": {"value": "after {{ steps.ask.status }}"}}
            ],
            "edges": [
                {"source": "start", "target": "ask"},
                {"source": "ask", "target": "done"}
            ]
        }),
    );
    fake_llm().push(Reply::error(400, "refused"));
    let id = target.start_run(&org, &workflow, json!({}));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "completed", "the run goes on: {run}");
    assert_eq!(
        run["output"], "after failed",
        "what follows sees the failure"
    );
    let ask = step(&run, "ask");
    assert_eq!(ask["status"], "failed", "{ask}");
    assert_eq!(ask["error"]["code"], "provider_rejected");
    assert_eq!(ask["error_handled"], true);
    assert_eq!(ask["output"], Value::Null, "continue: its output is null");
    assert_eq!(step(&run, "done")["status"], "completed");

    let list = target
        .call(
            "GET",
            &format!("/api/v1/executions?workflow_id={workflow}"),
            Some(&org.owner_key),
            None,
        )
        .json();
    let listed = &list["data"][0];
    assert_eq!(listed["id"], id.as_str());
    assert_eq!(listed["status"], "completed");
    let failed = listed["failed_steps"].as_array().expect("failed_steps");
    assert_eq!(failed.len(), 1, "{listed}");
    assert_eq!(failed[0]["node_id"], "ask");
    assert_eq!(failed[0]["error"]["code"], "provider_rejected");
    assert_eq!(failed[0]["handled"], true);
}

/// A retry of a failed run runs its failed step again but keeps a failure a
/// node's `on_error: continue` already handled.
#[test]
fn a_retry_keeps_the_failures_on_error_handled() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-retry-handled");
    let agent = target.create_agent(&org);
    let workflow = target.create(&org, "/api/v1/workflows", &json!({
            "name": "Handled, then failing",
            "nodes": [
                {"id": "start", "type": "trigger"},
                {"id": "ask", "type": "agent", "on_error": "continue", "config": {"agent_id": agent, "prompt": "hi"}},
                {"id": "call", "type": "http", "config": {"method": "GET", "url": "http://example.com/hook"}}
            ],
            "edges": [{"source": "start", "target": "ask"}, {"source": "ask", "target": "call"}]
        }),
    );
    fake_llm().push(Reply::error(400, "refused"));
    let id = target.start_run(&org, &workflow, json!({}));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["failed_node"], "call");
    target.retry_run(&org, &id);
    let run = target.finished(&org, &id);
    // `call` is refused again (its host is not allowed); `ask` did not run again.
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(fake_llm().received().len(), 1, "the handled step was kept");
    let failed: Vec<(&str, bool)> = run["failed_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["node_id"].as_str().unwrap(),
                f["handled"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(failed, [("ask", true), ("call", false)], "{run}");
}

/// Templates see the run's own id, and a delay may wait `until` a templated
/// time: one already past ends at once, a later one parks the step.
#[test]
fn templates_see_the_run_id_and_a_delay_waits_until_a_templated_time() {
    let target = shared();
    let org = target.create_org("run-until");
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Until",
            "nodes": [
                {"id": "start", "type": "trigger"},
                {"id": "pause", "type": "delay", "config": {"until": "{{ trigger.at }}"}},
                {"id": "done", "type": "output", "config": {"value": "{{ execution.id }}"}}
            ],
            "edges": [{"source": "start", "target": "pause"}, {"source": "pause", "target": "done"}]
        }),
    );
    let past = target.start_run(&org, &workflow, json!({"at": "2020-01-01T00:00:00Z"}));
    let run = target.finished(&org, &past);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], past.as_str());

    let at = chrono::DateTime::from_timestamp_millis(now_ms() + 60_000)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let later = target.start_run(&org, &workflow, json!({"at": at}));
    let run = target.await_step(&org, &later, "pause", "queued");
    assert_eq!(run["status"], "running", "{run}");
    assert!(find_step(&run, "done").is_none(), "{run}");
    // Nothing moves it before its time, however often the tick comes.
    target.tick();
    let run = target.execution(&org, &later);
    assert_eq!(step(&run, "pause")["status"], "queued", "{run}");
    let cancelled = target.call(
        "POST",
        &format!("/api/v1/executions/{later}/cancel"),
        Some(&org.owner_key),
        None,
    );
    assert_eq!(cancelled.status, 200);
}

#[test]
fn a_node_retry_policy_runs_a_transient_failure_again_after_its_backoff() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-node-retry");
    let url = format!("{}/v1/chat/completions", fake_llm().url());
    let workflow = target.create(&org, "/api/v1/workflows", &json!({
            "name": "Retried",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "call", "type": "http", "retry": {"max_attempts": 3, "backoff_ms": 200},
                    "config": {"method": "POST", "url": url, "body": {"model": "m", "messages": []}}},
                {"id": "done", "type": "output", "config": {"value": "{{ steps.call.output.status }}"}}
            ],
            "edges": [{"source": "start", "target": "call"}, {"source": "call", "target": "done"}]
        }),
    );
    fake_llm().push(Reply::server_error());
    fake_llm().push(Reply::server_error());
    let id = target.start_run(&org, &workflow, json!({}));
    let run = target.finished_ticking(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], 200);
    assert_eq!(step(&run, "call")["attempts"], 3);
    assert_eq!(fake_llm().received().len(), 3);
}

fn approval_flow(timeout_ms: u64) -> Value {
    json!({
        "name": "Approval",
        "nodes": [
            {"id": "start", "type": "trigger", "config": {}},
            {"id": "approval", "type": "wait", "config": {"signal": "approved", "timeout_ms": timeout_ms}},
            {"id": "go", "type": "transform", "config": {"template": "approved by {{ steps.approval.output.by }}"}},
            {"id": "expired", "type": "transform", "config": {"template": "no answer"}},
            {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
        ],
        "edges": [
            {"source": "start", "target": "approval"},
            {"source": "approval", "target": "go"},
            {"source": "approval", "target": "expired", "source_handle": "timeout"},
            {"source": "go", "target": "done"},
            {"source": "expired", "target": "done"}
        ]
    })
}

/// Sends run `id` the `approved` signal with `{"by": by}`; asserts it was taken.
fn approve(target: &Target, org: &Org, id: &str, by: &str) {
    let reply = target.call(
        "POST",
        &format!("/api/v1/executions/{id}/signals/approved"),
        Some(&org.owner_key),
        Some(&json!({"payload": {"by": by}})),
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
}

#[test]
fn a_wait_node_is_resumed_by_its_signal() {
    let target = shared();
    let org = target.create_org("run-signal");
    let workflow = target.create(&org, "/api/v1/workflows", &approval_flow(60_000));
    let id = target.start_run(&org, &workflow, json!({}));
    let parked = target.execution(&org, &id);
    assert_eq!(parked["status"], "running");
    assert_eq!(step(&parked, "approval")["status"], "waiting");
    let signals = format!("/api/v1/executions/{id}/signals");
    target
        .call(
            "POST",
            &format!("{signals}/rejected"),
            Some(&org.owner_key),
            Some(&json!({"payload": {}})),
        )
        .assert_error(404, "not_found");
    approve(target, &org, &id, "Grace");
    let run = target.finished(&org, &id);
    assert_eq!(run["output"], "approved by Grace");
    assert_eq!(step(&run, "expired")["status"], "skipped");
    target
        .call(
            "POST",
            &format!("{signals}/approved"),
            Some(&org.owner_key),
            None,
        )
        .assert_error(404, "not_found");
}

#[test]
fn a_wait_node_without_its_signal_times_out_on_the_tick() {
    let target = shared();
    let org = target.create_org("run-wait-timeout");
    let workflow = target.create(&org, "/api/v1/workflows", &approval_flow(300));
    let id = target.start_run(&org, &workflow, json!({}));
    // Any tick may time it out (other tests tick the same app too).
    let run = target.finished_ticking(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], "no answer");
    let approval = step(&run, "approval");
    assert_eq!(approval["outcome"], "timeout");
    assert!(
        timestamp_ms(&approval["finished_at"]) >= timestamp_ms(&run["created_at"]) + 300,
        "timed out no earlier than its 300 ms: {run}"
    );
    assert_eq!(step(&run, "go")["status"], "skipped");
}

#[test]
fn rerun_from_a_middle_node_on_a_new_version_reuses_what_came_before() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-rerun");
    let agent = target.create_agent(&org);
    let workflow = target.create(&org, "/api/v1/workflows", &two_agents(&agent));
    fake_llm().push(Reply::text("one").tokens(10, 1));
    fake_llm().push(Reply::text("two").tokens(10, 1));
    let first = target.finished(&org, &target.start_run(&org, &workflow, json!({})));
    assert_eq!(first["output"], "two");
    let mut changed = two_agents(&agent);
    changed["nodes"][2]["config"]["prompt"] = json!("second, v2: {{ previous_output }}");
    let put = target.call(
        "PUT",
        &format!("/api/v1/workflows/{workflow}"),
        Some(&org.owner_key),
        Some(&changed),
    );
    assert_eq!(put.json()["version"], 2);
    fake_llm().push(Reply::text("two, v2").tokens(10, 1));
    let path = format!("/api/v1/executions/{}/rerun", first["id"].as_str().unwrap());
    let reply = target.call(
        "POST",
        &path,
        Some(&org.owner_key),
        Some(&json!({"from_node": "second", "version": 2})),
    );
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let rerun = target.finished(&org, reply.json()["execution_id"].as_str().unwrap());
    assert_eq!(rerun["status"], "completed", "{rerun}");
    assert_eq!(rerun["trigger_kind"], "rerun");
    assert_eq!(rerun["version"], 2);
    assert_eq!(rerun["output"], "two, v2");
    assert_eq!(
        step(&rerun, "first")["output"],
        "one",
        "reused, not run again"
    );
    assert_eq!(
        rerun["usage"]["input_tokens"], 10,
        "only the rerun step is billed"
    );
    let prompts: Vec<String> = fake_llm()
        .received()
        .iter()
        .map(|r| {
            r.body["messages"][1]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(prompts, ["first", "second: one", "second, v2: one"]);
    // Without `version`, a rerun is on the run's own version, not the newest.
    fake_llm().push(Reply::text("two, again").tokens(10, 1));
    let reply = target.call(
        "POST",
        &path,
        Some(&org.owner_key),
        Some(&json!({"from_node": "second"})),
    );
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let again = target.finished(&org, reply.json()["execution_id"].as_str().unwrap());
    assert_eq!(again["version"], 1, "{again}");
    assert_eq!(
        fake_llm().received().last().unwrap().body["messages"][1]["content"],
        "second: one"
    );
    // A rerun never goes back to a version older than its run's.
    let of_v2 = format!("/api/v1/executions/{}/rerun", rerun["id"].as_str().unwrap());
    for version in [1, 3] {
        let reply = target.call(
            "POST",
            &of_v2,
            Some(&org.owner_key),
            Some(&json!({"from_node": "second", "version": version})),
        );
        reply.assert_error(422, "validation_failed");
        assert_eq!(reply.json()["error"]["details"][0]["path"], "version");
    }
    for (body, status) in [
        (json!({"from_node": "nowhere"}), 422),
        (
            json!({"from_node": "second", "version": 1, "extra": true}),
            400,
        ),
        (json!({"version": 2}), 400),
    ] {
        let reply = target.call("POST", &path, Some(&org.owner_key), Some(&body));
        assert_eq!(reply.status, status, "{body}");
    }
}

#[test]
fn internal_endpoints_refuse_requests_without_a_valid_token() {
    let target = shared();
    for (path, headers) in [
        ("/internal/steps/some-step", vec![]),
        (
            "/internal/steps/some-step",
            vec![("x-spindle-dispatch", "99999999999999.deadbeef")],
        ),
        (
            "/internal/steps/some-step",
            vec![("x-spindle-dispatch", "garbage")],
        ),
        ("/internal/tick", vec![]),
        (
            "/internal/tick",
            vec![("authorization", "Bearer wrong-tick-key")],
        ),
    ] {
        target
            .request("POST", path, &headers, None)
            .assert_error(403, "forbidden");
    }
}

#[test]
fn run_inputs_are_checked_before_anything_is_stored() {
    let target = shared();
    let org = target.create_org("run-inputs");
    let agent = target.create_agent(&org);
    let workflow = target.create(&org, "/api/v1/workflows", &linear(&agent));
    let path = format!("/api/v1/workflows/{workflow}/execute");
    let post = |body: Value| target.call("POST", &path, Some(&org.owner_key), Some(&body));
    post(json!({"inputs": {}})).assert_error(422, "validation_failed");
    post(json!({"inputs": {"topic": 7}})).assert_error(422, "validation_failed");
    post(json!({"inputs": "topic"})).assert_error(400, "bad_request");
    post(json!({"input": {"topic": "x"}})).assert_error(400, "bad_request");
    target.call(
        "PATCH",
        &format!("/api/v1/workflows/{workflow}"),
        Some(&org.owner_key),
        Some(&json!({"is_active": false})),
    );
    post(json!({"inputs": {"topic": "x"}})).assert_error(409, "conflict");
    let runs = target.call(
        "GET",
        &format!("/api/v1/executions?workflow_id={workflow}"),
        Some(&org.owner_key),
        None,
    );
    assert_eq!(runs.json()["total"], 0);
}

#[test]
fn another_organisations_runs_and_workflows_answer_404() {
    let _turn = fake_turn();
    let target = shared();
    let ours = target.create_org("run-ours");
    let theirs = target.create_org("run-theirs");
    let agent = target.create_agent(&theirs);
    let workflow = target.create(&theirs, "/api/v1/workflows", &linear(&agent));
    let id = target.start_run(&theirs, &workflow, json!({"topic": "x"}));
    target.finished(&theirs, &id);
    target
        .call(
            "GET",
            &format!("/api/v1/executions/{id}"),
            Some(&ours.owner_key),
            None,
        )
        .assert_error(404, "not_found");
    target
        .call(
            "POST",
            &format!("/api/v1/workflows/{workflow}/execute"),
            Some(&ours.owner_key),
            Some(&json!({"inputs": {"topic": "x"}})),
        )
        .assert_error(404, "not_found");
    for (method, path, body) in [
        ("POST", format!("/api/v1/executions/{id}/cancel"), None),
        ("POST", format!("/api/v1/executions/{id}/retry"), None),
        (
            "POST",
            format!("/api/v1/executions/{id}/rerun"),
            Some(json!({"from_node": "draft"})),
        ),
        (
            "POST",
            format!("/api/v1/executions/{id}/signals/approved"),
            Some(json!({"payload": {}})),
        ),
        ("GET", format!("/api/v1/executions/{id}/logs"), None),
        ("GET", format!("/api/v1/executions/{id}/events"), None),
    ] {
        target
            .call(method, &path, Some(&ours.owner_key), body.as_ref())
            .assert_error(404, "not_found");
    }
    let listed = target
        .call("GET", "/api/v1/executions", Some(&ours.owner_key), None)
        .json();
    assert_eq!(listed["total"], 0);
    let theirs_now = target.execution(&theirs, &id);
    assert_eq!(theirs_now["status"], "completed", "nothing changed it");
    let runs = target
        .call("GET", "/api/v1/executions", Some(&theirs.owner_key), None)
        .json();
    assert_eq!(runs["total"], 1, "no rerun was started");
}

#[test]
fn a_switch_takes_the_matching_case_or_its_default() {
    let target = shared();
    let org = target.create_org("run-switch");
    let definition = json!({
        "name": "Switch",
        "nodes": [
            {"id": "start", "type": "trigger"},
            {"id": "route", "type": "switch", "config": {"expression": "trigger.severity", "cases": ["critical", "high"]}},
            {"id": "page", "type": "transform", "config": {"template": "page on-call"}},
            {"id": "ticket", "type": "transform", "config": {"template": "open a ticket"}},
            {"id": "log", "type": "transform", "config": {"template": "log it"}},
            {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
        ],
        "edges": [
            {"source": "start", "target": "route"},
            {"source": "route", "target": "page", "source_handle": "critical"},
            {"source": "route", "target": "ticket", "source_handle": "high"},
            {"source": "route", "target": "log", "source_handle": "default"},
            {"source": "page", "target": "done"},
            {"source": "ticket", "target": "done"},
            {"source": "log", "target": "done"}
        ]
    });
    let workflow = target.create(&org, "/api/v1/workflows", &definition);
    for (severity, output, ran) in [
        ("critical", "page on-call", "page"),
        ("high", "open a ticket", "ticket"),
        ("low", "log it", "log"),
    ] {
        let id = target.start_run(&org, &workflow, json!({"severity": severity}));
        let run = target.finished(&org, &id);
        assert_eq!(run["status"], "completed", "{run}");
        assert_eq!(run["output"], output);
        for node in ["page", "ticket", "log"] {
            let expected = if node == ran { "completed" } else { "skipped" };
            assert_eq!(step(&run, node)["status"], expected, "{severity}: {node}");
        }
    }
}

#[test]
fn executions_are_filtered_by_workflow_status_and_creation_range() {
    let target = shared();
    let org = target.create_org("run-filters");
    let definition = |name: &str| {
        json!({"name": name, "nodes": [{"id": "start", "type": "trigger"},
            {"id": "done", "type": "output", "config": {"value": "{{ trigger.n }}"}}],
            "edges": [{"source": "start", "target": "done"}]})
    };
    let first = target.create(&org, "/api/v1/workflows", &definition("First"));
    let second = target.create(&org, "/api/v1/workflows", &definition("Second"));
    let a = target.start_run(&org, &first, json!({"n": 1}));
    target.finished(&org, &a);
    let between = target.execution(&org, &a)["created_at"]
        .as_str()
        .unwrap()
        .to_string();
    // Creation times are kept to the millisecond: this lets the clock move
    // past a's, so that a time filter can tell the two runs apart (no event
    // is awaited; a longer pause changes nothing).
    std::thread::sleep(Duration::from_millis(20));
    let b = target.start_run(&org, &second, json!({"n": 2}));
    target.finished(&org, &b);
    let ids = |query: &str| -> Vec<String> {
        let listed = target
            .call(
                "GET",
                &format!("/api/v1/executions{query}"),
                Some(&org.owner_key),
                None,
            )
            .json();
        listed["data"]
            .as_array()
            .unwrap_or_else(|| panic!("{listed}"))
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(""), [b.clone(), a.clone()], "newest first");
    assert_eq!(ids(&format!("?workflow_id={first}")), [a.as_str()]);
    assert_eq!(ids("?status=completed").len(), 2);
    assert!(ids("?status=failed").is_empty());
    let after_a = (chrono::DateTime::parse_from_rfc3339(&between).unwrap()
        + chrono::Duration::milliseconds(1))
    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert_eq!(ids(&format!("?from={after_a}")), [b.as_str()]);
    assert_eq!(ids(&format!("?to={after_a}")), [a.as_str()]);
    for bad in [
        "?status=done",
        "?from=yesterday",
        "?to=2026-13-01T00:00:00Z",
        "?from=2026-11-25T10:00:00Z&to=2026-11-25T09:00:00Z",
    ] {
        target
            .call(
                "GET",
                &format!("/api/v1/executions{bad}"),
                Some(&org.owner_key),
                None,
            )
            .assert_error(400, "bad_request");
    }
}

#[test]
fn execution_time_filters_take_every_rfc_3339_form_as_written_in_a_url() {
    let target = shared();
    let org = target.create_org("run-time-forms");
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({"name": "Timed", "nodes": [{"id": "start", "type": "trigger"},
            {"id": "done", "type": "output", "config": {"value": 1}}],
            "edges": [{"source": "start", "target": "done"}]}),
    );
    let id = target.start_run(&org, &workflow, json!({}));
    target.finished(&org, &id);
    let created = chrono::DateTime::parse_from_rfc3339(
        target.execution(&org, &id)["created_at"].as_str().unwrap(),
    )
    .unwrap();
    // The whole second the run was created in, and the next one.
    let second = created.timestamp();
    let utc = |s: i64| chrono::DateTime::from_timestamp(s, 0).unwrap();
    let plus_two = chrono::FixedOffset::east_opt(2 * 3600).unwrap();
    let minus_three = chrono::FixedOffset::west_opt(3 * 3600).unwrap();
    let plain = |s: i64| utc(s).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let encoded = |text: String| text.replace(':', "%3A").replace('+', "%2B");
    let offset = |s: i64, zone| {
        utc(s)
            .with_timezone(&zone)
            .format("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
    };
    let ids = |query: &str| -> Vec<String> {
        let reply = target.call(
            "GET",
            &format!("/api/v1/executions?workflow_id={workflow}&{query}"),
            Some(&org.owner_key),
            None,
        );
        assert_eq!(
            reply.status,
            200,
            "{query}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    for (from, to) in [
        // No fractional seconds, colons encoded as a browser or curl --data-urlencode does.
        (encoded(plain(second)), encoded(plain(second + 1))),
        (plain(second), plain(second + 1)),
        // Fractions of any length.
        (
            utc(second).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            utc(second + 1).format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        ),
        // Offsets, with the `+` encoded, sent bare (it arrives as a space), and negative.
        (
            encoded(offset(second, plus_two)),
            encoded(offset(second + 1, plus_two)),
        ),
        (offset(second, plus_two), offset(second + 1, plus_two)),
        (
            encoded(offset(second, minus_three)),
            offset(second + 1, minus_three),
        ),
    ] {
        let query = format!("from={from}&to={to}");
        assert_eq!(ids(&query), [id.as_str()], "{query}");
    }
    // The bounds are honoured: the next second holds no run of this workflow.
    let later = format!(
        "from={}&to={}",
        encoded(plain(second + 1)),
        encoded(plain(second + 2))
    );
    assert!(ids(&later).is_empty(), "{later}");
    let reply = target.call(
        "GET",
        "/api/v1/executions?from=2026-12-08T02%3A16%3A40",
        Some(&org.owner_key),
        None,
    );
    reply.assert_error(400, "bad_request");
    assert_eq!(reply.json()["error"]["details"][0]["path"], "query.from");
}

#[test]
fn fifty_runs_started_at_once_all_complete() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-concurrent");
    let agent = target.create_agent(&org);
    let workflow = target.create(&org, "/api/v1/workflows", &linear(&agent));
    let ids: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (org, workflow) = (&org, &workflow);
                scope.spawn(move || {
                    target.start_run(org, workflow, json!({"topic": format!("t{i}")}))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for id in &ids {
        assert_eq!(target.finished(&org, id)["status"], "completed");
    }
    assert_eq!(fake_llm().received().len(), 50, "one provider call per run");
}

#[test]
fn a_node_timeout_cuts_a_slow_provider_call_and_the_retry_answers() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-node-timeout");
    let agent = target.create_agent(&org);
    let mut definition = linear(&agent);
    // Below the suite's provider_timeout_ms (5 s): only the node's limit cuts the slow answer.
    definition["nodes"][1]["timeout_ms"] = json!(800);
    let workflow = target.create(&org, "/api/v1/workflows", &definition);
    fake_llm().push(Reply::text("slow").after(Duration::from_secs(4)));
    fake_llm().push(Reply::text("fast").tokens(7, 3));
    let run = target.finished(
        &org,
        &target.start_run(&org, &workflow, json!({"topic": "tides"})),
    );
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(step(&run, "draft")["output"], "fast");
    assert_eq!(
        run["usage"]["input_tokens"], 7,
        "only the answer that arrived is billed"
    );
}

#[test]
fn an_http_node_timeout_fails_a_request_that_hangs() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-http-timeout");
    let url = format!("{}/v1/chat/completions", fake_llm().url());
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Hanging HTTP",
            "nodes": [
                {"id": "start", "type": "trigger"},
                {"id": "call", "type": "http", "timeout_ms": 800, "config": {"method": "POST", "url": url,
                    "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}}
            ],
            "edges": [{"source": "start", "target": "call"}]
        }),
    );
    fake_llm().push(Reply::hang());
    let run = target.finished(&org, &target.start_run(&org, &workflow, json!({})));
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "http_timeout");
    assert_eq!(run["failed_node"], "call");

    // The tighter of the node's and the request's own `timeout_ms` applies:
    // an answer 3 s late passes the node's 10 s but not the request's 800 ms,
    // whichever of the two says less.
    let late = |node_ms: u64, request_ms: u64| {
        let workflow = target.create(
            &org,
            "/api/v1/workflows",
            &json!({
                "name": "Two limits",
                "nodes": [
                    {"id": "start", "type": "trigger"},
                    {"id": "call", "type": "http", "timeout_ms": node_ms, "config": {"method": "POST", "url": url,
                        "timeout_ms": request_ms, "body": {"model": "m", "messages": []}}}
                ],
                "edges": [{"source": "start", "target": "call"}]
            }),
        );
        fake_llm().clear();
        fake_llm().push(Reply::text("late").after(Duration::from_secs(3)));
        target.finished(&org, &target.start_run(&org, &workflow, json!({})))
    };
    for (node_ms, request_ms) in [(10_000, 800), (800, 10_000)] {
        let run = late(node_ms, request_ms);
        assert_eq!(
            run["error"]["code"], "http_timeout",
            "{node_ms}/{request_ms}: {run}"
        );
    }
    let run = late(10_000, 10_000);
    assert_eq!(run["status"], "completed", "{run}");
}

/// An `http` node without a `retry` of its own sends one request: a 4xx or a
/// 5xx answer fails its step at once (only agent nodes have a default policy).
#[test]
fn an_http_node_without_a_retry_fails_on_its_first_error_answer() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-http-error");
    let url = format!("{}/v1/chat/completions", fake_llm().url());
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "HTTP errors",
            "nodes": [
                {"id": "start", "type": "trigger"},
                {"id": "call", "type": "http", "config": {"method": "POST", "url": url,
                    "body": {"model": "m", "messages": []}}}
            ],
            "edges": [{"source": "start", "target": "call"}]
        }),
    );
    for (reply, code) in [
        (Reply::error(404, "no such thing"), "http_status"),
        (Reply::server_error(), "http_unavailable"),
    ] {
        fake_llm().clear();
        fake_llm().push(reply);
        let run = target.finished_ticking(&org, &target.start_run(&org, &workflow, json!({})));
        assert_eq!(run["status"], "failed", "{run}");
        assert_eq!(run["failed_node"], "call");
        assert_eq!(run["error"]["code"], code, "{run}");
        let call = step(&run, "call");
        assert_eq!(call["status"], "failed");
        assert_eq!(call["attempts"], 1, "{run}");
        assert_eq!(fake_llm().received().len(), 1, "one request, no retry");
    }
}

/// `[status, billed µ$]` of each usage record of `run`, in the order the calls were made.
fn billed_records(target: &Target, org: &Org, run: &Value) -> Value {
    let id = run["id"].as_str().unwrap();
    target
        .usage_records(org, &format!("execution_id={id}"))
        .iter()
        .map(|r| json!([r["status"], r["billed_cost_micros"]]))
        .collect()
}

#[test]
fn provider_faults_in_a_run_are_retried_billed_once_or_recorded_on_the_node() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-provider-faults");
    let agent = target.create_agent(&org);
    let workflow = target.create(&org, "/api/v1/workflows", &linear(&agent));
    let run_once = |topic: &str| {
        let id = target.start_run(&org, &workflow, json!({"topic": topic}));
        target.finished(&org, &id)
    };
    // The step's own invocation waits out the 429's `Retry-After: 1` and
    // runs it again; no tick is needed.

    fake_llm().push(Reply::rate_limited(1));
    fake_llm().push(Reply::text("after the wait").tokens(12, 4));
    let run = run_once("rate limited");
    assert_eq!(run["status"], "completed", "{run}");
    let draft = step(&run, "draft");
    assert_eq!(draft["output"], "after the wait");
    assert_eq!(run["usage"]["input_tokens"], 12, "the successful call only");
    assert_eq!(fake_llm().received().len(), 2);
    let log = draft["attempt_log"].as_array().expect("attempt_log");
    assert_eq!(log.len(), 2, "the 429 and the success: {draft}");
    assert_eq!(log[0]["status"], "failed");
    assert_eq!(log[0]["error"]["code"], "provider_rate_limited");
    assert!(
        log[0]["retry_in_ms"].as_i64().unwrap() >= 1000,
        "the retry waits the provider's Retry-After: {draft}"
    );
    assert_eq!(log[1]["status"], "succeeded");
    assert_eq!(draft["attempts"], 2);
    // Billed once: 12 × $0.15/M + 4 × $0.60/M = 1.8 + 2.4 = 4.2 → 4 µ$; × 1.2 = 4.8 → 5,
    // on the run and on the one succeeded usage record; the 429's record costs nothing.
    assert_eq!(run["cost"]["billed_micros"], 5, "{run}");
    assert_eq!(
        billed_records(target, &org, &run),
        json!([["failed", 0], ["succeeded", 5]])
    );

    // No `retry` on the node: an agent node's default policy, 3 attempts.
    for _ in 0..3 {
        fake_llm().push(Reply::server_error());
    }
    let run = run_once("outage");
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["failed_node"], "draft");
    let draft = step(&run, "draft");
    assert_eq!(draft["error"]["code"], "provider_unavailable");
    assert_eq!(run["cost"]["billed_micros"], 0);
    assert_eq!(
        fake_llm().received().len(),
        5,
        "three calls, one per attempt"
    );
    let log = draft["attempt_log"].as_array().expect("attempt_log");
    let statuses: Vec<_> = log.iter().map(|a| a["status"].clone()).collect();
    assert_eq!(statuses, ["failed", "failed", "failed"], "{draft}");
    assert!(log[2]["retry_in_ms"].is_null(), "the last attempt is final");
    assert_eq!(
        billed_records(target, &org, &run),
        json!([["failed", 0], ["failed", 0], ["failed", 0]]),
        "three calls recorded, none billed"
    );

    fake_llm().push(Reply::malformed());
    let run = run_once("garbled");
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(
        step(&run, "draft")["error"]["code"],
        "provider_malformed_response"
    );
    assert_eq!(
        fake_llm().received().len(),
        6,
        "a malformed answer is not retried"
    );
}

#[test]
fn a_node_retry_policy_bounds_every_provider_call_the_node_makes() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-retry-budget");
    let agent = target.create_agent(&org);
    let mut definition = linear(&agent);
    definition["nodes"][1]["retry"] = json!({"max_attempts": 2, "backoff_ms": 100});
    let workflow = target.create(&org, "/api/v1/workflows", &definition);
    let _ticker = target.tick_every(Duration::from_millis(100));
    for _ in 0..8 {
        fake_llm().push(Reply::server_error());
    }
    let id = target.start_run(&org, &workflow, json!({"topic": "outage"}));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(
        fake_llm().received().len(),
        2,
        "max_attempts 2 is two provider calls, not two node attempts of several calls each"
    );
    let draft = step(&run, "draft");
    assert_eq!(draft["attempts"], 2, "{draft}");
    let log = draft["attempt_log"].as_array().expect("attempt_log");
    assert_eq!(log.len(), 2, "{draft}");
    assert_eq!(log[0]["attempt"], 1);
    assert_eq!(log[0]["error"]["code"], "provider_unavailable");
    assert!(log[0]["retry_in_ms"].as_i64().unwrap() >= 100);
    assert_eq!(log[1]["attempt"], 2);
    assert!(log[1]["retry_in_ms"].is_null());
    let usage = target
        .call(
            "GET",
            &format!("/api/v1/usage/records?execution_id={id}"),
            Some(&org.owner_key),
            None,
        )
        .json();
    assert_eq!(
        usage["data"].as_array().map(Vec::len),
        Some(2),
        "one usage record per provider call: {usage}"
    );
}

/// Workflow with an agent step, then a loop of cheap steps run inline.
fn agent_then_loop(agent: &str) -> Value {
    json!({
        "name": "Agent then loop",
        "nodes": [
            {"id": "start", "type": "trigger"},
            {"id": "draft", "type": "agent", "config": {"agent_id": agent, "prompt": "Write about {{ trigger.topic }}"}},
            {"id": "each", "type": "loop", "config": {"mode": "for_each", "items": "[1, 2, 3]", "body": {
                "nodes": [{"id": "tag", "type": "transform", "config": {"template": "{{ item }}:{{ steps.draft.output | length }}"}}],
                "edges": []
            }}},
            {"id": "done", "type": "output", "config": {"value": "{{ steps.each.output }}"}}
        ],
        "edges": [
            {"source": "start", "target": "draft"},
            {"source": "draft", "target": "each"},
            {"source": "each", "target": "done"}
        ]
    })
}

/// A dispatch token for `subject`, signed with the suite's `internal_key`.
fn dispatch_token(subject: &str) -> String {
    use hmac::{Hmac, Mac};
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 60_000;
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(spindle_suite::INTERNAL_KEY.as_bytes()).unwrap();
    mac.update(format!("{subject}.{expires}").as_bytes());
    let signature: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{expires}.{signature}")
}

#[test]
fn a_run_keeps_the_version_it_started_on_when_the_workflow_is_edited_mid_run() {
    let target = shared();
    let org = target.create_org("run-pinned");
    let workflow = target.create(&org, "/api/v1/workflows", &approval_flow(60_000));
    let id = target.start_run(&org, &workflow, json!({}));
    assert_eq!(
        step(&target.execution(&org, &id), "approval")["status"],
        "waiting"
    );
    let mut edited = approval_flow(60_000);
    edited["nodes"][2]["config"]["template"] =
        json!("v2 approved by {{ steps.approval.output.by }}");
    let put = target.call(
        "PUT",
        &format!("/api/v1/workflows/{workflow}"),
        Some(&org.owner_key),
        Some(&edited),
    );
    assert_eq!(put.json()["version"], 2, "{}", put.json());
    approve(target, &org, &id, "Ada");
    let run = target.finished(&org, &id);
    assert_eq!(run["version"], 1, "{run}");
    assert_eq!(
        run["output"], "approved by Ada",
        "the run finished on version 1"
    );
    let next = target.start_run(&org, &workflow, json!({}));
    approve(target, &org, &next, "Ada");
    let next = target.finished(&org, &next);
    assert_eq!(next["version"], 2, "{next}");
    assert_eq!(next["output"], "v2 approved by Ada");
}

#[test]
fn a_wait_without_a_timeout_edge_fails_the_run_when_it_times_out() {
    let target = shared();
    let org = target.create_org("run-wait-no-edge");
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Approval, no fallback",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "approval", "type": "wait", "config": {"signal": "approved", "timeout_ms": 300}},
                {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
            ],
            "edges": [
                {"source": "start", "target": "approval"},
                {"source": "approval", "target": "done"}
            ]
        }),
    );
    let id = target.start_run(&org, &workflow, json!({}));
    let run = target.finished_ticking(&org, &id);
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["failed_node"], "approval", "{run}");
    let approval = step(&run, "approval");
    assert_eq!(approval["status"], "failed");
    assert!(
        timestamp_ms(&approval["finished_at"]) >= timestamp_ms(&run["created_at"]) + 300,
        "timed out no earlier than its 300 ms: {run}"
    );
    let done_ran = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["node_id"] == "done" && s["status"] == "completed");
    assert!(!done_ran, "nothing after the wait ran: {run}");
    assert_eq!(run["output"], Value::Null, "{run}");
}

#[test]
fn retry_of_a_cancelled_run_reuses_its_completed_steps() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("run-retry-cancelled");
    let agent = target.create_agent(&org);
    let workflow = target.create(&org, "/api/v1/workflows", &two_agents(&agent));
    fake_llm().push(Reply::text("one"));
    // The first step's answer waits until the run is cancelled.
    fake_llm().hold();
    let id = target.start_run(&org, &workflow, json!({}));
    await_provider_call(Duration::from_secs(30));
    let cancel = target.call(
        "POST",
        &format!("/api/v1/executions/{id}/cancel"),
        Some(&org.owner_key),
        None,
    );
    assert_eq!(cancel.json()["status"], "cancelled", "{}", cancel.json());
    fake_llm().release();
    let cancelled = target.await_step(&org, &id, "first", "completed");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    fake_llm().push(Reply::text("two"));
    target.retry_run(&org, &id);
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], "two");
    assert_eq!(
        step(&run, "first")["attempts"],
        1,
        "first was not run again"
    );
    assert_eq!(fake_llm().received().len(), 2, "one call per agent step");
}

#[test]
fn the_execution_list_pages_through_every_run_once_newest_first() {
    let target = shared();
    let org = target.create_org("run-list-pages");
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Echo",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "done", "type": "output", "config": {"value": "{{ trigger.n }}"}}
            ],
            "edges": [{"source": "start", "target": "done"}]
        }),
    );
    let started: Vec<String> = (0..5)
        .map(|n| {
            let id = target.start_run(&org, &workflow, json!({"n": n}));
            target.finished(&org, &id);
            id
        })
        .collect();
    let page = |offset: usize| {
        let reply = target.call(
            "GET",
            &format!("/api/v1/executions?workflow_id={workflow}&limit=2&offset={offset}"),
            Some(&org.owner_key),
            None,
        );
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.json()
    };
    let mut listed = Vec::new();
    for offset in [0, 2, 4] {
        let body = page(offset);
        assert_eq!(body["total"], 5, "{body}");
        let ids: Vec<String> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|run| run["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), if offset == 4 { 1 } else { 2 }, "{body}");
        listed.extend(ids);
    }
    let newest_first: Vec<String> = started.into_iter().rev().collect();
    assert_eq!(listed, newest_first);
    assert!(page(5)["data"].as_array().unwrap().is_empty());
    target
        .call(
            "GET",
            "/api/v1/executions?limit=0",
            Some(&org.owner_key),
            None,
        )
        .assert_error(400, "bad_request");
}

#[test]
fn a_run_whose_host_dies_mid_step_is_finished_after_a_restart_and_billed_once() {
    let _turn = fake_turn();
    // The whole app dies while its step waits for the provider: on real Spin the
    // process group of `spin up` is killed, on the test host every instance is
    // dropped. Started again on the same state, the tick finds the step's lapsed
    // lease and runs it once more.
    let target = configured(suite_variables());
    let org = target.create_org("run-host-died");
    let agent = target.create_agent(&org);
    let workflow = target.create(&org, "/api/v1/workflows", &linear(&agent));
    fake_llm().push(Reply::hang());
    fake_llm().push(Reply::text("written after the restart").tokens(8, 4));
    let id = target.start_run(&org, &workflow, json!({"topic": "outages"}));
    await_provider_call(Duration::from_secs(10));
    target.kill_and_restart();
    let before = target.execution(&org, &id);
    assert_eq!(before["status"], "running", "{before}");
    assert_eq!(step(&before, "draft")["status"], "running", "{before}");
    let _ticker = target.tick_every(Duration::from_millis(200));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"]["text"], "written after the restart");
    assert_eq!(step(&run, "draft")["attempts"], 2, "{run}");
    assert_eq!(fake_llm().received().len(), 2);
    // Billed once, for the call that answered: 8 × $0.15/M + 4 × $0.60/M = 1.2 + 2.4
    // = 3.6 → 4 µ$; × 1.2 = 4.8 → 5. The call cut by the restart left no record.
    assert_eq!(run["cost"]["billed_micros"], 5, "{run}");
    assert_eq!(
        billed_records(&target, &org, &run),
        json!([["succeeded", 5]])
    );
}

/// Tests of recovery that need the test host's fault injection (a run on real
/// Spin skips this module by name: `--skip host_faults::`).
mod host_faults {
    use super::*;

    /// Ticks until a tick hands one step on (`redispatched: 1`), for at most
    /// 30 s; every tick before it must hand on nothing.
    fn tick_until_redispatched(target: &Target) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let tick = target.tick().json();
            if tick["redispatched"] == 1 {
                return;
            }
            assert_eq!(tick["redispatched"], 0, "{tick}");
            assert!(Instant::now() < deadline, "no tick handed the step on");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn a_step_whose_instance_died_is_finished_by_the_tick_exactly_once() {
        let _turn = fake_turn();
        // The first step invocation answers, then dies before it calls the provider.
        let killed = Arc::new(AtomicBool::new(false));
        let plan = {
            let killed = killed.clone();
            move |inv: &Invocation| {
                if inv.path.starts_with("/internal/steps/") && !killed.swap(true, Ordering::SeqCst)
                {
                    Fault::AbortAfterResponse
                } else {
                    Fault::None
                }
            }
        };
        let target = configured_with_faults(suite_variables(), Arc::new(plan));
        let org = target.create_org("run-recovery");
        let agent = target.create_agent(&org);
        let workflow = target.create(&org, "/api/v1/workflows", &linear(&agent));
        let id = target.start_run(&org, &workflow, json!({"topic": "resilience"}));
        // The step invocation claimed the step, then died after answering.
        let claimed = target.await_step(&org, &id, "draft", "running");
        assert!(
            killed.load(Ordering::SeqCst),
            "the step invocation was aborted"
        );
        assert_eq!(claimed["status"], "running");
        // Its next host call traps, so it never calls anyone.
        assert!(
            fake_llm().received().is_empty(),
            "the dead instance called nobody"
        );
        let lease_ends = timestamp_ms(&step(&claimed, "draft")["started_at"])
            + i64::try_from(STEP_LEASE_MS).unwrap();
        // Every tick before the lease lapses leaves the step alone; one after hands it on.
        tick_until_redispatched(&target);
        let run = target.finished(&org, &id);
        assert_eq!(run["status"], "completed", "{run}");
        let draft = step(&run, "draft");
        assert_eq!(draft["attempts"], 2);
        assert!(
            timestamp_ms(&draft["finished_at"]) >= lease_ends,
            "handed on only once its lease had lapsed: {run}"
        );
        // The dead instance's attempt left no entry: the log starts at 2.
        let log = draft["attempt_log"].as_array().unwrap();
        assert_eq!(log.len(), 1, "{run}");
        assert_eq!(log[0]["attempt"], 2);
        assert_eq!(log[0]["status"], "succeeded", "{run}");
        assert_eq!(log[0]["retry_in_ms"], Value::Null);
        assert_eq!(log[0]["finished_at"], draft["finished_at"]);
        assert_eq!(
            fake_llm().received().len(),
            1,
            "the provider was called once"
        );
        assert_eq!(
            billed_records(&target, &org, &run),
            json!([["succeeded", run["cost"]["billed_micros"]]]),
            "and billed once"
        );
    }

    #[test]
    fn a_step_whose_dispatch_was_lost_is_dispatched_by_the_tick() {
        let _turn = fake_turn();
        // The first step invocation dies before it answers: the dispatch is lost
        // and the step stays queued, as when the dispatcher itself dies.
        let killed = Arc::new(AtomicBool::new(false));
        let plan = {
            let killed = killed.clone();
            move |inv: &Invocation| {
                if inv.path.starts_with("/internal/steps/") && !killed.swap(true, Ordering::SeqCst)
                {
                    Fault::AbortBeforeResponse
                } else {
                    Fault::None
                }
            }
        };
        let target = configured_with_faults(suite_variables(), Arc::new(plan));
        let org = target.create_org("run-undispatched");
        let agent = target.create_agent(&org);
        let workflow = target.create(&org, "/api/v1/workflows", &linear(&agent));
        let id = target.start_run(&org, &workflow, json!({"topic": "recovery"}));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !killed.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the engine never dispatched");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            step(&target.execution(&org, &id), "draft")["status"],
            "queued",
            "nobody claimed it"
        );
        // A queued step is the tick's once nobody dispatched it for a while.
        tick_until_redispatched(&target);
        let run = target.finished(&org, &id);
        assert_eq!(run["status"], "completed", "{run}");
        assert_eq!(step(&run, "draft")["attempts"], 1);
        assert_eq!(fake_llm().received().len(), 1);
    }

    #[test]
    fn runs_whose_step_invocations_die_at_any_point_are_finished_by_the_tick() {
        let _turn = fake_turn();
        // The k-th step invocation dies at its (2 + 3k)-th host call: before or
        // after claiming, during or after the provider call, between storing the
        // step and queueing what follows, or in the middle of the loop.
        const RUNS: u32 = 16;
        let invocations = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let plan = {
            let invocations = invocations.clone();
            move |inv: &Invocation| {
                if !inv.path.starts_with("/internal/steps/") {
                    return Fault::None;
                }
                let k = invocations.fetch_add(1, Ordering::SeqCst);
                if k < RUNS {
                    Fault::AbortAtHostCall(2 + 3 * k)
                } else {
                    Fault::None
                }
            }
        };
        let target = configured_with_faults(suite_variables(), Arc::new(plan));
        let org = target.create_org("run-die-anywhere");
        let agent = target.create_agent(&org);
        let workflow = target.create(&org, "/api/v1/workflows", &agent_then_loop(&agent));
        let ids: Vec<String> = (0..RUNS)
            .map(|i| target.start_run(&org, &workflow, json!({"topic": format!("t{i}")})))
            .collect();
        let _ticker = target.tick_every(Duration::from_millis(250));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut pending = ids.clone();
        while !pending.is_empty() {
            assert!(Instant::now() < deadline, "runs stuck: {pending:?}");
            std::thread::sleep(Duration::from_millis(100));
            pending.retain(|id| target.execution(&org, id)["status"] == "running");
        }
        assert!(
            invocations.load(Ordering::SeqCst) >= RUNS,
            "every fault was used"
        );
        for id in &ids {
            let run = target.execution(&org, id);
            assert_eq!(run["status"], "completed", "{run}");
            let length = step(&run, "draft")["output"]
                .as_str()
                .unwrap()
                .chars()
                .count();
            assert_eq!(
                run["output"],
                json!([
                    format!("1:{length}"),
                    format!("2:{length}"),
                    format!("3:{length}")
                ])
            );
        }
    }

    #[test]
    fn the_same_step_dispatched_twice_at_once_runs_once() {
        let _turn = fake_turn();
        // The engine's own dispatch is lost, so the step waits queued for ours.
        let lost = Arc::new(AtomicBool::new(false));
        let plan = {
            let lost = lost.clone();
            move |inv: &Invocation| {
                if inv.path.starts_with("/internal/steps/") && !lost.swap(true, Ordering::SeqCst) {
                    Fault::AbortBeforeResponse
                } else {
                    Fault::None
                }
            }
        };
        let target = configured_with_faults(suite_variables(), Arc::new(plan));
        let org = target.create_org("run-double-dispatch");
        let agent = target.create_agent(&org);
        let workflow = target.create(&org, "/api/v1/workflows", &linear(&agent));
        fake_llm().push(Reply::text("once").tokens(5, 1));
        let id = target.start_run(&org, &workflow, json!({"topic": "twins"}));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !lost.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the engine never dispatched");
            std::thread::sleep(Duration::from_millis(20));
        }
        let step_id = step(&target.execution(&org, &id), "draft")["id"]
            .as_str()
            .unwrap()
            .to_string();
        let token = dispatch_token(&step_id);
        let path = format!("/internal/steps/{step_id}");
        let replies: Vec<Value> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        target
                            .request("POST", &path, &[("x-spindle-dispatch", &token)], None)
                            .json()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let claimed = replies.iter().filter(|r| r["claimed"] == true).count();
        assert_eq!(claimed, 1, "{replies:?}");
        let run = target.finished(&org, &id);
        assert_eq!(run["status"], "completed", "{run}");
        assert_eq!(step(&run, "draft")["attempts"], 1);
        assert_eq!(
            fake_llm().received().len(),
            1,
            "the provider was called once"
        );
        assert_eq!(
            billed_records(&target, &org, &run),
            json!([["succeeded", run["cost"]["billed_micros"]]]),
            "and billed once"
        );
        let again = target
            .request("POST", &path, &[("x-spindle-dispatch", &token)], None)
            .json();
        assert_eq!(again["claimed"], false, "a finished step never runs again");
    }
}
