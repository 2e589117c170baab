//! The workflows area: versioned workflow definitions, their webhook
//! secrets, and starter templates.

pub(crate) mod schedules;
mod templates;

pub use templates::{Template, templates};

use crate::auth::{authenticate, record_activity};
use crate::context::RequestContext;
use crate::listing::{Page, like_pattern};
use crate::{fetch_one, json_column, now_ms, timestamp};
use serde_json::{Map, Value as Json, json};
use spindle_auth::{Caller, Role};
use spindle_definition::{
    Definition, MAX_DEFINITION_BYTES, parse_definition, referenced_agents, validate,
};
use spindle_http::{ApiError, ApiRequest, ApiResponse, ErrorDetail, Method, Params, Router};
use spindle_store::{Db, OrgScoped, Value, in_transaction};
use std::collections::HashSet;

/// Most workflows one bulk delete takes.
const MAX_BULK_DELETE: usize = 100;
const MAX_NAME_CHARS: usize = 200;
const MAX_DESCRIPTION_CHARS: usize = 2_000;
/// Fields of a workflow document that belong to the stored workflow, not to
/// its definition: a `GET` body posted back is a valid create request.
const READ_ONLY_FIELDS: &[&str] = &["id", "version", "created_at", "updated_at", "node_count"];
const DEFINITION_FIELDS: &[&str] = &["nodes", "edges", "variables", "tasks"];
/// Fields of a workflow that are settings, changed without a new version.
const SETTINGS_FIELDS: &[&str] = &["name", "description", "is_active", "webhook_scheme"];
/// How calls to a workflow's webhook may be signed.
const WEBHOOK_SCHEMES: &[&str] = &["standard", "github"];

/// The workflows component's routes.
pub fn router() -> Router<RequestContext> {
    Router::new()
        .route(Method::Post, "/api/v1/workflows", create_workflow)
        .route(Method::Get, "/api/v1/workflows", list_workflows)
        .route(
            Method::Post,
            "/api/v1/workflows/validate",
            validate_workflow,
        )
        .route(Method::Post, "/api/v1/workflows/bulk-delete", bulk_delete)
        .route(Method::Get, "/api/v1/workflows/:id", get_workflow)
        .route(Method::Put, "/api/v1/workflows/:id", replace_workflow)
        .route(Method::Patch, "/api/v1/workflows/:id", update_settings)
        .route(Method::Delete, "/api/v1/workflows/:id", delete_workflow)
        .route(Method::Get, "/api/v1/workflows/:id/versions", list_versions)
        .route(
            Method::Get,
            "/api/v1/workflows/:id/versions/:version",
            get_version,
        )
        .route(
            Method::Post,
            "/api/v1/workflows/:id/webhook-secret",
            rotate_webhook_secret,
        )
        .route(
            Method::Put,
            "/api/v1/workflows/:id/schedules",
            schedules::replace,
        )
        .route(
            Method::Get,
            "/api/v1/workflows/:id/schedules",
            schedules::list,
        )
        .route(Method::Get, "/api/v1/templates", templates::list)
        .route(Method::Get, "/api/v1/templates/:id", templates::get)
        .route(
            Method::Post,
            "/api/v1/templates/:id/use",
            templates::use_template,
        )
}

/// A workflow document as posted: its settings and its definition.
struct Document {
    name: String,
    description: String,
    is_active: bool,
    webhook_scheme: String,
    definition: Definition,
}

/// Reads and validates a workflow document: 400 for shapes, 413 for a
/// definition over 1 MiB, 422 with every problem and its path.
fn read_document(ctx: &RequestContext, caller: &Caller, body: &Json) -> Result<Document, ApiError> {
    let object = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let unknown: Vec<ErrorDetail> = object
        .keys()
        .filter(|k| {
            !(SETTINGS_FIELDS.contains(&k.as_str())
                || DEFINITION_FIELDS.contains(&k.as_str())
                || READ_ONLY_FIELDS.contains(&k.as_str()))
        })
        .map(|k| ErrorDetail::new(k.clone(), "unknown field"))
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::BadRequest {
            message: "the workflow has unknown fields".into(),
            details: unknown,
        });
    }
    let mut problems = Vec::new();
    let name = match object.get("name") {
        Some(Json::String(name)) if (1..=MAX_NAME_CHARS).contains(&name.trim().chars().count()) => {
            name.trim().to_string()
        }
        _ => {
            problems.push(ErrorDetail::new(
                "name",
                format!("a string of 1 to {MAX_NAME_CHARS} characters is required"),
            ));
            String::new()
        }
    };
    let description = match object.get("description") {
        None | Some(Json::Null) => String::new(),
        Some(Json::String(d)) if d.chars().count() <= MAX_DESCRIPTION_CHARS => d.clone(),
        _ => {
            problems.push(ErrorDetail::new(
                "description",
                format!("a string of at most {MAX_DESCRIPTION_CHARS} characters"),
            ));
            String::new()
        }
    };
    let is_active = match object.get("is_active") {
        None | Some(Json::Null) => true,
        Some(Json::Bool(active)) => *active,
        Some(_) => {
            problems.push(ErrorDetail::new("is_active", "must be true or false"));
            true
        }
    };
    let webhook_scheme = match object.get("webhook_scheme") {
        None | Some(Json::Null) => "standard".to_string(),
        Some(Json::String(scheme)) if WEBHOOK_SCHEMES.contains(&scheme.as_str()) => scheme.clone(),
        Some(_) => {
            problems.push(ErrorDetail::new(
                "webhook_scheme",
                "must be standard or github",
            ));
            "standard".to_string()
        }
    };
    let definition_json = Json::Object(
        object
            .iter()
            .filter(|(k, _)| DEFINITION_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Map<_, _>>(),
    );
    if definition_json.to_string().len() > MAX_DEFINITION_BYTES {
        return Err(ApiError::PayloadTooLarge {
            limit: MAX_DEFINITION_BYTES,
        });
    }
    let definition = match parse_definition(&definition_json) {
        Ok(definition) => Some(definition),
        Err(found) => {
            problems.extend(
                found
                    .into_iter()
                    .map(|p| ErrorDetail::new(p.path, p.problem)),
            );
            None
        }
    };
    if let Some(definition) = &definition {
        let known = known_agents(ctx, caller, definition)?;
        problems.extend(
            validate(definition, &|id| known.contains(id))
                .into_iter()
                .map(|p| ErrorDetail::new(p.path, p.problem)),
        );
    }
    match definition {
        Some(definition) if problems.is_empty() => Ok(Document {
            name,
            description,
            is_active,
            webhook_scheme,
            definition,
        }),
        _ => Err(ApiError::Validation {
            message: "the workflow definition is invalid".into(),
            details: problems,
        }),
    }
}

/// The agents a definition names that exist in the caller's organisation.
fn known_agents(
    ctx: &RequestContext,
    caller: &Caller,
    definition: &Definition,
) -> Result<HashSet<String>, ApiError> {
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let mut known = HashSet::new();
    for id in referenced_agents(definition) {
        let found = org.execute(
            "SELECT 1 FROM agents WHERE org_id = ?1 AND id = ?2 AND deleted_at IS NULL",
            &[Value::from(id.as_str())],
        )?;
        if !found.rows.is_empty() {
            known.insert(id);
        }
    }
    Ok(known)
}

/// Stores `document` as a new workflow; returns its id and webhook secret.
fn insert_workflow(
    ctx: &RequestContext,
    caller: &Caller,
    document: &Document,
    origin: &Json,
) -> Result<(String, String), ApiError> {
    let (id, now, secret) = (ctx.new_id(), now_ms(), ctx.new_webhook_secret());
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        db.execute(
            "INSERT INTO workflows (id, org_id, name, description, is_active, current_version, webhook_secret, \
             webhook_scheme, created_by, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?)",
            &[
                Value::from(id.as_str()),
                Value::from(caller.org_id.as_str()),
                Value::from(document.name.as_str()),
                Value::from(document.description.as_str()),
                Value::Integer(i64::from(document.is_active)),
                Value::from(secret.as_str()),
                Value::from(document.webhook_scheme.as_str()),
                Value::from(caller.subject.as_str()),
                Value::Integer(now),
                Value::Integer(now),
            ],
        )?;
        insert_version(db, caller, &id, 1, &document.definition, now)?;
        record_activity(
            ctx,
            db,
            &caller.org_id,
            &caller.subject,
            "workflow.created",
            ("workflow", &id),
            origin,
        )
    })?;
    Ok((id, secret))
}

fn insert_version(
    db: &dyn Db,
    caller: &Caller,
    id: &str,
    version: i64,
    definition: &Definition,
    now: i64,
) -> Result<(), ApiError> {
    let definition = serde_json::to_string(definition)
        .map_err(|e| ApiError::Internal(format!("definition does not serialise: {e}")))?;
    db.execute(
        "INSERT INTO workflow_versions (org_id, workflow_id, version, definition, created_by, created_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
        &[
            Value::from(caller.org_id.as_str()),
            Value::from(id),
            Value::Integer(version),
            Value::Text(definition),
            Value::from(caller.subject.as_str()),
            Value::Integer(now),
        ],
    )?;
    Ok(())
}

fn created(
    ctx: &RequestContext,
    caller: &Caller,
    id: &str,
    secret: &str,
) -> Result<ApiResponse, ApiError> {
    Ok(ApiResponse::json(
        201,
        &created_json(ctx, caller, id, secret)?,
    ))
}

/// A new workflow as its `201` shows it: with its webhook secret.
fn created_json(
    ctx: &RequestContext,
    caller: &Caller,
    id: &str,
    secret: &str,
) -> Result<Json, ApiError> {
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let mut workflow = workflow_json(&org, id)?;
    // Shown this once; rotate it with POST /api/v1/workflows/:id/webhook-secret.
    workflow["webhook_secret"] = json!(secret);
    Ok(workflow)
}

/// `POST /api/v1/workflows` (member): a new workflow at version 1, with its
/// webhook secret shown this once.
fn create_workflow(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Member)?;
    let document = read_document(ctx, &caller, &request.json()?)?;
    let (id, secret) = insert_workflow(ctx, &caller, &document, &json!({"name": document.name}))?;
    created(ctx, &caller, &id, &secret)
}

/// `POST /api/v1/workflows/validate` (viewer): checks a document without
/// storing it. `200 {"valid": true}`, or the error `POST /api/v1/workflows`
/// would answer for it (422 with every problem in `details`, 400, 413).
fn validate_workflow(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    read_document(ctx, &caller, &request.json()?)?;
    Ok(ApiResponse::json(200, &json!({"valid": true})))
}

/// `GET /api/v1/workflows` (viewer): `search` (name, description),
/// `is_active`, paging and sorting.
fn list_workflows(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let page = Page::parse(request, &["created_at", "updated_at", "name"])?;
    let is_active = match request.query_param("is_active") {
        None => None,
        Some("true") => Some(1),
        Some("false") => Some(0),
        Some(_) => {
            return Err(ApiError::BadRequest {
                message: "invalid query parameters".into(),
                details: vec![ErrorDetail::new("query.is_active", "must be true or false")],
            });
        }
    };
    let filters = "org_id = ?1 AND deleted_at IS NULL AND (?2 IS NULL OR is_active = ?2) \
         AND (?3 IS NULL OR name LIKE ?3 ESCAPE '\\' OR description LIKE ?3 ESCAPE '\\')";
    let params = [
        Value::from(is_active.map(i64::from)),
        Value::from(like_pattern(request.query_text("search"))),
    ];
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    page.respond(
        &org,
        SUMMARY_COLUMNS,
        &format!("workflows WHERE {filters}"),
        &params,
        summary_json,
    )
}

/// `GET /api/v1/workflows/:id` (viewer): the current version, in the shape
/// `POST /api/v1/workflows` accepts.
fn get_workflow(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    Ok(ApiResponse::json(
        200,
        &workflow_json(&org, params.get("id").unwrap_or_default())?,
    ))
}

/// `PUT /api/v1/workflows/:id` (member): a new version; older ones stay readable.
fn replace_workflow(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Member)?;
    let id = params.get("id").unwrap_or_default();
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    live_workflow(&org, id)?;
    let document = read_document(ctx, &caller, &request.json()?)?;
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        let org = OrgScoped::new(db, &caller.org_id);
        let version = live_workflow(&org, id)? + 1;
        let now = now_ms();
        insert_version(db, &caller, id, version, &document.definition, now)?;
        org.execute(
            "UPDATE workflows SET name = ?2, description = ?3, is_active = ?4, current_version = ?5, \
             updated_at = ?6, webhook_scheme = ?8 WHERE org_id = ?1 AND id = ?7",
            &[
                Value::from(document.name.as_str()),
                Value::from(document.description.as_str()),
                Value::Integer(i64::from(document.is_active)),
                Value::Integer(version),
                Value::Integer(now),
                Value::from(id),
                Value::from(document.webhook_scheme.as_str()),
            ],
        )?;
        record_activity(
            ctx,
            db,
            &caller.org_id,
            &caller.subject,
            "workflow.updated",
            ("workflow", id),
            &json!({"version": version}),
        )
    })?;
    Ok(ApiResponse::json(200, &workflow_json(&org, id)?))
}

/// `PATCH /api/v1/workflows/:id` (member): name, description, `is_active` or
/// `webhook_scheme`, without a new version.
fn update_settings(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Member)?;
    let id = params.get("id").unwrap_or_default();
    let patch: Json = request.json()?;
    let object = patch
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    // A field PATCH does not take is a body of the wrong shape (400), as
    // everywhere; the definition's fields get a pointer to PUT.
    let unknown: Vec<ErrorDetail> = object
        .keys()
        .filter(|key| !SETTINGS_FIELDS.contains(&key.as_str()))
        .map(|key| {
            ErrorDetail::new(
                key.clone(),
                "only name, description, is_active and webhook_scheme can be patched; \
                 PUT a new version to change the definition",
            )
        })
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::BadRequest {
            message: format!("unknown field {:?}", unknown[0].path),
            details: unknown,
        });
    }
    let mut problems = Vec::new();
    let name = object.get("name").map(|v| match v.as_str().map(str::trim) {
        Some(n) if (1..=MAX_NAME_CHARS).contains(&n.chars().count()) => n.to_string(),
        _ => {
            problems.push(ErrorDetail::new(
                "name",
                format!("a string of 1 to {MAX_NAME_CHARS} characters"),
            ));
            String::new()
        }
    });
    let description = object.get("description").map(|v| match v.as_str() {
        Some(d) if d.chars().count() <= MAX_DESCRIPTION_CHARS => d.to_string(),
        _ => {
            problems.push(ErrorDetail::new(
                "description",
                format!("a string of at most {MAX_DESCRIPTION_CHARS} characters"),
            ));
            String::new()
        }
    });
    let is_active = object.get("is_active").map(|v| {
        v.as_bool().unwrap_or_else(|| {
            problems.push(ErrorDetail::new("is_active", "must be true or false"));
            true
        })
    });
    let webhook_scheme = object.get("webhook_scheme").map(|v| match v.as_str() {
        Some(scheme) if WEBHOOK_SCHEMES.contains(&scheme) => scheme.to_string(),
        _ => {
            problems.push(ErrorDetail::new(
                "webhook_scheme",
                "must be standard or github",
            ));
            String::new()
        }
    });
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    live_workflow(&org, id)?;
    if !problems.is_empty() {
        return Err(ApiError::Validation {
            message: "the patch is invalid".into(),
            details: problems,
        });
    }
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        let org = OrgScoped::new(db, &caller.org_id);
        org.execute(
            "UPDATE workflows SET name = COALESCE(?2, name), description = COALESCE(?3, description), \
             is_active = COALESCE(?4, is_active), updated_at = ?5, \
             webhook_scheme = COALESCE(?7, webhook_scheme) WHERE org_id = ?1 AND id = ?6",
            &[
                Value::from(name),
                Value::from(description),
                Value::from(is_active.map(i64::from)),
                Value::Integer(now_ms()),
                Value::from(id),
                Value::from(webhook_scheme),
            ],
        )?;
        record_activity(
            ctx,
            db,
            &caller.org_id,
            &caller.subject,
            "workflow.settings_changed",
            ("workflow", id),
            &patch,
        )
    })?;
    Ok(ApiResponse::json(200, &workflow_json(&org, id)?))
}

/// `DELETE /api/v1/workflows/:id` (member): gone from the API; its runs stay.
fn delete_workflow(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Member)?;
    let id = params.get("id").unwrap_or_default();
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        let org = OrgScoped::new(db, &caller.org_id);
        live_workflow(&org, id)?;
        soft_delete(&org, id)?;
        record_activity(
            ctx,
            db,
            &caller.org_id,
            &caller.subject,
            "workflow.deleted",
            ("workflow", id),
            &json!({}),
        )
    })?;
    Ok(ApiResponse::no_content())
}

/// `POST /api/v1/workflows/bulk-delete` (member) `{ids}`: all or nothing; one
/// id that is unknown or another organisation's answers 404 naming it and
/// deletes none.
fn bulk_delete(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Member)?;
    let body: Json = request.json()?;
    let ids: Vec<String> = body
        .get("ids")
        .and_then(Json::as_array)
        .and_then(|ids| {
            ids.iter()
                .map(|id| id.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| ApiError::BadRequest {
            message: "expected {\"ids\": [\"<workflow id>\", …]}".into(),
            details: vec![ErrorDetail::new("ids", "an array of strings is required")],
        })?;
    let unique: HashSet<&String> = ids.iter().collect();
    if ids.is_empty() || ids.len() > MAX_BULK_DELETE || unique.len() != ids.len() {
        return Err(ApiError::Validation {
            message: "the id list is invalid".into(),
            details: vec![ErrorDetail::new(
                "ids",
                format!("1 to {MAX_BULK_DELETE} distinct ids"),
            )],
        });
    }
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        let org = OrgScoped::new(db, &caller.org_id);
        let mut missing = Vec::new();
        for id in &ids {
            if live_workflow(&org, id).is_err() {
                missing.push(id.clone());
            }
        }
        if !missing.is_empty() {
            return Err(ApiError::NotFound(format!(
                "workflows not found: {}; nothing was deleted",
                missing.join(", ")
            )));
        }
        for id in &ids {
            soft_delete(&org, id)?;
        }
        record_activity(
            ctx,
            db,
            &caller.org_id,
            &caller.subject,
            "workflow.bulk_deleted",
            ("workflow", ""),
            &json!({"ids": ids}),
        )
    })?;
    Ok(ApiResponse::json(200, &json!({"deleted": ids.len()})))
}

/// `GET /api/v1/workflows/:id/versions` (viewer): every version, newest first.
fn list_versions(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let id = params.get("id").unwrap_or_default();
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    let current = live_workflow(&org, id)?;
    let rows = org.execute(
        "SELECT version, created_by, created_at FROM workflow_versions \
         WHERE org_id = ?1 AND workflow_id = ?2 ORDER BY version DESC",
        &[Value::from(id)],
    )?;
    let versions: Vec<Json> = rows
        .rows
        .iter()
        .map(|row| json!({"version": row[0].as_i64(), "created_by": row[1].as_str(), "created_at": row[2].as_i64().map(timestamp)}))
        .collect();
    Ok(ApiResponse::json(
        200,
        &json!({"current_version": current, "data": versions}),
    ))
}

/// `GET /api/v1/workflows/:id/versions/:version` (viewer): one stored version.
fn get_version(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let id = params.get("id").unwrap_or_default();
    let org = OrgScoped::new(ctx.db()?, &caller.org_id);
    live_workflow(&org, id)?;
    let version_text = params.get("version").unwrap_or_default();
    let version: i64 = version_text.parse().map_err(|_| {
        ApiError::NotFound(format!("version {version_text} of workflow {id} not found"))
    })?;
    let row = fetch_one(
        &org,
        "SELECT definition, created_by, created_at FROM workflow_versions \
         WHERE org_id = ?1 AND workflow_id = ?2 AND version = ?3",
        &[Value::from(id), Value::Integer(version)],
        || format!("version {version} of workflow {id}"),
    )?;
    let mut body = json_column(&row[0]).unwrap_or_else(|| json!({}));
    body["workflow_id"] = json!(id);
    body["version"] = json!(version);
    body["created_by"] = json!(row[1].as_str());
    body["created_at"] = json!(row[2].as_i64().map(timestamp));
    Ok(ApiResponse::json(200, &body))
}

/// `POST /api/v1/workflows/:id/webhook-secret` (admin): a new secret, shown
/// this once; the old one stops working at once.
fn rotate_webhook_secret(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Admin)?;
    let id = params.get("id").unwrap_or_default();
    let secret = ctx.new_webhook_secret();
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        let org = OrgScoped::new(db, &caller.org_id);
        live_workflow(&org, id)?;
        org.execute(
            "UPDATE workflows SET webhook_secret = ?2, updated_at = ?3 WHERE org_id = ?1 AND id = ?4",
            &[Value::from(secret.as_str()), Value::Integer(now_ms()), Value::from(id)],
        )?;
        record_activity(
            ctx,
            db,
            &caller.org_id,
            &caller.subject,
            "workflow.webhook_secret_rotated",
            ("workflow", id),
            &json!({}),
        )
    })?;
    Ok(ApiResponse::json(
        200,
        &json!({"workflow_id": id, "webhook_secret": secret}),
    ))
}

/// The current version of a live workflow, or 404.
fn live_workflow(org: &OrgScoped, id: &str) -> Result<i64, ApiError> {
    let row = fetch_one(
        org,
        "SELECT current_version FROM workflows WHERE org_id = ?1 AND id = ?2 AND deleted_at IS NULL",
        &[Value::from(id)],
        || format!("workflow {id}"),
    )?;
    Ok(row[0].as_i64().unwrap_or(1))
}

fn soft_delete(org: &OrgScoped, id: &str) -> Result<(), ApiError> {
    org.execute(
        "UPDATE workflows SET deleted_at = ?2, updated_at = ?2 WHERE org_id = ?1 AND id = ?3",
        &[Value::Integer(now_ms()), Value::from(id)],
    )?;
    Ok(())
}

const SUMMARY_COLUMNS: &str =
    "id, name, description, is_active, current_version, webhook_scheme, created_at, updated_at";

fn summary_json(row: &[Value]) -> Json {
    json!({
        "id": row[0].as_str(),
        "name": row[1].as_str(),
        "description": row[2].as_str(),
        "is_active": row[3].as_i64() == Some(1),
        "version": row[4].as_i64(),
        "webhook_scheme": row[5].as_str(),
        "created_at": row[6].as_i64().map(timestamp),
        "updated_at": row[7].as_i64().map(timestamp),
    })
}

/// A live workflow with its current definition, in the shape `POST` accepts.
fn workflow_json(org: &OrgScoped, id: &str) -> Result<Json, ApiError> {
    let row = fetch_one(
        org,
        &format!(
            "SELECT {SUMMARY_COLUMNS}, (SELECT definition FROM workflow_versions v \
             WHERE v.org_id = w.org_id AND v.workflow_id = w.id AND v.version = w.current_version) \
             FROM workflows w WHERE org_id = ?1 AND id = ?2 AND deleted_at IS NULL"
        ),
        &[Value::from(id)],
        || format!("workflow {id}"),
    )?;
    let mut workflow = summary_json(&row);
    if let Some(Json::Object(definition)) = json_column(&row[8]) {
        for (key, value) in definition {
            workflow[key] = value;
        }
    }
    Ok(workflow)
}
