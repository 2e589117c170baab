//! Execution logs over HTTP: the ordered entries of a run
//! (`GET /api/v1/executions/:id/logs`) and the same entries as Server-Sent
//! Events (`GET /api/v1/executions/:id/events`), live and resumable.

use fake_llm::Reply;
use serde_json::{Value, json};
use spindle_suite::{Org, SseEvent, SseStream, Target, fake_llm, fake_turn, shared};
use std::time::Duration;

/// Longer than the server keeps a stream open (about 25 s), so a stream
/// always ends on the server's side first.
const STREAM_DEADLINE: Duration = Duration::from_secs(40);

/// Every log entry of the run, read page by page with `after`.
fn all_logs(target: &Target, token: &str, id: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let reply = target.call(
            "GET",
            &format!("/api/v1/executions/{id}/logs?after={after}&limit=1000"),
            Some(token),
            None,
        );
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let page = reply.json();
        entries.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => return entries,
        }
    }
}

fn events_of(entries: &[Value]) -> Vec<&str> {
    entries
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect()
}

/// The events of a stream up to and including `complete`; panics if the
/// stream ends without it.
fn until_complete(stream: &mut SseStream) -> Vec<SseEvent> {
    let mut events = Vec::new();
    loop {
        let event = stream
            .next_event()
            .unwrap_or_else(|| panic!("the stream ended without `complete` after {events:?}"));
        let done = event.event == "complete";
        events.push(event);
        if done {
            return events;
        }
    }
}

fn open_events(
    target: &Target,
    org: &Org,
    id: &str,
    query: &str,
    headers: &[(&str, &str)],
) -> SseStream {
    let stream = target.events(
        &format!("/api/v1/executions/{id}/events{query}"),
        &org.owner_key,
        headers,
        STREAM_DEADLINE,
    );
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    assert_eq!(stream.header("cache-control"), Some("no-cache"));
    stream
}

/// trigger → condition (true) → transform → output, with a branch not taken.
fn branching() -> Value {
    json!({
        "name": "Logged",
        "nodes": [
            {"id": "start", "type": "trigger", "config": {}},
            {"id": "check", "type": "condition", "config": {"expression": "1 < 2"}},
            {"id": "shape", "type": "transform", "config": {"template": {"ok": true}}},
            {"id": "other", "type": "transform", "config": {"template": "never"}},
            {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
        ],
        "edges": [
            {"source": "start", "target": "check"},
            {"source": "check", "target": "shape", "source_handle": "true"},
            {"source": "check", "target": "other", "source_handle": "false"},
            {"source": "shape", "target": "done"},
            {"source": "other", "target": "done"}
        ]
    })
}

/// trigger → http to a host the app does not allow: the step fails.
fn failing() -> Value {
    json!({
        "name": "Refused",
        "nodes": [
            {"id": "start", "type": "trigger", "config": {}},
            {"id": "call", "type": "http", "config": {"method": "GET", "url": "http://example.com/hook"}},
            {"id": "done", "type": "output", "config": {"value": 1}}
        ],
        "edges": [{"source": "start", "target": "call"}, {"source": "call", "target": "done"}]
    })
}

/// trigger → wait for signal `go` → output.
fn waiting() -> Value {
    json!({
        "name": "Waits",
        "nodes": [
            {"id": "start", "type": "trigger", "config": {}},
            {"id": "gate", "type": "wait", "config": {"signal": "go", "timeout_ms": 600000}},
            {"id": "done", "type": "output", "config": {"value": "{{ steps.gate.output.by }}"}}
        ],
        "edges": [{"source": "start", "target": "gate"}, {"source": "gate", "target": "done"}]
    })
}

#[test]
fn a_completed_runs_logs_are_ordered_with_one_step_completed_per_node_that_ran() {
    let target = shared();
    let org = target.create_org("logs-completed");
    let workflow = target.create(&org, "/api/v1/workflows", &branching());
    let id = target.start_run(&org, &workflow, json!({}));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");

    let (_, viewer) = target.create_key(&org.owner_key, "viewer");
    let entries = all_logs(target, &viewer, &id);
    let events = events_of(&entries);
    assert_eq!(events.first(), Some(&"run.started"), "{events:?}");
    assert_eq!(events.last(), Some(&"run.completed"), "{events:?}");
    let ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids ascend: {ids:?}");
    for entry in &entries {
        assert!(entry["at"].as_str().is_some_and(|at| at.ends_with('Z')));
        assert!(["info", "warn", "error"].contains(&entry["level"].as_str().unwrap()));
        assert!(entry["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(entry["data"].is_object());
    }
    assert!(!events.iter().any(|e| e.contains("failed")), "{events:?}");

    let mut logged: Vec<&str> = entries
        .iter()
        .filter(|e| e["event"] == "step.completed")
        .map(|e| e["node_id"].as_str().unwrap())
        .collect();
    let mut ran: Vec<&str> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "completed")
        .map(|s| s["node_id"].as_str().unwrap())
        .collect();
    logged.sort_unstable();
    ran.sort_unstable();
    assert_eq!(logged, ran);
    assert_eq!(ran, ["check", "done", "shape", "start"]);

    // Pages follow one another without gaps or repeats.
    let path = format!("/api/v1/executions/{id}/logs");
    let first = target
        .call("GET", &format!("{path}?limit=2"), Some(&viewer), None)
        .json();
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    assert_eq!(first["next_after"], ids[1]);
    let rest = target
        .call(
            "GET",
            &format!("{path}?after={}", ids[1]),
            Some(&viewer),
            None,
        )
        .json();
    assert_eq!(rest["data"].as_array().unwrap()[..], entries[2..]);
    assert!(rest["next_after"].is_null());
    for bad in ["limit=0", "limit=1001", "limit=x", "after=-1", "after=abc"] {
        target
            .call("GET", &format!("{path}?{bad}"), Some(&viewer), None)
            .assert_error(400, "bad_request");
    }
}

#[test]
fn a_failing_run_logs_step_failed_and_run_failed() {
    let target = shared();
    let org = target.create_org("logs-failed");
    let workflow = target.create(&org, "/api/v1/workflows", &failing());
    let id = target.start_run(&org, &workflow, json!({}));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "failed", "{run}");

    let entries = all_logs(target, &org.owner_key, &id);
    let events = events_of(&entries);
    assert_eq!(events.first(), Some(&"run.started"), "{events:?}");
    assert_eq!(events.last(), Some(&"run.failed"), "{events:?}");
    assert!(!events.contains(&"run.completed"), "{events:?}");
    let failed = entries
        .iter()
        .find(|e| e["event"] == "step.failed")
        .unwrap_or_else(|| panic!("no step.failed in {events:?}"));
    assert_eq!(failed["node_id"], "call");
    assert_eq!(failed["level"], "error");
    assert_eq!(failed["data"]["error"]["code"], "host_not_allowed");
    let last = entries.last().unwrap();
    assert_eq!(last["level"], "error");
    assert_eq!(last["node_id"], "call");
    assert_eq!(last["data"]["error"]["code"], "host_not_allowed");
}

#[test]
fn a_node_retry_logs_step_retrying_and_a_run_retry_logs_run_retried() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("logs-retries");
    let url = format!("{}/v1/chat/completions", fake_llm().url());
    let workflow = target.create(&org, "/api/v1/workflows", &json!({
            "name": "Retried twice",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "call", "type": "http", "retry": {"max_attempts": 2, "backoff_ms": 100},
                    "config": {"method": "POST", "url": url, "body": {"model": "m", "messages": []}}}
            ],
            "edges": [{"source": "start", "target": "call"}]
        }),
    );
    // First run: a 500, then the retry answers.
    fake_llm().push(Reply::server_error());
    let id = target.start_run(&org, &workflow, json!({}));
    let run = target.finished_ticking(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    let entries = all_logs(target, &org.owner_key, &id);
    let events = events_of(&entries);
    let retrying = events.iter().position(|e| *e == "step.retrying");
    let completed = entries
        .iter()
        .position(|e| e["event"] == "step.completed" && e["node_id"] == "call");
    assert!(
        matches!((retrying, completed), (Some(r), Some(c)) if r < c),
        "step.retrying before the call's step.completed: {events:?}"
    );
    assert_eq!(entries[retrying.unwrap()]["node_id"], "call");
    assert!(!events.contains(&"run.retried"), "{events:?}");

    // Second run: two 500s fail it; a retry of the run is logged on it.
    fake_llm().push(Reply::server_error());
    fake_llm().push(Reply::server_error());
    let id = target.start_run(&org, &workflow, json!({}));
    let run = target.finished_ticking(&org, &id);
    assert_eq!(run["status"], "failed", "{run}");
    target.retry_run(&org, &id);
    let run = target.finished_ticking(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    let events: Vec<String> = all_logs(target, &org.owner_key, &id)
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    let failed = events.iter().position(|e| e == "run.failed");
    let retried = events.iter().position(|e| e == "run.retried");
    assert!(
        matches!((failed, retried), (Some(f), Some(r)) if f < r),
        "run.retried after run.failed: {events:?}"
    );
    assert_eq!(events.last().map(String::as_str), Some("run.completed"));
}

#[test]
fn a_log_of_more_than_a_hundred_entries_is_read_a_hundred_at_a_time() {
    let target = shared();
    let org = target.create_org("logs-pages");
    // 120 iterations: a step.completed each, beside the run's own entries.
    let workflow = target.create(&org, "/api/v1/workflows", &json!({
            "name": "Long log",
            "nodes": [
                {"id": "start", "type": "trigger"},
                {"id": "each", "type": "loop", "config": {"mode": "for_each", "items": "trigger.items", "max_iterations": 200,
                    "body": {"nodes": [{"id": "b", "type": "transform", "config": {"template": "{{ item }}"}}], "edges": []}}}
            ],
            "edges": [{"source": "start", "target": "each"}]
        }),
    );
    let items: Vec<i64> = (0..120).collect();
    let id = target.start_run(&org, &workflow, json!({"items": items}));
    let run = target.finished_within(&org, &id, Duration::from_secs(60));
    assert_eq!(run["status"], "completed", "{run}");
    let everything = all_logs(target, &org.owner_key, &id);
    assert!(everything.len() > 120, "{} entries", everything.len());

    let page = |query: &str| {
        let reply = target.call(
            "GET",
            &format!("/api/v1/executions/{id}/logs{query}"),
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
    // Without `limit`: the first 100, and where to go on.
    let first = page("");
    let data = first["data"].as_array().unwrap();
    assert_eq!(data.len(), 100);
    assert_eq!(data[..], everything[..100]);
    let next = first["next_after"].as_i64().expect("a next page");
    assert_eq!(next, data[99]["id"].as_i64().unwrap());
    let second = page(&format!("?after={next}"));
    let rest = second["data"].as_array().unwrap();
    assert_eq!(rest[..], everything[100..everything.len().min(200)]);
    // `limit` is 1–1000.
    for bad in ["0", "1001", "x"] {
        target
            .call(
                "GET",
                &format!("/api/v1/executions/{id}/logs?limit={bad}"),
                Some(&org.owner_key),
                None,
            )
            .assert_error(400, "bad_request");
    }
}

#[test]
fn the_stream_of_a_finished_run_sends_every_entry_then_complete() {
    let target = shared();
    let org = target.create_org("logs-stream");
    let workflow = target.create(&org, "/api/v1/workflows", &branching());
    let id = target.start_run(&org, &workflow, json!({}));
    target.finished(&org, &id);
    let entries = all_logs(target, &org.owner_key, &id);

    let mut stream = open_events(target, &org, &id, "", &[]);
    let events = until_complete(&mut stream);
    let (complete, sent) = events.split_last().unwrap();
    assert_eq!(sent.len(), entries.len(), "{sent:?}");
    for (event, entry) in sent.iter().zip(&entries) {
        assert_eq!(event.id, Some(entry["id"].to_string()));
        assert_eq!(event.event, entry["event"].as_str().unwrap());
        assert_eq!(&event.json(), entry);
    }
    assert_eq!(complete.id, None);
    assert_eq!(
        complete.json(),
        json!({"execution_id": id, "status": "completed"})
    );
    assert_eq!(
        stream.next_event(),
        None,
        "the stream ends after `complete`"
    );
}

#[test]
fn a_stream_resumes_after_last_event_id_without_repeats() {
    let target = shared();
    let org = target.create_org("logs-resume");
    let workflow = target.create(&org, "/api/v1/workflows", &failing());
    let id = target.start_run(&org, &workflow, json!({}));
    target.finished(&org, &id);
    let entries = all_logs(target, &org.owner_key, &id);
    assert!(entries.len() >= 3, "{entries:?}");
    let resume_at = entries[1]["id"].to_string();
    let expected: Vec<String> = entries[2..].iter().map(|e| e["id"].to_string()).collect();

    let ids = |events: Vec<SseEvent>| -> Vec<String> {
        let (complete, sent) = events.split_last().unwrap();
        assert_eq!(complete.json()["status"], "failed");
        sent.iter().map(|e| e.id.clone().unwrap()).collect()
    };
    let mut resumed = open_events(target, &org, &id, "", &[("last-event-id", &resume_at)]);
    assert_eq!(ids(until_complete(&mut resumed)), expected);
    let mut by_query = open_events(target, &org, &id, &format!("?after={resume_at}"), &[]);
    assert_eq!(ids(until_complete(&mut by_query)), expected);
    // The header is what a reconnecting EventSource sends: it wins.
    let mut both = open_events(
        target,
        &org,
        &id,
        "?after=0",
        &[("last-event-id", &resume_at)],
    );
    assert_eq!(ids(until_complete(&mut both)), expected);
}

/// Reads `stream` until an event of `name` for node `node` and returns every
/// event up to it; panics if the stream completes or ends first.
fn until_event(stream: &mut SseStream, name: &str, node: &str) -> Vec<SseEvent> {
    let mut seen = Vec::new();
    loop {
        let event = stream
            .next_event()
            .unwrap_or_else(|| panic!("the stream ended before {name} after {seen:?}"));
        assert_ne!(event.event, "complete", "the run ended early: {seen:?}");
        let found = event.event == name && event.json()["node_id"] == node;
        seen.push(event);
        if found {
            return seen;
        }
    }
}

/// Sends signal `go` to the waiting run `id`; panics unless it is taken.
fn signal_go(target: &Target, org: &Org, id: &str) {
    let reply = target.call(
        "POST",
        &format!("/api/v1/executions/{id}/signals/go"),
        Some(&org.owner_key),
        Some(&json!({"payload": {"by": "Ada"}})),
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
}

/// Asserts what a stream of [`waiting`] carries once its signal arrived:
/// the gate's and the output's steps, the run's end, then `complete`.
fn assert_the_rest_after_the_signal(events: &[SseEvent]) {
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "step.completed",
            "step.completed",
            "run.completed",
            "complete"
        ],
        "{events:?}"
    );
    assert_eq!(events[0].json()["node_id"], "gate");
    assert_eq!(events[1].json()["node_id"], "done");
    assert_eq!(events[3].json()["status"], "completed");
}

#[test]
fn a_stream_opened_while_the_run_waits_receives_later_entries_live() {
    let target = shared();
    let org = target.create_org("logs-live");
    let workflow = target.create(&org, "/api/v1/workflows", &waiting());
    let id = target.start_run(&org, &workflow, json!({}));
    let mut stream = open_events(target, &org, &id, "", &[]);

    // What happened before the signal arrives on the open stream first.
    let seen = until_event(&mut stream, "step.completed", "start");
    assert_eq!(seen[0].event, "run.started");
    assert_eq!(target.execution(&org, &id)["status"], "running");

    // Then the signal: what it causes arrives on the same stream.
    signal_go(target, &org, &id);
    let later = until_complete(&mut stream);
    assert_the_rest_after_the_signal(&later);
    // Ids go on from where the stream was, each entry once.
    let all: Vec<i64> = seen
        .iter()
        .chain(&later[..3])
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
}

/// A stream of a run still going ends by itself (after about 25 s, under
/// hosted platforms' request limits) without `complete`, having told the
/// client to reconnect.
#[test]
fn a_stream_of_a_run_still_going_ends_without_complete() {
    let target = shared();
    let org = target.create_org("logs-stream-ends");
    let workflow = target.create(&org, "/api/v1/workflows", &waiting());
    let id = target.start_run(&org, &workflow, json!({}));
    target.await_step(&org, &id, "gate", "waiting");
    let mut stream = open_events(target, &org, &id, "", &[]);
    let mut lines = Vec::new();
    while let Some(line) = stream.next_line() {
        lines.push(line);
    }
    assert!(lines.iter().any(|l| l == "retry: 1000"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "event: run.started"), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l == "event: complete"),
        "the run is still waiting: {lines:?}"
    );
    assert_eq!(target.execution(&org, &id)["status"], "running");
}

#[test]
fn a_stream_resumed_with_last_event_id_while_the_run_waits_goes_on_without_repeats() {
    let target = shared();
    let org = target.create_org("logs-resume-live");
    let workflow = target.create(&org, "/api/v1/workflows", &waiting());
    let id = target.start_run(&org, &workflow, json!({}));

    // A first connection sees the run up to its wait, then drops, as a
    // client losing its network would.
    let mut first = open_events(target, &org, &id, "", &[]);
    let before = until_event(&mut first, "step.completed", "start");
    drop(first);
    assert_eq!(before[0].event, "run.started");
    let last_seen = before.last().unwrap().id.clone().expect("entries have ids");
    assert_eq!(target.execution(&org, &id)["status"], "running");

    // It reconnects with Last-Event-ID while the run is still waiting: the
    // stream stays open, repeats nothing, and carries what happens next.
    let mut resumed = open_events(target, &org, &id, "", &[("last-event-id", &last_seen)]);
    signal_go(target, &org, &id);
    let after = until_complete(&mut resumed);
    assert_the_rest_after_the_signal(&after);

    // Together the two connections carried every entry of the log once, in order.
    let streamed: Vec<String> = before
        .iter()
        .chain(&after[..3])
        .map(|e| e.id.clone().unwrap())
        .collect();
    let logged: Vec<String> = all_logs(target, &org.owner_key, &id)
        .iter()
        .map(|e| e["id"].to_string())
        .collect();
    assert_eq!(streamed, logged);
}

#[test]
fn every_data_line_of_a_stream_is_json_and_keep_alives_are_comments() {
    let target = shared();
    let org = target.create_org("logs-sse-lines");
    let workflow = target.create(&org, "/api/v1/workflows", &waiting());
    let id = target.start_run(&org, &workflow, json!({}));
    let mut stream = open_events(target, &org, &id, "", &[]);
    // While the run waits the stream idles: it says it is alive in a comment.
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.starts_with(": ")) {
        let line = stream
            .next_line()
            .unwrap_or_else(|| panic!("the stream ended before a keep-alive: {lines:?}"));
        lines.push(line);
    }
    let reply = target.call(
        "POST",
        &format!("/api/v1/executions/{id}/signals/go"),
        Some(&org.owner_key),
        Some(&json!({"payload": {"by": "line one\nline two"}})),
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    // After `complete` the server ends the stream.
    lines.extend(std::iter::from_fn(|| stream.next_line()));
    let mut data = 0;
    for line in &lines {
        match line.split_once(':') {
            _ if line.is_empty() => {}
            Some(("", comment)) => assert_eq!(comment, " keep-alive", "{lines:#?}"),
            Some(("data", value)) => {
                let value = value.strip_prefix(' ').unwrap_or(value);
                if let Err(e) = serde_json::from_str::<Value>(value) {
                    panic!("data that is not JSON ({e}): {line:?} in {lines:#?}");
                }
                data += 1;
            }
            Some(("id" | "event" | "retry", _)) => {}
            _ => panic!("a line that is no SSE field: {line:?} in {lines:#?}"),
        }
    }
    let events = lines.iter().filter(|l| l.starts_with("event: ")).count();
    assert_eq!(data, events, "one data line per event: {lines:#?}");
    assert_eq!(
        lines
            .iter()
            .rev()
            .find(|l| l.starts_with("event: "))
            .unwrap(),
        "event: complete"
    );
}

#[test]
fn a_cancelled_run_logs_its_cancellation_and_its_stream_completes() {
    let target = shared();
    let org = target.create_org("logs-cancel");
    let workflow = target.create(&org, "/api/v1/workflows", &waiting());
    let id = target.start_run(&org, &workflow, json!({}));
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
    let entries = all_logs(target, &org.owner_key, &id);
    let last = entries.last().unwrap();
    assert_eq!(last["event"], "run.cancelled", "{entries:?}");
    assert_eq!(last["level"], "warn");
    let mut stream = open_events(target, &org, &id, "", &[]);
    let events = until_complete(&mut stream);
    assert_eq!(events.len(), entries.len() + 1);
    assert_eq!(events.last().unwrap().json()["status"], "cancelled");
}

#[test]
fn another_organisations_execution_is_404_on_both_routes() {
    let target = shared();
    let ours = target.create_org("logs-ours");
    let theirs = target.create_org("logs-theirs");
    let workflow = target.create(&theirs, "/api/v1/workflows", &branching());
    let id = target.start_run(&theirs, &workflow, json!({}));
    target.finished(&theirs, &id);
    for route in ["logs", "events"] {
        for execution in [id.as_str(), "01234567-89ab-7def-8123-456789abcdef"] {
            target
                .call(
                    "GET",
                    &format!("/api/v1/executions/{execution}/{route}"),
                    Some(&ours.owner_key),
                    None,
                )
                .assert_error(404, "not_found");
        }
        target
            .call(
                "GET",
                &format!("/api/v1/executions/{id}/{route}"),
                None,
                None,
            )
            .assert_error(401, "unauthenticated");
    }
}

#[test]
fn a_bad_last_event_id_is_400() {
    let target = shared();
    let org = target.create_org("logs-bad-id");
    let workflow = target.create(&org, "/api/v1/workflows", &branching());
    let id = target.start_run(&org, &workflow, json!({}));
    let path = format!("/api/v1/executions/{id}/events");
    let authorization = format!("Bearer {}", org.owner_key);
    for bad in ["abc", "-1", "1.5", "99999999999999999999"] {
        let reply = target.request(
            "GET",
            &path,
            &[("authorization", &authorization), ("last-event-id", bad)],
            None,
        );
        reply.assert_error(400, "bad_request");
        assert_eq!(
            reply.json()["error"]["details"][0]["path"],
            "header.last-event-id"
        );
    }
    target
        .call(
            "GET",
            &format!("{path}?after=x"),
            Some(&org.owner_key),
            None,
        )
        .assert_error(400, "bad_request");
}
