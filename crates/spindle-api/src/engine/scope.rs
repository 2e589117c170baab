//! Scopes: the main graph of a run, or one iteration of a loop's body. A
//! step belongs to exactly one scope (its `iteration` column), and the
//! engine plans, reads and advances one scope at a time, so a step's cost
//! does not grow with the iterations that ran before it.

use super::runner::Run;
use super::status::StepStatus;
use crate::json_column;
use serde_json::{Map, Value as Json, json};
use spindle_definition::{Definition, Edge, LoopConfig, Node, NodeConfig, NodeState, edge_taken};
use spindle_http::ApiError;
use spindle_store::{Db, OrgScoped, Value};
use std::collections::HashMap;

/// One stored step of a scope.
pub(super) struct Step {
    /// The step's id.
    pub id: String,
    /// Where it stands.
    pub status: StepStatus,
    /// The handle its node chose.
    pub outcome: Option<String>,
    /// Its output (null until it completed).
    pub output: Json,
    /// A failure its node's `on_error` (`continue` or `route`) handled: the
    /// step stays `failed` and the run goes on past it.
    pub error_handled: bool,
}

impl Step {
    /// Whether the step is over and what follows it may run: it completed,
    /// or it failed and its node's `on_error` let the run go on.
    pub fn is_done(&self) -> bool {
        self.status == StepStatus::Completed
            || (self.status == StepStatus::Failed && self.error_handled)
    }
}

/// A loop around a scope: which loop node, its config, and the iteration.
#[derive(Clone)]
pub(super) struct Frame {
    /// The loop node.
    pub node: Node,
    /// Its parsed config (mode, items, until, body).
    pub config: LoopConfig,
    /// The iteration this scope is.
    pub index: i64,
    /// The key of the scope the loop node itself lives in.
    pub parent: String,
    /// The edges of that scope (for the loop's own `previous_output`).
    pub parent_edges: Vec<Edge>,
}

/// The nodes and edges one scope plans over, and the loops around it.
pub(super) struct Scope {
    /// `''` for the main graph, `loop#i` (nested: `outer#2/inner#0`) for an iteration.
    pub key: String,
    /// The scope's nodes.
    pub nodes: Vec<Node>,
    /// The scope's edges.
    pub edges: Vec<Edge>,
    /// The enclosing loops, outermost first (empty for the main graph).
    pub frames: Vec<Frame>,
}

impl Scope {
    /// The run's main graph.
    pub fn main(definition: &Definition) -> Self {
        Self {
            key: String::new(),
            nodes: definition.nodes.clone(),
            edges: definition.edges.clone(),
            frames: Vec::new(),
        }
    }

    /// The scope a stored key names, or `None` when the definition has no
    /// such loop (a key is only ever written by [`Scope::child`]).
    pub fn resolve(definition: &Definition, key: &str) -> Option<Self> {
        let mut scope = Self::main(definition);
        let mut rest = key;
        while !rest.is_empty() {
            // Node ids are free text, so find the loop whose `id#` starts
            // the rest rather than splitting on a separator.
            let (node, config, index, tail) = scope.nodes.iter().find_map(|node| {
                let after = rest.strip_prefix(node.id.as_str())?.strip_prefix('#')?;
                let digits = after.find('/').unwrap_or(after.len());
                let index: i64 = after[..digits].parse().ok()?;
                let Ok(NodeConfig::Loop(config)) = node.typed_config("config") else {
                    return None;
                };
                let tail = after[digits..].strip_prefix('/').unwrap_or("");
                Some((node.clone(), config, index, tail))
            })?;
            scope = scope.child(&node, config, index);
            rest = tail;
        }
        Some(scope)
    }

    /// Iteration `index` of loop `node` (whose config is `config`) in this scope.
    pub fn child(&self, node: &Node, config: LoopConfig, index: i64) -> Self {
        let key = child_key(&self.key, &node.id, index);
        let mut frames = self.frames.clone();
        let (nodes, edges) = (config.body.nodes.clone(), config.body.edges.clone());
        frames.push(Frame {
            node: node.clone(),
            config,
            index,
            parent: self.key.clone(),
            parent_edges: self.edges.clone(),
        });
        Self {
            key,
            nodes,
            edges,
            frames,
        }
    }

    /// The scope's node with id `id`.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

/// The key of iteration `index` of loop `loop_node` in scope `parent`.
pub(super) fn child_key(parent: &str, loop_node: &str, index: i64) -> String {
    if parent.is_empty() {
        format!("{loop_node}#{index}")
    } else {
        format!("{parent}/{loop_node}#{index}")
    }
}

/// The steps of one scope of a run, by node.
pub(super) fn load_steps(
    db: &dyn Db,
    run: &Run,
    scope_key: &str,
) -> Result<HashMap<String, Step>, ApiError> {
    let rows = OrgScoped::new(db, &run.org_id).execute(
        "SELECT node_id, id, status, outcome, output, error_handled FROM steps \
         WHERE org_id = ?1 AND execution_id = ?2 AND iteration = ?3",
        &[Value::from(run.id.as_str()), Value::from(scope_key)],
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
                error_handled: row[5].as_i64().unwrap_or(0) != 0,
            };
            (row[0].as_str().unwrap_or_default().to_string(), step)
        })
        .collect())
}

/// What the planner needs from a scope's steps.
pub(super) fn node_states(steps: &HashMap<String, Step>) -> HashMap<String, NodeState> {
    steps
        .iter()
        .filter_map(|(node, step)| {
            let state = match step.status {
                _ if step.is_done() => NodeState::Done {
                    handle: step.outcome.clone(),
                },
                StepStatus::Skipped => NodeState::Skipped,
                _ => return None,
            };
            Some((node.clone(), state))
        })
        .collect()
}

/// The output of the last taken input of `node_id` along `edges`, in
/// definition order; `None` when no input edge was taken.
fn taken_input(edges: &[Edge], steps: &HashMap<String, Step>, node_id: &str) -> Option<Json> {
    edges
        .iter()
        .filter(|e| e.target == node_id)
        .filter_map(|e| {
            let source = steps.get(&e.source)?;
            (source.is_done() && edge_taken(e, source.outcome.as_deref()))
                .then(|| source.output.clone())
        })
        .next_back()
}

/// The item of iteration `index` of loop step `loop_step_id`, and the output
/// of the iteration before it (null for the first).
fn iteration_values(db: &dyn Db, loop_step_id: &str, index: i64) -> Result<(Json, Json), ApiError> {
    let rows = db.execute(
        "SELECT idx, item, output FROM loop_iterations WHERE loop_step_id = ? AND idx IN (?, ?)",
        &[
            Value::from(loop_step_id),
            Value::Integer(index),
            Value::Integer(index - 1),
        ],
    )?;
    let (mut item, mut previous) = (Json::Null, Json::Null);
    for row in &rows.rows {
        if row[0].as_i64() == Some(index) {
            item = json_column(&row[1]).unwrap_or(Json::Null);
        } else {
            previous = json_column(&row[2]).unwrap_or(Json::Null);
        }
    }
    Ok((item, previous))
}

/// The template context of `node` in `scope`: the trigger's inputs, the
/// outputs of the finished steps of this scope and the scopes around it, the
/// run's variables and id, and `previous_output` (the output of the node's
/// last taken input). Inside a loop body it adds `item` and `index` of the
/// innermost loop and `loops.<loop id>.{item, index}` of every enclosing one;
/// a body's first nodes see the previous iteration's output as
/// `previous_output` (the loop's own input on the first iteration).
pub(super) fn template_context(
    db: &dyn Db,
    run: &Run,
    scope: &Scope,
    steps: &HashMap<String, Step>,
    node: &Node,
) -> Result<Json, ApiError> {
    let mut outputs = Map::new();
    let mut add = |steps: &HashMap<String, Step>| {
        for (id, step) in steps.iter().filter(|(_, s)| s.is_done()) {
            outputs.insert(
                id.clone(),
                json!({"output": step.output, "status": step.status.as_str()}),
            );
        }
    };
    let mut loops = Map::new();
    let (mut item, mut index, mut entry_input) = (Json::Null, Json::Null, Json::Null);
    for frame in &scope.frames {
        let around = load_steps(db, run, &frame.parent)?;
        add(&around);
        let loop_step = around
            .get(&frame.node.id)
            .ok_or_else(|| ApiError::Internal(format!("loop {} has no step", frame.node.id)))?;
        let (this_item, previous) = iteration_values(db, &loop_step.id, frame.index)?;
        entry_input = if frame.index > 0 {
            previous
        } else {
            taken_input(&frame.parent_edges, &around, &frame.node.id).unwrap_or(Json::Null)
        };
        loops.insert(
            frame.node.id.clone(),
            json!({"item": this_item, "index": frame.index}),
        );
        (item, index) = (this_item, json!(frame.index));
    }
    add(steps);
    let is_entry = !scope.edges.iter().any(|e| e.target == node.id);
    let previous = match taken_input(&scope.edges, steps, &node.id) {
        Some(output) => output,
        None if is_entry => entry_input,
        None => Json::Null,
    };
    let mut context = json!({
        "trigger": run.inputs,
        "steps": outputs,
        "previous_output": previous,
        "variables": run.definition.variables,
        "execution": {"id": run.id},
    });
    if !scope.frames.is_empty() {
        context["item"] = item;
        context["index"] = index;
        context["loops"] = Json::Object(loops);
    }
    Ok(context)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_definition::parse_definition;

    fn nested() -> Definition {
        parse_definition(&json!({
            "nodes": [
                {"id": "t", "type": "trigger"},
                {"id": "outer#x", "type": "loop", "config": {"mode": "for_each", "items": "[1, 2]", "body": {
                    "nodes": [{"id": "in/ner", "type": "loop", "config": {"mode": "repeat_until", "until": "true", "body": {
                        "nodes": [{"id": "leaf", "type": "transform", "config": {"template": "{{ item }}"}}]
                    }}}]
                }}}
            ],
            "edges": [{"source": "t", "target": "outer#x"}]
        }))
        .expect("a valid definition")
    }

    #[test]
    fn nested_scope_keys_resolve_even_when_ids_contain_separators() {
        let def = nested();
        let main = Scope::main(&def);
        let Ok(NodeConfig::Loop(outer)) = main.nodes[1].typed_config("config") else {
            panic!("a loop")
        };
        let first = main.child(&main.nodes[1].clone(), outer, 1);
        assert_eq!(first.key, "outer#x#1");
        let Ok(NodeConfig::Loop(inner)) = first.nodes[0].typed_config("config") else {
            panic!("a loop")
        };
        let second = first.child(&first.nodes[0].clone(), inner, 12);
        assert_eq!(second.key, "outer#x#1/in/ner#12");
        let resolved = Scope::resolve(&def, &second.key).expect("resolves");
        assert_eq!(resolved.key, second.key);
        assert_eq!(resolved.nodes[0].id, "leaf");
        assert_eq!(
            resolved
                .frames
                .iter()
                .map(|f| (f.node.id.as_str(), f.index, f.parent.as_str()))
                .collect::<Vec<_>>(),
            [("outer#x", 1, ""), ("in/ner", 12, "outer#x#1")]
        );
    }

    #[test]
    fn keys_naming_no_loop_do_not_resolve() {
        let def = nested();
        for key in [
            "t#0",
            "outer#x",
            "outer#x#one",
            "nope#1",
            "outer#x#1/leaf#0",
        ] {
            assert!(Scope::resolve(&def, key).is_none(), "{key}");
        }
        assert!(Scope::resolve(&def, "").is_some());
    }
}
