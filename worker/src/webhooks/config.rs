//! The dispatcher's settings, flattened into the worker's.

use std::time::Duration;

use clap::Args;
use rand::RngExt as _;

pub use sendonce_shared::config::AppEnv;

/// The default retry schedule: the waits after each failed attempt, about
/// 27.6 hours in all over 8 attempts (README, "Webhooks").
pub const DEFAULT_RETRY_SCHEDULE: &str = "5s,5m,30m,2h,5h,10h,10h";

/// Settings of webhook dispatch.
#[derive(Debug, Clone, Args)]
pub struct WebhookConfig {
    /// Whether this worker delivers webhooks. Dispatch is safe to run in
    /// every worker (claims skip each other's rows); turn it off to run it
    /// only in some.
    #[arg(long = "webhook-dispatch", env = "WEBHOOK_DISPATCH", default_value_t = true, action = clap::ArgAction::Set)]
    pub dispatch: bool,

    /// Time allowed for one request, from connecting to the response's
    /// status (humantime: `10s`, `500ms`).
    #[arg(long = "webhook-timeout", env = "WEBHOOK_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Requests in flight per worker.
    #[arg(long = "webhook-concurrency", env = "WEBHOOK_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// Requests in flight per endpoint per worker, so a slow endpoint
    /// leaves the other slots to the others.
    #[arg(long = "webhook-per-endpoint", env = "WEBHOOK_PER_ENDPOINT", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub per_endpoint: u16,

    /// The waits after each failed attempt (humantime, comma-separated),
    /// each stretched by up to 10 % at random; when they run out the
    /// endpoint is failing.
    #[arg(long = "webhook-retry-schedule", env = "WEBHOOK_RETRY_SCHEDULE", default_value = DEFAULT_RETRY_SCHEDULE, value_parser = parse_schedule)]
    pub retry_schedule: RetrySchedule,

    /// How soon an idle dispatcher looks for due deliveries again after
    /// finding some; the wait doubles while it finds none.
    #[arg(long = "webhook-poll-min", env = "WEBHOOK_POLL_MIN", default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_min: Duration,

    /// The longest wait between two looks of an idle dispatcher (what an
    /// idle fleet costs Postgres: one claim per worker per this).
    #[arg(long = "webhook-poll-max", env = "WEBHOOK_POLL_MAX", default_value = "5s", value_parser = humantime::parse_duration)]
    pub poll_max: Duration,

    /// `development` lets webhooks go to `http://` URLs and private or
    /// loopback addresses; `production` refuses them.
    #[arg(long = "app-env", env = "APP_ENV", value_enum, default_value_t = AppEnv::Production)]
    pub app_env: AppEnv,
}

impl WebhookConfig {
    /// Checks what clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.timeout.is_zero(), "WEBHOOK_TIMEOUT must be positive");
        anyhow::ensure!(
            !self.poll_min.is_zero() && self.poll_max >= self.poll_min,
            "WEBHOOK_POLL_MIN must be positive and at most WEBHOOK_POLL_MAX"
        );
        Ok(())
    }
}

/// The waits after each failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

impl RetrySchedule {
    /// The wait after failed attempt number `attempt` (1 for the first),
    /// jittered up to 10 %; `None` when the schedule has run out.
    pub fn after(&self, attempt: i32) -> Option<Duration> {
        let index = usize::try_from(attempt).ok()?.checked_sub(1)?;
        let wait = *self.0.get(index)?;
        Some(wait.mul_f64(1.0 + rand::rng().random_range(0.0..=0.1)))
    }

    /// Attempts in all: one more than the waits.
    pub fn attempts(&self) -> usize {
        self.0.len() + 1
    }
}

fn parse_schedule(s: &str) -> Result<RetrySchedule, String> {
    let waits = s
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(|w| humantime::parse_duration(w).map_err(|e| format!("`{w}`: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RetrySchedule(waits))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_default_schedule_makes_eight_attempts_over_about_a_day() {
        let schedule = parse_schedule(DEFAULT_RETRY_SCHEDULE).expect("parses");

        let total: Duration = schedule.0.iter().sum();

        assert_eq!(schedule.attempts(), 8);
        assert_eq!(total.as_secs(), 99_305, "about 27.6 hours");
        let first = schedule.after(1).expect("a wait after the first attempt");
        assert!(first >= Duration::from_secs(5) && first <= Duration::from_millis(5_500));
        assert!(schedule.after(7).is_some());
        assert_eq!(schedule.after(8), None, "the eighth failure is the last");
    }

    #[test]
    fn an_empty_schedule_gives_up_after_one_attempt_and_a_bad_wait_is_named() {
        assert_eq!(parse_schedule("").expect("parses").after(1), None);
        let refused = parse_schedule("50ms,soon").expect_err("refused");
        assert!(refused.contains("`soon`"), "{refused}");
    }
}
