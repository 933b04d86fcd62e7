-- The PostgreSQL queue backend (queues/src/postgres.rs, docs/backends/postgres.md).
--
-- Idempotent on purpose: `worker migrate` applies it once through the sqlx migrator, and the
-- backend applies it itself at connect (under an advisory lock) when `jobfleet.queue_schema`
-- does not yet record version 1, so the queue crate also works on its own.
-- Needs PostgreSQL 14+ (CREATE OR REPLACE TRIGGER).

CREATE SCHEMA IF NOT EXISTS jobfleet;

-- Per-queue settings, so every process sees the visibility timeout `declare` recorded.
-- `ns` is the broker namespace (config `broker.namespace`): several deployments share the tables.
CREATE TABLE IF NOT EXISTS jobfleet.queues (
    ns            text        NOT NULL DEFAULT 'jobfleet',
    queue         text        NOT NULL,
    visibility_ms bigint      NOT NULL DEFAULT 30000 CHECK (visibility_ms > 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ns, queue)
);

-- One row per message. State is derived from two columns:
--   visible_at <= now()                      visible (new, due, nacked, or lease expired)
--   visible_at >  now() AND lease IS NULL    delayed (run_at or retry delay)
--   visible_at >  now() AND lease NOT NULL   in flight (received, lease until visible_at)
-- `body` is text, not jsonb: a malformed body must be stored as it came so it can be
-- dead-lettered with the parse error instead of being rejected at INSERT time.
CREATE TABLE IF NOT EXISTS jobfleet.messages (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ns            text        NOT NULL DEFAULT 'jobfleet',
    queue         text        NOT NULL,
    body          text        NOT NULL,
    enqueued_at   timestamptz NOT NULL DEFAULT now(),
    visible_at    timestamptz NOT NULL DEFAULT now(),
    receive_count integer     NOT NULL DEFAULT 0,
    lease         uuid
);

-- The receive path: due rows of one queue in (visible_at, id) order; also min(visible_at) for
-- the consumer's next timed wake-up, and the depth counts.
CREATE INDEX IF NOT EXISTS messages_due
    ON jobfleet.messages (ns, queue, visible_at, id);

-- Hot, short-lived rows: vacuum this table far more eagerly than the defaults (20 % dead rows)
-- so dead tuples from acks never pile up in the index the receive path walks.
ALTER TABLE jobfleet.messages SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.05
);

CREATE TABLE IF NOT EXISTS jobfleet.dead_letters (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ns               text        NOT NULL DEFAULT 'jobfleet',
    queue            text        NOT NULL,
    -- The job id when the body parsed, else `broker_id`: what `worker dlq show <id>` takes.
    entry_id         text        NOT NULL,
    body             text        NOT NULL,
    reason           text        NOT NULL,
    dead_lettered_at timestamptz NOT NULL DEFAULT now(),
    -- jobfleet.messages.id of the message that was dead-lettered.
    broker_id        text        NOT NULL,
    receive_count    integer     NOT NULL DEFAULT 0,
    enqueued_at      timestamptz
);

CREATE INDEX IF NOT EXISTS dead_letters_queue
    ON jobfleet.dead_letters (ns, queue, id);
CREATE INDEX IF NOT EXISTS dead_letters_entry
    ON jobfleet.dead_letters (ns, queue, entry_id);

-- Wakes long-polling consumers: one NOTIFY per (ns, queue) per INSERT statement, on the channel
-- `jobfleet_queues` with payload `<ns>:<queue>`. A trigger (not the Rust send path) so that an
-- INSERT from any language, or inside an API's transaction, wakes consumers too (on commit).
CREATE OR REPLACE FUNCTION jobfleet.messages_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobfleet_queues', n.ns || ':' || n.queue)
    FROM (SELECT DISTINCT ns, queue FROM new_rows) AS n;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER messages_notify
    AFTER INSERT ON jobfleet.messages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobfleet.messages_notify();

-- Which version of this file is applied; the backend checks it before taking any lock.
CREATE TABLE IF NOT EXISTS jobfleet.queue_schema (
    version    integer     PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO jobfleet.queue_schema (version) VALUES (1) ON CONFLICT (version) DO NOTHING;
