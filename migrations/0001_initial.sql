-- Spindle's initial schema.
--
-- Conventions: ids are UUID text (v7 where order helps); times are UTC
-- milliseconds since the Unix epoch (INTEGER); money is integer
-- micro-dollars; JSON documents are TEXT. Every row carries org_id and every
-- lookup the API makes starts with it, so each index leads with org_id.
-- One statement per `;`: the app splits this file, since Spin's SQLite runs
-- only the first statement of a string.

CREATE TABLE organizations (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL GENERATED ALWAYS AS (id) VIRTUAL,
    name TEXT NOT NULL,
    settings TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    -- Requests per minute this key may make; NULL means the app's default.
    rate_limit_per_minute INTEGER,
    created_by TEXT,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER,
    expires_at INTEGER,
    revoked_at INTEGER
);

CREATE INDEX api_keys_by_org ON api_keys (org_id, created_at);

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    -- The rest of the definition (model parameters, personality,
    -- instructions, tools, memory) as one JSON document.
    config TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'IDLE',
    execution_count INTEGER NOT NULL DEFAULT 0,
    success_count INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    total_cost_micros INTEGER NOT NULL DEFAULT 0,
    total_latency_ms INTEGER NOT NULL DEFAULT 0,
    last_executed_at INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted_at INTEGER
);

CREATE INDEX agents_by_org ON agents (org_id, deleted_at, created_at);

-- One run of an agent, on its own (POST /agents/:id/execute) or as a
-- workflow step (execution_id and step_id set).
CREATE TABLE agent_executions (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    agent_id TEXT NOT NULL REFERENCES agents (id),
    execution_id TEXT,
    step_id TEXT,
    conversation_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    task TEXT NOT NULL,
    context TEXT,
    output TEXT,
    tool_calls TEXT NOT NULL DEFAULT '[]',
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    base_cost_micros INTEGER NOT NULL DEFAULT 0,
    billed_cost_micros INTEGER NOT NULL DEFAULT 0,
    provider_calls INTEGER NOT NULL DEFAULT 0,
    duration_ms INTEGER,
    error TEXT,
    created_by TEXT,
    created_at INTEGER NOT NULL,
    finished_at INTEGER
);

CREATE INDEX agent_executions_by_agent ON agent_executions (org_id, agent_id, created_at);

-- An agent's memory: the turns of each conversation, in order.
CREATE TABLE conversation_messages (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    agent_id TEXT NOT NULL REFERENCES agents (id),
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'tool')),
    content TEXT NOT NULL,
    tool_calls TEXT,
    tool_call_id TEXT,
    tool_name TEXT,
    created_at INTEGER NOT NULL,
    UNIQUE (org_id, agent_id, conversation_id, seq)
);

CREATE TABLE workflows (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    is_active INTEGER NOT NULL DEFAULT 1,
    current_version INTEGER NOT NULL DEFAULT 1,
    -- The Standard Webhooks secret (`whsec_…`) that signs calls to its
    -- webhook. Kept in clear because verifying needs it; never returned
    -- after creation or rotation.
    webhook_secret TEXT NOT NULL,
    -- How calls to its webhook are signed: Standard Webhooks or GitHub's.
    webhook_scheme TEXT NOT NULL DEFAULT 'standard' CHECK (webhook_scheme IN ('standard', 'github')),
    created_by TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted_at INTEGER
);

CREATE INDEX workflows_by_org ON workflows (org_id, deleted_at, created_at);

-- Webhook deliveries seen, by their webhook-id: a replay is refused. Rows
-- older than the signature's tolerance can be pruned.
CREATE TABLE webhook_receipts (
    org_id TEXT NOT NULL REFERENCES organizations (id),
    workflow_id TEXT NOT NULL REFERENCES workflows (id),
    webhook_id TEXT NOT NULL,
    execution_id TEXT,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, webhook_id)
);

CREATE TABLE workflow_versions (
    org_id TEXT NOT NULL REFERENCES organizations (id),
    workflow_id TEXT NOT NULL REFERENCES workflows (id),
    version INTEGER NOT NULL,
    definition TEXT NOT NULL,
    created_by TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, version)
);

CREATE INDEX workflow_versions_by_org ON workflow_versions (org_id, workflow_id, version);

CREATE TABLE executions (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    workflow_id TEXT NOT NULL REFERENCES workflows (id),
    workflow_version INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'waiting', 'completed', 'failed', 'cancelled')),
    trigger_kind TEXT NOT NULL,
    inputs TEXT NOT NULL DEFAULT '{}',
    output TEXT,
    error TEXT,
    -- The node whose failure failed the run.
    failed_node TEXT,
    -- The caller's Idempotency-Key and a hash of its request, for 24 h.
    idempotency_key TEXT,
    request_hash TEXT,
    api_key_id TEXT,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    base_cost_micros INTEGER NOT NULL DEFAULT 0,
    billed_cost_micros INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    updated_at INTEGER NOT NULL
);

CREATE INDEX executions_by_org ON executions (org_id, created_at);

-- The same key starts one run: a second insert fails on this index.
CREATE UNIQUE INDEX executions_idempotency ON executions (org_id, workflow_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE INDEX executions_by_workflow ON executions (org_id, workflow_id, created_at);

CREATE INDEX executions_by_status ON executions (org_id, status, created_at);

CREATE TABLE steps (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    execution_id TEXT NOT NULL REFERENCES executions (id),
    node_id TEXT NOT NULL,
    iteration TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'waiting', 'completed', 'failed', 'skipped', 'cancelled')),
    attempts INTEGER NOT NULL DEFAULT 0,
    input TEXT,
    output TEXT,
    -- The handle the node chose (`true`/`false`, a switch case, `error`).
    outcome TEXT,
    error TEXT,
    run_after INTEGER,
    lease_expires_at INTEGER,
    lease_token TEXT,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    base_cost_micros INTEGER NOT NULL DEFAULT 0,
    billed_cost_micros INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    UNIQUE (execution_id, node_id, iteration)
);

CREATE INDEX steps_by_execution ON steps (org_id, execution_id, created_at);

-- The tick's pick-up query scans only live steps, never the history: a
-- partial index keeps its cost flat as finished runs accumulate.
CREATE INDEX steps_live ON steps (status, run_after, lease_expires_at)
    WHERE status IN ('queued', 'running', 'waiting');

-- One provider call, successful or not: what billing is computed from.
CREATE TABLE usage_records (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    execution_id TEXT,
    step_id TEXT,
    workflow_id TEXT,
    agent_id TEXT,
    agent_execution_id TEXT,
    api_key_id TEXT,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('succeeded', 'failed')),
    error_code TEXT,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    base_cost_micros INTEGER NOT NULL DEFAULT 0,
    billed_cost_micros INTEGER NOT NULL DEFAULT 0,
    markup_percent INTEGER NOT NULL DEFAULT 0,
    pricing_missing INTEGER NOT NULL DEFAULT 0,
    latency_ms INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

CREATE INDEX usage_by_org ON usage_records (org_id, created_at);

CREATE INDEX usage_by_execution ON usage_records (org_id, execution_id);

CREATE INDEX usage_by_agent_execution ON usage_records (org_id, agent_execution_id);

CREATE TABLE activity_log (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT,
    details TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL
);

CREATE INDEX activity_by_org ON activity_log (org_id, created_at);

-- Where an organisation wants its events sent (Standard Webhooks signed).
CREATE TABLE event_subscriptions (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    url TEXT NOT NULL,
    -- Event types delivered, as a JSON list; empty means all.
    event_types TEXT NOT NULL DEFAULT '[]',
    secret TEXT NOT NULL,
    is_active INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted_at INTEGER
);

CREATE INDEX event_subscriptions_by_org ON event_subscriptions (org_id, deleted_at);

-- The outbox: one row per event and subscription, written in the same
-- transaction as the change it reports, delivered at least once by the tick.
CREATE TABLE event_outbox (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    subscription_id TEXT NOT NULL REFERENCES event_subscriptions (id),
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_expires_at INTEGER,
    created_at INTEGER NOT NULL,
    delivered_at INTEGER
);

CREATE INDEX event_outbox_due ON event_outbox (status, next_attempt_at) WHERE status = 'pending';

CREATE INDEX event_outbox_by_subscription ON event_outbox (org_id, subscription_id, created_at);

-- Every delivery attempt, for the subscription's history.
CREATE TABLE event_attempts (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    outbox_id TEXT NOT NULL REFERENCES event_outbox (id),
    status_code INTEGER,
    error TEXT,
    duration_ms INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

CREATE INDEX event_attempts_by_outbox ON event_attempts (org_id, outbox_id, created_at);
