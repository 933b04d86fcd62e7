-- Unique jobs (docs/envelope.md "Unique jobs", docs/decisions.md D50-D53): which `dedup_key`s
-- are taken, per broker namespace and queue, by which job and until when.
--
-- The PostgreSQL queue takes a key in a BEFORE INSERT trigger on jobfleet.messages, in the
-- same transaction as the row, so a plain INSERT from any language gets the same meaning (a
-- duplicate inserts 0 rows). Brokers with no de-duplication of their own (RabbitMQ, SQS) use
-- the same table through the two functions below: `dedup_take` before publishing (then
-- `written` is set once the broker confirmed) and `dedup_admit` when a worker receives a job
-- with a key, which is how a native producer's duplicate is dropped.
CREATE SCHEMA IF NOT EXISTS jobfleet;

CREATE TABLE IF NOT EXISTS jobfleet.dedup_keys (
    ns         text        NOT NULL,
    queue      text        NOT NULL,
    key        text        NOT NULL,
    job_id     text        NOT NULL,
    taken_at   timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    -- False only between a two-phase producer's take and its broker's confirm: such a claim
    -- does not outlive `taken_at + 1 minute`, so a producer that died in between blocks the key
    -- for a minute at most.
    written    boolean     NOT NULL,
    PRIMARY KEY (ns, queue, key)
);

-- Pruning expired keys (an expired key is free whether its row is there or not).
CREATE INDEX IF NOT EXISTS dedup_keys_expires ON jobfleet.dedup_keys (expires_at);

-- The current row of a key, locked; inserted for `p_job` when there is none (then `inserted`).
CREATE OR REPLACE FUNCTION jobfleet.dedup_lock(
    p_ns text, p_queue text, p_key text, p_job text, p_at timestamptz, p_until timestamptz,
    p_written boolean, OUT inserted boolean, OUT cur jobfleet.dedup_keys)
LANGUAGE plpgsql AS $$
BEGIN
    LOOP
        INSERT INTO jobfleet.dedup_keys (ns, queue, key, job_id, taken_at, expires_at, written)
        VALUES (p_ns, p_queue, p_key, p_job, p_at, p_until, p_written)
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            inserted := true;
            RETURN;
        END IF;
        SELECT * INTO cur FROM jobfleet.dedup_keys
        WHERE ns = p_ns AND queue = p_queue AND key = p_key FOR UPDATE;
        IF FOUND THEN
            inserted := false;
            RETURN;
        END IF;
        -- Pruned between the two statements: insert again.
    END LOOP;
END
$$;

-- Before writing a job: takes `p_key` for `p_job` for `p_window_ms` and returns true (write
-- it), or returns false (a duplicate: write nothing). `p_written` is true when the write
-- happens in this same transaction (the trigger below), false for a producer that publishes to
-- another broker afterwards and then sets `written`. The same job again is a duplicate once
-- its write is recorded, and may write again while it is not (its first publish failed).
CREATE OR REPLACE FUNCTION jobfleet.dedup_take(
    p_ns text, p_queue text, p_key text, p_job text, p_window_ms bigint, p_written boolean)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    t     timestamptz := clock_timestamp();
    until timestamptz := t + LEAST(GREATEST(p_window_ms, 1), 315360000000) * interval '1 millisecond';
    got   record;
BEGIN
    IF random() < 0.01 THEN
        DELETE FROM jobfleet.dedup_keys WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM jobfleet.dedup_keys WHERE expires_at < t - interval '1 minute'
            LIMIT 500 FOR UPDATE SKIP LOCKED));
    END IF;
    got := jobfleet.dedup_lock(p_ns, p_queue, p_key, p_job, t, until, p_written);
    IF got.inserted THEN
        RETURN true;
    END IF;
    IF (got.cur).expires_at <= t
       OR (NOT (got.cur).written AND ((got.cur).job_id = p_job OR (got.cur).taken_at < t - interval '1 minute'))
    THEN
        UPDATE jobfleet.dedup_keys
        SET job_id = p_job, taken_at = t, expires_at = until, written = p_written
        WHERE ns = p_ns AND queue = p_queue AND key = p_key;
        RETURN true;
    END IF;
    RETURN false;
END
$$;

-- When a worker receives a job with a key (brokers with no native check): true to run it. The
-- key's own job runs (a redelivery, or its producer's write not yet recorded). Another job is a
-- duplicate of the holder when the holder's write is recorded and the two were enqueued less
-- than the holder's window apart (`p_enqueued_at`, the envelope's `enqueued_at`, against the
-- holder's `taken_at`): so two native writes of one key inside the window run once, while a job
-- accepted in an earlier window and received late still runs. A job that runs takes the key
-- when there is none, when it is the newer one, or when the holder's write never landed.
CREATE OR REPLACE FUNCTION jobfleet.dedup_admit(
    p_ns text, p_queue text, p_key text, p_job text, p_window_ms bigint, p_enqueued_at timestamptz)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    e     timestamptz := LEAST(COALESCE(p_enqueued_at, clock_timestamp()), clock_timestamp());
    until timestamptz := e + LEAST(GREATEST(p_window_ms, 1), 315360000000) * interval '1 millisecond';
    got   record;
BEGIN
    got := jobfleet.dedup_lock(p_ns, p_queue, p_key, p_job, e, until, true);
    IF got.inserted THEN
        RETURN true;
    END IF;
    IF (got.cur).job_id = p_job THEN
        IF NOT (got.cur).written THEN
            UPDATE jobfleet.dedup_keys SET written = true
            WHERE ns = p_ns AND queue = p_queue AND key = p_key;
        END IF;
        RETURN true;
    END IF;
    IF (got.cur).written
       AND abs(extract(epoch FROM e - (got.cur).taken_at))
           < extract(epoch FROM (got.cur).expires_at - (got.cur).taken_at)
    THEN
        RETURN false;
    END IF;
    IF NOT (got.cur).written OR e > (got.cur).taken_at THEN
        UPDATE jobfleet.dedup_keys
        SET job_id = p_job, taken_at = e, expires_at = until, written = true
        WHERE ns = p_ns AND queue = p_queue AND key = p_key;
    END IF;
    RETURN true;
END
$$;

-- The PostgreSQL queue's check, for every INSERT from any client. Only bodies that carry a
-- non-null `dedup_key` reach the function (the WHEN clause costs a string search, not a call),
-- so jobs without a key pay next to nothing. A job with a failure history (a retry) or a
-- `replayed_at` (a DLQ replay) was accepted once already and is never a duplicate. Bodies that are not JSON are
-- let through: the worker dead-letters them with the reason.
CREATE OR REPLACE FUNCTION jobfleet.messages_dedup() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    env  jsonb;
    secs numeric := 3600;
BEGIN
    BEGIN
        env := NEW.body::jsonb;
    EXCEPTION WHEN others THEN
        RETURN NEW;
    END;
    IF jsonb_typeof(env) IS DISTINCT FROM 'object'
       OR jsonb_typeof(env->'dedup_key') IS DISTINCT FROM 'string'
       OR jsonb_typeof(env->'id') IS DISTINCT FROM 'string'
       OR (jsonb_typeof(env->'errors') = 'array' AND jsonb_array_length(env->'errors') > 0)
       OR env ? 'replayed_at'
    THEN
        RETURN NEW;
    END IF;
    IF jsonb_typeof(env->'unique_for') = 'number' AND (env->>'unique_for')::numeric > 0 THEN
        secs := LEAST((env->>'unique_for')::numeric, 315360000);
    END IF;
    IF jobfleet.dedup_take(NEW.ns, NEW.queue, env->>'dedup_key', env->>'id',
                           ceil(secs * 1000)::bigint, true) THEN
        RETURN NEW;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER messages_dedup
    BEFORE INSERT ON jobfleet.messages
    FOR EACH ROW
    WHEN (strpos(NEW.body, '"dedup_key"') > 0
          AND strpos(NEW.body, '"dedup_key":null') = 0
          AND strpos(NEW.body, '"dedup_key": null') = 0)
    EXECUTE FUNCTION jobfleet.messages_dedup();
