//! Outbound events: an organisation subscribes URLs to event types
//! (`/api/v1/event-subscriptions`); [`emit`] writes one outbox row per
//! matching subscription inside the caller's transaction, and the tick
//! ([`deliver_due`]) POSTs them signed as Standard Webhooks says, at least
//! once, retrying failures with exponential backoff until they are `dead`.

use super::hooks::standard_signature;
use crate::auth::{authenticate, record_activity};
use crate::context::RequestContext;
use crate::listing::Page;
use crate::{fetch_one, json_column, now_ms, timestamp};
use serde_json::{Value as Json, json};
use spindle_auth::Role;
use spindle_http::{
    ApiError, ApiRequest, ApiResponse, ErrorDetail, OutboundError, OutboundRequest, Params,
};
use spindle_store::{Db, OrgScoped, Value, in_transaction};

/// The event types a subscription may name.
pub(crate) const EVENT_TYPES: &[&str] = &[
    "workflow.started",
    "workflow.completed",
    "workflow.failed",
    "step.failed",
    "agent.executed",
    "budget.threshold",
];
const MAX_URL_CHARS: usize = 2048;
/// Most outbox rows one tick tries to deliver.
const DELIVERY_BATCH: i64 = 50;
/// After this many failed attempts a delivery is `dead`.
const MAX_ATTEMPTS: i64 = 8;
/// The first retry's delay when `event_retry_base_ms` is unset; each later
/// one doubles it.
const DEFAULT_RETRY_BASE_MS: i64 = 10_000;
const MAX_RETRY_DELAY_MS: i64 = 60 * 60 * 1000;
/// How long a subscriber has to answer.
const DELIVERY_TIMEOUT_MS: u64 = 5_000;
/// How long a leased row is left to its deliverer before another tick may
/// take it (well over the timeout).
const LEASE_MS: i64 = 30_000;
/// A tick stops taking new deliveries after this long.
const TICK_BUDGET_MS: i64 = 20_000;
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Most characters of a subscriber's answer kept as an attempt's error.
const MAX_ERROR_CHARS: usize = 300;

const SUBSCRIPTION_COLUMNS: &str = "id, url, event_types, is_active, created_at, updated_at";

fn subscription_json(row: &[Value]) -> Json {
    json!({
        "id": row[0].as_str(),
        "url": row[1].as_str(),
        "event_types": json_column(&row[2]).unwrap_or_else(|| json!([])),
        "is_active": row[3].as_i64() == Some(1),
        "created_at": row[4].as_i64().map(timestamp),
        "updated_at": row[5].as_i64().map(timestamp),
    })
}

/// A live subscription of the organisation, or 404.
fn live_subscription(org: &OrgScoped, id: &str) -> Result<Json, ApiError> {
    let row = fetch_one(
        org,
        &format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM event_subscriptions \
             WHERE org_id = ?1 AND id = ?2 AND deleted_at IS NULL"
        ),
        &[Value::from(id)],
        || format!("event subscription {id}"),
    )?;
    Ok(subscription_json(&row))
}

/// Whether `url` is an absolute http(s) URL with a host.
fn is_http_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    !host.is_empty()
        && !host.starts_with(':')
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The fields of a create or patch body, checked; problems carry their paths.
#[derive(Default)]
struct Fields {
    url: Option<String>,
    event_types: Option<Vec<String>>,
    is_active: Option<bool>,
}

fn read_fields(body: &Json, allowed: &[&str]) -> Result<Fields, ApiError> {
    let object = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let mut problems = Vec::new();
    for key in object.keys() {
        if !allowed.contains(&key.as_str()) {
            problems.push(ErrorDetail::new(
                key.clone(),
                format!("unknown field; accepted: {}", allowed.join(", ")),
            ));
        }
    }
    let mut fields = Fields::default();
    if let Some(url) = object.get("url") {
        match url.as_str().map(str::trim) {
            Some(url) if url.chars().count() > MAX_URL_CHARS => problems.push(ErrorDetail::new(
                "url",
                format!("must be at most {MAX_URL_CHARS} characters"),
            )),
            Some(url) if is_http_url(url) => fields.url = Some(url.to_string()),
            _ => problems.push(ErrorDetail::new(
                "url",
                "must be an absolute http:// or https:// URL",
            )),
        }
    }
    match object.get("event_types") {
        None => {}
        // Null, like an empty list, means every event type.
        Some(Json::Null) => fields.event_types = Some(Vec::new()),
        Some(Json::Array(items)) => {
            let mut types: Vec<String> = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(t) if EVENT_TYPES.contains(&t) => {
                        if !types.iter().any(|known| known == t) {
                            types.push(t.to_string());
                        }
                    }
                    _ => problems.push(ErrorDetail::new(
                        format!("event_types[{i}]"),
                        format!("must be one of {}", EVENT_TYPES.join(", ")),
                    )),
                }
            }
            fields.event_types = Some(types);
        }
        Some(_) => problems.push(ErrorDetail::new(
            "event_types",
            "must be a list of event types",
        )),
    }
    if let Some(active) = object.get("is_active") {
        match active.as_bool() {
            Some(active) => fields.is_active = Some(active),
            None => problems.push(ErrorDetail::new("is_active", "must be true or false")),
        }
    }
    if problems.is_empty() {
        Ok(fields)
    } else {
        Err(ApiError::Validation {
            message: "the event subscription is invalid".into(),
            details: problems,
        })
    }
}

fn types_text(types: &[String]) -> String {
    Json::from(types.to_vec()).to_string()
}

/// `POST /api/v1/event-subscriptions` (admin) `{url, event_types?}`: `201`
/// with the subscription and its signing `secret`, shown this once.
pub(super) fn create(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Admin)?;
    let body: Json = request.json()?;
    let fields = read_fields(&body, &["url", "event_types"])?;
    let Some(url) = fields.url else {
        return Err(ApiError::Validation {
            message: "the event subscription is invalid".into(),
            details: vec![ErrorDetail::new("url", "is required")],
        });
    };
    let types = fields.event_types.unwrap_or_default();
    let secret = ctx.new_webhook_secret();
    let (id, now) = (ctx.new_id(), now_ms());
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        db.execute(
            "INSERT INTO event_subscriptions (id, org_id, url, event_types, secret, is_active, created_at, \
             updated_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?)",
            &[
                Value::from(id.as_str()),
                Value::from(caller.org_id.as_str()),
                Value::from(url.as_str()),
                Value::Text(types_text(&types)),
                Value::from(secret.as_str()),
                Value::Integer(now),
                Value::Integer(now),
            ],
        )?;
        record_activity(
            ctx,
            db,
            &caller.org_id,
            &caller.subject,
            "event_subscription.created",
            ("event_subscription", &id),
            &json!({"url": url, "event_types": types}),
        )
    })?;
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let mut subscription = live_subscription(&org, &id)?;
    // Shown this once: the subscriber verifies deliveries with it.
    subscription["secret"] = json!(secret);
    Ok(ApiResponse::json(201, &subscription))
}

/// `GET /api/v1/event-subscriptions` (viewer): paged, newest first.
pub(super) fn list(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let page = Page::parse(request, &["created_at", "updated_at"])?;
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    page.respond(
        &org,
        SUBSCRIPTION_COLUMNS,
        "event_subscriptions WHERE org_id = ?1 AND deleted_at IS NULL",
        &[],
        subscription_json,
    )
}

/// `GET /api/v1/event-subscriptions/:id` (viewer), without its secret.
pub(super) fn get(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let id = params.get("id").unwrap_or_default();
    Ok(ApiResponse::json(200, &live_subscription(&org, id)?))
}

/// `PATCH /api/v1/event-subscriptions/:id` (admin): `url`, `event_types`,
/// `is_active`. An inactive subscription gets no new events.
pub(super) fn update(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Admin)?;
    let id = params.get("id").unwrap_or_default();
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    live_subscription(&org, id)?;
    let body: Json = request.json()?;
    let fields = read_fields(&body, &["url", "event_types", "is_active"])?;
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        let org = OrgScoped::new(db, &caller.org_id);
        live_subscription(&org, id)?;
        org.execute(
            "UPDATE event_subscriptions SET url = COALESCE(?2, url), event_types = COALESCE(?3, event_types), \
             is_active = COALESCE(?4, is_active), updated_at = ?5 WHERE org_id = ?1 AND id = ?6",
            &[
                Value::from(fields.url.clone()),
                Value::from(fields.event_types.as_deref().map(types_text)),
                Value::from(fields.is_active.map(i64::from)),
                Value::Integer(now_ms()),
                Value::from(id),
            ],
        )?;
        record_activity(
            ctx,
            db,
            &caller.org_id,
            &caller.subject,
            "event_subscription.updated",
            ("event_subscription", id),
            &body,
        )
    })?;
    Ok(ApiResponse::json(200, &live_subscription(&org, id)?))
}

/// `DELETE /api/v1/event-subscriptions/:id` (admin): gone from the API
/// (`204`); deliveries still pending are abandoned as `dead`.
pub(super) fn delete(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Admin)?;
    let id = params.get("id").unwrap_or_default();
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        let org = OrgScoped::new(db, &caller.org_id);
        live_subscription(&org, id)?;
        let now = now_ms();
        org.execute(
            "UPDATE event_subscriptions SET deleted_at = ?2, updated_at = ?2, is_active = 0 \
             WHERE org_id = ?1 AND id = ?3",
            &[Value::Integer(now), Value::from(id)],
        )?;
        org.execute(
            "UPDATE event_outbox SET status = 'dead', lease_expires_at = NULL \
             WHERE org_id = ?1 AND subscription_id = ?2 AND status = 'pending'",
            &[Value::from(id)],
        )?;
        record_activity(
            ctx,
            db,
            &caller.org_id,
            &caller.subject,
            "event_subscription.deleted",
            ("event_subscription", id),
            &json!({}),
        )
    })?;
    Ok(ApiResponse::no_content())
}

/// `GET /api/v1/event-subscriptions/:id/deliveries` (viewer): its outbox
/// rows, newest first, each with its status, attempts and last attempt.
pub(super) fn deliveries(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let id = params.get("id").unwrap_or_default();
    let page = Page::parse(request, &["created_at"])?;
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    live_subscription(&org, id)?;
    let last = |column: &str| {
        format!(
            "(SELECT a.{column} FROM event_attempts a WHERE a.org_id = o.org_id AND a.outbox_id = o.id \
             ORDER BY a.created_at DESC, a.rowid DESC LIMIT 1)"
        )
    };
    let columns = format!(
        "id, event_type, status, attempts, next_attempt_at, created_at, delivered_at, payload, {}, {}, {}, {}",
        last("status_code"),
        last("error"),
        last("duration_ms"),
        last("created_at"),
    );
    page.respond(
        &org,
        &columns,
        "event_outbox o WHERE o.org_id = ?1 AND o.subscription_id = ?2",
        &[Value::from(id)],
        |row| {
            let status = row[2].as_str();
            json!({
                "id": row[0].as_str(),
                "event_type": row[1].as_str(),
                "status": status,
                "attempts": row[3].as_i64(),
                "next_attempt_at": row[4].as_i64().filter(|_| status == Some("pending")).map(timestamp),
                "created_at": row[5].as_i64().map(timestamp),
                "delivered_at": row[6].as_i64().map(timestamp),
                "payload": json_column(&row[7]),
                "last_status_code": row[8].as_i64(),
                "last_error": row[9].as_str(),
                "last_duration_ms": row[10].as_i64(),
                "last_attempt_at": row[11].as_i64().map(timestamp),
            })
        },
    )
}

/// Queues `event_type` with `data` for every active subscription of the
/// organisation that takes it (its `event_types` empty or naming it): one
/// outbox row each, delivered by the tick. Only inserts, so a caller can
/// call it inside its own transaction; a subscriber never fails a run.
pub(crate) fn emit(
    ctx: &RequestContext,
    db: &dyn Db,
    org_id: &str,
    event_type: &str,
    data: &Json,
) -> Result<(), ApiError> {
    let subscriptions = OrgScoped::new(db, org_id).execute(
        "SELECT id, event_types FROM event_subscriptions \
         WHERE org_id = ?1 AND is_active = 1 AND deleted_at IS NULL",
        &[],
    )?;
    let now = now_ms();
    let payload =
        json!({"type": event_type, "timestamp": timestamp(now), "data": data}).to_string();
    for row in &subscriptions.rows {
        let wanted = match json_column(&row[1]) {
            Some(Json::Array(types)) => types.is_empty() || types.iter().any(|t| t == event_type),
            _ => true,
        };
        if !wanted {
            continue;
        }
        db.execute(
            "INSERT INTO event_outbox (id, org_id, subscription_id, event_type, payload, status, attempts, \
             next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
            &[
                Value::Text(ctx.new_id()),
                Value::from(org_id),
                row[0].clone(),
                Value::from(event_type),
                Value::from(payload.as_str()),
                Value::Integer(now),
                Value::Integer(now),
            ],
        )?;
    }
    Ok(())
}

/// The first retry's delay: `event_retry_base_ms`, or 10 s.
fn retry_base_ms(ctx: &RequestContext) -> i64 {
    ctx.variable("event_retry_base_ms")
        .and_then(|v| v.trim().parse().ok())
        .filter(|ms: &i64| *ms > 0)
        .unwrap_or(DEFAULT_RETRY_BASE_MS)
}

/// The delay after `failed` attempts (1 or more): `base × 2^(failed − 1)`,
/// at most an hour, scaled by a jitter factor from 0.8 to 1.2.
fn retry_delay_ms(base: i64, failed: i64, unit: f64) -> i64 {
    let exponent = u32::try_from((failed - 1).clamp(0, 30)).unwrap_or(30);
    let delay = base
        .saturating_mul(1i64 << exponent)
        .min(MAX_RETRY_DELAY_MS);
    ((delay as f64) * (0.8 + 0.4 * unit)) as i64
}

/// What one attempt came to.
struct Attempt {
    status_code: Option<u16>,
    error: Option<String>,
    duration_ms: i64,
}

impl Attempt {
    fn succeeded(&self) -> bool {
        self.status_code.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Delivers due events (`pending`, their time come, not leased by another
/// tick) in a bounded batch; answers how many were delivered. Every attempt
/// is recorded; a failure is retried later, and after 8 attempts is `dead`.
pub(crate) fn deliver_due(ctx: &RequestContext) -> Result<usize, ApiError> {
    let db = ctx.db()?;
    let started = now_ms();
    // Like the step recovery in the tick, a query across organisations: the
    // delivery worker is the platform's.
    let due = db.execute(
        "SELECT o.id FROM event_outbox o JOIN event_subscriptions s ON s.id = o.subscription_id \
         AND s.org_id = o.org_id AND s.deleted_at IS NULL AND s.is_active = 1 \
         WHERE o.status = 'pending' AND o.next_attempt_at <= ? \
         AND (o.lease_expires_at IS NULL OR o.lease_expires_at < ?) \
         ORDER BY o.next_attempt_at, o.id LIMIT ?",
        &[
            Value::Integer(started),
            Value::Integer(started),
            Value::Integer(DELIVERY_BATCH),
        ],
    )?;
    let base = retry_base_ms(ctx);
    let mut delivered = 0;
    for row in &due.rows {
        if now_ms() - started > TICK_BUDGET_MS {
            break;
        }
        let Some(id) = row[0].as_str() else { continue };
        match deliver_one(ctx, db, id, base) {
            Ok(true) => delivered += 1,
            Ok(false) => {}
            // The lease lapses and a later tick tries again.
            Err(error) => eprintln!("spindle: event {id} was not delivered: {error}"),
        }
    }
    Ok(delivered)
}

/// Leases one outbox row, sends it, and records the attempt; `Ok(true)`
/// when the subscriber took it, `Ok(false)` when it failed or another tick
/// holds it.
fn deliver_one(ctx: &RequestContext, db: &dyn Db, id: &str, base: i64) -> Result<bool, ApiError> {
    let now = now_ms();
    let Some(leased) = db
        .execute(
            "UPDATE event_outbox SET lease_expires_at = ? WHERE id = ? AND status = 'pending' \
             AND next_attempt_at <= ? AND (lease_expires_at IS NULL OR lease_expires_at < ?) \
             RETURNING org_id, subscription_id, payload, attempts",
            &[
                Value::Integer(now + LEASE_MS),
                Value::from(id),
                Value::Integer(now),
                Value::Integer(now),
            ],
        )?
        .into_first()
    else {
        return Ok(false);
    };
    let org_id = leased[0].as_str().unwrap_or_default().to_string();
    let payload = leased[2].as_str().unwrap_or_default().to_string();
    let attempts = leased[3].as_i64().unwrap_or(0) + 1;
    let org = OrgScoped::new(db, &org_id);
    let subscription = fetch_one(
        &org,
        "SELECT url, secret FROM event_subscriptions WHERE org_id = ?1 AND id = ?2",
        &[leased[1].clone()],
        || format!("event subscription of event {id}"),
    )?;
    let url = subscription[0].as_str().unwrap_or_default();
    let secret = subscription[1].as_str().unwrap_or_default();
    let attempt = send(ctx, id, url, secret, payload.as_bytes());
    let finished = now_ms();
    in_transaction(db, |db| -> Result<(), ApiError> {
        db.execute(
            "INSERT INTO event_attempts (id, org_id, outbox_id, status_code, error, duration_ms, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
            &[
                Value::Text(ctx.new_id()),
                Value::from(org_id.as_str()),
                Value::from(id),
                Value::from(attempt.status_code.map(i64::from)),
                Value::from(attempt.error.clone()),
                Value::Integer(attempt.duration_ms),
                Value::Integer(finished),
            ],
        )?;
        let (status, next, delivered_at) = if attempt.succeeded() {
            ("delivered", now, Some(finished))
        } else if attempts >= MAX_ATTEMPTS {
            ("dead", now, None)
        } else {
            let delay = retry_delay_ms(base, attempts, ctx.random_unit());
            ("pending", finished + delay, None)
        };
        db.execute(
            "UPDATE event_outbox SET status = ?, attempts = ?, next_attempt_at = ?, delivered_at = ?, \
             lease_expires_at = NULL WHERE id = ? AND status = 'pending'",
            &[
                Value::from(status),
                Value::Integer(attempts),
                Value::Integer(next),
                Value::from(delivered_at),
                Value::from(id),
            ],
        )?;
        Ok(())
    })?;
    Ok(attempt.succeeded())
}

/// POSTs `body` to `url` signed with `secret`, `webhook-id` being the
/// outbox id; never fails, whatever the subscriber or the host does.
fn send(ctx: &RequestContext, id: &str, url: &str, secret: &str, body: &[u8]) -> Attempt {
    let started = now_ms();
    let sent_at = (started / 1000).to_string();
    let signature = match standard_signature(secret, id, &sent_at, body) {
        Ok(signature) => signature,
        Err(error) => {
            return Attempt {
                status_code: None,
                error: Some(error.to_string()),
                duration_ms: 0,
            };
        }
    };
    let result = ctx.send(&OutboundRequest {
        method: "POST".into(),
        url: url.to_string(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("user-agent".into(), "Spindle-Webhooks".into()),
            ("webhook-id".into(), id.to_string()),
            ("webhook-timestamp".into(), sent_at),
            ("webhook-signature".into(), format!("v1,{signature}")),
        ],
        body: body.to_vec(),
        timeout_ms: DELIVERY_TIMEOUT_MS,
        max_response_bytes: MAX_RESPONSE_BYTES,
    });
    let duration_ms = now_ms() - started;
    match result {
        Ok(response) => {
            let error = (!(200..300).contains(&response.status)).then(|| {
                let text: String = String::from_utf8_lossy(&response.body)
                    .chars()
                    .take(MAX_ERROR_CHARS)
                    .collect();
                if text.trim().is_empty() {
                    format!("the subscriber answered {}", response.status)
                } else {
                    format!("the subscriber answered {}: {text}", response.status)
                }
            });
            Attempt {
                status_code: Some(response.status),
                error,
                duration_ms,
            }
        }
        Err(error) => Attempt {
            status_code: None,
            error: Some(match error {
                OutboundError::Denied(_) => format!("{url} is not an allowed host"),
                other => other.to_string(),
            }),
            duration_ms,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Backends;
    use spindle_http::OutboundResponse;
    use spindle_store::{DbError, KvError, KvStore, MemoryKv, RusqliteDb};
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    /// What the subscriber answers, in order (`200` once it runs out).
    type Script = Rc<RefCell<VecDeque<Result<u16, OutboundError>>>>;
    /// What was sent to it.
    type Sent = Rc<RefCell<Vec<OutboundRequest>>>;

    /// SQLite in memory and a subscriber that answers from a script.
    #[derive(Default)]
    struct Native {
        script: Script,
        sent: Sent,
        /// `event_retry_base_ms` is left unset (else it is `1000`).
        default_retry_base: bool,
        /// The word every jitter draw (an 8-byte random read) gets, if fixed.
        jitter: Option<u64>,
    }

    impl Backends for Native {
        fn open_db(&self) -> Result<Box<dyn Db>, DbError> {
            Ok(Box::new(RusqliteDb::memory()))
        }
        fn open_kv(&self) -> Result<Box<dyn KvStore>, KvError> {
            Ok(Box::new(MemoryKv::default()))
        }
        fn variable(&self, name: &str) -> Option<String> {
            (name == "event_retry_base_ms" && !self.default_retry_base).then(|| "1000".to_string())
        }
        fn random_bytes(&self, buffer: &mut [u8]) {
            match self.jitter {
                Some(word) if buffer.len() == 8 => buffer.copy_from_slice(&word.to_le_bytes()),
                _ => getrandom::fill(buffer).unwrap(),
            }
        }
        fn send(&self, request: &OutboundRequest) -> Result<OutboundResponse, OutboundError> {
            self.sent.borrow_mut().push(request.clone());
            let status = self.script.borrow_mut().pop_front().unwrap_or(Ok(200))?;
            Ok(OutboundResponse {
                status,
                headers: Vec::new(),
                body: b"nope".to_vec(),
            })
        }
        fn sleep_ms(&self, _: u64) {}
    }

    fn setup() -> (RequestContext, Script, Sent) {
        setup_with(Native::default())
    }

    fn setup_with(native: Native) -> (RequestContext, Script, Sent) {
        let (script, sent) = (native.script.clone(), native.sent.clone());
        let ctx = RequestContext::new(Box::new(native));
        ctx.db()
            .unwrap()
            .execute(
                "INSERT INTO organizations (id, name, created_at, updated_at) VALUES ('o1', 'one', 0, 0), \
                 ('o2', 'two', 0, 0)",
                &[],
            )
            .unwrap();
        (ctx, script, sent)
    }

    fn subscribe(
        ctx: &RequestContext,
        org: &str,
        types: &str,
        active: bool,
        deleted: bool,
    ) -> String {
        let id = ctx.new_id();
        ctx.db()
            .unwrap()
            .execute(
                "INSERT INTO event_subscriptions (id, org_id, url, event_types, secret, is_active, created_at, \
                 updated_at, deleted_at) VALUES (?, ?, 'http://127.0.0.1:9/events', ?, \
                 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', ?, 0, 0, ?)",
                &[
                    Value::from(id.as_str()),
                    Value::from(org),
                    Value::from(types),
                    Value::Integer(i64::from(active)),
                    Value::from(deleted.then_some(1i64)),
                ],
            )
            .unwrap();
        id
    }

    fn outbox(ctx: &RequestContext) -> Vec<Vec<Value>> {
        ctx.db()
            .unwrap()
            .execute(
                "SELECT subscription_id, status, attempts, next_attempt_at, payload FROM event_outbox ORDER BY id",
                &[],
            )
            .unwrap()
            .rows
    }

    #[test]
    fn emit_queues_one_row_per_active_matching_subscription_of_the_org() {
        let (ctx, _, _) = setup();
        let all = subscribe(&ctx, "o1", "[]", true, false);
        let completed = subscribe(&ctx, "o1", r#"["workflow.completed"]"#, true, false);
        subscribe(&ctx, "o1", r#"["step.failed"]"#, true, false);
        subscribe(&ctx, "o1", "[]", false, false);
        subscribe(&ctx, "o1", "[]", true, true);
        subscribe(&ctx, "o2", "[]", true, false);
        emit(
            &ctx,
            ctx.db().unwrap(),
            "o1",
            "workflow.completed",
            &json!({"execution_id": "e1"}),
        )
        .unwrap();
        let rows = outbox(&ctx);
        let mut subs: Vec<&str> = rows.iter().map(|r| r[0].as_str().unwrap()).collect();
        subs.sort_unstable();
        let mut expected = vec![all.as_str(), completed.as_str()];
        expected.sort_unstable();
        assert_eq!(subs, expected);
        let payload: Json = serde_json::from_str(rows[0][4].as_str().unwrap()).unwrap();
        assert_eq!(payload["type"], "workflow.completed");
        assert_eq!(payload["data"], json!({"execution_id": "e1"}));
        assert!(payload["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn a_delivery_is_signed_and_retried_with_backoff_until_it_succeeds() {
        let (ctx, script, sent) = setup();
        subscribe(&ctx, "o1", "[]", true, false);
        emit(&ctx, ctx.db().unwrap(), "o1", "step.failed", &json!({})).unwrap();
        script
            .borrow_mut()
            .extend([Ok(500), Err(OutboundError::Denied("x".into()))]);
        assert_eq!(deliver_due(&ctx).unwrap(), 0);
        let row = &outbox(&ctx)[0];
        assert_eq!(row[1].as_str(), Some("pending"));
        assert_eq!(row[2].as_i64(), Some(1));
        let wait = row[3].as_i64().unwrap() - now_ms();
        assert!((700..=1200).contains(&wait), "{wait}");
        // Not due yet: nothing is sent.
        assert_eq!(deliver_due(&ctx).unwrap(), 0);
        assert_eq!(sent.borrow().len(), 1);
        let request = sent.borrow()[0].clone();
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let expected = standard_signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            &header("webhook-id"),
            &header("webhook-timestamp"),
            &request.body,
        )
        .unwrap();
        assert_eq!(header("webhook-signature"), format!("v1,{expected}"));
        assert_eq!(request.timeout_ms, 5_000);
        // Make it due again twice: the host refuses, then the subscriber takes it.
        let due_now = || {
            ctx.db()
                .unwrap()
                .execute("UPDATE event_outbox SET next_attempt_at = 0", &[])
                .unwrap();
        };
        due_now();
        assert_eq!(deliver_due(&ctx).unwrap(), 0);
        due_now();
        assert_eq!(deliver_due(&ctx).unwrap(), 1);
        let row = &outbox(&ctx)[0];
        assert_eq!(row[1].as_str(), Some("delivered"));
        assert_eq!(row[2].as_i64(), Some(3));
        let attempts = ctx
            .db()
            .unwrap()
            .execute(
                "SELECT status_code, error FROM event_attempts ORDER BY rowid",
                &[],
            )
            .unwrap()
            .rows;
        assert_eq!(attempts.len(), 3);
        assert_eq!(attempts[0][0].as_i64(), Some(500));
        assert!(attempts[0][1].as_str().unwrap().contains("nope"));
        assert_eq!(attempts[1][0].as_i64(), None);
        assert!(
            attempts[1][1]
                .as_str()
                .unwrap()
                .contains("not an allowed host")
        );
        assert_eq!(attempts[2][0].as_i64(), Some(200));
        assert_eq!(attempts[2][1].as_str(), None);
        due_now();
        assert_eq!(deliver_due(&ctx).unwrap(), 0);
        assert_eq!(sent.borrow().len(), 3);
    }

    #[test]
    fn after_eight_failed_attempts_a_delivery_is_dead() {
        let (ctx, script, sent) = setup();
        subscribe(&ctx, "o1", "[]", true, false);
        emit(&ctx, ctx.db().unwrap(), "o1", "agent.executed", &json!({})).unwrap();
        script.borrow_mut().extend((0..10).map(|_| Ok(503)));
        for _ in 0..10 {
            ctx.db()
                .unwrap()
                .execute("UPDATE event_outbox SET next_attempt_at = 0", &[])
                .unwrap();
            deliver_due(&ctx).unwrap();
        }
        assert_eq!(sent.borrow().len(), 8);
        let row = &outbox(&ctx)[0];
        assert_eq!(row[1].as_str(), Some("dead"));
        assert_eq!(row[2].as_i64(), Some(8));
    }

    #[test]
    fn the_backoff_doubles_and_is_capped_at_an_hour() {
        assert_eq!(retry_delay_ms(10_000, 1, 0.5), 10_000);
        assert_eq!(retry_delay_ms(10_000, 3, 0.5), 40_000);
        assert_eq!(retry_delay_ms(10_000, 4, 0.0), 64_000);
        assert_eq!(retry_delay_ms(10_000, 20, 0.5), MAX_RETRY_DELAY_MS);
        assert!(retry_delay_ms(10_000, 20, 0.99) <= MAX_RETRY_DELAY_MS * 6 / 5);
    }

    #[test]
    fn urls_must_be_absolute_http() {
        assert!(is_http_url("https://example.com/hook"));
        assert!(is_http_url("http://127.0.0.1:8080"));
        for bad in [
            "ftp://x",
            "https://",
            "https:///path",
            "example.com",
            "http://a b",
            "http://:80/",
        ] {
            assert!(!is_http_url(bad), "{bad}");
        }
    }

    /// README (settings): "`event_retry_base_ms` | `10000` | … first retry
    /// delay of a failed event delivery (doubling after each)". The delay
    /// has jitter ("with jitter"), drawn here at its middle.
    #[test]
    fn without_event_retry_base_ms_a_failed_delivery_is_retried_ten_seconds_later() {
        let (ctx, script, _) = setup_with(Native {
            default_retry_base: true,
            // random_unit() = (2^63 >> 11) / 2^53 = 0.5
            jitter: Some(1 << 63),
            ..Native::default()
        });
        subscribe(&ctx, "o1", "[]", true, false);
        emit(&ctx, ctx.db().unwrap(), "o1", "step.failed", &json!({})).unwrap();
        script.borrow_mut().extend([Ok(500), Ok(500)]);
        // How long after its last attempt finished the delivery is due again.
        let wait = || {
            let attempt_at = ctx
                .db()
                .unwrap()
                .execute("SELECT MAX(created_at) FROM event_attempts", &[])
                .unwrap()
                .scalar_i64()
                .unwrap();
            outbox(&ctx)[0][3].as_i64().unwrap() - attempt_at
        };
        assert_eq!(deliver_due(&ctx).unwrap(), 0);
        assert_eq!(wait(), 10_000);
        ctx.db()
            .unwrap()
            .execute("UPDATE event_outbox SET next_attempt_at = 0", &[])
            .unwrap();
        assert_eq!(deliver_due(&ctx).unwrap(), 0);
        assert_eq!(outbox(&ctx)[0][2].as_i64(), Some(2));
        assert_eq!(wait(), 20_000);
    }
}
