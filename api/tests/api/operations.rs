//! Operating the API: readiness, metrics, request ids and what its logs
//! hold. The metrics and log tests run the real binary, which installs the
//! process-wide metrics recorder and log subscriber.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use sendonce_testkit::monitoring;
use sendonce_testkit::{
    CapturedChild, RedisOptions, RedisServer, TestDatabase, eventually, sample, unique_prefix,
};
use serde_json::Value;

use crate::helpers::{
    SECRET, assert_problem, hs256_keys, shared_redis_url, spawn_api, spawn_api_on_redis, valid_body,
};

/// How long a test waits for the API to reach a state.
const DEADLINE: Duration = Duration::from_secs(30);

async fn get(client: &reqwest::Client, url: &str) -> reqwest::Response {
    client.get(url).send().await.expect("GET")
}

#[tokio::test]
async fn readyz_answers_503_while_redis_is_down_and_200_once_it_returns() {
    let mut redis = RedisServer::start(RedisOptions::default()).await;
    let api = spawn_api_on_redis(redis.url()).await;
    let (readyz, healthz) = (
        format!("{}/readyz", api.address),
        format!("{}/healthz", api.address),
    );
    assert_eq!(get(&api.client, &readyz).await.status(), 200);

    redis.stop();
    let down = eventually(
        "/readyz answers 503 with Redis stopped",
        DEADLINE,
        || async {
            let response = get(&api.client, &readyz).await;
            (response.status() == 503).then_some(response)
        },
    )
    .await;
    assert_problem(down, 503, "redis").await;
    assert_eq!(get(&api.client, &healthz).await.status(), 200);

    redis.restart().await;
    eventually(
        "/readyz answers 200 once Redis is back",
        DEADLINE,
        || async { (get(&api.client, &readyz).await.status() == 200).then_some(()) },
    )
    .await;
    assert_eq!(get(&api.client, &healthz).await.status(), 200);
}

/// Length of the queue under `prefix` on `server`, over its own connection.
async fn queue_len_on(server: &RedisServer, prefix: &str) -> u64 {
    server
        .command(&["LLEN", &format!("{{{prefix}}}:queue")])
        .await
        .expect("LLEN")
        .parse()
        .expect("a length")
}

#[tokio::test]
async fn readyz_fails_on_a_demoted_primary_and_the_api_recovers_when_it_is_promoted_again() {
    let redis = RedisServer::start(RedisOptions::default()).await;
    let other = RedisServer::start(RedisOptions::default()).await;
    let api = spawn_api_on_redis(redis.url()).await;
    let readyz = format!("{}/readyz", api.address);
    let token = api.token("jobs:write");
    assert_eq!(get(&api.client, &readyz).await.status(), 200);

    // A PING still answers on a replica; only a write tells.
    redis.replicaof(Some(other.port())).await;
    let down = eventually("/readyz answers 503 on a replica", DEADLINE, || async {
        let response = get(&api.client, &readyz).await;
        (response.status() == 503).then_some(response)
    })
    .await;
    assert_problem(down, 503, "redis").await;

    redis.replicaof(None).await;
    eventually(
        "/readyz answers 200 once the server is a primary again",
        DEADLINE,
        || async { (get(&api.client, &readyz).await.status() == 200).then_some(()) },
    )
    .await;
    let mut body = valid_body();
    body["idempotency_key"] = serde_json::json!("after-promotion");
    assert_eq!(api.post_job(Some(&token), &body).await.status(), 202);
    eventually(
        "the job posted after the promotion reaches the queue",
        DEADLINE,
        || async { (queue_len_on(&redis, &api.prefix).await == 1).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_job_posted_while_redis_is_down_is_accepted_pushed_once_redis_is_back_and_its_retry_is_a_replay()
 {
    let mut redis = RedisServer::start(RedisOptions::default()).await;
    let api = spawn_api_on_redis(redis.url()).await;
    let token = api.token("jobs:write");
    let mut body = valid_body();
    body["idempotency_key"] = "outage:1".into();
    // Opens the API's shared Redis connection, which the stop then breaks.
    assert_eq!(
        api.post_job(Some(&token), &valid_body()).await.status(),
        202
    );

    redis.stop();
    let accepted = api.post_job(Some(&token), &body).await;
    assert_eq!(accepted.status(), 202, "recorded in Postgres: accepted");
    let accepted: Value = accepted.json().await.expect("JSON");

    redis.restart().await;
    let replay = api.post_job(Some(&token), &body).await;

    assert_eq!(replay.status(), 200);
    let replay: Value = replay.json().await.expect("JSON");
    assert_eq!(replay["job_id"], accepted["job_id"]);
    // The API retries the failed push in the background once Redis is back.
    eventually("the accepted job is pushed", DEADLINE, || async {
        (api.queue_len().await == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_request_id_is_echoed_and_one_is_generated_when_absent() {
    let api = spawn_api().await;
    let url = format!("{}/healthz", api.address);

    let given = api
        .client
        .get(&url)
        .header("X-Request-Id", "lb-req-42")
        .send()
        .await
        .expect("GET /healthz");
    let generated = get(&api.client, &url).await;
    let unsafe_one = api
        .client
        .get(&url)
        .header("X-Request-Id", "has spaces and \"quotes\"")
        .send()
        .await
        .expect("GET /healthz");

    assert_eq!(given.headers()["x-request-id"], "lb-req-42");
    for response in [generated, unsafe_one] {
        let id = response.headers()["x-request-id"].to_str().expect("ASCII");
        uuid::Uuid::parse_str(id).expect("a generated id is a UUID");
    }
}

/// The API binary with JSON logs, its own database and key prefix.
struct ApiProcess {
    child: CapturedChild,
    address: String,
    /// `METRICS_ADDR`, where `/metrics` is.
    metrics_address: String,
    _db: TestDatabase,
}

async fn start_api_process(rust_log: &str) -> ApiProcess {
    let db = TestDatabase::create().await;
    let mut command = Command::new(env!("CARGO_BIN_EXE_sendonce-api"));
    command
        .env("API_ADDR", "127.0.0.1:0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", db.url())
        .env("REDIS_URL", shared_redis_url())
        .env("REDIS_KEY_PREFIX", unique_prefix())
        .env("JWT_SECRET", SECRET)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", rust_log);
    let child = CapturedChild::spawn(command);
    let port = child.wait_for_json_field("port", DEADLINE).await;
    let port = port.as_u64().expect("the port as a number");
    let metrics_addr = child.wait_for_json_field("metrics_addr", DEADLINE).await;
    let metrics_addr = metrics_addr.as_str().expect("METRICS_ADDR as text");
    ApiProcess {
        metrics_address: format!("http://{metrics_addr}"),
        child,
        address: format!("http://127.0.0.1:{port}"),
        _db: db,
    }
}

impl ApiProcess {
    async fn metrics(&self) -> String {
        let response = reqwest::get(format!("{}/metrics", self.metrics_address))
            .await
            .expect("GET /metrics");
        assert_eq!(response.status(), 200);
        response.text().await.expect("the metrics text")
    }

    /// Stops the process, checks it exits cleanly, and returns every line
    /// it wrote to stdout.
    async fn stop(self) -> Vec<String> {
        let (status, stdout) = self.child.stop().await;
        assert!(status.success(), "the API exited with {status}");
        stdout
    }
}

#[tokio::test]
async fn every_api_metric_is_there_from_start_up_and_requests_are_counted_by_route() {
    let api = start_api_process("info").await;
    let client = reqwest::Client::new();
    let token = hs256_keys(SECRET)
        .mint("tests", "jobs:write jobs:read", Duration::from_secs(600))
        .expect("mint a token");

    let at_start = api.metrics().await;
    let accepted: Value = client
        .post(format!("{}/addJob", api.address))
        .bearer_auth(&token)
        .json(&valid_body())
        .send()
        .await
        .expect("POST /addJob")
        .json()
        .await
        .expect("a JSON answer");
    let job_id = accepted["job_id"].as_str().expect("a job id");
    let job = client
        .get(format!("{}/jobs/{job_id}", api.address))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET /jobs");
    assert_eq!(job.status(), 200);
    let after = api.metrics().await;

    assert_eq!(sample(&at_start, "sendonce_jobs_enqueued_total"), Some(0.0));
    assert_eq!(
        sample(
            &at_start,
            r#"sendonce_api_requests_total{route="/addJob",status="202"}"#
        ),
        Some(0.0)
    );
    assert!(at_start.contains("sendonce_api_request_duration_seconds_bucket"));
    assert_eq!(sample(&after, "sendonce_jobs_enqueued_total"), Some(1.0));
    assert_eq!(
        sample(
            &after,
            r#"sendonce_api_requests_total{route="/addJob",status="202"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            r#"sendonce_api_requests_total{route="/jobs/{job_id}",status="200"}"#
        ),
        Some(1.0),
        "requests are labelled with the route's pattern, not the path:\n{after}"
    );
    assert!(!after.contains(job_id), "a raw path leaked into a label");
    assert!(
        sample(
            &after,
            r#"sendonce_api_request_duration_seconds_count{route="/addJob"}"#
        ) >= Some(1.0)
    );
    api.stop().await;
}

/// The API's side of the check that the monitoring files name only metrics
/// the binaries export: every name of one of the API's metrics
/// ([`sendonce_api::telemetry::METRICS`]) that the Grafana dashboard or the
/// alert rules use is on the live binary's `/metrics`. Every other name is
/// checked against the live worker (`worker/tests/e2e/monitoring.rs`).
#[tokio::test]
async fn every_api_metric_the_dashboard_and_the_alert_rules_use_is_exported() {
    let used: BTreeMap<String, BTreeSet<String>> = monitoring::metric_names_used()
        .into_iter()
        .filter(|(name, _)| {
            sendonce_api::telemetry::METRICS
                .iter()
                .any(|metric| monitoring::is_series_of(name, metric))
        })
        .collect();
    assert!(!used.is_empty(), "the monitoring files use no API metric");
    let api = start_api_process("info").await;
    let token = hs256_keys(SECRET)
        .mint("tests", "jobs:write", Duration::from_secs(600))
        .expect("mint a token");
    // A job accepted, so the counters have moved too (every series exists
    // from start-up anyway).
    let accepted = reqwest::Client::new()
        .post(format!("{}/addJob", api.address))
        .bearer_auth(&token)
        .json(&valid_body())
        .send()
        .await
        .expect("POST /addJob");
    assert_eq!(accepted.status(), 202);

    let exported = monitoring::exported_names(&api.metrics().await);
    let missing = monitoring::unexported(&used, &exported);
    assert!(
        missing.is_empty(),
        "the monitoring files use metrics the API does not export:\n{missing}"
    );
    api.stop().await;
}

#[tokio::test]
async fn every_route_registered_at_start_up_is_the_pattern_requests_are_counted_under() {
    let api = start_api_process("info").await;
    let client = reqwest::Client::new();

    // Any method and status will do: only the route label is checked.
    for (pattern, _) in sendonce_api::telemetry::ROUTES {
        let path = pattern.replace("{job_id}", "0").replace("{id}", "0");
        client
            .get(format!("{}{path}", api.address))
            .send()
            .await
            .expect("GET");
    }
    let after = api.metrics().await;

    for (pattern, _) in sendonce_api::telemetry::ROUTES {
        let prefix = format!(r#"sendonce_api_requests_total{{route="{pattern}",status=""#);
        let counted: f64 = after
            .lines()
            .filter(|line| line.starts_with(&prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(
            counted >= 1.0,
            "no request counted under {pattern}:\n{after}"
        );
    }
    api.stop().await;
}

#[tokio::test]
async fn the_api_logs_json_lines_with_request_ids_and_never_a_bearer_token() {
    let api = start_api_process("trace").await;
    let client = reqwest::Client::new();
    let keys = hs256_keys(SECRET);
    let valid = keys
        .mint("tests", "jobs:write", Duration::from_secs(600))
        .expect("mint a token");
    let forged = hs256_keys("another-secret-that-is-long-enough-for-hs256")
        .mint("tests", "jobs:write", Duration::from_secs(600))
        .expect("mint a token");
    let garbage = "not-a-jwt-but-still-a-secret-0123456789";

    for token in [&valid, &forged, garbage] {
        let response = client
            .post(format!("{}/addJob", api.address))
            .bearer_auth(token)
            .header("X-Request-Id", "ops-log-test")
            .json(&valid_body())
            .send()
            .await
            .expect("POST /addJob");
        assert_eq!(response.headers()["x-request-id"], "ops-log-test");
    }
    let lines = api.stop().await;

    for line in &lines {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    assert!(
        lines
            .iter()
            .any(|line| line.contains("request answered") && line.contains("ops-log-test")),
        "no log line carries the request id"
    );
    for token in [&valid, &forged, garbage] {
        // The signature alone is enough to replay a token; look for it too.
        let signature = token.rsplit('.').next().unwrap_or(token);
        for line in &lines {
            assert!(
                !line.contains(signature),
                "a token leaked into the log: {line}"
            );
        }
    }
}
