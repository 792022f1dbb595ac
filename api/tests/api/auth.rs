use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use crate::helpers::{SECRET, assert_problem, spawn_api, valid_body};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn sign(claims: &serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

async fn assert_unauthorized(response: reqwest::Response) {
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer"),
        "challenge was {challenge:?}"
    );
    assert_problem(response, 401, "token").await;
}

#[tokio::test]
async fn a_missing_token_is_refused_with_401() {
    let api = spawn_api().await;
    assert_unauthorized(api.post_job(None, &valid_body()).await).await;
    assert_eq!(api.queue_len().await, 0);
}

#[tokio::test]
async fn a_token_signed_with_another_key_is_refused_with_401() {
    let api = spawn_api().await;
    let forged = sign(
        &json!({"sub": "eve", "exp": now() + 600, "scope": "jobs:write"}),
        "not-the-secret-not-the-secret-not-the-secret",
    );
    assert_unauthorized(api.post_job(Some(&forged), &valid_body()).await).await;
}

#[tokio::test]
async fn an_expired_token_is_refused_with_401() {
    let api = spawn_api().await;
    let expired = sign(
        &json!({"sub": "old", "exp": now() - 3600, "scope": "jobs:write"}),
        SECRET,
    );
    assert_unauthorized(api.post_job(Some(&expired), &valid_body()).await).await;
}

#[tokio::test]
async fn a_token_without_an_expiry_is_refused_with_401() {
    let api = spawn_api().await;
    let forever = sign(&json!({"sub": "x", "scope": "jobs:write"}), SECRET);
    assert_unauthorized(api.post_job(Some(&forever), &valid_body()).await).await;
}

#[tokio::test]
async fn a_malformed_authorization_header_is_refused_with_401() {
    let api = spawn_api().await;
    let response = api
        .client
        .post(format!("{}/addJob", api.address))
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .json(&valid_body())
        .send()
        .await
        .expect("request");
    assert_unauthorized(response).await;
}

#[tokio::test]
async fn a_token_without_the_jobs_write_scope_is_refused_with_403() {
    let api = spawn_api().await;
    let reader = api.token("jobs:read failed:read");
    let response = api.post_job(Some(&reader), &valid_body()).await;
    assert_problem(response, 403, "jobs:write").await;
    assert_eq!(api.queue_len().await, 0);
}
