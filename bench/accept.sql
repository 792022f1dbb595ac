-- The API's acceptance as the group commit sends it: one multi-row INSERT
-- of 64 `queued` jobs with their tasks and fingerprints, one transaction.
-- Jobs/s = tps × 64.
\set k random(1, 2000000000)
INSERT INTO deliveries (idempotency_key, job_id, state, attempts, fence, task, fingerprint)
SELECT 'pgbench-accept:' || :k || ':' || n, gen_random_uuid(), 'queued', 0, 0,
       jsonb_build_object(
           'job_id', gen_random_uuid(), 'idempotency_key', 'pgbench-accept:' || :k || ':' || n,
           'to', 'Ada Lovelace <ada@example.com>', 'from', NULL, 'reply_to', NULL,
           'subject', 'Welcome aboard', 'text', 'Hello from the benchmark!', 'html', NULL,
           'enqueued_at', now()),
       md5(n::text)
FROM generate_series(1, 64) AS n
ON CONFLICT DO NOTHING;
