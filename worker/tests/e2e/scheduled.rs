//! Scheduled send: a job with `send_at` is `scheduled` until then, sent
//! once after it and not before, and its wait survives a worker restart and
//! a Redis restart that lost everything (the row in Postgres carries the
//! due time, and the epoch pass puts the task back in the delayed set).

use chrono::{DateTime, Utc};
use sendonce_testkit::{RedisOptions, RedisServer};
use serde_json::Value;

use crate::helpers::{DEADLINE, Options, TestSystem, email, spawn_system};

/// A job to `to` keyed `key`, due `secs` from now; the answer and the time.
async fn post_scheduled(
    system: &TestSystem,
    to: &str,
    key: &str,
    secs: i64,
) -> (Value, DateTime<Utc>) {
    let send_at = Utc::now() + chrono::Duration::seconds(secs);
    let mut body = email(to, Some(key));
    body["send_at"] = send_at.to_rfc3339().into();
    let answer = system.post_ok(&body).await;
    assert_eq!(answer["status"], "scheduled", "{answer}");
    let id = answer["job_id"].as_str().expect("a job id");
    let (_, job) = system.get_job(id).await;
    assert_eq!(job["status"], "scheduled", "{job}");
    (answer, send_at)
}

/// Waits for job `id` to be sent and checks it was not sent before
/// `send_at` (by the database's clock, on this machine) and was sent once.
async fn assert_sent_once_after(system: &TestSystem, id: &str, to: &str, send_at: DateTime<Utc>) {
    let job = system.wait_for_status(id, "sent").await;
    let sent_at: DateTime<Utc> = job["sent_at"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("sent_at");
    assert!(
        sent_at >= send_at,
        "sent at {sent_at}, before its send_at {send_at}"
    );
    system.smtp.wait_for_messages(1, DEADLINE).await;
    system.wait_for_drained_queue().await;
    let received = system
        .smtp
        .messages()
        .iter()
        .filter(|m| m.rcpt_to.iter().any(|r| r == to))
        .count();
    assert_eq!(received, 1, "sent once");
}

#[tokio::test]
async fn a_scheduled_job_is_not_sent_before_send_at_and_is_sent_once_after() {
    let system = spawn_system(Options::default()).await;
    let _worker = system.spawn_worker().await;
    let (answer, send_at) = post_scheduled(&system, "later@example.com", "scheduled:1", 3).await;
    let id = answer["job_id"].as_str().expect("a job id");

    // A replay must name the same time.
    let mut other_time = email("later@example.com", Some("scheduled:1"));
    other_time["send_at"] = (send_at + chrono::Duration::seconds(60))
        .to_rfc3339()
        .into();
    let response = system.post_job(&other_time).await;
    assert_eq!(response.status(), 422);

    assert_sent_once_after(&system, id, "later@example.com", send_at).await;
}

#[tokio::test]
async fn a_scheduled_job_survives_a_worker_restart_and_a_redis_restart_during_its_wait() {
    let mut redis = RedisServer::start(RedisOptions::default()).await;
    let system = spawn_system(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let first = system.spawn_worker().await;
    let (answer, send_at) = post_scheduled(&system, "wait@example.com", "scheduled:2", 4).await;
    let id = answer["job_id"].as_str().expect("a job id");

    // The worker stops and Redis comes back empty, all before send_at.
    first.stop().await.expect("the first worker stops cleanly");
    redis.restart_empty().await;
    assert!(
        Utc::now() < send_at,
        "the restarts took longer than the wait"
    );
    let _second = system.spawn_worker().await;

    assert_sent_once_after(&system, id, "wait@example.com", send_at).await;
}
