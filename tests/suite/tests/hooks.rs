//! Webhook starts over HTTP: `POST /hooks/:workflow_id` signed as Standard
//! Webhooks says (by the specification's own Rust library) or as GitHub
//! signs; refused signatures, stale timestamps and replays start nothing.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use spindle_suite::{Org, Reply, Target, shared};
use standardwebhooks::Webhook;
use std::time::{SystemTime, UNIX_EPOCH};

/// A delivery's body: the run's trigger output.
const BODY: &str = r#"{"name": "Ada"}"#;

/// A workflow that needs no LLM: trigger → transform → output.
fn greeter(name: &str) -> Value {
    json!({
        "name": name,
        "nodes": [
            {"id": "start", "type": "trigger", "config": {}},
            {"id": "greet", "type": "transform", "config": {"template": {"greeting": "Hello {{ trigger.name }}"}}},
            {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
        ],
        "edges": [
            {"source": "start", "target": "greet"},
            {"source": "greet", "target": "done"}
        ]
    })
}

/// Creates `definition` in `org`; returns its id and webhook secret.
fn create_workflow(target: &Target, org: &Org, definition: &Value) -> (String, String) {
    let reply = target.call(
        "POST",
        "/api/v1/workflows",
        Some(&org.owner_key),
        Some(definition),
    );
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    let secret = body["webhook_secret"].as_str().expect("a webhook secret");
    assert!(secret.starts_with("whsec_"), "{secret}");
    (body["id"].as_str().unwrap().to_string(), secret.to_string())
}

fn patch(target: &Target, org: &Org, workflow: &str, settings: Value) {
    let reply = target.call(
        "PATCH",
        &format!("/api/v1/workflows/{workflow}"),
        Some(&org.owner_key),
        Some(&settings),
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The `webhook-signature` the Standard Webhooks library makes for this delivery.
fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    Webhook::new(secret)
        .expect("a whsec_ secret")
        .sign(id, timestamp, body.as_bytes())
        .expect("a signature")
}

/// Posts a Standard Webhooks delivery; `None` leaves a header out.
fn deliver(
    target: &Target,
    workflow: &str,
    id: Option<&str>,
    timestamp: Option<i64>,
    signature: Option<&str>,
    body: &str,
) -> Reply {
    let timestamp = timestamp.map(|t| t.to_string());
    let mut headers = vec![("content-type", "application/json")];
    if let Some(id) = id {
        headers.push(("webhook-id", id));
    }
    if let Some(timestamp) = &timestamp {
        headers.push(("webhook-timestamp", timestamp));
    }
    if let Some(signature) = signature {
        headers.push(("webhook-signature", signature));
    }
    target.request(
        "POST",
        &format!("/hooks/{workflow}"),
        &headers,
        Some(body.as_bytes()),
    )
}

/// A correctly signed Standard Webhooks delivery of `body`, sent now.
fn deliver_signed(target: &Target, workflow: &str, secret: &str, id: &str, body: &str) -> Reply {
    let now = now_secs();
    let signature = sign(secret, id, now, body);
    deliver(
        target,
        workflow,
        Some(id),
        Some(now),
        Some(&signature),
        body,
    )
}

/// Posts a GitHub-style delivery with this `X-Hub-Signature-256`.
fn deliver_github(target: &Target, workflow: &str, delivery: &str, signature: &str) -> Reply {
    target.request(
        "POST",
        &format!("/hooks/{workflow}"),
        &[
            ("content-type", "application/json"),
            ("x-github-event", "push"),
            ("x-github-delivery", delivery),
            ("x-hub-signature-256", signature),
        ],
        Some(BODY.as_bytes()),
    )
}

/// GitHub's signature: hex HMAC-SHA256 of the body keyed by the secret's bytes.
fn github_signature(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// How many runs of `workflow` are stored.
fn runs(target: &Target, org: &Org, workflow: &str) -> i64 {
    let reply = target.call(
        "GET",
        &format!("/api/v1/executions?workflow_id={workflow}"),
        Some(&org.owner_key),
        None,
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()["total"].as_i64().expect("a total")
}

/// Checks the `202` of a started run and returns the run's id.
fn accepted(reply: &Reply) -> String {
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    let id = body["execution_id"].as_str().expect("an execution id");
    assert_eq!(body["status"], "running");
    assert_eq!(body["status_url"], format!("/api/v1/executions/{id}"));
    id.to_string()
}

#[test]
fn a_delivery_signed_by_the_standard_webhooks_library_starts_a_run() {
    let target = shared();
    let org = target.create_org("hooks-accepted");
    let (workflow, secret) = create_workflow(target, &org, &greeter("Greeter"));
    let id = accepted(&deliver_signed(target, &workflow, &secret, "msg_1", BODY));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["inputs"], json!({"name": "Ada"}));
    assert_eq!(run["output"], json!({"greeting": "Hello Ada"}));
    assert_eq!(runs(target, &org, &workflow), 1);
}

#[test]
fn any_one_matching_signature_in_the_list_is_enough() {
    let target = shared();
    let org = target.create_org("hooks-rotation");
    let (workflow, secret) = create_workflow(target, &org, &greeter("Greeter"));
    let now = now_secs();
    let stale_key = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_rot",
        now,
        BODY,
    );
    let good = sign(&secret, "msg_rot", now, BODY);
    let reply = deliver(
        target,
        &workflow,
        Some("msg_rot"),
        Some(now),
        Some(&format!("{stale_key} {good}")),
        BODY,
    );
    accepted(&reply);
}

#[test]
fn bad_missing_or_stale_signatures_are_refused_and_start_nothing() {
    let target = shared();
    let org = target.create_org("hooks-refused");
    let (workflow, secret) = create_workflow(target, &org, &greeter("Greeter"));
    let now = now_secs();

    // Signed with another secret.
    let other = sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_a", now, BODY);
    deliver(
        target,
        &workflow,
        Some("msg_a"),
        Some(now),
        Some(&other),
        BODY,
    )
    .assert_error(401, "unauthenticated");
    // Signed for another body.
    let tampered = sign(&secret, "msg_b", now, r#"{"name": "Eve"}"#);
    deliver(
        target,
        &workflow,
        Some("msg_b"),
        Some(now),
        Some(&tampered),
        BODY,
    )
    .assert_error(401, "unauthenticated");
    // No signature, or no id or timestamp.
    deliver(target, &workflow, Some("msg_c"), Some(now), None, BODY)
        .assert_error(401, "unauthenticated");
    let good = sign(&secret, "msg_d", now, BODY);
    deliver(target, &workflow, None, Some(now), Some(&good), BODY)
        .assert_error(401, "unauthenticated");
    deliver(target, &workflow, Some("msg_d"), None, Some(&good), BODY)
        .assert_error(401, "unauthenticated");
    // Correctly signed, but ten minutes old (or ahead).
    for sent in [now - 600, now + 600] {
        let signature = sign(&secret, "msg_e", sent, BODY);
        deliver(
            target,
            &workflow,
            Some("msg_e"),
            Some(sent),
            Some(&signature),
            BODY,
        )
        .assert_error(401, "unauthenticated");
    }
    assert_eq!(runs(target, &org, &workflow), 0);

    // None of those used up an id: the genuine delivery still starts a run.
    accepted(&deliver_signed(target, &workflow, &secret, "msg_e", BODY));
    assert_eq!(runs(target, &org, &workflow), 1);
}

#[test]
fn the_same_webhook_id_twice_starts_one_run() {
    let target = shared();
    let org = target.create_org("hooks-replay");
    let (workflow, secret) = create_workflow(target, &org, &greeter("Greeter"));
    let now = now_secs();
    let signature = sign(&secret, "msg_once", now, BODY);
    accepted(&deliver(
        target,
        &workflow,
        Some("msg_once"),
        Some(now),
        Some(&signature),
        BODY,
    ));
    // The identical request again, then re-signed with a fresh timestamp.
    deliver(
        target,
        &workflow,
        Some("msg_once"),
        Some(now),
        Some(&signature),
        BODY,
    )
    .assert_error(409, "conflict");
    deliver_signed(target, &workflow, &secret, "msg_once", BODY).assert_error(409, "conflict");
    assert_eq!(runs(target, &org, &workflow), 1);
    // Another id is another delivery.
    accepted(&deliver_signed(
        target,
        &workflow,
        &secret,
        "msg_twice",
        BODY,
    ));
    assert_eq!(runs(target, &org, &workflow), 2);
}

#[test]
fn a_github_workflow_checks_x_hub_signature_256() {
    let target = shared();
    let org = target.create_org("hooks-github");
    let (workflow, secret) = create_workflow(target, &org, &greeter("Greeter"));
    patch(target, &org, &workflow, json!({"webhook_scheme": "github"}));

    let wrong = github_signature("not-the-secret", BODY);
    deliver_github(target, &workflow, "delivery-1", &wrong).assert_error(401, "unauthenticated");
    // A Standard Webhooks signature does not count for a GitHub workflow.
    deliver_signed(target, &workflow, &secret, "delivery-1", BODY)
        .assert_error(401, "unauthenticated");
    assert_eq!(runs(target, &org, &workflow), 0);

    let good = github_signature(&secret, BODY);
    let id = accepted(&deliver_github(target, &workflow, "delivery-1", &good));
    let run = target.finished(&org, &id);
    assert_eq!(run["output"], json!({"greeting": "Hello Ada"}), "{run}");
    // X-GitHub-Delivery is the replay id.
    deliver_github(target, &workflow, "delivery-1", &good).assert_error(409, "conflict");
    assert_eq!(runs(target, &org, &workflow), 1);
}

/// The scheme may be set on create and by a PUT too, not only by a PATCH.
#[test]
fn the_github_scheme_is_taken_on_create_and_on_put() {
    let target = shared();
    let org = target.create_org("hooks-github-create");
    let mut definition = greeter("Greeter");
    definition["webhook_scheme"] = json!("github");
    let (workflow, secret) = create_workflow(target, &org, &definition);
    deliver_signed(target, &workflow, &secret, "std-1", BODY).assert_error(401, "unauthenticated");
    accepted(&deliver_github(
        target,
        &workflow,
        "gh-create",
        &github_signature(&secret, BODY),
    ));

    // A standard workflow turned into a GitHub one by a new version.
    let (workflow, secret) = create_workflow(target, &org, &greeter("Greeter"));
    let put = target.call(
        "PUT",
        &format!("/api/v1/workflows/{workflow}"),
        Some(&org.owner_key),
        Some(&definition),
    );
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    assert_eq!(put.json()["webhook_scheme"], "github");
    deliver_signed(target, &workflow, &secret, "std-2", BODY).assert_error(401, "unauthenticated");
    accepted(&deliver_github(
        target,
        &workflow,
        "gh-put",
        &github_signature(&secret, BODY),
    ));
    assert_eq!(runs(target, &org, &workflow), 1);
}

/// `POST /api/v1/workflows/:id/webhook-secret` as the owner; returns the new secret.
fn rotate_secret(target: &Target, org: &Org, workflow: &str) -> String {
    let reply = target.call(
        "POST",
        &format!("/api/v1/workflows/{workflow}/webhook-secret"),
        Some(&org.owner_key),
        None,
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()["webhook_secret"]
        .as_str()
        .expect("the new secret")
        .to_string()
}

#[test]
fn after_a_secret_rotation_the_old_secret_is_refused_and_the_new_one_starts_runs() {
    let target = shared();
    let org = target.create_org("hooks-rotated");
    let (workflow, old) = create_workflow(target, &org, &greeter("Greeter"));
    accepted(&deliver_signed(target, &workflow, &old, "msg_before", BODY));

    let new = rotate_secret(target, &org, &workflow);
    assert_ne!(new, old);
    deliver_signed(target, &workflow, &old, "msg_old", BODY).assert_error(401, "unauthenticated");
    // A refused delivery does not use up its id: the same id signed with the
    // new secret is accepted.
    let id = accepted(&deliver_signed(target, &workflow, &new, "msg_old", BODY));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "completed");
    assert_eq!(run["trigger_kind"], "webhook");
    assert_eq!(runs(target, &org, &workflow), 2);

    // GitHub workflows sign with the same secret: the rotation holds there too.
    patch(target, &org, &workflow, json!({"webhook_scheme": "github"}));
    let newest = rotate_secret(target, &org, &workflow);
    deliver_github(target, &workflow, "gh-1", &github_signature(&new, BODY))
        .assert_error(401, "unauthenticated");
    accepted(&deliver_github(
        target,
        &workflow,
        "gh-1",
        &github_signature(&newest, BODY),
    ));
    assert_eq!(runs(target, &org, &workflow), 3);
}

#[test]
fn an_inactive_workflow_is_a_conflict() {
    let target = shared();
    let org = target.create_org("hooks-inactive");
    let (workflow, secret) = create_workflow(target, &org, &greeter("Greeter"));
    patch(target, &org, &workflow, json!({"is_active": false}));
    deliver_signed(target, &workflow, &secret, "msg_1", BODY).assert_error(409, "conflict");
    assert_eq!(runs(target, &org, &workflow), 0);
    // Reactivated, the same delivery is accepted: the refusal kept no receipt.
    patch(target, &org, &workflow, json!({"is_active": true}));
    accepted(&deliver_signed(target, &workflow, &secret, "msg_1", BODY));
}

#[test]
fn an_unknown_or_deleted_workflow_is_not_found() {
    let target = shared();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    deliver_signed(target, "no-such-workflow", secret, "msg_1", BODY)
        .assert_error(404, "not_found");

    let org = target.create_org("hooks-deleted");
    let (workflow, secret) = create_workflow(target, &org, &greeter("Greeter"));
    let reply = target.call(
        "DELETE",
        &format!("/api/v1/workflows/{workflow}"),
        Some(&org.owner_key),
        None,
    );
    assert_eq!(reply.status, 204);
    deliver_signed(target, &workflow, &secret, "msg_1", BODY).assert_error(404, "not_found");
}

#[test]
fn a_body_that_is_not_json_is_a_bad_request() {
    let target = shared();
    let org = target.create_org("hooks-not-json");
    let (workflow, secret) = create_workflow(target, &org, &greeter("Greeter"));
    deliver_signed(target, &workflow, &secret, "msg_1", "name=Ada")
        .assert_error(400, "bad_request");
    assert_eq!(runs(target, &org, &workflow), 0);
}

#[test]
fn declared_trigger_inputs_are_checked() {
    let target = shared();
    let org = target.create_org("hooks-inputs");
    let mut definition = greeter("Typed greeter");
    definition["nodes"][0]["config"] =
        json!({"inputs": {"name": {"type": "string", "required": true}}});
    let (workflow, secret) = create_workflow(target, &org, &definition);
    deliver_signed(target, &workflow, &secret, "msg_1", r#"{"name": 7}"#)
        .assert_error(422, "validation_failed");
    deliver_signed(target, &workflow, &secret, "msg_2", "{}")
        .assert_error(422, "validation_failed");
    assert_eq!(runs(target, &org, &workflow), 0);
    accepted(&deliver_signed(target, &workflow, &secret, "msg_3", BODY));
}
