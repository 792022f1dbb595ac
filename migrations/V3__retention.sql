-- Retention (RETENTION_DAYS, `sendonce-api prune`): each batch finds the
-- oldest finished rows that still hold personal data, and the oldest
-- dead-letter entries, without scanning the tables.
CREATE INDEX deliveries_prunable ON deliveries (updated_at)
    WHERE state IN ('sent', 'failed', 'uncertain')
      AND (task IS NOT NULL OR smtp_reply IS NOT NULL);
CREATE INDEX failed_jobs_by_age ON failed_jobs (failed_at);
