//! Operating the worker: readiness, metrics and JSON logs, observed on the
//! real binary (it installs the process-wide metrics recorder and log
//! subscriber) with its output captured.

use sendonce_shared::domain::IdempotencyKey;
use sendonce_testkit::{Fault, RedisOptions, RedisServer, eventually, sample};
use serde_json::Value;

use crate::helpers::{DEADLINE, Options, email, keyed_task, spawn_system, start_worker_process};

/// Every series the worker must show from start-up.
const WORKER_SERIES: &[&str] = &[
    "sendonce_emails_sent_total",
    r#"sendonce_duplicates_skipped_total{layer="l1"}"#,
    r#"sendonce_duplicates_skipped_total{layer="l2"}"#,
    "sendonce_retries_total",
    r#"sendonce_dead_lettered_total{reason="failed"}"#,
    r#"sendonce_dead_lettered_total{reason="uncertain"}"#,
    "sendonce_smtp_send_duration_seconds_count",
    r#"sendonce_queue_depth{queue="ready"}"#,
    r#"sendonce_queue_depth{queue="scheduled"}"#,
    r#"sendonce_queue_depth{queue="processing"}"#,
    "sendonce_inflight",
];

#[tokio::test]
async fn the_worker_counts_sends_duplicates_retries_and_dead_letters() {
    let system = spawn_system(Options {
        worker_args: vec!["--max-attempts".into(), "3".into()],
        ..Options::default()
    })
    .await;
    // Read before any work exists: the worker could otherwise send one
    // before the first scrape.
    let worker = start_worker_process(&system, &[]).await;
    let at_start = worker.metrics().await;
    let (first, twin) = (
        keyed_task("ada@example.com", "metrics:ada", "Metrics"),
        keyed_task("ada@example.com", "metrics:ada", "Metrics"),
    );
    system.push_task(&first).await;
    system.push_task(&twin).await;
    let flaky = system
        .post_ok(&email(
            &format!("bob+{}@example.com", Fault::Flaky(1)),
            None,
        ))
        .await;
    let rejected = system
        .post_ok(&email(
            &format!("carol+{}@example.com", Fault::RejectRcpt),
            None,
        ))
        .await;

    for job in [&first.job_id.to_string(), &twin.job_id.to_string()] {
        system.wait_for_terminal(job).await;
    }
    system
        .wait_for_status(flaky["job_id"].as_str().expect("job id"), "sent")
        .await;
    system
        .wait_for_status(rejected["job_id"].as_str().expect("job id"), "failed")
        .await;
    // Counters move just after the outcome is recorded and acknowledged.
    let after = eventually("every counter moved", DEADLINE, || async {
        let text = worker.metrics().await;
        let at_least = |series: &str, n: f64| sample(&text, series).is_some_and(|v| v >= n);
        let duplicates = sample(&text, r#"sendonce_duplicates_skipped_total{layer="l1"}"#)
            .unwrap_or(0.0)
            + sample(&text, r#"sendonce_duplicates_skipped_total{layer="l2"}"#).unwrap_or(0.0);
        (at_least("sendonce_emails_sent_total", 2.0)
            && duplicates >= 1.0
            && at_least("sendonce_retries_total", 1.0)
            && at_least(r#"sendonce_dead_lettered_total{reason="failed"}"#, 1.0))
        .then_some(text)
    })
    .await;

    for series in WORKER_SERIES {
        assert!(
            sample(&at_start, series).is_some(),
            "{series} is missing at start-up:\n{at_start}"
        );
    }
    assert_eq!(sample(&at_start, "sendonce_emails_sent_total"), Some(0.0));
    assert!(
        sample(&after, "sendonce_smtp_send_duration_seconds_count") >= Some(4.0),
        "two sends, one transient failure and one rejection are timed:\n{after}"
    );
    assert_eq!(
        sample(
            &after,
            r#"sendonce_dead_lettered_total{reason="uncertain"}"#
        ),
        Some(0.0)
    );
    worker.stop().await;
}

#[tokio::test]
async fn with_json_logs_every_worker_line_is_json_and_a_jobs_lines_carry_its_id() {
    let system = spawn_system(Options::default()).await;
    let worker = start_worker_process(&system, &[]).await;
    let answer = system
        .post_ok(&email("dora@example.com", Some("logs:dora")))
        .await;
    let job_id = answer["job_id"].as_str().expect("job id").to_owned();
    system.wait_for_status(&job_id, "sent").await;
    // The "sent" line is written after the status is recorded.
    eventually("the worker logs the send", DEADLINE, || async {
        worker
            .child
            .stdout()
            .iter()
            .any(|line| line.contains(r#""message":"sent""#))
            .then_some(())
    })
    .await;

    let lines = worker.stop().await;

    let parsed: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let job_span = |line: &Value| -> Option<Value> {
        line["spans"]
            .as_array()?
            .iter()
            .find(|span| span["job_id"] == job_id.as_str())
            .cloned()
    };
    let about_the_job: Vec<&Value> = parsed.iter().filter(|l| job_span(l).is_some()).collect();
    assert!(
        about_the_job.iter().any(|l| l["message"] == "sent"),
        "the job's \"sent\" line does not carry its id"
    );
    assert!(
        about_the_job.len() >= 2,
        "the job's debug lines carry its id too"
    );
    let key = IdempotencyKey::parse("logs:dora").expect("a key");
    let hashed = sendonce_shared::telemetry::key(&key).to_string();
    for line in &about_the_job {
        assert_eq!(
            job_span(line).expect("the job span")["idempotency_key"],
            hashed.as_str(),
            "{line}"
        );
    }
    assert!(
        !lines.iter().any(|line| line.contains("logs:dora")),
        "the key was logged as is"
    );
    for (raw, line) in lines.iter().zip(&parsed) {
        if raw.contains(&job_id) {
            assert!(
                job_span(line).is_some(),
                "a line names the job outside its span: {raw}"
            );
        }
    }
}

#[tokio::test]
async fn the_workers_readyz_answers_503_while_redis_is_down_and_200_once_it_returns() {
    let mut redis = RedisServer::start(RedisOptions::default()).await;
    let system = spawn_system(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let worker = start_worker_process(&system, &[]).await;
    assert_eq!(worker.get("/readyz").await.status(), 200);

    redis.stop();
    let down = eventually(
        "/readyz answers 503 with Redis stopped",
        DEADLINE,
        || async {
            let response = worker.get("/readyz").await;
            (response.status() == 503).then_some(response)
        },
    )
    .await;
    assert_eq!(down.headers()["content-type"], "application/problem+json");
    let problem: Value = down.json().await.expect("a problem");
    assert_eq!(problem["down"], serde_json::json!(["redis"]));
    assert_eq!(worker.get("/healthz").await.status(), 200);

    redis.restart().await;
    eventually(
        "/readyz answers 200 once Redis is back",
        DEADLINE,
        || async { (worker.get("/readyz").await.status() == 200).then_some(()) },
    )
    .await;
    assert_eq!(worker.get("/healthz").await.status(), 200);
    worker.stop().await;
}

#[tokio::test]
async fn the_queue_depth_gauges_show_the_tasks_waiting_and_held() {
    let system = spawn_system(Options {
        worker_args: ["--worker-concurrency", "1", "--smtp-timeout-ms", "60000"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    })
    .await;
    // The first task popped holds the only slot while its reply is slow;
    // the other two wait in the ready queue.
    let slow = format!("eve+{}@example.com", Fault::SlowData(DEADLINE));
    for n in 0..3 {
        system
            .push_task(&keyed_task(&slow, &format!("depth:{n}"), "Metrics"))
            .await;
    }
    let worker = start_worker_process(&system, &[]).await;

    eventually("ready 2, processing 1, one in flight", DEADLINE, || async {
        let text = worker.metrics().await;
        (sample(&text, r#"sendonce_queue_depth{queue="ready"}"#) == Some(2.0)
            && sample(&text, r#"sendonce_queue_depth{queue="processing"}"#) == Some(1.0)
            && sample(&text, r#"sendonce_queue_depth{queue="scheduled"}"#) == Some(0.0)
            && sample(&text, "sendonce_inflight") == Some(1.0))
        .then_some(())
    })
    .await;
}
