//! The execute area: starting workflow runs, reading them, and the internal
//! endpoints that run steps (`/internal/steps/:id`) and time-based work
//! (`/internal/tick`).

mod dispatch;
mod events;
mod heartbeat;
mod hooks;
mod lease;
mod logs;
mod loops;
mod nodes;
mod runner;
mod schedules;
mod scope;
mod status;

pub use status::{RunStatus, StepStatus};

/// Queues an event for the organisation's subscribers (the outbox; the tick delivers).
pub(crate) use events::emit as emit_event;
pub(crate) use runner::lease_ms as step_lease_ms;

use crate::auth::{authenticate, record_activity};
use crate::context::RequestContext;
use crate::listing::{Page, time_range};
use crate::{fetch_one, json_column, now_ms, timestamp};
use dispatch::{dispatch_step, internal_key, verify};
use serde_json::{Map, Value as Json, json};
use spindle_auth::{Role, constant_time_eq};
use spindle_definition::{Definition, InputType, NodeConfig};
use spindle_http::{ApiError, ApiRequest, ApiResponse, ErrorDetail, Method, Params, Router};
use spindle_store::{OrgScoped, Value};

/// Most steps one tick re-dispatches.
const TICK_BATCH: i64 = 100;
/// A queued step older than this was never dispatched (its dispatcher died).
const UNDISPATCHED_AFTER_MS: i64 = 2_000;

/// The execute component's routes.
pub fn router() -> Router<RequestContext> {
    Router::new()
        .route(
            Method::Post,
            "/api/v1/workflows/:id/execute",
            execute_workflow,
        )
        .route(Method::Get, "/api/v1/executions", list_executions)
        .route(Method::Get, "/api/v1/executions/:id", get_execution)
        .route(Method::Get, "/api/v1/executions/:id/logs", logs::list)
        .route(Method::Get, "/api/v1/executions/:id/events", logs::stream)
        .route(
            Method::Post,
            "/api/v1/executions/:id/rerun",
            rerun_execution,
        )
        .route(
            Method::Post,
            "/api/v1/executions/:id/signals/:name",
            send_signal,
        )
        .route(
            Method::Post,
            "/api/v1/executions/:id/cancel",
            cancel_execution,
        )
        .route(
            Method::Post,
            "/api/v1/executions/:id/retry",
            retry_execution,
        )
        .route(Method::Post, "/api/v1/event-subscriptions", events::create)
        .route(Method::Get, "/api/v1/event-subscriptions", events::list)
        .route(Method::Get, "/api/v1/event-subscriptions/:id", events::get)
        .route(
            Method::Patch,
            "/api/v1/event-subscriptions/:id",
            events::update,
        )
        .route(
            Method::Delete,
            "/api/v1/event-subscriptions/:id",
            events::delete,
        )
        .route(
            Method::Get,
            "/api/v1/event-subscriptions/:id/deliveries",
            events::deliveries,
        )
        .route(Method::Post, "/hooks/:workflow_id", hooks::receive)
        .route(Method::Post, "/internal/steps/:id", run_step)
        .route(Method::Post, "/internal/tick", tick)
        .route(Method::Post, heartbeat::PATH, heartbeat::beat)
}

/// After the response, starts the app's own tick unless it runs already
/// (see the heartbeat module): for areas that create time-based work.
pub fn kick_heartbeat(ctx: &RequestContext) {
    heartbeat::kick(ctx);
}

/// `POST /api/v1/workflows/:id/execute` (member) `{inputs?}`: checks the
/// inputs against the trigger's declared ones, stores the run pinned to the
/// workflow's current version, and answers `202` while its steps run.
fn execute_workflow(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    heartbeat::kick(ctx);
    caller.require(Role::Member)?;
    internal_key(ctx)?;
    crate::agents::check_call_settings(ctx)?;
    let workflow_id = params.get("id").unwrap_or_default();
    let body = request.json_object(&["inputs"])?;
    let inputs = match body.get("inputs") {
        None | Some(Json::Null) => Map::new(),
        Some(Json::Object(inputs)) => inputs.clone(),
        Some(_) => return Err(ApiError::bad_request("`inputs` must be a JSON object")),
    };
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let row = fetch_one(
        &org,
        "SELECT w.is_active, w.current_version, v.definition FROM workflows w JOIN workflow_versions v \
         ON v.workflow_id = w.id AND v.version = w.current_version \
         WHERE w.org_id = ?1 AND w.id = ?2 AND w.deleted_at IS NULL",
        &[Value::from(workflow_id)],
        || format!("workflow {workflow_id}"),
    )?;
    if row[0].as_i64() != Some(1) {
        return Err(ApiError::Conflict(format!(
            "workflow {workflow_id} is not active"
        )));
    }
    let version = row[1].as_i64().unwrap_or(1);
    let definition: Definition = serde_json::from_str(row[2].as_str().unwrap_or_default())
        .map_err(|e| ApiError::Internal(format!("stored definition is unreadable: {e}")))?;
    check_inputs(&definition, &inputs)?;
    let inputs = Json::Object(inputs);
    let idempotency = idempotency(request, &inputs)?;
    if let Some(key) = &idempotency
        && let Some(id) = replay(&org, workflow_id, key)?
    {
        return Ok(started(&id, true));
    }
    let start = runner::RunStart {
        workflow_id,
        version,
        definition: &definition,
        inputs,
        trigger_kind: "api",
        idempotency: idempotency.as_ref(),
        reuse: &[],
    };
    let id = match runner::start_run(ctx, &caller, start) {
        // Another request with the same key won the race: answer as its replay.
        Err(ApiError::Conflict(_)) if idempotency.is_some() => {
            let key = idempotency.as_ref().expect("checked above");
            let id = replay(&org, workflow_id, key)?
                .ok_or_else(|| ApiError::Conflict("the Idempotency-Key is in use".into()))?;
            return Ok(started(&id, true));
        }
        other => other?,
    };
    record_activity(
        ctx,
        ctx.db()?,
        &caller.org_id,
        &caller.subject,
        "workflow.started",
        ("execution", &id),
        &json!({"workflow_id": workflow_id}),
    )?;
    Ok(started(&id, false))
}

fn started(id: &str, replayed: bool) -> ApiResponse {
    let mut response = ApiResponse::json(
        202,
        &json!({"execution_id": id, "status": "running", "status_url": format!("/api/v1/executions/{id}")}),
    );
    if replayed {
        response.set_header("idempotent-replayed", "true");
    }
    response
}

/// How long an Idempotency-Key keeps answering with its run.
const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

/// The request's `Idempotency-Key` (1 to 255 characters) with a hash of its inputs.
fn idempotency(
    request: &ApiRequest,
    inputs: &Json,
) -> Result<Option<runner::Idempotency>, ApiError> {
    let Some(key) = request.header("idempotency-key") else {
        return Ok(None);
    };
    if !(1..=255).contains(&key.chars().count()) {
        return Err(ApiError::BadRequest {
            message: "invalid Idempotency-Key".into(),
            details: vec![ErrorDetail::new(
                "header.idempotency-key",
                "must be 1 to 255 characters",
            )],
        });
    }
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(inputs.to_string().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Some(runner::Idempotency {
        key: key.to_string(),
        request_hash: hash,
    }))
}

/// The run an earlier request with this key started, within the window: the
/// same inputs replay it; other inputs are a 409. A key older than the
/// window is released for reuse.
fn replay(
    org: &OrgScoped,
    workflow_id: &str,
    key: &runner::Idempotency,
) -> Result<Option<String>, ApiError> {
    let Some(row) = org
        .execute(
            "SELECT id, request_hash, created_at FROM executions \
             WHERE org_id = ?1 AND workflow_id = ?2 AND idempotency_key = ?3",
            &[Value::from(workflow_id), Value::from(key.key.as_str())],
        )?
        .into_first()
    else {
        return Ok(None);
    };
    if row[2].as_i64().unwrap_or(0) < now_ms() - IDEMPOTENCY_WINDOW_MS {
        org.execute(
            "UPDATE executions SET idempotency_key = NULL WHERE org_id = ?1 AND id = ?2",
            &[row[0].clone()],
        )?;
        return Ok(None);
    }
    if row[1].as_str() != Some(key.request_hash.as_str()) {
        return Err(ApiError::Conflict(
            "this Idempotency-Key was used with different inputs".into(),
        ));
    }
    Ok(row[0].as_str().map(String::from))
}

/// `POST /api/v1/executions/:id/cancel` (member): nothing new starts; steps
/// already running finish; the run is `cancelled`. A finished run is 409.
fn cancel_execution(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    heartbeat::kick(ctx);
    caller.require(Role::Member)?;
    let id = params.get("id").unwrap_or_default();
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    require_execution(&org, id)?;
    runner::cancel(ctx.db()?, &caller.org_id, id)?;
    record_activity(
        ctx,
        ctx.db()?,
        &caller.org_id,
        &caller.subject,
        "execution.cancelled",
        ("execution", id),
        &json!({}),
    )?;
    get_execution(ctx, request, params)
}

/// `POST /api/v1/executions/:id/retry` (member): a failed or cancelled run
/// continues from where it stopped; completed steps are reused, never re-run
/// or re-billed. Any other run is 409.
fn retry_execution(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    heartbeat::kick(ctx);
    caller.require(Role::Member)?;
    internal_key(ctx)?;
    crate::agents::check_call_settings(ctx)?;
    let id = params.get("id").unwrap_or_default();
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    require_execution(&org, id)?;
    runner::retry(ctx, &caller.org_id, id)?;
    record_activity(
        ctx,
        ctx.db()?,
        &caller.org_id,
        &caller.subject,
        "execution.retried",
        ("execution", id),
        &json!({}),
    )?;
    Ok(started(id, false))
}

/// Declared trigger inputs: required ones present, each of its type.
pub(crate) fn check_inputs(
    definition: &Definition,
    inputs: &Map<String, Json>,
) -> Result<(), ApiError> {
    let declared = definition
        .nodes
        .iter()
        .find(|n| n.node_type == "trigger")
        .and_then(|n| match n.typed_config("config") {
            Ok(NodeConfig::Trigger(config)) => Some(config.inputs),
            _ => None,
        })
        .unwrap_or_default();
    let mut problems = Vec::new();
    for (name, spec) in &declared {
        let path = format!("inputs.{name}");
        match inputs.get(name) {
            None | Some(Json::Null) if spec.required => {
                problems.push(ErrorDetail::new(path, "is required"))
            }
            None | Some(Json::Null) => {}
            Some(value) => {
                let fits = match spec.input_type {
                    InputType::String => value.is_string(),
                    InputType::Number => value.is_number(),
                    InputType::Boolean => value.is_boolean(),
                    InputType::Object => value.is_object(),
                    InputType::Array => value.is_array(),
                };
                if !fits {
                    problems.push(ErrorDetail::new(
                        path,
                        format!("must be of type {:?}", spec.input_type).to_lowercase(),
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation {
            message: "the run's inputs do not match the trigger's declared inputs".into(),
            details: problems,
        })
    }
}

/// 404 unless the organisation has execution `id`.
fn require_execution(org: &OrgScoped, id: &str) -> Result<(), ApiError> {
    fetch_one(
        org,
        "SELECT id FROM executions WHERE org_id = ?1 AND id = ?2",
        &[Value::from(id)],
        || format!("execution {id}"),
    )
    .map(drop)
}

const EXECUTION_COLUMNS: &str = "id, workflow_id, workflow_version, status, inputs, output, error, failed_node, \
     tokens_in, tokens_out, base_cost_micros, billed_cost_micros, created_at, started_at, finished_at, trigger_kind";

fn execution_row_json(row: &[Value]) -> Json {
    json!({
        "id": row[0].as_str(),
        "workflow_id": row[1].as_str(),
        "version": row[2].as_i64(),
        "status": row[3].as_str(),
        "trigger_kind": row[15].as_str(),
        "inputs": json_column(&row[4]),
        "output": json_column(&row[5]),
        "error": json_column(&row[6]),
        "failed_node": row[7].as_str(),
        "usage": {"input_tokens": row[8].as_i64(), "output_tokens": row[9].as_i64()},
        "cost": {"base_micros": row[10].as_i64(), "billed_micros": row[11].as_i64()},
        "created_at": row[12].as_i64().map(timestamp),
        "started_at": row[13].as_i64().map(timestamp),
        "finished_at": row[14].as_i64().map(timestamp),
    })
}

/// `GET /api/v1/executions` (viewer): newest first; `workflow_id`, `status`,
/// and a `from`/`to` range of creation times.
fn list_executions(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    heartbeat::kick(ctx);
    caller.require(Role::Viewer)?;
    let page = Page::parse(request, &["created_at"])?;
    let (from, to) = time_range(request)?;
    let status = request.query_text("status");
    if let Some(status) = status.as_deref()
        && RunStatus::parse(status).is_none()
    {
        return Err(ApiError::BadRequest {
            message: "invalid query parameters".into(),
            details: vec![ErrorDetail::new(
                "query.status",
                "must be pending, running, completed, failed or cancelled",
            )],
        });
    }
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let filters = "org_id = ?1 AND (?2 IS NULL OR workflow_id = ?2) AND (?3 IS NULL OR status = ?3) \
         AND (?4 IS NULL OR created_at >= ?4) AND (?5 IS NULL OR created_at < ?5)";
    let params = [
        Value::from(request.query_text("workflow_id")),
        Value::from(status),
        Value::from(from),
        Value::from(to),
    ];
    page.respond_with(
        &org,
        EXECUTION_COLUMNS,
        &format!("executions WHERE {filters}"),
        &params,
        |row| {
            let mut execution = execution_row_json(row);
            let id = row[0].as_str().unwrap_or_default();
            execution["failed_steps"] = failed_steps(&org, id)?;
            Ok(execution)
        },
    )
}

/// The failed steps of run `execution_id`, oldest first: the one that
/// failed the run, and those whose node's `on_error` (`continue`, `route`)
/// let the run go on past them.
fn failed_steps(org: &OrgScoped, execution_id: &str) -> Result<Json, ApiError> {
    let rows = org.execute(
        "SELECT node_id, iteration, error, error_handled FROM steps \
         WHERE org_id = ?1 AND execution_id = ?2 AND status = 'failed' ORDER BY finished_at, id",
        &[Value::from(execution_id)],
    )?;
    Ok(rows
        .rows
        .iter()
        .map(|s| {
            json!({
                "node_id": s[0].as_str(),
                "iteration": s[1].as_str().filter(|key| !key.is_empty()),
                "error": json_column(&s[2]),
                "handled": s[3].as_i64().unwrap_or(0) != 0,
            })
        })
        .collect())
}

/// `GET /api/v1/executions/:id` (viewer): the run with every step.
fn get_execution(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    heartbeat::kick(ctx);
    caller.require(Role::Viewer)?;
    let id = params.get("id").unwrap_or_default();
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let row = fetch_one(
        &org,
        &format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE org_id = ?1 AND id = ?2"),
        &[Value::from(id)],
        || format!("execution {id}"),
    )?;
    let mut execution = execution_row_json(&row);
    execution["failed_steps"] = failed_steps(&org, id)?;
    let steps = org.execute(
        "SELECT node_id, status, attempts, output, outcome, error, tokens_in, tokens_out, base_cost_micros, \
         billed_cost_micros, started_at, finished_at, iteration, loop_index, id, input, error_handled, attempt_log \
         FROM steps \
         WHERE org_id = ?1 AND execution_id = ?2 ORDER BY created_at, id",
        &[Value::from(id)],
    )?;
    execution["steps"] = steps
        .rows
        .iter()
        .map(|s| {
            json!({
                "id": s[14].as_str(),
                "node_id": s[0].as_str(),
                "status": s[1].as_str(),
                "attempts": s[2].as_i64(),
                "attempt_log": json_column(&s[17]).unwrap_or_else(|| json!([])),
                "input": json_column(&s[15]),
                "output": json_column(&s[3]),
                "outcome": s[4].as_str(),
                "error": json_column(&s[5]),
                "error_handled": s[16].as_i64().unwrap_or(0) != 0,
                "usage": {"input_tokens": s[6].as_i64(), "output_tokens": s[7].as_i64()},
                "cost": {"base_micros": s[8].as_i64(), "billed_micros": s[9].as_i64()},
                "started_at": s[10].as_i64().map(timestamp),
                "finished_at": s[11].as_i64().map(timestamp),
                "iteration": s[12].as_str().filter(|key| !key.is_empty()),
                "loop_index": s[13].as_i64(),
            })
        })
        .collect();
    Ok(ApiResponse::json(200, &execution))
}

/// `POST /internal/steps/:id` (dispatch token): claims the step and answers
/// `202` at once, then runs it after the response. A step already claimed
/// or finished answers `200 {"claimed": false}` and nothing runs.
fn run_step(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let step_id = params.get("id").unwrap_or_default().to_string();
    let now = now_ms();
    let hops = verify(ctx, request, &step_id, now)?;
    let Some(lease) = runner::claim(ctx, ctx.db()?, &step_id, now)? else {
        return Ok(ApiResponse::json(200, &json!({"claimed": false})));
    };
    let step = step_id.clone();
    ctx.defer(move |ctx| {
        // The lease and the tick recover a step whose run fails here.
        if let Err(error) = runner::run_step(ctx, &step, &lease, hops) {
            eprintln!("spindle: step {step} failed to run: {error}");
        }
    });
    Ok(ApiResponse::json(
        202,
        &json!({"claimed": true, "step_id": step_id}),
    ))
}

/// `POST /internal/tick` (dispatch token for `tick`, or `Bearer <tick_key>`):
/// re-dispatches steps whose lease expired (their invocation died), queued
/// steps nobody dispatched, and delays whose time has come, in a bounded batch.
fn tick(ctx: &RequestContext, request: &ApiRequest, _: &Params) -> Result<ApiResponse, ApiError> {
    let now = now_ms();
    let by_key = match (
        ctx.optional_secret("tick_key")?,
        request.header("authorization"),
    ) {
        (Some(key), Some(header)) => header
            .strip_prefix("Bearer ")
            .is_some_and(|given| constant_time_eq(given.as_bytes(), key.as_bytes())),
        _ => false,
    };
    let hops = if by_key {
        0
    } else {
        verify(ctx, request, "tick", now)?
    };
    Ok(ApiResponse::json(200, &run_tick(ctx, hops, now)?))
}

/// One tick's work at `now`, in bounded batches; what it did, by kind.
fn run_tick(ctx: &RequestContext, hops: u64, now: i64) -> Result<Json, ApiError> {
    // The one cross-organisation query: the tick is the platform's, not a tenant's.
    let due = ctx.db()?.execute(
        "SELECT s.id FROM steps s JOIN executions e ON e.id = s.execution_id AND e.status = 'running' \
         WHERE (s.status = 'running' AND s.lease_expires_at < ?) \
         OR (s.status = 'queued' AND COALESCE(s.run_after, s.created_at + ?) <= ?) \
         ORDER BY s.created_at LIMIT ?",
        &[
            Value::Integer(now),
            Value::Integer(UNDISPATCHED_AFTER_MS),
            Value::Integer(now),
            Value::Integer(TICK_BATCH),
        ],
    )?;
    let ids: Vec<String> = due
        .rows
        .iter()
        .filter_map(|r| r[0].as_str().map(String::from))
        .collect();
    let mut failed = 0;
    for id in &ids {
        if dispatch_step(ctx, id, hops, now).is_err() {
            failed += 1;
        }
    }
    let timed_out = runner::time_out_waits(ctx, now, TICK_BATCH)?;
    let resumed = runner::resume_stalled(ctx, TICK_BATCH)?;
    let schedules_started = schedules::start_due(ctx, now, TICK_BATCH)?;
    let events_delivered = events::deliver_due(ctx)?;
    // Reservations of provider calls that died stop counting at expiry; drop them.
    crate::usage::budgets::release_expired(ctx.db()?, now)?;
    Ok(
        json!({"redispatched": ids.len() - failed, "failed": failed, "waits_timed_out": timed_out,
                "runs_resumed": resumed,
                "events_delivered": events_delivered, "schedules_started": schedules_started}),
    )
}

/// `POST /api/v1/executions/:id/rerun` (member) `{from_node, version?}`: a
/// new run of a finished one, on its version or a newer one, that keeps the
/// outputs of every node not downstream of `from_node` and runs the rest.
fn rerun_execution(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    heartbeat::kick(ctx);
    caller.require(Role::Member)?;
    internal_key(ctx)?;
    crate::agents::check_call_settings(ctx)?;
    let id = params.get("id").unwrap_or_default();
    if request.body.is_empty() {
        return Err(ApiError::bad_request("`from_node` (a node id) is required"));
    }
    let body = request.json_object(&["from_node", "version"])?;
    let from_node = body
        .get("from_node")
        .and_then(Json::as_str)
        .ok_or_else(|| ApiError::bad_request("`from_node` (a node id) is required"))?;
    let requested_version = match body.get("version") {
        None | Some(Json::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| ApiError::bad_request("`version` must be an integer"))?,
        ),
    };
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let original = fetch_one(
        &org,
        "SELECT workflow_id, workflow_version, status, inputs FROM executions WHERE org_id = ?1 AND id = ?2",
        &[Value::from(id)],
        || format!("execution {id}"),
    )?;
    let workflow_id = original[0].as_str().unwrap_or_default().to_string();
    let original_version = original[1].as_i64().unwrap_or(1);
    if !original[2]
        .as_str()
        .and_then(RunStatus::parse)
        .is_some_and(RunStatus::is_terminal)
    {
        return Err(ApiError::Conflict(format!(
            "execution {id} has not finished"
        )));
    }
    let version = requested_version.unwrap_or(original_version);
    let invalid = |path: &str, problem: String| ApiError::Validation {
        message: "the rerun request is invalid".into(),
        details: vec![ErrorDetail::new(path, problem)],
    };
    if version < original_version {
        return Err(invalid(
            "version",
            format!("must be {original_version} or newer"),
        ));
    }
    let Some(row) = org
        .execute(
            "SELECT definition FROM workflow_versions WHERE org_id = ?1 AND workflow_id = ?2 AND version = ?3",
            &[Value::from(workflow_id.as_str()), Value::Integer(version)],
        )?
        .into_first()
    else {
        return Err(invalid("version", format!("workflow {workflow_id} has no version {version}")));
    };
    let definition: Definition = serde_json::from_str(row[0].as_str().unwrap_or_default())
        .map_err(|e| ApiError::Internal(format!("stored definition is unreadable: {e}")))?;
    if !definition.nodes.iter().any(|n| n.id == from_node) {
        return Err(invalid(
            "from_node",
            format!("version {version} has no node {from_node}"),
        ));
    }
    let reuse = runner::reusable_steps(ctx.db()?, &caller.org_id, id, &definition, from_node)?;
    let start = runner::RunStart {
        workflow_id: &workflow_id,
        version,
        definition: &definition,
        inputs: json_column(&original[3]).unwrap_or(Json::Null),
        trigger_kind: "rerun",
        idempotency: None,
        reuse: &reuse,
    };
    let new_id = runner::start_run(ctx, &caller, start)?;
    record_activity(
        ctx,
        ctx.db()?,
        &caller.org_id,
        &caller.subject,
        "workflow.started",
        ("execution", &new_id),
        &json!({"workflow_id": workflow_id, "rerun_of": id, "from_node": from_node}),
    )?;
    Ok(started(&new_id, false))
}

/// `POST /api/v1/executions/:id/signals/:name` (member) `{payload?}`: resumes
/// the run's `wait` step for that signal; the payload is its output. 404
/// when no step of the run waits for it.
fn send_signal(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    heartbeat::kick(ctx);
    caller.require(Role::Member)?;
    let id = params.get("id").unwrap_or_default();
    let name = params.get("name").unwrap_or_default();
    let payload = request
        .json_object(&["payload"])?
        .remove("payload")
        .unwrap_or(Json::Null);
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    require_execution(&org, id)?;
    if !runner::signal(ctx, &caller.org_id, id, name, payload)? {
        return Err(ApiError::NotFound(format!(
            "no step of execution {id} is waiting for signal {name}"
        )));
    }
    record_activity(
        ctx,
        ctx.db()?,
        &caller.org_id,
        &caller.subject,
        "execution.signalled",
        ("execution", id),
        &json!({"signal": name}),
    )?;
    get_execution(ctx, request, params)
}
