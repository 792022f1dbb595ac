-- Cancel (POST /jobs/{id}/cancel): a job whose data has not started can be
-- withdrawn for good. `canceled` is terminal, like `sent`: the key stays
-- taken, a replay answers the canceled job, and no worker claims it again.
--
-- maybe_sent: the row waits for another attempt although an earlier one
--             may have delivered (an ambiguous attempt reopened under
--             ON_UNCERTAIN=resend, an `uncertain` entry requeued). Such a
--             job is never canceled: it could end `canceled` and delivered.
-- canceled_at: when it was canceled.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_state_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_state_check CHECK (state IN (
    'queued', 'processing', 'retrying', 'sending',
    'sent', 'failed', 'uncertain', 'canceled')) NOT VALID;
ALTER TABLE deliveries VALIDATE CONSTRAINT deliveries_state_check;
ALTER TABLE deliveries ADD COLUMN maybe_sent BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE deliveries ADD COLUMN canceled_at TIMESTAMPTZ;

-- Retention clears a canceled job's personal data as it does a sent one's.
DROP INDEX deliveries_prunable;
CREATE INDEX deliveries_prunable ON deliveries (updated_at)
    WHERE state IN ('sent', 'failed', 'uncertain', 'canceled')
      AND (task IS NOT NULL OR smtp_reply IS NOT NULL);
