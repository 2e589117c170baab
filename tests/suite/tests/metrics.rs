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
    Scrape::parse(exposition(target).lines().map(|l| Ok(l.to_string())))
        .expect("the Prometheus text format")
}

/// The text of `GET /metrics`.
fn exposition(target: &Target) -> String {
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
    String::from_utf8(reply.body).expect("UTF-8")
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

/// A histogram's buckets (bound, cumulative count) for exactly these labels.
fn buckets(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .filter(|s| s.labels.len() == labels.len())
        .find_map(|s| match &s.value {
            Metric::Histogram(counts) => {
                Some(counts.iter().map(|c| (c.less_than, c.count)).collect())
            }
            _ => None,
        })
        .unwrap_or_default()
}

/// Every label name a sample may carry: each takes a bounded set of values.
const LABELS: [&str; 14] = [
    "status",
    "node_type",
    "provider",
    "model",
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_token_type",
    "error_type",
    "scope",
    "period",
    "action",
    "state",
    "le",
];

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
    let put_budget = |path: &str, body: Value| {
        let reply = target.call("PUT", path, Some(&org.owner_key), Some(&body));
        assert_eq!(
            reply.status,
            201,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    };
    put_budget(
        "/api/v1/usage/budgets/org/current",
        json!({"period": "month", "limit": 50_000_000, "action": "alert"}),
    );
    // One micro-dollar: the agent's first call exhausts it (an alert budget
    // lets the calls go on).
    put_budget(
        &format!("/api/v1/usage/budgets/agent/{agent}"),
        json!({"period": "day", "limit": 1, "action": "alert"}),
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
    // 1% of 1000 micro-dollars: the run's one call reaches the threshold,
    // not the limit.
    put_budget(
        &format!("/api/v1/usage/budgets/workflow/{workflow}"),
        json!({"period": "month", "limit": 1000, "action": "alert", "thresholds": [1]}),
    );
    fake_llm().push(Reply::text("three").tokens(300, 30));
    let id = target.start_run(&org, &workflow, json!({}));
    let run = target.finished(&org, &id);
    assert_eq!(run["status"], "completed", "{run}");
    let text = exposition(target);
    let after =
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("the Prometheus text format");

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

    // Base and billed cost are counters of their own, each equal to what
    // the API reported and to the usage report's totals.
    let reported = |field: &str| -> i64 {
        calls
            .iter()
            .map(|c| c["cost"][field].as_i64().unwrap())
            .sum::<i64>()
            + run["cost"][field].as_i64().unwrap()
    };
    let (base, billed) = (reported("base_micros"), reported("billed_micros"));
    assert!(
        base > 0 && billed > base,
        "a markup applies: {base} {billed}"
    );
    let summary = target
        .call("GET", "/api/v1/usage/summary", Some(&org.owner_key), None)
        .json();
    let totals = &summary["totals"];
    assert_eq!(totals["base_cost_micros"], base, "{summary}");
    assert_eq!(totals["billed_cost_micros"], billed, "{summary}");
    assert_eq!(
        delta("spindle_provider_base_cost_micros_total", &series),
        base as f64,
        "the base counter is the sum of the calls' base cost"
    );
    assert_eq!(
        delta("spindle_provider_billed_cost_micros_total", &series),
        billed as f64,
        "the billed counter is the sum of what was billed"
    );
    assert!(
        after
            .samples
            .iter()
            .filter(|s| s.metric.starts_with("spindle_provider_") && s.metric.contains("cost"))
            .all(|s| s.labels.len() == 2
                && s.labels.get("provider").is_some()
                && s.labels.get("model").is_some()),
        "cost counters are by provider and model only"
    );
    assert!(
        !after
            .docs
            .contains_key("spindle_provider_cost_micros_total")
    );

    // Tokens per call: OpenTelemetry's gen_ai.client.token.usage.
    let gen_ai = [
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "openai"),
        ("gen_ai_request_model", "gpt-4o-mini"),
    ];
    let tokens = |token_type: &'static str| {
        let mut labels = gen_ai.to_vec();
        labels.push(("gen_ai_token_type", token_type));
        labels
    };
    for (token_type, sum, summary_field) in [
        ("input", 600.0, "input_tokens"),
        ("output", 60.0, "output_tokens"),
    ] {
        let labels = tokens(token_type);
        assert_eq!(delta("gen_ai_client_token_usage_sum", &labels), sum);
        assert_eq!(totals[summary_field].as_f64(), Some(sum), "{summary}");
        assert_eq!(
            delta("gen_ai_client_token_usage_count", &labels),
            3.0,
            "{token_type}: one observation per successful call"
        );
    }
    let input_buckets =
        |scrape: &Scrape| buckets(scrape, "gen_ai_client_token_usage", &tokens("input"));
    let bucket_delta = |bound: f64| {
        let count = |scrape: &Scrape| {
            input_buckets(scrape)
                .iter()
                .find(|(le, _)| *le == bound)
                .map_or(0.0, |(_, count)| *count)
        };
        count(&after) - count(&before)
    };
    // 100 and 200 input tokens fit under 256, 300 under 1024.
    assert_eq!(bucket_delta(64.0), 0.0);
    assert_eq!(bucket_delta(256.0), 2.0);
    assert_eq!(bucket_delta(1024.0), 3.0);

    // Call durations: gen_ai.client.operation.duration, in seconds; a failed
    // call carries its error type.
    let mut failed = gen_ai.to_vec();
    let code = calls[2]["error"]["code"].as_str().expect("an error code");
    failed.push(("error_type", code));
    assert_eq!(
        delta("gen_ai_client_operation_duration_seconds_count", &gen_ai),
        3.0
    );
    assert_eq!(
        delta("gen_ai_client_operation_duration_seconds_count", &failed),
        1.0,
        "{text}"
    );
    assert!(
        value(
            &after,
            "gen_ai_client_operation_duration_seconds_sum",
            &gen_ai
        ) >= 0.0
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
            "gen_ai_client_operation_duration_seconds",
            gen_ai.to_vec(),
            "gen_ai_client_operation_duration_seconds_count",
            3.0,
        ),
        (
            "gen_ai_client_token_usage",
            tokens("output"),
            "gen_ai_client_token_usage_count",
            3.0,
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

    // Budgets are counted by state, without ids.
    for (scope, period, state) in [
        ("org", "month", "ok"),
        ("agent", "day", "exhausted"),
        ("workflow", "month", "threshold_reached"),
    ] {
        let labels = [
            ("scope", scope),
            ("period", period),
            ("action", "alert"),
            ("state", state),
        ];
        assert_eq!(delta("spindle_budgets", &labels), 1.0, "{scope}: {text}");
    }

    // Every family has its HELP and TYPE; counters end in _total; labels
    // are from a bounded set and no value is an id.
    for (family, kind) in [
        ("spindle_provider_calls_total", "counter"),
        ("spindle_provider_base_cost_micros_total", "counter"),
        ("spindle_provider_billed_cost_micros_total", "counter"),
        ("gen_ai_client_token_usage", "histogram"),
        ("gen_ai_client_operation_duration_seconds", "histogram"),
        ("spindle_budgets", "gauge"),
    ] {
        assert!(text.contains(&format!("\n# HELP {family} ")), "{family}");
        assert!(
            text.contains(&format!("\n# TYPE {family} {kind}\n")),
            "{family}"
        );
    }
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(
            parts[3] == "counter",
            parts[2].ends_with("_total"),
            "{line}"
        );
    }
    for sample in &after.samples {
        for (name, _) in sample.labels.iter() {
            assert!(
                LABELS.contains(&name.as_str()),
                "{} has label {name}",
                sample.metric
            );
        }
    }
    for id in [&org.id, &agent, &workflow, &id] {
        assert!(!text.contains(id.as_str()), "{id} is in the metrics");
    }
    // The families these replaced are gone.
    for family in after.docs.keys() {
        let replaced = matches!(
            family.as_str(),
            "spindle_provider_tokens_total"
                | "spindle_provider_cost_micros_total"
                | "spindle_provider_latency_seconds"
        ) || (family.starts_with("spindle_budget_") && family.ends_with("_micros"));
        assert!(!replaced, "{family} is still exported");
    }

    // A call to Gemini is counted under the conventions' provider name.
    let gemini = target.create(
        &org,
        "/api/v1/agents",
        &json!({"name": "Gemini", "model_config": {"provider": "gemini", "model": "gemini-2.0-flash"}}),
    );
    fake_llm().push(Reply::text("four").tokens(40, 4));
    assert_eq!(
        agent_call(target, &org.owner_key, &gemini)["status"],
        "completed"
    );
    let with_gemini = scrape(target);
    let gemini_labels = [
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "gcp.gemini"),
        ("gen_ai_request_model", "gemini-2.0-flash"),
        ("gen_ai_token_type", "input"),
    ];
    assert_eq!(
        value(
            &with_gemini,
            "gen_ai_client_token_usage_sum",
            &gemini_labels
        ) - value(&after, "gen_ai_client_token_usage_sum", &gemini_labels),
        40.0
    );

    // A step parked on a wait is a live `waiting` step until it is signalled.
    let waits = target.create(
        &org,
        "/api/v1/workflows",
        &json!({"name": "Waits", "nodes": [
            {"id": "start", "type": "trigger"},
            {"id": "gate", "type": "wait", "config": {"signal": "go"}}
        ], "edges": [{"source": "start", "target": "gate"}]}),
    );
    let live = |scrape: &Scrape| value(scrape, "spindle_steps_live", &[("status", "waiting")]);
    let waiting_before = live(&with_gemini);
    let run = target.start_run(&org, &waits, json!({}));
    target.await_step(&org, &run, "gate", "waiting");
    assert_eq!(live(&scrape(target)) - waiting_before, 1.0);
    let reply = target.call(
        "POST",
        &format!("/api/v1/executions/{run}/signals/go"),
        Some(&org.owner_key),
        Some(&json!({"payload": {}})),
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(target.finished(&org, &run)["status"], "completed");
    assert_eq!(live(&scrape(target)), waiting_before);
}
