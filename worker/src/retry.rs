//! The retry policy: exponential backoff with full jitter.

use std::time::Duration;

use rand::RngExt;

/// When to retry a transiently failed task, and when to give up.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Delay bound of the first retry.
    pub base: Duration,
    /// Largest delay bound.
    pub max: Duration,
    /// SMTP attempts before the task is dead-lettered.
    pub max_attempts: i32,
}

impl RetryPolicy {
    /// Whether `attempt` (1-based) was the last one allowed.
    pub fn exhausted(&self, attempt: i32) -> bool {
        attempt >= self.max_attempts
    }

    /// The delay before the attempt after `attempt` (1-based):
    /// `random(0, min(max, base * 2^(attempt - 1)))`. Full jitter spreads
    /// the retries of a burst that failed together (AWS architecture blog,
    /// "Exponential Backoff And Jitter").
    pub fn delay(&self, attempt: i32) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(32);
        let bound = self
            .base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.max);
        let bound_ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=bound_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(1000),
            max: Duration::from_millis(300_000),
            max_attempts: 5,
        }
    }

    #[test]
    fn delays_stay_within_the_doubling_bound() {
        let p = policy();
        for attempt in 1..=12 {
            let bound = (1000u64 << (attempt - 1)).min(300_000);
            for _ in 0..200 {
                let d = p.delay(attempt).as_millis();
                assert!(d <= u128::from(bound), "attempt {attempt}: {d} > {bound}");
            }
        }
    }

    #[test]
    fn delays_are_jittered() {
        let p = policy();
        let samples: std::collections::HashSet<_> = (0..50).map(|_| p.delay(4)).collect();
        assert!(samples.len() > 10);
    }

    #[test]
    fn the_last_attempt_is_exhausted() {
        let p = policy();
        assert!(!p.exhausted(4));
        assert!(p.exhausted(5));
    }
}
