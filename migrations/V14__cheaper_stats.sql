-- What migration 13's /stats cost the write path, paid back (issue 21).
--
-- deliveries_live gave every acceptance and every start of the data one
-- more index entry. The partial indexes deliveries_waiting (queued,
-- retrying) and deliveries_in_flight (processing, sending) already hold
-- exactly the unfinished rows; /stats now counts through them.
DROP INDEX deliveries_live;

-- The counters' triggers called count_job(), a SQL function, whose
-- statement PL/pgSQL cannot keep prepared: it was planned again on every
-- outcome. The upserts are now statements of the triggers themselves,
-- prepared once per session.
CREATE OR REPLACE FUNCTION count_delivery() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT'
       AND OLD.state IN ('sent', 'failed', 'uncertain', 'canceled', 'suppressed') THEN
        INSERT INTO job_counts AS j (tenant, priority, counted, slot, n)
        VALUES (OLD.tenant, OLD.priority, OLD.state, pg_backend_pid() % 16, -1)
        ON CONFLICT (tenant, priority, counted, slot) DO UPDATE SET n = j.n - 1;
    END IF;
    IF TG_OP <> 'DELETE'
       AND NEW.state IN ('sent', 'failed', 'uncertain', 'canceled', 'suppressed') THEN
        INSERT INTO job_counts AS j (tenant, priority, counted, slot, n)
        VALUES (NEW.tenant, NEW.priority, NEW.state, pg_backend_pid() % 16, 1)
        ON CONFLICT (tenant, priority, counted, slot) DO UPDATE SET n = j.n + 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION count_duplicate() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    dup duplicate_jobs%ROWTYPE;
    p TEXT;
    d BIGINT;
BEGIN
    IF TG_OP = 'INSERT' THEN dup := NEW; d := 1; ELSE dup := OLD; d := -1; END IF;
    SELECT x.priority INTO p FROM deliveries x
        WHERE x.tenant = dup.tenant AND x.idempotency_key = dup.idempotency_key;
    INSERT INTO job_counts AS j (tenant, priority, counted, slot, n)
    VALUES (dup.tenant, COALESCE(p, 'normal'), 'duplicate', pg_backend_pid() % 16, d)
    ON CONFLICT (tenant, priority, counted, slot) DO UPDATE SET n = j.n + EXCLUDED.n;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION count_dead_letter() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    entry failed_jobs%ROWTYPE;
    d BIGINT;
BEGIN
    IF TG_OP = 'INSERT' THEN entry := NEW; d := 1; ELSE entry := OLD; d := -1; END IF;
    INSERT INTO job_counts AS j (tenant, priority, counted, slot, n)
    VALUES (entry.tenant, COALESCE(entry.task->>'priority', 'normal'), 'dead_letter',
            pg_backend_pid() % 16, d)
    ON CONFLICT (tenant, priority, counted, slot) DO UPDATE SET n = j.n + EXCLUDED.n;
    RETURN NULL;
END
$$;

DROP FUNCTION count_job(TEXT, TEXT, TEXT, BIGINT);
