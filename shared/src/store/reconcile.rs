//! The reconciler's reads: accepted jobs waiting for an attempt, whose
//! copy in Redis may be gone.
//!
//! Two scans, both over the small `deliveries_waiting` index (rows in
//! `queued` or `retrying`), both bounded per call:
//!
//! - [`Store::waiting_page`] pages through every waiting row, for the pass
//!   that follows a Redis that lost everything (a new epoch);
//! - [`Store::reconcile_stale`] takes rows that should have been claimed
//!   long ago (`queued` and unchanged, or `retrying` and overdue, for
//!   `RECONCILE_AFTER_MS`), pushes them, and marks them so the next round
//!   leaves them alone for as long again.
//!
//! Pushing a task that Redis still holds makes a second copy; the claims
//! absorb it (`AlreadyDone`, or `Held` under a live holder).

use std::time::Duration;

use chrono::{DateTime, Utc};

use tokio_postgres::types::Type;

use super::sql::Sql;
use super::{Store, StoreError};

/// Where a page of [`Store::waiting_page`] ended; pass it to get the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingCursor {
    /// Waiting since (the index's first column).
    since: DateTime<Utc>,
    /// The tenant of the last key of the page.
    tenant: String,
    /// The last key of the page.
    key: String,
}

/// One page of waiting tasks.
#[derive(Debug, Clone, Default)]
pub struct WaitingPage {
    /// The tasks, as stored, each with how long until it is due (zero for
    /// a `queued` job or a retry already due), by the database's clock.
    pub tasks: Vec<(String, Duration)>,
    /// Where to go on from, or `None` after the last page.
    pub next: Option<WaitingCursor>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

const NOW: Sql = Sql::new("SELECT now()", &[]);

const WAITING: Sql = Sql::new(
    "SELECT GREATEST(updated_at, next_attempt_at), idempotency_key, task::text,
            GREATEST(0, (EXTRACT(EPOCH FROM next_attempt_at - now())
                         * 1000)::bigint),
            tenant
     FROM deliveries
     WHERE state IN ('queued', 'retrying') AND task IS NOT NULL
       AND (GREATEST(updated_at, next_attempt_at), tenant, idempotency_key)
           > (COALESCE($1, '-infinity'::timestamptz), $5, $2)
       AND updated_at <= $3
     ORDER BY 1, 5, 2
     LIMIT $4",
    &[
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::INT8,
        Type::TEXT,
    ],
);

const STALE: Sql = Sql::new(
    "UPDATE deliveries d SET updated_at = now()
     FROM (SELECT tenant, idempotency_key FROM deliveries
           WHERE state IN ('queued', 'retrying') AND task IS NOT NULL
             AND GREATEST(updated_at, next_attempt_at)
                 < now() - $1::bigint * interval '1 millisecond'
           ORDER BY GREATEST(updated_at, next_attempt_at), tenant, idempotency_key
           LIMIT $2
           FOR UPDATE SKIP LOCKED) stale
     WHERE d.tenant = stale.tenant AND d.idempotency_key = stale.idempotency_key
     RETURNING d.task::text",
    &[Type::INT8, Type::INT8],
);

/// Every statement of this module, for the test that checks their types.
#[cfg(test)]
pub(super) const ALL: &[&Sql] = &[&NOW, &WAITING, &STALE];

impl Store {
    /// The database's clock, which bounds a pass of [`Store::waiting_page`]:
    /// rows changed later were pushed by whoever changed them.
    pub async fn now(&self) -> Result<DateTime<Utc>, StoreError> {
        let conn = self.pool.get().await?;
        Ok(self.one(&conn, &NOW, &[]).await?.get(0))
    }

    /// Up to `limit` waiting rows last changed at `until` or before, after
    /// `after` (keyset paging, so rows that move meanwhile never shift a
    /// page).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn waiting_page(
        &self,
        until: DateTime<Utc>,
        after: Option<&WaitingCursor>,
        limit: i64,
    ) -> Result<WaitingPage, StoreError> {
        let conn = self.pool.get().await?;
        let (since, tenant, key) = match after {
            Some(c) => (Some(c.since), c.tenant.as_str(), c.key.as_str()),
            None => (None, "", ""),
        };
        let rows = self
            .rows(&conn, &WAITING, &[&since, &key, &until, &limit, &tenant])
            .await?;
        let next = match rows.last() {
            Some(last) if rows.len() as i64 == limit => Some(WaitingCursor {
                since: last.get(0),
                tenant: last.get(4),
                key: last.get(1),
            }),
            _ => None,
        };
        Ok(WaitingPage {
            tasks: rows
                .iter()
                .map(|r| {
                    let due_in: Option<i64> = r.get(3);
                    let ms = u64::try_from(due_in.unwrap_or(0)).unwrap_or(0);
                    (r.get(2), Duration::from_millis(ms))
                })
                .collect(),
            next,
        })
    }

    /// Pushes up to `limit` tasks that have waited for a claim longer than
    /// `after` (`queued` rows unchanged that long, `retrying` rows overdue
    /// that long), and restarts their wait. In one transaction: `push`
    /// runs before the commit, so a failed push changes nothing. Rows are
    /// locked with `SKIP LOCKED`, so every worker may run it at once.
    /// Returns how many were pushed.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn reconcile_stale<E>(
        &self,
        after: Duration,
        limit: i64,
        push: impl AsyncFnOnce(Vec<String>) -> Result<(), E>,
    ) -> Result<usize, StoreError>
    where
        E: std::fmt::Display,
    {
        let mut conn = self.pool.get().await?;
        let tx = self.begin(&mut conn).await?;
        let tasks: Vec<String> = self
            .tx_rows(&tx, &STALE, &[&millis(after), &limit])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if tasks.is_empty() {
            return Ok(0);
        }
        let n = tasks.len();
        if let Err(e) = push(tasks).await {
            tracing::warn!(error = %e, "reconciler: could not push waiting tasks; left as they were");
            return Ok(0);
        }
        self.commit(tx).await?;
        Ok(n)
    }
}
