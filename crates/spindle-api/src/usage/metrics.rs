//! `GET /metrics` in the Prometheus text format. No instance keeps state,
//! so everything comes from the database: gauges are counted when scraped
//! (through indexes that see only live rows), and counters and histogram
//! buckets are kept in `metric_counters`, added to as calls and steps finish
//! (one upsert statement per event).
//!
//! Provider tokens and call durations follow the OpenTelemetry GenAI
//! semantic conventions (`gen_ai.client.token.usage`,
//! `gen_ai.client.operation.duration`, their attribute names and units, as
//! the OpenTelemetry-to-Prometheus translation spells them). Every label
//! takes a bounded set of values (no ids), and a metric's sum over any of
//! its labels means something.

use super::budgets::{Period, thresholds_of};
use crate::context::RequestContext;
use spindle_auth::constant_time_eq;
use spindle_http::{ApiError, ApiRequest, ApiResponse, Params};
use spindle_providers::Provider;
use spindle_store::{Db, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Upper bounds (seconds) of the step-duration histogram's buckets.
const STEP_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Upper bounds (seconds) of the provider-call duration histogram's buckets:
/// the semantic conventions' advice for `gen_ai.client.operation.duration`.
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// Upper bounds (tokens) of the token-usage histogram's buckets: the
/// semantic conventions' advice for `gen_ai.client.token.usage`.
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
/// `gen_ai.operation.name` of a provider call: every call is a chat completion.
const OPERATION: &str = "chat";

/// Metric families: name, type and help, in the order they are written.
const FAMILIES: &[(&str, &str, &str)] = &[
    ("spindle_executions", "gauge", "Workflow runs by status."),
    (
        "spindle_steps_live",
        "gauge",
        "Steps not finished yet, by status.",
    ),
    (
        "spindle_oldest_queued_step_age_seconds",
        "gauge",
        "Age of the oldest queued step (0 when none is queued).",
    ),
    (
        "spindle_steps_finished_total",
        "counter",
        "Steps that finished, by node type and status.",
    ),
    (
        "spindle_step_duration_seconds",
        "histogram",
        "Time from a step's claim to its result, by node type.",
    ),
    (
        "spindle_provider_calls_total",
        "counter",
        "Provider calls, by provider, model and status.",
    ),
    (
        "spindle_provider_base_cost_micros_total",
        "counter",
        "What successful provider calls cost at the provider's price (base), micro-dollars, by provider and model.",
    ),
    (
        "spindle_provider_billed_cost_micros_total",
        "counter",
        "What successful provider calls were billed (base plus markup), micro-dollars, by provider and model.",
    ),
    (
        "gen_ai_client_token_usage",
        "histogram",
        "Tokens per successful provider call (OpenTelemetry gen_ai.client.token.usage, unit {token}), by operation, provider, requested model and token type (input or output).",
    ),
    (
        "gen_ai_client_operation_duration_seconds",
        "histogram",
        "Duration of provider calls (OpenTelemetry gen_ai.client.operation.duration, unit s), by operation, provider, requested model and, for a failed call, error type.",
    ),
    (
        "spindle_budgets",
        "gauge",
        "Budgets by scope, period, action and the state of their current period (ok, threshold_reached, exhausted).",
    ),
];

/// How a histogram's observations are kept: the sum stays an integer.
#[derive(Clone, Copy)]
enum Unit {
    /// Observed in ms, exposed in seconds (the sum is kept as `_sum_ms`).
    Milliseconds,
    /// Counted things (tokens), exposed as they are.
    Count,
}

/// Escapes a label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `name="value",…` for stored labels.
fn labels(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Counter increments to apply in one statement: (series name, labels, delta).
#[derive(Default)]
struct Increments(Vec<(String, String, i64)>);

impl Increments {
    fn add(&mut self, name: &str, labels: String, delta: i64) {
        self.0.push((name.to_string(), labels, delta));
    }

    /// One observation of a histogram (`value` in `unit`, bounds as
    /// exposed): every bucket whose bound it fits under (cumulative, as
    /// Prometheus reads them), the sum and the count.
    fn observe(
        &mut self,
        name: &str,
        base: &[(&str, &str)],
        value: i64,
        buckets: &[f64],
        unit: Unit,
    ) {
        let plain = labels(base);
        let (per_bound, sum) = match unit {
            Unit::Milliseconds => (1000.0, format!("{name}_sum_ms")),
            Unit::Count => (1.0, format!("{name}_sum")),
        };
        for bound in buckets
            .iter()
            .map(|b| format!("{b}"))
            .chain(["+Inf".into()])
        {
            let fits = bound == "+Inf"
                || (value as f64) <= bound.parse::<f64>().unwrap_or(0.0) * per_bound;
            if fits {
                let mut with_le = base.to_vec();
                with_le.push(("le", &bound));
                self.add(&format!("{name}_bucket"), labels(&with_le), 1);
            }
        }
        self.add(&sum, plain.clone(), value.max(0));
        self.add(&format!("{name}_count"), plain, 1);
    }

    /// Adds them all with one upsert (Spin runs one statement per call).
    fn apply(self, db: &dyn Db) -> Result<(), ApiError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let rows = vec!["(?, ?, ?)"; self.0.len()].join(", ");
        let params: Vec<Value> = self
            .0
            .into_iter()
            .flat_map(|(name, labels, delta)| {
                [
                    Value::Text(name),
                    Value::Text(labels),
                    Value::Integer(delta),
                ]
            })
            .collect();
        db.execute(
            &format!(
                "INSERT INTO metric_counters (name, labels, value) VALUES {rows} \
                 ON CONFLICT (name, labels) DO UPDATE SET value = value + excluded.value"
            ),
            &params,
        )?;
        Ok(())
    }
}

/// What one provider call adds to the metrics.
pub(crate) struct ProviderCall<'a> {
    /// The provider called.
    pub provider: Provider,
    /// The model id requested.
    pub model: &'a str,
    /// `succeeded` or `failed`.
    pub status: &'a str,
    /// A failed call's error code (a stable code, one of a few).
    pub error_code: Option<&'a str>,
    /// Input and output tokens.
    pub tokens: (i64, i64),
    /// Base and billed cost, micro-dollars.
    pub cost: (i64, i64),
    /// How long the call took.
    pub latency_ms: i64,
}

/// `gen_ai.provider.name`: the semantic conventions' well-known value where
/// there is one (`gcp.gemini` for Gemini's API), else Spindle's own name.
fn provider_name(provider: Provider) -> &'static str {
    match provider {
        Provider::Gemini => "gcp.gemini",
        Provider::OpenAi | Provider::Anthropic | Provider::Groq | Provider::OpenAiCompatible => {
            provider.as_str()
        }
    }
}

/// Counts one provider call (with its usage record, in the same invocation).
pub(crate) fn record_provider_call(db: &dyn Db, call: &ProviderCall<'_>) -> Result<(), ApiError> {
    let mut increments = Increments::default();
    let series = [("provider", call.provider.as_str()), ("model", call.model)];
    increments.add(
        "spindle_provider_calls_total",
        labels(&[series[0], series[1], ("status", call.status)]),
        1,
    );
    let gen_ai = [
        ("gen_ai_operation_name", OPERATION),
        ("gen_ai_provider_name", provider_name(call.provider)),
        ("gen_ai_request_model", call.model),
    ];
    if call.status == "succeeded" {
        increments.add(
            "spindle_provider_base_cost_micros_total",
            labels(&series),
            call.cost.0,
        );
        increments.add(
            "spindle_provider_billed_cost_micros_total",
            labels(&series),
            call.cost.1,
        );
        for (token_type, tokens) in [("input", call.tokens.0), ("output", call.tokens.1)] {
            let mut pairs = gen_ai.to_vec();
            pairs.push(("gen_ai_token_type", token_type));
            increments.observe(
                "gen_ai_client_token_usage",
                &pairs,
                tokens,
                TOKEN_BUCKETS,
                Unit::Count,
            );
        }
    }
    let mut pairs = gen_ai.to_vec();
    if call.status != "succeeded" {
        pairs.push(("error_type", call.error_code.unwrap_or("_OTHER")));
    }
    increments.observe(
        "gen_ai_client_operation_duration_seconds",
        &pairs,
        call.latency_ms,
        DURATION_BUCKETS,
        Unit::Milliseconds,
    );
    increments.apply(db)
}

/// Counts one finished step and its duration (claim to result).
pub(crate) fn record_step(
    db: &dyn Db,
    node_type: &str,
    status: &str,
    duration_ms: Option<i64>,
) -> Result<(), ApiError> {
    let mut increments = Increments::default();
    increments.add(
        "spindle_steps_finished_total",
        labels(&[("node_type", node_type), ("status", status)]),
        1,
    );
    if let Some(ms) = duration_ms {
        increments.observe(
            "spindle_step_duration_seconds",
            &[("node_type", node_type)],
            ms,
            STEP_BUCKETS,
            Unit::Milliseconds,
        );
    }
    increments.apply(db)
}

/// One sample line of the output.
struct Sample {
    series: String,
    labels: String,
    value: String,
}

/// `GET /metrics` (`Authorization: Bearer <metrics_token>`): the text
/// format, version 0.0.4. Off (403 `feature_disabled`) without the variable.
pub(super) fn scrape(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let token = ctx.optional_secret("metrics_token")?.ok_or_else(|| {
        ApiError::Disabled("metrics are off: no metrics_token is configured".into())
    })?;
    let given = request
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return Err(ApiError::Unauthenticated(
            "metrics need Authorization: Bearer <metrics_token>".into(),
        ));
    }
    let db = ctx.db()?;
    let mut families: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
    let mut push = |family: &'static str, series: String, labels: String, value: String| {
        families.entry(family).or_default().push(Sample {
            series,
            labels,
            value,
        });
    };

    // Across organisations: the metrics are the platform operator's.
    for row in db
        .execute(
            "SELECT status, COUNT(*) FROM executions GROUP BY status",
            &[],
        )?
        .rows
    {
        let status = row[0].as_str().unwrap_or_default();
        push(
            "spindle_executions",
            "spindle_executions".into(),
            labels(&[("status", status)]),
            row[1].as_i64().unwrap_or(0).to_string(),
        );
    }
    let live = db.execute(
        "SELECT status, COUNT(*), MIN(created_at) FROM steps \
         WHERE status IN ('queued', 'running', 'waiting') GROUP BY status",
        &[],
    )?;
    let mut oldest_queued = None;
    for row in &live.rows {
        let status = row[0].as_str().unwrap_or_default();
        push(
            "spindle_steps_live",
            "spindle_steps_live".into(),
            labels(&[("status", status)]),
            row[1].as_i64().unwrap_or(0).to_string(),
        );
        if status == "queued" {
            oldest_queued = row[2].as_i64();
        }
    }
    let age = oldest_queued.map_or(0.0, |at| (crate::now_ms() - at).max(0) as f64 / 1000.0);
    push(
        "spindle_oldest_queued_step_age_seconds",
        "spindle_oldest_queued_step_age_seconds".into(),
        String::new(),
        format!("{age}"),
    );

    // Budgets are few (one per organisation and scope): read them all, with
    // the settled spend of the period each is in now, and count them by
    // state (one budget's figures are the organisation's, in the API).
    let now = crate::now_ms();
    let (day, month) = (Period::Day.bounds(now).0, Period::Month.bounds(now).0);
    let budgets = db.execute(
        "SELECT b.scope, b.period, b.action, b.limit_micros, b.thresholds, \
         COALESCE((SELECT p.spent_micros FROM budget_periods p WHERE p.budget_id = b.id \
           AND p.period_start = CASE b.period WHEN 'day' THEN ?1 ELSE ?2 END), 0) \
         FROM budgets b",
        &[Value::Integer(day), Value::Integer(month)],
    )?;
    let mut by_state: BTreeMap<String, i64> = BTreeMap::new();
    for row in &budgets.rows {
        let text = |i: usize| row[i].as_str().unwrap_or_default();
        let state = budget_state(
            row[5].as_i64().unwrap_or(0),
            row[3].as_i64().unwrap_or(i64::MAX),
            &thresholds_of(&row[4]),
        );
        let labels = labels(&[
            ("scope", text(0)),
            ("period", text(1)),
            ("action", text(2)),
            ("state", state),
        ]);
        *by_state.entry(labels).or_default() += 1;
    }
    for (labels, count) in by_state {
        push(
            "spindle_budgets",
            "spindle_budgets".into(),
            labels,
            count.to_string(),
        );
    }

    let counters = db.execute("SELECT name, labels, value FROM metric_counters", &[])?;
    for row in counters.rows {
        let name = row[0].as_str().unwrap_or_default().to_string();
        let labels = row[1].as_str().unwrap_or_default().to_string();
        let value = row[2].as_i64().unwrap_or(0);
        let Some(&(family, _, _)) = FAMILIES.iter().find(|(f, _, _)| {
            name == *f
                || name
                    .strip_prefix(f)
                    .is_some_and(|rest| ["_bucket", "_sum_ms", "_sum", "_count"].contains(&rest))
        }) else {
            continue;
        };
        // Sums are kept in ms so they stay integers; Prometheus wants seconds.
        let (series, value) = match name.strip_suffix("_sum_ms") {
            Some(base) => (format!("{base}_sum"), format!("{}", value as f64 / 1000.0)),
            None => (name, value.to_string()),
        };
        push(family, series, labels, value);
    }

    let mut text = String::new();
    for (family, kind, help) in FAMILIES {
        let _ = writeln!(text, "# HELP {family} {help}");
        let _ = writeln!(text, "# TYPE {family} {kind}");
        let mut samples = families.remove(family).unwrap_or_default();
        samples.sort_by(|a, b| {
            sample_order(a)
                .partial_cmp(&sample_order(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        for sample in samples {
            if sample.labels.is_empty() {
                let _ = writeln!(text, "{} {}", sample.series, sample.value);
            } else {
                let _ = writeln!(
                    text,
                    "{}{{{}}} {}",
                    sample.series, sample.labels, sample.value
                );
            }
        }
    }
    Ok(ApiResponse {
        status: 200,
        headers: vec![(
            "content-type".into(),
            "text/plain; version=0.0.4; charset=utf-8".into(),
        )],
        body: text.into_bytes(),
        stream: None,
    })
}

/// `exhausted` when `spent` reached `limit`, else `threshold_reached` when
/// it reached one of the budget's thresholds (percents of the limit, as the
/// budget fires them), else `ok`.
fn budget_state(spent: i64, limit: i64, thresholds: &[i64]) -> &'static str {
    if spent >= limit {
        "exhausted"
    } else if thresholds
        .iter()
        .any(|t| i128::from(spent) * 100 >= i128::from(*t) * i128::from(limit))
    {
        "threshold_reached"
    } else {
        "ok"
    }
}

/// Orders a histogram's samples as the format expects: per label set,
/// buckets by increasing `le`, then sum and count.
fn sample_order(sample: &Sample) -> (String, u8, f64) {
    let (base, le) = match sample
        .labels
        .rsplit_once(",le=\"")
        .or_else(|| sample.labels.strip_prefix("le=\"").map(|rest| ("", rest)))
    {
        Some((base, le)) if sample.series.ends_with("_bucket") => {
            let le = le.trim_end_matches('"');
            (
                base.to_string(),
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(0.0)
                },
            )
        }
        _ => (sample.labels.clone(), 0.0),
    };
    let rank = if sample.series.ends_with("_bucket") {
        0
    } else if sample.series.ends_with("_sum") {
        1
    } else {
        2
    };
    (base, rank, le)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_fills_every_bucket_it_fits_under() {
        let mut increments = Increments::default();
        increments.observe(
            "h",
            &[("node_type", "agent")],
            300,
            &[0.1, 0.5, 1.0],
            Unit::Milliseconds,
        );
        let names: Vec<(String, String, i64)> = increments.0;
        assert_eq!(
            names,
            [
                ("h_bucket".into(), r#"node_type="agent",le="0.5""#.into(), 1),
                ("h_bucket".into(), r#"node_type="agent",le="1""#.into(), 1),
                (
                    "h_bucket".into(),
                    r#"node_type="agent",le="+Inf""#.into(),
                    1
                ),
                ("h_sum_ms".into(), r#"node_type="agent""#.into(), 300),
                ("h_count".into(), r#"node_type="agent""#.into(), 1),
            ]
        );
    }

    #[test]
    fn a_count_is_bucketed_and_summed_as_it_is() {
        let mut increments = Increments::default();
        increments.observe("t", &[], 16, &[4.0, 16.0, 64.0], Unit::Count);
        assert_eq!(
            increments.0,
            [
                ("t_bucket".into(), r#"le="16""#.into(), 1),
                ("t_bucket".into(), r#"le="64""#.into(), 1),
                ("t_bucket".into(), r#"le="+Inf""#.into(), 1),
                ("t_sum".into(), String::new(), 16),
                ("t_count".into(), String::new(), 1),
            ]
        );
    }

    #[test]
    fn a_budget_is_ok_past_a_threshold_or_exhausted() {
        assert_eq!(budget_state(79, 100, &[80, 100]), "ok");
        assert_eq!(budget_state(80, 100, &[80, 100]), "threshold_reached");
        assert_eq!(budget_state(100, 100, &[80, 100]), "exhausted");
        assert_eq!(budget_state(150, 100, &[]), "exhausted");
        assert_eq!(budget_state(0, 100, &[]), "ok");
    }

    #[test]
    fn token_bounds_print_as_integers() {
        let printed: Vec<String> = TOKEN_BUCKETS.iter().map(|b| format!("{b}")).collect();
        assert_eq!(printed[0], "1");
        assert_eq!(printed[13], "67108864");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(labels(&[("model", "a\"b\\c\nd")]), r#"model="a\"b\\c\nd""#);
    }

    #[test]
    fn buckets_sort_by_bound_then_sum_then_count() {
        let sample = |series: &str, labels: &str| Sample {
            series: series.into(),
            labels: labels.into(),
            value: "1".into(),
        };
        let mut samples = [
            sample("h_count", r#"p="x""#),
            sample("h_bucket", r#"p="x",le="+Inf""#),
            sample("h_bucket", r#"p="x",le="10""#),
            sample("h_sum", r#"p="x""#),
            sample("h_bucket", r#"p="x",le="2.5""#),
        ];
        samples.sort_by(|a, b| sample_order(a).partial_cmp(&sample_order(b)).unwrap());
        let order: Vec<String> = samples
            .iter()
            .map(|s| format!("{}{{{}}}", s.series, s.labels))
            .collect();
        assert_eq!(
            order,
            [
                r#"h_bucket{p="x",le="2.5"}"#,
                r#"h_bucket{p="x",le="10"}"#,
                r#"h_bucket{p="x",le="+Inf"}"#,
                r#"h_sum{p="x"}"#,
                r#"h_count{p="x"}"#,
            ]
        );
    }
}
