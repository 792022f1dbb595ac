use std::collections::BTreeSet;

use sendonce_testkit::Fault;
use serde_json::{Value, json};

use crate::helpers::{DEADLINE, Options, email, spawn_system};

fn max_attempts(n: u32) -> Options {
    Options {
        worker_args: vec!["--max-attempts".into(), n.to_string()],
        ..Options::default()
    }
}

fn ids(items: &[Value]) -> Vec<i64> {
    items.iter().filter_map(|i| i["id"].as_i64()).collect()
}

#[tokio::test]
async fn two_transient_failures_then_success_sends_once_after_three_attempts() {
    let system = spawn_system(Options::default()).await;
    let _worker = system.spawn_worker().await;
    let rcpt = "flaky+flaky-2@example.com";

    let answer = system.post_ok(&email(rcpt, Some("flaky:1"))).await;
    let job = system
        .wait_for_status(answer["job_id"].as_str().expect("job id"), "sent")
        .await;

    assert_eq!(job["attempts"], 3);
    assert_eq!(system.smtp.attempts_for(rcpt), 3);
    assert_eq!(system.smtp.messages().len(), 1);
    assert!(
        system.failed_jobs("").await["items"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
}

#[tokio::test]
async fn a_permanent_failure_is_dead_lettered_at_once_without_a_retry() {
    let system = spawn_system(max_attempts(5)).await;
    let _worker = system.spawn_worker().await;
    let rcpt = "nobody+reject-rcpt@example.com";

    let answer = system.post_ok(&email(rcpt, Some("perm:1"))).await;
    let job_id = answer["job_id"].as_str().expect("job id");
    let job = system.wait_for_status(job_id, "failed").await;

    let dlq = system.wait_for_failed(1).await;
    assert_eq!(dlq[0]["job_id"], job_id);
    assert_eq!(dlq[0]["reason"], "failed");
    assert_eq!(dlq[0]["attempts"], 1);
    assert_eq!(dlq[0]["to"], rcpt);
    assert!(dlq[0]["error"].as_str().unwrap_or_default().contains("550"));
    assert_eq!(job["attempts"], 1);
    assert_eq!(system.smtp.attempts_for(rcpt), 1, "no retry was sent");
}

#[tokio::test]
async fn exhausting_max_attempts_dead_letters_with_that_many_attempts() {
    let system = spawn_system(max_attempts(3)).await;
    let _worker = system.spawn_worker().await;
    let rcpt = "busy+tempfail-rcpt@example.com";

    let answer = system.post_ok(&email(rcpt, Some("busy:1"))).await;
    system
        .wait_for_status(answer["job_id"].as_str().expect("job id"), "failed")
        .await;

    let dlq = system.wait_for_failed(1).await;
    assert_eq!(dlq[0]["attempts"], 3);
    assert_eq!(dlq[0]["reason"], "failed");
    assert_eq!(system.smtp.attempts_for(rcpt), 3);
    assert!(system.smtp.messages().is_empty());
}

#[tokio::test]
async fn paging_by_two_while_failures_arrive_yields_every_entry_once() {
    let system = spawn_system(Options::default()).await;
    let _worker = system.spawn_worker().await;
    for i in 0..5 {
        system
            .post_ok(&email(&format!("u{i}+reject-rcpt@example.com"), None))
            .await;
    }
    let before: BTreeSet<i64> = ids(&system.wait_for_failed(5).await).into_iter().collect();

    let mut seen = Vec::new();
    let mut query = "limit=2".to_owned();
    let mut arrivals = 0;
    loop {
        let page = system.failed_jobs(&query).await;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        assert!(items.len() <= 2);
        seen.extend(ids(&items));
        if arrivals < 2 {
            arrivals += 1;
            system
                .post_ok(&email(
                    &format!("late{arrivals}+reject-rcpt@example.com"),
                    None,
                ))
                .await;
            system.wait_for_failed(5 + arrivals).await;
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=2&cursor={cursor}"),
            None => break,
        }
    }

    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "an entry was repeated: {seen:?}");
    assert_eq!(sorted.into_iter().collect::<BTreeSet<_>>(), before);
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seen:?}"
    );
}

#[tokio::test]
async fn a_dead_letter_entry_retried_alone_is_delivered_once_and_leaves_the_dlq() {
    let system = spawn_system(Options::default()).await;
    let _worker = system.spawn_worker().await;
    system.smtp.set_default_fault(Some(Fault::RejectRcpt));
    let answer = system
        .post_ok(&email("fixme@example.com", Some("retry:one")))
        .await;
    let job_id = answer["job_id"].as_str().expect("job id");
    let entry = system.wait_for_failed(1).await.remove(0);

    system.smtp.set_default_fault(None);
    let (status, body) = system
        .post_api(&format!("/failedJobs/{}/retry", entry["id"]), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");

    let job = system.wait_for_status(job_id, "sent").await;
    assert_eq!(job["job_id"], job_id, "the job keeps its id");
    assert_eq!(job["idempotency_key"], "retry:one");
    assert_eq!(system.smtp.messages().len(), 1);
    assert!(
        system.failed_jobs("").await["items"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    let (again, _) = system
        .post_api(&format!("/failedJobs/{}/retry", entry["id"]), &json!({}))
        .await;
    assert_eq!(again, 404, "the entry is gone");
}

#[tokio::test]
async fn dead_letter_entries_retried_in_bulk_are_each_delivered_once() {
    let system = spawn_system(Options::default()).await;
    let _worker = system.spawn_worker().await;
    system.smtp.set_default_fault(Some(Fault::RejectRcpt));
    let a = system
        .post_ok(&email("a@example.com", Some("bulk:a")))
        .await;
    let b = system
        .post_ok(&email("b@example.com", Some("bulk:b")))
        .await;
    system.wait_for_failed(2).await;

    system.smtp.set_default_fault(None);
    let (status, body) = system
        .post_api(
            "/failedJobs/retry",
            &json!({"all": true, "reason": "failed"}),
        )
        .await;
    assert_eq!((status.as_u16(), body["requeued"].as_u64()), (200, Some(2)));

    for job in [&a, &b] {
        system
            .wait_for_status(job["job_id"].as_str().expect("job id"), "sent")
            .await;
    }
    let mails = system.smtp.wait_for_messages(2, DEADLINE).await;
    assert_eq!(mails.len(), 2);
    assert!(
        system.failed_jobs("").await["items"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
}

#[tokio::test]
async fn a_replayed_post_answers_200_with_the_original_job_and_a_changed_body_422() {
    let system = spawn_system(Options::default()).await;
    let body = email("replay@example.com", Some("replay:1"));
    let first = system.post_job(&body).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.expect("json");

    let again = system.post_job(&body).await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["job_id"], first["job_id"]);
    assert_eq!(again["status"], "queued");

    let mut changed = body.clone();
    changed["subject"] = json!("Something else");
    let conflict = system.post_job(&changed).await;
    assert_eq!(conflict.status(), 422);
    let problem: Value = conflict.json().await.expect("json");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("replay:1")
    );

    let depth = system.queue().depths().await.expect("depths");
    assert_eq!(depth.ready, 1, "only the first post was enqueued");
}

#[tokio::test]
async fn the_l2_owner_reaches_its_end_even_when_another_job_took_its_l1_key() {
    let system = spawn_system(Options::default()).await;
    let _worker = system.spawn_worker().await;
    system.smtp.set_default_fault(Some(Fault::RejectRcpt));
    let answer = system
        .post_ok(&email("owner@example.com", Some("l1:stolen")))
        .await;
    let job_id = answer["job_id"].as_str().expect("job id");
    let entry = system.wait_for_failed(1).await.remove(0);

    // As if Redis evicted the L1 key and another job with the key set it.
    let client = redis::Client::open(system.redis_url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let key = sendonce_shared::domain::IdempotencyKey::parse("l1:stolen").expect("key");
    redis::cmd("SET")
        .arg(
            system
                .queue()
                .keys()
                .dedup(&sendonce_shared::domain::Tenant::default_tenant(), &key),
        )
        .arg(uuid::Uuid::now_v7().to_string())
        .query_async::<()>(&mut conn)
        .await
        .expect("SET");

    system.smtp.set_default_fault(None);
    let (status, _) = system
        .post_api(&format!("/failedJobs/{}/retry", entry["id"]), &json!({}))
        .await;
    assert_eq!(status, 200);
    system.wait_for_status(job_id, "sent").await;
    assert_eq!(system.smtp.messages().len(), 1);
}
