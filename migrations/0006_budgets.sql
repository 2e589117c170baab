-- Budgets: spending caps per organisation, API key, workflow or agent for a
-- UTC day or month (README.md, "Budgets"). Money is integer micro-dollars,
-- times UTC milliseconds.
--
-- Enforcement is a reservation: before a provider call its worst-case cost
-- is booked in budget_reservations against every budget that applies, in
-- one BEGIN IMMEDIATE transaction that writes nothing when a block budget
-- would pass its limit; afterwards the billed cost is added to the budget's
-- period counter (budget_periods) and the reservation dropped. A
-- reservation whose call died stops counting at expires_at.

CREATE TABLE budgets (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    scope TEXT NOT NULL CHECK (scope IN ('org', 'api_key', 'workflow', 'agent')),
    -- The organisation, API key, workflow or agent capped.
    scope_id TEXT NOT NULL,
    period TEXT NOT NULL CHECK (period IN ('day', 'month')),
    limit_micros INTEGER NOT NULL CHECK (limit_micros > 0),
    -- block: refuse calls that could pass the limit; alert: only count.
    action TEXT NOT NULL CHECK (action IN ('block', 'alert')),
    -- Percents of the limit that emit budget.threshold, a JSON list.
    thresholds TEXT NOT NULL DEFAULT '[80,100]',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- One budget per scope; a call looks its budgets up by scope.
CREATE UNIQUE INDEX budgets_by_scope ON budgets (org_id, scope, scope_id);

-- Settled spend of a budget in one period (the period's start, UTC ms).
-- Budget ids are unique across organisations, so keys lead with them; every
-- query still filters on org_id.
CREATE TABLE budget_periods (
    org_id TEXT NOT NULL REFERENCES organizations (id),
    budget_id TEXT NOT NULL,
    period_start INTEGER NOT NULL,
    spent_micros INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (budget_id, period_start)
);

-- Worst-case costs of calls in flight, one row per call and budget.
CREATE TABLE budget_reservations (
    -- <call_id>:<budget_id>
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    budget_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    period_start INTEGER NOT NULL,
    amount_micros INTEGER NOT NULL CHECK (amount_micros >= 0),
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE INDEX budget_reservations_by_budget ON budget_reservations (budget_id, period_start, expires_at);

CREATE INDEX budget_reservations_by_call ON budget_reservations (org_id, call_id);

-- The tick deletes expired reservations across organisations.
CREATE INDEX budget_reservations_by_expiry ON budget_reservations (expires_at);

-- Thresholds that fired, so each fires once per budget and period.
CREATE TABLE budget_alerts (
    org_id TEXT NOT NULL REFERENCES organizations (id),
    budget_id TEXT NOT NULL,
    period_start INTEGER NOT NULL,
    threshold INTEGER NOT NULL,
    spent_micros INTEGER NOT NULL,
    fired_at INTEGER NOT NULL,
    PRIMARY KEY (budget_id, period_start, threshold)
);
