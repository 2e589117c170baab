-- What a run's failed steps cost before a retry replaced them: a retry
-- deletes its failed steps so they run again, and the provider calls they
-- made stay billed. A run's totals are its steps' sums plus these.
ALTER TABLE executions ADD COLUMN retried_tokens_in INTEGER NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN retried_tokens_out INTEGER NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN retried_base_cost_micros INTEGER NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN retried_billed_cost_micros INTEGER NOT NULL DEFAULT 0;
