//! Running workflows: starting a run, advancing it node by node, running
//! one claimed step, and finishing the run. Cheap nodes run inline; each
//! agent step is handed to an invocation of its own.

use super::dispatch::dispatch_step;
use super::events;
use super::status::{RunStatus, StepStatus};
use crate::agents::{self, RunInput, StepLink, StoredAgent, run_agent};
use crate::context::RequestContext;
use crate::{json_column, now_ms};
use serde_json::{Map, Value as Json, json};
use spindle_auth::{Caller, Role};
use spindle_definition::{
    Definition, DelayConfig, HttpConfig, Node, NodeConfig, NodeState, OnError, TIMEOUT_HANDLE,
    edge_taken, evaluate, is_truthy, plan, render,
};
use spindle_http::{ApiError, OutboundError, OutboundRequest};
use spindle_store::{Db, OrgScoped, Value, in_transaction};
use std::collections::HashMap;

/// The error of a step that never ran because its run ended first; a retry runs it.
const RUN_ENDED: &str = r#"{"code":"run_ended","message":"the run ended before this step ran"}"#;

/// How long a claimed step may run before another invocation may take it over.
const DEFAULT_LEASE_MS: i64 = 300_000;

/// A stored run and the definition version it is pinned to.
struct Run {
    id: String,
    org_id: String,
    workflow_id: String,
    status: RunStatus,
    inputs: Json,
    api_key_id: Option<String>,
    definition: Definition,
}

/// One stored step.
struct Step {
    id: String,
    status: StepStatus,
    outcome: Option<String>,
    output: Json,
}

/// Why a node failed, as stored on its step and run.
struct StepFailure {
    code: String,
    message: String,
}

impl StepFailure {
    fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// What a node produced.
#[derive(Default)]
struct NodeResult {
    output: Json,
    outcome: Option<String>,
    tokens_in: i64,
    tokens_out: i64,
    base_micros: i64,
    billed_micros: i64,
}

fn lease_ms(ctx: &RequestContext) -> i64 {
    ctx.variable("step_lease_ms")
        .and_then(|v| v.parse().ok())
        .filter(|ms| *ms > 0)
        .unwrap_or(DEFAULT_LEASE_MS)
}

/// Agent steps get an invocation of their own; the rest are cheap and run inline.
fn is_expensive(node: &Node) -> bool {
    matches!(node.node_type.as_str(), "agent" | "http")
}

/// What starts a run: a workflow version, its inputs and how it was triggered.
pub struct RunStart<'a> {
    /// The workflow.
    pub workflow_id: &'a str,
    /// The version the run is pinned to.
    pub version: i64,
    /// That version's definition.
    pub definition: &'a Definition,
    /// The trigger's output: the run's inputs or the webhook's body.
    pub inputs: Json,
    /// `api`, `webhook` or `schedule`.
    pub trigger_kind: &'a str,
    /// The caller's Idempotency-Key, if any.
    pub idempotency: Option<&'a Idempotency>,
    /// Finished steps of an earlier run that this one keeps (a rerun).
    pub reuse: &'a [ReusedStep],
}

/// A finished step of an earlier run that a rerun keeps as it was: its
/// output is final, so it is neither run nor billed again.
pub struct ReusedStep {
    node_id: String,
    status: StepStatus,
    output: Json,
    outcome: Option<String>,
}

/// The finished steps of run `execution_id` that a rerun from `from_node`
/// on `definition` keeps: every completed or skipped step of a node the new
/// definition still has and that is not `from_node` or downstream of it.
pub fn reusable_steps(
    db: &dyn Db,
    org_id: &str,
    execution_id: &str,
    definition: &Definition,
    from_node: &str,
) -> Result<Vec<ReusedStep>, ApiError> {
    let mut downstream = std::collections::HashSet::from([from_node.to_string()]);
    let mut frontier = vec![from_node.to_string()];
    while let Some(node) = frontier.pop() {
        for edge in definition.edges.iter().filter(|e| e.source == node) {
            if downstream.insert(edge.target.clone()) {
                frontier.push(edge.target.clone());
            }
        }
    }
    let rows = OrgScoped::new(db, org_id).execute(
        "SELECT node_id, status, output, outcome FROM steps \
         WHERE org_id = ?1 AND execution_id = ?2 AND status IN ('completed', 'skipped')",
        &[Value::from(execution_id)],
    )?;
    Ok(rows
        .rows
        .iter()
        .filter_map(|row| {
            let node_id = row[0].as_str()?.to_string();
            let kept =
                !downstream.contains(&node_id) && definition.nodes.iter().any(|n| n.id == node_id);
            kept.then(|| ReusedStep {
                node_id,
                status: row[1]
                    .as_str()
                    .and_then(StepStatus::parse)
                    .unwrap_or(StepStatus::Skipped),
                output: json_column(&row[2]).unwrap_or(Json::Null),
                outcome: row[3].as_str().map(String::from),
            })
        })
        .collect())
}

/// A start request's Idempotency-Key and the hash of its body.
pub struct Idempotency {
    /// The caller's key.
    pub key: String,
    /// SHA-256 of the request, hex.
    pub request_hash: String,
}

/// Stores a new run of `definition` (pinned at `version`) with its trigger
/// step done, then advances it. Returns the run's id. A second run with the
/// same idempotency key fails on a unique index (409).
pub fn start_run(
    ctx: &RequestContext,
    caller: &Caller,
    start: RunStart<'_>,
) -> Result<String, ApiError> {
    let id = ctx.new_id();
    let now = now_ms();
    let RunStart {
        workflow_id,
        version,
        definition,
        inputs,
        trigger_kind,
        idempotency,
        reuse,
    } = start;
    let trigger = definition
        .nodes
        .iter()
        .find(|n| n.node_type == "trigger")
        .ok_or_else(|| ApiError::Internal("a stored definition has no trigger".into()))?;
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        db.execute(
            "INSERT INTO executions (id, org_id, workflow_id, workflow_version, status, trigger_kind, inputs, \
             api_key_id, idempotency_key, request_hash, created_at, started_at, updated_at) \
             VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)",
            &[
                Value::from(id.as_str()),
                Value::from(caller.org_id.as_str()),
                Value::from(workflow_id),
                Value::Integer(version),
                Value::from(trigger_kind),
                Value::Text(inputs.to_string()),
                Value::from(caller.api_key_id.clone()),
                Value::from(idempotency.map(|i| i.key.clone())),
                Value::from(idempotency.map(|i| i.request_hash.clone())),
                Value::Integer(now),
                Value::Integer(now),
                Value::Integer(now),
            ],
        )?;
        insert_step(
            ctx,
            db,
            &caller.org_id,
            &id,
            &trigger.id,
            StepStatus::Completed,
            Some(&inputs),
        )?;
        let data = json!({"execution_id": id, "workflow_id": workflow_id, "version": version, "trigger": trigger_kind});
        events::emit(ctx, db, &caller.org_id, "workflow.started", &data)?;
        for step in reuse {
            db.execute(
                "INSERT INTO steps (id, org_id, execution_id, node_id, status, output, outcome, created_at, \
                 finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (execution_id, node_id, iteration) DO NOTHING",
                &[
                    Value::Text(ctx.new_id()),
                    Value::from(caller.org_id.as_str()),
                    Value::from(id.as_str()),
                    Value::from(step.node_id.as_str()),
                    Value::from(step.status.as_str()),
                    Value::Text(step.output.to_string()),
                    Value::from(step.outcome.clone()),
                    Value::Integer(now),
                    Value::Integer(now),
                ],
            )?;
        }
        Ok(())
    })?;
    advance(ctx, &caller.org_id, &id, 0)?;
    Ok(id)
}

fn insert_step(
    ctx: &RequestContext,
    db: &dyn Db,
    org_id: &str,
    execution_id: &str,
    node_id: &str,
    status: StepStatus,
    output: Option<&Json>,
) -> Result<Option<String>, ApiError> {
    let now = now_ms();
    // The (execution, node, iteration) key makes a second insert a no-op, so
    // two invocations advancing the same run create each step once.
    let rows = db.execute(
        "INSERT INTO steps (id, org_id, execution_id, node_id, status, output, created_at, finished_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (execution_id, node_id, iteration) DO NOTHING RETURNING id",
        &[
            Value::Text(ctx.new_id()),
            Value::from(org_id),
            Value::from(execution_id),
            Value::from(node_id),
            Value::from(status.as_str()),
            Value::from(output.map(Json::to_string)),
            Value::Integer(now),
            Value::from(matches!(status, StepStatus::Completed | StepStatus::Skipped).then_some(now)),
        ],
    )?;
    Ok(rows
        .into_first()
        .and_then(|row| row[0].as_str().map(String::from)))
}

fn load_run(db: &dyn Db, org_id: &str, execution_id: &str) -> Result<Run, ApiError> {
    let org = OrgScoped::new(db, org_id);
    let row = crate::fetch_one(
        &org,
        "SELECT e.id, e.workflow_id, e.status, e.inputs, e.api_key_id, v.definition FROM executions e \
         JOIN workflow_versions v ON v.workflow_id = e.workflow_id AND v.version = e.workflow_version \
         WHERE e.org_id = ?1 AND e.id = ?2",
        &[Value::from(execution_id)],
        || format!("execution {execution_id}"),
    )?;
    let definition: Definition = serde_json::from_str(row[5].as_str().unwrap_or_default())
        .map_err(|e| ApiError::Internal(format!("stored definition is unreadable: {e}")))?;
    Ok(Run {
        id: execution_id.to_string(),
        org_id: org_id.to_string(),
        workflow_id: row[1].as_str().unwrap_or_default().to_string(),
        status: row[2]
            .as_str()
            .and_then(RunStatus::parse)
            .unwrap_or(RunStatus::Failed),
        inputs: json_column(&row[3]).unwrap_or(Json::Null),
        api_key_id: row[4].as_str().map(String::from),
        definition,
    })
}

/// The run's steps by node. A run has at most one step per node (loops
/// are not run yet), so this is bounded by the definition's size.
fn load_steps(db: &dyn Db, run: &Run) -> Result<HashMap<String, Step>, ApiError> {
    let rows = OrgScoped::new(db, &run.org_id).execute(
        "SELECT node_id, id, status, outcome, output FROM steps WHERE org_id = ?1 AND execution_id = ?2",
        &[Value::from(run.id.as_str())],
    )?;
    Ok(rows
        .rows
        .into_iter()
        .map(|row| {
            let step = Step {
                id: row[1].as_str().unwrap_or_default().to_string(),
                status: row[2]
                    .as_str()
                    .and_then(StepStatus::parse)
                    .unwrap_or(StepStatus::Queued),
                outcome: row[3].as_str().map(String::from),
                output: json_column(&row[4]).unwrap_or(Json::Null),
            };
            (row[0].as_str().unwrap_or_default().to_string(), step)
        })
        .collect())
}

fn node_states(steps: &HashMap<String, Step>) -> HashMap<String, NodeState> {
    steps
        .iter()
        .filter_map(|(node, step)| {
            let state = match step.status {
                StepStatus::Completed => NodeState::Done {
                    handle: step.outcome.clone(),
                },
                StepStatus::Skipped => NodeState::Skipped,
                _ => return None,
            };
            Some((node.clone(), state))
        })
        .collect()
}

/// The template context of `node`: the trigger's inputs, every finished
/// step's output, the run's variables and id, and the output of the node
/// before it (the last taken input, in definition order).
fn template_context(run: &Run, steps: &HashMap<String, Step>, node: &Node) -> Json {
    let outputs: Map<String, Json> = steps
        .iter()
        .filter(|(_, s)| s.status == StepStatus::Completed)
        .map(|(id, s)| {
            (
                id.clone(),
                json!({"output": s.output, "status": s.status.as_str()}),
            )
        })
        .collect();
    let previous = run
        .definition
        .edges
        .iter()
        .filter(|e| e.target == node.id)
        .filter_map(|e| {
            let source = steps.get(&e.source)?;
            (source.status == StepStatus::Completed && edge_taken(e, source.outcome.as_deref()))
                .then(|| source.output.clone())
        })
        .next_back()
        .unwrap_or(Json::Null);
    json!({
        "trigger": run.inputs,
        "steps": outputs,
        "previous_output": previous,
        "variables": run.definition.variables,
        "execution": {"id": run.id},
    })
}

/// Moves a run forward: skips what the planner skips, runs cheap ready
/// nodes inline, queues expensive ones and dispatches them after the
/// response, and finishes the run when nothing is left.
pub fn advance(
    ctx: &RequestContext,
    org_id: &str,
    execution_id: &str,
    hops: u64,
) -> Result<(), ApiError> {
    let db = ctx.db()?;
    loop {
        let run = load_run(db, org_id, execution_id)?;
        if run.status.is_terminal() {
            return Ok(());
        }
        let steps = load_steps(db, &run)?;
        let plan = plan(&run.definition, &node_states(&steps));
        let now = now_ms();
        let mut progressed = false;
        for node in &plan.skip {
            progressed |= insert_step(
                ctx,
                db,
                org_id,
                execution_id,
                node,
                StepStatus::Skipped,
                None,
            )?
            .is_some();
        }
        for node_id in plan.ready.iter().filter(|n| !steps.contains_key(*n)) {
            let Some(node) = run.definition.nodes.iter().find(|n| &n.id == node_id) else {
                continue;
            };
            if let Ok(NodeConfig::Wait(wait)) = node.typed_config("config") {
                // Parked until POST …/signals/:name or its timeout (the tick).
                if let Some(step_id) = insert_step(
                    ctx,
                    db,
                    org_id,
                    execution_id,
                    node_id,
                    StepStatus::Waiting,
                    None,
                )? {
                    let timeout = i64::try_from(wait.timeout_ms).unwrap_or(i64::MAX);
                    db.execute(
                        "UPDATE steps SET run_after = ? WHERE id = ?",
                        &[
                            Value::Integer(now.saturating_add(timeout)),
                            Value::from(step_id.as_str()),
                        ],
                    )?;
                }
                continue;
            }
            let Some(step_id) = insert_step(
                ctx,
                db,
                org_id,
                execution_id,
                node_id,
                StepStatus::Queued,
                None,
            )?
            else {
                continue;
            };
            if let Some(resume_at) = delayed_until(&run, &steps, node, now) {
                // A delay parks its step until its time; the tick resumes it.
                db.execute(
                    "UPDATE steps SET run_after = ? WHERE id = ?",
                    &[Value::Integer(resume_at), Value::from(step_id.as_str())],
                )?;
            } else if is_expensive(node) {
                let (ctx_org, step) = (org_id.to_string(), step_id.clone());
                ctx.defer(move |ctx| {
                    // A failed dispatch leaves the step queued for the tick.
                    if let Err(problem) = dispatch_step(ctx, &step, hops, now_ms()) {
                        eprintln!("spindle: dispatch of step {step} ({ctx_org}) failed: {problem}");
                    }
                });
            } else if let Some(lease) = claim(ctx, db, &step_id, now)? {
                finish_step(
                    ctx,
                    db,
                    &run,
                    node,
                    &step_id,
                    &lease,
                    run_cheap(&run, &steps, node),
                )?;
                progressed = true;
                break;
            }
        }
        if !progressed {
            if plan.finished {
                complete_run(ctx, db, &run, &load_steps(db, &run)?)?;
            }
            return Ok(());
        }
    }
}

/// When a `delay` node's step may run, if that is still in the future.
fn delayed_until(run: &Run, steps: &HashMap<String, Step>, node: &Node, now: i64) -> Option<i64> {
    let Ok(NodeConfig::Delay(delay)) = node.typed_config("config") else {
        return None;
    };
    let at = match delay {
        DelayConfig::Duration(ms) => now.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)),
        DelayConfig::Until(template) => {
            // A time that does not render or parse does not delay; the
            // validator already checked its syntax.
            let rendered =
                render(&Json::String(template), &template_context(run, steps, node)).ok()?;
            chrono::DateTime::parse_from_rfc3339(rendered.as_str()?)
                .ok()?
                .timestamp_millis()
        }
    };
    (at > now).then_some(at)
}

/// Claims a queued step whose time has come, or a running one whose lease
/// expired (its invocation died), for a new lease. Exactly one claimer wins.
pub fn claim(
    ctx: &RequestContext,
    db: &dyn Db,
    step_id: &str,
    now: i64,
) -> Result<Option<String>, ApiError> {
    let lease = ctx.new_id();
    let rows = db.execute(
        "UPDATE steps SET status = 'running', attempts = attempts + 1, lease_token = ?, lease_expires_at = ?, \
         started_at = COALESCE(started_at, ?) \
         WHERE id = ? AND ((status = 'queued' AND COALESCE(run_after, 0) <= ?) \
         OR (status = 'running' AND lease_expires_at < ?)) RETURNING id",
        &[
            Value::from(lease.as_str()),
            Value::Integer(now + lease_ms(ctx)),
            Value::Integer(now),
            Value::from(step_id),
            Value::Integer(now),
            Value::Integer(now),
        ],
    )?;
    Ok((!rows.rows.is_empty()).then_some(lease))
}

/// The run a step belongs to: (org, execution).
pub fn step_owner(db: &dyn Db, step_id: &str) -> Result<Option<(String, String)>, ApiError> {
    let rows = db.execute(
        "SELECT org_id, execution_id FROM steps WHERE id = ?",
        &[Value::from(step_id)],
    )?;
    Ok(rows.into_first().map(|row| {
        (
            row[0].as_str().unwrap_or_default().to_string(),
            row[1].as_str().unwrap_or_default().to_string(),
        )
    }))
}

/// Runs a claimed expensive step, stores its result, and advances the run.
pub fn run_step(
    ctx: &RequestContext,
    step_id: &str,
    lease: &str,
    hops: u64,
) -> Result<(), ApiError> {
    let db = ctx.db()?;
    let Some((org_id, execution_id)) = step_owner(db, step_id)? else {
        return Ok(());
    };
    let run = load_run(db, &org_id, &execution_id)?;
    let steps = load_steps(db, &run)?;
    let Some(node) = run
        .definition
        .nodes
        .iter()
        .find(|n| steps.get(&n.id).is_some_and(|s| s.id == step_id))
    else {
        return Ok(());
    };
    if run.status.is_terminal() {
        // The run ended while this step waited (a sibling failed): it will
        // never run, and the tick must not pick it up again.
        db.execute(
            &format!(
                "UPDATE steps SET status = 'skipped', error = '{RUN_ENDED}', lease_expires_at = NULL, \
                 finished_at = ? WHERE id = ? AND lease_token = ?"
            ),
            &[
                Value::Integer(now_ms()),
                Value::from(step_id),
                Value::from(lease),
            ],
        )?;
        return Ok(());
    }
    // A cheap node arrives here only when its first invocation died between
    // queueing and running it, and the tick handed it on.
    let result = if is_expensive(node) {
        run_expensive(ctx, &run, &steps, node, step_id)
    } else {
        run_cheap(&run, &steps, node)
    };
    finish_step(ctx, db, &run, node, step_id, lease, result)?;
    advance(ctx, &org_id, &execution_id, hops)
}

fn run_cheap(
    run: &Run,
    steps: &HashMap<String, Step>,
    node: &Node,
) -> Result<NodeResult, StepFailure> {
    let context = template_context(run, steps, node);
    let config = node.typed_config("config").map_err(|_| {
        StepFailure::new(
            "invalid_node",
            format!("node {} has an invalid config", node.id),
        )
    })?;
    let template_failure =
        |e: spindle_definition::TemplateError| StepFailure::new("template_failed", e.to_string());
    Ok(match config {
        NodeConfig::Condition(c) => {
            let value = evaluate(&c.expression, &context).map_err(template_failure)?;
            let truth = is_truthy(&value);
            NodeResult {
                output: json!(truth),
                outcome: Some(truth.to_string()),
                ..NodeResult::default()
            }
        }
        NodeConfig::Switch(c) => {
            let value = evaluate(&c.expression, &context).map_err(template_failure)?;
            let key = match &value {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            let outcome = if c.cases.contains(&key) {
                key
            } else {
                "default".into()
            };
            NodeResult {
                output: value,
                outcome: Some(outcome),
                ..NodeResult::default()
            }
        }
        NodeConfig::Transform(c) => NodeResult {
            output: render(&c.template, &context).map_err(template_failure)?,
            ..NodeResult::default()
        },
        NodeConfig::Output(c) => NodeResult {
            output: render(&c.value, &context).map_err(template_failure)?,
            ..NodeResult::default()
        },
        // Its waiting is done by the time it runs (the claim honours `run_after`).
        NodeConfig::Delay(_) => NodeResult::default(),
        _ => {
            return Err(StepFailure::new(
                "node_not_supported",
                format!("the engine does not run {} nodes yet", node.node_type),
            ));
        }
    })
}

fn run_expensive(
    ctx: &RequestContext,
    run: &Run,
    steps: &HashMap<String, Step>,
    node: &Node,
    step_id: &str,
) -> Result<NodeResult, StepFailure> {
    let config = match node.typed_config("config") {
        Ok(NodeConfig::Agent(config)) => config,
        Ok(NodeConfig::Http(config)) => {
            return run_http(ctx, &template_context(run, steps, node), &config);
        }
        _ => {
            return Err(StepFailure::new(
                "node_not_supported",
                format!("the engine does not run {} nodes yet", node.node_type),
            ));
        }
    };
    let context = template_context(run, steps, node);
    let prompt = match render(&Json::String(config.prompt.clone()), &context)
        .map_err(|e| StepFailure::new("template_failed", e.to_string()))?
    {
        Json::String(text) => text,
        other => other.to_string(),
    };
    let db = ctx
        .db()
        .map_err(|e| StepFailure::new("storage_unavailable", e.to_string()))?;
    let (spec, _) =
        agents::load(&OrgScoped::new(db, &run.org_id), &config.agent_id).map_err(|_| {
            StepFailure::new(
                "agent_not_found",
                format!("agent {} no longer exists", config.agent_id),
            )
        })?;
    let caller = Caller {
        org_id: run.org_id.clone(),
        subject: format!("execution:{}", run.id),
        role: Role::Member,
        api_key_id: run.api_key_id.clone(),
    };
    let input = RunInput {
        task: prompt,
        context: None,
        max_tokens: config.max_tokens.and_then(|m| u32::try_from(m).ok()),
        conversation_id: None,
        step: Some(StepLink {
            workflow_id: run.workflow_id.clone(),
            execution_id: run.id.clone(),
            step_id: step_id.to_string(),
        }),
    };
    let agent = StoredAgent {
        id: config.agent_id.clone(),
        spec,
    };
    let execution = run_agent(ctx, &caller, &agent, input)
        .map_err(|e| StepFailure::new("storage_unavailable", e.to_string()))?;
    if execution["status"] != "completed" {
        return Err(StepFailure::new(
            execution["error"]["code"]
                .as_str()
                .unwrap_or("agent_failed"),
            execution["error"]["message"]
                .as_str()
                .unwrap_or("the agent run failed"),
        ));
    }
    let text = execution["output"].as_str().unwrap_or_default();
    let output = if config.output_schema.is_some() {
        structured_output(text).ok_or_else(|| {
            StepFailure::new(
                "invalid_structured_output",
                "the agent's answer is not the JSON its output_schema asks for",
            )
        })?
    } else {
        Json::String(text.to_string())
    };
    let number = |path: &[&str]| {
        path.iter()
            .fold(&execution, |v, k| &v[*k])
            .as_i64()
            .unwrap_or(0)
    };
    Ok(NodeResult {
        output,
        outcome: None,
        tokens_in: number(&["usage", "input_tokens"]),
        tokens_out: number(&["usage", "output_tokens"]),
        base_micros: number(&["cost", "base_micros"]),
        billed_micros: number(&["cost", "billed_micros"]),
    })
}

/// Default and largest timeout of an `http` node, and the most of its answer kept.
const HTTP_DEFAULT_TIMEOUT_MS: u64 = 30_000;
const HTTP_MAX_TIMEOUT_MS: u64 = 120_000;
const HTTP_MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// An `http` node: renders the request, sends it to a host the app allows
/// (the host refuses others before anything is sent), and records status,
/// headers and the body (JSON when it parses). 4xx and 5xx fail the step.
fn run_http(
    ctx: &RequestContext,
    context: &Json,
    config: &HttpConfig,
) -> Result<NodeResult, StepFailure> {
    let template_failure =
        |e: spindle_definition::TemplateError| StepFailure::new("template_failed", e.to_string());
    let text = |value: Json| match value {
        Json::String(s) => s,
        other => other.to_string(),
    };
    let url = text(render(&Json::String(config.url.clone()), context).map_err(template_failure)?);
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(StepFailure::new(
            "invalid_url",
            format!("{url:?} is not an absolute http(s) URL"),
        ));
    }
    let mut headers = Vec::new();
    for (name, value) in &config.headers {
        headers.push((
            name.to_ascii_lowercase(),
            text(render(&Json::String(value.clone()), context).map_err(template_failure)?),
        ));
    }
    let body = match &config.body {
        None => Vec::new(),
        Some(template) => match render(template, context).map_err(template_failure)? {
            Json::String(raw) => raw.into_bytes(),
            json => {
                if !headers.iter().any(|(n, _)| n == "content-type") {
                    headers.push(("content-type".into(), "application/json".into()));
                }
                json.to_string().into_bytes()
            }
        },
    };
    let method = format!("{:?}", config.method).to_ascii_uppercase();
    let reply = ctx
        .send(&OutboundRequest {
            method,
            url: url.clone(),
            headers,
            body,
            timeout_ms: config
                .timeout_ms
                .unwrap_or(HTTP_DEFAULT_TIMEOUT_MS)
                .min(HTTP_MAX_TIMEOUT_MS),
            max_response_bytes: HTTP_MAX_RESPONSE_BYTES,
        })
        .map_err(|error| match error {
            OutboundError::Denied(_) => {
                StepFailure::new("host_not_allowed", format!("{url} is not an allowed host"))
            }
            OutboundError::Timeout => {
                StepFailure::new("http_timeout", format!("{url} did not answer in time"))
            }
            other => StepFailure::new("http_failed", format!("{url}: {other}")),
        })?;
    let body = serde_json::from_slice::<Json>(&reply.body)
        .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(&reply.body).into_owned()));
    if reply.status >= 400 {
        // 429 and 5xx may pass; other 4xx will not (a per-node `retry` retries only the former).
        let code = if reply.status == 429 || reply.status >= 500 {
            "http_unavailable"
        } else {
            "http_status"
        };
        return Err(StepFailure::new(
            code,
            format!("{url} answered {}", reply.status),
        ));
    }
    let headers: Map<String, Json> = reply
        .headers
        .into_iter()
        .map(|(n, v)| (n, Json::String(v)))
        .collect();
    Ok(NodeResult {
        output: json!({"status": reply.status, "headers": headers, "body": body}),
        ..NodeResult::default()
    })
}

/// A model's JSON answer, also when wrapped in a Markdown code fence.
fn structured_output(text: &str) -> Option<Json> {
    let trimmed = text.trim();
    let unfenced = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|rest| rest.strip_suffix("```"))
        .unwrap_or(trimmed);
    serde_json::from_str(unfenced.trim()).ok()
}

/// Failures a per-node `retry` retries: the ones that may pass on their own.
const TRANSIENT_FAILURES: &[&str] = &[
    "provider_rate_limited",
    "provider_unavailable",
    "provider_timeout",
    "provider_unreachable",
    "http_unavailable",
    "http_timeout",
    "http_failed",
];

/// When a failed step should run again under its node's `retry` policy
/// (exponential from `backoff_ms`), or `None` when it should not.
fn retry_at(
    db: &dyn Db,
    node: &Node,
    step_id: &str,
    failure: &StepFailure,
    now: i64,
) -> Result<Option<i64>, ApiError> {
    let Some(policy) = &node.retry else {
        return Ok(None);
    };
    if !TRANSIENT_FAILURES.contains(&failure.code.as_str()) {
        return Ok(None);
    }
    let attempts = db
        .execute(
            "SELECT attempts FROM steps WHERE id = ?",
            &[Value::from(step_id)],
        )?
        .scalar_i64()
        .unwrap_or(i64::MAX);
    if attempts >= i64::from(policy.max_attempts) {
        return Ok(None);
    }
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(16);
    let delay = i64::try_from(policy.backoff_ms.saturating_mul(1 << exponent)).unwrap_or(i64::MAX);
    Ok(Some(now.saturating_add(delay)))
}

/// Stores a step's result under its lease; a failure follows the node's
/// `on_error`. A lease lost to another invocation stores nothing.
fn finish_step(
    ctx: &RequestContext,
    db: &dyn Db,
    run: &Run,
    node: &Node,
    step_id: &str,
    lease: &str,
    result: Result<NodeResult, StepFailure>,
) -> Result<(), ApiError> {
    let now = now_ms();
    let on_error = node.on_error;
    in_transaction(db, |db| -> Result<(), ApiError> {
        if let Err(failure) = &result
            && let Some(run_after) = retry_at(db, node, step_id, failure, now)?
        {
            // Back to the queue: the tick dispatches it again when due.
            db.execute(
                "UPDATE steps SET status = 'queued', run_after = ?, error = ?, lease_token = NULL, \
                 lease_expires_at = NULL WHERE id = ? AND status = 'running' AND lease_token = ?",
                &[
                    Value::Integer(run_after),
                    Value::Text(
                        json!({"code": failure.code, "message": failure.message}).to_string(),
                    ),
                    Value::from(step_id),
                    Value::from(lease),
                ],
            )?;
            return Ok(());
        }
        let (status, result, error) = match result {
            Ok(result) => (StepStatus::Completed, result, None),
            Err(failure) => {
                let error = json!({"code": failure.code, "message": failure.message});
                match on_error {
                    OnError::Fail => (StepStatus::Failed, NodeResult::default(), Some(error)),
                    OnError::Continue => {
                        (StepStatus::Completed, NodeResult::default(), Some(error))
                    }
                    OnError::Route => (
                        StepStatus::Completed,
                        NodeResult {
                            outcome: Some("error".into()),
                            output: error.clone(),
                            ..NodeResult::default()
                        },
                        Some(error),
                    ),
                }
            }
        };
        let stored = db.execute(
            "UPDATE steps SET status = ?, output = ?, outcome = ?, error = ?, tokens_in = ?, tokens_out = ?, \
             base_cost_micros = ?, billed_cost_micros = ?, finished_at = ?, lease_expires_at = NULL \
             WHERE id = ? AND status = 'running' AND lease_token = ? RETURNING id",
            &[
                Value::from(status.as_str()),
                Value::Text(result.output.to_string()),
                Value::from(result.outcome.clone()),
                Value::from(error.as_ref().map(Json::to_string)),
                Value::Integer(result.tokens_in),
                Value::Integer(result.tokens_out),
                Value::Integer(result.base_micros),
                Value::Integer(result.billed_micros),
                Value::Integer(now),
                Value::from(step_id),
                Value::from(lease),
            ],
        )?;
        if stored.rows.is_empty() {
            return Ok(());
        }
        if let Some(error) = &error {
            let data = json!({"execution_id": run.id, "workflow_id": run.workflow_id, "node_id": node.id, "error": error});
            events::emit(ctx, db, &run.org_id, "step.failed", &data)?;
        }
        if status == StepStatus::Failed {
            let failed = OrgScoped::new(db, &run.org_id).execute(
                "UPDATE executions SET status = 'failed', error = ?2, failed_node = ?3, finished_at = ?4, \
                 updated_at = ?4 WHERE org_id = ?1 AND id = ?5 AND status IN ('pending', 'running') RETURNING id",
                &[
                    Value::from(error.as_ref().map(Json::to_string)),
                    Value::from(node.id.as_str()),
                    Value::Integer(now),
                    Value::from(run.id.as_str()),
                ],
            )?;
            if !failed.rows.is_empty() {
                let data = json!({"execution_id": run.id, "workflow_id": run.workflow_id, "status": "failed", "failed_node": node.id, "error": error});
                events::emit(ctx, db, &run.org_id, "workflow.failed", &data)?;
            }
            // Steps still waiting for an invocation will never run.
            OrgScoped::new(db, &run.org_id).execute(
                &format!(
                    "UPDATE steps SET status = 'skipped', error = '{RUN_ENDED}', finished_at = ?2 \
                     WHERE org_id = ?1 AND execution_id = ?3 AND status = 'queued'"
                ),
                &[Value::Integer(now), Value::from(run.id.as_str())],
            )?;
            add_totals(db, run)?;
        }
        Ok(())
    })
}

/// Resumes a run's `wait` step for signal `name` with `payload` as its
/// output. `false` when no step of the run waits for that signal.
pub fn signal(
    ctx: &RequestContext,
    org_id: &str,
    execution_id: &str,
    name: &str,
    payload: Json,
) -> Result<bool, ApiError> {
    let db = ctx.db()?;
    let run = load_run(db, org_id, execution_id)?;
    if run.status.is_terminal() {
        return Ok(false);
    }
    let steps = load_steps(db, &run)?;
    let waiting = run.definition.nodes.iter().find_map(|node| {
        let step = steps
            .get(&node.id)
            .filter(|s| s.status == StepStatus::Waiting)?;
        match node.typed_config("config") {
            Ok(NodeConfig::Wait(wait)) if wait.signal == name => Some((node, step.id.clone())),
            _ => None,
        }
    });
    let Some((node, step_id)) = waiting else {
        return Ok(false);
    };
    let Some(lease) = claim_waiting(ctx, db, &step_id)? else {
        return Ok(false);
    };
    let result = NodeResult {
        output: payload,
        ..NodeResult::default()
    };
    finish_step(ctx, db, &run, node, &step_id, &lease, Ok(result))?;
    advance(ctx, org_id, execution_id, 0)?;
    Ok(true)
}

/// Times out `wait` steps whose time passed, in a bounded batch: each takes
/// its `timeout` edges, or fails (under its node's `on_error`) without one.
pub fn time_out_waits(ctx: &RequestContext, now: i64, limit: i64) -> Result<usize, ApiError> {
    let db = ctx.db()?;
    // Across organisations: the tick is the platform's.
    let due = db.execute(
        "SELECT s.id, s.org_id, s.execution_id, s.node_id FROM steps s \
         JOIN executions e ON e.id = s.execution_id AND e.status = 'running' \
         WHERE s.status = 'waiting' AND s.run_after <= ? ORDER BY s.run_after LIMIT ?",
        &[Value::Integer(now), Value::Integer(limit)],
    )?;
    let mut timed_out = 0;
    for row in &due.rows {
        let text = |i: usize| row[i].as_str().unwrap_or_default().to_string();
        let (step_id, org_id, execution_id, node_id) = (text(0), text(1), text(2), text(3));
        let run = load_run(db, &org_id, &execution_id)?;
        let Some(node) = run.definition.nodes.iter().find(|n| n.id == node_id) else {
            continue;
        };
        let Some(lease) = claim_waiting(ctx, db, &step_id)? else {
            continue;
        };
        let has_timeout_edge = run
            .definition
            .edges
            .iter()
            .any(|e| e.source == node_id && e.source_handle.as_deref() == Some(TIMEOUT_HANDLE));
        let result = if has_timeout_edge {
            Ok(NodeResult {
                outcome: Some(TIMEOUT_HANDLE.into()),
                ..NodeResult::default()
            })
        } else {
            Err(StepFailure::new(
                "wait_timeout",
                format!("no {node_id} signal arrived in time"),
            ))
        };
        finish_step(ctx, db, &run, node, &step_id, &lease, result)?;
        advance(ctx, &org_id, &execution_id, 0)?;
        timed_out += 1;
    }
    Ok(timed_out)
}

/// Takes a waiting step under a lease, so its signal and its timeout cannot both win.
fn claim_waiting(
    ctx: &RequestContext,
    db: &dyn Db,
    step_id: &str,
) -> Result<Option<String>, ApiError> {
    let lease = ctx.new_id();
    let now = now_ms();
    let rows = db.execute(
        "UPDATE steps SET status = 'running', lease_token = ?, lease_expires_at = ?, attempts = attempts + 1, \
         started_at = COALESCE(started_at, ?) WHERE id = ? AND status = 'waiting' RETURNING id",
        &[
            Value::from(lease.as_str()),
            Value::Integer(now + lease_ms(ctx)),
            Value::Integer(now),
            Value::from(step_id),
        ],
    )?;
    Ok((!rows.rows.is_empty()).then_some(lease))
}

/// Moves a run to `next` if its state machine allows it from where it is
/// now (409 otherwise). The update names the status it read, so of two
/// racing transitions only one succeeds.
fn transition(
    org: &OrgScoped,
    execution_id: &str,
    next: RunStatus,
    now: i64,
) -> Result<(), ApiError> {
    let current = org
        .execute(
            "SELECT status FROM executions WHERE org_id = ?1 AND id = ?2",
            &[Value::from(execution_id)],
        )?
        .into_first()
        .and_then(|row| row[0].as_str().and_then(RunStatus::parse))
        .ok_or_else(|| ApiError::NotFound(format!("execution {execution_id} not found")))?;
    if !current.can_become(next) {
        return Err(ApiError::Conflict(format!(
            "execution {execution_id} is {} and cannot become {}",
            current.as_str(),
            next.as_str()
        )));
    }
    // A run that runs again forgets how it ended; a run that ends records when.
    let moved = org.execute(
        "UPDATE executions SET status = ?2, updated_at = ?3, \
         finished_at = CASE WHEN ?2 = 'running' THEN NULL ELSE ?3 END, \
         error = CASE WHEN ?2 = 'running' THEN NULL ELSE error END, \
         failed_node = CASE WHEN ?2 = 'running' THEN NULL ELSE failed_node END, \
         output = CASE WHEN ?2 = 'running' THEN NULL ELSE output END \
         WHERE org_id = ?1 AND id = ?4 AND status = ?5 RETURNING id",
        &[
            Value::from(next.as_str()),
            Value::Integer(now),
            Value::from(execution_id),
            Value::from(current.as_str()),
        ],
    )?;
    if moved.rows.is_empty() {
        return Err(ApiError::Conflict(format!(
            "execution {execution_id} changed meanwhile; try again"
        )));
    }
    Ok(())
}

/// Cancels a run: nothing new starts, queued steps never run, running ones
/// finish but start nothing after them. 409 when the run already ended.
pub fn cancel(db: &dyn Db, org_id: &str, execution_id: &str) -> Result<(), ApiError> {
    let now = now_ms();
    in_transaction(db, |db| -> Result<(), ApiError> {
        let org = OrgScoped::new(db, org_id);
        transition(&org, execution_id, RunStatus::Cancelled, now)?;
        org.execute(
            &format!(
                "UPDATE steps SET status = 'skipped', error = '{RUN_ENDED}', finished_at = ?2 \
                 WHERE org_id = ?1 AND execution_id = ?3 AND status = 'queued'"
            ),
            &[Value::Integer(now), Value::from(execution_id)],
        )?;
        Ok(())
    })
}

/// Continues a failed or cancelled run: its failed steps and the steps that
/// never ran are forgotten, completed ones stay (their output is final and
/// billed once), and the run advances again. 409 for any other run.
pub fn retry(ctx: &RequestContext, org_id: &str, execution_id: &str) -> Result<(), ApiError> {
    let now = now_ms();
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        let org = OrgScoped::new(db, org_id);
        transition(&org, execution_id, RunStatus::Running, now)?;
        org.execute(
            &format!(
                "DELETE FROM steps WHERE org_id = ?1 AND execution_id = ?2 \
                 AND (status = 'failed' OR (status = 'skipped' AND error = '{RUN_ENDED}'))"
            ),
            &[Value::from(execution_id)],
        )?;
        Ok(())
    })?;
    advance(ctx, org_id, execution_id, 0)
}

/// Sums the run's tokens and cost from its steps.
fn add_totals(db: &dyn Db, run: &Run) -> Result<(), ApiError> {
    OrgScoped::new(db, &run.org_id).execute(
        "UPDATE executions SET \
         tokens_in = (SELECT COALESCE(SUM(tokens_in), 0) FROM steps WHERE execution_id = ?2), \
         tokens_out = (SELECT COALESCE(SUM(tokens_out), 0) FROM steps WHERE execution_id = ?2), \
         base_cost_micros = (SELECT COALESCE(SUM(base_cost_micros), 0) FROM steps WHERE execution_id = ?2), \
         billed_cost_micros = (SELECT COALESCE(SUM(billed_cost_micros), 0) FROM steps WHERE execution_id = ?2) \
         WHERE org_id = ?1 AND id = ?2",
        &[Value::from(run.id.as_str())],
    )?;
    Ok(())
}

/// Completes a run whose every node is done or skipped; its output is the
/// last output node's value (in definition order) that ran.
fn complete_run(
    ctx: &RequestContext,
    db: &dyn Db,
    run: &Run,
    steps: &HashMap<String, Step>,
) -> Result<(), ApiError> {
    let output = run
        .definition
        .nodes
        .iter()
        .filter(|n| n.node_type == "output")
        .filter_map(|n| {
            steps
                .get(&n.id)
                .filter(|s| s.status == StepStatus::Completed)
        })
        .map(|s| s.output.clone())
        .next_back()
        .unwrap_or(Json::Null);
    let now = now_ms();
    in_transaction(db, |db| -> Result<(), ApiError> {
        let completed = OrgScoped::new(db, &run.org_id).execute(
            "UPDATE executions SET status = 'completed', output = ?2, finished_at = ?3, updated_at = ?3 \
             WHERE org_id = ?1 AND id = ?4 AND status IN ('pending', 'running') RETURNING id",
            &[Value::Text(output.to_string()), Value::Integer(now), Value::from(run.id.as_str())],
        )?;
        // Emitted once: only the invocation whose update completed the run.
        if !completed.rows.is_empty() {
            let data = json!({"execution_id": run.id, "workflow_id": run.workflow_id, "status": "completed", "output": output});
            events::emit(ctx, db, &run.org_id, "workflow.completed", &data)?;
        }
        add_totals(db, run)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_output_reads_plain_and_fenced_json() {
        assert_eq!(
            structured_output(r#"{"score": 80}"#),
            Some(json!({"score": 80}))
        );
        assert_eq!(
            structured_output("```json\n{\"score\": 80}\n```"),
            Some(json!({"score": 80}))
        );
        assert_eq!(structured_output("eighty"), None);
    }
}
