//! A job's state as clients read it.

use tokio_postgres::types::Type;

use super::outbox::outbox;
use super::sql::Sql;
use super::{JobRecord, Store, StoreError, metadata_at};
use crate::domain::{JobId, Tenant};

const JOB: Sql = Sql::new(
    "SELECT idempotency_key,
                        CASE WHEN state = 'sending' THEN 'processing'
                             WHEN state = 'queued' AND next_attempt_at > now() THEN 'scheduled'
                             ELSE state END,
                        attempts, last_error, next_attempt_at, updated_at, sent_at,
                        created_at, tenant, refused_recipients::text, task->'metadata'
                 FROM deliveries WHERE job_id = $1 AND ($2::text IS NULL OR tenant = $2)
                 UNION ALL
                 SELECT idempotency_key, 'duplicate', 0, NULL, NULL, created_at, NULL, NULL,
                        tenant, NULL, NULL
                 FROM duplicate_jobs WHERE job_id = $1 AND ($2::text IS NULL OR tenant = $2)
                 LIMIT 1",
    &[Type::UUID, Type::TEXT],
);

const UNFINISHED: Sql = Sql::new(
    "SELECT count(*) FROM deliveries
     WHERE tenant = $1 AND state IN ('queued', 'processing', 'retrying', 'sending')",
    &[Type::TEXT],
);

/// Withdraws a job whose data has not started: waiting (`queued`,
/// `retrying`) or claimed but not yet `sending`, and never sent-maybe
/// before (see migration 7). Row locks order it against the worker's
/// fenced `processing` -> `sending` step: whichever commits first wins, and
/// the other finds the row moved on.
/// With its `job.canceled` event.
const CANCEL: Sql = Sql::new(
    concat!(
        "WITH canceled AS (
        UPDATE deliveries
        SET state = 'canceled', canceled_at = now(), holder = NULL,
            next_attempt_at = NULL, updated_at = now()
        WHERE job_id = $1 AND ($2::text IS NULL OR tenant = $2)
          AND state IN ('queued', 'retrying', 'processing') AND NOT maybe_sent
        RETURNING job_id, tenant, idempotency_key, state, task, attempts, smtp_reply,
                  last_error, refused_recipients)",
        outbox!("canceled", "'job.canceled'"),
        "
    SELECT count(*) FROM canceled"
    ),
    &[Type::UUID, Type::TEXT],
);

/// Where a job that was not canceled stands.
const CANCEL_LOOK: Sql = Sql::new(
    "SELECT state, maybe_sent FROM deliveries
     WHERE job_id = $1 AND ($2::text IS NULL OR tenant = $2)
     UNION ALL
     SELECT 'duplicate', false FROM duplicate_jobs
     WHERE job_id = $1 AND ($2::text IS NULL OR tenant = $2)
     LIMIT 1",
    &[Type::UUID, Type::TEXT],
);

/// Every statement of this module, for the test that checks their types.
#[cfg(test)]
pub(super) const ALL: &[&Sql] = &[&JOB, &UNFINISHED, &CANCEL, &CANCEL_LOOK];

/// What a cancel found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// The job is `canceled`, by this request or an earlier one.
    Canceled,
    /// The job has gone too far to be canceled.
    TooLate {
        /// Its state as `GET /jobs/{id}` names it.
        status: String,
        /// Why, in words.
        reason: &'static str,
    },
    /// No such job (in this tenant).
    Unknown,
}

impl Store {
    /// How many of `tenant`'s jobs are unfinished: waiting, in flight or
    /// waiting for a retry (`MAX_QUEUED_PER_TENANT`).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn unfinished(&self, tenant: &Tenant) -> Result<u64, StoreError> {
        let conn = self.pool.get().await?;
        let count: i64 = self
            .one(&conn, &UNFINISHED, &[&tenant.as_str()])
            .await?
            .get(0);
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Cancels `job` when its data has not started; only when it is
    /// `tenant`'s, unless `tenant` is `None` (an operator's action).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn cancel(&self, job: JobId, tenant: Option<&Tenant>) -> Result<Cancel, StoreError> {
        let conn = self.pool.get().await?;
        let tenant = tenant.map(Tenant::as_str);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&job.as_uuid(), &tenant];
        if self.one(&conn, &CANCEL, &params).await?.get::<_, i64>(0) == 1 {
            return Ok(Cancel::Canceled);
        }
        let Some(row) = self.opt(&conn, &CANCEL_LOOK, &params).await? else {
            return Ok(Cancel::Unknown);
        };
        let state: String = row.get(0);
        let maybe_sent: bool = row.get(1);
        Ok(match state.as_str() {
            "canceled" => Cancel::Canceled,
            "sending" => Cancel::TooLate {
                status: "processing".to_owned(),
                reason: "its message is being sent",
            },
            "queued" | "retrying" | "processing" if maybe_sent => Cancel::TooLate {
                status: state,
                reason: "an earlier attempt may have delivered it",
            },
            "queued" | "retrying" | "processing" => Cancel::TooLate {
                status: state,
                reason: "its state changed while it was being canceled; try again",
            },
            _ => Cancel::TooLate {
                status: state,
                reason: "it is finished",
            },
        })
    }

    /// The state of an accepted job, in any state (`queued` from its
    /// acceptance on), or of a job skipped as a duplicate; only when it is
    /// `tenant`'s, unless `tenant` is `None` (an operator's read).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn job(
        &self,
        job: JobId,
        tenant: Option<&Tenant>,
    ) -> Result<Option<JobRecord>, StoreError> {
        let conn = self.pool.get().await?;
        let tenant = tenant.map(Tenant::as_str);
        let row = self.opt(&conn, &JOB, &[&job.as_uuid(), &tenant]).await?;
        Ok(row.map(|r| JobRecord {
            job_id: job,
            tenant: r.get(8),
            idempotency_key: r.get(0),
            status: r.get(1),
            attempts: r.get(2),
            last_error: r.get(3),
            next_attempt_at: r.get(4),
            created_at: r.get::<_, Option<_>>(7).or_else(|| job.created_at()),
            updated_at: r.get(5),
            sent_at: r.get(6),
            refused_recipients: r
                .get::<_, Option<String>>(9)
                .and_then(|text| serde_json::from_str(&text).ok())
                .unwrap_or_default(),
            metadata: metadata_at(&r, 10),
        }))
    }
}
