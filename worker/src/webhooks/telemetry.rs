//! The dispatcher's metrics, registered with the worker's.

use std::collections::HashSet;
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use uuid::Uuid;

/// Webhook attempts, by `outcome`.
pub const DELIVERIES: &str = "sendonce_webhook_deliveries_total";
/// Time of one attempt, from connecting to the response's status.
pub const ATTEMPT_DURATION: &str = "sendonce_webhook_attempt_duration_seconds";
/// Per endpoint (`endpoint`, its id), the age of its oldest undelivered
/// event.
pub const OLDEST_UNDELIVERED: &str = "sendonce_webhook_oldest_undelivered_seconds";
/// Requests this process has open.
pub const INFLIGHT: &str = "sendonce_webhook_inflight";

/// Buckets of [`ATTEMPT_DURATION`], in seconds, up to the default 10 s
/// `WEBHOOK_TIMEOUT` and past it.
pub const ATTEMPT_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// What an attempt came to, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx was read.
    Delivered,
    /// It failed and is due again by the retry schedule.
    Retrying,
    /// It failed and waits, `held`: the schedule ran out (the endpoint is
    /// failing from now on) or the endpoint was failing already.
    Held,
    /// Its lease had run out and another dispatcher took it over; nothing
    /// was recorded.
    Superseded,
}

impl Outcome {
    const ALL: [Self; 4] = [
        Self::Delivered,
        Self::Retrying,
        Self::Held,
        Self::Superseded,
    ];

    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retrying => "retrying",
            Self::Held => "held",
            Self::Superseded => "superseded",
        }
    }
}

/// Describes every series and shows them at zero.
pub fn register() {
    describe_counter!(
        DELIVERIES,
        "Webhook attempts, by outcome: delivered, retrying (due again by the schedule), held (the endpoint is failing), superseded (the lease had run out)."
    );
    describe_histogram!(
        ATTEMPT_DURATION,
        Unit::Seconds,
        "Time of one webhook attempt, from connecting to the response's status."
    );
    describe_gauge!(
        OLDEST_UNDELIVERED,
        Unit::Seconds,
        "Per endpoint, the age of its oldest event not yet delivered (pending or held)."
    );
    describe_gauge!(INFLIGHT, "Webhook requests this process has open.");
    for outcome in Outcome::ALL {
        counter!(DELIVERIES, "outcome" => outcome.as_str()).absolute(0);
    }
    let _ = histogram!(ATTEMPT_DURATION);
    gauge!(INFLIGHT).set(0.0);
}

/// Records an attempt.
pub fn attempt(outcome: Outcome, took: Duration) {
    counter!(DELIVERIES, "outcome" => outcome.as_str()).increment(1);
    histogram!(ATTEMPT_DURATION).record(took.as_secs_f64());
}

/// Counts one request open until the guard is dropped.
pub fn inflight() -> InflightGuard {
    gauge!(INFLIGHT).increment(1.0);
    InflightGuard(())
}

/// See [`inflight`].
#[derive(Debug)]
#[must_use = "the request counts as open only while the guard lives"]
pub struct InflightGuard(());

impl Drop for InflightGuard {
    fn drop(&mut self) {
        gauge!(INFLIGHT).decrement(1.0);
    }
}

/// Sets the age gauges to `ages`, and to 0 those of endpoints `shown`
/// before that have nothing undelivered any more; answers the endpoints
/// shown now.
pub fn oldest_undelivered(ages: &[(Uuid, Duration)], shown: &HashSet<Uuid>) -> HashSet<Uuid> {
    let now: HashSet<Uuid> = ages.iter().map(|(id, _)| *id).collect();
    for (endpoint, age) in ages {
        gauge!(OLDEST_UNDELIVERED, "endpoint" => endpoint.to_string()).set(age.as_secs_f64());
    }
    for gone in shown.difference(&now) {
        gauge!(OLDEST_UNDELIVERED, "endpoint" => gone.to_string()).set(0.0);
    }
    now
}
