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
}

impl RateLimit {
    /// `per_sec` requests per second per subject.
    pub fn per_second(per_sec: NonZeroU32) -> Self {
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_sec)),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from `subject`'s bucket, or answers 429 with how
    /// long to wait.
    pub fn check(&self, subject: &str) -> Result<(), ApiError> {
        if self.limiter.len() > FORGET_ABOVE_SUBJECTS {
            self.limiter.retain_recent();
        }
        let subject = subject.to_owned();
        self.limiter.check_key(&subject).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            ApiError::TooManyRequests {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        })
    }
}
