//! What every handler shares.

use sendonce_shared::domain::JobId;
use sendonce_shared::queue::Queue;
use sendonce_shared::store::{Acceptor, JobRecord, Store};

use crate::handoff::Handoff;
use crate::problem::ApiError;

/// Shared handler state.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The Redis queue.
    pub queue: Queue,
    /// The Postgres store.
    pub store: Store,
    /// The group commit that records single jobs before they are answered.
    pub acceptor: Acceptor,
    /// Pushes accepted jobs to Redis (`POST /addJobs`; the acceptor's
    /// writer uses it too).
    pub handoff: Handoff,
    /// `MAX_JOB_BYTES`: the largest `text` plus `html` of one job.
    pub max_job_bytes: usize,
}

impl AppState {
    /// A job's current state, from Postgres: every accepted job has its row
    /// from the moment it was answered `202`.
    pub async fn job(&self, job: JobId) -> Result<Option<JobRecord>, ApiError> {
        self.store.job(job).await.map_err(ApiError::unavailable)
    }
}
