use std::time::Duration;

use sendonce_shared::domain::{Body, Email, EmailAddress, IdempotencyKey, Subject, Task};
use sendonce_testkit::{RedisOptions, RedisServer};

use crate::helpers::{DEADLINE, Options, black_hole, email, spawn_system, terminate};

#[tokio::test]
async fn tasks_of_a_sigkilled_worker_are_delivered_once_by_another() {
    let system = spawn_system(Options {
        worker_args: vec!["--smtp-timeout-ms".into(), "60000".into()],
        ..Options::default()
    })
    .await;
    let (hole, _hole_task) = black_hole().await;
    let mut doomed = system.spawn_worker_process(Some(&hole));
    let mut jobs = Vec::new();
    for i in 0..3 {
        let answer = system
            .post_ok(&email(
                &format!("k{i}@example.com"),
                Some(&format!("kill:{i}")),
            ))
            .await;
        jobs.push(answer["job_id"].as_str().expect("job id").to_owned());
    }
    system.wait_for_held(jobs.len()).await;

    doomed.kill().expect("SIGKILL the worker");
    doomed.wait().expect("reap it");
    let killed_at = tokio::time::Instant::now();
    let _rescuer = system.spawn_worker().await;

    for job in &jobs {
        let done = system.wait_for_status(job, "sent").await;
        assert_eq!(done["status"], "sent");
    }
    eprintln!(
        "recovered and sent {} tasks {:?} after the kill (lease 2 s)",
        jobs.len(),
        killed_at.elapsed()
    );
    let mails = system.smtp.wait_for_messages(3, DEADLINE).await;
    let mut rcpts: Vec<_> = mails.iter().flat_map(|m| m.rcpt_to.clone()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        ["k0@example.com", "k1@example.com", "k2@example.com"]
    );
}

#[tokio::test]
async fn sigterm_during_a_slow_send_finishes_it_once_and_exits_zero() {
    let system = spawn_system(Options::default()).await;
    let mut worker = system.spawn_worker_process(None);
    let rcpt = "patient+slow-data-1500@example.com";
    let answer = system.post_ok(&email(rcpt, Some("slow:1"))).await;
    let job_id = answer["job_id"].as_str().expect("job id");

    let deadline = tokio::time::Instant::now() + DEADLINE;
    while system.smtp.attempts_for(rcpt) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the send never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    terminate(&worker);

    let status = tokio::task::spawn_blocking(move || worker.wait())
        .await
        .expect("join")
        .expect("wait for the worker");
    assert!(status.success(), "worker exited with {status}");
    let job = system.wait_for_status(job_id, "sent").await;
    assert_eq!(job["attempts"], 1);
    assert_eq!(system.smtp.messages().len(), 1);
}

#[tokio::test]
async fn a_slow_but_alive_worker_keeps_its_task_past_the_lease() {
    let system = spawn_system(Options {
        worker_args: vec!["--worker-lease-ms".into(), "1000".into()],
        ..Options::default()
    })
    .await;
    let _slow = system.spawn_worker().await;
    let rcpt = "snail+slow-data-3500@example.com";
    let answer = system.post_ok(&email(rcpt, Some("slow:alive"))).await;
    let job_id = answer["job_id"].as_str().expect("job id");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while system.smtp.attempts_for(rcpt) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the send never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A second worker whose reaper runs every half lease while the send
    // takes three and a half leases.
    let _other = system.spawn_worker().await;

    let job = system.wait_for_status(job_id, "sent").await;
    assert_eq!(job["attempts"], 1);
    assert_eq!(
        system.smtp.attempts_for(rcpt),
        1,
        "nobody took the task over"
    );
    assert_eq!(system.smtp.messages().len(), 1);
}

#[tokio::test]
async fn a_task_moved_into_a_live_workers_list_by_a_pop_whose_reply_was_lost_is_still_sent() {
    let mut redis = RedisServer::start(RedisOptions { appendonly: true }).await;
    let system = spawn_system(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let worker = system.spawn_worker().await;
    // One job through first, so the worker is past its start-up and blocked
    // in a pop when Redis dies.
    let warm_up = system.post_ok(&email("first@example.com", None)).await;
    system
        .wait_for_status(warm_up["job_id"].as_str().expect("job id"), "sent")
        .await;
    let task = Task::new(
        Email::new(
            EmailAddress::parse("stranded@example.com").expect("valid"),
            Subject::parse("Stranded").expect("valid"),
            Body::new(Some("moved, then forgotten".into()), None).expect("valid"),
        ),
        Some(IdempotencyKey::parse("stranded:1").expect("valid")),
    );
    // What a BLMOVE leaves behind when Redis dies before its reply reaches
    // the worker: the task in the worker's own list, unknown to the worker,
    // whose heartbeat keeps every reaper away.
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    redis::cmd("LPUSH")
        .arg(system.queue().keys().shard(0).processing(&worker.id))
        .arg(task.to_json())
        .query_async::<()>(&mut conn)
        .await
        .expect("LPUSH");

    redis.restart().await;

    let job = system
        .wait_for_status(&task.job_id.to_string(), "sent")
        .await;
    assert_eq!(job["attempts"], 1);
    assert_eq!(system.smtp.messages().len(), 2);
}

/// Only the housekeeper promotes retries. SIGKILLed, it is replaced within
/// about a lease by a surviving worker, whose promotion delivers a retry
/// scheduled after the kill.
#[tokio::test]
async fn a_sigkilled_housekeeper_is_replaced_and_retries_still_come_back() {
    let system = spawn_system(Options::default()).await;
    let queue = system.queue();
    let mut first = system.spawn_worker_process(None);
    let first_pid = first.id().to_string();
    let holder = sendonce_testkit::eventually("a housekeeper", DEADLINE, || {
        let queue = queue.clone();
        async move { queue.housekeeper().await.ok().flatten() }
    })
    .await;
    assert!(
        holder.starts_with(&format!("{first_pid}-")),
        "the only worker is the housekeeper: {holder}"
    );
    let mut second = system.spawn_worker_process(None);
    let second_pid = second.id().to_string();
    eventually_registered(&system.redis_url, &queue, 2).await;

    first.kill().expect("SIGKILL the housekeeper");
    first.wait().expect("reap it");
    let killed_at = tokio::time::Instant::now();
    // Fails its first RCPT: the retry waits in the delayed set, which only
    // a housekeeper moves back to the queue.
    let answer = system
        .post_ok(&email(
            "again+flaky-1@example.com",
            Some("housekeeper:retry"),
        ))
        .await;
    let job_id = answer["job_id"].as_str().expect("job id");
    let done = system.wait_for_status(job_id, "sent").await;
    assert_eq!(done["attempts"], 2, "{done}");
    let holder = queue
        .housekeeper()
        .await
        .expect("read")
        .expect("a housekeeper");
    assert!(
        holder.starts_with(&format!("{second_pid}-")),
        "the survivor took over: {holder}"
    );
    eprintln!(
        "the survivor took over and the retry was sent {:?} after the kill (lease 2 s)",
        killed_at.elapsed()
    );
    system.smtp.wait_for_messages(1, DEADLINE).await;
    second.kill().expect("stop the survivor");
    second.wait().expect("reap it");
}

async fn eventually_registered(url: &str, queue: &sendonce_shared::queue::Queue, n: usize) {
    let url = url.to_owned();
    let leases = queue.keys().shard(0).leases();
    sendonce_testkit::eventually("both workers registered", DEADLINE, || {
        let url = url.clone();
        let leases = leases.clone();
        async move {
            let client = redis::Client::open(url).ok()?;
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            let count: usize = redis::cmd("ZCARD")
                .arg(&leases)
                .query_async(&mut conn)
                .await
                .ok()?;
            (count == n).then_some(())
        }
    })
    .await;
}
