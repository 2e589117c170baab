//! A claimed step's lease: renewed while the step works, so a live step is
//! never run twice however long its provider takes, and short by default, so
//! a step whose instance died is resumed within 30 s.

use fake_llm::Reply;
use serde_json::{Value, json};
use spindle_suite::{
    Org, Target, await_provider_call, configured, fake_llm, fake_turn, step, suite_variables,
};
use std::time::Duration;

/// How soon, with default settings, a run whose instance died mid-step is
/// resumed and finished (README, "Durability").
const DEAD_INSTANCE_NOTICED_WITHIN: Duration = Duration::from_secs(30);

fn one_agent(agent: &str) -> Value {
    json!({
        "name": "One agent",
        "nodes": [
            {"id": "start", "type": "trigger", "config": {}},
            {"id": "draft", "type": "agent", "config": {"agent_id": agent, "prompt": "Write"}},
            {"id": "done", "type": "output", "config": {"value": "{{ steps.draft.output }}"}}
        ],
        "edges": [
            {"source": "start", "target": "draft"},
            {"source": "draft", "target": "done"}
        ]
    })
}

/// `[status, billed µ$]` of each usage record of `org`: one per provider call.
fn billed_calls(target: &Target, org: &Org) -> Value {
    target
        .usage_records(org, "")
        .iter()
        .map(|r| json!([r["status"], r["billed_cost_micros"]]))
        .collect()
}

/// What the fake's 8 input and 4 output tokens bill at gpt-4o-mini's price:
/// 8 × $0.15/M + 4 × $0.60/M = 1.2 + 2.4 = 3.6 → 4 µ$; × 1.2 = 4.8 → 5.
const BILLED_MICROS: i64 = 5;

#[test]
fn a_step_whose_provider_takes_several_leases_is_called_once_and_billed_once() {
    let _turn = fake_turn();
    let mut variables = suite_variables();
    variables.insert("step_lease_ms".into(), "1000".into());
    let target = configured(variables);
    let org = target.create_org("lease-renewed");
    let agent = target.create_agent(&org);
    let workflow = target.create(&org, "/api/v1/workflows", &one_agent(&agent));
    // Four leases long: without renewal the tick would hand the step to a
    // second invocation, which would get the second answer.
    fake_llm().push(
        Reply::text("worth the wait")
            .tokens(8, 4)
            .after(Duration::from_secs(4)),
    );
    fake_llm().push(Reply::text("a second call"));
    let _ticker = target.tick_every(Duration::from_millis(100));
    let id = target.start_run(&org, &workflow, json!({}));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], "worth the wait", "{run}");
    assert_eq!(step(&run, "draft")["attempts"], 1, "{run}");
    assert_eq!(
        fake_llm().received().len(),
        1,
        "the provider was called once"
    );
    assert_eq!(run["cost"]["billed_micros"], BILLED_MICROS, "{run}");
    assert_eq!(
        billed_calls(&target, &org),
        json!([["succeeded", BILLED_MICROS]]),
        "billed once"
    );
}

#[test]
fn an_http_node_whose_server_takes_several_leases_sends_its_request_once() {
    let _turn = fake_turn();
    let mut variables = suite_variables();
    variables.insert("step_lease_ms".into(), "1000".into());
    let target = configured(variables);
    let org = target.create_org("lease-renewed-http");
    // The fake provider stands in for any slow HTTP service.
    let url = format!("{}/v1/chat/completions", fake_llm().url());
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Slow HTTP",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "call", "type": "http", "config": {"method": "POST", "url": url,
                    "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}},
                {"id": "done", "type": "output", "config": {"value": "{{ steps.call.output.body.choices[0].message.content }}"}}
            ],
            "edges": [{"source": "start", "target": "call"}, {"source": "call", "target": "done"}]
        }),
    );
    fake_llm().push(Reply::text("slow service").after(Duration::from_secs(4)));
    fake_llm().push(Reply::text("a second request"));
    let _ticker = target.tick_every(Duration::from_millis(100));
    let run = target.finished(&org, &target.start_run(&org, &workflow, json!({})));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], "slow service", "{run}");
    assert_eq!(step(&run, "call")["attempts"], 1, "{run}");
    assert_eq!(fake_llm().received().len(), 1, "the server got one request");
}

/// A retry the step's own invocation sleeps for (due within 5 s) outlasts
/// three leases, with the tick coming every 100 ms: the retry still runs
/// once, as attempt 2, and the server gets two requests.
#[test]
fn a_retry_slept_in_place_over_several_leases_runs_once() {
    let _turn = fake_turn();
    let mut variables = suite_variables();
    variables.insert("step_lease_ms".into(), "1000".into());
    let target = configured(variables);
    let org = target.create_org("lease-retry-sleep");
    let url = format!("{}/v1/chat/completions", fake_llm().url());
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Retried after 3 s",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "call", "type": "http", "retry": {"max_attempts": 3, "backoff_ms": 3000},
                    "config": {"method": "POST", "url": url, "body": {"model": "m", "messages": []}}}
            ],
            "edges": [{"source": "start", "target": "call"}]
        }),
    );
    fake_llm().push(Reply::server_error());
    fake_llm().push(Reply::text("second"));
    fake_llm().push(Reply::text("a third request"));
    let _ticker = target.tick_every(Duration::from_millis(100));
    let run = target.finished(&org, &target.start_run(&org, &workflow, json!({})));
    assert_eq!(run["status"], "completed", "{run}");
    let call = step(&run, "call");
    assert_eq!(call["attempts"], 2, "{run}");
    let attempts: Vec<(i64, &str)> = call["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt"].as_i64().unwrap(),
                a["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(attempts, [(1, "failed"), (2, "succeeded")], "{run}");
    assert_eq!(fake_llm().received().len(), 2, "two requests, not three");
}

#[test]
fn with_default_settings_a_run_whose_host_dies_mid_step_is_finished_within_30_seconds() {
    let _turn = fake_turn();
    // The defaults: the app's own tick and the default step lease.
    let mut variables = suite_variables();
    variables.remove("step_lease_ms");
    variables.remove("self_tick");
    let target = configured(variables);
    let org = target.create_org("lease-default");
    let agent = target.create_agent(&org);
    let workflow = target.create(&org, "/api/v1/workflows", &one_agent(&agent));
    fake_llm().push(Reply::hang());
    fake_llm().push(Reply::text("written after the restart").tokens(8, 4));
    let id = target.start_run(&org, &workflow, json!({}));
    await_provider_call(Duration::from_secs(10));
    target.kill_and_restart();
    let run = target.finished_within(&org, &id, DEAD_INSTANCE_NOTICED_WITHIN);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], "written after the restart", "{run}");
    assert_eq!(step(&run, "draft")["attempts"], 2, "{run}");
    assert_eq!(fake_llm().received().len(), 2);
    // The call cut by the restart left no record: the one that answered is billed.
    assert_eq!(run["cost"]["billed_micros"], BILLED_MICROS, "{run}");
    assert_eq!(
        billed_calls(&target, &org),
        json!([["succeeded", BILLED_MICROS]]),
        "billed once"
    );
}
