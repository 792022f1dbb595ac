-- The audit trail of operator actions on the dead-letter queue (README,
-- "Audit trail"): who requeued or discarded which entry, when, and why.
--
-- One row per entry an action changed, written in the transaction that
-- changes it: a rolled-back requeue leaves no row, and an action that
-- changed nothing writes none. The entry itself is deleted by the action,
-- so its row copies what identifies it instead of referencing it.
--
-- actor:           the bearer token's `sub` ('' for a token without one).
-- action:          `requeue` or `discard`.
-- failed_job_id:   the entry's id in failed_jobs, as GET /failedJobs showed it.
-- dead_reason:     why the entry was dead (`failed` or `uncertain`).
-- note:            the reason the operator gave, if any.
-- request_id:      the request's X-Request-Id, to find its log lines.
CREATE TABLE audit_log (
    id              BIGSERIAL PRIMARY KEY,
    at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor           TEXT NOT NULL,
    action          TEXT NOT NULL CHECK (action IN ('requeue', 'discard')),
    failed_job_id   BIGINT NOT NULL,
    job_id          UUID NOT NULL,
    idempotency_key TEXT NOT NULL,
    dead_reason     TEXT NOT NULL CHECK (dead_reason IN ('failed', 'uncertain')),
    note            TEXT CHECK (char_length(note) BETWEEN 1 AND 500),
    request_id      TEXT
);

-- GET /audit?action= and ?actor=: newest first within one action or actor
-- (unfiltered, the primary key serves).
CREATE INDEX audit_log_by_action ON audit_log (action, id DESC);
CREATE INDEX audit_log_by_actor ON audit_log (actor, id DESC);
