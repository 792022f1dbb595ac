//! Accepted means durable: the API records every job in Postgres before it
//! answers `202`, answers replays from there for ever, and refuses with
//! `503` (pushing nothing) when Postgres cannot record it.

use sendonce_testkit::{RedisOptions, RedisServer, TestDatabase, eventually};
use serde_json::{Value, json};

use crate::helpers::{TestApi, assert_problem, spawn_api_on_redis, valid_body};

const DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

fn keyed(key: &str, text: &str) -> Value {
    json!({"to": "ada@example.com", "subject": "Hi", "text": text, "idempotency_key": key})
}

async fn job_id(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let answer: Value = response.json().await.expect("JSON");
    answer["job_id"].clone()
}

#[tokio::test]
async fn a_replay_after_redis_lost_everything_answers_200_with_the_original_job_and_422_for_another_body()
 {
    let redis = RedisServer::start(RedisOptions::default()).await;
    let api = spawn_api_on_redis(redis.url()).await;
    let token = api.token("jobs:write");
    let original = job_id(
        api.post_job(Some(&token), &keyed("replay:1", "one")).await,
        202,
    )
    .await;

    redis.flushall().await;
    let replay = api.post_job(Some(&token), &keyed("replay:1", "one")).await;
    let other = api.post_job(Some(&token), &keyed("replay:1", "two")).await;

    assert_eq!(job_id(replay, 200).await, original);
    assert_problem(other, 422, "replay:1").await;
    assert_eq!(api.queue_len().await, 0, "a replay pushes nothing");
}

#[tokio::test]
async fn a_key_accepted_a_month_ago_still_replays_and_still_refuses_another_body() {
    let api = crate::helpers::spawn_api().await;
    let token = api.token("jobs:write");
    let original = job_id(
        api.post_job(Some(&token), &keyed("old:1", "one")).await,
        202,
    )
    .await;
    api.db()
        .connect()
        .await
        .execute(
            "UPDATE deliveries SET created_at = created_at - interval '30 days',
                                   updated_at = updated_at - interval '30 days'",
            &[],
        )
        .await
        .expect("age the row");

    let replay = api.post_job(Some(&token), &keyed("old:1", "one")).await;
    let other = api.post_job(Some(&token), &keyed("old:1", "two")).await;

    assert_eq!(job_id(replay, 200).await, original);
    assert_problem(other, 422, "old:1").await;
}

#[tokio::test]
async fn a_job_accepted_before_redis_lost_everything_still_reads_queued() {
    let redis = RedisServer::start(RedisOptions::default()).await;
    let api = spawn_api_on_redis(redis.url()).await;
    let job = job_id(
        api.post_job(Some(&api.token("jobs:write")), &valid_body())
            .await,
        202,
    )
    .await;

    redis.flushall().await;
    let response = api
        .call(
            "GET",
            &format!("/jobs/{}", job.as_str().expect("id")),
            Some(&api.token("jobs:read")),
        )
        .await;

    assert_eq!(response.status(), 200);
    let record: Value = response.json().await.expect("JSON");
    assert_eq!(record["status"], "queued");
    assert!(record["created_at"].is_string());
}

/// A session on the server's admin database, which can close the test's.
async fn admin() -> tokio_postgres::Client {
    let url = std::env::var(sendonce_testkit::postgres::ADMIN_URL_ENV)
        .unwrap_or_else(|_| sendonce_testkit::postgres::DEFAULT_ADMIN_URL.to_owned());
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("an admin session");
    tokio::spawn(connection);
    client
}

/// Opens or closes the API's database through `control`, an admin
/// session: closed, it takes no new sessions and its sessions are ended,
/// so to the API Postgres is down.
async fn set_open(db: &TestDatabase, control: &tokio_postgres::Client, open: bool) {
    let alter = format!(
        "ALTER DATABASE \"{}\" WITH ALLOW_CONNECTIONS {open}",
        db.name()
    );
    control.batch_execute(&alter).await.expect("ALTER DATABASE");
    if !open {
        control
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = $1",
                &[&db.name()],
            )
            .await
            .expect("end the API's sessions");
    }
}

#[tokio::test]
async fn a_job_posted_while_postgres_is_down_gets_503_nothing_is_pushed_and_its_retry_is_accepted_once_back()
 {
    let api: TestApi = crate::helpers::spawn_api().await;
    let token = api.token("jobs:write");
    let control = admin().await;
    let body = keyed("pg-outage:1", "hello");

    set_open(api.db(), &control, false).await;
    let refused = api.post_job(Some(&token), &body).await;
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_problem(refused, 503, "retry later").await;
    assert_eq!(api.queue_len().await, 0, "nothing pushed before acceptance");

    set_open(api.db(), &control, true).await;
    let accepted = eventually(
        "POST /addJob is accepted once Postgres is back",
        DEADLINE,
        || async {
            let response = api.post_job(Some(&token), &body).await;
            (response.status() == 202).then_some(response)
        },
    )
    .await;
    let accepted = job_id(accepted, 202).await;
    let replay = job_id(api.post_job(Some(&token), &body).await, 200).await;

    assert_eq!(replay, accepted);
    assert_eq!(api.queue_len().await, 1, "queued once");
}

#[tokio::test]
async fn a_redis_that_evicts_keys_is_reported_by_readyz_without_failing_it() {
    let redis = RedisServer::start(RedisOptions::default()).await;
    let api = spawn_api_on_redis(redis.url()).await;
    let readyz = format!("{}/readyz", api.address);
    let quiet: Value = api
        .client
        .get(&readyz)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    let mut conn = api.redis().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut conn)
        .await
        .expect("CONFIG SET");

    let response = api.client.get(&readyz).send().await.expect("GET");

    assert_eq!(response.status(), 200, "a warning, not unreadiness");
    let ready: Value = response.json().await.expect("JSON");
    assert_eq!(quiet["warnings"], json!([]));
    let warning = ready["warnings"][0].as_str().unwrap_or_default();
    assert!(warning.contains("allkeys-lru"), "{ready}");
}

#[tokio::test]
async fn redis_keeps_only_the_task_of_an_accepted_job() {
    let api = crate::helpers::spawn_api().await;
    let token = api.token("jobs:write");
    let jobs: Vec<Value> = (0..100)
        .map(|i| keyed(&format!("footprint:{i}"), "Hello from sendonce."))
        .collect();
    for job in &jobs[..50] {
        job_id(api.post_job(Some(&token), job).await, 202).await;
    }
    api.post_jobs(&token, &jobs[50..]).await;

    let mut conn = api.redis().await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{}}}:*", api.prefix))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    keys.sort();
    let queue = format!("{{{}}}:queue", api.prefix);
    // Besides the queue, only the shard count the API recorded at start.
    assert_eq!(
        keys,
        [queue.clone(), format!("{{{}}}:shards", api.prefix)],
        "no replay record, no job marker"
    );
    let bytes: u64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&queue)
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut conn)
        .await
        .expect("MEMORY USAGE");
    eprintln!("Redis bytes per accepted job: {}", bytes / 100);
}
