//! The accounts area: health, organisations, API keys and token exchange.

use crate::auth::{AuthSettings, authenticate, record_activity};
use crate::context::RequestContext;
use crate::{fetch_one, json_column, now_ms, timestamp};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use spindle_auth::{
    AuthError, Caller, Credential, Role, TokenClaims, constant_time_eq, generate_api_key,
    parse_authorization,
};
use spindle_http::{ApiError, ApiRequest, ApiResponse, ErrorDetail, Method, Params, Router};
use spindle_store::{Db, OrgScoped, Value, in_transaction};

/// Longest organisation or key name.
const MAX_NAME_CHARS: usize = 200;
/// Token lifetimes `POST /api/v1/auth/token` accepts, in seconds.
const TOKEN_TTL_SECS: std::ops::RangeInclusive<u64> = 60..=3600;
const DEFAULT_TOKEN_TTL_SECS: u64 = 900;
/// Largest per-key rate limit, requests per minute.
const MAX_KEY_RATE_LIMIT: u32 = 100_000;

/// The accounts component's routes. Its catch-all `/...` also lands here, so
/// anything no component knows answers the JSON 404 from this router.
pub fn router() -> Router<RequestContext> {
    Router::new()
        .route(Method::Get, "/healthz", healthz)
        .route(Method::Post, "/api/v1/orgs", create_org)
        .route(Method::Get, "/api/v1/orgs/current", current_org)
        .route(Method::Get, "/api/v1/orgs/current/activity", list_activity)
        .route(Method::Post, "/api/v1/api-keys", create_key)
        .route(Method::Get, "/api/v1/api-keys", list_keys)
        .route(Method::Get, "/api/v1/api-keys/:id", get_key)
        .route(Method::Delete, "/api/v1/api-keys/:id", revoke_key)
        .route(Method::Post, "/api/v1/auth/token", issue_token)
        .route(Method::Get, "/openapi.json", crate::openapi::serve)
}

/// `GET /healthz`: 200 when SQLite and the key-value store both answer, with
/// the schema level; 503 naming the failing check otherwise.
fn healthz(ctx: &RequestContext, _: &ApiRequest, _: &Params) -> Result<ApiResponse, ApiError> {
    let schema = ctx.db().and_then(|db| {
        let rows = db.execute("SELECT MAX(version) FROM schema_migrations", &[])?;
        Ok(rows.scalar_i64().unwrap_or(0))
    });
    // A read proves the store answers without writing on every probe.
    let kv = ctx.kv().and_then(|kv| Ok(kv.exists("healthz")?));
    let check = |result: Result<(), &ApiError>| match result {
        Ok(()) => "ok".to_string(),
        Err(error) => format!("error: {error}"),
    };
    let checks = json!({
        "sqlite": check(schema.as_ref().map(|_| ())),
        "key_value": check(kv.as_ref().map(|_| ())),
    });
    let healthy = schema.is_ok() && kv.is_ok();
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "version": env!("CARGO_PKG_VERSION"),
        "schema": schema.ok(),
        "checks": checks,
    });
    Ok(ApiResponse::json(if healthy { 200 } else { 503 }, &body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrg {
    name: String,
    #[serde(default)]
    owner_key_name: Option<String>,
}

/// `POST /api/v1/orgs` (platform admin key): a new organisation and its
/// first owner key, whose secret is shown this once.
fn create_org(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let admin_key = ctx.required_secret("admin_key")?;
    let presented = match parse_authorization(request.header("authorization"))? {
        Credential::ApiKey(token) | Credential::Jwt(token) => token,
    };
    if !constant_time_eq(presented.as_bytes(), admin_key.as_bytes()) {
        return Err(ApiError::Unauthenticated(
            "creating organisations needs the platform admin key".into(),
        ));
    }
    let body: NewOrg = request.json()?;
    let mut problems = Vec::new();
    let name = check_name(&body.name, "name", &mut problems);
    let key_name = match &body.owner_key_name {
        Some(key_name) => check_name(key_name, "owner_key_name", &mut problems),
        None => "owner".to_string(),
    };
    reject(problems)?;
    let key = generate_api_key(&ctx.random());
    let (org_id, key_id, now) = (ctx.new_id(), ctx.new_id(), now_ms());
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        db.execute(
            "INSERT INTO organizations (id, name, created_at, updated_at) VALUES (?, ?, ?, ?)",
            &[
                Value::from(org_id.as_str()),
                Value::from(name.as_str()),
                Value::Integer(now),
                Value::Integer(now),
            ],
        )?;
        insert_key(
            db,
            &org_id,
            &key_id,
            &key_name,
            Role::Owner,
            &key,
            None,
            None,
            "platform-admin",
            now,
        )?;
        record_activity(
            ctx,
            db,
            &org_id,
            "platform-admin",
            "org.created",
            ("organization", &org_id),
            &json!({"name": name}),
        )?;
        record_activity(
            ctx,
            db,
            &org_id,
            "platform-admin",
            "api_key.created",
            ("api_key", &key_id),
            &json!({"role": "owner"}),
        )?;
        Ok(())
    })?;
    let org = OrgScoped::new(ctx.db()?, &org_id);
    Ok(ApiResponse::json(
        201,
        &json!({
            "organization": org_json(&org)?,
            "api_key": with_secret(key_json(&org, &key_id)?, &key.secret),
        }),
    ))
}

/// `GET /api/v1/orgs/current` (viewer): the caller's organisation.
fn current_org(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    Ok(ApiResponse::json(200, &org_json(&org)?))
}

/// Most activity entries one page returns.
const MAX_ACTIVITY_PAGE: i64 = 200;

/// `GET /api/v1/orgs/current/activity?limit=&before=` (admin): the
/// organisation's activity log, newest first; `before` is an entry id from
/// the previous page.
fn list_activity(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Admin)?;
    let limit = match request.query_param("limit") {
        None => 50,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_ACTIVITY_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "limit must be an integer from 1 to {MAX_ACTIVITY_PAGE}"
                ))
            })?,
    };
    // Ids are UUID v7: ordering by id is ordering by creation time.
    let before = request.query_param("before").unwrap_or("ffffffff");
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let rows = org.execute(
        "SELECT id, actor, action, resource_type, resource_id, details, created_at FROM activity_log \
         WHERE org_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
        &[Value::from(before), Value::Integer(limit)],
    )?;
    let entries: Vec<Json> = rows
        .rows
        .iter()
        .map(|row| {
            json!({
                "id": row[0].as_str(),
                "actor": row[1].as_str(),
                "action": row[2].as_str(),
                "resource_type": row[3].as_str(),
                "resource_id": row[4].as_str(),
                "details": json_column(&row[5]),
                "created_at": row[6].as_i64().map(timestamp),
            })
        })
        .collect();
    let next = (entries.len() as i64 == limit)
        .then(|| {
            entries
                .last()
                .and_then(|e| e["id"].as_str().map(String::from))
        })
        .flatten();
    Ok(ApiResponse::json(
        200,
        &json!({"data": entries, "next_before": next}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    rate_limit_per_minute: Option<i64>,
}

/// `POST /api/v1/api-keys` (admin): a key of a role no higher than the
/// caller's; its secret is shown this once.
fn create_key(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Admin)?;
    let body: NewKey = request.json()?;
    let now = now_ms();
    let mut problems = Vec::new();
    let name = check_name(&body.name, "name", &mut problems);
    let role = match body.role.as_deref().unwrap_or("member").parse::<Role>() {
        Ok(role) => Some(role),
        Err(problem) => {
            problems.push(ErrorDetail::new("role", problem));
            None
        }
    };
    let expires_at = body.expires_at.as_deref().and_then(|text| {
        match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(at) if at.timestamp_millis() > now => Some(at.timestamp_millis()),
            Ok(_) => {
                problems.push(ErrorDetail::new("expires_at", "must be in the future"));
                None
            }
            Err(_) => {
                problems.push(ErrorDetail::new(
                    "expires_at",
                    "must be an RFC 3339 timestamp",
                ));
                None
            }
        }
    });
    let rate_limit = body.rate_limit_per_minute.and_then(|n| {
        let valid = u32::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_KEY_RATE_LIMIT).contains(n));
        if valid.is_none() {
            problems.push(ErrorDetail::new(
                "rate_limit_per_minute",
                format!("must be between 1 and {MAX_KEY_RATE_LIMIT}"),
            ));
        }
        valid
    });
    reject(problems)?;
    let role = role.unwrap_or(Role::Member);
    if role > caller.role {
        return Err(ApiError::Forbidden(format!(
            "a {} cannot create a key with the {role} role",
            caller.role
        )));
    }
    let key = generate_api_key(&ctx.random());
    let key_id = ctx.new_id();
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        insert_key(
            db,
            &caller.org_id,
            &key_id,
            &name,
            role,
            &key,
            expires_at,
            rate_limit,
            &caller.subject,
            now,
        )?;
        record_activity(
            ctx,
            db,
            &caller.org_id,
            &caller.subject,
            "api_key.created",
            ("api_key", &key_id),
            &json!({"role": role}),
        )
    })?;
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    Ok(ApiResponse::json(
        201,
        &with_secret(key_json(&org, &key_id)?, &key.secret),
    ))
}

/// `GET /api/v1/api-keys` (admin): every key of the organisation, newest
/// first, revoked ones included; never a secret.
fn list_keys(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Admin)?;
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let rows = org.execute(
        &format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE org_id = ?1 ORDER BY created_at DESC, id DESC"
        ),
        &[],
    )?;
    let keys: Vec<Json> = rows.rows.iter().map(|row| key_row_json(row)).collect();
    Ok(ApiResponse::json(
        200,
        &json!({"data": keys, "total": keys.len()}),
    ))
}

/// `GET /api/v1/api-keys/:id` (admin).
fn get_key(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Admin)?;
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    Ok(ApiResponse::json(
        200,
        &key_json(&org, params.get("id").unwrap_or_default())?,
    ))
}

/// `DELETE /api/v1/api-keys/:id` (admin): revokes at once; the key fails
/// on its very next request. A key above the caller's role is out of reach.
fn revoke_key(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Admin)?;
    let key_id = params.get("id").unwrap_or_default();
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        let org = OrgScoped::new(db, &caller.org_id);
        let key = key_json(&org, key_id)?;
        let role: Role = key["role"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(ApiError::Internal)?;
        if role > caller.role {
            return Err(ApiError::Forbidden(format!(
                "a {} cannot revoke a key with the {role} role",
                caller.role
            )));
        }
        if !key["revoked_at"].is_null() {
            return Err(ApiError::Conflict(format!(
                "API key {key_id} is already revoked"
            )));
        }
        org.execute(
            "UPDATE api_keys SET revoked_at = ?2 WHERE org_id = ?1 AND id = ?3",
            &[Value::Integer(now_ms()), Value::from(key_id)],
        )?;
        record_activity(
            ctx,
            db,
            &caller.org_id,
            &caller.subject,
            "api_key.revoked",
            ("api_key", key_id),
            &json!({}),
        )
    })?;
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    Ok(ApiResponse::json(200, &key_json(&org, key_id)?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

/// `POST /api/v1/auth/token` (an API key): a short-lived HS256 JWT standing
/// for the key's organisation and role.
fn issue_token(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let settings = AuthSettings::load(ctx)?;
    let Credential::ApiKey(_) = parse_authorization(request.header("authorization"))? else {
        return Err(ApiError::Unauthenticated(
            "a token is issued only in exchange for an API key".into(),
        ));
    };
    // The key is checked (and counted against its rate limit) like any call.
    let caller = authenticate(ctx, request)?;
    let body: TokenRequest = if request.body.is_empty() {
        TokenRequest::default()
    } else {
        request.json()?
    };
    let ttl = body.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    if !TOKEN_TTL_SECS.contains(&ttl) {
        return Err(validation(vec![ErrorDetail::new(
            "ttl_seconds",
            format!(
                "must be between {} and {}",
                TOKEN_TTL_SECS.start(),
                TOKEN_TTL_SECS.end()
            ),
        )]));
    }
    let issuer = settings.issuer.ok_or_else(|| {
        ApiError::Disabled("token exchange is disabled: no jwt_secret is configured".into())
    })?;
    let token = issuer
        .issue(
            &claims_of(&caller),
            u64::try_from(now_ms() / 1000).unwrap_or_default(),
            ttl,
        )
        .map_err(ApiError::Internal)?;
    Ok(ApiResponse::json(
        200,
        &json!({"access_token": token, "token_type": "Bearer", "expires_in": ttl}),
    ))
}

fn claims_of(caller: &Caller) -> TokenClaims {
    TokenClaims {
        subject: caller.subject.clone(),
        org_id: caller.org_id.clone(),
        role: caller.role,
    }
}

const KEY_COLUMNS: &str = "id, name, role, prefix, rate_limit_per_minute, created_by, created_at, last_used_at, expires_at, revoked_at";

#[allow(clippy::too_many_arguments)]
fn insert_key(
    db: &dyn Db,
    org_id: &str,
    key_id: &str,
    name: &str,
    role: Role,
    key: &spindle_auth::NewApiKey,
    expires_at: Option<i64>,
    rate_limit: Option<u32>,
    created_by: &str,
    now: i64,
) -> Result<(), ApiError> {
    db.execute(
        "INSERT INTO api_keys (id, org_id, name, role, prefix, key_hash, rate_limit_per_minute, created_by, created_at, expires_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        &[
            Value::from(key_id),
            Value::from(org_id),
            Value::from(name),
            Value::from(role.as_str()),
            Value::from(key.prefix.as_str()),
            Value::from(key.hash.as_str()),
            Value::from(rate_limit.map(i64::from)),
            Value::from(created_by),
            Value::Integer(now),
            Value::from(expires_at),
        ],
    )?;
    Ok(())
}

fn key_json(org: &OrgScoped, key_id: &str) -> Result<Json, ApiError> {
    let row = fetch_one(
        org,
        &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE org_id = ?1 AND id = ?2"),
        &[Value::from(key_id)],
        || format!("API key {key_id}"),
    )?;
    Ok(key_row_json(&row))
}

fn key_row_json(row: &[Value]) -> Json {
    json!({
        "id": row[0].as_str(),
        "name": row[1].as_str(),
        "role": row[2].as_str(),
        "prefix": row[3].as_str(),
        "rate_limit_per_minute": row[4].as_i64(),
        "created_by": row[5].as_str(),
        "created_at": row[6].as_i64().map(timestamp),
        "last_used_at": row[7].as_i64().map(timestamp),
        "expires_at": row[8].as_i64().map(timestamp),
        "revoked_at": row[9].as_i64().map(timestamp),
    })
}

fn with_secret(mut key: Json, secret: &str) -> Json {
    key["secret"] = json!(secret);
    key
}

fn org_json(org: &OrgScoped) -> Result<Json, ApiError> {
    let rows = org.execute(
        "SELECT id, name, created_at FROM organizations WHERE org_id = ?1",
        &[],
    )?;
    let row = rows
        .rows
        .first()
        .ok_or_else(|| ApiError::from(AuthError::InvalidToken("unknown organisation".into())))?;
    Ok(json!({
        "id": row[0].as_str(),
        "name": row[1].as_str(),
        "created_at": row[2].as_i64().map(timestamp),
    }))
}

/// A trimmed name of 1 to 200 characters, or a problem at `path`.
fn check_name(name: &str, path: &str, problems: &mut Vec<ErrorDetail>) -> String {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        problems.push(ErrorDetail::new(
            path,
            format!("must be 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    name.to_string()
}

fn validation(details: Vec<ErrorDetail>) -> ApiError {
    ApiError::Validation {
        message: "the request is invalid".into(),
        details,
    }
}

fn reject(problems: Vec<ErrorDetail>) -> Result<(), ApiError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(validation(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Backends;
    use crate::test_backends::TestBackends;
    use spindle_store::migrations;

    fn call(backends: Box<dyn Backends>, method: Method, path: &str) -> (u16, Json) {
        let response = router().handle(
            &RequestContext::new(backends),
            &ApiRequest::new(method, path),
        );
        (
            response.status,
            serde_json::from_slice(&response.body).unwrap(),
        )
    }

    #[test]
    fn healthz_reports_the_schema_level_after_migrating() {
        let (status, body) = call(Box::new(TestBackends::memory()), Method::Get, "/healthz");
        assert_eq!(status, 200);
        assert_eq!(body["status"], "ok");
        assert_eq!(body["schema"], migrations::latest_version());
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn healthz_is_503_naming_the_failing_store() {
        let (status, body) = call(
            Box::new(TestBackends::memory().kv_down()),
            Method::Get,
            "/healthz",
        );
        assert_eq!(status, 503);
        assert_eq!(body["status"], "unavailable");
        assert_eq!(body["checks"]["sqlite"], "ok");
        assert!(
            body["checks"]["key_value"]
                .as_str()
                .unwrap()
                .contains("no such store")
        );
    }

    #[test]
    fn org_creation_without_an_admin_key_configured_is_misconfigured() {
        let (status, body) = call(
            Box::new(TestBackends::memory()),
            Method::Post,
            "/api/v1/orgs",
        );
        assert_eq!(status, 503);
        assert_eq!(body["error"]["code"], "misconfigured");
        assert_eq!(body["error"]["details"][0]["path"], "variables.admin_key");
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        let mut problems = Vec::new();
        assert_eq!(check_name("  ops  ", "name", &mut problems), "ops");
        check_name("   ", "name", &mut problems);
        check_name(&"x".repeat(MAX_NAME_CHARS + 1), "name", &mut problems);
        assert_eq!(problems.len(), 2);
    }
}
