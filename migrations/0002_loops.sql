-- Loop nodes. A step's `iteration` names its scope: '' for the main graph,
-- `<loop node>#<i>` for iteration i of a loop's body (nested loops:
-- `outer#2/inner#0`). Advancing a scope reads only that scope's steps, so
-- a step's cost does not grow with the number of iterations before it.
CREATE INDEX steps_by_scope ON steps (execution_id, iteration);

-- For a loop step: the iteration its body is running now (NULL otherwise).
ALTER TABLE steps ADD COLUMN loop_index INTEGER;

-- One row per iteration of a loop step: its item (for-each) and, once the
-- iteration finished, its output. The loop's output collects them in order.
CREATE TABLE loop_iterations (
    loop_step_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    item TEXT,
    output TEXT,
    finished_at INTEGER,
    PRIMARY KEY (loop_step_id, idx)
);

-- The tick's sweep for runs left with nothing live (an invocation died
-- between finishing a step and queueing the next) looks up each running
-- run's live steps here, never its finished history.
CREATE INDEX steps_live_by_execution ON steps (execution_id)
    WHERE status IN ('queued', 'running', 'waiting');

-- ... and finds those runs without scanning finished ones.
CREATE INDEX executions_running ON executions (id) WHERE status = 'running';
