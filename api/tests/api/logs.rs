//! What the API binary writes to its log at the default level.

use std::process::Command;
use std::time::Duration;

use sendonce_shared::domain::IdempotencyKey;
use sendonce_testkit::{CapturedChild, TestDatabase, unique_prefix};
use serde_json::{Value, json};

use crate::helpers::{SECRET, hs256_keys, shared_redis_url, valid_body};

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn strangers_4xx_stay_out_of_the_info_log_and_keys_appear_only_hashed() {
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
