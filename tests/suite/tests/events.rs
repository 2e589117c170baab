//! Outbound events over HTTP: subscriptions (CRUD, validation, roles,
//! tenancy, a secret shown once) and delivery by the tick, signed as
//! Standard Webhooks says and retried when the subscriber fails.

use fake_llm::{ReceivedRequest, Reply};
use serde_json::{Value, json};
use spindle_suite::{Org, Target, fake_llm, fake_turn, fresh, shared};
use standardwebhooks::Webhook;
use std::time::{Duration, Instant};

const PATH: &str = "/api/v1/event-subscriptions";

fn subscribe(target: &Target, org: &Org, body: &Value) -> Value {
    let reply = target.call("POST", PATH, Some(&org.owner_key), Some(body));
    assert_eq!(
        reply.status,
        201,
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

#[test]
fn a_subscription_is_created_read_patched_and_deleted_and_its_secret_shown_once() {
    let target = shared();
    let org = target.create_org("events-crud");
    let created = subscribe(
        target,
        &org,
        &json!({"url": "https://hooks.example.com/spindle", "event_types": ["workflow.completed", "step.failed"]}),
    );
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["url"], "https://hooks.example.com/spindle");
    assert_eq!(
        created["event_types"],
        json!(["workflow.completed", "step.failed"])
    );
    assert_eq!(created["is_active"], true);
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"), "{secret}");
    // Any Standard Webhooks library takes it: 24 random bytes in base64.
    assert!(Webhook::new(secret).is_ok());
    assert_eq!(secret.len(), "whsec_".len() + 32);

    let read = target.call("GET", &format!("{PATH}/{id}"), Some(&org.owner_key), None);
    assert_eq!(read.status, 200);
    let read = read.json();
    assert_eq!(read["id"], id.as_str());
    assert!(read.get("secret").is_none(), "{read}");
    assert!(!read.to_string().contains(secret));

    let everything = subscribe(target, &org, &json!({"url": "http://127.0.0.1:1/all"}));
    assert_eq!(everything["event_types"], json!([]));
    let list = target.call("GET", PATH, Some(&org.owner_key), None);
    assert_eq!(list.status, 200);
    let list = list.json();
    assert_eq!(list["total"], 2);
    assert_eq!(list["data"][0]["id"], everything["id"], "newest first");
    assert!(!list.to_string().contains("whsec_"), "{list}");
    let paged = target
        .call(
            "GET",
            &format!("{PATH}?limit=1&offset=1"),
            Some(&org.owner_key),
            None,
        )
        .json();
    assert_eq!(paged["data"].as_array().unwrap().len(), 1);
    assert_eq!(paged["data"][0]["id"], id.as_str());

    let patched = target.call(
        "PATCH",
        &format!("{PATH}/{id}"),
        Some(&org.owner_key),
        Some(
            &json!({"url": "https://hooks.example.com/v2", "event_types": [], "is_active": false}),
        ),
    );
    assert_eq!(patched.status, 200);
    let patched = patched.json();
    assert_eq!(patched["url"], "https://hooks.example.com/v2");
    assert_eq!(patched["event_types"], json!([]));
    assert_eq!(patched["is_active"], false);
    assert!(patched.get("secret").is_none());

    let deliveries = target.call(
        "GET",
        &format!("{PATH}/{id}/deliveries"),
        Some(&org.owner_key),
        None,
    );
    assert_eq!(deliveries.status, 200);
    assert_eq!(deliveries.json()["data"], json!([]));

    let deleted = target.call(
        "DELETE",
        &format!("{PATH}/{id}"),
        Some(&org.owner_key),
        None,
    );
    assert_eq!(deleted.status, 204);
    target
        .call("GET", &format!("{PATH}/{id}"), Some(&org.owner_key), None)
        .assert_error(404, "not_found");
    target
        .call(
            "DELETE",
            &format!("{PATH}/{id}"),
            Some(&org.owner_key),
            None,
        )
        .assert_error(404, "not_found");
    let list = target.call("GET", PATH, Some(&org.owner_key), None).json();
    assert_eq!(list["total"], 1);
}

#[test]
fn invalid_subscriptions_are_422_naming_each_problem() {
    let target = shared();
    let org = target.create_org("events-invalid");
    let post = |body: Value| target.call("POST", PATH, Some(&org.owner_key), Some(&body));
    assert_eq!(problem_paths(&post(json!({}))), ["url"]);
    assert_eq!(
        problem_paths(&post(json!({"url": "ftp://example.com/x"}))),
        ["url"]
    );
    assert_eq!(problem_paths(&post(json!({"url": "/relative"}))), ["url"]);
    assert_eq!(problem_paths(&post(json!({"url": 7}))), ["url"]);
    let long = format!("https://example.com/{}", "a".repeat(2048));
    assert_eq!(problem_paths(&post(json!({"url": long}))), ["url"]);
    assert_eq!(
        problem_paths(&post(json!({
            "url": "https://example.com",
            "event_types": ["workflow.completed", "workflow.exploded", 3]
        }))),
        ["event_types[1]", "event_types[2]"]
    );
    assert_eq!(
        problem_paths(&post(
            json!({"url": "https://example.com", "event_types": "workflow.completed"})
        )),
        ["event_types"]
    );
    assert_eq!(
        problem_paths(&post(
            json!({"url": "https://example.com", "secret": "whsec_mine"})
        )),
        ["secret"]
    );
    post(json!([1])).assert_error(400, "bad_request");
    target
        .request(
            "POST",
            PATH,
            &[("authorization", &format!("Bearer {}", org.owner_key))],
            Some(b"{not json"),
        )
        .assert_error(400, "bad_request");

    let id = subscribe(target, &org, &json!({"url": "https://example.com/ok"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let patch = |body: Value| {
        target.call(
            "PATCH",
            &format!("{PATH}/{id}"),
            Some(&org.owner_key),
            Some(&body),
        )
    };
    assert_eq!(
        problem_paths(&patch(
            json!({"is_active": "yes", "url": "mailto:a@b", "name": "x"})
        )),
        ["name", "url", "is_active"]
    );
    // A rejected request changes nothing, and nothing was stored above.
    let list = target.call("GET", PATH, Some(&org.owner_key), None).json();
    assert_eq!(list["total"], 1);
    assert_eq!(list["data"][0]["url"], "https://example.com/ok");
    assert_eq!(list["data"][0]["is_active"], true);
}

#[test]
fn viewers_read_and_only_admins_change_subscriptions() {
    let target = shared();
    let org = target.create_org("events-roles");
    let (_, viewer) = target.create_key(&org.owner_key, "viewer");
    let (_, member) = target.create_key(&org.owner_key, "member");
    let (_, admin) = target.create_key(&org.owner_key, "admin");
    let body = json!({"url": "https://example.com/roles"});
    target
        .call("POST", PATH, Some(&member), Some(&body))
        .assert_error(403, "forbidden");
    let created = target.call("POST", PATH, Some(&admin), Some(&body));
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_str().unwrap().to_string();
    assert_eq!(target.call("GET", PATH, Some(&viewer), None).status, 200);
    let one = format!("{PATH}/{id}");
    assert_eq!(target.call("GET", &one, Some(&viewer), None).status, 200);
    assert_eq!(
        target
            .call("GET", &format!("{one}/deliveries"), Some(&viewer), None)
            .status,
        200
    );
    target
        .call(
            "PATCH",
            &one,
            Some(&member),
            Some(&json!({"is_active": false})),
        )
        .assert_error(403, "forbidden");
    target
        .call("DELETE", &one, Some(&viewer), None)
        .assert_error(403, "forbidden");
    target
        .call("GET", PATH, None, None)
        .assert_error(401, "unauthenticated");
}

#[test]
fn another_organisations_subscription_is_404_on_every_route() {
    let target = shared();
    let owner = target.create_org("events-owner");
    let other = target.create_org("events-other");
    let id = subscribe(target, &owner, &json!({"url": "https://example.com/mine"}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let one = format!("{PATH}/{id}");
    let key = Some(other.owner_key.as_str());
    target
        .call("GET", &one, key, None)
        .assert_error(404, "not_found");
    target
        .call("PATCH", &one, key, Some(&json!({"is_active": false})))
        .assert_error(404, "not_found");
    target
        .call("DELETE", &one, key, None)
        .assert_error(404, "not_found");
    target
        .call("GET", &format!("{one}/deliveries"), key, None)
        .assert_error(404, "not_found");
    assert_eq!(target.call("GET", PATH, key, None).json()["total"], 0);
    // Untouched for its owner.
    let mine = target
        .call("GET", &one, Some(&owner.owner_key), None)
        .json();
    assert_eq!(mine["is_active"], true);
}

/// trigger → transform → output, no agent: it finishes without the provider.
fn echo_workflow(target: &Target, org: &Org) -> String {
    target.create(
        org,
        "/api/v1/workflows",
        &json!({
            "name": "Echo",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "shape", "type": "transform", "config": {"template": {"echo": "{{ trigger.word }}"}}},
                {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
            ],
            "edges": [
                {"source": "start", "target": "shape"},
                {"source": "shape", "target": "done"}
            ]
        }),
    )
}

/// Runs the workflow to completion; returns the execution id.
fn run_to_completion(target: &Target, org: &Org, workflow: &str) -> String {
    let reply = target.call(
        "POST",
        &format!("/api/v1/workflows/{workflow}/execute"),
        Some(&org.owner_key),
        Some(&json!({"inputs": {"word": "tide"}})),
    );
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let id = reply.json()["execution_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = target
            .call(
                "GET",
                &format!("/api/v1/executions/{id}"),
                Some(&org.owner_key),
                None,
            )
            .json();
        if run["status"] == "completed" {
            return id;
        }
        assert!(
            !["failed", "cancelled"].contains(&run["status"].as_str().unwrap()),
            "{run}"
        );
        assert!(Instant::now() < deadline, "run did not finish: {run}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Deliveries the fake subscriber received at `path`.
fn deliveries_to(path: &str) -> Vec<ReceivedRequest> {
    fake_llm()
        .received()
        .into_iter()
        .filter(|r| r.path == path)
        .collect()
}

/// Ticks until the subscriber at `path` has received `count` deliveries.
fn tick_until(target: &Target, path: &str, count: usize) -> Vec<ReceivedRequest> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tick = target.tick();
        assert_eq!(tick.status, 200, "{}", String::from_utf8_lossy(&tick.body));
        assert!(tick.json()["events_delivered"].is_u64(), "{}", tick.json());
        let received = deliveries_to(path);
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

/// Verifies a delivery as a subscriber would, with the Standard Webhooks library.
fn verify(secret: &str, delivery: &ReceivedRequest) {
    let mut headers = ureq::http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let value = delivery
            .header(name)
            .unwrap_or_else(|| panic!("no {name} header"));
        headers.insert(name, value.parse().unwrap());
    }
    Webhook::new(secret)
        .unwrap()
        .verify(delivery.raw_body.as_bytes(), &headers)
        .unwrap_or_else(|e| panic!("the signature does not verify: {e:?}"));
    let wrong = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert!(
        Webhook::new(wrong)
            .unwrap()
            .verify(delivery.raw_body.as_bytes(), &headers)
            .is_err()
    );
}

fn deliveries_of(target: &Target, org: &Org, subscription: &str) -> Value {
    let reply = target.call(
        "GET",
        &format!("{PATH}/{subscription}/deliveries"),
        Some(&org.owner_key),
        None,
    );
    assert_eq!(reply.status, 200);
    reply.json()
}

#[test]
fn a_completed_run_is_delivered_to_its_subscriber_signed() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("events-deliver");
    let path = format!("/events/{}", org.id);
    let subscription = subscribe(
        target,
        &org,
        &json!({"url": format!("{}{path}", fake_llm().url()), "event_types": ["workflow.completed"]}),
    );
    let secret = subscription["secret"].as_str().unwrap();
    let sub_id = subscription["id"].as_str().unwrap();
    // A paused subscription, and one for other events, get nothing.
    let paused_path = format!("/events/{}/paused", org.id);
    let paused = subscribe(
        target,
        &org,
        &json!({"url": format!("{}{paused_path}", fake_llm().url())}),
    );
    let paused_id = paused["id"].as_str().unwrap();
    let patched = target.call(
        "PATCH",
        &format!("{PATH}/{paused_id}"),
        Some(&org.owner_key),
        Some(&json!({"is_active": false})),
    );
    assert_eq!(patched.status, 200);
    let other_path = format!("/events/{}/other", org.id);
    subscribe(
        target,
        &org,
        &json!({"url": format!("{}{other_path}", fake_llm().url()), "event_types": ["agent.executed"]}),
    );

    let workflow = echo_workflow(target, &org);
    let execution = run_to_completion(target, &org, &workflow);
    let received = tick_until(target, &path, 1);
    assert_eq!(received.len(), 1);
    let delivery = &received[0];
    assert_eq!(delivery.method, "POST");
    assert_eq!(delivery.header("content-type"), Some("application/json"));
    verify(secret, delivery);
    let body = &delivery.body;
    assert_eq!(body["type"], "workflow.completed", "{body}");
    assert!(body["timestamp"].is_string(), "{body}");
    assert_eq!(body["data"]["execution_id"], execution.as_str());
    assert_eq!(body["data"]["workflow_id"], workflow.as_str());
    assert_eq!(body["data"]["status"], "completed");
    assert_eq!(body["data"]["output"], json!({"echo": "tide"}));

    // Delivered once: later ticks send nothing more.
    target.tick();
    target.tick();
    assert_eq!(deliveries_to(&path).len(), 1);
    assert!(deliveries_to(&paused_path).is_empty());
    assert!(deliveries_to(&other_path).is_empty());

    let log = deliveries_of(target, &org, sub_id);
    assert_eq!(log["total"], 1, "{log}");
    let entry = &log["data"][0];
    assert_eq!(entry["id"], delivery.header("webhook-id").unwrap());
    assert_eq!(entry["event_type"], "workflow.completed");
    assert_eq!(entry["status"], "delivered");
    assert_eq!(entry["attempts"], 1);
    assert_eq!(entry["last_status_code"], 200);
    assert!(entry["delivered_at"].is_string(), "{entry}");
    assert!(!log.to_string().contains(secret));
}

#[test]
fn a_failing_subscriber_gets_three_attempts_across_ticks_and_never_fails_the_run() {
    let _turn = fake_turn();
    // An app of its own: it counts attempts, which another test's ticks of a
    // shared app would make too.
    let target = &fresh();
    let org = target.create_org("events-retry");
    let path = format!("/events/{}", org.id);
    let subscription = subscribe(
        target,
        &org,
        &json!({"url": format!("{}{path}", fake_llm().url()), "event_types": ["workflow.completed"]}),
    );
    let secret = subscription["secret"].as_str().unwrap();
    let sub_id = subscription["id"].as_str().unwrap();
    fake_llm().push(Reply::error(500, "subscriber down"));
    fake_llm().push(Reply::error(500, "subscriber still down"));
    fake_llm().push(Reply::raw(200, "{}"));

    let workflow = echo_workflow(target, &org);
    run_to_completion(target, &org, &workflow);
    let first = tick_until(target, &path, 1);
    // The failure is recorded and retried later, not at once.
    let log = deliveries_of(target, &org, sub_id);
    let entry = &log["data"][0];
    assert_eq!(entry["status"], "pending", "{log}");
    assert_eq!(entry["attempts"], 1);
    assert_eq!(entry["last_status_code"], 500);
    assert!(
        entry["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("500")),
        "{entry}"
    );
    assert!(entry["next_attempt_at"].is_string(), "{entry}");

    let received = tick_until(target, &path, 3);
    assert_eq!(received.len(), 3);
    for delivery in &received {
        verify(secret, delivery);
        assert_eq!(delivery.header("webhook-id"), first[0].header("webhook-id"));
        assert_eq!(delivery.raw_body, first[0].raw_body);
    }
    let log = deliveries_of(target, &org, sub_id);
    let entry = &log["data"][0];
    assert_eq!(entry["status"], "delivered", "{log}");
    assert_eq!(entry["attempts"], 3);
    assert_eq!(entry["last_status_code"], 200);
    assert_eq!(entry["last_error"], Value::Null);
    target.tick();
    assert_eq!(deliveries_to(&path).len(), 3);
    assert_eq!(fake_llm().remaining(), 0);
}

#[test]
fn deleting_a_subscription_drops_its_pending_deliveries() {
    let _turn = fake_turn();
    // An app of its own, as above: only this test's ticks deliver.
    let target = &fresh();
    let org = target.create_org("events-dropped");
    let path = format!("/events/{}", org.id);
    let subscription = subscribe(
        target,
        &org,
        &json!({"url": format!("{}{path}", fake_llm().url()), "event_types": ["workflow.completed"]}),
    );
    let sub_id = subscription["id"].as_str().unwrap();
    fake_llm().push(Reply::error(500, "subscriber down"));
    let workflow = echo_workflow(target, &org);
    run_to_completion(target, &org, &workflow);
    tick_until(target, &path, 1);
    let log = deliveries_of(target, &org, sub_id);
    let entry = &log["data"][0];
    assert_eq!(entry["status"], "pending", "{log}");
    let next_attempt = spindle_suite::timestamp_ms(&entry["next_attempt_at"]);

    let deleted = target.call(
        "DELETE",
        &format!("{PATH}/{sub_id}"),
        Some(&org.owner_key),
        None,
    );
    assert_eq!(deleted.status, 204);
    // Past the retry's time, ticks send nothing more to the subscriber.
    let wait = next_attempt + 200 - spindle_suite::now_ms();
    if wait > 0 {
        std::thread::sleep(Duration::from_millis(wait.unsigned_abs()));
    }
    for _ in 0..3 {
        let tick = target.tick();
        assert_eq!(tick.status, 200);
        assert_eq!(tick.json()["events_delivered"], 0, "{}", tick.json());
    }
    assert_eq!(deliveries_to(&path).len(), 1, "one attempt, then nothing");
}

#[test]
fn a_destination_the_host_refuses_is_recorded_as_a_failed_attempt() {
    let target = shared();
    let org = target.create_org("events-refused");
    let subscription = subscribe(
        target,
        &org,
        &json!({"url": "https://refused.invalid/hook", "event_types": ["workflow.completed"]}),
    );
    let sub_id = subscription["id"].as_str().unwrap();
    let workflow = echo_workflow(target, &org);
    run_to_completion(target, &org, &workflow);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert_eq!(target.tick().status, 200);
        let log = deliveries_of(target, &org, sub_id);
        let entry = &log["data"][0];
        if entry["attempts"].as_i64().unwrap_or(0) >= 1 {
            assert_ne!(entry["status"], "delivered", "{entry}");
            assert_eq!(entry["last_status_code"], Value::Null, "{entry}");
            assert!(entry["last_error"].is_string(), "{entry}");
            break;
        }
        assert!(Instant::now() < deadline, "never attempted: {log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The run it reports is untouched.
    let runs = target
        .call("GET", "/api/v1/executions", Some(&org.owner_key), None)
        .json();
    assert_eq!(runs["data"][0]["status"], "completed");
}

#[test]
fn real_runs_emit_every_run_event_type_to_a_subscriber_of_all() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("events-all-types");
    let path = format!("/events/{}/all", org.id);
    let subscription = subscribe(
        target,
        &org,
        &json!({"url": format!("{}{path}", fake_llm().url())}),
    );
    let secret = subscription["secret"].as_str().unwrap();
    let agent = target.create_agent(&org);
    let drafted = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Draft",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "draft", "type": "agent", "config": {"agent_id": agent, "prompt": "Write"}},
                {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
            ],
            "edges": [{"source": "start", "target": "draft"}, {"source": "draft", "target": "done"}]
        }),
    );
    // An http node to a host the component may not reach fails at once.
    let refused = target.create(
        &org,
        "/api/v1/workflows",
        &json!({
            "name": "Refused",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {}},
                {"id": "call", "type": "http", "config": {"method": "GET", "url": "http://example.com/hook"}}
            ],
            "edges": [{"source": "start", "target": "call"}]
        }),
    );
    fake_llm().push(Reply::text("Draft").tokens(10, 2));
    let completed = target.start_run(&org, &drafted, json!({}));
    assert_eq!(target.finished(&org, &completed)["status"], "completed");
    let failed = target.start_run(&org, &refused, json!({}));
    assert_eq!(target.finished(&org, &failed)["status"], "failed");

    let received = tick_until(target, &path, 6);
    let mut seen: Vec<(String, String)> = received
        .iter()
        .map(|delivery| {
            verify(secret, delivery);
            let body = &delivery.body;
            (
                body["type"].as_str().unwrap().to_string(),
                body["data"]["execution_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    let mut expected: Vec<(String, String)> = [
        ("workflow.started", &completed),
        ("agent.executed", &completed),
        ("workflow.completed", &completed),
        ("workflow.started", &failed),
        ("step.failed", &failed),
        ("workflow.failed", &failed),
    ]
    .into_iter()
    .map(|(kind, run)| (kind.to_string(), run.clone()))
    .collect();
    expected.sort();
    assert_eq!(seen, expected);
    let step_failed = received
        .iter()
        .find(|d| d.body["type"] == "step.failed")
        .unwrap();
    assert_eq!(step_failed.body["data"]["node_id"], "call");
    assert_eq!(
        step_failed.body["data"]["error"]["code"], "host_not_allowed",
        "{}",
        step_failed.body
    );
    let run_failed = received
        .iter()
        .find(|d| d.body["type"] == "workflow.failed")
        .unwrap();
    assert_eq!(run_failed.body["data"]["failed_node"], "call");
}
