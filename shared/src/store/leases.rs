//! Worker leases on the database clock, and the sweeper.
//!
//! A worker renews its lease every third of `WORKER_LEASE_MS`. The lease
//! decides two things, both in SQL against one clock (Postgres's `now()`):
//! a holder may start the data (`sending`) only while its lease is live, and
//! a row is taken from a holder (by a claim, or by the sweeper below) only
//! once its lease has lapsed.
//!
//! The sweeper is the backstop for rows in flight that no task copy in
//! Redis will ever come back for (Redis lost it, or every copy was
//! acknowledged): a row in `processing` or `sending` whose holder's lease
//! lapsed more than a lease ago. `sending` becomes `uncertain` (the data may
//! have gone out); `processing` goes back to `queued`, with a new token, and
//! its task back on the queue.

use std::time::Duration;

use super::claims::{Fence, dead_letter, live};
use tokio_postgres::types::Type;

use super::sql::Sql;
use super::{DeadReason, Failure, Store, StoreError};

/// Rows resolved per sweep.
const SWEEP_BATCH: i64 = 100;
/// Lapsed leases are forgotten after this long (they only name workers).
const FORGET_LEASES_AFTER: Duration = Duration::from_secs(24 * 3600);

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// `sending` rows filed `uncertain`.
    pub uncertain: usize,
    /// `processing` rows put back on the queue.
    pub requeued: usize,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

const RENEW: Sql = Sql::new(
    "INSERT INTO worker_leases (worker_id, expires_at, renewed_at)
     VALUES ($1, now() + $2::bigint * interval '1 millisecond', now())
     ON CONFLICT (worker_id)
     DO UPDATE SET expires_at = EXCLUDED.expires_at, renewed_at = EXCLUDED.renewed_at",
    &[Type::TEXT, Type::INT8],
);

const RELEASE: Sql = Sql::new(
    "DELETE FROM worker_leases WHERE worker_id = $1",
    &[Type::TEXT],
);

const ABANDONED: Sql = Sql::new(
    "SELECT idempotency_key, state, fence, tenant FROM deliveries d
     WHERE state IN ('processing', 'sending')
       AND updated_at < now() - $1::bigint * interval '1 millisecond'
       AND NOT EXISTS (
           SELECT 1 FROM worker_leases l
           WHERE l.worker_id = d.holder
             AND l.expires_at > now() - $1::bigint * interval '1 millisecond')
     ORDER BY updated_at LIMIT $2",
    &[Type::INT8, Type::INT8],
);

const FORGET: Sql = Sql::new(
    "DELETE FROM worker_leases
     WHERE expires_at < now() - $1::bigint * interval '1 millisecond'",
    &[Type::INT8],
);

const REQUEUE: Sql = Sql::new(
    concat!(
        "UPDATE deliveries d
         SET state = 'queued', fence = fence + 1, holder = NULL, updated_at = now()
         WHERE idempotency_key = $1 AND tenant = $3 AND fence = $2 AND state = 'processing'
           AND task IS NOT NULL AND NOT ",
        live!("d.holder"),
        " RETURNING task::text"
    ),
    &[Type::TEXT, Type::INT8, Type::TEXT],
);

/// Every statement of this module, for the test that checks their types.
#[cfg(test)]
pub(super) const ALL: &[&Sql] = &[&RENEW, &RELEASE, &ABANDONED, &FORGET, &REQUEUE];

impl Store {
    /// Renews (or takes) `worker`'s lease for `lease` from now, by the
    /// database clock, and records the renewal as its heartbeat.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn renew_lease(&self, worker: &str, lease: Duration) -> Result<(), StoreError> {
        let conn = self.pool.get().await?;
        self.exec(&conn, &RENEW, &[&worker, &millis(lease)]).await?;
        Ok(())
    }

    /// Gives `worker`'s lease up (at shutdown), so the rows it leaves are
    /// taken over at once instead of a lease later.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn release_lease(&self, worker: &str) -> Result<(), StoreError> {
        let conn = self.pool.get().await?;
        self.exec(&conn, &RELEASE, &[&worker]).await?;
        Ok(())
    }

    /// Resolves up to a batch of rows in flight whose holder's lease lapsed
    /// more than `lease` ago (so the ordinary recovery through Redis had its
    /// chance first). `push` puts a requeued task on the queue before its
    /// row commits `queued`. Any number of workers may sweep at once: every
    /// change is fenced on the token the sweep read, and rows are locked
    /// with `SKIP LOCKED`.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn sweep_abandoned<E, F, Fut>(
        &self,
        lease: Duration,
        push: F,
    ) -> Result<Swept, StoreError>
    where
        E: std::fmt::Display,
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let rows = {
            let conn = self.pool.get().await?;
            self.rows(&conn, &ABANDONED, &[&millis(lease), &SWEEP_BATCH])
                .await?
        };
        let mut swept = Swept::default();
        for row in rows {
            let key: String = row.get(0);
            let state: &str = row.get(1);
            let fence = Fence(row.get(2));
            let tenant: &str = row.get(3);
            if state == "sending" {
                let failure = Failure {
                    reason: DeadReason::Uncertain,
                    error: "the worker sending this attempt lost its lease while the data was \
                            going out and nothing came back for it; the server may or may not \
                            have accepted it",
                    smtp_reply: None,
                };
                if dead_letter(self, tenant, &key, fence, None, failure).await? {
                    swept.uncertain += 1;
                    tracing::warn!(idempotency_key = %key, "sweeper: abandoned `sending` filed uncertain");
                }
            } else if self.requeue_abandoned(tenant, &key, fence, &push).await? {
                swept.requeued += 1;
                tracing::warn!(idempotency_key = %key, "sweeper: abandoned `processing` requeued");
            }
        }
        let conn = self.pool.get().await?;
        self.exec(&conn, &FORGET, &[&millis(FORGET_LEASES_AFTER)])
            .await?;
        Ok(swept)
    }

    async fn requeue_abandoned<E, F, Fut>(
        &self,
        tenant: &str,
        key: &str,
        fence: Fence,
        push: &F,
    ) -> Result<bool, StoreError>
    where
        E: std::fmt::Display,
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let mut conn = self.pool.get().await?;
        let tx = self.begin(&mut conn).await?;
        let row = self
            .tx_opt(&tx, &REQUEUE, &[&key, &fence.0, &tenant])
            .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        if let Err(e) = push(row.get(0)).await {
            tracing::warn!(error = %e, "sweeper: could not push a requeued task; left as it was");
            return Ok(false);
        }
        self.commit(tx).await?;
        Ok(true)
    }
}
