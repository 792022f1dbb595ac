use serde_json::{Value, json};

use crate::helpers::{SECRET, TestApi, assert_problem, spawn_api, spawn_api_with, valid_body};

fn keyed(key: &str) -> Value {
    let mut body = valid_body();
    body["idempotency_key"] = json!(key);
    body
}

async fn items(api: &TestApi, jobs: &[Value]) -> Vec<Value> {
    let token = api.token("jobs:write");
    let response = api.post_jobs(&token, jobs).await;
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.expect("json");
    answer["items"].as_array().expect("items").clone()
}

#[tokio::test]
async fn items_are_answered_in_request_order_with_errors_next_to_valid_jobs() {
    let api = spawn_api().await;
    let jobs = [
        keyed("batch:first"),
        json!({"to": "not an address", "subject": "s", "text": "t"}),
        keyed("batch:second"),
        json!({"to": 5, "subject": "s", "text": "t"}),
        keyed("batch:third"),
    ];

    let items = items(&api, &jobs).await;

    assert_eq!(items.len(), 5);
    for (i, key) in [(0, "batch:first"), (2, "batch:second"), (4, "batch:third")] {
        assert_eq!(items[i]["idempotency_key"], key, "item {i}");
        assert_eq!(items[i]["status"], "queued", "item {i}");
    }
    assert_eq!(items[1]["error"]["status"], 422);
    assert!(
        items[1]["error"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("`to`"))
    );
    assert_eq!(items[3]["error"]["status"], 400);
    assert_eq!(api.queue_len().await, 3);
    let oldest_first: Vec<String> = redis_queue(&api)
        .await
        .iter()
        .rev()
        .map(|raw| {
            let task: Value = serde_json::from_str(raw).expect("task json");
            task["idempotency_key"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        oldest_first,
        ["batch:first", "batch:second", "batch:third"],
        "workers take the jobs in request order"
    );
}

#[tokio::test]
async fn an_empty_batch_and_a_batch_over_the_limit_are_refused_and_enqueue_nothing() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");

    let empty = api.post_jobs(&token, &[]).await;
    let over = api.post_jobs(&token, &vec![valid_body(); 1001]).await;

    assert_problem(empty, 422, "`jobs` must hold 1 to 1000 jobs").await;
    assert_problem(over, 422, "not 1001").await;
    assert_eq!(api.queue_len().await, 0);
}

#[tokio::test]
async fn a_full_batch_of_a_thousand_jobs_is_queued() {
    let api = spawn_api().await;
    let jobs: Vec<Value> = (0..1000).map(|i| keyed(&format!("full:{i}"))).collect();

    let items = items(&api, &jobs).await;

    assert_eq!(items.len(), 1000);
    assert!(items.iter().all(|i| i["status"] == "queued"));
    assert_eq!(api.queue_len().await, 1000);
}

#[tokio::test]
async fn a_key_repeated_within_one_batch_is_queued_once() {
    let api = spawn_api().await;
    let mut other_body = keyed("batch:dup");
    other_body["subject"] = json!("something else");
    let jobs = [keyed("batch:dup"), keyed("batch:dup"), other_body];

    let items = items(&api, &jobs).await;

    assert_eq!(items[0]["status"], "queued");
    assert_eq!(
        items[1]["job_id"], items[0]["job_id"],
        "the repeat answers with the first job"
    );
    assert_eq!(items[2]["error"]["status"], 422);
    assert!(
        items[2]["error"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("already used for a different request"))
    );
    assert_eq!(api.queue_len().await, 1);
}

#[tokio::test]
async fn keys_accepted_earlier_replay_across_batches_and_single_posts() {
    let api = spawn_api().await;
    let token = api.token("jobs:write");
    let single: Value = api
        .post_job(Some(&token), &keyed("replay:single"))
        .await
        .json()
        .await
        .expect("json");

    let first = items(&api, &[keyed("replay:single"), keyed("replay:batch")]).await;
    let second = items(&api, &[keyed("replay:batch")]).await;

    assert_eq!(first[0]["job_id"], single["job_id"]);
    assert_eq!(first[0]["status"], "queued");
    assert_eq!(second[0]["job_id"], first[1]["job_id"]);
    assert_eq!(api.queue_len().await, 2);
}

#[tokio::test]
async fn a_batch_needs_the_jobs_write_scope_and_no_idempotency_key_header() {
    let api = spawn_api().await;
    let read_only = api.token("jobs:read");
    let forbidden = api.post_jobs(&read_only, &[valid_body()]).await;
    assert_problem(forbidden, 403, "jobs:write").await;

    let with_header = api
        .client
        .post(format!("{}/addJobs", api.address))
        .bearer_auth(api.token("jobs:write"))
        .header("Idempotency-Key", "batch:header")
        .json(&json!({"jobs": [valid_body()]}))
        .send()
        .await
        .expect("request");
    assert_problem(with_header, 400, "Idempotency-Key").await;
    assert_eq!(api.queue_len().await, 0);
}

async fn redis_queue(api: &TestApi) -> Vec<String> {
    let mut conn = api.redis().await;
    redis::cmd("LRANGE")
        .arg(format!("{{{}}}:queue", api.prefix))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("LRANGE")
}

#[tokio::test]
async fn a_batch_costs_its_jobs_against_the_rate_limit() {
    let api = spawn_api_with(&["--jwt-secret", SECRET, "--rate-limit-per-sec", "2"]).await;
    let token = api.token("jobs:write");
    let job = |i: usize| keyed(&format!("limited:{i}"));

    let oversized = api.post_jobs(&token, &[job(0), job(1), job(2)]).await;
    assert_problem(oversized, 422, "burst of 2").await;
    assert_eq!(
        api.queue_len().await,
        0,
        "an oversized batch enqueues nothing"
    );

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut i = 0;
    let limited = loop {
        assert!(tokio::time::Instant::now() < deadline, "never limited");
        let response = api.post_jobs(&token, &[job(i), job(i + 1)]).await;
        i += 2;
        if response.status() == 429 {
            break response;
        }
        assert_eq!(response.status(), 200);
    };
    assert!(limited.headers().contains_key("retry-after"));
    assert_problem(limited, 429, "too many requests").await;
}

#[tokio::test]
async fn a_job_whose_text_and_html_exceed_max_job_bytes_is_refused_alone() {
    let api = spawn_api().await;
    let mut big = keyed("size:big");
    big["text"] = json!("t".repeat(600 * 1024));
    big["html"] = json!("h".repeat(600 * 1024));

    let items = items(&api, &[big, keyed("size:small")]).await;

    assert_eq!(items[0]["error"]["status"], 422, "{}", items[0]);
    assert!(
        items[0]["error"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("`text`") && d.contains("1048576")),
        "{}",
        items[0]
    );
    assert_eq!(items[1]["status"], "queued");
    assert_eq!(api.queue_len().await, 1);
}

#[tokio::test]
async fn a_batch_over_max_batch_bytes_is_refused_with_413() {
    let api = spawn_api_with(&["--jwt-secret", SECRET, "--max-batch-bytes", "65536"]).await;
    let mut job = valid_body();
    job["text"] = json!("x".repeat(40 * 1024));

    let response = api
        .post_jobs(&api.token("jobs:write"), &[job.clone(), job])
        .await;

    assert_problem(response, 413, "65536").await;
    assert_eq!(api.queue_len().await, 0);
}

#[tokio::test]
async fn large_requests_beyond_the_concurrent_bound_are_refused_with_503_while_small_ones_pass() {
    use tokio::io::AsyncWriteExt;

    let api = spawn_api_with(&[
        "--jwt-secret",
        SECRET,
        "--large-body-bytes",
        "4096",
        "--max-large-requests",
        "1",
        "--body-timeout-ms",
        "120000",
    ])
    .await;
    let token = api.token("jobs:write");
    let addr = api.address.trim_start_matches("http://").to_owned();
    let head = format!(
        "POST /addJobs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 500000\r\n\r\n{{\"jobs\": ["
    );
    let hold = || async {
        let mut holder = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        holder.write_all(head.as_bytes()).await.expect("send");
        holder
    };
    let mut holder = hold().await;
    let mut large = valid_body();
    large["text"] = json!("x".repeat(8 * 1024));

    // The holder's request may still be on its way to the API: poll. If
    // one of these polls held the permit when the holder's request came,
    // the holder was refused (it has an answer): hold again.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let refused = loop {
        let response = api.post_jobs(&token, &[large.clone()]).await;
        if response.status() == 503 {
            break response;
        }
        if holder.try_read(&mut [0u8; 64]).is_ok() {
            holder = hold().await;
        }
        if tokio::time::Instant::now() >= deadline {
            use tokio::io::AsyncReadExt;
            let mut answer = vec![0u8; 512];
            let read = tokio::time::timeout(
                std::time::Duration::from_millis(100),
                holder.read(&mut answer),
            )
            .await;
            panic!(
                "never bounded: {}; the holder's connection read {read:?}: {:?}",
                response.status(),
                String::from_utf8_lossy(&answer)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_problem(refused, 503, "large").await;
    // One large job is bounded as a large batch is: an attachment body.
    assert_problem(api.post_job(Some(&token), &large).await, 503, "large").await;
    assert_eq!(
        api.post_job(Some(&token), &valid_body()).await.status(),
        202
    );

    drop(holder);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = api.post_jobs(&token, &[large.clone()]).await.status();
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bound was not released: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
