-- The L2 claim and the state of the job that owns each idempotency key.
-- The primary key on idempotency_key is the authority for "at most one
-- effect per key": it holds even when Redis has lost every L1 dedup key.
CREATE TABLE deliveries (
    idempotency_key TEXT PRIMARY KEY,
    job_id          UUID NOT NULL UNIQUE,
    state           TEXT NOT NULL CHECK (state IN (
                        'queued', 'processing', 'retrying', 'sending',
                        'sent', 'failed', 'uncertain')),
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      TEXT,
    smtp_reply      TEXT,
    next_attempt_at TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at         TIMESTAMPTZ
);

-- Jobs skipped because another job owns their key. Kept so the job's status
-- stays readable, and so operators can see who posted a key twice.
CREATE TABLE duplicate_jobs (
    job_id          UUID PRIMARY KEY,
    idempotency_key TEXT NOT NULL,
    duplicate_of    UUID,
    layer           TEXT NOT NULL CHECK (layer IN ('l1', 'l2')),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX duplicate_jobs_by_key ON duplicate_jobs (idempotency_key);

-- The dead-letter queue: persistent, never capped or pruned by sendonce.
CREATE TABLE failed_jobs (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id          UUID NOT NULL,
    idempotency_key TEXT NOT NULL,
    task            JSONB NOT NULL,
    reason          TEXT NOT NULL CHECK (reason IN ('failed', 'uncertain')),
    error           TEXT NOT NULL,
    smtp_reply      TEXT,
    attempts        INTEGER NOT NULL,
    failed_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- One live DLQ entry per job: dead-lettering is idempotent across redeliveries.
CREATE UNIQUE INDEX failed_jobs_one_per_job ON failed_jobs (job_id);
CREATE INDEX failed_jobs_by_reason ON failed_jobs (reason, id DESC);
