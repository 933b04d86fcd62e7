-- Fleet-wide rate and concurrency limits (issue 10). Scopes are `kind:<kind>` or
-- `queue:<queue>`. Configured limits live in the config file; this holds the operator's run-time
-- overrides (`worker limit`), which win over the file field by field, and the shared state the
-- workers lease from: one token bucket per scope, one slot lease per worker and scope.
CREATE SCHEMA IF NOT EXISTS jobfleet;

-- `worker limit KIND --rate/--concurrency`; `--clear` deletes the row.
CREATE TABLE IF NOT EXISTS jobfleet.limit_overrides (
    scope       text        PRIMARY KEY,
    -- As written (`3000/min`); null: the config file's rate applies.
    rate        text,
    -- Null: the config file's concurrency applies.
    concurrency integer     CHECK (concurrency IS NULL OR concurrency > 0),
    set_by      text        NOT NULL,
    set_at      timestamptz NOT NULL DEFAULT now()
);

-- The fleet's token bucket of a rate-limited scope. Workers take small batches of tokens from
-- it every lease tick under a row lock and give back what they did not use; the row's lock
-- also serialises the slot grants of the scope.
CREATE TABLE IF NOT EXISTS jobfleet.limit_buckets (
    scope       text             PRIMARY KEY,
    tokens      double precision NOT NULL DEFAULT 0,
    refilled_at timestamptz      NOT NULL DEFAULT now()
);

-- One row per worker and limited scope: the concurrency slots it holds and wants, and how
-- many workers share the scope (a worker cut off from this table falls back to its share of
-- the rate). A row not renewed by `expires_at` no longer counts: a crashed worker's slots come
-- back.
CREATE TABLE IF NOT EXISTS jobfleet.limit_leases (
    scope      text        NOT NULL,
    worker_id  text        NOT NULL,
    held       integer     NOT NULL DEFAULT 0,
    wanted     integer     NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (scope, worker_id)
);
