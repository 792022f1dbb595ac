//! The monitoring files name only metrics the binaries export: every
//! `sendonce_*` name in the Grafana dashboard's queries
//! (`deploy/grafana/sendonce.json`) and the alert rules' expressions
//! (`deploy/prometheus/alerts.yml`) is on a live `/metrics`, so a renamed
//! metric cannot silently blank a panel or silence an alert.
//!
//! This is the worker's side: every name that is not one of the API's
//! metrics ([`sendonce_api::telemetry::METRICS`]) must be on the worker
//! binary's `/metrics`. The API's are checked against the API binary in
//! `api/tests/api/operations.rs` (a package's tests can only start its own
//! binaries, and the metrics recorder is process-wide).

use std::collections::{BTreeMap, BTreeSet};

use sendonce_testkit::{Fault, WebhookReceiver, eventually, monitoring, sample};
use serde_json::json;

use crate::helpers::{DEADLINE, Options, email, spawn_system, start_worker_process};
use crate::webhooks::{create_endpoint, system_with};

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alert_rules_use_is_exported_by_the_worker() {
    let used: BTreeMap<String, BTreeSet<String>> = monitoring::metric_names_used()
        .into_iter()
        .filter(|(name, _)| {
            !sendonce_api::telemetry::METRICS
                .iter()
                .any(|metric| monitoring::is_series_of(name, metric))
        })
        .collect();
    assert!(
        !used.is_empty(),
        "the monitoring files use no worker metric"
    );

    // Every series exists from start-up, at zero, but one: an endpoint's
    // oldest-undelivered age, shown once it has an event waiting when the
    // worker reads the ages (at start, then every 15 s). So an event waits
    // before the worker starts: a scheduled job canceled through the API
    // (which writes `job.canceled`), for a receiver answering 503.
    let system = system_with(&[]).await;
    let receiver = WebhookReceiver::start().await;
    receiver.respond_with(503);
    create_endpoint(&system, &receiver.url(), Some(&["job.canceled"]), false).await;
    let mut later = email("later@example.com", Some("monitoring:canceled"));
    later["send_at"] = json!((chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
    let scheduled = system.post_ok(&later).await;
    let job = scheduled["job_id"].as_str().expect("a job id");
    let (status, _) = system
        .post_api(&format!("/jobs/{job}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);

    let worker = start_worker_process(&system, &[]).await;
    // A little traffic, so the labelled counters have moved too: a send, a
    // permanent refusal and a cut connection (uncertain).
    for (to, want) in [
        ("ada@example.com".to_owned(), "sent"),
        (format!("bob+{}@example.com", Fault::RejectRcpt), "failed"),
        (
            format!("carol+{}@example.com", Fault::DropAfterData),
            "uncertain",
        ),
    ] {
        let answer = system.post_ok(&email(&to, None)).await;
        let job = answer["job_id"].as_str().expect("a job id");
        system.wait_for_status(job, want).await;
    }
    let text = eventually(
        "the outcomes and the webhook backlog on /metrics",
        DEADLINE,
        || async {
            let text = worker.metrics().await;
            let moved = |series: &str| sample(&text, series).is_some_and(|n| n >= 1.0);
            (moved("sendonce_emails_sent_total")
                && moved(r#"sendonce_dead_lettered_total{reason="failed"}"#)
                && moved(r#"sendonce_dead_lettered_total{reason="uncertain"}"#)
                && text.contains("sendonce_webhook_oldest_undelivered_seconds{endpoint="))
            .then_some(text)
        },
    )
    .await;

    let exported = monitoring::exported_names(&text);
    let missing = monitoring::unexported(&used, &exported);
    assert!(
        missing.is_empty(),
        "the monitoring files use metrics neither the worker nor the API exports:\n{missing}\nthe worker exports:\n{exported:#?}"
    );
    worker.stop().await;
}

/// The dashboard's queue depth by priority: the housekeeper counts the
/// unfinished jobs of each priority in Postgres (what `GET /stats` shows
/// for every tenant) and exports them.
#[tokio::test]
async fn the_housekeeper_exports_the_unfinished_jobs_by_priority() {
    let system = spawn_system(Options::default()).await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    for i in 0..2 {
        let mut job = email(&format!("later-{i}@example.com"), None);
        job["send_at"] = json!(later);
        job["priority"] = json!("high");
        system.post_ok(&job).await;
    }
    let mut low = email("later-low@example.com", None);
    low["send_at"] = json!(later);
    low["priority"] = json!("low");
    system.post_ok(&low).await;

    let worker = start_worker_process(&system, &[]).await;
    eventually(
        "the scheduled jobs by priority on /metrics",
        DEADLINE,
        || async {
            let text = worker.metrics().await;
            let at = |priority: &str| {
                sample(
                    &text,
                    &format!(
                        r#"sendonce_jobs_unfinished{{priority="{priority}",state="scheduled"}}"#
                    ),
                )
            };
            (at("high") == Some(2.0) && at("low") == Some(1.0) && at("normal") == Some(0.0))
                .then_some(())
        },
    )
    .await;
}
