//! Provider admission: per organisation and provider, optional limits on
//! requests and tokens per minute, kept with the generic cell rate
//! algorithm (GCRA) in one row each. A call books its slot with one atomic
//! `UPDATE`, then waits for it; a call whose slot is further away than its
//! caller may wait is not sent at all (a workflow step is deferred to that
//! time). The provider's own rate-limit answers (`Retry-After`, a remaining
//! count of 0) pause the same row, so a burst of runs never turns into a
//! storm of provider 429s.

use crate::auth::{authenticate, record_activity};
use crate::context::RequestContext;
use crate::{now_ms, timestamp};
use serde_json::{Value as Json, json};
use spindle_auth::Role;
use spindle_http::{ApiError, ApiRequest, ApiResponse, ErrorDetail, Params};
use spindle_providers::Provider;
use spindle_store::{Db, OrgScoped, Value};

/// Highest limit accepted, per minute.
const MAX_PER_MINUTE: i64 = 100_000_000;

/// Whether a provider call may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Its slot is booked: send after waiting this many ms (0: now).
    Go {
        /// How long to wait first.
        wait_ms: u64,
    },
    /// Not within the caller's wait: nothing was booked; try again at this time (ms).
    Later {
        /// The earliest time the call could go.
        not_before: i64,
    },
}

/// Books a slot for a call of about `tokens` tokens to `provider` for the
/// organisation, if it can go within `max_wait_ms`.
pub(crate) fn admit(
    db: &dyn Db,
    org_id: &str,
    provider: &str,
    tokens: i64,
    now: i64,
    max_wait_ms: u64,
) -> Result<Admission, ApiError> {
    // Most organisations set no limits: a read tells, without the write lock.
    let limited = OrgScoped::new(db, org_id).execute(
        "SELECT 1 FROM provider_limits WHERE org_id = ?1 AND provider = ?2",
        &[Value::from(provider)],
    )?;
    if limited.rows.is_empty() {
        return Ok(Admission::Go { wait_ms: 0 });
    }
    let max_wait = i64::try_from(max_wait_ms).unwrap_or(i64::MAX);
    // When the call may start: after any pause and after both cells' slots.
    let start = "MAX(paused_until, \
         CASE WHEN requests_per_minute IS NULL THEN 0 ELSE MAX(request_tat, ?3) END, \
         CASE WHEN tokens_per_minute IS NULL THEN 0 ELSE MAX(token_tat, ?3) END)";
    let booked = OrgScoped::new(db, org_id).execute(
        &format!(
            "UPDATE provider_limits SET \
             request_tat = CASE WHEN requests_per_minute IS NULL THEN request_tat \
               ELSE MAX(request_tat, ?3) + (60000 + requests_per_minute - 1) / requests_per_minute END, \
             token_tat = CASE WHEN tokens_per_minute IS NULL THEN token_tat \
               ELSE MAX(token_tat, ?3) + (?4 * 60000 + tokens_per_minute - 1) / tokens_per_minute END \
             WHERE org_id = ?1 AND provider = ?2 AND {start} - ?3 <= ?5 \
             RETURNING paused_until, request_tat, token_tat, requests_per_minute, tokens_per_minute"
        ),
        &[
            Value::from(provider),
            Value::Integer(now),
            Value::Integer(tokens.max(0)),
            Value::Integer(max_wait),
        ],
    )?;
    if let Some(row) = booked.into_first() {
        let number = |i: usize| row[i].as_i64();
        // The slot starts one cell interval before the new arrival times.
        let request_start = match (number(1), number(3)) {
            (Some(tat), Some(rpm)) if rpm > 0 => tat - (60000 + rpm - 1) / rpm,
            _ => 0,
        };
        let token_start = match (number(2), number(4)) {
            (Some(tat), Some(tpm)) if tpm > 0 => tat - (tokens.max(0) * 60000 + tpm - 1) / tpm,
            _ => 0,
        };
        let start = number(0).unwrap_or(0).max(request_start).max(token_start);
        return Ok(Admission::Go {
            wait_ms: u64::try_from(start - now).unwrap_or(0),
        });
    }
    let waiting = OrgScoped::new(db, org_id).execute(
        &format!("SELECT {start} FROM provider_limits WHERE org_id = ?1 AND provider = ?2"),
        &[Value::from(provider), Value::Integer(now)],
    )?;
    Ok(match waiting.into_first() {
        // No limits and no pause: nothing to book.
        None => Admission::Go { wait_ms: 0 },
        Some(row) => Admission::Later {
            not_before: row[0].as_i64().unwrap_or(now).max(now),
        },
    })
}

/// Holds every call of the organisation to `provider` until `until` (ms),
/// because the provider said so. A pause only ever grows.
pub(crate) fn pause(db: &dyn Db, org_id: &str, provider: &str, until: i64) -> Result<(), ApiError> {
    db.execute(
        "INSERT INTO provider_limits (org_id, provider, paused_until, updated_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (org_id, provider) DO UPDATE SET paused_until = MAX(paused_until, excluded.paused_until)",
        &[
            Value::from(org_id),
            Value::from(provider),
            Value::Integer(until),
            Value::Integer(now_ms()),
        ],
    )?;
    Ok(())
}

/// How long a provider's answer asks callers to hold off, in ms: its
/// `Retry-After`, or the reset time of a rate-limit counter that reached 0
/// (OpenAI-style `x-ratelimit-*`, Anthropic's `anthropic-ratelimit-*`).
pub(crate) fn hold_off_ms(headers: &[(String, String)], now: i64) -> Option<u64> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    };
    if let Some(seconds) = header("retry-after").and_then(|v| v.parse::<f64>().ok()) {
        return Some((seconds.max(0.0) * 1000.0) as u64);
    }
    let mut longest = None;
    for (remaining, reset) in [
        (
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
        ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
        (
            "anthropic-ratelimit-requests-remaining",
            "anthropic-ratelimit-requests-reset",
        ),
        (
            "anthropic-ratelimit-tokens-remaining",
            "anthropic-ratelimit-tokens-reset",
        ),
    ] {
        if header(remaining).and_then(|v| v.parse::<u64>().ok()) != Some(0) {
            continue;
        }
        let Some(reset) = header(reset) else { continue };
        let ms = go_duration_ms(reset).or_else(|| {
            let at = chrono::DateTime::parse_from_rfc3339(reset)
                .ok()?
                .timestamp_millis();
            u64::try_from(at - now).ok()
        });
        longest = longest.max(ms);
    }
    longest
}

/// A duration as OpenAI writes it (`1s`, `6m0s`, `20ms`, `1h2m3.5s`), in ms.
fn go_duration_ms(text: &str) -> Option<u64> {
    let mut total = 0.0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (factor, unit_len) = if rest.starts_with("ms") {
            (1.0, 2)
        } else if rest.starts_with('h') {
            (3_600_000.0, 1)
        } else if rest.starts_with('m') {
            (60_000.0, 1)
        } else if rest.starts_with('s') {
            (1000.0, 1)
        } else {
            return None;
        };
        total += number * factor;
        rest = &rest[unit_len..];
    }
    Some(total as u64)
}

/// A rough token count of a call before it is made: a quarter of the
/// characters sent, plus the answer's cap.
pub(crate) fn estimated_tokens(characters: usize, max_tokens: Option<u32>) -> i64 {
    let input = i64::try_from(characters / 4).unwrap_or(i64::MAX);
    input.saturating_add(i64::from(max_tokens.unwrap_or(1024)))
}

fn limit_json(row: &[Value]) -> Json {
    json!({
        "provider": row[0].as_str(),
        "requests_per_minute": row[1].as_i64(),
        "tokens_per_minute": row[2].as_i64(),
        "paused_until": row[3].as_i64().filter(|at| *at > now_ms()).map(timestamp),
        "updated_at": row[4].as_i64().map(timestamp),
    })
}

fn provider_param(params: &Params) -> Result<Provider, ApiError> {
    let name = params.get("provider").unwrap_or_default();
    Provider::parse(name).ok_or_else(|| {
        let known: Vec<&str> = Provider::ALL.iter().map(|p| p.as_str()).collect();
        ApiError::NotFound(format!(
            "provider {name} not found (known: {})",
            known.join(", ")
        ))
    })
}

/// `GET /api/v1/usage/limits` (viewer): the organisation's provider limits.
pub(super) fn list(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let rows = OrgScoped::new(ctx.db()?, &caller.org_id).execute(
        "SELECT provider, requests_per_minute, tokens_per_minute, paused_until, updated_at \
         FROM provider_limits WHERE org_id = ?1 \
         AND (requests_per_minute IS NOT NULL OR tokens_per_minute IS NOT NULL) ORDER BY provider",
        &[],
    )?;
    let data: Vec<Json> = rows.rows.iter().map(|r| limit_json(r)).collect();
    Ok(ApiResponse::json(200, &json!({"data": data})))
}

/// `PUT /api/v1/usage/limits/:provider` (admin) `{requests_per_minute?,
/// tokens_per_minute?}`: sets both (a missing or null one is no limit).
pub(super) fn put(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Admin)?;
    let provider = provider_param(params)?;
    let body = request.json_object(&["requests_per_minute", "tokens_per_minute"])?;
    let mut problems = Vec::new();
    let mut limit = |name: &str| match body.get(name) {
        None | Some(Json::Null) => None,
        Some(value) => match value.as_i64().filter(|n| (1..=MAX_PER_MINUTE).contains(n)) {
            Some(n) => Some(n),
            None => {
                problems.push(ErrorDetail::new(
                    name,
                    format!("must be an integer from 1 to {MAX_PER_MINUTE}, or null"),
                ));
                None
            }
        },
    };
    let (requests, tokens) = (limit("requests_per_minute"), limit("tokens_per_minute"));
    if !problems.is_empty() {
        return Err(ApiError::Validation {
            message: "invalid provider limits".into(),
            details: problems,
        });
    }
    let db = ctx.db()?;
    let now = now_ms();
    let row = db.execute(
        "INSERT INTO provider_limits (org_id, provider, requests_per_minute, tokens_per_minute, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (org_id, provider) DO UPDATE SET \
         requests_per_minute = excluded.requests_per_minute, tokens_per_minute = excluded.tokens_per_minute, \
         updated_at = excluded.updated_at \
         RETURNING provider, requests_per_minute, tokens_per_minute, paused_until, updated_at",
        &[
            Value::from(caller.org_id.as_str()),
            Value::from(provider.as_str()),
            Value::from(requests),
            Value::from(tokens),
            Value::Integer(now),
        ],
    )?;
    let limits = row
        .into_first()
        .map(|r| limit_json(&r))
        .ok_or_else(|| ApiError::Internal("the limits were not stored".into()))?;
    record_activity(
        ctx,
        db,
        &caller.org_id,
        &caller.subject,
        "provider_limits.updated",
        ("provider", provider.as_str()),
        &limits,
    )?;
    Ok(ApiResponse::json(200, &limits))
}

/// `DELETE /api/v1/usage/limits/:provider` (admin): no limits for it any more.
pub(super) fn delete(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Admin)?;
    let provider = provider_param(params)?;
    let db = ctx.db()?;
    let cleared = OrgScoped::new(db, &caller.org_id).execute(
        "UPDATE provider_limits SET requests_per_minute = NULL, tokens_per_minute = NULL, updated_at = ?3 \
         WHERE org_id = ?1 AND provider = ?2 \
         AND (requests_per_minute IS NOT NULL OR tokens_per_minute IS NOT NULL) RETURNING provider",
        &[Value::from(provider.as_str()), Value::Integer(now_ms())],
    )?;
    if cleared.rows.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no limits are set for {}",
            provider.as_str()
        )));
    }
    record_activity(
        ctx,
        db,
        &caller.org_id,
        &caller.subject,
        "provider_limits.deleted",
        ("provider", provider.as_str()),
        &json!({}),
    )?;
    Ok(ApiResponse::no_content())
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_store::{RusqliteDb, migrate};

    fn database(rpm: Option<i64>, tpm: Option<i64>) -> RusqliteDb {
        let db = RusqliteDb::memory();
        migrate(&db).unwrap();
        db.execute(
            "INSERT INTO organizations (id, name, created_at, updated_at) VALUES ('o', 'O', 0, 0)",
            &[],
        )
        .unwrap();
        db.execute(
            "INSERT INTO provider_limits (org_id, provider, requests_per_minute, tokens_per_minute, updated_at) \
             VALUES ('o', 'openai', ?, ?, 0)",
            &[Value::from(rpm), Value::from(tpm)],
        )
        .unwrap();
        db
    }

    #[test]
    fn requests_are_spaced_by_the_limit_and_refused_beyond_the_wait() {
        // 600 a minute: one every 100 ms.
        let db = database(Some(600), None);
        let now = 1_000_000;
        let waits: Vec<Admission> = (0..4)
            .map(|_| admit(&db, "o", "openai", 10, now, 250).unwrap())
            .collect();
        assert_eq!(
            waits,
            [
                Admission::Go { wait_ms: 0 },
                Admission::Go { wait_ms: 100 },
                Admission::Go { wait_ms: 200 },
                Admission::Later {
                    not_before: now + 300
                },
            ]
        );
        // Nothing was booked for the refused call: the next slot is still +300.
        assert_eq!(
            admit(&db, "o", "openai", 10, now, 1000).unwrap(),
            Admission::Go { wait_ms: 300 }
        );
        // Later, the cell has drained.
        assert_eq!(
            admit(&db, "o", "openai", 10, now + 10_000, 0).unwrap(),
            Admission::Go { wait_ms: 0 }
        );
    }

    #[test]
    fn tokens_per_minute_space_calls_by_their_size() {
        // 60 000 tokens a minute: a 1 000-token call holds the cell for 1 s.
        let db = database(None, Some(60_000));
        let now = 5_000_000;
        assert_eq!(
            admit(&db, "o", "openai", 1000, now, 5000).unwrap(),
            Admission::Go { wait_ms: 0 }
        );
        assert_eq!(
            admit(&db, "o", "openai", 500, now, 5000).unwrap(),
            Admission::Go { wait_ms: 1000 }
        );
        assert_eq!(
            admit(&db, "o", "openai", 10, now, 5000).unwrap(),
            Admission::Go { wait_ms: 1500 }
        );
    }

    #[test]
    fn a_provider_pause_holds_every_call_even_without_limits() {
        let db = RusqliteDb::memory();
        migrate(&db).unwrap();
        db.execute(
            "INSERT INTO organizations (id, name, created_at, updated_at) VALUES ('o', 'O', 0, 0)",
            &[],
        )
        .unwrap();
        assert_eq!(
            admit(&db, "o", "anthropic", 10, 0, 0).unwrap(),
            Admission::Go { wait_ms: 0 }
        );
        pause(&db, "o", "anthropic", 3_000).unwrap();
        pause(&db, "o", "anthropic", 2_000).unwrap();
        assert_eq!(
            admit(&db, "o", "anthropic", 10, 1_000, 5_000).unwrap(),
            Admission::Go { wait_ms: 2_000 }
        );
        assert_eq!(
            admit(&db, "o", "anthropic", 10, 1_000, 1_000).unwrap(),
            Admission::Later { not_before: 3_000 }
        );
        assert_eq!(
            admit(&db, "o", "openai", 10, 1_000, 0).unwrap(),
            Admission::Go { wait_ms: 0 }
        );
    }

    #[test]
    fn provider_answers_say_how_long_to_hold_off() {
        let headers = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            hold_off_ms(&headers(&[("Retry-After", "2")]), 0),
            Some(2000)
        );
        assert_eq!(
            hold_off_ms(
                &headers(&[
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-reset-requests", "1m30.5s"),
                    ("x-ratelimit-remaining-tokens", "10"),
                    ("x-ratelimit-reset-tokens", "9s"),
                ]),
                0
            ),
            Some(90_500)
        );
        assert_eq!(
            hold_off_ms(
                &headers(&[
                    ("anthropic-ratelimit-requests-remaining", "0"),
                    ("anthropic-ratelimit-requests-reset", "1970-01-01T00:00:05Z"),
                ]),
                1_000
            ),
            Some(4_000)
        );
        assert_eq!(
            hold_off_ms(&headers(&[("x-ratelimit-remaining-requests", "5")]), 0),
            None
        );
        assert_eq!(go_duration_ms("20ms"), Some(20));
        assert_eq!(go_duration_ms("6m0s"), Some(360_000));
        assert_eq!(go_duration_ms("soon"), None);
    }
}
