//! What one run of a workflow will cost, before it runs
//! (`POST /api/v1/usage/estimate`).
//!
//! The rule, per agent node (README.md, "Pricing"):
//! - input tokens per model call: `ceil(characters / 4)` of the agent's
//!   system prompt, of the node's prompt rendered with the given inputs and
//!   the definition's variables, and of the agent's tool definitions, plus
//!   [`MESSAGE_OVERHEAD_TOKENS`] for each of the two messages;
//! - output tokens per call: `max_tokens` (the node's, else the agent's, else
//!   [`DEFAULT_MAX_OUTPUT_TOKENS`]) at worst; expected, the node's mean over
//!   the workflow's last [`HISTORY_RUNS`] completed runs, else
//!   `min(max_tokens, TYPICAL_OUTPUT_TOKENS)`;
//! - `min` counts input only, `expected` input and expected output, `worst
//!   case` `max_tokens` on every model turn ([`MAX_TOOL_ROUNDS`] with tools)
//!   and every loop iteration (`max_iterations`).

use super::pricing::{PriceSource, effective_price, markup_percent};
use crate::agents::{AgentSpec, MAX_TOOL_ROUNDS};
use crate::auth::authenticate;
use crate::context::RequestContext;
use crate::fetch_one;
use serde_json::{Map, Value as Json, json};
use spindle_auth::Role;
use spindle_definition::{
    Definition, LoopMode, Node, NodeConfig, evaluate, parse_definition, referenced_agents, render,
    validate,
};
use spindle_http::{ApiError, ApiRequest, ApiResponse, ErrorDetail, Params};
use spindle_providers::memory::MESSAGE_OVERHEAD_TOKENS;
use spindle_providers::pricing::{Cost, Price, cost_of, format_micros};
use spindle_providers::tools::builtin_tool;
use spindle_providers::{Usage, estimate_tokens};
use spindle_store::{OrgScoped, Value};
use std::collections::HashMap;

/// Output tokens assumed for a call whose `max_tokens` nobody sets (Anthropic's request default).
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 1024;
/// Expected output tokens of a call without history: a typical one-shot answer (about 375 words).
pub const TYPICAL_OUTPUT_TOKENS: u64 = 500;
/// Completed runs the history (mean, p95, per-node output) is taken from, newest first.
pub const HISTORY_RUNS: i64 = 100;
/// The documented margin of the input estimate: within this percentage of it…
pub const INPUT_MARGIN_PERCENT: u64 = 25;
/// …or within this many tokens, whichever is larger.
pub const INPUT_MARGIN_TOKENS: u64 = 16;

/// The token shape of one agent node in one run: per model call, and how
/// many calls it makes (loop iterations, model turns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallShape {
    /// Input tokens of one call (its first model turn).
    pub input_tokens: u64,
    /// Output tokens one call is expected to produce.
    pub expected_output_tokens: u64,
    /// The most output tokens one model turn may produce (`max_tokens`).
    pub max_output_tokens: u64,
    /// The most model turns of one call: 1, or [`MAX_TOOL_ROUNDS`] with tools.
    pub max_turns: u64,
    /// How many times the node is expected to run (loop iterations).
    pub expected_runs: u64,
    /// The most times it may run (the product of its loops' `max_iterations`).
    pub max_runs: u64,
}

/// What the bill will say (base, and billed with the markup): input only,
/// expected, and worst case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CostRange {
    /// Input tokens only, at the expected number of runs.
    pub min: Cost,
    /// Input and expected output, at the expected number of runs.
    pub expected: Cost,
    /// `max_tokens` on every turn of every possible run.
    pub worst: Cost,
}

impl CostRange {
    /// Both ranges together (saturating).
    fn plus(self, other: CostRange) -> CostRange {
        CostRange {
            min: self.min.plus(other.min),
            expected: self.expected.plus(other.expected),
            worst: self.worst.plus(other.worst),
        }
    }
}

impl CallShape {
    /// Input and output tokens of the worst case: each of `max_turns` turns
    /// answers `max_output_tokens`, and each answer is part of the next
    /// turn's input (tool results themselves are not counted).
    pub fn worst_tokens(&self) -> (u64, u64) {
        let turns = self.max_turns.max(1);
        let per_run_input = turns.saturating_mul(self.input_tokens).saturating_add(
            self.max_output_tokens
                .saturating_mul(turns.saturating_mul(turns - 1) / 2),
        );
        let per_run_output = turns.saturating_mul(self.max_output_tokens);
        (
            per_run_input.saturating_mul(self.max_runs),
            per_run_output.saturating_mul(self.max_runs),
        )
    }

    /// The node's cost range at `price` with `markup_percent`, as the bill
    /// adds it up: each provider call (loop iteration, model turn) priced on
    /// its own by [`cost_of`], the billing path's function, then summed.
    pub fn cost(&self, price: Price, markup_percent: u32) -> CostRange {
        let call = |input_tokens: u64, output_tokens: u64| {
            let usage = Usage {
                input_tokens,
                output_tokens,
            };
            cost_of(price, usage, markup_percent)
        };
        let worst_run = (0..self.max_turns.max(1)).fold(Cost::default(), |sum, turn| {
            let input = self
                .input_tokens
                .saturating_add(turn.saturating_mul(self.max_output_tokens));
            sum.plus(call(input, self.max_output_tokens))
        });
        CostRange {
            min: call(self.input_tokens, 0).times(self.expected_runs),
            expected: call(self.input_tokens, self.expected_output_tokens)
                .times(self.expected_runs),
            worst: worst_run.times(self.max_runs),
        }
    }
}

/// `runs`, the mean and the p95 (nearest rank) of past runs' billed costs;
/// `None` without runs. The mean is rounded half up.
pub fn cost_stats(costs: &[i64]) -> Option<(usize, i64, i64)> {
    if costs.is_empty() {
        return None;
    }
    let mut sorted = costs.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    let sum: i128 = sorted.iter().map(|c| i128::from(*c)).sum();
    let mean = (2 * sum + n as i128).div_euclid(2 * n as i128);
    let rank = (95 * n).div_ceil(100).max(1);
    Some((n, i64::try_from(mean).unwrap_or(i64::MAX), sorted[rank - 1]))
}

/// An agent node found in the definition, with its prompt rendered.
#[derive(Debug, Clone, PartialEq)]
struct PlannedCall {
    node_id: String,
    agent_id: String,
    prompt: String,
    node_max_tokens: Option<u64>,
    loops: Vec<String>,
    expected_runs: u64,
    max_runs: u64,
}

/// Walks a graph and its loop bodies, collecting agent nodes.
struct Walk {
    calls: Vec<PlannedCall>,
    node_count: usize,
    assumptions: Vec<String>,
}

impl Walk {
    fn graph(&mut self, nodes: &[Node], context: &Json, loops: &[String], runs: (u64, u64)) {
        for node in nodes {
            self.node_count += 1;
            match node.typed_config("") {
                Ok(NodeConfig::Agent(config)) => {
                    let prompt = match render(&Json::String(config.prompt.clone()), context) {
                        Ok(Json::String(text)) => text,
                        Ok(other) => other.to_string(),
                        Err(_) => config.prompt.clone(),
                    };
                    self.calls.push(PlannedCall {
                        node_id: node.id.clone(),
                        agent_id: config.agent_id,
                        prompt,
                        node_max_tokens: config.max_tokens,
                        loops: loops.to_vec(),
                        expected_runs: runs.0,
                        max_runs: runs.1,
                    });
                }
                Ok(NodeConfig::Loop(config)) => {
                    let list = match (config.mode, config.items.as_deref()) {
                        (LoopMode::ForEach, Some(items)) => match evaluate(items, context) {
                            Ok(Json::Array(list)) => Some(list),
                            _ => None,
                        },
                        _ => None,
                    };
                    let max = config.max_iterations.max(1);
                    let expected = list.as_ref().map_or(1, |l| (l.len() as u64).min(max));
                    let why = match (&list, config.mode) {
                        (Some(_), _) => "the length of its items list with these inputs",
                        (None, LoopMode::ForEach) => {
                            "its items are not known before the run, so one is assumed"
                        }
                        (None, LoopMode::RepeatUntil) => {
                            "a repeat-until loop's count is not known before the run, so one is assumed"
                        }
                    };
                    self.assumptions.push(format!(
                        "loop {}: expected {expected} iteration(s) ({why}); the worst case counts its \
                         max_iterations, {max}",
                        node.id
                    ));
                    let mut inner = context.clone();
                    let first = list
                        .and_then(|l| l.into_iter().next())
                        .unwrap_or(Json::Null);
                    inner["item"] = first.clone();
                    inner["index"] = json!(0);
                    if !inner["loops"].is_object() {
                        inner["loops"] = json!({});
                    }
                    inner["loops"][&node.id] = json!({"item": first, "index": 0});
                    let mut path = loops.to_vec();
                    path.push(node.id.clone());
                    self.graph(
                        &config.body.nodes,
                        &inner,
                        &path,
                        (runs.0.saturating_mul(expected), runs.1.saturating_mul(max)),
                    );
                }
                _ => {}
            }
        }
    }
}

/// `POST /api/v1/usage/estimate` (viewer): `{workflow_id | definition,
/// inputs?}`; the cost of one run per agent node, totals and history.
pub(super) fn estimate(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let body = request.json_object(&["workflow_id", "definition", "inputs"])?;
    let field = |name: &str| body.get(name).filter(|v| !v.is_null());
    let inputs = match field("inputs") {
        None => Map::new(),
        Some(Json::Object(inputs)) => inputs.clone(),
        Some(_) => return Err(ApiError::bad_request("`inputs` must be a JSON object")),
    };
    let db = ctx.db()?;
    let org = OrgScoped::new(db, &caller.org_id);
    let (workflow, definition) = match (field("workflow_id"), field("definition")) {
        (Some(Json::String(id)), None) => {
            let row = fetch_one(
                &org,
                "SELECT w.current_version, v.definition FROM workflows w JOIN workflow_versions v \
                 ON v.workflow_id = w.id AND v.version = w.current_version \
                 WHERE w.org_id = ?1 AND w.id = ?2 AND w.deleted_at IS NULL",
                &[Value::from(id.as_str())],
                || format!("workflow {id}"),
            )?;
            let definition: Definition = serde_json::from_str(row[1].as_str().unwrap_or_default())
                .map_err(|e| ApiError::Internal(format!("stored definition is unreadable: {e}")))?;
            (Some((id.clone(), row[0].as_i64())), definition)
        }
        (None, Some(definition @ Json::Object(_))) => {
            let definition = parse_definition(definition).map_err(|problems| {
                invalid(
                    problems
                        .into_iter()
                        .map(|p| ErrorDetail::new(prefixed(&p.path), p.problem))
                        .collect(),
                )
            })?;
            (None, definition)
        }
        (Some(_), Some(_)) => {
            return Err(invalid(vec![ErrorDetail::new(
                "definition",
                "give workflow_id or definition, not both",
            )]));
        }
        (None, None) => {
            return Err(invalid(vec![ErrorDetail::new(
                "workflow_id",
                "workflow_id or definition is required",
            )]));
        }
        (None, Some(_)) => {
            return Err(ApiError::bad_request("`definition` must be a JSON object"));
        }
        (Some(_), None) => return Err(ApiError::bad_request("`workflow_id` must be a string")),
    };
    let mut agents: HashMap<String, AgentSpec> = HashMap::new();
    for id in referenced_agents(&definition) {
        if let Ok((spec, _)) = crate::agents::load(&org, &id) {
            agents.insert(id, spec);
        }
    }
    let problems = validate(&definition, &|id| agents.contains_key(id));
    if !problems.is_empty() {
        let prefix = if workflow.is_some() {
            ""
        } else {
            "definition."
        };
        return Err(invalid(
            problems
                .into_iter()
                .map(|p| ErrorDetail::new(format!("{prefix}{}", p.path), p.problem))
                .collect(),
        ));
    }
    let context = context_before_the_run(inputs, &definition.variables);
    let mut walk = Walk {
        calls: Vec::new(),
        node_count: 0,
        assumptions: Vec::new(),
    };
    walk.graph(&definition.nodes, &context, &[], (1, 1));
    let (history, output_means) = match &workflow {
        Some((id, _)) => history(&org, id)?,
        None => (None, HashMap::new()),
    };
    let markup = markup_percent(ctx, db, &caller.org_id)?;
    let mut totals = CostRange::default();
    let mut pricing_missing = false;
    let mut nodes = Vec::new();
    for call in &walk.calls {
        let spec = agents
            .get(&call.agent_id)
            .ok_or_else(|| ApiError::Internal(format!("agent {} vanished", call.agent_id)))?;
        let tools: Vec<_> = spec.tools.iter().filter_map(|t| builtin_tool(t)).collect();
        let tool_tokens = if tools.is_empty() {
            0
        } else {
            estimate_tokens(&serde_json::to_string(&tools).unwrap_or_default())
        };
        let max_output = call
            .node_max_tokens
            .or(spec.model_config.max_tokens.map(u64::from))
            .unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS);
        let (expected_output, output_basis) = match output_means.get(&call.node_id) {
            Some(mean) => ((*mean).min(max_output), "history"),
            None => (max_output.min(TYPICAL_OUTPUT_TOKENS), "default"),
        };
        let shape = CallShape {
            input_tokens: 2 * MESSAGE_OVERHEAD_TOKENS
                + estimate_tokens(&spec.system_prompt())
                + estimate_tokens(&call.prompt)
                + tool_tokens,
            expected_output_tokens: expected_output,
            max_output_tokens: max_output,
            max_turns: if tools.is_empty() {
                1
            } else {
                MAX_TOOL_ROUNDS as u64
            },
            expected_runs: call.expected_runs,
            max_runs: call.max_runs,
        };
        if !tools.is_empty() {
            walk.assumptions.push(format!(
                "node {} has tools: one model turn is expected; the worst case counts {MAX_TOOL_ROUNDS} \
                 turns, each reading the previous turns' answers (tool results not counted)",
                call.node_id
            ));
        }
        let provider = spec.provider();
        let model = &spec.model_config.model;
        let price = effective_price(db, &caller.org_id, provider, model)?;
        if price.is_none() {
            walk.assumptions.push(format!(
                "node {}: {}/{model} has no price (set one with PUT /api/v1/usage/pricing/{}/{model}); \
                 counted as 0",
                call.node_id,
                provider.as_str(),
                provider.as_str()
            ));
        }
        let range = price
            .as_ref()
            .map(|(price, _)| shape.cost(*price, markup))
            .unwrap_or_default();
        totals = totals.plus(range);
        pricing_missing |= price.is_none();
        let (worst_input, worst_output) = shape.worst_tokens();
        nodes.push(json!({
            "node_id": call.node_id,
            "agent_id": call.agent_id,
            "provider": provider.as_str(),
            "model": model,
            "loops": call.loops,
            "runs": {"expected": call.expected_runs, "max": call.max_runs},
            "model_turns": {"expected": 1, "max": shape.max_turns},
            "estimated_input_tokens": shape.input_tokens,
            "estimated_output_tokens": shape.expected_output_tokens,
            "output_estimate": output_basis,
            "max_output_tokens": shape.max_output_tokens,
            "worst_case_tokens": {"input": worst_input, "output": worst_output},
            "price": price.as_ref().map(|(price, source)| price_json(*price, source)),
            "pricing_missing": price.is_none(),
            "cost": range_json(&range),
        }));
    }
    let mut assumptions = vec![
        "input tokens per call: ceil(characters / 4) of the system prompt, of the prompt rendered with \
         these inputs and the definition's variables (earlier steps' outputs are not known yet and \
         render as `null`) and of the tool definitions, plus 4 per message"
            .to_string(),
        format!(
            "output tokens per call: the node's mean over the workflow's last {HISTORY_RUNS} completed \
             runs when it has any, else min(max_tokens, {TYPICAL_OUTPUT_TOKENS}); max_tokens is the \
             node's, else the agent's, else {DEFAULT_MAX_OUTPUT_TOKENS}"
        ),
        "every agent node is counted, including branches a condition or switch may skip; failed \
         provider attempts are not billed and not counted"
            .to_string(),
    ];
    assumptions.append(&mut walk.assumptions);
    let mut totals_json = range_json(&totals);
    totals_json["pricing_missing"] = json!(pricing_missing);
    let body = json!({
        "workflow": workflow.as_ref().map(|(id, version)| json!({"id": id, "version": version})),
        "node_count": walk.node_count,
        "agent_nodes": nodes,
        "markup_percent": markup,
        "totals": totals_json,
        "history": history,
        "margin": {
            "input_tokens_percent": INPUT_MARGIN_PERCENT,
            "input_tokens_at_least": INPUT_MARGIN_TOKENS,
        },
        "assumptions": assumptions,
    });
    Ok(ApiResponse::json(200, &body))
}

/// The workflow's last [`HISTORY_RUNS`] completed runs: `{runs, mean, p95}`
/// of their billed cost, and each node's mean output tokens per run of it.
/// The context an estimate renders prompts in: the run's inputs and the
/// definition's variables. Nothing has run yet, so `steps` is empty and
/// `previous_output` and `execution.id` are null: a template naming an earlier
/// output renders `null` there (4 characters in mixed text).
fn context_before_the_run(inputs: impl Into<Json>, variables: &Map<String, Json>) -> Json {
    json!({
        "trigger": inputs.into(),
        "steps": {},
        "previous_output": null,
        "variables": variables,
        "execution": {"id": null},
    })
}

fn history(
    org: &OrgScoped,
    workflow_id: &str,
) -> Result<(Option<Json>, HashMap<String, u64>), ApiError> {
    let costs: Vec<i64> = org
        .execute(
            "SELECT billed_cost_micros FROM executions WHERE org_id = ?1 AND workflow_id = ?2 \
             AND status = 'completed' ORDER BY created_at DESC, id DESC LIMIT ?3",
            &[Value::from(workflow_id), Value::Integer(HISTORY_RUNS)],
        )?
        .rows
        .iter()
        .map(|row| row[0].as_i64().unwrap_or(0))
        .collect();
    let stats = cost_stats(&costs).map(|(runs, mean, p95)| {
        json!({
            "runs": runs,
            "mean_micros": mean,
            "p95_micros": p95,
            "mean": format_micros(mean),
            "p95": format_micros(p95),
        })
    });
    let rows = org.execute(
        "SELECT node_id, COUNT(*), SUM(tokens_out) FROM steps WHERE org_id = ?1 AND status = 'completed' \
         AND execution_id IN (SELECT id FROM executions WHERE org_id = ?1 AND workflow_id = ?2 \
         AND status = 'completed' ORDER BY created_at DESC, id DESC LIMIT ?3) GROUP BY node_id",
        &[Value::from(workflow_id), Value::Integer(HISTORY_RUNS)],
    )?;
    let means = rows
        .rows
        .iter()
        .filter_map(|row| {
            let count = u64::try_from(row[1].as_i64()?).ok().filter(|c| *c > 0)?;
            let sum = u64::try_from(row[2].as_i64().unwrap_or(0)).unwrap_or(0);
            Some((
                row[0].as_str()?.to_string(),
                (2 * sum + count) / (2 * count),
            ))
        })
        .collect();
    Ok((stats, means))
}

/// `{base_micros, markup_micros, billed_micros, base, markup, billed}`.
fn amounts_json(cost: Cost) -> Json {
    json!({
        "base_micros": cost.base_micros,
        "markup_micros": cost.markup_micros(),
        "billed_micros": cost.billed_micros,
        "base": format_micros(cost.base_micros),
        "markup": format_micros(cost.markup_micros()),
        "billed": format_micros(cost.billed_micros),
    })
}

/// `{min, expected, worst_case}`, each with its amounts.
fn range_json(range: &CostRange) -> Json {
    json!({
        "min": amounts_json(range.min),
        "expected": amounts_json(range.expected),
        "worst_case": amounts_json(range.worst),
    })
}

fn price_json(price: Price, source: &PriceSource) -> Json {
    json!({
        "input_micros_per_million": price.input_micros_per_million,
        "output_micros_per_million": price.output_micros_per_million,
        "source": source.name(),
    })
}

fn prefixed(path: &str) -> String {
    if path.is_empty() {
        "definition".into()
    } else {
        format!("definition.{path}")
    }
}

fn invalid(details: Vec<ErrorDetail>) -> ApiError {
    ApiError::Validation {
        message: "the estimate request is invalid".into(),
        details,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use spindle_definition::parse_definition;

    fn shape() -> CallShape {
        CallShape {
            input_tokens: 1_000,
            expected_output_tokens: 200,
            max_output_tokens: 500,
            max_turns: 1,
            expected_runs: 1,
            max_runs: 1,
        }
    }

    /// $1 per million input tokens, $2 per million output tokens.
    const PRICE: Price = Price {
        input_micros_per_million: 1_000_000,
        output_micros_per_million: 2_000_000,
    };

    fn cost(base_micros: i64, billed_micros: i64) -> Cost {
        Cost {
            base_micros,
            billed_micros,
        }
    }

    #[test]
    fn one_call_min_expected_and_worst_case() {
        // 1000 in = 1000 micros; 200 out = 400; 500 out = 1000.
        assert_eq!(
            shape().cost(PRICE, 0),
            CostRange {
                min: cost(1_000, 1_000),
                expected: cost(1_400, 1_400),
                worst: cost(2_000, 2_000)
            }
        );
        // 20% markup on each.
        let marked_up = shape().cost(PRICE, 20);
        assert_eq!(
            marked_up,
            CostRange {
                min: cost(1_000, 1_200),
                expected: cost(1_400, 1_680),
                worst: cost(2_000, 2_400)
            }
        );
        assert_eq!(marked_up.expected.markup_micros(), 280);
    }

    #[test]
    fn each_call_is_rounded_as_the_bill_rounds_it() {
        // 0.5 micro per input token: 3 tokens cost 1.5, billed as 2 per call.
        let half = Price {
            input_micros_per_million: 500_000,
            output_micros_per_million: 0,
        };
        let looped = CallShape {
            input_tokens: 3,
            expected_output_tokens: 0,
            max_output_tokens: 0,
            max_turns: 1,
            expected_runs: 3,
            max_runs: 3,
        };
        // Three calls of 2, not one of 9 tokens (4.5, so 5).
        assert_eq!(looped.cost(half, 0).expected, cost(6, 6));
        // 2 × 1.15 = 2.3, so 2 per call.
        assert_eq!(looped.cost(half, 15).expected, cost(6, 6));
        assert_eq!(looped.cost(half, 50).expected, cost(6, 9));
    }

    #[test]
    fn loops_multiply_expected_by_their_count_and_worst_by_max_iterations() {
        let looped = CallShape {
            expected_runs: 3,
            max_runs: 10,
            ..shape()
        };
        assert_eq!(
            looped.cost(PRICE, 0),
            CostRange {
                min: cost(3_000, 3_000),
                expected: cost(4_200, 4_200),
                worst: cost(20_000, 20_000)
            }
        );
    }

    #[test]
    fn tool_turns_grow_the_worst_case_input() {
        let tools = CallShape {
            max_turns: 5,
            ..shape()
        };
        // Inputs 1000, 1500, 2000, 2500, 3000 = 10_000; outputs 5 × 500.
        assert_eq!(tools.worst_tokens(), (10_000, 2_500));
        assert_eq!(tools.cost(PRICE, 0).worst, cost(15_000, 15_000));
        assert_eq!(tools.cost(PRICE, 0).expected, cost(1_400, 1_400));
    }

    #[test]
    fn huge_shapes_saturate_instead_of_overflowing() {
        let huge = CallShape {
            input_tokens: u64::MAX,
            max_runs: u64::MAX,
            max_turns: 5,
            ..shape()
        };
        assert_eq!(huge.cost(PRICE, 1000).worst.billed_micros, i64::MAX);
    }

    #[test]
    fn history_mean_and_nearest_rank_p95() {
        assert_eq!(cost_stats(&[]), None);
        assert_eq!(cost_stats(&[7]), Some((1, 7, 7)));
        assert_eq!(cost_stats(&[1, 2]), Some((2, 2, 2))); // 1.5 rounds up
        let hundred: Vec<i64> = (1..=100).rev().collect();
        assert_eq!(cost_stats(&hundred), Some((100, 51, 95)));
        let twenty: Vec<i64> = (1..=20).map(|i| i * 10).collect();
        assert_eq!(cost_stats(&twenty), Some((20, 105, 190)));
    }

    fn walk(definition: Json, inputs: Json) -> Walk {
        let definition = parse_definition(&definition).unwrap();
        let context = context_before_the_run(inputs, &definition.variables);
        let mut walk = Walk {
            calls: Vec::new(),
            node_count: 0,
            assumptions: Vec::new(),
        };
        walk.graph(&definition.nodes, &context, &[], (1, 1));
        walk
    }

    #[test]
    fn nested_loops_multiply_their_max_iterations_in_the_worst_case() {
        let walk = walk(
            json!({
                "nodes": [
                    {"id": "start", "type": "trigger"},
                    {"id": "rows", "type": "loop", "config": {"mode": "for_each", "items": "trigger.rows", "max_iterations": 3,
                        "body": {"nodes": [
                            {"id": "cells", "type": "loop", "config": {"mode": "repeat_until", "until": "true", "max_iterations": 4,
                                "body": {"nodes": [{"id": "cell", "type": "agent", "config": {"agent_id": "x", "prompt": "p"}}], "edges": []}}}
                        ], "edges": []}}}
                ],
                "edges": [{"source": "start", "target": "rows"}]
            }),
            json!({"rows": [1, 2]}),
        );
        let cell = &walk.calls[0];
        assert_eq!(cell.node_id, "cell");
        // Expected: 2 rows × 1 iteration; worst: 3 × 4.
        assert_eq!((cell.expected_runs, cell.max_runs), (2, 12));
        assert_eq!(cell.loops, ["rows", "cells"]);
    }

    #[test]
    fn earlier_outputs_render_as_null_before_the_run() {
        let walk = walk(
            json!({
                "nodes": [
                    {"id": "start", "type": "trigger"},
                    {"id": "a", "type": "agent", "config": {"agent_id": "x", "prompt": "First"}},
                    {"id": "b", "type": "agent", "config": {"agent_id": "x",
                        "prompt": "Shorten {{ steps.a.output }} and {{ previous_output }} of {{ execution.id }}"}}
                ],
                "edges": [{"source": "start", "target": "a"}, {"source": "a", "target": "b"}]
            }),
            json!({}),
        );
        assert_eq!(walk.calls[1].prompt, "Shorten null and null of null");
    }

    #[test]
    fn prompts_are_rendered_with_the_inputs_and_loops_counted() {
        let walk = walk(
            json!({
                "variables": {"tone": "dry"},
                "nodes": [
                    {"id": "start", "type": "trigger"},
                    {"id": "a", "type": "agent", "config": {"agent_id": "x", "prompt": "Hi {{ trigger.name }}, be {{ variables.tone }}", "max_tokens": 50}},
                    {"id": "each", "type": "loop", "config": {"mode": "for_each", "items": "trigger.leads", "max_iterations": 10,
                        "body": {"nodes": [{"id": "b", "type": "agent", "config": {"agent_id": "x", "prompt": "Score {{ item }}"}}], "edges": []}}},
                    {"id": "again", "type": "loop", "config": {"mode": "repeat_until", "until": "steps.c.output", "max_iterations": 4,
                        "body": {"nodes": [{"id": "c", "type": "agent", "config": {"agent_id": "x", "prompt": "More"}}], "edges": []}}}
                ],
                "edges": [{"source": "start", "target": "a"}, {"source": "a", "target": "each"}, {"source": "each", "target": "again"}]
            }),
            json!({"name": "Ada", "leads": ["l1", "l2", "l3"]}),
        );
        assert_eq!(walk.node_count, 6);
        let calls: Vec<_> = walk
            .calls
            .iter()
            .map(|c| {
                (
                    c.node_id.as_str(),
                    c.prompt.as_str(),
                    c.expected_runs,
                    c.max_runs,
                    c.loops.clone(),
                )
            })
            .collect();
        assert_eq!(
            calls,
            [
                ("a", "Hi Ada, be dry", 1, 1, vec![]),
                ("b", "Score l1", 3, 10, vec!["each".to_string()]),
                ("c", "More", 1, 4, vec!["again".to_string()]),
            ]
        );
        assert_eq!(walk.calls[0].node_max_tokens, Some(50));
        assert_eq!(walk.assumptions.len(), 2);
        assert!(walk.assumptions[0].contains("expected 3 iteration"));
        assert!(walk.assumptions[1].contains("max_iterations, 4"));
    }

    #[test]
    fn unknown_items_count_as_one_iteration() {
        let walk = walk(
            json!({"nodes": [
                {"id": "each", "type": "loop", "config": {"mode": "for_each", "items": "steps.fetch.output", "max_iterations": 7,
                    "body": {"nodes": [{"id": "b", "type": "agent", "config": {"agent_id": "x", "prompt": "p"}}], "edges": []}}}
            ], "edges": []}),
            json!({}),
        );
        assert_eq!(
            (walk.calls[0].expected_runs, walk.calls[0].max_runs),
            (1, 7)
        );
    }
}
