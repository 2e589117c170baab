//! Running an agent: provider calls with retries, the tool-calling loop,
//! memory, and one usage record per provider call.

use super::definition::AgentSpec;
use crate::auth::record_activity;
use crate::context::RequestContext;
use crate::usage::admission::{Admission, admit, estimated_tokens, hold_off_ms, pause};
use crate::usage::metrics::{ProviderCall, record_provider_call};
use crate::usage::{budgets, pricing};
use crate::{fetch_one, json_column, now_ms, timestamp};
use serde_json::{Value as Json, json};
use spindle_auth::Caller;
use spindle_http::{ApiError, OutboundError, OutboundRequest};
use spindle_providers::pricing::{Cost, cost_of, format_micros};
use spindle_providers::retry::RETRY_AFTER_CAP_SECS;
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
    /// When the last call was refused with `Retry-After`: how long the
    /// provider asked to wait (ms, capped), for the workflow step's retry.
    retry_after_ms: Option<u64>,
    /// The usage record of each provider call, written by [`AgentRun::store`].
    calls: Vec<CallRecord>,
    /// Each call's budget reservation and its billed cost, settled by [`AgentRun::store`].
    settlements: Vec<(budgets::Reservation, i64)>,
}

/// Runs `agent` on `input` now, stores the run and returns the stored
/// execution as JSON. Provider failures do not fail the request: the
/// execution records them with status `failed`.
pub fn run_agent(
    ctx: &RequestContext,
    caller: &Caller,
    agent: &StoredAgent,
    input: RunInput,
) -> Result<Json, ApiError> {
    let run = AgentRun::perform(ctx, caller, agent, input);
    let db = ctx.db()?;
    in_transaction(db, |db| run.store(ctx, db))?;
    execution_json(&OrgScoped::new(db, &caller.org_id), &run.execution_id)
}

/// An agent run that has happened and is not stored yet: what it answered,
/// its totals, and the usage record and budget settlement of each provider
/// call. [`AgentRun::store`] writes it all in the caller's transaction, so
/// a workflow step stores its agent run, its usage and its own result in
/// one commit.
pub struct AgentRun {
    execution_id: String,
    caller: Caller,
    agent_id: String,
    memory: bool,
    input: RunInput,
    started: i64,
    finished: i64,
    outcome: Result<String, RunFailure>,
    tally: Tally,
}

impl AgentRun {
    /// Runs `agent` on `input`: the provider calls (admitted, and booked
    /// against the budgets first) and the tools the model asks for. Nothing
    /// of the run itself is written until [`AgentRun::store`].
    pub fn perform(
        ctx: &RequestContext,
        caller: &Caller,
        agent: &StoredAgent,
        input: RunInput,
    ) -> Self {
        let started = now_ms();
        let execution_id = ctx.new_id();
        let mut tally = Tally::default();
        let outcome = converse(ctx, caller, agent, &input, &mut tally);
        Self {
            execution_id,
            caller: caller.clone(),
            agent_id: agent.id.clone(),
            memory: agent.spec.memory.enabled,
            input,
            started,
            finished: now_ms(),
            outcome,
            tally,
        }
    }

    /// The model's final answer, or why there is none: a stable code, a
    /// message, and for a call the organisation's limits held back, the
    /// earliest time (ms) it could go.
    pub fn answer(&self) -> Result<&str, (&'static str, &str, Option<i64>)> {
        match &self.outcome {
            Ok(text) => Ok(text),
            Err(failure) => Err((failure.code, &failure.message, self.tally.not_before)),
        }
    }

    /// How long the provider asked to wait before a new call (its
    /// `Retry-After`, in ms, capped), when the run failed on a rate limit.
    pub fn retry_after_ms(&self) -> Option<u64> {
        self.outcome.as_ref().err().and(self.tally.retry_after_ms)
    }

    /// Tokens in and out, and the base and billed cost in micro-dollars, of all its calls.
    pub fn totals(&self) -> (i64, i64, i64, i64) {
        let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        (
            tokens(self.tally.input_tokens),
            tokens(self.tally.output_tokens),
            self.tally.base_micros,
            self.tally.billed_micros,
        )
    }

    /// Writes the run: its execution, each call's usage record and metrics,
    /// the budget settlements, the agent's counters, the conversation's new
    /// turns, the `agent.executed` event and the activity entry. Call it
    /// inside a transaction.
    pub fn store(&self, ctx: &RequestContext, db: &dyn Db) -> Result<(), ApiError> {
        let (caller, input, tally) = (&self.caller, &self.input, &self.tally);
        let (status, output, error) = match &self.outcome {
            Ok(text) => ("completed", Some(text.clone()), None),
            Err(failure) => {
                let mut error = json!({"code": failure.code, "message": failure.message});
                if let Some(at) = tally.not_before {
                    error["not_before"] = json!(crate::timestamp(at));
                }
                ("failed", None, Some(error))
            }
        };
        let duration = self.finished - self.started;
        let step = input.step.as_ref();
        db.execute(
            "INSERT INTO agent_executions (id, org_id, agent_id, execution_id, step_id, conversation_id, status, task, \
             context, created_by, created_at, output, tool_calls, input_tokens, output_tokens, base_cost_micros, \
             billed_cost_micros, provider_calls, duration_ms, error, finished_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            &[
                Value::from(self.execution_id.as_str()),
                Value::from(caller.org_id.as_str()),
                Value::from(self.agent_id.as_str()),
                Value::from(step.map(|s| s.execution_id.clone())),
                Value::from(step.map(|s| s.step_id.clone())),
                Value::from(input.conversation_id.clone()),
                Value::from(status),
                Value::from(input.task.as_str()),
                Value::from(input.context.as_ref().map(Json::to_string)),
                Value::from(caller.subject.as_str()),
                Value::Integer(self.started),
                Value::from(output),
                Value::Text(Json::Array(tally.tool_calls.clone()).to_string()),
                int(tally.input_tokens),
                int(tally.output_tokens),
                Value::Integer(tally.base_micros),
                Value::Integer(tally.billed_micros),
                int(tally.provider_calls),
                Value::Integer(duration),
                Value::from(error.as_ref().map(Json::to_string)),
                Value::Integer(self.finished),
            ],
        )?;
        for call in &tally.calls {
            call.insert(db, self)?;
        }
        let budget_scope = charge_scope(caller, &self.agent_id, step);
        for (reservation, billed) in &tally.settlements {
            budgets::settle(ctx, &budget_scope, reservation, *billed)?;
        }
        let org = OrgScoped::new(db, &caller.org_id);
        org.execute(
            "UPDATE agents SET execution_count = execution_count + 1, success_count = success_count + ?2, \
             total_tokens = total_tokens + ?3, total_cost_micros = total_cost_micros + ?4, \
             total_latency_ms = total_latency_ms + ?5, last_executed_at = ?6 WHERE org_id = ?1 AND id = ?7",
            &[
                Value::Integer(i64::from(self.outcome.is_ok())),
                int(tally.input_tokens + tally.output_tokens),
                Value::Integer(tally.billed_micros),
                Value::Integer(duration),
                Value::Integer(self.finished),
                Value::from(self.agent_id.as_str()),
            ],
        )?;
        if let (Ok(answer), Some(conversation)) = (&self.outcome, &input.conversation_id)
            && self.memory
        {
            remember(
                ctx,
                db,
                &caller.org_id,
                &self.agent_id,
                conversation,
                &user_content(input),
                answer,
            )?;
        }
        let data = json!({
            "agent_id": self.agent_id,
            "agent_execution_id": self.execution_id,
            "status": status,
            "execution_id": step.map(|s| s.execution_id.clone()),
            "step_id": step.map(|s| s.step_id.clone()),
        });
        crate::engine::emit_event(ctx, db, &caller.org_id, "agent.executed", &data)?;
        if step.is_some() {
            // A workflow's agent steps are in its run's logs, not the activity log.
            return Ok(());
        }
        record_activity(
            ctx,
            db,
            &caller.org_id,
            &caller.subject,
            "agent.executed",
            ("agent_execution", &self.execution_id),
            &json!({"agent_id": self.agent_id, "status": status}),
        )
    }
}

/// The model conversation: calls the provider, runs the tools it asks for,
/// and returns its final answer.
fn converse(
    ctx: &RequestContext,
    caller: &Caller,
    agent: &StoredAgent,
    input: &RunInput,
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
        // Requests that start a call check these first (`check_call_settings`);
        // a workflow step started before the variable went bad fails here.
        let settings = |error: ApiError| not_configured(error.to_string());
        Ok(Self {
            provider,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            timeout_ms: provider_timeout_ms(ctx).map_err(settings)?,
            markup_percent: pricing::default_markup_percent(ctx).map_err(settings)?,
        })
    }
}

/// The `provider_timeout_ms` variable, else [`DEFAULT_PROVIDER_TIMEOUT_MS`].
fn provider_timeout_ms(ctx: &RequestContext) -> Result<u64, ApiError> {
    match ctx.variable("provider_timeout_ms") {
        None => Ok(DEFAULT_PROVIDER_TIMEOUT_MS),
        Some(value) => value.trim().parse::<u64>().map_err(|_| {
            ApiError::misconfigured(
                "provider_timeout_ms",
                format!("is {value:?}, not a whole number of milliseconds"),
            )
        }),
    }
}

/// Checks the app's variables every provider call reads
/// (`billing_markup_percent`, `provider_timeout_ms`): a malformed one is
/// `503 misconfigured` for a request that would make calls, before anything
/// is stored for it.
pub fn check_call_settings(ctx: &RequestContext) -> Result<(), ApiError> {
    pricing::default_markup_percent(ctx)?;
    provider_timeout_ms(ctx)?;
    Ok(())
}

/// One provider call. Outside a workflow it is retried here on transient
/// failures with backoff (honouring `Retry-After`) within the run's wait
/// budget. In a workflow step it is made once: the step's node retries it
/// under its `retry` policy (the engine's runner), so there is one retry
/// loop and one attempt budget per node. Every attempt writes a usage
/// record; only a successful one has tokens and cost, so a call that
/// succeeds after retries is billed once.
#[allow(clippy::too_many_arguments)]
fn call_with_retries(
    ctx: &RequestContext,
    caller: &Caller,
    agent: &StoredAgent,
    endpoint: &Endpoint,
    request: &ChatRequest,
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
            retry_wait,
            tally,
        )?;
        // Budgets: book the call's worst case first; settle it to the billed cost after.
        let budget_scope = charge_scope(caller, &agent.id, step);
        let reservation = reserve_budget(ctx, &budget_scope, endpoint, request)?;
        let started = now_ms();
        let result = call_once(ctx, &caller.org_id, endpoint, request);
        let latency = now_ms() - started;
        tally.provider_calls += 1;
        // The organisation's price and markup as they are now (usage::pricing).
        let markup =
            pricing::org_markup_percent(ctx.db().map_err(storage_failure)?, &caller.org_id)
                .map_err(storage_failure)?
                .unwrap_or(endpoint.markup_percent);
        // As a failed attempt is recorded: no tokens, no cost.
        let mut record = CallRecord {
            id: ctx.new_id(),
            provider: endpoint.provider,
            model: request.model.clone(),
            status: "failed",
            error_code: None,
            usage: Usage {
                input_tokens: 0,
                output_tokens: 0,
            },
            cost: Some(Cost {
                base_micros: 0,
                billed_micros: 0,
            }),
            markup_percent: markup,
            latency,
            at: now_ms(),
        };
        match result {
            Ok(response) => {
                let price = pricing::effective_price(
                    ctx.db().map_err(storage_failure)?,
                    &caller.org_id,
                    endpoint.provider,
                    &request.model,
                )
                .map_err(storage_failure)?;
                let cost = price.map(|(price, _)| cost_of(price, response.usage, markup));
                (record.status, record.usage, record.cost) = ("succeeded", response.usage, cost);
                tally.calls.push(record);
                let billed = cost.as_ref().map_or(0, |c| c.billed_micros);
                tally.settlements.push((reservation, billed));
                tally.input_tokens += response.usage.input_tokens;
                tally.output_tokens += response.usage.output_tokens;
                tally.base_micros += cost.as_ref().map_or(0, |c| c.base_micros);
                tally.billed_micros += cost.as_ref().map_or(0, |c| c.billed_micros);
                tally.pricing_missing |= cost.is_none();
                return Ok(response);
            }
            Err(error) => {
                record.error_code = Some(error.code());
                tally.calls.push(record);
                tally.settlements.push((reservation, 0));
                tally.retry_after_ms = retry_after(&error)
                    .map(|secs| secs.min(RETRY_AFTER_CAP_SECS).saturating_mul(1000));
                // A workflow step's node retries (see above).
                if step.is_some() || !error.is_transient() || attempt >= MAX_RETRIES {
                    return Err(error.into());
                }
                let delay = backoff_delay_ms(attempt, retry_after(&error), ctx.random_unit());
                if *retry_wait + delay > RETRY_WAIT_BUDGET_MS {
                    return Err(error.into());
                }
                *retry_wait += delay;
                ctx.sleep_ms(delay);
                attempt += 1;
            }
        }
    }
}

/// What a call of `agent_id` for `caller` (in workflow step `step`, if any) is
/// charged against: the budgets of the organisation, the key, the workflow and the agent.
fn charge_scope<'a>(
    caller: &'a Caller,
    agent_id: &'a str,
    step: Option<&'a StepLink>,
) -> budgets::ChargeScope<'a> {
    budgets::ChargeScope {
        org_id: &caller.org_id,
        api_key_id: caller.api_key_id.as_deref(),
        workflow_id: step.map(|s| s.workflow_id.as_str()),
        agent_id: Some(agent_id),
    }
}

/// Reserves the call's worst-case cost (input estimate and `max_tokens` at the
/// price and markup the call's usage record bills) against every budget that
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

/// A quarter of a step's lease: the most a step waits in place for a
/// provider, well inside the lease, or the tick would hand the step to
/// another invocation while this one still waits to call.
fn quarter_lease_ms(ctx: &RequestContext) -> u64 {
    u64::try_from(crate::engine::step_lease_ms(ctx) / 4).unwrap_or(0)
}

/// Most a workflow step waits in place for its provider slot; a later slot
/// defers the step to that time instead of holding the invocation.
const STEP_ADMISSION_WAIT_MS: u64 = 5_000;

/// Waits for the call's slot under the organisation's limits for the
/// provider (see `usage::admission`). A slot further away than the caller
/// may wait fails the run with `provider_deferred` and nothing is sent. A
/// direct call's slot waits come out of the same 20 s as its retry sleeps
/// (`waited`).
fn admit_call(
    ctx: &RequestContext,
    org_id: &str,
    endpoint: &Endpoint,
    request: &ChatRequest,
    in_step: bool,
    waited: &mut u64,
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
        STEP_ADMISSION_WAIT_MS.min(quarter_lease_ms(ctx))
    } else {
        RETRY_WAIT_BUDGET_MS.saturating_sub(*waited)
    };
    let db = ctx.db().map_err(storage_failure)?;
    let provider = endpoint.provider.as_str();
    match admit(db, org_id, provider, tokens, now_ms(), max_wait).map_err(storage_failure)? {
        Admission::Go { wait_ms } => {
            if wait_ms > 0 {
                ctx.sleep_ms(wait_ms);
                if !in_step {
                    *waited += wait_ms;
                }
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

/// The usage record of one provider call, written by [`AgentRun::store`]. A
/// failed attempt has no tokens and costs nothing, so a call that succeeds
/// after retries is billed once; a model without a price costs 0 and is
/// marked `pricing_missing`.
struct CallRecord {
    id: String,
    provider: Provider,
    model: String,
    status: &'static str,
    error_code: Option<&'static str>,
    usage: Usage,
    cost: Option<Cost>,
    markup_percent: u32,
    latency: i64,
    at: i64,
}

impl CallRecord {
    /// Inserts the record of a call of `run` and counts it in the metrics.
    fn insert(&self, db: &dyn Db, run: &AgentRun) -> Result<(), ApiError> {
        let step = run.input.step.as_ref();
        db.execute(
            "INSERT INTO usage_records (id, org_id, agent_id, agent_execution_id, workflow_id, execution_id, step_id, \
             api_key_id, provider, model, status, error_code, input_tokens, output_tokens, total_tokens, \
             base_cost_micros, billed_cost_micros, markup_percent, pricing_missing, latency_ms, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            &[
                Value::from(self.id.as_str()),
                Value::from(run.caller.org_id.as_str()),
                Value::from(run.agent_id.as_str()),
                Value::from(run.execution_id.as_str()),
                Value::from(step.map(|s| s.workflow_id.clone())),
                Value::from(step.map(|s| s.execution_id.clone())),
                Value::from(step.map(|s| s.step_id.clone())),
                Value::from(run.caller.api_key_id.clone()),
                Value::from(self.provider.as_str()),
                Value::from(self.model.as_str()),
                Value::from(self.status),
                Value::from(self.error_code),
                int(self.usage.input_tokens),
                int(self.usage.output_tokens),
                int(self.usage.input_tokens + self.usage.output_tokens),
                Value::Integer(self.cost.map_or(0, |c| c.base_micros)),
                Value::Integer(self.cost.map_or(0, |c| c.billed_micros)),
                Value::Integer(i64::from(self.markup_percent)),
                Value::Integer(i64::from(self.cost.is_none())),
                Value::Integer(self.latency),
                Value::Integer(self.at),
            ],
        )?;
        let call = ProviderCall {
            provider: self.provider,
            model: &self.model,
            status: self.status,
            error_code: self.error_code,
            tokens: (
                i64::try_from(self.usage.input_tokens).unwrap_or(i64::MAX),
                i64::try_from(self.usage.output_tokens).unwrap_or(i64::MAX),
            ),
            cost: self
                .cost
                .map_or((0, 0), |c| (c.base_micros, c.billed_micros)),
            latency_ms: self.latency,
        };
        record_provider_call(db, &call)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backends::TestBackends;

    fn with(name: &'static str, value: &str) -> RequestContext {
        RequestContext::new(Box::new(TestBackends::memory().variable(name, value)))
    }

    fn misconfigured_variable(result: Result<(), ApiError>) -> String {
        match result {
            Err(ApiError::Misconfigured { variable, .. }) => variable,
            other => panic!("not misconfigured: {other:?}"),
        }
    }

    #[test]
    fn malformed_call_settings_are_misconfigured_and_good_ones_pass() {
        let unset = RequestContext::new(Box::new(TestBackends::memory()));
        assert!(check_call_settings(&unset).is_ok());
        assert!(check_call_settings(&with("billing_markup_percent", "35")).is_ok());
        assert!(check_call_settings(&with("provider_timeout_ms", "800")).is_ok());
        for (name, value) in [
            ("billing_markup_percent", "lots"),
            ("billing_markup_percent", "-5"),
            ("provider_timeout_ms", "1.5"),
            ("provider_timeout_ms", "soon"),
        ] {
            assert_eq!(
                misconfigured_variable(check_call_settings(&with(name, value))),
                name,
                "{name}={value}"
            );
        }
        assert_eq!(
            provider_timeout_ms(&RequestContext::new(Box::new(TestBackends::memory()))).unwrap(),
            60_000
        );
    }

    /// Direct agent calls (`POST /api/v1/agents/:id/execute`, no workflow)
    /// against a scripted provider, with every sleep recorded.
    mod direct_call_retries {
        use super::super::*;
        use crate::Backends;
        use spindle_auth::Role;
        use spindle_http::OutboundResponse;
        use spindle_store::{
            DbError, KvError, KvStore, MemoryKv, Rows, RusqliteDb, TransactionState,
        };
        use std::cell::{Cell, RefCell};
        use std::collections::VecDeque;
        use std::rc::Rc;

        /// What the provider answers each call, in order: a status and its
        /// `Retry-After` (seconds), or a transport failure; a success once
        /// the script runs out.
        type Replies = Rc<RefCell<VecDeque<Result<(u16, Option<&'static str>), OutboundError>>>>;

        /// One SQLite connection in memory, shared by the context and the host.
        struct Shared(Rc<RusqliteDb>);

        impl Db for Shared {
            fn execute(&self, sql: &str, params: &[Value]) -> Result<Rows, DbError> {
                self.0.execute(sql, params)
            }
            fn transaction(&self) -> &TransactionState {
                self.0.transaction()
            }
        }

        /// A provider answering from a script (its calls counted), and
        /// sleeps recorded instead of slept. Admission reads the system
        /// clock, which a recorded sleep does not move, so each sleep moves
        /// the limiter's stored times (pauses, booked slots) back by its
        /// length instead, as if that time had passed.
        struct Host {
            db: Rc<RusqliteDb>,
            replies: Replies,
            calls: Rc<Cell<usize>>,
            slept: Rc<RefCell<Vec<u64>>>,
            /// The word every jitter draw (an 8-byte random read) gets.
            jitter: u64,
        }

        /// Jitter draws of 0 and of just under 1 (`RequestContext::random_unit`).
        const LEAST_JITTER: u64 = 0;
        const MOST_JITTER: u64 = u64::MAX;

        impl Backends for Host {
            fn open_db(&self) -> Result<Box<dyn Db>, DbError> {
                Ok(Box::new(Shared(self.db.clone())))
            }
            fn open_kv(&self) -> Result<Box<dyn KvStore>, KvError> {
                Ok(Box::new(MemoryKv::default()))
            }
            fn variable(&self, name: &str) -> Option<String> {
                (name == "openai_compatible_base_url").then(|| "http://provider.test/v1".into())
            }
            fn random_bytes(&self, buffer: &mut [u8]) {
                if buffer.len() == 8 {
                    buffer.copy_from_slice(&self.jitter.to_le_bytes());
                } else {
                    getrandom::fill(buffer).expect("the OS's random source");
                }
            }
            fn send(&self, _: &OutboundRequest) -> Result<OutboundResponse, OutboundError> {
                self.calls.set(self.calls.get() + 1);
                let reply = self.replies.borrow_mut().pop_front();
                let (status, retry_after) = reply.unwrap_or(Ok((200, None)))?;
                let body: &[u8] = if status < 300 {
                    br#"{"choices": [{"message": {"role": "assistant", "content": "done"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 12, "completion_tokens": 3}}"#
                } else {
                    br#"{"error": {"message": "busy"}}"#
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
                self.db
                    .execute(
                        "UPDATE provider_limits SET paused_until = paused_until - ?1, \
                         request_tat = request_tat - ?1, token_tat = token_tat - ?1",
                        &[Value::Integer(i64::try_from(ms).unwrap())],
                    )
                    .unwrap();
            }
        }

        /// A direct call of agent `ag1` (OpenAI-compatible) to a provider
        /// answering `replies`, under a limit of `requests_per_minute` if
        /// any, with jitter draws of `jitter`: the stored execution, how many
        /// calls reached the provider, and the sleeps between them.
        fn direct_call(
            replies: Vec<Result<(u16, Option<&'static str>), OutboundError>>,
            requests_per_minute: Option<i64>,
            jitter: u64,
        ) -> (Json, usize, Vec<u64>) {
            let host = Host {
                db: Rc::new(RusqliteDb::memory()),
                replies: Rc::new(RefCell::new(replies.into())),
                calls: Rc::default(),
                slept: Rc::default(),
                jitter,
            };
            let (calls, slept) = (host.calls.clone(), host.slept.clone());
            let ctx = RequestContext::new(Box::new(host));
            let db = ctx.db().unwrap();
            db.execute(
                "INSERT INTO organizations (id, name, created_at, updated_at) VALUES ('o1', 'one', 0, 0)",
                &[],
            )
            .unwrap();
            let spec = AgentSpec::from_json(json!({
                "name": "summariser",
                "model_config": {"provider": "openai_compatible", "model": "local"}
            }))
            .unwrap();
            db.execute(
                "INSERT INTO agents (id, org_id, name, provider, model, config, created_at, updated_at) \
                 VALUES ('ag1', 'o1', 'summariser', 'openai_compatible', 'local', ?, 0, 0)",
                &[Value::Text(serde_json::to_string(&spec).unwrap())],
            )
            .unwrap();
            if let Some(limit) = requests_per_minute {
                db.execute(
                    "INSERT INTO provider_limits (org_id, provider, requests_per_minute, updated_at) \
                     VALUES ('o1', 'openai_compatible', ?, 0)",
                    &[Value::Integer(limit)],
                )
                .unwrap();
            }
            let caller = Caller {
                org_id: "o1".into(),
                subject: "key:k1".into(),
                role: Role::Member,
                api_key_id: None,
            };
            let agent = StoredAgent {
                id: "ag1".into(),
                spec,
            };
            let input = RunInput {
                task: "summarise".into(),
                context: None,
                max_tokens: None,
                conversation_id: None,
                step: None,
                timeout_ms: None,
                output_schema: None,
            };
            let execution = run_agent(&ctx, &caller, &agent, input).unwrap();
            let slept = slept.borrow().clone();
            (execution, calls.get(), slept)
        }

        /// README (Agents): "5xx and timeouts are retried up to 3 times with
        /// exponential backoff and jitter": retry n waits 500 ms × 2^(n−1),
        /// jittered to between half of it (least jitter) and all of it (most).
        #[test]
        fn a_5xx_is_retried_three_times_with_exponential_jittered_backoff() {
            for (jitter, waits) in [
                (LEAST_JITTER, [250, 500, 1_000]),
                (MOST_JITTER, [500, 1_000, 2_000]),
            ] {
                let (execution, calls, slept) = direct_call(vec![Ok((503, None)); 5], None, jitter);
                assert_eq!(execution["status"], "failed");
                assert_eq!(execution["error"]["code"], "provider_unavailable");
                assert_eq!(calls, 4, "the call and 3 retries");
                assert_eq!(execution["usage"]["provider_calls"], 4);
                assert_eq!(slept, waits);
            }
        }

        /// README (Agents): timeouts are retried.
        #[test]
        fn a_provider_timeout_is_retried() {
            let replies = vec![Err(OutboundError::Timeout), Ok((200, None))];
            let (execution, calls, slept) = direct_call(replies, None, LEAST_JITTER);
            assert_eq!(execution["status"], "completed", "{execution}");
            assert_eq!(execution["output"], "done");
            assert_eq!(calls, 2);
            assert_eq!(slept, [250]);
        }

        /// README (Agents): "Rate limits (429, honouring `Retry-After`) … are
        /// retried up to 3 times … (at most 20 s of waiting per run)".
        #[test]
        fn a_direct_call_waits_at_most_20_s_however_long_the_retry_afters() {
            // An hour, honoured up to 60 s, is past the budget: no wait at all.
            let (execution, calls, slept) =
                direct_call(vec![Ok((429, Some("3600")))], None, MOST_JITTER);
            assert_eq!(execution["status"], "failed");
            assert_eq!(execution["error"]["code"], "provider_rate_limited");
            assert_eq!((calls, slept), (1, vec![]));
            // 8 s each: two waits (16 s); a third would pass 20 s.
            let (execution, calls, slept) =
                direct_call(vec![Ok((429, Some("8"))); 4], None, MOST_JITTER);
            assert_eq!(execution["status"], "failed");
            assert_eq!((calls, slept), (3, vec![8_000, 8_000]));
            // 5 s each: the 3 retries fit (15 s).
            let (execution, calls, slept) =
                direct_call(vec![Ok((429, Some("5"))); 5], None, MOST_JITTER);
            assert_eq!(execution["status"], "failed");
            assert_eq!((calls, slept), (4, vec![5_000, 5_000, 5_000]));
            // 5 s, then an answer.
            let (execution, calls, slept) = direct_call(
                vec![Ok((429, Some("5"))), Ok((200, None))],
                None,
                MOST_JITTER,
            );
            assert_eq!(execution["status"], "completed");
            assert_eq!((calls, slept), (2, vec![5_000]));
        }

        /// README (Provider limits): "a direct agent call waits within its
        /// 20 s retry budget" for its slot, and (Agents) "at most 20 s of
        /// waiting per run".
        #[test]
        fn a_direct_call_waits_at_most_20_s_in_all_under_provider_limits() {
            // 4 a minute: one slot every 15 s.
            let (execution, calls, slept) =
                direct_call(vec![Ok((503, None)); 5], Some(4), MOST_JITTER);
            assert_eq!(execution["status"], "failed");
            let waited: u64 = slept.iter().sum();
            assert!(
                waited <= 20_000,
                "waited {waited} ms in {calls} calls: {slept:?}"
            );
        }
    }
}
