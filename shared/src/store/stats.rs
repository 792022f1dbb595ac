//! `GET /stats`: how many jobs are in each state, in all and by priority,
//! for one tenant or every one.
//!
//! Two sources, each cheap however many finished rows `deliveries` holds:
//! the unfinished jobs (ready, scheduled, processing) are counted through
//! the partial indexes that hold only them; finished jobs, duplicates and
//! dead letters are summed from `job_counts`, which migration 13's
//! triggers (made cheaper by migration 14) keep as each row moves into or out of a
//! terminal state (one counter row per session slot, so outcome writes do
//! not queue on one hot row).

use std::collections::HashMap;

use serde::Serialize;
use tokio_postgres::types::Type;

use super::sql::Sql;
use super::{Store, StoreError};
use crate::domain::{Priority, Tenant};

/// The unfinished jobs by priority, through the partial indexes that hold
/// only them (`deliveries_waiting`: queued and retrying;
/// `deliveries_in_flight`: processing and sending), one scan each, so the
/// cost follows the backlog, not the history. Ready: waiting and due, as
/// the reconciler reads it; scheduled: waiting for a `send_at` or a retry's
/// delay; processing: claimed, its data under way or about to be (a task a
/// worker has popped but not yet claimed still counts as ready).
const LIVE: Sql = Sql::new(
    "SELECT priority, sum(ready)::int8, sum(scheduled)::int8, sum(processing)::int8,
            EXTRACT(EPOCH FROM now() - min(oldest))::float8
     FROM (SELECT priority,
                  count(*) FILTER (WHERE GREATEST(updated_at, next_attempt_at) <= now())
                      AS ready,
                  count(*) FILTER (WHERE GREATEST(updated_at, next_attempt_at) > now())
                      AS scheduled,
                  0::int8 AS processing,
                  min(created_at) FILTER (WHERE GREATEST(updated_at, next_attempt_at) <= now())
                      AS oldest
           FROM deliveries
           WHERE state IN ('queued', 'retrying') AND ($1::text IS NULL OR tenant = $1)
           GROUP BY priority
           UNION ALL
           SELECT priority, 0, 0, count(*), NULL
           FROM deliveries
           WHERE state IN ('processing', 'sending') AND ($1::text IS NULL OR tenant = $1)
           GROUP BY priority) live
     GROUP BY priority",
    &[Type::TEXT],
);

/// The counted outcomes by priority.
const COUNTED: Sql = Sql::new(
    "SELECT priority, counted, sum(n)::int8 FROM job_counts
     WHERE ($1::text IS NULL OR tenant = $1)
     GROUP BY priority, counted",
    &[Type::TEXT],
);

/// Workers whose lease is live (fleet-wide: workers serve every tenant).
const WORKERS_ALIVE: Sql = Sql::new(
    "SELECT count(*) FROM worker_leases WHERE expires_at > now()",
    &[],
);

/// Every statement of this module, for the test that checks their types.
#[cfg(test)]
pub(super) const ALL: &[&Sql] = &[&LIVE, &COUNTED, &WORKERS_ALIVE];

/// How many jobs are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Counts {
    /// Accepted and due, waiting for a worker.
    pub ready: i64,
    /// Waiting for their `send_at` or a retry's delay.
    pub scheduled: i64,
    /// Claimed by a worker: its data under way, or about to be.
    pub processing: i64,
    /// Delivered.
    pub sent: i64,
    /// Skipped: another job of the tenant owns their key.
    pub duplicate: i64,
    /// Ended on a permanent failure, or out of attempts.
    pub failed: i64,
    /// Cut while their data was out; nobody knows whether they arrived.
    pub uncertain: i64,
    /// Withdrawn by the client.
    pub canceled: i64,
    /// Every recipient was on the suppression list.
    pub suppressed: i64,
    /// Entries in the dead-letter table (`failed` and `uncertain` ones not
    /// yet requeued or discarded).
    pub dead_letters: i64,
    /// How long the oldest ready job has waited since it was accepted;
    /// `null` when none is ready.
    pub oldest_ready_age_seconds: Option<f64>,
}

impl Counts {
    fn add(&mut self, other: &Self) {
        self.ready += other.ready;
        self.scheduled += other.scheduled;
        self.processing += other.processing;
        self.sent += other.sent;
        self.duplicate += other.duplicate;
        self.failed += other.failed;
        self.uncertain += other.uncertain;
        self.canceled += other.canceled;
        self.suppressed += other.suppressed;
        self.dead_letters += other.dead_letters;
        self.oldest_ready_age_seconds = match (
            self.oldest_ready_age_seconds,
            other.oldest_ready_age_seconds,
        ) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// [`Counts`] of each priority.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ByPriority {
    /// `high` jobs.
    pub high: Counts,
    /// `normal` jobs (every job from before priorities).
    pub normal: Counts,
    /// `low` jobs.
    pub low: Counts,
}

impl ByPriority {
    fn of(&mut self, priority: Priority) -> &mut Counts {
        match priority {
            Priority::High => &mut self.high,
            Priority::Normal => &mut self.normal,
            Priority::Low => &mut self.low,
        }
    }
}

/// The answer of `GET /stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Stats {
    /// Every priority together.
    #[serde(flatten)]
    pub total: Counts,
    /// Workers whose lease is live, fleet-wide.
    pub workers_alive: i64,
    /// The same counts, priority by priority.
    pub priorities: ByPriority,
}

impl Store {
    /// The counts of `tenant`'s jobs or (`None`) everyone's, in one
    /// read-only transaction under the console's statement timeout.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn stats(&self, tenant: Option<&Tenant>) -> Result<Stats, StoreError> {
        let mut conn = self.pool.get().await?;
        let tx = self.console_tx(&mut conn).await?;
        let tenant = tenant.map(Tenant::as_str);
        let live = self.tx_rows(&tx, &LIVE, &[&tenant]).await?;
        let counted = self.tx_rows(&tx, &COUNTED, &[&tenant]).await?;
        let alive = self.tx_rows(&tx, &WORKERS_ALIVE, &[]).await?;
        self.commit(tx).await?;

        let mut priorities = ByPriority::default();
        let priority = |raw: &str| {
            Priority::parse(raw).map_err(|e| StoreError::Corrupt(format!("priority {e}")))
        };
        for row in &live {
            let counts = priorities.of(priority(row.get(0))?);
            counts.ready = row.get(1);
            counts.scheduled = row.get(2);
            counts.processing = row.get(3);
            counts.oldest_ready_age_seconds = row.get::<_, Option<f64>>(4).map(|s| s.max(0.0));
        }
        let mut other = HashMap::new();
        for row in &counted {
            let counts = priorities.of(priority(row.get(0))?);
            let n: i64 = row.get(2);
            match row.get::<_, &str>(1) {
                "sent" => counts.sent = n,
                "duplicate" => counts.duplicate = n,
                "failed" => counts.failed = n,
                "uncertain" => counts.uncertain = n,
                "canceled" => counts.canceled = n,
                "suppressed" => counts.suppressed = n,
                "dead_letter" => counts.dead_letters = n,
                unknown => {
                    other.insert(unknown.to_owned(), n);
                }
            }
        }
        if !other.is_empty() {
            tracing::warn!(?other, "job_counts holds rows of unknown kinds");
        }
        let mut total = Counts::default();
        for p in [priorities.high, priorities.normal, priorities.low] {
            total.add(&p);
        }
        Ok(Stats {
            total,
            workers_alive: alive.first().map_or(0, |r| r.get(0)),
            priorities,
        })
    }
}
