//! Handing accepted jobs to Redis.
//!
//! A job is accepted once Postgres has it; the push to Redis only makes it
//! visible to the workers at once. When the push fails (Redis down, a
//! failover under way), the tasks are pushed again in the background with
//! backoff for up to [`RETRY_FOR`], so a short outage delays them by its
//! own length rather than by `RECONCILE_AFTER_MS`; after that, or if this
//! process dies first, the workers' reconciler pushes them from Postgres.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sendonce_shared::queue::{Queue, QueueError};

/// How long failed pushes are retried in the background.
pub const RETRY_FOR: Duration = Duration::from_secs(60);
/// Most tasks waiting for a background retry at once (about 30 MB of
/// tasks); beyond it, the reconciler alone has them.
const MAX_WAITING: usize = 100_000;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Pushes accepted tasks for one process; cheap to clone.
#[derive(Debug, Clone)]
pub struct Handoff {
    queue: Queue,
    /// Tasks held by background retries.
    waiting: Arc<AtomicUsize>,
}

impl Handoff {
    /// Pushes through `queue`.
    pub fn new(queue: Queue) -> Self {
        Self {
            queue,
            waiting: Arc::default(),
        }
    }

    /// Pushes `tasks`, each with how long until it is due (scheduled
    /// sends go to the delayed set), in one round trip per shard. On
    /// failure the error is returned (for the caller's log) and the tasks
    /// are retried in the background.
    pub async fn push(&self, tasks: Vec<(String, Duration)>) -> Result<(), QueueError> {
        let Err(e) = self.queue.push_due(&tasks).await else {
            return Ok(());
        };
        let n = tasks.len();
        if self.waiting.fetch_add(n, Ordering::AcqRel) + n > MAX_WAITING {
            self.waiting.fetch_sub(n, Ordering::AcqRel);
            return Err(e);
        }
        let this = self.clone();
        tokio::spawn(async move {
            this.retry(&tasks).await;
            this.waiting.fetch_sub(tasks.len(), Ordering::AcqRel);
        });
        Err(e)
    }

    async fn retry(&self, tasks: &[(String, Duration)]) {
        let start = tokio::time::Instant::now();
        let deadline = start + RETRY_FOR;
        let mut backoff = BACKOFF_MIN;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(backoff).await;
            // Scheduled tasks keep their due time.
            let waited = start.elapsed();
            let due: Vec<(String, Duration)> = tasks
                .iter()
                .map(|(raw, due_in)| (raw.clone(), due_in.saturating_sub(waited)))
                .collect();
            if self.queue.push_due(&due).await.is_ok() {
                tracing::info!(
                    jobs = tasks.len(),
                    "accepted jobs pushed to Redis after a retry"
                );
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        tracing::warn!(
            jobs = tasks.len(),
            "accepted jobs still not pushed to Redis; the workers' reconciler will push them (RECONCILE_AFTER_MS)"
        );
    }
}
