-- Metrics and provider admission.

-- Counters and histogram buckets of GET /metrics, added to as provider
-- calls and steps finish (`labels` is the rendered label set).
CREATE TABLE metric_counters (
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    value INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (name, labels)
);

-- Per organisation and provider: the limits the organisation set (NULL =
-- none) and the admission state. `*_tat` is the theoretical arrival time of
-- the generic cell rate algorithm (ms): the next call may go when it is at
-- most one interval ahead of now. `paused_until` comes from the provider's
-- own rate-limit answers (Retry-After, remaining 0).
CREATE TABLE provider_limits (
    org_id TEXT NOT NULL REFERENCES organizations (id),
    provider TEXT NOT NULL,
    requests_per_minute INTEGER,
    tokens_per_minute INTEGER,
    request_tat INTEGER NOT NULL DEFAULT 0,
    token_tat INTEGER NOT NULL DEFAULT 0,
    paused_until INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, provider)
);
