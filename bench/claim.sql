-- The two statements a job needs in Postgres, as the worker sends them:
-- the L2 claim, then the `sent` update, each its own transaction. (No
-- conflict target, so that it runs on every schema an A/B may compare.)
\set k random(1, 2000000000)
INSERT INTO deliveries (idempotency_key, job_id, state, attempts)
VALUES ('pgbench:' || :k, gen_random_uuid(), 'processing', 1)
ON CONFLICT DO NOTHING;
UPDATE deliveries SET state = 'sent', smtp_reply = '250 2.0.0 Ok', sent_at = now(), updated_at = now()
WHERE idempotency_key = 'pgbench:' || :k AND state = 'processing';
