-- The operator console (issue 20) shows each worker's last heartbeat.
--
-- renewed_at: when the worker last renewed its lease, by the database
--             clock; NULL on a lease last renewed by a worker from before
--             this migration. expires_at alone does not tell it: workers
--             may run with different lease lengths.
ALTER TABLE worker_leases ADD COLUMN renewed_at TIMESTAMPTZ;

-- The console's job page reads the audit rows of one job. Operator actions
-- only write here, off the hot path: the index costs no email anything.
CREATE INDEX audit_log_by_job ON audit_log (job_id);
