//! Running workflows: starting a run, advancing it node by node, running
//! one claimed step, and finishing the run. Cheap nodes run inline; each
//! agent step is handed to an invocation of its own.

use super::dispatch::dispatch_step;
use super::events;
use super::logs::{self, Entry, LogEvent};
use super::loops;
use super::nodes::{run_cheap, run_expensive};
use super::scope::{Scope, Step, child_key, load_steps, node_states, template_context};
use super::status::{RunStatus, StepStatus};
use crate::agents::AgentRun;
use crate::context::RequestContext;
use crate::usage::metrics::record_step;
use crate::{json_column, now_ms};
use serde_json::{Value as Json, json};
use spindle_auth::Caller;
use spindle_definition::{
    Definition, DelayConfig, Node, NodeConfig, OnError, RetryPolicy, TIMEOUT_HANDLE, plan_graph,
    render,
};
use spindle_http::ApiError;
use spindle_store::{Db, OrgScoped, Value, in_transaction};
use std::collections::HashMap;

/// The error of a step that never ran because its run ended first; a retry runs it.
const RUN_ENDED: &str = r#"{"code":"run_ended","message":"the run ended before this step ran"}"#;

/// How long a claimed step's lease holds past its last renewal before
/// another invocation may take it over (a live step renews it, see `lease`).
const DEFAULT_LEASE_MS: i64 = 15_000;

/// A stored run and the definition version it is pinned to.
pub(super) struct Run {
    /// The execution's id.
    pub id: String,
    /// Its organisation.
    pub org_id: String,
    /// Its workflow.
    pub workflow_id: String,
    /// Where it stands.
    pub status: RunStatus,
    /// The trigger's output.
    pub inputs: Json,
    /// The API key that started it, billed for its agent calls.
    pub api_key_id: Option<String>,
    /// The pinned version's definition.
    pub definition: Definition,
}

/// Why a node failed, as stored on its step and run.
pub(super) struct StepFailure {
    code: String,
    message: String,
    /// What the node was given, when it got that far (see [`NodeResult::input`]).
    input: Json,
    /// Set when the step did not fail but must wait: it runs again at this time (ms).
    not_before: Option<i64>,
    /// How long the far end asked to wait before trying again (its
    /// `Retry-After`, ms): a retry waits at least that long.
    retry_after_ms: Option<u64>,
    /// An agent node's run, stored with the step: its calls are billed even
    /// when the step fails (an answer that is not the JSON asked for).
    agent_run: Option<Box<AgentRun>>,
}

impl StepFailure {
    /// A failure with a stable code and a message for people.
    pub(super) fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            input: Json::Null,
            not_before: None,
            retry_after_ms: None,
            agent_run: None,
        }
    }

    /// The same failure, with the wait the far end asked for before a retry.
    pub(super) fn with_retry_after(self, retry_after_ms: Option<u64>) -> Self {
        Self {
            retry_after_ms,
            ..self
        }
    }

    /// Not a failure: the step is queued again to run at `at` (ms).
    pub(super) fn deferred_until(self, at: i64) -> Self {
        Self {
            not_before: Some(at),
            ..self
        }
    }

    /// The same failure, with the agent run that ended in it.
    pub(super) fn with_agent_run(self, agent_run: Box<AgentRun>) -> Self {
        Self {
            agent_run: Some(agent_run),
            ..self
        }
    }

    /// The same failure, recording what the node was given.
    pub(super) fn with_input(self, input: Json) -> Self {
        Self { input, ..self }
    }
}

/// What a node produced.
#[derive(Default)]
pub(super) struct NodeResult {
    /// The step's output.
    pub output: Json,
    /// The handle it chose.
    pub outcome: Option<String>,
    /// What the node was given, for people reading the run: an agent's
    /// rendered prompt, an http node's request (null when the node has no
    /// input worth storing beyond its output).
    pub input: Json,
    /// An agent node's run (its calls, tokens and cost), stored with the step.
    pub agent_run: Option<Box<AgentRun>>,
}

/// How long a step's claim holds past its last renewal: the `step_lease_ms`
/// variable, or 15 seconds.
pub(crate) fn lease_ms(ctx: &RequestContext) -> i64 {
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
    /// A handled failure's error (`on_error: continue` or `route`).
    error: Option<String>,
}

/// The finished steps of run `execution_id` that a rerun from `from_node`
/// on `definition` keeps: every completed or skipped step, and every failure
/// its node's `on_error` handled, of a node the new definition still has
/// and that is not `from_node` or downstream of it.
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
        "SELECT node_id, status, output, outcome, error FROM steps WHERE org_id = ?1 AND execution_id = ?2 \
         AND iteration = '' AND (status IN ('completed', 'skipped') OR (status = 'failed' AND error_handled = 1))",
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
                error: row[4].as_str().map(String::from),
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
        let place = Place {
            org_id: &caller.org_id,
            execution_id: &id,
            scope: "",
        };
        insert_step(
            ctx,
            db,
            place,
            &trigger.id,
            StepStatus::Completed,
            Some(&inputs),
        )?;
        let data = json!({"execution_id": id, "workflow_id": workflow_id, "version": version, "trigger": trigger_kind});
        events::emit(ctx, db, &caller.org_id, "workflow.started", &data)?;
        let message = format!("run started by {trigger_kind} (version {version})");
        let entry = Entry::new(LogEvent::RunStarted, message).data(data);
        logs::record(db, &caller.org_id, &id, entry)?;
        let message = format!("{} received the run's inputs", trigger.id);
        let entry = Entry::new(LogEvent::StepCompleted, message).node(&trigger.id);
        logs::record(db, &caller.org_id, &id, entry)?;
        for step in reuse {
            db.execute(
                "INSERT INTO steps (id, org_id, execution_id, node_id, status, output, outcome, error, \
                 error_handled, created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (execution_id, node_id, iteration) DO NOTHING",
                &[
                    Value::Text(ctx.new_id()),
                    Value::from(caller.org_id.as_str()),
                    Value::from(id.as_str()),
                    Value::from(step.node_id.as_str()),
                    Value::from(step.status.as_str()),
                    Value::Text(step.output.to_string()),
                    Value::from(step.outcome.clone()),
                    Value::from(step.error.clone()),
                    Value::Integer(i64::from(step.status == StepStatus::Failed)),
                    Value::Integer(now),
                    Value::Integer(now),
                ],
            )?;
        }
        Ok(())
    })?;
    advance(ctx, load_run(ctx.db()?, &caller.org_id, &id)?, "", 0, None)?;
    Ok(id)
}

/// Where a new step goes: its run and its scope (`""` for the main graph).
#[derive(Clone, Copy)]
pub(super) struct Place<'a> {
    /// The run's organisation.
    pub org_id: &'a str,
    /// The run.
    pub execution_id: &'a str,
    /// The scope's key.
    pub scope: &'a str,
}

/// Stores a step of `node_id` in `place` unless it exists; its id when this call created it.
pub(super) fn insert_step(
    ctx: &RequestContext,
    db: &dyn Db,
    place: Place<'_>,
    node_id: &str,
    status: StepStatus,
    output: Option<&Json>,
) -> Result<Option<String>, ApiError> {
    let now = now_ms();
    // The (execution, node, iteration) key makes a second insert a no-op, so
    // two invocations advancing the same run create each step once.
    let rows = db.execute(
        "INSERT INTO steps (id, org_id, execution_id, node_id, iteration, status, output, created_at, finished_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (execution_id, node_id, iteration) DO NOTHING RETURNING id",
        &[
            Value::Text(ctx.new_id()),
            Value::from(place.org_id),
            Value::from(place.execution_id),
            Value::from(node_id),
            Value::from(place.scope),
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

/// Creates a step already claimed by this invocation (a chain runs it at
/// once): one statement instead of an insert and a claim. `None` when the
/// step exists already.
fn insert_claimed_step(
    ctx: &RequestContext,
    db: &dyn Db,
    place: Place<'_>,
    node_id: &str,
    now: i64,
) -> Result<Option<(String, String)>, ApiError> {
    let lease = ctx.new_id();
    let rows = db.execute(
        "INSERT INTO steps (id, org_id, execution_id, node_id, iteration, status, attempts, lease_token, \
         lease_expires_at, created_at, started_at) VALUES (?, ?, ?, ?, ?, 'running', 1, ?, ?, ?, ?) \
         ON CONFLICT (execution_id, node_id, iteration) DO NOTHING RETURNING id",
        &[
            Value::Text(ctx.new_id()),
            Value::from(place.org_id),
            Value::from(place.execution_id),
            Value::from(node_id),
            Value::from(place.scope),
            Value::from(lease.as_str()),
            Value::Integer(now + lease_ms(ctx)),
            Value::Integer(now),
            Value::Integer(now),
        ],
    )?;
    Ok(rows
        .into_first()
        .and_then(|row| row[0].as_str().map(|id| (id.to_string(), lease))))
}

/// Reads a run and its pinned definition.
pub(super) fn load_run(db: &dyn Db, org_id: &str, execution_id: &str) -> Result<Run, ApiError> {
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

/// How long one invocation runs cheap nodes inline before it hands the
/// rest to a new invocation: a long loop of cheap steps must not outlive a
/// hosted request's time limit.
const INLINE_BUDGET_MS: i64 = 5_000;

/// How long a step's invocation goes on to run the next expensive step of
/// a chain itself (no fan-out) instead of handing it on with a self request:
/// each hand-off costs a request and a fresh instance.
const CHAIN_BUDGET_MS: i64 = 10_000;

/// A step that ran in this invocation and whose result is not stored yet:
/// [`advance`] stores it in the same commit that readies what follows it.
pub(super) struct Ran {
    /// The step's node.
    pub node: Node,
    /// The step.
    pub step_id: String,
    /// The lease it ran under.
    pub lease: String,
    /// What it produced.
    pub result: Result<NodeResult, StepFailure>,
    /// When this invocation began its work (UTC ms, the host's clock): the
    /// chain and inline budgets count its own step too.
    pub started: i64,
}

/// What one transaction of [`advance`] left to do.
enum Progress {
    /// Nothing more for this invocation.
    Stop,
    /// Plan the same scope again.
    Again,
    /// Go on in another scope (a loop's iteration, or the scope around it).
    Scope(String),
    /// Run this claimed expensive step here, outside any transaction.
    Run(Box<Chained>),
}

/// An expensive step claimed to run in this invocation (a chain), with the
/// steps of its scope as planned.
struct Chained {
    node: Node,
    step_id: String,
    lease: String,
    scope_key: String,
    steps: HashMap<String, Step>,
}

/// Moves `run` (as its caller read it) forward from scope `scope_key` (`""` for the main graph):
/// stores `ran` (a step this invocation ran), skips what the planner skips,
/// runs cheap ready nodes inline, queues expensive ones and dispatches them
/// after the response, enters loops and moves them from iteration to
/// iteration, and finishes the run when nothing is left. Progress is made
/// in transactions (a few units each, briefly), so a chain of expensive
/// steps costs one commit per step: the one that stores a step's result
/// also readies and claims the next.
pub(super) fn advance(
    ctx: &RequestContext,
    mut run: Run,
    scope_key: &str,
    hops: u64,
    ran: Option<Ran>,
) -> Result<(), ApiError> {
    let db = ctx.db()?;
    let started = ran
        .as_ref()
        .map_or_else(|| ctx.now_ms(), |done| done.started);
    // Only a step's own invocation (after its response) goes on to run a chain.
    let chain = ran.is_some();
    let mut ran = ran;
    let mut key = scope_key.to_string();
    // A run is pinned to its version, so its definition, read by the
    // caller, serves every transaction; its status is read in each.
    loop {
        // A step this invocation ran and its node retries: when it may run again.
        let mut retry = None;
        let progress = in_transaction(db, |db| -> Result<Progress, ApiError> {
            if let Some(done) = ran.take() {
                let again = finish_step(
                    ctx,
                    db,
                    &run,
                    &done.node,
                    &done.step_id,
                    &done.lease,
                    done.result,
                )?;
                retry = again.map(|at| (done.node, done.step_id, at));
            }
            // Several units of progress (a cheap node, a loop's next
            // iteration) share a commit, but only briefly: the transaction
            // holds the database's write lock.
            let began = now_ms();
            for _ in 0..UNITS_PER_COMMIT {
                run.status = run_status(db, &run.org_id, &run.id)?;
                let chain = chain && ctx.now_ms() - started < CHAIN_BUDGET_MS;
                match plan_scope(ctx, db, &run, &key, hops, chain, started)? {
                    Progress::Again => {}
                    Progress::Scope(next) => key = next,
                    done => return Ok(done),
                }
                if now_ms() - began > COMMIT_EVERY_MS {
                    break;
                }
            }
            Ok(Progress::Again)
        })?;
        if let (Progress::Stop, Some((node, step_id, at))) = (&progress, retry) {
            ran = retry_in_place(ctx, &run, &key, node, step_id, at, started)?;
            if ran.is_some() {
                continue;
            }
        }
        match progress {
            Progress::Stop => return Ok(()),
            Progress::Again | Progress::Scope(_) => {}
            Progress::Run(chained) => {
                let Chained {
                    node,
                    step_id,
                    lease,
                    scope_key,
                    steps,
                } = *chained;
                // Read after the commit: the transaction holds the write lock,
                // so it keeps to the reads planning needs.
                let scope = Scope::resolve(&run.definition, &scope_key).ok_or_else(|| {
                    ApiError::Internal(format!(
                        "scope {scope_key:?} names no loop of the definition"
                    ))
                })?;
                // A failed read leaves the step claimed: its lease runs out and the tick hands it on.
                let context = template_context(db, &run, &scope, &steps, &node)?;
                let result = run_expensive(ctx, &run, &context, &node, &step_id, &lease);
                ran = Some(Ran {
                    node,
                    step_id,
                    lease,
                    result,
                    started,
                });
            }
        }
    }
}

/// Longest a step's invocation waits to run the step again itself; a later
/// retry is the tick's. The step is queued meanwhile (no lease to outlive),
/// so this bounds only how long an invocation is held.
const RETRY_IN_PLACE_MS: i64 = 5_000;

/// Runs again, in this invocation, a step of `run` (in scope `scope_key`)
/// that its node retries at `at` (ms), when that is soon (within
/// [`RETRY_IN_PLACE_MS`]). A later retry, a run that ended meanwhile, or a
/// step the tick handed to another invocation first is left to the tick
/// (`None`). `started` is when the invocation began its work.
fn retry_in_place(
    ctx: &RequestContext,
    run: &Run,
    scope_key: &str,
    node: Node,
    step_id: String,
    at: i64,
    started: i64,
) -> Result<Option<Ran>, ApiError> {
    let db = ctx.db()?;
    let wait = at - ctx.now_ms();
    if !is_expensive(&node) || wait > RETRY_IN_PLACE_MS {
        return Ok(None);
    }
    ctx.sleep_ms(u64::try_from(wait).unwrap_or(0));
    if run_status(db, &run.org_id, &run.id)?.is_terminal() {
        return Ok(None);
    }
    let Some(lease) = claim(ctx, db, &step_id, ctx.now_ms())? else {
        return Ok(None);
    };
    let scope = Scope::resolve(&run.definition, scope_key).ok_or_else(|| {
        ApiError::Internal(format!(
            "scope {scope_key:?} names no loop of the definition"
        ))
    })?;
    let steps = load_steps(db, run, scope_key)?;
    // A failed read leaves the step claimed: its lease runs out and the tick hands it on.
    let context = template_context(db, run, &scope, &steps, &node)?;
    let result = run_expensive(ctx, run, &context, &node, &step_id, &lease);
    Ok(Some(Ran {
        node,
        step_id,
        lease,
        result,
        started,
    }))
}

/// Most units of progress [`advance`] makes in one transaction.
const UNITS_PER_COMMIT: usize = 16;

/// How long [`advance`] goes on making progress in one transaction.
const COMMIT_EVERY_MS: i64 = 20;

/// A run's status as stored now.
fn run_status(db: &dyn Db, org_id: &str, execution_id: &str) -> Result<RunStatus, ApiError> {
    let status = OrgScoped::new(db, org_id)
        .execute(
            "SELECT status FROM executions WHERE org_id = ?1 AND id = ?2",
            &[Value::from(execution_id)],
        )?
        .into_first()
        .and_then(|row| row[0].as_str().and_then(RunStatus::parse));
    status.ok_or_else(|| ApiError::NotFound(format!("execution {execution_id}")))
}

/// One unit of progress in scope `key` of `run`, inside [`advance`]'s transaction.
fn plan_scope(
    ctx: &RequestContext,
    db: &dyn Db,
    run: &Run,
    key: &str,
    hops: u64,
    chain: bool,
    started: i64,
) -> Result<Progress, ApiError> {
    let (org_id, execution_id) = (run.org_id.as_str(), run.id.as_str());
    if run.status.is_terminal() {
        return Ok(Progress::Stop);
    }
    let scope = Scope::resolve(&run.definition, key).ok_or_else(|| {
        ApiError::Internal(format!("scope {key:?} names no loop of the definition"))
    })?;
    let place = Place {
        org_id,
        execution_id,
        scope: key,
    };
    let steps = load_steps(db, run, key)?;
    let plan = plan_graph(&scope.nodes, &scope.edges, &node_states(&steps));
    let now = ctx.now_ms();
    let mut progressed = false;
    for node in &plan.skip {
        progressed |= insert_step(ctx, db, place, node, StepStatus::Skipped, None)?.is_some();
    }
    for node_id in plan.ready.iter().filter(|n| !steps.contains_key(*n)) {
        let Some(node) = scope.node(node_id) else {
            continue;
        };
        match node.typed_config("config") {
            Ok(NodeConfig::Wait(wait)) => {
                // Parked until POST …/signals/:name or its timeout (the tick).
                if let Some(step_id) =
                    insert_step(ctx, db, place, node_id, StepStatus::Waiting, None)?
                {
                    db.execute(
                        "UPDATE steps SET run_after = ? WHERE id = ?",
                        &[
                            Value::Integer(wait.deadline(now)),
                            Value::from(step_id.as_str()),
                        ],
                    )?;
                }
                continue;
            }
            Ok(NodeConfig::Loop(config)) => {
                let context = template_context(db, run, &scope, &steps, node)?;
                return Ok(
                    match loops::enter(ctx, db, run, &scope, node, config, &context)? {
                        Some(next) => Progress::Scope(next),
                        None => Progress::Again,
                    },
                );
            }
            _ => {}
        }
        // A chain (one expensive step ready, no fan-out) goes on here when
        // this invocation is a step's own, after its response, and has time:
        // the step is created already claimed by it.
        let expensive_ready = plan
            .ready
            .iter()
            .filter(|n| !steps.contains_key(*n) && scope.node(n).is_some_and(is_expensive))
            .count();
        if is_expensive(node) && chain && expensive_ready == 1 {
            if let Some((step_id, lease)) = insert_claimed_step(ctx, db, place, node_id, now)? {
                return Ok(Progress::Run(Box::new(Chained {
                    node: node.clone(),
                    step_id,
                    lease,
                    scope_key: key.to_string(),
                    steps,
                })));
            }
            continue;
        }
        let Some(step_id) = insert_step(ctx, db, place, node_id, StepStatus::Queued, None)? else {
            continue;
        };
        if is_expensive(node) || now - started > INLINE_BUDGET_MS {
            let (ctx_org, step) = (org_id.to_string(), step_id.clone());
            ctx.defer(move |ctx| {
                // A failed dispatch leaves the step queued for the tick.
                if let Err(problem) = dispatch_step(ctx, &step, hops, now_ms()) {
                    eprintln!("spindle: dispatch of step {step} ({ctx_org}) failed: {problem}");
                }
            });
            continue;
        }
        let context = template_context(db, run, &scope, &steps, node)?;
        if let Some(resume_at) = delayed_until(&context, node, now) {
            // A delay parks its step until its time; the tick resumes it.
            db.execute(
                "UPDATE steps SET run_after = ? WHERE id = ?",
                &[Value::Integer(resume_at), Value::from(step_id.as_str())],
            )?;
        } else if let Some(lease) = claim(ctx, db, &step_id, now)? {
            let result = run_cheap(&context, node);
            finish_step(ctx, db, run, node, &step_id, &lease, result)?;
            progressed = true;
            break;
        }
    }
    if progressed {
        Ok(Progress::Again)
    } else if !plan.finished {
        Ok(Progress::Stop)
    } else if scope.frames.is_empty() {
        let steps = load_steps(db, run, "")?;
        complete_run(ctx, db, run, &steps)?;
        Ok(Progress::Stop)
    } else {
        // Every node of this iteration is done: the next iteration, or
        // the scope around the loop once it finished.
        Ok(
            match loops::finish_iteration(ctx, db, run, &scope, &steps)? {
                Some(next) => Progress::Scope(next),
                None => Progress::Stop,
            },
        )
    }
}

/// When a `delay` node's step may run, if that is still in the future.
fn delayed_until(context: &Json, node: &Node, now: i64) -> Option<i64> {
    let Ok(NodeConfig::Delay(delay)) = node.typed_config("config") else {
        return None;
    };
    let at = match delay {
        DelayConfig::Duration(ms) => now.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)),
        DelayConfig::Until(template) => {
            // A time that does not render or parse does not delay; the
            // validator already checked its syntax.
            let rendered = render(&Json::String(template), context).ok()?;
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

/// Where a stored step lives: its organisation, run, node and scope.
struct StepHome {
    org_id: String,
    execution_id: String,
    node_id: String,
    scope: String,
}

fn step_home(db: &dyn Db, step_id: &str) -> Result<Option<StepHome>, ApiError> {
    let rows = db.execute(
        "SELECT org_id, execution_id, node_id, iteration FROM steps WHERE id = ?",
        &[Value::from(step_id)],
    )?;
    Ok(rows.into_first().map(|row| {
        let text = |i: usize| row[i].as_str().unwrap_or_default().to_string();
        StepHome {
            org_id: text(0),
            execution_id: text(1),
            node_id: text(2),
            scope: text(3),
        }
    }))
}

/// Runs a claimed step (an expensive one, or a cheap one handed on), stores
/// its result, and advances the run from the step's scope.
pub fn run_step(
    ctx: &RequestContext,
    step_id: &str,
    lease: &str,
    hops: u64,
) -> Result<(), ApiError> {
    let started = ctx.now_ms();
    let db = ctx.db()?;
    let Some(home) = step_home(db, step_id)? else {
        return Ok(());
    };
    let run = load_run(db, &home.org_id, &home.execution_id)?;
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
    let Some(scope) = Scope::resolve(&run.definition, &home.scope) else {
        return Err(ApiError::Internal(format!(
            "step {step_id} is in scope {:?}, which names no loop",
            home.scope
        )));
    };
    let Some(node) = scope.node(&home.node_id) else {
        return Ok(());
    };
    let steps = load_steps(db, &run, &home.scope)?;
    let context = template_context(db, &run, &scope, &steps, node)?;
    // A cheap node arrives here when its invocation spent its inline budget,
    // or died between queueing and running it and the tick handed it on.
    let result = if is_expensive(node) {
        run_expensive(ctx, &run, &context, node, step_id, lease)
    } else {
        run_cheap(&context, node)
    };
    let ran = Ran {
        node: node.clone(),
        step_id: step_id.to_string(),
        lease: lease.to_string(),
        result,
        started,
    };
    advance(ctx, run, &home.scope, hops, Some(ran))
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

/// The retry policy of an agent node that sets none: a provider's 429s and
/// 5xx are common enough that an agent step is tried three times by default.
pub const DEFAULT_AGENT_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    backoff_ms: 500,
};

/// A node's retry policy: its own `retry`, else [`DEFAULT_AGENT_RETRY`] for
/// an agent node; other nodes are not retried unless they say so.
fn retry_policy(node: &Node) -> Option<RetryPolicy> {
    node.retry
        .or_else(|| (node.node_type == "agent").then_some(DEFAULT_AGENT_RETRY))
}

/// When a failed step should run again under its node's retry policy
/// (exponential from `backoff_ms`, stretched by up to a quarter by
/// `jitter` in `[0, 1)` so failed siblings do not retry in step, and never
/// sooner than the far end's `Retry-After`), or `None` when it should not:
/// the failure cannot pass on its own, or the step has had `max_attempts`
/// attempts. Each attempt is one provider call or HTTP request (an agent
/// with tools makes one per tool round), so the policy bounds them all.
fn retry_at(
    db: &dyn Db,
    node: &Node,
    step_id: &str,
    failure: &StepFailure,
    (now, jitter): (i64, f64),
) -> Result<Option<i64>, ApiError> {
    let Some(policy) = retry_policy(node) else {
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
    let delay = retry_delay_ms(policy, attempts, failure.retry_after_ms, jitter);
    Ok(Some(
        now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX)),
    ))
}

/// How long after attempt number `attempts` (1 for the first) a retry under
/// `policy` waits: `backoff_ms × 2^(attempts − 1)`, stretched by up to a
/// quarter by `jitter` in `[0, 1)`, and never less than `retry_after_ms`
/// (the far end's `Retry-After`, already capped by its reader).
fn retry_delay_ms(
    policy: RetryPolicy,
    attempts: i64,
    retry_after_ms: Option<u64>,
    jitter: f64,
) -> u64 {
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(16);
    let delay = policy.backoff_ms.saturating_mul(1 << exponent);
    let stretch = (delay as f64 * jitter.clamp(0.0, 1.0) / 4.0) as u64;
    delay
        .saturating_add(stretch)
        .max(retry_after_ms.unwrap_or(0))
}

/// Appends the attempt that just ended to step `step_id`'s attempt log:
/// its number, whether it succeeded, its error, and how long until the
/// next attempt when there is one. Only agent and http steps keep a log:
/// theirs are the attempts a retry policy counts.
fn log_attempt(
    db: &dyn Db,
    step_id: &str,
    error: Option<&Json>,
    next_at: Option<i64>,
    now: i64,
) -> Result<(), ApiError> {
    let Some(row) = db
        .execute(
            "SELECT attempts, attempt_log FROM steps WHERE id = ?",
            &[Value::from(step_id)],
        )?
        .into_first()
    else {
        return Ok(());
    };
    let mut log = match json_column(&row[1]) {
        Some(Json::Array(entries)) => entries,
        _ => Vec::new(),
    };
    log.push(json!({
        "attempt": row[0].as_i64(),
        "status": if error.is_some() { "failed" } else { "succeeded" },
        "error": error,
        "retry_in_ms": next_at.map(|at| (at - now).max(0)),
        "finished_at": crate::timestamp(now),
    }));
    db.execute(
        "UPDATE steps SET attempt_log = ? WHERE id = ?",
        &[
            Value::Text(Json::Array(log).to_string()),
            Value::from(step_id),
        ],
    )?;
    Ok(())
}

/// Stores a step's result under its lease; a failure its node retries
/// queues the step again, and returns when it may run (ms); other failures
/// follow the node's `on_error`. A lease lost to another invocation stores
/// nothing.
pub(super) fn finish_step(
    ctx: &RequestContext,
    db: &dyn Db,
    run: &Run,
    node: &Node,
    step_id: &str,
    lease: &str,
    mut result: Result<NodeResult, StepFailure>,
) -> Result<Option<i64>, ApiError> {
    let (now, jitter) = (ctx.now_ms(), ctx.random_unit());
    let agent_run = match &mut result {
        Ok(result) => result.agent_run.take(),
        Err(failure) => failure.agent_run.take(),
    };
    // Stored only while the lease holds, with the step's own change: a
    // step that lost its lease runs again, and that run is the one billed.
    let store_agent_run = |db: &dyn Db| match &agent_run {
        Some(agent_run) => agent_run.store(ctx, db),
        None => Ok(()),
    };
    let (tokens_in, tokens_out, base_micros, billed_micros) =
        agent_run.as_ref().map_or((0, 0, 0, 0), |run| run.totals());
    let on_error = node.on_error;
    let input = match &result {
        Ok(result) => &result.input,
        Err(failure) => &failure.input,
    };
    // NULL keeps what is stored (a loop step's item count).
    let input = Value::from((!input.is_null()).then(|| input.to_string()));
    let keeps_log = is_expensive(node);
    in_transaction(db, |db| -> Result<Option<i64>, ApiError> {
        if let Err(StepFailure {
            not_before: Some(run_after),
            message,
            ..
        }) = &result
        {
            // Back to the queue for its slot, without using up an attempt.
            let deferred = db.execute(
                "UPDATE steps SET status = 'queued', run_after = ?, attempts = MAX(attempts - 1, 0), \
                 lease_token = NULL, lease_expires_at = NULL \
                 WHERE id = ? AND status = 'running' AND lease_token = ? RETURNING id",
                &[
                    Value::Integer(*run_after),
                    Value::from(step_id),
                    Value::from(lease),
                ],
            )?;
            if !deferred.rows.is_empty() {
                store_agent_run(db)?;
                let data = json!({"run_after": crate::timestamp(*run_after)});
                let entry = Entry::new(LogEvent::StepDeferred, message.clone()).node(&node.id);
                logs::record(db, &run.org_id, &run.id, entry.data(data))?;
            }
            return Ok(None);
        }
        if let Err(failure) = &result
            && let Some(run_after) = retry_at(db, node, step_id, failure, (now, jitter))?
        {
            // Back to the queue: the tick dispatches it again when due.
            let requeued = db.execute(
                "UPDATE steps SET status = 'queued', run_after = ?, error = ?, lease_token = NULL, \
                 lease_expires_at = NULL, input = COALESCE(?, input) \
                 WHERE id = ? AND status = 'running' AND lease_token = ? RETURNING id",
                &[
                    Value::Integer(run_after),
                    Value::Text(
                        json!({"code": failure.code, "message": failure.message}).to_string(),
                    ),
                    input.clone(),
                    Value::from(step_id),
                    Value::from(lease),
                ],
            )?;
            if requeued.rows.is_empty() {
                return Ok(None);
            }
            store_agent_run(db)?;
            let error = json!({"code": failure.code, "message": failure.message});
            log_attempt(db, step_id, Some(&error), Some(run_after), now)?;
            let message = format!("{} failed ({}); retrying", node.id, failure.message);
            let data = json!({"error": error, "run_after": crate::timestamp(run_after)});
            let entry = Entry::new(LogEvent::StepRetrying, message).node(&node.id);
            logs::record(db, &run.org_id, &run.id, entry.data(data))?;
            return Ok(Some(run_after));
        }
        // A failure stays `failed` on its step; under `on_error: continue`
        // or `route` it is handled and the run goes on past it.
        let (status, result, error) = match result {
            Ok(result) => (StepStatus::Completed, result, None),
            Err(failure) => {
                let error = json!({"code": failure.code, "message": failure.message});
                let result = match on_error {
                    OnError::Fail | OnError::Continue => NodeResult::default(),
                    OnError::Route => NodeResult {
                        outcome: Some("error".into()),
                        output: error.clone(),
                        ..NodeResult::default()
                    },
                };
                (StepStatus::Failed, result, Some(error))
            }
        };
        let fails_run = status == StepStatus::Failed && on_error == OnError::Fail;
        let error_handled = status == StepStatus::Failed && !fails_run;
        let stored = db.execute(
            "UPDATE steps SET status = ?, output = ?, outcome = ?, error = ?, error_handled = ?, tokens_in = ?, \
             tokens_out = ?, base_cost_micros = ?, billed_cost_micros = ?, finished_at = ?, \
             lease_expires_at = NULL, input = COALESCE(?, input) \
             WHERE id = ? AND status = 'running' AND lease_token = ? RETURNING started_at",
            &[
                Value::from(status.as_str()),
                Value::Text(result.output.to_string()),
                Value::from(result.outcome.clone()),
                Value::from(error.as_ref().map(Json::to_string)),
                Value::Integer(i64::from(error_handled)),
                Value::Integer(tokens_in),
                Value::Integer(tokens_out),
                Value::Integer(base_micros),
                Value::Integer(billed_micros),
                Value::Integer(now),
                input.clone(),
                Value::from(step_id),
                Value::from(lease),
            ],
        )?;
        let Some(stored) = stored.into_first() else {
            return Ok(None);
        };
        store_agent_run(db)?;
        if keeps_log {
            log_attempt(db, step_id, error.as_ref(), None, now)?;
        }
        // A step that was running when its run ended (a sibling failed, or the run
        // was cancelled) still finishes, and its provider call is billed: the run's
        // totals, summed when it ended, must include it.
        add_totals_if_ended(db, run)?;
        let duration = stored[0].as_i64().map(|started| now - started);
        record_step(db, &node.node_type, status.as_str(), duration)?;
        let outcome = result.outcome.as_deref();
        let entry = logs::step_finished(&node.id, error.as_ref(), fails_run, outcome);
        logs::record(db, &run.org_id, &run.id, entry)?;
        if let Some(error) = &error {
            let data = json!({"execution_id": run.id, "workflow_id": run.workflow_id, "node_id": node.id, "error": error});
            events::emit(ctx, db, &run.org_id, "step.failed", &data)?;
        }
        if fails_run {
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
                let message = format!("run failed at {}", node.id);
                let entry = Entry::new(LogEvent::RunFailed, message).node(&node.id);
                let entry = entry.data(json!({"error": error}));
                logs::record(db, &run.org_id, &run.id, entry)?;
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
        Ok(None)
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
    // Waiting steps of any scope (a wait may sit in a loop's body).
    let rows = OrgScoped::new(db, org_id).execute(
        "SELECT id, node_id, iteration FROM steps WHERE org_id = ?1 AND execution_id = ?2 \
         AND status = 'waiting' ORDER BY created_at",
        &[Value::from(execution_id)],
    )?;
    for row in &rows.rows {
        let text = |i: usize| row[i].as_str().unwrap_or_default().to_string();
        let (step_id, node_id, scope_key) = (text(0), text(1), text(2));
        let Some(scope) = Scope::resolve(&run.definition, &scope_key) else {
            continue;
        };
        let Some(node) = scope.node(&node_id) else {
            continue;
        };
        if !matches!(node.typed_config("config"), Ok(NodeConfig::Wait(wait)) if wait.signal == name)
        {
            continue;
        }
        let Some(lease) = claim_waiting(ctx, db, &step_id)? else {
            continue;
        };
        let result = NodeResult {
            output: payload,
            ..NodeResult::default()
        };
        finish_step(ctx, db, &run, node, &step_id, &lease, Ok(result))?;
        advance(ctx, run, &scope_key, 0, None)?;
        return Ok(true);
    }
    Ok(false)
}

/// Times out `wait` steps whose time passed, in a bounded batch: each takes
/// its `timeout` edges, or fails (under its node's `on_error`) without one.
pub fn time_out_waits(ctx: &RequestContext, now: i64, limit: i64) -> Result<usize, ApiError> {
    let db = ctx.db()?;
    // Across organisations: the tick is the platform's.
    let due = db.execute(
        "SELECT s.id, s.org_id, s.execution_id, s.node_id, s.iteration FROM steps s \
         JOIN executions e ON e.id = s.execution_id AND e.status = 'running' \
         WHERE s.status = 'waiting' AND s.run_after <= ? ORDER BY s.run_after LIMIT ?",
        &[Value::Integer(now), Value::Integer(limit)],
    )?;
    let mut timed_out = 0;
    for row in &due.rows {
        let text = |i: usize| row[i].as_str().unwrap_or_default().to_string();
        let (step_id, org_id, execution_id) = (text(0), text(1), text(2));
        let (node_id, scope_key) = (text(3), text(4));
        let run = load_run(db, &org_id, &execution_id)?;
        let Some(scope) = Scope::resolve(&run.definition, &scope_key) else {
            continue;
        };
        let Some(node) = scope.node(&node_id) else {
            continue;
        };
        let Some(lease) = claim_waiting(ctx, db, &step_id)? else {
            continue;
        };
        let has_timeout_edge = scope
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
        advance(ctx, run, &scope_key, 0, None)?;
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
        let entry = Entry::new(LogEvent::RunCancelled, "run cancelled");
        logs::record(db, org_id, execution_id, entry)?;
        org.execute(
            &format!(
                "UPDATE steps SET status = 'skipped', error = '{RUN_ENDED}', finished_at = ?2 \
                 WHERE org_id = ?1 AND execution_id = ?3 AND status = 'queued'"
            ),
            &[Value::Integer(now), Value::from(execution_id)],
        )?;
        // What ran before the cancel is billed: the run's totals (steps still
        // running add theirs when they finish).
        sum_totals(db, org_id, execution_id, "")
    })
}

/// Continues a failed or cancelled run: its failed steps and the steps that
/// never ran are forgotten, completed ones and failures their node's
/// `on_error` handled stay (their output is final and billed once), and the
/// run advances again. 409 for any other run.
pub fn retry(ctx: &RequestContext, org_id: &str, execution_id: &str) -> Result<(), ApiError> {
    let now = now_ms();
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        let org = OrgScoped::new(db, org_id);
        transition(&org, execution_id, RunStatus::Running, now)?;
        let message = "run retried: its failed steps and the steps that never ran run again";
        let entry = Entry::new(LogEvent::RunRetried, message);
        logs::record(db, org_id, execution_id, entry)?;
        // The failed steps go, and what their provider calls cost stays the run's.
        org.execute(
            "UPDATE executions SET \
             retried_tokens_in = retried_tokens_in + (SELECT COALESCE(SUM(tokens_in), 0) FROM steps s \
               WHERE s.execution_id = ?2 AND s.status = 'failed' AND s.error_handled = 0), \
             retried_tokens_out = retried_tokens_out + (SELECT COALESCE(SUM(tokens_out), 0) FROM steps s \
               WHERE s.execution_id = ?2 AND s.status = 'failed' AND s.error_handled = 0), \
             retried_base_cost_micros = retried_base_cost_micros + (SELECT COALESCE(SUM(base_cost_micros), 0) \
               FROM steps s WHERE s.execution_id = ?2 AND s.status = 'failed' AND s.error_handled = 0), \
             retried_billed_cost_micros = retried_billed_cost_micros + (SELECT COALESCE(SUM(billed_cost_micros), 0) \
               FROM steps s WHERE s.execution_id = ?2 AND s.status = 'failed' AND s.error_handled = 0) \
             WHERE org_id = ?1 AND id = ?2",
            &[Value::from(execution_id)],
        )?;
        // A failed loop starts again from its first iteration, whose
        // completed steps are reused, so its old iteration rows go too.
        org.execute(
            "DELETE FROM loop_iterations WHERE loop_step_id IN (SELECT id FROM steps \
             WHERE org_id = ?1 AND execution_id = ?2 AND status = 'failed' AND error_handled = 0 \
             AND loop_index IS NOT NULL)",
            &[Value::from(execution_id)],
        )?;
        org.execute(
            &format!(
                "DELETE FROM steps WHERE org_id = ?1 AND execution_id = ?2 \
                 AND ((status = 'failed' AND error_handled = 0) OR (status = 'skipped' AND error = '{RUN_ENDED}'))"
            ),
            &[Value::from(execution_id)],
        )?;
        Ok(())
    })?;
    resume(ctx, org_id, execution_id, 0)
}

/// Advances every scope of a run that may have work: the running iteration
/// of each open loop (innermost first, so a finished iteration moves its
/// loop on), then the main graph. Used when a run continues (retry) or was
/// left without an invocation (the tick's sweep).
pub fn resume(
    ctx: &RequestContext,
    org_id: &str,
    execution_id: &str,
    hops: u64,
) -> Result<(), ApiError> {
    let db = ctx.db()?;
    let open = OrgScoped::new(db, org_id).execute(
        "SELECT iteration, node_id, loop_index FROM steps WHERE org_id = ?1 AND execution_id = ?2 \
         AND status = 'running' AND loop_index IS NOT NULL ORDER BY length(iteration) DESC",
        &[Value::from(execution_id)],
    )?;
    for row in &open.rows {
        let key = child_key(
            row[0].as_str().unwrap_or_default(),
            row[1].as_str().unwrap_or_default(),
            row[2].as_i64().unwrap_or_default(),
        );
        advance(ctx, load_run(db, org_id, execution_id)?, &key, hops, None)?;
    }
    advance(ctx, load_run(db, org_id, execution_id)?, "", hops, None)
}

/// Resumes, in a bounded batch, running runs that have no live step: an
/// invocation died after finishing a step and before queueing what came
/// next. Resuming a run that is merely between two steps is harmless:
/// every insert and claim is idempotent.
pub fn resume_stalled(ctx: &RequestContext, limit: i64) -> Result<usize, ApiError> {
    // Across organisations: the tick is the platform's. An open loop step
    // (running, no lease) is not live: its iteration's steps are.
    let stalled = ctx.db()?.execute(
        "SELECT e.org_id, e.id FROM executions e WHERE e.status = 'running' AND NOT EXISTS \
         (SELECT 1 FROM steps s WHERE s.execution_id = e.id AND s.status IN ('queued', 'running', 'waiting') \
         AND NOT (s.status = 'running' AND s.lease_expires_at IS NULL)) LIMIT ?",
        &[Value::Integer(limit)],
    )?;
    for row in &stalled.rows {
        let (org_id, execution_id) = (
            row[0].as_str().unwrap_or_default(),
            row[1].as_str().unwrap_or_default(),
        );
        resume(ctx, org_id, execution_id, 0)?;
    }
    Ok(stalled.rows.len())
}

/// Sums the run's tokens and cost from its steps.
fn add_totals(db: &dyn Db, run: &Run) -> Result<(), ApiError> {
    sum_totals(db, &run.org_id, &run.id, "")
}

/// Sums the run's tokens and cost from its steps if the run has already ended:
/// for a step stored after its run failed (a sibling failed meanwhile) or was
/// cancelled, whose cost the sum taken when the run ended did not include.
fn add_totals_if_ended(db: &dyn Db, run: &Run) -> Result<(), ApiError> {
    sum_totals(
        db,
        &run.org_id,
        &run.id,
        " AND status IN ('failed', 'cancelled')",
    )
}

fn sum_totals(db: &dyn Db, org_id: &str, execution_id: &str, only: &str) -> Result<(), ApiError> {
    OrgScoped::new(db, org_id).execute(
        &format!(
            "UPDATE executions SET \
             tokens_in = retried_tokens_in + (SELECT COALESCE(SUM(tokens_in), 0) FROM steps WHERE execution_id = ?2), \
             tokens_out = retried_tokens_out + (SELECT COALESCE(SUM(tokens_out), 0) FROM steps WHERE execution_id = ?2), \
             base_cost_micros = retried_base_cost_micros + \
               (SELECT COALESCE(SUM(base_cost_micros), 0) FROM steps WHERE execution_id = ?2), \
             billed_cost_micros = retried_billed_cost_micros + \
               (SELECT COALESCE(SUM(billed_cost_micros), 0) FROM steps WHERE execution_id = ?2) \
             WHERE org_id = ?1 AND id = ?2{only}"
        ),
        &[Value::from(execution_id)],
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
        .filter_map(|n| steps.get(&n.id).filter(|s| s.is_done()))
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
            let entry = Entry::new(LogEvent::RunCompleted, "run completed");
            logs::record(db, &run.org_id, &run.id, entry)?;
        }
        add_totals(db, run)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Backends;
    use spindle_auth::Role;
    use spindle_definition::parse_definition;
    use spindle_http::{OutboundError, OutboundRequest, OutboundResponse};
    use spindle_store::{DbError, KvError, KvStore, MemoryKv, RusqliteDb};
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;
    use std::rc::Rc;

    /// Where a self request that hands a step on goes.
    const DISPATCH_URL: &str = "http://self.alt/internal/steps/";

    /// How long each `http` node's request takes, by URL, in the host's time.
    type Durations = Rc<RefCell<HashMap<String, i64>>>;

    /// What a URL answers next, in order: a status and its `Retry-After`
    /// (seconds), if any. A URL with nothing left answers 200.
    type Answers = Rc<RefCell<HashMap<String, VecDeque<(u16, Option<&'static str>)>>>>;

    /// Where the agents of [`Harness::agent`] are called (an
    /// OpenAI-compatible server at `openai_compatible_base_url`).
    const PROVIDER_URL: &str = "http://provider.test/v1/chat/completions";

    /// The provider's answer to a call that succeeds.
    const PROVIDER_ANSWER: &[u8] = br#"{"choices": [{"message": {"role": "assistant", "content": "done"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 12, "completion_tokens": 3}}"#;

    /// SQLite in memory, a clock that moves only while an `http` node's
    /// request is answered (by as long as that URL is set to take) and while
    /// the engine sleeps (each sleep recorded), and every outgoing request's
    /// URL recorded: a self request is a step handed on, any other URL a
    /// node that ran here. [`PROVIDER_URL`] answers like a model.
    struct Host {
        start: i64,
        elapsed: Rc<Cell<i64>>,
        durations: Durations,
        answers: Answers,
        sent: Rc<RefCell<Vec<String>>>,
        slept: Rc<RefCell<Vec<u64>>>,
    }

    impl Backends for Host {
        fn open_db(&self) -> Result<Box<dyn Db>, DbError> {
            Ok(Box::new(RusqliteDb::memory()))
        }
        fn open_kv(&self) -> Result<Box<dyn KvStore>, KvError> {
            Ok(Box::new(MemoryKv::default()))
        }
        fn variable(&self, name: &str) -> Option<String> {
            match name {
                "internal_key" => Some("unit-test-internal-key-of-32-characters".into()),
                "openai_compatible_base_url" => Some("http://provider.test/v1".into()),
                _ => None,
            }
        }
        fn random_bytes(&self, buffer: &mut [u8]) {
            getrandom::fill(buffer).expect("the OS's random source");
        }
        fn send(&self, request: &OutboundRequest) -> Result<OutboundResponse, OutboundError> {
            self.sent.borrow_mut().push(request.url.clone());
            if request.url.starts_with(DISPATCH_URL) {
                return Ok(OutboundResponse {
                    status: 202,
                    headers: Vec::new(),
                    body: b"{\"ok\": true}".to_vec(),
                });
            }
            let takes = self.durations.borrow().get(&request.url).copied();
            self.elapsed.set(self.elapsed.get() + takes.unwrap_or(0));
            let (status, retry_after) = self
                .answers
                .borrow_mut()
                .get_mut(&request.url)
                .and_then(VecDeque::pop_front)
                .unwrap_or((200, None));
            let body: &[u8] = match (request.url == PROVIDER_URL, status < 300) {
                (true, true) => PROVIDER_ANSWER,
                (true, false) => br#"{"error": {"message": "busy"}}"#,
                (false, _) => b"{\"ok\": true}",
            };
            Ok(OutboundResponse {
                status,
                headers: retry_after
                    .map(|secs| vec![("retry-after".to_string(), secs.to_string())])
                    .unwrap_or_default(),
                body: body.to_vec(),
            })
        }
        fn sleep_ms(&self, ms: u64) {
            self.slept.borrow_mut().push(ms);
            self.elapsed
                .set(self.elapsed.get() + i64::try_from(ms).unwrap());
        }
        fn now_ms(&self) -> i64 {
            self.start + self.elapsed.get()
        }
    }

    /// One run of a workflow on a [`Host`] (and any more started with
    /// [`Harness::another_run`]).
    struct Harness {
        ctx: RequestContext,
        definition: Definition,
        start: i64,
        elapsed: Rc<Cell<i64>>,
        durations: Durations,
        answers: Answers,
        sent: Rc<RefCell<Vec<String>>>,
        slept: Rc<RefCell<Vec<u64>>>,
        execution_id: String,
    }

    /// An `agent` node `id` of the agent [`Harness::agent`] stores.
    fn agent(id: &str) -> Json {
        json!({"id": id, "type": "agent", "config": {"agent_id": "ag1", "prompt": "summarise"}})
    }

    /// An `http` node `id` that GETs `http://api.test/<id>`.
    fn http(id: &str) -> Json {
        json!({"id": id, "type": "http", "config": {"method": "GET", "url": url(id)}})
    }

    fn url(node_id: &str) -> String {
        format!("http://api.test/{node_id}")
    }

    impl Harness {
        /// Starts a run of the workflow with `nodes` and `edges` (as
        /// `[source, target]`), the trigger's successors queued and handed on.
        fn start(nodes: Vec<Json>, edges: &[(&str, &str)]) -> Self {
            let edges: Vec<Json> = edges
                .iter()
                .map(|(s, t)| json!({"source": s, "target": t}))
                .collect();
            let definition = parse_definition(&json!({"nodes": nodes, "edges": edges}))
                .expect("a valid definition");
            let host = Host {
                start: crate::now_ms(),
                elapsed: Rc::new(Cell::new(0)),
                durations: Rc::default(),
                answers: Rc::default(),
                sent: Rc::default(),
                slept: Rc::default(),
            };
            let (start, elapsed) = (host.start, host.elapsed.clone());
            let (durations, answers) = (host.durations.clone(), host.answers.clone());
            let (sent, slept) = (host.sent.clone(), host.slept.clone());
            let ctx = RequestContext::new(Box::new(host));
            let db = ctx.db().unwrap();
            db.execute(
                "INSERT INTO organizations (id, name, created_at, updated_at) VALUES ('o1', 'one', 0, 0)",
                &[],
            )
            .unwrap();
            db.execute(
                "INSERT INTO workflows (id, org_id, name, webhook_secret, created_at, updated_at) \
                 VALUES ('w1', 'o1', 'flow', 'whsec_x', 0, 0)",
                &[],
            )
            .unwrap();
            db.execute(
                "INSERT INTO workflow_versions (org_id, workflow_id, version, definition, created_at) \
                 VALUES ('o1', 'w1', 1, ?, 0)",
                &[Value::Text(serde_json::to_string(&definition).unwrap())],
            )
            .unwrap();
            let mut harness = Self {
                ctx,
                definition,
                start,
                elapsed,
                durations,
                answers,
                sent,
                slept,
                execution_id: String::new(),
            };
            harness.execution_id = harness.another_run();
            harness
        }

        /// Starts one more run of the workflow, its first steps queued and
        /// handed on; its id.
        fn another_run(&self) -> String {
            let caller = Caller {
                org_id: "o1".into(),
                subject: "test".into(),
                role: Role::Member,
                api_key_id: None,
            };
            let start = RunStart {
                workflow_id: "w1",
                version: 1,
                definition: &self.definition,
                inputs: json!({}),
                trigger_kind: "api",
                idempotency: None,
                reuse: &[],
            };
            let execution_id = start_run(&self.ctx, &caller, start).unwrap();
            self.ctx.run_deferred();
            execution_id
        }

        /// Stores agent `ag1`, on the OpenAI-compatible provider at [`PROVIDER_URL`].
        fn agent(&self) {
            let spec = json!({"name": "summariser", "model_config": {"provider": "openai_compatible", "model": "local"}});
            self.ctx
                .db()
                .unwrap()
                .execute(
                    "INSERT INTO agents (id, org_id, name, provider, model, config, created_at, updated_at) \
                     VALUES ('ag1', 'o1', 'summariser', 'openai_compatible', 'local', ?, 0, 0)",
                    &[Value::Text(spec.to_string())],
                )
                .unwrap();
        }

        /// Limits the organisation's calls to the agents' provider to
        /// `requests_per_minute`.
        fn limit_provider(&self, requests_per_minute: i64) {
            self.ctx
                .db()
                .unwrap()
                .execute(
                    "INSERT INTO provider_limits (org_id, provider, requests_per_minute, updated_at) \
                     VALUES ('o1', 'openai_compatible', ?, 0)",
                    &[Value::Integer(requests_per_minute)],
                )
                .unwrap();
        }

        /// Makes `url` answer `replies` (status, `Retry-After` seconds) in turn.
        fn answers(&self, url: &str, replies: &[(u16, Option<&'static str>)]) {
            self.answers
                .borrow_mut()
                .insert(url.to_string(), replies.iter().copied().collect());
        }

        /// The host's time now.
        fn now(&self) -> i64 {
            self.ctx.now_ms()
        }

        /// Moves the host's clock to `at`.
        fn move_clock_to(&self, at: i64) {
            assert!(at >= self.now(), "the host's clock only moves on");
            self.elapsed.set(at - self.start);
        }

        /// The sleeps since the last call (ms).
        fn slept(&self) -> Vec<u64> {
            self.slept.borrow_mut().drain(..).collect()
        }

        /// One tick at the host's time now, as `POST /internal/tick` runs it.
        fn tick(&self) -> Json {
            crate::engine::run_tick(&self.ctx, 0, self.now()).unwrap()
        }

        /// Column `column` of step `step_id`.
        fn column(&self, step_id: &str, column: &str) -> Value {
            let row = self
                .ctx
                .db()
                .unwrap()
                .execute(
                    &format!("SELECT {column} FROM steps WHERE id = ?"),
                    &[Value::from(step_id)],
                )
                .unwrap()
                .into_first()
                .expect("the step exists");
            row[0].clone()
        }

        /// Every column of step `step_id`.
        fn row(&self, step_id: &str) -> Vec<Value> {
            self.ctx
                .db()
                .unwrap()
                .execute("SELECT * FROM steps WHERE id = ?", &[Value::from(step_id)])
                .unwrap()
                .into_first()
                .expect("the step exists")
        }

        /// The step's `attempt_log`, `[]` when it has none.
        fn attempt_log(&self, step_id: &str) -> Vec<Json> {
            match json_column(&self.column(step_id, "attempt_log")) {
                Some(Json::Array(entries)) => entries,
                _ => Vec::new(),
            }
        }

        /// How many rows `sql` (a `SELECT COUNT(*)`) counts.
        fn count(&self, sql: &str, params: &[Value]) -> i64 {
            self.ctx
                .db()
                .unwrap()
                .execute(sql, params)
                .unwrap()
                .scalar_i64()
                .unwrap()
        }

        /// `(event, node_id, data)` of each log entry of run `execution_id`, in order.
        fn logs(&self, execution_id: &str) -> Vec<(String, Option<String>, Json)> {
            self.ctx
                .db()
                .unwrap()
                .execute(
                    "SELECT event, node_id, data FROM execution_logs WHERE execution_id = ? ORDER BY id",
                    &[Value::from(execution_id)],
                )
                .unwrap()
                .rows
                .iter()
                .map(|row| {
                    (
                        row[0].as_str().unwrap().to_string(),
                        row[1].as_str().map(String::from),
                        json_column(&row[2]).unwrap(),
                    )
                })
                .collect()
        }

        /// Makes the request of `http` node `node_id` take `ms` of the host's time.
        fn takes(&self, node_id: &str, ms: i64) {
            self.durations.borrow_mut().insert(url(node_id), ms);
        }

        /// The URLs sent since the last call.
        fn sent(&self) -> Vec<String> {
            self.sent.borrow_mut().drain(..).collect()
        }

        /// `node_id`'s step: its id and status, if it has one.
        fn step(&self, node_id: &str) -> Option<(String, String)> {
            self.step_of(&self.execution_id, node_id)
        }

        /// `node_id`'s step in run `execution_id`: its id and status, if it has one.
        fn step_of(&self, execution_id: &str, node_id: &str) -> Option<(String, String)> {
            let rows = self
                .ctx
                .db()
                .unwrap()
                .execute(
                    "SELECT id, status FROM steps WHERE execution_id = ? AND node_id = ?",
                    &[Value::from(execution_id), Value::from(node_id)],
                )
                .unwrap();
            rows.into_first().map(|row| {
                let text = |i: usize| row[i].as_str().unwrap().to_string();
                (text(0), text(1))
            })
        }

        fn status(&self, node_id: &str) -> Option<String> {
            self.step(node_id).map(|(_, status)| status)
        }

        /// The self request that hands `node_id`'s step to a new invocation.
        fn dispatch_of(&self, node_id: &str) -> String {
            let (id, _) = self.step(node_id).expect("the node has a step");
            format!("{DISPATCH_URL}{id}")
        }

        /// Does what `POST /internal/steps/:id` does for `node_id`'s queued
        /// step: claims it, runs it and what follows it, then what it left
        /// for after its response (the self requests).
        fn invocation_of(&self, node_id: &str) {
            let (step_id, _) = self.step(node_id).expect("the node has a step");
            self.invocation_of_step(&step_id);
        }

        /// Does what `POST /internal/steps/:id` does for step `step_id`.
        fn invocation_of_step(&self, step_id: &str) {
            let db = self.ctx.db().unwrap();
            let lease = claim(&self.ctx, db, step_id, self.ctx.now_ms())
                .unwrap()
                .expect("the step is queued and due");
            run_step(&self.ctx, step_id, &lease, 0).unwrap();
            self.ctx.run_deferred();
        }

        fn run_status(&self) -> RunStatus {
            run_status(self.ctx.db().unwrap(), "o1", &self.execution_id).unwrap()
        }
    }

    /// trigger → a → b → c, three `http` nodes (no cheap node after them,
    /// whose own 5 s budget would hand it on).
    fn chain_of_three() -> Harness {
        let harness = Harness::start(
            vec![
                json!({"id": "start", "type": "trigger"}),
                http("a"),
                http("b"),
                http("c"),
            ],
            &[("start", "a"), ("a", "b"), ("b", "c")],
        );
        // The run's own request hands the first step on.
        assert_eq!(harness.sent(), [harness.dispatch_of("a")]);
        harness
    }

    /// The budget README gives a step's invocation to go on with a chain.
    const CHAIN_BUDGET: i64 = 10_000;

    #[test]
    fn a_chain_step_runs_the_next_one_itself_while_its_invocation_has_worked_under_ten_seconds() {
        let harness = chain_of_three();
        harness.takes("b", CHAIN_BUDGET - 1);
        harness.invocation_of("a");
        // b ran at once; b took just under the budget, so c ran here too.
        assert_eq!(harness.sent(), [url("a"), url("b"), url("c")]);
        for node in ["a", "b", "c"] {
            assert_eq!(harness.status(node).as_deref(), Some("completed"), "{node}");
        }
        assert_eq!(harness.run_status(), RunStatus::Completed);
    }

    #[test]
    fn a_chain_hands_the_next_step_to_a_new_invocation_after_ten_seconds() {
        let harness = chain_of_three();
        harness.takes("b", CHAIN_BUDGET);
        harness.invocation_of("a");
        // b ran here; after it the invocation had worked 10 s, so c goes by self request.
        assert_eq!(
            harness.sent(),
            [url("a"), url("b"), harness.dispatch_of("c")]
        );
        assert_eq!(harness.status("b").as_deref(), Some("completed"));
        assert_eq!(harness.status("c").as_deref(), Some("queued"));
        assert_eq!(harness.run_status(), RunStatus::Running);
        // The new invocation runs c and finishes the run.
        harness.invocation_of("c");
        assert_eq!(harness.sent(), [url("c")]);
        assert_eq!(harness.run_status(), RunStatus::Completed);
    }

    /// README: "A step's invocation goes on to run the next step itself while
    /// … it has been working for less than 10 s": its own step counts.
    #[test]
    fn a_step_that_took_ten_seconds_hands_the_next_one_on() {
        let harness = chain_of_three();
        harness.takes("a", CHAIN_BUDGET);
        harness.invocation_of("a");
        assert_eq!(harness.sent(), [url("a"), harness.dispatch_of("b")]);
    }

    #[test]
    fn a_fan_out_hands_each_branch_to_an_invocation_of_its_own() {
        let harness = Harness::start(
            vec![
                json!({"id": "start", "type": "trigger"}),
                http("a"),
                http("left"),
                http("right"),
            ],
            &[("start", "a"), ("a", "left"), ("a", "right")],
        );
        assert_eq!(harness.sent(), [harness.dispatch_of("a")]);
        harness.invocation_of("a");
        let mut sent = harness.sent();
        sent.sort();
        let mut expected = vec![
            url("a"),
            harness.dispatch_of("left"),
            harness.dispatch_of("right"),
        ];
        expected.sort();
        assert_eq!(sent, expected, "neither branch ran here");
        assert_eq!(harness.status("left").as_deref(), Some("queued"));
        assert_eq!(harness.status("right").as_deref(), Some("queued"));
    }

    /// trigger → a → b → shape → done: two `http` nodes, then two cheap ones.
    fn cheap_after_a_chain() -> Harness {
        let harness = Harness::start(
            vec![
                json!({"id": "start", "type": "trigger"}),
                http("a"),
                http("b"),
                json!({"id": "shape", "type": "transform", "config": {"template": {"ok": "{{ steps.b.output.body.ok }}"}}}),
                json!({"id": "done", "type": "output", "config": {"value": "{{ steps.shape.output }}"}}),
            ],
            &[
                ("start", "a"),
                ("a", "b"),
                ("b", "shape"),
                ("shape", "done"),
            ],
        );
        assert_eq!(harness.sent(), [harness.dispatch_of("a")]);
        harness
    }

    #[test]
    fn cheap_nodes_run_inline_while_the_invocation_has_worked_under_five_seconds() {
        let harness = cheap_after_a_chain();
        harness.takes("b", 4_000);
        harness.invocation_of("a");
        assert_eq!(harness.sent(), [url("a"), url("b")]);
        assert_eq!(harness.status("shape").as_deref(), Some("completed"));
        assert_eq!(harness.status("done").as_deref(), Some("completed"));
        assert_eq!(harness.run_status(), RunStatus::Completed);
    }

    #[test]
    fn a_cheap_node_after_five_seconds_of_work_goes_to_a_new_invocation() {
        let harness = cheap_after_a_chain();
        harness.takes("b", 6_000);
        harness.invocation_of("a");
        // Still inside the chain's budget, but past the inline budget: the
        // cheap node is queued and handed on, not run here.
        assert_eq!(
            harness.sent(),
            [url("a"), url("b"), harness.dispatch_of("shape")]
        );
        assert_eq!(harness.status("shape").as_deref(), Some("queued"));
        assert_eq!(harness.status("done"), None);
        // The new invocation runs it, and the cheap node after it inline.
        harness.invocation_of("shape");
        assert_eq!(harness.sent(), Vec::<String>::new());
        assert_eq!(harness.status("done").as_deref(), Some("completed"));
        assert_eq!(harness.run_status(), RunStatus::Completed);
    }

    /// trigger → ask, one agent step (agent `ag1` stored), queued and handed on.
    fn one_agent_step() -> Harness {
        let harness = Harness::start(
            vec![json!({"id": "start", "type": "trigger"}), agent("ask")],
            &[("start", "ask")],
        );
        harness.agent();
        assert_eq!(harness.sent(), [harness.dispatch_of("ask")]);
        harness
    }

    /// README (Execution model): "A renewal that finds the step taken by
    /// another invocation changes nothing, and the result of the invocation
    /// that lost the step is not stored"; usage records are stored "only
    /// [by] the invocation that still holds the step's lease".
    #[test]
    fn an_invocation_that_lost_its_steps_lease_stores_neither_its_result_nor_its_usage() {
        let harness = one_agent_step();
        let (step_id, _) = harness.step("ask").unwrap();
        let db = harness.ctx.db().unwrap();
        let lost = claim(&harness.ctx, db, &step_id, harness.now())
            .unwrap()
            .expect("the step is queued and due");
        // Its instance seems dead: the 15 s lease runs out and the tick's new
        // invocation claims the step.
        harness.move_clock_to(harness.now() + 15_001);
        let held = claim(&harness.ctx, db, &step_id, harness.now())
            .unwrap()
            .expect("a step whose lease expired is claimed again");
        let before = harness.row(&step_id);
        // The first invocation was alive after all, and its call comes back.
        run_step(&harness.ctx, &step_id, &lost, 0).unwrap();
        harness.ctx.run_deferred();
        assert_eq!(harness.sent(), [PROVIDER_URL], "the call was made");
        assert_eq!(
            harness.row(&step_id),
            before,
            "the step is as the new claim left it"
        );
        let usage = || {
            harness.count(
                "SELECT COUNT(*) FROM usage_records WHERE step_id = ?",
                &[Value::from(step_id.as_str())],
            )
        };
        assert_eq!(usage(), 0);
        assert_eq!(
            harness.count("SELECT COUNT(*) FROM agent_executions", &[]),
            0
        );
        assert_eq!(harness.run_status(), RunStatus::Running);
        // The invocation holding the lease stores its result and its one usage record.
        run_step(&harness.ctx, &step_id, &held, 0).unwrap();
        harness.ctx.run_deferred();
        assert_eq!(harness.sent(), [PROVIDER_URL]);
        assert_eq!(harness.status("ask").as_deref(), Some("completed"));
        assert_eq!(usage(), 1);
        assert_eq!(harness.run_status(), RunStatus::Completed);
    }

    /// README (Provider limits): a workflow step's slot further away than
    /// "5 s (and a quarter of `step_lease_ms`)" books nothing: "the step is
    /// not sent but queued again for its slot (`step.deferred` in the run's
    /// log; no attempt is used) and the tick picks it up".
    #[test]
    fn a_step_whose_provider_slot_is_a_minute_away_is_deferred_to_it_without_using_an_attempt() {
        let harness = one_agent_step();
        harness.limit_provider(1);
        let second = harness.another_run();
        let (step, _) = harness.step_of(&second, "ask").unwrap();
        assert_eq!(harness.sent(), [format!("{DISPATCH_URL}{step}")]);
        // Admission books slots by the system clock.
        let before = crate::now_ms();
        harness.invocation_of("ask");
        assert_eq!(harness.sent(), [PROVIDER_URL]);
        assert_eq!(harness.status("ask").as_deref(), Some("completed"));
        // The minute's one request is taken: the second run's step is not sent.
        harness.invocation_of_step(&step);
        let after = crate::now_ms();
        assert_eq!(harness.sent(), Vec::<String>::new());
        assert_eq!(
            harness.slept(),
            Vec::<u64>::new(),
            "it did not wait in place"
        );
        assert_eq!(harness.column(&step, "status").as_str(), Some("queued"));
        assert_eq!(harness.column(&step, "attempts").as_i64(), Some(0));
        assert_eq!(harness.attempt_log(&step), Vec::<Json>::new());
        assert_eq!(
            harness.count(
                "SELECT COUNT(*) FROM usage_records WHERE step_id = ?",
                &[Value::from(step.as_str())]
            ),
            0
        );
        // Its slot: 60 s / 1 request a minute after the first run's call.
        let run_after = harness.column(&step, "run_after").as_i64().unwrap();
        assert!(
            (before + 60_000..=after + 60_000).contains(&run_after),
            "run_after {run_after} is not a minute after the first call ({before}..{after})"
        );
        let deferred: Vec<_> = harness
            .logs(&second)
            .into_iter()
            .filter(|(event, _, _)| event == "step.deferred")
            .collect();
        assert_eq!(deferred.len(), 1, "{deferred:?}");
        assert_eq!(deferred[0].1.as_deref(), Some("ask"));
        assert_eq!(deferred[0].2["run_after"], crate::timestamp(run_after));
        // The tick leaves it queued until its slot, then hands it on.
        harness.move_clock_to(run_after - 1);
        assert_eq!(harness.tick()["redispatched"], 0);
        assert_eq!(harness.sent(), Vec::<String>::new());
        harness.move_clock_to(run_after);
        assert_eq!(harness.tick()["redispatched"], 1);
        assert_eq!(harness.sent(), [format!("{DISPATCH_URL}{step}")]);
        // Admission's clock (the system's) has not moved: the minute passes
        // for the limiter by moving its booked slot back instead.
        harness
            .ctx
            .db()
            .unwrap()
            .execute(
                "UPDATE provider_limits SET request_tat = request_tat - 60000",
                &[],
            )
            .unwrap();
        harness.invocation_of_step(&step);
        assert_eq!(harness.sent(), [PROVIDER_URL]);
        assert_eq!(harness.column(&step, "status").as_str(), Some("completed"));
        assert_eq!(harness.column(&step, "attempts").as_i64(), Some(1));
        let log = harness.attempt_log(&step);
        assert_eq!(log.len(), 1, "{log:?}");
        assert_eq!(log[0]["attempt"], 1);
        assert_eq!(log[0]["status"], "succeeded");
        assert_eq!(
            run_status(harness.ctx.db().unwrap(), "o1", &second).unwrap(),
            RunStatus::Completed
        );
    }

    /// A run's agent step, claimed and run just after another call booked
    /// the organisation's slot under a limit of `requests_per_minute`.
    fn agent_step_after_a_booked_slot(requests_per_minute: i64) -> (Harness, String) {
        let harness = one_agent_step();
        harness.limit_provider(requests_per_minute);
        let db = harness.ctx.db().unwrap();
        let booked = crate::usage::admission::admit(
            db,
            "o1",
            "openai_compatible",
            1,
            crate::now_ms(),
            u64::MAX,
        )
        .unwrap();
        assert_eq!(
            booked,
            crate::usage::admission::Admission::Go { wait_ms: 0 }
        );
        let (step, _) = harness.step("ask").unwrap();
        harness.invocation_of_step(&step);
        (harness, step)
    }

    /// README (Execution model): "A step waits in place for its provider
    /// slot (admission) at most a quarter of its lease; beyond that it is
    /// deferred to its slot": a quarter of the default 15 s lease is 3.75 s,
    /// tighter than the 5 s a step may otherwise wait.
    #[test]
    fn a_step_waits_in_place_for_a_slot_within_a_quarter_of_its_lease_and_is_deferred_past_it() {
        // 16 a minute: the next slot is 60 s / 16 = 3.75 s away.
        let (harness, step) = agent_step_after_a_booked_slot(16);
        let waited: u64 = harness.slept().iter().sum();
        assert!((2_750..=3_750).contains(&waited), "waited {waited} ms");
        assert_eq!(harness.sent(), [PROVIDER_URL]);
        assert_eq!(harness.column(&step, "status").as_str(), Some("completed"));
        assert_eq!(harness.column(&step, "attempts").as_i64(), Some(1));
        assert!(
            !harness
                .logs(&harness.execution_id)
                .iter()
                .any(|(event, _, _)| event == "step.deferred")
        );
        // 15 a minute: 4 s away, past the quarter (and inside 5 s).
        let (harness, step) = agent_step_after_a_booked_slot(15);
        assert_eq!(harness.slept(), Vec::<u64>::new());
        assert_eq!(harness.sent(), Vec::<String>::new());
        assert_eq!(harness.column(&step, "status").as_str(), Some("queued"));
        assert_eq!(harness.column(&step, "attempts").as_i64(), Some(0));
        assert!(
            harness
                .logs(&harness.execution_id)
                .iter()
                .any(|(event, _, _)| event == "step.deferred")
        );
    }

    /// trigger → a, an `http` node retried under `{max_attempts: 3, backoff_ms: 100}`.
    fn retried_http_step() -> Harness {
        let mut node = http("a");
        node["retry"] = json!({"max_attempts": 3, "backoff_ms": 100});
        let harness = Harness::start(
            vec![json!({"id": "start", "type": "trigger"}), node],
            &[("start", "a")],
        );
        assert_eq!(harness.sent(), [harness.dispatch_of("a")]);
        harness
    }

    /// README (Retry policy): "The step's own invocation waits for a retry
    /// due within 5 s and runs it itself".
    #[test]
    fn a_retry_due_in_five_seconds_runs_in_the_same_invocation() {
        let harness = retried_http_step();
        // A 503 asking for 5 s: the retry is due exactly 5 s later.
        harness.answers(&url("a"), &[(503, Some("5")), (200, None)]);
        let (step, _) = harness.step("a").unwrap();
        harness.invocation_of("a");
        assert_eq!(harness.sent(), [url("a"), url("a")], "not handed on");
        assert_eq!(harness.slept(), [5_000]);
        assert_eq!(harness.status("a").as_deref(), Some("completed"));
        assert_eq!(harness.column(&step, "attempts").as_i64(), Some(2));
        let log = harness.attempt_log(&step);
        assert_eq!(log.len(), 2, "{log:?}");
        assert_eq!(log[0]["status"], "failed");
        assert_eq!(log[0]["retry_in_ms"], 5_000);
        assert_eq!(log[1]["status"], "succeeded");
        assert_eq!(harness.run_status(), RunStatus::Completed);
    }

    /// README (Retry policy): "… a later one is the tick's."
    #[test]
    fn a_retry_due_in_six_seconds_is_left_queued_for_the_tick() {
        let harness = retried_http_step();
        harness.answers(&url("a"), &[(503, Some("6")), (200, None)]);
        let (step, _) = harness.step("a").unwrap();
        let failed_at = harness.now();
        harness.invocation_of("a");
        assert_eq!(harness.sent(), [url("a")], "no second request here");
        assert_eq!(harness.slept(), Vec::<u64>::new());
        assert_eq!(harness.status("a").as_deref(), Some("queued"));
        assert_eq!(
            harness.column(&step, "run_after").as_i64(),
            Some(failed_at + 6_000)
        );
        harness.move_clock_to(failed_at + 5_999);
        assert_eq!(harness.tick()["redispatched"], 0);
        assert_eq!(harness.sent(), Vec::<String>::new());
        harness.move_clock_to(failed_at + 6_000);
        assert_eq!(harness.tick()["redispatched"], 1);
        assert_eq!(harness.sent(), [harness.dispatch_of("a")]);
        harness.invocation_of("a");
        assert_eq!(harness.sent(), [url("a")]);
        assert_eq!(harness.status("a").as_deref(), Some("completed"));
        assert_eq!(harness.column(&step, "attempts").as_i64(), Some(2));
        assert_eq!(harness.run_status(), RunStatus::Completed);
    }

    /// README (Retry policy): a retry comes "`backoff_ms × 2^(attempt-1)`
    /// later, stretched by a random 0–25 % … and never sooner than the far
    /// end's `Retry-After`".
    #[test]
    fn a_retry_waits_the_backoff_doubled_per_attempt_stretched_by_under_a_quarter() {
        let policy = RetryPolicy {
            max_attempts: 5,
            backoff_ms: 1_000,
        };
        // After attempt n: 1000 × 2^(n−1), and with the largest jitter just
        // under a quarter more.
        for (attempts, least, most) in [
            (1, 1_000, 1_249),
            (2, 2_000, 2_499),
            (3, 4_000, 4_999),
            (4, 8_000, 9_999),
        ] {
            assert_eq!(retry_delay_ms(policy, attempts, None, 0.0), least);
            assert_eq!(retry_delay_ms(policy, attempts, None, 0.999_999), most);
        }
        // A Retry-After shorter than the backoff does not shorten it; a longer one is the wait.
        assert_eq!(retry_delay_ms(policy, 3, Some(1_000), 0.0), 4_000);
        assert_eq!(retry_delay_ms(policy, 3, Some(6_000), 0.999_999), 6_000);
    }

    /// README (Retry policy): "never sooner than the far end's
    /// `Retry-After` (at most 60 s)", for an `http` node's server and an
    /// agent's provider alike.
    #[test]
    fn a_retry_after_of_an_hour_queues_the_retry_sixty_seconds_later() {
        let harness = retried_http_step();
        harness.answers(&url("a"), &[(429, Some("3600"))]);
        let (step, _) = harness.step("a").unwrap();
        let failed_at = harness.now();
        harness.invocation_of("a");
        assert_eq!(harness.status("a").as_deref(), Some("queued"));
        assert_eq!(
            harness.column(&step, "run_after").as_i64(),
            Some(failed_at + 60_000)
        );
        assert_eq!(harness.attempt_log(&step)[0]["retry_in_ms"], 60_000);

        let harness = one_agent_step();
        harness.answers(PROVIDER_URL, &[(429, Some("3600"))]);
        let (step, _) = harness.step("ask").unwrap();
        let failed_at = harness.now();
        harness.invocation_of("ask");
        assert_eq!(harness.sent(), [PROVIDER_URL]);
        assert_eq!(harness.status("ask").as_deref(), Some("queued"));
        assert_eq!(
            harness.column(&step, "run_after").as_i64(),
            Some(failed_at + 60_000)
        );
        assert_eq!(harness.attempt_log(&step)[0]["retry_in_ms"], 60_000);
    }

    /// README (Workflows): "With an `Idempotency-Key` header the same key
    /// and inputs answer the same run for 24 h (`idempotent-replayed: true`)".
    #[test]
    fn an_idempotency_key_answers_its_run_for_24_hours_and_starts_a_new_one_after() {
        const DAY_MS: i64 = 24 * 60 * 60 * 1000;
        const SECRET: &str = "sk_unitTestSecretOfFortyThreeBase62Characters00";
        let harness = Harness::start(
            vec![
                json!({"id": "start", "type": "trigger"}),
                json!({"id": "done", "type": "output", "config": {"value": "{{ trigger.n }}"}}),
            ],
            &[("start", "done")],
        );
        let db = harness.ctx.db().unwrap();
        db.execute(
            "INSERT INTO api_keys (id, org_id, name, role, prefix, key_hash, created_at) \
             VALUES ('k1', 'o1', 'ci', 'member', 'sk_unitTest', ?, 0)",
            &[Value::Text(spindle_auth::hash_api_key(SECRET))],
        )
        .unwrap();
        let router = crate::engine::router();
        // POST /api/v1/workflows/w1/execute with the key: the run's id, and
        // whether the answer was a replay.
        let execute = || {
            let mut request = spindle_http::ApiRequest::new(
                spindle_http::Method::Post,
                "/api/v1/workflows/w1/execute",
            );
            request.headers.extend([
                ("authorization".to_string(), format!("Bearer {SECRET}")),
                ("idempotency-key".to_string(), "nightly-report".to_string()),
                ("content-type".to_string(), "application/json".to_string()),
            ]);
            request.body = br#"{"inputs": {"n": 1}}"#.to_vec();
            let response = router.handle(&harness.ctx, &request);
            let body: Json = serde_json::from_slice(&response.body).unwrap();
            assert_eq!(response.status, 202, "{body}");
            let replayed = response.header("idempotent-replayed") == Some("true");
            (body["execution_id"].as_str().unwrap().to_string(), replayed)
        };
        // Makes run `id` as old as `ms`.
        let age = |id: &str, ms: i64| {
            db.execute(
                "UPDATE executions SET created_at = ? WHERE id = ?",
                &[Value::Integer(crate::now_ms() - ms), Value::from(id)],
            )
            .unwrap();
        };
        let (first, replayed) = execute();
        assert!(!replayed);
        // A minute short of 24 h: the same run.
        age(&first, DAY_MS - 60_000);
        assert_eq!(execute(), (first.clone(), true));
        // A minute past: a new run, which the key answers from then on.
        age(&first, DAY_MS + 60_000);
        let (second, replayed) = execute();
        assert_ne!(second, first);
        assert!(!replayed);
        assert_eq!(execute(), (second.clone(), true));
        assert_eq!(
            harness.count(
                "SELECT COUNT(*) FROM executions WHERE id IN (?, ?)",
                &[Value::from(first.as_str()), Value::from(second.as_str())]
            ),
            2
        );
    }
}
