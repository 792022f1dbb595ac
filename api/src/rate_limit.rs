//! Per-subject rate limiting of the write endpoints (`RATE_LIMIT_PER_SEC`),
//! shared by every API replica: the budget lives in Redis
//! ([`Queue::take_rate`], one atomic script per request by Redis's clock),
//! so N replicas allow the configured rate, not N times it.
//!
//! While Redis does not answer, each process falls back to a bucket of its
//! own (the same rate, per process), so a Redis outage neither turns every
//! write into an error (jobs are still accepted: they are recorded in
//! Postgres) nor lifts the limit.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sendonce_shared::queue::Queue;

use crate::problem::ApiError;

/// Past this many remembered subjects, buckets of the fallback that are full
/// again are dropped, so the map stays as large as the set of recently busy
/// callers.
const FORGET_ABOVE_SUBJECTS: usize = 10_000;

/// A bucket per token subject, refilled at the configured rate with a burst
/// of one second's worth.
#[derive(Debug)]
pub struct RateLimit {
    queue: Queue,
    /// Time between two refills.
    interval: Duration,
    /// The bucket's size: one second's worth.
    burst: NonZeroU32,
    /// The fallback while Redis does not answer.
    local: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl RateLimit {
    /// `per_sec` requests per second per subject, kept in `queue`'s Redis.
    pub fn per_second(per_sec: NonZeroU32, queue: Queue) -> Self {
        Self {
            queue,
            interval: Duration::from_secs(1) / per_sec.get(),
            burst: per_sec,
            local: RateLimiter::keyed(Quota::per_second(per_sec)),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from `subject`'s bucket, or answers 429 with how
    /// long to wait.
    pub async fn check(&self, subject: &str) -> Result<(), ApiError> {
        self.take(subject, NonZeroU32::MIN).await
    }

    /// For a batch of `n` jobs, whose request already paid for one through
    /// [`RateLimit::check`]: takes the other `n - 1` from `subject`'s bucket,
    /// so a batch costs what its jobs would cost one by one. 429 with how
    /// long to wait when the bucket is short; 422 when `n` exceeds the burst,
    /// since waiting would never help.
    pub async fn check_batch(&self, subject: &str, n: usize) -> Result<(), ApiError> {
        if n > self.burst.get() as usize {
            return Err(ApiError::InvalidField {
                field: "jobs",
                reason: format!(
                    "{n} jobs exceed the rate limit's burst of {} (RATE_LIMIT_PER_SEC); \
                     send smaller batches",
                    self.burst
                ),
            });
        }
        let Some(rest) = u32::try_from(n - 1).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        self.take(subject, rest).await
    }

    async fn take(&self, subject: &str, n: NonZeroU32) -> Result<(), ApiError> {
        let wait = match self
            .queue
            .take_rate(subject, self.interval, self.burst.get(), n.get())
            .await
        {
            Ok(None) => return Ok(()),
            Ok(Some(wait)) => wait,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "Redis did not answer the rate limit; this process limits on its own"
                );
                match self.take_locally(subject, n) {
                    None => return Ok(()),
                    Some(wait) => wait,
                }
            }
        };
        Err(ApiError::TooManyRequests {
            retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        })
    }

    /// The fallback: `None` when taken, else how long to wait.
    fn take_locally(&self, subject: &str, n: NonZeroU32) -> Option<Duration> {
        if self.local.len() > FORGET_ABOVE_SUBJECTS {
            self.local.retain_recent();
        }
        match self.local.check_key_n(&subject.to_owned(), n) {
            Ok(Ok(())) => None,
            Ok(Err(not_until)) => Some(not_until.wait_time_from(self.clock.now())),
            // Unreachable below the burst; waiting a full refill is the honest answer.
            Err(_) => Some(Duration::from_secs(1)),
        }
    }
}
