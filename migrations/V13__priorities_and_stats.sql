-- Job priorities and GET /stats (issue 22).
--
-- priority: `high`, `normal` or `low`, as accepted; every row from before
--           is `normal`, as is every task without the field. The task JSON
--           carries it too (what Redis sorts by, and what a restore from
--           Postgres pushes back); the column is what /stats counts by.
--           A constant default adds the column without a rewrite.
ALTER TABLE deliveries ADD COLUMN priority TEXT NOT NULL DEFAULT 'normal';
ALTER TABLE deliveries ADD CONSTRAINT deliveries_priority_check
    CHECK (priority IN ('high', 'normal', 'low')) NOT VALID;
ALTER TABLE deliveries VALIDATE CONSTRAINT deliveries_priority_check;

-- The jobs not yet finished, for /stats's ready, scheduled and processing
-- counts by tenant and priority, and the oldest ready job: an index
-- scan over the live rows, however many finished rows the table holds.
CREATE INDEX deliveries_live
    ON deliveries (tenant, priority, state, (GREATEST(updated_at, next_attempt_at)))
    INCLUDE (created_at)
    WHERE state IN ('queued', 'retrying', 'processing', 'sending');

-- Finished jobs, duplicates and dead letters, counted as they change, by
-- tenant, priority and what is counted (a terminal state of `deliveries`,
-- `duplicate`, or `dead_letter` for a row of `failed_jobs`). Tens of
-- millions of finished rows cannot be counted within a request; these
-- rows can be summed.
--
-- slot: each database session adds to its own row (its backend pid modulo
--       16), so concurrent outcome writes of one tenant, priority and state
--       seldom wait on one another's row lock until commit.
CREATE TABLE job_counts (
    tenant   TEXT NOT NULL,
    priority TEXT NOT NULL,
    counted  TEXT NOT NULL,
    slot     SMALLINT NOT NULL,
    n        BIGINT NOT NULL,
    PRIMARY KEY (tenant, priority, counted, slot)
);

CREATE FUNCTION count_job(t TEXT, p TEXT, c TEXT, d BIGINT) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO job_counts AS j (tenant, priority, counted, slot, n)
    VALUES (t, p, c, pg_backend_pid() % 16, d)
    ON CONFLICT (tenant, priority, counted, slot) DO UPDATE SET n = j.n + EXCLUDED.n
$$;

-- Only a move into or out of a terminal state costs a write: once per job
-- on the way to its outcome (and again for a late 250 or a requeue).
CREATE FUNCTION count_delivery() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT'
       AND OLD.state IN ('sent', 'failed', 'uncertain', 'canceled', 'suppressed') THEN
        PERFORM count_job(OLD.tenant, OLD.priority, OLD.state, -1);
    END IF;
    IF TG_OP <> 'DELETE'
       AND NEW.state IN ('sent', 'failed', 'uncertain', 'canceled', 'suppressed') THEN
        PERFORM count_job(NEW.tenant, NEW.priority, NEW.state, 1);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER deliveries_counted_update AFTER UPDATE OF state ON deliveries
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          AND (OLD.state IN ('sent', 'failed', 'uncertain', 'canceled', 'suppressed')
               OR NEW.state IN ('sent', 'failed', 'uncertain', 'canceled', 'suppressed')))
    EXECUTE FUNCTION count_delivery();
CREATE TRIGGER deliveries_counted_insert AFTER INSERT ON deliveries
    FOR EACH ROW
    WHEN (NEW.state IN ('sent', 'failed', 'uncertain', 'canceled', 'suppressed'))
    EXECUTE FUNCTION count_delivery();
CREATE TRIGGER deliveries_counted_delete AFTER DELETE ON deliveries
    FOR EACH ROW
    WHEN (OLD.state IN ('sent', 'failed', 'uncertain', 'canceled', 'suppressed'))
    EXECUTE FUNCTION count_delivery();

-- A duplicate keeps no task: it counts under the priority of the job that
-- owns its key.
CREATE FUNCTION count_duplicate() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    dup duplicate_jobs%ROWTYPE;
    p TEXT;
BEGIN
    IF TG_OP = 'INSERT' THEN dup := NEW; ELSE dup := OLD; END IF;
    SELECT d.priority INTO p FROM deliveries d
        WHERE d.tenant = dup.tenant AND d.idempotency_key = dup.idempotency_key;
    PERFORM count_job(dup.tenant, COALESCE(p, 'normal'), 'duplicate',
                      CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE -1 END);
    RETURN NULL;
END
$$;
CREATE TRIGGER duplicate_jobs_counted AFTER INSERT OR DELETE ON duplicate_jobs
    FOR EACH ROW EXECUTE FUNCTION count_duplicate();

CREATE FUNCTION count_dead_letter() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM count_job(NEW.tenant, COALESCE(NEW.task->>'priority', 'normal'),
                          'dead_letter', 1);
    ELSE
        PERFORM count_job(OLD.tenant, COALESCE(OLD.task->>'priority', 'normal'),
                          'dead_letter', -1);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER failed_jobs_counted AFTER INSERT OR DELETE ON failed_jobs
    FOR EACH ROW EXECUTE FUNCTION count_dead_letter();

-- The rows already there. The triggers above took each table's SHARE ROW
-- EXCLUSIVE lock, so no write lands between them and these counts (writers
-- wait for this migration's commit: one scan of each table).
INSERT INTO job_counts (tenant, priority, counted, slot, n)
SELECT tenant, priority, state, 0, count(*) FROM deliveries
WHERE state IN ('sent', 'failed', 'uncertain', 'canceled', 'suppressed')
GROUP BY tenant, priority, state;
INSERT INTO job_counts (tenant, priority, counted, slot, n)
SELECT tenant, 'normal', 'duplicate', 0, count(*) FROM duplicate_jobs
GROUP BY tenant;
INSERT INTO job_counts (tenant, priority, counted, slot, n)
SELECT tenant, COALESCE(task->>'priority', 'normal'), 'dead_letter', 0, count(*)
FROM failed_jobs
GROUP BY 1, 2;
