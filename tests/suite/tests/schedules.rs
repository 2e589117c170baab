//! Workflow schedules over HTTP: `PUT`/`GET /api/v1/workflows/:id/schedules`
//! and the tick that starts due runs, at most once per due time; and what
//! the tick answers.

use serde_json::{Value, json};
use spindle_suite::{Org, Target, now_ms, shared, timestamp_ms};
use std::sync::Mutex;
use std::time::Duration;

/// Tests that tick take turns, so one test's due schedule is never started
/// by another's tick while it counts what its own ticks started.
static TICKS: Mutex<()> = Mutex::new(());

/// A workflow with a required `topic` input whose output echoes the
/// trigger, so a run shows the inputs its schedule gave it.
fn echo_workflow(target: &Target, org: &Org) -> String {
    target.create(
        org,
        "/api/v1/workflows",
        &json!({
            "name": "Scheduled echo",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {"inputs": {"topic": {"type": "string", "required": true}}}},
                {"id": "done", "type": "output", "config": {"value": {"topic": "{{ trigger.topic }}", "at": "{{ trigger.scheduled_at }}"}}}
            ],
            "edges": [{"source": "start", "target": "done"}]
        }),
    )
}

fn path(workflow: &str) -> String {
    format!("/api/v1/workflows/{workflow}/schedules")
}

fn put(target: &Target, org: &Org, workflow: &str, body: &Value) -> spindle_suite::Reply {
    target.call("PUT", &path(workflow), Some(&org.owner_key), Some(body))
}

fn get(target: &Target, org: &Org, workflow: &str) -> Value {
    let reply = target.call("GET", &path(workflow), Some(&org.owner_key), None);
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

/// Removes a workflow's schedules when dropped, so a failed test leaves
/// nothing due behind (the app may be a shared one: `SPINDLE_URL`).
struct Cleanup<'a> {
    target: &'a Target,
    org: &'a Org,
    workflow: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        put(
            self.target,
            self.org,
            &self.workflow,
            &json!({"schedules": []}),
        );
    }
}

/// UTC ms of the API's RFC 3339 times, which are always written as
/// `2026-01-01T08:00:00.000Z`.
fn epoch_ms(text: &str) -> i64 {
    assert!(
        text.len() == 24 && text.ends_with('Z'),
        "not the API's time format: {text}"
    );
    timestamp_ms(&json!(text))
}

/// The runs of a workflow, newest first.
fn runs(target: &Target, org: &Org, workflow: &str) -> Vec<Value> {
    let reply = target.call(
        "GET",
        &format!("/api/v1/executions?workflow_id={workflow}&limit=100"),
        Some(&org.owner_key),
        None,
    );
    assert_eq!(reply.status, 200);
    reply.json()["data"].as_array().unwrap().clone()
}

/// Waits until the server's clock (the same machine's) has passed `due`.
fn wait_past(due_ms: i64) {
    let wait = due_ms + 500 - now_ms();
    assert!(wait < 70_000, "due {wait} ms from now");
    if wait > 0 {
        std::thread::sleep(Duration::from_millis(wait.unsigned_abs()));
    }
}

/// `POST /internal/tick` from two threads at once; what each answered.
fn two_ticks(target: &Target) -> Vec<Value> {
    std::thread::scope(|scope| {
        let ticks: Vec<_> = (0..2).map(|_| scope.spawn(|| target.tick())).collect();
        ticks
            .into_iter()
            .map(|tick| {
                let reply = tick.join().unwrap();
                assert_eq!(
                    reply.status,
                    200,
                    "{}",
                    String::from_utf8_lossy(&reply.body)
                );
                reply.json()
            })
            .collect()
    })
}

#[test]
fn schedules_are_replaced_and_listed_with_their_next_run() {
    let target = shared();
    let org = target.create_org("schedules-round-trip");
    let workflow = echo_workflow(target, &org);
    let _cleanup = Cleanup {
        target,
        org: &org,
        workflow: workflow.clone(),
    };
    assert_eq!(
        get(target, &org, &workflow),
        json!({"workflow_id": workflow, "data": []})
    );
    let reply = put(
        target,
        &org,
        &workflow,
        &json!({"schedules": [
            {"cron": "0 9 1 1 *", "timezone": "Europe/Berlin", "inputs": {"topic": "new year"}},
            {"cron": "30 6 1 7 *", "inputs": {"topic": "summer"}, "enabled": false}
        ]}),
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    assert_eq!(body["workflow_id"], workflow.as_str());
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let (berlin, july) = (&data[0], &data[1]);
    assert_eq!(berlin["cron"], "0 9 1 1 *");
    assert_eq!(berlin["timezone"], "Europe/Berlin");
    assert_eq!(berlin["inputs"], json!({"topic": "new year"}));
    assert_eq!(berlin["enabled"], true);
    assert_eq!(berlin["last_run_at"], Value::Null);
    assert_eq!(berlin["workflow_id"], workflow.as_str());
    // 09:00 in Berlin on 1 January is 08:00 UTC (CET), the next one to come.
    let next = berlin["next_run_at"].as_str().unwrap();
    assert!(next.ends_with("-01-01T08:00:00.000Z"), "{next}");
    assert!(epoch_ms(next) > now_ms());
    assert!(epoch_ms(next) <= now_ms() + 366 * 86_400_000);
    assert_eq!(july["timezone"], "UTC");
    assert_eq!(july["enabled"], false);
    assert_eq!(july["next_run_at"], Value::Null);
    assert_ne!(berlin["id"], july["id"]);
    assert_eq!(get(target, &org, &workflow), body);

    // What GET shows can be sent back as it is.
    let again = put(target, &org, &workflow, &json!({"schedules": data}));
    assert_eq!(again.status, 200);
    let again = again.json();
    for (before, after) in data.iter().zip(again["data"].as_array().unwrap()) {
        for field in ["cron", "timezone", "inputs", "enabled", "next_run_at"] {
            assert_eq!(before[field], after[field], "{field}");
        }
    }

    // A viewer reads them and cannot change them.
    let (_, viewer) = target.create_key(&org.owner_key, "viewer");
    let read = target.call("GET", &path(&workflow), Some(&viewer), None);
    assert_eq!(read.status, 200);
    target
        .call(
            "PUT",
            &path(&workflow),
            Some(&viewer),
            Some(&json!({"schedules": []})),
        )
        .assert_error(403, "forbidden");

    let cleared = put(target, &org, &workflow, &json!({"schedules": []}));
    assert_eq!(cleared.json(), json!({"workflow_id": workflow, "data": []}));
    assert_eq!(
        get(target, &org, &workflow),
        json!({"workflow_id": workflow, "data": []})
    );
}

#[test]
fn invalid_schedules_name_every_problem_and_change_nothing() {
    let target = shared();
    let org = target.create_org("schedules-invalid");
    let workflow = echo_workflow(target, &org);
    let _cleanup = Cleanup {
        target,
        org: &org,
        workflow: workflow.clone(),
    };
    let stored = put(
        target,
        &org,
        &workflow,
        &json!({"schedules": [{"cron": "0 12 1 1 *", "inputs": {"topic": "kept"}}]}),
    );
    assert_eq!(stored.status, 200);
    let stored = stored.json();

    let cases: Vec<(Value, u16, &str, Vec<&str>)> = vec![
        (
            json!({"schedules": [{"cron": "61 * * * *", "inputs": {"topic": "x"}}]}),
            422,
            "validation_failed",
            vec!["schedules[0].cron"],
        ),
        (
            json!({"schedules": [{"cron": "0 9 * * *", "timezone": "Mars/Olympus", "inputs": {"topic": "x"}}]}),
            422,
            "validation_failed",
            vec!["schedules[0].timezone"],
        ),
        (
            json!({"schedules": [
                {"cron": "0 9 * * *", "inputs": {"topic": "x"}},
                {"cron": 5, "timezone": 1, "inputs": [], "enabled": "yes"}
            ]}),
            422,
            "validation_failed",
            vec![
                "schedules[1].cron",
                "schedules[1].timezone",
                "schedules[1].inputs",
                "schedules[1].enabled",
                "schedules[1].inputs.topic",
            ],
        ),
        (
            json!({"schedules": [{"cron": "0 9 * * *", "inputs": {"topic": 7}}]}),
            422,
            "validation_failed",
            vec!["schedules[0].inputs.topic"],
        ),
        (
            json!({"schedules": "0 9 * * *"}),
            422,
            "validation_failed",
            vec!["schedules"],
        ),
        (
            json!({"schedules": (0..21).map(|i| json!({"cron": format!("{i} 9 * * *"), "inputs": {"topic": "x"}})).collect::<Vec<_>>()}),
            422,
            "validation_failed",
            vec!["schedules"],
        ),
        (
            json!({"schedules": [{"cron": "0 9 * * *", "inputs": {"topic": "x"}, "every": "day"}]}),
            400,
            "bad_request",
            vec!["schedules[0].every"],
        ),
        (
            json!({"schedules": [], "paused": true}),
            400,
            "bad_request",
            vec!["paused"],
        ),
    ];
    for (body, status, code, paths) in cases {
        let reply = put(target, &org, &workflow, &body);
        reply.assert_error(status, code);
        let details: Vec<String> = reply.json()["error"]["details"]
            .as_array()
            .unwrap_or_else(|| panic!("details for {body}"))
            .iter()
            .map(|d| {
                assert!(d["problem"].as_str().is_some_and(|p| !p.is_empty()));
                d["path"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(details, paths, "{body}");
        assert_eq!(get(target, &org, &workflow), stored, "after {body}");
    }
    let malformed = target.request(
        "PUT",
        &path(&workflow),
        &[
            ("authorization", &format!("Bearer {}", org.owner_key)),
            ("content-type", "application/json"),
        ],
        Some(b"{\"schedules\": [{\"cron\": "),
    );
    malformed.assert_error(400, "bad_request");
    let empty = target.call("PUT", &path(&workflow), Some(&org.owner_key), None);
    empty.assert_error(400, "bad_request");
    assert_eq!(get(target, &org, &workflow), stored);
}

#[test]
fn another_organisations_workflow_is_not_found() {
    let target = shared();
    let owner = target.create_org("schedules-owner");
    let other = target.create_org("schedules-other");
    let workflow = echo_workflow(target, &owner);
    let _cleanup = Cleanup {
        target,
        org: &owner,
        workflow: workflow.clone(),
    };
    let body = json!({"schedules": [{"cron": "0 12 1 1 *", "inputs": {"topic": "mine"}}]});
    assert_eq!(put(target, &owner, &workflow, &body).status, 200);
    let stored = get(target, &owner, &workflow);
    put(target, &other, &workflow, &json!({"schedules": []})).assert_error(404, "not_found");
    target
        .call("GET", &path(&workflow), Some(&other.owner_key), None)
        .assert_error(404, "not_found");
    put(target, &owner, "no-such-workflow", &body).assert_error(404, "not_found");
    assert_eq!(get(target, &owner, &workflow), stored);
    // A deleted workflow's schedules are gone from the API with it.
    let deleted = echo_workflow(target, &owner);
    target.call(
        "DELETE",
        &format!("/api/v1/workflows/{deleted}"),
        Some(&owner.owner_key),
        None,
    );
    put(target, &owner, &deleted, &body).assert_error(404, "not_found");
}

/// Tests that count what their own ticks started: they need an app that only
/// the suite ticks, so a run against an app someone else started
/// (`SPINDLE_URL`) skips them by name (`--skip sole_ticker::`).
mod sole_ticker {
    use super::*;
    use spindle_suite::shared_ticked_by_the_suite_alone;

    #[test]
    fn two_ticks_at_once_start_a_due_schedule_once() {
        let _turn = TICKS.lock().unwrap_or_else(|e| e.into_inner());
        let target = shared_ticked_by_the_suite_alone();
        let org = target.create_org("schedules-tick");
        let workflow = echo_workflow(target, &org);
        let _cleanup = Cleanup {
            target,
            org: &org,
            workflow: workflow.clone(),
        };
        // Once a minute, at a second a few seconds from now: one due time comes
        // soon and the next is a minute later, so every run in this test
        // belongs to the first one, however slow the machine is.
        let second = (now_ms() / 1000 + 3) % 60;
        let reply = put(
            target,
            &org,
            &workflow,
            &json!({"schedules": [{"cron": format!("{second} * * * * *"), "inputs": {"topic": "tides"}}]}),
        );
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let due = reply.json()["data"][0]["next_run_at"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(runs(target, &org, &workflow).is_empty());
        let schedule_id = reply.json()["data"][0]["id"].as_str().unwrap().to_string();
        // A second version before the due time: the run is on the workflow's
        // current version, not the one the schedule was set on.
        let reply = target.call(
            "PUT",
            &format!("/api/v1/workflows/{workflow}"),
            Some(&org.owner_key),
            Some(&json!({
                "name": "Scheduled echo, second version",
                "nodes": [
                    {"id": "start", "type": "trigger", "config": {"inputs": {"topic": {"type": "string", "required": true}}}},
                    {"id": "done", "type": "output", "config": {"value": {"topic": "{{ trigger.topic }}", "at": "{{ trigger.scheduled_at }}"}}}
                ],
                "edges": [{"source": "start", "target": "done"}]
            })),
        );
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        wait_past(epoch_ms(&due));

        // Only these two ticks run, and exactly one of them starts it.
        let answers = two_ticks(target);
        let started: i64 = answers
            .iter()
            .map(|a| a["schedules_started"].as_i64().unwrap())
            .sum();
        assert_eq!(started, 1, "{answers:?}");
        let started = runs(target, &org, &workflow);
        assert_eq!(started.len(), 1, "{started:?}");
        assert_eq!(
            started[0]["inputs"],
            json!({"topic": "tides", "scheduled_at": due})
        );
        let run_id = started[0]["id"].as_str().unwrap();
        let run = target.finished(&org, run_id);
        assert_eq!(run["status"], "completed", "{run}");
        assert_eq!(run["output"], json!({"topic": "tides", "at": due}));
        assert_eq!(run["trigger_kind"], "schedule");
        assert_eq!(run["version"], 2, "{run}");
        // The start is in the activity log, by the schedule.
        let activity = target.call(
            "GET",
            "/api/v1/orgs/current/activity?limit=200",
            Some(&org.owner_key),
            None,
        );
        assert_eq!(activity.status, 200);
        let activity = activity.json();
        let starts: Vec<&Value> = activity["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|entry| entry["action"] == "workflow.started")
            .collect();
        assert_eq!(starts.len(), 1, "{activity}");
        assert_eq!(starts[0]["actor"], format!("schedule:{schedule_id}"));
        assert_eq!(starts[0]["resource_id"], run_id);

        // The schedule moved on to the next minute and remembers this run.
        let schedule = get(target, &org, &workflow)["data"][0].clone();
        assert_eq!(schedule["last_run_at"], due.as_str());
        assert_eq!(
            epoch_ms(schedule["next_run_at"].as_str().unwrap()),
            epoch_ms(&due) + 60_000
        );
        // Ticking again before then starts nothing new.
        two_ticks(target);
        assert_eq!(runs(target, &org, &workflow).len(), 1);
    }

    #[test]
    fn due_times_missed_while_nothing_ticked_start_one_run() {
        let _turn = TICKS.lock().unwrap_or_else(|e| e.into_inner());
        let target = shared_ticked_by_the_suite_alone();
        let org = target.create_org("schedules-missed");
        let workflow = echo_workflow(target, &org);
        let _cleanup = Cleanup {
            target,
            org: &org,
            workflow: workflow.clone(),
        };
        let reply = put(
            target,
            &org,
            &workflow,
            &json!({"schedules": [{"cron": "* * * * * *", "inputs": {"topic": "every second"}}]}),
        );
        assert_eq!(reply.status, 200);
        let first = reply.json()["data"][0]["next_run_at"]
            .as_str()
            .unwrap()
            .to_string();
        // Let at least two due times pass without a tick.
        wait_past(epoch_ms(&first) + 2_000);
        let tick = target.tick();
        assert_eq!(tick.status, 200);
        let started = runs(target, &org, &workflow);
        let due_times: Vec<&str> = started
            .iter()
            .map(|r| r["inputs"]["scheduled_at"].as_str().unwrap())
            .collect();
        assert_eq!(tick.json()["schedules_started"], 1);
        // One run, for the earliest missed time, not one per missed second.
        assert_eq!(due_times, [first.as_str()]);
    }

    #[test]
    fn a_due_run_whose_inputs_no_longer_fit_the_trigger_is_skipped_and_the_schedule_moves_on() {
        let _turn = TICKS.lock().unwrap_or_else(|e| e.into_inner());
        let target = shared_ticked_by_the_suite_alone();
        let org = target.create_org("schedules-unfit");
        let workflow = echo_workflow(target, &org);
        let _cleanup = Cleanup {
            target,
            org: &org,
            workflow: workflow.clone(),
        };
        // Due a few seconds from now, then a minute later (as above).
        let second = (now_ms() / 1000 + 3) % 60;
        let reply = put(
            target,
            &org,
            &workflow,
            &json!({"schedules": [{"cron": format!("{second} * * * * *"), "inputs": {"topic": "tides"}}]}),
        );
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let due = reply.json()["data"][0]["next_run_at"]
            .as_str()
            .unwrap()
            .to_string();
        // A new version also requires `audience`, which the schedule's inputs
        // do not give: they fitted when the schedule was set.
        let reply = target.call(
            "PUT",
            &format!("/api/v1/workflows/{workflow}"),
            Some(&org.owner_key),
            Some(&json!({
                "name": "Scheduled echo",
                "nodes": [
                    {"id": "start", "type": "trigger", "config": {"inputs": {
                        "topic": {"type": "string", "required": true},
                        "audience": {"type": "string", "required": true}}}},
                    {"id": "done", "type": "output", "config": {"value": "{{ trigger.audience }}"}}
                ],
                "edges": [{"source": "start", "target": "done"}]
            })),
        );
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        wait_past(epoch_ms(&due));

        let started: i64 = two_ticks(target)
            .iter()
            .map(|a| a["schedules_started"].as_i64().unwrap())
            .sum();
        assert_eq!(started, 0);
        assert!(runs(target, &org, &workflow).is_empty());
        // The due time is used up rather than tried again on every tick: the
        // schedule stays enabled and waits for its next minute.
        let schedule = get(target, &org, &workflow)["data"][0].clone();
        assert_eq!(schedule["last_run_at"], due.as_str());
        assert_eq!(schedule["enabled"], true);
        assert_eq!(
            epoch_ms(schedule["next_run_at"].as_str().unwrap()),
            epoch_ms(&due) + 60_000
        );
        two_ticks(target);
        assert!(runs(target, &org, &workflow).is_empty());
    }

    /// The tick answers what it did, each count an integer; a wait past its
    /// timeout is counted once, by the tick that timed it out.
    #[test]
    fn the_tick_answers_what_it_did() {
        let _turn = TICKS.lock().unwrap_or_else(|e| e.into_inner());
        let target = shared_ticked_by_the_suite_alone();
        let org = target.create_org("tick-answer");
        let workflow = target.create(
            &org,
            "/api/v1/workflows",
            &json!({
                "name": "Waits briefly",
                "nodes": [
                    {"id": "start", "type": "trigger"},
                    {"id": "gate", "type": "wait", "config": {"signal": "go", "timeout_ms": 300}},
                    {"id": "late", "type": "output", "config": {"value": "timed out"}}
                ],
                "edges": [{"source": "start", "target": "gate"},
                          {"source": "gate", "target": "late", "source_handle": "timeout"}]
            }),
        );
        let id = target.start_run(&org, &workflow, json!({}));
        let run = target.await_step(&org, &id, "gate", "waiting");
        wait_past(epoch_ms(run["created_at"].as_str().unwrap()) + 300);
        let mut timed_out = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while target.execution(&org, &id)["status"] == "running" {
            assert!(
                std::time::Instant::now() < deadline,
                "the wait never timed out"
            );
            let tick = target.tick();
            assert_eq!(tick.status, 200);
            let answer = tick.json();
            let mut keys: Vec<&str> = answer
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort_unstable();
            assert_eq!(
                keys,
                [
                    "events_delivered",
                    "failed",
                    "redispatched",
                    "runs_resumed",
                    "schedules_started",
                    "waits_timed_out"
                ],
                "{answer}"
            );
            assert!(
                answer.as_object().unwrap().values().all(Value::is_i64),
                "{answer}"
            );
            timed_out += answer["waits_timed_out"].as_i64().unwrap();
        }
        assert_eq!(timed_out, 1);
        let run = target.finished(&org, &id);
        assert_eq!(run["output"], "timed out", "{run}");
    }
}
