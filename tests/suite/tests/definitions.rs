//! What a user writes first works: loops without a `mode`, waits without a
//! timeout, durations in milliseconds or ISO 8601, unknown config fields
//! named with the fields accepted, and definitions returned as written.

use serde_json::{Value, json};
use spindle_suite::{Org, Reply, Target, shared, step};
use std::time::Duration;

/// trigger → `node` → output of its output.
fn around(node: Value) -> Value {
    let id = node["id"].as_str().unwrap().to_string();
    json!({
        "name": "First try",
        "nodes": [
            {"id": "start", "type": "trigger", "config": {}},
            node,
            {"id": "done", "type": "output", "config": {"value": format!("{{{{ steps.{id}.output }}}}")}}
        ],
        "edges": [
            {"source": "start", "target": id},
            {"source": id, "target": "done"}
        ]
    })
}

fn post(target: &Target, org: &Org, body: &Value) -> Reply {
    target.call(
        "POST",
        "/api/v1/workflows",
        Some(&org.owner_key),
        Some(body),
    )
}

fn count(target: &Target, org: &Org) -> u64 {
    target
        .call("GET", "/api/v1/workflows", Some(&org.owner_key), None)
        .json()["total"]
        .as_u64()
        .unwrap()
}

/// The `(path, problem)` pairs of an error's details.
fn details(reply: &Reply) -> Vec<(String, String)> {
    reply.json()["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let text = |k: &str| d[k].as_str().unwrap().to_string();
            (text("path"), text("problem"))
        })
        .collect()
}

/// Asserts `reply` is a 422 whose only problem is at `path` and mentions each of `words`.
fn refused_at(reply: &Reply, path: &str, words: &[&str]) {
    reply.assert_error(422, "validation_failed");
    let found = details(reply);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, path, "{found:?}");
    for word in words {
        assert!(found[0].1.contains(word), "{word:?} in {:?}", found[0].1);
    }
}

fn run_to_end(target: &Target, org: &Org, definition: &Value, inputs: Value) -> Value {
    let workflow = target.create(org, "/api/v1/workflows", definition);
    let id = target.start_run(org, &workflow, inputs);
    let _ticks = target.tick_every(Duration::from_millis(100));
    target.finished_within(org, &id, Duration::from_secs(60))
}

#[test]
fn a_loop_with_items_is_a_for_each_and_one_with_until_a_repeat_without_a_mode() {
    let target = shared();
    let org = target.create_org("def-loop-mode");
    let each = around(json!({"id": "each", "type": "loop", "config": {
        "items": "trigger.names",
        "body": {"nodes": [{"id": "greet", "type": "transform", "config": {"template": "Hi {{ item }}"}}]}
    }}));
    let run = run_to_end(target, &org, &each, json!({"names": ["Ada", "Bo"]}));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], json!(["Hi Ada", "Hi Bo"]));

    let again = around(json!({"id": "again", "type": "loop", "config": {
        "until": "output >= 2",
        "body": {"nodes": [{"id": "count", "type": "transform", "config": {"template": "{{ index }}"}}]}
    }}));
    let run = run_to_end(target, &org, &again, json!({}));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], json!([0, 1, 2]));

    let mut both = each.clone();
    both["nodes"][1]["config"]["until"] = json!("true");
    refused_at(
        &post(target, &org, &both),
        "nodes[1].config",
        &["items", "until", "mode"],
    );
    let mut neither = each.clone();
    neither["nodes"][1]["config"]
        .as_object_mut()
        .unwrap()
        .remove("items");
    refused_at(
        &post(target, &org, &neither),
        "nodes[1].config.items",
        &["until"],
    );
    assert_eq!(count(target, &org), 2, "the refused ones are not stored");
}

fn approval(wait_config: Value) -> Value {
    json!({
        "name": "Approval",
        "nodes": [
            {"id": "start", "type": "trigger", "config": {}},
            {"id": "approval", "type": "wait", "config": wait_config},
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

#[test]
fn a_wait_without_a_timeout_waits_for_its_signal() {
    let target = shared();
    let org = target.create_org("def-wait-open");
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &approval(json!({"signal": "approved"})),
    );
    let id = target.start_run(&org, &workflow, json!({}));
    assert_eq!(target.tick().status, 200);
    let parked = target.execution(&org, &id);
    assert_eq!(parked["status"], "running", "{parked}");
    assert_eq!(step(&parked, "approval")["status"], "waiting");
    let reply = target.call(
        "POST",
        &format!("/api/v1/executions/{id}/signals/approved"),
        Some(&org.owner_key),
        Some(&json!({"payload": {"by": "Grace"}})),
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let run = target.finished(&org, &id);
    assert_eq!(run["output"], "approved by Grace", "{run}");
}

#[test]
fn a_wait_timeout_may_be_an_iso_duration_of_at_most_seven_days() {
    let target = shared();
    let org = target.create_org("def-wait-iso");
    let run = run_to_end(
        target,
        &org,
        &approval(json!({"signal": "approved", "timeout": "PT0.2S"})),
        json!({}),
    );
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], "no answer");
    assert_eq!(step(&run, "approval")["outcome"], "timeout");

    refused_at(
        &post(
            target,
            &org,
            &approval(json!({"signal": "approved", "timeout": "P8D"})),
        ),
        "nodes[1].config.timeout",
        &["7 days"],
    );
    refused_at(
        &post(
            target,
            &org,
            &approval(json!({"signal": "approved", "timeout_ms": 700_000_000})),
        ),
        "nodes[1].config.timeout_ms",
        &["7 days"],
    );
    refused_at(
        &post(
            target,
            &org,
            &approval(json!({"signal": "approved", "timeout": "PT1M", "timeout_ms": 60_000})),
        ),
        "nodes[1].config",
        &["not both"],
    );
    assert_eq!(count(target, &org), 1);
}

#[test]
fn a_delay_takes_an_iso_duration_or_milliseconds_but_not_both() {
    let target = shared();
    let org = target.create_org("def-delay-iso");
    let delay = |config: Value| around(json!({"id": "pause", "type": "delay", "config": config}));
    let run = run_to_end(
        target,
        &org,
        &delay(json!({"duration": "PT0.2S"})),
        json!({}),
    );
    assert_eq!(run["status"], "completed", "{run}");

    // An hour-long delay really parks its step.
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &delay(json!({"duration": "PT1H"})),
    );
    let id = target.start_run(&org, &workflow, json!({}));
    assert_eq!(target.tick().status, 200);
    let parked = target.execution(&org, &id);
    assert_eq!(parked["status"], "running", "{parked}");
    assert_eq!(step(&parked, "pause")["status"], "queued");

    refused_at(
        &post(
            target,
            &org,
            &delay(json!({"duration": "PT1S", "duration_ms": 1000})),
        ),
        "nodes[1].config",
        &["not both"],
    );
    refused_at(
        &post(target, &org, &delay(json!({"duration": "30 seconds"}))),
        "nodes[1].config.duration",
        &["ISO 8601", "PT30S"],
    );
    assert_eq!(count(target, &org), 2);
}

#[test]
fn an_unknown_config_field_is_refused_naming_the_fields_accepted() {
    let target = shared();
    let org = target.create_org("def-unknown-field");
    let agent = target.create_agent(&org);
    let definition = around(json!({"id": "ask", "type": "agent", "config": {
        "agent_id": agent, "prompt": "Hello", "temperature": 0.2
    }}));
    refused_at(
        &post(target, &org, &definition),
        "nodes[1].config.temperature",
        &[
            "unknown field",
            "agent_id, prompt, output_schema, max_tokens",
        ],
    );
    let body = around(json!({"id": "each", "type": "loop", "config": {
        "items": "[1]",
        "body": {"nodes": [{"id": "pause", "type": "delay", "config": {"seconds": 3}}]}
    }}));
    let reply = post(target, &org, &body);
    reply.assert_error(422, "validation_failed");
    let found = details(&reply);
    assert!(
        found.iter().any(
            |(path, problem)| path == "nodes[1].config.body.nodes[0].config.seconds"
                && problem.contains("duration_ms, duration, until")
        ),
        "{found:?}"
    );
    assert_eq!(count(target, &org), 0);
}

#[test]
fn definitions_come_back_as_written_and_import_again() {
    let target = shared();
    let org = target.create_org("def-as-written");
    let written = json!({
        "name": "As written",
        "description": "",
        "is_active": true,
        "variables": {},
        "nodes": [
            {"id": "start", "type": "trigger", "config": {}},
            {"id": "each", "type": "loop", "config": {"items": "[1, 2]", "body": {
                "nodes": [{"id": "tag", "type": "transform", "config": {"template": "{{ item }}"}}], "edges": []}}},
            {"id": "pause", "type": "delay", "config": {"duration": "PT1S"}},
            {"id": "approval", "type": "wait", "config": {"signal": "approved"}},
            {"id": "done", "type": "output", "config": {"value": "{{ steps.each.output }}"}}
        ],
        "edges": [
            {"source": "start", "target": "each"},
            {"source": "each", "target": "pause"},
            {"source": "pause", "target": "approval"},
            {"source": "approval", "target": "done"}
        ]
    });
    let id = target.create(&org, "/api/v1/workflows", &written);
    let path = format!("/api/v1/workflows/{id}");
    let exported = target.call("GET", &path, Some(&org.owner_key), None).json();
    for key in ["name", "nodes", "edges", "variables"] {
        assert_eq!(exported[key], written[key], "{key}");
    }
    let copy = target.create(&org, "/api/v1/workflows", &exported);
    let imported = target
        .call(
            "GET",
            &format!("/api/v1/workflows/{copy}"),
            Some(&org.owner_key),
            None,
        )
        .json();
    assert_eq!(imported["nodes"], written["nodes"]);
}
