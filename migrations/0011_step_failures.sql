-- A node that failed under `on_error: continue` or `route` keeps status
-- 'failed' while its run goes on: `error_handled` (1) tells such a step
-- from one that failed its run, so planning treats it as done and a retry
-- of the run keeps it.
ALTER TABLE steps ADD COLUMN error_handled INTEGER NOT NULL DEFAULT 0;
-- Every attempt of the step (each provider call or HTTP request it made),
-- as a JSON array of {attempt, status, error, delay_ms, started_at,
-- finished_at}: the run's detail shows them.
ALTER TABLE steps ADD COLUMN attempt_log TEXT;
