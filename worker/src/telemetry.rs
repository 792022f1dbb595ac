//! The worker's metrics: every name, its help text, its buckets, and the
//! one-line recorders the run loop calls. All of them are registered at
//! start-up, so `/metrics` shows every series at zero before anything
//! happens and alerts on them never see "no data".

use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::PrometheusHandle;
use sendonce_shared::domain::Priority;
use sendonce_shared::domain::webhooks::EventType;
use sendonce_shared::queue::Depths;
use sendonce_shared::store::{ByPriority, DeadReason, DedupLayer};

/// Emails the SMTP server accepted.
pub const EMAILS_SENT: &str = "sendonce_emails_sent_total";
/// Tasks skipped because another job holds their key, by `layer`.
pub const DUPLICATES_SKIPPED: &str = "sendonce_duplicates_skipped_total";
/// Transient failures scheduled for another attempt.
pub const RETRIES: &str = "sendonce_retries_total";
/// Jobs that ended `suppressed`.
pub const SUPPRESSED: &str = "sendonce_suppressed_total";
/// Outbox events written with the state changes they report, by type.
pub const EVENTS_WRITTEN: &str = "sendonce_events_written_total";
/// Tasks moved to the dead-letter table, by `reason`.
pub const DEAD_LETTERED: &str = "sendonce_dead_lettered_total";
/// Time of one SMTP conversation, from connect to the final reply.
pub const SMTP_SEND_DURATION: &str = "sendonce_smtp_send_duration_seconds";
/// Tasks waiting or held, by `queue`.
pub const QUEUE_DEPTH: &str = "sendonce_queue_depth";
/// Unfinished jobs by priority and state (`ready`, `scheduled`,
/// `processing`), as the housekeeper last counted them in Postgres
/// (`GET /stats`'s figures for every tenant); 0 on the other workers.
pub const JOBS_UNFINISHED: &str = "sendonce_jobs_unfinished";
/// 1 on the worker that does the fleet's housekeeping, 0 elsewhere.
pub const HOUSEKEEPER: &str = "sendonce_housekeeper";
/// Tasks this process is working on.
pub const INFLIGHT: &str = "sendonce_inflight";
/// Tasks of dead workers handed back to the queue by this one.
pub const TASKS_RECOVERED: &str = "sendonce_tasks_recovered_total";
/// Accepted jobs pushed again from Postgres by the reconciler (Redis may
/// have lost them).
pub const TASKS_RECONCILED: &str = "sendonce_tasks_reconciled_total";
/// Tasks that did not parse, moved to the poison list.
pub const POISON_TASKS: &str = "sendonce_poison_tasks_total";
/// Task copies that found another holder owning their attempt.
pub const COPIES_FENCED: &str = "sendonce_copies_fenced_total";
/// Times an SMTP relay was found unavailable and put in its cooldown, by
/// `relay` (`host:port`) and `cause`.
pub const SMTP_RELAY_UNAVAILABLE: &str = "sendonce_smtp_relay_unavailable_total";
/// Messages each SMTP relay accepted, by `relay` (`host:port`).
pub const SMTP_RELAY_SENT: &str = "sendonce_smtp_relay_sent_total";

/// Why a relay was put in its cooldown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Connection refused, no connection or greeting in time, or a failed
    /// greeting, EHLO, STARTTLS or AUTH.
    Unreachable,
    /// It said it is over its limit (`421`, `451 4.7.x`, `454`).
    Busy,
}

impl Unavailable {
    /// The `cause` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Busy => "busy",
        }
    }
}

/// Upper bounds of the SMTP duration buckets, in seconds: a local relay
/// answers in milliseconds, a remote one in seconds, and the default
/// `SMTP_TIMEOUT_MS` is 30 s.
const SMTP_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the global recorder and registers every metric at zero.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = sendonce_shared::telemetry::install_metrics(&[
        (SMTP_SEND_DURATION, SMTP_BUCKETS),
        (
            crate::webhooks::telemetry::ATTEMPT_DURATION,
            crate::webhooks::telemetry::ATTEMPT_BUCKETS,
        ),
    ])?;
    register();
    crate::webhooks::telemetry::register();
    Ok(handle)
}

fn register() {
    describe_counter!(EMAILS_SENT, "Emails the SMTP server accepted.");
    describe_counter!(
        DUPLICATES_SKIPPED,
        "Tasks skipped because another job holds their idempotency key, by dedup layer."
    );
    describe_counter!(RETRIES, "Transient failures scheduled for another attempt.");
    describe_counter!(
        SUPPRESSED,
        "Jobs not sent because every recipient is on the suppression list."
    );
    describe_counter!(
        EVENTS_WRITTEN,
        "Webhook events written with the job state changes they report, by type."
    );
    counter!(SUPPRESSED).increment(0);
    // `job.canceled` is the API's.
    for kind in EventType::ALL
        .into_iter()
        .filter(|k| *k != EventType::Canceled)
    {
        counter!(EVENTS_WRITTEN, "type" => kind.as_str()).increment(0);
    }
    describe_counter!(
        DEAD_LETTERED,
        "Tasks moved to the dead-letter table, by reason."
    );
    describe_histogram!(
        SMTP_SEND_DURATION,
        Unit::Seconds,
        "Time of one SMTP conversation, from connect to the final reply."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Tasks ready, scheduled for a retry, or held by workers (the whole queue, as the housekeeper last counted it)."
    );
    describe_gauge!(
        JOBS_UNFINISHED,
        "Unfinished jobs by priority and state (ready, scheduled, processing), counted in Postgres by the housekeeper every 5 s; 0 on the other workers."
    );
    jobs_unfinished(&ByPriority::default());
    describe_gauge!(INFLIGHT, "Tasks this process is working on.");
    describe_gauge!(
        HOUSEKEEPER,
        "1 on the worker elected to promote retries, count the queue, check the epoch, reconcile and sweep for the fleet; 0 elsewhere."
    );
    describe_counter!(
        TASKS_RECOVERED,
        "Tasks of dead workers handed back to the queue."
    );
    describe_counter!(
        TASKS_RECONCILED,
        "Accepted jobs pushed again from Postgres by the reconciler."
    );
    describe_counter!(
        POISON_TASKS,
        "Tasks that did not parse, moved to the poison list."
    );

    describe_counter!(
        COPIES_FENCED,
        "Task copies that found another holder owning their attempt (a paused or cut-off worker resumed, or a spare copy); they sent nothing."
    );

    describe_counter!(
        SMTP_RELAY_UNAVAILABLE,
        "Times an SMTP relay was unreachable or said it is over its limit, and was put in its cooldown, by relay and cause."
    );
    describe_counter!(SMTP_RELAY_SENT, "Messages each SMTP relay accepted.");

    for name in [
        EMAILS_SENT,
        RETRIES,
        TASKS_RECOVERED,
        TASKS_RECONCILED,
        POISON_TASKS,
        COPIES_FENCED,
    ] {
        counter!(name).absolute(0);
    }
    for layer in [DedupLayer::L1, DedupLayer::L2] {
        counter!(DUPLICATES_SKIPPED, "layer" => layer.as_str()).absolute(0);
    }
    for reason in [DeadReason::Failed, DeadReason::Uncertain] {
        counter!(DEAD_LETTERED, "reason" => reason.as_str()).absolute(0);
    }
    let _ = histogram!(SMTP_SEND_DURATION);
    queue_depth(&Depths::default());
    gauge!(INFLIGHT).set(0.0);
    housekeeper(false);
}

/// Sets whether this worker is the housekeeper.
pub fn housekeeper(leads: bool) {
    gauge!(HOUSEKEEPER).set(if leads { 1.0 } else { 0.0 });
}

/// Records an accepted email.
pub fn email_sent() {
    counter!(EMAILS_SENT).increment(1);
}

/// Records a job that ended `suppressed`.
pub fn suppressed() {
    counter!(SUPPRESSED).increment(1);
}

/// Records an outbox event of type `kind` written by a state change.
pub fn event_written(kind: EventType) {
    counter!(EVENTS_WRITTEN, "type" => kind.as_str()).increment(1);
}

/// Records a skipped duplicate.
pub fn duplicate_skipped(layer: DedupLayer) {
    counter!(DUPLICATES_SKIPPED, "layer" => layer.as_str()).increment(1);
}

/// Records a scheduled retry.
pub fn retry_scheduled() {
    counter!(RETRIES).increment(1);
}

/// Records a copy that stepped aside for another holder.
pub fn copy_fenced() {
    counter!(COPIES_FENCED).increment(1);
}

/// Records a dead-lettered task.
pub fn dead_lettered(reason: DeadReason) {
    counter!(DEAD_LETTERED, "reason" => reason.as_str()).increment(1);
}

/// Records how long an SMTP conversation took.
pub fn smtp_send(elapsed: Duration) {
    histogram!(SMTP_SEND_DURATION).record(elapsed.as_secs_f64());
}

/// Shows `relay`'s series at zero before anything happens. Leaves a series
/// that exists as it is (tests build several mailers in one process).
pub fn relay_registered(relay: &str) {
    counter!(SMTP_RELAY_SENT, "relay" => relay.to_owned()).increment(0);
    for cause in [Unavailable::Unreachable, Unavailable::Busy] {
        counter!(SMTP_RELAY_UNAVAILABLE, "relay" => relay.to_owned(), "cause" => cause.as_str())
            .increment(0);
    }
}

/// Records a relay put in its cooldown.
pub fn relay_unavailable(relay: &str, cause: Unavailable) {
    counter!(SMTP_RELAY_UNAVAILABLE, "relay" => relay.to_owned(), "cause" => cause.as_str())
        .increment(1);
}

/// Records a message a relay accepted.
pub fn relay_sent(relay: &str) {
    counter!(SMTP_RELAY_SENT, "relay" => relay.to_owned()).increment(1);
}

/// Records tasks handed back from dead workers.
pub fn tasks_recovered(n: usize) {
    counter!(TASKS_RECOVERED).increment(n as u64);
}

/// Records accepted jobs pushed again by the reconciler.
pub fn tasks_reconciled(n: usize) {
    counter!(TASKS_RECONCILED).increment(n as u64);
}

/// Records a task that did not parse.
pub fn poison_task() {
    counter!(POISON_TASKS).increment(1);
}

/// Sets the queue-depth gauges.
pub fn queue_depth(depths: &Depths) {
    gauge!(QUEUE_DEPTH, "queue" => "ready").set(depths.ready as f64);
    gauge!(QUEUE_DEPTH, "queue" => "scheduled").set(depths.scheduled as f64);
    gauge!(QUEUE_DEPTH, "queue" => "processing").set(depths.processing as f64);
}

/// Sets the unfinished-jobs gauges from the counts by priority.
pub fn jobs_unfinished(counts: &ByPriority) {
    for (priority, c) in [
        (Priority::High, counts.high),
        (Priority::Normal, counts.normal),
        (Priority::Low, counts.low),
    ] {
        for (state, n) in [
            ("ready", c.ready),
            ("scheduled", c.scheduled),
            ("processing", c.processing),
        ] {
            gauge!(JOBS_UNFINISHED, "priority" => priority.as_str(), "state" => state)
                .set(n as f64);
        }
    }
}

/// Counts one task in flight until the returned guard is dropped, so every
/// way out of a task (including a panic or an abort at shutdown) lowers the
/// gauge again.
pub fn inflight() -> InflightGuard {
    gauge!(INFLIGHT).increment(1.0);
    InflightGuard(())
}

/// See [`inflight`].
#[derive(Debug)]
#[must_use = "the task counts as in flight only while the guard lives"]
pub struct InflightGuard(());

impl Drop for InflightGuard {
    fn drop(&mut self) {
        gauge!(INFLIGHT).decrement(1.0);
    }
}
