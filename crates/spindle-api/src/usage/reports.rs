//! Usage reports: what an organisation's provider calls came to, summed by
//! period and dimension (`GET /api/v1/usage/summary`), one by one as JSON
//! pages or a streamed CSV (`GET /api/v1/usage/records`), and what a
//! workflow costs per run and per node (`GET /api/v1/usage/workflows/:id/costs`).
//!
//! Every report reads `usage_records` (one row per provider call), or the
//! runs and steps of a workflow, through [`OrgScoped`]. Ranges are half-open
//! UTC `[from, to)` of at most [`MAX_RANGE_DAYS`] days, the last
//! [`DEFAULT_RANGE_DAYS`] days when not given. Money is integer micro-dollars,
//! with the same amounts as decimal dollar strings beside them.

use crate::auth::authenticate;
use crate::context::RequestContext;
use crate::listing::{keyset_limit, query_time};
use crate::{fetch_one, now_ms, timestamp};
use base64::Engine as _;
use chrono::{Datelike, NaiveDate};
use serde_json::{Map, Value as Json, json};
use spindle_auth::Role;
use spindle_http::{ApiError, ApiRequest, ApiResponse, BodyStream, ChunkSink, ErrorDetail, Params};
use spindle_providers::pricing::format_micros;
use spindle_store::{OrgScoped, Value};
use std::collections::BTreeMap;

/// The longest range a report covers.
pub const MAX_RANGE_DAYS: i64 = 400;
/// The range a report covers when `from` is not given: this many days before `to`.
pub const DEFAULT_RANGE_DAYS: i64 = 30;
const DAY_MS: i64 = 86_400_000;
/// The default and the largest page of `GET /api/v1/usage/records`.
/// Records a CSV export reads per query: memory stays flat however many there are.
const CSV_BATCH: i64 = 500;
/// What `group_by` accepts, in the order the error message lists them.
const GROUP_NAMES: &str = "day, week, month, agent, model, provider, workflow, api_key";

/// `GET /api/v1/usage/summary` (viewer): calls, tokens and cost in the range,
/// in groups by `group_by` (comma-separated), with the totals of all groups.
pub fn summary(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let mut problems = Vec::new();
    let filters = Filters::parse(request, now_ms(), &mut problems);
    let groups = parse_group_by(request.query_text("group_by").as_deref()).unwrap_or_else(|e| {
        problems.push(e);
        Vec::new()
    });
    invalid_if_any(problems)?;
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let (totals, rows) = summarise(&org, &filters, &groups)?;
    let names: Vec<&str> = groups.iter().map(|g| g.name()).collect();
    let data: Vec<Json> = rows
        .into_iter()
        .map(|(key, tally)| {
            let key: Map<String, Json> = names
                .iter()
                .zip(key)
                .map(|(name, value)| (name.to_string(), Json::from(value)))
                .collect();
            let mut group = tally.json();
            group.insert("key".into(), Json::Object(key));
            Json::Object(group)
        })
        .collect();
    Ok(ApiResponse::json(
        200,
        &json!({
            "from": timestamp(filters.from),
            "to": timestamp(filters.to),
            "group_by": names,
            "totals": Json::Object(totals.json()),
            "groups": data,
        }),
    ))
}

/// `GET /api/v1/usage/records` (viewer): the records matching the filters in
/// `(created_at, id)` order, as JSON pages (`limit`, `cursor` = the previous
/// page's `next_cursor`), or all of them as a streamed CSV with `Accept: text/csv`.
pub fn records(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let mut problems = Vec::new();
    let filters = Filters::parse(request, now_ms(), &mut problems);
    let after = match request.query_text("cursor") {
        None => None,
        Some(text) => decode_cursor(&text).or_else(|| {
            problems.push(ErrorDetail::new(
                "query.cursor",
                "must be a next_cursor this endpoint returned",
            ));
            None
        }),
    };
    let limit = keyset_limit(request, &mut problems);
    invalid_if_any(problems)?;
    if wants_csv(request.header("accept")) {
        let org_id = caller.org_id;
        let produce = move |ctx: &RequestContext, write: &mut ChunkSink<'_>| {
            if let Err(error) = write_csv(ctx, &org_id, &filters, after, write) {
                // The head is out: the export ends short and the error is logged.
                eprintln!("spindle: the usage CSV export failed: {error}");
            }
        };
        let mut response =
            ApiResponse::streaming("text/csv; charset=utf-8", BodyStream::new(produce));
        response.set_header(
            "content-disposition",
            "attachment; filename=\"usage-records.csv\"",
        );
        return Ok(response);
    }
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let mut page = records_after(&org, &filters, after.as_ref(), limit + 1)?;
    let next_cursor = if page.len() as i64 > limit {
        page.truncate(limit as usize);
        page.last().map(|r| encode_cursor(r.created_at, &r.id))
    } else {
        None
    };
    let data: Vec<Json> = page.iter().map(Record::json).collect();
    Ok(ApiResponse::json(
        200,
        &json!({
            "data": data,
            "next_cursor": next_cursor,
            "limit": limit,
            "from": timestamp(filters.from),
            "to": timestamp(filters.to),
        }),
    ))
}

/// `GET /api/v1/usage/workflows/:id/costs` (viewer): the billed cost of the
/// workflow's finished runs in the range (count, mean, p50, p95, max, tokens)
/// and the same per node, so the expensive steps stand out.
pub fn workflow_costs(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let mut problems = Vec::new();
    let (from, to) = range_param(request, now_ms(), &mut problems);
    invalid_if_any(problems)?;
    let id = params.get("id").unwrap_or_default();
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    // A deleted workflow keeps its cost history: only unknown ids are 404.
    fetch_one(
        &org,
        "SELECT id FROM workflows WHERE org_id = ?1 AND id = ?2",
        &[Value::from(id)],
        || format!("workflow {id}"),
    )?;
    let range = [Value::from(id), Value::Integer(from), Value::Integer(to)];
    let runs = org.execute(
        "SELECT status, billed_cost_micros, tokens_in, tokens_out FROM executions \
         WHERE org_id = ?1 AND workflow_id = ?2 AND created_at >= ?3 AND created_at < ?4 \
         AND status IN ('completed', 'failed', 'cancelled')",
        &range,
    )?;
    let mut by_status = BTreeMap::from([("cancelled", 0), ("completed", 0), ("failed", 0)]);
    let mut run_costs = Vec::with_capacity(runs.rows.len());
    let (mut tokens_in, mut tokens_out) = (0i64, 0i64);
    for row in &runs.rows {
        if let Some(count) = row[0].as_str().and_then(|s| by_status.get_mut(s)) {
            *count += 1;
        }
        run_costs.push(int(&row[1]));
        tokens_in += int(&row[2]);
        tokens_out += int(&row[3]);
    }
    // Per node and run: what the node's steps (all iterations of a loop)
    // cost in that run. Steps that did not run (skipped, cancelled) do not count.
    let steps = org.execute(
        "SELECT s.node_id, SUM(s.billed_cost_micros), SUM(s.tokens_in), SUM(s.tokens_out) \
         FROM steps s JOIN executions e ON e.id = s.execution_id \
         WHERE s.org_id = ?1 AND e.org_id = ?1 AND e.workflow_id = ?2 \
         AND e.created_at >= ?3 AND e.created_at < ?4 \
         AND e.status IN ('completed', 'failed', 'cancelled') \
         AND s.status IN ('completed', 'failed') \
         GROUP BY s.node_id, s.execution_id",
        &range,
    )?;
    let mut nodes: BTreeMap<String, (Vec<i64>, i64, i64)> = BTreeMap::new();
    for row in &steps.rows {
        let node = nodes
            .entry(row[0].as_str().unwrap_or_default().to_string())
            .or_default();
        node.0.push(int(&row[1]));
        node.1 += int(&row[2]);
        node.2 += int(&row[3]);
    }
    let mut nodes: Vec<(String, Stats, i64, i64)> = nodes
        .into_iter()
        .map(|(id, (costs, input, output))| (id, Stats::of(costs), input, output))
        .collect();
    // The most expensive node first.
    nodes.sort_by(|a, b| b.1.total.cmp(&a.1.total).then_with(|| a.0.cmp(&b.0)));
    let runs = Stats::of(run_costs);
    let mean_tokens = mean(i128::from(tokens_in) + i128::from(tokens_out), runs.count);
    Ok(ApiResponse::json(
        200,
        &json!({
            "workflow_id": id,
            "from": timestamp(from),
            "to": timestamp(to),
            "runs": {
                "count": runs.count,
                "by_status": by_status,
                "cost": runs.json(),
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "mean_tokens": mean_tokens,
            },
            "nodes": nodes.iter().map(|(node_id, stats, input, output)| json!({
                "node_id": node_id,
                "runs": stats.count,
                "cost": stats.json(),
                "input_tokens": input,
                "output_tokens": output,
            })).collect::<Vec<_>>(),
        }),
    ))
}

/// A 400 listing every problem, when there is one.
fn invalid_if_any(problems: Vec<ErrorDetail>) -> Result<(), ApiError> {
    if problems.is_empty() {
        return Ok(());
    }
    let message = match &problems[..] {
        [only] => format!("invalid {}: {}", only.path, only.problem),
        _ => "invalid query parameters".into(),
    };
    Err(ApiError::BadRequest {
        message,
        details: problems,
    })
}

fn int(value: &Value) -> i64 {
    value.as_i64().unwrap_or(0)
}

// ---- ranges ---------------------------------------------------------------

/// A bound of a range: an RFC 3339 time, or a date `YYYY-MM-DD` meaning
/// its midnight UTC; in ms.
fn parse_instant(text: &str) -> Option<i64> {
    if let Some(at) = query_time(text) {
        return Some(at);
    }
    let strict_date = text.len() == 10 && text.as_bytes()[4] == b'-' && text.as_bytes()[7] == b'-';
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .filter(|_| strict_date)?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

/// The range `[from, to)` from the two bounds as sent: `to` defaults to
/// `now`, `from` to [`DEFAULT_RANGE_DAYS`] days before `to`. Each problem
/// (unreadable bound, `from` not before `to`, longer than
/// [`MAX_RANGE_DAYS`]) is added to `problems`.
fn parse_range(
    from: Option<&str>,
    to: Option<&str>,
    now: i64,
    problems: &mut Vec<ErrorDetail>,
) -> (i64, i64) {
    let mut bound = |name: &str, text: Option<&str>| {
        let text = text?;
        let parsed = parse_instant(text);
        if parsed.is_none() {
            problems.push(ErrorDetail::new(
                format!("query.{name}"),
                format!("{text:?} is neither an RFC 3339 time nor a date YYYY-MM-DD"),
            ));
        }
        Some(parsed)
    };
    let (from, to) = (bound("from", from), bound("to", to));
    // A bound that could not be read already has its problem.
    let Some(to) = to.unwrap_or(Some(now)) else {
        return (0, 0);
    };
    let Some(from) = from.unwrap_or(Some(to - DEFAULT_RANGE_DAYS * DAY_MS)) else {
        return (0, 0);
    };
    if from >= to {
        problems.push(ErrorDetail::new(
            "query.to",
            format!("must be after from ({})", timestamp(from)),
        ));
    } else if to - from > MAX_RANGE_DAYS * DAY_MS {
        problems.push(ErrorDetail::new(
            "query.from",
            format!("the range may span at most {MAX_RANGE_DAYS} days"),
        ));
    }
    (from, to)
}

/// `from` and `to` of a request.
fn range_param(request: &ApiRequest, now: i64, problems: &mut Vec<ErrorDetail>) -> (i64, i64) {
    let (from, to) = (request.query_text("from"), request.query_text("to"));
    parse_range(from.as_deref(), to.as_deref(), now, problems)
}

// ---- filters --------------------------------------------------------------

/// Which records a summary or an export covers: the range and optional
/// equality filters.
struct Filters {
    from: i64,
    to: i64,
    /// `(column, value)` pairs, each matched exactly.
    equal: Vec<(&'static str, String)>,
}

/// The equality filters `summary` and `records` accept, by query name (= column).
const FILTER_COLUMNS: [&str; 7] = [
    "agent_id",
    "agent_execution_id",
    "workflow_id",
    "execution_id",
    "model",
    "provider",
    "status",
];

impl Filters {
    /// Reads the range and the filters, adding each problem to `problems`.
    fn parse(request: &ApiRequest, now: i64, problems: &mut Vec<ErrorDetail>) -> Self {
        let (from, to) = range_param(request, now, problems);
        let mut equal = Vec::new();
        for column in FILTER_COLUMNS {
            let Some(value) = request.query_text(column) else {
                continue;
            };
            if column == "status" && !["succeeded", "failed"].contains(&value.as_str()) {
                problems.push(ErrorDetail::new(
                    "query.status",
                    "must be succeeded or failed",
                ));
            }
            equal.push((column, value));
        }
        Self { from, to, equal }
    }

    /// The `WHERE` condition (without `WHERE`), binding `?2…` as [`Self::params`] gives them.
    fn condition(&self) -> String {
        let mut sql = String::from("org_id = ?1 AND created_at >= ?2 AND created_at < ?3");
        for (i, (column, _)) in self.equal.iter().enumerate() {
            sql.push_str(&format!(" AND {column} = ?{}", i + 4));
        }
        sql
    }

    /// The values of [`Self::condition`]'s parameters after `?1`.
    fn params(&self) -> Vec<Value> {
        let mut params = vec![Value::Integer(self.from), Value::Integer(self.to)];
        params.extend(self.equal.iter().map(|(_, v)| Value::from(v.as_str())));
        params
    }
}

// ---- summary --------------------------------------------------------------

/// A calendar period of UTC days; weeks are ISO weeks (Monday to Sunday).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    /// The label of the period holding UTC day `day` (days since 1970-01-01):
    /// `2026-01-05`, ISO week `2026-W02`, or month `2026-01`.
    fn label(self, day: i64) -> String {
        let date = NaiveDate::from_ymd_opt(1970, 1, 1)
            .and_then(|epoch| epoch.checked_add_signed(chrono::TimeDelta::days(day)))
            .unwrap_or_default();
        match self {
            Self::Day => date.format("%Y-%m-%d").to_string(),
            Self::Week => {
                let week = date.iso_week();
                format!("{:04}-W{:02}", week.year(), week.week())
            }
            Self::Month => format!("{:04}-{:02}", date.year(), date.month()),
        }
    }
}

/// One `group_by` term: a period or a record column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Period(Period),
    Column(&'static str, &'static str),
}

impl Group {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "day" => Self::Period(Period::Day),
            "week" => Self::Period(Period::Week),
            "month" => Self::Period(Period::Month),
            "agent" => Self::Column("agent", "agent_id"),
            "model" => Self::Column("model", "model"),
            "provider" => Self::Column("provider", "provider"),
            "workflow" => Self::Column("workflow", "workflow_id"),
            "api_key" => Self::Column("api_key", "api_key_id"),
            _ => return None,
        })
    }

    /// Its name in `group_by` and in each group's `key`.
    fn name(self) -> &'static str {
        match self {
            Self::Period(Period::Day) => "day",
            Self::Period(Period::Week) => "week",
            Self::Period(Period::Month) => "month",
            Self::Column(name, _) => name,
        }
    }
}

/// `group_by`: comma-separated terms, each at most once, at most one period;
/// none (or empty) means one group of everything.
fn parse_group_by(text: Option<&str>) -> Result<Vec<Group>, ErrorDetail> {
    let mut groups: Vec<Group> = Vec::new();
    for name in text.unwrap_or("").split(',').map(str::trim) {
        if name.is_empty() {
            continue;
        }
        let problem = |what: String| ErrorDetail::new("query.group_by", what);
        let group = Group::parse(name)
            .ok_or_else(|| problem(format!("unknown group {name:?}: use {GROUP_NAMES}")))?;
        if groups.contains(&group) {
            return Err(problem(format!("{name:?} is given twice")));
        }
        if matches!(group, Group::Period(_)) && groups.iter().any(|g| matches!(g, Group::Period(_)))
        {
            return Err(problem("at most one of day, week and month".into()));
        }
        groups.push(group);
    }
    Ok(groups)
}

/// Calls, tokens and cost of a set of records.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    calls: i64,
    failed_calls: i64,
    pricing_missing_calls: i64,
    input_tokens: i64,
    output_tokens: i64,
    total_tokens: i64,
    base_micros: i64,
    billed_micros: i64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.calls += other.calls;
        self.failed_calls += other.failed_calls;
        self.pricing_missing_calls += other.pricing_missing_calls;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.total_tokens += other.total_tokens;
        self.base_micros += other.base_micros;
        self.billed_micros += other.billed_micros;
    }

    fn json(&self) -> Map<String, Json> {
        let value = json!({
            "calls": self.calls,
            "failed_calls": self.failed_calls,
            "pricing_missing_calls": self.pricing_missing_calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "base_cost_micros": self.base_micros,
            "billed_cost_micros": self.billed_micros,
            "base_cost": format_micros(self.base_micros),
            "billed_cost": format_micros(self.billed_micros),
        });
        match value {
            Json::Object(map) => map,
            _ => Map::new(),
        }
    }
}

/// Tallies by group key (one value per `group_by` term, in its order).
type Groups = BTreeMap<Vec<Option<String>>, Tally>;

/// The totals and the groups (keys in `groups` order, sorted by key). SQL
/// sums per column values and UTC day; days are folded into weeks and
/// months here, so one query serves every period.
fn summarise(
    org: &OrgScoped,
    filters: &Filters,
    groups: &[Group],
) -> Result<(Tally, Groups), ApiError> {
    let mut keys: Vec<String> = groups
        .iter()
        .filter_map(|g| match g {
            Group::Column(_, column) => Some(column.to_string()),
            Group::Period(_) => None,
        })
        .collect();
    let period = groups.iter().find_map(|g| match g {
        Group::Period(p) => Some(*p),
        Group::Column(..) => None,
    });
    if period.is_some() {
        keys.push(format!("created_at / {DAY_MS}"));
    }
    let select_keys: String = keys.iter().map(|k| format!("{k}, ")).collect();
    let group_by = if keys.is_empty() {
        String::new()
    } else {
        format!(" GROUP BY {}", keys.join(", "))
    };
    let rows = org.execute(
        &format!(
            "SELECT {select_keys}COUNT(*), SUM(status = 'failed'), SUM(pricing_missing != 0), \
             SUM(input_tokens), SUM(output_tokens), SUM(total_tokens), SUM(base_cost_micros), \
             SUM(billed_cost_micros) FROM usage_records WHERE {}{group_by}",
            filters.condition()
        ),
        &filters.params(),
    )?;
    let mut totals = Tally::default();
    let mut grouped = Groups::new();
    for row in &rows.rows {
        let sums = &row[keys.len()..];
        let tally = Tally {
            calls: int(&sums[0]),
            failed_calls: int(&sums[1]),
            pricing_missing_calls: int(&sums[2]),
            input_tokens: int(&sums[3]),
            output_tokens: int(&sums[4]),
            total_tokens: int(&sums[5]),
            base_micros: int(&sums[6]),
            billed_micros: int(&sums[7]),
        };
        if tally.calls == 0 {
            continue; // the one row an ungrouped query answers over no records
        }
        let mut columns = row.iter();
        let key = groups
            .iter()
            .map(|g| match g {
                Group::Column(..) => columns.next().and_then(Value::as_str).map(String::from),
                Group::Period(p) => row[keys.len() - 1].as_i64().map(|day| p.label(day)),
            })
            .collect();
        totals.add(&tally);
        grouped.entry(key).or_default().add(&tally);
    }
    Ok((totals, grouped))
}

// ---- records --------------------------------------------------------------

const RECORD_COLUMNS: &str = "id, created_at, provider, model, status, error_code, agent_id, \
     agent_execution_id, workflow_id, execution_id, step_id, api_key_id, input_tokens, output_tokens, \
     total_tokens, base_cost_micros, billed_cost_micros, markup_percent, pricing_missing, latency_ms";

/// The CSV header: the JSON record's fields in the same order.
const CSV_HEADER: [&str; 22] = [
    "id",
    "created_at",
    "provider",
    "model",
    "status",
    "error_code",
    "agent_id",
    "agent_execution_id",
    "workflow_id",
    "execution_id",
    "step_id",
    "api_key_id",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "base_cost_micros",
    "billed_cost_micros",
    "base_cost",
    "billed_cost",
    "markup_percent",
    "pricing_missing",
    "latency_ms",
];

/// One usage record as a report shows it.
struct Record {
    id: String,
    created_at: i64,
    text: [Option<String>; 10],
    numbers: [i64; 5],
    markup_percent: i64,
    pricing_missing: bool,
    latency_ms: i64,
}

impl Record {
    fn from_row(row: &[Value]) -> Self {
        let text = |i: usize| row[i].as_str().map(String::from);
        Self {
            id: text(0).unwrap_or_default(),
            created_at: int(&row[1]),
            text: std::array::from_fn(|i| text(i + 2)),
            numbers: std::array::from_fn(|i| int(&row[i + 12])),
            markup_percent: int(&row[17]),
            pricing_missing: int(&row[18]) != 0,
            latency_ms: int(&row[19]),
        }
    }

    /// The fields in [`CSV_HEADER`] order.
    fn fields(&self) -> Vec<Json> {
        let mut fields = vec![
            Json::from(self.id.as_str()),
            timestamp(self.created_at).into(),
        ];
        fields.extend(self.text.iter().map(|t| Json::from(t.clone())));
        fields.extend(self.numbers.iter().map(|n| Json::from(*n)));
        fields.push(format_micros(self.numbers[3]).into());
        fields.push(format_micros(self.numbers[4]).into());
        fields.push(self.markup_percent.into());
        fields.push(self.pricing_missing.into());
        fields.push(self.latency_ms.into());
        fields
    }

    fn json(&self) -> Json {
        Json::Object(
            CSV_HEADER
                .iter()
                .map(|name| name.to_string())
                .zip(self.fields())
                .collect(),
        )
    }

    /// One CSV line (RFC 4180, CRLF); NULL is an empty field.
    fn csv_line(&self) -> String {
        let fields: Vec<String> = self
            .fields()
            .into_iter()
            .map(|field| match field {
                Json::Null => String::new(),
                Json::String(text) => text,
                other => other.to_string(),
            })
            .collect();
        csv_line(&fields)
    }
}

/// Up to `limit` records matching `filters` after `after` (a `(created_at,
/// id)` position), in `(created_at, id)` order.
fn records_after(
    org: &OrgScoped,
    filters: &Filters,
    after: Option<&(i64, String)>,
    limit: i64,
) -> Result<Vec<Record>, ApiError> {
    let mut params = filters.params();
    let mut sql = format!(
        "SELECT {RECORD_COLUMNS} FROM usage_records WHERE {}",
        filters.condition()
    );
    if let Some((created_at, id)) = after {
        let n = params.len() + 2;
        // `created_at >= ?` keeps the index range; the OR steps past `after`.
        sql.push_str(&format!(
            " AND created_at >= ?{n} AND (created_at > ?{n} OR id > ?{})",
            n + 1
        ));
        params.extend([Value::Integer(*created_at), Value::from(id.as_str())]);
    }
    sql.push_str(&format!(
        " ORDER BY created_at, id LIMIT ?{}",
        params.len() + 2
    ));
    params.push(Value::Integer(limit));
    let rows = org.execute(&sql, &params)?;
    Ok(rows.rows.iter().map(|row| Record::from_row(row)).collect())
}

/// Writes the header, then every matching record after `after`, reading
/// [`CSV_BATCH`] at a time by keyset and writing each batch as it comes;
/// stops early when the client has gone.
fn write_csv(
    ctx: &RequestContext,
    org_id: &str,
    filters: &Filters,
    mut after: Option<(i64, String)>,
    write: &mut ChunkSink<'_>,
) -> Result<(), ApiError> {
    let header: Vec<String> = CSV_HEADER.iter().map(|s| s.to_string()).collect();
    if !write(csv_line(&header).as_bytes()) {
        return Ok(());
    }
    let org = OrgScoped::new(ctx.db()?, org_id);
    loop {
        let batch = records_after(&org, filters, after.as_ref(), CSV_BATCH)?;
        let Some(last) = batch.last() else {
            return Ok(());
        };
        after = Some((last.created_at, last.id.clone()));
        let chunk: String = batch.iter().map(Record::csv_line).collect();
        if !write(chunk.as_bytes()) || (batch.len() as i64) < CSV_BATCH {
            return Ok(());
        }
    }
}

/// One CSV line of `fields`: RFC 4180 quoting (a field with a comma, quote
/// or line break is quoted, quotes doubled), ended by CRLF.
fn csv_line(fields: &[String]) -> String {
    let mut line = String::new();
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        if field.contains([',', '"', '\r', '\n']) {
            line.push('"');
            line.push_str(&field.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(field);
        }
    }
    line.push_str("\r\n");
    line
}

/// Whether `Accept` names `text/csv` (with any parameters, any q but 0).
fn wants_csv(accept: Option<&str>) -> bool {
    accept.unwrap_or("").split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f64>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        media.eq_ignore_ascii_case("text/csv") && !refused
    })
}

/// The opaque cursor of a record position.
fn encode_cursor(created_at: i64, id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{created_at}:{id}"))
}

/// The position a cursor stands for; `None` for anything [`encode_cursor`] did not make.
fn decode_cursor(cursor: &str) -> Option<(i64, String)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (created_at, id) = text.split_once(':')?;
    let created_at = created_at.parse().ok()?;
    (!id.is_empty()).then(|| (created_at, id.to_string()))
}

// ---- workflow costs -------------------------------------------------------

/// Count, total, mean and nearest-rank percentiles of per-run costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stats {
    count: i64,
    total: i64,
    mean: i64,
    p50: i64,
    p95: i64,
    max: i64,
}

impl Stats {
    fn of(mut values: Vec<i64>) -> Self {
        values.sort_unstable();
        let total: i128 = values.iter().map(|v| i128::from(*v)).sum();
        let count = values.len() as i64;
        Self {
            count,
            total: i64::try_from(total).unwrap_or(i64::MAX),
            mean: mean(total, count),
            p50: percentile(&values, 50),
            p95: percentile(&values, 95),
            max: values.last().copied().unwrap_or(0),
        }
    }

    fn json(&self) -> Json {
        json!({
            "total_micros": self.total,
            "mean_micros": self.mean,
            "p50_micros": self.p50,
            "p95_micros": self.p95,
            "max_micros": self.max,
            "total": format_micros(self.total),
            "mean": format_micros(self.mean),
            "p50": format_micros(self.p50),
            "p95": format_micros(self.p95),
            "max": format_micros(self.max),
        })
    }
}

/// `total / count` rounded half up; 0 for no values.
fn mean(total: i128, count: i64) -> i64 {
    if count <= 0 {
        return 0;
    }
    let count = i128::from(count);
    i64::try_from((2 * total + count).div_euclid(2 * count)).unwrap_or(i64::MAX)
}

/// The nearest-rank `p`th percentile of `sorted` (ascending): the value at
/// rank `ceil(p/100 × n)`, always one of the values; 0 when empty.
fn percentile(sorted: &[i64], p: u32) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() * p as usize).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backends::TestBackends;
    use spindle_http::Method;
    use spindle_store::Db;
    use std::cell::Cell;
    use std::rc::Rc;

    const JAN_5_2026: i64 = 1_767_571_200_000; // a Monday, 00:00 UTC

    fn day_of(ms: i64) -> i64 {
        ms.div_euclid(DAY_MS)
    }

    #[test]
    fn days_fold_into_iso_weeks_starting_monday_and_calendar_months() {
        let monday = day_of(JAN_5_2026);
        assert_eq!(Period::Day.label(monday), "2026-01-05");
        assert_eq!(Period::Week.label(monday), "2026-W02");
        // Sunday 11 January is still week 2; Monday 12 January starts week 3.
        assert_eq!(Period::Week.label(monday + 6), "2026-W02");
        assert_eq!(Period::Week.label(monday + 7), "2026-W03");
        // Sunday 4 January belongs to week 1, which began on Monday 29 December 2025.
        assert_eq!(Period::Week.label(monday - 1), "2026-W01");
        assert_eq!(Period::Week.label(monday - 7), "2026-W01");
        assert_eq!(Period::Week.label(monday - 8), "2025-W52");
        // 1 January 2021 (a Friday) is in week 53 of 2020.
        let jan_1_2021 = day_of(parse_instant("2021-01-01").unwrap());
        assert_eq!(Period::Week.label(jan_1_2021), "2020-W53");
        assert_eq!(Period::Month.label(monday), "2026-01");
        assert_eq!(Period::Month.label(monday - 5), "2025-12");
        assert_eq!(Period::Day.label(0), "1970-01-01");
        // The last millisecond of a day is still that day.
        assert_eq!(
            Period::Day.label(day_of(JAN_5_2026 + DAY_MS - 1)),
            "2026-01-05"
        );
    }

    #[test]
    fn percentiles_are_nearest_rank_and_means_round_half_up() {
        assert_eq!(percentile(&[], 50), 0);
        assert_eq!(percentile(&[7], 50), 7);
        assert_eq!(percentile(&[7], 95), 7);
        assert_eq!(percentile(&[1, 2, 3, 4], 50), 2);
        assert_eq!(percentile(&[1, 2, 3, 4], 95), 4);
        let hundred: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&hundred, 50), 50);
        assert_eq!(percentile(&hundred, 95), 95);
        let twenty: Vec<i64> = (1..=20).collect();
        assert_eq!(percentile(&twenty, 95), 19);
        assert_eq!(mean(5, 2), 3);
        assert_eq!(mean(4, 3), 1);
        assert_eq!(mean(0, 0), 0);
        let stats = Stats::of(vec![30, 10, 20, 40]);
        assert_eq!(
            stats,
            Stats {
                count: 4,
                total: 100,
                mean: 25,
                p50: 20,
                p95: 40,
                max: 40
            }
        );
        assert_eq!(stats.json()["p95"], "0.000040");
        assert_eq!(Stats::of(Vec::new()).max, 0);
    }

    #[test]
    fn csv_fields_are_quoted_as_rfc_4180_says() {
        let line =
            |fields: &[&str]| csv_line(&fields.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(line(&["a", "b", ""]), "a,b,\r\n");
        assert_eq!(
            line(&["x,y", "say \"hi\"", "two\nlines", "cr\r"]),
            "\"x,y\",\"say \"\"hi\"\"\",\"two\nlines\",\"cr\r\"\r\n"
        );
        assert_eq!(line(&["plain text"]), "plain text\r\n");
    }

    #[test]
    fn accept_chooses_csv_only_when_it_names_text_csv() {
        assert!(wants_csv(Some("text/csv")));
        assert!(wants_csv(Some("application/json, TEXT/CSV; charset=utf-8")));
        assert!(!wants_csv(Some("text/csv;q=0")));
        assert!(!wants_csv(Some("application/json")));
        assert!(!wants_csv(Some("*/*")));
        assert!(!wants_csv(None));
    }

    fn range(from: Option<&str>, to: Option<&str>) -> Result<(i64, i64), Vec<ErrorDetail>> {
        let mut problems = Vec::new();
        let range = parse_range(from, to, JAN_5_2026, &mut problems);
        if problems.is_empty() {
            Ok(range)
        } else {
            Err(problems)
        }
    }

    #[test]
    fn ranges_take_rfc_3339_or_dates_and_default_to_the_last_30_days() {
        assert_eq!(
            range(None, None).unwrap(),
            (JAN_5_2026 - 30 * DAY_MS, JAN_5_2026)
        );
        assert_eq!(
            range(Some("2026-01-01"), Some("2026-01-02")).unwrap(),
            (JAN_5_2026 - 4 * DAY_MS, JAN_5_2026 - 3 * DAY_MS)
        );
        // An offset is honoured; only `to` given: 30 days before it.
        assert_eq!(
            range(Some("2026-01-05T02:00:00+02:00"), Some("2026-01-06")).unwrap(),
            (JAN_5_2026, JAN_5_2026 + DAY_MS)
        );
        assert_eq!(
            range(None, Some("2026-01-06T00:00:00Z")).unwrap(),
            (JAN_5_2026 - 29 * DAY_MS, JAN_5_2026 + DAY_MS)
        );
    }

    #[test]
    fn bad_ranges_name_the_bound() {
        let path = |problems: Vec<ErrorDetail>| problems[0].path.clone();
        assert_eq!(
            path(range(Some("yesterday"), None).unwrap_err()),
            "query.from"
        );
        assert_eq!(
            path(range(None, Some("2026-13-01")).unwrap_err()),
            "query.to"
        );
        assert_eq!(
            path(range(Some("2026-1-5"), None).unwrap_err()),
            "query.from"
        );
        // from not before to, including equal bounds.
        assert_eq!(
            path(range(Some("2026-01-02"), Some("2026-01-02")).unwrap_err()),
            "query.to"
        );
        assert_eq!(
            path(range(Some("2026-01-03"), Some("2026-01-02")).unwrap_err()),
            "query.to"
        );
        // 400 days is the most; 401 is too many.
        assert!(range(Some("2025-01-01"), Some("2026-02-05")).is_ok());
        assert_eq!(
            path(range(Some("2025-01-01"), Some("2026-02-06")).unwrap_err()),
            "query.from"
        );
        // Only from, in the future: to defaults to now, which is before it.
        assert_eq!(
            path(range(Some("2026-02-01"), None).unwrap_err()),
            "query.to"
        );
    }

    #[test]
    fn group_by_names_what_it_does_not_know() {
        assert_eq!(parse_group_by(None).unwrap(), Vec::new());
        assert_eq!(
            parse_group_by(Some("model,day")).unwrap(),
            vec![Group::Column("model", "model"), Group::Period(Period::Day)]
        );
        let unknown = parse_group_by(Some("model,colour")).unwrap_err();
        assert_eq!(unknown.path, "query.group_by");
        assert!(
            unknown.problem.contains("\"colour\""),
            "{}",
            unknown.problem
        );
        assert!(parse_group_by(Some("day,week")).is_err());
        assert!(parse_group_by(Some("agent,agent")).is_err());
    }

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        let cursor = encode_cursor(1_767_571_200_123, "0190-abc");
        assert_eq!(
            decode_cursor(&cursor),
            Some((1_767_571_200_123, "0190-abc".to_string()))
        );
        for bad in ["", "!!!", "bm9jb2xvbg", "eDph"] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    /// Org `o1` with `n` records, three per millisecond (so keyset ties on
    /// `created_at` are exercised), and one record of org `o2`.
    fn with_records(n: usize) -> RequestContext {
        let ctx = RequestContext::new(Box::new(TestBackends::memory()));
        insert_records(&ctx, n);
        ctx
    }

    /// The records of [`with_records`], in `ctx`'s database.
    fn insert_records(ctx: &RequestContext, n: usize) {
        let db = ctx.db().unwrap();
        for org in ["o1", "o2"] {
            db.execute(
                "INSERT INTO organizations (id, name, created_at, updated_at) VALUES (?, ?, 0, 0)",
                &[Value::from(org), Value::from(org)],
            )
            .unwrap();
        }
        let insert = |org: &str, id: String, at: i64, model: &str, billed: i64| {
            db.execute(
                "INSERT INTO usage_records (id, org_id, provider, model, status, input_tokens, \
                 output_tokens, total_tokens, base_cost_micros, billed_cost_micros, created_at) \
                 VALUES (?, ?, 'openai', ?, 'succeeded', 10, 5, 15, ?, ?, ?)",
                &[
                    Value::from(id),
                    Value::from(org),
                    Value::from(model),
                    Value::Integer(billed - 1),
                    Value::Integer(billed),
                    Value::Integer(at),
                ],
            )
            .unwrap();
        };
        for i in 0..n {
            let model = if i % 2 == 0 { "a,\"quoted\"" } else { "plain" };
            // Ids descend within a millisecond: the order must come from the id, not insertion.
            let id = format!("r{:05}", n - i);
            insert("o1", id, JAN_5_2026 + (i / 3) as i64, model, 2);
        }
        insert("o2", "other".into(), JAN_5_2026, "plain", 1000);
    }

    fn filters() -> Filters {
        Filters {
            from: JAN_5_2026 - DAY_MS,
            to: JAN_5_2026 + DAY_MS,
            equal: Vec::new(),
        }
    }

    #[test]
    fn a_csv_export_streams_every_record_once_in_batches_and_in_order() {
        let n = 2 * CSV_BATCH as usize + 7;
        let ctx = with_records(n);
        let mut chunks = Vec::new();
        write_csv(&ctx, "o1", &filters(), None, &mut |chunk| {
            chunks.push(String::from_utf8(chunk.to_vec()).unwrap());
            true
        })
        .unwrap();
        // The header, then one chunk per batch of records.
        assert_eq!(chunks.len(), 4);
        assert!(chunks[0].starts_with("id,created_at,provider,model,status,"));
        let lines: Vec<&str> = chunks[1..]
            .iter()
            .flat_map(|c| c.split_terminator("\r\n"))
            .collect();
        assert_eq!(lines.len(), n);
        let ids: Vec<&str> = lines.iter().map(|l| l.split(',').next().unwrap()).collect();
        let mut expected = ids.clone();
        expected.dedup();
        assert_eq!(expected.len(), n, "no record twice");
        assert!(!ids.contains(&"other"), "another organisation's record");
        assert!(
            lines[0].contains(",\"a,\"\"quoted\"\"\",succeeded,"),
            "{}",
            lines[0]
        );
        // Within a millisecond, by id.
        assert!(ids[0] < ids[1] && ids[1] < ids[2], "{:?}", &ids[..3]);
        // The client goes after the header: nothing more is read or written.
        let mut writes = 0;
        write_csv(&ctx, "o1", &filters(), None, &mut |_| {
            writes += 1;
            false
        })
        .unwrap();
        assert_eq!(writes, 1);
    }

    /// A database whose reads of usage records fail after the first
    /// `allowed`, counting every read.
    struct FailingReads {
        inner: spindle_store::RusqliteDb,
        reads: Rc<Cell<usize>>,
        allowed: usize,
    }

    impl Db for FailingReads {
        fn execute(
            &self,
            sql: &str,
            params: &[Value],
        ) -> Result<spindle_store::Rows, spindle_store::DbError> {
            if sql.starts_with(&format!("SELECT {RECORD_COLUMNS} FROM usage_records")) {
                self.reads.set(self.reads.get() + 1);
                if self.reads.get() > self.allowed {
                    return Err(spindle_store::DbError::from_message("disk I/O error"));
                }
            }
            self.inner.execute(sql, params)
        }

        fn transaction(&self) -> &spindle_store::TransactionState {
            self.inner.transaction()
        }
    }

    /// SQLite in memory behind [`FailingReads`]; nothing else can fail.
    struct FlakyStorage {
        reads: Rc<Cell<usize>>,
        allowed: usize,
    }

    impl crate::Backends for FlakyStorage {
        fn open_db(&self) -> Result<Box<dyn Db>, spindle_store::DbError> {
            Ok(Box::new(FailingReads {
                inner: spindle_store::RusqliteDb::memory(),
                reads: self.reads.clone(),
                allowed: self.allowed,
            }))
        }
        fn open_kv(&self) -> Result<Box<dyn spindle_store::KvStore>, spindle_store::KvError> {
            Ok(Box::new(spindle_store::MemoryKv::default()))
        }
        fn variable(&self, _: &str) -> Option<String> {
            None
        }
        fn random_bytes(&self, buffer: &mut [u8]) {
            getrandom::fill(buffer).expect("the OS's random source");
        }
        fn send(
            &self,
            _: &spindle_http::OutboundRequest,
        ) -> Result<spindle_http::OutboundResponse, spindle_http::OutboundError> {
            Err(spindle_http::OutboundError::Denied("no network".into()))
        }
        fn sleep_ms(&self, _: u64) {}
    }

    #[test]
    fn a_csv_export_whose_storage_fails_midway_ends_after_what_it_sent() {
        const SECRET: &str = "sk_unitTestSecretOfFortyThreeBase62Characters00";
        let reads = Rc::new(Cell::new(0));
        let ctx = RequestContext::new(Box::new(FlakyStorage {
            reads: reads.clone(),
            allowed: 1,
        }));
        // One full batch, then a second batch whose read fails.
        let n = CSV_BATCH as usize + 7;
        insert_records(&ctx, n);
        ctx.db()
            .unwrap()
            .execute(
                "INSERT INTO api_keys (id, org_id, name, role, prefix, key_hash, created_at) \
                 VALUES ('k1', 'o1', 'ci', 'viewer', 'sk_unitTest', ?, 0)",
                &[Value::Text(spindle_auth::hash_api_key(SECRET))],
            )
            .unwrap();
        let mut request = ApiRequest::new(
            Method::Get,
            "/api/v1/usage/records?from=2026-01-04&to=2026-01-06",
        );
        request.headers.extend([
            ("accept".to_string(), "text/csv".to_string()),
            ("authorization".to_string(), format!("Bearer {SECRET}")),
        ]);
        let mut response = records(&ctx, &request, &Params::default()).unwrap();
        // The head is answered before any record is read.
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("content-type"),
            Some("text/csv; charset=utf-8")
        );
        assert!(response.body.is_empty());
        assert_eq!(reads.get(), 0);
        let mut chunks = Vec::new();
        response
            .stream
            .take()
            .expect("a streamed body")
            .run(&ctx, &mut |chunk: &[u8]| {
                chunks.push(String::from_utf8(chunk.to_vec()).unwrap());
                true
            });
        // The second read failed, and the body simply ended there: the
        // header, the first batch, no error body.
        assert_eq!(reads.get(), 2);
        assert_eq!(chunks.len(), 2, "the header and one batch");
        assert_eq!(chunks[0], format!("{}\r\n", CSV_HEADER.join(",")));
        let lines: Vec<&str> = chunks[1].split_terminator("\r\n").collect();
        assert!(chunks[1].ends_with("\r\n"), "no line is cut short");
        // The first CSV_BATCH records in (created_at, id) order: ids descend
        // within each millisecond of three, so each group is read backwards.
        let mut expected: Vec<(usize, String)> =
            (0..n).map(|i| (i / 3, format!("r{:05}", n - i))).collect();
        expected.sort();
        let expected: Vec<&str> = expected[..CSV_BATCH as usize]
            .iter()
            .map(|(_, id)| id.as_str())
            .collect();
        let ids: Vec<&str> = lines.iter().map(|l| l.split(',').next().unwrap()).collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn pages_follow_the_keyset_and_the_summary_equals_their_sum() {
        let ctx = with_records(10);
        let org = OrgScoped::new(ctx.db().unwrap(), "o1");
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = records_after(&org, &filters(), after.as_ref(), 3).unwrap();
            let Some(last) = page.last() else { break };
            after = Some((last.created_at, last.id.clone()));
            seen.extend(
                page.iter()
                    .map(|r| (r.created_at, r.id.clone(), r.numbers[4])),
            );
        }
        assert_eq!(seen.len(), 10);
        assert!(
            seen.windows(2)
                .all(|w| (w[0].0, &w[0].1) < (w[1].0, &w[1].1))
        );
        let groups = parse_group_by(Some("model,day")).unwrap();
        let (totals, grouped) = summarise(&org, &filters(), &groups).unwrap();
        assert_eq!(totals.calls, 10);
        assert_eq!(totals.billed_micros, seen.iter().map(|s| s.2).sum::<i64>());
        assert_eq!(totals.base_micros, 10);
        let day = Some("2026-01-05".to_string());
        assert_eq!(grouped[&vec![Some("plain".into()), day.clone()]].calls, 5);
        assert_eq!(
            grouped[&vec![Some("a,\"quoted\"".into()), day]].total_tokens,
            75
        );
        // A range that ends before the first record holds nothing, and no group.
        let empty = Filters {
            to: JAN_5_2026,
            ..filters()
        };
        let (totals, grouped) = summarise(&org, &empty, &[]).unwrap();
        assert_eq!((totals, grouped.len()), (Tally::default(), 0));
        let (totals, grouped) = summarise(&org, &filters(), &[]).unwrap();
        assert_eq!((totals.calls, grouped.len()), (10, 1));
    }

    #[test]
    fn filters_add_one_bound_condition_each() {
        let request = ApiRequest::new(
            Method::Get,
            "/api/v1/usage/records?from=2026-01-01&to=2026-01-05&model=gpt%2D4o&status=failed",
        );
        let mut problems = Vec::new();
        let filters = Filters::parse(&request, JAN_5_2026, &mut problems);
        assert!(problems.is_empty());
        assert_eq!(
            filters.condition(),
            "org_id = ?1 AND created_at >= ?2 AND created_at < ?3 AND model = ?4 AND status = ?5"
        );
        assert_eq!(filters.params()[2], Value::from("gpt-4o"));
        let bad = ApiRequest::new(Method::Get, "/x?status=ok");
        Filters::parse(&bad, JAN_5_2026, &mut problems);
        assert_eq!(problems[0].path, "query.status");
    }
}
