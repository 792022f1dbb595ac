use sendonce_shared::domain::{Body, Email, EmailAddress, IdempotencyKey, Subject, Task};
use sendonce_testkit::{RedisOptions, RedisServer};
use serde_json::json;

use crate::helpers::{DEADLINE, Options, email, spawn_system};

#[tokio::test]
async fn a_posted_email_arrives_once_with_a_message_id_derived_from_its_key() {
    let system = spawn_system(Options::default()).await;
    let _worker = system.spawn_worker().await;

    let body = json!({
        "to": "Ada Lovelace <ada@example.com>",
        "subject": "Welcome, Ada",
        "text": "Glad you are here.",
        "reply_to": "help@example.com",
        "idempotency_key": "welcome:user-42",
    });
    let answer = system.post_ok(&body).await;
    let job_id = answer["job_id"].as_str().expect("a job id");
    assert_eq!(answer["status"], "queued");
    assert_eq!(answer["idempotency_key"], "welcome:user-42");

    let job = system.wait_for_status(job_id, "sent").await;
    let mails = system.smtp.messages();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.rcpt_to, vec!["ada@example.com".to_owned()]);
    assert_eq!(mail.mail_from, "noreply@sendonce.test");
    assert_eq!(
        mail.header("From").as_deref(),
        Some("\"Sendonce Tests\" <noreply@sendonce.test>")
    );
    assert_eq!(
        mail.header("To").as_deref(),
        Some("\"Ada Lovelace\" <ada@example.com>")
    );
    assert_eq!(mail.header("Reply-To").as_deref(), Some("help@example.com"));
    assert_eq!(mail.header("Subject").as_deref(), Some("Welcome, Ada"));
    assert!(mail.body_text().contains("Glad you are here."));
    let key = IdempotencyKey::parse("welcome:user-42").expect("valid key");
    assert_eq!(
        mail.header("Message-ID"),
        Some(key.message_id("sendonce.test"))
    );
    assert_eq!(job["attempts"], 1);
    assert!(job["sent_at"].is_string());
}

#[tokio::test]
async fn the_same_key_posted_ten_times_concurrently_arrives_once() {
    let system = spawn_system(Options::default()).await;
    let _workers = [system.spawn_worker().await, system.spawn_worker().await];

    let body = email("bob@example.com", Some("receipt:order-7"));
    let answers = futures::future::join_all((0..10).map(|_| system.post_ok(&body))).await;
    let job_ids: std::collections::HashSet<_> =
        answers.iter().map(|a| a["job_id"].clone()).collect();
    assert_eq!(job_ids.len(), 1, "every post names the one accepted job");

    let job_id = answers[0]["job_id"].as_str().expect("a job id");
    system.wait_for_status(job_id, "sent").await;
    system.smtp.wait_for_messages(1, DEADLINE).await;
    assert_eq!(system.smtp.messages().len(), 1);
}

#[tokio::test]
async fn after_redis_loses_everything_the_same_key_is_still_not_sent_again() {
    let redis = RedisServer::start(RedisOptions::default()).await;
    let system = spawn_system(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let _worker = system.spawn_worker().await;
    let body = email("carol@example.com", Some("welcome:carol"));
    let first = system.post_ok(&body).await;
    system
        .wait_for_status(first["job_id"].as_str().expect("job id"), "sent")
        .await;

    redis.flushall().await;
    let replay = system.post_ok(&body).await;
    // A second job for the key that reaches a worker all the same (pushed
    // by hand, or by an API from before durable acceptance): no L1 key is
    // left, so L2 alone stops it.
    let other = Task::new(
        Email::new(
            EmailAddress::parse("carol@example.com").expect("valid"),
            Subject::parse("Welcome aboard").expect("valid"),
            Body::new(Some("Hello again.".into()), None).expect("valid"),
        ),
        Some(IdempotencyKey::parse("welcome:carol").expect("valid")),
    );
    system.push_task(&other).await;
    let job = system
        .wait_for_status(&other.job_id.to_string(), "duplicate")
        .await;

    assert_eq!(
        replay["job_id"], first["job_id"],
        "the replay is answered from Postgres"
    );
    assert_eq!(job["idempotency_key"], "welcome:carol");
    assert_eq!(system.smtp.messages().len(), 1);
}

#[tokio::test]
async fn two_jobs_with_one_key_popped_at_once_by_two_workers_give_one_email() {
    let system = spawn_system(Options::default()).await;
    let make = || {
        Task::new(
            Email::new(
                EmailAddress::parse("dave@example.com").expect("valid"),
                Subject::parse("Race").expect("valid"),
                Body::new(Some("one of us wins".into()), None).expect("valid"),
            ),
            Some(IdempotencyKey::parse("race:dave").expect("valid")),
        )
    };
    let (a, b) = (make(), make());
    system.push_task(&a).await;
    system.push_task(&b).await;

    let _workers = tokio::join!(system.spawn_worker(), system.spawn_worker());

    let statuses = [
        system.wait_for_terminal(&a.job_id.to_string()).await,
        system.wait_for_terminal(&b.job_id.to_string()).await,
    ];
    let mut statuses = statuses.map(|s| s["status"].as_str().unwrap_or_default().to_owned());
    statuses.sort();
    assert_eq!(statuses, ["duplicate", "sent"]);
    assert_eq!(system.smtp.messages().len(), 1);
}

#[tokio::test]
async fn a_stopped_worker_exits_cleanly_and_deregisters() {
    let system = spawn_system(Options::default()).await;
    let worker = system.spawn_worker().await;
    let id = worker.id.clone();
    let answer = system.post_ok(&email("erin@example.com", None)).await;
    system
        .wait_for_status(answer["job_id"].as_str().expect("job id"), "sent")
        .await;

    worker.stop().await.expect("a clean exit");

    let client = redis::Client::open(system.redis_url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let lease: Option<f64> = redis::cmd("ZSCORE")
        .arg(system.queue().keys().shard(0).leases())
        .arg(&id)
        .query_async(&mut conn)
        .await
        .expect("ZSCORE");
    assert_eq!(lease, None, "worker {id} is still registered");
}
