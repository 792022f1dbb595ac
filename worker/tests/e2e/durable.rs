//! Accepted means durable: every `202` is in Postgres before it is
//! answered, and the reconciler puts back on the queue whatever Redis lost.
//! Each test runs a private `redis-server` it can flush or restart.

use sendonce_testkit::{Fault, RedisOptions, RedisServer};
use serde_json::{Value, json};

use crate::helpers::{DEADLINE, Options, TestSystem, email, spawn_system};

async fn system_on(redis: &RedisServer, worker_args: &[&str]) -> TestSystem {
    spawn_system(Options {
        redis_url: Some(redis.url()),
        worker_args: worker_args.iter().map(|s| (*s).to_owned()).collect(),
        ..Options::default()
    })
    .await
}

async fn post_five(system: &TestSystem) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..5 {
        let answer = system
            .post_ok(&email(
                &format!("r{i}@example.com"),
                Some(&format!("lost:{i}")),
            ))
            .await;
        ids.push(answer["job_id"].as_str().expect("a job id").to_owned());
    }
    ids
}

async fn assert_each_sent_once(system: &TestSystem, ids: &[String]) {
    for id in ids {
        system.wait_for_status(id, "sent").await;
    }
    system.smtp.wait_for_messages(ids.len(), DEADLINE).await;
    system.wait_for_drained_queue().await;
    assert_eq!(system.smtp.messages().len(), ids.len(), "one email per job");
}

#[tokio::test]
async fn jobs_accepted_then_flushed_before_any_worker_ran_are_each_delivered_once() {
    let redis = RedisServer::start(RedisOptions::default()).await;
    let system = system_on(&redis, &[]).await;
    let ids = post_five(&system).await;

    redis.flushall().await;
    for id in &ids {
        let (status, job) = system.get_job(id).await;
        assert_eq!((status.as_u16(), &job["status"]), (200, &json!("queued")));
    }
    let _worker = system.spawn_worker().await;

    assert_each_sent_once(&system, &ids).await;
}

#[tokio::test]
async fn jobs_accepted_then_a_redis_restart_without_persistence_are_each_delivered_once() {
    let mut redis = RedisServer::start(RedisOptions::default()).await;
    let system = system_on(&redis, &[]).await;
    let ids = post_five(&system).await;

    redis.restart().await;
    let _workers = [system.spawn_worker().await, system.spawn_worker().await];

    assert_each_sent_once(&system, &ids).await;
}

#[tokio::test]
async fn a_job_accepted_while_redis_is_down_is_answered_202_and_delivered_once_redis_is_back() {
    let mut redis = RedisServer::start(RedisOptions::default()).await;
    let system = system_on(&redis, &[]).await;
    // Opens the API's shared Redis connection, which the stop then breaks.
    let warm = system.post_ok(&email("warm@example.com", None)).await;

    redis.stop();
    let response = system
        .post_job(&email("outage@example.com", Some("outage:1")))
        .await;
    assert_eq!(response.status(), 202, "accepted: it is in Postgres");
    let accepted: Value = response.json().await.expect("JSON");
    redis.restart().await;
    let _worker = system.spawn_worker().await;

    let ids = [
        warm["job_id"].as_str().expect("job id").to_owned(),
        accepted["job_id"].as_str().expect("job id").to_owned(),
    ];
    assert_each_sent_once(&system, &ids).await;
}

#[tokio::test]
async fn a_retrying_job_and_a_requeued_dead_letter_reach_a_terminal_state_after_redis_is_wiped() {
    let redis = RedisServer::start(RedisOptions::default()).await;
    // Retries wait long enough (up to an hour, jittered) to be still in the
    // delayed set at the wipe.
    let hour = "3600000";
    let system = system_on(&redis, &["--retry-base-ms", hour, "--retry-max-ms", hour]).await;
    let worker = system.spawn_worker().await;
    let retrying = system
        .post_ok(&email(
            "later+tempfail-rcpt@example.com",
            Some("wiped:retrying"),
        ))
        .await;
    let retrying = retrying["job_id"].as_str().expect("job id").to_owned();
    system.wait_for_status(&retrying, "retrying").await;
    system.smtp.set_default_fault(Some(Fault::RejectRcpt));
    let dead = system
        .post_ok(&email("fixed@example.com", Some("wiped:requeued")))
        .await;
    let dead = dead["job_id"].as_str().expect("job id").to_owned();
    system.wait_for_status(&dead, "failed").await;
    worker.stop().await.expect("a clean stop");
    system.smtp.set_default_fault(None);
    let entry = system.wait_for_failed(1).await[0]["id"].clone();
    let (status, _) = system
        .post_api(&format!("/failedJobs/{entry}/retry"), &json!({}))
        .await;
    assert_eq!(status, 200);

    // The retry falls due while Redis loses everything.
    system
        .db
        .connect()
        .await
        .execute(
            "UPDATE deliveries SET next_attempt_at = now() WHERE idempotency_key = $1",
            &[&"wiped:retrying"],
        )
        .await
        .expect("make the retry due");
    redis.flushall().await;
    // The reconciler puts both back; the retrying one fails its last
    // allowed attempt.
    let _worker = system.spawn_worker_with(&["--max-attempts", "2"]).await;

    system.wait_for_status(&dead, "sent").await;
    let job = system.wait_for_terminal(&retrying).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(system.smtp.messages().len(), 1);
}

#[tokio::test]
async fn jobs_whose_copies_redis_dropped_under_its_epoch_are_pushed_again_after_reconcile_after_ms()
{
    let redis = RedisServer::start(RedisOptions::default()).await;
    let hour = "3600000";
    let args = [
        "--reconcile-after-ms",
        "500",
        "--retry-base-ms",
        hour,
        "--retry-max-ms",
        hour,
    ];
    let system = system_on(&redis, &args).await;
    let worker = system.spawn_worker().await;
    let retrying = system
        .post_ok(&email(
            "later+flaky-1@example.com",
            Some("evicted:retrying"),
        ))
        .await;
    let retrying = retrying["job_id"].as_str().expect("job id").to_owned();
    system.wait_for_status(&retrying, "retrying").await;
    worker.stop().await.expect("a clean stop");
    // The epoch stays: as after an eviction, or a failover that dropped the
    // last writes, not a total loss.
    let queued = system
        .post_ok(&email("evicted@example.com", Some("evicted:queued")))
        .await;
    let queued = queued["job_id"].as_str().expect("job id").to_owned();
    let queue = system.queue();
    let mut conn = redis::Client::open(redis.url().as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: () = redis::cmd("DEL")
        .arg(queue.keys().shard(0).queue())
        .arg(queue.keys().shard(0).scheduled())
        .query_async(&mut conn)
        .await
        .expect("DEL");
    let epoch: bool = redis::cmd("EXISTS")
        .arg(queue.keys().shard(0).epoch())
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert!(epoch, "the epoch survived");
    system
        .db
        .connect()
        .await
        .execute(
            "UPDATE deliveries SET next_attempt_at = now() WHERE idempotency_key = $1",
            &[&"evicted:retrying"],
        )
        .await
        .expect("make the retry due");

    let _worker = system.spawn_worker().await;

    let ids = [retrying, queued];
    assert_each_sent_once(&system, &ids).await;
}

#[tokio::test]
async fn redis_losing_everything_in_the_middle_of_a_run_loses_no_job_and_sends_none_twice() {
    let redis = RedisServer::start(RedisOptions::default()).await;
    let system = system_on(&redis, &[]).await;
    let _workers = [system.spawn_worker().await, system.spawn_worker().await];
    let post = |i: usize| {
        let system = &system;
        async move {
            let answer = system
                .post_ok(&email(
                    &format!("mid{i}@example.com"),
                    Some(&format!("mid:{i}")),
                ))
                .await;
            answer["job_id"].as_str().expect("a job id").to_owned()
        }
    };

    let mut ids = futures::future::join_all((0..40).map(post)).await;
    redis.flushall().await;
    ids.extend(futures::future::join_all((40..80).map(post)).await);

    assert_each_sent_once(&system, &ids).await;
    let mut recipients: Vec<String> = system
        .smtp
        .messages()
        .iter()
        .flat_map(|m| m.rcpt_to.clone())
        .collect();
    recipients.sort();
    recipients.dedup();
    assert_eq!(recipients.len(), ids.len(), "no recipient got two emails");
}
