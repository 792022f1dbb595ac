//! What the API binary writes to its log at the default level.

use std::process::Command;
use std::time::Duration;

use sendonce_shared::domain::IdempotencyKey;
use sendonce_testkit::{CapturedChild, TestDatabase, unique_prefix};
use serde_json::{Value, json};

use crate::helpers::{SECRET, hs256_keys, shared_redis_url, valid_body};

const DEADLINE: Duration = Duration::from_secs(30);

/// The API binary at `RUST_LOG=info` with its own database (kept alive by
/// the returned handle), its log captured, and its port.
async fn spawn_at_info() -> (CapturedChild, serde_json::Value, TestDatabase) {
    let db = TestDatabase::create().await;
    let mut command = Command::new(env!("CARGO_BIN_EXE_sendonce-api"));
    command
        .env_clear()
        .env("API_ADDR", "127.0.0.1:0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", db.url())
        .env("REDIS_URL", shared_redis_url())
        .env("REDIS_KEY_PREFIX", unique_prefix())
        .env("JWT_SECRET", SECRET)
        .env("RUST_LOG", "info");
    let api = CapturedChild::spawn(command);
    let port = api.wait_for_json_field("port", DEADLINE).await;
    (api, port, db)
}

#[tokio::test]
async fn strangers_4xx_stay_out_of_the_info_log_and_keys_appear_only_hashed() {
    let (api, port, _db) = spawn_at_info().await;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let token = hs256_keys(SECRET)
        .mint("tests", "jobs:write", Duration::from_secs(600))
        .expect("a token");
    let key = "reset:ada@example.com";
    let mut keyed = valid_body();
    keyed["idempotency_key"] = json!(key);

    for bearer in [None, Some("not-a-token")] {
        let mut request = client.post(format!("{base}/addJob")).json(&keyed);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        assert_eq!(request.send().await.expect("POST").status(), 401);
    }
    let accepted = client
        .post(format!("{base}/addJob"))
        .bearer_auth(&token)
        .json(&keyed)
        .send()
        .await
        .expect("POST");
    assert_eq!(accepted.status(), 202);
    let refused = client
        .post(format!("{base}/addJob"))
        .bearer_auth(&token)
        .json(&json!({"to": "nobody", "subject": "s", "text": "t"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(refused.status(), 422);
    let (_, log) = api.stop().await;

    let lines: Vec<Value> = log
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let answered = |status: u64| {
        lines
            .iter()
            .filter(|l| l["message"] == "request answered" && l["status"] == status)
            .count()
    };
    assert_eq!(answered(401), 0, "a stranger's 401 was logged at INFO");
    assert_eq!(answered(422), 1, "a caller's own 4xx is still logged");
    assert!(
        !log.iter().any(|l| l.contains("ada@example.com")),
        "the key was logged as is"
    );
    let key = IdempotencyKey::parse(key).expect("a key");
    let hashed = sendonce_shared::telemetry::key(&key);
    assert!(
        log.iter().any(|l| l.contains(&hashed.to_string())),
        "no line names the job's key by its hash"
    );
}

/// Issue 21: at the default level a `POST /addJob` writes one line, not a
/// line for the job and another for the answer; that line names the job.
#[tokio::test]
async fn an_accepted_job_is_one_info_line_naming_the_job() {
    let (api, port, _db) = spawn_at_info().await;
    let token = hs256_keys(SECRET)
        .mint("tests", "jobs:write", Duration::from_secs(600))
        .expect("a token");
    let accepted = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/addJob"))
        .bearer_auth(&token)
        .header("x-request-id", "one-line-per-request")
        .json(&valid_body())
        .send()
        .await
        .expect("POST");
    assert_eq!(accepted.status(), 202);
    let job_id = accepted.json::<Value>().await.expect("JSON")["job_id"]
        .as_str()
        .expect("job_id")
        .to_owned();
    let (_, log) = api.stop().await;

    let lines: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("one-line-per-request"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let line: Value = serde_json::from_str(lines[0]).expect("a JSON line");
    assert_eq!(line["message"], "request answered");
    assert_eq!(line["status"], 202);
    assert!(
        lines[0].contains(&job_id),
        "the line does not name the job: {line}"
    );
}
