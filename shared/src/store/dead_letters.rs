//! The dead-letter table: listing, discarding and requeueing entries, each
//! discard and requeue with its audit rows (`audit`).

use std::collections::HashSet;

use tokio_postgres::types::{Json, Type};
use tokio_postgres::{Row, Transaction};
use uuid::Uuid;

use super::sql::Sql;

use super::{
    Actor, DeadReason, FailedFilter, FailedJob, RequeueError, RequeueSelection, Store, StoreError,
    metadata_at,
};
use crate::domain::{JobId, Tenant};

/// Entries requeued per transaction.
const REQUEUE_BATCH: i64 = 500;

const PAGE: Sql = Sql::new(
    "SELECT id, job_id, idempotency_key, task->>'to', task->>'subject',
            reason, error, smtp_reply, attempts, failed_at, tenant, task->'metadata'
     FROM failed_jobs
     WHERE ($1::bigint IS NULL OR id < $1)
       AND ($2::text IS NULL OR reason = $2)
       AND ($3::timestamptz IS NULL OR failed_at >= $3)
       AND ($5::text IS NULL OR tenant = $5)
       AND ($6::jsonb IS NULL OR task->'metadata' @> $6)
     ORDER BY id DESC
     LIMIT $4",
    &[
        Type::INT8,
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::INT8,
        Type::TEXT,
        Type::JSONB,
    ],
);

/// The entry goes, and its audit row comes, in one statement.
const DISCARD: Sql = Sql::new(
    "WITH gone AS (
         DELETE FROM failed_jobs WHERE id = $1 AND ($5::text IS NULL OR tenant = $5)
         RETURNING id, job_id, idempotency_key, reason, tenant)
     INSERT INTO audit_log
         (actor, action, failed_job_id, job_id, idempotency_key, dead_reason,
          note, request_id, actor_tenant, tenant)
     SELECT $2::text, 'discard', id, job_id, idempotency_key, reason,
            $3::text, $4::text, $6::text, tenant
     FROM gone",
    &[
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
    ],
);

const BY_IDS: Sql = Sql::new(
    "SELECT id, job_id, idempotency_key, task->>'to', task->>'subject',
            reason, error, smtp_reply, attempts, failed_at, tenant, task->'metadata'
     FROM failed_jobs
     WHERE id = ANY($1) AND ($2::text IS NULL OR tenant = $2)
     ORDER BY id DESC",
    &[Type::INT8_ARRAY, Type::TEXT],
);

const NEWEST: Sql = Sql::new("SELECT COALESCE(max(id), 0) FROM failed_jobs", &[]);

const TAKE_IDS: Sql = Sql::new(
    "DELETE FROM failed_jobs WHERE id = ANY($1) AND ($2::text IS NULL OR tenant = $2)
     RETURNING job_id, idempotency_key, task::text, id, reason, tenant",
    &[Type::INT8_ARRAY, Type::TEXT],
);

const TAKE_ALL: Sql = Sql::new(
    "DELETE FROM failed_jobs WHERE id IN (
         SELECT id FROM failed_jobs
         WHERE id <= $3 AND ($1::text IS NULL OR reason = $1)
           AND ($4::text IS NULL OR tenant = $4)
         ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
     RETURNING job_id, idempotency_key, task::text, id, reason, tenant",
    &[Type::TEXT, Type::INT8, Type::INT8, Type::TEXT],
);

/// Requeuing an entry is the operator's word that its job may be tried
/// again: the addresses its own refusal put on the suppression list are
/// lifted with it (README, "Suppressions"), or the job would end
/// `suppressed` at once. Entries other jobs' refusals or a hand added stay.
const REQUEUE: Sql = Sql::new(
    "WITH requeued AS (
         UPDATE deliveries d
         SET state = 'queued', attempts = 0, last_error = NULL,
             next_attempt_at = NULL, updated_at = now(),
             maybe_sent = d.maybe_sent OR d.state = 'uncertain',
             task = COALESCE(d.task, r.task::jsonb)
         FROM unnest($1::uuid[], $2::text[], $3::text[]) AS r(job_id, key, task)
         WHERE d.job_id = r.job_id AND d.idempotency_key = r.key
           AND d.state IN ('failed', 'uncertain')
         RETURNING d.job_id, d.tenant),
     lifted AS (
         DELETE FROM suppressions s USING requeued q
         WHERE s.tenant = q.tenant AND s.job_id = q.job_id AND s.reason = 'bounce')
     SELECT job_id FROM requeued",
    &[Type::UUID_ARRAY, Type::TEXT_ARRAY, Type::TEXT_ARRAY],
);

/// The audit rows of the entries a requeue batch moved.
const AUDIT_REQUEUES: Sql = Sql::new(
    "INSERT INTO audit_log
         (actor, action, failed_job_id, job_id, idempotency_key, dead_reason,
          note, request_id, actor_tenant, tenant)
     SELECT $1::text, 'requeue', e.id, e.job_id, e.key, e.reason, $2::text, $3::text,
            $8::text, e.tenant
     FROM unnest($4::bigint[], $5::uuid[], $6::text[], $7::text[], $9::text[])
          AS e(id, job_id, key, reason, tenant)",
    &[
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8_ARRAY,
        Type::UUID_ARRAY,
        Type::TEXT_ARRAY,
        Type::TEXT_ARRAY,
        Type::TEXT,
        Type::TEXT_ARRAY,
    ],
);

/// Every statement of this module, for the test that checks their types.
#[cfg(test)]
pub(super) const ALL: &[&Sql] = &[
    &PAGE,
    &BY_IDS,
    &DISCARD,
    &NEWEST,
    &TAKE_IDS,
    &TAKE_ALL,
    &REQUEUE,
    &AUDIT_REQUEUES,
];

impl Store {
    /// A page of the dead-letter table, newest first, after the entry
    /// `before` (keyset pagination on the monotonic id, so entries that
    /// arrive while paging never shift a page).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn failed_page(
        &self,
        filter: &FailedFilter,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<FailedJob>, StoreError> {
        let conn = self.pool.get().await?;
        let rows = self
            .rows(
                &conn,
                &PAGE,
                &[
                    &before,
                    &filter.reason.map(DeadReason::as_str),
                    &filter.since,
                    &limit,
                    &filter.tenant.as_ref().map(Tenant::as_str),
                    &filter.metadata.as_ref().map(|m| Json(m.as_map())),
                ],
            )
            .await?;
        Ok(rows.iter().map(failed_job).collect())
    }

    /// The dead-letter entries among `ids` that are `tenant`'s (any
    /// tenant's for `None`), newest first: what an operator is about to
    /// requeue or discard, to see which of them are `uncertain`.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn failed_entries(
        &self,
        ids: &[i64],
        tenant: Option<&Tenant>,
    ) -> Result<Vec<FailedJob>, StoreError> {
        let conn = self.pool.get().await?;
        let rows = self
            .rows(&conn, &BY_IDS, &[&ids, &tenant.map(Tenant::as_str)])
            .await?;
        Ok(rows.iter().map(failed_job).collect())
    }

    /// Discards one dead-letter entry and writes its audit row, in one
    /// statement. Its key stays terminal: the job is given up, not made
    /// sendable by a new job with the same key. `false`, and no audit row,
    /// when there is no such entry.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn discard_failed(&self, id: i64, actor: &Actor) -> Result<bool, StoreError> {
        let conn = self.pool.get().await?;
        let n = self
            .exec(
                &conn,
                &DISCARD,
                &[
                    &id,
                    &actor.sub,
                    &actor.note(),
                    &actor.request_id,
                    &actor.scope(),
                    &actor.tenant.as_str(),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// Requeues dead-letter entries with a fresh attempt budget, keeping
    /// their job ids and keys. In one transaction per batch: the entries are
    /// deleted and their keys set back to `queued`, `push` puts the tasks of
    /// the keys that moved on the queue, and only then does the transaction
    /// commit. A worker that pops a task before the commit waits on the row
    /// lock in its claim and then sees `queued`; if `push` fails, nothing
    /// changes. Each entry moved gets its audit row, by `actor`, in the
    /// same transaction.
    ///
    /// "All" means the entries that existed when the call began: an entry
    /// that fails again while the call runs gets a new id above that bound,
    /// so one call requeues each entry at most once (each extra requeue of an
    /// `uncertain` entry would be a possible extra email). An entry whose key
    /// is no longer `failed` or `uncertain` (a late `250` was recorded) is
    /// removed without being pushed, counted or audited.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn requeue_failed<E>(
        &self,
        selection: &RequeueSelection,
        actor: &Actor,
        push: impl AsyncFn(Vec<String>) -> Result<(), E>,
    ) -> Result<u64, RequeueError<E>> {
        let bound: i64 = {
            let conn = self.pool.get().await.map_err(StoreError::from)?;
            self.one(&conn, &NEWEST, &[]).await?.get(0)
        };
        let mut total = 0;
        loop {
            let mut conn = self.pool.get().await.map_err(StoreError::from)?;
            let tx = self.begin(&mut conn).await?;
            let rows = match selection {
                RequeueSelection::Ids(ids) => {
                    self.tx_rows(&tx, &TAKE_IDS, &[ids, &actor.scope()]).await
                }
                RequeueSelection::All(reason) => {
                    self.tx_rows(
                        &tx,
                        &TAKE_ALL,
                        &[
                            &reason.map(DeadReason::as_str),
                            &REQUEUE_BATCH,
                            &bound,
                            &actor.scope(),
                        ],
                    )
                    .await
                }
            }?;
            if rows.is_empty() {
                return Ok(total);
            }
            let jobs: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
            let keys: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
            let dead_tasks: Vec<String> = rows.iter().map(|r| r.get(2)).collect();
            // The row keeps (or, from before migration 2, gains) its task, so
            // the reconciler can push it again if Redis loses this push.
            let moved: HashSet<Uuid> = self
                .tx_rows(&tx, &REQUEUE, &[&jobs, &keys, &dead_tasks])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let requeued: Vec<&Row> = rows
                .iter()
                .filter(|r| moved.contains(&r.get::<_, Uuid>(0)))
                .collect();
            if !requeued.is_empty() {
                self.audit_requeues(&tx, actor, &requeued).await?;
                let tasks = requeued.iter().map(|r| r.get(2)).collect();
                push(tasks).await.map_err(RequeueError::Push)?;
            }
            let moved = requeued.len() as u64;
            self.commit(tx).await?;
            total += moved;
            if matches!(selection, RequeueSelection::Ids(_)) {
                return Ok(total);
            }
        }
    }

    /// Writes the audit rows of `moved` (rows of `TAKE_IDS` or `TAKE_ALL`)
    /// inside the requeue's transaction.
    async fn audit_requeues(
        &self,
        tx: &Transaction<'_>,
        actor: &Actor,
        moved: &[&Row],
    ) -> Result<(), StoreError> {
        let jobs: Vec<Uuid> = moved.iter().map(|r| r.get(0)).collect();
        let keys: Vec<&str> = moved.iter().map(|r| r.get(1)).collect();
        let ids: Vec<i64> = moved.iter().map(|r| r.get(3)).collect();
        let reasons: Vec<&str> = moved.iter().map(|r| r.get(4)).collect();
        let tenants: Vec<&str> = moved.iter().map(|r| r.get(5)).collect();
        self.tx_rows(
            tx,
            &AUDIT_REQUEUES,
            &[
                &actor.sub,
                &actor.note(),
                &actor.request_id,
                &ids,
                &jobs,
                &keys,
                &reasons,
                &actor.tenant.as_str(),
                &tenants,
            ],
        )
        .await?;
        Ok(())
    }
}

/// A row of [`PAGE`] or [`BY_IDS`].
fn failed_job(r: &Row) -> FailedJob {
    FailedJob {
        id: r.get(0),
        tenant: r.get(10),
        job_id: JobId::from(r.get::<_, Uuid>(1)),
        idempotency_key: r.get(2),
        to: r.get(3),
        subject: r.get(4),
        reason: r.get(5),
        error: r.get(6),
        smtp_reply: r.get(7),
        attempts: r.get(8),
        failed_at: r.get(9),
        metadata: metadata_at(r, 11),
    }
}
