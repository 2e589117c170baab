//! Budgets over HTTP (`/api/v1/usage/budgets`): CRUD, validation, roles and
//! tenancy; block budgets refusing API calls (429) and workflow steps before
//! any provider call; 50 concurrent calls at a budget's edge never
//! overspending; alert budgets counting without blocking and each threshold
//! delivered once as a `budget.threshold` event.

use fake_llm::{ReceivedRequest, Reply};
use serde_json::{Value, json};
use spindle_suite::{Org, Target, fake_llm, fake_turn, shared};
use std::time::{Duration, Instant};

const BUDGETS: &str = "/api/v1/usage/budgets";

fn path(scope: &str, id: &str) -> String {
    format!("{BUDGETS}/{scope}/{id}")
}

fn put(target: &Target, token: &str, scope: &str, id: &str, body: Value) -> spindle_suite::Reply {
    target.call("PUT", &path(scope, id), Some(token), Some(&body))
}

/// Sets a budget as the org's owner; panics unless 200 or 201.
fn set(target: &Target, org: &Org, scope: &str, id: &str, body: Value) -> Value {
    let reply = put(target, &org.owner_key, scope, id, body);
    assert!(
        [200, 201].contains(&reply.status),
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

fn list(target: &Target, token: &str) -> Value {
    let reply = target.call("GET", BUDGETS, Some(token), None);
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

fn one(target: &Target, org: &Org, scope: &str, id: &str) -> Value {
    let reply = target.call("GET", &path(scope, id), Some(&org.owner_key), None);
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

fn problem_paths(reply: &spindle_suite::Reply) -> Vec<String> {
    reply.assert_error(422, "validation_failed");
    reply.json()["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_string())
        .collect()
}

fn execute(target: &Target, token: &str, agent: &str) -> spindle_suite::Reply {
    target.call(
        "POST",
        &format!("/api/v1/agents/{agent}/execute"),
        Some(token),
        Some(&json!({"task": "Count the tides"})),
    )
}

/// Runs the agent; panics unless the run completed. Returns the execution.
fn completed(target: &Target, token: &str, agent: &str) -> Value {
    let reply = execute(target, token, agent);
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let execution = reply.json();
    assert_eq!(execution["status"], "completed", "{execution}");
    execution
}

/// Chat requests the fake provider received (not event deliveries).
fn chat_requests() -> Vec<ReceivedRequest> {
    fake_llm()
        .received()
        .into_iter()
        .filter(|r| r.dialect.is_some())
        .collect()
}

/// An agent on the fake's OpenAI `gpt-4o-mini` answering at most `max_tokens`.
fn agent(target: &Target, org: &Org, max_tokens: u64) -> String {
    target.create(
        org,
        "/api/v1/agents",
        &json!({"name": "Counter", "model_config": {"provider": "openai", "model": "gpt-4o-mini", "max_tokens": max_tokens}}),
    )
}

#[test]
fn budgets_are_set_listed_replaced_and_deleted_with_validation_roles_and_tenancy() {
    let target = shared();
    let org = target.create_org("budgets-crud");
    let agent = target.create_agent(&org);
    let (key_id, _) = target.create_key(&org.owner_key, "member");
    let (_, member) = target.create_key(&org.owner_key, "member");
    let (_, viewer) = target.create_key(&org.owner_key, "viewer");

    let reply = put(
        target,
        &org.owner_key,
        "org",
        "current",
        json!({"period": "month", "limit": 5_000_000, "action": "block"}),
    );
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let whole = reply.json();
    assert_eq!(whole["scope"], "org");
    assert_eq!(
        whole["scope_id"],
        org.id.as_str(),
        "`current` is the caller's org"
    );
    assert_eq!(whole["period"], "month");
    assert_eq!(whole["limit_micros"], 5_000_000);
    assert_eq!(whole["limit"], "5.000000");
    assert_eq!(whole["action"], "block");
    assert_eq!(
        whole["thresholds"],
        json!([80, 100]),
        "the default thresholds"
    );
    assert_eq!(whole["spent_micros"], 0);
    assert_eq!(whole["reserved_micros"], 0);
    assert_eq!(whole["remaining_micros"], 5_000_000);
    assert_eq!(whole["thresholds_reached"], json!([]));
    let start = whole["period_start"].as_str().unwrap();
    assert!(start.ends_with("-01T00:00:00.000Z"), "{start}");
    let end = whole["period_end"].as_str().unwrap();
    assert!(end.ends_with("-01T00:00:00.000Z") && end > start, "{end}");

    let per_agent = set(
        target,
        &org,
        "agent",
        &agent,
        json!({"period": "day", "limit": 1_000, "action": "alert", "thresholds": [100, 50, 50]}),
    );
    assert_eq!(
        per_agent["thresholds"],
        json!([50, 100]),
        "sorted, once each"
    );
    let day_start = per_agent["period_start"].as_str().unwrap();
    assert!(day_start.ends_with("T00:00:00.000Z"), "{day_start}");
    set(
        target,
        &org,
        "api_key",
        &key_id,
        json!({"period": "day", "limit": 1, "action": "block", "thresholds": []}),
    );
    let listed = list(target, &viewer);
    assert_eq!(listed["total"], 3, "{listed}");
    let scopes: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["scope"].as_str().unwrap())
        .collect();
    assert_eq!(scopes, ["org", "agent", "api_key"], "oldest first");

    // A PUT on the same scope replaces the budget (200), by either id form.
    let replaced = put(
        target,
        &org.owner_key,
        "org",
        &org.id,
        json!({"period": "day", "limit": 7, "action": "alert", "thresholds": [90]}),
    );
    assert_eq!(replaced.status, 200);
    let replaced = replaced.json();
    assert_eq!(replaced["id"], whole["id"]);
    let read = one(target, &org, "org", "current");
    assert_eq!(read["limit_micros"], 7);
    assert_eq!(read["action"], "alert");
    assert_eq!(read["thresholds"], json!([90]));
    assert_eq!(read["period"], "day");

    // Invalid input: every problem named, nothing changed.
    let bad = put(
        target,
        &org.owner_key,
        "agent",
        &agent,
        json!({"period": "week", "limit": 0, "action": "stop", "thresholds": [0, 2000, "x"]}),
    );
    assert_eq!(
        problem_paths(&bad),
        [
            "period",
            "limit",
            "action",
            "thresholds[0]",
            "thresholds[1]",
            "thresholds[2]"
        ]
    );
    // Whole micro-dollars, 1 to 10^15.
    for limit in [
        json!(1.5),
        json!("100"),
        json!(-3),
        json!(0),
        json!(1_000_000_000_000_001_i64),
        Value::Null,
    ] {
        let body = json!({"period": "day", "limit": limit, "action": "block"});
        assert_eq!(
            problem_paths(&put(target, &org.owner_key, "agent", &agent, body)),
            ["limit"]
        );
    }
    // At most ten thresholds.
    let eleven: Vec<i64> = (1..=11).map(|i| i * 10).collect();
    let body = json!({"period": "day", "limit": 10, "action": "alert", "thresholds": eleven});
    assert_eq!(
        problem_paths(&put(target, &org.owner_key, "agent", &agent, body)),
        ["thresholds"]
    );
    let missing = put(target, &org.owner_key, "agent", &agent, json!({}));
    assert_eq!(problem_paths(&missing), ["period", "limit", "action"]);
    let body = json!({"period": "day", "limit": 10, "action": "block"});
    assert_eq!(
        problem_paths(&put(target, &org.owner_key, "team", "x", body.clone())),
        ["scope"]
    );
    let unknown = json!({"period": "day", "limit": 10, "action": "block", "currency": "EUR"});
    put(target, &org.owner_key, "agent", &agent, unknown).assert_error(400, "bad_request");
    target
        .request(
            "PUT",
            &path("agent", &agent),
            &[
                ("authorization", &format!("Bearer {}", org.owner_key)),
                ("content-type", "application/json"),
            ],
            Some(b"{not json"),
        )
        .assert_error(400, "bad_request");
    target
        .call("PUT", &path("agent", &agent), Some(&org.owner_key), None)
        .assert_error(400, "bad_request");
    let unchanged = one(target, &org, "agent", &agent);
    assert_eq!(unchanged["limit_micros"], 1_000);
    assert_eq!(unchanged["action"], "alert");
    assert_eq!(list(target, &org.owner_key)["total"], 3);

    // Roles: viewers and members read; only admins change budgets.
    assert_eq!(list(target, &member)["total"], 3);
    put(target, &viewer, "agent", &agent, body.clone()).assert_error(403, "forbidden");
    put(target, &member, "agent", &agent, body.clone()).assert_error(403, "forbidden");
    target
        .call("DELETE", &path("agent", &agent), Some(&member), None)
        .assert_error(403, "forbidden");

    // Another organisation's ids are 404 like unknown ones.
    let other = target.create_org("budgets-crud-other");
    for (scope, id) in [
        ("agent", agent.as_str()),
        ("org", org.id.as_str()),
        ("api_key", key_id.as_str()),
        ("workflow", "no-such-workflow"),
        ("agent", "no-such-agent"),
    ] {
        put(target, &other.owner_key, scope, id, body.clone()).assert_error(404, "not_found");
        target
            .call("GET", &path(scope, id), Some(&other.owner_key), None)
            .assert_error(404, "not_found");
        target
            .call("DELETE", &path(scope, id), Some(&other.owner_key), None)
            .assert_error(404, "not_found");
    }
    assert_eq!(list(target, &other.owner_key)["total"], 0);
    assert_eq!(one(target, &org, "agent", &agent)["limit_micros"], 1_000);

    let deleted = target.call("DELETE", &path("agent", &agent), Some(&org.owner_key), None);
    assert_eq!(deleted.status, 204);
    target
        .call("DELETE", &path("agent", &agent), Some(&org.owner_key), None)
        .assert_error(404, "not_found");
    target
        .call("GET", &path("agent", &agent), Some(&org.owner_key), None)
        .assert_error(404, "not_found");
    target
        .call("DELETE", &path("team", "x"), Some(&org.owner_key), None)
        .assert_error(404, "not_found");
    assert_eq!(list(target, &org.owner_key)["total"], 2);
}

#[test]
fn an_api_call_a_block_budget_cannot_cover_is_429_and_never_reaches_the_provider() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("budgets-api-refusal");
    let agent = agent(target, &org, 100);
    set(
        target,
        &org,
        "org",
        "current",
        json!({"period": "day", "limit": 1, "action": "block"}),
    );
    let refused = execute(target, &org.owner_key, &agent);
    refused.assert_error(429, "budget_exceeded");
    // No `Retry-After`: waiting does not help before the period ends or the
    // limit grows.
    assert_eq!(refused.header("retry-after"), None);
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains(&org.id), "names the budget: {message}");
    assert!(chat_requests().is_empty(), "no provider call was made");
    let budget = one(target, &org, "org", "current");
    assert_eq!(budget["spent_micros"], 0);
    assert_eq!(budget["reserved_micros"], 0);
    // The refused run is on record as failed, billed nothing.
    let executions = target
        .call(
            "GET",
            &format!("/api/v1/agents/{agent}/executions"),
            Some(&org.owner_key),
            None,
        )
        .json();
    let refused_run = &executions["data"][0];
    assert_eq!(refused_run["status"], "failed", "{executions}");
    assert_eq!(refused_run["error"]["code"], "budget_exceeded");
    assert_eq!(refused_run["usage"]["provider_calls"], 0);
    assert_eq!(refused_run["cost"]["billed_micros"], 0);

    // Room in the budget: the same call goes through and is counted.
    set(
        target,
        &org,
        "org",
        "current",
        json!({"period": "day", "limit": 10_000_000, "action": "block"}),
    );
    fake_llm().push(Reply::text("tide").tokens(1000, 500));
    let execution = completed(target, &org.owner_key, &agent);
    assert_eq!(chat_requests().len(), 1);
    // gpt-4o-mini: 1000 × $0.15/M + 500 × $0.60/M = 450 µ$; × 1.2 = 540.
    let billed = 540;
    assert_eq!(execution["cost"]["billed_micros"], billed, "{execution}");
    let budget = one(target, &org, "org", "current");
    assert_eq!(budget["spent_micros"], billed);
    assert_eq!(budget["reserved_micros"], 0);
    assert_eq!(budget["remaining_micros"], 10_000_000 - billed);
}

#[test]
fn a_workflow_step_a_budget_refuses_fails_the_run_at_once_without_a_provider_call() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("budgets-step-refusal");
    let agent = agent(target, &org, 100);
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Capped",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "draft", "type": "agent", "config": {"agent_id": agent, "prompt": "Write"},
                 "retry": {"max_attempts": 3, "backoff_ms": 10}},
                {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
            ],
            "edges": [{"source": "start", "target": "draft"}, {"source": "draft", "target": "done"}]
        }),
    );
    set(
        target,
        &org,
        "workflow",
        &workflow,
        json!({"period": "month", "limit": 1, "action": "block"}),
    );
    let id = target.start_run(&org, &workflow, json!({}));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["failed_node"], "draft");
    assert_eq!(run["error"]["code"], "budget_exceeded", "{run}");
    let step = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["node_id"] == "draft")
        .unwrap();
    assert_eq!(step["status"], "failed");
    assert_eq!(step["error"]["code"], "budget_exceeded");
    assert_eq!(
        step["attempts"], 1,
        "not retried: the refusal is not transient"
    );
    assert!(chat_requests().is_empty(), "no provider call was made");
    assert_eq!(one(target, &org, "workflow", &workflow)["spent_micros"], 0);
}

#[test]
fn fifty_concurrent_calls_at_a_budgets_edge_never_overspend() {
    const CALLS: usize = 50;
    const MAX_TOKENS: u64 = 1_000;
    const FIT: i64 = 20;
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("budgets-edge");
    let agent = agent(target, &org, MAX_TOKENS);
    // The fake's default reply counts the request's characters / 4 as input,
    // as the reservation's estimate does: learn it, then script replies that
    // use all of max_tokens, so each call's worst case is its real cost.
    let probe = completed(target, &org.owner_key, &agent);
    let input = probe["usage"]["input_tokens"].as_u64().unwrap();
    let reply = || Reply::text("tide").tokens(input, MAX_TOKENS);
    fake_llm().push(reply());
    // gpt-4o-mini at $0.15/M input and $0.60/M output: the base rounded half
    // up to the µ$, then × 1.2 rounded half up.
    let base = (input * 150_000 + MAX_TOKENS * 600_000 + 500_000) / 1_000_000;
    let cost = i64::try_from((base * 120 + 50) / 100).unwrap();
    assert_eq!(
        completed(target, &org.owner_key, &agent)["cost"]["billed_micros"],
        cost
    );
    assert!(cost > 1, "{cost}");

    let (key_id, key) = target.create_key(&org.owner_key, "member");
    let limit = FIT * cost + cost / 2;
    set(
        target,
        &org,
        "api_key",
        &key_id,
        json!({"period": "month", "limit": limit, "action": "block"}),
    );
    for _ in 0..CALLS {
        fake_llm().push(reply());
    }
    let outcomes: Vec<(u16, Value)> = std::thread::scope(|threads| {
        let handles: Vec<_> = (0..CALLS)
            .map(|_| {
                threads.spawn(|| {
                    let reply = execute(target, &key, &agent);
                    (reply.status, reply.json())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut billed = 0;
    let mut passed = 0;
    for (status, body) in &outcomes {
        match status {
            200 => {
                assert_eq!(body["status"], "completed", "{body}");
                billed += body["cost"]["billed_micros"].as_i64().unwrap();
                passed += 1;
            }
            429 => assert_eq!(body["error"]["code"], "budget_exceeded", "{body}"),
            other => panic!("{other}: {body}"),
        }
    }
    assert!(billed <= limit, "billed {billed} of a {limit} limit");
    assert_eq!(passed, FIT, "exactly floor(limit / cost) calls fit");
    assert_eq!(billed, FIT * cost);
    assert_eq!(
        fake_llm().remaining(),
        CALLS - FIT as usize,
        "refused calls never reached the provider"
    );
    let budget = one(target, &org, "api_key", &key_id);
    assert_eq!(budget["spent_micros"], billed);
    assert_eq!(budget["reserved_micros"], 0);
    assert_eq!(budget["remaining_micros"], limit - billed);
}

/// Ticks until the subscriber at `path` has received `count` deliveries.
fn deliveries(target: &Target, path: &str, count: usize) -> Vec<ReceivedRequest> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tick = target.tick();
        assert_eq!(tick.status, 200, "{}", String::from_utf8_lossy(&tick.body));
        let received: Vec<ReceivedRequest> = fake_llm()
            .received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect();
        if received.len() >= count {
            return received;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} deliveries to {path}",
            received.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_alert_budget_never_blocks_and_each_threshold_is_delivered_once() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("budgets-alert");
    let agent = agent(target, &org, 500);
    fake_llm().push(Reply::text("tide").tokens(100, 100));
    // gpt-4o-mini: 100 × $0.15/M + 100 × $0.60/M = 75 µ$; × 1.2 = 90.
    let cost = 90;
    assert_eq!(
        completed(target, &org.owner_key, &agent)["cost"]["billed_micros"],
        cost
    );
    let hook = format!("/events/{}/budgets", org.id);
    let subscription = target.call(
        "POST",
        "/api/v1/event-subscriptions",
        Some(&org.owner_key),
        Some(&json!({"url": format!("{}{hook}", fake_llm().url()), "event_types": ["budget.threshold"]})),
    );
    assert_eq!(
        subscription.status,
        201,
        "{}",
        String::from_utf8_lossy(&subscription.body)
    );

    // Created mid-period, the budget counts what the agent was billed so far.
    let budget = set(
        target,
        &org,
        "agent",
        &agent,
        json!({"period": "month", "limit": 4 * cost, "action": "alert", "thresholds": [50, 100]}),
    );
    assert_eq!(budget["spent_micros"], cost);
    for _ in 0..5 {
        fake_llm().push(Reply::text("tide").tokens(100, 100));
    }
    // Past its limit and on: an alert budget never blocks.
    for _ in 0..5 {
        completed(target, &org.owner_key, &agent);
    }
    let after = one(target, &org, "agent", &agent);
    assert_eq!(after["spent_micros"], 6 * cost);
    assert_eq!(after["remaining_micros"], 0);
    assert_eq!(after["thresholds_reached"], json!([50, 100]));

    let received = deliveries(target, &hook, 2);
    target.tick();
    target.tick();
    let received_again: Vec<ReceivedRequest> = fake_llm()
        .received()
        .into_iter()
        .filter(|r| r.path == hook)
        .collect();
    assert_eq!(received_again.len(), 2, "each threshold once");
    let mut thresholds: Vec<i64> = received
        .iter()
        .map(|delivery| {
            let body = &delivery.body;
            assert_eq!(body["type"], "budget.threshold", "{body}");
            assert_eq!(body["data"]["budget_id"], budget["id"]);
            assert_eq!(body["data"]["scope"], "agent");
            assert_eq!(body["data"]["scope_id"], agent.as_str());
            assert_eq!(body["data"]["action"], "alert");
            assert_eq!(body["data"]["limit_micros"], 4 * cost);
            body["data"]["threshold"].as_i64().unwrap()
        })
        .collect();
    thresholds.sort_unstable();
    assert_eq!(thresholds, [50, 100]);
}
