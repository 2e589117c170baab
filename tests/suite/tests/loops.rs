//! Loop nodes over HTTP: for-each and repeat-until, item and index in the
//! body's templates, conditions inside a body, nested loops, agent steps
//! per item, long loops, limits, and retry of a loop whose body failed.

use fake_llm::Reply;
use serde_json::{Value, json};
use spindle_suite::{Org, Target, fake_llm, fake_turn, shared};
use std::time::Duration;

/// trigger → loop (body) → output of the loop's collected outputs.
fn looping(config: Value) -> Value {
    json!({
        "name": "Loop",
        "nodes": [
            {"id": "start", "type": "trigger"},
            {"id": "each", "type": "loop", "config": config},
            {"id": "done", "type": "output", "config": {"value": "{{ steps.each.output }}"}}
        ],
        "edges": [
            {"source": "start", "target": "each"},
            {"source": "each", "target": "done"}
        ]
    })
}

fn run_to_end(target: &Target, org: &Org, definition: &Value, inputs: Value) -> Value {
    let workflow = target.create(org, "/api/v1/workflows", definition);
    let id = target.start_run(org, &workflow, inputs);
    target.finished_within(org, &id, Duration::from_secs(60))
}

#[test]
fn a_for_each_loop_runs_its_body_per_item_and_collects_outputs_in_order() {
    let target = shared();
    let org = target.create_org("loop-each");
    let definition = looping(json!({
        "mode": "for_each",
        "items": "trigger.names",
        "body": {"nodes": [
            {"id": "greet", "type": "transform", "config": {"template": {"n": "{{ index }}", "hello": "Hi {{ item }} ({{ trigger.greeting }})"}}}
        ], "edges": []}
    }));
    let run = run_to_end(
        target,
        &org,
        &definition,
        json!({"names": ["Ada", "Bo", "Cy"], "greeting": "welcome"}),
    );
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(
        run["output"],
        json!([
            {"n": 0, "hello": "Hi Ada (welcome)"},
            {"n": 1, "hello": "Hi Bo (welcome)"},
            {"n": 2, "hello": "Hi Cy (welcome)"}
        ])
    );
    let steps = run["steps"].as_array().unwrap();
    // Steps are listed by creation time, then id (a UUID v7: its bits below the
    // millisecond are random), and a fast body's iterations start within one
    // millisecond of each other, so two of them may be listed either way (real
    // Spin listed each#2 before each#1). The order the test's name promises is
    // the collected output's, above.
    let mut body: Vec<&str> = steps
        .iter()
        .filter(|s| s["node_id"] == "greet")
        .map(|s| s["iteration"].as_str().unwrap())
        .collect();
    body.sort_unstable();
    assert_eq!(body, ["each#0", "each#1", "each#2"]);
    let each = steps.iter().find(|s| s["node_id"] == "each").unwrap();
    assert_eq!(each["status"], "completed");
    assert_eq!(each["iteration"], Value::Null);
}

#[test]
fn a_condition_inside_a_loop_chooses_per_item_and_skips_the_other_branch() {
    let target = shared();
    let org = target.create_org("loop-condition");
    let definition = looping(json!({
        "mode": "for_each",
        "items": "trigger.amounts",
        "body": {"nodes": [
            {"id": "big", "type": "condition", "config": {"expression": "item > 100"}},
            {"id": "review", "type": "transform", "config": {"template": "review {{ item }}"}},
            {"id": "approve", "type": "transform", "config": {"template": "approve {{ item }}"}},
            {"id": "decided", "type": "output", "config": {"value": "{{ previous_output }}"}}
        ], "edges": [
            {"source": "big", "target": "review", "source_handle": "true"},
            {"source": "big", "target": "approve", "source_handle": "false"},
            {"source": "review", "target": "decided"},
            {"source": "approve", "target": "decided"}
        ]}
    }));
    let run = run_to_end(target, &org, &definition, json!({"amounts": [50, 500, 7]}));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(
        run["output"],
        json!(["approve 50", "review 500", "approve 7"])
    );
    let skipped: Vec<&str> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "skipped")
        .map(|s| s["iteration"].as_str().unwrap())
        .collect();
    assert_eq!(skipped.len(), 3, "one branch skipped per iteration");
}

#[test]
fn a_loop_of_a_thousand_items_completes_with_every_output() {
    let target = shared();
    let org = target.create_org("loop-thousand");
    let items: Vec<u32> = (0..1000).collect();
    let definition = looping(json!({
        "mode": "for_each",
        "items": "trigger.items",
        "max_iterations": 1000,
        "body": {"nodes": [
            {"id": "square", "type": "transform", "config": {"template": "{{ item * item }}"}}
        ], "edges": []}
    }));
    let run = run_to_end(target, &org, &definition, json!({"items": items}));
    assert_eq!(run["status"], "completed", "{}", run["error"]);
    let squares: Vec<u64> = (0..1000u64).map(|i| i * i).collect();
    assert_eq!(run["output"], json!(squares));
}

#[test]
fn repeat_until_stops_when_its_condition_holds_and_sees_the_previous_output() {
    let target = shared();
    let org = target.create_org("loop-until");
    let definition = json!({
        "name": "Doubling",
        "nodes": [
            {"id": "start", "type": "trigger"},
            {"id": "seed", "type": "transform", "config": {"template": "{{ trigger.start }}"}},
            {"id": "grow", "type": "loop", "config": {
                "mode": "repeat_until",
                "until": "output >= 20",
                "body": {"nodes": [
                    {"id": "double", "type": "transform", "config": {"template": "{{ previous_output * 2 }}"}}
                ], "edges": []}
            }},
            {"id": "done", "type": "output", "config": {"value": "{{ steps.grow.output }}"}}
        ],
        "edges": [
            {"source": "start", "target": "seed"},
            {"source": "seed", "target": "grow"},
            {"source": "grow", "target": "done"}
        ]
    });
    let run = run_to_end(target, &org, &definition, json!({"start": 3}));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], json!([6, 12, 24]));
}

#[test]
fn repeat_until_that_never_holds_fails_at_max_iterations() {
    let target = shared();
    let org = target.create_org("loop-limit");
    let definition = looping(json!({
        "mode": "repeat_until",
        "until": "false",
        "max_iterations": 4,
        "body": {"nodes": [{"id": "tick", "type": "transform", "config": {"template": "{{ index }}"}}], "edges": []}
    }));
    let run = run_to_end(target, &org, &definition, json!({}));
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["failed_node"], "each");
    assert_eq!(run["error"]["code"], "loop_limit_reached");
    let ran = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["node_id"] == "tick")
        .count();
    assert_eq!(ran, 4);
}

#[test]
fn repeat_until_without_max_iterations_stops_at_a_hundred() {
    let target = shared();
    let org = target.create_org("loop-default-limit");
    let definition = looping(json!({
        "mode": "repeat_until",
        "until": "false",
        "body": {"nodes": [{"id": "tick", "type": "transform", "config": {"template": "{{ index }}"}}], "edges": []}
    }));
    let run = run_to_end(target, &org, &definition, json!({}));
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "loop_limit_reached");
    let mut ran: Vec<i64> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["node_id"] == "tick")
        .map(|s| s["output"].as_i64().unwrap())
        .collect();
    ran.sort_unstable();
    assert_eq!(ran, (0..100).collect::<Vec<i64>>());
}

#[test]
fn a_loop_failure_follows_the_loops_on_error() {
    let target = shared();
    let org = target.create_org("loop-on-error");
    let mut definition = looping(json!({
        "mode": "for_each",
        "items": "trigger.items",
        "body": {"nodes": [{"id": "b", "type": "transform", "config": {"template": "{{ item }}"}}], "edges": []}
    }));
    definition["nodes"][1]["on_error"] = json!("continue");
    let run = run_to_end(target, &org, &definition, json!({"items": "not a list"}));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], Value::Null);
    let each = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["node_id"] == "each")
        .unwrap();
    assert_eq!(each["status"], "failed", "{run}");
    assert_eq!(each["error_handled"], true);
    assert_eq!(each["error"]["code"], "loop_items_not_a_list");
    assert_eq!(run["failed_steps"][0]["node_id"], "each", "{run}");
    assert_eq!(run["failed_steps"][0]["handled"], true);
}

#[test]
fn items_that_are_not_a_list_or_too_many_fail_the_loop_before_any_iteration() {
    let target = shared();
    let org = target.create_org("loop-items");
    let body = json!({"nodes": [{"id": "b", "type": "transform", "config": {"template": "{{ item }}"}}], "edges": []});
    let not_a_list = looping(json!({"mode": "for_each", "items": "trigger.items", "body": body}));
    let run = run_to_end(target, &org, &not_a_list, json!({"items": "abc"}));
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "loop_items_not_a_list");
    let too_many = looping(
        json!({"mode": "for_each", "items": "trigger.items", "max_iterations": 2, "body": body}),
    );
    let run = run_to_end(target, &org, &too_many, json!({"items": [1, 2, 3]}));
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "loop_limit_reached");
    assert!(
        !run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["node_id"] == "b")
    );
}

#[test]
fn an_empty_list_completes_the_loop_with_no_outputs() {
    let target = shared();
    let org = target.create_org("loop-empty");
    let definition = looping(json!({
        "mode": "for_each", "items": "[]",
        "body": {"nodes": [{"id": "b", "type": "transform", "config": {"template": "x"}}], "edges": []}
    }));
    let run = run_to_end(target, &org, &definition, json!({}));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], json!([]));
}

#[test]
fn nested_loops_see_their_own_and_the_outer_item() {
    let target = shared();
    let org = target.create_org("loop-nested");
    let definition = looping(json!({
        "mode": "for_each",
        "items": "trigger.rows",
        "body": {"nodes": [
            {"id": "cells", "type": "loop", "config": {
                "mode": "for_each",
                "items": "trigger.columns",
                "body": {"nodes": [
                    {"id": "cell", "type": "transform", "config": {"template": "{{ loops.each.item }}{{ item }} {{ loops.each.index }}.{{ index }} {{ loops.cells.index }}"}}
                ], "edges": []}
            }}
        ], "edges": []}
    }));
    let run = run_to_end(
        target,
        &org,
        &definition,
        json!({"rows": [1, 2], "columns": ["a", "b", "c"]}),
    );
    assert_eq!(run["status"], "completed", "{run}");
    // `item`/`index` are the innermost loop's; `loops.<id>` names either loop.
    assert_eq!(
        run["output"],
        json!([
            ["1a 0.0 0", "1b 0.1 1", "1c 0.2 2"],
            ["2a 1.0 0", "2b 1.1 1", "2c 1.2 2"]
        ])
    );
    // Each iteration is a scope named by the loops around it.
    let steps = run["steps"].as_array().unwrap();
    let mut cells: Vec<&str> = steps
        .iter()
        .filter(|s| s["node_id"] == "cell")
        .map(|s| s["iteration"].as_str().unwrap())
        .collect();
    cells.sort_unstable();
    assert_eq!(
        cells,
        [
            "each#0/cells#0",
            "each#0/cells#1",
            "each#0/cells#2",
            "each#1/cells#0",
            "each#1/cells#1",
            "each#1/cells#2"
        ]
    );
    // One inner loop step per outer iteration, each at its last iteration.
    let mut inner: Vec<(&str, i64)> = steps
        .iter()
        .filter(|s| s["node_id"] == "cells")
        .map(|s| {
            (
                s["iteration"].as_str().unwrap(),
                s["loop_index"].as_i64().unwrap(),
            )
        })
        .collect();
    inner.sort_unstable();
    assert_eq!(inner, [("each#0", 2), ("each#1", 2)], "{run}");
    let outer = steps.iter().find(|s| s["node_id"] == "each").unwrap();
    assert_eq!(outer["iteration"], Value::Null);
    assert_eq!(outer["loop_index"], 1, "{run}");
}

fn agent_loop(agent: &str) -> Value {
    looping(json!({
        "mode": "for_each",
        "items": "trigger.topics",
        "body": {"nodes": [
            {"id": "write", "type": "agent", "config": {"agent_id": agent, "prompt": "Item {{ index }}: {{ item }}"}}
        ], "edges": []}
    }))
}

fn prompts() -> Vec<String> {
    fake_llm()
        .received()
        .iter()
        .map(|r| {
            r.body["messages"][1]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn agent_steps_in_a_loop_run_once_per_item_and_are_billed_per_call() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("loop-agents");
    let agent = target.create_agent(&org);
    for (text, tokens) in [("one", 10), ("two", 20), ("three", 40)] {
        fake_llm().push(Reply::text(text).tokens(tokens, 1));
    }
    let run = run_to_end(
        target,
        &org,
        &agent_loop(&agent),
        json!({"topics": ["tides", "moons", "orbits"]}),
    );
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], json!(["one", "two", "three"]));
    assert_eq!(
        prompts(),
        ["Item 0: tides", "Item 1: moons", "Item 2: orbits"]
    );
    assert_eq!(run["usage"]["input_tokens"], 70);
    // Each call priced on its own at $0.15/M input and $0.60/M output, × 1.2:
    //   10 × 0.15 + 0.60 = 2.1 → 2 µ$, billed 2.4 → 2;
    //   20 × 0.15 + 0.60 = 3.6 → 4 µ$, billed 4.8 → 5;
    //   40 × 0.15 + 0.60 = 6.6 → 7 µ$, billed 8.4 → 8.
    // (Priced as one call of 70 and 3 tokens it would be 12.3 → 12 µ$, billed 14.)
    let iterations: Vec<Value> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["node_id"] == "write")
        .map(|s| json!([s["usage"]["input_tokens"], s["cost"]]))
        .collect();
    assert_eq!(
        iterations,
        [
            json!([10, {"base_micros": 2, "billed_micros": 2}]),
            json!([20, {"base_micros": 4, "billed_micros": 5}]),
            json!([40, {"base_micros": 7, "billed_micros": 8}]),
        ],
        "{run}"
    );
    assert_eq!(
        run["cost"],
        json!({"base_micros": 2 + 4 + 7, "billed_micros": 2 + 5 + 8})
    );
    // One usage record per call, each with its own step and cost.
    let records = target.usage_records(
        &org,
        &format!("execution_id={}", run["id"].as_str().unwrap()),
    );
    let billed: Vec<Value> = records
        .iter()
        .map(|r| json!([r["status"], r["input_tokens"], r["billed_cost_micros"]]))
        .collect();
    assert_eq!(
        billed,
        [
            json!(["succeeded", 10, 2]),
            json!(["succeeded", 20, 5]),
            json!(["succeeded", 40, 8]),
        ],
        "{records:?}"
    );
    let steps: std::collections::BTreeSet<&str> = records
        .iter()
        .map(|r| r["step_id"].as_str().unwrap())
        .collect();
    assert_eq!(steps.len(), 3, "a step of its own per call: {records:?}");
}

#[test]
fn retry_of_a_loop_whose_body_failed_reuses_the_iterations_that_completed() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("loop-retry");
    let agent = target.create_agent(&org);
    fake_llm().push(Reply::text("one").tokens(10, 1));
    fake_llm().push(Reply::error(400, "refused"));
    let workflow = target.create(&org, "/api/v1/workflows", &agent_loop(&agent));
    let id = target.start_run(
        &org,
        &workflow,
        json!({"topics": ["tides", "moons", "orbits"]}),
    );
    let failed = target.finished_within(&org, &id, Duration::from_secs(20));
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["failed_node"], "write");
    fake_llm().push(Reply::text("two").tokens(20, 1));
    fake_llm().push(Reply::text("three").tokens(30, 1));
    target.retry_run(&org, &id);
    let run = target.finished_within(&org, &id, Duration::from_secs(20));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], json!(["one", "two", "three"]));
    assert_eq!(
        prompts(),
        [
            "Item 0: tides",
            "Item 1: moons",
            "Item 1: moons",
            "Item 2: orbits"
        ],
        "the first item's call was not made again"
    );
    assert_eq!(run["usage"]["input_tokens"], 60, "each success billed once");
    let records: Vec<Value> = target
        .usage_records(&org, &format!("execution_id={id}"))
        .iter()
        .map(|r| json!([r["status"], r["input_tokens"]]))
        .collect();
    assert_eq!(
        records,
        [
            json!(["succeeded", 10]),
            json!(["failed", 0]),
            json!(["succeeded", 20]),
            json!(["succeeded", 30]),
        ],
        "one record per call: the refused one and each success once"
    );
}
