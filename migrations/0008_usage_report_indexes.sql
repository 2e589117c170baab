-- Usage reports (GET /api/v1/usage/...): records are read in
-- (created_at, id) order by keyset, so the index carries the id and a page
-- needs no sort; an export filtered by agent or workflow reads only its rows.

CREATE INDEX usage_by_org_time_id ON usage_records (org_id, created_at, id);

CREATE INDEX usage_by_agent_time ON usage_records (org_id, agent_id, created_at, id);

CREATE INDEX usage_by_workflow_time ON usage_records (org_id, workflow_id, created_at, id);
