//! Budgets: spending caps per organisation, API key, workflow or agent for a
//! UTC day or month (`/api/v1/usage/budgets`, README.md "Budgets").
//!
//! A budget holds because it is a reservation, not an after-the-fact check.
//! Before each provider call [`reserve`] books the call's worst-case cost
//! against every budget that applies, inside one `BEGIN IMMEDIATE`
//! transaction whose single `INSERT … SELECT` writes the reservations only
//! when no `block` budget would pass its limit (settled spend + live
//! reservations + this call). SQLite has one writer at a time, so of any
//! number of concurrent reservations exactly those that fit get in. After
//! the call [`settle`] adds the billed cost to each budget's period counter
//! and drops the reservation; a reservation whose call died stops counting
//! when it expires (the tick deletes it, [`release_expired`]).
//!
//! Spend is kept as one counter per budget and period (`budget_periods`),
//! seeded from the period's usage records when the budget is created, so a
//! reservation reads two rows per budget whatever the period's volume.

use crate::auth::{authenticate, record_activity};
use crate::context::RequestContext;
use crate::{json_column, now_ms, timestamp};
use chrono::{Datelike, NaiveDate};
use serde_json::{Map, Value as Json, json};
use spindle_auth::{Caller, Role};
use spindle_http::{ApiError, ApiRequest, ApiResponse, ErrorDetail, Params};
use spindle_providers::pricing::{Price, cost_of, format_micros};
use spindle_providers::{ChatRequest, Provider, Usage};
use spindle_store::{Db, OrgScoped, Value, in_transaction};

/// What a budget may cap, as the path's `:scope` names it.
pub const SCOPES: [&str; 4] = ["org", "api_key", "workflow", "agent"];
/// Thresholds (percent of the limit) when a `PUT` gives none.
pub const DEFAULT_THRESHOLDS: [i64; 2] = [80, 100];
/// Most thresholds one budget may carry.
pub const MAX_THRESHOLDS: usize = 10;
/// Highest threshold, in percent (alert budgets may pass their limit).
pub const MAX_THRESHOLD_PERCENT: i64 = 1000;
/// Largest limit accepted: one billion dollars in micro-dollars.
pub const MAX_LIMIT_MICROS: i64 = 1_000_000_000_000_000;
/// How long a reservation outlives its call's timeout before it stops counting.
pub const RESERVATION_MARGIN_MS: u64 = 30_000;
/// Output tokens reserved for a call that sets no `max_tokens` (most
/// providers then stop at the model's own limit).
pub const UNCAPPED_OUTPUT_TOKENS: u64 = 16_384;
/// Output tokens Anthropic gets when a call sets no `max_tokens` (the
/// request builder sends this default).
const ANTHROPIC_DEFAULT_OUTPUT_TOKENS: u64 = 1024;
/// Most expired reservations one tick deletes.
const EXPIRED_BATCH: i64 = 500;
const FIELDS: [&str; 4] = ["period", "limit", "action", "thresholds"];

/// A budget's period: a UTC calendar day or month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// 00:00:00 UTC to the next midnight.
    Day,
    /// The first of the month, 00:00 UTC, to the first of the next.
    Month,
}

impl Period {
    /// `day` or `month`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "day" => Some(Self::Day),
            "month" => Some(Self::Month),
            _ => None,
        }
    }

    /// The name the API and the database use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    /// The period holding `at_ms` (UTC ms) as `[start, end)` in UTC ms.
    pub fn bounds(self, at_ms: i64) -> (i64, i64) {
        let date = chrono::DateTime::from_timestamp_millis(at_ms)
            .unwrap_or_default()
            .date_naive();
        let (start, end) = match self {
            Self::Day => (date, date.succ_opt().unwrap_or(date)),
            Self::Month => {
                let first = date.with_day(1).unwrap_or(date);
                let next = if first.month() == 12 {
                    NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
                } else {
                    NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
                };
                (first, next.unwrap_or(first))
            }
        };
        let ms = |d: NaiveDate| {
            d.and_time(chrono::NaiveTime::MIN)
                .and_utc()
                .timestamp_millis()
        };
        (ms(start), ms(end))
    }
}

/// Who a provider call is charged to: every scope a budget can cap.
#[derive(Debug, Clone, Copy)]
pub struct ChargeScope<'a> {
    /// The organisation.
    pub org_id: &'a str,
    /// The API key of the caller, when it is one.
    pub api_key_id: Option<&'a str>,
    /// The workflow of the step, when the call is one.
    pub workflow_id: Option<&'a str>,
    /// The agent.
    pub agent_id: Option<&'a str>,
}

impl ChargeScope<'_> {
    /// `?2`–`?4` of [`applies`] (an [`OrgScoped`] binds `?1`).
    fn params(&self) -> [Value; 3] {
        [
            Value::from(self.api_key_id),
            Value::from(self.workflow_id),
            Value::from(self.agent_id),
        ]
    }
}

/// The budgets of `?1` that apply to a call of API key `?2`, workflow `?3`
/// and agent `?4` (`NULL` matches nothing), as a condition on alias `b`.
fn applies(b: &str) -> String {
    format!(
        "{b}.org_id = ?1 AND (({b}.scope = 'org' AND {b}.scope_id = ?1) \
         OR ({b}.scope = 'api_key' AND {b}.scope_id = ?2) \
         OR ({b}.scope = 'workflow' AND {b}.scope_id = ?3) \
         OR ({b}.scope = 'agent' AND {b}.scope_id = ?4))"
    )
}

/// Budget `b`'s current period start, given the day's start `?5` and the month's `?6`.
fn period_start(b: &str) -> String {
    format!("CASE {b}.period WHEN 'day' THEN ?5 ELSE ?6 END")
}

/// Budget `b`'s settled spend plus its reservations live at `?7`, this period.
fn used(b: &str) -> String {
    let start = period_start(b);
    format!(
        "(COALESCE((SELECT p.spent_micros FROM budget_periods p WHERE p.budget_id = {b}.id \
         AND p.period_start = {start}), 0) + COALESCE((SELECT SUM(r.amount_micros) FROM \
         budget_reservations r WHERE r.budget_id = {b}.id AND r.period_start = {start} \
         AND r.expires_at > ?7), 0))"
    )
}

/// The most one provider call can cost in micro-dollars: the input estimate
/// and `max_tokens` of output at `price` plus `markup_percent`; 0 without a price.
pub fn worst_case_micros(
    provider: Provider,
    price: Option<Price>,
    markup_percent: u32,
    request: &ChatRequest,
) -> i64 {
    let Some(price) = price else {
        return 0;
    };
    let output = request.max_tokens.map_or(
        if provider == Provider::Anthropic {
            ANTHROPIC_DEFAULT_OUTPUT_TOKENS
        } else {
            UNCAPPED_OUTPUT_TOKENS
        },
        u64::from,
    );
    let usage = Usage {
        input_tokens: input_estimate(request),
        output_tokens: output,
    };
    cost_of(price, usage, markup_percent).billed_micros
}

/// Input tokens of a request, estimated as every character of its text
/// (system prompt, messages, tool calls, tool definitions, answer schema) / 4.
pub fn input_estimate(request: &ChatRequest) -> u64 {
    let chars = |s: &str| s.chars().count();
    let mut total = request.system.as_deref().map_or(0, chars);
    for message in &request.messages {
        total += chars(&message.content)
            + message.tool_call_id.as_deref().map_or(0, chars)
            + message.tool_name.as_deref().map_or(0, chars);
        for call in &message.tool_calls {
            total += chars(&call.id) + chars(&call.name) + chars(&call.arguments.to_string());
        }
    }
    for tool in &request.tools {
        total += chars(&tool.name) + chars(&tool.description) + chars(&tool.parameters.to_string());
    }
    total += request
        .response_schema
        .as_ref()
        .map_or(0, |s| chars(&s.to_string()));
    (total as u64).div_ceil(4).max(1)
}

/// A call's booking against the budgets that applied when it was made.
#[derive(Debug, Clone)]
pub struct Reservation {
    /// The call's id; its reservation rows carry it.
    pub call_id: String,
    /// When it was made (UTC ms): its cost counts in the periods holding this time.
    pub at: i64,
    /// The worst-case cost reserved, in micro-dollars.
    pub amount_micros: i64,
    /// Whether any reservation row was written.
    pub held: bool,
}

/// Reserves the `worst_case` cost of one provider call (asked for only when
/// a budget applies) against every budget that applies to `scope`; a `block`
/// budget it would pass refuses it with [`ApiError::BudgetExceeded`] and
/// nothing is written. The reservation stops counting after `ttl_ms`.
pub fn reserve(
    ctx: &RequestContext,
    scope: &ChargeScope,
    ttl_ms: u64,
    worst_case: impl FnOnce() -> Result<i64, ApiError>,
) -> Result<Reservation, ApiError> {
    let now = now_ms();
    // A read, so that calls no budget covers never take the write lock.
    if count_applying(ctx.db()?, scope)? == 0 {
        return Ok(unheld(ctx, now, 0));
    }
    book(ctx, scope, worst_case()?, now, ttl_ms)
}

/// A reservation that holds nothing: no budget applied.
fn unheld(ctx: &RequestContext, now: i64, amount_micros: i64) -> Reservation {
    Reservation {
        call_id: ctx.new_id(),
        at: now,
        amount_micros: amount_micros.max(0),
        held: false,
    }
}

/// [`reserve`] of a known amount at time `now` (UTC ms), for tests.
#[cfg(test)]
pub fn reserve_at(
    ctx: &RequestContext,
    scope: &ChargeScope,
    amount_micros: i64,
    now: i64,
    ttl_ms: u64,
) -> Result<Reservation, ApiError> {
    if count_applying(ctx.db()?, scope)? == 0 {
        return Ok(unheld(ctx, now, amount_micros));
    }
    book(ctx, scope, amount_micros, now, ttl_ms)
}

/// Writes the reservations in one transaction, or refuses the call.
fn book(
    ctx: &RequestContext,
    scope: &ChargeScope,
    amount_micros: i64,
    now: i64,
    ttl_ms: u64,
) -> Result<Reservation, ApiError> {
    let db = ctx.db()?;
    let mut reservation = unheld(ctx, now, amount_micros);
    let expires_at = now.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
    let mut params = scope.params().to_vec();
    params.extend([
        Value::Integer(Period::Day.bounds(now).0),
        Value::Integer(Period::Month.bounds(now).0),
        Value::Integer(now),
        Value::Integer(reservation.amount_micros),
        Value::from(reservation.call_id.as_str()),
        Value::Integer(expires_at),
    ]);
    // One statement books the call against every budget that applies, and
    // only when no block budget would pass its limit; `BEGIN IMMEDIATE`
    // takes the write lock first, so the sums it reads cannot change under it.
    let insert = format!(
        "INSERT INTO budget_reservations (id, org_id, budget_id, call_id, period_start, amount_micros, \
         expires_at, created_at) SELECT ?9 || ':' || b.id, b.org_id, b.id, ?9, {start}, ?8, ?10, ?7 \
         FROM budgets b WHERE {applies} AND NOT EXISTS (SELECT 1 FROM budgets x WHERE {applies_x} \
         AND x.action = 'block' AND {used_x} + ?8 > x.limit_micros) RETURNING budget_id",
        start = period_start("b"),
        applies = applies("b"),
        applies_x = applies("x"),
        used_x = used("x"),
    );
    let over = format!(
        "SELECT x.scope, x.scope_id, x.period, x.limit_micros, {used_x} FROM budgets x \
         WHERE {applies_x} AND x.action = 'block' AND {used_x} + ?8 > x.limit_micros \
         ORDER BY x.created_at LIMIT 1",
        used_x = used("x"),
        applies_x = applies("x"),
    );
    reservation.held = in_transaction(db, |db| -> Result<bool, ApiError> {
        let org = OrgScoped::new(db, scope.org_id);
        if !org.execute(&insert, &params)?.rows.is_empty() {
            return Ok(true);
        }
        match org.execute(&over, &params[..7])?.into_first() {
            Some(row) => Err(refusal(&row, reservation.amount_micros)),
            // The budgets went away since the count: nothing to hold.
            None => Ok(false),
        }
    })?;
    Ok(reservation)
}

/// The refusal naming the budget (`scope, scope_id, period, limit, used`) a call would pass.
fn refusal(row: &[Value], amount: i64) -> ApiError {
    let limit = row[3].as_i64().unwrap_or(0);
    let used = row[4].as_i64().unwrap_or(0);
    ApiError::BudgetExceeded(format!(
        "the {} budget of {} {} allows {} per {}; {} is spent or reserved this period and this \
         call may cost up to {}",
        row[2].as_str().unwrap_or_default(),
        row[0].as_str().unwrap_or_default(),
        row[1].as_str().unwrap_or_default(),
        format_micros(limit),
        row[2].as_str().unwrap_or_default(),
        format_micros(used),
        format_micros(amount),
    ))
}

fn count_applying(db: &dyn Db, scope: &ChargeScope) -> Result<i64, ApiError> {
    Ok(OrgScoped::new(db, scope.org_id)
        .execute(
            &format!("SELECT COUNT(*) FROM budgets b WHERE {}", applies("b")),
            &scope.params(),
        )?
        .scalar_i64()
        .unwrap_or(0))
}

/// A threshold a settlement crossed (its `budget.threshold` event is queued).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossed {
    /// The budget.
    pub budget_id: String,
    /// The threshold, in percent of the limit.
    pub threshold: i64,
    /// The period's spend after the settlement, in micro-dollars.
    pub spent_micros: i64,
}

/// Settles a call: adds its billed cost (0 for a failed call) to every
/// budget that applies, in the period it was reserved in, drops its
/// reservations, and queues a `budget.threshold` event per threshold crossed.
/// A call counts against the budgets that applied when it was reserved: one
/// reserved against none (an unheld reservation) settles nothing.
pub fn settle(
    ctx: &RequestContext,
    scope: &ChargeScope,
    reservation: &Reservation,
    billed_micros: i64,
) -> Result<Vec<Crossed>, ApiError> {
    let db = ctx.db()?;
    let billed = billed_micros.max(0);
    if !reservation.held {
        return Ok(Vec::new());
    }
    in_transaction(db, |db| {
        let org = OrgScoped::new(db, scope.org_id);
        let mut crossed = Vec::new();
        if billed > 0 {
            let budgets = org.execute(
                &format!(
                    "SELECT b.id, b.scope, b.scope_id, b.period, b.limit_micros, b.action, b.thresholds \
                     FROM budgets b WHERE {}",
                    applies("b")
                ),
                &scope.params(),
            )?;
            for row in &budgets.rows {
                crossed.extend(charge(ctx, db, scope.org_id, row, reservation.at, billed)?);
            }
        }
        if reservation.held {
            org.execute(
                "DELETE FROM budget_reservations WHERE org_id = ?1 AND call_id = ?2",
                &[Value::from(reservation.call_id.as_str())],
            )?;
        }
        Ok(crossed)
    })
}

/// Adds `billed` to one budget (`id, scope, scope_id, period, limit, action,
/// thresholds`) in the period holding `at`; fires the thresholds it reaches.
fn charge(
    ctx: &RequestContext,
    db: &dyn Db,
    org_id: &str,
    budget: &[Value],
    at: i64,
    billed: i64,
) -> Result<Vec<Crossed>, ApiError> {
    let id = budget[0].as_str().unwrap_or_default();
    let period = Period::parse(budget[3].as_str().unwrap_or_default()).unwrap_or(Period::Month);
    let (start, end) = period.bounds(at);
    let now = now_ms();
    let spent = db
        .execute(
            "INSERT INTO budget_periods (org_id, budget_id, period_start, spent_micros, updated_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (budget_id, period_start) DO UPDATE SET \
             spent_micros = spent_micros + excluded.spent_micros, updated_at = excluded.updated_at \
             RETURNING spent_micros",
            &[
                Value::from(org_id),
                Value::from(id),
                Value::Integer(start),
                Value::Integer(billed),
                Value::Integer(now),
            ],
        )?
        .scalar_i64()
        .unwrap_or(billed);
    let limit = budget[4].as_i64().unwrap_or(i64::MAX);
    let reached: Vec<i64> = thresholds_of(&budget[6])
        .into_iter()
        .filter(|t| i128::from(spent) * 100 >= i128::from(*t) * i128::from(limit))
        .collect();
    let mut crossed = Vec::new();
    if reached.is_empty() {
        return Ok(crossed);
    }
    let fired = fired_thresholds(&OrgScoped::new(db, org_id), id, start)?;
    for threshold in reached.into_iter().filter(|t| !fired.contains(t)) {
        let inserted = db.execute(
            "INSERT INTO budget_alerts (org_id, budget_id, period_start, threshold, spent_micros, fired_at) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (budget_id, period_start, threshold) DO NOTHING \
             RETURNING threshold",
            &[
                Value::from(org_id),
                Value::from(id),
                Value::Integer(start),
                Value::Integer(threshold),
                Value::Integer(spent),
                Value::Integer(now),
            ],
        )?;
        if inserted.rows.is_empty() {
            continue;
        }
        let data = json!({
            "budget_id": id,
            "scope": budget[1].as_str(),
            "scope_id": budget[2].as_str(),
            "period": period.as_str(),
            "period_start": timestamp(start),
            "period_end": timestamp(end),
            "action": budget[5].as_str(),
            "threshold": threshold,
            "limit_micros": limit,
            "spent_micros": spent,
            "limit": format_micros(limit),
            "spent": format_micros(spent),
        });
        crate::engine::emit_event(ctx, db, org_id, "budget.threshold", &data)?;
        crossed.push(Crossed {
            budget_id: id.to_string(),
            threshold,
            spent_micros: spent,
        });
    }
    Ok(crossed)
}

/// The thresholds of budget `id` already fired in the period starting at `start`.
fn fired_thresholds(org: &OrgScoped, id: &str, start: i64) -> Result<Vec<i64>, ApiError> {
    Ok(org
        .execute(
            "SELECT threshold FROM budget_alerts WHERE org_id = ?1 AND budget_id = ?2 \
             AND period_start = ?3 ORDER BY threshold",
            &[Value::from(id), Value::Integer(start)],
        )?
        .rows
        .iter()
        .filter_map(|r| r[0].as_i64())
        .collect())
}

/// A budget's `thresholds` column: percents of its limit.
pub(super) fn thresholds_of(value: &Value) -> Vec<i64> {
    match json_column(value) {
        Some(Json::Array(items)) => items.iter().filter_map(Json::as_i64).collect(),
        _ => Vec::new(),
    }
}

/// Deletes reservations that expired by `now` (their calls died; they no
/// longer count), at most a batch per call; answers how many. For the tick.
pub fn release_expired(db: &dyn Db, now: i64) -> Result<usize, ApiError> {
    // The one cross-organisation statement here: the tick is the platform's.
    let deleted = db.execute(
        "DELETE FROM budget_reservations WHERE id IN (SELECT id FROM budget_reservations \
         WHERE expires_at <= ? LIMIT ?) RETURNING id",
        &[Value::Integer(now), Value::Integer(EXPIRED_BATCH)],
    )?;
    Ok(deleted.rows.len())
}

// ---------------------------------------------------------------------------
// The API.

const BUDGET_COLUMNS: &str =
    "id, scope, scope_id, period, limit_micros, action, thresholds, created_at, updated_at";

/// `GET /api/v1/usage/budgets` (viewer): every budget of the organisation
/// with its current period's settled spend and live reservations.
pub(super) fn list(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let rows = org.execute(
        &format!("SELECT {BUDGET_COLUMNS} FROM budgets WHERE org_id = ?1 ORDER BY created_at, id"),
        &[],
    )?;
    let now = now_ms();
    let data = rows
        .rows
        .iter()
        .map(|row| budget_json(&org, row, now))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ApiResponse::json(
        200,
        &json!({"data": data, "total": data.len()}),
    ))
}

/// `GET /api/v1/usage/budgets/:scope/:id` (viewer): one budget, as listed.
pub(super) fn get(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let (scope, scope_id) = path_key(params, &caller.org_id).ok_or_else(|| no_budget(params))?;
    let row = find(&org, scope, &scope_id)?.ok_or_else(|| no_budget(params))?;
    Ok(ApiResponse::json(200, &budget_json(&org, &row, now_ms())?))
}

/// `PUT /api/v1/usage/budgets/:scope/:id` (admin) `{period, limit, action,
/// thresholds?}`: creates (201) or replaces (200) the budget of that scope.
pub(super) fn put(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Admin)?;
    if request.body.is_empty() {
        return Err(ApiError::bad_request(
            "request body is empty; JSON expected: {period, limit, action, thresholds?}",
        ));
    }
    let body = request.json_object(&FIELDS)?;
    let scope = params.get("scope").unwrap_or_default();
    let mut problems = Vec::new();
    if !SCOPES.contains(&scope) {
        problems.push(ErrorDetail::new(
            "scope",
            format!("must be one of {}", SCOPES.join(", ")),
        ));
    }
    let spec = BudgetSpec::read(&body, &mut problems);
    let Some(spec) = spec.filter(|_| problems.is_empty()) else {
        return Err(ApiError::Validation {
            message: "the budget is invalid".into(),
            details: problems,
        });
    };
    let (scope, scope_id) = path_key(params, &caller.org_id).ok_or_else(|| no_budget(params))?;
    let created = in_transaction(ctx.db()?, |db| {
        store_budget(ctx, db, &caller, scope, &scope_id, &spec, now_ms())
    })?;
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let row = find(&org, scope, &scope_id)?.ok_or_else(|| no_budget(params))?;
    Ok(ApiResponse::json(
        if created { 201 } else { 200 },
        &budget_json(&org, &row, now_ms())?,
    ))
}

/// Creates or replaces, at `now` (UTC ms) and inside the caller's
/// transaction, the budget of `scope`/`scope_id`; true when it was created. A
/// new budget, or one whose period changes, starts from what its scope was
/// billed so far in the period holding `now`; a replacement in the same
/// period keeps its counter and fired thresholds.
fn store_budget(
    ctx: &RequestContext,
    db: &dyn Db,
    caller: &Caller,
    scope: &str,
    scope_id: &str,
    spec: &BudgetSpec,
    now: i64,
) -> Result<bool, ApiError> {
    let org = OrgScoped::new(db, &caller.org_id);
    require_scope_target(&org, scope, scope_id)?;
    let thresholds = json!(spec.thresholds).to_string();
    let existing = find(&org, scope, scope_id)?;
    let id = match &existing {
        Some(row) => {
            let id = row[0].as_str().unwrap_or_default().to_string();
            org.execute(
                "UPDATE budgets SET period = ?2, limit_micros = ?3, action = ?4, thresholds = ?5, \
                 updated_at = ?6 WHERE org_id = ?1 AND id = ?7",
                &[
                    Value::from(spec.period.as_str()),
                    Value::Integer(spec.limit),
                    Value::from(spec.action),
                    Value::from(thresholds.as_str()),
                    Value::Integer(now),
                    Value::from(id.as_str()),
                ],
            )?;
            if row[3].as_str() != Some(spec.period.as_str()) {
                // Another period: its spend is counted afresh.
                forget(&org, &id)?;
                seed(db, &caller.org_id, &id, scope, scope_id, spec.period, now)?;
            }
            id
        }
        None => {
            let id = ctx.new_id();
            db.execute(
                "INSERT INTO budgets (id, org_id, scope, scope_id, period, limit_micros, action, \
                 thresholds, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                &[
                    Value::from(id.as_str()),
                    Value::from(caller.org_id.as_str()),
                    Value::from(scope),
                    Value::from(scope_id),
                    Value::from(spec.period.as_str()),
                    Value::Integer(spec.limit),
                    Value::from(spec.action),
                    Value::from(thresholds.as_str()),
                    Value::Integer(now),
                    Value::Integer(now),
                ],
            )?;
            seed(db, &caller.org_id, &id, scope, scope_id, spec.period, now)?;
            id
        }
    };
    record_activity(
        ctx,
        db,
        &caller.org_id,
        &caller.subject,
        "budget.set",
        ("budget", &id),
        &json!({"scope": scope, "scope_id": scope_id, "period": spec.period.as_str(),
                "limit_micros": spec.limit, "action": spec.action, "thresholds": spec.thresholds}),
    )?;
    Ok(existing.is_none())
}

/// `DELETE /api/v1/usage/budgets/:scope/:id` (admin): removes the budget
/// with its counters; calls in flight are no longer capped by it.
pub(super) fn delete(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Admin)?;
    let (scope, scope_id) = path_key(params, &caller.org_id).ok_or_else(|| no_budget(params))?;
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        let org = OrgScoped::new(db, &caller.org_id);
        let row = find(&org, scope, &scope_id)?.ok_or_else(|| no_budget(params))?;
        let id = row[0].as_str().unwrap_or_default();
        forget(&org, id)?;
        org.execute(
            "DELETE FROM budgets WHERE org_id = ?1 AND id = ?2",
            &[Value::from(id)],
        )?;
        record_activity(
            ctx,
            db,
            &caller.org_id,
            &caller.subject,
            "budget.deleted",
            ("budget", id),
            &json!({"scope": scope, "scope_id": scope_id}),
        )
    })?;
    Ok(ApiResponse::no_content())
}

/// A `PUT` body, checked.
struct BudgetSpec {
    period: Period,
    limit: i64,
    action: &'static str,
    thresholds: Vec<i64>,
}

impl BudgetSpec {
    /// Reads the fields, adding every problem with its path; `None` when any is wrong.
    fn read(body: &Map<String, Json>, problems: &mut Vec<ErrorDetail>) -> Option<Self> {
        let before = problems.len();
        let period = body
            .get("period")
            .and_then(Json::as_str)
            .and_then(Period::parse);
        if period.is_none() {
            problems.push(ErrorDetail::new(
                "period",
                "is required: \"day\" or \"month\" (UTC)",
            ));
        }
        let limit = body
            .get("limit")
            .and_then(Json::as_i64)
            .filter(|l| (1..=MAX_LIMIT_MICROS).contains(l));
        if limit.is_none() {
            problems.push(ErrorDetail::new(
                "limit",
                format!("is required: whole micro-dollars from 1 to {MAX_LIMIT_MICROS}"),
            ));
        }
        let action = match body.get("action").and_then(Json::as_str) {
            Some("block") => Some("block"),
            Some("alert") => Some("alert"),
            _ => {
                problems.push(ErrorDetail::new(
                    "action",
                    "is required: \"block\" or \"alert\"",
                ));
                None
            }
        };
        let thresholds = match body.get("thresholds") {
            None | Some(Json::Null) => DEFAULT_THRESHOLDS.to_vec(),
            Some(Json::Array(items)) => {
                if items.len() > MAX_THRESHOLDS {
                    problems.push(ErrorDetail::new(
                        "thresholds",
                        format!("has {} entries; at most {MAX_THRESHOLDS}", items.len()),
                    ));
                }
                let mut thresholds = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item
                        .as_i64()
                        .filter(|t| (1..=MAX_THRESHOLD_PERCENT).contains(t))
                    {
                        Some(t) => thresholds.push(t),
                        None => problems.push(ErrorDetail::new(
                            format!("thresholds[{i}]"),
                            format!("must be a whole percent from 1 to {MAX_THRESHOLD_PERCENT}"),
                        )),
                    }
                }
                thresholds.sort_unstable();
                thresholds.dedup();
                thresholds
            }
            Some(_) => {
                problems.push(ErrorDetail::new(
                    "thresholds",
                    "must be a list of percents, e.g. [50, 80, 100]",
                ));
                Vec::new()
            }
        };
        if problems.len() > before {
            return None;
        }
        Some(Self {
            period: period?,
            limit: limit?,
            action: action?,
            thresholds,
        })
    }
}

/// The path's scope and id, with `current` (scope `org`) read as the
/// caller's organisation; `None` for an unknown scope.
fn path_key(params: &Params, org_id: &str) -> Option<(&'static str, String)> {
    let scope = SCOPES
        .into_iter()
        .find(|s| Some(*s) == params.get("scope"))?;
    let id = params.get("id").unwrap_or_default();
    let id = if scope == "org" && id == "current" {
        org_id
    } else {
        id
    };
    Some((scope, id.to_string()))
}

fn no_budget(params: &Params) -> ApiError {
    ApiError::NotFound(format!(
        "budget {}/{} not found",
        params.get("scope").unwrap_or_default(),
        params.get("id").unwrap_or_default()
    ))
}

/// 404 unless the capped organisation, key, workflow or agent is the caller's.
fn require_scope_target(org: &OrgScoped, scope: &str, id: &str) -> Result<(), ApiError> {
    let sql = match scope {
        "org" => "SELECT id FROM organizations WHERE org_id = ?1 AND id = ?2",
        "api_key" => "SELECT id FROM api_keys WHERE org_id = ?1 AND id = ?2",
        "workflow" => {
            "SELECT id FROM workflows WHERE org_id = ?1 AND id = ?2 AND deleted_at IS NULL"
        }
        _ => "SELECT id FROM agents WHERE org_id = ?1 AND id = ?2 AND deleted_at IS NULL",
    };
    if org.execute(sql, &[Value::from(id)])?.rows.is_empty() {
        let what = if scope == "org" {
            "organisation"
        } else {
            scope
        };
        return Err(ApiError::NotFound(format!("{what} {id} not found")));
    }
    Ok(())
}

fn find(org: &OrgScoped, scope: &str, scope_id: &str) -> Result<Option<Vec<Value>>, ApiError> {
    Ok(org
        .execute(
            &format!(
                "SELECT {BUDGET_COLUMNS} FROM budgets WHERE org_id = ?1 AND scope = ?2 AND scope_id = ?3"
            ),
            &[Value::from(scope), Value::from(scope_id)],
        )?
        .into_first())
}

/// Drops a budget's counters, fired thresholds and reservations.
fn forget(org: &OrgScoped, id: &str) -> Result<(), ApiError> {
    for table in ["budget_periods", "budget_alerts", "budget_reservations"] {
        org.execute(
            &format!("DELETE FROM {table} WHERE org_id = ?1 AND budget_id = ?2"),
            &[Value::from(id)],
        )?;
    }
    Ok(())
}

/// Starts a budget's counter at what its scope was billed so far in the current period.
fn seed(
    db: &dyn Db,
    org_id: &str,
    id: &str,
    scope: &str,
    scope_id: &str,
    period: Period,
    now: i64,
) -> Result<(), ApiError> {
    let column = match scope {
        "api_key" => "api_key_id",
        "workflow" => "workflow_id",
        "agent" => "agent_id",
        _ => "org_id",
    };
    let (start, end) = period.bounds(now);
    let spent = OrgScoped::new(db, org_id)
        .execute(
            &format!(
                "SELECT COALESCE(SUM(billed_cost_micros), 0) FROM usage_records WHERE org_id = ?1 \
                 AND created_at >= ?2 AND created_at < ?3 AND {column} = ?4"
            ),
            &[
                Value::Integer(start),
                Value::Integer(end),
                Value::from(scope_id),
            ],
        )?
        .scalar_i64()
        .unwrap_or(0);
    db.execute(
        "INSERT INTO budget_periods (org_id, budget_id, period_start, spent_micros, updated_at) \
         VALUES (?, ?, ?, ?, ?)",
        &[
            Value::from(org_id),
            Value::from(id),
            Value::Integer(start),
            Value::Integer(spent),
            Value::Integer(now),
        ],
    )?;
    Ok(())
}

/// A budget row as the API shows it, with its current period's figures.
fn budget_json(org: &OrgScoped, row: &[Value], now: i64) -> Result<Json, ApiError> {
    let id = row[0].as_str().unwrap_or_default();
    let period = Period::parse(row[3].as_str().unwrap_or_default()).unwrap_or(Period::Month);
    let (start, end) = period.bounds(now);
    let figures = org
        .execute(
            "SELECT COALESCE((SELECT spent_micros FROM budget_periods WHERE org_id = ?1 AND budget_id = ?2 \
             AND period_start = ?3), 0), COALESCE((SELECT SUM(amount_micros) FROM budget_reservations \
             WHERE org_id = ?1 AND budget_id = ?2 AND period_start = ?3 AND expires_at > ?4), 0)",
            &[Value::from(id), Value::Integer(start), Value::Integer(now)],
        )?
        .into_first()
        .unwrap_or_default();
    let spent = figures.first().and_then(Value::as_i64).unwrap_or(0);
    let reserved = figures.get(1).and_then(Value::as_i64).unwrap_or(0);
    let limit = row[4].as_i64().unwrap_or(0);
    let remaining = limit.saturating_sub(spent).saturating_sub(reserved).max(0);
    Ok(json!({
        "id": id,
        "scope": row[1].as_str(),
        "scope_id": row[2].as_str(),
        "period": period.as_str(),
        "limit_micros": limit,
        "limit": format_micros(limit),
        "action": row[5].as_str(),
        "thresholds": thresholds_of(&row[6]),
        "period_start": timestamp(start),
        "period_end": timestamp(end),
        "spent_micros": spent,
        "reserved_micros": reserved,
        "remaining_micros": remaining,
        "spent": format_micros(spent),
        "reserved": format_micros(reserved),
        "remaining": format_micros(remaining),
        "thresholds_reached": fired_thresholds(org, id, start)?,
        "created_at": row[7].as_i64().map(timestamp),
        "updated_at": row[8].as_i64().map(timestamp),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backends::TestBackends;
    use spindle_providers::Message;
    use std::path::PathBuf;
    use std::sync::{Arc, Barrier};

    /// 2026-06-15T12:00:00Z: every test books at fixed times, away from period edges.
    const T0: i64 = 1_781_524_800_000;
    const HOUR: i64 = 3_600_000;

    /// A database file with organisation `o1`, removed with the test.
    struct Fixture {
        dir: PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    impl Fixture {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "spindle-budgets-{name}-{}-{}",
                std::process::id(),
                now_ms()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let fixture = Self { dir };
            fixture
                .context()
                .db()
                .unwrap()
                .execute(
                    "INSERT INTO organizations (id, name, created_at, updated_at) VALUES ('o1', 'one', 0, 0)",
                    &[],
                )
                .unwrap();
            fixture
        }

        fn context(&self) -> RequestContext {
            RequestContext::new(Box::new(TestBackends::file(self.dir.join("spindle.db"))))
        }

        /// Adds a budget of `o1` and returns its id.
        fn budget(
            &self,
            scope: &str,
            scope_id: &str,
            period: &str,
            limit: i64,
            action: &str,
        ) -> String {
            let ctx = self.context();
            let id = ctx.new_id();
            ctx.db()
                .unwrap()
                .execute(
                    "INSERT INTO budgets (id, org_id, scope, scope_id, period, limit_micros, action, thresholds, \
                     created_at, updated_at) VALUES (?, 'o1', ?, ?, ?, ?, ?, '[50,100]', 0, 0)",
                    &[
                        Value::from(id.as_str()),
                        Value::from(scope),
                        Value::from(scope_id),
                        Value::from(period),
                        Value::Integer(limit),
                        Value::from(action),
                    ],
                )
                .unwrap();
            id
        }

        fn scalar(&self, sql: &str) -> i64 {
            let ctx = self.context();
            ctx.db()
                .unwrap()
                .execute(sql, &[])
                .unwrap()
                .scalar_i64()
                .unwrap_or(0)
        }
    }

    fn scope(agent: &str) -> ChargeScope<'_> {
        ChargeScope {
            org_id: "o1",
            api_key_id: Some("k1"),
            workflow_id: None,
            agent_id: Some(agent),
        }
    }

    fn utc(text: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn periods_are_utc_calendar_days_and_months() {
        let at = utc("2024-02-29T23:59:59.999Z");
        assert_eq!(
            Period::Day.bounds(at),
            (utc("2024-02-29T00:00:00Z"), utc("2024-03-01T00:00:00Z"))
        );
        assert_eq!(
            Period::Month.bounds(at),
            (utc("2024-02-01T00:00:00Z"), utc("2024-03-01T00:00:00Z"))
        );
        // A period's start belongs to it; its end to the next one.
        let midnight = utc("2026-01-01T00:00:00Z");
        assert_eq!(Period::Day.bounds(midnight).0, midnight);
        assert_eq!(Period::Month.bounds(midnight).0, midnight);
        assert_eq!(
            Period::Month.bounds(midnight - 1),
            (utc("2025-12-01T00:00:00Z"), midnight)
        );
        assert_eq!(
            Period::Day.bounds(midnight - 1),
            (utc("2025-12-31T00:00:00Z"), midnight)
        );
        assert_eq!(T0, utc("2026-06-15T12:00:00Z"));
        assert_eq!(Period::parse("week"), None);
        assert_eq!(Period::parse("day").map(Period::as_str), Some("day"));
    }

    #[test]
    fn the_worst_case_is_the_input_estimate_and_max_tokens_at_the_price() {
        let price = Price {
            input_micros_per_million: 1_000_000,
            output_micros_per_million: 2_000_000,
        };
        let mut request = ChatRequest {
            model: "m".into(),
            system: Some("s".repeat(40)),
            messages: vec![Message::user("u".repeat(41))],
            max_tokens: Some(1000),
            ..ChatRequest::default()
        };
        // 81 characters → 21 tokens; 21 × $1 + 1000 × $2 per million = 2021 µ$, +20 %.
        assert_eq!(input_estimate(&request), 21);
        assert_eq!(
            worst_case_micros(Provider::OpenAi, Some(price), 20, &request),
            2425
        );
        assert_eq!(worst_case_micros(Provider::OpenAi, None, 20, &request), 0);
        request.max_tokens = None;
        assert_eq!(
            worst_case_micros(Provider::OpenAi, Some(price), 0, &request),
            21 + 2 * UNCAPPED_OUTPUT_TOKENS as i64
        );
        assert_eq!(
            worst_case_micros(Provider::Anthropic, Some(price), 0, &request),
            21 + 2 * 1024
        );
    }

    #[test]
    fn a_call_no_budget_covers_writes_nothing() {
        let fixture = Fixture::new("none");
        fixture.budget("agent", "other-agent", "day", 1, "block");
        let ctx = fixture.context();
        let held = reserve_at(&ctx, &scope("a1"), 1_000_000, T0, 60_000).unwrap();
        assert!(!held.held);
        assert!(
            settle(&ctx, &scope("a1"), &held, 1_000_000)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            fixture.scalar("SELECT COUNT(*) FROM budget_reservations"),
            0
        );
        assert_eq!(fixture.scalar("SELECT COUNT(*) FROM budget_periods"), 0);
    }

    #[test]
    fn a_refused_call_names_the_budget_and_changes_nothing() {
        let fixture = Fixture::new("refused");
        fixture.budget("org", "o1", "month", 10_000, "alert");
        fixture.budget("api_key", "k1", "day", 1_000, "block");
        let ctx = fixture.context();
        let first = reserve_at(&ctx, &scope("a1"), 600, T0, 60_000).unwrap();
        assert!(first.held);
        let refused = reserve_at(&ctx, &scope("a1"), 401, T0, 60_000).unwrap_err();
        let ApiError::BudgetExceeded(message) = &refused else {
            panic!("{refused:?}");
        };
        assert!(message.contains("api_key k1"), "{message}");
        assert!(
            message.contains("0.000600 is spent or reserved"),
            "{message}"
        );
        // Nothing of the refused call was booked, not even against the alert budget.
        assert_eq!(
            fixture.scalar("SELECT COUNT(*) FROM budget_reservations"),
            2
        );
        assert!(
            reserve_at(&ctx, &scope("a1"), 400, T0, 60_000)
                .unwrap()
                .held
        );
        // A settled call frees what it did not use.
        settle(&ctx, &scope("a1"), &first, 100).unwrap();
        assert!(
            reserve_at(&ctx, &scope("a1"), 500, T0, 60_000)
                .unwrap()
                .held
        );
        assert!(reserve_at(&ctx, &scope("a1"), 1, T0, 60_000).is_err());
        // Tomorrow is another day for the daily budget.
        assert!(
            reserve_at(&ctx, &scope("a1"), 1_000, T0 + 24 * HOUR, 60_000)
                .unwrap()
                .held
        );
    }

    /// Many instances reserve and settle at once against one file: the
    /// number that get through is exactly what the limit allows.
    #[test]
    fn concurrent_reservations_never_pass_the_limit() {
        const THREADS: usize = 8;
        const ATTEMPTS: usize = 10;
        const COST: i64 = 100;
        let fixture = Arc::new(Fixture::new("concurrent"));
        let org_budget = fixture.budget("org", "o1", "month", 25 * COST + COST / 2, "block");
        let agent_budget = fixture.budget("agent", "a1", "day", 7 * COST + 99, "block");
        let barrier = Arc::new(Barrier::new(THREADS));
        let passed: Vec<(usize, usize)> = std::thread::scope(|threads| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (fixture, barrier) = (fixture.clone(), barrier.clone());
                    threads.spawn(move || {
                        let ctx = fixture.context();
                        let agent = if t % 2 == 0 { "a1" } else { "a2" };
                        barrier.wait();
                        let mut passed = 0;
                        for _ in 0..ATTEMPTS {
                            match reserve_at(&ctx, &scope(agent), COST, T0, 60_000) {
                                Ok(reservation) => {
                                    assert!(reservation.held);
                                    settle(&ctx, &scope(agent), &reservation, COST).unwrap();
                                    passed += 1;
                                }
                                Err(ApiError::BudgetExceeded(_)) => {}
                                Err(other) => panic!("{other:?}"),
                            }
                        }
                        (t % 2, passed)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total: usize = passed.iter().map(|(_, n)| n).sum();
        let on_a1: usize = passed.iter().filter(|(a, _)| *a == 0).map(|(_, n)| n).sum();
        // Reservation = actual cost, so exactly floor(limit / cost) get through.
        assert_eq!(total, 25);
        assert!(on_a1 <= 7, "{on_a1} calls of agent a1");
        let spent = |id: &str| {
            fixture.scalar(&format!(
                "SELECT spent_micros FROM budget_periods WHERE budget_id = '{id}'"
            ))
        };
        assert_eq!(spent(&org_budget), 25 * COST);
        assert_eq!(spent(&agent_budget), on_a1 as i64 * COST);
        assert_eq!(
            fixture.scalar("SELECT COUNT(*) FROM budget_reservations"),
            0
        );
    }

    #[test]
    fn expired_reservations_stop_counting() {
        let fixture = Fixture::new("expiry");
        fixture.budget("agent", "a1", "month", 100, "block");
        let ctx = fixture.context();
        // A call that died: reserved, never settled.
        let dead = reserve_at(&ctx, &scope("a1"), 100, T0, 1_000).unwrap();
        assert!(dead.held);
        assert!(matches!(
            reserve_at(&ctx, &scope("a1"), 1, T0 + 999, 1_000),
            Err(ApiError::BudgetExceeded(_))
        ));
        // At its expiry it no longer counts, before any tick has run.
        let next = reserve_at(&ctx, &scope("a1"), 100, T0 + 1_000, 1_000).unwrap();
        assert!(next.held);
        let db = ctx.db().unwrap();
        assert_eq!(release_expired(db, T0 + 1_999).unwrap(), 1);
        assert_eq!(release_expired(db, T0 + 1_999).unwrap(), 0);
        assert_eq!(
            fixture.scalar("SELECT COUNT(*) FROM budget_reservations"),
            1
        );
        // A late settlement of the dead call still counts what it was billed.
        settle(&ctx, &scope("a1"), &dead, 30).unwrap();
        settle(&ctx, &scope("a1"), &next, 70).unwrap();
        assert_eq!(
            fixture.scalar("SELECT spent_micros FROM budget_periods"),
            100
        );
        assert!(reserve_at(&ctx, &scope("a1"), 1, T0 + 2_000, 1_000).is_err());
    }

    #[test]
    fn a_call_in_flight_when_a_budget_is_created_does_not_count_against_it() {
        let fixture = Fixture::new("in-flight");
        let ctx = fixture.context();
        // Reserved while no budget applied: nothing is held for it.
        let in_flight = reserve_at(&ctx, &scope("a1"), 100, T0, 60_000).unwrap();
        assert!(!in_flight.held);
        fixture.budget("agent", "a1", "month", 1_000, "block");
        assert_eq!(
            settle(&ctx, &scope("a1"), &in_flight, 100).unwrap(),
            Vec::new()
        );
        assert_eq!(
            fixture.scalar("SELECT COALESCE(SUM(spent_micros), 0) FROM budget_periods"),
            0
        );
        // A call reserved after the budget was made counts.
        let next = reserve_at(&ctx, &scope("a1"), 100, T0 + 1, 60_000).unwrap();
        assert!(next.held);
        settle(&ctx, &scope("a1"), &next, 50).unwrap();
        assert_eq!(
            fixture.scalar("SELECT spent_micros FROM budget_periods"),
            50
        );
    }

    #[test]
    fn expired_reservations_are_released_in_batches_of_five_hundred() {
        let fixture = Fixture::new("expiry-batches");
        let budget = fixture.budget("agent", "a1", "month", 1_000_000, "block");
        let ctx = fixture.context();
        let db = ctx.db().unwrap();
        // 501 dead calls, expired at T0, and one still live.
        for i in 0..502 {
            let expires_at = if i < 501 { T0 } else { T0 + HOUR };
            db.execute(
                "INSERT INTO budget_reservations (id, org_id, budget_id, call_id, period_start, \
                 amount_micros, expires_at, created_at) VALUES (?, 'o1', ?, ?, 0, 1, ?, 0)",
                &[
                    Value::from(format!("r{i}")),
                    Value::from(budget.as_str()),
                    Value::from(format!("c{i}")),
                    Value::Integer(expires_at),
                ],
            )
            .unwrap();
        }
        assert_eq!(release_expired(db, T0).unwrap(), 500);
        assert_eq!(release_expired(db, T0).unwrap(), 1);
        assert_eq!(release_expired(db, T0).unwrap(), 0);
        assert_eq!(
            fixture.scalar("SELECT COUNT(*) FROM budget_reservations"),
            1,
            "the live one stays"
        );
    }

    #[test]
    fn a_threshold_fires_once_per_period_and_alert_budgets_never_block() {
        let fixture = Fixture::new("thresholds");
        let budget = fixture.budget("agent", "a1", "month", 1_000, "alert");
        let ctx = fixture.context();
        ctx.db()
            .unwrap()
            .execute(
                "INSERT INTO event_subscriptions (id, org_id, url, event_types, secret, is_active, created_at, \
                 updated_at) VALUES ('s1', 'o1', 'https://example.com/hook', '[\"budget.threshold\"]', 'whsec_x', 1, 0, 0)",
                &[],
            )
            .unwrap();
        let mut fired = Vec::new();
        let mut spend = |amount: i64, at: i64| {
            // An alert budget takes any reservation, whatever its limit.
            let reservation = reserve_at(&ctx, &scope("a1"), 5_000, at, 60_000).unwrap();
            assert!(reservation.held);
            let crossed = settle(&ctx, &scope("a1"), &reservation, amount).unwrap();
            fired.push(crossed.iter().map(|c| c.threshold).collect::<Vec<_>>());
        };
        spend(400, T0);
        spend(100, T0); // 500: 50 %
        spend(100, T0);
        spend(450, T0); // 1050: 100 %
        spend(300, T0); // over the limit: nothing new
        spend(600, T0 + 31 * 24 * HOUR); // next month: 50 % again
        assert_eq!(
            fired,
            [vec![], vec![50], vec![], vec![100], vec![], vec![50]]
        );
        let events = fixture
            .scalar("SELECT COUNT(*) FROM event_outbox WHERE event_type = 'budget.threshold'");
        assert_eq!(events, 3);
        let payload = ctx
            .db()
            .unwrap()
            .execute(
                "SELECT payload FROM event_outbox ORDER BY created_at, rowid LIMIT 1",
                &[],
            )
            .unwrap();
        let payload: Json =
            serde_json::from_str(payload.scalar().unwrap().as_str().unwrap()).unwrap();
        assert_eq!(payload["type"], "budget.threshold");
        assert_eq!(payload["data"]["budget_id"], budget.as_str());
        assert_eq!(payload["data"]["threshold"], 50);
        assert_eq!(payload["data"]["spent_micros"], 500);
        assert_eq!(payload["data"]["period_start"], "2026-06-01T00:00:00.000Z");
    }

    #[test]
    fn a_put_that_changes_the_period_counts_it_afresh_and_one_that_keeps_it_keeps_the_count() {
        let fixture = Fixture::new("period-change");
        let ctx = fixture.context();
        let db = ctx.db().unwrap();
        // Billed 300 three days before T0 and 200 on T0's day: both in June.
        for (id, at, billed) in [("r1", T0 - 72 * HOUR, 300), ("r2", T0 - HOUR, 200)] {
            db.execute(
                "INSERT INTO usage_records (id, org_id, provider, model, status, input_tokens, \
                 output_tokens, total_tokens, base_cost_micros, billed_cost_micros, created_at) \
                 VALUES (?, 'o1', 'openai', 'm', 'succeeded', 1, 1, 2, ?, ?, ?)",
                &[
                    Value::from(id),
                    Value::Integer(billed),
                    Value::Integer(billed),
                    Value::Integer(at),
                ],
            )
            .unwrap();
        }
        let admin = Caller {
            org_id: "o1".into(),
            subject: "key:admin".into(),
            role: Role::Admin,
            api_key_id: None,
        };
        let spec = |period: Period, limit: i64| BudgetSpec {
            period,
            limit,
            action: "alert",
            thresholds: vec![50, 100],
        };
        let put = |spec: BudgetSpec| {
            in_transaction(db, |db| {
                store_budget(&ctx, db, &admin, "org", "o1", &spec, T0)
            })
            .unwrap()
        };
        let shown = || {
            let org = OrgScoped::new(db, "o1");
            budget_json(&org, &find(&org, "org", "o1").unwrap().unwrap(), T0).unwrap()
        };

        assert!(put(spec(Period::Month, 1_000)), "created");
        assert_eq!(shown()["spent_micros"], 500);
        // A settled call (100) takes the month to 600: past 50 %.
        let reservation = reserve_at(&ctx, &org_scope(), 100, T0, 60_000).unwrap();
        let crossed = settle(&ctx, &org_scope(), &reservation, 100).unwrap();
        assert_eq!(
            crossed.iter().map(|c| c.threshold).collect::<Vec<_>>(),
            [50]
        );
        assert_eq!(shown()["spent_micros"], 600);

        // Same period, another limit: the counter and the fired 50 % stay
        // (the usage records alone would say 500).
        assert!(!put(spec(Period::Month, 2_000)), "replaced");
        assert_eq!(shown()["spent_micros"], 600);
        assert_eq!(shown()["thresholds_reached"], json!([50]));

        // Another period: counted afresh from the usage records of T0's day,
        // and no threshold is reached in it yet.
        assert!(!put(spec(Period::Day, 1_000)), "replaced");
        assert_eq!(shown()["period"], "day");
        assert_eq!(shown()["period_start"], "2026-06-15T00:00:00.000Z");
        assert_eq!(shown()["spent_micros"], 200);
        assert_eq!(shown()["thresholds_reached"], json!([]));
        assert_eq!(
            fixture.scalar("SELECT COUNT(*) FROM budget_alerts"),
            0,
            "the month's fired thresholds are gone"
        );
    }

    fn org_scope() -> ChargeScope<'static> {
        ChargeScope {
            org_id: "o1",
            api_key_id: None,
            workflow_id: None,
            agent_id: None,
        }
    }
}
