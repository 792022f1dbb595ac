//! Per-subject rate limiting of the write endpoints (`RATE_LIMIT_PER_SEC`).

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::problem::ApiError;

/// Past this many remembered subjects, buckets that are full again are
/// dropped, so the map stays as large as the set of recently busy callers.
const FORGET_ABOVE_SUBJECTS: usize = 10_000;

/// A token bucket per token subject, refilled at the configured rate with a
/// burst of one second's worth.
#[derive(Debug)]
pub struct RateLimit {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    /// The bucket's size: one second's worth.
    burst: NonZeroU32,
}

impl RateLimit {
    /// `per_sec` requests per second per subject.
    pub fn per_second(per_sec: NonZeroU32) -> Self {
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_sec)),
            clock: DefaultClock::default(),
            burst: per_sec,
        }
    }

    /// Takes one request from `subject`'s bucket, or answers 429 with how
    /// long to wait.
    pub fn check(&self, subject: &str) -> Result<(), ApiError> {
        self.take(subject, NonZeroU32::MIN)
    }

    /// For a batch of `n` jobs, whose request already paid for one through
    /// [`RateLimit::check`]: takes the other `n - 1` from `subject`'s bucket,
    /// so a batch costs what its jobs would cost one by one. 429 with how
    /// long to wait when the bucket is short; 422 when `n` exceeds the burst,
    /// since waiting would never help.
    pub fn check_batch(&self, subject: &str, n: usize) -> Result<(), ApiError> {
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
        self.take(subject, rest)
    }

    fn take(&self, subject: &str, n: NonZeroU32) -> Result<(), ApiError> {
        if self.limiter.len() > FORGET_ABOVE_SUBJECTS {
            self.limiter.retain_recent();
        }
        let subject = subject.to_owned();
        let wait = match self.limiter.check_key_n(&subject, n) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(not_until)) => not_until.wait_time_from(self.clock.now()),
            // Unreachable below the burst; waiting a full refill is the honest answer.
            Err(_) => std::time::Duration::from_secs(1),
        };
        Err(ApiError::TooManyRequests {
            retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        })
    }
}
