use serde_json::json;

use crate::helpers::{
    SECRET, assert_problem, spawn_api, spawn_api_on_redis_with, spawn_api_with, spawn_replica_of,
    valid_body,
};

#[tokio::test]
async fn a_body_over_max_body_bytes_is_refused_with_413_and_not_stored() {
    let api = spawn_api_with(&["--jwt-secret", SECRET, "--max-body-bytes", "2048"]).await;
    let token = api.token("jobs:write");
    let mut body = valid_body();
    body["text"] = json!("x".repeat(4096));
    assert_problem(api.post_job(Some(&token), &body).await, 413, "2048").await;
    assert_eq!(api.queue_len().await, 0);
}

#[tokio::test]
async fn a_body_that_is_not_json_is_refused_with_415() {
    let api = spawn_api().await;
    let response = api
        .client
        .post(format!("{}/addJob", api.address))
        .bearer_auth(api.token("jobs:write"))
        .header("content-type", "text/plain")
        .body(valid_body().to_string())
        .send()
        .await
        .expect("request");
    assert_problem(response, 415, "JSON").await;
    assert_eq!(api.queue_len().await, 0);
}

#[tokio::test]
async fn cr_lf_or_nul_in_any_field_that_becomes_a_header_is_refused() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");
    for field in ["to", "from", "reply_to", "subject", "idempotency_key"] {
        for bad in ["\r", "\n", "\0", "\r\nBcc: eve@example.com"] {
            let mut body = valid_body();
            let clean = if field == "subject" || field == "idempotency_key" {
                "k"
            } else {
                "a@example.com"
            };
            body[field] = json!(format!("{clean}{bad}"));
            let response = api.post_job(Some(&token), &body).await;
            assert_problem(response, 422, &format!("`{field}`")).await;
        }
    }
    for bad in ["a\tb", "clé"] {
        let response = api
            .client
            .post(format!("{}/addJob", api.address))
            .bearer_auth(&token)
            .header(
                "Idempotency-Key",
                reqwest::header::HeaderValue::from_bytes(bad.as_bytes()).expect("a header value"),
            )
            .json(&valid_body())
            .send()
            .await
            .expect("request");
        assert_problem(response, 422, "Idempotency-Key").await;
    }
    assert_eq!(api.queue_len().await, 0);
}

#[tokio::test]
async fn malformed_query_strings_cursors_and_ids_on_the_read_endpoints_are_refused() {
    let api = spawn_api().await;
    let token = api.token("jobs:read failed:read failed:write audit:read");
    for (method, path, status, needle) in [
        ("GET", "/failedJobs?limit=0", 422, "`limit`"),
        ("GET", "/failedJobs?limit=501", 422, "`limit`"),
        ("GET", "/failedJobs?limit=many", 400, "query"),
        ("GET", "/failedJobs?cursor=garbage!", 422, "`cursor`"),
        ("GET", "/failedJobs?cursor=djE6eA", 422, "`cursor`"),
        ("GET", "/failedJobs?reason=bored", 422, "`reason`"),
        ("GET", "/failedJobs?since=yesterday", 422, "`since`"),
        ("GET", "/failedJobs?sort=asc", 400, "sort"),
        ("GET", "/audit?limit=0", 422, "`limit`"),
        ("GET", "/audit?limit=501", 422, "`limit`"),
        ("GET", "/audit?limit=many", 400, "query"),
        ("GET", "/audit?cursor=garbage!", 422, "`cursor`"),
        ("GET", "/audit?cursor=djE6eA", 422, "`cursor`"),
        ("GET", "/audit?action=delete", 422, "`action`"),
        ("GET", "/audit?sort=asc", 400, "sort"),
        ("POST", "/failedJobs/1/retry?reason=why", 400, "reason"),
        ("GET", "/jobs/not-a-uuid", 422, "`job_id`"),
        ("POST", "/failedJobs/abc/retry", 422, "`id`"),
        ("POST", "/failedJobs/-1/retry", 422, "`id`"),
        ("DELETE", "/failedJobs/99999999999999999999", 422, "`id`"),
    ] {
        let response = api.call(method, path, Some(&token)).await;
        assert_eq!(response.status(), status, "{method} {path}");
        assert_problem(response, status, needle).await;
    }
}

#[tokio::test]
async fn a_subject_over_its_write_rate_limit_gets_429_with_retry_after() {
    let api = spawn_api_with(&["--jwt-secret", SECRET, "--rate-limit-per-sec", "1"]).await;
    let token = api
        .keys
        .mint("busy", "jobs:write", std::time::Duration::from_secs(600));
    let token = token.expect("mint");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut accepted = 0;
    let limited = loop {
        assert!(tokio::time::Instant::now() < deadline, "never limited");
        let response = api.post_job(Some(&token), &valid_body()).await;
        if response.status() == 429 {
            break response;
        }
        assert_eq!(response.status(), 202);
        accepted += 1;
    };
    let retry_after: u64 = limited
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert_eq!(
        retry_after, 1,
        "a one-per-second bucket refills within a second"
    );
    assert_problem(limited, 429, "too many requests").await;

    let other = api
        .keys
        .mint("calm", "jobs:write", std::time::Duration::from_secs(600))
        .expect("mint");
    assert_eq!(
        api.post_job(Some(&other), &valid_body()).await.status(),
        202
    );
    assert_eq!(
        api.queue_len().await,
        accepted + 1,
        "the refused job was not stored"
    );
}

#[tokio::test]
async fn api_replicas_on_one_redis_share_a_subjects_rate_limit() {
    let settings = ["--jwt-secret", SECRET, "--rate-limit-per-sec", "1"];
    let a = spawn_api_with(&settings).await;
    let b = spawn_replica_of(&a, &settings).await;
    let token = a
        .keys
        .mint("shared", "jobs:write", std::time::Duration::from_secs(600))
        .expect("mint");

    // A one-per-second bucket: what one replica took, the other cannot.
    // (Per process, each replica had a bucket of its own, and both were 202.)
    let first = a.post_job(Some(&token), &valid_body()).await;
    let second = b.post_job(Some(&token), &valid_body()).await;

    assert_eq!(first.status(), 202);
    assert_eq!(second.status(), 429);
    assert_eq!(
        second
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_problem(second, 429, "too many requests").await;
}

#[tokio::test]
async fn a_burst_spread_over_two_replicas_gets_one_budget_not_two() {
    let settings = ["--jwt-secret", SECRET, "--rate-limit-per-sec", "5"];
    let a = spawn_api_with(&settings).await;
    let b = spawn_replica_of(&a, &settings).await;
    let token = a
        .keys
        .mint("burst", "jobs:write", std::time::Duration::from_secs(600))
        .expect("mint");

    let mut accepted = 0;
    let started = std::time::Instant::now();
    for i in 0..10 {
        let api = if i % 2 == 0 { &a } else { &b };
        let mut body = valid_body();
        body["idempotency_key"] = serde_json::json!(format!("burst:{i}"));
        let status = api.post_job(Some(&token), &body).await.status();
        if status == 202 {
            accepted += 1;
        } else {
            assert_eq!(status, 429);
        }
    }

    // 5 at once, plus what refills (one per 200 ms) while the posts ran;
    // two buckets would have taken all 10 within a second.
    let refilled = (started.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        accepted >= 5 && accepted <= 5 + refilled,
        "{accepted} of 10 accepted in {:?}: the two replicas did not share one bucket of 5",
        started.elapsed()
    );
}

#[tokio::test]
async fn with_redis_down_each_replica_still_limits_on_its_own() {
    let mut redis = sendonce_testkit::RedisServer::start(Default::default()).await;
    let api = spawn_api_on_redis_with(
        redis.url(),
        &["--jwt-secret", SECRET, "--rate-limit-per-sec", "1"],
    )
    .await;
    let token = api
        .keys
        .mint("offline", "jobs:write", std::time::Duration::from_secs(600))
        .expect("mint");
    redis.stop();

    // Accepted all the same (recorded in Postgres), and limited.
    let first = api.post_job(Some(&token), &valid_body()).await;
    let second = api.post_job(Some(&token), &valid_body()).await;

    assert_eq!(first.status(), 202);
    assert_eq!(second.status(), 429);
}
