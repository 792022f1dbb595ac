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

/// Every statement of this module, for the test that checks their types.
#[cfg(test)]
pub(super) const ALL: &[&Sql] = &[&JOB];

impl Store {
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
