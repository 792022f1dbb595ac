//! The Postgres store: the L2 claim (the authority on "at most one effect per
//! key"), job states, duplicates and the dead-letter table.
//!
//! Every state change is a conditional `UPDATE ... WHERE state IN (...)`, so
//! two holders of the same task (one of them wrongly presumed dead) can never
//! both move it to `sending`: the row is the fencing token.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::domain::{IdempotencyKey, JobId, Task};

pub mod retention;
mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Advisory lock id held while migrating, so an API and five workers starting
/// together apply migrations once, one after another. ("sendonce" in ASCII.)
const MIGRATION_LOCK_ID: i64 = 0x73656e646f6e6365;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No connection could be had from the pool.
    #[error("could not get a Postgres connection")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("a Postgres statement failed")]
    Postgres(#[from] tokio_postgres::Error),
    /// Applying migrations failed.
    #[error("applying migrations failed")]
    Migration(#[from] refinery::Error),
    /// The connection settings were unusable.
    #[error("invalid Postgres configuration: {0}")]
    Config(String),
    /// A stored row did not parse back into a domain value.
    #[error("a stored row is corrupt: {0}")]
    Corrupt(String),
}

/// Requeueing dead-letter entries failed; nothing was requeued by the
/// failing batch.
#[derive(Debug, thiserror::Error)]
pub enum RequeueError<E> {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Pushing the tasks onto the queue failed.
    #[error("could not push the requeued tasks")]
    Push(#[source] E),
}

/// Opens a pool. Connections are made lazily; call [`Store::ping`] to check.
pub fn connect(url: &SecretString, max_size: usize) -> Result<Pool, StoreError> {
    let pg: tokio_postgres::Config = url
        .expose_secret()
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::Config(e.to_string()))?;
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(Duration::from_secs(5)))
        .wait_timeout(Some(Duration::from_secs(10)))
        .build()
        .map_err(|e| StoreError::Config(e.to_string()))
}

/// Where an idempotency key stands for the job trying to claim it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This job owns the key and may attempt a send; this is attempt number
    /// `attempt` (1-based).
    Proceed {
        /// The attempt about to be made.
        attempt: i32,
    },
    /// Another job owns the key.
    Duplicate {
        /// The owner.
        owner: JobId,
    },
    /// This job already reached a terminal state; a redelivery after a
    /// crash between recording and acknowledging.
    AlreadyDone,
    /// A previous attempt of this job was cut while its data was going out:
    /// nobody knows whether the server accepted it.
    Ambiguous {
        /// Attempts made so far.
        attempts: i32,
    },
}

/// Why a task is in the dead-letter table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// Permanently refused, or out of attempts.
    Failed,
    /// The outcome of a send is unknown (the ambiguous window).
    Uncertain,
}

impl std::str::FromStr for DeadReason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "failed" => Ok(Self::Failed),
            "uncertain" => Ok(Self::Uncertain),
            other => Err(format!("`{other}` is not `failed` or `uncertain`")),
        }
    }
}

impl DeadReason {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Uncertain => "uncertain",
        }
    }
}

/// Which dedup layer caught a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupLayer {
    /// The Redis `SET NX` fast path.
    L1,
    /// The Postgres unique claim.
    L2,
}

impl DedupLayer {
    /// The stored word and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::L1 => "l1",
            Self::L2 => "l2",
        }
    }
}

/// Everything a DLQ entry records about the failure.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    /// Why it is dead.
    pub reason: DeadReason,
    /// What went wrong, for an operator.
    pub error: &'a str,
    /// The last SMTP reply, if the server gave one.
    pub smtp_reply: Option<&'a str>,
}

/// A job's state as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct JobRecord {
    /// The job.
    pub job_id: JobId,
    /// Its key.
    pub idempotency_key: String,
    /// `queued`, `processing`, `retrying`, `sent`, `duplicate`, `failed` or
    /// `uncertain`.
    pub status: String,
    /// SMTP attempts made.
    pub attempts: i32,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// When the next attempt is due, while retrying.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the API accepted the job.
    pub created_at: Option<DateTime<Utc>>,
    /// When its state last changed.
    pub updated_at: Option<DateTime<Utc>>,
    /// When the server accepted the message.
    pub sent_at: Option<DateTime<Utc>>,
}

/// One dead-letter entry as the API lists it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct FailedJob {
    /// The entry's id (used to retry or discard it).
    pub id: i64,
    /// The job.
    pub job_id: JobId,
    /// Its key.
    pub idempotency_key: String,
    /// Recipient.
    pub to: Option<String>,
    /// Subject line.
    pub subject: Option<String>,
    /// `failed` or `uncertain`.
    pub reason: String,
    /// What went wrong.
    pub error: String,
    /// The last SMTP reply, if any.
    pub smtp_reply: Option<String>,
    /// SMTP attempts made.
    pub attempts: i32,
    /// When it was dead-lettered.
    pub failed_at: DateTime<Utc>,
}

/// Which dead-letter entries a listing wants.
#[derive(Debug, Clone, Default)]
pub struct FailedFilter {
    /// Only entries with this reason.
    pub reason: Option<DeadReason>,
    /// Only entries dead-lettered at or after this instant.
    pub since: Option<DateTime<Utc>>,
}

/// Which dead-letter entries to requeue.
#[derive(Debug, Clone)]
pub enum RequeueSelection {
    /// These entry ids.
    Ids(Vec<i64>),
    /// Every entry, or every entry with this reason.
    All(Option<DeadReason>),
}

/// Handle to the Postgres store.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl Store {
    /// Wraps a pool.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// The pool, for code that needs its own queries.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Checks that Postgres answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.pool.get().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Applies pending migrations under an advisory lock, so concurrent
    /// start-ups serialise instead of racing on the schema history table.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let mut conn = self.pool.get().await?;
        conn.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_ID])
            .await?;
        let client: &mut tokio_postgres::Client = &mut conn;
        let result = embedded::migrations::runner().run_async(client).await;
        // Unlock even on failure; the session may go back to the pool.
        conn.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_ID])
            .await?;
        Ok(result?.applied_migrations().len())
    }

    /// The L2 claim. Inserts the key's row for a first attempt; otherwise
    /// takes the row for this same job when it is waiting for an attempt.
    /// The `UPDATE` waits on a concurrent requeue's row lock, so it sees the
    /// requeued state rather than the stale terminal one.
    #[tracing::instrument(skip_all)]
    pub async fn claim(&self, task: &Task) -> Result<Claim, StoreError> {
        let conn = self.pool.get().await?;
        let key = task.idempotency_key.as_str();
        let job = task.job_id.as_uuid();
        let inserted = conn
            .query_opt(
                &conn
                    .prepare_cached(
                        "INSERT INTO deliveries (idempotency_key, job_id, state, attempts)
                 VALUES ($1, $2, 'processing', 1)
                 ON CONFLICT (idempotency_key) DO NOTHING
                 RETURNING attempts",
                    )
                    .await?,
                &[&key, &job],
            )
            .await?;
        if let Some(row) = inserted {
            return Ok(Claim::Proceed {
                attempt: row.get(0),
            });
        }
        let taken = conn
            .query_opt(
                &conn
                    .prepare_cached(
                        "UPDATE deliveries
                 SET state = 'processing', attempts = attempts + 1,
                     next_attempt_at = NULL, updated_at = now()
                 WHERE idempotency_key = $1 AND job_id = $2
                   AND state IN ('queued', 'processing', 'retrying')
                 RETURNING attempts",
                    )
                    .await?,
                &[&key, &job],
            )
            .await?;
        if let Some(row) = taken {
            return Ok(Claim::Proceed {
                attempt: row.get(0),
            });
        }
        let row = conn
            .query_one(
                &conn
                    .prepare_cached(
                        "SELECT job_id, state, attempts FROM deliveries WHERE idempotency_key = $1",
                    )
                    .await?,
                &[&key],
            )
            .await?;
        let owner: Uuid = row.get(0);
        let state: &str = row.get(1);
        Ok(if owner != job {
            Claim::Duplicate {
                owner: owner.into(),
            }
        } else if state == "sending" {
            Claim::Ambiguous {
                attempts: row.get(2),
            }
        } else {
            Claim::AlreadyDone
        })
    }

    /// Under `ON_UNCERTAIN=resend`: takes back a key left in `sending` by a
    /// cut attempt of this same job, for one more attempt. `None` when
    /// another holder got there first.
    #[tracing::instrument(skip_all)]
    pub async fn reopen_ambiguous(&self, task: &Task) -> Result<Option<i32>, StoreError> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt(
                "UPDATE deliveries
                 SET state = 'processing', attempts = attempts + 1, updated_at = now()
                 WHERE idempotency_key = $1 AND job_id = $2 AND state = 'sending'
                 RETURNING attempts",
                &[&task.idempotency_key.as_str(), &task.job_id.as_uuid()],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The job that owns `key` in L2, if any job claimed it yet.
    #[tracing::instrument(skip_all)]
    pub async fn owner(&self, key: &IdempotencyKey) -> Result<Option<JobId>, StoreError> {
        let conn = self.pool.get().await?;
        let row = conn
            .query_opt(
                &conn
                    .prepare_cached("SELECT job_id FROM deliveries WHERE idempotency_key = $1")
                    .await?,
                &[&key.as_str()],
            )
            .await?;
        Ok(row.map(|r| JobId::from(r.get::<_, Uuid>(0))))
    }

    /// Records that the message data is about to go out. Returns `false` when
    /// this holder no longer owns the attempt (another holder got there
    /// first); the caller must then not send.
    #[tracing::instrument(skip_all)]
    pub async fn mark_sending(&self, task: &Task) -> Result<bool, StoreError> {
        let conn = self.pool.get().await?;
        let n = conn
            .execute(
                &conn
                    .prepare_cached(
                        "UPDATE deliveries SET state = 'sending', updated_at = now()
                 WHERE idempotency_key = $1 AND job_id = $2 AND state = 'processing'",
                    )
                    .await?,
                &[&task.idempotency_key.as_str(), &task.job_id.as_uuid()],
            )
            .await?;
        Ok(n == 1)
    }

    /// Records the server's acceptance.
    #[tracing::instrument(skip_all)]
    pub async fn mark_sent(&self, task: &Task, smtp_reply: &str) -> Result<(), StoreError> {
        let conn = self.pool.get().await?;
        conn.execute(
            &conn
                .prepare_cached(
                    "UPDATE deliveries
                 SET state = 'sent', smtp_reply = $3, last_error = NULL,
                     sent_at = now(), updated_at = now()
                 WHERE idempotency_key = $1 AND job_id = $2 AND state = 'sending'",
                )
                .await?,
            &[
                &task.idempotency_key.as_str(),
                &task.job_id.as_uuid(),
                &smtp_reply,
            ],
        )
        .await?;
        Ok(())
    }

    /// Records a transient failure and when the next attempt is due.
    #[tracing::instrument(skip_all)]
    pub async fn mark_retrying(
        &self,
        task: &Task,
        error: &str,
        smtp_reply: Option<&str>,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.pool
            .get()
            .await?
            .execute(
                "UPDATE deliveries
                 SET state = 'retrying', last_error = $3, smtp_reply = $4,
                     next_attempt_at = $5, updated_at = now()
                 WHERE idempotency_key = $1 AND job_id = $2
                   AND state IN ('processing', 'sending')",
                &[
                    &task.idempotency_key.as_str(),
                    &task.job_id.as_uuid(),
                    &error,
                    &smtp_reply,
                    &next_attempt_at,
                ],
            )
            .await?;
        Ok(())
    }

    /// Moves the task's key to a terminal failure state and writes its DLQ
    /// entry, in one transaction. Idempotent: a redelivered task that is
    /// already dead writes nothing.
    #[tracing::instrument(skip_all)]
    pub async fn dead_letter(&self, task: &Task, failure: Failure<'_>) -> Result<(), StoreError> {
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await?;
        let row = tx
            .query_opt(
                "UPDATE deliveries
                 SET state = $3, last_error = $4, smtp_reply = $5,
                     next_attempt_at = NULL, updated_at = now()
                 WHERE idempotency_key = $1 AND job_id = $2
                   AND state IN ('queued', 'processing', 'retrying', 'sending')
                 RETURNING attempts",
                &[
                    &task.idempotency_key.as_str(),
                    &task.job_id.as_uuid(),
                    &failure.reason.as_str(),
                    &failure.error,
                    &failure.smtp_reply,
                ],
            )
            .await?;
        if let Some(row) = row {
            let attempts: i32 = row.get(0);
            let task_json =
                serde_json::to_value(task).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tx.execute(
                "INSERT INTO failed_jobs
                     (job_id, idempotency_key, task, reason, error, smtp_reply, attempts)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (job_id) DO NOTHING",
                &[
                    &task.job_id.as_uuid(),
                    &task.idempotency_key.as_str(),
                    &task_json,
                    &failure.reason.as_str(),
                    &failure.error,
                    &failure.smtp_reply,
                    &attempts,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The state of a job the workers have seen, if any.
    #[tracing::instrument(skip_all)]
    pub async fn job(&self, job: JobId) -> Result<Option<JobRecord>, StoreError> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt(
                "SELECT idempotency_key,
                        CASE state WHEN 'sending' THEN 'processing' ELSE state END,
                        attempts, last_error, next_attempt_at, updated_at, sent_at
                 FROM deliveries WHERE job_id = $1
                 UNION ALL
                 SELECT idempotency_key, 'duplicate', 0, NULL, NULL, created_at, NULL
                 FROM duplicate_jobs WHERE job_id = $1
                 LIMIT 1",
                &[&job.as_uuid()],
            )
            .await?;
        Ok(row.map(|r| JobRecord {
            job_id: job,
            idempotency_key: r.get(0),
            status: r.get(1),
            attempts: r.get(2),
            last_error: r.get(3),
            next_attempt_at: r.get(4),
            created_at: job.created_at(),
            updated_at: r.get(5),
            sent_at: r.get(6),
        }))
    }

    /// A page of the dead-letter table, newest first, after the entry
    /// `before` (keyset pagination on the monotonic id, so entries that
    /// arrive while paging never shift a page).
    #[tracing::instrument(skip_all)]
    pub async fn failed_page(
        &self,
        filter: &FailedFilter,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<FailedJob>, StoreError> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                "SELECT id, job_id, idempotency_key, task->>'to', task->>'subject',
                        reason, error, smtp_reply, attempts, failed_at
                 FROM failed_jobs
                 WHERE ($1::bigint IS NULL OR id < $1)
                   AND ($2::text IS NULL OR reason = $2)
                   AND ($3::timestamptz IS NULL OR failed_at >= $3)
                 ORDER BY id DESC
                 LIMIT $4",
                &[
                    &before,
                    &filter.reason.map(DeadReason::as_str),
                    &filter.since,
                    &limit,
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| FailedJob {
                id: r.get(0),
                job_id: JobId::from(r.get::<_, Uuid>(1)),
                idempotency_key: r.get(2),
                to: r.get(3),
                subject: r.get(4),
                reason: r.get(5),
                error: r.get(6),
                smtp_reply: r.get(7),
                attempts: r.get(8),
                failed_at: r.get(9),
            })
            .collect())
    }

    /// Discards one dead-letter entry. Its key stays terminal: the job is
    /// given up, not made sendable by a new job with the same key.
    #[tracing::instrument(skip_all)]
    pub async fn discard_failed(&self, id: i64) -> Result<bool, StoreError> {
        let n = self
            .pool
            .get()
            .await?
            .execute("DELETE FROM failed_jobs WHERE id = $1", &[&id])
            .await?;
        Ok(n == 1)
    }

    /// Requeues dead-letter entries with a fresh attempt budget, keeping
    /// their job ids and keys. In one transaction per batch: the entries are
    /// deleted and their keys set back to `queued`, `push` puts the tasks on
    /// the queue, and only then does the transaction commit. A worker that
    /// pops a task before the commit waits on the row lock in its claim and
    /// then sees `queued`; if `push` fails, nothing changes.
    #[tracing::instrument(skip_all)]
    pub async fn requeue_failed<E>(
        &self,
        selection: &RequeueSelection,
        push: impl AsyncFn(Vec<String>) -> Result<(), E>,
    ) -> Result<u64, RequeueError<E>> {
        const BATCH: i64 = 500;
        let mut total = 0;
        loop {
            let mut conn = self.pool.get().await.map_err(StoreError::from)?;
            let tx = conn.transaction().await.map_err(StoreError::from)?;
            let rows = match selection {
                RequeueSelection::Ids(ids) => {
                    tx.query(
                        "DELETE FROM failed_jobs WHERE id = ANY($1)
                         RETURNING job_id, idempotency_key, task::text",
                        &[ids],
                    )
                    .await
                }
                RequeueSelection::All(reason) => {
                    tx.query(
                        "DELETE FROM failed_jobs WHERE id IN (
                             SELECT id FROM failed_jobs
                             WHERE ($1::text IS NULL OR reason = $1)
                             ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
                         RETURNING job_id, idempotency_key, task::text",
                        &[&reason.map(DeadReason::as_str), &BATCH],
                    )
                    .await
                }
            }
            .map_err(StoreError::from)?;
            if rows.is_empty() {
                return Ok(total);
            }
            let jobs: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
            let keys: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
            tx.execute(
                "UPDATE deliveries d
                 SET state = 'queued', attempts = 0, last_error = NULL,
                     next_attempt_at = NULL, updated_at = now()
                 FROM unnest($1::uuid[], $2::text[]) AS r(job_id, key)
                 WHERE d.job_id = r.job_id AND d.idempotency_key = r.key
                   AND d.state IN ('failed', 'uncertain')",
                &[&jobs, &keys],
            )
            .await
            .map_err(StoreError::from)?;
            let tasks: Vec<String> = rows.iter().map(|r| r.get(2)).collect();
            push(tasks).await.map_err(RequeueError::Push)?;
            tx.commit().await.map_err(StoreError::from)?;
            total += rows.len() as u64;
            if matches!(selection, RequeueSelection::Ids(_)) {
                return Ok(total);
            }
        }
    }

    /// Records that `task` was skipped because `owner` holds its key.
    #[tracing::instrument(skip_all)]
    pub async fn record_duplicate(
        &self,
        task: &Task,
        owner: Option<JobId>,
        layer: DedupLayer,
    ) -> Result<(), StoreError> {
        let conn = self.pool.get().await?;
        conn.execute(
            &conn
                .prepare_cached(
                    "INSERT INTO duplicate_jobs (job_id, idempotency_key, duplicate_of, layer)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (job_id) DO NOTHING",
                )
                .await?,
            &[
                &task.job_id.as_uuid(),
                &task.idempotency_key.as_str(),
                &owner.map(|o| o.as_uuid()),
                &layer.as_str(),
            ],
        )
        .await?;
        Ok(())
    }
}
