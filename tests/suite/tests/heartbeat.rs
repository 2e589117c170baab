//! The app's own tick (`self_tick`): with nobody calling `POST /internal/tick`,
//! delays end, wait timeouts fire, schedules start and a run whose host died
//! is resumed, on the test host and on real Spin alike.

use fake_llm::Reply;
use serde_json::{Value, json};
use spindle_suite::{
    Org, Target, await_provider_call, configured, fake_llm, fake_turn, step, suite_variables,
    timestamp_ms,
};
use std::time::{Duration, Instant};

/// An app that ticks itself every 200 ms (the suite's apps otherwise leave the
/// tick to the tests).
fn self_ticking() -> Target {
    let mut variables = suite_variables();
    variables.insert("self_tick".into(), "true".into());
    variables.insert("tick_interval_ms".into(), "200".into());
    configured(variables)
}

fn delayed(ms: u64) -> Value {
    json!({
        "name": "Delayed",
        "nodes": [
            {"id": "start", "type": "trigger", "config": {}},
            {"id": "pause", "type": "delay", "config": {"duration_ms": ms}},
            {"id": "done", "type": "output", "config": {"value": "woke up"}}
        ],
        "edges": [
            {"source": "start", "target": "pause"},
            {"source": "pause", "target": "done"}
        ]
    })
}

/// Polls `GET /api/v1/executions/:id` until the run has ended, for at most `within`.
fn ended(target: &Target, org: &Org, id: &str, within: Duration) -> Value {
    target.finished_within(org, id, within)
}

#[test]
fn a_delay_ends_with_nobody_calling_the_tick() {
    let target = self_ticking();
    let org = target.create_org("heartbeat-delay");
    let workflow = target.create(&org, "/api/v1/workflows", &delayed(1_000));
    let id = target.start_run(&org, &workflow, json!({}));
    let run = ended(&target, &org, &id, Duration::from_secs(20));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], "woke up");
    // The delay's step ran no earlier than 1 s after the run began.
    assert!(
        timestamp_ms(&step(&run, "pause")["started_at"])
            >= timestamp_ms(&run["created_at"]) + 1_000,
        "the delay was kept: {run}"
    );
}

#[test]
fn a_wait_times_out_with_nobody_calling_the_tick() {
    let target = self_ticking();
    let org = target.create_org("heartbeat-wait");
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Approval",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "approval", "type": "wait", "config": {"signal": "approved", "timeout_ms": 500}},
                {"id": "yes", "type": "transform", "config": {"template": "approved"}},
                {"id": "no", "type": "transform", "config": {"template": "timed out"}},
                {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
            ],
            "edges": [
                {"source": "start", "target": "approval"},
                {"source": "approval", "target": "yes"},
                {"source": "approval", "target": "no", "source_handle": "timeout"},
                {"source": "yes", "target": "done"},
                {"source": "no", "target": "done"}
            ]
        }),
    );
    let id = target.start_run(&org, &workflow, json!({}));
    let run = ended(&target, &org, &id, Duration::from_secs(20));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], "timed out");
}

#[test]
fn a_schedule_starts_its_run_with_nobody_calling_the_tick() {
    let target = self_ticking();
    let org = target.create_org("heartbeat-schedule");
    let workflow = target.create(&org, "/api/v1/workflows", &delayed(1));
    let put = target.call(
        "PUT",
        &format!("/api/v1/workflows/{workflow}/schedules"),
        Some(&org.owner_key),
        Some(&json!({"schedules": [{"cron": "* * * * * *"}]})),
    );
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let runs = target
            .call(
                "GET",
                &format!("/api/v1/executions?workflow_id={workflow}&status=completed"),
                Some(&org.owner_key),
                None,
            )
            .json();
        if runs["total"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no scheduled run: {runs}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_run_whose_host_died_is_resumed_with_nobody_calling_the_tick() {
    let _turn = fake_turn();
    let target = self_ticking();
    let org = target.create_org("heartbeat-restart");
    let agent = target.create_agent(&org);
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "One step",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "draft", "type": "agent", "config": {"agent_id": agent, "prompt": "Write"}},
                {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
            ],
            "edges": [
                {"source": "start", "target": "draft"},
                {"source": "draft", "target": "done"}
            ]
        }),
    );
    fake_llm().push(Reply::hang());
    fake_llm().push(Reply::text("after the restart").tokens(5, 2));
    let id = target.start_run(&org, &workflow, json!({}));
    await_provider_call(Duration::from_secs(10));
    // The host dies with the step and the heartbeat; the client's next read
    // starts a new heartbeat, which hands the step on once its lease lapses.
    target.kill_and_restart();
    let run = ended(&target, &org, &id, Duration::from_secs(30));
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], "after the restart");
    assert_eq!(fake_llm().received().len(), 2);
}

#[test]
fn after_a_restart_a_signal_alone_starts_the_tick_again() {
    let _turn = fake_turn();
    let target = self_ticking();
    let org = target.create_org("heartbeat-signal");
    let woke = format!("/events/{}/woke", org.id);
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Signal, then a delay",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "gate", "type": "wait", "config": {"signal": "go"}},
                {"id": "pause", "type": "delay", "config": {"duration_ms": 1_000}},
                {"id": "call", "type": "http", "config": {"method": "POST", "url": format!("{}{woke}", fake_llm().url()), "body": {}}}
            ],
            "edges": [
                {"source": "start", "target": "gate"},
                {"source": "gate", "target": "pause"},
                {"source": "pause", "target": "call"}
            ]
        }),
    );
    fake_llm().push(Reply::raw(200, "{}"));
    let id = target.start_run(&org, &workflow, json!({}));
    target.await_step(&org, &id, "gate", "waiting");
    // The host dies with its heartbeat; after the restart nothing ticks
    // until a request starts it again, and the only one is the signal. The
    // dead chain's lease (README: "5 s past its last tick") must lapse first,
    // or the kick takes it for live; no response shows the lease, so this
    // waits it out.
    target.kill_and_restart();
    std::thread::sleep(Duration::from_millis(5_500));
    let reply = target.call(
        "POST",
        &format!("/api/v1/executions/{id}/signals/go"),
        Some(&org.owner_key),
        Some(&json!({"payload": {}})),
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    // The delay after the signal ends with no other request to the app: its
    // http step calling the fake is what shows it (reading the run would
    // start the tick too).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fake_llm().received().iter().any(|r| r.path == woke) {
        if Instant::now() > deadline {
            panic!(
                "the delay after the signal never ended: {}",
                target.execution(&org, &id)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = ended(&target, &org, &id, Duration::from_secs(10));
    assert_eq!(run["status"], "completed", "{run}");
}

/// A link ticks for 20 s, then hands over: a 25 s delay ends with nobody
/// calling the app at all (no reads either, which would start a new chain),
/// so only the chain's own hand-over can have ended it.
#[test]
fn a_delay_longer_than_one_link_ends_by_the_chains_own_hand_over() {
    let _turn = fake_turn();
    let target = self_ticking();
    let org = target.create_org("heartbeat-handover");
    let woke = format!("/events/{}/woke", org.id);
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Longer than a link",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "pause", "type": "delay", "config": {"duration_ms": 25_000}},
                {"id": "call", "type": "http", "config": {"method": "POST", "url": format!("{}{woke}", fake_llm().url()), "body": {}}}
            ],
            "edges": [{"source": "start", "target": "pause"}, {"source": "pause", "target": "call"}]
        }),
    );
    fake_llm().push(Reply::raw(200, "{}"));
    let id = target.start_run(&org, &workflow, json!({}));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fake_llm().received().iter().any(|r| r.path == woke) {
        if Instant::now() > deadline {
            panic!("the delay never ended: {}", target.execution(&org, &id));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = ended(&target, &org, &id, Duration::from_secs(10));
    assert_eq!(run["status"], "completed", "{run}");
}
