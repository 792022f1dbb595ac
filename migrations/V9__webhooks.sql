-- Outcome webhooks and the suppression list (README, "Webhooks" and
-- "Suppressions").
--
-- suppressed: a new terminal state. The job named only addresses on its
--             tenant's suppression list: it ended without any SMTP
--             conversation. Like `sent`, the key stays taken.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_state_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_state_check CHECK (state IN (
    'queued', 'processing', 'retrying', 'sending',
    'sent', 'failed', 'uncertain', 'canceled', 'suppressed')) NOT VALID;
ALTER TABLE deliveries VALIDATE CONSTRAINT deliveries_state_check;

DROP INDEX deliveries_prunable;
CREATE INDEX deliveries_prunable ON deliveries (updated_at)
    WHERE state IN ('sent', 'failed', 'uncertain', 'canceled', 'suppressed')
      AND (task IS NOT NULL OR smtp_reply IS NOT NULL);

-- A tenant's suppression list. `address` is the recipient's addr-spec,
-- lower-cased, its domain in A-labels (EmailAddress::suppression_key).
--
-- reason: `bounce` (the server refused the address for good, 5.1.x) or
--         `manual` (POST /suppressions).
CREATE TABLE suppressions (
    tenant      TEXT NOT NULL,
    address     TEXT NOT NULL,
    reason      TEXT NOT NULL CHECK (reason IN ('bounce', 'manual')),
    smtp_reply  TEXT,
    job_id      UUID,
    note        TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, address)
);

-- A tenant's webhook endpoints.
--
-- secret:           `whsec_` + base64, as the Standard Webhooks
--                   specification writes it; shown once, at creation or
--                   rotation.
-- previous_secret:  after a rotation, the old secret also signs until
--                   previous_secret_expires_at (the overlap period).
-- failing_since:    the retry schedule of one of its deliveries ran out; its
--                   deliveries wait (`held`) until it is resumed or one
--                   replayed delivery succeeds.
CREATE TABLE webhooks (
    id                          UUID PRIMARY KEY,
    tenant                      TEXT NOT NULL,
    url                         TEXT NOT NULL,
    event_types                 TEXT[] NOT NULL,
    description                 TEXT,
    secret                      TEXT NOT NULL,
    previous_secret             TEXT,
    previous_secret_expires_at  TIMESTAMPTZ,
    failing_since               TIMESTAMPTZ,
    created_at                  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_by_tenant ON webhooks (tenant, id);

-- The outbox: one row per state change an application may want to hear
-- of, written by the statement that makes the change.
--
-- type: job.sent, job.failed, job.uncertain, job.duplicate, job.canceled,
--       job.suppressed, job.retrying.
-- data: the event's `data` object as receivers get it.
CREATE TABLE events (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant      TEXT NOT NULL,
    type        TEXT NOT NULL,
    job_id      UUID NOT NULL,
    data        JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX events_by_job ON events (job_id);
-- Retention deletes old events.
CREATE INDEX events_by_time ON events (created_at);

-- One event for one endpoint, made with the event for every endpoint of
-- its tenant subscribed to its type.
--
-- state:           pending (due at next_attempt_at; a dispatcher that
--                  claims it pushes next_attempt_at past its request, so a
--                  killed dispatcher's claim comes due again), held (its
--                  endpoint is failing), delivered (a 2xx was read).
-- log:             [{"at", "status", "error", "duration_ms"}], one per
--                  attempt.
CREATE TABLE webhook_deliveries (
    id               BIGSERIAL PRIMARY KEY,
    endpoint_id      UUID NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id         UUID NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'held', 'delivered')),
    attempts         INT NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ,
    last_attempt_at  TIMESTAMPTZ,
    last_status      INT,
    last_error       TEXT,
    log              JSONB NOT NULL DEFAULT '[]',
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at     TIMESTAMPTZ,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
-- An endpoint's delivery log, newest first.
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, id DESC);
-- The oldest undelivered event per endpoint (a metric), and resuming.
CREATE INDEX webhook_deliveries_undelivered ON webhook_deliveries (endpoint_id, created_at)
    WHERE state <> 'delivered';
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries (event_id);
