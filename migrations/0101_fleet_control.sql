-- The fleet's control state besides the audit log: which worker processes are running (the
-- registry), which queues are paused, and which jobs an operator asked to cancel. Every
-- `worker run` reads the last two once per sample interval and writes its own registry row.
CREATE SCHEMA IF NOT EXISTS jobfleet;

-- One row per running `worker run` process, keyed by a per-process instance id (two processes
-- may share a configured worker id). Refreshed every sample interval; a row not refreshed for
-- three of its intervals is shown as lost; a clean exit deletes it.
CREATE TABLE IF NOT EXISTS jobfleet.workers (
    instance     uuid        PRIMARY KEY,
    worker_id    text        NOT NULL,
    host         text        NOT NULL,
    pid          integer     NOT NULL,
    version      text        NOT NULL,
    backend      text        NOT NULL,
    started_at   timestamptz NOT NULL,
    -- The database's clock, so "lost" never depends on the workers' clocks.
    seen_at      timestamptz NOT NULL DEFAULT now(),
    interval_ms  bigint      NOT NULL,
    draining     boolean     NOT NULL DEFAULT false,
    -- Per pool: queue, target, granted, running, succeeded, failed, dead_lettered.
    pools        jsonb       NOT NULL DEFAULT '[]'::jsonb
);

-- A queue listed here is received from by no worker of the fleet.
CREATE TABLE IF NOT EXISTS jobfleet.paused_queues (
    queue      text        PRIMARY KEY,
    paused_at  timestamptz NOT NULL DEFAULT now(),
    paused_by  text        NOT NULL,
    reason     text        NOT NULL DEFAULT ''
);

-- A request to cancel one job. Pending (consumed_at null) until the worker that meets the job,
-- at receive or while it runs, dead-letters it; a DLQ replay of the job deletes the request so
-- the replayed copy runs.
CREATE TABLE IF NOT EXISTS jobfleet.cancel_requests (
    queue         text        NOT NULL,
    job_id        text        NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    requested_by  text        NOT NULL,
    reason        text        NOT NULL DEFAULT '',
    consumed_at   timestamptz,
    -- The worker that dead-lettered it.
    consumed_by   text,
    PRIMARY KEY (queue, job_id)
);

CREATE INDEX IF NOT EXISTS cancel_requests_pending ON jobfleet.cancel_requests (requested_at)
    WHERE consumed_at IS NULL;
