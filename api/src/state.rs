//! What every handler shares.

use std::time::Duration;

use sendonce_shared::domain::JobId;
use sendonce_shared::queue::Queue;
use sendonce_shared::store::{JobRecord, Store};

use crate::problem::ApiError;

/// Shared handler state.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The Redis queue.
    pub queue: Queue,
    /// The Postgres store.
    pub store: Store,
    /// How long the API remembers an accepted key for replays.
    pub replay_ttl: Duration,
    /// `MAX_JOB_BYTES`: the largest `text` plus `html` of one job.
    pub max_job_bytes: usize,
}

impl AppState {
    /// A job's current state: from Postgres once a worker has seen it, else
    /// `queued` while Redis still marks it accepted.
    pub async fn job(&self, job: JobId) -> Result<Option<JobRecord>, ApiError> {
        if let Some(record) = self.store.job(job).await.map_err(ApiError::unavailable)? {
            return Ok(Some(record));
        }
        let key = self
            .queue
            .accepted_key(job)
            .await
            .map_err(ApiError::unavailable)?;
        Ok(key.map(|idempotency_key| JobRecord {
            job_id: job,
            idempotency_key,
            status: "queued".into(),
            attempts: 0,
            last_error: None,
            next_attempt_at: None,
            created_at: job.created_at(),
            updated_at: job.created_at(),
            sent_at: None,
        }))
    }
}
