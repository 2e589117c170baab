//! Running an agent: provider calls with retries, the tool-calling loop,
//! memory, and one usage record per provider call.

use super::definition::AgentSpec;
use crate::auth::record_activity;
use crate::context::RequestContext;
use crate::usage::admission::{Admission, admit, estimated_tokens, hold_off_ms, pause};
use crate::usage::metrics::{ProviderCall, record_provider_call};
use crate::usage::pricing::DEFAULT_MARKUP_PERCENT;
use crate::usage::{budgets, pricing};
use crate::{fetch_one, json_column, now_ms, timestamp};
use serde_json::{Value as Json, json};
use spindle_auth::Caller;
use spindle_http::{ApiError, OutboundError, OutboundRequest};
use spindle_providers::pricing::{Cost, cost_of, format_micros};
use spindle_providers::tools::{
    HTTP_GET_MAX_BYTES, builtin_tool, run_builtin_tool, truncate_http_body,
};
use spindle_providers::{
    ChatRequest, ChatResponse, Message, Provider, ProviderError, ToolCall, Usage, backoff_delay_ms,
    build_request, estimate_tokens, parse_response, trim_history,
};
use spindle_store::{Db, OrgScoped, Value, in_transaction};

/// Most model turns in one run: each turn that asks for tools costs one more.
pub const MAX_TOOL_ROUNDS: usize = 5;
/// Retries of one provider call after a transient failure.
pub const MAX_RETRIES: u32 = 3;
/// Most time one run may spend waiting between retries.
const RETRY_WAIT_BUDGET_MS: u64 = 20_000;
const DEFAULT_PROVIDER_TIMEOUT_MS: u64 = 60_000;
const MAX_PROVIDER_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// What to run: the task and how to run it.
pub struct RunInput {
    /// The user's task.
    pub task: String,
    /// Extra facts for the model, appended to the task as JSON.
    pub context: Option<Json>,
    /// Overrides the agent's `max_tokens` for this run.
    pub max_tokens: Option<u32>,
    /// Remembers and recalls turns under this id when memory is enabled.
    pub conversation_id: Option<String>,
    /// The workflow step this run is, if it is one.
    pub step: Option<StepLink>,
    /// Overrides the `provider_timeout_ms` variable for each provider call (a node's `timeout_ms`).
    pub timeout_ms: Option<u64>,
    /// A JSON Schema the answer must follow (an agent node's `output_schema`).
    pub output_schema: Option<Json>,
}

/// The workflow step an agent run belongs to; its usage records carry it.
#[derive(Debug, Clone)]
pub struct StepLink {
    /// The workflow.
    pub workflow_id: String,
    /// The workflow execution.
    pub execution_id: String,
    /// The step.
    pub step_id: String,
}

/// A stored agent: its id and definition.
pub struct StoredAgent {
    /// The agent's id.
    pub id: String,
    /// Its definition.
    pub spec: AgentSpec,
}

/// Why a run failed, as stored on the execution.
struct RunFailure {
    code: &'static str,
    message: String,
}

impl From<ProviderError> for RunFailure {
    fn from(error: ProviderError) -> Self {
        Self {
            code: error.code(),
            message: error.to_string(),
        }
    }
}

/// Totals of one run, accumulated call by call.
#[derive(Default)]
struct Tally {
    input_tokens: u64,
    output_tokens: u64,
    base_micros: i64,
    billed_micros: i64,
    provider_calls: u64,
    pricing_missing: bool,
    tool_calls: Vec<Json>,
    /// When admission refused a call: the earliest time it could go.
    not_before: Option<i64>,
}

/// Runs `agent` on `input` now and returns the stored execution as JSON.
/// Provider failures do not fail the request: the execution records them
/// with status `failed`.
pub fn run_agent(
    ctx: &RequestContext,
    caller: &Caller,
    agent: &StoredAgent,
    input: RunInput,
) -> Result<Json, ApiError> {
    let started = now_ms();
    let execution_id = ctx.new_id();
    let db = ctx.db()?;
    let org = OrgScoped::new(db, &caller.org_id);
    let context_text = input.context.as_ref().map(Json::to_string);
    db.execute(
        "INSERT INTO agent_executions (id, org_id, agent_id, execution_id, step_id, conversation_id, status, task, \
         context, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
        &[
            Value::from(execution_id.as_str()),
            Value::from(caller.org_id.as_str()),
            Value::from(agent.id.as_str()),
            Value::from(input.step.as_ref().map(|s| s.execution_id.clone())),
            Value::from(input.step.as_ref().map(|s| s.step_id.clone())),
            Value::from(input.conversation_id.clone()),
            Value::from(input.task.as_str()),
            Value::from(context_text),
            Value::from(caller.subject.as_str()),
            Value::Integer(started),
        ],
    )?;
    let mut tally = Tally::default();
    let outcome = converse(ctx, caller, agent, &input, &execution_id, &mut tally);
    let finished = now_ms();
    let duration = finished - started;
    let (status, output, error) = match &outcome {
        Ok(text) => ("completed", Some(text.clone()), None),
        Err(failure) => {
            let mut error = json!({"code": failure.code, "message": failure.message});
            if let Some(at) = tally.not_before {
                error["not_before"] = json!(crate::timestamp(at));
            }
            ("failed", None, Some(error))
        }
    };
    in_transaction(db, |db| -> Result<(), ApiError> {
        let org = OrgScoped::new(db, &caller.org_id);
        org.execute(
            "UPDATE agent_executions SET status = ?2, output = ?3, tool_calls = ?4, input_tokens = ?5, \
             output_tokens = ?6, base_cost_micros = ?7, billed_cost_micros = ?8, provider_calls = ?9, \
             duration_ms = ?10, error = ?11, finished_at = ?12 WHERE org_id = ?1 AND id = ?13",
            &[
                Value::from(status),
                Value::from(output.clone()),
                Value::Text(Json::Array(tally.tool_calls.clone()).to_string()),
                int(tally.input_tokens),
                int(tally.output_tokens),
                Value::Integer(tally.base_micros),
                Value::Integer(tally.billed_micros),
                int(tally.provider_calls),
                Value::Integer(duration),
                Value::from(error.as_ref().map(Json::to_string)),
                Value::Integer(finished),
                Value::from(execution_id.as_str()),
            ],
        )?;
        org.execute(
            "UPDATE agents SET execution_count = execution_count + 1, success_count = success_count + ?2, \
             total_tokens = total_tokens + ?3, total_cost_micros = total_cost_micros + ?4, \
             total_latency_ms = total_latency_ms + ?5, last_executed_at = ?6 WHERE org_id = ?1 AND id = ?7",
            &[
                Value::Integer(i64::from(outcome.is_ok())),
                int(tally.input_tokens + tally.output_tokens),
                Value::Integer(tally.billed_micros),
                Value::Integer(duration),
                Value::Integer(finished),
                Value::from(agent.id.as_str()),
            ],
        )?;
        if let (Ok(answer), Some(conversation)) = (&outcome, &input.conversation_id)
            && agent.spec.memory.enabled
        {
            remember(
                ctx,
                db,
                &caller.org_id,
                &agent.id,
                conversation,
                &user_content(&input),
                answer,
            )?;
        }
        let data = json!({
            "agent_id": agent.id,
            "agent_execution_id": execution_id,
            "status": status,
            "execution_id": input.step.as_ref().map(|s| s.execution_id.clone()),
            "step_id": input.step.as_ref().map(|s| s.step_id.clone()),
        });
        crate::engine::emit_event(ctx, db, &caller.org_id, "agent.executed", &data)?;
        record_activity(
            ctx,
            db,
            &caller.org_id,
            &caller.subject,
            "agent.executed",
            ("agent_execution", &execution_id),
            &json!({"agent_id": agent.id, "status": status}),
        )
    })?;
    execution_json(&org, &execution_id)
}

/// The model conversation: calls the provider, runs the tools it asks for,
/// and returns its final answer.
fn converse(
    ctx: &RequestContext,
    caller: &Caller,
    agent: &StoredAgent,
    input: &RunInput,
    execution_id: &str,
    tally: &mut Tally,
) -> Result<String, RunFailure> {
    let spec = &agent.spec;
    let provider = spec.provider();
    let mut endpoint = Endpoint::configured(ctx, provider)?;
    if let Some(timeout_ms) = input.timeout_ms {
        endpoint.timeout_ms = timeout_ms;
    }
    let max_tokens = input.max_tokens.or(spec.model_config.max_tokens);
    let history = match (&input.conversation_id, spec.memory.enabled) {
        (Some(conversation), true) => {
            let stored =
                recall(ctx, &caller.org_id, &agent.id, conversation).map_err(|e| RunFailure {
                    code: "memory_unavailable",
                    message: e.to_string(),
                })?;
            let reserved = estimate_tokens(&spec.system_prompt())
                + estimate_tokens(&user_content(input))
                + u64::from(max_tokens.unwrap_or(1024));
            trim_history(
                &stored,
                spec.memory.max_history as usize,
                spec.memory.context_window_tokens,
                reserved,
            )
        }
        _ => Vec::new(),
    };
    let mut messages = history;
    messages.push(Message::user(user_content(input)));
    let request = |messages: Vec<Message>| ChatRequest {
        model: spec.model_config.model.clone(),
        system: Some(spec.system_prompt()),
        messages,
        tools: spec.tools.iter().filter_map(|t| builtin_tool(t)).collect(),
        temperature: spec.model_config.temperature,
        max_tokens,
        top_p: spec.model_config.top_p,
        response_schema: input.output_schema.clone(),
    };
    let mut retry_wait = 0;
    for round in 1..=MAX_TOOL_ROUNDS {
        let response = call_with_retries(
            ctx,
            caller,
            agent,
            &endpoint,
            &request(messages.clone()),
            execution_id,
            tally,
            &mut retry_wait,
            input.step.as_ref(),
        )?;
        if response.tool_calls.is_empty() {
            return Ok(response.text);
        }
        messages.push(Message::assistant_tool_calls(
            response.text.clone(),
            response.tool_calls.clone(),
        ));
        for call in &response.tool_calls {
            let result = run_tool(ctx, spec, call);
            tally.tool_calls.push(json!({
                "round": round,
                "id": call.id,
                "name": call.name,
                "arguments": call.arguments,
                "result": result,
            }));
            messages.push(Message::tool_result(&call.id, &call.name, result));
        }
    }
    Err(RunFailure {
        code: "tool_round_limit",
        message: format!("the model still asked for tools after {MAX_TOOL_ROUNDS} rounds"),
    })
}

/// Where and with what key a provider is called, from Spin variables.
struct Endpoint {
    provider: Provider,
    base_url: String,
    api_key: Option<String>,
    timeout_ms: u64,
    markup_percent: u32,
}

impl Endpoint {
    fn configured(ctx: &RequestContext, provider: Provider) -> Result<Self, RunFailure> {
        let not_configured = |message: String| RunFailure {
            code: "provider_not_configured",
            message,
        };
        let base_url = ctx
            .variable(provider.base_url_variable())
            .or_else(|| provider.default_base_url().map(String::from))
            .ok_or_else(|| {
                not_configured(format!(
                    "{} has no base URL: set the {} variable",
                    provider.as_str(),
                    provider.base_url_variable()
                ))
            })?;
        let api_key = ctx.variable(provider.api_key_variable());
        if api_key.is_none() && provider.requires_api_key() {
            return Err(ProviderError::MissingApiKey {
                provider,
                variable: provider.api_key_variable(),
            }
            .into());
        }
        let number = |name: &str, default: u64| {
            ctx.variable(name)
                .map(|v| v.parse::<u64>())
                .transpose()
                .map_err(|_| not_configured(format!("variable {name} must be a whole number")))
                .map(|v| v.unwrap_or(default))
        };
        let markup = number("billing_markup_percent", u64::from(DEFAULT_MARKUP_PERCENT))?;
        Ok(Self {
            provider,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            timeout_ms: number("provider_timeout_ms", DEFAULT_PROVIDER_TIMEOUT_MS)?,
            markup_percent: u32::try_from(markup.min(1000)).unwrap_or(DEFAULT_MARKUP_PERCENT),
        })
    }
}

/// One provider call, retried on transient failures with backoff (honouring
/// `Retry-After`) within the run's wait budget. Every attempt writes a usage
/// record; only a successful one has tokens and cost, so a call that
/// succeeds after retries is billed once.
#[allow(clippy::too_many_arguments)]
fn call_with_retries(
    ctx: &RequestContext,
    caller: &Caller,
    agent: &StoredAgent,
    endpoint: &Endpoint,
    request: &ChatRequest,
    execution_id: &str,
    tally: &mut Tally,
    retry_wait: &mut u64,
    step: Option<&StepLink>,
) -> Result<ChatResponse, RunFailure> {
    let mut attempt = 0;
    loop {
        admit_call(
            ctx,
            &caller.org_id,
            endpoint,
            request,
            step.is_some(),
            *retry_wait,
            tally,
        )?;
        // Budgets: book the call's worst case first; settle it to the billed cost after.
        let budget_scope = budgets::ChargeScope {
            org_id: &caller.org_id,
            api_key_id: caller.api_key_id.as_deref(),
            workflow_id: step.map(|s| s.workflow_id.as_str()),
            agent_id: Some(&agent.id),
        };
        let reservation = reserve_budget(ctx, &budget_scope, endpoint, request)?;
        let started = now_ms();
        let result = call_once(ctx, &caller.org_id, endpoint, request);
        let latency = now_ms() - started;
        tally.provider_calls += 1;
        let record = UsageRecord {
            caller,
            agent_id: &agent.id,
            execution_id,
            step,
            endpoint,
            model: &request.model,
            latency,
        };
        match result {
            Ok(response) => {
                let cost = record
                    .succeeded(ctx, response.usage)
                    .map_err(storage_failure)?;
                let billed = cost.as_ref().map_or(0, |c| c.billed_micros);
                budgets::settle(ctx, &budget_scope, &reservation, billed)
                    .map_err(storage_failure)?;
                tally.input_tokens += response.usage.input_tokens;
                tally.output_tokens += response.usage.output_tokens;
                tally.base_micros += cost.as_ref().map_or(0, |c| c.base_micros);
                tally.billed_micros += cost.as_ref().map_or(0, |c| c.billed_micros);
                tally.pricing_missing |= cost.is_none();
                return Ok(response);
            }
            Err(error) => {
                record.failed(ctx, &error).map_err(storage_failure)?;
                budgets::settle(ctx, &budget_scope, &reservation, 0).map_err(storage_failure)?;
                let delay = backoff_delay_ms(attempt, retry_after(&error), ctx.random_unit());
                if !error.is_transient()
                    || attempt >= MAX_RETRIES
                    || *retry_wait + delay > RETRY_WAIT_BUDGET_MS
                {
                    return Err(error.into());
                }
                *retry_wait += delay;
                ctx.sleep_ms(delay);
                attempt += 1;
            }
        }
    }
}

/// Reserves the call's worst-case cost (input estimate and `max_tokens` at the
/// price and markup [`UsageRecord::succeeded`] bills) against every budget that
/// applies; a block budget it could pass fails the run with `budget_exceeded`.
fn reserve_budget(
    ctx: &RequestContext,
    scope: &budgets::ChargeScope,
    endpoint: &Endpoint,
    request: &ChatRequest,
) -> Result<budgets::Reservation, RunFailure> {
    let ttl_ms = endpoint
        .timeout_ms
        .saturating_add(budgets::RESERVATION_MARGIN_MS);
    let worst_case = || {
        let db = ctx.db()?;
        let markup = pricing::org_markup_percent(db, scope.org_id)?;
        let markup = markup.unwrap_or(endpoint.markup_percent);
        let price = pricing::effective_price(db, scope.org_id, endpoint.provider, &request.model)?;
        let price = price.map(|(price, _)| price);
        Ok(budgets::worst_case_micros(
            endpoint.provider,
            price,
            markup,
            request,
        ))
    };
    budgets::reserve(ctx, scope, ttl_ms, worst_case).map_err(|error| match error {
        ApiError::BudgetExceeded(message) => RunFailure {
            code: "budget_exceeded",
            message,
        },
        other => storage_failure(other),
    })
}

/// Most a workflow step waits in place for its provider slot; a later slot
/// defers the step to that time instead of holding the invocation.
const STEP_ADMISSION_WAIT_MS: u64 = 5_000;

/// Waits for the call's slot under the organisation's limits for the
/// provider (see `usage::admission`). A slot further away than the caller
/// may wait fails the run with `provider_deferred` and nothing is sent.
fn admit_call(
    ctx: &RequestContext,
    org_id: &str,
    endpoint: &Endpoint,
    request: &ChatRequest,
    in_step: bool,
    retry_wait: u64,
    tally: &mut Tally,
) -> Result<(), RunFailure> {
    let characters = request.system.as_ref().map_or(0, String::len)
        + request
            .messages
            .iter()
            .map(|m| m.content.len())
            .sum::<usize>();
    let tokens = estimated_tokens(characters, request.max_tokens);
    let max_wait = if in_step {
        // Well inside the step's lease, or the tick would hand the step to
        // another invocation while this one still waits to call.
        let lease = ctx
            .variable("step_lease_ms")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        STEP_ADMISSION_WAIT_MS.min(lease / 4)
    } else {
        RETRY_WAIT_BUDGET_MS.saturating_sub(retry_wait)
    };
    let db = ctx.db().map_err(storage_failure)?;
    let provider = endpoint.provider.as_str();
    match admit(db, org_id, provider, tokens, now_ms(), max_wait).map_err(storage_failure)? {
        Admission::Go { wait_ms } => {
            if wait_ms > 0 {
                ctx.sleep_ms(wait_ms);
            }
            Ok(())
        }
        Admission::Later { not_before } => {
            tally.not_before = Some(not_before);
            Err(RunFailure {
                code: "provider_deferred",
                message: format!(
                    "the organisation's {provider} limits allow no call before {}",
                    crate::timestamp(not_before)
                ),
            })
        }
    }
}

fn retry_after(error: &ProviderError) -> Option<u64> {
    match error {
        ProviderError::RateLimited {
            retry_after_secs, ..
        } => *retry_after_secs,
        _ => None,
    }
}

fn call_once(
    ctx: &RequestContext,
    org_id: &str,
    endpoint: &Endpoint,
    request: &ChatRequest,
) -> Result<ChatResponse, ProviderError> {
    let call = build_request(
        endpoint.provider,
        &endpoint.base_url,
        endpoint.api_key.as_deref(),
        request,
    );
    let reply = ctx
        .send(&OutboundRequest {
            method: call.method.to_string(),
            url: call.url,
            headers: call.headers,
            body: call.body,
            timeout_ms: endpoint.timeout_ms,
            max_response_bytes: MAX_PROVIDER_RESPONSE_BYTES,
        })
        .map_err(|e| match e {
            OutboundError::Timeout => ProviderError::Timeout,
            other => ProviderError::Transport(other.to_string()),
        })?;
    // The provider's own limits hold every call of the organisation to it.
    let now = now_ms();
    if let Some(hold_off) = hold_off_ms(&reply.headers, now) {
        let until = now.saturating_add(i64::try_from(hold_off).unwrap_or(i64::MAX));
        let paused = ctx
            .db()
            .and_then(|db| pause(db, org_id, endpoint.provider.as_str(), until));
        if let Err(problem) = paused {
            eprintln!("spindle: provider pause was not stored: {problem}");
        }
    }
    parse_response(endpoint.provider, reply.status, &reply.headers, &reply.body)
}

/// The usage record of one provider call.
struct UsageRecord<'a> {
    caller: &'a Caller,
    agent_id: &'a str,
    execution_id: &'a str,
    step: Option<&'a StepLink>,
    endpoint: &'a Endpoint,
    model: &'a str,
    latency: i64,
}

impl UsageRecord<'_> {
    /// Records a successful call with its tokens and cost; `None` when the
    /// model has no price (recorded as cost 0 with `pricing_missing`).
    fn succeeded(&self, ctx: &RequestContext, usage: Usage) -> Result<Option<Cost>, ApiError> {
        // The organisation's price and markup as they are now (usage::pricing).
        let markup = self.markup_percent(ctx)?;
        let org = self.caller.org_id.as_str();
        let price = pricing::effective_price(ctx.db()?, org, self.endpoint.provider, self.model)?;
        let cost = price.map(|(price, _)| cost_of(price, usage, markup));
        self.insert(ctx, "succeeded", None, usage, cost, markup)?;
        Ok(cost)
    }

    /// The organisation's own markup, else the app-wide `billing_markup_percent`.
    fn markup_percent(&self, ctx: &RequestContext) -> Result<u32, ApiError> {
        Ok(pricing::org_markup_percent(ctx.db()?, &self.caller.org_id)?
            .unwrap_or(self.endpoint.markup_percent))
    }

    fn failed(&self, ctx: &RequestContext, error: &ProviderError) -> Result<(), ApiError> {
        let none = Usage {
            input_tokens: 0,
            output_tokens: 0,
        };
        let cost = Some(Cost {
            base_micros: 0,
            billed_micros: 0,
        });
        let markup = self.markup_percent(ctx)?;
        self.insert(ctx, "failed", Some(error.code()), none, cost, markup)
    }

    fn insert(
        &self,
        ctx: &RequestContext,
        status: &str,
        error_code: Option<&str>,
        usage: Usage,
        cost: Option<Cost>,
        markup_percent: u32,
    ) -> Result<(), ApiError> {
        let id = ctx.new_id();
        // The record and its metrics in one commit.
        in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
            db.execute(
            "INSERT INTO usage_records (id, org_id, agent_id, agent_execution_id, workflow_id, execution_id, step_id, \
             api_key_id, provider, model, status, error_code, input_tokens, output_tokens, total_tokens, \
             base_cost_micros, billed_cost_micros, markup_percent, pricing_missing, latency_ms, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            &[
                Value::Text(id.clone()),
                Value::from(self.caller.org_id.as_str()),
                Value::from(self.agent_id),
                Value::from(self.execution_id),
                Value::from(self.step.map(|s| s.workflow_id.clone())),
                Value::from(self.step.map(|s| s.execution_id.clone())),
                Value::from(self.step.map(|s| s.step_id.clone())),
                Value::from(self.caller.api_key_id.clone()),
                Value::from(self.endpoint.provider.as_str()),
                Value::from(self.model),
                Value::from(status),
                Value::from(error_code),
                int(usage.input_tokens),
                int(usage.output_tokens),
                int(usage.input_tokens + usage.output_tokens),
                Value::Integer(cost.map_or(0, |c| c.base_micros)),
                Value::Integer(cost.map_or(0, |c| c.billed_micros)),
                Value::Integer(i64::from(markup_percent)),
                Value::Integer(i64::from(cost.is_none())),
                Value::Integer(self.latency),
                Value::Integer(now_ms()),
            ],
        )?;
            let call = ProviderCall {
                provider: self.endpoint.provider.as_str(),
                model: self.model,
                status,
                tokens: (
                    i64::try_from(usage.input_tokens).unwrap_or(i64::MAX),
                    i64::try_from(usage.output_tokens).unwrap_or(i64::MAX),
                ),
                cost: cost.map_or((0, 0), |c| (c.base_micros, c.billed_micros)),
                latency_ms: self.latency,
            };
            record_provider_call(db, &call)
        })
    }
}

fn storage_failure(error: ApiError) -> RunFailure {
    RunFailure {
        code: "storage_unavailable",
        message: error.to_string(),
    }
}

/// Runs one tool the model asked for; failures become the tool's answer so
/// the model can react to them.
fn run_tool(ctx: &RequestContext, spec: &AgentSpec, call: &ToolCall) -> String {
    if !spec.tools.contains(&call.name) {
        return format!("error: tool {:?} is not available to this agent", call.name);
    }
    if let Some(result) = run_builtin_tool(call, now_ms()) {
        return result.unwrap_or_else(|problem| format!("error: {problem}"));
    }
    match call.arguments.get("url").and_then(Json::as_str) {
        Some(url) if call.name == "http_get" => http_get(ctx, url),
        _ => format!("error: tool {:?} needs a `url` string", call.name),
    }
}

/// `http_get`: only hosts the app allows (the host enforces the component's
/// `allowed_outbound_hosts`), body capped at [`HTTP_GET_MAX_BYTES`].
fn http_get(ctx: &RequestContext, url: &str) -> String {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return "error: url must be absolute http(s)".into();
    }
    let reply = ctx.send(&OutboundRequest {
        method: "GET".into(),
        url: url.to_string(),
        headers: Vec::new(),
        body: Vec::new(),
        timeout_ms: 10_000,
        max_response_bytes: HTTP_GET_MAX_BYTES * 16,
    });
    match reply {
        Ok(reply) => {
            let (body, truncated) = truncate_http_body(&reply.body);
            let note = if truncated { "\n[truncated]" } else { "" };
            format!("HTTP {}\n{body}{note}", reply.status)
        }
        Err(OutboundError::Denied(_)) => format!("error: {url} is not an allowed host"),
        Err(error) => format!("error: {error}"),
    }
}

/// The user turn: the task, and the context as JSON when there is one.
fn user_content(input: &RunInput) -> String {
    match &input.context {
        Some(context) if context.as_object().is_some_and(|o| !o.is_empty()) => {
            format!("{}\n\nContext:\n{context}", input.task)
        }
        _ => input.task.clone(),
    }
}

/// The stored turns of a conversation, oldest first.
fn recall(
    ctx: &RequestContext,
    org_id: &str,
    agent_id: &str,
    conversation: &str,
) -> Result<Vec<Message>, ApiError> {
    let org = OrgScoped::new(ctx.db()?, org_id);
    let rows = org.execute(
        "SELECT role, content FROM conversation_messages \
         WHERE org_id = ?1 AND agent_id = ?2 AND conversation_id = ?3 ORDER BY seq",
        &[Value::from(agent_id), Value::from(conversation)],
    )?;
    Ok(rows
        .rows
        .iter()
        .map(|row| {
            let content = row[1].as_str().unwrap_or_default().to_string();
            match row[0].as_str() {
                Some("assistant") => Message::assistant(content),
                _ => Message::user(content),
            }
        })
        .collect())
}

/// Stores a user turn and the answer to it.
fn remember(
    ctx: &RequestContext,
    db: &dyn Db,
    org_id: &str,
    agent_id: &str,
    conversation: &str,
    user: &str,
    answer: &str,
) -> Result<(), ApiError> {
    let next = OrgScoped::new(db, org_id)
        .execute(
            "SELECT COALESCE(MAX(seq), 0) FROM conversation_messages \
             WHERE org_id = ?1 AND agent_id = ?2 AND conversation_id = ?3",
            &[Value::from(agent_id), Value::from(conversation)],
        )?
        .scalar_i64()
        .unwrap_or(0);
    for (offset, (role, content)) in [("user", user), ("assistant", answer)]
        .into_iter()
        .enumerate()
    {
        db.execute(
            "INSERT INTO conversation_messages (org_id, id, agent_id, conversation_id, seq, role, content, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            &[
                Value::from(org_id),
                Value::Text(ctx.new_id()),
                Value::from(agent_id),
                Value::from(conversation),
                Value::Integer(next + 1 + offset as i64),
                Value::from(role),
                Value::from(content),
                Value::Integer(now_ms()),
            ],
        )?;
    }
    Ok(())
}

fn int(n: u64) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The stored execution as the API shows it.
pub fn execution_json(org: &OrgScoped, execution_id: &str) -> Result<Json, ApiError> {
    let row = fetch_one(
        org,
        &format!("SELECT {EXECUTION_COLUMNS} FROM agent_executions WHERE org_id = ?1 AND id = ?2"),
        &[Value::from(execution_id)],
        || format!("agent execution {execution_id}"),
    )?;
    let missing = org
        .execute(
            "SELECT COUNT(*) FROM usage_records WHERE org_id = ?1 AND agent_execution_id = ?2 AND pricing_missing = 1",
            &[Value::from(execution_id)],
        )?
        .scalar_i64()
        .unwrap_or(0);
    Ok(execution_row_json(&row, missing > 0))
}

/// The columns [`execution_row_json`] reads, in order.
pub const EXECUTION_COLUMNS: &str = "id, agent_id, conversation_id, status, task, context, output, tool_calls, \
     input_tokens, output_tokens, base_cost_micros, billed_cost_micros, provider_calls, duration_ms, error, \
     created_at, finished_at";

/// One execution row (selected with [`EXECUTION_COLUMNS`]) as JSON.
pub fn execution_row_json(row: &[Value], pricing_missing: bool) -> Json {
    let input = row[8].as_i64().unwrap_or(0);
    let output = row[9].as_i64().unwrap_or(0);
    let base = row[10].as_i64().unwrap_or(0);
    let billed = row[11].as_i64().unwrap_or(0);
    json!({
        "id": row[0].as_str(),
        "agent_id": row[1].as_str(),
        "conversation_id": row[2].as_str(),
        "status": row[3].as_str(),
        "task": row[4].as_str(),
        "context": json_column(&row[5]),
        "output": row[6].as_str(),
        "tool_calls": json_column(&row[7]).unwrap_or(json!([])),
        "usage": {
            "input_tokens": input,
            "output_tokens": output,
            "total_tokens": input + output,
            "provider_calls": row[12].as_i64(),
        },
        "cost": {
            "base_micros": base,
            "billed_micros": billed,
            "base": format_micros(base),
            "billed": format_micros(billed),
            "pricing_missing": pricing_missing,
        },
        "duration_ms": row[13].as_i64(),
        "error": json_column(&row[14]),
        "created_at": row[15].as_i64().map(timestamp),
        "finished_at": row[16].as_i64().map(timestamp),
    })
}
