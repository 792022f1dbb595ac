-- Tenants (README, "Tenants"): idempotency keys are unique per tenant, and
-- every read and action on a job is scoped to its tenant.
--
-- Every row from before belongs to the tenant `default`, the tenant of
-- tokens without the tenant claim, so their keys keep their promise for
-- such tokens.
--
-- The primary key is rebuilt: this migration locks `deliveries` while it
-- runs (seconds per million rows).
ALTER TABLE deliveries ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE deliveries DROP CONSTRAINT deliveries_pkey;
ALTER TABLE deliveries ADD PRIMARY KEY (tenant, idempotency_key);

ALTER TABLE duplicate_jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
DROP INDEX duplicate_jobs_by_key;
CREATE INDEX duplicate_jobs_by_key ON duplicate_jobs (tenant, idempotency_key);

ALTER TABLE failed_jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
-- A tenant's page of the dead-letter table, newest first.
CREATE INDEX failed_jobs_by_tenant ON failed_jobs (tenant, id DESC);

-- The reconciler pages waiting rows by (due time, tenant, key).
DROP INDEX deliveries_waiting;
CREATE INDEX deliveries_waiting
    ON deliveries ((GREATEST(updated_at, next_attempt_at)), tenant, idempotency_key)
    WHERE state IN ('queued', 'retrying');

-- The audit trail records the actor's tenant and the tenant of the entry
-- acted on; a tenant reads the actions on its own entries.
ALTER TABLE audit_log ADD COLUMN actor_tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE audit_log ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
CREATE INDEX audit_log_by_tenant ON audit_log (tenant, id DESC);
