//! Running one node: the cheap ones (condition, switch, transform,
//! output, delay) from their templates, and the expensive ones (agent,
//! http) that call out.

use super::lease;
use super::runner::{NodeResult, Run, StepFailure};
use crate::agents::{self, AgentRun, RunInput, StepLink, StoredAgent};
use crate::context::RequestContext;
use serde_json::{Map, Value as Json, json};
use spindle_auth::{Caller, Role};
use spindle_definition::{AgentConfig, HttpConfig, Node, NodeConfig, evaluate, is_truthy, render};
use spindle_http::{OutboundError, OutboundRequest};
use spindle_providers::parse_retry_after;
use spindle_providers::retry::RETRY_AFTER_CAP_SECS;
use spindle_store::OrgScoped;

/// Runs a cheap node over its template context.
pub(super) fn run_cheap(context: &Json, node: &Node) -> Result<NodeResult, StepFailure> {
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
            let value = evaluate(&c.expression, context).map_err(template_failure)?;
            let truth = is_truthy(&value);
            NodeResult {
                output: json!(truth),
                outcome: Some(truth.to_string()),
                ..NodeResult::default()
            }
        }
        NodeConfig::Switch(c) => {
            let value = evaluate(&c.expression, context).map_err(template_failure)?;
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
            output: render(&c.template, context).map_err(template_failure)?,
            ..NodeResult::default()
        },
        NodeConfig::Output(c) => NodeResult {
            output: render(&c.value, context).map_err(template_failure)?,
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

/// Runs an agent or http node, step `step_id` claimed under `lease`: the
/// provider call or the request, renewing the lease while it waits.
pub(super) fn run_expensive(
    ctx: &RequestContext,
    run: &Run,
    context: &Json,
    node: &Node,
    step_id: &str,
    lease: &str,
) -> Result<NodeResult, StepFailure> {
    lease::keeping(ctx, step_id, lease, || match node.typed_config("config") {
        Ok(NodeConfig::Agent(config)) => {
            let prompt = match render(&Json::String(config.prompt.clone()), context)
                .map_err(|e| StepFailure::new("template_failed", e.to_string()))?
            {
                Json::String(text) => text,
                other => other.to_string(),
            };
            let input = json!({"prompt": prompt});
            run_agent_node(ctx, run, node, &config, prompt, step_id)
                .map(|result| NodeResult {
                    input: input.clone(),
                    ..result
                })
                .map_err(|failure| failure.with_input(input))
        }
        Ok(NodeConfig::Http(config)) => run_http(ctx, context, &config, node.timeout_ms),
        _ => Err(StepFailure::new(
            "node_not_supported",
            format!("the engine does not run {} nodes yet", node.node_type),
        )),
    })
}

/// An agent node with its rendered prompt: the agent run, its answer
/// (parsed when the node has an `output_schema`), tokens and cost.
fn run_agent_node(
    ctx: &RequestContext,
    run: &Run,
    node: &Node,
    config: &AgentConfig,
    prompt: String,
    step_id: &str,
) -> Result<NodeResult, StepFailure> {
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
        timeout_ms: node.timeout_ms,
        output_schema: config.output_schema.clone(),
    };
    let agent = StoredAgent {
        id: config.agent_id.clone(),
        spec,
    };
    // The agent run is stored with the step's result, in the same commit.
    let agent_run = Box::new(AgentRun::perform(ctx, &caller, &agent, input));
    let result = match agent_run.answer() {
        Err((code, message, not_before)) => {
            let failure =
                StepFailure::new(code, message).with_retry_after(agent_run.retry_after_ms());
            // Provider admission said "not yet": the step waits for its slot.
            Err(match not_before {
                Some(at) => failure.deferred_until(at),
                None => failure,
            })
        }
        Ok(text) if config.output_schema.is_some() => structured_output(text).ok_or_else(|| {
            StepFailure::new(
                "invalid_structured_output",
                "the agent's answer is not the JSON its output_schema asks for",
            )
        }),
        Ok(text) => Ok(Json::String(text.to_string())),
    };
    match result {
        Ok(output) => Ok(NodeResult {
            output,
            agent_run: Some(agent_run),
            ..NodeResult::default()
        }),
        Err(failure) => Err(failure.with_agent_run(agent_run)),
    }
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
    node_timeout_ms: Option<u64>,
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
    // Header values may carry credentials: the stored input names them only.
    let input = json!({
        "method": method,
        "url": url,
        "header_names": headers.iter().map(|(name, _)| name).collect::<Vec<_>>(),
        "body": String::from_utf8_lossy(&body),
    });
    let reply = ctx
        .send(&OutboundRequest {
            method,
            url: url.clone(),
            headers,
            body,
            // The tighter of the request's and the node's limits.
            timeout_ms: [config.timeout_ms, node_timeout_ms]
                .into_iter()
                .flatten()
                .min()
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
        })
        .map_err(|failure| failure.with_input(input.clone()))?;
    let body = serde_json::from_slice::<Json>(&reply.body)
        .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(&reply.body).into_owned()));
    if reply.status >= 400 {
        // 429 and 5xx may pass; other 4xx will not (a per-node `retry` retries only the former).
        let code = if reply.status == 429 || reply.status >= 500 {
            "http_unavailable"
        } else {
            "http_status"
        };
        let retry_after_ms = reply
            .headers
            .iter()
            .find(|(name, _)| name == "retry-after")
            .and_then(|(_, value)| parse_retry_after(value))
            .map(|secs| secs.min(RETRY_AFTER_CAP_SECS).saturating_mul(1000));
        return Err(
            StepFailure::new(code, format!("{url} answered {}", reply.status))
                .with_input(input)
                .with_retry_after(retry_after_ms),
        );
    }
    let headers: Map<String, Json> = reply
        .headers
        .into_iter()
        .map(|(n, v)| (n, Json::String(v)))
        .collect();
    Ok(NodeResult {
        output: json!({"status": reply.status, "headers": headers, "body": body}),
        input,
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
