//! Loop nodes: entering a loop (its items, its step, its first iteration)
//! and moving it from one iteration to the next, collecting each
//! iteration's output into the loop's output. Iterations run one after
//! another; each is a scope of its own (see [`super::scope`]).

use super::runner::{NodeResult, Run, StepFailure, finish_step};
use super::scope::{Scope, Step, child_key, template_context};
use crate::context::RequestContext;
use crate::{json_column, now_ms};
use serde_json::{Value as Json, json};
use spindle_definition::{LoopConfig, LoopMode, Node, evaluate, is_truthy};
use spindle_http::ApiError;
use spindle_store::{Db, OrgScoped, Value, in_transaction};
use std::collections::HashMap;

/// The lease a loop step holds while its body runs. It never expires: the
/// body's own steps carry the leases that recover a dead invocation.
pub(super) const LOOP_LEASE: &str = "loop";

/// Iteration rows per INSERT: three parameters each stays under the 999
/// parameters older SQLite builds allow in one statement.
const ROWS_PER_INSERT: usize = 300;

/// Enters loop `node` of `scope`: evaluates its items, stores its step
/// (running, at iteration 0) and one row per item, and returns the scope to
/// advance next: the first iteration, or `scope` itself when the loop ended
/// at once (no items, or a failure). `None` when another invocation entered it.
pub(super) fn enter(
    ctx: &RequestContext,
    db: &dyn Db,
    run: &Run,
    scope: &Scope,
    node: &Node,
    config: LoopConfig,
    context: &Json,
) -> Result<Option<String>, ApiError> {
    let items = match (config.mode, &config.items) {
        (LoopMode::ForEach, Some(expression)) => match evaluate(expression, context) {
            Ok(Json::Array(items)) if items.len() as u64 > config.max_iterations => {
                Err(StepFailure::new(
                    "loop_limit_reached",
                    format!(
                        "{} items exceed the loop's max_iterations of {}",
                        items.len(),
                        config.max_iterations
                    ),
                ))
            }
            Ok(Json::Array(items)) => Ok(Some(items)),
            Ok(other) => Err(StepFailure::new(
                "loop_items_not_a_list",
                format!("the loop's items are {other}, not a list"),
            )),
            Err(e) => Err(StepFailure::new("template_failed", e.to_string())),
        },
        _ => Ok(None),
    };
    let now = now_ms();
    let input = match &items {
        Ok(Some(items)) => json!({"items": items.len()}),
        _ => Json::Null,
    };
    let step_id = in_transaction(db, |db| -> Result<Option<String>, ApiError> {
        let inserted = db.execute(
            "INSERT INTO steps (id, org_id, execution_id, node_id, iteration, status, attempts, input, \
             lease_token, loop_index, created_at, started_at) VALUES (?, ?, ?, ?, ?, 'running', 1, ?, ?, 0, ?, ?) \
             ON CONFLICT (execution_id, node_id, iteration) DO NOTHING RETURNING id",
            &[
                Value::Text(ctx.new_id()),
                Value::from(run.org_id.as_str()),
                Value::from(run.id.as_str()),
                Value::from(node.id.as_str()),
                Value::from(scope.key.as_str()),
                Value::Text(input.to_string()),
                Value::from(LOOP_LEASE),
                Value::Integer(now),
                Value::Integer(now),
            ],
        )?;
        let Some(step_id) = inserted
            .into_first()
            .and_then(|row| row[0].as_str().map(String::from))
        else {
            return Ok(None);
        };
        match &items {
            Ok(Some(items)) => insert_items(db, &step_id, items)?,
            Ok(None) => insert_items(db, &step_id, &[Json::Null])?,
            Err(_) => {}
        }
        Ok(Some(step_id))
    })?;
    let Some(step_id) = step_id else {
        return Ok(None);
    };
    match items {
        Err(failure) => {
            finish_step(ctx, db, run, node, &step_id, LOOP_LEASE, Err(failure))?;
            Ok(Some(scope.key.clone()))
        }
        Ok(Some(items)) if items.is_empty() => {
            let result = NodeResult {
                output: json!([]),
                ..NodeResult::default()
            };
            finish_step(ctx, db, run, node, &step_id, LOOP_LEASE, Ok(result))?;
            Ok(Some(scope.key.clone()))
        }
        Ok(_) => Ok(Some(child_key(&scope.key, &node.id, 0))),
    }
}

/// Stores one iteration row per item, in as few statements as it can.
fn insert_items(db: &dyn Db, loop_step_id: &str, items: &[Json]) -> Result<(), ApiError> {
    for (chunk_number, chunk) in items.chunks(ROWS_PER_INSERT).enumerate() {
        let rows = vec!["(?, ?, ?)"; chunk.len()].join(", ");
        let mut params = Vec::with_capacity(chunk.len() * 3);
        for (offset, item) in chunk.iter().enumerate() {
            let index = chunk_number * ROWS_PER_INSERT + offset;
            params.push(Value::from(loop_step_id));
            params.push(Value::Integer(i64::try_from(index).unwrap_or(i64::MAX)));
            params.push(Value::Text(item.to_string()));
        }
        db.execute(
            &format!("INSERT INTO loop_iterations (loop_step_id, idx, item) VALUES {rows}"),
            &params,
        )?;
    }
    Ok(())
}

/// What an iteration produced: the last `output` node of the body that ran,
/// else the last body node without successors that completed (definition order).
fn iteration_output(scope: &Scope, steps: &HashMap<String, Step>) -> Json {
    let completed = |node: &Node| steps.get(&node.id).filter(|s| s.is_done());
    let is_last = |node: &&Node| !scope.edges.iter().any(|e| e.source == node.id);
    scope
        .nodes
        .iter()
        .filter(|n| n.node_type == "output")
        .filter_map(completed)
        .next_back()
        .or_else(|| {
            scope
                .nodes
                .iter()
                .filter(is_last)
                .filter_map(completed)
                .next_back()
        })
        .map_or(Json::Null, |s| s.output.clone())
}

/// Called when every node of iteration `scope` is done: records its output
/// and starts the next iteration, or finishes the loop (its output is every
/// iteration's output, in order). Returns the scope to advance next, or
/// `None` when another invocation already moved the loop on.
pub(super) fn finish_iteration(
    ctx: &RequestContext,
    db: &dyn Db,
    run: &Run,
    scope: &Scope,
    steps: &HashMap<String, Step>,
) -> Result<Option<String>, ApiError> {
    let Some(frame) = scope.frames.last() else {
        return Ok(None);
    };
    let index = frame.index;
    let Some(row) = OrgScoped::new(db, &run.org_id)
        .execute(
            "SELECT id, input FROM steps WHERE org_id = ?1 AND execution_id = ?2 AND node_id = ?3 \
             AND iteration = ?4 AND status = 'running' AND loop_index = ?5",
            &[
                Value::from(run.id.as_str()),
                Value::from(frame.node.id.as_str()),
                Value::from(frame.parent.as_str()),
                Value::Integer(index),
            ],
        )?
        .into_first()
    else {
        return Ok(None);
    };
    let loop_step = row[0].as_str().unwrap_or_default().to_string();
    let output = iteration_output(scope, steps);
    let more = match (frame.config.mode, &frame.config.until) {
        (LoopMode::ForEach, _) => {
            let count = json_column(&row[1]).and_then(|input| input["items"].as_i64());
            Ok(count.is_some_and(|count| index + 1 < count))
        }
        (LoopMode::RepeatUntil, until) => {
            let mut context = template_context(db, run, scope, steps, &frame.node)?;
            context["output"] = output.clone();
            match evaluate(until.as_deref().unwrap_or("true"), &context) {
                Ok(done) if is_truthy(&done) => Ok(false),
                Ok(_)
                    if u64::try_from(index + 1).unwrap_or(u64::MAX)
                        >= frame.config.max_iterations =>
                {
                    Err(StepFailure::new(
                        "loop_limit_reached",
                        format!(
                            "`until` was still false after max_iterations ({})",
                            frame.config.max_iterations
                        ),
                    ))
                }
                Ok(_) => Ok(true),
                Err(e) => Err(StepFailure::new("template_failed", e.to_string())),
            }
        }
    };
    let now = now_ms();
    let moved_on = in_transaction(db, |db| -> Result<bool, ApiError> {
        db.execute(
            "UPDATE loop_iterations SET output = ?, finished_at = ? WHERE loop_step_id = ? AND idx = ?",
            &[
                Value::Text(output.to_string()),
                Value::Integer(now),
                Value::from(loop_step.as_str()),
                Value::Integer(index),
            ],
        )?;
        if !matches!(more, Ok(true)) {
            return Ok(false);
        }
        if frame.config.mode == LoopMode::RepeatUntil {
            db.execute(
                "INSERT INTO loop_iterations (loop_step_id, idx) VALUES (?, ?) ON CONFLICT DO NOTHING",
                &[Value::from(loop_step.as_str()), Value::Integer(index + 1)],
            )?;
        }
        // Of two invocations finishing the same iteration, one moves the loop on.
        let moved = db.execute(
            "UPDATE steps SET loop_index = ? WHERE id = ? AND status = 'running' AND loop_index = ? RETURNING id",
            &[
                Value::Integer(index + 1),
                Value::from(loop_step.as_str()),
                Value::Integer(index),
            ],
        )?;
        Ok(!moved.rows.is_empty())
    })?;
    match more {
        Ok(true) if moved_on => Ok(Some(child_key(&frame.parent, &frame.node.id, index + 1))),
        Ok(true) => Ok(None),
        Ok(false) => {
            let outputs = db.execute(
                "SELECT output FROM loop_iterations WHERE loop_step_id = ? ORDER BY idx",
                &[Value::from(loop_step.as_str())],
            )?;
            let result = NodeResult {
                output: Json::Array(
                    outputs
                        .rows
                        .iter()
                        .map(|row| json_column(&row[0]).unwrap_or(Json::Null))
                        .collect(),
                ),
                ..NodeResult::default()
            };
            finish_step(
                ctx,
                db,
                run,
                &frame.node,
                &loop_step,
                LOOP_LEASE,
                Ok(result),
            )?;
            Ok(Some(frame.parent.clone()))
        }
        Err(failure) => {
            finish_step(
                ctx,
                db,
                run,
                &frame.node,
                &loop_step,
                LOOP_LEASE,
                Err(failure),
            )?;
            Ok(Some(frame.parent.clone()))
        }
    }
}
