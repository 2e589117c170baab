//! Spin variables of the Configuration table that change what the API does:
//! `rate_limit_per_minute`, `provider_timeout_ms`, and keys or values too
//! short or malformed to use (`tick_key`, `metrics_token`, `internal_key`,
//! `billing_markup_percent`). Each configuration is one app of its own,
//! shared by the tests that need it.

use fake_llm::Reply;
use jwt_simple::prelude::*;
use serde_json::{Value, json};
use spindle_suite::{
    JWT_AUDIENCE, JWT_ISSUER, JWT_SECRET, Org, Reply as Answer, Target, configured, fake_llm,
    fake_turn, now_ms, step, suite_variables,
};
use std::sync::OnceLock;

/// The suite's variables with `changes` applied.
fn app_with(changes: &[(&str, &str)]) -> Target {
    let mut variables = suite_variables();
    for (name, value) in changes {
        variables.insert((*name).to_string(), (*value).to_string());
    }
    configured(variables)
}

// --- rate_limit_per_minute ---------------------------------------------------

/// The app-wide per-subject limit these tests run under.
const LIMIT: usize = 3;

fn rate_limited_app() -> &'static Target {
    static APP: OnceLock<Target> = OnceLock::new();
    APP.get_or_init(|| app_with(&[("rate_limit_per_minute", &LIMIT.to_string())]))
}

/// Runs `attempt`, which must count from fresh subjects (a new organisation),
/// until one run of it falls within a single UTC minute by this machine's
/// clock (the app's too), the window the limit counts in; returns that run's
/// result and its minute. A run that straddles a minute boundary saw the
/// count restart midway and proves nothing, so it is thrown away; two in a
/// row cannot straddle one, as each takes far less than a minute.
fn within_one_utc_minute<T>(mut attempt: impl FnMut() -> T) -> (T, i64) {
    for _ in 0..3 {
        let minute = now_ms() / 60_000;
        let result = attempt();
        if now_ms() / 60_000 == minute {
            return (result, minute);
        }
    }
    panic!("three runs in a row each straddled a UTC minute boundary")
}

/// A request as sent and answered, with the local times around it.
struct Timed {
    reply: Answer,
    sent_ms: i64,
    received_ms: i64,
}

fn timed(send: impl FnOnce() -> Answer) -> Timed {
    let sent_ms = now_ms();
    let reply = send();
    Timed {
        reply,
        sent_ms,
        received_ms: now_ms(),
    }
}

fn current_org(target: &Target, token: &str) -> Timed {
    timed(|| target.call("GET", "/api/v1/orgs/current", Some(token), None))
}

fn statuses(requests: &[Timed]) -> Vec<u16> {
    requests.iter().map(|r| r.reply.status).collect()
}

/// Asserts a `429 rate_limited` whose `Retry-After` ends exactly the UTC
/// minute `minute` the refused request fell in: retrying after it lands in
/// the next minute, and a second less would not have.
fn assert_limited_until_the_minute_ends(limited: &Timed, minute: i64) {
    limited.reply.assert_error(429, "rate_limited");
    let retry_after: i64 = limited
        .reply
        .header("retry-after")
        .expect("a Retry-After header")
        .parse()
        .expect("Retry-After in whole seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let next_minute = (minute + 1) * 60_000;
    assert!(
        limited.received_ms + retry_after * 1000 >= next_minute,
        "retrying after {retry_after} s is in the next minute"
    );
    assert!(
        limited.sent_ms + (retry_after - 1) * 1000 < next_minute,
        "{retry_after} s is no more than the rest of the minute, rounded up"
    );
}

#[test]
fn a_key_without_its_own_limit_is_refused_past_rate_limit_per_minute_within_the_utc_minute() {
    let target = rate_limited_app();
    let ((owner, generous, stranger), minute) = within_one_utc_minute(|| {
        let org = target.create_org("rate-limited");
        // The owner key has no limit of its own: the app's 3 apply. Its
        // first request makes a key whose own limit is above the app's.
        let created = timed(|| {
            target.call(
                "POST",
                "/api/v1/api-keys",
                Some(&org.owner_key),
                Some(&json!({"name": "generous", "role": "viewer", "rate_limit_per_minute": 10})),
            )
        });
        assert_eq!(created.reply.status, 201, "{}", created.reply.json());
        let secret = created.reply.json()["secret"].as_str().unwrap().to_string();
        let mut owner = vec![created];
        owner.extend((0..LIMIT).map(|_| current_org(target, &org.owner_key)));
        let generous: Vec<Timed> = (0..LIMIT + 2)
            .map(|_| current_org(target, &secret))
            .collect();
        // Another organisation's owner key is another subject, counted apart.
        let other = target.create_org("rate-limited-other");
        let stranger = current_org(target, &other.owner_key);
        (owner, generous, stranger)
    });
    assert_eq!(statuses(&owner), [201, 200, 200, 429]);
    assert_limited_until_the_minute_ends(&owner[LIMIT], minute);
    assert_eq!(
        statuses(&generous),
        [200; LIMIT + 2],
        "a key's own limit replaces the app's"
    );
    assert_eq!(stranger.reply.status, 200);
}

#[derive(Serialize, Deserialize)]
struct OrgClaims {
    org: String,
    role: String,
}

/// An HS256 token signed with the app's `jwt_secret`, as an identity
/// provider sharing it would issue, for `subject` in `org` as an owner;
/// valid for `valid_secs`.
fn signed_token(org: &Org, subject: &str, valid_secs: u64) -> String {
    let claims = Claims::with_custom_claims(
        OrgClaims {
            org: org.id.clone(),
            role: "owner".into(),
        },
        Duration::from_secs(valid_secs),
    )
    .with_subject(subject)
    .with_issuer(JWT_ISSUER)
    .with_audience(JWT_AUDIENCE);
    HS256Key::from_bytes(JWT_SECRET.as_bytes())
        .authenticate(claims)
        .unwrap()
}

#[test]
fn tokens_are_counted_per_subject_not_per_token() {
    let target = rate_limited_app();
    let ((alice, alice_again, bob), minute) = within_one_utc_minute(|| {
        let org = target.create_org("rate-limited-tokens");
        let first = signed_token(&org, "alice", 600);
        let alice: Vec<Timed> = (0..=LIMIT).map(|_| current_org(target, &first)).collect();
        // Another token for the same subject: a different string, the same count.
        let second = signed_token(&org, "alice", 900);
        assert_ne!(first, second);
        let alice_again = current_org(target, &second);
        let bob = current_org(target, &signed_token(&org, "bob", 600));
        (alice, alice_again, bob)
    });
    assert_eq!(statuses(&alice), [200, 200, 200, 429]);
    assert_limited_until_the_minute_ends(&alice[LIMIT], minute);
    assert_limited_until_the_minute_ends(&alice_again, minute);
    assert_eq!(bob.reply.status, 200, "another subject is counted apart");
}

#[test]
fn a_minted_token_shares_its_keys_count_as_the_same_subject() {
    let target = rate_limited_app();
    let ((token_requests, key_after, subject), minute) = within_one_utc_minute(|| {
        let org = target.create_org("rate-limited-minted");
        // The exchange is the key's first request of the minute.
        let minted = target.call(
            "POST",
            "/api/v1/auth/token",
            Some(&org.owner_key),
            Some(&json!({"ttl_seconds": 600})),
        );
        assert_eq!(minted.status, 200, "{}", minted.json());
        let token = minted.json()["access_token"].as_str().unwrap().to_string();
        let token_requests: Vec<Timed> = (0..LIMIT).map(|_| current_org(target, &token)).collect();
        let key_after = current_org(target, &org.owner_key);
        // The token's subject, read from the token itself.
        let subject = HS256Key::from_bytes(JWT_SECRET.as_bytes())
            .verify_token::<OrgClaims>(&token, None)
            .expect("the app signs its tokens with jwt_secret")
            .subject;
        (token_requests, key_after, subject)
    });
    assert!(subject.is_some_and(|s| !s.is_empty()), "a token has a sub");
    // A token stands for the key it was exchanged for: one subject, one
    // count. The exchange and two of the token's requests make 3.
    assert_eq!(statuses(&token_requests), [200, 200, 429]);
    assert_limited_until_the_minute_ends(&token_requests[LIMIT - 1], minute);
    assert_limited_until_the_minute_ends(&key_after, minute);
}

// --- provider_timeout_ms -------------------------------------------------------

/// How long this app lets a provider take to start answering.
const PROVIDER_TIMEOUT_MS: &str = "800";

/// How late the fake starts each answer: far past the app's timeout.
const LATE: std::time::Duration = std::time::Duration::from_secs(3);

fn impatient_app() -> &'static Target {
    static APP: OnceLock<Target> = OnceLock::new();
    APP.get_or_init(|| app_with(&[("provider_timeout_ms", PROVIDER_TIMEOUT_MS)]))
}

#[test]
fn a_direct_call_to_a_provider_slower_than_provider_timeout_ms_fails_with_provider_timeout() {
    let _turn = fake_turn();
    let target = impatient_app();
    let org = target.create_org("provider-timeout");
    let agent = target.create_agent(&org);
    // A direct call retries a timeout up to 3 times: one late answer per call,
    // and none beyond: a fifth call would get the fake's
    // immediate default answer and complete the run.
    for _ in 0..4 {
        fake_llm().push(Reply::text("too late").after(LATE));
    }
    let reply = target.call(
        "POST",
        &format!("/api/v1/agents/{agent}/execute"),
        Some(&org.owner_key),
        Some(&json!({"task": "go"})),
    );
    assert_eq!(reply.status, 200, "{}", reply.json());
    let execution = reply.json();
    assert_eq!(execution["status"], "failed", "{execution}");
    assert_eq!(
        execution["error"]["code"], "provider_timeout",
        "{execution}"
    );
    assert_eq!(
        execution["usage"]["provider_calls"], 4,
        "one call and three retries"
    );
    assert_eq!(fake_llm().received().len(), 4);
    assert_eq!(fake_llm().remaining(), 0);
    let records = target.usage_records(
        &org,
        &format!("agent_execution_id={}", execution["id"].as_str().unwrap()),
    );
    let outcomes: Vec<Value> = records
        .iter()
        .map(|r| json!([r["status"], r["error_code"], r["billed_cost_micros"]]))
        .collect();
    assert_eq!(
        outcomes,
        vec![json!(["failed", "provider_timeout", 0]); 4],
        "every call timed out and none is billed"
    );
}

#[test]
fn an_agent_node_without_timeout_ms_is_cut_by_provider_timeout_ms() {
    let _turn = fake_turn();
    let target = impatient_app();
    let org = target.create_org("provider-timeout-node");
    let agent = target.create_agent(&org);
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({"name": "Slow provider", "nodes": [
            {"id": "start", "type": "trigger"},
            {"id": "draft", "type": "agent", "config": {"agent_id": agent, "prompt": "Write"}},
            {"id": "done", "type": "output", "config": {"value": "{{ previous_output }}"}}
        ], "edges": [
            {"source": "start", "target": "draft"},
            {"source": "draft", "target": "done"}
        ]}),
    );
    // No `retry` on the node: an agent node's default of 3 attempts, each one call.
    for _ in 0..3 {
        fake_llm().push(Reply::text("too late").after(LATE));
    }
    let id = target.start_run(&org, &workflow, json!({}));
    let run = target.finished_ticking(&org, &id);
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["failed_node"], "draft");
    assert_eq!(run["error"]["code"], "provider_timeout", "{run}");
    let draft = step(&run, "draft");
    assert_eq!(draft["error"]["code"], "provider_timeout", "{draft}");
    let attempts: Vec<Value> = draft["attempt_log"]
        .as_array()
        .expect("attempt_log")
        .iter()
        .map(|a| json!([a["status"], a["error"]["code"]]))
        .collect();
    assert_eq!(
        attempts,
        vec![json!(["failed", "provider_timeout"]); 3],
        "{draft}"
    );
    assert_eq!(fake_llm().received().len(), 3);
    assert_eq!(fake_llm().remaining(), 0);
}

// --- keys too short, values malformed ----------------------------------------

/// Ten characters, a third of what a key needs.
const SHORT_TICK_KEY: &str = "tick-key10";
const SHORT_INTERNAL_KEY: &str = "intkey-10c";
const SHORT_METRICS_TOKEN: &str = "metrics-token-of-26-chars!";

/// One app with four settings the operator got wrong; each request names
/// the one it needs, so they do not get in each other's way.
fn misconfigured_app() -> &'static Target {
    static APP: OnceLock<Target> = OnceLock::new();
    APP.get_or_init(|| {
        assert!(SHORT_METRICS_TOKEN.chars().count() < 32);
        app_with(&[
            ("tick_key", SHORT_TICK_KEY),
            ("internal_key", SHORT_INTERNAL_KEY),
            ("metrics_token", SHORT_METRICS_TOKEN),
            ("billing_markup_percent", "lots"),
        ])
    })
}

/// Asserts a 503 `misconfigured` whose message and first detail name `variable`.
fn assert_misconfigured(reply: &Answer, variable: &str) {
    reply.assert_error(503, "misconfigured");
    let error = &reply.json()["error"];
    assert!(
        error["message"].as_str().unwrap().contains(variable),
        "{error}"
    );
    assert_eq!(
        error["details"][0]["path"],
        format!("variables.{variable}"),
        "{error}"
    );
}

#[test]
fn a_tick_key_shorter_than_32_characters_is_misconfigured_even_when_presented() {
    let target = misconfigured_app();
    for presented in [SHORT_TICK_KEY, "something-else-entirely"] {
        let authorization = format!("Bearer {presented}");
        let reply = target.request(
            "POST",
            "/internal/tick",
            &[("authorization", &authorization)],
            None,
        );
        assert_misconfigured(&reply, "tick_key");
    }
}

#[test]
fn a_metrics_token_shorter_than_32_characters_is_misconfigured_even_when_presented() {
    let target = misconfigured_app();
    let reply = target.call("GET", "/metrics", Some(SHORT_METRICS_TOKEN), None);
    assert_misconfigured(&reply, "metrics_token");
}

/// Starting a run in `target` (an app whose `internal_key` is wrong) answers
/// `503` at `variables.internal_key` and stores no run.
fn assert_runs_are_refused_and_none_is_stored(target: &Target, org_name: &str) {
    let org = target.create_org(org_name);
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({"name": "Echo", "nodes": [
            {"id": "start", "type": "trigger"},
            {"id": "done", "type": "output", "config": {"value": "hi"}}
        ], "edges": [{"source": "start", "target": "done"}]}),
    );
    let reply = target.call(
        "POST",
        &format!("/api/v1/workflows/{workflow}/execute"),
        Some(&org.owner_key),
        Some(&json!({"inputs": {}})),
    );
    assert_misconfigured(&reply, "internal_key");
    let runs = target
        .call("GET", "/api/v1/executions", Some(&org.owner_key), None)
        .json();
    assert_eq!(runs["total"], 0, "{runs}");
}

#[test]
fn a_short_internal_key_refuses_to_start_a_run_and_stores_none() {
    assert_runs_are_refused_and_none_is_stored(misconfigured_app(), "short-internal-key");
}

#[test]
fn runs_without_an_internal_key_are_misconfigured_and_nothing_is_stored() {
    let mut variables = suite_variables();
    variables.remove("internal_key");
    assert_runs_are_refused_and_none_is_stored(&configured(variables), "no-internal-key");
}

/// README ("Configuration"): a malformed `billing_markup_percent` is `503
/// misconfigured` at `variables.billing_markup_percent` on the requests that
/// need the markup, with nothing half-applied: a direct agent call is
/// refused before its execution is stored.
#[test]
fn a_billing_markup_that_is_not_a_number_is_misconfigured_on_an_agent_call() {
    let _turn = fake_turn();
    let target = misconfigured_app();
    let org = target.create_org("markup-lots");
    let agent = target.create_agent(&org);
    let reply = target.call(
        "POST",
        &format!("/api/v1/agents/{agent}/execute"),
        Some(&org.owner_key),
        Some(&json!({"task": "go"})),
    );
    assert_misconfigured(&reply, "billing_markup_percent");
    // Nothing is half-applied: no provider was called, no run stored.
    assert!(fake_llm().received().is_empty());
    let executions = target
        .call(
            "GET",
            &format!("/api/v1/agents/{agent}/executions"),
            Some(&org.owner_key),
            None,
        )
        .json();
    assert_eq!(executions["total"], 0, "{executions}");
}
