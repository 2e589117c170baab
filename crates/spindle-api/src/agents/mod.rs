//! The agents area: define agents, run them, and read their runs.

mod definition;
mod run;

pub use definition::{AgentSpec, merge_patch};
pub use run::{
    AgentRun, MAX_TOOL_ROUNDS, RunInput, StepLink, StoredAgent, check_call_settings, run_agent,
};

use crate::auth::{authenticate, record_activity};
use crate::context::RequestContext;
use crate::listing::{Page, like_pattern};
use crate::{fetch_one, json_column, now_ms, timestamp};
use run::{EXECUTION_COLUMNS, execution_row_json};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use spindle_auth::{Caller, Role};
use spindle_http::{ApiError, ApiRequest, ApiResponse, ErrorDetail, Method, Params, Router};
use spindle_providers::pricing::format_micros;
use spindle_store::{Db, OrgScoped, Value, in_transaction};

/// Longest task accepted by `POST /agents/:id/execute`, in characters.
const MAX_TASK_CHARS: usize = 100_000;
/// Executions shown on `GET /agents/:id`.
const RECENT_EXECUTIONS: i64 = 10;

/// The agents component's routes.
pub fn router() -> Router<RequestContext> {
    Router::new()
        .route(Method::Post, "/api/v1/agents", create_agent)
        .route(Method::Get, "/api/v1/agents", list_agents)
        .route(Method::Get, "/api/v1/agents/:id", get_agent)
        .route(Method::Patch, "/api/v1/agents/:id", update_agent)
        .route(Method::Delete, "/api/v1/agents/:id", delete_agent)
        .route(Method::Post, "/api/v1/agents/:id/execute", execute_agent)
        .route(
            Method::Get,
            "/api/v1/agents/:id/executions",
            list_executions,
        )
}

/// `POST /api/v1/agents` (member).
fn create_agent(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Member)?;
    let spec = AgentSpec::from_json(request.json()?)?;
    let id = in_transaction(ctx.db()?, |db| {
        insert_agent(ctx, db, &caller, &spec, &json!({"name": spec.name}))
    })?;
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    Ok(ApiResponse::json(201, &load(&org, &id)?.1))
}

/// Stores a new agent of the caller's organisation from a checked `spec`,
/// with its `agent.created` activity (`details`), in the caller's
/// transaction; returns its id.
pub(crate) fn insert_agent(
    ctx: &RequestContext,
    db: &dyn Db,
    caller: &Caller,
    spec: &AgentSpec,
    details: &Json,
) -> Result<String, ApiError> {
    let (id, now) = (ctx.new_id(), now_ms());
    db.execute(
        "INSERT INTO agents (id, org_id, name, description, provider, model, config, status, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        &[
            Value::from(id.as_str()),
            Value::from(caller.org_id.as_str()),
            Value::from(spec.name.as_str()),
            Value::from(spec.description.as_str()),
            Value::from(spec.model_config.provider.as_str()),
            Value::from(spec.model_config.model.as_str()),
            Value::Text(spec_json(spec).to_string()),
            Value::from(spec.status.as_str()),
            Value::Integer(now),
            Value::Integer(now),
        ],
    )?;
    record_activity(
        ctx,
        db,
        &caller.org_id,
        &caller.subject,
        "agent.created",
        ("agent", &id),
        details,
    )?;
    Ok(id)
}

/// `GET /api/v1/agents` (viewer): filters `status`, `provider`, `search`
/// (name and description); `limit`/`offset`; `sort_by`, `sort_order`.
fn list_agents(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let page = Page::parse(
        request,
        &["created_at", "updated_at", "name", "execution_count"],
    )?;
    let pattern = like_pattern(request.query_text("search"));
    // Each filter is `?n IS NULL OR …`, so one statement serves every combination.
    let filters = "org_id = ?1 AND deleted_at IS NULL AND (?2 IS NULL OR status = ?2) \
         AND (?3 IS NULL OR provider = ?3) \
         AND (?4 IS NULL OR name LIKE ?4 ESCAPE '\\' OR description LIKE ?4 ESCAPE '\\')";
    let params = [
        Value::from(request.query_text("status")),
        Value::from(request.query_text("provider")),
        Value::from(pattern),
    ];
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    page.respond(
        &org,
        AGENT_COLUMNS,
        &format!("agents WHERE {filters}"),
        &params,
        agent_row_json,
    )
}

/// `GET /api/v1/agents/:id` (viewer): the agent with its recent executions.
fn get_agent(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let id = params.get("id").unwrap_or_default();
    let (_, mut agent) = load(&org, id)?;
    let rows = org.execute(
        &format!(
            "SELECT {EXECUTION_COLUMNS} FROM agent_executions WHERE org_id = ?1 AND agent_id = ?2 \
             ORDER BY created_at DESC, id DESC LIMIT ?3"
        ),
        &[Value::from(id), Value::Integer(RECENT_EXECUTIONS)],
    )?;
    agent["recent_executions"] = rows
        .rows
        .iter()
        .map(|row| execution_row_json(row, false))
        .collect();
    Ok(ApiResponse::json(200, &agent))
}

/// `PATCH /api/v1/agents/:id` (member): a JSON merge patch of the
/// definition, validated like a new agent.
fn update_agent(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Member)?;
    let patch: Json = request.json()?;
    if !patch.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    let id = params.get("id").unwrap_or_default();
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        let org = OrgScoped::new(db, &caller.org_id);
        let (spec, _) = load(&org, id)?;
        let mut merged = spec_json(&spec);
        merge_patch(&mut merged, &patch);
        let spec = AgentSpec::from_json(merged)?;
        org.execute(
            "UPDATE agents SET name = ?2, description = ?3, provider = ?4, model = ?5, config = ?6, \
             status = ?7, updated_at = ?8 WHERE org_id = ?1 AND id = ?9",
            &[
                Value::from(spec.name.as_str()),
                Value::from(spec.description.as_str()),
                Value::from(spec.model_config.provider.as_str()),
                Value::from(spec.model_config.model.as_str()),
                Value::Text(spec_json(&spec).to_string()),
                Value::from(spec.status.as_str()),
                Value::Integer(now_ms()),
                Value::from(id),
            ],
        )?;
        record_activity(
            ctx,
            db,
            &caller.org_id,
            &caller.subject,
            "agent.updated",
            ("agent", id),
            &json!({"fields": patch.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>())}),
        )
    })?;
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    Ok(ApiResponse::json(200, &load(&org, id)?.1))
}

/// `DELETE /api/v1/agents/:id` (member): soft delete; its history stays.
fn delete_agent(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Member)?;
    let id = params.get("id").unwrap_or_default();
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        let org = OrgScoped::new(db, &caller.org_id);
        load(&org, id)?;
        org.execute(
            "UPDATE agents SET deleted_at = ?2, updated_at = ?2 WHERE org_id = ?1 AND id = ?3",
            &[Value::Integer(now_ms()), Value::from(id)],
        )?;
        record_activity(
            ctx,
            db,
            &caller.org_id,
            &caller.subject,
            "agent.deleted",
            ("agent", id),
            &json!({}),
        )
    })?;
    Ok(ApiResponse::no_content())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecuteBody {
    task: String,
    #[serde(default)]
    context: Option<serde_json::Map<String, Json>>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    conversation_id: Option<String>,
}

/// `POST /api/v1/agents/:id/execute` (member): runs the agent now and
/// answers with the stored execution (status `completed` or `failed`), or
/// `429 budget_exceeded` when a block budget refused a provider call, or
/// `429 rate_limited` (with `Retry-After`) when the organisation's provider
/// limits allow no call within the run's wait.
fn execute_agent(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Member)?;
    check_call_settings(ctx)?;
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let id = params.get("id").unwrap_or_default();
    let (spec, _) = load(&org, id)?;
    let body: ExecuteBody = request.json()?;
    let mut problems = Vec::new();
    let task_chars = body.task.trim().chars().count();
    if !(1..=MAX_TASK_CHARS).contains(&task_chars) {
        problems.push(ErrorDetail::new(
            "task",
            format!("must be 1 to {MAX_TASK_CHARS} characters"),
        ));
    }
    if body.max_tokens.is_some_and(|m| !(1..=200_000).contains(&m)) {
        problems.push(ErrorDetail::new(
            "max_tokens",
            "must be between 1 and 200000",
        ));
    }
    if body
        .conversation_id
        .as_ref()
        .is_some_and(|c| !(1..=200).contains(&c.chars().count()))
    {
        problems.push(ErrorDetail::new(
            "conversation_id",
            "must be 1 to 200 characters",
        ));
    }
    if !problems.is_empty() {
        return Err(ApiError::Validation {
            message: "the execution request is invalid".into(),
            details: problems,
        });
    }
    let agent = StoredAgent {
        id: id.to_string(),
        spec,
    };
    let input = RunInput {
        task: body.task,
        context: body.context.map(Json::Object),
        max_tokens: body.max_tokens,
        conversation_id: body.conversation_id,
        step: None,
        timeout_ms: None,
        output_schema: None,
    };
    let execution = run_agent(ctx, &caller, &agent, input)?;
    // A budget refused a provider call: 429, though the refused run is kept as failed.
    if execution["error"]["code"] == "budget_exceeded" {
        return Err(ApiError::BudgetExceeded(format!(
            "{} (agent execution {}, stored as failed)",
            execution["error"]["message"]
                .as_str()
                .unwrap_or("a budget is spent"),
            execution["id"].as_str().unwrap_or_default()
        )));
    }
    // The organisation's provider limits allow no call within the run's wait.
    if execution["error"]["code"] == "provider_deferred" {
        let not_before = execution["error"]["not_before"]
            .as_str()
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
            .map_or(0, |at| at.timestamp_millis());
        let wait_ms = u64::try_from(not_before - crate::now_ms()).unwrap_or(0);
        return Err(ApiError::RateLimited {
            message: format!(
                "{} (agent execution {}, stored as failed)",
                execution["error"]["message"]
                    .as_str()
                    .unwrap_or("the provider limits are spent for now"),
                execution["id"].as_str().unwrap_or_default()
            ),
            retry_after_secs: wait_ms.div_ceil(1000).max(1),
        });
    }
    Ok(ApiResponse::json(200, &execution))
}

/// `GET /api/v1/agents/:id/executions` (viewer): newest first, filter
/// `status`, `limit`/`offset`.
fn list_executions(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let page = Page::parse(request, &["created_at"])?;
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let id = params.get("id").unwrap_or_default();
    load(&org, id)?;
    let filters = "org_id = ?1 AND agent_id = ?2 AND (?3 IS NULL OR status = ?3)";
    let params = [Value::from(id), Value::from(request.query_text("status"))];
    page.respond(
        &org,
        EXECUTION_COLUMNS,
        &format!("agent_executions WHERE {filters}"),
        &params,
        |row| execution_row_json(row, false),
    )
}

const AGENT_COLUMNS: &str = "id, config, execution_count, success_count, total_tokens, total_cost_micros, \
     total_latency_ms, last_executed_at, created_at, updated_at";

/// A live (not deleted) agent of the organisation: its definition and JSON.
pub(crate) fn load(org: &OrgScoped, id: &str) -> Result<(AgentSpec, Json), ApiError> {
    let row = fetch_one(
        org,
        &format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE org_id = ?1 AND id = ?2 AND deleted_at IS NULL"
        ),
        &[Value::from(id)],
        || format!("agent {id}"),
    )?;
    Ok((stored_spec(&row)?, agent_row_json(&row)))
}

fn stored_spec(row: &[Value]) -> Result<AgentSpec, ApiError> {
    serde_json::from_str(row[1].as_str().unwrap_or_default())
        .map_err(|e| ApiError::Internal(format!("stored agent definition is unreadable: {e}")))
}

fn spec_json(spec: &AgentSpec) -> Json {
    serde_json::to_value(spec).unwrap_or(Json::Null)
}

fn agent_row_json(row: &[Value]) -> Json {
    let mut agent = json_column(&row[1]).unwrap_or_else(|| json!({}));
    let count = row[2].as_i64().unwrap_or(0);
    let average = |total: i64| if count == 0 { 0 } else { total / count };
    let success_rate = if count == 0 {
        0.0
    } else {
        row[3].as_i64().unwrap_or(0) as f64 / count as f64
    };
    let avg_cost = average(row[5].as_i64().unwrap_or(0));
    agent["id"] = json!(row[0].as_str());
    agent["metrics"] = json!({
        "execution_count": count,
        "success_rate": success_rate,
        "avg_tokens": average(row[4].as_i64().unwrap_or(0)),
        "avg_cost_micros": avg_cost,
        "avg_cost": format_micros(avg_cost),
        "avg_latency_ms": average(row[6].as_i64().unwrap_or(0)),
        "last_executed_at": row[7].as_i64().map(timestamp),
    });
    agent["created_at"] = json!(row[8].as_i64().map(timestamp));
    agent["updated_at"] = json!(row[9].as_i64().map(timestamp));
    agent
}
