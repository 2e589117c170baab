//! `GET /metrics` in the Prometheus text format. No instance keeps state,
//! so everything comes from the database: gauges are counted when scraped
//! (through indexes that see only live rows), and counters and histogram
//! buckets are kept in `metric_counters`, added to as calls and steps finish
//! (one upsert statement per event).

use super::budgets::Period;
use crate::context::RequestContext;
use spindle_auth::constant_time_eq;
use spindle_http::{ApiError, ApiRequest, ApiResponse, Params};
use spindle_store::{Db, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Upper bounds (seconds) of the step-duration histogram's buckets.
const STEP_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Upper bounds (seconds) of the provider-latency histogram's buckets.
const PROVIDER_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

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
        "spindle_provider_tokens_total",
        "counter",
        "Tokens of successful provider calls, by provider, model and direction.",
    ),
    (
        "spindle_provider_cost_micros_total",
        "counter",
        "Cost of provider calls in micro-dollars, by provider, model and kind (base or billed).",
    ),
    (
        "spindle_provider_latency_seconds",
        "histogram",
        "Provider call latency, by provider.",
    ),
    (
        "spindle_budget_spend_micros",
        "gauge",
        "A budget's settled spend in its current period, micro-dollars.",
    ),
    (
        "spindle_budget_reserved_micros",
        "gauge",
        "A budget's live reservations (calls in flight), micro-dollars.",
    ),
    (
        "spindle_budget_limit_micros",
        "gauge",
        "A budget's limit per period, micro-dollars.",
    ),
];

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

    /// One observation of a histogram (`value` in ms): every bucket whose
    /// bound it fits under (cumulative, as Prometheus reads them), the sum
    /// (kept in ms) and the count.
    fn observe(&mut self, name: &str, base: &[(&str, &str)], value_ms: i64, buckets: &[f64]) {
        let plain = labels(base);
        for bound in buckets
            .iter()
            .map(|b| format!("{b}"))
            .chain(["+Inf".into()])
        {
            let fits = bound == "+Inf"
                || (value_ms as f64) <= bound.parse::<f64>().unwrap_or(0.0) * 1000.0;
            if fits {
                let mut with_le = base.to_vec();
                with_le.push(("le", &bound));
                self.add(&format!("{name}_bucket"), labels(&with_le), 1);
            }
        }
        self.add(&format!("{name}_sum_ms"), plain.clone(), value_ms.max(0));
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
    /// `openai`, `anthropic`, …
    pub provider: &'a str,
    /// The model id.
    pub model: &'a str,
    /// `succeeded` or `failed`.
    pub status: &'a str,
    /// Input and output tokens.
    pub tokens: (i64, i64),
    /// Base and billed cost, micro-dollars.
    pub cost: (i64, i64),
    /// How long the call took.
    pub latency_ms: i64,
}

/// Counts one provider call (with its usage record, in the same invocation).
pub(crate) fn record_provider_call(db: &dyn Db, call: &ProviderCall<'_>) -> Result<(), ApiError> {
    let mut increments = Increments::default();
    let series = [("provider", call.provider), ("model", call.model)];
    let with = |extra: (&'static str, &str)| {
        let mut pairs = series.to_vec();
        pairs.push(extra);
        labels(&pairs)
    };
    increments.add(
        "spindle_provider_calls_total",
        with(("status", call.status)),
        1,
    );
    if call.status == "succeeded" {
        increments.add(
            "spindle_provider_tokens_total",
            with(("direction", "input")),
            call.tokens.0,
        );
        increments.add(
            "spindle_provider_tokens_total",
            with(("direction", "output")),
            call.tokens.1,
        );
        increments.add(
            "spindle_provider_cost_micros_total",
            with(("kind", "base")),
            call.cost.0,
        );
        increments.add(
            "spindle_provider_cost_micros_total",
            with(("kind", "billed")),
            call.cost.1,
        );
    }
    increments.observe(
        "spindle_provider_latency_seconds",
        &[("provider", call.provider)],
        call.latency_ms,
        PROVIDER_BUCKETS,
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
    // the spend of the period each is in now.
    let now = crate::now_ms();
    let (day, month) = (Period::Day.bounds(now).0, Period::Month.bounds(now).0);
    let budgets = db.execute(
        "SELECT b.org_id, b.scope, b.scope_id, b.period, b.action, b.limit_micros, \
         COALESCE((SELECT p.spent_micros FROM budget_periods p WHERE p.budget_id = b.id \
           AND p.period_start = CASE b.period WHEN 'day' THEN ?1 ELSE ?2 END), 0), \
         COALESCE((SELECT SUM(r.amount_micros) FROM budget_reservations r WHERE r.budget_id = b.id \
           AND r.period_start = CASE b.period WHEN 'day' THEN ?1 ELSE ?2 END AND r.expires_at > ?3), 0) \
         FROM budgets b",
        &[Value::Integer(day), Value::Integer(month), Value::Integer(now)],
    )?;
    for row in &budgets.rows {
        let text = |i: usize| row[i].as_str().unwrap_or_default();
        let labels = labels(&[
            ("org_id", text(0)),
            ("scope", text(1)),
            ("scope_id", text(2)),
            ("period", text(3)),
            ("action", text(4)),
        ]);
        for (family, i) in [
            ("spindle_budget_limit_micros", 5),
            ("spindle_budget_spend_micros", 6),
            ("spindle_budget_reserved_micros", 7),
        ] {
            let value = row[i].as_i64().unwrap_or(0).to_string();
            push(family, family.to_string(), labels.clone(), value);
        }
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
                    .is_some_and(|rest| ["_bucket", "_sum_ms", "_count"].contains(&rest))
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
        increments.observe("h", &[("node_type", "agent")], 300, &[0.1, 0.5, 1.0]);
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
