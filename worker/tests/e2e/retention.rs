//! Retention: past RETENTION_DAYS a finished job loses its personal data,
//! and its key still never sends twice.

use secrecy::SecretString;
use sendonce_shared::store::{self, Store};
use sendonce_testkit::{RedisOptions, RedisServer};

use crate::helpers::{Options, email, spawn_system};

#[tokio::test]
async fn a_pruned_key_posted_again_is_answered_from_postgres_and_its_body_is_gone() {
    let mut redis = RedisServer::start(RedisOptions::default()).await;
    let system = spawn_system(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let _worker = system.spawn_worker().await;
    let old = email("ada@example.com", Some("retention:old"));
    let sent = system.post_ok(&old).await["job_id"].clone();
    let dead = system
        .post_ok(&email(
            "nobody+reject-rcpt@example.com",
            Some("retention:dlq"),
        ))
        .await["job_id"]
        .clone();
    system
        .wait_for_status(sent.as_str().expect("job id"), "sent")
        .await;
    system
        .wait_for_status(dead.as_str().expect("job id"), "failed")
        .await;
    let store = Store::new(
        store::connect(&SecretString::from(system.db.url().to_owned()), 2).expect("a pool"),
    );
    let db = store.pool().get().await.expect("a connection");
    // Until the claim writes `deliveries.task` (the fencing work), the test
    // stores a copy there itself, as the claim will.
    let copy_tasks = "UPDATE deliveries SET task = '{\"copy\": true}' WHERE task IS NULL";
    db.batch_execute(&format!(
        "{copy_tasks};
         UPDATE deliveries SET updated_at = now() - interval '40 days';
         UPDATE failed_jobs SET failed_at = now() - interval '40 days';"
    ))
    .await
    .expect("age the records");
    let recent = system
        .post_ok(&email("bob@example.com", Some("retention:recent")))
        .await["job_id"]
        .clone();
    system
        .wait_for_status(recent.as_str().expect("job id"), "sent")
        .await;
    db.batch_execute(copy_tasks).await.expect("copy the task");

    let mut batches = 0;
    while !store.prune_batch(30, 1).await.expect("prune").is_empty() {
        batches += 1;
        assert!(batches < 10, "pruning does not finish");
    }

    assert!(batches >= 2, "one row per batch, two old rows");
    let rows = db
        .query(
            "SELECT idempotency_key, job_id::text, state, task IS NULL, smtp_reply IS NULL
             FROM deliveries ORDER BY idempotency_key",
            &[],
        )
        .await
        .expect("read deliveries");
    let rows: Vec<(String, String, String, bool, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(rows.len(), 3);
    let by_key = |key: &str| rows.iter().find(|r| r.0 == key).expect("the row").clone();
    let (_, job, state, no_task, no_reply) = by_key("retention:old");
    assert_eq!(
        (job.as_str(), state.as_str()),
        (sent.as_str().expect("id"), "sent")
    );
    assert!(no_task && no_reply, "the old job's data is gone");
    assert_eq!(by_key("retention:dlq").2, "failed");
    let (_, _, _, no_task, no_reply) = by_key("retention:recent");
    assert!(!no_task && !no_reply, "a recent job keeps its data");
    assert!(
        system.failed_jobs("").await["items"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "the old dead-letter entry is gone"
    );

    redis.flushall().await;
    let response = system.post_job(&old).await;
    assert_eq!(response.status(), reqwest::StatusCode::OK, "a replay");
    let again: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(
        again["job_id"], sent,
        "Postgres still remembers the pruned key: the replay names the sent job"
    );
    let mut other = old.clone();
    other["subject"] = "another body".into();
    assert_eq!(
        system.post_job(&other).await.status(),
        reqwest::StatusCode::UNPROCESSABLE_ENTITY,
        "the same key with another body is refused though the body is pruned"
    );
    let depths = system.queue().depths().await.expect("queue depths");
    assert_eq!(
        depths.ready + depths.scheduled + depths.processing,
        0,
        "neither post queued anything to send"
    );
    let (_, job) = system.get_job(sent.as_str().expect("job id")).await;
    assert_eq!(job["status"], "sent");
    assert_eq!(
        system.smtp.messages().len(),
        2,
        "ada and bob once each, nothing more"
    );
    redis.stop();
}
