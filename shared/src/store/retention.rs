//! Retention: what sendonce keeps of a finished job after `RETENTION_DAYS`.
//!
//! A key's promise ("at most one email per key") needs only its
//! `deliveries` row: the key, its job id and a terminal state. Everything
//! else about a finished job is personal data kept for operations: the task
//! copy in `deliveries.task` (addresses, subject, body), the server's reply,
//! and the dead-letter entry with its whole task. Pruning drops those and
//! keeps the promise, so a pruned key posted again is still a duplicate.
//!
//! Each call prunes at most one batch, so a large backlog is worked off in
//! short transactions that never hold many row locks.

use tokio_postgres::types::Type;

use super::sql::Sql;
use super::{Store, StoreError};

/// What one [`Store::prune_batch`] call removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Finished `deliveries` rows whose task copy and server reply were
    /// cleared.
    pub deliveries: u64,
    /// Dead-letter entries deleted.
    pub failed_jobs: u64,
    /// Webhook events deleted (with their delivered deliveries).
    pub events: u64,
}

impl Pruned {
    /// Whether the batch found nothing left to prune.
    pub fn is_empty(&self) -> bool {
        self.deliveries == 0 && self.failed_jobs == 0 && self.events == 0
    }
}

const PRUNE_DELIVERIES: Sql = Sql::new(
    "WITH old AS (
         SELECT tenant, idempotency_key FROM deliveries
         WHERE state IN ('sent', 'failed', 'uncertain', 'canceled', 'suppressed')
           AND (task IS NOT NULL OR smtp_reply IS NOT NULL)
           AND updated_at < now() - make_interval(days => $1)
         ORDER BY updated_at
         LIMIT $2
         FOR UPDATE SKIP LOCKED)
     UPDATE deliveries d SET task = NULL, smtp_reply = NULL, refused_recipients = NULL
     FROM old WHERE d.tenant = old.tenant AND d.idempotency_key = old.idempotency_key",
    &[Type::INT4, Type::INT8],
);

const PRUNE_FAILED: Sql = Sql::new(
    "DELETE FROM failed_jobs WHERE id IN (
         SELECT id FROM failed_jobs
         WHERE failed_at < now() - make_interval(days => $1)
         ORDER BY failed_at
         LIMIT $2
         FOR UPDATE SKIP LOCKED)",
    &[Type::INT4, Type::INT8],
);

/// Webhook events carry recipients and metadata: they go with the rest,
/// but never while an endpoint still waits for one (a failing endpoint's
/// events wait to be replayed, not dropped). Oldest first by their
/// time-ordered ids (migration 11).
const PRUNE_EVENTS: Sql = Sql::new(
    "DELETE FROM events WHERE id IN (
         SELECT id FROM events e
         WHERE created_at < now() - make_interval(days => $1)
           AND NOT EXISTS (SELECT 1 FROM webhook_deliveries w
                           WHERE w.event_id = e.id AND w.state <> 'delivered')
         ORDER BY id
         LIMIT $2
         FOR UPDATE SKIP LOCKED)",
    &[Type::INT4, Type::INT8],
);

/// Every statement of this module, for the test that checks their types.
#[cfg(test)]
pub(super) const ALL: &[&Sql] = &[&PRUNE_DELIVERIES, &PRUNE_FAILED, &PRUNE_EVENTS];

impl Store {
    /// Prunes up to `batch` finished job records and `batch` dead-letter
    /// entries last changed more than `days` days ago. Rows locked by a
    /// worker are skipped, for a later batch.
    pub async fn prune_batch(&self, days: u32, batch: i64) -> Result<Pruned, StoreError> {
        let days = i32::try_from(days).unwrap_or(i32::MAX);
        let client = self.pool.get().await?;
        let deliveries = self
            .exec(&client, &PRUNE_DELIVERIES, &[&days, &batch])
            .await?;
        let failed_jobs = self.exec(&client, &PRUNE_FAILED, &[&days, &batch]).await?;
        let events = self.exec(&client, &PRUNE_EVENTS, &[&days, &batch]).await?;
        Ok(Pruned {
            deliveries,
            failed_jobs,
            events,
        })
    }
}
