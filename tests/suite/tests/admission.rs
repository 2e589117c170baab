//! Provider admission: per-organisation limits on requests and tokens per
//! minute, and a burst of runs that never turns into provider 429s.

use serde_json::json;
use spindle_suite::{fake_llm, fake_turn, shared};
use std::time::{Duration, Instant};

#[test]
fn limits_are_set_listed_validated_and_removed_per_organisation() {
    let target = shared();
    let org = target.create_org("limits");
    let other = target.create_org("limits-other");
    let put = |token: &str, provider: &str, body: serde_json::Value| {
        target.call(
            "PUT",
            &format!("/api/v1/usage/limits/{provider}"),
            Some(token),
            Some(&body),
        )
    };
    let listed = |token: &str| {
        target
            .call("GET", "/api/v1/usage/limits", Some(token), None)
            .json()["data"]
            .clone()
    };
    let set = put(
        &org.owner_key,
        "openai",
        json!({"requests_per_minute": 600, "tokens_per_minute": 90000}),
    );
    assert_eq!(set.status, 200, "{}", String::from_utf8_lossy(&set.body));
    assert_eq!(set.json()["requests_per_minute"], 600);
    assert_eq!(listed(&org.owner_key).as_array().unwrap().len(), 1);
    assert_eq!(listed(&org.owner_key)[0]["tokens_per_minute"], 90000);
    assert!(
        listed(&other.owner_key).as_array().unwrap().is_empty(),
        "another organisation sees nothing"
    );

    for bad in [
        json!({"requests_per_minute": 0}),
        json!({"requests_per_minute": -5}),
        json!({"tokens_per_minute": "many"}),
        json!({"requests_per_minute": 1.5}),
        json!({"tokens_per_minute": 100_000_001}),
    ] {
        put(&org.owner_key, "openai", bad).assert_error(422, "validation_failed");
    }
    put(&org.owner_key, "openai", json!({"per_hour": 5})).assert_error(400, "bad_request");
    target
        .request(
            "PUT",
            "/api/v1/usage/limits/openai",
            &[
                ("authorization", &format!("Bearer {}", org.owner_key)),
                ("content-type", "application/json"),
            ],
            Some(b"{not json"),
        )
        .assert_error(400, "bad_request");
    put(&org.owner_key, "skynet", json!({"requests_per_minute": 5})).assert_error(404, "not_found");
    let (_, viewer) = target.create_key(&org.owner_key, "viewer");
    put(&viewer, "openai", json!({"requests_per_minute": 5})).assert_error(403, "forbidden");
    assert_eq!(
        listed(&org.owner_key)[0]["requests_per_minute"],
        600,
        "nothing changed"
    );

    // Up to 10^8; a field left out or `null` is no limit.
    let set = put(
        &org.owner_key,
        "openai",
        json!({"requests_per_minute": 100_000_000, "tokens_per_minute": null}),
    );
    assert_eq!(set.status, 200, "{}", String::from_utf8_lossy(&set.body));
    assert_eq!(set.json()["requests_per_minute"], 100_000_000);
    assert_eq!(set.json()["tokens_per_minute"], serde_json::Value::Null);
    let set = put(&org.owner_key, "openai", json!({"tokens_per_minute": 5}));
    assert_eq!(set.status, 200, "{}", String::from_utf8_lossy(&set.body));
    assert_eq!(
        listed(&org.owner_key)[0]["requests_per_minute"],
        serde_json::Value::Null
    );
    assert_eq!(listed(&org.owner_key)[0]["tokens_per_minute"], 5);

    let removed = target.call(
        "DELETE",
        "/api/v1/usage/limits/openai",
        Some(&org.owner_key),
        None,
    );
    assert_eq!(removed.status, 204);
    assert!(listed(&org.owner_key).as_array().unwrap().is_empty());
    target
        .call(
            "DELETE",
            "/api/v1/usage/limits/openai",
            Some(&org.owner_key),
            None,
        )
        .assert_error(404, "not_found");
}

#[test]
fn fifty_runs_under_a_limit_complete_without_one_provider_429() {
    let _turn = fake_turn();
    let target = shared();
    // The provider allows 10 requests a second; the organisation asks for 9.
    fake_llm().set_rate_limit(Some(10));
    let org = target.create_org("admission");
    let limits = target.call(
        "PUT",
        "/api/v1/usage/limits/openai",
        Some(&org.owner_key),
        Some(&json!({"requests_per_minute": 540})),
    );
    assert_eq!(limits.status, 200);
    let agent = target.create_agent(&org);
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({"name": "Burst", "nodes": [
            {"id": "start", "type": "trigger"},
            {"id": "ask", "type": "agent", "config": {"agent_id": agent, "prompt": "run {{ trigger.n }}"}}
        ], "edges": [{"source": "start", "target": "ask"}]}),
    );
    let ids: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|n| {
                let (org, workflow) = (&org, &workflow);
                scope.spawn(move || target.start_run(org, workflow, json!({"n": n})))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let _ticker = target.tick_every(Duration::from_millis(200));
    let deadline = Instant::now() + Duration::from_secs(90);
    for id in &ids {
        let left = deadline.saturating_duration_since(Instant::now());
        let run = target.finished_within(&org, id, left);
        assert_eq!(run["status"], "completed", "{run}");
    }
    let rate_limited = fake_llm().rate_limited();
    fake_llm().set_rate_limit(None);
    assert_eq!(
        rate_limited, 0,
        "no request was sent past the provider's limit"
    );
    assert_eq!(fake_llm().received().len(), 50, "one provider call per run");
}

#[test]
fn a_direct_call_past_the_limit_is_429_with_retry_after_and_reaches_no_provider() {
    let _turn = fake_turn();
    let target = shared();
    let org = target.create_org("admission-api");
    let agent = target.create_agent(&org);
    let limits = target.call(
        "PUT",
        "/api/v1/usage/limits/openai",
        Some(&org.owner_key),
        Some(&json!({"requests_per_minute": 1})),
    );
    assert_eq!(limits.status, 200);
    let call = || {
        target.call(
            "POST",
            &format!("/api/v1/agents/{agent}/execute"),
            Some(&org.owner_key),
            Some(&json!({"task": "hello"})),
        )
    };
    let first = call();
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(first.json()["status"], "completed");
    // The next slot is a minute away, past the call's 20 s of waiting.
    let second = call();
    second.assert_error(429, "rate_limited");
    let retry_after: u64 = second
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(
        fake_llm().received().len(),
        1,
        "the refused call reached no provider"
    );
}
