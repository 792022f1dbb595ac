-- Accepted means durable (docs/exactly-once.md, "Acceptance").
--
-- The API now inserts the key's row, `queued` with the task, before it
-- answers 202: Redis may then lose anything and the reconciler puts the
-- task back on the queue from here.
--
-- fingerprint: the accepted request's fingerprint, so a replay of the key
--              is answered 200 (same request) or 422 (another one) for
--              ever, whatever Redis kept. NULL on rows from before this
--              migration.
ALTER TABLE deliveries ADD COLUMN fingerprint TEXT;

-- The reconciler's scans: rows waiting for an attempt, by the time since
-- which they should have been taken (the acceptance or the last change for
-- `queued`, the due time for `retrying`), then by key for keyset paging.
-- Small while the queue is short: rows leave it at their first claim.
CREATE INDEX deliveries_waiting
    ON deliveries ((GREATEST(updated_at, next_attempt_at)), idempotency_key)
    WHERE state IN ('queued', 'retrying');
