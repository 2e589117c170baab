//! `GET /metrics`: guarded by the metrics token, parsed with a Prometheus
//! text parser, and checked against what the suite did between two scrapes.
//! One test only, so nothing else in this binary moves the counters.

use fake_llm::Reply;
use prometheus_parse::{Scrape, Value as Metric};
use serde_json::{Value, json};
use spindle_suite::{
    METRICS_TOKEN, Target, configured, fake_llm, fake_turn, shared, suite_variables,
};

fn scrape(target: &Target) -> Scrape {
    let authorization = format!("Bearer {METRICS_TOKEN}");
    let reply = target.request(
        "GET",
        "/metrics",
        &[("authorization", &authorization)],
        None,
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = String::from_utf8(reply.body).expect("UTF-8");
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("the Prometheus text format")
}

/// The value of a counter or gauge sample with exactly these labels (0 when absent).
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .filter(|s| s.labels.len() == labels.len())
        .map(|s| match s.value {
            Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// A histogram's buckets (bound, cumulative count) for these labels.
fn buckets(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .find_map(|s| match &s.value {
            Metric::Histogram(counts) => {
                Some(counts.iter().map(|c| (c.less_than, c.count)).collect())
            }
            _ => None,
        })
        .unwrap_or_default()
}

fn agent_call(target: &Target, token: &str, agent: &str) -> Value {
    target
        .call(
            "POST",
            &format!("/api/v1/agents/{agent}/execute"),
            Some(token),
            Some(&json!({"task": "count"})),
        )
        .json()
}

#[test]
fn metrics_are_guarded_parse_and_agree_with_what_happened() {
    let _turn = fake_turn();
    let target = shared();
    target
        .request("GET", "/metrics", &[], None)
        .assert_error(401, "unauthenticated");
    target
        .request(
            "GET",
            "/metrics",
            &[("authorization", "Bearer wrong")],
            None,
        )
        .assert_error(401, "unauthenticated");
    let mut without = suite_variables();
    without.remove("metrics_token");
    {
        let off = configured(without);
        let authorization = format!("Bearer {METRICS_TOKEN}");
        off.request(
            "GET",
            "/metrics",
            &[("authorization", &authorization)],
            None,
        )
        .assert_error(403, "feature_disabled");
    }

    let before = scrape(target);
    let org = target.create_org("metrics");
    let agent = target.create_agent(&org);
    let budget = target.call(
        "PUT",
        "/api/v1/usage/budgets/org/current",
        Some(&org.owner_key),
        Some(&json!({"period": "month", "limit": 50_000_000, "action": "alert"})),
    );
    assert_eq!(
        budget.status,
        201,
        "{}",
        String::from_utf8_lossy(&budget.body)
    );
    fake_llm().push(Reply::text("one").tokens(100, 10));
    fake_llm().push(Reply::text("two").tokens(200, 20));
    fake_llm().push(Reply::error(400, "refused"));
    let calls: Vec<Value> = (0..3)
        .map(|_| agent_call(target, &org.owner_key, &agent))
        .collect();
    assert_eq!(calls[2]["status"], "failed");
    let workflow = target.create(
        &org,
        "/api/v1/workflows",
        &json!({"name": "Measured", "nodes": [
            {"id": "start", "type": "trigger"},
            {"id": "write", "type": "agent", "config": {"agent_id": agent, "prompt": "write"}},
            {"id": "shape", "type": "transform", "config": {"template": "{{ previous_output }}!"}}
        ], "edges": [{"source": "start", "target": "write"}, {"source": "write", "target": "shape"}]}),
    );
    fake_llm().push(Reply::text("three").tokens(300, 30));
    let id = target.start_run(&org, &workflow, json!({}));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    let after = scrape(target);

    let delta = |metric: &str, labels: &[(&str, &str)]| {
        value(&after, metric, labels) - value(&before, metric, labels)
    };
    let series = [("provider", "openai"), ("model", "gpt-4o-mini")];
    let with = |extra: (&'static str, &'static str)| {
        let mut labels = series.to_vec();
        labels.push(extra);
        labels
    };
    assert_eq!(
        delta(
            "spindle_provider_calls_total",
            &with(("status", "succeeded"))
        ),
        3.0
    );
    assert_eq!(
        delta("spindle_provider_calls_total", &with(("status", "failed"))),
        1.0
    );
    assert_eq!(
        delta(
            "spindle_provider_tokens_total",
            &with(("direction", "input"))
        ),
        600.0
    );
    assert_eq!(
        delta(
            "spindle_provider_tokens_total",
            &with(("direction", "output"))
        ),
        60.0
    );
    let billed: i64 = calls
        .iter()
        .map(|c| c["cost"]["billed_micros"].as_i64().unwrap())
        .sum::<i64>()
        + run["cost"]["billed_micros"].as_i64().unwrap();
    assert!(billed > 0);
    assert_eq!(
        delta(
            "spindle_provider_cost_micros_total",
            &with(("kind", "billed"))
        ),
        billed as f64,
        "the billed counter is the sum of what the API reported"
    );
    assert_eq!(
        delta(
            "spindle_steps_finished_total",
            &[("node_type", "agent"), ("status", "completed")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "spindle_steps_finished_total",
            &[("node_type", "transform"), ("status", "completed")]
        ),
        1.0
    );
    assert!(value(&after, "spindle_executions", &[("status", "completed")]) >= 1.0);
    assert_eq!(delta("spindle_executions", &[("status", "completed")]), 1.0);

    for (metric, labels, count_metric, count) in [
        (
            "spindle_provider_latency_seconds",
            vec![("provider", "openai")],
            "spindle_provider_latency_seconds_count",
            4.0,
        ),
        (
            "spindle_step_duration_seconds",
            vec![("node_type", "agent")],
            "spindle_step_duration_seconds_count",
            1.0,
        ),
    ] {
        let buckets = buckets(&after, metric, &labels);
        assert!(!buckets.is_empty(), "{metric} has buckets");
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{metric}: cumulative, ordered"
        );
        let (last_bound, last_count) = *buckets.last().unwrap();
        assert!(last_bound.is_infinite());
        assert_eq!(
            last_count,
            value(&after, count_metric, &labels),
            "{metric}: +Inf equals the count"
        );
        assert_eq!(
            value(&after, count_metric, &labels) - value(&before, count_metric, &labels),
            count,
            "{metric}"
        );
    }
    assert!(
        after
            .docs
            .contains_key("spindle_oldest_queued_step_age_seconds")
    );

    let budget_labels = [
        ("org_id", org.id.as_str()),
        ("scope", "org"),
        ("scope_id", org.id.as_str()),
        ("period", "month"),
        ("action", "alert"),
    ];
    let listed = target
        .call("GET", "/api/v1/usage/budgets", Some(&org.owner_key), None)
        .json();
    let spent = listed["data"][0]["spent_micros"].as_i64().unwrap();
    assert_eq!(spent, billed, "the budget counted every billed call");
    assert_eq!(
        value(&after, "spindle_budget_spend_micros", &budget_labels),
        spent as f64
    );
    assert_eq!(
        value(&after, "spindle_budget_limit_micros", &budget_labels),
        50_000_000.0
    );
    assert_eq!(
        value(&after, "spindle_budget_reserved_micros", &budget_labels),
        0.0
    );
}
