-- Cron schedules of workflows. `PUT /api/v1/workflows/:id/schedules`
-- replaces a workflow's set; `POST /internal/tick` starts the due ones.
CREATE TABLE schedules (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    workflow_id TEXT NOT NULL REFERENCES workflows (id),
    -- Its place in the list the PUT gave.
    position INTEGER NOT NULL,
    -- A 5-field cron expression, or 6 with a leading seconds field.
    cron TEXT NOT NULL,
    -- The IANA time zone the expression is read in.
    timezone TEXT NOT NULL DEFAULT 'UTC',
    -- The run's inputs, a JSON object (`scheduled_at` is added per run).
    inputs TEXT NOT NULL DEFAULT '{}',
    enabled INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    -- The next due time (UTC ms); NULL when disabled. A tick claims a due
    -- time by moving it on with `UPDATE … WHERE next_run_at = <read value>`.
    next_run_at INTEGER,
    -- The due time of the last run started.
    last_run_at INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE INDEX schedules_by_workflow ON schedules (org_id, workflow_id, position);

-- The tick's due query scans only enabled schedules, earliest first.
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE enabled = 1;
