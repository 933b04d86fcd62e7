-- The operator audit log of the fleet's control plane: one row per operator action (pause,
-- resume, cancel, limit change, DLQ replay, DLQ purge), whoever took it and from where (CLI or
-- dashboard). Rows are only ever appended.
CREATE SCHEMA IF NOT EXISTS jobfleet;

CREATE TABLE IF NOT EXISTS jobfleet.audit_log (
    id      bigserial   PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    -- `user@host` for the CLI, the signed-in user for the dashboard.
    actor   text        NOT NULL,
    action  text        NOT NULL,
    -- What it was done to: a queue, `queue/job id`, a kind's limit.
    target  text        NOT NULL,
    -- The request as given: filter, reason, new limits.
    detail  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- What it came to (replayed / skipped / failed, ...); null while unknown.
    counts  jsonb
);

CREATE INDEX IF NOT EXISTS audit_log_at ON jobfleet.audit_log (at DESC);
