-- The cron scheduler's state: one lease row per scheduler group (leader election) and the
-- ticks ledger (one row per enqueued tick, keyed by its dedup key). Idempotent so it can be
-- applied by `worker migrate` and re-applied by tests without harm.
CREATE SCHEMA IF NOT EXISTS jobfleet;

CREATE TABLE IF NOT EXISTS jobfleet.scheduler_leases (
    name        text        PRIMARY KEY,
    holder      text        NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    renewed_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS jobfleet.scheduler_ticks (
    dedup_key    text        PRIMARY KEY,
    schedule     text        NOT NULL,
    tick_at      timestamptz NOT NULL,
    -- tick (on time), catch_up (latest missed tick after downtime), start (run_at_start),
    -- manual (`scheduler trigger`).
    reason       text        NOT NULL CHECK (reason IN ('tick', 'catch_up', 'start', 'manual')),
    state        text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'enqueued')),
    job_id       text        NOT NULL,
    queue        text        NOT NULL,
    -- The exact envelope, so a pending tick left by a crash is re-sent unchanged (same job id).
    envelope     jsonb       NOT NULL,
    claimed_by   text        NOT NULL,
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    enqueued_at  timestamptz
);

CREATE INDEX IF NOT EXISTS scheduler_ticks_schedule_tick
    ON jobfleet.scheduler_ticks (schedule, tick_at DESC);
CREATE INDEX IF NOT EXISTS scheduler_ticks_pending
    ON jobfleet.scheduler_ticks (claimed_at) WHERE state = 'pending';
