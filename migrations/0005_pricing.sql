-- Pricing per organisation: negotiated model prices that replace the
-- built-in table (crates/spindle-providers/src/pricing.rs), and the billing
-- markup. A provider call is priced with what is stored here when it is
-- recorded, and usage records keep their cost: a change never rewrites them.

-- An organisation's own price of a model, in micro-dollars per million
-- tokens (the units of the built-in table). It applies to the model id
-- exactly and to its dated snapshots, as the built-in table does.
CREATE TABLE org_prices (
    org_id TEXT NOT NULL REFERENCES organizations (id),
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    input_micros_per_million INTEGER NOT NULL CHECK (input_micros_per_million >= 0),
    output_micros_per_million INTEGER NOT NULL CHECK (output_micros_per_million >= 0),
    updated_by TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, provider, model)
);

-- An organisation's billing settings. No row means the app's defaults
-- (the `billing_markup_percent` variable).
CREATE TABLE org_billing_settings (
    org_id TEXT PRIMARY KEY REFERENCES organizations (id),
    markup_percent INTEGER NOT NULL CHECK (markup_percent BETWEEN 0 AND 1000),
    updated_by TEXT,
    updated_at INTEGER NOT NULL
);
