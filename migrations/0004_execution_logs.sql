-- Execution logs: what happened in a run, in order, for
-- GET /api/v1/executions/:id/logs and its Server-Sent Events stream.
--
-- The integer id orders the entries and is the stream's event id (clients
-- resume with Last-Event-ID). Each entry is written in the transaction of
-- the state change it describes, and SQLite has one writer at a time, so ids
-- become visible in order. AUTOINCREMENT keeps an id from ever being given
-- twice, even if old entries are deleted some day.

CREATE TABLE execution_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    execution_id TEXT NOT NULL REFERENCES executions (id),
    at INTEGER NOT NULL,
    level TEXT NOT NULL CHECK (level IN ('info', 'warn', 'error')),
    -- run.started, step.completed, step.failed, run.completed, …
    event TEXT NOT NULL,
    node_id TEXT,
    message TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);

-- Execution ids are unique across organisations, so this index is as
-- selective as one leading with org_id; every query still filters on it.
CREATE INDEX execution_logs_by_execution ON execution_logs (execution_id, id);
