//! A job's state as clients read it.

use tokio_postgres::types::Type;

use super::sql::Sql;
use super::{JobRecord, Store, StoreError};
use crate::domain::{JobId, Tenant};

const JOB: Sql = Sql::new(
    "SELECT idempotency_key,
                        CASE state WHEN 'sending' THEN 'processing' ELSE state END,
                        attempts, last_error, next_attempt_at, updated_at, sent_at,
                        created_at, tenant
                 FROM deliveries WHERE job_id = $1 AND ($2::text IS NULL OR tenant = $2)
                 UNION ALL
                 SELECT idempotency_key, 'duplicate', 0, NULL, NULL, created_at, NULL, NULL,
                        tenant
                 FROM duplicate_jobs WHERE job_id = $1 AND ($2::text IS NULL OR tenant = $2)
                 LIMIT 1",
    &[Type::UUID, Type::TEXT],
);

const UNFINISHED: Sql = Sql::new(
    "SELECT count(*) FROM deliveries
     WHERE tenant = $1 AND state IN ('queued', 'processing', 'retrying', 'sending')",
    &[Type::TEXT],
);

/// Every statement of this module, for the test that checks their types.
#[cfg(test)]
pub(super) const ALL: &[&Sql] = &[&JOB, &UNFINISHED];

impl Store {
    /// How many of `tenant`'s jobs are unfinished: waiting, in flight or
    /// waiting for a retry (`MAX_QUEUED_PER_TENANT`).
    #[tracing::instrument(skip_all)]
    pub async fn unfinished(&self, tenant: &Tenant) -> Result<u64, StoreError> {
        let conn = self.pool.get().await?;
        let count: i64 = self
            .one(&conn, &UNFINISHED, &[&tenant.as_str()])
            .await?
            .get(0);
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// The state of an accepted job, in any state (`queued` from its
    /// acceptance on), or of a job skipped as a duplicate; only when it is
    /// `tenant`'s, unless `tenant` is `None` (an operator's read).
    #[tracing::instrument(skip_all)]
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
        }))
    }
}
