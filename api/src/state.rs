//! What every handler shares.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use sendonce_shared::domain::{JobId, Tenant};
use sendonce_shared::queue::Queue;
use sendonce_shared::store::{Acceptor, Cancel, JobRecord, Store};

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
    /// `MAX_MESSAGE_BYTES`: the largest `text`, `html` and decoded
    /// attachments of one job together.
    pub max_message_bytes: usize,
    /// `MAX_RECIPIENTS`: most recipients of one job.
    pub max_recipients: usize,
    /// `MAX_SCHEDULE_DAYS`: how far ahead `send_at` may be.
    pub max_schedule_days: u32,
    /// Which webhook URLs are accepted: public `https` ones, or (with
    /// `APP_ENV=development`) any `http` or `https` one.
    pub webhook_urls: sendonce_shared::domain::webhooks::UrlPolicy,
    /// The senders each tenant may use (`SENDER_POLICY_FILE`).
    pub senders: crate::sender_policy::SenderPolicy,
    /// `MAX_QUEUED_PER_TENANT`, when set.
    pub backlog: Option<Arc<crate::backlog::Backlog>>,
    /// Set at SIGTERM when `SHUTDOWN_DELAY_MS` is not zero: `/readyz`
    /// answers 503 while requests are still served, so load balancers stop
    /// sending before the listener closes.
    pub draining: Arc<AtomicBool>,
}

impl AppState {
    /// Cancels a job whose data has not started, if it is `tenant`'s (any
    /// tenant's for `None`).
    pub async fn cancel(&self, job: JobId, tenant: Option<&Tenant>) -> Result<Cancel, ApiError> {
        self.store
            .cancel(job, tenant)
            .await
            .map_err(ApiError::unavailable)
    }

    /// A job's current state, from Postgres (every accepted job has its row
    /// from the moment it was answered `202`), if it is `tenant`'s (any
    /// tenant's for `None`).
    pub async fn job(
        &self,
        job: JobId,
        tenant: Option<&Tenant>,
    ) -> Result<Option<JobRecord>, ApiError> {
        self.store
            .job(job, tenant)
            .await
            .map_err(ApiError::unavailable)
    }
}
