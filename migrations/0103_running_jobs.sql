-- The jobs each worker is running, in its registry row, so an operator can ask "where is job
-- X?" (`worker job`, the dashboard's job page). Rewritten by the worker with the rest of its
-- row every sample interval: at most 500 entries (`fleet::registry::MAX_RUNNING_REPORTED`), the
-- rest counted in `running_omitted`. A lookup is a containment test over one row per worker
-- process; no index, since the table holds one row per process and an index would be
-- rewritten with every report.
ALTER TABLE jobfleet.workers
    -- [{"id": ..., "queue": ..., "kind": ..., "started_at": ...}, ...]
    ADD COLUMN IF NOT EXISTS running_jobs    jsonb   NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN IF NOT EXISTS running_omitted bigint  NOT NULL DEFAULT 0;
